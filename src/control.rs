//! The private channel between the supervisor and each worker process, which both sides
//! speak: where the worker finds what the supervisor hands it, and the words they exchange.
//!
//! * The listening socket is on fd [`LISTEN_FD`] (as systemd's socket activation places
//!   it), the status pipe on fd [`STATUS_FD`], the metrics memory on
//!   [`crate::metrics::METRICS_FD`].
//! * The worker's stdin carries first the [`handoff`] line (the resolved config as JSON),
//!   then one [`Command`] per line.
//! * The status pipe carries the worker's [`Status`] lines: `ready` once it accepts
//!   connections, `probe ID ok` or `probe ID fail REASON`.
//!
//! A probe is a job in the worker's own queue, answered by a pool thread that asks the
//! app's health hook: it gets through exactly when a request would. On a socket shared by
//! several workers an HTTP probe could not choose its worker.

use std::os::fd::RawFd;

use serde_json::Value;

/// The (hidden) command line argument that makes the binary a worker.
pub const WORKER_COMMAND: &str = "worker";

/// Where the worker finds the listening socket.
pub const LISTEN_FD: RawFd = 3;
/// Where the worker writes its status lines.
pub const STATUS_FD: RawFd = 4;
/// The environment variable naming the supervisor's PID for its workers.
pub const SUPERVISOR_PID_VAR: &str = "MICROSERVICE_RUST_SUPERVISOR";

/// The first line the supervisor writes on the worker's stdin.
pub fn handoff(source: &str, config: &Value) -> String {
    format!(
        "{}\n",
        serde_json::json!({ "source": source, "config": config })
    )
}

/// What the supervisor asks of a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Ask the app's health through the pool; answer `probe ID ok|fail`.
    Probe(u64),
    /// `/readyz` answers 503 from now on (the service is draining).
    Unready,
    /// Stop accepting, finish what was read within `stop_timeout_s`, exit.
    Stop,
    /// This worker stopped answering and is replaced: answer what was read with 503, exit.
    Abandon,
    /// Log every request in flight.
    Report,
}

impl Command {
    /// The line that carries the command (without its newline).
    pub fn line(self) -> String {
        match self {
            Command::Probe(id) => format!("probe {id}"),
            Command::Unready => "unready".into(),
            Command::Stop => "stop".into(),
            Command::Abandon => "abandon".into(),
            Command::Report => "report".into(),
        }
    }

    pub fn parse(line: &str) -> Option<Command> {
        let mut words = line.split_whitespace();
        let command = match (words.next()?, words.next()) {
            ("probe", Some(id)) => Command::Probe(id.parse().ok()?),
            ("unready", None) => Command::Unready,
            ("stop", None) => Command::Stop,
            ("abandon", None) => Command::Abandon,
            ("report", None) => Command::Report,
            _ => return None,
        };
        words.next().is_none().then_some(command)
    }
}

/// What a worker tells the supervisor, one line each on its status pipe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// It accepts connections.
    Ready,
    /// Its answer to probe `id`: healthy, or not and why.
    Probe { id: u64, health: Result<(), String> },
}

impl Status {
    /// The line that carries the status (without its newline; a reason's line ends become
    /// spaces).
    pub fn line(&self) -> String {
        match self {
            Status::Ready => "ready".into(),
            Status::Probe { id, health: Ok(()) } => format!("probe {id} ok"),
            Status::Probe {
                id,
                health: Err(reason),
            } => format!("probe {id} fail {}", reason.replace(['\n', '\r'], " ")),
        }
    }

    pub fn parse(line: &str) -> Option<Status> {
        let mut words = line.splitn(4, ' ');
        match (words.next()?, words.next(), words.next(), words.next()) {
            ("ready", None, None, None) => Some(Status::Ready),
            ("probe", Some(id), Some("ok"), None) => Some(Status::Probe {
                id: id.parse().ok()?,
                health: Ok(()),
            }),
            ("probe", Some(id), Some("fail"), reason) => Some(Status::Probe {
                id: id.parse().ok()?,
                health: Err(reason.unwrap_or("").to_string()),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_read_back_as_written() {
        for command in [
            Command::Probe(7),
            Command::Unready,
            Command::Stop,
            Command::Abandon,
            Command::Report,
        ] {
            assert_eq!(Command::parse(&command.line()), Some(command));
        }
        for bad in ["", "probe", "probe x", "stop now", "reload"] {
            assert_eq!(Command::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn statuses_read_back_as_written() {
        for status in [
            Status::Ready,
            Status::Probe {
                id: 7,
                health: Ok(()),
            },
            Status::Probe {
                id: 8,
                health: Err("the app says: no database".into()),
            },
            Status::Probe {
                id: 9,
                health: Err(String::new()),
            },
        ] {
            assert_eq!(Status::parse(&status.line()), Some(status));
        }
        let two_lines = Status::Probe {
            id: 1,
            health: Err("a\nb".into()),
        };
        assert_eq!(two_lines.line(), "probe 1 fail a b");
        for bad in [
            "",
            "ready now",
            "probe",
            "probe x ok",
            "probe 1",
            "probe 1 maybe",
        ] {
            assert_eq!(Status::parse(bad), None, "{bad:?}");
        }
    }
}

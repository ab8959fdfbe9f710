//! The worker process: started by the supervisor as `microservice-rust worker`, it takes the
//! listening socket on fd [`LISTEN_FD`], reads its resolved config as the first line of
//! stdin, loads the app and serves until told to stop.
//!
//! The supervisor controls it with lines on stdin (`probe ID`, `unready`, `stop`,
//! `abandon`, `report`); the worker answers on the status pipe (fd [`STATUS_FD`]): `ready`
//! once it accepts connections, `probe ID ok` or `probe ID fail REASON`. SIGTERM and SIGINT
//! mean `stop`, SIGUSR1 means `report`. It exits with a reserved code (see `exit`) when it
//! cannot start, so the supervisor can tell a worker that never came up from one that
//! crashed.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::Value;
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use crate::acceptor::Acceptor;
use crate::access;
use crate::closer;
use crate::config::{redact, Settings};
use crate::error::Error;
use crate::exit;
use crate::loader::LoadedApp;
use crate::log;
use crate::metrics::{self, Metrics};
use crate::pool::{Pool, PoolSettings};
use crate::say;
use crate::screen::Screen;
use crate::socket;
use crate::status::StatusPipe;
use crate::watch;

/// Where the worker finds the listening socket (as systemd's socket activation does).
pub const LISTEN_FD: RawFd = 3;
/// Where the worker writes its status lines.
pub const STATUS_FD: RawFd = 4;
/// The environment variable naming the supervisor's PID for its workers.
pub const SUPERVISOR_PID_VAR: &str = "MICROSERVICE_RUST_SUPERVISOR";

/// How long the work must have been quiet before a draining worker closes the keep-alive
/// connections that are still open but idle.
const IDLE_CLOSE_AFTER: Duration = Duration::from_millis(200);
/// How often the gauges in the metrics are brought up to date.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// The first line the supervisor writes on the worker's stdin.
pub fn handoff(source: &str, config: &Value) -> String {
    format!(
        "{}\n",
        serde_json::json!({ "source": source, "config": config })
    )
}

/// What the supervisor (or a signal) asks of the worker.
#[derive(Debug)]
enum Command {
    Probe(u64),
    Unready,
    Stop,
    Abandon,
    Report,
}

pub fn run() -> Result<i32, Error> {
    log::set_role("worker");
    die_with_parent();
    Metrics::attach();

    let mut control = BufReader::new(std::io::stdin());
    let mut first = String::new();
    control
        .read_line(&mut first)
        .map_err(|e| Error::boot("cannot read the config from the supervisor", e))?;
    let handoff: Value = serde_json::from_str(&first).map_err(|e| {
        Error::boot(
            "the worker is started by the supervisor, not by hand",
            std::io::Error::other(e),
        )
    })?;
    let source = handoff["source"].as_str().unwrap_or("the supervisor");
    let config = &handoff["config"];
    let settings = Settings::from_json(config, source)?;
    log::configure(settings.log_level, settings.log_format);
    access::start().map_err(|e| Error::boot("cannot start the access log", e))?;
    let app_path = settings.app.clone().ok_or_else(|| {
        Error::boot(
            "the supervisor sent no app path",
            std::io::ErrorKind::InvalidInput.into(),
        )
    })?;

    // SAFETY: the supervisor placed the listening socket on this fd before exec.
    let listener = unsafe { TcpListener::from_raw_fd(LISTEN_FD) };
    listener
        .local_addr()
        .map_err(|e| Error::boot(format!("fd {LISTEN_FD} is not a listening socket"), e))?;
    let control_listener = listener
        .try_clone()
        .map_err(|e| Error::boot("cannot duplicate the listening socket", e))?;
    let signals = Signals::new([SIGTERM, SIGINT, SIGUSR1])
        .map_err(|e| Error::boot("cannot install signal handlers", e))?;
    // SAFETY: the supervisor placed the status pipe on this fd before exec.
    let status = Arc::new(unsafe { StatusPipe::from_fd(STATUS_FD) });

    // The app gets the config without its secrets (the API key is checked before the app).
    let app = Arc::new(LoadedApp::load(&app_path, &redact(config).to_string())?);
    let threads = settings.pool_threads();
    let pool = Pool::start(
        app.clone(),
        PoolSettings {
            threads,
            timeout: settings.request_timeout(),
            max_body_bytes: settings.max_body_bytes,
            slow: settings.watchdog.request_threshold_s.map(|t| {
                (
                    Duration::from_secs_f64(t),
                    settings.watchdog.request_average as usize,
                )
            }),
        },
        status.clone(),
    );
    let closer_listener = listener
        .try_clone()
        .map_err(|e| Error::boot("cannot duplicate the listening socket", e))?;
    closer::start(closer_listener).map_err(|e| Error::boot("cannot start the closer", e))?;
    let ready = Arc::new(AtomicBool::new(false));
    let acceptor = Acceptor::start(
        listener,
        pool.sender(),
        ready.clone(),
        settings.keep_alive_timeout(),
        Screen::new(&settings),
        watch::Limits {
            keep_alive: settings.keep_alive_timeout(),
            max_head_bytes: settings.max_header_bytes,
            body_deadline: settings.request_timeout(),
        },
    )
    .map_err(|e| Error::boot("cannot start accepting connections", e))?;
    ready.store(true, Ordering::Release);
    say!(
        "serving {} ({} mode, {threads} thread(s))",
        app.path().display(),
        settings.mode.name()
    );
    status.send("ready");

    let worker = Worker {
        pool,
        acceptor,
        ready,
        listener: control_listener,
        stop_timeout: settings.stop_timeout(),
    };
    let commands = commands(control, signals)
        .map_err(|e| Error::boot("cannot start the control threads", e))?;
    loop {
        let command = match commands.recv_timeout(SAMPLE_EVERY) {
            Ok(command) => command,
            Err(RecvTimeoutError::Timeout) => {
                worker.sample();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        match command {
            Command::Probe(id) => worker.pool.probe(id),
            Command::Unready => worker.ready.store(false, Ordering::Release),
            Command::Report => worker.pool.report(),
            Command::Stop => {
                worker.drain();
                break;
            }
            Command::Abandon => {
                worker.abandon();
                break;
            }
        }
    }
    Ok(0)
}

struct Worker {
    pool: Pool,
    acceptor: Arc<Acceptor>,
    ready: Arc<AtomicBool>,
    /// The listening socket, to tell it from accepted connections.
    listener: TcpListener,
    stop_timeout: Duration,
}

impl Worker {
    /// Puts the pool's and the connections' present figures into the metrics.
    fn sample(&self) {
        if let Some(gauges) = metrics::gauges() {
            // (The watch counts the open connections.)
            self.pool.sample(gauges);
        }
    }

    /// Stops accepting, finishes what was read and lets clients close their connections,
    /// all within `stop_timeout`; then answers what is left with 503 and shuts the app down.
    fn drain(&self) {
        let started = Instant::now();
        let deadline = started + self.stop_timeout;
        self.ready.store(false, Ordering::Release);
        self.pool.drain();
        if !self.acceptor.retire(deadline) {
            say!("still accepting after {:?}", self.stop_timeout);
        }
        let mut quiet_since: Option<Instant> = None;
        loop {
            let (queued, in_app) = self.pool.busy();
            let connections = socket::accepted_connections(&self.listener);
            if queued + in_app + connections.len() == 0 || Instant::now() >= deadline {
                break;
            }
            if queued + in_app > 0 {
                quiet_since = None;
            } else if quiet_since.get_or_insert_with(Instant::now).elapsed() >= IDLE_CLOSE_AFTER {
                // Nothing in flight: what is still open is idle keep-alive connections.
                socket::shut_down(&connections);
            }
            thread::sleep(Duration::from_millis(10));
        }
        let left = self.pool.abandon();
        if left > 0 {
            say!("answered {left} unfinished request(s) with 503 at the stop timeout");
        }
        let grace = deadline.saturating_duration_since(Instant::now());
        if !self.pool.shut_down_app(grace) {
            say!("requests still inside the app; its shutdown hook is skipped");
        }
        say!("drained in {} ms", started.elapsed().as_millis());
    }

    /// Answers everything already read with 503 at once and stops accepting: this worker
    /// is being replaced because it stopped answering.
    fn abandon(&self) {
        self.ready.store(false, Ordering::Release);
        self.acceptor.abandon();
        let mut answered = self.pool.abandon();
        self.acceptor
            .retire(Instant::now() + Duration::from_secs(1));
        answered += self.pool.abandon();
        say!("abandoned: answered {answered} request(s) with 503");
    }
}

/// Commands from stdin lines and from signals, in one stream. The end of stdin (the
/// supervisor is gone) reads as `stop`.
fn commands(
    control: BufReader<std::io::Stdin>,
    mut signals: Signals,
) -> std::io::Result<Receiver<Command>> {
    let (sender, receiver) = crossbeam_channel::unbounded();
    let from_signals: Sender<Command> = sender.clone();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let command = match signal {
                    SIGUSR1 => Command::Report,
                    _ => {
                        say!("stopping on {}", exit::signal_name(signal));
                        Command::Stop
                    }
                };
                if from_signals.send(command).is_err() {
                    return;
                }
            }
        })?;
    thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for line in control.lines() {
                let Ok(line) = line else { break };
                let mut words = line.split_whitespace();
                let command = match (words.next(), words.next().and_then(|w| w.parse().ok())) {
                    (Some("probe"), Some(id)) => Command::Probe(id),
                    (Some("unready"), _) => Command::Unready,
                    (Some("stop"), _) => Command::Stop,
                    (Some("abandon"), _) => Command::Abandon,
                    (Some("report"), _) => Command::Report,
                    _ => {
                        say!("unknown command from the supervisor: {line:?}");
                        continue;
                    }
                };
                if sender.send(command).is_err() {
                    return;
                }
            }
            let _ = sender.send(Command::Stop);
        })?;
    Ok(receiver)
}

/// A worker must not outlive its supervisor (e.g. after `kill -9` of the supervisor).
fn die_with_parent() {
    // SAFETY: prctl with these arguments only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
    // The supervisor may have died before the flag was set.
    let supervisor = std::env::var(SUPERVISOR_PID_VAR).ok();
    let parent = unsafe { libc::getppid() }.to_string();
    if supervisor.is_some_and(|pid| pid != parent) {
        std::process::exit(exit::BOOT);
    }
}

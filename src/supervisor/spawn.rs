//! Starting a worker process: this program again, as `microservice-rust worker`, with the
//! listening socket, its status pipe and the metrics memory on the fds the worker expects
//! (see `control`), the config as the first line of its stdin, and a thread that turns its
//! status lines into the supervisor's events.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Stdio};
use std::thread;

use crossbeam_channel::Sender;

use super::Event;
use crate::control::{self, LISTEN_FD, STATUS_FD, SUPERVISOR_PID_VAR};
use crate::error::Error;
use crate::log::Format;
use crate::metrics::{self, METRICS_FD};
use crate::say;

/// What a worker is started with.
pub struct Start<'a> {
    pub listener: RawFd,
    pub metrics: RawFd,
    /// The worker's slot in the metrics memory; `None` when none is free.
    pub slot: Option<usize>,
    pub log_format: Format,
    /// The first line of its stdin (see `control::handoff`).
    pub handoff: &'a str,
}

/// A worker process just started.
pub struct Spawned {
    pub pid: i32,
    /// Its stdin, for commands.
    pub control: Option<ChildStdin>,
}

/// Starts a worker; its status lines come as [`Event::Status`] on `events`.
pub fn spawn(start: Start<'_>, events: Sender<Event>) -> Result<Spawned, Error> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::io("cannot find this program to start a worker", e))?;
    let (status_read, status_write) = pipe()?;
    let fds = [
        (start.listener, LISTEN_FD),
        (status_write.as_raw_fd(), STATUS_FD),
        (start.metrics, METRICS_FD),
    ];
    let mut command = std::process::Command::new(exe);
    command
        .arg(control::WORKER_COMMAND)
        .env(SUPERVISOR_PID_VAR, std::process::id().to_string())
        // The app's panic lines (written by the SDK inside the app) follow the log format.
        .env(microservice_rust::LOG_FORMAT_VAR, start.log_format.name())
        .env(
            metrics::SLOT_VAR,
            start.slot.map(|s| s.to_string()).unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        // Terminal signals go to the supervisor, which decides what the workers get.
        .process_group(0);
    // SAFETY: `place_fds` makes only async-signal-safe calls (fcntl, dup2), as the code
    // between fork and exec must.
    unsafe {
        command.pre_exec(move || place_fds(&fds));
    }
    let mut child = command
        .spawn()
        .map_err(|e| Error::io("cannot start a worker", e))?;
    drop(status_write);
    let pid = child.id() as i32;
    let mut control = child.stdin.take();
    if let Some(stdin) = control.as_mut() {
        // A worker that died at once closes the pipe; its exit status tells why.
        let _ = stdin.write_all(start.handoff.as_bytes());
    }
    watch_status(pid, status_read, events);
    Ok(Spawned { pid, control })
}

/// Reads a worker's status pipe; its lines become events.
fn watch_status(pid: i32, pipe: OwnedFd, events: Sender<Event>) {
    let spawned = thread::Builder::new().name("status".into()).spawn(move || {
        for line in BufReader::new(File::from(pipe)).lines() {
            let Ok(line) = line else { return };
            if events.send(Event::Status { pid, line }).is_err() {
                return;
            }
        }
    });
    if let Err(e) = spawned {
        say!("cannot watch worker {pid}'s status: {e}");
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills both fds on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::io(
            "cannot create a pipe",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// In the child between fork and exec: puts each `from` fd on its `to` number, inheritable.
/// Goes through fresh numbers first so that one move cannot overwrite another's source.
fn place_fds(moves: &[(RawFd, RawFd); 3]) -> std::io::Result<()> {
    let check = |rc: i32| match rc {
        -1 => Err(std::io::Error::last_os_error()),
        rc => Ok(rc),
    };
    let mut temporary = [0 as RawFd; 3];
    for (i, &(from, _)) in moves.iter().enumerate() {
        // SAFETY: fcntl on an fd of this process; it only makes a new one.
        temporary[i] = check(unsafe { libc::fcntl(from, libc::F_DUPFD_CLOEXEC, 10) })?;
    }
    for (i, &(_, to)) in moves.iter().enumerate() {
        // dup2 leaves the new fd without FD_CLOEXEC, so the worker inherits it.
        // SAFETY: dup2 of an fd just made onto a number this child reserves for it.
        check(unsafe { libc::dup2(temporary[i], to) })?;
    }
    Ok(())
}

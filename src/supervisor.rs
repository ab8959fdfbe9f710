//! The supervisor: PID 1 of the container. It binds the listening socket once, starts the
//! worker processes on it, and owns every decision in one loop fed by events.
//!
//! Signal handlers and the readers of the workers' status pipes only send [`Event`]s; the
//! loop reaps, logs, forwards and decides. Each worker's life is an explicit
//! [`WorkerState`].

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use crate::config::Loaded;
use crate::error::Error;
use crate::exit;
use crate::log;
use crate::say;
use crate::socket;
use crate::worker::{self, LISTEN_FD, STATUS_FD, SUPERVISOR_PID_VAR};

/// What the supervisor loop reacts to.
#[derive(Debug)]
pub enum Event {
    Signal(i32),
    /// A worker said on its status pipe that it accepts connections.
    Ready(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Started; loading the app.
    Starting,
    /// Accepting connections.
    Ready,
    /// Sent a stop signal.
    Stopping,
}

struct Worker {
    pid: i32,
    state: WorkerState,
    started: Instant,
}

pub struct Supervisor {
    listener: TcpListener,
    handoff: String,
    workers: Vec<Worker>,
    events: Receiver<Event>,
    sender: Sender<Event>,
    /// Set once a stop signal arrived: the workers' end is then the supervisor's end.
    stopping: bool,
}

impl Supervisor {
    /// Binds, starts the workers and runs the loop; returns the exit code.
    pub fn run(mut loaded: Loaded) -> Result<i32, Error> {
        log::set_role("supervisor");
        let settings = &loaded.settings;
        let listener = socket::bind(settings.host, settings.port, settings.keep_alive_timeout())?;
        let address = listener
            .local_addr()
            .map_err(|e| Error::io("cannot read the bound address", e))?;
        // Port 0 asks the system for a free port; the app is told the one in force.
        loaded.set("port", serde_json::json!(address.port()), "the bound port")?;
        let settings = &loaded.settings;
        let (sender, events) = crossbeam_channel::unbounded();
        forward_signals(sender.clone())?;
        say!(
            "listening on http://{address} ({} mode, {} thread(s), config: {})",
            settings.mode.name(),
            settings.pool_threads(),
            loaded.source_name()
        );
        let mut supervisor = Supervisor {
            listener,
            handoff: worker::handoff(&loaded.source_name(), &loaded.effective()),
            workers: Vec::new(),
            events,
            sender,
            stopping: false,
        };
        for _ in 0..settings.workers {
            supervisor.spawn_worker()?;
        }
        Ok(supervisor.supervise())
    }

    fn supervise(&mut self) -> i32 {
        loop {
            let event = self
                .events
                .recv()
                .expect("the supervisor holds a sender, so the channel stays open");
            match event {
                Event::Signal(SIGCHLD) => {
                    if let Some(code) = self.reap_workers() {
                        return code;
                    }
                }
                Event::Signal(signal @ (SIGTERM | SIGINT)) => {
                    say!("{}: stopping the workers", exit::signal_name(signal));
                    self.stopping = true;
                    self.signal_workers(signal);
                }
                Event::Signal(signal) => {
                    say!("{} is not acted on yet", exit::signal_name(signal));
                }
                Event::Ready(pid) => self.mark_ready(pid),
            }
        }
    }

    /// Starts one worker on the listening socket.
    fn spawn_worker(&mut self) -> Result<(), Error> {
        let exe = std::env::current_exe()
            .map_err(|e| Error::io("cannot find this program to start a worker", e))?;
        let (status_read, status_write) = pipe()?;
        let listen_fd = self.listener.as_raw_fd();
        let status_fd = status_write.as_raw_fd();
        let mut command = Command::new(exe);
        command
            .arg("worker")
            .env(SUPERVISOR_PID_VAR, std::process::id().to_string())
            .stdin(Stdio::piped())
            // Terminal signals go to the supervisor, which decides what the workers get.
            .process_group(0);
        // SAFETY: only async-signal-safe calls (fcntl, dup2, close) between fork and exec.
        unsafe {
            command.pre_exec(move || place_fds(&[(listen_fd, LISTEN_FD), (status_fd, STATUS_FD)]));
        }
        let mut child = command
            .spawn()
            .map_err(|e| Error::io("cannot start a worker", e))?;
        drop(status_write);
        let pid = child.id() as i32;
        if let Some(mut stdin) = child.stdin.take() {
            // A worker that died at once closes the pipe; its exit status tells why.
            let _ = stdin.write_all(self.handoff.as_bytes());
        }
        watch_status(pid, status_read, self.sender.clone());
        self.workers.push(Worker {
            pid,
            state: WorkerState::Starting,
            started: Instant::now(),
        });
        say!("started worker {pid}");
        Ok(())
    }

    fn mark_ready(&mut self, pid: i32) {
        if let Some(worker) = self.workers.iter_mut().find(|w| w.pid == pid) {
            if worker.state == WorkerState::Starting {
                worker.state = WorkerState::Ready;
                say!(
                    "worker {pid} ready after {} ms",
                    worker.started.elapsed().as_millis()
                );
            }
        }
    }

    fn signal_workers(&mut self, signal: i32) {
        for worker in &mut self.workers {
            // SAFETY: kill on a child we have not reaped yet, so the PID is still ours.
            unsafe { libc::kill(worker.pid, signal) };
            worker.state = WorkerState::Stopping;
        }
    }

    /// Reaps every exited child (workers and orphans alike, as PID 1 must). Returns the exit
    /// code once the last worker is gone.
    fn reap_workers(&mut self) -> Option<i32> {
        let mut last_code = None;
        for (pid, status) in reap_children() {
            let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
                continue; // an orphan re-parented to us
            };
            let worker = self.workers.remove(index);
            say!("worker {pid} {}", exit::describe_wait_status(status));
            if !self.stopping {
                // Restarting with back-off belongs to the supervision issue; until then a
                // worker's end is the service's end, with the worker's status.
                match worker.state {
                    WorkerState::Starting => say!("the worker could not start; stopping"),
                    _ => say!("the worker ended unexpectedly; stopping"),
                }
                self.stopping = true;
                self.signal_workers(SIGTERM);
            }
            last_code = Some(exit::from_wait_status(status));
        }
        match self.workers.is_empty() {
            true => last_code,
            false => None,
        }
    }
}

/// Every child that has exited, as (pid, wait status).
fn reap_children() -> Vec<(i32, i32)> {
    let mut reaped = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return reaped;
        }
        reaped.push((pid, status));
    }
}

/// Signals reach the loop as events; nothing else happens in a handler.
fn forward_signals(sender: Sender<Event>) -> Result<(), Error> {
    let mut signals = Signals::new([SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1])
        .map_err(|e| Error::io("cannot install signal handlers", e))?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if sender.send(Event::Signal(signal)).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| Error::io("cannot start the signal thread", e))?;
    Ok(())
}

/// Reads a worker's status pipe; its lines become events.
fn watch_status(pid: i32, pipe: OwnedFd, sender: Sender<Event>) {
    let spawned = thread::Builder::new().name("status".into()).spawn(move || {
        for line in BufReader::new(File::from(pipe)).lines() {
            match line.as_deref() {
                Ok("ready") => {
                    let _ = sender.send(Event::Ready(pid));
                }
                Ok(_) => {}
                Err(_) => return,
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
fn place_fds(moves: &[(RawFd, RawFd)]) -> std::io::Result<()> {
    let check = |rc: i32| match rc {
        -1 => Err(std::io::Error::last_os_error()),
        rc => Ok(rc),
    };
    let mut temporary = [0 as RawFd; 4];
    for (i, &(from, _)) in moves.iter().enumerate() {
        temporary[i] = check(unsafe { libc::fcntl(from, libc::F_DUPFD_CLOEXEC, 10) })?;
    }
    for (i, &(_, to)) in moves.iter().enumerate() {
        // dup2 leaves the new fd without FD_CLOEXEC, so the worker inherits it.
        check(unsafe { libc::dup2(temporary[i], to) })?;
    }
    Ok(())
}

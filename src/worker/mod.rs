//! The worker process: started by the supervisor as `microservice-rust worker`, it takes the
//! listening socket on fd [`LISTEN_FD`], reads its resolved config as the first line of
//! stdin, loads the app and serves until told to stop.
//!
//! A request's whole path, in reading order (each module uses only those after it):
//!
//! * [`front`]: the tokio runtime's I/O threads accept connections (at most
//!   `max_connections`) and hyper serves HTTP/1.1 on each; every limit on a connection
//!   (idle time, head time and size) is hyper's own.
//! * [`exchange`]: one request on the I/O side: `/readyz` and `/metrics` answered there,
//!   the head checked ([`screen`]), the body read in full within its limits, the request
//!   handed to the pool (or shed past `max_queue`), and its answer awaited with a timer at
//!   its deadline (504).
//! * [`shared`]: what every request of the worker shares: the pool, the connection count,
//!   the limits, the records, the worker's phase.
//! * [`pool`]: the fixed pool of OS threads on which the app runs (never an I/O thread);
//!   threads stuck past a deadline are written off and replaced; its `batch` gathers
//!   batches when `batching` is on.
//! * [`bridge`]: the app's C view of a request, and its response as an answer; [`call`]:
//!   what the app may call during a request (cancellation, streaming).
//! * [`health`]: what `/healthz` and the watchdog's probes ask.
//! * [`answer`]: every answer the worker sends, streamed bodies too.
//! * [`request`]: a request read in full and its state, shared by the I/O side and the
//!   pool; [`request_id`]: its ID.
//! * [`access`]: the access log, and the writer of the worker's buffered lines; [`text`]:
//!   numbers and addresses written without `fmt`.
//!
//! Beside the path: [`loader`] loads the app, [`host`] is what the app may call for the
//! life of the process (its own log lines and metrics), [`status`] the pipe to the
//! supervisor, [`fault`] the fault points of debug builds.
//!
//! The supervisor controls the worker with lines on stdin (see [`crate::control`]); the
//! worker answers on the status pipe. SIGTERM and SIGINT mean `stop`, SIGUSR1 `report`. It
//! exits with a reserved code (see [`crate::exit`]) when it cannot start, so the
//! supervisor can tell a worker that never came up from one that crashed.

mod access;
mod answer;
mod bridge;
mod budget;
mod call;
mod exchange;
mod fault;
mod front;
mod head;
mod health;
mod host;
mod loader;
mod pool;
mod request;
mod request_id;
mod screen;
mod shared;
mod status;
mod text;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::config::{redact, App, Settings};
use crate::control::{Command, Status, LISTEN_FD, STATUS_FD, SUPERVISOR_PID_VAR};
use crate::error::Error;
use crate::exit;
use crate::log;
use crate::metrics::Recorder;
use crate::say;
use access::{Ledger, Lines};
use fault::Faults;
use front::Front;
use health::{Health, SlowRequests};
use loader::LoadedApp;
use pool::{Batching, Pool, PoolSettings};
use screen::Screen;
use shared::Context;
use status::StatusPipe;

/// How often the gauges in the metrics are brought up to date.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// How long a worker being replaced for not answering has to send its 503s.
const ABANDON_GRACE: Duration = Duration::from_secs(1);

/// How many tasks an I/O thread runs between looks at the sockets that became ready and
/// at the answers the pool sent (tokio's default: 61). While uploads keep every I/O thread
/// busy, each task reads up to 64 KiB of a body, and a new connection or an answer waited
/// for 61 of them at each of its steps. Measured with 500 clients uploading 10 MiB, 5
/// alternating runs each: a fresh `GET /` took 5.0–6.0 ms at the median and 28–63 at the
/// p99 with 61, 1.0–1.2 and 20–26 with 8 (16: 1.8–2.2 and 23–45; 32: 3.1–3.8 and 21–27).
/// The price, `GET /` at 64 connections beside the build with 61 on one core: 3% more CPU
/// per request.
const LOOK_EVERY: u32 = 8;

pub fn run() -> Result<i32, Error> {
    log::set_role("worker");
    die_with_parent();
    let metrics = Recorder::attach()?;

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
    let lines =
        Arc::new(Lines::start(metrics).map_err(|e| Error::boot("cannot start the log writer", e))?);
    let ledger = Arc::new(Ledger::new(metrics, lines.clone()));
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
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::boot("cannot make the listening socket non-blocking", e))?;
    let signals = Signals::new([SIGTERM, SIGINT, SIGUSR1])
        .map_err(|e| Error::boot("cannot install signal handlers", e))?;
    // SAFETY: the supervisor placed the status pipe on this fd before exec.
    let status = Arc::new(unsafe { StatusPipe::from_fd(STATUS_FD) });

    return_large_blocks_at_once();
    let faults = Faults::from_env();
    // The app gets the config without its secrets (the API key is checked before the app).
    let host = host::table(lines.clone(), metrics, faults.clone());
    let app = Arc::new(LoadedApp::load(
        &App::parse(&app_path),
        &redact(config).to_string(),
        host,
    )?);
    let threads = settings.pool_threads();
    let batching = match (&settings.batching, app.batches()) {
        (Some(b), true) => Some(Batching {
            most: b.max_size,
            wait: Duration::from_secs_f64(b.timeout_s),
        }),
        (Some(_), false) => {
            say!(
                "`batching` is set, but {} has no batch handler (msr_handle_batch): requests \
                 go to it one at a time",
                app_path.display()
            );
            None
        }
        (None, _) => None,
    };
    let health = Arc::new(Health::new(settings.watchdog.request_threshold_s.map(
        |t| SlowRequests {
            threshold: Duration::from_secs_f64(t),
            count: settings.watchdog.request_average as usize,
        },
    )));
    let io_threads = settings.io_threads();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(io_threads)
        .max_blocking_threads(1)
        .thread_name("io")
        .event_interval(LOOK_EVERY)
        .global_queue_interval(LOOK_EVERY)
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Error::boot("cannot start the I/O threads", e))?;
    let pool = Pool::start(
        app.clone(),
        PoolSettings {
            threads,
            max_queue: usize::try_from(settings.max_queue).unwrap_or(usize::MAX),
            batching,
        },
        status.clone(),
        health.clone(),
        ledger.clone(),
        runtime.handle().clone(),
        faults,
    )
    .map_err(|e| Error::boot("cannot start the pool's threads", e))?;
    let (commands, received) = unbounded_channel();
    read_commands(control, signals, commands)
        .map_err(|e| Error::boot("cannot start the control threads", e))?;

    let context = Arc::new(Context::new(
        pool,
        Screen::new(&settings),
        &settings,
        io_threads,
        metrics,
        ledger,
    ));
    let max_connections = settings.max_connections();
    let mode = settings.mode.name();
    let stop_timeout = settings.stop_timeout();
    let served = runtime.block_on(async move {
        let front = Front::start(listener, context, health, &settings)
            .map_err(|e| Error::boot("cannot start accepting connections", e))?;
        say!(
            "serving {} ({mode} mode, {threads} thread(s), {io_threads} I/O thread(s), up to {max_connections} connections)",
            app.path().display(),
        );
        status.send(&Status::Ready);
        crate::resident::let_go_of_code();
        let worker = Worker {
            front,
            stop_timeout,
        };
        worker.serve(received).await;
        worker.front.context().finish_log();
        Ok(())
    });
    // Threads stuck in the app stay stuck; the process exit ends them.
    runtime.shutdown_background();
    served.map(|()| 0)
}

struct Worker {
    front: Front,
    stop_timeout: Duration,
}

impl Worker {
    /// Follows the supervisor's commands until told to stop or abandon.
    async fn serve(&self, mut commands: UnboundedReceiver<Command>) {
        let mut sample = tokio::time::interval(SAMPLE_EVERY);
        loop {
            let command = tokio::select! {
                command = commands.recv() => command.unwrap_or(Command::Stop),
                _ = sample.tick() => {
                    self.front.sample();
                    continue;
                }
            };
            match command {
                Command::Probe(id) => self.front.context().pool.probe(id),
                Command::Unready => self.front.context().set_ready(false),
                Command::Report => self.front.report(),
                Command::Stop => return self.drain().await,
                Command::Abandon => return self.abandon().await,
            }
        }
    }

    /// Stops accepting, lets hyper finish what was read and close idle connections, all
    /// within `stop_timeout`; then answers what is left with 503 and shuts the app down.
    async fn drain(&self) {
        let started = Instant::now();
        let deadline = started + self.stop_timeout;
        if !self.front.retire(deadline).await {
            let answered = self.front.abandon(Instant::now() + ABANDON_GRACE).await;
            say!("answered {answered} unfinished request(s) with 503 at the stop timeout");
        }
        let grace = deadline.saturating_duration_since(Instant::now());
        let pool = &self.front.context().pool;
        if !tokio::task::block_in_place(|| pool.shut_down_app(grace)) {
            say!("requests still inside the app; its shutdown hook is skipped");
        }
        say!("drained in {} ms", started.elapsed().as_millis());
    }

    /// Answers everything already read with 503 at once and stops accepting: this worker
    /// is being replaced because it stopped answering.
    async fn abandon(&self) {
        let answered = self.front.abandon(Instant::now() + ABANDON_GRACE).await;
        say!("abandoned: answered {answered} request(s) with 503");
    }
}

/// Commands from stdin lines and from signals, in one stream. The end of stdin (the
/// supervisor is gone) reads as `stop`.
fn read_commands(
    control: BufReader<std::io::Stdin>,
    mut signals: Signals,
    sender: UnboundedSender<Command>,
) -> std::io::Result<()> {
    let from_signals = sender.clone();
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
                let Some(command) = Command::parse(&line) else {
                    say!("unknown command from the supervisor: {line:?}");
                    continue;
                };
                if sender.send(command).is_err() {
                    return;
                }
            }
            let _ = sender.send(Command::Stop);
        })?;
    Ok(())
}

/// A worker must not outlive its supervisor (e.g. after `kill -9` of the supervisor).
fn die_with_parent() {
    // SAFETY: prctl with these arguments only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
    // The supervisor may have died before the flag was set.
    let supervisor = std::env::var(SUPERVISOR_PID_VAR).ok();
    // SAFETY: getppid has no preconditions and cannot fail.
    let parent = unsafe { libc::getppid() }.to_string();
    if supervisor.is_some_and(|pid| pid != parent) {
        std::process::exit(exit::BOOT);
    }
}

/// Blocks of [`LARGE_BLOCK`] or more (request bodies above all) get a mapping of their own,
/// unmapped when freed. glibc's malloc otherwise raises that threshold to the size of the
/// largest block freed (up to 32 MiB), and the next bodies come from its heaps, which keep
/// what they grew to: measured with 500 clients uploading 10 MiB bodies under a budget of
/// 1 GiB, the worker's memory went 247 MiB past the budget.
fn return_large_blocks_at_once() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt sets a parameter of glibc's allocator under its own locks; it touches
    // no memory of ours.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE_BLOCK);
    }
}

/// See [`return_large_blocks_at_once`].
#[cfg(target_env = "gnu")]
const LARGE_BLOCK: libc::c_int = 1 << 20;

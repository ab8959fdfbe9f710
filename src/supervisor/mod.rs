//! The supervisor: PID 1 of the container. It binds the listening socket once, starts the
//! worker processes on it, and owns every decision in one loop fed by [`Event`]s.
//!
//! Signal handlers, the readers of the workers' status pipes and the file watcher only send
//! events; the loop reaps, logs, probes, replaces, drains and decides. Each worker's life is
//! an explicit [`WorkerState`]; the service's is a [`Phase`]. The listening socket stays
//! open in the supervisor for its whole life, so no restart, reload or replacement ever
//! refuses a connection: connections queue on the socket until some worker accepts them.
//!
//! A *replacement* (watchdog, dev reload, SIGHUP) starts the new worker first; only once it
//! says `ready` is the old one told to stop: `stop` (drain: finish what it has, with
//! `Connection: close`) or, for a worker that stopped answering, `abandon` (answer what it
//! has read with 503 at once). SIGKILL follows if it is still there at its deadline.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGKILL, SIGTERM, SIGUSR1};

mod listen;
mod reload;
mod signals;

pub use listen::address_file;

use crate::config::{App, Loaded, Mode, Settings};
use crate::control::{self, Command, Status, LISTEN_FD, STATUS_FD, SUPERVISOR_PID_VAR};
use crate::error::Error;
use crate::exit;
use crate::log;
use crate::metrics::{self, Restart, METRICS_FD};
use crate::{say, warn};
use listen::AddressFile;
use reload::{Changed, Identity};

/// The loop looks at its clocks (probes, deadlines, restarts) at least this often.
const TICK: Duration = Duration::from_millis(50);
/// File changes closer together than this are one change.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(150);
/// Crash restarts wait 100 ms, doubling per crash in a row, up to this.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(10);
/// A worker that served this long before crashing resets the back-off.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Extra time a stopping worker gets beyond its own deadline before SIGKILL.
const KILL_MARGIN: Duration = Duration::from_secs(2);

/// What the supervisor loop reacts to.
#[derive(Debug)]
pub enum Event {
    Signal(i32),
    /// A line a worker wrote on its status pipe.
    Status {
        pid: i32,
        line: String,
    },
    /// Dev: the app library or a `dev.watch` path changed.
    Changed(Changed),
    /// Dev: `dev.build_command` finished (it logs how).
    Built,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Started; loading the app.
    Starting,
    /// Accepting connections and answering probes.
    Ready,
    /// Told to stop or abandon; SIGKILL at its deadline.
    Stopping,
}

/// Why a worker is being replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Watchdog,
    Reload,
    Config,
    /// Past `max_requests` or `max_worker_memory_mb`.
    Recycle,
}

impl Reason {
    fn restart(self) -> Restart {
        match self {
            Reason::Watchdog => Restart::Watchdog,
            Reason::Reload => Restart::Reload,
            Reason::Config => Restart::Signal,
            Reason::Recycle => Restart::Recycle,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Reason::Watchdog => "watchdog",
            Reason::Reload => "reload",
            Reason::Config => "config re-read",
            Reason::Recycle => "recycle",
        }
    }
}

/// How a worker is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Finish what was read, within `stop_timeout_s`.
    Drain,
    /// Answer what was read with 503 now (it stopped answering).
    Abandon,
}

/// The service's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// SIGTERM: `/readyz` says 503, requests are still served until `until`.
    Draining {
        until: Instant,
    },
    /// The workers are told to stop; the supervisor exits when they are gone.
    Stopping,
}

/// The watchdog's view of one worker.
struct Probes {
    next_id: u64,
    outstanding: Option<(u64, Instant)>,
    misses: u32,
    next_at: Instant,
    last_answer: Instant,
}

struct Worker {
    pid: i32,
    state: WorkerState,
    started: Instant,
    ready_at: Option<Instant>,
    control: Option<ChildStdin>,
    /// The worker this one takes over from once ready, and why.
    replaces: Option<(i32, Reason)>,
    /// A replacement for this worker is on its way: no more probes.
    replaced: bool,
    /// Requests after which it is recycled (`max_requests` plus its share of the jitter).
    request_limit: Option<u64>,
    probes: Probes,
    kill_at: Option<Instant>,
}

/// Re-reads the config for SIGHUP (with the same command line).
pub type Resolve = Box<dyn Fn() -> Result<Loaded, Error>>;

pub struct Supervisor {
    listener: TcpListener,
    loaded: Loaded,
    resolve: Resolve,
    handoff: String,
    workers: Vec<Worker>,
    events: Receiver<Event>,
    sender: Sender<Event>,
    phase: Phase,
    crash_streak: u32,
    restarts_due: Vec<Instant>,
    rolling: VecDeque<i32>,
    reload_due: Option<(Instant, Changed)>,
    library: Identity,
    /// Dev: `dev.build_command` is running; changes meanwhile wait for it.
    building: bool,
    /// Some worker has been ready since start: a later start-up failure may be passing.
    ever_ready: bool,
    exit_code: Option<i32>,
    /// The shared metrics memory (see `metrics`), placed on each worker's METRICS_FD.
    metrics_fd: OwnedFd,
    slots: metrics::Slots,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Supervisor {
    /// Binds, starts the workers and runs the loop; returns the exit code.
    pub fn run(mut loaded: Loaded, resolve: Resolve) -> Result<i32, Error> {
        log::set_role("supervisor");
        log::configure(loaded.settings.log_level, loaded.settings.log_format);
        become_subreaper();
        let settings = &loaded.settings;
        for warning in loaded.warnings() {
            warn!("config: {warning}");
        }
        let listener = listen::bind(settings.host, settings.port)?;
        let address = listener
            .local_addr()
            .map_err(|e| Error::io("cannot read the bound address", e))?;
        // Port 0 asks the system for a free port; the app is told the one in force.
        loaded.set("port", serde_json::json!(address.port()), "the bound port")?;
        let address_file = AddressFile::write(&listener);
        let (sender, events) = crossbeam_channel::unbounded();
        signals::forward(sender.clone())?;
        let settings = &loaded.settings;
        say!(
            "listening on http://{address} ({} mode, {}; {} worker(s) of {} thread(s); config: {})",
            settings.mode.name(),
            loaded.mode_origin(),
            settings.workers,
            settings.pool_threads(),
            loaded.source_name()
        );
        let app = settings
            .app
            .clone()
            .expect("the command line resolves the app");
        let watcher = match settings.mode {
            Mode::Dev => {
                let sources: Vec<_> = settings.dev.watch.iter().map(Into::into).collect();
                match reload::watch(&App::parse(&app), &sources, sender.clone()) {
                    Ok(watcher) => Some(watcher),
                    Err(e) => {
                        say!("dev reload is off: {e}");
                        None
                    }
                }
            }
            Mode::Production => None,
        };
        let (metrics_fd, slots) = metrics::create()?;
        let mut supervisor = Supervisor {
            metrics_fd,
            slots,
            listener,
            handoff: control::handoff(&loaded.source_name(), &loaded.effective()),
            library: reload::identity(&app),
            building: false,
            ever_ready: false,
            loaded,
            resolve,
            workers: Vec::new(),
            events,
            sender,
            phase: Phase::Serving,
            crash_streak: 0,
            restarts_due: Vec::new(),
            rolling: VecDeque::new(),
            reload_due: None,
            exit_code: None,
            _watcher: watcher,
        };
        for _ in 0..supervisor.loaded.settings.workers {
            supervisor.spawn_worker(None)?;
        }
        let code = supervisor.supervise();
        drop(address_file);
        Ok(code)
    }

    fn supervise(&mut self) -> i32 {
        loop {
            match self.events.recv_timeout(TICK) {
                Ok(event) => self.handle(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    unreachable!("the supervisor holds a sender, so the channel stays open")
                }
            }
            while let Ok(event) = self.events.try_recv() {
                self.handle(event);
            }
            self.tick(Instant::now());
            if self.workers.is_empty() {
                if let Some(code) = self.exit_code {
                    return code;
                }
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Signal(SIGCHLD) => self.reap_workers(),
            Event::Signal(signal @ (SIGTERM | SIGINT)) => self.begin_stop(signal),
            Event::Signal(SIGHUP) => self.reread_config(),
            Event::Signal(SIGUSR1) => {
                say!("SIGUSR1: asking the workers for their requests in flight");
                for pid in self.pids(|w| w.state != WorkerState::Stopping) {
                    self.tell(pid, Command::Report);
                }
            }
            Event::Signal(signal) => say!("ignoring {}", exit::signal_name(signal)),
            Event::Status { pid, line } => self.status(pid, &line),
            Event::Changed(changed) if self.phase == Phase::Serving => {
                // A change of the app outranks a source change in the same burst.
                let kind = match self.reload_due {
                    Some((_, app @ (Changed::Library | Changed::Python))) => app,
                    _ => changed,
                };
                self.reload_due = Some((Instant::now() + RELOAD_DEBOUNCE, kind));
            }
            Event::Built => self.building = false,
            Event::Changed(_) => {}
        }
    }

    fn tick(&mut self, now: Instant) {
        self.reload_if_due(now);
        self.watch_health(now);
        self.restart_if_due(now);
        self.roll_on();
        self.recycle_if_due();
        if let Phase::Draining { until } = self.phase {
            if now >= until {
                self.phase = Phase::Stopping;
                say!("drain time over: refusing new connections, stopping the workers");
                listen::stop_listening(&self.listener);
                for pid in self.pids(|w| w.state != WorkerState::Stopping) {
                    self.stop(pid, Stop::Drain);
                }
            }
        }
        self.kill_overdue(now);
    }

    /// Starts one worker on the listening socket; `replaces` is the worker it takes over
    /// from once ready.
    fn spawn_worker(&mut self, replaces: Option<(i32, Reason)>) -> Result<i32, Error> {
        let exe = std::env::current_exe()
            .map_err(|e| Error::io("cannot find this program to start a worker", e))?;
        let (status_read, status_write) = pipe()?;
        let listen_fd = self.listener.as_raw_fd();
        let status_fd = status_write.as_raw_fd();
        let metrics_fd = self.metrics_fd.as_raw_fd();
        let slot = self.slots.take();
        if slot.is_none() {
            say!("no free metrics slot: the new worker's figures stay out of /metrics");
        }
        let mut command = std::process::Command::new(exe);
        command
            .arg(control::WORKER_COMMAND)
            .env(SUPERVISOR_PID_VAR, std::process::id().to_string())
            // The app's panic lines (written by the SDK inside the app) follow the log format.
            .env(
                microservice_rust::LOG_FORMAT_VAR,
                self.loaded.settings.log_format.name(),
            )
            .env(
                metrics::SLOT_VAR,
                slot.map(|s| s.to_string()).unwrap_or_default(),
            )
            .stdin(Stdio::piped())
            // Terminal signals go to the supervisor, which decides what the workers get.
            .process_group(0);
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                place_fds(&[
                    (listen_fd, LISTEN_FD),
                    (status_fd, STATUS_FD),
                    (metrics_fd, METRICS_FD),
                ])
            });
        }
        let spawned = command.spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                if let Some(slot) = slot {
                    self.slots.release(slot);
                }
                return Err(Error::io("cannot start a worker", e));
            }
        };
        drop(status_write);
        let pid = child.id() as i32;
        if let Some(slot) = slot {
            self.slots.started(slot, pid);
        }
        if let Some((_, reason)) = replaces {
            self.slots.restarted(reason.restart());
        }
        let mut control = child.stdin.take();
        if let Some(stdin) = control.as_mut() {
            // A worker that died at once closes the pipe; its exit status tells why.
            let _ = stdin.write_all(self.handoff.as_bytes());
        }
        watch_status(pid, status_read, self.sender.clone());
        let now = Instant::now();
        self.workers.push(Worker {
            pid,
            state: WorkerState::Starting,
            started: now,
            ready_at: None,
            control,
            replaces,
            replaced: false,
            request_limit: request_limit(&self.loaded.settings, pid),
            probes: Probes {
                next_id: 1,
                outstanding: None,
                misses: 0,
                next_at: now,
                last_answer: now,
            },
            kill_at: None,
        });
        match replaces {
            Some((old, reason)) => {
                say!("started worker {pid} to replace {old} ({})", reason.name())
            }
            None => say!("started worker {pid}"),
        }
        Ok(pid)
    }

    fn worker(&mut self, pid: i32) -> Option<&mut Worker> {
        self.workers.iter_mut().find(|w| w.pid == pid)
    }

    fn pids(&self, filter: impl Fn(&Worker) -> bool) -> Vec<i32> {
        self.workers
            .iter()
            .filter(|w| filter(w))
            .map(|w| w.pid)
            .collect()
    }

    /// Writes a command line on the worker's stdin; `false` if it cannot be delivered.
    fn tell(&mut self, pid: i32, command: Command) -> bool {
        let Some(worker) = self.worker(pid) else {
            return false;
        };
        match worker.control.as_mut() {
            Some(control) => control
                .write_all(format!("{}\n", command.line()).as_bytes())
                .is_ok(),
            None => false,
        }
    }

    fn status(&mut self, pid: i32, line: &str) {
        match Status::parse(line) {
            Some(Status::Ready) => self.mark_ready(pid),
            Some(Status::Probe { id, health }) => self.probe_answered(pid, id, health.err()),
            None => say!("worker {pid} said something unexpected: {line:?}"),
        }
    }

    fn mark_ready(&mut self, pid: i32) {
        let interval = self.loaded.settings.watchdog.interval();
        let serving = self.phase == Phase::Serving;
        let Some(worker) = self.worker(pid) else {
            return;
        };
        if worker.state != WorkerState::Starting {
            return;
        }
        let now = Instant::now();
        worker.state = WorkerState::Ready;
        worker.ready_at = Some(now);
        worker.probes.next_at = now + interval;
        worker.probes.last_answer = now;
        let replaces = worker.replaces.take();
        say!(
            "worker {pid} ready after {} ms",
            worker.started.elapsed().as_millis()
        );
        self.ever_ready = true;
        if !serving {
            self.stop(pid, Stop::Drain);
            return;
        }
        if let Some((old, reason)) = replaces {
            if self
                .worker(old)
                .is_some_and(|w| w.state != WorkerState::Stopping)
            {
                let how = match reason {
                    Reason::Watchdog => Stop::Abandon,
                    Reason::Reload | Reason::Config | Reason::Recycle => Stop::Drain,
                };
                say!("worker {pid} took over from {old} ({})", reason.name());
                self.stop(old, how);
            }
        }
    }

    /// Asks a worker to stop; SIGKILL follows at its deadline.
    fn stop(&mut self, pid: i32, how: Stop) {
        let grace = match how {
            Stop::Drain => self.loaded.settings.stop_timeout(),
            Stop::Abandon => Duration::from_secs(1),
        } + KILL_MARGIN;
        let command = match how {
            Stop::Drain => Command::Stop,
            Stop::Abandon => Command::Abandon,
        };
        let delivered = self.tell(pid, command);
        let Some(worker) = self.worker(pid) else {
            return;
        };
        worker.state = WorkerState::Stopping;
        worker.kill_at = Some(Instant::now() + grace);
        if !delivered {
            // SAFETY: kill on a child not yet reaped, so the PID is still ours.
            unsafe { libc::kill(pid, SIGTERM) };
        }
    }

    fn kill_overdue(&mut self, now: Instant) {
        for worker in &mut self.workers {
            if worker.kill_at.is_some_and(|at| now >= at) {
                say!("worker {} did not stop in time: SIGKILL", worker.pid);
                // SAFETY: as in `stop`.
                unsafe { libc::kill(worker.pid, SIGKILL) };
                worker.kill_at = None;
            }
        }
    }

    /// SIGTERM/SIGINT: not ready at once, serve on for `drain_time_s`, then stop. A second
    /// signal skips the drain time; a third kills.
    fn begin_stop(&mut self, signal: i32) {
        let name = exit::signal_name(signal);
        let settings = &self.loaded.settings;
        match self.phase {
            Phase::Serving => {
                say!(
                    "{name}: draining for {}s, then stopping (stop timeout {}s)",
                    settings.drain_time_s,
                    settings.stop_timeout_s
                );
                self.phase = Phase::Draining {
                    until: Instant::now() + Duration::from_secs_f64(settings.drain_time_s),
                };
                self.exit_code = Some(0);
                self.restarts_due.clear();
                self.rolling.clear();
                self.reload_due = None;
                for pid in self.pids(|w| w.state != WorkerState::Stopping) {
                    self.tell(pid, Command::Unready);
                }
            }
            Phase::Draining { .. } => {
                say!("{name} again: stopping now");
                self.phase = Phase::Draining {
                    until: Instant::now(),
                };
            }
            Phase::Stopping => {
                say!("{name} again: killing the workers");
                for worker in &mut self.workers {
                    worker.kill_at = Some(Instant::now());
                }
            }
        }
    }

    /// SIGHUP: re-reads the config; a bad one is refused and the running one stays. A good
    /// one replaces the workers one by one.
    fn reread_config(&mut self) {
        if self.phase != Phase::Serving {
            return;
        }
        let mut loaded = match (self.resolve)() {
            Ok(loaded) => loaded,
            Err(e) => {
                say!("SIGHUP: the config is refused, the running one stays: {e}");
                return;
            }
        };
        for warning in loaded.warnings() {
            warn!("SIGHUP: config: {warning}");
        }
        let bound = self.listener.local_addr().map(|a| a.port()).unwrap_or(0);
        if loaded.settings.port != bound && loaded.settings.port != 0 {
            say!("SIGHUP: a new port needs a restart; keeping port {bound}");
        }
        if let Err(e) = loaded.set("port", serde_json::json!(bound), "the bound port") {
            say!("SIGHUP: the config is refused, the running one stays: {e}");
            return;
        }
        self.handoff = control::handoff(&loaded.source_name(), &loaded.effective());
        self.loaded = loaded;
        self.rolling = self
            .pids(|w| w.state != WorkerState::Stopping && !w.replaced)
            .into();
        say!(
            "SIGHUP: config re-read from {}; replacing {} worker(s) one by one",
            self.loaded.source_name(),
            self.rolling.len()
        );
    }

    /// Replaces the next worker of a rolling restart once no replacement is under way; after
    /// the last one, brings the number of workers to `workers` (it may have changed).
    fn roll_on(&mut self) {
        if self.phase != Phase::Serving || self.workers.iter().any(|w| w.replaces.is_some()) {
            return;
        }
        while let Some(old) = self.rolling.pop_front() {
            if self
                .worker(old)
                .is_some_and(|w| w.state == WorkerState::Ready)
            {
                self.replace(old, Reason::Config);
                return;
            }
        }
        let wanted = self.loaded.settings.workers;
        let serving = self.pids(|w| w.state != WorkerState::Stopping);
        let planned = serving.len() + self.restarts_due.len();
        if planned < wanted {
            say!(
                "starting {} more worker(s) (workers: {wanted})",
                wanted - planned
            );
            for _ in planned..wanted {
                if let Err(e) = self.spawn_worker(None) {
                    say!("{e}; trying again");
                    self.schedule_restart(None);
                }
            }
        } else if planned > wanted && self.restarts_due.is_empty() {
            say!(
                "stopping {} worker(s) (workers: {wanted})",
                planned - wanted
            );
            for pid in serving.into_iter().take(planned - wanted) {
                self.stop(pid, Stop::Drain);
            }
        }
    }

    /// Replaces one worker past `max_requests` or `max_worker_memory_mb`, when no other
    /// replacement is under way: the same ready-then-drain handover as SIGHUP's, one worker
    /// at a time, so the service never loses more than one worker's share of capacity.
    fn recycle_if_due(&mut self) {
        let settings = &self.loaded.settings;
        let memory_limit = settings.max_worker_memory_mb;
        if self.phase != Phase::Serving
            || !self.rolling.is_empty()
            || self
                .workers
                .iter()
                .any(|w| w.replaces.is_some() || w.replaced)
            || (settings.max_requests == 0 && memory_limit.is_none())
        {
            return;
        }
        let due = self.workers.iter().find_map(|worker| {
            if worker.state != WorkerState::Ready {
                return None;
            }
            let pid = worker.pid;
            if let Some(limit) = worker.request_limit {
                let served = self.slots.requests_of(pid);
                if served >= limit {
                    return Some((pid, format!("answered {served} requests (limit {limit})")));
                }
            }
            let limit = memory_limit?;
            let resident = resident_mib(pid)?;
            (resident > limit).then(|| {
                (
                    pid,
                    format!("resident memory {resident} MiB > max_worker_memory_mb {limit}"),
                )
            })
        });
        if let Some((pid, why)) = due {
            say!("worker {pid} {why}: recycling it");
            self.replace(pid, Reason::Recycle);
        }
    }

    fn replace(&mut self, old: i32, reason: Reason) {
        if let Some(worker) = self.worker(old) {
            worker.replaced = true;
        }
        if let Err(e) = self.spawn_worker(Some((old, reason))) {
            say!("{e}; worker {old} keeps serving");
            if let Some(worker) = self.worker(old) {
                worker.replaced = false;
            }
        }
    }

    /// Probes every ready worker's `/healthz` through its own queue (see the watchdog keys).
    fn watch_health(&mut self, now: Instant) {
        let settings = &self.loaded.settings;
        if !settings.watchdog_enabled() || self.phase != Phase::Serving {
            return;
        }
        let interval = settings.watchdog.interval();
        let timeout = settings.watchdog.timeout();
        let failures = settings.watchdog.failures;
        let mut probe = Vec::new();
        let mut replace = Vec::new();
        for worker in &mut self.workers {
            if worker.state != WorkerState::Ready || worker.replaced {
                continue;
            }
            let probes = &mut worker.probes;
            if let Some((id, sent)) = probes.outstanding {
                if now.duration_since(sent) < timeout {
                    continue;
                }
                probes.outstanding = None;
                probes.misses += 1;
                probes.next_at = now;
                say!(
                    "worker {}: /healthz probe {id} got no answer within {}s ({}/{failures})",
                    worker.pid,
                    timeout.as_secs_f64(),
                    probes.misses
                );
            }
            if probes.misses >= failures {
                say!(
                    "watchdog: worker {} missed {failures} probe(s) in a row, last answer {:.1}s \
                     ago (interval {}s, timeout {}s); replacing it",
                    worker.pid,
                    now.duration_since(probes.last_answer).as_secs_f64(),
                    interval.as_secs_f64(),
                    timeout.as_secs_f64()
                );
                replace.push(worker.pid);
            } else if now >= probes.next_at {
                let id = probes.next_id;
                probes.next_id += 1;
                probes.outstanding = Some((id, now));
                probe.push((worker.pid, id));
            }
        }
        for (pid, id) in probe {
            self.tell(pid, Command::Probe(id));
        }
        for pid in replace {
            self.replace(pid, Reason::Watchdog);
        }
    }

    fn probe_answered(&mut self, pid: i32, id: u64, failure: Option<String>) {
        let settings = &self.loaded.settings;
        let interval = settings.watchdog.interval();
        let timeout = settings.watchdog.timeout();
        let failures = settings.watchdog.failures;
        let Some(worker) = self.worker(pid) else {
            return;
        };
        let probes = &mut worker.probes;
        if probes.outstanding.map(|(o, _)| o) != Some(id) {
            return; // a late answer to a probe already counted as missed
        }
        let now = Instant::now();
        probes.outstanding = None;
        probes.last_answer = now;
        match failure {
            None => {
                probes.misses = 0;
                probes.next_at = now + interval;
            }
            Some(reason) => {
                probes.misses += 1;
                probes.next_at = now + timeout;
                say!(
                    "worker {pid}: /healthz probe {id} failed: {reason} ({}/{failures})",
                    probes.misses
                );
            }
        }
    }

    /// Dev: after a debounced change, rebuilds (a source change with `dev.build_command`)
    /// or replaces the workers (the library changed).
    fn reload_if_due(&mut self, now: Instant) {
        let Some((due, changed)) = self.reload_due else {
            return;
        };
        let replacing = self.workers.iter().any(|w| w.replaces.is_some());
        if now < due || replacing || self.building {
            return;
        }
        self.reload_due = None;
        let settings = &self.loaded.settings;
        if let (Changed::Source, Some(command)) = (changed, &settings.dev.build_command) {
            reload::build(command, self.sender.clone());
            self.building = true;
            return;
        }
        let app = settings
            .app
            .clone()
            .expect("the command line resolves the app");
        let identity = reload::identity(&app);
        if changed == Changed::Library && identity == self.library {
            return;
        }
        self.library = identity;
        match changed {
            Changed::Python => say!("the Python code of {} changed: reloading", app.display()),
            _ => say!("{} changed: reloading", app.display()),
        }
        for pid in self.pids(|w| w.state == WorkerState::Ready && !w.replaced) {
            self.replace(pid, Reason::Reload);
        }
    }

    fn restart_if_due(&mut self, now: Instant) {
        if self.phase != Phase::Serving {
            return;
        }
        let due = self.restarts_due.iter().filter(|at| now >= **at).count();
        self.restarts_due.retain(|at| now < *at);
        for _ in 0..due {
            match self.spawn_worker(None) {
                Ok(_) => self.slots.restarted(Restart::Crash),
                Err(e) => {
                    say!("{e}; trying again");
                    self.schedule_restart(None);
                }
            }
        }
    }

    fn schedule_restart(&mut self, served_for: Option<Duration>) -> Duration {
        if served_for.is_some_and(|d| d >= STABLE_AFTER) {
            self.crash_streak = 0;
        }
        let delay = (Duration::from_millis(100) * 2u32.saturating_pow(self.crash_streak))
            .min(MAX_RESTART_DELAY);
        self.crash_streak = self.crash_streak.saturating_add(1);
        self.restarts_due.push(Instant::now() + delay);
        delay
    }

    /// Reaps every exited child (workers and orphans alike, as PID 1 must) and decides what
    /// each worker's end means.
    fn reap_workers(&mut self) {
        for (pid, status) in reap_children() {
            let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
                say!(
                    "reaped process {pid} ({})",
                    exit::describe_wait_status(status)
                );
                continue;
            };
            let worker = self.workers.remove(index);
            if let Some(slot) = self.slots.slot_of(pid) {
                self.slots.release(slot);
            }
            let how = exit::describe_wait_status(status);
            let code = exit::from_wait_status(status);
            match worker.state {
                WorkerState::Stopping => say!("worker {pid} stopped ({how})"),
                WorkerState::Starting => self.failed_to_start(worker, &how, code),
                WorkerState::Ready => {
                    if self.phase != Phase::Serving {
                        say!("worker {pid} {how}");
                    } else if self
                        .workers
                        .iter()
                        .any(|w| w.replaces.map(|r| r.0) == Some(pid))
                    {
                        say!("worker {pid} {how}; its replacement is on its way");
                    } else {
                        let served = worker.ready_at.map(|at| at.elapsed());
                        let delay = self.schedule_restart(served);
                        say!(
                            "worker {pid} {how}; restarting it in {} ms",
                            delay.as_millis()
                        );
                    }
                }
            }
        }
    }

    fn failed_to_start(&mut self, worker: Worker, how: &str, code: i32) {
        let pid = worker.pid;
        if let Some((old, reason)) = worker.replaces {
            if let Some(previous) = self.worker(old) {
                previous.replaced = false;
                say!("the new worker {pid} could not start ({how}); worker {old} keeps serving");
                if reason == Reason::Config {
                    self.rolling.clear();
                }
                return;
            }
        }
        // A reserved code means it will fail again; so will a crash before any worker
        // was ever ready (the app cannot start at all). Either way: stop, don't loop.
        let boot_failure = [exit::APP_LOAD, exit::BOOT, exit::CONFIG].contains(&code);
        let none_ready = !self.workers.iter().any(|w| w.state == WorkerState::Ready);
        if self.phase != Phase::Serving {
            say!("worker {pid} {how}");
        } else if none_ready && (boot_failure || !self.ever_ready) {
            say!("worker {pid} {how}: the worker could not start; stopping");
            self.exit_code = Some(code);
            self.phase = Phase::Stopping;
            for pid in self.pids(|w| w.state != WorkerState::Stopping) {
                self.stop(pid, Stop::Drain);
            }
        } else {
            let delay = self.schedule_restart(None);
            say!(
                "worker {pid} {how} while starting; restarting it in {} ms",
                delay.as_millis()
            );
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

/// Orphans of our descendants become our children even when we are not PID 1, so they
/// are reaped here too.
fn become_subreaper() {
    // SAFETY: prctl with these arguments only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
}

/// Reads a worker's status pipe; its lines become events.
fn watch_status(pid: i32, pipe: OwnedFd, sender: Sender<Event>) {
    let spawned = thread::Builder::new().name("status".into()).spawn(move || {
        for line in BufReader::new(File::from(pipe)).lines() {
            let Ok(line) = line else { return };
            if sender.send(Event::Status { pid, line }).is_err() {
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
        temporary[i] = check(unsafe { libc::fcntl(from, libc::F_DUPFD_CLOEXEC, 10) })?;
    }
    for (i, &(_, to)) in moves.iter().enumerate() {
        // dup2 leaves the new fd without FD_CLOEXEC, so the worker inherits it.
        check(unsafe { libc::dup2(temporary[i], to) })?;
    }
    Ok(())
}

/// The requests after which the worker `pid` is recycled: `max_requests` plus a share of
/// `max_requests_jitter` drawn for it, so that workers started together do not all recycle
/// together. `None` when `max_requests` is 0.
fn request_limit(settings: &Settings, pid: i32) -> Option<u64> {
    use std::hash::BuildHasher;
    if settings.max_requests == 0 {
        return None;
    }
    let jitter = match settings.max_requests_jitter {
        0 => 0,
        most => std::collections::hash_map::RandomState::new().hash_one(pid) % (most + 1),
    };
    Some(settings.max_requests.saturating_add(jitter))
}

/// The resident memory of process `pid` in MiB, from `/proc/PID/statm`.
fn resident_mib(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    Some((pages * page) >> 20)
}

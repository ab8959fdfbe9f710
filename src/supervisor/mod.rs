//! The supervisor: PID 1 of the container. It binds the listening socket once, starts the
//! worker processes on it, and owns every decision in one loop fed by [`Event`]s.
//!
//! Signal handlers, the readers of the workers' status pipes and the file watcher only send
//! events; the loop reaps, logs, probes, replaces, drains and decides. Each worker's life is
//! an explicit [`Life`]; the service's is a [`Phase`]; dev reload's a [`Reload`]. The
//! listening socket stays open in the supervisor for its whole life, so no restart, reload
//! or replacement ever refuses a connection: connections queue on the socket until some
//! worker accepts them.
//!
//! Beside the loop: [`spawn`] starts a worker process, [`watchdog`] probes the ready ones,
//! [`reload`] watches the app in dev, [`signals`] and [`listen`] are the process's own.
//!
//! A *replacement* (watchdog, dev reload, SIGHUP) starts the new worker first; only once it
//! says `ready` is the old one told to stop: `stop` (drain: finish what it has, with
//! `Connection: close`) or, for a worker that stopped answering, `abandon` (answer what it
//! has read with 503 at once). SIGKILL follows if it is still there at its deadline.

use std::collections::VecDeque;
use std::io::Write;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ChildStdin;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGKILL, SIGTERM, SIGUSR1};

mod listen;
mod reload;
mod signals;
mod spawn;
mod watchdog;

pub use listen::address_file;

use crate::config::{App, Loaded, Mode, Settings};
use crate::control::{self, Command, Status};
use crate::error::Error;
use crate::exit;
use crate::log;
use crate::metrics::{self, Restart};
use crate::{say, warn};
use listen::AddressFile;
use reload::{Changed, Identity, Reload};
use watchdog::{Probes, Watch};

/// The loop looks at its clocks (probes, deadlines, restarts) at least this often.
const TICK: Duration = Duration::from_millis(50);
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

/// A worker's life; each state holds what is true only in it.
#[derive(Debug)]
enum Life {
    /// Started; loading the app. It takes over from `replaces` once ready.
    Starting { replaces: Option<(i32, Reason)> },
    /// Accepting connections and answering probes.
    Ready {
        since: Instant,
        probes: Probes,
        /// The worker starting to take its place: this one is no longer probed.
        successor: Option<i32>,
    },
    /// Told to stop or abandon; SIGKILL at `kill_at` (`None` once sent).
    Stopping { kill_at: Option<Instant> },
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

struct Worker {
    pid: i32,
    started: Instant,
    control: Option<ChildStdin>,
    /// Requests after which it is recycled (`max_requests` plus its share of the jitter).
    request_limit: Option<u64>,
    life: Life,
}

impl Worker {
    fn is_stopping(&self) -> bool {
        matches!(self.life, Life::Stopping { .. })
    }

    fn is_ready(&self) -> bool {
        matches!(self.life, Life::Ready { .. })
    }

    /// Ready, and no successor is on its way.
    fn is_ready_alone(&self) -> bool {
        matches!(
            self.life,
            Life::Ready {
                successor: None,
                ..
            }
        )
    }

    /// Starting or ready, and no successor is on its way.
    fn is_staying(&self) -> bool {
        matches!(
            self.life,
            Life::Starting { .. }
                | Life::Ready {
                    successor: None,
                    ..
                }
        )
    }
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
    /// Dev: a reload to do, or a build under way.
    reload: Reload,
    library: Identity,
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
            reload: Reload::Idle,
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
                for pid in self.pids(|w| !w.is_stopping()) {
                    self.tell(pid, Command::Report);
                }
            }
            Event::Signal(signal) => say!("ignoring {}", exit::signal_name(signal)),
            Event::Status { pid, line } => self.status(pid, &line),
            Event::Changed(changed) if self.is_serving() => {
                self.reload = self.reload.changed(changed, Instant::now());
            }
            Event::Changed(_) => {}
            Event::Built => self.reload = self.reload.built(),
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
                for pid in self.pids(|w| !w.is_stopping()) {
                    self.stop(pid, Stop::Drain);
                }
            }
        }
        self.kill_overdue(now);
    }

    fn is_serving(&self) -> bool {
        self.phase == Phase::Serving
    }

    /// Whether a worker is starting to take another's place (watchdog, reload, SIGHUP,
    /// recycling): such handovers go one at a time.
    fn replacement_under_way(&self) -> bool {
        self.workers
            .iter()
            .any(|w| matches!(w.life, Life::Starting { replaces: Some(_) }))
    }

    /// Starts one worker on the listening socket; `replaces` is the worker it takes over
    /// from once ready.
    fn spawn_worker(&mut self, replaces: Option<(i32, Reason)>) -> Result<i32, Error> {
        let slot = self.slots.take();
        if slot.is_none() {
            say!("no free metrics slot: the new worker's figures stay out of /metrics");
        }
        let start = spawn::Start {
            listener: self.listener.as_raw_fd(),
            metrics: self.metrics_fd.as_raw_fd(),
            slot,
            log_format: self.loaded.settings.log_format,
            handoff: &self.handoff,
        };
        let spawned = match spawn::spawn(start, self.sender.clone()) {
            Ok(spawned) => spawned,
            Err(e) => {
                if let Some(slot) = slot {
                    self.slots.release(slot);
                }
                return Err(e);
            }
        };
        let pid = spawned.pid;
        if let Some(slot) = slot {
            self.slots.started(slot, pid);
        }
        if let Some((_, reason)) = replaces {
            self.slots.restarted(reason.restart());
        }
        self.workers.push(Worker {
            pid,
            started: Instant::now(),
            control: spawned.control,
            request_limit: request_limit(&self.loaded.settings, pid),
            life: Life::Starting { replaces },
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
            Some(Status::Probe { id, health }) => self.probe_answered(pid, id, health),
            None => say!("worker {pid} said something unexpected: {line:?}"),
        }
    }

    fn mark_ready(&mut self, pid: i32) {
        let watch = Watch::of(&self.loaded.settings);
        let serving = self.is_serving();
        let Some(worker) = self.worker(pid) else {
            return;
        };
        let Life::Starting { replaces } = worker.life else {
            return;
        };
        let now = Instant::now();
        worker.life = Life::Ready {
            since: now,
            probes: Probes::new(now, watch),
            successor: None,
        };
        say!(
            "worker {pid} ready after {} ms",
            worker.started.elapsed().as_millis()
        );
        self.ever_ready = true;
        crate::resident::let_go_of_code();
        if !serving {
            self.stop(pid, Stop::Drain);
            return;
        }
        if let Some((old, reason)) = replaces {
            if self.worker(old).is_some_and(|w| !w.is_stopping()) {
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
        worker.life = Life::Stopping {
            kill_at: Some(Instant::now() + grace),
        };
        if !delivered {
            // SAFETY: kill on a child not yet reaped, so the PID is still ours.
            unsafe { libc::kill(pid, SIGTERM) };
        }
    }

    fn kill_overdue(&mut self, now: Instant) {
        for worker in &mut self.workers {
            if let Life::Stopping { kill_at } = &mut worker.life {
                if kill_at.is_some_and(|at| now >= at) {
                    say!("worker {} did not stop in time: SIGKILL", worker.pid);
                    // SAFETY: as in `stop`.
                    unsafe { libc::kill(worker.pid, SIGKILL) };
                    *kill_at = None;
                }
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
                self.reload = Reload::Idle;
                for pid in self.pids(|w| !w.is_stopping()) {
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
                    worker.life = Life::Stopping {
                        kill_at: Some(Instant::now()),
                    };
                }
            }
        }
    }

    /// SIGHUP: re-reads the config; a bad one is refused and the running one stays. A good
    /// one replaces the workers one by one.
    fn reread_config(&mut self) {
        if !self.is_serving() {
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
        self.rolling = self.pids(Worker::is_staying).into();
        say!(
            "SIGHUP: config re-read from {}; replacing {} worker(s) one by one",
            self.loaded.source_name(),
            self.rolling.len()
        );
    }

    /// Replaces the next worker of a rolling restart once no replacement is under way; after
    /// the last one, brings the number of workers to `workers` (it may have changed).
    fn roll_on(&mut self) {
        if !self.is_serving() || self.replacement_under_way() {
            return;
        }
        while let Some(old) = self.rolling.pop_front() {
            if self.worker(old).is_some_and(|w| w.is_ready()) {
                self.replace(old, Reason::Config);
                return;
            }
        }
        let wanted = self.loaded.settings.workers;
        let serving = self.pids(|w| !w.is_stopping());
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
        if !self.is_serving()
            || !self.rolling.is_empty()
            || self.replacement_under_way()
            || (settings.max_requests == 0 && memory_limit.is_none())
        {
            return;
        }
        let due = self.workers.iter().find_map(|worker| {
            if !worker.is_ready() {
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

    /// Starts the successor of the ready worker `old`, which stops once it is ready.
    fn replace(&mut self, old: i32, reason: Reason) {
        match self.spawn_worker(Some((old, reason))) {
            Ok(new) => {
                if let Some(Life::Ready { successor, .. }) = self.worker(old).map(|w| &mut w.life) {
                    *successor = Some(new);
                }
            }
            Err(e) => say!("{e}; worker {old} keeps serving"),
        }
    }

    /// Dev: after a debounced change, rebuilds (a source change with `dev.build_command`)
    /// or replaces the workers (the library changed).
    fn reload_if_due(&mut self, now: Instant) {
        let Some(changed) = self.reload.due(now) else {
            return;
        };
        if self.replacement_under_way() {
            return;
        }
        self.reload = Reload::Idle;
        let settings = &self.loaded.settings;
        if let (Changed::Source, Some(command)) = (changed, &settings.dev.build_command) {
            reload::build(command, self.sender.clone());
            self.reload = Reload::Building { then: None };
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
        for pid in self.pids(Worker::is_ready_alone) {
            self.replace(pid, Reason::Reload);
        }
    }

    fn restart_if_due(&mut self, now: Instant) {
        if !self.is_serving() {
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
            match worker.life {
                Life::Stopping { .. } => say!("worker {pid} stopped ({how})"),
                Life::Starting { replaces } => self.failed_to_start(pid, replaces, &how, code),
                Life::Ready { .. } if !self.is_serving() => say!("worker {pid} {how}"),
                Life::Ready {
                    successor: Some(_), ..
                } => say!("worker {pid} {how}; its replacement is on its way"),
                Life::Ready { since, .. } => {
                    let delay = self.schedule_restart(Some(since.elapsed()));
                    say!(
                        "worker {pid} {how}; restarting it in {} ms",
                        delay.as_millis()
                    );
                }
            }
        }
    }

    fn failed_to_start(&mut self, pid: i32, replaces: Option<(i32, Reason)>, how: &str, code: i32) {
        if let Some((old, reason)) = replaces {
            if let Some(previous) = self.worker(old) {
                if let Life::Ready { successor, .. } = &mut previous.life {
                    *successor = None;
                }
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
        let none_ready = !self.workers.iter().any(Worker::is_ready);
        if !self.is_serving() {
            say!("worker {pid} {how}");
        } else if none_ready && (boot_failure || !self.ever_ready) {
            say!("worker {pid} {how}: the worker could not start; stopping");
            self.exit_code = Some(code);
            self.phase = Phase::Stopping;
            for pid in self.pids(|w| !w.is_stopping()) {
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

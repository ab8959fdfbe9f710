//! The worker's pool: a fixed number of threads taking requests from one queue, the request
//! deadlines, and the writing-off of threads stuck in the app.
//!
//! Theory of operation:
//!
//! * The acceptor stamps every request the moment it reads it and queues it. A pool thread
//!   that takes a request whose deadline has passed answers 504 at once, so time spent in
//!   the queue counts (as mod_wsgi's queue-timeout does).
//! * While the app handles a request, the thread's [`Slot`] holds tiny_http's `Request`.
//!   The deadline watcher (one thread, asleep until the earliest deadline it knows of, and
//!   woken by a request that enters the app with an earlier one) takes the
//!   `Request` out of a slot whose deadline has passed and answers 504 itself; the app keeps
//!   its own copy of the request (see `bridge`) and is never interrupted.
//! * A thread whose request timed out inside the app is *written off*: a replacement is
//!   started at once, so the pool keeps its size, and the stuck thread exits whenever the app
//!   returns. At most `threads` threads can be written off at a time (the pool at most
//!   doubles); past that the 504s still go out but no thread is added, `/healthz` stops
//!   getting through, and the watchdog replaces the worker.
//! * Queued requests need no watcher: requests leave the queue in the order they arrived, so
//!   a queued request's deadline comes after the deadline of every request ahead of it, and
//!   by then each of those has finished or been written off and replaced.
//! * The watchdog's probes are jobs in the same queue, answered by a pool thread that asks
//!   the app's health hook: a probe gets through exactly when a request would.
//! * Stopping: a *drain* keeps serving but answers with `Connection: close`; an *abandon*
//!   (a hung worker being replaced) answers everything already read with 503 at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tiny_http::Request;

use crate::bridge::{self, BodyError, How, Incoming, RequestCopy, Stamp};
use crate::loader::{AppResponse, LoadedApp};
use crate::metrics;
use crate::say;
use crate::status::StatusPipe;
use crate::watch;

#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub threads: usize,
    pub timeout: Option<Duration>,
    pub max_body_bytes: u64,
    /// The request-duration watchdog: (threshold, how many recent requests to average).
    pub slow: Option<(Duration, usize)>,
}

/// What waits in the pool's queue.
pub enum Job {
    Http(Incoming),
    /// A watchdog probe: ask the app's health hook, answer on the status pipe.
    Probe(u64),
}

/// The pool's handle: where the acceptor sends requests, and the worker's controls.
pub struct Pool {
    shared: Arc<Shared>,
    sender: Sender<Job>,
}

struct Shared {
    app: Arc<LoadedApp>,
    queue: Receiver<Job>,
    settings: PoolSettings,
    status: Arc<StatusPipe>,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// The pool's time origin: deadlines and the watcher's wake time count from it.
    epoch: Instant,
    /// When the watcher will look next (nanoseconds since `epoch`); `u64::MAX` while it
    /// scans or has nothing to wait for. A request entering the app with an earlier
    /// deadline wakes it.
    watcher_wakes_at: AtomicU64,
    written_off: AtomicUsize,
    watcher: OnceLock<Thread>,
    /// Draining: responses carry `Connection: close`.
    draining: AtomicBool,
    /// Stopped: nothing more enters the app; what is taken from the queue gets 503.
    stopped: AtomicBool,
    /// Held for reading by every call into the app; taken for writing to shut it down.
    gate: RwLock<()>,
    /// The durations of the latest app requests, when `settings.slow` is set.
    recent: Mutex<VecDeque<Duration>>,
}

/// What one pool thread is doing, as the deadline watcher sees it.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    /// Set while the app handles a request.
    running: Option<Running>,
    /// The thread's request timed out inside the app and a replacement was started.
    written_off: bool,
}

struct Running {
    /// `None` once the watcher (or an abandon) has answered in the app's place.
    request: Option<Request>,
    stamp: Stamp,
    deadline: Option<Instant>,
}

/// What a pool thread does after a job.
#[derive(PartialEq, Eq)]
enum Fate {
    Continue,
    Exit,
}

impl Pool {
    pub fn start(app: Arc<LoadedApp>, settings: PoolSettings, status: Arc<StatusPipe>) -> Pool {
        let (sender, queue) = crossbeam_channel::unbounded();
        let watch = settings.timeout.is_some();
        let shared = Arc::new(Shared {
            app,
            queue,
            settings,
            status,
            slots: Mutex::new(Vec::new()),
            epoch: Instant::now(),
            watcher_wakes_at: AtomicU64::new(u64::MAX),
            recent: Mutex::new(VecDeque::new()),
            written_off: AtomicUsize::new(0),
            watcher: OnceLock::new(),
            draining: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            gate: RwLock::new(()),
        });
        if watch {
            let watcher = shared.clone();
            let handle = thread::Builder::new()
                .name("deadlines".into())
                .spawn(move || watcher.watch_deadlines())
                .expect("spawning the deadline watcher at start-up");
            let _ = shared.watcher.set(handle.thread().clone());
        }
        for _ in 0..shared.settings.threads {
            Shared::spawn_thread(&shared);
        }
        Pool { shared, sender }
    }

    pub fn sender(&self) -> Sender<Job> {
        self.sender.clone()
    }

    /// Queues a watchdog probe behind the requests already waiting.
    pub fn probe(&self, id: u64) {
        let _ = self.sender.send(Job::Probe(id));
    }

    /// From now on every response says `Connection: close`.
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::Release);
    }

    /// Requests waiting in the queue, and requests inside the app still awaiting their
    /// answer (a written-off thread's request has had its 504).
    /// Samples the pool into this worker's gauges in the metrics.
    pub fn sample(&self, gauges: &metrics::Gauges) {
        let (queued, in_app) = self.busy();
        let threads = self.shared.slots.lock().expect("slot list lock").len();
        let written_off = self.shared.written_off.load(Ordering::Acquire);
        let set = |gauge: &std::sync::atomic::AtomicU64, value: usize| {
            gauge.store(value as u64, Ordering::Relaxed)
        };
        set(&gauges.queued, queued);
        set(&gauges.in_flight, queued + in_app);
        set(&gauges.threads_busy, in_app);
        set(&gauges.threads, threads.saturating_sub(written_off));
        set(&gauges.threads_written_off, written_off);
    }

    pub fn busy(&self) -> (usize, usize) {
        let in_app = self
            .shared
            .slots
            .lock()
            .expect("slot list lock")
            .iter()
            .filter(|slot| {
                let state = slot.state.lock().expect("slot lock");
                state.running.as_ref().is_some_and(|r| r.request.is_some())
            })
            .count();
        (self.shared.queue.len(), in_app)
    }

    /// Answers 503 to every request already read (queued or inside the app) and lets no
    /// further request into the app. The app's threads are left where they are.
    pub fn abandon(&self) -> usize {
        let shared = &self.shared;
        shared.stopped.store(true, Ordering::Release);
        let mut answered = 0;
        while let Ok(job) = shared.queue.try_recv() {
            if let Job::Http(incoming) = job {
                answered += 1;
                let _ = bridge::send_text(
                    incoming.request,
                    503,
                    "worker replaced\n",
                    How::unread(incoming.stamp, true),
                );
            }
        }
        let slots = shared.slots.lock().expect("slot list lock").clone();
        for slot in slots {
            let request = slot
                .state
                .lock()
                .expect("slot lock")
                .running
                .as_mut()
                .and_then(|running| Some((running.request.take()?, running.stamp)));
            if let Some((request, stamp)) = request {
                answered += 1;
                let _ =
                    bridge::send_text(request, 503, "worker replaced\n", How::read(stamp, true));
            }
        }
        answered
    }

    /// Logs every request inside the app with its path and age, and the queue's length.
    pub fn report(&self) {
        let now = Instant::now();
        let slots = self.shared.slots.lock().expect("slot list lock").clone();
        let mut inside = 0;
        for slot in slots {
            let state = slot.state.lock().expect("slot lock");
            let Some(running) = state.running.as_ref() else {
                continue;
            };
            inside += 1;
            let age = now.duration_since(running.stamp.received).as_secs_f64();
            match &running.request {
                Some(request) => say!(
                    "in flight: {} {} for {age:.3}s",
                    request.method(),
                    request.url()
                ),
                None => say!("in flight: (answered 504, still inside the app) for {age:.3}s"),
            }
        }
        say!(
            "{inside} request(s) inside the app, {} queued, {} thread(s) written off",
            self.shared.queue.len(),
            self.shared.written_off.load(Ordering::Relaxed)
        );
    }

    /// Stops calling the app and runs its `shutdown` hook once no request is inside it,
    /// waiting at most `grace`. Returns `false` when requests were still inside the app
    /// then: the hook is skipped rather than run under them.
    pub fn shut_down_app(&self, grace: Duration) -> bool {
        let shared = &self.shared;
        shared.stopped.store(true, Ordering::Release);
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(_exclusive) = shared.gate.try_write() {
                shared.app.shutdown();
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Shared {
    fn spawn_thread(self: &Arc<Self>) {
        let slot = Arc::new(Slot::default());
        self.slots
            .lock()
            .expect("slot list lock is never held across a panic")
            .push(slot.clone());
        let shared = self.clone();
        let spawned = thread::Builder::new().name("pool".into()).spawn(move || {
            let mut copy = RequestCopy::default();
            while let Ok(job) = shared.queue.recv() {
                let fate = match job {
                    Job::Http(incoming) => shared.serve(incoming, &slot, &mut copy),
                    Job::Probe(id) => shared.answer_probe(id),
                };
                if fate == Fate::Exit {
                    break;
                }
            }
            shared.remove(&slot);
        });
        if let Err(e) = spawned {
            say!("cannot start a pool thread: {e}");
            self.remove_last();
        }
    }

    fn remove(&self, slot: &Arc<Slot>) {
        let mut slots = self.slots.lock().expect("slot list lock");
        slots.retain(|s| !Arc::ptr_eq(s, slot));
    }

    fn remove_last(&self) {
        self.slots.lock().expect("slot list lock").pop();
    }

    fn closing(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The app's health, and the request-duration watchdog's verdict when it is on.
    fn health(&self) -> Result<(), String> {
        self.app.health()?;
        let Some((threshold, count)) = self.settings.slow else {
            return Ok(());
        };
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() < count {
            return Ok(());
        }
        let mean = recent.iter().sum::<Duration>() / count as u32;
        match mean > threshold {
            true => Err(format!(
                "the last {count} requests took {:.3} s on average, over the threshold of {:.3} s",
                mean.as_secs_f64(),
                threshold.as_secs_f64()
            )),
            false => Ok(()),
        }
    }

    fn answer_probe(&self, id: u64) -> Fate {
        let health = {
            let _inside = shared_gate(&self.gate);
            match self.stopped.load(Ordering::Acquire) {
                true => Err("stopping".to_string()),
                false => self.health(),
            }
        };
        let line = match health {
            Ok(()) => format!("probe {id} ok"),
            Err(reason) => format!("probe {id} fail {}", reason.replace('\n', " ")),
        };
        self.status.send(&line);
        Fate::Continue
    }

    fn serve(&self, incoming: Incoming, slot: &Slot, copy: &mut RequestCopy) -> Fate {
        let Incoming { mut request, stamp } = incoming;
        let close = self.closing();
        let deadline = self.settings.timeout.map(|t| stamp.received + t);
        let expired = || deadline.is_some_and(|d| Instant::now() >= d);
        if self.stopped.load(Ordering::Acquire) {
            let _ = bridge::send_text(request, 503, "shutting down\n", How::unread(stamp, true));
            return Fate::Continue;
        }
        if expired() {
            send_timeout(request, How::unread(stamp, close));
            return Fate::Continue;
        }
        let peer = request.remote_addr().copied();
        watch::reading_body(peer.as_ref(), Some(stamp.received));
        let filled = copy.fill(&mut request, self.settings.max_body_bytes);
        watch::reading_body(peer.as_ref(), None);
        if let Err(e) = filled {
            self.reject_body(request, e, stamp, expired());
            return Fate::Continue;
        }
        if expired() {
            send_timeout(request, How::read(stamp, close));
            return Fate::Continue;
        }
        let health_probe = copy.path() == b"/healthz";

        let _inside = shared_gate(&self.gate);
        if self.stopped.load(Ordering::Acquire) {
            let _ = bridge::send_text(request, 503, "shutting down\n", How::read(stamp, true));
            return Fate::Continue;
        }
        slot.begin(request, stamp, deadline);
        if let (Some(deadline), Some(watcher)) = (deadline, self.watcher.get()) {
            if self.nanos(deadline) < self.watcher_wakes_at.load(Ordering::SeqCst) {
                watcher.unpark();
            }
        }
        let answer = match health_probe {
            true => Answer::Health(self.health()),
            false => Answer::App(self.app.handle(&copy.as_raw())),
        };
        let (request, written_off) = slot.end();
        if let (Some((_, count)), false) = (self.settings.slow, health_probe) {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() == count {
                recent.pop_front();
            }
            recent.push_back(stamp.received.elapsed());
        }

        if let Some(request) = request {
            let how = How::read(stamp, self.closing());
            let _ = match &answer {
                Answer::Health(Ok(())) => bridge::send_text(request, 200, "ok\n", how),
                Answer::Health(Err(reason)) => {
                    bridge::send_text(request, 503, &format!("unhealthy: {reason}\n"), how)
                }
                Answer::App(response) => bridge::send_app_response(request, response, how),
            };
        }
        drop(answer);
        match written_off {
            true => {
                self.written_off.fetch_sub(1, Ordering::AcqRel);
                Fate::Exit
            }
            false => Fate::Continue,
        }
    }

    /// Answers a request whose body could not be read, and ends its connection (as Apache
    /// and nginx do): the rest of the body may still be in the stream.
    /// `late`: the request's deadline has passed (the watch cuts a body still arriving
    /// then).
    fn reject_body(&self, request: Request, error: BodyError, stamp: Stamp, late: bool) {
        let (status, text) = match error {
            BodyError::TooLarge => (413, too_large(self.settings.max_body_bytes)),
            _ if late => (
                408,
                "the request body did not arrive within request_timeout_s\n".to_string(),
            ),
            BodyError::Read(e) => (400, format!("could not read the request body: {e}\n")),
            BodyError::Short { read, declared } => (
                400,
                format!("the request body ended after {read} of its {declared} bytes\n"),
            ),
        };
        let _ = bridge::send_text(request, status, &text, How::ending(stamp));
    }

    fn nanos(&self, instant: Instant) -> u64 {
        instant.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// The deadline watcher's loop; see the module docs.
    ///
    /// While it scans it publishes `u64::MAX` as its wake time, so a request that enters
    /// the app after the scan passed its slot wakes it (the unpark is kept until the next
    /// park); after the scan it publishes the earliest deadline it saw.
    fn watch_deadlines(self: Arc<Self>) {
        loop {
            self.watcher_wakes_at.store(u64::MAX, Ordering::SeqCst);
            let now = Instant::now();
            let slots = self.slots.lock().expect("slot list lock").clone();
            let mut next: Option<Instant> = None;
            for slot in &slots {
                match self.expire(slot, now) {
                    Expiry::Pending(deadline) => {
                        next = Some(next.map_or(deadline, |n| n.min(deadline)));
                    }
                    Expiry::Fired {
                        request,
                        stamp,
                        replace,
                    } => {
                        if replace {
                            Shared::spawn_thread(&self);
                        }
                        send_timeout(request, How::read(stamp, self.closing()));
                    }
                    Expiry::Idle => {}
                }
            }
            match next {
                None => thread::park(),
                Some(next) => {
                    self.watcher_wakes_at
                        .store(self.nanos(next), Ordering::SeqCst);
                    thread::park_timeout(next.saturating_duration_since(Instant::now()));
                }
            }
        }
    }

    fn expire(&self, slot: &Slot, now: Instant) -> Expiry {
        let mut state = slot.state.lock().expect("slot lock");
        let Some(running) = state.running.as_mut() else {
            return Expiry::Idle;
        };
        match running.deadline {
            Some(deadline) if running.request.is_some() && deadline <= now => {
                let request = running.request.take().expect("checked is_some");
                let stamp = running.stamp;
                let cap = self.settings.threads;
                let replace = self
                    .written_off
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < cap).then_some(n + 1)
                    })
                    .is_ok();
                state.written_off = replace;
                Expiry::Fired {
                    request,
                    stamp,
                    replace,
                }
            }
            Some(deadline) if running.request.is_some() => Expiry::Pending(deadline),
            _ => Expiry::Idle,
        }
    }
}

enum Expiry {
    Idle,
    Pending(Instant),
    Fired {
        request: Request,
        stamp: Stamp,
        replace: bool,
    },
}

enum Answer<'a> {
    Health(Result<(), String>),
    App(AppResponse<'a>),
}

impl Slot {
    fn begin(&self, request: Request, stamp: Stamp, deadline: Option<Instant>) {
        self.state.lock().expect("slot lock").running = Some(Running {
            request: Some(request),
            stamp,
            deadline,
        });
    }

    /// The request, unless someone answered it meanwhile, and whether this thread was
    /// written off.
    fn end(&self) -> (Option<Request>, bool) {
        let mut state = self.state.lock().expect("slot lock");
        let request = state.running.take().and_then(|r| r.request);
        (request, state.written_off)
    }
}

/// A shared hold on the gate; a poisoned lock still gates (it guards no data).
fn shared_gate(gate: &RwLock<()>) -> std::sync::RwLockReadGuard<'_, ()> {
    gate.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn send_timeout(request: Request, how: How) {
    metrics::count(metrics::Event::Timeout);
    let _ = bridge::send_text(request, 504, "request timed out\n", how);
}

fn too_large(limit: u64) -> String {
    format!("request body too large: the limit is {limit} bytes\n")
}

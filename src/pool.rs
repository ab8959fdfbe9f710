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

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tiny_http::{Request, Response};

use crate::bridge::{self, BodyError, Incoming, RequestCopy};
use crate::loader::LoadedApp;
use crate::say;

/// A declared body above this size is never drained or dropped, see [`Shared::reject_body`].
const QUARANTINE_ABOVE_BYTES: usize = 1 << 30;

#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub threads: usize,
    pub timeout: Option<Duration>,
    pub max_body_bytes: u64,
}

/// The pool's handle: where the acceptor sends requests.
pub struct Pool {
    shared: Arc<Shared>,
    sender: Sender<Incoming>,
}

struct Shared {
    app: Arc<LoadedApp>,
    queue: Receiver<Incoming>,
    settings: PoolSettings,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// The pool's time origin: deadlines and the watcher's wake time count from it.
    epoch: Instant,
    /// When the watcher will look next (nanoseconds since `epoch`); `u64::MAX` while it
    /// scans or has nothing to wait for. A request entering the app with an earlier
    /// deadline wakes it.
    watcher_wakes_at: AtomicU64,
    written_off: AtomicUsize,
    quarantined: AtomicUsize,
    watcher: OnceLock<Thread>,
    /// Set when the worker stops: requests that have not reached the app get 503.
    closing: AtomicBool,
    /// Held for reading by every call into the app; taken for writing to shut it down.
    gate: RwLock<()>,
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
    /// `None` once the watcher has answered 504 in the app's place.
    request: Option<Request>,
    deadline: Option<Instant>,
}

/// What a pool thread does after a request.
#[derive(PartialEq, Eq)]
enum Fate {
    Continue,
    Exit,
}

impl Pool {
    pub fn start(app: Arc<LoadedApp>, settings: PoolSettings) -> Pool {
        let (sender, queue) = crossbeam_channel::unbounded();
        let watch = settings.timeout.is_some();
        let shared = Arc::new(Shared {
            app,
            queue,
            settings,
            slots: Mutex::new(Vec::new()),
            epoch: Instant::now(),
            watcher_wakes_at: AtomicU64::new(u64::MAX),
            written_off: AtomicUsize::new(0),
            quarantined: AtomicUsize::new(0),
            watcher: OnceLock::new(),
            closing: AtomicBool::new(false),
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

    pub fn sender(&self) -> Sender<Incoming> {
        self.sender.clone()
    }

    /// Stops calling the app and runs its `shutdown` hook once no request is inside it,
    /// waiting at most `grace`. Returns `false` when requests were still inside the app
    /// then: the hook is skipped rather than run under them.
    pub fn shut_down_app(&self, grace: Duration) -> bool {
        let shared = &self.shared;
        shared.closing.store(true, Ordering::Release);
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
            while let Ok(incoming) = shared.queue.recv() {
                if shared.serve(incoming, &slot, &mut copy) == Fate::Exit {
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

    fn serve(&self, incoming: Incoming, slot: &Slot, copy: &mut RequestCopy) -> Fate {
        let Incoming {
            mut request,
            received,
        } = incoming;
        let deadline = self.settings.timeout.map(|t| received + t);
        let expired = || deadline.is_some_and(|d| Instant::now() >= d);
        if expired() {
            send_timeout(request);
            return Fate::Continue;
        }
        if let Err(e) = copy.fill(&mut request, self.settings.max_body_bytes) {
            self.reject_body(request, e);
            return Fate::Continue;
        }
        if expired() {
            send_timeout(request);
            return Fate::Continue;
        }
        let health_probe = copy.path() == b"/healthz";

        let _inside = shared_gate(&self.gate);
        if self.closing.load(Ordering::Acquire) {
            let _ = bridge::send_text(request, 503, "shutting down\n");
            return Fate::Continue;
        }
        slot.begin(request, deadline);
        if let (Some(deadline), Some(watcher)) = (deadline, self.watcher.get()) {
            if self.nanos(deadline) < self.watcher_wakes_at.load(Ordering::SeqCst) {
                watcher.unpark();
            }
        }
        let answer = match health_probe {
            true => Answer::Health(self.app.health()),
            false => Answer::App(self.app.handle(&copy.as_raw())),
        };
        let (request, written_off) = slot.end();

        if let Some(request) = request {
            let _ = match &answer {
                Answer::Health(Ok(())) => bridge::send_text(request, 200, "ok\n"),
                Answer::Health(Err(reason)) => {
                    bridge::send_text(request, 503, &format!("unhealthy: {reason}\n"))
                }
                Answer::App(response) => bridge::send_app_response(request, response),
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

    /// Answers a request whose body was not read.
    ///
    /// tiny_http 0.12 drains an unread body when the request is dropped, and first allocates
    /// a buffer of the whole remaining declared length: a `Content-Length` of 100 TB aborts
    /// the process. Bodies up to [`QUARANTINE_ABOVE_BYTES`] are answered and drained on a
    /// thread of their own (the allocation is virtual; the drain runs at the client's pace and
    /// a stalled client is cut off by the socket timeout). Above that the connection is
    /// answered and then parked, never dropped: a leak of one connection, counted, instead
    /// of a crash.
    fn reject_body(&self, request: Request, error: BodyError) {
        let limit = self.settings.max_body_bytes;
        match error {
            BodyError::TooLarge {
                declared: Some(len),
            } if len > QUARANTINE_ABOVE_BYTES => {
                let response = Response::from_string(too_large(limit)).with_status_code(413);
                std::mem::forget(request.upgrade("close", response));
                let parked = self.quarantined.fetch_add(1, Ordering::Relaxed) + 1;
                say!("parked a connection that declared a {len}-byte body ({parked} parked)");
            }
            BodyError::TooLarge { declared: Some(_) } => {
                let drain = thread::Builder::new()
                    .name("drain".into())
                    .spawn(move || bridge::send_text(request, 413, &too_large(limit)));
                if let Err(e) = drain {
                    say!("cannot start a thread to answer 413: {e}");
                }
            }
            BodyError::TooLarge { declared: None } => {
                let _ = bridge::send_text(request, 413, &too_large(limit));
            }
            BodyError::Read(e) => {
                let _ = bridge::send_text(
                    request,
                    400,
                    &format!("could not read the request body: {e}\n"),
                );
            }
        }
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
                    Expiry::Fired { request, replace } => {
                        if replace {
                            Shared::spawn_thread(&self);
                        }
                        send_timeout(request);
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
                let cap = self.settings.threads;
                let replace = self
                    .written_off
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < cap).then_some(n + 1)
                    })
                    .is_ok();
                state.written_off = replace;
                Expiry::Fired { request, replace }
            }
            Some(deadline) if running.request.is_some() => Expiry::Pending(deadline),
            _ => Expiry::Idle,
        }
    }
}

enum Expiry {
    Idle,
    Pending(Instant),
    Fired { request: Request, replace: bool },
}

enum Answer<'a> {
    Health(Result<(), String>),
    App(crate::loader::AppResponse<'a>),
}

impl Slot {
    fn begin(&self, request: Request, deadline: Option<Instant>) {
        self.state.lock().expect("slot lock").running = Some(Running {
            request: Some(request),
            deadline,
        });
    }

    /// The request, unless the watcher answered it, and whether this thread was written off.
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

fn send_timeout(request: Request) {
    let _ = bridge::send_text(request, 504, "request timed out\n");
}

fn too_large(limit: u64) -> String {
    format!("request body too large: the limit is {limit} bytes\n")
}

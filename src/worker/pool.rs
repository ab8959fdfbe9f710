//! The worker's pool: a fixed number of OS threads taking requests from one queue and
//! calling the app, and the writing-off of threads stuck in the app.
//!
//! Theory of operation:
//!
//! * A request reaches the pool read in full (see `exchange`), as a [`Received`] shared by
//!   the I/O task that waits for its answer and the pool thread that serves it. Its
//!   `state` says where it is: queued, inside the app, answered, given up by the I/O
//!   side (deadline, client gone), or given up by the worker (answered 503 by
//!   [`Pool::abandon`]). The I/O side keeps the request's deadline with a timer of its own, so a 504
//!   goes out at the deadline whether the request is queued or inside the app, however
//!   many threads are stuck.
//! * A pool thread takes a request from the queue only if it is still queued (compare and
//!   swap): a request whose deadline passed, or whose client left, while it waited never
//!   reaches the app. Inside the app, the same events *cancel* it: the app can see that
//!   and return early, and a stream it is writing is cut off.
//! * At most `max_queue` app requests wait; one more is shed (503) without being queued.
//! * A request whose deadline passes inside the app leaves its thread *written off*: the
//!   I/O side starts a replacement at once, so the pool keeps its size, and the stuck
//!   thread exits whenever the app returns. At most `threads` threads can be written off
//!   at a time (the pool at most doubles); past that the 504s still go out on time but no
//!   thread is added, `/healthz` stops getting through, and the watchdog replaces the
//!   worker. An app that gives its thread back on its own once cancelled declares a
//!   *deadline grace* (ABI 3; the Python host interrupts the app's code): its request is
//!   only *overdue* at the deadline (504 all the same), and its thread is written off only
//!   if it is still inside the app when the grace is over.
//! * The watchdog's probes are jobs in the same queue, answered by a pool thread that asks
//!   the app's health hook: a probe gets through exactly when a request would. `/healthz`
//!   is an HTTP request of [`Kind::Health`], answered the same way.
//! * Stopping: once the pool is stopped nothing more enters the app; the app's shutdown
//!   hook runs when no thread is inside it (the `gate`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use super::request_id::{IdSeed, RequestId};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use http::request::Parts;
use microservice_rust::abi::MsrRequest;
use tokio::sync::oneshot;

use super::access::Ledger;
use super::bridge::{self, Answer, RequestView};
use super::front::Accepting;
use super::loader::LoadedApp;
use super::status::StatusPipe;
use super::stream::Call;
use crate::control;
use crate::metrics::{Event, Gauges};
use crate::say;

/// How long a thread gathering a batch waits at a time before it looks whether the worker
/// stopped.
const GATHER_SLICE: Duration = Duration::from_millis(20);

/// The access log's status for a request whose client left before its answer (nginx's).
const CLIENT_CLOSED: u16 = 499;

#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub threads: usize,
    /// App requests that may wait for a thread; one more is shed (`max_queue`).
    pub max_queue: usize,
    /// The request-duration watchdog: (threshold, how many recent requests to average).
    pub slow: Option<(Duration, usize)>,
    /// Dynamic batching (`batching`, with an app that has a batch handler): at most this
    /// many requests at once, waiting at most this long after the first.
    pub batching: Option<(usize, Duration)>,
}

/// What a request asks of the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The app's `handle`.
    App,
    /// `/healthz`: the app's health hook and the worker's own.
    Health,
}

/// Where a request is; see the module docs.
mod state {
    pub const QUEUED: u8 = 0;
    pub const IN_APP: u8 = 1;
    pub const ANSWERED: u8 = 2;
    /// Its deadline passed; the I/O side answered 504.
    pub const LATE: u8 = 3;
    /// Its deadline passed inside the app and its thread was written off.
    pub const WRITTEN_OFF: u8 = 4;
    /// The I/O side stopped waiting (the client left).
    pub const GONE: u8 = 5;
    /// The worker gave up on it (it is being replaced or its stop deadline passed): 503.
    pub const ABANDONED: u8 = 6;
    /// Inside the app, which started streaming the answer (the I/O side has it).
    pub const STREAMING: u8 = 7;
    /// Its deadline passed inside an app with a deadline grace; the I/O side answered 504,
    /// and the thread is written off if still inside when the grace is over.
    pub const OVERDUE: u8 = 8;
}

/// Why a request was cancelled (see [`Received::is_cancelled`]).
mod cancel {
    pub const NOT: u8 = 0;
    /// Its client left.
    pub const CLIENT_LEFT: u8 = 1;
    /// Its deadline passed.
    pub const LATE: u8 = 2;
    /// The worker gave up on it.
    pub const ABANDONED: u8 = 3;
}

/// A request read in full, shared by the I/O task waiting for it and the pool thread
/// serving it.
pub struct Received {
    pub head: Parts,
    pub body: Bytes,
    pub peer: SocketAddr,
    /// When the worker had read its head: deadlines and durations count from here.
    pub received: Instant,
    pub deadline: Option<Instant>,
    /// What the request's ID is made from (see `request_id`).
    pub seed: IdSeed,
    kind: Kind,
    state: AtomicU8,
    cancelled: AtomicU8,
}

impl Received {
    pub fn new(
        head: Parts,
        body: Bytes,
        peer: SocketAddr,
        (received, deadline): (Instant, Option<Instant>),
        seed: IdSeed,
        kind: Kind,
    ) -> Received {
        Received {
            head,
            body,
            peer,
            received,
            deadline,
            seed,
            kind,
            state: AtomicU8::new(state::QUEUED),
            cancelled: AtomicU8::new(cancel::NOT),
        }
    }

    /// Whether the app should stop: the client left, the deadline passed, or the worker
    /// gave up on the request.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire) != cancel::NOT
            || self.deadline.is_some_and(|at| Instant::now() >= at)
    }

    /// The client left (or its answer could not be delivered).
    pub fn cancel(&self) {
        self.cancel_for(cancel::CLIENT_LEFT);
    }

    fn cancel_for(&self, why: u8) {
        let _ =
            self.cancelled
                .compare_exchange(cancel::NOT, why, Ordering::AcqRel, Ordering::Acquire);
    }

    fn client_left(&self) -> bool {
        self.cancelled.load(Ordering::Acquire) == cancel::CLIENT_LEFT
    }

    /// The app returned: the request's state until then, and from now on answered. One
    /// whose deadline has passed is late instead, whatever the app answered, and its
    /// answer is not sent: the I/O side answers it 504 (on a busy machine its timer can fire
    /// after the app has seen the deadline and returned).
    pub fn is_late(&self) -> bool {
        self.state.load(Ordering::Acquire) == state::LATE
    }

    /// See [`Received::is_late`].
    fn leaves_app(&self) -> u8 {
        let late = self.deadline.is_some_and(|at| Instant::now() >= at);
        if late && self.moves(state::IN_APP, state::LATE) {
            return state::LATE;
        }
        self.state.swap(state::ANSWERED, Ordering::AcqRel)
    }

    /// The app starts streaming its answer: `false` when the request is no longer its to
    /// answer (late, written off, abandoned).
    pub fn starts_streaming(&self) -> bool {
        self.moves(state::IN_APP, state::STREAMING)
    }

    /// The request's ID (made each time: on the request path the pool makes it once).
    pub fn id(&self) -> RequestId {
        self.seed.id(&self.head)
    }

    fn moves(&self, from: u8, to: u8) -> bool {
        self.state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// What [`Pool::submit`] did with a request.
pub enum Submitted {
    /// Queued: its answer comes on this channel.
    Queued(oneshot::Receiver<Answer>),
    /// `max_queue` app requests were waiting already: it was not queued.
    Shed,
    /// The pool is stopped.
    Stopped,
}

/// What waits in the pool's queue.
enum Job {
    Http {
        request: Arc<Received>,
        reply: oneshot::Sender<Answer>,
    },
    /// A watchdog probe: ask the app's health hook, answer on the status pipe.
    Probe(u64),
    /// One thread too many: the one that takes this ends (a batch stuck past its deadline
    /// had a replacement started for each of its requests; see `serve_batch`).
    Retire,
}

/// A request taken from the queue, and where its answer goes.
type Taken = (Arc<Received>, oneshot::Sender<Answer>);

/// The pool's handle.
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    app: Arc<LoadedApp>,
    queue: Receiver<Job>,
    sender: Sender<Job>,
    settings: PoolSettings,
    status: Arc<StatusPipe>,
    accepting: Arc<Accepting>,
    ledger: Arc<Ledger>,
    /// One per live thread (written-off ones included), for the report and the gauges.
    slots: Mutex<Vec<Arc<Slot>>>,
    written_off: AtomicUsize,
    /// App requests queued and not yet taken or given up (`max_queue` bounds it).
    waiting: AtomicUsize,
    /// Nothing more enters the app.
    stopped: AtomicBool,
    /// Held for reading by every call into the app; taken for writing to shut it down.
    gate: RwLock<()>,
    /// The durations of the latest app requests, when `settings.slow` is set.
    recent: Mutex<VecDeque<Duration>>,
    /// Held by the one thread gathering a batch (with `settings.batching`), so that
    /// batches fill instead of every idle thread taking a request or two.
    gather: Mutex<()>,
    /// The I/O runtime, on which a streaming app's write waits for room.
    runtime: tokio::runtime::Handle,
}

/// The requests one pool thread is serving (one, or a batch), and where their answers go:
/// for the report, and for answering them 503 when the worker gives up on them while the
/// app still runs.
#[derive(Default)]
struct Slot {
    serving: Mutex<Vec<Serving>>,
}

struct Serving {
    request: Arc<Received>,
    reply: Option<oneshot::Sender<Answer>>,
}

impl Slot {
    fn serving(&self) -> MutexGuard<'_, Vec<Serving>> {
        // It guards a plain value; a panic while it was held leaves nothing half done.
        self.serving.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Locks a mutex whose data stays valid whatever a panicking holder did.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    pub fn start(
        app: Arc<LoadedApp>,
        settings: PoolSettings,
        status: Arc<StatusPipe>,
        accepting: Arc<Accepting>,
        ledger: Arc<Ledger>,
        runtime: tokio::runtime::Handle,
    ) -> std::io::Result<Pool> {
        let (sender, queue) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            app,
            queue,
            sender,
            status,
            accepting,
            ledger,
            slots: Mutex::new(Vec::new()),
            written_off: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            gate: RwLock::new(()),
            recent: Mutex::new(VecDeque::with_capacity(settings.slow.map_or(0, |s| s.1))),
            gather: Mutex::new(()),
            settings,
            runtime,
        });
        for _ in 0..shared.settings.threads {
            shared.spawn_thread()?;
        }
        Ok(Pool { shared })
    }

    /// Queues a request, unless `max_queue` app requests wait already (health checks are
    /// never shed: they must see what a request would).
    pub fn submit(&self, request: Arc<Received>) -> Submitted {
        let shared = &self.shared;
        if shared.stopped.load(Ordering::Acquire) {
            return Submitted::Stopped;
        }
        let counted = request.kind == Kind::App;
        if counted && shared.waiting.fetch_add(1, Ordering::AcqRel) >= shared.settings.max_queue {
            shared.waiting.fetch_sub(1, Ordering::AcqRel);
            return Submitted::Shed;
        }
        let (reply, answer) = oneshot::channel();
        if shared.sender.send(Job::Http { request, reply }).is_err() {
            if counted {
                shared.waiting.fetch_sub(1, Ordering::AcqRel);
            }
            return Submitted::Stopped;
        }
        Submitted::Queued(answer)
    }

    /// The request's deadline passed: a queued request never enters the app, and the
    /// thread of one inside it is written off and replaced, up to the cap. `false` when the
    /// pool had answered it already (its answer is on its way).
    pub fn expire(&self, request: &Arc<Received>) -> bool {
        request.cancel_for(cancel::LATE);
        let shared = &self.shared;
        if shared.leaves_queue(request, state::LATE) {
            return true;
        }
        let grace = shared.app.deadline_grace();
        if !grace.is_zero() {
            // The app gives its thread back on its own: overdue now, and written off only
            // if still inside the app when the grace is over.
            if request.moves(state::IN_APP, state::OVERDUE) {
                let (shared, request) = (shared.clone(), request.clone());
                self.shared.runtime.spawn(async move {
                    tokio::time::sleep(grace).await;
                    shared.write_off(&request);
                });
                return true;
            }
            let state = request.state.load(Ordering::Acquire);
            return state != state::ANSWERED && state != state::STREAMING;
        }
        if !shared.write_off(request) {
            // Late now, or made late by its pool thread as the app returned.
            return request.moves(state::IN_APP, state::LATE)
                || request.state.load(Ordering::Acquire) == state::LATE;
        }
        let state = request.state.load(Ordering::Acquire);
        state != state::ANSWERED && state != state::STREAMING
    }

    /// Answers 503 to every request queued or inside the app, at once, and lets nothing more
    /// into the app: the worker gives up on them. Returns how many were answered.
    pub fn abandon(&self) -> u64 {
        let shared = &self.shared;
        shared.stopped.store(true, Ordering::Release);
        let gone = || bridge::text(503, "worker replaced\n");
        let mut answered = 0;
        while let Ok(job) = shared.queue.try_recv() {
            if let Job::Http { request, reply } = job {
                request.cancel_for(cancel::ABANDONED);
                if shared.leaves_queue(&request, state::ABANDONED) {
                    shared.send(reply, gone(), &request, &request.id());
                    answered += 1;
                }
            }
        }
        let slots = lock(&shared.slots).clone();
        for slot in slots {
            let taken: Vec<_> = slot
                .serving()
                .iter_mut()
                .map(|s| (s.request.clone(), s.reply.take()))
                .collect();
            for (request, reply) in taken {
                // A stream in progress is cut off at its next write.
                request.cancel_for(cancel::ABANDONED);
                if let Some(reply) = reply {
                    if request.moves(state::IN_APP, state::ABANDONED) {
                        shared.send(reply, gone(), &request, &request.id());
                        answered += 1;
                    }
                }
            }
        }
        answered
    }

    /// The I/O side stopped waiting for `request`: if still queued (its client left), it
    /// never enters the app; still inside the app without an answer, it is cancelled. (An
    /// answered or streaming request is left alone: its answer is on its way.)
    pub fn forget(&self, request: &Received) {
        if !self.shared.leaves_queue(request, state::GONE)
            && request.state.load(Ordering::Acquire) == state::IN_APP
        {
            request.cancel();
        }
    }

    /// Queues a watchdog probe; a pool thread answers it on the status pipe.
    pub fn probe(&self, id: u64) {
        let _ = self.shared.sender.send(Job::Probe(id));
    }

    /// Puts the pool's present figures into the metrics.
    pub fn sample(&self, gauges: &Gauges) {
        let shared = &self.shared;
        let (threads, busy) = {
            let slots = lock(&shared.slots);
            let busy = slots.iter().filter(|s| !s.serving().is_empty()).count();
            (slots.len(), busy)
        };
        let written_off = shared.written_off.load(Ordering::Acquire);
        let set = |gauge: &std::sync::atomic::AtomicU64, value: usize| {
            gauge.store(value as u64, Ordering::Relaxed)
        };
        set(&gauges.queued, shared.queue.len());
        set(&gauges.threads_busy, busy.saturating_sub(written_off));
        set(&gauges.threads, threads.saturating_sub(written_off));
        set(&gauges.threads_written_off, written_off);
    }

    /// Logs every request inside the app with its path and age, and the queue's length.
    pub fn report(&self) {
        let now = Instant::now();
        let slots = lock(&self.shared.slots).clone();
        let mut inside = 0;
        let serving: Vec<Arc<Received>> = slots
            .iter()
            .flat_map(|slot| {
                slot.serving()
                    .iter()
                    .map(|s| s.request.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        for request in serving {
            inside += 1;
            let age = now.duration_since(request.received).as_secs_f64();
            let late = match request.state.load(Ordering::Acquire) {
                state::IN_APP => "",
                state::STREAMING => " (streaming)",
                _ => " (answered 504, still inside the app)",
            };
            say!(
                "in flight: {} {} (request {}) for {age:.3}s{late}",
                request.head.method,
                request.head.uri,
                request.id().as_str()
            );
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
    /// Moves a queued request on to `to`; `false` when it was not queued any more. Every
    /// way out of the queue goes through here, so `waiting` counts what still waits.
    fn leaves_queue(&self, request: &Received, to: u8) -> bool {
        let moved = request.moves(state::QUEUED, to);
        if moved && request.kind == Kind::App {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
        moved
    }

    /// Writes off the thread of `request`, still inside the app past its deadline (inside
    /// the app, or late inside it after a grace), and starts a replacement, up to the cap.
    /// `false` when the cap is reached (nothing is written off then).
    fn write_off(self: &Arc<Self>, request: &Received) -> bool {
        let cap = self.settings.threads;
        let under_cap = self
            .written_off
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok();
        if !under_cap {
            return false;
        }
        if !request.moves(state::IN_APP, state::WRITTEN_OFF)
            && !request.moves(state::OVERDUE, state::WRITTEN_OFF)
        {
            // It left the app meanwhile: nothing to write off.
            self.written_off.fetch_sub(1, Ordering::AcqRel);
            return true;
        }
        self.ledger.count(Event::WrittenOff);
        if let Err(e) = self.spawn_thread() {
            say!("cannot start a thread to replace one stuck in the app: {e}");
        }
        true
    }

    fn spawn_thread(self: &Arc<Self>) -> std::io::Result<()> {
        let slot = Arc::new(Slot::default());
        lock(&self.slots).push(slot.clone());
        let shared = self.clone();
        let spawned = thread::Builder::new().name("pool".into()).spawn(move || {
            let mut views = vec![RequestView::default()];
            loop {
                let (written_off, retire) = match shared.settings.batching {
                    Some((most, timeout)) => {
                        let Some((batch, retire)) = shared.gather(most, timeout) else {
                            break;
                        };
                        (shared.serve_batch(batch, &slot, &mut views), retire)
                    }
                    None => match shared.queue.recv() {
                        Err(_) => break,
                        Ok(Job::Http { request, reply }) => {
                            let off = shared.serve(request, reply, &slot, &mut views[0]);
                            (usize::from(off), false)
                        }
                        Ok(Job::Probe(id)) => {
                            shared.answer_probe(id);
                            (0, false)
                        }
                        Ok(Job::Retire) => (0, true),
                    },
                };
                if written_off > 0 {
                    // Each written-off request had a replacement started: this thread ends,
                    // and so do as many others as were started beyond the one it needs.
                    shared.written_off.fetch_sub(written_off, Ordering::AcqRel);
                    for _ in 1..written_off {
                        let _ = shared.sender.send(Job::Retire);
                    }
                    break;
                }
                if retire {
                    break;
                }
            }
            lock(&shared.slots).retain(|s| !Arc::ptr_eq(s, &slot));
        });
        if let Err(e) = spawned {
            lock(&self.slots).pop();
            return Err(e);
        }
        Ok(())
    }

    /// Serves one request; `true` when this thread was written off meanwhile and must end.
    fn serve(
        &self,
        request: Arc<Received>,
        reply: oneshot::Sender<Answer>,
        slot: &Slot,
        view: &mut RequestView,
    ) -> bool {
        if !self.leaves_queue(&request, state::IN_APP) {
            return false; // late, gone, or abandoned
        }
        let id = request.id();
        let _inside = self.gate.read().unwrap_or_else(|p| p.into_inner());
        if self.stopped.load(Ordering::Acquire) {
            // Written off meanwhile (its deadline passed while the gate was shut): its
            // 504 went out, and this thread ends as a written-off one does.
            return !self.stopped_answer(request, reply, &id);
        }
        slot.serving().push(Serving {
            request: request.clone(),
            reply: Some(reply),
        });
        // A streaming app takes the answer's channel from the slot (see `stream`).
        let take_reply = || slot.serving().first_mut().and_then(|s| s.reply.take());
        let (answer, streamed) = match request.kind {
            Kind::Health => (Some(health_answer(self.health())), None),
            Kind::App => {
                let mut call = Call::new(&request, &id, &self.runtime, &take_reply);
                let response = self.app.handle(&view.of(&request, &id, call.context()));
                match call.finish() {
                    Some(streamed) => (None, Some(streamed)),
                    None => (Some(bridge::app_answer(&response)), None),
                }
            }
        };
        let reply = slot.serving().pop().and_then(|s| s.reply);
        self.remember(&request);
        match request.leaves_app() {
            state::IN_APP => {
                if let (Some(reply), Some(answer)) = (reply, answer) {
                    self.send(reply, answer, &request, &id);
                }
                false
            }
            state::STREAMING => {
                if let Some((status, bytes)) = streamed {
                    let status = if request.client_left() {
                        CLIENT_CLOSED
                    } else {
                        status
                    };
                    self.record(&request, &id, status, bytes);
                }
                false
            }
            state::WRITTEN_OFF => true,
            _ => false, // late (its 504 went out at the deadline) or abandoned (503)
        }
    }

    /// Answers 503 to a request taken from the queue when the app is stopped; `false` when
    /// the request was written off meanwhile instead (nothing is sent then).
    fn stopped_answer(
        &self,
        request: Arc<Received>,
        reply: oneshot::Sender<Answer>,
        id: &RequestId,
    ) -> bool {
        if request.moves(state::IN_APP, state::ANSWERED) {
            self.send(reply, bridge::text(503, "shutting down\n"), &request, id);
            return true;
        }
        request.state.load(Ordering::Acquire) != state::WRITTEN_OFF
    }

    /// Keeps an app request's duration for the request-duration watchdog, when it is on.
    fn remember(&self, request: &Received) {
        if let (Some((_, count)), Kind::App) = (self.settings.slow, request.kind) {
            let mut recent = lock(&self.recent);
            if recent.len() == count {
                recent.pop_front();
            }
            recent.push_back(request.received.elapsed());
        }
    }

    /// Takes the next batch from the queue, one thread at a time: the first job waited for,
    /// then more until `most` requests are in or `timeout` has passed since the first was
    /// read (a request that waited in the queue that long already waits no more). Probes
    /// are answered on the way. `None` once the queue is closed; with the batch, whether a
    /// `Retire` came.
    fn gather(&self, most: usize, timeout: Duration) -> Option<(Vec<Taken>, bool)> {
        let _gathering = lock(&self.gather);
        let mut batch = Vec::with_capacity(most);
        let mut until = None;
        while batch.len() < most {
            let job = match until {
                None => self.queue.recv().ok()?,
                // In slices, so that a worker giving up on its requests (`abandon`) finds
                // the batch in hand served (503) at once, not after the wait.
                Some(at) if Instant::now() < at && !self.stopped.load(Ordering::Acquire) => {
                    let slice = at.min(Instant::now() + GATHER_SLICE);
                    match self.queue.recv_deadline(slice) {
                        Ok(job) => job,
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                        Err(_) => break,
                    }
                }
                Some(_) => break,
            };
            match job {
                Job::Http { request, reply } => {
                    until.get_or_insert(request.received + timeout);
                    batch.push((request, reply));
                }
                Job::Probe(id) => self.answer_probe(id),
                Job::Retire => return Some((batch, true)),
            }
        }
        Some((batch, false))
    }

    /// Serves a batch: health checks alone, then the app requests still queued in one call
    /// of the app's batch handler, each answered, recorded and stamped on its own. Returns
    /// how many of them were written off (their deadline passed inside the app).
    fn serve_batch(&self, batch: Vec<Taken>, slot: &Slot, views: &mut Vec<RequestView>) -> usize {
        let mut written_off = 0;
        let mut taken = Vec::with_capacity(batch.len());
        for (request, reply) in batch {
            if request.kind == Kind::Health {
                written_off += usize::from(self.serve(request, reply, slot, &mut views[0]));
            } else if self.leaves_queue(&request, state::IN_APP) {
                taken.push((request, reply));
            }
        }
        if taken.is_empty() {
            return written_off;
        }
        let ids: Vec<RequestId> = taken.iter().map(|(request, _)| request.id()).collect();
        let _inside = self.gate.read().unwrap_or_else(|p| p.into_inner());
        if self.stopped.load(Ordering::Acquire) {
            for ((request, reply), id) in taken.into_iter().zip(&ids) {
                written_off += usize::from(!self.stopped_answer(request, reply, id));
            }
            return written_off;
        }
        let requests: Vec<Arc<Received>> = taken.iter().map(|(r, _)| r.clone()).collect();
        slot.serving()
            .extend(taken.into_iter().map(|(request, reply)| Serving {
                request,
                reply: Some(reply),
            }));
        // Each request's calls: cancellation of its own; no streaming in a batch.
        let no_reply = || None;
        let mut calls: Vec<Call> = requests
            .iter()
            .zip(&ids)
            .map(|(request, id)| Call::new(request, id, &self.runtime, &no_reply).in_batch())
            .collect();
        if views.len() < requests.len() {
            views.resize_with(requests.len(), RequestView::default);
        }
        let raw: Vec<MsrRequest> = requests
            .iter()
            .zip(&ids)
            .zip(views.iter_mut())
            .zip(calls.iter_mut())
            .map(|(((request, id), view), call)| view.of(request, id, call.context()))
            .collect();
        let responses = self.app.handle_batch(&raw);
        drop(raw);
        drop(calls);
        let servings = std::mem::take(&mut *slot.serving());
        for ((serving, id), response) in servings.into_iter().zip(&ids).zip(&responses) {
            let request = serving.request;
            self.remember(&request);
            match request.leaves_app() {
                state::IN_APP => {
                    if let Some(reply) = serving.reply {
                        self.send(reply, bridge::app_answer(response), &request, id);
                    }
                }
                state::WRITTEN_OFF => written_off += 1,
                _ => {} // late (answered 504) or abandoned (503)
            }
        }
        written_off
    }

    /// Sends the I/O side an answer of the pool's for `request`, stamped with its ID, and
    /// records it (metrics, access line; 499 when the client left meanwhile). The pool
    /// stamps and records what it sends, the I/O side what it makes itself: that keeps
    /// the work of most answers off the I/O thread, which bounds the throughput.
    fn send(
        &self,
        reply: oneshot::Sender<Answer>,
        mut answer: Answer,
        request: &Received,
        id: &RequestId,
    ) {
        id.stamp(answer.headers_mut());
        let (status, bytes) = (answer.status().as_u16(), bridge::body_len(&answer));
        match reply.send(answer) {
            Ok(()) => self.record(request, id, status, bytes),
            Err(_) => self.record(request, id, CLIENT_CLOSED, 0),
        }
    }

    fn record(&self, request: &Received, id: &RequestId, status: u16, bytes: u64) {
        let took = request.received.elapsed();
        self.ledger
            .record(&request.head, request.peer, status, bytes, took, id);
    }

    /// The app's health, the worker's ability to accept connections, and the
    /// request-duration watchdog's verdict when it is on.
    fn health(&self) -> Result<(), String> {
        if self.stopped.load(Ordering::Acquire) {
            return Err("stopping".into());
        }
        self.app.health()?;
        self.accepting.health()?;
        let Some((threshold, count)) = self.settings.slow else {
            return Ok(());
        };
        let recent = lock(&self.recent);
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

    fn answer_probe(&self, id: u64) {
        let health = {
            let _inside = self.gate.read().unwrap_or_else(|p| p.into_inner());
            self.health()
        };
        self.status.send(&control::probe_answer(id, &health));
    }
}

fn health_answer(health: Result<(), String>) -> Answer {
    match health {
        Ok(()) => bridge::text(200, "ok\n"),
        Err(reason) => bridge::text(503, &format!("unhealthy: {reason}\n")),
    }
}

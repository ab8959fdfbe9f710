//! The worker's pool: a fixed number of OS threads taking requests from one queue and
//! calling the app, and the writing-off of threads stuck in the app.
//!
//! Theory of operation:
//!
//! * A request reaches the pool read in full (see `exchange`), as a [`Received`] shared by
//!   the I/O task that waits for its answer and the pool thread that serves it; its state
//!   (see `request`) says where it is. The I/O side keeps the request's deadline with a
//!   timer of its own, so a 504 goes out at the deadline whether the request is queued or
//!   inside the app, however many threads are stuck.
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
//! * With `batching`, one thread at a time gathers the queue's requests into a batch for
//!   the app's batch handler (see [`batch`]).
//! * A pool thread that panics (a fault of the worker's, not the app's: the SDK catches
//!   those) answers what it held 500, is logged and is replaced.
//! * Stopping: once the pool is stopped nothing more enters the app; the app's shutdown
//!   hook runs when no thread is inside it (the `gate`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::oneshot;

mod batch;

use super::access::Ledger;
use super::answer::{self, Answer};
use super::bridge::{self, RequestView};
use super::call::Call;
use super::fault::{panic_message, Faults};
use super::health::{self, Health};
use super::loader::LoadedApp;
use super::request::{Cancel, Kind, Received, State};
use super::request_id::RequestId;
use super::status::StatusPipe;
use crate::control::Status;
use crate::metrics::{Event, Gauge, Gauges};
use crate::say;

/// The access log's status for a request whose client left before its answer (nginx's).
const CLIENT_CLOSED: u16 = 499;

#[derive(Clone, Copy, Debug)]
pub struct PoolSettings {
    pub threads: usize,
    /// App requests that may wait for a thread; one more is shed (`max_queue`).
    pub max_queue: usize,
    /// Dynamic batching (`batching`, with an app that has a batch handler).
    pub batching: Option<Batching>,
}

/// Batches of at most `most` requests, gathered for at most `wait` after the first was
/// read.
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    pub most: usize,
    pub wait: Duration,
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
pub(super) enum Job {
    Http {
        request: Arc<Received>,
        reply: oneshot::Sender<Answer>,
    },
    /// A watchdog probe: ask the app's health hook, answer on the status pipe.
    Probe(u64),
    /// One thread too many: the one that takes this ends (a batch stuck past its deadline
    /// had a replacement started for each of its requests; see `batch`).
    Retire,
}

/// What a pool thread does after a job.
pub(super) enum After {
    /// Takes the next job.
    Next,
    /// Ends: a `Retire` came, or the queue closed.
    End,
    /// Ends: it was written off while serving this many requests (one, or several of a
    /// batch), and a replacement was started for each.
    WrittenOff(usize),
}

/// The pool's handle.
pub struct Pool {
    threads: Arc<Threads>,
}

/// The pool's threads and what they share.
pub(super) struct Threads {
    pub(super) app: Arc<LoadedApp>,
    pub(super) queue: Receiver<Job>,
    pub(super) sender: Sender<Job>,
    pub(super) settings: PoolSettings,
    status: Arc<StatusPipe>,
    pub(super) health: Arc<Health>,
    ledger: Arc<Ledger>,
    /// One per live thread (written-off ones included), for the report and the gauges.
    slots: Mutex<Vec<Arc<Slot>>>,
    written_off: AtomicUsize,
    /// App requests queued and not yet taken or given up (`max_queue` bounds it).
    waiting: AtomicUsize,
    /// Nothing more enters the app.
    pub(super) stopped: AtomicBool,
    /// Held for reading by every call into the app; taken for writing to shut it down.
    pub(super) gate: RwLock<()>,
    /// Held by the one thread gathering a batch (with `settings.batching`), so that
    /// batches fill instead of every idle thread taking a request or two.
    pub(super) gather: Mutex<()>,
    /// The I/O runtime, on which a streaming app's write waits for room.
    pub(super) runtime: tokio::runtime::Handle,
    faults: Faults,
}

/// The requests one pool thread is serving (one, or a batch), and where their answers go:
/// for the report, and for answering them 503 when the worker gives up on them while the
/// app still runs.
#[derive(Default)]
pub(super) struct Slot {
    serving: Mutex<Vec<Serving>>,
}

pub(super) struct Serving {
    pub(super) request: Arc<Received>,
    pub(super) reply: Option<oneshot::Sender<Answer>>,
}

impl Slot {
    pub(super) fn serving(&self) -> MutexGuard<'_, Vec<Serving>> {
        lock(&self.serving)
    }
}

/// Locks a mutex whose data stays valid whatever a panicking holder did.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    pub fn start(
        app: Arc<LoadedApp>,
        settings: PoolSettings,
        status: Arc<StatusPipe>,
        health: Arc<Health>,
        ledger: Arc<Ledger>,
        runtime: tokio::runtime::Handle,
        faults: Faults,
    ) -> std::io::Result<Pool> {
        let (sender, queue) = crossbeam_channel::unbounded();
        let threads = Arc::new(Threads {
            app,
            queue,
            sender,
            settings,
            status,
            health,
            ledger,
            slots: Mutex::new(Vec::new()),
            written_off: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            gate: RwLock::new(()),
            gather: Mutex::new(()),
            runtime,
            faults,
        });
        for _ in 0..settings.threads {
            threads.spawn_thread()?;
        }
        Ok(Pool { threads })
    }

    /// Queues a request, unless `max_queue` app requests wait already (health checks are
    /// never shed: they must see what a request would).
    pub fn submit(&self, request: Arc<Received>) -> Submitted {
        let threads = &self.threads;
        if threads.stopped.load(Ordering::Acquire) {
            return Submitted::Stopped;
        }
        let counted = request.kind == Kind::App;
        if counted && threads.waiting.fetch_add(1, Ordering::AcqRel) >= threads.settings.max_queue {
            threads.waiting.fetch_sub(1, Ordering::AcqRel);
            return Submitted::Shed;
        }
        let (reply, answer) = oneshot::channel();
        if threads.sender.send(Job::Http { request, reply }).is_err() {
            if counted {
                threads.waiting.fetch_sub(1, Ordering::AcqRel);
            }
            return Submitted::Stopped;
        }
        Submitted::Queued(answer)
    }

    /// The request's deadline passed: a queued request never enters the app, and the
    /// thread of one inside it is written off and replaced, up to the cap. `false` when the
    /// pool had answered it already (its answer is on its way).
    pub fn expire(&self, request: &Arc<Received>) -> bool {
        request.cancel(Cancel::Late);
        let threads = &self.threads;
        if threads.leaves_queue(request, State::Late) {
            return true;
        }
        let grace = threads.app.deadline_grace();
        if !grace.is_zero() {
            // The app gives its thread back on its own: overdue now, and written off only
            // if still inside the app when the grace is over.
            if request.state.moves(State::InApp, State::Overdue) {
                let (threads, request) = (threads.clone(), request.clone());
                self.threads.runtime.spawn(async move {
                    tokio::time::sleep(grace).await;
                    threads.write_off(&request);
                });
                return true;
            }
            return !request.is_answered();
        }
        if !threads.write_off(request) {
            // Late now, or made late by its pool thread as the app returned.
            return request.state.moves(State::InApp, State::Late) || request.is_late();
        }
        !request.is_answered()
    }

    /// Answers 503 to every request queued or inside the app, at once, and lets nothing more
    /// into the app: the worker gives up on them. Returns how many were answered.
    pub fn abandon(&self) -> u64 {
        let threads = &self.threads;
        threads.stopped.store(true, Ordering::Release);
        let gone = || answer::text(503, "worker replaced\n");
        let mut answered = 0;
        while let Ok(job) = threads.queue.try_recv() {
            if let Job::Http { request, reply } = job {
                request.cancel(Cancel::Abandoned);
                if threads.leaves_queue(&request, State::Abandoned) {
                    threads.send(reply, gone(), &request, &request.id());
                    answered += 1;
                }
            }
        }
        for (request, reply) in threads.held() {
            // A stream in progress is cut off at its next write.
            request.cancel(Cancel::Abandoned);
            if let Some(reply) = reply {
                if request.state.moves(State::InApp, State::Abandoned) {
                    threads.send(reply, gone(), &request, &request.id());
                    answered += 1;
                }
            }
        }
        answered
    }

    /// The I/O side stopped waiting for `request`: if still queued (its client left), it
    /// never enters the app; still inside the app without an answer, it is cancelled. (An
    /// answered or streaming request is left alone: its answer is on its way.)
    pub fn forget(&self, request: &Received) {
        if !self.threads.leaves_queue(request, State::Gone) && request.state.load() == State::InApp
        {
            request.cancel(Cancel::ClientLeft);
        }
    }

    /// Queues a watchdog probe; a pool thread answers it on the status pipe.
    pub fn probe(&self, id: u64) {
        let _ = self.threads.sender.send(Job::Probe(id));
    }

    /// Puts the pool's present figures into the metrics.
    pub fn sample(&self, gauges: &Gauges) {
        let threads = &self.threads;
        let (live, busy) = {
            let slots = lock(&threads.slots);
            let busy = slots.iter().filter(|s| !s.serving().is_empty()).count();
            (slots.len(), busy)
        };
        let written_off = threads.written_off.load(Ordering::Acquire);
        let set = |gauge: Gauge, value: usize| gauges.set(gauge, value as u64);
        set(Gauge::Queued, threads.queue.len());
        set(Gauge::ThreadsBusy, busy.saturating_sub(written_off));
        set(Gauge::Threads, live.saturating_sub(written_off));
        set(Gauge::ThreadsWrittenOff, written_off);
    }

    /// Logs every request inside the app with its path and age, and the queue's length.
    pub fn report(&self) {
        let now = Instant::now();
        let serving: Vec<Arc<Received>> = self
            .threads
            .slots()
            .iter()
            .flat_map(|slot| {
                slot.serving()
                    .iter()
                    .map(|s| s.request.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        for request in &serving {
            let age = now.duration_since(request.received).as_secs_f64();
            let late = match request.state.load() {
                State::InApp => "",
                State::Streaming => " (streaming)",
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
            "{} request(s) inside the app, {} queued, {} thread(s) written off",
            serving.len(),
            self.threads.queue.len(),
            self.threads.written_off.load(Ordering::Relaxed)
        );
    }

    /// Stops calling the app and runs its `shutdown` hook once no request is inside it,
    /// waiting at most `grace`. Returns `false` when requests were still inside the app
    /// then: the hook is skipped rather than run under them.
    pub fn shut_down_app(&self, grace: Duration) -> bool {
        let threads = &self.threads;
        threads.stopped.store(true, Ordering::Release);
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(_exclusive) = threads.gate.try_write() {
                threads.app.shutdown();
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Threads {
    /// Moves a queued request on to `to`; `false` when it was not queued any more. Every
    /// way out of the queue goes through here, so `waiting` counts what still waits.
    pub(super) fn leaves_queue(&self, request: &Received, to: State) -> bool {
        let moved = request.state.moves(State::Queued, to);
        if moved && request.kind == Kind::App {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
        moved
    }

    fn slots(&self) -> Vec<Arc<Slot>> {
        lock(&self.slots).clone()
    }

    /// Every request a thread holds, with its answer's channel (taken: the caller answers).
    fn held(&self) -> Vec<(Arc<Received>, Option<oneshot::Sender<Answer>>)> {
        self.slots()
            .iter()
            .flat_map(|slot| {
                slot.serving()
                    .iter_mut()
                    .map(|s| (s.request.clone(), s.reply.take()))
                    .collect::<Vec<_>>()
            })
            .collect()
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
        if !request.state.moves(State::InApp, State::WrittenOff)
            && !request.state.moves(State::Overdue, State::WrittenOff)
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
        let threads = self.clone();
        let spawned = thread::Builder::new().name("pool".into()).spawn(move || {
            let worked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                threads.work(&slot);
            }));
            if let Err(panic) = worked {
                threads.after_panic(&slot, panic_message(&*panic));
            }
            lock(&threads.slots).retain(|s| !Arc::ptr_eq(s, &slot));
        });
        if let Err(e) = spawned {
            lock(&self.slots).pop();
            return Err(e);
        }
        Ok(())
    }

    /// A pool thread's life: jobs until it is told to end or is written off.
    fn work(self: &Arc<Self>, slot: &Slot) {
        let mut views = vec![RequestView::default()];
        loop {
            let after = match self.settings.batching {
                Some(batching) => self.next_batch(batching, slot, &mut views),
                None => match self.queue.recv() {
                    Err(_) => After::End,
                    Ok(Job::Http { request, reply }) => {
                        self.serve(request, reply, slot, &mut views[0])
                    }
                    Ok(Job::Probe(id)) => {
                        self.answer_probe(id);
                        After::Next
                    }
                    Ok(Job::Retire) => After::End,
                },
            };
            match after {
                After::Next => {}
                After::End => return,
                After::WrittenOff(requests) => {
                    // A replacement was started for each written-off request: this thread
                    // ends, and so do as many others as were started beyond the one needed.
                    self.written_off.fetch_sub(requests, Ordering::AcqRel);
                    for _ in 1..requests {
                        let _ = self.sender.send(Job::Retire);
                    }
                    return;
                }
            }
        }
    }

    /// A pool thread panicked: what it held is answered 500 (what it was written off for
    /// was answered 504 already, and has its replacement), and a thread takes its place.
    fn after_panic(self: &Arc<Self>, slot: &Slot, message: &str) {
        let held = std::mem::take(&mut *slot.serving());
        say!(
            "a pool thread panicked ({message}) while serving {} request(s): they are \
             answered 500 and the thread is replaced",
            held.len()
        );
        let mut written_off = 0;
        for Serving { request, reply } in held {
            match (request.state.load(), reply) {
                (State::WrittenOff, _) => written_off += 1,
                (_, Some(reply)) if request.state.moves(State::InApp, State::Answered) => {
                    let id = request.id();
                    self.send(reply, answer::text(500, "internal error\n"), &request, &id);
                }
                _ => {}
            }
        }
        if written_off > 0 {
            // Replaced already, once per written-off request.
            self.written_off.fetch_sub(written_off, Ordering::AcqRel);
            for _ in 1..written_off {
                let _ = self.sender.send(Job::Retire);
            }
        } else if let Err(e) = self.spawn_thread() {
            say!("cannot start a thread to replace the one that panicked: {e}");
        }
    }

    /// Serves one request.
    pub(super) fn serve(
        &self,
        request: Arc<Received>,
        reply: oneshot::Sender<Answer>,
        slot: &Slot,
        view: &mut RequestView,
    ) -> After {
        if !self.leaves_queue(&request, State::InApp) {
            return After::Next; // late, gone, or abandoned
        }
        let id = request.id();
        let _inside = self.gate.read().unwrap_or_else(|p| p.into_inner());
        if self.stopped.load(Ordering::Acquire) {
            return self.stopped_answer(request, reply, &id);
        }
        slot.serving().push(Serving {
            request: request.clone(),
            reply: Some(reply),
        });
        // A streaming app takes the answer's channel from the slot (see `call`).
        let take_reply = || slot.serving().first_mut().and_then(|s| s.reply.take());
        let (answer, streamed) = match request.kind {
            Kind::Health => (Some(health::answer(self.health())), None),
            Kind::App => {
                let mut call = Call::new(&request, &id, &self.runtime, &take_reply);
                let response = self.app.handle(&view.of(&request, &id, call.context()));
                self.faults.for_request("pool", &request.head);
                match call.finish() {
                    Some(streamed) => (None, Some(streamed)),
                    None => (Some(bridge::app_answer(&response)), None),
                }
            }
        };
        let reply = slot.serving().pop().and_then(|s| s.reply);
        self.remember(&request);
        match request.leaves_app() {
            State::InApp => {
                if let (Some(reply), Some(answer)) = (reply, answer) {
                    self.send(reply, answer, &request, &id);
                }
                After::Next
            }
            State::Streaming => {
                if let Some((status, bytes)) = streamed {
                    let status = match request.client_left() {
                        true => CLIENT_CLOSED,
                        false => status,
                    };
                    self.record(&request, &id, status, bytes);
                }
                After::Next
            }
            State::WrittenOff => After::WrittenOff(1),
            _ => After::Next, // late (its 504 went out at the deadline) or abandoned (503)
        }
    }

    /// Answers 503 to a request taken from the queue when the app is stopped; when the
    /// request was written off meanwhile instead (its deadline passed while the gate was
    /// shut: its 504 went out), nothing is sent and this thread ends as a written-off one
    /// does.
    pub(super) fn stopped_answer(
        &self,
        request: Arc<Received>,
        reply: oneshot::Sender<Answer>,
        id: &RequestId,
    ) -> After {
        if request.state.moves(State::InApp, State::Answered) {
            self.send(reply, answer::text(503, "shutting down\n"), &request, id);
            return After::Next;
        }
        match request.state.load() {
            State::WrittenOff => After::WrittenOff(1),
            _ => After::Next,
        }
    }

    /// Keeps an app request's duration for the request-duration watchdog.
    pub(super) fn remember(&self, request: &Received) {
        if request.kind == Kind::App {
            self.health.remember(request.received.elapsed());
        }
    }

    /// Sends the I/O side an answer of the pool's for `request`, stamped with its ID, and
    /// records it (metrics, access line; 499 when the client left meanwhile). The pool
    /// stamps and records what it sends, the I/O side what it makes itself: that keeps
    /// the work of most answers off the I/O thread, which bounds the throughput.
    pub(super) fn send(
        &self,
        reply: oneshot::Sender<Answer>,
        mut answer: Answer,
        request: &Received,
        id: &RequestId,
    ) {
        id.stamp(answer.headers_mut());
        let (status, bytes) = (answer.status().as_u16(), answer::body_len(&answer));
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

    /// The worker's health (see `health`); a stopping pool is unhealthy.
    fn health(&self) -> Result<(), String> {
        if self.stopped.load(Ordering::Acquire) {
            return Err("stopping".into());
        }
        self.health.check(&self.app)
    }

    pub(super) fn answer_probe(&self, id: u64) {
        let health = {
            let _inside = self.gate.read().unwrap_or_else(|p| p.into_inner());
            self.health()
        };
        self.status.send(&Status::Probe { id, health });
    }
}

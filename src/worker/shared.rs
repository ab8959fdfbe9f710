//! What every connection and request of a worker shares: the pool, the connection count,
//! the checks on a request's head, the limits, the records (metrics and access log), and
//! where the worker is in its life ([`Phase`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::access::Ledger;
use super::budget::Budget;
use super::pool::Pool;
use super::request_id::RequestIds;
use super::screen::Screen;
use crate::config::Settings;
use crate::metrics::{Event, Gauge, Recorder};

/// Bodies read at once per I/O thread; see `exchange::next_frame`.
const TURNS_PER_IO_THREAD: usize = 8;

/// How long an exiting worker waits for its access lines to be written.
const LOG_FLUSH: Duration = Duration::from_secs(1);

/// Where the worker is in its life, as every request sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// Retiring: answers carry `Connection: close`; nothing new is accepted.
    Draining,
    /// The worker gave up on what it had read (the pool answered it 503); as `Draining`
    /// otherwise.
    Abandoned,
}

/// What every request of a worker shares.
pub struct Context {
    pub pool: Pool,
    pub connections: Connections,
    pub screen: Screen,
    pub limits: Limits,
    pub metrics: Recorder,
    pub ledger: Arc<Ledger>,
    /// What `/readyz` answers.
    ready: AtomicBool,
    phase: watch::Sender<Phase>,
    /// Requests read and not yet answered.
    in_flight: AtomicUsize,
    pub ids: RequestIds,
    /// Requests left before the I/O thread looks for an answer without sleeping again
    /// (see `exchange`).
    pub spin_skips: AtomicU32,
}

/// The limits on a request the I/O side keeps.
pub struct Limits {
    pub max_body: u64,
    /// A body must keep arriving: no byte for this long is a 408.
    pub body_idle: Duration,
    pub timeout: Option<Duration>,
    /// The request bodies the worker holds, within `max_body_memory_bytes`.
    pub bodies: Arc<Budget>,
    /// Turns at reading a body: how many bodies the I/O threads read at once (see
    /// `exchange::next_frame`).
    pub turns: Arc<Semaphore>,
}

impl Context {
    pub fn new(
        pool: Pool,
        screen: Screen,
        settings: &Settings,
        io_threads: usize,
        metrics: Recorder,
        ledger: Arc<Ledger>,
    ) -> Context {
        Context {
            pool,
            connections: Connections::new(settings.max_connections()),
            screen,
            limits: Limits {
                max_body: settings.max_body_bytes,
                body_idle: settings.keep_alive_timeout(),
                timeout: settings.request_timeout(),
                bodies: Budget::new(settings.max_body_memory()),
                turns: Arc::new(Semaphore::new(TURNS_PER_IO_THREAD * io_threads)),
            },
            metrics,
            ledger,
            ready: AtomicBool::new(true),
            phase: watch::Sender::new(Phase::Serving),
            in_flight: AtomicUsize::new(0),
            ids: RequestIds::new(),
            spin_skips: AtomicU32::new(0),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub fn watch_phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Resolves once the worker is no longer serving (it is being retired).
    pub async fn retiring(phase: &mut watch::Receiver<Phase>) {
        // A closed channel (never: the context holds the sender) reads as retiring.
        let _ = phase.wait_for(|p| *p != Phase::Serving).await;
    }

    /// Writes out the access lines still waiting: the worker is about to exit.
    pub fn finish_log(&self) {
        self.ledger.finish(LOG_FLUSH);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight for as long as what this returns lives.
    pub fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    /// Puts the present figures into the metrics.
    pub fn sample(&self) {
        let gauges = self.metrics.gauges();
        gauges.set(Gauge::Connections, self.connections.open() as u64);
        gauges.set(Gauge::InFlight, self.in_flight() as u64);
        gauges.set(Gauge::BodyBytesHeld, self.limits.bodies.held());
        self.pool.sample(gauges);
    }
}

/// A request in flight, counted as long as it lives.
pub struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connections a worker holds: a permit each, of `max_connections`.
pub struct Connections {
    permits: Arc<Semaphore>,
    max: u32,
    /// Connections open now (the accept task holds a permit too, for the next one).
    open: AtomicUsize,
}

impl Connections {
    pub fn new(max: u32) -> Connections {
        Connections {
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
            open: AtomicUsize::new(0),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A connection was accepted.
    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection ended.
    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// A permit for one more connection; waits (and counts the pause) at the cap.
    pub async fn admit(&self, metrics: &Recorder) -> OwnedSemaphorePermit {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return permit;
        }
        metrics.count(Event::AcceptPaused);
        match self.permits.clone().acquire_owned().await {
            Ok(permit) => permit,
            // The semaphore is never closed.
            Err(_) => std::future::pending().await,
        }
    }

    /// Waits until every permit is back: the accept task has stopped (it drops the permit
    /// it holds for its next connection) and every connection has ended.
    pub async fn all_closed(&self, deadline: Instant) -> bool {
        let deadline = tokio::time::Instant::from_std(deadline);
        let all = self.permits.acquire_many(self.max);
        tokio::time::timeout_at(deadline, all).await.is_ok()
    }
}

//! The service's metrics, shared by the supervisor and every worker, and `/metrics`.
//!
//! Theory of operation:
//!
//! * The supervisor creates one shared memory region (a memfd) before it starts any worker
//!   and hands it to each worker on fd [`METRICS_FD`], with the number of the worker's own
//!   *slot* in [`SLOT_VAR`]. Everything in the region is an `AtomicU64`.
//! * A worker counts into its own slot through its [`Recorder`]: on every response, the
//!   request by method and status and its duration in a histogram (three relaxed atomic
//!   additions, no lock, no system call). Gauges (requests in flight, open connections,
//!   pool threads) are sampled into the slot a few times a second, off the request path.
//! * Neither process keeps the region in a global: the supervisor holds it in its
//!   [`Slots`], a worker in its [`Recorder`], which the request path is handed.
//! * Whichever worker answers `/metrics` reads the whole region, so the answer covers
//!   every worker and the supervisor. Slot numbers are reused when a worker is replaced,
//!   which makes them a stable `worker` label.
//! * Counters must never go back: when the supervisor reaps a worker it folds the slot's
//!   counters into a *retired* total and clears the slot. A version number, odd while a
//!   fold is under way, lets a reader retry instead of counting a slot twice or not at all.
//! * The app's own metrics live in the same region (see [`app`]).
//!
//! In reading order: this file (the two processes' handles), [`render`] (the `/metrics`
//! text), [`region`] (the layout and its protocols), [`app`] (the app's metrics),
//! [`exposition`] (the text format, written).

mod app;
mod exposition;
mod region;
mod render;

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Method;

pub use app::Declaration;
pub use region::{Closed, Gauge, Gauges, Restart, SLOTS};

use crate::error::Error;
use region::{Counter, Region, Slot, BUCKETS, BUCKET_MICROS};

/// Where a worker finds the metrics region.
pub const METRICS_FD: RawFd = 5;
/// The environment variable giving a worker its slot number.
pub const SLOT_VAR: &str = "MICROSERVICE_RUST_METRICS_SLOT";

/// The supervisor's side: a new region on a memfd, whose fd the workers inherit, and the
/// slots it hands out.
pub fn create() -> Result<(OwnedFd, Slots), Error> {
    // SAFETY: memfd_create with a NUL-terminated name; the fd is owned from here on.
    let fd =
        unsafe { libc::memfd_create(c"microservice-rust-metrics".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::io(
            "cannot create the metrics memory",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the fd was created above and nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let size = std::mem::size_of::<Region>() as libc::off_t;
    // SAFETY: ftruncate on the fresh memfd; it fills it with zeros, a valid all-zero Region.
    if unsafe { libc::ftruncate(fd, size) } != 0 {
        return Err(Error::io(
            "cannot size the metrics memory",
            std::io::Error::last_os_error(),
        ));
    }
    let region = shared(fd)?;
    region
        .supervisor_pid
        .store(u64::from(std::process::id()), Ordering::Relaxed);
    let slots = Slots {
        region,
        owners: vec![None; SLOTS],
    };
    Ok((owned, slots))
}

/// The region on `fd`, shared with the other processes.
fn shared(fd: RawFd) -> Result<&'static Region, Error> {
    // SAFETY: `fd` is the memfd `create` sized to a Region (in the supervisor, or inherited
    // by a worker on METRICS_FD); a Region is made of atomics only.
    unsafe { region::map(libc::MAP_SHARED, fd) }
        .map_err(|e| Error::io(format!("cannot map the metrics memory (fd {fd})"), e))
}

/// A worker's handle on its slot: what the request path counts with.
#[derive(Clone, Copy)]
pub struct Recorder {
    region: &'static Region,
    slot: &'static Slot,
    /// The slot's number (the app's gauges are kept per slot).
    index: usize,
}

/// What a worker counts besides its answers.
pub enum Event {
    Timeout,
    LogDropped,
    /// Accepting paused because the worker held `max_connections` connections.
    AcceptPaused,
    /// `accept()` failed for a reason other than the connection itself (out of fds).
    AcceptError,
    /// A request answered 503 at once because `max_queue` requests were waiting.
    Shed,
    /// A pool thread stuck in the app past a deadline (and its grace) was written off.
    WrittenOff,
    /// A request answered 503 because its body did not fit in `max_body_memory_bytes`.
    BodyRefused,
    Closed(Closed),
}

impl Recorder {
    /// The worker's side: the region on [`METRICS_FD`] and the slot named in [`SLOT_VAR`].
    /// Without them (a worker started by hand) it counts into memory of its own.
    pub fn attach() -> Result<Recorder, Error> {
        let slot = std::env::var(SLOT_VAR)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|s| *s < SLOTS);
        let attached = slot.and_then(|slot| Some((shared(METRICS_FD).ok()?, slot)));
        let (region, index) = match attached {
            Some(attached) => attached,
            None => (
                region::private().map_err(|e| Error::io("cannot map memory for the metrics", e))?,
                0,
            ),
        };
        let slot = &region.slots[index];
        slot.pid
            .store(u64::from(std::process::id()), Ordering::Relaxed);
        Ok(Recorder {
            region,
            slot,
            index,
        })
    }

    /// Declares one of the app's metrics (see `app`): its number.
    pub fn app_declare(&self, declaration: &Declaration<'_>) -> Result<usize, String> {
        self.region.app.declare(declaration)
    }

    /// Updates one of the app's metrics; false when the update was dropped.
    pub fn app_update(&self, id: usize, op: u32, values: &[&[u8]], value: f64) -> bool {
        self.region.app.update(self.index, id, op, values, value)
    }

    /// One response went out: counted by method and status, its duration in the histogram.
    pub fn record(&self, method: &Method, status: u16, took: Duration) {
        let counters = &self.slot.counters;
        let status = usize::from(status.clamp(100, 999) - 100);
        counters.requests[method_index(method)][status].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKET_MICROS
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(BUCKETS.len());
        counters.duration[bucket].fetch_add(1, Ordering::Relaxed);
        counters
            .duration_micros
            .fetch_add(micros, Ordering::Relaxed);
    }

    /// Counts one event of this worker's.
    pub fn count(&self, event: Event) {
        let counters = &self.slot.counters;
        let counter = match event {
            Event::Timeout => Counter::Timeouts,
            Event::LogDropped => Counter::LogDropped,
            Event::AcceptPaused => Counter::AcceptPaused,
            Event::AcceptError => Counter::AcceptErrors,
            Event::Shed => Counter::Shed,
            Event::WrittenOff => Counter::WrittenOff,
            Event::BodyRefused => Counter::BodiesRefused,
            Event::Closed(reason) => {
                counters.closed[reason as usize].fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        counters.events[counter as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// This worker's gauges, for its sampler.
    pub fn gauges(&self) -> &'static Gauges {
        &self.slot.gauges
    }

    /// The `/metrics` text for the whole service.
    pub fn render(&self) -> String {
        render::render(self.region)
    }
}

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// The supervisor's side of the slots: which are free, and folding a gone worker's.
pub struct Slots {
    region: &'static Region,
    owners: Vec<Option<i32>>,
}

impl Slots {
    /// A free slot for a worker about to start.
    pub fn take(&mut self) -> Option<usize> {
        let free = self.owners.iter().position(Option::is_none)?;
        self.owners[free] = Some(0);
        Some(free)
    }

    pub fn started(&mut self, slot: usize, pid: i32) {
        self.owners[slot] = Some(pid);
        self.region.slots[slot]
            .pid
            .store(pid as u64, Ordering::Relaxed);
    }

    /// The worker in `slot` is gone (or never started): its counters join the retired
    /// totals and the slot is free again.
    pub fn release(&mut self, slot: usize) {
        self.owners[slot] = None;
        self.region.release(slot);
    }

    pub fn slot_of(&self, pid: i32) -> Option<usize> {
        self.owners.iter().position(|o| *o == Some(pid))
    }

    /// The requests the worker `pid` has answered so far (0 without a slot).
    pub fn requests_of(&self, pid: i32) -> u64 {
        self.slot_of(pid).map_or(0, |slot| {
            self.region.slots[slot]
                .counters
                .requests
                .iter()
                .flatten()
                .map(|n| n.load(Ordering::Relaxed))
                .sum()
        })
    }

    /// The supervisor started a worker in another's place.
    pub fn restarted(&self, why: Restart) {
        self.region.restarts[why as usize].fetch_add(1, Ordering::Relaxed);
    }
}

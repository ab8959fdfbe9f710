//! The shared memory region's layout, and the two protocols on it: a worker counts into its
//! own slot, and the supervisor folds a gone worker's slot into the retired totals while
//! readers take consistent snapshots (a version number, odd during a fold).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use super::app::Area;

/// Enough slots for the most workers a config allows, each with a replacement starting
/// beside it, and a few stopping ones still being waited for.
pub const SLOTS: usize = 2 * crate::config::MAX_WORKERS as usize + 8;

pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];
/// Statuses 100 to 999 (what an app may answer), one counter each.
pub const STATUSES: usize = 900;
/// Upper bounds of the request duration histogram, in seconds (then `+Inf`).
pub const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// The same bounds in microseconds, for the request path.
pub const BUCKET_MICROS: [u64; 16] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// A worker's own counter, one of [`Counters::events`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Timeouts,
    LogDropped,
    AcceptPaused,
    AcceptErrors,
    Shed,
    WrittenOff,
    BodiesRefused,
}

impl Counter {
    pub const ALL: [Counter; 7] = [
        Counter::Timeouts,
        Counter::LogDropped,
        Counter::AcceptPaused,
        Counter::AcceptErrors,
        Counter::Shed,
        Counter::WrittenOff,
        Counter::BodiesRefused,
    ];
}

/// Why the worker ended a connection itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// After an answer that left the stream in doubt: bad framing, a refused or unread
    /// body.
    Answered,
    /// No complete request head within `keep_alive_timeout_s`: an idle keep-alive
    /// connection, or a head that trickles in (slowloris).
    HeadTimeout,
    /// The request head grew past `max_header_bytes` (431).
    HeadTooLarge,
    /// The request body stopped arriving (408).
    BodyTimeout,
    /// A request hyper could not parse (400): a malformed line, a version other than 1.0
    /// or 1.1, bad framing headers.
    Malformed,
}

impl Closed {
    pub const ALL: [Closed; 5] = [
        Closed::Answered,
        Closed::HeadTimeout,
        Closed::HeadTooLarge,
        Closed::BodyTimeout,
        Closed::Malformed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Closed::Answered => "answered",
            Closed::HeadTimeout => "head_timeout",
            Closed::HeadTooLarge => "head_too_large",
            Closed::BodyTimeout => "body_timeout",
            Closed::Malformed => "malformed",
        }
    }
}

/// What a worker counts; folded into `Region::retired` when the worker is gone.
#[repr(C)]
pub struct Counters {
    pub requests: [[AtomicU64; STATUSES]; METHODS.len()],
    /// Per bucket, not cumulative (the last one is above every bound).
    pub duration: [AtomicU64; BUCKETS.len() + 1],
    pub duration_micros: AtomicU64,
    /// By [`Counter`].
    pub events: [AtomicU64; Counter::ALL.len()],
    /// By [`Closed`].
    pub closed: [AtomicU64; Closed::ALL.len()],
}

impl Counters {
    fn all(&self) -> impl Iterator<Item = &AtomicU64> {
        self.requests
            .iter()
            .flatten()
            .chain(self.duration.iter())
            .chain([&self.duration_micros])
            .chain(self.events.iter())
            .chain(self.closed.iter())
    }
}

/// A gauge a worker samples into its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gauge {
    InFlight,
    Queued,
    Connections,
    ThreadsBusy,
    Threads,
    ThreadsWrittenOff,
    BodyBytesHeld,
}

impl Gauge {
    pub const ALL: [Gauge; 7] = [
        Gauge::InFlight,
        Gauge::Queued,
        Gauge::Connections,
        Gauge::ThreadsBusy,
        Gauge::Threads,
        Gauge::ThreadsWrittenOff,
        Gauge::BodyBytesHeld,
    ];
}

/// What a worker samples; meaningless once it is gone, so never folded.
#[repr(C)]
pub struct Gauges([AtomicU64; Gauge::ALL.len()]);

impl Gauges {
    pub fn set(&self, gauge: Gauge, value: u64) {
        self.0[gauge as usize].store(value, Ordering::Relaxed);
    }

    /// Every gauge's value, by [`Gauge`].
    pub fn read(&self) -> [u64; Gauge::ALL.len()] {
        self.0.each_ref().map(|g| g.load(Ordering::Relaxed))
    }

    fn clear(&self) {
        for gauge in &self.0 {
            gauge.store(0, Ordering::Relaxed);
        }
    }
}

#[repr(C)]
pub struct Slot {
    /// The worker's PID; 0 while the slot is free.
    pub pid: AtomicU64,
    pub counters: Counters,
    pub gauges: Gauges,
}

/// Why the supervisor started a worker in another's place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    Watchdog,
    Crash,
    Reload,
    Signal,
    /// Past `max_requests` or `max_worker_memory_mb`.
    Recycle,
}

impl Restart {
    pub const ALL: [Restart; 5] = [
        Restart::Watchdog,
        Restart::Crash,
        Restart::Reload,
        Restart::Signal,
        Restart::Recycle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Restart::Watchdog => "watchdog",
            Restart::Crash => "crash",
            Restart::Reload => "reload",
            Restart::Signal => "signal",
            Restart::Recycle => "recycle",
        }
    }
}

#[repr(C)]
pub struct Region {
    /// Even when stable; odd while the supervisor folds a slot.
    version: AtomicU64,
    pub supervisor_pid: AtomicU64,
    /// By [`Restart`].
    pub restarts: [AtomicU64; Restart::ALL.len()],
    retired: Counters,
    pub slots: [Slot; SLOTS],
    /// The app's own metrics.
    pub app: Area<SLOTS>,
}

/// The counters summed over the retired total and every live slot, and the live slots, as
/// of one moment.
pub struct Snapshot {
    pub requests: Vec<u64>,
    pub duration: [u64; BUCKETS.len() + 1],
    pub duration_micros: u64,
    pub events: [u64; Counter::ALL.len()],
    pub closed: [u64; Closed::ALL.len()],
    pub live: Vec<Live>,
}

/// A live worker as `/metrics` shows it.
pub struct Live {
    pub slot: usize,
    pub pid: u64,
    pub gauges: [u64; Gauge::ALL.len()],
}

impl Snapshot {
    fn new() -> Snapshot {
        Snapshot {
            requests: vec![0; METHODS.len() * STATUSES],
            duration: [0; BUCKETS.len() + 1],
            duration_micros: 0,
            events: [0; Counter::ALL.len()],
            closed: [0; Closed::ALL.len()],
            live: Vec::new(),
        }
    }

    fn add(&mut self, counters: &Counters) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let sums = self
            .requests
            .iter_mut()
            .chain(self.duration.iter_mut())
            .chain([&mut self.duration_micros])
            .chain(self.events.iter_mut())
            .chain(self.closed.iter_mut());
        for (total, counter) in sums.zip(counters.all()) {
            *total += load(counter);
        }
    }
}

impl Region {
    /// The counters of the retired workers and the live ones, never counting a slot twice
    /// or not at all: a fold under way (an odd version), or one that happened while
    /// reading (another version), makes the reader read again.
    pub fn snapshot(&self) -> Snapshot {
        loop {
            let before = self.version.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            let mut snapshot = Snapshot::new();
            snapshot.add(&self.retired);
            for (index, slot) in self.slots.iter().enumerate() {
                let pid = slot.pid.load(Ordering::Relaxed);
                if pid == 0 {
                    continue;
                }
                snapshot.add(&slot.counters);
                snapshot.live.push(Live {
                    slot: index,
                    pid,
                    gauges: slot.gauges.read(),
                });
            }
            if self.version.load(Ordering::Acquire) == before {
                return snapshot;
            }
        }
    }

    /// The worker in `slot` is gone: its counters join the retired totals, its gauges and
    /// the app's gauges of it are cleared, and the slot is free.
    pub fn release(&self, slot: usize) {
        let from = &self.slots[slot];
        self.version.fetch_add(1, Ordering::AcqRel);
        for (counter, retired) in from.counters.all().zip(self.retired.all()) {
            retired.fetch_add(counter.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        }
        from.gauges.clear();
        self.app.release(slot);
        from.pid.store(0, Ordering::Relaxed);
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

/// A new mapping of zeroed memory the size of `T` (`MAP_SHARED` of a memfd, or private
/// anonymous memory), never unmapped.
///
/// # Safety
/// `T` must be made of atomics only (all-zero bytes are a valid `T`), and `fd`, when
/// shared, a memfd of at least `T`'s size whose bytes are a valid `T`.
pub unsafe fn map<T>(flags: libc::c_int, fd: RawFd) -> std::io::Result<&'static T> {
    let size = std::mem::size_of::<T>();
    // SAFETY: a new mapping of `size` bytes; the kernel picks the address.
    let address = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        )
    };
    if address == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: page-aligned memory of `T`'s size holding a valid `T` (the caller's
    // promise), mapped for the rest of the process's life.
    Ok(unsafe { &*(address as *const T) })
}

/// A region in memory of this process's own (a worker started by hand, the unit tests).
pub fn private<T>() -> std::io::Result<&'static T> {
    // SAFETY: the types mapped here (`Region`, `Area`) are made of atomics only.
    unsafe { map(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(snapshot: &Snapshot) -> u64 {
        snapshot.requests.iter().sum()
    }

    #[test]
    fn a_gone_workers_counts_stay_in_the_totals_and_its_slot_is_free() {
        let region: &Region = private().expect("memory");
        let slot = &region.slots[3];
        slot.pid.store(42, Ordering::Relaxed);
        slot.counters.requests[0][100].fetch_add(5, Ordering::Relaxed);
        slot.gauges.set(Gauge::InFlight, 2);
        let live = region.snapshot();
        assert_eq!(requests(&live), 5);
        assert_eq!(live.live.len(), 1);
        assert_eq!(live.live[0].gauges[Gauge::InFlight as usize], 2);
        region.release(3);
        let after = region.snapshot();
        assert_eq!(requests(&after), 5, "folded into the retired totals");
        assert!(after.live.is_empty());
        assert_eq!(slot.pid.load(Ordering::Relaxed), 0);
        assert_eq!(slot.gauges.read(), [0; Gauge::ALL.len()]);
    }

    /// Readers race a supervisor that folds the slots of 64 gone workers one by one: the
    /// counts only move from the slots to the retired totals, so every snapshot must see
    /// the same total, never a slot twice or not at all.
    #[test]
    fn snapshots_never_count_a_folded_slot_twice_or_lose_it() {
        let region: &'static Region = private().expect("memory");
        const WORKERS: usize = 64;
        const EACH: u64 = 1_000;
        for (index, slot) in region.slots.iter().take(WORKERS).enumerate() {
            slot.pid.store(index as u64 + 1, Ordering::Relaxed);
            slot.counters.requests[0][100].store(EACH, Ordering::Relaxed);
        }
        let folded = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for index in (0..WORKERS).rev() {
                    region.release(index);
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                folded.store(true, Ordering::Release);
            });
            for _ in 0..2 {
                scope.spawn(|| {
                    let mut snapshots = 0;
                    while !folded.load(Ordering::Acquire) || snapshots == 0 {
                        let total = requests(&region.snapshot());
                        assert_eq!(total, WORKERS as u64 * EACH, "snapshot {snapshots}");
                        snapshots += 1;
                    }
                });
            }
        });
        assert_eq!(requests(&region.snapshot()), WORKERS as u64 * EACH);
    }
}

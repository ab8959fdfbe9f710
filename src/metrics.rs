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

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Method;

use crate::app_metrics::{Area, Declaration};
use crate::error::Error;

/// Where a worker finds the metrics region.
pub const METRICS_FD: RawFd = 5;
/// The environment variable giving a worker its slot number.
pub const SLOT_VAR: &str = "MICROSERVICE_RUST_METRICS_SLOT";

/// Enough slots for the most workers a config allows, each with a replacement starting
/// beside it, and a few stopping ones still being waited for.
pub const SLOTS: usize = 2 * crate::config::MAX_WORKERS as usize + 8;

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];
/// Statuses 100 to 999 (what an app may answer), one counter each.
const STATUSES: usize = 900;
/// Upper bounds of the request duration histogram, in seconds (then `+Inf`).
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// The same bounds in microseconds, for the request path.
const BUCKET_MICROS: [u64; 16] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// What a worker counts; folded into `Region::retired` when the worker is gone.
#[repr(C)]
pub struct Counters {
    requests: [[AtomicU64; STATUSES]; METHODS.len()],
    /// Per bucket, not cumulative (the last one is above every bound).
    duration: [AtomicU64; BUCKETS.len() + 1],
    duration_micros: AtomicU64,
    timeouts: AtomicU64,
    log_dropped: AtomicU64,
    accept_paused: AtomicU64,
    accept_errors: AtomicU64,
    shed: AtomicU64,
    written_off: AtomicU64,
    closed: [AtomicU64; Closed::ALL.len()],
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
    const ALL: [Closed; 5] = [
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

/// What a worker samples; meaningless once it is gone, so never folded.
#[repr(C)]
pub struct Gauges {
    pub in_flight: AtomicU64,
    pub queued: AtomicU64,
    pub connections: AtomicU64,
    pub threads_busy: AtomicU64,
    pub threads: AtomicU64,
    pub threads_written_off: AtomicU64,
}

#[repr(C)]
pub struct Slot {
    /// The worker's PID; 0 while the slot is free.
    pid: AtomicU64,
    counters: Counters,
    gauges: Gauges,
}

/// Why the supervisor started a worker in another's place; the order of [`RESTARTS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    Watchdog,
    Crash,
    Reload,
    Signal,
    /// Past `max_requests` or `max_worker_memory_mb`.
    Recycle,
}

const RESTARTS: [&str; 5] = ["watchdog", "crash", "reload", "signal", "recycle"];

#[repr(C)]
pub struct Region {
    /// Even when stable; odd while the supervisor folds a slot.
    version: AtomicU64,
    supervisor_pid: AtomicU64,
    restarts: [AtomicU64; RESTARTS.len()],
    retired: Counters,
    slots: [Slot; SLOTS],
    /// The app's own metrics.
    app: Area,
}

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
    // SAFETY: a fresh memfd; ftruncate fills it with zeros, a valid all-zero Region.
    if unsafe { libc::ftruncate(fd, size) } != 0 {
        return Err(Error::io(
            "cannot size the metrics memory",
            std::io::Error::last_os_error(),
        ));
    }
    let region = map(fd)?;
    region
        .supervisor_pid
        .store(std::process::id() as u64, Ordering::Relaxed);
    let slots = Slots {
        region,
        owners: vec![None; SLOTS],
    };
    Ok((owned, slots))
}

/// A worker's handle on its slot: what the request path counts with.
#[derive(Clone, Copy)]
pub struct Recorder {
    region: &'static Region,
    slot: &'static Slot,
    /// The slot's number (the app's gauges are kept per slot).
    index: usize,
}

impl Recorder {
    /// The worker's side: the region on [`METRICS_FD`] and the slot named in [`SLOT_VAR`].
    /// Without them (a worker started by hand) it counts into memory of its own.
    pub fn attach() -> Result<Recorder, Error> {
        let slot = std::env::var(SLOT_VAR)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|s| *s < SLOTS);
        let shared = slot.and_then(|slot| Some((map(METRICS_FD).ok()?, slot)));
        let (region, index) = match shared {
            Some(shared) => shared,
            None => (private()?, 0),
        };
        let slot = &region.slots[index];
        slot.pid.store(std::process::id() as u64, Ordering::Relaxed);
        Ok(Recorder {
            region,
            slot,
            index,
        })
    }

    /// Declares one of the app's metrics (see `app_metrics`): its number.
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
        let status = (status.clamp(100, 999) - 100) as usize;
        counters.requests[method_index(method)][status].fetch_add(1, Ordering::Relaxed);
        let micros = took.as_micros().min(u64::MAX as u128) as u64;
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
            Event::Timeout => &counters.timeouts,
            Event::LogDropped => &counters.log_dropped,
            Event::AcceptPaused => &counters.accept_paused,
            Event::AcceptError => &counters.accept_errors,
            Event::Shed => &counters.shed,
            Event::WrittenOff => &counters.written_off,
            Event::Closed(reason) => &counters.closed[reason as usize],
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// This worker's gauges, for its sampler.
    pub fn gauges(&self) -> &'static Gauges {
        &self.slot.gauges
    }

    /// The `/metrics` text for the whole service.
    pub fn render(&self) -> String {
        render(self.region)
    }
}

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
    Closed(Closed),
}

fn map(fd: RawFd) -> Result<&'static Region, Error> {
    mmap_region(libc::MAP_SHARED, fd)
        .map_err(|e| Error::io(format!("cannot map the metrics memory (fd {fd})"), e))
}

/// A worker started without the shared region counts into memory of its own.
fn private() -> Result<&'static Region, Error> {
    mmap_region(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1)
        .map_err(|e| Error::io("cannot map memory for the metrics", e))
}

fn mmap_region(flags: libc::c_int, fd: RawFd) -> std::io::Result<&'static Region> {
    let size = std::mem::size_of::<Region>();
    // SAFETY: a mapping of exactly the Region's size (a memfd sized by `create`, or
    // anonymous memory), never unmapped; Region is made of atomics only, for which the
    // all-zero bytes of a fresh mapping are valid.
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
    // SAFETY: see above; the mapping lives as long as the process.
    Ok(unsafe { &*(address as *const Region) })
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
        let region = self.region;
        let from = &region.slots[slot];
        region.version.fetch_add(1, Ordering::AcqRel);
        fold(&from.counters, &region.retired);
        for gauge in from.gauges.all() {
            gauge.store(0, Ordering::Relaxed);
        }
        region.app.release(slot);
        from.pid.store(0, Ordering::Relaxed);
        region.version.fetch_add(1, Ordering::AcqRel);
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

fn fold(from: &Counters, into: &Counters) {
    for (a, b) in from.all().zip(into.all()) {
        b.fetch_add(a.swap(0, Ordering::Relaxed), Ordering::Relaxed);
    }
}

impl Counters {
    fn all(&self) -> impl Iterator<Item = &AtomicU64> {
        self.requests
            .iter()
            .flatten()
            .chain(self.duration.iter())
            .chain([
                &self.duration_micros,
                &self.timeouts,
                &self.log_dropped,
                &self.accept_paused,
                &self.accept_errors,
                &self.shed,
                &self.written_off,
            ])
            .chain(self.closed.iter())
    }
}

impl Gauges {
    fn all(&self) -> [&AtomicU64; 6] {
        [
            &self.in_flight,
            &self.queued,
            &self.connections,
            &self.threads_busy,
            &self.threads,
            &self.threads_written_off,
        ]
    }
}

/// A copy of the counters, summed over the retired total and every live slot.
struct Totals {
    requests: Vec<u64>,
    duration: [u64; BUCKETS.len() + 1],
    duration_micros: u64,
    timeouts: u64,
    log_dropped: u64,
    accept_paused: u64,
    accept_errors: u64,
    shed: u64,
    written_off: u64,
    closed: [u64; Closed::ALL.len()],
}

impl Totals {
    fn new() -> Totals {
        Totals {
            requests: vec![0; METHODS.len() * STATUSES],
            duration: [0; BUCKETS.len() + 1],
            duration_micros: 0,
            timeouts: 0,
            log_dropped: 0,
            accept_paused: 0,
            accept_errors: 0,
            shed: 0,
            written_off: 0,
            closed: [0; Closed::ALL.len()],
        }
    }

    fn add(&mut self, counters: &Counters) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (total, counter) in self
            .requests
            .iter_mut()
            .zip(counters.requests.iter().flatten())
        {
            *total += load(counter);
        }
        for (total, counter) in self.duration.iter_mut().zip(&counters.duration) {
            *total += load(counter);
        }
        self.duration_micros += load(&counters.duration_micros);
        self.timeouts += load(&counters.timeouts);
        self.log_dropped += load(&counters.log_dropped);
        self.accept_paused += load(&counters.accept_paused);
        self.accept_errors += load(&counters.accept_errors);
        self.shed += load(&counters.shed);
        self.written_off += load(&counters.written_off);
        for (total, counter) in self.closed.iter_mut().zip(&counters.closed) {
            *total += load(counter);
        }
    }
}

/// A live worker as `/metrics` shows it.
struct Live {
    slot: usize,
    pid: u64,
    gauges: [u64; 6],
}

/// The `/metrics` text (Prometheus text exposition format 0.0.4).
fn render(region: &Region) -> String {
    let (totals, live) = loop {
        let before = region.version.load(Ordering::Acquire);
        if before % 2 == 1 {
            std::thread::yield_now();
            continue;
        }
        let mut totals = Totals::new();
        totals.add(&region.retired);
        let mut live = Vec::new();
        for (index, slot) in region.slots.iter().enumerate() {
            let pid = slot.pid.load(Ordering::Relaxed);
            if pid == 0 {
                continue;
            }
            totals.add(&slot.counters);
            live.push(Live {
                slot: index,
                pid,
                gauges: slot.gauges.all().map(|g| g.load(Ordering::Relaxed)),
            });
        }
        if region.version.load(Ordering::Acquire) == before {
            break (totals, live);
        }
    };
    let mut out = Text(String::with_capacity(8192));
    write_requests(&mut out, &totals);
    write_gauges(&mut out, &live);
    write_events(&mut out, region, &totals);
    write_processes(&mut out, region, &live);
    let slots: Vec<usize> = live.iter().map(|w| w.slot).collect();
    region.app.render(&mut out.0, &slots);
    out.0
}

struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.0
            .push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        match labels.is_empty() {
            true => self.0.push_str(&format!("{name} {value}\n")),
            false => self.0.push_str(&format!("{name}{{{labels}}} {value}\n")),
        }
    }
}

fn write_requests(out: &mut Text, totals: &Totals) {
    let name = "microservice_http_requests_total";
    out.family(
        name,
        "counter",
        "HTTP responses sent, by request method and response status.",
    );
    for (method_index, method) in METHODS.iter().enumerate() {
        for status in 0..STATUSES {
            let value = totals.requests[method_index * STATUSES + status];
            if value > 0 {
                let labels = format!("method=\"{method}\",code=\"{}\"", status + 100);
                out.sample(name, &labels, value);
            }
        }
    }
    let name = "microservice_http_request_duration_seconds";
    out.family(
        name,
        "histogram",
        "Time from reading a request to sending its response (queue wait included).",
    );
    let mut cumulative = 0;
    for (bound, count) in BUCKETS.iter().zip(&totals.duration) {
        cumulative += count;
        out.sample(
            &format!("{name}_bucket"),
            &format!("le=\"{bound}\""),
            cumulative,
        );
    }
    cumulative += totals.duration[BUCKETS.len()];
    out.sample(&format!("{name}_bucket"), "le=\"+Inf\"", cumulative);
    out.sample(
        &format!("{name}_sum"),
        "",
        totals.duration_micros as f64 / 1e6,
    );
    out.sample(&format!("{name}_count"), "", cumulative);
}

fn write_gauges(out: &mut Text, live: &[Live]) {
    let families: [(&str, &str, usize); 6] = [
        (
            "microservice_http_requests_in_flight",
            "Requests read and not yet answered (queued or in the app).",
            0,
        ),
        (
            "microservice_http_requests_queued",
            "Requests read and waiting for a pool thread.",
            1,
        ),
        (
            "microservice_http_connections_open",
            "Client connections the worker holds open.",
            2,
        ),
        (
            "microservice_pool_threads_busy",
            "Pool threads inside the app.",
            3,
        ),
        (
            "microservice_pool_threads",
            "Pool threads serving (written-off threads not included).",
            4,
        ),
        (
            "microservice_pool_threads_written_off",
            "Threads stuck in the app past a request deadline, already replaced.",
            5,
        ),
    ];
    for (name, help, index) in families {
        out.family(name, "gauge", help);
        for worker in live {
            out.sample(
                name,
                &format!("worker=\"{}\"", worker.slot),
                worker.gauges[index],
            );
        }
    }
    let name = "microservice_pool_threads_idle";
    out.family(name, "gauge", "Pool threads waiting for a request.");
    for worker in live {
        let idle = worker.gauges[4].saturating_sub(worker.gauges[3]);
        out.sample(name, &format!("worker=\"{}\"", worker.slot), idle);
    }
}

fn write_events(out: &mut Text, region: &Region, totals: &Totals) {
    let counters = [
        (
            "microservice_http_request_timeouts_total",
            "Requests answered 504 at their deadline.",
            totals.timeouts,
        ),
        (
            "microservice_log_lines_dropped_total",
            "Log lines dropped because the output was not keeping up.",
            totals.log_dropped,
        ),
        (
            "microservice_http_accept_paused_total",
            "Times a worker held max_connections connections and stopped accepting.",
            totals.accept_paused,
        ),
        (
            "microservice_http_accept_errors_total",
            "accept() failures other than the connection's own (out of file descriptors).",
            totals.accept_errors,
        ),
        (
            "microservice_http_requests_shed_total",
            "Requests answered 503 at once because max_queue requests were waiting for a pool thread.",
            totals.shed,
        ),
        (
            "microservice_pool_threads_written_off_total",
            "Pool threads written off: still inside the app past a request's deadline (and the app's deadline grace), replaced.",
            totals.written_off,
        ),
    ];
    for (name, help, value) in counters {
        out.family(name, "counter", help);
        out.sample(name, "", value);
    }
    let name = "microservice_connections_closed_total";
    out.family(
        name,
        "counter",
        "Connections the worker ended itself, by reason.",
    );
    for (reason, value) in Closed::ALL.iter().zip(totals.closed) {
        out.sample(name, &format!("reason=\"{}\"", reason.name()), value);
    }
    let name = "microservice_worker_restarts_total";
    out.family(
        name,
        "counter",
        "Workers started in place of another, by reason.",
    );
    for (reason, counter) in RESTARTS.iter().zip(&region.restarts) {
        out.sample(
            name,
            &format!("reason=\"{reason}\""),
            counter.load(Ordering::Relaxed),
        );
    }
    let name = "microservice_workers";
    out.family(name, "gauge", "Worker processes alive.");
    out.sample(
        name,
        "",
        region
            .slots
            .iter()
            .filter(|s| s.pid.load(Ordering::Relaxed) != 0)
            .count(),
    );
}

fn write_processes(out: &mut Text, region: &Region, live: &[Live]) {
    let mut processes = vec![(
        "process=\"supervisor\"".to_string(),
        region.supervisor_pid.load(Ordering::Relaxed),
    )];
    processes.extend(
        live.iter()
            .map(|w| (format!("process=\"worker\",worker=\"{}\"", w.slot), w.pid)),
    );
    let page = page_size();
    let name = "process_resident_memory_bytes";
    out.family(name, "gauge", "Resident memory of each process.");
    for (labels, pid) in &processes {
        if let Some(pages) = resident_pages(*pid) {
            out.sample(name, labels, pages * page);
        }
    }
    let name = "process_open_fds";
    out.family(name, "gauge", "Open file descriptors of each process.");
    for (labels, pid) in &processes {
        if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            out.sample(name, labels, entries.count());
        }
    }
}

fn resident_pages(pid: u64) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    statm.split_whitespace().nth(1)?.parse().ok()
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

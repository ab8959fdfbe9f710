//! The `/metrics` text: the server's families from a snapshot of the region, then the
//! app's own.

use std::sync::atomic::Ordering;

use super::exposition::{label, Exposition};
use super::region::{
    Closed, Counter, Gauge, Live, Region, Restart, Snapshot, BUCKETS, METHODS, STATUSES,
};

/// The `/metrics` text for the whole service.
pub fn render(region: &Region) -> String {
    let snapshot = region.snapshot();
    let mut out = Exposition::new();
    requests(&mut out, &snapshot);
    gauges(&mut out, &snapshot.live);
    events(&mut out, region, &snapshot);
    processes(&mut out, region, &snapshot.live);
    let slots: Vec<usize> = snapshot.live.iter().map(|w| w.slot).collect();
    region.app.render(&mut out, &slots);
    out.finish()
}

fn requests(out: &mut Exposition, totals: &Snapshot) {
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
                let code = (status + 100).to_string();
                let labels = format!("{},{}", label("method", method), label("code", &code));
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
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0;
    for (bound, count) in BUCKETS.iter().zip(&totals.duration) {
        cumulative += count;
        out.sample(&bucket, &label("le", &bound.to_string()), cumulative);
    }
    cumulative += totals.duration[BUCKETS.len()];
    out.sample(&bucket, &label("le", "+Inf"), cumulative);
    let sum = totals.duration_micros as f64 / 1e6;
    out.sample(&format!("{name}_sum"), "", sum);
    out.sample(&format!("{name}_count"), "", cumulative);
}

/// A gauge's name and help.
fn describe(gauge: Gauge) -> (&'static str, &'static str) {
    match gauge {
        Gauge::InFlight => (
            "microservice_http_requests_in_flight",
            "Requests read and not yet answered (queued or in the app).",
        ),
        Gauge::Queued => (
            "microservice_http_requests_queued",
            "Requests read and waiting for a pool thread.",
        ),
        Gauge::Connections => (
            "microservice_http_connections_open",
            "Client connections the worker holds open.",
        ),
        Gauge::ThreadsBusy => (
            "microservice_pool_threads_busy",
            "Pool threads inside the app.",
        ),
        Gauge::Threads => (
            "microservice_pool_threads",
            "Pool threads serving (written-off threads not included).",
        ),
        Gauge::ThreadsWrittenOff => (
            "microservice_pool_threads_written_off",
            "Threads stuck in the app past a request deadline, already replaced.",
        ),
        Gauge::BodyBytesHeld => (
            "microservice_http_request_body_bytes_held",
            "Bytes of request bodies the worker holds (read or reserved), of \
             max_body_memory_bytes.",
        ),
    }
}

fn gauges(out: &mut Exposition, live: &[Live]) {
    let worker = |w: &Live| label("worker", &w.slot.to_string());
    for gauge in Gauge::ALL {
        let (name, help) = describe(gauge);
        out.family(name, "gauge", help);
        for w in live {
            out.sample(name, &worker(w), w.gauges[gauge as usize]);
        }
    }
    let name = "microservice_pool_threads_idle";
    out.family(name, "gauge", "Pool threads waiting for a request.");
    for w in live {
        let [threads, busy] = [Gauge::Threads, Gauge::ThreadsBusy].map(|g| w.gauges[g as usize]);
        out.sample(name, &worker(w), threads.saturating_sub(busy));
    }
}

/// A worker counter's name and help.
fn describe_counter(counter: Counter) -> (&'static str, &'static str) {
    match counter {
        Counter::Timeouts => (
            "microservice_http_request_timeouts_total",
            "Requests answered 504 at their deadline.",
        ),
        Counter::LogDropped => (
            "microservice_log_lines_dropped_total",
            "Log lines dropped because the output was not keeping up.",
        ),
        Counter::AcceptPaused => (
            "microservice_http_accept_paused_total",
            "Times a worker held max_connections connections and stopped accepting.",
        ),
        Counter::AcceptErrors => (
            "microservice_http_accept_errors_total",
            "accept() failures other than the connection's own (out of file descriptors).",
        ),
        Counter::Shed => (
            "microservice_http_requests_shed_total",
            "Requests answered 503 at once because max_queue requests were waiting for a pool \
             thread.",
        ),
        Counter::WrittenOff => (
            "microservice_pool_threads_written_off_total",
            "Pool threads written off: still inside the app past a request's deadline (and the \
             app's deadline grace), replaced.",
        ),
        Counter::BodiesRefused => (
            "microservice_http_request_bodies_refused_total",
            "Requests answered 503 because their body would have taken the worker's request \
             bodies past max_body_memory_bytes.",
        ),
    }
}

fn events(out: &mut Exposition, region: &Region, totals: &Snapshot) {
    for counter in Counter::ALL {
        let (name, help) = describe_counter(counter);
        out.family(name, "counter", help);
        out.sample(name, "", totals.events[counter as usize]);
    }
    let name = "microservice_connections_closed_total";
    out.family(
        name,
        "counter",
        "Connections the worker ended itself, by reason.",
    );
    for reason in Closed::ALL {
        let value = totals.closed[reason as usize];
        out.sample(name, &label("reason", reason.name()), value);
    }
    let name = "microservice_worker_restarts_total";
    out.family(
        name,
        "counter",
        "Workers started in place of another, by reason.",
    );
    for reason in Restart::ALL {
        let value = region.restarts[reason as usize].load(Ordering::Relaxed);
        out.sample(name, &label("reason", reason.name()), value);
    }
    let name = "microservice_workers";
    out.family(name, "gauge", "Worker processes alive.");
    out.sample(name, "", totals.live.len());
}

fn processes(out: &mut Exposition, region: &Region, live: &[Live]) {
    let mut processes = vec![(
        label("process", "supervisor"),
        region.supervisor_pid.load(Ordering::Relaxed),
    )];
    processes.extend(live.iter().map(|w| {
        let labels = format!(
            "{},{}",
            label("process", "worker"),
            label("worker", &w.slot.to_string())
        );
        (labels, w.pid)
    }));
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
    u64::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
}

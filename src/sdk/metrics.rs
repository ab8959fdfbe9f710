//! The app's own metrics: counters, gauges and histograms that `/metrics` shows beside the
//! server's, summed over every worker.
//!
//! ```
//! use microservice_rust::metrics;
//!
//! // In `App::new`: a bad name is an error naming it, which stops the worker.
//! let rums = metrics::counter("rums_drunk_total", "Rums drunk, by user.", &["user"])?;
//! // In `handle`, from any thread, without a lock:
//! rums.inc_by(&["ann"], 2);
//! # Ok::<(), String>(())
//! ```
//!
//! Every worker runs the app's `new`, so every worker declares the same metrics; the
//! worker keeps one copy of each in the memory it shares with the supervisor and the other
//! workers. Counters and histograms are counted there directly: they never go back, also
//! when a worker is replaced. A gauge is each worker's own and `/metrics` shows the sum over
//! the live workers. Each metric holds at most [`MAX_SERIES`] label sets; an update with a
//! new label set past that is dropped and counted in
//! `microservice_app_series_dropped_total{metric="…"}`. In a process without the worker
//! (an app's unit tests) the names are checked and the updates go nowhere.

use crate::abi::{self, MsrBytes};
use crate::log::host;

/// Label sets one metric holds at most.
pub const MAX_SERIES: usize = 1000;
/// Labels one metric has at most.
pub const MAX_LABELS: usize = 4;
/// Bucket bounds one histogram has at most (`+Inf` comes on top).
pub const MAX_BOUNDS: usize = 16;
/// The longest metric, label or help text, in bytes.
pub const MAX_NAME: usize = 100;
pub const MAX_HELP: usize = 200;
/// The bytes of one label set's values together, at most.
pub const MAX_VALUES: usize = 240;

/// Why a metric's declaration is refused, naming the metric; `None` when it is fine.
/// Prometheus's rules: a name is `[a-zA-Z_:][a-zA-Z0-9_:]*`, a label `[a-zA-Z_][a-zA-Z0-9_]*`
/// and not `__`-prefixed; and here: `microservice_` and `process_` belong to the server,
/// a histogram has no label `le`, its bounds rise.
pub fn refusal(
    kind: u32,
    name: &str,
    help: &str,
    labels: &[&str],
    bounds: &[f64],
) -> Option<String> {
    let metric = format!("metric `{name}`");
    let is_name = |text: &str, colon: bool| {
        let mut chars = text.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    };
    if !is_name(name, true) || name.len() > MAX_NAME {
        return Some(format!(
            "{metric}: a metric name is 1 to {MAX_NAME} of [a-zA-Z0-9_:], not starting with a digit"
        ));
    }
    if name.starts_with("microservice_") || name.starts_with("process_") {
        return Some(format!(
            "{metric}: names starting with `microservice_` or `process_` are the server's"
        ));
    }
    if !matches!(
        kind,
        abi::METRIC_COUNTER | abi::METRIC_GAUGE | abi::METRIC_HISTOGRAM
    ) {
        return Some(format!("{metric}: unknown kind {kind}"));
    }
    if help.len() > MAX_HELP {
        return Some(format!("{metric}: the help text is over {MAX_HELP} bytes"));
    }
    if labels.len() > MAX_LABELS {
        return Some(format!("{metric}: more than {MAX_LABELS} labels"));
    }
    for (i, label) in labels.iter().enumerate() {
        if !is_name(label, false) || label.starts_with("__") || label.len() > MAX_NAME {
            return Some(format!(
                "{metric}: label `{label}`: a label name is 1 to {MAX_NAME} of [a-zA-Z0-9_], \
                 not starting with a digit or `__`"
            ));
        }
        if labels[..i].contains(label) {
            return Some(format!("{metric}: label `{label}` twice"));
        }
        if kind == abi::METRIC_HISTOGRAM && *label == "le" {
            return Some(format!("{metric}: a histogram cannot have a label `le`"));
        }
    }
    if kind == abi::METRIC_HISTOGRAM {
        if bounds.is_empty() || bounds.len() > MAX_BOUNDS {
            return Some(format!(
                "{metric}: a histogram has 1 to {MAX_BOUNDS} bucket bounds"
            ));
        }
        if bounds.iter().any(|b| !b.is_finite()) || bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Some(format!(
                "{metric}: bucket bounds must be finite and rise: {bounds:?}"
            ));
        }
    }
    None
}

/// A metric the worker knows, by its number.
#[derive(Clone, Copy, Debug)]
struct Metric {
    /// The worker's number for it; -1 without a worker.
    id: i64,
    labels: usize,
}

/// A count that only goes up. Name it `…_total`.
#[derive(Clone, Copy, Debug)]
pub struct Counter(Metric);

/// A value that goes up and down; `/metrics` shows the sum over the live workers.
#[derive(Clone, Copy, Debug)]
pub struct Gauge(Metric);

/// Observations counted into buckets, with their sum and count.
#[derive(Clone, Copy, Debug)]
pub struct Histogram(Metric);

/// Declares a counter with these label names.
pub fn counter(name: &str, help: &str, labels: &[&str]) -> Result<Counter, String> {
    declare(abi::METRIC_COUNTER, name, help, labels, &[]).map(Counter)
}

/// Declares a gauge with these label names.
pub fn gauge(name: &str, help: &str, labels: &[&str]) -> Result<Gauge, String> {
    declare(abi::METRIC_GAUGE, name, help, labels, &[]).map(Gauge)
}

/// Declares a histogram with these label names and bucket upper bounds (rising).
pub fn histogram(
    name: &str,
    help: &str,
    labels: &[&str],
    bounds: &[f64],
) -> Result<Histogram, String> {
    declare(abi::METRIC_HISTOGRAM, name, help, labels, bounds).map(Histogram)
}

fn declare(
    kind: u32,
    name: &str,
    help: &str,
    labels: &[&str],
    bounds: &[f64],
) -> Result<Metric, String> {
    if let Some(refusal) = refusal(kind, name, help, labels, bounds) {
        return Err(refusal);
    }
    let offers =
        |h: &&abi::MsrHostApi| h.offers(std::mem::offset_of!(abi::MsrHostApi, metric_update));
    let Some(host) = host().filter(offers) else {
        return Ok(Metric {
            id: -1,
            labels: labels.len(),
        });
    };
    let names: Vec<MsrBytes> = labels
        .iter()
        .map(|l| MsrBytes::from_slice(l.as_bytes()))
        .collect();
    let mut error = [0u8; 512];
    // SAFETY: every pointer is valid for the call; the worker copies what it keeps.
    let id = unsafe {
        (host.metric_declare)(
            host.host,
            kind,
            MsrBytes::from_slice(name.as_bytes()),
            MsrBytes::from_slice(help.as_bytes()),
            names.as_ptr(),
            names.len(),
            bounds.as_ptr(),
            bounds.len(),
            error.as_mut_ptr(),
            error.len(),
        )
    };
    if id < 0 {
        let end = error.iter().position(|&b| b == 0).unwrap_or(error.len());
        return Err(String::from_utf8_lossy(&error[..end]).into_owned());
    }
    Ok(Metric {
        id,
        labels: labels.len(),
    })
}

impl Metric {
    /// Sends one update; false when it was dropped (see [`Counter::inc_by`]).
    fn update(&self, op: u32, values: &[&str], value: f64) -> bool {
        if values.len() != self.labels {
            return false;
        }
        // Without a worker (id -1) the update goes nowhere.
        let Some(host) = host().filter(|_| self.id >= 0) else {
            return true;
        };
        let mut buffer = [MsrBytes::EMPTY; MAX_LABELS];
        for (slot, value) in buffer.iter_mut().zip(values) {
            *slot = MsrBytes::from_slice(value.as_bytes());
        }
        // SAFETY: `buffer` holds `values.len()` valid runs for the call.
        let done = unsafe {
            (host.metric_update)(host.host, self.id, op, buffer.as_ptr(), values.len(), value)
        };
        done == 0
    }
}

impl Counter {
    /// Adds 1 to the count of this label set (values in the declared labels' order).
    pub fn inc(&self, values: &[&str]) -> bool {
        self.inc_by(values, 1)
    }

    /// Adds `n`. False when the update was dropped: the wrong number of values, values over
    /// 240 bytes together, or a new label set past [`MAX_SERIES`].
    pub fn inc_by(&self, values: &[&str], n: u64) -> bool {
        self.0.update(abi::METRIC_ADD, values, n as f64)
    }
}

impl Gauge {
    /// Sets this worker's value of this label set.
    pub fn set(&self, values: &[&str], value: f64) -> bool {
        self.0.update(abi::METRIC_SET, values, value)
    }

    /// Adds `delta` (negative to lower it) to this worker's value.
    pub fn add(&self, values: &[&str], delta: f64) -> bool {
        self.0.update(abi::METRIC_ADD, values, delta)
    }
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&self, values: &[&str], value: f64) -> bool {
        self.0.update(abi::METRIC_OBSERVE, values, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_rules_and_refusals_name_the_metric() {
        let ok = |name, labels: &[&str]| refusal(abi::METRIC_COUNTER, name, "", labels, &[]);
        assert_eq!(ok("rums_drunk_total", &["user"]), None);
        assert_eq!(ok("a:b_c9", &[]), None);
        for bad in [
            "9lives",
            "rums-drunk",
            "",
            "rüm",
            "microservice_x",
            "process_y",
        ] {
            let refusal = ok(bad, &[]).expect("refused");
            assert!(refusal.starts_with(&format!("metric `{bad}`")), "{refusal}");
        }
        for bad in ["__x", "a:b", "9", "a-b"] {
            let refusal = ok("m", &[bad]).expect("refused");
            assert!(refusal.contains(&format!("label `{bad}`")), "{refusal}");
        }
        assert!(ok("m", &["a", "a"]).is_some());
        assert!(ok("m", &["a", "b", "c", "d", "e"]).is_some());
        let histogram = |labels: &[&str], bounds: &[f64]| {
            refusal(abi::METRIC_HISTOGRAM, "h", "", labels, bounds)
        };
        assert_eq!(histogram(&["x"], &[0.1, 1.0]), None);
        assert!(histogram(&["le"], &[1.0]).is_some());
        assert!(histogram(&[], &[]).is_some());
        assert!(histogram(&[], &[1.0, 1.0]).is_some());
        assert!(histogram(&[], &[f64::NAN]).is_some());
    }

    #[test]
    fn without_a_worker_updates_go_nowhere_and_a_wrong_label_count_is_refused() {
        let counter = counter("c_total", "", &["a"]).expect("declared");
        assert!(counter.inc(&["x"]));
        assert!(!counter.inc(&[]));
    }
}

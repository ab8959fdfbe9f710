//! The app's own metrics in the shared metrics region: declared by every worker's copy of
//! the app, counted by all of them into one place, and shown by `/metrics`.
//!
//! Theory of operation:
//!
//! * A *family* is a declared metric: kind, name, help, label names, bucket bounds. A
//!   *series* is one label set of a family. Both live in fixed tables of the region; a free
//!   entry is claimed by a compare-and-swap of its state (free → writing), filled, then
//!   published (ready). Readers look only at ready entries.
//! * Every worker declares the same families at start: the first claims an entry, the
//!   others find it by name (and refuse a declaration that differs).
//! * A series is found by a hash of its family and label values, probing the table from
//!   there; a new label set claims the first free entry on its way, so two workers adding
//!   the same new set at once end on the same entry. At most `MAX_SERIES` per family.
//! * Counters and histograms are counted in the series itself by every worker: they never
//!   go back, also across restarts. A gauge is each worker's own (a cell per slot, cleared
//!   with the slot), summed over the live workers.
//! * Nothing takes a lock; an update is a few atomic operations and, for a new label set,
//!   one claim.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use microservice_rust::abi::{
    METRIC_ADD, METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM, METRIC_OBSERVE, METRIC_SET,
};
use microservice_rust::metrics::{
    MAX_BOUNDS, MAX_HELP, MAX_LABELS, MAX_NAME, MAX_SERIES, MAX_VALUES,
};

use super::exposition::{label, Exposition};

/// Families the region holds.
pub const FAMILIES: usize = 64;
/// Series the region holds, over all families.
pub const SERIES: usize = 4096;

const FREE: u64 = 0;
const WRITING: u64 = 1;
const READY: u64 = 2;
/// How long a reader waits for an entry another process is writing: a few spins, then
/// 1 ms sleeps up to this many (a writer preempted on a busy machine finishes within them;
/// one killed in the middle leaves the entry unusable, and the reader gives up).
const WRITING_WAITS: usize = 200;

/// Text written once into shared memory, before its entry is published.
#[repr(C)]
struct Stored<const N: usize> {
    len: AtomicU64,
    bytes: [AtomicU8; N],
}

impl<const N: usize> Stored<N> {
    fn store(&self, text: &[u8]) {
        let len = text.len().min(N);
        for (cell, byte) in self.bytes.iter().zip(&text[..len]) {
            cell.store(*byte, Ordering::Relaxed);
        }
        self.len.store(len as u64, Ordering::Relaxed);
    }

    fn load(&self) -> Vec<u8> {
        let len = (self.len.load(Ordering::Relaxed) as usize).min(N);
        self.bytes[..len]
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    fn is(&self, text: &[u8]) -> bool {
        self.len.load(Ordering::Relaxed) as usize == text.len()
            && self
                .bytes
                .iter()
                .zip(text)
                .all(|(cell, byte)| cell.load(Ordering::Relaxed) == *byte)
    }
}

/// Label names and values are stored as one text: each one's length (a byte), then it.
/// Written into `out`; the length used, or `None` when it does not fit.
fn join_into(out: &mut [u8], parts: &[&[u8]]) -> Option<usize> {
    let mut at = 0;
    for part in parts {
        let end = at + 1 + part.len();
        *out.get_mut(at)? = u8::try_from(part.len()).ok()?;
        out.get_mut(at + 1..end)?.copy_from_slice(part);
        at = end;
    }
    Some(at)
}

/// The room for a series' label values, joined.
const KEY_BYTES: usize = MAX_VALUES + MAX_LABELS;

fn split(mut text: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    while let Some((&len, rest)) = text.split_first() {
        let len = (len as usize).min(rest.len());
        parts.push(&rest[..len]);
        text = &rest[len..];
    }
    parts
}

#[repr(C)]
struct Family {
    state: AtomicU64,
    kind: AtomicU64,
    label_count: AtomicU64,
    bound_count: AtomicU64,
    bounds: [AtomicU64; MAX_BOUNDS],
    /// Series claimed (at most `MAX_SERIES`).
    series: AtomicU64,
    /// Updates dropped for a new label set past `MAX_SERIES` (or a full table).
    dropped: AtomicU64,
    name: Stored<MAX_NAME>,
    help: Stored<MAX_HELP>,
    labels: Stored<{ MAX_LABELS * (MAX_NAME + 1) }>,
}

/// Cells of a series: a counter's count in the first; a histogram's bucket counts (the
/// last above every bound), then its sum (f64 bits), then its count.
const CELLS: usize = MAX_BOUNDS + 3;

#[repr(C)]
struct Series {
    family: AtomicU64,
    values: Stored<KEY_BYTES>,
    cells: [AtomicU64; CELLS],
}

/// The app's metrics, for `SLOTS` worker slots.
#[repr(C)]
pub struct Area<const SLOTS: usize> {
    families: [Family; FAMILIES],
    /// Each series' state, apart from the series: `/metrics` scans these 32 KiB, and
    /// touches only the series in use (shared memory is allocated as it is touched).
    states: [AtomicU64; SERIES],
    series: [Series; SERIES],
    /// A gauge series' value (f64 bits) per worker slot.
    gauges: [[AtomicU64; SERIES]; SLOTS],
}

/// Waits while `state` is being written by another process; its state then.
fn settled(state: &AtomicU64) -> u64 {
    for attempt in 0..1000 + WRITING_WAITS {
        match state.load(Ordering::Acquire) {
            WRITING if attempt < 1000 => std::hint::spin_loop(),
            WRITING => std::thread::sleep(std::time::Duration::from_millis(1)),
            other => return other,
        }
    }
    WRITING
}

/// What a family is declared as.
pub struct Declaration<'a> {
    pub kind: u32,
    pub name: &'a [u8],
    pub help: &'a [u8],
    pub labels: Vec<&'a [u8]>,
    pub bounds: Vec<f64>,
}

impl<const SLOTS: usize> Area<SLOTS> {
    /// The family's number: found by name, or claimed. The caller has checked the names.
    pub fn declare(&self, declaration: &Declaration<'_>) -> Result<usize, String> {
        let name = String::from_utf8_lossy(declaration.name);
        let mut room = [0u8; MAX_LABELS * (MAX_NAME + 1)];
        let len = join_into(&mut room, &declaration.labels)
            .ok_or_else(|| format!("metric `{name}`: too many or too long label names"))?;
        let labels = &room[..len];
        for (index, family) in self.families.iter().enumerate() {
            let mut state = family.state.load(Ordering::Acquire);
            let claimed = state == FREE
                && match family.state.compare_exchange(
                    FREE,
                    WRITING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => true,
                    // Another worker claimed it first: look at what it writes.
                    Err(now) => {
                        state = now;
                        false
                    }
                };
            if claimed {
                family
                    .kind
                    .store(declaration.kind.into(), Ordering::Relaxed);
                family
                    .label_count
                    .store(declaration.labels.len() as u64, Ordering::Relaxed);
                for (cell, bound) in family.bounds.iter().zip(&declaration.bounds) {
                    cell.store(bound.to_bits(), Ordering::Relaxed);
                }
                family
                    .bound_count
                    .store(declaration.bounds.len() as u64, Ordering::Relaxed);
                family.name.store(declaration.name);
                family.help.store(declaration.help);
                family.labels.store(labels);
                family.state.store(READY, Ordering::Release);
                return Ok(index);
            }
            if state == WRITING {
                state = settled(&family.state);
            }
            if state == WRITING {
                // Passing over it could declare the same metric twice.
                return Err(format!(
                    "metric `{name}`: another worker's declaration did not finish"
                ));
            }
            if state != READY || !family.name.is(declaration.name) {
                continue;
            }
            let same = family.kind.load(Ordering::Relaxed) == u64::from(declaration.kind)
                && family.labels.is(labels)
                && family.bound_count.load(Ordering::Relaxed) == declaration.bounds.len() as u64
                && family
                    .bounds
                    .iter()
                    .zip(&declaration.bounds)
                    .all(|(cell, b)| cell.load(Ordering::Relaxed) == b.to_bits());
            return match same {
                true => Ok(index),
                false => Err(format!(
                    "metric `{name}` is declared already with another kind, labels or buckets"
                )),
            };
        }
        Err(format!(
            "metric `{name}`: the app declared more than {FAMILIES} metrics"
        ))
    }

    /// Applies one update from the worker in `slot`; false when it was dropped.
    pub fn update(&self, slot: usize, id: usize, op: u32, values: &[&[u8]], value: f64) -> bool {
        let Some(family) = self.families.get(id) else {
            return false;
        };
        if family.state.load(Ordering::Acquire) != READY {
            return false;
        }
        let kind = family.kind.load(Ordering::Relaxed) as u32;
        let allowed = match (kind, op) {
            (METRIC_COUNTER, METRIC_ADD) => value >= 0.0 && value.fract() == 0.0,
            (METRIC_GAUGE, METRIC_ADD | METRIC_SET) | (METRIC_HISTOGRAM, METRIC_OBSERVE) => {
                value.is_finite()
            }
            _ => false,
        };
        if !allowed || values.len() as u64 != family.label_count.load(Ordering::Relaxed) {
            return false;
        }
        let mut room = [0u8; KEY_BYTES];
        let Some(len) = join_into(&mut room, values) else {
            return false;
        };
        let Some(index) = self.series_of(family, id, &room[..len]) else {
            family.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let cells = &self.series[index].cells;
        match kind {
            METRIC_COUNTER => {
                // Saturating: a counter never wraps back to a small number.
                let add = value as u64;
                let _ = cells[0].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_add(add))
                });
            }
            METRIC_GAUGE => {
                let Some(cell) = self.gauges.get(slot).map(|row| &row[index]) else {
                    return false;
                };
                match op {
                    METRIC_SET => cell.store(value.to_bits(), Ordering::Relaxed),
                    _ => add_f64(cell, value),
                }
            }
            _ => {
                let bounds = family.bound_count.load(Ordering::Relaxed) as usize;
                let bucket = family.bounds[..bounds.min(MAX_BOUNDS)]
                    .iter()
                    .position(|b| value <= f64::from_bits(b.load(Ordering::Relaxed)))
                    .unwrap_or(bounds);
                cells[bucket].fetch_add(1, Ordering::Relaxed);
                add_f64(&cells[MAX_BOUNDS + 1], value);
                cells[MAX_BOUNDS + 2].fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    }

    /// The series of `family` (number `id`) for the label values `key`: found, or claimed
    /// when the family has room; `None` past `MAX_SERIES` or with the table full.
    fn series_of(&self, family: &Family, id: usize, key: &[u8]) -> Option<usize> {
        let start = hash(id, key) as usize % SERIES;
        for step in 0..SERIES {
            let index = (start + step) % SERIES;
            let (series, state_word) = (&self.series[index], &self.states[index]);
            let mut state = state_word.load(Ordering::Acquire);
            if state == FREE {
                if family.series.fetch_add(1, Ordering::AcqRel) >= MAX_SERIES as u64 {
                    family.series.fetch_sub(1, Ordering::AcqRel);
                    return None;
                }
                if state_word
                    .compare_exchange(FREE, WRITING, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    series.family.store(id as u64, Ordering::Relaxed);
                    series.values.store(key);
                    state_word.store(READY, Ordering::Release);
                    return Some(index);
                }
                // Another process claimed it first: look at what it wrote.
                family.series.fetch_sub(1, Ordering::AcqRel);
                state = state_word.load(Ordering::Acquire);
            }
            if state == WRITING {
                state = settled(state_word);
            }
            if state == WRITING {
                // Passing over it could make the same label set twice: drop the update.
                return None;
            }
            if state == READY
                && series.family.load(Ordering::Relaxed) == id as u64
                && series.values.is(key)
            {
                return Some(index);
            }
        }
        None
    }

    /// The worker in `slot` is gone: its gauges go with it.
    pub fn release(&self, slot: usize) {
        let Some(row) = self.gauges.get(slot) else {
            return;
        };
        for (index, state) in self.states.iter().enumerate() {
            if state.load(Ordering::Acquire) != READY {
                continue;
            }
            let family = self.series[index].family.load(Ordering::Relaxed) as usize;
            let gauge = self
                .families
                .get(family)
                .is_some_and(|f| f.kind.load(Ordering::Relaxed) == u64::from(METRIC_GAUGE));
            if gauge {
                row[index].store(0, Ordering::Relaxed);
            }
        }
    }

    /// The families and their series; `live` are the slots of the live workers (whose
    /// gauges are summed).
    pub fn render(&self, out: &mut Exposition, live: &[usize]) {
        let mut dropped = Vec::new();
        for (id, family) in self.families.iter().enumerate() {
            if family.state.load(Ordering::Acquire) != READY {
                continue;
            }
            let name = String::from_utf8_lossy(&family.name.load()).into_owned();
            let help = String::from_utf8_lossy(&family.help.load()).into_owned();
            let kind = family.kind.load(Ordering::Relaxed) as u32;
            let type_name = match kind {
                METRIC_COUNTER => "counter",
                METRIC_GAUGE => "gauge",
                _ => "histogram",
            };
            out.family(&name, type_name, &help);
            let label_names: Vec<String> = split(&family.labels.load())
                .into_iter()
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect();
            let bounds: Vec<f64> = family.bounds
                [..(family.bound_count.load(Ordering::Relaxed) as usize).min(MAX_BOUNDS)]
                .iter()
                .map(|b| f64::from_bits(b.load(Ordering::Relaxed)))
                .collect();
            for (index, series) in self.series.iter().enumerate() {
                if self.states[index].load(Ordering::Acquire) != READY
                    || series.family.load(Ordering::Relaxed) != id as u64
                {
                    continue;
                }
                let values = series.values.load();
                let labels: Vec<String> = label_names
                    .iter()
                    .zip(split(&values))
                    .map(|(name, value)| label(name, &String::from_utf8_lossy(value)))
                    .collect();
                let labels = labels.join(",");
                let cells = &series.cells;
                let load = |i: usize| cells[i].load(Ordering::Relaxed);
                match kind {
                    METRIC_COUNTER => out.sample(&name, &labels, load(0)),
                    METRIC_GAUGE => {
                        let sum: f64 = live
                            .iter()
                            .filter_map(|slot| self.gauges.get(*slot))
                            .map(|row| f64::from_bits(row[index].load(Ordering::Relaxed)))
                            .sum();
                        out.sample(&name, &labels, sum)
                    }
                    _ => {
                        let mut cumulative = 0;
                        let with = |le: &str| match labels.is_empty() {
                            true => format!("le=\"{le}\""),
                            false => format!("{labels},le=\"{le}\""),
                        };
                        let bucket = format!("{name}_bucket");
                        for (i, bound) in bounds.iter().enumerate() {
                            cumulative += load(i);
                            out.sample(&bucket, &with(&bound.to_string()), cumulative);
                        }
                        cumulative += load(bounds.len());
                        out.sample(&bucket, &with("+Inf"), cumulative);
                        let sum = f64::from_bits(load(MAX_BOUNDS + 1));
                        out.sample(&format!("{name}_sum"), &labels, sum);
                        out.sample(&format!("{name}_count"), &labels, load(MAX_BOUNDS + 2));
                    }
                }
            }
            dropped.push((name, family.dropped.load(Ordering::Relaxed)));
        }
        let dropped_name = "microservice_app_series_dropped_total";
        out.family(
            dropped_name,
            "counter",
            &format!(
                "Updates of an app metric dropped because it held {MAX_SERIES} label sets \
                 already."
            ),
        );
        for (name, count) in dropped {
            out.sample(dropped_name, &label("metric", &name), count);
        }
    }
}

/// Adds to an f64 kept as bits, without a lock.
fn add_f64(cell: &AtomicU64, delta: f64) {
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
        Some((f64::from_bits(bits) + delta).to_bits())
    });
}

/// FNV-1a over the family's number and the label values.
fn hash(id: usize, key: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in (id as u64).to_le_bytes().iter().chain(key) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::super::region::private;
    use super::*;

    type Test = Area<2>;

    fn counter(name: &str) -> Declaration<'_> {
        Declaration {
            kind: METRIC_COUNTER,
            name: name.as_bytes(),
            help: b"Things.",
            labels: vec![b"user"],
            bounds: Vec::new(),
        }
    }

    fn rendered(area: &Test, live: &[usize]) -> String {
        let mut out = Exposition::new();
        area.render(&mut out, live);
        out.finish()
    }

    #[test]
    fn a_family_declared_again_alike_is_the_same_and_otherwise_refused() {
        let area: &Test = private().expect("memory");
        let id = area.declare(&counter("things_total")).expect("declared");
        assert_eq!(area.declare(&counter("things_total")), Ok(id));
        let other = area.declare(&counter("others_total")).expect("declared");
        assert_ne!(other, id);
        let mut gauge = counter("things_total");
        gauge.kind = METRIC_GAUGE;
        let refused = area.declare(&gauge).expect_err("another kind");
        assert!(refused.contains("declared already"), "{refused}");
    }

    /// Workers declaring the same metric at the same moment all end on one family, and
    /// counting the same new label set at once, on one series.
    #[test]
    fn claims_race_to_one_family_and_one_series() {
        let area: &'static Test = private().expect("memory");
        let ids: Vec<usize> = std::thread::scope(|scope| {
            let declaring: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| area.declare(&counter("raced_total"))))
                .collect();
            declaring
                .into_iter()
                .map(|t| t.join().expect("no panic").expect("declared"))
                .collect()
        });
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        let id = ids[0];
        std::thread::scope(|scope| {
            for slot in 0..2 {
                scope.spawn(move || {
                    for _ in 0..1000 {
                        assert!(area.update(slot, id, METRIC_ADD, &[b"ann"], 1.0));
                    }
                });
            }
        });
        let text = rendered(area, &[0, 1]);
        assert_eq!(
            text.matches("raced_total{user=\"ann\"}").count(),
            1,
            "{text}"
        );
        assert!(text.contains("raced_total{user=\"ann\"} 2000\n"), "{text}");
    }

    #[test]
    fn past_the_most_label_sets_an_update_is_dropped_and_counted() {
        let area: &Test = private().expect("memory");
        let id = area.declare(&counter("users_total")).expect("declared");
        for user in 0..MAX_SERIES {
            let user = user.to_string();
            assert!(area.update(0, id, METRIC_ADD, &[user.as_bytes()], 1.0));
        }
        assert!(!area.update(0, id, METRIC_ADD, &[b"one more"], 1.0));
        assert!(
            area.update(0, id, METRIC_ADD, &[b"7"], 1.0),
            "a known set still counts"
        );
        let text = rendered(area, &[0]);
        assert!(
            text.contains("microservice_app_series_dropped_total{metric=\"users_total\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn a_gauge_is_each_workers_own_and_goes_with_it() {
        let area: &Test = private().expect("memory");
        let mut declaration = counter("busy");
        declaration.kind = METRIC_GAUGE;
        let id = area.declare(&declaration).expect("declared");
        assert!(area.update(0, id, METRIC_SET, &[b"a"], 2.5));
        assert!(area.update(1, id, METRIC_SET, &[b"a"], 1.0));
        assert!(rendered(area, &[0, 1]).contains("busy{user=\"a\"} 3.5\n"));
        area.release(1);
        assert!(rendered(area, &[0]).contains("busy{user=\"a\"} 2.5\n"));
    }
}

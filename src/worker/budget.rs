//! The worker-wide budget for request bodies held in memory (`max_body_memory_bytes`).
//!
//! A body is read in full on the I/O side before its request reaches the pool, so many
//! clients uploading at once would each hold up to `max_body_bytes` with nothing bounding
//! the sum. Each body takes its share of the budget before it is read: its whole
//! `Content-Length` at once (the buffer is reserved at that size), a chunked body chunk by
//! chunk as it arrives. A body that does not fit is refused at once with 503 and
//! `Retry-After: 1` rather than made to wait: a waiting upload would hold its connection
//! and spend its request's deadline while nothing of it is read, and chunked bodies holding
//! part of the budget could wait on each other for ever. The share goes back when the
//! request is dropped, after its answer (or, for a thread written off inside the app, when
//! the app lets go of it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The bytes of request bodies one worker may hold, and how many it holds.
pub struct Budget {
    limit: u64,
    held: AtomicU64,
}

impl Budget {
    pub fn new(limit: u64) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            held: AtomicU64::new(0),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The bytes held now, by every body being read or waiting for its answer.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Takes `bytes` of the budget; `None` when they would take it past its limit.
    pub fn take(self: &Arc<Budget>, bytes: u64) -> Option<Held> {
        let mut held = Held {
            budget: self.clone(),
            bytes: 0,
        };
        held.grow(bytes).then_some(held)
    }
}

/// A body's share of the [`Budget`], given back when dropped.
pub struct Held {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Held {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes `more` bytes; `false` (and nothing taken) when they would not fit.
    pub fn grow(&mut self, more: u64) -> bool {
        let budget = &self.budget;
        let taken = budget
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(more).filter(|&sum| sum <= budget.limit)
            });
        if taken.is_ok() {
            self.bytes += more;
        }
        taken.is_ok()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_takes_its_share_and_gives_it_back_when_dropped() {
        let budget = Budget::new(100);
        let first = budget.take(60).expect("60 of 100 fit");
        assert_eq!(budget.held(), 60);
        assert!(budget.take(41).is_none(), "60 + 41 is past 100");
        assert_eq!(budget.held(), 60, "a refusal takes nothing");
        let mut second = budget.take(0).expect("nothing always fits");
        assert!(second.grow(40));
        assert!(!second.grow(1), "100 held");
        assert_eq!((second.bytes(), budget.held()), (40, 100));
        drop(first);
        assert_eq!(budget.held(), 40);
        assert!(second.grow(60));
        drop(second);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn threads_racing_for_the_budget_never_take_it_past_its_limit() {
        let budget = Budget::new(1_000);
        let taken: Vec<Vec<Held>> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (0..500).filter_map(|_| budget.take(3)).collect()))
                .collect();
            racers
                .into_iter()
                .map(|r| r.join().expect("a racer"))
                .collect()
        });
        let count: usize = taken.iter().map(Vec::len).sum();
        assert_eq!(count, 333, "333 × 3 fit in 1,000, and no more");
        assert_eq!(budget.held(), 999);
        drop(taken);
        assert_eq!(budget.held(), 0);
    }
}

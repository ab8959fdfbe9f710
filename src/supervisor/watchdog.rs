//! The watchdog: each ready worker's `/healthz` is probed through the worker's own queue
//! every `watchdog.interval_s` (see `control`); a probe not answered within `timeout_s`, or
//! answered unhealthy, is a miss, and a worker that misses `failures` in a row is replaced
//! (its successor first, then it is abandoned).

use std::time::{Duration, Instant};

use super::{Life, Reason, Supervisor};
use crate::config::Settings;
use crate::control::Command;
use crate::say;

/// The watchdog's view of one ready worker.
#[derive(Debug)]
pub struct Probes {
    next_id: u64,
    /// The probe sent and not answered yet, and when it was sent.
    outstanding: Option<(u64, Instant)>,
    misses: u32,
    next_at: Instant,
    last_answer: Instant,
}

/// The watchdog's settings.
#[derive(Clone, Copy, Debug)]
pub struct Watch {
    pub interval: Duration,
    pub timeout: Duration,
    pub failures: u32,
}

impl Watch {
    pub fn of(settings: &Settings) -> Watch {
        Watch {
            interval: settings.watchdog.interval(),
            timeout: settings.watchdog.timeout(),
            failures: settings.watchdog.failures,
        }
    }
}

/// What the watchdog does about a worker now.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    Nothing,
    /// Send it probe `id`.
    Probe(u64),
    /// Replace it: it missed `failures` probes in a row.
    Replace,
}

impl Probes {
    /// The probes of a worker ready at `now`: the first one an interval later.
    pub fn new(now: Instant, watch: Watch) -> Probes {
        Probes {
            next_id: 1,
            outstanding: None,
            misses: 0,
            next_at: now + watch.interval,
            last_answer: now,
        }
    }

    /// What is due at `now` for worker `pid` (a probe unanswered past the timeout counts
    /// as missed).
    pub fn due(&mut self, now: Instant, watch: Watch, pid: i32) -> Due {
        if let Some((id, sent)) = self.outstanding {
            if now.duration_since(sent) < watch.timeout {
                return Due::Nothing;
            }
            self.outstanding = None;
            self.misses += 1;
            self.next_at = now;
            say!(
                "worker {pid}: /healthz probe {id} got no answer within {}s ({}/{})",
                watch.timeout.as_secs_f64(),
                self.misses,
                watch.failures
            );
        }
        if self.misses >= watch.failures {
            say!(
                "watchdog: worker {pid} missed {} probe(s) in a row, last answer {:.1}s ago \
                 (interval {}s, timeout {}s); replacing it",
                watch.failures,
                now.duration_since(self.last_answer).as_secs_f64(),
                watch.interval.as_secs_f64(),
                watch.timeout.as_secs_f64()
            );
            return Due::Replace;
        }
        if now < self.next_at {
            return Due::Nothing;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.outstanding = Some((id, now));
        Due::Probe(id)
    }

    /// Worker `pid` answered probe `id` at `now`: healthy, or not and why. A late answer to
    /// a probe already counted as missed is ignored.
    pub fn answered(
        &mut self,
        id: u64,
        health: Result<(), String>,
        now: Instant,
        watch: Watch,
        pid: i32,
    ) {
        if self.outstanding.map(|(sent, _)| sent) != Some(id) {
            return;
        }
        self.outstanding = None;
        self.last_answer = now;
        match health {
            Ok(()) => {
                self.misses = 0;
                self.next_at = now + watch.interval;
            }
            Err(reason) => {
                self.misses += 1;
                self.next_at = now + watch.timeout;
                say!(
                    "worker {pid}: /healthz probe {id} failed: {reason} ({}/{})",
                    self.misses,
                    watch.failures
                );
            }
        }
    }
}

impl Supervisor {
    /// Probes every ready worker that is not being replaced, and replaces those that
    /// missed too many probes.
    pub(super) fn watch_health(&mut self, now: Instant) {
        if !self.loaded.settings.watchdog_enabled() || !self.is_serving() {
            return;
        }
        let watch = Watch::of(&self.loaded.settings);
        let mut probe = Vec::new();
        let mut replace = Vec::new();
        for worker in &mut self.workers {
            let Life::Ready {
                probes,
                successor: None,
                ..
            } = &mut worker.life
            else {
                continue;
            };
            match probes.due(now, watch, worker.pid) {
                Due::Nothing => {}
                Due::Probe(id) => probe.push((worker.pid, id)),
                Due::Replace => replace.push(worker.pid),
            }
        }
        for (pid, id) in probe {
            self.tell(pid, Command::Probe(id));
        }
        for pid in replace {
            self.replace(pid, Reason::Watchdog);
        }
    }

    pub(super) fn probe_answered(&mut self, pid: i32, id: u64, health: Result<(), String>) {
        let watch = Watch::of(&self.loaded.settings);
        if let Some(Life::Ready { probes, .. }) = self.worker(pid).map(|w| &mut w.life) {
            probes.answered(id, health, Instant::now(), watch, pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WATCH: Watch = Watch {
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
        failures: 3,
    };

    #[test]
    fn a_worker_that_answers_is_probed_every_interval() {
        let start = Instant::now();
        let mut probes = Probes::new(start, WATCH);
        assert_eq!(probes.due(start, WATCH, 1), Due::Nothing);
        let first = start + WATCH.interval;
        assert_eq!(probes.due(first, WATCH, 1), Due::Probe(1));
        assert_eq!(probes.due(first, WATCH, 1), Due::Nothing, "one at a time");
        probes.answered(1, Ok(()), first, WATCH, 1);
        assert_eq!(probes.due(first + WATCH.interval, WATCH, 1), Due::Probe(2));
    }

    #[test]
    fn missed_or_failed_probes_in_a_row_replace_the_worker() {
        let start = Instant::now();
        let mut probes = Probes::new(start, WATCH);
        let mut now = start + WATCH.interval;
        assert_eq!(probes.due(now, WATCH, 1), Due::Probe(1));
        now += WATCH.timeout;
        // Missed: the next probe goes at once.
        assert_eq!(probes.due(now, WATCH, 1), Due::Probe(2));
        probes.answered(1, Ok(()), now, WATCH, 1);
        assert_eq!(probes.misses, 1, "a late answer changes nothing");
        probes.answered(2, Err("no database".into()), now, WATCH, 1);
        now += WATCH.timeout;
        assert_eq!(probes.due(now, WATCH, 1), Due::Probe(3));
        now += WATCH.timeout;
        assert_eq!(probes.due(now, WATCH, 1), Due::Replace);
    }

    #[test]
    fn a_healthy_answer_clears_the_misses() {
        let start = Instant::now();
        let mut probes = Probes::new(start, WATCH);
        let mut now = start + WATCH.interval;
        assert_eq!(probes.due(now, WATCH, 1), Due::Probe(1));
        probes.answered(1, Err("busy".into()), now, WATCH, 1);
        now += WATCH.timeout;
        assert_eq!(probes.due(now, WATCH, 1), Due::Probe(2));
        probes.answered(2, Ok(()), now, WATCH, 1);
        assert_eq!(probes.misses, 0);
    }
}

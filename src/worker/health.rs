//! The worker's health, as `/healthz` and the watchdog's probes ask it on a pool thread:
//! the app's own health hook, whether accepting connections works, and, when
//! `watchdog.request_threshold_s` is set, the mean duration of the latest requests.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::answer::{self, Answer};
use super::loader::LoadedApp;
use crate::say;

/// How long to wait before accepting again after `accept()` failed for lack of resources.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How long accepting must have failed without a success before `/healthz` fails.
const ACCEPT_FAILING_AFTER: Duration = Duration::from_secs(1);

/// What the health check looks at besides the app.
pub struct Health {
    pub accepting: Accepting,
    /// The request-duration watchdog, when it is on.
    durations: Option<Durations>,
}

/// The request-duration watchdog's settings: unhealthy while the mean of the latest
/// `count` app requests is over `threshold`.
#[derive(Clone, Copy, Debug)]
pub struct SlowRequests {
    pub threshold: Duration,
    pub count: usize,
}

struct Durations {
    slow: SlowRequests,
    recent: Mutex<VecDeque<Duration>>,
}

impl Health {
    pub fn new(slow: Option<SlowRequests>) -> Health {
        Health {
            accepting: Accepting::default(),
            durations: slow.map(|slow| Durations {
                slow,
                recent: Mutex::new(VecDeque::with_capacity(slow.count)),
            }),
        }
    }

    /// Keeps an app request's duration, when the request-duration watchdog is on.
    pub fn remember(&self, took: Duration) {
        if let Some(durations) = &self.durations {
            let mut recent = lock(&durations.recent);
            if recent.len() == durations.slow.count {
                recent.pop_front();
            }
            recent.push_back(took);
        }
    }

    /// The app's health, the worker's ability to accept connections, and the
    /// request-duration watchdog's verdict when it is on.
    pub fn check(&self, app: &LoadedApp) -> Result<(), String> {
        app.health()?;
        self.accepting.health()?;
        let Some(durations) = &self.durations else {
            return Ok(());
        };
        let SlowRequests { threshold, count } = durations.slow;
        let recent = lock(&durations.recent);
        if recent.len() < count {
            return Ok(());
        }
        let mean = recent.iter().sum::<Duration>() / count as u32;
        match mean > threshold {
            true => Err(format!(
                "the last {count} requests took {:.3} s on average, over the threshold of {:.3} s",
                mean.as_secs_f64(),
                threshold.as_secs_f64()
            )),
            false => Ok(()),
        }
    }
}

/// `/healthz`'s answer to a health check.
pub fn answer(health: Result<(), String>) -> Answer {
    match health {
        Ok(()) => answer::text(200, "ok\n"),
        Err(reason) => answer::text(503, &format!("unhealthy: {reason}\n")),
    }
}

/// Locks a mutex whose data stays valid whatever a panicking holder did.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether accepting works: failures without a success since, for the health check.
pub struct Accepting {
    epoch: Instant,
    /// Nanoseconds since `epoch` of the first failure of the present streak; 0: none.
    failing_since: AtomicU64,
    reason: Mutex<String>,
}

impl Default for Accepting {
    fn default() -> Accepting {
        Accepting {
            epoch: Instant::now(),
            failing_since: AtomicU64::new(0),
            reason: Mutex::new(String::new()),
        }
    }
}

impl Accepting {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos().max(1) as u64
    }

    pub fn succeeded(&self) {
        if self.failing_since.load(Ordering::Relaxed) != 0 {
            self.failing_since.store(0, Ordering::Relaxed);
            say!("accepting connections works again");
        }
    }

    pub fn failed(&self, error: &std::io::Error) {
        if self.failing_since.load(Ordering::Relaxed) == 0 {
            say!("accepting a connection failed: {error}; retrying every {ACCEPT_RETRY:?}");
            *lock(&self.reason) = error.to_string();
            self.failing_since.store(self.now(), Ordering::Relaxed);
        }
    }

    /// `Err` with the reason while accepting has failed for longer than
    /// [`ACCEPT_FAILING_AFTER`].
    fn health(&self) -> Result<(), String> {
        let since = self.failing_since.load(Ordering::Relaxed);
        if since == 0 {
            return Ok(());
        }
        let failing = Duration::from_nanos(self.now().saturating_sub(since));
        if failing < ACCEPT_FAILING_AFTER {
            return Ok(());
        }
        let reason = lock(&self.reason);
        Err(format!(
            "accepting connections has failed for {:.1} s: {reason}",
            failing.as_secs_f64()
        ))
    }
}

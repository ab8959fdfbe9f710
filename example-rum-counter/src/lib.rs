//! The example app: a rum counter.
//!
//! * `GET /` → `OK`
//! * `POST /drink/{user}/{count}` → counts `count` rums for `user`; past the config's
//!   `rums_limit` the drink is refused with 403 and a warning in the log (each drink is a
//!   debug line), and in `/metrics` as `rums_drunk_total{user="…"}`
//! * `GET /report` → every user's count as JSON
//! * `GET /delay/{n}` → sleeps `n` seconds (fractions allowed) and answers `rnd=<number>`;
//!   it sleeps in short slices and stops early when the request is cancelled (the client
//!   left, or the deadline passed)
//! * `GET /stream/{n}` → `n` Server-Sent Events 100 ms apart (the first 100 ms after the
//!   request), each sent as it is made
//! * `GET /leak/{mb}` → leaks `mb` MiB on purpose (touched, so resident): try it with
//!   `max_worker_memory_mb`
//! * `GET /batch` → `{"batch": k}`: with `batching` in the config, the `/batch` requests of
//!   one batch are answered together after one 10 ms pause (as a model would run them),
//!   `k` of them; `GET /batch/sizes` → the sizes of the batches this worker ran

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use microservice_rust::metrics::{self, Counter};
use microservice_rust::{debug, export_app, info, warn, App, Config, Request, Response};
use serde_json::json;

/// `rums_limit` when the config does not give one.
const DEFAULT_RUMS_LIMIT: u64 = 2;

/// The longest `/delay/{n}` sleeps.
const MAX_DELAY_S: f64 = 3600.0;

/// How often `/delay/{n}` looks whether its request was cancelled.
const DELAY_SLICE: Duration = Duration::from_millis(20);

/// The most events `/stream/{n}` sends, and the time between two.
const MAX_EVENTS: u64 = 10_000;
const EVENT_EVERY: Duration = Duration::from_millis(100);

/// The most `/leak/{mb}` leaks at once.
const MAX_LEAK_MB: usize = 1024;

pub struct RumCounter {
    limit: u64,
    drunk: Mutex<BTreeMap<String, u64>>,
    /// `rums_drunk_total{user=…}` in `/metrics`, over every worker (this worker's `drunk`
    /// is its own).
    rums: Counter,
    /// The size of each batch of `/batch` requests this worker ran.
    batches: Mutex<Vec<usize>>,
}

/// What one batch of `/batch` requests takes, together.
const BATCH_WORK: Duration = Duration::from_millis(10);

impl App for RumCounter {
    fn new(config: &Config) -> Result<Self, String> {
        let limit = config
            .get::<u64>("rums_limit")?
            .unwrap_or(DEFAULT_RUMS_LIMIT);
        info!("counting rums, at most {limit} per user");
        Ok(RumCounter {
            limit,
            drunk: Mutex::new(BTreeMap::new()),
            rums: metrics::counter("rums_drunk_total", "Rums drunk, by user.", &["user"])?,
            batches: Mutex::new(Vec::new()),
        })
    }

    fn handle(&self, request: &Request) -> Response {
        let segments: Vec<&str> = request.path().split('/').skip(1).collect();
        match (request.method(), segments.as_slice()) {
            ("GET", [""]) => Response::text(200, "OK"),
            ("POST", ["drink", user, count]) if !user.is_empty() => self.drink(user, count),
            ("GET", ["report"]) => self.report(),
            ("GET", ["delay", seconds]) => delay(request, seconds),
            ("GET", ["stream", count]) => stream(request, count),
            ("GET", ["leak", mb]) => leak(mb),
            ("GET", ["batch"]) => self.run_batch(1).remove(0),
            ("GET", ["batch", "sizes"]) => {
                let sizes = self.batches.lock().unwrap_or_else(|p| p.into_inner());
                Response::json_value(200, &json!(*sizes))
            }
            (_, ["drink", ..])
            | (_, ["report"])
            | (_, ["delay", ..])
            | (_, ["stream", ..])
            | (_, ["leak", ..])
            | (_, ["batch", ..])
            | (_, [""]) => Response::text(405, "method not allowed\n"),
            _ => Response::text(404, "not found\n"),
        }
    }

    /// The `/batch` requests of a batch run together; every other request alone.
    fn handle_batch(&self, requests: &[Request<'_>]) -> Vec<Response> {
        let is_batch = |r: &Request<'_>| r.method() == "GET" && r.path() == "/batch";
        let together = requests.iter().filter(|r| is_batch(r)).count();
        let mut answers = match together {
            0 => Vec::new(),
            n => self.run_batch(n),
        }
        .into_iter();
        requests
            .iter()
            .map(|request| match is_batch(request) {
                true => answers
                    .next()
                    .unwrap_or_else(|| Response::text(500, "no answer\n")),
                false => self.handle(request),
            })
            .collect()
    }
}

impl RumCounter {
    /// Runs `count` `/batch` requests together: one pause, then an answer each.
    fn run_batch(&self, count: usize) -> Vec<Response> {
        self.batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(count);
        std::thread::sleep(BATCH_WORK);
        (0..count)
            .map(|_| Response::json_value(200, &json!({ "batch": count })))
            .collect()
    }

    fn drink(&self, user: &str, count: &str) -> Response {
        let Ok(count) = count.parse::<u64>() else {
            return Response::text(
                400,
                format!("count must be a whole number, got {count:?}\n"),
            );
        };
        let mut drunk = self
            .drunk
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let so_far = drunk.get(user).copied().unwrap_or(0);
        if so_far.saturating_add(count) > self.limit {
            warn!(
                "refused {count} rum(s) to {user}: {so_far} drunk, the limit is {}",
                self.limit
            );
            return Response::json_value(
                403,
                &json!({
                    "error": format!("{user} has had enough"),
                    "drunk": so_far,
                    "rums_limit": self.limit,
                }),
            );
        }
        drunk.insert(user.to_string(), so_far + count);
        // At most 1,000 users are counted apart; past that a new user's rums are dropped
        // from the metric and counted in microservice_app_series_dropped_total.
        self.rums.inc_by(&[user], count);
        debug!("{user} drank {count} rum(s), {} in all", so_far + count);
        Response::json_value(200, &json!({ "user": user, "drunk": so_far + count }))
    }

    fn report(&self) -> Response {
        let drunk = self
            .drunk
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Response::json_value(
            200,
            &json!({
                "rums_limit": self.limit,
                "total": drunk.values().sum::<u64>(),
                "users": *drunk,
            }),
        )
    }
}

fn delay(request: &Request, seconds: &str) -> Response {
    match seconds.parse::<f64>() {
        Ok(s) if (0.0..=MAX_DELAY_S).contains(&s) => {
            let until = Instant::now() + Duration::from_secs_f64(s);
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                if request.is_cancelled() {
                    // Nobody waits for the answer: give the thread back.
                    return Response::text(503, "cancelled\n");
                }
                std::thread::sleep(left.min(DELAY_SLICE));
            }
            Response::text(200, format!("slept {s}s rnd={}\n", random()))
        }
        _ => Response::text(
            400,
            format!("delay must be a number of seconds from 0 to {MAX_DELAY_S}\n"),
        ),
    }
}

/// `count` events 100 ms apart; stops when the request is cancelled.
fn stream(request: &Request, count: &str) -> Response {
    let count = match count.parse::<u64>() {
        Ok(count) if count <= MAX_EVENTS => count,
        _ => {
            return Response::text(
                400,
                format!("stream takes a whole number of events from 0 to {MAX_EVENTS}\n"),
            )
        }
    };
    let Ok(mut events) = request.events() else {
        return Response::text(503, "cancelled\n");
    };
    for n in 1..=count {
        std::thread::sleep(EVENT_EVERY);
        let data = format!("{{\"event\":{n},\"of\":{count}}}");
        if events
            .event(Some("tick"), &data, Some(&n.to_string()))
            .is_err()
        {
            break;
        }
    }
    events.finish()
}

/// Leaks `mb` MiB, written to so that they count as resident memory.
fn leak(mb: &str) -> Response {
    match mb.parse::<usize>() {
        Ok(mb) if mb <= MAX_LEAK_MB => {
            let leaked: &'static mut [u8] = vec![1u8; mb << 20].leak();
            Response::text(200, format!("leaked {} MiB\n", leaked.len() >> 20))
        }
        _ => Response::text(
            400,
            format!("leak must be a whole number of MiB from 0 to {MAX_LEAK_MB}\n"),
        ),
    }
}

/// A random number from the standard library's randomly keyed hasher.
fn random() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}

export_app!(RumCounter);

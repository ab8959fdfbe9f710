//! @NAME@: a microservice-rust app.
//!
//! * `GET /` → a greeting; the config's `greeting` key, `?name=` says to whom
//! * `GET /json` → `{"requests": N}`: a JSON answer (add the SDK's `json` feature for serde)
//! * `GET /slow?seconds=S` → answers after S seconds (default 2): try it against the
//!   production config's `request_timeout_s`
//! * `/healthz` asks `health` below

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use microservice_rust::{export_app, App, Config, Request, Response};

/// The longest `/slow` sleeps.
const MAX_SLOW_S: f64 = 60.0;

pub struct @TYPE@ {
    greeting: String,
    requests: AtomicU64,
}

impl App for @TYPE@ {
    /// Called once per worker with the resolved config; an `Err` stops the service with
    /// the message.
    fn new(config: &Config) -> Result<Self, String> {
        let greeting = config.string("greeting").unwrap_or_else(|| "Hello".to_owned());
        if greeting.is_empty() {
            return Err("config key `greeting`: expected a non-empty string".to_owned());
        }
        Ok(@TYPE@ {
            greeting,
            requests: AtomicU64::new(0),
        })
    }

    /// Called from every thread of the pool at once: keep shared state `Sync`.
    fn handle(&self, request: &Request) -> Response {
        let served = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        match (request.method(), request.path()) {
            ("GET", "/") => {
                let name = request.query_param("name");
                let name = name.as_deref().unwrap_or("world");
                Response::text(200, format!("{}, {name}!\n", self.greeting))
            }
            ("GET", "/json") => Response::json(200, format!("{{\"requests\": {served}}}\n")),
            ("GET", "/slow") => {
                let seconds = request
                    .query_param("seconds")
                    .and_then(|s| s.parse::<f64>().ok())
                    .filter(|s| s.is_finite())
                    .unwrap_or(2.0)
                    .clamp(0.0, MAX_SLOW_S);
                std::thread::sleep(Duration::from_secs_f64(seconds));
                Response::text(200, format!("slept {seconds} s\n"))
            }
            (_, "/" | "/json" | "/slow") => Response::text(405, "method not allowed\n"),
            _ => Response::text(404, "not found\n"),
        }
    }

    /// Asked by `/healthz` (and the watchdog): an `Err` answers 503 with the reason.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}

export_app!(@TYPE@);

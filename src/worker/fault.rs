//! Faults of the worker's own: a panic is kept from crossing into the app ([`guarded`]),
//! and fault points are places where the worker's code can be made to panic, so that the
//! tests can show what follows a panic that no input can cause (a pool thread replaced, a
//! host function that fails instead of unwinding into the app).
//!
//! They are armed only in debug builds, by naming them in [`VAR`] (a comma list); a release
//! build never reads it. `pool` fires in a pool thread after the app answered a request
//! whose [`HEADER`] says `pool`; `host-log` fires in every call of the app's log function.

use std::panic::{catch_unwind, AssertUnwindSafe};

use http::request::Parts;

use crate::say;

/// Runs the body of a function the app calls (`name`); a panic in it, a fault of the
/// worker's, must not unwind into the app's code: it is logged, and the call fails with
/// `failed`.
pub fn guarded<R>(name: &str, failed: R, body: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(panic) => {
            say!(
                "the host function {name} panicked ({}): the call failed",
                panic_message(&*panic)
            );
            failed
        }
    }
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

/// The environment variable that arms fault points (debug builds only).
pub const VAR: &str = "MICROSERVICE_RUST_FAULTS";
/// The request header that picks the request a `pool` fault fires on.
pub const HEADER: &str = "x-microservice-fault";

/// The armed fault points.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    armed: Vec<String>,
}

impl Faults {
    /// The points [`VAR`] arms; none in a release build.
    pub fn from_env() -> Faults {
        if !cfg!(debug_assertions) {
            return Faults::default();
        }
        let armed = std::env::var(VAR).unwrap_or_default();
        Faults {
            armed: armed
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .map(String::from)
                .collect(),
        }
    }

    fn is_armed(&self, name: &str) -> bool {
        self.armed.iter().any(|armed| armed == name)
    }

    /// Panics if `name` is armed.
    pub fn point(&self, name: &str) {
        if self.is_armed(name) {
            panic!("fault point {name}");
        }
    }

    /// Panics if `name` is armed and the request's [`HEADER`] names it.
    pub fn for_request(&self, name: &str, head: &Parts) {
        let named = head
            .headers
            .get(HEADER)
            .is_some_and(|value| value.as_bytes() == name.as_bytes());
        if named {
            self.point(name);
        }
    }
}

//! The app's own log lines, written by the worker beside its own: in its `log_format`,
//! filtered by its `log_level`, tagged with the worker's pid and, inside `handle`, with
//! the request's ID, method and path. A line never blocks the app: when stderr is behind,
//! the worker drops it and counts it (`microservice_log_lines_dropped_total`).
//!
//! ```
//! use microservice_rust::{info, warn};
//!
//! info!("loaded {} users", 3);
//! warn!("no rum left for {}", "ann");
//! ```
//!
//! Callable from any thread, at any time. Outside a request (in `new`, or in a thread the
//! app started) a line has no request tag. In a process without the worker (an app's unit
//! tests, or a worker too old to offer this), lines go straight to stderr.

use std::ffi::c_void;
use std::io::Write as _;
use std::sync::OnceLock;

use crate::abi::{self, MsrHostApi};
use crate::panics;

/// How important a line is; the worker's `log_level` leaves out the levels below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    fn number(self) -> u32 {
        match self {
            Level::Debug => abi::LOG_DEBUG,
            Level::Info => abi::LOG_INFO,
            Level::Warn => abi::LOG_WARN,
            Level::Error => abi::LOG_ERROR,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// The worker's functions, given once before the app is built.
static HOST: OnceLock<&'static MsrHostApi> = OnceLock::new();

/// Keeps the worker's table (`msr_attach_host`, which `export_app!` exports).
///
/// # Safety
/// `host` is NULL or points at a table that lives as long as the process.
#[doc(hidden)]
pub unsafe fn attach_host(host: *const MsrHostApi) {
    if host.is_null() {
        return;
    }
    // SAFETY: this function's contract: `host` points at the worker's table, which lives as
    // long as the process and which nobody writes any more; every table begins with its
    // size.
    let size = unsafe { (*host).size };
    if size < std::mem::size_of::<MsrHostApi>() {
        // A table without every function this SDK knows: no reference may span past its
        // end (a later SDK that appends functions copies what an older table offers).
        return;
    }
    // SAFETY: as above, and the table holds the whole struct (its size says so), so a
    // `'static` shared reference to it is sound.
    let _ = HOST.set(unsafe { &*host });
}

/// The worker's functions, when a worker gave them.
pub(crate) fn host() -> Option<&'static MsrHostApi> {
    HOST.get().copied()
}

/// Writes one line at `level`.
pub fn log(level: Level, message: &str) {
    match HOST.get() {
        Some(host) => {
            let request: *mut c_void = panics::request_ctx();
            // SAFETY: the table lives as long as the process; `request` is the running
            // request's `host_ctx` on this thread, or NULL.
            unsafe {
                (host.log)(
                    host.host,
                    request,
                    level.number(),
                    message.as_ptr(),
                    message.len(),
                )
            }
        }
        None => {
            let line = format!("app: {}: {message}\n", level.name());
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }
}

/// `debug!("…", args)`: a line at level debug (see [`log`](crate::log::log)).
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Debug, &::std::format!($($arg)*)) };
}

/// `info!("…", args)`: a line at level info.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Info, &::std::format!($($arg)*)) };
}

/// `warn!("…", args)`: a line at level warn.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Warn, &::std::format!($($arg)*)) };
}

/// `error!("…", args)`: a line at level error.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Error, &::std::format!($($arg)*)) };
}

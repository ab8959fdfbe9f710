//! The process's own log lines on stderr, and the log settings (`log_level`,
//! `log_format`, `MICROSERVICE_LOG`) that the access log (see `access`) shares.
//!
//! Text lines read `microservice-rust[PID] ROLE: message`; JSON lines carry the same fields.
//! Each process names its role (`supervisor`, `worker`) once at start; lines are written
//! whole, so the supervisor's and the workers' output interleave by line, never mid-line.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

pub use microservice_rust::clock::{iso_time, Civil};

static ROLE: OnceLock<&'static str> = OnceLock::new();
static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static FORMAT: AtomicU8 = AtomicU8::new(Format::Text as u8);

/// How much is logged: each level includes those above it. Access lines are `info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug = 0,
    Info = 1,
    Warn = 2,
    Error = 3,
}

impl Level {
    pub const NAMES: &'static str = "\"debug\", \"info\", \"warn\" or \"error\"";

    pub fn parse(text: &str) -> Option<Level> {
        match text {
            "debug" => Some(Level::Debug),
            "info" => Some(Level::Info),
            "warn" => Some(Level::Warn),
            "error" => Some(Level::Error),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text = 0,
    Json = 1,
}

impl Format {
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "text" => Some(Format::Text),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
        }
    }
}

pub fn set_role(role: &'static str) {
    let _ = ROLE.set(role);
}

pub fn configure(level: Level, format: Format) {
    LEVEL.store(level as u8, Ordering::Relaxed);
    FORMAT.store(format as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 >= LEVEL.load(Ordering::Relaxed)
}

pub fn format() -> Format {
    match FORMAT.load(Ordering::Relaxed) {
        0 => Format::Text,
        _ => Format::Json,
    }
}

pub fn line(level: Level, args: std::fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let role = ROLE.get().copied().unwrap_or("microservice-rust");
    let pid = std::process::id();
    let text = match format() {
        Format::Text => format!("microservice-rust[{pid}] {role}: {args}\n"),
        Format::Json => format!(
            "{}\n",
            serde_json::json!({
                "time": iso_time(SystemTime::now()),
                "level": level.name(),
                "process": role,
                "pid": pid,
                "message": args.to_string(),
            })
        ),
    };
    // One write call per line; a closed stderr must not take the process down.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// `say!("worker {pid} ready")`: one log line at level info.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Level::Info, format_args!($($arg)*)) };
}

/// `warn!("…")`: one log line at level warn.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Level::Warn, format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn times_read_as_the_calendar_does() {
        // 2026-11-23 06:22:54.5 UTC, and the leap day 2024-02-29 00:00:00.
        let t = UNIX_EPOCH + Duration::from_millis(1_795_414_974_500);
        assert_eq!(iso_time(t), "2026-11-23T06:22:54.500Z");
        let leap = UNIX_EPOCH + Duration::from_secs(1_709_164_800);
        assert_eq!(iso_time(leap), "2024-02-29T00:00:00.000Z");
        assert_eq!(iso_time(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}

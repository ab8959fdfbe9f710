//! The process's own log lines on stderr, and the log settings (`log_level`,
//! `log_format`, `MICROSERVICE_LOG`) that the access log (see `access`) shares.
//!
//! Text lines read `microservice-rust[PID] ROLE: message`; JSON lines carry the same fields.
//! Each process names its role (`supervisor`, `worker`) once at start; lines are written
//! whole, so the supervisor's and the workers' output interleave by line, never mid-line.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

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

/// A moment in UTC on the calendar, for log lines.
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u64,
    pub minute: u64,
    pub second: u64,
    pub millis: u32,
}

impl Civil {
    pub fn of(time: SystemTime) -> Civil {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let seconds = since.as_secs();
        let (year, month, day) = civil((seconds / 86_400) as i64);
        Civil {
            year,
            month,
            day,
            hour: seconds % 86_400 / 3600,
            minute: seconds % 3600 / 60,
            second: seconds % 60,
            millis: since.subsec_millis(),
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `2026-11-23T06:22:54.123Z`.
pub fn iso_time(time: SystemTime) -> String {
    let p = Civil::of(time);
    format!(
        "{}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        p.year, p.month, p.day, p.hour, p.minute, p.second, p.millis
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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

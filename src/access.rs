//! The access log: one line per response on stdout, in the combined log format with the
//! duration added (`log_format: "text"`) or as a JSON object (`"json"`).
//!
//! A request never waits for the log. The line is formatted on the pool thread and handed
//! to a bounded queue; one writer thread empties it onto stdout in writes of at most
//! `PIPE_BUF` bytes (so lines of several workers sharing a pipe never mix). When stdout is
//! slow or blocked and the queue is full, the line is dropped and counted
//! (`microservice_log_lines_dropped_total`).

use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tiny_http::Request;

use crate::log::{self, Format, Level};
use crate::metrics;

/// Lines waiting for the writer; past this they are dropped.
const QUEUE_LINES: usize = 16_384;
/// The largest write: what a pipe writes atomically.
const WRITE_BYTES: usize = libc::PIPE_BUF;

static SINK: OnceLock<Sender<Vec<u8>>> = OnceLock::new();

/// Starts the writer, unless the log level leaves access lines out.
pub fn start() -> std::io::Result<()> {
    if !log::enabled(Level::Info) {
        return Ok(());
    }
    let (sender, lines) = crossbeam_channel::bounded(QUEUE_LINES);
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || write_lines(lines))?;
    let _ = SINK.set(sender);
    Ok(())
}

fn write_lines(lines: Receiver<Vec<u8>>) {
    // SAFETY: fd 1 stays open for the life of the process; ManuallyDrop never closes it.
    let mut stdout = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(1) });
    let mut buffer = Vec::with_capacity(WRITE_BYTES);
    while let Ok(line) = lines.recv() {
        buffer.extend_from_slice(&line);
        while let Ok(line) = lines.try_recv() {
            if buffer.len() + line.len() > WRITE_BYTES {
                let _ = stdout.write_all(&buffer);
                buffer.clear();
            }
            buffer.extend_from_slice(&line);
        }
        let _ = stdout.write_all(&buffer);
        buffer.clear();
    }
}

/// The start of a request's line, everything but its duration; `None` when the access
/// log is off.
pub fn begin(request: &Request, status: u16, bytes: usize) -> Option<Vec<u8>> {
    SINK.get()?;
    let mut line = Vec::with_capacity(256);
    let header = |name: &'static str| {
        request
            .headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str())
    };
    let version = request.http_version();
    let time = SystemTime::now();
    match log::format() {
        Format::Text => {
            let peer = request.remote_addr().map(SocketAddr::ip);
            match peer {
                Some(ip) => write!(line, "{ip}"),
                None => write!(line, "-"),
            }
            .ok()?;
            line.extend_from_slice(b" - - [");
            write_clf_time(&mut line, time).ok()?;
            write!(line, "] \"{} ", request.method()).ok()?;
            quoted_text(&mut line, request.url());
            write!(
                line,
                " HTTP/{}.{}\" {status} {bytes} \"",
                version.0, version.1
            )
            .ok()?;
            quoted_text(&mut line, header("Referer").unwrap_or("-"));
            line.extend_from_slice(b"\" \"");
            quoted_text(&mut line, header("User-Agent").unwrap_or("-"));
            line.extend_from_slice(b"\" ");
        }
        Format::Json => {
            let peer = request.remote_addr().map(|a| a.ip().to_string());
            let fields = serde_json::json!({
                "time": iso_time(time),
                "remote": peer,
                "method": request.method().as_str(),
                "path": request.url(),
                "protocol": format!("HTTP/{}.{}", version.0, version.1),
                "status": status,
                "bytes": bytes,
                "referer": header("Referer"),
                "user_agent": header("User-Agent"),
            });
            let mut text = fields.to_string();
            text.pop(); // the closing brace: the duration comes last
            line.extend_from_slice(text.as_bytes());
            line.extend_from_slice(b",\"duration_s\":");
        }
    }
    Some(line)
}

/// Ends the line with the request's duration and queues it for the writer.
pub fn finish(mut line: Vec<u8>, took: Duration) {
    let Some(sink) = SINK.get() else { return };
    let _ = write!(line, "{:.6}", took.as_secs_f64());
    if log::format() == Format::Json {
        line.push(b'}');
    }
    line.push(b'\n');
    if let Err(TrySendError::Full(_)) = sink.try_send(line) {
        metrics::count(metrics::Event::LogDropped);
    }
}

/// Text inside a quoted field: `"` and `\` escaped, bytes outside printable ASCII as `\xNN`.
fn quoted_text(line: &mut Vec<u8>, text: &str) {
    for &byte in text.as_bytes() {
        match byte {
            b'"' | b'\\' => line.extend_from_slice(&[b'\\', byte]),
            0x20..=0x7e => line.push(byte),
            _ => {
                let _ = write!(line, "\\x{byte:02x}");
            }
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

struct Parts {
    year: i64,
    month: u32,
    day: u32,
    hour: u64,
    minute: u64,
    second: u64,
    millis: u32,
}

fn parts(time: SystemTime) -> Parts {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let (year, month, day) = civil((seconds / 86_400) as i64);
    Parts {
        year,
        month,
        day,
        hour: seconds % 86_400 / 3600,
        minute: seconds % 3600 / 60,
        second: seconds % 60,
        millis: since.subsec_millis(),
    }
}

/// `23/Nov/2026:06:22:54 +0000`, the combined log format's time.
fn write_clf_time(out: &mut impl Write, time: SystemTime) -> std::io::Result<()> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let p = parts(time);
    write!(
        out,
        "{:02}/{}/{}:{:02}:{:02}:{:02} +0000",
        p.day,
        MONTHS[(p.month - 1) as usize],
        p.year,
        p.hour,
        p.minute,
        p.second
    )
}

/// `2026-11-23T06:22:54.123Z`.
pub fn iso_time(time: SystemTime) -> String {
    let p = parts(time);
    format!(
        "{}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        p.year, p.month, p.day, p.hour, p.minute, p.second, p.millis
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_the_calendar_does() {
        // 2026-11-23 06:22:54.5 UTC, and the leap day 2024-02-29 00:00:00.
        let t = UNIX_EPOCH + Duration::from_millis(1_795_414_974_500);
        assert_eq!(iso_time(t), "2026-11-23T06:22:54.500Z");
        let mut clf = Vec::new();
        write_clf_time(&mut clf, t).expect("write to a Vec");
        assert_eq!(clf, b"23/Nov/2026:06:22:54 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(1_709_164_800);
        assert_eq!(iso_time(leap), "2024-02-29T00:00:00.000Z");
        assert_eq!(iso_time(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn quoted_fields_escape_quotes_and_control_bytes() {
        let mut line = Vec::new();
        quoted_text(&mut line, "a\"b\\c\u{1b}d é");
        assert_eq!(line, b"a\\\"b\\\\c\\x1bd \\xc3\\xa9");
    }
}

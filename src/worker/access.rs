//! The access log: one line per response on stdout, in the combined log format with the
//! duration added (`log_format: "text"`) or as a JSON object (`"json"`).
//!
//! A request never waits for the log. The line is formatted where the answer leaves (an I/O
//! thread) and handed to a bounded queue; one writer thread empties it every 10 ms onto
//! stdout in writes of at most `PIPE_BUF` bytes (so lines of several workers sharing a pipe
//! never mix). When stdout is slow or blocked and the queue is full, the line is dropped
//! and counted (`microservice_log_lines_dropped_total`).

use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use http::header::{REFERER, USER_AGENT};
use http::request::Parts;

use crate::log::{self, Format, Level};
use crate::metrics::{Event, Recorder};

/// Lines waiting for the writer; past this they are dropped.
const QUEUE_LINES: usize = 16_384;
/// The largest write: what a pipe writes atomically.
const WRITE_BYTES: usize = libc::PIPE_BUF;
/// How often the writer empties the queue. It looks rather than being woken, so a request
/// never pays for waking it (that cost ~17 µs of CPU per request at one connection).
const WRITE_EVERY: Duration = Duration::from_millis(10);

/// Where a worker's access lines go.
pub struct AccessLog {
    sink: Sender<Vec<u8>>,
    metrics: Recorder,
    writer: Writer,
}

/// The writer thread, and what says it should finish.
struct Writer {
    thread: std::thread::Thread,
    closing: Arc<AtomicBool>,
    /// Set by the writer when it has written everything queued before `closing`.
    done: Arc<AtomicBool>,
}

impl AccessLog {
    /// Starts the writer; `None` when the log level leaves access lines out.
    pub fn start(metrics: Recorder) -> std::io::Result<Option<AccessLog>> {
        if !log::enabled(Level::Info) {
            return Ok(None);
        }
        let (sink, lines) = crossbeam_channel::bounded(QUEUE_LINES);
        let closing = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (told, finished) = (closing.clone(), done.clone());
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                write_lines(lines, &told);
                finished.store(true, Ordering::Release);
            })?
            .thread()
            .clone();
        let writer = Writer {
            thread,
            closing,
            done,
        };
        Ok(Some(AccessLog {
            sink,
            metrics,
            writer,
        }))
    }

    /// Formats a request's line and queues it for the writer (or drops and counts it).
    pub fn write(&self, head: &Parts, peer: SocketAddr, status: u16, bytes: u64, took: Duration) {
        let Some(line) = line(head, peer, status, bytes, took) else {
            return;
        };
        if let Err(TrySendError::Full(_)) = self.sink.try_send(line) {
            self.metrics.count(Event::LogDropped);
        }
    }

    /// Has the writer write out every line queued so far and stop, waiting for it at most
    /// `within` (stdout may be blocked): the worker is about to exit.
    pub fn finish(&self, within: Duration) {
        self.writer.closing.store(true, Ordering::Release);
        self.writer.thread.unpark();
        let deadline = std::time::Instant::now() + within;
        while !self.writer.done.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Empties the queue onto stdout every [`WRITE_EVERY`] until `closing`, then once more.
fn write_lines(lines: Receiver<Vec<u8>>, closing: &AtomicBool) {
    // SAFETY: fd 1 stays open for the life of the process; ManuallyDrop never closes it.
    let mut stdout = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(1) });
    let mut buffer = Vec::with_capacity(WRITE_BYTES);
    loop {
        let last = closing.load(Ordering::Acquire);
        while let Ok(line) = lines.try_recv() {
            if buffer.len() + line.len() > WRITE_BYTES && !buffer.is_empty() {
                let _ = stdout.write_all(&buffer);
                buffer.clear();
            }
            buffer.extend_from_slice(&line);
        }
        if !buffer.is_empty() {
            let _ = stdout.write_all(&buffer);
            buffer.clear();
        }
        if last {
            return;
        }
        std::thread::park_timeout(WRITE_EVERY);
    }
}

/// A request's whole line, in the configured format.
fn line(
    head: &Parts,
    peer: SocketAddr,
    status: u16,
    bytes: u64,
    took: Duration,
) -> Option<Vec<u8>> {
    let mut line = Vec::with_capacity(256);
    let header = |name| {
        head.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
    };
    let target = head
        .uri
        .path_and_query()
        .map_or(head.uri.path(), |p| p.as_str());
    let protocol = match head.version {
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let time = SystemTime::now();
    match log::format() {
        Format::Text => {
            write!(line, "{} - - [", peer.ip()).ok()?;
            write_clf_time(&mut line, time).ok()?;
            write!(line, "] \"{} ", head.method).ok()?;
            quoted_text(&mut line, target);
            write!(line, " {protocol}\" {status} {bytes} \"").ok()?;
            quoted_text(&mut line, header(REFERER).as_deref().unwrap_or("-"));
            line.extend_from_slice(b"\" \"");
            quoted_text(&mut line, header(USER_AGENT).as_deref().unwrap_or("-"));
            writeln!(line, "\" {:.6}", took.as_secs_f64()).ok()?;
        }
        Format::Json => {
            let fields = serde_json::json!({
                "time": log::iso_time(time),
                "remote": peer.ip().to_string(),
                "method": head.method.as_str(),
                "path": target,
                "protocol": protocol,
                "status": status,
                "bytes": bytes,
                "referer": header(REFERER),
                "user_agent": header(USER_AGENT),
            });
            let mut text = fields.to_string();
            text.pop(); // the closing brace: the duration comes last
            line.extend_from_slice(text.as_bytes());
            writeln!(line, ",\"duration_s\":{:.6}}}", took.as_secs_f64()).ok()?;
        }
    }
    Some(line)
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

/// `23/Nov/2026:06:22:54 +0000`, the combined log format's time.
fn write_clf_time(out: &mut impl Write, time: SystemTime) -> std::io::Result<()> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let p = log::Civil::of(time);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clf_time_reads_as_the_calendar_does() {
        // 2026-11-23 06:22:54.5 UTC.
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_795_414_974_500);
        let mut clf = Vec::new();
        write_clf_time(&mut clf, t).expect("write to a Vec");
        assert_eq!(clf, b"23/Nov/2026:06:22:54 +0000");
    }

    #[test]
    fn quoted_fields_escape_quotes_and_control_bytes() {
        let mut line = Vec::new();
        quoted_text(&mut line, "a\"b\\c\u{1b}d é");
        assert_eq!(line, b"a\\\"b\\\\c\\x1bd \\xc3\\xa9");
    }
}

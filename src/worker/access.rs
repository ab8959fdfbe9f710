//! The access log, and the writer of the worker's buffered lines.
//!
//! Access lines: one per response on stdout, in the combined log format with the duration
//! added (`log_format: "text"`) or as a JSON object (`"json"`). The app's own lines (see
//! `host`) go the same way onto stderr.
//!
//! A request never waits for a log. A line is formatted where it is made (the pool thread
//! for the app's answers and lines, an I/O thread for the worker's own answers) straight
//! into a buffer shared with one writer thread, which takes the buffers every 10 ms and
//! writes them in writes of at most `PIPE_BUF` bytes, each of whole lines (so lines of
//! several workers sharing a pipe never mix). Nothing is allocated per line and nobody is
//! woken. When the output is slow or blocked and a buffer holds [`PENDING_BYTES`], further
//! lines are dropped and counted (`microservice_log_lines_dropped_total`).

use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use http::header::{REFERER, USER_AGENT};
use http::request::Parts;

use super::request_id::RequestId;
use super::text::{push_decimal, push_ip};
use crate::log::{self, Format, Level};
use crate::metrics::{Event, Recorder};

/// Bytes of lines waiting for the writer (about 16,000 lines); past this they are dropped.
const PENDING_BYTES: usize = 2 << 20;
/// The largest write: what a pipe writes atomically.
const WRITE_BYTES: usize = libc::PIPE_BUF;
/// How often the writer takes the lines. It looks rather than being woken, so a request
/// never pays for waking it (that cost ~17 µs of CPU per request at one connection).
const WRITE_EVERY: Duration = Duration::from_millis(10);

/// The two records of every answer: the metrics and the access line. Kept where the answer
/// is made (the pool thread for the app's answers, the I/O thread for the worker's own).
pub struct Ledger {
    metrics: Recorder,
    lines: Arc<Lines>,
    /// Whether access lines are written (`log_level` info or debug).
    access: bool,
}

impl Ledger {
    /// Counts an event of the worker's (one that has no access line of its own).
    pub fn count(&self, event: crate::metrics::Event) {
        self.metrics.count(event);
    }

    pub fn new(metrics: Recorder, lines: Arc<Lines>) -> Ledger {
        Ledger {
            metrics,
            lines,
            access: log::enabled(Level::Info),
        }
    }

    /// Counts an answer and writes its access line.
    pub fn record(
        &self,
        head: &Parts,
        peer: SocketAddr,
        status: u16,
        bytes: u64,
        took: Duration,
        id: &RequestId,
    ) {
        self.metrics.record(&head.method, status, took);
        if self.access {
            self.lines.add(Output::Stdout, |pending| {
                line(pending, head, peer, (status, bytes, took), id)
            });
        }
    }

    /// Writes out the lines still waiting: the worker is about to exit.
    pub fn finish(&self, within: Duration) {
        self.lines.finish(within);
    }
}

/// Where a buffered line goes.
#[derive(Clone, Copy)]
pub enum Output {
    /// The access log.
    Stdout = 0,
    /// The app's lines, beside the worker's own.
    Stderr = 1,
}

/// The worker's buffered lines, for stdout and stderr, and their writer thread.
pub struct Lines {
    pending: Arc<[Mutex<Vec<u8>>; 2]>,
    metrics: Recorder,
    writer: Writer,
}

/// The writer thread, and what says it should finish.
struct Writer {
    thread: std::thread::Thread,
    closing: Arc<AtomicBool>,
    /// Set by the writer when it has written everything pending before `closing`.
    done: Arc<AtomicBool>,
}

/// The pending lines; a panic while they were held (there is none to expect) leaves whole
/// lines behind at worst one cut short.
fn lock(pending: &Mutex<Vec<u8>>) -> MutexGuard<'_, Vec<u8>> {
    pending.lock().unwrap_or_else(|p| p.into_inner())
}

impl Lines {
    /// Starts the writer thread.
    pub fn start(metrics: Recorder) -> std::io::Result<Lines> {
        let buffer = || Mutex::new(Vec::with_capacity(64 * 1024));
        let pending = Arc::new([buffer(), buffer()]);
        let closing = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (lines, told, finished) = (pending.clone(), closing.clone(), done.clone());
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                write_lines(&lines, &told);
                finished.store(true, Ordering::Release);
            })?
            .thread()
            .clone();
        let writer = Writer {
            thread,
            closing,
            done,
        };
        Ok(Lines {
            pending,
            metrics,
            writer,
        })
    }

    /// Adds the line `write` puts at the end of the buffer for `output` (or drops and counts
    /// it when the writer is behind; a failed `write` leaves nothing).
    pub fn add(&self, output: Output, write: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) {
        let mut pending = lock(&self.pending[output as usize]);
        if pending.len() >= PENDING_BYTES {
            drop(pending);
            self.metrics.count(Event::LogDropped);
            return;
        }
        let start = pending.len();
        if write(&mut pending).is_err() {
            pending.truncate(start);
        }
    }

    /// Has the writer write out every line so far and stop, waiting for it at most
    /// `within` (the output may be blocked): the worker is about to exit.
    pub fn finish(&self, within: Duration) {
        self.writer.closing.store(true, Ordering::Release);
        self.writer.thread.unpark();
        let deadline = std::time::Instant::now() + within;
        while !self.writer.done.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Takes the pending lines every [`WRITE_EVERY`] and writes them (the first buffer onto
/// fd 1, the second onto fd 2), until `closing`, then once more.
fn write_lines(pending: &[Mutex<Vec<u8>>; 2], closing: &AtomicBool) {
    // SAFETY: fds 1 and 2 stay open for the life of the process; ManuallyDrop never closes
    // them.
    let mut outputs =
        [1, 2].map(|fd| std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) }));
    let mut taken = Vec::with_capacity(64 * 1024);
    loop {
        let last = closing.load(Ordering::Acquire);
        for (buffer, output) in pending.iter().zip(outputs.iter_mut()) {
            std::mem::swap(&mut taken, &mut *lock(buffer));
            for chunk in whole_lines(&taken, WRITE_BYTES) {
                let _ = output.write_all(chunk);
            }
            taken.clear();
        }
        if last {
            return;
        }
        std::thread::park_timeout(WRITE_EVERY);
    }
}

/// `text` in pieces of at most `most` bytes that end at line ends (a longer line is a piece
/// of its own).
fn whole_lines(mut text: &[u8], most: usize) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if text.is_empty() {
            return None;
        }
        let window = &text[..text.len().min(most)];
        let end = match window.iter().rposition(|&b| b == b'\n') {
            Some(at) if window.len() < text.len() => at + 1,
            _ if window.len() == text.len() => text.len(),
            // One line longer than `most`: up to its end.
            _ => text
                .iter()
                .position(|&b| b == b'\n')
                .map_or(text.len(), |at| at + 1),
        };
        let (piece, rest) = text.split_at(end);
        text = rest;
        Some(piece)
    })
}

/// Writes a request's whole line, in the configured format, at the end of `line`.
fn line(
    line: &mut Vec<u8>,
    head: &Parts,
    peer: SocketAddr,
    (status, bytes, took): (u16, u64, Duration),
    id: &RequestId,
) -> std::io::Result<()> {
    let header = |name| head.headers.get(name).map(|v| v.as_bytes());
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
        // Written piece by piece, without `fmt`: `write!` cost about 1,500 instructions
        // per line, a tenth of a request (callgrind).
        Format::Text => {
            push_ip(line, &peer);
            line.extend_from_slice(b" - - [");
            write_clf_time(line, time);
            line.extend_from_slice(b"] \"");
            line.extend_from_slice(head.method.as_str().as_bytes());
            line.push(b' ');
            quoted_text(line, target.as_bytes());
            line.push(b' ');
            line.extend_from_slice(protocol.as_bytes());
            line.extend_from_slice(b"\" ");
            push_decimal(line, status.into(), 1);
            line.push(b' ');
            push_decimal(line, bytes, 1);
            line.extend_from_slice(b" \"");
            quoted_text(line, header(REFERER).unwrap_or(b"-"));
            line.extend_from_slice(b"\" \"");
            quoted_text(line, header(USER_AGENT).unwrap_or(b"-"));
            line.extend_from_slice(b"\" ");
            // Seconds with 6 decimals, rounded to the microsecond.
            let micros = (took.as_nanos() + 500) / 1000;
            push_decimal(line, (micros / 1_000_000) as u64, 1);
            line.push(b'.');
            push_decimal(line, (micros % 1_000_000) as u64, 6);
            line.extend_from_slice(b" \"");
            // An ID is checked or made of characters that need no escaping.
            line.extend_from_slice(id.as_bytes());
            line.extend_from_slice(b"\"\n");
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
                "referer": header(REFERER).map(String::from_utf8_lossy),
                "user_agent": header(USER_AGENT).map(String::from_utf8_lossy),
                "request_id": id.as_str(),
            });
            let mut json = fields.to_string();
            json.pop(); // the closing brace: the duration comes last
            line.extend_from_slice(json.as_bytes());
            writeln!(line, ",\"duration_s\":{:.6}}}", took.as_secs_f64())?;
        }
    }
    Ok(())
}

/// Text inside a quoted field: `"` and `\` escaped, bytes outside printable ASCII as `\xNN`.
fn quoted_text(line: &mut Vec<u8>, text: &[u8]) {
    for &byte in text {
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
fn write_clf_time(out: &mut Vec<u8>, time: SystemTime) {
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let p = log::Civil::of(time);
    push_decimal(out, p.day.into(), 2);
    out.push(b'/');
    out.extend_from_slice(MONTHS[(p.month as usize).clamp(1, 12) - 1]);
    out.push(b'/');
    push_decimal(out, p.year.unsigned_abs(), 4);
    for part in [p.hour, p.minute, p.second] {
        out.push(b':');
        push_decimal(out, part, 2);
    }
    out.extend_from_slice(b" +0000");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clf_time_reads_as_the_calendar_does() {
        // 2026-11-23 06:22:54.5 UTC.
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_795_414_974_500);
        let mut clf = Vec::new();
        write_clf_time(&mut clf, t);
        assert_eq!(clf, b"23/Nov/2026:06:22:54 +0000");
    }

    #[test]
    fn text_lines_read_as_the_combined_format_with_duration_and_id() {
        let (head, _) = http::Request::builder()
            .method("POST")
            .uri("/a?b=%22c%22")
            .header(REFERER, "http://r/")
            .body(())
            .expect("a request")
            .into_parts();
        let peer: SocketAddr = "10.0.0.7:5555".parse().expect("an address");
        let id = RequestId::Made(*b"0123456789abcdef0123456789abcdef");
        for (took, seconds) in [
            (Duration::from_nanos(277_499), "0.000277"),
            (Duration::from_nanos(277_500), "0.000278"),
            (Duration::from_millis(61_500), "61.500000"),
        ] {
            let mut text = Vec::new();
            line(&mut text, &head, peer, (201, 12_345, took), &id).expect("a line");
            let text = String::from_utf8(text).expect("UTF-8");
            let (start, rest) = text.split_once(" [").expect("the time");
            assert_eq!(start, "10.0.0.7 - -");
            let (_, rest) = rest.split_once("] ").expect("the time's end");
            let expected = format!(
                "\"POST /a?b=%22c%22 HTTP/1.1\" 201 12345 \"http://r/\" \"-\" {seconds} \
                 \"0123456789abcdef0123456789abcdef\"\n"
            );
            assert_eq!(rest, expected);
        }
    }

    #[test]
    fn writes_are_whole_lines_of_at_most_the_size_given() {
        let text = b"aaaa\nbb\ncccccccccc\nd\n";
        let pieces: Vec<&[u8]> = whole_lines(text, 8).collect();
        assert_eq!(
            pieces,
            [&b"aaaa\nbb\n"[..], b"cccccccccc\n", b"d\n"],
            "a line longer than the size is a piece of its own"
        );
        assert_eq!(whole_lines(b"", 8).count(), 0);
        let unended: Vec<&[u8]> = whole_lines(b"abc", 8).collect();
        assert_eq!(unended, [&b"abc"[..]]);
    }

    #[test]
    fn quoted_fields_escape_quotes_and_control_bytes() {
        let mut line = Vec::new();
        quoted_text(&mut line, "a\"b\\c\u{1b}d é".as_bytes());
        assert_eq!(line, b"a\\\"b\\\\c\\x1bd \\xc3\\xa9");
    }
}

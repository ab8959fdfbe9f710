//! The bridge between tiny_http's requests and the app's C ABI.
//!
//! The app gets a *copy* of the request, not pointers into tiny_http's `Request`: at a
//! timeout the worker sends the 504 with that `Request` while the app may still be reading
//! its request, so the app's view must not live inside it. Each pool thread reuses one
//! [`RequestCopy`], so the copy costs no allocation once warm.

use std::io::{self, Read};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use microservice_rust::abi::{MsrBytes, MsrHeader, MsrRequest};
use tiny_http::{Header, Method, Request, Response, StatusCode};

use crate::access;
use crate::closer;
use crate::loader::AppResponse;
use crate::metrics;
use crate::say;
use crate::watch;

/// A request as the acceptor handed it to the pool.
pub struct Incoming {
    pub request: Request,
    pub stamp: Stamp,
}

/// What the acceptor noted about a request when it read it.
#[derive(Clone, Copy, Debug)]
pub struct Stamp {
    /// When the worker read the request: deadlines and durations count from here.
    pub received: Instant,
    /// Its `Origin` matched `cors_allow_origin_regex`: the answer carries the CORS headers.
    pub cors: bool,
}

/// Why a body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// Over `max_body_bytes`.
    TooLarge,
    Read(io::Error),
    /// The connection ended before the declared length.
    Short {
        read: usize,
        declared: usize,
    },
}

/// An owned copy of one request's text and body, and the C view of it.
#[derive(Default)]
pub struct RequestCopy {
    text: Vec<u8>,
    method: Range<usize>,
    path: Range<usize>,
    query: Range<usize>,
    peer: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    body: Vec<u8>,
    c_headers: Vec<MsrHeader>,
}

impl RequestCopy {
    /// Copies `request`'s head and reads its body, up to `max_body` bytes.
    pub fn fill(&mut self, request: &mut Request, max_body: u64) -> Result<(), BodyError> {
        self.text.clear();
        self.headers.clear();
        self.body.clear();
        self.method = push(&mut self.text, request.method().as_str().as_bytes());
        let url = request.url();
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        self.path = push(&mut self.text, path.as_bytes());
        self.query = push(&mut self.text, query.as_bytes());
        for header in request.headers() {
            let name = push(&mut self.text, header.field.as_str().as_str().as_bytes());
            let value = push(&mut self.text, header.value.as_str().as_bytes());
            self.headers.push((name, value));
        }
        let start = self.text.len();
        if let Some(addr) = request.remote_addr() {
            push_address(&mut self.text, addr);
        }
        self.peer = start..self.text.len();
        read_body(request, max_body, &mut self.body)
    }

    pub fn path(&self) -> &[u8] {
        &self.text[self.path.clone()]
    }

    /// The C view, valid until `self` is filled again or dropped.
    pub fn as_raw(&mut self) -> MsrRequest {
        let text = &self.text;
        let span = |r: &Range<usize>| MsrBytes::from_slice(&text[r.clone()]);
        self.c_headers.clear();
        self.c_headers
            .extend(self.headers.iter().map(|(name, value)| MsrHeader {
                name: span(name),
                value: span(value),
            }));
        MsrRequest {
            method: span(&self.method),
            path: span(&self.path),
            query: span(&self.query),
            headers: self.c_headers.as_ptr(),
            header_count: self.c_headers.len(),
            body: MsrBytes::from_slice(&self.body),
            peer: span(&self.peer),
        }
    }
}

/// Writes `ip:port`. IPv4, the common case, without the formatting machinery: through
/// `fmt` it cost about 5% of the worker's instructions per request (callgrind).
fn push_address(text: &mut Vec<u8>, address: &std::net::SocketAddr) {
    match address {
        std::net::SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    text.push(b'.');
                }
                push_decimal(text, octet.into());
            }
            text.push(b':');
            push_decimal(text, v4.port().into());
        }
        std::net::SocketAddr::V6(_) => {
            use std::io::Write;
            let _ = write!(text, "{address}");
        }
    }
}

fn push_decimal(text: &mut Vec<u8>, mut value: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    text.extend_from_slice(&digits[at..]);
}

fn push(text: &mut Vec<u8>, bytes: &[u8]) -> Range<usize> {
    let start = text.len();
    text.extend_from_slice(bytes);
    start..text.len()
}

fn read_body(request: &mut Request, max_body: u64, body: &mut Vec<u8>) -> Result<(), BodyError> {
    let declared = request.body_length();
    if declared.is_some_and(|len| len as u64 > max_body) {
        return Err(BodyError::TooLarge);
    }
    // A chunked body has no declared length: read one byte past the limit to notice it.
    // Under `Connection: upgrade` tiny_http hands over the whole stream as the body, so
    // only the declared length is read (none: no body).
    let limit = match is_upgrade(request) {
        true => declared.unwrap_or(0) as u64,
        false => max_body.saturating_add(1),
    };
    let read = request
        .as_reader()
        .take(limit)
        .read_to_end(body)
        .map_err(BodyError::Read)?;
    if read as u64 > max_body {
        return Err(BodyError::TooLarge);
    }
    match declared {
        Some(declared) if read < declared => Err(BodyError::Short { read, declared }),
        _ => Ok(()),
    }
}

fn is_upgrade(request: &Request) -> bool {
    header(request, "Connection").is_some_and(|v| contains_ignoring_case(v, b"upgrade"))
}

/// The first value of the header `name`.
pub fn header<'r>(request: &'r Request, name: &'static str) -> Option<&'r [u8]> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str().as_bytes())
}

fn contains_ignoring_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Whether some of the request's body may still be in the stream, unread: it is chunked,
/// or longer than the 1024 bytes tiny_http reads along with the head, or comes after a
/// `100 Continue`, or the connection is being upgraded (the body is the whole stream).
pub fn body_pending(request: &Request) -> bool {
    let expect_continue = header(request, "Expect").is_some();
    match request.body_length() {
        _ if is_upgrade(request) => true,
        None => header(request, "Transfer-Encoding").is_some(),
        Some(0) => false,
        Some(length) => length > 1024 || expect_continue,
    }
}

/// A declared body above this size is never drained or dropped unread: tiny_http 0.12
/// drains an unread body when the request is dropped, and first allocates a buffer of the
/// whole remaining declared length, so a `Content-Length` of 100 TB aborts the process.
/// Such a request is answered and its connection parked instead (see [`park`]).
pub const PARK_ABOVE_BYTES: usize = 1 << 30;

/// Connections parked so far.
static PARKED: AtomicUsize = AtomicUsize::new(0);

/// How a response goes out.
#[derive(Clone, Copy, Debug)]
pub struct How {
    pub stamp: Stamp,
    /// Send `Connection: close`, so the client opens its next request on a new connection
    /// (while a worker drains; tiny_http itself never sends it).
    pub close: bool,
    /// The request body has been read to its end (so dropping the request reads nothing).
    pub body_read: bool,
    /// End the connection after this answer whatever the client wants (its framing is in
    /// doubt, see `screen`).
    pub end: bool,
}

impl How {
    /// For a request whose body has not been read.
    pub fn unread(stamp: Stamp, close: bool) -> How {
        How {
            stamp,
            close,
            body_read: false,
            end: false,
        }
    }

    /// For a request whose body has been read to its end.
    pub fn read(stamp: Stamp, close: bool) -> How {
        How {
            body_read: true,
            ..How::unread(stamp, close)
        }
    }

    /// For a request whose connection must end after the answer.
    pub fn ending(stamp: Stamp) -> How {
        How {
            end: true,
            ..How::unread(stamp, true)
        }
    }
}

/// Sends the app's response. A status the app left at 0 or set out of range is a 500.
pub fn send_app_response(request: Request, answer: &AppResponse, how: How) -> io::Result<()> {
    let status = match answer.status() {
        s @ 100..=999 => s,
        _ => 500,
    };
    send(request, status, answer.headers(), answer.body(), how)
}

/// The content type of the worker's own answers.
pub const PLAIN_TEXT: (&[u8], &[u8]) = (b"Content-Type", b"text/plain; charset=utf-8");

/// Sends a short plain-text answer of the worker's own (504, 413, /readyz, …).
pub fn send_text(request: Request, status: u16, text: &str, how: How) -> io::Result<()> {
    send(
        request,
        status,
        [PLAIN_TEXT].into_iter(),
        text.as_bytes(),
        how,
    )
}

/// Sends the `/metrics` text.
pub fn send_metrics(request: Request, text: &str, how: How) -> io::Result<()> {
    let headers = [(
        &b"Content-Type"[..],
        &b"text/plain; version=0.0.4; charset=utf-8"[..],
    )];
    send(request, 200, headers.into_iter(), text.as_bytes(), how)
}

/// Sends a response. When the connection must end, or some of the request's body is still
/// unread in the stream (which tiny_http would otherwise drain at the client's pace, or
/// parse as further requests), the answer goes by the closer, which ends the connection.
pub fn send<'h>(
    request: Request,
    status: u16,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    body: &[u8],
    how: How,
) -> io::Result<()> {
    if how.end || (!how.body_read && body_pending(&request)) {
        let headers = headers.map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
        closer::close(request, status, headers, body.to_vec(), how);
        return Ok(());
    }
    deliver(request, status, headers, body, how)
}

/// Writes a response on this thread, and counts and logs it.
pub fn deliver<'h>(
    request: Request,
    status: u16,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    body: &[u8],
    how: How,
) -> io::Result<()> {
    let method = request.method().clone();
    let peer = request.remote_addr().copied();
    let line = access::begin(&request, status, body.len());
    let sent = write(request, status, headers, body, how);
    account(&method, peer.as_ref(), status, line, how);
    sent
}

/// Counts an answer that went out (or failed to), ends its request for the watch, and
/// finishes its access line.
fn account(
    method: &Method,
    peer: Option<&std::net::SocketAddr>,
    status: u16,
    line: Option<Vec<u8>>,
    how: How,
) {
    let took = how.stamp.received.elapsed();
    metrics::record(method, status, took);
    watch::ended(peer);
    if let Some(line) = line {
        access::finish(line, took);
    }
}

fn write<'h>(
    request: Request,
    status: u16,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    body: &[u8],
    how: How,
) -> io::Result<()> {
    if !how.body_read
        && request
            .body_length()
            .is_some_and(|len| len > PARK_ABOVE_BYTES)
    {
        park(request, status, body);
        return Ok(());
    }
    let origin = cors_origin(&request, how);
    let headers = with_cors(
        headers.map(|(name, value)| (name as &[u8], value as &[u8])),
        origin.as_deref(),
    );
    if how.close {
        return send_closing(request, status, headers, body);
    }
    let headers = headers
        .filter_map(|(name, value)| Header::from_bytes(name, value).ok())
        .collect();
    request.respond(Response::new(
        StatusCode(status),
        headers,
        body,
        Some(body.len()),
        None,
    ))
}

/// Writes the response itself, with `Connection: close` (tiny_http drops that header from
/// responses it writes).
fn send_closing<'h>(
    request: Request,
    status: u16,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    body: &[u8],
) -> io::Result<()> {
    use std::io::Write;
    let out = closing_response(&request, status, headers, body);
    let mut writer = request.into_writer();
    writer.write_all(&out)?;
    writer.flush()
}

/// The answer to `request` with `Connection: close`, as bytes.
fn closing_response<'h>(
    request: &Request,
    status: u16,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    body: &[u8],
) -> Vec<u8> {
    let head_only = *request.method() == Method::Head;
    closing_answer(status, headers, body, head_only)
}

/// A whole response with `Connection: close`, as bytes (also for the watch, which answers
/// connections that have no request yet).
pub fn closing_answer<'h>(
    status: u16,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    body: &[u8],
    head_only: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.len());
    let reason = StatusCode(status).default_reason_phrase();
    out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
    for (name, value) in headers {
        let framing = [&b"connection"[..], b"content-length", b"transfer-encoding"];
        if framing.iter().any(|f| name.eq_ignore_ascii_case(f)) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    let length = format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(length.as_bytes());
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// Writes the answer to `request` straight onto its connection's socket `fd`, with
/// `Connection: close`, and counts and logs it. The request stays with the caller, who
/// shuts the socket down before letting it go (see `closer`): through tiny_http, letting
/// go of the request comes first and lets tiny_http read on.
pub fn deliver_to_socket<'h>(
    fd: std::os::fd::RawFd,
    request: &Request,
    status: u16,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    body: &[u8],
    how: How,
) -> io::Result<()> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let line = access::begin(request, status, body.len());
    let origin = cors_origin(request, how);
    let headers = with_cors(
        headers.map(|(name, value)| (name as &[u8], value as &[u8])),
        origin.as_deref(),
    );
    let out = closing_response(request, status, headers, body);
    // SAFETY: borrowed for the write and never dropped; the fd stays tiny_http's.
    let mut socket = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
    let sent = socket.write_all(&out);
    account(request.method(), request.remote_addr(), status, line, how);
    sent
}

/// Lets go of a request whose connection has been shut down: tiny_http drains what is left
/// of its body, which ends at once, except that a huge declared length would have it
/// allocate that much first (see [`PARK_ABOVE_BYTES`]); that request is kept for good,
/// and `true` returned.
pub fn release(request: Request) -> bool {
    let declared = request.body_length().unwrap_or(0);
    if declared <= PARK_ABOVE_BYTES {
        drop(request);
        return false;
    }
    std::mem::forget(request);
    count_parked(declared);
    true
}

/// The `Origin` to allow in the answer, when the request's origin matched.
fn cors_origin(request: &Request, how: How) -> Option<Vec<u8>> {
    match how.stamp.cors {
        true => header(request, "Origin").map(<[u8]>::to_vec),
        false => None,
    }
}

/// `headers` and, for an allowed origin, the CORS headers.
fn with_cors<'a>(
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    origin: Option<&'a [u8]>,
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
    let cors = origin.map(|origin| {
        [
            (&b"Access-Control-Allow-Origin"[..], origin),
            (&b"Vary"[..], &b"Origin"[..]),
        ]
    });
    headers.chain(cors.into_iter().flatten())
}

/// Answers a request whose huge declared body was not read, and keeps its connection open
/// for good instead of letting tiny_http drain it (see [`PARK_ABOVE_BYTES`]): a leak of one
/// connection, logged and counted, instead of a crash.
fn park(request: Request, status: u16, body: &[u8]) {
    let declared = request.body_length().unwrap_or(0);
    let response = Response::new(StatusCode(status), Vec::new(), body, Some(body.len()), None);
    std::mem::forget(request.upgrade("close", response));
    count_parked(declared);
}

fn count_parked(declared: usize) {
    let parked = PARKED.fetch_add(1, Ordering::Relaxed) + 1;
    metrics::count(metrics::Event::Parked);
    say!("parked a connection that declared a {declared}-byte body ({parked} parked)");
}

#[cfg(test)]
mod tests {
    use super::push_address;

    #[test]
    fn addresses_read_as_display_writes_them() {
        for address in [
            "127.0.0.1:8080",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[::1]:443",
        ] {
            let parsed: std::net::SocketAddr = address.parse().expect("an address");
            let mut text = Vec::new();
            push_address(&mut text, &parsed);
            assert_eq!(String::from_utf8(text).expect("ASCII"), parsed.to_string());
        }
    }
}

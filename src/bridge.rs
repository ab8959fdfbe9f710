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
use crate::loader::AppResponse;
use crate::metrics;
use crate::say;

/// A request as the acceptor handed it to the pool, stamped when the worker read it.
pub struct Incoming {
    pub request: Request,
    pub received: Instant,
}

/// Why a body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// Over `max_body_bytes`; `declared` is the Content-Length, when there was one.
    TooLarge {
        declared: Option<usize>,
    },
    Read(io::Error),
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
        return Err(BodyError::TooLarge { declared });
    }
    // A chunked body has no declared length: read one byte past the limit to notice it.
    let read = request
        .as_reader()
        .take(max_body.saturating_add(1))
        .read_to_end(body)
        .map_err(BodyError::Read)?;
    if read as u64 > max_body {
        return Err(BodyError::TooLarge { declared });
    }
    Ok(())
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
    /// When the worker read the request: its duration in the metrics counts from here.
    pub received: Instant,
    /// Send `Connection: close`, so the client opens its next request on a new connection
    /// (while a worker drains; tiny_http itself never sends it).
    pub close: bool,
    /// The request body has been read to its end (so dropping the request reads nothing).
    pub body_read: bool,
}

/// Sends the app's response. A status the app left at 0 or set out of range is a 500.
pub fn send_app_response(request: Request, answer: &AppResponse, how: How) -> io::Result<()> {
    let status = match answer.status() {
        s @ 100..=999 => s,
        _ => 500,
    };
    send(request, status, answer.headers(), answer.body(), how)
}

/// Sends a short plain-text answer of the worker's own (504, 413, /readyz, …).
pub fn send_text(request: Request, status: u16, text: &str, how: How) -> io::Result<()> {
    let headers = [(&b"Content-Type"[..], &b"text/plain; charset=utf-8"[..])];
    send(request, status, headers.into_iter(), text.as_bytes(), how)
}

/// Sends the `/metrics` text.
pub fn send_metrics(request: Request, text: &str, how: How) -> io::Result<()> {
    let headers = [(
        &b"Content-Type"[..],
        &b"text/plain; version=0.0.4; charset=utf-8"[..],
    )];
    send(request, 200, headers.into_iter(), text.as_bytes(), how)
}

fn send<'h>(
    request: Request,
    status: u16,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    body: &[u8],
    how: How,
) -> io::Result<()> {
    let method = request.method().clone();
    let line = access::begin(&request, status, body.len());
    let sent = write(request, status, headers, body, how);
    let took = how.received.elapsed();
    metrics::record(&method, status, took);
    if let Some(line) = line {
        access::finish(line, took);
    }
    sent
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
    let head_only = *request.method() == Method::Head;
    let mut out = Vec::with_capacity(256 + body.len());
    let reason = StatusCode(status).default_reason_phrase();
    write!(out, "HTTP/1.1 {status} {reason}\r\n")?;
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
    write!(
        out,
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if !head_only {
        out.extend_from_slice(body);
    }
    let mut writer = request.into_writer();
    writer.write_all(&out)?;
    writer.flush()
}

/// Answers a request whose huge declared body was not read, and keeps its connection open
/// for good instead of letting tiny_http drain it (see [`PARK_ABOVE_BYTES`]): a leak of one
/// connection, logged and counted, instead of a crash.
fn park(request: Request, status: u16, body: &[u8]) {
    let declared = request.body_length().unwrap_or(0);
    let response = Response::new(StatusCode(status), Vec::new(), body, Some(body.len()), None);
    std::mem::forget(request.upgrade("close", response));
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

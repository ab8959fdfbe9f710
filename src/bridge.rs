//! The bridge between tiny_http's requests and the app's C ABI.
//!
//! The app gets a *copy* of the request, not pointers into tiny_http's `Request`: at a
//! timeout the worker sends the 504 with that `Request` while the app may still be reading
//! its request, so the app's view must not live inside it. Each pool thread reuses one
//! [`RequestCopy`], so the copy costs no allocation once warm.

use std::io::{self, Read};
use std::ops::Range;
use std::time::Instant;

use microservice_rust::abi::{MsrBytes, MsrHeader, MsrRequest};
use tiny_http::{Header, Request, Response, StatusCode};

use crate::loader::AppResponse;

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
            use std::io::Write;
            let _ = write!(self.text, "{addr}");
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

/// Sends the app's response. A status the app left at 0 or set out of range is a 500.
pub fn send_app_response(request: Request, answer: &AppResponse) -> io::Result<()> {
    let headers = answer
        .headers()
        .filter_map(|(name, value)| Header::from_bytes(name, value).ok())
        .collect();
    let status = match answer.status() {
        s @ 100..=999 => s,
        _ => 500,
    };
    let body = answer.body();
    request.respond(Response::new(
        StatusCode(status),
        headers,
        body,
        Some(body.len()),
        None,
    ))
}

/// Sends a short plain-text answer of the worker's own (504, 413, /readyz, …).
pub fn send_text(request: Request, status: u16, text: &str) -> io::Result<()> {
    let content_type = Header::from_bytes(&b"Content-Type"[..], &b"text/plain; charset=utf-8"[..])
        .expect("a valid static header");
    request.respond(
        Response::from_string(text)
            .with_status_code(StatusCode(status))
            .with_header(content_type),
    )
}

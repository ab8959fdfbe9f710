//! The bridge between HTTP and the app's C ABI, and every answer the worker builds.
//!
//! The app reads a request through pointers into the worker's own copy of it (the
//! [`Received`] that the pool thread holds while the app runs), so the I/O side can answer
//! 504 at a deadline while the app is still reading. The app's response is copied into an
//! [`Answer`] on the pool thread and handed back to the app's `release` at once; hyper then
//! writes the answer on an I/O thread.

use std::ffi::c_void;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, StatusCode};
use hyper::body::{Body, Frame, SizeHint};

use super::loader::AppResponse;
use super::pool::Received;
use super::request_id::RequestId;
use super::stream::{Cut, Streamed, HOST};
use microservice_rust::abi::{MsrBytes, MsrHeader, MsrRequest, NO_DEADLINE};

/// Every answer the worker sends.
pub type Answer = hyper::Response<AnswerBody>;

/// An answer's body: whole (with its length), or streamed by the app (see `stream`).
pub enum AnswerBody {
    Whole(Option<Bytes>),
    /// Boxed: an answer is moved several times on its way, and most are whole.
    Streamed(Box<Streamed>),
}

impl AnswerBody {
    fn whole(bytes: Bytes) -> AnswerBody {
        AnswerBody::Whole((!bytes.is_empty()).then_some(bytes))
    }
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        match self.get_mut() {
            AnswerBody::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            AnswerBody::Streamed(stream) => Pin::new(stream.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, AnswerBody::Whole(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            AnswerBody::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            AnswerBody::Streamed(stream) => stream.size_hint(),
        }
    }
}

/// The content type of the worker's own answers.
const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

/// The C view of a request, rebuilt for each request in memory each pool thread reuses.
#[derive(Default)]
pub struct RequestView {
    headers: Vec<MsrHeader>,
    peer: Vec<u8>,
}

impl RequestView {
    /// The view of `request`, valid while `request` and `self` are neither changed nor
    /// dropped; the host functions get `call` (a `stream::Call`).
    pub fn of(&mut self, request: &Received, id: &RequestId, call: *mut c_void) -> MsrRequest {
        let head = &request.head;
        self.headers.clear();
        self.headers
            .extend(head.headers.iter().map(|(name, value)| MsrHeader {
                name: MsrBytes::from_slice(name.as_str().as_bytes()),
                value: MsrBytes::from_slice(value.as_bytes()),
            }));
        self.peer.clear();
        push_address(&mut self.peer, &request.peer);
        MsrRequest {
            method: MsrBytes::from_slice(head.method.as_str().as_bytes()),
            path: MsrBytes::from_slice(head.uri.path().as_bytes()),
            query: MsrBytes::from_slice(head.uri.query().unwrap_or("").as_bytes()),
            headers: self.headers.as_ptr(),
            header_count: self.headers.len(),
            body: MsrBytes::from_slice(&request.body),
            peer: MsrBytes::from_slice(&self.peer),
            id: MsrBytes::from_slice(id.as_bytes()),
            host: &HOST,
            host_ctx: call,
            version: MsrBytes::from_slice(version_text(head.version)),
            time_left_us: request.deadline.map_or(NO_DEADLINE, |at| {
                let left = at.saturating_duration_since(std::time::Instant::now());
                u64::try_from(left.as_micros()).unwrap_or(NO_DEADLINE - 1)
            }),
        }
    }
}

/// The request line's protocol as the app reads it (hyper serves HTTP/1.0 and 1.1 only).
fn version_text(version: http::Version) -> &'static [u8] {
    match version {
        http::Version::HTTP_10 => b"HTTP/1.0",
        http::Version::HTTP_09 => b"HTTP/0.9",
        _ => b"HTTP/1.1",
    }
}

/// The app's response as an answer. A status the app left at 0, set out of range, or set
/// to 1xx (which HTTP/1.1 cannot send as a final answer) is a 500; headers that are not
/// valid HTTP are left out, and so are the framing headers, which hyper writes itself.
pub fn app_answer(response: &AppResponse) -> Answer {
    let status = app_status(response.status());
    let mut answer =
        hyper::Response::new(AnswerBody::whole(Bytes::copy_from_slice(response.body())));
    *answer.status_mut() = status;
    app_headers(answer.headers_mut(), response.headers());
    answer
}

/// The status an app chose, as sent: 0, out of range or 1xx is a 500.
pub fn app_status(status: u16) -> StatusCode {
    match status {
        200..=999 => StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Adds the app's headers, leaving out those that are not valid HTTP and the framing
/// headers, which hyper writes itself.
pub fn app_headers<'h>(headers: &mut HeaderMap, from: impl Iterator<Item = (&'h [u8], &'h [u8])>) {
    for (name, value) in from {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            continue;
        };
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        headers.append(name, value);
    }
}

/// A short plain-text answer of the worker's own (504, 413, /readyz, …).
pub fn text(status: u16, text: &str) -> Answer {
    with_type(status, Bytes::copy_from_slice(text.as_bytes()), PLAIN_TEXT)
}

/// The answer to a request shed because `max_queue` requests were waiting: come back in a
/// second.
pub fn shed() -> Answer {
    let mut answer = text(503, "overloaded: too many requests waiting, retry later\n");
    answer
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    answer
}

/// The `/metrics` text.
pub fn metrics(text: String) -> Answer {
    with_type(
        200,
        Bytes::from(text),
        "text/plain; version=0.0.4; charset=utf-8",
    )
}

/// A refusal: a text (none for an empty one) and headers of its own.
pub fn refusal(status: u16, text: &str, headers: Vec<(&'static str, HeaderValue)>) -> Answer {
    let mut answer = match text.is_empty() {
        true => with_status(status, Bytes::new()),
        false => self::text(status, text),
    };
    for (name, value) in headers {
        answer
            .headers_mut()
            .append(HeaderName::from_static(name), value);
    }
    answer
}

fn with_type(status: u16, body: Bytes, content_type: &'static str) -> Answer {
    let mut answer = with_status(status, body);
    answer
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    answer
}

fn with_status(status: u16, body: Bytes) -> Answer {
    let mut answer = hyper::Response::new(AnswerBody::whole(body));
    *answer.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    answer
}

/// The length of an answer's body.
pub fn body_len(answer: &Answer) -> u64 {
    answer.body().size_hint().exact().unwrap_or(0)
}

/// Writes `ip:port`. IPv4, the common case, without the formatting machinery: through
/// `fmt` it cost about 5% of the worker's instructions per request (callgrind).
fn push_address(text: &mut Vec<u8>, address: &std::net::SocketAddr) {
    if address.is_ipv6() {
        use std::io::Write;
        let _ = write!(text, "{address}"); // `[ip]:port`
        return;
    }
    push_ip(text, address);
    text.push(b':');
    push_decimal(text, address.port().into(), 1);
}

/// Writes the IP address of `address` (IPv4 without `fmt`, see [`push_address`]).
pub fn push_ip(text: &mut Vec<u8>, address: &std::net::SocketAddr) {
    match address {
        std::net::SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    text.push(b'.');
                }
                push_decimal(text, octet.into(), 1);
            }
        }
        std::net::SocketAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(text, "{}", v6.ip());
        }
    }
}

/// Writes `value` in decimal, with leading zeros to at least `width` digits (at most 20).
pub fn push_decimal(text: &mut Vec<u8>, mut value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    at = at.min(digits.len().saturating_sub(width));
    text.extend_from_slice(&digits[at..]);
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

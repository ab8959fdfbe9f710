//! The request an app reads and the response it returns.

use std::borrow::Cow;

use std::ffi::c_void;
use std::time::{Duration, Instant};

use crate::abi::{MsrHeader, MsrHost, MsrRequest, NO_DEADLINE};

/// One HTTP request, borrowed from the worker for the duration of [`crate::App::handle`].
pub struct Request<'a> {
    raw: &'a MsrRequest,
    /// When the request's deadline passes, read from the time left at `from_raw`.
    deadline: Option<Instant>,
}

/// Bytes the worker passed as text; the worker only sends ASCII there, so a non-UTF-8 value
/// can only come from a foreign host and reads as empty.
fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or("")
}

/// Decodes one component of an `application/x-www-form-urlencoded` query: `+` is a space and
/// `%XX` a byte. An invalid escape (`%zz`, a trailing `%`) stays as is; bytes that do not form
/// UTF-8 become U+FFFD. Borrows when there is nothing to decode.
fn form_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    // The byte that the two hex digits at the start of `rest` stand for.
    let escaped = |rest: &[u8]| {
        let digit = |i: usize| (*rest.get(i)? as char).to_digit(16);
        Some((digit(0)? * 16 + digit(1)?) as u8)
    };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match escaped(&bytes[i + 1..]) {
                Some(byte) => {
                    out.push(byte);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    Cow::Owned(match String::from_utf8(out) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

impl<'a> Request<'a> {
    /// # Safety
    /// Every pointer in `raw` must be valid for `'a`, as the worker guarantees during `handle`.
    pub unsafe fn from_raw(raw: &'a MsrRequest) -> Request<'a> {
        let deadline = match raw.time_left_us {
            NO_DEADLINE => None,
            left => Instant::now().checked_add(Duration::from_micros(left)),
        };
        Request { raw, deadline }
    }

    /// The worker's view of the request.
    pub(crate) fn raw(&self) -> &'a MsrRequest {
        self.raw
    }

    pub fn method(&self) -> &'a str {
        // SAFETY: `from_raw`'s contract: the run `method` points at is valid for `'a`.
        text(unsafe { self.raw.method.as_slice() })
    }

    /// The path as sent, without the query string (not percent-decoded).
    pub fn path(&self) -> &'a str {
        // SAFETY: `from_raw`'s contract: the run `path` points at is valid for `'a`.
        text(unsafe { self.raw.path.as_slice() })
    }

    /// The query string without its `?`; empty when there is none.
    pub fn query(&self) -> &'a str {
        // SAFETY: `from_raw`'s contract: the run `query` points at is valid for `'a`.
        text(unsafe { self.raw.query.as_slice() })
    }

    /// All query parameters in the order sent, as (name, value), both decoded like a form
    /// (`+` and `%XX`). Empty segments (`a=1&&b=2`) are skipped; a segment without `=` has an
    /// empty value.
    pub fn query_pairs(&self) -> impl Iterator<Item = (Cow<'a, str>, Cow<'a, str>)> + 'a {
        self.query()
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (form_decode(key), form_decode(value))
            })
    }

    /// The first value of a query parameter, decoded as in [`Request::query_pairs`]; the
    /// names are compared after decoding.
    pub fn query_param(&self, name: &str) -> Option<Cow<'a, str>> {
        self.query_pairs()
            .find_map(|(key, value)| (key == name).then_some(value))
    }

    fn raw_headers(&self) -> &'a [MsrHeader] {
        if self.raw.header_count == 0 || self.raw.headers.is_null() {
            return &[];
        }
        // SAFETY: `from_raw`'s contract: `headers` (not NULL, checked above) points at
        // `header_count` headers valid for `'a`.
        unsafe { std::slice::from_raw_parts(self.raw.headers, self.raw.header_count) }
    }

    /// All headers in the order received, as (name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.raw_headers()
            .iter()
            // SAFETY: `from_raw`'s contract: each header's name and value runs are valid
            // for `'a`.
            .map(|h| unsafe { (text(h.name.as_slice()), text(h.value.as_slice())) })
    }

    /// The first header of that name, compared without regard to case.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    pub fn body(&self) -> &'a [u8] {
        // SAFETY: `from_raw`'s contract: the run `body` points at is valid for `'a`.
        unsafe { self.raw.body.as_slice() }
    }

    /// The client's address, `ip:port`.
    pub fn peer(&self) -> &'a str {
        // SAFETY: `from_raw`'s contract: the run `peer` points at is valid for `'a`.
        text(unsafe { self.raw.peer.as_slice() })
    }

    /// The request's ID: the client's `X-Request-ID` when it is sane, else one the worker
    /// made up. It is in the response's `X-Request-ID` and in the access log too.
    pub fn id(&self) -> &'a str {
        // SAFETY: `from_raw`'s contract: the run `id` points at is valid for `'a`.
        text(unsafe { self.raw.id.as_slice() })
    }

    /// The protocol of the request line: `HTTP/1.1` or `HTTP/1.0`.
    pub fn version(&self) -> &'a str {
        // SAFETY: `from_raw`'s contract: the run `version` points at is valid for `'a`.
        text(unsafe { self.raw.version.as_slice() })
    }

    /// When the request's deadline passes (`request_timeout_s` after the worker read it,
    /// its time in the queue included): the worker answers 504 then, and the request reads
    /// as cancelled. `None` without a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The worker's functions for this request, when it gave them.
    pub(crate) fn host(&self) -> Option<(&'a MsrHost, *mut c_void)> {
        // SAFETY: `from_raw`'s contract covers `host`, valid during `handle`.
        unsafe { self.raw.host.as_ref() }.map(|host| (host, self.raw.host_ctx))
    }
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method())
            .field("path", &self.path())
            .field("query", &self.query())
            .field("body_len", &self.body().len())
            .finish()
    }
}

/// What an app answers: status, headers and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// An empty response with this status.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status)
            .with_header("Content-Type", "text/plain; charset=utf-8")
            .with_body(body.into())
    }

    /// An `application/json` response from JSON text the app produced.
    pub fn json(status: u16, json: impl Into<String>) -> Response {
        Response::new(status)
            .with_header("Content-Type", "application/json")
            .with_body(json.into())
    }

    /// An `application/json` response serialized with serde (feature `json`).
    #[cfg(feature = "json")]
    pub fn json_value<T: serde::Serialize + ?Sized>(status: u16, value: &T) -> Response {
        match serde_json::to_string(value) {
            Ok(json) => Response::json(status, json),
            Err(e) => Response::text(500, format!("could not serialize the response: {e}\n")),
        }
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::MsrBytes;

    /// A request with only a query string, as the worker would pass it.
    fn raw(query: &str) -> MsrRequest {
        MsrRequest {
            method: MsrBytes::from_slice(b"GET"),
            path: MsrBytes::from_slice(b"/"),
            query: MsrBytes::from_slice(query.as_bytes()),
            headers: std::ptr::null(),
            header_count: 0,
            body: MsrBytes::EMPTY,
            peer: MsrBytes::from_slice(b"127.0.0.1:1"),
            id: MsrBytes::from_slice(b"test"),
            host: std::ptr::null(),
            host_ctx: std::ptr::null_mut(),
            version: MsrBytes::from_slice(b"HTTP/1.1"),
            time_left_us: NO_DEADLINE,
        }
    }

    fn param(query: &str, name: &str) -> Option<String> {
        let raw = raw(query);
        // SAFETY: `raw` and `query` outlive the request.
        let request = unsafe { Request::from_raw(&raw) };
        request.query_param(name).map(Cow::into_owned)
    }

    fn pairs(query: &str) -> Vec<(String, String)> {
        let raw = raw(query);
        // SAFETY: `raw` and `query` outlive the request.
        let request = unsafe { Request::from_raw(&raw) };
        request
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    #[test]
    fn the_deadline_is_the_time_left_from_now() {
        let mut raw = raw("");
        // SAFETY: `raw` outlives the request.
        assert_eq!(unsafe { Request::from_raw(&raw) }.deadline(), None);
        raw.time_left_us = 2_000_000;
        let before = Instant::now();
        // SAFETY: `raw` outlives the request.
        let deadline = unsafe { Request::from_raw(&raw) }
            .deadline()
            .expect("a deadline");
        assert!(deadline >= before + Duration::from_secs(2));
        assert!(deadline <= Instant::now() + Duration::from_secs(2));
        // SAFETY: `raw` outlives the request.
        assert_eq!(unsafe { Request::from_raw(&raw) }.version(), "HTTP/1.1");
    }

    #[test]
    fn query_param_decodes_percent_escapes() {
        assert_eq!(param("q=a%20b", "q").as_deref(), Some("a b"));
        assert_eq!(param("q=%2B%26%3d", "q").as_deref(), Some("+&="));
    }

    #[test]
    fn query_param_decodes_plus_as_space() {
        assert_eq!(param("q=a+b", "q").as_deref(), Some("a b"));
    }

    #[test]
    fn query_param_decodes_utf8_sequences() {
        assert_eq!(param("q=%E2%82%AC", "q").as_deref(), Some("€"));
    }

    #[test]
    fn query_param_replaces_invalid_utf8() {
        assert_eq!(param("q=a%FFb", "q").as_deref(), Some("a\u{FFFD}b"));
    }

    #[test]
    fn query_param_keeps_invalid_escapes() {
        assert_eq!(param("q=%zz", "q").as_deref(), Some("%zz"));
        assert_eq!(param("q=a%", "q").as_deref(), Some("a%"));
        assert_eq!(param("q=a%4", "q").as_deref(), Some("a%4"));
        assert_eq!(param("q=%+1", "q").as_deref(), Some("% 1"));
    }

    #[test]
    fn query_param_decodes_the_key() {
        assert_eq!(param("na%6De=x", "name").as_deref(), Some("x"));
        assert_eq!(param("a+b=y", "a b").as_deref(), Some("y"));
        assert_eq!(param("na%6De=x", "na%6De"), None);
    }

    #[test]
    fn query_param_first_of_repeated_keys_wins() {
        assert_eq!(param("k=1&k=2", "k").as_deref(), Some("1"));
    }

    #[test]
    fn query_param_missing_key_is_none() {
        assert_eq!(param("a=1&b=2", "c"), None);
        assert_eq!(param("", "a"), None);
        assert_eq!(param("flag", "flag").as_deref(), Some(""));
    }

    #[test]
    fn query_param_borrows_when_nothing_to_decode() {
        let raw = raw("a=plain&b=x%20y");
        // SAFETY: `raw` outlives the request.
        let request = unsafe { Request::from_raw(&raw) };
        let v = request.query_param("a").expect("a is present");
        assert!(matches!(v, Cow::Borrowed("plain")));
        let v = request.query_param("b").expect("b is present");
        assert!(matches!(v, Cow::Owned(_)));
    }

    #[test]
    fn query_pairs_in_order_skipping_empty_segments() {
        let owned = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            pairs("b=2&&a=1&flag&=e&b=3&"),
            [
                owned("b", "2"),
                owned("a", "1"),
                owned("flag", ""),
                owned("", "e"),
                owned("b", "3"),
            ]
        );
        assert!(pairs("").is_empty());
        assert!(pairs("&&").is_empty());
    }
}

//! The request an app reads and the response it returns.

use crate::abi::{MsrHeader, MsrRequest};

/// One HTTP request, borrowed from the worker for the duration of [`crate::App::handle`].
pub struct Request<'a> {
    raw: &'a MsrRequest,
}

/// Bytes the worker passed as text; the worker only sends ASCII there, so a non-UTF-8 value
/// can only come from a foreign host and reads as empty.
fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or("")
}

impl<'a> Request<'a> {
    /// # Safety
    /// Every pointer in `raw` must be valid for `'a`, as the worker guarantees during `handle`.
    pub unsafe fn from_raw(raw: &'a MsrRequest) -> Request<'a> {
        Request { raw }
    }

    pub fn method(&self) -> &'a str {
        // SAFETY: `from_raw`'s contract.
        text(unsafe { self.raw.method.as_slice() })
    }

    /// The path as sent, without the query string (not percent-decoded).
    pub fn path(&self) -> &'a str {
        text(unsafe { self.raw.path.as_slice() })
    }

    /// The query string without its `?`; empty when there is none.
    pub fn query(&self) -> &'a str {
        text(unsafe { self.raw.query.as_slice() })
    }

    /// The first value of a query parameter, as sent (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&'a str> {
        self.query().split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
    }

    fn raw_headers(&self) -> &'a [MsrHeader] {
        if self.raw.header_count == 0 || self.raw.headers.is_null() {
            return &[];
        }
        // SAFETY: `from_raw`'s contract.
        unsafe { std::slice::from_raw_parts(self.raw.headers, self.raw.header_count) }
    }

    /// All headers in the order received, as (name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.raw_headers()
            .iter()
            .map(|h| unsafe { (text(h.name.as_slice()), text(h.value.as_slice())) })
    }

    /// The first header of that name, compared without regard to case.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    pub fn body(&self) -> &'a [u8] {
        unsafe { self.raw.body.as_slice() }
    }

    /// The client's address, `ip:port`.
    pub fn peer(&self) -> &'a str {
        text(unsafe { self.raw.peer.as_slice() })
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

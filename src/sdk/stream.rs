//! Streamed responses and cancellation: the app's side of the worker's [`MsrHost`]
//! functions (ABI 2).
//!
//! A stream sends its status and headers at once and then the body as the app writes it,
//! with chunked encoding (close-delimited for HTTP/1.0 clients). A write blocks while the
//! client reads slowly, and fails once the request is cancelled (the client left, or the
//! deadline passed): the app should then return.

use crate::abi::{MsrBytes, MsrHeader};
use crate::{Request, Response};

/// The request was cancelled: its client left, or its deadline passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request was cancelled (its client left or its deadline passed)")
    }
}

impl std::error::Error for Cancelled {}

/// A response being streamed; see [`Request::stream`].
pub struct Stream<'r, 'a> {
    request: &'r Request<'a>,
}

impl<'a> Request<'a> {
    /// Whether the request was cancelled: its client left, or its deadline passed. A long
    /// handler can look now and then and return early; the answer goes nowhere anyway.
    pub fn is_cancelled(&self) -> bool {
        match self.host() {
            // SAFETY: the worker's function, with the context it gave for this request.
            Some((host, ctx)) => unsafe { (host.is_cancelled)(ctx) != 0 },
            None => false,
        }
    }

    /// Starts streaming the response: `head`'s status and headers are sent at once (its
    /// body is ignored), then whatever [`Stream::write`] sends. The response ends when
    /// `handle` returns; what `handle` returns then is ignored ([`Stream::finish`] makes
    /// one).
    pub fn stream(&self, head: Response) -> Result<Stream<'_, 'a>, Cancelled> {
        let (host, ctx) = self.host().ok_or(Cancelled)?;
        let headers: Vec<MsrHeader> = head
            .headers
            .iter()
            .map(|(name, value)| MsrHeader {
                name: MsrBytes::from_slice(name.as_bytes()),
                value: MsrBytes::from_slice(value.as_bytes()),
            })
            .collect();
        // SAFETY: the worker's function; the headers live through the call.
        match unsafe { (host.stream_start)(ctx, head.status, headers.as_ptr(), headers.len()) } {
            0 => Ok(Stream { request: self }),
            _ => Err(Cancelled),
        }
    }

    /// Starts a Server-Sent Events stream (`text/event-stream`, not cached); send with
    /// [`Stream::event`].
    pub fn events(&self) -> Result<Stream<'_, 'a>, Cancelled> {
        self.stream(
            Response::new(200)
                .with_header("Content-Type", "text/event-stream")
                .with_header("Cache-Control", "no-cache"),
        )
    }
}

impl Stream<'_, '_> {
    /// Sends `bytes` of the body; blocks while the client is slow. `Err` once the request
    /// is cancelled: the response is cut off, and the app should return.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Cancelled> {
        let (host, ctx) = self.request.host().ok_or(Cancelled)?;
        if bytes.is_empty() {
            return Ok(());
        }
        // SAFETY: the worker's function; `bytes` lives through the call.
        match unsafe { (host.stream_write)(ctx, bytes.as_ptr(), bytes.len()) } {
            0 => Ok(()),
            _ => Err(Cancelled),
        }
    }

    /// Sends one Server-Sent Events record at once: `event:` (when given), `id:` (when
    /// given) and one `data:` line per line of `data`.
    pub fn event(
        &mut self,
        event: Option<&str>,
        data: &str,
        id: Option<&str>,
    ) -> Result<(), Cancelled> {
        let mut record = String::with_capacity(data.len() + 32);
        // Field values cannot hold line breaks: they would end the field.
        let one_line = |text: &str| text.replace(['\r', '\n'], " ");
        if let Some(event) = event {
            record.push_str(&format!("event: {}\n", one_line(event)));
        }
        if let Some(id) = id {
            record.push_str(&format!("id: {}\n", one_line(id)));
        }
        for line in data.split('\n') {
            record.push_str("data: ");
            record.push_str(line.strip_suffix('\r').unwrap_or(line));
            record.push('\n');
        }
        record.push('\n');
        self.write(record.as_bytes())
    }

    /// What `handle` returns after streaming (the worker ignores it).
    pub fn finish(self) -> Response {
        Response::new(200)
    }

    /// Ends the stream as cut off, for an app that failed half way: the connection closes
    /// without the body's end, so the client cannot take what it got for the whole answer.
    pub fn cut(self) -> Response {
        if let Some((host, ctx)) = self.request.host() {
            // SAFETY: the worker's function, with the context it gave for this request.
            unsafe { (host.stream_cut)(ctx) };
        }
        Response::new(500)
    }
}

#[cfg(test)]
mod tests {
    use super::Cancelled;

    #[test]
    fn cancelled_says_why() {
        assert!(Cancelled.to_string().contains("client left"));
    }
}

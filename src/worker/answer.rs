//! Every answer the worker sends: its body (whole, or streamed by the app), the status and
//! headers an app chose as HTTP allows them, and the worker's own answers (504, 413,
//! `/readyz`, …).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;
use tokio::time::Sleep;

/// Every answer the worker sends.
pub type Answer = hyper::Response<AnswerBody>;

/// An answer's body: whole (with its length), or streamed by the app.
pub enum AnswerBody {
    Whole(Option<Bytes>),
    /// Boxed: an answer is moved several times on its way, and most are whole.
    Streamed(Box<Streamed>),
}

impl AnswerBody {
    pub fn whole(bytes: Bytes) -> AnswerBody {
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

/// The body of a streamed answer, as hyper reads it: the pieces the app writes (see
/// `call`), until the app's `handle` returns. A stream that did not end that way is cut
/// off (the connection is closed without the last chunk), so a client never takes a cut
/// body for a whole one; at the deadline the body cuts itself off even while the app is
/// silent.
pub struct Streamed {
    receiver: mpsc::Receiver<Bytes>,
    /// Set when `handle` returned without the stream being cut off.
    ended: Arc<AtomicBool>,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Streamed {
    /// A body fed by `receiver`, whole once `ended` is set when the feed closes. Must be
    /// made inside the I/O runtime, whose timer cuts it off at `deadline`.
    pub fn new(
        receiver: mpsc::Receiver<Bytes>,
        ended: Arc<AtomicBool>,
        deadline: Option<Instant>,
    ) -> Streamed {
        Streamed {
            receiver,
            ended,
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at.into()))),
        }
    }
}

/// A stream cut off: hyper closes the connection without ending the body.
#[derive(Debug)]
pub struct Cut;

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the streamed answer was cut off")
    }
}

impl std::error::Error for Cut {}

impl Body for Streamed {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        if let Some(deadline) = self.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err(Cut)));
            }
        }
        match self.receiver.poll_recv(cx) {
            Poll::Ready(Some(piece)) => Poll::Ready(Some(Ok(Frame::data(piece)))),
            Poll::Ready(None) if self.ended.load(Ordering::Acquire) => Poll::Ready(None),
            Poll::Ready(None) => Poll::Ready(Some(Err(Cut))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The content type of the worker's own answers.
const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

/// An app's answer: its status (see [`app_status`]), its headers (see [`app_headers`]) and
/// its body.
pub fn from_app<'h>(
    status: u16,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    body: AnswerBody,
) -> Answer {
    let mut answer = hyper::Response::new(body);
    *answer.status_mut() = app_status(status);
    app_headers(answer.headers_mut(), headers);
    answer
}

/// The status an app chose, as sent: 0, out of range or 1xx (which HTTP/1.1 cannot send as
/// a final answer) is a 500.
fn app_status(status: u16) -> StatusCode {
    match status {
        200..=999 => StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Adds the app's headers, leaving out those that are not valid HTTP and the framing
/// headers, which hyper writes itself.
fn app_headers<'h>(headers: &mut HeaderMap, from: impl Iterator<Item = (&'h [u8], &'h [u8])>) {
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
    retry_later("overloaded: too many requests waiting, retry later\n")
}

/// A 503 with `Retry-After: 1`: the worker has no room for the request now.
pub fn retry_later(text: &str) -> Answer {
    let mut answer = self::text(503, text);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apps_status_out_of_range_or_informational_is_a_500() {
        for (given, sent) in [(200, 200), (404, 404), (999, 999), (0, 500), (101, 500)] {
            assert_eq!(app_status(given).as_u16(), sent, "{given}");
        }
    }

    #[test]
    fn an_apps_framing_and_invalid_headers_are_left_out() {
        let mut headers = HeaderMap::new();
        let given: [(&[u8], &[u8]); 4] = [
            (b"x-kept", b"1"),
            (b"content-length", b"9"),
            (b"bad name", b"2"),
            (b"transfer-encoding", b"chunked"),
        ];
        app_headers(&mut headers, given.into_iter());
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-kept"], "1");
    }
}

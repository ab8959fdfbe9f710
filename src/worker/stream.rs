//! A streamed answer: the app's host functions ([`HOST`], ABI 2) on the pool thread, and
//! the body hyper reads on the I/O side.
//!
//! `stream_start` sends the status and headers to the waiting I/O task at once, with a
//! body fed by a channel of at most [`QUEUED_PIECES`] pieces of at most [`PIECE`] bytes:
//! beyond what the socket holds, at most 64 KiB of a stream waits in the worker, and the
//! app's `stream_write` blocks until the client has read enough. A write fails once the
//! request is cancelled: its client left (hyper dropped the body), its deadline passed, or
//! the worker gave up on it. A stream that did not end with `handle` returning is cut off
//! (the connection is closed without the last chunk), so a client never takes a cut body
//! for a whole one; at the deadline the body cuts itself off even while the app is silent.

use std::ffi::c_void;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use microservice_rust::abi::{MsrHeader, MsrHost};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Sleep;

use super::bridge::{self, Answer};
use super::exchange;
use super::pool::Received;
use super::request_id::RequestId;

/// The largest piece a write is cut into.
const PIECE: usize = 16 * 1024;
/// Pieces waiting for hyper at most.
const QUEUED_PIECES: usize = 4;

/// The worker's functions, as every request of an ABI 2 app sees them.
pub static HOST: MsrHost = MsrHost {
    is_cancelled,
    stream_start,
    stream_write,
    stream_cut,
};

/// What the host functions reach during one call of the app's `handle` (its `host_ctx`).
pub struct Call<'c> {
    request: &'c Received,
    id: &'c RequestId,
    runtime: &'c tokio::runtime::Handle,
    /// Takes the I/O side's channel for the answer (none when the worker gave up on it).
    reply: &'c dyn Fn() -> Option<oneshot::Sender<Answer>>,
    feed: Option<Feed>,
    /// False in a batch, where a request's answer is the batch handler's response.
    streams: bool,
}

/// A started stream, on the app's side.
struct Feed {
    sender: mpsc::Sender<Bytes>,
    ended: Arc<AtomicBool>,
    status: u16,
    bytes: u64,
    /// The app cut the stream off (`stream_cut`).
    cut: bool,
}

/// The request a `host_ctx` belongs to, and its ID.
///
/// # Safety
/// `ctx` must be a `host_ctx` the pool passed to a `handle` still running on this thread.
pub unsafe fn request_of<'a>(ctx: *mut c_void) -> (&'a Received, &'a RequestId) {
    let call = unsafe { &*(ctx as *const Call<'a>) };
    (call.request, call.id)
}

impl<'c> Call<'c> {
    pub fn new(
        request: &'c Received,
        id: &'c RequestId,
        runtime: &'c tokio::runtime::Handle,
        reply: &'c dyn Fn() -> Option<oneshot::Sender<Answer>>,
    ) -> Call<'c> {
        Call {
            request,
            id,
            runtime,
            reply,
            feed: None,
            streams: true,
        }
    }

    /// For a request of a batch: `stream_start` fails.
    pub fn in_batch(mut self) -> Call<'c> {
        self.streams = false;
        self
    }

    /// The `host_ctx` the app passes back.
    pub fn context(&mut self) -> *mut c_void {
        (self as *mut Call).cast()
    }

    /// After `handle` returned: ends a stream that was not cut off, and says what it sent
    /// (status, body bytes); `None` when the app did not stream.
    pub fn finish(self) -> Option<(u16, u64)> {
        let feed = self.feed?;
        if !self.request.is_cancelled() && !feed.cut {
            feed.ended.store(true, Ordering::Release);
        }
        Some((feed.status, feed.bytes))
    }

    fn start(&mut self, status: u16, headers: &[MsrHeader]) -> i32 {
        if !self.streams
            || self.feed.is_some()
            || self.request.is_cancelled()
            || !self.request.starts_streaming()
        {
            return -1;
        }
        let Some(reply) = (self.reply)() else {
            return -1;
        };
        let (sender, receiver) = mpsc::channel(QUEUED_PIECES);
        let ended = Arc::new(AtomicBool::new(false));
        // The deadline's timer belongs to the I/O runtime, which polls the body.
        let _runtime = self.runtime.enter();
        let body = Streamed {
            receiver,
            ended: ended.clone(),
            deadline: self
                .request
                .deadline
                .map(|at| Box::pin(tokio::time::sleep_until(at.into()))),
        };
        let status = bridge::app_status(status);
        let mut answer = hyper::Response::new(bridge::AnswerBody::Streamed(Box::new(body)));
        *answer.status_mut() = status;
        bridge::app_headers(
            answer.headers_mut(),
            headers.iter().map(|h| {
                // SAFETY: the app's headers live through `stream_start`.
                unsafe { (h.name.as_slice(), h.value.as_slice()) }
            }),
        );
        self.id.stamp(answer.headers_mut());
        if reply.send(answer).is_err() {
            self.request.cancel();
            return -1;
        }
        self.feed = Some(Feed {
            sender,
            ended,
            status: status.as_u16(),
            bytes: 0,
            cut: false,
        });
        0
    }

    fn cut(&mut self) -> i32 {
        match &mut self.feed {
            Some(feed) => {
                feed.cut = true;
                0
            }
            None => -1,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> i32 {
        let (Some(feed), false) = (&mut self.feed, self.request.is_cancelled()) else {
            return -1;
        };
        if feed.cut {
            return -1;
        }
        for piece in bytes.chunks(PIECE) {
            let length = piece.len() as u64;
            let piece = Bytes::copy_from_slice(piece);
            let sent = match feed.sender.try_send(piece) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => false,
                Err(mpsc::error::TrySendError::Full(piece)) => {
                    let deadline = self.request.deadline;
                    let sender = &feed.sender;
                    self.runtime.block_on(async move {
                        tokio::select! {
                            sent = sender.send(piece) => sent.is_ok(),
                            () = exchange::until(deadline) => false,
                        }
                    })
                }
            };
            if !sent {
                // The client left (hyper dropped the body) or the deadline passed.
                self.request.cancel();
                return -1;
            }
            feed.bytes += length;
        }
        0
    }
}

/// Runs a host function; a panic in it (a bug of ours) must not unwind into the app: it
/// fails the call instead.
fn guarded(f: impl FnOnce() -> i32) -> i32 {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(-1)
}

unsafe extern "C" fn is_cancelled(ctx: *mut c_void) -> i32 {
    // SAFETY: `ctx` is the `Call` the pool passed with this request, alive during `handle`.
    let call = unsafe { &*(ctx as *const Call) };
    guarded(|| i32::from(call.request.is_cancelled()))
}

unsafe extern "C" fn stream_start(
    ctx: *mut c_void,
    status: u16,
    headers: *const MsrHeader,
    header_count: usize,
) -> i32 {
    // SAFETY: as above; the app's headers are valid for `header_count` entries.
    let call = unsafe { &mut *(ctx as *mut Call) };
    let headers = match (headers.is_null(), header_count) {
        (_, 0) | (true, _) => &[][..],
        _ => unsafe { std::slice::from_raw_parts(headers, header_count) },
    };
    guarded(|| call.start(status, headers))
}

unsafe extern "C" fn stream_write(ctx: *mut c_void, bytes: *const u8, len: usize) -> i32 {
    // SAFETY: as above; `bytes` is valid for `len` bytes.
    let call = unsafe { &mut *(ctx as *mut Call) };
    let bytes = match (bytes.is_null(), len) {
        (_, 0) | (true, _) => &[][..],
        _ => unsafe { std::slice::from_raw_parts(bytes, len) },
    };
    guarded(|| call.write(bytes))
}

unsafe extern "C" fn stream_cut(ctx: *mut c_void) -> i32 {
    // SAFETY: as above.
    let call = unsafe { &mut *(ctx as *mut Call) };
    guarded(|| call.cut())
}

/// The body of a streamed answer, as hyper reads it.
pub struct Streamed {
    receiver: mpsc::Receiver<Bytes>,
    /// Set when `handle` returned without the stream being cut off.
    ended: Arc<AtomicBool>,
    deadline: Option<Pin<Box<Sleep>>>,
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

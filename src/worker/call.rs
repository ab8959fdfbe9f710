//! What the app may call during one request, through the `host` and `host_ctx` of its view
//! (ABI 2): whether the request is cancelled, and a streamed answer.
//!
//! `stream_start` sends the status and headers to the waiting I/O task at once, with a
//! body ([`Streamed`]) fed by a channel of at most [`QUEUED_PIECES`] pieces of at most
//! [`PIECE`] bytes: beyond what the socket holds, at most 64 KiB of a stream waits in the
//! worker, and the app's `stream_write` blocks until the client has read enough. A write
//! fails once the request is cancelled: its client left (hyper dropped the body), its
//! deadline passed, or the worker gave up on it. A stream ends whole only when `handle`
//! returns without having cut it off (`stream_cut`).

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use microservice_rust::abi::{MsrHeader, MsrHost};
use tokio::sync::{mpsc, oneshot};

use super::answer::{self, Answer, AnswerBody, Streamed};
use super::fault::guarded;
use super::request::{until, Cancel, Received};
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
    // SAFETY: this function's contract: `ctx` is the `context()` of a `Call` whose `handle`
    // runs on this thread now, so the `Call` lives (on the pool thread's stack) at least
    // until that `handle` returns, and this thread is the only one that reaches it.
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
        let body = {
            // The deadline's timer belongs to the I/O runtime, which polls the body.
            let _runtime = self.runtime.enter();
            Streamed::new(receiver, ended.clone(), self.request.deadline)
        };
        let headers = headers.iter().map(|h| {
            // SAFETY: the app's headers live through `stream_start`.
            unsafe { (h.name.as_slice(), h.value.as_slice()) }
        });
        let mut answer = answer::from_app(status, headers, AnswerBody::Streamed(Box::new(body)));
        self.id.stamp(answer.headers_mut());
        let status = answer.status().as_u16();
        if reply.send(answer).is_err() {
            self.request.cancel(Cancel::ClientLeft);
            return -1;
        }
        self.feed = Some(Feed {
            sender,
            ended,
            status,
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
                            () = until(deadline) => false,
                        }
                    })
                }
            };
            if !sent {
                // The client left (hyper dropped the body) or the deadline passed.
                self.request.cancel(Cancel::ClientLeft);
                return -1;
            }
            feed.bytes += length;
        }
        0
    }
}

unsafe extern "C" fn is_cancelled(ctx: *mut c_void) -> i32 {
    // SAFETY: the ABI: the app calls this only with the `host_ctx` of its request, on the
    // thread running that request's `handle`, while it runs; that is the `context()` of
    // the `Call` the pool (or the batch) keeps alive until `handle` returns.
    let call = unsafe { &*(ctx as *const Call) };
    guarded("is_cancelled", -1, || {
        i32::from(call.request.is_cancelled())
    })
}

unsafe extern "C" fn stream_start(
    ctx: *mut c_void,
    status: u16,
    headers: *const MsrHeader,
    header_count: usize,
) -> i32 {
    // SAFETY: as in `is_cancelled`; the reference is unique: the pool holds no reference
    // to the `Call` while `handle` runs (it only made the pointer), and a host function
    // runs on the request's own thread, so no other one reaches the `Call` meanwhile.
    let call = unsafe { &mut *(ctx as *mut Call) };
    let headers = match (headers.is_null(), header_count) {
        (_, 0) | (true, _) => &[][..],
        // SAFETY: the ABI: `headers` (not NULL) points at `header_count` headers, valid
        // for the call; `start` copies what it keeps.
        _ => unsafe { std::slice::from_raw_parts(headers, header_count) },
    };
    guarded("stream_start", -1, || call.start(status, headers))
}

unsafe extern "C" fn stream_write(ctx: *mut c_void, bytes: *const u8, len: usize) -> i32 {
    // SAFETY: as in `stream_start`.
    let call = unsafe { &mut *(ctx as *mut Call) };
    let bytes = match (bytes.is_null(), len) {
        (_, 0) | (true, _) => &[][..],
        // SAFETY: the ABI: `bytes` (not NULL) points at `len` bytes valid for the call;
        // `write` copies them.
        _ => unsafe { std::slice::from_raw_parts(bytes, len) },
    };
    guarded("stream_write", -1, || call.write(bytes))
}

unsafe extern "C" fn stream_cut(ctx: *mut c_void) -> i32 {
    // SAFETY: as in `stream_start`.
    let call = unsafe { &mut *(ctx as *mut Call) };
    guarded("stream_cut", -1, || call.cut())
}

//! One request and its answer, on the I/O side: everything between hyper handing over a
//! parsed head and hyper writing the answer.
//!
//! 1. `/readyz` is answered here and `/metrics` on the runtime's one blocking thread, so
//!    both answer while every pool thread is stuck.
//! 2. The head is checked (`screen`): framing hyper lets through, CORS preflights, the API
//!    key. A refusal is answered without reading the body.
//! 3. The body is read in full here, within `max_body_bytes` (declared or counted as it
//!    arrives, chunked too) and within the worker's budget for bodies ([`Budget`]: 503
//!    when it does not fit), a few bodies at a time ([`next_frame`]), and it must keep
//!    arriving: no byte for `keep_alive_timeout_s`, or not all of it by the request's
//!    deadline, is a 408. A pool thread never waits on a client.
//! 4. The request goes to the pool's queue, and this task waits for its answer with a timer
//!    at the request's deadline: 504 at the deadline, whether the request is still queued
//!    (it then never reaches the app) or inside the app (its thread is written off). When
//!    the worker gives up on its requests, the pool answers them 503 itself.
//! 5. Every answer leaves through [`deliver`]: CORS headers for an allowed origin,
//!    `Connection: close` where the stream cannot be trusted or the worker is retiring, and
//!    the metrics and the access line for the answers the pool did not record already.
//!
//! Nothing here blocks: the app runs only on the pool's threads.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, CONNECTION, VARY};
use http::request::Parts;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use tokio::sync::{oneshot, Semaphore};

use super::answer::{self, Answer};
use super::budget::{Budget, Held};
use super::pool::{Pool, Submitted};
use super::request::{until, Kind, Received};
use super::request_id::{IdSeed, RequestId};
use super::screen::Verdict;
use super::shared::{Context, Limits, Phase};
use crate::metrics::{Closed, Event};
use crate::say;

/// hyper's service: one request in, one answer out.
pub async fn handle(
    context: Arc<Context>,
    peer: SocketAddr,
    request: hyper::Request<Incoming>,
) -> Result<Answer, Infallible> {
    let received = Instant::now();
    let _counted = context.enter();
    let (head, mut body) = request.into_parts();
    let seed = context.ids.seed();
    let (answer, cors, head) = match context.screen.check(&head) {
        Verdict::Refuse(refusal) => {
            // A body left unread in the stream ends the connection too (hyper would
            // otherwise have to read it at the client's pace).
            let ends = (refusal.ends || !body.is_end_stream()).then_some(Closed::Answered);
            let answer = answer::refusal(refusal.status, &refusal.text, refusal.headers);
            (
                Reply::new(answer, ends),
                refusal.cors,
                Head::Kept(head, seed),
            )
        }
        Verdict::Pass { cors } => {
            let (reply, head) = answer(&context, head, &mut body, peer, received, seed).await;
            (reply, cors, head)
        }
    };
    if answer.ends.is_some() && !body.is_end_stream() && !expects_continue(head.parts()) {
        linger(body, context.limits.turns.clone());
    }
    Ok(deliver(&context, &head, peer, received, answer, cors))
}

/// How long the rest of a refused body is read and thrown away; see [`linger`].
const LINGER: Duration = Duration::from_secs(2);

/// After an answer that ends its connection before the body was read, the rest of the body
/// is read and thrown away for up to [`LINGER`] (as Apache's lingering close does) while
/// hyper writes the answer: a socket closed with unread input sends a reset, which can
/// destroy the answer on its way to a client that is still sending.
fn linger(mut body: Incoming, turns: Arc<Semaphore>) {
    tokio::spawn(async move {
        let rest = async {
            while let Ok(Some(Ok(_))) = next_frame(&turns, &mut body, None, LINGER).await {}
        };
        let _ = tokio::time::timeout(LINGER, rest).await;
    });
}

/// A client that sent `Expect: 100-continue` sends no body until told to.
fn expects_continue(head: &Parts) -> bool {
    head.headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// An answer, why its connection must end after it if it must, and whether the pool made
/// it (the pool records and stamps with the request's ID what it sends).
struct Reply {
    answer: Answer,
    ends: Option<Closed>,
    by_pool: bool,
}

impl Reply {
    fn new(answer: Answer, ends: Option<Closed>) -> Reply {
        Reply {
            answer,
            ends,
            by_pool: false,
        }
    }

    fn from_pool(answer: Answer) -> Reply {
        Reply {
            by_pool: true,
            ..Reply::new(answer, None)
        }
    }

    fn text(status: u16, text: &str) -> Reply {
        Reply::new(answer::text(status, text), None)
    }
}

/// The request's head: still here, or shared with the pool. (It lives in the request's
/// future, once; boxing the larger variant would cost an allocation per request.)
#[allow(clippy::large_enum_variant)]
enum Head {
    Kept(Parts, IdSeed),
    Shared(Arc<Received>),
}

impl Head {
    fn parts(&self) -> &Parts {
        match self {
            Head::Kept(parts, _) => parts,
            Head::Shared(received) => &received.head,
        }
    }

    fn id(&self) -> RequestId {
        match self {
            Head::Kept(parts, seed) => seed.id(parts),
            Head::Shared(received) => received.id(),
        }
    }
}

/// The answer to a request that passed the screen.
async fn answer(
    context: &Context,
    head: Parts,
    body: &mut Incoming,
    peer: SocketAddr,
    received: Instant,
    seed: IdSeed,
) -> (Reply, Head) {
    let kind = match head.uri.path() {
        "/readyz" => {
            let reply = match context.is_ready() {
                true => Reply::text(200, "ready\n"),
                false => Reply::text(503, "not ready\n"),
            };
            return (reply, Head::Kept(head, seed));
        }
        "/metrics" => return (metrics_text(context).await, Head::Kept(head, seed)),
        "/healthz" => Kind::Health,
        _ => Kind::App,
    };
    let deadline = context.limits.timeout.map(|t| received + t);
    let body = match read_body(&context.limits, body, deadline).await {
        Ok(body) => body,
        Err(fault) => {
            if let BodyFault::NoRoom(_) = fault {
                context.metrics.count(Event::BodyRefused);
            }
            return (fault.reply(), Head::Kept(head, seed));
        }
    };
    let request = Arc::new(Received::new(
        head,
        body,
        peer,
        (received, deadline),
        seed,
        kind,
    ));
    let reply = through_pool(context, &request, deadline).await;
    (reply, Head::Shared(request))
}

async fn metrics_text(context: &Context) -> Reply {
    let metrics = context.metrics;
    match tokio::task::spawn_blocking(move || metrics.render()).await {
        Ok(text) => Reply::new(answer::metrics(text), None),
        Err(_) => Reply::text(500, "cannot render the metrics\n"),
    }
}

/// Hands the request to the pool and waits for its answer or its deadline. (When the
/// worker gives up on its requests, the pool answers them 503 itself.)
async fn through_pool(
    context: &Context,
    request: &Arc<Received>,
    deadline: Option<Instant>,
) -> Reply {
    let mut reply = match context.pool.submit(request.clone()) {
        Submitted::Queued(reply) => reply,
        Submitted::Shed => {
            context.metrics.count(Event::Shed);
            return Reply::new(answer::shed(), None);
        }
        Submitted::Stopped => return Reply::text(503, "shutting down\n"),
    };
    // If hyper drops this future (the client left), a request still queued never
    // reaches the app, and one inside it is cancelled.
    let _waiting = Waiting {
        pool: &context.pool,
        request,
    };
    let spun = match context.connections.open() {
        1 => spin(context, &mut reply),
        _ => None,
    };
    let answered = match spun {
        Some(answered) => answered,
        None => {
            let answered = tokio::select! {
                biased;
                answer = &mut reply => answer,
                () = until(deadline) => {
                    if context.pool.expire(request) {
                        return timed_out(context, request);
                    }
                    // The pool answered just now; its answer is on its way.
                    reply.await
                }
            };
            answered.map_err(|_| ())
        }
    };
    match answered {
        Ok(answer) => Reply::from_pool(answer),
        // The app returned past the deadline: its answer is not sent.
        Err(()) if request.is_late() => timed_out(context, request),
        Err(()) => Reply::text(503, "shutting down\n"),
    }
}

/// [`spin_for_answer`] while it pays: an answer that took longer than [`SPIN_PAYS`] (or
/// did not come in [`SPIN_FOR`]) cost the I/O thread more than the wake-up it saved, so
/// the next [`SPIN_SKIPS`] requests wait asleep (a slow app, a Python app) and the spin
/// is tried again after them.
fn spin(context: &Context, reply: &mut oneshot::Receiver<Answer>) -> Option<Result<Answer, ()>> {
    let skips = context.spin_skips.load(Ordering::Relaxed);
    if skips > 0 {
        context.spin_skips.store(skips - 1, Ordering::Relaxed);
        return None;
    }
    let started = Instant::now();
    let spun = spin_for_answer(reply);
    if spun.is_none() || started.elapsed() > SPIN_PAYS {
        context.spin_skips.store(SPIN_SKIPS, Ordering::Relaxed);
    }
    spun
}

/// The 504 of a request whose deadline passed, counted and logged.
fn timed_out(context: &Context, request: &Received) -> Reply {
    context.metrics.count(Event::Timeout);
    say!(
        "request {} ({} {}) timed out after {:.3}s: answered 504",
        request.id().as_str(),
        request.head.method,
        request.head.uri.path(),
        request.received.elapsed().as_secs_f64()
    );
    Reply::text(504, "request timed out\n")
}

/// Reads the whole body within the limits; see the module docs.
async fn read_body(
    limits: &Limits,
    body: &mut Incoming,
    deadline: Option<Instant>,
) -> Result<(Bytes, Option<Held>), BodyFault> {
    let limit = limits.max_body;
    let hint = body.size_hint();
    let declared = hint.exact();
    if hint.lower() > limit {
        return Err(BodyFault::TooLarge(limit));
    }
    if declared == Some(0) {
        return Ok((Bytes::new(), None));
    }
    let no_room = || BodyFault::NoRoom(limits.bodies.limit());
    // A declared body takes its whole length now (its buffer is reserved at that size); a
    // chunked one as it arrives.
    let mut held = Budget::take(&limits.bodies, declared.unwrap_or(0)).ok_or_else(no_room)?;
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut read: u64 = 0;
    loop {
        let frame = match next_frame(&limits.turns, body, deadline, limits.body_idle).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyFault::Broken { read, declared, e }),
            Err(NoFrame::Deadline) => return Err(BodyFault::Late),
            Err(NoFrame::Idle) => return Err(BodyFault::Stalled(limits.body_idle)),
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        read += data.len() as u64;
        if read > limit {
            return Err(BodyFault::TooLarge(limit));
        }
        if read > held.bytes() && !held.grow(read - held.bytes()) {
            return Err(no_room());
        }
        match &first {
            None if rest.is_empty() => first = Some(data),
            _ => {
                if let Some(first) = first.take() {
                    let room = declared.unwrap_or(read).min(limit) as usize;
                    rest.reserve(room.max(first.len() + data.len()));
                    rest.extend_from_slice(&first);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok((first.unwrap_or_else(|| rest.freeze()), Some(held)))
}

/// How long a body may keep its turn waiting for its next frame; see [`next_frame`].
const TURN_WAIT: Duration = Duration::from_millis(1);

/// Why [`next_frame`] has no frame.
enum NoFrame {
    /// The request's deadline came.
    Deadline,
    /// No byte for the time allowed.
    Idle,
}

/// The next frame of `body`, read in turn. Reading a body costs the I/O thread a copy of
/// every byte; when many clients upload at once, every request on that thread waits behind
/// all of them (measured: 500 clients uploading 10 MiB each made a fresh `GET /` wait 95 ms
/// at the median, 8 at a time per I/O thread 4). So a body waits for one of `turns` before
/// it reads, and gives it back after each frame, or after [`TURN_WAIT`] without one: a
/// body that trickles holds no turn while it waits (on `idle`: no byte for that long, or
/// the deadline, ends the wait). The wait for a turn counts against the deadline only.
async fn next_frame(
    turns: &Semaphore,
    body: &mut Incoming,
    deadline: Option<Instant>,
    idle: Duration,
) -> Result<Option<Result<Frame<Bytes>, hyper::Error>>, NoFrame> {
    let turn = match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), turns.acquire())
            .await
            .map_err(|_| NoFrame::Deadline)?,
        None => turns.acquire().await,
    };
    if let Ok(frame) = tokio::time::timeout(TURN_WAIT, body.frame()).await {
        return Ok(frame);
    }
    drop(turn);
    let quiet = Instant::now() + idle;
    let until = deadline.map_or(quiet, |d| d.min(quiet));
    match tokio::time::timeout_at(until.into(), body.frame()).await {
        Ok(frame) => Ok(frame),
        Err(_) if deadline.is_some_and(|d| until >= d) => Err(NoFrame::Deadline),
        Err(_) => Err(NoFrame::Idle),
    }
}

/// Sends an answer on its way: CORS, `Connection: close`, and (unless the pool did)
/// the metrics, the access line and the request's ID.
fn deliver(
    context: &Context,
    head: &Head,
    peer: SocketAddr,
    received: Instant,
    reply: Reply,
    cors: Option<HeaderValue>,
) -> Answer {
    let Reply {
        mut answer,
        ends,
        by_pool,
    } = reply;
    let headers = answer.headers_mut();
    if let Some(origin) = cors {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.append(VARY, HeaderValue::from_static("Origin"));
    }
    if let Some(reason) = ends {
        context.metrics.count(Event::Closed(reason));
    }
    if ends.is_some() || context.phase() != Phase::Serving {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    if !by_pool {
        let id = head.id();
        id.stamp(headers);
        let (status, bytes) = (answer.status().as_u16(), answer::body_len(&answer));
        context
            .ledger
            .record(head.parts(), peer, status, bytes, received.elapsed(), &id);
    }
    answer
}

/// Why a body was not read.
enum BodyFault {
    /// Over `max_body_bytes` (the limit).
    TooLarge(u64),
    /// The worker holds its `max_body_memory_bytes` (the limit) of bodies already.
    NoRoom(u64),
    /// Still arriving at the request's deadline.
    Late,
    /// Nothing arrived for this long.
    Stalled(Duration),
    /// The connection ended or the framing broke.
    Broken {
        read: u64,
        declared: Option<u64>,
        e: hyper::Error,
    },
}

impl BodyFault {
    /// The answer, which ends the connection: the rest of the body may still be in the
    /// stream.
    fn reply(self) -> Reply {
        let (status, text) = match self {
            BodyFault::NoRoom(limit) => {
                let text = format!(
                    "busy: the worker holds its {limit} bytes of request bodies \
                     (max_body_memory_bytes), retry later\n"
                );
                return Reply::new(answer::retry_later(&text), Some(Closed::Answered));
            }
            BodyFault::TooLarge(limit) => (
                413,
                format!("request body too large: the limit is {limit} bytes\n"),
            ),
            BodyFault::Late => (
                408,
                "the request body did not arrive within request_timeout_s\n".to_string(),
            ),
            BodyFault::Stalled(idle) => (
                408,
                format!(
                    "the request body stopped arriving for {} s (keep_alive_timeout_s)\n",
                    idle.as_secs_f64()
                ),
            ),
            BodyFault::Broken {
                read,
                declared: Some(declared),
                ..
            } if read < declared => (
                400,
                format!("the request body ended after {read} of its {declared} bytes\n"),
            ),
            BodyFault::Broken { e, .. } => (400, format!("could not read the request body: {e}\n")),
        };
        let reason = match status {
            408 => Closed::BodyTimeout,
            _ => Closed::Answered,
        };
        Reply::new(answer::text(status, &text), Some(reason))
    }
}

/// How long the I/O thread of a worker with one connection looks for an answer before it
/// sleeps; see [`spin_for_answer`].
const SPIN_FOR: Duration = Duration::from_micros(50);
/// An answer found by spinning later than this cost more than a wake-up (a few µs of system
/// calls and context switches on both threads) would have.
const SPIN_PAYS: Duration = Duration::from_micros(15);
/// How many requests wait asleep after a spin that did not pay.
const SPIN_SKIPS: u32 = 64;

/// With one connection open, the I/O thread has nothing else to do while the pool works:
/// it looks for the answer for up to [`SPIN_FOR`] instead of sleeping, so the pool thread
/// that answers does not have to wake it (a system call and a context switch). Nothing is
/// registered to be woken while it looks. (With more connections open, looking would
/// keep the others waiting.)
/// `None` when nothing came in that time; `Some(Err)` when the pool let the channel go
/// without an answer (the receiver must not be polled again then).
fn spin_for_answer(reply: &mut oneshot::Receiver<Answer>) -> Option<Result<Answer, ()>> {
    let until = Instant::now() + SPIN_FOR;
    loop {
        match reply.try_recv() {
            Ok(answer) => return Some(Ok(answer)),
            Err(oneshot::error::TryRecvError::Closed) => return Some(Err(())),
            Err(oneshot::error::TryRecvError::Empty) if Instant::now() >= until => return None,
            Err(oneshot::error::TryRecvError::Empty) => std::hint::spin_loop(),
        }
    }
}

/// A request waiting for the pool; dropped early when its client leaves.
struct Waiting<'a> {
    pool: &'a Pool,
    request: &'a Received,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.pool.forget(self.request);
    }
}

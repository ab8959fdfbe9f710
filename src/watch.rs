//! The connection watch: one thread that looks at every connection the worker has accepted
//! and does, from outside tiny_http, what tiny_http has no hook for.
//!
//! 1. **Unstick.** tiny_http 0.12 hands each accepted connection to a thread of its pool,
//!    deciding between "queue it" and "start a thread" by a count of waiting threads that
//!    a woken thread lowers only once it runs again. When connections arrive in a burst,
//!    one can be queued with no thread left to take it, and it waits, unread, until some
//!    later connection wakes the pool (measured: requests stalled 3.4 s at 16 connections
//!    after a burst of 1024). Any new connection makes the pool start or wake a thread,
//!    which takes the queue's oldest connection first; so the watch sends one loopback
//!    connection for each accepted connection whose unread input has not moved for a whole
//!    look.
//! 2. **Stalled heads (slowloris).** The socket timeout the supervisor sets
//!    (`keep_alive_timeout_s`) closes a connection that sends nothing, but a client that
//!    trickles a byte now and then resets it forever, and holds a tiny_http thread all the
//!    while. A connection that has neither started nor finished a request for
//!    `keep_alive_timeout_s` while not idle is sent 408 and shut down.
//! 3. **Heads that never end.** tiny_http reads a request line or header line of any
//!    length into memory. A connection that has received more than `max_header_bytes`
//!    since its last request without completing a head is sent 431 and shut down.
//! 4. **Stalled bodies.** The pool reads a request's body before the app sees it; a body
//!    still arriving at the request's deadline has its socket's reading side shut down, so
//!    the pool thread's read ends and it answers 408.
//! 5. **Shedding.** tiny_http holds two fds per connection; when the process has used 90%
//!    of its fd limit, the connections between requests that have gone longest without
//!    one are sent 503 and shut down until it is under 80%, so that accepting (and with
//!    it every fresh request) does not fail with `EMFILE`.
//! 6. It counts the open connections for `/metrics`.
//!
//! A request's start and end are counted per client port (two counters per port, one
//! atomic addition each on the request path), which is how the watch knows whether a
//! connection is between requests. Two clients on different hosts with the same port share
//! the counters; that only ever makes the watch more lenient with both.
//!
//! Each look reads every fd of the process, so the watch looks every [`INTERVAL`] or 20
//! times as long as the last look took, whichever is longer: it costs at most about 5% of
//! one core however many connections are open, and its deadlines are that coarse.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::bridge;
use crate::closer;
use crate::metrics::{self, Closed};
use crate::socket::{self, Connection, Sockets};

const INTERVAL: Duration = Duration::from_millis(25);
const COST_FACTOR: u32 = 20;
/// How long a poke connection may take to be accepted.
const POKE_TIMEOUT: Duration = Duration::from_millis(50);

const PORTS: usize = 1 << 16;
static BEGAN: [AtomicU32; PORTS] = [const { AtomicU32::new(0) }; PORTS];
static ENDED: [AtomicU32; PORTS] = [const { AtomicU32::new(0) }; PORTS];
/// Since when (nanoseconds after [`epoch`], plus one) the pool has been reading the body
/// of the request from this port; 0 when it is not.
static READING: [AtomicU64; PORTS] = [const { AtomicU64::new(0) }; PORTS];

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A request from `peer` was read.
pub fn began(peer: Option<&SocketAddr>) {
    if let Some(peer) = peer {
        BEGAN[peer.port() as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The request from `peer` was answered.
pub fn ended(peer: Option<&SocketAddr>) {
    if let Some(peer) = peer {
        ENDED[peer.port() as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The pool starts (`Some(when the request was read)`) or stops reading a body from `peer`.
pub fn reading_body(peer: Option<&SocketAddr>, since: Option<Instant>) {
    let Some(peer) = peer else { return };
    let value = since.map_or(0, |s| {
        s.saturating_duration_since(epoch()).as_nanos() as u64 + 1
    });
    READING[peer.port() as usize].store(value, Ordering::Relaxed);
}

pub struct Limits {
    /// How long a connection may go without starting or finishing a request.
    pub keep_alive: Duration,
    /// How much a connection may receive between requests without completing a head.
    pub max_head_bytes: u64,
    /// How long after a request was read its body must have arrived (`None`: no limit).
    pub body_deadline: Option<Duration>,
}

/// What the watch remembers of a connection between looks.
struct Track {
    began: u32,
    ended: u32,
    /// When a request last started or finished on it (or it was first seen).
    moved_at: Instant,
    /// What it had received then.
    received_then: u64,
    /// Its unread input at the last look, and whether that had not moved since the one
    /// before (then it is poked once, not at every look).
    unread: usize,
    /// The body deadline was acted on.
    body_cut: bool,
}

/// Starts the watch thread; it ends once `stop` is set.
pub fn start(
    listener: TcpListener,
    poke_address: SocketAddr,
    limits: Limits,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let _ = epoch();
    thread::Builder::new()
        .name("watch".into())
        .spawn(move || run(listener, poke_address, limits, stop))?;
    Ok(())
}

fn run(listener: TcpListener, poke_address: SocketAddr, limits: Limits, stop: Arc<AtomicBool>) {
    let mut sockets = Sockets::default();
    let mut tracks: HashMap<u64, Track> = HashMap::new();
    let mut interval = INTERVAL;
    loop {
        thread::sleep(interval);
        if stop.load(Ordering::Acquire) {
            return;
        }
        let started = Instant::now();
        let mut connections = sockets.scan(&listener);
        connections.iter_mut().for_each(Connection::measure);
        if let Some(gauges) = metrics::gauges() {
            gauges
                .connections
                .store(connections.len() as u64, Ordering::Relaxed);
        }
        let mut pokes = 0;
        let now = Instant::now();
        for connection in &connections {
            let track = tracks.entry(connection.inode).or_insert_with(|| Track {
                began: BEGAN[connection.peer.port() as usize].load(Ordering::Relaxed),
                ended: ENDED[connection.peer.port() as usize].load(Ordering::Relaxed),
                moved_at: now,
                received_then: connection.received.unwrap_or(0),
                unread: 0,
                body_cut: false,
            });
            if connection.unread > 0 && connection.unread == track.unread {
                pokes += 1;
            }
            track.unread = connection.unread;
            if let Some(verdict) = judge(connection, track, &limits, now) {
                act(connection, verdict);
            }
        }
        tracks.retain(|inode, _| connections.iter().any(|c| c.inode == *inode));
        shed(&connections, &tracks, sockets.fds_open);
        for _ in 0..pokes {
            let _ = TcpStream::connect_timeout(&poke_address, POKE_TIMEOUT);
        }
        interval = INTERVAL.max(started.elapsed() * COST_FACTOR);
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    HeadTimeout,
    HeadTooLarge,
    BodyTimeout,
    Shed,
}

/// Past 90% of the fd limit, sheds connections between requests, those that have gone
/// longest without one first, until under 80%.
fn shed(connections: &[Connection], tracks: &HashMap<u64, Track>, fds_open: usize) {
    let limit = socket::fd_limit();
    if fds_open * 10 <= limit * 9 {
        return;
    }
    let mut between: Vec<(&Connection, Instant)> = connections
        .iter()
        .filter_map(|c| {
            let track = tracks.get(&c.inode)?;
            let port = c.peer.port() as usize;
            let idle = BEGAN[port].load(Ordering::Relaxed) == ENDED[port].load(Ordering::Relaxed);
            idle.then_some((c, track.moved_at))
        })
        .collect();
    between.sort_by_key(|(_, moved_at)| *moved_at);
    let mut excess = fds_open.saturating_sub(limit * 8 / 10);
    for (connection, _) in between {
        if excess == 0 {
            break;
        }
        act(connection, Verdict::Shed);
        excess = excess.saturating_sub(connection.fds.len());
    }
}

fn judge(
    connection: &Connection,
    track: &mut Track,
    limits: &Limits,
    now: Instant,
) -> Option<Verdict> {
    let port = connection.peer.port() as usize;
    let began = BEGAN[port].load(Ordering::Relaxed);
    let ended = ENDED[port].load(Ordering::Relaxed);
    let received = connection.received.unwrap_or(0);
    if (began, ended) != (track.began, track.ended) {
        track.began = began;
        track.ended = ended;
        track.moved_at = now;
        track.received_then = received;
        track.body_cut = false;
        return None;
    }
    if began != ended {
        // A request is in flight: only its body can be late.
        let since = READING[port].load(Ordering::Relaxed);
        let deadline = limits.body_deadline?;
        if since == 0 || track.body_cut {
            return None;
        }
        let read_at = epoch() + Duration::from_nanos(since - 1);
        if now < read_at + deadline {
            return None;
        }
        track.body_cut = true;
        return Some(Verdict::BodyTimeout);
    }
    if connection.received.is_some()
        && received.saturating_sub(track.received_then) > limits.max_head_bytes
    {
        return Some(Verdict::HeadTooLarge);
    }
    // An idle connection is closed by its socket timeout before this: one still open past
    // it has been sending, a byte now and then, without completing a head.
    (now.duration_since(track.moved_at) > limits.keep_alive).then_some(Verdict::HeadTimeout)
}

fn act(connection: &Connection, verdict: Verdict) {
    let Some(socket) = connection.duplicate() else {
        return;
    };
    let (reason, status, text) = match verdict {
        Verdict::BodyTimeout => {
            // The pool thread's read ends, and it answers.
            socket::shut_down_reading(socket.as_raw_fd());
            metrics::count(metrics::Event::Closed(Closed::BodyTimeout));
            return;
        }
        Verdict::HeadTimeout => (
            Closed::HeadTimeout,
            408,
            "the request head did not arrive in time\n",
        ),
        Verdict::HeadTooLarge => (Closed::HeadTooLarge, 431, "request head too large\n"),
        Verdict::Shed => (Closed::Shed, 503, "too many open connections\n"),
    };
    let answer = bridge::closing_answer(
        status,
        [bridge::PLAIN_TEXT].into_iter(),
        text.as_bytes(),
        false,
    );
    closer::condemn(connection.peer, &connection.fds, connection.inode);
    write_and_shut(&socket, &answer);
    metrics::count(metrics::Event::Closed(reason));
}

/// Writes `answer` on the socket without blocking (it is a few hundred bytes, into an
/// empty send buffer) and shuts the socket down.
fn write_and_shut(socket: &OwnedFd, answer: &[u8]) {
    // SAFETY: a plain non-blocking send on our own duplicate of the socket.
    unsafe {
        libc::send(
            socket.as_raw_fd(),
            answer.as_ptr().cast(),
            answer.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    socket::shut_down(&[socket.as_raw_fd()]);
}

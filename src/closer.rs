//! Ending connections that tiny_http would keep open.
//!
//! tiny_http reads requests from a connection for as long as the client sends them and
//! offers no way to end one. Some answers must end their connection all the same: after a
//! request whose framing is in doubt (the rest of the stream could be a smuggled request),
//! and after a request whose body the worker does not read (tiny_http would drain it at the
//! client's pace on the answering thread, or, for a chunked body, parse it as further
//! requests).
//!
//! How: [`close`] first *condemns* the peer address, then queues the request for the
//! closer thread. That ordering is what makes it safe: tiny_http parses a connection's next
//! request only once the previous request's body reader is dropped, so nothing more from
//! that connection reaches the worker before it is condemned. The closer thread finds the
//! connection's socket among the process's fds by its peer address, shuts down its reading
//! side (so a drain of the unread body stops at what already arrived), writes the answer
//! with `Connection: close`, and shuts the socket down. tiny_http then reads the end of the
//! stream and drops the connection; requests it had already buffered from it arrive at
//! dispatch from a condemned peer and are dropped unanswered, never reaching the app. A
//! condemned peer is forgotten once its socket is gone.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tiny_http::Request;

use crate::bridge::{self, How};
use crate::metrics;
use crate::say;
use crate::socket;

/// How often the closer looks whether condemned connections are gone, while some are.
const PRUNE_EVERY: Duration = Duration::from_millis(500);

static CLOSER: OnceLock<Closer> = OnceLock::new();

struct Closer {
    jobs: Sender<Job>,
    /// Condemned peers, and (fd, inode) of each of their socket's fds (tiny_http holds two)
    /// once looked up; an entry goes when those are all gone.
    condemned: Mutex<HashMap<SocketAddr, Option<Fds>>>,
    /// `condemned.len()`, read without the lock on every request.
    count: AtomicUsize,
}

/// (fd, inode) pairs of one socket.
type Fds = Vec<(RawFd, u64)>;

enum Job {
    Answer {
        request: Request,
        status: u16,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        body: Vec<u8>,
        how: How,
    },
    /// A request read from a condemned connection: dropped once its socket is shut down.
    Discard(Request),
}

/// Starts the closer thread for connections accepted on `listener`.
pub fn start(listener: TcpListener) -> std::io::Result<()> {
    let (jobs, queue) = crossbeam_channel::unbounded();
    let closer = Closer {
        jobs,
        condemned: Mutex::new(HashMap::new()),
        count: AtomicUsize::new(0),
    };
    if CLOSER.set(closer).is_err() {
        return Ok(());
    }
    thread::Builder::new()
        .name("closer".into())
        .spawn(move || run(listener, queue))?;
    Ok(())
}

/// Answers `request` and ends its connection (see the module docs).
pub fn close(
    request: Request,
    status: u16,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
    how: How,
) {
    let how = How {
        close: true,
        end: false,
        ..how
    };
    let Some(closer) = CLOSER.get() else {
        // The closer is started before the acceptor; should it not be, answer here.
        let headers = headers.iter().map(|(n, v)| (&n[..], &v[..]));
        let _ = bridge::deliver(request, status, headers, &body, how);
        return;
    };
    if let Some(peer) = request.remote_addr() {
        let mut condemned = closer.condemned.lock().expect("condemned lock");
        condemned.insert(*peer, None);
        closer.count.store(condemned.len(), Ordering::Release);
    }
    let job = Job::Answer {
        request,
        status,
        headers,
        body,
        how,
    };
    if closer.jobs.send(job).is_err() {
        say!("the closer thread has ended; a connection stays open");
    }
}

/// Condemns the connection from `peer` that the caller is shutting down itself (see
/// `watch`): a request tiny_http completes from it meanwhile is dropped unanswered.
pub fn condemn(peer: SocketAddr, fds: &[RawFd], inode: u64) {
    let Some(closer) = CLOSER.get() else { return };
    let mut condemned = closer.condemned.lock().expect("condemned lock");
    condemned.insert(peer, Some(fds.iter().map(|fd| (*fd, inode)).collect()));
    closer.count.store(condemned.len(), Ordering::Release);
}

/// Takes `request` if it comes from a condemned connection: it is dropped unanswered.
pub fn intercept(request: Request) -> Option<Request> {
    let Some(closer) = CLOSER.get() else {
        return Some(request);
    };
    if closer.count.load(Ordering::Acquire) == 0 {
        return Some(request);
    }
    let Some(peer) = request.remote_addr() else {
        return Some(request);
    };
    let mut condemned = closer.condemned.lock().expect("condemned lock");
    // A request from a condemned peer whose old socket is gone is from a new connection
    // (the client came again from the same address and port), so the entry is stale. A
    // new connection can be accepted a little earlier, once the old socket has exchanged
    // its FINs but before tiny_http has closed its fds; in those few milliseconds a
    // request from it is taken for one of the old connection's and dropped (the safe side:
    // the old connection's requests must never run).
    let from_condemned = match condemned.get(peer) {
        None => false,
        Some(None) => true,
        Some(Some(fds)) => alive(fds),
    };
    if !from_condemned {
        if condemned.get(peer).is_some() {
            condemned.remove(peer);
            closer.count.store(condemned.len(), Ordering::Release);
        }
        return Some(request);
    }
    drop(condemned);
    metrics::count(metrics::Event::Discarded);
    let _ = closer.jobs.send(Job::Discard(request));
    None
}

fn run(listener: TcpListener, queue: Receiver<Job>) {
    let mut sockets = socket::Sockets::default();
    loop {
        let first = match queue.recv_timeout(PRUNE_EVERY) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                prune();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let batch: Vec<Job> = std::iter::once(first).chain(queue.try_iter()).collect();
        let peers: Vec<SocketAddr> = batch
            .iter()
            .filter_map(|job| match job {
                Job::Answer { request, .. } => request.remote_addr().copied(),
                Job::Discard(_) => None,
            })
            .collect();
        let found: Vec<(socket::Connection, OwnedFd)> = match peers.is_empty() {
            true => Vec::new(),
            false => sockets
                .scan(&listener)
                .into_iter()
                .filter(|c| peers.contains(&c.peer))
                .filter_map(|c| {
                    let socket = c.duplicate()?;
                    Some((c, socket))
                })
                .collect(),
        };
        // Known before any answer goes out: a client that got its answer may connect again
        // from the same address at once, and that new connection must not pass for this one.
        remember(&found, &peers);
        // The reading side first: a drain of the unread body stops at what has arrived.
        for (_, socket) in &found {
            socket::shut_down_reading(socket.as_raw_fd());
        }
        for job in batch {
            match job {
                Job::Answer {
                    request,
                    status,
                    headers,
                    body,
                    how,
                } => {
                    let headers = headers.iter().map(|(n, v)| (&n[..], &v[..]));
                    let peer = request.remote_addr().copied();
                    match found.iter().find(|(c, _)| Some(c.peer) == peer) {
                        Some((connection, socket)) => {
                            let fd = socket.as_raw_fd();
                            let _ = bridge::deliver_to_socket(
                                fd, &request, status, headers, &body, how,
                            );
                            // Shut before letting go of the request: once it is gone,
                            // tiny_http reads on (and would answer what it finds).
                            socket::shut_down(&[fd]);
                            if bridge::release(request) {
                                forget_parked(connection);
                            }
                        }
                        None => {
                            let _ = bridge::deliver(request, status, headers, &body, how);
                        }
                    }
                    metrics::count(metrics::Event::Closed(metrics::Closed::Answered));
                }
                Job::Discard(request) => {
                    bridge::release(request);
                }
            }
        }
        prune();
    }
}

/// Closes tiny_http's fds of a parked connection, so that it does not count as open (a
/// drain would wait for it until its stop timeout). Sound only because nothing uses them
/// again: the request that holds the reading side was forgotten, and tiny_http's
/// connection thread waits for that request's body reader for good, so neither it nor
/// the writing side it holds is ever used or dropped.
fn forget_parked(connection: &socket::Connection) {
    for &fd in &connection.fds {
        if socket::inode(fd) == Some(connection.inode) {
            // SAFETY: see above; the inode check makes sure the number is still this
            // connection's.
            unsafe { libc::close(fd) };
        }
    }
}

/// Notes the socket of each newly condemned peer; a peer whose socket was not found has no
/// connection left to read from, and is forgotten.
fn remember(found: &[(socket::Connection, OwnedFd)], peers: &[SocketAddr]) {
    let closer = CLOSER.get().expect("started");
    let mut condemned = closer.condemned.lock().expect("condemned lock");
    for peer in peers {
        if let Some(sockets @ None) = condemned.get_mut(peer) {
            let connection = found.iter().map(|(c, _)| c).find(|c| c.peer == *peer);
            *sockets = Some(connection.map_or_else(Vec::new, |c| {
                c.fds.iter().map(|fd| (*fd, c.inode)).collect()
            }));
        }
    }
}

/// Forgets condemned peers whose socket is gone.
fn prune() {
    let closer = CLOSER.get().expect("started");
    let mut condemned = closer.condemned.lock().expect("condemned lock");
    condemned.retain(|_, sockets| match sockets {
        None => true,
        Some(fds) => alive(fds),
    });
    closer.count.store(condemned.len(), Ordering::Release);
}

/// Whether any of a socket's fds still names it.
fn alive(fds: &Fds) -> bool {
    fds.iter()
        .any(|(fd, inode)| socket::inode(*fd) == Some(*inode))
}

//! The acceptor: tiny_http servers on the inherited listening socket, and the threads that
//! take their requests, stamp them and queue them for the pool.
//!
//! Why *generations* of servers: the supervisor sets `SO_RCVTIMEO`/`SO_SNDTIMEO` on the
//! listening socket so that Linux copies them onto every accepted connection, which is what
//! closes idle and stalled connections (tiny_http sets no socket timeouts). But `accept()`
//! honours `SO_RCVTIMEO` too: after `keep_alive_timeout_s` without a new connection it fails
//! with `EAGAIN`, and tiny_http's accept thread ends on any accept error (also on `EMFILE`).
//! So each server is one generation: when its accept thread ends, a new server on a
//! duplicate of the same socket takes over accepting (no connection is refused meanwhile:
//! the kernel keeps queueing them on the socket), while the old generation's receiving
//! thread goes on serving the connections it already has until they have been quiet for
//! [`OLD_GENERATION_LINGER`].
//!
//! Why [`Acceptor::retire`] is not tiny_http's `Drop`: dropping a server connects to its own
//! address to wake its accept thread, but on a socket shared with another worker that
//! connection, and any other, may be taken by either process, and the retiring server
//! would accept connections it then never serves. Instead the retiring worker puts a
//! socket that does not listen on the fd number its accept thread uses (`dup2`), so the
//! thread's next `accept()` fails and it ends; an `accept()` already waiting returns with a
//! real connection, which this worker still serves, or with the poke connection that
//! `retire` sends until the thread has ended.
//!
//! The connection watch (`watch`), started here, does what tiny_http has no hook for:
//! waking its pool for connections left unread, and closing stalled or oversized heads.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use tiny_http::Server;

use crate::bridge::{self, How, Incoming, Stamp};
use crate::closer;
use crate::metrics;
use crate::pool::Job;
use crate::say;
use crate::screen::{Refusal, Screen, Verdict};
use crate::socket;
use crate::watch;

/// How long an old generation keeps receiving after its last request.
const OLD_GENERATION_LINGER: Duration = Duration::from_secs(60);

/// Pause before a new generation when accepting failed for another reason than the
/// timeout (`EMFILE`: out of file descriptors), so a persistent error does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(200);

/// How often `retire` pokes a waiting `accept()` with a connection.
const POKE_INTERVAL: Duration = Duration::from_millis(50);

pub struct Acceptor {
    listener: TcpListener,
    /// Where poke connections go: the listening address, on the loopback if it is a
    /// wildcard.
    poke_address: SocketAddr,
    sink: Sender<Job>,
    ready: Arc<AtomicBool>,
    keep_alive: Duration,
    screen: Screen,
    /// Everything read from now on gets 503 at once (a hung worker being replaced).
    abandoned: AtomicBool,
    accepting: Mutex<Accepting>,
    accept_ended: Condvar,
    /// Set when retiring: the watch ends.
    unwatched: Arc<AtomicBool>,
}

/// The accept threads that may still run: one per generation whose end its receiving
/// thread has not seen (normally just the current one).
struct Accepting {
    /// (generation, the fd number its accept thread calls `accept()` on).
    live: Vec<(u64, RawFd)>,
    next_generation: u64,
    /// No new generation is started any more.
    retiring: bool,
}

impl Acceptor {
    /// Starts accepting on `listener`; requests go to `sink`. `ready` is what `/readyz`
    /// answers.
    pub fn start(
        listener: TcpListener,
        sink: Sender<Job>,
        ready: Arc<AtomicBool>,
        keep_alive: Duration,
        screen: Screen,
        limits: watch::Limits,
    ) -> std::io::Result<Arc<Acceptor>> {
        let poke_address = socket::reachable_address(&listener)?;
        let acceptor = Arc::new(Acceptor {
            listener,
            poke_address,
            sink,
            ready,
            keep_alive,
            screen,
            abandoned: AtomicBool::new(false),
            accepting: Mutex::new(Accepting {
                live: Vec::new(),
                next_generation: 0,
                retiring: false,
            }),
            accept_ended: Condvar::new(),
            unwatched: Arc::new(AtomicBool::new(false)),
        });
        let mut accepting = acceptor.accepting.lock().expect("acceptor lock");
        acceptor.start_generation(&mut accepting)?;
        drop(accepting);
        watch::start(
            acceptor.listener.try_clone()?,
            poke_address,
            limits,
            acceptor.unwatched.clone(),
        )?;
        Ok(acceptor)
    }

    /// Starts a tiny_http server on a fresh duplicate of the socket, placed high in the fd
    /// table so that, once its accept thread has closed it, the number is not soon reused
    /// (see `retire`).
    fn start_generation(self: &Arc<Self>, accepting: &mut Accepting) -> std::io::Result<()> {
        let fd = duplicate_high(self.listener.as_raw_fd())?;
        // SAFETY: a fresh duplicate that nothing else owns.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        let server = Server::from_listener(listener, None).map_err(std::io::Error::other)?;
        let generation = accepting.next_generation;
        let acceptor = self.clone();
        thread::Builder::new()
            .name("receive".into())
            .spawn(move || acceptor.receive(server, generation))?;
        accepting.next_generation += 1;
        accepting.live.push((generation, fd));
        Ok(())
    }

    /// Receives from one generation's server until it is old and quiet.
    fn receive(self: Arc<Self>, server: Server, generation: u64) {
        let mut current = true;
        let mut last_request = Instant::now();
        // A live accept thread fails with EAGAIN within `keep_alive` of its last accept, so
        // silence well past that means it ended without saying so (tiny_http's accept
        // thread panics on some errors): start a successor, which is harmless if it did not.
        let silence_limit = self.keep_alive + Duration::from_secs(1);
        loop {
            let wait = match current {
                true => silence_limit,
                false => OLD_GENERATION_LINGER,
            };
            match server.recv_timeout(wait) {
                Ok(Some(request)) => {
                    last_request = Instant::now();
                    self.dispatch(request);
                }
                Ok(None) if current => current = !self.succeed(None),
                Ok(None) if last_request.elapsed() >= OLD_GENERATION_LINGER => return,
                Ok(None) => {}
                Err(e) => {
                    self.accept_thread_ended(generation);
                    if current {
                        current = !self.succeed(Some(e));
                    }
                }
            }
        }
    }

    fn accept_thread_ended(&self, generation: u64) {
        let mut accepting = self.accepting.lock().expect("acceptor lock");
        accepting.live.retain(|(g, _)| *g != generation);
        self.accept_ended.notify_all();
    }

    /// The current generation's accept thread ended (or went silent): starts the next one
    /// unless retiring. `true` once this generation is no longer the current one.
    fn succeed(self: &Arc<Self>, error: Option<std::io::Error>) -> bool {
        let mut accepting = self.accepting.lock().expect("acceptor lock");
        // EINVAL: the socket does not listen any more (the supervisor is stopping).
        if error.as_ref().and_then(|e| e.raw_os_error()) == Some(libc::EINVAL) {
            accepting.retiring = true;
        }
        if accepting.retiring {
            return true;
        }
        if let Some(e) = &error {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                say!("accepting connections failed ({e}); starting a new acceptor");
                thread::sleep(ACCEPT_ERROR_PAUSE);
            }
        }
        match self.start_generation(&mut accepting) {
            Ok(()) => true,
            Err(e) => {
                say!("cannot start a new acceptor: {e}; retrying");
                drop(accepting);
                thread::sleep(ACCEPT_ERROR_PAUSE);
                false
            }
        }
    }

    /// Stops accepting connections; returns once the accept thread has ended (`true`) or
    /// at `deadline` (`false`). Connections accepted until then are served as usual.
    pub fn retire(&self, deadline: Instant) -> bool {
        let mut accepting = self.accepting.lock().expect("acceptor lock");
        accepting.retiring = true;
        self.unwatched.store(true, Ordering::Release);
        let mut unplugged = Vec::new();
        for &(generation, fd) in &accepting.live {
            match unplug(fd, &self.listener) {
                Ok(true) => {}
                // Not our socket any more: that accept thread ended without a word.
                Ok(false) => unplugged.push(generation),
                Err(e) => {
                    say!("cannot stop accepting: {e}");
                    return false;
                }
            }
        }
        accepting.live.retain(|(g, _)| !unplugged.contains(g));
        while !accepting.live.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // An accept() already waiting on the socket still needs a connection to return.
            let _ = TcpStream::connect_timeout(&self.poke_address, POKE_INTERVAL);
            let wait = POKE_INTERVAL.min(deadline - now);
            accepting = self
                .accept_ended
                .wait_timeout(accepting, wait)
                .expect("acceptor lock")
                .0;
        }
        true
    }

    /// From now on, every request read gets 503 at once, without the pool.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    /// Stamps a request, screens it and queues it; `/readyz` is answered here, without the
    /// pool, and `/metrics` on a thread of its own, so both answer while every pool thread
    /// is stuck.
    fn dispatch(&self, request: tiny_http::Request) {
        let Some(request) = closer::intercept(request) else {
            return;
        };
        watch::began(request.remote_addr());
        let received = Instant::now();
        let close = !self.ready.load(Ordering::Acquire);
        if self.abandoned.load(Ordering::Acquire) {
            let stamp = Stamp {
                received,
                cors: false,
            };
            let _ = bridge::send_text(request, 503, "worker replaced\n", How::unread(stamp, true));
            return;
        }
        let stamp = match self.screen.check(&request) {
            Verdict::Pass { cors } => Stamp { received, cors },
            Verdict::Refuse(refusal) => return refuse(request, refusal, received, close),
        };
        let unread = How::unread(stamp, close);
        let path = request.url().split('?').next().unwrap_or("");
        if path == "/readyz" {
            let (status, text) = match self.ready.load(Ordering::Acquire) {
                true => (200, "ready\n"),
                false => (503, "not ready\n"),
            };
            let _ = bridge::send_text(request, status, text, unread);
            return;
        }
        if path == "/metrics" {
            let spawned = thread::Builder::new()
                .name("metrics".into())
                .spawn(move || {
                    let text = metrics::render();
                    let _ = bridge::send_metrics(request, &text, unread);
                });
            if let Err(e) = spawned {
                // The request went with the closure; tiny_http answers a dropped one 500.
                say!("cannot start a thread to answer /metrics: {e}");
            }
            return;
        }
        if let Err(unsent) = self.sink.send(Job::Http(Incoming { request, stamp })) {
            if let Job::Http(incoming) = unsent.0 {
                let _ = bridge::send_text(incoming.request, 503, "shutting down\n", unread);
            }
        }
    }
}

/// Answers what the screen refused in the app's place.
fn refuse(request: tiny_http::Request, refusal: Refusal, received: Instant, close: bool) {
    let stamp = Stamp {
        received,
        cors: refusal.cors,
    };
    let how = match refusal.end {
        true => How::ending(stamp),
        false => How::unread(stamp, close),
    };
    let text_type = (!refusal.text.is_empty()).then_some(bridge::PLAIN_TEXT);
    let headers = refusal
        .headers
        .iter()
        .map(|(name, value)| (*name, &value[..]))
        .chain(text_type);
    let _ = bridge::send(
        request,
        refusal.status,
        headers,
        refusal.text.as_bytes(),
        how,
    );
}

/// A duplicate of `fd` numbered in the upper quarter of this process's fd limit.
fn duplicate_high(fd: RawFd) -> std::io::Result<RawFd> {
    let floor = (socket::fd_limit().min(1 << 20) as i32 / 4 * 3).max(64);
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd or -1.
    match unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) } {
        -1 => match unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) } {
            -1 => Err(std::io::Error::last_os_error()),
            low => Ok(low),
        },
        high => Ok(high),
    }
}

/// Puts a socket that does not listen on `fd`, if `fd` is still our listening socket.
///
/// The accept thread may have closed `fd` on an error the receiving thread has not seen
/// yet; the inode check makes sure the number still names the listening socket, and the
/// number sits high in the fd table (see `duplicate_high`), so it is not reused between
/// that check and the `dup2`.
/// `Ok(false)` when `fd` no longer names the listening socket.
fn unplug(fd: RawFd, listener: &TcpListener) -> std::io::Result<bool> {
    if socket::inode(fd).is_none() || socket::inode(fd) != socket::inode(listener.as_raw_fd()) {
        return Ok(false);
    }
    // SAFETY: a new socket, owned here until dup2 copies it and we close the original.
    let dummy = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if dummy < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: dup2 onto a number the accept thread owns; from now its accept() gets EINVAL.
    let rc = unsafe { libc::dup3(dummy, fd, libc::O_CLOEXEC) };
    let err = std::io::Error::last_os_error();
    unsafe { libc::close(dummy) };
    match rc {
        -1 => Err(err),
        _ => Ok(true),
    }
}

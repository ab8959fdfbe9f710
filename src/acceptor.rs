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

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use tiny_http::Server;

use crate::bridge::{self, Incoming};
use crate::say;

/// How long an old generation keeps receiving after its last request.
const OLD_GENERATION_LINGER: Duration = Duration::from_secs(60);

/// Pause before a new generation when accepting failed for another reason than the
/// timeout (`EMFILE`: out of file descriptors), so a persistent error does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(200);

pub struct Acceptor {
    listener: TcpListener,
    sink: Sender<Incoming>,
    ready: Arc<AtomicBool>,
    keep_alive: Duration,
}

impl Acceptor {
    /// Starts accepting on `listener`; requests go to `sink`. `ready` is what `/readyz`
    /// answers.
    pub fn start(
        listener: TcpListener,
        sink: Sender<Incoming>,
        ready: Arc<AtomicBool>,
        keep_alive: Duration,
    ) -> std::io::Result<()> {
        let acceptor = Arc::new(Acceptor {
            listener,
            sink,
            ready,
            keep_alive,
        });
        acceptor.start_generation()
    }

    fn start_generation(self: &Arc<Self>) -> std::io::Result<()> {
        let listener = self.listener.try_clone()?;
        let server = Server::from_listener(listener, None).map_err(std::io::Error::other)?;
        let acceptor = self.clone();
        thread::Builder::new()
            .name("receive".into())
            .spawn(move || acceptor.receive(server))?;
        Ok(())
    }

    /// Receives from one generation's server until it is old and quiet.
    fn receive(self: Arc<Self>, server: Server) {
        let mut current = true;
        let mut last_request = Instant::now();
        // A live accept thread fails with EAGAIN within `keep_alive` of its last accept, so
        // silence well past that means it ended without saying so (tiny_http's accept
        // thread panics on some errors): start a successor, which is harmless if it did not.
        let silence_limit = self.keep_alive + Duration::from_secs(1);
        loop {
            let wait = if current {
                silence_limit
            } else {
                OLD_GENERATION_LINGER
            };
            match server.recv_timeout(wait) {
                Ok(Some(request)) => {
                    last_request = Instant::now();
                    self.dispatch(request);
                }
                Ok(None) if current => current = !self.succeed(None),
                Ok(None) if last_request.elapsed() >= OLD_GENERATION_LINGER => return,
                Ok(None) => {}
                Err(e) if current => current = !self.succeed(Some(e)),
                Err(_) => {}
            }
        }
    }

    /// Starts the next generation; `true` once it runs.
    fn succeed(self: &Arc<Self>, error: Option<std::io::Error>) -> bool {
        if let Some(e) = &error {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                say!("accepting connections failed ({e}); starting a new acceptor");
                thread::sleep(ACCEPT_ERROR_PAUSE);
            }
        }
        match self.start_generation() {
            Ok(()) => true,
            Err(e) => {
                say!("cannot start a new acceptor: {e}; retrying");
                thread::sleep(ACCEPT_ERROR_PAUSE);
                false
            }
        }
    }

    /// Stamps a request and queues it; `/readyz` is answered here, without the pool.
    fn dispatch(&self, request: tiny_http::Request) {
        let received = Instant::now();
        if request.url() == "/readyz" {
            let (status, text) = match self.ready.load(Ordering::Acquire) {
                true => (200, "ready\n"),
                false => (503, "not ready\n"),
            };
            let _ = bridge::send_text(request, status, text);
            return;
        }
        if let Err(unsent) = self.sink.send(Incoming { request, received }) {
            let _ = bridge::send_text(unsent.0.request, 503, "shutting down\n");
        }
    }
}

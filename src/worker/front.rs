//! The HTTP front: accepting connections on the inherited listening socket and serving
//! each with hyper, on the tokio runtime's I/O threads.
//!
//! Theory of operation:
//!
//! * One task accepts. Before each `accept()` it takes a permit of a semaphore of
//!   `max_connections`; at the cap it stops accepting until a connection ends, and the
//!   kernel's backlog holds the rest (counted: `microservice_http_accept_paused_total`).
//!   Open connections are counted exactly, as they start and end.
//! * Each accepted connection is one task. It first waits for the connection's first request
//!   head holding only the bytes sent ([`super::head`]: hyper's buffers would cost 16 KiB a
//!   connection), for up to `keep_alive_timeout_s`, then serves it with hyper's
//!   `serve_connection` and the service in [`super::exchange`]. Every other limit on a
//!   connection is hyper's: `header_read_timeout` (`keep_alive_timeout_s`) closes a
//!   connection that has no complete request head that long after its last answer, idle
//!   or trickling alike;
//!   `max_header_size` answers 431; a malformed head or a version other than 1.0/1.1 gets
//!   hyper's 400; the connection then closes. hyper reads the socket for the client's
//!   going away while a request is served and drops the request's future then.
//! * An `accept()` that fails for lack of resources (out of file descriptors) is retried
//!   every [`ACCEPT_RETRY`]; while it keeps failing, the [`Health`] check makes `/healthz` and
//!   the watchdog's probes fail with the reason, so the supervisor replaces the worker.
//! * Retiring (drain, reload, SIGHUP, watchdog): the phase changes; the accept task stops
//!   and closes this process's copy of the listening socket (other workers and the
//!   supervisor keep theirs); every connection that has served a request is shut down
//!   gracefully by hyper (an idle one at once, a busy one after its answer). A connection
//!   that has not sent its first request yet is left to send it, and gets its answer with
//!   `Connection: close`: its request may already be on the wire, and closing it would
//!   reset a client that did nothing wrong. Whatever is still waiting at the stop deadline
//!   is answered 503 ([`Front::abandon`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;

use super::exchange;
use super::head::{self, First};
use super::health::{Health, ACCEPT_RETRY};
use super::shared::{Context, Phase};
use crate::config::Settings;
use crate::metrics::{Closed, Event};
use crate::say;

/// hyper's read buffer may grow to this; a head is limited by `max_header_bytes` anyway.
const MAX_BUFFER: usize = 64 * 1024;

/// The worker's HTTP front: its accept task and its connections.
pub struct Front {
    context: Arc<Context>,
}

impl Front {
    /// Starts accepting on `listener` (non-blocking, from the supervisor); must run inside
    /// the runtime.
    pub fn start(
        listener: std::net::TcpListener,
        context: Arc<Context>,
        health: Arc<Health>,
        settings: &Settings,
    ) -> std::io::Result<Front> {
        let listener = TcpListener::from_std(listener)?;
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(settings.keep_alive_timeout())
            .max_header_size(settings.max_header_bytes as usize)
            .max_buf_size(MAX_BUFFER.max(settings.max_header_bytes as usize))
            .keep_alive(true)
            .half_close(false);
        let acceptor = Acceptor {
            context: context.clone(),
            http,
            health,
            head_timeout: settings.keep_alive_timeout(),
        };
        tokio::spawn(acceptor.run(listener));
        Ok(Front { context })
    }

    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Puts the present figures into the metrics.
    pub fn sample(&self) {
        self.context.sample();
    }

    /// Logs every request inside the app, and what waits.
    pub fn report(&self) {
        self.context.pool.report();
        say!(
            "{} connection(s) open, {} request(s) read and not yet answered",
            self.context.connections.open(),
            self.context.in_flight()
        );
    }

    /// Stops accepting and lets every connection finish; `true` once all have ended,
    /// `false` at `deadline`.
    pub async fn retire(&self, deadline: Instant) -> bool {
        self.context.set_ready(false);
        self.context.set_phase(Phase::Draining);
        self.context.connections.all_closed(deadline).await
    }

    /// Answers every request still waiting with 503 at once, stops accepting, and waits
    /// until `deadline` for the connections to end. Returns how many were answered so.
    pub async fn abandon(&self, deadline: Instant) -> u64 {
        self.context.set_ready(false);
        self.context.set_phase(Phase::Abandoned);
        let answered = self.context.pool.abandon();
        self.context.connections.all_closed(deadline).await;
        answered
    }
}

/// The accept task's state.
struct Acceptor {
    context: Arc<Context>,
    http: http1::Builder,
    health: Arc<Health>,
    /// How long a new connection may take to send its first request head.
    head_timeout: std::time::Duration,
}

impl Acceptor {
    async fn run(self, listener: TcpListener) {
        let mut phase = self.context.watch_phase();
        loop {
            let permit = tokio::select! {
                biased;
                () = Context::retiring(&mut phase) => break,
                permit = self.context.connections.admit(&self.context.metrics) => permit,
            };
            let accepted = tokio::select! {
                biased;
                () = Context::retiring(&mut phase) => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    self.health.accepting.succeeded();
                    self.context.connections.opened();
                    let connection = Connection {
                        context: self.context.clone(),
                        _permit: permit,
                    };
                    let deadline = Instant::now() + self.head_timeout;
                    tokio::spawn(connection.serve(self.http.clone(), stream, peer, deadline));
                }
                Err(e) => match AcceptError::of(&e) {
                    AcceptError::Connection => {}
                    AcceptError::NotListening => {
                        // The supervisor stopped listening: the service is stopping.
                        break;
                    }
                    AcceptError::Resources => {
                        self.context.metrics.count(Event::AcceptError);
                        self.health.accepting.failed(&e);
                        tokio::select! {
                            () = Context::retiring(&mut phase) => break,
                            _ = tokio::time::sleep(ACCEPT_RETRY) => {}
                        }
                    }
                },
            }
        }
        // Dropping the listener closes this process's copy only.
    }
}

/// One client connection; its permit goes back when it ends.
struct Connection {
    context: Arc<Context>,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn serve(
        self,
        http: http1::Builder,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        head_deadline: Instant,
    ) {
        let _ = stream.set_nodelay(true);
        let stream = match head::first(stream, head_deadline).await {
            First::Arrived(stream) => stream,
            First::Closed => return,
            First::TimedOut => {
                self.context
                    .metrics
                    .count(Event::Closed(Closed::HeadTimeout));
                return;
            }
        };
        let begun = Arc::new(AtomicBool::new(false));
        let service = {
            let context = self.context.clone();
            let begun = begun.clone();
            service_fn(move |request| {
                begun.store(true, Ordering::Relaxed);
                // hyper keeps a place for the request's future in every connection, idle
                // or not; boxed, that place is a pointer instead of the future's 1.7 KB.
                Box::pin(exchange::handle(context.clone(), peer, request))
            })
        };
        let connection = http.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let mut phase = self.context.watch_phase();
        let ended = tokio::select! {
            ended = connection.as_mut() => ended,
            () = Context::retiring(&mut phase) => {
                if begun.load(Ordering::Relaxed) {
                    connection.as_mut().graceful_shutdown();
                }
                connection.await
            }
        };
        if let Err(e) = ended {
            let reason = if e.is_timeout() {
                Closed::HeadTimeout
            } else if e.is_parse_too_large() {
                Closed::HeadTooLarge
            } else if e.is_parse() {
                Closed::Malformed
            } else {
                return;
            };
            self.context.metrics.count(Event::Closed(reason));
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.context.connections.closed();
    }
}

/// What an `accept()` error means.
enum AcceptError {
    /// Something about that one connection (it was reset before it was accepted); the
    /// next `accept()` is unaffected.
    Connection,
    /// The socket does not listen any more.
    NotListening,
    /// Out of file descriptors, memory or buffers: retry later.
    Resources,
}

impl AcceptError {
    fn of(error: &std::io::Error) -> AcceptError {
        match error.raw_os_error() {
            Some(
                libc::ECONNABORTED
                | libc::ECONNRESET
                | libc::EPROTO
                | libc::EPERM
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
                | libc::ENETDOWN
                | libc::EINTR
                | libc::EAGAIN,
            ) => AcceptError::Connection,
            Some(libc::EINVAL) => AcceptError::NotListening,
            _ => AcceptError::Resources,
        }
    }
}

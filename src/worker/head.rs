//! A connection's first request head, awaited before hyper takes the connection.
//!
//! hyper gives a connection a read buffer and a write buffer of 8 KiB each as it starts to
//! serve it, and keeps them while the connection lives. A connection that has sent nothing
//! yet, or trickles its head in a line at a time (slowloris), would hold both until
//! `keep_alive_timeout_s` closes it: measured, 10,000 such connections took a worker to
//! 205 MiB. Here, until its first head is complete, a connection holds only the bytes it has
//! sent (a few hundred); then hyper gets it with those bytes in front of the socket
//! ([`Rewind`]) and parses them as if it had read them itself, its limits and its answers
//! to bad heads (400, 431) unchanged. Whether a head is complete is decided by hyper's own
//! parser (httparse): bytes that it finds wrong (a version other than HTTP/1.x, a bad
//! token) go to hyper at once, which answers them as it always did, and so do bytes that
//! make no complete head within [`ENOUGH`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes of a first head waited for here; past them hyper takes over. Most request heads
/// are under 1 KiB.
const ENOUGH: usize = 2048;

/// How the wait for a connection's first head ended.
pub enum First {
    /// The head is complete (or [`ENOUGH`] bytes came): hyper's turn.
    Arrived(Rewind),
    /// The client closed the connection, or it broke, before a head.
    Closed,
    /// No complete head by the deadline (`keep_alive_timeout_s` after it opened).
    TimedOut,
}

/// Waits until `stream` has sent a complete request head, until `deadline`.
pub async fn first(stream: TcpStream, deadline: Instant) -> First {
    let mut sent: Vec<u8> = Vec::new();
    let mut chunk = [0u8; ENOUGH];
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.readable()).await {
            Err(_) => return First::TimedOut,
            Ok(Err(_)) => return First::Closed,
            Ok(Ok(())) => {}
        }
        let room = ENOUGH - sent.len();
        match stream.try_read(&mut chunk[..room]) {
            Ok(0) => return First::Closed,
            Ok(n) => {
                sent.extend_from_slice(&chunk[..n]);
                if !is_partial_head(&sent) || sent.len() == ENOUGH {
                    return First::Arrived(Rewind {
                        sent: Bytes::from(sent),
                        stream,
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return First::Closed,
        }
    }
}

/// Whether `bytes` are the start of a request head that is not complete yet: `false` for a
/// complete head and for bytes that cannot start one (hyper's to answer).
fn is_partial_head(bytes: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    matches!(request.parse(bytes), Ok(httparse::Status::Partial))
}

/// Headers parsed while waiting; a head with more goes to hyper (whose limit is 100).
const HEADERS: usize = 100;

/// A connection with the bytes already read from it in front: reads return those first.
pub struct Rewind {
    sent: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.sent.has_remaining() {
            let n = self.sent.len().min(buf.remaining());
            buf.put_slice(&self.sent[..n]);
            self.sent.advance(n);
            if !self.sent.has_remaining() {
                self.sent = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_awaited_only_while_it_is_partial() {
        assert!(is_partial_head(b""));
        assert!(is_partial_head(b"GE"));
        assert!(is_partial_head(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(is_partial_head(
            b"GET / HTTP/1.1\r\nX-Slow: 1\r\nX-Slow: 1\r\n"
        ));
        assert!(!is_partial_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!is_partial_head(b"GET / HTTP/1.1\nHost: a\n\n"));
        // Not HTTP/1.x, or not HTTP at all: hyper answers at once.
        assert!(!is_partial_head(b"GET / HTTP/2.0\r\n"));
        assert!(!is_partial_head(b"PRI * HTTP/2.0\r\n"));
        assert!(!is_partial_head(b"\x16\x03\x01\x02\x00"));
    }
}

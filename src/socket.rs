//! The listening socket: bound once by the supervisor, inherited by every worker.

use std::net::{IpAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::error::Error;

/// Pending connections the kernel may queue (capped by `net.core.somaxconn`): a worker
/// restart or a burst must queue, not refuse.
const BACKLOG: i32 = 4096;

/// Binds `host:port` and sets the socket timeouts that every accepted connection inherits.
pub fn bind(host: IpAddr, port: u16, keep_alive: Duration) -> Result<TcpListener, Error> {
    let about = || format!("cannot listen on {host}:{port}");
    let listener = TcpListener::bind((host, port)).map_err(|e| Error::io(about(), e))?;
    let fd = listener.as_raw_fd();
    // SAFETY: plain setsockopt/listen calls on a socket we own.
    let raised = unsafe { libc::listen(fd, BACKLOG) };
    if raised != 0 {
        return Err(Error::io(about(), std::io::Error::last_os_error()));
    }
    set_timeouts(&listener, keep_alive).map_err(|e| Error::io(about(), e))?;
    Ok(listener)
}

/// `SO_RCVTIMEO` and `SO_SNDTIMEO` on the listening socket. Linux copies both onto each
/// accepted socket, so an idle or stalled connection fails its read or write after
/// `timeout` and tiny_http closes it. (`accept` itself then times out too; see `acceptor`.)
pub fn set_timeouts(listener: &TcpListener, timeout: Duration) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    for option in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: `tv` is a valid timeval for the length given.
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

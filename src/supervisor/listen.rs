//! The listening socket: bound once by the supervisor, inherited by every worker, and the
//! file that tells `healthcheck` where it is.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;

use crate::error::Error;
use crate::say;

/// Pending connections the kernel may queue (capped by `net.core.somaxconn`): a worker
/// restart, a burst, or a worker at `max_connections` must queue, not refuse.
const BACKLOG: i32 = 4096;

/// Binds `host:port`.
pub fn bind(host: IpAddr, port: u16) -> Result<TcpListener, Error> {
    let about = || format!("cannot listen on {host}:{port}");
    let listener = TcpListener::bind((host, port)).map_err(|e| Error::io(about(), e))?;
    // SAFETY: listen on a socket we own, to raise the backlog std chose.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
        return Err(Error::io(about(), std::io::Error::last_os_error()));
    }
    Ok(listener)
}

/// Stops listening, for every process that shares the socket: new connections are refused
/// and each waiting `accept()` returns. Connections already accepted are not touched.
pub fn stop_listening(listener: &TcpListener) {
    // SAFETY: shutdown on our listening socket; on Linux this ends its LISTEN state.
    unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RD) };
}

/// Where a supervisor with this PID records the address it serves on, for `healthcheck`.
pub fn address_file(pid: u32) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("microservice-rust-{pid}.addr"))
}

/// The address a client on this machine reaches the service at: the bound one, with a
/// wildcard replaced by the loopback.
pub fn reachable_address(listener: &TcpListener) -> std::io::Result<SocketAddr> {
    let mut address = listener.local_addr()?;
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(address)
}

/// The file naming the address this supervisor serves on (see [`address_file`]), removed
/// when the supervisor ends.
pub struct AddressFile(Option<std::path::PathBuf>);

impl AddressFile {
    pub fn write(listener: &TcpListener) -> AddressFile {
        let path = address_file(std::process::id());
        // Written aside and renamed into place: a reader sees the old file or the whole new
        // one, never an empty one.
        let aside = path.with_extension("addr.new");
        let written = reachable_address(listener)
            .and_then(|address| std::fs::write(&aside, format!("{address}\n")))
            .and_then(|()| std::fs::rename(&aside, &path));
        match written {
            Ok(()) => AddressFile(Some(path)),
            Err(e) => {
                say!("cannot record the address in {}: {e}", path.display());
                AddressFile(None)
            }
        }
    }
}

impl Drop for AddressFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

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

/// This process's accepted connections on `listener`'s port: the fds of sockets with that
/// local port that are not the listening socket itself (tiny_http holds two fds per
/// connection, a read and a write half).
pub fn accepted_connections(listener: &TcpListener) -> Vec<std::os::fd::RawFd> {
    Sockets::default()
        .scan(listener)
        .into_iter()
        .flat_map(|c| c.fds)
        .collect()
}

/// The socket inode an fd refers to (every duplicate of a socket shares it); `None` for an
/// fd that is not a socket.
pub fn inode(fd: std::os::fd::RawFd) -> Option<u64> {
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat fills `stat` for a valid fd and fails otherwise.
    let found = unsafe { libc::fstat(fd, &mut stat) } == 0;
    (found && stat.st_mode & libc::S_IFMT == libc::S_IFSOCK).then_some(stat.st_ino)
}

/// One accepted connection as a look at the process's fds found it.
pub struct Connection {
    pub peer: std::net::SocketAddr,
    pub inode: u64,
    /// This process's fds for it (tiny_http holds two).
    pub fds: Vec<std::os::fd::RawFd>,
    /// Bytes waiting to be read (after [`Connection::measure`]).
    pub unread: usize,
    /// Bytes received over its life, when the kernel tells (after `measure`).
    pub received: Option<u64>,
}

impl Connection {
    /// Fills in `unread` and `received`.
    pub fn measure(&mut self) {
        let fd = self.fds[0];
        let mut waiting: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int for a socket.
        if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut waiting) } == 0 {
            self.unread = waiting.max(0) as usize;
        }
        self.received = bytes_received(fd);
    }

    /// A duplicate of our own: the fd numbers in `fds` may be closed by their owner at any
    /// time and reused for another connection, this one stays this connection's.
    pub fn duplicate(&self) -> Option<std::os::fd::OwnedFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: F_DUPFD_CLOEXEC returns a new fd that only we own, or -1.
        let copy = unsafe { libc::fcntl(self.fds[0], libc::F_DUPFD_CLOEXEC, 0) };
        if copy < 0 {
            return None;
        }
        // SAFETY: `copy` is ours alone.
        let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(copy) };
        // The number may have been closed and reused between the look and the dup.
        (inode(copy) == Some(self.inode)).then_some(socket)
    }
}

/// The start of the kernel's `struct tcp_info`, up to `tcpi_bytes_received` (Linux 4.1).
#[repr(C)]
struct TcpInfoHead {
    bytes: [u8; 8],
    words: [u32; 24],
    pacing_rate: u64,
    max_pacing_rate: u64,
    bytes_acked: u64,
    bytes_received: u64,
}

fn bytes_received(fd: std::os::fd::RawFd) -> Option<u64> {
    let mut info: TcpInfoHead = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<TcpInfoHead>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `length` bytes of its tcp_info.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut TcpInfoHead).cast(),
            &mut length,
        )
    };
    (rc == 0 && length as usize == std::mem::size_of::<TcpInfoHead>())
        .then_some(info.bytes_received)
}

/// Finds the accepted connections among the process's fds, remembering which socket
/// (inode) is which, so that a look costs one `fstat` per fd once the sockets are known.
#[derive(Default)]
pub struct Sockets {
    /// inode → the peer, for an accepted connection on the port; `None` for other sockets.
    known: std::collections::HashMap<u64, Option<std::net::SocketAddr>>,
    /// How many fds the process had open at the last scan.
    pub fds_open: usize,
}

impl Sockets {
    pub fn scan(&mut self, listener: &TcpListener) -> Vec<Connection> {
        let Ok(port) = listener.local_addr().map(|a| a.port()) else {
            return Vec::new();
        };
        let own = inode(listener.as_raw_fd());
        let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
            return Vec::new();
        };
        let mut found: std::collections::HashMap<u64, Connection> = Default::default();
        let mut seen = std::collections::HashSet::new();
        let fds = entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok());
        self.fds_open = 0;
        for fd in fds {
            self.fds_open += 1;
            let Some(socket) = inode(fd).filter(|i| Some(*i) != own) else {
                continue;
            };
            seen.insert(socket);
            let peer = *self
                .known
                .entry(socket)
                .or_insert_with(|| is_accepted_on(fd, port).then(|| peer_of(fd)).flatten());
            let Some(peer) = peer else { continue };
            found
                .entry(socket)
                .or_insert_with(|| Connection {
                    peer,
                    inode: socket,
                    fds: Vec::new(),
                    unread: 0,
                    received: None,
                })
                .fds
                .push(fd);
        }
        self.known.retain(|socket, _| seen.contains(socket));
        found.into_values().collect()
    }
}

fn is_accepted_on(fd: std::os::fd::RawFd, port: u16) -> bool {
    let mut address: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname fills at most `length` bytes and fails on a non-socket.
    if unsafe {
        libc::getsockname(
            fd,
            (&mut address as *mut libc::sockaddr_storage).cast(),
            &mut length,
        )
    } != 0
    {
        return false;
    }
    let local_port = match address.ss_family as i32 {
        libc::AF_INET => {
            let v4 = unsafe { &*(&address as *const _ as *const libc::sockaddr_in) };
            u16::from_be(v4.sin_port)
        }
        libc::AF_INET6 => {
            let v6 = unsafe { &*(&address as *const _ as *const libc::sockaddr_in6) };
            u16::from_be(v6.sin6_port)
        }
        _ => return false,
    };
    let mut listening: libc::c_int = 0;
    let mut size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_ACCEPTCONN writes one int.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut listening as *mut libc::c_int).cast(),
            &mut size,
        )
    };
    local_port == port && rc == 0 && listening == 0
}

/// The address of the other end of a connected socket.
pub fn peer_of(fd: std::os::fd::RawFd) -> Option<std::net::SocketAddr> {
    use std::os::fd::FromRawFd;
    // SAFETY: borrowed for one call and never dropped, so the fd stays open and owned by
    // whoever owned it.
    let stream = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
    stream.peer_addr().ok()
}

/// This process's limit on open file descriptors.
pub fn fd_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_cur.min(usize::MAX as u64) as usize
}

/// Shuts down a socket's reading side: reads return what has already arrived, then the end.
pub fn shut_down_reading(fd: std::os::fd::RawFd) {
    // SAFETY: shutdown on a socket fd; an fd closed meanwhile just fails.
    unsafe { libc::shutdown(fd, libc::SHUT_RD) };
}

/// Shuts down both directions of each socket: its reader sees the end, the client a FIN.
pub fn shut_down(fds: &[std::os::fd::RawFd]) {
    for &fd in fds {
        // SAFETY: shutdown on a socket fd; an fd closed meanwhile just fails.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
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
pub fn reachable_address(listener: &TcpListener) -> std::io::Result<std::net::SocketAddr> {
    let mut address = listener.local_addr()?;
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(address)
}

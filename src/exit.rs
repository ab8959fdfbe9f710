//! Exit codes, shared by the supervisor and the worker so that the supervisor can tell
//! "could not start" from "crashed" (as gunicorn reserves codes for boot and app-load
//! errors), and pass the worker's meaning on to whoever started the container.

/// A bad config file, key or environment name (sysexits' `EX_CONFIG`).
pub const CONFIG: i32 = 78;
/// The worker could not start: no listening socket, no threads.
pub const BOOT: i32 = 3;
/// The app library could not be loaded, or its constructor refused to start.
pub const APP_LOAD: i32 = 4;
/// A command used wrongly: a bad argument, a directory that is not empty (`EX_USAGE`).
pub const USAGE: i32 = 64;
/// Any other failure of the supervisor itself (e.g. the port cannot be bound).
pub const FAILURE: i32 = 1;

/// The exit code that stands for a process's wait status: its own code, or 128 + the signal
/// that killed it.
pub fn from_wait_status(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        FAILURE
    }
}

/// How a wait status reads in a log line.
pub fn describe_wait_status(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        format!("was killed by signal {} ({signal})", signal_name(signal))
    } else {
        format!("exited with code {}", from_wait_status(status))
    }
}

pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        _ => "signal",
    }
}

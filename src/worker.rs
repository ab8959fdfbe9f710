//! The worker process: started by the supervisor as `microservice-rust worker`, it takes the
//! listening socket on fd [`LISTEN_FD`], reads its resolved config on stdin, loads the app
//! and serves until told to stop.
//!
//! It says "ready" on the status pipe (fd [`STATUS_FD`]) once it accepts connections, and
//! exits with a reserved code (see `exit`) when it cannot start, so the supervisor can tell
//! a worker that never came up from one that crashed.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::acceptor::Acceptor;
use crate::config::Settings;
use crate::error::Error;
use crate::exit;
use crate::loader::LoadedApp;
use crate::log;
use crate::pool::{Pool, PoolSettings};
use crate::say;

/// Where the worker finds the listening socket (as systemd's socket activation does).
pub const LISTEN_FD: RawFd = 3;
/// Where the worker writes `ready`.
pub const STATUS_FD: RawFd = 4;

/// What the supervisor writes on the worker's stdin.
pub fn handoff(source: &str, config: &Value) -> String {
    serde_json::json!({ "source": source, "config": config }).to_string()
}

pub fn run() -> Result<i32, Error> {
    log::set_role("worker");
    die_with_parent();

    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| Error::boot("cannot read the config from the supervisor", e))?;
    let handoff: Value = serde_json::from_str(&text).map_err(|e| {
        Error::boot(
            "the worker is started by the supervisor, not by hand",
            std::io::Error::other(e),
        )
    })?;
    let source = handoff["source"].as_str().unwrap_or("the supervisor");
    let config = &handoff["config"];
    let settings = Settings::from_json(config, source)?;
    let app_path = settings.app.clone().ok_or_else(|| {
        Error::boot(
            "the supervisor sent no app path",
            std::io::ErrorKind::InvalidInput.into(),
        )
    })?;

    // SAFETY: the supervisor placed the listening socket on this fd before exec.
    let listener = unsafe { TcpListener::from_raw_fd(LISTEN_FD) };
    listener
        .local_addr()
        .map_err(|e| Error::boot(format!("fd {LISTEN_FD} is not a listening socket"), e))?;
    let signals = Signals::new([SIGTERM, SIGINT])
        .map_err(|e| Error::boot("cannot install signal handlers", e))?;

    let app = Arc::new(LoadedApp::load(&app_path, &config.to_string())?);
    let threads = settings.pool_threads();
    let pool = Pool::start(
        app.clone(),
        PoolSettings {
            threads,
            timeout: settings.request_timeout(),
            max_body_bytes: settings.max_body_bytes,
        },
    );
    let ready = Arc::new(AtomicBool::new(false));
    Acceptor::start(
        listener,
        pool.sender(),
        ready.clone(),
        settings.keep_alive_timeout(),
    )
    .map_err(|e| Error::boot("cannot start accepting connections", e))?;
    ready.store(true, Ordering::Release);
    say!(
        "serving {} ({} mode, {threads} thread(s))",
        app.path().display(),
        settings.mode.name()
    );
    report_ready();

    wait_for_stop(signals);
    ready.store(false, Ordering::Release);
    let grace = std::time::Duration::from_secs_f64(settings.stop_timeout_s);
    if !pool.shut_down_app(grace) {
        say!("requests still inside the app after {grace:?}; its shutdown hook is skipped");
    }
    Ok(0)
}

/// Tells the supervisor we accept connections. A missing pipe only means nobody listens.
fn report_ready() {
    // SAFETY: the supervisor placed the status pipe on this fd before exec.
    let mut status = unsafe { File::from_raw_fd(STATUS_FD) };
    let _ = status.write_all(b"ready\n");
    std::mem::forget(status); // keep the fd open: EOF means this worker is gone
}

fn wait_for_stop(mut signals: Signals) {
    if let Some(signal) = signals.forever().next() {
        say!("stopping on {}", exit::signal_name(signal));
    }
}

/// The environment variable naming the supervisor's PID for its workers.
pub const SUPERVISOR_PID_VAR: &str = "MICROSERVICE_RUST_SUPERVISOR";

/// A worker must not outlive its supervisor (e.g. after `kill -9` of the supervisor).
fn die_with_parent() {
    // SAFETY: prctl with these arguments only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
    // The supervisor may have died before the flag was set.
    let supervisor = std::env::var(SUPERVISOR_PID_VAR).ok();
    let parent = unsafe { libc::getppid() }.to_string();
    if supervisor.is_some_and(|pid| pid != parent) {
        std::process::exit(exit::BOOT);
    }
}

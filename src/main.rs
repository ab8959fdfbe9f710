//! `microservice-rust`: the supervisor, and (as `microservice-rust worker`) the worker.
//!
//! Module map: `cli` (command line) → `config` (lookup, keys, validation) → `supervisor`
//! (PID 1: socket, worker processes, signals, reaping) → `worker` (one process: `loader`
//! loads the app, `acceptor` receives from tiny_http and `screen` checks each request's
//! head, `pool` runs requests with deadlines, `bridge` converts between tiny_http and the
//! app's C ABI, `closer` ends the connections tiny_http would keep open, `watch` looks after them all).

mod acceptor;
mod access;
mod bridge;
mod cli;
mod closer;
mod config;
mod error;
mod exit;
mod loader;
mod log;
mod metrics;
mod pool;
mod reload;
mod screen;
mod signals;
mod socket;
mod status;
mod supervisor;
mod watch;
mod worker;

fn main() {
    let code = match cli::try_main() {
        Ok(code) => code,
        Err(error) => {
            say!("{error}");
            error.exit_code()
        }
    };
    std::process::exit(code);
}

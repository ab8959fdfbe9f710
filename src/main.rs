//! `microservice-rust`: the supervisor, and (as `microservice-rust worker`) the worker.
//!
//! The folders are the two processes: `supervisor/` (PID 1: the listening socket, worker
//! processes, signals, the watchdog, reloads, reaping) and `worker/` (one process: hyper on
//! a small tokio runtime in front, the app on a fixed pool of threads behind). Beside them
//! what both use: `cli` (the command line, which starts one or the other), `config`
//! (lookup, keys, validation), `control` (the channel between the two processes),
//! `metrics` (the shared memory behind `/metrics`, the app's own metrics too),
//! `resident` (start-up's code let go once a process serves), `log`, `error` and `exit`.
//! The app SDK is the crate's library, in `sdk/`; `scaffold` writes it, and new apps, for
//! app authors.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod cli;
mod config;
mod control;
mod error;
mod exit;
mod log;
mod metrics;
mod resident;
mod scaffold;
mod supervisor;
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

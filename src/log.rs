//! Log lines on stderr: `microservice-rust[PID] ROLE: message`.
//!
//! Each process names its role (`supervisor`, `worker`) once at start; lines are written
//! whole, so the supervisor's and the workers' output interleave by line, never mid-line.

use std::io::Write;
use std::sync::OnceLock;

static ROLE: OnceLock<&'static str> = OnceLock::new();

pub fn set_role(role: &'static str) {
    let _ = ROLE.set(role);
}

pub fn line(args: std::fmt::Arguments<'_>) {
    let role = ROLE.get().copied().unwrap_or("microservice-rust");
    let text = format!("microservice-rust[{}] {role}: {args}\n", std::process::id());
    // One write call per line; a closed stderr must not take the process down.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// `say!("worker {pid} ready")`: one log line.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::log::line(format_args!($($arg)*)) };
}

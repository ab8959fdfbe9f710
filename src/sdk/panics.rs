//! A panic in the app is one log line in the worker's log format, naming the request it
//! broke, instead of Rust's multi-line text.
//!
//! The app has its own copy of the standard library, hence its own panic hook: the worker's
//! cannot see the app's panics. So the SDK installs the hook when the worker creates the app,
//! and the worker tells it the log format through [`LOG_FORMAT_VAR`]. Each exported entry
//! point says what the thread is doing (building the app, answering `GET /x`, …) for the
//! time of the call; a panic elsewhere (a thread the app started) names its thread.

use std::any::Any;
use std::backtrace::{Backtrace, BacktraceStatus};
use std::cell::Cell;
use std::ffi::c_void;
use std::fmt::Write as _;
use std::io::Write as _;
use std::panic::PanicHookInfo;
use std::sync::Once;
use std::time::SystemTime;

use crate::abi::MsrBytes;
use crate::clock::iso_time;

/// Set by the worker to its `log_format` (`text` or `json`) for the app's panic lines.
pub const LOG_FORMAT_VAR: &str = "MICROSERVICE_LOG_FORMAT";

/// What a thread is doing inside the app, as the panic line names it.
#[derive(Clone, Copy)]
pub(crate) enum Doing {
    Other,
    Starting,
    /// The request's method, path, ID and `host_ctx`, valid while `handle` runs.
    Handling {
        method: MsrBytes,
        path: MsrBytes,
        id: MsrBytes,
        ctx: *mut c_void,
    },
    CheckingHealth,
    ShuttingDown,
}

thread_local! {
    static DOING: Cell<Doing> = const { Cell::new(Doing::Other) };
}

/// Runs `f` (which must not unwind: the entry points catch panics inside it) as `doing`.
pub(crate) fn while_doing<R>(doing: Doing, f: impl FnOnce() -> R) -> R {
    let before = DOING.replace(doing);
    let result = f();
    DOING.set(before);
    result
}

/// The `host_ctx` of the request this thread is answering, or NULL (the app's log lines
/// name the request with it).
pub(crate) fn request_ctx() -> *mut c_void {
    match DOING.get() {
        Doing::Handling { ctx, .. } => ctx,
        _ => std::ptr::null_mut(),
    }
}

/// Installs the hook once for this copy of the SDK; the worker's format is read then.
pub(crate) fn install_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let json = std::env::var(LOG_FORMAT_VAR).is_ok_and(|format| format == "json");
        std::panic::set_hook(Box::new(move |info| {
            let line = panic_line(info, DOING.get(), json);
            // One write call per line, as the worker writes its own.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }));
    });
}

/// The message a panic carried, when it is text.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

fn panic_line(info: &PanicHookInfo<'_>, doing: Doing, json: bool) -> String {
    let text = |bytes: MsrBytes| {
        // SAFETY: `Handling` is set only while `handle` runs, when the request is valid.
        String::from_utf8_lossy(unsafe { bytes.as_slice() }).into_owned()
    };
    let (place, request) = match doing {
        Doing::Handling {
            method, path, id, ..
        } => {
            let (method, path, id) = (text(method), text(path), text(id));
            (
                format!("answering {method} {path} (request {id})"),
                Some((method, path, id)),
            )
        }
        Doing::Starting => ("starting".to_owned(), None),
        Doing::CheckingHealth => ("checking its health".to_owned(), None),
        Doing::ShuttingDown => ("shutting down".to_owned(), None),
        Doing::Other => {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("unnamed").to_owned();
            (format!("in thread `{name}`"), None)
        }
    };
    let panic = panic_message(info.payload());
    let location = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_else(|| "unknown".to_owned());
    let message = format!("the app panicked {place}: {panic} (at {location})");
    // `capture` asks RUST_LIB_BACKTRACE and RUST_BACKTRACE, as Rust's own hook does.
    let backtrace = Backtrace::capture();
    let backtrace = (backtrace.status() == BacktraceStatus::Captured).then_some(backtrace);
    let pid = std::process::id();
    if !json {
        let mut line = format!("microservice-rust[{pid}] worker: {message}\n");
        if let Some(backtrace) = backtrace {
            let _ = writeln!(line, "backtrace:\n{backtrace}");
        }
        return line;
    }
    let mut line = format!(
        "{{\"time\":\"{}\",\"level\":\"error\",\"process\":\"worker\",\"pid\":{pid}",
        iso_time(SystemTime::now())
    );
    let mut field = |name: &str, value: &str| {
        let _ = write!(line, ",\"{name}\":");
        json_string(&mut line, value);
    };
    field("message", &message);
    if let Some((method, path, id)) = &request {
        field("method", method);
        field("path", path);
        field("request_id", id);
    }
    field("panic", panic);
    field("location", &location);
    if let Some(backtrace) = backtrace {
        field("backtrace", &backtrace.to_string());
    }
    line.push_str("}\n");
    line
}

/// `value` as a JSON string.
fn json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::json_string;

    #[test]
    fn json_strings_escape_quotes_backslashes_and_control_characters() {
        let mut out = String::new();
        json_string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
    }
}

//! What the worker gives an app for the life of the process (`msr_attach_host`): the app
//! writes its own log lines through the worker, in the worker's format and level, tagged
//! with the worker and the request, and never blocked by a slow stderr; and it declares and
//! updates its own metrics, kept beside the server's (see `metrics`).

use std::ffi::c_void;
use std::io::Write;
use std::sync::Arc;
use std::time::SystemTime;

use microservice_rust::abi::{self, MsrBytes, MsrHostApi};
use microservice_rust::metrics::MAX_LABELS;

use super::access::{Lines, Output};
use super::call;
use super::fault::{guarded, Faults};
use crate::log::{self, Format, Level};
use crate::metrics::{Declaration, Recorder};

/// The longest message kept; the rest is cut.
const MESSAGE_BYTES: usize = 16 * 1024;

/// The worker's side of the table.
struct Host {
    lines: Arc<Lines>,
    metrics: Recorder,
    faults: Faults,
}

/// The table the app gets, and the state it points at. Both live as long as the process:
/// a worker loads one app once, and the app may log from its own threads until the end.
pub fn table(lines: Arc<Lines>, metrics: Recorder, faults: Faults) -> &'static MsrHostApi {
    let host: &'static Host = Box::leak(Box::new(Host {
        lines,
        metrics,
        faults,
    }));
    Box::leak(Box::new(MsrHostApi {
        size: std::mem::size_of::<MsrHostApi>(),
        host: (host as *const Host).cast_mut().cast(),
        log: app_log,
        metric_declare,
        metric_update,
    }))
}

/// The `count` items at `items` (none when NULL).
///
/// # Safety
/// `items` is NULL or points at `count` items valid for the call.
unsafe fn slice<'a, T>(items: *const T, count: usize) -> &'a [T] {
    match count {
        0 => &[],
        _ if items.is_null() => &[],
        // SAFETY: the caller's contract: `items` (not NULL, checked above) points at `count`
        // items valid for the call, which `'a` (chosen by the caller) does not outlast.
        n => unsafe { std::slice::from_raw_parts(items, n) },
    }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn metric_declare(
    host: *mut c_void,
    kind: u32,
    name: MsrBytes,
    help: MsrBytes,
    label_names: *const MsrBytes,
    label_count: usize,
    bounds: *const f64,
    bound_count: usize,
    error: *mut u8,
    error_cap: usize,
) -> i64 {
    guarded("metric_declare", -1, || {
        // SAFETY: the app's arguments, as the ABI has it pass them (see `declare`).
        unsafe {
            declare(
                host,
                kind,
                name,
                help,
                (label_names, label_count),
                (bounds, bound_count),
                (error, error_cap),
            )
        }
    })
}

/// `metric_declare`'s work.
///
/// # Safety
/// `host` is NULL or `table`'s; each pointer and count is a valid run or array of that
/// many items for the call, as the ABI says.
unsafe fn declare(
    host: *mut c_void,
    kind: u32,
    name: MsrBytes,
    help: MsrBytes,
    (label_names, label_count): (*const MsrBytes, usize),
    (bounds, bound_count): (*const f64, usize),
    (error, error_cap): (*mut u8, usize),
) -> i64 {
    let fail = |message: &str| {
        // SAFETY: this function's contract (the ABI): `error` is the app's buffer of
        // `error_cap` writable bytes, valid for the call.
        unsafe { abi::write_message(error, error_cap, message) };
        -1
    };
    // SAFETY: this function's contract (the ABI): `name`, `help` and each label name are
    // runs of as many bytes as they say, valid for the call, which the text does not
    // outlast (`Declaration` is copied into the metrics memory by `app_declare`).
    let text = |run: &MsrBytes| std::str::from_utf8(unsafe { run.as_slice() }).ok();
    let Some(name) = text(&name) else {
        return fail("a metric's name must be UTF-8");
    };
    if host.is_null() {
        return fail("no worker");
    }
    // SAFETY: this function's contract: `host` (not NULL, checked above) is `table`'s, a
    // leaked `Host` that lives as long as the process and is only read.
    let host = unsafe { &*(host as *const Host) };
    // SAFETY: this function's contract (the ABI): `label_names` is NULL or points at
    // `label_count` runs, valid for the call.
    let labels: Option<Vec<&str>> = unsafe { slice(label_names, label_count) }
        .iter()
        .map(text)
        .collect();
    let (Some(help), Some(labels)) = (text(&help), labels) else {
        return fail(&format!(
            "metric `{name}`: its help and label names must be UTF-8"
        ));
    };
    // SAFETY: this function's contract (the ABI): `bounds` is NULL or points at
    // `bound_count` numbers, valid for the call (`to_vec` copies them below).
    let bounds = unsafe { slice(bounds, bound_count) };
    if let Some(refusal) = microservice_rust::metrics::refusal(kind, name, help, &labels, bounds) {
        return fail(&refusal);
    }
    let declaration = Declaration {
        kind,
        name: name.as_bytes(),
        help: help.as_bytes(),
        labels: labels.iter().map(|l| l.as_bytes()).collect(),
        bounds: bounds.to_vec(),
    };
    match host.metrics.app_declare(&declaration) {
        Ok(id) => id as i64,
        Err(message) => fail(&message),
    }
}

unsafe extern "C" fn metric_update(
    host: *mut c_void,
    id: i64,
    op: u32,
    label_values: *const MsrBytes,
    label_count: usize,
    value: f64,
) -> i32 {
    guarded("metric_update", -1, || {
        // SAFETY: the app's arguments, as the ABI has it pass them (see `update`).
        unsafe { update(host, id, op, (label_values, label_count), value) }
    })
}

/// `metric_update`'s work.
///
/// # Safety
/// As for [`declare`].
unsafe fn update(
    host: *mut c_void,
    id: i64,
    op: u32,
    (label_values, label_count): (*const MsrBytes, usize),
    value: f64,
) -> i32 {
    let (Ok(id), false) = (usize::try_from(id), host.is_null()) else {
        return -1;
    };
    if label_count > MAX_LABELS {
        return -1;
    }
    // SAFETY: as in `declare`: `host` (not NULL, checked above) is `table`'s leaked `Host`,
    // alive for the process and only read.
    let host = unsafe { &*(host as *const Host) };
    let mut values: [&[u8]; MAX_LABELS] = [&[]; MAX_LABELS];
    for (slot, run) in values
        .iter_mut()
        // SAFETY: this function's contract (the ABI): `label_values` is NULL or points at
        // `label_count` runs, valid for the call.
        .zip(unsafe { slice(label_values, label_count) })
    {
        // SAFETY: this function's contract (the ABI): each value is a run of as many bytes
        // as it says, valid for the call; `values` does not outlive it.
        *slot = unsafe { run.as_slice() };
    }
    match host
        .metrics
        .app_update(id, op, &values[..label_count], value)
    {
        true => 0,
        false => -1,
    }
}

/// The level an app's number names (past `LOG_ERROR`: error).
fn level(number: u32) -> Level {
    match number {
        abi::LOG_DEBUG => Level::Debug,
        abi::LOG_INFO => Level::Info,
        abi::LOG_WARN => Level::Warn,
        _ => Level::Error,
    }
}

/// The request a line is about: its ID, method and path.
struct About<'a> {
    id: &'a str,
    method: &'a str,
    path: &'a str,
}

unsafe extern "C" fn app_log(
    host: *mut c_void,
    request_ctx: *mut c_void,
    number: u32,
    message: *const u8,
    len: usize,
) {
    guarded("log", (), || {
        // SAFETY: the app's arguments, as the ABI has it pass them (see `log_line`).
        unsafe { log_line(host, request_ctx, number, message, len) }
    })
}

/// `log`'s work.
///
/// # Safety
/// `host` is NULL or `table`'s; `message` is valid for `len` bytes; `request_ctx` is NULL
/// or the `host_ctx` of a request whose `handle` runs on this thread.
unsafe fn log_line(
    host: *mut c_void,
    request_ctx: *mut c_void,
    number: u32,
    message: *const u8,
    len: usize,
) {
    let level = level(number);
    if host.is_null() || !log::enabled(level) {
        return;
    }
    // SAFETY: this function's contract: `host` (not NULL, checked above) is the pointer of
    // `table`, a leaked `Host` alive for the process and only read.
    let host = unsafe { &*(host as *const Host) };
    host.faults.point("host-log");
    // SAFETY: this function's contract (the ABI): `message` is `len` bytes valid for the
    // call; the text is copied into the line (`lines.add`) before it returns.
    let message = unsafe { MsrBytes { ptr: message, len }.as_slice() };
    let message = String::from_utf8_lossy(&message[..message.len().min(MESSAGE_BYTES)]);
    // SAFETY: this function's contract (the ABI): a non-NULL `request_ctx` is the
    // `host_ctx` of a request whose `handle` runs on this thread now, i.e. a live `Call`;
    // what it lends is used only until this function returns.
    let request = (!request_ctx.is_null()).then(|| unsafe { call::request_of(request_ctx) });
    let id = request.as_ref().map(|(_, id)| id.as_str());
    let about = request.as_ref().zip(id).map(|((received, _), id)| About {
        id,
        method: received.head.method.as_str(),
        path: received.head.uri.path(),
    });
    host.lines.add(Output::Stderr, |out| {
        app_line(out, level, &message, about.as_ref(), log::format())
    });
}

/// One line of the app's, in the worker's format: `microservice-rust[PID] app: LEVEL:
/// message (request ID, METHOD PATH)`, or a JSON object with the same fields.
fn app_line(
    out: &mut Vec<u8>,
    level: Level,
    message: &str,
    about: Option<&About<'_>>,
    format: Format,
) -> std::io::Result<()> {
    let pid = std::process::id();
    match format {
        Format::Text => {
            write!(out, "microservice-rust[{pid}] app: {}: ", level.name())?;
            for c in message.chars() {
                match c {
                    c if c.is_control() => write!(out, "\\x{:02x}", u32::from(c))?,
                    c => write!(out, "{c}")?,
                }
            }
            if let Some(about) = about {
                write!(
                    out,
                    " (request {}, {} {})",
                    about.id, about.method, about.path
                )?;
            }
            out.push(b'\n');
        }
        Format::Json => {
            let mut fields = serde_json::json!({
                "time": log::iso_time(SystemTime::now()),
                "level": level.name(),
                "process": "app",
                "pid": pid,
                "message": message,
            });
            if let Some(about) = about {
                fields["request_id"] = about.id.into();
                fields["method"] = about.method.into();
                fields["path"] = about.path.into();
            }
            serde_json::to_writer(&mut *out, &fields)?;
            out.push(b'\n');
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_name_the_level_and_the_request_and_escape_line_ends() {
        let about = About {
            id: "abc",
            method: "GET",
            path: "/rums/ann",
        };
        let mut out = Vec::new();
        app_line(
            &mut out,
            Level::Warn,
            "two\nlines",
            Some(&about),
            Format::Text,
        )
        .expect("a line");
        let pid = std::process::id();
        assert_eq!(
            String::from_utf8(out).expect("UTF-8"),
            format!(
                "microservice-rust[{pid}] app: warn: two\\x0alines (request abc, GET /rums/ann)\n"
            )
        );
        let mut out = Vec::new();
        app_line(&mut out, Level::Info, "alone", None, Format::Text).expect("a line");
        assert!(String::from_utf8(out)
            .expect("UTF-8")
            .ends_with("app: info: alone\n"));
    }

    #[test]
    fn json_lines_carry_the_same_fields() {
        let about = About {
            id: "abc",
            method: "POST",
            path: "/x",
        };
        let mut out = Vec::new();
        app_line(
            &mut out,
            Level::Error,
            "a \"b\"\n",
            Some(&about),
            Format::Json,
        )
        .expect("a line");
        let text = String::from_utf8(out).expect("UTF-8");
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "{text}"
        );
        let line: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(line["level"], "error");
        assert_eq!(line["process"], "app");
        assert_eq!(line["message"], "a \"b\"\n");
        assert_eq!(line["request_id"], "abc");
        assert_eq!(line["method"], "POST");
        assert_eq!(line["path"], "/x");
    }

    #[test]
    fn numbers_past_error_are_errors() {
        assert_eq!(level(abi::LOG_DEBUG), Level::Debug);
        assert_eq!(level(abi::LOG_WARN), Level::Warn);
        assert_eq!(level(99), Level::Error);
    }
}

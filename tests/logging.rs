//! The access log on stdout (text and JSON), log levels from the config and from
//! `MICROSERVICE_LOG`, and a blocked stdout that costs dropped lines, not stalled requests.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod support;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;

fn send_with_agent(port: u16, path: &str) -> Reply {
    let raw = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nUser-Agent: probe \"7\"\r\nReferer: http://r/\r\n\
         Authorization: Bearer s3cret\r\nConnection: close\r\n\r\n"
    );
    send(port, raw.as_bytes()).expect("a reply")
}

#[test]
fn text_access_lines_are_combined_log_format_with_the_duration() {
    let mut service = Service::start_with(
        &fixture_lib(),
        r#"{"mode": "production"}"#,
        &[],
        Stdio::piped(),
    );
    assert_eq!(send_with_agent(service.port, "/status/201?x=1").status, 201);
    let lines = stdout_lines(&mut service, 2);
    let line = lines
        .iter()
        .find(|l| l.contains("/status/201"))
        .unwrap_or_else(|| panic!("no access line for /status/201 in {lines:?}"));
    // 127.0.0.1 - - [23/Nov/2026:06:35:55 +0000] "GET /status/201?x=1 HTTP/1.1" 201 0
    //   "http://r/" "probe \"7\"" 0.000277 "<request ID>"
    let (head, rest) = line.split_once(" [").expect("time field");
    assert_eq!(head, "127.0.0.1 - -");
    let (time, rest) = rest.split_once("] ").expect("time field end");
    assert_eq!(time.len(), "23/Nov/2026:06:35:55 +0000".len(), "{time}");
    assert!(time.ends_with(" +0000"));
    let expected = r#""GET /status/201?x=1 HTTP/1.1" 201 0 "http://r/" "probe \"7\"" "#;
    let tail = rest
        .strip_prefix(expected)
        .unwrap_or_else(|| panic!("{rest:?} does not start with {expected:?}"));
    let (duration, id) = tail.split_once(' ').expect("the duration, then the ID");
    let seconds: f64 = duration.parse().expect("duration in seconds");
    assert!(
        id.len() == 34 && id.starts_with('"') && id.ends_with('"'),
        "a made-up request ID: {id}"
    );
    assert!((0.0..1.0).contains(&seconds), "{seconds}");
    assert!(!lines.iter().any(|l| l.contains("s3cret")), "{lines:?}");
}

#[test]
fn json_access_lines_parse_and_the_level_comes_from_the_environment() {
    let mut service = Service::start_with(
        &fixture_lib(),
        r#"{"mode": "production", "log_format": "json", "log_level": "warn"}"#,
        &[("MICROSERVICE_LOG", "info")],
        Stdio::piped(),
    );
    assert_eq!(send_with_agent(service.port, "/status/202").status, 202);
    let lines = stdout_lines(&mut service, 2);
    let entry: serde_json::Value = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &serde_json::Value| v["path"] == "/status/202")
        .unwrap_or_else(|| panic!("no JSON line for /status/202 in {lines:?}"));
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["status"], 202);
    assert_eq!(entry["protocol"], "HTTP/1.1");
    assert_eq!(entry["remote"], "127.0.0.1");
    assert_eq!(entry["user_agent"], "probe \"7\"");
    assert_eq!(entry["referer"], "http://r/");
    assert!(entry["duration_s"].as_f64().is_some_and(|d| d < 1.0));
    assert!(entry["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    // The process's own lines are JSON too, with their level.
    assert!(service
        .log_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|v| v["level"] == "info" && v["process"] == "worker"));
}

#[test]
fn log_level_warn_leaves_out_access_lines_and_a_bad_level_is_refused() {
    let mut service = Service::start_with(
        &fixture_lib(),
        r#"{"mode": "production"}"#,
        &[("MICROSERVICE_LOG", "warn")],
        Stdio::piped(),
    );
    assert_eq!(get(service.port, "/status/203").expect("reply").status, 203);
    // A worker writes out its pending lines before it exits: once the service has exited,
    // stdout holds every line it will ever hold.
    service.signal(15);
    service.wait_exit(Duration::from_secs(10));
    let mut out = String::new();
    let mut stdout = service.child.stdout.take().expect("stdout is piped");
    stdout.read_to_string(&mut out).expect("stdout");
    assert_eq!(out, "", "no access lines at level warn");

    let output = run(&["check-config"], &[("MICROSERVICE_LOG", "loud")]);
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "MICROSERVICE_LOG: key `log_level`: expected \"debug\", \"info\", \"warn\" or \
             \"error\", found the string \"loud\""
        ),
        "{stderr}"
    );
}

/// Nobody reads the service's stdout: once the pipe and the queue are full, lines are
/// dropped and counted, and requests go on being answered.
#[test]
fn a_blocked_stdout_drops_lines_and_stalls_no_request() {
    let _serial = serial();
    let service = Service::start_with(
        &example_lib(),
        r#"{"mode": "production"}"#,
        &[],
        Stdio::piped(),
    );
    let load = Load::start(service.port, "/", 4);
    let dropped = wait_for("dropped log lines", Duration::from_secs(60), || {
        let text = get(service.port, "/metrics").ok()?.text();
        let dropped: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("microservice_log_lines_dropped_total "))?
            .parse()
            .ok()?;
        (dropped > 1000.0).then_some(dropped)
    });
    let tally = load.finish();
    assert!(tally.errors.is_empty(), "{:?}", tally.errors);
    let answered = tally.count(200);
    assert!(
        answered as f64 > dropped,
        "{answered} answers, {dropped} dropped"
    );
    // Answers kept coming at the end, with the writer blocked.
    let last = tally.answers.last().expect("answers").at;
    let late = tally.answers.iter().filter(|a| a.at > last - 1.0).count();
    assert!(late > 100, "{late} answers in the last second");
    let started = Instant::now();
    assert_eq!(get(service.port, "/").expect("reply").status, 200);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "a request took {took:?} beside the blocked stdout (one stalled by the writer would \
         wait as long as nobody reads; 5 s allows a loaded machine)"
    );
    println!("{answered} answers, {dropped} lines dropped, {late} in the last second");
}

/// Starts the fixture with `log_format` and `env`, has it panic in `GET /panic?x=1`, and
/// returns the service's stderr lines once the panic's line is among them.
fn panic_lines(log_format: &str, env: &[(&str, &str)]) -> Vec<String> {
    let config = format!(r#"{{"mode": "production", "log_format": "{log_format}"}}"#);
    let service = Service::start_with(&fixture_lib(), &config, env, Stdio::null());
    assert_eq!(
        get(service.port, "/panic?x=1").expect("a reply").status,
        500
    );
    wait_for("the panic's line", Duration::from_secs(5), || {
        let lines = service.log_lines();
        lines
            .iter()
            .any(|l| l.contains("the fixture was asked to panic"))
            .then_some(lines)
    })
}

#[test]
fn an_app_panic_is_one_text_line_with_the_request_and_the_location() {
    let lines = panic_lines("text", &[]);
    let panics: Vec<&String> = lines.iter().filter(|l| l.contains("panic")).collect();
    assert_eq!(panics.len(), 1, "one line about the panic: {lines:?}");
    let line = panics[0];
    let (before, after) = (
        "worker: the app panicked answering GET /panic (request ",
        "): the fixture was asked to panic (at tests/apps/fixture/src/lib.rs:",
    );
    assert!(
        line.starts_with("microservice-rust[") && line.contains(before) && line.contains(after),
        "{line}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("RUST_BACKTRACE")),
        "{lines:?}"
    );
}

#[test]
fn an_app_panic_is_one_json_line_and_carries_a_backtrace_only_when_asked() {
    for (value, backtrace) in [("0", false), ("1", true)] {
        let env = &[("RUST_BACKTRACE", value)];
        let lines = panic_lines("json", env);
        let panics: Vec<&String> = lines.iter().filter(|l| l.contains("panic")).collect();
        assert_eq!(panics.len(), 1, "one line about the panic: {lines:?}");
        let entry: serde_json::Value = serde_json::from_str(panics[0]).expect("a JSON line");
        assert_eq!(entry["level"], "error");
        assert_eq!(entry["process"], "worker");
        assert_eq!(entry["method"], "GET");
        assert_eq!(entry["path"], "/panic");
        assert_eq!(entry["panic"], "the fixture was asked to panic");
        let location = entry["location"].as_str().expect("a location");
        assert!(
            location.starts_with("tests/apps/fixture/src/lib.rs:"),
            "{location}"
        );
        assert!(entry["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("the app panicked answering GET /panic (request ")));
        assert_eq!(entry.get("backtrace").is_some(), backtrace, "{entry}");
    }
}

/// Starts the example with `config`, has `ann` drink past the limit (a warning) and within
/// it (a debug line), and returns the service's stderr lines once `done` holds for them.
fn example_app_lines(config: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let service = Service::start_with(&example_lib(), config, &[], Stdio::null());
    let drink = |path: &str, id: &str| {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nX-Request-ID: {id}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        );
        send(service.port, raw.as_bytes()).expect("a reply").status
    };
    assert_eq!(drink("/drink/ann/1", "drink-1"), 200);
    assert_eq!(drink("/drink/ann/5", "drink-2"), 403);
    wait_for("the app's lines", Duration::from_secs(5), || {
        let lines = service.log_lines();
        done(&lines).then_some(lines)
    })
}

#[test]
fn the_apps_lines_are_written_by_the_worker_tagged_with_the_request_and_filtered_by_level() {
    let warning = "app: warn: refused 5 rum(s) to ann: 1 drunk, the limit is 2 \
                   (request drink-2, POST /drink/ann/5)";
    let lines = example_app_lines(r#"{"mode": "production", "log_level": "debug"}"#, |lines| {
        lines.iter().any(|l| l.ends_with(warning))
    });
    let pid = first_worker_pid(&lines);
    let line = |needle: &str| {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in {lines:?}"))
            .clone()
    };
    // Outside a request (the app's `new`): no request tag.
    assert_eq!(
        line("counting rums"),
        format!("microservice-rust[{pid}] app: info: counting rums, at most 2 per user")
    );
    assert_eq!(
        line("refused 5"),
        format!("microservice-rust[{pid}] {warning}")
    );
    assert_eq!(
        line("drank 1"),
        format!(
            "microservice-rust[{pid}] app: debug: ann drank 1 rum(s), 1 in all \
             (request drink-1, POST /drink/ann/1)"
        )
    );

    // At `warn`, the info and debug lines are left out, the warning is not.
    let lines = example_app_lines(r#"{"mode": "production", "log_level": "warn"}"#, |lines| {
        lines.iter().any(|l| l.ends_with(warning))
    });
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("counting rums") || l.contains("drank 1")),
        "{lines:?}"
    );
}

#[test]
fn the_apps_lines_are_json_objects_in_json_format() {
    let lines = example_app_lines(r#"{"mode": "production", "log_format": "json"}"#, |lines| {
        lines.iter().any(|l| l.contains("refused 5"))
    });
    let entry: serde_json::Value = lines
        .iter()
        .find(|l| l.contains("refused 5"))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON line about the refusal in {lines:?}"));
    assert_eq!(entry["level"], "warn");
    assert_eq!(entry["process"], "app");
    assert_eq!(
        entry["message"],
        "refused 5 rum(s) to ann: 1 drunk, the limit is 2"
    );
    assert_eq!(entry["request_id"], "drink-2");
    assert_eq!(entry["method"], "POST");
    assert_eq!(entry["path"], "/drink/ann/5");
    assert!(entry["pid"].as_u64().is_some_and(|pid| pid > 1), "{entry}");
    assert!(
        entry["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{entry}"
    );
}

#[test]
fn a_c_app_logs_through_the_worker_too() {
    let dir = TempDir::new("c-log");
    let path = compile_c_app(&dir, "libhello.so", &[]);
    let service = Service::start(&path, r#"{"mode": "production"}"#);
    let raw = b"GET /hello HTTP/1.1\r\nHost: t\r\nX-Request-ID: c-1\r\nConnection: close\r\n\r\n";
    assert_eq!(send(service.port, raw).expect("a reply").status, 200);
    let lines = wait_for("the C app's warning", Duration::from_secs(5), || {
        let lines = service.log_lines();
        lines
            .iter()
            .any(|l| l.contains("app: warn:"))
            .then_some(lines)
    });
    let pid = first_worker_pid(&lines);
    // The line end in the message is escaped: one line per call.
    let expected = [
        format!("microservice-rust[{pid}] app: info: the C app is starting"),
        format!(
            "microservice-rust[{pid}] app: warn: hello from C\\x0ain the log \
             (request c-1, GET /hello)"
        ),
    ];
    for line in expected {
        assert!(lines.contains(&line), "{line:?} in {lines:?}");
    }
}

/// The pid of the first worker, from the supervisor's lines.
fn first_worker_pid(lines: &[String]) -> i32 {
    *started_workers(lines)
        .first()
        .unwrap_or_else(|| panic!("no worker started in {lines:?}"))
}

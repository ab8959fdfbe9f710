//! Streamed answers, cancellation and request IDs, through the real binary and the real
//! example and fixture apps.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;

/// Opens a connection and sends a GET for `path` with `headers` (lines ending in CRLF).
fn open(port: u16, path: &str, headers: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    stream
}

/// Reads until `needle` has come (or the connection ends); all read so far.
fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, needle: &[u8]) -> bool {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        if seen.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
        }
    }
}

/// The service's access line for `GET path` (read from its stdout, within 5 s).
fn access_line(service: &mut Service, path: &str) -> String {
    let request = format!("\"GET {path} HTTP/1.1\"");
    let lines = stdout_until(service, |lines| lines.iter().any(|l| l.contains(&request)));
    lines
        .iter()
        .find(|l| l.contains(&request))
        .cloned()
        .unwrap_or_else(|| panic!("no access line for {path} in {lines:?}"))
}

#[test]
fn a_stream_sends_each_event_as_it_is_made_and_is_logged_once_in_full() {
    let _serial = serial();
    let mut service = Service::start_with(
        &example_lib(),
        r#"{"mode": "production", "threads": 2}"#,
        &[],
        Stdio::piped(),
    );
    let started = Instant::now();
    let mut stream = open(service.port, "/stream/10", "X-Request-ID: stream-1\r\n");
    let mut seen = Vec::new();
    assert!(read_until(&mut stream, &mut seen, b"data: {\"event\":1,"));
    let first = started.elapsed().as_secs_f64();
    let with_first = String::from_utf8_lossy(&seen).into_owned();
    assert!(
        read_until(&mut stream, &mut seen, b"\r\n0\r\n\r\n"),
        "{seen:?}"
    );
    let last = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&seen).into_owned();
    eprintln!("first event after {first:.3}s, the last after {last:.3}s");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(
        text.contains("content-type: text/event-stream\r\n"),
        "{text}"
    );
    assert!(text.contains("x-request-id: stream-1\r\n"), "{text}");
    // The first event comes 100 ms after the request, not with the last (1 s): judged by
    // what came with it, not by when (a loaded machine may be late with both).
    assert!(
        !with_first.contains("\"event\":10,"),
        "the first event came with the last: {with_first}"
    );
    assert!(last >= 0.95, "{first:.3}s, {last:.3}s");
    for n in 1..=10 {
        let record = format!("event: tick\nid: {n}\ndata: {{\"event\":{n},\"of\":10}}\n\n");
        assert!(text.contains(&record), "{record:?} in {text}");
    }

    // One access line, with the whole body's size and the whole duration.
    let line = access_line(&mut service, "/stream/10");
    let body: usize = (1..=10)
        .map(|n| format!("event: tick\nid: {n}\ndata: {{\"event\":{n},\"of\":10}}\n\n").len())
        .sum();
    assert!(
        line.contains(&format!("\" 200 {body} \"")),
        "{body} bytes: {line}"
    );
    let took: f64 = line
        .rsplit(' ')
        .nth(1)
        .and_then(|d| d.parse().ok())
        .expect("a duration");
    assert!(took >= 0.95, "{line}");
    assert!(line.ends_with(" \"stream-1\""), "{line}");
}

#[test]
fn an_http_1_0_client_gets_the_stream_delimited_by_the_close() {
    let _serial = serial();
    let service = Service::start(&example_lib(), r#"{"mode": "production", "threads": 2}"#);
    let mut stream = TcpStream::connect(("127.0.0.1", service.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(b"GET /stream/10 HTTP/1.0\r\n\r\n")
        .expect("send");
    let started = Instant::now();
    let mut seen = Vec::new();
    // The first event before the last: the body is sent as it is made, not gathered.
    assert!(read_until(&mut stream, &mut seen, b"data: {\"event\":1,"));
    let first = started.elapsed().as_secs_f64();
    let with_first = String::from_utf8_lossy(&seen).into_owned();
    // Then the server closes the connection after the last event: read_until returns
    // false at the end of the stream, since the needle never comes.
    assert!(!read_until(&mut stream, &mut seen, b"never sent"));
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    assert!(!text.contains("transfer-encoding"), "{text}");
    assert!(!text.contains("content-length"), "{text}");
    let records: String = (1..=10)
        .map(|n| format!("event: tick\nid: {n}\ndata: {{\"event\":{n},\"of\":10}}\n\n"))
        .collect();
    assert!(text.ends_with(&format!("\r\n\r\n{records}")), "{text}");
    // The first event is due after 100 ms, the last after 1 s: judged by what came with
    // the first, not by when (a loaded machine may be late with both).
    assert!(
        !with_first.contains("\"event\":10,"),
        "the first event came with the last, after {first:.3}s: {with_first}"
    );
}

#[test]
fn a_client_that_reads_nothing_holds_back_a_stream_and_the_worker_buffers_little() {
    let _serial = serial();
    let service = Service::start(&fixture_lib(), r#"{"mode": "production", "threads": 2}"#);
    let worker = first_worker(&service);
    let before = resident_kib(worker);
    let mut stream = open(service.port, "/bulk/256", "");
    // The app writes 256 MiB as fast as it can; nobody reads them for a second. The
    // client's silence is the scenario (the worker has that second to buffer, if it
    // would), not a wait for a state.
    std::thread::sleep(Duration::from_secs(1));
    let during = resident_kib(worker);
    let mut total = 0usize;
    let mut buffer = vec![0u8; 1 << 20];
    let end = b"\r\n0\r\n\r\n";
    let mut tail = Vec::new();
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n;
                tail.extend_from_slice(&buffer[..n]);
                let keep = tail.len().saturating_sub(end.len());
                tail.drain(..keep);
                if tail == end {
                    break;
                }
            }
        }
    }
    eprintln!(
        "worker RSS {before} KiB before, {during} KiB with 256 MiB held back; {total} bytes read"
    );
    assert!(total > 256 << 20, "the whole stream arrived: {total} bytes");
    assert!(
        during < before + 32 * 1024,
        "the worker buffered the stream: {before} → {during} KiB"
    );
}

fn resident_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_client_that_leaves_frees_its_thread_and_is_logged_499() {
    let _serial = serial();
    let mut service = Service::start_with(
        &example_lib(),
        r#"{"mode": "production", "threads": 1}"#,
        &[],
        Stdio::piped(),
    );
    let port = service.port;
    let stream = open(port, "/delay/30", "X-Request-ID: gone-1\r\n");
    wait_for("the request inside the app", Duration::from_secs(5), || {
        (gauge(port, "microservice_pool_threads_busy") == Some(1)).then_some(())
    });
    drop(stream);
    let left = Instant::now();
    // The only thread is free again once the app sees the cancellation (it looks every
    // 20 ms): the next request is answered then, not after 30 s.
    let reply = get(port, "/").expect("a reply");
    let freed = left.elapsed().as_secs_f64();
    eprintln!("the next request answered {freed:.3}s after the client left");
    assert_eq!(reply.status, 200);
    assert!(
        freed < 5.0,
        "{freed:.3}s (0.3 s expected; a thread kept by the app would be free only after \
         its 30 s; 5 s allows a loaded machine)"
    );
    let line = access_line(&mut service, "/delay/30");
    assert!(line.contains("\" 499 0 \""), "{line}");
    assert!(line.ends_with(" \"gone-1\""), "{line}");
}

#[test]
fn the_deadline_cancels_the_app_and_cuts_a_stream_off() {
    let _serial = serial();
    let config = r#"{"mode": "production", "threads": 1, "request_timeout_s": 1}"#;
    let service = Service::start(&example_lib(), config);
    let port = service.port;
    let started = Instant::now();
    let raw = b"GET /delay/30 HTTP/1.1\r\nHost: t\r\nX-Request-ID: late-1\r\n\r\n";
    let reply = send(port, raw).expect("a reply");
    assert_eq!(reply.status, 504);
    assert_eq!(reply.header("x-request-id"), Some("late-1"));
    let reply = get(port, "/").expect("a reply");
    let free = started.elapsed().as_secs_f64();
    assert_eq!(reply.status, 200);
    // The app saw the cancellation and returned: the pool serves at once, and no thread
    // stays written off (one is, at the deadline, until the app's next look 20 ms later;
    // the sampled gauge may show that for up to 0.5 s). A thread kept for the app's 30 s
    // would fail both; 5 s allows a loaded machine.
    assert!(free < 5.0, "the thread came back after {free:.3}s");
    wait_for("no thread written off", Duration::from_secs(5), || {
        (gauge(port, "microservice_pool_threads_written_off") == Some(0)).then_some(())
    });
    wait_for("the 504's line", Duration::from_secs(5), || {
        logged(&service, "request late-1 (GET /delay/30) timed out after").then_some(())
    });

    // A stream still going at the deadline is cut off: no last chunk, the connection ends.
    let mut stream = open(port, "/stream/50", "");
    let mut seen = Vec::new();
    let ended = read_until(&mut stream, &mut seen, b"\r\n0\r\n\r\n");
    let text = String::from_utf8_lossy(&seen);
    assert!(!ended, "a stream cut at the deadline looked whole: {text}");
    assert!(text.contains("data: {\"event\":5,"), "{text}");
}

#[test]
fn request_ids_are_kept_or_made_and_reach_the_app_the_logs_and_the_report() {
    let _serial = serial();
    let mut service = Service::start_with(
        &fixture_lib(),
        r#"{"mode": "production", "threads": 2, "log_format": "json"}"#,
        &[],
        Stdio::piped(),
    );
    let port = service.port;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let raw = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nX-Request-ID: client-7\r\ntraceparent: \
         {traceparent}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let reply = send(port, raw.as_bytes()).expect("a reply");
    assert_eq!(reply.header("x-request-id"), Some("client-7"));
    assert_eq!(
        reply.header("x-id"),
        Some("client-7"),
        "the app's Request::id()"
    );
    assert_eq!(reply.header("x-traceparent"), Some(traceparent));

    // An ID that is not sane is replaced by a made-up one, the same everywhere.
    let raw = b"POST /echo HTTP/1.1\r\nHost: t\r\nX-Request-ID: a b\"c\r\n\
                Content-Length: 0\r\nConnection: close\r\n\r\n";
    let reply = send(port, raw).expect("a reply");
    let made = reply.header("x-request-id").expect("an ID").to_string();
    assert_eq!(made.len(), 32, "{made}");
    assert_eq!(reply.header("x-id"), Some(made.as_str()));

    let echoes = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["path"] == "/echo")
            .filter_map(|v| v["request_id"].as_str().map(String::from))
            .collect()
    };
    let lines = stdout_until(&mut service, |lines| echoes(lines).len() >= 2);
    let ids = echoes(&lines);
    assert_eq!(ids, ["client-7".to_string(), made], "{lines:?}");

    // The server's own lines: the panic's and the SIGUSR1 report's.
    let raw =
        b"GET /panic HTTP/1.1\r\nHost: t\r\nX-Request-ID: boom-1\r\nConnection: close\r\n\r\n";
    assert_eq!(send(port, raw).expect("a reply").status, 500);
    wait_for("the panic's line", Duration::from_secs(5), || {
        service
            .log_lines()
            .iter()
            .find(|l| l.contains("the app panicked"))
            .cloned()
    });
    let panic_line = service
        .log_lines()
        .into_iter()
        .find(|l| l.contains("the app panicked"))
        .expect("the panic's line");
    let entry: serde_json::Value = serde_json::from_str(&panic_line).expect("JSON");
    assert_eq!(entry["request_id"], "boom-1", "{panic_line}");

    let slow = std::thread::spawn(move || {
        let raw = b"GET /sleep/3 HTTP/1.1\r\nHost: t\r\nX-Request-ID: slow-1\r\n\
                    Connection: close\r\n\r\n";
        send(port, raw).expect("a reply").status
    });
    // 3 s: the gauge lags up to 0.5 s, and the report must still find it inside.
    wait_for(
        "the slow request inside the app",
        Duration::from_secs(5),
        || gauge(port, "microservice_pool_threads_busy").filter(|n| *n >= 1),
    );
    let worker: i32 = get(port, "/pid")
        .expect("a reply")
        .text()
        .parse()
        .expect("a pid");
    // SAFETY: kill with a valid signal number.
    unsafe { libc::kill(worker, libc::SIGUSR1) };
    wait_for("the report's line", Duration::from_secs(5), || {
        service
            .log_lines()
            .iter()
            .any(|l| l.contains("in flight: GET /sleep/3 (request slow-1)"))
            .then_some(())
    });
    assert_eq!(slow.join().expect("slow"), 200);
}

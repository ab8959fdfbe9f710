//! The Python host: WSGI apps served by the real binary with the real host library, on
//! loopback. Each PEP 3333 test runs the app twice, as it is and wrapped in
//! wsgiref.validate's validator with warnings made errors, and checks that the log holds no
//! warning. Needs Debian's python3-dev and the tests' virtualenv (`make python-env`).

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// Completion times may stray this far from the ideal (a loaded 2-core machine).
const TOLERANCE_S: f64 = 0.45;

/// The test app, started for each way of running it; the temporary directory of the
/// validated wrapper lives as long as the service.
struct Served {
    service: Service,
    validated: bool,
    _dir: TempDir,
}

impl Served {
    fn start(config: &str, validated: bool) -> Served {
        Served::start_app(&python_app("wsgi_app.py"), "app", config, validated, &[])
    }

    fn start_app(
        file: &Path,
        callable: &str,
        config: &str,
        validated: bool,
        env: &[(&str, &str)],
    ) -> Served {
        python_host();
        let dir = TempDir::new("py");
        let app = match validated {
            true => support::validated(&dir, file, callable),
            false => PathBuf::from(format!("{}:{callable}", file.display())),
        };
        let service = Service::start_with(&app, config, env, Stdio::null());
        Served {
            service,
            validated,
            _dir: dir,
        }
    }

    fn port(&self) -> u16 {
        self.service.port
    }

    fn json(&self, path: &str) -> Value {
        let reply = get(self.port(), path).expect("a reply");
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        serde_json::from_slice(&reply.body).expect("JSON")
    }

    /// The service's log has no line of a warning or of a broken rule.
    fn assert_no_warnings(&self) {
        let lines = self.service.log_lines();
        let bad: Vec<&String> = lines
            .iter()
            .filter(|l| {
                l.contains("Warning")
                    || l.contains("AssertionError")
                    || l.contains("without being closed")
            })
            .collect();
        assert!(bad.is_empty(), "validated {}: {bad:#?}", self.validated);
    }
}

/// Runs `check` against the app as it is and under the validator.
fn both_ways(config: &str, check: impl Fn(&Served)) {
    for validated in [false, true] {
        let served = Served::start(config, validated);
        check(&served);
        served.assert_no_warnings();
    }
}

/// Sends `request` (which asks for the connection to close) and reads the answer to the
/// close; a chunked body is put together.
fn raw(port: u16, request: &str) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut data = Vec::new();
    stream.read_to_end(&mut data).expect("read to the close");
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&data)));
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let mut rest = &data[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v == "chunked");
    let body = match chunked {
        false => rest.to_vec(),
        true => {
            let mut body = Vec::new();
            loop {
                let line_end = rest.windows(2).position(|w| w == b"\r\n").expect("a size");
                let size =
                    usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).expect("hex"), 16)
                        .expect("a chunk size");
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
                rest = &rest[line_end + 2 + size + 2..];
            }
            body
        }
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// `raw` of a GET of `path`.
fn fetch(port: u16, path: &str) -> Reply {
    raw(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
    )
}

#[test]
fn the_environ_has_every_key_pep_3333_asks_for() {
    both_ways(
        r#"{"mode": "production", "threads": 3, "workers": 2}"#,
        |served| {
            let reply = raw(
                served.port(),
                "GET /env?q=a%20b&x=1 HTTP/1.1\r\nHost: shop.example:8080\r\nX-Thing: one\r\n\
             X-Thing: two\r\nX_Sneaky: 1\r\nCookie: a=1\r\nCookie: b=2\r\n\
             X-Request-ID: py-env-1\r\nConnection: close\r\n\r\n",
            );
            assert_eq!(reply.status, 200, "{}", reply.text());
            let env: Value = serde_json::from_slice(&reply.body).expect("JSON");
            for (key, expected) in [
                ("REQUEST_METHOD", "GET"),
                ("SCRIPT_NAME", ""),
                ("PATH_INFO", "/env"),
                ("QUERY_STRING", "q=a%20b&x=1"),
                ("SERVER_NAME", "shop.example"),
                ("SERVER_PROTOCOL", "HTTP/1.1"),
                ("REMOTE_ADDR", "127.0.0.1"),
                ("HTTP_HOST", "shop.example:8080"),
                ("HTTP_X_THING", "one, two"),
                ("HTTP_COOKIE", "a=1; b=2"),
                ("HTTP_X_REQUEST_ID", "py-env-1"),
                ("microservice.request_id", "py-env-1"),
                ("request_id_fn", "py-env-1"),
                ("wsgi.url_scheme", "http"),
                ("wsgi.input", "BytesIO"),
                ("wsgi.file_wrapper", "type"),
                ("microservice.cancelled", "builtin_function_or_method"),
            ] {
                if served.validated && key == "wsgi.input" {
                    assert_eq!(env[key], "InputWrapper", "{key}");
                    continue;
                }
                assert_eq!(env[key], expected, "{key}: {env:#}");
            }
            assert_eq!(env["SERVER_PORT"], served.port().to_string());
            assert!(env["REMOTE_PORT"]
                .as_str()
                .is_some_and(|p| p.parse::<u16>().is_ok()));
            assert_eq!(env["wsgi.version"], serde_json::json!([1, 0]));
            assert_eq!(env["wsgi.multithread"], true, "3 threads");
            assert_eq!(env["wsgi.multiprocess"], true, "2 workers");
            assert_eq!(env["wsgi.run_once"], false);
            assert_eq!(env["cancelled_now"], false);
            // A name with `_` could pose as one with `-`: it is left out.
            assert!(env.get("HTTP_X_SNEAKY").is_none(), "{env:#}");
            // No body: no CONTENT_LENGTH, and never an HTTP_ twin of the content headers.
            assert!(env.get("CONTENT_LENGTH").is_none() && env.get("HTTP_CONTENT_TYPE").is_none());
        },
    );
    // Dev: one thread, one process; PATH_INFO decoded to bytes read as latin-1.
    let served = Served::start(r#"{"mode": "dev"}"#, false);
    let reply = raw(served.port(), "GET /caf%C3%A9%2Fx HTTP/1.0\r\n\r\n");
    assert_eq!(reply.status, 404);
    let env = served.json("/env");
    assert_eq!(env["wsgi.multithread"], false);
    assert_eq!(env["wsgi.multiprocess"], false);
    assert_eq!(env["SERVER_NAME"], "t", "from the Host header");
    let reply = raw(served.port(), "GET /env HTTP/1.0\r\n\r\n");
    let env: Value = serde_json::from_slice(&reply.body).expect("JSON");
    assert_eq!(env["SERVER_PROTOCOL"], "HTTP/1.0");
    assert_eq!(
        env["SERVER_NAME"], "127.0.0.1",
        "no Host: the listening address"
    );
    assert!(env["HTTP_X_REQUEST_ID"]
        .as_str()
        .is_some_and(|id| id.len() == 32));
}

#[test]
fn path_info_is_percent_decoded_as_latin_1() {
    let dir = TempDir::new("pypath");
    let file = dir.write(
        "path.py",
        "def app(environ, start_response):\n\
         \x20   body = environ['PATH_INFO'].encode('latin-1')\n\
         \x20   start_response('200 OK', [('Content-Type', 'application/octet-stream')])\n\
         \x20   return [body]\n",
    );
    for validated in [false, true] {
        let served = Served::start_app(&file, "app", r#"{"mode": "dev"}"#, validated, &[]);
        let reply = raw(served.port(), "GET /caf%C3%A9/a%20b%2F HTTP/1.0\r\n\r\n");
        assert_eq!(reply.body, b"/caf\xc3\xa9/a b/", "validated {validated}");
        served.assert_no_warnings();
    }
}

#[test]
fn wsgi_input_reads_the_body_every_way() {
    both_ways(r#"{"mode": "dev"}"#, |served| {
        let body = "abcd\nline two\nline three\n";
        let request = format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: text/x-test\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let reply = raw(served.port(), &request);
        let echo: Value = serde_json::from_slice(&reply.body).expect("JSON");
        assert_eq!(echo["first"], "abcd");
        assert_eq!(echo["line"], "\n");
        assert_eq!(
            echo["lines"],
            serde_json::json!(["line two\n", "line three\n"])
        );
        assert_eq!(echo["rest"], "");
        assert_eq!(echo["content_type"], "text/x-test");
        assert_eq!(echo["content_length"], body.len().to_string());
        // A chunked body has its length once read in full.
        let request = "POST /iterate HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\
                       Connection: close\r\n\r\n6\r\none\ntw\r\n3\r\no\nx\r\n0\r\n\r\n";
        let reply = raw(served.port(), request);
        let lines: Value = serde_json::from_slice(&reply.body).expect("JSON");
        assert_eq!(lines, serde_json::json!(["one\n", "two\n", "x"]));
    });
}

#[test]
fn start_response_write_exc_info_and_file_wrapper_follow_the_rules() {
    both_ways(r#"{"mode": "production", "threads": 2}"#, |served| {
        let port = served.port();
        let reply = fetch(port, "/write");
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (200, "written then iterated")
        );
        // An error caught before anything was sent: exc_info replaces the answer.
        let reply = fetch(port, "/exc-info");
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (500, "replaced by exc_info")
        );
        let reply = fetch(port, "/file");
        let source = std::fs::read(python_app("wsgi_app.py")).expect("the app's source");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, source, "the file through wsgi.file_wrapper");
        let reply = fetch(port, "/nowhere");
        assert_eq!((reply.status, reply.text().as_str()), (404, "not found\n"));
    });
}

#[test]
fn an_exception_is_a_500_and_one_log_line_naming_it_and_where() {
    both_ways(r#"{"mode": "production", "threads": 2}"#, |served| {
        let raw =
            "GET /boom HTTP/1.1\r\nHost: t\r\nX-Request-ID: boom-1\r\nConnection: close\r\n\r\n";
        let reply = send(served.port(), raw.as_bytes()).expect("a reply");
        assert_eq!(reply.status, 500);
        let file = python_app("wsgi_app.py").display().to_string();
        let line = wait_for("the exception's line", Duration::from_secs(5), || {
            served
                .service
                .log_lines()
                .into_iter()
                .find(|l| l.contains("ZeroDivisionError"))
        });
        assert!(
            line.contains(
                "app: error: the app raised ZeroDivisionError: the test app divides by zero (at "
            ) && line.contains(&format!("{file}:"))
                && line.contains("(request boom-1, GET /boom)"),
            "{line}"
        );
        // The same worker serves on.
        assert_eq!(get(served.port(), "/write").expect("a reply").status, 200);
    });
    // At log_level debug the traceback follows, as a line of its own.
    let served = Served::start(r#"{"mode": "dev", "log_level": "debug"}"#, false);
    assert_eq!(get(served.port(), "/boom").expect("a reply").status, 500);
    wait_for("the traceback", Duration::from_secs(5), || {
        logged(
            &served.service,
            "app: debug: Traceback (most recent call last):",
        )
        .then_some(())
    });
}

#[test]
fn an_exception_after_the_headers_cuts_the_answer_off() {
    both_ways(r#"{"mode": "dev"}"#, |served| {
        let mut stream = TcpStream::connect(("127.0.0.1", served.port())).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream
            .write_all(b"GET /boom-late HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("send");
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got);
        // The connection closes without the body's last chunk (what was sent before the
        // failure may or may not have left hyper's buffer).
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 200"),
            "{text}"
        );
        assert!(!text.ends_with("0\r\n\r\n"), "no last chunk: {text:?}");
        wait_for("the failure's line", Duration::from_secs(5), || {
            logged(&served.service, "RuntimeError: the test app fails half way").then_some(())
        });
        let closes = served.json("/closes");
        assert!(closes["count"].as_u64().is_some_and(|n| n >= 1), "{closes}");
    });
}

#[test]
fn a_generator_streams_each_chunk_as_it_is_yielded() {
    both_ways(r#"{"mode": "production", "threads": 2}"#, |served| {
        let mut stream = TcpStream::connect(("127.0.0.1", served.port())).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let start = Instant::now();
        stream
            .write_all(b"GET /stream/5 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .expect("send");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // When the first event came: how long after the request, and what had come with it.
        let mut first = None;
        loop {
            let n = stream.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            let so_far = String::from_utf8_lossy(&got);
            if first.is_none() && so_far.contains("data: 0") {
                first = Some((start.elapsed(), so_far.into_owned()));
            }
        }
        let whole = start.elapsed();
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("transfer-encoding: chunked"), "{text}");
        assert!(text.contains("content-type: text/event-stream"), "{text}");
        for n in 0..5 {
            assert!(text.contains(&format!("data: {n} ")), "{text}");
        }
        let (first_at, with_first) = first.expect("the first event");
        // The first event comes before the generator made the last (0.4 s later): by
        // order, not by a bound on when it came.
        assert!(
            whole.as_secs_f64() >= 0.4 && !with_first.contains("data: 4 "),
            "first event at {first_at:?}, the end at {whole:?}; with the first: {with_first:?}"
        );
        assert!(
            text.ends_with("0\r\n\r\n"),
            "the stream ended whole: {text:?}"
        );
    });
}

/// The pool's gauges back at `threads` idle threads with none written off, ever.
fn pool_back_to_idle(port: u16, threads: u64) {
    wait_for("the pool idle again", Duration::from_secs(10), || {
        let busy = gauge(port, "microservice_pool_threads_busy")?;
        let size = gauge(port, "microservice_pool_threads")?;
        let off = gauge(port, "microservice_pool_threads_written_off")?;
        (busy == 0 && size == threads && off == 0).then_some(())
    });
    assert_eq!(
        counter(port, "microservice_pool_threads_written_off_total"),
        0,
        "no thread was written off"
    );
}

#[test]
fn a_request_past_its_deadline_gets_its_504_and_its_python_thread_back() {
    let _serial = serial();
    let config = r#"{"mode": "production", "threads": 2, "request_timeout_s": 1}"#;
    for validated in [false, true] {
        let served = Served::start(config, validated);
        let port = served.port();
        for (path, seen) in [("/spin", 1), ("/sleep/30", 2)] {
            let start = Instant::now();
            let reply = get(port, path).expect("a reply");
            let took = start.elapsed().as_secs_f64();
            assert_eq!(reply.status, 504, "{path}: {}", reply.text());
            assert!(
                (1.0..=1.0 + TOLERANCE_S).contains(&took),
                "{path}: 504 after {took:.3}s"
            );
            pool_back_to_idle(port, 2);
            // The exception went through the app's own code (its finally, its except).
            let closes = served.json("/closes");
            assert_eq!(closes["cancelled_seen"], seen, "{path}: {closes}");
        }
        // Two stuck at once, and the pool serves on at full size meanwhile and after.
        let results = parallel_gets(port, "/sleep/30", 2);
        assert!(results
            .iter()
            .all(|(t, r)| r.status == 504 && *t <= 1.0 + TOLERANCE_S));
        pool_back_to_idle(port, 2);
        assert_eq!(get(port, "/write").expect("a reply").status, 200);
        wait_for("the deadline's line", Duration::from_secs(5), || {
            logged(
                &served.service,
                "the deadline interrupted the app: DeadlineExceeded",
            )
            .then_some(())
        });
        served.assert_no_warnings();
    }
}

#[test]
fn a_thread_stuck_past_the_grace_is_written_off_as_for_native_apps() {
    let _serial = serial();
    // A thread stuck in C (select.select, which no exception reaches): the host's grace
    // (2 s) passes and the worker writes the thread off.
    let dir = TempDir::new("pystuck");
    let file = dir.write(
        "stuck.py",
        "import select\n\
         def app(environ, start_response):\n\
         \x20   select.select([], [], [], 6)\n\
         \x20   start_response('200 OK', [('Content-Type', 'text/plain')])\n\
         \x20   return [b'late']\n",
    );
    for validated in [false, true] {
        let served = Served::start_app(
            &file,
            "app",
            r#"{"mode": "production", "threads": 2, "request_timeout_s": 1}"#,
            validated,
            &[],
        );
        written_off_after_the_grace(served.port());
        served.assert_no_warnings();
    }
}

fn written_off_after_the_grace(port: u16) {
    let start = Instant::now();
    let reply = get(port, "/").expect("a reply");
    assert_eq!(reply.status, 504);
    assert!(start.elapsed().as_secs_f64() <= 1.0 + TOLERANCE_S);
    wait_for("the write-off", Duration::from_secs(10), || {
        (counter(port, "microservice_pool_threads_written_off_total") == 1).then_some(())
    });
    assert!(start.elapsed().as_secs_f64() >= 3.0, "not before the grace");
    assert_eq!(
        gauge(port, "microservice_pool_threads"),
        Some(2),
        "replaced"
    );
}

#[test]
fn cancelled_turns_true_when_the_client_leaves() {
    let _serial = serial();
    for validated in [false, true] {
        let served = Served::start(r#"{"mode": "dev"}"#, validated);
        client_leaves(&served);
        served.assert_no_warnings();
    }
}

fn client_leaves(served: &Served) {
    let port = served.port();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .write_all(b"GET /until-cancelled HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    wait_for("the request inside the app", Duration::from_secs(5), || {
        gauge(port, "microservice_pool_threads_busy").filter(|n| *n == 1)
    });
    drop(stream);
    let closes = wait_for("the app to see it", Duration::from_secs(5), || {
        let closes = served.json("/closes");
        (closes["cancelled_seen"] == 1).then_some(closes)
    });
    assert_eq!(closes["cancelled_seen"], 1);
    // The only thread is back: the next request is served at once.
    assert_eq!(get(port, "/write").expect("a reply").status, 200);
}

#[test]
fn production_runs_threads_python_threads_and_dev_one() {
    let _serial = serial();
    for validated in [false, true] {
        let served = Served::start(r#"{"mode": "production", "threads": 4}"#, validated);
        threads_at_once(&served);
        served.assert_no_warnings();
    }
    let served = Served::start(r#"{"mode": "dev"}"#, true);
    let results = parallel_gets(served.port(), "/sleep/0.5", 3);
    for (i, (time, _)) in results.iter().enumerate() {
        let ideal = 0.5 * (i + 1) as f64;
        assert!(
            (time - ideal).abs() <= TOLERANCE_S,
            "answer {i} at {time:.2}s"
        );
    }
    served.assert_no_warnings();
}

fn threads_at_once(served: &Served) {
    // time.sleep lets the GIL go: 4 sleeps of 1 s on 4 threads end together.
    let results = parallel_gets(served.port(), "/sleep/1", 4);
    let times: Vec<f64> = results.iter().map(|(t, _)| *t).collect();
    assert!(results.iter().all(|(_, r)| r.status == 200), "{times:?}");
    assert!(
        times.iter().all(|t| (*t - 1.0).abs() <= TOLERANCE_S),
        "{times:.2?}"
    );
    // While a request holds the GIL in pure Python, the others still get their turn. The
    // holder holds it until at least 3 s after `sent`; the gauge lags up to 0.5 s.
    let port = served.port();
    let sent = Instant::now();
    let busy = std::thread::spawn(move || get(port, "/busy/3").expect("a reply"));
    wait_for("the busy request inside", Duration::from_secs(5), || {
        gauge(port, "microservice_pool_threads_busy").filter(|n| *n >= 1)
    });
    assert_eq!(get(port, "/write").expect("a reply").status, 200);
    let answered = sent.elapsed().as_secs_f64();
    assert!(
        answered < 3.0,
        "a request answered {answered:.2}s after a 3 s GIL holder was sent: it waited behind \
         it (what is left of the 3 s after the wait above is the tolerance)"
    );
    assert_eq!(busy.join().expect("the busy request").status, 200);
}

#[test]
fn print_logging_and_wsgi_errors_reach_the_log_as_lines() {
    let served = Served::start(r#"{"mode": "dev"}"#, false);
    let raw = "GET /log HTTP/1.1\r\nHost: t\r\nX-Request-ID: log-1\r\nConnection: close\r\n\r\n";
    assert_eq!(
        send(served.port(), raw.as_bytes()).expect("a reply").status,
        200
    );
    let tag = "(request log-1, GET /log)";
    for line in [
        "app: info: printed by the app",
        "app: info: no line end yet",
        "app: warn: wsgi_app: a warning through logging",
        "app: info: wsgi_app: an info through logging",
        "app: warn: written to wsgi.errors",
        "app: info: through microservice_rust.info",
    ] {
        let expected = format!("{line} {tag}");
        wait_for(&expected, Duration::from_secs(5), || {
            logged(&served.service, &expected).then_some(())
        });
    }
}

#[test]
fn the_app_reads_the_config_and_declares_metrics() {
    let served = Served::start(
        r#"{"mode": "dev", "api_key": "sekrit-key", "rums_limit": 3}"#,
        false,
    );
    let port = served.port();
    let with_key = |path: &str| {
        let raw = format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nX-API-Key: sekrit-key\r\nConnection: close\r\n\r\n"
        );
        send(port, raw.as_bytes()).expect("a reply")
    };
    let config: Value = serde_json::from_slice(&with_key("/config").body).expect("JSON");
    assert_eq!(config["rums_limit"], 3);
    assert_eq!(config["api_key"], "***", "secrets are hidden from the app");
    assert_eq!(config["mode"], "dev");
    assert_eq!(with_key("/count/ann").status, 200);
    assert_eq!(with_key("/count/ann").status, 200);
    let metrics = with_key("/metrics").text();
    for line in [
        "py_hits_total{label=\"ann\"} 6",
        "py_sizes_bucket{le=\"10\"} 2",
        "py_sizes_count 2",
        "py_level 2.5",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[test]
fn apps_are_named_by_file_callable_factory_or_module() {
    let factory = python_app("factory.py");
    for (callable, body) in [
        ("make_app()", "made by make_app()"),
        ("other", "the callable named other"),
    ] {
        for validated in [false, true] {
            let served =
                Served::start_app(&factory, callable, r#"{"mode": "dev"}"#, validated, &[]);
            assert_eq!(fetch(served.port(), "/").text(), body);
            served.assert_no_warnings();
        }
    }
    // No callable named: `app`, else `application`.
    python_host();
    let service = Service::start(&factory, r#"{"mode": "dev"}"#);
    assert_eq!(
        get(service.port, "/").expect("a reply").text(),
        "application, since there is no app"
    );
    drop(service);
    // module:callable, from the working directory; `app` in the config file.
    let dir = TempDir::new("pymod");
    dir.write("shop/__init__.py", "");
    dir.write(
        "shop/main.py",
        "def app(environ, start_response):\n\
         \x20   start_response('200 OK', [('Content-Type', 'text/plain')])\n\
         \x20   return [b'shop.main:app']\n",
    );
    dir.write("config/dev/config.json", r#"{"app": "shop.main:app"}"#);
    let mut service = Service::spawn_in(&dir.0, &[], &[]);
    service.wait_ready();
    assert_eq!(
        get(service.port, "/").expect("a reply").text(),
        "shop.main:app"
    );
    service.signal(15);
    assert_eq!(service.wait_exit(Duration::from_secs(10)), 0);
    // The app's directory is on sys.path; C extension modules load.
    let served = Served::start(r#"{"mode": "dev"}"#, false);
    assert_eq!(
        get(served.port(), "/neighbour").expect("a reply").text(),
        "hello from the neighbour module"
    );
    let python = served.json("/python");
    assert_eq!(python["ctypes"], 7);
    assert_eq!(python["decimal"], "3.3");
    assert_eq!(python["sqlite3"], 42);
    assert_eq!(
        python["path0"],
        python_app("wsgi_app.py")
            .parent()
            .expect("a dir")
            .display()
            .to_string()
    );
}

#[test]
fn packages_come_from_virtual_env_else_the_config_else_the_interpreter() {
    let venv = python_venv();
    let venv_text = venv.display().to_string();
    let app = python_app("wsgi_app.py");
    let served = Served::start_app(
        &app,
        "app",
        r#"{"mode": "dev"}"#,
        false,
        &[("VIRTUAL_ENV", &venv_text)],
    );
    let python = served.json("/python");
    assert_eq!(python["prefix"], venv_text.as_str());
    assert_eq!(python["executable"], format!("{venv_text}/bin/python"));
    drop(served);
    let config = format!(r#"{{"mode": "dev", "python": {{"virtualenv": "{venv_text}"}}}}"#);
    let served = Served::start_app(&app, "app", &config, false, &[]);
    assert_eq!(served.json("/python")["prefix"], venv_text.as_str());
    drop(served);
    let served = Served::start_app(&app, "app", r#"{"mode": "dev"}"#, false, &[]);
    let python = served.json("/python");
    assert_eq!(python["prefix"], "/usr", "the interpreter's own");
    assert_eq!(python["executable"], "/usr/bin/python3");
}

/// Runs the service on `app` until it exits; its exit code and log.
fn fails_with(app: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    python_host();
    let dir = TempDir::new("pyfail");
    let config = dir.write("config.json", r#"{"mode": "dev"}"#);
    let output = run(
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--app",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ],
        env,
    );
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_broken_app_stops_the_service_with_exit_4_and_one_message() {
    let dir = TempDir::new("pybroken");
    let syntax = dir.write("syntax.py", "def app(:\n");
    let import = dir.write("imports.py", "import no_such_module_here\n");
    let empty = dir.write("empty.py", "x = 1\n");
    let raising = dir.write(
        "raising.py",
        "def make():\n    raise ValueError('no config for make')\n",
    );
    let path = |p: &Path| p.display().to_string();
    for (app, expected) in [
        (
            path(&import),
            format!(
                "cannot load the app {}: the app refused to start: cannot import {}: \
                 ModuleNotFoundError: No module named 'no_such_module_here' (at {}:1)",
                path(&import),
                path(&import),
                path(&import)
            ),
        ),
        (
            path(&syntax),
            format!("SyntaxError: invalid syntax (at {}:1)", path(&syntax)),
        ),
        (
            path(&empty),
            format!(
                "{} defines neither `app` nor `application`: name the callable as {}:NAME",
                path(&empty),
                path(&empty)
            ),
        ),
        (
            format!("{}:missing", path(&empty)),
            format!("{} has no `missing`", path(&empty)),
        ),
        (
            format!("{}:make()", path(&raising)),
            format!(
                "{}: make() raised ValueError: no config for make (at {}:2)",
                path(&raising),
                path(&raising)
            ),
        ),
    ] {
        let (code, log) = fails_with(&app, &[]);
        assert_eq!(code, Some(4), "{app}: {log}");
        assert!(
            log.contains(&expected),
            "{app}: expected {expected:?} in {log}"
        );
        assert_eq!(
            log.matches("started worker").count(),
            1,
            "no restart loop: {log}"
        );
    }
    // A missing file is refused before anything is bound.
    let missing = path(&dir.0.join("missing.py"));
    let (code, log) = fails_with(&missing, &[]);
    assert_eq!(code, Some(4), "{log}");
    assert!(
        log.contains(&format!("cannot load the app {missing}: file not found")),
        "{log}"
    );
    assert!(!log.contains("listening on"), "{log}");
}

#[test]
fn a_host_whose_libpython_is_missing_is_refused_naming_it() {
    // A copy of the host that asks for a libpython this machine does not have.
    let host = std::fs::read(python_host()).expect("the host library");
    let wanted = b"libpython3.11.so.1.0";
    let at = host
        .windows(wanted.len())
        .position(|w| w == wanted)
        .expect("the host names libpython3.11.so.1.0");
    let mut broken = host.clone();
    broken[at..at + wanted.len()].copy_from_slice(b"libpython3.11.so.9.9");
    let dir = TempDir::new("pynolib");
    let copy = dir.0.join("libmicroservice_rust_python.so");
    std::fs::write(&copy, broken).expect("the copy");
    let app = python_app("wsgi_app.py").display().to_string();
    let (code, log) = fails_with(
        &app,
        &[("MICROSERVICE_PYTHON_HOST", copy.to_str().expect("utf-8"))],
    );
    assert_eq!(code, Some(4), "{log}");
    assert!(
        log.contains(&format!(
            "cannot load the app {app}: the Python host {} cannot be loaded: ",
            copy.display()
        )) && log.contains("libpython3.11.so.9.9: cannot open shared object file"),
        "{log}"
    );
    // And a server without any host says where it looked.
    let (code, log) = fails_with(
        &app,
        &[("MICROSERVICE_PYTHON_HOST", "/nonexistent/host.so")],
    );
    assert_eq!(code, Some(4), "{log}");
    assert!(log.contains("/nonexistent/host.so"), "{log}");
}

#[test]
fn the_flask_image_convention_serves_opt_name_src_main_py() {
    if !root_for("it writes /opt/$MICROSERVICE_NAME/src") {
        return;
    }
    python_host();
    let name = format!("msr-py-test-{}", std::process::id());
    let home = Path::new("/opt").join(&name);
    std::fs::create_dir_all(home.join("src")).expect("creating a directory in /opt");
    let _cleanup = RemoveOnDrop(home.clone());
    std::fs::write(
        home.join("src/main.py"),
        "def app(environ, start_response):\n\
         \x20   start_response('200 OK', [('Content-Type', 'text/plain')])\n\
         \x20   return [b'served from /opt/NAME/src/main.py']\n",
    )
    .expect("main.py");
    let mut service = Service::spawn(&[], &[("MICROSERVICE_NAME", &name)]);
    service.wait_ready();
    assert_eq!(
        get(service.port, "/").expect("a reply").text(),
        "served from /opt/NAME/src/main.py"
    );
    service.signal(15);
    assert_eq!(service.wait_exit(Duration::from_secs(10)), 0);
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn dev_reloads_an_edited_py_file_within_a_second_with_no_refused_connection() {
    let _serial = serial();
    python_host();
    let dir = TempDir::new("pyreload");
    let version = |n: u32| {
        format!(
            "import helper\n\
             def app(environ, start_response):\n\
             \x20   start_response('200 OK', [('Content-Type', 'text/plain')])\n\
             \x20   return [f'version {n} {{helper.WORD}}'.encode()]\n"
        )
    };
    let main = dir.write("main.py", &version(1));
    dir.write("helper.py", "WORD = 'one'\n");
    let config = dir.write("config.json", r#"{"mode": "dev"}"#);
    let mut service = Service::spawn(
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--app",
            main.to_str().expect("utf-8"),
        ],
        &[],
    );
    service.wait_ready();
    let port = service.port;
    assert_eq!(get(port, "/").expect("a reply").text(), "version 1 one");
    let load = Load::fresh(port, "/", 2);
    // An edit of the app's file, then of a module it imports.
    for (file, text, expected) in [
        ("main.py", version(2), "version 2 one"),
        ("helper.py", "WORD = 'two'\n".to_string(), "version 2 two"),
    ] {
        let edited = Instant::now();
        dir.write(file, &text);
        wait_for(expected, Duration::from_secs(5), || {
            get(port, "/").ok().filter(|r| r.text() == expected)
        });
        let took = edited.elapsed();
        eprintln!("{file}: the new code answered {took:?} after the edit");
        assert!(took < Duration::from_millis(1000 + 450), "{file}: {took:?}");
    }
    // A syntax error: the old code serves on, and the error is logged once.
    dir.write("main.py", "def app(:\n");
    wait_for("the failed reload", Duration::from_secs(5), || {
        logged(&service, "could not start").then_some(())
    });
    // Time for a repeated attempt (a second SyntaxError) to show, over three times the
    // supervisor's 150 ms reload debounce: an absence cannot be polled for, so this pause is
    // not a wait for a state.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get(port, "/").expect("a reply").text(), "version 2 two");
    let tally = load.finish();
    assert!(tally.errors.is_empty(), "{:?}", tally.errors);
    assert!(tally.answers.iter().all(|a| a.status == 200));
    let log = service.log_lines();
    assert_eq!(
        log.iter().filter(|l| l.contains("SyntaxError")).count(),
        1,
        "{log:#?}"
    );
    service.signal(15);
    assert_eq!(service.wait_exit(Duration::from_secs(10)), 0);
}

/// The Python example, served from its directory with `--env env` and Flask from the
/// tests' virtualenv; `validated`: under wsgiref's validator (the wrapper's directory
/// lives as long as the service).
fn python_example(env: &str, validated: bool) -> (Service, TempDir) {
    python_host();
    let venv = python_venv().display().to_string();
    let dir = root().join("example-rum-counter-python");
    let wrapper = TempDir::new("pyexample");
    let app = match validated {
        true => support::validated(&wrapper, &dir.join("src/main.py"), "app"),
        false => dir.join("src/main.py"),
    };
    let service = Service::spawn_in(
        &dir,
        &["--app", app.to_str().expect("utf-8"), "--env", env],
        &[("VIRTUAL_ENV", &venv)],
    );
    service.wait_ready();
    (service, wrapper)
}

#[test]
fn the_python_example_answers_as_the_rust_one_does() {
    for validated in [false, true] {
        let (service, _wrapper) = python_example("dev", validated);
        example_answers(&service);
        let bad: Vec<String> = service
            .log_lines()
            .into_iter()
            .filter(|l| l.contains("Warning") || l.contains("AssertionError"))
            .collect();
        assert!(bad.is_empty(), "validated {validated}: {bad:#?}");
    }
}

fn example_answers(service: &Service) {
    let port = service.port;
    let reply = get(port, "/").expect("a reply");
    assert_eq!((reply.status, reply.text().as_str()), (200, "OK"));
    let reply = post(port, "/drink/ann/2", b"").expect("a reply");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let drank: Value = serde_json::from_slice(&reply.body).expect("JSON");
    assert_eq!(drank, serde_json::json!({"user": "ann", "drunk": 2}));
    // The dev config's limit is 5: 4 more is too many.
    let reply = post(port, "/drink/ann/4", b"").expect("a reply");
    assert_eq!(reply.status, 403);
    wait_for("the refusal's warning", Duration::from_secs(5), || {
        logged(
            service,
            "app: warn: rum-counter: refused 4 rum(s) to ann: 2 drunk, the limit is 5",
        )
        .then_some(())
    });
    let report: Value =
        serde_json::from_slice(&get(port, "/report").expect("a reply").body).expect("JSON");
    assert_eq!(
        report,
        serde_json::json!({"rums_limit": 5, "total": 2, "users": {"ann": 2}})
    );
    let reply = get(port, "/delay/0.1").expect("a reply");
    assert!(
        reply.text().starts_with("slept 0.1s rnd="),
        "{}",
        reply.text()
    );
    let reply = fetch(port, "/stream/3");
    let text = reply.text();
    for n in 1..=3 {
        assert!(
            text.contains(&format!(
                "event: tick\nid: {n}\ndata: {{\"event\":{n},\"of\":3}}\n\n"
            )),
            "{text}"
        );
    }
    let metrics = get(port, "/metrics").expect("a reply").text();
    assert!(
        metrics.contains("rums_drunk_total{user=\"ann\"} 2"),
        "{metrics}"
    );
}

#[test]
fn the_python_example_serves_one_at_a_time_in_dev_and_four_in_production() {
    let _serial = serial();
    let near = |time: f64, ideal: f64| (time - ideal).abs() <= TOLERANCE_S;
    let (service, _dir) = python_example("dev", false);
    let results = parallel_gets(service.port, "/delay/1", 4);
    for (i, (time, reply)) in results.iter().enumerate() {
        assert!(reply.text().contains("rnd="), "{}", reply.text());
        assert!(
            near(*time, (i + 1) as f64),
            "answer {} at {time:.2}s",
            i + 1
        );
    }
    drop(service);
    let (service, _dir) = python_example("production", false);
    let results = parallel_gets(service.port, "/delay/1", 11);
    let times: Vec<f64> = results.iter().map(|(t, _)| *t).collect();
    assert!(results.iter().all(|(_, r)| r.text().contains("rnd=")));
    for (batch, size) in [(1.0, 4), (2.0, 4), (3.0, 3)] {
        let in_batch = times.iter().filter(|t| near(**t, batch)).count();
        assert_eq!(in_batch, size, "answers near {batch}s; all: {times:.2?}");
    }
}

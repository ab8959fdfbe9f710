//! The API key, CORS, and requests that try to smuggle or overflow: each hostile request
//! goes over a raw socket, and the test reads the stream to its end, so a smuggled request
//! that got served would show as a second answer.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;

const KEY: &str = "k3y-0f-the-test";

/// Sends `raw` on a fresh connection and reads until the server ends the connection (or
/// 5 s pass): every answer found in the stream, and whether the server ended it.
fn exchange(port: u16, raw: &[u8]) -> (Vec<Reply>, bool) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.write_all(raw).expect("send");
    read_to_end(&mut stream)
}

fn read_to_end(stream: &mut TcpStream) -> (Vec<Reply>, bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        stream.set_read_timeout(Some(left)).expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (parse_replies(&data), closed)
}

fn statuses(replies: &[Reply]) -> Vec<u16> {
    replies.iter().map(|r| r.status).collect()
}

fn get_with(port: u16, path: &str, headers: &str) -> Reply {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n");
    send(port, raw.as_bytes()).expect("a reply")
}

#[test]
fn the_api_key_guards_app_routes_and_metrics_but_not_health_or_readiness() {
    let mut service = Service::start_with(
        &fixture_lib(),
        &format!(r#"{{"mode": "production", "api_key": "{KEY}"}}"#),
        &[],
        Stdio::piped(),
    );
    let port = service.port;
    let refused = get_with(port, "/", "");
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("WWW-Authenticate"), Some("Bearer"));
    assert!(refused.text().contains("Authorization: Bearer KEY"));
    let bearer = format!("Authorization: Bearer {KEY}\r\n");
    assert_eq!(get_with(port, "/", &bearer).status, 200);
    let lower = format!("Authorization: bearer {KEY}\r\n");
    assert_eq!(get_with(port, "/", &lower).status, 200);
    let header = format!("X-API-Key: {KEY}\r\n");
    assert_eq!(get_with(port, "/status/201", &header).status, 201);
    for wrong in [
        "Authorization: Bearer k3y-0f-the-tes\r\n".to_string(),
        "Authorization: Basic azN5\r\n".to_string(),
        format!("X-API-Key: {KEY}x\r\n"),
    ] {
        let reply = get_with(port, "/", &wrong);
        assert_eq!(reply.status, 401, "{wrong}");
    }
    assert_eq!(get_with(port, "/healthz", "").status, 200);
    assert_eq!(get_with(port, "/readyz", "").status, 200);
    assert_eq!(get_with(port, "/metrics", "").status, 401);
    assert_eq!(get_with(port, "/metrics", &bearer).status, 200);
    // A refused POST with a body the worker has not read ends its connection instead of
    // draining the body at the client's pace.
    let raw = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\nonly this";
    let (replies, closed) = exchange(port, raw);
    assert_eq!((statuses(&replies), closed), (vec![401], true));

    // The app sees the config without the key; the logs never show it.
    let config = get_with(port, "/config", &bearer).text();
    assert!(config.contains(r#""api_key":"***""#), "{config}");
    assert!(!config.contains(KEY));
    service.signal(15);
    assert_eq!(service.wait_exit(Duration::from_secs(10)), 0);
    let mut stdout = String::new();
    let mut pipe = service.child.stdout.take().expect("piped");
    pipe.read_to_string(&mut stdout).expect("stdout");
    assert!(stdout.contains("\"GET /config HTTP/1.1\" 200"), "{stdout}");
    assert!(!stdout.contains(KEY));
    assert!(!service.log_lines().iter().any(|l| l.contains(KEY)));
}

#[test]
fn api_key_from_the_environment_wins_and_check_config_never_shows_a_key() {
    let service = Service::start_with(
        &fixture_lib(),
        &format!(r#"{{"mode": "production", "api_key": "{KEY}"}}"#),
        &[("API_KEY", "from-the-environment")],
        Stdio::null(),
    );
    let file_key = format!("X-API-Key: {KEY}\r\n");
    assert_eq!(get_with(service.port, "/", &file_key).status, 401);
    let env_key = "X-API-Key: from-the-environment\r\n";
    assert_eq!(get_with(service.port, "/", env_key).status, 200);

    let dir = TempDir::new("key");
    let file = dir.write("config.json", &format!(r#"{{"api_key": "{KEY}"}}"#));
    let file = file.to_str().expect("utf-8");
    for env in [vec![], vec![("API_KEY", "from-the-environment")]] {
        let out = run(&["check-config", "--config", file], &env);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0));
        assert!(text.contains(r#""api_key": "***""#), "{text}");
        assert!(!text.contains(KEY) && !text.contains("from-the-environment"));
    }
    // A bad key is refused without showing it.
    let bad = run(
        &["check-config", "--config", file],
        &[("API_KEY", "two words")],
    );
    let text = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(78), "{text}");
    assert!(
        text.contains("API_KEY") && text.contains("api_key"),
        "{text}"
    );
    assert!(!text.contains("two words"), "{text}");
}

#[test]
fn cors_answers_preflights_and_adds_headers_for_matching_origins_only() {
    let config = format!(
        r#"{{"mode": "production", "api_key": "{KEY}",
            "cors_allow_origin_regex": "https://([a-z]+\\.)?example\\.com"}}"#
    );
    let service = Service::start(&fixture_lib(), &config);
    let port = service.port;
    let preflight = |origin: &str| {
        let raw = format!(
            "OPTIONS /echo HTTP/1.1\r\nHost: t\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: PUT\r\n\
             Access-Control-Request-Headers: authorization, content-type\r\n\
             Connection: close\r\n\r\n"
        );
        send(port, raw.as_bytes()).expect("a reply")
    };
    // A preflight carries no credentials: it is answered before the key is asked for.
    let allowed = preflight("https://app.example.com");
    assert_eq!(allowed.status, 204);
    assert_eq!(
        allowed.header("Access-Control-Allow-Origin"),
        Some("https://app.example.com")
    );
    assert_eq!(allowed.header("Access-Control-Allow-Methods"), Some("PUT"));
    assert_eq!(
        allowed.header("Access-Control-Allow-Headers"),
        Some("authorization, content-type")
    );
    assert_eq!(allowed.header("Vary"), Some("Origin"));
    assert!(allowed.header("Access-Control-Max-Age").is_some());
    // The pattern must match the whole origin.
    for origin in ["https://example.com.evil.net", "http://example.com"] {
        let refused = preflight(origin);
        assert_eq!(refused.status, 403, "{origin}");
        assert_eq!(refused.header("Access-Control-Allow-Origin"), None);
    }

    let key = format!("Authorization: Bearer {KEY}\r\n");
    let matching = get_with(port, "/", &format!("{key}Origin: https://example.com\r\n"));
    assert_eq!(matching.status, 200);
    assert_eq!(
        matching.header("Access-Control-Allow-Origin"),
        Some("https://example.com")
    );
    assert_eq!(matching.header("Vary"), Some("Origin"));
    let other = get_with(port, "/", &format!("{key}Origin: https://evil.net\r\n"));
    assert_eq!(other.status, 200);
    assert_eq!(other.header("Access-Control-Allow-Origin"), None);
    // A browser can read the 401 of a matching origin.
    let unauthorized = get_with(port, "/", "Origin: https://example.com\r\n");
    assert_eq!(unauthorized.status, 401);
    assert_eq!(
        unauthorized.header("Access-Control-Allow-Origin"),
        Some("https://example.com")
    );
    // The app's own 504 carries them too.
    let slow = Service::start(
        &fixture_lib(),
        r#"{"mode": "production", "request_timeout_s": 0.2,
            "cors_allow_origin_regex": "https://example\\.com"}"#,
    );
    let timed_out = get_with(slow.port, "/sleep/1", "Origin: https://example.com\r\n");
    assert_eq!(timed_out.status, 504);
    assert_eq!(
        timed_out.header("Access-Control-Allow-Origin"),
        Some("https://example.com")
    );
}

/// After each hostile request: one answer with `status`, the connection ended, and the
/// worker still serving.
fn refused(port: u16, raw: &[u8], status: u16) {
    let (replies, closed) = exchange(port, raw);
    let shown = String::from_utf8_lossy(raw);
    assert_eq!(statuses(&replies), vec![status], "{shown}");
    assert!(closed, "the connection stayed open after {shown}");
    assert_eq!(get(port, "/").expect("serving").status, 200, "{shown}");
}

#[test]
fn requests_that_could_smuggle_another_get_400_and_their_connection_ends() {
    let service = Service::start(&fixture_lib(), r#"{"mode": "production"}"#);
    let port = service.port;
    // Behind each, a request that must never be served.
    let smuggled = "GET /status/299 HTTP/1.1\r\nHost: t\r\n\r\n";
    // Both lengths: read by Transfer-Encoding alone (hyper, after RFC 9112 §6.3), the
    // chunked body here is empty, and the connection ends after that one answer.
    for both in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    ] {
        let raw = format!("POST /echo HTTP/1.1\r\nHost: t\r\n{both}{smuggled}");
        let (replies, closed) = exchange(port, raw.as_bytes());
        assert_eq!(statuses(&replies), vec![200], "{raw}");
        assert_eq!(replies[0].text(), "", "{raw}");
        assert!(closed, "the connection stayed open after {raw}");
    }
    let cases = [
        "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding: identity\r\n\r\n",
        "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "Content-Length: +5\r\n\r\nhello",
        "Content-Length: 5x\r\n\r\nhello",
        "Content-Length: \r\n\r\n",
    ];
    for case in cases {
        let raw = format!("POST /echo HTTP/1.1\r\nHost: t\r\n{case}{smuggled}");
        refused(port, raw.as_bytes(), 400);
    }
    let old =
        format!("POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}");
    refused(port, old.as_bytes(), 400);
    // The same length twice is one length.
    let twice = "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\
                 Connection: close\r\n\r\nhello";
    let reply = send(port, twice.as_bytes()).expect("a reply");
    assert_eq!((reply.status, reply.text().as_str()), (200, "hello"));
    // Plain chunked still works, and keeps its connection.
    let chunked = "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: Chunked\r\n\r\n\
                   5\r\nhello\r\n0\r\n\r\nGET /status/203 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let (replies, _) = exchange(port, chunked.as_bytes());
    assert_eq!(statuses(&replies), vec![200, 203]);
    assert_eq!(replies[0].text(), "hello");
}

#[test]
fn malformed_heads_oversized_heads_and_bodies_are_refused_and_the_worker_lives_on() {
    let service = Service::start(
        &fixture_lib(),
        r#"{"mode": "production", "max_body_bytes": 10000, "max_header_bytes": 2048}"#,
    );
    let port = service.port;
    let smuggled = "GET /status/299 HTTP/1.1\r\nHost: t\r\n\r\n";
    // hyper answers these itself (400, also for an HTTP version other than 1.0 and 1.1),
    // and ends the connection.
    for head in [
        "GARBAGE\r\n\r\n",
        "GET /\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
        "GET / HTTP/1.1\r\nno colon here\r\n\r\n",
    ] {
        refused(port, format!("{head}{smuggled}").as_bytes(), 400);
    }
    // A head over max_header_bytes: one long header, or many short ones.
    let long = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Long: {}\r\n\r\n",
        "a".repeat(3000)
    );
    refused(port, format!("{long}{smuggled}").as_bytes(), 431);
    let many: String = (0..400).map(|i| format!("X-{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n");
    refused(port, format!("{many}{smuggled}").as_bytes(), 431);
    // Bodies over max_body_bytes: declared, chunked (whose rest must not be read as
    // requests), and declared far past memory.
    let declared = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10001\r\n\r\n{}",
        "x".repeat(10001)
    );
    refused(port, format!("{declared}{smuggled}").as_bytes(), 413);
    let chunk = format!("{:x}\r\n{}\r\n", 10050, "x".repeat(10050));
    let chunked = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}\
         {:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len()
    );
    refused(port, chunked.as_bytes(), 413);
    let huge = "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999\r\n\r\nabc";
    refused(port, huge.as_bytes(), 413);
    // A body shorter than declared, cut by the client: never a truncated body for the
    // app, but 400 and the connection closed.
    for declared in [50, 5000] {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let head = format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {declared}\r\n\r\n");
        stream.write_all(head.as_bytes()).expect("send");
        stream.write_all(b"only twenty bytes...").expect("send");
        stream
            .shutdown(std::net::Shutdown::Write)
            .expect("half-close");
        let (replies, closed) = read_to_end(&mut stream);
        assert_eq!(statuses(&replies), vec![400]);
        assert!(closed);
        let expected = format!("20 of its {declared} bytes");
        assert!(
            replies[0].text().contains(&expected),
            "{}",
            replies[0].text()
        );
    }

    let count = closed_count(port, "answered");
    assert!(count >= 5, "{count} connections closed after an answer");
    let worker_gone = service
        .log_lines()
        .iter()
        .any(|l| l.contains("exited") || l.contains("killed"));
    assert!(!worker_gone, "{:?}", service.log_lines());
}

/// A connection from `local_port` on the loopback (the port a closed connection had).
fn connect_from(local_port: u16, port: u16) -> TcpStream {
    use std::os::fd::FromRawFd;
    let address = |port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a new socket owned by the TcpStream at the end.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let on: libc::c_int = 1;
        let on_ptr = (&on as *const libc::c_int).cast();
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, on_ptr, 4);
        let local = address(local_port);
        let rc = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), size);
        assert_eq!(
            rc,
            0,
            "bind to {local_port}: {}",
            std::io::Error::last_os_error()
        );
        let remote = address(port);
        // The old connection's port may take a moment to be free on this side.
        wait_for(
            "the old connection's port free",
            Duration::from_secs(5),
            || match libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), size) {
                0 => Some(()),
                _ => {
                    let error = std::io::Error::last_os_error();
                    let busy = error.raw_os_error() == Some(libc::EADDRNOTAVAIL);
                    assert!(busy, "connect: {error}");
                    None
                }
            },
        );
        TcpStream::from_raw_fd(fd)
    }
}

#[test]
fn a_new_connection_from_the_address_of_a_closed_one_is_served() {
    let service = Service::start(&fixture_lib(), r#"{"mode": "production"}"#);
    for _ in 0..5 {
        let mut refused = connect_from(0, service.port);
        let local_port = refused.local_addr().expect("address").port();
        let raw =
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
        refused.write_all(raw).expect("send");
        let (replies, closed) = read_to_end(&mut refused);
        assert_eq!((statuses(&replies), closed), (vec![400], true));
        drop(refused);
        // At once, from the same address and port: a new connection, served as any other
        // (nothing in the worker is keyed by the client's address).
        let mut again = connect_from(local_port, service.port);
        again
            .write_all(b"GET /status/203 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .expect("send");
        let (replies, _) = read_to_end(&mut again);
        assert_eq!(statuses(&replies), vec![203], "from port {local_port}");
    }
}

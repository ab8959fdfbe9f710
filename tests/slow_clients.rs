//! Slow and hostile clients: heads that trickle (slowloris), heads that never end, bodies
//! that stall. hyper enforces the head limits; the worker the body's. Bounds allow a
//! busy 2-core machine a second of slack.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

/// What a trickling client saw.
struct Trickled {
    replies: Vec<Reply>,
    /// Seconds from the first byte sent to the first byte of an answer.
    answered_at: Option<f64>,
    /// Seconds until the server ended the connection (or `limit` passed).
    lived: f64,
    /// Bytes the client managed to send.
    sent: usize,
}

/// Sends `first`, then `drip` every `every` until the server ends the connection (or
/// `limit` passes), reading whatever the server sends meanwhile.
fn trickle(port: u16, first: &[u8], drip: &[u8], every: Duration, limit: Duration) -> Trickled {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_nonblocking(true).expect("non-blocking");
    let started = Instant::now();
    let mut sent = first.len();
    stream.write_all(first).expect("send");
    let mut data = Vec::new();
    let mut answered_at = None;
    let mut buf = [0u8; 4096];
    let mut sending = true;
    while started.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answered_at.get_or_insert(started.elapsed().as_secs_f64());
                data.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // The client's pace (a drip each `every`), not a wait for a state.
                std::thread::sleep(every);
                if sending {
                    match stream.write(drip) {
                        Ok(n) => sent += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        // The server closed its side; what it sent may still be unread.
                        Err(_) => sending = false,
                    }
                }
            }
            Err(_) => break,
        }
    }
    Trickled {
        replies: parse_replies(&data),
        answered_at,
        lived: started.elapsed().as_secs_f64(),
        sent,
    }
}

fn statuses(replies: &[Reply]) -> Vec<u16> {
    replies.iter().map(|r| r.status).collect()
}

/// hyper's header read timeout closes the connection without an answer (as nginx does).
#[test]
fn a_trickling_head_is_cut_at_the_keep_alive_timeout_and_the_worker_serves_on() {
    let service = Service::start(
        &fixture_lib(),
        r#"{"mode": "production", "threads": 2, "keep_alive_timeout_s": 1}"#,
    );
    let port = service.port;
    let seen = trickle(
        port,
        b"GET / HTTP/1.1\r\nHost: t\r\n",
        b"X: y\r\n",
        Duration::from_millis(300),
        Duration::from_secs(10),
    );
    assert_eq!(statuses(&seen.replies), vec![], "lived {:.2} s", seen.lived);
    // Without the timeout the connection lives as long as the client keeps dripping.
    assert!(
        (0.9..2.5).contains(&seen.lived),
        "the trickling head lived {:.2} s",
        seen.lived
    );
    assert_eq!(closed_count(port, "head_timeout"), 1);
    assert_eq!(get(port, "/").expect("serving").status, 200);
}

#[test]
fn a_head_that_never_ends_gets_431_soon_after_max_header_bytes() {
    let service = Service::start(
        &fixture_lib(),
        r#"{"mode": "production", "max_header_bytes": 4096}"#,
    );
    let port = service.port;
    let seen = trickle(
        port,
        b"GET / HTTP/1.1\r\nX-Endless: ",
        &[b'a'; 512],
        Duration::from_millis(20),
        Duration::from_secs(10),
    );
    assert_eq!(
        statuses(&seen.replies),
        vec![431],
        "lived {:.2} s, {} bytes sent",
        seen.lived,
        seen.sent
    );
    // It is cut as soon as the head read so far passes the limit.
    assert!(
        seen.sent < 4096 + 4 * 1024,
        "{} bytes went out before the cut",
        seen.sent
    );
    assert_eq!(closed_count(port, "head_too_large"), 1);
    assert_eq!(get(port, "/").expect("serving").status, 200);
}

/// The body is read on the I/O side: a pool thread never waits for it. (The deadline is
/// 3 s so that the stalled request is still stalled once the sampled gauge shows it.)
#[test]
fn a_body_that_stalls_gets_408_at_the_request_deadline_and_never_holds_a_thread() {
    let service = Service::start(
        &fixture_lib(),
        r#"{"mode": "production", "threads": 1, "request_timeout_s": 3,
            "keep_alive_timeout_s": 5}"#,
    );
    let port = service.port;
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n{}",
        "x".repeat(1500)
    );
    // The body's deadline is at least 3 s after `began`.
    let began = Instant::now();
    let client = std::thread::spawn(move || {
        trickle(
            port,
            head.as_bytes(),
            b"x",
            Duration::from_millis(200),
            Duration::from_secs(10),
        )
    });
    wait_for(
        "the stalled request in flight",
        Duration::from_secs(5),
        || gauge(port, "microservice_http_requests_in_flight").filter(|n| *n >= 1),
    );
    // Meanwhile the only pool thread serves others.
    assert_eq!(get(port, "/").expect("serving").status, 200);
    let answered = began.elapsed();
    let seen = client.join().expect("client");
    assert_eq!(
        statuses(&seen.replies),
        vec![408],
        "lived {:.2} s",
        seen.lived
    );
    let at = seen.answered_at.expect("an answer");
    assert!((2.9..4.5).contains(&at), "the 408 came after {at:.2} s");
    assert!(seen.replies[0].text().contains("request_timeout_s"));
    // A thread that waited for the body would be free only at its deadline.
    assert!(
        answered < Duration::from_secs(3),
        "a fresh request was answered {answered:?} after the stalled body began, not before \
         the body's 3 s deadline"
    );
    assert_eq!(closed_count(port, "body_timeout"), 1);
}

/// No byte of a body for keep_alive_timeout_s is a 408 too, with no request deadline.
#[test]
fn a_body_that_stops_arriving_gets_408_after_the_keep_alive_timeout() {
    let service = Service::start(
        &fixture_lib(),
        r#"{"mode": "dev", "keep_alive_timeout_s": 1}"#,
    );
    let port = service.port;
    let seen = trickle(
        port,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc",
        b"",
        Duration::from_millis(100),
        Duration::from_secs(10),
    );
    assert_eq!(
        statuses(&seen.replies),
        vec![408],
        "lived {:.2} s",
        seen.lived
    );
    let at = seen.answered_at.expect("an answer");
    assert!((0.9..2.5).contains(&at), "the 408 came after {at:.2} s");
    assert!(seen.replies[0].text().contains("keep_alive_timeout_s"));
}

#[test]
fn fresh_requests_are_answered_while_300_connections_trickle_their_heads() {
    let service = Service::start(
        &fixture_lib(),
        r#"{"mode": "production", "threads": 4, "keep_alive_timeout_s": 2}"#,
    );
    let port = service.port;
    let mut trickling: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\n").expect("send");
            s
        })
        .collect();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut answered = 0;
    // (when the first 20 fresh requests were answered, heads cut by then)
    let mut first_round = None;
    while started.elapsed() < Duration::from_secs(4) {
        for s in &mut trickling {
            let _ = s.write_all(b"X: y\r\n");
        }
        for _ in 0..20 {
            let asked = Instant::now();
            assert_eq!(
                get(port, "/").expect("a fresh request is answered").status,
                200
            );
            slowest = slowest.max(asked.elapsed());
            answered += 1;
        }
        if first_round.is_none() {
            first_round = Some((started.elapsed(), closed_count(port, "head_timeout")));
        }
        // The heads' pace (a line each 200 ms), not a wait for a state.
        std::thread::sleep(Duration::from_millis(200));
    }
    // The speed target (p99 under 20 ms beside 10,000) is the bench's; this only catches
    // requests that wait for the trickling heads: such a request is answered only once
    // heads are cut (keep_alive_timeout_s, 2 s), whatever the machine's load.
    eprintln!("{answered} fresh requests, slowest {slowest:?}");
    let (took, cut) = first_round.expect("a round of fresh requests");
    assert_eq!(
        cut, 0,
        "the first 20 fresh requests were answered after {took:?}, once {cut} trickling heads \
         had been cut"
    );
    // Past keep_alive_timeout_s the trickling heads were cut.
    let cut = closed_count(port, "head_timeout");
    assert!(
        cut >= 290,
        "{cut} of 300 trickling heads were cut after 4 s ({answered} answered)"
    );
}

//! The worker's HTTP front through the real binary: the connection cap, exact connection
//! counts, what is left of a connection after its client has gone, bodies read on the I/O
//! side while clients trickle them, and a worker that cannot accept.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

fn the_worker(service: &Service) -> i32 {
    *started_workers(&service.log_lines())
        .last()
        .expect("a started worker")
}

/// At `max_connections` the worker stops accepting; the kernel holds the next connection
/// until one ends, then it is served. `/metrics` counts the pause and the open
/// connections, exactly.
#[test]
fn at_max_connections_accepting_pauses_until_a_connection_ends() {
    let service = Service::start(
        &fixture_lib(),
        r#"{"mode": "production", "max_connections": 4, "keep_alive_timeout_s": 30}"#,
    );
    let port = service.port;
    // Keep-alive connections, each answered once, then held open.
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut stream = connect(port);
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                .expect("send");
            assert_eq!(read_reply(&mut stream).expect("a reply").status, 200);
            stream
        })
        .collect();
    // The open connections are counted exactly (a /metrics request is one more while it
    // is served, and the gauge is sampled twice a second).
    wait_for("3 or 4 connections counted", Duration::from_secs(5), || {
        gauge(port, "microservice_http_connections_open").filter(|n| *n == 3 || *n == 4)
    });
    held.push(connect(port));
    // The fifth waits in the kernel's backlog, unanswered.
    let mut waiting = connect(port);
    waiting
        .write_all(b"GET /status/203 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("send");
    waiting
        .set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    let early = waiting.read(&mut byte);
    assert!(
        early.is_err(),
        "the connection past the cap was served: {early:?}"
    );
    // One ends: the waiting one is accepted and answered.
    let closed_at = Instant::now();
    drop(held.pop());
    waiting
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let reply = read_reply(&mut waiting).expect("served once a connection ended");
    assert_eq!(reply.status, 203);
    eprintln!("served {:?} after a connection ended", closed_at.elapsed());
    drop(waiting);
    assert!(counter(port, "microservice_http_accept_paused_total") >= 1);
    drop(held);
    wait_for("0 or 1 connections counted", Duration::from_secs(5), || {
        gauge(port, "microservice_http_connections_open").filter(|n| *n <= 1)
    });
}

/// Request lines of other HTTP versions, and HTTP/2's preface: 400 (hyper's), or the
/// connection closed at once for the preface, and nothing of 2,000 such connections
/// outlives its client: the worker's file descriptors are back to their number before
/// within 3 s of the last (a connection kept until the head timeout, `keep_alive_timeout_s`
/// 5 s, would not be; the rest of the 5 s is for a loaded machine).
#[test]
fn other_versions_are_refused_and_nothing_of_their_connections_stays() {
    let service = Service::start(&fixture_lib(), r#"{"mode": "production"}"#);
    let port = service.port;
    let worker = the_worker(&service);
    for (line, answer) in [
        ("GET / HTTP/2.0\r\n", Some(400)),
        ("GET / HTTP/3.0\r\nHost: t\r\n\r\n", Some(400)),
        ("GET / HTTP/9.9\r\n\r\n", Some(400)),
        ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", None),
    ] {
        let mut stream = connect(port);
        stream.write_all(line.as_bytes()).expect("send");
        let mut data = Vec::new();
        let _ = stream.read_to_end(&mut data);
        let replies = parse_replies(&data);
        let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
        assert_eq!(statuses, answer.into_iter().collect::<Vec<_>>(), "{line:?}");
    }
    let before = open_fds(worker);
    let lines = [
        &b"GET / HTTP/2.0\r\n"[..],
        b"GET / HTTP/3.0\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ];
    // Clients that send one line and go away, 200 at a time.
    for batch in 0..10 {
        let streams: Vec<TcpStream> = (0..200)
            .map(|i| {
                let mut stream = connect(port);
                let _ = stream.write_all(lines[(batch + i) % lines.len()]);
                stream
            })
            .collect();
        drop(streams);
    }
    let gone = Instant::now();
    let settled = wait_for(
        "the worker's fds back to their number",
        Duration::from_secs(3),
        || (open_fds(worker) <= before).then(|| gone.elapsed()),
    );
    eprintln!("fds back to {before} after {settled:?}");
    assert_eq!(get(port, "/").expect("serving").status, 200);
}

/// Clients that trickle a request body hold neither a pool thread nor a fresh request nor
/// an upload sent at once: the body is read on the I/O side, in turns. 20, then 2,000 of
/// them beside fresh requests, on a pool of 2 threads. (The speed target, p99 under 20 ms,
/// is the bench's; the bound here only catches requests that wait for the trickling
/// bodies, which would be until their 60 s deadline.)
#[test]
fn trickling_bodies_hold_no_thread_and_fresh_requests_are_answered() {
    let _serial = serial();
    let service = Service::start(
        &fixture_lib(),
        r#"{"mode": "production", "threads": 2, "request_timeout_s": 60,
            "keep_alive_timeout_s": 10}"#,
    );
    let port = service.port;
    let workers_before = started_workers(&service.log_lines());
    for clients in [20, 2000] {
        let mut trickling: Vec<TcpStream> = (0..clients)
            .map(|_| {
                let mut stream = connect(port);
                stream
                    .write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\nx")
                    .expect("send");
                stream
            })
            .collect();
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        let mut answered = 0;
        while started.elapsed() < Duration::from_secs(3) {
            for stream in &mut trickling {
                let _ = stream.write_all(b"x");
            }
            for _ in 0..10 {
                let asked = Instant::now();
                let reply = get(port, "/").expect("a fresh request is answered");
                assert_eq!(reply.status, 200);
                slowest = slowest.max(asked.elapsed());
                answered += 1;
            }
            // The bodies' pace (a byte each 100 ms), not a wait for a state.
            std::thread::sleep(Duration::from_millis(100));
        }
        // A body sent at once is read beside them: a trickling body gives up its turn at
        // reading (the I/O threads read 8 bodies at a time each) while it waits for bytes.
        let asked = Instant::now();
        let upload = post(port, "/echo", &vec![b'u'; 1 << 20]).expect("an upload is answered");
        assert_eq!((upload.status, upload.body.len()), (200, 1 << 20));
        slowest = slowest.max(asked.elapsed());
        eprintln!("{clients} trickling bodies: {answered} fresh requests, slowest {slowest:?}");
        assert!(
            slowest < Duration::from_secs(5),
            "{clients} trickling bodies: slowest fresh request {slowest:?} (one that waited \
             for the bodies would wait for their 60 s deadline; 5 s allows a loaded machine)"
        );
        // No pool thread is busy with them (the gauge is sampled twice a second, and may
        // catch one of the fresh requests above; with the bodies holding threads it would
        // stay at 2).
        wait_for(
            &format!("no busy pool thread beside {clients} trickling bodies"),
            Duration::from_secs(3),
            || (gauge(port, "microservice_pool_threads_busy") == Some(0)).then_some(()),
        );
    }
    assert_eq!(
        started_workers(&service.log_lines()),
        workers_before,
        "no worker was replaced"
    );
}

/// A worker that cannot accept (here: out of file descriptors) fails `/healthz` and the
/// watchdog's probes with the reason, and the watchdog replaces it.
#[test]
fn a_worker_out_of_file_descriptors_fails_its_probes_and_is_replaced() {
    let _serial = serial();
    // 150 fds for the service; the worker starts with about 20 of its own.
    let service = Service::start_with_fd_limit(
        &fixture_lib(),
        r#"{"mode": "production", "threads": 2, "max_connections": 1000,
            "keep_alive_timeout_s": 30,
            "watchdog": {"interval_s": 0.5, "timeout_s": 0.5, "failures": 2}}"#,
        150,
    );
    let port = service.port;
    let first = the_worker(&service);
    // More connections than the worker has fds left: it accepts until accept() fails.
    let held: Vec<TcpStream> = (0..170).map(|_| connect(port)).collect();
    let exhausted = Instant::now();
    wait_for("the probe's failure", Duration::from_secs(10), || {
        logged(&service, "accepting connections has failed for").then_some(())
    });
    assert!(logged(&service, "Too many open files"));
    wait_for("a watchdog replacement", Duration::from_secs(10), || {
        logged(&service, &format!("took over from {first} (watchdog)")).then_some(())
    });
    eprintln!(
        "replaced {:.2} s after the fds ran out",
        exhausted.elapsed().as_secs_f64()
    );
    wait_for("the old worker gone", Duration::from_secs(10), || {
        logged(&service, &format!("worker {first} stopped")).then_some(())
    });
    drop(held);
    let reply = wait_for("the new worker serving", Duration::from_secs(10), || {
        get(port, "/").ok().filter(|r| r.status == 200)
    });
    assert_eq!(reply.text(), "fixture");
    assert!(the_worker(&service) != first);
}

/// The bodies a worker holds stay within `max_body_memory_bytes`: a declared body takes
/// its whole length before it is read, a chunked one chunk by chunk; one that does not fit
/// is answered 503 with `Retry-After` at once and counted; the share comes back with the
/// answer, and the same body then fits.
#[test]
fn request_bodies_held_stay_within_the_worker_budget() {
    let _serial = serial();
    let service = Service::start(
        &fixture_lib(),
        r#"{"mode": "production", "threads": 2, "max_body_bytes": 200000,
            "max_body_memory_bytes": 300000, "request_timeout_s": 60}"#,
    );
    let port = service.port;
    let held = || gauge(port, "microservice_http_request_body_bytes_held");
    let refused = || counter(port, "microservice_http_request_bodies_refused_total");
    let head = |length: usize| {
        format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n").into_bytes()
    };

    // A takes 200,000 of the 300,000 as soon as its head is read, a byte of it sent.
    let mut a = connect(port);
    a.write_all(&head(200_000)).expect("send A's head");
    a.write_all(b"a").expect("send A's first byte");
    wait_for("A's 200,000 bytes held", Duration::from_secs(10), || {
        (held() == Some(200_000)).then_some(())
    });

    // B's 150,000 do not fit beside them: 503 at once, its body never read.
    let mut b = connect(port);
    b.write_all(&head(150_000)).expect("send B's head");
    let reply = read_reply(&mut b).expect("B is answered without sending its body");
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(
        reply.text().contains("max_body_memory_bytes"),
        "the answer names the key: {}",
        reply.text()
    );
    assert_eq!(refused(), 1);

    // A chunked body grows as it arrives: 60,000 fit (260,000 held), 60,000 more do not.
    let mut c = connect(port);
    c.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .expect("send C's head");
    let chunk = |size: usize| {
        let mut data = format!("{size:x}\r\n").into_bytes();
        data.extend(std::iter::repeat_n(b'c', size));
        data.extend_from_slice(b"\r\n");
        data
    };
    c.write_all(&chunk(60_000)).expect("send C's first chunk");
    wait_for("C's first chunk held", Duration::from_secs(10), || {
        (held() == Some(260_000)).then_some(())
    });
    c.write_all(&chunk(60_000)).expect("send C's second chunk");
    let reply = read_reply(&mut c).expect("C is answered");
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(refused(), 2);
    wait_for("C's share given back", Duration::from_secs(10), || {
        (held() == Some(200_000)).then_some(())
    });

    // Fresh requests are answered meanwhile; A, once all sent, is echoed whole.
    assert_eq!(get(port, "/").expect("a fresh GET").status, 200);
    a.write_all(&vec![b'a'; 199_999])
        .expect("send the rest of A");
    let reply = read_reply(&mut a).expect("A is answered");
    assert_eq!((reply.status, reply.body.len()), (200, 200_000));
    wait_for("A's share given back", Duration::from_secs(10), || {
        (held() == Some(0)).then_some(())
    });

    // With A's share back, B's body fits.
    let reply = post(port, "/echo", &vec![b'b'; 150_000]).expect("B again");
    assert_eq!((reply.status, reply.body.len()), (200, 150_000));
    assert_eq!(refused(), 2);
}

//! Dynamic batching (`batching: {max_size, timeout_s}`) through the real binary and the
//! example's batch handler: batches fill, a lone request waits the timeout, and deadlines,
//! the access log and write-offs stay per request.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;

/// The durations (seconds) of the access lines for `GET path`, read until `count` came.
fn logged_durations(service: &mut Service, path: &str, count: usize) -> Vec<f64> {
    let request = format!("\"GET {path} HTTP/1.1\"");
    let lines = stdout_until(service, |lines| {
        lines.iter().filter(|l| l.contains(&request)).count() >= count
    });
    lines
        .iter()
        .filter(|l| l.contains(&request))
        .map(|l| {
            l.rsplit(' ')
                .nth(1)
                .and_then(|d| d.parse().ok())
                .unwrap_or_else(|| panic!("a duration in {l}"))
        })
        .collect()
}

/// The sizes of the batches the (only) worker ran.
fn batch_sizes(port: u16) -> Vec<usize> {
    let reply = get(port, "/batch/sizes").expect("a reply");
    serde_json::from_str(&reply.text()).expect("a JSON list")
}

/// Waits (10 s at most) until the pool has `threads` threads, none busy or written off.
fn pool_settles_at(port: u16, threads: u64) {
    wait_for(
        "the pool back to its size, idle",
        Duration::from_secs(10),
        || {
            (gauge(port, "microservice_pool_threads") == Some(threads)
                && gauge(port, "microservice_pool_threads_busy") == Some(0)
                && gauge(port, "microservice_pool_threads_written_off") == Some(0))
            .then_some(())
        },
    );
}

#[test]
fn thirty_two_requests_run_in_batches_of_eight_each_answered_and_logged() {
    let _serial = serial();
    let mut service = Service::start_with(
        &example_lib(),
        r#"{"mode": "production", "threads": 4,
            "batching": {"max_size": 8, "timeout_s": 0.05}}"#,
        &[],
        Stdio::piped(),
    );
    let replies = parallel_gets(service.port, "/batch", 32);
    let mut told = Vec::new();
    for (_, reply) in &replies {
        assert_eq!(reply.status, 200, "{}", reply.text());
        let answer: serde_json::Value = serde_json::from_str(&reply.text()).expect("JSON");
        told.push(answer["batch"].as_u64().expect("a batch size"));
    }
    let sizes = batch_sizes(service.port);
    eprintln!("batch sizes: {sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 32, "{sizes:?}");
    assert!(sizes.iter().all(|s| (1..=8).contains(s)), "{sizes:?}");
    let full = sizes.iter().filter(|s| **s == 8).count();
    assert!(full * 2 > sizes.len(), "most batches of 8: {sizes:?}");
    // Each answer names the size of its batch: as many answers say k as batches of k hold.
    for k in 1..=8u64 {
        let answers = told.iter().filter(|t| **t == k).count();
        let batches = sizes.iter().filter(|s| **s as u64 == k).count();
        assert_eq!(
            answers,
            batches * k as usize,
            "size {k}: {told:?} {sizes:?}"
        );
    }

    // One access line per request. From reading a request to its answer: at most the wait
    // for a batch (0.05 s), the batch's own work (0.01 s), and a queue wait when all 4
    // threads are busy (they are not here: 4 batches at most); the slack is for a loaded
    // machine.
    let durations = logged_durations(&mut service, "/batch", 32);
    assert_eq!(durations.len(), 32);
    let slowest = durations.iter().copied().fold(0.0, f64::max);
    eprintln!("slowest request: {slowest:.3}s");
    assert!(slowest <= 0.05 + 0.01 + 0.3, "{durations:?}");
}

#[test]
fn a_lone_request_is_answered_after_about_the_timeout() {
    let _serial = serial();
    let mut service = Service::start_with(
        &example_lib(),
        r#"{"mode": "production", "threads": 2,
            "batching": {"max_size": 8, "timeout_s": 0.2}}"#,
        &[],
        Stdio::piped(),
    );
    // Three requests one after another, each alone in its batch.
    for _ in 0..3 {
        let reply = get(service.port, "/batch").expect("a reply");
        assert_eq!(reply.text(), r#"{"batch":1}"#);
    }
    assert_eq!(batch_sizes(service.port), [1, 1, 1]);
    for took in logged_durations(&mut service, "/batch", 3) {
        eprintln!("a lone request: {took:.3}s");
        // It waited the timeout for company, then the batch's 10 ms; the slack is for a
        // loaded machine.
        assert!((0.2..=0.2 + 0.01 + 0.3).contains(&took), "{took}");
    }
}

#[test]
fn deadlines_and_cancellation_stay_per_request_in_a_batch() {
    let _serial = serial();
    let service = Service::start(
        &example_lib(),
        r#"{"mode": "production", "threads": 2, "request_timeout_s": 1,
            "batching": {"max_size": 8, "timeout_s": 0.05}}"#,
    );
    let port = service.port;
    // Three /delay/5 in one batch, which the example runs one after another: each gets
    // its 504 at its own deadline, and is cancelled then, so the batch ends soon after.
    let replies = parallel_gets(port, "/delay/5", 3);
    for (at, reply) in &replies {
        assert_eq!(reply.status, 504, "{}", reply.text());
        assert!((1.0..1.6).contains(at), "504 after {at:.3}s");
    }
    pool_settles_at(port, 2);
    assert_eq!(get(port, "/batch").expect("a reply").status, 200);
}

#[test]
fn a_batch_stuck_past_its_deadlines_leaves_the_pool_at_its_size() {
    let _serial = serial();
    let service = Service::start(
        &fixture_lib(),
        r#"{"mode": "production", "threads": 2, "request_timeout_s": 1,
            "batching": {"max_size": 8, "timeout_s": 0.05}}"#,
    );
    let port = service.port;
    // Three uncancellable /sleep/1.2 in one batch (the fixture runs them one after
    // another, 3.6 s): each gets 504 at its deadline; the first two (the cap: 2 threads)
    // write the batch's thread off and start a replacement each.
    let replies = parallel_gets(port, "/sleep/1.2", 3);
    for (at, reply) in &replies {
        assert_eq!(reply.status, 504, "{}", reply.text());
        assert!((1.0..1.6).contains(at), "504 after {at:.3}s");
    }
    // Meanwhile the pool serves (the replacements).
    assert_eq!(get(port, "/").expect("a reply").status, 200);
    // When the batch returns, its thread ends, and so does the replacement started beyond
    // the one it needed: the pool is back to 2.
    pool_settles_at(port, 2);
    let replies = parallel_gets(port, "/", 4);
    assert!(replies.iter().all(|(_, r)| r.status == 200));
}

#[test]
fn a_c_app_gets_its_batches_through_msr_handle_batch() {
    let _serial = serial();
    let dir = TempDir::new("c-batch");
    let path = compile_c_app(&dir, "libhello.so", &[]);
    let service = Service::start(
        &path,
        r#"{"mode": "production", "threads": 2,
            "batching": {"max_size": 4, "timeout_s": 0.5}}"#,
    );
    let replies = parallel_gets(service.port, "/hello", 4);
    let sizes: Vec<usize> = replies
        .iter()
        .map(|(_, reply)| {
            assert_eq!(reply.status, 200);
            let text = reply.text();
            text.strip_prefix("batch of ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{text}"))
        })
        .collect();
    // Answers saying k come k at a time; 4 requests sent at once within the 0.5 s wait
    // make one batch.
    for k in 1..=4 {
        let answers = sizes.iter().filter(|s| **s == k).count();
        assert_eq!(answers % k, 0, "{sizes:?}");
    }
    assert!(sizes.iter().any(|s| *s > 1), "{sizes:?}");
}

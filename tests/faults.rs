//! Faults of the worker's own code: no input makes it panic, so the tests arm its fault
//! points (debug builds only, `MICROSERVICE_RUST_FAULTS`) to show what follows a panic:
//! a pool thread that panics answers 500, is logged and replaced; a function the app calls
//! fails instead of unwinding into the app's code.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::{
    compile_c_app, fixture_lib, gauge, get, logged, send, started_workers, wait_for, Service,
    TempDir,
};

#[test]
fn a_pool_thread_that_panics_answers_500_and_is_replaced() {
    let config = r#"{"mode": "production", "threads": 2}"#;
    let service = Service::start_with(
        &fixture_lib(),
        config,
        &[("MICROSERVICE_RUST_FAULTS", "pool")],
        Stdio::null(),
    );
    let port = service.port;
    let raw = b"GET / HTTP/1.1\r\nHost: t\r\nX-Microservice-Fault: pool\r\n\r\n";
    let reply = send(port, raw).expect("a reply");
    assert_eq!(reply.status, 500, "{}", reply.text());
    assert!(reply.header("x-request-id").is_some());
    wait_for("the panic's line", Duration::from_secs(5), || {
        logged(
            &service,
            "a pool thread panicked (fault point pool) while serving 1 request(s)",
        )
        .then_some(())
    });
    // The pool is back at its size: the worker has 2 threads named `pool`, and every one
    // serves.
    let worker = started_workers(&service.log_lines())[0];
    wait_for("2 pool threads", Duration::from_secs(5), || {
        (pool_threads(worker) == 2).then_some(())
    });
    for _ in 0..4 {
        assert_eq!(get(port, "/").expect("a reply").status, 200);
    }
    // Twice more: each panic costs a thread and each is replaced.
    for _ in 0..2 {
        assert_eq!(send(port, raw).expect("a reply").status, 500);
    }
    wait_for("2 pool threads again", Duration::from_secs(5), || {
        (pool_threads(worker) == 2).then_some(())
    });
    wait_for("the gauge of 2 threads", Duration::from_secs(5), || {
        (gauge(port, "microservice_pool_threads") == Some(2)).then_some(())
    });
    assert_eq!(
        started_workers(&service.log_lines()).len(),
        1,
        "the worker itself never restarted"
    );
}

/// The threads named `pool` of process `pid`.
fn pool_threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .filter(|task| {
                    std::fs::read_to_string(task.path().join("comm"))
                        .is_ok_and(|name| name.trim() == "pool")
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_host_function_that_panics_fails_the_call_and_the_app_goes_on() {
    let dir = TempDir::new("host-panic");
    let app = compile_c_app(&dir, "libhello.so", &[]);
    let service = Service::start_with(
        &app,
        r#"{"mode": "production", "threads": 2}"#,
        &[("MICROSERVICE_RUST_FAULTS", "host-log")],
        Stdio::null(),
    );
    // The C app logs while it starts and in every request: each call panics inside the
    // worker, which fails the call; the app started and answers.
    let reply = get(service.port, "/").expect("a reply");
    assert_eq!(reply.status, 200);
    assert!(reply.text().starts_with("hello from C"), "{}", reply.text());
    wait_for("the guard's line", Duration::from_secs(5), || {
        logged(
            &service,
            "the host function log panicked (fault point host-log): the call failed",
        )
        .then_some(())
    });
    assert!(
        !logged(&service, "hello from C"),
        "the app's line was not written: the call failed"
    );
    assert_eq!(started_workers(&service.log_lines()).len(), 1);
}

#[test]
fn fault_points_are_off_unless_armed() {
    let service = Service::start(&fixture_lib(), r#"{"mode": "production", "threads": 2}"#);
    let raw = b"GET / HTTP/1.1\r\nHost: t\r\nX-Microservice-Fault: pool\r\n\r\n";
    assert_eq!(send(service.port, raw).expect("a reply").status, 200);
    assert!(!logged(&service, "panicked"));
}

//! Supervision through the real binary, real signals and loopback load: the watchdog,
//! crash restart, dev reload, graceful drain, SIGHUP, SIGUSR1, and PID 1.
//! Timing bounds are stated in each test; the measured figures are printed (`--nocapture`).

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod support;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::*;

const SIGKILL: i32 = 9;
const SIGHUP: i32 = 1;
const SIGTERM: i32 = 15;
const SIGUSR1: i32 = 10;

fn kill(pid: i32, signal: i32) {
    extern "C" {
        fn kill(pid: i32, signal: i32) -> i32;
    }
    // SAFETY: plain kill(2).
    assert_eq!(unsafe { kill(pid, signal) }, 0, "kill({pid}, {signal})");
}

fn pid_answer(port: u16) -> Option<i32> {
    get(port, "/pid")
        .ok()
        .filter(|r| r.status == 200)?
        .text()
        .parse()
        .ok()
}

/// Connects every 20 ms until stopped; counts refused connections.
struct RefusalWatch {
    stop: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    tries: Arc<AtomicUsize>,
    handle: thread::JoinHandle<()>,
}

impl RefusalWatch {
    fn start(port: u16) -> RefusalWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicUsize::new(0));
        let tries = Arc::new(AtomicUsize::new(0));
        let (s, r, t) = (stop.clone(), refused.clone(), tries.clone());
        let handle = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                t.fetch_add(1, Ordering::SeqCst);
                if let Err(e) = TcpStream::connect(("127.0.0.1", port)) {
                    if e.kind() == ErrorKind::ConnectionRefused {
                        r.fetch_add(1, Ordering::SeqCst);
                    }
                }
                // The watch's pace (a connection each 20 ms), not a wait for a state.
                thread::sleep(Duration::from_millis(20));
            }
        });
        RefusalWatch {
            stop,
            refused,
            tries,
            handle,
        }
    }

    /// (refused, tried)
    fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("refusal watch");
        (
            self.refused.load(Ordering::SeqCst),
            self.tries.load(Ordering::SeqCst),
        )
    }
}

#[test]
fn the_watchdog_replaces_a_hung_worker_without_refusing_a_connection() {
    let _serial = serial();
    // Bound: interval_s + failures × timeout_s + 1 s = 1 + 2 × 0.5 + 1 = 3 s.
    let mut service = Service::start_with(
        &fixture_lib(),
        r#"{"mode": "production", "threads": 2, "request_timeout_s": 0,
            "watchdog": {"interval_s": 1, "timeout_s": 0.5, "failures": 2}}"#,
        &[],
        Stdio::piped(),
    );
    let port = service.port;
    let old = pid_answer(port).expect("the first worker's pid");
    let watch = RefusalWatch::start(port);
    // Both threads stuck, and one more request read and queued behind them.
    let hung: Vec<_> = (0..3)
        .map(|_| thread::spawn(move || get(port, "/sleep/1000")))
        .collect();
    let hung_at = Instant::now();
    let new = wait_for("a new worker to answer", Duration::from_secs(10), || {
        pid_answer(port).filter(|pid| *pid != old)
    });
    let recovery = hung_at.elapsed().as_secs_f64();
    eprintln!("watchdog: a new worker ({new}) answered {recovery:.2}s after the hang");
    assert!(recovery <= 3.0, "replaced after {recovery:.2}s");
    let mut ids = Vec::new();
    for request in hung {
        let reply = request
            .join()
            .expect("request thread")
            .expect("an answer, not a reset");
        assert_eq!(reply.status, 503, "{}", reply.text());
        // The worker's own answer carries the request's ID, and it is logged like any.
        let id = reply
            .header("x-request-id")
            .expect("x-request-id")
            .to_string();
        assert_eq!(id.len(), 32, "{id}");
        ids.push(id);
    }
    let lines = stdout_until(&mut service, |lines| {
        ids.iter()
            .all(|id| lines.iter().any(|l| l.ends_with(&format!(" \"{id}\""))))
    });
    for id in &ids {
        let line = lines
            .iter()
            .find(|l| l.ends_with(&format!(" \"{id}\"")))
            .unwrap_or_else(|| panic!("no access line for {id} in {lines:?}"));
        assert!(line.contains("\"GET /sleep/1000 HTTP/1.1\" 503 "), "{line}");
    }
    let (refused, tried) = watch.finish();
    assert_eq!(refused, 0, "{refused} of {tried} connections refused");
    assert!(logged(&service, "missed 2 probe(s) in a row"));
    assert!(logged(
        &service,
        &format!("took over from {old} (watchdog)")
    ));
}

#[test]
fn a_worker_killed_under_load_is_restarted_and_only_its_requests_fail() {
    let _serial = serial();
    let service = Service::start(
        &fixture_lib(),
        r#"{"mode": "production", "threads": 4, "workers": 2}"#,
    );
    let port = service.port;
    let workers = wait_for("two workers", Duration::from_secs(5), || {
        let pids = started_workers(&service.log_lines());
        (pids.len() == 2).then_some(pids)
    });
    let clients = 4;
    let load = Load::start(port, "/", clients);
    // The load is being served before the kill.
    load.wait_answers(100);
    let killed_at = Instant::now();
    kill(workers[0], SIGKILL);
    wait_for("a restarted worker", Duration::from_secs(10), || {
        let pids = started_workers(&service.log_lines());
        (pids.len() == 3).then_some(())
    });
    let replacement = started_workers(&service.log_lines())[2];
    wait_for(
        "the restarted worker to answer",
        Duration::from_secs(10),
        || logged(&service, &format!("worker {replacement} ready")).then_some(()),
    );
    let restart = killed_at.elapsed().as_secs_f64();
    // The load goes on being answered after the restart.
    let ready_at = load.now();
    load.wait_answers(50);
    let tally = load.finish();
    eprintln!(
        "kill -9: restarted worker ready {restart:.2}s later; {} answers, {} errors, {} retried",
        tally.answers.len(),
        tally.errors.len(),
        tally.retried
    );
    // At most the one request each client had in flight inside the killed worker.
    assert!(tally.errors.len() <= clients, "{:?}", tally.errors);
    assert_eq!(tally.count(200), tally.answers.len());
    assert!(logged(
        &service,
        &format!(
            "worker {} was killed by signal SIGKILL (9); restarting it in 100 ms",
            workers[0]
        )
    ));
    // The other worker was not touched.
    assert!(!logged(&service, &format!("worker {} stopped", workers[1])));
    assert!(tally.answers.iter().any(|a| a.at > ready_at));
}

#[test]
fn a_crash_in_the_app_is_logged_with_its_signal_and_the_worker_restarted() {
    let _serial = serial();
    let service = Service::start(&fixture_lib(), r#"{"mode": "production", "threads": 2}"#);
    let port = service.port;
    for (path, signal) in [("/abort", "SIGABRT (6)"), ("/segv", "SIGSEGV (11)")] {
        let before = pid_answer(port).expect("a worker answers");
        assert!(get(port, path).is_err(), "{path} brings the worker down");
        let after = wait_for("a restarted worker", Duration::from_secs(10), || {
            pid_answer(port).filter(|pid| *pid != before)
        });
        assert!(logged(
            &service,
            &format!("worker {before} was killed by signal {signal}; restarting it")
        ));
        assert_ne!(before, after);
    }
    // Two crashes in a row: the back-off doubled.
    assert!(logged(&service, "restarting it in 200 ms"));
}

/// Replaces `target` with `source` the way a build does: a new file renamed over it.
fn replace_file(source: &Path, target: &Path) {
    let temporary = target.with_extension("tmp");
    std::fs::copy(source, &temporary).expect("copy the library");
    std::fs::rename(&temporary, target).expect("rename over the library");
}

#[test]
fn dev_reload_under_load_answers_every_request_and_a_corrupt_library_changes_nothing() {
    let _serial = serial();
    let dir = TempDir::new("reload");
    let app = dir.0.join("libapp.so");
    std::fs::copy(example_lib(), &app).expect("copy");
    let service = Service::start(&app, r#"{"mode": "dev"}"#);
    let port = service.port;
    let load = Load::start(port, "/", 2);
    let fresh = Load::fresh(port, "/", 1);
    let mut took = Vec::new();
    let stopped = || {
        service
            .log_lines()
            .iter()
            .filter(|l| l.contains(" stopped ("))
            .count()
    };
    for round in 0..5 {
        let (library, answer) = match round % 2 {
            0 => (fixture_lib(), "fixture"),
            _ => (example_lib(), "OK"),
        };
        // Each reload starts once the one before is over (its old worker stopped), with the
        // load served by the code now loaded.
        wait_for("the reload before over", Duration::from_secs(10), || {
            (stopped() >= round).then_some(())
        });
        load.wait_answers(20);
        fresh.wait_answers(5);
        replace_file(&library, &app);
        let replaced_at = Instant::now();
        wait_for("the new code to answer", Duration::from_secs(5), || {
            get(port, "/").ok().filter(|r| r.text() == answer)
        });
        took.push(replaced_at.elapsed().as_secs_f64());
    }
    eprintln!("dev reload: new code answering after {took:.3?} s");
    // 150 ms of debounce and a worker's start (some 0.2 s in all on a loaded 2-core machine);
    // 1 s is the bound.
    assert!(took.iter().all(|t| *t < 1.0), "{took:.3?}");

    std::fs::write(dir.0.join("garbage"), "not a library").expect("write");
    std::fs::rename(dir.0.join("garbage"), &app).expect("rename");
    wait_for("the failed reload", Duration::from_secs(5), || {
        logged(&service, "could not start (exited with code 4)").then_some(())
    });
    assert!(logged(&service, "not a shared library that can be loaded"));
    let reply = get(port, "/").expect("the old worker still serves");
    assert_eq!(reply.text(), "fixture");

    let tally = load.finish();
    let fresh = fresh.finish();
    eprintln!(
        "dev reload under load: keep-alive: {} answers, {} errors, {} retried; a connection \
         per request: {} answers, {} errors",
        tally.answers.len(),
        tally.errors.len(),
        tally.retried,
        fresh.answers.len(),
        fresh.errors.len()
    );
    assert!(tally.errors.is_empty(), "{:?}", tally.errors);
    assert_eq!(tally.count(200), tally.answers.len());
    assert!(fresh.errors.is_empty(), "{:?}", fresh.errors);
    assert_eq!(fresh.count(200), fresh.answers.len());
}

#[test]
fn a_build_command_runs_on_a_source_change_and_its_library_is_loaded() {
    let _serial = serial();
    let dir = TempDir::new("build");
    let app = dir.0.join("libapp.so");
    std::fs::copy(example_lib(), &app).expect("copy");
    std::fs::create_dir_all(dir.0.join("src")).expect("mkdir");
    let build = format!(
        "cp {} {}.tmp && mv {}.tmp {}",
        fixture_lib().display(),
        app.display(),
        app.display(),
        app.display()
    );
    let config = serde_json::json!({
        "mode": "dev",
        "dev": {"watch": [dir.0.join("src")], "build_command": build},
    });
    let service = Service::start(&app, &config.to_string());
    assert_eq!(get(service.port, "/").expect("reply").text(), "OK");
    std::fs::write(dir.0.join("src/lib.rs"), "// changed\n").expect("write");
    wait_for(
        "the built library to answer",
        Duration::from_secs(10),
        || {
            get(service.port, "/")
                .ok()
                .filter(|r| r.text() == "fixture")
        },
    );
    assert!(logged(&service, "source changed: running `cp "));
    assert!(logged(&service, "succeeded"));
}

#[test]
fn sigterm_finishes_slow_requests_and_refuses_new_connections_after_the_drain() {
    let _serial = serial();
    let mut service = Service::start(
        &fixture_lib(),
        r#"{"mode": "production", "threads": 4, "drain_time_s": 1, "stop_timeout_s": 8}"#,
    );
    let port = service.port;
    let slow: Vec<_> = (0..3)
        .map(|_| thread::spawn(move || get(port, "/sleep/2")))
        .collect();
    // The slow requests inside the app when the signal comes (the gauge lags up to 0.5 s).
    wait_for(
        "3 slow requests inside the app",
        Duration::from_secs(5),
        || gauge(port, "microservice_pool_threads_busy").filter(|n| *n >= 3),
    );
    let signalled = Instant::now();
    service.signal(SIGTERM);
    // Draining: not ready, but still serving.
    wait_for("/readyz to answer 503", Duration::from_secs(5), || {
        get(port, "/readyz").ok().filter(|r| r.status == 503)
    });
    assert_eq!(get(port, "/").expect("reply").status, 200);
    let refused_after =
        wait_for(
            "refused connections",
            Duration::from_secs(5),
            || match TcpStream::connect(("127.0.0.1", port)) {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => Some(signalled.elapsed()),
                _ => None,
            },
        );
    for request in slow {
        let reply = request.join().expect("thread").expect("an answer");
        assert_eq!((reply.status, reply.text().as_str()), (200, "slept 2\n"));
    }
    let code = service.wait_exit(Duration::from_secs(10));
    let stopped_after = signalled.elapsed().as_secs_f64();
    eprintln!(
        "SIGTERM: refusing after {:.2}s, exit {code} after {stopped_after:.2}s",
        refused_after.as_secs_f64()
    );
    assert_eq!(code, 0);
    assert!(
        refused_after >= Duration::from_millis(950),
        "refused too early"
    );
    assert!(stopped_after < 8.0, "took {stopped_after:.2}s");
}

#[test]
fn sighup_replaces_every_worker_under_load_without_a_failed_request() {
    let _serial = serial();
    let dir = TempDir::new("hup");
    let service = Service::start_in(
        &dir,
        &fixture_lib(),
        r#"{"mode": "production", "threads": 2, "workers": 2}"#,
    );
    let config = dir.0.join("config.json");
    let port = service.port;
    let first = wait_for("two workers", Duration::from_secs(5), || {
        let pids = started_workers(&service.log_lines());
        (pids.len() == 2).then_some(pids)
    });
    let load = Load::start(port, "/", 4);
    // Clients that open a connection per request too: one accepted by a retiring worker
    // just before it stops accepting is served, not reset.
    let fresh = Load::fresh(port, "/", 2);
    // Both loads are being served before the signal.
    load.wait_answers(100);
    fresh.wait_answers(20);
    let signalled = Instant::now();
    service.signal(SIGHUP);
    wait_for("both workers replaced", Duration::from_secs(20), || {
        let took_over = service
            .log_lines()
            .iter()
            .filter(|l| l.contains("(config re-read)") && l.contains("took over from"))
            .count();
        (took_over == 2).then_some(())
    });
    let rolled = signalled.elapsed().as_secs_f64();
    // Both loads go on being answered, by the new workers.
    load.wait_answers(50);
    fresh.wait_answers(10);
    let tally = load.finish();
    let fresh = fresh.finish();
    eprintln!(
        "SIGHUP: both workers replaced in {rolled:.2}s; keep-alive: {} answers, {} errors, \
         {} retried; a connection per request: {} answers, {} errors",
        tally.answers.len(),
        tally.errors.len(),
        tally.retried,
        fresh.answers.len(),
        fresh.errors.len()
    );
    assert!(tally.errors.is_empty(), "{:?}", tally.errors);
    assert_eq!(tally.count(200), tally.answers.len());
    assert!(fresh.errors.is_empty(), "{:?}", fresh.errors);
    assert_eq!(fresh.count(200), fresh.answers.len());
    for _ in 0..6 {
        let pid = pid_answer(port).expect("an answer");
        assert!(!first.contains(&pid), "{pid} is an old worker");
    }

    // A bad config is refused and the running workers stay.
    std::fs::write(&config, r#"{"threads": "many"}"#).expect("write");
    service.signal(SIGHUP);
    wait_for("the refusal", Duration::from_secs(5), || {
        logged(
            &service,
            "SIGHUP: the config is refused, the running one stays",
        )
        .then_some(())
    });
    assert!(logged(&service, "key `threads`: expected a whole number"));
    assert_eq!(get(port, "/").expect("still serving").status, 200);

    // A new number of workers is applied after the rolling restart.
    std::fs::write(
        &config,
        r#"{"mode": "production", "threads": 2, "workers": 3}"#,
    )
    .expect("write");
    service.signal(SIGHUP);
    wait_for("a third worker", Duration::from_secs(20), || {
        logged(&service, "starting 1 more worker(s) (workers: 3)").then_some(())
    });
    let third = wait_for("its start", Duration::from_secs(5), || {
        started_workers(&service.log_lines()).last().copied()
    });
    wait_for("the third worker ready", Duration::from_secs(10), || {
        logged(&service, &format!("worker {third} ready")).then_some(())
    });
}

/// A connection the old worker accepted before a handover, whose request comes only after
/// it, is served by the old worker with `Connection: close`, not reset: a client that
/// connected a moment before cannot know.
#[test]
fn a_connection_accepted_before_a_handover_is_served_after_it() {
    let _serial = serial();
    let dir = TempDir::new("handover");
    let service = Service::start_in(
        &dir,
        &fixture_lib(),
        r#"{"mode": "production", "threads": 2}"#,
    );
    let port = service.port;
    let old = pid_answer(port).expect("the worker's pid");
    let mut early = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    early
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // Accepted by the only worker before the handover: none left in the listening
    // socket's queue.
    wait_for(
        "the early connection accepted",
        Duration::from_secs(5),
        || (accept_queue(port) == Some(0)).then_some(()),
    );
    assert!(
        holds_listener(old, port),
        "the worker holds the listening socket"
    );
    service.signal(SIGHUP);
    wait_for("the handover", Duration::from_secs(10), || {
        logged(&service, &format!("took over from {old}")).then_some(())
    });
    // The supervisor logs the handover just before it tells the old worker: wait until the
    // old worker retires (it closes its copy of the listening socket then).
    wait_for("the old worker retiring", Duration::from_secs(5), || {
        (!holds_listener(old, port)).then_some(())
    });
    use std::io::Write;
    early
        .write_all(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    let reply = read_reply(&mut early).expect("an answer, not a reset");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), old.to_string(), "served by the old worker");
    assert_eq!(reply.header("connection"), Some("close"));
    wait_for("the old worker gone", Duration::from_secs(10), || {
        logged(&service, &format!("worker {old} stopped")).then_some(())
    });
}

#[test]
fn sigusr1_logs_every_request_in_flight_with_its_path_and_age() {
    let service = Service::start(&fixture_lib(), r#"{"mode": "production", "threads": 2}"#);
    let port = service.port;
    let sent = Instant::now();
    let slow = thread::spawn(move || get(port, "/sleep/3"));
    // 3 s: the gauge lags up to 0.5 s, and the report must still find it inside.
    wait_for(
        "the slow request inside the app",
        Duration::from_secs(5),
        || gauge(port, "microservice_pool_threads_busy").filter(|n| *n >= 1),
    );
    service.signal(SIGUSR1);
    let line = wait_for("the report", Duration::from_secs(5), || {
        service
            .log_lines()
            .into_iter()
            .find(|l| l.contains("in flight: GET /sleep/3 (request "))
    });
    let since_sent = sent.elapsed().as_secs_f64();
    // Its age: some time, and no more than since the request was sent.
    let age: f64 = line
        .split(") for ")
        .nth(1)
        .and_then(|rest| rest.split('s').next())
        .and_then(|age| age.parse().ok())
        .unwrap_or_else(|| panic!("no age in {line}"));
    assert!(
        age > 0.0 && age <= since_sent,
        "{line} (sent {since_sent:.3}s before)"
    );
    assert!(logged(&service, "1 request(s) inside the app, 0 queued"));
    assert_eq!(slow.join().expect("thread").expect("reply").status, 200);
}

#[test]
fn as_pid_1_it_reaps_orphaned_grandchildren() {
    if !root_for("it starts the service as PID 1 of a new PID namespace") {
        return;
    }
    let unshare = std::process::Command::new("unshare")
        .arg("--version")
        .output();
    assert!(
        unshare.is_ok_and(|o| o.status.success()),
        "unshare (util-linux) is needed for a PID namespace"
    );
    let dir = TempDir::new("pid1");
    let config = dir.write("config.json", r#"{"mode": "dev"}"#);
    let lib = fixture_lib();
    let mut service = Service::spawn_program(
        "unshare",
        &[
            "--pid",
            "--fork",
            "--kill-child",
            binary(),
            "--config",
            config.to_str().expect("utf-8"),
            "--app",
            lib.to_str().expect("utf-8"),
        ],
    );
    service.wait_ready();
    assert!(logged(
        &service,
        "microservice-rust[1] supervisor: listening"
    ));
    assert_eq!(get(service.port, "/orphan").expect("reply").status, 200);
    wait_for("the orphan to be reaped", Duration::from_secs(5), || {
        logged(&service, "reaped process").then_some(())
    });
    // No zombie is left among the supervisor's children.
    let supervisor = children(service.pid())
        .first()
        .copied()
        .expect("the supervisor");
    let zombies: Vec<i32> = all_processes()
        .into_iter()
        .filter(|&(_, parent, state)| parent == supervisor && state == 'Z')
        .map(|(pid, _, _)| pid)
        .collect();
    assert!(zombies.is_empty(), "zombies: {zombies:?}");
    kill(supervisor, SIGTERM);
    assert_eq!(service.wait_exit(Duration::from_secs(10)), 0);
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// (pid, parent pid, state) of every process.
fn all_processes() -> Vec<(i32, i32, char)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let after = &stat[stat.rfind(')')? + 2..];
            let mut fields = after.split_whitespace();
            let state = fields.next()?.chars().next()?;
            let parent = fields.next()?.parse().ok()?;
            Some((pid, parent, state))
        })
        .collect()
}

/// `watchdog.request_threshold_s`: the mean of the last `request_average` requests over the
/// threshold fails `/healthz`, and the watchdog replaces the worker. Bound: the new worker
/// answers within 5 s of the slow requests (probes every 0.5 s, one miss).
#[test]
fn slow_requests_fail_healthz_and_the_watchdog_replaces_the_worker() {
    let _serial = serial();
    let service = Service::start(
        &fixture_lib(),
        r#"{"mode": "production", "threads": 4, "watchdog": {"interval_s": 0.5,
            "timeout_s": 0.5, "failures": 1, "request_threshold_s": 0.3,
            "request_average": 3}}"#,
    );
    let first = pid_answer(service.port).expect("a pid");
    // Fast requests keep the mean low: still healthy.
    for _ in 0..3 {
        assert_eq!(get(service.port, "/status/200").expect("reply").status, 200);
    }
    assert_eq!(get(service.port, "/healthz").expect("reply").status, 200);
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let port = service.port;
            thread::spawn(move || get(port, "/sleep/0.6"))
        })
        .collect();
    for request in slow {
        assert_eq!(request.join().expect("thread").expect("reply").status, 200);
    }
    let started = Instant::now();
    let healthz = get(service.port, "/healthz").expect("reply");
    // The watchdog may already have replaced the worker; if not, /healthz says why.
    if healthz.status == 503 {
        assert!(
            healthz.text().contains("the last 3 requests took 0.6")
                && healthz.text().contains("over the threshold of 0.300 s"),
            "{}",
            healthz.text()
        );
    }
    // No requests while waiting: fast ones would bring the mean back under the threshold.
    wait_for("a watchdog replacement", Duration::from_secs(5), || {
        logged(&service, &format!("to replace {first} (watchdog)")).then_some(())
    });
    let took = started.elapsed().as_secs_f64();
    let second = wait_for("the new worker answering", Duration::from_secs(5), || {
        pid_answer(service.port).filter(|pid| *pid != first)
    });
    println!("worker {first} replaced by {second} {took:.2} s after the slow requests");
    // Until the old worker is gone, a new connection may still reach it (and its health
    // fails, as it should).
    wait_for("the old worker gone", Duration::from_secs(10), || {
        logged(&service, &format!("worker {first} stopped")).then_some(())
    });
    assert_eq!(get(service.port, "/healthz").expect("reply").status, 200);
}

/// How many workers took over from a recycled one, by the supervisor's log.
fn recycled(service: &Service) -> usize {
    service
        .log_lines()
        .iter()
        .filter(|l| l.contains("took over from") && l.contains("(recycle)"))
        .count()
}

/// `microservice_worker_restarts_total{reason="recycle"}`.
fn recycle_count(port: u16) -> u64 {
    reason_count(port, "microservice_worker_restarts_total", "recycle")
}

#[test]
fn max_requests_recycles_workers_under_load_without_a_failed_request() {
    let _serial = serial();
    let config = r#"{"mode": "production", "threads": 2, "workers": 2,
                     "max_requests": 200, "max_requests_jitter": 50}"#;
    let service = Service::start(&fixture_lib(), config);
    let port = service.port;
    let load = Load::start(port, "/", 4);
    let started = Instant::now();
    // The issue's figure is 5 in 10 s; 30 s is the bound on a loaded machine.
    wait_for("5 recycles", Duration::from_secs(30), || {
        (recycled(&service) >= 5).then_some(())
    });
    let took = started.elapsed().as_secs_f64();
    // The load goes on being answered after the recycles.
    load.wait_answers(50);
    let tally = load.finish();
    eprintln!(
        "max_requests 200: 5 recycles in {took:.2}s; {} answers, {} errors, {} retried",
        tally.answers.len(),
        tally.errors.len(),
        tally.retried
    );
    assert!(tally.errors.is_empty(), "{:?}", tally.errors);
    assert_eq!(tally.count(200), tally.answers.len());
    assert!(recycle_count(port) >= 5);
    let reasons: Vec<String> = service
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("recycling it"))
        .collect();
    // Each worker answered at least max_requests, and at most max_requests + the jitter
    // plus what arrived in the supervisor's 50 ms between two looks.
    assert!(
        reasons.iter().all(|l| l.contains("requests (limit 2") && {
            let limit: u64 = l
                .split("(limit ")
                .nth(1)
                .and_then(|r| r.split(')').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            (200..=250).contains(&limit)
        }),
        "{reasons:?}"
    );
}

#[test]
fn max_worker_memory_mb_recycles_a_leaking_worker_without_a_failed_request() {
    let _serial = serial();
    let config = r#"{"mode": "production", "threads": 2, "max_worker_memory_mb": 64}"#;
    let service = Service::start(&example_lib(), config);
    let port = service.port;
    let old = first_worker(&service);
    let load = Load::start(port, "/", 4);
    // The load is being served before the leak.
    load.wait_answers(50);
    let reply = get(port, "/leak/100").expect("a reply");
    assert_eq!(reply.status, 200, "{}", reply.text());
    wait_for(
        "the leaking worker recycled",
        Duration::from_secs(10),
        || (recycled(&service) == 1).then_some(()),
    );
    // The load goes on being answered after the recycle.
    load.wait_answers(50);
    let tally = load.finish();
    assert!(tally.errors.is_empty(), "{:?}", tally.errors);
    assert_eq!(tally.count(200), tally.answers.len());
    let line = format!("worker {old} resident memory ");
    assert!(
        service
            .log_lines()
            .iter()
            .any(|l| l.contains(&line) && l.contains("> max_worker_memory_mb 64: recycling it")),
        "{:?}",
        service.log_lines()
    );
    assert_eq!(recycle_count(port), 1);
}

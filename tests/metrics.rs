//! `/metrics` through the real binary: the output parsed as Prometheus text, the same
//! totals whichever worker answers, counters that survive a worker's crash, live gauges.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use support::*;

/// One parsed exposition: family name → type, and every sample (name with labels → value).
struct Exposition {
    types: HashMap<String, String>,
    samples: BTreeMap<String, f64>,
}

impl Exposition {
    fn value(&self, sample: &str) -> f64 {
        *self
            .samples
            .get(sample)
            .unwrap_or_else(|| panic!("no sample {sample}"))
    }

    /// The sum of every sample of `name` whose labels contain all of `labels`.
    fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.samples
            .iter()
            .filter(|(key, _)| {
                key.split('{').next() == Some(name) && labels.iter().all(|l| key.contains(l))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses the text exposition format strictly: every sample belongs to a family declared
/// with HELP and TYPE before it, names and labels are well formed, values are numbers,
/// counters end in `_total`, and each histogram's buckets are cumulative up to `+Inf`,
/// which equals its `_count`.
fn parse(text: &str) -> Exposition {
    let mut types = HashMap::new();
    let mut helped = Vec::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(valid_name(name) && !help.is_empty(), "{line}");
            helped.push(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(helped.iter().any(|h| h == name), "TYPE before HELP: {line}");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "type {kind}"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter name {name}");
            }
            assert!(types.insert(name.to_string(), kind.to_string()).is_none());
        } else {
            let (key, value) = line.rsplit_once(' ').expect("sample: name value");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
            let name = key.split('{').next().expect("name");
            assert!(valid_name(name), "{line}");
            if let Some(labels) = key.strip_prefix(name) {
                if !labels.is_empty() {
                    let inner = labels
                        .strip_prefix('{')
                        .and_then(|l| l.strip_suffix('}'))
                        .unwrap_or_else(|| panic!("labels in {line}"));
                    for pair in inner.split(',') {
                        let (label, quoted) = pair.split_once('=').expect("label=value");
                        assert!(valid_name(label), "{line}");
                        assert!(
                            quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"')
                        );
                    }
                }
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
                })
                .unwrap_or(name);
            assert!(types.contains_key(family), "sample before its TYPE: {line}");
            assert!(
                samples.insert(key.to_string(), value).is_none(),
                "twice: {line}"
            );
        }
    }
    for (name, kind) in &types {
        // A histogram without a sample yet (an app's, before its first observation) is a
        // family with no lines: nothing to check.
        if kind != "histogram" || !samples.contains_key(&format!("{name}_count")) {
            continue;
        }
        let buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter_map(|(key, value)| {
                let le = key
                    .strip_prefix(&format!("{name}_bucket{{le=\""))?
                    .strip_suffix("\"}")?;
                let bound = match le {
                    "+Inf" => f64::INFINITY,
                    le => le.parse().expect("bucket bound"),
                };
                Some((bound, *value))
            })
            .collect();
        let mut sorted = buckets.clone();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            sorted.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name} not cumulative"
        );
        let last = sorted.last().expect("buckets");
        assert!(last.0.is_infinite(), "{name} has no +Inf bucket");
        assert_eq!(
            last.1,
            samples[&format!("{name}_count")],
            "{name}: +Inf != _count"
        );
    }
    Exposition { types, samples }
}

/// One request on a keep-alive connection.
fn ask(stream: &mut std::net::TcpStream, path: &str) -> Reply {
    use std::io::Write;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").expect("send");
    read_reply(stream).expect("a reply")
}

fn scrape(port: u16) -> Exposition {
    let reply = get(port, "/metrics").expect("/metrics answers");
    assert_eq!(reply.status, 200);
    assert!(reply
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")));
    parse(&reply.text())
}

#[test]
fn metrics_cover_every_worker_and_survive_a_crash() {
    let _serial = serial();
    let service = Service::start(
        &fixture_lib(),
        r#"{"mode": "production", "workers": 2, "threads": 2, "request_timeout_s": 1,
            "watchdog": {"enabled": false}}"#,
    );
    // Statuses nothing else in this test answers with (readiness and scrapes are GET 200).
    for _ in 0..30 {
        assert_eq!(get(service.port, "/status/201").expect("reply").status, 201);
    }
    for _ in 0..3 {
        assert_eq!(get(service.port, "/status/404").expect("reply").status, 404);
    }
    assert_eq!(
        post(service.port, "/echo", b"hi").expect("reply").status,
        200
    );
    assert_eq!(get(service.port, "/sleep/3").expect("reply").status, 504);

    // A keep-alive connection to each worker: connections opened one after another, each
    // asked its worker's PID, until both workers have one. (The kernel hands a connection
    // to whichever worker's accept() it wakes first; on a busy machine one worker can win
    // many times in a row.)
    let mut by_worker: HashMap<String, std::net::TcpStream> = HashMap::new();
    wait_for(
        "a connection to each worker",
        Duration::from_secs(20),
        || {
            let mut stream =
                std::net::TcpStream::connect(("127.0.0.1", service.port)).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let pid = ask(&mut stream, "/pid").text();
            by_worker.entry(pid).or_insert(stream);
            (by_worker.len() == 2).then_some(())
        },
    );
    for stream in by_worker.values_mut() {
        let reply = ask(stream, "/metrics");
        assert_eq!(reply.status, 200);
        assert!(reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")));
        let m = parse(&reply.text());
        assert_eq!(
            m.types["microservice_http_request_duration_seconds"],
            "histogram"
        );
        let total = "microservice_http_requests_total";
        assert_eq!(
            m.value(&format!("{total}{{method=\"GET\",code=\"201\"}}")),
            30.0
        );
        assert_eq!(
            m.value(&format!("{total}{{method=\"GET\",code=\"404\"}}")),
            3.0
        );
        assert_eq!(
            m.value(&format!("{total}{{method=\"POST\",code=\"200\"}}")),
            1.0
        );
        assert_eq!(
            m.value(&format!("{total}{{method=\"GET\",code=\"504\"}}")),
            1.0
        );
        assert_eq!(m.value("microservice_http_request_timeouts_total"), 1.0);
        let duration = m.value("microservice_http_request_duration_seconds_sum");
        assert!((1.0..3.0).contains(&duration), "duration sum {duration}");
        assert_eq!(m.value("microservice_workers"), 2.0);
        for worker in ["0", "1"] {
            let labels = format!("{{process=\"worker\",worker=\"{worker}\"}}");
            assert!(m.value(&format!("process_resident_memory_bytes{labels}")) > 1e6);
            assert!(m.value(&format!("process_open_fds{labels}")) >= 5.0);
            assert_eq!(
                m.value(&format!("microservice_pool_threads{{worker=\"{worker}\"}}")),
                2.0
            );
        }
        assert!(m.value("process_resident_memory_bytes{process=\"supervisor\"}") > 1e6);
    }
    drop(by_worker);

    // In flight: two requests inside the app, seen by the sampler (every 0.5 s). They must
    // end before the 1 s deadline, so a sampler late on a busy machine can miss them: then
    // the two are sent again, up to 5 times.
    let port = service.port;
    let seen = (0..5).any(|_| {
        let sleepers: Vec<_> = (0..2)
            .map(|_| std::thread::spawn(move || get(port, "/sleep/0.9")))
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_millis(900);
        let mut seen = false;
        while !seen && std::time::Instant::now() < deadline {
            let m = scrape(port);
            let busy = m.sum("microservice_pool_threads_busy", &[]);
            seen = m.sum("microservice_http_requests_in_flight", &[]) >= 2.0 && busy >= 2.0;
        }
        for sleeper in sleepers {
            // 0.9 s of sleep under a 1 s deadline: a loaded machine may make it a 504.
            let status = sleeper.join().expect("thread").expect("reply").status;
            assert!(status == 200 || status == 504, "{status}");
        }
        seen
    });
    assert!(
        seen,
        "2 requests in flight and 2 threads busy, in one of 5 tries"
    );

    // A crash: the worker's counts stay in the totals, the restart is counted by reason.
    let before = scrape(service.port).sum("microservice_http_requests_total", &[]);
    let victim: i32 = get(service.port, "/pid")
        .expect("pid")
        .text()
        .parse()
        .expect("pid");
    assert!(std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .expect("kill")
        .success());
    let after = wait_for("the crash restart counted", Duration::from_secs(5), || {
        let m = scrape(service.port);
        (m.value("microservice_worker_restarts_total{reason=\"crash\"}") == 1.0
            && m.value("microservice_workers") == 2.0)
            .then_some(m)
    });
    let total = after.sum("microservice_http_requests_total", &[]);
    assert!(
        total >= before,
        "requests_total went back: {before} → {total}"
    );
    assert_eq!(
        after.value("microservice_worker_restarts_total{reason=\"watchdog\"}"),
        0.0
    );
}

/// `POST path` on a fresh connection; its status.
fn post_status(port: u16, path: &str) -> u16 {
    post(port, path, b"").expect("a reply").status
}

#[test]
fn the_apps_counters_are_summed_over_workers_and_survive_a_rolling_restart() {
    let _serial = serial();
    // The config stays in `dir`: SIGHUP reads it again.
    let dir = TempDir::new("app-metrics");
    let service = Service::start_in(
        &dir,
        &example_lib(),
        r#"{"mode": "production", "workers": 2, "rums_limit": 1000}"#,
    );
    let port = service.port;
    for _ in 0..10 {
        assert_eq!(post_status(port, "/drink/ann/1"), 200);
    }
    for _ in 0..5 {
        assert_eq!(post_status(port, "/drink/bob/2"), 200);
    }
    let metrics = scrape(port);
    assert_eq!(metrics.types["rums_drunk_total"], "counter");
    assert_eq!(metrics.value("rums_drunk_total{user=\"ann\"}"), 10.0);
    assert_eq!(metrics.value("rums_drunk_total{user=\"bob\"}"), 10.0);
    // Two workers, either of which took each drink (a connection of its own), count into
    // the one total.
    let workers = started_workers(&service.log_lines());
    assert_eq!(workers.len(), 2, "{workers:?}");

    // SIGHUP replaces both workers; the counts stay, and go on from there.
    service.signal(1);
    wait_for("both workers replaced", Duration::from_secs(20), || {
        (reason_count(port, "microservice_worker_restarts_total", "signal") >= 2).then_some(())
    });
    assert_eq!(post_status(port, "/drink/ann/1"), 200);
    let metrics = scrape(port);
    assert_eq!(metrics.value("rums_drunk_total{user=\"ann\"}"), 11.0);
    assert_eq!(metrics.value("rums_drunk_total{user=\"bob\"}"), 10.0);
    assert_eq!(
        metrics.value("microservice_app_series_dropped_total{metric=\"rums_drunk_total\"}"),
        0.0
    );
}

#[test]
fn the_apps_gauges_are_each_workers_and_its_histograms_count_into_buckets() {
    let _serial = serial();
    let service = Service::start(&fixture_lib(), r#"{"mode": "production", "workers": 1}"#);
    let port = service.port;
    for path in ["/gauge/2.5", "/observe/0.05", "/observe/5"] {
        assert_eq!(get(port, path).expect("a reply").status, 200);
    }
    let metrics = scrape(port);
    assert_eq!(metrics.types["fixture_level"], "gauge");
    assert_eq!(metrics.value("fixture_level"), 2.5);
    assert_eq!(metrics.types["fixture_seconds"], "histogram");
    for (le, count) in [("0.1", 1.0), ("1", 1.0), ("10", 2.0), ("+Inf", 2.0)] {
        assert_eq!(
            metrics.value(&format!("fixture_seconds_bucket{{le=\"{le}\"}}")),
            count,
            "le {le}"
        );
    }
    assert_eq!(metrics.value("fixture_seconds_sum"), 5.05);
    assert_eq!(metrics.value("fixture_seconds_count"), 2.0);

    // The worker dies: its gauge goes with it; the histogram stays.
    let old = first_worker(&service);
    let _ = get(port, "/abort");
    wait_for("a new worker", Duration::from_secs(10), || {
        let pid: i32 = get(port, "/pid").ok()?.text().trim().parse().ok()?;
        (pid != old).then_some(())
    });
    let metrics = scrape(port);
    assert_eq!(metrics.value("fixture_level"), 0.0);
    assert_eq!(metrics.value("fixture_seconds_count"), 2.0);
}

#[test]
fn past_1000_label_sets_an_apps_updates_are_dropped_and_counted() {
    let _serial = serial();
    let service = Service::start(&fixture_lib(), r#"{"mode": "production", "workers": 1}"#);
    let port = service.port;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    for n in 0..1000 {
        assert_eq!(
            ask(&mut stream, &format!("/count/l{n}")).text(),
            "counted\n"
        );
    }
    // A set already counted still counts; a new one is dropped.
    assert_eq!(ask(&mut stream, "/count/l7").text(), "counted\n");
    assert_eq!(ask(&mut stream, "/count/l1000").text(), "dropped\n");
    assert_eq!(ask(&mut stream, "/count/l1001").text(), "dropped\n");
    let metrics = scrape(port);
    assert_eq!(metrics.value("fixture_hits_total{label=\"l7\"}"), 2.0);
    assert_eq!(metrics.sum("fixture_hits_total", &[]), 1001.0);
    assert!(!metrics
        .samples
        .contains_key("fixture_hits_total{label=\"l1000\"}"));
    assert_eq!(
        metrics.value("microservice_app_series_dropped_total{metric=\"fixture_hits_total\"}"),
        2.0
    );
}

#[test]
fn a_c_app_counts_through_the_worker_too() {
    let _serial = serial();
    let dir = TempDir::new("c-metrics");
    let path = compile_c_app(&dir, "libhello.so", &[]);
    let service = Service::start(&path, r#"{"mode": "production", "workers": 1}"#);
    for _ in 0..3 {
        assert_eq!(get(service.port, "/hello").expect("a reply").status, 200);
    }
    let metrics = scrape(service.port);
    assert_eq!(metrics.value("c_hello_total{method=\"GET\"}"), 3.0);
}

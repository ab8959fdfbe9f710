//! Loading app libraries: every bad library fails with a message naming the file and what
//! was wrong, and exit code 4; a C app built against the header serves.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

const APP_LOAD_EXIT: i32 = 4;

/// Runs the service on `app` expecting it to fail at start; returns its log.
fn fails_to_start(app: &Path) -> String {
    fails_to_start_with(app, r#"{"mode": "dev"}"#)
}

/// Asserts that the service refuses `app` with `cannot load the app APP: problem`; its log.
fn refuses(app: &Path, problem: &str) -> String {
    let log = fails_to_start(app);
    let expected = format!("cannot load the app {}: {problem}", app.display());
    assert!(log.contains(&expected), "expected {expected:?} in:\n{log}");
    log
}

/// Asserts that `app` is refused with `problem` before the service binds anything.
fn refuses_before_binding(app: &Path, problem: &str) {
    let log = refuses(app, problem);
    assert!(
        !log.contains("listening on"),
        "refused only after binding:\n{log}"
    );
}

/// Compiles the C `source` with `cc KIND -fPIC` into `dir/output`.
fn cc(dir: &TempDir, kind: &str, source: &str, output: &str) -> std::path::PathBuf {
    let source = dir.write("source.c", source);
    let path = dir.0.join(output);
    let status = std::process::Command::new("cc")
        .args([kind, "-fPIC", "-o"])
        .arg(&path)
        .arg(&source)
        .status()
        .expect("cc");
    assert!(status.success());
    path
}

/// `fails_to_start` with a config of our choosing.
fn fails_to_start_with(app: &Path, config: &str) -> String {
    let (code, log) = start_once(app, config);
    assert_eq!(code, Some(APP_LOAD_EXIT), "{log}");
    log
}

/// Runs the service on `app` with `config` until it exits; its exit code and log.
fn start_once(app: &Path, config: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("load");
    let config = dir.write("config.json", config);
    let output = run(
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--app",
            app.to_str().expect("utf-8"),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ],
        &[],
    );
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), log)
}

#[test]
fn a_missing_library_is_named() {
    refuses_before_binding(Path::new("/nonexistent/libapp.so"), "file not found");
}

#[test]
fn a_file_that_is_not_a_shared_library_is_named() {
    let dir = TempDir::new("notlib");
    let path = dir.write("libtext.so", "this is text, not ELF\n");
    refuses_before_binding(
        &path,
        "not a shared library that can be loaded: not an ELF file",
    );
}

#[test]
fn an_object_file_is_named_before_binding() {
    let dir = TempDir::new("object");
    let path = cc(
        &dir,
        "-c",
        "int msr_abi_version(void) { return 1; }\n",
        "app.o",
    );
    refuses_before_binding(
        &path,
        "not a shared library that can be loaded: an ELF file, but an executable or an \
         object file",
    );
}

#[test]
fn a_foreign_library_without_the_handshake_is_named() {
    let dir = TempDir::new("foreign");
    let path = cc(
        &dir,
        "-shared",
        "int not_an_app(void) { return 1; }\n",
        "libforeign.so",
    );
    refuses_before_binding(
        &path,
        "symbol `msr_abi_version` not found: not a microservice-rust app (a Rust app calls \
         `export_app!`; a C app defines it as include/microservice_rust.h says)",
    );
}

#[test]
fn a_library_built_for_another_abi_version_is_named() {
    let dir = TempDir::new("abi");
    let path = compile_c_app(&dir, "libforeignabi.so", &["-DFOREIGN_ABI"]);
    refuses(
        &path,
        &format!(
            "built for ABI version 4, but this worker speaks versions 1 to 3: rebuild the \
             app against microservice-rust {}",
            env!("CARGO_PKG_VERSION")
        ),
    );
}

#[test]
fn a_library_without_the_entry_symbol_is_named() {
    let dir = TempDir::new("entry");
    let path = compile_c_app(&dir, "libnoentry.so", &["-DNO_ENTRY"]);
    refuses_before_binding(
        &path,
        "symbol `msr_app_entry` not found: the library answers the ABI handshake but \
         exports no app",
    );
}

#[test]
fn an_app_that_refuses_to_start_is_named_with_its_reason() {
    let dir = TempDir::new("refuse");
    let c_app = compile_c_app(&dir, "librefuse.so", &["-DREFUSE"]);
    refuses(
        &c_app,
        "the app refused to start: the C app refuses to start",
    );
}

#[test]
fn a_rust_app_whose_constructor_fails_or_panics_is_named() {
    for (key, reason) in [
        ("fixture_refuse", "fixture_refuse is set"),
        (
            "fixture_panic",
            "the app panicked while starting: fixture_panic is set",
        ),
    ] {
        let lib = fixture_lib();
        let log = fails_to_start_with(&lib, &format!(r#"{{"mode": "dev", "{key}": true}}"#));
        let expected = format!(
            "cannot load the app {}: the app refused to start: {reason}",
            lib.display()
        );
        assert!(log.contains(&expected), "{log}");
    }
}

#[test]
fn an_app_that_crashes_while_loading_stops_the_service_with_128_plus_the_signal() {
    let (code, log) = start_once(&fixture_lib(), r#"{"mode": "dev", "fixture_segv": true}"#);
    assert_eq!(code, Some(128 + 11), "{log}");
    assert!(
        log.contains("was killed by signal SIGSEGV (11): the worker could not start; stopping"),
        "{log}"
    );
    assert_eq!(
        log.matches("started worker").count(),
        1,
        "no restart loop: {log}"
    );
}

#[test]
fn a_c_app_built_against_the_header_serves() {
    let dir = TempDir::new("capp");
    let path = compile_c_app(&dir, "libhello.so", &[]);
    let service = Service::start(&path, r#"{"mode": "production", "threads": 2}"#);
    let raw = b"GET /hello HTTP/1.1\r\nHost: t\r\nX-Request-ID: c-42\r\nConnection: close\r\n\r\n";
    let reply = send(service.port, raw).expect("a reply");
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.text(),
        "hello from C, GET /hello, request c-42, cancelled 0, HTTP/1.1, a deadline"
    );
    assert_eq!(reply.header("x-request-id"), Some("c-42"));
    assert_eq!(reply.header("content-type"), Some("text/plain"));
    // No health hook in the C app: /healthz answers from the pool alone.
    assert_eq!(get(service.port, "/healthz").expect("a reply").status, 200);
}

#[test]
fn an_app_built_for_abi_version_1_still_serves() {
    let dir = TempDir::new("abi1");
    let path = compile_c_app(&dir, "libhello1.so", &["-DABI_V1"]);
    let service = Service::start(&path, r#"{"mode": "production", "threads": 2}"#);
    let reply = get(service.port, "/hello").expect("a reply");
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "hello from C, GET /hello")
    );
    assert!(reply
        .header("x-request-id")
        .is_some_and(|id| id.len() == 32));
}

#[test]
fn an_app_built_for_abi_version_2_still_serves() {
    let dir = TempDir::new("abi2");
    let path = compile_c_app(&dir, "libhello2.so", &["-DABI_V2"]);
    let service = Service::start(&path, r#"{"mode": "dev"}"#);
    let raw = b"GET /hello HTTP/1.0\r\nX-Request-ID: c-2\r\n\r\n";
    let reply = send(service.port, raw).expect("a reply");
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "hello from C, GET /hello, request c-2, cancelled 0")
    );
}

#[test]
fn the_single_library_in_opt_name_lib_is_found_and_several_are_refused() {
    let name = format!("msr-test-{}", std::process::id());
    let lib_dir = Path::new("/opt").join(&name).join("lib");
    if !root_for("it writes /opt/$MICROSERVICE_NAME/lib") {
        return;
    }
    std::fs::create_dir_all(&lib_dir).expect("creating a directory in /opt");
    let cleanup = Cleanup(Path::new("/opt").join(&name));
    std::fs::copy(example_lib(), lib_dir.join("librum.so")).expect("copy");
    let mut service = Service::spawn(&[], &[("MICROSERVICE_NAME", &name)]);
    service.wait_ready();
    assert_eq!(get(service.port, "/").expect("a reply").text(), "OK");
    service.signal(15);
    assert_eq!(service.wait_exit(Duration::from_secs(10)), 0);

    std::fs::copy(fixture_lib(), lib_dir.join("libfixture.so")).expect("copy");
    let output = run(&["--port", "0"], &[("MICROSERVICE_NAME", &name)]);
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(APP_LOAD_EXIT), "{log}");
    assert!(
        log.contains(&format!(
            "cannot load the app {}: holds several libraries (libfixture.so, librum.so); set \
             `app` or pass --app to choose one",
            lib_dir.display()
        )),
        "{log}"
    );
    drop(cleanup);
}

struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn an_app_metric_with_a_bad_name_stops_the_worker_naming_it() {
    let lib = fixture_lib();
    for (name, reason) in [
        (
            "rums-drunk",
            "a metric name is 1 to 100 of [a-zA-Z0-9_:], not starting with a digit",
        ),
        (
            "microservice_mine_total",
            "names starting with `microservice_` or `process_` are the server's",
        ),
        // Declared by the fixture itself as a counter with a label.
        (
            "fixture_hits_total",
            "is declared already with another kind, labels or buckets",
        ),
    ] {
        let log = fails_to_start_with(
            &lib,
            &format!(r#"{{"mode": "dev", "fixture_metric": "{name}"}}"#),
        );
        let expected = format!(
            "cannot load the app {}: the app refused to start: metric `{name}`",
            lib.display()
        );
        assert!(log.contains(&expected) && log.contains(reason), "{log}");
    }
}

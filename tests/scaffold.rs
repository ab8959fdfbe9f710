//! `microservice-rust new` and `microservice-rust sdk`, as an app author outside this
//! repository uses them: write an app into a temporary directory, build it there with its
//! own tools (cargo offline, or make and cc), and serve it in dev and in production.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

/// Runs `program args` in `dir`; panics with its output unless it succeeds.
fn build(dir: &Path, program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        // The app's own target directory, as on the author's machine.
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed in {}:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `microservice-rust new` with `args` in `parent`; its exit code and its output.
fn new_app(parent: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["new"];
    all.extend_from_slice(args);
    let output = run_in(parent, &all, &[]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), text)
}

/// Serves `library` from the app directory `dir` with `--env env` (its config is found in
/// ./config/<env>/), checks the start line's mode and answers of `/` and `/json`.
fn serves(dir: &Path, library: &str, env: &str, threads: usize, greeting: &str) {
    serves_with(dir, library, env, threads, greeting, &[]);
}

/// `serves` with environment variables.
fn serves_with(
    dir: &Path,
    library: &str,
    env: &str,
    threads: usize,
    greeting: &str,
    variables: &[(&str, &str)],
) {
    let service = Service::spawn_in(dir, &["--app", library, "--env", env], variables);
    service.wait_ready();
    let mode = if env == "production" {
        "production"
    } else {
        "dev"
    };
    let start = format!(
        "({mode} mode, set by `mode` in {}",
        dir.join("config").join(env).join("config.json").display()
    );
    let lines = service.log_lines();
    assert!(
        lines.iter().any(|l| l.contains(&start)),
        "{start} in {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("of {threads} thread(s)"))),
        "{threads} threads in {lines:?}"
    );
    let reply = get(service.port, "/").expect("a reply");
    assert_eq!((reply.status, reply.text().as_str()), (200, greeting));
    let reply = get(service.port, "/json").expect("a reply");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(
        reply.text().starts_with("{\"requests\": "),
        "{}",
        reply.text()
    );
}

#[test]
fn a_new_rust_app_builds_offline_and_serves_in_dev_and_production() {
    let parent = TempDir::new("new-rust");
    let (code, out) = new_app(&parent.0, &["hello-app"]);
    assert_eq!(code, Some(0), "{out}");
    let dir = parent.0.join("hello-app");
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "config/dev/config.json",
        "config/production/config.json",
        "Dockerfile",
        "README.md",
        "microservice-rust/Cargo.toml",
        "microservice-rust/src/lib.rs",
        "microservice-rust/include/microservice_rust.h",
    ] {
        assert!(dir.join(file).is_file(), "{file} not written:\n{out}");
    }
    build(&dir, "cargo", &["build", "--offline", "--quiet"]);
    let library = "target/debug/libhello_app.so";
    serves(&dir, library, "dev", 1, "Hello, world!\n");
    serves(&dir, library, "production", 8, "Hello, world!\n");

    // The slow route, and a decoded query parameter.
    let service = Service::spawn_in(&dir, &["--app", library, "--env", "production"], &[]);
    service.wait_ready();
    let reply = get(service.port, "/slow?seconds=0.1").expect("a reply");
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "slept 0.1 s\n")
    );
    let reply = get(service.port, "/?name=a%20b+c").expect("a reply");
    assert_eq!(reply.text(), "Hello, a b c!\n");
    drop(service);

    // Dev mode reloads the app when `cargo build` replaces the library, as its README says.
    let service = Service::spawn_in(&dir, &["--app", library], &[]);
    service.wait_ready();
    let source = dir.join("src/lib.rs");
    let text = std::fs::read_to_string(&source).expect("src/lib.rs");
    let edited = text.replace("{name}!", "{name}?");
    assert_ne!(edited, text, "the greeting's format in src/lib.rs");
    std::fs::write(&source, edited).expect("editing src/lib.rs");
    build(&dir, "cargo", &["build", "--offline", "--quiet"]);
    wait_for("the rebuilt app's answer", Duration::from_secs(20), || {
        let reply = get(service.port, "/").ok()?;
        (reply.text() == "Hello, world?\n").then_some(())
    });
}

#[test]
fn a_new_c_app_builds_with_make_and_serves_in_dev_and_production() {
    let parent = TempDir::new("new-c");
    let (code, out) = new_app(&parent.0, &["--lang", "c", "--name", "hello-c", "app"]);
    assert_eq!(code, Some(0), "{out}");
    let dir = parent.0.join("app");
    build(&dir, "make", &["--quiet"]);
    let library = "build/libhello_c.so";
    assert!(dir.join(library).is_file());
    serves(&dir, library, "dev", 1, "Hello, world!\n");
    serves(&dir, library, "production", 8, "Hello, world!\n");
}

#[test]
fn a_new_python_app_serves_plain_and_with_flask_in_dev_and_production() {
    python_host();
    let parent = TempDir::new("new-python");
    let (code, out) = new_app(&parent.0, &["--lang", "python", "hello-py"]);
    assert_eq!(code, Some(0), "{out}");
    let dir = parent.0.join("hello-py");
    for file in [
        "src/main.py",
        "requirements.txt",
        "config/dev/config.json",
        "config/production/config.json",
        "Dockerfile",
        "README.md",
    ] {
        assert!(dir.join(file).is_file(), "{file} not written:\n{out}");
    }
    serves(&dir, "src/main.py", "dev", 1, "Hello, world!\n");
    serves(&dir, "src/main.py", "production", 8, "Hello, world!\n");
    // The slow route ends at the production config's deadline (10 s) instead of 12 s.
    let service = Service::spawn_in(&dir, &["--app", "src/main.py", "--env", "production"], &[]);
    service.wait_ready();
    let reply = get(service.port, "/slow?seconds=0.1").expect("a reply");
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "slept 0.1 s\n")
    );
    assert_eq!(get(service.port, "/healthz").expect("a reply").status, 200);
    drop(service);

    // The Flask variant, with Flask from a virtualenv.
    let (code, out) = new_app(&parent.0, &["--lang", "python", "--flask", "hello-flask"]);
    assert_eq!(code, Some(0), "{out}");
    let dir = parent.0.join("hello-flask");
    let requirements = std::fs::read_to_string(dir.join("requirements.txt")).expect("file");
    assert!(requirements.contains("flask"), "{requirements}");
    let venv = python_venv().display().to_string();
    let variables = [("VIRTUAL_ENV", venv.as_str())];
    serves_with(&dir, "src/main.py", "dev", 1, "Hello, world!\n", &variables);
    serves_with(
        &dir,
        "src/main.py",
        "production",
        8,
        "Hello, world!\n",
        &variables,
    );
    // --flask needs --lang python.
    let (code, out) = new_app(&parent.0, &["--flask", "nope"]);
    assert_eq!(code, Some(64), "{out}");
}

#[test]
fn the_readme_app_example_compiles_against_the_written_sdk() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let example = readme
        .split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a ```rust block in README.md");
    assert!(example.contains("export_app!"), "{example}");
    let parent = TempDir::new("readme");
    let (code, out) = new_app(&parent.0, &["hello"]);
    assert_eq!(code, Some(0), "{out}");
    let dir = parent.0.join("hello");
    std::fs::write(dir.join("src/lib.rs"), example).expect("writing src/lib.rs");
    build(&dir, "cargo", &["build", "--offline", "--quiet"]);
    let service = Service::spawn_in(&dir, &["--app", "target/debug/libhello.so"], &[]);
    service.wait_ready();
    assert_eq!(get(service.port, "/").expect("a reply").status, 200);
}

#[test]
fn new_refuses_a_directory_that_is_not_empty_and_a_name_that_is_not_a_crate() {
    let parent = TempDir::new("new-refuse");
    parent.write("taken/keep.txt", "mine");
    let (code, out) = new_app(&parent.0, &["taken"]);
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("taken exists and is not empty"), "{out}");
    assert_eq!(
        std::fs::read_to_string(parent.0.join("taken/keep.txt")).expect("kept"),
        "mine"
    );
    let (code, out) = new_app(&parent.0, &["Hello World"]);
    assert_eq!(code, Some(64), "{out}");
    assert!(
        out.contains("the app's name \"Hello World\" cannot name a crate"),
        "{out}"
    );
}

#[test]
fn sdk_rewrites_its_own_directory_and_refuses_another_crate() {
    let parent = TempDir::new("sdk");
    let dir = parent.0.join("microservice-rust");
    let dir_arg = dir.to_str().expect("utf-8");
    for _ in 0..2 {
        let output = run(&["sdk", dir_arg], &[]);
        assert_eq!(output.status.code(), Some(0), "{output:?}");
    }
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("Cargo.toml");
    let version = format!("version = \"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(manifest.contains(&version), "{manifest}");
    let header = std::fs::read_to_string(dir.join("include/microservice_rust.h")).expect("h");
    assert_eq!(
        header,
        std::fs::read_to_string(root().join("include/microservice_rust.h")).expect("h")
    );

    let other = parent.write("other/Cargo.toml", "[package]\nname = \"mine\"\n");
    let other_dir = other.parent().expect("dir").to_str().expect("utf-8");
    let output = run(&["sdk", other_dir], &[]);
    assert_eq!(output.status.code(), Some(64), "{output:?}");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("belongs to another crate"), "{log}");
}

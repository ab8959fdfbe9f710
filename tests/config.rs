//! `check-config` and the config lookup, through the real binary: which file wins, what the
//! app receives, and the exact message and exit code 78 of each bad config.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod support;

use std::path::Path;

use serde_json::Value;
use support::*;

const CONFIG_EXIT: i32 = 78;

fn check(args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut all = vec!["check-config"];
    all.extend_from_slice(args);
    let output = run(&all, env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    serde_json::from_slice(&output.stdout).expect("check-config prints JSON")
}

/// Runs `check-config --config FILE` on `text`; returns the error line.
fn config_error(text: &str) -> (String, String) {
    let dir = TempDir::new("bad");
    let file = dir.write("config.json", text);
    let output = run(
        &["check-config", "--config", file.to_str().expect("utf-8")],
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(CONFIG_EXIT), "{stderr}");
    let line = stderr.lines().last().unwrap_or("").to_string();
    let message = line.split(": ").skip(1).collect::<Vec<_>>().join(": ");
    (message, file.display().to_string())
}

#[test]
fn each_bad_config_names_file_key_and_expectation_with_exit_78() {
    let cases = [
        (r#"{"threads": "four"}"#, "key `threads`: expected a whole number from 1 to 1024, found the string \"four\""),
        (r#"{"threads": 0}"#, "key `threads`: expected a whole number from 1 to 1024, found the number 0"),
        (r#"{"mode": "prod"}"#, "key `mode`: expected \"dev\" or \"production\", found the string \"prod\""),
        (r#"{"port": 70000}"#, "key `port`: expected a whole number from 0 to 65535, found the number 70000"),
        (r#"{"request_timeout_s": -1}"#, "key `request_timeout_s`: expected a number of seconds from 0 to 86400, found the number -1"),
        (r#"{"keep_alive_timeout_s": 0}"#, "key `keep_alive_timeout_s`: expected a number of seconds above 0 and at most 86400, found the number 0"),
        (r#"{"watchdog": {"interval": 5}}"#, "key `watchdog.interval`: unknown; expected one of enabled, interval_s, timeout_s, failures, request_threshold_s, request_average"),
        (r#"{"watchdog": "yes"}"#, "key `watchdog`: expected true, false or an object, found the string \"yes\""),
        (r#"{"dev": {"watch": ["src", 3]}}"#, "key `dev.watch[1]`: expected a non-empty string, found the number 3"),
        (r#"{"apache_config": {"wsgi_worker_threads_count": 2.5}}"#, "key `apache_config.wsgi_worker_threads_count`: expected a whole number from 1 to 1024, found the number 2.5"),
        (r#"{"use_apache": true, "mode": "dev"}"#, "key `use_apache`: true means production, but `mode` is \"dev\"; keep one of them"),
        (r#"{"host": "localhost"}"#, "key `host`: expected an IP address such as \"0.0.0.0\", found the string \"localhost\""),
        (r#"{"max_body_memory_bytes": 1000}"#, "key `max_body_memory_bytes`: 1000 is below `max_body_bytes` 10485760, so a body of the largest size allowed could never be read; raise it or lower `max_body_bytes`"),
        ("[1, 2]", "expected a JSON object at the top level, found an array"),
        ("{\"threads\": 4,}", "not valid JSON: trailing comma at line 1 column 15"),
    ];
    for (text, expected) in cases {
        let (message, file) = config_error(text);
        assert_eq!(
            message,
            format!("config error: {file}: {expected}"),
            "for {text}"
        );
    }
}

#[test]
fn a_missing_config_file_and_a_bad_env_name_are_config_errors() {
    let output = run(
        &["check-config", "--config", "/nonexistent/config.json"],
        &[],
    );
    assert_eq!(output.status.code(), Some(CONFIG_EXIT));
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("config error: /nonexistent/config.json: file not found"));

    let output = run(&["check-config", "--env", "../etc"], &[]);
    assert_eq!(output.status.code(), Some(CONFIG_EXIT));
    assert!(String::from_utf8_lossy(&output.stderr).contains(
        "config error: --env / MICROSERVICE_ENV: expected a name such as `production` or \
         `production/eu`, found \"../etc\""
    ));
}

#[test]
fn run_refuses_a_bad_config_before_binding_anything() {
    let dir = TempDir::new("runbad");
    let file = dir.write("config.json", r#"{"workers": 0}"#);
    let output = run(
        &["--config", file.to_str().expect("utf-8"), "--app", "/x.so"],
        &[],
    );
    assert_eq!(output.status.code(), Some(CONFIG_EXIT));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("key `workers`: expected a whole number from 1 to 64"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");
}

#[test]
fn without_any_file_the_built_in_defaults_apply() {
    let report = check(&[], &[]);
    assert_eq!(report["source"], "built-in defaults");
    assert_eq!(report["env"], "dev");
    let config = &report["config"];
    assert_eq!(config["mode"], "dev");
    assert_eq!(config["threads"], 17);
    assert_eq!(config["request_timeout_s"], 0.0);
    assert_eq!(config["watchdog"]["enabled"], false);
    assert_eq!(config["max_body_bytes"], 10485760);
}

/// `io_threads` and `max_body_memory_bytes` default from what this process may use, and
/// `check-config` says how: one I/O thread for every two CPUs of its affinity (here
/// narrowed with `taskset`), a quarter of its memory over the workers for bodies.
#[test]
fn io_threads_and_body_memory_default_from_what_the_process_may_use() {
    let dir = TempDir::new("machine");
    let file = dir.write("config.json", r#"{"workers": 2}"#);
    let file = file.to_str().expect("utf-8");
    let pinned = std::process::Command::new("taskset")
        .args(["-c", "0", binary(), "check-config", "--config", file])
        .output()
        .expect("taskset runs");
    assert!(
        pinned.status.success(),
        "{}",
        String::from_utf8_lossy(&pinned.stderr)
    );
    let pinned: Value = serde_json::from_slice(&pinned.stdout).expect("JSON");
    assert_eq!(pinned["config"]["io_threads"], 1);
    let origin = pinned["io_threads_from"].as_str().expect("io_threads_from");
    assert!(origin.contains("rounded up: 1 for 1 CPU(s)"), "{origin}");

    let report = check(&["--config", file], &[]);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(report["config"]["io_threads"], cpus.div_ceil(2).min(64));
    let origin = report["io_threads_from"].as_str().expect("io_threads_from");
    assert!(origin.contains(&format!("for {cpus} CPU(s)")), "{origin}");

    let origin = report["max_body_memory_from"]
        .as_str()
        .expect("max_body_memory_from");
    let usable: u64 = origin
        .split("may use, ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the memory counted is given in bytes: {origin}"));
    let machine: u64 = std::fs::read_to_string("/proc/meminfo")
        .expect("meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        .expect("MemTotal")
        * 1024;
    assert!(
        usable > 0 && usable <= machine,
        "{usable} of {machine}: {origin}"
    );
    assert_eq!(report["config"]["max_body_memory_bytes"], usable / 4 / 2);

    // Set, the keys are taken as they are.
    let file = dir.write(
        "set.json",
        r#"{"io_threads": 3, "max_body_memory_bytes": 12345678}"#,
    );
    let report = check(&["--config", file.to_str().expect("utf-8")], &[]);
    assert_eq!(report["config"]["io_threads"], 3);
    assert_eq!(report["io_threads_from"], "set by `io_threads`");
    assert_eq!(report["config"]["max_body_memory_bytes"], 12345678);
    assert_eq!(
        report["max_body_memory_from"],
        "set by `max_body_memory_bytes`"
    );
}

#[test]
fn the_first_config_path_directory_with_a_file_wins_and_app_keys_pass_through() {
    let dir = TempDir::new("path");
    std::fs::create_dir_all(dir.0.join("empty")).expect("mkdir");
    dir.write("first/config.json", r#"{"use_apache": true, "apache_config": {"wsgi_worker_threads_count": 6}, "rums_limit": 9}"#);
    dir.write("second/config.json", r#"{"threads": 2}"#);
    let path = format!(
        "{}:{}:{}",
        dir.0.join("empty").display(),
        dir.0.join("first").display(),
        dir.0.join("second").display()
    );
    let report = check(&[], &[("CONFIG_PATH", &path)]);
    assert_eq!(
        report["source"],
        dir.0.join("first/config.json").display().to_string()
    );
    let config = &report["config"];
    assert_eq!(config["mode"], "production");
    assert_eq!(config["threads"], 6);
    assert_eq!(config["rums_limit"], 9);
    assert_eq!(config["request_timeout_s"], 60.0);
    assert_eq!(config["watchdog"]["enabled"], true);
    assert!(
        config.get("use_apache").is_none(),
        "the Flask keys are folded into ours"
    );
}

#[test]
fn opt_name_config_env_is_searched_deepest_first_with_app_id() {
    let name = format!("msr-cfg-{}", std::process::id());
    let base = Path::new("/opt").join(&name);
    if !root_for("it writes /opt/$MICROSERVICE_NAME/config") {
        return;
    }
    std::fs::create_dir_all(&base).expect("creating a directory in /opt");
    let _cleanup = RemoveOnDrop(base.clone());
    let write = |sub: &str, threads: u32| {
        let dir = base.join(sub);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join("config.json"),
            format!("{{\"threads\": {threads}}}"),
        )
        .expect("write");
    };
    write("config", 1);
    write("config/production", 2);
    write("config/shop", 3);
    let source = |env: &[(&str, &str)]| -> (String, u64) {
        let mut all = vec![("MICROSERVICE_NAME", name.as_str())];
        all.extend_from_slice(env);
        let report = check(&[], &all);
        (
            report["source"].as_str().expect("source").to_string(),
            report["config"]["threads"].as_u64().expect("threads"),
        )
    };
    // The environment's parent beats the app id at the same depth.
    let (file, threads) = source(&[
        ("MICROSERVICE_ENV", "production/eu"),
        ("MICROSERVICE_APP_ID", "shop"),
    ]);
    assert_eq!(
        (file.as_str(), threads),
        (
            base.join("config/production/config.json").to_str().unwrap(),
            2
        )
    );
    // A deeper app-id combination beats both.
    write("config/shop/production", 4);
    let (_, threads) = source(&[
        ("MICROSERVICE_ENV", "production/eu"),
        ("MICROSERVICE_APP_ID", "shop"),
    ]);
    assert_eq!(threads, 4);
    // Another environment falls back to config/ itself; --env beats MICROSERVICE_ENV.
    let report = check(
        &["--env", "staging"],
        &[
            ("MICROSERVICE_NAME", &name),
            ("MICROSERVICE_ENV", "production"),
        ],
    );
    assert_eq!(report["config"]["threads"], 1);
    assert_eq!(report["env"], "staging");
    // CONFIG_DIR renames the folder.
    write("settings", 5);
    let (_, threads) = source(&[("CONFIG_DIR", "settings")]);
    assert_eq!(threads, 5);
}

#[test]
fn the_example_configs_are_valid_and_production_has_4_threads() {
    let example = root().join("example-rum-counter/config/production/config.json");
    let report = check(&["--config", example.to_str().expect("utf-8")], &[]);
    assert_eq!(report["config"]["mode"], "production");
    assert_eq!(report["config"]["threads"], 4);
    assert_eq!(report["config"]["rums_limit"], 2);
    let dev = root().join("example-rum-counter/config/dev/config.json");
    assert_eq!(
        check(&["--config", dev.to_str().expect("utf-8")], &[])["config"]["mode"],
        "dev"
    );
}

/// From an app's own directory, `--env ENV` finds `./config/ENV/config.json` (after
/// `CONFIG_PATH` and before the image's defaults); relative paths in it are taken from its
/// directory; without a `mode` in it, the environment's name chooses the mode.
#[test]
fn an_app_directory_has_its_configs_found_and_the_environment_chooses_the_mode() {
    let dir = TempDir::new("appdir");
    dir.write(
        "config/production/config.json",
        r#"{"threads": 4, "app": "../../target/libhello.so", "greeting": "hi"}"#,
    );
    dir.write("config/config.json", r#"{"threads": 3}"#);
    let check_in = |env: &str, vars: &[(&str, &str)]| -> Value {
        let output = run_in(&dir.0, &["check-config", "--env", env], vars);
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        serde_json::from_slice(&output.stdout).expect("JSON")
    };
    let report = check_in("production", &[]);
    let file = dir.0.join("config/production/config.json");
    assert_eq!(report["source"], file.display().to_string());
    assert_eq!(report["mode_from"], "from the environment `production`");
    let config = &report["config"];
    assert_eq!(config["mode"], "production");
    assert_eq!(config["threads"], 4);
    assert_eq!(config["request_timeout_s"], 60.0);
    assert_eq!(config["watchdog"]["enabled"], true);
    assert_eq!(
        config["app"],
        dir.0
            .join("config/production/../../target/libhello.so")
            .display()
            .to_string()
    );
    // Below production is production; the walk goes up to `config/` itself.
    let eu = check_in("production/eu", &[]);
    assert_eq!(eu["source"], file.display().to_string());
    let staging = check_in("staging", &[]);
    assert_eq!(
        staging["source"],
        dir.0.join("config/config.json").display().to_string()
    );
    assert_eq!(staging["config"]["mode"], "dev");
    // CONFIG_PATH comes first.
    let other = TempDir::new("first");
    other.write("config.json", r#"{"mode": "dev"}"#);
    let first = check_in(
        "production",
        &[("CONFIG_PATH", other.0.to_str().expect("utf-8"))],
    );
    assert_eq!(first["config"]["mode"], "dev");
    assert!(first["mode_from"]
        .as_str()
        .is_some_and(|m| m.starts_with("set by `mode` in")));
}

/// `--env production` with no config file at all serves in production mode, and says why.
#[test]
fn env_production_alone_means_production() {
    let mut service = Service::spawn(
        &[
            "--env",
            "production",
            "--app",
            fixture_lib().to_str().expect("utf-8"),
        ],
        &[],
    );
    service.wait_ready();
    assert!(
        logged(
            &service,
            "(production mode, from the environment `production`; 1 worker(s) of 17 thread(s)"
        ),
        "{:?}",
        service.log_lines()
    );
    service.signal(15);
    assert_eq!(service.wait_exit(std::time::Duration::from_secs(10)), 0);
}

/// A top-level key close to a server key is warned about, naming the key it resembles; it
/// is not refused (app keys share that level).
#[test]
fn keys_that_look_like_server_keys_are_warned_about() {
    let dir = TempDir::new("near");
    let file = dir.write(
        "config.json",
        r#"{"thread": 4, "request_timeout": 3, "rums_limit": 2}"#,
    );
    let output = run(
        &["check-config", "--config", file.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for (key, like) in [
        ("thread", "threads"),
        ("request_timeout", "request_timeout_s"),
    ] {
        let expected = format!(
            "check-config: config: {}: key `{key}` is not a server key (the app gets it as it \
             is); did you mean `{like}`?",
            file.display()
        );
        assert!(stderr.contains(&expected), "{stderr}");
    }
    assert!(!stderr.contains("rums_limit"), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(report["config"]["threads"], 17);
    assert_eq!(report["config"]["thread"], 4);
}

#[test]
fn help_lists_every_flag_with_its_environment_twin() {
    let output = run(&["--help"], &[]);
    let help = String::from_utf8_lossy(&output.stdout);
    for twin in [
        "MICROSERVICE_ENV",
        "MICROSERVICE_CONFIG",
        "MICROSERVICE_PORT",
        "MICROSERVICE_HOST",
        "MICROSERVICE_APP",
    ] {
        assert!(help.contains(twin), "--help lacks {twin}:\n{help}");
    }
    let version = run(&["--version"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("microservice-rust {}", env!("CARGO_PKG_VERSION"))
    );
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

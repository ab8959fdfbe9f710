//! The README's shell blocks, run as written: each ```sh block is either run by bash in a
//! fresh directory, with this build's `microservice-rust` first on `PATH`, or skipped here
//! with the reason. A block the table below does not know fails the test, so a new command
//! in the README is run, or said why not, from the day it is written.
//!
//! A line that ends in `&` starts a server: the block waits for its `--port` to answer
//! before the next line, and every server a block started is stopped (SIGTERM, then waited
//! for) when it ends. A `curl` line's `# comment`, when the README shows what it prints,
//! is checked against what it printed (up to a number the server draws, `rnd=…`).

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{binary, example_lib, get, root, wait_for, TempDir};

/// What the test does with a block, found by the block's first line.
enum Plan {
    /// Runs it in a fresh directory.
    Run,
    /// Runs it while the example is served as `make run` serves it.
    WhileMakeRunServes,
    Skip(&'static str),
}

const BLOCKS: &[(&str, Plan)] = &[
    (
        "make run ",
        Plan::Skip(
            "`make run` is run by tests/make-run.sh (part of `make test`), and `make test` is \
             the suite this test belongs to",
        ),
    ),
    ("curl -fsS 127.0.0.1:8080/ ", Plan::WhileMakeRunServes),
    (
        "cargo install --path .",
        Plan::Skip(
            "it installs into the user's ~/.cargo/bin; the tests run the binary cargo builds \
             in target/debug, which is what it installs",
        ),
    ),
    ("microservice-rust new hello ", Plan::Run),
    ("microservice-rust new --lang c hello-c ", Plan::Run),
    ("microservice-rust new --lang python hello-py ", Plan::Run),
    (
        "make image ",
        Plan::Skip(
            "it needs a Docker engine: `make test-docker` builds these images and runs them \
             in one (tests/docker_test.py)",
        ),
    ),
];

/// The port the README's servers use.
const PORT: u16 = 8080;

#[test]
fn every_shell_block_of_the_readme_runs_as_written_or_says_why_not() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let blocks = shell_blocks(&readme);
    assert!(!blocks.is_empty(), "no ```sh block in README.md");
    for block in &blocks {
        let first = block.lines().next().unwrap_or("");
        let Some((_, plan)) = BLOCKS.iter().find(|(start, _)| first.starts_with(start)) else {
            panic!(
                "README.md has a shell block this test does not know; add it to BLOCKS:\n{block}"
            );
        };
        match plan {
            Plan::Skip(why) => eprintln!("skipped, {why}:\n{block}"),
            Plan::Run => run(block),
            Plan::WhileMakeRunServes => {
                let service = serve_as_make_run();
                run(block);
                drop(service);
            }
        }
    }
    for (start, _) in BLOCKS {
        assert!(
            blocks
                .iter()
                .any(|b| b.lines().next().unwrap_or("").starts_with(start)),
            "README.md has no shell block starting `{start}` any more: drop it from BLOCKS"
        );
    }
}

/// The text of every ```sh block.
fn shell_blocks(markdown: &str) -> Vec<String> {
    markdown
        .split("```sh\n")
        .skip(1)
        .filter_map(|rest| rest.split("\n```").next())
        .map(String::from)
        .collect()
}

/// The example, served as `make run` serves it (see the Makefile), until dropped.
struct MakeRun(std::process::Child);

impl Drop for MakeRun {
    fn drop(&mut self) {
        // SAFETY: kill on our own child, not yet waited for.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn serve_as_make_run() -> MakeRun {
    let lib = example_lib();
    let config = root().join("example-rum-counter/config/dev/config.json");
    let child = Command::new(binary())
        .args(["--host", "127.0.0.1", "--port", &PORT.to_string(), "--app"])
        .arg(lib)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let served = MakeRun(child);
    wait_for("the example on port 8080", Duration::from_secs(20), || {
        get(PORT, "/readyz").ok().filter(|r| r.status == 200)
    });
    served
}

/// Runs one block in a fresh directory and checks what its commented `curl` lines print.
fn run(block: &str) {
    let dir = TempDir::new("readme");
    let mut script = String::from(
        "set -euo pipefail\n\
         servers=()\n\
         stop() { for pid in \"${servers[@]}\"; do kill -TERM \"$pid\" 2>/dev/null; wait \"$pid\" 2>/dev/null; done; }\n\
         trap stop EXIT\n",
    );
    let mut expected = Vec::new();
    for line in block.lines() {
        let (command, comment) = split_comment(line);
        if command.ends_with('&') {
            script.push_str(line);
            script.push_str(&format!(
                "\nservers+=($!)\n\
                 for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/{PORT}) 2>/dev/null && break; sleep 0.1; done\n"
            ));
            continue;
        }
        if command.starts_with("curl ") && comment.is_some_and(shows_output) {
            // Its output into a file of its own: a server in the background writes its
            // access lines on the same terminal.
            let printed = dir.0.join(format!("printed-{}", expected.len()));
            expected.push((comment.unwrap_or("").to_string(), printed.clone()));
            script.push_str(&format!("{command} > '{}'\n", printed.display()));
            continue;
        }
        script.push_str(line);
        script.push('\n');
    }
    let path = format!(
        "{}:/usr/bin:/bin:{}",
        Path::new(binary())
            .parent()
            .expect("the binary's directory")
            .display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (out, err) = (dir.0.join("stdout"), dir.0.join("stderr"));
    let file = |path: &Path| std::fs::File::create(path).expect("an output file");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&dir.0)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(file(&out))
        .stderr(file(&err))
        .spawn()
        .expect("bash starts");
    let status = wait_for("the block to finish", Duration::from_secs(600), || {
        child.try_wait().expect("bash's status")
    });
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    eprintln!("ran ({status}):\n{block}\nit printed:\n{stdout}");
    assert!(
        status.success(),
        "the README block failed ({status}):\n{block}\nstdout:\n{stdout}\nstderr:\n{}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    for (comment, printed) in &expected {
        let printed = std::fs::read_to_string(printed).unwrap_or_default();
        assert!(
            matches_comment(&printed, comment),
            "the README says `# {comment}`, the command printed `{printed}`:\n{block}"
        );
    }
}

/// A line's command and its `# comment`, if it has one.
fn split_comment(line: &str) -> (&str, Option<&str>) {
    match line.split_once(" # ") {
        Some((command, comment)) => (command.trim_end(), Some(comment.trim())),
        None => (line.trim_end(), None),
    }
}

/// Whether a comment shows what the command prints (prose does not start that way).
fn shows_output(comment: &str) -> bool {
    comment
        .chars()
        .next()
        .is_some_and(|c| c == '{' || c.is_ascii_uppercase() || comment.starts_with("slept"))
}

/// What was printed matches the comment: the same words, where a number the server draws
/// (`rnd=…`) may differ.
fn matches_comment(printed: &str, comment: &str) -> bool {
    let words = |text: &str| -> Vec<String> {
        text.split_whitespace()
            .map(|w| match w.split_once('=') {
                Some((name, value)) if value.chars().all(|c| c.is_ascii_digit()) => {
                    format!("{name}=N")
                }
                _ => w.to_string(),
            })
            .collect()
    };
    words(printed) == words(comment)
}

#[test]
fn comments_match_what_was_printed_up_to_drawn_numbers() {
    assert!(matches_comment(
        "slept 1s rnd=17",
        "slept 1s rnd=8645092233941071830"
    ));
    assert!(!matches_comment("slept 2s rnd=17", "slept 1s rnd=1"));
    assert!(matches_comment("OK", "OK"));
    assert!(!matches_comment("", "OK"));
    assert_eq!(split_comment("curl x   # OK"), ("curl x", Some("OK")));
    assert!(!shows_output("the binary in ~/.cargo/bin"));
}

/// The markdown files of the README and the guides.
fn documents() -> Vec<std::path::PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut guides: Vec<_> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    guides.sort();
    files.extend(guides);
    files
}

/// A heading's anchor as GitHub makes it: lower case, spaces to `-`, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_relative_link_of_the_readme_and_the_guides_leads_somewhere() {
    let mut broken = Vec::new();
    for file in documents() {
        let text = std::fs::read_to_string(&file).expect("a guide");
        let dir = file.parent().expect("a directory");
        for link in text.split("](").skip(1) {
            let Some(target) = link.split(')').next() else {
                continue;
            };
            if target.contains("://") || target.starts_with("mailto:") || target.contains(' ') {
                continue;
            }
            let (path, fragment) = match target.split_once('#') {
                Some((path, fragment)) => (path, Some(fragment)),
                None => (target, None),
            };
            let linked = match path {
                "" => file.clone(),
                path => dir.join(path),
            };
            if !linked.exists() {
                broken.push(format!("{}: {target}: no such file", file.display()));
                continue;
            }
            if let Some(fragment) = fragment {
                let linked_text = std::fs::read_to_string(&linked).unwrap_or_default();
                let found = linked_text
                    .lines()
                    .filter_map(|line| line.strip_prefix('#'))
                    .map(|heading| anchor(heading.trim_start_matches('#')))
                    .any(|a| a == fragment);
                if !found {
                    broken.push(format!("{}: {target}: no such heading", file.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_configuration_guide_has_every_key_of_config_json_with_its_default() {
    let defaults: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("config.json")).expect("config.json"),
    )
    .expect("config.json is JSON");
    let guide =
        std::fs::read_to_string(root().join("docs/CONFIGURATION.md")).expect("CONFIGURATION.md");
    let mut rows = std::collections::BTreeMap::new();
    for line in guide.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let key = cells[0].trim_start_matches("| ").trim_matches('`');
        let default = cells.get(1).map_or("", |c| c.trim_matches('`'));
        rows.insert(key.to_string(), default.to_string());
    }
    let keys = defaults.as_object().expect("an object");
    for (key, value) in keys {
        let Some(default) = rows.get(key) else {
            panic!("docs/CONFIGURATION.md has no row for `{key}`");
        };
        let written: serde_json::Value = serde_json::from_str(default)
            .unwrap_or_else(|e| panic!("`{key}`'s default `{default}` is not JSON: {e}"));
        assert_eq!(
            &written, value,
            "`{key}`: the guide's default against config.json"
        );
    }
    for key in rows.keys() {
        assert!(
            keys.contains_key(key),
            "docs/CONFIGURATION.md has a row for `{key}`, which config.json does not have"
        );
    }
}

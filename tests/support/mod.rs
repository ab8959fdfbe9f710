//! What the integration tests share: building the app libraries, starting the real binary
//! on a free loopback port, a raw HTTP client, and polling up to a deadline.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_microservice-rust")
}

/// Builds the example and fixture libraries once per test binary; returns the target dir.
pub fn libraries() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "example-rum-counter",
                "-p",
                "fixture-app",
            ])
            .current_dir(root())
            .status()
            .expect("running cargo to build the app libraries");
        assert!(status.success(), "building the app libraries failed");
        // The binary under test lives in target/<profile>/; the libraries land beside it.
        Path::new(binary())
            .parent()
            .expect("the binary has a directory")
            .to_path_buf()
    })
}

/// Builds the Python host once per test binary (Debian's python3-dev and libpython3-dev);
/// it lands beside the binary, where the server looks for it.
pub fn python_host() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let status = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "-p", "microservice-rust-python"])
                .current_dir(root())
                .status()
                .expect("running cargo to build the Python host");
            assert!(
                status.success(),
                "building the Python host failed (it needs python3-dev and libpython3-dev)"
            );
            libraries().join("libmicroservice_rust_python.so")
        })
        .clone()
}

/// The tests' virtualenv (Flask), which `make python-env` makes.
pub fn python_venv() -> PathBuf {
    let venv = root().join("target/python-venv");
    assert!(
        venv.join("done").exists(),
        "no virtualenv in {}: run `make python-env` (make test does)",
        venv.display()
    );
    venv
}

/// A Python test app in tests/apps/python/.
pub fn python_app(file: &str) -> PathBuf {
    root().join("tests/apps/python").join(file)
}

/// A file in `dir` whose `app` is `callable` of `file` wrapped in wsgiref.validate's
/// validator, with warnings made errors: whatever breaks PEP 3333, the app's or the
/// server's, is then a 500 and a line in the log.
pub fn validated(dir: &TempDir, file: &Path, callable: &str) -> PathBuf {
    let file = file.display();
    dir.write(
        "validated.py",
        &format!(
            "import importlib.util, os, sys, warnings\n\
             from wsgiref.validate import validator\n\
             warnings.simplefilter('error')\n\
             sys.path.insert(0, os.path.dirname('{file}'))\n\
             spec = importlib.util.spec_from_file_location('wrapped', '{file}')\n\
             wrapped = importlib.util.module_from_spec(spec)\n\
             sys.modules['wrapped'] = wrapped\n\
             spec.loader.exec_module(wrapped)\n\
             app = validator(wrapped.{callable})\n"
        ),
    )
}

pub fn example_lib() -> PathBuf {
    libraries().join("libexample_rum_counter.so")
}

pub fn fixture_lib() -> PathBuf {
    libraries().join("libfixture_app.so")
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("msr-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        TempDir(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("creating a temp subdir");
        }
        std::fs::write(&path, text).expect("writing a temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The variable that lets the tests that need root skip, knowingly, where there is none.
pub const SKIP_ROOT_VAR: &str = "MICROSERVICE_TEST_SKIP_ROOT";

/// Whether a test that needs root (`what` it needs it for) may run: `true` as root. Without
/// root it fails, so that a passing run never hides a test that did not run, unless
/// MICROSERVICE_TEST_SKIP_ROOT=1 says to skip it; then it says so and returns `false`.
pub fn root_for(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let skip = std::env::var(SKIP_ROOT_VAR).is_ok_and(|v| v == "1");
    assert!(
        skip,
        "this test needs root ({what}); run it as root, or set {SKIP_ROOT_VAR}=1 to skip it"
    );
    eprintln!("SKIPPED (not root, {SKIP_ROOT_VAR}=1): {what}");
    false
}

/// Timing tests run one at a time: on a 2-core machine a parallel test would skew them.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        // The poll's interval: the deadline above bounds the wait.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the binary to completion with `args` and a clean environment of our choosing.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env)
        .output()
        .expect("running microservice-rust")
}

/// Like `run`, in the working directory `dir`.
pub fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env)
        .current_dir(dir)
        .output()
        .expect("running microservice-rust")
}

/// The binary serving `app` with `config`, written as `config.json` in `dir`.
fn configured(dir: &TempDir, app: &Path, config: &str, env: &[(&str, &str)]) -> Command {
    let file = dir.write("config.json", config);
    let args = [
        "--config",
        file.to_str().expect("utf-8 path"),
        "--app",
        app.to_str().expect("utf-8 path"),
    ];
    command(&args, env)
}

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary());
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// A running `microservice-rust` on 127.0.0.1 and a free port.
pub struct Service {
    pub child: Child,
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Service {
    /// Starts the service with a config file written from `config` (JSON) and waits until
    /// /readyz answers 200.
    pub fn start(app: &Path, config: &str) -> Service {
        Service::start_with(app, config, &[], Stdio::null())
    }

    /// Like `start`, with environment variables and the service's stdout going to `stdout`
    /// (`Stdio::piped()` leaves it in `child.stdout`).
    pub fn start_with(app: &Path, config: &str, env: &[(&str, &str)], stdout: Stdio) -> Service {
        let dir = TempDir::new("svc");
        let service = Service::launch(configured(&dir, app, config, env), stdout);
        service.wait_ready();
        service
    }

    /// Like `start`, with the config file in `dir`, where it stays for SIGHUP to re-read.
    pub fn start_in(dir: &TempDir, app: &Path, config: &str) -> Service {
        let service = Service::launch(configured(dir, app, config, &[]), Stdio::null());
        service.wait_ready();
        service
    }

    /// Starts the binary with `args` (plus `--host 127.0.0.1 --port 0`) and waits until it
    /// says which port it listens on.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Service {
        Service::launch(command(args, env), Stdio::null())
    }

    /// Like `start`, with the service's limit on open files set to `fds` (its workers
    /// inherit it).
    pub fn start_with_fd_limit(app: &Path, config: &str, fds: u64) -> Service {
        let dir = TempDir::new("svc");
        let mut command = configured(&dir, app, config, &[]);
        // SAFETY: setrlimit only, between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: fds,
                    rlim_max: fds,
                };
                match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
        }
        let service = Service::launch(command, Stdio::null());
        service.wait_ready();
        service
    }

    /// Like `spawn`, in the working directory `dir`.
    pub fn spawn_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Service {
        let mut command = command(args, env);
        command.current_dir(dir);
        Service::launch(command, Stdio::null())
    }

    /// Like `spawn`, through another program (e.g. `unshare … microservice-rust …`).
    pub fn spawn_program(program: &str, args: &[&str]) -> Service {
        let mut command = Command::new(program);
        command.args(args);
        Service::launch(command, Stdio::null())
    }

    fn launch(mut command: Command, stdout: Stdio) -> Service {
        let launched = std::time::SystemTime::now();
        let mut child = command
            .args(["--host", "127.0.0.1", "--port", "0"])
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting microservice-rust");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                eprintln!("  | {line}");
                lines.lock().expect("log lock").push(line);
            }
        });
        let mut service = Service {
            child,
            port: 0,
            log,
        };
        // The listening line, or (when the log level leaves it out) the address file. A file
        // older than this launch is another process's of the same PID (one killed before it
        // could remove it): the file system's clock is coarse, hence the second's margin.
        let address_file =
            std::env::temp_dir().join(format!("microservice-rust-{}.addr", service.child.id()));
        let fresh = |path: &Path| {
            std::fs::metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|at| at + Duration::from_secs(1) >= launched)
        };
        service.port = wait_for("the listening port", Duration::from_secs(10), || {
            let from_file = fresh(&address_file).then(|| std::fs::read_to_string(&address_file));
            let from_file = from_file.and_then(Result::ok).and_then(|a| {
                a.trim()
                    .parse::<std::net::SocketAddr>()
                    .ok()
                    .map(|a| a.port())
            });
            service
                .log_lines()
                .iter()
                .find_map(|line| {
                    let rest = line.split("listening on http://127.0.0.1:").nth(1)?;
                    rest.split_whitespace().next()?.parse().ok()
                })
                .or(from_file)
        });
        service
    }

    pub fn wait_ready(&self) {
        wait_for("/readyz to answer 200", Duration::from_secs(10), || {
            get(self.port, "/readyz").ok().filter(|r| r.status == 200)
        });
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2), declared below with its C types (pid_t and int are i32 on
        // Linux); it touches none of this process's memory.
        unsafe { libc_kill(self.pid(), signal) };
    }

    /// Waits for the process to exit; its exit code (128 + signal for a signal death).
    pub fn wait_exit(&mut self, limit: Duration) -> i32 {
        let status = wait_for("the service to exit", limit, || {
            self.child.try_wait().expect("try_wait")
        });
        use std::os::unix::process::ExitStatusExt;
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(15);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                // A poll to the deadline above (not `wait_for`: a drop must not panic).
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

/// An HTTP response as the raw client read it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn get(port: u16, path: &str) -> std::io::Result<Reply> {
    send(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

pub fn post(port: u16, path: &str, body: &[u8]) -> std::io::Result<Reply> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    send(port, &raw)
}

/// Sends raw bytes and reads one response (until the server closes or the body is complete).
pub fn send(port: u16, raw: &[u8]) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(raw)?;
    read_reply(&mut stream)
}

pub fn read_reply(stream: &mut TcpStream) -> std::io::Result<Reply> {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(reply) = parse_reply(&data) {
            return Ok(reply);
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return parse_reply(&data).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "closed after {} bytes: {:?}",
                        data.len(),
                        String::from_utf8_lossy(&data)
                    ),
                )
            });
        }
        data.extend_from_slice(&buf[..n]);
    }
}

/// Every complete response in `data`, in order.
pub fn parse_replies(mut data: &[u8]) -> Vec<Reply> {
    let mut replies = Vec::new();
    while let Some((reply, used)) = parse_reply_at(data) {
        replies.push(reply);
        data = &data[used..];
    }
    replies
}

/// A complete response with a Content-Length body (the only kind these tests expect).
fn parse_reply(data: &[u8]) -> Option<Reply> {
    parse_reply_at(data).map(|(reply, _)| reply)
}

/// A complete response at the start of `data`, and how many bytes it took.
fn parse_reply_at(data: &[u8]) -> Option<(Reply, usize)> {
    let end = data.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&data[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let body = data.get(end + 4..end + 4 + length)?.to_vec();
    let reply = Reply {
        status,
        headers,
        body,
    };
    Some((reply, end + 4 + length))
}

/// Sends `count` GETs at once, each on its own connection; returns (seconds since the
/// start, reply) for each, sorted by time.
pub fn parallel_gets(port: u16, path: &str, count: usize) -> Vec<(f64, Reply)> {
    let start = Instant::now();
    let barrier = Arc::new(std::sync::Barrier::new(count));
    let handles: Vec<_> = (0..count)
        .map(|_| {
            let path = path.to_string();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let reply = get(port, &path).expect("a reply");
                (start.elapsed().as_secs_f64(), reply)
            })
        })
        .collect();
    let mut results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("request thread"))
        .collect();
    results.sort_by(|a, b| a.0.total_cmp(&b.0));
    results
}

/// Compiles `tests/apps/c/hello.c` with `defines` into a shared library in `dir`.
pub fn compile_c_app(dir: &TempDir, name: &str, defines: &[&str]) -> PathBuf {
    let out = dir.0.join(name);
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg("-I")
        .arg(root().join("include"))
        .args(defines)
        .arg(root().join("tests/apps/c/hello.c"))
        .status()
        .expect("running cc");
    assert!(status.success(), "cc failed for {name}");
    out
}

/// One answer the load generator got: when (seconds since the load started), status, body.
#[derive(Clone, Debug)]
pub struct Answer {
    pub at: f64,
    pub status: u16,
    pub body: String,
}

/// What the load generator saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub answers: Vec<Answer>,
    /// Requests that got no HTTP answer: connection refused, reset, or closed mid-way.
    pub errors: Vec<String>,
    /// Requests re-sent because a reused keep-alive connection was closed before any
    /// byte of the answer (what HTTP clients do).
    pub retried: usize,
}

impl Tally {
    pub fn count(&self, status: u16) -> usize {
        self.answers.iter().filter(|a| a.status == status).count()
    }
}

/// `clients` threads sending `GET path` back to back.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Answers so far, for a test to wait on while the load runs.
    answered: Arc<std::sync::atomic::AtomicUsize>,
    start: Instant,
    handles: Vec<std::thread::JoinHandle<Tally>>,
}

impl Load {
    /// On keep-alive connections (a request whose reused connection was closed before any
    /// byte of its answer is sent again, as HTTP clients do).
    pub fn start(port: u16, path: &str, clients: usize) -> Load {
        Load::begin(port, path, clients, false)
    }

    /// Each request on a new connection, never sent again: any reset or close is an
    /// error.
    pub fn fresh(port: u16, path: &str, clients: usize) -> Load {
        Load::begin(port, path, clients, true)
    }

    fn begin(port: u16, path: &str, clients: usize, fresh: bool) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let start = Instant::now();
        let handles = (0..clients)
            .map(|_| {
                let (stop, answered) = (stop.clone(), answered.clone());
                let path = path.to_string();
                std::thread::spawn(move || client(port, &path, start, &stop, &answered, fresh))
            })
            .collect();
        Load {
            stop,
            answered,
            start,
            handles,
        }
    }

    /// Seconds since the load started: the time base of its answers' `at`.
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Waits (10 s at most) until `more` answers have come beyond those so far: the load
    /// is being served, by whatever serves it now.
    pub fn wait_answers(&self, more: usize) {
        let answered = || self.answered.load(std::sync::atomic::Ordering::SeqCst);
        let target = answered() + more;
        wait_for(
            &format!("{more} more answers to the load"),
            Duration::from_secs(10),
            || (answered() >= target).then_some(()),
        );
    }

    pub fn finish(self) -> Tally {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut tally = Tally::default();
        for handle in self.handles {
            let part = handle.join().expect("load client");
            tally.answers.extend(part.answers);
            tally.errors.extend(part.errors);
            tally.retried += part.retried;
        }
        tally.answers.sort_by(|a, b| a.at.total_cmp(&b.at));
        tally
    }
}

fn client(
    port: u16,
    path: &str,
    start: Instant,
    stop: &std::sync::atomic::AtomicBool,
    answered: &std::sync::atomic::AtomicUsize,
    fresh: bool,
) -> Tally {
    let mut tally = Tally::default();
    let mut connection: Option<(TcpStream, usize)> = None; // (stream, answers on it)
    let request = match fresh {
        true => format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        false => format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"),
    };
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let mut retried = false;
        loop {
            let (stream, used) = match connection.take() {
                Some(open) => open,
                None => match TcpStream::connect(("127.0.0.1", port)) {
                    Ok(stream) => {
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                        (stream, 0)
                    }
                    Err(e) => {
                        tally.errors.push(format!("connect: {e}"));
                        break;
                    }
                },
            };
            let mut stream = stream;
            let sent = stream.write_all(request.as_bytes());
            let (reply, got_bytes) = match sent {
                Ok(()) => read_reply_counting(&mut stream),
                Err(e) => (Err(e), false),
            };
            match reply {
                Ok(reply) => {
                    let close = reply
                        .header("connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                    tally.answers.push(Answer {
                        at: start.elapsed().as_secs_f64(),
                        status: reply.status,
                        body: reply.text(),
                    });
                    answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if !close && !fresh {
                        connection = Some((stream, used + 1));
                    }
                    break;
                }
                Err(_) if used > 0 && !got_bytes && !retried => {
                    retried = true;
                    tally.retried += 1;
                }
                Err(e) => {
                    tally.errors.push(format!("exchange: {e}"));
                    break;
                }
            }
        }
        // The load's pace (a client's think time), not a wait for a state.
        std::thread::sleep(Duration::from_millis(2));
    }
    tally
}

/// Reads one reply; also says whether any byte arrived before a failure.
fn read_reply_counting(stream: &mut TcpStream) -> (std::io::Result<Reply>, bool) {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(reply) = parse_reply(&data) {
            return (Ok(reply), true);
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                let err = std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("closed after {} bytes", data.len()),
                );
                return (Err(err), !data.is_empty());
            }
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) => return (Err(e), !data.is_empty()),
        }
    }
}

/// The worker PIDs the supervisor's log names as started.
pub fn started_workers(log: &[String]) -> Vec<i32> {
    log.iter()
        .filter_map(|line| {
            let rest = line.split("started worker ").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// Whether a line containing `needle` is in the service's log by now.
pub fn logged(service: &Service, needle: &str) -> bool {
    service.log_lines().iter().any(|line| line.contains(needle))
}

/// A gauge of the only worker, from /metrics.
pub fn gauge(port: u16, name: &str) -> Option<u64> {
    let text = get(port, "/metrics").ok()?.text();
    let prefix = format!("{name}{{worker=");
    text.lines()
        .find(|l| l.starts_with(&prefix))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// A counter without labels from the service's /metrics.
pub fn counter(port: u16, name: &str) -> u64 {
    let text = get(port, "/metrics").expect("metrics").text();
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

/// The file descriptors a process has open.
pub fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

/// `microservice_connections_closed_total{reason}` from the service's /metrics.
pub fn closed_count(port: u16, reason: &str) -> u64 {
    reason_count(port, "microservice_connections_closed_total", reason)
}

/// A counter `name{reason="..."}` from the service's /metrics.
pub fn reason_count(port: u16, name: &str, reason: &str) -> u64 {
    let text = get(port, "/metrics").expect("metrics").text();
    let prefix = format!("{name}{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in the metrics"))
}

/// The pid of the service's first worker, from its log (text format).
pub fn first_worker(service: &Service) -> i32 {
    wait_for("the first worker's start", Duration::from_secs(5), || {
        started_workers(&service.log_lines()).first().copied()
    })
}

/// Lines the service wrote on stdout, read until `count` have come or 5 s have passed.
pub fn stdout_lines(service: &mut Service, count: usize) -> Vec<String> {
    stdout_until(service, |lines| lines.len() >= count)
}

/// Lines the service wrote on stdout, read until `done` says so or 5 s have passed.
pub fn stdout_until(service: &mut Service, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let stdout = service.child.stdout.take().expect("stdout is piped");
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out = Vec::new();
    while !done(&out) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => out.push(line),
            Err(_) => break,
        }
    }
    out
}

/// Connections that the kernel has completed on the listening socket at 127.0.0.1:`port`
/// and no worker has accepted yet (its accept queue); `None` if no socket listens there.
pub fn accept_queue(port: u16) -> Option<usize> {
    listening(port)
        .into_iter()
        .map(|(waiting, _)| waiting)
        .reduce(|a, b| a + b)
}

/// Whether process `pid` holds the listening socket at 127.0.0.1:`port` (a worker closes
/// its copy as it starts to retire).
pub fn holds_listener(pid: i32, port: u16) -> bool {
    let sockets: Vec<String> = listening(port)
        .into_iter()
        .map(|(_, inode)| format!("socket:[{inode}]"))
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .any(|target| sockets.iter().any(|s| target.as_os_str() == s.as_str()))
}

/// (accept queue, inode) of each socket listening at 127.0.0.1:`port`, from /proc/net/tcp.
fn listening(port: u16) -> Vec<(usize, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!("0100007F:{port:04X}");
    // For a listening socket (state 0A), rx_queue is the number of connections waiting.
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|fields| fields.len() > 9 && fields[1] == local && fields[3] == "0A")
        .map(|fields| {
            let waiting = fields[4].split(':').nth(1).unwrap_or("0");
            let waiting = usize::from_str_radix(waiting, 16).unwrap_or(0);
            (waiting, fields[9].parse().unwrap_or(0))
        })
        .collect()
}

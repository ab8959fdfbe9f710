//! Configuration: the supervisor's keys, their defaults and their validation; where
//! `config.json` is found is in [`lookup`].
//!
//! `config.json` at the repository root is the built-in defaults written out, and a test
//! keeps the two equal. Supervisor keys are checked strictly; every other top-level key
//! belongs to the app, which receives the whole resolved object.

mod app;
mod lookup;

pub use app::{check_app, check_library, find_app, library, missing_symbol, App};
pub use lookup::{Loaded, Lookup};

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::error::Error;
use crate::log::{Format, Level};

/// Where the image keeps the repository's `config.json`, the last file looked at.
pub const IMAGE_DEFAULTS: &str = "/etc/microservice-rust/config.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One request at a time; the app library is reloaded when it changes.
    Dev,
    /// A pool of `threads`; request timeouts and the watchdog on by default.
    Production,
}

impl Mode {
    /// The mode an environment chooses when the config does not: `production` and the
    /// environments below it (`production/eu`) are production, any other is dev.
    pub fn for_env(env: &str) -> Mode {
        match env == "production" || env.starts_with("production/") {
            true => Mode::Production,
            false => Mode::Dev,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Dev => "dev",
            Mode::Production => "production",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Watchdog {
    /// Default `None`: on in production, off in dev (a developer's breakpoint is not a
    /// hang).
    pub enabled: Option<bool>,
    /// Seconds between probes of a worker. Default 5: a hung worker is found within about
    /// 10 s, as Docker's health check would, at a probe's cost every 5 s.
    pub interval_s: f64,
    /// Seconds a probe may take. Default 2: a probe is a request through the queue; a
    /// pool busy for 2 s is as good as stuck to its clients.
    pub timeout_s: f64,
    /// Probes missed in a row that replace a worker. Default 3: one slow moment is not a
    /// hang.
    pub failures: u32,
    /// Request-duration watchdog: `/healthz` fails while the mean duration of the last
    /// `request_average` requests is over this. Default `None`: off, since what is slow
    /// depends on the app.
    pub request_threshold_s: Option<f64>,
    /// Default 10: a few slow requests are noise, ten in a row a trend.
    pub request_average: u32,
}

impl Default for Watchdog {
    fn default() -> Watchdog {
        Watchdog {
            enabled: None,
            interval_s: 5.0,
            timeout_s: 2.0,
            failures: 3,
            request_threshold_s: None,
            request_average: 10,
        }
    }
}

impl Watchdog {
    fn to_json(&self, enabled: Option<bool>) -> Value {
        json!({
            "enabled": enabled,
            "interval_s": self.interval_s,
            "timeout_s": self.timeout_s,
            "failures": self.failures,
            "request_threshold_s": self.request_threshold_s,
            "request_average": self.request_average,
        })
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.interval_s)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_s)
    }
}

/// Dynamic batching: the pool gives the app's batch handler up to `max_size` requests at
/// once, waiting at most `timeout_s` after the first for more.
#[derive(Clone, Debug, PartialEq)]
pub struct Batching {
    pub max_size: usize,
    pub timeout_s: f64,
}

/// The largest batch `batching.max_size` allows.
pub const MAX_BATCH: u64 = 1024;

/// What a Python app imports (see the Python host).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PythonSettings {
    /// The virtualenv whose packages the app imports when `VIRTUAL_ENV` names none.
    /// Default `None`: the interpreter's own site-packages.
    pub virtualenv: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct DevSettings {
    /// Paths watched beside the app. Default none.
    pub watch: Vec<String>,
    /// Run (`sh -c`) when a watched path changes. Default none: the app's own build
    /// replaces the library.
    pub build_command: Option<String>,
}

/// One server key: its name in the config, how a present (non-null) value is read into the
/// settings, and how the settings write it out (`resolved`: the values in force instead of
/// the mode-dependent `null`s).
struct Key {
    name: &'static str,
    read: fn(&Reader<'_>, &Value, &mut Settings) -> Result<(), Error>,
    write: fn(&Settings, bool) -> Value,
}

/// Declares every server key once: its field (with its doc, which says the default and
/// why), its default, how it is read and how it is written. From that come [`Settings`],
/// its `Default`, and [`KEYS`], which `from_json`, `to_json` and the list of server keys
/// go through, so none of them can leave a key out. `mode` is apart: the environment or
/// the Flask image's `use_apache` may set it too.
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident: $ty:ty = $default:expr,
        read |$r:ident, $v:ident| $read:expr,
        write |$s:ident, $resolved:ident| $write:expr;
    )*) => {
        /// The server's keys, typed (see [`settings!`]).
        #[derive(Clone, Debug, PartialEq)]
        pub struct Settings {
            /// The mode in force: `mode`, else the Flask image's `use_apache: true`, else
            /// the environment's (see `Loaded`). Default dev: a developer's first run.
            pub mode: Mode,
            /// The key that set the mode (`mode` or `use_apache`); `None`: the
            /// environment chose it.
            pub mode_key: Option<&'static str>,
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for Settings {
            fn default() -> Settings {
                Settings {
                    mode: Mode::Dev,
                    mode_key: None,
                    $( $field: $default, )*
                }
            }
        }

        /// Every server key but `mode`, in the order of `config.json`.
        const KEYS: &[Key] = &[$(
            Key {
                name: stringify!($field),
                read: |$r, $v, settings| {
                    settings.$field = $read;
                    Ok(())
                },
                write: |$s, $resolved| $write,
            },
        )*];
    };
}

settings! {
    /// Pool threads per worker in production (dev has one). Default 17: the mod_wsgi daemon
    /// of Armada's Flask image ran 17 threads, and its apps were sized for it.
    threads: usize = 17,
        read |r, v| r.whole("threads", v, 1, MAX_THREADS)? as usize,
        write |s, _resolved| json!(s.threads);
    /// Worker processes sharing the socket. Default 1: one process holds the app once; a
    /// crash of the app is contained either way, and more are for more cores.
    workers: usize = 1,
        read |r, v| r.whole("workers", v, 1, MAX_WORKERS)? as usize,
        write |s, _resolved| json!(s.workers);
    /// tokio threads per worker for connection I/O. Default `None`: one for every two CPUs
    /// this process may use ([`io_threads_for`]; measured in docs/PERFORMANCE.md), so that
    /// a worker's connection work scales with the machine it runs on without its owner
    /// knowing the key, and the app's pool keeps half of it.
    io_threads: Option<usize> = None,
        read |r, v| Some(r.whole("io_threads", v, 1, MAX_IO_THREADS)? as usize),
        write |s, resolved| match resolved {
            true => json!(s.io_threads()),
            false => json!(s.io_threads),
        };
    /// Connections a worker holds at once. Default `None`: 90% of its file descriptor
    /// limit, one fd a connection, the rest left to the app.
    max_connections: Option<u64> = None,
        read |r, v| Some(r.whole("max_connections", v, 1, MAX_CONNECTIONS)?),
        write |s, resolved| match resolved {
            true => json!(s.max_connections()),
            false => json!(s.max_connections),
        };
    /// App requests one worker lets wait for a pool thread; one more is shed with 503.
    /// Default 1024: a client is better told at once than after its whole deadline, and
    /// 1,024 waiting requests are 0.6 s of work for 17 threads answering in 10 ms.
    max_queue: u64 = DEFAULT_MAX_QUEUE,
        read |r, v| r.whole("max_queue", v, 1, MAX_QUEUE)?,
        write |s, _resolved| json!(s.max_queue);
    /// A worker that has answered this many requests (plus up to `max_requests_jitter`) is
    /// replaced. Default 0, never: recycling is for apps that leak.
    max_requests: u64 = 0,
        read |r, v| r.whole("max_requests", v, 0, MAX_REQUESTS)?,
        write |s, _resolved| json!(s.max_requests);
    /// Up to this many requests more for each worker's `max_requests`, drawn when it
    /// starts. Default 0.
    max_requests_jitter: u64 = 0,
        read |r, v| r.whole("max_requests_jitter", v, 0, MAX_REQUESTS)?,
        write |s, _resolved| json!(s.max_requests_jitter);
    /// A worker whose resident memory passes this many MiB is replaced. Default `None`,
    /// never: recycling is for apps that leak.
    max_worker_memory_mb: Option<u64> = None,
        read |r, v| Some(r.whole("max_worker_memory_mb", v, 1, MAX_WORKER_MEMORY_MB)?),
        write |s, _resolved| json!(s.max_worker_memory_mb);
    /// The address to listen on. Default all IPv4 addresses: in a container the network
    /// is the container's own.
    host: IpAddr = IpAddr::from([0, 0, 0, 0]),
        read |r, v| v
            .as_str()
            .and_then(|h| h.parse().ok())
            .ok_or_else(|| r.fail("host", "an IP address such as \"0.0.0.0\"", v))?,
        write |s, _resolved| json!(s.host.to_string());
    /// The port. Default 80, the Flask image's; 0 picks a free one.
    port: u16 = 80,
        read |r, v| r.whole("port", v, 0, u16::MAX as u64)? as u16,
        write |s, _resolved| json!(s.port);
    /// The app: a library, or a Python app (see `app`). Default `None`: found in the
    /// image's conventional places.
    app: Option<PathBuf> = None,
        read |r, v| Some(PathBuf::from(r.string("app", v)?)),
        write |s, _resolved| json!(s.app.as_ref().map(|p| p.display().to_string()));
    /// Seconds from reading a request to its 504. Default `None`: 60 s in production (a
    /// hung request must end), off in dev (a developer may sit in a debugger); `Some(0)`:
    /// off.
    request_timeout_s: Option<f64> = None,
        read |r, v| Some(r.seconds("request_timeout_s", v, false)?),
        write |s, resolved| match resolved {
            true => json!(s.request_timeout().map_or(0.0, |d| d.as_secs_f64())),
            false => json!(s.request_timeout_s),
        };
    /// An idle connection, or a head or body that stops arriving, is closed after this many
    /// seconds. Default 5: nginx's and gunicorn's keep-alive are of that order, and a
    /// slowloris client is cut off within it.
    keep_alive_timeout_s: f64 = 5.0,
        read |r, v| r.seconds("keep_alive_timeout_s", v, true)?,
        write |s, _resolved| json!(s.keep_alive_timeout_s);
    /// A larger request body gets 413. Default 10 MiB: nginx allows 1 MiB, the Flask
    /// image's apps took uploads of a few MiB.
    max_body_bytes: u64 = 10 * 1024 * 1024,
        read |r, v| r.whole("max_body_bytes", v, 0, 1 << 40)?,
        write |s, _resolved| json!(s.max_body_bytes);
    /// The request bodies one worker holds in memory at once, in bytes: a body that would
    /// take it past this is refused with 503 (see worker/budget.rs for why not made to
    /// wait). Default `None`: a quarter of the memory this process may use (its cgroup's
    /// limit, else the machine's), shared by the workers, and never below `max_body_bytes`,
    /// so that one body of the largest size always fits; the other three quarters are the
    /// app's (a Python app's `wsgi.input` copy of each body among them).
    max_body_memory_bytes: Option<u64> = None,
        read |r, v| Some(r.whole("max_body_memory_bytes", v, 1, 1 << 50)?),
        write |s, resolved| match resolved {
            true => json!(s.max_body_memory()),
            false => json!(s.max_body_memory_bytes),
        };
    /// The watchdog (see `Watchdog`'s fields for their defaults).
    watchdog: Watchdog = Watchdog::default(),
        read |r, v| watchdog(r, v)?,
        write |s, resolved| s.watchdog.to_json(match resolved {
            true => Some(s.watchdog_enabled()),
            false => s.watchdog.enabled,
        });
    /// Seconds a SIGTERM'd service goes on serving while `/readyz` says 503. Default 0:
    /// without a load balancer to tell, there is nothing to wait for.
    drain_time_s: f64 = 0.0,
        read |r, v| r.seconds("drain_time_s", v, false)?,
        write |s, _resolved| json!(s.drain_time_s);
    /// Seconds the requests read may take to finish once a worker stops. Default 8: under
    /// Docker's stop grace of 10 s, with 2 s for SIGKILL's margin.
    stop_timeout_s: f64 = 8.0,
        read |r, v| r.seconds("stop_timeout_s", v, false)?,
        write |s, _resolved| json!(s.stop_timeout_s);
    /// Dev reload (see `DevSettings`). Default: the app alone watched, no build command.
    dev: DevSettings = DevSettings::default(),
        read |r, v| dev(r, v)?,
        write |s, _resolved| json!({
            "watch": s.dev.watch,
            "build_command": s.dev.build_command,
        });
    /// Lines below this level are not written. Default info: the access log is info.
    log_level: Level = Level::Info,
        read |r, v| v
            .as_str()
            .and_then(Level::parse)
            .ok_or_else(|| r.fail("log_level", Level::NAMES, v))?,
        write |s, _resolved| json!(s.log_level.name());
    /// Default text: the combined log format people read; `json` for collectors.
    log_format: Format = Format::Text,
        read |r, v| v
            .as_str()
            .and_then(Format::parse)
            .ok_or_else(|| r.fail("log_format", "\"text\" or \"json\"", v))?,
        write |s, _resolved| json!(s.log_format.name());
    /// The request line and headers together; a larger head gets 431. Default 32 KiB:
    /// Apache's limits allow about that, nginx's 32 KiB too.
    max_header_bytes: u64 = 32 * 1024,
        read |r, v| r.whole("max_header_bytes", v, 1024, 1 << 20)?,
        write |s, _resolved| json!(s.max_header_bytes);
    /// App routes (and `/metrics`) need this key; `API_KEY` in the environment sets it too.
    /// Default `None`: open, as the Flask image's services were behind their network.
    api_key: Option<Secret> = None,
        read |r, v| Some(api_key(r, v)?),
        write |s, _resolved| json!(s.api_key.as_ref().map(Secret::expose));
    /// Origins (the whole `Origin` value) that get CORS answers. Default `None`: no CORS.
    cors_allow_origin_regex: Option<String> = None,
        read |r, v| Some(cors(r, v)?),
        write |s, _resolved| json!(s.cors_allow_origin_regex);
    /// Dynamic batching. Default `None`: every request goes to the app alone, as most apps
    /// want.
    batching: Option<Batching> = None,
        read |r, v| Some(batching(r, v)?),
        write |s, _resolved| json!(s.batching.as_ref().map(|b| json!({
            "max_size": b.max_size,
            "timeout_s": b.timeout_s,
        })));
    /// What a Python app imports (see `PythonSettings`).
    python: PythonSettings = PythonSettings::default(),
        read |r, v| python(r, v)?,
        write |s, _resolved| json!({ "virtualenv": s.python.virtualenv });
}

/// A value that never shows: `{:?}` prints `***`, and [`redact`] hides it in JSON.
#[derive(Clone, PartialEq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The keys whose values are secrets.
const SECRET_KEYS: [&str; 1] = ["api_key"];

/// What a secret is shown as.
pub const REDACTED: &str = "***";

/// `config` with every secret replaced by [`REDACTED`]: for `check-config` and for the app.
pub fn redact(config: &Value) -> Value {
    let mut out = config.clone();
    if let Some(map) = out.as_object_mut() {
        for key in SECRET_KEYS {
            if let Some(value) = map.get_mut(key).filter(|v| !v.is_null()) {
                *value = json!(REDACTED);
            }
        }
    }
    out
}

/// The CORS pattern as the worker uses it: matched against the whole `Origin` value.
pub fn origin_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

/// Limits of the numeric keys; past them a value is a typo, not a choice.
const MAX_THREADS: u64 = 1024;
pub const MAX_WORKERS: u64 = 64;
const MAX_IO_THREADS: u64 = 64;
const MAX_CONNECTIONS: u64 = 10_000_000;
/// The share of the file descriptor limit that `max_connections` takes by default, in
/// percent; the rest is left to the app and the worker's own files.
const CONNECTIONS_SHARE_OF_FDS: u64 = 90;
/// The default `max_body_memory_bytes` is the memory this process may use over this.
const BODY_MEMORY_SHARE: u64 = 4;
const MAX_SECONDS: f64 = 86_400.0;
/// Requests a worker lets wait for a pool thread by default (see the README's table).
const DEFAULT_MAX_QUEUE: u64 = 1024;
const MAX_QUEUE: u64 = 10_000_000;
const MAX_REQUESTS: u64 = 1 << 53;
const MAX_WORKER_MEMORY_MB: u64 = 1 << 24;
const PRODUCTION_REQUEST_TIMEOUT_S: f64 = 60.0;

impl Settings {
    /// The request deadline, counted from the moment the worker read the request.
    pub fn request_timeout(&self) -> Option<Duration> {
        let seconds = self.request_timeout_s.unwrap_or(match self.mode {
            Mode::Production => PRODUCTION_REQUEST_TIMEOUT_S,
            Mode::Dev => 0.0,
        });
        (seconds > 0.0).then(|| Duration::from_secs_f64(seconds))
    }

    /// The I/O threads of a worker: `io_threads`, or [`io_threads_for`] the CPUs this
    /// process may use.
    pub fn io_threads(&self) -> usize {
        self.io_threads
            .unwrap_or_else(|| io_threads_for(usable_cpus()))
    }

    /// Why a worker has the I/O threads it has, for `check-config`.
    pub fn io_threads_origin(&self) -> String {
        match self.io_threads {
            Some(_) => "set by `io_threads`".into(),
            None => {
                let cpus = usable_cpus();
                format!(
                    "one for every two CPUs this process may use, rounded up: {} for {cpus} \
                     CPU(s), counted from its CPU affinity and its cgroup's CPU quota",
                    io_threads_for(cpus)
                )
            }
        }
    }

    pub fn watchdog_enabled(&self) -> bool {
        self.watchdog
            .enabled
            .unwrap_or(self.mode == Mode::Production)
    }

    /// Threads serving requests: one in dev, `threads` in production.
    pub fn pool_threads(&self) -> usize {
        match self.mode {
            Mode::Dev => 1,
            Mode::Production => self.threads,
        }
    }

    /// Connections one worker holds at once: `max_connections`, or 90% of the file
    /// descriptor limit (one fd per connection; the rest is left to the app).
    pub fn max_connections(&self) -> u32 {
        let count = self
            .max_connections
            .unwrap_or_else(|| fd_limit() * CONNECTIONS_SHARE_OF_FDS / 100);
        count.clamp(1, MAX_CONNECTIONS) as u32
    }

    /// The request bodies one worker may hold: `max_body_memory_bytes`, or its share of a
    /// quarter of the memory this process may use.
    pub fn max_body_memory(&self) -> u64 {
        self.max_body_memory_bytes.unwrap_or_else(|| {
            let share = usable_memory().0 / BODY_MEMORY_SHARE / self.workers.max(1) as u64;
            share.max(self.max_body_bytes)
        })
    }

    /// Why a worker may hold the request bodies it may, for `check-config`.
    pub fn max_body_memory_origin(&self) -> String {
        match self.max_body_memory_bytes {
            Some(_) => "set by `max_body_memory_bytes`".into(),
            None => format!(
                "a quarter of the memory this process may use, {}, over {} worker(s), and at \
                 least max_body_bytes",
                usable_memory().1,
                self.workers
            ),
        }
    }

    pub fn stop_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.stop_timeout_s)
    }

    pub fn keep_alive_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.keep_alive_timeout_s)
    }

    /// Every server key as JSON. `resolved` replaces the mode-dependent `null`s with the
    /// values in force.
    pub fn to_json(&self, resolved: bool) -> Value {
        let mode = match (resolved, self.mode_key) {
            (false, None) => Value::Null,
            _ => json!(self.mode.name()),
        };
        let mut keys = Map::new();
        keys.insert("mode".into(), mode);
        for key in KEYS {
            keys.insert(key.name.into(), (key.write)(self, resolved));
        }
        Value::Object(keys)
    }
}

/// Reads typed values out of a JSON object, naming the key path and the source in errors.
struct Reader<'a> {
    source: &'a str,
}

impl Reader<'_> {
    fn fail(&self, key: &str, expected: &str, found: &Value) -> Error {
        Error::config_key(self.source, key, expected, found)
    }

    /// A whole number within `min..=max`.
    fn whole(&self, key: &str, value: &Value, min: u64, max: u64) -> Result<u64, Error> {
        let expected = format!("a whole number from {min} to {max}");
        match value.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            // 4.0 is a whole number, written as a float.
            None if value.as_f64().is_some_and(|f| f.fract() == 0.0 && f >= 0.0) => {
                let n = value.as_f64().expect("checked just above") as u64;
                match (min..=max).contains(&n) {
                    true => Ok(n),
                    false => Err(self.fail(key, &expected, value)),
                }
            }
            _ => Err(self.fail(key, &expected, value)),
        }
    }

    /// A number of seconds within `min..=MAX_SECONDS` (fractions allowed); `above_zero`
    /// excludes `min` itself.
    fn seconds(&self, key: &str, value: &Value, above_zero: bool) -> Result<f64, Error> {
        let expected = match above_zero {
            true => format!("a number of seconds above 0 and at most {MAX_SECONDS}"),
            false => format!("a number of seconds from 0 to {MAX_SECONDS}"),
        };
        match value.as_f64() {
            Some(s) if s <= MAX_SECONDS && (s > 0.0 || (!above_zero && s == 0.0)) => Ok(s),
            _ => Err(self.fail(key, &expected, value)),
        }
    }

    fn boolean(&self, key: &str, value: &Value) -> Result<bool, Error> {
        value
            .as_bool()
            .ok_or_else(|| self.fail(key, "true or false", value))
    }

    fn string<'v>(&self, key: &str, value: &'v Value) -> Result<&'v str, Error> {
        match value.as_str() {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(self.fail(key, "a non-empty string", value)),
        }
    }

    fn object<'v>(
        &self,
        key: &str,
        value: &'v Value,
        allowed: &[&str],
    ) -> Result<&'v Map<String, Value>, Error> {
        let map = value
            .as_object()
            .ok_or_else(|| self.fail(key, "an object", value))?;
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(Error::config(
                self.source,
                format!(
                    "key `{key}.{unknown}`: unknown; expected one of {}",
                    allowed.join(", ")
                ),
            ));
        }
        Ok(map)
    }
}

/// A present, non-null value of a key.
fn present<'v>(map: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    map.get(key).filter(|v| !v.is_null())
}

impl Settings {
    /// Validates the supervisor's keys of `value`; every other top-level key is the app's.
    pub fn from_json(value: &Value, source: &str) -> Result<Settings, Error> {
        let r = Reader { source };
        let top = value.as_object().ok_or_else(|| {
            Error::config(
                source,
                format!(
                    "expected a JSON object at the top level, found {}",
                    short_kind(value)
                ),
            )
        })?;
        let mut s = Settings::default();

        let use_apache = present(top, "use_apache")
            .map(|v| r.boolean("use_apache", v))
            .transpose()?;
        match (present(top, "mode"), use_apache) {
            (Some(v), _) => {
                s.mode = match v.as_str() {
                    Some("dev") => Mode::Dev,
                    Some("production") => Mode::Production,
                    _ => return Err(r.fail("mode", "\"dev\" or \"production\"", v)),
                };
                s.mode_key = Some("mode");
                if use_apache == Some(true) && s.mode == Mode::Dev {
                    return Err(Error::config(
                        source,
                        "key `use_apache`: true means production, but `mode` is \"dev\"; \
                         keep one of them",
                    ));
                }
            }
            (None, Some(true)) => {
                s.mode = Mode::Production;
                s.mode_key = Some("use_apache");
            }
            (None, _) => {}
        }

        for key in KEYS {
            if let Some(v) = present(top, key.name) {
                (key.read)(&r, v, &mut s)?;
            }
        }
        // The Flask image's name for `threads`.
        if let Some(apache) = present(top, "apache_config") {
            let map = apache
                .as_object()
                .ok_or_else(|| r.fail("apache_config", "an object", apache))?;
            let key = "apache_config.wsgi_worker_threads_count";
            if let Some(v) = present(map, "wsgi_worker_threads_count") {
                let n = r.whole(key, v, 1, MAX_THREADS)? as usize;
                if present(top, "threads").is_some() && n != s.threads {
                    return Err(Error::config(
                        source,
                        format!("key `{key}`: {n} disagrees with `threads` {}", s.threads),
                    ));
                }
                s.threads = n;
            }
        }
        if let Some(budget) = s.max_body_memory_bytes.filter(|b| *b < s.max_body_bytes) {
            return Err(Error::config(
                source,
                format!(
                    "key `max_body_memory_bytes`: {budget} is below `max_body_bytes` {}, so a \
                     body of the largest size allowed could never be read; raise it or lower \
                     `max_body_bytes`",
                    s.max_body_bytes
                ),
            ));
        }
        Ok(s)
    }
}

/// Top-level keys of the config that are not server keys but look like one (an edit
/// distance of at most 2: `thread`, `request_timeout`), with the key each resembles. They
/// are only warned about: app keys live at the same level.
pub fn near_misses(value: &Value) -> Vec<(String, &'static str)> {
    let Some(top) = value.as_object() else {
        return Vec::new();
    };
    top.keys()
        .filter(|key| !server_keys().any(|known| known == key.as_str()))
        .filter_map(|key| {
            let (distance, like) = server_keys()
                .map(|known| (edit_distance(key, known), known))
                .min()?;
            (distance <= 2).then(|| (key.clone(), like))
        })
        .collect()
}

/// The Flask image's keys the server reads too.
const FLASK_KEYS: [&str; 2] = ["use_apache", "apache_config"];

/// Every top-level server key: `mode`, [`KEYS`], and the Flask image's two.
fn server_keys() -> impl Iterator<Item = &'static str> {
    std::iter::once("mode")
        .chain(KEYS.iter().map(|key| key.name))
        .chain(FLASK_KEYS)
}

/// The Levenshtein distance between two keys (they are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// The API key: visible ASCII without spaces (a key read from a file with its newline
/// would never match a header). Errors never show the value.
fn api_key(r: &Reader, value: &Value) -> Result<Secret, Error> {
    match value.as_str() {
        Some(key) if !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Secret(key.to_string()))
        }
        _ => Err(Error::config(
            r.source,
            format!(
                "key `api_key`: expected a non-empty string of visible ASCII characters \
                 without spaces, found {} (the value is not shown)",
                short_kind(value)
            ),
        )),
    }
}

fn watchdog(r: &Reader, value: &Value) -> Result<Watchdog, Error> {
    let mut w = Watchdog::default();
    if let Some(on) = value.as_bool() {
        w.enabled = Some(on);
        return Ok(w);
    }
    let keys = [
        "enabled",
        "interval_s",
        "timeout_s",
        "failures",
        "request_threshold_s",
        "request_average",
    ];
    if !value.is_object() {
        return Err(r.fail("watchdog", "true, false or an object", value));
    }
    let map = r.object("watchdog", value, &keys)?;
    if let Some(v) = present(map, "enabled") {
        w.enabled = Some(r.boolean("watchdog.enabled", v)?);
    }
    if let Some(v) = present(map, "interval_s") {
        w.interval_s = r.seconds("watchdog.interval_s", v, true)?;
    }
    if let Some(v) = present(map, "timeout_s") {
        w.timeout_s = r.seconds("watchdog.timeout_s", v, true)?;
    }
    if let Some(v) = present(map, "failures") {
        w.failures = r.whole("watchdog.failures", v, 1, 1000)? as u32;
    }
    if let Some(v) = present(map, "request_threshold_s") {
        w.request_threshold_s = Some(r.seconds("watchdog.request_threshold_s", v, true)?);
    }
    if let Some(v) = present(map, "request_average") {
        w.request_average = r.whole("watchdog.request_average", v, 1, 10_000)? as u32;
    }
    Ok(w)
}

fn cors(r: &Reader, value: &Value) -> Result<String, Error> {
    let pattern = r.string("cors_allow_origin_regex", value)?;
    match origin_regex(pattern) {
        Ok(_) => Ok(pattern.to_string()),
        Err(e) => Err(Error::config(
            r.source,
            format!("key `cors_allow_origin_regex`: not a regular expression: {e}"),
        )),
    }
}

fn python(r: &Reader, value: &Value) -> Result<PythonSettings, Error> {
    let map = r.object("python", value, &["virtualenv"])?;
    let virtualenv = present(map, "virtualenv")
        .map(|v| r.string("python.virtualenv", v).map(String::from))
        .transpose()?;
    Ok(PythonSettings { virtualenv })
}

fn batching(r: &Reader, value: &Value) -> Result<Batching, Error> {
    let map = r.object("batching", value, &["max_size", "timeout_s"])?;
    let (Some(size), Some(timeout)) = (present(map, "max_size"), present(map, "timeout_s")) else {
        return Err(r.fail(
            "batching",
            "an object with both `max_size` and `timeout_s` (or null: off)",
            value,
        ));
    };
    Ok(Batching {
        max_size: r.whole("batching.max_size", size, 1, MAX_BATCH)? as usize,
        timeout_s: r.seconds("batching.timeout_s", timeout, false)?,
    })
}

fn dev(r: &Reader, value: &Value) -> Result<DevSettings, Error> {
    let mut d = DevSettings::default();
    let map = r.object("dev", value, &["watch", "build_command"])?;
    if let Some(v) = present(map, "watch") {
        let list = v
            .as_array()
            .ok_or_else(|| r.fail("dev.watch", "an array of paths", v))?;
        for (i, item) in list.iter().enumerate() {
            d.watch
                .push(r.string(&format!("dev.watch[{i}]"), item)?.to_string());
        }
    }
    if let Some(v) = present(map, "build_command") {
        d.build_command = Some(r.string("dev.build_command", v)?.to_string());
    }
    Ok(d)
}

/// The default `io_threads` for `cpus` CPUs: one for every two, rounded up, at most
/// [`MAX_IO_THREADS`]. The other half is the app's pool's: measured on 2 CPUs (the bench's
/// app, which does nothing), one I/O thread served more requests than two at less CPU
/// each and half the p99, and an app that does work needs the cores more
/// (docs/PERFORMANCE.md#io-threads).
fn io_threads_for(cpus: usize) -> usize {
    cpus.div_ceil(2).clamp(1, MAX_IO_THREADS as usize)
}

/// The CPUs this process may use: its CPU affinity and its cgroup's CPU quota (a
/// container's `--cpus`), as `std::thread::available_parallelism` reads them.
fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The memory this process may use, in bytes, and where that came from: the lowest
/// `memory.max` of its cgroup and the cgroups above it (cgroup v2; v1's
/// `memory.limit_in_bytes`), else the machine's physical memory.
fn usable_memory() -> (u64, String) {
    let page = sysconf_value(libc::_SC_PAGESIZE);
    let machine = sysconf_value(libc::_SC_PHYS_PAGES).saturating_mul(page);
    match cgroup_memory_limit() {
        Some((limit, path)) if limit < machine => (limit, format!("{limit} bytes ({path})")),
        _ => (
            machine,
            format!("{machine} bytes (the machine's memory; no lower cgroup limit)"),
        ),
    }
}

/// `sysconf(name)`, 0 when unknown.
fn sysconf_value(name: libc::c_int) -> u64 {
    // SAFETY: sysconf reads a system value and has no memory effects.
    let value = unsafe { libc::sysconf(name) };
    u64::try_from(value).unwrap_or(0)
}

/// The lowest memory limit of this process's cgroup and its parents, and the file it is in.
fn cgroup_memory_limit() -> Option<(u64, String)> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut lowest: Option<(u64, String)> = None;
    let mut consider = |path: String| {
        let limit = std::fs::read_to_string(&path)
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()?;
        if lowest.as_ref().is_none_or(|(l, _)| limit < *l) {
            lowest = Some((limit, path));
        }
        Some(())
    };
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (root, file) = match controllers {
            "" => ("/sys/fs/cgroup", "memory.max"),
            c if c.split(',').any(|c| c == "memory") => {
                ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
            }
            _ => continue,
        };
        let mut dir = std::path::PathBuf::from(path);
        loop {
            let relative = dir.to_string_lossy().trim_start_matches('/').to_string();
            let _ = consider(format!("{root}/{relative}/{file}").replace("//", "/"));
            if !dir.pop() {
                break;
            }
        }
    }
    lowest
}

/// This process's limit on open file descriptors (a worker inherits the supervisor's).
pub fn fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_cur
}

fn short_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::lookup::env_subdirectories;
    use super::*;
    use std::path::Path;

    fn root_config() -> Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("config.json at the root"))
            .expect("config.json is JSON")
    }

    #[test]
    fn root_config_json_equals_the_built_in_defaults() {
        assert_eq!(root_config(), Settings::default().to_json(false));
        let parsed = Settings::from_json(&root_config(), "config.json").expect("valid");
        assert_eq!(parsed, Settings::default());
    }

    #[test]
    fn io_threads_default_to_one_for_every_two_cpus() {
        let chosen = [1, 2, 3, 4, 16, 64, 200].map(io_threads_for);
        assert_eq!(chosen, [1, 1, 2, 2, 8, 32, 64]);
    }

    #[test]
    fn subdirectories_are_deepest_first_with_app_id_combinations() {
        assert_eq!(
            env_subdirectories("production/eu", Some("shop")),
            [
                "production/eu/shop",
                "shop/production/eu",
                "production/eu",
                "shop/production",
                "production",
                "shop",
                ""
            ]
        );
        assert_eq!(env_subdirectories("dev", None), ["dev", ""]);
    }

    #[test]
    fn mode_decides_timeout_and_watchdog_unless_set() {
        let prod = Settings::from_json(&json!({"use_apache": true}), "t").expect("valid");
        assert_eq!(prod.mode, Mode::Production);
        assert_eq!(prod.request_timeout(), Some(Duration::from_secs(60)));
        assert!(prod.watchdog_enabled());
        let dev = Settings::default();
        assert_eq!(dev.request_timeout(), None);
        assert!(!dev.watchdog_enabled());
        assert_eq!(dev.pool_threads(), 1);
        let off = Settings::from_json(
            &json!({"mode": "production", "request_timeout_s": 0, "watchdog": false}),
            "t",
        )
        .expect("valid");
        assert_eq!(off.request_timeout(), None);
        assert!(!off.watchdog_enabled());
    }

    #[test]
    fn batching_takes_both_keys_within_their_bounds() {
        let on = Settings::from_json(
            &json!({"batching": {"max_size": 8, "timeout_s": 0.05}}),
            "t",
        )
        .expect("valid");
        assert_eq!(
            on.batching,
            Some(Batching {
                max_size: 8,
                timeout_s: 0.05
            })
        );
        assert_eq!(on.to_json(false)["batching"]["max_size"], 8);
        let off = Settings::from_json(&json!({"batching": null}), "t").expect("valid");
        assert_eq!(off.batching, None);
        for bad in [
            json!({"max_size": 8}),
            json!({"max_size": 0, "timeout_s": 0.05}),
            json!({"max_size": 2000, "timeout_s": 0.05}),
            json!({"max_size": 8, "timeout_s": -1}),
            json!({"max_size": 8, "timeout_s": 0.05, "size": 3}),
            json!(true),
        ] {
            let error = Settings::from_json(&json!({ "batching": bad }), "t")
                .expect_err("refused")
                .to_string();
            assert!(error.contains("`batching"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_environment_chooses_the_mode_unless_the_config_sets_it() {
        for (env, mode) in [
            ("production", Mode::Production),
            ("production/eu", Mode::Production),
            ("dev", Mode::Dev),
            ("staging", Mode::Dev),
            ("productionish", Mode::Dev),
        ] {
            let loaded = Loaded::from_value(json!({}), None, env).expect("valid");
            assert_eq!(loaded.settings.mode, mode, "{env}");
            assert_eq!(
                loaded.mode_origin(),
                format!("from the environment `{env}`")
            );
        }
        let set = Loaded::from_value(json!({"mode": "dev"}), None, "production").expect("ok");
        assert_eq!(set.settings.mode, Mode::Dev);
        assert_eq!(set.mode_origin(), "set by `mode` in built-in defaults");
        let apache = Loaded::from_value(json!({"use_apache": true}), None, "dev").expect("ok");
        assert_eq!(apache.settings.mode, Mode::Production);
        // A command-line override keeps the environment's choice.
        let mut overridden = Loaded::from_value(json!({}), None, "production").expect("ok");
        overridden
            .set("port", json!(8080), "--port")
            .expect("valid");
        assert_eq!(overridden.settings.mode, Mode::Production);
        // The worker gets the mode written out.
        assert_eq!(overridden.effective()["mode"], "production");
    }

    #[test]
    fn relative_paths_in_a_file_are_taken_from_its_directory() {
        let dir = std::env::temp_dir().join(format!("msr-paths-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("config/dev")).expect("mkdir");
        let file = dir.join("config/dev/config.json");
        let text =
            r#"{"app": "../../target/libhello.so", "dev": {"watch": ["../../src", "/abs"]}}"#;
        std::fs::write(&file, text).expect("write");
        let loaded = Loaded::read(&file, "dev").expect("valid");
        let from = dir.join("config/dev");
        assert_eq!(
            loaded.settings.app,
            Some(from.join("../../target/libhello.so"))
        );
        assert_eq!(
            loaded.settings.dev.watch,
            [
                from.join("../../src").display().to_string(),
                "/abs".to_string()
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_near_a_server_key_are_found_and_others_left_alone() {
        let written: Vec<String> = Settings::default()
            .to_json(false)
            .as_object()
            .expect("an object")
            .keys()
            .cloned()
            .collect();
        for key in &written {
            assert!(
                server_keys().any(|known| known == key),
                "{key} is not a server key"
            );
        }
        assert_eq!(written.len() + FLASK_KEYS.len(), server_keys().count());
        let config = json!({
            "thread": 4, "request_timeout": 5, "threads": 2, "rums_limit": 3,
            "greeting": "hi", "modes": 1, "log_formats": "json"
        });
        let mut found = near_misses(&config);
        found.sort();
        assert_eq!(
            found,
            [
                ("log_formats".to_string(), "log_format"),
                ("modes".to_string(), "mode"),
                ("request_timeout".to_string(), "request_timeout_s"),
                ("thread".to_string(), "threads"),
            ]
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn flask_thread_key_is_the_same_as_threads() {
        let s = Settings::from_json(
            &json!({"apache_config": {"wsgi_worker_threads_count": 4, "other": 1}}),
            "t",
        )
        .expect("valid");
        assert_eq!(s.threads, 4);
        let err = Settings::from_json(
            &json!({"threads": 3, "apache_config": {"wsgi_worker_threads_count": 4}}),
            "f.json",
        )
        .expect_err("disagreement");
        assert_eq!(
            err.to_string(),
            "config error: f.json: key `apache_config.wsgi_worker_threads_count`: \
             4 disagrees with `threads` 3"
        );
    }

    #[test]
    fn effective_config_resolves_the_mode_dependent_keys_and_keeps_app_keys() {
        let loaded =
            Loaded::from_value(json!({"mode": "production", "rums_limit": 2}), None, "dev")
                .expect("ok");
        let effective = loaded.effective();
        assert_eq!(effective["rums_limit"], 2);
        assert_eq!(effective["request_timeout_s"], 60.0);
        assert_eq!(effective["watchdog"]["enabled"], true);
        // The effective object is itself a valid config with the same settings.
        let again = Settings::from_json(&effective, "t").expect("valid");
        assert_eq!(again.request_timeout(), loaded.settings.request_timeout());
    }

    /// Any JSON value: nulls, booleans, numbers of every kind, strings, arrays, objects.
    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            "[ -~]{0,12}".prop_map(Value::from),
            prop_oneof![Just("dev"), Just("production"), Just("json"), Just("warn")]
                .prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Every supervisor key of the defaults file, with its sub-keys.
    fn key_paths() -> Vec<Vec<String>> {
        let mut paths = Vec::new();
        for (key, value) in root_config().as_object().expect("object") {
            paths.push(vec![key.clone()]);
            if let Some(inner) = value.as_object() {
                for sub in inner.keys() {
                    paths.push(vec![key.clone(), sub.clone()]);
                }
            }
        }
        paths
    }

    #[test]
    fn no_config_makes_validation_panic_and_every_error_names_its_key() {
        use proptest::test_runner::{Config, TestRunner};
        let paths = key_paths();
        let mut runner = TestRunner::new(Config {
            cases: 20_000,
            failure_persistence: None,
            ..Config::default()
        });
        // One key of the defaults file set to any value.
        let strategy = (0..paths.len(), any_json());
        runner
            .run(&strategy, |(index, value)| {
                let path = &paths[index];
                let mut config = root_config();
                let mut slot = &mut config;
                for key in path {
                    slot = &mut slot[key.as_str()];
                }
                *slot = value.clone();
                if let Err(e) = Settings::from_json(&config, "fuzz.json") {
                    let text = e.to_string();
                    proptest::prop_assert!(
                        text.contains(&format!("`{}", path[0])),
                        "{path:?} = {value}: {text}"
                    );
                    proptest::prop_assert!(
                        path[0] != "api_key"
                            || !text.contains(&value.to_string())
                            || value.is_null(),
                        "the key's value shows in {text}"
                    );
                }
                Ok(())
            })
            .expect("no panic, and errors name the key");
        // Whole documents of any shape.
        let mut runner = TestRunner::new(Config {
            cases: 20_000,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&any_json(), |value| {
                let _ = Settings::from_json(&value, "fuzz.json");
                let _ = Loaded::from_value(value, None, "production");
                Ok(())
            })
            .expect("no panic");
    }
}

//! The command line. Every flag has an environment-variable twin, listed by `--help`.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::config::{self, Loaded, Lookup};
use crate::control;
use crate::error::Error;
use crate::scaffold::{self, Lang};
use crate::supervisor::{self, Supervisor};
use crate::warn;
use crate::worker;

#[derive(Parser)]
#[command(
    name = "microservice-rust",
    version,
    about = "Serves an HTTP app built as a dynamic library: a supervisor, worker processes, \
             a thread pool with request timeouts, and a reloading dev mode.",
    after_help = "The first directory with a config.json wins: --config FILE alone; each \
                  directory of CONFIG_PATH; /opt/$MICROSERVICE_NAME/$CONFIG_DIR/<ENV> and its \
                  parents (with MICROSERVICE_APP_ID); ./$CONFIG_DIR/<ENV> and its parents \
                  from the working directory; /etc/microservice-rust/config.json. \
                  CONFIG_DIR defaults to `config`.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the app (the default).
    Run(RunArgs),
    /// Print the resolved config and the file it came from; exit 0, or 78 when it is bad.
    CheckConfig(ConfigArgs),
    /// Exit 0 if the running service answers 200 on /readyz (for Docker's HEALTHCHECK).
    Healthcheck(HealthArgs),
    /// Write a new app into DIR: the handler, configs for dev and production, a Dockerfile,
    /// a README, and this version's SDK (Rust) or header (C), which build with no registry;
    /// or a WSGI app (Python) with its requirements.txt.
    New(NewArgs),
    /// Write this version's app SDK (the Rust crate, and the C header in include/) into
    /// DIR, replacing one written before: run it when you upgrade the server.
    Sdk {
        /// Where the SDK goes; an app from `new` has it in `microservice-rust/`.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Internal: a worker process, started by the supervisor.
    #[command(hide = true)]
    Worker,
}

#[derive(Args, Clone)]
struct ConfigArgs {
    /// The environment: selects config/<ENV>/config.json (see the order below) and, where
    /// the config sets no `mode`, the mode: production for `production` and below
    /// (`production/eu`), dev for any other.
    #[arg(long, env = "MICROSERVICE_ENV", value_name = "ENV")]
    env: Option<String>,
    /// Use this config file alone instead of looking one up.
    #[arg(long, env = "MICROSERVICE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The port to listen on (overrides `port`).
    #[arg(long, env = "MICROSERVICE_PORT", value_name = "PORT")]
    port: Option<u16>,
    /// The address to listen on (overrides `host`).
    #[arg(long, env = "MICROSERVICE_HOST", value_name = "ADDRESS")]
    host: Option<IpAddr>,
    /// The app to serve (overrides `app`): a library (`libapp.so`), or a Python WSGI app
    /// (`main.py`, `main.py:make_app()`, `package.module:app`).
    #[arg(long, env = "MICROSERVICE_APP", value_name = "APP")]
    app: Option<PathBuf>,
}

#[derive(Args)]
struct NewArgs {
    /// The new app's directory; it must not exist or be empty.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// The crate and library name (lower-case letters, digits, - and _); default: DIR's name.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The app's language.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
    /// With `--lang python`: a Flask app instead of plain WSGI.
    #[arg(long)]
    flask: bool,
}

#[derive(Args)]
struct HealthArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The port the service listens on; else the address PID 1 recorded, else the
    /// config's port.
    #[arg(long, env = "MICROSERVICE_PORT", value_name = "PORT")]
    port: Option<u16>,
}

/// Parses the command line and runs it; returns the exit code.
pub fn try_main() -> Result<i32, Error> {
    // The supervisor starts its workers as `microservice-rust worker` with nothing else:
    // they skip the parser (and keep its code out of their memory).
    let mut args = std::env::args_os().skip(1);
    if let (Some(word), None) = (args.next(), args.next()) {
        if word == control::WORKER_COMMAND {
            return worker::run();
        }
    }
    let cli = Cli::parse();
    match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::CheckConfig(args)) => check_config(args),
        Some(Command::Healthcheck(args)) => healthcheck(args),
        Some(Command::New(args)) => new_app(args),
        Some(Command::Sdk { dir }) => write_sdk(&dir),
        Some(Command::Worker) => worker::run(),
    }
}

fn new_app(args: NewArgs) -> Result<i32, Error> {
    let files = scaffold::new_app(&args.dir, args.name.as_deref(), args.lang, args.flask)?;
    let dir = args.dir.display();
    let build = args.lang.build_command();
    let mut out = format!("wrote {} files into {dir}:\n", files.len());
    for file in &files {
        out.push_str(&format!("  {}\n", file.display()));
    }
    out.push_str(&format!(
        "next: cd {dir} && {build}, then run the command in {dir}/README.md\n"
    ));
    print(&out)
}

fn write_sdk(dir: &std::path::Path) -> Result<i32, Error> {
    let files = scaffold::write_sdk(dir)?;
    let mut out = format!(
        "wrote the app SDK of microservice-rust {} into {} ({} files; the image has it in {} \
         and {})\n",
        env!("CARGO_PKG_VERSION"),
        dir.display(),
        files.len(),
        scaffold::IMAGE_SDK,
        scaffold::IMAGE_HEADER
    );
    for file in &files {
        out.push_str(&format!("  {}\n", file.display()));
    }
    print(&out)
}

/// Writes `text` on stdout; a closed stdout is not worth a failure.
fn print(text: &str) -> Result<i32, Error> {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(0)
}

fn resolve(args: &ConfigArgs) -> Result<Loaded, Error> {
    Lookup::from_environment(args.config.clone(), args.env.clone()).resolve()
}

fn run(args: RunArgs) -> Result<i32, Error> {
    let loaded = resolve_run(&args)?;
    // SIGHUP re-reads the config the same way, with the same command line.
    Supervisor::run(loaded, Box::new(move || resolve_run(&args)))
}

/// The config for `run`: looked up, with the command line's overrides and the app path.
fn resolve_run(args: &RunArgs) -> Result<Loaded, Error> {
    let mut loaded = resolve(&args.config)?;
    from_environment(&mut loaded)?;
    if let Some(port) = args.port {
        loaded.set("port", json!(port), "--port")?;
    }
    if let Some(host) = args.host {
        loaded.set("host", json!(host.to_string()), "--host")?;
    }
    if let Some(app) = &args.app {
        loaded.set("app", json!(app.display().to_string()), "--app")?;
    }
    let name = std::env::var("MICROSERVICE_NAME").ok();
    let app = config::find_app(loaded.settings.app.as_deref(), name.as_deref())?;
    // Refused before anything is bound or started (the worker's load tells the rest).
    config::check_app(&config::App::parse(&app))?;
    loaded.set("app", json!(app.display().to_string()), "the app path")?;
    Ok(loaded)
}

/// The environment's say over the config file: `MICROSERVICE_LOG` sets `log_level`, and
/// `API_KEY` sets `api_key` (a secret is better kept out of files).
fn from_environment(loaded: &mut Loaded) -> Result<(), Error> {
    for (variable, key) in [("MICROSERVICE_LOG", "log_level"), ("API_KEY", "api_key")] {
        if let Some(value) = std::env::var_os(variable) {
            let value = value.to_string_lossy().into_owned();
            loaded.set(key, json!(value), variable)?;
        }
    }
    Ok(())
}

fn check_config(args: ConfigArgs) -> Result<i32, Error> {
    crate::log::set_role("check-config");
    let lookup = Lookup::from_environment(args.config, args.env);
    let mut loaded = lookup.resolve()?;
    from_environment(&mut loaded)?;
    for warning in loaded.warnings() {
        warn!("config: {warning}");
    }
    let report = json!({
        "source": loaded.source_name(),
        "env": lookup.env,
        "mode_from": loaded.mode_origin(),
        "io_threads_from": loaded.settings.io_threads_origin(),
        "max_body_memory_from": loaded.settings.max_body_memory_origin(),
        "config": config::redact(&loaded.effective()),
    });
    let text = serde_json::to_string_pretty(&report).expect("a JSON value always serializes");
    println!("{text}");
    Ok(0)
}

/// Probes `/readyz` of the service: at `--port` on the loopback, else at the address the
/// container's supervisor (PID 1) recorded, else at the port its config gives.
fn healthcheck(args: HealthArgs) -> Result<i32, Error> {
    let address = match args.port {
        Some(port) => SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)),
        None => match recorded_address() {
            Some(address) => address,
            None => {
                let port = resolve(&args.config)?.settings.port;
                SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port))
            }
        },
    };
    match probe_readyz(address) {
        Ok(200) => Ok(0),
        Ok(status) => {
            eprintln!("/readyz at {address} answered {status}");
            Ok(1)
        }
        Err(e) => {
            eprintln!("/readyz at {address}: {e}");
            Ok(1)
        }
    }
}

fn recorded_address() -> Option<SocketAddr> {
    std::fs::read_to_string(supervisor::address_file(1))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// GET /readyz; the status code it answers.
fn probe_readyz(address: SocketAddr) -> std::io::Result<u16> {
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))
}

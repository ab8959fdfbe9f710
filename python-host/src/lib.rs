//! The Python host of microservice-rust: a WSGI (PEP 3333) app served by the worker as an
//! app like any other.
//!
//! The worker loads this library through the same ABI as a native app when the config's
//! `app` names a Python file or module (`main.py`, `main.py:make_app()`, `shop.main:app`);
//! the host embeds CPython, imports the app and calls it on the pool's threads. So the
//! server binary and the SDK have no Python dependency, and every guarantee of the server
//! (deadlines, the watchdog, drain, recycling, metrics, request IDs) holds for Python apps.
//!
//! In reading order:
//!
//! * [`interpreter`]: starting CPython: libpython's symbols made global (so that C extension
//!   modules load), the virtualenv, `sys.path`, the `microservice_rust` module, `print` and
//!   `logging` into the server's log; importing the app.
//! * [`wsgi`]: one request: the environ, `start_response` and `write`, the iterable sent
//!   whole or streamed, `close()` always called.
//! * [`deadline`]: a request past its deadline gets its Python thread back: an exception
//!   raised in the thread that runs it, and `time.sleep` cut short.
//! * [`module`]: what `import microservice_rust` gives the app.
//!
//! The GIL: each pool thread keeps one Python thread state for its whole life (so
//! `threading.local` data lives as long as the thread) and holds the GIL only while it runs
//! the app's Python code; the I/O threads never touch Python.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod deadline;
mod interpreter;
mod module;
mod wsgi;

use std::time::Duration;

use microservice_rust::{export_app, App, Config, Request, Response};
use pyo3::prelude::*;

/// The WSGI app, imported and ready.
pub struct Host {
    app: interpreter::Imported,
    deadlines: deadline::Deadlines,
    environ: wsgi::Constants,
}

impl App for Host {
    fn new(config: &Config) -> Result<Self, String> {
        let settings = interpreter::Settings::from_config(config)?;
        interpreter::start(&settings)?;
        interpreter::keep_thread_state();
        Python::attach(|py| {
            let deadlines = deadline::Deadlines::start(py)?;
            module::install(py, &settings, config.json())?;
            let app = interpreter::import_app(py, &settings)?;
            let environ = wsgi::Constants::new(py, &settings).map_err(|e| e.to_string())?;
            Ok(Host {
                app,
                deadlines,
                environ,
            })
        })
    }

    fn handle(&self, request: &Request) -> Response {
        interpreter::keep_thread_state();
        Python::attach(|py| wsgi::serve(py, &self.app, &self.environ, &self.deadlines, request))
    }

    fn health(&self) -> Result<(), String> {
        let Some(health) = &self.app.health else {
            return Ok(());
        };
        interpreter::keep_thread_state();
        Python::attach(|py| match health.call0(py) {
            Ok(answer) if answer.bind(py).is_truthy().unwrap_or(false) || answer.is_none(py) => {
                Ok(())
            }
            Ok(answer) => Err(format!(
                "health() answered {}",
                interpreter::short(answer.bind(py))
            )),
            Err(e) => Err(format!("health() raised {}", interpreter::describe(py, &e))),
        })
    }

    fn shutdown(&self) {
        interpreter::keep_thread_state();
        Python::attach(interpreter::at_exit);
    }

    /// A request past its deadline has an exception raised in its thread and its sleeps
    /// cut short (see [`deadline`]); code that catches it, or a thread stuck in C, is
    /// written off after this.
    const DEADLINE_GRACE: Duration = Duration::from_secs(2);
}

export_app!(Host);

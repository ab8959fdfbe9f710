//! Starting CPython inside the worker and importing the app.
//!
//! * **libpython's symbols are made global.** The worker opens an app with `RTLD_LOCAL`, so
//!   the libpython this library links against is loaded local too, and a C extension module
//!   (`_ctypes`, `_decimal`, numpy), which expects `Py*` symbols from the process, would
//!   fail with "undefined symbol". Before starting Python the host opens libpython again
//!   with `RTLD_NOLOAD | RTLD_GLOBAL`, which promotes the copy already loaded.
//! * **Which packages.** The virtualenv in `VIRTUAL_ENV`, else `python.virtualenv` of the
//!   config, else the interpreter's own site-packages: the embedded interpreter's
//!   `sys.executable` is the virtualenv's `bin/python` (or the Python the host was built
//!   against), so that CPython finds `pyvenv.cfg` and its `site-packages` as `python`
//!   itself would, and `subprocess`/`multiprocessing` start Python, not the server.
//! * **Signals stay the worker's**: Python installs no handler of its own.
//! * **The app's output.** `sys.stdout` and `sys.stderr` write lines into the server's log
//!   (info and warn), `logging`'s root logger has a handler that does the same at each
//!   record's level, so `print` and `logging` reach the log as lines, tagged with the
//!   request. (The worker's stdout is the access log: nothing of the app's goes there.)

use std::cell::Cell;
use std::ffi::{c_void, CStr, CString};
use std::path::{Path, PathBuf};

use microservice_rust::spec::{App as Spec, PythonSource};
use microservice_rust::Config;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyModule};

/// The Python the host was built against (see build.rs).
const BUILT_EXECUTABLE: &str = env!("MSR_PYTHON_EXECUTABLE");
const BUILT_VERSION: &str = env!("MSR_PYTHON_VERSION");

/// Python code of the host's own, run once at start (see the file).
const BOOTSTRAP: &CStr =
    match CStr::from_bytes_with_nul(concat!(include_str!("host.py"), "\0").as_bytes()) {
        Ok(code) => code,
        Err(_) => panic!("host.py holds a NUL"),
    };

/// What the host needs from the config.
pub struct Settings {
    /// What `app` names.
    pub source: PythonSource,
    pub callable: Option<String>,
    /// `app` as written, for messages.
    pub named: String,
    pub virtualenv: Option<PathBuf>,
    /// The pool's threads: `wsgi.multithread` when more than one.
    pub threads: u64,
    pub workers: u64,
    pub host: String,
    pub port: u16,
    /// `log_level`, for `logging`'s root logger.
    pub log_level: String,
    /// Dev mode: no bytecode is written (see `start`).
    pub dev: bool,
}

impl Settings {
    pub fn from_config(config: &Config) -> Result<Settings, String> {
        let value = config.value()?;
        let named = value["app"].as_str().unwrap_or("").to_string();
        let Spec::Python(python) = Spec::parse(Path::new(&named)) else {
            return Err(format!(
                "`app` is {named:?}: the Python host serves a `.py` file or a `module:callable`"
            ));
        };
        let production = value["mode"].as_str() == Some("production");
        let virtualenv = std::env::var_os("VIRTUAL_ENV")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| value["python"]["virtualenv"].as_str().map(PathBuf::from));
        Ok(Settings {
            source: python.source,
            callable: python.callable,
            named,
            virtualenv,
            threads: match production {
                true => value["threads"].as_u64().unwrap_or(1),
                false => 1,
            },
            workers: value["workers"].as_u64().unwrap_or(1),
            host: value["host"].as_str().unwrap_or("0.0.0.0").to_string(),
            port: value["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(80),
            log_level: value["log_level"].as_str().unwrap_or("info").to_string(),
            dev: !production,
        })
    }
}

/// Starts the interpreter; the calling thread holds the GIL afterwards.
pub fn start(settings: &Settings) -> Result<(), String> {
    // SAFETY: asks whether the interpreter runs; any thread may.
    if unsafe { ffi::Py_IsInitialized() } != 0 {
        return Err("Python is already running in this process".into());
    }
    make_libpython_global()?;
    let executable = match &settings.virtualenv {
        Some(venv) => virtualenv_python(venv)?,
        None => PathBuf::from(BUILT_EXECUTABLE),
    };
    // SAFETY: the interpreter does not run yet (asked above), and `create` calls this once.
    // PyConfig is a plain struct that PyConfig_InitPythonConfig fills in before
    // `assume_init`; the strings set below are copied by CPython (`text` outlives the calls);
    // the config is cleared after use (not on the early return for a NUL in the path, which
    // only leaks it); `err_msg`, when not NULL, is a NUL-terminated static string.
    unsafe {
        let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::uninit();
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let mut config = config.assume_init();
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        config.configure_c_stdio = 0;
        // In dev a file edited within the second of the last import, to the same size,
        // would pass for the `.pyc` written then (its check is mtime and size): the app's
        // code is compiled afresh at each reload instead.
        if settings.dev {
            config.write_bytecode = 0;
        }
        let mut status = ffi::PyStatus_Ok();
        if !executable.as_os_str().is_empty() {
            let text = CString::new(executable.as_os_str().as_encoded_bytes())
                .map_err(|_| "a NUL in the Python executable's path".to_string())?;
            status =
                ffi::PyConfig_SetBytesString(&mut config, &mut config.executable, text.as_ptr());
            if ffi::PyStatus_Exception(status) == 0 {
                status = ffi::PyConfig_SetBytesString(
                    &mut config,
                    &mut config.program_name,
                    text.as_ptr(),
                );
            }
        }
        if ffi::PyStatus_Exception(status) == 0 {
            status = ffi::Py_InitializeFromConfig(&config);
        }
        ffi::PyConfig_Clear(&mut config);
        if ffi::PyStatus_Exception(status) != 0 {
            let reason = match status.err_msg.is_null() {
                true => "no reason given".to_string(),
                false => CStr::from_ptr(status.err_msg)
                    .to_string_lossy()
                    .into_owned(),
            };
            return Err(format!("Python did not start: {reason}"));
        }
    }
    Ok(())
}

/// Opens the libpython this library was linked against once more, `RTLD_GLOBAL`: see the
/// module docs.
fn make_libpython_global() -> Result<(), String> {
    // SAFETY: `Dl_info` is plain data, valid all zeros. dladdr reads the loader's tables
    // about an address of a loaded function, and fills `info`; `dli_fname` (checked not
    // NULL) is the loader's NUL-terminated path of that object. dlopen with RTLD_NOLOAD only
    // changes the flags of an object already loaded (the handle is kept on purpose).
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        let address = ffi::Py_IsInitialized as *const c_void;
        if libc::dladdr(address, &mut info) == 0 || info.dli_fname.is_null() {
            return Err("cannot find the libpython the Python host is linked against".into());
        }
        let handle = libc::dlopen(
            info.dli_fname,
            libc::RTLD_NOW | libc::RTLD_GLOBAL | libc::RTLD_NOLOAD,
        );
        if handle.is_null() {
            let library = CStr::from_ptr(info.dli_fname).to_string_lossy();
            return Err(format!(
                "cannot make {library}'s symbols global, which C extension modules need"
            ));
        }
    }
    Ok(())
}

/// The virtualenv's `bin/python`, after checking that it is one, of this Python's version.
fn virtualenv_python(venv: &Path) -> Result<PathBuf, String> {
    let named = |problem: &str| format!("the virtualenv {}: {problem}", venv.display());
    let cfg = std::fs::read_to_string(venv.join("pyvenv.cfg"))
        .map_err(|e| named(&format!("no pyvenv.cfg there ({e}): not a virtualenv")))?;
    let version = cfg.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        matches!(key.trim(), "version" | "version_info").then(|| value.trim().to_string())
    });
    if let Some(version) = version {
        let minor: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
        if minor != BUILT_VERSION {
            return Err(named(&format!(
                "made by Python {version}, but the Python host runs Python {BUILT_VERSION}: \
                 make it with python{BUILT_VERSION} -m venv"
            )));
        }
    }
    Ok(venv.join("bin/python"))
}

thread_local! {
    /// Whether this thread keeps a Python thread state of its own.
    static KEPT: Cell<bool> = const { Cell::new(false) };
}

/// Gives the calling thread a Python thread state for the rest of its life, the GIL not
/// held: later `Python::attach` calls on it reuse that state instead of making and
/// destroying one each time (which would cost each request, and empty `threading.local`).
pub fn keep_thread_state() {
    if KEPT.get() {
        return;
    }
    // SAFETY: the interpreter runs (the host started it in `new`). Ensure makes this
    // thread's state (or takes the GIL with the one it has); SaveThread lets the GIL go and
    // keeps the state, whose count stays above zero so that it is never destroyed.
    unsafe {
        ffi::PyGILState_Ensure();
        ffi::PyEval_SaveThread();
    }
    KEPT.set(true);
}

/// The app, imported.
pub struct Imported {
    /// The WSGI callable.
    pub callable: Py<PyAny>,
    /// The app module's `health()`, when it has one: asked by `/healthz`.
    pub health: Option<Py<PyAny>>,
}

/// Imports the app and finds its callable; errors name the file, the callable and the
/// exception with where it was raised.
pub fn import_app(py: Python<'_>, settings: &Settings) -> Result<Imported, String> {
    let host = py
        .import("_msr_host")
        .map_err(|e| format!("the Python host's own code failed: {}", describe(py, &e)))?;
    let (source, kind) = match &settings.source {
        PythonSource::File(file) => {
            let absolute = std::path::absolute(file).unwrap_or_else(|_| file.clone());
            (absolute.display().to_string(), "file")
        }
        PythonSource::Module(module) => (module.clone(), "module"),
    };
    let module = host
        .getattr("load")
        .and_then(|load| load.call1((source.as_str(), kind)))
        .map_err(|e| format!("cannot import {source}: {}", describe(py, &e)))?;
    let callable = find_callable(py, &module, settings, &source)?;
    let health = module
        .getattr("health")
        .ok()
        .filter(|h| h.is_callable())
        .map(Bound::unbind);
    Ok(Imported { callable, health })
}

fn find_callable(
    py: Python<'_>,
    module: &Bound<'_, PyAny>,
    settings: &Settings,
    source: &str,
) -> Result<Py<PyAny>, String> {
    let names = match &settings.callable {
        Some(name) => vec![name.clone()],
        None => vec!["app".to_string(), "application".to_string()],
    };
    for name in &names {
        let (attribute, call) = match name.strip_suffix("()") {
            Some(factory) => (factory, true),
            None => (name.as_str(), false),
        };
        let Ok(found) = module.getattr(attribute) else {
            continue;
        };
        let found = match call {
            true => found
                .call0()
                .map_err(|e| format!("{source}: {name} raised {}", describe(py, &e)))?,
            false => found,
        };
        if !found.is_callable() {
            return Err(format!(
                "{source}: `{name}` is {}, not a WSGI callable",
                short(&found)
            ));
        }
        return Ok(found.unbind());
    }
    Err(match &settings.callable {
        Some(name) => format!("{source} has no `{}`", name.trim_end_matches("()")),
        None => format!(
            "{source} defines neither `app` nor `application`: name the callable as \
             {}:NAME",
            settings.named
        ),
    })
}

/// An exception as one line: `Type: message (at file:line)`, the place being the last
/// frame of its traceback.
pub fn describe(py: Python<'_>, error: &PyErr) -> String {
    let kind = error
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    let value = error.value(py);
    // A SyntaxError's str() repeats the place; its `msg` is the message alone.
    let message = match error.is_instance_of::<pyo3::exceptions::PySyntaxError>(py) {
        true => value.getattr("msg").and_then(|m| m.str()),
        false => value.str(),
    };
    let message = message.map(|s| s.to_string()).unwrap_or_default();
    let mut line = match message.is_empty() {
        true => kind,
        false => format!("{kind}: {message}"),
    };
    if let Some((file, number)) = last_frame(py, error) {
        line.push_str(&format!(" (at {file}:{number})"));
    }
    line
}

/// The file and line of the last frame of an exception's traceback (for a SyntaxError,
/// where the syntax is wrong).
fn last_frame(py: Python<'_>, error: &PyErr) -> Option<(String, u64)> {
    let value = error.value(py);
    if error.is_instance_of::<pyo3::exceptions::PySyntaxError>(py) {
        let file: String = value.getattr("filename").ok()?.extract().ok()?;
        let line: u64 = value.getattr("lineno").ok()?.extract().ok()?;
        return Some((file, line));
    }
    let mut traceback = error.traceback(py)?.into_any();
    loop {
        let next = traceback.getattr("tb_next").ok()?;
        if next.is_none() {
            break;
        }
        traceback = next;
    }
    let line: u64 = traceback.getattr("tb_lineno").ok()?.extract().ok()?;
    let file: String = traceback
        .getattr("tb_frame")
        .and_then(|f| f.getattr("f_code"))
        .and_then(|c| c.getattr("co_filename"))
        .ok()?
        .extract()
        .ok()?;
    Some((file, line))
}

/// The whole traceback of an exception, as Python prints it.
pub fn traceback_text(py: Python<'_>, error: &PyErr) -> Option<String> {
    let format = py
        .import("traceback")
        .and_then(|t| t.getattr("format_exception"))
        .ok()?;
    let lines = format
        .call1((error.get_type(py), error.value(py), error.traceback(py)))
        .ok()?;
    let lines = lines.cast_into::<PyList>().ok()?;
    Some(lines.iter().map(|l| l.to_string()).collect::<String>())
}

/// A value as a message names it: its type, and its repr when short.
pub fn short(value: &Bound<'_, PyAny>) -> String {
    let kind = value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default();
    match value.repr().map(|r| r.to_string()) {
        Ok(repr) if repr.len() <= 60 => format!("{kind} {repr}"),
        _ => format!("a {kind}"),
    }
}

/// Runs what the app registered with `atexit` (its `logging.shutdown` too): the worker is
/// about to exit and no request is inside the app.
pub fn at_exit(py: Python<'_>) {
    if let Ok(atexit) = py.import("atexit") {
        let _ = atexit.call_method0("_run_exitfuncs");
    }
}

/// `microservice_rust.config` and the handler of `logging`, set up by host.py's `setup`.
pub fn setup_python(
    py: Python<'_>,
    module: &Bound<'_, PyModule>,
    settings: &Settings,
    config_json: &str,
) -> PyResult<()> {
    let host = PyModule::from_code(py, BOOTSTRAP, c"microservice_rust/host.py", c"_msr_host")?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("config_json", config_json)?;
    kwargs.set_item("log_level", &settings.log_level)?;
    kwargs.set_item(
        "app_dir",
        match &settings.source {
            PythonSource::File(file) => std::path::absolute(file)
                .ok()
                .and_then(|f| f.parent().map(|d| d.display().to_string())),
            PythonSource::Module(_) => std::env::current_dir()
                .ok()
                .map(|d| d.display().to_string()),
        },
    )?;
    host.getattr("setup")?
        .call((module,), Some(&kwargs))
        .map(drop)
}

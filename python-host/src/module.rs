//! `import microservice_rust`: what the host gives a Python app.
//!
//! ```python
//! import microservice_rust as msr
//!
//! msr.config["rums_limit"]                 # the resolved config (secrets as "***")
//! msr.info("counting rums")                # the server's log, tagged with the request
//! rums = msr.counter("rums_drunk_total", "Rums drunk, by user.", ["user"])
//! rums.inc(labels=["ann"], by=2)           # /metrics, summed over the workers
//! msr.cancelled()                          # the client left or the deadline passed
//! msr.request_id()                         # X-Request-ID of the request being answered
//! except msr.DeadlineExceeded: ...         # raised in a request past its deadline
//! ```

use std::time::Duration;

use microservice_rust::log::{self, Level};
use microservice_rust::metrics;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyModule, PyString};

use crate::deadline::{self, DeadlineExceeded};
use crate::interpreter::{self, Settings};
use crate::wsgi;

/// Makes the module, puts it in `sys.modules`, and sets up the app's output (host.py).
pub fn install(py: Python<'_>, settings: &Settings, config_json: &str) -> Result<(), String> {
    let built = || -> PyResult<Bound<'_, PyModule>> {
        let module = PyModule::new(py, "microservice_rust")?;
        module.add_function(wrap_pyfunction!(log_line, &module)?)?;
        for (name, level) in [
            ("debug", "debug"),
            ("info", "info"),
            ("warn", "warn"),
            ("warning", "warn"),
            ("error", "error"),
        ] {
            let log = module.getattr("log")?;
            let partial = py.import("functools")?.getattr("partial")?;
            let bound = partial.call((log,), Some(&[("level", level)].into_py_dict(py)?))?;
            module.add(name, bound)?;
        }
        module.add_function(wrap_pyfunction!(cancelled, &module)?)?;
        module.add_function(wrap_pyfunction!(request_id, &module)?)?;
        module.add_function(wrap_pyfunction!(counter, &module)?)?;
        module.add_function(wrap_pyfunction!(gauge, &module)?)?;
        module.add_function(wrap_pyfunction!(histogram, &module)?)?;
        module.add_function(wrap_pyfunction!(record, &module)?)?;
        module.add_function(wrap_pyfunction!(sleep, &module)?)?;
        module.add_class::<Counter>()?;
        module.add_class::<Gauge>()?;
        module.add_class::<Histogram>()?;
        module.add_class::<Lines>()?;
        module.add("DeadlineExceeded", py.get_type::<DeadlineExceeded>())?;
        // time.sleep ends at a request's deadline (see `deadline`).
        let time = py.import("time")?;
        module.add("_python_sleep", time.getattr("sleep")?)?;
        time.setattr("sleep", module.getattr("sleep")?)?;
        interpreter::setup_python(py, &module, settings, config_json)?;
        Ok(module)
    };
    built().map(drop).map_err(|e| {
        format!(
            "cannot set up the module microservice_rust: {}",
            interpreter::describe(py, &e)
        )
    })
}

/// A level by the server's name for it.
fn level(name: &str) -> PyResult<Level> {
    match name {
        "debug" => Ok(Level::Debug),
        "info" => Ok(Level::Info),
        "warn" | "warning" => Ok(Level::Warn),
        "error" => Ok(Level::Error),
        other => Err(PyValueError::new_err(format!(
            "log level {other:?}: expected debug, info, warn or error"
        ))),
    }
}

/// `log(message, level="info")`: one line in the server's log, tagged with the request
/// when called while answering one.
#[pyfunction]
#[pyo3(name = "log", signature = (message, level = "info"))]
fn log_line(message: &Bound<'_, PyAny>, level: &str) -> PyResult<()> {
    let level = self::level(level)?;
    log::log(level, &message.str()?.to_cow()?);
    Ok(())
}

/// `_log(levelno, message)`: a `logging` record's line, at its level.
#[pyfunction]
#[pyo3(name = "_log")]
fn record(levelno: i64, message: &str) {
    let level = match levelno {
        ..20 => Level::Debug,
        20..30 => Level::Info,
        30..40 => Level::Warn,
        _ => Level::Error,
    };
    log::log(level, message);
}

/// `cancelled()`: whether the request this thread answers is cancelled: its client left,
/// its deadline passed, or the worker gave up on it. False outside a request.
#[pyfunction]
fn cancelled() -> bool {
    wsgi::current(|request| request.is_cancelled()).unwrap_or(false)
}

/// `request_id()`: the ID of the request this thread answers (`X-Request-ID`), or None.
#[pyfunction]
fn request_id() -> Option<String> {
    wsgi::current(|request| request.id().to_string())
}

/// `time.sleep`, ended with `DeadlineExceeded` at the deadline of the request this thread
/// answers; Python's own outside a request.
#[pyfunction]
fn sleep(py: Python<'_>, seconds: &Bound<'_, PyAny>) -> PyResult<()> {
    let interrupt = wsgi::current_interrupt();
    let Some(interrupt) = interrupt else {
        let python = py.import("microservice_rust")?.getattr("_python_sleep")?;
        return python.call1((seconds,)).map(drop);
    };
    let seconds: f64 = seconds
        .extract()
        .map_err(|_| PyTypeError::new_err("sleep() takes a number of seconds"))?;
    if seconds.is_nan() {
        return Err(PyValueError::new_err("Invalid value NaN (not a number)"));
    }
    if seconds < 0.0 {
        return Err(PyValueError::new_err("sleep length must be non-negative"));
    }
    let time = Duration::try_from_secs_f64(seconds).ok();
    let ended = py.detach(|| interrupt.sleep(time));
    if ended || interrupt.has_passed() {
        deadline::take_back(deadline::this_thread());
        return Err(DeadlineExceeded::new_err(
            "the request's deadline passed during time.sleep",
        ));
    }
    Ok(())
}

/// What a metric's updates are named by: its label values.
fn values(labels: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if labels.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "labels are a list of values, one per label name, not one string",
        ));
    }
    labels
        .try_iter()?
        .map(|value| Ok(value?.str()?.to_string()))
        .collect()
}

fn names(labels: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    values(labels)
}

fn refused(message: String) -> PyErr {
    PyValueError::new_err(message)
}

/// A count that only goes up (`counter(name, help, labels=())`).
#[pyclass(module = "microservice_rust", frozen)]
struct Counter(metrics::Counter);

/// A value that goes up and down; /metrics shows the sum over the live workers.
#[pyclass(module = "microservice_rust", frozen)]
struct Gauge(metrics::Gauge);

/// Observations counted into buckets.
#[pyclass(module = "microservice_rust", frozen)]
struct Histogram(metrics::Histogram);

/// `counter(name, help, labels=())`: declares a counter (name it `…_total`). A bad name
/// or a conflicting declaration raises ValueError naming it.
#[pyfunction]
#[pyo3(signature = (name, help, labels = None))]
fn counter(name: &str, help: &str, labels: Option<&Bound<'_, PyAny>>) -> PyResult<Counter> {
    let labels = labels.map(names).transpose()?.unwrap_or_default();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    metrics::counter(name, help, &labels)
        .map(Counter)
        .map_err(refused)
}

/// `gauge(name, help, labels=())`.
#[pyfunction]
#[pyo3(signature = (name, help, labels = None))]
fn gauge(name: &str, help: &str, labels: Option<&Bound<'_, PyAny>>) -> PyResult<Gauge> {
    let labels = labels.map(names).transpose()?.unwrap_or_default();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    metrics::gauge(name, help, &labels)
        .map(Gauge)
        .map_err(refused)
}

/// `histogram(name, help, labels=(), buckets=...)`: `buckets` are the rising upper bounds.
#[pyfunction]
#[pyo3(signature = (name, help, labels = None, buckets = None))]
fn histogram(
    name: &str,
    help: &str,
    labels: Option<&Bound<'_, PyAny>>,
    buckets: Option<Vec<f64>>,
) -> PyResult<Histogram> {
    let labels = labels.map(names).transpose()?.unwrap_or_default();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let buckets = buckets.unwrap_or_else(|| vec![0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]);
    metrics::histogram(name, help, &labels, &buckets)
        .map(Histogram)
        .map_err(refused)
}

/// The label values as the SDK takes them.
fn with_values<R>(labels: Option<&Bound<'_, PyAny>>, f: impl FnOnce(&[&str]) -> R) -> PyResult<R> {
    let owned = labels.map(values).transpose()?.unwrap_or_default();
    let values: Vec<&str> = owned.iter().map(String::as_str).collect();
    Ok(f(&values))
}

#[pymethods]
impl Counter {
    /// `inc(by=1, labels=())`: false when dropped (see the SDK's metrics).
    #[pyo3(signature = (by = 1, labels = None))]
    fn inc(&self, by: u64, labels: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        with_values(labels, |values| self.0.inc_by(values, by))
    }
}

#[pymethods]
impl Gauge {
    /// `set(value, labels=())`.
    #[pyo3(signature = (value, labels = None))]
    fn set(&self, value: f64, labels: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        with_values(labels, |values| self.0.set(values, value))
    }

    /// `add(delta, labels=())`.
    #[pyo3(signature = (delta, labels = None))]
    fn add(&self, delta: f64, labels: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        with_values(labels, |values| self.0.add(values, delta))
    }
}

#[pymethods]
impl Histogram {
    /// `observe(value, labels=())`.
    #[pyo3(signature = (value, labels = None))]
    fn observe(&self, value: f64, labels: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        with_values(labels, |values| self.0.observe(values, value))
    }
}

/// `sys.stdout`, `sys.stderr` and `wsgi.errors`: text written to it becomes lines of the
/// server's log at `level`, a line at each line end (or at `flush`). What a thread has not
/// ended yet waits in that thread's own buffer, so threads never mix their lines.
#[pyclass(module = "microservice_rust", name = "_Lines", frozen)]
pub struct Lines {
    level: Level,
    /// Whether `fileno()` is the worker's stderr (for `faulthandler`); stdout's has none,
    /// the worker's stdout being the access log.
    stderr: bool,
}

thread_local! {
    /// Each thread's text not ended by a line end yet, by level (debug, info, warn, error).
    static PENDING: std::cell::RefCell<[String; 4]> = const {
        std::cell::RefCell::new([String::new(), String::new(), String::new(), String::new()])
    };
}

fn slot(level: Level) -> usize {
    match level {
        Level::Debug => 0,
        Level::Info => 1,
        Level::Warn => 2,
        Level::Error => 3,
    }
}

/// Writes out what this thread left without a line end (at the end of each request).
pub fn flush_pending() {
    for level in [Level::Debug, Level::Info, Level::Warn, Level::Error] {
        let rest = PENDING.with_borrow_mut(|pending| std::mem::take(&mut pending[slot(level)]));
        if !rest.is_empty() {
            log::log(level, &rest);
        }
    }
}

#[pymethods]
impl Lines {
    #[new]
    fn new(level: &str, stderr: bool) -> PyResult<Lines> {
        Ok(Lines {
            level: self::level(level)?,
            stderr,
        })
    }

    fn write(&self, text: &Bound<'_, PyAny>) -> PyResult<usize> {
        let text = text
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err("write() argument must be str"))?
            .to_cow()?;
        let lines = PENDING.with_borrow_mut(|pending| {
            let buffer = &mut pending[slot(self.level)];
            buffer.push_str(&text);
            let Some(end) = buffer.rfind('\n') else {
                return Vec::new();
            };
            let rest = buffer.split_off(end + 1);
            let done = std::mem::replace(buffer, rest);
            done.lines().map(str::to_string).collect::<Vec<_>>()
        });
        for line in lines {
            log::log(self.level, &line);
        }
        Ok(text.chars().count())
    }

    fn writelines(&self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for line in lines.try_iter()? {
            self.write(&line?)?;
        }
        Ok(())
    }

    fn flush(&self) {
        let rest =
            PENDING.with_borrow_mut(|pending| std::mem::take(&mut pending[slot(self.level)]));
        if !rest.is_empty() {
            log::log(self.level, &rest);
        }
    }

    fn isatty(&self) -> bool {
        false
    }

    fn writable(&self) -> bool {
        true
    }

    fn readable(&self) -> bool {
        false
    }

    fn fileno(&self) -> PyResult<i32> {
        match self.stderr {
            true => Ok(2),
            false => Err(pyo3::exceptions::PyOSError::new_err(
                "the app's stdout goes to the server's log, line by line; it has no file",
            )),
        }
    }

    #[getter]
    fn encoding(&self) -> &'static str {
        "utf-8"
    }

    #[getter]
    fn errors(&self) -> &'static str {
        "backslashreplace"
    }

    #[getter]
    fn closed(&self) -> bool {
        false
    }
}

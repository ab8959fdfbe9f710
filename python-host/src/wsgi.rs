//! One request through the WSGI app (PEP 3333), on the pool thread that took it.
//!
//! 1. The environ: every key PEP 3333 requires, from the request the worker read in full
//!    (`PATH_INFO` percent-decoded to bytes, read as latin-1; `HTTP_*` from the headers,
//!    repeated ones joined with `, `, names with `_` left out so that `X_Forwarded_For`
//!    cannot pass for `X-Forwarded-For`), `wsgi.input` over the body, `wsgi.errors` into
//!    the server's log, and `microservice.request_id` / `microservice.cancelled`.
//! 2. The app is called with the environ and `start_response`, whose `write` streams.
//! 3. Its iterable is sent whole when the whole body is at hand (a list or a tuple, or a
//!    `Content-Length` of at most [`WHOLE_LIMIT`] reached), else streamed: each chunk goes
//!    to the client as it is yielded, through the worker's streaming path (its back-pressure
//!    and deadline), so a Server-Sent Events generator works. The GIL is let go while a
//!    chunk waits for the client.
//! 4. The iterable's `close()` is always called: after an exception, a client that left,
//!    or a deadline.
//!
//! An exception before anything was sent is a 500 and one log line with the exception and
//! where it was raised (its traceback follows at `log_level` debug); after the headers were
//! sent the answer is cut off, so the client cannot take it for whole.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use microservice_rust::log::{self, Level};
use microservice_rust::{Request, Response, Stream};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::deadline::{DeadlineExceeded, Deadlines, Interrupt};
use crate::interpreter::{self, Imported, Settings};
use crate::module;

/// A body with a `Content-Length` up to this is gathered and sent whole; a longer one is
/// streamed, so that a large file is never held in memory.
const WHOLE_LIMIT: usize = 1 << 20;

/// What every environ shares, made once.
pub struct Constants {
    bytes_io: Py<PyAny>,
    file_wrapper: Py<PyAny>,
    version: Py<PyTuple>,
    errors: Py<PyAny>,
    cancelled: Py<PyAny>,
    server_name: Py<PyString>,
    server_port: Py<PyString>,
    multithread: bool,
    multiprocess: bool,
}

impl Constants {
    pub fn new(py: Python<'_>, settings: &Settings) -> PyResult<Constants> {
        let module = py.import("microservice_rust")?;
        Ok(Constants {
            bytes_io: py.import("io")?.getattr("BytesIO")?.unbind(),
            file_wrapper: py.import("wsgiref.util")?.getattr("FileWrapper")?.unbind(),
            version: PyTuple::new(py, [1, 0])?.unbind(),
            errors: module.getattr("_Lines")?.call1(("warn", true))?.unbind(),
            cancelled: module.getattr("cancelled")?.unbind(),
            server_name: PyString::new(py, &settings.host).unbind(),
            server_port: PyString::new(py, &settings.port.to_string()).unbind(),
            multithread: settings.threads > 1,
            multiprocess: settings.workers > 1,
        })
    }
}

/// The request this thread answers, for `microservice_rust.cancelled()`, `request_id()`
/// and `time.sleep`.
struct Current {
    request: *const Request<'static>,
    interrupt: Option<Arc<Interrupt>>,
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// `f` of the request this thread answers, if it answers one.
pub fn current<R>(f: impl FnOnce(&Request<'_>) -> R) -> Option<R> {
    CURRENT.with_borrow(|current| {
        current.as_ref().map(|c| {
            // SAFETY: set by `serve` for the time it runs on this thread, which outlives
            // every call of the app's on it.
            f(unsafe { &*c.request })
        })
    })
}

/// What a sleep of the request this thread answers waits on, if it has a deadline.
pub fn current_interrupt() -> Option<Arc<Interrupt>> {
    CURRENT.with_borrow(|current| current.as_ref().and_then(|c| c.interrupt.clone()))
}

/// Sets [`CURRENT`] for the time it lives.
struct Answering;

impl Answering {
    fn begin(request: &Request<'_>, interrupt: Option<Arc<Interrupt>>) -> Answering {
        let request = (request as *const Request<'_>).cast::<Request<'static>>();
        CURRENT.set(Some(Current { request, interrupt }));
        Answering
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        CURRENT.set(None);
    }
}

/// What the app's `start_response` set, and the stream once its headers are sent.
struct Exchange<'r, 'a> {
    request: &'r Request<'a>,
    head: Option<Response>,
    stream: Option<Stream<'r, 'a>>,
}

/// The app's body: whole, or streamed already.
enum Body {
    Whole(Vec<u8>),
    Streamed,
    /// The client left, the deadline passed or the worker gave up while streaming.
    Cancelled,
}

/// Answers `request` with the app; see the module docs.
pub fn serve(
    py: Python<'_>,
    app: &Imported,
    constants: &Constants,
    deadlines: &Deadlines,
    request: &Request<'_>,
) -> Response {
    let entered = request.deadline().map(|at| deadlines.enter(py, at));
    let answering = Answering::begin(request, entered.as_ref().map(|e| e.interrupt.clone()));
    let exchange = RefCell::new(Exchange {
        request,
        head: None,
        stream: None,
    });
    let responder = Responder {
        exchange: Cell::new((&exchange as *const RefCell<Exchange<'_, '_>>).cast()),
        thread: std::thread::current().id(),
    };
    let mut iterable = None;
    let outcome = Py::new(py, responder).and_then(|responder| {
        // However `respond` ends, a panic included, the app's `start_response` (which it
        // may keep) no longer reaches this request's `exchange` afterwards.
        let _detached = Detached(responder.get());
        respond(
            py,
            app,
            constants,
            request,
            &exchange,
            &responder,
            &mut iterable,
        )
    });
    // Out of the deadline's reach before close(): an exception raised for this request
    // now is taken back, so that close() runs whole.
    let late = entered.is_some_and(|e| deadlines.leave(py, e));
    let closed = iterable.map_or(Ok(()), |it| close(&it));
    drop(answering);
    module::flush_pending();
    let mut exchange = exchange.into_inner();
    let failure = match (outcome, closed) {
        (Err(e), _) | (Ok(_), Err(e)) => Some(e),
        (Ok(body), Ok(())) => {
            return match (body, exchange.head.take(), exchange.stream.take()) {
                (Body::Whole(body), Some(head), None) => head.with_body(body),
                (_, _, Some(stream)) => stream.finish(),
                (Body::Cancelled, ..) => Response::new(503),
                (_, None, None) => {
                    log::log(
                        Level::Error,
                        "the app returned without calling start_response: answered 500",
                    );
                    internal_error()
                }
                (Body::Streamed, Some(_), None) => internal_error(),
            };
        }
    };
    let error = failure.unwrap_or_else(|| PyRuntimeError::new_err("no answer"));
    report(py, &error, late);
    match exchange.stream.take() {
        Some(stream) => stream.cut(),
        None => internal_error(),
    }
}

fn internal_error() -> Response {
    Response::text(500, "Internal Server Error\n")
}

/// One log line for an exception of the app's; the traceback too at `log_level` debug.
fn report(py: Python<'_>, error: &PyErr, late: bool) {
    let line = interpreter::describe(py, error);
    if late || error.is_instance_of::<DeadlineExceeded>(py) {
        log::log(
            Level::Info,
            &format!("the deadline interrupted the app: {line}"),
        );
    } else {
        log::log(
            Level::Error,
            &format!("the app raised {line}: answered 500"),
        );
    }
    if let Some(traceback) = interpreter::traceback_text(py, error) {
        log::log(Level::Debug, &traceback);
    }
}

/// Calls `close()` of the app's iterable, when it has one.
fn close(iterable: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = iterable.py();
    match iterable.getattr_opt(intern!(py, "close"))? {
        Some(close) => close.call0().map(drop),
        None => Ok(()),
    }
}

/// Calls the app and takes its body (the iterable stays in `iterable` for `close`).
fn respond<'py>(
    py: Python<'py>,
    app: &Imported,
    constants: &Constants,
    request: &Request<'_>,
    exchange: &RefCell<Exchange<'_, '_>>,
    responder: &Py<Responder>,
    iterable: &mut Option<Bound<'py, PyAny>>,
) -> PyResult<Body> {
    let environ = environ(py, constants, request)?;
    let result = app
        .callable
        .bind(py)
        .call1((environ, responder.clone_ref(py)))?;
    let result = &*iterable.insert(result);
    let mut body = Vec::new();
    if let Ok(list) = result.cast::<PyList>() {
        for chunk in list.iter() {
            if !take(exchange, &mut body, &chunk, true)? {
                return Ok(Body::Cancelled);
            }
        }
    } else if let Ok(tuple) = result.cast::<PyTuple>() {
        for chunk in tuple.iter() {
            if !take(exchange, &mut body, &chunk, true)? {
                return Ok(Body::Cancelled);
            }
        }
    } else {
        for chunk in result.try_iter()? {
            if !take(exchange, &mut body, &chunk?, false)? {
                return Ok(Body::Cancelled);
            }
        }
    }
    Ok(match exchange.borrow().stream {
        Some(_) => Body::Streamed,
        None => Body::Whole(body),
    })
}

/// Takes one chunk of the body: gathered while the whole body is at hand (`whole`: the
/// app gave it all at once), streamed from the first chunk that is not. `false` once the
/// stream is cancelled.
fn take(
    exchange: &RefCell<Exchange<'_, '_>>,
    body: &mut Vec<u8>,
    chunk: &Bound<'_, PyAny>,
    whole: bool,
) -> PyResult<bool> {
    let bytes = chunk.cast::<PyBytes>().map_err(|_| {
        PyTypeError::new_err(format!(
            "the app's body must be bytes, not {}",
            interpreter::short(chunk)
        ))
    })?;
    let bytes = bytes.as_bytes();
    if bytes.is_empty() {
        return Ok(true);
    }
    let py = chunk.py();
    let mut exchange = exchange.borrow_mut();
    if exchange.stream.is_none() {
        let Some(head) = &exchange.head else {
            return Err(PyRuntimeError::new_err(
                "the app's body began before start_response was called",
            ));
        };
        if whole || fits(head, body.len() + bytes.len()) {
            body.extend_from_slice(bytes);
            return Ok(true);
        }
        if !exchange.start()? {
            return Ok(false);
        }
        let gathered = std::mem::take(body);
        if !gathered.is_empty() && !exchange.write(py, &gathered) {
            return Ok(false);
        }
    }
    Ok(exchange.write(py, bytes))
}

/// Whether a body of `length` bytes can still be gathered: the app declared a
/// `Content-Length` of at most [`WHOLE_LIMIT`] and not less.
fn fits(head: &Response, length: usize) -> bool {
    head.headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .is_some_and(|declared| declared <= WHOLE_LIMIT && length <= declared)
}

impl<'r, 'a> Exchange<'r, 'a> {
    /// Sends the status and headers: the stream begins. `false` when the request is
    /// cancelled already.
    fn start(&mut self) -> PyResult<bool> {
        let head = self
            .head
            .clone()
            .ok_or_else(|| PyRuntimeError::new_err("write() before start_response"))?;
        match self.request.stream(head) {
            Ok(stream) => {
                self.stream = Some(stream);
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    /// Sends bytes of the stream with the GIL let go; `false` once cancelled.
    fn write(&mut self, py: Python<'_>, bytes: &[u8]) -> bool {
        let Some(stream) = self.stream.as_mut() else {
            return false;
        };
        let unguarded = Unguarded(move || stream.write(bytes).is_ok());
        py.detach(move || unguarded.run())
    }
}

/// A closure run with the GIL let go that touches only this request's own data, which no
/// other thread reaches meanwhile (see [`Responder`]).
struct Unguarded<F>(F);

// SAFETY: pyo3 asks for `Send` of what runs with the GIL let go (`Python::detach`), which
// runs it on this very thread: nothing moves to another thread. What the one closure
// wrapped here (`Exchange::write`) borrows is this request's stream, which no other thread
// reaches, and bytes the caller keeps alive: its own `Vec`, or the buffer of a `bytes`
// object it holds a reference to (so it is not freed), which Python never changes. It calls
// no Python API.
unsafe impl<F> Send for Unguarded<F> {}

impl<F: FnOnce() -> R, R> Unguarded<F> {
    fn run(self) -> R {
        (self.0)()
    }
}

/// Cuts a [`Responder`] off from its request when dropped.
struct Detached<'r>(&'r Responder);

impl Drop for Detached<'_> {
    fn drop(&mut self) {
        self.0.exchange.set(std::ptr::null());
    }
}

/// `start_response`, and its `write`. It reaches the request's [`Exchange`] only on the
/// request's thread while `serve` runs; afterwards, or from another thread, it raises.
#[pyclass(module = "microservice_rust", name = "StartResponse", frozen)]
pub struct Responder {
    exchange: Cell<*const RefCell<Exchange<'static, 'static>>>,
    thread: std::thread::ThreadId,
}

// SAFETY: the pointer is only followed on `thread` (checked at each call, before it is
// followed), while `serve`, which owns what it points at, runs there: `serve` sets it to NULL
// before the `Exchange` goes. So whichever thread holds the Responder, only `thread` reaches
// the `Exchange`.
unsafe impl Send for Responder {}
// SAFETY: as for `Send`, the pointer is followed only on `thread`. The `Cell` itself is
// read on any thread that calls the object (`with`), and written on `thread` (`serve`
// clears it); every such access is made attached to the interpreter (a `#[pymethods]` call,
// or `serve` with `py`), so the GIL orders them. That holds for a CPython with a GIL, as
// Debian's is; a free-threaded build would let the reads race with the write.
unsafe impl Sync for Responder {}

impl Responder {
    fn with<R>(&self, f: impl FnOnce(&mut Exchange<'_, '_>) -> PyResult<R>) -> PyResult<R> {
        let pointer = self.exchange.get();
        if pointer.is_null() {
            return Err(PyRuntimeError::new_err(
                "start_response and write belong to a request that has been answered",
            ));
        }
        if std::thread::current().id() != self.thread {
            return Err(PyRuntimeError::new_err(
                "start_response and write must be called on the thread that runs the request",
            ));
        }
        // SAFETY: the pointer is not NULL and this is `thread` (both checked above), so the
        // `serve` that set it is still running below us on this thread and its `exchange`
        // lives; only a shared reference is made, and the `RefCell` checks the borrow.
        let exchange = unsafe { &*pointer };
        let mut exchange = exchange
            .try_borrow_mut()
            .map_err(|_| PyRuntimeError::new_err("start_response called from inside write"))?;
        f(&mut exchange)
    }
}

#[pymethods]
impl Responder {
    /// `start_response(status, headers, exc_info=None)`: the answer's status line and
    /// headers; returns `write`.
    #[pyo3(signature = (status, headers, exc_info = None))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let exc_info = exc_info.filter(|e| !e.is_none());
        let head = head(status, headers)?;
        slf.get().with(|exchange| {
            match (exc_info, exchange.stream.is_some(), exchange.head.is_some()) {
                // Too late to change the answer: the exception goes on up.
                (Some(info), true, _) => Err(PyErr::from_value(info.get_item(1)?)),
                (None, _, true) => Err(PyRuntimeError::new_err(
                    "start_response was called already (again only with exc_info)",
                )),
                _ => {
                    exchange.head = Some(head);
                    Ok(())
                }
            }
        })?;
        slf.getattr(intern!(slf.py(), "write"))
    }

    /// `write(data)`: sends bytes at once, before the iterable's.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let bytes = data
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("write() takes bytes"))?;
        let sent = self.with(|exchange| {
            if exchange.stream.is_none() && !exchange.start()? {
                return Ok(false);
            }
            Ok(exchange.write(py, bytes.as_bytes()))
        })?;
        match sent {
            true => Ok(()),
            false => Err(PyOSError::new_err(
                "the request is cancelled: its client left or its deadline passed",
            )),
        }
    }
}

/// Headers PEP 3333 keeps for the server (the worker frames and keeps connections).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
];

/// The status and headers `start_response` was given, checked.
fn head(status: &Bound<'_, PyAny>, headers: &Bound<'_, PyAny>) -> PyResult<Response> {
    let status = status
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err("the status must be a str such as '200 OK'"))?
        .to_cow()?;
    let code = status
        .get(..3)
        .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
        .filter(|_| status.len() == 3 || status.as_bytes()[3] == b' ')
        .and_then(|digits| digits.parse::<u16>().ok())
        .filter(|code| *code >= 100)
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "status {status:?}: expected three digits and a reason, such as '200 OK'"
            ))
        })?;
    let mut response = Response::new(code);
    for item in headers.try_iter()? {
        let item = item?;
        let pair = item.cast::<PyTuple>().ok().filter(|t| t.len() == 2);
        let Some(pair) = pair else {
            return Err(PyTypeError::new_err(format!(
                "a header must be a (name, value) tuple, not {}",
                interpreter::short(&item)
            )));
        };
        let (name, value) = (pair.get_item(0)?, pair.get_item(1)?);
        let (Ok(name), Ok(value)) = (name.cast::<PyString>(), value.cast::<PyString>()) else {
            return Err(PyTypeError::new_err(format!(
                "a header's name and value must be str: {}",
                interpreter::short(&item)
            )));
        };
        let name = name.to_cow()?;
        if name.is_empty() || name.bytes().any(|b| b <= b' ' || b == b':' || b >= 0x7f) {
            return Err(PyValueError::new_err(format!("header name {name:?}")));
        }
        if HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            continue;
        }
        response
            .headers
            .push((name.into_owned(), value.to_cow()?.into_owned()));
    }
    Ok(response)
}

/// A str of bytes read as latin-1, as PEP 3333's "native strings" are.
fn latin1<'py>(py: Python<'py>, bytes: &[u8]) -> Bound<'py, PyString> {
    match std::str::from_utf8(bytes) {
        // ASCII: the same text either way, made the cheap way.
        Ok(text) if bytes.is_ascii() => PyString::new(py, text),
        _ => {
            let text: String = bytes.iter().map(|&b| char::from(b)).collect();
            PyString::new(py, &text)
        }
    }
}

/// `%XX` decoded to bytes (the rest as sent), for `PATH_INFO`.
fn percent_decoded(path: &str) -> std::borrow::Cow<'_, [u8]> {
    let bytes = path.as_bytes();
    if !bytes.contains(&b'%') {
        return std::borrow::Cow::Borrowed(bytes);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(high * 16 + low);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

/// The environ of `request` (see the module docs).
fn environ<'py>(
    py: Python<'py>,
    constants: &Constants,
    request: &Request<'_>,
) -> PyResult<Bound<'py, PyDict>> {
    let environ = PyDict::new(py);
    let set = |key: &Bound<'py, PyString>, value: &Bound<'py, PyAny>| environ.set_item(key, value);
    let text = |value: &str| latin1(py, value.as_bytes()).into_any();
    set(intern!(py, "REQUEST_METHOD"), &text(request.method()))?;
    set(intern!(py, "SCRIPT_NAME"), intern!(py, "").as_any())?;
    set(
        intern!(py, "PATH_INFO"),
        latin1(py, &percent_decoded(request.path())).as_any(),
    )?;
    set(intern!(py, "QUERY_STRING"), &text(request.query()))?;
    let raw_uri = match request.query() {
        "" => text(request.path()),
        query => text(&format!("{}?{query}", request.path())),
    };
    set(intern!(py, "RAW_URI"), &raw_uri)?;
    set(intern!(py, "SERVER_PROTOCOL"), &text(request.version()))?;
    let (address, port) = split_peer(request.peer());
    set(intern!(py, "REMOTE_ADDR"), &text(address))?;
    set(intern!(py, "REMOTE_PORT"), &text(port))?;
    set(
        intern!(py, "SERVER_PORT"),
        constants.server_port.bind(py).as_any(),
    )?;
    let mut host = None;
    let mut content_length = false;
    // Headers in the order received; a repeated one is joined to the first.
    let mut keys: Vec<(String, Bound<'py, PyString>)> = Vec::new();
    for (name, value) in request.headers() {
        if name.contains('_') {
            continue;
        }
        let key = match name {
            "content-type" => "CONTENT_TYPE".to_string(),
            "content-length" => {
                content_length = true;
                continue;
            }
            _ => {
                let mut key = String::with_capacity(5 + name.len());
                key.push_str("HTTP_");
                key.extend(name.chars().map(|c| match c {
                    '-' => '_',
                    c => c.to_ascii_uppercase(),
                }));
                key
            }
        };
        if name == "host" {
            host = Some(value);
        }
        let value = match keys.iter_mut().find(|(k, _)| *k == key) {
            Some((_, joined)) => {
                let separator = if name == "cookie" { "; " } else { ", " };
                let both = format!("{}{separator}{value}", joined.to_cow()?);
                *joined = latin1(py, both.as_bytes());
                continue;
            }
            None => latin1(py, value.as_bytes()),
        };
        keys.push((key, value));
    }
    for (key, value) in &keys {
        environ.set_item(key, value)?;
    }
    let body = request.body();
    if content_length || !body.is_empty() {
        set(
            intern!(py, "CONTENT_LENGTH"),
            &text(&body.len().to_string()),
        )?;
    }
    let server_name = match host.map(host_name) {
        Some(name) if !name.is_empty() => text(name),
        _ => constants.server_name.bind(py).clone().into_any(),
    };
    set(intern!(py, "SERVER_NAME"), &server_name)?;
    set(intern!(py, "HTTP_X_REQUEST_ID"), &text(request.id()))?;
    set(intern!(py, "microservice.request_id"), &text(request.id()))?;
    set(
        intern!(py, "microservice.cancelled"),
        constants.cancelled.bind(py),
    )?;
    set(
        intern!(py, "wsgi.version"),
        constants.version.bind(py).as_any(),
    )?;
    set(intern!(py, "wsgi.url_scheme"), intern!(py, "http").as_any())?;
    let input = constants
        .bytes_io
        .bind(py)
        .call1((PyBytes::new(py, body),))?;
    set(intern!(py, "wsgi.input"), &input)?;
    set(
        intern!(py, "wsgi.input_terminated"),
        &true.into_pyobject(py)?.to_owned().into_any(),
    )?;
    set(intern!(py, "wsgi.errors"), constants.errors.bind(py))?;
    let flag = |on: bool| on.into_pyobject(py).map(|b| b.to_owned().into_any());
    set(
        intern!(py, "wsgi.multithread"),
        &flag(constants.multithread)?,
    )?;
    set(
        intern!(py, "wsgi.multiprocess"),
        &flag(constants.multiprocess)?,
    )?;
    set(intern!(py, "wsgi.run_once"), &flag(false)?)?;
    set(
        intern!(py, "wsgi.file_wrapper"),
        constants.file_wrapper.bind(py),
    )?;
    Ok(environ)
}

/// `ip:port` (or `[ip]:port`) as the address and the port.
fn split_peer(peer: &str) -> (&str, &str) {
    match peer.rsplit_once(':') {
        Some((address, port)) => (address.trim_start_matches('[').trim_end_matches(']'), port),
        None => (peer, ""),
    }
}

/// The name of a `Host` header, without its port.
fn host_name(host: &str) -> &str {
    match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_percent_decoded_to_bytes() {
        assert_eq!(&*percent_decoded("/a%20b/%E2%82%AC"), b"/a b/\xe2\x82\xac");
        assert_eq!(&*percent_decoded("/plain"), b"/plain");
        assert_eq!(&*percent_decoded("/bad%zz%4"), b"/bad%zz%4");
        assert_eq!(&*percent_decoded("/%2F"), b"//");
    }

    #[test]
    fn peers_and_hosts_split_as_sent() {
        assert_eq!(split_peer("127.0.0.1:4242"), ("127.0.0.1", "4242"));
        assert_eq!(split_peer("[::1]:80"), ("::1", "80"));
        assert_eq!(host_name("example.com:8080"), "example.com");
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name("example.com"), "example.com");
    }
}

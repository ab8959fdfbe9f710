//! The [`App`] trait and the C entry points that [`export_app!`](crate::export_app) emits.
//!
//! Every exported function catches panics: unwinding across `extern "C"` would abort the
//! worker, so a panic in `handle` becomes a 500 and the worker lives on. The panic's log
//! line is written by the hook in `panics`.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::abi::{self, MsrAppApi, MsrBytes, MsrHeader, MsrRequest, MsrResponse};
use crate::panics::{install_hook, panic_message, while_doing, Doing};
use crate::{Config, Request, Response};

/// An HTTP app that the worker loads from a dynamic library.
///
/// `handle` is called from every thread of the pool at once, hence `Sync`.
pub trait App: Send + Sync + Sized + 'static {
    /// Builds the app from the resolved configuration. An `Err` stops the worker with the
    /// message.
    fn new(config: &Config) -> Result<Self, String>;

    /// Answers one request.
    fn handle(&self, request: &Request) -> Response;

    /// Answers several requests at once: with `batching` in the config, the pool gives
    /// this up to `max_size` requests, waiting at most `timeout_s` after the first for
    /// more. One response per request, in their order (a missing one is answered 500).
    /// The default answers each with [`App::handle`], one after another, each on its own:
    /// a panic is that request's 500, and log lines name it. (A panic in an app's own
    /// `handle_batch` answers 500 to the whole batch.)
    fn handle_batch(&self, requests: &[Request<'_>]) -> Vec<Response> {
        requests
            .iter()
            .map(|request| answer_one(self, request))
            .collect()
    }

    /// The app's own health, asked by `/healthz`. `Err` makes `/healthz` answer 503.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// Called once before the worker exits.
    fn shutdown(&self) {}

    /// How long after a request's deadline this app takes to return from `handle` (one
    /// that looks at [`Request::is_cancelled`] often, say). The worker answers 504 at the
    /// deadline either way; it writes the thread off and starts another only when the app
    /// is still inside `handle` this long after. Zero: at the deadline.
    const DEADLINE_GRACE: std::time::Duration = std::time::Duration::ZERO;
}

/// The table `msr_app_entry` returns for `A`.
pub const fn api<A: App>() -> MsrAppApi {
    MsrAppApi {
        abi_version: abi::ABI_VERSION,
        create: create::<A>,
        handle: handle::<A>,
        health: Some(health::<A>),
        release: Some(release),
        shutdown: Some(shutdown::<A>),
        deadline_grace_ms: grace_ms(A::DEADLINE_GRACE),
    }
}

/// A grace in whole milliseconds, at most `u32::MAX`.
const fn grace_ms(grace: std::time::Duration) -> u32 {
    let ms = grace.as_millis();
    if ms > u32::MAX as u128 {
        u32::MAX
    } else {
        ms as u32
    }
}

unsafe extern "C" fn create<A: App>(
    config_json: *const u8,
    config_len: usize,
    error: *mut u8,
    error_cap: usize,
) -> *mut c_void {
    // SAFETY: the ABI: the config is `config_len` bytes (then a NUL) that the worker owns
    // and keeps valid during `create`; `as_slice` takes NULL with length 0 as empty. The
    // text is read only during this call: `Config` is dropped before it returns, and `A`
    // is `'static`, so it cannot keep a borrow of it.
    let json =
        std::str::from_utf8(unsafe { MsrBytes::from_raw(config_json, config_len).as_slice() })
            .map_err(|e| format!("config is not UTF-8: {e}"));
    install_hook();
    let built = while_doing(Doing::Starting, || {
        catch_unwind(|| json.and_then(|json| A::new(&Config::from_json(json))))
    });
    let message = match built {
        Ok(Ok(app)) => return Box::into_raw(Box::new(app)).cast(),
        Ok(Err(message)) => message,
        Err(panic) => format!(
            "the app panicked while starting: {}",
            panic_message(&*panic)
        ),
    };
    // SAFETY: the ABI: `error` is the worker's buffer of `error_cap` writable bytes (or
    // `error_cap` is 0), valid during `create`.
    unsafe { abi::write_message(error, error_cap, &message) };
    std::ptr::null_mut()
}

unsafe extern "C" fn handle<A: App>(
    app: *mut c_void,
    request_raw: *const MsrRequest,
    response: *mut MsrResponse,
) {
    // SAFETY: `app` is what `create::<A>` returned (the table pairs `create::<A>` with
    // `handle::<A>`): a `Box<A>` let go with `Box::into_raw`, freed only by `shutdown`,
    // which the ABI runs when no other call is under way. `A: Sync`, so the shared
    // references of the threads that call `handle` at once may coexist.
    let app = unsafe { &*(app as *const A) };
    // SAFETY: the ABI: `request_raw` points at the worker's request, valid during `handle`.
    let request_raw = unsafe { &*request_raw };
    // SAFETY: the ABI: every byte the request points at is the worker's and valid during
    // `handle`, which the `Request` does not outlive.
    let request = unsafe { Request::from_raw(request_raw) };
    let answer = answer_one(app, &request);
    // SAFETY: the ABI: `response` is the worker's, zeroed, for this call alone to fill in.
    fill_response(answer, unsafe { &mut *response });
}

/// `app.handle(request)`, a panic in it answered 500; the panic line and the log lines
/// name the request.
fn answer_one<A: App>(app: &A, request: &Request<'_>) -> Response {
    let raw = request.raw();
    let doing = Doing::Handling {
        method: raw.method,
        path: raw.path,
        id: raw.id,
        ctx: raw.host_ctx,
    };
    while_doing(doing, || {
        catch_unwind(AssertUnwindSafe(|| app.handle(request)))
    })
    .unwrap_or_else(|_| Response::text(500, "Internal Server Error\n"))
}

/// `msr_handle_batch` for `A` (exported by [`export_app!`](crate::export_app)).
///
/// # Safety
/// As the ABI has the worker call `msr_handle_batch`: `app` is what `create` of
/// `api::<A>()` returned and not yet shut down; `requests_raw` points at `count`
/// requests and `responses` at `count` zeroed responses, all valid (with everything the
/// requests point at) for the call.
#[doc(hidden)]
pub unsafe extern "C" fn handle_batch<A: App>(
    app: *mut c_void,
    requests_raw: *const MsrRequest,
    count: usize,
    responses: *mut MsrResponse,
) {
    if count == 0 || requests_raw.is_null() || responses.is_null() {
        return;
    }
    // SAFETY: as in `handle`: `app` is the live `A` that `create::<A>` made.
    let app = unsafe { &*(app as *const A) };
    // SAFETY: the caller's contract (the ABI): `requests_raw` is not NULL (checked above)
    // and points at `count` requests, valid during the call.
    let raw = unsafe { std::slice::from_raw_parts(requests_raw, count) };
    let requests: Vec<Request<'_>> = raw
        .iter()
        // SAFETY: the caller's contract: each request and what it points at are valid
        // during the call, which the `Request`s do not outlive.
        .map(|r| unsafe { Request::from_raw(r) })
        .collect();
    // A panic line names the batch's first request.
    let doing = Doing::Handling {
        method: raw[0].method,
        path: raw[0].path,
        id: raw[0].id,
        ctx: std::ptr::null_mut(),
    };
    let answers = while_doing(doing, || {
        catch_unwind(AssertUnwindSafe(|| app.handle_batch(&requests)))
    })
    .unwrap_or_default();
    let mut answers = answers.into_iter();
    for i in 0..count {
        let answer = answers
            .next()
            .unwrap_or_else(|| Response::text(500, "Internal Server Error\n"));
        // SAFETY: the caller's contract (the ABI): `responses` is not NULL (checked above)
        // and points at `count` zeroed responses for this call alone to fill in; `i < count`.
        fill_response(answer, unsafe { &mut *responses.add(i) });
    }
}

unsafe extern "C" fn health<A: App>(app: *mut c_void, message: *mut u8, message_cap: usize) -> i32 {
    // SAFETY: as in `handle`: `app` is the live `A` that `create::<A>` made.
    let app = unsafe { &*(app as *const A) };
    let outcome = while_doing(Doing::CheckingHealth, || {
        catch_unwind(AssertUnwindSafe(|| app.health()))
    })
    .unwrap_or_else(|panic| Err(format!("health check panicked: {}", panic_message(&*panic))));
    match outcome {
        Ok(()) => 0,
        Err(reason) => {
            // SAFETY: the ABI: `message` is the worker's buffer of `message_cap` writable
            // bytes, valid during `health`.
            unsafe { abi::write_message(message, message_cap, &reason) };
            1
        }
    }
}

unsafe extern "C" fn shutdown<A: App>(app: *mut c_void) {
    // SAFETY: `app` is the `Box<A>` that `create::<A>` let go with `Box::into_raw`; the
    // ABI calls `shutdown` once, with no other call running and none after, so the box is
    // taken back exactly once and nobody else uses it any more.
    let app = unsafe { Box::from_raw(app as *mut A) };
    // A panic here must not unwind into the worker; the app is dropped either way.
    while_doing(Doing::ShuttingDown, || {
        let _ = catch_unwind(AssertUnwindSafe(|| app.shutdown()));
        let _ = catch_unwind(AssertUnwindSafe(move || drop(app)));
    });
}

/// A response kept alive, with its C view of the headers, until `release`.
struct Sent {
    response: Response,
    headers: Vec<MsrHeader>,
}

fn fill_response(response: Response, out: &mut MsrResponse) {
    let mut sent = Box::new(Sent {
        headers: Vec::with_capacity(response.headers.len()),
        response,
    });
    let Sent { response, headers } = &mut *sent;
    headers.extend(response.headers.iter().map(|(name, value)| MsrHeader {
        name: MsrBytes::from_slice(name.as_bytes()),
        value: MsrBytes::from_slice(value.as_bytes()),
    }));
    out.status = response.status;
    out.headers = headers.as_ptr();
    out.header_count = headers.len();
    out.body = MsrBytes::from_slice(&response.body);
    out.owner = Box::into_raw(sent).cast();
}

unsafe extern "C" fn release(_app: *mut c_void, response: *mut MsrResponse) {
    // SAFETY: the ABI: `response` is one the worker had `handle` (or the batch handler)
    // fill in, passed to `release` by the worker alone, once its answer has been sent.
    let owner = std::mem::replace(unsafe { &mut (*response).owner }, std::ptr::null_mut());
    if !owner.is_null() {
        // SAFETY: a non-NULL `owner` is only ever set by `fill_response`, to a `Box<Sent>`
        // let go with `Box::into_raw`; it is NULL from here on, so a second `release` of the
        // same response frees nothing.
        drop(unsafe { Box::from_raw(owner as *mut Sent) });
    }
}

impl MsrBytes {
    fn from_raw(ptr: *const u8, len: usize) -> MsrBytes {
        MsrBytes { ptr, len }
    }
}

/// Exports `$app` (a type implementing [`App`]) as the library's C entry points.
///
/// ```text
/// struct Hello;
/// impl microservice_rust::App for Hello { … }
/// microservice_rust::export_app!(Hello);
/// ```
#[macro_export]
macro_rules! export_app {
    ($app:ty) => {
        /// The ABI handshake: the worker refuses a library built for another version.
        #[unsafe(no_mangle)]
        pub extern "C" fn msr_abi_version() -> u32 {
            $crate::abi::ABI_VERSION
        }

        /// Takes the worker's functions (the app's log lines), before the app is built.
        ///
        /// # Safety
        /// `host` is NULL or points at a table that lives as long as the process, as the
        /// worker passes it (see `msr_attach_host` in the ABI).
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn msr_attach_host(host: *const $crate::abi::MsrHostApi) {
            // SAFETY: `attach_host`'s contract is this function's own, passed on.
            unsafe { $crate::log::attach_host(host) }
        }

        /// Answers a batch of requests (with `batching` in the config).
        ///
        /// # Safety
        /// As for `microservice_rust::handle_batch`: the worker's live app handle, and
        /// `count` requests and zeroed responses valid for the call.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn msr_handle_batch(
            app: *mut ::std::ffi::c_void,
            requests: *const $crate::abi::MsrRequest,
            count: usize,
            responses: *mut $crate::abi::MsrResponse,
        ) {
            // SAFETY: `handle_batch`'s contract is this function's own, passed on; `app` is
            // what `create` of this same table (`api::<$app>`) returned.
            unsafe { $crate::handle_batch::<$app>(app, requests, count, responses) }
        }

        /// The app's function table.
        #[unsafe(no_mangle)]
        pub extern "C" fn msr_app_entry() -> *const $crate::abi::MsrAppApi {
            static API: $crate::abi::MsrAppApi = $crate::api::<$app>();
            &API
        }
    };
}

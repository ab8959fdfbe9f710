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
    let json = std::str::from_utf8(MsrBytes::from_raw(config_json, config_len).as_slice())
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
    abi::write_message(error, error_cap, &message);
    std::ptr::null_mut()
}

unsafe extern "C" fn handle<A: App>(
    app: *mut c_void,
    request_raw: *const MsrRequest,
    response: *mut MsrResponse,
) {
    let app = &*(app as *const A);
    let answer = answer_one(app, &Request::from_raw(&*request_raw));
    fill_response(answer, &mut *response);
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
    let app = &*(app as *const A);
    let raw = std::slice::from_raw_parts(requests_raw, count);
    let requests: Vec<Request<'_>> = raw.iter().map(|r| Request::from_raw(r)).collect();
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
        fill_response(answer, &mut *responses.add(i));
    }
}

unsafe extern "C" fn health<A: App>(app: *mut c_void, message: *mut u8, message_cap: usize) -> i32 {
    let app = &*(app as *const A);
    let outcome = while_doing(Doing::CheckingHealth, || {
        catch_unwind(AssertUnwindSafe(|| app.health()))
    })
    .unwrap_or_else(|panic| Err(format!("health check panicked: {}", panic_message(&*panic))));
    match outcome {
        Ok(()) => 0,
        Err(reason) => {
            abi::write_message(message, message_cap, &reason);
            1
        }
    }
}

unsafe extern "C" fn shutdown<A: App>(app: *mut c_void) {
    let app = Box::from_raw(app as *mut A);
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
    let owner = std::mem::replace(&mut (*response).owner, std::ptr::null_mut());
    if !owner.is_null() {
        drop(Box::from_raw(owner as *mut Sent));
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
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn msr_attach_host(host: *const $crate::abi::MsrHostApi) {
            unsafe { $crate::log::attach_host(host) }
        }

        /// Answers a batch of requests (with `batching` in the config).
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn msr_handle_batch(
            app: *mut ::std::ffi::c_void,
            requests: *const $crate::abi::MsrRequest,
            count: usize,
            responses: *mut $crate::abi::MsrResponse,
        ) {
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

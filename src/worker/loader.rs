//! Loading an app library: `dlopen`, the ABI handshake, and building the app.
//!
//! Each check names the file and what was wrong, because "could not load" is the most common
//! first-day error of an app author. A worker process loads one library once and never
//! unloads it (a new version gets a new worker process), so `dlopen`'s cache by path never
//! serves a stale copy.

use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use microservice_rust::abi::{self, MsrAppApi, MsrHostApi, MsrRequest, MsrResponse};

use crate::config::{self, check_library, missing_symbol, App};
use crate::error::Error;

/// Room for the app's error and health messages.
const MESSAGE_CAP: usize = 1024;

/// A loaded, started app.
pub struct LoadedApp {
    /// The app's table, copied: a table of ABI 1 or 2 is shorter than this one.
    api: MsrAppApi,
    /// The app's batch handler (`msr_handle_batch`), when it has one.
    batch: Option<abi::HandleBatchFn>,
    /// See [`MsrAppApi::deadline_grace_ms`].
    deadline_grace: Duration,
    app: *mut c_void,
    path: PathBuf,
    stopped: std::sync::atomic::AtomicBool,
    /// Never closed: `api` and `app` point into it, and the app's own threads (or the host
    /// table it keeps) may run its code until the process exits.
    _library: ManuallyDrop<Library>,
}

// SAFETY: `app` is the only field that is not `Send`. The app's handle is not tied to the
// thread that made it: the ABI has `handle` and `health` called from any thread, and
// `shutdown` from whichever thread stops the pool (the SDK enforces `App: Send + Sync`).
unsafe impl Send for LoadedApp {}
// SAFETY: through `&LoadedApp` several threads call `handle`, `handle_batch` and `health`
// at once, which the ABI allows (include/microservice_rust.h: "Threads"); `app` is freed
// only by `shutdown`, which runs once (`stopped`) and which the pool calls behind its gate,
// when no call is under way and none can follow.
unsafe impl Sync for LoadedApp {}

impl LoadedApp {
    /// Loads `spec`'s library (for a Python app: the Python host), checks the ABI version,
    /// gives the app the worker's functions (`host`) when it takes them, and builds it from
    /// `config_json`. Errors name the app as the config's `app` names it.
    pub fn load(
        spec: &App,
        config_json: &str,
        host: &'static MsrHostApi,
    ) -> Result<LoadedApp, Error> {
        let library = config::library(spec)?;
        let named = PathBuf::from(spec.to_string());
        let fail = |problem: String| Error::app(&named, problem);
        // The same checks as the supervisor's before it binds, with the same messages.
        check_library(&library)?;
        // A bare name would make dlopen search the system's library path instead.
        let absolute = std::path::absolute(&library).unwrap_or(library);

        // SAFETY: loading runs the library's initialisers; loading app code is this
        // process's purpose, and a crash here is contained by the process boundary.
        let library =
            unsafe { Library::open(Some(&absolute), RTLD_NOW | RTLD_LOCAL) }.map_err(|e| {
                fail(match spec {
                    App::Library(_) => format!(
                        "not a shared library that can be loaded: {}",
                        with_sources(&e)
                    ),
                    App::Python(_) => format!(
                        "the Python host {} cannot be loaded: {}",
                        absolute.display(),
                        with_sources(&e)
                    ),
                })
            })?;

        // SAFETY: the symbol's type is fixed by the ABI; a foreign library that exports the
        // same name with another type is outside what can be checked.
        let version = unsafe { library.get::<unsafe extern "C" fn() -> u32>(abi::VERSION_SYMBOL) }
            .map_err(|_| fail(missing_symbol(abi::VERSION_SYMBOL)))?;
        // SAFETY: `msr_abi_version` takes nothing and returns a `uint32_t` (the ABI); the
        // library is loaded (`library` is alive).
        let found = unsafe { version() };
        if !(abi::OLDEST_ABI_VERSION..=abi::ABI_VERSION).contains(&found) {
            return Err(fail(wrong_version(found)));
        }

        // SAFETY: as for `VERSION_SYMBOL`: the symbol's type is fixed by the ABI.
        let entry =
            unsafe { library.get::<unsafe extern "C" fn() -> *const MsrAppApi>(abi::ENTRY_SYMBOL) }
                .map_err(|_| fail(missing_symbol(abi::ENTRY_SYMBOL)))?;
        // SAFETY: `msr_app_entry` takes nothing and returns the table's address or NULL (the
        // ABI).
        let table = unsafe { entry() };
        if table.is_null() {
            return Err(fail(format!("`{}` returned NULL", abi::ENTRY_SYMBOL)));
        }
        // SAFETY: a non-NULL table is static data of the library, aligned and initialised,
        // that nobody writes; every version's table begins with its version.
        let abi_version = unsafe { (*table).abi_version };
        if !(abi::OLDEST_ABI_VERSION..=abi::ABI_VERSION).contains(&abi_version) {
            return Err(fail(wrong_version(abi_version)));
        }
        // SAFETY: as above; the fields read are in a table of `abi_version`: each field is
        // read through the pointer on its own (no reference spans the table), and a table
        // of ABI 1 or 2 ends before `deadline_grace_ms`, read only from a version 3 table.
        let api = unsafe {
            MsrAppApi {
                abi_version,
                create: (*table).create,
                handle: (*table).handle,
                health: (*table).health,
                release: (*table).release,
                shutdown: (*table).shutdown,
                deadline_grace_ms: match abi_version {
                    3.. => (*table).deadline_grace_ms,
                    _ => 0,
                },
            }
        };
        let deadline_grace = Duration::from_millis(api.deadline_grace_ms.into());

        // SAFETY: the symbol's type is fixed by the ABI; the library stays loaded.
        let batch = unsafe { library.get::<abi::HandleBatchFn>(abi::BATCH_SYMBOL) }
            .ok()
            .map(|symbol| *symbol);

        if let Ok(attach) =
            // SAFETY: the symbol's type is fixed by the ABI, and `host` outlives the process.
            unsafe {
                library.get::<unsafe extern "C" fn(*const MsrHostApi)>(abi::ATTACH_SYMBOL)
            }
        {
            // SAFETY: `msr_attach_host` takes the host table (the ABI); `host` is leaked by
            // `host::table`, so it lives as long as the process, as the ABI promises.
            unsafe { attach(host) };
        }

        // The config is passed NUL-terminated (the length leaves the NUL out), so a C app
        // can hand it to a parser that wants a C string. JSON text holds no raw NUL.
        let mut config = Vec::with_capacity(config_json.len() + 1);
        config.extend_from_slice(config_json.as_bytes());
        config.push(0);
        let mut message = [0u8; MESSAGE_CAP];
        // SAFETY: `create` may not be NULL (the ABI; a fn pointer cannot be). `config` is
        // `config_json.len()` bytes then a NUL, as the ABI promises, and `message` is ours,
        // writable for its length; both outlive the call, and the app copies what it keeps.
        // `create` runs once, before any other call into the app.
        let app = unsafe {
            (api.create)(
                config.as_ptr(),
                config_json.len(),
                message.as_mut_ptr(),
                message.len(),
            )
        };
        if app.is_null() {
            return Err(fail(format!(
                "the app refused to start: {}",
                c_message(&message)
            )));
        }
        Ok(LoadedApp {
            api,
            batch,
            deadline_grace,
            app,
            path: match spec {
                App::Library(_) => absolute,
                App::Python(_) => named,
            },
            stopped: std::sync::atomic::AtomicBool::new(false),
            _library: ManuallyDrop::new(library),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Calls the app's `handle`; the response is released when the returned value drops.
    pub fn handle(&self, request: &MsrRequest) -> AppResponse<'_> {
        let mut raw = MsrResponse::empty();
        // SAFETY: `request` and everything it points at outlive the call; `raw` is ours;
        // `self.app` is alive (the pool calls behind its gate, before `shutdown`), and the
        // ABI lets `handle` run on several threads at once.
        unsafe { (self.api.handle)(self.app, request, &mut raw) };
        AppResponse { app: self, raw }
    }

    /// How long after a deadline the app takes to give a thread back (ABI 3; zero before).
    pub fn deadline_grace(&self) -> Duration {
        self.deadline_grace
    }

    /// Whether the app has a batch handler.
    pub fn batches(&self) -> bool {
        self.batch.is_some()
    }

    /// Calls the app's batch handler (each request alone through `handle` without one);
    /// one response per request, each released when it drops.
    pub fn handle_batch(&self, requests: &[MsrRequest]) -> Vec<AppResponse<'_>> {
        let Some(batch) = self.batch else {
            return requests
                .iter()
                .map(|request| self.handle(request))
                .collect();
        };
        let mut raw: Vec<MsrResponse> = requests.iter().map(|_| MsrResponse::empty()).collect();
        // SAFETY: as for `handle`, for each request; `raw` holds a zeroed response for
        // each, as the ABI's `msr_handle_batch` takes them; the symbol's type is the ABI's.
        unsafe {
            batch(
                self.app,
                requests.as_ptr(),
                requests.len(),
                raw.as_mut_ptr(),
            )
        };
        raw.into_iter()
            .map(|raw| AppResponse { app: self, raw })
            .collect()
    }

    /// The app's own health; `Err` carries its reason.
    pub fn health(&self) -> Result<(), String> {
        let Some(health) = self.api.health else {
            return Ok(());
        };
        let mut message = [0u8; MESSAGE_CAP];
        // SAFETY: `self.app` is alive: the pool asks health only behind its gate, before
        // `shutdown` (see the `Sync` impl); the ABI lets `health` run on several threads at
        // once; `message` is ours, writable for its length through the call.
        match unsafe { health(self.app, message.as_mut_ptr(), message.len()) } {
            0 => Ok(()),
            _ => Err(c_message(&message)),
        }
    }

    /// Runs the app's shutdown hook, which frees the app: the caller guarantees that no
    /// call into the app is under way or follows (the pool's gate). Runs once at most.
    pub fn shutdown(&self) {
        if self.stopped.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        if let Some(shutdown) = self.api.shutdown {
            // SAFETY: runs once (`stopped`, above); the caller guarantees (the pool's gate)
            // that no call into the app is under way and none follows, as the ABI requires.
            unsafe { shutdown(self.app) };
        }
    }
}

/// An error and its chain of causes, as one line (libloading puts dlerror's text in the
/// source).
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

fn wrong_version(found: u32) -> String {
    format!(
        "built for ABI version {found}, but this worker speaks versions {} to {}: rebuild the \
         app against microservice-rust {}",
        abi::OLDEST_ABI_VERSION,
        abi::ABI_VERSION,
        env!("CARGO_PKG_VERSION")
    )
}

/// A NUL-terminated message written by the app into our buffer.
fn c_message(buffer: &[u8]) -> String {
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    match &buffer[..end] {
        [] => "(no message)".to_string(),
        text => String::from_utf8_lossy(text).into_owned(),
    }
}

/// The app's answer to one request, owned by the app until this drops.
pub struct AppResponse<'a> {
    app: &'a LoadedApp,
    raw: MsrResponse,
}

impl AppResponse<'_> {
    pub fn status(&self) -> u16 {
        self.raw.status
    }

    /// Header name and value pairs as the app gave them.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let headers = match self.raw.header_count {
            // NULL with a count breaks the ABI; taken as no header rather than followed.
            _ if self.raw.headers.is_null() => &[][..],
            0 => &[][..],
            // SAFETY: the ABI: `headers` points at `header_count` entries until `release`.
            n => unsafe { std::slice::from_raw_parts(self.raw.headers, n) },
        };
        headers
            .iter()
            // SAFETY: the ABI: each header's runs stay valid until `release`, which runs
            // only when `self` drops, after the borrow of `self` these slices carry.
            .map(|h| unsafe { (h.name.as_slice(), h.value.as_slice()) })
    }

    pub fn body(&self) -> &[u8] {
        // SAFETY: as for `headers`.
        unsafe { self.raw.body.as_slice() }
    }
}

impl Drop for AppResponse<'_> {
    fn drop(&mut self) {
        if let Some(release) = self.app.api.release {
            // SAFETY: `raw` is the response the app filled in for `self.app`, passed to
            // `release` once (this drop), after the answer was copied out of it; the app is
            // alive, as `self` borrows the `LoadedApp` (and calls happen before `shutdown`).
            unsafe { release(self.app.app, &mut self.raw) };
        }
    }
}

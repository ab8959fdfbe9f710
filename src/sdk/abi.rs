//! The C ABI between the worker and an app library.
//!
//! `include/microservice_rust.h` describes the same ABI for C; the two must agree field by
//! field. The worker first calls [`VERSION_SYMBOL`] and refuses a library whose answer is not
//! [`ABI_VERSION`], so a layout change below must come with a new version number.
//!
//! Memory rule: each side frees what it allocated. The request, and every byte it points at,
//! belong to the worker and are valid only during `handle`. The response's headers and body
//! belong to the app; the worker copies nothing out of them and hands the response back to
//! `release` once it has been sent.

use std::ffi::c_void;

/// The version of this ABI. Raised on any change to the types or functions below.
///
/// Version 2 appended the request's ID and the worker's functions ([`MsrHost`]) to
/// [`MsrRequest`]; nothing before them moved, so the worker still loads version 1 apps
/// (they never read past `peer`), while a worker that speaks only version 1 refuses a
/// version 2 app, which would read past the request it was given.
///
/// Version 3 appended the request's HTTP version and the time left to its deadline to
/// [`MsrRequest`], `stream_cut` to [`MsrHost`], and the app's deadline grace to
/// [`MsrAppApi`]: the worker reads the grace only from a version 3 table, and apps of
/// versions 1 and 2 never read past the fields of their version.
pub const ABI_VERSION: u32 = 3;

/// The oldest version the worker still loads.
pub const OLDEST_ABI_VERSION: u32 = 1;

/// `uint32_t msr_abi_version(void)`: the handshake, called before anything else.
pub const VERSION_SYMBOL: &str = "msr_abi_version";

/// `const msr_app_api *msr_app_entry(void)`: the table of the app's functions.
pub const ENTRY_SYMBOL: &str = "msr_app_entry";

/// `void msr_attach_host(const MsrHostApi *host)`: optional. When the library exports it,
/// the worker calls it once, before `create`, with functions the app may call from any
/// thread for the rest of the process's life. Not part of the version handshake: an app
/// that exports it still loads in a worker that does not call it (its lines then go to
/// stderr on their own, see the SDK's `log`), and an app without it loads here.
pub const ATTACH_SYMBOL: &str = "msr_attach_host";

/// `void msr_handle_batch(void *app, const MsrRequest *requests, size_t count,
/// MsrResponse *responses)`: optional. With the config's `batching` set, the pool hands an
/// app that exports it up to `max_size` requests at once (waiting at most `timeout_s` after
/// the first for more); the app fills in `responses[i]` (zeroed by the worker) for
/// `requests[i]`, each passed to `release` after its answer is sent. Called from several
/// threads at once, like `handle`; each request's `host_ctx` answers `is_cancelled` for it,
/// and `stream_start` fails in a batch. Without `batching`, never called.
pub const BATCH_SYMBOL: &str = "msr_handle_batch";

/// See [`BATCH_SYMBOL`].
pub type HandleBatchFn = unsafe extern "C" fn(
    app: *mut c_void,
    requests: *const MsrRequest,
    count: usize,
    responses: *mut MsrResponse,
);

/// The levels of [`MsrHostApi::log`], as the worker's `log_level` names them.
pub const LOG_DEBUG: u32 = 0;
pub const LOG_INFO: u32 = 1;
pub const LOG_WARN: u32 = 2;
/// Also what any larger number means.
pub const LOG_ERROR: u32 = 3;

/// The kinds of [`MsrHostApi::metric_declare`].
pub const METRIC_COUNTER: u32 = 1;
pub const METRIC_GAUGE: u32 = 2;
pub const METRIC_HISTOGRAM: u32 = 3;

/// The operations of [`MsrHostApi::metric_update`]: add (counters: a whole number ≥ 0;
/// gauges: any), set (gauges), observe (histograms).
pub const METRIC_ADD: u32 = 1;
pub const METRIC_SET: u32 = 2;
pub const METRIC_OBSERVE: u32 = 3;

/// The worker's functions for the life of the process (see [`ATTACH_SYMBOL`]).
#[repr(C)]
pub struct MsrHostApi {
    /// The table's size as the worker built it. Fields are only ever appended: an app
    /// calls a function only when its field lies within `size`.
    pub size: usize,
    /// The worker's own pointer, passed back as each function's first argument.
    pub host: *mut c_void,
    /// Writes one line of the app's at `level` (`LOG_*`), in the worker's `log_format`,
    /// beside the worker's own lines on stderr, tagged with the worker's pid and, when
    /// `request_ctx` is a request's `host_ctx`, with the request's ID, method and path.
    /// Pass a `host_ctx` only on the thread running that request's `handle`, while it
    /// runs; NULL anywhere else. Lines below the worker's `log_level` are left out. Never
    /// blocks: when stderr is behind, the line is dropped and counted. `message` is `len`
    /// bytes of UTF-8 without a line end (other bytes are replaced, control characters
    /// escaped, and text past 16 KiB cut).
    pub log: unsafe extern "C" fn(
        host: *mut c_void,
        request_ctx: *mut c_void,
        level: u32,
        message: *const u8,
        len: usize,
    ),
    /// Declares one of the app's metrics (`METRIC_COUNTER`, `_GAUGE`, `_HISTOGRAM`) with
    /// `label_count` label names and, for a histogram, `bound_count` rising bucket bounds.
    /// Returns its number (≥ 0) for `metric_update`; declaring the same metric again (every
    /// worker does) returns the same. On a bad name, too many labels or metrics, or a
    /// metric of that name declared otherwise, returns -1 after writing a NUL-terminated
    /// message naming it into `error` (at most `error_cap` bytes).
    pub metric_declare: unsafe extern "C" fn(
        host: *mut c_void,
        kind: u32,
        name: MsrBytes,
        help: MsrBytes,
        label_names: *const MsrBytes,
        label_count: usize,
        bounds: *const f64,
        bound_count: usize,
        error: *mut u8,
        error_cap: usize,
    ) -> i64,
    /// Updates the label set `label_values` (`label_count`, the declared labels' order) of
    /// metric `id` with `op` (`METRIC_ADD`, `_SET`, `_OBSERVE`) and `value`. Lock-free; any
    /// thread. 0, or -1 when it was dropped: an unknown metric, an operation or value the
    /// kind does not take, the wrong number of values, values over 240 bytes together, or a
    /// new label set past the metric's 1,000 (counted in
    /// `microservice_app_series_dropped_total`).
    pub metric_update: unsafe extern "C" fn(
        host: *mut c_void,
        id: i64,
        op: u32,
        label_values: *const MsrBytes,
        label_count: usize,
        value: f64,
    ) -> i32,
}

impl MsrHostApi {
    /// Whether the worker's table reaches the field at `offset` (`offset_of!`): functions
    /// appended after the worker was built are not there.
    pub fn offers(&self, offset: usize) -> bool {
        self.size >= offset + std::mem::size_of::<usize>()
    }
}

// SAFETY: the raw `host` pointer is the only field that is not `Send`. It is the worker's,
// valid for the life of the process (see `msr_attach_host` in include/microservice_rust.h),
// and the table's functions take it on any thread, so the table may move to any thread.
unsafe impl Send for MsrHostApi {}
// SAFETY: nobody writes the table once it is given, so shared references only read it; its
// functions may be called with `host` from several threads at once (the ABI: `log` "any
// thread, any time", `metric_update` "lock-free, any thread"; the worker's
// `metric_declare` works on atomics too).
unsafe impl Sync for MsrHostApi {}

/// A run of bytes that someone else owns. Not NUL-terminated.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MsrBytes {
    pub ptr: *const u8,
    pub len: usize,
}

impl MsrBytes {
    pub const EMPTY: MsrBytes = MsrBytes {
        ptr: std::ptr::null(),
        len: 0,
    };

    pub fn from_slice(bytes: &[u8]) -> MsrBytes {
        MsrBytes {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// # Safety
    /// `ptr` must point at `len` readable bytes that outlive `'a` (or `len` must be 0).
    pub unsafe fn as_slice<'a>(&self) -> &'a [u8] {
        if self.len == 0 || self.ptr.is_null() {
            &[]
        } else {
            // SAFETY: `ptr` is not NULL (checked above) and, by this function's contract,
            // points at `len` initialised bytes that nobody writes and that outlive `'a`; a
            // `u8` needs no alignment, and a run that exists in memory is at most
            // `isize::MAX` bytes long.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MsrHeader {
    pub name: MsrBytes,
    pub value: MsrBytes,
}

/// A request as the worker hands it to the app.
#[repr(C)]
#[derive(Debug)]
pub struct MsrRequest {
    pub method: MsrBytes,
    /// The path without the query string, as sent (not percent-decoded).
    pub path: MsrBytes,
    /// The query string without the `?`; empty when there is none.
    pub query: MsrBytes,
    /// In the order received; names in lower case.
    pub headers: *const MsrHeader,
    pub header_count: usize,
    pub body: MsrBytes,
    /// The client's address as `ip:port`.
    pub peer: MsrBytes,
    /// ABI 2: the request's ID: the client's `X-Request-ID` when it is sane, else made up.
    pub id: MsrBytes,
    /// ABI 2: the worker's functions for this request, each called with `host_ctx`.
    pub host: *const MsrHost,
    pub host_ctx: *mut c_void,
    /// ABI 3: the protocol of the request line, `HTTP/1.1` or `HTTP/1.0`.
    pub version: MsrBytes,
    /// ABI 3: microseconds left to the request's deadline when `handle` was called (0 once
    /// it has passed); [`NO_DEADLINE`] when the request has none.
    pub time_left_us: u64,
}

/// [`MsrRequest::time_left_us`] of a request without a deadline.
pub const NO_DEADLINE: u64 = u64::MAX;

/// The worker's functions an app may call while `handle` runs, on the thread it runs on.
#[repr(C)]
pub struct MsrHost {
    /// 1 once the request is cancelled (its client left, or its deadline passed); 0 before.
    pub is_cancelled: unsafe extern "C" fn(ctx: *mut c_void) -> i32,
    /// Starts a streamed response: the status and headers are sent now, the body is what
    /// `stream_write` sends, and it ends when `handle` returns (the response `handle` fills
    /// in is then ignored, but still passed to `release`). 0, or -1 when the request is
    /// cancelled or a stream was started already.
    pub stream_start: unsafe extern "C" fn(
        ctx: *mut c_void,
        status: u16,
        headers: *const MsrHeader,
        header_count: usize,
    ) -> i32,
    /// Sends bytes of a streamed body. Blocks while the client is slow (see the README for
    /// how much is buffered). 0, or -1 once the request is cancelled or without a stream:
    /// the response is then cut off and the app should return.
    pub stream_write: unsafe extern "C" fn(ctx: *mut c_void, bytes: *const u8, len: usize) -> i32,
    /// ABI 3: ends a started stream as cut off, so that the client cannot take what it got
    /// for the whole answer (the connection closes without the last chunk): for an app that
    /// failed half way. Later writes fail. 0, or -1 without a stream.
    pub stream_cut: unsafe extern "C" fn(ctx: *mut c_void) -> i32,
}

/// A response as the app fills it in.
#[repr(C)]
#[derive(Debug)]
pub struct MsrResponse {
    pub status: u16,
    pub headers: *const MsrHeader,
    pub header_count: usize,
    pub body: MsrBytes,
    /// The app's own handle on this response's memory, handed back to `release`.
    pub owner: *mut c_void,
}

impl MsrResponse {
    pub const fn empty() -> MsrResponse {
        MsrResponse {
            status: 0,
            headers: std::ptr::null(),
            header_count: 0,
            body: MsrBytes::EMPTY,
            owner: std::ptr::null_mut(),
        }
    }
}

/// Builds the app from `config_len` bytes of JSON, followed by a NUL the length leaves out.
/// Returns the app's handle (never NULL on success), or NULL on failure after writing a
/// NUL-terminated message of at most `error_cap` bytes into `error`.
pub type CreateFn = unsafe extern "C" fn(
    config_json: *const u8,
    config_len: usize,
    error: *mut u8,
    error_cap: usize,
) -> *mut c_void;

/// Answers one request; called from many threads at once.
pub type HandleFn =
    unsafe extern "C" fn(app: *mut c_void, request: *const MsrRequest, response: *mut MsrResponse);

/// Returns 0 when healthy; otherwise non-zero after writing a NUL-terminated reason.
pub type HealthFn =
    unsafe extern "C" fn(app: *mut c_void, message: *mut u8, message_cap: usize) -> i32;

/// Frees what `handle` allocated for `response`.
pub type ReleaseFn = unsafe extern "C" fn(app: *mut c_void, response: *mut MsrResponse);

/// Stops the app and frees it; no other call follows.
pub type ShutdownFn = unsafe extern "C" fn(app: *mut c_void);

/// What `msr_app_entry` returns. Optional functions may be NULL.
#[repr(C)]
pub struct MsrAppApi {
    pub abi_version: u32,
    pub create: CreateFn,
    pub handle: HandleFn,
    pub health: Option<HealthFn>,
    pub release: Option<ReleaseFn>,
    pub shutdown: Option<ShutdownFn>,
    /// ABI 3: how long after a request's deadline the app takes to give its thread back
    /// (it looks at `is_cancelled`, or is interrupted as the Python host interrupts its
    /// code), in milliseconds. The worker answers 504 at the deadline whatever this says;
    /// it writes the thread off and starts a replacement only when the app is still inside
    /// `handle` this long after. 0: at the deadline.
    pub deadline_grace_ms: u32,
}

/// Writes `message` into a caller-owned buffer as a NUL-terminated string, truncated to fit.
///
/// # Safety
/// `buffer` must be writable for `cap` bytes (or `cap` must be 0).
pub unsafe fn write_message(buffer: *mut u8, cap: usize, message: &str) {
    if buffer.is_null() || cap == 0 {
        return;
    }
    let mut len = message.len().min(cap - 1);
    while !message.is_char_boundary(len) {
        len -= 1;
    }
    // SAFETY: `len <= cap - 1`, and the caller guarantees `buffer` is writable for `cap`
    // bytes; `message` is `len` or more readable bytes, and it cannot overlap `buffer`: it
    // is borrowed shared for the call, while `buffer` is memory this call may write.
    unsafe { std::ptr::copy_nonoverlapping(message.as_ptr(), buffer, len) };
    // SAFETY: `len < cap` (see above), so `buffer + len` is the last byte at most of the
    // `cap` writable bytes the caller guarantees.
    unsafe { *buffer.add(len) = 0 };
}

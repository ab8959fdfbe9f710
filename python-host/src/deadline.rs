//! A request past its deadline gets its 504 from the worker at the deadline, and its Python
//! thread back from the host soon after:
//!
//! * One thread of the host's, `deadlines`, knows the deadline of every request inside the
//!   app. When one passes, it raises `microservice_rust.DeadlineExceeded` (a `TimeoutError`)
//!   in the thread that runs the request (`PyThreadState_SetAsyncExc`): pure-Python code
//!   stops at its next bytecode, unwinds through the app's `finally` blocks and the thread
//!   returns to the pool. Flask turns it into a 500 like any exception; nobody sees that
//!   answer, the client has its 504.
//! * `time.sleep` is the host's: outside a request it is Python's own; inside one it ends
//!   at the deadline with the same exception, since CPython delivers an exception to a
//!   thread only between bytecodes, never inside a sleep.
//! * An exception raised for a request that has just ended is taken back before the thread
//!   moves on, so it never reaches the next request.
//! * Code that catches the exception and goes on, or a thread stuck in C (a socket read
//!   without a timeout), stays inside the app: the worker writes that thread off once the
//!   host's deadline grace (see `lib.rs`) is over, as it does for native apps.
//!
//! Locks: a request's thread takes the GIL, then the deadlines' lock; the `deadlines`
//! thread waits without the GIL, lets the lock go, takes the GIL, then the lock. So neither
//! ever waits for the GIL while holding the lock.

use std::os::raw::c_ulong;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pyo3::ffi;
use pyo3::prelude::*;

pyo3::create_exception!(
    microservice_rust,
    DeadlineExceeded,
    pyo3::exceptions::PyTimeoutError,
    "The request's deadline (request_timeout_s) passed: the client has had its 504."
);

/// The deadlines of the requests inside the app, and the thread that enforces them.
pub struct Deadlines {
    shared: Arc<Shared>,
}

struct Shared {
    inside: Mutex<Inside>,
    changed: Condvar,
}

/// The requests inside the app, and when the `deadlines` thread wakes next.
#[derive(Default)]
struct Inside {
    requests: Vec<Running>,
    next_key: u64,
    /// What the `deadlines` thread sleeps until (`None`: until a request comes); a request
    /// due later needs no wake-up, so most requests wake nobody.
    wakes_at: Option<Instant>,
}

/// A request inside the app with a deadline.
struct Running {
    key: u64,
    /// The Python thread running it.
    thread: c_ulong,
    at: Instant,
    /// The exception has been raised in it.
    raised: bool,
    interrupt: Arc<Interrupt>,
}

/// What a sleep inside the request waits on: set when its deadline passes.
#[derive(Default)]
pub struct Interrupt {
    passed: Mutex<bool>,
    woken: Condvar,
}

impl Interrupt {
    fn passed(&self) -> MutexGuard<'_, bool> {
        self.passed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `time` (or for ever, `None`); `true` when the deadline ended it.
    pub fn sleep(&self, time: Option<Duration>) -> bool {
        let until = time.and_then(|t| Instant::now().checked_add(t));
        let mut passed = self.passed();
        loop {
            if *passed {
                return true;
            }
            passed = match until {
                None => self.woken.wait(passed).unwrap_or_else(|p| p.into_inner()),
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.woken
                        .wait_timeout(passed, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    pub fn has_passed(&self) -> bool {
        *self.passed()
    }
}

/// A request registered with [`Deadlines::enter`].
pub struct Entered {
    key: u64,
    pub interrupt: Arc<Interrupt>,
}

/// The Python thread ident of the calling thread.
pub fn this_thread() -> c_ulong {
    // SAFETY: no preconditions; it is pthread_self on Linux.
    unsafe { ffi::PyThread_get_thread_ident() }
}

impl Deadlines {
    /// Starts the `deadlines` thread.
    pub fn start(py: Python<'_>) -> Result<Deadlines, String> {
        // The exception type, made now so that the thread never has to.
        let _ = py.get_type::<DeadlineExceeded>();
        let shared = Arc::new(Shared {
            inside: Mutex::new(Inside::default()),
            changed: Condvar::new(),
        });
        let enforcing = shared.clone();
        std::thread::Builder::new()
            .name("deadlines".into())
            .spawn(move || enforcing.enforce())
            .map_err(|e| format!("cannot start the Python host's deadline thread: {e}"))?;
        Ok(Deadlines { shared })
    }

    /// A request with a deadline enters the app on this thread (the GIL held).
    pub fn enter(&self, _py: Python<'_>, at: Instant) -> Entered {
        let interrupt = Arc::new(Interrupt::default());
        let mut inside = self.shared.lock();
        let key = inside.next_key;
        inside.next_key = key.wrapping_add(1);
        inside.requests.push(Running {
            key,
            thread: this_thread(),
            at,
            raised: false,
            interrupt: interrupt.clone(),
        });
        let wake = inside.wakes_at.is_none_or(|next| at < next);
        drop(inside);
        if wake {
            self.shared.changed.notify_one();
        }
        Entered { key, interrupt }
    }

    /// The request leaves the app (the GIL held): an exception raised for it and not yet
    /// delivered is taken back. `true` when its deadline passed inside the app.
    pub fn leave(&self, _py: Python<'_>, entered: Entered) -> bool {
        let mut inside = self.shared.lock();
        let Some(index) = inside.requests.iter().position(|r| r.key == entered.key) else {
            return false;
        };
        let left = inside.requests.swap_remove(index);
        drop(inside);
        if left.raised {
            take_back(left.thread);
        }
        left.raised
    }
}

/// Takes back an exception raised in `thread` and not yet delivered (the GIL held).
pub fn take_back(thread: c_ulong) {
    // SAFETY: the GIL is held; a NULL exception clears the thread's pending one.
    unsafe { ffi::PyThreadState_SetAsyncExc(thread as _, std::ptr::null_mut()) };
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inside> {
        self.inside.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `deadlines` thread: sleeps until the next deadline, then raises.
    fn enforce(&self) {
        crate::interpreter::keep_thread_state();
        loop {
            self.wait_for_one_due();
            Python::attach(|py| self.raise_due(py));
        }
    }

    fn wait_for_one_due(&self) {
        let mut inside = self.lock();
        loop {
            let now = Instant::now();
            let next = inside
                .requests
                .iter()
                .filter(|r| !r.raised)
                .map(|r| r.at)
                .min();
            inside.wakes_at = next;
            inside = match next {
                Some(at) if at <= now => return,
                Some(at) => {
                    self.changed
                        .wait_timeout(inside, at - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.changed.wait(inside).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }

    fn raise_due(&self, py: Python<'_>) {
        let exception = py.get_type::<DeadlineExceeded>();
        let now = Instant::now();
        let mut inside = self.lock();
        for request in inside
            .requests
            .iter_mut()
            .filter(|r| !r.raised && r.at <= now)
        {
            // SAFETY: the GIL is held; the thread is inside the app (it leaves only after
            // taking the lock held here), and the exception type lives in the module.
            unsafe { ffi::PyThreadState_SetAsyncExc(request.thread as _, exception.as_ptr()) };
            request.raised = true;
            *request.interrupt.passed() = true;
            request.interrupt.woken.notify_all();
        }
    }
}

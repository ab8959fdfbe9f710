//! A request read in full, as the I/O task that waits for its answer and the pool thread
//! that serves it both hold it, and where it is in its life.
//!
//! Its [`State`] moves only forward, each move a compare-and-swap from the state the mover
//! expects, so that of the two sides (the I/O side at a deadline or when the client left,
//! the pool thread when it takes the request and when the app returns) exactly one wins:
//!
//! ```text
//! Queued ──► InApp ──► Streaming ──► Answered (the stream ended)
//!   │          ├─────────────────► Answered
//!   │          ├─► Late            (deadline past the write-off cap, or the app
//!   │          │                    returned past it: 504, its answer not sent)
//!   │          ├─► Overdue ─┬─► Late        (deadline in an app with a grace; back in it)
//!   │          │            └─► WrittenOff  (still inside when the grace is over)
//!   │          ├─► WrittenOff      (deadline: its thread is replaced)
//!   │          └─► Abandoned       (the worker gave up on it: 503)
//!   ├─► Late | Gone | Abandoned    (deadline, client left, worker gave up: never in the app)
//! ```
//!
//! Apart from its state a request can be *cancelled* (the app sees it and may return
//! early): the client left, the deadline passed, or the worker gave up on it. The first
//! reason sticks.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;

use super::budget::Held;
use super::request_id::{IdSeed, RequestId};

/// What a request asks of the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The app's `handle`.
    App,
    /// `/healthz`: the app's health hook and the worker's own.
    Health,
}

/// Where a request is; see the module docs.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Queued,
    InApp,
    /// Inside the app, which started streaming the answer (the I/O side has it).
    Streaming,
    Answered,
    /// Its deadline passed; the I/O side answers 504.
    Late,
    /// Its deadline passed inside an app with a deadline grace; the I/O side answered 504,
    /// and the thread is written off if still inside when the grace is over.
    Overdue,
    /// Its deadline passed inside the app and its thread was written off.
    WrittenOff,
    /// The I/O side stopped waiting (the client left) while it was queued.
    Gone,
    /// The worker gave up on it (it is being replaced or its stop deadline passed): 503.
    Abandoned,
}

/// Why a request was cancelled.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancel {
    Not,
    ClientLeft,
    Late,
    Abandoned,
}

/// An enum of `u8` values kept in one atomic byte.
pub trait Byte: Copy + 'static {
    /// Every value, at the index of its discriminant.
    const ALL: &'static [Self];
    fn byte(self) -> u8;
}

impl Byte for State {
    const ALL: &'static [State] = &[
        State::Queued,
        State::InApp,
        State::Streaming,
        State::Answered,
        State::Late,
        State::Overdue,
        State::WrittenOff,
        State::Gone,
        State::Abandoned,
    ];
    fn byte(self) -> u8 {
        self as u8
    }
}

impl Byte for Cancel {
    const ALL: &'static [Cancel] = &[
        Cancel::Not,
        Cancel::ClientLeft,
        Cancel::Late,
        Cancel::Abandoned,
    ];
    fn byte(self) -> u8 {
        self as u8
    }
}

/// An atomic `T`: loads and moves from one value to another.
pub struct Atomic<T: Byte> {
    byte: AtomicU8,
    _of: PhantomData<T>,
}

impl<T: Byte> Atomic<T> {
    pub fn new(value: T) -> Atomic<T> {
        Atomic {
            byte: AtomicU8::new(value.byte()),
            _of: PhantomData,
        }
    }

    pub fn load(&self) -> T {
        T::ALL[usize::from(self.byte.load(Ordering::Acquire))]
    }

    /// Moves from `from` to `to`; `false` when the value was not `from`.
    pub fn moves(&self, from: T, to: T) -> bool {
        self.byte
            .compare_exchange(from.byte(), to.byte(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// A request read in full, shared by the I/O task waiting for it and the pool thread
/// serving it.
pub struct Received {
    pub head: Parts,
    pub body: Bytes,
    /// The body's share of the worker's budget for bodies, given back with the request.
    _held: Option<Held>,
    pub peer: SocketAddr,
    /// When the worker had read its head: deadlines and durations count from here.
    pub received: Instant,
    pub deadline: Option<Instant>,
    /// What the request's ID is made from (see `request_id`).
    pub seed: IdSeed,
    pub kind: Kind,
    pub state: Atomic<State>,
    cancelled: Atomic<Cancel>,
}

impl Received {
    pub fn new(
        head: Parts,
        (body, held): (Bytes, Option<Held>),
        peer: SocketAddr,
        (received, deadline): (Instant, Option<Instant>),
        seed: IdSeed,
        kind: Kind,
    ) -> Received {
        Received {
            head,
            body,
            _held: held,
            peer,
            received,
            deadline,
            seed,
            kind,
            state: Atomic::new(State::Queued),
            cancelled: Atomic::new(Cancel::Not),
        }
    }

    /// Whether the app should stop: the client left, the deadline passed, or the worker
    /// gave up on the request.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load() != Cancel::Not || self.is_past_deadline()
    }

    fn is_past_deadline(&self) -> bool {
        self.deadline.is_some_and(|at| Instant::now() >= at)
    }

    /// Cancels the request, unless it was cancelled already (the first reason sticks).
    pub fn cancel(&self, why: Cancel) {
        self.cancelled.moves(Cancel::Not, why);
    }

    /// Whether it was cancelled because its client left (its access line says 499).
    pub fn client_left(&self) -> bool {
        self.cancelled.load() == Cancel::ClientLeft
    }

    /// Whether the request is late: its answer, if the app gave one, is not sent, and the
    /// I/O side answers 504 (on a busy machine its timer can fire after the app has seen
    /// the deadline and returned).
    pub fn is_late(&self) -> bool {
        self.state.load() == State::Late
    }

    /// The app returned: the request's state until then (`Late` when it was inside the app
    /// past its deadline, whatever the app answered: its answer is not sent). From now on
    /// it is answered, or late; a state the I/O side or the worker set meanwhile (written
    /// off, late, abandoned) stays, for the I/O side reads it (an overdue request, whose
    /// app returned within its grace, is late: not to be written off any more).
    pub fn leaves_app(&self) -> State {
        let late = self.is_past_deadline();
        loop {
            let now = self.state.load();
            let (to, said) = match now {
                State::InApp if late => (State::Late, State::Late),
                State::InApp | State::Streaming => (State::Answered, now),
                State::Overdue => (State::Late, now),
                other => return other,
            };
            if self.state.moves(now, to) {
                return said;
            }
        }
    }

    /// The app starts streaming its answer: `false` when the request is no longer its to
    /// answer (late, written off, abandoned).
    pub fn starts_streaming(&self) -> bool {
        self.state.moves(State::InApp, State::Streaming)
    }

    /// Whether its answer is on its way from the pool (answered, or streaming).
    pub fn is_answered(&self) -> bool {
        matches!(self.state.load(), State::Answered | State::Streaming)
    }

    /// The request's ID (made each time: on the request path the pool makes it once).
    pub fn id(&self) -> RequestId {
        self.seed.id(&self.head)
    }
}

/// Resolves at `deadline`; never without one.
pub async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_reads_back_as_stored() {
        for (i, state) in State::ALL.iter().enumerate() {
            assert_eq!(usize::from(state.byte()), i);
            assert_eq!(Atomic::new(*state).load(), *state);
        }
        for (i, why) in Cancel::ALL.iter().enumerate() {
            assert_eq!(usize::from(why.byte()), i);
        }
    }

    fn received(deadline: Option<Instant>) -> Received {
        let (head, ()) = http::Request::new(()).into_parts();
        let seed = super::super::request_id::RequestIds::new().seed();
        let peer = "127.0.0.1:1".parse().expect("an address");
        let request = Received::new(
            head,
            (Bytes::new(), None),
            peer,
            (Instant::now(), deadline),
            seed,
            Kind::App,
        );
        assert!(request.state.moves(State::Queued, State::InApp));
        request
    }

    #[test]
    fn leaving_the_app_keeps_what_the_io_side_decided() {
        let past = Some(Instant::now() - std::time::Duration::from_millis(1));
        // Answered in time, or late: what the app answered is sent, or not.
        assert_eq!(received(None).leaves_app(), State::InApp);
        let late = received(past);
        assert_eq!(late.leaves_app(), State::Late);
        assert!(late.is_late());
        // The I/O side wrote its thread off at the deadline, just before the app returned:
        // the request stays written off (the I/O side answers 504 reading that), and the
        // thread learns it.
        let written_off = received(past);
        assert!(written_off.state.moves(State::InApp, State::WrittenOff));
        assert_eq!(written_off.leaves_app(), State::WrittenOff);
        assert_eq!(written_off.state.load(), State::WrittenOff);
        assert!(!written_off.is_answered());
        // Back within its grace: late, and no longer to be written off.
        let overdue = received(past);
        assert!(overdue.state.moves(State::InApp, State::Overdue));
        assert_eq!(overdue.leaves_app(), State::Overdue);
        assert!(!overdue.state.moves(State::Overdue, State::WrittenOff));
        assert!(overdue.is_late());
    }

    #[test]
    fn a_move_happens_only_from_the_state_expected() {
        let state = Atomic::new(State::Queued);
        assert!(!state.moves(State::InApp, State::Answered));
        assert!(state.moves(State::Queued, State::InApp));
        assert!(!state.moves(State::Queued, State::Gone));
        assert_eq!(state.load(), State::InApp);
    }
}

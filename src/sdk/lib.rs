//! The app SDK of microservice-rust.
//!
//! An app is a `cdylib` that implements [`App`] and calls [`export_app!`]. The
//! `microservice-rust` worker loads it with `dlopen`, checks the ABI version, builds it from
//! the resolved configuration and calls [`App::handle`] from its thread pool.
//!
//! ```
//! use microservice_rust::{export_app, App, Config, Request, Response};
//!
//! struct Hello;
//!
//! impl App for Hello {
//!     fn new(_config: &Config) -> Result<Self, String> {
//!         Ok(Hello)
//!     }
//!     fn handle(&self, request: &Request) -> Response {
//!         Response::text(200, format!("hello from {}\n", request.path()))
//!     }
//! }
//!
//! export_app!(Hello);
//! ```
//!
//! `microservice-rust new` and `microservice-rust sdk DIR` write this crate on its own, with
//! no dependency (add `features = ["json"]` for the serde helpers and the re-exported
//! `serde_json`). Inside the server's repository, where the crate's default features build
//! the server, an app depends on it with `default-features = false`.
//!
//! [`Request::stream`] and [`Request::events`] stream an answer as it is made;
//! [`Request::is_cancelled`] tells a long handler that nobody waits for its answer any more.
//! [`info!`], [`warn!`] (and [`debug!`], [`error!`]) write the app's own log lines through
//! the worker (see [`log`]); [`metrics`] declares counters, gauges and histograms that
//! `/metrics` shows beside the server's.
//!
//! Build the app with unwinding panics (the default `panic = "unwind"`): the exported entry
//! points catch a panic and answer 500, which `panic = "abort"` makes impossible.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod abi;
mod app;
#[doc(hidden)]
pub mod clock;
mod config;
mod http;
pub mod log;
pub mod metrics;
mod panics;
#[doc(hidden)]
pub mod spec;
mod stream;

#[doc(hidden)]
pub use app::handle_batch;
pub use app::{api, App};
pub use config::Config;
pub use http::{Request, Response};
pub use panics::LOG_FORMAT_VAR;
/// serde_json itself (feature `json`), so that an app can write
/// `microservice_rust::serde_json::json!` with no dependency of its own.
#[cfg(feature = "json")]
pub use serde_json;
pub use stream::{Cancelled, Stream};

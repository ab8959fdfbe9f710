//! The bridge between HTTP and the app's C ABI: the app's view of a request, and its
//! response as an answer.
//!
//! The app reads a request through pointers into the worker's own copy of it (the
//! [`Received`] that the pool thread holds while the app runs), so the I/O side can answer
//! 504 at a deadline while the app is still reading. The app's response is copied into an
//! [`Answer`] on the pool thread and handed back to the app's `release` at once; hyper then
//! writes the answer on an I/O thread.

use std::ffi::c_void;

use bytes::Bytes;
use microservice_rust::abi::{MsrBytes, MsrHeader, MsrRequest, NO_DEADLINE};

use super::answer::{self, Answer, AnswerBody};
use super::call::HOST;
use super::loader::AppResponse;
use super::request::Received;
use super::request_id::RequestId;
use super::text::push_address;

/// The C view of a request, rebuilt for each request in memory each pool thread reuses.
#[derive(Default)]
pub struct RequestView {
    headers: Vec<MsrHeader>,
    peer: Vec<u8>,
}

impl RequestView {
    /// The view of `request`, valid while `request` and `self` are neither changed nor
    /// dropped; the host functions get `call` (a `call::Call`).
    pub fn of(&mut self, request: &Received, id: &RequestId, call: *mut c_void) -> MsrRequest {
        let head = &request.head;
        self.headers.clear();
        self.headers
            .extend(head.headers.iter().map(|(name, value)| MsrHeader {
                name: MsrBytes::from_slice(name.as_str().as_bytes()),
                value: MsrBytes::from_slice(value.as_bytes()),
            }));
        self.peer.clear();
        push_address(&mut self.peer, &request.peer);
        MsrRequest {
            method: MsrBytes::from_slice(head.method.as_str().as_bytes()),
            path: MsrBytes::from_slice(head.uri.path().as_bytes()),
            query: MsrBytes::from_slice(head.uri.query().unwrap_or("").as_bytes()),
            headers: self.headers.as_ptr(),
            header_count: self.headers.len(),
            body: MsrBytes::from_slice(&request.body),
            peer: MsrBytes::from_slice(&self.peer),
            id: MsrBytes::from_slice(id.as_bytes()),
            host: &HOST,
            host_ctx: call,
            version: MsrBytes::from_slice(version_text(head.version)),
            time_left_us: request.deadline.map_or(NO_DEADLINE, |at| {
                let left = at.saturating_duration_since(std::time::Instant::now());
                u64::try_from(left.as_micros()).unwrap_or(NO_DEADLINE - 1)
            }),
        }
    }
}

/// The request line's protocol as the app reads it (hyper serves HTTP/1.0 and 1.1 only).
fn version_text(version: http::Version) -> &'static [u8] {
    match version {
        http::Version::HTTP_10 => b"HTTP/1.0",
        http::Version::HTTP_09 => b"HTTP/0.9",
        _ => b"HTTP/1.1",
    }
}

/// The app's response as an answer (its body copied: the app releases it at once).
pub fn app_answer(response: &AppResponse) -> Answer {
    let body = AnswerBody::whole(Bytes::copy_from_slice(response.body()));
    answer::from_app(response.status(), response.headers(), body)
}

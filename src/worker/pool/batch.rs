//! Dynamic batching (`batching`): one pool thread at a time gathers the queue's requests
//! into a batch and hands it to the app's batch handler, while the next thread gathers.
//!
//! A batch is the first request waited for, then more until `most` are in or `wait` has
//! passed since the first was read (a request that waited in the queue that long already
//! waits no more). Health checks are answered alone on the way, never batched, and a batch
//! cannot stream. Each request keeps its own answer, 504, cancellation, access line and
//! metrics.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use microservice_rust::abi::MsrRequest;
use tokio::sync::oneshot;

use super::{lock, After, Batching, Job, Serving, Slot, Threads};
use crate::worker::answer::Answer;
use crate::worker::bridge::{self, RequestView};
use crate::worker::call::Call;
use crate::worker::request::{Kind, Received, State};
use crate::worker::request_id::RequestId;

/// How long a thread gathering a batch waits at a time before it looks whether the worker
/// stopped.
const GATHER_SLICE: Duration = Duration::from_millis(20);

/// A request taken from the queue, and where its answer goes.
type Taken = (Arc<Received>, oneshot::Sender<Answer>);

impl Threads {
    /// Gathers the next batch and serves it.
    pub(super) fn next_batch(
        self: &Arc<Self>,
        batching: Batching,
        slot: &Slot,
        views: &mut Vec<RequestView>,
    ) -> After {
        let Some((batch, retire)) = self.gather(batching) else {
            return After::End;
        };
        match (self.serve_batch(batch, slot, views), retire) {
            (0, false) => After::Next,
            (0, true) => After::End,
            (written_off, _) => After::WrittenOff(written_off),
        }
    }

    /// Takes the next batch from the queue, one thread at a time (see the module docs).
    /// Probes are answered on the way. `None` once the queue is closed; with the batch,
    /// whether a `Retire` came.
    fn gather(&self, batching: Batching) -> Option<(Vec<Taken>, bool)> {
        let _gathering = lock(&self.gather);
        let mut batch = Vec::with_capacity(batching.most);
        let mut until = None;
        while batch.len() < batching.most {
            let job = match until {
                None => self.queue.recv().ok()?,
                // In slices, so that a worker giving up on its requests (`abandon`) finds
                // the batch in hand served (503) at once, not after the wait.
                Some(at) if Instant::now() < at && !self.stopped.load(Ordering::Acquire) => {
                    let slice = at.min(Instant::now() + GATHER_SLICE);
                    match self.queue.recv_deadline(slice) {
                        Ok(job) => job,
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                        Err(_) => break,
                    }
                }
                Some(_) => break,
            };
            match job {
                Job::Http { request, reply } => {
                    until.get_or_insert(request.received + batching.wait);
                    batch.push((request, reply));
                }
                Job::Probe(id) => self.answer_probe(id),
                Job::Retire => return Some((batch, true)),
            }
        }
        Some((batch, false))
    }

    /// Serves a batch: health checks alone, then the app requests still queued in one call
    /// of the app's batch handler, each answered, recorded and stamped on its own. Returns
    /// how many of them were written off (their deadline passed inside the app).
    fn serve_batch(&self, batch: Vec<Taken>, slot: &Slot, views: &mut Vec<RequestView>) -> usize {
        let mut written_off = 0;
        let mut taken = Vec::with_capacity(batch.len());
        for (request, reply) in batch {
            if request.kind == Kind::Health {
                if let After::WrittenOff(n) = self.serve(request, reply, slot, &mut views[0]) {
                    written_off += n;
                }
            } else if self.leaves_queue(&request, State::InApp) {
                taken.push((request, reply));
            }
        }
        if taken.is_empty() {
            return written_off;
        }
        let ids: Vec<RequestId> = taken.iter().map(|(request, _)| request.id()).collect();
        let _inside = self.gate.read().unwrap_or_else(|p| p.into_inner());
        if self.stopped.load(Ordering::Acquire) {
            for ((request, reply), id) in taken.into_iter().zip(&ids) {
                if let After::WrittenOff(n) = self.stopped_answer(request, reply, id) {
                    written_off += n;
                }
            }
            return written_off;
        }
        let requests: Vec<Arc<Received>> = taken.iter().map(|(r, _)| r.clone()).collect();
        slot.serving()
            .extend(taken.into_iter().map(|(request, reply)| Serving {
                request,
                reply: Some(reply),
            }));
        // Each request's calls: cancellation of its own; no streaming in a batch.
        let no_reply = || None;
        let mut calls: Vec<Call> = requests
            .iter()
            .zip(&ids)
            .map(|(request, id)| Call::new(request, id, &self.runtime, &no_reply).in_batch())
            .collect();
        if views.len() < requests.len() {
            views.resize_with(requests.len(), RequestView::default);
        }
        let raw: Vec<MsrRequest> = requests
            .iter()
            .zip(&ids)
            .zip(views.iter_mut())
            .zip(calls.iter_mut())
            .map(|(((request, id), view), call)| view.of(request, id, call.context()))
            .collect();
        let responses = self.app.handle_batch(&raw);
        drop(raw);
        drop(calls);
        let servings = std::mem::take(&mut *slot.serving());
        for ((serving, id), response) in servings.into_iter().zip(&ids).zip(&responses) {
            let request = serving.request;
            self.remember(&request);
            match request.leaves_app() {
                State::InApp => {
                    if let Some(reply) = serving.reply {
                        self.send(reply, bridge::app_answer(response), &request, id);
                    }
                }
                State::WrittenOff => written_off += 1,
                _ => {} // late (answered 504) or abandoned (503)
            }
        }
        written_off
    }
}

//! Every request's ID: the client's `X-Request-ID` when it is sane, else a new one. It is
//! echoed in the answer, written in the access line and the worker's lines about the
//! request, and given to the app (`Request::id()`).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{HeaderName, HeaderValue};
use http::request::Parts;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client ID taken as it is.
const MAX_LENGTH: usize = 128;

/// Makes a worker's IDs: 32 hex digits, a keyed hash (random keys per worker) of a count,
/// so they cannot be guessed or collide across workers, at the cost of two SipHash rounds.
pub struct RequestIds {
    keys: std::collections::hash_map::RandomState,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> RequestIds {
        RequestIds {
            keys: std::collections::hash_map::RandomState::new(),
            next: AtomicU64::new(0),
        }
    }

    /// The ID of the request with head `head`.
    pub fn of(&self, head: &Parts) -> HeaderValue {
        match head.headers.get(&HEADER) {
            Some(given) if sane(given.as_bytes()) => given.clone(),
            _ => self.fresh(),
        }
    }

    fn fresh(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut text = [0u8; 32];
        let halves = [self.keys.hash_one(n), self.keys.hash_one(!n)];
        for (digits, half) in text.chunks_exact_mut(16).zip(halves) {
            for (i, digit) in digits.iter_mut().enumerate() {
                *digit = b"0123456789abcdef"[((half >> (60 - 4 * i)) & 0xf) as usize];
            }
        }
        HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("-"))
    }
}

/// 1 to 128 letters, digits and `-_.:/+=@`: safe in a header, a log line and a URL.
fn sane(id: &[u8]) -> bool {
    (1..=MAX_LENGTH).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(id: Option<&str>) -> Parts {
        let mut request = http::Request::builder().uri("/");
        if let Some(id) = id {
            request = request.header("X-Request-ID", id);
        }
        request.body(()).expect("a request").into_parts().0
    }

    #[test]
    fn a_sane_client_id_is_kept_and_others_are_replaced() {
        let ids = RequestIds::new();
        assert_eq!(
            ids.of(&head(Some("abc-123_x.y:z/+=@"))),
            "abc-123_x.y:z/+=@"
        );
        for insane in ["", "a b", "a\"b", "é", &"x".repeat(129)] {
            let id = ids.of(&head(Some(insane)));
            assert_ne!(id, insane);
            assert_eq!(id.len(), 32, "{id:?}");
        }
    }

    #[test]
    fn made_up_ids_are_32_hex_digits_and_differ() {
        let ids = RequestIds::new();
        let (a, b) = (ids.of(&head(None)), ids.of(&head(None)));
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.len(), 32);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit), "{id:?}");
        }
    }
}

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

/// Makes a worker's IDs: 32 hex digits, a random 64-bit key of the worker's, then a count
/// mixed with a second key (splitmix64's finalizer, a bijection: no two counts give the same
/// ID). Unique in the worker, and across workers but for a 2^-64 chance.
pub struct RequestIds {
    keys: [u64; 2],
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> RequestIds {
        let random = std::collections::hash_map::RandomState::new();
        RequestIds {
            keys: [random.hash_one(0u64), random.hash_one(1u64)],
            next: AtomicU64::new(0),
        }
    }

    /// The next request's seed: all the I/O side takes per request. The ID is made from
    /// it where it is needed, for most requests on their pool thread (the I/O thread
    /// bounds the throughput).
    pub fn seed(&self) -> IdSeed {
        IdSeed {
            keys: self.keys,
            count: self.next.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// What a request's ID is made from, with its head: the same ID wherever it is made.
#[derive(Clone, Copy, Debug)]
pub struct IdSeed {
    keys: [u64; 2],
    count: u64,
}

impl IdSeed {
    /// The ID of the request with head `head`: the client's if sane, else made here.
    pub fn id(&self, head: &Parts) -> RequestId {
        match head.headers.get(&HEADER) {
            Some(given) if sane(given.as_bytes()) => RequestId::Given(given.clone()),
            _ => RequestId::Made(self.fresh()),
        }
    }

    fn fresh(&self) -> [u8; 32] {
        let mut text = [0u8; 32];
        let bytes = [
            self.keys[0].to_be_bytes(),
            mix(self.count ^ self.keys[1]).to_be_bytes(),
        ];
        for (pair, byte) in text.chunks_exact_mut(2).zip(bytes.iter().flatten()) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(*byte)]);
        }
        text
    }
}

/// A request's ID: the client's (a slice of the request's head, cheap to clone), or made
/// here (kept inline: no allocation until it is written into the answer).
#[derive(Clone, Debug)]
pub enum RequestId {
    Given(HeaderValue),
    Made([u8; 32]),
}

impl RequestId {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Given(value) => value.as_bytes(),
            RequestId::Made(text) => text,
        }
    }

    /// As text: it is checked or made of visible ASCII.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("-")
    }

    /// Puts the ID in an answer's `X-Request-ID`.
    pub fn stamp(&self, headers: &mut http::HeaderMap) {
        headers.insert(HEADER, self.header_value());
    }

    /// For the answer's `X-Request-ID`.
    pub fn header_value(&self) -> HeaderValue {
        match self {
            RequestId::Given(value) => value.clone(),
            RequestId::Made(text) => {
                // SAFETY: 32 hex digits are a valid header value, as `from_bytes` would
                // check (and that check was a tenth of this feature's cost per request).
                unsafe {
                    HeaderValue::from_maybe_shared_unchecked(bytes::Bytes::copy_from_slice(text))
                }
            }
        }
    }
}

/// Each byte's two hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let digits = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [digits[i >> 4], digits[i & 0xf]];
        i += 1;
    }
    pairs
};

/// splitmix64's output function: every bit of `x` moves every bit of the result.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
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
        let kept = "abc-123_x.y:z/+=@";
        assert_eq!(ids.seed().id(&head(Some(kept))).as_str(), kept);
        for insane in ["", "a b", "a\"b", "é", &"x".repeat(129)] {
            let id = ids.seed().id(&head(Some(insane)));
            assert_ne!(id.as_str(), insane);
            assert_eq!(id.as_bytes().len(), 32, "{id:?}");
        }
    }

    #[test]
    fn made_up_ids_are_32_hex_digits_and_differ() {
        let ids = RequestIds::new();
        let (a, b) = (ids.seed().id(&head(None)), ids.seed().id(&head(None)));
        assert_ne!(a.as_str(), b.as_str());
        // One seed makes the same ID wherever it is made (the I/O side and the pool).
        let seed = ids.seed();
        assert_eq!(seed.id(&head(None)).as_str(), seed.id(&head(None)).as_str());
        for id in [a, b] {
            assert_eq!(id.as_bytes().len(), 32);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit), "{id:?}");
            assert_eq!(id.header_value().as_bytes(), id.as_bytes());
        }
    }
}

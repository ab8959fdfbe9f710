//! What the worker checks in a request's head before anything reads its body or the pool
//! sees it: the framing hyper lets through, CORS preflights and the API key. It runs on
//! the I/O thread for every request, so it is one pass over the headers and allocates
//! nothing for a request that passes.
//!
//! Framing, after RFC 9112 §6: hyper already refuses (400, connection closed) two
//! different `Content-Length`s, a length that is not plain digits, a `Transfer-Encoding`
//! whose last coding is not `chunked`, and any `Transfer-Encoding` in HTTP/1.0; a request
//! with both `Transfer-Encoding` and `Content-Length` it reads by `Transfer-Encoding` alone
//! and closes the connection after the answer. What it accepts and a proxy in front may
//! read differently is refused here, with 400 and the connection ended: a
//! `Transfer-Encoding` other than exactly `chunked` (`gzip, chunked`), or more than one.

use http::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD,
    AUTHORIZATION, ORIGIN, TRANSFER_ENCODING,
};
use http::request::Parts;
use http::Method;
use regex::Regex;
use subtle::ConstantTimeEq;

use crate::config::{origin_regex, Settings};

pub struct Screen {
    api_key: Option<Vec<u8>>,
    origins: Option<Regex>,
}

pub enum Verdict {
    /// On to the app; `cors`: the origin, which matched, for the answer's CORS headers.
    Pass {
        cors: Option<HeaderValue>,
    },
    Refuse(Refusal),
}

/// An answer given in the app's place.
pub struct Refusal {
    pub status: u16,
    pub text: String,
    pub headers: Vec<(&'static str, HeaderValue)>,
    /// The connection must end after the answer: the stream can no longer be trusted.
    pub ends: bool,
    pub cors: Option<HeaderValue>,
}

impl Refusal {
    fn new(status: u16, text: impl Into<String>) -> Refusal {
        Refusal {
            status,
            text: text.into(),
            headers: Vec::new(),
            ends: false,
            cors: None,
        }
    }

    fn ending(status: u16, text: impl Into<String>) -> Refusal {
        Refusal {
            ends: true,
            ..Refusal::new(status, text)
        }
    }
}

/// Paths open without the API key.
const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// How long a browser may reuse a preflight answer.
const PREFLIGHT_MAX_AGE_S: &str = "600";

/// The custom header that may carry the API key.
const X_API_KEY: &str = "x-api-key";

impl Screen {
    pub fn new(settings: &Settings) -> Screen {
        Screen {
            api_key: settings
                .api_key
                .as_ref()
                .map(|key| key.expose().as_bytes().to_vec()),
            origins: settings
                .cors_allow_origin_regex
                .as_deref()
                .and_then(|pattern| origin_regex(pattern).ok()),
        }
    }

    pub fn check(&self, head: &Parts) -> Verdict {
        let headers = &head.headers;
        if let Err(problem) = check_framing(headers) {
            return Verdict::Refuse(Refusal::ending(400, format!("{problem}\n")));
        }
        let origin = headers.get(ORIGIN);
        let cors = match (&self.origins, origin) {
            (Some(origins), Some(origin)) => origin
                .to_str()
                .is_ok_and(|o| origins.is_match(o))
                .then(|| origin.clone()),
            _ => None,
        };
        let preflight = head.method == Method::OPTIONS && origin.is_some();
        if let (Some(_), true, Some(method)) = (
            &self.origins,
            preflight,
            headers.get(ACCESS_CONTROL_REQUEST_METHOD),
        ) {
            return Verdict::Refuse(preflight_answer(
                cors,
                method,
                headers.get(ACCESS_CONTROL_REQUEST_HEADERS),
            ));
        }
        if let Some(key) = &self.api_key {
            if !OPEN_PATHS.contains(&head.uri.path()) {
                if let Err(problem) = check_key(key, headers) {
                    let mut refusal = Refusal::new(401, problem);
                    refusal
                        .headers
                        .push(("www-authenticate", HeaderValue::from_static("Bearer")));
                    refusal.cors = cors;
                    return Verdict::Refuse(refusal);
                }
            }
        }
        Verdict::Pass { cors }
    }
}

/// `Transfer-Encoding`, when present, must be exactly `chunked` (letter case aside), once.
fn check_framing(headers: &HeaderMap) -> Result<(), &'static str> {
    let mut encodings = headers.get_all(TRANSFER_ENCODING).iter();
    let Some(first) = encodings.next() else {
        return Ok(());
    };
    if encodings.next().is_some() {
        return Err("more than one Transfer-Encoding header");
    }
    match first.as_bytes().eq_ignore_ascii_case(b"chunked") {
        true => Ok(()),
        false => Err("Transfer-Encoding must be exactly \"chunked\""),
    }
}

fn preflight_answer(
    allowed: Option<HeaderValue>,
    method: &HeaderValue,
    headers: Option<&HeaderValue>,
) -> Refusal {
    let Some(origin) = allowed else {
        return Refusal::new(403, "origin not allowed by cors_allow_origin_regex\n");
    };
    let mut answer = Refusal::new(204, "");
    answer.cors = Some(origin);
    answer
        .headers
        .push(("access-control-allow-methods", method.clone()));
    if let Some(headers) = headers {
        answer
            .headers
            .push(("access-control-allow-headers", headers.clone()));
    }
    answer.headers.push((
        "access-control-max-age",
        HeaderValue::from_static(PREFLIGHT_MAX_AGE_S),
    ));
    answer
}

/// Either header may carry the key; every candidate is compared in constant time.
fn check_key(key: &[u8], headers: &HeaderMap) -> Result<(), &'static str> {
    let bearer = headers
        .get_all(AUTHORIZATION)
        .iter()
        .find_map(|value| bearer_token(value.as_bytes()));
    let given = [bearer, headers.get(X_API_KEY).map(HeaderValue::as_bytes)];
    if given.iter().all(Option::is_none) {
        return Err(
            "this path needs the API key: send `Authorization: Bearer KEY` \
                    or `X-API-Key: KEY`\n",
        );
    }
    let matched = given
        .iter()
        .flatten()
        .fold(subtle::Choice::from(0), |any, candidate| {
            any | candidate.ct_eq(key)
        });
    match bool::from(matched) {
        true => Ok(()),
        false => Err("the API key given is not the right one\n"),
    }
}

/// The token of `Bearer TOKEN` (the scheme's case does not matter).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, token) = (&value[..space], &value[space + 1..]);
    let start = token.iter().position(|&b| b != b' ')?;
    scheme
        .eq_ignore_ascii_case(b"Bearer")
        .then_some(&token[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer  abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
    }

    #[test]
    fn only_a_single_plain_chunked_passes() {
        let mut headers = HeaderMap::new();
        assert!(check_framing(&headers).is_ok());
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("Chunked"));
        assert!(check_framing(&headers).is_ok());
        for bad in ["gzip, chunked", "chunked, chunked", "identity"] {
            headers.insert(TRANSFER_ENCODING, HeaderValue::from_static(bad));
            assert!(check_framing(&headers).is_err(), "{bad}");
        }
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.append(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert!(check_framing(&headers).is_err());
    }
}

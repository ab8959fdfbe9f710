//! What the worker checks in a request's head before anything reads its body or the pool
//! sees it: the framing (request smuggling), the head's size, CORS preflights and the API
//! key. It runs on the receiving thread for every request, so it is one pass over the
//! headers and allocates nothing for a request that passes.
//!
//! Framing, after RFC 9112 §6: tiny_http ignores `Content-Length` when `Transfer-Encoding`
//! is present, decodes *any* `Transfer-Encoding` as chunked, reads the first of several
//! `Content-Length` headers, and takes a length it cannot parse as no body at all. A proxy
//! in front that reads the same bytes differently would see other requests than the worker
//! does, so every such request is refused with 400 and its connection ended (`closer`).

use regex::Regex;
use subtle::ConstantTimeEq;
use tiny_http::{Method, Request};

use crate::config::{origin_regex, Settings};

pub struct Screen {
    max_head: usize,
    api_key: Option<Vec<u8>>,
    origins: Option<Regex>,
}

pub enum Verdict {
    /// On to the app; `cors`: the origin matched, so the answer carries the CORS headers.
    Pass {
        cors: bool,
    },
    Refuse(Refusal),
}

/// An answer given in the app's place.
pub struct Refusal {
    pub status: u16,
    pub text: String,
    pub headers: Vec<(&'static [u8], Vec<u8>)>,
    /// The connection must end after the answer: the stream can no longer be trusted.
    pub end: bool,
    pub cors: bool,
}

impl Refusal {
    fn new(status: u16, text: impl Into<String>) -> Refusal {
        Refusal {
            status,
            text: text.into(),
            headers: Vec::new(),
            end: false,
            cors: false,
        }
    }

    fn ending(status: u16, text: impl Into<String>) -> Refusal {
        Refusal {
            end: true,
            ..Refusal::new(status, text)
        }
    }
}

/// Paths open without the API key.
const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// How long a browser may reuse a preflight answer.
const PREFLIGHT_MAX_AGE_S: &str = "600";

/// What one pass over the headers found.
#[derive(Default)]
struct Head<'r> {
    bytes: usize,
    content_length: Option<u64>,
    transfer_encodings: usize,
    chunked: bool,
    origin: Option<&'r str>,
    preflight_method: Option<&'r str>,
    preflight_headers: Option<&'r str>,
    bearer: Option<&'r str>,
    api_key_header: Option<&'r str>,
}

impl Screen {
    pub fn new(settings: &Settings) -> Screen {
        Screen {
            max_head: settings.max_header_bytes as usize,
            api_key: settings
                .api_key
                .as_ref()
                .map(|key| key.expose().as_bytes().to_vec()),
            origins: settings
                .cors_allow_origin_regex
                .as_deref()
                .map(|pattern| origin_regex(pattern).expect("validated with the config")),
        }
    }

    pub fn check(&self, request: &Request) -> Verdict {
        let head = match read_head(request) {
            Ok(head) => head,
            Err(problem) => return Verdict::Refuse(Refusal::ending(400, format!("{problem}\n"))),
        };
        if head.bytes > self.max_head {
            return Verdict::Refuse(Refusal::ending(
                431,
                format!(
                    "request head too large: {} bytes, the limit is {} bytes\n",
                    head.bytes, self.max_head
                ),
            ));
        }
        let cors = match (&self.origins, head.origin) {
            (Some(origins), Some(origin)) => origins.is_match(origin),
            _ => false,
        };
        let preflight = *request.method() == Method::Options && head.origin.is_some();
        if let (Some(_), true, Some(method)) = (&self.origins, preflight, head.preflight_method) {
            return Verdict::Refuse(preflight_answer(cors, method, head.preflight_headers));
        }
        if let Some(key) = &self.api_key {
            let path = request.url().split('?').next().unwrap_or("");
            if !OPEN_PATHS.contains(&path) {
                if let Err(problem) = check_key(key, &head) {
                    let mut refusal = Refusal::new(401, problem);
                    refusal
                        .headers
                        .push((b"WWW-Authenticate", b"Bearer".to_vec()));
                    refusal.cors = cors;
                    return Verdict::Refuse(refusal);
                }
            }
        }
        Verdict::Pass { cors }
    }
}

fn preflight_answer(allowed: bool, method: &str, headers: Option<&str>) -> Refusal {
    if !allowed {
        return Refusal::new(403, "origin not allowed by cors_allow_origin_regex\n");
    }
    let mut answer = Refusal::new(204, "");
    answer.cors = true;
    answer
        .headers
        .push((b"Access-Control-Allow-Methods", method.as_bytes().to_vec()));
    if let Some(headers) = headers {
        answer
            .headers
            .push((b"Access-Control-Allow-Headers", headers.as_bytes().to_vec()));
    }
    answer.headers.push((
        b"Access-Control-Max-Age",
        PREFLIGHT_MAX_AGE_S.as_bytes().to_vec(),
    ));
    answer
}

/// Either header may carry the key; every candidate is compared in constant time.
fn check_key(key: &[u8], head: &Head) -> Result<(), &'static str> {
    let given = [head.bearer, head.api_key_header];
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
            any | candidate.as_bytes().ct_eq(key)
        });
    match bool::from(matched) {
        true => Ok(()),
        false => Err("the API key given is not the right one\n"),
    }
}

/// One pass over the request line and headers: their size, the body's framing (or why it
/// cannot be trusted), and the headers CORS and the API key need.
fn read_head(request: &Request) -> Result<Head<'_>, &'static str> {
    let mut head = Head {
        // "METHOD URL HTTP/1.1\r\n"
        bytes: request.method().as_str().len() + request.url().len() + 12,
        ..Head::default()
    };
    for header in request.headers() {
        let field = &header.field;
        let value = header.value.as_str();
        head.bytes += field.as_str().len() + value.len() + 4;
        if field.equiv("Content-Length") {
            let length = parse_length(value)?;
            if head.content_length.is_some_and(|l| l != length) {
                return Err("two Content-Length headers with different values");
            }
            head.content_length = Some(length);
        } else if field.equiv("Transfer-Encoding") {
            head.transfer_encodings += 1;
            head.chunked = value.eq_ignore_ascii_case("chunked");
            if !head.chunked {
                return Err("Transfer-Encoding must be exactly \"chunked\"");
            }
        } else if field.equiv("Origin") {
            head.origin = Some(value);
        } else if field.equiv("Access-Control-Request-Method") {
            head.preflight_method = Some(value);
        } else if field.equiv("Access-Control-Request-Headers") {
            head.preflight_headers = Some(value);
        } else if field.equiv("Authorization") {
            head.bearer = bearer_token(value).or(head.bearer);
        } else if field.equiv("X-API-Key") {
            head.api_key_header = Some(value);
        }
    }
    if head.transfer_encodings > 1 {
        return Err("more than one Transfer-Encoding header");
    }
    if head.chunked && head.content_length.is_some() {
        return Err("both Content-Length and Transfer-Encoding");
    }
    if head.chunked && request.http_version().0 == 1 && request.http_version().1 == 0 {
        return Err("Transfer-Encoding in an HTTP/1.0 request");
    }
    Ok(head)
}

/// A Content-Length value: decimal digits only (tiny_http would also take `+5`).
fn parse_length(value: &str) -> Result<u64, &'static str> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err("Content-Length is not a number");
    }
    value
        .parse()
        .map_err(|_| "Content-Length is too large to be a length")
}

/// The token of `Bearer TOKEN` (the scheme's case does not matter).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("Bearer")
        .then(|| token.trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(parse_length("0"), Ok(0));
        assert_eq!(parse_length("1024"), Ok(1024));
        for bad in ["", "+5", "-1", " 5", "5 ", "0x10", "5,5", "1e3"] {
            assert!(parse_length(bad).is_err(), "{bad:?} passed");
        }
        assert!(parse_length("99999999999999999999999").is_err());
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}

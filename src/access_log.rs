//! The access log: one structured line per request, through `tracing`.
//!
//! Lines go to the `statuslens::access` target so `RUST_LOG` can tune them apart from
//! the rest. No header value is ever logged except the request id, and query
//! parameters whose names look secret are replaced before the line is written.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderValue, Method, Uri};

use crate::config::LogVolume;
use crate::consumer::ConsumerId;
use crate::iptext::IpText;
use crate::metrics::Source;
use crate::status;

/// What gets logged per request.
#[derive(Debug, Clone, Copy)]
pub struct AccessLog {
    volume: LogVolume,
}

/// One finished request, as the log sees it.
pub struct Entry<'a> {
    /// Route label.
    pub route: &'a str,
    /// Upstream URL of the route ("" for unmatched).
    pub upstream: &'a str,
    /// Request method.
    pub method: &'a Method,
    /// Request target; its query is redacted before logging.
    pub uri: &'a Uri,
    /// Counted status.
    pub status: u16,
    /// Who produced the status.
    pub source: Source,
    /// When the client left early: the status the upstream had sent.
    pub upstream_status: Option<u16>,
    /// Arrival to completion.
    pub duration: Duration,
    /// Arrival to the upstream's response head, when one came.
    pub upstream_header: Option<Duration>,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// The connection's peer.
    pub client: SocketAddr,
    /// The client a trusted proxy's `X-Forwarded-For` named: logged as `client`, with
    /// the peer as `via`.
    pub forwarded_for: Option<std::net::IpAddr>,
    /// Request id.
    pub request_id: &'a HeaderValue,
    /// Seconds the upstream's `Retry-After` asked for, if it sent one.
    pub retry_after: Option<f64>,
    /// Hashed consumer identity, when the route identifies consumers.
    pub consumer: Option<ConsumerId>,
    /// The request went to the upstream twice (its pooled connection closed unanswered).
    pub resent: bool,
}

impl AccessLog {
    /// A log with this volume.
    pub fn new(volume: LogVolume) -> Self {
        AccessLog { volume }
    }

    /// Logs one request if the volume setting asks for it; proxy-made errors always are.
    pub fn request(&self, e: &Entry<'_>) {
        let proxy_error = e.source == Source::Proxy;
        let wanted = match self.volume {
            LogVolume::All => true,
            LogVolume::Errors => !(200..300).contains(&e.status),
            LogVolume::Off => false,
        };
        if !(wanted || proxy_error) {
            return;
        }
        let class = status::Class::of(e.status).map_or("invalid", |c| c.label());
        let path = Redacted(e.uri).text();
        let path = &*path;
        let request_id = e.request_id.to_str().unwrap_or("(non-ascii)");
        let retry = status::lookup(e.status).map_or("", |i| i.retry.label());
        let consumer = e.consumer.map(tracing::field::display);
        // One division of whole nanoseconds: the nearest float to the exact value, so the
        // line shows 1.056148, not 1.0561479999999999.
        let duration_ms = e.duration.as_nanos() as f64 / 1e6;
        let upstream_header_ms = e.upstream_header.map(|d| d.as_nanos() as f64 / 1e6);
        let (client, via) = match e.forwarded_for {
            None => (IpText::socket(e.client), None),
            Some(ip) => (IpText::ip(ip), Some(IpText::socket(e.client))),
        };
        let client = client.as_str();
        let via = via.as_ref().map(IpText::as_str);
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: "statuslens::access",
                    route = e.route,
                    method = e.method.as_str(),
                    path,
                    status = e.status,
                    class,
                    meaning = status::meaning(e.status),
                    source = e.source.label(),
                    upstream_status = e.upstream_status,
                    duration_ms,
                    upstream_header_ms,
                    bytes_in = e.bytes_in,
                    bytes_out = e.bytes_out,
                    upstream = e.upstream,
                    client,
                    via,
                    request_id,
                    retry,
                    retry_after_s = e.retry_after,
                    consumer,
                    resent = e.resent.then_some(true),
                    "request"
                )
            };
        }
        if proxy_error && e.status >= 500 {
            line!(warn)
        } else {
            line!(info)
        }
    }
}

/// Query parameter names whose values never reach a log.
const SECRET_WORDS: [&str; 12] = [
    "token",
    "key",
    "secret",
    "password",
    "passwd",
    "pwd",
    "signature",
    "sig",
    "auth",
    "credential",
    "session",
    "jwt",
];

/// Whether a query parameter name looks like it carries a secret.
pub fn is_secret_param(name: &str) -> bool {
    // Case-insensitive substring search in place: this runs for every query parameter
    // of every logged request, so no lower-cased copy. Words are tried only where a
    // byte could begin one: every word at every offset was ~500 instructions for a
    // five-letter name (callgrind).
    let name = name.as_bytes();
    (0..name.len()).any(|i| {
        BEGINS_A_WORD[usize::from(name[i])]
            && SECRET_WORDS.iter().any(|w| {
                name[i..]
                    .get(..w.len())
                    .is_some_and(|at| at.eq_ignore_ascii_case(w.as_bytes()))
            })
    })
}

/// The bytes a [`SECRET_WORDS`] word begins with, either case.
const BEGINS_A_WORD: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < SECRET_WORDS.len() {
        let first = SECRET_WORDS[i].as_bytes()[0];
        table[first.to_ascii_lowercase() as usize] = true;
        table[first.to_ascii_uppercase() as usize] = true;
        i += 1;
    }
    table
};

/// Whether a query parameter's value must not be logged. Its name is checked as written
/// and as decoded: an escape can hide a word in either form (`api%5Fkey` decodes to one;
/// `%dcredential` decodes away from one).
fn hides(name: &str) -> bool {
    is_secret_param(name)
        || (name.bytes().any(|b| b == b'%' || b == b'+')
            && is_secret_param(&percent_decode_lossy(name)))
}

/// Displays a request target with secret-looking query values replaced by `REDACTED`.
pub struct Redacted<'a>(pub &'a Uri);

impl<'a> Redacted<'a> {
    /// The target as logged: borrowed from the request unless a value must be hidden.
    pub fn text(&self) -> std::borrow::Cow<'a, str> {
        let uri = self.0;
        let Some(query) = uri.query() else {
            return uri.path().into();
        };
        let secret = query
            .split('&')
            .any(|pair| pair.split_once('=').is_some_and(|(name, _)| hides(name)));
        match uri.path_and_query() {
            Some(pq) if !secret && pq.path() == uri.path() => pq.as_str().into(),
            _ => self.to_string().into(),
        }
    }
}

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.path())?;
        let Some(query) = self.0.query() else {
            return Ok(());
        };
        f.write_str("?")?;
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                f.write_str("&")?;
            }
            match pair.split_once('=') {
                Some((name, _)) if hides(name) => write!(f, "{name}=REDACTED")?,
                _ => f.write_str(pair)?,
            }
        }
        Ok(())
    }
}

/// Decodes `%XX` escapes so `api%5Fkey` is recognised as `api_key`.
fn percent_decode_lossy(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            // Work on bytes: slicing the str here could split a UTF-8 character.
            if let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_secret_query_values() {
        let uri: Uri = "/a/b?user=bob&access_token=abc123&API%5FKey=zzz&x=1&password=p"
            .parse()
            .unwrap();
        let shown = Redacted(&uri).to_string();
        assert_eq!(
            shown,
            "/a/b?user=bob&access_token=REDACTED&API%5FKey=REDACTED&x=1&password=REDACTED"
        );
        assert!(!shown.contains("abc123") && !shown.contains("zzz"));
        // Found by the fuzzer: an invalid escape in front of the word hid it once decoded.
        let uri: Uri = "/x?pa%dcredential=hunter2".parse().unwrap();
        assert_eq!(Redacted(&uri).to_string(), "/x?pa%dcredential=REDACTED");
    }

    #[test]
    fn secret_search_finds_every_word_wherever_it_is() {
        // The definition: any word, any case, as a substring.
        let plain = |name: &str| {
            SECRET_WORDS.iter().any(|w| {
                name.as_bytes()
                    .windows(w.len())
                    .any(|at| at.eq_ignore_ascii_case(w.as_bytes()))
            })
        };
        let mut names = vec![String::new(), "limit".into(), "page".into(), "tok".into()];
        for w in SECRET_WORDS {
            let upper = w.to_ascii_uppercase();
            let mixed: String = w
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 0 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            for form in [w.to_string(), upper, mixed] {
                for (before, after) in [("", ""), ("x_", ""), ("", "_id"), ("tt", "ss"), ("é", "9")]
                {
                    names.push(format!("{before}{form}{after}"));
                }
                // Cut short by one byte, at either end: no longer the word.
                names.push(form[1..].to_string());
                names.push(form[..form.len() - 1].to_string());
            }
        }
        for name in &names {
            assert_eq!(is_secret_param(name), plain(name), "{name:?}");
        }
        assert!(names.iter().filter(|n| plain(n)).count() > SECRET_WORDS.len() * 10);
    }

    #[test]
    fn text_borrows_unless_a_value_is_hidden() {
        for target in [
            "/x?a=1&flag",
            "/x",
            "/x?",
            "*",
            "http://api.test/v1?page=2",
            "/a/b?user=bob&access_token=abc123",
            "/x?pa%dcredential=hunter2",
            "/x?to%6Ben=1",
            "/x?%E2%82=1&t%C3%A9st=%ZZ",
            "/x?API%5FKey=z&q",
        ] {
            let uri: Uri = target.parse().unwrap();
            let text = Redacted(&uri).text();
            assert_eq!(text, Redacted(&uri).to_string(), "{target}");
            let borrowed = matches!(text, std::borrow::Cow::Borrowed(_));
            assert_eq!(borrowed, !text.contains("REDACTED"), "{target}: {text}");
        }
    }

    #[test]
    fn plain_paths_untouched() {
        let uri: Uri = "/x?a=1&flag".parse().unwrap();
        assert_eq!(Redacted(&uri).to_string(), "/x?a=1&flag");
        let uri: Uri = "/x?%E2%82=1&t%C3%A9st=%ZZ".parse().unwrap();
        assert_eq!(Redacted(&uri).to_string(), "/x?%E2%82=1&t%C3%A9st=%ZZ");
        let uri: Uri = "/x".parse().unwrap();
        assert_eq!(Redacted(&uri).to_string(), "/x");
    }
}

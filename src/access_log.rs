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
use crate::logfmt;
use crate::metrics::Source;
use crate::status;

/// What gets logged per request.
#[derive(Debug, Clone, Copy)]
pub struct AccessLog {
    volume: LogVolume,
}

/// One finished request, as the log sees it.
#[derive(Clone, Copy)]
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
    /// The proxy's answer replaced one the upstream may have been working on (the
    /// request was cut at the drain timeout, or its handling panicked): whatever the
    /// code, a retry is only safe for an idempotent request.
    pub in_doubt: bool,
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
        let warn = proxy_error && e.status >= 500;
        let line = Line::of(e);
        logfmt::with_prerendered(TARGET, |out| line.write_json(out), || line.emit(warn));
    }
}

/// The access log's `tracing` target.
const TARGET: &str = "statuslens::access";

/// One line's values, worked out once for the event and for its pre-rendered JSON.
struct Line<'a> {
    route: &'a str,
    method: &'a str,
    path: std::borrow::Cow<'a, str>,
    status: u16,
    class: &'static str,
    meaning: &'static str,
    source: &'static str,
    upstream_status: Option<u16>,
    duration: Duration,
    upstream_header: Option<Duration>,
    bytes_in: u64,
    bytes_out: u64,
    upstream: &'a str,
    client: IpText,
    via: Option<IpText>,
    request_id: &'a str,
    retry: &'static str,
    retry_after_s: Option<f64>,
    consumer: Option<ConsumerId>,
    resent: bool,
}

impl<'a> Line<'a> {
    fn of(e: &Entry<'a>) -> Self {
        let (client, via) = match e.forwarded_for {
            None => (IpText::socket(e.client), None),
            Some(ip) => (IpText::ip(ip), Some(IpText::socket(e.client))),
        };
        Line {
            route: e.route,
            method: e.method.as_str(),
            path: Redacted(e.uri).text(),
            status: e.status,
            class: status::Class::counted(e.status).label(),
            meaning: status::meaning(e.status),
            source: e.source.label(),
            upstream_status: e.upstream_status,
            duration: e.duration,
            upstream_header: e.upstream_header,
            bytes_in: e.bytes_in,
            bytes_out: e.bytes_out,
            upstream: e.upstream,
            client,
            via,
            request_id: e.request_id.to_str().unwrap_or("(non-ascii)"),
            retry: if e.in_doubt {
                status::Retry::IdempotentOnly.label()
            } else {
                status::lookup(e.status).map_or("", |i| i.retry.label())
            },
            retry_after_s: e.retry_after,
            consumer: e.consumer,
            resent: e.resent,
        }
    }

    /// The event; every field also in [`Line::write_json`], in the same order.
    fn emit(&self, warn: bool) {
        let path = &*self.path;
        let class = self.class;
        // As `Display`: checked as text only if the fields are visited.
        let client = tracing::field::display(&self.client);
        let via = self.via.as_ref().map(tracing::field::display);
        let request_id = self.request_id;
        let retry = self.retry;
        // One division of whole nanoseconds: the nearest float to the exact value, so the
        // line shows 1.056148, not 1.0561479999999999.
        let duration_ms = self.duration.as_nanos() as f64 / 1e6;
        let upstream_header_ms = self.upstream_header.map(|d| d.as_nanos() as f64 / 1e6);
        let consumer = self.consumer.map(tracing::field::display);
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: TARGET,
                    route = self.route,
                    method = self.method,
                    path,
                    status = self.status,
                    class,
                    meaning = self.meaning,
                    source = self.source,
                    upstream_status = self.upstream_status,
                    duration_ms,
                    upstream_header_ms,
                    bytes_in = self.bytes_in,
                    bytes_out = self.bytes_out,
                    upstream = self.upstream,
                    client,
                    via,
                    request_id,
                    retry,
                    retry_after_s = self.retry_after_s,
                    consumer,
                    resent = self.resent.then_some(true),
                    "request"
                )
            };
        }
        if warn {
            line!(warn)
        } else {
            line!(info)
        }
    }

    /// The fields as [`logfmt::JsonLines`] writes [`Line::emit`]'s event, byte for byte
    /// (`prerendered_lines_match_visited_ones` compares), with constant keys.
    fn write_json(&self, out: &mut String) {
        // Writing to a String cannot fail.
        let text = |out: &mut String, key: &str, value: &str| {
            out.push_str(key);
            let _ = logfmt::write_json_str(out, value);
        };
        // Texts none of whose characters JSON escapes (`status_texts_need_no_escaping`,
        // `methods_and_addresses_need_no_escaping`): statuslens' own, a method (a token)
        // and an address. No check needed.
        let word = |out: &mut String, key: &str, value: &str| {
            out.push_str(key);
            out.push('"');
            out.push_str(value);
            out.push('"');
        };
        let number = |out: &mut String, key: &str, value: u64| {
            out.push_str(key);
            out.push_str(itoa::Buffer::new().format(value));
        };
        text(out, ",\"message\":\"request\",\"route\":", self.route);
        word(out, ",\"method\":", self.method);
        text(out, ",\"path\":", &self.path);
        number(out, ",\"status\":", self.status.into());
        word(out, ",\"class\":", self.class);
        word(out, ",\"meaning\":", self.meaning);
        word(out, ",\"source\":", self.source);
        if let Some(s) = self.upstream_status {
            number(out, ",\"upstream_status\":", s.into());
        }
        out.push_str(",\"duration_ms\":");
        logfmt::write_millis(out, self.duration.as_nanos());
        if let Some(d) = self.upstream_header {
            out.push_str(",\"upstream_header_ms\":");
            logfmt::write_millis(out, d.as_nanos());
        }
        number(out, ",\"bytes_in\":", self.bytes_in);
        number(out, ",\"bytes_out\":", self.bytes_out);
        text(out, ",\"upstream\":", self.upstream);
        word(out, ",\"client\":", self.client.as_str());
        if let Some(via) = &self.via {
            word(out, ",\"via\":", via.as_str());
        }
        text(out, ",\"request_id\":", self.request_id);
        word(out, ",\"retry\":", self.retry);
        if let Some(s) = self.retry_after_s {
            out.push_str(",\"retry_after_s\":");
            let _ = logfmt::write_f64(out, s);
        }
        if let Some(c) = self.consumer {
            out.push_str(",\"consumer\":");
            let _ = logfmt::write_json_display(out, &c);
        }
        if self.resent {
            out.push_str(",\"resent\":true");
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
    use std::sync::{Arc, Mutex};

    /// Lines a test subscriber wrote.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        /// The lines written since the last call, timestamps cut out.
        fn take(&self) -> Vec<String> {
            let text = String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap();
            text.lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
                    assert!(v["timestamp"].is_string(), "{l}");
                    let (_, rest) = l
                        .split_once("\",\"level\":")
                        .expect("a level after the time");
                    rest.to_string()
                })
                .collect()
        }
    }

    /// Fails unless `s` is written as a JSON string unchanged.
    fn unescaped(s: &str) {
        let mut json = String::new();
        crate::logfmt::write_json_str(&mut json, s).unwrap();
        assert_eq!(json, format!("\"{s}\""));
    }

    #[test]
    fn status_texts_need_no_escaping() {
        for code in 0..=1000 {
            unescaped(status::meaning(code));
            unescaped(status::Class::counted(code).label());
            unescaped(status::lookup(code).map_or("", |i| i.retry.label()));
        }
        for source in [Source::Upstream, Source::Proxy, Source::Client] {
            unescaped(source.label());
        }
    }

    #[test]
    fn methods_and_addresses_need_no_escaping() {
        // A method is a token: every byte a method may hold, alone and in a longer one.
        let mut taken = 0;
        for b in 0..=255u8 {
            for name in [vec![b], vec![b'X', b, b'Y']] {
                if let Ok(m) = Method::from_bytes(&name) {
                    unescaped(m.as_str());
                    taken += 1;
                }
            }
        }
        assert!(taken > 100, "{taken} methods");
        for addr in [
            "203.0.113.77:50123",
            "[2001:db8::1]:443",
            "[fe80::1%2]:80",
            "[::ffff:192.0.2.1]:8080",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            unescaped(IpText::socket(addr).as_str());
            unescaped(IpText::ip(addr.ip()).as_str());
        }
    }

    #[test]
    fn prerendered_lines_match_visited_ones() {
        let lines = Lines::default();
        let out = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(crate::logfmt::JsonLines)
            .with_writer(move || out.clone())
            .finish();
        let plain: Uri = "/v1/orders/42".parse().unwrap();
        let query: Uri = "/a/%22b%5C?user=bob&access_token=abc&x=%E2%82%AC"
            .parse()
            .unwrap();
        let absolute: Uri = "http://api.test:8080/x?page=2".parse().unwrap();
        // http takes a raw `"` and `\` in a path, a `\` in a query: the log escapes them.
        let raw: Uri = "/a/\"b\\c?q=x\\y&token=s\\".parse().unwrap();
        let ascii_id = HeaderValue::from_static("7f3a9c0e000000001234");
        let odd_id = HeaderValue::from_bytes(b"a\"b\\c\tend").unwrap();
        let binary_id = HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap();
        let purge = Method::from_bytes(b"PURGE").unwrap();
        let v4: SocketAddr = "203.0.113.77:50123".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let base = Entry {
            route: "orders",
            upstream: "http://10.0.0.5:8080",
            method: &Method::GET,
            uri: &plain,
            status: 200,
            source: Source::Upstream,
            upstream_status: None,
            duration: Duration::from_nanos(1_056_148),
            upstream_header: Some(Duration::from_nanos(912_000)),
            bytes_in: 0,
            bytes_out: 1024,
            client: v4,
            forwarded_for: None,
            request_id: &ascii_id,
            retry_after: None,
            consumer: None,
            resent: false,
            in_doubt: false,
        };
        let mut cases = vec![base];
        // One case per change to the base entry.
        macro_rules! vary {
            (|$e:ident| $change:expr) => {{
                let mut $e = base;
                $change;
                cases.push($e);
            }};
        }
        vary!(|e| e.route = "r\"oute\\ \u{1} é");
        vary!(|e| e.upstream = "");
        vary!(|e| e.method = &purge);
        vary!(|e| e.uri = &query);
        vary!(|e| e.uri = &absolute);
        vary!(|e| e.uri = &raw);
        vary!(|e| {
            e.status = 502;
            e.source = Source::Proxy;
            e.upstream_header = None;
        });
        vary!(|e| {
            e.status = 499;
            e.source = Source::Client;
            e.upstream_status = Some(200);
        });
        vary!(|e| e.status = 999);
        vary!(|e| e.status = 429);
        for nanos in [
            0,
            1,
            10,
            1_000_000,
            999_999_999_999_999,
            1_000_000_000_000_000,
        ] {
            vary!(|e| e.duration = Duration::from_nanos(nanos));
        }
        vary!(|e| e.duration = Duration::from_nanos(31_536_000_123_456_789));
        vary!(|e| e.duration = Duration::MAX);
        vary!(|e| e.upstream_header = Some(Duration::from_nanos(7)));
        vary!(|e| e.bytes_in = u64::MAX);
        vary!(|e| e.bytes_out = u64::MAX);
        vary!(|e| e.upstream_header = Some(Duration::from_nanos(1_000_000_000_000_000)));
        vary!(|e| e.client = v6);
        vary!(|e| e.forwarded_for = Some("198.51.100.2".parse().unwrap()));
        vary!(|e| {
            e.forwarded_for = Some("2001:db8::7".parse().unwrap());
            e.client = v6;
        });
        vary!(|e| e.request_id = &odd_id);
        vary!(|e| e.request_id = &binary_id);
        for s in [0.0, -0.0, -1.5, 1.5, 120.0, 1e300, f64::INFINITY, f64::NAN] {
            vary!(|e| {
                e.status = 503;
                e.retry_after = Some(s);
            });
        }
        vary!(|e| e.consumer = Some(ConsumerId(0x7f3a_09c1)));
        vary!(|e| e.resent = true);
        vary!(|e| {
            e.status = 503;
            e.source = Source::Proxy;
            e.in_doubt = true;
        });
        let log = AccessLog::new(LogVolume::All);
        tracing::subscriber::with_default(subscriber, || {
            for e in &cases {
                let line = Line::of(e);
                let warn = e.source == Source::Proxy && e.status >= 500;
                // The fields visited, as any event's are...
                line.emit(warn);
                let visited = lines.take();
                // ...and pre-rendered, as the access log writes them.
                let used = crate::logfmt::PRERENDERED_USED.with(|n| n.get());
                log.request(e);
                let prerendered = lines.take();
                assert_eq!(
                    crate::logfmt::PRERENDERED_USED.with(|n| n.get()),
                    used + 1,
                    "the pre-rendered fields were not used"
                );
                assert_eq!(visited.len(), 1);
                assert_eq!(prerendered, visited);
            }
            // An event of another target logged meanwhile is not given them.
            crate::logfmt::with_prerendered(
                TARGET,
                |out| out.push_str(",\"x\":1"),
                || tracing::info!(target: "statuslens::other", y = 2, "other"),
            );
            assert_eq!(
                lines.take(),
                ["\"INFO\",\"message\":\"other\",\"y\":2,\"target\":\"statuslens::other\"}"]
            );
        });
    }

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

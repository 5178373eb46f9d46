//! Forwarding decisions on arbitrary headers and request targets: hop-by-hop removal
//! leaves none behind, log redaction never shows a secret-looking value, and the path
//! routing compares is fully resolved.
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use statuslens::access_log::{is_secret_param, Redacted};
use statuslens::forward::strip_hop_by_hop;
use statuslens::route::routing_path;

fuzz_target!(|data: &[u8]| {
    let (head, target) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let named: Vec<String> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .filter(|t| !t.is_empty())
        .collect();
    let framed_by_codings = headers.contains_key("transfer-encoding");
    strip_hop_by_hop(&mut headers, false);
    // `Trailer` is not among them: it is end to end (RFC 9110 §6.6.2).
    for gone in ["connection", "keep-alive", "te", "transfer-encoding", "upgrade", "proxy-connection", "proxy-authorization"] {
        assert!(!headers.contains_key(gone), "{gone} survived");
    }
    if framed_by_codings {
        assert!(!headers.contains_key("content-length"), "a length survived its Transfer-Encoding");
    }
    for t in named {
        if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
            assert!(!headers.contains_key(n), "Connection-named {t} survived");
        }
    }

    let Ok(text) = std::str::from_utf8(target) else { return };
    // Any text: resolving twice changes nothing, and a resolved path has no dot segment,
    // `//` or unreserved escape left.
    let resolved = routing_path(text);
    assert_eq!(routing_path(&resolved), resolved, "{text:?}");
    if text.starts_with('/') {
        assert!(resolved.starts_with('/'), "{text:?}");
        for seg in resolved[1..].split('/') {
            assert!(seg != "." && seg != "..", "{text:?} -> {resolved:?}");
        }
        assert!(!resolved.contains("//"), "{text:?} -> {resolved:?}");
    }
    let Ok(uri) = text.parse::<http::Uri>() else { return };
    let shown = Redacted(&uri).to_string();
    assert!(shown.starts_with(uri.path()));
    if let (Some(q), Some((_, shown_q))) = (uri.query(), shown.split_once('?')) {
        // Redaction keeps the pairs in place, so they can be compared one by one.
        let pairs: Vec<&str> = q.split('&').collect();
        let shown_pairs: Vec<&str> = shown_q.split('&').collect();
        assert_eq!(pairs.len(), shown_pairs.len());
        for (pair, shown_pair) in pairs.iter().zip(&shown_pairs) {
            if let Some((name, _)) = pair.split_once('=') {
                if is_secret_param(name) {
                    assert_eq!(*shown_pair, format!("{name}=REDACTED"));
                }
            }
        }
    }
});

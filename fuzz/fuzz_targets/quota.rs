//! Any header values as rate-limit quota headers: never a panic, and any quota parsed
//! is finite, non-negative and consistent.
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use statuslens::quota;

const NAMES: [&str; 12] = [
    "ratelimit", "ratelimit-policy", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset",
    "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "x-rate-limit-limit",
    "x-rate-limit-remaining", "sforce-limit-info", "retry-after",
];

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for (i, value) in data.split(|&b| b == b'\n').enumerate().take(24) {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(HeaderName::from_static(NAMES[i % NAMES.len()]), v);
        }
    }
    if let Some(v) = headers.get("retry-after") {
        if let Some(s) = quota::retry_after_secs(v, 1_800_000_000) {
            assert!(s.is_finite() && s >= 0.0);
        }
    }
    if let Some(q) = quota::parse(&headers, 1_800_000_000) {
        for v in [q.limit, q.remaining, q.reset_secs].into_iter().flatten() {
            assert!(v.is_finite() && v >= 0.0, "{q:?}");
        }
        if let (Some(l), Some(r)) = (q.limit, q.remaining) {
            assert!(r <= l, "{q:?}");
        }
        if let Some(ratio) = q.remaining_ratio() {
            assert!((0.0..=1.0).contains(&ratio), "{q:?}");
        }
    }
});

//! Rate-limit quota from an upstream's response headers, in every common dialect.
//!
//! Dialects, highest precedence first (the first one that yields any usable field wins;
//! fields are never mixed across dialects because their windows may differ):
//!
//! 1. IETF structured `RateLimit` (+ `RateLimit-Policy`): the recent draft form
//!    `"default";r=50;t=30` with `"default";q=100;w=60`, and the older dictionary form
//!    `limit=100, remaining=50, reset=30`. With several policies, the most constrained
//!    (smallest remaining ratio) is reported.
//! 2. `RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset` (older IETF drafts).
//! 3. `X-RateLimit-*` and `X-Rate-Limit-*` (GitHub, Twitter and most others).
//! 4. Salesforce `Sforce-Limit-Info: api-usage=USED/MAX`.
//!
//! `Retry-After` fills `reset_secs` when the winning dialect has no reset, and alone
//! yields a quota with only `reset_secs`.
//!
//! Every input is untrusted: a malformed field counts as absent, and every number that
//! comes out is finite, non-negative and at most 1e15. Numbers are plain decimals
//! (`12` or `12.5`); signs, exponents, `NaN` and `inf` are rejected because a gauge fed
//! from them would be meaningless. A reset above 1e9 is taken as an absolute unix epoch
//! (above 1e12, as epoch milliseconds) in every dialect except `Retry-After`, since no
//! real window lasts 31 years. HTTP-dates are accepted only in IMF-fixdate form; the
//! obsolete RFC 850 and asctime forms are rejected (RFC 9110 §5.6.7 lets senders avoid
//! them, and a rejected date only loses the reset, never misreports it).

use http::{HeaderMap, HeaderValue};
use std::borrow::Cow;
use std::cmp::Ordering;

/// Largest value reported; anything above is treated as malformed.
const MAX_VALUE: f64 = 1e15;
/// Longer numerals cannot be meaningful and would only cost parsing time.
const MAX_NUMERAL_LEN: usize = 32;
/// Bounds the work done on a hostile list-valued header.
const MAX_ITEMS: usize = 64;
/// Resets above this are absolute epoch seconds rather than a delta.
const EPOCH_SECS: f64 = 1e9;
/// Resets above this are absolute epoch milliseconds.
const EPOCH_MILLIS: f64 = 1e12;

/// Rate-limit quota state reported by an upstream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// Requests allowed in the current window, if known.
    pub limit: Option<f64>,
    /// Requests left in the current window, if known.
    pub remaining: Option<f64>,
    /// Seconds until the window resets, if known.
    pub reset_secs: Option<f64>,
}

impl Quota {
    /// remaining / limit, from 0 to 1, when both are known and limit > 0.
    pub fn remaining_ratio(&self) -> Option<f64> {
        match (self.limit, self.remaining) {
            (Some(limit), Some(remaining)) if limit > 0.0 => {
                Some((remaining / limit).clamp(0.0, 1.0))
            }
            _ => None,
        }
    }

    /// None when nothing is known, so callers can chain dialects with `or_else`.
    fn build(limit: Option<f64>, remaining: Option<f64>, reset_secs: Option<f64>) -> Option<Self> {
        // An upstream claiming more left than allowed is wrong about one of them; the
        // limit is the steadier number, so trust it.
        let remaining = match (limit, remaining) {
            (Some(l), Some(r)) => Some(r.min(l)),
            _ => remaining,
        };
        if limit.is_none() && remaining.is_none() && reset_secs.is_none() {
            return None;
        }
        Some(Quota {
            limit,
            remaining,
            reset_secs,
        })
    }

    /// Lower is closer to exhaustion: a known ratio beats a bare remaining count.
    fn tightness(&self) -> (u8, f64) {
        match (self.remaining_ratio(), self.remaining) {
            (Some(ratio), _) => (0, ratio),
            (None, Some(remaining)) => (1, remaining),
            (None, None) => (2, 0.0),
        }
    }
}

/// Names of (limit, remaining, reset) in the three-header dialects, per spelling.
const RATELIMIT_FIELDS: [[&str; 3]; 1] =
    [["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"]];
const X_RATELIMIT_FIELDS: [[&str; 3]; 2] = [
    [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ],
    [
        "x-rate-limit-limit",
        "x-rate-limit-remaining",
        "x-rate-limit-reset",
    ],
];

/// Whether a header (name in any case) is one `parse` reads.
pub fn is_relevant(name: &str) -> bool {
    let starts = |p: &str| {
        name.len() >= p.len() && name.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    };
    name.eq_ignore_ascii_case("retry-after")
        || starts("ratelimit")
        || starts("x-ratelimit")
        || starts("x-rate-limit")
        || name.eq_ignore_ascii_case("sforce-limit-info")
}

/// Parses quota headers; None when no recognised header carries a usable value.
/// `now_unix` is used for HTTP-date Retry-After and for X-RateLimit-Reset given as an
/// absolute epoch timestamp.
pub fn parse(headers: &HeaderMap, now_unix: u64) -> Option<Quota> {
    // Called for every response: one pass over the (few) names is far cheaper than a
    // dozen by-name lookups, each of which parses and hashes its name.
    if !headers.keys().any(|k| is_relevant(k.as_str())) {
        return None;
    }
    let retry = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| retry_after_secs(v, now_unix));
    let quota = ietf_structured(headers, now_unix)
        .or_else(|| fields(headers, &RATELIMIT_FIELDS, now_unix))
        .or_else(|| fields(headers, &X_RATELIMIT_FIELDS, now_unix))
        .or_else(|| salesforce(headers));
    match quota {
        Some(mut q) => {
            q.reset_secs = q.reset_secs.or(retry);
            Some(q)
        }
        None => Quota::build(None, None, retry),
    }
}

/// Parses Retry-After (delta-seconds or HTTP-date, RFC 9110 §10.2.3) into seconds from
/// now (>= 0). None if malformed.
pub fn retry_after_secs(value: &HeaderValue, now_unix: u64) -> Option<f64> {
    let s = value.to_str().ok()?.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        if s.len() > MAX_NUMERAL_LEN {
            return None;
        }
        let secs: f64 = s.parse().ok()?;
        return (secs <= MAX_VALUE).then_some(secs);
    }
    let at = imf_fixdate(s)?;
    let now = i64::try_from(now_unix).unwrap_or(i64::MAX);
    // A date in the past means "retry now", not a negative wait.
    Some(at.saturating_sub(now).max(0) as f64)
}

/// A plain non-negative decimal, optionally quoted.
fn number(s: &str) -> Option<f64> {
    let s = unquote(s.trim());
    if s.is_empty() || s.len() > MAX_NUMERAL_LEN {
        return None;
    }
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !frac.map_or(true, digits) {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    (v.is_finite() && v <= MAX_VALUE).then_some(v)
}

/// A reset that may be a delta or an absolute epoch (seconds or milliseconds).
fn reset(value: f64, now_unix: u64) -> f64 {
    let at = if value > EPOCH_MILLIS {
        value / 1000.0
    } else if value > EPOCH_SECS {
        value
    } else {
        return value;
    };
    (at - now_unix as f64).max(0.0)
}

/// The first item of a possibly list-valued field: `100, 100;w=60` reads as 100.
fn first_number(headers: &HeaderMap, name: &str) -> Option<f64> {
    let s = headers.get(name)?.to_str().ok()?;
    number(s.split([',', ';']).next()?)
}

/// A three-header dialect; each field comes from the first spelling that has it.
fn fields(headers: &HeaderMap, spellings: &[[&str; 3]], now_unix: u64) -> Option<Quota> {
    let field = |i: usize| {
        spellings
            .iter()
            .find_map(|names| first_number(headers, names[i]))
    };
    Quota::build(field(0), field(1), field(2).map(|v| reset(v, now_unix)))
}

/// `Sforce-Limit-Info: api-usage=25/15000`, possibly among other items.
fn salesforce(headers: &HeaderMap) -> Option<Quota> {
    let s = headers.get("sforce-limit-info")?.to_str().ok()?;
    s.split(',').take(MAX_ITEMS).find_map(|item| {
        let (key, value) = item.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("api-usage") {
            return None;
        }
        let (used, max) = value.split_once('/')?;
        let (used, max) = (number(used)?, number(max)?);
        // MAX of zero is no quota at all; treat it as garbage rather than "0% left".
        if max <= 0.0 {
            return None;
        }
        Quota::build(Some(max), Some((max - used).max(0.0)), None)
    })
}

/// All lines of a field joined as one list (RFC 9110 §5.3), skipping non-UTF-8 lines.
fn joined<'a>(headers: &'a HeaderMap, name: &str) -> Option<Cow<'a, str>> {
    let mut lines = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = lines.next()?;
    let mut out = Cow::Borrowed(first);
    for line in lines {
        let s = out.to_mut();
        s.push(',');
        s.push_str(line);
    }
    Some(out)
}

/// Splits at `sep` outside double-quoted strings, honouring backslash escapes.
fn split_unquoted(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, b) in s.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                _ if b == sep && !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

/// Splits an item into its bare part and its parameters (`;k=v;...`).
fn bare_and_params(item: &str) -> (&str, &str) {
    let raw = split_unquoted(item, b';').next().unwrap_or("");
    (raw.trim(), &item[raw.len()..])
}

/// The value of parameter `key` in `;k=v;...`, case-insensitively; last one wins as in
/// structured fields.
fn param<'a>(params: &'a str, key: &str) -> Option<&'a str> {
    split_unquoted(params, b';')
        .take(MAX_ITEMS)
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(key))
        .last()
        .map(|(_, v)| v.trim())
}

/// Strips surrounding quotes. Escapes are kept, which is fine for policy names because
/// both headers carry a name escaped the same way.
fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(s)
}

/// The structured `RateLimit` field, both draft forms.
fn ietf_structured(headers: &HeaderMap, now_unix: u64) -> Option<Quota> {
    let limits = joined(headers, "ratelimit")?;
    let policy_field = joined(headers, "ratelimit-policy");
    let mut policies: Vec<(&str, Option<f64>)> = Vec::new();
    for item in policy_field
        .as_deref()
        .map(|p| split_unquoted(p, b','))
        .into_iter()
        .flatten()
        .take(MAX_ITEMS)
    {
        let (bare, params) = bare_and_params(item);
        if !bare.is_empty() {
            // Drafts before names existed wrote the quota as the bare item: `100;w=60`.
            let q = param(params, "q").and_then(number).or_else(|| number(bare));
            policies.push((unquote(bare), q));
        }
    }

    let (mut d_limit, mut d_remaining, mut d_reset) = (None, None, None);
    let mut named: Vec<(&str, Option<f64>, Option<f64>)> = Vec::new();
    for item in split_unquoted(&limits, b',').take(MAX_ITEMS) {
        let (bare, params) = bare_and_params(item);
        if bare.is_empty() {
            continue;
        }
        match bare.split_once('=') {
            // Dictionary form; a quoted name may itself contain '='.
            Some((key, value)) if !bare.starts_with('"') => {
                let key = key.trim();
                let slot = if key.eq_ignore_ascii_case("limit") {
                    &mut d_limit
                } else if key.eq_ignore_ascii_case("remaining") {
                    &mut d_remaining
                } else if key.eq_ignore_ascii_case("reset") {
                    &mut d_reset
                } else {
                    continue;
                };
                if let Some(v) = number(value) {
                    *slot = Some(v);
                }
            }
            _ => named.push((
                unquote(bare),
                param(params, "r").and_then(number),
                param(params, "t").and_then(number),
            )),
        }
    }

    let lone_policy = (policies.len() == 1 && named.len() == 1).then(|| policies[0].1);
    let dictionary = Quota::build(d_limit, d_remaining, d_reset.map(|v| reset(v, now_unix)));
    named
        .iter()
        .filter_map(|&(name, remaining, t)| {
            let limit = match policies.iter().find(|(n, _)| *n == name) {
                Some(&(_, q)) => q,
                // Lenient: one policy and one limit item surely describe the same window.
                None => lone_policy.flatten(),
            };
            Quota::build(limit, remaining, t.map(|v| reset(v, now_unix)))
        })
        .chain(dictionary)
        .min_by(|a, b| {
            a.tightness()
                .partial_cmp(&b.tightness())
                .unwrap_or(Ordering::Equal)
        })
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) as unix seconds.
fn imf_fixdate(s: &str) -> Option<i64> {
    const DAYS: &[u8] = b"MonTueWedThuFriSatSun";
    const MONTHS: &[u8] = b"JanFebMarAprMayJunJulAugSepOctNovDec";
    let b = s.as_bytes();
    if b.len() != 29 || &b[3..5] != b", " || &b[25..] != b" GMT" {
        return None;
    }
    if [7, 11, 16].iter().any(|&i| b[i] != b' ') || b[19] != b':' || b[22] != b':' {
        return None;
    }
    let field = |from: usize, to: usize| -> Option<i64> {
        let part = &b[from..to];
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(part.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let name_in = |names: &[u8], at: usize| {
        let name = &b[at..at + 3];
        names.chunks(3).position(|n| n.eq_ignore_ascii_case(name))
    };
    name_in(DAYS, 0)?;
    let month = name_in(MONTHS, 8)? as i64 + 1;
    let (day, year) = (field(5, 7)?, field(12, 16)?);
    let (hour, min, sec) = (field(17, 19)?, field(20, 22)?, field(23, 25)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_len = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    // 60 is a leap second, which RFC 9110 permits.
    if day < 1 || day > month_len || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    /// Headers from `name: value` lines, repeated names appended.
    fn headers(lines: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        for line in lines.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (name, value) = line
                .split_once(": ")
                .unwrap_or((line.trim_end_matches(':'), ""));
            let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            h.append(name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    /// Asserts what `lines` parse to; `want` is "limit remaining reset", `-` for unknown.
    fn check(lines: &str, want: &str) {
        let want: Vec<Option<f64>> = want.split(' ').map(|w| w.parse().ok()).collect();
        let got = parse(&headers(lines), NOW).map(|q| vec![q.limit, q.remaining, q.reset_secs]);
        assert_eq!(got, Some(want), "{lines}");
    }

    #[test]
    fn x_ratelimit_github_and_twitter_with_epoch_reset() {
        let github = "x-ratelimit-limit: 5000
                      x-ratelimit-remaining: 4987
                      x-ratelimit-used: 13
                      x-ratelimit-reset: 1700000600
                      x-ratelimit-resource: core";
        check(github, "5000 4987 600");
        let ratio = parse(&headers(github), NOW).unwrap().remaining_ratio();
        assert!((ratio.unwrap() - 0.9974).abs() < 1e-9);
        check(
            "x-rate-limit-limit: 900\nx-rate-limit-remaining: 899\nx-rate-limit-reset: 1700000900",
            "900 899 900",
        );
        check("x-ratelimit-reset: 1600000000", "- - 0");
        check("x-ratelimit-reset: 1700000030000", "- - 30");
        check("x-ratelimit-reset: 42", "- - 42");
    }

    #[test]
    fn ietf_recent_form() {
        let h = "ratelimit: \"default\";r=50;t=30\nratelimit-policy: \"default\";q=100;w=60";
        check(h, "100 50 30");
        assert_eq!(
            parse(&headers(h), NOW).unwrap().remaining_ratio(),
            Some(0.5)
        );
        // Two policies, across lines, odd spacing, unknown parameters: the tighter wins.
        check(
            r#"ratelimit: "hour";r=900;t=1200, "day" ; r = 100 ; t = 50000;pk=:abc=:
               ratelimit-policy: "hour";q=1000;w=3600
               ratelimit-policy: day;q=10000;w=86400;qu="requests""#,
            "10000 100 50000",
        );
        // One policy and one item pair up even when the names disagree.
        check("ratelimit: a;r=5;t=1\nratelimit-policy: b;q=10", "10 5 1");
        check("ratelimit: \"x\";r=5", "- 5 -");
    }

    #[test]
    fn ietf_older_forms() {
        check("ratelimit: limit=100, remaining=50, reset=30", "100 50 30");
        check("ratelimit: limit=10\nratelimit: remaining=1, x=2", "10 1 -");
        check(
            "ratelimit-limit: 100, 100;w=60, 1000;w=3600
             ratelimit-remaining: 40
             ratelimit-reset: 7",
            "100 40 7",
        );
    }

    #[test]
    fn salesforce_usage() {
        check("sforce-limit-info: api-usage=25/15000", "15000 14975 -");
        check(
            "sforce-limit-info: per-app-api-usage=17/250(appName=x), api-usage = 16000 / 15000",
            "15000 0 -",
        );
    }

    #[test]
    fn retry_after_alone_and_as_fallback() {
        check("retry-after: 120", "- - 120");
        check(
            "sforce-limit-info: api-usage=10/10\nretry-after: 5",
            "10 0 5",
        );
        check("x-ratelimit-reset: 9\nretry-after: 5", "- - 9");
        let date = headers("retry-after: Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            parse(&date, 784_111_777 - 90).unwrap().reset_secs,
            Some(90.0)
        );
    }

    #[test]
    fn retry_after_http_date() {
        let v = HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(retry_after_secs(&v, 784_111_777 - 90), Some(90.0));
        assert_eq!(retry_after_secs(&v, NOW), Some(0.0));
        let leap = HeaderValue::from_static("Thu, 29 Feb 2024 00:00:00 GMT");
        assert_eq!(retry_after_secs(&leap, 1_709_164_800 - 1), Some(1.0));
        let bad = "Sunday, 06-Nov-94 08:49:37 GMT|Sun Nov  6 08:49:37 1994|-5|1.5||\
                   Sun, 06 Nov 1994 08:49:37 UTC|Sun, 31 Nov 1994 08:49:37 GMT|\
                   Sun, 29 Feb 2023 08:49:37 GMT|Sun, 06 Nov 1994 24:00:00 GMT|\
                   Xyz, 06 Nov 1994 08:49:37 GMT|Sun, 0a Nov 1994 08:49:37 GMT";
        for bad in bad.split('|') {
            let v = HeaderValue::from_str(bad).unwrap();
            assert_eq!(retry_after_secs(&v, NOW), None, "{bad}");
        }
    }

    #[test]
    fn precedence_across_dialects() {
        let all = [
            "ratelimit: \"p\";r=1;t=2\nratelimit-policy: \"p\";q=3\n",
            "ratelimit-limit: 10\nratelimit-remaining: 9\n",
            "x-ratelimit-limit: 100\nx-ratelimit-remaining: 99\n",
            "sforce-limit-info: api-usage=1/1000\n",
        ];
        let expected = ["3 1 2", "10 9 -", "100 99 -", "1000 999 -"];
        for (i, want) in expected.into_iter().enumerate() {
            check(&all[i..].concat(), want);
        }
        // A dialect whose every field is malformed yields to the next one.
        check("ratelimit: \"p\";r=x\nx-ratelimit-limit: 7", "7 - -");
    }

    #[test]
    fn remaining_above_limit_is_clamped() {
        check(
            "x-ratelimit-limit: 10\nx-ratelimit-remaining: 50",
            "10 10 -",
        );
        let zero = Quota::build(Some(0.0), Some(0.0), None).unwrap();
        assert_eq!(zero.remaining_ratio(), None);
    }

    #[test]
    fn malformed_values_produce_nothing() {
        let huge = "9".repeat(100_000);
        let quoted = format!("\"{}", "\\\"".repeat(10_000));
        let listed = "| |abc|-5|+5|1e400|1e3|NaN|inf|-inf|0x10|5/0|api-usage=|api-usage=5/0|\
                      api-usage=/|api-usage=-1/5|1.|.5|1..2|1e16|10000000000000000|\"|;;;|,,,|=|\
                      limit=|\"p\";r=;t=|r=1e400";
        let values = listed.split('|').chain([huge.as_str(), quoted.as_str()]);
        let names = "ratelimit ratelimit-limit ratelimit-remaining ratelimit-reset \
                     x-ratelimit-limit x-rate-limit-remaining x-ratelimit-reset \
                     sforce-limit-info retry-after";
        for value in values {
            for name in names.split(' ') {
                let mut h = HeaderMap::new();
                h.insert(name, HeaderValue::from_str(value).unwrap());
                assert_eq!(parse(&h, NOW), None, "{name}: {value:.40}");
            }
        }
        for name in names.split(' ') {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_bytes(&[0xff]).unwrap());
            h.append(name, HeaderValue::from_bytes(b"1\xfe0").unwrap());
            assert_eq!(parse(&h, NOW), None, "{name}: non-UTF-8");
        }
    }

    /// SplitMix64, so the property test is reproducible without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[(self.next() % from.len() as u64) as usize]
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn property_random_headers_never_panic_or_misreport() {
        let names: Vec<&str> = "ratelimit ratelimit-policy ratelimit-limit ratelimit-remaining \
            ratelimit-reset x-ratelimit-limit x-ratelimit-remaining x-ratelimit-reset \
            x-rate-limit-reset sforce-limit-info retry-after x-other"
            .split(' ')
            .collect();
        // Realistic values, then mutated, so most cases get deep into the parsers.
        let seeds: Vec<&str> = "\"default\";r=50;t=30|\"default\";q=100;w=60, \"day\";q=1000|\
            limit=100, remaining=50, reset=30|100, 100;w=60|4987|1700000600|api-usage=25/15000|\
            Sun, 06 Nov 1994 08:49:37 GMT|12.5|"
            .split('|')
            .collect();
        let pieces: Vec<&str> = "0|9|1700000000|1e9|.|-|/|=|;|,| |\"|\\|r=|NaN|99999999999999999"
            .split('|')
            .collect();
        let mut rng = Rng(0x5eed_1234);
        let mut parsed = 0;
        for case in 0..10_000 {
            let mut h = HeaderMap::new();
            for _ in 0..1 + rng.below(4) {
                let mut bytes = rng.pick(&seeds).as_bytes().to_vec();
                for _ in 0..rng.below(4) {
                    let at = rng.below(bytes.len() + 1);
                    match rng.below(3) {
                        0 => drop(bytes.splice(at..at, rng.pick(&pieces).bytes())),
                        1 => drop(bytes.drain(at..(at + rng.below(4)).min(bytes.len()))),
                        _ => bytes.insert(at, rng.next() as u8),
                    }
                }
                if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                    h.append(rng.pick(&names), v);
                }
            }
            let Some(quota) = parse(&h, rng.next() >> rng.below(64)) else {
                continue;
            };
            parsed += 1;
            let ok =
                |v: Option<f64>| v.map_or(true, |v| v.is_finite() && (0.0..=1e15).contains(&v));
            let fields = [quota.limit, quota.remaining, quota.reset_secs];
            assert!(fields.into_iter().all(ok), "{case}: {h:?}");
            if let (Some(l), Some(r)) = (quota.limit, quota.remaining) {
                assert!(r <= l, "{case}: {h:?}");
            }
            let ratio = quota.remaining_ratio();
            assert!(ratio.map_or(true, |r| (0.0..=1.0).contains(&r)));
        }
        // Guards against a generator that only ever produces garbage.
        assert!(parsed > 1000, "only {parsed} cases parsed");
    }
}

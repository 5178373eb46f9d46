//! Who is failing: consumer identities (hashed) and a bounded heavy-hitters sketch.
//!
//! An identity (API key, credentials, client IP or a JWT's `sub`) never leaves this
//! module in clear: it is hashed with SipHash-2-4 keyed by a per-process 128-bit salt and
//! truncated to 32 bits. That is not a cryptographic commitment: 32 bits collide between
//! consumers (birthday bound around 65k distinct ids), and anyone who knows the salt can
//! confirm a guess of a low-entropy value such as an IP address. What it does give is
//! ids that cannot be linked to the raw values, or across processes, without the salt.

use http::header::{AUTHORIZATION, PROXY_AUTHORIZATION};
use http::HeaderMap;
use std::net::IpAddr;

/// Larger JWT payloads are not worth decoding just to find `sub`.
const MAX_JWT_PAYLOAD: usize = 16 * 1024;

/// How a route identifies a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// The value of a request header; for `Authorization` and `Proxy-Authorization`,
    /// only the credentials after the scheme.
    Header(http::HeaderName),
    /// The client's IP address (IPv4-mapped IPv6 counts as the IPv4 address).
    ClientIp,
    /// The `sub` claim of a Bearer JWT, read without verifying the signature.
    JwtSub,
}

impl IdentitySource {
    /// Domain separation, so that the same bytes from different sources differ.
    fn tag(&self) -> u8 {
        match self {
            IdentitySource::Header(_) => 1,
            IdentitySource::ClientIp => 2,
            IdentitySource::JwtSub => 3,
        }
    }
}

/// A short salted hash of an identity: 8 hex chars ("7f3a09c1"), never the raw value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsumerId(pub u32);

impl std::fmt::Display for ConsumerId {
    /// 8 lowercase hex chars.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// Turns requests into [`ConsumerId`]s for one route.
#[derive(Clone)]
pub struct Identifier {
    source: IdentitySource,
    salt: [u64; 2],
}

impl std::fmt::Debug for Identifier {
    // The salt is what keeps ids unlinkable, so it must not end up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identifier")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Identifier {
    /// An identifier reading `source`, hashing with the 128-bit `salt`.
    pub fn new(source: IdentitySource, salt: [u64; 2]) -> Self {
        Identifier { source, salt }
    }

    /// Extracts and hashes the identity; None when the request carries none.
    pub fn identify(&self, headers: &HeaderMap, client_ip: IpAddr) -> Option<ConsumerId> {
        let mut h = SipHasher24::new(self.salt[0], self.salt[1]);
        h.write(&[self.source.tag()]);
        match &self.source {
            IdentitySource::Header(name) => {
                let value = headers.get(name)?.as_bytes().trim_ascii();
                let value = if name == AUTHORIZATION || name == PROXY_AUTHORIZATION {
                    credentials(value).1
                } else {
                    value
                };
                if value.is_empty() {
                    return None;
                }
                h.write(value);
            }
            IdentitySource::ClientIp => match client_ip.to_canonical() {
                IpAddr::V4(ip) => h.write(&ip.octets()),
                IpAddr::V6(ip) => h.write(&ip.octets()),
            },
            IdentitySource::JwtSub => {
                let (scheme, token) = credentials(headers.get(AUTHORIZATION)?.as_bytes());
                if !scheme.eq_ignore_ascii_case(b"bearer") {
                    return None;
                }
                let payload = jwt_payload(token)?;
                h.write(top_level_sub(&payload)?);
            }
        }
        let full = h.finish();
        Some(ConsumerId((full ^ (full >> 32)) as u32))
    }
}

/// Splits `Scheme credentials`; a value without a space is all credentials.
fn credentials(value: &[u8]) -> (&[u8], &[u8]) {
    let value = value.trim_ascii();
    match value.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(i) => (&value[..i], value[i + 1..].trim_ascii()),
        None => (&[], value),
    }
}

/// The decoded payload of a compact JWS (`header.payload.signature`).
fn jwt_payload(token: &[u8]) -> Option<Vec<u8>> {
    let mut parts = token.split(|&b| b == b'.');
    let (header, payload) = (parts.next()?, parts.next()?);
    // Exactly three segments: five would be an encrypted JWE, whose payload is opaque.
    parts.next()?;
    if parts.next().is_some() || header.is_empty() || payload.len() > MAX_JWT_PAYLOAD {
        return None;
    }
    if !header.iter().all(|&b| sextet(b).is_some() || b == b'=') {
        return None;
    }
    base64url_decode(payload)
}

fn sextet(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        // Standard-alphabet characters too: some issuers get the alphabet wrong.
        b'-' | b'+' => 62,
        b'_' | b'/' => 63,
        _ => return None,
    } as u32)
}

/// Unpadded (or padded) base64url.
fn base64url_decode(s: &[u8]) -> Option<Vec<u8>> {
    let trimmed = s.strip_suffix(b"==").or_else(|| s.strip_suffix(b"="));
    let s = trimmed.unwrap_or(s);
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in s {
        acc = (acc << 6) | sextet(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// A cursor over JSON that only knows enough to find a top-level member.
struct Json<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Json<'a> {
    /// The next byte that is not whitespace, consumed.
    fn next(&mut self) -> Option<u8> {
        while matches!(self.s.get(self.i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
        let b = *self.s.get(self.i)?;
        self.i += 1;
        Some(b)
    }

    /// The raw contents of a string whose opening quote was just consumed.
    fn string(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        loop {
            match *self.s.get(self.i)? {
                b'"' => break,
                b'\\' => self.i += 2,
                _ => self.i += 1,
            }
        }
        self.i += 1;
        self.s.get(start..self.i - 1)
    }

    /// Skips a member's value up to the `,` or `}` that ends it, which is returned.
    /// Nothing is validated: the claims are unverified anyway.
    fn skip_value(&mut self) -> Option<u8> {
        let mut depth = 0usize;
        loop {
            match self.next()? {
                b'"' => drop(self.string()?),
                b'{' | b'[' => depth += 1,
                b @ (b',' | b'}') if depth == 0 => return Some(b),
                b'}' | b']' => depth = depth.checked_sub(1)?,
                _ => {}
            }
        }
    }
}

/// The raw value of the top-level `"sub"` string of a JSON object. Escapes are left in:
/// an issuer encodes a given subject the same way every time, which is all grouping
/// needs (a key spelled with escapes, such as `"s\u0075b"`, is not recognised).
fn top_level_sub(json: &[u8]) -> Option<&[u8]> {
    let mut p = Json { s: json, i: 0 };
    if p.next()? != b'{' {
        return None;
    }
    loop {
        if p.next()? != b'"' {
            return None;
        }
        let key = p.string()?;
        if p.next()? != b':' {
            return None;
        }
        if key == b"sub" {
            let sub = (p.next()? == b'"').then(|| p.string()).flatten()?;
            return (!sub.is_empty()).then_some(sub);
        }
        if p.skip_value()? != b',' {
            return None;
        }
    }
}

/// SipHash-2-4 (Aumasson & Bernstein), streaming, because std offers no keyed hasher
/// with a stable algorithm.
struct SipHasher24 {
    v: [u64; 4],
    tail: u64,
    ntail: u32,
    len: u64,
}

impl SipHasher24 {
    fn new(k0: u64, k1: u64) -> Self {
        SipHasher24 {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            tail: 0,
            ntail: 0,
            len: 0,
        }
    }

    fn round(&mut self) {
        let [v0, v1, v2, v3] = &mut self.v;
        *v0 = v0.wrapping_add(*v1);
        *v1 = v1.rotate_left(13) ^ *v0;
        *v0 = v0.rotate_left(32);
        *v2 = v2.wrapping_add(*v3);
        *v3 = v3.rotate_left(16) ^ *v2;
        *v0 = v0.wrapping_add(*v3);
        *v3 = v3.rotate_left(21) ^ *v0;
        *v2 = v2.wrapping_add(*v1);
        *v1 = v1.rotate_left(17) ^ *v2;
        *v2 = v2.rotate_left(32);
    }

    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        self.round();
        self.round();
        self.v[0] ^= m;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Byte at a time: identities are short, and it keeps the streaming logic obvious.
        for &b in bytes {
            self.tail |= u64::from(b) << (8 * self.ntail);
            self.ntail += 1;
            if self.ntail == 8 {
                self.compress(self.tail);
                self.tail = 0;
                self.ntail = 0;
            }
        }
        self.len = self.len.wrapping_add(bytes.len() as u64);
    }

    fn finish(mut self) -> u64 {
        self.compress((self.len << 56) | self.tail);
        self.v[2] ^= 0xff;
        for _ in 0..4 {
            self.round();
        }
        self.v.iter().fold(0, |a, v| a ^ v)
    }
}

#[derive(Debug, Clone, Copy)]
struct Counter {
    id: ConsumerId,
    count: u64,
    error: u64,
}

/// Space-saving top-K (Metwally et al.): at most `capacity` counters, so memory is
/// bounded whatever the traffic. Each update is a linear scan of the counters, which for
/// the intended capacities (≤ 64) is a few cache lines and beats any indexed structure.
///
/// Guarantees: every id whose true count exceeds `total / capacity` is present, and each
/// estimate `count` satisfies `count - error <= true count <= count`.
#[derive(Debug, Clone)]
pub struct TopK {
    counters: Vec<Counter>,
    capacity: usize,
    total: u64,
}

impl TopK {
    /// A sketch with `capacity` counters (at least 1), allocated once.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        TopK {
            counters: Vec::with_capacity(capacity),
            capacity,
            total: 0,
        }
    }

    /// Counts `count` occurrences of `id`; never allocates.
    pub fn add(&mut self, id: ConsumerId, count: u64) {
        if count == 0 {
            return;
        }
        self.total = self.total.saturating_add(count);
        if let Some(c) = self.counters.iter_mut().find(|c| c.id == id) {
            c.count = c.count.saturating_add(count);
        } else if self.counters.len() < self.capacity {
            self.counters.push(Counter {
                id,
                count,
                error: 0,
            });
        } else if let Some(min) = self.counters.iter_mut().min_by_key(|c| c.count) {
            // The newcomer inherits the evicted count as its possible overestimate.
            *min = Counter {
                id,
                count: min.count.saturating_add(count),
                error: min.count,
            };
        }
    }

    /// The top entries, highest count first: (id, estimated count, max overestimation
    /// error).
    pub fn top(&self, n: usize) -> Vec<(ConsumerId, u64, u64)> {
        let mut all: Vec<_> = self
            .counters
            .iter()
            .map(|c| (c.id, c.count, c.error))
            .collect();
        // Ties broken by id so that reports are deterministic.
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// Sum of all added counts (scaled by [`TopK::decay`] like the counters).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Counts matching responses with no consumer identity (no key, a malformed token):
    /// they are part of the whole a share is taken of, though no one is named for them.
    pub fn add_anonymous(&mut self, count: u64) {
        self.total = self.total.saturating_add(count);
    }

    /// Decay all counts by a factor (e.g. 0.5) so the sketch tracks recent traffic.
    /// A factor of 1 or more changes nothing; 0, a negative factor or NaN clears.
    pub fn decay(&mut self, factor: f64) {
        if factor.is_nan() || factor <= 0.0 {
            return self.clear();
        }
        if factor >= 1.0 {
            return;
        }
        // The count rounds down and its error up (never past the count): count - error
        // stays a lower bound of what the consumer sent, scaled. Flooring both made
        // count 4, error 1 (at least 3) into 2, 0 — "at least 2" of a true 1.5.
        let scale = |n: u64| (n as f64 * factor) as u64;
        for c in &mut self.counters {
            c.count = scale(c.count);
            c.error = ((c.error as f64 * factor).ceil() as u64).min(c.count);
        }
        // Frees slots for newcomers rather than carrying zero-count ghosts.
        self.counters.retain(|c| c.count > 0);
        self.total = scale(self.total);
    }

    /// Forgets everything, keeping the allocation.
    pub fn clear(&mut self) {
        self.counters.clear();
        self.total = 0;
    }
}

/// "83% of the 401s in this spike came from consumer 7f3a09c1" when one consumer
/// dominates (share >= threshold), else None. The share is the guaranteed lower bound
/// (`count - error`) over the total, so the sentence never overstates.
pub fn attribution(top: &TopK, what: &str, threshold: f64) -> Option<(ConsumerId, f64, String)> {
    if top.total == 0 {
        return None;
    }
    let best = top
        .counters
        .iter()
        .max_by_key(|c| (c.count - c.error, c.count))?;
    let share = ((best.count - best.error) as f64 / top.total as f64).min(1.0);
    if threshold.is_nan() || share < threshold {
        return None;
    }
    let sentence = format!(
        "{:.0}% of the {what} in this spike came from consumer {}",
        share * 100.0,
        best.id
    );
    Some((best.id, share, sentence))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testrng::splitmix64 as rng;
    use http::{HeaderName, HeaderValue};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const SALT: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];
    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

    fn with(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    fn by_header(name: &'static str, salt: [u64; 2]) -> Identifier {
        Identifier::new(IdentitySource::Header(HeaderName::from_static(name)), salt)
    }

    fn b64url(data: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    fn jwt(payload: &str) -> String {
        let header = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
        format!(
            "Bearer {header}.{}.c2lnbmF0dXJl",
            b64url(payload.as_bytes())
        )
    }

    #[test]
    fn siphash_reference_vectors() {
        let (k0, k1) = (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
        assert_eq!(SipHasher24::new(k0, k1).finish(), 0x726f_db47_dd0e_0e31);
        let msg: Vec<u8> = (0..15).collect();
        let mut h = SipHasher24::new(k0, k1);
        h.write(&msg[..3]);
        h.write(&msg[3..]);
        assert_eq!(h.finish(), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn display_is_eight_lowercase_hex() {
        assert_eq!(ConsumerId(0x7f3a_09c1).to_string(), "7f3a09c1");
        assert_eq!(ConsumerId(0xab).to_string(), "000000ab");
    }

    #[test]
    fn header_hash_is_stable_salted_and_opaque() {
        let (key, h) = (by_header("x-api-key", SALT), with("x-api-key", "7f3a09c1"));
        let a = key.identify(&h, IP).unwrap();
        assert_eq!(Some(a), by_header("x-api-key", SALT).identify(&h, IP));
        assert_ne!(Some(a), by_header("x-api-key", [1, 2]).identify(&h, IP));
        assert_ne!(a.to_string(), "7f3a09c1");
        assert_ne!(Some(a), key.identify(&with("x-api-key", "7f3a09c2"), IP));
        assert_eq!(key.identify(&HeaderMap::new(), IP), None);
        assert_eq!(key.identify(&with("x-api-key", " "), IP), None);
        assert!(!format!("{key:?}").contains(&SALT[0].to_string()));
    }

    #[test]
    fn authorization_uses_credentials_after_scheme() {
        let auth = |v| by_header("authorization", SALT).identify(&with("authorization", v), IP);
        let key = |v| by_header("x-api-key", SALT).identify(&with("x-api-key", v), IP);
        assert!(auth("Bearer abc").is_some());
        assert_eq!(auth("Bearer abc"), key("abc"));
        assert_eq!(auth("Bearer abc"), auth("bearer   abc "));
        assert_eq!(auth("Basic xyz"), key("xyz"));
        assert_ne!(auth("Bearer abc"), auth("Basic xyz"));
    }

    #[test]
    fn client_ip_canonicalises_mapped_v6() {
        let ip = Identifier::new(IdentitySource::ClientIp, SALT);
        let id = |addr: IpAddr| ip.identify(&HeaderMap::new(), addr);
        let mapped = Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped();
        assert_eq!(id(IP), id(IpAddr::V6(mapped)));
        assert_ne!(id(IP), id(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_ne!(id(IP), id(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 8))));
    }

    #[test]
    fn jwt_sub_is_read_without_verification() {
        let sub = Identifier::new(IdentitySource::JwtSub, SALT);
        let id = |token: &str| sub.identify(&with("authorization", token), IP);
        let user42 = id(&jwt(r#"{"sub":"user-42","iat":1}"#));
        assert!(user42.is_some());
        assert_eq!(
            user42,
            id(&jwt(
                r#"{ "iat" : 2, "nested": {"sub": "x", "a": [1, "}"]}, "sub" : "user-42" }"#
            ))
        );
        assert_ne!(user42, id(&jwt(r#"{"sub":"user-43","iat":1}"#)));
        assert_ne!(
            user42,
            by_header("x-sub", SALT).identify(&with("x-sub", "user-42"), IP)
        );
        assert!(id(&jwt(r#"{"sub":"caf\u00e9 \"q\" a\/b"}"#)).is_some());
        for not_jwt in [
            "Bearer abc".to_string(),
            "Basic dXNlcjpwYXNz".to_string(),
            jwt(r#"{"sub":"user-42"}"#).replacen("Bearer", "Token", 1),
            jwt(r#"{"nested":{"sub":"user-42"}}"#),
            jwt(r#"{"sub":42}"#),
            jwt(r#"{"sub":""}"#),
            jwt(r#"["sub","user-42"]"#),
            jwt(r#"{"sub":"unterminated}"#),
            jwt(r#"{"a":[1,"sub"],"b":{"c":{}},"sub":]"#),
            jwt(r#"{"iat":1"#),
            format!("{}.extra.parts", jwt(r#"{"sub":"user-42"}"#)),
            "Bearer e30.!!!.sig".to_string(),
            "Bearer .e30.sig".to_string(),
            format!("Bearer a.{}.b", "A".repeat(MAX_JWT_PAYLOAD + 4)),
        ] {
            assert_eq!(id(&not_jwt), None, "{not_jwt}");
        }
        assert_eq!(sub.identify(&HeaderMap::new(), IP), None);
    }

    #[test]
    fn frequent_consumer_is_always_kept() {
        for seed in 0..50 {
            let mut next = rng(seed);
            let capacity = 2 + (next() % 15) as usize;
            let n = 2_000u64;
            let heavy = ConsumerId(u32::MAX);
            // Just over n / capacity occurrences: the least the guarantee covers.
            let heavy_count = n / capacity as u64 + 1;
            let mut stream: Vec<ConsumerId> = (0..n - heavy_count)
                .map(|_| ConsumerId((next() % 500) as u32))
                .collect();
            stream.extend((0..heavy_count).map(|_| heavy));
            // Even seeds keep the adversarial order (heavy hitter last), odd ones shuffle.
            if seed % 2 == 1 {
                for i in (1..stream.len()).rev() {
                    stream.swap(i, (next() % (i as u64 + 1)) as usize);
                }
            }
            let mut sketch = TopK::new(capacity);
            stream.iter().for_each(|&id| sketch.add(id, 1));
            let top = sketch.top(capacity);
            let entry = top.iter().find(|e| e.0 == heavy);
            let (_, count, error) = entry.unwrap_or_else(|| panic!("seed {seed}"));
            assert!(count - error <= heavy_count && heavy_count <= *count);
            assert_eq!(sketch.total(), n);
        }
    }

    #[test]
    fn ten_heavy_hitters_among_100k_random_ids() {
        let mut next = rng(7);
        let mut sketch = TopK::new(64);
        let heavy: Vec<ConsumerId> = (0..10).map(|i| ConsumerId(0xabc0_0000 + i)).collect();
        // Each heavy hitter gets ~5% of the stream, well above total / capacity (~1.6%).
        for _ in 0..100_000 {
            sketch.add(ConsumerId(next() as u32 | 1), 1);
            sketch.add(heavy[(next() % 10) as usize], 1);
        }
        let mut top: Vec<ConsumerId> = sketch.top(10).iter().map(|e| e.0).collect();
        top.sort();
        assert_eq!(top, heavy);
    }

    #[test]
    fn memory_does_not_grow_with_distinct_ids() {
        let mut sketch = TopK::new(16);
        let allocated = sketch.counters.capacity();
        for i in 0..1_000_000 {
            sketch.add(ConsumerId(i), 1 + u64::from(i % 3));
        }
        assert_eq!(sketch.counters.len(), 16);
        assert_eq!(sketch.counters.capacity(), allocated);
        assert_eq!(sketch.top(100).len(), 16);
        assert_eq!(TopK::new(0).capacity, 1);
    }

    #[test]
    fn top_order_decay_and_clear() {
        let mut sketch = TopK::new(4);
        for (id, n) in [(1, 10), (2, 30), (3, 1), (3, 0)] {
            sketch.add(ConsumerId(id), n);
        }
        let (one, two) = (ConsumerId(1), ConsumerId(2));
        assert_eq!(sketch.top(2), vec![(two, 30, 0), (one, 10, 0)]);
        sketch.decay(0.5);
        assert_eq!(sketch.top(9), vec![(two, 15, 0), (one, 5, 0)]);
        assert_eq!(sketch.total(), 20);
        sketch.decay(f64::NAN);
        assert_eq!((sketch.top(9).len(), sketch.total()), (0, 0));
        sketch.add(ConsumerId(9), 3);
        sketch.decay(2.0);
        assert_eq!(sketch.total(), 3);
        sketch.clear();
        assert_eq!((sketch.top(9), sketch.total()), (vec![], 0));
        // A count with an error keeps a lower bound no higher than the truth, scaled.
        sketch.counters.push(Counter {
            id: one,
            count: 4,
            error: 1,
        });
        sketch.decay(0.5);
        let (_, count, error) = sketch.top(1)[0];
        assert!(
            count - error <= 1,
            "({count}, {error}) claims more than 1.5"
        );
    }

    #[test]
    fn attribution_sentence_or_none() {
        let mut sketch = TopK::new(8);
        assert_eq!(attribution(&sketch, "401s", 0.5), None);
        let who = ConsumerId(0x7f3a_09c1);
        sketch.add(who, 83);
        for i in 0..17 {
            sketch.add(ConsumerId(i), 1);
        }
        let (id, share, sentence) = attribution(&sketch, "401s", 0.5).unwrap();
        assert_eq!((id, share), (who, 0.83));
        assert_eq!(
            sentence,
            "83% of the 401s in this spike came from consumer 7f3a09c1"
        );
        assert_eq!(attribution(&sketch, "401s", 0.9), None);
        assert_eq!(attribution(&sketch, "401s", f64::NAN), None);
        let mut even = TopK::new(8);
        (0..4).for_each(|i| even.add(ConsumerId(i), 25));
        assert_eq!(attribution(&even, "429s", 0.5), None);
    }
}

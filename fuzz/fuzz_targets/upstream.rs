//! Any bytes as an upstream's response to the fast path: never a panic; a chunked
//! body ends at the same byte however it is split into reads, and decodes (as
//! `fastclient` decodes it for hyper's side) to the same data and trailers; and the
//! head written for the client is always one well-formed response head with a single
//! framing and no hop-by-hop field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statuslens::fastclient::decode_chunked;
use statuslens::fastpath::{chunked_end, client_head};

// `Trailer` is not among them: it is end to end (RFC 9110 §6.6.2), and hyper's HTTP/1
// encoder sends only the trailer fields it announces.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "upgrade",
];

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let whole = chunked_end([stream]);
    let split = chunked_end(stream.chunks(usize::from(step).max(1)));
    assert_eq!(whole, split, "split every {step} bytes");
    assert_eq!(whole, chunked_end(stream.chunks(1)));

    let decoded = decode_chunked([stream]);
    let step = usize::from(step).max(1);
    assert_eq!(decoded, decode_chunked(stream.chunks(step)), "decoded, split every {step}");
    assert_eq!(decoded, decode_chunked(stream.chunks(1)), "decoded byte by byte");
    if let (Ok(end), Ok(body)) = (&whole, &decoded) {
        assert_eq!(end.is_some(), body.is_some(), "follower and decoder disagree on the end");
    }

    let Some(head) = client_head(stream) else {
        return;
    };
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(&head) {
        Ok(httparse::Status::Complete(len)) => len,
        other => panic!("client head does not parse: {other:?}: {head:?}"),
    };
    assert_eq!(len, head.len(), "bytes after the client head");
    assert_eq!(resp.version, Some(1));
    let named = |n: &str| {
        resp.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(n))
            .count()
    };
    for h in HOP_BY_HOP {
        assert_eq!(named(h), 0, "{h} reached the client: {head:?}");
    }
    assert!(
        named("content-length") == 0 || named("transfer-encoding") == 0,
        "two framings: {head:?}"
    );
    assert!(named("transfer-encoding") <= 1);
    // A length the upstream repeated reaches the client once, as a plain number.
    let lengths: Vec<&[u8]> = resp
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| h.value)
        .collect();
    assert!(lengths.len() <= 1, "two Content-Length fields: {head:?}");
    for v in lengths {
        assert!(!v.is_empty() && v.iter().all(u8::is_ascii_digit), "length {v:?}: {head:?}");
    }
});

//! PROXY protocol headers (a balancer's first bytes, or anyone's who reaches the
//! listener): parsing never panics, a header never claims more bytes than it was given,
//! and reading it a piece at a time decides as reading it whole does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statuslens::proxy_protocol::{parse, V2_MAX};

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    if let Ok(Some((_, len))) = &whole {
        assert!(*len <= data.len() && *len <= V2_MAX, "{len} of {}", data.len());
    }
    // A connection's bytes arrive in pieces: a prefix that already decides (a header, or
    // a refusal) must decide the same with more bytes after it.
    let step = if data.len() <= 512 { 1 } else { 61 };
    for cut in (0..data.len()).step_by(step) {
        match parse(&data[..cut]) {
            Ok(None) => {}
            Ok(Some(header)) => assert_eq!(whole, Ok(Some(header)), "cut at {cut}"),
            Err(_) => assert!(whole.is_err(), "cut at {cut}: refused, then {whole:?}"),
        }
    }
});

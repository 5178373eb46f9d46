//! Any byte stream as client input to the framing watcher: never a panic, and how the
//! stream is split into reads never changes what it finds (the first defective head,
//! and whether the stream stops inside a head).
#![no_main]

use libfuzzer_sys::fuzz_target;
use statuslens::framing::follow;

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let whole = follow([stream]);
    let split = follow(stream.chunks(usize::from(step).max(1)));
    assert_eq!(whole, split, "split every {step} bytes");
    let bytewise = follow(stream.chunks(1));
    assert_eq!(whole, bytewise);
});

//! Any byte stream as client input to the framing watcher: never a panic, and how the
//! stream is split into reads never changes what it finds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statuslens::framing::first_defect;

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let whole = first_defect([stream]);
    let split = first_defect(stream.chunks(usize::from(step).max(1)));
    assert_eq!(whole, split, "split every {step} bytes");
    let bytewise = first_defect(stream.chunks(1));
    assert_eq!(whole, bytewise);
});

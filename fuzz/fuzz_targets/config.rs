//! Any bytes as a config file: never a panic, and an accepted config is coherent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statuslens::config::{Config, Overrides};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text, "fuzz.toml", &Overrides::default()) {
        Ok(c) => {
            assert!(!c.routes.is_empty());
            assert!(c.routes.iter().all(|r| r.path_prefix.starts_with('/')));
            assert!(c.routes.iter().all(|r| r.detectors.len() == c.signals.len()));
        }
        // Every error names where it is.
        Err(e) => assert!(e.to_string().starts_with("fuzz.toml: ")),
    }
});

//! `cargo bench --bench observe`: cost of the per-request observe path (response
//! counter + duration histogram + detector counters), single-threaded and with two
//! threads hitting the same route. A regression guard to read, not a timed test: the
//! budget is stated in README (Performance).

use std::time::Instant;

use http::Method;
use statuslens::config::{Config, Overrides};
use statuslens::detect::Detection;
use statuslens::metrics::{method_index, Metrics, Source};

const N: u32 = 2_000_000;

fn main() {
    let config = Config::from_flags(&Overrides {
        upstream: Some("http://127.0.0.1:9".into()),
        ..Default::default()
    })
    .expect("valid zero-config");
    let metrics = std::sync::Arc::new(Metrics::new(&["default"]));
    let detection = Detection::new(&config, metrics.registry());
    let sink = detection.sink();
    let get = method_index(&Method::GET);
    let codes = [200u16, 200, 200, 201, 404, 401, 429, 500, 503, 200];

    let run = |n: u32| {
        for i in 0..n {
            let code = codes[i as usize % codes.len()];
            metrics.record(
                0,
                get,
                code,
                Source::Upstream,
                f64::from(i % 1000) / 10_000.0,
            );
            sink.observe(0, code, None);
        }
    };
    run(10_000); // create the series
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        run(N);
        best = best.min(start.elapsed().as_nanos() as f64 / f64::from(N));
    }
    println!("observe path, 1 thread:  {best:.1} ns/request (best of 5 x {N})");

    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| run(N));
        }
    });
    let per = start.elapsed().as_nanos() as f64 / f64::from(2 * N);
    println!("observe path, 2 threads: {per:.1} ns/request wall (same route, shared counters)");
}

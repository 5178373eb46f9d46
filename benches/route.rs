//! `cargo bench --bench route`: route lookup cost with 1 route and with 1,000 routes,
//! for 100,000 distinct paths. A guard to read, not a timed test (budget in README).

use std::time::Instant;

use statuslens::config::{Config, Overrides};
use statuslens::route::Router;

fn router(n: usize) -> Router {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "[[routes]]\nname = \"svc{i}\"\nmatch = {{ path_prefix = \"/svc{i}/v1/\" }}\nupstream = \"http://127.0.0.1:9\"\n"
        ));
    }
    text.push_str("[[routes]]\nname = \"default\"\nupstream = \"http://127.0.0.1:9\"\n");
    Router::new(
        &Config::parse(&text, "bench", &Overrides::default())
            .expect("valid")
            .routes,
    )
}

fn main() {
    let paths: Vec<String> = (0..100_000)
        .map(|i| format!("/svc{}/v1/accounts/{i}?page={}", i % 997, i % 7))
        .collect();
    for n in [1, 1000] {
        let r = router(n);
        let mut best = f64::MAX;
        let mut hits = 0usize;
        for _ in 0..5 {
            let start = Instant::now();
            for p in &paths {
                hits += r.find(Some("api.example.com"), p).unwrap_or(0);
            }
            best = best.min(start.elapsed().as_nanos() as f64 / paths.len() as f64);
        }
        println!("route lookup, {n:>4} routes, 100,000 distinct paths: {best:.1} ns/request (checksum {hits})");
    }
}

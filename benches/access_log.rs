//! `cargo bench --bench access_log`: cost of one access-log line — the fields gathered
//! and formatted by statuslens' JSON formatter through tracing-subscriber, then handed
//! to a writer that discards it. A regression guard to read, not a timed test: the budget
//! is stated in README (Performance).

use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Uri};
use statuslens::access_log::{AccessLog, Entry};
use statuslens::config::LogVolume;
use statuslens::consumer::ConsumerId;
use statuslens::metrics::Source;

const N: u32 = 200_000;

fn main() {
    let subscriber = tracing_subscriber::fmt()
        .event_format(statuslens::logfmt::JsonLines)
        .with_writer(std::io::sink)
        .finish();
    let log = AccessLog::new(LogVolume::All);
    let request_id = HeaderValue::from_static("7f3a9c0e000000001234");
    let client = "203.0.113.77:50123".parse().expect("an address");
    let cases: [(&str, Uri); 2] = [
        (
            "plain path",
            "/v1/accounts/42/orders".parse().expect("a URI"),
        ),
        (
            "path, 3 query parameters",
            "/v1/orders?page=2&sort=desc&api_key=abc123"
                .parse()
                .expect("a URI"),
        ),
    ];
    tracing::subscriber::with_default(subscriber, || {
        for (what, uri) in &cases {
            let run = |n: u32| {
                for i in 0..n {
                    log.request(&Entry {
                        route: "orders",
                        upstream: "http://10.0.0.5:8080",
                        method: &Method::GET,
                        uri,
                        status: [200, 200, 401, 503][i as usize % 4],
                        source: Source::Upstream,
                        upstream_status: None,
                        duration: Duration::from_nanos(1_056_148 + u64::from(i)),
                        upstream_header: Some(Duration::from_nanos(912_377 + u64::from(i))),
                        bytes_in: 0,
                        bytes_out: 1024,
                        client,
                        forwarded_for: None,
                        request_id: &request_id,
                        retry_after: None,
                        consumer: Some(ConsumerId(i % 50)),
                        resent: false,
                        in_doubt: false,
                    });
                }
            };
            run(10_000);
            let mut best = f64::MAX;
            for _ in 0..5 {
                let start = Instant::now();
                run(N);
                best = best.min(start.elapsed().as_nanos() as f64 / f64::from(N));
            }
            println!("access-log line, {what}: {best:.0} ns (best of 5 x {N})");
        }
    });
}

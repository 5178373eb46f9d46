//! The observe path (count + histogram + detector counters) and the access log's line
//! allocate nothing per request once warm: proved with a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use http::Method;
use statuslens::config::{Config, Overrides};
use statuslens::consumer::ConsumerId;
use statuslens::detect::Detection;
use statuslens::metrics::{method_index, Metrics, Source};

struct Counting;

thread_local! {
    // Per thread, so the test harness's other threads cannot disturb the count.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

#[tokio::test(flavor = "current_thread")]
async fn observe_path_allocates_nothing_per_request() {
    let config = Config::from_flags(&Overrides {
        upstream: Some("http://127.0.0.1:9".into()),
        ..Default::default()
    })
    .unwrap();
    let metrics = Metrics::new(&["default"]);
    let detection = Detection::new(&config, metrics.registry());
    let sink = detection.sink();
    let get = method_index(&Method::GET);
    let post = method_index(&Method::POST);
    let mix = [
        (get, 200, Source::Upstream),
        (post, 401, Source::Upstream),
        (get, 503, Source::Upstream),
        (get, 502, Source::Proxy),
        (post, 499, Source::Client),
    ];
    // First use of each series creates it (allowed: bounded by configuration).
    for &(m, code, source) in &mix {
        metrics.record(0, m, code, source, 0.01);
        sink.observe(0, code, Some(ConsumerId(1)));
    }
    let before = allocs();
    for i in 0..10_000u32 {
        let (m, code, source) = mix[i as usize % mix.len()];
        metrics.record(0, m, code, source, f64::from(i % 100) / 1000.0);
        sink.observe(0, code, Some(ConsumerId(i % 50)));
    }
    let during = allocs() - before;
    assert_eq!(
        during, 0,
        "{during} allocations in 10,000 observed requests"
    );
    // The ticker's evaluation is not per request, but a tick without a transition
    // (spike start/end reports may allocate) must not allocate either.
    let quiet = Detection::new(&config, Metrics::new(&["default"]).registry());
    let quiet_sink = quiet.sink();
    quiet.tick(1_800_000_000);
    let before = allocs();
    for t in 1..100 {
        for _ in 0..50 {
            quiet_sink.observe(0, 200, None);
        }
        quiet_sink.observe(0, 401, Some(ConsumerId(7)));
        quiet.tick(1_800_000_000 + t);
    }
    assert_eq!(allocs() - before, 0, "detector tick allocated");
}

/// A log writer that only counts the lines and bytes it is given.
struct Counted;

static LINES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl std::io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::sync::atomic::Ordering::Relaxed;
        LINES.fetch_add(buf.iter().filter(|&&b| b == b'\n').count() as u64, Relaxed);
        BYTES.fetch_add(buf.len() as u64, Relaxed);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn access_log_lines_allocate_nothing_once_warm() {
    use statuslens::access_log::{AccessLog, Entry};
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    let subscriber = tracing_subscriber::fmt()
        .event_format(statuslens::logfmt::JsonLines)
        .with_writer(|| Counted)
        .finish();
    let log = AccessLog::new(statuslens::config::LogVolume::All);
    let uri: http::Uri = "/v1/accounts/42/orders?page=2&sort=desc".parse().unwrap();
    let request_id = http::HeaderValue::from_static("7f3a9c0e12345678");
    let client = "203.0.113.77:50123".parse().unwrap();
    // Half the lines name a client behind a trusted balancer (`client` and `via`).
    let forwarded: std::net::IpAddr = "198.51.100.7".parse().unwrap();
    let entry = |i: u32| Entry {
        route: "orders",
        upstream: "http://10.0.0.5:8080",
        method: &Method::GET,
        uri: &uri,
        status: [200, 401, 429, 503][i as usize % 4],
        source: Source::Upstream,
        upstream_status: None,
        duration: Duration::from_nanos(1_056_148 + u64::from(i) * 7_919),
        upstream_header: Some(Duration::from_nanos(912_377 + u64::from(i) * 7_919)),
        bytes_in: 0,
        bytes_out: u64::from(i) * 31,
        client,
        forwarded_for: (i % 2 == 1).then_some(forwarded),
        request_id: &request_id,
        retry_after: (i % 4 == 2).then_some(7.0),
        consumer: Some(ConsumerId(i % 50)),
        resent: false,
        in_doubt: false,
    };
    tracing::subscriber::with_default(subscriber, || {
        // The first lines size the thread's buffers.
        for i in 0..100 {
            log.request(&entry(i));
        }
        let lines = LINES.load(Relaxed);
        let before = allocs();
        for i in 0..10_000 {
            log.request(&entry(i));
        }
        let during = allocs() - before;
        assert_eq!(LINES.load(Relaxed) - lines, 10_000, "every request logged");
        assert_eq!(during, 0, "{during} allocations in 10,000 access-log lines");
    });
    assert!(
        BYTES.load(Relaxed) > 10_100 * 300,
        "lines carry their fields"
    );
}

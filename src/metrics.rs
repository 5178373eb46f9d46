//! The Prometheus registry and per-route metric handles, resolved once at start-up.
//!
//! The request path never looks a label set up by string: each route owns its handles,
//! and the `statuslens_responses_total` series (route × method × code × source) are
//! cached in a dense per-route table indexed by method and code, created on first use
//! so `/metrics` shows only series that happened — bounded by configuration, since
//! codes and methods come from fixed sets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use http::Method;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::status::Class;

/// Methods that get their own `method` label value; anything else is `OTHER`.
pub const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "OTHER",
];

/// The `method` label index of a request method.
pub fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::CONNECT => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::PATCH => 8,
        _ => 9,
    }
}

/// Who produced the status that was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The upstream sent it.
    Upstream,
    /// statuslens made it (502, 504, 404, 413, 431, 503 …).
    Proxy,
    /// The client went away before the response was complete (code 499).
    Client,
}

impl Source {
    /// The `source` label value.
    pub fn label(self) -> &'static str {
        match self {
            Source::Upstream => "upstream",
            Source::Proxy => "proxy",
            Source::Client => "client",
        }
    }
}

/// Why the upstream exchange failed (`kind` label of `statuslens_upstream_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// Could not connect (refused, unreachable, connect timeout).
    Connect,
    /// No response head within the route's timeout.
    Timeout,
    /// The connection was reset or closed mid-exchange.
    Reset,
    /// The upstream sent something that is not valid HTTP.
    Protocol,
}

impl UpstreamErrorKind {
    /// All kinds, in label order.
    pub const ALL: [UpstreamErrorKind; 4] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Reset,
        UpstreamErrorKind::Protocol,
    ];
    /// The `kind` label value.
    pub fn label(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }
}

/// Why a client connection ended before any request on it existed (`kind` label of
/// `statuslens_client_errors_total`): nothing of it reaches `statuslens_responses_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientErrorKind {
    /// A head hyper's parser refused (it answered 400, 414 or 431 itself and closed).
    MalformedHead,
    /// The TLS handshake failed or did not finish within `proxy.header_read_timeout`.
    TlsHandshake,
    /// A request head (or HTTP/2 preface) was begun but not finished within
    /// `proxy.header_read_timeout` (a stalled or slowloris client); the connection was closed.
    HeadTimeout,
    /// `proxy.proxy_protocol` is on and the connection did not begin with a valid PROXY
    /// protocol header; it was closed.
    ProxyProtocol,
    /// Accepted while `proxy.max_connections` was exceeded by more than the room kept
    /// for counted 503s (a flood): closed at once, unanswered.
    OverLimit,
}

impl ClientErrorKind {
    /// All kinds, in label order.
    pub const ALL: [ClientErrorKind; 5] = [
        ClientErrorKind::MalformedHead,
        ClientErrorKind::TlsHandshake,
        ClientErrorKind::HeadTimeout,
        ClientErrorKind::ProxyProtocol,
        ClientErrorKind::OverLimit,
    ];
    /// The `kind` label value.
    pub fn label(self) -> &'static str {
        match self {
            ClientErrorKind::MalformedHead => "malformed_head",
            ClientErrorKind::TlsHandshake => "tls_handshake",
            ClientErrorKind::HeadTimeout => "head_timeout",
            ClientErrorKind::ProxyProtocol => "proxy_protocol",
            ClientErrorKind::OverLimit => "over_limit",
        }
    }
}

/// Codes statuslens itself produces.
const PROXY_CODES: [u16; 9] = [400, 404, 408, 413, 414, 431, 502, 503, 504];

/// Latency buckets: the proxy's own overhead is sub-millisecond, API calls sit between
/// 10 ms and a few seconds, and 30 s is the default upstream timeout; 60 s and 120 s
/// for routes given longer ones and bodies streamed to slow clients (past the last
/// bucket, `histogram_quantile` can only answer that bucket's bound).
const DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Dense slot numbers for (code, source) pairs that have a cached series.
struct Slots {
    upstream: Box<[u16; 1000]>,
    proxy_base: usize,
    count: usize,
}

const NO_SLOT: u16 = u16::MAX;

impl Slots {
    fn new() -> Slots {
        let mut upstream = Box::new([NO_SLOT; 1000]);
        let mut next = 0u16;
        // Registered codes get a cached series; an unregistered code from an upstream
        // (e.g. 299) takes the slower labelled lookup, which is rare by definition.
        for info in crate::status::all() {
            upstream[info.code as usize] = next;
            next += 1;
        }
        Slots {
            upstream,
            proxy_base: next as usize,
            count: next as usize + PROXY_CODES.len() + 1,
        }
    }

    fn index(&self, code: u16, source: Source) -> Option<usize> {
        match source {
            Source::Upstream => match self.upstream.get(code as usize) {
                Some(&s) if s != NO_SLOT => Some(s as usize),
                _ => None,
            },
            Source::Proxy => PROXY_CODES
                .iter()
                .position(|&c| c == code)
                .map(|p| self.proxy_base + p),
            Source::Client => (code == 499).then_some(self.proxy_base + PROXY_CODES.len()),
        }
    }
}

/// All of statuslens' metrics.
pub struct Metrics {
    families: Arc<Families>,
    slots: Slots,
    routes: Vec<RouteMetrics>,
}

/// The registered metric families: created once per process, so a config reload gets
/// new per-route handles onto the same series and no counter ever goes back.
pub struct Families {
    registry: Registry,
    responses: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGaugeVec,
    upstream_errors: IntCounterVec,
    upstream_retries: IntCounterVec,
    upstream_connections: IntCounterVec,
    request_bytes: IntCounterVec,
    response_bytes: IntCounterVec,
    quota: [GaugeVec; 4],
    /// One per [`ClientErrorKind`], created at start so each series reads 0 until used.
    client_errors: [IntCounter; ClientErrorKind::ALL.len()],
    /// Follows [`crate::logsink::lost_lines`] when rendered.
    log_lines_lost: IntCounter,
    /// Client connections open on the proxy listener (what `max_connections` limits).
    connections_open: IntGauge,
    /// Client connections accepted on the proxy listener.
    connections_total: IntCounter,
    /// What each configured route's upstream last reported, by route name: a reload
    /// keeps it for the routes it keeps, and ends it for the routes it drops.
    reports: Mutex<HashMap<String, Arc<Reports>>>,
}

/// What a route's upstream last reported — its quota and `Retry-After` — and what
/// statuslens did about it. Kept by route name across reloads: a generation of its own
/// would forget that a reset time was reported (so a later report without one would
/// leave a stale reset time in place), warn of a low quota again at every reload, and
/// lose `/api/status`'s last `Retry-After`.
#[derive(Debug)]
pub struct Reports {
    /// remaining ratio, limit, remaining, reset time — each created when the upstream
    /// first reports it, so no route shows a misleading 0 (a 429's `Retry-After` alone
    /// is a reset time, not 0% of a quota left).
    quota: [OnceLock<Gauge>; 4],
    /// A low-quota warning was logged and has not been re-armed yet.
    pub quota_warned: AtomicBool,
    /// For 429 and 503: the last `Retry-After` the upstream sent, in milliseconds
    /// (`u64::MAX`: none yet).
    pub retry_after_ms: [AtomicU64; 2],
    /// The route left the configuration (or its upstream changed): its quota series are
    /// gone, and a request of an older generation that still reports cannot touch them.
    retired: AtomicBool,
    /// The upstream that reported.
    upstream: String,
}

impl Reports {
    fn new(upstream: &str) -> Reports {
        Reports {
            upstream: upstream.to_string(),
            quota: Default::default(),
            quota_warned: AtomicBool::new(false),
            retry_after_ms: [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)],
            retired: AtomicBool::new(false),
        }
    }
}

/// The handles of one route (or of `unmatched`).
pub struct RouteMetrics {
    name: String,
    responses_vec: IntCounterVec,
    /// METHODS.len() × slots, filled on first use.
    responses: Box<[OnceLock<IntCounter>]>,
    duration: [Histogram; 5],
    /// Requests being served right now on this route.
    pub in_flight: IntGauge,
    upstream_errors: [IntCounter; 4],
    /// Requests sent again after the pooled connection they went on closed unanswered.
    pub upstream_retries: IntCounter,
    /// Connections opened to the route's upstream.
    pub upstream_connections: IntCounter,
    /// Request body bytes received from clients.
    pub request_bytes: IntCounter,
    /// Response body bytes sent to clients.
    pub response_bytes: IntCounter,
    quota_vecs: [GaugeVec; 4],
    /// What the route's upstream last reported (shared with the generations before and
    /// after that have the route).
    pub reports: Arc<Reports>,
}

impl Metrics {
    /// Registers every metric and resolves the handles of each route; the last entry is
    /// the `unmatched` pseudo-route.
    pub fn new(route_names: &[&str]) -> Metrics {
        let routes: Vec<(&str, &str)> = route_names.iter().map(|&n| (n, "")).collect();
        Metrics::with_families(Families::new(), &routes)
    }

    /// Handles for `routes` (name, upstream) and `unmatched` onto existing families; a
    /// route of an earlier call missing here, or sent to another upstream, loses its
    /// quota series and state.
    pub fn with_families(families: Arc<Families>, routes: &[(&str, &str)]) -> Metrics {
        let f = &*families;
        let slots = Slots::new();
        let reports = f.reports_of(routes);
        let routes = routes
            .iter()
            .map(|&(name, _)| name)
            .chain(std::iter::once("unmatched"))
            .map(|name| RouteMetrics {
                name: name.to_string(),
                responses_vec: f.responses.clone(),
                responses: (0..METHODS.len() * slots.count)
                    .map(|_| OnceLock::new())
                    .collect(),
                duration: Class::ALL.map(|c| f.duration.with_label_values(&[name, c.label()])),
                in_flight: f.in_flight.with_label_values(&[name]),
                upstream_errors: UpstreamErrorKind::ALL
                    .map(|k| f.upstream_errors.with_label_values(&[name, k.label()])),
                upstream_retries: f.upstream_retries.with_label_values(&[name]),
                upstream_connections: f.upstream_connections.with_label_values(&[name]),
                request_bytes: f.request_bytes.with_label_values(&[name]),
                response_bytes: f.response_bytes.with_label_values(&[name]),
                quota_vecs: f.quota.clone(),
                reports: reports[name].clone(),
            })
            .collect();
        Metrics {
            families,
            slots,
            routes,
        }
    }
}

impl Families {
    /// The reports of `route_names` and `unmatched`, kept or new; every other route's
    /// are retired and their quota series removed (a stale quota would keep its alert
    /// firing for a route that no longer exists).
    fn reports_of(&self, routes: &[(&str, &str)]) -> HashMap<String, Arc<Reports>> {
        let mut reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        let keep: Vec<(&str, &str)> = routes
            .iter()
            .copied()
            .chain(std::iter::once(("unmatched", "")))
            .collect();
        // A route sent to another upstream starts afresh too: the quota was the old one's.
        reports.retain(|name, r| {
            let kept = keep.contains(&(name.as_str(), r.upstream.as_str()));
            if !kept {
                r.retired.store(true, Ordering::Relaxed);
                for vec in &self.quota {
                    let _ = vec.remove_label_values(&[name]);
                }
            }
            kept
        });
        for (name, upstream) in keep {
            reports
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(Reports::new(upstream)));
        }
        reports.clone()
    }

    /// Registers every statuslens metric family in a fresh registry.
    pub fn new() -> Arc<Families> {
        let registry = Registry::new();
        let responses = IntCounterVec::new(
            Opts::new(
                "statuslens_responses_total",
                "Responses by route, method, exact status code, class and who produced the status.",
            ),
            &["route", "method", "code", "class", "source"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "statuslens_request_duration_seconds",
                "Time from request received to response complete, by route and status class.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route", "class"],
        )
        .expect("valid metric");
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "statuslens_requests_in_flight",
                "Requests being served now, by route.",
            ),
            &["route"],
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "statuslens_upstream_errors_total",
                "Failed upstream exchanges by route and kind (connect, timeout, reset, protocol).",
            ),
            &["route", "kind"],
        )
        .expect("valid metric");
        let upstream_retries = IntCounterVec::new(
            Opts::new(
                "statuslens_upstream_retries_total",
                "Requests sent again on another upstream connection because the pooled one they went on closed without a byte of answer (GET, HEAD, OPTIONS and TRACE without a body only).",
            ),
            &["route"],
        )
        .expect("valid metric");
        let upstream_connections = IntCounterVec::new(
            Opts::new(
                "statuslens_upstream_connections_total",
                "Connections opened to the upstream, by route (kept alive and reused while the upstream allows: a rate near the route's request rate means no reuse).",
            ),
            &["route"],
        )
        .expect("valid metric");
        let req_bytes = IntCounterVec::new(
            Opts::new(
                "statuslens_request_bytes_total",
                "Request body bytes received from clients.",
            ),
            &["route"],
        )
        .expect("valid metric");
        let resp_bytes = IntCounterVec::new(
            Opts::new(
                "statuslens_response_bytes_total",
                "Response body bytes sent to clients.",
            ),
            &["route"],
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "statuslens_build_info",
                "Always 1; the version label says which build runs.",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let client_errors = IntCounterVec::new(
            Opts::new(
                "statuslens_client_errors_total",
                "Client connections that ended before a request existed, by kind (malformed_head, tls_handshake, head_timeout, proxy_protocol).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let quota_gauge = |name: &str, help: &str| {
            GaugeVec::new(Opts::new(name, help), &["route"]).expect("valid metric")
        };
        let quota_vecs = [
            quota_gauge(
                "statuslens_upstream_quota_remaining_ratio",
                "Share of the upstream's rate-limit quota left (remaining / limit), from its last response's quota headers.",
            ),
            quota_gauge(
                "statuslens_upstream_quota_limit",
                "The upstream's rate-limit quota for the current window, from its quota headers.",
            ),
            quota_gauge(
                "statuslens_upstream_quota_remaining",
                "Requests left in the upstream's current rate-limit window, from its quota headers.",
            ),
            quota_gauge(
                "statuslens_upstream_quota_reset_timestamp_seconds",
                "When the upstream's current rate-limit window resets, Unix seconds, from its quota headers (or Retry-After): past it, the other quota gauges describe a window that is over.",
            ),
        ];

        let connections_open = IntGauge::new(
            "statuslens_connections_open",
            "Client connections open on the proxy listener now, all workers (what proxy.max_connections limits).",
        )
        .expect("valid metric");
        let connections_total = IntCounter::new(
            "statuslens_connections_total",
            "Client connections accepted on the proxy listener.",
        )
        .expect("valid metric");
        let log_lines_lost = IntCounter::new(
            "statuslens_log_lines_lost_total",
            "Log lines the output refused (closed pipe, full disk) or that were shed while it took less than 16 KiB in 5 s.",
        )
        .expect("valid metric");
        for c in [
            Box::new(responses.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(log_lines_lost.clone()),
            Box::new(duration.clone()),
            Box::new(in_flight.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(upstream_retries.clone()),
            Box::new(upstream_connections.clone()),
            Box::new(req_bytes.clone()),
            Box::new(resp_bytes.clone()),
            Box::new(build_info),
            Box::new(quota_vecs[0].clone()),
            Box::new(quota_vecs[1].clone()),
            Box::new(quota_vecs[2].clone()),
            Box::new(quota_vecs[3].clone()),
            Box::new(client_errors.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections_total.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }

        Arc::new(Families {
            registry,
            responses,
            duration,
            in_flight,
            upstream_errors,
            upstream_retries,
            upstream_connections,
            request_bytes: req_bytes,
            response_bytes: resp_bytes,
            quota: quota_vecs,
            client_errors: ClientErrorKind::ALL
                .map(|k| client_errors.with_label_values(&[k.label()])),
            log_lines_lost,
            connections_open,
            connections_total,
            reports: Mutex::new(HashMap::new()),
        })
    }

    /// The registry, for collectors defined elsewhere (spike metrics).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts a client connection that ended before a request existed.
    pub fn client_error(&self, kind: ClientErrorKind) {
        self.client_errors[kind as usize].inc();
    }

    /// Counts a client connection accepted; [`Families::connection_closed`] when it ends.
    pub fn connection_opened(&self) {
        self.connections_total.inc();
        self.connections_open.inc();
    }

    /// Counts the end of a connection [`Families::connection_opened`] counted.
    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    /// Client connections open now.
    pub fn connections_open(&self) -> u64 {
        self.connections_open.get().max(0) as u64
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> Vec<u8> {
        // The log writer counts in a static (it starts before any registry exists).
        let lost = crate::logsink::lost_lines();
        let shown = self.log_lines_lost.get();
        if lost > shown {
            self.log_lines_lost.inc_by(lost - shown);
        }
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        out
    }
}

impl Metrics {
    /// The registry, for collectors defined elsewhere (spike metrics).
    pub fn registry(&self) -> &Registry {
        &self.families.registry
    }

    /// Handles of route `id`; `routes.len()` is `unmatched`.
    pub fn route(&self, id: usize) -> &RouteMetrics {
        &self.routes[id]
    }

    /// Index of the `unmatched` pseudo-route.
    pub fn unmatched(&self) -> usize {
        self.routes.len() - 1
    }

    /// Counts one finished request: one response series and one duration sample.
    pub fn record(&self, route: usize, method: usize, code: u16, source: Source, seconds: f64) {
        let r = &self.routes[route];
        let class = Class::counted(code);
        match self.slots.index(code, source) {
            Some(slot) => r.responses[method * self.slots.count + slot]
                .get_or_init(|| r.series(method, code, class, source))
                .inc(),
            // Codes outside 100..=599 from an upstream: rare, so the map lookup is fine.
            None => r.series(method, code, class, source).inc(),
        }
        r.duration[class.index()].observe(seconds);
    }

    /// Records the upstream's latest quota report for a route; fields it did not carry
    /// leave their gauge as it was.
    pub fn set_quota(&self, route: usize, q: &crate::quota::Quota) {
        let r = &self.routes[route];
        let reports = &r.reports;
        // Checked under the families' lock, which retiring holds: a request of an older
        // generation that reports after its route left gets a gauge of its own, in no
        // registry; the series (perhaps a newer generation's, of the same name) is not
        // touched.
        let gauge = |i: usize| {
            reports.quota[i].get_or_init(|| {
                let _reports = self
                    .families
                    .reports
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if reports.retired.load(Ordering::Relaxed) {
                    return Gauge::new("statuslens_retired_quota", "a retired route's quota")
                        .expect("valid metric");
                }
                r.quota_vecs[i].with_label_values(&[&r.name])
            })
        };
        if let Some(v) = q.remaining_ratio() {
            gauge(0).set(v);
        }
        if let Some(v) = q.limit {
            gauge(1).set(v);
        }
        if let Some(v) = q.remaining {
            gauge(2).set(v);
        }
        match (q.reset_secs, q.remaining_ratio()) {
            (Some(v), _) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                gauge(3).set(now.as_secs_f64() + v);
            }
            // A new report of the window without its reset: an older reset time says
            // nothing of it (NaN is "unknown" to Prometheus, and never in the past).
            (None, Some(_)) if reports.quota[3].get().is_some() => gauge(3).set(f64::NAN),
            (None, _) => {}
        }
    }

    /// Counts one failed upstream exchange.
    pub fn upstream_error(&self, route: usize, kind: UpstreamErrorKind) {
        self.routes[route].upstream_errors[kind as usize].inc();
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> Vec<u8> {
        self.families.render()
    }
}

impl RouteMetrics {
    fn series(&self, method: usize, code: u16, class: Class, source: Source) -> IntCounter {
        let buf = itoa_buf(code);
        let code = std::str::from_utf8(&buf).expect("digits");
        self.responses_vec.with_label_values(&[
            &self.name,
            METHODS[method],
            code,
            class.label(),
            source.label(),
        ])
    }

    /// The route label.
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn itoa_buf(code: u16) -> [u8; 3] {
    let c = code.min(999);
    [
        b'0' + (c / 100) as u8,
        b'0' + (c / 10 % 10) as u8,
        b'0' + (c % 10) as u8,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_routes_late_report_leaves_the_re_added_routes_series_alone() {
        let families = Families::new();
        let first = Metrics::with_families(families.clone(), &[("a", "http://x")]);
        let _removed = Metrics::with_families(families.clone(), &[]);
        let again = Metrics::with_families(families.clone(), &[("a", "http://x")]);
        let half = crate::quota::Quota {
            limit: Some(100.0),
            remaining: Some(50.0),
            reset_secs: None,
        };
        again.set_quota(0, &half);
        // A request of the first generation, still running, reports now.
        let low = crate::quota::Quota {
            limit: Some(100.0),
            remaining: Some(1.0),
            reset_secs: None,
        };
        first.set_quota(0, &low);
        let text = String::from_utf8(again.render()).unwrap();
        assert!(
            text.contains(r#"statuslens_upstream_quota_remaining_ratio{route="a"} 0.5"#),
            "{text}"
        );
        again.set_quota(0, &low);
        let text = String::from_utf8(again.render()).unwrap();
        assert!(
            text.contains(r#"statuslens_upstream_quota_remaining_ratio{route="a"} 0.01"#),
            "{text}"
        );
    }

    #[test]
    fn counts_land_in_exactly_one_series() {
        let m = Metrics::new(&["a"]);
        m.record(0, method_index(&Method::GET), 200, Source::Upstream, 0.01);
        m.record(0, method_index(&Method::GET), 200, Source::Upstream, 0.01);
        m.record(
            0,
            method_index(&Method::from_bytes(b"PURGE").unwrap()),
            599,
            Source::Upstream,
            0.2,
        );
        m.record(1, 0, 404, Source::Proxy, 0.0);
        m.record(0, 2, 499, Source::Client, 1.0);
        let text = String::from_utf8(m.render()).unwrap();
        for want in [
            r#"statuslens_responses_total{class="2xx",code="200",method="GET",route="a",source="upstream"} 2"#,
            r#"statuslens_responses_total{class="5xx",code="599",method="OTHER",route="a",source="upstream"} 1"#,
            r#"statuslens_responses_total{class="4xx",code="404",method="GET",route="unmatched",source="proxy"} 1"#,
            r#"statuslens_responses_total{class="4xx",code="499",method="POST",route="a",source="client"} 1"#,
            r#"statuslens_build_info{version=""#,
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        assert_eq!(text.matches("statuslens_responses_total{").count(), 4);
    }
}

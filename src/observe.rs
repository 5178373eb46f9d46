//! Observation: every request becomes exactly one counted, logged outcome.
//!
//! An [`Exchange`] is created when a request arrives and records itself when dropped,
//! so whatever path the request takes — a normal response, a proxy-made error, an
//! upstream that dies mid-body, a client that disconnects while the upstream thinks —
//! it is counted once, in one series. Before the response is complete it travels with
//! the request future; afterwards inside the response body ([`ObservedBody`]), whose
//! end (or early drop) decides between the status that was sent and `499` — or, when
//! statuslens itself ended it early, `500` (a panic, see `isolate`) or `503` (cut at the
//! drain timeout, [`cut_in_flight`]).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Uri};
use http_body::{Body, Frame, SizeHint};
use prometheus::IntCounter;

use crate::access_log;
use crate::consumer::ConsumerId;
use crate::metrics::{method_index, Metrics, Source, UpstreamErrorKind};
use crate::quota::Quota;

thread_local! {
    /// Set while a worker drops what is still in flight at its drain timeout.
    static CUTTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` — a worker dropping its runtime, with whatever requests the drain timeout
/// did not let finish — so that each exchange it ends counts as statuslens' `503`
/// (shutting down), `source="proxy"`: the client did not go away, the proxy stopped.
pub fn cut_in_flight<T>(f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CUTTING.with(|c| c.set(false));
        }
    }
    CUTTING.with(|c| c.set(true));
    let _reset = Reset;
    f()
}

/// Hooks that want every finished request (spike detection).
pub trait Sink: Send + Sync {
    /// One request on `route` finished with `code`, from `consumer` if the route
    /// identifies consumers.
    fn observe(&self, route: usize, code: u16, consumer: Option<ConsumerId>);
}

/// Everything an exchange needs to report itself; shared by all requests.
pub struct Observer {
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The access log.
    pub log: access_log::AccessLog,
    /// Route names and upstream URLs, for the log; `unmatched` last.
    pub route_names: Vec<String>,
    /// Upstream URL per route ("" for unmatched).
    pub upstreams: Vec<String>,
    /// Optional extra consumer (spike detection).
    pub sink: Option<Arc<dyn Sink>>,
    /// Requests in flight, all routes (for `proxy.max_in_flight`): one count for the
    /// process, so requests still running on an older generation take their place
    /// after a reload. Per route (`routes[].max_in_flight`), the route's
    /// `statuslens_requests_in_flight` gauge is the count: shared the same way, by name.
    pub in_flight: Arc<AtomicU64>,
}

/// The codes whose `Retry-After` `/api/status` reports, in `last_retry_after_ms` order.
pub const RETRY_AFTER_CODES: [u16; 2] = [429, 503];

/// Below this share of quota left, statuslens warns that 429s are near.
const QUOTA_WARN: f64 = 0.10;
/// The warning re-arms once the quota is back above this share.
const QUOTA_REARM: f64 = 0.20;

impl Observer {
    /// Remembers the upstream's latest `Retry-After` for a 429 or 503 on a route.
    pub fn retry_after(&self, route: usize, code: u16, secs: f64) {
        if let Some(i) = RETRY_AFTER_CODES.iter().position(|&c| c == code) {
            let reports = &self.metrics.route(route).reports;
            reports.retry_after_ms[i].store((secs * 1000.0) as u64, Ordering::Relaxed);
        }
    }

    /// The latest `Retry-After` (seconds) seen for `code` on a route, if any.
    pub fn last_retry_after(&self, route: usize, code: u16) -> Option<f64> {
        let i = RETRY_AFTER_CODES.iter().position(|&c| c == code)?;
        if route >= self.route_names.len() {
            return None;
        }
        let reports = &self.metrics.route(route).reports;
        let ms = reports.retry_after_ms[i].load(Ordering::Relaxed);
        (ms != u64::MAX).then(|| ms as f64 / 1000.0)
    }

    /// Records an upstream's quota report and warns once when it runs low.
    pub fn quota(&self, route: usize, q: &Quota) {
        self.metrics.set_quota(route, q);
        let Some(ratio) = q.remaining_ratio() else {
            return;
        };
        let warned = &self.metrics.route(route).reports.quota_warned;
        if ratio < QUOTA_WARN {
            if !warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    target: "statuslens::quota",
                    route = self.route_names[route].as_str(),
                    remaining_ratio = ratio,
                    remaining = q.remaining,
                    limit = q.limit,
                    reset_seconds = q.reset_secs,
                    "upstream quota low on route {}: {:.0}% left — 429s are near; slow down or spread calls",
                    self.route_names[route],
                    ratio * 100.0
                );
            }
        } else if ratio > QUOTA_REARM {
            warned.store(false, Ordering::Relaxed);
        }
    }
}

/// One request, from arrival to its single recorded outcome.
pub struct Exchange {
    observer: Arc<Observer>,
    route: usize,
    method: Method,
    uri: Uri,
    request_id: HeaderValue,
    /// The connection's peer.
    client: SocketAddr,
    /// The client a trusted proxy's `X-Forwarded-For` names, when it does.
    forwarded_for: Option<IpAddr>,
    start: Instant,
    status: u16,
    source: Source,
    completed: bool,
    bytes_out: u64,
    request_body: Option<Arc<RequestBodyState>>,
    consumer: Option<ConsumerId>,
    retry_after: Option<f64>,
    resent: bool,
    /// From arrival to the upstream's response head, when one came.
    upstream_header: Option<Duration>,
}

impl Exchange {
    /// Starts observing a request on `route`.
    pub fn start(
        observer: Arc<Observer>,
        route: usize,
        method: Method,
        uri: Uri,
        request_id: HeaderValue,
        client: SocketAddr,
    ) -> Exchange {
        observer.metrics.route(route).in_flight.inc();
        observer.in_flight.fetch_add(1, Ordering::Relaxed);
        Exchange {
            observer,
            route,
            method,
            uri,
            request_id,
            client,
            forwarded_for: None,
            start: Instant::now(),
            status: 499,
            source: Source::Client,
            completed: false,
            bytes_out: 0,
            request_body: None,
            consumer: None,
            retry_after: None,
            resent: false,
            upstream_header: None,
        }
    }

    /// Whether the request is a HEAD: its answer has no body, whatever it says.
    pub fn is_head(&self) -> bool {
        self.method == Method::HEAD
    }

    /// Requests in flight now, this one included: (all routes, this route).
    pub fn in_flight(&self) -> (u64, u64) {
        (
            self.observer.in_flight.load(Ordering::Relaxed),
            self.observer
                .metrics
                .route(self.route)
                .in_flight
                .get()
                .max(0) as u64,
        )
    }

    /// Attributes the request to the client a trusted proxy named (see `trusted`).
    pub fn set_forwarded_for(&mut self, client: Option<IpAddr>) {
        self.forwarded_for = client;
    }

    /// The client's address: the one a trusted proxy named, else the peer's.
    pub fn client_ip(&self) -> IpAddr {
        self.forwarded_for.unwrap_or(self.client.ip())
    }

    /// The request id (kept from `X-Request-Id` or made here).
    pub fn request_id(&self) -> &HeaderValue {
        &self.request_id
    }

    /// The status chosen for the response and who chose it; counted once the body ends.
    pub fn respond(&mut self, status: u16, source: Source) {
        self.status = status;
        self.source = source;
    }

    /// Records the upstream's response head: its status, and how long it took to come.
    pub fn upstream_answered(&mut self, status: u16) {
        self.upstream_header = Some(self.start.elapsed());
        self.respond(status, Source::Upstream);
    }

    /// Records a failed upstream exchange (the response status is set separately).
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.observer.metrics.upstream_error(self.route, kind);
    }

    /// The consumer this request came from (hashed), for spike attribution.
    pub fn set_consumer(&mut self, consumer: Option<ConsumerId>) {
        self.consumer = consumer;
    }

    /// What the upstream's `Retry-After` said, in seconds, for the log.
    pub fn set_retry_after(&mut self, secs: Option<f64>) {
        self.retry_after = secs;
    }

    /// The request goes to the upstream once more: its pooled connection closed
    /// unanswered (`fastpath::may_resend`). Counted now; the log line says it.
    pub fn resent(&mut self) {
        self.resent = true;
        self.observer
            .metrics
            .route(self.route)
            .upstream_retries
            .inc();
    }

    /// Attaches the request body's byte tally so the log line can report it.
    pub fn track_request_body(&mut self, state: Arc<RequestBodyState>) {
        self.request_body = Some(state);
    }

    /// `n` more response body bytes went to the client.
    pub fn sent(&mut self, n: u64) {
        self.bytes_out += n;
        self.observer
            .metrics
            .route(self.route)
            .response_bytes
            .inc_by(n);
    }

    /// Marks the response as fully delivered (or ended as far as it could be).
    pub fn complete(&mut self) {
        self.completed = true;
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let (code, source, in_doubt) = if self.completed {
            (self.status, self.source, false)
        } else if crate::isolate::exchange_failed() {
            (500, Source::Proxy, true)
        } else if CUTTING.with(std::cell::Cell::get) {
            (503, Source::Proxy, true)
        } else {
            (499, Source::Client, false)
        };
        let elapsed = self.start.elapsed();
        let o = &self.observer;
        let m = o.metrics.route(self.route);
        m.in_flight.dec();
        o.in_flight.fetch_sub(1, Ordering::Relaxed);
        o.metrics.record(
            self.route,
            method_index(&self.method),
            code,
            source,
            elapsed.as_secs_f64(),
        );
        if let Some(sink) = &o.sink {
            sink.observe(self.route, code, self.consumer);
        }
        let bytes_in = self
            .request_body
            .as_ref()
            .map_or(0, |s| s.bytes.load(Ordering::Relaxed));
        o.log.request(&access_log::Entry {
            route: &o.route_names[self.route],
            upstream: &o.upstreams[self.route],
            method: &self.method,
            uri: &self.uri,
            status: code,
            source,
            // Only an upstream's answer: one the proxy made and the client left before
            // getting is no upstream status (and is made before the first poll, so
            // hyper may drop it unsent).
            upstream_status: (!self.completed && self.source == Source::Upstream)
                .then_some(self.status),
            duration: elapsed,
            bytes_in,
            bytes_out: self.bytes_out,
            client: self.client,
            forwarded_for: self.forwarded_for,
            request_id: &self.request_id,
            retry_after: self.retry_after,
            consumer: self.consumer,
            resent: self.resent,
            upstream_header: self.upstream_header,
            in_doubt,
        });
    }
}

/// What the forwarder learns about a request body while the upstream reads it.
#[derive(Debug, Default)]
pub struct RequestBodyState {
    /// Bytes received so far.
    pub bytes: AtomicU64,
    /// Set when the body went past the route's `max_body_bytes`.
    pub too_large: AtomicBool,
    /// Set when the client stopped sending its body for longer than the idle timeout.
    pub idle: AtomicBool,
    /// Set when the client's body broke off (a hang-up mid-body, an HTTP/2 reset): the
    /// exchange failed on the client's side, whatever the upstream client then says.
    pub client_gone: AtomicBool,
    /// Time the body spent waiting for the client to send more (finished waits), ns.
    client_wait_ns: AtomicU64,
    /// When the current wait for the client began ([`mono_ns`]), or 0.
    waiting_since_ns: AtomicU64,
}

/// Nanoseconds on a process-wide monotonic clock, never 0.
fn mono_ns() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

impl RequestBodyState {
    /// How long the body has waited for the client so far, the current wait included:
    /// time the upstream's clock must not count (see `forward::upstream_deadline`).
    pub fn client_waited(&self) -> std::time::Duration {
        // A wait's end adds it to the total before it clears `since` (Release): seeing
        // `since` cleared (Acquire) means the total has it. The other way round, a wait
        // that ends between the two loads counts twice for a moment: later, never early.
        let since = self.waiting_since_ns.load(Ordering::Acquire);
        let total = self.client_wait_ns.load(Ordering::Acquire);
        let current = if since == 0 {
            0
        } else {
            mono_ns().saturating_sub(since)
        };
        std::time::Duration::from_nanos(total + current)
    }

    fn client_wait_began(&self) {
        let _ = self.waiting_since_ns.compare_exchange(
            0,
            mono_ns(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn client_wait_ended(&self) {
        // One body, polled by one task at a time: the only writer.
        let since = self.waiting_since_ns.load(Ordering::Relaxed);
        if since != 0 {
            self.client_wait_ns
                .fetch_add(mono_ns().saturating_sub(since), Ordering::Release);
            self.waiting_since_ns.store(0, Ordering::Release);
        }
    }
}

/// The error a request body yields when the client stalls mid-body.
#[derive(Debug, thiserror::Error)]
#[error("client sent no request body data for {0:?}")]
pub struct BodyIdle(pub std::time::Duration);

/// The error a response body yields when the upstream goes silent mid-body.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent no response body data for {0:?}")]
pub struct BodyStalled(pub std::time::Duration);

/// The error a request body yields when it exceeds its route's limit.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the route's max_body_bytes ({0} bytes)")]
pub struct BodyTooLarge(pub u64);

/// The error a request body yields when it ends before its declared length.
#[derive(Debug, thiserror::Error)]
#[error("the client ended the request body {0} bytes short of its Content-Length")]
pub struct BodyCut(pub u64);

/// A request body on its way upstream: counted, and cut off past the route's limit.
pub struct RequestBody {
    /// None: no body (a request sent once more, see `forward_hyper`).
    inner: Option<hyper::body::Incoming>,
    state: Arc<RequestBodyState>,
    counter: IntCounter,
    limit: Option<u64>,
    idle: std::time::Duration,
    /// Armed only once the body has to wait for the client, so a body that streams
    /// without pause never allocates a timer.
    idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The last poll found no data from the client: a wait is being timed in `state`.
    waiting: bool,
    /// The upstream side has polled the body at least once.
    polled: bool,
    /// Set for a body whose unread rest would close a keep-alive HTTP/1.1 connection
    /// (see `Drop`).
    discard: Option<Discard>,
}

/// What reading the rest of an unfinished HTTP/1.1 body needs (see `RequestBody`'s
/// `Drop`).
pub struct Discard {
    /// The client sent `Expect: 100-continue`: until the body is first polled hyper has
    /// not said 100, and the client may rightly never send it.
    pub expect: bool,
    /// The connection's requests in progress: the discard counts as one, so that the idle
    /// clock does not close the connection under it.
    pub activity: Arc<crate::idle::Activity>,
}

/// Most of an HTTP/1 request body read and thrown away after the upstream let go of it,
/// to keep the client's connection: past this, the connection closes instead.
const DISCARD_LIMIT: usize = 1024 * 1024;

impl RequestBody {
    /// Wraps a client's body; `discard` for an HTTP/1.1 one on a keep-alive connection.
    pub fn new(
        inner: hyper::body::Incoming,
        state: Arc<RequestBodyState>,
        counter: IntCounter,
        limit: Option<u64>,
        idle: std::time::Duration,
        discard: Option<Discard>,
    ) -> Self {
        RequestBody {
            inner: Some(inner),
            state,
            counter,
            limit,
            idle,
            idle_timer: None,
            waiting: false,
            polled: false,
            discard,
        }
    }
}

/// Reads what is left of a client's HTTP/1 body and throws it away, each frame within
/// `idle`, at most `DISCARD_LIMIT` bytes; then drops it (hyper closes the connection if
/// it did not end).
async fn discard(mut body: hyper::body::Incoming, idle: Duration) {
    use http_body_util::BodyExt;
    let mut left = DISCARD_LIMIT;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(idle, body.frame()).await {
        if let Some(data) = frame.data_ref() {
            match left.checked_sub(data.len()) {
                Some(rest) => left = rest,
                None => return,
            }
        }
    }
}

impl RequestBody {
    /// No body, counted where this one is: what a bodyless request sent again carries.
    pub fn none_like(&self) -> RequestBody {
        RequestBody {
            inner: None,
            state: self.state.clone(),
            counter: self.counter.clone(),
            limit: self.limit,
            idle: self.idle,
            idle_timer: None,
            waiting: false,
            polled: false,
            discard: None,
        }
    }

    /// Ends the wait for the client being timed, if one is.
    fn end_wait(&mut self) {
        if std::mem::take(&mut self.waiting) {
            self.state.client_wait_ended();
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.end_wait();
        // The upstream side let go of the body before its end: it answered without
        // reading all of it and closed, say. hyper then closes the client's connection
        // after the response, and that response may already have gone out without
        // `Connection: close`: a client reusing the connection at once finds it closed
        // under its next request (a POST it must not resend). So, as nginx discards a
        // body its answer did not need, the rest is read and dropped, within bounds.
        // Not after a refusal (too large, stalled, broken): those close on purpose.
        let (Some(inner), Some(how)) = (self.inner.take(), self.discard.take()) else {
            return;
        };
        let refused = self.state.too_large.load(Ordering::Relaxed)
            || self.state.idle.load(Ordering::Relaxed)
            || self.state.client_gone.load(Ordering::Relaxed);
        // A client that asked for 100 Continue and never got it need not send the body:
        // hyper's own close is right for it.
        let withheld = how.expect && !self.polled;
        if refused || withheld || inner.is_end_stream() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let busy = how.activity.enter();
            let idle = self.idle;
            runtime.spawn(async move {
                discard(inner, idle).await;
                drop(busy);
            });
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        this.polled = true;
        let polled = Pin::new(inner).poll_frame(cx);
        if polled.is_pending() {
            if !this.waiting {
                this.waiting = true;
                this.state.client_wait_began();
            }
            let idle = this.idle;
            let timer = this
                .idle_timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
            if timer.as_mut().poll(cx).is_ready() {
                this.end_wait();
                this.state.idle.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(Box::new(BodyIdle(idle)))));
            }
            return Poll::Pending;
        }
        this.end_wait();
        if let Some(timer) = this.idle_timer.as_mut() {
            timer
                .as_mut()
                .reset(tokio::time::Instant::now() + this.idle);
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.counter.inc_by(n);
                    let total = this.state.bytes.fetch_add(n, Ordering::Relaxed) + n;
                    if let Some(limit) = this.limit {
                        if total > limit {
                            this.state.too_large.store(true, Ordering::Relaxed);
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge(limit)))));
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.state.client_gone.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                // hyper ends an HTTP/2 body at the client's RST_STREAM(NO_ERROR) as if it
                // were whole (RFC 9113 §8.1 lets a *server* stop an upload so): bytes
                // of a declared length still owed are a client that left, not a body
                // to present upstream as complete.
                let owed = this
                    .inner
                    .as_ref()
                    .and_then(|b| b.size_hint().exact())
                    .filter(|&n| n > 0);
                // Ended: nothing is left to discard (a chunked body never reports its
                // end through `is_end_stream`).
                this.inner = None;
                if let Some(owed) = owed {
                    this.state.client_gone.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(Box::new(BodyCut(owed)))));
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().map_or(true, Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// Errors a response body hands hyper: its upstream's, whichever client read it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body: the upstream's, or a short one the proxy made.
pub enum ResponseInner {
    /// Streamed from the upstream.
    Upstream(hyper::body::Incoming),
    /// Streamed from a connection of the fast path's pools (see `fastclient`).
    Pooled(crate::fastclient::UpstreamBody),
    /// Made by statuslens (errors) — or empty.
    Local(Option<Bytes>),
    /// A body whose polling panics, to test panic isolation.
    #[cfg(test)]
    Panics,
}

/// A response body that counts bytes and records its exchange when it ends.
pub struct ObservedBody {
    inner: ResponseInner,
    exchange: Option<Exchange>,
    /// How long the upstream may leave the client waiting mid-body (zero: no limit).
    stall_limit: Duration,
    /// Armed at the first wait on the upstream, reset at each later one.
    stall_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The last poll found nothing: the client is waiting on the upstream.
    stalling: bool,
}

impl ObservedBody {
    /// Wraps `inner`; the exchange is recorded when the body ends or is dropped.
    pub fn new(inner: ResponseInner, exchange: Exchange) -> Self {
        ObservedBody::with(inner, Some(exchange))
    }

    fn with(inner: ResponseInner, exchange: Option<Exchange>) -> Self {
        ObservedBody {
            inner,
            exchange,
            stall_limit: Duration::ZERO,
            stall_timer: None,
            stalling: false,
        }
    }

    /// Cuts the body when the upstream sends nothing for `limit` while the client
    /// waits (the route's `response_body_timeout`).
    pub fn stalls_after(mut self, limit: Duration) -> Self {
        self.stall_limit = limit;
        self
    }

    /// A body no exchange is attached to (the exchange was counted elsewhere).
    pub fn unobserved(inner: ResponseInner) -> Self {
        ObservedBody::with(inner, None)
    }

    fn inner_ended(&self) -> bool {
        match &self.inner {
            ResponseInner::Upstream(b) => b.is_end_stream(),
            ResponseInner::Pooled(b) => b.is_end_stream(),
            ResponseInner::Local(b) => b.is_none(),
            #[cfg(test)]
            ResponseInner::Panics => false,
        }
    }

    fn finish(&mut self) {
        if let Some(mut ex) = self.exchange.take() {
            ex.complete();
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let before = crate::isolate::failures();
        if let Some(polled) = crate::isolate::catch("response body", || this.poll_observed(cx)) {
            return polled;
        }
        // End the body here (the client sees it cut short); the exchange counts a 500
        // from the proxy.
        let exchange = this.exchange.take();
        crate::isolate::discard(|| drop(exchange), before);
        this.inner = ResponseInner::Local(None);
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.inner_ended()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            ResponseInner::Upstream(b) => b.size_hint(),
            ResponseInner::Pooled(b) => b.size_hint(),
            ResponseInner::Local(b) => {
                SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            #[cfg(test)]
            ResponseInner::Panics => SizeHint::default(),
        }
    }
}

/// hyper's client reports broken body framing (a bad chunk-size line, bytes where a
/// CRLF belongs) as invalid data or input beneath a body error.
fn hyper_malformed(e: &hyper::Error) -> bool {
    if e.is_parse() {
        return true;
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            );
        }
        cause = c.source();
    }
    false
}

impl ObservedBody {
    fn poll_observed(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self;
        let polled = match &mut this.inner {
            ResponseInner::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            ResponseInner::Pooled(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            ResponseInner::Local(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            #[cfg(test)]
            ResponseInner::Panics => panic!("response body bug"),
        };
        let polled = match polled {
            Poll::Pending => this.poll_stall(cx),
            ready => {
                this.stalling = false;
                ready
            }
        };
        match polled {
            Poll::Ready(Some(Ok(mut frame))) => {
                if let (Some(data), Some(ex)) = (frame.data_ref(), this.exchange.as_mut()) {
                    ex.sent(data.len() as u64);
                }
                // Trailers end a body, though hyper's `Incoming` only says so when
                // polled once more — which hyper's HTTP/2 server never does.
                if let Some(trailers) = frame.trailers_mut() {
                    // Connection-specific fields are the hop's, never the client's:
                    // neither upstream client drops them, and among HTTP/2 trailers h2
                    // resets the stream (the client would lose a response counted as
                    // delivered).
                    crate::forward::strip_hop_by_hop(trailers, false);
                    this.finish();
                } else if this.inner_ended() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // The upstream died mid-body: the client sees a truncated response with
                // the upstream's status, which is what gets counted — once. Broken
                // framing is the protocol's fault, a cut connection a reset.
                if let Some(ex) = &this.exchange {
                    let stalled = e.is::<BodyStalled>();
                    let malformed = e
                        .downcast_ref::<crate::fastclient::BodyError>()
                        .is_some_and(crate::fastclient::BodyError::is_malformed)
                        || e.downcast_ref::<hyper::Error>()
                            .is_some_and(hyper_malformed);
                    ex.upstream_error(if stalled {
                        UpstreamErrorKind::Timeout
                    } else if malformed {
                        UpstreamErrorKind::Protocol
                    } else {
                        UpstreamErrorKind::Reset
                    });
                }
                this.finish();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl ObservedBody {
    /// The inner body has nothing yet: Pending, or the stall error once the client has
    /// waited `stall_limit` without a byte. One timer per body, made at its first wait
    /// (a body that arrives whole never makes one).
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.stall_limit.is_zero() {
            return Poll::Pending;
        }
        if !self.stalling {
            self.stalling = true;
            let due = tokio::time::Instant::now() + self.stall_limit;
            match self.stall_timer.as_mut() {
                Some(timer) => timer.as_mut().reset(due),
                None => self.stall_timer = Some(Box::pin(tokio::time::sleep_until(due))),
            }
        }
        match self.stall_timer.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => {
                Poll::Ready(Some(Err(Box::new(BodyStalled(self.stall_limit)))))
            }
            _ => Poll::Pending,
        }
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // A body nobody polled because it was empty (HEAD, 204, 304) still completed.
        if self.inner_ended() {
            self.finish();
        }
    }
}

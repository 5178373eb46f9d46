//! The proxy service: route → forward → observe → respond.
//!
//! `Proxy::handle` is called once per request. Synchronously, it picks the route, opens
//! an [`Exchange`] (which guarantees the request is counted once), enforces the limits
//! that the proxy answers itself and rewrites the hop-by-hop headers RFC 9110 §7.6.1
//! names; the future it returns streams the request to the route's pooled upstream
//! client. Whatever comes back — or doesn't — becomes a response with an observed body.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::config::{Config, HostHeader, ProxyConfig, RouteConfig};
use crate::consumer::Identifier;
use crate::fastclient;
use crate::fastpath::{self, FastRoute};
use crate::framing::Defect;
use crate::metrics::{Source, UpstreamErrorKind};
use crate::observe::{
    BodyTooLarge, Discard, Exchange, ObservedBody, Observer, RequestBody, RequestBodyState,
    ResponseInner,
};
use crate::quota;
use crate::reuse::{self, Watching};
use crate::route::Router;

/// What the connection knows about a request as it arrives.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The client's address.
    pub client: SocketAddr,
    /// The connection came in over `proxy.max_connections`.
    pub overloaded: bool,
    /// It arrived over TLS.
    pub tls: bool,
    /// What is wrong with its head, though hyper accepted it (see `framing`).
    pub defect: Option<Defect>,
    /// The connection's requests in progress (see `idle`), for a body read to its end
    /// after the response (see `observe::Discard`): given only with an HTTP/1.1 body.
    pub activity: Option<Arc<crate::idle::Activity>>,
    /// For a request that asks to upgrade: what its tunnel takes of the connection.
    pub connection: Option<Upgradable>,
}

/// What a request that asks to upgrade carries of its connection.
#[derive(Debug, Clone)]
pub struct Upgradable {
    /// The connection's place in the open-connection count and in a drain's wait, which
    /// its tunnel keeps after hyper lets go of the connection.
    pub hold: Hold,
    /// The connection's framing watcher, stopped when the upgrade is agreed: what
    /// follows the 101 is the tunnel's, not requests.
    pub framing: Arc<crate::framing::Framing>,
}

/// Something whose drop ends a count and a drain's wait (see [`Arrival::connection`]).
pub type Hold = Arc<dyn std::any::Any + Send + Sync>;

/// A client's upgrade, once the upstream agrees: its side of the tunnel, and its
/// connection's count (and a drain's wait for it), kept open as long as the tunnel is.
struct ClientUpgrade {
    on: hyper::upgrade::OnUpgrade,
    connection: Option<Upgradable>,
}

/// A request sent over a fast pool, as its wait for the response needs it.
struct Sent {
    ex: Exchange,
    route: usize,
    parts: http::request::Parts,
    /// The request body's state, when it has one.
    state: Option<Arc<RequestBodyState>>,
    client_version: Version,
}

type Answer = Result<Response<ObservedBody>, Infallible>;

pin_project_lite::pin_project! {
    /// A request's future from [`Proxy::handle`]: answered already, waiting on a fast
    /// pool, or waiting on hyper's client.
    #[project = RespondProj]
    pub enum Respond<F> {
        /// The proxy's own answer (taken at the first poll).
        Ready { resp: Option<Response<ObservedBody>> },
        /// Waiting on a fast pool.
        Fast { #[pin] fut: F },
        /// Waiting on hyper's client.
        Hyper { fut: Pin<Box<dyn Future<Output = Response<ObservedBody>> + Send>> },
    }
}

impl<F> Respond<F> {
    fn ready(resp: Response<ObservedBody>) -> Self {
        Respond::Ready { resp: Some(resp) }
    }
}

impl<F: Future<Output = Response<ObservedBody>>> Future for Respond<F> {
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        let resp = match self.project() {
            RespondProj::Ready { resp } => resp.take().expect("Respond polled after it answered"),
            RespondProj::Fast { fut } => ready!(fut.poll(cx)),
            RespondProj::Hyper { fut } => ready!(fut.as_mut().poll(cx)),
        };
        Poll::Ready(Ok(resp))
    }
}

/// A route ready to forward: its settings and its pooled upstream client.
struct Upstream {
    cfg: RouteConfig,
    /// One pooled client per worker thread: a worker only uses connections its own
    /// runtime drives, so no request waits on another thread's scheduler.
    clients: Box<[Client<Watching<HttpsConnector<HttpConnector>>, RequestBody>]>,
    identifier: Option<Identifier>,
    /// Its fast-path pools, when the route can take the fast path (see `fastpath`).
    fast: Option<FastRoute>,
}

/// The forwarding proxy shared by every connection.
pub struct Proxy {
    router: Router,
    upstreams: Vec<Upstream>,
    limits: ProxyConfig,
    observer: Arc<Observer>,
    /// Shared by every generation: a reload during the drain must not end it.
    draining: Arc<AtomicBool>,
}

thread_local! {
    /// The index of the worker thread this is (0 elsewhere).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as worker `index`, whose upstream pools it uses.
pub fn enter_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// The index of the worker thread this is (0 elsewhere).
pub(crate) fn worker() -> usize {
    WORKER.with(Cell::get)
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

impl Proxy {
    /// Builds the route table and one upstream client per route.
    pub fn new(config: &Config, observer: Arc<Observer>, draining: Arc<AtomicBool>) -> Proxy {
        // Consumer ids are salted per process, so they cannot be linked across restarts
        // or reversed with a dictionary by someone who only sees the ids — and only per
        // process: a reload keeps each consumer's id, and its tallies stay one.
        let salt = process_salt();
        let upstreams = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let opened = observer.metrics.route(i).upstream_connections.clone();
                let mut connector = HttpConnector::new();
                // The TLS layer on top decides per URI whether to wrap the stream.
                connector.enforce_http(false);
                connector.set_connect_timeout(Some(r.connect_timeout));
                connector.set_nodelay(true);
                connector.set_keepalive(Some(Duration::from_secs(60)));
                let tls = (*r.upstream_tls).clone();
                let clients = (0..config.proxy.workers)
                    .map(|_| {
                        Client::builder(TokioExecutor::new())
                            .pool_idle_timeout(r.idle_timeout)
                            .pool_timer(TokioTimer::new())
                            .pool_max_idle_per_host(1024)
                            // The client's own Host (from the absolute URI) only applies
                            // when the forwarder did not set one: the `upstream` policy.
                            .set_host(true)
                            .build(Watching::new(
                                HttpsConnectorBuilder::new()
                                    .with_tls_config(tls.clone())
                                    .https_or_http()
                                    .enable_http1()
                                    .wrap_connector(connector.clone()),
                                opened.clone(),
                            ))
                    })
                    .collect();
                Upstream {
                    cfg: r.clone(),
                    clients,
                    identifier: r.consumer.clone().map(|src| Identifier::new(src, salt)),
                    fast: config
                        .proxy
                        .fast_path
                        .then(|| FastRoute::new(r, config.proxy.workers, opened))
                        .flatten(),
                }
            })
            .collect();
        Proxy {
            router: Router::new(&config.routes),
            upstreams,
            limits: config.proxy.clone(),
            observer,
            draining,
        }
    }

    /// The observer this proxy reports to.
    pub fn observer(&self) -> &Arc<Observer> {
        &self.observer
    }

    /// From now on, new requests get 503 and connections close.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the proxy is draining.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The listener's limits.
    pub(crate) fn limits(&self) -> &ProxyConfig {
        &self.limits
    }

    /// The route a request goes to (`unmatched` if none).
    pub(crate) fn find_route(&self, host: Option<&str>, path: &str) -> usize {
        self.router
            .find(host, path)
            .unwrap_or_else(|| self.observer.metrics.unmatched())
    }

    /// A route's settings and fast-path pools, if it takes the fast path.
    pub(crate) fn fast_route(&self, route: usize) -> Option<(&RouteConfig, &FastRoute)> {
        let up = self.upstreams.get(route)?;
        Some((&up.cfg, up.fast.as_ref()?))
    }

    /// Closes every idle fast-path upstream connection, and each one given back from now
    /// on: this proxy's generation was replaced by a reload.
    pub(crate) fn retire_fast_pools(&self) {
        for fast in self.upstreams.iter().filter_map(|up| up.fast.as_ref()) {
            fast.retire();
        }
    }

    /// Closes this worker's stale idle fast-path upstream connections, every route.
    pub(crate) fn sweep_fast_pools(&self) {
        for up in &self.upstreams {
            if let Some(fast) = &up.fast {
                fast.sweep(up.cfg.idle_timeout);
            }
        }
    }

    /// How a route identifies consumers, if it does.
    pub(crate) fn identifier(&self, route: usize) -> Option<&Identifier> {
        self.upstreams.get(route)?.identifier.as_ref()
    }

    /// Serves one request. Everything up to sending it upstream happens now — routing,
    /// the start of its observation, the answers the proxy gives itself, the header
    /// rewrite — and the rest when the returned future is polled.
    pub fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        arrival: Arrival,
    ) -> Respond<impl Future<Output = Response<ObservedBody>> + Send + 'static> {
        // Phase 1: route — now, not at the first poll: hyper drops a request's future
        // unpolled when the client's FIN follows the request at once, and the exchange
        // must exist by then to count it (as a 499).
        let host = request_host(&req);
        let route = self.find_route(
            host.as_ref().and_then(|h| h.to_str().ok()),
            req.uri().path(),
        );
        let request_id = match req.headers().get(X_REQUEST_ID) {
            Some(v) if keeps_request_id(v.as_bytes()) => v.clone(),
            _ => next_request_id(),
        };
        let mut ex = Exchange::start(
            self.observer.clone(),
            route,
            req.method().clone(),
            req.uri().clone(),
            request_id,
            arrival.client,
        );
        let trusted = &self.limits.trusted_proxies;
        if !trusted.is_empty() {
            let lines = req.headers().get_all(X_FORWARDED_FOR).iter();
            ex.set_forwarded_for(trusted.client(arrival.client.ip(), lines.map(|v| v.as_bytes())));
        }
        self.prepare(req, ex, route, host, arrival)
    }

    /// Phases 2 and 3 up to the first await: what the proxy answers itself, then the
    /// request as the upstream gets it. Only what the wait needs goes into the future
    /// (hyper and tokio move it several times before its first poll: its size is paid
    /// per request).
    fn prepare(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        mut ex: Exchange,
        route: usize,
        host: Option<HeaderValue>,
        arrival: Arrival,
    ) -> Respond<impl Future<Output = Response<ObservedBody>> + Send + 'static> {
        let Arrival {
            client,
            overloaded,
            tls,
            defect,
            activity,
            connection,
        } = arrival;
        // Phase 2: what the proxy answers itself.
        if let Some(defect) = defect {
            return Respond::ready(local(ex, StatusCode::BAD_REQUEST, defect.reason()));
        }
        if let Some(why) = host_fault(&req) {
            return Respond::ready(local(ex, StatusCode::BAD_REQUEST, why));
        }
        if req.method() == Method::CONNECT {
            // A reverse proxy opens no tunnels (nginx 1.22 refuses CONNECT too, with a
            // 400; the method is the fault here, so 405). No `Allow`: which methods a
            // resource takes is the upstream's to say.
            return Respond::ready(local(
                ex,
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not supported: statuslens is a reverse proxy and opens no tunnels\n",
            ));
        }
        if self.draining.load(Ordering::Relaxed) {
            return Respond::ready(local(
                ex,
                StatusCode::SERVICE_UNAVAILABLE,
                "statuslens is shutting down; retry on another instance\n",
            ));
        }
        let (all, on_route) = ex.in_flight();
        let route_limit = self.upstreams.get(route).and_then(|u| u.cfg.max_in_flight);
        if overloaded
            || all > self.limits.max_in_flight as u64
            || route_limit.is_some_and(|l| on_route > l as u64)
        {
            return Respond::ready(local(
                ex,
                StatusCode::SERVICE_UNAVAILABLE,
                "statuslens is at its connection or in-flight limit; retry shortly\n",
            ));
        }
        if let Some(status) = self.check_limits(&req) {
            let why = match status {
                StatusCode::URI_TOO_LONG => "request target longer than proxy.max_uri_bytes\n",
                _ => "request headers exceed proxy.max_header_bytes or proxy.max_headers\n",
            };
            return Respond::ready(local(ex, status, why));
        }
        let Some(up) = self.upstreams.get(route) else {
            return Respond::ready(local(ex, StatusCode::NOT_FOUND, NOT_FOUND));
        };
        if let (Some(limit), Some(len)) = (up.cfg.max_body_bytes, content_length(req.headers())) {
            if len > limit {
                return Respond::ready(local(ex, StatusCode::PAYLOAD_TOO_LARGE, BODY_TOO_LARGE));
            }
        }

        // Phase 3: the request as the upstream gets it.
        let client_version = req.version();
        // An HTTP/1 body the upstream leaves unread is read to its end where the
        // connection would otherwise stay open (see `observe::Discard`). `activity` comes
        // only with such a body, so a bodyless request (most) looks up no field here.
        let discard = activity
            .filter(|_| !asks_close(req.headers()))
            .map(|activity| Discard {
                // hyper honours `Expect` from HTTP/1.1 clients only; an HTTP/1.0 one
                // sends its body regardless.
                expect: client_version == Version::HTTP_11
                    && req
                        .headers()
                        .get(header::EXPECT)
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue")),
                activity,
            });
        let upgrade = is_upgrade(req.headers()) && client_version == Version::HTTP_11;
        let client_upgrade = upgrade.then(|| ClientUpgrade {
            on: hyper::upgrade::on(&mut req),
            connection,
        });
        let (mut parts, body) = req.into_parts();
        // The host the request was routed by (and X-Forwarded-Host names): a target in
        // absolute form, or HTTP/2's :authority, wins over a Host field (RFC 9112
        // §3.2.2, RFC 9113 §8.3.1); the HTTP/1.1 upstream, and a consumer identified by
        // its Host, see it as Host.
        if parts.uri.authority().is_some() || !parts.headers.contains_key(header::HOST) {
            if let Some(h) = &host {
                parts.headers.insert(header::HOST, h.clone());
            }
        }
        if client_version == Version::HTTP_2 {
            join_cookies(&mut parts.headers);
        }
        // The consumer by the client's own fields, as the fast path sees them: before
        // X-Forwarded-For gains the client's address or hop-by-hop fields go.
        if let Some(id) = &up.identifier {
            ex.set_consumer(id.identify(&parts.headers, ex.client_ip()));
        }
        rewrite_request_headers(
            &mut parts.headers,
            upgrade,
            client,
            host.as_ref(),
            ex.request_id(),
            if tls { "https" } else { "http" },
        );
        if matches!(up.cfg.host_header, HostHeader::Upstream) {
            parts.headers.remove(header::HOST);
        }
        // The upstream speaks HTTP/1.1 whatever the client spoke (h2c included).
        parts.version = Version::HTTP_11;
        if up.fast.is_some() && fastclient::takes(&parts.method, &parts.headers, &body, upgrade) {
            let (body, state) = if http_body::Body::is_end_stream(&body) {
                (None, None)
            } else {
                let (body, state) = self.request_body(&mut ex, route, &up.cfg, body, discard);
                (Some(body), Some(state))
            };
            let sent = Sent {
                ex,
                route,
                parts,
                state,
                client_version,
            };
            return Respond::Fast {
                fut: self.forward_fast(sent, body),
            };
        }
        parts.uri = match upstream_uri(&up.cfg, &parts.uri) {
            Ok(u) => u,
            Err(_) => {
                return Respond::ready(local(
                    ex,
                    StatusCode::BAD_REQUEST,
                    "request target cannot be forwarded\n",
                ))
            }
        };
        let (body, state) = self.request_body(&mut ex, route, &up.cfg, body, discard);
        let upstream_req = Request::from_parts(parts, body);
        // hyper's client future is large and this path is the less common one: boxed, so
        // that the fast path's future does not carry its size.
        Respond::Hyper {
            fut: Box::pin(self.forward_hyper(
                ex,
                route,
                upstream_req,
                state,
                client_upgrade,
                client_version,
            )),
        }
    }

    /// Phases 3 and 4 over the route's fast pool (see `fastclient`).
    // Not an async fn: one keeps a second copy of its arguments in its future.
    #[allow(clippy::manual_async_fn)]
    fn forward_fast(
        self: Arc<Self>,
        mut sent: Sent,
        body: Option<RequestBody>,
    ) -> impl Future<Output = Response<ObservedBody>> + Send + 'static {
        async move {
            // Fields used in place: binding them to locals would copy them into a second
            // slot of the future.
            let up = &self.upstreams[sent.route];
            let send = fastclient::send(self.clone(), sent.route, &sent.parts, &mut sent.ex, body);
            let resp = match upstream_deadline(up.cfg.timeout, sent.state.as_deref(), send).await {
                Ok(Ok(resp)) => resp,
                Ok(Err((kind, detail))) => {
                    if let Some(fault) = sent.state.as_deref().and_then(client_body_fault) {
                        return fault.answer(sent.ex);
                    }
                    return failed(sent.ex, &up.cfg, kind, &detail);
                }
                Err(_elapsed) => return failed(sent.ex, &up.cfg, UpstreamErrorKind::Timeout, ""),
            };
            self.note_response(sent.route, &mut sent.ex, resp.status(), resp.headers());
            let (parts, body) = resp.into_parts();
            to_client(
                parts,
                ResponseInner::Pooled(body),
                sent.ex,
                sent.client_version,
                up.cfg.response_body_timeout,
            )
        }
    }

    /// Phases 3 and 4 over hyper's pooled client: TLS upstreams, upgrades, bodies of
    /// unknown length or over the fast pools' limit.
    async fn forward_hyper(
        self: Arc<Self>,
        mut ex: Exchange,
        route: usize,
        upstream_req: Request<RequestBody>,
        state: Arc<RequestBodyState>,
        client_upgrade: Option<ClientUpgrade>,
        client_version: Version,
    ) -> Response<ObservedBody> {
        let up = &self.upstreams[route];
        let client = &up.clients[WORKER.with(Cell::get) % up.clients.len()];
        // What a bodyless safe request needs to go once more, if the pooled
        // connection it goes on closes unanswered (`fastpath::may_resend`'s rule; hyper's
        // client cannot tell a reused connection after the fact, `reuse` does).
        let has_body = !http_body::Body::is_end_stream(upstream_req.body());
        let again = (client_upgrade.is_none()
            && fastpath::replayable(upstream_req.method(), has_body))
        .then(|| {
            let mut copy = Request::new(upstream_req.body().none_like());
            *copy.method_mut() = upstream_req.method().clone();
            *copy.uri_mut() = upstream_req.uri().clone();
            *copy.version_mut() = upstream_req.version();
            *copy.headers_mut() = upstream_req.headers().clone();
            copy
        });
        let resend = &mut ex;
        let sending = async move {
            let first = client.request(upstream_req).await;
            match (first, again) {
                (Err(e), Some(copy))
                    if reuse::turns_of(&e).is_some_and(|t| t.reused_and_unanswered()) =>
                {
                    resend.resent();
                    client.request(copy).await
                }
                (first, _) => first,
            }
        };
        let result = upstream_deadline(up.cfg.timeout, Some(&state), sending).await;
        let mut resp = match result {
            Ok(Ok(resp)) => resp,
            Ok(Err(err)) => {
                if let Some(fault) = client_body_fault(&state) {
                    return fault.answer(ex);
                }
                if find_cause::<BodyTooLarge>(&err).is_some() {
                    return local(ex, StatusCode::PAYLOAD_TOO_LARGE, BODY_TOO_LARGE);
                }
                let detail = match find_cause::<hyper::Error>(&err) {
                    // Past ~400 KiB, or more than 100 fields (the fast path's limits too).
                    Some(h) if h.is_parse_too_large() => {
                        format!("{}, or over 100 fields", fastpath::RESPONSE_HEAD_TOO_LARGE)
                    }
                    _ => error_chain(&err),
                };
                return failed(ex, &up.cfg, classify(&err), &detail);
            }
            Err(_elapsed) => return failed(ex, &up.cfg, UpstreamErrorKind::Timeout, ""),
        };
        // The fast path's rule. Not hyper's `http1_max_buf_size`: one read may bring more
        // than it, it also caps body reads and the write buffer, and it refuses less than
        // 8 KiB. hyper's own limit (~400 KiB) only bounds memory.
        let size = head_size(&resp);
        if size > up.cfg.max_response_header_bytes {
            let detail = format!("{} ({size} bytes)", fastpath::RESPONSE_HEAD_TOO_LARGE);
            return failed(ex, &up.cfg, UpstreamErrorKind::Protocol, &detail);
        }
        let mut codings = resp.headers().get_all(header::TRANSFER_ENCODING).iter();
        if let Some(first) = codings.next() {
            if !fastpath::chunked_alone(first.as_bytes()) || codings.next().is_some() {
                let detail = fastpath::UNKNOWN_TRANSFER_CODING;
                return failed(ex, &up.cfg, UpstreamErrorKind::Protocol, detail);
            }
        }

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS && client_upgrade.is_none() {
            // hyper's client takes a 101 to any request; the fast pools' rule.
            let detail = fastpath::UNASKED_SWITCH;
            return failed(ex, &up.cfg, UpstreamErrorKind::Protocol, detail);
        }

        // Phase 4: respond.
        self.note_response(route, &mut ex, resp.status(), resp.headers());
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                if let Some(c) = &client_upgrade.connection {
                    c.framing.tunnelled();
                }
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                let idle = up.cfg.tunnel_idle_timeout;
                tokio::spawn(tunnel(client_upgrade, upstream_upgrade, idle));
                let (mut parts, _) = resp.into_parts();
                // The hop's own fields stay with the hop, as on every other answer;
                // `Connection: upgrade` and `Upgrade` are what the 101 is.
                strip_hop_by_hop(&mut parts.headers, true);
                return Response::from_parts(
                    parts,
                    ObservedBody::new(ResponseInner::Local(None), ex),
                );
            }
        }
        if resp.status() == StatusCode::NO_CONTENT {
            // A 204 has none (RFC 9110 §8.6): hyper's HTTP/1 server drops it and the fast
            // pools never pass it, but its HTTP/2 server would send it on.
            resp.headers_mut().remove(header::CONTENT_LENGTH);
        } else {
            plain_content_length(resp.headers_mut());
        }
        let (parts, body) = resp.into_parts();
        to_client(
            parts,
            ResponseInner::Upstream(body),
            ex,
            client_version,
            up.cfg.response_body_timeout,
        )
    }

    /// The client's body as the upstream gets it: counted, limited, timed, and read to
    /// its end after the response per `discard`.
    fn request_body(
        &self,
        ex: &mut Exchange,
        route: usize,
        cfg: &RouteConfig,
        body: Incoming,
        discard: Option<Discard>,
    ) -> (RequestBody, Arc<RequestBodyState>) {
        let state = Arc::new(RequestBodyState::default());
        ex.track_request_body(state.clone());
        let counter = self.observer.metrics.route(route).request_bytes.clone();
        let body = RequestBody::new(
            body,
            state.clone(),
            counter,
            cfg.max_body_bytes,
            self.limits.body_read_timeout,
            discard,
        );
        (body, state)
    }

    /// Counts an upstream's response status and what its headers say.
    fn note_response(
        &self,
        route: usize,
        ex: &mut Exchange,
        status: StatusCode,
        headers: &HeaderMap,
    ) {
        ex.upstream_answered(status.as_u16());
        note_upstream_headers(&self.observer, route, ex, status.as_u16(), headers);
    }

    fn check_limits(&self, req: &Request<Incoming>) -> Option<StatusCode> {
        let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        if uri_len > self.limits.max_uri_bytes {
            return Some(StatusCode::URI_TOO_LONG);
        }
        let headers = req.headers();
        if headers.len() > self.limits.max_headers {
            return Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
        let size: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        (size > self.limits.max_header_bytes).then_some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
    }
}

/// How the client's own request body failed the exchange, whatever the upstream
/// client then reported.
enum BodyFault {
    /// It broke off (a hang-up, an HTTP/2 reset): the client's 499.
    Gone,
    /// It stalled (408) or outgrew the route's limit (413): the proxy's answer.
    Answer(StatusCode, &'static str),
}

impl BodyFault {
    fn answer(self, ex: Exchange) -> Response<ObservedBody> {
        match self {
            BodyFault::Answer(status, why) => local(ex, status, why),
            // The exchange stays the client's 499 (no upstream error, no 502 blamed on
            // the upstream); the response is for form's sake, the connection is going.
            BodyFault::Gone => {
                let mut resp = Response::new(ObservedBody::new(ResponseInner::Local(None), ex));
                *resp.status_mut() = StatusCode::BAD_REQUEST;
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                resp
            }
        }
    }
}

fn client_body_fault(state: &RequestBodyState) -> Option<BodyFault> {
    if state.client_gone.load(Ordering::Relaxed) {
        return Some(BodyFault::Gone);
    }
    if state.idle.load(Ordering::Relaxed) {
        return Some(BodyFault::Answer(StatusCode::REQUEST_TIMEOUT, BODY_STALLED));
    }
    if state.too_large.load(Ordering::Relaxed) {
        return Some(BodyFault::Answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            BODY_TOO_LARGE,
        ));
    }
    None
}

/// The 413's body.
const BODY_TOO_LARGE: &str = "request body larger than the route's max_body_bytes\n";

/// The 404's body: no route matches.
pub(crate) const NOT_FOUND: &str = "no statuslens route matches this request\n";
/// The 408's body: the client stopped sending its request body.
pub(crate) const BODY_STALLED: &str =
    "the request body stalled longer than proxy.body_read_timeout\n";

/// Records what an upstream's response headers say about its quota and `Retry-After`.
pub(crate) fn note_upstream_headers(
    observer: &Observer,
    route: usize,
    ex: &mut Exchange,
    status: u16,
    headers: &HeaderMap,
) {
    let now = crate::detect::unix_now();
    if let Some(q) = quota::parse(headers, now) {
        observer.quota(route, &q);
    }
    if status == 429 || status == 503 {
        let secs = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| quota::retry_after_secs(v, now));
        if let Some(secs) = secs {
            observer.retry_after(route, status, secs);
        }
        ex.set_retry_after(secs);
    }
}

/// Counts and logs a failed upstream exchange; returns what the client is told.
pub(crate) fn upstream_failure(
    ex: &Exchange,
    cfg: &RouteConfig,
    kind: UpstreamErrorKind,
    detail: &str,
) -> (StatusCode, &'static str) {
    ex.upstream_error(kind);
    let route = cfg.name.as_str();
    let upstream = cfg.upstream.as_str();
    if kind == UpstreamErrorKind::Timeout {
        let timeout_ms = cfg.timeout.as_millis() as u64;
        tracing::warn!(
            route,
            upstream,
            timeout_ms,
            "upstream did not answer in time"
        );
        return (
            StatusCode::GATEWAY_TIMEOUT,
            "the upstream did not answer in time\n",
        );
    }
    tracing::warn!(
        route,
        upstream,
        kind = kind.label(),
        error = detail,
        "upstream request failed"
    );
    let why = match kind {
        UpstreamErrorKind::Connect => "statuslens could not connect to the upstream\n",
        UpstreamErrorKind::Protocol => "the upstream sent an invalid HTTP response\n",
        _ => "the upstream closed the connection before responding\n",
    };
    (StatusCode::BAD_GATEWAY, why)
}

/// The client's response from an upstream's: hop-by-hop fields gone, the body observed.
fn to_client(
    mut parts: http::response::Parts,
    body: ResponseInner,
    ex: Exchange,
    client_version: Version,
    stall: Duration,
) -> Response<ObservedBody> {
    strip_hop_by_hop(&mut parts.headers, false);
    // The client hears its own protocol version: an HTTP/1.0 upstream must not turn
    // an HTTP/1.1 client's keep-alive connection into a one-shot one. An HTTP/1.0
    // client's answer goes to hyper as HTTP/1.1: hyper writes it as 1.0 itself, with
    // `Connection: keep-alive` when the client asked for that (one marked 1.0 here it
    // would close, the upstream's Connection field being gone).
    parts.version = match client_version {
        Version::HTTP_10 => Version::HTTP_11,
        v => v,
    };
    Response::from_parts(parts, ObservedBody::new(body, ex).stalls_after(stall))
}

/// Makes a repeated `Content-Length` ("5, 5", or the field twice) one plain number, as
/// the fast path does: hyper's client accepts the repetition when the numbers agree
/// (RFC 9110 §8.6), but its server would send the first field's text on as it is.
fn plain_content_length(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return;
    };
    if values.next().is_none() && !first.as_bytes().contains(&b',') {
        return;
    }
    // hyper's client has checked that every value is this one.
    let first = first.as_bytes().split(|&b| b == b',').next();
    if let Some(n) = first.and_then(|d| crate::fastpath::content_length(d.trim_ascii())) {
        headers.insert(header::CONTENT_LENGTH, n.into());
    }
}

/// The answer to a failed upstream exchange (502/504), counted and logged.
fn failed(
    ex: Exchange,
    cfg: &RouteConfig,
    kind: UpstreamErrorKind,
    detail: &str,
) -> Response<ObservedBody> {
    let (status, why) = upstream_failure(&ex, cfg, kind, detail);
    local(ex, status, why)
}

/// A response the proxy makes itself, counted with `source="proxy"`.
fn local(mut ex: Exchange, status: StatusCode, body: &'static str) -> Response<ObservedBody> {
    ex.respond(status.as_u16(), Source::Proxy);
    // hyper never polls the body of a HEAD answer: one left unread would leave the
    // exchange unfinished, counted as the client's 499. No body then, only its length.
    let head = ex.is_head();
    let inner = ResponseInner::Local((!head).then(|| Bytes::from_static(body.as_bytes())));
    let mut resp = Response::new(ObservedBody::new(inner, ex));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if head {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    // Shed the connection when the answer leaves it in doubt: overload and draining
    // (503), or a request body left unread or half-read (400, 408, 413).
    if matches!(status.as_u16(), 400 | 408 | 413 | 503) {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Copies bytes both ways once client and upstream have both switched protocols; the
/// client's connection counts as open, and a drain waits, until it ends — or until
/// nothing has crossed it either way for `idle` (a peer gone without a FIN, behind a
/// NAT that forgot it, would otherwise hold both sockets and a connection slot for good).
async fn tunnel(client: ClientUpgrade, upstream: hyper::upgrade::OnUpgrade, idle: Duration) {
    let ClientUpgrade {
        on: client,
        connection: _open,
    } = client;
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let moved = Arc::new(Moved::default());
    let base = tokio::time::Instant::now();
    let mut client = Stamped::new(TokioIo::new(client), moved.clone(), base);
    let mut upstream = Stamped::new(TokioIo::new(upstream), moved.clone(), base);
    let quiet = async {
        loop {
            let due = base + Duration::from_millis(moved.0.load(Ordering::Relaxed)) + idle;
            if tokio::time::Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    };
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = copied {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        }
        () = quiet => tracing::debug!(?idle, "upgraded connection idle: closed"),
    }
}

/// When bytes last crossed a tunnel, either way: milliseconds after its start.
#[derive(Default)]
struct Moved(AtomicU64);

pin_project_lite::pin_project! {
    /// One side of a tunnel; what is read from it or written to it stamps [`Moved`].
    struct Stamped<S> {
        #[pin]
        inner: S,
        moved: Arc<Moved>,
        base: tokio::time::Instant,
    }
}

impl<S> Stamped<S> {
    fn new(inner: S, moved: Arc<Moved>, base: tokio::time::Instant) -> Self {
        Stamped { inner, moved, base }
    }
}

impl<S: tokio::io::AsyncRead> tokio::io::AsyncRead for Stamped<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            let at = this.base.elapsed().as_millis().min(u64::MAX as u128) as u64;
            this.moved.0.store(at, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite> tokio::io::AsyncWrite for Stamped<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write(cx, buf);
        // A write that moves bytes is the tunnel in use too (a slow reader draining
        // what was read long ago).
        if matches!(polled, Poll::Ready(Ok(1..))) {
            let at = this.base.elapsed().as_millis().min(u64::MAX as u128) as u64;
            this.moved.0.store(at, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// The request's host: `:authority` for HTTP/2 (and absolute-form targets), else the
/// Host header — cloned as a header value, which shares the parsed bytes.
fn request_host<B>(req: &Request<B>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    }
}

/// Why a request's Host field makes it a 400 (RFC 9112 §3.2), if it does: missing from
/// an HTTP/1.1 request, given more than once, or not a valid host. Routed by one Host,
/// such a request could be acted on by the upstream under another.
fn host_fault<B>(req: &Request<B>) -> Option<&'static str> {
    // The authority of an absolute-form target or HTTP/2's `:authority` is what the
    // request is routed by and the upstream sees as Host: held to the same rule, which
    // refuses a userinfo part (`user@host`; RFC 9113 §8.3.1 forbids it outright).
    if let Some(a) = req.uri().authority() {
        if !valid_host(a.as_str().as_bytes()) {
            return Some("request target's authority is not a valid host[:port]\n");
        }
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if req.version() == Version::HTTP_11 => {
            Some("HTTP/1.1 request without a Host field\n")
        }
        (Some(_), Some(_)) => Some("request with more than one Host field\n"),
        (Some(h), None) if !valid_host(h.as_bytes()) => {
            Some("request Host field is not a valid host[:port]\n")
        }
        _ => None,
    }
}

/// Whether `value` may be a Host field: the bytes of host[:port] (RFC 3986 reg-name,
/// IPv4 and IP literals), checked as a set as Go's net/http does; empty is allowed (a
/// target without authority). No space, `/`, `@`, `?`, `#`, `\`, control or non-ASCII.
pub(crate) fn valid_host(value: &[u8]) -> bool {
    value.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b'-'
                    | b'.'
                    | b':'
                    | b';'
                    | b'='
                    | b'['
                    | b']'
                    | b'_'
                    | b'~'
            )
    })
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Whether the request asks to switch protocols — unless to h2c. A tunnel to the
/// upstream's own HTTP/2 would carry every later request on it past routing, limits
/// and counting ("h2c smuggling"); the offer is dropped with the other hop-by-hop
/// fields instead (as Envoy does) and the request goes as a plain one.
fn is_upgrade(headers: &HeaderMap) -> bool {
    let offers_h2c = || {
        headers
            .get_all(header::UPGRADE)
            .iter()
            .flat_map(tokens)
            .any(|p| p.eq_ignore_ascii_case("h2c"))
    };
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
        && !offers_h2c()
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers.get_all(header::CONNECTION).iter().flat_map(tokens)
}

/// The client's `Connection` asks to close after this request (hyper then closes).
fn asks_close(headers: &HeaderMap) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("close"))
}

/// The comma-separated tokens of a list value. Split as bytes, as the fast path splits
/// them: a value with obs-text (bytes past 0x7F, which hyper accepts) still yields its
/// plain tokens — through `to_str` it yielded none, and a field it named passed on —
/// and a token that is not text is no field name anyway.
fn tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .filter_map(|t| std::str::from_utf8(t).ok())
}

/// Whether a `Connection` token names a field to drop. RFC 9110 §7.6.1 drops the field
/// each connection option names, a field called `Close` beside `close` too (the name is
/// reserved for that reason, §16.3.2.2). The fast path asks the same, so both paths
/// drop the same fields.
///
/// Two tokens name none: `keep-alive` (nearly every upstream response says it), whose
/// field goes as hop-by-hop anyway, so nothing is looked for; and `host`. Host is never
/// hop-by-hop: a request must carry one (RFC 9112 §3.2), and dropping it let hyper's
/// client put the upstream's name in under `host_header = "preserve"` where the fast
/// path keeps the client's.
pub(crate) fn names_field(token: &[u8]) -> bool {
    !(token.eq_ignore_ascii_case(b"keep-alive") || token.eq_ignore_ascii_case(b"host"))
}

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1, including those `Connection` names.
/// For an upgrade, `Connection: upgrade` and `Upgrade` are kept so the upstream sees it.
/// Returns whether a `TE` field listed `trailers`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) -> bool {
    // One pass over the names (standard names compare as enum tags) finds which are
    // present: most requests carry none, most responses one (an upstream's
    // `Connection: keep-alive`), so nothing absent is looked up.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return false;
    }
    let has = |bit: u8| present & bit != 0;
    let te_trailers = has(TE_BIT)
        && headers
            .get_all(header::TE)
            .iter()
            .any(|v| lists_trailers(v.as_bytes()));
    let names_fields =
        |t: &str| names_field(t.as_bytes()) && !(keep_upgrade && t.eq_ignore_ascii_case("upgrade"));
    if has(CONNECTION_BIT) {
        // Owned copies of the values (shared bytes, not copied text) so the map can change
        // while their tokens are read, made only when some token names a field.
        let naming: Vec<HeaderValue> = if connection_tokens(headers).any(names_fields) {
            headers
                .get_all(header::CONNECTION)
                .iter()
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        headers.remove(header::CONNECTION);
        for token in naming.iter().flat_map(tokens).filter(|t| names_fields(t)) {
            // A name given as text is looked up without building a `HeaderName`; one
            // that is not a valid name is simply absent.
            headers.remove(token);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate().skip(2) {
        if has(1 << i) {
            headers.remove(name);
        }
    }
    // A message framed by Transfer-Encoding and carrying a Content-Length too was read by
    // its codings (RFC 9112 §6.3): the length describes nothing that is forwarded, and
    // sent on beside the re-framed body it would make the next hop read short.
    if has(TRANSFER_ENCODING_BIT) {
        headers.remove(header::CONTENT_LENGTH);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if has(UPGRADE_BIT) {
        headers.remove(header::UPGRADE);
    }
    te_trailers
}

/// The hop-by-hop fields: `Connection` and `Upgrade` first (handled apart), then those
/// always dropped. `Trailer` is not one (RFC 9110 §6.6.2): it announces the trailer
/// fields end to end, and hyper sends an HTTP/1.1 client only the trailer fields it
/// announces.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::UPGRADE,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];
/// `strip_hop_by_hop`'s bits for the fields it treats apart, by their place above.
const CONNECTION_BIT: u8 = 1;
const UPGRADE_BIT: u8 = 1 << 1;
const TE_BIT: u8 = 1 << 6;
const TRANSFER_ENCODING_BIT: u8 = 1 << 7;

/// Whether a `TE` value lists `trailers` (RFC 9110 §10.1.4).
pub fn lists_trailers(value: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| {
        let coding = t.split(|&b| b == b';').next().unwrap_or(t);
        coding.trim_ascii().eq_ignore_ascii_case(b"trailers")
    })
}

/// HTTP/2 clients may send each cookie as a field of its own (RFC 9113 §8.2.3, for
/// HPACK's sake); before HTTP/1.1 they MUST be one line joined with "; " — many
/// servers read only the first `Cookie` line.
fn join_cookies(headers: &mut HeaderMap) {
    let mut all = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (all.next(), all.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

fn rewrite_request_headers(
    headers: &mut HeaderMap,
    upgrade: bool,
    client: SocketAddr,
    host: Option<&HeaderValue>,
    request_id: &HeaderValue,
    proto: &'static str,
) {
    // A client that accepts trailers gets them through statuslens (every path forwards
    // them), so the upstream is told so, as the client told statuslens: an upstream that
    // sends trailers only when asked answers as it would answer the client directly.
    if strip_hop_by_hop(headers, upgrade) {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // statuslens streams the body as soon as the client sends it (hyper answers the
    // client's 100-continue when the upstream starts reading), so the upstream must not
    // wait for a second 100-continue of its own.
    headers.remove(header::EXPECT);
    append(headers, X_FORWARDED_FOR, ip_value(client.ip()));
    append(headers, X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(h) = host {
        append(headers, X_FORWARDED_HOST, h.clone());
    }
    headers.insert(X_REQUEST_ID, request_id.clone());
}

/// Runs `fut` (an exchange with the upstream) for at most `timeout` of the upstream's
/// time: time its request body spent waiting for the client (`body`) does not count. A
/// slow but steady upload is no upstream timeout, and a client that stalls mid-body
/// meets `body_read_timeout` (408) first, not this clock (504 blamed on the upstream).
pub(crate) fn upstream_deadline<F: Future>(
    timeout: Duration,
    body: Option<&RequestBodyState>,
    fut: F,
) -> UpstreamDeadline<'_, F> {
    let start = tokio::time::Instant::now();
    UpstreamDeadline {
        fut,
        sleep: tokio::time::sleep_until(start + timeout),
        start,
        timeout,
        body,
    }
}

pin_project_lite::pin_project! {
    /// [`upstream_deadline`]'s future. A struct, not an async fn: an async fn's future
    /// keeps its argument and the pinned copy of it both, and this one wraps the send of
    /// every request hyper's server takes (the fast pools' future was 632 bytes larger,
    /// moved by hyper and tokio before its first poll).
    pub(crate) struct UpstreamDeadline<'a, F> {
        #[pin]
        fut: F,
        #[pin]
        sleep: tokio::time::Sleep,
        start: tokio::time::Instant,
        timeout: Duration,
        body: Option<&'a RequestBodyState>,
    }
}

impl<F: Future> Future for UpstreamDeadline<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The exchange first: an answer that is ready when the clock runs out counts.
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        loop {
            // Outside tokio's task budget, as `timeout_at` polls its clock: an exchange
            // that used the budget up (reads of a stream of 1xx heads) cannot keep the
            // clock from being seen.
            ready!(std::pin::pin!(tokio::task::unconstrained(this.sleep.as_mut())).poll(cx));
            let now = tokio::time::Instant::now();
            let waited = this
                .body
                .map_or(Duration::ZERO, RequestBodyState::client_waited);
            let due = *this.start + *this.timeout + waited;
            if due <= now {
                return Poll::Ready(Err(Elapsed));
            }
            // During a wait for the client `due` moves with the clock: a wait that began
            // with little of the upstream's time left would wake this every millisecond.
            // At most 20 wake-ups a second, and at most 50 ms past the upstream's time.
            let next = due.max(now + (*this.timeout).min(Duration::from_millis(50)));
            this.sleep.as_mut().reset(next);
        }
    }
}

/// The upstream used up its time ([`upstream_deadline`]).
#[derive(Debug)]
pub(crate) struct Elapsed;

/// Appends `value` to a comma-separated list header, as proxies in a chain do: one
/// line holding every earlier line's values in order (a list may arrive as several
/// lines, RFC 9110 §5.3), then `value`; when the header is absent the value goes in as
/// it is, without a copy.
fn append(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    // One hash of the name: most requests carry none of these fields yet.
    let mut entry = match headers.entry(name) {
        http::header::Entry::Vacant(v) => {
            v.insert(value);
            return;
        }
        http::header::Entry::Occupied(o) => o,
    };
    let mut prev = entry.iter().filter(|v| !v.is_empty()).peekable();
    let joined = if prev.peek().is_none() {
        value
    } else {
        let mut bytes = Vec::with_capacity(64);
        for v in prev {
            bytes.extend_from_slice(v.as_bytes());
            bytes.extend_from_slice(b", ");
        }
        bytes.extend_from_slice(value.as_bytes());
        match HeaderValue::from_bytes(&bytes) {
            Ok(v) => v,
            Err(_) => return,
        }
    };
    entry.insert(joined);
}

/// A client IP as a header value, formatted on the stack (one copy, no String).
fn ip_value(ip: std::net::IpAddr) -> HeaderValue {
    HeaderValue::from_bytes(crate::iptext::IpText::ip(ip).as_bytes())
        .expect("an IP address is a valid header value")
}

fn upstream_uri(route: &RouteConfig, uri: &Uri) -> Result<Uri, http::Error> {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let pq = if route.base_path.is_empty() {
        pq.to_string()
    } else {
        format!("{}{}", route.base_path, pq)
    };
    Uri::builder()
        .scheme(route.scheme.clone())
        .authority(route.authority.clone())
        .path_and_query(pq)
        .build()
}

fn find_cause<'a, E: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

/// A response head's size as HTTP/1.1 carries it: status line, fields, blank line. The
/// parser keeps no whitespace around values: each field is taken as `name: value`, so
/// an upstream that writes `name:value` is counted one byte more per field (and one
/// with wider spacing less) than the fast path, which counts the bytes as sent.
fn head_size<B>(resp: &Response<B>) -> usize {
    let reason = match resp.extensions().get::<hyper::ext::ReasonPhrase>() {
        Some(r) => r.as_bytes().len(),
        None => resp.status().canonical_reason().map_or(0, str::len),
    };
    let fields: usize = resp
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    "HTTP/1.1 200 \r\n".len() + reason + fields + 2
}

/// Maps a client error onto the `kind` label.
fn classify(err: &hyper_util::client::legacy::Error) -> UpstreamErrorKind {
    if err.is_connect() {
        return UpstreamErrorKind::Connect;
    }
    if let Some(h) = find_cause::<hyper::Error>(err) {
        if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
            return UpstreamErrorKind::Protocol;
        }
    }
    UpstreamErrorKind::Reset
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

/// 128 bits from the standard library's per-process random hasher keys.
fn process_salt() -> [u64; 2] {
    use std::hash::{BuildHasher, Hasher};
    static SALT: std::sync::OnceLock<[u64; 2]> = std::sync::OnceLock::new();
    *SALT.get_or_init(|| {
        let mut out = [0u64; 2];
        for (i, v) in out.iter_mut().enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            *v = h.finish();
        }
        out
    })
}

/// Whether a client's `X-Request-Id` is kept: 1 to 200 bytes (a huge one would ride
/// along in every log line); otherwise statuslens makes one.
pub(crate) fn keeps_request_id(id: &[u8]) -> bool {
    (1..=200).contains(&id.len())
}

/// A process-unique request id: a per-process random prefix and a counter.
pub(crate) fn next_request_id() -> HeaderValue {
    // Each thread numbers from its own block of the counter: one shared atomic per
    // 4,096 ids, not a cache line bounced between the workers on every request.
    const BLOCK: u64 = 4096;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static NEXT: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let prefix = *PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        h.finish() as u32
    });
    let n = NEXT.with(|next| {
        let (mut n, mut end) = next.get();
        if n == end {
            n = COUNTER.fetch_add(BLOCK, Ordering::Relaxed);
            end = n + BLOCK;
        }
        next.set((n + 1, end));
        n
    });
    // 8 hex digits of prefix, 12 of counter, written without a format string.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 20];
    for (i, b) in buf[..8].iter_mut().enumerate() {
        *b = HEX[(prefix >> (28 - 4 * i) & 0xf) as usize];
    }
    for (i, b) in buf[8..].iter_mut().enumerate() {
        *b = HEX[(n >> (44 - 4 * i) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_tokens_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Custom-Hop"),
        );
        h.insert("x-custom-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        h.insert(header::TRAILER, HeaderValue::from_static("x-checksum"));
        assert!(strip_hop_by_hop(&mut h, false), "TE listed trailers");
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-end-to-end"], "kept");
        assert_eq!(h[header::TRAILER], "x-checksum");
    }

    #[test]
    fn hop_by_hop_bits_name_their_fields() {
        let at = |bit: u8| &HOP_BY_HOP[bit.trailing_zeros() as usize];
        assert_eq!(at(CONNECTION_BIT), header::CONNECTION);
        assert_eq!(at(UPGRADE_BIT), header::UPGRADE);
        assert_eq!(at(TE_BIT), header::TE);
        assert_eq!(at(TRANSFER_ENCODING_BIT), header::TRANSFER_ENCODING);
    }

    #[test]
    fn a_length_beside_transfer_encoding_goes_with_it() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("4"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        // Alone, a length is the message's framing and stays.
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("4"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h[header::CONTENT_LENGTH], "4");
    }

    #[test]
    fn every_connection_line_is_honoured() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("x-a, Upgrade"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("X-B,,bad name"),
        );
        for name in ["x-a", "x-b", "x-c"] {
            h.insert(name, HeaderValue::from_static("1"));
        }
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!strip_hop_by_hop(&mut h, true));
        let left: Vec<_> = h
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            left,
            [
                ("upgrade", "websocket"),
                ("x-c", "1"),
                ("connection", "upgrade")
            ]
        );
        // Without the upgrade, Upgrade goes too.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn te_trailers_is_passed_on_and_other_codings_are_not() {
        for (te, passed) in [
            ("trailers", Some("trailers")),
            ("gzip;q=0.5, Trailers", Some("trailers")),
            ("deflate", None),
            ("trailersx, x-trailers", None),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::TE, HeaderValue::from_str(te).unwrap());
            h.insert(header::CONNECTION, HeaderValue::from_static("te"));
            let id = HeaderValue::from_static("abc");
            let peer = "127.0.0.9:5000".parse().unwrap();
            rewrite_request_headers(&mut h, false, peer, None, &id, "http");
            assert_eq!(
                h.get(header::TE).map(|v| v.to_str().unwrap()),
                passed,
                "{te}"
            );
            assert!(h.get(header::CONNECTION).is_none());
        }
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        let id = HeaderValue::from_static("abc");
        rewrite_request_headers(
            &mut h,
            false,
            "127.0.0.9:5000".parse().unwrap(),
            Some(&HeaderValue::from_static("api.test")),
            &id,
            "http",
        );
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1, 127.0.0.9");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "api.test");
        assert_eq!(h[X_REQUEST_ID], "abc");
    }

    #[test]
    fn request_ids_are_unique() {
        // Across threads, and across each thread's blocks of the counter.
        let ids: Vec<Vec<HeaderValue>> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..3)
                .map(|_| s.spawn(|| (0..10_000).map(|_| next_request_id()).collect()))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let all: std::collections::HashSet<_> = ids.iter().flatten().collect();
        assert_eq!(all.len(), 30_000);
        assert!(all.iter().all(|id| id.len() == 20));
    }
}

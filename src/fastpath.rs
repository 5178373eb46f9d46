//! The HTTP/1 fast path: plain HTTP/1.1 requests forwarded without hyper.
//!
//! Most traffic through an API monitor is small requests (GETs, JSON POSTs with a
//! `Content-Length`) on keep-alive connections, and for those hyper's generality is most of the proxy's CPU:
//! a dispatch task and channels per upstream connection, a body channel per response, a
//! pool behind a lock, header maps built and taken apart on both sides. Here one task
//! per client connection parses the head in place (httparse), writes the rewritten head
//! to an upstream connection from its worker's own pool, parses the response head and
//! streams the body straight back — the way nginx does it.
//!
//! The fast path only takes what it fully understands: an HTTP/1.1 request on a plain
//! connection, its head complete in the first read, no body or one plain
//! `Content-Length` body of up to 64 KiB ([`MAX_BODY`]), no upgrade, `Expect` or anything a limit or a framing check
//! would refuse, on a route with a plain-HTTP upstream (or on none: the 404). Anything
//! else — and everything after it on that connection — goes to hyper's path
//! ([`Handoff`]), with the bytes already read replayed first, so HTTP/2, chunked
//! bodies, TLS, smuggling probes and oversized heads keep their one tested treatment. Each
//! request is an [`Exchange`] as on hyper's path: counted once, logged, fed to detection.

use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::{HostHeader, RouteConfig};
use crate::forward::{self, Proxy};
use crate::generation::Live;
use crate::iptext::IpText;
use crate::isolate;
use crate::metrics::{Source, UpstreamErrorKind};
use crate::observe::{Exchange, RequestBodyState};
use crate::send;

/// Client read buffer; a head that does not fit in the first read goes to hyper.
pub const CLIENT_BUF: usize = 8 * 1024;
/// What a client connection's outgoing buffer starts with, and the most it keeps between
/// requests: a small body's head and body go out in one write (up to 16 KiB), a large
/// response head too, but an idle connection should not hold that (a realloc for the
/// next such response costs less than 16 KiB on each of 10,000 idle connections).
/// 8 KiB keeps what a 4 KiB body with its head, or a cookie-heavy request head, needs.
const OUT_BUF: usize = 1024;
const OUT_KEPT: usize = 8 * 1024;
/// Upstream read buffer, kept with its pooled connection.
pub(crate) const UPSTREAM_BUF: usize = 16 * 1024;
/// The log's word for a response head over `max_response_header_bytes` (nginx: "upstream
/// sent too big header").
pub(crate) const RESPONSE_HEAD_TOO_LARGE: &str = "response head over max_response_header_bytes";
/// What the log says of a response framed by a coding other than chunked alone (nginx:
/// "upstream sent unknown Transfer-Encoding"): passing its body on without the coding
/// would hand the client bytes it cannot read, so it is a 502.
pub(crate) const UNKNOWN_TRANSFER_CODING: &str =
    "response has a Transfer-Encoding other than chunked alone";
/// What the log says of a 101 to a request that asked for no upgrade: nothing is there
/// to switch to (and HTTP/2 has no 101 at all), so it is a 502.
pub(crate) const UNASKED_SWITCH: &str =
    "101 Switching Protocols to a request that asked for no upgrade";
/// Largest upstream read buffer while a long body streams.
const MAX_STREAM_BUF: usize = 64 * 1024;
/// Most request headers parsed here (more: hyper's path, which answers 431 when needed).
const MAX_REQUEST_HEADERS: usize = 100;
/// Most response headers accepted, as hyper's client.
const MAX_RESPONSE_HEADERS: usize = 100;
/// Largest request body forwarded on the fast path (and by `fastclient`). A body is
/// sent whole before the response is read, which an upstream that answers while it
/// reads (an echo) can only follow while its answer fits the socket buffers — with a
/// 48 MiB echo both would stall; larger bodies go to hyper, which streams both ways at
/// once.
pub const MAX_BODY: u64 = 64 * 1024;
/// Idle upstream connections kept per route and worker.
const MAX_IDLE: usize = 1024;

/// A connection the fast path gives up: what hyper serves next, bytes already read first.
pub type Handoff = Replay<TcpStream>;

/// What a route needs to be forwarded here: where to connect and a pool per worker.
pub struct FastRoute {
    /// `host:port` to connect to (port 80 when the URL has none).
    connect_to: String,
    /// The Host header the upstream gets under the `upstream` policy (as hyper's client
    /// writes it: the port only when it is not the scheme's default).
    pub(crate) host: Vec<u8>,
    /// Idle connections, one pool per worker thread: a worker only ever touches its
    /// own, so the lock is never contended (and a connection stays on the runtime whose
    /// reactor it is registered with).
    pools: Box<[Mutex<VecDeque<Idle>>]>,
    /// Its generation was replaced: connections given back are closed, not pooled.
    retired: AtomicBool,
    /// Counts the connections opened (the route's `statuslens_upstream_connections_total`).
    opened: IntCounter,
}

/// A pooled upstream connection with its read buffer.
pub(crate) struct UpConn {
    pub(crate) io: TcpStream,
    pub(crate) buf: Vec<u8>,
}

struct Idle {
    conn: UpConn,
    since: Instant,
}

impl FastRoute {
    /// The fast-path settings of a route, if its upstream is plain HTTP.
    pub fn new(route: &RouteConfig, workers: usize, opened: IntCounter) -> Option<FastRoute> {
        if route.scheme != http::uri::Scheme::HTTP {
            return None;
        }
        let host = route.authority.host();
        let port = route.authority.port_u16();
        let connect_to = format!("{}:{}", host, port.unwrap_or(80));
        let host = match port {
            Some(p) if p != 80 => format!("{host}:{p}"),
            _ => host.to_string(),
        };
        Some(FastRoute {
            connect_to,
            host: host.into_bytes(),
            pools: (0..workers.max(1))
                .map(|_| Mutex::new(VecDeque::new()))
                .collect(),
            retired: AtomicBool::new(false),
            opened,
        })
    }

    fn pool(&self) -> &Mutex<VecDeque<Idle>> {
        &self.pools[forward::worker() % self.pools.len()]
    }

    /// An idle connection that still looks usable, if the pool has one.
    pub(crate) fn checkout(&self, idle_timeout: Duration) -> Option<UpConn> {
        let mut pool = self.pool().lock().unwrap_or_else(|e| e.into_inner());
        while let Some(idle) = pool.pop_back() {
            if idle.since.elapsed() > idle_timeout {
                // The newest is too old, so all are.
                pool.clear();
                return None;
            }
            // Idle connections have nothing to say: readable means closed (or broken).
            // tokio answers from its readiness cache, without a syscall, when quiet.
            match idle.conn.io.try_read(&mut [0u8; 1]) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Some(idle.conn),
                _ => continue,
            }
        }
        None
    }

    /// Closes every idle connection, of every worker, and each one given back from now on.
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        for pool in self.pools.iter() {
            // Closed here, on the reloading thread (tokio deregisters a socket from its
            // worker's reactor from any thread), after the lock: a worker's checkout
            // does not wait on the closing.
            let idle = std::mem::take(&mut *pool.lock().unwrap_or_else(|e| e.into_inner()));
            drop(idle);
        }
    }

    /// Closes this worker's idle connections that outlived `idle_timeout` or that the
    /// upstream closed, so none lingers (in CLOSE_WAIT) until the pool is next used.
    pub(crate) fn sweep(&self, idle_timeout: Duration) {
        let mut pool = self.pool().lock().unwrap_or_else(|e| e.into_inner());
        pool.retain(|idle| {
            idle.since.elapsed() <= idle_timeout
                && matches!(idle.conn.io.try_read(&mut [0u8; 1]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock)
        });
    }

    pub(crate) fn checkin(&self, mut conn: UpConn, idle_timeout: Duration) {
        if conn.buf.capacity() > UPSTREAM_BUF {
            // Idle connections hold the usual buffer, not one a long response grew.
            conn.buf = Vec::with_capacity(UPSTREAM_BUF);
        }
        let mut pool = self.pool().lock().unwrap_or_else(|e| e.into_inner());
        // Read under the lock `retire` empties each pool with after setting it: a
        // connection is either seen retired here or pooled before the emptying.
        if self.retired.load(Ordering::Relaxed) {
            return;
        }
        while pool
            .front()
            .is_some_and(|i| i.since.elapsed() > idle_timeout)
        {
            pool.pop_front();
        }
        if pool.len() < MAX_IDLE {
            pool.push_back(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    pub(crate) async fn connect(&self, timeout: Duration) -> std::io::Result<UpConn> {
        let attempt = async {
            let mut last = None;
            for addr in tokio::net::lookup_host(self.connect_to.as_str()).await? {
                match TcpStream::connect(addr).await {
                    Ok(io) => return Ok(io),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                std::io::Error::new(ErrorKind::NotFound, "the upstream host has no address")
            }))
        };
        let io = tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| std::io::Error::new(ErrorKind::TimedOut, "connect timed out"))??;
        io.set_nodelay(true)?;
        // As hyper's connector: notice a peer that vanished without a FIN.
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        socket2::SockRef::from(&io).set_tcp_keepalive(&keepalive)?;
        self.opened.inc();
        Ok(UpConn {
            io,
            buf: Vec::with_capacity(UPSTREAM_BUF),
        })
    }
}

/// Runs on each worker: once a second, sweeps the worker's upstream pools of the
/// current generation (see `FastRoute::sweep`).
pub async fn sweep_pools(live: Arc<Live>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        live.load().proxy.sweep_fast_pools();
    }
}

/// One client connection on the fast path.
struct Client {
    io: TcpStream,
    peer: SocketAddr,
    /// Bytes read and not yet consumed (the next request head, pipelined ones after it).
    buf: Vec<u8>,
    /// The head being written (upstream request, then client response).
    out: Vec<u8>,
    /// Some bytes of the current response went out (a panic must not add a second head).
    wrote: bool,
    /// `proxy.send_timeout`: how long a write may wait for a client that takes nothing.
    send: Duration,
    /// Bytes of the request body still to come when its answer went out without them
    /// (see [`linger`]).
    owed: u64,
}

/// Serves `io` on the fast path until it closes (None) or a request needs hyper; `early`
/// holds bytes of it already read (past a PROXY protocol header).
pub async fn serve(
    io: TcpStream,
    peer: SocketAddr,
    early: Vec<u8>,
    live: Arc<Live>,
    mut stop: watch::Receiver<bool>,
) -> Option<Handoff> {
    let mut buf = early;
    buf.reserve(CLIENT_BUF.saturating_sub(buf.len()));
    let mut c = Client {
        io,
        peer,
        buf,
        out: Vec::with_capacity(OUT_BUF),
        wrote: false,
        send: live.load().config.proxy.send_timeout,
        owed: 0,
    };
    // One timer for the connection's waits between requests, moved on at each: tokio
    // extends a later deadline in place, where a timeout per wait put an entry into the
    // timer wheel and took it out again under the driver's lock, every request.
    let mut between = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    // And one for the upstream's deadline in each request, apart: each timer then moves
    // later, in place, request after request on one route (one timer for both would
    // move earlier at every request, which takes the wheel's lock again).
    let mut clock = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    loop {
        if c.buf.is_empty() {
            // An idle connection holds the usual buffers, not ones a large head, request
            // body or response grew (64 KiB each, for as long as a keep-alive lasts).
            if c.out.capacity() > OUT_KEPT {
                c.out = Vec::with_capacity(OUT_BUF);
            }
            if c.buf.capacity() > 2 * CLIENT_BUF {
                c.buf = Vec::with_capacity(CLIENT_BUF);
            }
            // Waiting for a request: bounded like hyper's head read, which also starts
            // while the connection is idle; a drain closes idle connections at once.
            let idle = live.load().config.proxy.header_read_timeout;
            between.as_mut().reset(tokio::time::Instant::now() + idle);
            tokio::select! {
                // A request that came as the clock ran out is read, as the timeout that
                // polled its read first did.
                biased;
                read = c.io.read_buf(&mut c.buf) => match read {
                    Ok(n) if n > 0 => {}
                    _ => return None,
                },
                () = &mut between => return None,
                _ = stop.wait_for(|s| *s) => return None,
            }
        }
        let proxy = live.load().proxy.clone();
        c.wrote = false;
        c.owed = 0;
        let before = isolate::failures();
        let planned = match isolate::catch("request handler", || plan(&proxy, &mut c)) {
            Some(Some(planned)) => planned,
            Some(None) => return Some(Replay::new(std::mem::take(&mut c.buf), c.io)),
            None => {
                // An exchange already started counted itself as the panic unwound.
                if isolate::failures() == before {
                    isolate::count_unrouted(proxy.observer(), method_of(&c.buf));
                }
                internal_error(&mut c).await;
                return None;
            }
        };
        match (Caught {
            inner: Some(forward_one(&proxy, &mut c, planned, clock.as_mut())),
        })
        .await
        {
            Some(Next::Keep) if !proxy.is_draining() => {}
            Some(_) => {
                linger(&mut c, &mut stop).await;
                return None;
            }
            None => {
                internal_error(&mut c).await;
                return None;
            }
        }
    }
}

/// The method label index of the request at the front of `buf`.
fn method_of(buf: &[u8]) -> usize {
    let token = buf.split(|&b| b == b' ').next().unwrap_or(b"");
    Method::from_bytes(token).map_or(9, |m| crate::metrics::method_index(&m))
}

/// Answers a request whose handling panicked (already counted as a 500) with 500, if
/// nothing of its response went out yet; the connection closes after it.
async fn internal_error(c: &mut Client) {
    if c.wrote {
        return;
    }
    let body = isolate::INTERNAL_ERROR_BODY;
    c.out.clear();
    local_head(
        &mut c.out,
        StatusCode::INTERNAL_SERVER_ERROR,
        body.len(),
        true,
    );
    c.out.extend_from_slice(body);
    let _ = send::write_all(&c.io, &c.out, c.send).await;
}

/// After a response: go on with the connection or close it.
enum Next {
    Keep,
    Close,
}

/// A request the fast path takes, its upstream head already written to `Client::out`.
struct Planned {
    route: usize,
    ex: Exchange,
    head_only: bool,
    client_close: bool,
    /// The request body's length (`Content-Length`; 0 without one).
    body: u64,
    /// It may be sent twice (see `may_resend`).
    replayable: bool,
    /// No route matches: answered 404 here.
    unmatched: bool,
    /// The client's `TE` lists `trailers`: without it hyper's path sends none, nor
    /// does this one.
    te_trailers: bool,
}

/// The request at the front of `c.buf`, if the fast path takes it: routed, its exchange
/// started, its upstream head in `c.out` and its bytes consumed. None leaves `c.buf`
/// untouched for hyper.
fn plan(proxy: &Arc<Proxy>, c: &mut Client) -> Option<Planned> {
    let limits = proxy.limits();
    // Slots left uninitialised: filling 100 of them costs more than parsing a small head.
    let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_REQUEST_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(&c.buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let target = req.path?;
    let method = req.method?;
    if req.version != Some(1)
        || method == "CONNECT"
        || !target.starts_with('/')
        || target.len() > limits.max_uri_bytes
        || req.headers.len() > limits.max_headers
        || has_bare_lf(&c.buf[..head_len])
        || proxy.is_draining()
    {
        return None;
    }

    let mut host = None;
    let mut request_id = None;
    let mut te_trailers = false;
    let mut client_close = false;
    let mut body = None;
    let mut named = Named::default();
    let mut size = 0;
    let mut fields = [Field::Other; MAX_REQUEST_HEADERS];
    for (h, field) in req.headers.iter().zip(fields.iter_mut()) {
        size += h.name.len() + h.value.len() + 4;
        *field = Field::of(h.name.as_bytes());
        match field {
            Field::Other | Field::HopByHop | Field::Date => {}
            // One plain decimal Content-Length is a body the fast path streams; a
            // second one, a list, or Transfer-Encoding is hyper's (and the watcher's).
            Field::Framing if h.name.len() == 14 && body.is_none() => {
                body = Some(content_length(h.value)?);
            }
            Field::Framing | Field::Upgrade | Field::Expect => return None,
            Field::Connection => {
                if !named.add(h.value) {
                    return None;
                }
                for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    client_close |= token.eq_ignore_ascii_case(b"close");
                }
            }
            Field::Host => {
                if host.replace(h.value).is_some() {
                    return None;
                }
            }
            // Appended to below, every line of them.
            Field::ForwardedFor | Field::ForwardedProto | Field::ForwardedHost => {}
            Field::RequestId => _ = request_id.get_or_insert(h.value),
            Field::Te => te_trailers |= forward::lists_trailers(h.value),
        }
    }
    // A missing or invalid Host is a 400 (RFC 9112 §3.2): hyper's path answers it.
    if size > limits.max_header_bytes || !host.is_some_and(forward::valid_host) {
        return None;
    }
    let host_str = match host {
        Some(h) => Some(std::str::from_utf8(h).ok()?),
        None => None,
    };
    // Routed by the path the upstream will read: the `Uri`'s, which a fragment (no
    // part of a request target, RFC 9112 §3.2) does not reach, as on hyper's path.
    let uri = Uri::from_maybe_shared(Bytes::copy_from_slice(target.as_bytes())).ok()?;
    let route = proxy.find_route(host_str, uri.path());
    let observer = proxy.observer();
    let unmatched = route == observer.metrics.unmatched();
    let forwarding = proxy.fast_route(route);
    // The proxy's own answers stay hyper's, except the 404 for a bodiless request (a
    // body left unread would need the connection closed, as hyper's path does).
    if forwarding.is_none() && !(unmatched && body.unwrap_or(0) == 0) {
        return None;
    }
    let in_flight = observer
        .in_flight
        .load(std::sync::atomic::Ordering::Relaxed);
    if in_flight >= limits.max_in_flight as u64 {
        return None;
    }
    if let Some((cfg, _)) = forwarding {
        if cfg
            .max_in_flight
            .is_some_and(|l| observer.metrics.route(route).in_flight.get() >= l as i64)
            || cfg
                .max_body_bytes
                .is_some_and(|l| body.is_some_and(|n| n > l))
            || body.is_some_and(|n| n > MAX_BODY)
        {
            return None;
        }
    }
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let request_id = match request_id {
        Some(v) if forward::keeps_request_id(v) => HeaderValue::from_bytes(v).ok()?,
        _ => forward::next_request_id(),
    };
    // Read only when load balancers are trusted: otherwise one branch per request.
    let forwarded_for = if limits.trusted_proxies.is_empty() {
        None
    } else {
        let lines = req.headers.iter().zip(fields.iter());
        let lines = lines.filter(|(_, f)| **f == Field::ForwardedFor);
        limits
            .trusted_proxies
            .client(c.peer.ip(), lines.map(|(h, _)| h.value))
    };
    let consumer = match proxy.identifier(route) {
        Some(id) => {
            let mut map = HeaderMap::with_capacity(req.headers.len());
            for h in req.headers.iter() {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(h.name.as_bytes()),
                    HeaderValue::from_bytes(h.value),
                ) {
                    map.append(n, v);
                }
            }
            id.identify(&map, forwarded_for.unwrap_or(c.peer.ip()))
        }
        None => None,
    };

    let head_only = method == Method::HEAD;
    let resendable = replayable(&method, body.unwrap_or(0) > 0);
    let planned = |ex: Exchange| Planned {
        route,
        ex,
        head_only,
        client_close,
        body: body.unwrap_or(0),
        replayable: resendable,
        unmatched,
        te_trailers,
    };
    let Some((cfg, fast)) = forwarding else {
        let mut ex = Exchange::start(observer.clone(), route, method, uri, request_id, c.peer);
        ex.set_forwarded_for(forwarded_for);
        c.buf.drain(..head_len);
        return Some(planned(ex));
    };

    // The upstream's head: RFC 9110 §7.6.1's hop-by-hop fields dropped, the forwarding
    // fields appended as on hyper's path, names lower-cased as hyper writes them.
    let out = &mut c.out;
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(cfg.base_path.as_bytes());
    out.extend_from_slice(uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (h, field) in req.headers.iter().zip(fields) {
        let name = h.name.as_bytes();
        if matches!(field, Field::Other | Field::Date) && !named.contains(name) {
            put_header(out, name, h.value);
        }
    }
    let upstream_host = match (cfg.host_header, host) {
        (HostHeader::Preserve, Some(h)) => h,
        _ => &fast.host[..],
    };
    put_header(out, b"host", upstream_host);
    if te_trailers {
        put_header(out, b"te", b"trailers");
    }
    // A list field may come as several lines (RFC 9110 §5.3): all of them, in order;
    // none when `Connection` names it (hop-by-hop, dropped as on hyper's path).
    let named = &named;
    let prior = |want: Field| {
        req.headers
            .iter()
            .zip(fields.iter())
            .filter(move |(h, f)| **f == want && !named.contains(h.name.as_bytes()))
            .map(|(h, _)| h.value)
    };
    let ip = IpText::ip(c.peer.ip());
    put_appended(
        out,
        b"x-forwarded-for",
        prior(Field::ForwardedFor),
        ip.as_bytes(),
    );
    put_appended(
        out,
        b"x-forwarded-proto",
        prior(Field::ForwardedProto),
        b"http",
    );
    if let Some(h) = host {
        put_appended(out, b"x-forwarded-host", prior(Field::ForwardedHost), h);
    }
    put_header(out, b"x-request-id", request_id.as_bytes());
    if let Some(n) = body {
        put_header(
            out,
            b"content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");

    let mut ex = Exchange::start(observer.clone(), route, method, uri, request_id, c.peer);
    ex.set_forwarded_for(forwarded_for);
    ex.set_consumer(consumer);
    c.buf.drain(..head_len);
    Some(planned(ex))
}

/// Forwards one planned request and streams its response back.
/// `clock` is the connection's timer for the upstream's deadline (see `serve`).
async fn forward_one(
    proxy: &Arc<Proxy>,
    c: &mut Client,
    p: Planned,
    mut clock: Pin<&mut tokio::time::Sleep>,
) -> Next {
    let Planned {
        route,
        mut ex,
        head_only,
        mut client_close,
        body,
        replayable,
        unmatched,
        te_trailers,
    } = p;
    if unmatched {
        return answer(
            c,
            ex,
            StatusCode::NOT_FOUND,
            forward::NOT_FOUND,
            client_close,
        )
        .await;
    }
    let (cfg, fast) = proxy
        .fast_route(route)
        .expect("planned requests have a fast route");
    // The upstream's clock: time spent waiting for the client's body is added back
    // below (a slow upload is no upstream timeout; a stalled one is the client's 408).
    let mut deadline = tokio::time::Instant::now() + cfg.timeout;

    // The body bytes already read go with the head, in its write.
    let mut body_left = body;
    let mut body_unsent = false;
    let tally = (body > 0).then(|| {
        let state = Arc::new(RequestBodyState::default());
        ex.track_request_body(state.clone());
        (
            state,
            proxy.observer().metrics.route(route).request_bytes.clone(),
        )
    });
    let count = |n: usize| {
        if let Some((state, counter)) = &tally {
            state
                .bytes
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            counter.inc_by(n as u64);
        }
    };
    let first = (c.buf.len() as u64).min(body) as usize;
    c.out.extend_from_slice(&c.buf[..first]);
    c.buf.drain(..first);
    count(first);
    body_left -= first as u64;
    let unread = body_left > 0;

    // Phases 1 and 2, once more on a new connection when a pooled one closed unanswered
    // and the request may go twice (see `may_resend`): `c.out` still holds its head.
    let mut resent = false;
    let (mut up, head, closing) = loop {
        // Phase 1: an upstream connection with the request head on it. A pooled one
        // that turns out closed when written to never saw the request: try the next.
        let (mut up, fresh) = loop {
            let pooled = (!resent).then(|| fast.checkout(cfg.idle_timeout));
            let (mut conn, fresh) = match pooled.flatten() {
                Some(conn) => (conn, false),
                None => {
                    match tokio::time::timeout_at(deadline, fast.connect(cfg.connect_timeout)).await
                    {
                        Ok(Ok(conn)) => (conn, true),
                        Ok(Err(e)) => {
                            let e = e.to_string();
                            c.owed = body_left;
                            return fail(c, ex, cfg, UpstreamErrorKind::Connect, &e, unread).await;
                        }
                        Err(_) => {
                            c.owed = body_left;
                            return fail(c, ex, cfg, UpstreamErrorKind::Timeout, "", unread).await;
                        }
                    }
                }
            };
            match conn.io.write_all(&c.out).await {
                Ok(()) => break (conn, fresh),
                Err(_) if !fresh => continue,
                Err(e) => {
                    let e = e.to_string();
                    c.owed = body_left;
                    return fail(c, ex, cfg, UpstreamErrorKind::Reset, &e, unread).await;
                }
            }
        };
        // The rest of the body, as the client sends it. An upstream that stops reading
        // (it answered early, or died) ends the sending; its answer, if any, is still
        // read below, and the client's connection closes after it.
        while body_left > 0 {
            let idle = proxy.limits().body_read_timeout;
            let waiting = tokio::time::Instant::now();
            let read = tokio::time::timeout(idle, c.io.read_buf(&mut c.buf)).await;
            deadline += waiting.elapsed();
            let n = match read {
                Err(_) => {
                    return answer(
                        c,
                        ex,
                        StatusCode::REQUEST_TIMEOUT,
                        forward::BODY_STALLED,
                        true,
                    )
                    .await
                }
                Ok(Ok(n)) if n > 0 => n,
                // The client left mid-body: a 499.
                _ => return Next::Close,
            };
            let take = (n as u64).min(body_left) as usize;
            count(take);
            body_left -= take as u64;
            let sent = tokio::time::timeout_at(deadline, up.io.write_all(&c.buf[..take])).await;
            c.buf.drain(..take);
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    client_close |= body_left > 0;
                    c.owed = body_left;
                    // Whatever the upstream answers, the rest of the body was never sent:
                    // the connection is not fit for another request (as fastclient has it).
                    body_unsent = true;
                    break;
                }
                Err(_) => {
                    c.owed = body_left;
                    return fail(c, ex, cfg, UpstreamErrorKind::Timeout, "", true).await;
                }
            }
        }

        // Phase 2: the response head, while watching the client: a client that hangs up
        // now is a 499 (as with hyper's half_close off), and pipelined bytes are kept.
        up.buf.clear();
        let closing = client_close || proxy.is_draining();
        // Outside the read, which is begun again each time the client has sent more: an
        // interim (1xx) head it already took from the buffer was an answer all the same.
        let mut heard = false;
        clock.as_mut().reset(deadline);
        let head = loop {
            let client_room = c.buf.len() < CLIENT_BUF;
            let reading = read_head(
                &mut up,
                &mut heard,
                cfg.max_response_header_bytes,
                head_only,
                // A drain that began while the upstream thought ends this connection
                // after the response: the head says so (RFC 9112 §9.6).
                || closing || proxy.is_draining(),
                &mut c.out,
            );
            tokio::select! {
                // The head before the clock, as `timeout_at` polls them; the clock
                // outside tokio's task budget, as `timeout_at` looks at its own, so
                // that reads which use the budget up at every poll (an upstream
                // streaming 1xx heads) cannot keep it from being seen.
                biased;
                head = reading => break Some(head),
                () = tokio::task::unconstrained(clock.as_mut()) => break None,
                ready = c.io.readable(), if client_room => {
                    if ready.is_err() {
                        return Next::Close;
                    }
                    match c.io.try_read_buf(&mut c.buf) {
                        Ok(0) => return Next::Close,
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => return Next::Close,
                    }
                }
            }
        };
        match head {
            Some(Ok(head)) => break (up, head, closing),
            Some(Err(no_head)) if !resent && may_resend(no_head, !fresh, replayable) => {
                ex.resent();
                resent = true;
            }
            Some(Err(no_head)) => {
                let (kind, detail) = (no_head.kind(), no_head.detail());
                return fail(c, ex, cfg, kind, detail, client_close).await;
            }
            None => return fail(c, ex, cfg, UpstreamErrorKind::Timeout, "", client_close).await,
        }
    };

    // Phase 3: the response.
    ex.upstream_answered(head.status);
    let mut silence = std::pin::pin!(Silence::new(cfg.response_body_timeout));
    if let Some(map) = head.quota_headers.as_ref() {
        forward::note_upstream_headers(proxy.observer(), route, &mut ex, head.status, map);
    }
    let body_start = head.len;
    let mut reusable = head.keep_alive && !body_unsent;
    let sent = match head.body {
        Body::None => {
            reusable &= up.buf.len() == body_start;
            write_client(c, &mut ex, 0).await
        }
        Body::Length(n) => {
            // A body that fits the buffer goes out with the head, in one write (what
            // nginx's proxy buffering does); a larger one streams.
            // Saturating: `n` is the upstream's, up to u64::MAX.
            let whole = (body_start as u64).saturating_add(n);
            let mut collected = Ok(());
            if whole <= up.buf.capacity() as u64 {
                while (up.buf.len() as u64) < whole {
                    // Collecting holds the head back: no longer than the head's own
                    // deadline (still `clock`'s), after which what came goes out and
                    // the rest streams.
                    let more = read_more(c, &mut up, silence.as_mut());
                    let read = tokio::select! {
                        biased;
                        read = more => Some(read),
                        () = tokio::task::unconstrained(clock.as_mut()) => None,
                    };
                    match read {
                        None => break,
                        Some(Ok(n)) if n > 0 => {}
                        Some(Ok(_)) => {
                            collected = Err(Broken::Upstream);
                            break;
                        }
                        Some(Err(e)) => {
                            collected = Err(e);
                            break;
                        }
                    }
                }
            }
            let have = (up.buf.len() - body_start) as u64;
            reusable &= have <= n;
            let first = have.min(n) as usize;
            let body = &up.buf[body_start..body_start + first];
            let written = match collected {
                Err(Broken::Client) => Err(Broken::Client),
                _ => write_with_body(c, &mut ex, body).await.and(collected),
            };
            match written {
                Ok(()) => {
                    let left = n - first as u64;
                    stream_length(c, &mut ex, &mut up, silence.as_mut(), left, &mut reusable).await
                }
                Err(e) => Err(e),
            }
        }
        Body::Chunked => {
            // The trailer section goes on as hyper's path sends it (`trailer_section`):
            // kept only for a client that accepts trailers, when the head's `Trailer`
            // announces fields (`c.out` holds the client's head now).
            let announced = te_trailers.then(|| announced_trailers(&c.out)).flatten();
            let mut chunks = match announced {
                Some(_) => Chunks::collecting_trailers(),
                None => Chunks::default(),
            };
            let rest = &up.buf[body_start..];
            match chunks.feed(rest) {
                // The head still goes out, then the truncated body ends the
                // connection, as when the upstream breaks off later.
                Err(()) => write_client(c, &mut ex, 0).await.and(Err(Broken::Framing)),
                Ok(used) => {
                    let used = used.unwrap_or(rest.len());
                    reusable &= body_start + used == up.buf.len();
                    let (verbatim, section) = chunks.verbatim(used, false);
                    c.out.extend_from_slice(&rest[..verbatim]);
                    if section {
                        trailer_section(&chunks, announced.as_deref(), &mut c.out);
                    }
                    match write_client(c, &mut ex, chunks.data as usize).await {
                        Ok(()) if chunks.done() => Ok(()),
                        Ok(()) => {
                            stream_chunked(
                                c,
                                &mut ex,
                                &mut up,
                                silence.as_mut(),
                                &mut chunks,
                                announced.as_deref(),
                                &mut reusable,
                            )
                            .await
                        }
                        Err(e) => Err(e),
                    }
                }
            }
        }
        Body::UntilClose => {
            reusable = false;
            let rest = up.buf.len() - body_start;
            if rest > 0 {
                c.out.extend_from_slice(format!("{rest:x}\r\n").as_bytes());
                c.out.extend_from_slice(&up.buf[body_start..]);
                c.out.extend_from_slice(b"\r\n");
            }
            match write_client(c, &mut ex, rest).await {
                Ok(()) => stream_until_close(c, &mut ex, &mut up, silence.as_mut()).await,
                Err(e) => Err(e),
            }
        }
    };
    match sent {
        Ok(()) => {
            ex.complete();
            drop(ex);
            if reusable {
                fast.checkin(up, cfg.idle_timeout);
            }
            if closing {
                let _ = c.io.shutdown().await;
                Next::Close
            } else {
                Next::Keep
            }
        }
        // The client left mid-response: the exchange ends as 499.
        Err(Broken::Client) => Next::Close,
        // The upstream died mid-body: the client gets a truncated response with the
        // upstream's status, which is what gets counted — once.
        Err(broken @ (Broken::Upstream | Broken::Framing | Broken::Stalled)) => {
            ex.upstream_error(match broken {
                Broken::Framing => UpstreamErrorKind::Protocol,
                Broken::Stalled => UpstreamErrorKind::Timeout,
                _ => UpstreamErrorKind::Reset,
            });
            ex.complete();
            Next::Close
        }
    }
}

pin_project_lite::pin_project! {
    /// How long the upstream may be silent mid-body (the route's
    /// `response_body_timeout`): one timer per response, made at its first wait and
    /// moved later at each (tokio extends a deadline in place, without the wheel's lock).
    struct Silence {
        limit: Duration,
        #[pin]
        timer: Option<tokio::time::Sleep>,
    }
}

impl Silence {
    fn new(limit: Duration) -> Silence {
        Silence { limit, timer: None }
    }

    /// The timer for a wait on the upstream beginning now.
    fn arm(self: Pin<&mut Self>) -> Pin<&mut tokio::time::Sleep> {
        let mut this = self.project();
        let due = tokio::time::Instant::now() + *this.limit;
        match this.timer.as_mut().as_pin_mut() {
            Some(timer) => timer.reset(due),
            None => this.timer.set(Some(tokio::time::sleep_until(due))),
        }
        this.timer.as_pin_mut().expect("armed above")
    }
}

/// Which side broke a response in progress.
enum Broken {
    Client,
    /// The upstream's connection failed mid-body.
    Upstream,
    /// The upstream broke its body's framing (chunks).
    Framing,
    /// The upstream sent nothing for the route's `response_body_timeout`.
    Stalled,
}

/// Writes `c.out` (the head and, of it, `body` body bytes) to the client.
async fn write_client(c: &mut Client, ex: &mut Exchange, body: usize) -> Result<(), Broken> {
    c.wrote = true;
    send::write_all(&c.io, &c.out, c.send)
        .await
        .map_err(|_| Broken::Client)?;
    ex.sent(body as u64);
    Ok(())
}

/// Writes `c.out` (a head) and `body` to the client: small bodies copied behind the
/// head, larger ones in the same vectored write.
async fn write_with_body(c: &mut Client, ex: &mut Exchange, body: &[u8]) -> Result<(), Broken> {
    if body.len() <= 4096 {
        c.out.extend_from_slice(body);
        return write_client(c, ex, body.len()).await;
    }
    c.wrote = true;
    let (head, total) = (c.out.len(), c.out.len() + body.len());
    let mut done = 0;
    while done < total {
        let wrote = if done < head {
            let slices = [IoSlice::new(&c.out[done..]), IoSlice::new(body)];
            send::write_vectored(&c.io, &slices, c.send).await
        } else {
            let rest = [IoSlice::new(&body[done - head..])];
            send::write_vectored(&c.io, &rest, c.send).await
        };
        match wrote {
            Ok(0) | Err(_) => return Err(Broken::Client),
            Ok(n) => done += n,
        }
    }
    ex.sent(body.len() as u64);
    Ok(())
}

/// Reads from the upstream into its buffer (from the start); 0 at its end.
async fn read_up(
    c: &mut Client,
    up: &mut UpConn,
    silence: Pin<&mut Silence>,
) -> Result<usize, Broken> {
    up.buf.clear();
    read_more(c, up, silence).await
}

/// Reads more of the upstream's response into its buffer, watching the client as the
/// head's wait does: a client that hangs up mid-body is a 499 now — not when the
/// upstream next sends, which a stalled one never does (it held the connection and its
/// in-flight slot for as long). Pipelined bytes are kept for the next request. An
/// upstream silent for the route's `response_body_timeout` is given up on.
async fn read_more(
    c: &mut Client,
    up: &mut UpConn,
    silence: Pin<&mut Silence>,
) -> Result<usize, Broken> {
    let mut silence = silence.arm();
    loop {
        let client_room = c.buf.len() < CLIENT_BUF;
        tokio::select! {
            biased;
            // Cancel-safe: when the client's branch wins, nothing was read.
            read = up.io.read_buf(&mut up.buf) => return read.map_err(|_| Broken::Upstream),
            ready = c.io.readable(), if client_room => {
                if ready.is_err() {
                    return Err(Broken::Client);
                }
                match c.io.try_read_buf(&mut c.buf) {
                    Ok(0) => return Err(Broken::Client),
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => return Err(Broken::Client),
                }
            }
            // After the client's branch: a client that left at the same moment is a 499.
            () = &mut silence => return Err(Broken::Stalled),
        }
    }
}

async fn stream_length(
    c: &mut Client,
    ex: &mut Exchange,
    up: &mut UpConn,
    mut silence: Pin<&mut Silence>,
    mut left: u64,
    reusable: &mut bool,
) -> Result<(), Broken> {
    // Long bodies read in larger pieces: fewer reads and writes per byte.
    let want = left.min(MAX_STREAM_BUF as u64) as usize;
    if up.buf.capacity() < want {
        up.buf.reserve(want);
    }
    while left > 0 {
        let n = read_up(c, up, silence.as_mut()).await?;
        if n == 0 {
            return Err(Broken::Upstream);
        }
        let take = (n as u64).min(left) as usize;
        // Bytes beyond the body: the connection's framing is in doubt.
        *reusable &= take == n;
        send::write_all(&c.io, &up.buf[..take], c.send)
            .await
            .map_err(|_| Broken::Client)?;
        ex.sent(take as u64);
        left -= take as u64;
    }
    Ok(())
}

async fn stream_chunked(
    c: &mut Client,
    ex: &mut Exchange,
    up: &mut UpConn,
    mut silence: Pin<&mut Silence>,
    chunks: &mut Chunks,
    announced: Option<&[HeaderName]>,
    reusable: &mut bool,
) -> Result<(), Broken> {
    while !chunks.done() {
        let n = read_up(c, up, silence.as_mut()).await?;
        if n == 0 {
            return Err(Broken::Upstream);
        }
        let data_before = chunks.data;
        let in_trailers = chunks.in_trailers();
        let used = chunks
            .feed(&up.buf[..n])
            .map_err(|()| Broken::Framing)?
            .unwrap_or(n);
        *reusable &= used == n;
        let (verbatim, section) = chunks.verbatim(used, in_trailers);
        let sent = if section {
            c.out.clear();
            c.out.extend_from_slice(&up.buf[..verbatim]);
            trailer_section(chunks, announced, &mut c.out);
            send::write_all(&c.io, &c.out, c.send).await
        } else if verbatim > 0 {
            send::write_all(&c.io, &up.buf[..verbatim], c.send).await
        } else {
            Ok(())
        };
        sent.map_err(|_| Broken::Client)?;
        ex.sent(chunks.data - data_before);
    }
    Ok(())
}

/// The fields a response head's `Trailer` announces (None without one): what hyper's
/// HTTP/1.1 server lets through of a trailer section, and what the fast path does too.
fn announced_trailers(head: &[u8]) -> Option<Vec<HeaderName>> {
    let mut names: Option<Vec<HeaderName>> = None;
    for line in head.split(|&b| b == b'\n') {
        let Some(value) = line
            .get(..8)
            .filter(|n| n.eq_ignore_ascii_case(b"trailer:"))
            .map(|_| &line[8..])
        else {
            continue;
        };
        let found = value
            .split(|&b| b == b',')
            .filter_map(|n| HeaderName::from_bytes(n.trim_ascii()).ok());
        names.get_or_insert_with(Vec::new).extend(found);
    }
    names
}

/// Ends a chunked body for the client: the trailer fields `announced` names that a
/// trailer may carry, hop-by-hop ones left out — what hyper's path sends (its
/// `strip_hop_by_hop`, then hyper's encoder) — then the section's empty line.
fn trailer_section(chunks: &Chunks, announced: Option<&[HeaderName]>, out: &mut Vec<u8>) {
    if let (Some(names), Some(mut fields)) = (announced, chunks.trailers()) {
        forward::strip_hop_by_hop(&mut fields, false);
        for (name, value) in &fields {
            if names.contains(name) && may_trail(name) {
                put_header(out, name.as_str().as_bytes(), value.as_bytes());
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Whether a field may be sent as a trailer: hyper's encoder's list of those that must
/// not (framing, routing, authentication, content handling, `Set-Cookie`).
fn may_trail(name: &HeaderName) -> bool {
    use http::header::*;
    !matches!(
        *name,
        AUTHORIZATION
            | CACHE_CONTROL
            | CONTENT_ENCODING
            | CONTENT_LENGTH
            | CONTENT_RANGE
            | CONTENT_TYPE
            | HOST
            | MAX_FORWARDS
            | SET_COOKIE
            | TRAILER
            | TRANSFER_ENCODING
            | TE
    )
}

/// A body that ends when the upstream closes, re-framed as chunks so the client's
/// connection survives it.
async fn stream_until_close(
    c: &mut Client,
    ex: &mut Exchange,
    up: &mut UpConn,
    mut silence: Pin<&mut Silence>,
) -> Result<(), Broken> {
    loop {
        let n = read_up(c, up, silence.as_mut()).await?;
        c.out.clear();
        if n == 0 {
            c.out.extend_from_slice(b"0\r\n\r\n");
        } else {
            c.out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            c.out.extend_from_slice(&up.buf[..n]);
            c.out.extend_from_slice(b"\r\n");
        }
        write_client(c, ex, n).await?;
        if n == 0 {
            return Ok(());
        }
    }
}

/// How long a lingering close waits for one read, and in all (nginx's
/// `lingering_timeout` and `lingering_time`).
const LINGER_READ: Duration = Duration::from_secs(5);
const LINGER_TOTAL: Duration = Duration::from_secs(30);

/// Before a connection closes whose answer went out while the client still had request
/// body to send (the upstream failed or stopped reading mid-body), reads and drops the
/// rest of that body (`Client::owed`, at most the fast path's 64 KiB): closed with bytes
/// unread, or receiving more, the socket resets the connection, and a client still
/// sending can lose the answer to that reset (RFC 9112 §9.6). A lingering close, as
/// nginx's; the bytes dropped are not counted (they reached no upstream).
async fn linger(c: &mut Client, stop: &mut watch::Receiver<bool>) {
    if c.owed == 0 {
        return;
    }
    let _ = c.io.shutdown().await;
    let until = tokio::time::Instant::now() + LINGER_TOTAL;
    // Some of it may have been read already, while the upstream's answer was awaited.
    let mut left = c.owed.saturating_sub(c.buf.len() as u64);
    while left > 0 {
        c.buf.clear();
        let by = (tokio::time::Instant::now() + LINGER_READ).min(until);
        tokio::select! {
            read = tokio::time::timeout_at(by, c.io.read_buf(&mut c.buf)) => match read {
                Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n as u64),
                _ => return,
            },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Answers the failure of an upstream exchange as hyper's path does (502/504).
async fn fail(
    c: &mut Client,
    ex: Exchange,
    cfg: &RouteConfig,
    kind: UpstreamErrorKind,
    detail: &str,
    close: bool,
) -> Next {
    let (status, why) = forward::upstream_failure(&ex, cfg, kind, detail);
    answer(c, ex, status, why, close).await
}

/// A response statuslens makes itself, counted with `source="proxy"`; `close` when the
/// connection cannot go on (a request body left unread).
async fn answer(
    c: &mut Client,
    mut ex: Exchange,
    status: StatusCode,
    why: &'static str,
    close: bool,
) -> Next {
    ex.respond(status.as_u16(), Source::Proxy);
    c.out.clear();
    local_head(&mut c.out, status, why.len(), close);
    // A HEAD answer has no body (its length is the GET's): bytes after it would be
    // read as the start of the next response on the connection.
    let body = if ex.is_head() { "" } else { why };
    c.out.extend_from_slice(body.as_bytes());
    match write_client(c, &mut ex, body.len()).await {
        Ok(()) if !close => {
            ex.complete();
            Next::Keep
        }
        Ok(()) => {
            ex.complete();
            drop(ex);
            let _ = c.io.shutdown().await;
            Next::Close
        }
        Err(_) => Next::Close,
    }
}

/// The head of a response statuslens makes itself, as hyper's path writes it.
fn local_head(out: &mut Vec<u8>, status: StatusCode, len: usize, close: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    http_date(out);
    out.extend_from_slice(b"\r\n\r\n");
}

/// How the upstream's response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Body {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// An upstream response head, parsed.
struct Head {
    /// Its length in the upstream buffer.
    len: usize,
    status: u16,
    body: Body,
    keep_alive: bool,
    /// The response's headers when some concern quotas or `Retry-After` (rare; the
    /// common response builds no map).
    quota_headers: Option<HeaderMap>,
}

/// Reads until a final (non-1xx) response head is complete, writing the client's head.
async fn read_head(
    up: &mut UpConn,
    heard: &mut bool,
    limit: usize,
    head_only: bool,
    close: impl Fn() -> bool,
    out: &mut Vec<u8>,
) -> Result<Head, NoHead> {
    read_response(up, heard, limit, |buf| {
        parse_head(buf, head_only, close(), out)
    })
    .await
}

/// Reads until `parse` finds a final (non-1xx) response head at the front of the
/// connection's buffer; 1xx heads are dropped, and a head longer than `limit` bytes is a
/// `Protocol` fault. `heard` becomes true with the first byte of answer (the caller's,
/// so that it outlives a read begun again).
pub(crate) async fn read_response<T>(
    up: &mut UpConn,
    heard: &mut bool,
    limit: usize,
    mut parse: impl FnMut(&[u8]) -> Result<Parsed<T>, NoHead>,
) -> Result<T, NoHead> {
    loop {
        if !up.buf.is_empty() {
            // Only the first `limit` bytes are parsed, so a longer head never completes,
            // however much of it one read brought.
            match parse(&up.buf[..up.buf.len().min(limit)])? {
                Parsed::Final(head) => return Ok(head),
                Parsed::Interim(len) => {
                    up.buf.drain(..len);
                    continue;
                }
                Parsed::Partial => {}
            }
            if up.buf.len() >= limit {
                return Err(NoHead::TooLarge);
            }
        }
        if up.buf.len() == up.buf.capacity() {
            up.buf.reserve(up.buf.capacity());
        }
        match up.io.read_buf(&mut up.buf).await {
            Ok(0) | Err(_) if *heard => return Err(NoHead::Fault(UpstreamErrorKind::Reset)),
            Ok(0) | Err(_) => return Err(NoHead::Unanswered),
            Ok(_) => *heard = true,
        }
    }
}

/// Why no response head came.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum NoHead {
    /// The connection closed or reset before a single byte of answer (see `may_resend`).
    Unanswered,
    /// A head longer than the route's `max_response_header_bytes`.
    TooLarge,
    /// A body framed by a transfer coding other than chunked alone.
    UnknownCoding,
    /// A 101 to a request that asked for no upgrade.
    UnaskedSwitch,
    /// Anything else: a broken head, or a close part-way.
    Fault(UpstreamErrorKind),
}

impl NoHead {
    /// The `kind` it is counted as when final.
    pub(crate) fn kind(self) -> UpstreamErrorKind {
        match self {
            NoHead::Unanswered => UpstreamErrorKind::Reset,
            NoHead::TooLarge | NoHead::UnknownCoding | NoHead::UnaskedSwitch => {
                UpstreamErrorKind::Protocol
            }
            NoHead::Fault(kind) => kind,
        }
    }

    /// What the log says of it.
    pub(crate) fn detail(self) -> &'static str {
        match self {
            NoHead::TooLarge => RESPONSE_HEAD_TOO_LARGE,
            NoHead::UnknownCoding => UNKNOWN_TRANSFER_CODING,
            NoHead::UnaskedSwitch => UNASKED_SWITCH,
            other => other.kind().label(),
        }
    }
}

impl From<UpstreamErrorKind> for NoHead {
    fn from(kind: UpstreamErrorKind) -> Self {
        NoHead::Fault(kind)
    }
}

/// Whether a request may go again, once, on a new connection: the one it went on came
/// from the pool and ended without a byte of answer (the upstream closed it as idle
/// just as the request left, a race every keep-alive pool meets), and sending the
/// request twice is harmless (see `replayable`). On a new connection the same silence
/// is the upstream's answer (it may have died on this very request): a 502, never
/// resent.
pub(crate) fn may_resend(no_head: NoHead, reused: bool, replayable: bool) -> bool {
    no_head == NoHead::Unanswered && reused && replayable
}

/// Whether a request can be sent twice with nothing lost: a safe method (RFC 9110
/// §9.2.1) without a body, as Go's HTTP client resends. Idempotent but unsafe methods
/// are not: a DELETE the upstream did carry out before it went silent would come back
/// 404 the second time, an answer more misleading than the 502.
pub(crate) fn replayable(method: &Method, has_body: bool) -> bool {
    !has_body
        && matches!(
            *method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        )
}

/// A response head at the front of a buffer.
pub(crate) enum Parsed<T> {
    /// A final head, as the caller made it of the fields.
    Final(T),
    /// A 1xx head of this length, to be dropped.
    Interim(usize),
    /// Not complete yet.
    Partial,
}

/// One parsed final response head, as both clients of the fast path's pools read it.
struct Final<'h, 'b> {
    resp: httparse::Response<'h, 'b>,
    /// The head's length in the buffer.
    len: usize,
    status: u16,
    scan: Scan<'b>,
}

/// Parses the response head at the front of `buf`; a final one goes to `finish`.
// Inlined into each caller: as a shared call, the fast path's CPU per request rose
// ~2% (10 alternating wrk runs); inlined, it is back to the split version's.
#[inline(always)]
fn parse_response<T>(
    buf: &[u8],
    head_only: bool,
    finish: impl FnOnce(Final<'_, '_>) -> Result<T, NoHead>,
) -> Result<Parsed<T>, NoHead> {
    let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(_) => return Err(UpstreamErrorKind::Protocol.into()),
    };
    let status = resp.code.ok_or(UpstreamErrorKind::Protocol)?;
    // httparse takes any three digits; like hyper, refuse what is no status code (a
    // "000" would otherwise reach the client as an unparseable "HTTP/1.1 0").
    if !(100..=999).contains(&status) {
        return Err(UpstreamErrorKind::Protocol.into());
    }
    // Upgrade requests never come this way.
    if status == 101 {
        return Err(NoHead::UnaskedSwitch);
    }
    if (100..200).contains(&status) {
        return Ok(Parsed::Interim(len));
    }
    let scan = scan(&resp, status, head_only)?;
    finish(Final {
        resp,
        len,
        status,
        scan,
    })
    .map(Parsed::Final)
}

/// What a final response head's fields say: its framing (RFC 9112 §6.3), whether the
/// connection stays open, and what each field is.
struct Scan<'b> {
    body: Body,
    /// The connection can carry another request after this response.
    keep_alive: bool,
    dated: bool,
    /// Some field concerns quotas or `Retry-After`.
    quota: bool,
    /// Fields `Connection` names: hop-by-hop.
    named: Named<'b>,
    fields: [Field; MAX_RESPONSE_HEADERS],
    /// The length to send as one plain field in place of the upstream's, which repeated
    /// it (a list, or several fields); None when its own field passes as it is.
    relength: Option<u64>,
    /// No `Content-Length` goes to the client: a 204 has no content (RFC 9110 §8.6), and
    /// a length beside Transfer-Encoding, or an invalid one, is dropped.
    no_length: bool,
}

impl Scan<'_> {
    /// The body is re-framed (chunked to the client): its `Content-Length`, if any,
    /// must not reach the client beside the new framing (the response-smuggling shape).
    fn reframed(&self) -> bool {
        matches!(self.body, Body::Chunked | Body::UntilClose)
    }

    /// Whether field `i` (`name`) goes on to the client: end-to-end fields, and the
    /// `Content-Length` of a body that is not re-framed; never the hop-by-hop ones
    /// (RFC 9110 §7.6.1), nor what `Connection` names.
    fn passes(&self, i: usize, name: &[u8]) -> bool {
        match self.fields[i] {
            Field::Framing => {
                !self.reframed() && name.len() == 14 && self.relength.is_none() && !self.no_length
            }
            Field::Connection | Field::HopByHop | Field::Te | Field::Upgrade => false,
            _ => !self.named.contains(name),
        }
    }
}

fn scan<'b>(
    resp: &httparse::Response<'_, 'b>,
    status: u16,
    head_only: bool,
) -> Result<Scan<'b>, NoHead> {
    // `close` wins over any `keep-alive` beside it (RFC 9112 §9.6: after a close the
    // client MUST NOT send on that connection), whichever comes last.
    let mut close = false;
    let mut keep_alive_token = false;
    let mut length: Option<u64> = None;
    let mut bad_length = false;
    let mut repeated = false;
    let mut chunked = false;
    let mut quota = false;
    let mut dated = false;
    let mut named = Named::default();
    let mut fields = [Field::Other; MAX_RESPONSE_HEADERS];
    // No body whatever the framing fields say (RFC 9112 §6.3 rule 1), as hyper's client
    // reads these: their codings and lengths frame nothing, so none is refused.
    let bodiless = head_only || status == 204 || status == 304;
    for (h, field) in resp.headers.iter().zip(fields.iter_mut()) {
        let name = h.name.as_bytes();
        *field = Field::of(name);
        match field {
            Field::Framing if name.len() == 14 => {
                // A list of one repeated length stands for that length (RFC 9110 §8.6,
                // as hyper's client reads it); the client gets it once.
                for digits in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    let Some(n) = content_length(digits) else {
                        bad_length = true;
                        continue;
                    };
                    if length.is_some_and(|l| l != n) {
                        bad_length = true;
                    }
                    repeated |= length.is_some();
                    length = Some(n);
                }
            }
            Field::Framing => {
                // Chunked alone, as nginx takes it. Any other coding (gzip, chunked;
                // or none but one the body runs to the close in) is the client's to
                // decode, and passed on without its Transfer-Encoding (hop-by-hop, and
                // an HTTP/2 client has none) the body would reach it undecodable; chunked
                // twice is not allowed at all (RFC 9112 §7).
                if !bodiless && (chunked || !chunked_alone(h.value)) {
                    return Err(NoHead::UnknownCoding);
                }
                chunked = true;
            }
            Field::Connection => {
                if !named.add(h.value) {
                    return Err(UpstreamErrorKind::Protocol.into());
                }
                for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            Field::Date => dated = true,
            _ => quota |= crate::quota::is_relevant(h.name),
        }
    }
    // HTTP/1.0 has no Transfer-Encoding: RFC 9112 §6.1 has the framing treated as faulty,
    // and hyper's client refuses it — so does the fast path, alike.
    if resp.version == Some(0) && chunked && !bodiless {
        return Err(UpstreamErrorKind::Protocol.into());
    }
    // Transfer-Encoding overrides Content-Length, which is then dropped unread (RFC
    // 9112 §6.3 rule 3): only a length that frames the body must be valid.
    if bad_length && !chunked && !bodiless {
        return Err(UpstreamErrorKind::Protocol.into());
    }
    let length = length.filter(|_| !bad_length);
    let keep_alive = !close && (resp.version == Some(1) || keep_alive_token);
    // A `Date` that `Connection` names is dropped: the client gets ours instead.
    let dated = dated && !named.contains(b"date");
    let body = if bodiless {
        Body::None
    } else {
        match (chunked, length) {
            (true, _) => Body::Chunked,
            (false, Some(0)) => Body::None,
            (false, Some(n)) => Body::Length(n),
            (false, None) => Body::UntilClose,
        }
    };
    Ok(Scan {
        body,
        keep_alive: keep_alive && body != Body::UntilClose,
        dated,
        quota,
        named,
        fields,
        relength: length.filter(|_| repeated && !chunked && status != 204),
        // A proxy removes a length beside Transfer-Encoding and never forwards an
        // invalid one (RFC 9112 §6.3, RFC 9110 §8.6): on a bodiless answer too, where
        // it framed nothing but a client would still read it.
        no_length: status == 204 || chunked || bad_length,
    })
}

/// Whether a `Transfer-Encoding` value is `chunked` and nothing else, the one response
/// framing by transfer coding the proxy forwards (see [`UNKNOWN_TRANSFER_CODING`]).
pub(crate) fn chunked_alone(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// The response's fields as a map (`keep` picks which).
fn header_map(
    fields: &[httparse::Header<'_>],
    mut keep: impl FnMut(usize, &[u8]) -> bool,
) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(fields.len());
    for (i, h) in fields.iter().enumerate() {
        if !keep(i, h.name.as_bytes()) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            map.append(n, v);
        }
    }
    map
}

/// A `Content-Length` value: 1*DIGIT (RFC 9110 §8.6; `parse` alone would take "+5").
///
/// Read digit by digit: through `str::parse` it was a UTF-8 check and a sign check per
/// head, on every request with a body and every response.
pub(crate) fn content_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let d = d.wrapping_sub(b'0');
        (d <= 9).then_some(())?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// Parses a response head at the front of `buf`; for a final one, writes the client's
/// head into `out`: the upstream's status line and end-to-end fields, the framing this
/// proxy sends, `Connection: close` when `close`, a `Date` if the upstream sent none.
fn parse_head(
    buf: &[u8],
    head_only: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> Result<Parsed<Head>, NoHead> {
    parse_response(buf, head_only, |f| Ok(client_head_of(f, close, out)))
}

/// Writes the client's head for a final response head into `out`.
fn client_head_of(f: Final<'_, '_>, close: bool, out: &mut Vec<u8>) -> Head {
    let Final {
        resp,
        len,
        status,
        scan,
    } = f;
    let quota_headers = scan.quota.then(|| header_map(resp.headers, |_, _| true));

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (i, h) in resp.headers.iter().enumerate() {
        let name = h.name.as_bytes();
        if scan.passes(i, name) {
            put_header(out, name, h.value);
        }
    }
    if scan.reframed() {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if let Some(n) = scan.relength {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !scan.dated {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Head {
        len,
        status,
        body: scan.body,
        keep_alive: scan.keep_alive,
        quota_headers,
    }
}

/// A final upstream response head as `http` parts, for [`crate::fastclient`].
pub(crate) struct ResponseHead {
    /// Its length in the buffer.
    pub(crate) len: usize,
    pub(crate) status: StatusCode,
    /// The fields the client gets, as on the fast path: hyper's responses lose their
    /// hop-by-hop fields in `forward`, these need not be looked for there.
    pub(crate) headers: HeaderMap,
    pub(crate) body: Body,
    pub(crate) keep_alive: bool,
}

/// Parses a response head at the front of `buf` into `http` parts.
pub(crate) fn parse_parts(buf: &[u8], head_only: bool) -> Result<Parsed<ResponseHead>, NoHead> {
    parse_response(buf, head_only, |f| {
        let mut headers = header_map(f.resp.headers, |i, name| f.scan.passes(i, name));
        if let Some(n) = f.scan.relength {
            headers.insert(http::header::CONTENT_LENGTH, n.into());
        }
        Ok(ResponseHead {
            len: f.len,
            status: StatusCode::from_u16(f.status).map_err(|_| UpstreamErrorKind::Protocol)?,
            headers,
            body: f.scan.body,
            keep_alive: f.scan.keep_alive,
        })
    })
}

/// Follows a chunked body (RFC 9112 §7.1) to find where it ends; bytes pass verbatim.
#[derive(Debug, Default)]
pub(crate) struct Chunks {
    state: ChunkState,
    /// Chunk data seen so far (what the client's body holds, framing aside).
    pub(crate) data: u64,
    /// The trailer section's bytes, when collected (see `collecting_trailers`).
    trailers: Option<Vec<u8>>,
    /// Where the trailer section began in the bytes last fed, if it began there.
    trailer_from: Option<usize>,
    /// Bytes of the trailer section so far, its final CRLF included.
    trailer_len: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum ChunkState {
    /// In a chunk-size line: the size so far, whether digits are over (extensions).
    #[default]
    SizeStart,
    /// In a chunk-size line (RFC 9112 §7.1: `chunk-size [ chunk-ext ] CRLF`): digits,
    /// then whitespace before `;`, then extensions; then its CR.
    Size {
        size: u64,
        after: SizeAfter,
    },
    SizeCr(u64),
    /// Chunk data left, then its CRLF.
    Data(u64),
    DataCr,
    DataLf,
    /// Trailer section: at the start of a line, inside one, after a line's CR, after
    /// the final CR.
    TrailerLineStart,
    TrailerLine,
    TrailerLineCr,
    TrailerEndCr,
    Done,
}

/// Where a chunk-size line is past its digits.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum SizeAfter {
    #[default]
    Digits,
    Space,
    Extension,
}

/// Most trailer bytes kept for a decoded body; more is a protocol error.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

impl Chunks {
    /// A follower that also keeps the trailer section, for [`Chunks::trailers`].
    pub(crate) fn collecting_trailers() -> Chunks {
        Chunks {
            trailers: Some(Vec::new()),
            ..Chunks::default()
        }
    }

    pub(crate) fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Past the last chunk: in the trailer section, or done.
    fn in_trailers(&self) -> bool {
        use ChunkState::*;
        matches!(
            self.state,
            TrailerLineStart | TrailerLine | TrailerLineCr | TrailerEndCr | Done
        )
    }

    /// How many of the `used` bytes just fed go on verbatim — all up to the trailer
    /// section, none once in it before this feed — and whether the caller must then
    /// write the section (`trailer_section`). An empty section that came whole in this
    /// feed (the usual `0\r\n\r\n`) passes as it is, so the body's last read goes out
    /// in place, uncopied.
    fn verbatim(&mut self, used: usize, was_in_trailers: bool) -> (usize, bool) {
        let from = self.trailer_from.take();
        if !was_in_trailers && self.done() && self.trailer_len == 2 {
            return (used, false);
        }
        let verbatim = if was_in_trailers {
            0
        } else {
            from.unwrap_or(used)
        };
        (verbatim, self.done())
    }

    /// Follows `data`; Some(n) when the body ends after its first n bytes.
    fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, ()> {
        self.feed_with(data, |_| {})
    }

    /// Follows `data` as `feed` does, telling `on_data` where chunk data lies in it.
    pub(crate) fn feed_with(
        &mut self,
        data: &[u8],
        mut on_data: impl FnMut(std::ops::Range<usize>),
    ) -> Result<Option<usize>, ()> {
        use ChunkState::*;
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            self.state = match self.state {
                // Lines end in CRLF; a bare LF, a CR before anything else and digits
                // after whitespace are refused, as hyper refuses them: bytes a client
                // and this proxy could split differently never pass through.
                SizeStart => match hex(b) {
                    Some(d) => Size {
                        size: d,
                        after: SizeAfter::Digits,
                    },
                    None => return Err(()),
                },
                Size { size, after } => match (after, b) {
                    (_, b'\r') => SizeCr(size),
                    (_, b'\n') => return Err(()),
                    (SizeAfter::Extension, _) => Size { size, after },
                    (_, b';') => Size {
                        size,
                        after: SizeAfter::Extension,
                    },
                    (_, b' ' | b'\t') => Size {
                        size,
                        after: SizeAfter::Space,
                    },
                    (SizeAfter::Digits, _) => {
                        let d = hex(b).ok_or(())?;
                        let size = size.checked_mul(16).ok_or(())? + d;
                        Size { size, after }
                    }
                    (SizeAfter::Space, _) => return Err(()),
                },
                SizeCr(0) if b == b'\n' => {
                    self.trailer_from = Some(i + 1);
                    TrailerLineStart
                }
                SizeCr(size) if b == b'\n' => Data(size),
                SizeCr(_) => return Err(()),
                Data(left) => {
                    let take = (left as usize).min(data.len() - i);
                    on_data(i..i + take);
                    i += take;
                    self.data += take as u64;
                    let left = left - take as u64;
                    self.state = if left == 0 { DataCr } else { Data(left) };
                    continue;
                }
                DataCr if b == b'\r' => DataLf,
                DataLf if b == b'\n' => SizeStart,
                DataCr | DataLf => return Err(()),
                TrailerLineStart | TrailerLine | TrailerLineCr | TrailerEndCr => {
                    self.trailer_len += 1;
                    if let Some(kept) = self.trailers.as_mut() {
                        if kept.len() >= MAX_TRAILER_BYTES {
                            return Err(());
                        }
                        kept.push(b);
                    }
                    match (self.state, b) {
                        (TrailerLineStart, b'\r') => TrailerEndCr,
                        (TrailerEndCr, b'\n') => Done,
                        (TrailerLineCr, b'\n') => TrailerLineStart,
                        (TrailerEndCr | TrailerLineCr, _) | (_, b'\n') => return Err(()),
                        (_, b'\r') => TrailerLineCr,
                        _ => TrailerLine,
                    }
                }
                Done => return Ok(Some(i)),
            };
            i += 1;
            if self.state == Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }
}

impl Chunks {
    /// The trailer fields of a finished body followed with `collecting_trailers`.
    pub(crate) fn trailers(&self) -> Option<HeaderMap> {
        let kept = self.trailers.as_ref().filter(|t| t.len() > 2)?;
        let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        match httparse::parse_headers(kept, &mut fields) {
            Ok(httparse::Status::Complete((_, fields))) => {
                let map = header_map(fields, |_, _| true);
                (!map.is_empty()).then_some(map)
            }
            _ => None,
        }
    }
}

/// Where a chunked body ends when it arrives in `pieces`: after `n` bytes of their
/// concatenation (`Some(n)`), not within them (`None`), or malformed (`Err`). Exposed
/// for the `upstream` fuzz target: however the body is split, the answer is the same.
#[allow(clippy::result_unit_err)]
pub fn chunked_end<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Result<Option<u64>, ()> {
    let mut chunks = Chunks::default();
    let mut offset = 0u64;
    for piece in pieces {
        if let Some(n) = chunks.feed(piece)? {
            return Ok(Some(offset + n as u64));
        }
        offset += piece.len() as u64;
    }
    Ok(None)
}

/// The head the client gets for an upstream response head at the front of `upstream`
/// (`None` if there is no complete final head or it is refused as a protocol error).
/// Exposed for the `upstream` fuzz target.
pub fn client_head(upstream: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match parse_head(upstream, false, false, &mut out) {
        Ok(Parsed::Final(_)) => Some(out),
        _ => None,
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

/// Header names listed in `Connection` fields: hop-by-hop too. Up to 8 such fields (any
/// number of names each; fields that name none, as `keep-alive`, are not counted); a
/// request with more goes to hyper, a response is refused.
#[derive(Default)]
struct Named<'a> {
    /// Whole `Connection` values, as many names as each lists: a cap on names would
    /// let the ninth through (RFC 9110 §7.6.1: every one is removed).
    values: [&'a [u8]; 8],
    len: usize,
}

impl<'a> Named<'a> {
    /// Adds one `Connection` field's value; false past eight fields that name a field
    /// (see [`forward::names_field`]).
    fn add(&mut self, value: &'a [u8]) -> bool {
        // A value that names no field (nginx's `keep-alive` on every response) is not
        // kept: every other field is spared a look through it (callgrind: −2.6%
        // instructions on a response with eight fields, −1.5% on one with four). An
        // empty list element (`keep-alive,`) names nothing either.
        if !value.split(|&b| b == b',').any(|t| {
            let t = t.trim_ascii();
            !t.is_empty() && forward::names_field(t)
        }) {
            return true;
        }
        if self.len == self.values.len() {
            return false;
        }
        self.values[self.len] = value;
        self.len += 1;
        true
    }

    /// Whether some kept value names `name`. A token equal to `name` names a field
    /// exactly when `name` does, so that is asked once, not per token.
    fn contains(&self, name: &[u8]) -> bool {
        self.len > 0
            && forward::names_field(name)
            && self.values[..self.len]
                .iter()
                .any(|v| v.split(|&b| b == b',').any(|t| eq(name, t.trim_ascii())))
    }
}

fn eq(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// What a header field is to the fast path, told by its name.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Field {
    /// End to end: passed on as it is.
    Other,
    /// `Content-Length` or `Transfer-Encoding`.
    Framing,
    Connection,
    Upgrade,
    Expect,
    Host,
    Date,
    ForwardedFor,
    ForwardedProto,
    ForwardedHost,
    RequestId,
    /// `TE`: hop-by-hop, but its `trailers` is passed on (see `forward`).
    Te,
    /// RFC 9110 §7.6.1's other hop-by-hop fields: `Keep-Alive`, `Proxy-*`.
    HopByHop,
}

impl Field {
    /// Matches on the length first, so most names cost one comparison or none.
    fn of(name: &[u8]) -> Field {
        let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
        match name.len() {
            2 if is(b"te") => Field::Te,
            4 if is(b"host") => Field::Host,
            4 if is(b"date") => Field::Date,
            6 if is(b"expect") => Field::Expect,
            7 if is(b"upgrade") => Field::Upgrade,
            10 if is(b"connection") => Field::Connection,
            10 if is(b"keep-alive") => Field::HopByHop,
            12 if is(b"x-request-id") => Field::RequestId,
            14 if is(b"content-length") => Field::Framing,
            15 if is(b"x-forwarded-for") => Field::ForwardedFor,
            16 if is(b"x-forwarded-host") => Field::ForwardedHost,
            16 if is(b"proxy-connection") => Field::HopByHop,
            17 if is(b"x-forwarded-proto") => Field::ForwardedProto,
            17 if is(b"transfer-encoding") => Field::Framing,
            18 if is(b"proxy-authenticate") => Field::HopByHop,
            19 if is(b"proxy-authorization") => Field::HopByHop,
            _ => Field::Other,
        }
    }
}

/// Whether a line of `head` ends in LF alone. memchr jumps from line end to line end: a
/// byte-by-byte look was ~5 instructions a byte, 3.9k per request with a bearer token
/// and a user agent in the head (an eighth of the request's cost; callgrind).
fn has_bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r')
}

fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend(name.iter().map(u8::to_ascii_lowercase));
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `name: prev, value` as proxies in a chain append, or `name: value`.
fn put_appended<'a>(
    out: &mut Vec<u8>,
    name: &[u8],
    prev: impl Iterator<Item = &'a [u8]>,
    value: &[u8],
) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    for prev in prev.filter(|p| !p.is_empty()) {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends the current time as an HTTP date, formatted once a second per thread.
fn http_date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    thread_local! {
        static CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let s = httpdate::fmt_http_date(now);
            if s.len() == 29 {
                c.1.copy_from_slice(s.as_bytes());
                c.0 = secs;
            }
        }
        out.extend_from_slice(&c.1);
    });
}

pin_project_lite::pin_project! {
    /// A request's future whose panic ends it (None) instead of the connection task;
    /// the exchange inside is dropped as a failure and counts a 500.
    struct Caught<F> {
        #[pin]
        inner: Option<F>,
    }
}

impl<F: std::future::Future> std::future::Future for Caught<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut inner = self.project().inner;
        let Some(running) = inner.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        let before = isolate::failures();
        if let Some(polled) = isolate::catch("request handler", || running.poll(cx)) {
            return polled.map(Some);
        }
        isolate::discard(|| inner.set(None), before);
        Poll::Ready(None)
    }
}

pin_project_lite::pin_project! {
    /// A stream read from `prefix` first: how hyper gets a connection the fast path
    /// already read from.
    pub struct Replay<S> {
        prefix: Vec<u8>,
        at: usize,
        #[pin]
        inner: S,
    }
}

impl<S> Replay<S> {
    /// `inner`, with `prefix` read before it.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Replay {
            prefix,
            at: 0,
            inner,
        }
    }

    /// Swaps the stream underneath, keeping what is left of the prefix.
    pub fn map<T>(self, f: impl FnOnce(S) -> T) -> Replay<T> {
        Replay {
            prefix: self.prefix,
            at: self.at,
            inner: f(self.inner),
        }
    }
}

impl<S: AsyncRead> AsyncRead for Replay<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        if *this.at < this.prefix.len() {
            let n = (this.prefix.len() - *this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[*this.at..*this.at + n]);
            *this.at += n;
            if *this.at == this.prefix.len() {
                *this.prefix = Vec::new();
                *this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

crate::write_through!(Replay);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_retired_route_closes_its_idle_connections_and_pools_none_after() {
        // A reload replaces the generation; requests of the old one still running (a
        // stream may last hours) gave their connections back to pools nobody swept.
        let config = crate::config::Config::parse(
            "[[routes]]\nname = 'a'\nupstream = 'http://127.0.0.1:9'\n",
            "test.toml",
            &crate::config::Overrides::default(),
        )
        .unwrap();
        let fast = FastRoute::new(&config.routes[0], 1, IntCounter::new("n", "h").unwrap())
            .expect("a plain-http route");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conn = || async {
            let (io, _) = tokio::join!(TcpStream::connect(addr), listener.accept());
            UpConn {
                io: io.unwrap(),
                buf: Vec::new(),
            }
        };
        let idle = Duration::from_secs(90);
        fast.checkin(conn().await, idle);
        let pooled = |f: &FastRoute| {
            f.pools
                .iter()
                .map(|p| p.lock().unwrap().len())
                .sum::<usize>()
        };
        assert_eq!(pooled(&fast), 1);
        fast.retire();
        assert_eq!(pooled(&fast), 0, "the idle connection closed at retirement");
        fast.checkin(conn().await, idle);
        assert_eq!(
            pooled(&fast),
            0,
            "a connection given back after it is closed"
        );
    }

    fn follow(stream: &[u8]) -> Option<usize> {
        let mut c = Chunks::default();
        c.feed(stream).unwrap()
    }

    #[test]
    fn chunked_ends_after_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n0\r\n\r\nNEXT";
        assert_eq!(follow(body), Some(body.len() - 4));
        let trailers = b"3;ext=1\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n";
        assert_eq!(follow(trailers), Some(trailers.len()));
        assert_eq!(follow(b"a\r\n0123456789\r\n"), None);
        assert_eq!(follow(b"A\r\n0123456789\r\n0\r\n\r\n"), Some(20));
        assert_eq!(follow(b"2 ; a=b\r\nok\r\n0\r\n\r\n"), Some(18));
    }

    #[test]
    fn chunked_split_anywhere_ends_at_the_same_byte() {
        let body = b"1f\r\nabcdefghijklmnopqrstuvwxyz01234\r\n2;x\r\nab\r\n0\r\nt: v\r\n\r\n";
        for cut in 0..body.len() {
            let mut c = Chunks::default();
            let first = c.feed(&body[..cut]).unwrap();
            let end = match first {
                Some(n) => n,
                None => cut + c.feed(&body[cut..]).unwrap().unwrap(),
            };
            assert_eq!(end, body.len(), "cut at {cut}");
        }
    }

    #[test]
    fn chunked_rejects_garbage() {
        assert!(Chunks::default().feed(b"zz\r\n").is_err());
        assert!(Chunks::default().feed(b"1\r\nab\r\n").is_err());
        assert!(Chunks::default().feed(b"ffffffffffffffffff\r\n").is_err());
        // What a client and this proxy could split differently (hyper refuses them):
        // bare LFs, a CR before anything but LF, digits after whitespace.
        for bad in [
            &b"2\nok\n0\n\n"[..],
            b"2\r\nok\n0\r\n\r\n",
            b"2\rZZ\r\nok\r\n0\r\n\r\n",
            b"2 0\r\nok\r\n0\r\n\r\n",
            b"2\r\nok\r\n0\r\n\n",
            b"2\r\nok\r\n0\r\nt: v\n\r\n",
        ] {
            assert!(
                Chunks::default().feed(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn bare_lf_is_seen() {
        assert!(has_bare_lf(b"GET / HTTP/1.1\nHost: a\r\n\r\n"));
        assert!(!has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(has_bare_lf(b"\nGET / HTTP/1.1\r\n\r\n"));
        // A long head (past memchr's vector width) with a CR dropped before any one LF.
        let mut head = b"GET /v1/contacts HTTP/1.1\r\nHost: api.example\r\n".to_vec();
        for i in 0..12 {
            head.extend_from_slice(format!("X-Field-{i}: {}\r\n", "v".repeat(i * 7)).as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        assert!(!has_bare_lf(&head));
        for (i, _) in head.iter().enumerate().filter(|(_, &b)| b == b'\r') {
            let mut bare = head.clone();
            bare[i] = b'x';
            assert!(has_bare_lf(&bare), "CR at {i} dropped");
        }
    }

    #[test]
    fn response_framing() {
        let p = |s: &[u8], head: bool| match parse_head(s, head, false, &mut Vec::new()) {
            Ok(Parsed::Final(h)) => (h.status, h.body, h.keep_alive),
            _ => panic!("not final"),
        };
        assert_eq!(
            p(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
            (200, Body::Length(2), true)
        );
        assert_eq!(
            p(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", true),
            (200, Body::None, true)
        );
        assert_eq!(
            p(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked \r\n\r\n",
                false
            ),
            (200, Body::Chunked, true)
        );
        // Why a head is refused (None: taken), the one form the cases below use.
        let refusal = |head: &[u8]| parse_head(head, false, false, &mut Vec::new()).err();
        // Chunked alone: another coding would reach the client undecodable.
        for coded in [
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding:\r\n\r\n",
        ] {
            assert_eq!(
                refusal(coded),
                Some(NoHead::UnknownCoding),
                "{:?}",
                String::from_utf8_lossy(coded)
            );
        }
        assert_eq!(
            p(b"HTTP/1.0 200 OK\r\n\r\n", false),
            (200, Body::UntilClose, false)
        );
        assert_eq!(
            p(
                b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n",
                false
            ),
            (204, Body::None, false)
        );
        assert_eq!(
            refusal(b"HTTP/1.1 000 Zero\r\n\r\n"),
            Some(NoHead::Fault(UpstreamErrorKind::Protocol))
        );
        assert!(matches!(
            parse_head(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
                false,
                false,
                &mut Vec::new()
            ),
            Ok(Parsed::Interim(25))
        ));
        for conflicting in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1,\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n",
        ] {
            assert_eq!(
                refusal(conflicting),
                Some(NoHead::Fault(UpstreamErrorKind::Protocol)),
                "{:?}",
                String::from_utf8_lossy(conflicting)
            );
        }
        // One length, repeated in a list or in fields: that length, sent once.
        for repeated in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2,2\r\n\r\nok",
        ] {
            let mut out = Vec::new();
            match parse_head(repeated, false, false, &mut out) {
                Ok(Parsed::Final(h)) => assert_eq!(h.body, Body::Length(2)),
                _ => panic!("{:?}", String::from_utf8_lossy(repeated)),
            }
            let out = String::from_utf8(out).unwrap();
            assert_eq!(out.matches("content-length").count(), 1, "{out}");
            assert!(out.contains("content-length: 2\r\n"), "{out}");
        }
    }

    #[test]
    fn a_trailer_section_split_anywhere_is_replaced_whole() {
        // The fast path passes chunks on verbatim up to the trailer section and writes
        // that itself (an empty one passes as it is); however the upstream's reads split
        // the body, the client gets the same bytes.
        let announced =
            announced_trailers(b"HTTP/1.1 200 OK\r\ntrailer: x-sum, keep-alive\r\n\r\n");
        /// A body, the fields its head announces, what the client gets.
        type Case<'a> = (&'a [u8], Option<&'a [HeaderName]>, &'a [u8]);
        let cases: [Case; 3] = [
            (
                b"3\r\nabc\r\n0\r\nx-sum: 1\r\nkeep-alive: 5\r\nx-other: 2\r\n\r\n",
                announced.as_deref(),
                b"3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n",
            ),
            // Not announced (or the client did not accept trailers): none.
            (
                b"3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n",
                None,
                b"3\r\nabc\r\n0\r\n\r\n",
            ),
            (b"3\r\nabc\r\n0\r\n\r\n", None, b"3\r\nabc\r\n0\r\n\r\n"),
        ];
        for (body, names, want) in cases {
            for first in 0..=body.len() {
                for second in first..=body.len() {
                    let mut chunks = match names {
                        Some(_) => Chunks::collecting_trailers(),
                        None => Chunks::default(),
                    };
                    let mut out = Vec::new();
                    for piece in [&body[..first], &body[first..second], &body[second..]] {
                        // As the callers: nothing is fed once the body is done.
                        if chunks.done() {
                            break;
                        }
                        let was = chunks.in_trailers();
                        let used = chunks.feed(piece).unwrap().unwrap_or(piece.len());
                        let (verbatim, section) = chunks.verbatim(used, was);
                        out.extend_from_slice(&piece[..verbatim]);
                        if section {
                            trailer_section(&chunks, names, &mut out);
                        }
                    }
                    assert!(chunks.done());
                    assert_eq!(
                        out,
                        want,
                        "cut at {first}, {second}: {:?}",
                        String::from_utf8_lossy(&out)
                    );
                }
            }
        }
    }

    #[test]
    fn bodiless_answers_ignore_framing_and_never_pass_a_bad_length() {
        // HEAD answers, 204 and 304 have no body whatever their framing fields say (RFC
        // 9112 §6.3 rule 1); a length beside Transfer-Encoding or an invalid one is not
        // forwarded (RFC 9112 §6.3, RFC 9110 §8.6). The fast path passed `content-length:
        // abc` on beside chunked, and refused gzip-coded or HTTP/1.0 ones with a 502.
        let client = |up: &[u8], head: bool| {
            let mut out = Vec::new();
            match parse_head(up, head, false, &mut out) {
                Ok(Parsed::Final(h)) => (h.body, String::from_utf8(out).unwrap()),
                Ok(_) => panic!("{:?}: not final", String::from_utf8_lossy(up)),
                Err(e) => panic!("{:?}: {e:?}", String::from_utf8_lossy(up)),
            }
        };
        let cases: [(&[u8], bool, Option<&str>); 7] = [
            (b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\ncontent-length: abc\r\ncontent-length: 1, 2\r\n\r\n", false, None),
            (b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\ncontent-length: 7\r\n\r\n", false, None),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n", true, None),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5x\r\n\r\n", true, None),
            (b"HTTP/1.0 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n", false, None),
            // A HEAD answer's valid length (the GET's) still goes on, once.
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true, Some("5")),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n", true, Some("5")),
        ];
        for (up, head, length) in cases {
            let (body, out) = client(up, head);
            assert_eq!(body, Body::None, "{out}");
            assert!(!out.contains("transfer-encoding"), "{out}");
            let lengths: Vec<&str> = out
                .lines()
                .filter_map(|l| l.strip_prefix("content-length: "))
                .collect();
            assert_eq!(lengths, length.into_iter().collect::<Vec<_>>(), "{out}");
        }
    }

    #[test]
    fn content_length_is_plain_digits_within_u64() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"007"), Some(7));
        assert_eq!(content_length(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"18446744073709551616",
            b"+5",
            b"-0",
            b"5 ",
            b"1a",
            b"/",
            b":",
            "\u{661}".as_bytes(),
        ] {
            assert_eq!(
                content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn response_head_drops_hop_by_hop_and_adds_framing() {
        let head = |up: &[u8]| {
            let mut out = Vec::new();
            match parse_head(up, false, true, &mut out) {
                Ok(Parsed::Final(_)) => String::from_utf8(out).unwrap(),
                _ => panic!("not final"),
            }
        };
        let up = b"HTTP/1.1 200 Fine\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nX-Kept: yes\r\nDate: Thu, 26 Nov 2026 06:00:00 GMT\r\n\r\n";
        assert_eq!(
            head(up),
            "HTTP/1.1 200 Fine\r\nx-kept: yes\r\ndate: Thu, 26 Nov 2026 06:00:00 GMT\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        // Both framings from the upstream: chunked wins and the length does not reach
        // the client beside it.
        let both = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nDate: x\r\n\r\n";
        assert_eq!(
            head(both),
            "HTTP/1.1 200 OK\r\ndate: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        // A `keep-alive`-only field is not kept among the named; a later field's names
        // still are, and any name with `keep-alive` beside it too.
        let split = b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nX-Hop: 1\r\nConnection: x-hop\r\nConnection: keep-alive , X-Two\r\nX-Two: 2\r\nX-Kept: yes\r\nDate: x\r\n\r\n";
        assert_eq!(
            head(split),
            "HTTP/1.1 200 OK\r\nx-kept: yes\r\ndate: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        // Eight fields that name something are the most a response may carry; fields of
        // only `keep-alive` do not count towards them, and every named field is dropped.
        let naming = |n: usize, keep_alive: usize| {
            let mut up = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n".to_vec();
            for i in 0..n {
                up.extend_from_slice(
                    format!("Connection: x-hop-{i}\r\nX-Hop-{i}: 1\r\n").as_bytes(),
                );
            }
            // Empty list elements name nothing either.
            for value in [&b"keep-alive"[..], b"keep-alive, ", b", keep-alive,"]
                .iter()
                .cycle()
                .take(keep_alive)
            {
                up.extend_from_slice(b"Connection: ");
                up.extend_from_slice(value);
                up.extend_from_slice(b"\r\n");
            }
            up.extend_from_slice(b"X-Kept: yes\r\nDate: x\r\n\r\n");
            let mut out = Vec::new();
            match parse_head(&up, false, false, &mut out) {
                Ok(Parsed::Final(_)) => Ok(String::from_utf8(out).unwrap()),
                Ok(_) => panic!("not final"),
                Err(e) => Err(e),
            }
        };
        let kept = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-kept: yes\r\ndate: x\r\n\r\n";
        assert_eq!(naming(8, 3).as_deref(), Ok(kept));
        assert_eq!(
            naming(9, 0),
            Err(NoHead::Fault(UpstreamErrorKind::Protocol))
        );
    }
}

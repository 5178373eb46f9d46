//! The HTTP/1 fast path: plain requests without a body, forwarded without hyper.
//!
//! Most traffic through an API monitor is small bodiless requests (GET, HEAD, DELETE) on
//! keep-alive connections, and for those hyper's generality is most of the proxy's CPU:
//! a dispatch task and channels per upstream connection, a body channel per response, a
//! pool behind a lock, header maps built and taken apart on both sides. Here one task
//! per client connection parses the head in place (httparse), writes the rewritten head
//! to an upstream connection from its worker's own pool, parses the response head and
//! streams the body straight back — the way nginx does it.
//!
//! The fast path only takes what it fully understands: an HTTP/1.1 request on a plain
//! connection, complete in the first read, with no body, upgrade, `Expect` or anything
//! a limit or a framing check would refuse, on a route with a plain-HTTP upstream.
//! Anything else — and everything after it on that connection — goes to hyper's path
//! ([`Handoff`]), with the bytes already read replayed first, so HTTP/2, bodies, TLS,
//! smuggling probes and oversized heads keep their one well-tested treatment. Each
//! request is an [`Exchange`] as on hyper's path: counted once, logged, fed to detection.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::{HostHeader, RouteConfig};
use crate::forward::{self, Proxy};
use crate::generation::Live;
use crate::metrics::{Source, UpstreamErrorKind};
use crate::observe::Exchange;

/// Client read buffer; a head that does not fit in the first read goes to hyper.
const CLIENT_BUF: usize = 8 * 1024;
/// Upstream read buffer, kept with its pooled connection.
const UPSTREAM_BUF: usize = 16 * 1024;
/// Largest upstream response head accepted (hyper's client allows about as much).
const MAX_RESPONSE_HEAD: usize = 256 * 1024;
/// Most request headers parsed here (more: hyper's path, which answers 431 when needed).
const MAX_REQUEST_HEADERS: usize = 100;
/// Most response headers accepted, as hyper's client.
const MAX_RESPONSE_HEADERS: usize = 100;
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
    host: Vec<u8>,
    /// Idle connections, one pool per worker thread: a worker only ever touches its
    /// own, so the lock is never contended (and a connection stays on the runtime whose
    /// reactor it is registered with).
    pools: Box<[Mutex<VecDeque<Idle>>]>,
}

/// A pooled upstream connection with its read buffer.
struct UpConn {
    io: TcpStream,
    buf: Vec<u8>,
}

struct Idle {
    conn: UpConn,
    since: Instant,
}

impl FastRoute {
    /// The fast-path settings of a route, if its upstream is plain HTTP.
    pub fn new(route: &RouteConfig, workers: usize) -> Option<FastRoute> {
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
        })
    }

    fn pool(&self) -> &Mutex<VecDeque<Idle>> {
        &self.pools[forward::worker() % self.pools.len()]
    }

    /// An idle connection that still looks usable, if the pool has one.
    fn checkout(&self, idle_timeout: Duration) -> Option<UpConn> {
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

    fn checkin(&self, conn: UpConn, idle_timeout: Duration) {
        let mut pool = self.pool().lock().unwrap_or_else(|e| e.into_inner());
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

    async fn connect(&self, timeout: Duration) -> std::io::Result<UpConn> {
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
        Ok(UpConn {
            io,
            buf: Vec::with_capacity(UPSTREAM_BUF),
        })
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
}

/// Serves `io` on the fast path until it closes (None) or a request needs hyper.
pub async fn serve(
    io: TcpStream,
    peer: SocketAddr,
    live: Arc<Live>,
    mut stop: watch::Receiver<bool>,
) -> Option<Handoff> {
    let mut c = Client {
        io,
        peer,
        buf: Vec::with_capacity(CLIENT_BUF),
        out: Vec::with_capacity(1024),
        wrote: false,
    };
    loop {
        if c.buf.is_empty() {
            // Waiting for a request: bounded like hyper's head read, which also starts
            // while the connection is idle; a drain closes idle connections at once.
            let idle = live.load().config.proxy.header_read_timeout;
            tokio::select! {
                read = tokio::time::timeout(idle, c.io.read_buf(&mut c.buf)) => match read {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return None,
                },
                _ = stop.wait_for(|s| *s) => return None,
            }
        }
        let proxy = live.load().proxy.clone();
        let Some(planned) = plan(&proxy, &mut c) else {
            return Some(Replay::new(std::mem::take(&mut c.buf), c.io));
        };
        c.wrote = false;
        match (Caught {
            inner: Some(forward_one(&proxy, &mut c, planned)),
        })
        .await
        {
            Some(Next::Keep) if !proxy.is_draining() => {}
            Some(_) => return None,
            None => {
                // The exchange was counted (500, source=proxy) as the panic unwound.
                if !c.wrote {
                    c.out.clear();
                    local_head(
                        &mut c.out,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        crate::isolate::INTERNAL_ERROR_BODY.len(),
                        true,
                    );
                    c.out.extend_from_slice(crate::isolate::INTERNAL_ERROR_BODY);
                    let _ = c.io.write_all(&c.out).await;
                }
                return None;
            }
        }
    }
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
}

/// The request at the front of `c.buf`, if the fast path takes it: routed, its exchange
/// started, its upstream head in `c.out` and its bytes consumed. None leaves `c.buf`
/// untouched for hyper.
fn plan(proxy: &Arc<Proxy>, c: &mut Client) -> Option<Planned> {
    let limits = proxy.limits();
    let mut headers = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(&c.buf) {
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
    let mut forwarded_for = None;
    let mut forwarded_proto = None;
    let mut forwarded_host = None;
    let mut request_id = None;
    let mut client_close = false;
    let mut named = Named::default();
    let mut size = 0;
    for h in req.headers.iter() {
        size += h.name.len() + h.value.len() + 4;
        let name = h.name.as_bytes();
        if eq(name, b"content-length")
            || eq(name, b"transfer-encoding")
            || eq(name, b"upgrade")
            || eq(name, b"expect")
        {
            return None;
        } else if eq(name, b"connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    client_close = true;
                } else if !token.is_empty() && !named.add(token) {
                    return None;
                }
            }
        } else if eq(name, b"host") {
            if host.replace(h.value).is_some() {
                return None;
            }
        } else if eq(name, b"x-forwarded-for") {
            forwarded_for.get_or_insert(h.value);
        } else if eq(name, b"x-forwarded-proto") {
            forwarded_proto.get_or_insert(h.value);
        } else if eq(name, b"x-forwarded-host") {
            forwarded_host.get_or_insert(h.value);
        } else if eq(name, b"x-request-id") {
            request_id.get_or_insert(h.value);
        }
    }
    if size > limits.max_header_bytes {
        return None;
    }
    let host_str = match host {
        Some(h) => Some(std::str::from_utf8(h).ok()?),
        None => None,
    };
    let path = target.split('?').next().unwrap_or(target);
    let route = proxy.find_route(host_str, path);
    let (cfg, fast) = proxy.fast_route(route)?;
    let observer = proxy.observer();
    if observer
        .in_flight
        .load(std::sync::atomic::Ordering::Relaxed)
        >= limits.max_in_flight as u64
        || cfg.max_in_flight.is_some_and(|l| {
            observer.route_in_flight[route].load(std::sync::atomic::Ordering::Relaxed) >= l as u64
        })
    {
        return None;
    }
    let uri = Uri::from_maybe_shared(Bytes::copy_from_slice(target.as_bytes())).ok()?;
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let request_id = match request_id {
        Some(v) if !v.is_empty() && v.len() <= 200 => HeaderValue::from_bytes(v).ok()?,
        _ => forward::next_request_id(),
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
            id.identify(&map, c.peer.ip())
        }
        None => None,
    };

    // The upstream's head: RFC 9110 §7.6.1's hop-by-hop fields dropped, the forwarding
    // fields appended as on hyper's path, names lower-cased as hyper writes them.
    let out = &mut c.out;
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(cfg.base_path.as_bytes());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name)
            || named.contains(name)
            || eq(name, b"host")
            || eq(name, b"x-forwarded-for")
            || eq(name, b"x-forwarded-proto")
            || eq(name, b"x-forwarded-host")
            || eq(name, b"x-request-id")
        {
            continue;
        }
        put_header(out, name, h.value);
    }
    let upstream_host = match (cfg.host_header, host) {
        (HostHeader::Preserve, Some(h)) => h,
        _ => &fast.host[..],
    };
    put_header(out, b"host", upstream_host);
    let mut ip = [0u8; 64];
    put_appended(
        out,
        b"x-forwarded-for",
        forwarded_for,
        ip_bytes(c.peer, &mut ip),
    );
    put_appended(out, b"x-forwarded-proto", forwarded_proto, b"http");
    if let Some(h) = host {
        put_appended(out, b"x-forwarded-host", forwarded_host, h);
    }
    put_header(out, b"x-request-id", request_id.as_bytes());
    out.extend_from_slice(b"\r\n");

    let head_only = method == Method::HEAD;
    let mut ex = Exchange::start(observer.clone(), route, method, uri, request_id, c.peer);
    ex.set_consumer(consumer);
    c.buf.drain(..head_len);
    Some(Planned {
        route,
        ex,
        head_only,
        client_close,
    })
}

/// Forwards one planned request and streams its response back.
async fn forward_one(proxy: &Arc<Proxy>, c: &mut Client, p: Planned) -> Next {
    let Planned {
        route,
        mut ex,
        head_only,
        client_close,
    } = p;
    let (cfg, fast) = proxy
        .fast_route(route)
        .expect("planned requests have a fast route");
    let deadline = tokio::time::Instant::now() + cfg.timeout;

    // Phase 1: an upstream connection with the request head on it. A pooled one that
    // turns out closed when written to never saw the request: try the next.
    let mut up = loop {
        let (mut conn, fresh) = match fast.checkout(cfg.idle_timeout) {
            Some(conn) => (conn, false),
            None => {
                match tokio::time::timeout_at(deadline, fast.connect(cfg.connect_timeout)).await {
                    Ok(Ok(conn)) => (conn, true),
                    Ok(Err(e)) => {
                        return fail(c, ex, cfg, UpstreamErrorKind::Connect, &e.to_string()).await;
                    }
                    Err(_) => return fail(c, ex, cfg, UpstreamErrorKind::Timeout, "").await,
                }
            }
        };
        match conn.io.write_all(&c.out).await {
            Ok(()) => break conn,
            Err(_) if !fresh => continue,
            Err(e) => return fail(c, ex, cfg, UpstreamErrorKind::Reset, &e.to_string()).await,
        }
    };

    // Phase 2: the response head, while watching the client: a client that hangs up
    // now is a 499 (as with hyper's half_close off), and pipelined bytes are kept.
    up.buf.clear();
    let head = loop {
        let client_room = c.buf.len() < CLIENT_BUF;
        tokio::select! {
            biased;
            head = tokio::time::timeout_at(deadline, read_head(&mut up, head_only)) => break head,
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
    let head = match head {
        Ok(Ok(head)) => head,
        Ok(Err(kind)) => return fail(c, ex, cfg, kind, kind.label()).await,
        Err(_) => return fail(c, ex, cfg, UpstreamErrorKind::Timeout, "").await,
    };

    // Phase 3: the response.
    ex.respond(head.status, Source::Upstream);
    if let Some(map) = head.quota_headers.as_ref() {
        forward::note_upstream_headers(proxy.observer(), route, &mut ex, head.status, map);
    }
    let closing = client_close || proxy.is_draining();
    c.out.clear();
    write_response_head(&mut c.out, &up.buf[..head.len], &head, closing);
    let body_start = head.len;
    let mut reusable = head.keep_alive;
    let sent = match head.body {
        Body::None => {
            reusable &= up.buf.len() == body_start;
            write_client(c, &mut ex, 0).await
        }
        Body::Length(n) => {
            let have = (up.buf.len() - body_start) as u64;
            reusable &= have <= n;
            let first = have.min(n) as usize;
            c.out
                .extend_from_slice(&up.buf[body_start..body_start + first]);
            let sent = write_client(c, &mut ex, first).await;
            match sent {
                Ok(()) => stream_length(c, &mut ex, &mut up, n - first as u64, &mut reusable).await,
                Err(e) => Err(e),
            }
        }
        Body::Chunked => {
            let mut chunks = Chunks::default();
            let rest = &up.buf[body_start..];
            match chunks.feed(rest) {
                Err(()) => Err(Broken::Upstream),
                Ok(used) => {
                    let used = used.unwrap_or(rest.len());
                    reusable &= body_start + used == up.buf.len();
                    c.out
                        .extend_from_slice(&up.buf[body_start..body_start + used]);
                    match write_client(c, &mut ex, chunks.data as usize).await {
                        Ok(()) if chunks.done() => Ok(()),
                        Ok(()) => {
                            stream_chunked(c, &mut ex, &mut up, &mut chunks, &mut reusable).await
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
                Ok(()) => stream_until_close(c, &mut ex, &mut up).await,
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
        Err(Broken::Upstream) => {
            ex.upstream_error(UpstreamErrorKind::Reset);
            ex.complete();
            Next::Close
        }
    }
}

/// Which side broke a response in progress.
enum Broken {
    Client,
    Upstream,
}

/// Writes `c.out` (the head and, of it, `body` body bytes) to the client.
async fn write_client(c: &mut Client, ex: &mut Exchange, body: usize) -> Result<(), Broken> {
    c.wrote = true;
    c.io.write_all(&c.out).await.map_err(|_| Broken::Client)?;
    ex.sent(body as u64);
    Ok(())
}

/// Reads from the upstream into its buffer (from the start); 0 at its end.
async fn read_up(up: &mut UpConn) -> Result<usize, Broken> {
    up.buf.clear();
    up.io
        .read_buf(&mut up.buf)
        .await
        .map_err(|_| Broken::Upstream)
}

async fn stream_length(
    c: &mut Client,
    ex: &mut Exchange,
    up: &mut UpConn,
    mut left: u64,
    reusable: &mut bool,
) -> Result<(), Broken> {
    while left > 0 {
        let n = read_up(up).await?;
        if n == 0 {
            return Err(Broken::Upstream);
        }
        let take = (n as u64).min(left) as usize;
        // Bytes beyond the body: the connection's framing is in doubt.
        *reusable &= take == n;
        c.io.write_all(&up.buf[..take])
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
    chunks: &mut Chunks,
    reusable: &mut bool,
) -> Result<(), Broken> {
    while !chunks.done() {
        let n = read_up(up).await?;
        if n == 0 {
            return Err(Broken::Upstream);
        }
        let data_before = chunks.data;
        let used = chunks
            .feed(&up.buf[..n])
            .map_err(|()| Broken::Upstream)?
            .unwrap_or(n);
        *reusable &= used == n;
        c.io.write_all(&up.buf[..used])
            .await
            .map_err(|_| Broken::Client)?;
        ex.sent(chunks.data - data_before);
    }
    Ok(())
}

/// A body that ends when the upstream closes, re-framed as chunks so the client's
/// connection survives it.
async fn stream_until_close(
    c: &mut Client,
    ex: &mut Exchange,
    up: &mut UpConn,
) -> Result<(), Broken> {
    loop {
        let n = read_up(up).await?;
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

/// Answers the failure of an upstream exchange as hyper's path does (502/504).
async fn fail(
    c: &mut Client,
    mut ex: Exchange,
    cfg: &RouteConfig,
    kind: UpstreamErrorKind,
    detail: &str,
) -> Next {
    let (status, why) = forward::upstream_failure(&ex, cfg, kind, detail);
    ex.respond(status.as_u16(), Source::Proxy);
    c.out.clear();
    local_head(&mut c.out, status, why.len(), false);
    c.out.extend_from_slice(why.as_bytes());
    match write_client(c, &mut ex, why.len()).await {
        Ok(()) => {
            ex.complete();
            Next::Keep
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
enum Body {
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

/// Reads until a final (non-1xx) response head is complete; 1xx heads are dropped.
async fn read_head(up: &mut UpConn, head_only: bool) -> Result<Head, UpstreamErrorKind> {
    loop {
        if !up.buf.is_empty() {
            match parse_head(&up.buf, head_only)? {
                Parsed::Final(head) => return Ok(head),
                Parsed::Interim(len) => {
                    up.buf.drain(..len);
                    continue;
                }
                Parsed::Partial => {}
            }
            if up.buf.len() >= MAX_RESPONSE_HEAD {
                return Err(UpstreamErrorKind::Protocol);
            }
        }
        if up.buf.len() == up.buf.capacity() {
            up.buf.reserve(up.buf.capacity());
        }
        match up.io.read_buf(&mut up.buf).await {
            Ok(0) | Err(_) => return Err(UpstreamErrorKind::Reset),
            Ok(_) => {}
        }
    }
}

enum Parsed {
    Final(Head),
    Interim(usize),
    Partial,
}

fn parse_head(buf: &[u8], head_only: bool) -> Result<Parsed, UpstreamErrorKind> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(_) => return Err(UpstreamErrorKind::Protocol),
    };
    let status = resp.code.ok_or(UpstreamErrorKind::Protocol)?;
    if status == 101 {
        // Nothing asked to switch protocols.
        return Err(UpstreamErrorKind::Protocol);
    }
    if (100..200).contains(&status) {
        return Ok(Parsed::Interim(len));
    }
    let http11 = resp.version == Some(1);
    let mut keep_alive = http11;
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut quota = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if eq(name, b"content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(UpstreamErrorKind::Protocol)?;
            if length.is_some_and(|l| l != n) {
                return Err(UpstreamErrorKind::Protocol);
            }
            length = Some(n);
        } else if eq(name, b"transfer-encoding") {
            // Chunked must be the final coding for the length to be known (RFC 9112 §6.3).
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if eq(name, b"connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        } else if crate::quota::is_relevant(h.name) {
            quota = true;
        }
    }
    let body = if head_only || status == 204 || status == 304 {
        Body::None
    } else {
        match (chunked, length) {
            (Some(true), _) => Body::Chunked,
            (Some(false), _) => Body::UntilClose,
            (None, Some(0)) => Body::None,
            (None, Some(n)) => Body::Length(n),
            (None, None) => Body::UntilClose,
        }
    };
    let quota_headers = quota.then(|| {
        let mut map = HeaderMap::new();
        for h in resp.headers.iter() {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(h.name.as_bytes()),
                HeaderValue::from_bytes(h.value),
            ) {
                map.append(n, v);
            }
        }
        map
    });
    Ok(Parsed::Final(Head {
        len,
        status,
        body,
        keep_alive: keep_alive && body != Body::UntilClose,
        quota_headers,
    }))
}

/// The client's response head: the upstream's status line and end-to-end headers, the
/// framing this proxy sends, a Date if the upstream gave none.
fn write_response_head(out: &mut Vec<u8>, upstream_head: &[u8], head: &Head, close: bool) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    // Parsed once already; parsing the same bytes again cannot fail.
    let _ = resp.parse(upstream_head);
    let mut named = Named::default();
    for h in resp.headers.iter() {
        if eq(h.name.as_bytes(), b"connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                named.add(token);
            }
        }
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(head.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut dated = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name) || named.contains(name) {
            continue;
        }
        dated |= eq(name, b"date");
        put_header(out, name, h.value);
    }
    if matches!(head.body, Body::Chunked | Body::UntilClose) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Follows a chunked body (RFC 9112 §7.1) to find where it ends; bytes pass verbatim.
#[derive(Debug, Default)]
struct Chunks {
    state: ChunkState,
    /// Chunk data seen so far (what the client's body holds, framing aside).
    data: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum ChunkState {
    /// In a chunk-size line: the size so far, whether digits are over (extensions).
    #[default]
    SizeStart,
    Size {
        size: u64,
        ext: bool,
    },
    /// Chunk data left, then its CRLF.
    Data(u64),
    DataCr,
    DataLf,
    /// Trailer section: at the start of a line, or inside one.
    TrailerLineStart,
    TrailerLine,
    Done,
}

impl Chunks {
    fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Follows `data`; Some(n) when the body ends after its first n bytes.
    fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, ()> {
        use ChunkState::*;
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            self.state = match self.state {
                SizeStart => match hex(b) {
                    Some(d) => Size {
                        size: d,
                        ext: false,
                    },
                    None => return Err(()),
                },
                Size { size, ext } => match b {
                    b'\n' if size == 0 => TrailerLineStart,
                    b'\n' => Data(size),
                    b'\r' => Size { size, ext: true },
                    _ if ext => Size { size, ext },
                    b';' | b' ' | b'\t' => Size { size, ext: true },
                    _ => {
                        let d = hex(b).ok_or(())?;
                        let size = size.checked_mul(16).ok_or(())? + d;
                        Size { size, ext }
                    }
                },
                Data(left) => {
                    let take = (left as usize).min(data.len() - i);
                    i += take;
                    self.data += take as u64;
                    let left = left - take as u64;
                    self.state = if left == 0 { DataCr } else { Data(left) };
                    continue;
                }
                DataCr if b == b'\r' => DataLf,
                DataCr | DataLf if b == b'\n' => SizeStart,
                DataCr | DataLf => return Err(()),
                TrailerLineStart if b == b'\n' => Done,
                TrailerLineStart if b == b'\r' => TrailerLineStart,
                TrailerLineStart | TrailerLine if b == b'\n' => TrailerLineStart,
                TrailerLineStart | TrailerLine => TrailerLine,
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

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

/// Header names listed in a `Connection` field (besides close/keep-alive): hop-by-hop
/// too. Up to 8; a request naming more goes to hyper.
#[derive(Default)]
struct Named<'a> {
    names: [&'a [u8]; 8],
    len: usize,
}

impl<'a> Named<'a> {
    fn add(&mut self, name: &'a [u8]) -> bool {
        if self.len == self.names.len() {
            return false;
        }
        self.names[self.len] = name;
        self.len += 1;
        true
    }

    fn contains(&self, name: &[u8]) -> bool {
        self.names[..self.len].iter().any(|n| eq(name, n))
    }
}

fn eq(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// RFC 9110 §7.6.1's hop-by-hop fields (those a `Connection` field names aside).
fn is_hop_by_hop(name: &[u8]) -> bool {
    [
        &b"connection"[..],
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ]
    .iter()
    .any(|h| eq(name, h))
}

fn has_bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend(name.iter().map(u8::to_ascii_lowercase));
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `name: prev, value` as proxies in a chain append, or `name: value`.
fn put_appended(out: &mut Vec<u8>, name: &[u8], prev: Option<&[u8]>, value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    if let Some(prev) = prev.filter(|p| !p.is_empty()) {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn ip_bytes(peer: SocketAddr, buf: &mut [u8; 64]) -> &[u8] {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{}", peer.ip());
    let len = cursor.position() as usize;
    &buf[..len]
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
        let before = crate::isolate::failures();
        if let Some(polled) = crate::isolate::catch("request handler", || running.poll(cx)) {
            return polled.map(Some);
        }
        crate::isolate::discard(|| inner.set(None), before);
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

impl<S: AsyncWrite> AsyncWrite for Replay<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(follow(b"A\r\n0123456789\r\n0\n\n"), Some(18));
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
    }

    #[test]
    fn bare_lf_is_seen() {
        assert!(has_bare_lf(b"GET / HTTP/1.1\nHost: a\r\n\r\n"));
        assert!(!has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    }

    #[test]
    fn response_framing() {
        let p = |s: &[u8], head: bool| match parse_head(s, head) {
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
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                false
            ),
            (200, Body::Chunked, true)
        );
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
        assert!(matches!(
            parse_head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", false),
            Ok(Parsed::Interim(25))
        ));
        assert!(matches!(
            parse_head(
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                false
            ),
            Err(UpstreamErrorKind::Protocol)
        ));
    }

    #[test]
    fn response_head_drops_hop_by_hop_and_adds_framing() {
        let up = b"HTTP/1.1 200 Fine\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nX-Kept: yes\r\nDate: Thu, 26 Nov 2026 06:00:00 GMT\r\n\r\n";
        let head = match parse_head(up, false) {
            Ok(Parsed::Final(h)) => h,
            _ => panic!(),
        };
        let mut out = Vec::new();
        write_response_head(&mut out, &up[..head.len], &head, true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 Fine\r\nx-kept: yes\r\ndate: Thu, 26 Nov 2026 06:00:00 GMT\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
    }
}

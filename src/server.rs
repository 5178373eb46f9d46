//! Listeners and lifecycle: bind, accept, serve, drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::admin::Admin;
use crate::config::{Config, Overrides};
use crate::fastpath::Replay;
use crate::forward::{Arrival, Upgradable};
use crate::framing::{Framing, Watched};
use crate::generation::Live;
use crate::idle::{Activity, Starved, Tracked};
use crate::isolate::CatchPanic;
use crate::metrics::{method_index, ClientErrorKind};
use crate::send::SendClock;

/// Errors that stop `statuslens run` after the config was accepted.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// `proxy` or `admin`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// A worker thread could not be started.
    #[error("cannot start a worker thread: {0}")]
    Workers(std::io::Error),
}

/// The addresses the listeners were bound to (port 0 resolved).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Proxy listener.
    pub proxy: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
}

/// Runs the proxy and admin listeners until SIGTERM/SIGINT, then drains and returns.
/// `source` (the config file and flags) makes SIGHUP and `POST /api/reload` work.
pub async fn run(config: Config, source: Option<(PathBuf, Overrides)>) -> Result<(), RunError> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(RunError::Signals)?;
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
    };
    serve(config, source, None, stop).await
}

/// Runs until `shutdown` completes; `ready` receives the bound addresses.
///
/// The proxy listener is served by `proxy.workers` threads, each with its own
/// single-threaded runtime, its own `SO_REUSEPORT` socket on the listen address (the
/// kernel spreads connections across them) and its own upstream pools: a request lives
/// on one thread from accept to response, with no cross-thread wake-ups. Admin, spike
/// ticks and signals run on the caller's runtime.
pub async fn serve(
    config: Config,
    source: Option<(PathBuf, Overrides)>,
    ready: Option<tokio::sync::oneshot::Sender<Bound>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let live = Arc::new(Live::new(config.clone(), source));

    let proxy_listeners = bind_proxy(config.proxy.listen, config.proxy.workers)?;
    let admin_addr = config.admin_listen;
    let admin_listener = TcpListener::bind(admin_addr)
        .await
        .map_err(|source| RunError::Bind {
            what: "admin",
            addr: admin_addr,
            source,
        })?;
    let proxy_addr = proxy_listeners[0]
        .local_addr()
        .expect("bound socket has an address");
    let admin_addr = admin_listener
        .local_addr()
        .expect("bound socket has an address");

    let (stop_tx, stop_rx) = watch::channel(false);
    let admin = Arc::new(Admin::new(live.clone(), stop_rx.clone()));
    let detect_task = tokio::spawn(tick_detectors(live.clone()));
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(RunError::Signals)?;

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.proxy.header_read_timeout)
        // Leave room above our own limits so oversized heads reach the service and get a
        // counted 431 instead of hyper's uncounted one.
        .max_buf_size(
            (config.proxy.max_header_bytes + config.proxy.max_uri_bytes + 16 * 1024).max(8192),
        )
        .max_headers(config.proxy.max_headers + 100)
        // A FIN from the client before its response is read as "client gone", as nginx
        // does (499): with half-close on, a client that disconnects while the upstream
        // thinks could not be told from one that only stopped sending.
        .half_close(false);
    // The same room over HTTP/2: hyper's default list limit (16 KiB) answers 431 itself,
    // uncounted, below `max_header_bytes`. HPACK sizes count 32 bytes per field (RFC 7541
    // §4.1), and the target travels as :path.
    let list = config.proxy.max_header_bytes
        + config.proxy.max_uri_bytes
        + 32 * (config.proxy.max_headers + 100)
        + 16 * 1024;
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(list).unwrap_or(u32::MAX));

    let accepting = Arc::new(Accepting {
        live: live.clone(),
        builder,
        header_read_timeout: config.proxy.header_read_timeout,
    });
    let mut workers = Vec::with_capacity(proxy_listeners.len());
    for (index, listener) in proxy_listeners.into_iter().enumerate() {
        let accepting = accepting.clone();
        let stop = stop_rx.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("statuslens-w{index}"))
            .spawn(move || {
                crate::forward::enter_worker(index);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let drained = match runtime {
                    Ok(rt) => {
                        let drained = rt.block_on(accepting.serve(listener, stop));
                        // Past the drain timeout, what is still in flight ends here.
                        crate::observe::cut_in_flight(|| drop(rt));
                        drained
                    }
                    Err(e) => {
                        tracing::error!(worker = index, error = %e, "cannot start a worker runtime");
                        false
                    }
                };
                let _ = done_tx.send(drained);
            })
            .map_err(RunError::Workers)?;
        workers.push(done_rx);
    }
    let admin_task = tokio::spawn(serve_admin(admin_listener, admin));
    tracing::info!(
        proxy = %proxy_addr,
        admin = %admin_addr,
        routes = config.routes.len(),
        workers = workers.len(),
        version = env!("CARGO_PKG_VERSION"),
        "listening"
    );
    if let Some(tx) = ready {
        let _ = tx.send(Bound {
            proxy: proxy_addr,
            admin: admin_addr,
        });
    }

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                let live = live.clone();
                // Building upstream clients and reading files is blocking work.
                let _ = tokio::task::spawn_blocking(move || live.reload_and_log("SIGHUP")).await;
            }
            _ = &mut shutdown => break,
        }
    }

    tracing::info!(
        // The current configuration's: a reload may have changed it.
        drain_timeout_ms = live.load().config.proxy.drain_timeout.as_millis() as u64,
        "draining"
    );
    live.load().proxy.start_draining();
    let _ = stop_tx.send(true);
    let mut all_drained = true;
    for done in workers {
        all_drained &= done.await.unwrap_or(false);
    }
    if all_drained {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!("drain timeout reached; closed remaining connections");
    }
    admin_task.abort();
    detect_task.abort();
    Ok(())
}

/// Binds `workers` sockets to `addr` with `SO_REUSEPORT` (port 0: the port the first
/// one got), for worker runtimes to take over.
fn bind_proxy(addr: SocketAddr, workers: usize) -> Result<Vec<std::net::TcpListener>, RunError> {
    let mut bound = Vec::with_capacity(workers);
    let mut at = addr;
    let err = |source| RunError::Bind {
        what: "proxy",
        addr,
        source,
    };
    // SO_REUSEPORT would also let this process join another one's port and take part
    // of its traffic (a stale instance, a second start, a typo in --listen): the
    // address must be free first. One bind without it answers that, then goes.
    if addr.port() != 0 {
        let probe = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        };
        let probe = probe.map_err(err)?;
        probe.set_reuseaddr(true).map_err(err)?;
        probe.bind(addr).map_err(err)?;
    }
    for _ in 0..workers {
        let socket = if at.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(err)?;
        socket.set_reuseaddr(true).map_err(err)?;
        socket.set_reuseport(true).map_err(err)?;
        // As on upstream connections: notice a client that vanished without a FIN (a NAT
        // that forgot it). Set once here; accepted sockets inherit it (no syscall per
        // accept). Dead after 60 s quiet plus the kernel's probes (9 × 75 s by default).
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        socket2::SockRef::from(&socket)
            .set_tcp_keepalive(&keepalive)
            .map_err(err)?;
        socket.bind(at).map_err(err)?;
        let listener = socket.listen(4096).map_err(err)?;
        at = listener.local_addr().map_err(err)?;
        bound.push(listener.into_std().map_err(err)?);
    }
    Ok(bound)
}

/// What every worker shares to accept and serve client connections.
struct Accepting {
    live: Arc<Live>,
    builder: auto::Builder<TokioExecutor>,
    /// Bounds a TLS handshake, and how long a connection hyper serves may go without a
    /// request (see `idle`), as it bounds a request head.
    header_read_timeout: Duration,
}

impl Accepting {
    fn client_error(&self, kind: ClientErrorKind) {
        self.live.families().client_error(kind);
    }

    /// One worker: accepts on `listener` until `stop`, then drains; returns whether every
    /// connection finished within the drain timeout.
    async fn serve(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        mut stop: watch::Receiver<bool>,
    ) -> bool {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot register a proxy listener");
                return false;
            }
        };
        let graceful = GracefulShutdown::new();
        let sweeper = tokio::spawn(crate::fastpath::sweep_pools(self.live.clone()));
        let connection_stop = stop.clone();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        // An IPv4 client of a dual-stack listener (`[::]`) arrives as
                        // ::ffff:a.b.c.d. X-Forwarded-For, the log and consumer identity
                        // get the address it has, a.b.c.d (as Go's net/http reports it):
                        // upstream allowlists and IPv4 parsers expect that form.
                        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                        self.clone().connection(stream, peer, &graceful, connection_stop.clone())
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off, don't spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = stop.wait_for(|stop| *stop) => break,
            }
        }
        drop(listener);
        let drain_timeout = self.live.load().config.proxy.drain_timeout;
        let drained = tokio::time::timeout(drain_timeout, graceful.shutdown())
            .await
            .is_ok();
        sweeper.abort();
        drained
    }

    /// Reads a connection's PROXY protocol header by `deadline`: the client it names
    /// (`peer` for a health check) and the client's bytes read past it.
    /// None when the connection is to be closed: counted, unless it closed or idled out
    /// before sending a byte, as a TCP health check does, or a drain began.
    async fn proxy_header(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
        deadline: tokio::time::Instant,
        mut stop: watch::Receiver<bool>,
    ) -> Option<(SocketAddr, Vec<u8>)> {
        use crate::proxy_protocol::{read, Header, HeaderError};
        let mut buf = Vec::with_capacity(crate::fastpath::CLIENT_BUF);
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, read(stream, &mut buf)) => read,
            // No request exists yet: like an idle connection, it is closed at once.
            _ = stop.wait_for(|stop| *stop) => return None,
        };
        // The rest is handed to a side that may keep it for the connection's life
        // (hyper's through `Replay`): an empty one must hold no buffer.
        let rest = |buf: Vec<u8>| if buf.is_empty() { Vec::new() } else { buf };
        let error = match read {
            Ok(Ok(Header::Proxied(client))) => return Some((client, rest(buf))),
            Ok(Ok(Header::Local)) => return Some((peer, rest(buf))),
            Ok(Err(HeaderError::Closed(0))) => return None,
            Err(_) if buf.is_empty() => return None,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no complete PROXY protocol header within proxy.header_read_timeout".into(),
        };
        // Debug, like a failed TLS handshake: a scanner must not flood the log; the count
        // (and its alert) says that it happens, this says who and why.
        tracing::debug!(client = %peer, error = %error, "PROXY protocol header refused");
        self.client_error(ClientErrorKind::ProxyProtocol);
        None
    }

    fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        graceful: &GracefulShutdown,
        stop: watch::Receiver<bool>,
    ) {
        // Over the connection limit the connection is still served, so that its requests
        // get a counted 503 with Retry-After instead of a silent reset — up to a room of
        // a tenth more (64 at least). Past that it is a flood: each would cost a task, a
        // TLS handshake and a socket held up to header_read_timeout, so it is closed now.
        let generation = self.live.load();
        let max_connections = generation.config.proxy.max_connections;
        let open = self.live.families().connections_open();
        if open >= hard_limit(max_connections) {
            drop(stream);
            self.client_error(ClientErrorKind::OverLimit);
            return;
        }
        let _ = stream.set_nodelay(true);
        let overloaded = open >= max_connections as u64;
        // The certificate of the generation current at accept: a reload that re-read
        // rotated files serves them from the next connection on.
        let tls = generation
            .config
            .proxy
            .tls
            .as_ref()
            .map(|t| t.config.clone());
        let fast = generation.config.proxy.fast_path && !overloaded && tls.is_none();
        let proxy_protocol = generation.config.proxy.proxy_protocol;
        let send_timeout = generation.config.proxy.send_timeout;
        drop(generation);
        // Shared: an upgraded connection's tunnel keeps it after hyper lets go. Its
        // watcher, held from here, makes a drain wait for the connection — the fast
        // path's and tunnels too. The TLS handshake (if any) runs in the connection's
        // task, bounded like a request head, so a slow handshake never holds up accept().
        let guard = Arc::new(ConnectionGuard::new(self.clone(), graceful.watcher()));
        tokio::spawn(async move {
            // The PROXY header and the TLS handshake share one header_read_timeout, so a
            // peer slow at both gets no more time than one slow at either; hyper's clock
            // for the first request head starts after them.
            let deadline = tokio::time::Instant::now() + self.header_read_timeout;
            let mut stream = stream;
            // The balancer's header comes before everything, TLS included; the bytes read
            // past it are the client's, and go to whichever side serves the connection.
            let (peer, early) = if proxy_protocol {
                match self
                    .proxy_header(&mut stream, peer, deadline, stop.clone())
                    .await
                {
                    Some(read) => read,
                    None => return,
                }
            } else {
                (peer, Vec::new())
            };
            let is_tls = tls.is_some();
            let stream = match tls.map(tokio_rustls::TlsAcceptor::from) {
                None if fast => {
                    let live = self.live.clone();
                    match crate::fastpath::serve(stream, peer, early, live, stop.clone()).await {
                        None => return,
                        Some(rest) => rest.map(|inner| ClientStream::Plain { inner }),
                    }
                }
                None => Replay::new(early, ClientStream::Plain { inner: stream }),
                Some(acceptor) => {
                    let handshake = async {
                        // A client that closes before its first byte (a TCP health check)
                        // did not fail a handshake; one that closes inside it did, though
                        // rustls reports both as the same end of file.
                        if early.is_empty() && !matches!(stream.peek(&mut [0]).await, Ok(1..)) {
                            return None;
                        }
                        Some(acceptor.accept(Replay::new(early, stream)).await)
                    };
                    let mut stopping = stop.clone();
                    let outcome = tokio::select! {
                        outcome = tokio::time::timeout_at(deadline, handshake) => outcome,
                        // No request exists yet: a drain closes it at once, uncounted, as
                        // it does an idle connection or one owing its PROXY header.
                        _ = stopping.wait_for(|stop| *stop) => return,
                    };
                    match outcome {
                        Ok(None) => return,
                        Ok(Some(Ok(s))) => Replay::new(Vec::new(), ClientStream::Tls { inner: s }),
                        Ok(Some(Err(e))) => {
                            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                            self.client_error(ClientErrorKind::TlsHandshake);
                            return;
                        }
                        Err(_) => {
                            self.client_error(ClientErrorKind::TlsHandshake);
                            return;
                        }
                    }
                }
            };
            // hyper's side, built only for connections that reach it.
            let framing = Arc::new(Framing::default());
            let watched = framing.clone();
            let stalled = framing.clone();
            let live = self.live.clone();
            let activity = Activity::new();
            let requests = activity.clone();
            let hold: crate::forward::Hold = guard.clone();
            // Over the limit, the first request gets its 503 and the connection is then
            // closed: over HTTP/1.1 by the 503's `Connection: close`; HTTP/2 has no such
            // field (hyper drops it), so a GOAWAY is begun below, or a long-lived h2
            // client that connected in a moment of overload would get 503s for good.
            let shed = overloaded.then(|| Arc::new(tokio::sync::Notify::new()));
            let shed_on_request = shed.clone();
            // Each request takes the generation current when it arrives and keeps it to its
            // end: a reload never changes a request in flight.
            let service = service_fn(move |req| {
                let busy = requests.enter();
                // HTTP/1.1's 503 closes by itself, after hyper tries to read an unread
                // body (a close sooner could reset the answer away).
                if let Some(shed) = &shed_on_request {
                    if req.version() == http::Version::HTTP_2 {
                        shed.notify_one();
                    }
                }
                let arrival = Arrival {
                    client: peer,
                    overloaded,
                    tls: is_tls,
                    defect: framing.next_request_defect(),
                    // Only an HTTP/1 connection that stays open has a body left to read
                    // after its response: HTTP/1.1, or HTTP/1.0 asking to be kept alive
                    // (hyper keeps it so; with the body unread it closed after telling
                    // the client `keep-alive`, and the client's next request was lost).
                    activity: (!http_body::Body::is_end_stream(req.body()) && keeps_alive(&req))
                        .then(|| requests.clone()),
                    // hyper marks the requests that ask to upgrade (HTTP/1.1 only).
                    connection: req
                        .extensions()
                        .get::<hyper::upgrade::OnUpgrade>()
                        .is_some()
                        .then(|| Upgradable {
                            hold: hold.clone(),
                            framing: framing.clone(),
                        }),
                };
                let proxy = live.load().proxy.clone();
                let method = method_index(req.method());
                // HTTP/1 has `send_timeout` on its writes; HTTP/2's window is watched.
                let watch_takes = req.version() == http::Version::HTTP_2;
                let observer = proxy.observer().clone();
                let request = CatchPanic::start(observer, method, || proxy.handle(req, arrival));
                Tracked::new(request, busy, watch_takes)
            });
            let conn = self
                .builder
                .serve_connection_with_upgrades(
                    TokioIo::new(Watched::new(SendClock::new(stream, send_timeout), watched)),
                    service,
                )
                .into_owned();
            tokio::pin!(conn);
            // Shut down gracefully (HTTP/2: GOAWAY; streams in flight finish) on a drain,
            // or once no request has been in progress for the idle timeout. A connection
            // still open and idle for another timeout after that is dropped: hyper's
            // HTTP/2 close waits for the client to acknowledge a PING, which an idle
            // client that holds connections open need not do. `guard` is held until
            // the connection ends (or its tunnel does), so a drain waits for it.
            let timeout = self.header_read_timeout;
            // The clock also looks for HTTP/2 response bodies the client gives no window
            // to (see `idle`). Ticking at an eighth of `send_timeout` (a timer reset per
            // connection every 7.5 s by default) sends such a connection a GOAWAY between
            // 1 and 1.25 times `send_timeout` after its wait began, and closes it below.
            // Never more often than every 50 ms: a `send_timeout` of milliseconds must
            // not make every connection spin.
            let tick = timeout.min(send_timeout / 8).max(Duration::from_millis(50));
            let mut starved = Starved::default();
            let idle = tokio::time::sleep(tick);
            tokio::pin!(idle);
            let mut stop = stop;
            let mut closing = false;
            // This clock ran out and closed (or began to close) the connection.
            let mut idle_cut = false;
            let ended = loop {
                tokio::select! {
                    // The connection first: it is what wakes this task nearly every time.
                    biased;
                    ended = conn.as_mut() => break ended,
                    _ = stop.wait_for(|stop| *stop), if !closing => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    _ = async { shed.as_ref().expect("checked").notified().await },
                        if shed.is_some() && !closing =>
                    {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    _ = &mut idle => {
                        let now = tokio::time::Instant::now();
                        let still = starved.check(&activity);
                        match activity.idle_for() {
                            Some(quiet) if quiet >= timeout => {
                                idle_cut = true;
                                if closing {
                                    break Ok(());
                                }
                                conn.as_mut().graceful_shutdown();
                                closing = true;
                                idle.as_mut().reset(now + timeout);
                            }
                            Some(quiet) => idle.as_mut().reset(now + tick.min(timeout - quiet)),
                            None => {
                                if still >= send_timeout {
                                    // GOAWAY first: its other streams (an SSE stream
                                    // waiting on its upstream, an upload) may finish.
                                    // Closed once only starved responses are left, or
                                    // another send_timeout on: those would never end.
                                    // Their responses end as the client's (499).
                                    if !closing {
                                        conn.as_mut().graceful_shutdown();
                                        closing = true;
                                    }
                                    if activity.only_held() || still >= send_timeout * 2 {
                                        tracing::debug!(
                                            client = %peer,
                                            still_ms = still.as_millis() as u64,
                                            "closing an HTTP/2 connection whose client took \
                                             no response data for proxy.send_timeout"
                                        );
                                        break Ok(());
                                    }
                                }
                                idle.as_mut().reset(now + tick);
                            }
                        }
                    }
                }
            };
            // hyper's parser answered the head itself (400, 414, 431), or a clock ended
            // the connection inside a head — hyper's header timeout, or the idle one above
            // (whichever fires first; it alone ends a stalled HTTP/2 preface): no request
            // existed to count, so the connection is. Inside a head *when it ends*: the
            // idle clock's shutdown does not stop hyper reading a first head, which may
            // still arrive whole and be served (and counted as its response). The same
            // clocks closing a keep-alive connection idle between requests is no error.
            let hyper_error = ended.as_ref().err().and_then(|e| {
                tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                e.downcast_ref::<hyper::Error>()
            });
            if hyper_error.is_some_and(hyper::Error::is_parse) {
                self.client_error(ClientErrorKind::MalformedHead);
            } else if stalled.mid_head()
                && (idle_cut || hyper_error.is_some_and(hyper::Error::is_timeout))
            {
                self.client_error(ClientErrorKind::HeadTimeout);
            }
            drop(guard);
        });
    }
}

/// Open client connections past which new ones are closed at accept, unanswered:
/// `max_connections` and the room kept above it for counted 503s.
fn hard_limit(max_connections: usize) -> u64 {
    (max_connections as u64).saturating_add((max_connections as u64 / 10).max(64))
}

/// Whether an HTTP/1 request leaves its connection open after the response, as hyper
/// decides it: HTTP/1.1, or HTTP/1.0 with `Connection: keep-alive`.
fn keeps_alive<B>(req: &http::Request<B>) -> bool {
    match req.version() {
        http::Version::HTTP_11 => true,
        http::Version::HTTP_10 => req
            .headers()
            .get_all(http::header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"keep-alive")),
        _ => false,
    }
}

pin_project_lite::pin_project! {
    /// A client connection, plain or after its TLS handshake.
    #[project = ClientStreamProj]
    enum ClientStream {
        Plain { #[pin] inner: TcpStream },
        Tls { #[pin] inner: tokio_rustls::server::TlsStream<Replay<TcpStream>> },
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.project() {
            ClientStreamProj::Plain { inner } => inner.poll_read(cx, buf),
            ClientStreamProj::Tls { inner } => inner.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.project() {
            ClientStreamProj::Plain { inner } => inner.poll_write(cx, buf),
            ClientStreamProj::Tls { inner } => inner.poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.project() {
            ClientStreamProj::Plain { inner } => inner.poll_write_vectored(cx, bufs),
            ClientStreamProj::Tls { inner } => inner.poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain { inner } => inner.is_write_vectored(),
            ClientStream::Tls { inner } => inner.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.project() {
            ClientStreamProj::Plain { inner } => inner.poll_flush(cx),
            ClientStreamProj::Tls { inner } => inner.poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.project() {
            ClientStreamProj::Plain { inner } => inner.poll_shutdown(cx),
            ClientStreamProj::Tls { inner } => inner.poll_shutdown(cx),
        }
    }
}

/// Once a second, feeds the current generation's detectors the second's counts.
async fn tick_detectors(live: Arc<Live>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        live.tick_detection();
    }
}

/// An open client connection, from accept to close (an upgraded one's to its tunnel's
/// end): counted for `proxy.max_connections` and the connection metrics, and waited
/// for by a drain, up to `proxy.drain_timeout`.
struct ConnectionGuard {
    accepting: Arc<Accepting>,
    _drain: Watcher,
}

impl ConnectionGuard {
    fn new(accepting: Arc<Accepting>, drain: Watcher) -> Self {
        accepting.live.families().connection_opened();
        ConnectionGuard {
            accepting,
            _drain: drain,
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.accepting.live.families().connection_closed();
    }
}

/// Admin connections open at once. Scrapers, probes and an operator's curl need a
/// handful; the cap keeps a client that opens thousands (the admin port is often bound
/// to all interfaces for Kubernetes scrapes) from using up the file descriptors the
/// proxy shares.
const ADMIN_MAX_CONNECTIONS: usize = 256;
/// How long an admin connection may take to send a request head, and stay idle between
/// requests (hyper's clock does both once it has a timer).
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one admin connection is served before it is closed (gracefully: a response
/// in progress finishes, for up to `ADMIN_HEADER_TIMEOUT` more). hyper's clocks do not
/// cover writing a response, so a client that asks for `/metrics` and never reads it
/// would otherwise hold its place among `ADMIN_MAX_CONNECTIONS` for ever; a scraper
/// just opens a new connection.
const ADMIN_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves the admin endpoints until aborted; it keeps answering (`/readyz` says 503)
/// while the proxy drains.
async fn serve_admin(listener: TcpListener, admin: Arc<Admin>) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_TIMEOUT);
    let slots = Arc::new(tokio::sync::Semaphore::new(ADMIN_MAX_CONNECTIONS));
    loop {
        // At the cap, new connections wait in the listen backlog for a slot.
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off, don't spin.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        let conn = builder.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| admin.clone().handle(req)),
        );
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = tokio::time::sleep(ADMIN_CONNECTION_LIFETIME) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(ADMIN_HEADER_TIMEOUT, conn).await;
                }
            }
            drop(slot);
        });
    }
}

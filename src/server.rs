//! Listeners and lifecycle: bind, accept, serve, drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::config::{Config, Overrides};
use crate::forward::Arrival;
use crate::framing::{Framing, Watched};
use crate::generation::Live;
use crate::isolate::CatchPanic;
use crate::metrics::method_index;

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
    /// An upstream's TLS settings could not be loaded.
    #[error("upstream TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
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
pub async fn serve(
    config: Config,
    source: Option<(PathBuf, Overrides)>,
    ready: Option<tokio::sync::oneshot::Sender<Bound>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let live = Arc::new(Live::new(config.clone(), source)?);

    let bind = |what: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Bind { what, addr, source })
    };
    let proxy_listener = bind("proxy", config.proxy.listen).await?;
    let admin_listener = bind("admin", config.admin_listen).await?;
    let proxy_addr = proxy_listener
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
    tracing::info!(
        proxy = %proxy_addr,
        admin = %admin_addr,
        routes = config.routes.len(),
        version = env!("CARGO_PKG_VERSION"),
        "listening"
    );

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
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);

    let tls = match &config.proxy.tls {
        Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
            cert, key,
        )?)),
        None => None,
    };
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(AtomicUsize::new(0));
    let admin_task = tokio::spawn(serve_admin(admin_listener, admin));

    if let Some(tx) = ready {
        let _ = tx.send(Bound {
            proxy: proxy_addr,
            admin: admin_addr,
        });
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = proxy_listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                // Over the connection limit the connection is still served, so that its
                // requests get a counted 503 with Retry-After instead of a silent reset.
                let max_connections = live.load().config.proxy.max_connections;
                let overloaded = connections.load(Ordering::Relaxed) >= max_connections;
                let guard = ConnectionGuard::new(connections.clone());
                let live = live.clone();
                let is_tls = tls.is_some();
                // Each request takes the generation current when it arrives and keeps it
                // to its end: a reload never changes a request in flight.
                let framing = Arc::new(Framing::default());
                let watched = framing.clone();
                let service = service_fn(move |req| {
                    let arrival = Arrival {
                        client: peer,
                        overloaded,
                        tls: is_tls,
                        defect: framing.next_request_defect(),
                    };
                    let proxy = live.load().proxy.clone();
                    let method = method_index(req.method());
                    let observer = proxy.observer().clone();
                    CatchPanic::start(observer, method, || proxy.handle(req, arrival))
                });
                match &tls {
                    None => {
                        let conn = builder
                            .serve_connection_with_upgrades(TokioIo::new(Watched::new(stream, watched)), service)
                            .into_owned();
                        let conn = graceful.watch(conn);
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                            }
                            drop(guard);
                        });
                    }
                    Some(acceptor) => {
                        // The handshake runs in the connection's task, bounded like a
                        // request head, so a slow handshake never holds up accept().
                        let acceptor = acceptor.clone();
                        let builder = builder.clone();
                        let watcher = graceful.watcher();
                        let handshake_timeout = config.proxy.header_read_timeout;
                        tokio::spawn(async move {
                            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => return,
                            };
                            let conn = builder
                                .serve_connection_with_upgrades(TokioIo::new(Watched::new(stream, watched)), service)
                                .into_owned();
                            if let Err(e) = watcher.watch(conn).await {
                                tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                            }
                            drop(guard);
                        });
                    }
                }
            }
            _ = hangup.recv() => {
                let live = live.clone();
                // Building upstream clients and reading files is blocking work.
                let _ = tokio::task::spawn_blocking(move || live.reload_and_log("SIGHUP")).await;
            }
            _ = &mut shutdown => break,
        }
    }

    tracing::info!(
        drain_timeout_ms = config.proxy.drain_timeout.as_millis() as u64,
        "draining"
    );
    let _ = stop_tx.send(true);
    live.load().proxy.start_draining();
    drop(proxy_listener);
    match tokio::time::timeout(config.proxy.drain_timeout, graceful.shutdown()).await {
        Ok(()) => tracing::info!("drained; exiting"),
        Err(_) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
    admin_task.abort();
    detect_task.abort();
    Ok(())
}

/// Once a second, feeds the current generation's detectors the second's counts.
async fn tick_detectors(live: Arc<Live>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Some(d) = &live.load().detection {
            d.tick(d.now());
        }
    }
}

/// Counts an open client connection for `proxy.max_connections`.
struct ConnectionGuard(Arc<AtomicUsize>);

impl ConnectionGuard {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(count)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves the admin endpoints until aborted; it keeps answering (`/readyz` says 503)
/// while the proxy drains.
async fn serve_admin(listener: TcpListener, admin: Arc<Admin>) {
    let builder = hyper::server::conn::http1::Builder::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let admin = admin.clone();
                let conn = builder.serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req| admin.clone().handle(req)),
                );
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        }
    }
}

//! Panic isolation: a panic while one request is handled becomes that request's 500.
//!
//! tokio already keeps a panicking connection task from taking the process down, but
//! the client would see a bare reset and the request would be counted as a client that
//! left (499). [`CatchPanic`] catches the panic at the request's future, answers 500
//! with `Connection: close`, and the request's `Exchange` — dropped as the panic
//! unwinds or with the broken future — asks [`exchange_failed`] and counts
//! `500`/`source="proxy"`, once. A panic while the response body streams ends that body
//! early, counted the same.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::metrics::Source;
use crate::observe::{ObservedBody, Observer, ResponseInner};

thread_local! {
    /// Set while a request future that panicked is dropped on this thread.
    static DISCARDING: Cell<bool> = const { Cell::new(false) };
    /// Exchanges counted as failed on this thread, ever.
    static FAILED: Cell<u64> = const { Cell::new(0) };
}

/// Asked by an exchange that ends without a complete response: did statuslens itself
/// fail it — dropped while a panic unwinds, or as part of a future that panicked? If
/// so it counts a 500 from the proxy instead of a client abort.
pub fn exchange_failed() -> bool {
    let failed = std::thread::panicking() || DISCARDING.with(Cell::get);
    if failed {
        FAILED.with(|f| f.set(f.get() + 1));
    }
    failed
}

/// The body of the 500 a panicking request gets.
pub const INTERNAL_ERROR_BODY: &[u8] = b"statuslens failed on this request; see its log\n";

/// Runs `f`; if it panics, logs the panic and returns `None`.
pub fn catch<T>(what: &'static str, f: impl FnOnce() -> T) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            tracing::error!(panic = message, "{what} panicked; answered 500");
            None
        }
    }
}

/// Drops `f` as the remains of a request that panicked: an exchange inside it counts
/// the failure. Returns whether one did (here or while the panic unwound, since
/// `before`, a reading of [`failures`]).
pub fn discard<T>(f: impl FnOnce() -> T, before: u64) -> (Option<T>, bool) {
    DISCARDING.with(|d| d.set(true));
    // Dropping the broken state may panic too; that must not escape either.
    let out = catch_unwind(AssertUnwindSafe(f)).ok();
    DISCARDING.with(|d| d.set(false));
    (out, failures() != before)
}

/// Exchanges counted as failed on this thread so far.
pub fn failures() -> u64 {
    FAILED.with(Cell::get)
}

pin_project_lite::pin_project! {
    /// A request future whose panic is answered with 500 instead of a reset.
    #[project = CatchProj]
    #[project_replace = CatchReplace]
    pub enum CatchPanic<F> {
        /// Being polled.
        Running {
            #[pin]
            inner: F,
            observer: Arc<Observer>,
            method: usize,
        },
        /// Panicked and dropped.
        Failed,
    }
}

impl<F> CatchPanic<F> {
    /// Runs `start`, a request's synchronous first phase (routing, the exchange's start),
    /// and guards the future it returns; `method` is the request's method index.
    pub fn start(observer: Arc<Observer>, method: usize, start: impl FnOnce() -> F) -> Self {
        let before = failures();
        match catch("request handler", start) {
            Some(inner) => CatchPanic::Running {
                inner,
                observer,
                method,
            },
            None => {
                if failures() == before {
                    count_unrouted(&observer, method);
                }
                CatchPanic::Failed
            }
        }
    }
}

/// Counts a request that failed before its exchange started (so before any await: no
/// time had passed) on the unmatched route.
pub fn count_unrouted(observer: &Observer, method: usize) {
    let m = &observer.metrics;
    m.record(m.unmatched(), method, 500, Source::Proxy, 0.0);
}

impl<F> Future for CatchPanic<F>
where
    F: Future<Output = Result<Response<ObservedBody>, Infallible>>,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let CatchProj::Running { inner, .. } = self.as_mut().project() else {
            return Poll::Ready(Ok(internal_error()));
        };
        let before = failures();
        if let Some(polled) = catch("request handler", || inner.poll(cx)) {
            return polled;
        }
        let (replaced, counted) =
            discard(|| self.as_mut().project_replace(CatchPanic::Failed), before);
        if let (
            Some(CatchReplace::Running {
                observer, method, ..
            }),
            false,
        ) = (replaced, counted)
        {
            count_unrouted(&observer, method);
        }
        Poll::Ready(Ok(internal_error()))
    }
}

fn internal_error() -> Response<ObservedBody> {
    let body = Bytes::from_static(INTERNAL_ERROR_BODY);
    let mut resp = Response::new(ObservedBody::unobserved(ResponseInner::Local(Some(body))));
    *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // Whatever the request left unread on the connection is in doubt.
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};
    use crate::generation::Live;
    use crate::observe::Exchange;
    use http::{Method, Uri};
    use http_body_util::BodyExt;

    fn observer() -> Arc<Observer> {
        let config = Config::from_flags(&Overrides {
            upstream: Some("http://127.0.0.1:9".into()),
            ..Default::default()
        })
        .unwrap();
        let live = Live::new(config, None);
        let observer = live.load().proxy.observer().clone();
        observer
    }

    /// `statuslens_responses_total` samples as (route, code, source, value).
    fn responses(o: &Observer) -> Vec<(String, String, String, f64)> {
        let text = String::from_utf8(o.metrics.render()).unwrap();
        let label = |line: &str, name: &str| {
            let start = line.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            line[start..].split('"').next().unwrap().to_string()
        };
        text.lines()
            .filter(|l| l.starts_with("statuslens_responses_total{"))
            .map(|l| {
                let value: f64 = l.rsplit(' ').next().unwrap().parse().unwrap();
                (
                    label(l, "route"),
                    label(l, "code"),
                    label(l, "source"),
                    value,
                )
            })
            .filter(|s| s.3 > 0.0)
            .collect()
    }

    async fn answer(
        f: impl Future<Output = Result<Response<ObservedBody>, Infallible>>,
    ) -> (u16, Bytes) {
        let resp = f.await.unwrap();
        let status = resp.status().as_u16();
        assert_eq!(resp.headers()[header::CONNECTION], "close");
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }

    #[tokio::test]
    async fn a_panic_mid_request_is_a_500_counted_once_from_the_proxy() {
        let o = observer();
        let started = o.clone();
        let request = async move {
            let _ex = Exchange::start(
                started,
                0,
                Method::POST,
                Uri::from_static("/orders"),
                HeaderValue::from_static("id-1"),
                "127.0.0.1:1".parse().unwrap(),
            );
            tokio::task::yield_now().await;
            if _ex.request_id() == "id-1" {
                panic!("bug while forwarding");
            }
            Ok(Response::new(ObservedBody::unobserved(
                ResponseInner::Local(None),
            )))
        };
        let (status, body) = answer(CatchPanic::start(o.clone(), 2, || request)).await;
        assert_eq!(status, 500);
        assert!(body.starts_with(b"statuslens failed"));
        assert_eq!(
            responses(&o),
            [("default".into(), "500".into(), "proxy".into(), 1.0)]
        );
        assert_eq!(o.in_flight.load(std::sync::atomic::Ordering::Relaxed), 0);
        // The flag does not leak: the next dropped exchange is a client abort again.
        drop(Exchange::start(
            o.clone(),
            0,
            Method::GET,
            Uri::from_static("/"),
            HeaderValue::from_static("id-2"),
            "127.0.0.1:1".parse().unwrap(),
        ));
        assert!(responses(&o).contains(&("default".into(), "499".into(), "client".into(), 1.0)));
    }

    #[tokio::test]
    async fn a_panic_in_the_synchronous_phase_is_a_500_counted_once() {
        let o = observer();
        type Ready = std::future::Ready<Result<Response<ObservedBody>, Infallible>>;
        let (status, _) = answer(CatchPanic::<Ready>::start(o.clone(), 0, || {
            panic!("bug while routing")
        }))
        .await;
        assert_eq!(status, 500);
        assert_eq!(
            responses(&o),
            [("unmatched".into(), "500".into(), "proxy".into(), 1.0)]
        );
        // After its exchange started, the exchange counts it (on its route).
        let started = o.clone();
        let (status, _) = answer(CatchPanic::<Ready>::start(o.clone(), 0, move || {
            let _ex = Exchange::start(
                started,
                0,
                Method::GET,
                Uri::from_static("/"),
                HeaderValue::from_static("id-4"),
                "127.0.0.1:1".parse().unwrap(),
            );
            panic!("bug after the exchange started")
        }))
        .await;
        assert_eq!(status, 500);
        assert_eq!(
            responses(&o),
            [
                ("default".into(), "500".into(), "proxy".into(), 1.0),
                ("unmatched".into(), "500".into(), "proxy".into(), 1.0)
            ]
        );
    }

    #[tokio::test]
    async fn a_panic_before_routing_is_counted_on_unmatched() {
        let o = observer();
        let request = async {
            if o.route_names.len() > 1 {
                panic!("bug while routing");
            }
            Ok(Response::new(ObservedBody::unobserved(
                ResponseInner::Local(None),
            )))
        };
        let (status, _) = answer(CatchPanic::start(o.clone(), 0, || request)).await;
        assert_eq!(status, 500);
        assert_eq!(
            responses(&o),
            [("unmatched".into(), "500".into(), "proxy".into(), 1.0)]
        );
    }

    #[tokio::test]
    async fn a_panic_while_the_body_streams_ends_it_and_counts_a_500() {
        let o = observer();
        let ex = Exchange::start(
            o.clone(),
            0,
            Method::GET,
            Uri::from_static("/report"),
            HeaderValue::from_static("id-3"),
            "127.0.0.1:1".parse().unwrap(),
        );
        let body = ObservedBody::new(ResponseInner::Panics, ex);
        let collected = body.collect().await.unwrap().to_bytes();
        assert!(collected.is_empty());
        assert_eq!(
            responses(&o),
            [("default".into(), "500".into(), "proxy".into(), 1.0)]
        );
    }

    /// Over a real connection: the panicking request gets its 500, and the server goes
    /// on serving other connections.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_server_keeps_serving_after_a_request_panics() {
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let o = observer();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_observer = o.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let o = server_observer.clone();
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let o = o.clone();
                    let request = async move {
                        assert_ne!(req.uri().path(), "/panic", "bug on this path");
                        Ok(Response::new(ObservedBody::unobserved(
                            ResponseInner::Local(Some(Bytes::from_static(b"fine"))),
                        )))
                    };
                    CatchPanic::start(o, 0, || request)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        let exchange = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(head.as_bytes()).await.unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).await.unwrap();
            got
        };
        let failed = exchange("/panic").await;
        assert!(failed.starts_with("HTTP/1.1 500 "), "{failed}");
        for _ in 0..3 {
            let ok = exchange("/ok").await;
            assert!(
                ok.starts_with("HTTP/1.1 200 ") && ok.ends_with("fine"),
                "{ok}"
            );
        }
        assert_eq!(
            responses(&o),
            [("unmatched".into(), "500".into(), "proxy".into(), 1.0)]
        );
    }
}

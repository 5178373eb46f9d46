//! Idle client connections: how long one served by hyper has had no request in progress.
//!
//! hyper's HTTP/1 server closes a keep-alive connection that sends no next head within
//! its header timeout, but its HTTP/2 server (and the protocol detection before either)
//! has no such clock: an h2c or TLS client could hold a connection open for good without
//! a request, each one counting against `proxy.max_connections`. [`Activity`] counts a
//! connection's requests from the service call until hyper drops the response body
//! (the request's whole life on the connection), and notes when the last one ended; the
//! connection's task asks [`Activity::idle_for`] to decide when to shut it down
//! gracefully (HTTP/2: GOAWAY, streams in flight finish).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

/// One client connection's requests in progress, and since when it has had none.
#[derive(Debug)]
pub struct Activity {
    /// When the connection was accepted: the origin of `quiet_since`.
    base: Instant,
    active: AtomicUsize,
    /// When the last request ended (or the connection began), as nanoseconds after `base`.
    quiet_since: AtomicU64,
}

impl Activity {
    /// A connection accepted now, with no request yet.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            base: Instant::now(),
            active: AtomicUsize::new(0),
            quiet_since: AtomicU64::new(0),
        })
    }

    /// Marks a request in progress until the returned guard is dropped.
    pub fn enter(self: &Arc<Self>) -> Busy {
        self.active.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// How long the connection has had no request in progress; `None` while one is.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = Duration::from_nanos(self.quiet_since.load(Ordering::SeqCst));
        Some(self.base.elapsed().saturating_sub(since))
    }
}

/// A request in progress on a connection (see [`Activity::enter`]).
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        // The time first: whoever sees no request in progress sees when the last ended.
        let now = a.base.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        a.quiet_since.fetch_max(now, Ordering::SeqCst);
        a.active.fetch_sub(1, Ordering::SeqCst);
    }
}

pin_project_lite::pin_project! {
    /// A request's future whose response body carries its [`Busy`] guard.
    pub struct Tracked<F> {
        #[pin]
        fut: F,
        busy: Option<Busy>,
    }
}

impl<F> Tracked<F> {
    /// Tracks `fut`, the request `busy` stands for.
    pub fn new(fut: F, busy: Busy) -> Self {
        Tracked {
            fut,
            busy: Some(busy),
        }
    }
}

impl<F, B, E> Future for Tracked<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.fut.poll(cx));
        let busy = this.busy.take();
        Poll::Ready(out.map(|resp| resp.map(|inner| TrackedBody { inner, _busy: busy })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its request's [`Busy`] until hyper drops it.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        _busy: Option<Busy>,
    }
}

impl<B> Body for TrackedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_time_counts_from_the_last_request_and_not_during_one() {
        let a = Activity::new();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(a.idle_for(), Some(Duration::from_secs(3)));
        let first = a.enter();
        let second = a.enter();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(a.idle_for(), None);
        drop(first);
        assert_eq!(a.idle_for(), None, "one request still in progress");
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(second);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(a.idle_for(), Some(Duration::from_secs(2)));
    }
}

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
//!
//! It also sees an HTTP/2 client that starves its responses of flow-control window
//! while it goes on reading its socket: hyper then stops polling those bodies and
//! writes nothing, so no write waits and `proxy.send_timeout`'s clock (see `send`)
//! never starts — yet each such response holds its in-flight slot and its upstream
//! connection. [`TrackedBody`] counts an HTTP/2 body as *held* from when hyper gets it
//! and again after each chunk it yields, until hyper polls it once more (hyper 1.12
//! takes one chunk, then waits for window before it polls again); a body waiting on its
//! upstream is not held. The connection's task ([`Starved`]) tells a connection whose
//! held bodies saw no take for `send_timeout` to go away (GOAWAY: its other streams may
//! finish), and closes it once only held bodies are left, or another `send_timeout`
//! on. Per connection, not per stream: hyper offers no way to reset one stream from its
//! body, and a body it does not poll cannot fail.

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
    /// HTTP/2 response bodies with a chunk ready that hyper has not taken.
    held: AtomicUsize,
    /// Moves each time hyper comes back for a held body, and when one becomes held while
    /// none was: while it stands still, the same wait goes on.
    moves: AtomicU64,
}

impl Activity {
    /// A connection accepted now, with no request yet.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            base: Instant::now(),
            active: AtomicUsize::new(0),
            quiet_since: AtomicU64::new(0),
            held: AtomicUsize::new(0),
            moves: AtomicU64::new(0),
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

    /// While a response body waits on the client: a count that moves each time hyper
    /// takes from one (or a wait begins anew). `None` while none waits.
    pub fn held(&self) -> Option<u64> {
        // Relaxed: a connection's tasks (its streams' too) run on its worker's
        // single-threaded runtime; and a late read would only move a tick.
        (self.held.load(Ordering::Relaxed) > 0).then(|| self.moves.load(Ordering::Relaxed))
    }

    /// Whether every request in progress is a held response body: nothing on the
    /// connection could still finish.
    pub fn only_held(&self) -> bool {
        self.held.load(Ordering::Relaxed) >= self.active.load(Ordering::SeqCst)
    }

    fn hold(&self) {
        // A client that opens a stream while others starve does not restart the wait.
        if self.held.fetch_add(1, Ordering::Relaxed) == 0 {
            self.moves.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A held body is held no more, and the client took nothing (dropped, or hyper's
    /// first poll of a new body).
    fn release(&self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
    }

    fn take(&self) {
        self.release();
        self.moves.fetch_add(1, Ordering::Relaxed);
    }
}

/// How long a connection's held response bodies have gone without a take, as seen by
/// the connection's task at its ticks.
#[derive(Debug)]
pub struct Starved {
    moves: Option<u64>,
    since: Instant,
}

impl Default for Starved {
    /// Nothing seen yet.
    fn default() -> Starved {
        Starved {
            moves: None,
            since: Instant::now(),
        }
    }
}

impl Starved {
    /// How long, as of now, bodies have been held with no take (zero when none is held).
    /// It counts from the first tick that saw the wait, so a wait is seen up to a tick
    /// late — never early.
    pub fn check(&mut self, activity: &Activity) -> Duration {
        let now = Instant::now();
        let moves = activity.held();
        if moves.is_none() || moves != self.moves {
            self.moves = moves;
            self.since = now;
        }
        match moves {
            Some(_) => now - self.since,
            None => Duration::ZERO,
        }
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
        watch_takes: bool,
    }
}

impl<F> Tracked<F> {
    /// Tracks `fut`, the request `busy` stands for; `watch_takes` (HTTP/2) also counts
    /// its response body as held while it waits on the client.
    pub fn new(fut: F, busy: Busy, watch_takes: bool) -> Self {
        Tracked {
            fut,
            busy: Some(busy),
            watch_takes,
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
        Poll::Ready(out.map(|resp| {
            resp.map(|inner| {
                let watch = *this.watch_takes && busy.is_some();
                if let (true, Some(busy)) = (watch, &busy) {
                    busy.0.hold();
                }
                TrackedBody {
                    inner,
                    busy,
                    watch,
                    held: watch,
                    polled: false,
                }
            })
        }))
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its request's [`Busy`] until hyper drops it, and
    /// (HTTP/2) counts itself held while it has a chunk ready hyper has not taken.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        busy: Option<Busy>,
        // HTTP/2: whether this body's takes are watched at all, whether it is held, and
        // whether hyper has polled it yet.
        watch: bool,
        held: bool,
        polled: bool,
    }

    impl<B> PinnedDrop for TrackedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let (true, Some(busy)) = (*this.held, this.busy.as_ref()) {
                busy.0.release();
            }
        }
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
        let this = self.project();
        let Some(busy) = this.busy.as_ref().filter(|_| *this.watch) else {
            return this.inner.poll_frame(cx);
        };
        if *this.held {
            // hyper polls a new body at once, window or not: only a poll after a chunk
            // is the client taking something. Else one new answer per send_timeout
            // would keep a connection of starved streams alive.
            if *this.polled {
                busy.0.take();
            } else {
                busy.0.release();
            }
            *this.held = false;
        }
        *this.polled = true;
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            // The next chunk waits for hyper to come back, and hyper waits for window.
            busy.0.hold();
            *this.held = true;
        }
        polled
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

    #[tokio::test(start_paused = true)]
    async fn a_new_bodys_first_poll_is_no_take() {
        use http_body_util::{BodyExt, Full};
        let a = Activity::new();
        let mut s = Starved::default();
        let starved = a.enter();
        a.hold();
        s.check(&a);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(s.check(&a), Duration::from_secs(1));
        // A new answer arrives; hyper polls its body at once, before any window.
        let answer =
            async { Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("x")))) };
        let mut body = Tracked::new(answer, a.enter(), true)
            .await
            .unwrap()
            .into_body();
        assert!(body.frame().await.is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            s.check(&a),
            Duration::from_secs(2),
            "the first poll restarted the wait"
        );
        // Polled again after its chunk: the client took something.
        assert!(body.frame().await.is_none());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(s.check(&a), Duration::ZERO);
        drop((body, starved));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_lasts_while_held_bodies_see_no_take() {
        let a = Activity::new();
        let mut s = Starved::default();
        let tick = || tokio::time::advance(Duration::from_secs(1));
        assert_eq!(s.check(&a), Duration::ZERO, "nothing held");
        a.hold();
        assert_eq!(
            s.check(&a),
            Duration::ZERO,
            "counted from the tick that saw it"
        );
        tick().await;
        assert_eq!(s.check(&a), Duration::from_secs(1));
        // A second stream starved beside the first (or in place of one the client
        // reset) does not restart the wait.
        a.hold();
        a.release();
        tick().await;
        assert_eq!(s.check(&a), Duration::from_secs(2));
        // A take does, though another body stays held.
        a.hold();
        a.take();
        tick().await;
        assert_eq!(s.check(&a), Duration::ZERO);
        tick().await;
        assert_eq!(s.check(&a), Duration::from_secs(1));
        // So does a moment with nothing held, even between two ticks.
        a.release();
        a.hold();
        tick().await;
        assert_eq!(s.check(&a), Duration::ZERO);
        a.release();
        tick().await;
        assert_eq!(s.check(&a), Duration::ZERO, "nothing held");
    }
}

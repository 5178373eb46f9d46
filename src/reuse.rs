//! hyper's upstream connections, watched for what a resend needs to know.
//!
//! The fast pools know whether a request went on a pooled connection and whether a
//! byte of answer came (`fastpath::may_resend`). hyper's client knows neither once a
//! request has failed. [`Watching`] wraps its connector so that every connection keeps
//! [`Turns`]: how many requests it has carried and whether the current one heard
//! anything. A failed request finds them in its error's connection info.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One connection's request/response turns, as its bytes show them.
#[derive(Debug, Default)]
pub struct Turns {
    /// Requests begun: a write after the connection last read (or the first write).
    requests: AtomicU32,
    /// The current request has heard a byte back.
    heard: AtomicBool,
}

impl Turns {
    /// The connection carried an earlier request, and the current one heard nothing.
    pub fn reused_and_unanswered(&self) -> bool {
        self.requests.load(Ordering::Relaxed) > 1 && !self.heard.load(Ordering::Relaxed)
    }

    fn wrote(&self) {
        // A write after a byte was heard starts the next request (HTTP/1.1: one at a
        // time per connection, as hyper's client sends them).
        if self.heard.swap(false, Ordering::Relaxed) || self.requests.load(Ordering::Relaxed) == 0 {
            self.requests.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The turns of the connection a failed request went on, if it got one.
pub fn turns_of(err: &hyper_util::client::legacy::Error) -> Option<Arc<Turns>> {
    let mut extensions = http::Extensions::new();
    err.connect_info()?.get_extras(&mut extensions);
    extensions.get::<Arc<Turns>>().cloned()
}

/// A connector whose connections keep their [`Turns`], counting each one it opens.
#[derive(Debug, Clone)]
pub struct Watching<C> {
    inner: C,
    opened: IntCounter,
}

impl<C> Watching<C> {
    /// Wraps `inner`; `opened` counts its connections (the route's
    /// `statuslens_upstream_connections_total`).
    pub fn new(inner: C, opened: IntCounter) -> Self {
        Watching { inner, opened }
    }
}

/// A connection of [`Watching`]: hyper's IO in tokio's terms (safe byte counting), and
/// back.
pub type WatchedConn<T> = TokioIo<Watched<TokioIo<T>>>;

impl<C> tower_service::Service<Uri> for Watching<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
    C::Response: hyper::rt::Read + hyper::rt::Write + Connection + Unpin,
{
    type Response = WatchedConn<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, C::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), C::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // Boxed: a connection is made far less often than a request is sent.
        let connecting = self.inner.call(uri);
        let opened = self.opened.clone();
        Box::pin(async move {
            let io = connecting.await?;
            opened.inc();
            Ok(TokioIo::new(Watched {
                io: TokioIo::new(io),
                turns: Arc::new(Turns::default()),
            }))
        })
    }
}

/// An upstream connection that keeps its [`Turns`].
#[derive(Debug)]
pub struct Watched<T> {
    io: T,
    turns: Arc<Turns>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.turns.heard.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.turns.wrote();
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.turns.wrote();
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<T: Connection> Connection for Watched<TokioIo<T>> {
    fn connected(&self) -> Connected {
        self.io.inner().connected().extra(self.turns.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_follow_writes_and_reads() {
        let t = Turns::default();
        t.wrote();
        t.wrote(); // the same request, in two writes
        assert!(!t.reused_and_unanswered(), "first request");
        t.heard.store(true, Ordering::Relaxed);
        t.wrote(); // the second request
        assert!(t.reused_and_unanswered());
        t.heard.store(true, Ordering::Relaxed);
        assert!(!t.reused_and_unanswered(), "answered");
    }
}

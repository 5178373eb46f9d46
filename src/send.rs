//! Writing responses to clients, bounded by `proxy.send_timeout` (nginx's `send_timeout`).
//!
//! A client that stops reading (a zero TCP window) held its response, its in-flight
//! slot and the upstream connection behind it for good: no clock ran while a write
//! waited. Here a write may wait for room in the socket at most `send_timeout` at a
//! time — measured between two writes that move bytes, so a slow reader that keeps
//! taking data is never cut. The clock is armed only when a write has to wait: a socket
//! with room (nearly every write) costs no timer.

use std::future::Future;
use std::io::{self, ErrorKind, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// The error a write gives up with: the client took nothing for `limit`.
fn stalled(limit: Duration) -> io::Error {
    io::Error::new(
        ErrorKind::TimedOut,
        format!("the client took no response bytes for {limit:?} (proxy.send_timeout)"),
    )
}

/// Writes all of `buf` to `io`, waiting for room at most `limit` at a time.
pub async fn write_all(io: &TcpStream, mut buf: &[u8], limit: Duration) -> io::Result<()> {
    while !buf.is_empty() {
        match io.try_write(buf) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => room(io, limit).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes some of `bufs` to `io`, waiting for room at most `limit`.
pub async fn write_vectored(
    io: &TcpStream,
    bufs: &[IoSlice<'_>],
    limit: Duration,
) -> io::Result<usize> {
    loop {
        match io.try_write_vectored(bufs) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => room(io, limit).await?,
            done => return done,
        }
    }
}

/// Waits until `io` may take bytes again, for `limit` at most.
async fn room(io: &TcpStream, limit: Duration) -> io::Result<()> {
    tokio::time::timeout(limit, io.writable())
        .await
        .map_err(|_| stalled(limit))?
}

pin_project_lite::pin_project! {
    /// A client stream whose writes wait for room at most `limit` at a time (hyper's
    /// connections: hyper stops polling a response body while its writes wait, so no
    /// clock of the body's sees a client that stopped reading).
    pub struct SendClock<S> {
        #[pin]
        inner: S,
        limit: Duration,
        // Boxed and made at the first wait: most connections never wait.
        timer: Option<Pin<Box<Sleep>>>,
        // A write is waiting, since the timer's start.
        waiting: bool,
    }
}

impl<S> SendClock<S> {
    /// Wraps `inner`; its writes wait for room at most `limit` at a time.
    pub fn new(inner: S, limit: Duration) -> Self {
        SendClock {
            inner,
            limit,
            timer: None,
            waiting: false,
        }
    }
}

impl<S: AsyncWrite> SendClock<S> {
    /// `polled` as the write's outcome, with the clock run while it waits.
    fn clocked<T>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        polled: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let this = self.project();
        match polled(this.inner, cx) {
            Poll::Ready(done) => {
                *this.waiting = false;
                Poll::Ready(done)
            }
            Poll::Pending => {
                if !*this.waiting {
                    // A new wait: the clock starts now (a stall that ended left the timer
                    // armed at its old deadline; it fires once, harmlessly, if not reset).
                    *this.waiting = true;
                    let due = Instant::now() + *this.limit;
                    match this.timer.as_mut() {
                        Some(timer) => timer.as_mut().reset(due),
                        None => *this.timer = Some(Box::pin(tokio::time::sleep_until(due))),
                    }
                }
                let timer = this.timer.as_mut().expect("armed at the wait's start");
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(stalled(*this.limit))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead> AsyncRead for SendClock<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for SendClock<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.clocked(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.clocked(cx, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.clocked(cx, |inner, cx| inner.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.clocked(cx, |inner, cx| inner.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A connected pair whose reading end never reads.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_is_given_up_on_after_the_limit() {
        let (writer, reader) = pair().await;
        let chunk = vec![7u8; 1 << 20];
        let limit = Duration::from_secs(60);
        // Until the socket buffers are full, writes go through; then the clock runs: the
        // write that fails has waited the whole limit (paused time is exact).
        let mut written = 0usize;
        let (err, waited) = loop {
            let began = Instant::now();
            match write_all(&writer, &chunk, limit).await {
                Ok(()) => written += chunk.len(),
                Err(e) => break (e, began.elapsed()),
            }
            assert!(
                written < 1 << 30,
                "a reader that never reads took a gigabyte"
            );
        };
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        assert!(err.to_string().contains("proxy.send_timeout"), "{err}");
        assert!(waited >= limit, "gave up after {waited:?}");
        drop(reader);
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_runs_per_wait_and_a_reader_that_keeps_taking_is_never_cut() {
        use tokio::io::AsyncReadExt;
        // In memory, so paused time is exact: a 64 KiB pipe, a reader taking 16 KiB every
        // 700 ms, a 1 s limit. 1 MiB takes some 45 s, waiting for room again and again,
        // each wait under the limit; a clock that ran from the first wait would fire.
        let (writer, mut reader) = tokio::io::duplex(64 * 1024);
        let reading = tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            let mut total = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(700)).await;
                match reader.read(&mut buf).await.unwrap() {
                    0 => return total,
                    n => total += n,
                }
            }
        });
        let limit = Duration::from_secs(1);
        let mut clocked = SendClock::new(writer, limit);
        let began = Instant::now();
        clocked.write_all(&vec![7u8; 1 << 20]).await.unwrap();
        assert!(
            began.elapsed() > 20 * limit,
            "{:?}: it never had to wait",
            began.elapsed()
        );
        drop(clocked);
        assert_eq!(reading.await.unwrap(), 1 << 20);
        // And one that stops taking is given up on, after the limit.
        let (writer, _reader) = tokio::io::duplex(64 * 1024);
        let mut clocked = SendClock::new(writer, limit);
        let began = Instant::now();
        let err = clocked.write_all(&vec![7u8; 1 << 20]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        assert!(began.elapsed() >= limit);
    }
}

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
                let due = Instant::now() + *this.limit;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                if !*this.waiting {
                    *this.waiting = true;
                    timer.as_mut().reset(due);
                }
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
    async fn a_reader_that_stops_is_given_up_on() {
        let (writer, reader) = pair().await;
        let chunk = vec![7u8; 1 << 20];
        let limit = Duration::from_secs(60);
        // Until the socket buffers are full, writes go through; then the clock runs.
        let mut written = 0usize;
        let err = loop {
            match write_all(&writer, &chunk, limit).await {
                Ok(()) => written += chunk.len(),
                Err(e) => break e,
            }
            assert!(
                written < 1 << 30,
                "a reader that never reads took a gigabyte"
            );
        };
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        assert!(err.to_string().contains("proxy.send_timeout"), "{err}");
        drop(reader);

        // The wrapper: the same, for hyper's side.
        let (writer, reader) = pair().await;
        let mut clocked = SendClock::new(writer, limit);
        let err = loop {
            if let Err(e) = clocked.write_all(&chunk).await {
                break e;
            }
        };
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        drop(reader);
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_never_cut() {
        use tokio::io::AsyncReadExt;
        // Real time (paused time would jump over the socket's own progress): it drains
        // what has come every 500 ms, far inside a 10 s limit; 16 MiB is several times
        // what the socket buffers hold, so the writer waits for it again and again.
        let (writer, mut reader) = pair().await;
        let limit = Duration::from_secs(10);
        let reading = tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0;
            while total < 16 << 20 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                // All that is there now, then the next pause.
                loop {
                    match tokio::time::timeout(Duration::from_millis(1), reader.read(&mut buf))
                        .await
                    {
                        Ok(Ok(0)) | Ok(Err(_)) => return total,
                        Ok(Ok(n)) => total += n,
                        Err(_) => break,
                    }
                }
            }
            total
        });
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..8 {
            write_all(&writer, &chunk, limit).await.unwrap();
        }
        let mut clocked = SendClock::new(writer, limit);
        for _ in 0..8 {
            clocked.write_all(&chunk).await.unwrap();
        }
        drop(clocked);
        assert_eq!(reading.await.unwrap(), 16 << 20);
    }
}

//! The fast path's upstream pools, for requests that arrive through hyper.
//!
//! HTTP/2 (h2c), TLS and handed-off connections are served by hyper. Forwarding their
//! requests through hyper-util's pooled client costs more than everything else the
//! proxy does for them: a dispatch task and channels per upstream connection, a pool
//! behind a lock, a request encoded from a header map and a response decoded into one
//! (measured with h2load: 28 µs of CPU per proxied request, 6 µs per request answered
//! locally). A request on a plain-HTTP route with no body or a small `Content-Length`
//! one goes instead over the worker's own per-route pool that `fastpath` keeps: its head
//! (and body) is written and the response head read in the request's own task, and the
//! body streams back as an [`UpstreamBody`] that returns the connection to the pool when
//! it ends. Bodies of unknown length or over [`fastpath::MAX_BODY`], upgrades and TLS
//! upstreams keep hyper's client.

use std::io::ErrorKind;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::request::Parts;
use http::{Method, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use crate::config::RouteConfig;
use crate::fastpath::{self, Chunks, FastRoute, UpConn};
use crate::forward::Proxy;
use crate::metrics::UpstreamErrorKind;
use crate::observe::{Exchange, RequestBody};

/// Largest read while a body streams.
const MAX_READ: usize = 64 * 1024;

/// Why an upstream exchange failed, and what the log says about it.
pub(crate) type Failure = (UpstreamErrorKind, String);

/// Whether a request can go this way: no body or one of declared length up to
/// [`fastpath::MAX_BODY`], no upgrade, not `CONNECT`.
pub(crate) fn takes(
    method: &Method,
    headers: &HeaderMap,
    body: &hyper::body::Incoming,
    upgrade: bool,
) -> bool {
    let small = || {
        !headers.contains_key(header::TRANSFER_ENCODING)
            && headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|n| n <= fastpath::MAX_BODY)
    };
    !upgrade && *method != Method::CONNECT && (body.is_end_stream() || small())
}

/// Sends `parts` (headers rewritten for the upstream, the client's URI) and `body` (its
/// length in `parts`' `Content-Length`) on a pooled connection of route `route`, and
/// reads the response head; a resend is told to `ex`. A failed body is reported as a
/// `Reset`: the caller looks at the body's state to tell the client's fault (408, 413).
pub(crate) async fn send(
    proxy: Arc<Proxy>,
    route: usize,
    parts: &Parts,
    ex: &mut Exchange,
    mut body: Option<RequestBody>,
) -> Result<Response<UpstreamBody>, Failure> {
    let (cfg, fast) = proxy
        .fast_route(route)
        .expect("fastclient requests have a fast route");
    let mut head_bytes = Vec::new();
    request_head(&mut head_bytes, parts, cfg, fast);

    let head_only = parts.method == Method::HEAD;
    let replayable = fastpath::replayable(&parts.method, body.is_some());
    // Once more on a new connection when a pooled one closed unanswered and the request
    // may go twice (see `fastpath::may_resend`).
    let mut resent = false;
    let (mut up, head, sent_whole) = loop {
        // A pooled connection that turns out closed when written to never saw the
        // request: try the next (as hyper's client retries a canceled request).
        let (mut up, fresh) = loop {
            let pooled = (!resent).then(|| fast.checkout(cfg.idle_timeout));
            let (mut conn, fresh) = match pooled.flatten() {
                Some(conn) => (conn, false),
                // Boxed, as the body's sending below: rarer than a pooled request, and
                // their futures would otherwise size every request's (moved several
                // times before its first poll).
                None => match Box::pin(fast.connect(cfg.connect_timeout)).await {
                    Ok(conn) => (conn, true),
                    Err(e) => return Err((UpstreamErrorKind::Connect, e.to_string())),
                },
            };
            match conn.io.write_all(&head_bytes).await {
                Ok(()) => break (conn, fresh),
                Err(_) if !fresh => continue,
                Err(e) => return Err((UpstreamErrorKind::Reset, e.to_string())),
            }
        };

        up.buf.clear();
        let mut sent_whole = true;
        if let Some(body) = body.as_mut() {
            // What the upstream reads the body by (`takes` lets no other framing through).
            let declared = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            sent_whole = Box::pin(send_body(&mut up, body, declared)).await?;
        }
        let mut heard = false;
        let limit = cfg.max_response_header_bytes;
        let reading = fastpath::read_response(&mut up, &mut heard, limit, |buf| {
            fastpath::parse_parts(buf, head_only)
        });
        match reading.await {
            Ok(head) => break (up, head, sent_whole),
            Err(no_head) if !resent && fastpath::may_resend(no_head, !fresh, replayable) => {
                ex.resent();
                resent = true;
            }
            Err(no_head) => return Err((no_head.kind(), no_head.detail().to_string())),
        }
    };

    let framing = match head.body {
        fastpath::Body::None => Framing::Done,
        fastpath::Body::Length(n) => Framing::Length(n),
        fastpath::Body::Chunked => Framing::Chunked(Box::new(Chunks::collecting_trailers())),
        fastpath::Body::UntilClose => Framing::UntilClose,
    };
    // The body bytes that came with the head.
    let buf = BytesMut::from(&up.buf[head.len..]);
    up.buf.clear();
    if up.buf.capacity() > fastpath::UPSTREAM_BUF {
        // A long head grew it (up to max_response_header_bytes): the body, which may
        // stream for long, reads into the usual size.
        up.buf = Vec::with_capacity(fastpath::UPSTREAM_BUF);
    }
    let mut body = UpstreamBody {
        framing,
        buf,
        conn: Some(up),
        // A body not sent whole leaves the connection's framing in doubt.
        reusable: head.keep_alive && sent_whole,
        trailers: None,
        // The last use of `proxy` here: moved, not cloned.
        home: (proxy, route),
        failed: None,
    };
    if matches!(body.framing, Framing::Done) {
        body.reusable &= body.buf.is_empty();
        body.release();
    }
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers;
    Ok(resp)
}

/// Streams `body` to the upstream, as the client sends it. An upstream that stops
/// reading (it answered early, or died) ends the sending; its answer, if any, is read
/// next. Returns whether the whole body went: all `declared` bytes, no fewer, or the
/// upstream still waits for the rest and the connection cannot carry another request.
async fn send_body(
    up: &mut UpConn,
    body: &mut RequestBody,
    declared: Option<u64>,
) -> Result<bool, Failure> {
    let mut sent = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| (UpstreamErrorKind::Reset, e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if up.io.write_all(&data).await.is_err() {
                return Ok(false);
            }
            sent += data.len() as u64;
        }
    }
    Ok(declared == Some(sent))
}

/// The upstream request head, as hyper's client writes it: lower-case names in the
/// map's order, a `Host` from the upstream URL when the forwarder set none.
fn request_head(out: &mut Vec<u8>, parts: &Parts, cfg: &RouteConfig, fast: &FastRoute) {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    // Sized once: a head with a bearer token outgrew a fixed guess twice (two copies).
    let fields: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    out.reserve(fields + target.len() + cfg.base_path.len() + fast.host.len() + 40);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    // The origin form, behind the upstream's base path, as the fast path writes it (no
    // absolute URI is built for this client).
    out.extend_from_slice(cfg.base_path.as_bytes());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        // Bodies go this way only with a Content-Length (as hyper's client would frame them).
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(&fast.host);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How much of the body is still to come.
enum Framing {
    Length(u64),
    Chunked(Box<Chunks>),
    UntilClose,
    /// Ended; the trailers, if any, are still to be handed out.
    Done,
}

/// A response body read from a pooled upstream connection.
pub struct UpstreamBody {
    framing: Framing,
    /// Bytes read and not yet handed out.
    buf: BytesMut,
    /// The connection, until the body ends (then pooled, or closed).
    conn: Option<UpConn>,
    /// The connection can carry another request once the body has ended.
    reusable: bool,
    /// Boxed: rare, and this body is a variant of every response body's enum.
    trailers: Option<Box<HeaderMap>>,
    /// The proxy and route whose pool the connection returns to.
    home: (Arc<Proxy>, usize),
    /// An error found and held back for one poll (see `poll_frame`).
    failed: Option<BodyError>,
}

/// The upstream broke off a body.
#[derive(Debug, thiserror::Error)]
#[error("the upstream {0}")]
pub struct BodyError(&'static str);

/// What a malformed chunked body is told as: the framing's fault, not a reset.
const MALFORMED_CHUNKS: &str = "sent a malformed chunked body";

impl BodyError {
    /// The upstream broke the body's framing (rather than the connection).
    pub fn is_malformed(&self) -> bool {
        self.0 == MALFORMED_CHUNKS
    }
}

impl UpstreamBody {
    /// The body has ended: the connection goes back to the pool if it can carry more.
    fn release(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.reusable && self.buf.is_empty() {
            let (proxy, route) = &self.home;
            if let Some((cfg, fast)) = proxy.fast_route(*route) {
                fast.checkin(conn, cfg.idle_timeout);
            }
        }
    }

    /// The next frame, as the upstream's framing says.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            match &mut self.framing {
                Framing::Done => {
                    return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(*t))))
                }
                Framing::Length(left) => {
                    if self.buf.is_empty() {
                        let want = (*left).min(MAX_READ as u64) as usize;
                        if ready!(self.poll_fill(cx, want))? == 0 {
                            self.reusable = false;
                            return Poll::Ready(Some(Err(BodyError("closed mid-body"))));
                        }
                        continue;
                    }
                    let take = (self.buf.len() as u64).min(*left) as usize;
                    let data = self.buf.split_to(take).freeze();
                    *left -= take as u64;
                    if *left == 0 {
                        self.framing = Framing::Done;
                        self.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(chunks) => {
                    if self.buf.is_empty() {
                        if ready!(self.poll_fill(cx, MAX_READ))? == 0 {
                            self.reusable = false;
                            return Poll::Ready(Some(Err(BodyError("closed mid-body"))));
                        }
                        continue;
                    }
                    let data = take_chunked(chunks, &mut self.buf)
                        .map_err(|()| BodyError(MALFORMED_CHUNKS))?;
                    if chunks.done() {
                        self.trailers = chunks.trailers().map(Box::new);
                        self.framing = Framing::Done;
                        self.release();
                    }
                    if !data.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::UntilClose => {
                    if self.buf.is_empty() && ready!(self.poll_fill(cx, MAX_READ))? == 0 {
                        self.framing = Framing::Done;
                        self.reusable = false;
                        self.release();
                        continue;
                    }
                    let data = self.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
            }
        }
    }

    /// Reads more from the upstream into `buf`; 0 at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<Result<usize, BodyError>> {
        let conn = self.conn.as_mut().ok_or(BodyError("connection is gone"))?;
        self.buf.reserve(want.clamp(1024, MAX_READ));
        loop {
            if ready!(conn.io.poll_read_ready(cx)).is_err() {
                return Poll::Ready(Err(BodyError("connection failed")));
            }
            match conn.io.try_read_buf(&mut self.buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(_) => return Poll::Ready(Err(BodyError("connection failed"))),
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        match this.poll_body(cx) {
            // hyper's h2 server resets the stream as soon as the body fails, and the
            // reset drops the frames still queued for it: an upstream that breaks off
            // right behind its head (head, some body and the close in one read) left the
            // client without even the status, two times in three. One turn of the
            // scheduler lets the connection write the head and data first, as it could
            // with hyper's client, whose body arrives through a channel.
            Poll::Ready(Some(Err(e))) => {
                this.failed = Some(e);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            polled => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && matches!(self.framing, Framing::Done) && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done if self.trailers.is_none() => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Follows the chunked body in `buf` as far as it goes, consuming it (up to the body's
/// end); returns the chunk data found, without copying when it is one run.
fn take_chunked(chunks: &mut Chunks, buf: &mut BytesMut) -> Result<Bytes, ()> {
    let mut runs: [std::ops::Range<usize>; 2] = [0..0, 0..0];
    let mut count = 0;
    let mut more = Vec::new();
    let ended = chunks.feed_with(buf, |r| {
        if count < runs.len() {
            runs[count] = r;
        } else {
            more.push(r);
        }
        count += 1;
    })?;
    let used = ended.unwrap_or(buf.len());
    let data = if count == 1 {
        // One run of data, the common case: handed out without a copy.
        let run = runs[0].clone();
        let _ = buf.split_to(run.start);
        let data = buf.split_to(run.len()).freeze();
        let _ = buf.split_to(used - run.end);
        data
    } else {
        let all = runs[..count.min(2)].iter().chain(&more);
        let mut joined = BytesMut::with_capacity(all.clone().map(|r| r.len()).sum());
        for r in all {
            joined.extend_from_slice(&buf[r.clone()]);
        }
        let _ = buf.split_to(used);
        joined.freeze()
    };
    Ok(data)
}

/// A chunked body arriving in `pieces`, decoded as [`UpstreamBody`] decodes it: its
/// data and trailer fields once it ends (`None` if it does not end within them, `Err`
/// if malformed). Exposed for the `upstream` fuzz target: however the body is split,
/// the answer is the same.
#[allow(clippy::result_unit_err, clippy::type_complexity)]
pub fn decode_chunked<'a>(
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<(Vec<u8>, Option<HeaderMap>)>, ()> {
    let mut chunks = Chunks::collecting_trailers();
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        data.extend_from_slice(&take_chunked(&mut chunks, &mut buf)?);
        if chunks.done() {
            return Ok(Some((data, chunks.trailers())));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode_to_their_data_and_trailers_however_split() {
        let body: &[u8] = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 42\r\nx-more: a\r\n\r\n";
        let whole = decode_chunked([body]);
        let (data, trailers) = whole.clone().unwrap().unwrap();
        assert_eq!(data, b"hello world");
        let trailers = trailers.expect("trailers");
        assert_eq!(trailers["x-sum"], "42");
        assert_eq!(trailers["x-more"], "a");
        for cut in 0..body.len() {
            assert_eq!(
                decode_chunked([&body[..cut], &body[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
        assert_eq!(decode_chunked(body.chunks(1)), whole);

        let plain: &[u8] = b"3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(decode_chunked([plain]), Ok(Some((b"abc".to_vec(), None))));
        assert_eq!(decode_chunked([&plain[..6]]), Ok(None));
        assert!(decode_chunked([&b"zz\r\n"[..]]).is_err());
        assert!(decode_chunked([&b"1\r\nab\r\n"[..]]).is_err());
    }
}

//! Request framing on the raw byte stream: finds HTTP/1 request heads that hyper accepts
//! but a proxy should refuse ([`Defect`]).
//!
//! hyper resolves `Content-Length` + `Transfer-Encoding` as RFC 9112 §6.3 allows
//! (chunked wins, the length is dropped, the connection closes afterwards) and accepts
//! bare-LF line endings (§2.2), leaving no trace of either in the request it hands over.
//! Both are how smuggling probes make two parsers disagree, so statuslens answers them
//! with 400. [`Watched`] wraps a client connection and follows its HTTP/1 framing —
//! heads line by line, bodies by length or chunk sizes, never copying them — and records
//! the first defective head in [`Framing`]; the service asks
//! [`Framing::next_request_defect`] for each request it receives.
//!
//! The watcher only ever fails open: on HTTP/2, or what hyper refuses and closes the
//! connection on, it stops watching, and hyper's own (RFC-conformant) handling applies;
//! where hyper would go on reading requests it cannot follow (a chunk size padded past
//! the bytes kept), it refuses the next request instead. A request that
//! asks to upgrade does not stop it: only an upgrade the proxy agrees to
//! ([`Framing::tunnelled`]) does, since a refused one leaves the connection carrying
//! requests.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Longest line prefix kept; longer lines are only interesting when they are
/// `Content-Length` or chunk-size lines, and those fit.
const LINE_CAP: usize = 80;
const NONE: u64 = u64::MAX;
/// What follows an HTTP/2 connection preface's first line.
const PREFACE_REST: &[u8] = b"\r\nSM\r\n\r\n";

/// What is wrong with a request head that hyper would accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    /// Both `Content-Length` and `Transfer-Encoding`: two framings, the smuggling probe.
    LengthAndChunked,
    /// A head line ended by a bare LF: parsers on the path may disagree on the lines.
    BareLf,
    /// A `Content-Length` or chunk-size line too long to follow (zero padding hyper
    /// reads past): the watcher cannot know where the body ends, so the request (for a
    /// chunk size, the next one on the connection) is refused, not passed on unwatched.
    OverlongLength,
}

impl Defect {
    /// The one-line reason given to the client.
    pub fn reason(self) -> &'static str {
        match self {
            Defect::LengthAndChunked => "request has both Content-Length and Transfer-Encoding\n",
            Defect::BareLf => "request head has a line ending in a bare LF instead of CRLF\n",
            Defect::OverlongLength => {
                "request body length is written longer than any length needs (zero padding)\n"
            }
        }
    }
}

/// What one connection's watcher found, shared with the service serving it.
#[derive(Debug)]
pub struct Framing {
    /// Index (from 0) of the first defective request head, or `NONE`.
    defect_at: AtomicU64,
    /// Its defect: 1 + the `Defect` discriminant.
    defect: AtomicU8,
    /// Requests handed to the service so far.
    requests: AtomicU64,
    /// Bytes of a request head that has not ended yet have been read.
    mid_head: AtomicBool,
    /// The connection became a tunnel: nothing more to follow.
    tunnelled: AtomicBool,
}

impl Default for Framing {
    fn default() -> Self {
        Framing {
            defect_at: AtomicU64::new(NONE),
            defect: AtomicU8::new(0),
            requests: AtomicU64::new(0),
            mid_head: AtomicBool::new(false),
            tunnelled: AtomicBool::new(false),
        }
    }
}

impl Framing {
    /// Called once per request, in order: what is wrong with this request's head?
    pub fn next_request_defect(&self) -> Option<Defect> {
        // HTTP/1 hands requests over one at a time and in order, so the n-th call is
        // the n-th head. (HTTP/2 never records a defect.)
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        if n != self.defect_at.load(Ordering::Relaxed) {
            return None;
        }
        match self.defect.load(Ordering::Relaxed) {
            1 => Some(Defect::LengthAndChunked),
            2 => Some(Defect::BareLf),
            3 => Some(Defect::OverlongLength),
            _ => None,
        }
    }

    /// Whether the connection stopped inside a request head: some of its bytes were read,
    /// not its end. hyper's header timeout also fires on a keep-alive connection that is
    /// merely idle; only this tells a client that stalled mid-head (slowloris) from it.
    /// False once the watcher stopped following the connection.
    pub fn mid_head(&self) -> bool {
        self.mid_head.load(Ordering::Relaxed)
    }

    /// The proxy agreed to the connection's upgrade (its 101 is on the way): what the
    /// client sends from now on is the tunnel's, not requests to follow.
    pub fn tunnelled(&self) {
        self.tunnelled.store(true, Ordering::Relaxed);
    }

    fn record(&self, index: u64, defect: Defect) {
        let code = match defect {
            Defect::LengthAndChunked => 1,
            Defect::BareLf => 2,
            Defect::OverlongLength => 3,
        };
        self.defect.store(code, Ordering::Relaxed);
        self.defect_at.store(index, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Reading a head's lines; `first` until the request line is in.
    Head { first: bool },
    /// Skipping a `Content-Length` body.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data, then its CRLF line.
    ChunkData(u64),
    /// Expecting the empty line that ends a chunk.
    ChunkEnd,
    /// Reading trailer lines after the last chunk.
    Trailers,
    /// The rest of an HTTP/2 connection preface (`\r\nSM\r\n\r\n` after its
    /// request-like line): still a head being read, then not ours to follow.
    Preface(u64),
    /// Not watching any more.
    Off,
}

/// The framing follower itself, fed the bytes in the order they arrive.
#[derive(Debug)]
struct Scanner {
    state: State,
    line: [u8; LINE_CAP],
    line_len: usize,
    /// The current line ran over `LINE_CAP`.
    line_long: bool,
    /// The last byte pushed to the current line was a CR.
    ends_cr: bool,
    /// A line of the current head ended in a bare LF.
    bare_lf: bool,
    heads: u64,
    content_length: Option<u64>,
    /// The head has a `Content-Length` line hyper would refuse (not one decimal, or one
    /// differing from an earlier line).
    bad_length: bool,
    /// The head has a `Content-Length` line longer than `LINE_CAP`.
    long_length: bool,
    transfer_encoding: bool,
}

impl Scanner {
    fn new() -> Self {
        Scanner {
            state: State::Head { first: true },
            line: [0; LINE_CAP],
            line_len: 0,
            line_long: false,
            ends_cr: false,
            bare_lf: false,
            heads: 0,
            content_length: None,
            bad_length: false,
            long_length: false,
            transfer_encoding: false,
        }
    }

    fn off(&self) -> bool {
        self.state == State::Off
    }

    /// Inside a head: past its first byte (stray CRLFs before it aside), before its end.
    fn mid_head(&self) -> bool {
        match self.state {
            State::Head { first } => !first || self.line_len > 0 || self.line_long,
            State::Preface(_) => true,
            _ => false,
        }
    }

    /// Follows `bytes`; returns the index and defect of a defective head.
    fn feed(&mut self, mut bytes: &[u8]) -> Option<(u64, Defect)> {
        while !bytes.is_empty() {
            match self.state {
                State::Off => return None,
                State::Preface(n) => {
                    let take = (n as usize).min(bytes.len());
                    bytes = &bytes[take..];
                    self.state = match n - take as u64 {
                        0 => State::Off,
                        left => State::Preface(left),
                    };
                }
                State::Body(n) | State::ChunkData(n) => {
                    let take = (n as usize).min(bytes.len()) as u64;
                    bytes = &bytes[take as usize..];
                    let left = n - take;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head { first: true },
                        (State::Body(_), l) => State::Body(l),
                        (_, 0) => State::ChunkEnd,
                        (_, l) => State::ChunkData(l),
                    };
                }
                _ => {
                    let (part, rest, complete) = match bytes.iter().position(|&b| b == b'\n') {
                        Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                        None => (bytes, &bytes[bytes.len()..], false),
                    };
                    self.push(part);
                    bytes = rest;
                    if complete {
                        if let Some(found) = self.line_done() {
                            return Some(found);
                        }
                    }
                }
            }
        }
        None
    }

    fn push(&mut self, part: &[u8]) {
        let room = LINE_CAP - self.line_len;
        let n = part.len().min(room);
        self.line[self.line_len..self.line_len + n].copy_from_slice(&part[..n]);
        self.line_len += n;
        self.line_long |= part.len() > room;
        if let Some(&last) = part.last() {
            self.ends_cr = last == b'\r';
        }
    }

    /// Acts on one complete line (its LF consumed, a trailing CR stripped).
    fn line_done(&mut self) -> Option<(u64, Defect)> {
        let mut len = self.line_len;
        let crlf = std::mem::take(&mut self.ends_cr);
        if crlf && !self.line_long {
            len -= 1;
        }
        let long = self.line_long;
        self.line_len = 0;
        self.line_long = false;
        let line = &self.line[..len];
        let empty = len == 0 && !long;
        match self.state {
            State::Head { first: true } => {
                if empty {
                    // Clients may send stray CRLFs between requests (RFC 9112 §2.2).
                    return None;
                }
                self.bare_lf = !crlf;
                // An HTTP/2 preface: not ours to follow, though it is a head until its
                // last byte (RFC 9113 §3.4). Any other line naming HTTP/2.0 hyper's
                // HTTP/1 parser refuses (400, closed). A `PRI /x HTTP/1.1` request, and a
                // CONNECT (answered 405, never tunnelled), are requests like any other:
                // the connection goes on, and so does the watcher.
                if line == b"PRI * HTTP/2.0" && crlf {
                    self.state = State::Preface(PREFACE_REST.len() as u64);
                } else if line.ends_with(b"HTTP/2.0") {
                    self.state = State::Off;
                } else {
                    self.state = State::Head { first: false };
                }
            }
            State::Head { first: false } if empty => {
                self.bare_lf |= !crlf;
                return self.head_done();
            }
            State::Head { first: false } => {
                self.bare_lf |= !crlf;
                let value = |name: &[u8]| -> Option<&[u8]> {
                    let (n, v) = line.split_at_checked(name.len())?;
                    (n.eq_ignore_ascii_case(name) && v.first() == Some(&b':'))
                        .then(|| v[1..].trim_ascii())
                };
                if let Some(v) = value(b"content-length") {
                    self.long_length |= long;
                    match parse_decimal(v).filter(|_| !long) {
                        // Equal duplicates are one length; differing ones hyper rejects.
                        Some(n) if self.content_length.map_or(true, |c| c == n) => {
                            self.content_length = Some(n)
                        }
                        // Kept to the head's end: beside Transfer-Encoding it is still
                        // two framings (hyper skips a length after Transfer-Encoding
                        // without reading it).
                        _ => self.bad_length = true,
                    }
                } else if value(b"transfer-encoding").is_some() {
                    self.transfer_encoding = true;
                }
            }
            State::ChunkSize => {
                // The size ends at an extension or white space (hyper takes up to 16 KiB
                // of extensions): a long line is read by the size in the bytes kept.
                let end = line
                    .iter()
                    .position(|&b| b == b';' || b == b' ' || b == b'\t');
                if long && end.is_none() {
                    // Its digits alone run past what is kept (padding hyper reads): where
                    // the body ends is unknown, so the next head is refused rather than
                    // left unwatched.
                    self.state = State::Off;
                    return Some((self.heads, Defect::OverlongLength));
                }
                // Not a size hyper reads: it answers 400 and closes; nothing follows.
                self.state = match parse_hex(end.map_or(line, |i| &line[..i])) {
                    Some(0) => State::Trailers,
                    Some(n) => State::ChunkData(n),
                    None => State::Off,
                };
            }
            State::ChunkEnd if empty => self.state = State::ChunkSize,
            State::ChunkEnd => self.state = State::Off,
            State::Trailers if empty => self.state = State::Head { first: true },
            State::Trailers => {}
            State::Body(_) | State::ChunkData(_) | State::Preface(_) | State::Off => {}
        }
        None
    }

    /// The empty line after the headers: decide the body's framing.
    fn head_done(&mut self) -> Option<(u64, Defect)> {
        let index = self.heads;
        self.heads += 1;
        let cl = self.content_length.take();
        let bad_length = std::mem::take(&mut self.bad_length);
        let long_length = std::mem::take(&mut self.long_length);
        let te = std::mem::take(&mut self.transfer_encoding);
        let defect = if (cl.is_some() || bad_length) && te {
            Some(Defect::LengthAndChunked)
        } else if long_length {
            Some(Defect::OverlongLength)
        } else if std::mem::take(&mut self.bare_lf) {
            Some(Defect::BareLf)
        } else {
            None
        };
        if let Some(defect) = defect {
            // Its 400 closes the connection: nothing after it matters.
            self.state = State::Off;
            return Some((index, defect));
        }
        // A bad length alone: hyper answers 400 and closes; nothing after it to follow.
        self.state = if bad_length {
            State::Off
        } else if te {
            State::ChunkSize
        } else {
            match cl {
                Some(n) if n > 0 => State::Body(n),
                _ => State::Head { first: true },
            }
        };
        None
    }
}

/// Follows a byte stream delivered in `pieces`, as [`Watched`] does without the I/O:
/// the index and defect of the first defective request head, and whether the stream
/// stops inside a head ([`Framing::mid_head`]).
pub fn follow<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> (Option<(u64, Defect)>, bool) {
    let mut scanner = Scanner::new();
    let mut first = None;
    for piece in pieces {
        if let Some(found) = scanner.feed(piece) {
            first.get_or_insert(found);
        }
    }
    (first, scanner.mid_head())
}

/// A Content-Length value as hyper reads it: digits only, leading zeros allowed (a
/// padded `0005` is 5 to hyper, so it must be to the watcher), within u64.
fn parse_decimal(v: &[u8]) -> Option<u64> {
    parse_padded(v, 10)
}

/// A chunk size as hyper reads it: hex digits, leading zeros allowed, within u64.
fn parse_hex(v: &[u8]) -> Option<u64> {
    parse_padded(v, 16)
}

/// Digits of `radix` (10 or 16), any number of leading zeros, the value within u64.
fn parse_padded(v: &[u8], radix: u32) -> Option<u64> {
    if v.is_empty() || !v.iter().all(|&b| char::from(b).is_digit(radix)) {
        return None;
    }
    let digits = match v.iter().position(|&b| b != b'0') {
        Some(first) => &v[first..],
        None => return Some(0),
    };
    // u64 has 20 decimal and 16 hex digits: longer cannot fit (and is not parsed).
    if digits.len() > if radix == 10 { 20 } else { 16 } {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, radix).ok()
}

pin_project_lite::pin_project! {
    /// A client connection whose incoming bytes are followed by a framing scanner.
    pub struct Watched<S> {
        #[pin]
        inner: S,
        scanner: Scanner,
        framing: Arc<Framing>,
    }
}

impl<S> Watched<S> {
    /// Wraps `inner`; what it finds goes to `framing`.
    pub fn new(inner: S, framing: Arc<Framing>) -> Self {
        Watched {
            inner,
            scanner: Scanner::new(),
            framing,
        }
    }
}

impl<S: AsyncRead> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        // Set before the 101 went out, so a tunnel's first bytes are never followed.
        if this.framing.tunnelled.load(Ordering::Relaxed) {
            this.scanner.state = State::Off;
            this.framing.mid_head.store(false, Ordering::Relaxed);
        }
        if !this.scanner.off() {
            if let Some((index, defect)) = this.scanner.feed(&buf.filled()[before..]) {
                this.framing.record(index, defect);
            }
            this.framing
                .mid_head
                .store(this.scanner.mid_head(), Ordering::Relaxed);
        }
        polled
    }
}

crate::write_through!(Watched);

#[cfg(test)]
mod tests {
    use super::*;

    type Found = Option<(u64, Defect)>;

    /// Feeds `stream` in pieces of `step` bytes; returns the defective head found.
    fn scan(stream: &[u8], step: usize) -> (Found, State) {
        let mut s = Scanner::new();
        let mut found = None;
        for piece in stream.chunks(step) {
            if let Some(i) = s.feed(piece) {
                found = Some(i);
            }
        }
        (found, s.state)
    }

    fn every_split(stream: &[u8]) -> (Found, State) {
        let whole = scan(stream, stream.len().max(1));
        for step in 1..stream.len() {
            assert_eq!(scan(stream, step), whole, "split every {step} bytes");
        }
        whole
    }

    #[test]
    fn finds_the_conflict_in_either_order() {
        for head in [
            &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length:5\r\nHost: x\r\n\r\n",
            b"POST / HTTP/1.1\nTRANSFER-ENCODING: chunked\nCONTENT-LENGTH: 0\n\n",
            // Lengths hyper would refuse, or (after Transfer-Encoding) skips unread.
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5, 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let found = Some((0, Defect::LengthAndChunked));
            assert_eq!(every_split(head), (found, State::Off));
        }
        // A length line longer than the kept prefix (leading zeros hyper takes).
        let mut head = b"POST / HTTP/1.1\r\nContent-Length: ".to_vec();
        head.extend(std::iter::repeat_n(b'0', 100));
        head.extend_from_slice(b"5\r\nTransfer-Encoding: chunked\r\n\r\n");
        let found = Some((0, Defect::LengthAndChunked));
        assert_eq!(every_split(&head), (found, State::Off));
    }

    #[test]
    fn a_zero_padded_length_is_followed_or_refused_never_unwatched() {
        // hyper reads past any zero padding and keeps the connection: the watcher must
        // follow the body (the next head's bare LF is found) ...
        let stream = b"POST / HTTP/1.1\r\nContent-Length: 000000000000000000005\r\n\r\nhello\
            GET / HTTP/1.1\nHost: a\n\n";
        assert_eq!(every_split(stream), (Some((1, Defect::BareLf)), State::Off));
        // ... or, past what it keeps of a line, refuse the request.
        let mut head = b"POST / HTTP/1.1\r\nContent-Length: ".to_vec();
        head.extend(std::iter::repeat_n(b'0', 100));
        head.extend_from_slice(b"5\r\n\r\nhello");
        assert_eq!(
            every_split(&head),
            (Some((0, Defect::OverlongLength)), State::Off)
        );
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal(b"18446744073709551616"), None);
        assert_eq!(parse_decimal(b"0000"), Some(0));
    }

    #[test]
    fn follows_on_after_an_upgrade_nobody_agreed_to() {
        // The upstream refused the upgrade (or it was an h2c offer, which is dropped):
        // the connection goes on carrying requests, and they are still followed.
        let stream =
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\
            GET / HTTP/1.1\nHost: a\n\n";
        assert_eq!(every_split(stream), (Some((1, Defect::BareLf)), State::Off));
    }

    #[test]
    fn an_agreed_upgrade_stops_the_watcher_before_the_tunnel_bytes() {
        let framing = Arc::new(Framing::default());
        let upgrade = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n".as_slice();
        // Tunnel bytes that would read as a defective head.
        let tunnel = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
            .as_slice();
        let (client, mut server) = tokio::io::duplex(1024);
        let mut watched = Watched::new(client, framing.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = vec![0; 1024];
            server.write_all(upgrade).await.unwrap();
            let n = watched.read(&mut buf).await.unwrap();
            assert_eq!(n, upgrade.len());
            assert!(!watched.scanner.off());
            framing.tunnelled();
            server.write_all(tunnel).await.unwrap();
            let n = watched.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], tunnel, "the tunnel's bytes pass untouched");
        });
        assert!(watched.scanner.off());
        assert!(!framing.mid_head());
        assert_eq!(framing.next_request_defect(), None);
        assert_eq!(framing.next_request_defect(), None);
    }

    #[test]
    fn knows_when_it_stopped_inside_a_head() {
        let after = |stream: &[u8]| {
            let mut s = Scanner::new();
            s.feed(stream);
            s.mid_head()
        };
        for (stream, inside) in [
            (&b""[..], false),
            (b"\r\n\r\n", false),
            (b"G", true),
            (b"GET / HTTP/1.1\r\n", true),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r", true),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", false),
            (b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab", false),
            (b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nabGET /", true),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n", true),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", false),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12\x04", false),
        ] {
            let text = String::from_utf8_lossy(stream);
            assert_eq!(after(stream), inside, "{text:?}");
        }
    }

    #[test]
    fn follows_bodies_to_the_next_head() {
        let stream = b"POST /a HTTP/1.1\r\nContent-Length: 30\r\n\r\n\
            Content-Length: 1\r\nTransfer-\r\n\
            POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            1a;ext=1\r\nContent-Length: 5\r\n\r\n\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n\
            \r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /d HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let found = Some((3, Defect::LengthAndChunked));
        assert_eq!(every_split(stream), (found, State::Off));
    }

    #[test]
    fn finds_bare_lf_line_endings_in_heads_only() {
        for (stream, index) in [
            (&b"GET / HTTP/1.1\nHost: x\n\n"[..], 0),
            (b"GET / HTTP/1.1\r\nHost: x\n\r\n", 0),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\n", 0),
            (b"\nGET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\n\r\n", 1),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\na\nbGET / HTTP/1.1\r\nX: \n\r\n",
                1,
            ),
        ] {
            let found = Some((index, Defect::BareLf));
            assert_eq!(every_split(stream), (found, State::Off), "{stream:?}");
        }
    }

    #[test]
    fn plain_traffic_is_followed_without_findings() {
        let stream = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\
            POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi\
            POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
        assert_eq!(every_split(stream), (None, State::Head { first: true }));
    }

    #[test]
    fn stops_watching_what_it_does_not_follow() {
        for stream in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5a\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
        ] {
            assert_eq!(every_split(stream), (None, State::Off), "{stream:?}");
        }
    }

    #[test]
    fn follows_on_after_what_hyper_serves_and_keeps_the_connection_for() {
        // Each of these turned the watcher off for the rest of the connection, though
        // hyper serves it and reads the next request: a bare-LF head after it went
        // through. A CONNECT is answered 405 (never tunnelled); `PRI` is a method name
        // outside the HTTP/2 preface; hyper takes chunk extensions up to 16 KiB and any
        // number of leading zeros in a chunk size.
        let next = b"GET /b HTTP/1.1\nHost: x\n\n";
        let mut long_extension =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;e=".to_vec();
        long_extension.extend(std::iter::repeat_n(b'a', 200));
        long_extension.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        let mut padded = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        padded.extend(std::iter::repeat_n(b'0', 40));
        padded.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
        for first in [
            &b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"[..],
            b"PRI /x HTTP/1.1\r\nHost: x\r\n\r\n",
            &long_extension,
            &padded,
        ] {
            let stream = [first, &next[..]].concat();
            assert_eq!(
                every_split(&stream),
                (Some((1, Defect::BareLf)), State::Off),
                "{:?}",
                String::from_utf8_lossy(first)
            );
        }
        // A size whose digits alone run past the bytes kept cannot be followed: the next
        // head is refused.
        let mut overlong = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        overlong.extend(std::iter::repeat_n(b'0', 100));
        overlong.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            every_split(&overlong),
            (Some((1, Defect::OverlongLength)), State::Off)
        );
    }

    #[test]
    fn long_header_lines_are_skipped_not_misread() {
        let mut stream = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        stream.extend(std::iter::repeat_n(b'a', 500));
        stream.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\nhiGET / HTTP/1.1\r\n\r\n");
        assert_eq!(every_split(&stream), (None, State::Head { first: true }));
    }

    #[test]
    fn the_service_sees_the_defect_on_the_right_request() {
        let f = Framing::default();
        f.record(2, Defect::BareLf);
        let seen: Vec<_> = (0..4).map(|_| f.next_request_defect()).collect();
        assert_eq!(seen, [None, None, Some(Defect::BareLf), None]);
    }
}

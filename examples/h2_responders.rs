//! HTTP/2 (h2c) servers that answer every request themselves, one per layer of the
//! stack statuslens' h2c front end is built on, for `benches/h2front.sh`: what does
//! HTTP/2 alone cost per request, before any proxying?
//!
//! - `hyper`: hyper's HTTP/2 server (as statuslens uses it) with a service that answers;
//! - `h2`: the h2 crate under it, driven directly, a task per stream as hyper spawns;
//! - `floor`: a hand-rolled responder that only splits frames and answers each request's
//!   HEADERS with a pre-encoded HEADERS + DATA pair (no HPACK decoding, no stream state,
//!   no flow control): not a server anyone should run, the floor under any HTTP/2 code.
//!
//! Every one answers like the upstream nginx does (`server`, `date`, `content-type`,
//! `content-length`, body "ok"), on one current-thread runtime, as a statuslens worker.
//!
//! `cargo run --release --example h2_responders -- hyper|h2|floor PORT`

use std::convert::Infallible;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const DATE: &str = "Thu, 26 Nov 2026 21:00:00 GMT";

fn response<B>(body: B) -> http::Response<B> {
    http::Response::builder()
        .header("server", "nginx/1.22.1")
        .header("date", DATE)
        .header("content-type", "text/plain")
        .header("content-length", "2")
        .body(body)
        .expect("valid response")
}

/// Runs `f` on the current thread (hyper's and h2's futures here are spawned locally).
#[derive(Clone)]
struct Local;

impl<F: std::future::Future + 'static> hyper::rt::Executor<F> for Local {
    fn execute(&self, f: F) {
        tokio::task::spawn_local(f);
    }
}

async fn hyper_connection(stream: TcpStream) {
    let service = hyper::service::service_fn(|_: http::Request<hyper::body::Incoming>| async {
        let body = http_body_util::Full::new(Bytes::from_static(b"ok"));
        Ok::<_, Infallible>(response(body))
    });
    let _ = hyper::server::conn::http2::Builder::new(Local)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

async fn h2_connection(stream: TcpStream) {
    let Ok(mut connection) = h2::server::handshake(stream).await else {
        return;
    };
    while let Some(Ok((_, mut respond))) = connection.accept().await {
        // A task per stream, as hyper's server spawns one: answering inline between
        // accepts flushes once per stream and costs more than twice as much.
        tokio::task::spawn_local(async move {
            if let Ok(mut body) = respond.send_response(response(()), false) {
                let _ = body.send_data(Bytes::from_static(b"ok"), true);
            }
        });
    }
}

/// Appends one frame (RFC 9113 §4.1).
fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let n = payload.len();
    out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// The response's header block: `:status: 200` indexed, then each field as a literal
/// without indexing whose name is a static-table index (RFC 7541 §6.2.2, Appendix A).
fn header_block() -> Vec<u8> {
    let mut block = vec![0x88];
    for (index, value) in [
        (54u8, "nginx/1.22.1"),
        (33, DATE),
        (31, "text/plain"),
        (28, "2"),
    ] {
        // Index >= 15 does not fit the 4-bit prefix: 0x0f, then index - 15.
        block.extend_from_slice(&[0x0f, index - 15, value.len() as u8]);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

async fn floor_connection(mut stream: TcpStream) {
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const PING: u8 = 6;
    const GOAWAY: u8 = 7;
    const ACK: u8 = 1;
    const END_STREAM: u8 = 1;
    const END_HEADERS: u8 = 4;
    let block = header_block();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut have, mut preface) = (0, false);
    let mut out = Vec::with_capacity(64 * 1024);
    // SETTINGS_MAX_CONCURRENT_STREAMS = 200, as hyper's default.
    frame(&mut out, SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 200]);
    loop {
        match stream.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
        let mut at = 0;
        if !preface {
            if have < 24 {
                continue;
            }
            (at, preface) = (24, true);
        }
        while have - at >= 9 {
            let h = &buf[at..at + 9];
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            if have - at < 9 + len {
                break;
            }
            let (kind, flags) = (h[3], h[4]);
            let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            match kind {
                SETTINGS if flags & ACK == 0 => frame(&mut out, SETTINGS, ACK, 0, &[]),
                PING if flags & ACK == 0 && len == 8 => {
                    let opaque: [u8; 8] = buf[at + 9..at + 17].try_into().expect("8 bytes");
                    frame(&mut out, PING, ACK, 0, &opaque);
                }
                HEADERS if flags & END_STREAM != 0 => {
                    frame(&mut out, HEADERS, END_HEADERS, id, &block);
                    frame(&mut out, DATA, END_STREAM, id, b"ok");
                }
                GOAWAY => return,
                _ => {}
            }
            at += 9 + len;
        }
        buf.copy_within(at..have, 0);
        have -= at;
        if have == buf.len() {
            return;
        }
        // Every answer to what one read brought goes out in one write.
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(kind), Some(port)) = (args.next(), args.next().and_then(|p| p.parse().ok())) else {
        eprintln!("usage: h2_responders hyper|h2|floor PORT");
        std::process::exit(2);
    };
    if !matches!(kind.as_str(), "hyper" | "h2" | "floor") {
        eprintln!("h2_responders: unknown kind {kind:?} (hyper, h2 or floor)");
        std::process::exit(2);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tokio::task::LocalSet::new().block_on(&runtime, async move {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1:{port}: {e}"));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            match kind.as_str() {
                "hyper" => tokio::task::spawn_local(hyper_connection(stream)),
                "h2" => tokio::task::spawn_local(h2_connection(stream)),
                _ => tokio::task::spawn_local(floor_connection(stream)),
            };
        }
    });
}

//! Upstream responses at the edges of HTTP/1.1 (RFC 9110/9112), through both of
//! statuslens' paths — the fast path and hyper's (`proxy.fast_path = false`) — which
//! must answer the client alike, and correctly: found by a review of the hand-rolled
//! response handling (`src/fastpath.rs`), each case failed on one path before.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A keep-alive upstream that answers every request head with `reply` and keeps the
/// connection open: it counts connections, the ends of connections (statuslens closing
/// them) and keeps each request head.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

async fn scripted(reply: &'static [u8]) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s = Scripted {
        addr: listener.local_addr().unwrap(),
        connections: Arc::default(),
        closed: Arc::default(),
        heads: Arc::default(),
    };
    let (connections, closed, heads) = (s.connections.clone(), s.closed.clone(), s.heads.clone());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            connections.fetch_add(1, SeqCst);
            let (closed, heads) = (closed.clone(), heads.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut b = [0u8; 4096];
                    match conn.read(&mut b).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                    while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = buf.drain(..i + 4).collect();
                        heads
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&head).into());
                        if conn.write_all(reply).await.is_err() {
                            break;
                        }
                    }
                }
                closed.fetch_add(1, SeqCst);
            });
        }
    });
    s
}

fn start(fast: bool, upstream: SocketAddr) -> Proc {
    start_with_proxy_settings(&format!("fast_path = {fast}\nworkers = 1"), upstream)
}

/// One request with `Connection: close`; everything the client gets until the close.
async fn exchange(p: &Proc, head: &str) -> String {
    let mut s = TcpStream::connect(p.proxy).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    String::from_utf8_lossy(&read_until_closed(&mut s, head).await).into_owned()
}

/// An HTTP/2 client that grants no flow-control window (initial window 0) while its
/// connection task goes on reading (and answering PINGs); the task ends with the
/// connection.
async fn starving_h2_client(
    proxy: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (h2c, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    (h2c, tokio::spawn(conn))
}

/// Waits for the starving client's connection to be closed by the proxy.
async fn closed(conn: tokio::task::JoinHandle<Result<(), h2::Error>>) {
    tokio::time::timeout(DEADLINE, conn)
        .await
        .expect("the starving client's connection closed")
        .unwrap()
        .ok();
}

/// Waits until the one request `p` served is counted as a 499 (the client's), and
/// nothing else is counted.
async fn only_a_499(p: &Proc, what: &str, fast: bool) {
    let m = wait_metrics(p, what, |m| {
        responses(m, "499", "client") == 1.0 && settled(m)
    })
    .await;
    assert_eq!(
        sum(&m, "statuslens_responses_total", &[]),
        1.0,
        "fast_path = {fast}"
    );
}

fn lower(text: &str) -> String {
    text.to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_body_is_a_499_while_the_upstream_stalls() {
    // The fast path watched the client only until the response head: an upstream that
    // then stalled held the client's connection, the upstream's and the in-flight slot
    // for as long (forever, for a silent one), with nothing counted.
    let big: &'static [u8] = Box::leak(
        [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"[..],
            &[b'x'; 20_000],
        ]
        .concat()
        .into_boxed_slice(),
    );
    for reply in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n"[..],
        big,
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345",
    ] {
        for fast in [true, false] {
            let up = scripted(reply).await;
            let p = start(fast, up.addr);
            let mut s = TcpStream::connect(p.proxy).await.unwrap();
            s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            // Streamed bodies: wait for the head. A small one is sent with its head once
            // whole: wait for the upstream to have answered, and a moment more.
            if reply.len() > 60 {
                assert!(read_status_line(&mut s).await.starts_with("HTTP/1.1 200"));
            } else {
                let start = Instant::now();
                while up.heads.lock().unwrap().is_empty() {
                    assert!(start.elapsed() < DEADLINE);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            drop(s);
            // Not in flight any more either (which a scrape may show a moment later).
            wait_metrics(&p, "the 499", |m| {
                responses(m, "499", "client") == 1.0 && settled(m)
            })
            .await;
            let start = Instant::now();
            while up.closed.load(SeqCst) == 0 {
                assert!(
                    start.elapsed() < DEADLINE,
                    "fast_path = {fast}: the upstream connection was kept"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_wins_over_a_keep_alive_beside_it() {
    // RFC 9112 §9.6: after `close` no request may follow on that connection; the fast
    // path let a later `keep-alive` token win and sent the next request on it.
    let up = scripted(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    for fast in [true, false] {
        let before = up.connections.load(SeqCst);
        let p = start(fast, up.addr);
        for _ in 0..2 {
            let got = exchange(
                &p,
                "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await;
            assert!(got.ends_with("\r\n\r\nok"), "{got}");
        }
        assert_eq!(
            up.connections.load(SeqCst) - before,
            2,
            "fast_path = {fast}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_fields_are_forwarded_as_the_rfcs_ask_on_both_paths() {
    /// What the client got (lower-cased): fine, or what is wrong with it.
    type Check = dyn Fn(&str) -> Result<(), String>;
    let cases: [(&str, &'static [u8], &Check); 5] = [
        (
            // Every field `Connection` names is removed (RFC 9110 §7.6.1), the ninth too.
            "nine names",
            b"HTTP/1.1 200 OK\r\nConnection: a1, a2, a3, a4, a5, a6, a7, a8, x-secret\r\nX-Secret: internal\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\nok",
            &|got| match (got.contains("x-secret"), got.contains("x-kept: 1")) {
                (false, true) => Ok(()),
                _ => Err("x-secret passed or x-kept lost".into()),
            },
        ),
        (
            // Transfer-Encoding overrides Content-Length, whatever it says (RFC 9112 §6.3).
            "chunked beside a bad length",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: abc\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            &|got| match (got.starts_with("http/1.1 200"), got.contains("content-length")) {
                (true, false) => Ok(()),
                _ => Err("not a 200 without the length".into()),
            },
        ),
        (
            // A 204 has no content and no Content-Length (RFC 9110 §8.6).
            "204 with a length",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            &|got| match (got.starts_with("http/1.1 204"), got.contains("content-length")) {
                (true, false) => Ok(()),
                _ => Err("content-length on a 204".into()),
            },
        ),
        (
            // A forwarded response carries a Date (RFC 9110 §6.6.1), even when the
            // upstream's was named hop-by-hop and dropped.
            "date named in Connection",
            b"HTTP/1.1 200 OK\r\nConnection: date\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok",
            &|got| match (got.contains("\r\ndate: "), got.contains("1970")) {
                (true, false) => Ok(()),
                _ => Err("no date of ours".into()),
            },
        ),
        (
            // Chunk framing a client could split otherwise (bare LF): never passed on
            // as it came; the body is cut off, as hyper's client cuts it.
            "bare LF chunks",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\n0\n\n",
            &|got| match got.contains("2\nok") || got.ends_with("0\r\n\r\n") {
                false => Ok(()),
                true => Err("malformed chunks passed, or the body completed".into()),
            },
        ),
    ];
    for (what, reply, check) in cases {
        for fast in [true, false] {
            let up = scripted(reply).await;
            let p = start(fast, up.addr);
            let got = lower(
                &exchange(
                    &p,
                    "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                )
                .await,
            );
            if let Err(e) = check(&got) {
                panic!("{what}, fast_path = {fast}: {e}:\n{got}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_never_hop_by_hop() {
    // `Connection: host` made hyper's path drop the client's Host and send the
    // upstream's name instead, under host_header = "preserve"; the fast path kept it.
    let up = scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    for fast in [true, false] {
        let p = start(fast, up.addr);
        let got = exchange(
            &p,
            "GET /a HTTP/1.1\r\nHost: client.example\r\nConnection: host, close\r\n\r\n",
        )
        .await;
        assert!(got.ends_with("\r\n\r\nok"), "{got}");
        let head = lower(&up.heads.lock().unwrap().last().unwrap().clone());
        assert!(
            head.contains("\r\nhost: client.example\r\n"),
            "fast_path = {fast}: {head}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_answered_by_the_proxy_is_counted_as_its_and_carries_no_body() {
    // hyper never polls a HEAD answer's body: statuslens' own 502 to a HEAD stayed
    // unfinished and counted as the client's 499; the fast path wrote the body anyway,
    // and the next response on the connection began with those bytes.
    let dead = closed_port();
    for fast in [true, false] {
        let p = start(fast, dead);
        let got = exchange(
            &p,
            "HEAD /x HTTP/1.1\r\nHost: x\r\n\r\nGET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        let (first, rest) = got.split_once("\r\n\r\n").unwrap();
        assert!(
            first.starts_with("HTTP/1.1 502"),
            "fast_path = {fast}: {got}"
        );
        assert!(
            rest.starts_with("HTTP/1.1 502"),
            "fast_path = {fast}: {got}"
        );
        let m = wait_metrics(&p, "two", |m| {
            sum(m, "statuslens_responses_total", &[]) == 2.0
        })
        .await;
        assert_eq!(responses(&m, "502", "proxy"), 2.0, "fast_path = {fast}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_breaks_off_its_body_is_a_499_not_an_upstream_error() {
    // hyper's path took the client's broken body for an upstream failure: a 502, an
    // upstream error of kind reset, a 5xx fed to the detector.
    let up = upstream().await;
    for fast in [true, false] {
        let p = start(fast, up.addr);
        let mut s = TcpStream::connect(p.proxy).await.unwrap();
        // Chunked: hyper's path, whatever fast_path says.
        s.write_all(
            b"POST /drain HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
        wait_metrics(&p, "in flight", |m| {
            sum(m, "statuslens_requests_in_flight", &[]) == 1.0
        })
        .await;
        drop(s);
        let m = wait_metrics(&p, "the 499", |m| {
            sum(m, "statuslens_responses_total", &[]) == 1.0
        })
        .await;
        assert_eq!(
            responses(&m, "499", "client"),
            1.0,
            "fast_path = {fast}: {m:?}"
        );
        assert_eq!(
            sum(&m, "statuslens_upstream_errors_total", &[]),
            0.0,
            "fast_path = {fast}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_chunk_framing_mid_body_is_a_protocol_error() {
    let up =
        scripted(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n").await;
    for fast in [true, false] {
        let p = start(fast, up.addr);
        let got = exchange(
            &p,
            "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        let m = wait_metrics(&p, "counted", |m| {
            sum(m, "statuslens_responses_total", &[]) == 1.0
        })
        .await;
        let protocol = sum(
            &m,
            "statuslens_upstream_errors_total",
            &[("kind", "protocol")],
        );
        assert_eq!(protocol, 1.0, "fast_path = {fast}: {m:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_that_grants_no_window_is_given_up_on_after_send_timeout() {
    // An HTTP/2 client can read its socket (so no write ever waits) and still take no
    // response data: it grants no flow-control window. hyper then never polls the body,
    // and the response held its in-flight slot and upstream connection for good.
    let up = upstream().await;
    for fast in [true, false] {
        let p = start_with_proxy_settings(
            &format!("fast_path = {fast}\nworkers = 1\nsend_timeout = \"1s\""),
            up.addr,
        );
        let (mut h2c, conn) = starving_h2_client(p.proxy).await;
        let req = http::Request::get(format!("http://{}/big/100000", p.proxy))
            .body(())
            .unwrap();
        let (response, _) = h2c.send_request(req, true).unwrap();
        // The head needs no window.
        let response = tokio::time::timeout(DEADLINE, response)
            .await
            .expect("head within the deadline")
            .unwrap();
        assert_eq!(response.status(), 200, "fast_path = {fast}");
        only_a_499(&p, "the starving client given up on", fast).await;
        // Its connection is closed, not merely idle.
        closed(conn).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starved_h2_connection_lets_its_other_streams_finish_first() {
    // The connection is told to go away (GOAWAY) once a stream starves; a stream still
    // waiting on its upstream gets its answer, and the connection closes once nothing
    // but starved responses is left. It was dropped at once, taking such streams along.
    let up = upstream().await;
    let p = start_with_proxy_settings("workers = 1\nsend_timeout = \"2s\"", up.addr);
    let (mut h2c, conn) = starving_h2_client(p.proxy).await;
    let get = |path: &str| {
        http::Request::get(format!("http://{}{path}", p.proxy))
            .body(())
            .unwrap()
    };
    let (starved, _) = h2c.send_request(get("/big/100000"), true).unwrap();
    // Answered 2.6 s on: after the starved stream's send_timeout (2 s, cut by 2.5 s).
    let (waiting, _) = h2c.send_request(get("/stall/2600"), true).unwrap();
    // Kept: a response dropped unread is the client's reset (CANCEL), not a starving.
    let starved = starved.await.unwrap();
    assert_eq!(starved.status(), 200);
    let waiting = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("the waiting stream's head within the deadline")
        .expect("the waiting stream was not cut with the starved one");
    assert_eq!(waiting.status(), 200);
    // Its body needs window too: then only starved responses are left, and the
    // connection goes. hyper took that short body whole (it polls a body once before
    // it waits for window), so it counts as the upstream's 200; the big one as a 499.
    let m = wait_metrics(&p, "both streams ended", |m| {
        responses(m, "499", "client") == 1.0 && responses(m, "200", "upstream") == 1.0 && settled(m)
    })
    .await;
    assert_eq!(sum(&m, "statuslens_responses_total", &[]), 2.0);
    drop(starved);
    closed(conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_response_waiting_on_its_upstream_is_not_a_starving_client() {
    // The window clock counts only bodies with a chunk ready: one whose upstream pauses
    // longer than send_timeout between chunks is delivered whole.
    let up = upstream().await;
    let p = start_with_proxy_settings("workers = 1\nsend_timeout = \"300ms\"", up.addr);
    let (parts, body) = get(&h2_client(), &p.url("/slowbody/700")).await;
    assert_eq!(parts.status, 200);
    assert_eq!(body, "0123456789".repeat(10));
    let m = wait_settled(&p, 1.0).await;
    assert_eq!(responses(&m, "200", "upstream"), 1.0, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_given_up_on_after_send_timeout() {
    // No clock ran while a response waited for room in the client's socket: a client
    // that stopped reading held the response, its in-flight slot and the upstream
    // connection for as long as it kept the connection open. Now a write may wait
    // `proxy.send_timeout` (nginx's send_timeout), then the client is counted gone.
    let up = upstream().await;
    for fast in [true, false] {
        let p = start_with_proxy_settings(
            &format!("fast_path = {fast}\nworkers = 1\nsend_timeout = \"1s\""),
            up.addr,
        );
        let mut s = TcpStream::connect(p.proxy).await.unwrap();
        // Many times what the sockets between them hold; then it never reads.
        s.write_all(b"GET /big/16000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        only_a_499(&p, "the client given up on", fast).await;
        // And its connection closed: what was sent arrives, then the end.
        let got = read_until_closed(&mut s, "the stalled client").await;
        assert!(got.starts_with(b"HTTP/1.1 200 "), "fast_path = {fast}");
        assert!(
            got.len() < 16_000_000,
            "fast_path = {fast}: {} bytes",
            got.len()
        );
    }
}

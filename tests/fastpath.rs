//! The HTTP/1 fast path against hyper's path: the same traffic through statuslens with
//! `proxy.fast_path` on and off must reach the upstream and come back to the client the
//! same way, and be counted the same; connections the fast path hands to hyper midway
//! (a body, a bare LF) carry on without losing a byte. Requests hyper parses (h2c)
//! use the fast path's upstream pools when it is on (`fastclient`): the same holds.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use statuslens::fastpath::chunked_end;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a scripted upstream answers, by request path (the routes' `/api` base path or
/// prefix left out).
fn scripted(path: &str, head_only: bool) -> &'static [u8] {
    let path = path.split('?').next().unwrap();
    match (path, head_only) {
        ("/len", false) => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-kept: 1\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=60\r\n\r\nhello",
        ("/len", true) => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-kept: 1\r\n\r\n",
        ("/chunked", _) => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-kept: 2\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n",
        ("/interim", _) => b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        // A 204 has no Content-Length to pass on (RFC 9110 §8.6), even one of 0.
        ("/nocontent", _) => b"HTTP/1.1 204 No Content\r\nx-kept: 3\r\nContent-Length: 0\r\n\r\n",
        ("/limited", _) => b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\nx-ratelimit-limit: 100\r\nx-ratelimit-remaining: 3\r\ncontent-length: 4\r\n\r\nslow",
        ("/close", _) => b"HTTP/1.0 200 OK\r\nx-kept: 4\r\n\r\nuntil the upstream closes",
        ("/split", _) => b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nlater!",
        ("/big", _) => big_response(),
        ("/named", _) => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nConnection: keep-alive, Host, X-Gone, \xe9t\xe9\r\nConnection: close\r\nHost: upstream.test\r\nClose: said\r\nX-Gone: 1\r\nX-Kept: 5\r\n\r\nok",
        ("/trailers", _) => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n3\r\nabc\r\n0\r\nx-checksum: 42\r\n\r\n",
        // Connection-specific fields among the trailers: HTTP/2 cannot carry them.
        ("/trailers-hop", _) => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-checksum: 42\r\nKeep-Alive: timeout=5\r\nConnection: close\r\nTE: gzip\r\n\r\n",
        // Trailers announced or not, allowed as trailers or not, hop-by-hop or not.
        ("/trailers-mixed", _) => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum, set-cookie, keep-alive\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 1\r\nx-unannounced: 2\r\nSet-Cookie: a=b\r\nKeep-Alive: timeout=5\r\nX-Sum: 3\r\n\r\n",
        _ => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
    }
}

/// A response whose body (`pattern`, 100,000 bytes) is longer than any one read.
fn big_response() -> &'static [u8] {
    static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BIG.get_or_init(|| {
        let mut r = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n".to_vec();
        r.extend_from_slice(&pattern(100_000));
        r
    })
}

/// A keep-alive HTTP/1.1 upstream that records every request head it gets (lower-cased
/// names, in order) and answers from `scripted`; `/close` closes after answering.
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<Vec<(String, String)>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let (mut head, len, body) = loop {
                        let mut headers = [httparse::EMPTY_HEADER; 64];
                        let mut req = httparse::Request::new(&mut headers);
                        if let Ok(httparse::Status::Complete(len)) = req.parse(&buf) {
                            let mut head = vec![
                                ("method".to_string(), req.method.unwrap().to_string()),
                                ("target".to_string(), req.path.unwrap().to_string()),
                            ];
                            let mut body = Some(0);
                            for h in req.headers.iter() {
                                let value = String::from_utf8_lossy(h.value).to_string();
                                if h.name.eq_ignore_ascii_case("content-length") {
                                    body = Some(value.parse().unwrap());
                                }
                                if h.name.eq_ignore_ascii_case("transfer-encoding") {
                                    body = None;
                                }
                                head.push((h.name.to_ascii_lowercase(), value));
                            }
                            break (head, len, body);
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    // A chunked body: read until statuslens' own follower finds its end.
                    let body = loop {
                        if let Some(n) = body {
                            break n;
                        }
                        if let Ok(Some(n)) = chunked_end([&buf[len..]]) {
                            break n as usize;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    while buf.len() < len + body {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let received = String::from_utf8_lossy(&buf[len..len + body]).to_string();
                    head.push(("(body)".to_string(), received));
                    buf.drain(..len + body);
                    let target = head[1].1.clone();
                    let target = target.strip_prefix("/api").unwrap_or(&target).to_string();
                    let head_only = head[0].1 == "HEAD";
                    record.lock().unwrap().push(head);
                    let reply = scripted(&target, head_only);
                    // `/split`: the head first, the body a moment later, as a slow
                    // upstream (or sendfile) delivers it.
                    let split = if target == "/split" {
                        reply.len() - 6
                    } else {
                        reply.len()
                    };
                    if s.write_all(&reply[..split]).await.is_err() {
                        return;
                    }
                    if split < reply.len() {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        if s.write_all(&reply[split..]).await.is_err() {
                            return;
                        }
                    }
                    if target == "/close" {
                        let _ = s.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A response as a client sees it: status, headers (lower-cased, `date` left out),
/// the decoded body, its trailer fields.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    trailers: BTreeMap<String, String>,
}

/// Reads one response off `s` (`buf` holds bytes read past earlier responses).
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Seen {
    async fn more(s: &mut TcpStream, buf: &mut Vec<u8>) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
            .await
            .expect("response within the deadline")
            .expect("read");
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    let (status, headers, len) = loop {
        let mut h = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut h);
        if let httparse::Status::Complete(len) = resp.parse(buf).unwrap() {
            let headers: BTreeMap<String, String> = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).to_string(),
                    )
                })
                .collect();
            break (resp.code.unwrap(), headers, len);
        }
        more(s, buf).await;
    };
    buf.drain(..len);
    let mut body = Vec::new();
    let mut trailers = BTreeMap::new();
    if head_only || status == 204 || status == 304 {
    } else if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        loop {
            while !buf.windows(2).any(|w| w == b"\r\n") {
                more(s, buf).await;
            }
            let line_end = buf.windows(2).position(|w| w == b"\r\n").unwrap();
            let line = String::from_utf8(buf[..line_end].to_vec()).unwrap();
            let size = usize::from_str_radix(line.split(';').next().unwrap(), 16).unwrap();
            while buf.len() < line_end + 2 + size + 2 {
                more(s, buf).await;
            }
            if size == 0 {
                buf.drain(..line_end + 2);
                break;
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
        }
        // The trailer section: fields up to an empty line.
        loop {
            while !buf.windows(2).any(|w| w == b"\r\n") {
                more(s, buf).await;
            }
            let line_end = buf.windows(2).position(|w| w == b"\r\n").unwrap();
            let line: Vec<u8> = buf.drain(..line_end + 2).take(line_end).collect();
            if line.is_empty() {
                break;
            }
            let line = String::from_utf8(line).unwrap();
            let (name, value) = line.split_once(':').expect("a trailer field");
            trailers.insert(name.to_ascii_lowercase(), value.trim().to_string());
        }
    } else {
        let n: usize = headers["content-length"].parse().unwrap();
        while buf.len() < n {
            more(s, buf).await;
        }
        body = buf.drain(..n).collect();
    }
    let mut headers = headers;
    headers.remove("date");
    Seen {
        status,
        headers,
        body,
        trailers,
    }
}

/// One route to `upstream` under the base path `/api`, so every comparison also covers
/// how each path writes the upstream's target.
fn config(upstream: SocketAddr, fast: bool) -> std::path::PathBuf {
    write_config(&format!(
        r#"
[proxy]
fast_path = {fast}
[[routes]]
name = "api"
upstream = "http://{upstream}/api"
"#
    ))
}

const SEQUENCE: [(&str, &str); 10] = [
    ("GET", "/len?q=1"),
    ("GET", "/chunked"),
    ("GET", "/interim"),
    ("HEAD", "/len"),
    ("GET", "/nocontent"),
    ("GET", "/limited"),
    ("GET", "/close"),
    ("GET", "/split"),
    ("GET", "/big"),
    ("GET", "/len"),
];

/// Runs SEQUENCE on one client connection; returns the responses and the heads the
/// upstream saw.
async fn run_sequence(fast: bool) -> (Vec<Seen>, Vec<Vec<(String, String)>>, Proc) {
    let requests: Vec<_> = SEQUENCE.iter().map(|&(m, t)| (m, t, None)).collect();
    run(fast, &requests).await
}

/// Sends `requests` (method, target, body: with a Content-Length when Some) one after
/// another on one client connection.
async fn run(
    fast: bool,
    requests: &[(&str, &str, Option<Vec<u8>>)],
) -> (Vec<Seen>, Vec<Vec<(String, String)>>, Proc) {
    let (up, seen) = recording_upstream().await;
    let cfg = config(up, fast);
    let p = Proc::start(&["--config", cfg.to_str().unwrap()]);
    let mut s = TcpStream::connect(p.proxy).await.unwrap();
    let mut buf = Vec::new();
    let mut responses = Vec::new();
    for (method, target, body) in requests {
        let length = body
            .as_ref()
            .map(|b| format!("Content-Length: {}\r\n", b.len()))
            .unwrap_or_default();
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: api.test\r\nConnection: X-Hop-Req, TE\r\nX-Hop-Req: 1\r\nKeep-Alive: timeout=5\r\nTE: deflate, trailers\r\nX-Forwarded-For: 10.0.0.1\r\nX-Request-Id: req-{target}\r\nAccept: */*\r\n{length}\r\n"
        )
        .into_bytes();
        req.extend_from_slice(body.as_deref().unwrap_or_default());
        s.write_all(&req).await.unwrap();
        responses.push(read_response(&mut s, &mut buf, *method == "HEAD").await);
    }
    let heads = seen.lock().unwrap().clone();
    (responses, heads, p)
}

/// An HTTP/1.1 client that accepts trailers gets the upstream's, with the `Trailer` field
/// that announces them, whoever carries the request: the fast path, the fast pools from
/// hyper's path (a small body) or hyper's client (a body too large for the pools).
#[tokio::test]
async fn trailers_reach_http1_clients_that_accept_them_on_every_path() {
    let requests = [
        ("GET", "/trailers", None),
        ("POST", "/trailers", Some(b"abc".to_vec())),
        ("POST", "/trailers", Some(pattern(100_000))),
    ];
    let (fast, fast_heads, _fast_proc) = run(true, &requests).await;
    let (slow, slow_heads, _slow_proc) = run(false, &requests).await;
    assert_eq!(fast, slow);
    let checksum = BTreeMap::from([("x-checksum".to_string(), "42".to_string())]);
    for r in &fast {
        assert_eq!((r.status, &r.body[..]), (200, &b"abc"[..]));
        assert_eq!(r.headers["trailer"], "x-checksum");
        assert_eq!(r.trailers, checksum);
    }
    for heads in [&fast_heads, &slow_heads] {
        assert_eq!(heads.len(), requests.len());
        for h in heads {
            let te: Vec<_> = h.iter().filter(|(n, _)| n == "te").collect();
            assert_eq!(te, [&("te".to_string(), "trailers".to_string())], "{h:?}");
        }
    }
}

/// The trailer section reaches an HTTP/1.1 client as hyper's path sends it: only fields
/// the head's `Trailer` announces, none a trailer may not carry (`Set-Cookie`), none
/// hop-by-hop; without a `Trailer` field, none. The fast path passed the upstream's
/// section on verbatim: `Connection`, `Keep-Alive` and unannounced fields included.
#[tokio::test]
async fn trailer_sections_are_filtered_alike_on_every_path() {
    let requests = [
        ("GET", "/trailers-hop", None),
        ("GET", "/trailers-mixed", None),
        ("GET", "/chunked", None),
    ];
    let (fast, _, _fast_proc) = run(true, &requests).await;
    let (slow, _, _slow_proc) = run(false, &requests).await;
    assert_eq!(fast, slow);
    let trailers: Vec<_> = fast.iter().map(|r| r.trailers.clone()).collect();
    assert_eq!(
        trailers,
        [
            BTreeMap::new(),
            BTreeMap::from([("x-sum".to_string(), "3".to_string())]),
            BTreeMap::new(),
        ]
    );
    assert_eq!(fast[1].body, b"abc");
    assert_eq!(fast[2].body, b"hello world");
    // A client that does not accept trailers (no `TE: trailers`) gets none, announced or
    // not: hyper's path drops them, and the fast path sent them.
    let (up, _) = recording_upstream().await;
    for fast in [true, false] {
        let p = Proc::start(&["--config", config(up, fast).to_str().unwrap()]);
        let mut s = TcpStream::connect(p.proxy).await.unwrap();
        let mut buf = Vec::new();
        for target in ["/trailers", "/trailers-mixed"] {
            s.write_all(format!("GET {target} HTTP/1.1\r\nHost: api.test\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let seen = read_response(&mut s, &mut buf, false).await;
            assert_eq!((seen.status, &seen.body[..]), (200, &b"abc"[..]));
            assert_eq!(
                seen.trailers,
                BTreeMap::new(),
                "{target}, fast_path = {fast}"
            );
        }
    }
}

#[tokio::test]
async fn request_bodies_reach_the_upstream_as_on_hypers_path() {
    let requests = [
        ("POST", "/len", Some(b"abc".to_vec())),
        ("POST", "/nocontent", Some(Vec::new())),
        ("PUT", "/chunked", Some(pattern(20_000))),
        ("PATCH", "/split", Some(b"{\"a\":1}".to_vec())),
        ("GET", "/len", None),
    ];
    let (fast, fast_heads, fast_proc) = run(true, &requests).await;
    let (slow, slow_heads, slow_proc) = run(false, &requests).await;
    assert_eq!(fast, slow);
    let statuses: Vec<u16> = fast.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 204, 200, 200, 200]);
    let bodies = |heads: &[Vec<(String, String)>]| -> Vec<(String, Option<String>)> {
        heads
            .iter()
            .map(|h| {
                let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                (get("(body)").unwrap(), get("content-length"))
            })
            .collect()
    };
    assert_eq!(bodies(&fast_heads), bodies(&slow_heads));
    assert_eq!(
        bodies(&fast_heads)[2],
        (
            String::from_utf8_lossy(&pattern(20_000)).to_string(),
            Some("20000".to_string())
        )
    );
    let map = |heads: &[Vec<(String, String)>]| -> Vec<BTreeMap<String, String>> {
        heads.iter().map(|h| h.iter().cloned().collect()).collect()
    };
    assert_eq!(map(&fast_heads), map(&slow_heads));
    for p in [&fast_proc, &slow_proc] {
        let m = wait_metrics(p, "5 responses", |m| {
            sum(m, "statuslens_responses_total", &[("route", "api")]) == 5.0
        })
        .await;
        let sent = sum(&m, "statuslens_request_bytes_total", &[("route", "api")]);
        assert_eq!(sent, (3 + 20_000 + 7) as f64);
        let line = p.wait_line(|l| l.contains("\"method\":\"PUT\""));
        assert!(line.contains("\"bytes_in\":20000"), "{line}");
    }
}

#[tokio::test]
async fn an_unmatched_request_gets_404_and_the_connection_goes_on() {
    let (up, _) = recording_upstream().await;
    let cfg = write_config(&format!(
        "[[routes]]\nname = \"api\"\nmatch = {{ path_prefix = \"/api/\" }}\nupstream = \"http://{up}\"\n"
    ));
    let p = Proc::start(&["--config", cfg.to_str().unwrap()]);
    let mut s = TcpStream::connect(p.proxy).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /elsewhere HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body, b"no statuslens route matches this request\n");
    s.write_all(b"GET /api/len HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf, false).await.body, b"hello");
    let m = wait_metrics(&p, "2 responses", |m| {
        sum(m, "statuslens_responses_total", &[]) == 2.0
    })
    .await;
    assert_eq!(
        sum(
            &m,
            "statuslens_responses_total",
            &[("route", "unmatched"), ("code", "404"), ("source", "proxy")]
        ),
        1.0
    );
}

/// Both paths drop the fields `Connection` names alike, in either direction: a field
/// called `Close` beside `Connection: close` too (RFC 9110 §7.6.1), and those listed
/// beside a token with obs-text (bytes hyper accepts), but never `Host`.
#[tokio::test]
async fn fields_connection_names_are_dropped_alike_on_either_path_host_kept() {
    async fn exchange(fast: bool) -> (Seen, BTreeMap<String, String>) {
        let (up, seen) = recording_upstream().await;
        let cfg = config(up, fast);
        let p = Proc::start(&["--config", cfg.to_str().unwrap()]);
        let mut s = TcpStream::connect(p.proxy).await.unwrap();
        s.write_all(b"GET /named HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\nConnection: X-Hop-Req, caf\xe9\r\nX-Hop-Req: 1\r\nClose: asked\r\nX-Request-Id: named-1\r\nAccept: */*\r\n\r\n")
            .await
            .unwrap();
        let response = read_response(&mut s, &mut Vec::new(), false).await;
        let head = seen.lock().unwrap()[0].iter().cloned().collect();
        (response, head)
    }
    let (fast, fast_head) = exchange(true).await;
    let (slow, slow_head) = exchange(false).await;
    assert_eq!(fast, slow, "the client's response: fast vs hyper");
    assert_eq!(
        fast_head, slow_head,
        "the upstream's request head: fast vs hyper"
    );
    assert_eq!(fast.body, b"ok");
    for (name, value) in [("host", "upstream.test"), ("x-kept", "5")] {
        assert_eq!(
            fast.headers.get(name).map(String::as_str),
            Some(value),
            "{name}: {fast:?}"
        );
    }
    for gone in ["x-gone", "close"] {
        assert!(!fast.headers.contains_key(gone), "{gone}: {fast:?}");
    }
    for gone in ["x-hop-req", "close"] {
        assert!(!fast_head.contains_key(gone), "{gone}: {fast_head:?}");
    }
    assert_eq!(fast_head["accept"], "*/*");
}

#[tokio::test]
async fn the_fast_path_forwards_and_answers_as_hypers_path_does() {
    let (fast, fast_heads, fast_proc) = run_sequence(true).await;
    let (slow, slow_heads, slow_proc) = run_sequence(false).await;

    // What the client sees, response by response, is the same on both paths.
    assert_eq!(fast.len(), SEQUENCE.len());
    for (i, (f, s)) in fast.iter().zip(&slow).enumerate() {
        assert_eq!(
            f, s,
            "response {i} ({:?}) differs: fast vs hyper",
            SEQUENCE[i]
        );
    }
    let bodies: Vec<&[u8]> = fast.iter().map(|r| &r.body[..]).collect();
    let big = pattern(100_000);
    assert_eq!(
        bodies,
        [
            &b"hello"[..],
            b"hello world",
            b"ok",
            b"",
            b"",
            b"slow",
            b"until the upstream closes",
            b"later!",
            &big[..],
            b"hello"
        ]
    );
    let statuses: Vec<u16> = fast.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 201, 200, 204, 429, 200, 200, 200, 200]);
    for r in &fast {
        assert!(
            !r.headers.contains_key("x-hop") && !r.headers.contains_key("keep-alive"),
            "hop-by-hop header reached the client: {r:?}"
        );
    }
    assert_eq!(fast[0].headers["x-kept"], "1");

    // What the upstream sees is the same too (the client port aside).
    assert_eq!(fast_heads.len(), SEQUENCE.len());
    let normalise = |heads: &[Vec<(String, String)>]| -> Vec<BTreeMap<String, String>> {
        heads
            .iter()
            .map(|h| h.iter().cloned().collect::<BTreeMap<_, _>>())
            .collect()
    };
    assert_eq!(normalise(&fast_heads), normalise(&slow_heads));
    let first: BTreeMap<_, _> = fast_heads[0].iter().cloned().collect();
    assert_eq!(first["target"], "/api/len?q=1");
    assert_eq!(first["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    assert_eq!(first["x-forwarded-proto"], "http");
    assert_eq!(first["x-forwarded-host"], "api.test");
    assert_eq!(first["x-request-id"], "req-/len?q=1");
    assert_eq!(first["accept"], "*/*");
    assert_eq!(
        first["te"], "trailers",
        "the client accepts trailers; only that is passed on"
    );
    for gone in ["connection", "keep-alive", "x-hop-req"] {
        assert!(!first.contains_key(gone), "{gone} reached the upstream");
    }

    // Counted the same: every response once, with its code; the 429's Retry-After and
    // quota reached the metrics on both.
    for p in [&fast_proc, &slow_proc] {
        let m = wait_metrics(p, "10 responses", |m| {
            sum(m, "statuslens_responses_total", &[("route", "api")]) == 10.0
        })
        .await;
        for (code, n) in [("200", 7.0), ("201", 1.0), ("204", 1.0), ("429", 1.0)] {
            assert_eq!(
                sum(
                    m.as_slice(),
                    "statuslens_responses_total",
                    &[("code", code)]
                ),
                n,
                "code {code}"
            );
        }
        for (name, want) in [
            ("statuslens_upstream_quota_remaining", 3.0),
            ("statuslens_upstream_quota_limit", 100.0),
            ("statuslens_upstream_quota_remaining_ratio", 0.03),
        ] {
            assert_eq!(gauge(&m, name, "api"), Some(want), "{name}");
        }
        let bytes = sum(&m, "statuslens_response_bytes_total", &[("route", "api")]);
        assert_eq!(bytes, (5 + 11 + 2 + 4 + 25 + 6 + 100_000 + 5) as f64);
        let line = p.wait_line(|l| l.contains("\"status\":429"));
        assert!(line.contains("\"retry_after_s\":7"), "{line}");
    }
}

#[tokio::test]
async fn pipelined_requests_and_a_handoff_to_hyper_midway_are_all_answered_in_order() {
    let (up, seen) = recording_upstream().await;
    let cfg = config(up, true);
    let p = Proc::start(&["--config", cfg.to_str().unwrap()]);
    let mut s = TcpStream::connect(p.proxy).await.unwrap();
    // Two fast-path GETs, a POST with a chunked body (hyper's from here on, with the
    // bytes the fast path had already read), two more GETs — in one write.
    let burst = "GET /len HTTP/1.1\r\nHost: a\r\n\r\n\
                 GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n\
                 POST /len HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
                 GET /nocontent HTTP/1.1\r\nHost: a\r\n\r\n\
                 GET /len HTTP/1.1\r\nHost: a\r\n\r\n";
    s.write_all(burst.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut got = Vec::new();
    for _ in 0..5 {
        let r = read_response(&mut s, &mut buf, false).await;
        got.push((r.status, String::from_utf8(r.body).unwrap()));
    }
    assert_eq!(
        got,
        [
            (200, "hello".to_string()),
            (200, "hello world".to_string()),
            (200, "hello".to_string()),
            (204, String::new()),
            (200, "hello".to_string()),
        ]
    );
    let methods: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|h| format!("{} {}", h[0].1, h[1].1))
        .collect();
    let post_body = seen.lock().unwrap()[2]
        .iter()
        .find(|(n, _)| n == "(body)")
        .map(|(_, v)| v.clone());
    assert_eq!(post_body.as_deref(), Some("3\r\nabc\r\n0\r\n\r\n"));
    assert_eq!(
        methods,
        [
            "GET /api/len",
            "GET /api/chunked",
            "POST /api/len",
            "GET /api/nocontent",
            "GET /api/len"
        ]
    );

    // A bare-LF head after fast-path requests on a new connection: hyper's framing
    // watcher sees it (replayed) and it gets the counted 400.
    let mut s = TcpStream::connect(p.proxy).await.unwrap();
    s.write_all(b"GET /len HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut s, &mut buf, false).await.status, 200);
    s.write_all(b"GET /len HTTP/1.1\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let rest = read_until_closed(&mut s, "bare LF").await;
    assert!(
        rest.starts_with(b"HTTP/1.1 400 "),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    let m = wait_metrics(&p, "7 responses", |m| {
        sum(m, "statuslens_responses_total", &[]) == 7.0
    })
    .await;
    assert_eq!(responses(&m, "400", "proxy"), 1.0);
}

/// A keep-alive upstream answering every request `200 ok` and never closing a
/// connection itself; counts the connections it accepted and those closed on it.
async fn ok_upstream() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (count, seen_close) = (accepted.clone(), closed.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, SeqCst);
            let seen_close = seen_close.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => {
                            seen_close.fetch_add(1, SeqCst);
                            return;
                        }
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (up, accepted, closed)
}

#[tokio::test]
async fn pooled_upstream_connections_are_reused_not_reopened() {
    let (up, accepted, _) = ok_upstream().await;
    let cfg = config(up, true);
    let p = Proc::start(&["--config", cfg.to_str().unwrap(), "--workers", "1"]);
    // 50 requests, each on its own client connection, one after another: one upstream
    // connection serves them all.
    for _ in 0..50 {
        let mut s = TcpStream::connect(p.proxy).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let got = read_until_closed(&mut s, "connection: close").await;
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(got.ends_with(b"\r\n\r\nok"));
    }
    assert_eq!(accepted.load(SeqCst), 1);
}

#[tokio::test]
async fn idle_pooled_upstream_connections_close_after_idle_timeout_without_traffic() {
    let (up, _, closed) = ok_upstream().await;
    let cfg = write_config(&format!(
        "[[routes]]\nname = \"api\"\nupstream = \"http://{up}\"\nidle_timeout = \"300ms\"\n"
    ));
    let p = Proc::start(&["--config", cfg.to_str().unwrap(), "--workers", "1"]);
    // Before the request: the connection's idle time cannot have begun earlier.
    let start = std::time::Instant::now();
    let mut s = TcpStream::connect(p.proxy).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(read_until_closed(&mut s, "one request")
        .await
        .ends_with(b"\r\n\r\nok"));
    // No more traffic: the pooled connection must still be closed, by the sweep, and
    // not before it was idle for idle_timeout (a pool that closes after every use
    // would pass the first half alone).
    while closed.load(SeqCst) == 0 {
        assert!(
            start.elapsed() < DEADLINE,
            "the idle pooled connection was never closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(300),
        "closed {:?} after the request, before idle_timeout",
        start.elapsed()
    );
}

/// What an h2c client gets: status, headers (`date` left out), body, trailers.
type H2Seen = (
    u16,
    BTreeMap<String, String>,
    Bytes,
    Option<BTreeMap<String, String>>,
);

fn header_map(h: &http::HeaderMap) -> BTreeMap<String, String> {
    h.iter()
        .filter(|(n, _)| *n != "date")
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).to_string(),
            )
        })
        .collect()
}

/// Sends `requests` (method, target, body: with a Content-Length when Some) one after
/// another on one h2c connection through statuslens.
async fn run_h2(
    fast: bool,
    requests: &[(&str, &str, Option<Vec<u8>>)],
) -> (Vec<H2Seen>, Vec<BTreeMap<String, String>>, Proc) {
    let (up, seen) = recording_upstream().await;
    let cfg = config(up, fast);
    let p = Proc::start(&["--config", cfg.to_str().unwrap()]);
    let c = h2_client();
    let mut responses = Vec::new();
    for (method, target, body) in requests {
        let mut req = http::Request::builder()
            .method(*method)
            .uri(format!("http://{}{target}", p.proxy))
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-request-id", format!("req-{target}"))
            .header("accept", "*/*");
        if let Some(body) = body {
            req = req.header("content-length", body.len());
        }
        let req = req
            .body(full(Bytes::from(body.clone().unwrap_or_default())))
            .unwrap();
        let resp = tokio::time::timeout(DEADLINE, c.request(req))
            .await
            .expect("response within the deadline")
            .expect("response");
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(DEADLINE, http_body_util::BodyExt::collect(body))
            .await
            .expect("body within the deadline")
            .expect("body");
        let trailers = body.trailers().map(header_map);
        responses.push((
            parts.status.as_u16(),
            header_map(&parts.headers),
            body.to_bytes(),
            trailers,
        ));
    }
    // The proxy's own port differs between runs; the rest must not.
    let proxy = p.proxy.to_string();
    let heads = seen
        .lock()
        .unwrap()
        .iter()
        .map(|h| {
            h.iter()
                .map(|(n, v)| (n.clone(), v.replace(&proxy, "PROXY")))
                .collect()
        })
        .collect();
    (responses, heads, p)
}

#[tokio::test]
async fn h2c_requests_on_the_fast_pools_are_answered_as_by_hypers_client() {
    let mut requests: Vec<_> = SEQUENCE.iter().map(|&(m, t)| (m, t, None)).collect();
    requests.push(("GET", "/trailers", None));
    requests.push(("GET", "/trailers-hop", None));
    let (fast, fast_heads, fast_proc) = run_h2(true, &requests).await;
    let (slow, slow_heads, slow_proc) = run_h2(false, &requests).await;
    assert_eq!(fast.len(), requests.len());
    for (i, (f, s)) in fast.iter().zip(&slow).enumerate() {
        assert_eq!(
            f, s,
            "response {i} ({:?}) differs: pools vs hyper's client",
            requests[i]
        );
    }
    let got: Vec<(u16, &[u8])> = fast.iter().map(|r| (r.0, &r.2[..])).collect();
    let big = pattern(100_000);
    assert_eq!(
        got,
        [
            (200, &b"hello"[..]),
            (200, b"hello world"),
            (201, b"ok"),
            (200, b""),
            (204, b""),
            (429, b"slow"),
            (200, b"until the upstream closes"),
            (200, b"later!"),
            (200, &big[..]),
            (200, b"hello"),
            (200, b"abc"),
            (200, b"abc"),
        ]
    );
    assert_eq!(fast[0].1["x-kept"], "1");
    assert!(!fast[4].1.contains_key("content-length"), "{:?}", fast[4]);
    // h2 resets a stream whose trailers carry them (the client saw an error, statuslens
    // counted a 200): they are dropped, the rest arrive.
    let trailers = fast[11].3.as_ref().expect("the upstream's trailers");
    assert_eq!(
        trailers.keys().collect::<Vec<_>>(),
        ["x-checksum"],
        "{trailers:?}"
    );
    assert!(!fast[0].1.contains_key("x-hop"), "{:?}", fast[0]);
    assert_eq!(fast[3].1["content-length"], "5", "HEAD keeps the length");
    let trailers = fast[10].3.as_ref().expect("the upstream's trailers");
    assert_eq!(trailers["x-checksum"], "42");
    assert_eq!(
        fast[10].1["trailer"], "x-checksum",
        "the announcement is end to end"
    );

    assert_eq!(fast_heads, slow_heads);
    assert_eq!(fast_heads.len(), requests.len());
    let first = &fast_heads[0];
    assert_eq!(first["target"], "/api/len?q=1");
    assert_eq!(first["host"], "PROXY");
    assert_eq!(first["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    assert_eq!(first["x-request-id"], "req-/len?q=1");

    for p in [&fast_proc, &slow_proc] {
        let m = wait_metrics(p, "12 responses", |m| {
            sum(m, "statuslens_responses_total", &[("route", "api")]) == 12.0
        })
        .await;
        for (code, n) in [("200", 9.0), ("201", 1.0), ("204", 1.0), ("429", 1.0)] {
            let got = sum(&m, "statuslens_responses_total", &[("code", code)]);
            assert_eq!(got, n, "code {code}");
        }
        for (name, want) in [
            ("statuslens_upstream_quota_remaining", 3.0),
            ("statuslens_upstream_quota_limit", 100.0),
            ("statuslens_upstream_quota_remaining_ratio", 0.03),
        ] {
            assert_eq!(gauge(&m, name, "api"), Some(want), "{name}");
        }
        let bytes = sum(&m, "statuslens_response_bytes_total", &[("route", "api")]);
        assert_eq!(
            bytes,
            (5 + 11 + 2 + 4 + 25 + 6 + 100_000 + 5 + 3 + 3) as f64
        );
        let line = p.wait_line(|l| l.contains("\"status\":429"));
        assert!(line.contains("\"retry_after_s\":7"), "{line}");
    }
}

#[tokio::test]
async fn h2c_and_http1_requests_share_the_fast_paths_upstream_connections() {
    let (up, accepted, _) = ok_upstream().await;
    let cfg = config(up, true);
    let p = Proc::start(&["--config", cfg.to_str().unwrap(), "--workers", "1"]);
    // An HTTP/1.1 request (the fast path), then 20 one after another, each on a new
    // h2c connection, every other one a POST with a body: one upstream connection, from
    // the fast path's pool, serves all.
    let mut s = TcpStream::connect(p.proxy).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(read_until_closed(&mut s, "HTTP/1.1 response")
        .await
        .ends_with(b"\r\n\r\nok"));
    for i in 0..20 {
        let body = if i % 2 == 0 { "" } else { "abc" };
        let req = http::Request::builder()
            .method(if body.is_empty() { "GET" } else { "POST" })
            .uri(format!("http://{}/", p.proxy))
            .header("content-length", body.len())
            .body(full(body))
            .unwrap();
        let (parts, body) = send(&h2_client(), req).await;
        assert_eq!(parts.status, 200);
        assert_eq!(&body[..], b"ok");
    }
    assert_eq!(accepted.load(SeqCst), 1);
}

#[tokio::test]
async fn h2c_upstream_failures_are_answered_as_by_hypers_client() {
    const SHORT: usize = 20;
    let refused = closed_port();
    let garbage = raw_upstream(b"this is not http\r\n\r\n").await;
    let cut = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Le").await;
    let short = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf").await;
    // Accepts, reads, never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mut answers = Vec::new();
    for fast in [true, false] {
        // Only the silent upstream needs a short clock; the others answer at once.
        let route = |name: &str, up: SocketAddr| {
            let timeout = if name == "silent" { "2s" } else { "30s" };
            format!("[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"/{name}/\" }}\nupstream = \"http://{up}\"\ntimeout = \"{timeout}\"\n")
        };
        let cfg = write_config(&format!(
            "[proxy]\nfast_path = {fast}\n{}{}{}{}{}",
            route("refused", refused),
            route("garbage", garbage),
            route("cut", cut),
            route("short", short),
            route("silent", silent_addr),
        ));
        let p = Proc::start(&["--config", cfg.to_str().unwrap()]);
        let c = h2_client();
        let mut got = Vec::new();
        for name in ["refused", "garbage", "cut", "silent"] {
            let (parts, body) = get(&c, &p.url(&format!("/{name}/x"))).await;
            got.push((parts.status.as_u16(), body));
        }
        // A body the upstream breaks off: the client sees its status, then a reset —
        // every time (on the fast pools it once lost the status two times in three, when
        // the head, the body's start and the close came in one read).
        for _ in 0..SHORT {
            let resp = c
                .request(
                    http::Request::get(p.url("/short/x"))
                        .body(full(Bytes::new()))
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            assert!(http_body_util::BodyExt::collect(resp.into_body())
                .await
                .is_err());
        }
        let m = wait_metrics(&p, "every response", |m| {
            sum(m, "statuslens_responses_total", &[]) == 4.0 + SHORT as f64
        })
        .await;
        for (route, kind) in [
            ("refused", "connect"),
            ("garbage", "protocol"),
            ("cut", "reset"),
            ("silent", "timeout"),
            ("short", "reset"),
        ] {
            let errors = [("route", route), ("kind", kind)];
            let times = if route == "short" { SHORT as f64 } else { 1.0 };
            assert_eq!(
                sum(&m, "statuslens_upstream_errors_total", &errors),
                times,
                "{route} {kind} (fast: {fast})"
            );
        }
        answers.push(got);
    }
    assert_eq!(answers[0], answers[1]);
    let statuses: Vec<u16> = answers[0].iter().map(|a| a.0).collect();
    assert_eq!(statuses, [502, 502, 502, 504]);
}

#[tokio::test]
async fn h2c_request_bodies_reach_the_upstream_as_through_hypers_client() {
    let requests = [
        ("POST", "/len", Some(b"abc".to_vec())),
        ("POST", "/nocontent", Some(Vec::new())),
        ("PUT", "/chunked", Some(pattern(20_000))),
        ("PATCH", "/split", Some(b"{\"a\":1}".to_vec())),
        // Over fastclient's limit: hyper's client on both runs.
        ("POST", "/big", Some(pattern(300_000))),
        ("GET", "/len", None),
    ];
    let (fast, fast_heads, fast_proc) = run_h2(true, &requests).await;
    let (slow, slow_heads, slow_proc) = run_h2(false, &requests).await;
    assert_eq!(fast, slow);
    let statuses: Vec<u16> = fast.iter().map(|r| r.0).collect();
    assert_eq!(statuses, [200, 204, 200, 200, 200, 200]);
    assert_eq!(fast_heads, slow_heads);
    // The bodies as the upstream got them (the recorder keeps them as lossy UTF-8).
    let sent: Vec<(&str, Option<&str>)> = fast_heads
        .iter()
        .map(|h| {
            (
                h["(body)"].as_str(),
                h.get("content-length").map(String::as_str),
            )
        })
        .collect();
    let lossy = |n| String::from_utf8_lossy(&pattern(n)).to_string();
    let (big, medium) = (lossy(300_000), lossy(20_000));
    assert_eq!(
        sent,
        [
            ("abc", Some("3")),
            ("", Some("0")),
            (medium.as_str(), Some("20000")),
            ("{\"a\":1}", Some("7")),
            (big.as_str(), Some("300000")),
            ("", None)
        ]
    );
    for p in [&fast_proc, &slow_proc] {
        let m = wait_metrics(p, "6 responses", |m| {
            sum(m, "statuslens_responses_total", &[("route", "api")]) == 6.0
        })
        .await;
        let bytes = sum(&m, "statuslens_request_bytes_total", &[("route", "api")]);
        assert_eq!(bytes, (3 + 20_000 + 7 + 300_000) as f64);
        let line = p.wait_line(|l| l.contains("\"method\":\"PUT\""));
        assert!(line.contains("\"bytes_in\":20000"), "{line}");
    }
}

#[tokio::test]
async fn h2c_an_upstream_that_answers_before_reading_the_body_is_heard() {
    // Reads the head and a little, answers 401 and holds the connection without
    // reading the rest of a 60 KiB body (under fastclient's limit).
    let up = raw_upstream_lingering(
        b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 6\r\n\r\nno key",
        std::time::Duration::from_secs(5),
    )
    .await;
    let mut answers = Vec::new();
    for fast in [true, false] {
        let p = Proc::start(&["--config", config(up, fast).to_str().unwrap()]);
        let body = pattern(60 << 10);
        let req = http::Request::post(p.url("/upload"))
            .header("content-length", body.len())
            .body(full(body))
            .unwrap();
        let resp = tokio::time::timeout(DEADLINE, h2_client().request(req))
            .await
            .expect("an answer within the deadline")
            .expect("an answer");
        let status = resp.status().as_u16();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map(|b| b.to_bytes());
        answers.push((status, body.ok()));
        wait_metrics(&p, "the 401 counted", |m| {
            sum(m, "statuslens_responses_total", &[("code", "401")]) == 1.0
        })
        .await;
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0], (401, Some(Bytes::from_static(b"no key"))));
}

#[tokio::test]
async fn h2c_a_stalled_request_body_gets_408_on_both_paths() {
    let (up, _) = recording_upstream().await;
    for fast in [true, false] {
        let cfg = write_config(&format!(
            "[proxy]\nfast_path = {fast}\nbody_read_timeout = \"300ms\"\n[[routes]]\nname = \"api\"\nupstream = \"http://{up}\"\n"
        ));
        let p = Proc::start(&["--config", cfg.to_str().unwrap()]);
        // 3 of 10 declared bytes, then silence longer than the proxy waits.
        let body = chunked(vec![Bytes::from_static(b"abc")], DEADLINE, false);
        let req = http::Request::post(p.url("/len"))
            .header("content-length", 10)
            .body(body)
            .unwrap();
        let (parts, body) = send(&h2_client(), req).await;
        assert_eq!(parts.status, 408, "fast: {fast}");
        assert_eq!(
            &body[..],
            b"the request body stalled longer than proxy.body_read_timeout\n"
        );
        let m = wait_metrics(&p, "the 408 counted", |m| {
            sum(m, "statuslens_responses_total", &[("code", "408")]) == 1.0
        })
        .await;
        assert_eq!(sum(&m, "statuslens_upstream_errors_total", &[]), 0.0);
        assert_eq!(sum(&m, "statuslens_request_bytes_total", &[]), 3.0);
    }
}

/// An upstream that answers while it reads (an echo) gets a large body through either
/// path without a stall: the fast paths send bodies whole before reading the answer, so
/// they take only bodies whose echo fits the socket buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_to_an_echoing_upstream_streams_both_ways() {
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    let data = pattern(48 << 20);
    for c in [client(), h2_client()] {
        let req = http::Request::post(p.url("/echo"))
            .header("content-length", data.len())
            .body(full(data.clone()))
            .unwrap();
        let (parts, body) = send(&c, req).await;
        assert_eq!(parts.status, 200);
        assert!(body == data, "echo differs: {} bytes", body.len());
    }
}

/// An upstream that answers every request head at once with an empty 401, reading no
/// body, and keeps the connection: it records each head's first line with the index of
/// the connection it came on. Bytes it was not told to expect read as part of the next
/// head, as they would to any HTTP/1.1 server.
async fn early_answering_upstream() -> (SocketAddr, Arc<Mutex<Vec<(usize, String)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let record = heads.clone();
    tokio::spawn(async move {
        for index in 0.. {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        let line = String::from_utf8_lossy(&head);
                        let line = line.lines().next().unwrap_or("").to_string();
                        // Answered before recorded: a test that sees the head has the
                        // answer waiting in the proxy's socket.
                        let reply = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                        record.lock().unwrap().push((index, line));
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, heads)
}

#[tokio::test]
async fn an_h2_upload_the_client_resets_with_no_error_is_never_a_whole_body() {
    // hyper ends an HTTP/2 request body at the client's RST_STREAM(NO_ERROR) as if it
    // were complete. The fast pools then took the upload as sent whole: an upstream that
    // had answered early got its connection back in the pool while it still waited for
    // the rest of the declared body, and the next request on it was read as body bytes.
    for fast in [true, false] {
        let (up, heads) = early_answering_upstream().await;
        let cfg = write_config(&format!(
            "[proxy]\nfast_path = {fast}\n[[routes]]\nname = \"api\"\nupstream = \"http://{up}\"\n"
        ));
        // One worker: one pool, so the next request meets the upload's connection if
        // it went back there.
        let p = Proc::start(&["--config", cfg.to_str().unwrap(), "--workers", "1"]);
        let tcp = TcpStream::connect(p.proxy).await.unwrap();
        let (mut h2c, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let upload = http::Request::post(format!("http://{}/upload", p.proxy))
            .header("content-length", "100")
            .body(())
            .unwrap();
        let (_response, mut body) = h2c.send_request(upload, false).unwrap();
        body.send_data(Bytes::from_static(b"0123456789"), false)
            .unwrap();
        // The upstream has answered the head before the client leaves.
        let start = std::time::Instant::now();
        while heads.lock().unwrap().is_empty() {
            assert!(
                start.elapsed() < DEADLINE,
                "fast_path = {fast}: no head upstream"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        body.send_reset(h2::Reason::NO_ERROR);
        let m = wait_responses(&p, 1.0).await;
        // The fast pools read the answer once the body is sent; hyper's client may pass
        // the early 401 on before the reset arrives, and then it was delivered.
        let delivered = if fast {
            0.0
        } else {
            responses(&m, "401", "upstream")
        };
        assert_eq!(
            responses(&m, "499", "client"),
            1.0 - delivered,
            "fast_path = {fast}: a client that left mid-body"
        );
        // The next request must reach the upstream as a request of its own.
        let (parts, _) = get(&client(), &p.url("/next")).await;
        assert_eq!(parts.status, 401, "fast_path = {fast}");
        let heads = heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 2, "fast_path = {fast}: {heads:?}");
        assert_eq!(heads[0], (0, "POST /upload HTTP/1.1".to_string()));
        assert_eq!(
            heads[1],
            (1, "GET /next HTTP/1.1".to_string()),
            "fast_path = {fast}: the upload's connection was used again"
        );
    }
}

/// An answer that goes out before the request body is in (here: the upstream refuses
/// the connection) must not have the rest of the body reset the connection under it.
/// The fast path closed at once with the client still sending: the kernel answered the
/// body's next bytes with a reset, the client's writes failed, and a client that reads
/// after it writes could lose the 502 (RFC 9112 §9.6). It now drops the rest of the
/// body before it closes, as nginx's lingering close does; hyper's path reads it and
/// keeps the connection.
#[tokio::test]
async fn an_answer_before_the_body_ends_is_not_lost_to_a_reset() {
    const BODY: usize = 60_000;
    for fast in [true, false] {
        let p = Proc::start(&["--config", config(closed_port(), fast).to_str().unwrap()]);
        let mut s = TcpStream::connect(p.proxy).await.unwrap();
        s.write_all(
            format!("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: {BODY}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        let seen = read_response(&mut s, &mut buf, false).await;
        assert_eq!(seen.status, 502, "fast_path = {fast}");
        // The body, in pieces, as a client streaming an upload sends it.
        for piece in vec![b'x'; BODY].chunks(BODY / 6) {
            s.write_all(piece)
                .await
                .unwrap_or_else(|e| panic!("fast_path = {fast}: the body's write failed: {e}"));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if fast {
            // Answered with `Connection: close`: a clean end once the body is dropped.
            assert_eq!(
                seen.headers.get("connection").map(String::as_str),
                Some("close")
            );
            let mut rest = Vec::new();
            tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest))
                .await
                .expect("closed within the deadline")
                .expect("closed without a reset");
            assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
        }
        let m = wait_metrics(&p, "the 502", |m| {
            sum(m, "statuslens_responses_total", &[]) == 1.0
        })
        .await;
        assert_eq!(responses(&m, "502", "proxy"), 1.0, "fast_path = {fast}");
    }
}

//! The proxy over real sockets: forwarding, proxy-made errors, counting, logging.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_passes_through_and_is_counted_exactly() {
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    let c = client();
    let codes = [
        200u16, 201, 202, 204, 301, 302, 304, 400, 401, 403, 404, 405, 409, 418, 422, 429, 451,
        500, 501, 502, 503, 504, 299, 599,
    ];
    for code in codes {
        let (parts, body) = get(&c, &p.url(&format!("/status/{code}"))).await;
        assert_eq!(parts.status.as_u16(), code);
        if code != 204 && code != 304 {
            assert_eq!(body, format!("status {code}"));
        }
    }
    // And a known mix of methods.
    for m in ["POST", "PUT", "DELETE", "PATCH", "PURGE"] {
        let req = Request::builder()
            .method(m)
            .uri(p.url("/status/201"))
            .body(full("x"))
            .unwrap();
        let (parts, _) = send(&c, req).await;
        assert_eq!(parts.status, 201);
    }
    let total = codes.len() as f64 + 5.0;
    let m = wait_settled(&p, total).await;
    assert_eq!(sum(&m, "statuslens_responses_total", &[]), total);
    for code in codes {
        let c = code.to_string();
        let class = format!("{}xx", code / 100);
        assert_eq!(
            sum(
                &m,
                "statuslens_responses_total",
                &[
                    ("route", "default"),
                    ("method", "GET"),
                    ("code", &c),
                    ("class", &class),
                    ("source", "upstream")
                ]
            ),
            1.0,
            "code {code}"
        );
    }
    for m_ in ["POST", "PUT", "DELETE", "PATCH", "OTHER"] {
        assert_eq!(
            sum(
                &m,
                "statuslens_responses_total",
                &[("method", m_), ("code", "201")]
            ),
            1.0,
            "method {m_}"
        );
    }
    // Histogram: one observation per request, split by class.
    assert_eq!(
        sum(&m, "statuslens_request_duration_seconds_count", &[]),
        total
    );
    assert_eq!(
        sum(
            &m,
            "statuslens_request_duration_seconds_count",
            &[("class", "5xx")]
        ),
        6.0
    );
    assert_eq!(sum(&m, "statuslens_requests_in_flight", &[]), 0.0);
    assert_eq!(
        sum(
            &m,
            "statuslens_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_byte_exact_both_ways() {
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    let c = client();
    let data = pattern(1_500_000);
    // Fixed length.
    let req = Request::post(p.url("/echo"))
        .body(full(data.clone()))
        .unwrap();
    let (parts, body) = send(&c, req).await;
    assert_eq!(parts.status, 200);
    assert_eq!(body.len(), data.len());
    assert!(body == data, "fixed-length echo differs");
    // Chunked upload, streamed.
    let chunks: Vec<Bytes> = data.chunks(100_000).map(Bytes::copy_from_slice).collect();
    let req = Request::post(p.url("/echo"))
        .body(chunked(chunks, Duration::from_millis(1), false))
        .unwrap();
    let (parts, body) = send(&c, req).await;
    assert_eq!(parts.status, 200);
    assert!(body == data, "chunked echo differs");
    // Chunked download.
    let (parts, body) = get(&c, &p.url("/big/2000000")).await;
    assert_eq!(parts.status, 200);
    assert!(body == pattern(2_000_000), "chunked download differs");

    let m = wait_responses(&p, 3.0).await;
    assert_eq!(
        sum(
            &m,
            "statuslens_request_bytes_total",
            &[("route", "default")]
        ),
        3_000_000.0
    );
    assert_eq!(
        sum(
            &m,
            "statuslens_response_bytes_total",
            &[("route", "default")]
        ),
        5_000_000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_forwarded_hop_by_hop_dropped() {
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    let c = client();
    let req = Request::get(p.url("/plain?q=1"))
        .header("host", "api.example.test")
        .header("x-end-to-end", "kept")
        .header("connection", "x-hop-req")
        .header("x-hop-req", "dropped")
        .header("keep-alive", "timeout=5")
        .header("te", "gzip, trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-request-id", "req-abc-123")
        .body(full(Bytes::new()))
        .unwrap();
    let (parts, body) = send(&c, req).await;
    assert_eq!(body, "ok");
    assert_eq!(parts.headers["x-upstream"], "yes");
    assert!(
        parts.headers.get("x-hop-resp").is_none(),
        "response hop-by-hop header leaked"
    );
    let seen = up.seen.0.lock().unwrap().last().cloned().unwrap();
    let h = &seen.headers;
    assert_eq!(seen.uri, "/plain?q=1");
    assert_eq!(h["host"], "api.example.test");
    assert_eq!(h["x-end-to-end"], "kept");
    for gone in ["x-hop-req", "keep-alive", "proxy-authorization"] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream");
    }
    assert_eq!(
        h["te"], "trailers",
        "only the acceptance of trailers goes on"
    );
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "api.example.test");
    assert_eq!(h["x-request-id"], "req-abc-123");
}

/// A target in absolute form names the host: it is routed by, forwarded as `Host` and
/// named in `X-Forwarded-Host`, whatever the `Host` field said (RFC 9112 §3.2.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_names_the_host() {
    let up = upstream().await;
    let other = upstream().await;
    let cfg = write_config(&format!(
        r#"
[[routes]]
name = "other"
match = {{ host = "other.example" }}
upstream = "http://{}"
[[routes]]
name = "api"
upstream = "http://{}"
"#,
        other.addr, up.addr
    ));
    let p = Proc::start(&["--config", cfg.to_str().unwrap()]);
    let mut s = TcpStream::connect(p.proxy).await.unwrap();
    s.write_all(b"GET http://other.example/status/200?x=1 HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut s, &mut Vec::new(), |got| got.ends_with(b"status 200")).await;
    assert!(
        up.seen.0.lock().unwrap().is_empty(),
        "routed by the Host field"
    );
    let seen = other.seen.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/status/200?x=1");
    assert_eq!(seen[0].headers["host"], "other.example");
    assert_eq!(seen[0].headers["x-forwarded-host"], "other.example");
}

/// A dual-stack listener (`[::]`) sees IPv4 clients as ::ffff:a.b.c.d; the upstream and
/// the log get a.b.c.d, on the fast path and on hyper's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_clients_of_a_dual_stack_listener_keep_their_ipv4_address() {
    let up = upstream().await;
    let p = Proc::start(&[
        "--upstream",
        &format!("http://{}", up.addr),
        "--listen",
        "[::]:0",
    ]);
    let port = p.proxy.port();
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // A plain GET (the fast path), then a chunked POST (handed to hyper).
    s.write_all(
        b"GET /status/200 HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /drain HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    read_until(&mut s, &mut Vec::new(), |got| {
        got.windows(8).filter(|w| w == b"HTTP/1.1").count() == 2
    })
    .await;
    let seen = up.seen.0.lock().unwrap().clone();
    let forwarded: Vec<_> = seen
        .iter()
        .map(|r| {
            (
                r.uri.path().to_string(),
                r.headers["x-forwarded-for"].clone(),
            )
        })
        .collect();
    assert_eq!(
        forwarded,
        [
            ("/status/200".to_string(), "127.0.0.1".parse().unwrap()),
            ("/drain".to_string(), "127.0.0.1".parse().unwrap())
        ]
    );
    for path in ["/status/200", "/drain"] {
        let line = p.wait_line(|l| l.contains(&format!("\"path\":\"{path}\"")));
        assert!(line.contains("\"client\":\"127.0.0.1:"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_made_errors_have_the_right_code_and_source() {
    let up = upstream().await;
    let refused = closed_port();
    let garbage = raw_upstream(b"this is not http\r\n\r\n").await;
    let cfg = write_config(&format!(
        r#"
[[routes]]
name = "api"
match = {{ path_prefix = "/api/" }}
upstream = "http://{up}"
timeout = "2s"
[[routes]]
name = "down"
match = {{ path_prefix = "/down/" }}
upstream = "http://{refused}"
[[routes]]
name = "garbage"
match = {{ path_prefix = "/garbage/" }}
upstream = "http://{garbage}"
"#,
        up = up.addr
    ));
    let p = Proc::start(&["--config", cfg.to_str().unwrap()]);
    let c = client();
    assert_eq!(get(&c, &p.url("/api/status/200")).await.0.status, 200);
    assert_eq!(get(&c, &p.url("/api/stall/20000")).await.0.status, 504);
    assert_eq!(get(&c, &p.url("/down/x")).await.0.status, 502);
    assert_eq!(get(&c, &p.url("/garbage/x")).await.0.status, 502);
    assert_eq!(get(&c, &p.url("/elsewhere")).await.0.status, 404);

    let m = wait_responses(&p, 5.0).await;
    let n = |route: &str, code: &str, source: &str| {
        sum(
            &m,
            "statuslens_responses_total",
            &[("route", route), ("code", code), ("source", source)],
        )
    };
    assert_eq!(n("api", "200", "upstream"), 1.0);
    assert_eq!(n("api", "504", "proxy"), 1.0);
    assert_eq!(n("down", "502", "proxy"), 1.0);
    assert_eq!(n("garbage", "502", "proxy"), 1.0);
    assert_eq!(n("unmatched", "404", "proxy"), 1.0);
    assert_eq!(sum(&m, "statuslens_responses_total", &[]), 5.0);
    let e = |route: &str, kind: &str| {
        sum(
            &m,
            "statuslens_upstream_errors_total",
            &[("route", route), ("kind", kind)],
        )
    };
    assert_eq!(e("api", "timeout"), 1.0);
    assert_eq!(e("down", "connect"), 1.0);
    assert_eq!(e("garbage", "protocol"), 1.0);
    assert_eq!(sum(&m, "statuslens_upstream_errors_total", &[]), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_abort_is_499_counted_once() {
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    // Abort while the upstream is still thinking.
    let mut s = TcpStream::connect(p.proxy).await.unwrap();
    s.write_all(b"GET /stall/1500 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    wait_metrics(&p, "the stalled request in flight", |m| {
        sum(m, "statuslens_requests_in_flight", &[]) == 1.0
    })
    .await;
    drop(s);
    // Abort in the middle of a slow body.
    let mut s = TcpStream::connect(p.proxy).await.unwrap();
    s.write_all(b"GET /slowbody/200 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_status_line(&mut s).await.starts_with("HTTP/1.1 200"));
    drop(s);
    let m = wait_metrics(&p, "two 499s", |m| {
        sum(m, "statuslens_responses_total", &[("code", "499")]) >= 2.0
    })
    .await;
    // Give a wrongly double-counting proxy time to show it, then check exactness.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let m2 = metrics(&p).await;
    assert_eq!(sum(&m2, "statuslens_responses_total", &[]), 2.0, "{m:#?}");
    assert_eq!(
        sum(
            &m2,
            "statuslens_responses_total",
            &[("code", "499"), ("source", "client"), ("class", "4xx")]
        ),
        2.0
    );
    assert_eq!(sum(&m2, "statuslens_requests_in_flight", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_dying_mid_body_truncates_and_counts_once() {
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    let c = client();
    let resp = c
        .request(
            Request::get(p.url("/die"))
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = http_body_util::BodyExt::collect(resp.into_body()).await;
    assert!(r.is_err(), "client must see the truncation");
    let m = wait_responses(&p, 1.0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m2 = metrics(&p).await;
    assert_eq!(sum(&m2, "statuslens_responses_total", &[]), 1.0, "{m:#?}");
    assert_eq!(
        sum(
            &m2,
            "statuslens_responses_total",
            &[("code", "200"), ("source", "upstream")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &m2,
            "statuslens_upstream_errors_total",
            &[("kind", "reset")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_reaches_http11_upstream() {
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    let c = h2_client();
    for _ in 0..3 {
        let (parts, body) = get(&c, &p.url("/plain")).await;
        assert_eq!(parts.status, 200);
        assert_eq!(parts.version, http::Version::HTTP_2);
        assert_eq!(body, "ok");
    }
    let data = pattern(300_000);
    let (parts, body) = send(
        &c,
        Request::post(p.url("/echo"))
            .body(full(data.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, 200);
    assert!(body == data);
    let seen = up.seen.0.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.headers["host"], p.proxy.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_cookies_reach_an_http11_upstream_as_one_line() {
    // RFC 9113 §8.2.3: an HTTP/2 client may split its cookies into fields of their own;
    // an HTTP/1.1 upstream must get one line, joined with "; " (many read the first).
    let up = upstream().await;
    for fast in ["true", "false"] {
        let p = start_with_proxy_settings(&format!("fast_path = {fast}"), up.addr);
        let req = Request::get(p.url("/plain"))
            .header("cookie", "a=1")
            .header("cookie", "b=2; c=3")
            .body(full(Bytes::new()))
            .unwrap();
        assert_eq!(send(&h2_client(), req).await.0.status, 200);
        let seen = up.seen.0.lock().unwrap().last().cloned().unwrap();
        let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"], "fast_path = {fast}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_drives_h2c_through_the_proxy() {
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    let out = tokio::process::Command::new("h2load")
        .args(["-n", "200", "-c", "4", "-m", "8", &p.url("/status/200")])
        .output()
        .await
        .expect("h2load is installed by .ci/run (Debian nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("200 succeeded"), "{text}");
    assert!(text.contains("status codes: 200 2xx"), "{text}");
    wait_metrics(&p, "200 h2 requests", |m| {
        sum(m, "statuslens_responses_total", &[("code", "200")]) == 200.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through() {
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    let (mut s, head) = open_websocket(p.proxy).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("connection: upgrade\r\n"), "{head}");
    // The upstream's hop-by-hop fields stay with its hop, as on every other answer.
    assert!(
        !head.contains("x-hop") && !head.contains("keep-alive"),
        "{head}"
    );
    for msg in [&b"hello"[..], b"second frame", &[0u8, 1, 2, 255]] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(DEADLINE, s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg);
    }
    let seen = up.seen.0.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.headers["upgrade"], "websocket");
    wait_metrics(&p, "101 counted", |m| {
        sum(
            m,
            "statuslens_responses_total",
            &[("code", "101"), ("class", "1xx")],
        ) == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_idle_for_its_routes_limit_is_closed() {
    // Nothing bounded an upgraded connection: one whose client vanished without a FIN
    // (a NAT that forgot it) held both sockets and a connection slot for good.
    let up = upstream().await;
    let cfg = write_config(&format!(
        "[[routes]]\nname = \"ws\"\nupstream = \"http://{}\"\ntunnel_idle_timeout = \"3s\"\n",
        up.addr
    ));
    let p = Proc::start(&["--config", cfg.to_str().unwrap()]);
    let (mut s, head) = open_websocket(p.proxy).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // In use, it stays open past the limit: a message every 100 ms for 4 s.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        s.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        tokio::time::timeout(DEADLINE, s.read_exact(&mut got))
            .await
            .expect("an echo within the deadline")
            .expect("the tunnel open while in use");
        assert_eq!(&got, b"ping");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then quiet: closed, and its connection no longer counted.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the idle tunnel was not closed");
    assert!(rest.is_empty(), "{rest:?}");
    wait_metrics(&p, "the tunnel's connection closed", |m| {
        sum(m, "statuslens_connections_open", &[]) == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_offer_is_not_forwarded() {
    // "h2c smuggling": were `Upgrade: h2c` forwarded and answered 101, the client would
    // speak HTTP/2 straight to the upstream through the tunnel — any path, no route, no
    // limit, no count. The offer is dropped (as Envoy does); the request goes as a plain
    // one. WebSocket upgrades still pass (test above).
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    let offer = |path: &str, upgrade: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        )
    };
    // An upstream that would switch (`/ws` answers 101 to anything): no tunnel opens; its
    // 101 to a request that did not ask is an invalid answer (502).
    let mut s = TcpStream::connect(p.proxy).await.unwrap();
    s.write_all(offer("/ws", "h2c").as_bytes()).await.unwrap();
    let line = read_status_line(&mut s).await;
    assert!(line.starts_with("HTTP/1.1 502 "), "{line}");
    for upgrade in ["h2c", "H2C", "websocket, h2c"] {
        let mut s = TcpStream::connect(p.proxy).await.unwrap();
        s.write_all(offer("/status/200", upgrade).as_bytes())
            .await
            .unwrap();
        let line = read_status_line(&mut s).await;
        assert!(line.starts_with("HTTP/1.1 200 "), "{upgrade}: {line}");
        let seen = up.seen.0.lock().unwrap().last().cloned().unwrap();
        for field in ["upgrade", "http2-settings"] {
            assert!(
                !seen.headers.contains_key(field),
                "{upgrade}: upstream saw {field}: {:?}",
                seen.headers
            );
        }
        assert!(!seen.headers.contains_key("connection"), "{upgrade}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_to_a_request_that_asked_for_no_upgrade_is_a_502_on_every_path() {
    // hyper's client takes a 101 to any request: with the fast pools off (or a TLS
    // upstream) it reached the client — over HTTP/2 as a malformed `:status 101` —
    // counted as a 1xx. The fast pools' rule for it is a 502.
    let up = upstream().await;
    for fast in [true, false] {
        let p = start_with_proxy_settings(&format!("fast_path = {fast}"), up.addr);
        for (c, version) in [(client(), "HTTP/1.1"), (h2_client(), "h2c")] {
            let (parts, _) = get(&c, &p.url("/ws")).await;
            assert_eq!(parts.status, 502, "fast_path = {fast}, {version}");
        }
        let m = wait_responses(&p, 2.0).await;
        assert_eq!(responses(&m, "502", "proxy"), 2.0, "fast_path = {fast}");
        let protocol = sum(
            &m,
            "statuslens_upstream_errors_total",
            &[("kind", "protocol")],
        );
        assert_eq!(protocol, 2.0, "fast_path = {fast}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_the_path_the_upstream_reads() {
    // `/api/../admin/x` is /admin/x to an upstream that resolves dot segments: routed by
    // `/api/` it would reach the api upstream (with the api route's limits and
    // counters) for a path the admin route serves. Routing resolves it as nginx does;
    // the upstream still gets the target as sent.
    let api = upstream().await;
    let admin = upstream().await;
    for fast in [true, false] {
        let cfg = write_config(&format!(
            r#"
[proxy]
fast_path = {fast}
[[routes]]
name = "api"
match = {{ path_prefix = "/api/" }}
upstream = "http://{api}"
[[routes]]
name = "admin"
match = {{ path_prefix = "/admin/" }}
upstream = "http://{admin}"
"#,
            api = api.addr,
            admin = admin.addr
        ));
        let p = Proc::start(&["--config", cfg.to_str().unwrap()]);
        let to_admin = [
            "/api/../admin/status/200",
            "/api/%2e%2E/admin/status/200",
            "//admin//status/200",
        ];
        // A fragment has no place in a request target (RFC 9112 §3.2); the target as
        // forwarded drops it, so routing must not read the path through it.
        let fragment = "/admin/status/200#/../../../api/status/200";
        let admin_before = admin.seen.0.lock().unwrap().len();
        let api_before = api.seen.0.lock().unwrap().len();
        // A raw client: HTTP client libraries resolve dot segments before sending.
        let mut s = TcpStream::connect(p.proxy).await.unwrap();
        for target in to_admin.iter().chain(&[fragment, "/%61pi/status/200"]) {
            s.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut got = Vec::new();
            read_until(&mut s, &mut got, |got| got.ends_with(b"status 200")).await;
            assert!(
                got.starts_with(b"HTTP/1.1 200 OK\r\n"),
                "fast_path = {fast}, {target}: {}",
                String::from_utf8_lossy(&got)
            );
        }
        let seen = |up: &Upstream, from: usize| -> Vec<String> {
            up.seen.0.lock().unwrap()[from..]
                .iter()
                .map(|r| r.uri.to_string())
                .collect()
        };
        let mut expected = to_admin.to_vec();
        expected.push("/admin/status/200");
        assert_eq!(seen(&admin, admin_before), expected, "fast_path = {fast}");
        assert_eq!(
            seen(&api, api_before),
            ["/%61pi/status/200"],
            "fast_path = {fast}"
        );
        let m = wait_responses(&p, 5.0).await;
        let n = |route: &str| sum(&m, "statuslens_responses_total", &[("route", route)]);
        assert_eq!((n("admin"), n("api")), (4.0, 1.0), "fast_path = {fast}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused_not_tunnelled() {
    // A reverse proxy opens no tunnels (nginx 1.22 refuses it too, with a 400). Forwarded, CONNECT would
    // hand the upstream a request it cannot serve, and a 2xx would leave the client's
    // connection expecting a tunnel nobody opens.
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    let mut s = TcpStream::connect(p.proxy).await.unwrap();
    s.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    // The whole 405 (its head, then its body by length).
    let mut got = Vec::new();
    read_until(&mut s, &mut got, whole_response).await;
    assert!(
        got.starts_with(b"HTTP/1.1 405 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // The connection goes on, and so does the smuggling watcher: it stopped at a
    // CONNECT head, so a bare-LF request after it was forwarded.
    s.write_all(b"GET /status/200 HTTP/1.1\nHost: x\n\n")
        .await
        .unwrap();
    let rest = read_until_closed(&mut s, "after the CONNECT").await;
    assert!(
        rest.starts_with(b"HTTP/1.1 400 "),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    // HTTP/2's CONNECT (RFC 9113 §8.5: :authority, no :path), through the h2 crate hyper
    // itself uses.
    let tcp = TcpStream::connect(p.proxy).await.unwrap();
    let (mut h2c, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let connect = Request::builder()
        .method("CONNECT")
        .uri("example.com:443")
        .body(())
        .unwrap();
    let (resp, _) = h2c.send_request(connect, false).unwrap();
    let resp = tokio::time::timeout(DEADLINE, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), 405);
    let c = client();
    assert_eq!(get(&c, &p.url("/status/200")).await.0.status, 200);
    let m = wait_responses(&p, 4.0).await;
    let n = |code: &str, source: &str| responses(&m, code, source);
    assert_eq!(n("405", "proxy"), 2.0);
    assert_eq!(n("400", "proxy"), 1.0);
    assert_eq!(n("200", "upstream"), 1.0);
    assert_eq!(sum(&m, "statuslens_responses_total", &[]), 4.0);
    let seen: Vec<String> = up
        .seen
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.method.to_string())
        .collect();
    assert_eq!(seen, ["GET"], "the upstream saw only the GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_keep_alive_request_with_an_unread_body_keeps_its_connection() {
    // A proxy-made answer to an HTTP/1.0 keep-alive request whose body went unread told
    // the client `keep-alive`, then closed (only HTTP/1.1 bodies were read to their end
    // after the answer): the client's next request on it was lost.
    let p = Proc::start(&["--upstream", "http://127.0.0.1:1"]);
    let mut s = TcpStream::connect(p.proxy).await.unwrap();
    let head =
        "POST /x HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nContent-Length: 100000\r\n\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    read_until(&mut s, &mut got, whole_response).await;
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.0 502 "), "{text}");
    assert!(text.contains("connection: keep-alive"), "{text}");
    // The body it still owes, then a second request on the same connection.
    s.write_all(&vec![b'b'; 100_000]).await.unwrap();
    s.write_all(b"GET /y HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let mut again = Vec::new();
    read_until(&mut s, &mut again, whole_response).await;
    let again = String::from_utf8_lossy(&again);
    assert!(again.starts_with("HTTP/1.0 502 "), "{again}");
    let m = wait_responses(&p, 2.0).await;
    assert_eq!(responses(&m, "502", "proxy"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_keep_alive_client_keeps_its_connection_for_forwarded_answers() {
    // Forwarded answers to HTTP/1.0 clients were marked 1.0 without the upstream's
    // (hop-by-hop) Connection field, so hyper closed after each, keep-alive asked or not.
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    let mut s = TcpStream::connect(p.proxy).await.unwrap();
    for i in 0..3 {
        s.write_all(b"GET /status/200 HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        read_until(&mut s, &mut got, |b| b.ends_with(b"status 200")).await;
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(text.starts_with("http/1.0 200 "), "request {i}: {text}");
        assert!(
            text.contains("connection: keep-alive"),
            "request {i}: {text}"
        );
    }
    // Without keep-alive, one answer and the close, as HTTP/1.0 has it.
    let mut s = TcpStream::connect(p.proxy).await.unwrap();
    s.write_all(b"GET /status/200 HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut s, "an HTTP/1.0 request").await;
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.0 200 "), "{text}");
    assert!(!text.contains("keep-alive"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_works() {
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    let mut s = TcpStream::connect(p.proxy).await.unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    // Reads may split anywhere: keep one buffer and look for message boundaries in it.
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
    while all.len() < interim.len() {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed before 100 Continue: {:?}",
            String::from_utf8_lossy(&all)
        );
        all.extend_from_slice(&buf[..n]);
    }
    assert!(
        all.starts_with(interim),
        "{:?}",
        String::from_utf8_lossy(&all)
    );
    s.write_all(b"hello").await.unwrap();
    while !String::from_utf8_lossy(&all).ends_with("hello") {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&all));
        all.extend_from_slice(&buf[..n]);
    }
    let rest = String::from_utf8_lossy(&all[interim.len()..]).into_owned();
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_do_not_grow_with_traffic() {
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    let c = client();
    get(&c, &p.url("/warm")).await;
    let before = wait_responses(&p, 1.0).await.len();
    for i in 0..300 {
        let req = Request::get(p.url(&format!("/p/{i}/x?id={i}")))
            .header(format!("x-h-{i}"), format!("v{i}"))
            .header("user-agent", format!("agent-{i}"))
            .body(full(Bytes::new()))
            .unwrap();
        send(&c, req).await;
    }
    let m = wait_responses(&p, 301.0).await;
    assert_eq!(
        m.len(),
        before,
        "series count changed with distinct paths/headers"
    );
    for s in &m {
        for v in s.labels.values() {
            assert!(
                !v.contains("/p/") && !v.contains("agent-"),
                "raw traffic in a label: {s:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_redacts_secrets() {
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    let c = client();
    let req = Request::get(p.url("/status/401?user=ann&access_token=SECRET1&api_key=SECRET2"))
        .header("authorization", "Bearer SECRET3")
        .header("cookie", "session=SECRET4")
        .body(full(Bytes::new()))
        .unwrap();
    assert_eq!(send(&c, req).await.0.status, 401);
    let start = std::time::Instant::now();
    let line = loop {
        if let Some(l) = p.access_lines().into_iter().find(|l| l["status"] == 401) {
            break l;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no access line: {}",
            p.all_output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(line["route"], "default");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["class"], "4xx");
    assert_eq!(line["source"], "upstream");
    assert_eq!(
        line["path"],
        "/status/401?user=ann&access_token=REDACTED&api_key=REDACTED"
    );
    assert!(
        line["meaning"].as_str().unwrap().contains("token"),
        "{line}"
    );
    assert!(line["request_id"].as_str().unwrap().len() >= 8);
    for k in [
        "timestamp",
        "duration_ms",
        "bytes_in",
        "bytes_out",
        "upstream",
        "client",
    ] {
        assert!(!line[k].is_null(), "missing {k}: {line}");
    }
    let all = p.all_output();
    for secret in ["SECRET1", "SECRET2", "SECRET3", "SECRET4"] {
        assert!(!all.contains(secret), "{secret} reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_times_the_upstreams_head_apart_from_the_whole_request() {
    // A slow upstream and a slow download look alike in duration_ms; upstream_header_ms
    // (arrival to the upstream's response head, nginx's $upstream_header_time) tells
    // them apart. Lower bounds only: sleeps are minimums, however slow the box.
    let up = upstream().await;
    for fast in [true, false] {
        let p = start_with_proxy_settings(&format!("fast_path = {fast}"), up.addr);
        let c = client();
        assert_eq!(get(&c, &p.url("/stall/300")).await.0.status, 200);
        assert_eq!(get(&c, &p.url("/slowbody/50")).await.0.status, 200);
        let post = Request::post(p.url("/stall/300"))
            .body(chunked(
                vec![Bytes::from_static(b"abc")],
                Duration::ZERO,
                false,
            ))
            .unwrap();
        assert_eq!(send(&c, post).await.0.status, 200);
        let lines = p.wait_access_lines(3).await;
        let ms = |l: &serde_json::Value, k: &str| {
            l[k].as_f64()
                .unwrap_or_else(|| panic!("no {k} (fast_path = {fast}): {l}"))
        };
        for l in [&lines[0], &lines[2]] {
            // The head came after the stall; the 7-byte body right behind it.
            assert!(ms(l, "upstream_header_ms") >= 300.0, "{l}");
            assert!(ms(l, "upstream_header_ms") <= ms(l, "duration_ms"), "{l}");
        }
        // The head at once, then ten chunks 50 ms apart.
        let slow = &lines[1];
        assert!(
            ms(slow, "duration_ms") - ms(slow, "upstream_header_ms") >= 400.0,
            "{slow}"
        );
        // No upstream answered: no such field.
        drop(p);
        let p = start_with_proxy_settings(&format!("fast_path = {fast}"), closed_port());
        assert_eq!(get(&c, &p.url("/x")).await.0.status, 502);
        let lines = p.wait_access_lines(1).await;
        assert!(lines[0].get("upstream_header_ms").is_none(), "{}", lines[0]);
        assert!(ms(&lines[0], "duration_ms") >= 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_proxy_ports_stay_apart() {
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    let c = client();
    // The proxy forwards /metrics like any other path.
    let (_, body) = get(&c, &p.url("/metrics")).await;
    assert_eq!(body, "ok");
    assert_eq!(up.seen.0.lock().unwrap().last().unwrap().uri, "/metrics");
    // The admin port serves its own paths and forwards nothing.
    let n_seen = up.seen.0.lock().unwrap().len();
    assert_eq!(get(&c, &p.admin_url("/healthz")).await.0.status, 200);
    assert_eq!(get(&c, &p.admin_url("/readyz")).await.0.status, 200);
    assert_eq!(get(&c, &p.admin_url("/status/200")).await.0.status, 404);
    assert_eq!(up.seen.0.lock().unwrap().len(), n_seen);
    // Counted when the exchange ends, just after the client has its answer.
    wait_responses(&p, 1.0).await;
    let (parts, body) = get(&c, &p.admin_url("/api/status")).await;
    assert_eq!(parts.headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let route = &v["routes"][0];
    assert_eq!(route["route"], "default");
    assert_eq!(route["total"], 1);
    assert_eq!(route["by_code"][0]["code"], 200);
    assert_eq!(route["by_code"][0]["reason"], "OK");
    assert!(route["signals"]["unauthorized"]["ratio"].is_number());
}

/// Waits until the admin API, still serving, says the proxy is draining (`/readyz` 503).
async fn draining_reported(p: &Proc) {
    let start = std::time::Instant::now();
    loop {
        let r = client()
            .request(
                Request::get(p.admin_url("/readyz"))
                    .body(full(Bytes::new()))
                    .unwrap(),
            )
            .await
            .expect("admin still serving while draining");
        if r.status() == 503 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "/readyz never said 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let up = upstream().await;
    let mut p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    // The upstream answers only when the test says so, after it has looked at the drain.
    let url = p.url("/gate");
    let inflight = tokio::spawn(async move { get(&client(), &url).await });
    wait_metrics(&p, "request in flight", |m| {
        sum(m, "statuslens_requests_in_flight", &[]) == 1.0
    })
    .await;
    p.sigterm();
    // While it drains, the admin port stays up and says "not ready".
    draining_reported(&p).await;
    // A newcomer during the drain is not served: refused, or closed unanswered.
    let seen = up.seen.0.lock().unwrap().len();
    if let Ok(mut s) = TcpStream::connect(p.proxy).await {
        let _ = s
            .write_all(b"GET /status/200 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        // Closed (a reset, when the listener closed with it in its backlog) or answered;
        // held open unanswered is what must not happen.
        let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf))
            .await
            .expect("a newcomer during the drain was held open unanswered");
        // Accepted in the moment before the listener closed: the draining answer.
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 503"),
            "served while draining: {text}"
        );
    }
    assert_eq!(
        up.seen.0.lock().unwrap().len(),
        seen,
        "forwarded while draining"
    );
    assert!(!inflight.is_finished());
    up.gate.add_permits(1);
    let (parts, body) = inflight.await.unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(body, "gated");
    assert_eq!(p.wait_exit(), Some(0), "{}", p.all_output());
    let out = p.all_output();
    assert!(out.contains("\"draining\""), "{out}");
}

/// A drain that begins while the upstream thinks ends the client's connection after the
/// response, so that response says `Connection: close` (RFC 9112 §9.6). The fast path
/// decided that before it forwarded the request: the answer came as keep-alive and the
/// connection was closed under the client's next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_finished_during_a_drain_says_connection_close() {
    let up = upstream().await;
    let mut p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    let mut s = TcpStream::connect(p.proxy).await.unwrap();
    s.write_all(b"GET /gate HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    wait_metrics(&p, "request in flight", |m| {
        sum(m, "statuslens_requests_in_flight", &[]) == 1.0
    })
    .await;
    p.sigterm();
    draining_reported(&p).await;
    up.gate.add_permits(1);
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut got))
        .await
        .expect("the connection closed after the response")
        .unwrap();
    let got = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(got.starts_with("http/1.1 200"), "{got}");
    assert!(got.contains("\r\nconnection: close\r\n"), "{got}");
    assert_eq!(p.wait_exit(), Some(0), "{}", p.all_output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cut_at_the_drain_timeout_count_as_the_proxys_503() {
    // The clients did not go away: statuslens stopped them. They were counted and logged
    // as 499, source "client" (DESIGN: "the client went away"), which blames the client
    // for a shutdown; now 503 (DESIGN: proxy-made "503 ... draining"), source "proxy".
    let up = upstream().await;
    for fast in [true, false] {
        let settings = format!("drain_timeout = \"1s\"\nfast_path = {fast}");
        let mut p = start_with_proxy_settings(&settings, up.addr);
        // Waiting for a head (HTTP/1.1 and h2c), and in the middle of a body.
        let mut cut = Vec::new();
        for (c, path) in [
            (client(), "/stall/20000"),
            (h2_client(), "/stall/20000"),
            (client(), "/slowbody/1000"),
        ] {
            let req = Request::get(p.url(path)).body(full(Bytes::new())).unwrap();
            cut.push(tokio::spawn(async move {
                let resp = c.request(req).await.ok()?;
                let body = http_body_util::BodyExt::collect(resp.into_body()).await;
                body.ok().map(|b| b.to_bytes())
            }));
        }
        wait_metrics(&p, "three requests in flight", |m| {
            sum(m, "statuslens_requests_in_flight", &[]) == 3.0
        })
        .await;
        p.sigterm();
        assert_eq!(p.wait_exit(), Some(0), "{}", p.all_output());
        for c in cut {
            assert_eq!(
                c.await.unwrap(),
                None,
                "fast_path = {fast}: a cut request completed"
            );
        }
        let lines = p.access_lines();
        assert_eq!(lines.len(), 3, "fast_path = {fast}: {lines:#?}");
        for l in &lines {
            assert_eq!(
                (&l["status"], &l["source"]),
                (&serde_json::json!(503), &serde_json::json!("proxy")),
                "fast_path = {fast}: {l}"
            );
            // The upstream had the request: another try is only safe if idempotent,
            // not the plain backoff a 503 the proxy refused up front gets.
            assert_eq!(l["retry"], "idempotent_only", "fast_path = {fast}: {l}");
        }
        let slow = lines
            .iter()
            .find(|l| l["path"] == "/slowbody/1000")
            .unwrap();
        assert_eq!(slow["upstream_status"], 200, "fast_path = {fast}: {slow}");
    }
}

/// A drain waits for upgraded connections as for requests in flight: a WebSocket tunnel
/// carries on until it ends, or until the drain timeout closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_waits_for_websocket_tunnels_up_to_the_drain_timeout() {
    async fn echo(s: &mut TcpStream, msg: &[u8]) {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(DEADLINE, s.read_exact(&mut got))
            .await
            .expect("echo within the deadline")
            .expect("the tunnel is still open");
        assert_eq!(got, msg);
    }
    let up = upstream().await;

    // Ended by the client mid-drain: the proxy exits as soon as it has, not at the
    // (far) drain timeout — `wait_exit` gives up long before it.
    let mut p = start_with_proxy_settings("drain_timeout = \"300s\"", up.addr);
    let (mut s, head) = open_websocket(p.proxy).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    echo(&mut s, b"before").await;
    p.sigterm();
    // The listener closes as the drain begins.
    let start = std::time::Instant::now();
    while TcpStream::connect(p.proxy).await.is_ok() {
        assert!(start.elapsed() < DEADLINE, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    echo(&mut s, b"while draining").await;
    assert!(
        !p.all_output().contains("drained; exiting"),
        "drained with a tunnel open: {}",
        p.all_output()
    );
    drop(s);
    assert_eq!(p.wait_exit(), Some(0), "{}", p.all_output());
    assert!(
        p.all_output().contains("drained; exiting"),
        "{}",
        p.all_output()
    );

    // Never ended: closed at the drain timeout.
    let mut p = start_with_proxy_settings("drain_timeout = \"1s\"", up.addr);
    let (mut s, _) = open_websocket(p.proxy).await;
    echo(&mut s, b"before").await;
    p.sigterm();
    assert_eq!(p.wait_exit(), Some(0), "{}", p.all_output());
    read_until_closed(&mut s, "a tunnel past the drain timeout").await;
    assert!(
        p.all_output().contains("drain timeout reached"),
        "{}",
        p.all_output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_check() {
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    let c = client();
    for code in [200, 401, 429, 503] {
        get(&c, &p.url(&format!("/status/{code}"))).await;
    }
    let (_, body) = get(&c, &p.admin_url("/metrics")).await;
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed by .ci/run (Debian prometheus)");
    child.stdin.take().unwrap().write_all(&body).await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarding_list_sent_as_several_lines_is_appended_to_whole() {
    // X-Forwarded-For may arrive as several lines, one list (RFC 9110 §5.3). Only the
    // first line was appended to and the others were dropped: the upstream lost hops.
    let up = upstream().await;
    for fast in [true, false] {
        let p = start_with_proxy_settings(&format!("fast_path = {fast}"), up.addr);
        let mut s = TcpStream::connect(p.proxy).await.unwrap();
        s.write_all(
            b"GET /status/200 HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.1.1.1\r\n\
              X-Forwarded-Proto: https\r\nX-Forwarded-For: 2.2.2.2, 3.3.3.3\r\n\
              X-Forwarded-Proto: http\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let got = read_until_closed(&mut s, "HTTP/1.1").await;
        assert!(got.starts_with(b"HTTP/1.1 200 "), "fast_path = {fast}");
        let req = Request::get(p.url("/status/200"))
            .header("x-forwarded-for", "1.1.1.1")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-for", "2.2.2.2, 3.3.3.3")
            .header("x-forwarded-proto", "http")
            .body(full(Bytes::new()))
            .unwrap();
        assert_eq!(send(&h2_client(), req).await.0.status, 200);
        // A forwarding field `Connection` names is hop-by-hop: dropped, then statuslens'
        // own value alone.
        let mut s = TcpStream::connect(p.proxy).await.unwrap();
        s.write_all(
            b"GET /status/200 HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 9.9.9.9\r\n\
              Connection: close, X-Forwarded-For\r\n\r\n",
        )
        .await
        .unwrap();
        let got = read_until_closed(&mut s, "named").await;
        assert!(got.starts_with(b"HTTP/1.1 200 "), "fast_path = {fast}");
        let seen = up.seen.0.lock().unwrap();
        let named = seen.last().unwrap().headers.get_all("x-forwarded-for");
        let named: Vec<_> = named.iter().collect();
        assert_eq!(
            named,
            ["127.0.0.1"],
            "fast_path = {fast}: named by Connection"
        );
        for (parts, via) in seen[seen.len() - 3..].iter().zip(["HTTP/1.1", "h2c"]) {
            let all = |name: &str| -> Vec<String> {
                let values = parts.headers.get_all(name).iter();
                values.map(|v| v.to_str().unwrap().to_string()).collect()
            };
            let what = format!("fast_path = {fast}, {via}");
            assert_eq!(
                all("x-forwarded-for"),
                ["1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1"],
                "{what}"
            );
            assert_eq!(all("x-forwarded-proto"), ["https, http, http"], "{what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_of_1_to_200_bytes_is_kept_others_are_replaced() {
    // README: an incoming X-Request-Id of 1 to 200 bytes is kept, else one is made (a
    // huge id would ride along in every log line). Same on both paths.
    let up = upstream().await;
    for fast in [true, false] {
        let p = start_with_proxy_settings(&format!("fast_path = {fast}"), up.addr);
        let longest = "a".repeat(200);
        let too_long = "b".repeat(201);
        for (id, kept) in [
            (longest.as_str(), true),
            (too_long.as_str(), false),
            ("", false),
        ] {
            let req = Request::get(p.url("/status/200"))
                .header("x-request-id", id)
                .body(full(Bytes::new()))
                .unwrap();
            assert_eq!(send(&client(), req).await.0.status, 200);
            let seen = up.seen.0.lock().unwrap().last().unwrap().headers.clone();
            let sent: Vec<_> = seen.get_all("x-request-id").iter().collect();
            assert_eq!(sent.len(), 1, "fast_path = {fast}, {} bytes", id.len());
            assert_eq!(
                sent[0] == id,
                kept,
                "fast_path = {fast}, {} bytes",
                id.len()
            );
            assert!(!sent[0].is_empty(), "fast_path = {fast}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_answers_before_the_body_leaves_the_client_connection_open() {
    // An API that refuses a POST by its head (a 401 for a missing key) answers before it
    // reads the body, and closes. hyper then closed the client's connection after the
    // answer; sent before the body was given up, the answer said so, sent after, it did
    // not, and a client reusing the connection at once lost its next request. The rest
    // of the body is now read and dropped (as nginx does), up to 1 MiB: past that, the
    // connection closes after all.
    let up = raw_upstream(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\n\r\nno key").await;
    let p = start_with_proxy_settings("", up);
    let answered = |g: &[u8]| g.ends_with(b"no key");
    let cases = [
        (
            "Transfer-Encoding: chunked",
            b"3\r\nabc\r\n0\r\n\r\n".to_vec(),
            true,
        ),
        ("Content-Length: 100000", vec![b'a'; 100_000], true),
        ("Content-Length: 2000000", vec![b'a'; 2_000_000], false),
    ];
    for (framing, body, kept) in cases {
        let mut s = TcpStream::connect(p.proxy).await.unwrap();
        let head = format!("POST /x HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        // The answer comes before the body is sent, keeping the connection...
        let mut got = Vec::new();
        read_until(&mut s, &mut got, answered).await;
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 401"), "{framing}: {text}");
        assert!(!text.contains("connection: close"), "{framing}: {text}");
        // ...which, once the body is in, takes the next request.
        let next = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n";
        let sent = async {
            s.write_all(&body).await?;
            s.write_all(next).await
        };
        if kept {
            sent.await.unwrap();
            let mut got = Vec::new();
            read_until(&mut s, &mut got, answered).await;
            assert!(got.starts_with(b"HTTP/1.1 401"), "{framing}");
        } else {
            // Past the limit the write may meet the close, and the close may be a reset
            // (the body's unread rest still in the socket).
            let _ = sent.await;
            let mut rest = Vec::new();
            let read = tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest))
                .await
                .expect("closed within the deadline");
            if let Err(e) = read {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{framing}");
            }
            assert!(
                rest.is_empty(),
                "{framing}: {}",
                String::from_utf8_lossy(&rest)
            );
        }
    }
    let m = wait_settled(&p, 5.0).await;
    assert_eq!(responses(&m, "401", "upstream"), 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_is_read_to_its_end_only_where_the_connection_stays_open() {
    // The rest of a body the upstream did not take is read so that the connection can
    // go on (see the test above) — but not where it closes anyway, and not from a client
    // that asked for 100 Continue and never got it: each of those would hold the
    // connection open waiting for bytes no one needs.
    use tokio::io::AsyncWriteExt;
    let up = raw_upstream(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\n\r\nno key").await;
    let p = start_with_proxy_settings(
        "header_read_timeout = \"1s\"\nbody_read_timeout = \"60s\"",
        up,
    );
    let down = start_with_proxy_settings("body_read_timeout = \"60s\"", closed_port());
    let answered = |g: &[u8]| g.windows(4).any(|w| w == b"\r\n\r\n");
    let head = |extra: &str| {
        format!("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n{extra}\r\n")
    };
    // Closing cases: `Connection: close`; `Expect: 100-continue` with an upstream that
    // cannot be reached (the body is never asked for, so no 100 goes out).
    for (at, extra, what) in [
        (p.proxy, "Connection: close\r\n", "Connection: close"),
        (down.proxy, "Expect: 100-continue\r\n", "Expect, no 100"),
    ] {
        let mut s = TcpStream::connect(at).await.unwrap();
        s.write_all(head(extra).as_bytes()).await.unwrap();
        let got = read_until_closed(&mut s, what).await;
        assert!(answered(&got), "{what}: {}", String::from_utf8_lossy(&got));
    }
    // Kept: the same unreachable upstream without Expect (the 502 keeps the connection
    // for the next request), and a client slower to send its body than the idle clock
    // (header_read_timeout, 1 s), which must not close the connection under the discard.
    for (at, pause, what) in [
        (down.proxy, Duration::ZERO, "502"),
        (p.proxy, Duration::from_millis(2500), "slow body"),
    ] {
        let mut s = TcpStream::connect(at).await.unwrap();
        s.write_all(head("").as_bytes()).await.unwrap();
        let mut got = Vec::new();
        read_until(&mut s, &mut got, answered).await;
        // A slow client, on purpose: the pause is what is tested.
        tokio::time::sleep(pause).await;
        s.write_all(&vec![b'a'; 100_000]).await.unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut next = Vec::new();
        read_until(&mut s, &mut next, answered).await;
        assert!(next.starts_with(b"HTTP/1.1 "), "{what}");
    }
}

//! Limits the proxy enforces itself, and access-log volume.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;

fn limited_config(up: std::net::SocketAddr, volume: &str) -> std::path::PathBuf {
    write_config(&format!(
        r#"
[proxy]
max_header_bytes = 2048
max_headers = 20
max_uri_bytes = 256

[access_log]
volume = "{volume}"

[[routes]]
name = "small"
match = {{ path_prefix = "/small/" }}
upstream = "http://{up}"
max_body_bytes = 1000

[[routes]]
name = "default"
upstream = "http://{up}"
"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_413_414_431_and_count_them() {
    let up = upstream().await;
    let cfg = limited_config(up.addr, "all");
    let p = Proc::start(&["--config", cfg.to_str().unwrap()]);
    let c = client();
    // Body over the route limit, announced by Content-Length.
    let (parts, _) = send(
        &c,
        Request::post(p.url("/small/echo"))
            .body(full(vec![b'x'; 1001]))
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, 413);
    // Body over the limit, chunked: cut off mid-stream.
    let chunks = vec![Bytes::from(vec![b'y'; 600]); 3];
    let (parts, _) = send(
        &c,
        Request::post(p.url("/small/drain"))
            .body(chunked(chunks, Duration::from_millis(5), false))
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, 413);
    // At the limit is fine; other routes are unlimited.
    let (parts, body) = send(
        &c,
        Request::post(p.url("/small/echo"))
            .body(full(vec![b'z'; 1000]))
            .unwrap(),
    )
    .await;
    assert_eq!((parts.status.as_u16(), body.len()), (200, 1000));
    let (parts, _) = send(
        &c,
        Request::post(p.url("/echo"))
            .body(full(vec![b'z'; 5000]))
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, 200);
    // URI too long.
    let long = format!("/status/200?{}", "a".repeat(300));
    assert_eq!(get(&c, &p.url(&long)).await.0.status, 414);
    // Header bytes and header count.
    let (parts, _) = send(
        &c,
        Request::get(p.url("/x"))
            .header("x-big", "b".repeat(3000))
            .body(full(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, 431);
    let mut req = Request::get(p.url("/x"));
    for i in 0..25 {
        req = req.header(format!("x-h{i}"), "v");
    }
    assert_eq!(
        send(&c, req.body(full(Bytes::new())).unwrap())
            .await
            .0
            .status,
        431
    );

    let m = wait_responses(&p, 7.0).await;
    let n = |route: &str, code: &str| {
        sum(
            &m,
            "statuslens_responses_total",
            &[("route", route), ("code", code), ("source", "proxy")],
        )
    };
    assert_eq!(n("small", "413"), 2.0);
    assert_eq!(n("default", "414"), 1.0);
    assert_eq!(n("default", "431"), 2.0);
    assert_eq!(
        sum(&m, "statuslens_responses_total", &[("source", "upstream")]),
        2.0
    );
    assert_eq!(sum(&m, "statuslens_responses_total", &[]), 7.0);
}

/// The statuses logged, sorted: lines from requests a client sent on two connections
/// (its pool may open a second one) can reach the log in either order.
async fn logged_statuses(p: &Proc, requests: f64, expect: usize) -> Vec<u64> {
    // Every exchange has ended (and logged, right after it was counted) once all are
    // counted; then the expected lines must arrive, and a reload's line, written after
    // anything logged before it, fences off any line that should not be there.
    wait_responses(p, requests).await;
    p.wait_access_lines(expect).await;
    p.signal("HUP");
    p.wait_output("configuration reloaded");
    let mut got: Vec<u64> = p
        .access_lines()
        .iter()
        .map(|l| l["status"].as_u64().unwrap())
        .collect();
    got.sort_unstable();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_volume_all_errors_off() {
    let up = upstream().await;
    for (volume, want) in [
        ("all", vec![200, 404, 414, 503]),
        ("errors", vec![404, 414, 503]),
        ("off", vec![414]),
    ] {
        let cfg = limited_config(up.addr, volume);
        let p = Proc::start(&["--config", cfg.to_str().unwrap()]);
        let c = client();
        for code in [200, 404, 503] {
            get(&c, &p.url(&format!("/status/{code}"))).await;
        }
        // A proxy-made error is logged whatever the volume.
        get(&c, &p.url(&format!("/{}", "a".repeat(300)))).await;
        assert_eq!(
            logged_statuses(&p, 4.0, want.len()).await,
            want,
            "volume {volume}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_is_respected() {
    let up = upstream().await;
    let cfg = limited_config(up.addr, "all");
    let p = Proc::start_env(
        &["--config", cfg.to_str().unwrap()],
        &[("RUST_LOG", "info,statuslens::access=off")],
    );
    get(&client(), &p.url("/status/200")).await;
    wait_metrics(&p, "counted", |m| {
        sum(m, "statuslens_responses_total", &[]) == 1.0
    })
    .await;
    // Log lines come out in order: once a line logged after the request is out, an
    // access line for it would be too.
    p.signal("HUP");
    p.wait_output("configuration reloaded");
    assert!(p.access_lines().is_empty(), "{}", p.all_output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_answer_the_client_left_names_no_upstream_status() {
    // A 414 the proxy makes itself, the client's FIN right behind its request: hyper may
    // drop the answer unsent (a 499) or send it (a 414). Either way no upstream answered,
    // so the log line must not say one did — on hyper's path and on the fast path.
    let up = upstream().await;
    for fast in [false, true] {
        let p =
            start_with_proxy_settings(&format!("max_uri_bytes = 256\nfast_path = {fast}"), up.addr);
        let long = "a".repeat(300);
        for _ in 0..20 {
            let mut s = tokio::net::TcpStream::connect(p.proxy).await.unwrap();
            let req = format!("GET /{long} HTTP/1.1\r\nHost: x\r\n\r\n");
            tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes())
                .await
                .unwrap();
            tokio::io::AsyncWriteExt::shutdown(&mut s).await.unwrap();
            read_until_closed(&mut s, "request + FIN").await;
        }
        wait_responses(&p, 20.0).await;
        let lines = p.wait_access_lines(20).await;
        assert_eq!(lines.len(), 20, "fast_path = {fast}");
        for line in &lines {
            let status = line["status"].as_u64().unwrap();
            assert!(status == 414 || status == 499, "fast_path = {fast}: {line}");
            assert!(
                line.get("upstream_status").is_none(),
                "fast_path = {fast}: {line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_heads_meet_the_same_header_limits_as_http1() {
    // hyper's HTTP/2 server refuses header lists over 16 KiB by default, with a 431 of
    // its own that statuslens never sees (uncounted, unlogged); the proxy's limit
    // (`max_header_bytes`, 64 KiB by default) must decide on every protocol.
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    for c in [client(), h2_client()] {
        for (size, want) in [(40 * 1024, 200), (70 * 1024, 431)] {
            let (parts, _) = send(
                &c,
                Request::get(p.url("/status/200"))
                    .header("x-big", "b".repeat(size))
                    .body(full(Bytes::new()))
                    .unwrap(),
            )
            .await;
            assert_eq!(parts.status, want, "{:?}, {size} bytes", parts.version);
        }
    }
    let m = wait_responses(&p, 4.0).await;
    let n = |code: &str, source: &str| responses(&m, code, source);
    assert_eq!((n("200", "upstream"), n("431", "proxy")), (2.0, 2.0));
    assert_eq!(sum(&m, "statuslens_responses_total", &[]), 4.0);
}

//! Live reload: SIGHUP and POST /api/reload swap the configuration without touching
//! requests in flight or counters; a bad file is rejected and the old config stays.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use serde_json::Value;

fn config(extra_admin: &str, routes: &str) -> String {
    format!("[admin]\n{extra_admin}\n\n{routes}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_routes_keeping_in_flight_requests_and_counters() {
    let a = upstream().await;
    let b = upstream().await;
    let path = write_config(&config(
        "",
        &format!(
            "[[routes]]\nname = \"api\"\nupstream = \"http://{}\"\n",
            a.addr
        ),
    ));
    let p = Proc::start(&["--config", path.to_str().unwrap()]);
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, &p.url("/status/200")).await.0.status, 200);
    }
    // A request in flight across the reload: the upstream holds it until told to answer.
    let url = p.url("/gate");
    let slow = tokio::spawn(async move { get(&client(), &url).await });
    wait_metrics(&p, "in flight", |m| {
        sum(m, "statuslens_requests_in_flight", &[("route", "api")]) == 1.0
    })
    .await;

    std::fs::write(
        &path,
        config(
            "",
            &format!(
                "[[routes]]\nname = \"api\"\nupstream = \"http://{b}\"\n\n[[routes]]\nname = \"new\"\nmatch = {{ path_prefix = \"/new/\" }}\nupstream = \"http://{b}\"\n",
                b = b.addr
            ),
        ),
    )
    .unwrap();
    p.signal("HUP");
    p.wait_output("configuration reloaded");

    // New requests follow the new config...
    let before_b = b.seen.0.lock().unwrap().len();
    assert_eq!(get(&c, &p.url("/status/202")).await.0.status, 202);
    assert_eq!(
        b.seen.0.lock().unwrap().len(),
        before_b + 1,
        "api did not move to upstream b"
    );
    assert_eq!(get(&c, &p.url("/new/status/201")).await.0.status, 201);
    // ...the request in flight finishes on the old one...
    assert!(
        !slow.is_finished(),
        "the gated request ended before the reload"
    );
    a.gate.add_permits(1);
    let (parts, body) = slow.await.unwrap();
    assert_eq!((parts.status.as_u16(), body), (200, Bytes::from("gated")));
    assert_eq!(a.seen.0.lock().unwrap().len(), 4);
    // ...and counters carry on: nothing reset, everything counted once.
    let m = wait_settled(&p, 6.0).await;
    assert_eq!(
        sum(
            &m,
            "statuslens_responses_total",
            &[("route", "api"), ("code", "200")]
        ),
        4.0
    );
    assert_eq!(
        sum(
            &m,
            "statuslens_responses_total",
            &[("route", "api"), ("code", "202")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &m,
            "statuslens_responses_total",
            &[("route", "new"), ("code", "201")]
        ),
        1.0
    );
    assert_eq!(sum(&m, "statuslens_responses_total", &[]), 6.0);
    assert_eq!(sum(&m, "statuslens_requests_in_flight", &[]), 0.0);
    // Spike series exist for the new route too.
    assert!(m
        .iter()
        .any(|s| s.name == "statuslens_spike_active" && s.labels["route"] == "new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_is_rejected_and_the_old_config_stays() {
    let a = upstream().await;
    let b = upstream().await;
    let path = write_config(&config(
        "",
        &format!(
            "[[routes]]\nname = \"api\"\nupstream = \"http://{}\"\n",
            a.addr
        ),
    ));
    let p = Proc::start(&["--config", path.to_str().unwrap()]);
    // The load at start-up took; a plain listener has no certificate to expire.
    let last_ok = |m: &[Sample]| sum(m, "statuslens_config_last_reload_successful", &[]);
    let took_at = |m: &[Sample]| {
        sum(
            m,
            "statuslens_config_last_reload_success_timestamp_seconds",
            &[],
        )
    };
    let m = metrics(&p).await;
    assert_eq!(last_ok(&m), 1.0);
    let started = took_at(&m);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        now - 600.0 < started && started <= now,
        "{started} vs {now}"
    );
    assert!(!m
        .iter()
        .any(|s| s.name.starts_with("statuslens_tls_certificate")));
    std::fs::write(
        &path,
        "[[routes]]\nname = \"api\"\nupstrem = \"http://127.0.0.1:1\"\n",
    )
    .unwrap();
    p.signal("HUP");
    p.wait_output("configuration reload rejected");
    assert!(p.all_output().contains("routes[0]"), "{}", p.all_output());
    // Prometheus sees the rejection (StatuslensConfigReloadFailed); the time stays the
    // last good load's.
    let m = metrics(&p).await;
    assert_eq!(last_ok(&m), 0.0);
    assert_eq!(took_at(&m), started);
    // Changing what is built once (listeners, TLS, the webhook) is refused, naming it,
    // and nothing else in that file is applied either: its route to `b` must not take.
    // (The test's --listen/--admin flags override the file, so the webhook shows it.)
    std::fs::write(
        &path,
        format!("[detection]\nwebhook = \"http://127.0.0.1:9/\"\n[[routes]]\nname = \"api\"\nupstream = \"http://{}\"\n", b.addr),
    )
    .unwrap();
    p.signal("HUP");
    let start = Instant::now();
    while !p
        .all_output()
        .contains("detection.webhook cannot change on reload")
    {
        assert!(start.elapsed() < DEADLINE, "{}", p.all_output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The webhook's instance label is built into its task too.
    std::fs::write(
        &path,
        format!("[detection]\ninstance = \"elsewhere\"\n[[routes]]\nname = \"api\"\nupstream = \"http://{}\"\n", b.addr),
    )
    .unwrap();
    p.signal("HUP");
    p.wait_output("detection.instance cannot change on reload");
    // So are the log's format and the header clock (once accepted and not applied).
    for (table, field) in [
        ("[access_log]\nformat = \"pretty\"", "access_log.format"),
        (
            "[proxy]\nheader_read_timeout = \"3s\"",
            "proxy.header_read_timeout",
        ),
    ] {
        std::fs::write(
            &path,
            format!(
                "{table}\n[[routes]]\nname = \"api\"\nupstream = \"http://{}\"\n",
                b.addr
            ),
        )
        .unwrap();
        p.signal("HUP");
        p.wait_output(&format!("{field} cannot change on reload"));
    }
    // Still serving with the old config.
    assert_eq!(get(&client(), &p.url("/status/200")).await.0.status, 200);
    assert_eq!(a.seen.0.lock().unwrap().len(), 1);
    assert_eq!(b.seen.0.lock().unwrap().len(), 0);
    assert_eq!(last_ok(&metrics(&p).await), 0.0);

    // A good file takes again, and says so.
    std::fs::write(
        &path,
        format!(
            "[[routes]]\nname = \"api\"\nupstream = \"http://{}\"\n",
            b.addr
        ),
    )
    .unwrap();
    p.signal("HUP");
    p.wait_output("configuration reloaded");
    let m = metrics(&p).await;
    assert_eq!(last_ok(&m), 1.0);
    assert!(took_at(&m) > started, "{} <= {started}", took_at(&m));
    assert_eq!(get(&client(), &p.url("/status/200")).await.0.status, 200);
    assert_eq!(b.seen.0.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_api_reload_when_enabled() {
    let a = upstream().await;
    let b = upstream().await;
    let routes = |u: std::net::SocketAddr| {
        format!("[[routes]]\nname = \"api\"\nupstream = \"http://{u}\"\n")
    };
    // Disabled by default.
    let path = write_config(&config("", &routes(a.addr)));
    let p = Proc::start(&["--config", path.to_str().unwrap()]);
    let c = client();
    let post = |url: String| Request::post(url).body(full(Bytes::new())).unwrap();
    assert_eq!(
        send(&c, post(p.admin_url("/api/reload"))).await.0.status,
        403
    );
    drop(p);

    let path = write_config(&config("reload = true", &routes(a.addr)));
    let p = Proc::start(&["--config", path.to_str().unwrap()]);
    std::fs::write(&path, config("reload = true", &routes(b.addr))).unwrap();
    let (parts, body) = send(&c, post(p.admin_url("/api/reload"))).await;
    assert_eq!(parts.status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["reloaded"], true);
    assert_eq!(v["routes"], 1);
    get(&c, &p.url("/status/200")).await;
    assert_eq!(b.seen.0.lock().unwrap().len(), 1);
    // A bad file: 422 with the error, and the config in effect stays.
    std::fs::write(
        &path,
        "[[routes]]\nname = \"api\"\nupstream = \"ftp://nope\"\n",
    )
    .unwrap();
    let (parts, body) = send(&c, post(p.admin_url("/api/reload"))).await;
    assert_eq!(parts.status, 422);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["reloaded"], false);
    assert!(
        v["error"].as_str().unwrap().contains("routes[0].upstream"),
        "{v}"
    );
    get(&c, &p.url("/status/200")).await;
    assert_eq!(b.seen.0.lock().unwrap().len(), 2);
    // GET is not a reload.
    assert_eq!(get(&c, &p.admin_url("/api/reload")).await.0.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_a_config_file_changes_nothing() {
    // Zero-config (`--upstream`): nothing to re-read. The signal is logged as a rejected
    // reload and the proxy keeps serving as before.
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    p.signal("HUP");
    p.wait_output("nothing to reload");
    let (parts, body) = get(&client(), &p.url("/status/200")).await;
    assert_eq!(
        (parts.status.as_u16(), &body[..]),
        (200, &b"status 200"[..])
    );
    // No file was read, so no load failed: nothing to alert on.
    let m = metrics(&p).await;
    assert_eq!(
        sum(&m, "statuslens_config_last_reload_successful", &[]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_drain_timeout_is_the_one_shutdown_uses() {
    // It was read once at start-up: a reload said "reloaded" and changed nothing.
    let a = upstream().await;
    let routes = format!(
        "[[routes]]\nname = \"api\"\nupstream = \"http://{}\"\n",
        a.addr
    );
    let path = write_config(&format!("[proxy]\ndrain_timeout = \"60s\"\n{routes}"));
    let mut p = Proc::start(&["--config", path.to_str().unwrap()]);
    let limit = |m: &[Sample]| sum(m, "statuslens_connections_limit", &[]);
    assert_eq!(limit(&metrics(&p).await), 10000.0);
    std::fs::write(
        &path,
        format!("[proxy]\ndrain_timeout = \"1s\"\nmax_connections = 500\n{routes}"),
    )
    .unwrap();
    p.signal("HUP");
    p.wait_output("configuration reloaded");
    // The connection limit is another value a reload changes: its gauge follows.
    assert_eq!(limit(&metrics(&p).await), 500.0);
    // Held by the upstream until the test ends: only the drain timeout ends it.
    let url = p.url("/gate");
    let held = tokio::spawn(async move { client().get(url.parse().unwrap()).await });
    wait_metrics(&p, "in flight", |m| {
        sum(m, "statuslens_requests_in_flight", &[]) == 1.0
    })
    .await;
    p.sigterm();
    // wait_exit gives up at 30 s, well before the old 60 s drain would end.
    assert_eq!(p.wait_exit(), Some(0), "{}", p.all_output());
    assert!(
        p.all_output().contains("\"drain_timeout_ms\":1000"),
        "{}",
        p.all_output()
    );
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_racing_each_other_and_traffic_lose_and_double_count_nothing() {
    // Reloads while requests flow on every path (the fast path, hyper's with a chunked
    // body, h2c), several at once (SIGHUP and POST /api/reload racing): no request
    // fails, each is counted and logged exactly once, and the last file is the one in
    // effect.
    let a = upstream().await;
    let b = upstream().await;
    let version = |round: usize| {
        let up = if round % 2 == 0 { a.addr } else { b.addr };
        let extra = if round % 3 == 0 {
            format!("\n[[routes]]\nname = \"extra\"\nmatch = {{ path_prefix = \"/extra/\" }}\nupstream = \"http://{}\"\n", a.addr)
        } else {
            String::new()
        };
        // A route of this round's own: only the last file has the last one.
        config(
            "reload = true",
            &format!(
                "[[routes]]\nname = \"api\"\nupstream = \"http://{up}\"\n{extra}\n\
                 [[routes]]\nname = \"r{round}\"\nmatch = {{ path_prefix = \"/r{round}/\" }}\n\
                 upstream = \"http://{}\"\n",
                b.addr
            ),
        )
    };
    let path = write_config(&version(0));
    let p = Proc::start(&["--config", path.to_str().unwrap()]);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut traffic = Vec::new();
    // Bodies go to /drain, which reads them before answering: an upstream that answers
    // first and closes resets the connection under the body's bytes, a 502 no proxy can
    // avoid (tests/proxy.rs covers what statuslens owes the client then).
    for kind in ["fast", "post", "chunked", "h2c", "h2post"] {
        let path = if kind.contains("post") || kind == "chunked" {
            "/drain"
        } else {
            "/status/200"
        };
        let (stop, url) = (stop.clone(), p.url(path));
        traffic.push(tokio::spawn(async move {
            let c = if kind.starts_with("h2") {
                h2_client()
            } else {
                client()
            };
            let mut sent = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let req = if kind == "chunked" || kind == "h2post" {
                    let body = chunked(vec![Bytes::from_static(b"abc")], Duration::ZERO, false);
                    Request::post(&url).body(body).unwrap()
                } else if kind == "post" {
                    Request::post(&url)
                        .body(full(Bytes::from_static(b"abcdef")))
                        .unwrap()
                } else {
                    Request::get(&url).body(full(Bytes::new())).unwrap()
                };
                let resp = tokio::time::timeout(DEADLINE, c.request(req)).await;
                let resp = resp
                    .unwrap_or_else(|_| panic!("{kind} request {sent}: no answer"))
                    .unwrap_or_else(|e| panic!("{kind} request {sent}: {e:?}"));
                assert_eq!(resp.status(), 200, "{kind} request {sent}");
                http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .unwrap_or_else(|e| panic!("{kind} request {sent}: body {e:?}"));
                sent += 1;
            }
            sent
        }));
    }
    let c = client();
    let reload = || {
        let c = c.clone();
        let url = p.admin_url("/api/reload");
        async move {
            let (parts, body) =
                send(&c, Request::post(url).body(full(Bytes::new())).unwrap()).await;
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                (parts.status.as_u16(), &v["reloaded"]),
                (200, &Value::Bool(true)),
                "{v}"
            );
        }
    };
    let reloaded = |p: &Proc| p.all_output().matches("configuration reloaded").count();
    let rounds = 12;
    for round in 1..=rounds {
        std::fs::write(&path, version(round)).unwrap();
        let before = reloaded(&p);
        p.signal("HUP");
        tokio::join!(reload(), reload(), reload());
        // The three POSTs are done; the signal's reload may still be running.
        let start = Instant::now();
        while reloaded(&p) < before + 4 {
            assert!(
                start.elapsed() < DEADLINE,
                "round {round}: {}",
                p.all_output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for t in traffic {
        let sent = t.await.unwrap();
        assert!(sent > 0, "traffic flowed during the reloads");
        total += sent;
    }
    let upstream_saw = a.seen.0.lock().unwrap().len() + b.seen.0.lock().unwrap().len();
    assert_eq!(upstream_saw, total);
    let m = wait_settled(&p, total as f64).await;
    assert_eq!(sum(&m, "statuslens_responses_total", &[]), total as f64);
    assert_eq!(
        sum(
            &m,
            "statuslens_responses_total",
            &[("route", "api"), ("code", "200")]
        ),
        total as f64
    );
    assert_eq!(
        sum(&m, "statuslens_config_last_reload_successful", &[]),
        1.0
    );
    let lines = p.wait_access_lines(total).await;
    assert_eq!(lines.len(), total);
    // The last file (round 12: api on upstream a, the extra route, route r12) is the one
    // in effect: r11's prefix is api's now.
    let a_before = a.seen.0.lock().unwrap().len();
    assert_eq!(get(&c, &p.url("/extra/status/201")).await.0.status, 201);
    assert_eq!(get(&c, &p.url("/r11/status/202")).await.0.status, 202);
    assert_eq!(get(&c, &p.url("/r12/status/203")).await.0.status, 203);
    assert_eq!(a.seen.0.lock().unwrap().len(), a_before + 2);
    let m = wait_settled(&p, total as f64 + 3.0).await;
    let code = |route: &str, code: &str| {
        sum(
            &m,
            "statuslens_responses_total",
            &[("route", route), ("code", code)],
        )
    };
    assert_eq!(
        (code("extra", "201"), code("api", "202"), code("r12", "203")),
        (1.0, 1.0, 1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_limits_count_requests_begun_before_a_reload() {
    // A reload builds new route tables, not new counts: the requests still running on
    // the old configuration hold their places in both limits.
    let up = upstream().await;
    let text = config(
        "reload = true",
        &format!(
            "[proxy]\nmax_in_flight = 3\n\n[[routes]]\nname = \"slow\"\nmatch = {{ path_prefix = \"/slow/\" }}\nupstream = \"http://{0}\"\nmax_in_flight = 2\n\n[[routes]]\nname = \"default\"\nupstream = \"http://{0}\"\n",
            up.addr
        ),
    );
    let path = write_config(&text);
    let p = Proc::start(&["--config", path.to_str().unwrap()]);
    let c = client();
    let mut held = Vec::new();
    for target in ["/slow/gate", "/slow/gate", "/gate"] {
        let url = p.url(target);
        held.push(tokio::spawn(
            async move { get(&client(), &url).await.0.status },
        ));
    }
    wait_metrics(&p, "three in flight", |m| {
        sum(m, "statuslens_requests_in_flight", &[]) == 3.0
    })
    .await;
    // The same file again: a reload all the same (a new generation).
    let post = Request::post(p.admin_url("/api/reload"))
        .body(full(Bytes::new()))
        .unwrap();
    assert_eq!(send(&c, post).await.0.status, 200);
    // The route is full (2 of 2), and so is the proxy (3 of 3).
    assert_eq!(get(&c, &p.url("/slow/status/200")).await.0.status, 503);
    assert_eq!(get(&c, &p.url("/status/200")).await.0.status, 503);
    up.gate.add_permits(3);
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    // The old requests' ends freed their places in the new generation's limits.
    assert_eq!(get(&c, &p.url("/slow/status/200")).await.0.status, 200);
    assert_eq!(get(&c, &p.url("/status/200")).await.0.status, 200);
    let m = wait_responses(&p, 7.0).await;
    assert_eq!(responses(&m, "503", "proxy"), 2.0);
    assert_eq!(sum(&m, "statuslens_requests_in_flight", &[]), 0.0);
}

//! Integration insights: upstream quota headers in every dialect, and which consumer
//! a spike comes from.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use serde_json::Value;

/// A raw upstream that answers one request with a 200 carrying `headers`.
async fn quota_upstream(headers: &'static str) -> std::net::SocketAddr {
    let reply: &'static [u8] = Box::leak(
        format!("HTTP/1.1 200 OK\r\n{headers}Content-Length: 2\r\nConnection: close\r\n\r\nok")
            .into_bytes()
            .into_boxed_slice(),
    );
    raw_upstream(reply).await
}

/// Whether any `statuslens_upstream_quota_*` series exists for `route`.
fn has_quota_series(m: &[Sample], route: &str) -> bool {
    m.iter()
        .any(|s| s.name.starts_with("statuslens_upstream_quota") && s.labels["route"] == route)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_headers_of_every_dialect_become_gauges() {
    let dialects: [(&str, &'static str); 7] = [
        ("github", "X-RateLimit-Limit: 5000\r\nX-RateLimit-Remaining: 250\r\nX-RateLimit-Reset: 30\r\n"),
        ("ietf", "RateLimit: \"default\";r=40;t=10\r\nRateLimit-Policy: \"default\";q=100;w=60\r\n"),
        ("ietf_old", "RateLimit-Limit: 200\r\nRateLimit-Remaining: 150\r\nRateLimit-Reset: 5\r\n"),
        ("salesforce", "Sforce-Limit-Info: api-usage=14250/15000\r\n"),
        ("malformed", "X-RateLimit-Limit: lots\r\nX-RateLimit-Remaining: -5\r\nSforce-Limit-Info: api-usage=/\r\nRateLimit: ;;;===\r\n"),
        ("none", ""),
        // A reset time alone (Retry-After) is no quota left to report: no ratio of 0.
        ("retry_only", "Retry-After: 120\r\n"),
    ];
    let mut cfg = String::new();
    for (name, headers) in dialects {
        let addr = quota_upstream(headers).await;
        cfg.push_str(&format!("[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"/{name}/\" }}\nupstream = \"http://{addr}\"\n\n"));
    }
    let p = Proc::start(&["--config", write_config(&cfg).to_str().unwrap()]);
    let c = client();
    for (name, _) in dialects {
        assert_eq!(
            get(&c, &p.url(&format!("/{name}/x"))).await.0.status,
            200,
            "{name}"
        );
    }
    let m = wait_responses(&p, 7.0).await;
    let ratio = |route: &str| {
        m.iter()
            .find(|s| {
                s.name == "statuslens_upstream_quota_remaining_ratio" && s.labels["route"] == route
            })
            .map(|s| s.value)
    };
    let gauge = |name: &str, route: &str| {
        m.iter()
            .find(|s| s.name == name && s.labels["route"] == route)
            .map(|s| s.value)
    };
    assert_eq!(ratio("github"), Some(0.05));
    assert_eq!(
        gauge("statuslens_upstream_quota_limit", "github"),
        Some(5000.0)
    );
    assert_eq!(
        gauge("statuslens_upstream_quota_remaining", "github"),
        Some(250.0)
    );
    assert_eq!(ratio("ietf"), Some(0.4));
    assert_eq!(ratio("ietf_old"), Some(0.75));
    assert_eq!(ratio("salesforce"), Some(0.05));
    assert_eq!(
        gauge("statuslens_upstream_quota_remaining", "salesforce"),
        Some(750.0)
    );
    // When the window resets: now + the seconds the upstream gave, where it gave them.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let reset = |route: &str| gauge("statuslens_upstream_quota_reset_timestamp_seconds", route);
    for (route, secs) in [("github", 30.0), ("ietf", 10.0), ("retry_only", 120.0)] {
        let at = reset(route).unwrap_or_else(|| panic!("{route}: no reset time"));
        assert!(
            at > now + secs - 60.0 && at <= now + secs,
            "{route}: reset at {at}, now {now}"
        );
    }
    assert_eq!(reset("salesforce"), None);
    assert_eq!(
        ratio("retry_only"),
        None,
        "a reset time alone is no 0% left"
    );
    // Malformed values never move a gauge; routes without quota headers have none.
    for route in ["malformed", "none"] {
        assert!(!has_quota_series(&m, route), "{route}");
    }
    // Low quota (github 5%, salesforce 5%) is warned about before any 429.
    let start = Instant::now();
    loop {
        let warned: Vec<Value> = p
            .all_output()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "statuslens::quota")
            .collect();
        if warned.len() == 2 {
            assert!(warned.iter().all(|w| w["level"] == "WARN"
                && w["message"].as_str().unwrap().contains("429s are near")));
            let mut routes: Vec<&str> = warned
                .iter()
                .map(|w| w["route"].as_str().unwrap())
                .collect();
            routes.sort_unstable();
            assert_eq!(routes, ["github", "salesforce"], "{warned:?}");
            break;
        }
        assert!(start.elapsed() < DEADLINE, "quota warnings: {warned:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raw upstream whose first answer carries `first` and every later one `then`.
async fn changing_quota_upstream(first: &'static str, then: &'static str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for i in 0usize.. {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let headers = if i == 0 { first } else { then };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\n{headers}Content-Length: 2\r\nConnection: close\r\n\r\nok"
                );
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_a_kept_routes_quota_state_and_drops_a_removed_routes_series() {
    // Each generation kept its own quota state: after a reload a report without a reset
    // time left the previous window's reset time in place (the QuotaLow rule's
    // "unless reset < time()" then hid the alert), the low-quota warning came again,
    // and a removed route's gauges stayed for the process' life, its alert with them.
    // A route sent to another upstream starts afresh: the old quota was not its.
    let kept = changing_quota_upstream(
        "X-RateLimit-Limit: 100\r\nX-RateLimit-Remaining: 5\r\nX-RateLimit-Reset: 30\r\n",
        "Sforce-Limit-Info: api-usage=95/100\r\n",
    )
    .await;
    let gone = quota_upstream("Sforce-Limit-Info: api-usage=99/100\r\n").await;
    let moved = quota_upstream("Sforce-Limit-Info: api-usage=99/100\r\n").await;
    let elsewhere = quota_upstream("").await;
    let routes = |moved_to: std::net::SocketAddr, gone: Option<std::net::SocketAddr>| {
        let route = |name: &str, addr: std::net::SocketAddr| {
            format!(
                "[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"/{name}/\" }}\nupstream = \"http://{addr}\"\n"
            )
        };
        let mut cfg = route("kept", kept) + &route("moved", moved_to);
        if let Some(gone) = gone {
            cfg.push_str(&route("gone", gone));
        }
        cfg
    };
    let path = write_config(&routes(moved, Some(gone)));
    let p = Proc::start(&["--config", path.to_str().unwrap()]);
    let c = client();
    for route in ["kept", "gone", "moved"] {
        assert_eq!(get(&c, &p.url(&format!("/{route}/x"))).await.0.status, 200);
    }
    let gauge = |m: &[Sample], name: &str, route: &str| {
        m.iter()
            .find(|s| s.name == name && s.labels["route"] == route)
            .map(|s| s.value)
    };
    const RESET: &str = "statuslens_upstream_quota_reset_timestamp_seconds";
    const RATIO: &str = "statuslens_upstream_quota_remaining_ratio";
    let m = wait_responses(&p, 3.0).await;
    assert!(gauge(&m, RESET, "kept").is_some_and(f64::is_finite));
    assert_eq!(gauge(&m, RATIO, "gone"), Some(0.01));
    assert_eq!(gauge(&m, RATIO, "moved"), Some(0.01));

    std::fs::write(&path, routes(elsewhere, None)).unwrap();
    p.signal("HUP");
    p.wait_output("configuration reloaded");
    let m = metrics(&p).await;
    for route in ["gone", "moved"] {
        assert!(!has_quota_series(&m, route), "{route}: quota series stayed");
    }
    assert_eq!(get(&c, &p.url("/kept/x")).await.0.status, 200);
    let m = wait_responses(&p, 4.0).await;
    assert_eq!(gauge(&m, RATIO, "kept"), Some(0.05));
    assert!(
        gauge(&m, RESET, "kept").is_some_and(f64::is_nan),
        "the old window's reset time stayed: {:?}",
        gauge(&m, RESET, "kept")
    );
    // Warned once for `kept` (5% left both times), once each for `gone` and `moved`:
    // a second reload's line is the fence for any warning logged before it.
    p.signal("HUP");
    let start = Instant::now();
    while p.all_output().matches("configuration reloaded").count() < 2 {
        assert!(start.elapsed() < DEADLINE, "no second reload line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let warned: Vec<String> = p
        .all_output()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "statuslens::quota")
        .map(|v| v["route"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(warned, ["kept", "gone", "moved"], "quota warnings");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_and_retry_advice_reach_the_access_log() {
    let up = raw_upstream(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    let p = Proc::start(&["--upstream", &format!("http://{up}")]);
    assert_eq!(get(&client(), &p.url("/x")).await.0.status, 429);
    let start = Instant::now();
    let line = loop {
        if let Some(l) = p.access_lines().into_iter().next() {
            break l;
        }
        assert!(start.elapsed() < DEADLINE);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(line["status"], 429);
    assert_eq!(line["retry"], "backoff");
    assert_eq!(line["retry_after_s"], 7.0);
    // /api/status says it too, per code.
    let (_, body) = get(&client(), &p.admin_url("/api/status")).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    let entry = &v["routes"][0]["by_code"][0];
    assert_eq!(entry["code"], 429);
    assert_eq!(entry["retry"], "backoff");
    assert_eq!(entry["last_retry_after_s"], 7.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_above_599_is_forwarded_and_counted_as_5xx_everywhere() {
    // HTTP/1.1 carries any three digits; RFC 9110 §15 has clients treat a code outside
    // 100..=599 as a server error. The metrics did (class 5xx), while the access log
    // said class "invalid" and /api/status left it out of every class.
    let up = upstream().await;
    for fast in [true, false] {
        let p = start_with_proxy_settings(&format!("fast_path = {fast}"), up.addr);
        let c = client();
        let (parts, body) = get(&c, &p.url("/status/600")).await;
        assert_eq!(parts.status, 600, "fast_path = {fast}");
        assert_eq!(&body[..], b"status 600");
        let m = wait_responses(&p, 1.0).await;
        assert_eq!(
            sum(
                &m,
                "statuslens_responses_total",
                &[("code", "600"), ("class", "5xx"), ("source", "upstream")]
            ),
            1.0,
            "fast_path = {fast}"
        );
        let line = &p.wait_access_lines(1).await[0];
        assert_eq!(line["status"], 600);
        assert_eq!(line["class"], "5xx", "fast_path = {fast}");
        assert_eq!(line["meaning"], "invalid status code");
        let (_, body) = get(&c, &p.admin_url("/api/status")).await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        let route = &v["routes"][0];
        assert_eq!(route["total"], 1);
        assert_eq!(route["by_class"]["5xx"], 1, "{route}");
        assert_eq!(route["by_code"][0]["code"], 600);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spike_from_one_consumer_is_attributed_to_it() {
    let up = upstream().await;
    let cfg = write_config(&format!(
        "[[routes]]\nname = \"api\"\nupstream = \"http://{}\"\nconsumer = \"header:X-Api-Key\"\n",
        up.addr
    ));
    let p = Proc::start(&["--config", cfg.to_str().unwrap()]);
    let c = client();
    let send_as = |key: &'static str, code: u16| {
        let c = c.clone();
        let url = p.url(&format!("/status/{code}"));
        async move {
            let req = Request::get(url)
                .header("x-api-key", key)
                .body(full(Bytes::new()))
                .unwrap();
            send(&c, req).await.0.status.as_u16()
        }
    };
    // 15 s of healthy traffic from several consumers, so the detector has a baseline;
    // then one consumer, half of all traffic, has an expired token.
    let keys = [
        "key-alpha-1111",
        "key-expired-9999",
        "key-beta-2222",
        "key-expired-9999",
    ];
    let healthy = Instant::now();
    let mut i = 0;
    while healthy.elapsed() < Duration::from_secs(15) {
        assert_eq!(send_as(keys[i % 4], 200).await, 200);
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = Instant::now();
    let spike = loop {
        for i in 0..20 {
            let key = keys[i % 4];
            let code = if key == "key-expired-9999" { 401 } else { 200 };
            assert_eq!(send_as(key, code).await, code);
        }
        let (_, body) = get(&c, &p.admin_url("/api/spikes")).await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        if let Some(s) = v["active"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["signal"] == "unauthorized")
        {
            break s.clone();
        }
        if start.elapsed() > DEADLINE {
            let (_, st) = get(&c, &p.admin_url("/api/status")).await;
            panic!("no spike: {v}\n{}", String::from_utf8_lossy(&st));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = spike["attribution"]
        .as_str()
        .unwrap_or_else(|| panic!("no attribution: {spike}"));
    // Every 401 came from the one expired key: all of them, not the half of all
    // traffic that key sends.
    assert!(
        text.starts_with("100% of the 401s in this spike came from consumer "),
        "{text}"
    );
    let id = text.rsplit(' ').next().unwrap();
    assert_eq!(id.len(), 8, "{text}");
    assert_eq!(spike["top_consumers"][0]["consumer"], id);
    assert_eq!(
        spike["top_consumers"][0]["share"].as_f64(),
        Some(1.0),
        "{spike}"
    );
    // ...and it is the id the access log gives that key's requests.
    let logged: Vec<_> = p
        .access_lines()
        .into_iter()
        .filter(|l| l["status"] == 401)
        .map(|l| l["consumer"].clone())
        .collect();
    assert!(!logged.is_empty());
    assert!(logged.iter().all(|c| c == id), "{logged:?} vs {id}");
    // The raw key is never exposed: not in the API, the log or the metrics.
    let (_, metrics) = get(&c, &p.admin_url("/metrics")).await;
    let (_, status) = get(&c, &p.admin_url("/api/status")).await;
    for text in [
        spike.to_string(),
        p.all_output(),
        String::from_utf8_lossy(&metrics).into_owned(),
        String::from_utf8_lossy(&status).into_owned(),
    ] {
        assert!(
            !text.contains("key-expired-9999"),
            "raw consumer key exposed"
        );
    }
    // The spike log line carries the attribution too.
    p.wait_line(|l| l.contains("statuslens::spike") && l.contains(text));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_is_the_same_whichever_path_its_request_takes() {
    // `header:NAME` was read after hyper's path had rewritten the fields (its own
    // address appended to X-Forwarded-For, a missing X-Request-Id made up), and before
    // that on the fast path: one client was two consumers.
    let up = upstream().await;
    for name in ["X-Forwarded-For", "X-Request-Id", "Host"] {
        let cfg = write_config(&format!(
            "[[routes]]\nname = \"api\"\nupstream = \"http://{}\"\nconsumer = \"header:{name}\"\n",
            up.addr
        ));
        let p = Proc::start(&["--config", cfg.to_str().unwrap()]);
        let c = client();
        // A bodiless GET (the fast path), a chunked POST (hyper's path), and an h2c GET
        // (no Host field: its :authority is the host).
        let req = |method: &str, path: &str| {
            Request::builder()
                .method(method)
                .uri(p.url(path))
                .header("x-forwarded-for", "10.1.2.3")
                .header("x-request-id", "client-7")
        };
        let body = chunked(vec![Bytes::from_static(b"abc")], Duration::ZERO, false);
        let get = req("GET", "/status/200").body(full(Bytes::new())).unwrap();
        assert_eq!(send(&c, get).await.0.status, 200);
        let post = req("POST", "/drain").body(body).unwrap();
        assert_eq!(send(&c, post).await.0.status, 200);
        let h2 = req("GET", "/status/200").body(full(Bytes::new())).unwrap();
        assert_eq!(send(&h2_client(), h2).await.0.status, 200);
        let lines = p.wait_access_lines(3).await;
        assert_eq!(lines.len(), 3, "{name}");
        let consumers: Vec<_> = lines.iter().map(|l| &l["consumer"]).collect();
        assert!(consumers[0].is_string(), "{name}: {lines:#?}");
        assert!(
            consumers.iter().all(|c| *c == consumers[0]),
            "{name}: {lines:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_balancers_forwarded_for_names_the_client() {
    // Behind a load balancer every connection is the balancer's: the log's `client`, and
    // a `client_ip` consumer, named it for every request. Here loopback plays the
    // balancer, 192.0.2.0/24 a trusted hop before it, and 198.51.100.1 what a client
    // wrote into its own X-Forwarded-For (never believed: it is left of the client).
    for (balancer, trusted) in [("127.0.0.1", true), ("10.0.0.0/8", false)] {
        let up = upstream().await;
        let cfg = write_config(&format!(
            "[proxy]\ntrusted_proxies = [\"{balancer}\", \"192.0.2.0/24\"]\n\n\
             [[routes]]\nname = \"api\"\nupstream = \"http://{}\"\nconsumer = \"client_ip\"\n",
            up.addr
        ));
        let p = Proc::start(&["--config", cfg.to_str().unwrap()]);
        let c = client();
        // Two X-Forwarded-For lines, read as one list: both paths must join them alike.
        let req = |method: &str, xff: &str, id: &str| {
            let (first, rest) = xff.split_once(", ").unwrap_or(("", xff));
            let b = Request::builder().method(method).uri(p.url("/drain"));
            let b = if first.is_empty() {
                b
            } else {
                b.header("x-forwarded-for", first)
            };
            b.header("x-forwarded-for", rest).header("x-request-id", id)
        };
        let claimed = "198.51.100.1, 203.0.113.7, 192.0.2.9";
        // The fast path (a bodiless GET), hyper's (a chunked POST), h2c; then another
        // client through the same balancer.
        let body = chunked(vec![Bytes::from_static(b"abc")], Duration::ZERO, false);
        let get = req("GET", claimed, "r0").body(full(Bytes::new())).unwrap();
        assert_eq!(send(&c, get).await.0.status, 200);
        let post = req("POST", claimed, "r1").body(body).unwrap();
        assert_eq!(send(&c, post).await.0.status, 200);
        let h2 = req("GET", claimed, "r2").body(full(Bytes::new())).unwrap();
        assert_eq!(send(&h2_client(), h2).await.0.status, 200);
        let other = req("GET", "203.0.113.8", "r3")
            .body(full(Bytes::new()))
            .unwrap();
        assert_eq!(send(&c, other).await.0.status, 200);

        let mut lines = p.wait_access_lines(4).await;
        assert_eq!(lines.len(), 4, "{lines:#?}");
        // In the order sent (a line is written when its exchange ends, not always first).
        lines.sort_by_key(|l| l["request_id"].as_str().unwrap_or("").to_string());
        let text = |l: &Value, k: &str| l[k].as_str().unwrap_or("").to_string();
        let consumers: Vec<String> = lines.iter().map(|l| text(l, "consumer")).collect();
        assert!(!consumers[0].is_empty(), "{lines:#?}");
        for l in &lines[..3] {
            assert_eq!(text(l, "consumer"), consumers[0], "{lines:#?}");
        }
        if trusted {
            for l in &lines[..3] {
                assert_eq!(text(l, "client"), "203.0.113.7", "{lines:#?}");
                assert!(text(l, "via").starts_with("127.0.0.1:"), "{lines:#?}");
            }
            assert_eq!(text(&lines[3], "client"), "203.0.113.8", "{lines:#?}");
            assert_ne!(consumers[3], consumers[0], "two clients, two consumers");
        } else {
            // An untrusted peer's header is only a claim: the peer is the client.
            for l in &lines {
                assert!(text(l, "client").starts_with("127.0.0.1:"), "{lines:#?}");
                assert!(l.get("via").is_none(), "{lines:#?}");
            }
            assert_eq!(consumers[3], consumers[0], "{lines:#?}");
        }
        // Forwarding is not changed either way: the peer is appended, as always.
        {
            let seen = up.seen.0.lock().unwrap();
            assert_eq!(seen.len(), 4);
            for parts in seen.iter().filter(|p| p.headers["x-request-id"] != "r3") {
                assert_eq!(
                    parts.headers["x-forwarded-for"],
                    format!("{claimed}, 127.0.0.1").as_str()
                );
            }
        }
        if !trusted {
            // A reload that lists the balancer applies from the next request, on the
            // connection already open.
            let toml = std::fs::read_to_string(&cfg).unwrap();
            std::fs::write(&cfg, toml.replace("10.0.0.0/8", "127.0.0.1")).unwrap();
            p.signal("HUP");
            p.wait_output("configuration reloaded");
            let get = req("GET", claimed, "r4").body(full(Bytes::new())).unwrap();
            assert_eq!(send(&c, get).await.0.status, 200);
            let start = Instant::now();
            let line = loop {
                let found = p
                    .access_lines()
                    .into_iter()
                    .find(|l| l["request_id"] == "r4");
                if let Some(l) = found {
                    break l;
                }
                assert!(start.elapsed() < DEADLINE, "the line of r4");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            assert_eq!(text(&line, "client"), "203.0.113.7", "{line:#?}");
        }
    }
}

/// A version 2 PROXY protocol header: `source` relayed, or (None) the balancer's own
/// connection (LOCAL).
fn proxy_v2(source: Option<std::net::SocketAddr>) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    let Some(source) = source else {
        h.extend_from_slice(&[0x20, 0x00, 0, 0]);
        return h;
    };
    let block = match source.ip() {
        std::net::IpAddr::V4(ip) => {
            h.extend_from_slice(&[0x21, 0x11, 0, 12]);
            [&ip.octets()[..], &[10, 0, 0, 5]].concat()
        }
        std::net::IpAddr::V6(ip) => {
            h.extend_from_slice(&[0x21, 0x21, 0, 36]);
            [&ip.octets()[..], &std::net::Ipv6Addr::LOCALHOST.octets()].concat()
        }
    };
    h.extend_from_slice(&block);
    h.extend_from_slice(&source.port().to_be_bytes());
    h.extend_from_slice(&8080u16.to_be_bytes());
    h
}

/// A raw connection to `addr` that sends `bytes` (a header and a request, in one write).
async fn connect_with(
    addr: std::net::SocketAddr,
    bytes: &[u8],
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let local = s.local_addr().unwrap();
    (s, local)
}

/// One request over a fresh HTTP/1.1 (or HTTP/2) connection that begins with `header`,
/// in the same write as the request's first bytes: its status, and the connection's
/// local address.
async fn send_after(
    addr: std::net::SocketAddr,
    header: &[u8],
    h2: bool,
    req: Request<TestBody>,
) -> (http::StatusCode, std::net::SocketAddr) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let s = HeaderFirst::connect(addr, header).await;
    let local = s.local_addr();
    let io = TokioIo::new(s);
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await
    };
    (resp.expect("a response").status(), local)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l4_balancers_proxy_protocol_header_names_the_client() {
    // Behind a TCP balancer (AWS NLB, HAProxy in mode tcp) every connection comes from
    // the balancer and no X-Forwarded-For names the client: the PROXY protocol header
    // does, and its source replaces the peer in the log, upstream and consumer identity.
    // 192.0.2.0/24 plays a trusted L7 hop (a CDN) in front of the balancer. Each header
    // shares its segment with the first request bytes, which must reach whichever side
    // serves the connection: the fast path, or hyper (fast_path off, and h2c and chunked
    // bodies, which the fast path hands over).
    for fast in [true, false] {
        let up = upstream().await;
        let cfg = write_config(&format!(
            "[proxy]\nproxy_protocol = true\nfast_path = {fast}\nheader_read_timeout = \"2s\"\n\
             trusted_proxies = [\"192.0.2.0/24\"]\n\n\
             [[routes]]\nname = \"api\"\nupstream = \"http://{}\"\nconsumer = \"client_ip\"\n",
            up.addr
        ));
        let p = Proc::start_env(
            &["--config", cfg.to_str().unwrap()],
            &[("RUST_LOG", "info,statuslens::server=debug")],
        );
        proxy_protocol_clients(&p, &up).await;
        if fast {
            proxy_protocol_refusals(&p).await;
        }
    }
}

/// Five connections, five clients named five ways (see the caller).
async fn proxy_protocol_clients(p: &Proc, up: &Upstream) {
    let get = |id: &str| {
        Request::get("/drain")
            .header("host", "api")
            .header("x-request-id", id)
    };
    // r0: version 1, raw.
    let (mut s, _) = connect_with(
        p.proxy,
        b"PROXY TCP4 203.0.113.7 10.0.0.5 51234 8080\r\n\
          GET /drain HTTP/1.1\r\nHost: api\r\nX-Request-Id: r0\r\nConnection: close\r\n\r\n",
    )
    .await;
    let got = read_until_closed(&mut s, "r0").await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // r1: version 2 from IPv6, a chunked POST.
    let v6: std::net::SocketAddr = "[2001:db8::7]:443".parse().unwrap();
    let body = chunked(vec![Bytes::from_static(b"abc")], Duration::ZERO, false);
    let post = Request::post("/drain")
        .header("host", "api")
        .header("x-request-id", "r1")
        .body(body)
        .unwrap();
    let sent = send_after(p.proxy, &proxy_v2(Some(v6)), false, post).await;
    assert_eq!(sent.0, 200);
    // r2: version 2, h2c.
    let v4: std::net::SocketAddr = "203.0.113.8:40000".parse().unwrap();
    let h2 = Request::get("http://api/drain")
        .header("x-request-id", "r2")
        .body(full(Bytes::new()))
        .unwrap();
    assert_eq!(
        send_after(p.proxy, &proxy_v2(Some(v4)), true, h2).await.0,
        200
    );
    // r3: the balancer's own connection (LOCAL, as its health checks send): the peer.
    let get_r3 = get("r3").body(full(Bytes::new())).unwrap();
    let (status, local) = send_after(p.proxy, &proxy_v2(None), false, get_r3).await;
    assert_eq!(status, 200);
    // r4: the header names a trusted hop, whose X-Forwarded-For names the client.
    let via_cdn = get("r4")
        .header("x-forwarded-for", "203.0.113.50")
        .body(full(Bytes::new()))
        .unwrap();
    let cdn = b"PROXY TCP4 192.0.2.9 10.0.0.5 1234 8080\r\n";
    assert_eq!(send_after(p.proxy, cdn, false, via_cdn).await.0, 200);

    let mut lines = p.wait_access_lines(5).await;
    lines.sort_by_key(|l| l["request_id"].as_str().unwrap_or("").to_string());
    let text = |l: &Value, k: &str| l[k].as_str().unwrap_or("").to_string();
    let want = [
        ("203.0.113.7:51234", None),
        ("[2001:db8::7]:443", None),
        ("203.0.113.8:40000", None),
        (local.to_string().as_str(), None),
        ("203.0.113.50", Some("192.0.2.9:1234")),
    ]
    .map(|(c, v)| (c.to_string(), v));
    assert_eq!(lines.len(), want.len(), "{lines:#?}");
    for (l, (client, via)) in lines.iter().zip(&want) {
        assert_eq!(&text(l, "client"), client, "{lines:#?}");
        assert_eq!(l.get("via").and_then(Value::as_str), *via, "{lines:#?}");
    }
    let consumers: std::collections::HashSet<String> =
        lines.iter().map(|l| text(l, "consumer")).collect();
    assert_eq!(
        consumers.len(),
        5,
        "five clients, five consumers: {lines:#?}"
    );
    let seen = up.seen.0.lock().unwrap();
    let mut xff: Vec<(String, String)> = seen
        .iter()
        .map(|p| {
            let h = |k: &str| p.headers[k].to_str().unwrap().to_string();
            (h("x-request-id"), h("x-forwarded-for"))
        })
        .collect();
    xff.sort();
    let want = [
        ("r0", "203.0.113.7"),
        ("r1", "2001:db8::7"),
        ("r2", "203.0.113.8"),
        ("r3", "127.0.0.1"),
        ("r4", "203.0.113.50, 192.0.2.9"),
    ]
    .map(|(a, b)| (a.to_string(), b.to_string()));
    assert_eq!(xff, want);
}

/// Refused and counted: no header (a client speaking straight to the listener), a
/// header cut short by a close, and one that stalls past header_read_timeout. Not
/// counted: a connection closed, or left idle, before its first byte (a TCP health
/// check). Each ends in a close with no byte sent back; the server counts before it
/// closes, so the scrape after each close sees its count.
async fn proxy_protocol_refusals(p: &Proc) {
    use tokio::io::AsyncWriteExt;
    let cases: [(&[u8], bool, &str); 5] = [
        (b"", true, "closed at once"),
        (b"", false, "idle"),
        (
            b"GET /drain HTTP/1.1\r\nHost: api\r\n\r\n",
            false,
            "no header",
        ),
        (b"PROXY TCP4 203.0.113", true, "cut short"),
        (b"PROXY TCP4 203.0.113", false, "stalled"),
    ];
    let mut counted = Vec::new();
    for (bytes, close, what) in cases {
        let (mut s, _) = connect_with(p.proxy, bytes).await;
        if close {
            s.shutdown().await.unwrap();
        }
        let got = read_until_closed(&mut s, what).await;
        assert!(got.is_empty(), "{what}: {}", String::from_utf8_lossy(&got));
        counted.push(client_errors(&metrics(p).await, "proxy_protocol"));
    }
    assert_eq!(counted, [0.0, 0.0, 1.0, 2.0, 3.0]);
    assert_eq!(
        sum(&metrics(p).await, "statuslens_responses_total", &[]),
        5.0,
        "refused connections are not responses"
    );
    p.wait_output("does not begin with a PROXY protocol header");
    p.wait_output("within proxy.header_read_timeout");
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_in_tcp_mode_is_read_in_both_versions() {
    // The real balancer, not hand-written headers: HAProxy relaying TCP with send-proxy
    // (version 1) and send-proxy-v2. Its own connections to statuslens come from other
    // ports than the client's, so a log line naming the client's port proves the header
    // was read.
    let up = upstream().await;
    let p = start_with_proxy_settings("proxy_protocol = true", up.addr);
    let (_haproxy, v1, v2) = start_haproxy(p.proxy).await;
    let mut clients = Vec::new();
    for (front, id) in [(v1, "v1"), (v2, "v2")] {
        let req = Request::get("/drain")
            .header("host", "api")
            .header("x-request-id", id)
            .body(full(Bytes::new()))
            .unwrap();
        let (status, local) = send_after(front, b"", false, req).await;
        assert_eq!(status, 200, "{id}");
        clients.push(local.to_string());
    }
    let mut lines = p.wait_access_lines(2).await;
    lines.sort_by_key(|l| l["request_id"].as_str().unwrap_or("").to_string());
    let logged: Vec<&str> = lines
        .iter()
        .map(|l| l["client"].as_str().unwrap())
        .collect();
    assert_eq!(logged, clients, "{lines:#?}");
}

/// HAProxy in TCP mode in front of `target`: one frontend sending version 1 headers and
/// one sending version 2, at the addresses returned. HAProxy cannot bind port 0 and say
/// which port it got, so free ports are picked first; another test may take one in
/// between, which makes HAProxy exit: then it is tried again on new ports.
async fn start_haproxy(
    target: std::net::SocketAddr,
) -> (Killed, std::net::SocketAddr, std::net::SocketAddr) {
    let dir = write_config("");
    let cfg = dir.with_file_name("haproxy.cfg");
    for _attempt in 0..5 {
        let (v1, v2) = (closed_port(), closed_port());
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 256\n\
                 defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                 frontend v1\n  bind {v1}\n  default_backend v1\n\
                 backend v1\n  server statuslens {target} send-proxy\n\
                 frontend v2\n  bind {v2}\n  default_backend v2\n\
                 backend v2\n  server statuslens {target} send-proxy-v2\n"
            ),
        )
        .unwrap();
        let mut haproxy = Killed(
            std::process::Command::new("haproxy")
                .args(["-db", "-f"])
                .arg(&cfg)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("haproxy is installed by .ci/run (Debian package haproxy)"),
        );
        let start = Instant::now();
        loop {
            if haproxy.0.try_wait().unwrap().is_some() {
                break; // a port was taken: again
            }
            let mut up = true;
            for port in [v1, v2] {
                up &= tokio::net::TcpStream::connect(port).await.is_ok();
            }
            // Listening, and still running: the listeners are HAProxy's.
            if up && haproxy.0.try_wait().unwrap().is_none() {
                return (haproxy, v1, v2);
            }
            assert!(
                start.elapsed() < DEADLINE,
                "haproxy listening on {v1} and {v2}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!(
        "haproxy exited at start five times; run `haproxy -c -f {}`",
        cfg.display()
    );
}

/// `statuslens_upstream_connections_total` per route.
fn upstream_connections(m: &[Sample], route: &str) -> f64 {
    sum(
        m,
        "statuslens_upstream_connections_total",
        &[("route", route)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_opened_to_the_upstream_show_whether_it_keeps_them_alive() {
    // An upstream that closes after every answer costs a connection per request; one that
    // keeps them alive costs one per pool. One worker: one set of pools.
    let up = upstream().await;
    let closing =
        raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
    for fast in [true, false] {
        let cfg = write_config(&format!(
            "[proxy]\nworkers = 1\nfast_path = {fast}\n\n[[routes]]\nname = \"closing\"\nmatch = {{ path_prefix = \"/closing/\" }}\nupstream = \"http://{closing}\"\n\n[[routes]]\nname = \"kept\"\nupstream = \"http://{}\"\n",
            up.addr
        ));
        let p = Proc::start(&["--config", cfg.to_str().unwrap()]);
        let m = metrics(&p).await;
        assert_eq!(upstream_connections(&m, "kept"), 0.0);
        assert_eq!(upstream_connections(&m, "closing"), 0.0);
        let (h1, h2) = (client(), h2_client());
        let post = || {
            Request::post(p.url("/drain"))
                .body(chunked(
                    vec![Bytes::from_static(b"abc"); 3],
                    Duration::ZERO,
                    false,
                ))
                .unwrap()
        };
        // One after another, so each finds the last one's connection back in its pool.
        for c in [&h1, &h2] {
            for _ in 0..3 {
                assert_eq!(get(c, &p.url("/status/200")).await.0.status, 200);
                assert_eq!(get(c, &p.url("/closing/x")).await.0.status, 200);
            }
        }
        // A body of unknown length goes over hyper's own pool.
        for _ in 0..2 {
            assert_eq!(send(&h1, post()).await.0.status, 200);
        }
        let m = wait_settled(&p, 14.0).await;
        // Bodyless requests share the fast pool (both protocols) and bodies go over
        // hyper's: two connections; without the fast path, hyper's pool alone: one. hyper
        // hands a connection back to its pool from a task of its own, so a request on its
        // heels may find the pool empty and open one more (a slow box): one at most.
        let kept = if fast { 2.0 } else { 1.0 };
        let opened = upstream_connections(&m, "kept");
        assert!(
            opened == kept || opened == kept + 1.0,
            "fast_path = {fast}: {opened} connections, {kept} expected"
        );
        assert_eq!(
            upstream_connections(&m, "closing"),
            6.0,
            "fast_path = {fast}"
        );
        assert_eq!(upstream_connections(&m, "unmatched"), 0.0);
    }
}

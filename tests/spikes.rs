//! Live spike detection over the real binary: quiet on noise, fast on real jumps,
//! reported in metrics, /api/spikes, the log and the Alertmanager webhook.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

/// Sends `count` requests, about `rate` per second, four at a time; request `i` asks
/// the upstream for `code(i)`, with credentials in its query and headers. Returns how many completed with the asked-for status.
async fn drive(p: &Proc, count: usize, rate: u32, code: impl Fn(usize) -> u16) -> usize {
    let c = client();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut ok = 0;
    let mut batch = Vec::new();
    for i in 0..count {
        tick.tick().await;
        let want = code(i);
        let c = c.clone();
        // Credentials ride along, as they do in real traffic: none may come out anywhere.
        let req = Request::get(p.url(&format!("/status/{want}?api_key=SECRET-QUERY-{i}")))
            .header("authorization", "Bearer SECRET-BEARER")
            .header("cookie", "session=SECRET-COOKIE")
            .body(full(""))
            .unwrap();
        batch.push(tokio::spawn(async move {
            send(&c, req).await.0.status.as_u16() == want
        }));
        if batch.len() == 4 {
            for h in batch.drain(..) {
                ok += h.await.unwrap() as usize;
            }
        }
    }
    for h in batch {
        ok += h.await.unwrap() as usize;
    }
    ok
}

fn active(m: &[Sample], signal: &str) -> f64 {
    sum(m, "statuslens_spike_active", &[("signal", signal)])
}

async fn spikes(p: &Proc) -> Value {
    let (_, body) = get(&client(), &p.admin_url("/api/spikes")).await;
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_above_min_ratio_is_not_a_spike_on_a_fresh_proxy() {
    // 8 % 5xx clears min_ratio (5 %) and min_events on every window: only the baseline
    // and the significance test (a fresh detector's reference is ~10.5 %, so ~31 % is
    // needed) keep it quiet. The 2 % noise above could never fire at all.
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    let n = drive(&p, 600, 40, |i| if i % 25 < 2 { 503 } else { 200 }).await;
    assert_eq!(n, 600);
    // Every second of it evaluated: the 10-second window has drained (ticks ran past
    // the last request) while the 1-minute one still holds the noise.
    let start = Instant::now();
    loop {
        let (_, body) = get(&client(), &p.admin_url("/api/status")).await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        let live = &v["routes"][0]["signals"]["server_error"]["live"];
        let (r10s, r1m) = (live["ratio_10s"].as_f64(), live["ratio_1m"].as_f64());
        if r10s == Some(0.0) && r1m.is_some_and(|r| (r - 0.08).abs() < 0.005) {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "1m window never held the noise: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = metrics(&p).await;
    assert_eq!(
        sum(&m, "statuslens_spikes_total", &[]),
        0.0,
        "false spike on 8 %"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_noise_is_quiet_and_a_jump_flags_within_ten_seconds_of_traffic() {
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    // Spike series exist at 0 from the start, for every signal.
    let m = metrics(&p).await;
    for signal in ["unauthorized", "rate_limited", "server_error"] {
        let s = m
            .iter()
            .find(|s| s.name == "statuslens_spike_active" && s.labels["signal"] == signal)
            .unwrap_or_else(|| panic!("no spike_active series for {signal}"));
        assert_eq!(s.value, 0.0);
        assert_eq!(
            sum(&m, "statuslens_spikes_total", &[("signal", signal)]),
            0.0
        );
    }
    // 20 s of steady 2% 401s at 40 req/s.
    let n = drive(&p, 800, 40, |i| if i % 50 == 7 { 401 } else { 200 }).await;
    assert_eq!(n, 800);
    let m = metrics(&p).await;
    assert_eq!(
        sum(&m, "statuslens_spikes_total", &[]),
        0.0,
        "false spike on steady 2%"
    );
    assert_eq!(spikes(&p).await["active"].as_array().unwrap().len(), 0);

    // Jump to 40%: flagged within 10 s worth of traffic (400 requests at 40 req/s).
    // Counting requests instead of wall time keeps this honest on a slow box.
    let mut flagged_after = None;
    for chunk in 0..10 {
        assert_eq!(
            drive(&p, 40, 40, |i| if i % 5 < 2 { 401 } else { 200 }).await,
            40
        );
        if active(&metrics(&p).await, "unauthorized") == 1.0 {
            flagged_after = Some((chunk + 1) * 40);
            break;
        }
    }
    let flagged_after = match flagged_after {
        Some(n) => n,
        None => {
            // The last second's counts are evaluated on the next tick.
            // No traffic follows, so whatever flags now was seen in the 400 requests.
            wait_metrics(&p, "unauthorized spike", |m| {
                active(m, "unauthorized") == 1.0
            })
            .await;
            400
        }
    };
    eprintln!("flagged after {flagged_after} requests at 40%");
    let m = metrics(&p).await;
    assert_eq!(
        sum(
            &m,
            "statuslens_spikes_total",
            &[("route", "default"), ("signal", "unauthorized")]
        ),
        1.0
    );
    assert_eq!(active(&m, "server_error"), 0.0);
    assert_eq!(active(&m, "rate_limited"), 0.0);

    let s = spikes(&p).await;
    let a = &s["active"][0];
    assert_eq!(a["route"], "default");
    assert_eq!(a["signal"], "unauthorized");
    assert_eq!(a["dominant_code"], 401);
    // The window that fires may still hold some of the 2% traffic.
    let (observed, baseline) = (
        a["observed_ratio"].as_f64().unwrap(),
        a["baseline_ratio"].as_f64().unwrap(),
    );
    assert!(observed >= 0.05 && observed >= 3.0 * baseline, "{a}");
    assert!(baseline < 0.05, "{a}");
    assert!(a["matched"].as_u64().unwrap() >= 5);
    assert!(a["started_at"].as_u64().unwrap() > 1_700_000_000);
    assert!(a["ended_at"].is_null());
    assert!(
        a["meaning"]
            .as_str()
            .unwrap()
            .starts_with("401 Unauthorized"),
        "{a}"
    );

    let line = p.wait_line(|l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| v["target"] == "statuslens::spike")
    });
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["route"], "default");
    assert_eq!(line["signal"], "unauthorized");
    assert_eq!(line["dominant_code"], 401);
    assert!(
        line["message"]
            .as_str()
            .unwrap()
            .contains("401 Unauthorized"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_500_among_a_few_requests_flags_nothing() {
    let up = upstream().await;
    let p = Proc::start(&["--upstream", &format!("http://{}", up.addr)]);
    drive(&p, 6, 4, |i| if i == 2 { 500 } else { 200 }).await;
    // Wait until the detector has seen the 500 (its live 10 s ratio moves), then a bit.
    let start = Instant::now();
    loop {
        let (_, body) = get(&client(), &p.admin_url("/api/status")).await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        let live = &v["routes"][0]["signals"]["server_error"]["live"];
        if live["ratio_10s"].as_f64().unwrap_or(0.0) > 0.0 {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "detector never saw the 500: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = metrics(&p).await;
    assert_eq!(sum(&m, "statuslens_spikes_total", &[]), 0.0);
    assert_eq!(
        sum(&m, "statuslens_responses_total", &[("code", "500")]),
        1.0
    );
}

/// A webhook receiver that records every POST body; `stall` makes it never answer.
async fn receiver(stall: bool) -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let g = g.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let g = g.clone();
                    async move {
                        if stall {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        g.lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap());
                        Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

fn spike_config(upstream: SocketAddr, webhook: &str) -> std::path::PathBuf {
    write_config(&format!(
        r#"
[detection]
webhook = "{webhook}"
instance = "test-instance"
clear_after = "2s"

[[routes]]
name = "api"
upstream = "http://{upstream}"
"#
    ))
}

/// statuslens reporting to a webhook receiver, in an outage (every request a 503) that
/// its detector has flagged; the receiver's POSTs and the config file.
async fn outage_with_webhook(up: &Upstream) -> (Proc, Arc<Mutex<Vec<Value>>>, std::path::PathBuf) {
    let (rx, got) = receiver(false).await;
    let cfg = spike_config(up.addr, &format!("http://{rx}/api/v2/alerts"));
    let p = Proc::start(&["--config", cfg.to_str().unwrap()]);
    drive(&p, 60, 20, |_| 503).await;
    wait_metrics(&p, "server_error spike", |m| {
        active(m, "server_error") == 1.0
    })
    .await;
    (p, got, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_gets_firing_then_resolved() {
    let up = upstream().await;
    let (p, got, _) = outage_with_webhook(&up).await;
    let start = Instant::now();
    let firing = loop {
        let found = got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b.as_array().unwrap().clone())
            .find(|a| a["labels"]["signal"] == "server_error");
        if let Some(a) = found {
            break a;
        }
        assert!(start.elapsed() < DEADLINE, "no firing alert received");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(firing["labels"]["alertname"], "StatuslensSpike");
    assert_eq!(firing["labels"]["route"], "api");
    assert_eq!(firing["labels"]["instance"], "test-instance");
    assert_eq!(firing["labels"]["severity"], "critical");
    assert!(
        firing["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("503 Service Unavailable"),
        "{firing}"
    );
    let starts = firing["startsAt"].as_str().unwrap().to_string();
    let ends = firing["endsAt"].as_str().unwrap().to_string();
    assert!(ends > starts, "a firing alert ends in the future: {firing}");

    // Recovery: healthy traffic until the spike clears (the 1-minute window must drain
    // first), then a resolved alert whose endsAt is not in the future.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        assert_eq!(drive(&p, 20, 20, |_| 200).await, 20);
        if active(&metrics(&p).await, "server_error") == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "spike never cleared");
    }
    let start = Instant::now();
    let resolved = loop {
        let all: Vec<Value> = got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b.as_array().unwrap().clone())
            .collect();
        if let Some(a) = all.iter().find(|a| {
            a["labels"]["signal"] == "server_error"
                && a["endsAt"].as_str().unwrap()
                    <= a["startsAt"].as_str().unwrap().max(&webhook_now())
        }) {
            break a.clone();
        }
        assert!(start.elapsed() < DEADLINE, "no resolved alert: {all:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(resolved["startsAt"], starts.as_str());
    let s = spikes(&p).await;
    assert_eq!(s["active"].as_array().unwrap().len(), 0);
    assert_eq!(s["recent"][0]["signal"], "server_error");
    assert!(s["recent"][0]["ended_at"].as_u64().is_some());
    // The whole episode's counts, beside the firing window's (which may reach back
    // before the episode's first second): its matches, and the healthy traffic that
    // ended it.
    let ended = &s["recent"][0];
    let (requests, matched) = (
        ended["episode_requests"]
            .as_u64()
            .expect("episode_requests"),
        ended["episode_matched"].as_u64().expect("episode_matched"),
    );
    assert!(matched > 0 && requests >= matched + 20, "{ended}");

    // No credential from the traffic reached the webhook, the API, metrics or the log.
    let c = client();
    let mut exposed = vec![
        got.lock()
            .unwrap()
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
        s.to_string(),
        p.all_output(),
    ];
    for path in ["/api/spikes", "/api/status", "/metrics"] {
        let (_, body) = get(&c, &p.admin_url(path)).await;
        exposed.push(String::from_utf8_lossy(&body).into_owned());
    }
    assert!(exposed[0].contains("StatuslensSpike"));
    for text in exposed {
        assert!(!text.contains("SECRET-"), "a credential came out: {text}");
    }
}

fn webhook_now() -> String {
    statuslens::detect::webhook::rfc3339(statuslens::detect::unix_now() + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_stalled_receiver_does_not_touch_the_proxy() {
    let up = upstream().await;
    let (stalled, _) = receiver(true).await;
    for webhook in [
        format!("http://{stalled}/api/v2/alerts"),
        format!("http://{}/api/v2/alerts", closed_port()),
    ] {
        let cfg = spike_config(up.addr, &webhook);
        let p = Proc::start(&["--config", cfg.to_str().unwrap()]);
        drive(&p, 60, 20, |_| 500).await;
        wait_metrics(&p, "spike", |m| active(m, "server_error") == 1.0).await;
        // Traffic keeps flowing and every request is answered and counted.
        let ok = drive(&p, 100, 50, |i| if i % 2 == 0 { 200 } else { 500 }).await;
        assert_eq!(ok, 100);
        wait_metrics(&p, "all counted", |m| {
            sum(m, "statuslens_responses_total", &[]) == 160.0
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_shows_the_alert() {
    let up = upstream().await;
    let port = closed_port().port();
    let dir = std::env::temp_dir().join(format!("statuslens-am-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("alertmanager.yml"),
        "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n",
    )
    .unwrap();
    let mut am = Killed(
        std::process::Command::new("prometheus-alertmanager")
            .arg(format!(
                "--config.file={}",
                dir.join("alertmanager.yml").display()
            ))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus-alertmanager is installed by .ci/run"),
    );
    let am_url = format!("http://127.0.0.1:{port}");
    let c = client();
    let start = Instant::now();
    loop {
        let ready = tokio::time::timeout(
            Duration::from_secs(2),
            c.request(
                Request::get(format!("{am_url}/-/ready"))
                    .body(full(Bytes::new()))
                    .unwrap(),
            ),
        )
        .await;
        if matches!(ready, Ok(Ok(ref r)) if r.status() == 200) {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "alertmanager did not become ready"
        );
        if let Some(status) = am.0.try_wait().unwrap() {
            panic!("alertmanager exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cfg = spike_config(up.addr, &format!("{am_url}/api/v2/alerts"));
    let p = Proc::start(&["--config", cfg.to_str().unwrap()]);
    drive(&p, 60, 20, |_| 401).await;
    wait_metrics(&p, "spike", |m| active(m, "unauthorized") == 1.0).await;
    let start = Instant::now();
    loop {
        let (_, body) = get(&c, &format!("{am_url}/api/v2/alerts")).await;
        let alerts: Value = serde_json::from_slice(&body).unwrap();
        let hit = alerts.as_array().unwrap().iter().find(|a| {
            a["labels"]["alertname"] == "StatuslensSpike" && a["labels"]["signal"] == "unauthorized"
        });
        if let Some(a) = hit {
            assert_eq!(a["labels"]["route"], "api");
            assert_eq!(a["labels"]["instance"], "test-instance");
            assert_eq!(a["status"]["state"], "active");
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "alert never reached alertmanager: {alerts}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_detection_off_on_reload_ends_active_spikes() {
    // Off by reload, nothing would ever end them: the gauge stayed at 1 (and the
    // shipped StatuslensSpikeActive rule fired) and Alertmanager kept the alert.
    let up = upstream().await;
    let (p, got, cfg) = outage_with_webhook(&up).await;
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("[detection]\n", "[detection]\nenabled = false\n"),
    )
    .unwrap();
    p.signal("HUP");
    p.wait_output("configuration reloaded");
    let m = metrics(&p).await;
    assert_eq!(active(&m, "server_error"), 0.0);
    p.wait_line(|l| l.contains("spike ended: detection was turned off"));
    // The receiver hears the end: a server_error alert whose endsAt is not ahead.
    let start = Instant::now();
    loop {
        let resolved = got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b.as_array().unwrap().clone())
            .any(|a| {
                a["labels"]["signal"] == "server_error"
                    && a["endsAt"].as_str().unwrap() <= webhook_now().as_str()
            });
        if resolved {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "no resolved alert");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // /api/spikes keeps the history meanwhile (it answered an empty one: the book went
    // with the generation), and detection turned on again starts from it.
    let recent = |v: &Value| -> Vec<(String, bool)> {
        v["recent"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let signal = s["signal"].as_str().unwrap().to_string();
                (signal, !s["ended_at"].is_null())
            })
            .collect()
    };
    let off = spikes(&p).await;
    assert_eq!(off["detection"], "disabled");
    assert_eq!(off["active"].as_array().unwrap().len(), 0);
    assert_eq!(recent(&off), [("server_error".to_string(), true)], "{off}");
    std::fs::write(&cfg, &text).unwrap();
    p.signal("HUP");
    let start = Instant::now();
    while p.all_output().matches("configuration reloaded").count() < 2 {
        assert!(start.elapsed() < DEADLINE, "no second reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let on = spikes(&p).await;
    assert_eq!(recent(&on), [("server_error".to_string(), true)], "{on}");
}

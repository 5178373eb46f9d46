//! The shipped Prometheus rules and Grafana dashboards, proved with the real tools:
//! promtool checks and rule tests, the dashboard JSON schema, and every dashboard query
//! answered by a real Prometheus that scraped a real statuslens carrying real traffic.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn promtool(args: &[&str], dir: &Path) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool is installed by .ci/run (Debian package prometheus)");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_checks_rules_and_config() {
    let dir = root().join("config/prometheus");
    promtool(&["check", "rules", "rules.yml"], &dir);
    promtool(&["check", "config", "prometheus.yml"], &dir);
}

#[test]
fn promtool_rule_tests_pass() {
    promtool(
        &["test", "rules", "rules_test.yml"],
        &root().join("config/prometheus"),
    );
}

#[test]
fn every_alert_has_a_rule_test_where_it_fires() {
    // promtool passes a test file that never mentions an alert: each alert in rules.yml
    // must be expected to fire somewhere in rules_test.yml (an `exp_alerts: []` case
    // alone proves nothing).
    let dir = root().join("config/prometheus");
    let rules = std::fs::read_to_string(dir.join("rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("rules_test.yml")).unwrap();
    let alerts: std::collections::BTreeSet<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let firing: std::collections::BTreeSet<&str> = lines
        .windows(2)
        .filter(|w| w[1] == "exp_alerts:")
        .filter_map(|w| w[0].strip_prefix("alertname: "))
        .map(str::trim)
        .collect();
    let untested: Vec<&&str> = alerts.difference(&firing).collect();
    assert!(
        untested.is_empty(),
        "alerts no test expects to fire: {untested:?}"
    );
}

fn dashboards() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((path, v));
        }
    }
    assert!(!out.is_empty(), "no dashboards");
    out
}

#[test]
fn dashboards_match_grafana_schema_and_conventions() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/grafana-dashboard.schema.json"))
            .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    for (path, d) in dashboards() {
        let errors: Vec<String> = validator
            .iter_errors(&d)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        assert!(
            d.get("__inputs").is_none(),
            "__inputs breaks file provisioning (grafana#10786)"
        );
        let vars = d["templating"]["list"].as_array().unwrap();
        let ds = vars
            .iter()
            .find(|v| v["name"] == "datasource")
            .expect("datasource variable");
        assert_eq!(ds["type"], "datasource");
        for name in ["job", "instance", "route"] {
            let v = vars
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("no {name} variable"));
            assert_eq!(v["multi"], true, "{name} multi-select");
            assert_eq!(v["includeAll"], true, "{name} includeAll");
        }
        for p in d["panels"].as_array().unwrap() {
            let title = p["title"].as_str().unwrap();
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
            assert!(
                !p["description"].as_str().unwrap_or("").is_empty(),
                "{title}: description"
            );
            assert!(
                p["fieldConfig"]["defaults"]["unit"].is_string(),
                "{title}: unit"
            );
            for t in p["targets"].as_array().unwrap() {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
                let expr = t["expr"].as_str().unwrap();
                assert!(expr.contains("statuslens_"), "{title}: {expr}");
                for f in ["rate(", "increase("] {
                    if expr.contains(f) {
                        assert!(expr.contains("[$__rate_interval]"), "{title}: {expr}");
                    }
                }
                for var in ["$job", "$instance", "$route"] {
                    if expr.contains(var) {
                        assert!(
                            expr.contains(&format!("=~\"{var}\"")),
                            "{title}: {var} must match with =~"
                        );
                    }
                }
            }
        }
    }
}

/// The provisioning files name what Grafana needs and point at where the docs copy the JSON.
#[test]
fn provisioning_files_are_complete() {
    let ds =
        std::fs::read_to_string(root().join("dashboards/provisioning/datasources/prometheus.yml"))
            .unwrap();
    assert!(
        ds.contains("type: prometheus") && ds.contains("apiVersion: 1"),
        "{ds}"
    );
    let prov =
        std::fs::read_to_string(root().join("dashboards/provisioning/dashboards/statuslens.yml"))
            .unwrap();
    assert!(
        prov.contains("type: file") && prov.contains("path:"),
        "{prov}"
    );
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Grafana's `label_values(metric{sel}, label)` as the PromQL query it stands for.
fn variable_query(q: &str) -> String {
    let inner = q
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .expect("label_values");
    let (metric, label) = inner.rsplit_once(',').unwrap();
    format!("group by ({}) ({})", label.trim(), metric.trim())
}

fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$__interval", "5s")
        .replace("$__range", "1m")
        .replace("$job", "statuslens")
        .replace("$instance", ".*")
        .replace("$route", ".*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    // statuslens with a real route, a dead one and unmatched paths, under mixed traffic.
    let up = upstream().await;
    let dead = closed_port();
    let quota = raw_upstream(b"HTTP/1.1 200 OK\r\nX-RateLimit-Limit: 100\r\nX-RateLimit-Remaining: 7\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
    let cfg = write_config(&format!(
        "[[routes]]\nname = \"api\"\nmatch = {{ path_prefix = \"/api/\" }}\nupstream = \"http://{}\"\n\n[[routes]]\nname = \"dead\"\nmatch = {{ path_prefix = \"/dead/\" }}\nupstream = \"http://{dead}\"\n\n[[routes]]\nname = \"quota\"\nmatch = {{ path_prefix = \"/quota/\" }}\nupstream = \"http://{quota}\"\n",
        up.addr
    ));
    let p = Proc::start(&["--config", cfg.to_str().unwrap()]);
    let (proxy, admin) = (p.proxy, p.admin);
    // A second instance with a TLS listener, for the certificate panel (no traffic).
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let tls_cfg = write_config("");
    let (cert, key) = (
        tls_cfg.with_file_name("cert.pem"),
        tls_cfg.with_file_name("key.pem"),
    );
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    std::fs::write(
        &tls_cfg,
        format!(
            "[proxy]\ntls = {{ cert_file = \"cert.pem\", key_file = \"key.pem\" }}\n\n[[routes]]\nname = \"api\"\nupstream = \"http://{}\"\n",
            up.addr
        ),
    )
    .unwrap();
    let tls = Proc::start(&["--config", tls_cfg.to_str().unwrap()]);
    let traffic = tokio::spawn(async move {
        let c = client();
        let paths = [
            "/api/status/200",
            "/api/status/200",
            "/api/status/201",
            "/api/status/401",
            "/api/status/404",
            "/api/status/429",
            "/api/status/500",
            "/api/status/503",
            "/dead/x",
            "/nowhere",
            "/api/stall/20",
            "/quota/x",
        ];
        for i in 0.. {
            let url = format!("http://{proxy}{}", paths[i % paths.len()]);
            let _ = get(&c, &url).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    // A real Prometheus scraping it every second and evaluating the shipped rules.
    let dir = std::env::temp_dir().join(format!(
        "statuslens-prom-{}-{}",
        std::process::id(),
        admin.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = root().join("config/prometheus/rules.yml");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: statuslens\n    static_configs:\n      - targets: ['{admin}', '{}']\n",
            rules.display(),
            tls.admin
        ),
    )
    .unwrap();
    let port = closed_port().port();
    let mut prom = Killed(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is installed by .ci/run (Debian package prometheus)"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let c = client();
    let query = |q: String| {
        let c = c.clone();
        let url = format!("{base}/api/v1/query?query={}", encode(&q));
        async move {
            let resp = tokio::time::timeout(
                Duration::from_secs(10),
                c.request(
                    http::Request::get(url)
                        .body(full(bytes::Bytes::new()))
                        .unwrap(),
                ),
            )
            .await;
            let Ok(Ok(resp)) = resp else { return None };
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .ok()?
                .to_bytes();
            serde_json::from_slice::<Value>(&body).ok()
        }
    };

    let mut queries: Vec<(String, String)> = Vec::new();
    for (path, d) in dashboards() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] == "query" {
                let q = v["query"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v["query"]["query"].as_str().unwrap().to_string());
                queries.push((
                    format!("{name} variable {}", v["name"]),
                    substitute(&variable_query(&q)),
                ));
            }
        }
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                queries.push((
                    format!("{name} panel {:?} {}", p["title"], t["refId"]),
                    substitute(t["expr"].as_str().unwrap()),
                ));
            }
        }
    }

    let start = Instant::now();
    let mut missing: Vec<String>;
    loop {
        if let Some(status) = prom.0.try_wait().unwrap() {
            panic!("prometheus exited: {status}");
        }
        missing = Vec::new();
        for (what, q) in &queries {
            // Ratios fall back to 0 when their numerator has no series, so "some data"
            // would also pass with a misspelt `code`/`class` filter: those must show the
            // 401s, 429s, 4xx and 5xx the traffic sends.
            let positive = ["code=\"", "class=\"", "class=~\""]
                .iter()
                .any(|f| q.contains(f));
            match query(q.clone()).await {
                Some(v) if v["status"] == "success" && has_data(&v, positive) => {}
                Some(v) if v["status"] == "error" => panic!("{what}: Prometheus rejected {q}: {v}"),
                other => missing.push(format!("{what}: {q} -> {other:?}")),
            }
        }
        if missing.is_empty() || start.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        missing.is_empty(),
        "queries without data after 120 s:\n{}",
        missing.join("\n")
    );

    // The shipped rules load and evaluate cleanly against real statuslens series.
    let start = Instant::now();
    loop {
        let rules = c
            .request(
                http::Request::get(format!("{base}/api/v1/rules"))
                    .body(full(bytes::Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let body = http_body_util::BodyExt::collect(rules.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        let all: Vec<&Value> = v["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        assert!(all.len() > 20, "rules not loaded: {v}");
        let bad: Vec<&&Value> = all.iter().filter(|r| r["health"] != "ok").collect();
        if bad.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "unhealthy rules: {bad:#?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // And a recording rule carries the per-route 5xx ratio across the scrape.
    // (Polled: a rule can be healthy a moment before its first evaluation has data.)
    let start = Instant::now();
    loop {
        let v = query("route:statuslens_responses_5xx:ratio_rate5m{route=\"api\"}".into())
            .await
            .unwrap();
        // The api route answers 500 and 503 among its codes: above 0, not the fallback.
        if has_data(&v, true) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    traffic.abort();
}

/// Whether a query result has a sample, and with `positive`, one above 0.
fn has_data(v: &Value, positive: bool) -> bool {
    let Some(result) = v["data"]["result"].as_array() else {
        return false;
    };
    let value = |s: &Value| s["value"][1].as_str().and_then(|x| x.parse::<f64>().ok());
    !result.is_empty() && (!positive || result.iter().any(|s| value(s).is_some_and(|x| x > 0.0)))
}

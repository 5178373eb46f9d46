//! `statuslens demo`: a synthetic API, statuslens in front of it, and traffic that
//! walks through the incidents statuslens exists for — all in one process.
//!
//! The story: healthy traffic while the detectors learn the baseline, then the token of
//! one consumer expires (401s), then a rate-limit wave with a falling quota (429s), then
//! an upstream outage (5xx). The demo narrates each phase and each spike as the admin
//! API reports it, so a newcomer sees what statuslens sees.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::config::{Config, ConfigError, Overrides};
use crate::server::{self, RunError};

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Proxy listener (`--listen`).
    pub listen: Option<String>,
    /// Admin listener (`--admin`).
    pub admin: Option<String>,
    /// Length of one phase.
    pub phase: Duration,
    /// How many times to play the story; `None` repeats until Ctrl-C.
    pub cycles: Option<u32>,
    /// Requests per second the traffic generator sends.
    pub rate: u32,
}

/// Errors that stop the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The generated config was rejected (bad `--listen`/`--admin`).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The proxy could not start.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The synthetic API could not bind.
    #[error("cannot start the synthetic API: {0}")]
    Api(std::io::Error),
}

/// What the synthetic API is going through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    Healthy = 0,
    TokenExpired = 1,
    RateLimited = 2,
    Outage = 3,
}

const CONSUMERS: [&str; 4] = ["acme", "globex", "initech", "umbrella"];

struct Api {
    phase: AtomicU8,
    seq: AtomicU64,
    /// Quota left in the rate-limit phase, for the Sforce-Limit-Info header.
    remaining: AtomicU64,
    /// The quota the rate-limit phase starts with.
    quota_max: AtomicU64,
}

impl Api {
    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            1 => Phase::TokenExpired,
            2 => Phase::RateLimited,
            3 => Phase::Outage,
            _ => Phase::Healthy,
        }
    }

    /// A cheap deterministic "random" number in 0..100 per request.
    fn roll(&self) -> u64 {
        let mut x = self
            .seq
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        (x ^ (x >> 32)) % 100
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let consumer = req
            .headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let roll = self.roll();
        let (status, body, extra): (u16, &str, Option<(&str, String)>) = match self.phase() {
            Phase::TokenExpired if consumer == "acme" => {
                (401, "{\"error\":\"invalid_token\"}", None)
            }
            Phase::RateLimited => {
                let left = self.remaining.load(Ordering::Relaxed);
                if left == 0 || roll < 50 {
                    (
                        429,
                        "{\"error\":\"rate_limited\"}",
                        Some(("retry-after", "2".into())),
                    )
                } else {
                    self.remaining.fetch_sub(1, Ordering::Relaxed);
                    // A CRM-style quota report: Salesforce's api-usage=USED/MAX.
                    let max = self.quota_max.load(Ordering::Relaxed);
                    let used = max.saturating_sub(left);
                    (
                        200,
                        "{\"ok\":true}",
                        Some(("sforce-limit-info", format!("api-usage={used}/{max}"))),
                    )
                }
            }
            Phase::Outage if roll < 85 => {
                if roll < 60 {
                    (
                        503,
                        "{\"error\":\"unavailable\"}",
                        Some(("retry-after", "5".into())),
                    )
                } else {
                    (500, "{\"error\":\"internal\"}", None)
                }
            }
            // Normal life: a few 404s and the odd 401.
            _ if roll < 2 => (404, "{\"error\":\"not_found\"}", None),
            _ => (200, "{\"ok\":true}", None),
        };
        let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *resp.status_mut() = StatusCode::from_u16(status).expect("valid code");
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if let Some((name, value)) = extra {
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
        Ok(resp)
    }
}

async fn start_api(api: Arc<Api>) -> Result<SocketAddr, DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(DemoError::Api)?;
    let addr = listener.local_addr().map_err(DemoError::Api)?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors and the like: back off, don't spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let api = api.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| api.clone().handle(req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Runs the demo until its cycles are done or Ctrl-C.
pub async fn run(opts: DemoOptions) -> Result<(), DemoError> {
    let api = Arc::new(Api {
        phase: AtomicU8::new(Phase::Healthy as u8),
        seq: AtomicU64::new(0),
        remaining: AtomicU64::new(0),
        quota_max: AtomicU64::new(1),
    });
    let api_addr = start_api(api.clone()).await?;
    let config = Config::parse(
        &format!(
            r#"
[access_log]
volume = "off"

[detection]
clear_after = "10s"

[[routes]]
name = "crm-api"
match = {{ path_prefix = "/services/data/" }}
upstream = "http://{api_addr}"

[[routes]]
name = "default"
upstream = "http://{api_addr}"
"#
        ),
        "demo",
        &Overrides {
            listen: opts.listen.clone(),
            admin: opts.admin.clone(),
            ..Overrides::default()
        },
    )?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let proxy = tokio::spawn(server::serve(config, None, Some(ready_tx), async {
        let _ = stop_rx.await;
    }));
    let bound = match ready_rx.await {
        Ok(b) => b,
        Err(_) => {
            // The server ended before binding: report its error.
            return match proxy.await {
                Ok(Err(e)) => Err(e.into()),
                _ => Ok(()),
            };
        }
    };

    let banner = format!(
        "statuslens demo\n  synthetic API   http://{api_addr}\n  proxy           http://{}   (try: curl -i http://{}/services/data/v60.0/sobjects)\n  metrics         http://{}/metrics\n  spikes          http://{}/api/spikes\n  status by code  http://{}/api/status\n  traffic         {} req/s from consumers {}\n",
        bound.proxy,
        bound.proxy,
        bound.admin,
        bound.admin,
        bound.admin,
        opts.rate,
        CONSUMERS.join(", ")
    );
    let listened = say(format_args!("{banner}"));

    let traffic = tokio::spawn(generate(bound.proxy, opts.rate));
    let narrator = tokio::spawn(narrate(bound.admin));
    let story = async {
        let mut cycle = 0;
        loop {
            let p = opts.phase;
            let steps: [(Phase, Duration, &str); 7] = [
                (Phase::Healthy, p * 3, "healthy traffic — the detectors learn each route's normal share of 401s, 429s and 5xx"),
                (Phase::TokenExpired, p, "consumer acme's OAuth token expired: every one of its calls gets 401 (expect an `unauthorized` spike)"),
                (Phase::Healthy, p, "acme refreshed its token"),
                (Phase::RateLimited, p, "the API's rate limit is near: quota falls, half the calls get 429 with Retry-After (expect `rate_limited`)"),
                (Phase::Healthy, p, "the quota window reset"),
                (Phase::Outage, p, "the upstream is failing: 503s and 500s (expect `server_error`)"),
                (Phase::Healthy, p * 2, "the upstream recovered; spikes clear once the ratio is back near baseline"),
            ];
            for (phase, len, text) in steps {
                if phase == Phase::RateLimited {
                    let quota = (u64::from(opts.rate) * len.as_secs().max(1) / 3).max(1);
                    api.quota_max.store(quota, Ordering::Relaxed);
                    api.remaining.store(quota, Ordering::Relaxed);
                }
                api.phase.store(phase as u8, Ordering::Relaxed);
                if !say(format_args!("phase: {text}")) {
                    return;
                }
                tokio::time::sleep(len).await;
            }
            cycle += 1;
            if opts.cycles.is_some_and(|c| cycle >= c) {
                return;
            }
        }
    };
    // Nobody reading (stdout closed): no story to tell.
    if listened {
        tokio::select! {
            _ = story => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    traffic.abort();
    // One more look so spikes flagged in the last second are narrated.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    narrator.abort();
    let _ = stop_tx.send(());
    match proxy.await {
        Ok(Err(e)) => Err(e.into()),
        _ => Ok(()),
    }
}

async fn generate(proxy: SocketAddr, rate: u32) {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    let mut i: usize = 0;
    loop {
        tick.tick().await;
        i = i.wrapping_add(1);
        // acme is the biggest consumer (two calls in five), so its expired token shows.
        let consumer = match i % 5 {
            0 | 1 => CONSUMERS[0],
            n => CONSUMERS[n - 1],
        };
        let path = if i % 3 == 0 {
            "/api/orders"
        } else {
            "/services/data/v60.0/sobjects/Account"
        };
        let req = Request::get(format!("http://{proxy}{path}"))
            .header("x-api-key", consumer)
            .body(Empty::new())
            .expect("valid request");
        let client = client.clone();
        tokio::spawn(async move {
            if let Ok(resp) = client.request(req).await {
                let _ = resp.into_body().collect().await;
            }
        });
    }
}

/// Polls `/api/spikes` and prints each spike when it starts and when it ends.
async fn narrate(admin: SocketAddr) {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut seen_started = HashSet::new();
    let mut seen_ended = HashSet::new();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let req = Request::get(format!("http://{admin}/api/spikes"))
            .body(Empty::new())
            .expect("valid request");
        let Ok(resp) = client.request(req).await else {
            continue;
        };
        let Ok(body) = resp.into_body().collect().await else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body.to_bytes()) else {
            continue;
        };
        let empty = Vec::new();
        let active = v["active"].as_array().unwrap_or(&empty);
        let recent = v["recent"].as_array().unwrap_or(&empty);
        for s in active.iter().chain(recent) {
            let key = (
                s["route"].to_string(),
                s["signal"].to_string(),
                s["started_at"].to_string(),
            );
            if seen_started.insert(key.clone()) {
                say(format_args!(
                    "  SPIKE  route {} signal {}: {} of {} responses in {} s ({:.0}%, baseline {:.2}%) — {}",
                    s["route"].as_str().unwrap_or("?"),
                    s["signal"].as_str().unwrap_or("?"),
                    s["matched"],
                    s["requests"],
                    s["window_seconds"],
                    s["observed_ratio"].as_f64().unwrap_or(0.0) * 100.0,
                    s["baseline_ratio"].as_f64().unwrap_or(0.0) * 100.0,
                    s["meaning"].as_str().unwrap_or(""),
                ));
            }
            if !s["ended_at"].is_null() && seen_ended.insert(key) {
                say(format_args!(
                    "  ended  route {} signal {} after {} s",
                    s["route"].as_str().unwrap_or("?"),
                    s["signal"].as_str().unwrap_or("?"),
                    s["ended_at"]
                        .as_u64()
                        .unwrap_or(0)
                        .saturating_sub(s["started_at"].as_u64().unwrap_or(0)),
                ));
            }
        }
    }
}

/// Prints one part of the demo's story; false once nobody reads it (`demo | head`),
/// which ends the story instead of a panic on the closed pipe.
fn say(text: std::fmt::Arguments<'_>) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").and_then(|()| out.flush()).is_ok()
}

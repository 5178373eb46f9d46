//! The admin listener: metrics, health, and the JSON API. It never forwards traffic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::generation::{Generation, Live};
use crate::status;

/// The admin service.
pub struct Admin {
    live: Arc<Live>,
    draining: watch::Receiver<bool>,
    started: Instant,
}

impl Admin {
    /// An admin service over the live generation; `draining` flips to true on shutdown.
    pub fn new(live: Arc<Live>, draining: watch::Receiver<bool>) -> Admin {
        Admin {
            live,
            draining,
            started: Instant::now(),
        }
    }

    /// Serves one admin request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
        let gen = self.live.load();
        let path = req.uri().path();
        let reload = path == "/api/reload";
        let known = matches!(
            path,
            "/metrics" | "/healthz" | "/readyz" | "/api/status" | "/api/spikes" | "/api/reload"
        );
        let allowed = if reload {
            req.method() == Method::POST
        } else {
            req.method() == Method::GET || req.method() == Method::HEAD
        };
        // 405 only for a path that exists (else 404, below), and with the `Allow` field
        // RFC 9110 §15.5.6 requires.
        if known && !allowed {
            let (only, allow) = if reload {
                ("only POST\n", "POST")
            } else {
                ("only GET and HEAD\n", "GET, HEAD")
            };
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, only);
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            return Ok(r);
        }
        if let Some(token) = &gen.config.admin_token {
            // Health probes stay open so orchestrators need no secret.
            let open = path == "/healthz" || path == "/readyz";
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| bearer(v.as_bytes()));
            if !open && !given.is_some_and(|g| constant_time_eq(g, token.as_bytes())) {
                let mut r = text(
                    StatusCode::UNAUTHORIZED,
                    "admin API: missing or wrong bearer token\n",
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"statuslens\""),
                );
                return Ok(r);
            }
        }
        Ok(match path {
            "/metrics" => {
                let mut r = Response::new(Full::new(Bytes::from(self.live.families().render())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if *self.draining.borrow() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
            "/readyz" => text(StatusCode::OK, "ready\n"),
            "/api/status" => json_response(self.status_json(&gen)),
            "/api/reload" if !gen.config.admin_reload => text(
                StatusCode::FORBIDDEN,
                "reload over HTTP is disabled: set admin.reload = true (SIGHUP always works)\n",
            ),
            "/api/reload" => {
                let live = self.live.clone();
                let outcome = tokio::task::spawn_blocking(move || live.reload_and_log("POST /api/reload"))
                    .await
                    .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
                let mut r = json_response(match &outcome {
                    Ok(routes) => json!({ "reloaded": true, "routes": routes }),
                    Err(error) => json!({ "reloaded": false, "error": error }),
                });
                if outcome.is_err() {
                    *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
                }
                r
            }
            "/api/spikes" => json_response(self.live.spikes_json()),
            _ => text(
                StatusCode::NOT_FOUND,
                "not an admin path: /metrics, /healthz, /readyz, /api/status, /api/spikes, /api/reload\n",
            ),
        })
    }

    /// Per route: counts by code and class since start, each code's meaning, and the
    /// share of each watched signal.
    fn status_json(&self, gen: &Generation) -> Value {
        let route_list: Vec<(String, String)> = gen
            .config
            .routes
            .iter()
            .map(|r| (r.name.clone(), r.upstream.clone()))
            .chain(std::iter::once(("unmatched".to_string(), String::new())))
            .collect();
        // Read the counts back from the registry, so the API and /metrics cannot disagree.
        let mut by_route: BTreeMap<String, BTreeMap<u16, u64>> = BTreeMap::new();
        for family in self.live.families().registry().gather() {
            if family.name() != "statuslens_responses_total" {
                continue;
            }
            for m in family.get_metric() {
                let mut route = String::new();
                let mut code = 0u16;
                for l in m.get_label() {
                    match l.name() {
                        "route" => route = l.value().to_string(),
                        "code" => code = l.value().parse().unwrap_or(0),
                        _ => {}
                    }
                }
                *by_route.entry(route).or_default().entry(code).or_default() +=
                    m.get_counter().get_value() as u64;
            }
        }
        let observer = gen.proxy.observer();
        let routes: Vec<Value> = route_list
            .iter()
            .enumerate()
            .map(|(route_id, (name, upstream))| {
                let empty = BTreeMap::new();
                let codes = by_route.get(name.as_str()).unwrap_or(&empty);
                let total: u64 = codes.values().sum();
                let mut classes: BTreeMap<&str, u64> =
                    status::Class::ALL.iter().map(|c| (c.label(), 0)).collect();
                let by_code: Vec<Value> = codes
                    .iter()
                    .map(|(&code, &count)| {
                        *classes
                            .entry(status::Class::counted(code).label())
                            .or_default() += count;
                        let info = status::lookup(code);
                        json!({
                            "code": code,
                            "count": count,
                            "reason": info.map(|i| i.reason),
                            "meaning": status::meaning(code),
                            "retry": info.map(|i| i.retry.label()),
                            "retry_advice": info.map(|i| i.retry_advice),
                            "last_retry_after_s": observer.last_retry_after(route_id, code),
                        })
                    })
                    .collect();
                let live = gen.detection.as_ref().map(|d| d.route_signals(name));
                let signals: BTreeMap<&str, Value> = gen
                    .config
                    .signals
                    .iter()
                    .map(|s| {
                        let k: u64 = codes
                            .iter()
                            .filter(|(&c, _)| s.matches(c))
                            .map(|(_, &n)| n)
                            .sum();
                        let ratio = if total == 0 {
                            0.0
                        } else {
                            k as f64 / total as f64
                        };
                        let mut v = json!({ "count": k, "ratio": ratio });
                        if let Some(now) = live.as_ref().and_then(|l| l.get(&s.name)) {
                            v["live"] = now.clone();
                        }
                        (s.name.as_str(), v)
                    })
                    .collect();
                json!({
                    "route": name,
                    "upstream": upstream,
                    "total": total,
                    "by_class": classes,
                    "by_code": by_code,
                    "signals": signals,
                })
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "routes": routes,
        })
    }
}

/// Compares without an early exit, so response timing does not leak the token.
/// The credentials of a `Bearer` authorization (the scheme is case-insensitive,
/// RFC 9110 §11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let at = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(at);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii_start())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(v: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

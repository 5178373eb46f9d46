//! Spikes to Alertmanager: POSTs in the v2 `/api/v2/alerts` format.
//!
//! The ticker hands events over with `try_send` on a bounded queue, so a slow or dead
//! receiver can never hold up detection, let alone the proxy; when the queue is full
//! the event is dropped and logged. One task delivers them with retry and exponential
//! backoff, and re-sends every firing alert each minute with `endsAt` a few minutes
//! ahead, as Alertmanager expects of a client that keeps an alert alive.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{unix_now, Spike};

/// How often firing alerts are re-sent.
const RESEND: Duration = Duration::from_secs(60);
/// How far ahead a firing alert's `endsAt` is set: several re-send periods, so one
/// lost POST does not resolve it.
const ENDS_AHEAD_SECS: u64 = 300;
/// Events waiting for delivery; beyond this they are dropped (and logged).
const QUEUE: usize = 256;
/// Delivery attempts per POST.
const ATTEMPTS: u32 = 5;

enum Event {
    Firing(Spike),
    Resolved(Spike),
}

/// Handle to the delivery task.
pub struct Webhook {
    tx: mpsc::Sender<Event>,
}

impl Webhook {
    /// Starts the delivery task for `url`; `instance` labels every alert.
    pub fn start(url: Uri, instance: String) -> Webhook {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(deliver(url, instance, rx));
        Webhook { tx }
    }

    /// A spike started.
    pub fn firing(&self, spike: &Spike) {
        self.enqueue(Event::Firing(spike.clone()));
    }

    /// A spike ended.
    pub fn resolved(&self, spike: &Spike) {
        self.enqueue(Event::Resolved(spike.clone()));
    }

    fn enqueue(&self, e: Event) {
        if self.tx.try_send(e).is_err() {
            tracing::warn!("webhook queue full or closed; dropping a spike notification");
        }
    }
}

async fn deliver(url: Uri, instance: String, mut rx: mpsc::Receiver<Event>) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let mut firing: HashMap<(String, String), Spike> = HashMap::new();
    let mut resend = tokio::time::interval(RESEND);
    resend.tick().await;
    loop {
        let batch: Vec<Value> = tokio::select! {
            e = rx.recv() => match e {
                None => return,
                Some(Event::Firing(s)) => {
                    let a = alert(&s, &instance, None);
                    firing.insert((s.route.clone(), s.signal.clone()), s);
                    vec![a]
                }
                Some(Event::Resolved(s)) => {
                    firing.remove(&(s.route.clone(), s.signal.clone()));
                    vec![alert(&s, &instance, s.ended_at)]
                }
            },
            _ = resend.tick() => firing.values().map(|s| alert(s, &instance, None)).collect(),
        };
        if !batch.is_empty() {
            post(&client, &url, &Value::Array(batch)).await;
        }
    }
}

/// One Alertmanager v2 alert; `ended` set means resolved at that time.
pub fn alert(s: &Spike, instance: &str, ended: Option<u64>) -> Value {
    let ends = ended.unwrap_or_else(|| unix_now() + ENDS_AHEAD_SECS);
    json!({
        "labels": {
            "alertname": "StatuslensSpike",
            "severity": s.severity,
            "route": s.route,
            "signal": s.signal,
            "instance": instance,
        },
        "annotations": {
            "summary": format!("{} spike on route {}", s.signal, s.route),
            "description": format!(
                "{} of {} responses in {} s were {} ({:.1}%, baseline {:.2}%). {}",
                s.matched, s.requests, s.window_seconds, s.signal,
                s.observed_ratio * 100.0, s.baseline_ratio * 100.0, s.meaning
            ),
        },
        "startsAt": rfc3339(s.started_at),
        "endsAt": rfc3339(ends),
    })
}

async fn post(client: &Client<HttpConnector, Full<Bytes>>, url: &Uri, body: &Value) {
    let bytes = Bytes::from(body.to_string());
    let mut backoff = Duration::from_millis(500);
    for attempt in 1..=ATTEMPTS {
        let req = Request::post(url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes.clone()))
            .expect("valid request");
        let outcome = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await;
        let error = match outcome {
            Ok(Ok(resp)) if resp.status().is_success() => {
                let _ = resp.into_body().collect().await;
                return;
            }
            Ok(Ok(resp)) => format!("status {}", resp.status()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".into(),
        };
        tracing::warn!(url = %url, attempt, error, "webhook delivery failed");
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
    tracing::warn!(url = %url, "webhook delivery gave up after {ATTEMPTS} attempts");
}

/// Formats Unix seconds as RFC 3339 UTC (`2026-11-26T01:02:03Z`).
pub fn rfc3339(secs: u64) -> String {
    let (y, m, d, hh, mm, ss) = civil(secs);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

/// Unix seconds as UTC (year, month, day, hour, minute, second).
pub fn civil(secs: u64) -> (i64, i64, i64, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm), valid for the Unix era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_points() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_160_523), "2026-12-25T01:02:03Z");
    }
}

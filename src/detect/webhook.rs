//! Spikes to Alertmanager: POSTs in the v2 `/api/v2/alerts` format.
//!
//! The ticker records each change in an outbox — the latest state per route × signal —
//! and wakes one delivery task; it never waits on the receiver, so a slow or dead one
//! can never hold up detection, let alone the proxy. The task sends every change since
//! its last POST in one POST (with retry and backoff), re-sends every firing alert each
//! minute with `endsAt` a few minutes ahead (as Alertmanager expects of a client that
//! keeps an alert alive), and puts an undelivered resolution back for the next round:
//! an outage of the receiver delays news, it never loses the latest state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::{unix_now, Spike};

/// How often firing alerts are re-sent.
const RESEND: Duration = Duration::from_secs(60);
/// How far ahead a firing alert's `endsAt` is set: several re-send periods, so one
/// lost POST does not resolve it.
const ENDS_AHEAD_SECS: u64 = 300;
/// Delivery attempts per POST.
const ATTEMPTS: u32 = 5;
/// How long one attempt may take, response body included: a receiver (or a relay in
/// front of it) that sends a head and then stalls must not hold the one delivery task,
/// and with it every later alert and resolution, for ever.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

type Key = (String, String);

fn key(s: &Spike) -> Key {
    (s.route.clone(), s.signal.clone())
}

/// What the delivery task has to send.
#[derive(Default)]
struct Outbox {
    /// The latest undelivered state per route × signal: a spike firing or ended. A
    /// newer state replaces an older one, so the outbox never outgrows the routes ×
    /// signals, however long the receiver is away.
    pending: HashMap<Key, Spike>,
    /// Alerts firing now, for the minutely re-send.
    firing: HashMap<Key, Spike>,
}

impl Outbox {
    fn fire(&mut self, s: &Spike) {
        self.firing.insert(key(s), s.clone());
        self.pending.insert(key(s), s.clone());
    }

    fn resolve(&mut self, s: &Spike) {
        self.firing.remove(&key(s));
        self.pending.insert(key(s), s.clone());
    }

    /// The changes to send, and with `resend` every firing alert too.
    fn take(&mut self, resend: bool) -> Vec<Spike> {
        let mut batch = std::mem::take(&mut self.pending);
        if resend {
            for (k, s) in &self.firing {
                batch.entry(k.clone()).or_insert_with(|| s.clone());
            }
        }
        batch.into_values().collect()
    }

    /// A batch that could not be delivered: its resolutions go back unless something
    /// newer replaced them (firing alerts are re-sent each minute anyway).
    fn put_back(&mut self, batch: Vec<Spike>) {
        for s in batch.into_iter().filter(|s| s.ended_at.is_some()) {
            self.pending.entry(key(&s)).or_insert(s);
        }
    }
}

/// Handle to the delivery task.
pub struct Webhook {
    outbox: Arc<Mutex<Outbox>>,
    wake: Arc<Notify>,
}

impl Webhook {
    /// Starts the delivery task for `url`; `instance` labels every alert.
    pub fn start(url: Uri, instance: String) -> Webhook {
        let outbox = Arc::new(Mutex::new(Outbox::default()));
        let wake = Arc::new(Notify::new());
        tokio::spawn(deliver(url, instance, outbox.clone(), wake.clone()));
        Webhook { outbox, wake }
    }

    /// A spike started.
    pub fn firing(&self, spike: &Spike) {
        self.change(|o| o.fire(spike));
    }

    /// A spike ended.
    pub fn resolved(&self, spike: &Spike) {
        self.change(|o| o.resolve(spike));
    }

    fn change(&self, f: impl FnOnce(&mut Outbox)) {
        if let Ok(mut outbox) = self.outbox.lock() {
            f(&mut outbox);
        }
        // Stores a permit when the task is busy posting: no change is slept through.
        self.wake.notify_one();
    }
}

async fn deliver(url: Uri, instance: String, outbox: Arc<Mutex<Outbox>>, wake: Arc<Notify>) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let mut resend = tokio::time::interval(RESEND);
    resend.tick().await;
    loop {
        let all = tokio::select! {
            _ = wake.notified() => false,
            _ = resend.tick() => true,
        };
        let batch = match outbox.lock() {
            Ok(mut o) => o.take(all),
            Err(_) => return,
        };
        if batch.is_empty() {
            continue;
        }
        let body = Value::Array(batch.iter().map(|s| alert(s, &instance)).collect());
        if !post(&client, &url, &body, ATTEMPT_TIMEOUT).await {
            if let Ok(mut o) = outbox.lock() {
                o.put_back(batch);
            }
        }
    }
}

/// One Alertmanager v2 alert: firing until `ended_at`, resolved from then on.
pub fn alert(s: &Spike, instance: &str) -> Value {
    // Never before startsAt, which Alertmanager rejects, even if the clock stepped back.
    let ends = s
        .ended_at
        .unwrap_or_else(|| unix_now() + ENDS_AHEAD_SECS)
        .max(s.started_at);
    let mut description = format!(
        "{} of {} responses in {} s were {} ({:.1}%, baseline {:.2}%). {}",
        s.matched,
        s.requests,
        s.window_seconds,
        s.signal,
        s.observed_ratio * 100.0,
        s.baseline_ratio * 100.0,
        s.meaning
    );
    let mut annotations = json!({
        "summary": format!("{} spike on route {}", s.signal, s.route),
    });
    // Who is behind it is what the person paged asks first ("whose token expired?"):
    // in the text every receiver shows, and on its own for templates.
    if let Some(who) = &s.attribution {
        description.push_str(&format!(" {who}."));
        annotations["attribution"] = json!(who);
    }
    annotations["description"] = json!(description);
    json!({
        "labels": {
            "alertname": "StatuslensSpike",
            "severity": s.severity,
            "route": s.route,
            "signal": s.signal,
            "instance": instance,
        },
        "annotations": annotations,
        "startsAt": rfc3339(s.started_at),
        "endsAt": rfc3339(ends),
    })
}

/// POSTs `body`, retrying, each attempt within `limit`; whether it was delivered.
async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &Uri,
    body: &Value,
    limit: Duration,
) -> bool {
    let bytes = Bytes::from(body.to_string());
    let mut backoff = Duration::from_millis(500);
    for attempt in 1..=ATTEMPTS {
        let req = Request::post(url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes.clone()))
            .expect("valid request");
        let exchange = async {
            let resp = client.request(req).await?;
            // Read to its end, so the connection can carry the next POST; a body that
            // breaks off leaves the status standing (the receiver has decided). At most
            // 64 KiB of it: Alertmanager answers with a few bytes, and a receiver that
            // sends more is not read into memory (its connection is dropped instead).
            let status = resp.status();
            let _ = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
                .collect()
                .await;
            Ok::<_, hyper_util::client::legacy::Error>(status)
        };
        let error = match tokio::time::timeout(limit, exchange).await {
            Ok(Ok(status)) if status.is_success() => return true,
            Ok(Ok(status)) => format!("status {status}"),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".into(),
        };
        tracing::warn!(url = %url, attempt, error, "webhook delivery failed");
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
    tracing::warn!(url = %url, "webhook delivery gave up after {ATTEMPTS} attempts; retrying with the next change or re-send");
    false
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
    use std::sync::atomic::Ordering;

    fn spike(route: &str, ended_at: Option<u64>) -> Spike {
        Spike {
            route: route.into(),
            signal: "server_error".into(),
            started_at: 1_000,
            ended_at,
            observed_ratio: 1.0,
            baseline_ratio: 0.01,
            window_seconds: 10,
            requests: 100,
            matched: 100,
            episode_requests: None,
            episode_matched: None,
            dominant_code: Some(503),
            meaning: String::new(),
            severity: "critical".into(),
            attribution: None,
            top_consumers: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_receiver_that_stalls_mid_body_is_given_up_on_and_retried() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: Uri = format!("http://{}/api/v2/alerts", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = attempts.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0; 65536];
                let _ = s.read(&mut buf).await;
                // The first: a head promising ten bytes, then nothing; then answers.
                let answer: &[u8] = if seen.fetch_add(1, Ordering::Relaxed) == 0 {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
                };
                let _ = s.write_all(answer).await;
                held.push(s);
            }
        });
        let client = Client::builder(TokioExecutor::new()).build_http();
        let delivered = tokio::time::timeout(
            Duration::from_secs(60),
            post(&client, &url, &json!([]), Duration::from_secs(2)),
        )
        .await
        .expect("the stalled body must not hold the delivery for ever");
        assert!(delivered, "a later attempt is answered");
        assert!(
            attempts.load(Ordering::Relaxed) >= 2,
            "the stalled attempt was retried"
        );
    }

    #[test]
    fn the_outbox_keeps_the_latest_state_and_never_loses_a_resolution() {
        let mut o = Outbox::default();
        // 300 routes break at once: nothing is dropped (the 256-event queue this outbox replaced dropped 44).
        for r in 0..300 {
            o.fire(&spike(&format!("r{r}"), None));
        }
        assert_eq!(o.take(false).len(), 300);
        // A route fires and ends before the task runs: only the end is left to send.
        o.fire(&spike("a", None));
        o.resolve(&spike("a", Some(1_060)));
        let batch = o.take(false);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].ended_at, Some(1_060));
        // The receiver is down: the resolution is kept for the next round...
        o.put_back(batch);
        let batch = o.take(true);
        assert!(batch
            .iter()
            .any(|s| s.route == "a" && s.ended_at == Some(1_060)));
        // ...and the minutely re-send carries the 300 still firing, not "a".
        assert_eq!(batch.len(), 301);
        // A newer state wins over a put-back one.
        o.fire(&spike("b", None));
        o.put_back(vec![spike("b", Some(1_030))]);
        assert_eq!(o.take(false)[0].ended_at, None);
    }

    #[test]
    fn a_firing_alert_never_ends_before_it_starts() {
        let mut s = spike("a", None);
        s.started_at = unix_now() + 3_600;
        let a = alert(&s, "i");
        assert!(
            a["endsAt"].as_str().unwrap() >= a["startsAt"].as_str().unwrap(),
            "{a}"
        );
    }

    #[test]
    fn an_attributed_spike_says_who_in_its_alert() {
        let mut s = spike("a", None);
        s.meaning = "503 Service Unavailable: overloaded".into();
        let plain = alert(&s, "i");
        assert!(plain["annotations"].get("attribution").is_none(), "{plain}");
        assert_eq!(
            plain["annotations"]["description"],
            "100 of 100 responses in 10 s were server_error (100.0%, baseline 1.00%). \
             503 Service Unavailable: overloaded"
        );
        let who = "83% of the 503s in this spike came from consumer 7f3a09c1";
        s.attribution = Some(who.into());
        let a = alert(&s, "i");
        assert_eq!(a["annotations"]["attribution"], who);
        assert!(
            a["annotations"]["description"]
                .as_str()
                .unwrap()
                .ends_with(&format!("overloaded {who}.")),
            "{a}"
        );
    }

    #[test]
    fn rfc3339_known_points() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_160_523), "2026-12-25T01:02:03Z");
    }
}

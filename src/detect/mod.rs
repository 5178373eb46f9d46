//! Live spike detection: per route × signal, in process.
//!
//! The request path only bumps atomics ([`Counters::observe`]): a total per route and,
//! for each signal the code belongs to, a matched count and a per-code count. Once a
//! second a ticker swaps those counts out and feeds each [`detector::Detector`] — pure,
//! clock-injected state machines — and reports transitions four ways: a WARN log line,
//! the `statuslens_spike_*` metrics, `/api/spikes`, and the optional Alertmanager
//! webhook.

pub mod detector;
pub mod webhook;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use serde::Serialize;

use crate::config::Config;
use crate::consumer::{ConsumerId, TopK};
use crate::observe::Sink;
use crate::status;
use detector::{Detector, Transition};

/// Bit set of the signals a code belongs to, for codes 0..=999.
type SignalMask = u32;

/// Most signals one config may define (one bit each in a `SignalMask`).
pub const MAX_SIGNALS: usize = 32;

/// The hot-path side: atomics per route, bumped once per finished request.
pub struct Counters {
    masks: Box<[SignalMask; 1000]>,
    /// Per signal, the position of each of its codes in that signal's per-code array
    /// (a class is 100 codes, so a signal can hold up to 500).
    code_slot: Vec<[u16; 1000]>,
    routes: Vec<RouteCounters>,
}

struct RouteCounters {
    total: AtomicU64,
    matched: Vec<AtomicU64>,
    /// Per signal, per code of that signal: responses this second.
    by_code: Vec<Vec<AtomicU64>>,
    /// Per signal: who sent the matching requests lately (routes that identify
    /// consumers only). Locked only for a matching response on such a route, i.e. for
    /// errors, never for the bulk of healthy traffic.
    consumers: Vec<Mutex<TopK>>,
    /// Whether the route identifies consumers (`routes[].consumer`).
    identifies: bool,
}

/// Consumers tracked per route × signal: enough to name a dominant one.
const TOP_CONSUMERS: usize = 32;

impl Counters {
    fn new(config: &Config) -> Counters {
        let mut masks = Box::new([0 as SignalMask; 1000]);
        let mut code_slot = Vec::new();
        for (i, s) in config.signals.iter().enumerate() {
            let mut slots = [u16::MAX; 1000];
            for (j, &c) in s.codes.iter().enumerate() {
                masks[c as usize] |= 1 << i;
                slots[c as usize] = u16::try_from(j).expect("at most 500 codes per signal");
            }
            code_slot.push(slots);
        }
        let routes = config
            .routes
            .iter()
            .map(|route| RouteCounters {
                total: AtomicU64::new(0),
                matched: config.signals.iter().map(|_| AtomicU64::new(0)).collect(),
                by_code: config
                    .signals
                    .iter()
                    .map(|s| s.codes.iter().map(|_| AtomicU64::new(0)).collect())
                    .collect(),
                consumers: config
                    .signals
                    .iter()
                    .map(|_| Mutex::new(TopK::new(TOP_CONSUMERS)))
                    .collect(),
                identifies: route.consumer.is_some(),
            })
            .collect();
        Counters {
            masks,
            code_slot,
            routes,
        }
    }
}

impl Sink for Counters {
    fn observe(&self, route: usize, code: u16, consumer: Option<ConsumerId>) {
        // `unmatched` has no detectors: its 404s are not an upstream's behaviour.
        let Some(r) = self.routes.get(route) else {
            return;
        };
        r.total.fetch_add(1, Ordering::Relaxed);
        let mut mask = self.masks.get(code as usize).copied().unwrap_or(0);
        while mask != 0 {
            let s = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            r.matched[s].fetch_add(1, Ordering::Relaxed);
            let slot = self.code_slot[s][code as usize] as usize;
            r.by_code[s][slot].fetch_add(1, Ordering::Relaxed);
            if r.identifies {
                if let Ok(mut top) = r.consumers[s].lock() {
                    // Anonymous matches count in the whole, or a share would overstate.
                    match consumer {
                        Some(id) => top.add(id, 1),
                        None => top.add_anonymous(1),
                    }
                }
            }
        }
    }
}

/// One spike, as `/api/spikes` and the webhook show it.
#[derive(Debug, Clone, Serialize)]
pub struct Spike {
    /// Route label.
    pub route: String,
    /// Signal label.
    pub signal: String,
    /// Unix seconds when it was flagged.
    pub started_at: u64,
    /// Unix seconds when it cleared (None while active).
    pub ended_at: Option<u64>,
    /// Matching share in the window that fired.
    pub observed_ratio: f64,
    /// The route's learned baseline share when it fired.
    pub baseline_ratio: f64,
    /// Window length (seconds) that fired.
    pub window_seconds: u64,
    /// Responses in that window.
    pub requests: u64,
    /// Matching responses in that window.
    pub matched: u64,
    /// Once ended: all responses from its start to its end (None while active).
    pub episode_requests: Option<u64>,
    /// Once ended: the matching ones among them.
    pub episode_matched: Option<u64>,
    /// The most frequent matching code around the start.
    pub dominant_code: Option<u16>,
    /// What that code means.
    pub meaning: String,
    /// Severity label (from the signal's config).
    pub severity: String,
    /// "83% of the 401s in this spike came from consumer 7f3a09c1", when one dominates.
    pub attribution: Option<String>,
    /// The consumers behind the matching responses around the start (hashed ids).
    pub top_consumers: Vec<TopConsumer>,
}

/// One consumer's part in a spike.
#[derive(Debug, Clone, Serialize)]
pub struct TopConsumer {
    /// Hashed consumer id.
    pub consumer: String,
    /// Share of the signal's matching responses (a lower bound).
    pub share: f64,
}

struct Key {
    route: usize,
    signal: usize,
    detector: Detector,
    /// Exponentially decayed counts per code of the signal (10 s half-life), so the
    /// dominant code reflects what is happening now, not since start-up.
    recent: Vec<f64>,
    gauge: IntGauge,
    total: IntCounter,
    /// Matches counted in a second before their responses' totals were (a request
    /// ending between the two swaps of a tick): kept for the next second, not lost.
    carry: u64,
}

/// What `/api/spikes` reads: the active spikes and a bounded history.
#[derive(Default, Clone)]
pub struct SpikeBook {
    active: Vec<Spike>,
    ended: VecDeque<Spike>,
}

/// The spike metric families, registered once per process.
pub struct SpikeFamilies {
    active: IntGaugeVec,
    total: IntCounterVec,
    /// The history of a detection that a reload turned off: `/api/spikes` shows it
    /// meanwhile, and detection turned on again starts from it.
    retired: Mutex<VecDeque<Spike>>,
}

impl SpikeFamilies {
    /// Registers `statuslens_spike_active` and `statuslens_spikes_total`.
    pub fn register(registry: &Registry) -> SpikeFamilies {
        let active = IntGaugeVec::new(
            Opts::new(
                "statuslens_spike_active",
                "1 while statuslens' live detector flags a spike for this route and signal.",
            ),
            &["route", "signal"],
        )
        .expect("valid metric");
        let total = IntCounterVec::new(
            Opts::new(
                "statuslens_spikes_total",
                "Spikes flagged, by route and signal.",
            ),
            &["route", "signal"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(active.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(total.clone()))
            .expect("unique metric");
        SpikeFamilies {
            active,
            total,
            retired: Mutex::default(),
        }
    }

    /// `/api/spikes` while detection is off: the spikes it had when it was turned off.
    pub fn retired_json(&self) -> serde_json::Value {
        let retired = self.retired.lock().expect("spike history lock");
        serde_json::json!({ "active": [], "recent": *retired, "detection": "disabled" })
    }
}

/// The detection engine: counters, detectors, the spike book and the webhook.
pub struct Detection {
    counters: Arc<Counters>,
    /// Detectors, and a per-route scratch buffer so a tick allocates nothing.
    keys: Mutex<(Vec<Key>, Vec<u64>)>,
    book: Mutex<SpikeBook>,
    history: usize,
    route_names: Vec<String>,
    signals: Vec<crate::config::Signal>,
    webhook: Option<Arc<webhook::Webhook>>,
    origin: Instant,
    origin_unix: u64,
    /// The second of the last tick (0 before the first): decays follow the time that
    /// passed, not the number of ticks, which a reload can skip or the timer repeat.
    last_tick: std::sync::atomic::AtomicU64,
}

impl Detection {
    /// Builds one detector per route × signal and registers the spike metrics, which
    /// exist (at 0) for every route × signal from the start.
    pub fn new(config: &Config, registry: &Registry) -> Arc<Detection> {
        let webhook = config.detection.webhook.clone().map(|url| {
            Arc::new(webhook::Webhook::start(
                url,
                config.detection.instance.clone(),
            ))
        });
        Detection::build(config, &SpikeFamilies::register(registry), webhook, None)
    }

    /// Builds the detectors of `config`. With `previous` (a config reload), a route ×
    /// signal that keeps its name and codes keeps its detector — baseline, windows and
    /// any active spike — with the thresholds it is given now, so a reload neither
    /// forgets what is normal nor re-fires (not even one that tunes the thresholds
    /// during an incident).
    pub fn build(
        config: &Config,
        families: &SpikeFamilies,
        webhook: Option<Arc<webhook::Webhook>>,
        previous: Option<&Detection>,
    ) -> Arc<Detection> {
        let prev_keys = previous.map(|p| p.keys.lock().expect("detector lock"));
        let mut keys = Vec::new();
        for (r, route) in config.routes.iter().enumerate() {
            for (s, signal) in config.signals.iter().enumerate() {
                let carried = prev_keys.as_ref().and_then(|guard| {
                    let p = previous.expect("keys come from previous");
                    guard.0.iter().find(|k| {
                        p.route_names[k.route] == route.name
                            && p.signals[k.signal].name == signal.name
                            && p.signals[k.signal].codes == signal.codes
                    })
                });
                let detector = match carried {
                    Some(k) if k.detector.config() == &route.detectors[s] => k.detector.clone(),
                    Some(k) => {
                        let mut d = k.detector.clone();
                        d.reconfigure(route.detectors[s].clone())
                            .expect("validated with the config");
                        d
                    }
                    None => Detector::new(route.detectors[s].clone()),
                };
                let gauge = families
                    .active
                    .with_label_values(&[&route.name, &signal.name]);
                // The series outlives generations: it says what this detector says.
                gauge.set(i64::from(detector.is_active()));
                keys.push(Key {
                    route: r,
                    signal: s,
                    detector,
                    recent: carried
                        .map(|k| k.recent.clone())
                        .unwrap_or_else(|| vec![0.0; signal.codes.len()]),
                    gauge,
                    total: families
                        .total
                        .with_label_values(&[&route.name, &signal.name]),
                    carry: carried.map_or(0, |k| k.carry),
                });
            }
        }
        drop(prev_keys);
        let now = unix_now();
        let mut book = SpikeBook::default();
        if previous.is_none() {
            // Detection turned on again (or for the first time): what it had before.
            book.ended = std::mem::take(&mut *families.retired.lock().expect("spike history lock"));
            book.ended.truncate(config.detection.history);
        }
        if let Some(p) = previous {
            let old = p.book.lock().expect("spike book lock");
            book.ended = old.ended.clone();
            for spike in &old.active {
                let kept = keys.iter().any(|k| {
                    config.routes[k.route].name == spike.route
                        && config.signals[k.signal].name == spike.signal
                        && k.detector.is_active()
                });
                if kept {
                    book.active.push(spike.clone());
                } else {
                    // Its route or signal changed or went away: the spike ends here.
                    families
                        .active
                        .with_label_values(&[&spike.route, &spike.signal])
                        .set(0);
                    let mut ended = spike.clone();
                    ended.ended_at = Some(now);
                    if let Some(w) = &webhook {
                        w.resolved(&ended);
                    }
                    book.ended.push_front(ended);
                }
            }
            book.ended.truncate(config.detection.history);
        }
        // Requests in flight across a reload report to the generation they started in:
        // with the same routes and signals, both share one set of counters, so the
        // ticker (which reads only the newest) still sees them.
        let counters = match previous {
            Some(p) if p.counts_like(config) => p.counters.clone(),
            _ => Arc::new(Counters::new(config)),
        };
        Arc::new(Detection {
            counters,
            keys: Mutex::new((keys, vec![0; config.routes.len()])),
            book: Mutex::new(book),
            history: config.detection.history,
            route_names: config.routes.iter().map(|r| r.name.clone()).collect(),
            signals: config.signals.clone(),
            webhook,
            // Detectors need t never to go back: a reload keeps the clock's origin.
            origin: previous.map_or_else(Instant::now, |p| p.origin),
            origin_unix: previous.map_or_else(unix_now, |p| p.origin_unix),
            last_tick: previous
                .map_or(0, |p| p.last_tick.load(Ordering::Relaxed))
                .into(),
        })
    }

    /// Ends every active spike: detection was turned off (a reload), so nothing would
    /// ever end them — the gauge would stay at 1 and Alertmanager keep the alert.
    pub fn end_all(&self, families: &SpikeFamilies) {
        let now = unix_now();
        let mut book = self.book.lock().expect("spike book lock");
        for mut spike in std::mem::take(&mut book.active) {
            families
                .active
                .with_label_values(&[&spike.route, &spike.signal])
                .set(0);
            spike.ended_at = Some(now);
            tracing::warn!(
                target: "statuslens::spike",
                route = spike.route.as_str(),
                signal = spike.signal.as_str(),
                "spike ended: detection was turned off"
            );
            if let Some(w) = &self.webhook {
                w.resolved(&spike);
            }
            book.ended.push_front(spike);
        }
        book.ended.truncate(self.history);
        *families.retired.lock().expect("spike history lock") = book.ended.clone();
    }

    /// Whether `config` has the routes (by name, consumer tracking on or off) and
    /// signals (by codes), in order, that these counters are laid out for.
    fn counts_like(&self, config: &Config) -> bool {
        self.route_names.len() == config.routes.len()
            && self.signals.len() == config.signals.len()
            && config
                .routes
                .iter()
                .zip(&self.route_names)
                .zip(&self.counters.routes)
                .all(|((r, name), counters)| {
                    r.name == *name && r.consumer.is_some() == counters.identifies
                })
            && config
                .signals
                .iter()
                .zip(&self.signals)
                .all(|(a, b)| a.codes == b.codes)
    }

    /// The hot-path side, for the observer.
    pub fn sink(&self) -> Arc<dyn Sink> {
        self.counters.clone()
    }

    /// Seconds on a monotonic clock anchored to the Unix epoch at start-up: the
    /// timestamp the ticker passes to [`Detection::tick`].
    pub fn now(&self) -> u64 {
        self.origin_unix + self.origin.elapsed().as_secs()
    }

    /// Swaps out the last second's counts and feeds every detector.
    pub fn tick(&self, now: u64) {
        let mut guard = self.keys.lock().expect("detector lock");
        let (keys, totals) = &mut *guard;
        let last = self.last_tick.swap(now, Ordering::Relaxed);
        let (seconds, halvings) = match last {
            0 => (1, u64::from(now % 10 == 0)),
            last => (
                now.saturating_sub(last),
                (now / 10).saturating_sub(last / 10),
            ),
        };
        // 0.933^10 ≈ 0.5: a 10 s half-life, per second passed.
        let recent_decay = 0.933f64.powi(seconds.min(1_000) as i32);
        // The consumer tallies halve at each 10 s boundary passed: they follow the last
        // ~20 s, the scale of the windows that fire.
        let consumer_decay = 0.5f64.powi(halvings.min(100) as i32);
        for (slot, r) in totals.iter_mut().zip(&self.counters.routes) {
            *slot = r.total.swap(0, Ordering::Relaxed);
        }
        for key in keys.iter_mut() {
            let rc = &self.counters.routes[key.route];
            let n = totals[key.route];
            let k = rc.matched[key.signal].swap(0, Ordering::Relaxed) + key.carry;
            key.carry = k.saturating_sub(n);
            let k = k - key.carry;
            for v in key.recent.iter_mut() {
                *v *= recent_decay;
            }
            if k > 0 {
                for (slot, c) in rc.by_code[key.signal].iter().enumerate() {
                    key.recent[slot] += c.swap(0, Ordering::Relaxed) as f64;
                }
            }
            if halvings > 0 {
                if let Ok(mut top) = rc.consumers[key.signal].lock() {
                    top.decay(consumer_decay);
                }
            }
            if let Some(t) = key.detector.observe(now, n, k) {
                self.report(key, t);
            }
        }
    }

    fn report(&self, key: &mut Key, t: Transition) {
        // The detector's `now` is monotonic (it must never go back); what people and
        // Alertmanager read is the wall clock, one clock for every timestamp they see.
        let now = unix_now();
        let signal = &self.signals[key.signal];
        let route = &self.route_names[key.route];
        let dominant = key
            .recent
            .iter()
            .enumerate()
            .filter(|(_, &v)| v > 0.0)
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| signal.codes[i]);
        let meaning = dominant
            .and_then(status::lookup)
            .map(|i| format!("{} {}: {}", i.code, i.reason, i.meaning))
            .unwrap_or_default();
        let mut book = self.book.lock().expect("spike book lock");
        match t {
            Transition::Started(st) => {
                let what = match dominant {
                    Some(c) if signal.codes.len() == 1 => format!("{c}s"),
                    _ => format!("{} responses", signal.name),
                };
                let (attribution, top_consumers) =
                    match self.counters.routes[key.route].consumers[key.signal].lock() {
                        Ok(top) => (
                            crate::consumer::attribution(&top, &what, 0.5).map(|(_, _, text)| text),
                            top.top(5)
                                .into_iter()
                                .map(|(id, count, error)| TopConsumer {
                                    consumer: id.to_string(),
                                    share: (count - error) as f64 / top.total().max(1) as f64,
                                })
                                .collect(),
                        ),
                        Err(_) => (None, Vec::new()),
                    };
                let spike = Spike {
                    route: route.clone(),
                    signal: signal.name.clone(),
                    started_at: now,
                    ended_at: None,
                    observed_ratio: st.ratio,
                    baseline_ratio: st.baseline,
                    window_seconds: st.window_secs,
                    requests: st.n,
                    matched: st.k,
                    episode_requests: None,
                    episode_matched: None,
                    dominant_code: dominant,
                    meaning,
                    severity: signal.severity.clone(),
                    attribution,
                    top_consumers,
                };
                tracing::warn!(
                    target: "statuslens::spike",
                    route = route.as_str(),
                    signal = signal.name.as_str(),
                    ratio = st.ratio,
                    baseline = st.baseline,
                    window_seconds = st.window_secs,
                    requests = st.n,
                    matched = st.k,
                    dominant_code = dominant,
                    meaning = spike.meaning.as_str(),
                    attribution = spike.attribution.as_deref(),
                    "spike started: {} of {} responses on route {} are {} (baseline {:.2}%) — {}{}",
                    st.k, st.n, route, signal.name, st.baseline * 100.0, spike.meaning,
                    spike.attribution.as_deref().map(|a| format!("; {a}")).unwrap_or_default()
                );
                key.gauge.set(1);
                key.total.inc();
                if let Some(w) = &self.webhook {
                    w.firing(&spike);
                }
                book.active.push(spike);
            }
            Transition::Ended(st) => {
                key.gauge.set(0);
                let idx = book
                    .active
                    .iter()
                    .position(|s| s.route == *route && s.signal == signal.name);
                let mut spike = match idx {
                    Some(i) => book.active.remove(i),
                    None => return,
                };
                spike.ended_at = Some(now);
                // The detector totals the episode at its end; the start's window counts
                // say only how it began.
                spike.episode_requests = Some(st.n);
                spike.episode_matched = Some(st.k);
                tracing::warn!(
                    target: "statuslens::spike",
                    route = route.as_str(),
                    signal = signal.name.as_str(),
                    ratio = st.ratio,
                    baseline = st.baseline,
                    duration_seconds = now.saturating_sub(spike.started_at),
                    "spike ended: {} on route {} is back near its baseline",
                    signal.name, route
                );
                if let Some(w) = &self.webhook {
                    w.resolved(&spike);
                }
                book.ended.push_front(spike);
                book.ended.truncate(self.history);
            }
        }
    }

    /// JSON for `/api/spikes`: active spikes and the most recent ended ones, newest first.
    pub fn spikes_json(&self) -> serde_json::Value {
        let book = self.book.lock().expect("spike book lock");
        serde_json::json!({
            "active": book.active,
            "recent": book.ended,
        })
    }

    /// Per route and signal: current window ratios and baseline, for `/api/status`.
    pub fn route_signals(&self, route: &str) -> serde_json::Map<String, serde_json::Value> {
        let guard = self.keys.lock().expect("detector lock");
        let mut out = serde_json::Map::new();
        for k in guard
            .0
            .iter()
            .filter(|k| self.route_names[k.route] == route)
        {
            let s = k.detector.snapshot();
            out.insert(
                self.signals[k.signal].name.clone(),
                serde_json::json!({
                    "active": s.active,
                    "baseline": s.baseline,
                    "ratio_10s": s.ratio_10s,
                    "ratio_1m": s.ratio_1m,
                    "ratio_10m": s.ratio_10m,
                }),
            );
        }
        out
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn config(text: &str) -> Config {
        Config::parse(text, "test.toml", &Overrides::default()).expect("valid config")
    }

    #[test]
    fn a_signal_of_several_classes_counts_each_code_in_its_own_slot() {
        // 400 codes: past 256, a u8 slot wrapped (500 counted as code 144's slot).
        let c = config(
            "[[signals]]\nname='any'\ncodes=['1xx','3xx','4xx','5xx']\n[[routes]]\nname='a'\nupstream='http://x'\n",
        );
        let counters = Counters::new(&c);
        counters.observe(0, 500, None);
        counters.observe(0, 502, None);
        counters.observe(0, 502, None);
        let by_code = &counters.routes[0].by_code[0];
        let at = |code: u16| c.signals[0].codes.iter().position(|&x| x == code).unwrap();
        assert_eq!(by_code[at(500)].load(Ordering::Relaxed), 1);
        assert_eq!(by_code[at(502)].load(Ordering::Relaxed), 2);
        let all: u64 = by_code.iter().map(|a| a.load(Ordering::Relaxed)).sum();
        assert_eq!(all, 3);
    }

    #[test]
    fn anonymous_matches_count_in_the_share_of_a_named_consumer() {
        let c = config("[[routes]]\nname='a'\nupstream='http://x'\nconsumer='header:X-Api-Key'\n");
        let counters = Counters::new(&c);
        let who = crate::consumer::ConsumerId(0x7f3a_09c1);
        // 5 401s from one key, 15 with no key at all: that key is a quarter of them.
        for _ in 0..5 {
            counters.observe(0, 401, Some(who));
        }
        for _ in 0..15 {
            counters.observe(0, 401, None);
        }
        let unauthorized = c
            .signals
            .iter()
            .position(|s| s.name == "unauthorized")
            .unwrap();
        let top = counters.routes[0].consumers[unauthorized].lock().unwrap();
        assert_eq!(top.total(), 20);
        assert!(crate::consumer::attribution(&top, "401s", 0.5).is_none());
        assert_eq!(top.top(1)[0].1, 5);
    }

    #[test]
    fn consumer_tallies_halve_per_ten_seconds_passed_not_per_tick() {
        let c = config("[[routes]]\nname='a'\nupstream='http://x'\nconsumer='header:X-Api-Key'\n");
        let registry = prometheus::Registry::new();
        let d = Detection::new(&c, &registry);
        let unauthorized = c
            .signals
            .iter()
            .position(|s| s.name == "unauthorized")
            .unwrap();
        let who = crate::consumer::ConsumerId(7);
        for _ in 0..64 {
            d.counters.observe(0, 401, Some(who));
        }
        let tally = || {
            let top = d.counters.routes[0].consumers[unauthorized].lock().unwrap();
            top.top(1).first().map_or(0, |e| e.1)
        };
        d.tick(1_001);
        assert_eq!(tally(), 64);
        // The tick of second 1_010 never came (a reload held the lock): the boundary
        // passed all the same.
        d.tick(1_011);
        assert_eq!(tally(), 32);
        // A second ticked twice halves nothing twice.
        d.tick(1_020);
        d.tick(1_020);
        assert_eq!(tally(), 16);
        // Half a minute without ticks: three boundaries.
        d.tick(1_050);
        assert_eq!(tally(), 2);
    }

    #[test]
    fn requests_in_flight_across_a_reload_reach_the_new_detectors() {
        // They report to the generation they started in; with the same routes and
        // signals it shares its counters with the next, which the ticker reads.
        let text = "[[routes]]\nname='a'\nupstream='http://x'\n";
        let c = config(text);
        let families = SpikeFamilies::register(&Registry::new());
        let old = Detection::build(&c, &families, None, None);
        let new = Detection::build(&config(text), &families, None, Some(&old));
        old.sink().observe(0, 503, None);
        new.tick(1_000);
        let counted = new
            .keys
            .lock()
            .unwrap()
            .0
            .iter()
            .all(|k| k.detector.snapshot().n_1m == 1);
        assert!(counted);
        // Another route layout gets counters of its own.
        let other = config(&format!(
            "{text}[[routes]]\nname='b'\nupstream='http://y'\nmatch={{path_prefix='/b/'}}\n"
        ));
        let rebuilt = Detection::build(&other, &families, None, Some(&new));
        assert!(!Arc::ptr_eq(&rebuilt.counters, &new.counters));
    }

    #[test]
    fn new_thresholds_on_reload_keep_what_the_detector_learnt() {
        // A reload that tunes thresholds (during an incident, say) built fresh
        // detectors: an hour of baseline gone, the active spike resolved and fired
        // again as a new one.
        let route = "[[routes]]\nname='a'\nupstream='http://x'\n";
        let families = SpikeFamilies::register(&Registry::new());
        let old = Detection::build(&config(route), &families, None, None);
        for _ in 0..20 {
            old.sink().observe(0, 503, None);
        }
        old.tick(1_000);
        let active = |d: &Detection| {
            d.keys
                .lock()
                .unwrap()
                .0
                .iter()
                .filter(|k| k.detector.is_active())
                .map(|k| (k.detector.snapshot().n_1m, k.detector.config().p_value))
                .collect::<Vec<_>>()
        };
        assert_eq!(active(&old), [(20, 1e-6)]);
        let tuned = config(&format!("[detection]\np_value = 1e-9\n{route}"));
        let new = Detection::build(&tuned, &families, None, Some(&old));
        assert_eq!(active(&new), [(20, 1e-9)]);
        let started = families
            .total
            .with_label_values(&["a", "server_error"])
            .get();
        assert_eq!(started, 1, "the spike was counted once, not started again");
    }

    #[test]
    fn a_match_ticked_before_its_total_is_carried_not_lost() {
        let c = config("[[routes]]\nname='a'\nupstream='http://x'\n");
        let registry = Registry::new();
        let d = Detection::new(&c, &registry);
        let server_error = c
            .signals
            .iter()
            .position(|s| s.name == "server_error")
            .unwrap();
        // A request ending between the tick's two swaps: its match is in this second,
        // its total in the next.
        d.counters.routes[0].matched[server_error].fetch_add(1, Ordering::Relaxed);
        d.tick(1_000);
        d.counters.routes[0].total.fetch_add(1, Ordering::Relaxed);
        d.tick(1_001);
        let keys = d.keys.lock().unwrap();
        let key = keys.0.iter().find(|k| k.signal == server_error).unwrap();
        assert_eq!(key.carry, 0);
        let snapshot = key.detector.snapshot();
        assert_eq!((snapshot.n_1m, snapshot.k_1m), (1, 1), "{snapshot:?}");
    }
}

//! One configuration's worth of running state, and swapping it on reload.
//!
//! A [`Generation`] is everything built from one `Config`: the route table and upstream
//! clients, the per-route metric handles, the detectors. The process keeps one current
//! generation in an `ArcSwap`; each request loads it once (lock-free) and keeps it to
//! the end, so a reload never disturbs a request in flight. What must outlive any one
//! configuration — the registered metric families, the spike families and the webhook
//! queue — lives in [`Shared`]; new handles point into the same series, so counters
//! carry on across reloads.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::core::Collector;
use prometheus::{Gauge, IntGauge, Registry};

use crate::access_log::AccessLog;
use crate::config::{Config, Overrides};
use crate::detect::{webhook::Webhook, Detection, SpikeFamilies};
use crate::forward::Proxy;
use crate::metrics::{Families, Metrics};
use crate::observe::Observer;

/// Process-wide state that every generation shares.
pub struct Shared {
    /// Registered metric families.
    pub families: Arc<Families>,
    spikes: SpikeFamilies,
    webhook: Option<Arc<Webhook>>,
    /// Set once on shutdown, seen by every generation (see `Proxy::start_draining`).
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// Requests in flight, whichever generation they run on (see `Observer::in_flight`).
    in_flight: Arc<AtomicU64>,
    loads: LoadMetrics,
}

/// How the configuration's loads went, in the gauges Prometheus and Alertmanager keep of
/// their own (`prometheus_config_last_reload_*`), so the same alert shape fits; and when
/// the listener's certificate expires, which a reload may change.
struct LoadMetrics {
    successful: IntGauge,
    success_time: Gauge,
    /// `proxy.max_connections` in effect, next to `statuslens_connections_open`.
    connections_limit: IntGauge,
    /// Registered only for a TLS listener (which stays one across reloads).
    certificate_expiry: Option<Gauge>,
}

impl LoadMetrics {
    fn register(registry: &Registry, tls: bool) -> LoadMetrics {
        let successful = IntGauge::new(
            "statuslens_config_last_reload_successful",
            "1 if the last configuration load (start-up or reload) took, 0 if the last reload was rejected (the previous configuration stays in effect).",
        )
        .expect("valid metric");
        let success_time = Gauge::new(
            "statuslens_config_last_reload_success_timestamp_seconds",
            "When a configuration last took (start-up or reload), Unix seconds.",
        )
        .expect("valid metric");
        let connections_limit = IntGauge::new(
            "statuslens_connections_limit",
            "proxy.max_connections in effect: client connections opened past it get 503 and are closed (compare statuslens_connections_open).",
        )
        .expect("valid metric");
        let certificate_expiry = tls.then(|| {
            Gauge::new(
                "statuslens_tls_certificate_expiry_timestamp_seconds",
                "When the proxy listener's certificate (the first in proxy.tls.cert_file) expires, its notAfter in Unix seconds; a reload that reads rotated files moves it.",
            )
            .expect("valid metric")
        });
        let register =
            |g: Box<dyn Collector>| registry.register(g).expect("metric names are unique");
        register(Box::new(successful.clone()));
        register(Box::new(success_time.clone()));
        register(Box::new(connections_limit.clone()));
        if let Some(g) = &certificate_expiry {
            register(Box::new(g.clone()));
        }
        LoadMetrics {
            successful,
            success_time,
            connections_limit,
            certificate_expiry,
        }
    }

    /// `config` took (at start-up, or by a reload).
    fn took(&self, config: &Config) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.successful.set(1);
        self.success_time.set(now.as_secs_f64());
        self.connections_limit
            .set(i64::try_from(config.proxy.max_connections).unwrap_or(i64::MAX));
        if let (Some(gauge), Some(identity)) = (&self.certificate_expiry, &config.proxy.tls) {
            gauge.set(identity.not_after as f64);
            if identity.not_after <= now.as_secs() as i64 {
                tracing::warn!(
                    cert_file = %identity.cert_file.display(),
                    not_after = identity.not_after,
                    "the TLS listener's certificate has expired: clients will refuse it"
                );
            }
        }
    }

    /// A reload was rejected.
    fn rejected(&self) {
        self.successful.set(0);
    }
}

/// The running state built from one configuration.
pub struct Generation {
    /// The configuration it was built from.
    pub config: Config,
    /// The forwarding service (its observer holds the per-route metric handles).
    pub proxy: Arc<Proxy>,
    /// Spike detection, when enabled.
    pub detection: Option<Arc<Detection>>,
}

impl Generation {
    /// Builds a generation; with `previous`, detectors that did not change carry over.
    pub fn build(config: Config, shared: &Shared, previous: Option<&Generation>) -> Generation {
        let route_names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        let routes: Vec<(&str, &str)> = config
            .routes
            .iter()
            .map(|r| (r.name.as_str(), r.upstream.as_str()))
            .collect();
        let metrics = Arc::new(Metrics::with_families(shared.families.clone(), &routes));
        if !config.detection.enabled {
            if let Some(old) = previous.and_then(|p| p.detection.as_deref()) {
                old.end_all(&shared.spikes);
            }
        }
        let detection = config.detection.enabled.then(|| {
            Detection::build(
                &config,
                &shared.spikes,
                shared.webhook.clone(),
                previous.and_then(|p| p.detection.as_deref()),
            )
        });
        let observer = Arc::new(Observer {
            metrics: metrics.clone(),
            log: AccessLog::new(config.access_log.volume),
            route_names: route_names
                .iter()
                .map(|s| s.to_string())
                .chain(std::iter::once("unmatched".to_string()))
                .collect(),
            upstreams: config
                .routes
                .iter()
                .map(|r| r.upstream.clone())
                .chain(std::iter::once(String::new()))
                .collect(),
            sink: detection.as_ref().map(|d| d.sink()),
            in_flight: shared.in_flight.clone(),
        });
        let proxy = Arc::new(Proxy::new(&config, observer, shared.draining.clone()));
        Generation {
            config,
            proxy,
            detection,
        }
    }
}

/// The current generation, and how to make the next one.
pub struct Live {
    current: ArcSwap<Generation>,
    shared: Shared,
    /// The file and flags the configuration came from, when there is a file.
    source: Option<(PathBuf, Overrides)>,
    /// Held by a reload from copying the detectors to swapping the generation, and by
    /// each detector tick: a tick in between would report a spike the new generation
    /// never hears of (and then reports again).
    detecting: std::sync::Mutex<()>,
    /// Held by a reload from reading the file to recording the outcome: a SIGHUP and a
    /// `POST /api/reload` at once must not let the earlier read (an older certificate)
    /// be swapped in last, nor the gauges tell of the other one.
    reloading: std::sync::Mutex<()>,
}

impl Live {
    /// The first generation.
    pub fn new(config: Config, source: Option<(PathBuf, Overrides)>) -> Live {
        let families = Families::new();
        let spikes = SpikeFamilies::register(families.registry());
        let webhook = config
            .detection
            .webhook
            .clone()
            .map(|url| Arc::new(Webhook::start(url, config.detection.instance.clone())));
        let loads = LoadMetrics::register(families.registry(), config.proxy.tls.is_some());
        loads.took(&config);
        let shared = Shared {
            families,
            spikes,
            webhook,
            draining: Arc::default(),
            in_flight: Arc::default(),
            loads,
        };
        let first = Generation::build(config, &shared, None);
        Live {
            current: ArcSwap::from_pointee(first),
            shared,
            source,
            detecting: std::sync::Mutex::new(()),
            reloading: std::sync::Mutex::new(()),
        }
    }

    /// The current generation; hold it for the whole request.
    pub fn load(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// `/api/spikes`: the current detection's spikes, or (detection off) the history it
    /// had when a reload turned it off.
    pub fn spikes_json(&self) -> serde_json::Value {
        match &self.load().detection {
            Some(d) => d.spikes_json(),
            None => self.shared.spikes.retired_json(),
        }
    }

    /// The process-wide metric families.
    pub fn families(&self) -> &Arc<Families> {
        &self.shared.families
    }

    /// Re-reads the config file and swaps in a new generation. On any error the
    /// current generation stays, and the error says what is wrong.
    pub fn reload(&self) -> Result<usize, String> {
        let Some((path, overrides)) = &self.source else {
            return Err("nothing to reload: statuslens was started without --config".into());
        };
        let _reloading = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = self.swap(path, overrides);
        match &outcome {
            Ok(_) => self.shared.loads.took(&self.load().config),
            Err(_) => self.shared.loads.rejected(),
        }
        outcome
    }

    /// Loads the file at `path` and, if it is good, makes it the current generation.
    fn swap(&self, path: &Path, overrides: &Overrides) -> Result<usize, String> {
        let mut config = Config::load(path, overrides).map_err(|e| e.to_string())?;
        let old = self.load();
        config.keep_machine_defaults(&old.config);
        // Listeners, the webhook task, the log's format and hyper's header clock are built
        // once; changing them needs a restart.
        // A listener speaks TLS or not for good; its certificate is this config's.
        let fixed = [
            (
                "proxy.listen",
                config.proxy.listen != old.config.proxy.listen,
            ),
            (
                "admin.listen",
                config.admin_listen != old.config.admin_listen,
            ),
            (
                "proxy.tls",
                config.proxy.tls.is_some() != old.config.proxy.tls.is_some(),
            ),
            (
                "proxy.workers",
                config.proxy.workers != old.config.proxy.workers,
            ),
            (
                "detection.webhook",
                config.detection.webhook != old.config.detection.webhook,
            ),
            (
                "detection.instance",
                config.detection.instance != old.config.detection.instance,
            ),
            // The log's subscriber is installed once, at start-up.
            (
                "access_log.format",
                config.access_log.format != old.config.access_log.format,
            ),
            // hyper's connection builders, the TLS and PROXY-header waits take it once.
            (
                "proxy.header_read_timeout",
                config.proxy.header_read_timeout != old.config.proxy.header_read_timeout,
            ),
        ];
        if let Some((field, _)) = fixed.iter().find(|(_, changed)| *changed) {
            return Err(format!(
                "{}: {field} cannot change on reload; restart statuslens to apply it",
                path.display()
            ));
        }
        let routes = config.routes.len();
        let _detecting = self.detecting.lock().unwrap_or_else(|e| e.into_inner());
        // Reloads are serialised here: build on whatever is current now.
        let old = self.load();
        let next = Generation::build(config, &self.shared, Some(&old));
        self.current.store(Arc::new(next));
        // Requests of the old generation still running (a stream may last hours) keep
        // it alive; the connections they give back must not sit in pools nobody sweeps.
        old.proxy.retire_fast_pools();
        Ok(routes)
    }

    /// Feeds the last second to the current detectors. Skipped while a reload is
    /// swapping them (the counts wait in the counters for the next tick): the ticker
    /// shares its thread with the admin API and must not block on a reload.
    pub fn tick_detection(&self) {
        let Ok(_detecting) = self.detecting.try_lock() else {
            return;
        };
        if let Some(d) = &self.load().detection {
            d.tick(d.now());
        }
    }

    /// Reloads and logs the outcome; the HTTP and signal triggers share it.
    pub fn reload_and_log(&self, trigger: &str) -> Result<usize, String> {
        let outcome = self.reload();
        match &outcome {
            Ok(routes) => tracing::info!(trigger, routes, "configuration reloaded"),
            Err(error) => tracing::error!(
                trigger,
                error = error.as_str(),
                "configuration reload rejected; the previous configuration stays in effect"
            ),
        }
        outcome
    }
}

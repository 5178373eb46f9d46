//! Configuration: the TOML file and command-line flags become one validated [`Config`].
//!
//! Parsing happens in two steps. Serde turns the file into the raw `File*` structs
//! (unknown fields are errors, and `serde_path_to_error` names the field path of any
//! type error). `validate` then turns raw values into typed ones, again naming the
//! field path (`routes[1].upstream`) of anything wrong, so every message a user sees
//! says where to look.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme, Uri};
use serde::Deserialize;

use crate::detect::detector::DetectorConfig;
use crate::duration;
use crate::trusted::TrustedProxies;

/// Default proxy listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin listener: loopback, clear of Prometheus (9090) and Grafana (3000).
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9464";
/// Default upstream response-head timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// nginx's `proxy_read_timeout`: long enough for any response that is still moving,
/// short enough that a stalled upstream does not hold a client for ever.
const DEFAULT_RESPONSE_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// HAProxy's `timeout tunnel` as commonly set, Envoy's connection idle timeout.
const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Envoy's default is 60 KiB, nginx's 4–8 KiB: a head this large is already a fault
/// somewhere (a cookie jar gone wild), and HTTP/2 clients refuse much larger ones.
const DEFAULT_MAX_RESPONSE_HEADER_BYTES: usize = 64 * 1024;
/// `routes[].max_response_header_bytes`' range: room for a status line and a few fields
/// (nginx's smallest common setting is 4 KiB) up to where clients give up: over HTTP/2,
/// curl and h2load dropped a 200 KB head (100 KB went through).
const RESPONSE_HEADER_BYTES: std::ops::RangeInclusive<usize> = 1024..=256 * 1024;
/// `proxy.max_header_bytes`' range: below 1 KiB ordinary requests (a browser's, an SDK's
/// with a bearer token) get 431; Envoy's ceiling is 8 MiB, and hyper buffers up to it
/// per connection.
const REQUEST_HEADER_BYTES: std::ops::RangeInclusive<usize> = 1024..=8 * 1024 * 1024;
/// `proxy.max_headers`' range: hyper's HTTP/1.1 parser is given `max_headers` + 100
/// slots, allocated per request past its default of 100.
const REQUEST_HEADERS: std::ops::RangeInclusive<usize> = 1..=1000;
/// `proxy.max_uri_bytes`' range: RFC 9112 asks for at least 8000 octets of request line;
/// below 256 ordinary API paths with a query get 414.
const REQUEST_URI_BYTES: std::ops::RangeInclusive<usize> = 256..=1024 * 1024;
/// Most worker threads `proxy.workers` accepts.
pub const MAX_WORKERS: usize = 1024;
/// Most ended spikes `detection.history` may keep for `/api/spikes`.
pub const MAX_HISTORY: usize = 10_000;

/// A configuration error: where it is and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config file: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a field has the wrong type or name.
    #[error("{origin}: {field}: {message}")]
    Field {
        /// File name, or `flags` for command-line values.
        origin: String,
        /// Field path such as `routes[1].upstream`.
        field: String,
        /// What was expected.
        message: String,
    },
}

fn field_err(origin: &str, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        origin: origin.to_string(),
        field: field.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------- raw file format

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    proxy: FileProxy,
    #[serde(default)]
    admin: FileAdmin,
    #[serde(default)]
    access_log: FileAccessLog,
    #[serde(default)]
    signals: Option<Vec<FileSignal>>,
    #[serde(default)]
    detection: FileDetection,
    #[serde(default)]
    routes: Vec<FileRoute>,
}

impl FileConfig {
    /// Makes the file's relative paths relative to `dir`, its own directory, as Prometheus
    /// does with its rule files: the same file names the same files whatever the working
    /// directory of whoever reads it (a service manager, `statuslens check` run elsewhere).
    fn anchor(&mut self, dir: &Path) {
        let at = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        if let Some(tls) = &mut self.proxy.tls {
            at(&mut tls.cert_file);
            at(&mut tls.key_file);
        }
        if let Some(p) = &mut self.admin.token_file {
            at(p);
        }
        for route in &mut self.routes {
            if let Some(p) = &mut route.ca_file {
                at(p);
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProxy {
    listen: Option<String>,
    #[serde(default, deserialize_with = "duration::serde_str::option")]
    drain_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::serde_str::option")]
    header_read_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::serde_str::option")]
    body_read_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::serde_str::option")]
    send_timeout: Option<Duration>,
    max_header_bytes: Option<usize>,
    max_headers: Option<usize>,
    max_uri_bytes: Option<usize>,
    max_connections: Option<usize>,
    max_in_flight: Option<usize>,
    workers: Option<usize>,
    fast_path: Option<bool>,
    tls: Option<FileTls>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    proxy_protocol: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert_file: PathBuf,
    key_file: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    listen: Option<String>,
    reload: Option<bool>,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAccessLog {
    volume: Option<String>,
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSignal {
    name: String,
    codes: Vec<String>,
    severity: Option<String>,
    #[serde(flatten)]
    thresholds: FileThresholds,
}

/// `FileThresholds`' fields, and the own fields of the tables that take them flattened
/// in: serde reports an unknown field there without these (see `flattened_unknown`).
const THRESHOLD_FIELDS: [&str; 8] = [
    "min_events",
    "min_ratio",
    "min_factor",
    "p_value",
    "baseline_half_life",
    "prior_ratio",
    "prior_weight",
    "clear_after",
];
const DETECTION_FIELDS: [&str; 4] = ["enabled", "webhook", "instance", "history"];
const SIGNAL_FIELDS: [&str; 3] = ["name", "codes", "severity"];

/// An unknown field of `[detection]` or a `[[signals]]` entry said as serde says it of
/// every other table: the key in the field path, the fields accepted, the key's line.
/// (Through `#[serde(flatten)]` serde reports only the table, from its first line.)
fn flattened_unknown(text: &str, field: &str, msg: &str, from: usize) -> Option<(String, String)> {
    let own: &[&str] = match field {
        "detection" => &DETECTION_FIELDS,
        f if f.starts_with("signals[") && !f.contains('.') => &SIGNAL_FIELDS,
        _ => return None,
    };
    let key = msg.strip_prefix("unknown field `")?.strip_suffix('`')?;
    let expected: Vec<String> = own
        .iter()
        .chain(&THRESHOLD_FIELDS)
        .map(|f| format!("`{f}`"))
        .collect();
    let at = key_offset(text, key, from).unwrap_or(from);
    let line = 1 + text[..at].matches('\n').count();
    Some((
        format!("{field}.{key}"),
        format!(
            "unknown field `{key}`, expected one of {} (line {line})",
            expected.join(", ")
        ),
    ))
}

/// A threshold of `[detection]` or a `[[signals]]` entry with the wrong type or value,
/// named as serde names it in every other table: the table's thresholds are read again
/// on their own, where serde can follow the field, and the key's line is found.
fn flattened_invalid(text: &str, field: &str, from: usize) -> Option<(String, String)> {
    let file: toml::Table = text.parse().ok()?;
    let (own, table): (&[&str], _) = if field == "detection" {
        (&DETECTION_FIELDS, file.get("detection")?)
    } else {
        let i: usize = field
            .strip_prefix("signals[")?
            .strip_suffix(']')?
            .parse()
            .ok()?;
        (&SIGNAL_FIELDS, file.get("signals")?.as_array()?.get(i)?)
    };
    let mut thresholds = table.as_table()?.clone();
    thresholds.retain(|k, _| !own.contains(&k));
    let err = serde_path_to_error::deserialize::<_, FileThresholds>(toml::Value::Table(thresholds))
        .err()?;
    let key = err.path().to_string();
    let msg = err.into_inner().message().trim().to_string();
    let at = key_offset(text, &key, from).unwrap_or(from);
    let line = 1 + text[..at].matches('\n').count();
    Some((format!("{field}.{key}"), format!("{msg} (line {line})")))
}

/// Where `key =` is first written, as a bare key, at or after `from`.
fn key_offset(text: &str, key: &str, from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(pos) = text.get(i..)?.find(key) {
        let at = i + pos;
        // A key begins its line or follows `{` or `,` (an inline table); not in a comment,
        // not inside another key or a value.
        let line = &text[text[..at].rfind('\n').map_or(0, |n| n + 1)..at];
        let led = line.trim_end_matches([' ', '\t']);
        let after = text[at + key.len()..].trim_start_matches([' ', '\t']);
        let placed = led.is_empty() || (!line.contains('#') && led.ends_with(['{', ',']));
        if placed && after.starts_with('=') {
            return Some(at);
        }
        i = at + key.len();
    }
    None
}

/// Detector thresholds; any level (detection, signal, route) may set any of them.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileThresholds {
    min_events: Option<u64>,
    min_ratio: Option<f64>,
    min_factor: Option<f64>,
    p_value: Option<f64>,
    #[serde(default, deserialize_with = "duration::serde_str::option")]
    baseline_half_life: Option<Duration>,
    prior_ratio: Option<f64>,
    prior_weight: Option<f64>,
    #[serde(default, deserialize_with = "duration::serde_str::option")]
    clear_after: Option<Duration>,
}

impl FileThresholds {
    /// Fields set here win over `base`; Err names a field (key, message) that cannot be
    /// taken as written.
    fn apply(&self, base: &mut DetectorConfig) -> Result<(), (&'static str, String)> {
        if let Some(v) = self.min_events {
            base.min_events = v;
        }
        if let Some(v) = self.min_ratio {
            base.min_ratio = v;
        }
        if let Some(v) = self.min_factor {
            base.min_factor = v;
        }
        if let Some(v) = self.p_value {
            base.p_value = v;
        }
        if let Some(v) = self.baseline_half_life {
            base.baseline_half_life_secs = v.as_secs_f64();
        }
        if let Some(v) = self.prior_ratio {
            base.prior_ratio = v;
        }
        if let Some(v) = self.prior_weight {
            base.prior_weight = v;
        }
        if let Some(v) = self.clear_after {
            // The detector ticks once a second: anything else would be silently rounded.
            if v.is_zero() || v.subsec_nanos() != 0 {
                return Err((
                    "clear_after",
                    format!("{v:?} is not a whole number of seconds of at least 1 (the detector ticks once a second)"),
                ));
            }
            base.clear_after_secs = v.as_secs();
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDetection {
    enabled: Option<bool>,
    webhook: Option<String>,
    instance: Option<String>,
    history: Option<usize>,
    #[serde(flatten)]
    thresholds: FileThresholds,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    name: String,
    #[serde(rename = "match", default)]
    matcher: FileMatch,
    upstream: String,
    #[serde(default, deserialize_with = "duration::serde_str::option")]
    timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::serde_str::option")]
    connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::serde_str::option")]
    idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::serde_str::option")]
    response_body_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::serde_str::option")]
    tunnel_idle_timeout: Option<Duration>,
    max_response_header_bytes: Option<usize>,
    max_body_bytes: Option<u64>,
    max_in_flight: Option<usize>,
    host_header: Option<String>,
    consumer: Option<String>,
    ca_file: Option<PathBuf>,
    /// Per-signal threshold overrides for this route: `detect.unauthorized.min_ratio`.
    #[serde(default)]
    detect: std::collections::BTreeMap<String, FileThresholds>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMatch {
    host: Option<String>,
    path_prefix: Option<String>,
}

// ---------------------------------------------------------------- validated config

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Proxy listener and its limits.
    pub proxy: ProxyConfig,
    /// Admin listener address.
    pub admin_listen: SocketAddr,
    /// Bearer token the admin API requires (all paths but /healthz and /readyz).
    pub admin_token: Option<String>,
    /// Whether `POST /api/reload` may reload the configuration.
    pub admin_reload: bool,
    /// Access log settings.
    pub access_log: AccessLogConfig,
    /// Watched signals (sets of codes), in order.
    pub signals: Vec<Signal>,
    /// Spike detection settings.
    pub detection: DetectionConfig,
    /// Routes, in file order.
    pub routes: Vec<RouteConfig>,
    /// Settings left to a default read off the machine, which may read differently
    /// later (see [`Config::keep_machine_defaults`]).
    machine_defaults: MachineDefaults,
}

/// Which settings took a default read off the machine: the core count
/// (`proxy.workers`) and the host name (`detection.instance`).
#[derive(Debug, Clone, Copy, Default)]
struct MachineDefaults {
    workers: bool,
    instance: bool,
}

impl Config {
    /// For a reload: settings the file leaves to the machine keep the values `running`
    /// has, so a changed CPU quota or host name alone does not make the file's reload
    /// look like a change to a setting built once (which is refused).
    pub fn keep_machine_defaults(&mut self, running: &Config) {
        if self.machine_defaults.workers {
            self.proxy.workers = running.proxy.workers;
        }
        if self.machine_defaults.instance {
            self.detection.instance = running.detection.instance.clone();
        }
    }
}

/// Proxy listener settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// How long a client may take to send a request head (slowloris guard); also how
    /// long an idle keep-alive connection is kept.
    pub header_read_timeout: Duration,
    /// How long a client may pause mid-body before the request gets 408.
    pub body_read_timeout: Duration,
    /// How long a write of a response may wait for a client that takes nothing (HTTP/2:
    /// how long responses with data ready may go with no window granted).
    pub send_timeout: Duration,
    /// Largest request head (all header names and values) before answering 431.
    pub max_header_bytes: usize,
    /// Most request headers before answering 431.
    pub max_headers: usize,
    /// Longest request target before answering 414.
    pub max_uri_bytes: usize,
    /// Open client connections beyond which new ones get 503 and are closed.
    pub max_connections: usize,
    /// Requests in flight (all routes) beyond which new ones get 503.
    pub max_in_flight: usize,
    /// Worker threads, each with its own runtime, listener socket and upstream pools.
    pub workers: usize,
    /// Plain HTTP/1.1 requests skip hyper (see `fastpath`).
    pub fast_path: bool,
    /// The listener's certificate (read when this config was loaded) when it speaks TLS.
    pub tls: Option<crate::tls::ServerIdentity>,
    /// Load balancers whose `X-Forwarded-For` names the client (see `trusted`).
    pub trusted_proxies: TrustedProxies,
    /// Every connection begins with a PROXY protocol header naming its client (see
    /// `proxy_protocol`).
    pub proxy_protocol: bool,
}

/// How much the access log writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogVolume {
    /// Every request.
    All,
    /// Only responses that are not 2xx (and proxy errors).
    Errors,
    /// No per-request lines (spikes and proxy errors are still logged).
    Off,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Pretty,
}

/// Access log settings.
#[derive(Debug, Clone, Copy)]
pub struct AccessLogConfig {
    /// How much is logged.
    pub volume: LogVolume,
    /// Line format.
    pub format: LogFormat,
}

/// Spike detection settings.
#[derive(Debug, Clone)]
pub struct DetectionConfig {
    /// Whether detectors run at all.
    pub enabled: bool,
    /// Alertmanager v2 alerts URL to POST spikes to, if any.
    pub webhook: Option<Uri>,
    /// The `instance` label on webhook alerts.
    pub instance: String,
    /// How many ended spikes `/api/spikes` keeps.
    pub history: usize,
}

/// A named set of status codes whose share of responses is watched.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    /// The `signal` label.
    pub name: String,
    /// Sorted, deduplicated codes (a class like `5xx` expands to 500..=599).
    pub codes: Vec<u16>,
    /// The `severity` label of webhook alerts.
    pub severity: String,
    /// Detector thresholds for this signal (before per-route overrides).
    pub detector: DetectorConfig,
}

impl Signal {
    /// Whether `code` belongs to this signal.
    pub fn matches(&self, code: u16) -> bool {
        self.codes.binary_search(&code).is_ok()
    }
}

/// How the `Host` header reaches the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostHeader {
    /// Keep the client's Host (as Envoy and Traefik do by default).
    Preserve,
    /// Replace it with the upstream's authority (what nginx does by default).
    Upstream,
}

/// One route: what it matches and where it forwards.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// The `route` label.
    pub name: String,
    /// Lower-cased host to match (port stripped), if any.
    pub host: Option<String>,
    /// Path prefix to match (`/` if none given).
    pub path_prefix: String,
    /// The upstream's scheme.
    pub scheme: Scheme,
    /// The upstream's authority (host:port).
    pub authority: Authority,
    /// A path the upstream URL carries, prepended to every request path ("" if none).
    pub base_path: String,
    /// The upstream URL as written.
    pub upstream: String,
    /// Response-head timeout (504 when exceeded).
    pub timeout: Duration,
    /// TCP connect timeout (502 when exceeded).
    pub connect_timeout: Duration,
    /// How long an idle pooled upstream connection is kept.
    pub idle_timeout: Duration,
    /// Longest pause in the upstream's response body before the response is cut.
    pub response_body_timeout: Duration,
    /// How long an upgraded connection (WebSocket) may carry nothing either way.
    pub tunnel_idle_timeout: Duration,
    /// Largest upstream response head (status line and fields) accepted; 502 beyond.
    pub max_response_header_bytes: usize,
    /// Largest request body accepted (413 beyond), if limited.
    pub max_body_bytes: Option<u64>,
    /// Requests in flight on this route beyond which new ones get 503, if limited.
    pub max_in_flight: Option<usize>,
    /// Host header policy.
    pub host_header: HostHeader,
    /// Extra CA certificates (PEM) trusted for an https upstream, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// The TLS client configuration for an https upstream (the system's roots and
    /// `ca_file`'s), built when the file is loaded: a certificate the root store rejects
    /// is this field's config error, not a start-up or reload failure after it.
    pub upstream_tls: std::sync::Arc<rustls::ClientConfig>,
    /// How this route identifies consumers for spike attribution, if it does.
    pub consumer: Option<crate::consumer::IdentitySource>,
    /// Detector thresholds per signal, in `Config::signals` order, overrides applied.
    pub detectors: Vec<DetectorConfig>,
}

/// The built-in signals: 401s, 429s and 5xx, with default thresholds.
pub fn default_signals() -> Vec<Signal> {
    let signal = |name: &str, codes: Vec<u16>, severity: &str| Signal {
        name: name.into(),
        codes,
        severity: severity.into(),
        detector: DetectorConfig::default(),
    };
    vec![
        signal("unauthorized", vec![401], "warning"),
        signal("rate_limited", vec![429], "warning"),
        signal("server_error", (500..=599).collect(), "critical"),
    ]
}

/// Command-line values that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--upstream URL`: a single route named `default`.
    pub upstream: Option<String>,
    /// `--listen ADDR`.
    pub listen: Option<String>,
    /// `--admin ADDR`.
    pub admin: Option<String>,
    /// `--upstream-timeout DURATION`.
    pub upstream_timeout: Option<String>,
    /// `--log-format json|pretty`.
    pub log_format: Option<String>,
    /// `--workers N`.
    pub workers: Option<usize>,
}

impl Config {
    /// Reads and validates a config file, then applies flag overrides.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let origin = path.display().to_string();
        // `x.toml`'s parent is "", which leaves its paths relative to the working directory,
        // where the file itself is.
        Config::parse_in(&text, &origin, overrides, path.parent())
    }

    /// Validates config text; `origin` names it in errors. Relative paths in it stay
    /// relative to the working directory.
    pub fn parse(text: &str, origin: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::parse_in(text, origin, overrides, None)
    }

    /// `parse`, with relative paths taken as relative to `dir` (the file's directory).
    fn parse_in(
        text: &str,
        origin: &str,
        overrides: &Overrides,
        dir: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let mut file: FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            // toml's message carries the line and a caret; keep its last line, the reason.
            let msg = inner.message().trim().to_string();
            let from = inner.span().map(|s| s.start);
            if let Some((field, msg)) = flattened_unknown(text, &field, &msg, from.unwrap_or(0))
                .or_else(|| flattened_invalid(text, &field, from.unwrap_or(0)))
            {
                return field_err(origin, field, msg);
            }
            let line = from
                .map(|at| format!(" (line {})", 1 + text[..at].matches('\n').count()))
                .unwrap_or_default();
            field_err(
                origin,
                if field == "." {
                    "(top level)".into()
                } else {
                    field
                },
                format!("{msg}{line}"),
            )
        })?;
        if let Some(dir) = dir {
            file.anchor(dir);
        }
        validate(file, origin, overrides)
    }

    /// Zero-config mode: one route `default` to the `--upstream` URL.
    pub fn from_flags(overrides: &Overrides) -> Result<Config, ConfigError> {
        validate(FileConfig::default(), "flags", overrides)
    }
}

fn parse_addr(origin: &str, field: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        field_err(
            origin,
            field,
            format!("{value:?} is not a socket address: expected IP:PORT, e.g. \"127.0.0.1:8080\""),
        )
    })
}

fn parse_duration(origin: &str, field: &str, value: &str) -> Result<Duration, ConfigError> {
    duration::parse(value).map_err(|m| field_err(origin, field, m))
}

fn validate(file: FileConfig, origin: &str, ov: &Overrides) -> Result<Config, ConfigError> {
    // A file's value is checked even where a flag overrides it: the same file must not
    // pass `run --listen …` and fail `check` (or the next start without the flag).
    let file_listen = (file.proxy.listen.as_deref())
        .map(|v| parse_addr(origin, "proxy.listen", v))
        .transpose()?;
    let file_admin = (file.admin.listen.as_deref())
        .map(|v| parse_addr(origin, "admin.listen", v))
        .transpose()?;
    let listen = match &ov.listen {
        Some(v) => parse_addr("flags", "--listen", v)?,
        None => file_listen.unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default")),
    };
    let admin_listen = match &ov.admin {
        Some(v) => parse_addr("flags", "--admin", v)?,
        None => file_admin.unwrap_or_else(|| DEFAULT_ADMIN.parse().expect("valid default")),
    };
    if let (Some(n), Some(_)) = (file.proxy.workers, ov.workers) {
        if !(1..=MAX_WORKERS).contains(&n) {
            return Err(field_err(
                origin,
                "proxy.workers",
                format!("{n} is out of range: 1 to {MAX_WORKERS}"),
            ));
        }
    }
    // One port on one address, or on a wildcard that covers the other address: the
    // second bind would fail at start-up. [::] is dual-stack (it takes the port on every
    // address, IPv4's too); 0.0.0.0 only on IPv4's.
    let covers = |wild: std::net::IpAddr, other: std::net::IpAddr| {
        wild.is_unspecified() && (wild.is_ipv6() || other.is_ipv4())
    };
    let overlap = listen.port() == admin_listen.port()
        && listen.port() != 0
        && (listen.ip() == admin_listen.ip()
            || covers(listen.ip(), admin_listen.ip())
            || covers(admin_listen.ip(), listen.ip()));
    if overlap {
        // The field the user set is the one at fault; the admin's when both are.
        let admin_set = match (&ov.admin, &file.admin.listen) {
            (Some(_), _) => Some(("flags", "--admin")),
            (None, Some(_)) => Some((origin, "admin.listen")),
            (None, None) => None,
        };
        let (origin, field, message) = match admin_set {
            Some((origin, field)) => (
                origin,
                field,
                format!("{admin_listen} overlaps the proxy listener {listen}: the admin port must be separate"),
            ),
            None => {
                let (origin, field) = match ov.listen {
                    Some(_) => ("flags", "--listen"),
                    None => (origin, "proxy.listen"),
                };
                (
                    origin,
                    field,
                    format!("{listen} overlaps the admin listener's default {admin_listen}: use another port, or set admin.listen (--admin)"),
                )
            }
        };
        return Err(field_err(origin, field, message));
    }
    // A zero clock would cut every request head (or body) that takes two reads.
    let clock = |field: &str, v: Option<Duration>, default: u64| -> Result<Duration, ConfigError> {
        match v {
            Some(d) if d.is_zero() => Err(field_err(origin, field, "must be greater than 0")),
            Some(d) => Ok(d),
            None => Ok(Duration::from_secs(default)),
        }
    };
    let positive = |field: &str, v: Option<usize>, default: usize| -> Result<usize, ConfigError> {
        match v {
            Some(0) => Err(field_err(origin, field, "must be greater than 0")),
            Some(n) => Ok(n),
            None => Ok(default),
        }
    };
    let within = |field: &str,
                  v: Option<usize>,
                  default: usize,
                  range: std::ops::RangeInclusive<usize>|
     -> Result<usize, ConfigError> {
        match v {
            Some(n) if !range.contains(&n) => Err(field_err(
                origin,
                field,
                format!("{n} is out of range: {} to {}", range.start(), range.end()),
            )),
            Some(n) => Ok(n),
            None => Ok(default),
        }
    };
    let proxy = ProxyConfig {
        listen,
        drain_timeout: file.proxy.drain_timeout.unwrap_or(Duration::from_secs(30)),
        header_read_timeout: clock(
            "proxy.header_read_timeout",
            file.proxy.header_read_timeout,
            10,
        )?,
        body_read_timeout: clock("proxy.body_read_timeout", file.proxy.body_read_timeout, 30)?,
        send_timeout: clock("proxy.send_timeout", file.proxy.send_timeout, 60)?,
        max_header_bytes: within(
            "proxy.max_header_bytes",
            file.proxy.max_header_bytes,
            64 * 1024,
            REQUEST_HEADER_BYTES,
        )?,
        max_headers: within(
            "proxy.max_headers",
            file.proxy.max_headers,
            100,
            REQUEST_HEADERS,
        )?,
        max_uri_bytes: within(
            "proxy.max_uri_bytes",
            file.proxy.max_uri_bytes,
            8 * 1024,
            REQUEST_URI_BYTES,
        )?,
        max_connections: positive("proxy.max_connections", file.proxy.max_connections, 10_000)?,
        max_in_flight: positive("proxy.max_in_flight", file.proxy.max_in_flight, 10_000)?,
        workers: match ov.workers.or(file.proxy.workers) {
            Some(n) if !(1..=MAX_WORKERS).contains(&n) => {
                let (origin, field) = if ov.workers.is_some() {
                    ("flags", "--workers")
                } else {
                    (origin, "proxy.workers")
                };
                return Err(field_err(
                    origin,
                    field,
                    format!("{n} is out of range: 1 to {MAX_WORKERS}"),
                ));
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS)),
        },
        fast_path: file.proxy.fast_path.unwrap_or(true),
        tls: match &file.proxy.tls {
            None => None,
            Some(t) => {
                let identity =
                    crate::tls::server_identity(&t.cert_file, &t.key_file).map_err(|e| {
                        let field = match &e {
                            crate::tls::TlsError::Identity { path, .. } if *path == t.key_file => {
                                "proxy.tls.key_file"
                            }
                            _ => "proxy.tls.cert_file",
                        };
                        field_err(origin, field, e.to_string())
                    })?;
                Some(identity)
            }
        },
        trusted_proxies: TrustedProxies::new(
            file.proxy
                .trusted_proxies
                .iter()
                .enumerate()
                .map(|(i, range)| {
                    range.parse().map_err(|e: String| {
                        field_err(origin, format!("proxy.trusted_proxies[{i}]"), e)
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
        proxy_protocol: file.proxy.proxy_protocol.unwrap_or(false),
    };
    let admin_token = match (&file.admin.token, &file.admin.token_file) {
        (Some(_), Some(_)) => {
            return Err(field_err(
                origin,
                "admin.token_file",
                "set admin.token or admin.token_file, not both",
            ))
        }
        (Some(t), None) => Some(t.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| {
                    field_err(
                        origin,
                        "admin.token_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    if let Some(t) = &admin_token {
        if t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()) {
            let field = if file.admin.token.is_some() {
                "admin.token"
            } else {
                "admin.token_file"
            };
            return Err(field_err(
                origin,
                field,
                "the admin token must be at least 16 visible ASCII characters",
            ));
        }
    }

    let volume = match file.access_log.volume.as_deref() {
        None | Some("all") => LogVolume::All,
        Some("errors") => LogVolume::Errors,
        Some("off") => LogVolume::Off,
        Some(v) => {
            return Err(field_err(
                origin,
                "access_log.volume",
                format!("{v:?} is not a volume: expected \"all\", \"errors\" or \"off\""),
            ))
        }
    };
    let file_format = (file.access_log.format.as_deref())
        .map(|v| parse_format(origin, "access_log.format", v))
        .transpose()?;
    let format = match &ov.log_format {
        Some(v) => parse_format("flags", "--log-format", v)?,
        None => file_format.unwrap_or(LogFormat::Json),
    };

    let mut base = DetectorConfig::default();
    let thresholds = |at: &str, t: &FileThresholds, d: &mut DetectorConfig| {
        t.apply(d)
            .map_err(|(key, m)| field_err(origin, format!("{at}.{key}"), m))
    };
    thresholds("detection", &file.detection.thresholds, &mut base)?;
    check_detector(origin, "detection", &base)?;
    let signals_with_overrides = match file.signals {
        None => default_signals()
            .into_iter()
            .map(|s| (s, FileThresholds::default()))
            .collect(),
        Some(list) => validate_signals(origin, list)?,
    };
    let mut signals = Vec::with_capacity(signals_with_overrides.len());
    for (i, (mut s, own)) in signals_with_overrides.into_iter().enumerate() {
        s.detector = base.clone();
        thresholds(&format!("signals[{i}]"), &own, &mut s.detector)?;
        check_detector(origin, &format!("signals[{i}]"), &s.detector)?;
        signals.push(s);
    }
    let webhook = match &file.detection.webhook {
        None => None,
        Some(url) => {
            let uri: Uri = url.parse().map_err(|_| {
                field_err(origin, "detection.webhook", format!("{url:?} is not a URL"))
            })?;
            if uri.scheme() != Some(&Scheme::HTTP) || uri.authority().is_none() {
                return Err(field_err(
                    origin,
                    "detection.webhook",
                    format!("{url:?} must be an http:// URL, e.g. \"http://127.0.0.1:9093/api/v2/alerts\""),
                ));
            }
            Some(uri)
        }
    };
    let detection = DetectionConfig {
        enabled: file.detection.enabled.unwrap_or(true),
        webhook,
        instance: match &file.detection.instance {
            Some(i) if i.trim().is_empty() => {
                return Err(field_err(
                    origin,
                    "detection.instance",
                    "must not be empty: it tells replicas' alerts apart",
                ))
            }
            Some(i) => i.clone(),
            None => default_instance(listen),
        },
        history: match file.detection.history {
            None => 100,
            Some(n @ 1..=MAX_HISTORY) => n,
            Some(n) => {
                return Err(field_err(
                    origin,
                    "detection.history",
                    format!("{n} is out of range: 1 to {MAX_HISTORY}"),
                ))
            }
        },
    };

    let default_timeout = match &ov.upstream_timeout {
        Some(v) => match parse_duration("flags", "--upstream-timeout", v)? {
            d if d.is_zero() => {
                return Err(field_err(
                    "flags",
                    "--upstream-timeout",
                    "must be greater than 0",
                ))
            }
            d => Some(d),
        },
        None => None,
    };

    let mut routes = Vec::new();
    if let Some(url) = &ov.upstream {
        if !file.routes.is_empty() {
            return Err(field_err(
                "flags",
                "--upstream",
                "cannot be combined with a config file that defines routes",
            ));
        }
        let (scheme, authority, base_path) = parse_upstream("flags", "--upstream", url)?;
        not_the_listener("flags", "--upstream", url, &scheme, &authority, listen)?;
        let zero_config_host = if scheme == Scheme::HTTPS {
            HostHeader::Upstream
        } else {
            HostHeader::Preserve
        };
        routes.push(RouteConfig {
            name: "default".into(),
            host: None,
            path_prefix: "/".into(),
            scheme,
            authority,
            base_path,
            upstream: url.clone(),
            timeout: default_timeout.unwrap_or(DEFAULT_TIMEOUT),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(90),
            response_body_timeout: DEFAULT_RESPONSE_BODY_TIMEOUT,
            tunnel_idle_timeout: DEFAULT_TUNNEL_IDLE_TIMEOUT,
            max_response_header_bytes: DEFAULT_MAX_RESPONSE_HEADER_BYTES,
            max_body_bytes: None,
            max_in_flight: None,
            host_header: zero_config_host,
            ca_file: None,
            upstream_tls: crate::tls::system_client_config(),
            consumer: None,
            detectors: signals.iter().map(|s| s.detector.clone()).collect(),
        });
    }
    let mut names = HashSet::new();
    let mut matches = HashSet::new();
    for (i, r) in file.routes.into_iter().enumerate() {
        let at = |f: &str| format!("routes[{i}].{f}");
        if r.name.is_empty()
            || !r
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            return Err(field_err(
                origin,
                at("name"),
                format!(
                    "{:?} is not a route name: use letters, digits, '_', '-' or '.'",
                    r.name
                ),
            ));
        }
        if r.name == "unmatched" {
            return Err(field_err(
                origin,
                at("name"),
                "\"unmatched\" is reserved for requests no route takes",
            ));
        }
        if !names.insert(r.name.clone()) {
            return Err(field_err(
                origin,
                at("name"),
                format!("duplicate route name {:?}", r.name),
            ));
        }
        let host = match r.matcher.host {
            Some(h) => match host_problem(&h) {
                Some(why) => {
                    return Err(field_err(origin, at("match.host"), format!("{h:?} {why}")))
                }
                None => Some(strip_port(&h.to_ascii_lowercase()).to_string()),
            },
            None => None,
        };
        let path_prefix = match r.matcher.path_prefix {
            Some(p) if !p.starts_with('/') => {
                return Err(field_err(
                    origin,
                    at("match.path_prefix"),
                    format!("{p:?} must start with '/'"),
                ))
            }
            // Requests are matched by their resolved path (escapes of unreserved
            // characters decoded, dot segments and `//` resolved, no query): a prefix
            // that resolution would change can never match.
            Some(p) if p.contains(['?', '#']) || crate::route::routing_path(&p) != p => {
                let resolved = crate::route::routing_path(p.split(['?', '#']).next().unwrap_or(&p))
                    .into_owned();
                return Err(field_err(
                    origin,
                    at("match.path_prefix"),
                    format!("{p:?} can never match: requests are matched by their resolved path, without the query; write {resolved:?}"),
                ));
            }
            Some(p) => p,
            None => "/".into(),
        };
        if !matches.insert((host.clone(), path_prefix.clone())) {
            return Err(field_err(
                origin,
                at("match"),
                format!(
                    "route {:?} can never be chosen: an earlier route has the same match (host {:?}, path_prefix {:?})",
                    r.name, host, path_prefix
                ),
            ));
        }
        let (scheme, authority, base_path) = parse_upstream(origin, &at("upstream"), &r.upstream)?;
        not_the_listener(
            origin,
            &at("upstream"),
            &r.upstream,
            &scheme,
            &authority,
            listen,
        )?;
        let host_header = match r.host_header.as_deref() {
            // An https upstream checks its certificate against its own name, and virtual
            // hosts behind it route on Host: send its name unless told otherwise.
            None if scheme == Scheme::HTTPS => HostHeader::Upstream,
            None | Some("preserve") => HostHeader::Preserve,
            Some("upstream") => HostHeader::Upstream,
            Some(v) => {
                return Err(field_err(
                    origin,
                    at("host_header"),
                    format!("{v:?} is not a host policy: expected \"preserve\" or \"upstream\""),
                ))
            }
        };
        let nonzero = |f: &str,
                       d: Option<Duration>,
                       def: Duration|
         -> Result<Duration, ConfigError> {
            match d {
                Some(d) if d.is_zero() => Err(field_err(origin, at(f), "must be greater than 0")),
                Some(d) => Ok(d),
                None => Ok(def),
            }
        };
        let consumer = match r.consumer.as_deref() {
            None => None,
            Some(v) => Some(parse_identity(v).ok_or_else(|| {
                field_err(
                    origin,
                    at("consumer"),
                    format!("{v:?} is not a consumer identity: expected \"header:NAME\", \"client_ip\" or \"jwt_sub\""),
                )
            })?),
        };
        if r.ca_file.is_some() && scheme != Scheme::HTTPS {
            return Err(field_err(
                origin,
                at("ca_file"),
                "only applies to an https:// upstream",
            ));
        }
        let upstream_tls = crate::tls::client_config(r.ca_file.as_deref())
            .map_err(|e| field_err(origin, at("ca_file"), e.to_string()))?;
        let ca_file = r.ca_file.clone();
        let mut detectors = Vec::with_capacity(signals.len());
        for s in &signals {
            let mut d = s.detector.clone();
            if let Some(t) = r.detect.get(&s.name) {
                let at = at(&format!("detect.{}", s.name));
                thresholds(&at, t, &mut d)?;
                check_detector(origin, &at, &d)?;
            }
            detectors.push(d);
        }
        if let Some(unknown) = r
            .detect
            .keys()
            .find(|k| !signals.iter().any(|s| &s.name == *k))
        {
            return Err(field_err(
                origin,
                at(&format!("detect.{unknown}")),
                format!("{unknown:?} is not a configured signal"),
            ));
        }
        routes.push(RouteConfig {
            detectors,
            consumer,
            ca_file,
            upstream_tls,
            name: r.name,
            host,
            path_prefix,
            scheme,
            authority,
            base_path,
            upstream: r.upstream,
            timeout: nonzero("timeout", r.timeout.or(default_timeout), DEFAULT_TIMEOUT)?,
            connect_timeout: nonzero("connect_timeout", r.connect_timeout, Duration::from_secs(5))?,
            idle_timeout: nonzero("idle_timeout", r.idle_timeout, Duration::from_secs(90))?,
            response_body_timeout: nonzero(
                "response_body_timeout",
                r.response_body_timeout,
                DEFAULT_RESPONSE_BODY_TIMEOUT,
            )?,
            tunnel_idle_timeout: nonzero(
                "tunnel_idle_timeout",
                r.tunnel_idle_timeout,
                DEFAULT_TUNNEL_IDLE_TIMEOUT,
            )?,
            max_response_header_bytes: match r.max_response_header_bytes {
                None => DEFAULT_MAX_RESPONSE_HEADER_BYTES,
                Some(n) if RESPONSE_HEADER_BYTES.contains(&n) => n,
                Some(n) => {
                    return Err(field_err(
                        origin,
                        at("max_response_header_bytes"),
                        format!(
                            "{n} is out of range: {} to {}",
                            RESPONSE_HEADER_BYTES.start(),
                            RESPONSE_HEADER_BYTES.end()
                        ),
                    ))
                }
            },
            max_body_bytes: r.max_body_bytes,
            max_in_flight: match r.max_in_flight {
                Some(0) => {
                    return Err(field_err(
                        origin,
                        at("max_in_flight"),
                        "must be greater than 0",
                    ))
                }
                v => v,
            },
            host_header,
        });
    }
    if routes.is_empty() {
        return Err(field_err(
            origin,
            "routes",
            "no routes: add a [[routes]] table or pass --upstream URL",
        ));
    }
    Ok(Config {
        proxy,
        admin_listen,
        admin_token,
        admin_reload: file.admin.reload.unwrap_or(false),
        access_log: AccessLogConfig { volume, format },
        signals,
        detection,
        routes,
        machine_defaults: MachineDefaults {
            workers: ov.workers.or(file.proxy.workers).is_none(),
            instance: file.detection.instance.is_none(),
        },
    })
}

fn parse_identity(v: &str) -> Option<crate::consumer::IdentitySource> {
    use crate::consumer::IdentitySource;
    match v {
        "client_ip" => Some(IdentitySource::ClientIp),
        "jwt_sub" => Some(IdentitySource::JwtSub),
        _ => {
            let name = v.strip_prefix("header:")?;
            http::HeaderName::from_bytes(name.trim().as_bytes())
                .ok()
                .map(IdentitySource::Header)
        }
    }
}

fn parse_format(origin: &str, field: &str, v: &str) -> Result<LogFormat, ConfigError> {
    match v {
        "json" => Ok(LogFormat::Json),
        "pretty" => Ok(LogFormat::Pretty),
        _ => Err(field_err(
            origin,
            field,
            format!("{v:?} is not a log format: expected \"json\" or \"pretty\""),
        )),
    }
}

/// Checks the thresholds set at `at` (`detection`, `signals[0]`, ...), naming the key.
fn check_detector(origin: &str, at: &str, d: &DetectorConfig) -> Result<(), ConfigError> {
    d.validate().map_err(|e| {
        field_err(
            origin,
            format!("{at}.{}", e.key),
            format!("{}, got {}", e.expected, e.got),
        )
    })
}

fn validate_signals(
    origin: &str,
    list: Vec<FileSignal>,
) -> Result<Vec<(Signal, FileThresholds)>, ConfigError> {
    if list.len() > crate::detect::MAX_SIGNALS {
        return Err(field_err(
            origin,
            format!("signals[{}]", crate::detect::MAX_SIGNALS),
            format!(
                "{} signals defined; at most {} are supported",
                list.len(),
                crate::detect::MAX_SIGNALS
            ),
        ));
    }
    let mut out: Vec<(Signal, FileThresholds)> = Vec::new();
    for (i, s) in list.into_iter().enumerate() {
        let valid_name = !s.name.is_empty()
            && s.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_name {
            return Err(field_err(
                origin,
                format!("signals[{i}].name"),
                format!(
                    "{:?} is not a signal name: use lower-case letters, digits and '_'",
                    s.name
                ),
            ));
        }
        if out.iter().any(|(o, _)| o.name == s.name) {
            return Err(field_err(
                origin,
                format!("signals[{i}].name"),
                format!("duplicate signal {:?}", s.name),
            ));
        }
        if s.codes.is_empty() {
            return Err(field_err(
                origin,
                format!("signals[{i}].codes"),
                "must list at least one code",
            ));
        }
        let mut codes = Vec::new();
        for (j, c) in s.codes.iter().enumerate() {
            let at = format!("signals[{i}].codes[{j}]");
            match parse_code_or_class(c) {
                Some(range) => codes.extend(range),
                None => {
                    return Err(field_err(
                        origin,
                        at,
                        format!(
                            "{c:?} is not a status code or class: expected e.g. \"401\" or \"5xx\""
                        ),
                    ))
                }
            }
        }
        codes.sort_unstable();
        codes.dedup();
        let severity = s.severity.clone().unwrap_or_else(|| "warning".into());
        if !["info", "warning", "critical", "page", "ticket"].contains(&severity.as_str()) {
            return Err(field_err(
                origin,
                format!("signals[{i}].severity"),
                format!("{severity:?} is not a severity: expected info, warning, critical, page or ticket"),
            ));
        }
        // The thresholds are merged over [detection] by the caller.
        out.push((
            Signal {
                name: s.name,
                codes,
                severity,
                detector: DetectorConfig::default(),
            },
            s.thresholds,
        ));
    }
    Ok(out)
}

fn parse_code_or_class(s: &str) -> Option<std::ops::RangeInclusive<u16>> {
    let b = s.as_bytes();
    if b.len() == 3 && (b'1'..=b'5').contains(&b[0]) && &s[1..] == "xx" {
        let base = u16::from(b[0] - b'0') * 100;
        return Some(base..=base + 99);
    }
    match s.parse::<u16>() {
        Ok(c) if (100..=599).contains(&c) && b.len() == 3 => Some(c..=c),
        _ => None,
    }
}

/// The webhook's default `instance` label: this host's name and the proxy port, so
/// replicas listening on the same `0.0.0.0:8080` do not resolve each other's alerts.
/// The listen address when the host has no readable name.
fn default_instance(listen: SocketAddr) -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .map_or_else(|| listen.to_string(), |h| format!("{h}:{}", listen.port()))
}

/// Why `match.host` could never match a request's host, if it could not.
fn host_problem(h: &str) -> Option<&'static str> {
    if h.is_empty() || h.contains(['/', ' ', '@']) {
        return Some("is not a host name");
    }
    if h.contains('*') {
        return Some("has a '*': wildcards are not supported; list each host as a route");
    }
    if !h.starts_with('[') && h.matches(':').count() > 1 {
        return Some("is an IPv6 address: write it in brackets, e.g. \"[::1]\"");
    }
    if let Some(rest) = h.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return Some("opens a '[' it does not close: write an IPv6 address as \"[::1]\"");
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Some("has brackets around something that is not an IPv6 address");
        }
        if !(after.is_empty() || after.starts_with(':')) {
            return Some("has something other than a :port after its ']'");
        }
    }
    let port = match h.rfind(']') {
        Some(i) => h[i + 1..].strip_prefix(':'),
        None => h.rsplit_once(':').map(|(_, p)| p),
    };
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Some("has a port that is not a number");
    }
    if strip_port(h).ends_with('.') {
        return Some("ends in '.': write the name without it, as clients send it");
    }
    None
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: keep up to the closing bracket.
        return host.find(']').map(|i| &host[..=i]).unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

/// Refuses an upstream that is the proxy listener itself: each request would come back
/// in, one hop deeper, until sockets or the head limit ran out. Checked where the
/// address is literal (or `localhost`); a name that resolves to it is not caught.
fn not_the_listener(
    origin: &str,
    field: &str,
    url: &str,
    scheme: &Scheme,
    authority: &Authority,
    listen: SocketAddr,
) -> Result<(), ConfigError> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    if listen.port() == 0 || authority.port_u16().unwrap_or(default_port) != listen.port() {
        return Ok(());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let ips: Vec<IpAddr> = if host.eq_ignore_ascii_case("localhost") {
        vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
    } else {
        match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip.to_canonical()],
            Err(_) => return Ok(()),
        }
    };
    let bound = listen.ip();
    // A wildcard listener takes the port on every local address of its family ([::]
    // on IPv4's too): checked here for loopback and wildcard addresses, not the host's
    // other addresses. Connecting to a wildcard address reaches its family's loopback.
    let covers = |wild: IpAddr, ip: IpAddr| wild.is_ipv6() || ip.is_ipv4();
    let local = |ip: IpAddr| ip.is_loopback() || ip.is_unspecified();
    let loops = ips.iter().any(|&ip| {
        ip == bound
            || (bound.is_unspecified() && local(ip) && covers(bound, ip))
            || (ip.is_unspecified() && bound.is_loopback() && ip.is_ipv4() == bound.is_ipv4())
    });
    if loops {
        return Err(field_err(
            origin,
            field,
            format!("{url:?} is statuslens' own proxy listener ({listen}): every request would come back to it"),
        ));
    }
    Ok(())
}

fn parse_upstream(
    origin: &str,
    field: &str,
    url: &str,
) -> Result<(Scheme, Authority, String), ConfigError> {
    let bad = |why: &str| {
        field_err(
            origin,
            field,
            format!("{url:?} is not a usable upstream URL: {why} (expected e.g. \"http://127.0.0.1:3000\")"),
        )
    };
    let uri: Uri = url.parse().map_err(|_| bad("it does not parse as a URL"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| bad("it has no scheme"))?;
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        return Err(bad("the scheme must be http or https"));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| bad("it has no host"))?;
    if authority.host().is_empty() {
        return Err(bad("it has no host"));
    }
    if authority.as_str().contains('@') {
        return Err(bad("credentials in the URL are not supported"));
    }
    if uri.query().is_some() {
        return Err(bad("it must not have a query"));
    }
    if url.contains('#') {
        return Err(bad("it must not have a fragment"));
    }
    // `Uri` keeps a port it cannot read as a number: left alone, connections went to
    // the scheme's default port (a typo'd "99999" reached whatever served port 80).
    let after_host = match authority.as_str().rfind(']') {
        Some(i) => &authority.as_str()[i + 1..],
        None => authority.as_str(),
    };
    if let Some((_, port)) = after_host.rsplit_once(':') {
        match port.parse::<u16>() {
            Ok(1..) => {}
            _ if port.is_empty() => return Err(bad("its port is empty")),
            _ => return Err(bad(&format!("port {port:?} is not 1 to 65535"))),
        }
    }
    let base_path = uri.path().trim_end_matches('/').to_string();
    Ok((scheme, authority, base_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", &Overrides::default())
    }

    #[test]
    fn unknown_fields_beside_flattened_thresholds_name_the_key_its_line_and_the_fields() {
        let route = "[[routes]]\nname = \"a\"\nupstream = \"http://127.0.0.1:1\"\n";
        let cases = [
            (
                "[detection]\nenabled = true\nwindw = 3\n",
                "detection.windw",
                3,
            ),
            (
                "detection = { enabled = true, windw = 3 }\n",
                "detection.windw",
                1,
            ),
            (
                "[[signals]]\nname = \"x\"\ncodes = [\"401\"]\n\nmin_evnts = 3\n",
                "signals[0].min_evnts",
                5,
            ),
            // Not the commented-out line, nor a longer key that ends in this one.
            (
                "[[signals]]\nname = \"x\"\ncodes = [\"401\"]\n[[signals]]\nname = \"y\"\ncodes = [\"429\"]\n# events = 1\nmin_events = 2\n\tevents=3\n",
                "signals[1].events",
                9,
            ),
            // A quoted key is not looked for: the table's line.
            ("[detection]\n\"windw\" = 3\n", "detection.windw", 1),
        ];
        for (table, field, line) in cases {
            let err = parse(&format!("{table}{route}")).unwrap_err().to_string();
            let key = field.rsplit('.').next().unwrap();
            assert!(
                err.starts_with(&format!(
                    "test.toml: {field}: unknown field `{key}`, expected one of `"
                )),
                "{err}"
            );
            assert!(
                err.ends_with(&format!("`clear_after` (line {line})")),
                "{err}"
            );
        }
        // A threshold there with the wrong type or value: named too.
        let cases = [
            (
                "[detection]\nenabled = true\np_value = \"1e-9\"\n",
                "detection.p_value: invalid type: string \"1e-9\", expected f64 (line 3)",
            ),
            (
                "[[signals]]\nname = \"x\"\ncodes = [\"401\"]\nmin_events = -1\n",
                "signals[0].min_events: invalid value: integer `-1`, expected u64 (line 4)",
            ),
            (
                "[[signals]]\nname = \"x\"\ncodes = [\"401\"]\n[[signals]]\nname = \"y\"\ncodes = [\"429\"]\nclear_after = \"soon\"\n",
                "signals[1].clear_after: ",
            ),
            (
                "detection = { prior_ratio = true }\n",
                "detection.prior_ratio: invalid type: boolean `true`, expected f64 (line 1)",
            ),
        ];
        for (table, want) in cases {
            let err = parse(&format!("{table}{route}")).unwrap_err().to_string();
            assert!(err.starts_with(&format!("test.toml: {want}")), "{err}");
        }
        // The threshold list is serde's own, where no flatten hides it.
        let err = parse(&format!("{route}[routes.detect.unauthorized]\nbogus = 1\n"))
            .unwrap_err()
            .to_string();
        let listed: Vec<String> = THRESHOLD_FIELDS.iter().map(|f| format!("`{f}`")).collect();
        assert!(
            err.contains(&format!("expected one of {} (", listed.join(", "))),
            "{err}"
        );
        // The lists name only fields the tables take: each one parses (or fails on its
        // value), never as unknown.
        let tables = [
            ("[detection]", &DETECTION_FIELDS[..]),
            ("[[signals]]", &SIGNAL_FIELDS[..]),
        ];
        for (table, own) in tables {
            for f in own.iter().chain(&THRESHOLD_FIELDS) {
                let err = parse(&format!("{table}\n{f} = 1\n{route}"))
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                assert!(!err.contains("unknown field"), "{table} {f}: {err}");
            }
        }
    }

    #[test]
    fn example_shape_parses() {
        let c = parse(
            r#"
[proxy]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[[routes]]
name = "crm"
match = { path_prefix = "/services/data/" }
upstream = "http://127.0.0.1:3000/base/"
timeout = "2s"
[[routes]]
name = "default"
upstream = "http://127.0.0.1:3001"
"#,
        )
        .unwrap();
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[0].timeout, Duration::from_secs(2));
        assert_eq!(c.routes[0].base_path, "/base");
        assert_eq!(c.routes[1].path_prefix, "/");
        assert_eq!(c.signals, default_signals());
    }

    #[test]
    fn errors_name_the_field_path() {
        let cases = [
            ("[[routes]]\nname='a'\nupstrem='http://x'\n", "routes[0]"),
            ("[[routes]]\nname='a'\nupstream='ftp://x'\n", "routes[0].upstream"),
            ("[[routes]]\nname='a'\nupstream='http://x:99999'\n", "port \"99999\" is not 1 to 65535"),
            ("[[routes]]\nname='a'\nupstream='http://x:0'\n", "routes[0].upstream"),
            ("[[routes]]\nname='a'\nupstream='http://x:'\n", "its port is empty"),
            ("[[routes]]\nname='a'\nupstream='http://x/#f'\n", "fragment"),
            (
                "[[routes]]\nname='a'\nupstream='http://x'\n[[routes]]\nname='a'\nupstream='http://y'\nmatch={path_prefix='/b'}\n",
                "routes[1].name",
            ),
            (
                "[[routes]]\nname='a'\nupstream='http://x'\n[[routes]]\nname='b'\nupstream='http://y'\n",
                "routes[1].match",
            ),
            ("[proxy]\nlisten='nope'\n[[routes]]\nname='a'\nupstream='http://x'\n", "proxy.listen"),
            ("[[routes]]\nname='a'\nupstream='http://x'\ntimeout='3 parsecs'\n", "routes[0].timeout"),
            ("[access_log]\nvolume='loud'\n[[routes]]\nname='a'\nupstream='http://x'\n", "access_log.volume"),
            (
                "[[signals]]\nname='forbidden'\ncodes=['4x3']\n[[routes]]\nname='a'\nupstream='http://x'\n",
                "signals[0].codes[0]",
            ),
            ("", "routes"),
            ("[detection]\nhistory=0\n[[routes]]\nname='a'\nupstream='http://x'\n", "detection.history"),
            ("[[routes]]\nname='a'\nupstream='http://x'\nmatch={host='::1'}\n", "brackets"),
            ("[[routes]]\nname='a'\nupstream='http://x'\nmatch={host='*.example.com'}\n", "wildcards"),
            ("[[routes]]\nname='a'\nupstream='http://x'\nmatch={host='a.com:abc'}\n", "routes[0].match.host"),
            ("[[routes]]\nname='a'\nupstream='http://x'\nmatch={host='a.com.'}\n", "routes[0].match.host"),
            ("[[routes]]\nname='a'\nupstream='http://x'\nmatch={path_prefix='/%61pi/'}\n", "write \"/api/\""),
            ("[[routes]]\nname='a'\nupstream='http://x'\nmatch={path_prefix='/api/../admin/'}\n", "write \"/admin/\""),
            ("[[routes]]\nname='a'\nupstream='http://x'\nmatch={path_prefix='/api?x=1'}\n", "routes[0].match.path_prefix"),
            ("[proxy]\nheader_read_timeout='0s'\n[[routes]]\nname='a'\nupstream='http://x'\n", "proxy.header_read_timeout"),
            ("[detection]\ninstance=' '\n[[routes]]\nname='a'\nupstream='http://x'\n", "detection.instance"),
            ("[proxy]\nbody_read_timeout='0s'\n[[routes]]\nname='a'\nupstream='http://x'\n", "proxy.body_read_timeout"),
            ("[proxy]\nsend_timeout='0s'\n[[routes]]\nname='a'\nupstream='http://x'\n", "proxy.send_timeout"),
            ("[detection]\nhistory=10001\n[[routes]]\nname='a'\nupstream='http://x'\n", "detection.history"),
            ("[detection]\nclear_after='500ms'\n[[routes]]\nname='a'\nupstream='http://x'\n", "detection.clear_after"),
            // A threshold out of range is named by its key, wherever it is set.
            (
                "[detection]\nmin_ratio=1.5\n[[routes]]\nname='a'\nupstream='http://x'\n",
                "detection.min_ratio: must be in [0, 1], got 1.5",
            ),
            (
                "[[signals]]\nname='s'\ncodes=['500']\np_value=2.0\n[[routes]]\nname='a'\nupstream='http://x'\n",
                "signals[0].p_value: must be in (0, 1), got 2",
            ),
            (
                "[[routes]]\nname='a'\nupstream='http://x'\n[routes.detect.server_error]\nmin_events=0\n",
                "routes[0].detect.server_error.min_events: must be at least 1, got 0",
            ),
            (
                "[[signals]]\nname='s'\ncodes=['500']\nclear_after='1500ms'\n[[routes]]\nname='a'\nupstream='http://x'\n",
                "signals[0].clear_after",
            ),
            (
                "[[routes]]\nname='a'\nupstream='http://x'\n[routes.detect.server_error]\nclear_after='0s'\n",
                "routes[0].detect.server_error.clear_after",
            ),
            (
                "[[routes]]\nname='a'\nupstream='http://x'\nmax_response_header_bytes=512\n",
                "routes[0].max_response_header_bytes: 512 is out of range: 1024 to 262144",
            ),
            (
                "[proxy]\ntrusted_proxies=['10.0.0.0/8', 'lb.internal']\n[[routes]]\nname='a'\nupstream='http://x'\n",
                "proxy.trusted_proxies[1]: \"lb.internal\" is not an address or range",
            ),
            (
                "[[routes]]\nname='a'\nupstream='http://x'\nmax_response_header_bytes=262145\n",
                "routes[0].max_response_header_bytes: 262145 is out of range",
            ),
            // Limits every request would trip, or that overflow the buffers sized from them.
            (
                "[proxy]\nmax_header_bytes=100\n[[routes]]\nname='a'\nupstream='http://x'\n",
                "proxy.max_header_bytes: 100 is out of range: 1024 to 8388608",
            ),
            (
                "[proxy]\nmax_header_bytes=9223372036854775807\n[[routes]]\nname='a'\nupstream='http://x'\n",
                "proxy.max_header_bytes: 9223372036854775807 is out of range",
            ),
            (
                "[proxy]\nmax_headers=0\n[[routes]]\nname='a'\nupstream='http://x'\n",
                "proxy.max_headers: 0 is out of range: 1 to 1000",
            ),
            (
                "[proxy]\nmax_headers=100000\n[[routes]]\nname='a'\nupstream='http://x'\n",
                "proxy.max_headers: 100000 is out of range",
            ),
            (
                "[proxy]\nmax_uri_bytes=10\n[[routes]]\nname='a'\nupstream='http://x'\n",
                "proxy.max_uri_bytes: 10 is out of range: 256 to 1048576",
            ),
        ];
        // One bit per signal in the hot path's mask: a 33rd would alias the first.
        let many: String = (0..33)
            .map(|i| format!("[[signals]]\nname='s{i}'\ncodes=['500']\n"))
            .collect();
        let many = format!("{many}[[routes]]\nname='a'\nupstream='http://x'\n");
        let cases: Vec<(&str, &str)> = cases
            .into_iter()
            .chain([(many.as_str(), "signals[32]")])
            .collect();
        for (text, field) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.starts_with("test.toml: "), "{err}");
            assert!(err.contains(field), "expected {field} in: {err}");
        }
    }

    #[test]
    fn the_default_instance_label_tells_hosts_apart() {
        // The listen address alone (0.0.0.0:8080 on every replica) let one replica's
        // resolved alert close another's.
        let c =
            parse("[proxy]\nlisten='0.0.0.0:8080'\n[[routes]]\nname='a'\nupstream='http://x'\n")
                .unwrap();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(c.detection.instance, format!("{}:8080", host.trim()));
    }

    #[test]
    fn signals_expand_classes() {
        let c = parse(
            "[[signals]]\nname='gateway'\ncodes=['502','503','504']\n[[signals]]\nname='client'\ncodes=['4xx']\n[[routes]]\nname='a'\nupstream='http://x'\n",
        )
        .unwrap();
        assert_eq!(c.signals[0].codes, vec![502, 503, 504]);
        assert_eq!(c.signals[1].codes.len(), 100);
        assert!(c.signals[1].matches(499));
    }

    #[test]
    fn flags_override_and_zero_config() {
        let ov = Overrides {
            upstream: Some("http://127.0.0.1:9".into()),
            listen: Some("127.0.0.1:0".into()),
            upstream_timeout: Some("250ms".into()),
            ..Default::default()
        };
        let c = Config::from_flags(&ov).unwrap();
        assert_eq!(c.routes[0].name, "default");
        assert_eq!(c.routes[0].timeout, Duration::from_millis(250));
        let bad = Overrides {
            upstream: Some("http://127.0.0.1:9".into()),
            upstream_timeout: Some("soon".into()),
            ..Default::default()
        };
        let err = Config::from_flags(&bad).unwrap_err().to_string();
        assert!(
            err.contains("--upstream-timeout") && err.contains("soon"),
            "{err}"
        );
    }

    #[test]
    fn an_upstream_that_is_the_proxy_listener_is_refused() {
        let at = |listen: &str, upstream: &str| {
            let text = format!(
                "[proxy]\nlisten='{listen}'\n[admin]\nlisten='127.0.0.1:1'\n[[routes]]\nname='a'\nupstream='{upstream}'\n"
            );
            parse(&text).map(|_| ()).map_err(|e| e.to_string())
        };
        for (listen, upstream) in [
            ("127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("127.0.0.1:8080", "http://localhost:8080/api"),
            ("127.0.0.1:80", "http://127.0.0.1"),
            ("127.0.0.1:443", "https://localhost"),
            ("0.0.0.0:8080", "http://127.0.0.1:8080"),
            ("[::]:8080", "http://127.0.0.1:8080"),
            ("[::1]:8080", "http://[::1]:8080"),
            ("127.0.0.1:8080", "http://0.0.0.0:8080"),
        ] {
            let err = at(listen, upstream).expect_err(upstream);
            assert!(
                err.contains("routes[0].upstream") && err.contains("own proxy listener"),
                "{listen} {upstream}: {err}"
            );
        }
        for (listen, upstream) in [
            ("127.0.0.1:8080", "http://127.0.0.1:8081"),
            ("127.0.0.1:8080", "http://127.0.0.2:8080"),
            ("127.0.0.1:8080", "http://api.internal:8080"),
            ("0.0.0.0:8080", "http://[::1]:8080"),
            ("127.0.0.1:8080", "http://[::]:8080"),
            ("127.0.0.1:0", "http://127.0.0.1:8080"),
        ] {
            assert_eq!(at(listen, upstream), Ok(()), "{listen} {upstream}");
        }
        // The zero-config route too, against the default listener.
        let ov = Overrides {
            upstream: Some("http://localhost:8080".into()),
            ..Default::default()
        };
        let err = Config::from_flags(&ov).unwrap_err().to_string();
        assert!(err.contains("--upstream"), "{err}");
    }

    #[test]
    fn a_file_value_a_flag_overrides_is_still_checked() {
        let route = "[[routes]]\nname='a'\nupstream='http://x'\n";
        let flags = Overrides {
            listen: Some("127.0.0.1:0".into()),
            admin: Some("127.0.0.1:0".into()),
            workers: Some(1),
            log_format: Some("json".into()),
            ..Default::default()
        };
        for (text, field) in [
            ("[proxy]\nlisten='nonsense'\n", "proxy.listen"),
            ("[admin]\nlisten='nonsense'\n", "admin.listen"),
            ("[proxy]\nworkers=0\n", "proxy.workers"),
            ("[access_log]\nformat='xml'\n", "access_log.format"),
        ] {
            let err = Config::parse(&format!("{text}{route}"), "test.toml", &flags)
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "expected {field} in: {err}");
        }
        assert!(Config::parse(route, "test.toml", &flags).is_ok());
    }

    #[test]
    fn a_reload_keeps_what_the_machine_decided_unless_the_file_decides() {
        let route = "[[routes]]\nname = \"a\"\nupstream = \"http://x\"\n";
        // The running process read 3 cores and host "before" at start-up.
        let mut running = parse(route).unwrap();
        running.proxy.workers = 3;
        running.detection.instance = "before:8080".into();
        // The same file read again on a machine that now says otherwise.
        let mut again = parse(route).unwrap();
        again.keep_machine_defaults(&running);
        assert_eq!(again.proxy.workers, 3);
        assert_eq!(again.detection.instance, "before:8080");
        // What the file sets is the file's, and a reload judges it.
        let mut set = parse(&format!(
            "[proxy]\nworkers = 2\n[detection]\ninstance = \"eu-1\"\n{route}"
        ))
        .unwrap();
        set.keep_machine_defaults(&running);
        assert_eq!(set.proxy.workers, 2);
        assert_eq!(set.detection.instance, "eu-1");
    }

    #[test]
    fn route_hosts_that_can_never_match_are_refused() {
        for ok in [
            "api.example.com",
            "api.example.com:8443",
            "[::1]",
            "[::1]:8080",
            "10.0.0.1:80",
        ] {
            assert_eq!(host_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "u@a",
            "*.example.com",
            "::1",
            "a:port",
            "a.",
            "[::1",
            "[::1]x",
            "[zz]",
            "[::1]:x",
        ] {
            assert!(host_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn a_proxy_and_admin_port_clash_blames_the_address_that_was_set() {
        let flags = |listen: Option<&str>, admin: Option<&str>| Overrides {
            upstream: Some("http://127.0.0.1:9".into()),
            listen: listen.map(Into::into),
            admin: admin.map(Into::into),
            ..Default::default()
        };
        // (--listen, --admin, the field blamed); None: no clash.
        let cases = [
            (
                Some("127.0.0.1:9464"),
                None,
                Some("flags: --listen: 127.0.0.1:9464 overlaps the admin listener's default"),
            ),
            (
                Some("0.0.0.0:9464"),
                None,
                Some("flags: --listen: 0.0.0.0:9464 overlaps"),
            ),
            (
                Some("[::]:9464"),
                None,
                Some("flags: --listen: [::]:9464 overlaps"),
            ),
            (
                None,
                Some("127.0.0.1:8080"),
                Some("flags: --admin: 127.0.0.1:8080 overlaps the proxy listener"),
            ),
            (
                Some("0.0.0.0:7000"),
                Some("127.0.0.1:7000"),
                Some("flags: --admin: 127.0.0.1:7000 overlaps"),
            ),
            (Some("127.0.0.1:7000"), Some("127.0.0.2:7000"), None),
            (Some("0.0.0.0:7000"), Some("[::1]:7000"), None),
            (
                Some("[::]:7000"),
                Some("127.0.0.1:7000"),
                Some("flags: --admin: 127.0.0.1:7000 overlaps"),
            ),
            (Some("127.0.0.1:0"), Some("127.0.0.1:0"), None),
            (Some("0.0.0.0:8081"), None, None),
        ];
        for (listen, admin, want) in cases {
            let got = Config::from_flags(&flags(listen, admin));
            match want {
                Some(want) => {
                    let err = got.unwrap_err().to_string();
                    assert!(err.starts_with(want), "{listen:?} {admin:?}: {err}");
                }
                None => assert!(got.is_ok(), "{listen:?} {admin:?}: {:?}", got.err()),
            }
        }
        // From the file: its field.
        let err = parse(
            "[proxy]\nlisten = \"0.0.0.0:9464\"\n[[routes]]\nname = \"a\"\nupstream = \"http://x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("test.toml: proxy.listen: "), "{err}");
    }
}

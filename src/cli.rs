//! The command line: `run`, `check`, `explain`, `demo`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::logsink::Flusher;
use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, LogFormat, Overrides};
use crate::{server, status};

/// statuslens: a transparent HTTP reverse proxy that counts, explains and flags status codes.
#[derive(Debug, Parser)]
#[command(name = "statuslens", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy: zero-config with --upstream, or from --config.
    Run {
        /// Forward everything to this upstream (one route named "default").
        #[arg(long, value_name = "URL", required_unless_present = "config")]
        upstream: Option<String>,
        /// Config file (TOML).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Proxy listener address (default 127.0.0.1:8080).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Admin listener address: /metrics, /healthz, /readyz, /api/* (default 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR")]
        admin: Option<String>,
        /// Upstream response-head timeout, e.g. 500ms, 30s (default 30s).
        #[arg(long, value_name = "DURATION")]
        upstream_timeout: Option<String>,
        /// Log format: json or pretty.
        #[arg(long, value_name = "FORMAT")]
        log_format: Option<String>,
        /// Worker threads serving the proxy listener (default: one per core).
        #[arg(long, value_name = "N")]
        workers: Option<usize>,
    },
    /// Validate a config file and print its route table.
    Check {
        /// Config file (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Self-contained demo: a synthetic API, statuslens in front, traffic with incidents.
    Demo {
        /// Proxy listener address (default 127.0.0.1:8080).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Admin listener address (default 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR")]
        admin: Option<String>,
        /// Length of one phase of the story, e.g. 20s.
        #[arg(long, value_name = "DURATION", default_value = "20s")]
        phase: String,
        /// Play the story this many times, then exit (default: until Ctrl-C).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        cycles: Option<u32>,
        /// Requests per second of generated traffic.
        #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        rate: u32,
    },
    /// Explain a status code: meaning, typical causes, fix, retry advice.
    Explain {
        /// A status code such as 401 or 503.
        code: String,
    },
}

/// Exit code for usage and configuration errors (clap uses it too).
const USAGE: u8 = 2;

/// Parses arguments and runs the chosen command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Explain { code } => match status::parse_code(&code) {
            Ok(c) => {
                let info = status::lookup(c).expect("parse_code only returns 100..=599");
                emit(&status::render_explain(&info))
            }
            Err(e) => {
                eprintln!("statuslens: {e}");
                ExitCode::from(USAGE)
            }
        },
        Command::Demo {
            listen,
            admin,
            phase,
            cycles,
            rate,
        } => {
            let phase = match crate::duration::parse(&phase) {
                Ok(p) if !p.is_zero() => p,
                Ok(_) => {
                    eprintln!("statuslens: --phase must be greater than 0");
                    return ExitCode::from(USAGE);
                }
                Err(e) => {
                    eprintln!("statuslens: --phase: {e}");
                    return ExitCode::from(USAGE);
                }
            };
            // The demo narrates on stdout; only errors from the machinery are logged.
            let _log = init_tracing_default(LogFormat::Pretty, "error");
            let opts = crate::demo::DemoOptions {
                listen,
                admin,
                phase,
                cycles,
                rate,
            };
            let runtime = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match runtime.block_on(crate::demo::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(crate::demo::DemoError::Config(e)) => config_error(e),
                Err(e) => {
                    eprintln!("statuslens: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => match Config::load(&config, &Overrides::default()) {
            Ok(c) => emit(&route_table(&c, &config.display().to_string())),
            Err(e) => config_error(e),
        },
        Command::Run {
            upstream,
            config,
            listen,
            admin,
            upstream_timeout,
            log_format,
            workers,
        } => {
            let overrides = Overrides {
                upstream,
                listen,
                admin,
                upstream_timeout,
                log_format,
                workers,
            };
            let config_path = config;
            let loaded = match &config_path {
                Some(path) => Config::load(path, &overrides),
                None => Config::from_flags(&overrides),
            };
            let config = match loaded {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            let _log = init_tracing(config.access_log.format);
            let runtime = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let source = config_path.map(|p| (p, overrides));
            match runtime.block_on(server::run(config, source)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("statuslens: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The runtime for the admin listener, signals and spike ticks — the proxy's workers
/// bring their own — or the exit code for failing to build one.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("statuslens: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

fn config_error(e: ConfigError) -> ExitCode {
    eprintln!("statuslens: config error: {e}");
    ExitCode::from(USAGE)
}

/// Writes a command's output; a reader that went away (`statuslens check | head`) is
/// not an error, as with other Unix tools.
fn emit(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("statuslens: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn route_table(c: &Config, origin: &str) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let signals: Vec<&str> = c.signals.iter().map(|s| s.name.as_str()).collect();
    let _ = writeln!(t, "{origin}: ok");
    let header = if c.proxy.proxy_protocol {
        "  (every connection begins with a PROXY protocol header)"
    } else {
        ""
    };
    let _ = writeln!(t, "proxy  {}{header}", c.proxy.listen);
    let _ = writeln!(t, "admin  {}", c.admin_listen);
    if let Some(tls) = &c.proxy.tls {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let span = |secs: i64| {
            let (n, unit) = match secs {
                0..=172_799 => (secs / 3600, "hour"),
                _ => (secs / 86_400, "day"),
            };
            format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
        };
        let when = if tls.not_after <= now {
            format!("EXPIRED {} ago", span(now - tls.not_after))
        } else {
            format!("in {}", span(tls.not_after - now))
        };
        let _ = writeln!(
            t,
            "tls    {}  expires {} ({when})",
            tls.cert_file.display(),
            crate::detect::webhook::rfc3339(tls.not_after.max(0) as u64)
        );
    }
    if !c.proxy.trusted_proxies.is_empty() {
        // As read: a mapped range shows as the IPv4 one it means.
        let _ = writeln!(t, "trusted {}", c.proxy.trusted_proxies.describe());
    }
    let _ = writeln!(t, "signals {}", signals.join(", "));
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "{:<20} {:<24} {:<24} {:<32} {:>8}",
        "ROUTE", "HOST", "PATH PREFIX", "UPSTREAM", "TIMEOUT"
    );
    for r in &c.routes {
        let _ = writeln!(
            t,
            "{:<20} {:<24} {:<24} {:<32} {:>8}",
            r.name,
            r.host.as_deref().unwrap_or("*"),
            r.path_prefix,
            r.upstream,
            format!("{}ms", r.timeout.as_millis())
        );
    }
    t
}

/// Sets up the tracing subscriber: JSON or pretty lines on stdout, filtered by RUST_LOG
/// (default `info`).
pub fn init_tracing(format: LogFormat) -> Option<Flusher> {
    init_tracing_default(format, "info")
}

/// Like [`init_tracing`] with another default filter when RUST_LOG is unset.
///
/// Lines are formatted on the request's thread and gathered into batches that a
/// dedicated thread writes (see [`crate::logsink`]), so the request path makes no
/// system call per line. If stdout cannot keep up, logging threads wait (lines are shed,
/// and counted, only when it takes nothing at all; see `logsink`). The returned flusher
/// writes what is left when dropped.
pub fn init_tracing_default(format: LogFormat, default_filter: &str) -> Option<Flusher> {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let (writer, flusher) = crate::logsink::start(std::io::stdout());
    // Colour only for a terminal: `--log-format pretty > file` (or under docker) would
    // otherwise write escape codes into the file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Json => builder.event_format(crate::logfmt::JsonLines).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    installed.ok().map(|_| flusher)
}

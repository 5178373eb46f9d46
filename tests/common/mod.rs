//! Test harness: a scriptable upstream, the real statuslens binary, a client and a
//! Prometheus text parser. Everything binds 127.0.0.1:0.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Generous deadline for anything the tests wait for: the box is small and shared.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// A body that yields `chunks` and then, if `fail` is set, an error (the connection dies).
pub fn chunked(chunks: Vec<Bytes>, delay: Duration, fail: bool) -> TestBody {
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>,
    >(4);
    tokio::spawn(async move {
        for c in chunks {
            if tx.send(Ok(Frame::data(c))).await.is_err() {
                return;
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        if fail {
            let _ = tx.send(Err("upstream dies mid-body".into())).await;
        }
    });
    let stream = futures_stream(rx);
    StreamBody::new(stream).boxed()
}

fn futures_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_core::Stream<Item = T> + Send {
    struct S<T>(tokio::sync::mpsc::Receiver<T>);
    impl<T> futures_core::Stream for S<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
    let _ = &mut rx;
    S(rx)
}

/// What the upstream saw of each request, for header assertions.
#[derive(Clone, Default)]
pub struct Seen(pub Arc<Mutex<Vec<http::request::Parts>>>);

/// The scriptable upstream. Paths:
/// - `/status/NNN`: answer NNN with body "status NNN"
/// - `/echo`: stream the request body back (same length)
/// - `/drain`: read the whole request body, then answer its length
/// - `/stall/MS`: wait MS milliseconds, then 200
/// - `/gate`: wait for a permit on `Upstream::gate` (the test decides when), then 200
/// - `/slowbody/MS`: 200 head at once, body chunks every MS ms for 10 chunks
/// - `/die`: 200 with a body that dies after 3 chunks
/// - `/big/N`: N bytes of a known pattern, chunked
/// - `/ws`: 101 upgrade, then echo bytes
/// - anything else: 200 "ok"
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Seen,
    /// Each permit added lets one `/gate` request answer.
    pub gate: Arc<tokio::sync::Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn pattern(n: usize) -> Vec<u8> {
    // Not periodic over small windows, so an off-by-one shows up.
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

pub async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let seen2 = seen.clone();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let gate2 = gate.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen2.clone();
            let gate = gate2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| upstream_handle(req, seen.clone(), gate.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream {
        addr,
        seen,
        gate,
        task,
    }
}

async fn upstream_handle(
    mut req: Request<Incoming>,
    seen: Seen,
    gate: Arc<tokio::sync::Semaphore>,
) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_string();
    let mut parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // Routes forward their prefix too (`/api/stall/5`): skip to the first command.
    const COMMANDS: [&str; 10] = [
        "status", "echo", "drain", "stall", "gate", "slowbody", "die", "big", "ws", "bighead",
    ];
    while parts.len() > 1 && !COMMANDS.contains(&parts[0]) {
        parts.remove(0);
    }
    {
        let (p, _) = Request::new(()).into_parts();
        let mut p = p;
        p.method = req.method().clone();
        p.uri = req.uri().clone();
        p.version = req.version();
        p.headers = req.headers().clone();
        seen.0.lock().unwrap().push(p);
    }
    let resp = match parts.as_slice() {
        ["status", code] => {
            let code: u16 = code.parse().unwrap();
            let mut r = Response::new(full(format!("status {code}")));
            *r.status_mut() = StatusCode::from_u16(code).unwrap();
            if code == 204 || code == 304 {
                *r.body_mut() = full(Bytes::new());
            }
            r
        }
        ["echo"] => {
            let body = req.into_body().map_err(|e| Box::new(e) as _).boxed();
            Response::new(body)
        }
        ["drain"] => {
            // Read the whole body before answering, like an API validating a payload.
            match req.into_body().collect().await {
                Ok(b) => Response::new(full(format!("{}", b.to_bytes().len()))),
                Err(_) => Response::new(full("body error")),
            }
        }
        ["stall", ms] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            Response::new(full("stalled"))
        }
        ["gate"] => {
            gate.acquire().await.unwrap().forget();
            Response::new(full("gated"))
        }
        ["slowbody", ms] => Response::new(chunked(
            vec![Bytes::from_static(b"0123456789"); 10],
            Duration::from_millis(ms.parse().unwrap()),
            false,
        )),
        ["die"] => Response::new(chunked(
            vec![Bytes::from_static(b"partial-"); 3],
            Duration::from_millis(20),
            true,
        )),
        ["big", n] => {
            let data = pattern(n.parse().unwrap());
            let chunks = data.chunks(64 * 1024).map(Bytes::copy_from_slice).collect();
            Response::new(chunked(chunks, Duration::ZERO, false))
        }
        ["bighead", n] => {
            // A field of n bytes: a head just over that.
            let mut r = Response::new(full("ok"));
            let value = "h".repeat(n.parse().unwrap());
            r.headers_mut()
                .insert("x-big", http::HeaderValue::from_str(&value).unwrap());
            r
        }
        ["ws"] => {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 1024];
                    loop {
                        match io.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if io.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            });
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            // With fields that are this hop's own, as any upstream may add.
            r.headers_mut()
                .insert("connection", "upgrade, x-hop".parse().unwrap());
            r.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            r.headers_mut().insert("x-hop", "1".parse().unwrap());
            r.headers_mut()
                .insert("keep-alive", "timeout=5".parse().unwrap());
            r
        }
        _ => {
            let mut r = Response::new(full("ok"));
            r.headers_mut().insert("x-upstream", "yes".parse().unwrap());
            r.headers_mut()
                .insert("connection", "x-hop-resp".parse().unwrap());
            r.headers_mut()
                .insert("x-hop-resp", "must-not-reach-client".parse().unwrap());
            r
        }
    };
    Ok(resp)
}

/// A raw TCP upstream that answers every connection with `reply` and closes.
pub async fn raw_upstream(reply: &'static [u8]) -> SocketAddr {
    raw_upstream_lingering(reply, Duration::ZERO).await
}

/// Like [`raw_upstream`], but keeps each connection open for `linger` after answering
/// (as an upstream with a short keep-alive timeout does) before closing it.
pub async fn raw_upstream_lingering(reply: &'static [u8], linger: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
                // Without a linger the close follows the reply at once (no scheduler turn
                // between them), so both can reach statuslens in one read.
                if !linger.is_zero() {
                    tokio::time::sleep(linger).await;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A port with nothing listening on it.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The real statuslens binary, running.
pub struct Proc {
    child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub lines: Arc<Mutex<Vec<String>>>,
    /// The threads copying stdout and stderr into `lines`; they end at the pipes' EOF.
    readers: Vec<std::thread::JoinHandle<()>>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_statuslens")
}

impl Proc {
    /// Starts `statuslens run ARGS` (loopback port 0 unless ARGS say otherwise) and waits
    /// for its "listening" line.
    pub fn start(args: &[&str]) -> Proc {
        Proc::start_env(args, &[])
    }

    /// Like `start`, with extra environment variables for the child only.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(bin());
        cmd.envs(env.iter().copied());
        cmd.arg("run");
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if !args.contains(&"--admin") {
            cmd.args(["--admin", "127.0.0.1:0"]);
        }
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start statuslens");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        let l2 = lines.clone();
        let stdout = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if line.contains("\"listening\"") {
                    let _ = tx.send(line.clone());
                }
                l2.lock().unwrap().push(line);
            }
        });
        let err = child.stderr.take().unwrap();
        let l3 = lines.clone();
        let stderr = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l3.lock().unwrap().push(format!("stderr: {line}"));
            }
        });
        let line = match rx.recv_timeout(DEADLINE) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("statuslens did not start: {:?}", lines.lock().unwrap());
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        Proc {
            proxy: v["proxy"].as_str().unwrap().parse().unwrap(),
            admin: v["admin"].as_str().unwrap().parse().unwrap(),
            child,
            lines,
            readers: vec![stdout, stderr],
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Log lines that parse as JSON access-log entries.
    pub fn access_lines(&self) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "statuslens::access")
            .collect()
    }

    /// Polls until at least `n` access lines are written (lines are written by a
    /// separate thread, after the response), and returns them all.
    pub async fn wait_access_lines(&self, n: usize) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            let lines = self.access_lines();
            if lines.len() >= n {
                return lines;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{n} access lines, got {}:\n{}",
                lines.len(),
                self.all_output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn all_output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends a signal (`TERM`, `HUP`, …) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits until some output line contains `needle`.
    pub fn wait_output(&self, needle: &str) {
        let start = Instant::now();
        while !self.all_output().contains(needle) {
            assert!(
                start.elapsed() < DEADLINE,
                "no {needle:?} in output:\n{}",
                self.all_output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for an output line that `wanted` accepts and returns it (log lines reach
    /// stdout in batches, up to 100 ms after they were logged).
    pub fn wait_line(&self, wanted: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let out = self.all_output();
            if let Some(line) = out.lines().find(|l| wanted(l)) {
                return line.to_string();
            }
            assert!(start.elapsed() < DEADLINE, "no such line in output:\n{out}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit, returning its exit code; by then `lines` holds
    /// everything it wrote (its last lines may be written just before it exits).
    pub fn wait_exit(&mut self) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            if let Some(s) = self.child.try_wait().unwrap() {
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub type HttpClient = Client<HttpConnector, TestBody>;

/// (HTTP/2 client, `proxy.fast_path`) for every way a request reaches its upstream: the
/// fast path, the fast pools behind h2c (`fastclient`), and hyper's client from either.
pub const CLIENT_PATHS: [(bool, bool); 4] =
    [(false, true), (true, true), (false, false), (true, false)];

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// Sends a request and reads the whole response.
pub async fn send(c: &HttpClient, req: Request<TestBody>) -> (http::response::Parts, Bytes) {
    let resp = tokio::time::timeout(DEADLINE, c.request(req))
        .await
        .expect("response within deadline")
        .expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts, body)
}

pub async fn get(c: &HttpClient, url: &str) -> (http::response::Parts, Bytes) {
    send(c, Request::get(url).body(full(Bytes::new())).unwrap()).await
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text exposition format (no timestamps, which we never emit).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value.parse().expect("numeric value");
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                let mut s = body;
                while !s.is_empty() {
                    let (k, r) = s.split_once("=\"").expect("label=");
                    let mut val = String::new();
                    let mut chars = r.char_indices();
                    let mut end = 0;
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => {
                                let (_, n) = chars.next().unwrap();
                                val.push(if n == 'n' { '\n' } else { n });
                            }
                            '"' => {
                                end = i + 1;
                                break;
                            }
                            c => val.push(c),
                        }
                    }
                    labels.insert(k.to_string(), val);
                    s = r[end..].trim_start_matches(',');
                }
                (name.to_string(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

pub async fn metrics(p: &Proc) -> Vec<Sample> {
    let (parts, body) = get(&client(), &p.admin_url("/metrics")).await;
    assert_eq!(parts.status, 200);
    parse_metrics(std::str::from_utf8(&body).unwrap())
}

/// Sum of `name` samples whose labels include all of `want`.
pub fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Metrics once at least `n` responses are counted (all series together).
/// A route's gauge, when the series exists (a gauge at 0 and no series differ here).
pub fn gauge(samples: &[Sample], name: &str, route: &str) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && s.labels.get("route").map(String::as_str) == Some(route))
        .map(|s| s.value)
}

pub async fn wait_responses(p: &Proc, n: f64) -> Vec<Sample> {
    wait_metrics(p, &format!("{n} responses counted"), |m| {
        sum(m, "statuslens_responses_total", &[]) >= n
    })
    .await
}

/// Whether no request is in flight. A scrape reads the collectors one by one (in the
/// registry's hash order, which differs from process to process), so the scrape that
/// first shows a request counted may have read this gauge before it fell: a test that
/// asserts both waits for both.
pub fn settled(samples: &[Sample]) -> bool {
    sum(samples, "statuslens_requests_in_flight", &[]) == 0.0
}

/// Polls until `n` responses are counted, with their durations (recorded just after
/// the count), and none is in flight (see [`settled`]).
pub async fn wait_settled(p: &Proc, n: f64) -> Vec<Sample> {
    wait_metrics(p, &format!("{n} responses counted, none in flight"), |m| {
        sum(m, "statuslens_responses_total", &[]) >= n
            && sum(m, "statuslens_request_duration_seconds_count", &[]) >= n
            && settled(m)
    })
    .await
}

/// `statuslens_responses_total` for one code from one source (`upstream`, `proxy`, …).
pub fn responses(samples: &[Sample], code: &str, source: &str) -> f64 {
    sum(
        samples,
        "statuslens_responses_total",
        &[("code", code), ("source", source)],
    )
}

/// The count of client connections refused before a request, of `kind`.
pub fn client_errors(samples: &[Sample], kind: &str) -> f64 {
    sum(samples, "statuslens_client_errors_total", &[("kind", kind)])
}

/// Polls the metrics until `check` holds or the deadline passes.
pub async fn wait_metrics(p: &Proc, what: &str, check: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let start = Instant::now();
    loop {
        let m = metrics(p).await;
        if check(&m) {
            return m;
        }
        if start.elapsed() > DEADLINE {
            panic!("timed out waiting for {what}; last metrics: {m:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes a config file in a fresh temp dir and returns its path.
pub fn write_config(text: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "statuslens-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("statuslens.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts statuslens with the `[proxy]` lines `settings` and one route, `default`, to
/// `upstream`.
pub fn start_with_proxy_settings(settings: &str, upstream: SocketAddr) -> Proc {
    let cfg = write_config(&format!(
        "[proxy]\n{settings}\n\n[[routes]]\nname = \"default\"\nupstream = \"http://{upstream}\"\n"
    ));
    Proc::start(&["--config", cfg.to_str().unwrap()])
}

/// Reads a raw socket until the server closes it; panics (naming `what`) if it is still
/// open after the deadline.
pub async fn read_until_closed(s: &mut tokio::net::TcpStream, what: &str) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut got))
        .await
        .unwrap_or_else(|_| panic!("{what}: connection left open"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    got
}

/// Whether `b` holds a whole response: its head, then a body of its Content-Length.
pub fn whole_response(b: &[u8]) -> bool {
    let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&b[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    b.len() >= end + 4 + length
}

/// Reads a raw socket into `got` until `done(got)` holds; panics if the server closes
/// first or the deadline passes.
pub async fn read_until(
    s: &mut tokio::net::TcpStream,
    got: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> bool,
) {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done(got) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("deadline passed with {:?}", String::from_utf8_lossy(got)))
            .expect("read");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(got));
        got.extend_from_slice(&buf[..n]);
    }
}

/// Reads a response's status line (up to the first CRLF) from a raw socket, byte by
/// byte, so it works however the server's writes are split; the rest stays unread.
pub async fn read_status_line(s: &mut tokio::net::TcpStream) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !got.ends_with(b"\r\n") {
        let n = tokio::time::timeout_at(deadline, s.read(&mut byte))
            .await
            .expect("status line within deadline")
            .expect("read");
        assert!(
            n > 0,
            "closed before a status line: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.push(byte[0]);
    }
    String::from_utf8_lossy(&got).trim_end().to_string()
}

/// Opens a WebSocket to the test upstream's `/ws` (an echo) through the proxy at
/// `addr`; returns the connection, past the response head, and that head, lower-cased.
pub async fn open_websocket(addr: SocketAddr) -> (tokio::net::TcpStream, String) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    // Byte by byte: what follows the head is the tunnel's, not the head's.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, tokio::io::AsyncReadExt::read(&mut s, &mut b))
            .await
            .expect("response head within the deadline")
            .unwrap();
        assert_eq!(n, 1, "connection closed during head");
        head.push(b[0]);
    }
    (s, String::from_utf8(head).unwrap().to_ascii_lowercase())
}

/// A TCP stream whose first write is preceded by `header`, in the same write: an L4
/// balancer sends its PROXY protocol header with the client's first bytes (a request
/// head, a TLS ClientHello), so the server reads both at once.
pub struct HeaderFirst {
    inner: tokio::net::TcpStream,
    header: Option<Vec<u8>>,
}

impl HeaderFirst {
    /// Connects to `addr`; `header` goes out with the first write.
    pub async fn connect(addr: SocketAddr, header: &[u8]) -> HeaderFirst {
        HeaderFirst {
            inner: tokio::net::TcpStream::connect(addr).await.unwrap(),
            header: Some(header.to_vec()),
        }
    }

    /// The connection's own address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr().unwrap()
    }
}

impl tokio::io::AsyncRead for HeaderFirst {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for HeaderFirst {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let Some(header) = &self.header else {
            return std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        };
        let both = [&header[..], buf].concat();
        let n = std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_write(cx, &both))?;
        // A fresh loopback socket takes a few hundred bytes in one write.
        assert_eq!(n, both.len(), "header and first bytes in one write");
        self.header = None;
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Waits for `child` to exit, polling; past `limit` it is killed and the test fails,
/// saying `what` (a process that should end must not hang the suite).
pub fn exit_within(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A helper program (Prometheus, Alertmanager, HAProxy) killed and reaped on drop, so a
/// failing test leaves none behind.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

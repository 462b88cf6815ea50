//! Load generator for benchmarking regcache the way registry clients use it: `CONNECT` to the
//! proxy, TLS inside the tunnel trusting regcache's CA, then HTTP/1.1 requests.
//!
//! ```sh
//! cargo run --release --example loadgen -- --proxy 127.0.0.1:3128 --ca ca/ca.crt \
//!     --target ghcr.io:443 --path /v2/org/app/manifests/v1 \
//!     --header 'Accept: application/vnd.oci.image.manifest.v1+json' --connections 8 --duration 10s
//! ```
//!
//! Prints exactly one JSON line on stdout:
//! `{"mode","connections","target_rate","requests","errors","seconds","rps","p50_ms","p90_ms","p99_ms","max_ms"}`.
//! `requests` counts every request that finished inside the measured window (after warmup),
//! `errors` those among them that failed or had an unexpected status, and `rps` is the
//! successful ones per second. Percentiles are over successful requests only (`null` when there
//! were none). Notes for humans (TLS resumption, backlog) go to stderr.
//!
//! Only ever point it at loopback addresses: it sends as fast as it can.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures_util::future::{self, Either};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// An error that aborts the run before any load is sent (exit status 1).
type SetupError = String;

/// The decrypted HTTP stream inside one tunnel.
type Io = TokioIo<TlsStream<TcpStream>>;

/// Longest CONNECT response head accepted; regcache's is far smaller.
const MAX_CONNECT_HEAD: usize = 8 * 1024;

/// Pause after a failed tunnel in keepalive mode, so a dead proxy is not hammered in a tight
/// loop that only measures how fast the kernel refuses connections.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// How long a finished tunnel may take to close cleanly before it is simply dropped.
const LINGER: Duration = Duration::from_millis(100);

#[derive(Parser, Debug)]
#[command(about = "HTTP load through regcache's CONNECT + TLS interception; one JSON line on stdout")]
struct Args {
    /// regcache's listen address.
    #[arg(long, value_name = "ADDR:PORT")]
    proxy: String,
    /// PEM CA certificate(s) to trust inside the tunnel (regcache's `ca.crt`).
    #[arg(long, value_name = "FILE")]
    ca: PathBuf,
    /// CONNECT target; its host is also the TLS server name and `Host`.
    #[arg(long, value_name = "HOST:PORT")]
    target: String,
    /// Request path (origin form), e.g. /v2/org/app/manifests/v1.
    #[arg(long, default_value = "/v2/")]
    path: String,
    /// HEAD or GET; GET bodies are read fully and discarded.
    #[arg(long, value_enum, ignore_case = true, default_value_t = HttpMethod::Head)]
    method: HttpMethod,
    /// Extra request header, repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// keepalive: one long-lived tunnel per connection; new-tunnel: connect, CONNECT and TLS
    /// per request.
    #[arg(long, value_enum, default_value_t = Mode::Keepalive)]
    mode: Mode,
    /// Concurrent connections (workers).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connections: u32,
    /// Measured time, e.g. 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unrecorded time before measuring.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Total requests per second, open loop; absent = as fast as possible (closed loop).
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Status counted as success; anything else is an error.
    #[arg(long, default_value_t = 200)]
    expect_status: u16,
    /// Turn TLS session resumption off: every tunnel does a full handshake, like Go clients
    /// whose `tls.Config` has no `ClientSessionCache` (net/http's default).
    #[arg(long)]
    no_resume: bool,
    /// A request not answered (and its body read) within this time is an error.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum HttpMethod {
    Head,
    Get,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Keepalive,
    NewTunnel,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Keepalive => "keepalive",
            Mode::NewTunnel => "new-tunnel",
        }
    }
}

/// `10s`, `500ms`, `2m` or a bare number of seconds (fractions allowed).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 10s, 500ms, 1m"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("{s:?}: expected a positive number of requests per second")),
    }
}

/// Everything a worker needs, built once and shared: in particular one `ClientConfig`, so its
/// session cache lets new tunnels resume TLS like real clients do.
struct Target {
    proxy: SocketAddr,
    authority: String,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    method: Method,
    uri: Uri,
    /// `Host` first, then the `--header`s.
    headers: HeaderMap,
    expect: StatusCode,
    timeout: Duration,
}

/// The timeline of the run: load starts at `start`, is recorded from `measure` and stops at `end`.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    measure: Instant,
    end: Instant,
}

/// Counters for TLS handshakes, to tell whether new tunnels resumed sessions.
#[derive(Default)]
struct TlsStats {
    full: AtomicU64,
    resumed: AtomicU64,
    /// See [`describe_tls`]; from the first handshake.
    negotiated: OnceLock<String>,
}

/// Why a request did not count as a success.
enum Failure {
    /// A complete answer with another status than `--expect-status`: the tunnel is still fine.
    Status(StatusCode),
    /// Connect, CONNECT, TLS, HTTP or timeout trouble: a keepalive tunnel is replaced after it.
    Transport(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(status) => write!(f, "status {status}"),
            Failure::Transport(message) => f.write_str(message),
        }
    }
}

/// What one worker saw inside the measured window.
#[derive(Default)]
struct Tally {
    /// Latencies of successful requests, in microseconds.
    latencies_us: Vec<u32>,
    errors: u64,
    /// Scheduled (open-loop) requests never sent because the run ended first.
    unsent: u64,
    /// See [`Schedule::max_oversleep`].
    max_oversleep: Duration,
    first_error: Option<String>,
}

impl Tally {
    /// Records one finished request if it completed inside the measured window.
    fn record(&mut self, window: &Window, intended: Instant, outcome: Result<(), Failure>) {
        let now = Instant::now();
        if now < window.measure || now > window.end {
            return;
        }
        match outcome {
            Ok(()) => {
                let us = now.saturating_duration_since(intended).as_micros();
                self.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }

    /// Takes the schedule's end-of-run figures.
    fn close(mut self, schedule: &Schedule, end: Instant) -> Self {
        self.unsent = schedule.unsent(end);
        self.max_oversleep = schedule.max_oversleep;
        self
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        self.unsent += other.unsent;
        self.max_oversleep = self.max_oversleep.max(other.max_oversleep);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// When each request of one worker is meant to be sent.
///
/// Open loop: a fixed grid, so a slow response delays later sends but not their intended
/// times, and their latency includes the wait (no coordinated omission). Closed loop: "now".
struct Schedule {
    interval: Option<Duration>,
    next: Instant,
    /// Latest wake-up of tokio's 1 ms timer after a due time, for the stderr notes.
    max_oversleep: Duration,
}

impl Schedule {
    fn new(args: &Args, worker: u32, start: Instant) -> Self {
        let interval = args
            .rate
            .map(|rate| Duration::from_secs_f64(f64::from(args.connections) / rate));
        // Stagger workers across one interval so their sends do not arrive in bursts.
        let offset = interval.map_or(Duration::ZERO, |i| {
            i.mul_f64(f64::from(worker) / f64::from(args.connections))
        });
        Schedule {
            interval,
            next: start + offset,
            max_oversleep: Duration::ZERO,
        }
    }

    /// Waits until the next request is due and returns the time its latency counts from, or
    /// `None` once it falls at or after `end`.
    ///
    /// A request already overdue (an earlier response was slow) counts from its due time. One
    /// that had to be waited for counts from the wake-up: tokio's timer fires up to ~1 ms late,
    /// and charging that to the server would swamp sub-millisecond latencies.
    async fn next(&mut self, end: Instant) -> Option<Instant> {
        let now = Instant::now();
        let Some(interval) = self.interval else {
            return (now < end).then_some(now);
        };
        let due = self.next;
        if due >= end {
            return None;
        }
        self.next += interval;
        if due <= now {
            return Some(due);
        }
        tokio::time::sleep_until(due).await;
        let woke = Instant::now();
        self.max_oversleep = self.max_oversleep.max(woke - due);
        Some(woke)
    }

    /// Requests that were due before `end` but never sent.
    fn unsent(&self, end: Instant) -> u64 {
        match self.interval {
            Some(i) if self.next < end => ((end - self.next).as_secs_f64() / i.as_secs_f64()).ceil() as u64,
            _ => 0,
        }
    }
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(format!("cannot start the tokio runtime: {e}")));
    match runtime.block_on(run(args)) {
        Ok(line) => println!("{line}"),
        Err(e) => fail(e),
    }
}

/// Setup failed: one line on stderr, exit status 1, nothing on stdout.
fn fail(message: String) -> ! {
    eprintln!("loadgen: {message}");
    std::process::exit(1);
}

/// Sets up, checks the path with one request, runs the workers and returns the JSON line.
async fn run(args: Args) -> Result<String, SetupError> {
    if args.duration.is_zero() {
        return Err("--duration must be more than 0".into());
    }
    let target = Arc::new(build_target(&args).await?);
    let tls_stats = Arc::new(TlsStats::default());
    preflight(&target, &tls_stats).await?;

    let start = Instant::now();
    let window = Window {
        start,
        measure: start + args.warmup,
        end: start + args.warmup + args.duration,
    };
    let args = Arc::new(args);
    let workers: Vec<_> = (0..args.connections)
        .map(|i| {
            let (args, target, tls_stats) = (args.clone(), target.clone(), tls_stats.clone());
            tokio::spawn(async move {
                let schedule = Schedule::new(&args, i, window.start);
                match args.mode {
                    Mode::Keepalive => keepalive_worker(&target, &tls_stats, window, schedule).await,
                    Mode::NewTunnel => new_tunnel_worker(&target, &tls_stats, window, schedule).await,
                }
            })
        })
        .collect();
    let mut total = Tally::default();
    for worker in workers {
        total.merge(worker.await.map_err(|e| format!("worker panicked: {e}"))?);
    }
    report_notes(&total, &tls_stats);
    Ok(summary(&args, &window, total))
}

/// Resolves the proxy, loads the CA and prepares the request parts once.
async fn build_target(args: &Args) -> Result<Target, SetupError> {
    let proxy = tokio::net::lookup_host(&args.proxy)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| format!("--proxy {:?}: expected ADDR:PORT", args.proxy))?;
    let (host, port) = args
        .target
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        .ok_or_else(|| format!("--target {:?}: expected HOST:PORT", args.target))?;
    let server_name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
        .map_err(|e| format!("--target {:?}: {e}", args.target))?;
    let host_header = if port == "443" { host } else { &args.target };
    let mut headers = HeaderMap::new();
    headers.insert(
        hyper::header::HOST,
        HeaderValue::try_from(host_header).map_err(|e| format!("--target: {e}"))?,
    );
    headers.extend(parse_headers(&args.headers)?);
    let uri: Uri = args
        .path
        .parse()
        .ok()
        .filter(|u: &Uri| u.scheme().is_none() && u.path().starts_with('/'))
        .ok_or_else(|| format!("--path {:?}: expected an origin-form path like /v2/", args.path))?;
    Ok(Target {
        proxy,
        authority: args.target.clone(),
        server_name,
        tls: TlsConnector::from(client_config(&args.ca, !args.no_resume)?),
        method: match args.method {
            HttpMethod::Head => Method::HEAD,
            HttpMethod::Get => Method::GET,
        },
        uri,
        headers,
        expect: StatusCode::from_u16(args.expect_status).map_err(|e| format!("--expect-status: {e}"))?,
        timeout: args.timeout,
    })
}

/// A client config trusting only `ca`, on aws-lc-rs, offering only HTTP/1.1 (we drive hyper's
/// http1 client). With `resume`, rustls' default in-memory session cache stays on, so tunnels
/// resume like rustls clients do: it keeps at most 8 single-use TLS 1.3 tickets per server, so
/// with more concurrent new tunnels than that some handshakes are full.
fn client_config(ca: &PathBuf, resume: bool) -> Result<Arc<rustls::ClientConfig>, SetupError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("--ca {}: {e}", ca.display()))?;
        roots.add(cert).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("--ca {}: no certificate in it", ca.display()));
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // Prefer AES-128-GCM-SHA256 like Go clients (docker, containerd, skopeo) do on AES hardware.
    // rustls' own order puts AES-256-GCM-SHA384 first, whose SHA-384 key schedule costs both
    // ends ~20% more CPU per handshake.
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let provider = Arc::new(provider);
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS config: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

fn parse_headers(raw: &[String]) -> Result<HeaderMap, SetupError> {
    let mut headers = HeaderMap::new();
    for line in raw {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("--header {line:?}: expected 'Name: value'"))?;
        let name = HeaderName::try_from(name.trim()).map_err(|e| format!("--header {line:?}: {e}"))?;
        let value = HeaderValue::try_from(value.trim()).map_err(|e| format!("--header {line:?}: {e}"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// One request before the clock starts: fails setup when the proxy, CONNECT or TLS does not
/// work (so a typo is not reported as a run full of errors), warns on an unexpected status,
/// and leaves a TLS session in the cache so new-tunnel mode resumes from its first request.
async fn preflight(target: &Target, tls_stats: &TlsStats) -> Result<(), SetupError> {
    let attempt = async {
        let (mut sender, conn) = open_tunnel(target, tls_stats).await?;
        drive(conn, async move { send_one(&mut sender, target).await }).await
    };
    let status = tokio::time::timeout(target.timeout, attempt)
        .await
        .map_err(|_| format!("preflight: no complete response within {:?}", target.timeout))?
        .map_err(|e| format!("preflight: {e}"))?;
    if status != target.expect {
        eprintln!(
            "loadgen: warning: preflight {} {} got {status}, expected {} (those will count as errors)",
            target.method, target.uri, target.expect
        );
    }
    Ok(())
}

/// Runs `requests` (which owns the connection's `SendRequest`) while driving `conn` in the
/// same task: no spawned connection task, so no cross-thread wakeup per request.
///
/// When `requests` finishes first its sender is gone, and `conn` gets [`LINGER`] to close
/// cleanly (TLS close_notify, FIN) but never holds up the end of the run. When `conn` ends
/// first (the tunnel broke), `requests` sees that as errors from its sender.
async fn drive<T>(conn: Connection<Io, Empty<Bytes>>, requests: impl Future<Output = T>) -> T {
    let requests = pin!(requests);
    let conn = pin!(conn);
    match future::select(requests, conn).await {
        Either::Left((out, conn)) => {
            let _ = tokio::time::timeout(LINGER, conn).await;
            out
        }
        Either::Right((_, requests)) => requests.await,
    }
}

/// TCP connect, `CONNECT`, TLS handshake and hyper's http1 handshake: one fresh tunnel.
async fn open_tunnel(
    target: &Target,
    tls_stats: &TlsStats,
) -> Result<(SendRequest<Empty<Bytes>>, Connection<Io, Empty<Bytes>>), String> {
    let mut tcp = TcpStream::connect(target.proxy)
        .await
        .map_err(|e| format!("connect to proxy {}: {e}", target.proxy))?;
    tcp.set_nodelay(true).map_err(|e| format!("set TCP_NODELAY: {e}"))?;
    proxy_connect(&mut tcp, &target.authority).await?;
    let tls = target
        .tls
        .connect(target.server_name.clone(), tcp)
        .await
        .map_err(|e| format!("TLS handshake inside the tunnel: {e}"))?;
    let counter = match tls.get_ref().1.handshake_kind() {
        Some(rustls::HandshakeKind::Resumed) => &tls_stats.resumed,
        _ => &tls_stats.full,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    tls_stats.negotiated.get_or_init(|| describe_tls(tls.get_ref().1));
    http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {e}"))
}

/// "TLSv1_3, TLS13_AES_128_GCM_SHA256, X25519MLKEM768, http/1.1": what the handshakes cost
/// depends on these, so they are printed with the resumption counts.
fn describe_tls(conn: &rustls::ClientConnection) -> String {
    let version = conn.protocol_version().map(|v| format!("{v:?}"));
    let suite = conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite()));
    let group = conn.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name()));
    let alpn = conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
    [version, suite, group, alpn]
        .map(|x| x.unwrap_or_else(|| "?".into()))
        .join(", ")
}

/// Sends `CONNECT authority` and reads the proxy's answer head, byte-exact: the proxy sends
/// nothing after it until the client speaks TLS, so there is nothing to over-read.
async fn proxy_connect(tcp: &mut TcpStream, authority: &str) -> Result<(), String> {
    let head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    tcp.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("send CONNECT: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tcp
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read CONNECT answer: {e}"))?;
        if n == 0 {
            return Err("proxy closed the connection after CONNECT".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_CONNECT_HEAD {
            return Err("CONNECT answer head too long".into());
        }
    }
    let status_line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    let status_line = String::from_utf8_lossy(status_line);
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(format!("CONNECT {authority} refused: {status_line}")),
    }
}

/// Sends one request on an open tunnel and reads the body to its end.
async fn send_one(sender: &mut SendRequest<Empty<Bytes>>, target: &Target) -> Result<StatusCode, String> {
    let mut request = Request::new(Empty::<Bytes>::new());
    *request.method_mut() = target.method.clone();
    *request.uri_mut() = target.uri.clone();
    *request.headers_mut() = target.headers.clone();
    sender.ready().await.map_err(|e| format!("connection: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        frame.map_err(|e| format!("response body: {e}"))?;
    }
    Ok(status)
}

/// One request with the per-request timeout, judged against the expected status.
async fn checked_request(sender: &mut SendRequest<Empty<Bytes>>, target: &Target) -> Result<(), Failure> {
    match tokio::time::timeout(target.timeout, send_one(sender, target)).await {
        Err(_) => Err(timed_out(target)),
        Ok(Err(e)) => Err(Failure::Transport(e)),
        Ok(Ok(status)) if status == target.expect => Ok(()),
        Ok(Ok(status)) => Err(Failure::Status(status)),
    }
}

fn timed_out(target: &Target) -> Failure {
    Failure::Transport(format!("no complete response within {:?}", target.timeout))
}

/// Keeps one tunnel open and sends requests over it one after another; reopens it after an
/// error (counted) so a dropped connection does not silence the worker.
async fn keepalive_worker(target: &Target, tls_stats: &TlsStats, window: Window, mut schedule: Schedule) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < window.end {
        let opening = tokio::time::timeout(target.timeout, open_tunnel(target, tls_stats));
        let failure = match tokio::time::timeout_at(window.end, opening).await {
            Err(_) => break,
            Ok(Err(_)) => timed_out(target),
            Ok(Ok(Err(e))) => Failure::Transport(e),
            Ok(Ok(Ok((sender, conn)))) => {
                let requests = drive_tunnel(sender, target, window, &mut schedule, &mut tally);
                if drive(conn, requests).await {
                    break;
                }
                continue;
            }
        };
        tally.record(&window, Instant::now(), Err(failure));
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
    tally.close(&schedule, window.end)
}

/// Sends scheduled requests over one tunnel. Returns true when the run is over, false when the
/// tunnel failed and should be reopened.
async fn drive_tunnel(
    mut sender: SendRequest<Empty<Bytes>>,
    target: &Target,
    window: Window,
    schedule: &mut Schedule,
    tally: &mut Tally,
) -> bool {
    while let Some(intended) = schedule.next(window.end).await {
        let Ok(outcome) = tokio::time::timeout_at(window.end, checked_request(&mut sender, target)).await else {
            return true; // Still in flight at the end: neither a success nor an error.
        };
        // After a transport error the connection's state is unknown (a timed-out response
        // may still be in flight), so the tunnel is replaced rather than reused.
        let broken = matches!(outcome, Err(Failure::Transport(_)));
        tally.record(&window, intended, outcome);
        if broken {
            return false;
        }
    }
    true
}

/// Every request on a fresh tunnel: TCP connect, CONNECT, TLS (resumed when the proxy allows),
/// one request, close. Latency covers all of it.
async fn new_tunnel_worker(target: &Target, tls_stats: &TlsStats, window: Window, mut schedule: Schedule) -> Tally {
    let mut tally = Tally::default();
    while let Some(intended) = schedule.next(window.end).await {
        let attempt = tokio::time::timeout(target.timeout, one_tunnel_request(target, tls_stats));
        match tokio::time::timeout_at(window.end, attempt).await {
            Err(_) => break, // In flight at the end: not counted.
            Ok(Err(_)) => tally.record(&window, intended, Err(timed_out(target))),
            Ok(Ok(outcome)) => tally.record(&window, intended, outcome),
        }
    }
    tally.close(&schedule, window.end)
}

async fn one_tunnel_request(target: &Target, tls_stats: &TlsStats) -> Result<(), Failure> {
    let (mut sender, conn) = open_tunnel(target, tls_stats).await.map_err(Failure::Transport)?;
    drive(conn, async move { checked_request(&mut sender, target).await }).await
}

/// Human-readable notes on stderr: TLS resumption, the first error, open-loop backlog.
fn report_notes(total: &Tally, tls_stats: &TlsStats) {
    let full = tls_stats.full.load(Ordering::Relaxed);
    let resumed = tls_stats.resumed.load(Ordering::Relaxed);
    eprintln!(
        "loadgen: TLS handshakes: {} ({resumed} resumed, {full} full; session resumption {}); {}",
        full + resumed,
        if resumed > 0 { "happened" } else { "did not happen" },
        tls_stats.negotiated.get().map_or("?", String::as_str)
    );
    if let Some(e) = &total.first_error {
        eprintln!("loadgen: {} errors; first: {e}", total.errors);
    }
    if total.max_oversleep > Duration::ZERO {
        eprintln!(
            "loadgen: timer wake-ups were up to {:.3} ms late (not counted as latency)",
            total.max_oversleep.as_secs_f64() * 1000.0
        );
    }
    if total.unsent > 0 {
        eprintln!(
            "loadgen: {} scheduled requests were never sent (the target rate was not reached)",
            total.unsent
        );
    }
}

/// The stdout line; a struct rather than `json!` so the keys keep this order.
#[derive(Serialize)]
struct Summary {
    mode: &'static str,
    connections: u32,
    target_rate: Option<f64>,
    requests: u64,
    errors: u64,
    seconds: f64,
    rps: f64,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
}

/// The one JSON line for stdout.
fn summary(args: &Args, window: &Window, mut total: Tally) -> String {
    let seconds = (window.end - window.measure).as_secs_f64();
    let ok = total.latencies_us.len() as u64;
    total.latencies_us.sort_unstable();
    let ms = |p: f64| percentile_us(&total.latencies_us, p).map(|us| round3(f64::from(us) / 1000.0));
    let summary = Summary {
        mode: args.mode.name(),
        connections: args.connections,
        target_rate: args.rate,
        requests: ok + total.errors,
        errors: total.errors,
        seconds: round3(seconds),
        rps: round3(ok as f64 / seconds),
        p50_ms: ms(50.0),
        p90_ms: ms(90.0),
        p99_ms: ms(99.0),
        max_ms: ms(100.0),
    };
    serde_json::to_string(&summary).expect("a struct of numbers and strings serializes")
}

/// Nearest-rank percentile of sorted samples; `None` when there are none.
fn percentile_us(sorted: &[u32], p: f64) -> Option<u32> {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

//! An in-process HTTPS registry for fault injection.
//!
//! It speaks just enough of the distribution API for a cache in front of it
//! (`/v2/`, manifests and blobs by GET/HEAD, tag lists) plus two extras:
//! `/cdn/<digest>` serves a blob (so a second instance can play the CDN a
//! registry redirects to) and `/token` hands out a fresh token per request.
//! Faults are programmed per path substring and can change at runtime;
//! [`FaultRegistry::stop`] and [`FaultRegistry::start`] take the listener
//! down (dropping every open connection) and bring it back on the same port.
//!
//! It runs on its own thread with its own tokio runtime (like
//! [`super::TokenServer`]), so it keeps serving while a test blocks.
//!
//! Manifests follow the real registry's content negotiation: a tag may point
//! at several manifests of different media types; the first one (in the
//! order they were tagged) whose media type the request's `Accept` lists is
//! answered, else `404 MANIFEST_UNKNOWN`. A request without `Accept` accepts
//! nothing (strict on purpose: a cache must forward the client's `Accept`);
//! `*/*` accepts everything. The same rule applies to manifests by digest.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_util::sync::CancellationToken;

use super::TestCa;

/// Response body type of the fault registry.
type FaultBody = BoxBody<Bytes, std::io::Error>;

/// Default body chunk size when no [`Fault::SlowBody`] applies.
const DEFAULT_CHUNK: usize = 64 * 1024;

/// A fault applied to requests whose path (with query) contains a substring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Announce the full `Content-Length`, send `n` body bytes, then abort
    /// the body (HTTP/1.1: the connection is dropped; HTTP/2: the stream is
    /// reset).
    CutAfter(u64),
    /// Same length, different content (every byte inverted).
    WrongBytes,
    /// Answer this status with a registry-style JSON error body; 429 and 503
    /// carry `Retry-After: 1`.
    Status(u16),
    /// Wait this long before sending the response headers.
    DelayHeaders(Duration),
    /// Send the body in `chunk`-byte pieces, waiting `every` before each
    /// piece after the first.
    SlowBody { chunk: usize, every: Duration },
    /// `307 Temporary Redirect` to `location` (absolute or relative).
    Redirect { location: String },
    /// A redirect with another status (301, 302, 303, 308).
    RedirectWith { status: u16, location: String },
    /// One more response header (e.g. `Cache-Control: max-age=5`), on whatever is answered.
    Header { name: String, value: String },
}

/// A programmed fault: which requests it hits, and how many times.
#[derive(Clone, Debug)]
pub struct FaultRule {
    path_contains: String,
    method: Option<String>,
    remaining: Option<usize>,
    fault: Fault,
}

impl FaultRule {
    /// `fault` for every request (any method) whose path and query contain
    /// `path_contains`, until removed.
    pub fn new(path_contains: &str, fault: Fault) -> Self {
        FaultRule {
            path_contains: path_contains.to_owned(),
            method: None,
            remaining: None,
            fault,
        }
    }

    /// Only for this method (`GET`, `HEAD`, …).
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    /// Only for the next `n` matching requests.
    pub fn times(mut self, n: usize) -> Self {
        self.remaining = Some(n);
        self
    }
}

/// One request the fault registry received.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// Path and query as received, e.g. `/cdn/sha256:…?sig=x`.
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// Every `Accept` header value, joined with `, `.
    pub accept: Option<String>,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The `If-None-Match` header, if any.
    pub if_none_match: Option<String>,
    /// `Host` header or `:authority`.
    pub host: Option<String>,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Status answered (0 until the response headers were produced).
    pub status: u16,
    /// Whether the whole response body was handed to the connection (true
    /// right away for responses without a body).
    pub body_complete: bool,
}

#[derive(Clone, Debug)]
struct StoredManifest {
    digest: String,
    media_type: String,
    bytes: Bytes,
}

#[derive(Default)]
struct Content {
    blobs: HashMap<String, Bytes>,
    /// Per repository, in insertion order.
    manifests: HashMap<String, Vec<StoredManifest>>,
    /// `(repo, tag)` → digests, in tagging order.
    tags: HashMap<(String, String), Vec<String>>,
}

struct State {
    content: Mutex<Content>,
    faults: Mutex<Vec<FaultRule>>,
    requests: Mutex<Vec<RequestRecord>>,
    connections: AtomicUsize,
    active_connections: AtomicUsize,
    tokens_issued: AtomicUsize,
    /// `Authorization` every `/v2/` request must carry (a private registry), if any.
    required_auth: Mutex<Option<String>>,
}

/// The listener currently running (absent while stopped).
struct Running {
    cancel: CancellationToken,
    done: std::sync::mpsc::Receiver<()>,
}

/// A running in-process registry with programmable faults; stops on drop.
pub struct FaultRegistry {
    addr: SocketAddr,
    names: Vec<String>,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<State>,
    handle: tokio::runtime::Handle,
    running: Mutex<Option<Running>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultRegistry {
    /// Starts serving on `127.0.0.1:0` with a certificate from `ca` for
    /// `names` (plus `127.0.0.1` and `localhost`), HTTP/1.1 and HTTP/2.
    pub fn new(ca: &TestCa, names: &[&str]) -> FaultRegistry {
        let mut all_names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        for extra in ["127.0.0.1", "localhost"] {
            if !all_names.iter().any(|n| n == extra) {
                all_names.push(extra.to_owned());
            }
        }
        let name_refs: Vec<&str> = all_names.iter().map(String::as_str).collect();
        let tls = ca.rustls_server_config(&name_refs);
        let state = Arc::new(State {
            content: Mutex::new(Content::default()),
            faults: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            active_connections: AtomicUsize::new(0),
            tokens_issued: AtomicUsize::new(0),
            required_auth: Mutex::new(None),
        });

        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fault-registry".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build fault registry runtime");
                handle_tx
                    .send(rt.handle().clone())
                    .expect("send fault registry runtime handle");
                rt.block_on(async {
                    let _ = shutdown_rx.await;
                });
            })
            .expect("spawn fault registry thread");
        let handle = handle_rx.recv().expect("fault registry runtime handle");

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fault registry listener");
        let addr = listener.local_addr().expect("fault registry listener address");
        let registry = FaultRegistry {
            addr,
            names: all_names,
            tls,
            state,
            handle,
            running: Mutex::new(None),
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        };
        registry.serve(listener);
        registry
    }

    /// Makes every `/v2/` request need HTTP basic `user:pass` (else `401` with a `Basic`
    /// challenge): a private registry.
    pub fn require_basic(&self, user: &str, pass: &str) {
        use base64::Engine as _;
        let value = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        );
        *self.state.required_auth.lock().expect("auth lock poisoned") = Some(value);
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TCP port (the same after [`FaultRegistry::stop`] and
    /// [`FaultRegistry::start`]).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port())
    }

    /// Names in its certificate.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    // ----- content -------------------------------------------------------

    /// Stores a blob (served under every repository and as
    /// `/cdn/<digest>`); returns its `sha256:<hex>` digest.
    pub fn put_blob(&self, data: impl Into<Bytes>) -> String {
        let data = data.into();
        let digest = super::sha256_digest(&data);
        self.content().blobs.insert(digest.clone(), data);
        digest
    }

    /// Removes a blob (later requests get 404 BLOB_UNKNOWN).
    pub fn delete_blob(&self, digest: &str) {
        self.content().blobs.remove(digest);
    }

    /// Stores a manifest in `repo` and, with `tag`, adds it to the manifests
    /// the tag points at (after any of another media type; one of the same
    /// media type is replaced). Returns its digest.
    pub fn put_manifest(&self, repo: &str, tag: Option<&str>, media_type: &str, bytes: impl Into<Bytes>) -> String {
        let bytes = bytes.into();
        let digest = super::sha256_digest(&bytes);
        let mut content = self.content();
        let list = content.manifests.entry(repo.to_owned()).or_default();
        if !list.iter().any(|m| m.digest == digest) {
            list.push(StoredManifest {
                digest: digest.clone(),
                media_type: media_type.to_owned(),
                bytes,
            });
        }
        if let Some(tag) = tag {
            let key = (repo.to_owned(), tag.to_owned());
            let mut digests = content.tags.get(&key).cloned().unwrap_or_default();
            let manifests = &content.manifests[repo];
            let type_of = |d: &str| manifests.iter().find(|m| m.digest == d).map(|m| m.media_type.clone());
            digests.retain(|d| type_of(d).as_deref() != Some(media_type));
            digests.push(digest.clone());
            content.tags.insert(key, digests);
        }
        digest
    }

    /// Points `repo:tag` at exactly the manifest `digest` (which must have
    /// been stored in `repo` with [`FaultRegistry::put_manifest`]).
    pub fn retag(&self, repo: &str, tag: &str, digest: &str) {
        let mut content = self.content();
        assert!(
            content
                .manifests
                .get(repo)
                .is_some_and(|list| list.iter().any(|m| m.digest == digest)),
            "retag {repo}:{tag} → {digest}: no such manifest in {repo}"
        );
        content
            .tags
            .insert((repo.to_owned(), tag.to_owned()), vec![digest.to_owned()]);
    }

    /// Removes `repo:tag` (the manifests stay reachable by digest).
    pub fn untag(&self, repo: &str, tag: &str) {
        self.content().tags.remove(&(repo.to_owned(), tag.to_owned()));
    }

    // ----- faults --------------------------------------------------------

    /// Sets `fault` for every request whose path contains `path_contains`,
    /// replacing earlier rules for exactly that substring.
    pub fn set_fault(&self, path_contains: &str, fault: Fault) {
        let mut faults = self.faults();
        faults.retain(|r| r.path_contains != path_contains);
        faults.push(FaultRule::new(path_contains, fault));
    }

    /// Adds a rule (kept alongside the others). Every matching rule applies:
    /// delays add up, the first status or redirect decides the answer, and
    /// body faults combine (e.g. slow, then cut).
    pub fn add_fault(&self, rule: FaultRule) {
        self.faults().push(rule);
    }

    /// Removes every rule for exactly `path_contains`.
    pub fn clear_fault(&self, path_contains: &str) {
        self.faults().retain(|r| r.path_contains != path_contains);
    }

    /// Removes every rule.
    pub fn clear_faults(&self) {
        self.faults().clear();
    }

    // ----- observation ---------------------------------------------------

    /// TCP connections accepted so far (all listener generations).
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state.requests.lock().expect("requests lock poisoned").clone()
    }

    /// Number of requests with `method` whose path (with query) contains
    /// `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.state
            .requests
            .lock()
            .expect("requests lock poisoned")
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path.contains(path_contains))
            .count()
    }

    /// Number of requests (any method) whose path contains `path_contains`.
    pub fn count_any(&self, path_contains: &str) -> usize {
        self.state
            .requests
            .lock()
            .expect("requests lock poisoned")
            .iter()
            .filter(|r| r.path.contains(path_contains))
            .count()
    }

    /// Requests with `method` whose path contains `path_contains` and whose
    /// body was sent completely.
    pub fn completed(&self, method: &str, path_contains: &str) -> usize {
        self.state
            .requests
            .lock()
            .expect("requests lock poisoned")
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path.contains(path_contains) && r.body_complete)
            .count()
    }

    /// Total number of requests received.
    pub fn request_count(&self) -> usize {
        self.state.requests.lock().expect("requests lock poisoned").len()
    }

    /// Tokens handed out by `/token`.
    pub fn tokens_issued(&self) -> usize {
        self.state.tokens_issued.load(Ordering::SeqCst)
    }

    /// Polls (up to `timeout`) until [`FaultRegistry::count`] reaches `n`;
    /// returns the last count.
    pub fn wait_for_count(&self, method: &str, path_contains: &str, n: usize, timeout: Duration) -> usize {
        super::poll_until(timeout, || {
            let c = self.count(method, path_contains);
            (c >= n).then_some(c)
        })
        .unwrap_or_else(|| self.count(method, path_contains))
    }

    // ----- outage --------------------------------------------------------

    /// Whether the listener is up.
    pub fn is_running(&self) -> bool {
        self.running.lock().expect("running lock poisoned").is_some()
    }

    /// Closes the listener and drops every open connection (in-flight
    /// responses are cut): the port then refuses connections. Idempotent.
    pub fn stop(&self) {
        let Some(running) = self.running.lock().expect("running lock poisoned").take() else {
            return;
        };
        running.cancel.cancel();
        running
            .done
            .recv_timeout(Duration::from_secs(5))
            .expect("fault registry accept loop stopped");
        let closed = super::poll_until(Duration::from_secs(5), || {
            (self.state.active_connections.load(Ordering::SeqCst) == 0).then_some(())
        });
        assert!(closed.is_some(), "fault registry connections did not close within 5 s");
    }

    /// Listens again on the same port after [`FaultRegistry::stop`]. No-op
    /// when running.
    pub fn start(&self) {
        if self.is_running() {
            return;
        }
        let mut last_err = None;
        let listener = super::poll_until(Duration::from_secs(5), || {
            match std::net::TcpListener::bind(self.addr) {
                Ok(l) => Some(l),
                Err(e) => {
                    last_err = Some(e);
                    None
                }
            }
        })
        .unwrap_or_else(|| panic!("rebind fault registry on {}: {last_err:?}", self.addr));
        self.serve(listener);
    }

    fn serve(&self, listener: std::net::TcpListener) {
        listener
            .set_nonblocking(true)
            .expect("set fault registry listener non-blocking");
        let cancel = CancellationToken::new();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        self.handle.spawn(accept_loop(
            listener,
            self.tls.clone(),
            self.state.clone(),
            cancel.clone(),
            done_tx,
        ));
        *self.running.lock().expect("running lock poisoned") = Some(Running { cancel, done: done_rx });
    }

    fn content(&self) -> std::sync::MutexGuard<'_, Content> {
        self.state.content.lock().expect("content lock poisoned")
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Vec<FaultRule>> {
        self.state.faults.lock().expect("faults lock poisoned")
    }
}

impl Drop for FaultRegistry {
    fn drop(&mut self) {
        if let Some(running) = self.running.lock().map(|mut r| r.take()).unwrap_or(None) {
            running.cancel.cancel();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if std::thread::panicking() {
            let requests = self.state.requests.lock().map(|r| r.clone()).unwrap_or_default();
            eprintln!("----- fault registry {} ({:?}) requests -----", self.addr, self.names);
            for r in requests {
                eprintln!(
                    "{} {} {} status={} complete={} auth={:?} accept={:?} range={:?}",
                    r.version, r.method, r.path, r.status, r.body_complete, r.authorization, r.accept, r.range
                );
            }
            eprintln!("----- end -----");
        }
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<State>,
    cancel: CancellationToken,
    done: std::sync::mpsc::Sender<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("register fault registry listener");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let _ = tcp.set_nodelay(true);
        state.connections.fetch_add(1, Ordering::SeqCst);
        state.active_connections.fetch_add(1, Ordering::SeqCst);
        let acceptor = acceptor.clone();
        let conn_state = state.clone();
        let conn_cancel = cancel.clone();
        tokio::spawn(async move {
            let serve = async {
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let svc_state = conn_state.clone();
                let svc = service_fn(move |req| handle(svc_state.clone(), req));
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            };
            tokio::select! {
                _ = conn_cancel.cancelled() => {}
                _ = serve => {}
            }
            conn_state.active_connections.fetch_sub(1, Ordering::SeqCst);
        });
    }
    drop(listener);
    let _ = done.send(());
}

/// What the matching fault rules ask for.
#[derive(Default)]
struct Applied {
    delay: Duration,
    answer: Option<Fault>,
    cut_after: Option<u64>,
    wrong_bytes: bool,
    slow: Option<(usize, Duration)>,
    headers: Vec<(String, String)>,
}

fn applicable_faults(state: &State, method: &str, path: &str) -> Applied {
    let mut applied = Applied::default();
    let mut faults = state.faults.lock().expect("faults lock poisoned");
    for rule in faults.iter_mut() {
        if !path.contains(&rule.path_contains)
            || rule.method.as_deref().is_some_and(|m| m != method)
            || rule.remaining == Some(0)
        {
            continue;
        }
        if let Some(n) = &mut rule.remaining {
            *n -= 1;
        }
        match &rule.fault {
            Fault::DelayHeaders(d) => applied.delay += *d,
            Fault::CutAfter(n) => applied.cut_after = Some(applied.cut_after.map_or(*n, |m| m.min(*n))),
            Fault::WrongBytes => applied.wrong_bytes = true,
            Fault::SlowBody { chunk, every } => applied.slow = Some(((*chunk).max(1), *every)),
            Fault::Header { name, value } => applied.headers.push((name.clone(), value.clone())),
            f @ (Fault::Status(_) | Fault::Redirect { .. } | Fault::RedirectWith { .. }) => {
                if applied.answer.is_none() {
                    applied.answer = Some(f.clone());
                }
            }
        }
    }
    faults.retain(|r| r.remaining != Some(0));
    applied
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<FaultBody>, Infallible> {
    let method = req.method().as_str().to_owned();
    let path = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned());
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(String::from);
    let accept_values: Vec<String> = req
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(String::from)
        .collect();
    let record = RequestRecord {
        method: method.clone(),
        path: path.clone(),
        authorization: header("authorization"),
        accept: (!accept_values.is_empty()).then(|| accept_values.join(", ")),
        range: header("range"),
        if_none_match: header("if-none-match"),
        host: header("host").or_else(|| req.uri().authority().map(|a| a.to_string())),
        version: format!("{:?}", req.version()),
        status: 0,
        body_complete: false,
    };
    let index = {
        let mut requests = state.requests.lock().expect("requests lock poisoned");
        requests.push(record);
        requests.len() - 1
    };

    let applied = applicable_faults(&state, &method, &path);
    if !applied.delay.is_zero() {
        tokio::time::sleep(applied.delay).await;
    }
    let is_head = req.method() == Method::HEAD;
    let required = state.required_auth.lock().expect("auth lock poisoned").clone();
    let refused = required.is_some_and(|r| path.starts_with("/v2") && header("authorization") != Some(r));
    let planned = match applied.answer.clone() {
        _ if refused => {
            let mut p = error_status(401);
            p.headers
                .push(("www-authenticate".into(), "Basic realm=\"fault-registry\"".into()));
            p
        }
        Some(Fault::Status(code)) => error_status(code),
        Some(Fault::Redirect { location }) => redirect(307, &location),
        Some(Fault::RedirectWith { status, location }) => redirect(status, &location),
        _ => route(&state, &req, &accept_values),
    };
    let mut planned = planned;
    planned.headers.extend(applied.headers.iter().cloned());
    let status = planned.status;
    let body = match planned.body {
        Some(data) if !is_head => Some(data),
        _ => None,
    };
    let mut builder = Response::builder().status(status);
    for (k, v) in &planned.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let response_body = match body {
        None => {
            mark(&state, index, status, true);
            Empty::new().map_err(|never| match never {}).boxed()
        }
        Some(data) => {
            mark(&state, index, status, false);
            fault_body(data, &applied, state.clone(), index)
        }
    };
    Ok(builder.body(response_body).expect("valid fault registry response"))
}

fn mark_complete(state: &State, index: usize) {
    let mut requests = state.requests.lock().expect("requests lock poisoned");
    if let Some(r) = requests.get_mut(index) {
        r.body_complete = true;
    }
}

fn mark(state: &State, index: usize, status: u16, complete: bool) {
    let mut requests = state.requests.lock().expect("requests lock poisoned");
    if let Some(r) = requests.get_mut(index) {
        r.status = status;
        r.body_complete = complete;
    }
}

/// A response before faults shape its body: status, headers, full body.
struct Planned {
    status: u16,
    headers: Vec<(String, String)>,
    body: Option<Bytes>,
}

fn json_error(status: u16, code: &str, message: &str) -> Planned {
    let body = serde_json::to_vec(&serde_json::json!({
        "errors": [{ "code": code, "message": message, "detail": null }]
    }))
    .expect("serialize registry error");
    Planned {
        status,
        headers: vec![
            ("content-type".into(), "application/json; charset=utf-8".into()),
            ("content-length".into(), body.len().to_string()),
            ("docker-distribution-api-version".into(), "registry/2.0".into()),
        ],
        body: Some(Bytes::from(body)),
    }
}

fn error_status(code: u16) -> Planned {
    let (name, message) = match code {
        429 => ("TOOMANYREQUESTS", "too many requests"),
        503 => ("UNAVAILABLE", "service unavailable"),
        401 => ("UNAUTHORIZED", "authentication required"),
        403 => ("DENIED", "requested access to the resource is denied"),
        404 => ("NAME_UNKNOWN", "repository name not known to registry"),
        _ => ("UNKNOWN", "injected fault"),
    };
    let mut planned = json_error(code, name, message);
    if matches!(code, 429 | 503) {
        planned.headers.push(("retry-after".into(), "1".into()));
    }
    planned
}

fn redirect(status: u16, location: &str) -> Planned {
    Planned {
        status,
        headers: vec![
            ("location".into(), location.to_owned()),
            ("content-length".into(), "0".into()),
        ],
        body: Some(Bytes::new()),
    }
}

fn route(state: &State, req: &Request<Incoming>, accept: &[String]) -> Planned {
    let path = req.uri().path();
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json_error(405, "UNSUPPORTED", "the operation is unsupported");
    }
    if path == "/v2/" || path == "/v2" {
        return Planned {
            status: 200,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("content-length".into(), "2".into()),
                ("docker-distribution-api-version".into(), "registry/2.0".into()),
            ],
            body: Some(Bytes::from_static(b"{}")),
        };
    }
    if path == "/token" {
        let n = state.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("fault-registry-token-{n}");
        let body = serde_json::to_vec(&serde_json::json!({
            "token": token, "access_token": token, "expires_in": 300
        }))
        .expect("serialize token");
        return Planned {
            status: 200,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("content-length".into(), body.len().to_string()),
            ],
            body: Some(Bytes::from(body)),
        };
    }
    if let Some(digest) = path.strip_prefix("/cdn/") {
        return blob_response(state, req, digest);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return json_error(404, "NOT_FOUND", "no such path");
    };
    if let Some((repo, digest)) = rest.rsplit_once("/blobs/")
        && !digest.is_empty()
        && !digest.contains('/')
        && !repo.is_empty()
    {
        return blob_response(state, req, digest);
    }
    if let Some((repo, reference)) = rest.rsplit_once("/manifests/")
        && !repo.is_empty()
        && !reference.is_empty()
    {
        let planned = manifest_response(state, repo, reference, accept);
        // Conditional requests as the distribution registry answers them: the ETag is the
        // quoted digest.
        let etag = planned
            .headers
            .iter()
            .find(|(k, _)| k == "etag")
            .map(|(_, v)| v.clone());
        let if_none_match = req.headers().get("if-none-match").and_then(|v| v.to_str().ok());
        if planned.status == 200
            && let (Some(etag), Some(asked)) = (etag, if_none_match)
            && asked.split(',').any(|t| t.trim() == etag)
        {
            let keep = ["etag", "docker-content-digest", "docker-distribution-api-version"];
            return Planned {
                status: 304,
                headers: planned
                    .headers
                    .into_iter()
                    .filter(|(k, _)| keep.contains(&k.as_str()))
                    .collect(),
                body: None,
            };
        }
        return planned;
    }
    if let Some(repo) = rest.strip_suffix("/tags/list") {
        let content = state.content.lock().expect("content lock poisoned");
        let mut tags: Vec<&str> = content
            .tags
            .keys()
            .filter(|(r, _)| r == repo)
            .map(|(_, t)| t.as_str())
            .collect();
        if tags.is_empty() && !content.manifests.contains_key(repo) {
            return json_error(404, "NAME_UNKNOWN", "repository name not known to registry");
        }
        tags.sort_unstable();
        let body = serde_json::to_vec(&serde_json::json!({ "name": repo, "tags": tags })).expect("serialize tags");
        return Planned {
            status: 200,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("content-length".into(), body.len().to_string()),
            ],
            body: Some(Bytes::from(body)),
        };
    }
    json_error(404, "NOT_FOUND", "no such path")
}

/// Media types listed in the `Accept` values (parameters dropped).
fn accepted_types(accept: &[String]) -> Vec<String> {
    accept
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn accepts(types: &[String], media_type: &str) -> bool {
    types.iter().any(|t| t == "*/*" || t.eq_ignore_ascii_case(media_type))
}

fn manifest_response(state: &State, repo: &str, reference: &str, accept: &[String]) -> Planned {
    let types = accepted_types(accept);
    let content = state.content.lock().expect("content lock poisoned");
    let Some(list) = content.manifests.get(repo) else {
        return json_error(404, "NAME_UNKNOWN", "repository name not known to registry");
    };
    let candidates: Vec<&StoredManifest> = if reference.contains(':') {
        list.iter().filter(|m| m.digest == reference).collect()
    } else {
        content
            .tags
            .get(&(repo.to_owned(), reference.to_owned()))
            .map(|digests| {
                digests
                    .iter()
                    .filter_map(|d| list.iter().find(|m| &m.digest == d))
                    .collect()
            })
            .unwrap_or_default()
    };
    let Some(m) = candidates.into_iter().find(|m| accepts(&types, &m.media_type)) else {
        return json_error(404, "MANIFEST_UNKNOWN", "manifest unknown");
    };
    Planned {
        status: 200,
        headers: vec![
            ("content-type".into(), m.media_type.clone()),
            ("content-length".into(), m.bytes.len().to_string()),
            ("docker-content-digest".into(), m.digest.clone()),
            ("etag".into(), format!("\"{}\"", m.digest)),
            ("docker-distribution-api-version".into(), "registry/2.0".into()),
        ],
        body: Some(m.bytes.clone()),
    }
}

/// A byte range request: `bytes=a-b`, `bytes=a-`, `bytes=-n`.
fn parse_range(value: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // multiple ranges: ignored, like many registries
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || len == 0 {
            return Some(Err(()));
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            b.parse().ok()?
        };
        if start >= len || end < start {
            return Some(Err(()));
        }
        (start, end.min(len - 1))
    };
    Some(Ok(range))
}

fn blob_response(state: &State, req: &Request<Incoming>, digest: &str) -> Planned {
    let data = {
        let content = state.content.lock().expect("content lock poisoned");
        content.blobs.get(digest).cloned()
    };
    let Some(data) = data else {
        return json_error(404, "BLOB_UNKNOWN", "blob unknown to registry");
    };
    let len = data.len() as u64;
    let mut headers = vec![
        ("content-type".to_owned(), "application/octet-stream".to_owned()),
        ("docker-content-digest".to_owned(), digest.to_owned()),
        ("etag".to_owned(), format!("\"{digest}\"")),
        ("accept-ranges".to_owned(), "bytes".to_owned()),
        ("docker-distribution-api-version".to_owned(), "registry/2.0".to_owned()),
    ];
    let range = req
        .headers()
        .get(hyper::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_range(v, len));
    match range {
        Some(Err(())) => {
            headers.retain(|(k, _)| k != "content-type");
            headers.push(("content-range".into(), format!("bytes */{len}")));
            headers.push(("content-length".into(), "0".into()));
            Planned {
                status: 416,
                headers,
                body: Some(Bytes::new()),
            }
        }
        Some(Ok((start, end))) => {
            headers.push(("content-range".into(), format!("bytes {start}-{end}/{len}")));
            headers.push(("content-length".into(), (end - start + 1).to_string()));
            Planned {
                status: 206,
                headers,
                body: Some(data.slice(start as usize..=end as usize)),
            }
        }
        None => {
            headers.push(("content-length".into(), len.to_string()));
            Planned {
                status: 200,
                headers,
                body: Some(data),
            }
        }
    }
}

/// The body with the body faults applied, streamed in chunks; marks the
/// request complete when the last chunk is handed over.
fn fault_body(data: Bytes, applied: &Applied, state: Arc<State>, index: usize) -> FaultBody {
    let data = if applied.wrong_bytes {
        Bytes::from(data.iter().map(|b| !b).collect::<Vec<u8>>())
    } else {
        data
    };
    let (chunk, every) = applied.slow.unwrap_or((DEFAULT_CHUNK, Duration::ZERO));
    struct S {
        data: Bytes,
        pos: usize,
        chunk: usize,
        every: Duration,
        cut: Option<usize>,
        state: Arc<State>,
        index: usize,
        done: bool,
    }
    let s = S {
        data,
        pos: 0,
        chunk,
        every,
        cut: applied.cut_after.map(|n| n as usize),
        state,
        index,
        done: false,
    };
    let stream = futures_util::stream::unfold(s, |mut s| async move {
        if s.done {
            return None;
        }
        let limit = s.cut.map_or(s.data.len(), |c| c.min(s.data.len()));
        if s.pos >= limit {
            s.done = true;
            if s.cut.is_some_and(|c| c < s.data.len()) {
                let err = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "fault: body cut");
                return Some((Err(err), s));
            }
            mark_complete(&s.state, s.index);
            return None;
        }
        if s.pos > 0 && !s.every.is_zero() {
            tokio::time::sleep(s.every).await;
        }
        let end = (s.pos + s.chunk).min(limit);
        let piece = s.data.slice(s.pos..end);
        s.pos = end;
        // Over HTTP/1.1 hyper stops polling a body once Content-Length bytes are out, so the
        // last piece (not the end of the stream) is where the body counts as sent.
        if end == s.data.len() {
            mark_complete(&s.state, s.index);
        }
        Some((Ok(Frame::data(piece)), s))
    });

    StreamBody::new(stream).boxed()
}

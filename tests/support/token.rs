//! An in-process Docker token issuer (`GET /token?service=…&scope=…`) over
//! HTTPS, signing ES256 JWTs the distribution registry accepts.
//!
//! It runs on its own thread with its own tokio runtime, so it keeps serving
//! while a test blocks (e.g. waiting for skopeo) on any runtime flavour.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};

use super::TestCa;
use super::registry::RegistryAuth;

/// Default `iss` claim (must equal the registry's `auth.token.issuer`).
pub const DEFAULT_ISSUER: &str = "regcache-test-token-issuer";

/// One request the token server answered.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// Raw query string.
    pub query: String,
    /// `service` parameter, if any.
    pub service: Option<String>,
    /// All requested scopes (repeated `scope=` and space-separated).
    pub scopes: Vec<String>,
    /// User name from Basic credentials, if any were sent.
    pub user: Option<String>,
    /// Status returned (200 or 401, 404 for other paths).
    pub status: u16,
}

/// Builder for [`TokenServer`].
pub struct TokenServerBuilder<'a> {
    ca: &'a TestCa,
    names: Vec<String>,
    issuer: String,
    credentials: Option<(String, String)>,
    expires_in: u64,
}

impl TokenServerBuilder<'_> {
    /// Names in the HTTPS certificate (`127.0.0.1` and `localhost` always
    /// added), e.g. `auth.docker.io`.
    pub fn names(mut self, names: &[&str]) -> Self {
        self.names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The `iss` claim (default [`DEFAULT_ISSUER`]).
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.issuer = issuer.to_owned();
        self
    }

    /// Require these Basic credentials (401 without or with wrong ones).
    pub fn credentials(mut self, user: &str, pass: &str) -> Self {
        self.credentials = Some((user.to_owned(), pass.to_owned()));
        self
    }

    /// Token lifetime in seconds (default 300).
    pub fn expires_in(mut self, secs: u64) -> Self {
        self.expires_in = secs;
        self
    }

    /// Binds 127.0.0.1:0 and starts serving on a background thread.
    pub fn start(self) -> TokenServer {
        let mut names = self.names.clone();
        for extra in ["127.0.0.1", "localhost"] {
            if !names.iter().any(|n| n == extra) {
                names.push(extra.to_owned());
            }
        }
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let tls_config = self.ca.rustls_server_config(&name_refs);

        // Signing key and a self-signed certificate for it: the registry
        // trusts it through `rootcertbundle` and finds it in the JWT `x5c`.
        let rc_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate token signing key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{} signing key", self.issuer));
        params.distinguished_name = dn;
        params.serial_number = Some(super::ca::random_serial());
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 12, 31);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&rc_key).expect("self-sign token signing cert");
        let signing_key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rc_key.serialize_der())
            .expect("aws-lc-rs loads the rcgen PKCS#8 P-256 key");

        let state = Arc::new(State {
            signing_key,
            x5c: STANDARD.encode(cert.der()),
            issuer: self.issuer.clone(),
            credentials: self.credentials.clone(),
            expires_in: self.expires_in,
            count: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
        });

        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind token server listener");
        std_listener
            .set_nonblocking(true)
            .expect("set token listener non-blocking");
        let addr = std_listener.local_addr().expect("token listener address");
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("token-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build token server runtime");
                rt.block_on(serve(std_listener, tls_config, thread_state, shutdown_rx));
            })
            .expect("spawn token server thread");

        TokenServer {
            addr,
            names,
            bundle_pem: cert.pem(),
            state,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }
}

struct State {
    signing_key: EcdsaKeyPair,
    x5c: String,
    issuer: String,
    credentials: Option<(String, String)>,
    expires_in: u64,
    count: AtomicUsize,
    requests: Mutex<Vec<TokenRequest>>,
}

/// A running token server; stops on drop.
pub struct TokenServer {
    addr: SocketAddr,
    names: Vec<String>,
    bundle_pem: String,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    /// Starts a token server with a certificate for `names` (plus 127.0.0.1
    /// and localhost), issuer [`DEFAULT_ISSUER`], requiring `credentials` if
    /// given.
    pub fn start(ca: &TestCa, names: &[&str], credentials: Option<(&str, &str)>) -> TokenServer {
        let mut b = TokenServer::builder(ca).names(names);
        if let Some((u, p)) = credentials {
            b = b.credentials(u, p);
        }
        b.start()
    }

    /// A builder (no extra names, default issuer, anonymous, 300 s tokens).
    pub fn builder(ca: &TestCa) -> TokenServerBuilder<'_> {
        TokenServerBuilder {
            ca,
            names: Vec::new(),
            issuer: DEFAULT_ISSUER.to_owned(),
            credentials: None,
            expires_in: 300,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Names in its certificate.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// `https://127.0.0.1:PORT/token`: a realm clients reach directly.
    pub fn realm(&self) -> String {
        format!("https://127.0.0.1:{}/token", self.port())
    }

    /// The `iss` claim of its tokens.
    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }

    /// PEM bundle the registry must trust (`auth.token.rootcertbundle`).
    pub fn root_cert_bundle_pem(&self) -> String {
        self.bundle_pem.clone()
    }

    /// [`RegistryAuth::Token`] for a registry using this issuer with the
    /// given realm URL (e.g. [`TokenServer::realm`] or
    /// `https://auth.docker.io/token`) and service (e.g. `registry.docker.io`).
    pub fn registry_auth(&self, realm: &str, service: &str) -> RegistryAuth {
        RegistryAuth::Token {
            realm: realm.to_owned(),
            service: service.to_owned(),
            issuer: self.state.issuer.clone(),
            root_cert_bundle_pem: self.bundle_pem.clone(),
        }
    }

    /// Number of HTTP requests received (any path, any outcome).
    pub fn request_count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state
            .requests
            .lock()
            .expect("token request log lock poisoned")
            .clone()
    }

    /// Mints a token directly (no HTTP) for `service`, granting `scopes` in
    /// Docker scope syntax (`repository:team/app:pull,push`).
    pub fn mint_token(&self, service: &str, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        self.state.sign_token(Some(service), &scopes, "")
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl State {
    fn sign_token(&self, service: Option<&str>, scopes: &[String], subject: &str) -> String {
        let now = unix_now();
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|s| parse_scope(s))
            .map(|(typ, name, actions)| serde_json::json!({ "type": typ, "name": name, "actions": actions }))
            .collect();
        let header = serde_json::json!({ "typ": "JWT", "alg": "ES256", "x5c": [self.x5c] });
        let claims = serde_json::json!({
            "iss": self.issuer,
            "sub": subject,
            // distribution 2.8 decodes `aud` as a single string.
            "aud": service.unwrap_or(""),
            "exp": now + self.expires_in,
            "nbf": now.saturating_sub(10),
            "iat": now,
            "jti": super::random_hex(16),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = self
            .signing_key
            .sign(&rng, signing_input.as_bytes())
            .expect("ES256 signing");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn handle(&self, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        self.count.fetch_add(1, Ordering::SeqCst);
        let query = req.uri().query().unwrap_or("").to_owned();
        let mut service = None;
        let mut scopes = Vec::new();
        for (k, v) in parse_query(&query) {
            match k.as_str() {
                "service" => service = Some(v),
                "scope" => scopes.extend(v.split(' ').filter(|s| !s.is_empty()).map(String::from)),
                _ => {}
            }
        }
        let presented = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_basic);
        let user = presented.as_ref().map(|(u, _)| u.clone());

        let (status, body, www_auth) = if req.uri().path() != "/token" {
            (StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.to_owned(), false)
        } else if self
            .credentials
            .as_ref()
            .is_some_and(|expected| presented.as_ref() != Some(expected))
        {
            (
                StatusCode::UNAUTHORIZED,
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#.to_owned(),
                true,
            )
        } else {
            let token = self.sign_token(service.as_deref(), &scopes, user.as_deref().unwrap_or(""));
            let body = serde_json::json!({
                "token": token,
                "access_token": token,
                "expires_in": self.expires_in,
                "issued_at": rfc3339(unix_now()),
            });
            (StatusCode::OK, body.to_string(), false)
        };

        self.requests
            .lock()
            .expect("token request log lock poisoned")
            .push(TokenRequest {
                query,
                service,
                scopes,
                user,
                status: status.as_u16(),
            });
        let mut resp = Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if www_auth {
            resp = resp.header(hyper::header::WWW_AUTHENTICATE, "Basic realm=\"token\"");
        }
        resp.body(Full::new(Bytes::from(body))).expect("valid token response")
    }
}

async fn serve(
    std_listener: std::net::TcpListener,
    tls_config: Arc<rustls::ServerConfig>,
    state: Arc<State>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(std_listener).expect("register token listener");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
    loop {
        let (tcp, _peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let resp = state.handle(&req);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

/// Splits `type:name:actions` (name may contain `:`, e.g. a port).
fn parse_scope(scope: &str) -> Option<(String, String, Vec<String>)> {
    let (typ, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions = actions.split(',').filter(|a| !a.is_empty()).map(String::from).collect();
    Some((typ.to_owned(), name.to_owned(), actions))
}

/// Decodes `Basic base64(user:pass)`.
fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, b64) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (u, p) = decoded.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// Parses `a=b&c=d` with percent-decoding and `+` as space.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'+' {
            out.push(b' ');
        } else if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        } else {
            out.push(bytes[i]);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix timestamp (UTC).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

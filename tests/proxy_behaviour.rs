//! The intercepting proxy over real sockets: tunnels vs interception, minted leaves, HTTP/1.1
//! and HTTP/2 inside the tunnel, streaming both ways, plain HTTP, local endpoints, and the
//! status a client gets when something is wrong.
//!
//! The upstream here is an in-process origin (TLS from a test CA) so that faults (slow
//! headers, untrusted certificates, closed ports) can be staged; `pull_through.rs` uses the
//! real distribution registry and skopeo.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::Digest as _;
use support::{Regcache, TestCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type OriginBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// An in-process origin: `/hello`, `/host` (echoes the Host / :authority it saw), `/slow`
/// (headers after 3 s), `/big?mb=N` (N MiB of a repeating pattern, streamed), `/upload`
/// (answers the size and sha256 of the request body).
struct Origin {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl Origin {
    async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let tls = tls.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        origin_route(req)
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(cfg) => {
                            if let Ok(stream) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await {
                                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                    }
                });
            }
        });
        Origin { addr, requests }
    }
}

async fn origin_route(req: Request<Incoming>) -> Result<Response<OriginBody>, Infallible> {
    let full = |s: String| Full::new(Bytes::from(s)).boxed();
    let res = match req.uri().path() {
        "/hello" => Response::builder()
            .header("x-origin", "yes")
            .body(full("hello from origin".into()))
            .unwrap(),
        "/host" => {
            let host = req
                .headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
                .or_else(|| req.uri().authority().map(|a| a.to_string()))
                .unwrap_or_default();
            Response::new(full(host))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Response::new(full("late".into()))
        }
        "/big" => {
            let mb: usize = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("mb="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            let chunk = Bytes::from(pattern_chunk());
            let stream =
                futures_util::stream::iter((0..mb * 16).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))));
            Response::builder()
                .header("content-length", (mb * 1024 * 1024).to_string())
                .body(StreamBody::new(stream).boxed())
                .unwrap()
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut hasher = sha2::Sha256::new();
            let mut n = 0usize;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    n += data.len();
                    hasher.update(&data);
                }
            }
            Response::new(full(format!("{n} {}", support::hex(&hasher.finalize()))))
        }
        _ => Response::builder().status(404).body(full("no".into())).unwrap(),
    };
    Ok(res)
}

/// 64 KiB of a fixed pattern; `/big` repeats it.
fn pattern_chunk() -> Vec<u8> {
    (0..64 * 1024).map(|i| (i % 251) as u8).collect()
}

fn write_file(dir: &std::path::Path, name: &str, contents: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

/// A reqwest client that goes through regcache and trusts only the given roots.
fn client_via(proxy: &Regcache, roots: &[&str], http1_only: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(proxy.proxy_url()).unwrap())
        .tls_certs_only(
            roots
                .iter()
                .map(|pem| reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()),
        )
        .timeout(Duration::from_secs(30));
    if http1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

/// Sends a raw request to the proxy; returns the status line and the rest of the response
/// (headers and a body of `Content-Length` bytes).
async fn raw_request(proxy: SocketAddr, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("proxy answered in time");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (status, rest) = text.split_once("\r\n").unwrap_or((&text, ""));
    (status.to_string(), rest.to_string())
}

/// CONNECTs through the proxy to `target`, then does a TLS handshake for `name` trusting only
/// `roots`. Returns the server's leaf certificate.
async fn connect_and_handshake(proxy: SocketAddr, target: &str, name: &str, roots: &[&str]) -> Vec<u8> {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    let mut store = rustls::RootCertStore::empty();
    for pem in roots {
        use rustls::pki_types::pem::PemObject as _;
        store
            .add(rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
            .unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tls = connector
        .connect(rustls::pki_types::ServerName::try_from(name.to_string()).unwrap(), s)
        .await
        .expect("TLS handshake through the proxy");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

struct Setup {
    upstream_ca: TestCa,
    _dir: tempfile::TempDir,
    ca_file: std::path::PathBuf,
}

fn setup() -> Setup {
    support::install_crypto_provider();
    let upstream_ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write_file(dir.path(), "upstream-ca.pem", &upstream_ca.cert_pem());
    Setup {
        upstream_ca,
        _dir: dir,
        ca_file,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_registry_connect_is_tunnelled_to_the_real_certificate() {
    let s = setup();
    let origin = Origin::start(Some(s.upstream_ca.rustls_server_config(&["example.test"]))).await;
    let proxy = Regcache::builder().connect_to("example.test:443", origin.addr).start();

    // The client trusts only the origin's CA, not regcache's: this works only if untouched.
    let leaf = connect_and_handshake(
        proxy.addr(),
        "example.test:443",
        "example.test",
        &[&s.upstream_ca.cert_pem()],
    )
    .await;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    assert!(
        !cert.issuer().to_string().contains("regcache CA on"),
        "tunnel must not be intercepted: {}",
        cert.issuer()
    );

    let client = client_via(&proxy, &[&s.upstream_ca.cert_pem()], false);
    let res = client.get("https://example.test/hello").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "hello from origin");
    drop(client);
    assert!(
        proxy.wait_for_log("cache=\"tunnel\"", Duration::from_secs(10)),
        "{}",
        proxy.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_policy_refuses_non_registry_hosts_with_403() {
    let s = setup();
    let origin = Origin::start(Some(s.upstream_ca.rustls_server_config(&["example.test", "ghcr.io"]))).await;
    let proxy = Regcache::builder()
        .arg("--non-registry")
        .arg("deny")
        .connect_to("example.test:443", origin.addr)
        .connect_to("ghcr.io:443", origin.addr)
        .upstream_ca(&s.ca_file)
        .start();
    let (status, body) = raw_request(
        proxy.addr(),
        "CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    assert!(body.contains("not a configured registry"), "{body}");
    // Plain HTTP to a non-registry is refused the same way.
    let (status, _) = raw_request(
        proxy.addr(),
        "GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    // Registries still work.
    let client = client_via(&proxy, &[&proxy.ca_cert_pem()], false);
    let res = client.get("https://ghcr.io/hello").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(origin.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_policy_from_environment_variable() {
    let proxy = Regcache::builder().env("REGCACHE_NON_REGISTRY", "deny").start();
    let (status, _) = raw_request(
        proxy.addr(),
        "CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_gets_a_minted_leaf_reused_across_tunnels() {
    let s = setup();
    let origin = Origin::start(Some(s.upstream_ca.rustls_server_config(&["ghcr.io", "reg.internal"]))).await;
    let proxy = Regcache::builder()
        .connect_to("ghcr.io:443", origin.addr)
        .connect_to("reg.internal:5000", origin.addr)
        .registry("reg.internal:5000")
        .upstream_ca(&s.ca_file)
        .start();
    let ca = proxy.ca_cert_pem();
    let first = connect_and_handshake(proxy.addr(), "ghcr.io:443", "ghcr.io", &[&ca]).await;
    let second = connect_and_handshake(proxy.addr(), "ghcr.io:443", "ghcr.io", &[&ca]).await;
    assert_eq!(first, second, "the leaf for one host is minted once and reused");

    let (_, cert) = x509_parser::parse_x509_certificate(&first).unwrap();
    assert!(cert.issuer().to_string().contains("regcache CA"), "{}", cert.issuer());
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(format!("{:?}", san.value.general_names), "[DNSName(\"ghcr.io\")]");

    // A registry on a non-443 port is intercepted too, with a leaf for its name.
    let other = connect_and_handshake(proxy.addr(), "reg.internal:5000", "reg.internal", &[&ca]).await;
    assert_ne!(other, first);

    // Requests inside reach upstream with the original name as Host.
    let client = client_via(&proxy, &[&ca], true);
    assert_eq!(
        client
            .get("https://ghcr.io/host")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ghcr.io"
    );
    assert_eq!(
        client
            .get("https://reg.internal:5000/host")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "reg.internal:5000"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_http1_inside_the_tunnel() {
    let s = setup();
    let origin = Origin::start(Some(s.upstream_ca.rustls_server_config(&["ghcr.io"]))).await;
    let proxy = Regcache::builder()
        .connect_to("ghcr.io:443", origin.addr)
        .upstream_ca(&s.ca_file)
        .start();
    let ca = proxy.ca_cert_pem();

    let h2 = client_via(&proxy, &[&ca], false);
    let res = h2.get("https://ghcr.io/hello").send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.headers()["x-origin"], "yes");
    assert_eq!(res.text().await.unwrap(), "hello from origin");

    let h1 = client_via(&proxy, &[&ca], true);
    let res = h1.get("https://ghcr.io/hello").send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_11);
    assert_eq!(res.text().await.unwrap(), "hello from origin");

    drop((h1, h2));
    // Each tunnel's line is written when it closes, in whichever order the two clients'
    // connections wind down.
    for alpn in ["alpn=\"http/1.1\"", "alpn=\"h2\""] {
        assert!(
            proxy.wait_for_log(alpn, Duration::from_secs(10)),
            "{alpn}: {}",
            proxy.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways() {
    let s = setup();
    let origin = Origin::start(Some(s.upstream_ca.rustls_server_config(&["ghcr.io"]))).await;
    let proxy = Regcache::builder()
        .connect_to("ghcr.io:443", origin.addr)
        .upstream_ca(&s.ca_file)
        .start();
    let client = client_via(&proxy, &[&proxy.ca_cert_pem()], true);

    // 64 MiB down, hashed as it arrives.
    let mut res = client.get("https://ghcr.io/big?mb=64").send().await.unwrap();
    assert_eq!(res.content_length(), Some(64 * 1024 * 1024));
    let mut got = 0usize;
    let mut hasher = sha2::Sha256::new();
    while let Some(chunk) = res.chunk().await.unwrap() {
        got += chunk.len();
        hasher.update(&chunk);
    }
    let mut expected = sha2::Sha256::new();
    let chunk = pattern_chunk();
    for _ in 0..64 * 16 {
        expected.update(&chunk);
    }
    assert_eq!(got, 64 * 1024 * 1024);
    assert_eq!(hasher.finalize(), expected.finalize());

    // 16 MiB up, as a stream with no length known in advance.
    let up = futures_util::stream::iter((0..256).map(|i| Ok::<_, std::io::Error>(Bytes::from(vec![i as u8; 65536]))));
    let res = client
        .post("https://ghcr.io/upload")
        .body(reqwest::Body::wrap_stream(up))
        .send()
        .await
        .unwrap();
    let text = res.text().await.unwrap();
    let mut h = sha2::Sha256::new();
    for i in 0..256 {
        h.update(vec![i as u8; 65536]);
    }
    assert_eq!(text, format!("{} {}", 256 * 65536, support::hex(&h.finalize())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_requests_are_proxied() {
    let origin = Origin::start(None).await;
    let proxy = Regcache::builder().connect_to("plain.test:80", origin.addr).start();
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(proxy.proxy_url()).unwrap())
        .build()
        .unwrap();
    let res = client.get("http://plain.test/host").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "plain.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_endpoints_banner_health_and_ca() {
    let proxy = Regcache::builder().start();
    let base = proxy.proxy_url();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    let banner = client
        .get(format!("{base}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(banner.starts_with("regcache "), "{banner}");
    assert_eq!(banner.lines().count(), 1);

    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let ca = client.get(format!("{base}/ca.crt")).send().await.unwrap();
    assert_eq!(ca.headers()["content-type"], "application/x-x509-ca-cert");
    assert_eq!(ca.text().await.unwrap(), proxy.ca_cert_pem());

    let missing = client.get(format!("{base}/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400() {
    let proxy = Regcache::builder().start();
    let (status, _) = raw_request(proxy.addr(), "CONNECT ghcr.io HTTP/1.1\r\nHost: ghcr.io\r\n\r\n").await;
    assert!(status.starts_with("HTTP/1.1 400"), "no port: {status}");
    let (status, _) = raw_request(proxy.addr(), "CONNECT bad_host!:443 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(status.starts_with("HTTP/1.1 400"), "bad host: {status}");
    let (status, _) = raw_request(proxy.addr(), "this is not http\r\n\r\n").await;
    assert!(status.starts_with("HTTP/1.1 400"), "garbage: {status}");
    let (status, _) = raw_request(
        proxy.addr(),
        &format!("CONNECT {} HTTP/1.1\r\nHost: x\r\n\r\n", proxy.addr()),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 403"), "loop to itself: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_502_or_504_with_a_reason() {
    let s = setup();
    let untrusted = TestCa::new();
    let good = Origin::start(Some(s.upstream_ca.rustls_server_config(&["ghcr.io"]))).await;
    let bad_cert = Origin::start(Some(untrusted.rustls_server_config(&["quay.io"]))).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = Regcache::builder()
        .connect_to("ghcr.io:443", good.addr)
        .connect_to("quay.io:443", bad_cert.addr)
        .connect_to("gcr.io:443", closed)
        .connect_to("tunnel.test:443", closed)
        .upstream_ca(&s.ca_file)
        .arg("--response-timeout")
        .arg("1s")
        .start();
    let client = client_via(&proxy, &[&proxy.ca_cert_pem()], true);

    let res = client.get("https://gcr.io/v2/org/app/tags/list").send().await.unwrap();
    assert_eq!(res.status(), 502);
    let text = res.text().await.unwrap();
    assert!(text.contains("cannot connect to gcr.io:443"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");

    // The /v2/ ping alone is answered locally when the registry is unreachable, so that
    // cached images stay pullable (see cache tests).
    let res = client.get("https://gcr.io/v2/").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-cache"], "STALE");

    let res = client.get("https://quay.io/v2/org/app/tags/list").send().await.unwrap();
    assert_eq!(res.status(), 502);
    let text = res.text().await.unwrap();
    assert!(text.contains("TLS handshake with quay.io:443 failed"), "{text}");

    let res = client.get("https://ghcr.io/slow").send().await.unwrap();
    assert_eq!(res.status(), 504);
    assert!(res.text().await.unwrap().contains("no response within 1s"));

    let (status, body) = raw_request(
        proxy.addr(),
        "CONNECT tunnel.test:443 HTTP/1.1\r\nHost: tunnel.test:443\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 502"), "{status}");
    assert!(body.contains("cannot connect to tunnel.test:443"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_logged_once_with_its_fields() {
    let s = setup();
    let origin = Origin::start(Some(s.upstream_ca.rustls_server_config(&["ghcr.io"]))).await;
    let proxy = Regcache::builder()
        .connect_to("ghcr.io:443", origin.addr)
        .upstream_ca(&s.ca_file)
        .start();
    let client = client_via(&proxy, &[&proxy.ca_cert_pem()], true);
    let res = client
        .get("https://ghcr.io/big?mb=1&token=s3cr3t")
        .send()
        .await
        .unwrap();
    assert_eq!(res.bytes().await.unwrap().len(), 1024 * 1024);
    drop(client);
    assert!(
        proxy.wait_for_log("tunnel closed", Duration::from_secs(10)),
        "{}",
        proxy.logs()
    );
    let logs = proxy.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("path=/big"))
        .unwrap_or_else(|| panic!("no request line in {logs}"));
    for field in [
        "client=127.0.0.1:",
        "host=ghcr.io:443",
        "method=GET",
        "status=200",
        "bytes=1048576",
        "ms=",
        "cache=\"bypass\"",
    ] {
        assert!(line.contains(field), "missing {field} in {line}");
    }
    assert!(!logs.contains("s3cr3t"), "query strings must not be logged");
    assert!(
        logs.lines()
            .any(|l| l.contains("tunnel closed") && l.contains("cache=\"intercept\"")),
        "{logs}"
    );
}

/// Makes a CA with openssl (as a user bringing their own would) in `dir`.
fn openssl_ca(dir: &std::path::Path, keygen: &[&str]) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(keygen);
    run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "30",
        "-subj",
        "/CN=Corp Build CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    std::fs::set_permissions(dir.join("ca.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bring_your_own_ca_rsa_and_ecdsa_in_any_pem_form() {
    support::install_crypto_provider();
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "rsa-pkcs1",
            &["genrsa", "-traditional", "-out", "ca.key", "2048"],
            "BEGIN RSA PRIVATE KEY",
        ),
        (
            "rsa-pkcs8",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "ca.key",
            ],
            "BEGIN PRIVATE KEY",
        ),
        (
            "ec-sec1",
            &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key"],
            "BEGIN EC PRIVATE KEY",
        ),
        (
            "ec-p384-pkcs8",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-out",
                "ca.key",
            ],
            "BEGIN PRIVATE KEY",
        ),
    ];
    for (name, keygen, marker) in cases {
        let dir = tempfile::tempdir().unwrap();
        openssl_ca(dir.path(), keygen);
        let key = std::fs::read_to_string(dir.path().join("ca.key")).unwrap();
        assert!(key.contains(marker), "{name}: {key}");
        let proxy = Regcache::builder().ca_dir(dir.path()).start();
        let ca_pem = std::fs::read_to_string(dir.path().join("ca.crt")).unwrap();
        let leaf = connect_and_handshake(proxy.addr(), "ghcr.io:443", "ghcr.io", &[&ca_pem]).await;
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        assert_eq!(cert.issuer().to_string(), "CN=Corp Build CA", "{name}");
        assert!(proxy.logs().contains("(loaded)"), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_disconnected() {
    let proxy = Regcache::builder().arg("--idle-timeout").arg("1s").start();
    let started = std::time::Instant::now();
    // A client that connects and says nothing.
    let mut silent = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(20), silent.read(&mut buf))
        .await
        .expect("regcache closed the idle connection");
    assert!(
        matches!(n, Ok(0)) || n.is_err(),
        "expected the connection closed, got {n:?}"
    );
    // A client that stops half-way through its request headers.
    let mut partial = TcpStream::connect(proxy.addr()).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), partial.read_to_end(&mut rest))
        .await
        .expect("regcache closed the stalled connection")
        .ok();
    assert!(started.elapsed() >= Duration::from_secs(1));
}

//! Who may use regcache and where it may connect, over real sockets with real clients: proxy
//! authentication (htpasswd, 407, skopeo with credentials in `HTTPS_PROXY`), TLS on the listener
//! (curl `--proxy https://`), source allowlists, the open-relay refusal, the SSRF guard and the
//! tunnel rules. Then hostile input: header and connection limits, malformed CONNECT targets,
//! traversal in repository names, bad digests and references (answered 4xx in the registry's
//! error style, never forwarded, never a file outside the store), and oversized manifests.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use support::image::TestImage;
use support::{FaultRegistry, PullWorld, Regcache, Registry, RegistryAuth, TestCa};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

// ----- helpers ---------------------------------------------------------------------------------

/// A response read off a raw connection.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The first `errors[].code` of a registry-style JSON error body.
    fn error_code(&self) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("registry error JSON expected ({e}): {}\n{}", self.head, self.body));
        v["errors"][0]["code"].as_str().unwrap_or_default().to_string()
    }
}

/// Reads one response: the head, then `Content-Length` bytes (none for `head_only`), or up to
/// EOF when the server closes without a length.
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S, head_only: bool) -> Resp {
    let fut = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            assert!(
                n > 0,
                "connection closed before a response head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut body = buf[head_end..].to_vec();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line: {head:?}"));
        let length = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        });
        let closes = head.to_ascii_lowercase().contains("connection: close");
        if !head_only {
            match length {
                Some(n) => {
                    while body.len() < n {
                        let k = stream.read(&mut chunk).await.unwrap_or(0);
                        if k == 0 {
                            break;
                        }
                        body.extend_from_slice(&chunk[..k]);
                    }
                }
                None if closes && status != 200 => {
                    let _ = stream.read_to_end(&mut body).await;
                }
                None => {}
            }
        }
        Resp {
            status,
            head,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .expect("response within 30 s")
}

/// Sends `request` on a fresh connection to `addr` and reads the answer.
async fn exchange(addr: SocketAddr, request: impl AsRef<[u8]>) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_ref()).await.unwrap();
    read_response(&mut s, false).await
}

/// `CONNECT target` with optional extra header lines; the stream is returned for a tunnel.
async fn connect(addr: SocketAddr, target: &str, extra: &str) -> (Resp, TcpStream) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n").as_bytes())
        .await
        .unwrap();
    let r = read_response(&mut s, false).await;
    (r, s)
}

fn basic(user: &str, pass: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}

/// An htpasswd file of bcrypt entries.
fn htpasswd(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let path = dir.join("htpasswd");
    let text: String = users
        .iter()
        .map(|(u, p)| support::registry::htpasswd_line(u, p))
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// A loopback TCP server that counts connections: an HTTP request gets `200 target`, anything
/// else is echoed back prefixed with `echo:`.
struct Target {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Target {
    async fn start() -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let Ok(n) = s.read(&mut buf).await else { return };
                    let got = &buf[..n];
                    if got.starts_with(b"GET ") {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\ntarget")
                            .await;
                    } else {
                        let mut out = b"echo:".to_vec();
                        out.extend_from_slice(got);
                        let _ = s.write_all(&out).await;
                    }
                });
            }
        });
        Target { addr, connections }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Sends `ping` through an open tunnel and expects the target's echo.
async fn assert_tunnel_echoes(mut s: TcpStream) {
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("echo within 10 s")
        .unwrap();
    assert_eq!(&buf[..n], b"echo:ping");
}

/// A rustls client trusting `ca_pem`, HTTP/1.1 only (raw requests are written by hand).
fn h1_tls(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut config = support::rustls_client_config(&[ca_pem]).as_ref().clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Sends raw HTTP/1.1 `request` bytes to `host` inside an intercepted tunnel (TLS with
/// regcache's minted leaf): requests no URL library would send (dot segments, backslashes).
async fn intercepted(proxy: &Regcache, host: &str, request: &[u8], head_only: bool) -> Resp {
    let (r, tcp) = connect(proxy.addr(), &format!("{host}:443"), "").await;
    assert_eq!(r.status, 200, "CONNECT {host}: {r:?}");
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let mut tls = h1_tls(&proxy.ca_cert_pem()).connect(name, tcp).await.unwrap();
    tls.write_all(request).await.unwrap();
    read_response(&mut tls, head_only).await
}

/// A GET (or HEAD) of `path` on `host` through regcache, raw.
async fn registry_get(proxy: &Regcache, host: &str, method: &str, path: &str) -> Resp {
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {MANIFEST_TYPE}\r\nConnection: close\r\n\r\n");
    intercepted(proxy, host, req.as_bytes(), method == "HEAD").await
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

// ----- proxy authentication --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_connect_and_plain_http_get_407_with_a_basic_challenge() {
    let tmp = tempfile::tempdir().unwrap();
    let file = htpasswd(tmp.path(), &[("alice", "s3cret-proxy-pass")]);
    let proxy = Regcache::builder().arg("--auth-htpasswd").arg(&file).start();

    for request in [
        "CONNECT ghcr.io:443 HTTP/1.1\r\nHost: ghcr.io:443\r\n\r\n",
        "GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n",
        // Not Basic: as good as none.
        "CONNECT ghcr.io:443 HTTP/1.1\r\nHost: ghcr.io:443\r\nProxy-Authorization: Bearer abc\r\n\r\n",
    ] {
        let r = exchange(proxy.addr(), request).await;
        assert_eq!(r.status, 407, "{request:?}: {r:?}");
        assert_eq!(
            r.header("proxy-authenticate"),
            Some("Basic realm=\"regcache\""),
            "{r:?}"
        );
    }
    // regcache's own endpoints stay open: a client fetches the CA before it is configured.
    let r = exchange(proxy.addr(), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status, 200, "{r:?}");
    // Right credentials open the tunnel.
    let (r, _tunnel) = connect(
        proxy.addr(),
        "ghcr.io:443",
        &format!("Proxy-Authorization: Basic {}\r\n", basic("alice", "s3cret-proxy-pass")),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_407_and_logged_with_user_and_address_but_never_the_password() {
    let tmp = tempfile::tempdir().unwrap();
    let file = htpasswd(tmp.path(), &[("alice", "s3cret-proxy-pass")]);
    let proxy = Regcache::builder().arg("--auth-htpasswd").arg(&file).start();

    let wrong = "Wr0ng-Guess-7f3e";
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(
        format!(
            "CONNECT ghcr.io:443 HTTP/1.1\r\nHost: ghcr.io:443\r\nProxy-Authorization: Basic {}\r\n\r\n",
            basic("alice", wrong)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let r = read_response(&mut s, false).await;
    assert_eq!(r.status, 407, "{r:?}");
    assert_eq!(r.header("proxy-authenticate"), Some("Basic realm=\"regcache\""));

    // An unknown user, on a plain request.
    let r = exchange(
        proxy.addr(),
        format!(
            "GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\nProxy-Authorization: Basic {}\r\n\r\n",
            basic("mallory", wrong)
        ),
    )
    .await;
    assert_eq!(r.status, 407, "{r:?}");

    assert!(
        proxy.wait_for_log("user=mallory", Duration::from_secs(10))
            || proxy.wait_for_log("user=\"mallory\"", Duration::from_secs(1)),
        "{}",
        proxy.logs()
    );
    let logs = proxy.logs();
    let failed: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("proxy authentication failed"))
        .collect();
    assert!(
        failed
            .iter()
            .any(|l| l.contains("alice") && l.contains(&me.to_string())),
        "a line with the user and the client address:\n{logs}"
    );
    for secret in [wrong.to_string(), basic("alice", wrong), basic("mallory", wrong)] {
        assert!(!logs.contains(&secret), "{secret} leaked into the log:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_with_proxy_credentials_in_https_proxy() {
    let w = PullWorld::new();
    let registry = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let image = TestImage::generate(&[1024 * 1024, 64 * 1024]);
    support::push(&registry.url(), "team/app", "v1", &image, None, &w.ca.cert_pem())
        .await
        .unwrap();
    let file = htpasswd(w.tmp.path(), &[("alice", "s3cret-proxy-pass"), ("bob", "other-pass")]);
    let proxy = Regcache::builder()
        .arg("--auth-htpasswd")
        .arg(&file)
        .connect_to("ghcr.io:443", registry.addr())
        .upstream_ca(&w.upstream_ca_file)
        .start();
    let port = proxy.addr().port();

    // Without credentials skopeo is told 407 and gets nothing.
    let cert_dir = support::cert_dir_with(w.tmp.path(), &[&proxy.ca_cert_pem()]);
    let out = support::skopeo_copy(
        &proxy.proxy_url(),
        &cert_dir,
        "docker://ghcr.io/team/app:v1",
        &w.tmp.path().join("refused"),
        None,
    );
    assert!(!out.status.success(), "a pull without proxy credentials must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("407") || err.contains("Proxy Authentication Required"),
        "{err}"
    );
    assert_eq!(registry.count_requests("GET", "/v2/team/app/manifests/v1"), 0);

    // With them in the proxy URL, the pull goes through and every digest checks out.
    let url = format!("http://alice:s3cret-proxy-pass@127.0.0.1:{port}");
    w.pull_via(&url, &proxy, "docker://ghcr.io/team/app:v1", None, &image);
    let logs = proxy.logs();
    assert!(
        logs.contains("path=/v2/team/app/manifests/v1"),
        "the pull went through regcache:\n{logs}"
    );
    assert!(!logs.contains("s3cret-proxy-pass") && !logs.contains(&basic("alice", "s3cret-proxy-pass")));
}

#[test]
fn an_htpasswd_file_with_md5_or_sha_entries_stops_serve_with_one_line_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, bad) in [
        "bob:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/",
        "bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
    ]
    .iter()
    .enumerate()
    {
        let file = tmp.path().join(format!("htpasswd-{i}"));
        std::fs::write(
            &file,
            format!("{}{bad}\n", support::registry::htpasswd_line("alice", "pw")),
        )
        .unwrap();
        let out = serve_by_hand(
            tmp.path(),
            &["--listen", "127.0.0.1:0", "--auth-htpasswd", file.to_str().unwrap()],
        )
        .map(|(mut child, addr)| {
            let _ = child.kill();
            panic!("started on {addr} with a weak htpasswd entry")
        })
        .unwrap_err();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A file that is unusable at start is a start error: status 1, as for a bad CA or
        // upstream bundle (README "Command line").
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("regcache: error:")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(
            errors[0].contains(&format!("{}:2:", file.display())) && errors[0].contains("bcrypt"),
            "{stderr}"
        );
    }
}

// ----- TLS on the listener ---------------------------------------------------------------------

/// `curl` through an HTTPS proxy: `--proxy https://…` verified with `--proxy-cacert`.
fn curl_via_tls_proxy(
    proxy: &str,
    proxy_ca: &Path,
    user: Option<&str>,
    ca: &Path,
    url: &str,
    out: &Path,
) -> (i32, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-o"])
        .arg(out)
        .args(["-w", "%{http_code}", "--proxy", proxy, "--proxy-cacert"])
        .arg(proxy_ca)
        .arg("--cacert")
        .arg(ca);
    if let Some(u) = user {
        cmd.args(["--proxy-user", u]);
    }
    for v in [
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "https_proxy",
        "http_proxy",
        "all_proxy",
        "no_proxy",
    ] {
        cmd.env_remove(v);
    }
    let output = cmd.arg(url).stdin(Stdio::null()).output().expect("run curl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_pulls_a_blob_through_a_tls_listener_with_credentials() {
    support::install_crypto_provider();
    let ca = TestCa::new();
    let tmp = tempfile::tempdir().unwrap();
    let upstream_ca = ca.write_cert(tmp.path());
    let (cert, key) = ca.issue_server_cert(&["127.0.0.1", "localhost"]);
    let (cert_file, key_file) = (tmp.path().join("proxy.crt"), tmp.path().join("proxy.key"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let origin = FaultRegistry::new(&ca, &["ghcr.io"]);
    let blob: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let digest = origin.put_blob(blob.clone());
    let file = htpasswd(tmp.path(), &[("alice", "s3cret-proxy-pass")]);
    let proxy = Regcache::builder()
        .args([
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ])
        .arg("--auth-htpasswd")
        .arg(&file)
        .connect_to("ghcr.io:443", origin.addr())
        .upstream_ca(&upstream_ca)
        .start();
    let tls_proxy = format!("https://127.0.0.1:{}", proxy.addr().port());
    let url = format!("https://ghcr.io/v2/team/app/blobs/{digest}");
    let out = tmp.path().join("blob");

    let (code, text) = curl_via_tls_proxy(
        &tls_proxy,
        &upstream_ca,
        Some("alice:s3cret-proxy-pass"),
        &proxy.ca_cert_path(),
        &url,
        &out,
    );
    assert_eq!(code, 0, "curl: {text}\n{}", proxy.logs());
    assert!(text.starts_with("200"), "{text}");
    assert_eq!(support::sha256_digest(&std::fs::read(&out).unwrap()), digest);

    // Without credentials the TLS proxy still says 407.
    let (code, text) = curl_via_tls_proxy(&tls_proxy, &upstream_ca, None, &proxy.ca_cert_path(), &url, &out);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("407"), "{text}");
    // Plain HTTP to the TLS listener gets no proxy service.
    let r = tokio::time::timeout(Duration::from_secs(20), async {
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        buf
    })
    .await
    .expect("the listener closes a plaintext client");
    assert!(!r.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&r));
    assert_eq!(origin.count("GET", &digest), 1, "fetched upstream once");
    let logs = proxy.logs();
    assert!(!logs.contains("s3cret-proxy-pass"), "{logs}");
}

// ----- source allowlist ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_client_refuses_addresses_outside_its_networks() {
    let outside = Regcache::builder().args(["--allow-client", "10.0.0.0/8"]).start();
    for request in [
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        "CONNECT ghcr.io:443 HTTP/1.1\r\nHost: ghcr.io:443\r\n\r\n",
        "GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n",
    ] {
        let r = exchange(outside.addr(), request).await;
        assert_eq!(r.status, 403, "{request:?}: {r:?}");
    }
    assert!(
        outside.wait_for_log("--allow-client", Duration::from_secs(5)),
        "{}",
        outside.logs()
    );

    let inside = Regcache::builder()
        .args(["--allow-client", "10.0.0.0/8", "--allow-client", "127.0.0.0/8"])
        .start();
    let r = exchange(inside.addr(), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status, 200, "{r:?}");
    let (r, _tunnel) = connect(inside.addr(), "ghcr.io:443", "").await;
    assert_eq!(r.status, 200, "{r:?}");
}

// ----- open relay ------------------------------------------------------------------------------

/// `regcache serve ARGS` started by hand (the fixture always passes its own `--listen`);
/// returns the address from its readiness line, or the exit output if it stopped.
fn serve_by_hand(tmp: &Path, args: &[&str]) -> Result<(std::process::Child, String), std::process::Output> {
    use std::io::BufRead as _;
    let mut child = Command::new(support::regcache::REGCACHE_BIN)
        .arg("serve")
        .args(args)
        .arg("--data-dir")
        .arg(tmp.join("data"))
        .arg("--ca-dir")
        .arg(tmp.join("ca"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("regcache listening on ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(addr) => Ok((child, addr)),
        Err(_) => {
            let _ = child.kill();
            Err(child.wait_with_output().unwrap())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_on_all_addresses_without_auth_or_allowlist_is_refused_unless_insecure_open_proxy() {
    let tmp = tempfile::tempdir().unwrap();
    let out = serve_by_hand(tmp.path(), &["--listen", "0.0.0.0:0"]).expect_err("an open relay must not start");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains("--insecure-open-proxy"), "{stderr}");

    // The operator's explicit choice, or a guard, lets it start.
    for extra in [
        &["--insecure-open-proxy"][..],
        &["--allow-client", "127.0.0.0/8"][..],
        &[
            "--auth-htpasswd",
            htpasswd(tmp.path(), &[("alice", "pw")]).to_str().unwrap(),
        ][..],
    ] {
        let mut args = vec!["--listen", "0.0.0.0:0"];
        args.extend_from_slice(extra);
        let (mut child, addr) = serve_by_hand(tmp.path(), &args)
            .unwrap_or_else(|o| panic!("{extra:?}: did not start: {}", String::from_utf8_lossy(&o.stderr)));
        let addr: SocketAddr = addr.parse().unwrap();
        assert!(addr.ip().is_unspecified(), "{addr}");
        let r = exchange(
            SocketAddr::from(([127, 0, 0, 1], addr.port())),
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 200, "{extra:?}: {r:?}");
        let _ = child.kill();
        let _ = child.wait();
    }
}

// ----- SSRF and tunnel rules -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_to_internal_addresses_and_to_regcache_itself_are_refused() {
    let target = Target::start().await;
    // Open the ports, so that what refuses is the address check, not the port rule.
    let ports = format!("443,80,22,{}", target.port());
    let proxy = Regcache::builder().args(["--tunnel-port", &ports]).start();
    let own = proxy.addr().port();
    let t = target.port();
    let cases = [
        ("127.0.0.1:22".to_string(), "loopback"),
        ("169.254.169.254:80".to_string(), "link-local"),
        (format!("localhost:{t}"), "loopback"),
        (format!("127.0.0.1:{t}"), "loopback"),
        (format!("127.9.9.9:{t}"), "loopback"),
        (format!("[::1]:{t}"), "loopback"),
        (format!("[::ffff:127.0.0.1]:{t}"), "loopback"),
        (format!("0.0.0.0:{t}"), "unicast"),
        // Other spellings of 127.0.0.1 that resolvers accept.
        (format!("2130706433:{t}"), "loopback"),
        (format!("0x7f000001:{t}"), "loopback"),
        (format!("127.1:{t}"), "loopback"),
        (format!("127.0.0.1:{own}"), "regcache itself"),
        (format!("localhost:{own}"), "regcache itself"),
    ];
    for (target_name, why) in &cases {
        let (r, _) = connect(proxy.addr(), target_name, "").await;
        assert_eq!(r.status, 403, "CONNECT {target_name}: {r:?}");
        assert!(r.body.contains(why), "CONNECT {target_name}: {r:?}");
    }
    assert_eq!(target.connections(), 0, "the loopback server saw no connection");

    // By default only 443 tunnels: a public-looking name on another port is refused before
    // any DNS lookup or connection.
    let default = Regcache::builder().start();
    for name in ["example.com:8443", "example.com:22", "example.com:25"] {
        let (r, _) = connect(default.addr(), name, "").await;
        assert_eq!(r.status, 403, "CONNECT {name}: {r:?}");
        assert!(r.body.contains("not a tunnel port"), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_internal_addresses_is_refused() {
    let target = Target::start().await;
    let t = target.port();
    let proxy = Regcache::builder().args(["--tunnel-port", &format!("443,{t}")]).start();
    for url in [
        format!("http://127.0.0.1:{t}/"),
        format!("http://localhost:{t}/"),
        format!("http://[::1]:{t}/"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
    ] {
        let host = url.trim_start_matches("http://").split('/').next().unwrap().to_string();
        let r = exchange(
            proxy.addr(),
            format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(r.status, 403, "GET {url}: {r:?}");
    }
    // A plain request to a port that is neither 80 nor a tunnel port is refused like a CONNECT.
    let r = exchange(
        proxy.addr(),
        "GET http://example.com:25/ HTTP/1.1\r\nHost: example.com:25\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(target.connections(), 0, "the loopback server saw no connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_to_mapping_makes_a_loopback_target_reachable() {
    let target = Target::start().await;
    let proxy = Regcache::builder()
        .connect_to("internal.test:443", target.addr)
        .connect_to("internal.test:80", target.addr)
        .start();
    let (r, tunnel) = connect(proxy.addr(), "internal.test:443", "").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_tunnel_echoes(tunnel).await;
    let r = exchange(
        proxy.addr(),
        "GET http://internal.test/ HTTP/1.1\r\nHost: internal.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "target"), "{r:?}");
    assert_eq!(target.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allowlist_policy_tunnels_only_listed_hosts() {
    let target = Target::start().await;
    let proxy = Regcache::builder()
        .args(["--non-registry", "allowlist", "--tunnel-allow", "allowed.test"])
        .connect_to("allowed.test:443", target.addr)
        .connect_to("other.test:443", target.addr)
        .connect_to("allowed.test:8443", target.addr)
        .start();
    let (r, tunnel) = connect(proxy.addr(), "allowed.test:443", "").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_tunnel_echoes(tunnel).await;
    for name in ["other.test:443", "allowed.test:8443"] {
        let (r, _) = connect(proxy.addr(), name, "").await;
        assert_eq!(r.status, 403, "CONNECT {name}: {r:?}");
        assert!(r.body.contains("--tunnel-allow"), "{r:?}");
    }
    let r = exchange(
        proxy.addr(),
        "GET http://other.test/ HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    // Registries are still intercepted.
    let (r, _) = connect(proxy.addr(), "ghcr.io:443", "").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(target.connections(), 1);
}

// ----- hostile input: limits -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_too_many_headers_and_long_request_lines_get_4xx() {
    support::install_crypto_provider();
    let ca = TestCa::new();
    let tmp = tempfile::tempdir().unwrap();
    let upstream_ca = ca.write_cert(tmp.path());
    let origin = FaultRegistry::new(&ca, &["ghcr.io"]);
    let proxy = Regcache::builder()
        .connect_to("ghcr.io:443", origin.addr())
        .upstream_ca(&upstream_ca)
        .start();
    let many: String = (0..150).map(|i| format!("X-Pad-{i}: v\r\n")).collect();
    let huge = format!("X-Huge: {}\r\n", "a".repeat(100 * 1024));
    let long_path = format!("/{}", "p".repeat(12 * 1024));

    // At the front door.
    let r = exchange(proxy.addr(), format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n")).await;
    assert_eq!(r.status, 431, "150 headers: {r:?}");
    let r = exchange(proxy.addr(), format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{huge}\r\n")).await;
    assert_eq!(r.status, 431, "100 KiB header: {r:?}");
    let r = exchange(proxy.addr(), format!("GET {long_path} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
    assert_eq!(r.status, 414, "12 KiB request line: {r:?}");
    let r = exchange(
        proxy.addr(),
        format!("GET http://example.test{long_path} HTTP/1.1\r\nHost: example.test\r\n\r\n"),
    )
    .await;
    assert_eq!(r.status, 414, "12 KiB absolute-form request line: {r:?}");

    // Inside an intercepted tunnel.
    let r = intercepted(
        &proxy,
        "ghcr.io",
        format!("GET /v2/ HTTP/1.1\r\nHost: ghcr.io\r\n{many}Connection: close\r\n\r\n").as_bytes(),
        false,
    )
    .await;
    assert_eq!(r.status, 431, "{r:?}");
    let r = intercepted(
        &proxy,
        "ghcr.io",
        format!("GET /v2{long_path} HTTP/1.1\r\nHost: ghcr.io\r\nConnection: close\r\n\r\n").as_bytes(),
        false,
    )
    .await;
    assert_eq!(r.status, 414, "{r:?}");
    // HTTP/2 inside the tunnel: the header list is bounded the same way.
    let h2 = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(proxy.proxy_url()).unwrap())
        .tls_backend_preconfigured(support::rustls_client_config(&[&proxy.ca_cert_pem()]).as_ref().clone())
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let res = h2
        .get("https://ghcr.io/v2/")
        .header("x-huge", "a".repeat(100 * 1024))
        .send()
        .await;
    match res {
        Ok(res) => assert_eq!(res.status(), 431, "h2 with a 100 KiB header: {res:?}"),
        Err(e) => assert!(
            !e.is_timeout(),
            "h2 with a 100 KiB header was refused, not left hanging: {e}"
        ),
    }
    let res = h2.get(format!("https://ghcr.io/v2{long_path}")).send().await.unwrap();
    assert_eq!(res.status(), 414, "h2 long path");
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(origin.request_count(), 0, "nothing reached upstream");

    // Still serving.
    let r = exchange(proxy.addr(), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_get_503_and_tunnels_hold_their_slot() {
    let target = Target::start().await;
    let proxy = Regcache::builder()
        .args(["--max-connections", "3"])
        .connect_to("internal.test:443", target.addr)
        .start();
    // Two idle connections and one open tunnel fill the three slots.
    let idle1 = TcpStream::connect(proxy.addr()).await.unwrap();
    let idle2 = TcpStream::connect(proxy.addr()).await.unwrap();
    let (r, tunnel) = connect(proxy.addr(), "internal.test:443", "").await;
    assert_eq!(r.status, 200, "{r:?}");
    // Give the proxy a moment to have accepted the idle ones.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let r = exchange(proxy.addr(), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("too many connections"), "{r:?}");
    assert!(
        proxy.wait_for_log("connection limit", Duration::from_secs(5)),
        "{}",
        proxy.logs()
    );

    // The tunnel still works, and holds its slot until it closes.
    assert_tunnel_echoes(tunnel).await;
    drop(idle1);
    drop(idle2);
    let mut served = None;
    for _ in 0..100 {
        let r = exchange(proxy.addr(), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        if r.status == 200 {
            served = Some(());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served.is_some(), "a slot was freed when the idle clients left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_clients_are_closed_after_the_idle_timeout() {
    let proxy = Regcache::builder().args(["--idle-timeout", "1s"]).start();
    let closed_within = |mut s: TcpStream, trickle: bool| async move {
        let start = std::time::Instant::now();
        let mut buf = [0u8; 1024];
        let mut sent = 0;
        loop {
            if trickle && sent < 40 {
                // One byte of a request head every 100 ms: never a complete head.
                if s.write_all(b"G").await.is_err() {
                    break;
                }
                sent += 1;
            }
            match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) if start.elapsed() > Duration::from_secs(10) => panic!("still open after 10 s"),
                Err(_) => {}
            }
        }
        start.elapsed()
    };
    let silent = closed_within(TcpStream::connect(proxy.addr()).await.unwrap(), false).await;
    assert!(silent < Duration::from_secs(5), "silent client closed after {silent:?}");
    let slow = closed_within(TcpStream::connect(proxy.addr()).await.unwrap(), true).await;
    assert!(slow < Duration::from_secs(5), "slowloris closed after {slow:?}");
}

// ----- hostile input: malformed targets, names, digests ----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_connect_targets_get_400() {
    let proxy = Regcache::builder().start();
    for target in [
        "ghcr.io",
        "ghcr.io:",
        "ghcr.io:99999",
        "ghcr.io:0",
        ":443",
        "bad_host!:443",
        "user@ghcr.io:443",
        "/etc/passwd",
        "[::1:443",
        "ghcr.io:443/v2/",
    ] {
        let r = exchange(proxy.addr(), format!("CONNECT {target} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
        assert_eq!(r.status, 400, "CONNECT {target}: {r:?}");
    }
    let r = exchange(proxy.addr(), b"CONNECT ghcr.io\0:443 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status, 400, "{r:?}");
    let r = exchange(proxy.addr(), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status, 200, "still serving");
}

struct RegistryWorld {
    _ca: TestCa,
    tmp: tempfile::TempDir,
    origin: FaultRegistry,
    proxy: Regcache,
}

fn registry_world() -> RegistryWorld {
    support::install_crypto_provider();
    let ca = TestCa::new();
    let tmp = tempfile::tempdir().unwrap();
    let upstream_ca = ca.write_cert(tmp.path());
    let origin = FaultRegistry::new(&ca, &["ghcr.io"]);
    let proxy = Regcache::builder()
        .connect_to("ghcr.io:443", origin.addr())
        .upstream_ca(&upstream_ca)
        .data_dir(&tmp.path().join("data"))
        .start();
    RegistryWorld {
        _ca: ca,
        tmp,
        origin,
        proxy,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_in_repository_names_is_name_invalid_and_never_leaves_the_store() {
    let w = registry_world();
    let secret = w.tmp.path().join("secret.txt");
    std::fs::write(&secret, "top-secret-bytes").unwrap();
    let good = support::sha256_digest(b"x");
    let paths = [
        "/v2/../../../../secret.txt/manifests/latest".to_string(),
        "/v2/%2e%2e/%2e%2e/secret.txt/manifests/latest".to_string(),
        "/v2/%2E%2E%2F%2E%2E%2Fsecret.txt/manifests/latest".to_string(),
        format!("/v2/..%2f..%2fsecret.txt/blobs/{good}"),
        format!("/v2//etc/passwd/blobs/{good}"),
        format!("/v2/org/./app/blobs/{good}"),
        format!("/v2/org/../app/blobs/{good}"),
        "/v2/org%5c..%5capp/manifests/latest".to_string(),
        "/v2/org\\..\\app/manifests/latest".to_string(),
        "/v2/org%00app/manifests/latest".to_string(),
        "/v2/Org/App/manifests/latest".to_string(),
        "/v2/org/app/tags/../../../secret.txt/tags/list".to_string(),
        "/v2/../../secret.txt/tags/list".to_string(),
        format!("/v2/../../x/referrers/{good}"),
        "/v2/../../x/blobs/uploads/".to_string(),
        "/v2/../../../secret.txt".to_string(),
    ];
    for path in &paths {
        for method in ["GET", "HEAD"] {
            let r = registry_get(&w.proxy, "ghcr.io", method, path).await;
            assert_eq!(r.status, 400, "{method} {path}: {r:?}");
            if method == "GET" && r.header("content-type").is_some_and(|t| t.contains("json")) {
                assert_eq!(r.error_code(), "NAME_INVALID", "{method} {path}: {r:?}");
            }
            assert!(!r.body.contains("top-secret"), "{r:?}");
        }
    }
    // The ones hyper accepts at all are answered in the registry's error style.
    let r = registry_get(&w.proxy, "ghcr.io", "GET", &paths[0]).await;
    assert_eq!(r.error_code(), "NAME_INVALID");
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{r:?}"
    );
    assert_eq!(w.origin.request_count(), 0, "nothing was forwarded upstream");
    let outside: Vec<PathBuf> = files_under(&w.tmp.path().join("data"))
        .into_iter()
        .filter(|p| !p.starts_with(w.tmp.path().join("data").join("cache")))
        .collect();
    assert!(outside.is_empty(), "files outside the store: {outside:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_or_unsupported_digests_and_references_are_400_in_the_registry_style() {
    let w = registry_world();
    let hex63 = "a".repeat(63);
    let upper = support::sha256_digest(b"x")
        .to_ascii_uppercase()
        .replace("SHA256:", "sha256:");
    let cases = [
        ("/v2/org/app/blobs/sha256:xyz".to_string(), "DIGEST_INVALID"),
        (
            "/v2/org/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e".to_string(),
            "DIGEST_INVALID",
        ),
        (format!("/v2/org/app/blobs/sha256:{hex63}"), "DIGEST_INVALID"),
        (format!("/v2/org/app/blobs/{upper}"), "DIGEST_INVALID"),
        ("/v2/org/app/blobs/sha256".to_string(), "DIGEST_INVALID"),
        ("/v2/org/app/blobs/".to_string(), "DIGEST_INVALID"),
        ("/v2/org/app/manifests/sha256:xyz".to_string(), "DIGEST_INVALID"),
        ("/v2/org/app/manifests/md5:00".to_string(), "DIGEST_INVALID"),
        ("/v2/org/app/referrers/sha256:xyz".to_string(), "DIGEST_INVALID"),
        ("/v2/org/app/manifests/-bad".to_string(), "MANIFEST_INVALID"),
        ("/v2/org/app/manifests/a/b".to_string(), "MANIFEST_INVALID"),
        (format!("/v2/org/app/manifests/{}", "t".repeat(129)), "MANIFEST_INVALID"),
        ("/v2/org/app/manifests/".to_string(), "MANIFEST_INVALID"),
    ];
    for (path, code) in &cases {
        let r = registry_get(&w.proxy, "ghcr.io", "GET", path).await;
        assert_eq!(r.status, 400, "GET {path}: {r:?}");
        assert_eq!(&r.error_code(), code, "GET {path}: {r:?}");
        let r = registry_get(&w.proxy, "ghcr.io", "HEAD", path).await;
        assert_eq!(r.status, 400, "HEAD {path}: {r:?}");
    }
    assert_eq!(w.origin.request_count(), 0, "nothing was forwarded upstream");
}

// ----- oversized manifests ---------------------------------------------------------------------

/// A manifest-shaped JSON document of exactly `len` bytes.
fn manifest_of_len(len: usize) -> Vec<u8> {
    let head = format!("{{\"schemaVersion\":2,\"mediaType\":\"{MANIFEST_TYPE}\",\"annotations\":{{\"pad\":\"");
    let tail = "\"}}";
    let mut v = head.into_bytes();
    v.resize(len - tail.len(), b'p');
    v.extend_from_slice(tail.as_bytes());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_manifest_over_4_mib_is_502_and_never_cached() {
    let w = registry_world();
    let big = manifest_of_len(4 * 1024 * 1024 + 1);
    let big_digest = w.origin.put_manifest("org/big", Some("v1"), MANIFEST_TYPE, big);
    let fits = manifest_of_len(4 * 1024 * 1024);
    let fits_digest = w.origin.put_manifest("org/fits", Some("v1"), MANIFEST_TYPE, fits);

    for path in [
        "/v2/org/big/manifests/v1".to_string(),
        format!("/v2/org/big/manifests/{big_digest}"),
    ] {
        for round in 0..2 {
            let r = registry_get(&w.proxy, "ghcr.io", "GET", &path).await;
            assert_eq!(r.status, 502, "{path} #{round}: {}", r.head);
            assert!(r.body.contains("4 MiB"), "{r:?}");
        }
        assert_eq!(
            w.origin.count("GET", &path),
            2,
            "{path}: asked upstream each time, never cached"
        );
    }
    // Exactly 4 MiB is a manifest like any other.
    let r = registry_get(&w.proxy, "ghcr.io", "GET", "/v2/org/fits/manifests/v1").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.header("docker-content-digest"), Some(fits_digest.as_str()));
    let r = registry_get(
        &w.proxy,
        "ghcr.io",
        "GET",
        &format!("/v2/org/fits/manifests/{fits_digest}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.header("x-cache"), Some("HIT"));
}

/// An HTTPS origin that answers every request with a chunked (length-less) manifest of `len`
/// bytes; counts requests.
async fn chunked_manifest_origin(ca: &TestCa, name: &str, len: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = ca.rustls_server_config(&[name]).as_ref().clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {MANIFEST_TYPE}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                );
                if tls.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let body = manifest_of_len(len);
                for piece in body.chunks(64 * 1024) {
                    let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
                    chunk.extend_from_slice(piece);
                    chunk.extend_from_slice(b"\r\n");
                    if tls.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = tls.write_all(b"0\r\n\r\n").await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upstream_manifest_over_4_mib_is_502_too() {
    support::install_crypto_provider();
    let ca = TestCa::new();
    let tmp = tempfile::tempdir().unwrap();
    let upstream_ca = ca.write_cert(tmp.path());
    let (addr, requests) = chunked_manifest_origin(&ca, "quay.io", 5 * 1024 * 1024).await;
    let proxy = Regcache::builder()
        .connect_to("quay.io:443", addr)
        .upstream_ca(&upstream_ca)
        .start();
    for round in 0..2 {
        let r = registry_get(&proxy, "quay.io", "GET", "/v2/org/big/manifests/v1").await;
        assert_eq!(r.status, 502, "#{round}: {r:?}");
        assert!(r.body.contains("4 MiB"), "{r:?}");
    }
    assert_eq!(requests.load(Ordering::SeqCst), 2, "never cached");
}

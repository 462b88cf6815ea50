//! The real distribution registry (`/usr/bin/docker-registry`, 2.8) on
//! 127.0.0.1 with TLS from a [`TestCa`], optional Basic or token auth.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::TestCa;

/// Path of the Debian-packaged distribution registry.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How long to wait for the registry to answer `GET /v2/`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Authentication the registry enforces.
#[derive(Clone, Debug, Default)]
pub enum RegistryAuth {
    /// Anonymous read and write.
    #[default]
    None,
    /// htpasswd (bcrypt, `$2y$`) with one user.
    Basic { user: String, pass: String },
    /// Docker token auth: the registry answers 401 with
    /// `WWW-Authenticate: Bearer realm=…,service=…` and accepts JWTs signed by
    /// a key whose `x5c` chain ends in `root_cert_bundle_pem`.
    Token {
        realm: String,
        service: String,
        issuer: String,
        root_cert_bundle_pem: String,
    },
}

impl RegistryAuth {
    /// Shorthand for [`RegistryAuth::Basic`].
    pub fn basic(user: &str, pass: &str) -> Self {
        RegistryAuth::Basic {
            user: user.to_owned(),
            pass: pass.to_owned(),
        }
    }
}

/// Builder for [`Registry`].
pub struct RegistryBuilder<'a> {
    ca: &'a TestCa,
    names: Vec<String>,
    auth: RegistryAuth,
    storage_dir: Option<PathBuf>,
    access_log: bool,
    bind: Option<SocketAddr>,
}

impl<'a> RegistryBuilder<'a> {
    /// Listen on this address (a loopback IP of its own, a fixed port such as 443) instead of
    /// `127.0.0.1` and a free port; its IP is added to the certificate's names.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = Some(addr);
        self
    }

    /// Names for the TLS certificate (DNS or IP literals). `127.0.0.1` and
    /// `localhost` are always added so the registry is reachable directly.
    pub fn names(mut self, names: &[&str]) -> Self {
        self.names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Authentication mode (default: none).
    pub fn auth(mut self, auth: RegistryAuth) -> Self {
        self.auth = auth;
        self
    }

    /// Use this directory as filesystem storage instead of a private temp
    /// dir, so two registries can share one storage. The caller owns it.
    pub fn storage_dir(mut self, dir: &Path) -> Self {
        self.storage_dir = Some(dir.to_owned());
        self
    }

    /// Whether to write the Apache combined access log to the log file
    /// (default: on; [`Registry::access_log`] parses it).
    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    /// Writes the config and starts the registry; panics with the registry's
    /// log if it does not answer `GET /v2/` over TLS within 20 s.
    pub fn start(self) -> Registry {
        let tmp = tempfile::Builder::new()
            .prefix("regcache-registry-")
            .tempdir()
            .expect("create registry temp dir");
        let storage = match &self.storage_dir {
            Some(dir) => dir.clone(),
            None => {
                let dir = tmp.path().join("storage");
                std::fs::create_dir_all(&dir).expect("create registry storage dir");
                dir
            }
        };

        let mut names: Vec<String> = self.names.clone();
        let ip = self.bind.map_or(std::net::IpAddr::from([127, 0, 0, 1]), |a| a.ip());
        for extra in [ip.to_string().as_str(), "127.0.0.1", "localhost"] {
            if !names.iter().any(|n| n == extra) {
                names.push(extra.to_owned());
            }
        }
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (cert_pem, key_pem) = self.ca.issue_server_cert(&name_refs);
        let cert_path = tmp.path().join("server.crt");
        let key_path = tmp.path().join("server.key");
        // Go's tls.LoadX509KeyPair wants the leaf first; adding the CA makes
        // the chain complete for clients that do not have it as a root.
        std::fs::write(&cert_path, format!("{cert_pem}{}", self.ca.cert_pem())).expect("write registry cert");
        std::fs::write(&key_path, key_pem).expect("write registry key");

        let auth_yaml = match &self.auth {
            RegistryAuth::None => String::new(),
            RegistryAuth::Basic { user, pass } => {
                let htpasswd = tmp.path().join("htpasswd");
                std::fs::write(&htpasswd, htpasswd_line(user, pass)).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: regcache-test\n    path: {}\n",
                    yaml_str(&htpasswd.display().to_string())
                )
            }
            RegistryAuth::Token {
                realm,
                service,
                issuer,
                root_cert_bundle_pem,
            } => {
                let bundle = tmp.path().join("token-roots.pem");
                std::fs::write(&bundle, root_cert_bundle_pem).expect("write token root bundle");
                format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    yaml_str(realm),
                    yaml_str(service),
                    yaml_str(issuer),
                    yaml_str(&bundle.display().to_string())
                )
            }
        };

        let mut registry = Registry {
            child: None,
            ip,
            port: 0,
            secret: super::random_hex(16),
            config_path: tmp.path().join("config.yml"),
            log_path: tmp.path().join("registry.log"),
            storage,
            cert_path,
            key_path,
            auth_yaml,
            access_log: self.access_log,
            auth: self.auth,
            names,
            client_config: {
                // The probe speaks HTTP/1.1 by hand: do not offer h2.
                let mut config = self.ca.rustls_client_config().as_ref().clone();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Arc::new(config)
            },
            _tmp: tmp,
        };

        if let Some(addr) = self.bind {
            registry.port = addr.port();
            registry.write_config();
            if let Err(log) = registry.spawn_and_wait() {
                panic!("docker-registry did not start on {addr}; log:\n{log}");
            }
            return registry;
        }
        // The free port can be taken between picking and binding: retry then.
        let mut last_log = String::new();
        for _attempt in 0..5 {
            registry.port = super::free_port();
            registry.write_config();
            match registry.spawn_and_wait() {
                Ok(()) => return registry,
                Err(log) if log.contains("address already in use") => last_log = log,
                Err(log) => panic!(
                    "docker-registry did not start on 127.0.0.1:{}; log:\n{log}",
                    registry.port
                ),
            }
        }
        panic!("docker-registry never found a free port; last log:\n{last_log}");
    }
}

/// A running `docker-registry serve` child process.
pub struct Registry {
    child: Option<Child>,
    ip: std::net::IpAddr,
    port: u16,
    secret: String,
    config_path: PathBuf,
    log_path: PathBuf,
    storage: PathBuf,
    cert_path: PathBuf,
    key_path: PathBuf,
    auth_yaml: String,
    access_log: bool,
    auth: RegistryAuth,
    names: Vec<String>,
    client_config: Arc<rustls::ClientConfig>,
    _tmp: tempfile::TempDir,
}

/// One parsed line of the registry's access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogEntry {
    /// `GET`, `HEAD`, `PUT`, …
    pub method: String,
    /// Request target as sent, e.g. `/v2/team/app/blobs/sha256:…`.
    pub path: String,
    /// Response status.
    pub status: u16,
}

impl Registry {
    /// Starts a registry with a certificate for `names` (plus `127.0.0.1`
    /// and `localhost`) and the given auth, with private temp storage.
    pub fn start(ca: &TestCa, names: &[&str], auth: RegistryAuth) -> Registry {
        Registry::builder(ca).names(names).auth(auth).start()
    }

    /// A builder with no extra names, no auth and private storage.
    pub fn builder(ca: &TestCa) -> RegistryBuilder<'_> {
        RegistryBuilder {
            ca,
            names: Vec::new(),
            auth: RegistryAuth::None,
            storage_dir: None,
            access_log: true,
            bind: None,
        }
    }

    /// `127.0.0.1:PORT` (or the address given to [`RegistryBuilder::bind`]).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr())
    }

    /// The names in the registry's TLS certificate.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The auth mode it was started with.
    pub fn auth(&self) -> &RegistryAuth {
        &self.auth
    }

    /// The filesystem storage root.
    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    /// Path of the combined stdout/stderr log (warn-level log lines plus the
    /// access log).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The registry's log so far.
    pub fn logs(&self) -> String {
        super::read_log_lossy(&self.log_path)
    }

    /// Requests seen so far, parsed from the access log (the registry writes
    /// a line after the response is finished, so poll when asserting right
    /// after a client returns). Includes the readiness probes (`GET /v2/`).
    pub fn access_log(&self) -> Vec<AccessLogEntry> {
        self.logs().lines().filter_map(parse_access_line).collect()
    }

    /// Number of access-log entries matching `method` whose path contains
    /// `path_part`.
    pub fn count_requests(&self, method: &str, path_part: &str) -> usize {
        self.access_log()
            .iter()
            .filter(|e| e.method == method && e.path.contains(path_part))
            .count()
    }

    /// Whether the child process is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the registry (SIGKILL) to simulate an upstream outage. The port
    /// then refuses connections. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the registry again on the same port, storage and config after
    /// [`Registry::stop`]; waits for readiness. Panics if the port was taken
    /// meanwhile.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.spawn_and_wait() {
            panic!(
                "docker-registry did not restart on 127.0.0.1:{}; log:\n{log}",
                self.port
            );
        }
    }

    fn write_config(&self) {
        let access_log = if self.access_log { "false" } else { "true" };
        let config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  formatter: text\n  accesslog:\n    disabled: {access_log}\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n  redirect:\n    disable: true\n\
             http:\n  addr: {addr}\n  secret: {secret}\n  \
             tls:\n    certificate: {cert}\n    key: {key}\n  \
             headers:\n    X-Content-Type-Options: [nosniff]\n\
             {auth}",
            storage = yaml_str(&self.storage.display().to_string()),
            addr = self.addr(),
            secret = self.secret,
            cert = yaml_str(&self.cert_path.display().to_string()),
            key = yaml_str(&self.key_path.display().to_string()),
            auth = self.auth_yaml,
        );
        std::fs::write(&self.config_path, config).expect("write registry config.yml");
    }

    /// Spawns the child and polls until `GET /v2/` answers 200 or 401.
    /// On failure returns the log (the child is reaped).
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open registry log file");
        let log_err = log.try_clone().expect("clone registry log file handle");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&self.config_path)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {REGISTRY_BIN}: {e} (is docker-registry installed?)"));
        self.child = Some(child);

        let addr = self.addr();
        let client_config = self.client_config.clone();
        let mut exited = None;
        let ready = super::poll_until(READY_TIMEOUT, || {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                exited = Some(status);
                return Some(false);
            }
            probe_v2(addr, &client_config).map(|_| true)
        });
        match (ready, exited) {
            (Some(true), _) => Ok(()),
            (_, Some(status)) => {
                self.child = None;
                Err(format!("(exited with {status})\n{}", self.logs()))
            }
            _ => {
                self.stop();
                Err(format!(
                    "(no answer to GET /v2/ within {READY_TIMEOUT:?})\n{}",
                    self.logs()
                ))
            }
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "----- docker-registry log (127.0.0.1:{}) -----\n{}\n----- end -----",
                self.port,
                self.logs()
            );
        }
    }
}

/// One TLS `GET /v2/` to `addr`; returns the status if it is 200 or 401.
fn probe_v2(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Option<u16> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    tcp.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    let server_name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(config.clone(), server_name).ok()?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match tls.read(&mut head[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let line = std::str::from_utf8(&head[..n]).ok()?;
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    matches!(status, 200 | 401).then_some(status)
}

/// An htpasswd line `user:$2y$…` (bcrypt cost 4: fast, and the registry
/// checks the hash on every request).
pub fn htpasswd_line(user: &str, pass: &str) -> String {
    let hash = bcrypt::hash_with_result(pass, 4)
        .expect("bcrypt hash")
        .format_for_version(bcrypt::Version::TwoY);
    format!("{user}:{hash}\n")
}

/// Double-quoted YAML scalar.
fn yaml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Parses `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 401 87 "" "ua"`.
fn parse_access_line(line: &str) -> Option<AccessLogEntry> {
    let start = line.find("] \"")? + 3;
    let rest = &line[start..];
    let end = rest.find('"')?;
    let mut request = rest[..end].split_whitespace();
    let method = request.next()?.to_owned();
    let path = request.next()?.to_owned();
    let status = rest[end + 1..].split_whitespace().next()?.parse().ok()?;
    Some(AccessLogEntry { method, path, status })
}

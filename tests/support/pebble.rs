//! Debian's `pebble` (Let's Encrypt's ACME test server) on loopback, with
//! `pebble-challtestsrv` as its DNS server answering every name with 127.0.0.1, so that
//! pebble's validations of any name reach a listener of the test.
//!
//! pebble serves its directory over HTTPS with a certificate from the given [`TestCa`]; the
//! certificates it issues chain to a root it makes at start, read from its management API
//! (`/roots/0`). Validation is real (no `PEBBLE_VA_ALWAYS_VALID`): TLS-ALPN-01 is checked on
//! the port given to [`Pebble::start`], which is the port pebble dials for every name.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::TestCa;

pub const PEBBLE_BIN: &str = "/usr/bin/pebble";
pub const CHALLTESTSRV_BIN: &str = "/usr/bin/pebble-challtestsrv";

/// A running pebble and its DNS server.
pub struct Pebble {
    pebble: Child,
    dns: Child,
    port: u16,
    management_port: u16,
    ca_file: PathBuf,
    client: Arc<rustls::ClientConfig>,
    log_path: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Pebble {
    /// Starts pebble validating TLS-ALPN-01 on `tls_port` and issuing certificates valid for
    /// `validity` (pebble's default, years, when `None`); panics with its log if its
    /// directory does not answer within 20 s.
    pub fn start(ca: &TestCa, tls_port: u16, validity: Option<Duration>) -> Pebble {
        for bin in [PEBBLE_BIN, CHALLTESTSRV_BIN] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: install Debian's pebble (tests/run.sh does) to run the ACME tests"
            );
        }
        let tmp = tempfile::Builder::new().prefix("regcache-pebble-").tempdir().unwrap();
        let (cert, key) = ca.issue_server_cert(&["127.0.0.1", "localhost"]);
        let (cert_path, key_path) = (tmp.path().join("pebble.crt"), tmp.path().join("pebble.key"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        let ca_file = ca.write_cert(tmp.path());

        // All picked together so no two are the same port.
        let [dns_port, dns_management, port, management_port, http_port] = super::free_ports(5)[..] else {
            unreachable!("free_ports(5) gives five ports")
        };
        let dns_log = std::fs::File::create(tmp.path().join("challtestsrv.log")).unwrap();
        let dns = Command::new(CHALLTESTSRV_BIN)
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .stdout(dns_log.try_clone().unwrap())
            .stderr(dns_log)
            .spawn()
            .expect("start pebble-challtestsrv");

        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": cert_path,
                "privateKey": key_path,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        if let Some(v) = validity {
            config["pebble"]["certificateValidityPeriod"] = serde_json::json!(v.as_secs());
        }
        let config_path = tmp.path().join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log_path = tmp.path().join("pebble.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let pebble = Command::new(PEBBLE_BIN)
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // No random sleep before validating; no nonces rejected at random.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start pebble");
        let me = Pebble {
            pebble,
            dns,
            port,
            management_port,
            ca_file,
            client: ca.rustls_client_config(),
            log_path,
            _tmp: tmp,
        };
        let up = super::poll_until(Duration::from_secs(20), || {
            me.get(me.port, "/dir").ok().filter(|b| b.contains("newOrder"))
        });
        assert!(up.is_some(), "pebble did not serve its directory; log:\n{}", me.logs());
        me
    }

    /// The port of its directory.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory URL.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The test CA file that pebble's own HTTPS certificate chains to (`--acme-ca-cert`).
    pub fn https_ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The root its issued certificates chain to (PEM).
    pub fn root_pem(&self) -> String {
        self.get(self.management_port, "/roots/0")
            .unwrap_or_else(|e| panic!("pebble's root: {e}; log:\n{}", self.logs()))
    }

    /// What pebble logged.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `GET path` on pebble's `port` (HTTP/1.1 over TLS, trusting the test CA): the body.
    fn get(&self, port: u16, path: &str) -> super::Result<String> {
        let mut tcp = TcpStream::connect(("127.0.0.1", port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut config = self.client.as_ref().clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut conn = rustls::ClientConnection::new(Arc::new(config), "127.0.0.1".try_into()?)?;
        let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
        write!(
            tls,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        // Go closes without close_notify at times: keep what arrived.
        let _ = tls.read_to_string(&mut text);
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP response")?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("GET {path}: {}", head.lines().next().unwrap_or("")).into());
        }
        Ok(body.to_string())
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.dns] {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- pebble -----\n{}", self.logs());
        }
    }
}

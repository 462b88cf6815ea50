//! Debian's `haproxy` in TCP mode on loopback, balancing connections round robin over some
//! backends: a fleet of regcache replicas behind one `HTTPS_PROXY` address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const HAPROXY_BIN: &str = "/usr/sbin/haproxy";

/// A running haproxy.
pub struct Haproxy {
    child: Option<Child>,
    addr: SocketAddr,
    log_path: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Haproxy {
    /// Balances `127.0.0.1:PORT` (a free port) over `backends`, one TCP connection at a time
    /// (a CONNECT tunnel stays on the replica it reached); panics with its log if it does not
    /// listen within 10 s.
    pub fn start(backends: &[SocketAddr]) -> Haproxy {
        assert!(
            std::path::Path::new(HAPROXY_BIN).exists(),
            "{HAPROXY_BIN} is missing: install Debian's haproxy (tests/run.sh does) to run the fleet tests"
        );
        let tmp = tempfile::Builder::new().prefix("regcache-haproxy-").tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
        let mut config = format!(
            "global\n  maxconn 4096\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10m\n  \
             timeout server 10m\n\nfrontend fleet\n  bind {addr}\n  default_backend replicas\n\n\
             backend replicas\n  balance roundrobin\n"
        );
        for (i, b) in backends.iter().enumerate() {
            config.push_str(&format!("  server r{i} {b}\n"));
        }
        let config_path = tmp.path().join("haproxy.cfg");
        std::fs::write(&config_path, config).unwrap();
        let log_path = tmp.path().join("haproxy.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(HAPROXY_BIN)
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start haproxy");
        let me = Haproxy {
            child: Some(child),
            addr,
            log_path,
            _tmp: tmp,
        };
        let up = super::poll_until(Duration::from_secs(10), || std::net::TcpStream::connect(addr).ok());
        assert!(up.is_some(), "haproxy did not listen on {addr}; log:\n{}", me.logs());
        me
    }

    /// `http://127.0.0.1:PORT`, for `HTTPS_PROXY`.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What haproxy logged.
    pub fn logs(&self) -> String {
        super::read_log_lossy(&self.log_path)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

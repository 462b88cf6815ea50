//! Debian's `squid` on loopback as the parent proxy of a corporate network: names resolved from
//! its own hosts file (so a registry on an own loopback IP is reachable *only* through it),
//! optionally Basic login (`basic_ncsa_auth`) and a list of refused destination domains.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const SQUID_BIN: &str = "/usr/sbin/squid";
const NCSA_AUTH: &str = "/usr/lib/squid/basic_ncsa_auth";

/// How the squid is set up.
#[derive(Default)]
pub struct SquidOptions {
    /// `IP NAME` lines of squid's own hosts file.
    pub hosts: Vec<(String, String)>,
    /// Basic login squid requires (`407` otherwise).
    pub login: Option<(String, String)>,
    /// Destination domains refused with `403`.
    pub denied: Vec<String>,
}

/// A running squid.
pub struct Squid {
    child: Option<Child>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Squid {
    /// Starts squid on `127.0.0.1:PORT` (a free port); panics with its log if it does not listen
    /// within 20 s.
    pub fn start(opts: SquidOptions) -> Squid {
        assert!(
            std::path::Path::new(SQUID_BIN).exists(),
            "{SQUID_BIN} is missing: install Debian's squid (tests/run.sh does) to run the parent proxy tests"
        );
        let dir = tempfile::Builder::new().prefix("regcache-squid-").tempdir().unwrap();
        let d = dir.path();
        let addr: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
        let hosts: String = opts.hosts.iter().map(|(ip, name)| format!("{ip} {name}\n")).collect();
        std::fs::write(d.join("hosts"), hosts).unwrap();
        let mut conf = format!(
            "http_port {addr}\nvisible_hostname regcache-test-squid\npid_filename {pid}\n\
             cache deny all\ncache_mem 8 MB\nlogfile_rotate 0\npinger_enable off\n\
             access_log stdio:{access}\ncache_log stdio:{cache}\ncoredump_dir {dir}\n\
             hosts_file {hosts}\ndns_nameservers 127.0.0.1\nshutdown_lifetime 0 seconds\n\
             acl CONNECT method CONNECT\n",
            pid = d.join("squid.pid").display(),
            access = d.join("access.log").display(),
            cache = d.join("cache.log").display(),
            dir = d.display(),
            hosts = d.join("hosts").display(),
        );
        if !opts.denied.is_empty() {
            conf.push_str(&format!(
                "acl denied dstdomain {}\nhttp_access deny denied\n",
                opts.denied.join(" ")
            ));
        }
        if let Some((user, pass)) = &opts.login {
            let line = Command::new("openssl")
                .args(["passwd", "-apr1", pass])
                .output()
                .expect("openssl passwd");
            let hash = String::from_utf8(line.stdout).unwrap();
            std::fs::write(d.join("passwd"), format!("{user}:{}\n", hash.trim())).unwrap();
            conf.push_str(&format!(
                "auth_param basic program {NCSA_AUTH} {}\nauth_param basic realm regcache-test\n\
                 acl authed proxy_auth REQUIRED\nhttp_access deny !authed\n",
                d.join("passwd").display()
            ));
        }
        conf.push_str("http_access allow CONNECT\nhttp_access deny all\n");
        std::fs::write(d.join("squid.conf"), conf).unwrap();
        // squid drops to the `proxy` user: it must read its files and write its logs.
        let uid = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, "proxy"]).output().expect("id proxy");
            String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .parse()
                .expect("proxy user")
        };
        let (u, g) = (uid("-u"), uid("-g"));
        for entry in std::fs::read_dir(d).unwrap() {
            std::os::unix::fs::chown(entry.unwrap().path(), Some(u), Some(g)).unwrap();
        }
        std::os::unix::fs::chown(d, Some(u), Some(g)).unwrap();
        let out = std::fs::File::create(d.join("stdout.log")).unwrap();
        let child = Command::new(SQUID_BIN)
            .args(["-N", "-d", "1", "-f"])
            .arg(d.join("squid.conf"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start squid");
        let me = Squid {
            child: Some(child),
            addr,
            dir,
        };
        let up = super::poll_until(Duration::from_secs(20), || std::net::TcpStream::connect(addr).ok());
        assert!(up.is_some(), "squid did not listen on {addr}; log:\n{}", me.logs());
        me
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://[user:pass@]127.0.0.1:PORT`, for `--upstream-proxy`.
    pub fn url(&self, login: Option<(&str, &str)>) -> String {
        match login {
            Some((u, p)) => format!("http://{u}:{p}@{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    /// Lines of its access log (squid's native format: `… CODE/STATUS BYTES METHOD URL …`).
    pub fn access_log(&self) -> Vec<String> {
        super::read_log_lossy(&self.dir.path().join("access.log"))
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// How many `CONNECT`s to `authority` it logged with `status` (200 opened).
    pub fn connects(&self, authority: &str, status: u16) -> usize {
        self.access_log()
            .iter()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 6 && f[5] == "CONNECT" && f[6] == authority && f[3].ends_with(&format!("/{status}"))
            })
            .count()
    }

    /// Its own log and what it printed.
    pub fn logs(&self) -> String {
        let p = |n: &str| super::read_log_lossy(&self.dir.path().join(n));
        format!("{}\n{}\naccess:\n{}", p("stdout.log"), p("cache.log"), p("access.log"))
    }

    /// The directory holding its files.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- squid ---\n{}", self.logs());
        }
    }
}

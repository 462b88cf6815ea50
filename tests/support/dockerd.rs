//! A private Docker engine (Debian's `docker.io`: `/usr/sbin/dockerd` and `/usr/bin/docker`)
//! for pulls through regcache, touching nothing of the machine's own Docker set-up.
//!
//! dockerd runs with its own `--data-root`, `--exec-root`, socket and pid file in a temp dir,
//! `vfs` storage (no overlay mounts), no iptables, no bridge. It starts its own containerd
//! (state under the exec root). It runs in a private mount namespace (`unshare -m`) with a
//! tmpfs over `/etc/docker`, filled from a directory the test prepares: so `key.json`,
//! `daemon.json` and `certs.d/<host>/ca.crt` (how dockerd trusts a registry's CA) never
//! reach the real `/etc/docker`. Proxy settings come only from the environment given here:
//! dockerd reads `HTTPS_PROXY`/`HTTP_PROXY` from its own environment, not the CLI's.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The engine from Debian's `docker.io`.
pub const DOCKERD_BIN: &str = "/usr/sbin/dockerd";
/// The CLI from Debian's `docker.io` (not whatever `docker` comes first in `PATH`).
pub const DOCKER_BIN: &str = "/usr/bin/docker";

/// How long dockerd (and its containerd) may take to answer the API.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default limit for one `docker` CLI run.
const CLI_TIMEOUT: Duration = Duration::from_secs(180);

/// Mounts the private `/etc/docker`, copies the prepared tree into it and becomes dockerd.
/// `$1` is the prepared directory, the rest is the dockerd command line.
const START_SCRIPT: &str = r#"set -e
mount -t tmpfs -o mode=0755,size=16m regcache-test-etc-docker /etc/docker
cp -R "$1"/. /etc/docker/
if [ -n "$REGCACHE_TEST_HOSTS" ]; then mount --bind "$REGCACHE_TEST_HOSTS" /etc/hosts; fi
shift
exec "$@"
"#;

/// Builder for [`Dockerd`].
#[derive(Clone, Debug, Default)]
pub struct DockerdBuilder {
    proxy: Option<String>,
    trusted: Vec<(String, String)>,
    mirrors: Vec<String>,
    hosts: Vec<(String, std::net::IpAddr)>,
    system_roots: Vec<String>,
}

impl DockerdBuilder {
    /// `HTTPS_PROXY` and `HTTP_PROXY` of the engine (`NO_PROXY` is always unset).
    pub fn proxy(mut self, url: &str) -> Self {
        self.proxy = Some(url.to_owned());
        self
    }

    /// A Docker Hub mirror (`--registry-mirror URL`, as `registry-mirrors` in daemon.json).
    pub fn registry_mirror(mut self, url: &str) -> Self {
        self.mirrors.push(url.to_owned());
        self
    }

    /// Resolve `name` to `ip` (a line of a private `/etc/hosts`, bind-mounted in dockerd's
    /// mount namespace), e.g. Docker Hub's `registry-1.docker.io` to a loopback registry.
    pub fn resolve(mut self, name: &str, ip: std::net::IpAddr) -> Self {
        self.hosts.push((name.to_owned(), ip));
        self
    }

    /// Add `ca_pem` to the engine's system roots (`SSL_CERT_FILE`, the system bundle plus
    /// this): dockerd checks Docker Hub's certificate against those, never `certs.d`.
    pub fn system_root(mut self, ca_pem: &str) -> Self {
        self.system_roots.push(ca_pem.to_owned());
        self
    }

    /// Trust `ca_pem` for registry `host` (`host` or `host:port` as in the image name; the
    /// file goes to `/etc/docker/certs.d/<host>/ca.crt` in the private `/etc/docker`).
    pub fn trust(mut self, host: &str, ca_pem: &str) -> Self {
        self.trusted.push((host.to_owned(), ca_pem.to_owned()));
        self
    }

    /// Starts dockerd and waits until the API answers; panics with the reason (missing
    /// binaries, no `/etc/docker` to mount over, dockerd exiting, no answer) and its log.
    pub fn start(self) -> Dockerd {
        for bin in [
            DOCKERD_BIN,
            DOCKER_BIN,
            "/usr/bin/containerd",
            "/usr/sbin/runc",
            "/usr/bin/unshare",
        ] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: install Debian's docker.io (tests/run.sh does) to run the dockerd tests"
            );
        }
        assert!(
            Path::new("/etc/docker").is_dir(),
            "/etc/docker does not exist: the private tmpfs is mounted over it (docker.io creates it)"
        );
        let tmp = tempfile::Builder::new()
            .prefix("regcache-dockerd-")
            .tempdir()
            .expect("create dockerd temp dir");
        let etc = tmp.path().join("etc-docker");
        std::fs::create_dir_all(&etc).expect("create private /etc/docker source");
        for (host, pem) in &self.trusted {
            let dir = etc.join("certs.d").join(host);
            std::fs::create_dir_all(&dir).expect("create certs.d/<host>");
            std::fs::write(dir.join("ca.crt"), pem).expect("write certs.d/<host>/ca.crt");
        }
        let data_root = tmp.path().join("data");
        let exec_root = tmp.path().join("exec");
        let client_config = tmp.path().join("client-config");
        for d in [&data_root, &exec_root, &client_config] {
            std::fs::create_dir_all(d).expect("create dockerd dir");
        }
        let socket = tmp.path().join("docker.sock");
        let pidfile = tmp.path().join("docker.pid");
        let log_path = tmp.path().join("dockerd.log");
        let log = File::create(&log_path).expect("create dockerd log");
        let log_err = log.try_clone().expect("clone dockerd log handle");

        let mut cmd = Command::new("/usr/bin/unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            START_SCRIPT,
            "sh",
        ])
        .arg(&etc)
        .arg(DOCKERD_BIN)
        .args([
            "--storage-driver",
            "vfs",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--ip-forward=false",
            "--ip-masq=false",
            "--userland-proxy=false",
        ])
        .args(self.mirrors.iter().flat_map(|m| ["--registry-mirror", m.as_str()]))
        .arg("--data-root")
        .arg(&data_root)
        .arg("--exec-root")
        .arg(&exec_root)
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", tmp.path())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
        if !self.hosts.is_empty() {
            let hosts = tmp.path().join("hosts");
            let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
            for (name, ip) in &self.hosts {
                text.push_str(&format!("{ip} {name}\n"));
            }
            std::fs::write(&hosts, text).expect("write private /etc/hosts");
            cmd.env("REGCACHE_TEST_HOSTS", &hosts);
        }
        if !self.system_roots.is_empty() {
            let mut bundle = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
            for pem in &self.system_roots {
                bundle.push_str(pem);
            }
            let path = tmp.path().join("roots.pem");
            std::fs::write(&path, bundle).expect("write dockerd's roots");
            cmd.env("SSL_CERT_FILE", &path);
        }
        if let Some(proxy) = &self.proxy {
            // Go reads both spellings; NO_PROXY stays unset so every registry host is proxied.
            for key in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
                cmd.env(key, proxy);
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn unshare + {DOCKERD_BIN}: {e}"));
        let mut dockerd = Dockerd {
            child: Some(child),
            socket,
            exec_root,
            log_path,
            client_config,
            _tmp: tmp,
        };
        dockerd.wait_ready();
        dockerd
    }
}

/// A running private dockerd; stopped (and its containerd with it) on drop.
pub struct Dockerd {
    child: Option<Child>,
    socket: PathBuf,
    exec_root: PathBuf,
    log_path: PathBuf,
    client_config: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Dockerd {
    /// Whether this machine can run a private engine at all: as root, with a private mount
    /// namespace. Where not, records a skip of `test` (call it before the test starts
    /// anything). A machine that has both and still cannot start dockerd fails the test.
    pub fn runs_here(test: &str) -> bool {
        super::skip::private_mount_namespace(test, "a private dockerd mounts a tmpfs over /etc/docker")
    }

    /// A builder: no proxy, nothing trusted beyond the system roots.
    pub fn builder() -> DockerdBuilder {
        DockerdBuilder::default()
    }

    /// `unix:///…/docker.sock`, for `docker -H`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The socket of the containerd this engine started (for `ctr --address`).
    pub fn containerd_address(&self) -> PathBuf {
        self.exec_root.join("containerd").join("containerd.sock")
    }

    /// The engine's log (dockerd and the containerd it started).
    pub fn logs(&self) -> String {
        super::read_log_lossy(&self.log_path)
    }

    /// Runs `/usr/bin/docker -H <this engine> ARGS…` with a private client config, killed
    /// after 180 s.
    pub fn docker(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(DOCKER_BIN);
        cmd.arg("-H")
            .arg(self.host())
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("DOCKER_CONFIG", &self.client_config);
        run_with_timeout(cmd, CLI_TIMEOUT)
    }

    /// As [`Self::docker`], panicking with the CLI's output and the engine's log on failure;
    /// returns stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {} failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- dockerd log (tail) ---\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.logs(), 60)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                panic!(
                    "dockerd cannot run on this machine: it exited with {status} before its API answered \
                     (needs root, mount namespaces and a tmpfs over /etc/docker); log:\n{}",
                    self.logs()
                );
            }
            if self.socket.exists()
                && self
                    .docker(&["version", "--format", "{{.Server.Version}}"])
                    .status
                    .success()
            {
                return;
            }
            if Instant::now() >= deadline {
                self.stop();
                panic!(
                    "dockerd did not answer on {} within {READY_TIMEOUT:?}; log:\n{}",
                    self.host(),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM (dockerd then stops its containerd), SIGKILL after 20 s; then makes sure the
    /// containerd it started is gone too. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let exited = super::poll_until(Duration::from_secs(20), || child.try_wait().ok().flatten());
            if exited.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.kill_own_containerd();
    }

    /// Kills the containerd this engine started, identified by the pid file under our own
    /// exec root and checked against its command line (never a containerd of someone else).
    fn kill_own_containerd(&self) {
        let pidfile = self.exec_root.join("containerd").join("containerd.pid");
        let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        else {
            return;
        };
        let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&*self.exec_root.to_string_lossy()))
            .unwrap_or(false);
        if ours {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            super::poll_until(Duration::from_secs(5), || {
                (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
            });
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "----- dockerd log (tail) -----\n{}\n----- end -----",
                tail(&self.logs(), 200)
            );
        }
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `cmd` with captured output, killing it after `timeout`.
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let scratch = tempfile::Builder::new()
        .prefix("regcache-docker-cli-")
        .tempdir()
        .expect("create docker CLI scratch dir");
    let out_path = scratch.path().join("stdout");
    let err_path = scratch.path().join("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create stdout capture"))
        .stderr(File::create(&err_path).expect("create stderr capture"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {DOCKER_BIN}: {e}"));
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status: ExitStatus = loop {
        match child.try_wait().expect("wait for docker CLI") {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().expect("reap killed docker CLI");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let stdout = std::fs::read(&out_path).unwrap_or_default();
    let mut stderr = std::fs::read(&err_path).unwrap_or_default();
    if timed_out {
        stderr.extend_from_slice(format!("\n[fixture] docker CLI killed after {timeout:?}\n").as_bytes());
    }
    Output { status, stdout, stderr }
}

//! The regcache binary as a child process: start, wait for its
//! `regcache listening on ADDR` line, collect its logs, restart, kill.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead as _, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub const REGCACHE_BIN: &str = env!("CARGO_BIN_EXE_regcache");

/// Readiness timeout.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Five of regcache's log flush intervals (50 ms): long enough for a written line to be out.
const LOG_SETTLE: Duration = Duration::from_millis(250);

/// Prefix of the readiness line on stdout.
const READY_PREFIX: &str = "regcache listening on ";
/// The mirror's banner line.
const MIRROR_READY_PREFIX: &str = "regcache mirror listening on ";

/// Builder for [`Regcache`].
#[derive(Clone, Debug, Default)]
pub struct RegcacheBuilder {
    binary: Option<PathBuf>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    rust_log: Option<String>,
    data_dir: Option<PathBuf>,
    ca_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    hosts_file: Option<PathBuf>,
}

impl RegcacheBuilder {
    /// `--listen ADDR` instead of a port the system picks (for an address known in advance).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Extra `serve` argument (after `--listen/--data-dir/--ca-dir`).
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Extra `serve` arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// `--connect-to HOST:443=ADDR` (send that host's traffic to `addr`).
    pub fn connect_to(self, host_port: &str, addr: SocketAddr) -> Self {
        self.arg("--connect-to").arg(format!("{host_port}={addr}"))
    }

    /// `--upstream-ca FILE`.
    pub fn upstream_ca(self, file: &Path) -> Self {
        self.arg("--upstream-ca").arg(file)
    }

    /// `--registry HOST[:PORT]`.
    pub fn registry(self, host: &str) -> Self {
        self.arg("--registry").arg(host)
    }

    /// An environment variable for the child.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// `RUST_LOG` for the child (default `info`).
    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = Some(filter.to_owned());
        self
    }

    /// Use an existing data dir (not removed on drop).
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_owned());
        self
    }

    /// Use an existing CA dir (not removed on drop), e.g. to test CA reuse.
    pub fn ca_dir(mut self, dir: &Path) -> Self {
        self.ca_dir = Some(dir.to_owned());
        self
    }

    /// Runs regcache in a private mount namespace whose `/etc/hosts` is `file` (the system
    /// resolver's answers for names a test chooses, e.g. one name with IPv6 and IPv4 addresses).
    /// Needs root: a test using it checks `skip::private_mount_namespace` first.
    pub fn hosts_file(mut self, file: &Path) -> Self {
        self.hosts_file = Some(file.to_owned());
        self
    }

    /// Run another executable instead of the regcache binary (for testing
    /// this fixture itself). It gets the same arguments.
    pub fn binary(mut self, path: &Path) -> Self {
        self.binary = Some(path.to_owned());
        self
    }

    /// Spawns regcache and waits (20 s) for its readiness line; panics with
    /// the captured log on timeout or early exit.
    pub fn start(self) -> Regcache {
        let tmp = tempfile::Builder::new()
            .prefix("regcache-proxy-")
            .tempdir()
            .expect("create regcache temp dir");
        let data_dir = self.data_dir.clone().unwrap_or_else(|| tmp.path().join("data"));
        let ca_dir = self.ca_dir.clone().unwrap_or_else(|| tmp.path().join("ca"));
        let mut rc = Regcache {
            binary: self.binary.unwrap_or_else(|| PathBuf::from(REGCACHE_BIN)),
            child: None,
            addr: None,
            logs: Arc::new(Mutex::new(String::new())),
            readers: Vec::new(),
            data_dir,
            ca_dir,
            listen: self.listen.map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string()),
            args: self.args,
            envs: self.envs,
            rust_log: self.rust_log.unwrap_or_else(|| "info".to_owned()),
            starts: 0,
            hosts_file: self.hosts_file,
            _tmp: tmp,
        };
        rc.spawn_and_wait();
        rc
    }
}

/// A running regcache child; killed on drop (its logs are printed when the
/// test is panicking).
pub struct Regcache {
    binary: PathBuf,
    child: Option<Child>,
    addr: Option<SocketAddr>,
    logs: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    data_dir: PathBuf,
    ca_dir: PathBuf,
    listen: String,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    rust_log: String,
    starts: usize,
    hosts_file: Option<PathBuf>,
    _tmp: tempfile::TempDir,
}

impl Regcache {
    /// Starts regcache with fresh temp dirs and these extra `serve` args.
    pub fn start<S: AsRef<OsStr>>(args: &[S]) -> Regcache {
        Regcache::builder().args(args).start()
    }

    /// A builder with no extra args.
    pub fn builder() -> RegcacheBuilder {
        RegcacheBuilder::default()
    }

    /// The address it listens on (from its readiness line). Panics if not
    /// running.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("regcache is not running (killed?)")
    }

    /// The mirror listener's address, from its `regcache mirror listening on ADDR` line of the
    /// latest start. Panics when the mirror is off.
    pub fn mirror_addr(&self) -> SocketAddr {
        let logs = self.logs();
        let latest = logs.rsplit("=== regcache start #").next().unwrap_or("");
        latest
            .lines()
            .find_map(|l| l.strip_prefix(MIRROR_READY_PREFIX))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no mirror line in the logs:\n{logs}"))
    }

    /// The mirror listener's access-log lines that contain `needle`.
    pub fn mirror_lines(&self, needle: &str) -> Vec<String> {
        self.logs()
            .lines()
            .filter(|l| l.contains("listener=\"mirror\"") && l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// `http://127.0.0.1:PORT`, for `HTTPS_PROXY`.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The `--ca-dir`.
    pub fn ca_dir(&self) -> &Path {
        &self.ca_dir
    }

    /// The `--data-dir`.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `<ca-dir>/ca.crt` (written by regcache on first start).
    pub fn ca_cert_path(&self) -> PathBuf {
        self.ca_dir.join("ca.crt")
    }

    /// Contents of `<ca-dir>/ca.crt`.
    pub fn ca_cert_pem(&self) -> String {
        let path = self.ca_cert_path();
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read regcache CA {}: {e}", path.display()))
    }

    /// Everything it printed so far (stdout and stderr, all runs; each
    /// restart is marked by a `=== regcache start #N ===` line).
    /// regcache writes its lines out every 50 ms (`telemetry::LogBuffer`), so this first waits
    /// [`LOG_SETTLE`]: a line for a request that has been answered is then in.
    pub fn logs(&self) -> String {
        std::thread::sleep(LOG_SETTLE);
        self.logs_now()
    }

    /// What has reached the log so far, without waiting for the next flush.
    fn logs_now(&self) -> String {
        self.logs.lock().expect("log buffer lock poisoned").clone()
    }

    /// Polls until the logs contain `needle` (true) or `timeout` passes.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        super::poll_until(timeout, || self.logs_now().contains(needle).then_some(())).is_some()
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The child's pid, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL and reap. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.addr = None;
        self.join_readers();
    }

    /// SIGTERM, then wait up to `timeout` for exit (SIGKILL after that).
    /// Returns the exit status if it exited by itself.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let status = super::poll_until(timeout, || child.try_wait().ok().flatten());
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.addr = None;
        self.join_readers();
        status
    }

    /// Kills and starts again with the same dirs, args and env (the port
    /// may change).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn_and_wait();
    }

    /// Waits (up to 2 s) for the output readers to drain the pipes after the
    /// child died; detaches them if a grandchild still holds a pipe open.
    fn join_readers(&mut self) {
        let readers = std::mem::take(&mut self.readers);
        super::poll_until(Duration::from_secs(2), || {
            readers.iter().all(|r| r.is_finished()).then_some(())
        });
        for reader in readers {
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
    }

    fn spawn_and_wait(&mut self) {
        self.starts += 1;
        self.logs
            .lock()
            .expect("log buffer lock poisoned")
            .push_str(&format!("=== regcache start #{} ===\n", self.starts));
        let mut cmd = match &self.hosts_file {
            None => Command::new(&self.binary),
            Some(hosts) => {
                // unshare and sh exec in turn: the child's pid stays regcache's.
                let mut c = Command::new("/usr/bin/unshare");
                c.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg("mount --bind \"$1\" /etc/hosts && shift && exec \"$@\"")
                    .arg("sh")
                    .arg(hosts)
                    .arg(&self.binary);
                c
            }
        };
        cmd.arg("serve")
            .arg("--listen")
            .arg(&self.listen)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--ca-dir")
            .arg(&self.ca_dir)
            .args(&self.args)
            .env("RUST_LOG", &self.rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        scrub_env(&mut cmd);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary.display()));
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        // A mirror-only instance's last banner line is the mirror's.
        let prefix = if self.args.iter().any(|a| a == "--no-proxy-listener") {
            MIRROR_READY_PREFIX
        } else {
            READY_PREFIX
        };
        self.readers
            .push(spawn_reader(stdout, self.logs.clone(), Some((tx, prefix))));
        self.readers.push(spawn_reader(stderr, self.logs.clone(), None));
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => {
                    self.addr = Some(addr);
                    return;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed without the line: the process is exiting.
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let child = self.child.as_mut().expect("child just spawned");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                self.join_readers();
                panic!(
                    "regcache exited with {status} before printing '{READY_PREFIX}ADDR'; log:\n{}",
                    self.logs()
                );
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "regcache did not print '{READY_PREFIX}ADDR' within {READY_TIMEOUT:?}; log:\n{}",
                    self.logs()
                );
            }
        }
    }
}

impl Drop for Regcache {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("----- regcache log -----\n{}\n----- end -----", self.logs());
        }
    }
}

/// Removes proxy variables and every `REGCACHE_*` variable (clap reads
/// its options from them) inherited from the test's environment.
fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        let upper = k.to_ascii_uppercase();
        if upper.starts_with("REGCACHE_")
            || matches!(upper.as_str(), "HTTPS_PROXY" | "HTTP_PROXY" | "ALL_PROXY" | "NO_PROXY")
        {
            cmd.env_remove(&key);
        }
    }
}

/// Copies lines from `pipe` into `logs`; sends the address of the first
/// readiness line on `ready`.
fn spawn_reader(
    pipe: impl Read + Send + 'static,
    logs: Arc<Mutex<String>>,
    ready: Option<(mpsc::Sender<SocketAddr>, &'static str)>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut ready = ready;
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf);
            {
                let mut logs = logs.lock().expect("log buffer lock poisoned");
                logs.push_str(&line);
                if !line.ends_with('\n') {
                    logs.push('\n');
                }
            }
            if let Some((tx, prefix)) = &ready
                && let Some(rest) = line.trim_start().strip_prefix(prefix)
                && let Some(addr) = rest
                    .split_whitespace()
                    .next()
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            {
                let _ = tx.send(addr);
                ready = None;
            }
        }
    })
}

/// Runs a one-shot subcommand (`regcache ca show …`) with `RUST_LOG=info`
/// and no proxy variables; returns its output.
pub fn run_cli<S: AsRef<OsStr>>(args: &[S]) -> Output {
    run_cli_with_env(args, &[])
}

/// As [`run_cli`] with extra environment variables.
pub fn run_cli_with_env<S: AsRef<OsStr>>(args: &[S], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(REGCACHE_BIN);
    cmd.args(args).env("RUST_LOG", "info").stdin(Stdio::null());
    for var in [
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "ALL_PROXY",
        "https_proxy",
        "http_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap_or_else(|e| panic!("run {REGCACHE_BIN}: {e}"))
}

/// A reqwest client that sends everything through `rc` (`HTTPS_PROXY`) and trusts only its CA,
/// with a 60 s timeout.
pub fn client_through(rc: &Regcache) -> reqwest::Client {
    super::reqwest_builder(&[&rc.ca_cert_pem()])
        .proxy(reqwest::Proxy::all(rc.proxy_url()).unwrap())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

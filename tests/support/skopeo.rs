//! skopeo as a real Go registry client, isolated from the host's container
//! configuration (temp HOME/XDG dirs, empty auth file, empty registries.conf,
//! private policy), with a hard timeout.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Default wall-clock limit for one skopeo run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);

/// Builder for one `skopeo copy SRC DEST` run.
#[derive(Clone, Debug)]
pub struct SkopeoCopy {
    src: String,
    dest: String,
    proxy: Option<String>,
    cert_dir: Option<PathBuf>,
    creds: Option<(String, String)>,
    extra_args: Vec<String>,
    timeout: Duration,
    debug: bool,
    envs: Vec<(String, String)>,
}

impl SkopeoCopy {
    /// `src` like `docker://ghcr.io/team/app:v1`, `dest` like `dir:/tmp/x`.
    pub fn new(src: &str, dest: &str) -> Self {
        SkopeoCopy {
            src: src.to_owned(),
            dest: dest.to_owned(),
            proxy: None,
            cert_dir: None,
            creds: None,
            extra_args: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            debug: false,
            envs: Vec::new(),
        }
    }

    /// Copy into a `dir:` destination.
    pub fn to_dir(src: &str, dest_dir: &Path) -> Self {
        SkopeoCopy::new(src, &format!("dir:{}", dest_dir.display()))
    }

    /// Sets `HTTPS_PROXY` and `HTTP_PROXY` (e.g. `http://127.0.0.1:PORT`).
    pub fn proxy(mut self, proxy: &str) -> Self {
        self.proxy = Some(proxy.to_owned());
        self
    }

    /// `--src-cert-dir`: a directory whose `*.crt` files are trusted CAs.
    pub fn cert_dir(mut self, dir: &Path) -> Self {
        self.cert_dir = Some(dir.to_owned());
        self
    }

    /// `--src-creds user:pass`.
    pub fn creds(mut self, user: &str, pass: &str) -> Self {
        self.creds = Some((user.to_owned(), pass.to_owned()));
        self
    }

    /// Extra `skopeo copy` arguments (e.g. `--all`, `--override-arch` is a
    /// global flag and not accepted here).
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_owned());
        self
    }

    /// Wall-clock limit (default 180 s); skopeo is killed after it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// An extra environment variable (e.g. `SSL_CERT_FILE`), set after the isolation ones.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Pass the global `--debug` flag (HTTP-level logs on stderr).
    pub fn debug(mut self, on: bool) -> Self {
        self.debug = on;
        self
    }

    /// Runs skopeo and returns its output. On timeout skopeo is killed and
    /// the returned status is the kill signal, with a note appended to
    /// stderr. Blocks the calling thread (use `spawn_blocking` for parallel
    /// pulls from async code).
    pub fn run(&self) -> Output {
        let tmp = tempfile::Builder::new()
            .prefix("regcache-skopeo-")
            .tempdir()
            .expect("create skopeo temp dir");
        let home = tmp.path().join("home");
        let runtime = tmp.path().join("run");
        let config = tmp.path().join("config");
        let tmpdir = tmp.path().join("tmp");
        let registries_d = tmp.path().join("registries.d");
        for d in [&home, &runtime, &config, &tmpdir, &registries_d] {
            std::fs::create_dir_all(d).expect("create skopeo isolation dir");
        }
        let policy = tmp.path().join("policy.json");
        std::fs::write(&policy, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).expect("write skopeo policy");
        let auth_file = tmp.path().join("auth.json");
        std::fs::write(&auth_file, r#"{"auths":{}}"#).expect("write empty auth file");
        let registries_conf = tmp.path().join("registries.conf");
        std::fs::write(&registries_conf, "").expect("write empty registries.conf");
        let containers_conf = tmp.path().join("containers.conf");
        std::fs::write(&containers_conf, "").expect("write empty containers.conf");

        let mut cmd = Command::new("skopeo");
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("HOME", &home)
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("XDG_CONFIG_HOME", &config)
            .env("TMPDIR", &tmpdir)
            .env("REGISTRY_AUTH_FILE", &auth_file)
            .env("CONTAINERS_REGISTRIES_CONF", &registries_conf)
            .env("CONTAINERS_CONF", &containers_conf);
        if let Some(proxy) = &self.proxy {
            cmd.env("HTTPS_PROXY", proxy)
                .env("HTTP_PROXY", proxy)
                .env("https_proxy", proxy)
                .env("http_proxy", proxy);
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if self.debug {
            cmd.arg("--debug");
        }
        cmd.arg("--policy")
            .arg(&policy)
            .arg("--registries.d")
            .arg(&registries_d)
            .arg("--tmpdir")
            .arg(&tmpdir)
            .arg("--command-timeout")
            .arg(format!("{}s", self.timeout.as_secs().max(1)))
            .arg("copy")
            .arg("--retry-times")
            .arg("0")
            .arg("--authfile")
            .arg(&auth_file);
        if let Some(dir) = &self.cert_dir {
            cmd.arg("--src-cert-dir").arg(dir);
        }
        match &self.creds {
            Some((u, p)) => {
                cmd.arg("--src-creds").arg(format!("{u}:{p}"));
            }
            None => {
                cmd.arg("--src-no-creds");
            }
        }
        cmd.args(&self.extra_args).arg(&self.src).arg(&self.dest);
        run_with_timeout(cmd, tmp.path(), self.timeout + Duration::from_secs(5))
    }
}

/// `skopeo copy --src-cert-dir CERT_DIR [--src-creds u:p] SRC dir:DEST` with
/// `HTTPS_PROXY`/`HTTP_PROXY` = `proxy` (an empty `proxy` sets no proxy),
/// isolated from host config, `--retry-times 0`, 180 s timeout.
pub fn skopeo_copy(proxy: &str, cert_dir: &Path, src: &str, dest_dir: &Path, creds: Option<(&str, &str)>) -> Output {
    let mut copy = SkopeoCopy::to_dir(src, dest_dir).cert_dir(cert_dir);
    if !proxy.is_empty() {
        copy = copy.proxy(proxy);
    }
    if let Some((u, p)) = creds {
        copy = copy.creds(u, p);
    }
    copy.run()
}

/// Runs `cmd` with stdout/stderr captured to files in `scratch`, killing it
/// after `timeout`.
fn run_with_timeout(mut cmd: Command, scratch: &Path, timeout: Duration) -> Output {
    let out_path = scratch.join("stdout");
    let err_path = scratch.join("stderr");
    let stdout = File::create(&out_path).expect("create stdout capture");
    let stderr = File::create(&err_path).expect("create stderr capture");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("spawn skopeo (is it installed?)");
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status: ExitStatus = loop {
        match child.try_wait().expect("wait for skopeo") {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().expect("reap killed skopeo");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let stdout = std::fs::read(&out_path).unwrap_or_default();
    let mut stderr = std::fs::read(&err_path).unwrap_or_default();
    if timed_out {
        stderr.extend_from_slice(format!("\n[fixture] skopeo killed after {timeout:?}\n").as_bytes());
    }
    Output { status, stdout, stderr }
}

/// Panics with skopeo's stdout/stderr unless it succeeded.
pub fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what}: skopeo failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `sha256:<hex>` of `dir/manifest.json` (the manifest skopeo stored).
pub fn manifest_digest_of_dir(dir: &Path) -> String {
    let path = dir.join("manifest.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    super::sha256_digest(&bytes)
}

/// Digests (`sha256:<hex>`) of the blobs in a `dir:` copy (config and
/// layers), sorted. skopeo names them by bare hex digest.
pub fn dir_blob_digests(dir: &Path) -> Vec<String> {
    let mut digests: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read dir {}: {e}", dir.display()))
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let hex = name.strip_prefix("sha256:").unwrap_or(&name);
            (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("sha256:{hex}"))
        })
        .collect();
    digests.sort();
    digests
}

/// Verifies every blob file in a `dir:` copy hashes to its name; returns the
/// sorted digests.
pub fn verify_dir_blobs(dir: &Path) -> Vec<String> {
    let digests = dir_blob_digests(dir);
    for digest in &digests {
        let hex = digest.trim_start_matches("sha256:");
        let path = dir.join(hex);
        let actual = super::sha256_digest_of_file(&path).unwrap_or_else(|e| panic!("hash {}: {e}", path.display()));
        assert_eq!(&actual, digest, "blob file {} is corrupt", path.display());
    }
    digests
}

/// A directory (inside `parent`) holding each PEM in `ca_pems` as
/// `ca-<i>.crt`, for `--src-cert-dir`.
pub fn cert_dir_with(parent: &Path, ca_pems: &[&str]) -> PathBuf {
    let dir = parent.join(format!("certs-{}", super::random_hex(4)));
    std::fs::create_dir_all(&dir).expect("create cert dir");
    for (i, pem) in ca_pems.iter().enumerate() {
        std::fs::write(dir.join(format!("ca-{i}.crt")), pem).expect("write CA into cert dir");
    }
    dir
}

/// As [`cert_dir_with`] but copying existing CA files (e.g. regcache's
/// `ca.crt`).
pub fn cert_dir_with_files(parent: &Path, ca_files: &[&Path]) -> PathBuf {
    let pems: Vec<String> = ca_files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read CA {}: {e}", p.display())))
        .collect();
    let refs: Vec<&str> = pems.iter().map(String::as_str).collect();
    cert_dir_with(parent, &refs)
}

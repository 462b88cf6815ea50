//! The container files, without a Docker daemon or Docker Hub (the image cannot be built on the
//! test machines: no network to pull `rust:1-bookworm`). `docker-compose config` validates
//! docker-compose.yml; the Dockerfile's final stage is read and its runtime contract replayed
//! with the binary under test: its ENV and CMD, as uid 10001, with `/var/lib/regcache/{data,ca}`
//! as in the image (a tmpfs over `/var/lib` in a private mount namespace), listening on
//! 0.0.0.0:3128 in a private network namespace, until the image's own HEALTHCHECK command
//! passes; after regcache is stopped the same command must fail.

#[path = "support/skip.rs"]
mod skip;

use std::path::{Path, PathBuf};
use std::process::Command;

const REGCACHE_BIN: &str = env!("CARGO_BIN_EXE_regcache");

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `docker-compose config` of the compose file `rel`: the effective configuration, after
/// checking it is valid.
fn compose_config(rel: &str) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let out = Command::new("docker-compose")
        .arg("--project-directory")
        .arg(repo_file(rel).parent().unwrap())
        .arg("-f")
        .arg(repo_file(rel))
        .arg("config")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", scratch.path())
        .output()
        .expect("run docker-compose (Debian package docker-compose; tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "docker-compose config {rel}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The instructions of a Dockerfile stage: (keyword, arguments), continuation lines joined,
/// comments dropped.
type Instructions = Vec<(String, String)>;

/// Every stage of the Dockerfile, in order.
fn dockerfile_stages() -> Vec<Instructions> {
    let text = std::fs::read_to_string(repo_file("Dockerfile")).unwrap();
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Instructions> = Vec::new();
    for line in logical.into_iter().filter(|l| !l.trim().is_empty()) {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("a Dockerfile starts with FROM")
            .push((keyword, args.trim().to_string()));
    }
    stages
}

fn one<'a>(stage: &'a Instructions, keyword: &str) -> &'a str {
    let found: Vec<&str> = stage
        .iter()
        .filter(|(k, _)| k == keyword)
        .map(|(_, a)| a.as_str())
        .collect();
    assert_eq!(found.len(), 1, "exactly one {keyword} in the final stage: {found:?}");
    found[0]
}

fn json_argv(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not a JSON array ({e}): {s}"))
}

/// `K=V` pairs of every ENV of a stage (the `K=V K2=V2` form).
fn env_of(stage: &Instructions) -> Vec<(String, String)> {
    stage
        .iter()
        .filter(|(k, _)| k == "ENV")
        .flat_map(|(_, args)| {
            args.split_whitespace().map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("ENV {kv}: use K=V"));
                (k.to_string(), v.to_string())
            })
        })
        .collect()
}

/// The healthcheck command line of the final stage: `HEALTHCHECK [--options] CMD [json]`.
fn healthcheck_argv(stage: &Instructions) -> Vec<String> {
    let args = one(stage, "HEALTHCHECK");
    let json = &args[args.find("CMD").expect("HEALTHCHECK … CMD [...]") + 3..];
    json_argv(json.trim())
}

#[test]
fn dockerfile_builds_locked_release_and_runs_unprivileged() {
    let stages = dockerfile_stages();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let (build, run) = (&stages[0], &stages[1]);
    assert!(one(build, "FROM").starts_with("rust:1-bookworm AS "), "{:?}", build[0]);
    assert!(
        build
            .iter()
            .any(|(k, a)| k == "RUN" && a.contains("cargo build --release --locked")),
        "{build:?}"
    );
    // What the build stage copies is what the build needs, and exists.
    for (k, args) in build.iter().filter(|(k, _)| k == "COPY") {
        let parts: Vec<&str> = args.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(repo_file(src).exists(), "{k} {args}: {src} is missing");
        }
    }

    assert_eq!(one(run, "FROM"), "debian:bookworm-slim");
    assert_eq!(one(run, "USER"), "10001:10001", "not root");
    assert_eq!(one(run, "EXPOSE"), "3128");
    let volumes = json_argv(one(run, "VOLUME"));
    assert_eq!(volumes, ["/var/lib/regcache/data", "/var/lib/regcache/ca"]);
    let env = env_of(run);
    assert!(
        env.contains(&("REGCACHE_LISTEN".into(), "0.0.0.0:3128".into())),
        "{env:?}"
    );
    assert_eq!(json_argv(one(run, "ENTRYPOINT")), ["/usr/local/bin/regcache"]);
    assert_eq!(json_argv(one(run, "CMD")), ["serve"]);
    let health = healthcheck_argv(run);
    assert_eq!(&health[..2], ["bash", "-c"]);
    assert!(health[2].contains("/healthz"), "{health:?}");
    // Not an open proxy: listening on every interface comes with an allowlist of private
    // networks (regcache refuses to start otherwise).
    assert!(
        env.iter()
            .any(|(k, v)| k == "REGCACHE_ALLOW_CLIENT" && v.contains("10.0.0.0/8") && v.contains("172.16.0.0/12")),
        "{env:?}"
    );
}

#[test]
fn docker_compose_config_is_valid_and_matches_the_image() {
    let config = compose_config("docker-compose.yml");
    for needle in [
        "regcache:",
        "published: 3128",
        "target: 3128",
        "regcache-data:/var/lib/regcache/data:rw",
        "regcache-ca:/var/lib/regcache/ca:rw",
        "REGCACHE_LISTEN: 0.0.0.0:3128",
        "REGCACHE_ALLOW_CLIENT: 127.0.0.0/8,10.0.0.0/8",
        "/healthz",
        "restart: unless-stopped",
    ] {
        assert!(config.contains(needle), "{needle:?} in the effective config:\n{config}");
    }

    // The compose healthcheck is the image's, so the replay below covers both.
    let raw = std::fs::read_to_string(repo_file("docker-compose.yml")).unwrap();
    let test_line = raw
        .lines()
        .find_map(|l| l.trim().strip_prefix("test: "))
        .expect("a healthcheck test in docker-compose.yml");
    let compose_health = json_argv(test_line);
    assert_eq!(compose_health[0], "CMD");
    assert_eq!(compose_health[1..], healthcheck_argv(&dockerfile_stages()[1])[..]);
}

/// Sets up the image's filesystem and network in private namespaces, installs the binary `$3`
/// where the image has it (`/usr/local/bin/regcache`, on a tmpfs of its own), starts the
/// command in `$@` (already wrapped in `env -i …` and `setpriv` by the caller), polls the
/// healthcheck command `$1` as uid `$2` for up to 20 s, reports, stops regcache and checks
/// again.
///
/// The binary is copied before `/tmp` gets its private tmpfs: a checkout under `/tmp` would
/// otherwise have its `target/` hidden, and one under a directory uid `$2` cannot traverse
/// (`/root`) could not be executed at all.
const REPLAY: &str = r#"set -eu
health=$1; uid=$2; bin=$3; shift 3
mount -t tmpfs -o mode=0755 regcache-test-var-lib /var/lib
mount -t tmpfs -o mode=0755 regcache-test-bin /usr/local/bin
install -m 0755 "$bin" /usr/local/bin/regcache
mount -t tmpfs regcache-test-tmp /tmp
install -d -o "$uid" -g "$uid" -m 0700 /var/lib/regcache /var/lib/regcache/data /var/lib/regcache/ca
if command -v ip >/dev/null 2>&1; then ip link set lo up; else busybox ip link set lo up; fi
cd /var/lib/regcache
"$@" >/tmp/regcache-replay.log 2>&1 &
pid=$!
as_user() { setpriv --reuid="$uid" --regid="$uid" --clear-groups "$@"; }
healthy=no
i=0
while [ $i -lt 100 ]; do
    if as_user bash -c "$health" 2>/dev/null; then healthy=yes; break; fi
    i=$((i + 1))
    sleep 0.2
done
echo "healthy=$healthy"
echo "ca.key $(stat -c '%u %a' /var/lib/regcache/ca/ca.key 2>&1)"
echo "ca.crt $(stat -c '%u %a' /var/lib/regcache/ca/ca.crt 2>&1)"
kill "$pid"
wait "$pid" || true
if as_user bash -c "$health" 2>/dev/null; then echo "after-stop=healthy"; else echo "after-stop=unhealthy"; fi
echo "--- regcache log"
cat /tmp/regcache-replay.log
"#;

#[test]
fn image_runtime_contract_replayed_with_the_binary_under_test() {
    if !skip::running_as_root(
        "container::image_runtime_contract_replayed_with_the_binary_under_test",
        "mount and network namespaces, a user switch",
    ) {
        return;
    }
    let run = &dockerfile_stages()[1];
    let uid = one(run, "USER").split(':').next().unwrap().to_string();
    let health = healthcheck_argv(run);
    let mut cmd = Command::new("timeout");
    // Private /tmp too: the log goes there.
    cmd.args([
        "60",
        "unshare",
        "--mount",
        "--net",
        "--fork",
        "--kill-child",
        "/bin/sh",
        "-c",
        REPLAY,
        "sh",
    ])
    .arg(&health[2])
    .arg(&uid)
    .arg(REGCACHE_BIN)
    .args(["env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin"]);
    for (k, v) in env_of(run) {
        cmd.arg(format!("{k}={v}"));
    }
    cmd.args([
        "setpriv",
        &format!("--reuid={uid}"),
        &format!("--regid={uid}"),
        "--clear-groups",
        "/usr/local/bin/regcache",
    ])
    .args(json_argv(one(run, "CMD")));
    let out = cmd.output().expect("run unshare");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "replay failed ({}):\n{report}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("healthy=yes"),
        "HEALTHCHECK passes once regcache is up:\n{report}"
    );
    assert!(
        report.contains("after-stop=unhealthy"),
        "and fails once it is gone:\n{report}"
    );
    assert!(
        report.contains(&format!("ca.key {uid} 600")),
        "CA key generated in the CA volume, owned by the image's user, mode 600:\n{report}"
    );
    assert!(report.contains(&format!("ca.crt {uid} ")), "{report}");
    assert!(
        report.contains("regcache listening on 0.0.0.0:3128"),
        "listens on every interface of the container:\n{report}"
    );
    assert!(
        report.contains("CA /var/lib/regcache/ca/ca.crt (generated)"),
        "{report}"
    );
}

#[test]
fn the_fleet_compose_file_is_valid_and_shares_the_bucket_and_the_ca() {
    let config = compose_config("deploy/fleet/docker-compose.yml");
    for replica in ["replica-1", "replica-2", "replica-3"] {
        assert!(config.contains(&format!("{replica}:")), "{replica} in:\n{config}");
        assert!(
            config.contains(&format!("{replica}-data:/var/lib/regcache/data:rw")),
            "{replica} has its own data volume:\n{config}"
        );
    }
    assert_eq!(
        config.matches("regcache-ca:/var/lib/regcache/ca:ro").count(),
        3,
        "every replica reads the one CA:\n{config}"
    );
    assert_eq!(config.matches("REGCACHE_STORE: s3://regcache-cache/fleet").count(), 3);
    // Each replica advertises itself to the others, with the one secret ca-init made.
    for n in 1..=3 {
        assert!(
            config.contains(&format!("REGCACHE_PEER_ADVERTISE: http://replica-{n}:3128")),
            "replica-{n} advertises itself:\n{config}"
        );
    }
    assert_eq!(
        config
            .matches("REGCACHE_PEER_SECRET_FILE: /var/lib/regcache/ca/peer-secret")
            .count(),
        3
    );
    assert!(config.contains("peer-secret"), "ca-init makes the peer secret");
    assert!(
        config.contains("service_completed_successfully"),
        "replicas wait for ca-init"
    );
    let haproxy = std::fs::read_to_string(repo_file("deploy/fleet/haproxy.cfg")).unwrap();
    for replica in ["replica-1:3128", "replica-2:3128", "replica-3:3128"] {
        assert!(haproxy.contains(replica), "{replica} balanced:\n{haproxy}");
    }
    assert!(haproxy.contains("mode tcp") && haproxy.contains("balance roundrobin"));
    // The fleet's S3 secret is the same on both sides.
    let s3 = std::fs::read_to_string(repo_file("deploy/fleet/seaweedfs-s3.json")).unwrap();
    assert!(s3.contains("change-me-regcache-secret") && config.contains("change-me-regcache-secret"));
}

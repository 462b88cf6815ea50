//! Operating regcache: the config file and `config check`, rpardini/docker-registry-proxy's
//! variables, hot reload (SIGHUP and `POST /_regcache/reload`) under load, graceful shutdown,
//! and JSON logs. Against the in-process fault registry (for slow bodies) with real sockets.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use support::regcache::run_cli_with_env;
use support::{Fault, FaultRegistry, Regcache, TestCa, run_cli};

struct World {
    ca: TestCa,
    tmp: tempfile::TempDir,
    ca_file: PathBuf,
}

fn world() -> World {
    support::install_crypto_provider();
    let ca = TestCa::new();
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = ca.write_cert(tmp.path());
    World { ca, tmp, ca_file }
}

/// A client through regcache trusting regcache's CA and the upstream test CA (so that a
/// tunnelled, not intercepted, request works too and the difference shows in `X-Cache`).
fn client(p: &Regcache, w: &World) -> reqwest::Client {
    let config = support::rustls_client_config(&[&p.ca_cert_pem(), &w.ca.cert_pem()])
        .as_ref()
        .clone();
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .proxy(reqwest::Proxy::all(p.proxy_url()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn local_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngCore as _;
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn signal(p: &Regcache, sig: &str) {
    let pid = p.pid().expect("regcache running").to_string();
    let status = Command::new("kill").args([sig, &pid]).status().unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

fn stderr_one_line(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "one readable line expected: {err:?}");
    err.trim_end().to_string()
}

// ----- config check --------------------------------------------------------------------------

#[test]
fn config_check_prints_the_effective_config_with_secrets_redacted() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("regcache.toml");
    let pass_file = tmp.path().join("quay.pass");
    write(&pass_file, "file-secret-9f2\n");
    write(
        &file,
        r#"
listen = "127.0.0.1:4128"
[cache]
tag_ttl = "5m"
[[registry]]
host = "reg.internal:5000"
address = "10.0.0.5:5000"
max_stale = "1d"
[[credentials]]
registry = "ghcr.io"
username = "bot"
password = "inline-secret-4a1"
[[credentials]]
registry = "quay.io"
repository = "team/*"
username = "robot"
password_file = "quay.pass"
"#
        .replace("quay.pass", &pass_file.display().to_string())
        .as_str(),
    );
    let out = run_cli(&[
        "config",
        "check",
        "--config",
        file.to_str().unwrap(),
        "--tag-ttl",
        "90s",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("listen = \"127.0.0.1:4128\""), "{stdout}");
    // The flag wins over the file.
    assert!(stdout.contains("tag_ttl = \"90s\""), "{stdout}");
    assert!(stdout.contains("reg.internal:5000=10.0.0.5:5000"), "{stdout}");
    assert!(stdout.contains("max_stale = \"1d\""), "{stdout}");
    assert!(stdout.contains("username = \"robot\""), "{stdout}");
    assert!(stdout.contains("<redacted>"), "{stdout}");
    assert!(!stdout.contains("inline-secret-4a1"), "{stdout}");
    assert!(!stdout.contains("file-secret-9f2"), "{stdout}");
    assert!(stdout.contains("# configuration OK"), "{stdout}");

    // REGCACHE_* variables sit between flags and the file.
    let out = run_cli_with_env(
        &["config", "check", "--config", file.to_str().unwrap()],
        &[("REGCACHE_LISTEN", "127.0.0.1:5128")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("listen = \"127.0.0.1:5128\""), "{stdout}");
}

#[test]
fn the_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("regcache.example.toml");
    let out = run_cli_with_env(
        &["config", "check", "--config", example.to_str().unwrap()],
        &[("GHCR_TOKEN", "example-token")],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn broken_config_files_give_one_line_naming_file_line_and_key_and_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "bad-duration.toml",
            "listen = \"127.0.0.1:3128\"\n\n[cache]\ntag_ttl = \"5 parsecs\"\n",
            &[":4:", "cache.tag_ttl", "expected a duration"],
        ),
        (
            "bad-ttl-mode.toml",
            "[cache]\ntag_ttl_mode = \"sometimes\"\n",
            &[":2:", "cache.tag_ttl_mode", "expected override or upstream-first"],
        ),
        (
            "unknown-key.toml",
            "listen = \"127.0.0.1:3128\"\nlisten_adress = \"x\"\n",
            &[":2:", "unknown field `listen_adress`"],
        ),
        (
            "bad-host.toml",
            "[[registry]]\nhost = \"not a host\"\n",
            &[":2:", "registry[0].host", "not a valid host name"],
        ),
        (
            "bad-addr.toml",
            "listen = \"localhost:3128\"\n",
            &[":1:", "listen", "invalid socket address"],
        ),
        ("syntax.toml", "[cache\ntag_ttl = \"5m\"\n", &[":1:", "(syntax)"]),
        (
            "two-passwords.toml",
            "[[credentials]]\nregistry = \"ghcr.io\"\nusername = \"u\"\npassword = \"p\"\npassword_env = \"P\"\n",
            &["credentials[0].password", "exactly one of"],
        ),
        (
            "wildcard-address.toml",
            "[[registry]]\nhost = \"*.example.com\"\naddress = \"127.0.0.1:1\"\n",
            &["registry[0].address", "exact host"],
        ),
    ];
    for (name, text, expect) in cases {
        let file = tmp.path().join(name);
        write(&file, text);
        for cmd in [&["config", "check"][..], &["serve", "--listen", "127.0.0.1:0"][..]] {
            let mut args: Vec<&str> = cmd.to_vec();
            args.extend(["--config", file.to_str().unwrap()]);
            let out = run_cli(&args);
            assert_eq!(out.status.code(), Some(2), "{name} via {cmd:?}: {:?}", out);
            let line = stderr_one_line(&out);
            assert!(line.contains(&file.display().to_string()), "{name}: {line}");
            for e in *expect {
                assert!(line.contains(e), "{name}: expected {e:?} in {line}");
            }
        }
    }
    // A --config file that does not exist is an error too (the default file may be absent).
    let missing = tmp.path().join("nope.toml");
    let out = run_cli(&["config", "check", "--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_one_line(&out).contains("cannot read"));
}

// ----- rpardini variables --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpardini_variables_are_mapped_logged_and_applied() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &["reg.test"]);
    let blob = reg.put_blob(random_bytes(10_000));
    let p = Regcache::builder()
        .upstream_ca(&w.ca_file)
        .connect_to(&format!("reg.test:{}", reg.port()), reg.addr())
        .env("REGISTRIES", format!("reg.test:{} quay.io", reg.port()))
        .env("ALLOW_PUSH", "false")
        .env("AUTH_REGISTRIES", "auth.docker.io:hubuser:hub-secret-77")
        .env("ENABLE_MANIFEST_CACHE", "false")
        .start();
    let logs = p.logs();
    assert!(logs.contains("REGISTRIES → intercept and cache reg.test:"), "{logs}");
    assert!(logs.contains("ALLOW_PUSH → allow_push = false"), "{logs}");
    assert!(logs.contains("ENABLE_MANIFEST_CACHE=false → tag_ttl 0"), "{logs}");
    assert!(
        logs.contains("AUTH_REGISTRIES → [[credentials]] for registry-1.docker.io:443 (user hubuser)"),
        "{logs}"
    );
    assert!(!logs.contains("hub-secret-77"), "a password reached the log: {logs}");

    let c = client(&p, &w);
    let base = format!("https://reg.test:{}", reg.port());
    let got = c.get(format!("{base}/v2/app/blobs/{blob}")).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert!(got.headers().get("x-cache").is_some(), "REGISTRIES host is intercepted");
    let push = c.post(format!("{base}/v2/app/blobs/uploads/")).send().await.unwrap();
    assert_eq!(push.status(), 405, "ALLOW_PUSH=false refuses pushes");
    assert_eq!(
        reg.count("POST", "/blobs/uploads"),
        0,
        "the push never reached upstream"
    );
}

// ----- reload --------------------------------------------------------------------------------

fn reload_config(reg: &FaultRegistry, with_b: bool) -> String {
    let mut text = format!(
        "connect_to = [\"reg-b.test:{port}={addr}\"]\ntunnel_ports = [{port}]\n\n[[registry]]\nhost = \"reg-a.test:{port}\"\naddress = \"{addr}\"\n",
        port = reg.port(),
        addr = reg.addr()
    );
    if with_b {
        text.push_str(&format!("\n[[registry]]\nhost = \"reg-b.test:{}\"\n", reg.port()));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_under_load_intercepts_a_new_registry_and_the_pull_completes() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &["reg-a.test", "reg-b.test"]);
    let data = Bytes::from(random_bytes(4 << 20));
    let blob = reg.put_blob(data.clone());
    let small = reg.put_blob(random_bytes(1000));
    // 4 MiB in 128 KiB pieces every 60 ms: about two seconds in flight.
    reg.set_fault(
        &blob,
        Fault::SlowBody {
            chunk: 128 << 10,
            every: Duration::from_millis(60),
        },
    );
    let cfg = w.tmp.path().join("regcache.toml");
    write(&cfg, &reload_config(&reg, false));
    let p = Regcache::builder()
        .upstream_ca(&w.ca_file)
        .arg("--config")
        .arg(&cfg)
        .start();
    let c = client(&p, &w);
    let a = format!("https://reg-a.test:{}", reg.port());
    let b = format!("https://reg-b.test:{}", reg.port());

    let before = c.get(format!("{b}/v2/app/blobs/{small}")).send().await.unwrap();
    assert_eq!(before.status(), 200);
    assert!(
        before.headers().get("x-cache").is_none(),
        "reg-b is tunnelled before the reload"
    );

    let mut pull = c.get(format!("{a}/v2/app/blobs/{blob}")).send().await.unwrap();
    assert_eq!(pull.status(), 200);
    let mut received = pull.chunk().await.unwrap().expect("first bytes").to_vec();

    write(&cfg, &reload_config(&reg, true));
    signal(&p, "-HUP");
    assert!(
        p.wait_for_log("configuration reloaded", Duration::from_secs(10)),
        "{}",
        p.logs()
    );
    assert!(p.logs().contains("registries added: reg-b.test:"), "{}", p.logs());
    assert!(
        reg.completed("GET", &blob) == 0,
        "the reload happened while the download was still running"
    );
    while let Some(chunk) = pull.chunk().await.unwrap() {
        received.extend_from_slice(&chunk);
    }
    assert_eq!(received.len(), data.len());
    assert!(
        received == data,
        "the pull in flight completed intact across the reload"
    );

    // A new client: a tunnel opened before the reload stays what it was (connections are never
    // dropped by a reload); new CONNECTs follow the new configuration.
    let c = client(&p, &w);
    let after = c.get(format!("{b}/v2/app/blobs/{small}")).send().await.unwrap();
    assert_eq!(after.status(), 200);
    assert_eq!(
        after.headers().get("x-cache").and_then(|v| v.to_str().ok()),
        Some("MISS"),
        "reg-b is intercepted and cached after the reload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reload_is_refused_and_the_running_config_stays() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &["reg-a.test", "reg-b.test"]);
    let small = reg.put_blob(random_bytes(1000));
    let cfg = w.tmp.path().join("regcache.toml");
    write(&cfg, &reload_config(&reg, false));
    let p = Regcache::builder()
        .upstream_ca(&w.ca_file)
        .arg("--config")
        .arg(&cfg)
        .start();
    let admin = local_client();
    let reload_url = format!("{}/_regcache/reload", p.proxy_url());

    write(&cfg, &(reload_config(&reg, true) + "\n[cache]\ntag_ttl = \"soon\"\n"));
    let res = admin.post(&reload_url).send().await.unwrap();
    assert_eq!(res.status(), 422);
    let text = res.text().await.unwrap();
    assert!(
        text.contains("regcache.toml:") && text.contains("cache.tag_ttl"),
        "{text}"
    );
    signal(&p, "-HUP");
    assert!(
        p.wait_for_log("reload refused", Duration::from_secs(10)),
        "{}",
        p.logs()
    );

    let c = client(&p, &w);
    let a = format!("https://reg-a.test:{}", reg.port());
    let b = format!("https://reg-b.test:{}", reg.port());
    let got = c.get(format!("{a}/v2/app/blobs/{small}")).send().await.unwrap();
    assert!(got.headers().get("x-cache").is_some(), "reg-a still intercepted");
    let got = c.get(format!("{b}/v2/app/blobs/{small}")).send().await.unwrap();
    assert!(
        got.headers().get("x-cache").is_none(),
        "reg-b not added by the refused reload"
    );

    write(&cfg, &reload_config(&reg, true));
    let res = admin.post(&reload_url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("registries added"));
    let c = client(&p, &w);
    let got = c.get(format!("{b}/v2/app/blobs/{small}")).send().await.unwrap();
    assert!(
        got.headers().get("x-cache").is_some(),
        "reg-b intercepted after a good reload"
    );

    // GET is not a reload.
    let res = admin.get(&reload_url).send().await.unwrap();
    assert_eq!(res.status(), 405);
}

// ----- shutdown ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_download_finish_then_exits() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &["reg-a.test"]);
    let data = Bytes::from(random_bytes(2 << 20));
    let blob = reg.put_blob(data.clone());
    reg.set_fault(
        &blob,
        Fault::SlowBody {
            chunk: 128 << 10,
            every: Duration::from_millis(60),
        },
    );
    let mut p = Regcache::builder()
        .upstream_ca(&w.ca_file)
        .connect_to(&format!("reg-a.test:{}", reg.port()), reg.addr())
        .registry(&format!("reg-a.test:{}", reg.port()))
        .start();
    let addr = p.addr();
    let c = client(&p, &w);
    let url = format!("https://reg-a.test:{}/v2/app/blobs/{blob}", reg.port());
    let mut pull = c.get(&url).send().await.unwrap();
    let mut received = pull.chunk().await.unwrap().expect("first bytes").to_vec();
    signal(&p, "-TERM");
    assert!(p.wait_for_log("draining", Duration::from_secs(5)), "{}", p.logs());
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no new connections once shutting down"
    );
    while let Some(chunk) = pull.chunk().await.unwrap() {
        received.extend_from_slice(&chunk);
    }
    assert!(received == data, "the response under way completed");
    let status = p.terminate(Duration::from_secs(10)).expect("exited by itself");
    assert!(status.success(), "{status:?}");
    assert!(p.logs().contains("drained"), "{}", p.logs());

    // The download finished within the grace period, so it is a complete cache entry.
    p.restart();
    reg.stop();
    let c = client(&p, &w);
    let got = c.get(&url).send().await.unwrap();
    assert_eq!(got.headers().get("x-cache").and_then(|v| v.to_str().ok()), Some("HIT"));
    assert!(got.bytes().await.unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_by_the_grace_period_leaves_no_cache_entry() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &["reg-a.test"]);
    let data = Bytes::from(random_bytes(2 << 20));
    let blob = reg.put_blob(data.clone());
    // About 8 s in flight, far past a 1 s grace period.
    reg.set_fault(
        &blob,
        Fault::SlowBody {
            chunk: 64 << 10,
            every: Duration::from_millis(250),
        },
    );
    let mut p = Regcache::builder()
        .upstream_ca(&w.ca_file)
        .connect_to(&format!("reg-a.test:{}", reg.port()), reg.addr())
        .registry(&format!("reg-a.test:{}", reg.port()))
        .args(["--shutdown-timeout", "1s"])
        .start();
    let c = client(&p, &w);
    let url = format!("https://reg-a.test:{}/v2/app/blobs/{blob}", reg.port());
    let mut pull = c.get(&url).send().await.unwrap();
    pull.chunk().await.unwrap().expect("first bytes");
    signal(&p, "-TERM");
    let mut cut = false;
    loop {
        match pull.chunk().await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "the client sees a cut body, never a clean short one");
    let status = p.terminate(Duration::from_secs(10)).expect("exited by itself");
    assert!(status.success(), "{status:?}");
    assert!(p.logs().contains("grace period over"), "{}", p.logs());

    reg.clear_faults();
    p.restart();
    let c = client(&p, &w);
    let got = c.get(&url).send().await.unwrap();
    assert_eq!(
        got.headers().get("x-cache").and_then(|v| v.to_str().ok()),
        Some("MISS"),
        "the partial download was not kept"
    );
    assert!(got.bytes().await.unwrap() == data);
}

// ----- logs ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_the_request_fields() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &["reg-a.test"]);
    let blob = reg.put_blob(random_bytes(5000));
    let p = Regcache::builder()
        .upstream_ca(&w.ca_file)
        .connect_to(&format!("reg-a.test:{}", reg.port()), reg.addr())
        .registry(&format!("reg-a.test:{}", reg.port()))
        .args(["--log-format", "json"])
        .start();
    let c = client(&p, &w);
    let url = format!("https://reg-a.test:{}/v2/app/blobs/{blob}", reg.port());
    assert_eq!(c.get(&url).send().await.unwrap().bytes().await.unwrap().len(), 5000);
    assert!(
        p.wait_for_log("\"cache\":\"miss\"", Duration::from_secs(5)),
        "{}",
        p.logs()
    );
    let logs = p.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| l.starts_with('{')).collect();
    assert!(!lines.is_empty(), "{logs}");
    let mut found = false;
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["cache"] == "miss" && v["path"].as_str().is_some_and(|p| p.contains(&blob)) {
            assert_eq!(v["status"], 200, "{line}");
            assert_eq!(v["bytes"], 5000, "{line}");
            assert!(v["ms"].is_number(), "{line}");
            assert!(
                v["host"].as_str().is_some_and(|h| h.starts_with("reg-a.test")),
                "{line}"
            );
            found = true;
        }
    }
    assert!(found, "no access line for the blob: {logs}");
}

/// `/healthz` of `p`: status and body.
async fn healthz(p: &Regcache, query: &str) -> (u16, String) {
    let r = local_client()
        .get(format!("{}/healthz{query}", p.proxy_url()))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Polls `/healthz` until its status is `want` (up to 20 s); the last answer.
async fn healthz_until(p: &Regcache, want: u16) -> (u16, String) {
    let mut last = (0, String::new());
    for _ in 0..100 {
        last = healthz(p, "").await;
        if last.0 == want && !last.1.contains("first check running") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_after_threshold_store_checks_fail_and_recovers_after_one_passes() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &["ghcr.io"]);
    let blob = reg.put_blob(Bytes::from(random_bytes(64 * 1024)));
    let p = Regcache::builder()
        .connect_to("ghcr.io:443", reg.addr())
        .upstream_ca(&w.ca_file)
        .args(["--health-interval", "1s", "--health-threshold", "3"])
        .start();
    let ok = healthz_until(&p, 200).await;
    assert!(ok.1.starts_with("ok\n") && ok.1.contains(": reachable"), "{ok:?}");

    // The disk under the cache breaks: where the check (and every download) spools is a file.
    let spools = p.data_dir().join("cache").join("tmp");
    let _ = std::fs::remove_dir_all(&spools);
    std::fs::write(&spools, "not a directory").unwrap();
    let down = healthz_until(&p, 503).await;
    assert_eq!(down.0, 503, "{down:?}\n{}", p.logs());
    assert!(down.1.contains("3 checks in a row failed"), "{down:?}");
    let verbose: serde_json::Value = serde_json::from_str(&healthz(&p, "?verbose").await.1).unwrap();
    assert_eq!(verbose["status"], "unhealthy");
    assert!(
        verbose["checks"][0]["last_error"].as_str().unwrap().contains("tmp"),
        "{verbose}"
    );
    // Pulls keep passing through uncached meanwhile.
    let res = client(&p, &w)
        .get(format!("https://ghcr.io/v2/org/app/blobs/{blob}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(support::sha256_digest(&res.bytes().await.unwrap()), blob);

    // Repaired: one passing check is enough.
    std::fs::remove_file(&spools).unwrap();
    let up = healthz_until(&p, 200).await;
    assert!(up.0 == 200 && up.1.contains(": reachable"), "{up:?}");
    assert!(p.logs().contains("store check passed again"));
}

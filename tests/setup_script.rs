//! `GET /setup/systemd?runtime=…` on regcache's own listener: the script is served for both
//! runtimes, parses as POSIX sh (dash and busybox ash), and really runs against a fake root:
//! the Debian recipe's trust store (built by the real update-ca-certificates inside the fake
//! root) verifies a leaf regcache mints, and the RHEL and Alpine paths put the CA and the
//! drop-in where those systems want them.

mod support;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::Regcache;

/// regcache with `ghcr.io` mapped to a closed port: a CONNECT is intercepted (TLS with a leaf
/// from regcache's CA) and the request then gets a quick 502, with no traffic off the machine.
fn proxy() -> Regcache {
    let closed = std::net::SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    Regcache::builder().connect_to("ghcr.io:443", closed).start()
}

/// `GET path` on the proxy's own listener with `Host: host`; returns (status, content type,
/// body).
fn get(proxy: &Regcache, path: &str, host: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(proxy.addr()).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type").then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// The script for `runtime`, as a client reaching the proxy at its address gets it.
fn fetch_script(proxy: &Regcache, runtime: &str) -> String {
    let (status, content_type, body) = get(
        proxy,
        &format!("/setup/systemd?runtime={runtime}"),
        &proxy.addr().to_string(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "text/x-shellscript");
    body
}

/// Runs `shell script` with a minimal environment plus `envs`.
fn run_script(shell: &[&str], script: &Path, envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(shell[0]);
    cmd.args(&shell[1..])
        .arg(script)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap_or_else(|e| panic!("run {}: {e}", shell.join(" ")))
}

fn ok(out: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed with {}:\n{err}", out.status);
    err
}

/// A fake root with `etc/os-release` holding `os_release`.
fn fake_root(parent: &Path, name: &str, os_release: &str) -> PathBuf {
    let root = parent.join(name);
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/os-release"), os_release).unwrap();
    root
}

fn expected_dropin(proxy: &Regcache, runtime: &str) -> String {
    let url = proxy.proxy_url();
    format!(
        "# Written by regcache's setup script ({url}/setup/systemd?runtime={runtime}).\n\
         # {runtime} reads its proxy from its own environment; NO_PROXY keeps local traffic direct.\n\
         [Service]\n\
         Environment=\"HTTPS_PROXY={url}\"\n\
         Environment=\"HTTP_PROXY={url}\"\n\
         Environment=\"NO_PROXY=localhost,127.0.0.0/8,::1\"\n"
    )
}

/// `curl` through the proxy for a manifest on `ghcr.io` trusting only `bundle`: the curl exit
/// status (60 when the TLS certificate is not trusted) and the HTTP status it saw.
fn curl_through(proxy: &Regcache, bundle: &Path) -> (Option<i32>, String) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(bundle)
        .arg("--proxy")
        .arg(proxy.proxy_url())
        .arg("https://ghcr.io/v2/org/app/manifests/v1")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .expect("run curl");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn script_is_served_for_both_runtimes_and_parses_as_posix_sh() {
    let proxy = proxy();
    let tmp = tempfile::tempdir().unwrap();
    for runtime in ["docker", "containerd"] {
        let script = fetch_script(&proxy, runtime);
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
        assert!(
            script.contains(&format!("proxy_url='{}'", proxy.proxy_url())),
            "proxy URL from the Host header"
        );
        assert!(script.contains(&format!("runtime='{runtime}'")));
        let path = tmp.path().join(format!("{runtime}.sh"));
        std::fs::write(&path, &script).unwrap();
        ok(&run_script(&["dash", "-n"], &path, &[]), "dash -n");
        ok(&run_script(&["busybox", "sh", "-n"], &path, &[]), "busybox sh -n");
    }

    // A name the proxy is reached by, as behind a DNS alias.
    let (status, _, body) = get(&proxy, "/setup/systemd?runtime=docker", "regcache.internal:3128");
    assert_eq!(status, 200);
    assert!(body.contains("proxy_url='http://regcache.internal:3128'"));

    // Unknown or missing runtime, and a Host that is not HOST[:PORT]: one line, 400.
    for (path, host, says) in [
        (
            "/setup/systemd?runtime=podman",
            "proxy:3128",
            "unknown runtime \"podman\"",
        ),
        ("/setup/systemd", "proxy:3128", "runtime=docker"),
        (
            "/setup/systemd?runtime=docker",
            "proxy:3128';reboot;'",
            "is not HOST[:PORT]",
        ),
        ("/setup/systemd?runtime=docker", "$(reboot)", "is not HOST[:PORT]"),
    ] {
        let (status, content_type, body) = get(&proxy, path, host);
        assert_eq!(status, 400, "{path} Host {host}: {body}");
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        assert_eq!(body.trim_end().lines().count(), 1, "{body}");
        assert!(body.contains(says), "{body}");
    }
}

#[test]
fn debian_recipe_in_a_fake_root_makes_a_trust_store_that_verifies_regcache() {
    let proxy = proxy();
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("setup.sh");
    std::fs::write(&script, fetch_script(&proxy, "docker")).unwrap();
    let root = fake_root(tmp.path(), "debian", "PRETTY_NAME=\"Debian 12\"\nID=debian\n");
    let root_s = root.to_str().unwrap();

    // Not a dry run: the real update-ca-certificates builds the bundle inside the fake root.
    let log = ok(
        &run_script(&["sh"], &script, &[("REGCACHE_SETUP_ROOT", root_s)]),
        "setup script (debian)",
    );
    let ca_pem = proxy.ca_cert_pem();
    let anchor = root.join("usr/local/share/ca-certificates/regcache.crt");
    assert_eq!(std::fs::read_to_string(&anchor).unwrap(), ca_pem);
    let bundle = root.join("etc/ssl/certs/ca-certificates.crt");
    let bundle_pem = std::fs::read_to_string(&bundle).unwrap_or_else(|e| panic!("{e}: {log}"));
    assert!(bundle_pem.contains(ca_pem.trim()), "bundle holds regcache's CA: {log}");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/systemd/system/docker.service.d/http-proxy.conf")).unwrap(),
        expected_dropin(&proxy, "docker")
    );
    assert!(log.contains("no service restarted"), "{log}");

    // The bundle the recipe built verifies the leaf regcache mints for ghcr.io (the request
    // itself then gets regcache's 502: the mapped upstream port is closed and nothing is
    // cached)...
    assert_eq!(curl_through(&proxy, &bundle), (Some(0), "502".to_string()));
    // ...which a trust store without regcache's CA does not (curl: 60, certificate problem).
    let other = tmp.path().join("other-bundle.crt");
    std::fs::write(&other, support::TestCa::new().cert_pem()).unwrap();
    assert_eq!(curl_through(&proxy, &other).0, Some(60));
}

#[test]
fn rhel_and_alpine_recipes_in_a_fake_root() {
    let proxy = proxy();
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("setup.sh");
    std::fs::write(&script, fetch_script(&proxy, "containerd")).unwrap();
    let ca_pem = proxy.ca_cert_pem();
    let dropin = "etc/systemd/system/containerd.service.d/http-proxy.conf";

    // Rocky Linux says it is like RHEL; dry run: the commands are printed, not run.
    let rocky = fake_root(
        tmp.path(),
        "rocky",
        "NAME=\"Rocky Linux\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n",
    );
    let log = ok(
        &run_script(
            &["sh"],
            &script,
            &[
                ("REGCACHE_SETUP_ROOT", rocky.to_str().unwrap()),
                ("REGCACHE_SETUP_DRY_RUN", "1"),
            ],
        ),
        "setup script (rhel)",
    );
    assert_eq!(
        std::fs::read_to_string(rocky.join("etc/pki/ca-trust/source/anchors/regcache.crt")).unwrap(),
        ca_pem
    );
    assert_eq!(
        std::fs::read_to_string(rocky.join(dropin)).unwrap(),
        expected_dropin(&proxy, "containerd")
    );
    for line in [
        "would run: update-ca-trust extract",
        "would run: systemctl daemon-reload",
        "would run: systemctl restart containerd",
    ] {
        assert!(log.contains(line), "{line:?} in:\n{log}");
    }
    assert!(!rocky.join("usr/local/share/ca-certificates").exists());

    // Alpine, run by busybox's ash as it would be there.
    let alpine = fake_root(tmp.path(), "alpine", "NAME=\"Alpine Linux\"\nID=alpine\n");
    let log = ok(
        &run_script(
            &["busybox", "sh"],
            &script,
            &[
                ("REGCACHE_SETUP_ROOT", alpine.to_str().unwrap()),
                ("REGCACHE_SETUP_DRY_RUN", "1"),
            ],
        ),
        "setup script (alpine, busybox sh)",
    );
    assert_eq!(
        std::fs::read_to_string(alpine.join("usr/local/share/ca-certificates/regcache.crt")).unwrap(),
        ca_pem
    );
    assert_eq!(
        std::fs::read_to_string(alpine.join(dropin)).unwrap(),
        expected_dropin(&proxy, "containerd")
    );
    assert!(log.contains("would run: update-ca-certificates"), "{log}");
    assert!(log.contains("would run: systemctl restart containerd"), "{log}");
}

#[test]
fn a_ca_that_is_not_the_one_the_script_was_made_for_is_refused() {
    let proxy = proxy();
    let tmp = tempfile::tempdir().unwrap();
    let script = fetch_script(&proxy, "docker");
    let line = script.lines().find(|l| l.starts_with("ca_sha256='")).unwrap();
    let tampered = script.replace(line, &format!("ca_sha256='{}'", "0".repeat(64)));
    let path = tmp.path().join("setup.sh");
    std::fs::write(&path, tampered).unwrap();
    let root = fake_root(tmp.path(), "debian", "ID=debian\n");
    let out = run_script(&["sh"], &path, &[("REGCACHE_SETUP_ROOT", root.to_str().unwrap())]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("is not the one this script was made for"), "{err}");
    assert!(!root.join("usr").exists(), "nothing installed");
    assert!(!root.join("etc/systemd").exists(), "nothing installed");
}

#[test]
fn a_dry_run_without_a_root_changes_nothing_on_this_machine() {
    let proxy = proxy();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("setup.sh");
    std::fs::write(&path, fetch_script(&proxy, "containerd")).unwrap();
    // RHEL paths do not exist on the Debian machine the tests run on: were anything written
    // to the real root, it would show (and is removed again before failing).
    let anchor = Path::new("/etc/pki/ca-trust/source/anchors/regcache.crt");
    let dropin = Path::new("/etc/systemd/system/containerd.service.d/http-proxy.conf");
    assert!(!anchor.exists() && !dropin.exists(), "left over from elsewhere");
    let out = run_script(
        &["sh"],
        &path,
        &[("REGCACHE_SETUP_DRY_RUN", "1"), ("REGCACHE_SETUP_OS", "rhel")],
    );
    let written = [anchor, dropin].into_iter().filter(|p| p.exists()).collect::<Vec<_>>();
    for p in &written {
        let _ = std::fs::remove_file(p);
    }
    let log = ok(&out, "setup script (dry run, no root)");
    assert!(written.is_empty(), "a dry run wrote {written:?}:\n{log}");
    assert!(log.contains("dry run: files go to"), "{log}");
    assert!(log.contains("would run: update-ca-trust extract"), "{log}");
    assert!(log.contains("would run: systemctl restart containerd"), "{log}");
    assert!(
        log.contains(&format!("Environment=\"HTTPS_PROXY={}\"", proxy.proxy_url())),
        "{log}"
    );
}

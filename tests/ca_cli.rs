//! The CA on disk and its CLI: `ca init/show/export`, reuse across restarts, and clear errors
//! naming the file for corrupt PEM, loose key permissions and half-present CAs.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use support::{Regcache, run_cli};

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "one readable line expected: {err}");
    err
}

fn fingerprint_line(show: &str) -> String {
    show.lines()
        .find(|l| l.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no fingerprint in {show}"))
        .to_string()
}

fn serve_once(ca_dir: &Path) -> Output {
    let data = tempfile::tempdir().unwrap();
    run_cli(&[
        "serve".as_ref(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--data-dir".as_ref(),
        data.path().as_os_str(),
        "--ca-dir".as_ref(),
        ca_dir.as_os_str(),
    ])
}

#[test]
fn init_show_export() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let ca_s = ca.to_str().unwrap();

    let init = ok(&run_cli(&["ca", "init", "--ca-dir", ca_s]));
    assert!(init.contains("generated"), "{init}");
    let key_mode = std::fs::metadata(ca.join("ca.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600);

    let show = ok(&run_cli(&["ca", "show", "--ca-dir", ca_s]));
    for field in [
        "subject:",
        "CN=regcache CA on",
        "key:         ECDSA",
        "sha256:",
        "not before:",
        "not after:",
    ] {
        assert!(show.contains(field), "missing {field} in {show}");
    }
    // About ten years.
    let year = |prefix: &str| -> i32 {
        let line = show.lines().find(|l| l.starts_with(prefix)).unwrap();
        line.split_whitespace().last().unwrap()[..4].parse().unwrap()
    };
    assert!((9..=11).contains(&(year("not after:") - year("not before:"))), "{show}");

    // Refuses to overwrite, then replaces with --force.
    let err = failed(&run_cli(&["ca", "init", "--ca-dir", ca_s]));
    assert!(err.contains("--force"), "{err}");
    let before = fingerprint_line(&show);
    ok(&run_cli(&["ca", "init", "--force", "--ca-dir", ca_s]));
    let after = fingerprint_line(&ok(&run_cli(&["ca", "show", "--ca-dir", ca_s])));
    assert_ne!(before, after);

    // Export to stdout and to a file: the certificate only, never the key.
    let pem = std::fs::read_to_string(ca.join("ca.crt")).unwrap();
    assert_eq!(ok(&run_cli(&["ca", "export", "--ca-dir", ca_s])), pem);
    let out = dir.path().join("exported.crt");
    ok(&run_cli(&["ca", "export", "--ca-dir", ca_s, out.to_str().unwrap()]));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), pem);
    assert!(!pem.contains("PRIVATE KEY"));
}

#[test]
fn ca_dir_from_environment() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("envca");
    ok(&support::regcache::run_cli_with_env(
        &["ca", "init"],
        &[("REGCACHE_CA_DIR", ca.to_str().unwrap())],
    ));
    assert!(ca.join("ca.crt").exists());
}

#[test]
fn serve_reuses_its_ca_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let mut proxy = Regcache::builder().ca_dir(&ca).start();
    let first = std::fs::read(ca.join("ca.crt")).unwrap();
    let banner_fp = |logs: &str| -> Vec<String> {
        logs.lines()
            .filter(|l| l.contains("SHA-256 fingerprint"))
            .map(|l| l.trim().to_string())
            .collect()
    };
    assert!(proxy.logs().contains("(generated)"), "{}", proxy.logs());
    proxy.restart();
    assert_eq!(std::fs::read(ca.join("ca.crt")).unwrap(), first);
    let logs = proxy.logs();
    assert!(logs.contains("(loaded)"), "{logs}");
    let fps = banner_fp(&logs);
    assert_eq!(fps.len(), 2, "{logs}");
    assert_eq!(fps[0], fps[1], "same CA after restart");
    assert_eq!(
        fps[0].trim_start_matches("SHA-256 fingerprint ").replace(':', "").len(),
        64,
        "{}",
        fps[0]
    );
}

#[test]
fn corrupt_or_exposed_ca_files_fail_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ok(&run_cli(&["ca", "init", "--ca-dir", ca.to_str().unwrap()]));

    // Key readable by others.
    let key = ca.join("ca.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = failed(&serve_once(&ca));
    assert!(
        err.contains(key.to_str().unwrap()) && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Corrupt certificate PEM.
    let cert = ca.join("ca.crt");
    let good = std::fs::read(&cert).unwrap();
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").unwrap();
    let err = failed(&serve_once(&ca));
    assert!(err.contains(cert.to_str().unwrap()), "{err}");
    let err = failed(&run_cli(&["ca", "show", "--ca-dir", ca.to_str().unwrap()]));
    assert!(err.contains(cert.to_str().unwrap()), "{err}");
    std::fs::write(&cert, &good).unwrap();

    // Key missing while the certificate is there: no silent regeneration.
    std::fs::remove_file(&key).unwrap();
    let err = failed(&serve_once(&ca));
    assert!(err.contains(key.to_str().unwrap()), "{err}");
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    let out = run_cli(&["serve", "--connect-to", "ghcr.io"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--connect-to") && err.contains("HOST[:PORT]=ADDR:PORT"),
        "{err}"
    );

    let out = run_cli(&["serve", "--non-registry", "maybe"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tunnel, deny"));

    let out = run_cli(&["serve", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--data-dir",
        "--ca-dir",
        "--registry",
        "--connect-to",
        "--upstream-ca",
        "--non-registry",
        "REGCACHE_LISTEN",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn missing_upstream_ca_bundle_fails_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    for bundle in [&missing, &empty] {
        let out = run_cli(&[
            "serve".as_ref(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--data-dir".as_ref(),
            dir.path().join("data").as_os_str(),
            "--ca-dir".as_ref(),
            dir.path().join("ca").as_os_str(),
            "--upstream-ca".as_ref(),
            bundle.as_os_str(),
        ]);
        let err = failed(&out);
        assert!(err.contains(bundle.to_str().unwrap()), "{err}");
    }
}

//! The shipped systemd files: `systemd/regcache.service` and the docker/containerd proxy
//! drop-ins. `systemd-analyze verify` (systemd's own parser: unknown keys and bad values are
//! warnings, so the test demands no output at all) and `systemd-analyze security --offline`
//! (the sandbox's exposure score) run against a scratch root holding the units; a plain parse
//! checks the keys the files exist for.

#[path = "support/skip.rs"]
mod skip;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const SYSTEMD_ANALYZE: &str = "/usr/bin/systemd-analyze";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `section → key → values` (a key may repeat, as `Environment=` does); comments skipped.
fn parse_unit(path: &Path) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_string());
            out.entry(name.to_string()).or_default();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{}:{}: not KEY=VALUE: {line}", path.display(), n + 1));
        let section = section
            .clone()
            .unwrap_or_else(|| panic!("{}:{}: key outside a section", path.display(), n + 1));
        out.entry(section)
            .or_default()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    out
}

/// A scratch root for `systemd-analyze --root`: the system's own units (targets the service
/// depends on), `units` copied into `/etc/systemd/system/<name>`, and an executable stand-in
/// at each of `executables` (verify checks that Exec*= programs exist; it never runs them).
fn scratch_root(units: &[(&str, &Path)], executables: &[&str]) -> tempfile::TempDir {
    let root = tempfile::Builder::new().prefix("regcache-systemd-").tempdir().unwrap();
    let lib = root.path().join("lib/systemd/system");
    std::fs::create_dir_all(&lib).unwrap();
    let status = Command::new("cp")
        .args(["-a", "/lib/systemd/system/."])
        .arg(&lib)
        .status()
        .unwrap();
    assert!(status.success(), "copy /lib/systemd/system into the scratch root");
    for (name, src) in units {
        let dest = root.path().join("etc/systemd/system").join(name);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(src, &dest).unwrap();
    }
    for exe in executables {
        let dest = root.path().join(exe.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(&dest, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    root
}

/// `systemd-analyze ARGS --root=ROOT UNIT`: panics unless it exits 0 and prints nothing
/// (verify reports unknown keys and unparsable values as warnings, not as a failure).
fn analyze_quiet(args: &[&str], root: &Path, unit: &str) {
    let out = Command::new(SYSTEMD_ANALYZE)
        .args(args)
        .arg(format!("--root={}", root.display()))
        .arg(unit)
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze {} {unit}: {}\n{text}",
        args.join(" "),
        out.status
    );
}

/// Whether systemd-analyze is here; records a skip of `test`'s verification when it is not
/// (the key checks still run).
fn have_systemd_analyze(test: &str) -> bool {
    let here = Path::new(SYSTEMD_ANALYZE).exists();
    if !here {
        skip::skip(
            test,
            &format!(
                "{SYSTEMD_ANALYZE} is missing (Debian package systemd; tests/run.sh installs it): only the key checks ran"
            ),
        );
    }
    here
}

#[test]
fn regcache_service_is_valid_and_sandboxed() {
    let unit = repo_file("systemd/regcache.service");
    let parsed = parse_unit(&unit);
    let service = &parsed["Service"];
    let one = |key: &str| -> &str {
        let values = service
            .get(key)
            .unwrap_or_else(|| panic!("[Service] {key}= is missing"));
        assert_eq!(values.len(), 1, "{key}= given once: {values:?}");
        &values[0]
    };
    assert_eq!(
        one("ExecStart"),
        "/usr/local/bin/regcache serve --config /etc/regcache/regcache.toml \
         --data-dir /var/lib/regcache/data --ca-dir /var/lib/regcache/ca"
    );
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "regcache"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("LimitNOFILE", "65536"),
    ] {
        assert_eq!(one(key), value, "{key}=");
    }
    assert!(
        service["SystemCallFilter"].iter().any(|v| v == "@system-service"),
        "{:?}",
        service["SystemCallFilter"]
    );
    assert_eq!(parsed["Install"]["WantedBy"], ["multi-user.target"]);

    if have_systemd_analyze("systemd_units::regcache_service_is_valid_and_sandboxed") {
        let root = scratch_root(
            &[("regcache.service", &unit)],
            &["/usr/local/bin/regcache", "/bin/kill"],
        );
        analyze_quiet(&["verify"], root.path(), "regcache.service");
        // Exposure 0 (locked down) … 10 (unprotected); the unit scores 1.2 with systemd 252.
        // Dropping any of the sandboxing lines above 2.0 fails here.
        let out = Command::new(SYSTEMD_ANALYZE)
            .args(["security", "--offline=yes", "--threshold=20"])
            .arg(format!("--root={}", root.path().display()))
            .arg("regcache.service")
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "exposure above 2.0:\n{report}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            report.contains("Overall exposure level for regcache.service"),
            "{report}"
        );
    }
}

#[test]
fn proxy_dropins_are_valid_for_docker_and_containerd() {
    for (unit, exe) in [("docker", "/usr/bin/dockerd"), ("containerd", "/usr/bin/containerd")] {
        let dropin = repo_file(&format!("systemd/{unit}.service.d/http-proxy.conf"));
        let parsed = parse_unit(&dropin);
        assert_eq!(parsed.keys().collect::<Vec<_>>(), ["Service"], "{unit}: only [Service]");
        let env = &parsed["Service"]["Environment"];
        for expected in [
            "\"HTTPS_PROXY=http://127.0.0.1:3128\"",
            "\"HTTP_PROXY=http://127.0.0.1:3128\"",
            "\"NO_PROXY=localhost,127.0.0.0/8,::1\"",
        ] {
            assert!(env.iter().any(|e| e == expected), "{unit}: {expected} in {env:?}");
        }

        if have_systemd_analyze("systemd_units::proxy_dropins_are_valid_for_docker_and_containerd") {
            // A stand-in for the runtime's own unit (which the packages ship): the drop-in is
            // what is verified, merged onto it as systemd does.
            let tmp = tempfile::tempdir().unwrap();
            let stand_in = tmp.path().join(format!("{unit}.service"));
            std::fs::write(
                &stand_in,
                format!("[Unit]\nDescription=stand-in for {unit}\n\n[Service]\nExecStart={exe}\n"),
            )
            .unwrap();
            let root = scratch_root(
                &[
                    (&format!("{unit}.service"), &stand_in),
                    (&format!("{unit}.service.d/http-proxy.conf"), &dropin),
                ],
                &[exe],
            );
            analyze_quiet(&["verify"], root.path(), &format!("{unit}.service"));
        }
    }
}

#[test]
fn verify_does_catch_a_broken_unit() {
    // The check above is only worth something if a typo makes it fail.
    if !have_systemd_analyze("systemd_units::verify_does_catch_a_broken_unit") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("regcache.service");
    let good = std::fs::read_to_string(repo_file("systemd/regcache.service")).unwrap();
    std::fs::write(&broken, good.replace("ProtectSystem=strict", "ProtectSystem=strictly")).unwrap();
    let root = scratch_root(
        &[("regcache.service", &broken)],
        &["/usr/local/bin/regcache", "/bin/kill"],
    );
    let out = Command::new(SYSTEMD_ANALYZE)
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg("regcache.service")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ProtectSystem") || stderr.contains("strictly"),
        "{stderr}"
    );
}

#[test]
fn the_debian_packages_drop_in_gives_a_valid_unit_for_its_user() {
    let unit = repo_file("systemd/regcache.service");
    let drop_in = repo_file("deploy/deb/package.conf");
    let parsed = parse_unit(&drop_in);
    let service = &parsed["Service"];
    assert_eq!(service["User"], ["regcache"]);
    assert_eq!(service["DynamicUser"], ["no"]);
    // An empty ExecStart= first: a drop-in adds to the list otherwise.
    assert_eq!(service["ExecStart"][0], "");
    assert!(service["ExecStart"][1].starts_with("/usr/bin/regcache serve "));
    if !have_systemd_analyze("systemd_units::the_debian_packages_drop_in_gives_a_valid_unit_for_its_user") {
        return;
    }
    let root = scratch_root(
        &[
            ("regcache.service", &unit),
            ("regcache.service.d/package.conf", &drop_in),
        ],
        &["/usr/bin/regcache", "/bin/kill"],
    );
    analyze_quiet(&["verify"], root.path(), "regcache.service");
}

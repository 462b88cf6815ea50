//! Tests that cannot run here say so: one line on stderr, and one line in the file
//! `tests/run.sh` names in `REGCACHE_TEST_SKIPS`, so that the suite's last line counts them as
//! skipped (with their reasons listed above it) instead of as passed.

// Each test crate that includes this uses one of the two.
#![allow(dead_code)]

use std::io::Write as _;

/// Records that `test` (or the part of it named in `reason`) did not run, and why.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(path) = std::env::var_os("REGCACHE_TEST_SKIPS")
        && let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path)
    {
        // One write per line: tests of one binary skip from parallel threads, and O_APPEND
        // keeps a single small write whole.
        let _ = file.write_all(format!("{test}: {reason}\n").as_bytes());
    }
}

/// The effective uid of this process, as `/proc/self/status` gives it.
fn effective_uid() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default()
}

/// Whether this process runs as root; records a skip of `test` when it does not.
pub fn running_as_root(test: &str, why: &str) -> bool {
    let uid = effective_uid();
    let root = uid == "0";
    if !root {
        skip(test, &format!("needs root ({why}); running as uid {uid}"));
    }
    root
}

/// Whether this process may make a private mount namespace (root, and `unshare --mount`
/// allowed here: an unprivileged container refuses it); records a skip of `test` when not.
pub fn private_mount_namespace(test: &str, why: &str) -> bool {
    if !running_as_root(test, why) {
        return false;
    }
    let probe = std::process::Command::new("/usr/bin/unshare")
        .args(["--mount", "--propagation", "private", "/bin/true"])
        .stdin(std::process::Stdio::null())
        .output();
    let refused = match probe {
        Ok(out) if out.status.success() => return true,
        Ok(out) => format!(
            "unshare --mount: {}",
            String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or("").trim()
        ),
        Err(e) => format!("/usr/bin/unshare: {e}"),
    };
    skip(test, &format!("needs a private mount namespace ({why}); {refused}"));
    false
}

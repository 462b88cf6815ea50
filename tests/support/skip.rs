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
        let _ = writeln!(file, "{test}: {reason}");
    }
}

/// Whether this process runs as root; records a skip of `test` when it does not.
pub fn running_as_root(test: &str, why: &str) -> bool {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default();
    let root = uid == "0";
    if !root {
        skip(test, &format!("needs root ({why}); running as uid {uid}"));
    }
    root
}

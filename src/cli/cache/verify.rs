//! `regcache cache verify [--repair]`: every blob and manifest re-hashed; exit status 1 while
//! corruption remains.

use crate::cli::args::DataDirArg;
use std::io::Write as _;

use super::{CacheCliError, human_size, runtime, store};
use crate::catalog::{VerifyReport, verify};

/// Verifies the store (removing corrupt content with `repair`) and prints the report.
///
/// # Errors
/// If the store cannot be read, a repair failed, or corruption remains.
pub(super) fn run(data: &DataDirArg, repair: bool, json: bool) -> Result<(), CacheCliError> {
    let mut out = std::io::stdout().lock();
    let store = store(data)?;
    let report = runtime()?
        .block_on(verify(&store, repair, |c| {
            if !json {
                let _ = writeln!(
                    std::io::stdout(),
                    "corrupt {} {}: expected {}, got {}",
                    c.kind,
                    c.path,
                    c.expected,
                    c.actual
                );
            }
        }))
        .map_err(|e| CacheCliError::Failed(e.to_string()))?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(out, "{}", render_verify(&report, repair))?;
    }
    if !report.failed.is_empty() {
        return Err(CacheCliError::Failed(report.failed.join("; ")));
    }
    if report.corruption_remains() {
        let n = report.corrupt.iter().filter(|c| !c.removed).count();
        let hint = if repair {
            "some changed while being verified; run it again"
        } else {
            "remove them with regcache cache verify --repair"
        };
        return Err(CacheCliError::Failed(format!(
            "{n} corrupt content file(s) in the cache ({hint})"
        )));
    }
    Ok(())
}

fn render_verify(r: &VerifyReport, repair: bool) -> String {
    let mut t = String::new();
    for m in &r.dangling {
        t.push_str(&format!(
            "{} entry {m}: its content is gone (pulled again on demand)\n",
            if repair { "removed" } else { "dangling" }
        ));
    }
    for s in &r.stray {
        t.push_str(&format!("stray file {s}: not named by a digest; left alone\n"));
    }
    t.push_str(&format!(
        "checked {} content files ({}): {} corrupt",
        r.checked,
        human_size(r.bytes),
        r.corrupt.len()
    ));
    if repair {
        t.push_str(&format!(
            "; removed {} ({} index entries, {} freed)",
            r.corrupt.iter().filter(|c| c.removed).count(),
            r.entries_removed,
            human_size(r.bytes_freed)
        ));
    }
    t.push('\n');
    t
}

//! `regcache cache rm REF…`: purges, each reported (content other images use is kept).

use crate::cli::args::DataDirArg;
use std::io::Write as _;

use super::{CacheCliError, human_size, runtime, store};
use crate::catalog::{PurgeError, PurgeRef, PurgeReport, purge};

/// Purges every reference in turn (all are checked first).
///
/// # Errors
/// A malformed reference (usage, before anything is removed), or a reference that matched
/// nothing or could not be fully removed (after the others were).
pub(super) fn run(data: &DataDirArg, references: &[String], json: bool) -> Result<(), CacheCliError> {
    let mut out = std::io::stdout().lock();
    // Check every reference before removing anything.
    for r in references {
        r.parse::<PurgeRef>().map_err(CacheCliError::Usage)?;
    }
    let store = store(data)?;
    let runtime = runtime()?;
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for r in references {
        match runtime.block_on(purge(&store, r)) {
            Ok(report) => {
                if !report.failed.is_empty() {
                    failures.push(format!("{r}: {}", report.failed.join("; ")));
                }
                if !json {
                    write!(out, "{}", render_purge(&report))?;
                }
                reports.push(report);
            }
            Err(e @ PurgeError::NothingMatched(_)) => failures.push(e.to_string()),
            Err(PurgeError::BadRef(e)) => return Err(CacheCliError::Usage(e)),
            Err(e) => return Err(CacheCliError::Failed(e.to_string())),
        }
    }
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&reports)?)?;
    }
    if !failures.is_empty() {
        return Err(CacheCliError::Failed(failures.join("; ")));
    }
    Ok(())
}

fn render_purge(r: &PurgeReport) -> String {
    let mut t = String::new();
    for tag in &r.tags {
        t.push_str(&format!(
            "removed tag {}/{}:{} → {}\n",
            tag.registry, tag.repository, tag.tag, tag.digest
        ));
    }
    for m in &r.manifests {
        t.push_str(&format!(
            "removed manifest {}/{}@{}\n",
            m.registry, m.repository, m.digest
        ));
    }
    for c in &r.content {
        t.push_str(&format!("removed {} {} ({})\n", c.kind, c.digest, human_size(c.size)));
    }
    if r.repository_records > 0 {
        t.push_str(&format!(
            "removed {} repository record(s) (blob membership, public status)\n",
            r.repository_records
        ));
    }
    if r.kept > 0 {
        t.push_str(&format!("kept {} still used by other cached images\n", r.kept));
    }
    t.push_str(&format!(
        "{}: freed {} ({} bytes)\n",
        r.reference,
        human_size(r.bytes_freed),
        r.bytes_freed
    ));
    t
}

//! `regcache cache stats`: totals, per registry, and the data directory's free disk.

use crate::cli::args::DataDirArg;
use std::io::Write as _;

use super::{CacheCliError, human_size, read};
use crate::catalog::{CacheStats, disk_space};

/// Prints the store's totals (as JSON with `json`).
///
/// # Errors
/// If the store cannot be read.
pub(super) fn run(data: &DataDirArg, json: bool) -> Result<(), CacheCliError> {
    let mut out = std::io::stdout().lock();
    let inv = read(data)?;
    // A bucket has no free disk to report; the local store's is the data dir's filesystem.
    let on_disk = data.store.store_url.as_deref().is_none_or(|u| u == "local");
    let stats = CacheStats::of(&inv, on_disk.then(|| disk_space(&data.data_dir)).flatten());
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&stats)?)?;
    } else {
        write!(out, "{}", render_stats(&stats))?;
    }
    Ok(())
}

fn render_stats(s: &CacheStats) -> String {
    let mut t = String::new();
    let line = |t: &mut String, k: &str, v: String| t.push_str(&format!("{k:<13}{v}\n"));
    line(&mut t, "cache", s.cache_dir.clone());
    line(
        &mut t,
        "total",
        format!(
            "{} ({} bytes) in {} content files",
            human_size(s.content.bytes),
            s.content.bytes,
            s.content.count
        ),
    );
    line(
        &mut t,
        "blobs",
        format!("{} ({})", s.blobs.count, human_size(s.blobs.bytes)),
    );
    line(
        &mut t,
        "manifests",
        format!(
            "{} ({}) in {} repository entries",
            s.manifests.count,
            human_size(s.manifests.bytes),
            s.manifest_entries
        ),
    );
    line(&mut t, "tags", format!("{} in {} repositories", s.tags, s.repositories));
    line(
        &mut t,
        "unreferenced",
        format!(
            "{} blobs ({}) no cached manifest references",
            s.unreferenced_blobs.count,
            human_size(s.unreferenced_blobs.bytes)
        ),
    );
    line(
        &mut t,
        "temporary",
        format!(
            "{} partial downloads ({})",
            s.temporary.count,
            human_size(s.temporary.bytes)
        ),
    );
    line(
        &mut t,
        "index",
        format!("{} entries ({})", s.index_entries, human_size(s.index_bytes)),
    );
    line(
        &mut t,
        "disk",
        match s.disk {
            Some(d) => format!(
                "{} available of {} ({} free)",
                human_size(d.available_bytes),
                human_size(d.total_bytes),
                human_size(d.free_bytes)
            ),
            None if s.cache_dir.starts_with("s3://") => "none to report: the store is a bucket".into(),
            None => "unknown".into(),
        },
    );
    line(&mut t, "hits/misses", s.hit_miss.to_string());
    if !s.registries.is_empty() {
        t.push_str("per registry:\n");
        let width = s.registries.iter().map(|r| r.registry.len()).max().unwrap_or(0);
        for r in &s.registries {
            t.push_str(&format!(
                "  {:width$}  {} repositories  {} tags  {} manifests  {} blobs  {}\n",
                r.registry,
                r.repositories,
                r.tags,
                r.manifests,
                r.blobs,
                human_size(r.bytes)
            ));
        }
    }
    t
}

//! `regcache cache stats | ls | rm | verify`: the store, inspected and managed from the command
//! line, while `serve` may be running on the same data directory (see
//! [`crate::catalog::inventory`] for why that is safe, and [`crate::cache::purge_notice`] for how a running
//! server learns about a purge).

use std::io::Write as _;
use std::path::Path;

use crate::catalog::inventory::{ImageFilter, ImageSummary, Inventory};
use crate::catalog::purge::{PurgeError, PurgeReport, purge};
use crate::catalog::stats::{CacheStats, disk_space};
use crate::catalog::verify::{VerifyReport, verify};
use crate::cli::args::CacheCommand;

/// Why a `cache` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheCliError {
    /// The operator's input is wrong (exit status 2, like a bad flag).
    #[error("{0}")]
    Usage(String),
    /// The store could not be read or changed, or a check failed (exit status 1).
    #[error("{0}")]
    Failed(String),
}

impl CacheCliError {
    /// Whether this is a usage error (exit status 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Usage(_))
    }
}

impl From<crate::cli::args::CommandError> for CacheCliError {
    fn from(e: crate::cli::args::CommandError) -> Self {
        if e.is_usage() {
            Self::Usage(e.to_string())
        } else {
            Self::Failed(e.to_string())
        }
    }
}

impl From<std::io::Error> for CacheCliError {
    fn from(e: std::io::Error) -> Self {
        Self::Failed(format!("standard output: {e}"))
    }
}

impl From<serde_json::Error> for CacheCliError {
    fn from(e: serde_json::Error) -> Self {
        Self::Failed(e.to_string())
    }
}

/// Runs one `cache` subcommand, printing to standard output.
///
/// # Errors
/// [`CacheCliError::Usage`] for bad references or filters; [`CacheCliError::Failed`] when the
/// store cannot be read or changed, nothing matched a `rm`, or `verify` left corruption.
pub fn run(cmd: CacheCommand) -> Result<(), CacheCliError> {
    match cmd {
        CacheCommand::Export(args) => return Ok(crate::images::layout::export_command(&args)?),
        CacheCommand::Import(args) => return Ok(crate::images::layout::import_command(&args)?),
        CacheCommand::Gc(args) => return gc(&args),
        _ => {}
    }
    let mut out = std::io::stdout().lock();
    match cmd {
        CacheCommand::Export(_) | CacheCommand::Import(_) | CacheCommand::Gc(_) => {}
        CacheCommand::Stats { data, json } => {
            let inv = read(&data.data_dir)?;
            let stats = CacheStats::of(&inv, disk_space(&data.data_dir));
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&stats)?)?;
            } else {
                write!(out, "{}", render_stats(&stats))?;
            }
        }
        CacheCommand::Ls {
            data,
            registry,
            repo,
            json,
        } => {
            let filter = ImageFilter::new(registry.as_deref(), repo.as_deref()).map_err(CacheCliError::Usage)?;
            let images = read(&data.data_dir)?.images(&filter);
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&images)?)?;
            } else {
                write!(out, "{}", render_images(&images, crate::store::local::now_ms()))?;
            }
        }
        CacheCommand::Rm { data, references, json } => {
            // Check every reference before removing anything.
            for r in &references {
                r.parse::<crate::catalog::reference::PurgeRef>()
                    .map_err(CacheCliError::Usage)?;
            }
            let root = cache_dir(&data.data_dir)?;
            let mut reports = Vec::new();
            let mut failures = Vec::new();
            for r in &references {
                match purge(&root, r) {
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
        }
        CacheCommand::Verify { data, repair, json } => {
            let root = cache_dir(&data.data_dir)?;
            let report = verify(&root, repair, |c| {
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
            })
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
        }
    }
    Ok(())
}

fn read(data_dir: &Path) -> Result<Inventory, CacheCliError> {
    Inventory::read(data_dir).map_err(|e| CacheCliError::Failed(e.to_string()))
}

/// `<data_dir>/cache`, once `data_dir` is known to exist (a typo must not look like an empty
/// cache).
fn cache_dir(data_dir: &Path) -> Result<std::path::PathBuf, CacheCliError> {
    if !data_dir.is_dir() {
        return Err(CacheCliError::Failed(
            crate::catalog::inventory::InventoryError::NoDataDir(data_dir.to_path_buf()).to_string(),
        ));
    }
    Ok(data_dir.join("cache"))
}

/// `1.5 MiB`-style sizes (binary units, one decimal).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `3m ago`-style ages.
fn ago(ms: u64, now_ms: u64) -> String {
    let s = now_ms.saturating_sub(ms) / 1000;
    match s {
        0..60 => "just now".into(),
        60..3600 => format!("{}m ago", s / 60),
        3600..86_400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// `cache ls` as text: aligned columns, one image per line.
fn render_images(images: &[ImageSummary], now_ms: u64) -> String {
    if images.is_empty() {
        return "no cached images\n".into();
    }
    let width = images.iter().map(|i| i.reference.len()).max().unwrap_or(0);
    let size_width = images.iter().map(|i| human_size(i.size).len()).max().unwrap_or(0);
    let mut text = String::new();
    for i in images {
        let mut notes = Vec::new();
        if !i.cached {
            notes.push("manifest not cached".to_string());
        }
        if i.missing_blobs > 0 {
            notes.push(format!("{} blob(s) not cached", i.missing_blobs));
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!("  ({})", notes.join(", "))
        };
        text.push_str(&format!(
            "{:width$} → {}  {:>size_width$}  {} ({}){notes}\n",
            i.reference,
            i.digest,
            human_size(i.size),
            i.last_used,
            ago(i.last_used_ms, now_ms),
        ));
    }
    text
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

/// `regcache cache gc`: one eviction pass now, beside a server or not.
fn gc(args: &crate::cli::args::GcArgs) -> Result<(), CacheCliError> {
    let config = args
        .serve
        .source()
        .load()
        .map_err(|e| CacheCliError::Usage(e.to_string()))?
        .config;
    let store = crate::store::local::ContentStore::new(config.data_dir.join("cache"));
    // This process cannot see a running server's readers: recently used content is kept.
    let evictor = crate::cache::eviction::Evictor::with_guard(store, config.budget, args.keep_recent);
    let r = evictor.pass(true);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "store: {} files, {:.1} MiB before; evicted {} files ({:.1} MiB), kept {} recently used; \
         removed {} stale temporary files ({:.1} MiB); store now {:.1} MiB",
        r.files_before,
        mib(r.bytes_before),
        r.evicted_files,
        mib(r.evicted_bytes),
        r.kept_in_use,
        r.temp_files,
        mib(r.temp_bytes),
        mib(r.bytes_after)
    )?;
    let b = config.budget;
    if b.max_size.is_none() && b.min_free.is_none() && b.inactive.is_none() {
        writeln!(
            out,
            "no budget configured (--max-size, --min-free, cache.inactive): nothing is evicted"
        )?;
    }
    if r.evicted_files > 0 {
        // A running server forgets what it held in memory about removed content.
        let _ = crate::cache::purge_notice::announce(&config.data_dir.join("cache"), "cache gc");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_well() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(ago(1_000, 30_000), "just now");
        assert_eq!(ago(0, 3 * 60_000), "3m ago");
        assert_eq!(ago(0, 2 * 86_400_000), "2d ago");
        assert_eq!(ago(10, 0), "just now", "a clock step back is not a negative age");
    }

    #[test]
    fn images_render_one_aligned_line_each() {
        let image = |reference: &str, size: u64| ImageSummary {
            registry: "ghcr.io".into(),
            repository: "org/app".into(),
            tag: Some("1".into()),
            reference: reference.into(),
            digest: "sha256:aa".into(),
            media_type: String::new(),
            cached: true,
            size,
            manifests: 1,
            blobs: 2,
            missing_blobs: 0,
            last_used: "2025-01-01T00:00:00Z".into(),
            last_used_ms: 0,
        };
        let text = render_images(
            &[image("ghcr.io/org/app:1", 2048), image("ghcr.io/o/b:22", 10)],
            120_000,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].find('→'), lines[1].find('→'), "{text}");
        assert!(lines[0].contains("2.0 KiB") && lines[0].ends_with("(2m ago)"), "{text}");
        assert_eq!(render_images(&[], 0), "no cached images\n");
    }
}

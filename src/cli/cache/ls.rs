//! `regcache cache ls`: cached images, one per line (or the JSON of `GET /_regcache/cache`).

use crate::cli::args::DataDirArg;
use std::io::Write as _;

use super::{CacheCliError, ago, human_size, read};
use crate::catalog::{ImageFilter, ImageSummary};

/// Prints the images of `registry` whose repository matches `repo` (as JSON with `json`).
///
/// # Errors
/// A bad filter (usage), or a store that cannot be read.
pub(super) fn run(
    data: &DataDirArg,
    registry: Option<&str>,
    repo: Option<&str>,
    json: bool,
) -> Result<(), CacheCliError> {
    let mut out = std::io::stdout().lock();
    let filter = ImageFilter::new(registry, repo).map_err(CacheCliError::Usage)?;
    let images = read(data)?.images(&filter);
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&images)?)?;
    } else {
        write!(out, "{}", render_images(&images, crate::clock::now_ms()))?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ImageSummary;

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

//! `regcache warm`: loads the configuration as `serve` does, warms every image through a
//! [`Warmer`], shows progress, prints a line per image and a summary on standard output.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use futures_util::StreamExt as _;
use indicatif::HumanBytes;

use crate::cli::args::{CommandError, WarmArgs};
use crate::cli::progress::{self, Reporter};
use crate::config::{Config, ConfigError};
use crate::images::{IMAGE_JOBS, WarmError, WarmReport, Warmer};
use crate::registry::ImageRef;
use crate::registry::manifest::PlatformFilter;

/// `regcache warm`: loads the configuration as `serve` does, warms every image, prints a line
/// per image and a summary on standard output.
///
/// # Errors
/// [`CommandError::Usage`] for a bad configuration or reference; [`CommandError::Failed`] when
/// any image failed (after the summary).
pub fn run(args: &WarmArgs) -> Result<(), CommandError> {
    let config = args.serve.source().load()?.config;
    let mut refs = args.refs.clone();
    if let Some(file) = &args.from_file {
        refs.extend(refs_from_file(file)?);
    }
    let mut seen = HashSet::new();
    refs.retain(|r| seen.insert(r.to_string()));
    if refs.is_empty() {
        return Err(ConfigError::new(
            "command line",
            "REF",
            "no image given: name one or more, or use --from-file FILE",
        )
        .into());
    }
    progress::init_tracing();
    let platforms = PlatformFilter::from_args(&args.platforms);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CommandError::Failed(format!("cannot start the async runtime: {e}")))?;
    let mut out = std::io::stdout().lock();
    runtime.block_on(warm_all(&config, &refs, &platforms, &Reporter::new(), &mut out))
}

/// Warms `refs` ([`IMAGE_JOBS`] at a time) and writes one line per image and a summary to
/// `out`.
///
/// # Errors
/// [`CommandError::Failed`] when the upstream client cannot be built or any image failed.
async fn warm_all(
    config: &Config,
    refs: &[ImageRef],
    platforms: &PlatformFilter,
    reporter: &Reporter,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let warmer = Warmer::new(config).map_err(CommandError::Failed)?;
    for host in refs.iter().map(|r| &r.host).collect::<HashSet<_>>() {
        if !config.is_registry(host) {
            eprintln!(
                "regcache: note: {host} is not an intercepted registry: pulls through regcache tunnel it and \
                 do not use the cache (add --registry {})",
                host.authority(443)
            );
        }
    }
    let mut results: Vec<(usize, Result<WarmReport, WarmError>)> = futures_util::stream::iter(refs.iter().enumerate())
        .map(|(i, image)| {
            let warmer = &warmer;
            async move {
                let progress = reporter.image(&image.to_string());
                let result = warmer.warm(image, platforms, &progress).await;
                match &result {
                    Ok(r) if r.already_cached() => progress.finish("already cached"),
                    Ok(r) => progress.finish(&format!(
                        "pulled {} blobs, {}",
                        r.blobs_fetched,
                        HumanBytes(r.bytes_fetched)
                    )),
                    Err(e) => progress.fail(&format!("failed: {e}")),
                }
                (i, result)
            }
        })
        .buffer_unordered(IMAGE_JOBS)
        .collect()
        .await;
    results.sort_by_key(|(i, _)| *i);

    let (mut pulled, mut cached, mut failed) = (0, 0, 0);
    for (i, result) in &results {
        let image = &refs[*i];
        let line = match result {
            Ok(r) => {
                let platforms = if r.platforms.is_empty() {
                    String::new()
                } else {
                    format!(", {}", r.platforms.join(" "))
                };
                if r.already_cached() {
                    cached += 1;
                    format!(
                        "already cached  {image} {} ({} blobs{platforms})",
                        r.digest, r.blobs_total
                    )
                } else {
                    pulled += 1;
                    format!(
                        "pulled          {image} {} ({} of {} blobs, {}{platforms})",
                        r.digest,
                        r.blobs_fetched,
                        r.blobs_total,
                        HumanBytes(r.bytes_fetched)
                    )
                }
            }
            Err(e) => {
                failed += 1;
                format!("failed          {image}: {e}")
            }
        };
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "warm: {pulled} pulled, {cached} already cached, {failed} failed");
    let _ = out.flush();
    if failed > 0 {
        return Err(CommandError::Failed(format!(
            "warm: {failed} of {} images failed",
            refs.len()
        )));
    }
    Ok(())
}

/// References from a file: one per line; blank lines and `#` comments are skipped.
fn refs_from_file(path: &Path) -> Result<Vec<ImageRef>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path.display().to_string(), "--from-file", format!("cannot read: {e}")))?;
    let mut refs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let r =
            ImageRef::parse(line).map_err(|e| ConfigError::new(format!("{}:{}", path.display(), n + 1), "REF", e))?;
        refs.push(r);
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("images.txt");
        std::fs::write(&file, "# CI images\nalpine\n\n  ghcr.io/org/app:1.2   # pinned\n").unwrap();
        let refs: Vec<String> = refs_from_file(&file).unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(refs, vec!["docker.io/library/alpine:latest", "ghcr.io/org/app:1.2"]);

        std::fs::write(&file, "alpine\nNot/Valid\n").unwrap();
        let e = refs_from_file(&file).unwrap_err();
        assert_eq!(e.origin, format!("{}:2", file.display()));
        assert_eq!(e.key, "REF");
        assert!(refs_from_file(&dir.path().join("missing")).is_err());
    }
}

//! `regcache cache export REF… --to DIR`: cached images written to an OCI image layout.

use std::collections::HashSet;
use std::io::Write;

use indicatif::HumanBytes;

use crate::cache::Records;
use crate::cli::args::{CommandError, ExportArgs};
use crate::config::ConfigError;
use crate::images::{Exporter, LayoutError};
use crate::registry::ImageRef;

/// A runtime for copying: two threads, so that reading the store and writing the layout
/// overlap.
pub(super) fn layout_runtime() -> Result<tokio::runtime::Runtime, CommandError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CommandError::Failed(format!("cannot start the async runtime: {e}")))
}

/// `regcache cache export REF... --to DIR`: one line per image and a summary on standard
/// output.
///
/// # Errors
/// [`CommandError::Usage`] for a bad configuration or a non-empty `--to`;
/// [`CommandError::Failed`] when any image could not be exported (the others are in the layout).
pub(super) fn run(args: &ExportArgs) -> Result<(), CommandError> {
    let config = args.serve.source().load()?.config;
    crate::cli::progress::init_tracing();
    let store = Records::new(
        crate::cache::open_store(
            &config.store,
            &config.data_dir,
            std::sync::Arc::new(crate::store::NoCount),
        )
        .map_err(|e| CommandError::Failed(e.to_string()))?,
    );
    let mut exporter = Exporter::create(store, &args.to).map_err(|e| match e {
        LayoutError::Layout { reason, .. } => CommandError::Usage(ConfigError::new(
            "command line",
            "--to",
            format!("{}: {reason}", args.to.display()),
        )),
        other => CommandError::Failed(other.to_string()),
    })?;
    let mut out = std::io::stdout().lock();
    let mut failed = 0;
    let mut seen = HashSet::new();
    let refs: Vec<&ImageRef> = args.refs.iter().filter(|r| seen.insert(r.to_string())).collect();
    layout_runtime()?.block_on(async {
        for image in &refs {
            match exporter.add(image).await {
                Ok(e) => {
                    let mut notes = Vec::new();
                    if !e.platforms.is_empty() {
                        notes.push(e.platforms.join(" "));
                    }
                    if !e.left_out.is_empty() {
                        notes.push(format!("left out, not cached: {}", e.left_out.join(", ")));
                    }
                    let notes = notes.iter().map(|n| format!("; {n}")).collect::<String>();
                    let _ = writeln!(
                        out,
                        "exported  {image} {} ({} blobs, {}{notes})",
                        e.digest,
                        e.blobs,
                        HumanBytes(e.bytes)
                    );
                }
                Err(e) => {
                    failed += 1;
                    let _ = writeln!(out, "failed    {image}: {e}");
                }
            }
        }
    });
    let dir = exporter.finish().map_err(|e| CommandError::Failed(e.to_string()))?;
    let _ = writeln!(
        out,
        "export: {} exported, {failed} failed, to {}",
        refs.len() - failed,
        dir.display()
    );
    let _ = out.flush();
    if failed > 0 {
        return Err(CommandError::Failed(format!(
            "export: {failed} of {} images failed",
            refs.len()
        )));
    }
    Ok(())
}

//! `regcache cache import DIR`: an OCI image layout loaded into the cache, all or nothing.

use std::io::Write;

use indicatif::HumanBytes;

use super::export::layout_runtime;
use crate::cache::Records;
use crate::cli::args::{CommandError, ImportArgs};
use crate::images::{INDEX_FILE, Importer, LayoutError};

/// `regcache cache import DIR`: verifies the whole layout, then records it; one line per image
/// and a summary on standard output.
///
/// # Errors
/// [`CommandError::Usage`] for a bad configuration; [`CommandError::Failed`] when the layout
/// is unusable or anything in it is missing or corrupt (then nothing is recorded).
pub(super) fn run(args: &ImportArgs) -> Result<(), CommandError> {
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
    let reporter = crate::cli::progress::Reporter::new();
    let mut importer = Importer::new(store, &args.dir);
    let refused = |e: LayoutError| CommandError::Failed(format!("import refused, nothing recorded: {e}"));
    let entries = importer.entries().map_err(refused)?;
    if entries.is_empty() {
        return Err(refused(LayoutError::Layout {
            path: args.dir.join(INDEX_FILE),
            reason: "lists no image".into(),
        }));
    }
    let mut out = std::io::stdout().lock();
    layout_runtime()?.block_on(async {
        let mut staged = Vec::new();
        for (image, desc, public) in entries {
            let name = image.to_string();
            let progress = reporter.image(&name);
            match importer.stage(image, &desc, public || args.public, &progress).await {
                Ok(s) => {
                    progress.finish("verified");
                    staged.push(s);
                }
                Err(e) => {
                    progress.fail(&format!("refused: {e}"));
                    importer.roll_back().await;
                    return Err(refused(LayoutError::NotCached(format!("{name}: {e}"))));
                }
            }
        }
        if let Err(e) = importer.commit(&staged).await {
            return Err(CommandError::Failed(format!("import failed while recording: {e}")));
        }
        let (mut blobs, mut copied) = (0, 0);
        for s in &staged {
            blobs += s.blobs.len();
            copied += s.copied;
            let platforms = if s.platforms.is_empty() {
                String::new()
            } else {
                format!("; {}", s.platforms.join(" "))
            };
            let _ = writeln!(
                out,
                "imported  {} {} ({} blobs, {} copied{platforms})",
                s.image,
                s.top.digest,
                s.blobs.len(),
                HumanBytes(s.copied)
            );
        }
        let _ = writeln!(
            out,
            "import: {} images, {blobs} blobs, {} copied into the cache",
            staged.len(),
            HumanBytes(copied)
        );
        let _ = out.flush();
        Ok(())
    })
}

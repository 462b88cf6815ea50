//! Progress of one-shot commands (`regcache warm`): a bar per image on a terminal, plain lines
//! otherwise (CI logs, pipes), both on standard error so that standard output holds only the
//! summary.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where progress goes: bars on a terminal, lines elsewhere.
pub struct Reporter {
    bars: Option<MultiProgress>,
}

impl Reporter {
    /// Bars when standard error is a terminal, plain lines otherwise.
    pub fn new() -> Self {
        Self::with_bars(std::io::stderr().is_terminal())
    }

    /// Bars or plain lines, as asked.
    pub fn with_bars(bars: bool) -> Self {
        Self {
            bars: bars.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }

    /// Progress of one image, named `name`.
    pub fn image(&self, name: &str) -> ImageProgress {
        let bar = self.bars.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new(0));
            let style = ProgressStyle::with_template(
                "{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        ImageProgress {
            bar,
            name: name.to_string(),
        }
    }
}

impl Default for Reporter {
    fn default() -> Self {
        Self::new()
    }
}

/// Progress of one image.
pub struct ImageProgress {
    bar: Option<ProgressBar>,
    name: String,
}

impl ImageProgress {
    /// What is happening now ("resolving", "fetching 3 blobs").
    pub fn stage(&self, what: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(what.to_string()),
            None => eprintln!("{}: {what}", self.name),
        }
    }

    /// More bytes to transfer.
    pub fn add_total(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc_length(bytes);
        }
    }

    /// Bytes transferred.
    pub fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    /// A blob is complete (a line in plain mode; the bar shows it already).
    pub fn blob_done(&self, digest: &str, bytes: u64) {
        if self.bar.is_none() {
            eprintln!("{}: blob {digest} ({})", self.name, HumanBytes(bytes));
        }
    }

    /// The image is done: `outcome` is the last word.
    pub fn finish(&self, outcome: &str) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(outcome.to_string()),
            None => eprintln!("{}: {outcome}", self.name),
        }
    }

    /// The image failed: the bar stays where it stopped, with `why`.
    pub fn fail(&self, why: &str) {
        match &self.bar {
            Some(bar) => bar.abandon_with_message(why.to_string()),
            None => eprintln!("{}: {why}", self.name),
        }
    }
}

impl crate::images::Progress for ImageProgress {
    fn stage(&self, what: &str) {
        ImageProgress::stage(self, what);
    }

    fn add_total(&self, bytes: u64) {
        ImageProgress::add_total(self, bytes);
    }

    fn advance(&self, bytes: u64) {
        ImageProgress::advance(self, bytes);
    }

    fn blob_done(&self, digest: &str, bytes: u64) {
        ImageProgress::blob_done(self, digest, bytes);
    }
}

/// Log lines of one-shot commands: warnings and errors on standard error (`RUST_LOG` to see
/// more), so that they do not drown the progress.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

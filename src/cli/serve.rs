//! `regcache serve`: load the configuration, load or generate the CA, build the [`App`], run
//! it until SIGTERM or Ctrl-C, then drain; SIGHUP reloads the configuration meanwhile.

use std::io::Write as _;
use std::sync::Arc;

use anyhow::Context as _;

use crate::app::{App, Reloader};
use crate::ca::{CaError, CertificateAuthority, KeyPassphrase};
use crate::cli::args::ServeArgs;
use crate::config::LogFormat;
use crate::telemetry::{LogBuffer, LogBufferGuard, LogLine};

/// Runs the proxy until a shutdown signal, then drains.
///
/// # Errors
/// A configuration, CA or start-up problem, as one line.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let source = args.source();
    let loaded = source.load()?;
    let config = loaded.config;
    let _log_flush = init_tracing(config.log_format);
    match &loaded.file {
        Some(f) => tracing::info!(file = %f.display(), "configuration read"),
        None => tracing::debug!("no config file; flags, environment and defaults"),
    }
    for line in &loaded.env_mappings {
        tracing::info!(mapping = %line, "rpardini/docker-registry-proxy variable understood");
    }
    let passphrase = KeyPassphrase::resolve(args.ca_key_passphrase_file.as_deref()).map_err(CaError::from)?;
    let (ca, created) = CertificateAuthority::load_or_generate(&config.ca_dir, passphrase.as_ref())?;
    let ca = Arc::new(ca);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let tls = config.listener_tls.is_some();
        let app = App::build(config, ca.clone(), Some(source)).await?;
        let addr = app.local_addr();
        tokio::spawn(reload_on_sighup(app.reloader()));
        print_start_banner(&ca, created, addr, tls, app.mirror_addr());
        app.run(shutdown_signal()).await;
        tracing::info!("shutting down");
        Ok(())
    })
}

/// The lines a user needs to point a client at regcache; the last one is what scripts wait for
/// (`regcache listening on ADDR`, or the mirror's line when there is no proxy listener).
fn print_start_banner(
    ca: &CertificateAuthority,
    created: bool,
    addr: Option<std::net::SocketAddr>,
    tls: bool,
    mirror: Option<std::net::SocketAddr>,
) {
    let summary = ca.summary();
    let mut out = std::io::stdout().lock();
    if let Some(m) = mirror
        && addr.is_some()
    {
        let _ = writeln!(out, "regcache mirror listening on {m} (registry API at /v2/)");
    }
    let _ = writeln!(
        out,
        "regcache {}\nCA {} ({}): {}\n  SHA-256 fingerprint {}",
        env!("CARGO_PKG_VERSION"),
        ca.cert_path().display(),
        if created { "generated" } else { "loaded" },
        summary.subject,
        summary.fingerprint,
    );
    match (addr, mirror) {
        (Some(addr), _) => {
            let host = if addr.ip().is_unspecified() {
                crate::os::hostname()
            } else {
                addr.ip().to_string()
            };
            let scheme = if tls { "https" } else { "http" };
            let proxy = format!("{scheme}://{}:{}", host, addr.port());
            let _ = writeln!(
                out,
                "Use it:\n  export HTTPS_PROXY={proxy}\n  curl -fsS {proxy}/ca.crt -o regcache-ca.crt   # then trust it (see README)\nregcache listening on {addr}"
            );
        }
        (None, Some(m)) => {
            let _ = writeln!(
                out,
                "No proxy listener: point clients' registry mirrors at it (see README \"Mirror mode\")\nregcache mirror listening on {m} (registry API at /v2/)"
            );
        }
        (None, None) => {}
    }
    let _ = out.flush();
}

/// Logs go to stderr through [`LogBuffer`]: a request appends its line in memory and a flusher
/// thread writes them out in batches (a `write` per line was a third of a cached HEAD's CPU; a
/// thread wake-up per line, most of what was left). The access line has its own cheap
/// formatter with the default format's bytes ([`LogLine`]); the guard flushes at exit.
fn init_tracing(format: LogFormat) -> LogBufferGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = LogBuffer::new(std::io::stderr());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Text if ansi => fmt.with_ansi(true).init(),
        LogFormat::Text => fmt.with_ansi(false).event_format(LogLine::default()).init(),
        LogFormat::Json => fmt.json().flatten_event(true).init(),
    }
    guard
}

/// SIGHUP re-reads the configuration; an invalid one is refused and the running one stays.
async fn reload_on_sighup(reloader: Reloader) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; reload with POST /_regcache/reload");
            return;
        }
    };
    while hup.recv().await.is_some() {
        match reloader.reload().await {
            Ok(changes) => tracing::info!(changes = ?changes, via = "SIGHUP", "configuration reloaded"),
            Err(e) => {
                tracing::error!(error = %e, via = "SIGHUP", "configuration reload refused; keeping the running one")
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops regcache");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

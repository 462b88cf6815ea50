//! The `regcache` binary: parse the command line, then serve, manage the CA or the cache.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use regcache::app::App;
use regcache::ca::authority::{self as ca, CaError, CertificateAuthority};
use regcache::ca::key::KeyPassphrase;
use regcache::cli::args::{CaCommand, CaDirArg, Cli, Command, CommandError, ConfigCommand, ServeArgs};
use regcache::cli::cache::CacheCliError;
use regcache::config::file::{self as config_file, ConfigError};
use regcache::config::settings::LogFormat;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Ca(cmd) => ca_command(cmd),
        Command::Config(ConfigCommand::Check(args)) => config_check(&args),
        Command::Warm(args) => regcache::images::warm::command(&args).map_err(Into::into),
        Command::Cache(cmd) => regcache::cli::cache::run(cmd).map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("regcache: error: {}", one_line(&e));
            // A configuration error, or a missing or wrong CA key passphrase, is the operator's
            // input: a usage error, like a bad flag (clap exits 2 too).
            if e.downcast_ref::<ConfigError>().is_some()
                || e.downcast_ref::<CaError>().is_some_and(CaError::is_passphrase_problem)
                || e.downcast_ref::<CommandError>().is_some_and(CommandError::is_usage)
                || e.downcast_ref::<CacheCliError>().is_some_and(CacheCliError::is_usage)
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes on one line, without repeating a cause the message already quotes.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg.replace('\n', " ")
}

/// `regcache config check`: the effective configuration, or the first error (exit 2).
fn config_check(args: &ServeArgs) -> anyhow::Result<()> {
    let loaded = args.source().load()?;
    let mut out = std::io::stdout().lock();
    match &loaded.file {
        Some(f) => writeln!(
            out,
            "# from {} (and flags, REGCACHE_* variables, defaults)",
            f.display()
        )?,
        None => writeln!(out, "# no config file (flags, REGCACHE_* variables and defaults only)")?,
    }
    for line in &loaded.env_mappings {
        writeln!(out, "# rpardini variable: {line}")?;
    }
    write!(out, "{}", config_file::render(&loaded.config))?;
    writeln!(out, "# configuration OK")?;
    Ok(())
}

/// `regcache cache …`: the work is in the library modules.
/// Logs go to stderr through a background writer thread: one line per request must not cost a
/// blocking `write` on the request path (it was a third of a cached HEAD's CPU). The queue is
/// short (memory stays bounded under a log storm) and the writer blocks rather than drops when
/// it is full, so no line is lost; the guard flushes the queue at exit.
fn init_tracing(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(4096)
        .finish(std::io::stderr());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Text => fmt.with_ansi(ansi).init(),
        LogFormat::Json => fmt.json().flatten_event(true).init(),
    }
    guard
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
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
        print_start_banner(&ca, created, addr, tls);
        app.run(shutdown_signal()).await;
        tracing::info!("shutting down");
        Ok(())
    })
}

/// The lines a user needs to point a client at regcache; the last one is what scripts wait for.
fn print_start_banner(ca: &CertificateAuthority, created: bool, addr: std::net::SocketAddr, tls: bool) {
    let summary = ca.summary();
    let host = if addr.ip().is_unspecified() {
        machine_host()
    } else {
        addr.ip().to_string()
    };
    let scheme = if tls { "https" } else { "http" };
    let proxy = format!("{scheme}://{}:{}", host, addr.port());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "regcache {}\nCA {} ({}): {}\n  SHA-256 fingerprint {}\nUse it:\n  export HTTPS_PROXY={proxy}\n  curl -fsS {proxy}/ca.crt -o regcache-ca.crt   # then trust it (see README)\nregcache listening on {addr}",
        env!("CARGO_PKG_VERSION"),
        ca.cert_path().display(),
        if created { "generated" } else { "loaded" },
        summary.subject,
        summary.fingerprint,
    );
    let _ = out.flush();
}

fn machine_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// SIGHUP re-reads the configuration; an invalid one is refused and the running one stays.
async fn reload_on_sighup(reloader: regcache::app::Reloader) {
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

/// The CA key's passphrase, from `--ca-key-passphrase-file` or `REGCACHE_CA_KEY_PASSPHRASE`.
fn key_passphrase(ca: &CaDirArg) -> Result<Option<KeyPassphrase>, CaError> {
    Ok(KeyPassphrase::resolve(ca.ca_key_passphrase_file.as_deref())?)
}

fn ca_command(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init {
            ca,
            force,
            name_constraints,
            permit,
        } => {
            let passphrase = key_passphrase(&ca)?;
            let mut permitted = Vec::new();
            if name_constraints {
                permitted = CertificateAuthority::default_permitted_domains();
                for d in permit {
                    let d = d
                        .trim()
                        .trim_start_matches("*.")
                        .trim_end_matches('.')
                        .to_ascii_lowercase();
                    regcache::config::settings::HostPort::parse(&d, 443)
                        .map_err(|e| anyhow::anyhow!("--permit: {e}"))?;
                    if !permitted.contains(&d) {
                        permitted.push(d);
                    }
                }
            }
            let authority =
                CertificateAuthority::generate_constrained(&ca.ca_dir, force, passphrase.as_ref(), &permitted)?;
            if !permitted.is_empty() {
                println!("name constraints: may sign only for {}", permitted.join(", "));
            }
            let s = authority.summary();
            println!(
                "generated {} and {}",
                authority.cert_path().display(),
                ca.ca_dir.join(ca::KEY_FILE).display()
            );
            println!(
                "subject:     {}\nsha256:      {}\nnot after:   {}",
                s.subject, s.fingerprint, s.not_after
            );
        }
        CaCommand::Show { ca } => {
            // Loading checks the key too, so `show` also validates a brought-your-own CA.
            let passphrase = key_passphrase(&ca)?;
            let authority = CertificateAuthority::load(&ca.ca_dir, passphrase.as_ref())?;
            let s = authority.summary();
            println!(
                "certificate: {}\nsubject:     {}\nkey:         {}\nsha256:      {}\nnot before:  {}\nnot after:   {}",
                authority.cert_path().display(),
                s.subject,
                s.key_algorithm,
                s.fingerprint,
                s.not_before,
                s.not_after
            );
        }
        CaCommand::Export { ca, file } => {
            ca::summarize_file(&ca.ca_dir)?;
            let pem = std::fs::read(ca.ca_dir.join(ca::CERT_FILE))
                .with_context(|| format!("{}", ca.ca_dir.join(ca::CERT_FILE).display()))?;
            match file {
                Some(path) => std::fs::write(&path, &pem).with_context(|| format!("{}", path.display()))?,
                None => std::io::stdout().write_all(&pem).context("standard output")?,
            }
        }
    }
    Ok(())
}

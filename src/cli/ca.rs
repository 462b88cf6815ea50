//! `regcache ca init | show | export`.

use std::io::Write as _;

use anyhow::Context as _;

use crate::ca::{self, CaError, CertificateAuthority, KeyPassphrase};
use crate::cli::args::{CaCommand, CaDirArg};

/// The CA key's passphrase, from `--ca-key-passphrase-file` or `REGCACHE_CA_KEY_PASSPHRASE`.
fn key_passphrase(ca: &CaDirArg) -> Result<Option<KeyPassphrase>, CaError> {
    Ok(KeyPassphrase::resolve(ca.ca_key_passphrase_file.as_deref())?)
}

/// Runs one `ca` subcommand.
///
/// # Errors
/// A CA that cannot be read or written, a wrong passphrase, a bad `--permit`.
pub fn run(cmd: CaCommand) -> anyhow::Result<()> {
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
                    crate::config::HostPort::parse(&d, 443).map_err(|e| anyhow::anyhow!("--permit: {e}"))?;
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

//! The certificate authority regcache signs intercepted hosts' leaves with: loaded or
//! generated (`ca.crt`, and `ca.key` at mode 0600, optionally passphrase-protected and name
//! constrained), described for people (subject, fingerprint, validity), and leaves signed.
//!
//! Owns: [`CertificateAuthority`], the CA files, key formats and passphrases.
//!
//! Must not: open sockets, or cache leaves (the proxy's leaf cache does).
//!
//! May import: `config`, `os`.

mod authority;
mod key;

#[cfg(test)]
pub use authority::Leaf;
pub use authority::{CERT_FILE, CaError, CertificateAuthority, KEY_FILE, summarize_file};
pub use key::KeyPassphrase;

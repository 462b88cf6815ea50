//! Passphrase-protected CA keys, as OpenSSL writes them (encrypted PKCS#8 and the legacy
//! `Proc-Type: 4,ENCRYPTED` PEM; RSA and EC): `serve` starts with the passphrase from
//! `--ca-key-passphrase-file` or `REGCACHE_CA_KEY_PASSPHRASE`, and an intercepted CONNECT gets a
//! leaf signed by that CA. A missing or wrong passphrase exits 2 with one line naming the file.

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use support::Regcache;
use support::regcache::{run_cli, run_cli_with_env};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Spaces, a colon and shell characters: the file's first line is taken verbatim.
const PASSPHRASE: &str = "c0rrect horse: $battery!";

/// Runs `openssl ARGS` in `dir`, panicking with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (is it installed?)");
    assert!(
        out.status.success(),
        "openssl {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How a test key is made.
#[derive(Clone, Copy, Debug)]
enum KeyKind {
    /// `openssl genrsa -aes256` (OpenSSL 3: encrypted PKCS#8, PBKDF2 + AES-256-CBC).
    RsaPkcs8,
    /// `openssl genrsa -des3 -traditional` (legacy PEM, DES-EDE3-CBC).
    RsaLegacyDes3,
    /// `openssl pkcs8 -topk8 -v2 aes-256-cbc` of a P-256 key.
    EcPkcs8,
    /// `openssl pkcs8 -topk8 -v2 des3` of a P-256 key (PBES2 with DES-EDE3-CBC).
    EcPkcs8Des3,
    /// `openssl ec -aes256` (legacy PEM `EC PRIVATE KEY`, AES-256-CBC).
    EcLegacyAes256,
    /// `openssl ec -aes128` of a P-384 key (legacy PEM, AES-128-CBC).
    EcP384LegacyAes128,
}

/// A CA directory holding `ca.crt` and an encrypted `ca.key` of `kind` (mode 0600), plus
/// a passphrase file outside it. Returns (temp dir, CA dir, passphrase file).
fn openssl_ca(kind: KeyKind) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    std::fs::create_dir_all(&ca).unwrap();
    let pass_file = tmp.path().join("passphrase");
    std::fs::write(&pass_file, format!("{PASSPHRASE}\n")).unwrap();
    let passin = format!("file:{}", pass_file.display());
    let p = passin.as_str();
    match kind {
        KeyKind::RsaPkcs8 => openssl(&ca, &["genrsa", "-aes256", "-passout", p, "-out", "ca.key", "2048"]),
        KeyKind::RsaLegacyDes3 => openssl(
            &ca,
            &[
                "genrsa",
                "-des3",
                "-traditional",
                "-passout",
                p,
                "-out",
                "ca.key",
                "2048",
            ],
        ),
        KeyKind::EcPkcs8 | KeyKind::EcPkcs8Des3 | KeyKind::EcLegacyAes256 | KeyKind::EcP384LegacyAes128 => {
            let curve = if matches!(kind, KeyKind::EcP384LegacyAes128) {
                "secp384r1"
            } else {
                "prime256v1"
            };
            openssl(
                &ca,
                &["ecparam", "-name", curve, "-genkey", "-noout", "-out", "plain.key"],
            );
            match kind {
                KeyKind::EcPkcs8 => openssl(
                    &ca,
                    &[
                        "pkcs8",
                        "-topk8",
                        "-v2",
                        "aes-256-cbc",
                        "-in",
                        "plain.key",
                        "-passout",
                        p,
                        "-out",
                        "ca.key",
                    ],
                ),
                KeyKind::EcPkcs8Des3 => openssl(
                    &ca,
                    &[
                        "pkcs8",
                        "-topk8",
                        "-v2",
                        "des3",
                        "-in",
                        "plain.key",
                        "-passout",
                        p,
                        "-out",
                        "ca.key",
                    ],
                ),
                KeyKind::EcLegacyAes256 => openssl(
                    &ca,
                    &["ec", "-in", "plain.key", "-aes256", "-passout", p, "-out", "ca.key"],
                ),
                _ => openssl(
                    &ca,
                    &["ec", "-in", "plain.key", "-aes128", "-passout", p, "-out", "ca.key"],
                ),
            }
            std::fs::remove_file(ca.join("plain.key")).unwrap();
        }
    }
    openssl(
        &ca,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-passin",
            p,
            "-subj",
            "/CN=regcache passphrase test CA/O=rpardini-style",
            "-days",
            "30",
            "-out",
            "ca.crt",
        ],
    );
    let key = std::fs::read_to_string(ca.join("ca.key")).unwrap();
    match kind {
        KeyKind::RsaPkcs8 | KeyKind::EcPkcs8 | KeyKind::EcPkcs8Des3 => {
            assert!(
                key.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
                "{kind:?}: {key}"
            )
        }
        _ => assert!(key.contains("Proc-Type: 4,ENCRYPTED"), "{kind:?}: {key}"),
    }
    std::fs::set_permissions(ca.join("ca.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    (tmp, ca, pass_file)
}

/// CONNECTs through regcache to `ghcr.io:443` and completes a TLS handshake trusting only
/// `ca_pem`; returns the leaf certificate (DER).
async fn intercepted_leaf(proxy: SocketAddr, ca_pem: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"CONNECT ghcr.io:443 HTTP/1.1\r\nHost: ghcr.io:443\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    let config = support::rustls_client_config(&[ca_pem]);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config.as_ref().clone()));
    let name = rustls::pki_types::ServerName::try_from("ghcr.io").unwrap();
    let tls = connector
        .connect(name, s)
        .await
        .expect("TLS handshake with a leaf signed by the passphrase-protected CA");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The leaf names `ghcr.io` and its issuer is the CA's subject.
fn assert_signed_by(leaf_der: &[u8], ca_pem: &str) {
    use rustls::pki_types::pem::PemObject as _;
    let ca_der = rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der).unwrap();
    assert_eq!(leaf.issuer().to_string(), ca.subject().to_string());
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(format!("{:?}", san.value).contains("ghcr.io"), "{:?}", san.value);
}

/// A serve run that exits at once (the CA fails to load); `extra` are more `serve` args.
fn serve_once(ca_dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Output {
    let data = tempfile::tempdir().unwrap();
    let mut args = vec![
        "serve".to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        data.path().display().to_string(),
        "--ca-dir".into(),
        ca_dir.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    run_cli_with_env(&args, envs)
}

/// Exit status 2 and exactly one line on stderr, which is returned.
fn usage_error(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one readable line expected: {err}");
    assert!(!err.contains(PASSPHRASE), "the passphrase must never be printed: {err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_loads_openssl_encrypted_keys_and_signs_leaves_with_them() {
    support::install_crypto_provider();
    for kind in [
        KeyKind::RsaPkcs8,
        KeyKind::RsaLegacyDes3,
        KeyKind::EcPkcs8,
        KeyKind::EcPkcs8Des3,
        KeyKind::EcLegacyAes256,
        KeyKind::EcP384LegacyAes128,
    ] {
        let (_tmp, ca, pass_file) = openssl_ca(kind);
        let ca_pem = std::fs::read_to_string(ca.join("ca.crt")).unwrap();
        let proxy = Regcache::builder()
            .ca_dir(&ca)
            .arg("--ca-key-passphrase-file")
            .arg(&pass_file)
            .start();
        let logs = proxy.logs();
        assert!(logs.contains("(loaded)"), "{kind:?}: {logs}");
        assert!(logs.contains("CN=regcache passphrase test CA"), "{kind:?}: {logs}");
        let leaf = intercepted_leaf(proxy.addr(), &ca_pem).await;
        assert_signed_by(&leaf, &ca_pem);
        assert!(!proxy.logs().contains(PASSPHRASE), "{kind:?}: passphrase logged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passphrase_from_the_environment() {
    support::install_crypto_provider();
    let (_tmp, ca, _pass_file) = openssl_ca(KeyKind::EcLegacyAes256);
    let ca_pem = std::fs::read_to_string(ca.join("ca.crt")).unwrap();
    let proxy = Regcache::builder()
        .ca_dir(&ca)
        .env("REGCACHE_CA_KEY_PASSPHRASE", PASSPHRASE)
        .start();
    let leaf = intercepted_leaf(proxy.addr(), &ca_pem).await;
    assert_signed_by(&leaf, &ca_pem);
    assert!(!proxy.logs().contains(PASSPHRASE));
}

#[test]
fn missing_or_wrong_passphrase_exits_2_naming_the_file() {
    let (tmp, ca, pass_file) = openssl_ca(KeyKind::RsaPkcs8);
    let key = ca.join("ca.key").display().to_string();

    // No passphrase at all.
    let err = usage_error(&serve_once(&ca, &[], &[]));
    assert!(err.contains(&key) && err.contains("encrypted"), "{err}");
    assert!(err.contains("--ca-key-passphrase-file"), "{err}");

    // Wrong passphrase, from a file (named) and from the environment (named).
    let wrong = tmp.path().join("wrong");
    std::fs::write(&wrong, "not it\n").unwrap();
    let err = usage_error(&serve_once(
        &ca,
        &["--ca-key-passphrase-file", wrong.to_str().unwrap()],
        &[],
    ));
    assert!(err.contains(&key) && err.contains("wrong passphrase"), "{err}");
    assert!(err.contains(wrong.to_str().unwrap()), "{err}");
    assert_eq!(err.matches("wrong passphrase").count(), 1, "said once: {err}");
    let err = usage_error(&serve_once(&ca, &[], &[("REGCACHE_CA_KEY_PASSPHRASE", "not it")]));
    assert!(
        err.contains(&key) && err.contains("wrong passphrase") && err.contains("REGCACHE_CA_KEY_PASSPHRASE"),
        "{err}"
    );

    // Legacy PEM: a wrong passphrase is reported the same way.
    let (_tmp2, legacy_ca, _) = openssl_ca(KeyKind::RsaLegacyDes3);
    let err = usage_error(&serve_once(
        &legacy_ca,
        &["--ca-key-passphrase-file", wrong.to_str().unwrap()],
        &[],
    ));
    assert!(err.contains("ca.key") && err.contains("wrong passphrase"), "{err}");

    // An unreadable or empty passphrase file is named.
    let missing = tmp.path().join("no-such-file");
    let err = usage_error(&serve_once(
        &ca,
        &["--ca-key-passphrase-file", missing.to_str().unwrap()],
        &[],
    ));
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    let empty = tmp.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let err = usage_error(&serve_once(
        &ca,
        &["--ca-key-passphrase-file", empty.to_str().unwrap()],
        &[],
    ));
    assert!(err.contains(empty.to_str().unwrap()) && err.contains("empty"), "{err}");

    // `ca show` needs the key too, and takes the same flag.
    let ca_s = ca.to_str().unwrap();
    usage_error(&run_cli(&["ca", "show", "--ca-dir", ca_s]));
    let out = run_cli(&[
        "ca",
        "show",
        "--ca-dir",
        ca_s,
        "--ca-key-passphrase-file",
        pass_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("RSA (2048 bits)"));
}

#[test]
fn ca_init_with_a_passphrase_writes_a_key_openssl_decrypts() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let pass_file = tmp.path().join("passphrase");
    std::fs::write(&pass_file, format!("{PASSPHRASE}\n")).unwrap();
    let ca_s = ca.to_str().unwrap();
    let out = run_cli(&[
        "ca",
        "init",
        "--ca-dir",
        ca_s,
        "--ca-key-passphrase-file",
        pass_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = std::fs::read_to_string(ca.join("ca.key")).unwrap();
    assert!(key.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"), "{key}");
    assert!(!key.contains("BEGIN PRIVATE KEY"));

    // OpenSSL reads it with the passphrase, and refuses it without.
    let passin = format!("file:{}", pass_file.display());
    openssl(&ca, &["pkey", "-in", "ca.key", "-passin", &passin, "-noout"]);
    let refused = Command::new("openssl")
        .args(["pkey", "-in", "ca.key", "-passin", "pass:wrong", "-noout"])
        .current_dir(&ca)
        .output()
        .unwrap();
    assert!(!refused.status.success());

    // regcache itself reads it back, the passphrase coming from the environment this time.
    let out = run_cli_with_env(
        &["ca", "show", "--ca-dir", ca_s],
        &[("REGCACHE_CA_KEY_PASSPHRASE", PASSPHRASE)],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ECDSA"));
}

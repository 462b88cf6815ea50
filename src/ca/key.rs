//! The CA's private key file: plain PEM, passphrase-protected PEM, and the passphrase itself.
//!
//! Users of other MITM registry proxies (rpardini/docker-registry-proxy among them) bring CAs
//! whose key is encrypted with a passphrase. Two encodings exist in the wild and both are read:
//!
//! * encrypted PKCS#8 (`ENCRYPTED PRIVATE KEY`, PBES2: PBKDF2 or scrypt with AES-CBC or
//!   DES-EDE3-CBC), what OpenSSL 3 writes for `genrsa -aes256` and `pkcs8 -topk8 -v2 …`;
//! * OpenSSL's legacy PEM encryption (`Proc-Type: 4,ENCRYPTED` and `DEK-Info: <cipher>,<iv>` on
//!   an `RSA`/`EC PRIVATE KEY`), what `genrsa -des3 -traditional` and `ec -aes256` write. Its
//!   key derivation is `EVP_BytesToKey` (MD5, one round, salt = first 8 bytes of the IV).
//!
//! Crypto comes from RustCrypto crates (`pkcs8`/`pkcs5`, `des`, `aes`, `cbc`, `md-5`); this module
//! only parses headers and wires them. The passphrase is never logged or shown: it has no
//! `Display`, its `Debug` is redacted and its bytes are zeroed when dropped.

use std::fmt;
use std::path::{Path, PathBuf};

use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, KeyIvInit};
use md5::{Digest as _, Md5};
use pkcs8::der::Decode as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use zeroize::Zeroizing;

/// Environment variable holding the passphrase itself (when no passphrase file is given).
pub const PASSPHRASE_ENV: &str = "REGCACHE_CA_KEY_PASSPHRASE";

/// PBKDF2-HMAC-SHA256 rounds for keys regcache encrypts itself. OpenSSL 3 uses 2048; more makes
/// a stolen key file costlier to brute-force, and the key is decrypted once per start.
const PBKDF2_ROUNDS: u32 = 100_000;

/// The passphrase of an encrypted CA key, and where it came from (for error messages).
pub struct KeyPassphrase {
    secret: Zeroizing<Vec<u8>>,
    source: String,
}

impl fmt::Debug for KeyPassphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPassphrase")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Why the passphrase could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum PassphraseError {
    /// The passphrase file could not be read.
    #[error("{path}: cannot read the CA key passphrase: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause (said in the message, so not a `source` printed twice).
        cause: std::io::Error,
    },
    /// The passphrase file's first line is empty.
    #[error("{path}: the CA key passphrase file is empty (its first line is the passphrase)")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

impl KeyPassphrase {
    /// The passphrase from `file` (its first line, without the line ending, as OpenSSL's
    /// `-passin file:` reads it), else from `REGCACHE_CA_KEY_PASSPHRASE` if set and not empty,
    /// else none. A file given on the command line wins over the environment.
    ///
    /// # Errors
    /// If `file` is given but unreadable or empty.
    pub fn resolve(file: Option<&Path>) -> Result<Option<Self>, PassphraseError> {
        if let Some(path) = file {
            return Self::from_file(path).map(Some);
        }
        Ok(std::env::var_os(PASSPHRASE_ENV)
            .filter(|v| !v.is_empty())
            .map(|v| Self::new(std::os::unix::ffi::OsStringExt::into_vec(v), PASSPHRASE_ENV)))
    }

    /// The first line of `path`.
    ///
    /// # Errors
    /// If the file is unreadable or its first line is empty.
    pub fn from_file(path: &Path) -> Result<Self, PassphraseError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|cause| PassphraseError::Read {
            path: path.to_path_buf(),
            cause,
        })?);
        let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Err(PassphraseError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Self::new(line.to_vec(), &path.display().to_string()))
    }

    /// A passphrase from memory; `source` names where it came from in error messages.
    pub fn new(secret: Vec<u8>, source: &str) -> Self {
        Self {
            secret: Zeroizing::new(secret),
            source: source.to_string(),
        }
    }

    /// Where the passphrase came from: a file name or the environment variable's name.
    #[cfg(test)]
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// Why a key file could not be turned into a private key. The caller names the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not a PEM private key at all.
    #[error(
        "expected a PEM private key (PRIVATE KEY, RSA PRIVATE KEY, EC PRIVATE KEY, or ENCRYPTED PRIVATE KEY with a passphrase): {0}"
    )]
    Malformed(String),
    /// The key is encrypted and no passphrase was given.
    #[error("the private key is encrypted: give its passphrase with --ca-key-passphrase-file FILE or {PASSPHRASE_ENV}")]
    NeedsPassphrase,
    /// Decryption failed: the passphrase is wrong (or the ciphertext damaged).
    #[error("wrong passphrase (from {from}), or the encrypted key is damaged")]
    WrongPassphrase {
        /// Where the passphrase came from.
        from: String,
    },
    /// An encryption this module does not read.
    #[error("{0}; re-encrypt it with: openssl pkcs8 -topk8 -v2 aes-256-cbc -in KEY -out ca.key")]
    Unsupported(String),
}

impl KeyError {
    /// Whether the fix is the passphrase the operator gave (a usage error, exit status 2)
    /// rather than the key file.
    pub fn is_passphrase_problem(&self) -> bool {
        matches!(self, Self::NeedsPassphrase | Self::WrongPassphrase { .. })
    }
}

/// Decodes the private key in `pem`, decrypting it with `passphrase` when it is encrypted.
/// A passphrase given for a plain key is not needed and not an error.
///
/// # Errors
/// See [`KeyError`].
pub fn decode(pem_bytes: &[u8], passphrase: Option<&KeyPassphrase>) -> Result<PrivateKeyDer<'static>, KeyError> {
    let Some(encrypted) = find_encrypted(pem_bytes) else {
        // Plain keys keep the parser they always had (rustls's, lenient about text around blocks).
        return PrivateKeyDer::from_pem_slice(pem_bytes).map_err(|e| KeyError::Malformed(e.to_string()));
    };
    let passphrase = passphrase.ok_or(KeyError::NeedsPassphrase)?;
    let wrong = || KeyError::WrongPassphrase {
        from: passphrase.source.clone(),
    };
    match encrypted {
        Encrypted::Pkcs8(der) => {
            let info = pkcs8::EncryptedPrivateKeyInfo::from_der(&der)
                .map_err(|e| KeyError::Malformed(format!("ENCRYPTED PRIVATE KEY: {e}")))?;
            let doc = info.decrypt(passphrase.secret.as_slice()).map_err(|e| match e {
                pkcs8::Error::EncryptedPrivateKey(
                    pkcs8::pkcs5::Error::UnsupportedAlgorithm { .. }
                    | pkcs8::pkcs5::Error::NoPbes1CryptSupport
                    | pkcs8::pkcs5::Error::AlgorithmParametersInvalid { .. },
                ) => KeyError::Unsupported(format!("unsupported PKCS#8 encryption: {e}")),
                _ => wrong(),
            })?;
            let plain = Zeroizing::new(doc.as_bytes().to_vec());
            if !is_der_sequence(&plain) {
                return Err(wrong());
            }
            Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(plain.to_vec())))
        }
        Encrypted::Legacy { tag, dek_info, data } => {
            let plain = decrypt_legacy(&dek_info, &data, &passphrase.secret).map_err(|e| match e {
                LegacyError::Unsupported(what) => KeyError::Unsupported(what),
                LegacyError::Decrypt => wrong(),
            })?;
            if !is_der_sequence(&plain) {
                return Err(wrong());
            }
            let der = plain.to_vec();
            match tag.as_str() {
                "RSA PRIVATE KEY" => Ok(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der))),
                "EC PRIVATE KEY" => Ok(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der))),
                "PRIVATE KEY" => Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))),
                other => Err(KeyError::Malformed(format!("unexpected PEM block {other:?}"))),
            }
        }
    }
}

/// `pkcs8_der` (a plain PKCS#8 key) encrypted with `passphrase` as OpenSSL 3 does by default
/// (PBES2: PBKDF2-HMAC-SHA256, AES-256-CBC), PEM-encoded as `ENCRYPTED PRIVATE KEY`.
///
/// # Errors
/// If `pkcs8_der` is not PKCS#8 or encryption fails (a message for the caller to wrap).
pub fn encrypt_pkcs8_pem(pkcs8_der: &[u8], passphrase: &KeyPassphrase) -> Result<String, String> {
    let info = pkcs8::PrivateKeyInfo::from_der(pkcs8_der).map_err(|e| format!("not a PKCS#8 key: {e}"))?;
    let salt: [u8; 16] = rand::random();
    let iv: [u8; 16] = rand::random();
    let params = pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(PBKDF2_ROUNDS, &salt, &iv)
        .map_err(|e| format!("PBES2 parameters: {e}"))?;
    let doc = info
        .encrypt_with_params(params, passphrase.secret.as_slice())
        .map_err(|e| format!("encrypting the key: {e}"))?;
    let block = pem::Pem::new("ENCRYPTED PRIVATE KEY", doc.as_bytes());
    Ok(pem::encode_config(
        &block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    ))
}

/// An encrypted key found in a PEM file.
enum Encrypted {
    /// DER of an `EncryptedPrivateKeyInfo`.
    Pkcs8(Vec<u8>),
    /// A legacy-encrypted block: its tag, `DEK-Info` value and ciphertext.
    Legacy {
        tag: String,
        dek_info: String,
        data: Vec<u8>,
    },
}

/// The first encrypted private key block in `bytes`, if any. Files the `pem` crate cannot
/// parse are left to the plain parser (which then reports them).
fn find_encrypted(bytes: &[u8]) -> Option<Encrypted> {
    let blocks = pem::parse_many(bytes).ok()?;
    blocks.into_iter().find_map(|block| {
        let tag = block.tag().to_string();
        if tag == "ENCRYPTED PRIVATE KEY" {
            return Some(Encrypted::Pkcs8(block.into_contents()));
        }
        let headers = block.headers();
        let encrypted = headers
            .get("Proc-Type")
            .is_some_and(|v| v.replace(' ', "").eq_ignore_ascii_case("4,ENCRYPTED"));
        if tag.ends_with("PRIVATE KEY") && encrypted {
            let dek_info = headers.get("DEK-Info").unwrap_or_default().to_string();
            return Some(Encrypted::Legacy {
                tag,
                dek_info,
                data: block.into_contents(),
            });
        }
        None
    })
}

enum LegacyError {
    Unsupported(String),
    Decrypt,
}

/// Decrypts a legacy OpenSSL-encrypted PEM body given its `DEK-Info` (`CIPHER,IV-HEX`).
fn decrypt_legacy(dek_info: &str, data: &[u8], passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>, LegacyError> {
    let (cipher, iv_hex) = dek_info
        .split_once(',')
        .ok_or_else(|| LegacyError::Unsupported(format!("malformed DEK-Info header {dek_info:?}")))?;
    let iv = decode_hex(iv_hex.trim())
        .ok_or_else(|| LegacyError::Unsupported(format!("malformed IV in DEK-Info header {dek_info:?}")))?;
    let cipher = cipher.trim().to_ascii_uppercase();
    let (key_len, iv_len) = match cipher.as_str() {
        "DES-EDE3-CBC" => (24, 8),
        "AES-128-CBC" => (16, 16),
        "AES-192-CBC" => (24, 16),
        "AES-256-CBC" => (32, 16),
        other => {
            return Err(LegacyError::Unsupported(format!(
                "unsupported PEM encryption {other} (DES-EDE3-CBC and AES-128/192/256-CBC are read)"
            )));
        }
    };
    if iv.len() != iv_len {
        return Err(LegacyError::Unsupported(format!(
            "DEK-Info IV has {} bytes, {cipher} needs {iv_len}",
            iv.len()
        )));
    }
    let key = evp_bytes_to_key(passphrase, &iv[..8], key_len);
    let mut buf = Zeroizing::new(data.to_vec());
    let plain_len = match cipher.as_str() {
        "DES-EDE3-CBC" => cbc_decrypt::<des::TdesEde3>(&key, &iv, &mut buf),
        "AES-128-CBC" => cbc_decrypt::<aes::Aes128>(&key, &iv, &mut buf),
        "AES-192-CBC" => cbc_decrypt::<aes::Aes192>(&key, &iv, &mut buf),
        _ => cbc_decrypt::<aes::Aes256>(&key, &iv, &mut buf),
    }
    .ok_or(LegacyError::Decrypt)?;
    buf.truncate(plain_len);
    Ok(buf)
}

/// CBC-decrypts `buf` in place with PKCS#7 padding; the plaintext length, or `None` when the
/// padding is wrong (nearly always a wrong passphrase).
fn cbc_decrypt<C>(key: &[u8], iv: &[u8], buf: &mut [u8]) -> Option<usize>
where
    C: cbc::cipher::BlockDecrypt + cbc::cipher::BlockCipher + cbc::cipher::KeyInit,
{
    let decryptor = cbc::Decryptor::<C>::new_from_slices(key, iv).ok()?;
    decryptor.decrypt_padded_mut::<Pkcs7>(buf).ok().map(<[u8]>::len)
}

/// OpenSSL's `EVP_BytesToKey` with MD5 and one iteration: `D_i = MD5(D_{i-1} || pass || salt)`,
/// concatenated until `len` bytes (the IV is not derived: the header carries it).
fn evp_bytes_to_key(passphrase: &[u8], salt: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut key = Zeroizing::new(Vec::with_capacity(len + 16));
    let mut prev: Option<md5::digest::Output<Md5>> = None;
    while key.len() < len {
        let mut h = Md5::new();
        if let Some(p) = &prev {
            h.update(p);
        }
        h.update(passphrase);
        h.update(salt);
        let d = h.finalize();
        key.extend_from_slice(&d);
        prev = Some(d);
    }
    key.truncate(len);
    key
}

/// Whether `der` is exactly one DER SEQUENCE (what every key encoding is): a wrong passphrase
/// that happens to leave valid padding still fails here instead of as a confusing key error.
fn is_der_sequence(der: &[u8]) -> bool {
    der.first() == Some(&0x30) && pkcs8::der::asn1::AnyRef::from_der(der).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(s: &str) -> KeyPassphrase {
        KeyPassphrase::new(s.as_bytes().to_vec(), "test")
    }

    /// A P-256 PKCS#8 key from rcgen, for round trips.
    fn pkcs8_key() -> Vec<u8> {
        rcgen::KeyPair::generate().unwrap().serialize_der()
    }

    #[test]
    fn evp_bytes_to_key_matches_openssl() {
        // `openssl enc -aes-256-cbc -pass pass:secret -S 0102030405060708 -P -md md5` prints
        // this key (and the DES-EDE3 key is its first 24 bytes).
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
        let salt = [1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(
            hex(&evp_bytes_to_key(b"secret", &salt, 32)),
            "C9E5A1BD216DBE1317E230CEF48F38EE7F0E17AD64022144BCCEC4A1AA2879AB"
        );
        assert_eq!(
            hex(&evp_bytes_to_key(b"secret", &salt, 24)),
            "C9E5A1BD216DBE1317E230CEF48F38EE7F0E17AD64022144"
        );
    }

    #[test]
    fn pkcs8_round_trip_and_wrong_passphrase() {
        let der = pkcs8_key();
        let pem = encrypt_pkcs8_pem(&der, &pass("correct horse")).unwrap();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        let key = decode(pem.as_bytes(), Some(&pass("correct horse"))).unwrap();
        assert_eq!(key.secret_der(), der.as_slice());
        let err = decode(pem.as_bytes(), Some(&pass("battery staple"))).unwrap_err();
        assert!(matches!(err, KeyError::WrongPassphrase { .. }), "{err}");
        assert!(err.to_string().contains("from test"), "{err}");
        let err = decode(pem.as_bytes(), None).unwrap_err();
        assert!(matches!(err, KeyError::NeedsPassphrase), "{err}");
        assert!(err.is_passphrase_problem());
    }

    #[test]
    fn plain_keys_ignore_a_passphrase() {
        let der = pkcs8_key();
        let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der.clone()));
        let key = decode(pem.as_bytes(), Some(&pass("unused"))).unwrap();
        assert_eq!(key.secret_der(), der.as_slice());
    }

    #[test]
    fn legacy_pem_with_unknown_cipher_is_unsupported() {
        let mut block = pem::Pem::new("RSA PRIVATE KEY", vec![0u8; 32]);
        block.headers_mut().add("Proc-Type", "4,ENCRYPTED").unwrap();
        block.headers_mut().add("DEK-Info", "DES-CBC,0102030405060708").unwrap();
        let err = decode(pem::encode(&block).as_bytes(), Some(&pass("x"))).unwrap_err();
        assert!(matches!(err, KeyError::Unsupported(_)), "{err}");
        assert!(err.to_string().contains("DES-CBC"), "{err}");
    }

    #[test]
    fn passphrase_file_first_line_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pass");
        std::fs::write(&f, "s3cret\r\nignored\n").unwrap();
        let p = KeyPassphrase::from_file(&f).unwrap();
        assert_eq!(p.secret.as_slice(), b"s3cret");
        assert_eq!(p.source(), f.display().to_string());
        assert!(!format!("{p:?}").contains("s3cret"));
        std::fs::write(&f, "\nsecond line\n").unwrap();
        assert!(matches!(
            KeyPassphrase::from_file(&f),
            Err(PassphraseError::Empty { .. })
        ));
        let missing = dir.path().join("missing");
        let err = KeyPassphrase::from_file(&missing).unwrap_err().to_string();
        assert!(err.starts_with(&missing.display().to_string()), "{err}");
    }
}

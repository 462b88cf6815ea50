//! Who may use the proxy: source address allowlist and `Proxy-Authorization: Basic` checked
//! against an htpasswd file of bcrypt entries (`htpasswd -B`).
//!
//! bcrypt is slow on purpose (tens of milliseconds per check) and clients open a CONNECT per
//! parallel request, so a successful check is remembered for a few minutes by a digest of the
//! credentials (never the password itself); checks run on the blocking pool.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::HeaderValue;
use sha2::Digest as _;

/// How long a verified user:password pair is trusted without running bcrypt again.
const VERIFIED_FOR: Duration = Duration::from_secs(300);

/// Errors reading an htpasswd file.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not a bcrypt entry.
    #[error("{path}:{line}: {reason}")]
    Entry {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// The users of an htpasswd file.
pub struct Htpasswd {
    users: HashMap<String, String>,
    verified: moka::sync::Cache<[u8; 32], String>,
}

/// The result of checking a request's `Proxy-Authorization`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthCheck {
    /// Valid credentials of this user.
    User(String),
    /// No `Proxy-Authorization` (or not Basic).
    Missing,
    /// Wrong credentials; the user name if one was given (for the log).
    Refused(Option<String>),
}

impl Htpasswd {
    /// Reads `path`: `user:$2y$…` lines (also `$2a$`, `$2b$`); blank lines and `#` comments are
    /// skipped. Any other hash kind (MD5 `$apr1$`, `{SHA}`, crypt, plain) is refused, naming the
    /// line: they are weak, and a silently ignored user would be a surprise.
    ///
    /// # Errors
    /// If the file is unreadable or holds a line that is not a bcrypt entry.
    pub fn load(path: &Path) -> Result<Self, HtpasswdError> {
        let text = std::fs::read_to_string(path).map_err(|source| HtpasswdError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut users = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry_err = |reason: String| HtpasswdError::Entry {
                path: path.to_path_buf(),
                line: i + 1,
                reason,
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| entry_err("expected USER:HASH".into()))?;
            if user.is_empty() {
                return Err(entry_err("empty user name".into()));
            }
            let bcrypt = ["$2y$", "$2a$", "$2b$"].iter().any(|p| hash.starts_with(p));
            if !bcrypt || hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(entry_err(format!(
                    "user {user:?}: only bcrypt entries are supported (create them with `htpasswd -B`)"
                )));
            }
            users.insert(user.to_string(), hash.to_string());
        }
        Ok(Self {
            users,
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(VERIFIED_FOR)
                .build(),
        })
    }

    /// As [`Htpasswd::load`], warning when the file holds no user (then nobody gets in:
    /// `refusal` says what clients get).
    ///
    /// # Errors
    /// As [`Htpasswd::load`].
    pub fn load_warning_if_empty(path: &Path, refusal: &str) -> Result<Arc<Self>, HtpasswdError> {
        let h = Self::load(path)?;
        if h.is_empty() {
            tracing::warn!(file = %path.display(), "the htpasswd file has no user: every client gets {refusal}");
        }
        Ok(Arc::new(h))
    }

    /// How many users it holds.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether it holds no user (then nobody gets in).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks a `Proxy-Authorization` header value.
    pub async fn check(self: &Arc<Self>, header: Option<&HeaderValue>) -> AuthCheck {
        let Some((user, password)) = header.and_then(parse_basic) else {
            return AuthCheck::Missing;
        };
        let key: [u8; 32] = sha2::Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0u8])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        if self.verified.get(&key).is_some() {
            return AuthCheck::User(user);
        }
        let Some(hash) = self.users.get(&user).cloned() else {
            return AuthCheck::Refused(Some(user));
        };
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if ok {
            self.verified.insert(key, user.clone());
            AuthCheck::User(user)
        } else {
            AuthCheck::Refused(Some(user))
        }
    }
}

/// Who may use the proxy right now (rebuilt on a reload).
pub struct ClientGate {
    /// Required credentials, if any.
    pub htpasswd: Option<Arc<Htpasswd>>,
    /// Allowed source networks; empty = any.
    pub allow: Vec<ipnet::IpNet>,
}

impl ClientGate {
    /// Reads the htpasswd file named by `policy`, if any.
    ///
    /// # Errors
    /// As [`Htpasswd::load`].
    pub fn build(policy: &crate::config::AccessPolicy) -> Result<Self, HtpasswdError> {
        let htpasswd = match &policy.htpasswd {
            Some(path) => Some(Htpasswd::load_warning_if_empty(path, "407")?),
            None => None,
        };
        Ok(Self {
            htpasswd,
            allow: policy.allow_clients.clone(),
        })
    }
}

/// `Basic base64(user:password)` → (user, password).
fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let text = value.to_str().ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Whether `client` may use the proxy under `allow` (empty = anyone who reaches the port).
pub fn client_allowed(allow: &[ipnet::IpNet], client: SocketAddr) -> bool {
    let ip = crate::config::canonical_ip(client.ip());
    allow.is_empty() || allow.iter().any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn basic(user: &str, pass: &str) -> HeaderValue {
        let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        HeaderValue::from_str(&format!("Basic {enc}")).unwrap()
    }

    #[tokio::test]
    async fn bcrypt_users_are_checked() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let (_d, path) = file(&format!("# team\nalice:{hash}\n\n"));
        let auth = Arc::new(Htpasswd::load(&path).unwrap());
        assert_eq!(auth.len(), 1);
        assert_eq!(
            auth.check(Some(&basic("alice", "s3cret"))).await,
            AuthCheck::User("alice".into())
        );
        // Remembered: the second check does not run bcrypt (same answer either way).
        assert_eq!(
            auth.check(Some(&basic("alice", "s3cret"))).await,
            AuthCheck::User("alice".into())
        );
        assert_eq!(
            auth.check(Some(&basic("alice", "wrong"))).await,
            AuthCheck::Refused(Some("alice".into()))
        );
        assert_eq!(
            auth.check(Some(&basic("bob", "s3cret"))).await,
            AuthCheck::Refused(Some("bob".into()))
        );
        assert_eq!(auth.check(None).await, AuthCheck::Missing);
        assert_eq!(
            auth.check(Some(&HeaderValue::from_static("Bearer x"))).await,
            AuthCheck::Missing
        );
    }

    #[test]
    fn other_hash_kinds_are_refused_naming_the_line() {
        for bad in [
            "bob:$apr1$abc$defghijklmnopqrstuv",
            "bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
            "bob:plaintext",
            "no-colon",
        ] {
            let (_d, path) = file(&format!("# c\n{bad}\n"));
            let err = Htpasswd::load(&path).err().expect("refused").to_string();
            assert!(err.contains(":2:"), "{err}");
        }
    }

    #[test]
    fn allowlist() {
        let allow: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(client_allowed(&allow, "10.1.2.3:5".parse().unwrap()));
        assert!(client_allowed(&allow, "[::ffff:10.1.2.3]:5".parse().unwrap()));
        assert!(client_allowed(&allow, "[::1]:5".parse().unwrap()));
        assert!(!client_allowed(&allow, "192.168.1.1:5".parse().unwrap()));
        assert!(client_allowed(&[], "192.168.1.1:5".parse().unwrap()));
    }
}

//! Docker credential helpers (the docker-credential-helpers protocol): `PROGRAM get` with the
//! server on stdin answers `{"ServerURL","Username","Secret"}` on stdout. ECR, GCR/GAR, ACR and
//! `pass` ship one; their secrets are short-lived, so an answer is kept only until its expiry
//! (read from the secret when it carries one) or a refusal upstream, then the helper is asked
//! again. One run per account at a time; a run that hangs is killed at its timeout.

use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::config::{CredentialHelper, HostPort};

/// Answers larger than this are refused (they are a few KiB).
const MAX_ANSWER: u64 = 64 * 1024;
/// An answer is dropped this long before the expiry its secret names.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// A user name and secret a helper gave.
#[derive(Clone)]
pub struct HelperLogin {
    /// `Username`.
    pub username: String,
    /// `Secret`: a password or token, never logged.
    pub secret: String,
    until: Instant,
}

/// Why a helper gave no login: one line, without the secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("credential helper {program} for {server}: {reason}")]
pub struct HelperError {
    program: String,
    server: String,
    reason: String,
}

/// Helper answers, by program and server.
pub struct HelperLogins {
    answers: moka::future::Cache<String, HelperLogin>,
}

impl Default for HelperLogins {
    fn default() -> Self {
        Self {
            answers: moka::future::Cache::builder().max_capacity(1_000).build(),
        }
    }
}

impl HelperLogins {
    /// The login `helper` gives for `registry`: remembered while it is valid, else asked (one
    /// run for all callers waiting on it). `fresh` says whether it was asked just now.
    ///
    /// # Errors
    /// The helper is missing, fails, hangs past its timeout or answers nonsense.
    pub async fn get(
        &self,
        helper: &CredentialHelper,
        registry: &HostPort,
    ) -> Result<(HelperLogin, bool), HelperError> {
        let server = server_url(registry);
        let key = format!("{}|{server}", helper.program);
        if let Some(l) = self.answers.get(&key).await {
            if Instant::now() < l.until {
                return Ok((l, false));
            }
            self.answers.invalidate(&key).await;
        }
        let asked =
            self.answers
                .try_get_with(key, run(helper, &server))
                .await
                .map_err(|e: std::sync::Arc<HelperError>| {
                    tracing::warn!(error = %e, "credential helper gave no login");
                    (*e).clone()
                })?;
        Ok((asked, true))
    }

    /// Forgets the answer for `registry` (upstream refused it).
    pub async fn forget(&self, helper: &CredentialHelper, registry: &HostPort) {
        self.answers
            .invalidate(&format!("{}|{}", helper.program, server_url(registry)))
            .await;
    }

    /// Forgets every answer (a reload).
    pub fn clear(&self) {
        self.answers.invalidate_all();
    }
}

/// The server name a helper is asked for: the registry's host (with its port unless 443);
/// Docker Hub is `https://index.docker.io/v1/`, the key `docker login` stores it under.
fn server_url(registry: &HostPort) -> String {
    match crate::config::canonical_registry(registry).as_str() {
        "docker.io" => "https://index.docker.io/v1/".to_string(),
        other => other.to_string(),
    }
}

async fn run(helper: &CredentialHelper, server: &str) -> Result<HelperLogin, HelperError> {
    let fail = |reason: String| HelperError {
        program: helper.program.clone(),
        server: server.to_string(),
        reason,
    };
    let mut child = tokio::process::Command::new(&helper.program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    let talk = async {
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(server.as_bytes()).await?;
            stdin.write_all(b"\n").await?;
        }
        let (out, err) = tokio::try_join!(read_capped(child.stdout.take()), read_capped(child.stderr.take()))?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, out, err))
    };
    let (status, out, err) = match tokio::time::timeout(helper.timeout, talk).await {
        Err(_) => {
            return Err(fail(format!(
                "no answer within {}s; killed",
                helper.timeout.as_secs_f32()
            )));
        }
        Ok(Err(e)) => return Err(fail(format!("talking to it: {e}"))),
        Ok(Ok(done)) => done,
    };
    if !status.success() {
        // Helpers say why on stdout ("credentials not found in native keychain") or stderr.
        let said = String::from_utf8_lossy(if out.is_empty() { &err } else { &out });
        let line = said.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
        return Err(fail(format!(
            "{status}: {}",
            line.chars().take(200).collect::<String>()
        )));
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let answer: Answer =
        serde_json::from_slice(&out).map_err(|e| fail(format!("not a {{\"Username\",\"Secret\"}} answer: {e}")))?;
    if answer.secret.is_empty() {
        return Err(fail("answered an empty Secret".into()));
    }
    let lifetime = secret_lifetime(&answer.secret).unwrap_or(helper.ttl);
    tracing::debug!(helper = %helper.program, server, user = %answer.username, valid_s = lifetime.as_secs(), "credential helper answered");
    Ok(HelperLogin {
        username: answer.username,
        secret: answer.secret,
        until: Instant::now() + lifetime,
    })
}

/// What a child's pipe carries, up to [`MAX_ANSWER`] bytes (nothing for a missing pipe).
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(p) = pipe {
        p.take(MAX_ANSWER).read_to_end(&mut buf).await?;
    }
    Ok(buf)
}

/// How long a secret says it stays valid: a JWT's `exp`, or the `expiration` of an ECR
/// authorization token (base64 of `{"payload",…,"expiration"}`), less a margin.
fn secret_lifetime(secret: &str) -> Option<Duration> {
    let b64 = |t: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t.trim_end_matches('='))
            .or_else(|_| base64::engine::general_purpose::STANDARD.decode(t))
            .ok()
    };
    let claims: serde_json::Value = {
        let mut parts = secret.split('.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(_), Some(payload), Some(_)) => serde_json::from_slice(&b64(payload)?).ok()?,
            _ => serde_json::from_slice(&b64(secret)?).ok()?,
        }
    };
    let exp = claims.get("exp").or_else(|| claims.get("expiration"))?.as_u64()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(exp.saturating_sub(now)).saturating_sub(EXPIRY_MARGIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn expiry_is_read_from_jwts_and_ecr_tokens() {
        let enc = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let jwt = format!(
            "{}.{}.sig",
            enc(serde_json::json!({"alg":"none"})),
            enc(serde_json::json!({"exp": now() + 3600}))
        );
        let left = secret_lifetime(&jwt).unwrap();
        assert!(
            left > Duration::from_secs(3400) && left <= Duration::from_secs(3540),
            "{left:?}"
        );
        let ecr = base64::engine::general_purpose::STANDARD
            .encode(serde_json::json!({"payload":"x","expiration": now() + 600}).to_string());
        assert!(secret_lifetime(&ecr).unwrap() <= Duration::from_secs(540));
        assert!(secret_lifetime("plain-password").is_none());
        let old = format!("a.{}.c", enc(serde_json::json!({"exp": 1})));
        assert_eq!(secret_lifetime(&old), Some(Duration::ZERO));
    }

    #[test]
    fn docker_hub_is_asked_for_under_dockers_own_key() {
        assert_eq!(
            server_url(&HostPort::parse("registry-1.docker.io", 443).unwrap()),
            "https://index.docker.io/v1/"
        );
        assert_eq!(
            server_url(&HostPort::parse("x.ecr.aws:5000", 443).unwrap()),
            "x.ecr.aws:5000"
        );
    }
}

//! regcache's own side of registry authentication: its configured accounts (`[[credentials]]`)
//! and the token flow of the distribution spec ("Token Authentication Specification"), run for
//! requests that carry no client `Authorization`.
//!
//! A request is first sent without credentials (or with a cached token). On `401`, the
//! `WWW-Authenticate` challenge says what to do: `Basic` → retry with the account's password;
//! `Bearer realm=…,service=…,scope=…` → get a token from the realm (with the account's
//! password when there is one, anonymously otherwise), cache it until it expires, retry.
//! Credentials go only to the registry and to the realm its challenge names; redirect targets
//! get none (see [`UpstreamClient::send_following_redirects`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Uri};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use crate::config::{Credential, HostPort, Login};
use crate::error::ProxyError;
use crate::upstream::UpstreamClient;
use crate::upstream::credential_helper::HelperLogins;

/// Token responses larger than this are refused (they are a few KiB).
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// A token without `expires_in` lives 60 s (the spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are dropped this long before they expire.
const TOKEN_MARGIN: Duration = Duration::from_secs(5);

/// The accounts regcache holds and the tokens it got with them.
pub struct UpstreamAuth {
    accounts: arc_swap::ArcSwap<Vec<Credential>>,
    tokens: moka::sync::Cache<String, (String, Instant)>,
    helpers: HelperLogins,
}

/// A user name and secret as sent upstream, and the key part that tells logins apart.
struct Basic<'a> {
    username: &'a str,
    password: &'a str,
    /// The user and a digest of the secret: a rotated secret gets tokens of its own.
    key: String,
}

impl<'a> Basic<'a> {
    fn new(username: &'a str, password: &'a str) -> Self {
        use sha2::Digest as _;
        let d = sha2::Sha256::digest(password.as_bytes());
        let key = format!("{username}#{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3]);
        Self {
            username,
            password,
            key,
        }
    }
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=…`
    Basic,
    /// `Bearer realm=…,service=…,scope=…`
    Bearer {
        /// Token endpoint.
        realm: String,
        /// `service` parameter.
        service: Option<String>,
        /// `scope` parameter.
        scope: Option<String>,
    },
}

impl UpstreamAuth {
    /// regcache's accounts.
    pub fn new(accounts: Vec<Credential>) -> Self {
        Self {
            accounts: arc_swap::ArcSwap::from_pointee(accounts),
            tokens: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            helpers: HelperLogins::default(),
        }
    }

    /// Replaces the accounts (a reload); tokens got with old accounts are forgotten.
    pub fn set_accounts(&self, accounts: Vec<Credential>) {
        self.accounts.store(Arc::new(accounts));
        self.tokens.invalidate_all();
        self.helpers.clear();
    }

    /// The account for `repository` on `host`: the first whose registry and repository glob match.
    pub fn account(&self, host: &HostPort, repository: &str) -> Option<Credential> {
        self.accounts
            .load()
            .iter()
            .find(|c| &c.registry == host && c.repository.as_ref().is_none_or(|g| g.is_match(repository)))
            .cloned()
    }

    /// Whether regcache holds any account for `host` (then it answers `/v2/` itself, so that
    /// clients without a login send no credentials and regcache's are used).
    pub fn has_accounts_for(&self, host: &HostPort) -> bool {
        self.accounts.load().iter().any(|c| &c.registry == host)
    }

    /// Sends a body-less request for `repository` on `host` as regcache: with a cached token,
    /// else bare; on a `401` runs the challenge with `account` (or anonymously) and retries once.
    ///
    /// # Errors
    /// As [`UpstreamClient::send_following_redirects`]; a token endpoint that fails is
    /// [`ProxyError::Upstream`].
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        upstream: &UpstreamClient,
        method: Method,
        url: Uri,
        headers: HeaderMap,
        host: &HostPort,
        repository: &str,
        account: Option<Credential>,
    ) -> Result<hyper::Response<Incoming>, ProxyError> {
        let helper = match account.as_ref().map(|a| &a.login) {
            None => {
                return self
                    .send_as(upstream, method, url, headers, host, repository, None)
                    .await;
            }
            Some(Login::Password { username, password }) => {
                let login = Basic::new(username, password);
                return self
                    .send_as(upstream, method, url, headers, host, repository, Some(&login))
                    .await;
            }
            Some(Login::Helper(h)) => h,
        };
        let helper_failed = |e: super::credential_helper::HelperError| ProxyError::Upstream {
            target: host.to_string(),
            reason: e.to_string(),
        };
        // At most twice: a remembered answer may have expired early or been rotated, and a
        // refusal of it asks the helper once more.
        let mut asked_again = false;
        loop {
            let (login, fresh) = self.helpers.get(helper, host).await.map_err(helper_failed)?;
            let basic = Basic::new(&login.username, &login.secret);
            let res = self
                .send_as(
                    upstream,
                    method.clone(),
                    url.clone(),
                    headers.clone(),
                    host,
                    repository,
                    Some(&basic),
                )
                .await;
            let refused = match &res {
                Ok(r) => matches!(r.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN),
                Err(e) => matches!(e, ProxyError::Upstream { .. }),
            };
            if fresh || asked_again || !refused {
                return res;
            }
            tracing::debug!(registry = %host, helper = %helper.program, "upstream refused the helper's login; asking the helper again");
            self.helpers.forget(helper, host).await;
            asked_again = true;
        }
    }

    /// [`Self::send`] with the login settled.
    #[allow(clippy::too_many_arguments)]
    async fn send_as(
        &self,
        upstream: &UpstreamClient,
        method: Method,
        url: Uri,
        headers: HeaderMap,
        host: &HostPort,
        repository: &str,
        account: Option<&Basic<'_>>,
    ) -> Result<hyper::Response<Incoming>, ProxyError> {
        let user = account.map_or("", |a| a.key.as_str());
        let remembered_key = format!("{host}|{repository}|{user}");
        let mut first = headers.clone();
        if let Some(auth) = self.remembered(&remembered_key) {
            first.insert(header::AUTHORIZATION, auth);
        }
        let res = upstream
            .send_following_redirects(method.clone(), url.clone(), first)
            .await?;
        if res.status() != StatusCode::UNAUTHORIZED {
            return Ok(res);
        }
        let Some(challenge) = res.headers().get(header::WWW_AUTHENTICATE).and_then(parse_challenge) else {
            return Ok(res);
        };
        // The header is remembered for as long as what it carries is good: a token for its
        // `expires_in`, Basic credentials for the default lifetime.
        let (auth, until) = match &challenge {
            Challenge::Basic => match account {
                Some(a) => (basic(a), Instant::now() + DEFAULT_TOKEN_LIFETIME),
                None => return Ok(res),
            },
            Challenge::Bearer { realm, service, scope } => {
                let scope = scope.clone().unwrap_or_else(|| format!("repository:{repository}:pull"));
                let (token, until) = match self.token(upstream, realm, service.as_deref(), &scope, account).await {
                    Ok(t) => t,
                    // Anonymous and refused: upstream's own challenge is the answer.
                    Err(e) if account.is_none() => {
                        tracing::debug!(error = %e, "anonymous token refused");
                        return Ok(res);
                    }
                    Err(e) => return Err(e),
                };
                match HeaderValue::from_str(&format!("Bearer {token}")) {
                    Ok(v) => (v, until),
                    Err(_) => {
                        return Err(ProxyError::Upstream {
                            target: host.to_string(),
                            reason: "token endpoint returned an unusable token".into(),
                        });
                    }
                }
            }
        };
        self.tokens.insert(
            format!("auth|{remembered_key}"),
            (auth.to_str().unwrap_or_default().to_string(), until),
        );
        let mut retry = headers;
        retry.insert(header::AUTHORIZATION, auth);
        upstream.send_following_redirects(method, url, retry).await
    }

    fn remembered(&self, key: &str) -> Option<HeaderValue> {
        let (value, until) = self.tokens.get(&format!("auth|{key}"))?;
        (Instant::now() < until).then(|| HeaderValue::from_str(&value).ok())?
    }

    /// A token for `scope` from `realm`, cached until shortly before it expires; with that
    /// moment.
    async fn token(
        &self,
        upstream: &UpstreamClient,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        account: Option<&Basic<'_>>,
    ) -> Result<(String, Instant), ProxyError> {
        let user = account.map_or("", |a| a.username);
        let key = format!(
            "token|{realm}|{}|{scope}|{}",
            service.unwrap_or(""),
            account.map_or("", |a| a.key.as_str())
        );
        if let Some((token, until)) = self.tokens.get(&key)
            && Instant::now() < until
        {
            return Ok((token, until));
        }
        let realm_uri: Uri = realm.parse().map_err(|_| bad_realm(realm, "not a URL"))?;
        if realm_uri.scheme_str() != Some("https") && account.is_some() {
            // A password never crosses the network in clear.
            return Err(bad_realm(realm, "not https; regcache sends no password there"));
        }
        let mut query = Vec::new();
        if let Some(s) = service {
            query.push(format!("service={}", encode(s)));
        }
        query.push(format!("scope={}", encode(scope)));
        let sep = if realm.contains('?') { '&' } else { '?' };
        let url: Uri = format!("{realm}{sep}{}", query.join("&"))
            .parse()
            .map_err(|_| bad_realm(realm, "cannot add the query"))?;
        let mut headers = HeaderMap::new();
        if let Some(a) = account {
            headers.insert(header::AUTHORIZATION, basic(a));
        }
        let res = upstream.send_following_redirects(Method::GET, url, headers).await?;
        let status = res.status();
        let body = http_body_util::Limited::new(res.into_body(), MAX_TOKEN_RESPONSE)
            .collect()
            .await
            .map_err(|e| bad_realm(realm, &format!("reading the answer: {e}")))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(bad_realm(
                realm,
                &format!("answered {} (account {user:?})", status.as_u16()),
            ));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| bad_realm(realm, &format!("not a token response: {e}")))?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .ok_or_else(|| bad_realm(realm, "no token in the answer"))?;
        let lifetime = parsed
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs)
            .saturating_sub(TOKEN_MARGIN);
        let until = Instant::now() + lifetime;
        self.tokens.insert(key, (token.clone(), until));
        Ok((token, until))
    }
}

/// Upstream requests for one repository: with the client's own `Authorization` when it sent
/// one (it always wins), else as regcache with its account for the repository, or anonymously.
#[derive(Clone)]
pub struct Requester {
    upstream: UpstreamClient,
    auth: Arc<UpstreamAuth>,
    host: HostPort,
    repository: String,
    /// Run upstream's token flow even without an account (anonymously).
    log_in: bool,
}

impl Requester {
    /// Requests for `repository` on `host`.
    pub fn new(upstream: UpstreamClient, auth: Arc<UpstreamAuth>, host: HostPort, repository: String) -> Self {
        Self {
            upstream,
            auth,
            host,
            repository,
            log_in: false,
        }
    }

    /// Whether regcache runs upstream's token flow for a client that cannot (a mirror's: it
    /// never sees the upstream's challenge), anonymously when it holds no account.
    pub fn logging_in(mut self, log_in: bool) -> Self {
        self.log_in = log_in;
        self
    }

    /// Sends a body-less request, following redirects.
    ///
    /// # Errors
    /// As [`UpstreamClient::send_following_redirects`].
    pub async fn send(
        &self,
        method: Method,
        url: Uri,
        headers: HeaderMap,
    ) -> Result<hyper::Response<Incoming>, ProxyError> {
        if headers.contains_key(header::AUTHORIZATION) {
            return self.upstream.send_following_redirects(method, url, headers).await;
        }
        let account = match self.auth.account(&self.host, &self.repository) {
            Some(a) => Some(a),
            None if self.log_in => None,
            // Without an account regcache does not log in for the client: upstream's challenge
            // goes back so that the client runs its own token flow.
            None => return self.upstream.send_following_redirects(method, url, headers).await,
        };
        self.auth
            .send(
                &self.upstream,
                method,
                url,
                headers,
                &self.host,
                &self.repository,
                account,
            )
            .await
    }

    /// Sends as nobody (running an anonymous token flow if asked to): is it public?
    ///
    /// # Errors
    /// As [`Requester::send`].
    pub async fn send_anonymously(
        &self,
        method: Method,
        url: Uri,
        mut headers: HeaderMap,
    ) -> Result<hyper::Response<Incoming>, ProxyError> {
        headers.remove(header::AUTHORIZATION);
        self.auth
            .send(&self.upstream, method, url, headers, &self.host, &self.repository, None)
            .await
    }

    /// Whether regcache holds an account for this repository.
    pub fn has_account(&self) -> bool {
        self.auth.account(&self.host, &self.repository).is_some()
    }
}

fn bad_realm(realm: &str, why: &str) -> ProxyError {
    let host = realm
        .parse::<Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_string))
        .unwrap_or_else(|| "token realm".into());
    ProxyError::Upstream {
        target: host,
        reason: format!("token endpoint: {why}"),
    }
}

fn basic(c: &Basic<'_>) -> HeaderValue {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password));
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}")).unwrap_or_else(|_| HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses `Basic realm="…"` or `Bearer realm="…",service="…",scope="…"`.
pub fn parse_challenge(v: &HeaderValue) -> Option<Challenge> {
    let text = v.to_str().ok()?.trim();
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    Some(Challenge::Bearer {
        realm: get("realm")?,
        service: get("service"),
        scope: get("scope"),
    })
}

/// `a="x, y",b=z` → [(a, "x, y"), (b, z)] (quoted values may hold commas).
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((name, after)) = rest.split_once('=') else {
            break;
        };
        let name = name.trim().trim_start_matches(',').trim().to_string();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &q[end.min(q.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.push((name, value));
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let v = HeaderValue::from_static(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#,
        );
        assert_eq!(
            parse_challenge(&v),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(&HeaderValue::from_static(r#"Basic realm="x""#)),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge(&HeaderValue::from_static("Negotiate abc")), None);
        assert_eq!(
            parse_challenge(&HeaderValue::from_static("Bearer service=x")),
            None,
            "no realm"
        );
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }

    #[test]
    fn accounts_are_chosen_by_registry_and_repository() {
        let cred = |repo: Option<&str>, user: &str| Credential {
            registry: HostPort::parse("ghcr.io", 443).unwrap(),
            repository: repo.map(|r| r.parse().unwrap()),
            login: Login::Password {
                username: user.into(),
                password: "p".into(),
            },
        };
        let auth = UpstreamAuth::new(vec![cred(Some("team-a/*"), "a"), cred(None, "fallback")]);
        let ghcr = HostPort::parse("ghcr.io", 443).unwrap();
        let user = |repo: &str| match auth.account(&ghcr, repo).map(|a| a.login) {
            Some(Login::Password { username, .. }) => username,
            other => panic!("{other:?}"),
        };
        assert_eq!(user("team-a/app"), "a");
        assert_eq!(user("team-b/app"), "fallback");
        assert!(auth.account(&HostPort::parse("quay.io", 443).unwrap(), "x").is_none());
        assert!(auth.has_accounts_for(&ghcr));
    }
}

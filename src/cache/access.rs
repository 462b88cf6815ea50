//! Who may be served cached content of a repository: public repositories cost nothing;
//! private ones one upstream `HEAD` per credential and repository every few minutes, or
//! regcache's own account; a blob only through a repository it is a member of. While upstream
//! is unreachable, only what a recent check vouches for is served. See [`super::repo_access`]
//! for what is remembered.

use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use hyper::body::Incoming;

use crate::body;
use crate::cache::answers::Fetched;
use crate::cache::answers::Served;
use crate::cache::answers::{error, upstream_unavailable};
use crate::cache::repo_access::{auth_fingerprint, repo_key};
use crate::cache::{Ctx, RegistryCache};
use crate::clock::now_ms;
use crate::error::ProxyError;
use crate::registry::Digest;
use crate::registry::headers::{self, DOCKER_CONTENT_DIGEST, X_CACHE};
use crate::telemetry::Outcome;

impl RegistryCache {
    /// Records what a successful upstream answer to this client proves: the object is in the
    /// repository, the client's credentials are good for it (or, without credentials and
    /// without an account of regcache's, that the repository is public), and a manifest's
    /// references are in the repository too.
    pub(super) async fn learn(&self, ctx: &Ctx<'_>, object: Option<&Digest>, manifest: Option<&[u8]>) {
        let repo = repo_key(&ctx.registry, &ctx.repository);
        if let Some(d) = object {
            self.add_member(ctx, &repo, d).await;
        }
        if let Some(body) = manifest {
            self.access.add_references(&repo, body);
        }
        if ctx.headers.contains_key(header::AUTHORIZATION) {
            self.access.set_verified(&auth_fingerprint(ctx.headers), &repo);
        } else if self.auth.account(&ctx.origin.host, &ctx.repository).is_none() {
            self.set_public(ctx, &repo).await;
        }
    }

    /// `digest` is in this repository: remembered, and recorded in the store for restarts.
    pub(super) async fn add_member(&self, ctx: &Ctx<'_>, repo: &str, digest: &Digest) {
        if self.access.is_member(repo, digest) {
            return;
        }
        self.access.add_member(repo, digest);
        if self.store_usable()
            && let Err(e) = self.records.put_member(&ctx.registry, &ctx.repository, digest).await
        {
            self.store_failed(&e);
        }
    }

    /// The repository is readable anonymously: remembered, and recorded for restarts (where it
    /// lets cached public content be served while upstream is down).
    pub(super) async fn set_public(&self, ctx: &Ctx<'_>, repo: &str) {
        if self.access.public(repo) == Some(true) {
            return;
        }
        self.access.set_public(repo, true);
        if self.store_usable()
            && let Err(e) = self.records.put_public(&ctx.registry, &ctx.repository).await
        {
            self.store_failed(&e);
        }
    }

    /// Membership from memory, else from the store.
    pub(super) async fn is_member(&self, ctx: &Ctx<'_>, repo: &str, digest: &Digest) -> bool {
        if self.access.is_member(repo, digest) {
            return true;
        }
        let stored = self.records.is_member(&ctx.registry, &ctx.repository, digest).await;
        if stored {
            self.access.add_member(repo, digest);
        }
        stored
    }

    /// Public status from memory; when memory knows nothing, from the store if recent. The
    /// store is read once per repository (memory then holds the answer), never per request.
    pub(super) async fn public_status(&self, ctx: &Ctx<'_>, repo: &str) -> Option<bool> {
        if let Some(p) = self.access.public(repo) {
            return Some(p);
        }
        let at = self.records.public_since(&ctx.registry, &ctx.repository).await?;
        let fresh = now_ms().saturating_sub(at) < self.policy.load().public_recheck.as_millis() as u64;
        fresh.then(|| {
            self.access.set_public(repo, true);
            true
        })
    }

    /// A manifest fetch answered 200, possibly for another client (coalesced): whether this
    /// client may have it. `Some(response)` is the refusal to send instead.
    pub(super) async fn shared_fetch_allowed(&self, ctx: &Ctx<'_>, fetched: &Fetched) -> Option<Served> {
        if fetched.auth == auth_fingerprint(ctx.headers) {
            self.learn(ctx, None, Some(&fetched.body)).await;
            return None;
        }
        self.authorize(ctx, None, true).await
    }

    /// Whether this client may be served a cached object of this repository (`object` = a
    /// blob digest; `None` with `member` = a manifest or tag stored under this repository).
    /// `None` = yes; `Some(response)` = upstream's refusal (or 502 when upstream cannot be
    /// asked and nothing recent vouches for the client), to send instead.
    ///
    /// Public repositories cost nothing; private ones one upstream `HEAD` per credential and
    /// repository every few minutes (free on Docker Hub).
    pub(super) async fn authorize(&self, ctx: &Ctx<'_>, object: Option<&Digest>, member: bool) -> Option<Served> {
        let repo = repo_key(&ctx.registry, &ctx.repository);
        let member = match object {
            Some(d) if !member => self.is_member(ctx, &repo, d).await,
            _ => member,
        };
        let public = self.public_status(ctx, &repo).await;
        if member && public == Some(true) {
            return None;
        }
        let credential = ctx
            .headers
            .contains_key(header::AUTHORIZATION)
            .then(|| auth_fingerprint(ctx.headers));
        let requester = self.requester(ctx);
        if member {
            if public == Some(true) {
                return None;
            }
            // The operator shares regcache's account with every client allowed to use the proxy.
            if credential.is_none() && requester.has_account() {
                return None;
            }
            if let Some(c) = &credential
                && self.access.verified(c, &repo)
            {
                return None;
            }
        }
        let headers = headers::for_upstream(ctx.headers);
        // Is it public? Asked once per repository (and object) per recheck interval.
        if public != Some(false) {
            match requester
                .send_anonymously(Method::HEAD, ctx.url.clone(), headers.clone())
                .await
            {
                Ok(res) if res.status() == StatusCode::OK => {
                    self.set_public(ctx, &repo).await;
                    if let Some(d) = object {
                        self.add_member(ctx, &repo, d).await;
                    }
                    return None;
                }
                Ok(res) if !upstream_unavailable(res.status()) => {
                    if public.is_none() {
                        self.access.set_public(&repo, false);
                    }
                    if credential.is_none() && !requester.has_account() {
                        // Upstream's own challenge, so that the client can log in.
                        return Some(refusal(res, ctx.head));
                    }
                }
                Ok(_) | Err(_) => return self.unverifiable(ctx, &repo, member, credential.as_deref()).await,
            }
        }
        match requester.send(Method::HEAD, ctx.url.clone(), headers).await {
            Ok(res) if res.status() == StatusCode::OK => {
                if let Some(d) = object {
                    self.add_member(ctx, &repo, d).await;
                }
                if let Some(c) = &credential {
                    self.access.set_verified(c, &repo);
                }
                None
            }
            Ok(res) if !upstream_unavailable(res.status()) => {
                tracing::info!(registry = %ctx.registry, repository = %ctx.repository, status = res.status().as_u16(), "cached content refused to a client upstream does not allow");
                Some(refusal(res, ctx.head))
            }
            Ok(_) | Err(_) => self.unverifiable(ctx, &repo, member, credential.as_deref()).await,
        }
    }

    /// Upstream cannot say whether this client may read the repository: serve only what a
    /// recent check vouches for.
    pub(super) async fn unverifiable(
        &self,
        ctx: &Ctx<'_>,
        repo: &str,
        member: bool,
        credential: Option<&str>,
    ) -> Option<Served> {
        // Found public once (memory or store, however long ago) is what an outage relies on.
        let vouched = member
            && (self.access.public(repo) == Some(true)
                || credential.is_some_and(|c| self.access.verified_for_outage(c, repo))
                || self
                    .records
                    .public_since(&ctx.registry, &ctx.repository)
                    .await
                    .is_some());
        if vouched {
            return None;
        }
        Some(error(ProxyError::Upstream {
            target: ctx.origin.host.to_string(),
            reason: "registry unavailable, and access to this cached content cannot be verified".into(),
        }))
    }
}

/// Upstream's refusal of a check, for the client: its status and headers (`WWW-Authenticate`
/// included, so the client can log in), no body.
pub(super) fn refusal(res: Response<Incoming>, head: bool) -> Served {
    let status = res.status();
    let mut h = res.headers().clone();
    headers::strip_hop_by_hop(&mut h);
    // The check was a HEAD: its length is not this answer's.
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::CONTENT_TYPE);
    h.remove(DOCKER_CONTENT_DIGEST);
    let code = match status {
        StatusCode::UNAUTHORIZED => "UNAUTHORIZED",
        StatusCode::FORBIDDEN => "DENIED",
        StatusCode::NOT_FOUND => "NAME_UNKNOWN",
        _ => "DENIED",
    };
    let text = format!(
        r#"{{"errors":[{{"code":"{code}","message":"upstream refused these credentials for this repository"}}]}}"#
    );
    let mut res = if head {
        let mut r = Response::new(body::empty());
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
        *r.headers_mut() = h;
        r
    } else {
        let mut r = Response::new(body::full(text));
        *r.headers_mut() = h;
        r
    };
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut()
        .insert(X_CACHE, HeaderValue::from_static(Outcome::Deny.x_cache()));
    (res, Outcome::Deny)
}

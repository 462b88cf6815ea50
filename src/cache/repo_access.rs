//! What regcache knows about who may read a cached repository, so that cached content of a
//! private repository is never served to a client upstream would refuse.
//!
//! - A repository is *public* when regcache itself could read it anonymously; that is checked
//!   again after `public_recheck`.
//! - A client's credentials are *verified* for a repository when upstream accepted them for it;
//!   that holds for [`VERIFIED_FOR`], and within `private_grace` when upstream is unreachable.
//! - An object (blob or manifest digest) is a *member* of a repository when upstream served it
//!   through that repository or a manifest of that repository references it: a blob shared by
//!   a public and a private repository is served to anyone who asks through the public one,
//!   and to nobody through a repository it is not in.
//!
//! Everything is in memory (bounded); after a restart it is learnt again with upstream `HEAD`s.
//! Credentials are known only by [`auth_fingerprint`], never kept themselves.

use std::time::Duration;

use http::header::{self, HeaderMap};

use crate::registry::{Algorithm, Digest};

/// How long an upstream's acceptance of a credential for a repository is trusted.
pub const VERIFIED_FOR: Duration = Duration::from_secs(300);

/// Access knowledge, per registry and repository.
pub struct RepoAccess {
    public: moka::sync::Cache<String, bool>,
    verified: moka::sync::Cache<String, u64>,
    members: moka::sync::Cache<String, ()>,
    private_grace: std::sync::atomic::AtomicU64,
}

/// `registry|repository`.
pub fn repo_key(registry: &str, repository: &str) -> String {
    format!("{registry}|{repository}")
}

impl RepoAccess {
    /// Public status is rechecked after `public_recheck`; credentials verified within
    /// `private_grace` may read private content while upstream is unreachable.
    pub fn new(public_recheck: Duration, private_grace: Duration) -> Self {
        Self {
            public: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(public_recheck)
                .build(),
            verified: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(private_grace.max(VERIFIED_FOR))
                .build(),
            members: moka::sync::Cache::new(1_000_000),
            private_grace: std::sync::atomic::AtomicU64::new(private_grace.as_millis() as u64),
        }
    }

    /// `Some(true)` public, `Some(false)` not readable anonymously, `None` unknown.
    pub fn public(&self, repo: &str) -> Option<bool> {
        self.public.get(repo)
    }

    /// Records the outcome of an anonymous check.
    pub fn set_public(&self, repo: &str, public: bool) {
        self.public.insert(repo.to_string(), public);
    }

    /// Whether upstream accepted `credential` for `repo` within `within_ms`.
    pub fn verified_within(&self, credential: &str, repo: &str, within_ms: u64) -> bool {
        self.verified
            .get(&format!("{credential}|{repo}"))
            .is_some_and(|at| crate::clock::now_ms().saturating_sub(at) <= within_ms)
    }

    /// Whether upstream accepted `credential` for `repo` recently enough to skip asking.
    pub fn verified(&self, credential: &str, repo: &str) -> bool {
        self.verified_within(credential, repo, VERIFIED_FOR.as_millis() as u64)
    }

    /// Whether `credential` was verified within the outage grace window.
    pub fn verified_for_outage(&self, credential: &str, repo: &str) -> bool {
        let grace = self.private_grace.load(std::sync::atomic::Ordering::Relaxed);
        self.verified_within(credential, repo, grace)
    }

    /// Upstream accepted `credential` for `repo` just now.
    pub fn set_verified(&self, credential: &str, repo: &str) {
        self.verified
            .insert(format!("{credential}|{repo}"), crate::clock::now_ms());
    }

    /// Whether `digest` is known to be in `repo`.
    pub fn is_member(&self, repo: &str, digest: &Digest) -> bool {
        self.members.contains_key(&format!("{repo}|{digest}"))
    }

    /// `digest` is in `repo`.
    pub fn add_member(&self, repo: &str, digest: &Digest) {
        self.members.insert(format!("{repo}|{digest}"), ());
    }

    /// Everything a manifest of `repo` references (config, layers, child manifests) is in `repo`.
    pub fn add_references(&self, repo: &str, manifest: &[u8]) {
        for d in referenced_digests(manifest) {
            self.add_member(repo, &d);
        }
    }
}

/// The digests an image manifest or index references: config, layers and child manifests
/// (see [`crate::registry::manifest::parse_references`]); unparsable manifests reference nothing.
pub fn referenced_digests(manifest: &[u8]) -> Vec<Digest> {
    let r = crate::registry::manifest::parse_references(manifest);
    r.blobs.into_iter().chain(r.children).collect()
}

/// A short, non-reversible fingerprint of the client's credentials, to coalesce only requests
/// that upstream would answer alike.
pub fn auth_fingerprint(h: &HeaderMap) -> String {
    match h.get(header::AUTHORIZATION) {
        None => "anonymous".into(),
        Some(v) => Digest::of(Algorithm::Sha256, v.as_bytes()).hex()[..16].to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_of_manifests_and_indexes() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let m = format!(r#"{{"config":{{"digest":"{a}"}},"layers":[{{"digest":"{b}"}},{{"digest":"bad"}}]}}"#);
        let got: Vec<String> = referenced_digests(m.as_bytes())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, vec![a.clone(), b]);
        let idx = format!(r#"{{"manifests":[{{"digest":"{a}"}}]}}"#);
        assert_eq!(referenced_digests(idx.as_bytes()).len(), 1);
        assert!(referenced_digests(b"not json").is_empty());
    }

    #[test]
    fn membership_and_verification() {
        let access = RepoAccess::new(Duration::from_secs(60), Duration::from_secs(3600));
        let repo = repo_key("ghcr.io", "org/app");
        let d: Digest = format!("sha256:{}", "c".repeat(64)).parse().unwrap();
        assert!(!access.is_member(&repo, &d));
        access.add_member(&repo, &d);
        assert!(access.is_member(&repo, &d));
        assert!(!access.is_member(&repo_key("ghcr.io", "other"), &d));
        assert_eq!(access.public(&repo), None);
        access.set_public(&repo, false);
        assert_eq!(access.public(&repo), Some(false));
        assert!(!access.verified("cred", &repo));
        access.set_verified("cred", &repo);
        assert!(access.verified("cred", &repo));
        assert!(access.verified_for_outage("cred", &repo));
        assert!(!access.verified("other", &repo));
    }
}

//! The cache's records in the store's index, and the keys they live under:
//!
//! - `manifest/<registry>/<repo>@<digest>`: a manifest cached for that repository, with its
//!   media type (the bytes are content, stored once per digest);
//! - `tag/<registry>/<repo>:<tag>#<accept set>`: what a tag resolved to for one `Accept` set
//!   (a [`TagRecord`]), so two registries or two Accept lists never share one;
//! - `member/<registry>/<repo>@<digest>`: upstream served that blob through that repository;
//! - `public/<registry>/<repo>`: the repository was found readable anonymously (and when).
//!
//! Writers (the request path, `warm`, `cache import`) and readers (`cache ls/rm/verify`, the
//! admin API) use only this file's keys and parsers.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::registry::Digest;
use crate::registry::manifest::MAX_MANIFEST;
use crate::store::{Access, Committed, Store, StoreError};

/// What a tag resolved to the last time upstream was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    /// The manifest digest.
    pub digest: String,
    /// The manifest's media type.
    pub media_type: String,
    /// The manifest's length.
    pub size: u64,
    /// Unix milliseconds of the last successful validation with upstream.
    pub validated_at_ms: u64,
    /// What upstream said about this answer's freshness (read only under
    /// `tag_ttl_mode = "upstream-first"`).
    #[serde(default, skip_serializing_if = "TagFreshness::is_unstated")]
    pub upstream: TagFreshness,
}

/// Upstream's freshness information for a tag's answer, from the response that validated it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagFreshness {
    /// How long it stays fresh from `validated_at_ms`, when upstream stated it
    /// (`Cache-Control`, `Expires`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// Upstream's `ETag`, sent back as `If-None-Match` when revalidating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

impl TagFreshness {
    /// Upstream said nothing.
    pub fn is_unstated(&self) -> bool {
        self.ttl_ms.is_none() && self.etag.is_none()
    }

    /// The stated lifetime.
    pub fn ttl(&self) -> Option<std::time::Duration> {
        self.ttl_ms.map(std::time::Duration::from_millis)
    }
}

/// A manifest present in the store, with its media type.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// The exact bytes (their digest is the key).
    pub bytes: Bytes,
    /// `Content-Type` to serve it with.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
}

#[derive(Serialize, Deserialize)]
struct ManifestMeta {
    media_type: String,
}

/// Accept key of the tag records `regcache warm` and `regcache cache import` write. A client's
/// own Accept set never produces it (empty media types are dropped, so no key starts with a
/// comma); the cache falls back to it for any client that accepts the recorded media type
/// (see `RegistryCache::manifest_by_tag`), because warm cannot know every client's Accept list.
pub const SEEDED_ACCEPT_KEY: &str = ",seeded";

/// Key of the seeded tag record (see [`SEEDED_ACCEPT_KEY`]).
pub fn seeded_tag_key(registry: &str, repository: &str, tag: &str) -> String {
    tag_key(registry, repository, tag, SEEDED_ACCEPT_KEY)
}

/// Key of a manifest entry.
pub fn manifest_key(registry: &str, repository: &str, digest: &Digest) -> String {
    format!("manifest/{registry}/{repository}@{digest}")
}

/// Key of a tag entry.
pub fn tag_key(registry: &str, repository: &str, tag: &str, accept_key: &str) -> String {
    format!("tag/{registry}/{repository}:{tag}#{accept_key}")
}

fn member_key(registry: &str, repository: &str, digest: &Digest) -> String {
    format!("member/{registry}/{repository}@{digest}")
}

fn public_key(registry: &str, repository: &str) -> String {
    format!("public/{registry}/{repository}")
}

/// What a record key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKey {
    /// `tag/…`.
    Tag {
        /// Canonical registry.
        registry: String,
        /// Repository.
        repository: String,
        /// Tag.
        tag: String,
    },
    /// `manifest/…`.
    Manifest {
        /// Canonical registry.
        registry: String,
        /// Repository.
        repository: String,
        /// The manifest's digest.
        digest: Digest,
    },
    /// `member/…`.
    Member {
        /// Canonical registry.
        registry: String,
        /// Repository.
        repository: String,
        /// The blob's digest.
        digest: Digest,
    },
    /// `public/…`.
    Public {
        /// Canonical registry.
        registry: String,
        /// Repository.
        repository: String,
    },
}

impl RecordKey {
    /// Parses a key written by this module; anything else is `None`.
    pub fn parse(key: &str) -> Option<Self> {
        if let Some(rest) = key.strip_prefix("tag/") {
            // `<registry>/<repo>:<tag>#<accept>`
            let (name, _accept) = rest.split_once('#')?;
            let (registry, path) = name.split_once('/')?;
            let (repository, tag) = path.rsplit_once(':')?;
            return (!repository.is_empty() && !tag.is_empty()).then(|| Self::Tag {
                registry: registry.to_string(),
                repository: repository.to_string(),
                tag: tag.to_string(),
            });
        }
        if let Some(rest) = key.strip_prefix("manifest/") {
            let (registry, repository, digest) = parse_digest_key(rest)?;
            return Some(Self::Manifest {
                registry,
                repository,
                digest,
            });
        }
        if let Some(rest) = key.strip_prefix("member/") {
            let (registry, repository, digest) = parse_digest_key(rest)?;
            return Some(Self::Member {
                registry,
                repository,
                digest,
            });
        }
        let (registry, repository) = key.strip_prefix("public/")?.split_once('/')?;
        Some(Self::Public {
            registry: registry.to_string(),
            repository: repository.to_string(),
        })
    }
}

/// `<registry>/<repo>@<digest>` → parts.
fn parse_digest_key(rest: &str) -> Option<(String, String, Digest)> {
    let (name, digest) = rest.rsplit_once('@')?;
    let (registry, repository) = name.split_once('/')?;
    Some((registry.to_string(), repository.to_string(), digest.parse().ok()?))
}

/// The media type a manifest entry's metadata records.
pub fn manifest_media_type(metadata: &serde_json::Value) -> String {
    metadata
        .get("media_type")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

/// The cache's records over a [`Store`].
#[derive(Debug, Clone)]
pub struct Records {
    store: Store,
}

impl Records {
    /// Records in `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The store they are in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The manifest `digest` as cached for `registry`/`repository`, re-verified.
    pub async fn manifest(&self, registry: &str, repository: &str, digest: &Digest) -> Option<StoredManifest> {
        let entry = self
            .store
            .index()
            .get(&manifest_key(registry, repository, digest))
            .await?;
        let meta: ManifestMeta = serde_json::from_value(entry.metadata).ok()?;
        let bytes = self
            .store
            .blobs()
            .read(digest, MAX_MANIFEST as u64, Access::Use)
            .await
            .ok()??;
        // Manifests are small: verifying on every read costs microseconds.
        if !digest.matches(&bytes) {
            tracing::warn!(%digest, "cached manifest is corrupt; ignoring it");
            return None;
        }
        Some(StoredManifest {
            bytes,
            media_type: meta.media_type,
            digest: digest.clone(),
        })
    }

    /// Stores manifest bytes (which must hash to `digest`) for `registry`/`repository`.
    ///
    /// # Errors
    /// On a digest mismatch or an I/O failure.
    pub async fn put_manifest(
        &self,
        registry: &str,
        repository: &str,
        digest: &Digest,
        media_type: &str,
        bytes: &Bytes,
    ) -> Result<Committed, StoreError> {
        let committed = self.store.put_bytes(digest, bytes).await?;
        let meta = serde_json::to_value(ManifestMeta {
            media_type: media_type.to_string(),
        })
        .map_err(|e| StoreError::Index(e.to_string()))?;
        self.store
            .index()
            .put(
                &manifest_key(registry, repository, digest),
                Some(digest),
                bytes.len() as u64,
                meta,
            )
            .await?;
        Ok(committed)
    }

    /// The last known resolution of a tag for one `Accept` set (`key` from [`tag_key`]).
    pub async fn tag(&self, key: &str) -> Option<TagRecord> {
        let entry = self.store.index().get(key).await?;
        serde_json::from_value(entry.metadata).ok()
    }

    /// Records a tag resolution.
    ///
    /// # Errors
    /// On an I/O failure, or a record whose digest does not parse.
    pub async fn put_tag(&self, key: &str, record: &TagRecord) -> Result<(), StoreError> {
        let digest: Digest = record.digest.parse().map_err(StoreError::Index)?;
        let meta = serde_json::to_value(record).map_err(|e| StoreError::Index(e.to_string()))?;
        self.store.index().put(key, Some(&digest), record.size, meta).await
    }

    /// Forgets a tag resolution (upstream said `no-store`).
    ///
    /// # Errors
    /// On an I/O failure.
    pub async fn forget_tag(&self, key: &str) -> Result<(), StoreError> {
        self.store.index().remove(key).await
    }

    /// Every tag record of `registry`/`repository`:`tag`, one per Accept set clients used, with
    /// its key. Walks the whole index: for one-shot commands (`cache export`), not for requests.
    pub async fn tag_records(&self, registry: &str, repository: &str, tag: &str) -> Vec<(String, TagRecord)> {
        let prefix = tag_key(registry, repository, tag, "");
        let entries = self.store.index().list(&prefix).await.unwrap_or_default();
        entries
            .into_iter()
            .filter_map(|e| Some((e.key, serde_json::from_value(e.metadata).ok()?)))
            .collect()
    }

    /// Records that upstream served `digest` through `registry`/`repository` (see
    /// `repo_access`), so that it is known after a restart.
    ///
    /// # Errors
    /// On an I/O failure.
    pub async fn put_member(&self, registry: &str, repository: &str, digest: &Digest) -> Result<(), StoreError> {
        self.store
            .index()
            .put(
                &member_key(registry, repository, digest),
                Some(digest),
                0,
                serde_json::Value::Null,
            )
            .await
    }

    /// Whether [`Records::put_member`] recorded `digest` in this repository.
    pub async fn is_member(&self, registry: &str, repository: &str, digest: &Digest) -> bool {
        self.store
            .index()
            .get(&member_key(registry, repository, digest))
            .await
            .is_some()
    }

    /// Records that a repository was found public (readable anonymously) now.
    ///
    /// # Errors
    /// On an I/O failure.
    pub async fn put_public(&self, registry: &str, repository: &str) -> Result<(), StoreError> {
        self.store
            .index()
            .put(
                &public_key(registry, repository),
                None,
                0,
                serde_json::json!({ "checked_at_ms": now_ms() }),
            )
            .await
    }

    /// When the repository was last found public, if ever.
    pub async fn public_since(&self, registry: &str, repository: &str) -> Option<u64> {
        let entry = self.store.index().get(&public_key(registry, repository)).await?;
        entry.metadata.get("checked_at_ms")?.as_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Algorithm;

    #[tokio::test]
    async fn manifests_and_tags_are_keyed_per_registry() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(Store::local(dir.path().join("cache")));
        let body = Bytes::from_static(br#"{"schemaVersion":2}"#);
        let digest = Digest::of(Algorithm::Sha256, &body);
        records
            .put_manifest(
                "ghcr.io",
                "org/app",
                &digest,
                "application/vnd.oci.image.manifest.v1+json",
                &body,
            )
            .await
            .unwrap();
        let m = records.manifest("ghcr.io", "org/app", &digest).await.unwrap();
        assert_eq!(m.bytes, body);
        assert_eq!(m.media_type, "application/vnd.oci.image.manifest.v1+json");
        assert!(records.manifest("quay.io", "org/app", &digest).await.is_none());
        let other = Digest::of(Algorithm::Sha256, b"x");
        assert!(
            records
                .put_manifest("ghcr.io", "org/app", &other, "t", &body)
                .await
                .is_err()
        );

        let key = tag_key("ghcr.io", "org/app", "v1", "a,b");
        let rec = TagRecord {
            digest: digest.to_string(),
            media_type: "t".into(),
            size: 19,
            validated_at_ms: 5,
            upstream: TagFreshness::default(),
        };
        records.put_tag(&key, &rec).await.unwrap();
        assert_eq!(records.tag(&key).await.unwrap(), rec);
        assert!(records.tag(&tag_key("quay.io", "org/app", "v1", "a,b")).await.is_none());

        records.put_member("ghcr.io", "org/app", &other).await.unwrap();
        assert!(records.is_member("ghcr.io", "org/app", &other).await);
        assert!(!records.is_member("ghcr.io", "org/other", &other).await);
        assert!(records.public_since("ghcr.io", "org/app").await.is_none());
        records.put_public("ghcr.io", "org/app").await.unwrap();
        assert!(records.public_since("ghcr.io", "org/app").await.is_some());
    }

    #[test]
    fn keys_parse_with_ports_and_nested_repositories() {
        assert_eq!(
            RecordKey::parse("tag/localhost:5000/org/team/app:1.2#application/json,*/*"),
            Some(RecordKey::Tag {
                registry: "localhost:5000".into(),
                repository: "org/team/app".into(),
                tag: "1.2".into()
            })
        );
        assert_eq!(RecordKey::parse("tag/ghcr.io/app#x"), None);
        let d: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        assert_eq!(
            RecordKey::parse(&format!("manifest/ghcr.io/org/app@{d}")),
            Some(RecordKey::Manifest {
                registry: "ghcr.io".into(),
                repository: "org/app".into(),
                digest: d
            })
        );
        assert_eq!(RecordKey::parse("manifest/ghcr.io/org/app@sha256:nothex"), None);
    }

    #[test]
    fn keys_parse_back() {
        let d = Digest::of(Algorithm::Sha256, b"x");
        assert_eq!(
            RecordKey::parse(&tag_key("reg.local:5000", "org/app", "1.0", "a,b")),
            Some(RecordKey::Tag {
                registry: "reg.local:5000".into(),
                repository: "org/app".into(),
                tag: "1.0".into()
            })
        );
        assert_eq!(
            RecordKey::parse(&manifest_key("ghcr.io", "org/app", &d)),
            Some(RecordKey::Manifest {
                registry: "ghcr.io".into(),
                repository: "org/app".into(),
                digest: d.clone()
            })
        );
        assert!(matches!(
            RecordKey::parse(&member_key("ghcr.io", "a/b", &d)),
            Some(RecordKey::Member { .. })
        ));
        assert_eq!(
            RecordKey::parse(&public_key("docker.io", "library/alpine")),
            Some(RecordKey::Public {
                registry: "docker.io".into(),
                repository: "library/alpine".into()
            })
        );
        assert_eq!(RecordKey::parse("tag/ghcr.io/app#x"), None);
        assert_eq!(RecordKey::parse("other/thing"), None);
    }
}

//! `regcache cache verify [--repair]`: re-hash every content file (blobs and manifests) against
//! the digest it is stored under, and with `--repair` remove the corrupt ones with the index
//! entries that lead to them, so that the next pull fetches them again.
//!
//! Content is read as an inspection (`O_NOATIME` for the local store: a check is not a use). A
//! running server is unaffected: content is only read, and a blob committed while the scan
//! runs is either seen whole or not at all. A corrupt blob is removed only if its size and
//! modification time are still those it was listed with, so one replaced in between is left
//! alone.

use std::time::UNIX_EPOCH;

use futures_util::StreamExt as _;
use serde::Serialize;

use crate::catalog::inventory::Inventory;
use crate::catalog::purge::{PurgeError, PurgePlan, PurgeRef};
use crate::registry::Digest;
use crate::store::{Access, BlobInfo, Store};

/// A content file whose bytes do not hash to its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CorruptContent {
    /// The file.
    pub path: String,
    /// The digest it is stored under.
    pub expected: String,
    /// What its bytes hash to (or why they could not be read).
    pub actual: String,
    /// `blob` or `manifest`.
    pub kind: &'static str,
    /// Its length.
    pub size: u64,
    /// Whether `--repair` removed it.
    pub removed: bool,
}

/// The outcome of a verification (also `cache verify --json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Content files hashed.
    pub checked: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Corrupt content files.
    pub corrupt: Vec<CorruptContent>,
    /// Manifest entries whose content file is gone (served as misses; `--repair` removes them).
    pub dangling: Vec<String>,
    /// Files in the content directory whose name is not a digest (left alone).
    pub stray: Vec<String>,
    /// Index entries `--repair` removed.
    pub entries_removed: u64,
    /// Bytes `--repair` freed.
    pub bytes_freed: u64,
    /// What `--repair` could not do.
    pub failed: Vec<String>,
}

impl VerifyReport {
    /// Whether corruption remains (found and not removed).
    pub fn corruption_remains(&self) -> bool {
        self.corrupt.iter().any(|c| !c.removed)
    }
}

/// Re-hashes everything in `store`; removes what is corrupt when `repair`. `found` is called
/// for each corrupt blob as it is found.
///
/// # Errors
/// If the store cannot be read, or a record cannot be removed.
pub async fn verify(
    store: &Store,
    repair: bool,
    mut found: impl FnMut(&CorruptContent),
) -> Result<VerifyReport, PurgeError> {
    let inv = Inventory::read_store(store).await?;
    let manifests = inv.manifest_digests();
    let mut report = VerifyReport {
        stray: inv.stray.clone(),
        ..VerifyReport::default()
    };
    let mut digests: Vec<&Digest> = inv.content.keys().collect();
    digests.sort_by_key(|d| d.to_string());
    // The corrupt ones, with the stamp to remove them by (none when unreadable).
    let mut bad: Vec<(Digest, Option<BlobInfo>)> = Vec::new();
    for d in digests {
        let listed = &inv.content[d];
        let (actual, stamp) = match hash_blob(store, d).await {
            Ok(None) => continue, // removed meanwhile
            Ok(Some((actual, len))) => {
                report.checked += 1;
                report.bytes += len;
                if actual == *d {
                    continue;
                }
                let stamp = BlobInfo {
                    digest: d.clone(),
                    len,
                    last_used: UNIX_EPOCH,
                    modified: listed.modified,
                };
                (actual.to_string(), Some(stamp))
            }
            Err(e) => (format!("unreadable: {e}"), None),
        };
        let c = CorruptContent {
            path: store.blobs().location(d),
            expected: d.to_string(),
            actual,
            kind: if manifests.contains(d) { "manifest" } else { "blob" },
            size: listed.size,
            removed: false,
        };
        found(&c);
        report.corrupt.push(c);
        bad.push((d.clone(), stamp));
    }
    let dangling: Vec<&crate::catalog::inventory::ManifestEntry> = inv
        .manifests
        .iter()
        .filter(|m| !inv.content.contains_key(&m.digest))
        .collect();
    report.dangling = dangling.iter().map(|m| m.key.clone()).collect();
    if !repair {
        return Ok(report);
    }
    for (i, (d, stamp)) in bad.iter().enumerate() {
        // Unreadable: nothing better will come of keeping it.
        let still_there = store.blobs().stat(d).await.is_some();
        let unchanged = match stamp {
            Some(s) => store.blobs().delete(d, Some(s)).await.unwrap_or(false),
            None => still_there,
        };
        if !unchanged {
            if still_there {
                tracing::warn!(location = %store.blobs().location(d), "content changed while being verified; left alone");
            }
            continue;
        }
        let plan = PurgePlan::new(&inv, &PurgeRef::Digest(d.clone()), &format!("verify --repair {d}"));
        let removed = plan.execute(store).await?;
        report.entries_removed += (removed.tags.len() + removed.manifests.len()) as u64 + removed.repository_records;
        // The corrupt blob itself was removed above (if unchanged), before the plan ran.
        report.bytes_freed += removed.bytes_freed + stamp.as_ref().map_or(0, |s| s.len);
        report.failed.extend(removed.failed);
        report.corrupt[i].removed = store.blobs().stat(d).await.is_none();
    }
    for m in &dangling {
        store.index().remove(&m.key).await?;
        report.entries_removed += 1;
    }
    if !dangling.is_empty()
        && let Err(e) = store
            .index()
            .announce_purge("verify --repair: dangling manifest entries")
    {
        report.failed.push(e);
    }
    Ok(report)
}

/// The digest of a blob's bytes (same algorithm as `expected`) and its length; `None` when it
/// no longer exists.
async fn hash_blob(store: &Store, expected: &Digest) -> Result<Option<(Digest, u64)>, String> {
    let Some(mut reader) = store
        .blobs()
        .open(expected, 0, None, Access::Inspect)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let mut hasher = expected.hasher();
    let mut len = 0u64;
    while let Some(chunk) = reader.stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        hasher.update(&chunk);
        len += chunk.len() as u64;
    }
    Ok(Some((hasher.finish(), len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    use crate::cache::{Records, TagFreshness, TagRecord, tag_key};
    use crate::registry::Algorithm;
    use crate::store::LocalStore;

    #[tokio::test]
    async fn corrupt_content_is_reported_then_removed_with_what_leads_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let local = LocalStore::new(root.clone());
        let store = Records::new(Store::local(root));
        let mut digests = Vec::new();
        for data in [vec![5u8; 2 << 20], vec![6u8; 1000]] {
            let d = Digest::of(Algorithm::Sha256, &data);
            let mut w = store.store().create_blob(&d, None).await.unwrap();
            w.write(Bytes::from(data)).await.unwrap();
            w.commit().await.unwrap();
            digests.push(d);
        }
        let manifest = format!(r#"{{"layers":[{{"digest":"{}"}}]}}"#, digests[0]);
        let md = Digest::of(Algorithm::Sha256, manifest.as_bytes());
        store
            .put_manifest("ghcr.io", "org/app", &md, "t", &Bytes::from(manifest.clone()))
            .await
            .unwrap();
        let record = TagRecord {
            digest: md.to_string(),
            media_type: "t".into(),
            size: manifest.len() as u64,
            validated_at_ms: 1,
            upstream: TagFreshness::default(),
        };
        store
            .put_tag(&tag_key("ghcr.io", "org/app", "1", "x"), &record)
            .await
            .unwrap();

        let clean = verify(store.store(), false, |_| panic!("nothing is corrupt"))
            .await
            .unwrap();
        assert_eq!(clean.checked, 3);
        assert!(clean.corrupt.is_empty() && !clean.corruption_remains());

        // Flip one byte of the big blob and of the manifest.
        for d in [&digests[0], &md] {
            let path = local.content_path(d);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[7] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
        }
        let mut seen = Vec::new();
        let report = verify(store.store(), false, |c| seen.push(c.expected.clone()))
            .await
            .unwrap();
        assert_eq!(seen.len(), 2);
        assert!(report.corruption_remains());
        let blob = report.corrupt.iter().find(|c| c.kind == "blob").unwrap();
        assert_eq!(blob.expected, digests[0].to_string());
        assert_ne!(blob.actual, blob.expected);
        assert!(blob.path.ends_with(&digests[0].hex()[4..]));
        assert!(report.corrupt.iter().any(|c| c.kind == "manifest"));

        let repaired = verify(store.store(), true, |_| {}).await.unwrap();
        assert!(!repaired.corruption_remains(), "{repaired:?}");
        assert!(repaired.bytes_freed >= 2 << 20);
        assert!(store.store().blobs().stat(&digests[0]).await.is_none());
        assert!(
            store.store().blobs().stat(&digests[1]).await.is_some(),
            "intact content stays"
        );
        assert!(store.tag(&tag_key("ghcr.io", "org/app", "1", "x")).await.is_none());
        let again = verify(store.store(), false, |_| {}).await.unwrap();
        assert_eq!((again.checked, again.corrupt.len()), (1, 0));
    }
}

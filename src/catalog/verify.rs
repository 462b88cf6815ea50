//! `regcache cache verify [--repair]`: re-hash every content file (blobs and manifests) against
//! the digest it is stored under, and with `--repair` remove the corrupt ones with the index
//! entries that lead to them, so that the next pull fetches them again.
//!
//! Content files are read with `O_NOATIME` (a check is not a use). A running server is
//! unaffected: files are only read, and a file renamed into place while the scan runs is either
//! seen whole or not at all. Before removing a corrupt file, its size and modification time are
//! compared with what was hashed, so a file replaced in between is left alone.

use std::io::{self, Read as _};
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use crate::cache::purge_notice::announce;
use crate::catalog::inventory::{Inventory, open_noatime};
use crate::catalog::purge::{PurgeError, PurgePlan, PurgeRef};
use crate::registry::digest::Digest;

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

/// Re-hashes everything under the cache directory `root`; removes what is corrupt when
/// `repair`. `found` is called for each corrupt file as it is found. Blocking.
///
/// # Errors
/// If the store cannot be read, or an index entry cannot be removed.
pub fn verify(root: &Path, repair: bool, mut found: impl FnMut(&CorruptContent)) -> Result<VerifyReport, PurgeError> {
    let inv = Inventory::read_store(root)?;
    let manifests = inv.manifest_digests();
    let mut report = VerifyReport {
        stray: inv.stray.iter().map(|p| p.display().to_string()).collect(),
        ..VerifyReport::default()
    };
    let mut digests: Vec<&Digest> = inv.content.keys().collect();
    digests.sort_by_key(|d| d.to_string());
    let mut bad: Vec<(Digest, Option<(u64, SystemTime)>)> = Vec::new();
    for d in digests {
        let path = inv.content_path(d);
        let (actual, stamp) = match hash_file(&path, d) {
            Ok(None) => continue, // removed meanwhile
            Ok(Some((actual, len, stamp))) => {
                report.checked += 1;
                report.bytes += len;
                if actual == *d {
                    continue;
                }
                (actual.to_string(), Some((len, stamp)))
            }
            Err(e) => (format!("unreadable: {e}"), None),
        };
        let c = CorruptContent {
            path: path.display().to_string(),
            expected: d.to_string(),
            actual,
            kind: if manifests.contains(d) { "manifest" } else { "blob" },
            size: inv.content.get(d).map_or(0, |c| c.size),
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
        let path = inv.content_path(d);
        let unchanged = match (stamp, std::fs::metadata(&path)) {
            (Some((len, mtime)), Ok(m)) => m.len() == *len && m.modified().ok() == Some(*mtime),
            // Unreadable: nothing better will come of keeping it.
            (None, Ok(_)) => true,
            (_, Err(_)) => false,
        };
        if !unchanged {
            tracing::warn!(path = %path.display(), "content changed while being verified; left alone");
            continue;
        }
        let plan = PurgePlan::new(&inv, &PurgeRef::Digest(d.clone()), &format!("verify --repair {d}"));
        let removed = plan.execute(root)?;
        report.entries_removed += (removed.tags.len() + removed.manifests.len()) as u64 + removed.repository_records;
        report.bytes_freed += removed.bytes_freed;
        report.failed.extend(removed.failed);
        report.corrupt[i].removed = !path.exists();
    }
    for m in &dangling {
        cacache::index::delete(root, &m.key).map_err(|e| PurgeError::Index(e.to_string()))?;
        report.entries_removed += 1;
    }
    if !dangling.is_empty()
        && let Err(e) = announce(root, "verify --repair: dangling manifest entries")
    {
        report.failed.push(e);
    }
    Ok(report)
}

/// The digest of a file's bytes (same algorithm as `expected`), its length and modification
/// time; `None` when it no longer exists.
fn hash_file(path: &Path, expected: &Digest) -> io::Result<Option<(Digest, u64, SystemTime)>> {
    let mut file = match open_noatime(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let mut hasher = expected.hasher();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok(Some((hasher.finish(), len, meta.modified()?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    use crate::registry::digest::Algorithm;
    use crate::store::local::{ContentStore, TagRecord, tag_key};

    #[tokio::test]
    async fn corrupt_content_is_reported_then_removed_with_what_leads_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let store = ContentStore::new(root.clone());
        let mut digests = Vec::new();
        for data in [vec![5u8; 2 << 20], vec![6u8; 1000]] {
            let d = Digest::of(Algorithm::Sha256, &data);
            let mut w = store.blob_writer(&d, None).await.unwrap();
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
        };
        store
            .put_tag(&tag_key("ghcr.io", "org/app", "1", "x"), &record)
            .await
            .unwrap();

        let clean = verify(&root, false, |_| panic!("nothing is corrupt")).unwrap();
        assert_eq!(clean.checked, 3);
        assert!(clean.corrupt.is_empty() && !clean.corruption_remains());

        // Flip one byte of the big blob and of the manifest.
        for d in [&digests[0], &md] {
            let path = store.content_path(d);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[7] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
        }
        let mut seen = Vec::new();
        let report = verify(&root, false, |c| seen.push(c.expected.clone())).unwrap();
        assert_eq!(seen.len(), 2);
        assert!(report.corruption_remains());
        let blob = report.corrupt.iter().find(|c| c.kind == "blob").unwrap();
        assert_eq!(blob.expected, digests[0].to_string());
        assert_ne!(blob.actual, blob.expected);
        assert!(blob.path.ends_with(&digests[0].hex()[4..]));
        assert!(report.corrupt.iter().any(|c| c.kind == "manifest"));

        let repaired = verify(&root, true, |_| {}).unwrap();
        assert!(!repaired.corruption_remains(), "{repaired:?}");
        assert!(repaired.bytes_freed >= 2 << 20);
        assert!(store.blob(&digests[0]).await.is_none());
        assert!(store.blob(&digests[1]).await.is_some(), "intact content stays");
        assert!(store.tag(&tag_key("ghcr.io", "org/app", "1", "x")).await.is_none());
        let again = verify(&root, false, |_| {}).unwrap();
        assert_eq!((again.checked, again.corrupt.len()), (1, 0));
    }
}

//! The bucket's records ([`EntryIndex`] for [`S3Store`]): one small JSON object per key under
//! `index/`, named by the key's readable start and a hash of it, replaced whole by each write
//! (a reader sees the old record or the new one, never a mix).

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use futures_util::StreamExt as _;
use object_store::ObjectStore as _;
use object_store::ObjectStoreExt as _;
use object_store::PutPayload;
use object_store::path::Path as ObjectPath;

use crate::registry::Digest;
use crate::store::s3::{S3Store, client, not_found};
use crate::store::{Entry, EntryIndex, StoreError};

/// Bytes of an index object's readable name part (keys can be long: a tag's names its
/// clients' Accept list; S3 allows 1024 bytes a key, SeaweedFS 255 a name).
const READABLE: usize = 160;

/// The readable start of a key's object name: the key up to its first `#` (a tag key's Accept
/// list follows it), bytes other than letters, digits, `.`, `-`, `_` written `=XX`, cut at
/// [`READABLE`]. A key's prefix (up to a `#`) gives a prefix of its name, which `list` uses;
/// the full key is in the record, and the hash after the name tells keys apart.
fn readable_part(key: &str) -> String {
    let head = key.split('#').next().unwrap_or(key);
    let mut out = String::with_capacity(head.len().min(READABLE));
    for b in head.bytes() {
        if out.len() >= READABLE {
            break;
        }
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out.truncate(READABLE);
    out
}

impl S3Store {
    fn entry_path(&self, key: &str) -> ObjectPath {
        use sha2::Digest as _;
        let hash = sha2::Sha256::digest(key.as_bytes());
        let hash: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.prefix
            .clone()
            .join("index")
            .join(format!("{}+{hash}", readable_part(key)))
    }
}

/// One record as stored in its object.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredEntry {
    key: String,
    digest: Option<String>,
    size: u64,
    metadata: serde_json::Value,
    written_ms: u64,
}

impl StoredEntry {
    fn entry(self) -> Entry {
        Entry {
            key: self.key,
            digest: self.digest.and_then(|d| d.parse().ok()),
            size: self.size,
            metadata: self.metadata,
            written_ms: self.written_ms,
        }
    }
}

impl S3Store {
    async fn entry_at(&self, path: &ObjectPath) -> Option<Entry> {
        let bytes = self
            .counted("get", self.objects.get(path).await)
            .ok()?
            .bytes()
            .await
            .ok()?;
        serde_json::from_slice::<StoredEntry>(&bytes)
            .ok()
            .map(StoredEntry::entry)
    }
}

#[async_trait::async_trait]
impl EntryIndex for S3Store {
    async fn get(&self, key: &str) -> Option<Entry> {
        self.entry_at(&self.entry_path(key)).await
    }

    async fn put(
        &self,
        key: &str,
        digest: Option<&Digest>,
        size: u64,
        metadata: serde_json::Value,
    ) -> Result<(), StoreError> {
        let written_ms = crate::clock::now_ms();
        let record = StoredEntry {
            key: key.to_string(),
            digest: digest.map(ToString::to_string),
            size,
            metadata,
            written_ms,
        };
        let json = serde_json::to_vec(&record).map_err(|e| StoreError::Index(e.to_string()))?;
        let path = self.entry_path(key);
        let put = self.objects.put(&path, PutPayload::from(json)).await;
        self.counted("put", put).map_err(|e| self.err(&path, e))?;
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<(), StoreError> {
        let path = self.entry_path(key);
        match self.counted("delete", self.objects.delete(&path).await) {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(self.err(&path, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let root = self.prefix.clone().join("index");
        let wanted = readable_part(prefix);
        let mut paths = Vec::new();
        self.counter.request("list", true);
        let mut objects = self.objects.list(Some(&root));
        while let Some(meta) = objects.next().await {
            let meta = meta.map_err(|e| StoreError::Index(e.to_string()))?;
            if meta.location.filename().is_some_and(|name| name.starts_with(&wanted)) {
                paths.push(meta.location);
            }
        }
        let entries = futures_util::stream::iter(paths)
            .map(|p| async move { self.entry_at(&p).await })
            .buffer_unordered(16)
            .filter_map(|e| async move { e.filter(|e| e.key.starts_with(prefix)) })
            .collect::<Vec<_>>()
            .await;
        Ok(entries)
    }

    async fn footprint(&self) -> u64 {
        let root = self.prefix.clone().join("index");
        self.objects
            .list(Some(&root))
            .filter_map(|m| async move { m.ok().map(|m| m.size) })
            .fold(0, |sum, s| async move { sum + s })
            .await
    }

    fn announce_purge(&self, what: &str) -> Result<(), String> {
        // Called from synchronous code (the CLI, the admin API): a client of its own on a
        // thread of its own, so no runtime is blocked or needed.
        let options = self.options.clone();
        let path = self.purge_path();
        let body = format!(
            "{what} {}\n",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let put = std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let client = client(&options).map_err(|e| e.to_string())?;
                client
                    .put(&path, PutPayload::from(body.into_bytes()))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        });
        put.join()
            .map_err(|_| "the purge mark writer panicked".to_string())?
            .map_err(|e| {
                format!("running replicas learn of it only when their copies expire: cannot write the purge mark: {e}")
            })
    }

    fn purge_mark(&self) -> u64 {
        self.purge_seen.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_prefix_gives_a_name_prefix_and_names_stay_short() {
        let accept = "application/vnd.oci.image.index.v1+json,".repeat(20);
        let key = format!("tag/ghcr.io/org/app:1.0#{accept}");
        let prefix = "tag/ghcr.io/org/app:1.0#";
        assert!(readable_part(&key).starts_with(&readable_part(prefix)));
        assert!(readable_part(&key).starts_with(&readable_part("tag/ghcr.io/")));
        assert!(readable_part(&key).len() <= READABLE);
        let long = format!("repo/{}", "a/".repeat(300));
        assert!(readable_part(&long).starts_with(&readable_part("repo/a/a/")));
        assert_eq!(readable_part("tag/x:1"), "tag=2Fx=3A1");
    }
}

//! When content in the bucket was last used. Objects have no access time that a GET updates,
//! so a replica that served a blob writes an empty marker `used/<algorithm>/<hex>`, at most
//! once per `USE_MARK_EVERY` (an hour) per blob and replica (a blob pulled a thousand times an
//! hour costs one PUT, not a thousand). A blob's last use is the later of its write and its
//! marker: eviction on the bucket goes least recently *used* first, across the fleet.

use std::collections::HashMap;
use std::time::SystemTime;

use futures_util::StreamExt as _;
use object_store::{ObjectStoreExt as _, PutPayload};

use crate::registry::Digest;
use crate::store::StoreError;
use crate::store::s3::{S3Store, not_found, system_time};

/// Markers written at once.
const PARALLEL_MARKS: usize = 8;

impl S3Store {
    /// Writes the use markers of `digests` that this replica has not written lately.
    pub(super) async fn mark_used(&self, digests: Vec<Digest>) {
        let due: Vec<Digest> = digests.into_iter().filter(|d| !self.marked.contains_key(d)).collect();
        futures_util::stream::iter(due)
            .for_each_concurrent(PARALLEL_MARKS, |digest| async move {
                let path = self.digest_path("used", &digest);
                match self.counted("put", self.objects.put(&path, PutPayload::new()).await) {
                    Ok(_) => self.marked.insert(digest, ()),
                    Err(e) => tracing::debug!(%digest, error = %e, "cannot mark a blob used in the bucket"),
                }
            })
            .await;
    }

    /// Every use marker: when each blob was last marked used.
    ///
    /// # Errors
    /// If the markers cannot be listed.
    pub(super) async fn last_uses(&self) -> Result<HashMap<Digest, SystemTime>, StoreError> {
        let (found, _) = self.list_digests("used").await?;
        Ok(found
            .into_iter()
            .map(|(digest, meta)| (digest, system_time(meta.last_modified.timestamp_millis())))
            .collect())
    }

    /// Removes the use marker of a blob that is gone.
    pub(super) async fn forget_use(&self, digest: &Digest) {
        let path = self.digest_path("used", digest);
        self.marked.invalidate(digest);
        let deleted = self.objects.delete(&path).await;
        if let Err(e) = self.counted("delete", deleted)
            && !not_found(&e)
        {
            tracing::debug!(%digest, error = %e, "cannot remove a blob's use marker");
        }
    }
}

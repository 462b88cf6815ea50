//! Fleet-wide single flight on the bucket: before a replica downloads a blob it creates
//! `leases/<algorithm>/<hex>` with a create-only PUT (`If-None-Match: *`); one replica wins,
//! the others see who holds it and until when. The holder rewrites the lease every third of
//! its life; a lease not renewed (its holder died mid-blob) is taken over with a PUT that
//! succeeds only if the lease is still the one read (`If-Match`), so two replicas never both
//! take it. The lease is deleted when the holder commits the blob or gives up. A holder with a
//! peer endpoint (`--peer-advertise`) names it in the lease, so the others can stream the
//! blob from it while it downloads.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore as _, ObjectStoreExt as _, PutMode, PutOptions, PutPayload, UpdateVersion};

use crate::registry::Digest;
use crate::store::s3::S3Store;
use crate::store::{Claim, Lease, StoreError};

/// What a lease object holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct LeaseRecord {
    holder: String,
    expires_ms: u64,
    /// The holder's peer endpoint, where the blob in flight can be streamed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer: Option<String>,
}

/// This process, as lease holders are named: `host:pid:random`.
fn holder_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        format!(
            "{}:{}:{:08x}",
            crate::os::hostname(),
            std::process::id(),
            rand::random::<u32>()
        )
    })
}

impl S3Store {
    /// [`crate::store::BlobStore::claim`] for the bucket.
    pub(super) async fn claim_blob(&self, digest: &Digest) -> Result<Claim, StoreError> {
        self.claim_at(self.digest_path("leases", digest), &digest.to_string())
            .await
    }

    /// [`crate::store::BlobStore::claim_eviction`] for the bucket: the `leases/evictor` lease.
    pub(super) async fn claim_eviction_pass(&self) -> Option<Lease> {
        let path = self.prefix.clone().join("leases").join("evictor");
        match self.claim_at(path, "eviction").await {
            Ok(Claim::Won(l) | Claim::TakenOver(l)) => Some(l),
            Ok(Claim::Held { holder, .. }) => {
                tracing::debug!(holder, "another replica is evicting from the bucket");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim the eviction lease; no eviction pass");
                None
            }
        }
    }

    /// Claims the lease object `path` (about `what`, for logs).
    async fn claim_at(&self, path: ObjectPath, what: &str) -> Result<Claim, StoreError> {
        // A lease deleted between our failed create and our read: try again, a few times.
        for _ in 0..3 {
            let create = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            let created = self.objects.put_opts(&path, self.lease_body(), create).await;
            // Losing the race is an answer, not a failed request.
            self.counter.request("put", !matches!(&created, Err(e) if !conflict(e)));
            match created {
                Ok(_) => return Ok(Claim::Won(self.hold(path))),
                Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {}
                Err(e) => return Err(self.err(&path, e)),
            }
            let got = match self.counted("get", self.objects.get(&path).await) {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(self.err(&path, e)),
            };
            let version = UpdateVersion {
                e_tag: got.meta.e_tag.clone(),
                version: got.meta.version.clone(),
            };
            let bytes = got.bytes().await.map_err(|e| self.err(&path, e))?;
            let record: Option<LeaseRecord> = serde_json::from_slice(&bytes).ok();
            let expires_ms = record.as_ref().map_or(0, |r| r.expires_ms);
            if expires_ms > crate::clock::now_ms() {
                let (holder, peer) = record.map_or_else(|| (String::new(), None), |r| (r.holder, r.peer));
                return Ok(Claim::Held {
                    holder,
                    expires: SystemTime::UNIX_EPOCH + Duration::from_millis(expires_ms),
                    peer,
                });
            }
            // Lapsed: its holder stopped renewing it. Take it over if nobody did meanwhile.
            let take = PutOptions {
                mode: PutMode::Update(version),
                ..PutOptions::default()
            };
            let taken = self.objects.put_opts(&path, self.lease_body(), take).await;
            self.counter.request("put", !matches!(&taken, Err(e) if !conflict(e)));
            match taken {
                Ok(_) => {
                    tracing::warn!(
                        lease = what,
                        from = record.as_ref().map_or("", |r| r.holder.as_str()),
                        lapsed_ms = crate::clock::now_ms().saturating_sub(expires_ms),
                        "took over a lapsed lease (its holder stopped renewing it)"
                    );
                    return Ok(Claim::TakenOver(self.hold(path)));
                }
                Err(object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(self.err(&path, e)),
            }
        }
        Err(StoreError::Index(format!("the download lease {path} keeps changing")))
    }

    /// A held lease: renewed every third of its life by a task, deleted on release.
    fn hold(&self, path: ObjectPath) -> Lease {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return Lease::none();
        };
        let objects = self.objects.clone();
        let every = self.options.lease_ttl / 3;
        let (ttl, peer) = (self.options.lease_ttl, self.options.peer_advertise.clone());
        let renew = {
            let (objects, path) = (objects.clone(), path.clone());
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = objects.put(&path, self_body(ttl, peer.clone())).await {
                        tracing::warn!(lease = %path, error = %e, "cannot renew a download lease");
                    }
                }
            })
        };
        Lease::new(move || {
            renew.abort();
            async move {
                let _ = objects.delete(&path).await;
            }
        })
    }
}

/// A conditional PUT that lost: the object exists, or changed since it was read.
fn conflict(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotFound { .. }
    )
}

impl S3Store {
    /// A lease record of this process, valid for the lease's life from now.
    fn lease_body(&self) -> PutPayload {
        self_body(self.options.lease_ttl, self.options.peer_advertise.clone())
    }
}

/// A lease record of this process (reachable at `peer`), valid for `ttl` from now.
fn self_body(ttl: Duration, peer: Option<String>) -> PutPayload {
    let record = LeaseRecord {
        holder: holder_name().to_string(),
        expires_ms: crate::clock::now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
        peer,
    };
    PutPayload::from(serde_json::to_vec(&record).unwrap_or_default())
}

//! What a blob download is made of: the job a download task gets, how it began (told to the
//! request that started it), where its bytes come from, and the loop that streams a source
//! into the spool while readers follow — shared by a replica's own download
//! ([`super::download`]) and its copy of another replica's ([`super::peer`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use http::{HeaderMap, Response, Uri};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use crate::cache::StoreHealth;
use crate::cache::downloads::DownloadHandle;
use crate::cache::eviction::Evictor;
use crate::error::ProxyError;
use crate::registry::Digest;
use crate::store::{BlobWriter, Store};
use crate::telemetry::{BodyKind, Metrics};
use crate::upstream::{PeerClient, Requester};

/// How a blob download began, told to the request that started it.
pub(super) enum Started {
    /// Upstream answered 200; bytes are flowing into the download.
    Streaming,
    /// Another replica is downloading it for its own client; its bytes are flowing into this
    /// replica's copy (this client must still be allowed to read the blob).
    Copying,
    /// Another replica on the same store downloaded it: it is in the store now.
    Committed,
    /// The store cannot be written: fetch for yourself.
    StoreUnavailable,
    /// Upstream answered something else (401, 404, …): pass it on.
    Refused(Response<Incoming>),
    /// Upstream could not be reached.
    Failed(ProxyError),
}

/// Everything the download task needs.
pub(super) struct DownloadJob {
    pub(super) evictor: Arc<Evictor>,
    pub(super) upstream: Requester,
    pub(super) store: Store,
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: Arc<StoreHealth>,
    pub(super) url: Uri,
    pub(super) headers: HeaderMap,
    pub(super) handle: DownloadHandle,
    pub(super) idle: Duration,
    pub(super) digest: Digest,
    pub(super) reply: tokio::sync::oneshot::Sender<Started>,
    /// The other replicas of a fleet, when they stream blobs in flight to each other.
    pub(super) peers: Option<PeerClient>,
}

/// Where the bytes of a blob come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The registry (counted as upstream bytes).
    Upstream,
    /// Another replica downloading it, or the store: not upstream traffic.
    Fleet,
}

/// A body's bytes, with errors as one type.
pub(super) type ByteSource = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, String>> + Send>>;

impl Source {
    /// The data of `body`, without its first `skip` bytes (a source that sent the blob from
    /// its start when asked for the rest), counted as upstream bytes if they are.
    pub(super) fn bytes<B>(self, body: B, skip: u64, metrics: &Arc<Metrics>) -> ByteSource
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let metrics = (self == Source::Upstream).then(|| metrics.clone());
        let mut left = skip;
        Box::pin(body.into_data_stream().map(move |chunk| {
            let mut chunk = chunk.map_err(|e| e.to_string())?;
            if let Some(m) = &metrics {
                m.upstream_bytes(BodyKind::Blob, chunk.len() as u64);
            }
            if left > 0 {
                let drop = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
                left -= drop as u64;
                chunk = chunk.slice(drop..);
            }
            Ok(chunk)
        }))
    }
}

/// Why a source stopped before its end.
pub(super) enum Broke {
    /// It sent nothing for the idle timeout.
    Stalled,
    /// It closed the connection or failed.
    Cut,
    /// The spool could not be written.
    Write,
}

impl Broke {
    pub(super) fn why(&self) -> &'static str {
        match self {
            Self::Stalled => "upstream stalled",
            Self::Cut => "upstream closed the connection mid-blob",
            Self::Write => "cache write failed",
        }
    }
}

/// Streams `source` into the spool to its end, publishing progress to readers.
pub(super) async fn feed(
    handle: &DownloadHandle,
    writer: &mut BlobWriter,
    mut source: ByteSource,
    idle: Duration,
    digest: &Digest,
) -> Result<(), Broke> {
    loop {
        // `None` once the source has sent everything: then whatever is gathered is written out.
        let data = match tokio::time::timeout(idle, source.next()).await {
            Err(_) => {
                tracing::warn!(%digest, "source stalled mid-blob");
                return Err(Broke::Stalled);
            }
            Ok(None) => None,
            Ok(Some(Err(e))) => {
                tracing::warn!(%digest, error = %e, "source broke off mid-blob");
                return Err(Broke::Cut);
            }
            Ok(Some(Ok(data))) => Some(data),
        };
        let at_end = data.is_none();
        let written = match data {
            Some(data) => writer.write(data).await,
            None => writer.flush().await,
        };
        match written {
            Ok(chunks) => handle.append(chunks),
            Err(e) => {
                tracing::error!(%digest, error = %e, "cache write failed mid-blob; discarding");
                return Err(Broke::Write);
            }
        }
        if at_end {
            return Ok(());
        }
    }
}

/// The store cannot be written: the download is given up and the request that started it
/// fetches the blob for itself (passed through, as with a broken disk).
pub(super) fn store_unavailable(
    e: &crate::store::StoreError,
    health: &StoreHealth,
    handle: DownloadHandle,
    reply: tokio::sync::oneshot::Sender<Started>,
) {
    health.failed(e);
    handle.abandon();
    let _ = reply.send(Started::StoreUnavailable);
}

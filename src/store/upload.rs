//! A blob's bytes handed to the backend while they are still arriving (a multipart upload to
//! a bucket), so that committing a large blob costs no second transfer after the download.
//! The upload becomes the stored blob only when the writer has verified length and digest
//! ([`UploadFeed::finish`] with `true`); anything else aborts it, and a multipart upload is
//! invisible until completed, so nothing unverified is ever seen under a digest.
//!
//! The feed never makes the download wait for the backend: it queues a bounded number of
//! chunks, and when the backend falls behind it gives up (the blob is then uploaded from the
//! spool file at commit, as without a feed).

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

/// Chunks (write batches, up to 512 KiB each) queued for the backend before the feed gives up.
pub(crate) const FEED_QUEUE: usize = 32;

/// The writer's end of an upload in progress.
#[derive(Debug)]
pub struct UploadFeed {
    chunks: Option<mpsc::Sender<Bytes>>,
    verdict: Option<oneshot::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

/// What the backend's upload task gets: the chunks, then whether to complete.
pub struct UploadSource {
    /// The blob's bytes, in order; ends when the writer is done writing.
    pub chunks: mpsc::Receiver<Bytes>,
    /// `true`: complete the upload (verified); `false` or dropped: abort it.
    pub verdict: oneshot::Receiver<bool>,
}

impl UploadFeed {
    /// A feed and the source its backend task reads; the task's handle is given to
    /// [`UploadFeed::with_task`].
    pub fn channel() -> (Self, UploadSource) {
        let (tx, rx) = mpsc::channel(FEED_QUEUE);
        let (vtx, vrx) = oneshot::channel();
        (
            Self {
                chunks: Some(tx),
                verdict: Some(vtx),
                task: None,
            },
            UploadSource {
                chunks: rx,
                verdict: vrx,
            },
        )
    }

    /// The feed, with the task that uploads what it is fed.
    pub fn with_task(mut self, task: tokio::task::JoinHandle<Result<(), String>>) -> Self {
        self.task = Some(task);
        self
    }

    /// Hands over chunks that reached the spool file; gives up (for good) if the backend is
    /// behind or gone.
    pub fn feed(&mut self, chunks: impl IntoIterator<Item = Bytes>) {
        let Some(tx) = &self.chunks else {
            return;
        };
        for chunk in chunks {
            if tx.try_send(chunk).is_err() {
                tracing::debug!("the store fell behind the download; uploading from the spool at commit instead");
                self.give_up();
                return;
            }
        }
    }

    /// Whether bytes still go to the backend.
    pub fn live(&self) -> bool {
        self.chunks.is_some()
    }

    fn give_up(&mut self) {
        self.chunks = None;
        if let Some(v) = self.verdict.take() {
            let _ = v.send(false);
        }
    }

    /// Ends the feed: with `verified`, completes the upload and says whether the backend now
    /// holds the blob; otherwise aborts it.
    pub async fn finish(mut self, verified: bool) -> bool {
        let live = self.live();
        self.chunks = None;
        if let Some(v) = self.verdict.take() {
            let _ = v.send(verified && live);
        }
        let Some(task) = self.task.take() else {
            return false;
        };
        match task.await {
            Ok(Ok(())) => verified && live,
            Ok(Err(e)) => {
                if verified && live {
                    tracing::debug!(error = %e, "upload during the download failed; uploading from the spool");
                }
                false
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend task that collects what it is fed, and keeps it only when told to complete.
    fn collecting(source: UploadSource) -> tokio::task::JoinHandle<Result<(), String>> {
        tokio::spawn(async move {
            let UploadSource { mut chunks, verdict } = source;
            let mut got = Vec::new();
            while let Some(c) = chunks.recv().await {
                got.extend_from_slice(&c);
            }
            match verdict.await {
                Ok(true) if got == b"abcdef" => Ok(()),
                Ok(true) => Err("wrong bytes".into()),
                _ => Err("aborted".into()),
            }
        })
    }

    #[tokio::test]
    async fn only_a_verified_feed_is_completed() {
        let (mut feed, source) = UploadFeed::channel();
        feed = feed.with_task(collecting(source));
        feed.feed([Bytes::from_static(b"abc"), Bytes::from_static(b"def")]);
        assert!(feed.finish(true).await);
        let (mut feed, source) = UploadFeed::channel();
        feed = feed.with_task(collecting(source));
        feed.feed([Bytes::from_static(b"abcdef")]);
        assert!(!feed.finish(false).await, "not verified: aborted");
    }

    #[tokio::test]
    async fn a_backend_that_falls_behind_is_given_up_not_waited_for() {
        let (mut feed, source) = UploadFeed::channel();
        // A backend that reads nothing until the end.
        let task = tokio::spawn(async move {
            let UploadSource { chunks, verdict } = source;
            let v = verdict.await;
            drop(chunks);
            match v {
                Ok(true) => Ok(()),
                _ => Err("aborted".into()),
            }
        });
        feed = feed.with_task(task);
        feed.feed((0..FEED_QUEUE + 1).map(|_| Bytes::from_static(b"x")));
        assert!(!feed.live(), "queue full: given up without blocking");
        assert!(!feed.finish(true).await, "the spool is uploaded at commit instead");
    }
}

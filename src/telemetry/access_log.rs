//! One log line per request: who, where, what, the outcome, status, bytes and time.
//!
//! The line is written when the response body ends (or is dropped, for an aborted transfer),
//! so `bytes` and `ms` cover the whole transfer, not just the headers.

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Method;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::body::{Body, BoxError};
use crate::telemetry::Metrics;

/// Which listener a request came in on: the forward proxy (`HTTPS_PROXY`) or the registry
/// mirror. A metrics label and a field of the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Listener {
    /// The forward proxy.
    #[default]
    Proxy,
    /// The registry-mirror endpoint.
    Mirror,
}

impl Listener {
    /// Lower-case word used in log lines and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::Mirror => "mirror",
        }
    }
}

/// What regcache did with a request, as written in logs (and later in `X-Cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served from the cache.
    Hit,
    /// Fetched from upstream and stored.
    Miss,
    /// Cached entry confirmed by upstream.
    Revalidated,
    /// Cached entry served because upstream failed.
    Stale,
    /// Passed to upstream without caching.
    Bypass,
    /// CONNECT relayed byte for byte.
    Tunnel,
    /// CONNECT terminated with a minted certificate.
    Intercept,
    /// Refused by policy.
    Deny,
    /// Answered by regcache itself (banner, health, CA).
    Local,
    /// Could not be served (malformed request, upstream failure).
    Error,
}

impl Outcome {
    /// Lower-case word used in log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Revalidated => "revalidated",
            Self::Stale => "stale",
            Self::Bypass => "bypass",
            Self::Tunnel => "tunnel",
            Self::Intercept => "intercept",
            Self::Deny => "deny",
            Self::Local => "local",
            Self::Error => "error",
        }
    }
}

impl Outcome {
    /// The `X-Cache` value of a registry response with this outcome.
    pub fn x_cache(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Revalidated => "REVALIDATED",
            Self::Stale => "STALE",
            _ => "BYPASS",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fields of one request's log line, minus what is known only at the end.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    /// Client socket address.
    pub client: SocketAddr,
    /// Target `host:port`.
    pub host: String,
    /// Request method.
    pub method: Method,
    /// Path without the query (queries can carry signatures and tokens).
    pub path: String,
    /// When the request arrived.
    pub start: Instant,
    /// Canonical registry name when the host is a configured registry (a metrics label).
    pub registry: Option<String>,
    /// The listener it came in on.
    pub listener: Listener,
    /// Where the request is counted when its line is written.
    metrics: Arc<Metrics>,
}

impl AccessRecord {
    /// Starts a record now; it is counted in `metrics` when written.
    pub fn new(
        metrics: &Arc<Metrics>,
        client: SocketAddr,
        host: impl Into<String>,
        method: Method,
        path: &str,
    ) -> Self {
        Self {
            metrics: metrics.clone(),
            client,
            host: host.into(),
            method,
            path: path.to_string(),
            start: Instant::now(),
            registry: None,
            listener: Listener::Proxy,
        }
    }

    /// Marks the request as one for the configured registry `registry` (canonical name).
    pub fn with_registry(mut self, registry: Option<String>) -> Self {
        self.registry = registry;
        self
    }

    /// Marks the request as one that came in on `listener`.
    pub fn with_listener(mut self, listener: Listener) -> Self {
        self.listener = listener;
        self
    }

    /// Writes the line.
    pub fn emit(&self, outcome: Outcome, status: u16, bytes: u64, complete: bool) {
        let ms = self.start.elapsed().as_millis() as u64;
        tracing::info!(
            target: "regcache::access",
            client = %self.client,
            listener = self.listener.as_str(),
            host = %self.host,
            method = %self.method,
            path = %self.path,
            cache = outcome.as_str(),
            status,
            bytes,
            ms,
            complete,
            "request"
        );
        self.metrics.request_done(
            self.registry.as_deref(),
            self.listener,
            outcome,
            &self.method,
            &self.path,
            bytes,
        );
    }
}

/// A response body that counts what it yields and logs the request when it ends or drops.
pub struct LoggedBody {
    inner: Body,
    record: Option<AccessRecord>,
    outcome: Outcome,
    status: u16,
    bytes: u64,
    expected: Option<u64>,
}

impl LoggedBody {
    /// Wraps `inner`; the line is written once, at end of stream or on drop. `expected` is
    /// the announced length (0 for HEAD): hyper stops polling a body once it has sent that
    /// many bytes, so reaching it counts as complete.
    pub fn new(inner: Body, record: AccessRecord, outcome: Outcome, status: u16, expected: Option<u64>) -> Self {
        Self {
            inner,
            record: Some(record),
            outcome,
            status,
            bytes: 0,
            expected,
        }
    }

    fn finish(&mut self, complete: bool) {
        let complete = complete || self.expected == Some(self.bytes);
        if let Some(r) = self.record.take() {
            r.emit(self.outcome, self.status, self.bytes, complete);
        }
    }
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // A body that was never polled but is empty (HEAD, 204, 304) is complete.
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

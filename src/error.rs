//! Errors of the request path, each knowing whose fault it was and so which status it gets.
//!
//! May import: `body` (the answer an error becomes).

use std::time::Duration;

use http::{Response, StatusCode};

use crate::body::{self, Body};

/// Why a proxied request could not be answered by upstream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// The client sent something malformed: 400.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Policy refuses the request: 403.
    #[error("{0}")]
    Forbidden(String),
    /// TCP connection to upstream failed or timed out: 502.
    #[error("cannot connect to {target}: {reason}")]
    Connect {
        /// `host:port`.
        target: String,
        /// One-line cause.
        reason: String,
    },
    /// TLS handshake with upstream failed (untrusted certificate, wrong name, …): 502.
    #[error("TLS handshake with {target} failed: {reason}")]
    Tls {
        /// `host:port`.
        target: String,
        /// One-line cause.
        reason: String,
    },
    /// Upstream accepted the connection but sent no response headers in time: 504.
    #[error("{target} sent no response within {}s", .after.as_secs())]
    Timeout {
        /// `host:port`.
        target: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// Upstream broke the exchange some other way: 502.
    #[error("upstream {target} failed: {reason}")]
    Upstream {
        /// `host:port`.
        target: String,
        /// One-line cause.
        reason: String,
    },
}

impl ProxyError {
    /// The status a client gets for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Connect { .. } | Self::Tls { .. } | Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A short `text/plain` answer carrying the status and a one-line reason.
    pub fn into_response(self) -> Response<Body> {
        body::text(self.status(), format!("regcache: {self}"))
    }
}

/// Joins an error and its sources into one line, skipping repeats (hyper and rustls often
/// wrap the same message twice).
pub fn chain_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ").replace('\n', " ")
}

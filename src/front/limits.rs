//! Bounds on what one client can make regcache hold: open connections, the size and number of
//! request header fields, the length of the request line. A broken or hostile client gets a
//! clear status (431, 414, 503) instead of memory, file descriptors or worker time; a client
//! that sends nothing is closed after `timeouts.idle`.
//!
//! The same head limits apply at the front door (CONNECT, plain `http://`, regcache's own
//! endpoints) and inside intercepted tunnels (HTTP/1.1 and HTTP/2).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode, Uri};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::{self, Body};

pub use crate::config::HYPER_DEFAULT_MAX_HEADERS;

/// The length of a request target as it was on the request line (near enough: the scheme and
/// authority of an absolute-form target, plus path and query).
fn target_len(uri: &Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len())
}

/// `414 URI Too Long` for a request whose target exceeds `max` bytes.
pub fn request_line_refusal<B>(req: &Request<B>, max: usize) -> Option<Response<Body>> {
    let len = target_len(req.uri());
    (len > max).then(|| {
        body::text(
            StatusCode::URI_TOO_LONG,
            format!("regcache: request target of {len} bytes is longer than limits.max_request_line ({max})"),
        )
    })
}

/// One place under the connection limit, held by a client connection and by every tunnel
/// opened on it (a CONNECT outlives the HTTP exchange that opened it); freed when the last
/// holder is dropped.
#[derive(Clone)]
pub struct ConnectionSlot {
    _permit: Arc<OwnedSemaphorePermit>,
}

/// Refusals answered at once; beyond this many, an over-limit connection is just closed.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;
/// How long a refused connection is kept to deliver its 503.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);
/// At most one "connection limit reached" warning per this many milliseconds.
const WARN_EVERY_MS: u64 = 10_000;

/// Counts client connections against `max_connections`.
///
/// Over the limit a plain-HTTP client is answered `503 Service Unavailable` with
/// `Retry-After: 1` and the connection is closed: a client (or the person reading its error)
/// then knows it is load and not a broken proxy, and Docker and Go clients retry a 503. The
/// connection is accepted rather than left in the kernel's backlog, because a backlog full of
/// a flood's connections would stall legitimate clients just as long, without telling them why.
/// On a TLS listener the connection is only closed: a plaintext 503 would be garbage to a TLS
/// client, and a handshake just to refuse costs the CPU an overload cannot spare.
pub struct ConnectionLimiter {
    slots: Arc<Semaphore>,
    max: usize,
    refusals: Arc<Semaphore>,
    last_warning_ms: AtomicU64,
}

impl ConnectionLimiter {
    /// A limiter admitting `max` connections at once (at least one).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT)),
            last_warning_ms: AtomicU64::new(0),
        }
    }

    /// A slot for a new connection, if one is free.
    pub fn try_admit(&self) -> Option<ConnectionSlot> {
        self.slots
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|p| ConnectionSlot { _permit: Arc::new(p) })
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn in_use(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// Turns away `stream` (accepted while every slot is taken): a 503 on a plain listener,
    /// a close on a TLS one.
    pub fn refuse(&self, mut stream: TcpStream, peer: std::net::SocketAddr, tls: bool) {
        let now = crate::clock::now_ms();
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= WARN_EVERY_MS
            && self
                .last_warning_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(%peer, max_connections = self.max, "connection limit reached; refusing new connections (logged at most every 10 s)");
        }
        if tls {
            return;
        }
        let Ok(permit) = self.refusals.clone().try_acquire_owned() else {
            return;
        };
        let answer = too_many_connections(self.max);
        tokio::spawn(async move {
            let _permit = permit;
            // Write the answer, stop sending, and read what the client sends until it closes:
            // closing with its request unread would reset the connection, and a reset can
            // destroy the 503 before the client reads it.
            let _ = tokio::time::timeout(REFUSAL_LINGER, async {
                stream.write_all(&answer).await?;
                stream.shutdown().await?;
                let mut sink = [0u8; 4096];
                while stream.read(&mut sink).await? > 0 {}
                Ok::<_, std::io::Error>(())
            })
            .await;
        });
    }
}

/// The whole 503 response, bytes on the wire.
fn too_many_connections(max: usize) -> Vec<u8> {
    let body = format!("regcache: too many connections (limits.max_connections = {max}); retry shortly\n");
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_held_by_every_clone_and_freed_with_the_last() {
        let limiter = ConnectionLimiter::new(2);
        let a = limiter.try_admit().expect("first");
        let tunnel = a.clone();
        let _b = limiter.try_admit().expect("second");
        assert!(limiter.try_admit().is_none(), "full");
        drop(a);
        assert!(limiter.try_admit().is_none(), "the tunnel still holds the slot");
        drop(tunnel);
        assert_eq!(limiter.in_use(), 1);
        assert!(limiter.try_admit().is_some());
    }

    #[test]
    fn long_request_targets_are_414() {
        let short = Request::get("/v2/library/alpine/manifests/3.20").body(()).unwrap();
        assert!(request_line_refusal(&short, 64).is_none());
        let long = Request::get(format!("/v2/{}", "a".repeat(100))).body(()).unwrap();
        let res = request_line_refusal(&long, 64).expect("refused");
        assert_eq!(res.status(), StatusCode::URI_TOO_LONG);
        let absolute = Request::get(format!("http://example.test/{}", "a".repeat(50)))
            .body(())
            .unwrap();
        assert!(
            request_line_refusal(&absolute, 64).is_some(),
            "the authority counts too"
        );
    }

    #[test]
    fn the_503_is_a_complete_http_response() {
        let text = String::from_utf8(too_many_connections(7)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(body.contains("max_connections = 7"));
    }
}

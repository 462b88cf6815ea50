//! Opening a TCP connection to an upstream, for the pooled client and for tunnels alike, in
//! this order: a `--connect-to` mapping (the operator's address, a name resolved as the system
//! resolves it); a parent proxy (`CONNECT host:port` through it, RFC 9110 §9.3.6); else the
//! system resolver (`/etc/hosts` included) with the egress guard. Every dial races the
//! resolved addresses by Happy Eyeballs (RFC 8305, hyper-util's: the second family starts
//! 300 ms after the first), so an unreachable IPv6 path costs a pull no more than that.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::config::{Config, ConnectTo, HostPort, ParentProxy, UpstreamProxy};
use crate::telemetry::{Route, UpstreamMetrics};
use crate::upstream::buffered_tcp::BufferedTcp;
use crate::upstream::egress;

/// RFC 8305 §5's connection attempt delay (hyper-util's default is the same).
const HAPPY_EYEBALLS_DELAY: Duration = Duration::from_millis(300);
/// A parent proxy's answer to `CONNECT` larger than this is refused.
const MAX_PROXY_HEAD: usize = 16 * 1024;

/// A parent proxy that did not open the tunnel: its status line is the reason.
#[derive(Debug, thiserror::Error)]
#[error("parent proxy {proxy} refused CONNECT {target}: {status}")]
pub struct ParentRefused {
    proxy: String,
    target: String,
    status: String,
}

/// Dials upstreams (see the module doc); a `tower` service for the pooled client.
#[derive(Clone)]
pub struct Dialer {
    /// For names clients chose: resolved addresses pass the egress guard.
    guarded: HttpConnector<GuardedResolver>,
    /// For names the operator chose (`--connect-to` targets, parent proxies): not guarded.
    direct: HttpConnector,
    overrides: Arc<Vec<ConnectTo>>,
    proxies: Arc<UpstreamProxy>,
    listen: SocketAddr,
    connect_timeout: Duration,
    metrics: UpstreamMetrics,
}

impl Dialer {
    /// The dialer `config` describes, counting into `metrics`.
    pub fn new(config: &Config, metrics: UpstreamMetrics) -> Self {
        let guarded = HttpConnector::new_with_resolver(GuardedResolver { listen: config.listen });
        Self {
            guarded: tuned(guarded, config.timeouts.upstream_connect),
            direct: tuned(HttpConnector::new(), config.timeouts.upstream_connect),
            overrides: Arc::new(config.connect_to.clone()),
            proxies: Arc::new(config.upstream_proxy.clone()),
            listen: config.listen,
            connect_timeout: config.timeouts.upstream_connect,
            metrics,
        }
    }

    /// A TCP connection to `target` (or to a tunnel through a parent proxy to it).
    ///
    /// # Errors
    /// An [`egress::Refused`] or [`ParentRefused`] inside the `io::Error`, or why no
    /// connection was made.
    pub async fn connect(&self, target: &HostPort) -> std::io::Result<TcpStream> {
        let (route, result) = self.route(target).await;
        self.metrics.connection(route, result.is_ok());
        result
    }

    async fn route(&self, target: &HostPort) -> (Route, std::io::Result<TcpStream>) {
        if let Some(address) = ConnectTo::lookup(&self.overrides, target) {
            return (Route::ConnectTo, Self::open(self.direct.clone(), address).await);
        }
        if let Some(parent) = self.proxies.parent_for(target) {
            return (Route::Parent, self.through(parent, target).await);
        }
        (Route::Direct, self.direct_to(target).await)
    }

    async fn through(&self, parent: &ParentProxy, target: &HostPort) -> std::io::Result<TcpStream> {
        let stream = Self::open(self.direct.clone(), &parent.address).await?;
        match tokio::time::timeout(self.connect_timeout, tunnel(stream, parent, target)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "parent proxy {parent} did not answer CONNECT {target} within {}s",
                    self.connect_timeout.as_secs()
                ),
            )),
        }
    }

    async fn direct_to(&self, target: &HostPort) -> std::io::Result<TcpStream> {
        // IP literals skip the resolver: check them here.
        if let Ok(ip) = target.host.parse::<std::net::IpAddr>()
            && let Some(why) = egress::refusal(SocketAddr::new(ip, target.port), self.listen)
        {
            return Err(egress::Refused(format!("{target} is {why}; map it with --connect-to to allow it")).into_io());
        }
        Self::open(self.guarded.clone(), target).await
    }

    async fn open<R>(mut connector: HttpConnector<R>, to: &HostPort) -> std::io::Result<TcpStream>
    where
        HttpConnector<R>: tower_service::Service<Uri, Response = TokioIo<TcpStream>>,
        <HttpConnector<R> as tower_service::Service<Uri>>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let uri: Uri = format!("http://{}/", to.authority(0))
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{to}: {e}")))?;
        let io = tower_service::Service::<Uri>::call(&mut connector, uri)
            .await
            .map_err(|e| into_io(e.into()))?;
        Ok(io.into_inner())
    }
}

fn tuned<R>(mut c: HttpConnector<R>, connect_timeout: Duration) -> HttpConnector<R> {
    c.enforce_http(false);
    c.set_nodelay(true);
    c.set_connect_timeout(Some(connect_timeout));
    c.set_happy_eyeballs_timeout(Some(HAPPY_EYEBALLS_DELAY));
    c
}

/// The connector's error as the `io::Error` it carries (a refusal stays findable), or wrapped.
fn into_io(e: Box<dyn std::error::Error + Send + Sync>) -> std::io::Error {
    match e.downcast::<std::io::Error>() {
        Ok(io) => *io,
        Err(other) => {
            // hyper-util's ConnectError wraps the io::Error of the last attempt.
            let refused = egress::Refused::find(other.as_ref()).map(|r| r.0.clone());
            match refused {
                Some(r) => egress::Refused(r).into_io(),
                None => std::io::Error::other(crate::error::chain_line(other.as_ref())),
            }
        }
    }
}

/// `CONNECT target` on `stream` to `parent`: the stream is the tunnel once it answers 2xx.
async fn tunnel(mut stream: TcpStream, parent: &ParentProxy, target: &HostPort) -> std::io::Result<TcpStream> {
    let authority = target.to_string();
    let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(auth) = parent.authorization() {
        head.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    // The proxy sends nothing after its head until the client speaks (TLS starts with the
    // client's hello), so whatever is read here is the head alone.
    let mut answer = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    let end = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("parent proxy {parent} closed the connection on CONNECT {authority}"),
            ));
        }
        answer.extend_from_slice(&buf[..n]);
        if let Some(i) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if answer.len() > MAX_PROXY_HEAD {
            return Err(std::io::Error::other(format!(
                "parent proxy {parent} sent more than {MAX_PROXY_HEAD} bytes of head on CONNECT {authority}"
            )));
        }
    };
    let text = String::from_utf8_lossy(&answer[..end]);
    let status_line = text.lines().next().unwrap_or("").trim();
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(200..=299) if end == answer.len() => Ok(stream),
        Some(200..=299) => Err(std::io::Error::other(format!(
            "parent proxy {parent} sent bytes after its CONNECT answer"
        ))),
        _ => Err(std::io::Error::other(ParentRefused {
            proxy: parent.to_string(),
            target: authority,
            status: status_line.chars().take(200).collect(),
        })),
    }
}

type DialFuture =
    Pin<Box<dyn Future<Output = Result<TokioIo<BufferedTcp>, Box<dyn std::error::Error + Send + Sync>>> + Send>>;

/// For the pooled client: its connections carry TLS, read through a buffer.
impl tower_service::Service<Uri> for Dialer {
    type Response = TokioIo<BufferedTcp>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = DialFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let dialer = self.clone();
        Box::pin(async move {
            let target = host_port_of(&dst)
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{dst}: no host")))?;
            Ok(TokioIo::new(BufferedTcp::new(dialer.connect(&target).await?)))
        })
    }
}

/// The host and port an absolute URI points at (the scheme's default port when none is given).
pub(super) fn host_port_of(uri: &Uri) -> Option<HostPort> {
    let default = if uri.scheme_str() == Some("http") { 80 } else { 443 };
    let host = uri
        .host()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    Some(HostPort {
        host,
        port: uri.port_u16().unwrap_or(default),
    })
}

/// DNS resolution that drops internal addresses (see [`egress`]): a registry name, or a plain
/// `http://` request's host, that resolves to loopback or link-local is not dialled.
#[derive(Clone)]
pub struct GuardedResolver {
    listen: SocketAddr,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let listen = self.listen;
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|a| egress::refusal(*a, listen).is_none())
                .collect();
            match (allowed.is_empty(), resolved.first()) {
                (true, Some(first)) => Err(egress::Refused(format!(
                    "{} resolves to {} ({}); map it with --connect-to to allow it",
                    name.as_str(),
                    first.ip(),
                    egress::refusal(*first, listen).unwrap_or("internal")
                ))
                .into_io()),
                _ => Ok(allowed.into_iter()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt as _;

    /// A one-shot parent proxy that records the request head and answers `reply`.
    async fn parent(reply: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut r = tokio::io::BufReader::new(s);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            r.get_mut().write_all(reply.as_bytes()).await.unwrap();
            head
        });
        (addr, h)
    }

    #[tokio::test]
    async fn connect_carries_the_proxy_login_and_a_refusal_names_the_status() {
        let (addr, seen) = parent("HTTP/1.1 200 Connection established\r\n\r\n").await;
        let p: ParentProxy = format!("http://u:pw@{addr}").parse().unwrap();
        let s = TcpStream::connect(addr).await.unwrap();
        let target = HostPort::parse("ghcr.io", 443).unwrap();
        tunnel(s, &p, &target).await.unwrap();
        let head = seen.await.unwrap();
        assert!(head.starts_with("CONNECT ghcr.io:443 HTTP/1.1\r\n"), "{head}");
        assert!(
            head.contains(&format!("Proxy-Authorization: {}", p.authorization().unwrap())),
            "{head}"
        );

        let (addr, _) = parent("HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n").await;
        let p: ParentProxy = format!("http://u:pw@{addr}").parse().unwrap();
        let s = TcpStream::connect(addr).await.unwrap();
        let e = tunnel(s, &p, &target).await.unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "parent proxy http://{addr} refused CONNECT ghcr.io:443: HTTP/1.1 407 Proxy Authentication Required"
            )
        );
        assert!(!e.contains("pw"));
    }
}

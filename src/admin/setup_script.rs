//! `GET /setup/systemd?runtime=docker|containerd`: a POSIX `sh` script that points a client
//! host's container runtime at this proxy.
//!
//! Run as root on the client (`curl -fsS http://PROXY/setup/systemd?runtime=docker | sudo sh`),
//! it downloads the CA from this proxy's `/ca.crt`, checks it against the hash it was rendered
//! with, installs it in the system trust store (Debian/Ubuntu, RHEL/Fedora, Alpine), writes the
//! runtime's systemd drop-in with the proxy URL, reloads systemd and restarts the runtime.
//!
//! The proxy URL comes from the request's `Host` (the name the client reached us by), which is
//! client input: it is accepted only as a validated `HOST[:PORT]` (DNS name, IPv4, or bracketed
//! IPv6), so nothing but those characters ever reaches the script. Every other value put into
//! the template is ours (runtime enum, hex hash, crate version).

use std::fmt::Write as _;

use http::{HeaderValue, Request, Response, StatusCode, header};
use sha2::{Digest as _, Sha256};

use crate::body::{self, Body};

/// Media type of the script.
const CONTENT_TYPE: &str = "text/x-shellscript";

/// Why no script could be rendered; each is a client error (400) with a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// No `runtime=` in the query.
    #[error("say which runtime to set up: /setup/systemd?runtime=docker or ?runtime=containerd")]
    MissingRuntime,
    /// A runtime this script does not know.
    #[error("unknown runtime {0:?}: use runtime=docker or runtime=containerd")]
    UnknownRuntime(String),
    /// No `Host` header (and no authority in the request line).
    #[error("the request has no Host header: the script needs the address clients reach regcache at")]
    NoHost,
    /// A `Host` that is not `HOST[:PORT]`.
    #[error("Host {0:?} is not HOST[:PORT] (a DNS name, IPv4 address or [IPv6] address, port 1-65535)")]
    BadHost(String),
}

/// The container runtime whose systemd unit gets the proxy drop-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// `docker.service` (dockerd pulls images itself, with its own environment).
    Docker,
    /// `containerd.service` (Kubernetes nodes, nerdctl, ctr).
    Containerd,
}

impl Runtime {
    /// The runtime named by `runtime=` in a query string.
    ///
    /// # Errors
    /// [`SetupError::MissingRuntime`] or [`SetupError::UnknownRuntime`].
    pub fn from_query(query: Option<&str>) -> Result<Self, SetupError> {
        let value = query
            .unwrap_or_default()
            .split('&')
            .find_map(|pair| pair.strip_prefix("runtime="))
            .ok_or(SetupError::MissingRuntime)?;
        match value {
            "docker" => Ok(Self::Docker),
            "containerd" => Ok(Self::Containerd),
            other => Err(SetupError::UnknownRuntime(other.chars().take(64).collect())),
        }
    }

    /// The systemd unit name without `.service`.
    pub fn unit(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
        }
    }
}

/// A validated `HOST[:PORT]`: safe to put in a shell script and a systemd unit verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyAuthority(String);

impl ProxyAuthority {
    /// Accepts `name[:port]`, `a.b.c.d[:port]` or `[v6][:port]`.
    ///
    /// # Errors
    /// [`SetupError::BadHost`] for anything else (user info, paths, quotes, spaces, …).
    pub fn parse(raw: &str) -> Result<Self, SetupError> {
        let bad = || SetupError::BadHost(raw.chars().take(100).collect());
        let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
            let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
            if v6.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad());
            }
            match after {
                "" => (raw, None),
                p => (&raw[..raw.len() - p.len()], Some(p.strip_prefix(':').ok_or_else(bad)?)),
            }
        } else {
            match raw.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (raw, None),
            }
        };
        if let Some(port) = port {
            let valid = !port.is_empty()
                && port.len() <= 5
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u16>().is_ok_and(|p| p > 0);
            if !valid {
                return Err(bad());
            }
        }
        if !host.starts_with('[') && !is_dns_name_or_ipv4(host) {
            return Err(bad());
        }
        Ok(Self(raw.to_string()))
    }

    /// `host[:port]` as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Letters, digits and hyphens in dot-separated labels of 1-63 characters, no label starting
/// or ending with a hyphen, 253 characters at most. IPv4 literals pass this too.
fn is_dns_name_or_ipv4(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The script for `runtime`, reaching regcache at `http://<proxy>`, that accepts only a CA
/// whose PEM file hashes to `ca_sha256` (lower-case hex).
pub fn render(runtime: Runtime, proxy: &ProxyAuthority, ca_sha256: &str) -> String {
    TEMPLATE
        .replace("@PROXY_URL@", &format!("http://{}", proxy.as_str()))
        .replace("@RUNTIME@", runtime.unit())
        .replace("@CA_SHA256@", ca_sha256)
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"))
}

/// Answers `/setup/systemd`: the script (200, `text/x-shellscript`) or a one-line 400.
pub fn respond<B>(req: &Request<B>, ca_pem: &str) -> Response<Body> {
    match script_for(req, ca_pem) {
        Ok(script) => {
            let mut res = Response::new(body::full(script));
            res.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            res
        }
        Err(e) => body::text(StatusCode::BAD_REQUEST, format!("regcache: {e}")),
    }
}

fn script_for<B>(req: &Request<B>, ca_pem: &str) -> Result<String, SetupError> {
    let runtime = Runtime::from_query(req.uri().query())?;
    // Absolute-form requests carry the authority in the request line; others in Host.
    let host = match req.uri().authority() {
        Some(a) => a.as_str().to_string(),
        None => req
            .headers()
            .get(header::HOST)
            .ok_or(SetupError::NoHost)?
            .to_str()
            .map_err(|_| SetupError::BadHost("<not visible ASCII>".into()))?
            .to_string(),
    };
    let proxy = ProxyAuthority::parse(&host)?;
    Ok(render(runtime, &proxy, &sha256_hex(ca_pem.as_bytes())))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The script. Placeholders: `@PROXY_URL@`, `@RUNTIME@`, `@CA_SHA256@`, `@VERSION@`.
const TEMPLATE: &str = include_str!("setup_systemd.sh");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_from_query() {
        assert_eq!(Runtime::from_query(Some("runtime=docker")), Ok(Runtime::Docker));
        assert_eq!(
            Runtime::from_query(Some("x=1&runtime=containerd")),
            Ok(Runtime::Containerd)
        );
        assert_eq!(Runtime::from_query(None), Err(SetupError::MissingRuntime));
        assert_eq!(
            Runtime::from_query(Some("runtime=podman")),
            Err(SetupError::UnknownRuntime("podman".into()))
        );
    }

    #[test]
    fn proxy_authority_accepts_hosts_and_ports_only() {
        for ok in [
            "proxy.internal:3128",
            "proxy",
            "10.0.0.5:3128",
            "[::1]:3128",
            "[fd00::1]",
            "a-b.c",
        ] {
            assert!(ProxyAuthority::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ":3128",
            "proxy:",
            "proxy:0",
            "proxy:65536",
            "proxy:31a8",
            "user@proxy:3128",
            "proxy'; rm -rf / #",
            "proxy$(id)",
            "proxy`id`",
            "proxy\"x",
            "pro xy",
            "-proxy",
            "proxy..internal",
            "[::1",
            "[nothex]:1",
            "[::1]x",
            "proxy/path",
        ] {
            assert!(ProxyAuthority::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rendered_script_carries_only_validated_values() {
        let proxy = ProxyAuthority::parse("proxy.internal:3128").unwrap();
        let script = render(Runtime::Containerd, &proxy, &"ab".repeat(32));
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("proxy_url='http://proxy.internal:3128'"));
        assert!(script.contains("runtime='containerd'"));
        assert!(script.contains(&format!("ca_sha256='{}'", "ab".repeat(32))));
        for placeholder in ["@PROXY_URL@", "@RUNTIME@", "@CA_SHA256@", "@VERSION@"] {
            assert!(!script.contains(placeholder), "{placeholder} replaced");
        }
    }

    #[test]
    fn bad_requests_get_one_line() {
        let req = Request::get("/setup/systemd?runtime=docker")
            .header(header::HOST, "evil'host")
            .body(())
            .unwrap();
        let res = respond(&req, "pem");
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let req = Request::get("/setup/systemd?runtime=rkt")
            .header(header::HOST, "proxy:3128")
            .body(())
            .unwrap();
        assert_eq!(respond(&req, "pem").status(), StatusCode::BAD_REQUEST);
        let req = Request::get("/setup/systemd?runtime=docker")
            .header(header::HOST, "proxy:3128")
            .body(())
            .unwrap();
        let res = respond(&req, "pem");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
    }
}

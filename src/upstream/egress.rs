//! Where regcache refuses to connect on a client's behalf: loopback, link-local (cloud metadata
//! at 169.254.169.254), unspecified, multicast and broadcast addresses, and the proxy's own
//! listener. A proxy that dials them for anyone is a door into the host and its cloud account
//! (SSRF). An explicit `--connect-to` mapping is the operator's choice and is always honoured.

use std::net::{IpAddr, SocketAddr};

use crate::config::canonical_ip;

/// A dial refused by this guard. Carried inside the connector's `io::Error`, so that the
/// client is told 403 (policy) rather than 502 (upstream trouble).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl Refused {
    /// As an `io::Error` (what connectors and resolvers return).
    pub fn into_io(self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::PermissionDenied, self)
    }

    /// The refusal somewhere in `err`'s chain, if there is one. `io::Error::source()` skips the
    /// error it wraps, so wrapped I/O errors are opened with `get_ref` as well.
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r);
        }
        if let Some(r) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| Self::find(inner))
        {
            return Some(r);
        }
        err.source().and_then(Self::find)
    }
}

/// Why `addr` may not be dialled for a client, if it may not.
pub fn refusal(addr: SocketAddr, listen: SocketAddr) -> Option<&'static str> {
    let ip = canonical_ip(addr.ip());
    let kind = match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some("a loopback address"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local address (cloud metadata lives there)"),
        IpAddr::V4(v4) if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() => {
            Some("not a unicast address")
        }
        IpAddr::V6(v6) if v6.is_loopback() => Some("a loopback address"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("a link-local address"),
        IpAddr::V6(v6) if v6.is_unspecified() || v6.is_multicast() => Some("not a unicast address"),
        _ => None,
    };
    kind.or_else(|| is_own_listener(ip, addr.port(), listen).then_some("regcache's own listener"))
}

/// Whether `ip:port` reaches this process's listener: its address, or any local address when it
/// listens on all of them (a local address is one a socket can be bound to).
fn is_own_listener(ip: IpAddr, port: u16, listen: SocketAddr) -> bool {
    if port != listen.port() {
        return false;
    }
    if listen.ip().is_unspecified() {
        std::net::UdpSocket::bind((ip, 0)).is_ok()
    } else {
        canonical_ip(listen.ip()) == ip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_destinations_are_refused() {
        let listen: SocketAddr = "127.0.0.1:3128".parse().unwrap();
        for bad in [
            "127.0.0.1:22",
            "127.1.2.3:443",
            "169.254.169.254:80",
            "0.0.0.0:443",
            "[::1]:443",
            "[fe80::1]:443",
            "[::ffff:127.0.0.1]:443",
            "224.0.0.1:443",
        ] {
            assert!(refusal(bad.parse().unwrap(), listen).is_some(), "{bad}");
        }
        for good in ["140.82.112.34:443", "10.1.2.3:5000", "[2606:4700::1]:443"] {
            assert!(refusal(good.parse().unwrap(), listen).is_none(), "{good}");
        }
    }

    #[test]
    fn refusals_are_found_inside_wrapping_errors() {
        let io = Refused("10.0.0.1 is internal".into()).into_io();
        assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(io);
        let found = Refused::find(boxed.as_ref()).expect("found");
        assert_eq!(found.to_string(), "10.0.0.1 is internal");
        let other = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "EACCES");
        assert!(
            Refused::find(&other).is_none(),
            "a plain permission error is not a refusal"
        );
    }

    #[test]
    fn own_listener_on_all_addresses() {
        let listen: SocketAddr = "0.0.0.0:3128".parse().unwrap();
        // Any local non-loopback address would do; the unspecified one is refused anyway.
        assert!(is_own_listener("127.0.0.1".parse().unwrap(), 3128, listen));
        assert!(!is_own_listener("127.0.0.1".parse().unwrap(), 3129, listen));
        assert!(
            !is_own_listener("192.0.2.1".parse().unwrap(), 3128, listen),
            "TEST-NET is not local"
        );
    }
}

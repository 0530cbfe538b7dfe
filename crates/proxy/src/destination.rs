//! Where a proxy client wants to go: an address, or a name for tundns's resolver.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Longest DNS name in its text form, without the final dot (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label of a name (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// The destination of a proxied connection or datagram.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// An address as the client gave it.
    Addr(SocketAddr),
    /// A host name, lowercase and without the final dot, to resolve inside tundns.
    Name { name: String, port: u16 },
}

impl Destination {
    /// A destination from a host as a client wrote it: an IP literal stays an address
    /// (`[v6]` brackets allowed), anything else must be a valid host name.
    pub fn from_host(host: &str, port: u16) -> Option<Self> {
        let literal = host
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Some(Self::Addr(SocketAddr::new(ip, port)));
        }
        normalize_name(host).map(|name| Self::Name { name, port })
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        match self {
            Self::Addr(addr) => addr.port(),
            Self::Name { port, .. } => *port,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(addr) => addr.fmt(f),
            Self::Name { name, port } => write!(f, "{name}:{port}"),
        }
    }
}

/// `name` lowercased and without its final dot, if it is a host name a resolver can be
/// asked for: labels of 1 to 63 letters, digits, hyphens or underscores, 253 characters
/// at most. Anything else (spaces, control bytes, empty labels) is refused here rather
/// than sent on to the resolver.
pub fn normalize_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL_LEN
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        });
    valid.then(|| name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_stay_addresses_and_names_are_normalized() {
        assert_eq!(
            Destination::from_host("192.0.2.7", 80),
            Some(Destination::Addr("192.0.2.7:80".parse().unwrap()))
        );
        assert_eq!(
            Destination::from_host("[2001:db8::7]", 443),
            Some(Destination::Addr("[2001:db8::7]:443".parse().unwrap()))
        );
        assert_eq!(
            Destination::from_host("WWW.Lab.Test.", 8080),
            Some(Destination::Name {
                name: "www.lab.test".into(),
                port: 8080
            })
        );
    }

    #[test]
    fn names_a_resolver_cannot_take_are_refused() {
        for bad in [
            "",
            ".",
            "a..b",
            "with space.test",
            "nul\0.test",
            "ünicode.test",
            "[not-an-ip]",
            &"a".repeat(64),
            &["abc"; 64].join("."),
        ] {
            assert_eq!(Destination::from_host(bad, 1), None, "{bad:?}");
        }
        assert!(
            normalize_name(&["a"; 127].join(".")).is_some(),
            "253 characters"
        );
    }
}

//! Upstream resolver URLs: `ip[:port]`, `udp://`, `tcp://`, `tls://`, `https://`, `quic://`
//! and `h3://`.
//!
//! Host names are never resolved: an encrypted upstream names its server with
//! `name@ip`, where the IP is the bootstrap address and the name is what the
//! certificate must match.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::values::{is_domain_name, looks_like_ip, shown, unusable_unicast};

/// Port of plain DNS over UDP and TCP.
pub const DNS_PORT: u16 = 53;
/// Port of DNS over TLS (RFC 7858).
pub const DOT_PORT: u16 = 853;
/// Port of DNS over HTTPS (RFC 8484), over HTTP/2 and HTTP/3 alike.
pub const DOH_PORT: u16 = 443;
/// Port of DNS over QUIC (RFC 9250 §4.1.1): UDP, the number DoT has on TCP.
pub const DOQ_PORT: u16 = 853;
/// Path of a DNS-over-HTTPS URL written without one.
pub const DEFAULT_DOH_PATH: &str = "/dns-query";

/// An upstream resolver, as an `Upstream` value names it.
///
/// `Display` writes a form that parses back to the same value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Upstream {
    /// Bare `ip`, `ip:port`, `[v6]:port`, or `udp://…`: UDP, retried over TCP on TC.
    Udp(SocketAddr),
    /// `tcp://ip[:port]`: TCP only.
    Tcp(SocketAddr),
    /// `tls://name@ip[:port]` (port 853): DNS over TLS. `tls://ip` uses the IP's text
    /// as the server name.
    Tls {
        /// The name the certificate must match: a host name (lowercase, no final
        /// dot) or an IP address in its canonical text.
        server_name: String,
        /// The bootstrap address connected to.
        address: SocketAddr,
    },
    /// `https://name@ip[:port]/path` (port 443): DNS over HTTPS. `https://ip/path`
    /// uses the IP's text as the server name; without a path it is
    /// [`DEFAULT_DOH_PATH`].
    Https {
        /// The name the certificate must match and the HTTP authority, as for
        /// [`Upstream::Tls`].
        server_name: String,
        /// The bootstrap address connected to.
        address: SocketAddr,
        /// The request path, starting with `/` (a query part is kept).
        path: String,
    },
    /// `quic://name@ip[:port]` (UDP port 853): DNS over QUIC (RFC 9250). `quic://ip`
    /// uses the IP's text as the server name.
    Quic {
        /// The name the certificate must match, as for [`Upstream::Tls`].
        server_name: String,
        /// The bootstrap address connected to.
        address: SocketAddr,
    },
    /// `h3://name@ip[:port]/path` (UDP port 443): DNS over HTTPS over HTTP/3 (RFC 8484
    /// on RFC 9114), with the defaults of [`Upstream::Https`].
    H3 {
        /// The name the certificate must match and the HTTP authority.
        server_name: String,
        /// The bootstrap address connected to.
        address: SocketAddr,
        /// The request path, starting with `/` (a query part is kept).
        path: String,
    },
}

impl Upstream {
    /// The address queries are sent to.
    pub fn address(&self) -> SocketAddr {
        match self {
            Upstream::Udp(address) | Upstream::Tcp(address) => *address,
            Upstream::Tls { address, .. }
            | Upstream::Https { address, .. }
            | Upstream::Quic { address, .. }
            | Upstream::H3 { address, .. } => *address,
        }
    }
}

/// `name@` unless the name is just the address's IP (the form `tls://ip` gives).
impl Upstream {
    /// The full URL, every part spelled out (`udp://192.0.2.53:53`,
    /// `tls://dns.example@192.0.2.53:853`): how the pool names the upstream in answers,
    /// logs and metrics. [`Display`](fmt::Display) gives the short form, as written.
    pub fn url(&self) -> String {
        match self {
            Upstream::Udp(address) => format!("udp://{address}"),
            Upstream::Tcp(address) => format!("tcp://{address}"),
            Upstream::Tls {
                server_name,
                address,
            } => format!("tls://{server_name}@{address}"),
            Upstream::Https {
                server_name,
                address,
                path,
            } => format!("https://{server_name}@{address}{path}"),
            Upstream::Quic {
                server_name,
                address,
            } => format!("quic://{server_name}@{address}"),
            Upstream::H3 {
                server_name,
                address,
                path,
            } => format!("h3://{server_name}@{address}{path}"),
        }
    }
}

fn name_prefix(server_name: &str, address: SocketAddr) -> String {
    if server_name == address.ip().to_string() {
        String::new()
    } else {
        format!("{server_name}@")
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Udp(address) => write!(f, "{address}"),
            Upstream::Tcp(address) => write!(f, "tcp://{address}"),
            Upstream::Tls {
                server_name,
                address,
            } => write!(f, "tls://{}{address}", name_prefix(server_name, *address)),
            Upstream::Https {
                server_name,
                address,
                path,
            } => write!(
                f,
                "https://{}{address}{path}",
                name_prefix(server_name, *address)
            ),
            Upstream::Quic {
                server_name,
                address,
            } => write!(f, "quic://{}{address}", name_prefix(server_name, *address)),
            Upstream::H3 {
                server_name,
                address,
                path,
            } => write!(
                f,
                "h3://{}{address}{path}",
                name_prefix(server_name, *address)
            ),
        }
    }
}

/// `ip`, `[v6]` (with `default_port`), `ip:port` or `[v6]:port`.
fn parse_socket_addr(text: &str, default_port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, default_port));
    }
    if let Some(inner) = text
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    {
        return inner
            .parse::<Ipv6Addr>()
            .ok()
            .map(|ip| SocketAddr::new(IpAddr::V6(ip), default_port));
    }
    text.parse().ok()
}

/// The address of an upstream, with the checks every form shares. In a URL an IPv6
/// address must be bracketed: `2001:db8::53:853` would silently mean port 53.
fn address(
    text: &str,
    default_port: u16,
    value: &str,
    usage: &str,
    url: bool,
) -> Result<SocketAddr, String> {
    if url && text.parse::<Ipv6Addr>().is_ok() {
        return Err(format!(
            "an IPv6 address in a URL must be in brackets ([ipv6] or [ipv6]:port), found {}",
            shown(value)
        ));
    }
    let address = parse_socket_addr(text, default_port)
        .ok_or_else(|| format!("expected {usage}, found {}", shown(value)))?;
    if address.port() == 0 {
        return Err(format!(
            "upstream port must be 1..=65535, found {}",
            shown(value)
        ));
    }
    if let Some(reason) = unusable_unicast(address.ip()) {
        return Err(format!("upstream {} is {reason}", address.ip()));
    }
    Ok(address)
}

/// A host name a certificate can carry: letters, digits and `-`, in dot-separated
/// labels that neither start nor end with `-`, and not all digits.
fn is_host_name(name: &str) -> bool {
    is_domain_name(name)
        && !looks_like_ip(name)
        && name
            .strip_suffix('.')
            .unwrap_or(name)
            .split('.')
            .all(|label| {
                !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
}

/// The server name of `tls://`, `https://`, `quic://` and `h3://`, and the address, from
/// `[name@]ip[:port]`.
fn named_address(
    authority: &str,
    default_port: u16,
    value: &str,
    scheme: &str,
    usage: &str,
) -> Result<(String, SocketAddr), String> {
    let (name, address_text) = match authority.rsplit_once('@') {
        Some((name, address_text)) => (Some(name), address_text),
        None => (None, authority),
    };
    if name.is_none() && parse_socket_addr(address_text, default_port).is_none() {
        let host = address_text
            .rsplit_once(':')
            .map_or(address_text, |(host, _)| host);
        if is_host_name(host) {
            let example = match scheme {
                "https" | "h3" => format!("{scheme}://name@ip/path"),
                _ => format!("{scheme}://name@ip"),
            };
            return Err(format!(
                "upstream {} needs a bootstrap address: {example} (host names are not resolved)",
                shown(value)
            ));
        }
    }
    let address = address(address_text, default_port, value, usage, true)?;
    let server_name = match name {
        None => address.ip().to_string(),
        Some(name) => match name.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) if is_host_name(name) => {
                name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
            }
            Err(_) => {
                return Err(format!(
                    "invalid server name {} in upstream {} (expected a host name or an IP address)",
                    shown(name),
                    shown(value)
                ));
            }
        },
    };
    Ok((server_name, address))
}

/// An HTTP path: `/`, then RFC 3986 path and query characters, `%` only as `%XX`.
fn is_http_path(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'%' {
            let hex = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(index + 1) && hex(index + 2)) {
                return false;
            }
            index += 3;
            continue;
        }
        if !(byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?".contains(&byte)) {
            return false;
        }
        index += 1;
    }
    true
}

impl std::str::FromStr for Upstream {
    type Err = String;

    /// The forms an `Upstream =` value takes (for upstreams given at run time).
    fn from_str(value: &str) -> Result<Self, String> {
        parse_upstream(value.trim())
    }
}

/// Parses one upstream. Messages quote the value through [`shown`].
pub(crate) fn parse_upstream(value: &str) -> Result<Upstream, String> {
    let Some((scheme, rest)) = value.split_once("://") else {
        return address(
            value,
            DNS_PORT,
            value,
            "an IP, ip:port, [ipv6]:port or a udp://, tcp://, tls://, https://, quic:// or h3:// URL \
             (host names are not resolved)",
            false,
        )
        .map(Upstream::Udp);
    };
    let scheme = scheme.to_ascii_lowercase();
    match scheme.as_str() {
        "udp" | "tcp" => {
            if rest.contains('@') {
                return Err(format!(
                    "a server name (name@) goes only with tls://, https://, quic:// and h3://, found {}",
                    shown(value)
                ));
            }
            let usage = format!("{scheme}://ip[:port] or {scheme}://[ipv6][:port]");
            let address = address(rest, DNS_PORT, value, &usage, true)?;
            Ok(if scheme == "udp" {
                Upstream::Udp(address)
            } else {
                Upstream::Tcp(address)
            })
        }
        "tls" | "quic" => {
            let usage = format!(
                "{scheme}://name@ip[:port], {scheme}://name@[ipv6][:port] or {scheme}://ip[:port]"
            );
            let default_port = if scheme == "tls" { DOT_PORT } else { DOQ_PORT };
            let (server_name, address) = named_address(rest, default_port, value, &scheme, &usage)?;
            Ok(if scheme == "tls" {
                Upstream::Tls {
                    server_name,
                    address,
                }
            } else {
                Upstream::Quic {
                    server_name,
                    address,
                }
            })
        }
        "https" | "h3" => {
            let (authority, path) = match rest.find('/') {
                Some(slash) => rest.split_at(slash),
                None => (rest, DEFAULT_DOH_PATH),
            };
            let usage = format!(
                "{scheme}://name@ip[:port]/path, {scheme}://name@[ipv6][:port]/path or {scheme}://ip[:port]/path"
            );
            let (server_name, address) =
                named_address(authority, DOH_PORT, value, &scheme, &usage)?;
            if !is_http_path(path) {
                return Err(format!(
                    "invalid path {} in upstream {}",
                    shown(path),
                    shown(value)
                ));
            }
            let path = path.to_string();
            Ok(if scheme == "https" {
                Upstream::Https {
                    server_name,
                    address,
                    path,
                }
            } else {
                Upstream::H3 {
                    server_name,
                    address,
                    path,
                }
            })
        }
        _ => Err(format!(
            "unknown upstream scheme in {}: expected udp://, tcp://, tls://, https://, quic:// or h3://",
            shown(value)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_url_spells_every_part_out() {
        let parse = |text: &str| text.parse::<Upstream>().unwrap().url();
        assert_eq!(parse("192.0.2.53"), "udp://192.0.2.53:53");
        assert_eq!(parse("tcp://[2001:db8::53]"), "tcp://[2001:db8::53]:53");
        assert_eq!(parse("tls://192.0.2.53"), "tls://192.0.2.53@192.0.2.53:853");
        assert_eq!(
            parse("https://dns.lab.test@192.0.2.53"),
            "https://dns.lab.test@192.0.2.53:443/dns-query"
        );
        assert_eq!(
            parse("quic://192.0.2.53"),
            "quic://192.0.2.53@192.0.2.53:853"
        );
        assert_eq!(
            parse("h3://dns.lab.test@[2001:db8::53]"),
            "h3://dns.lab.test@[2001:db8::53]:443/dns-query"
        );
    }

    #[test]
    fn quic_and_h3_with_default_ports() {
        assert_eq!(
            parse_upstream("QUIC://Dns.Lab.Test.@192.0.2.53"),
            Ok(Upstream::Quic {
                server_name: "dns.lab.test".into(),
                address: sock("192.0.2.53:853"),
            })
        );
        assert_eq!(
            parse_upstream("quic://[2001:db8::53]:8853"),
            Ok(Upstream::Quic {
                server_name: "2001:db8::53".into(),
                address: sock("[2001:db8::53]:8853"),
            })
        );
        assert_eq!(
            parse_upstream("h3://dns.lab.test@192.0.2.53/resolve?ct=1"),
            Ok(Upstream::H3 {
                server_name: "dns.lab.test".into(),
                address: sock("192.0.2.53:443"),
                path: "/resolve?ct=1".into(),
            })
        );
        assert_eq!(
            parse_upstream("h3://192.0.2.53:8443"),
            Ok(Upstream::H3 {
                server_name: "192.0.2.53".into(),
                address: sock("192.0.2.53:8443"),
                path: DEFAULT_DOH_PATH.into(),
            })
        );
    }

    #[test]
    fn bare_addresses_are_udp_on_port_53() {
        for (text, expected) in [
            ("192.0.2.53", "192.0.2.53:53"),
            ("2001:db8::53", "[2001:db8::53]:53"),
            ("[2001:db8::53]", "[2001:db8::53]:53"),
            ("192.0.2.53:5353", "192.0.2.53:5353"),
            ("[2001:db8::53]:5353", "[2001:db8::53]:5353"),
            ("udp://192.0.2.53", "192.0.2.53:53"),
            ("UDP://[2001:db8::53]:54", "[2001:db8::53]:54"),
        ] {
            assert_eq!(
                parse_upstream(text),
                Ok(Upstream::Udp(sock(expected))),
                "{text}"
            );
        }
    }

    #[test]
    fn tcp_tls_and_https_with_default_ports() {
        assert_eq!(
            parse_upstream("tcp://192.0.2.53"),
            Ok(Upstream::Tcp(sock("192.0.2.53:53")))
        );
        assert_eq!(
            parse_upstream("tcp://[2001:db8::53]:5300"),
            Ok(Upstream::Tcp(sock("[2001:db8::53]:5300")))
        );
        assert_eq!(
            parse_upstream("tls://Dns.Lab.Test.@192.0.2.53"),
            Ok(Upstream::Tls {
                server_name: "dns.lab.test".into(),
                address: sock("192.0.2.53:853"),
            })
        );
        assert_eq!(
            parse_upstream("tls://[2001:db8::53]"),
            Ok(Upstream::Tls {
                server_name: "2001:db8::53".into(),
                address: sock("[2001:db8::53]:853"),
            })
        );
        assert_eq!(
            parse_upstream("tls://dns.lab.test@[2001:db8::53]:8853"),
            Ok(Upstream::Tls {
                server_name: "dns.lab.test".into(),
                address: sock("[2001:db8::53]:8853"),
            })
        );
        assert_eq!(
            parse_upstream("https://dns.lab.test@192.0.2.53/dns-query"),
            Ok(Upstream::Https {
                server_name: "dns.lab.test".into(),
                address: sock("192.0.2.53:443"),
                path: "/dns-query".into(),
            })
        );
        assert_eq!(
            parse_upstream("https://192.0.2.53:8443/resolve?ct=1"),
            Ok(Upstream::Https {
                server_name: "192.0.2.53".into(),
                address: sock("192.0.2.53:8443"),
                path: "/resolve?ct=1".into(),
            })
        );
        assert_eq!(
            parse_upstream("HTTPS://dns.lab.test@[2001:db8::53]"),
            Ok(Upstream::Https {
                server_name: "dns.lab.test".into(),
                address: sock("[2001:db8::53]:443"),
                path: DEFAULT_DOH_PATH.into(),
            })
        );
    }

    #[test]
    fn display_parses_back() {
        for text in [
            "192.0.2.53",
            "[2001:db8::53]:5353",
            "tcp://192.0.2.53",
            "tls://192.0.2.53",
            "tls://dns.lab.test@[2001:db8::53]",
            "https://[2001:db8::53]/q",
            "https://dns.lab.test@192.0.2.53:8443/dns-query",
            "quic://192.0.2.53",
            "quic://dns.lab.test@[2001:db8::53]:8853",
            "h3://[2001:db8::53]/q",
            "h3://dns.lab.test@192.0.2.53:8443/dns-query",
        ] {
            let upstream = parse_upstream(text).unwrap();
            assert_eq!(
                parse_upstream(&upstream.to_string()),
                Ok(upstream.clone()),
                "{text}"
            );
            assert_eq!(
                parse_upstream(&upstream.url()),
                Ok(upstream.clone()),
                "{text}"
            );
        }
        assert_eq!(
            parse_upstream("tls://dns.lab.test@192.0.2.53")
                .unwrap()
                .to_string(),
            "tls://dns.lab.test@192.0.2.53:853"
        );
        assert_eq!(
            parse_upstream("https://192.0.2.53").unwrap().to_string(),
            "https://192.0.2.53:443/dns-query"
        );
    }

    #[test]
    fn rejects() {
        for (text, expected) in [
            (
                "dns.google",
                "expected an IP, ip:port, [ipv6]:port or a udp://, tcp://, tls://, https://, quic:// or h3:// URL (host names are not resolved), found \"dns.google\"",
            ),
            (
                "[::1",
                "expected an IP, ip:port, [ipv6]:port or a udp://, tcp://, tls://, https://, quic:// or h3:// URL (host names are not resolved), found \"[::1\"",
            ),
            ("0.0.0.0", "upstream 0.0.0.0 is unspecified"),
            ("tcp://224.0.0.1", "upstream 224.0.0.1 is multicast"),
            (
                "192.0.2.53:0",
                "upstream port must be 1..=65535, found \"192.0.2.53:0\"",
            ),
            (
                "tls://192.0.2.53:0",
                "upstream port must be 1..=65535, found \"tls://192.0.2.53:0\"",
            ),
            (
                "tcp://192.0.2.53:65536",
                "expected tcp://ip[:port] or tcp://[ipv6][:port], found \"tcp://192.0.2.53:65536\"",
            ),
            (
                "udp://dns.lab.test@192.0.2.53",
                "a server name (name@) goes only with tls://, https://, quic:// and h3://, found \"udp://dns.lab.test@192.0.2.53\"",
            ),
            (
                "doq://192.0.2.53",
                "unknown upstream scheme in \"doq://192.0.2.53\": expected udp://, tcp://, tls://, https://, quic:// or h3://",
            ),
            (
                "quic://dns.lab.test",
                "upstream \"quic://dns.lab.test\" needs a bootstrap address: quic://name@ip (host names are not resolved)",
            ),
            (
                "h3://dns.lab.test/dns-query",
                "upstream \"h3://dns.lab.test/dns-query\" needs a bootstrap address: h3://name@ip/path (host names are not resolved)",
            ),
            (
                "quic://192.0.2.53/dns-query",
                "expected quic://name@ip[:port], quic://name@[ipv6][:port] or quic://ip[:port], found \"quic://192.0.2.53/dns-query\"",
            ),
            (
                "quic://bad_name@192.0.2.53",
                "invalid server name \"bad_name\" in upstream \"quic://bad_name@192.0.2.53\" (expected a host name or an IP address)",
            ),
            (
                "h3://dns.lab.test@192.0.2.53:0/q",
                "upstream port must be 1..=65535, found \"h3://dns.lab.test@192.0.2.53:0/q\"",
            ),
            (
                "h3://dns.lab.test@192.0.2.53/a b",
                "invalid path \"/a b\" in upstream \"h3://dns.lab.test@192.0.2.53/a b\"",
            ),
            (
                "h3://2001:db8::53/q",
                "an IPv6 address in a URL must be in brackets ([ipv6] or [ipv6]:port), found \"h3://2001:db8::53/q\"",
            ),
            (
                "https://dns.lab.test/dns-query",
                "upstream \"https://dns.lab.test/dns-query\" needs a bootstrap address: https://name@ip/path (host names are not resolved)",
            ),
            (
                "https://dns.lab.test:8443/dns-query",
                "upstream \"https://dns.lab.test:8443/dns-query\" needs a bootstrap address: https://name@ip/path (host names are not resolved)",
            ),
            (
                "tls://dns.lab.test",
                "upstream \"tls://dns.lab.test\" needs a bootstrap address: tls://name@ip (host names are not resolved)",
            ),
            (
                "tls://dns.lab.test@dns.lab.test",
                "expected tls://name@ip[:port], tls://name@[ipv6][:port] or tls://ip[:port], found \"tls://dns.lab.test@dns.lab.test\"",
            ),
            (
                "tls://@192.0.2.53",
                "invalid server name \"\" in upstream \"tls://@192.0.2.53\" (expected a host name or an IP address)",
            ),
            (
                "tls://bad_name@192.0.2.53",
                "invalid server name \"bad_name\" in upstream \"tls://bad_name@192.0.2.53\" (expected a host name or an IP address)",
            ),
            (
                "tls://user:pw@192.0.2.53",
                "invalid server name \"user:pw\" in upstream \"tls://user:pw@192.0.2.53\" (expected a host name or an IP address)",
            ),
            (
                "tls://192.0.2.53/dns-query",
                "expected tls://name@ip[:port], tls://name@[ipv6][:port] or tls://ip[:port], found \"tls://192.0.2.53/dns-query\"",
            ),
            (
                "tcp://192.0.2.53/x",
                "expected tcp://ip[:port] or tcp://[ipv6][:port], found \"tcp://192.0.2.53/x\"",
            ),
            (
                "https://dns.lab.test@192.0.2.53/a b",
                "invalid path \"/a b\" in upstream \"https://dns.lab.test@192.0.2.53/a b\"",
            ),
            (
                "https://dns.lab.test@192.0.2.53/%zz",
                "invalid path \"/%zz\" in upstream \"https://dns.lab.test@192.0.2.53/%zz\"",
            ),
            (
                "https://2001:db8::53:443/q",
                "an IPv6 address in a URL must be in brackets ([ipv6] or [ipv6]:port), found \"https://2001:db8::53:443/q\"",
            ),
            (
                "udp://2001:db8::53",
                "an IPv6 address in a URL must be in brackets ([ipv6] or [ipv6]:port), found \"udp://2001:db8::53\"",
            ),
            (
                "https://dns.lab.test@192.0.2.53:99999/q",
                "expected https://name@ip[:port]/path, https://name@[ipv6][:port]/path or https://ip[:port]/path, found \"https://dns.lab.test@192.0.2.53:99999/q\"",
            ),
        ] {
            assert_eq!(parse_upstream(text), Err(expected.to_string()), "{text}");
        }
    }

    #[test]
    fn http_paths() {
        assert!(is_http_path("/"));
        assert!(is_http_path("/dns-query"));
        assert!(is_http_path("/a%2Fb?x=1&y=2"));
        for bad in ["", "dns-query", "/a b", "/%", "/%4", "/{?dns}", "/é"] {
            assert!(!is_http_path(bad), "{bad}");
        }
    }
}

//! The systemd-resolved backend's decisions: the `resolvectl` commands that give the
//! tunnel's link its servers and domains, and the upstreams read from resolved's own
//! output, its DNS over TLS kept.

use std::net::{IpAddr, SocketAddr};

use tundns_config::{DNS_PORT, Upstream};

use super::plan::ResolverSettings;
use crate::command_line::CommandLine;

/// systemd-resolved's varlink socket: something listens on it while resolved runs.
pub const RESOLVED_SOCKET: &str = "/run/systemd/resolve/io.systemd.Resolve";

/// The `resolvectl` commands that give `interface`'s link `settings`.
pub fn apply_commands(interface: &str, settings: &ResolverSettings) -> Vec<CommandLine> {
    let link_setting = |verb: &str, values: Vec<String>| {
        let mut args = vec![verb.to_string(), interface.to_string()];
        args.extend(values);
        CommandLine {
            program: "resolvectl",
            args,
            stdin: None,
        }
    };
    let servers: Vec<String> = settings.servers.iter().map(ToString::to_string).collect();
    let mut commands = Vec::new();
    let mut domains: Vec<String> = settings.search.clone();
    if !servers.is_empty() {
        commands.push(link_setting("dns", servers));
        // "~." routes every name to this link, as wg-quick's resolvconf shim does.
        domains.insert(0, "~.".to_string());
    }
    if !domains.is_empty() {
        commands.push(link_setting("domain", domains));
    }
    if !settings.servers.is_empty() {
        commands.push(link_setting("default-route", vec!["true".to_string()]));
    }
    commands
}

/// The command that drops what [`apply_commands`] gave the link.
pub fn revert_commands(interface: &str) -> Vec<CommandLine> {
    vec![CommandLine::new("resolvectl", &["revert", interface], None)]
}

/// Port of DNS over TLS (RFC 7858).
const DOT_PORT: u16 = 853;

/// systemd-resolved's `DNSOverTLS=` setting for a link, or globally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotMode {
    No,
    /// TLS first, plain DNS when TLS fails.
    Opportunistic,
    /// TLS only.
    Yes,
}

/// The upstreams systemd-resolved uses, from `resolvectl dns` output (`dns`) and
/// `resolvectl dnsovertls` output (`dot`, `None` when it could not be read), except those
/// of `interface` itself.
///
/// A server is `ADDRESS[:PORT][#NAME]`; link-local ones, which need the link they belong
/// to, are skipped. Where resolved speaks DNS over TLS to a server, so does tundns, with
/// the same server name (the address's text when there is none): taking over the system's
/// resolvers must not turn its encrypted DNS into plain DNS. Opportunistic mode becomes the
/// TLS upstream followed by the plain one. Without `dot`, a server with a name (which only
/// DNS over TLS uses) is taken as opportunistic, one without as plain.
pub fn resolved_upstreams(dns: &str, dot: Option<&str>, interface: &str) -> Vec<Upstream> {
    let own_link = format!("({interface})");
    let modes = resolvectl_lines(dot.unwrap_or_default())
        .filter_map(|(label, value)| Some((label, parse_dot_mode(value.trim())?)))
        .collect::<Vec<_>>();
    let mode_of = |label: &str, named: bool| {
        let find = |wanted: &str| modes.iter().find(|(l, _)| *l == wanted).map(|(_, m)| *m);
        match find(label).or_else(|| find("Global")) {
            Some(mode) => mode,
            None if dot.is_none() && named => DotMode::Opportunistic,
            None => DotMode::No,
        }
    };
    let mut upstreams = Vec::new();
    for (label, list) in resolvectl_lines(dns) {
        if label.ends_with(&own_link) {
            continue;
        }
        for word in list.split_whitespace() {
            let Some((address, port, name)) = parse_resolved_server(word) else {
                continue;
            };
            let plain = Upstream::Udp(SocketAddr::new(address, port.unwrap_or(DNS_PORT)));
            let tls = || Upstream::Tls {
                server_name: name.map_or_else(|| address.to_string(), str::to_ascii_lowercase),
                address: SocketAddr::new(address, port.unwrap_or(DOT_PORT)),
            };
            let wanted = match mode_of(label, name.is_some()) {
                DotMode::No => vec![plain],
                DotMode::Opportunistic => vec![tls(), plain],
                DotMode::Yes => vec![tls()],
            };
            for upstream in wanted {
                if !upstreams.contains(&upstream) {
                    upstreams.push(upstream);
                }
            }
        }
    }
    upstreams
}

/// The `LABEL: VALUE` lines of resolvectl output, the label trimmed. A line that starts
/// with white space continues the previous label's value: resolvectl wraps long lists to
/// the terminal's width, indented under the first.
fn resolvectl_lines(output: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut label = None;
    output.lines().filter_map(move |line| {
        if line.starts_with(char::is_whitespace) {
            return Some((label?, line));
        }
        let (this, value) = line.split_once(':')?;
        label = Some(this.trim());
        Some((this.trim(), value))
    })
}

/// A `DNSOverTLS=` value; `None` for an unset one (the global setting applies).
fn parse_dot_mode(value: &str) -> Option<DotMode> {
    match value {
        "yes" | "true" | "1" | "on" => Some(DotMode::Yes),
        "opportunistic" => Some(DotMode::Opportunistic),
        "no" | "false" | "0" | "off" => Some(DotMode::No),
        _ => None,
    }
}

/// `ADDRESS[:PORT][%SCOPE][#NAME]` as resolved prints a server: the address, the port if
/// given and the TLS server name if given. `None` for a link-local (scoped) or unreadable
/// one.
fn parse_resolved_server(word: &str) -> Option<(IpAddr, Option<u16>, Option<&str>)> {
    let (server, name) = match word.split_once('#') {
        Some((server, name)) if !name.is_empty() => (server, Some(name)),
        Some((server, _)) => (server, None),
        None => (word, None),
    };
    if server.contains('%') {
        return None;
    }
    let (address, port) = match server.parse::<IpAddr>() {
        Ok(address) => (address, None),
        Err(_) => {
            let socket = server.parse::<SocketAddr>().ok()?;
            (socket.ip(), Some(socket.port()))
        }
    };
    match address {
        IpAddr::V6(v6) if v6.is_unicast_link_local() => None,
        _ => Some((address, port, name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolvectl_output_without_our_own_link() {
        let dns = "Global: 192.0.2.1 192.0.2.1\n\
                   Link 2 (eth0): 198.51.100.53#dns.example 2001:db8::53 fe80::1 fe80::2%2\n    \
                   [2001:db8::54]:5353\n\
                   Link 3 (wg0): 10.30.30.30\n         10.30.30.31\n\
                   Link 4 (eth1):\n";
        let servers: Vec<String> = resolved_upstreams(dns, Some(""), "wg0")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            servers,
            [
                "192.0.2.1:53",
                "198.51.100.53:53",
                "[2001:db8::53]:53",
                "[2001:db8::54]:5353"
            ]
        );
    }

    #[test]
    fn resolved_dns_over_tls_stays_encrypted() {
        let dns = "Global: 192.0.2.1#dns.example 192.0.2.2:8853#Other.Example\n\
                   Link 2 (eth0): 198.51.100.53#dot.example 198.51.100.54\n\
                   Link 3 (eth1): 203.0.113.53#ignored.example\n\
                   Link 4 (wg0): 10.30.30.30#dns.example\n";
        let dot = "Global: yes\n\
                   Link 2 (eth0): opportunistic\n\
                   Link 3 (eth1): no\n\
                   Link 4 (wg0):\n";
        let tls = |name: &str, address: &str| Upstream::Tls {
            server_name: name.into(),
            address: address.parse().unwrap(),
        };
        let udp = |address: &str| Upstream::Udp(address.parse().unwrap());
        assert_eq!(
            resolved_upstreams(dns, Some(dot), "wg0"),
            [
                tls("dns.example", "192.0.2.1:853"),
                tls("other.example", "192.0.2.2:8853"),
                tls("dot.example", "198.51.100.53:853"),
                udp("198.51.100.53:53"),
                // Opportunistic without a name: TLS checked against the address.
                tls("198.51.100.54", "198.51.100.54:853"),
                udp("198.51.100.54:53"),
                udp("203.0.113.53:53"),
            ]
        );
        // A link without its own setting follows the global one.
        let unset = "Global: yes\nLink 2 (eth0):\n";
        assert_eq!(
            resolved_upstreams("Link 2 (eth0): 198.51.100.53", Some(unset), "wg0"),
            [tls("198.51.100.53", "198.51.100.53:853")]
        );
        // No DNSOverTLS line at all: plain DNS, resolved's default.
        assert_eq!(
            resolved_upstreams("Global: 192.0.2.1#dns.example", Some(""), "wg0"),
            [udp("192.0.2.1:53")]
        );
        // DNSOverTLS unreadable: a named server (a name is only for TLS) tries TLS first.
        assert_eq!(
            resolved_upstreams("Global: 192.0.2.1#dns.example 192.0.2.2", None, "wg0"),
            [
                tls("dns.example", "192.0.2.1:853"),
                udp("192.0.2.1:53"),
                udp("192.0.2.2:53")
            ]
        );
        // Wrapped lines continue their label, IPv6 with a port and a name included.
        let wrapped = "Global: 1.1.1.1#cloudflare-dns.com\n        \
                       [2606:4700:4700::1111]:853#cloudflare-dns.com\n";
        assert_eq!(
            resolved_upstreams(wrapped, Some("Global: yes\n"), "wg0"),
            [
                tls("cloudflare-dns.com", "1.1.1.1:853"),
                tls("cloudflare-dns.com", "[2606:4700:4700::1111]:853"),
            ]
        );
    }
}

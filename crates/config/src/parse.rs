//! The line parser: one pass over the text, so that the first error reported is the
//! first one in the file, then checks that need the whole file.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::path::Path;

use ipnet::IpNet;

use crate::upstream::parse_upstream;
use crate::values::{self, shown};
use crate::{
    Config, ConfigError, ConfigWarning, DnsProxyConfig, DnsRouteConfig, Endpoint, InterfaceConfig,
    PeerConfig, PublicKey, RouteTable, SecretKey, Spanned, Upstream,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Interface,
    Peer,
    DnsProxy,
    DnsRoute,
}

/// What a header must be, for messages about one that is not.
const EXPECTED_SECTIONS: &str = "expected [Interface], [Peer], [DNSProxy] or [DNSRoute]";

impl Section {
    fn header(self) -> &'static str {
        match self {
            Section::Interface => "[Interface]",
            Section::Peer => "[Peer]",
            Section::DnsProxy => "[DNSProxy]",
            Section::DnsRoute => "[DNSRoute]",
        }
    }

    /// The keys of the section, canonically spelled, and whether each may repeat.
    fn keys(self) -> &'static [(&'static str, Repeat)] {
        use Repeat::{Many, Once};
        match self {
            Section::Interface => &[
                ("PrivateKey", Once),
                ("ListenPort", Once),
                ("FwMark", Once),
                ("Address", Many),
                ("MTU", Once),
                ("DNS", Many),
                ("Table", Once),
                ("PreUp", Many),
                ("PostUp", Many),
                ("PreDown", Many),
                ("PostDown", Many),
                ("SaveConfig", Once),
            ],
            Section::Peer => &[
                ("PublicKey", Once),
                ("PresharedKey", Once),
                ("AllowedIPs", Many),
                ("Endpoint", Once),
                ("PersistentKeepalive", Once),
            ],
            Section::DnsProxy => &[
                ("Enabled", Once),
                ("Address", Many),
                ("Upstream", Many),
                ("Timeout", Once),
                ("MaxInFlight", Once),
                ("TcpIdleTimeout", Once),
                ("MaxTcpConnections", Once),
                ("CAFile", Once),
                ("Cache", Once),
                ("CacheSize", Once),
                ("CacheMinTTL", Once),
                ("CacheMaxTTL", Once),
                ("ServeStale", Once),
                ("Record", Many),
                ("HostsFile", Many),
                ("LocalZone", Many),
                ("Block", Many),
                ("BlockList", Many),
                ("BlockMode", Once),
                ("BlockTTL", Once),
                ("MetricsAddress", Once),
                ("QueryLog", Once),
                ("SetSystemDNS", Once),
            ],
            Section::DnsRoute => &[
                ("Domain", Many),
                ("Upstream", Many),
                ("ThroughTunnel", Once),
            ],
        }
    }
}

const SECTIONS: [Section; 4] = [
    Section::Interface,
    Section::Peer,
    Section::DnsProxy,
    Section::DnsRoute,
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Repeat {
    Once,
    Many,
}

pub(crate) fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let interface_name = crate::interface_name_from_path(path)?;
    let mut parser = Parser::new(path);
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, raw_line) in text.lines().enumerate() {
        parser.line(index + 1, raw_line)?;
    }
    parser.finish(interface_name)
}

/// Which single-valued keys a section has seen, and where.
#[derive(Default)]
struct Seen(Vec<(&'static str, usize)>);

impl Seen {
    fn first_line(&self, key: &str) -> Option<usize> {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, line)| *line)
    }
}

struct InterfaceDraft {
    header_line: usize,
    seen: Seen,
    private_key: Option<SecretKey>,
    listen_port: Option<u16>,
    fwmark: Option<NonZeroU32>,
    addresses: Vec<(IpNet, usize)>,
    mtu: Option<(u16, usize)>,
    dns_servers: Vec<IpAddr>,
    dns_search: Vec<String>,
    table: RouteTable,
    pre_up: Vec<String>,
    post_up: Vec<String>,
    pre_down: Vec<String>,
    post_down: Vec<String>,
}

struct PeerDraft {
    header_line: usize,
    seen: Seen,
    public_key: Option<PublicKey>,
    preshared_key: Option<SecretKey>,
    allowed_ips: Vec<(IpNet, usize)>,
    endpoint: Option<Endpoint>,
    persistent_keepalive: Option<NonZeroU16>,
}

struct DnsProxyDraft {
    header_line: usize,
    seen: Seen,
    /// Every value but `addresses` and `upstreams`, defaults until set.
    config: DnsProxyConfig,
    /// `None` until an `Address` line is read; then the IPs with their lines, and the
    /// last `Address` line.
    addresses: Option<(Vec<(IpAddr, usize)>, usize)>,
    /// `None` until an `Upstream` line is read; then the upstreams and the last line.
    upstreams: Option<(Vec<Upstream>, usize)>,
}

struct RouteDraft {
    header_line: usize,
    seen: Seen,
    domains: Vec<String>,
    upstreams: Vec<(Upstream, usize)>,
    through_tunnel: bool,
}

struct Parser<'p> {
    path: &'p Path,
    current: Option<Section>,
    interface: Option<InterfaceDraft>,
    peers: Vec<PeerDraft>,
    dns_proxy: Option<DnsProxyDraft>,
    routes: Vec<RouteDraft>,
    public_key_lines: HashMap<PublicKey, usize>,
    /// Each routed domain and the line that routed it.
    routed_domains: HashMap<String, usize>,
    warnings: Vec<ConfigWarning>,
}

/// A key name safe to repeat in a message: a short identifier. Anything else (a
/// pasted base64 key, say) is not echoed.
fn printable_name(name: &str) -> Option<&str> {
    const MAX_NAME_LEN: usize = 32;
    (name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    .then_some(name)
}

/// Levenshtein distance, ASCII case-insensitive, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<u8> = a.bytes().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<u8> = b.bytes().map(|c| c.to_ascii_lowercase()).collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

fn unknown_key_message(section: Section, key: &str) -> String {
    let Some(name) = printable_name(key) else {
        return format!(
            "unknown key in {} (not shown: it does not look like a key name)",
            section.header()
        );
    };
    let mut message = format!("unknown key {name:?} in {}", section.header());
    if let Some(other) = SECTIONS.iter().find(|other| {
        **other != section
            && other
                .keys()
                .iter()
                .any(|(known, _)| known.eq_ignore_ascii_case(key))
    }) {
        message.push_str(&format!(" (it belongs in {})", other.header()));
    } else if let Some((suggestion, _)) = section
        .keys()
        .iter()
        .filter(|(known, _)| edit_distance(known, key) <= 2)
        .min_by_key(|(known, _)| edit_distance(known, key))
    {
        message.push_str(&format!(" (did you mean {suggestion:?}?)"));
    }
    message
}

impl<'p> Parser<'p> {
    fn new(path: &'p Path) -> Self {
        Self {
            path,
            current: None,
            interface: None,
            peers: Vec::new(),
            dns_proxy: None,
            routes: Vec::new(),
            public_key_lines: HashMap::new(),
            routed_domains: HashMap::new(),
            warnings: Vec::new(),
        }
    }

    fn error(&self, line: usize, message: impl Into<String>) -> ConfigError {
        ConfigError::at(self.path, line, message)
    }

    fn line(&mut self, number: usize, raw_line: &str) -> Result<(), ConfigError> {
        let content = raw_line.split('#').next().unwrap_or_default().trim();
        if content.is_empty() {
            return Ok(());
        }
        if content.starts_with('[') {
            return self.header(number, content);
        }
        let Some((key, value)) = content.split_once('=') else {
            return Err(self.error(
                number,
                "expected \"Key = Value\" or a [Section] header (missing \"=\")",
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            return Err(self.error(number, "missing key name before \"=\""));
        }
        let Some(section) = self.current else {
            let message = match printable_name(key) {
                Some(name) => format!("key {name:?} before any section header"),
                None => "key before any section header".to_string(),
            };
            return Err(self.error(number, message));
        };
        let Some(&(canonical, repeat)) = section
            .keys()
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(key))
        else {
            return Err(self.error(number, unknown_key_message(section, key)));
        };
        if repeat == Repeat::Once {
            let seen = match section {
                Section::Interface => self.interface.as_mut().map(|d| &mut d.seen),
                Section::Peer => self.peers.last_mut().map(|d| &mut d.seen),
                Section::DnsProxy => self.dns_proxy.as_mut().map(|d| &mut d.seen),
                Section::DnsRoute => self.routes.last_mut().map(|d| &mut d.seen),
            }
            .expect("the current section has a draft");
            if let Some(first) = seen.first_line(canonical) {
                return Err(self.error(
                    number,
                    format!(
                        "duplicate key {canonical:?} in {} (first set on line {first})",
                        section.header()
                    ),
                ));
            }
            seen.0.push((canonical, number));
        }
        let result = match section {
            Section::Interface => self.interface_key(number, canonical, value),
            Section::Peer => self.peer_key(number, canonical, value),
            Section::DnsProxy => self.dns_proxy_key(number, canonical, value),
            Section::DnsRoute => self.route_key(number, canonical, value),
        };
        result.map_err(|message| self.error(number, message))
    }

    fn header(&mut self, number: usize, content: &str) -> Result<(), ConfigError> {
        let Some(name) = content
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .map(str::trim)
        else {
            return Err(self.error(
                number,
                format!("malformed section header: {EXPECTED_SECTIONS}"),
            ));
        };
        let Some(section) = SECTIONS
            .into_iter()
            .find(|s| s.header()[1..s.header().len() - 1].eq_ignore_ascii_case(name))
        else {
            let message = match printable_name(name) {
                Some(name) => format!("unknown section [{name}]: {EXPECTED_SECTIONS}"),
                None => format!("unknown section: {EXPECTED_SECTIONS}"),
            };
            return Err(self.error(number, message));
        };
        self.end_section()?;
        match section {
            Section::Interface => {
                if let Some(first) = &self.interface {
                    return Err(self.error(
                        number,
                        format!(
                            "duplicate [Interface] section (first on line {})",
                            first.header_line
                        ),
                    ));
                }
                self.interface = Some(InterfaceDraft {
                    header_line: number,
                    seen: Seen::default(),
                    private_key: None,
                    listen_port: None,
                    fwmark: None,
                    addresses: Vec::new(),
                    mtu: None,
                    dns_servers: Vec::new(),
                    dns_search: Vec::new(),
                    table: RouteTable::Auto,
                    pre_up: Vec::new(),
                    post_up: Vec::new(),
                    pre_down: Vec::new(),
                    post_down: Vec::new(),
                });
            }
            Section::Peer => self.peers.push(PeerDraft {
                header_line: number,
                seen: Seen::default(),
                public_key: None,
                preshared_key: None,
                allowed_ips: Vec::new(),
                endpoint: None,
                persistent_keepalive: None,
            }),
            Section::DnsProxy => {
                if let Some(first) = &self.dns_proxy {
                    return Err(self.error(
                        number,
                        format!(
                            "duplicate [DNSProxy] section (first on line {})",
                            first.header_line
                        ),
                    ));
                }
                self.dns_proxy = Some(DnsProxyDraft {
                    header_line: number,
                    seen: Seen::default(),
                    config: DnsProxyConfig::default(),
                    addresses: None,
                    upstreams: None,
                });
            }
            Section::DnsRoute => self.routes.push(RouteDraft {
                header_line: number,
                seen: Seen::default(),
                domains: Vec::new(),
                upstreams: Vec::new(),
                through_tunnel: false,
            }),
        }
        self.current = Some(section);
        Ok(())
    }

    /// Checks that need the whole section, run when the next header or the end of the
    /// file closes it.
    fn end_section(&mut self) -> Result<(), ConfigError> {
        match self.current {
            None => Ok(()),
            Some(Section::Interface) => {
                let draft = self.interface.as_ref().expect("interface draft");
                if draft.private_key.is_none() {
                    return Err(self.error(draft.header_line, "[Interface] has no PrivateKey"));
                }
                Ok(())
            }
            Some(Section::Peer) => {
                let draft = self.peers.last().expect("peer draft");
                if draft.public_key.is_none() {
                    return Err(self.error(draft.header_line, "[Peer] has no PublicKey"));
                }
                Ok(())
            }
            Some(Section::DnsProxy) => {
                let draft = self.dns_proxy.as_ref().expect("dns proxy draft");
                self.check_ttl_bounds(draft)?;
                if draft.config.enabled {
                    if let Some((addresses, line)) = &draft.addresses
                        && addresses.is_empty()
                    {
                        return Err(self.error(
                            *line,
                            "[DNSProxy] Address lists no virtual IP (set Enabled = false to turn the proxy off)",
                        ));
                    }
                    if let Some((upstreams, line)) = &draft.upstreams
                        && upstreams.is_empty()
                    {
                        return Err(self.error(
                            *line,
                            "[DNSProxy] Upstream lists no resolver (set Enabled = false to turn the proxy off)",
                        ));
                    }
                }
                Ok(())
            }
            Some(Section::DnsRoute) => {
                let draft = self.routes.last().expect("route draft");
                if draft.domains.is_empty() {
                    return Err(self.error(draft.header_line, "[DNSRoute] has no Domain"));
                }
                if draft.upstreams.is_empty() {
                    return Err(self.error(draft.header_line, "[DNSRoute] has no Upstream"));
                }
                Ok(())
            }
        }
    }

    /// `CacheMinTTL` above `CacheMaxTTL` is reported on the later of the two lines.
    fn check_ttl_bounds(&self, draft: &DnsProxyDraft) -> Result<(), ConfigError> {
        let config = &draft.config;
        if config.cache_min_ttl <= config.cache_max_ttl {
            return Ok(());
        }
        let min_line = draft
            .seen
            .first_line("CacheMinTTL")
            .expect("only a CacheMinTTL line raises the minimum");
        match draft.seen.first_line("CacheMaxTTL") {
            Some(max_line) if max_line > min_line => Err(self.error(
                max_line,
                format!("CacheMaxTTL is below CacheMinTTL (line {min_line})"),
            )),
            Some(max_line) => Err(self.error(
                min_line,
                format!("CacheMinTTL is above CacheMaxTTL (line {max_line})"),
            )),
            None => Err(self.error(
                min_line,
                "CacheMinTTL is above CacheMaxTTL, which defaults to 1d",
            )),
        }
    }

    fn interface_key(&mut self, line: usize, key: &str, value: &str) -> Result<(), String> {
        let draft = self.interface.as_mut().expect("interface draft");
        match key {
            "PrivateKey" => {
                draft.private_key = Some(
                    SecretKey::from_base64(value)
                        .map_err(|why| format!("invalid PrivateKey: {why}"))?,
                );
            }
            "ListenPort" => draft.listen_port = Some(values::parse_port(value)?),
            "FwMark" => draft.fwmark = values::parse_fwmark(value)?,
            "Address" => {
                for item in values::list_items(value)? {
                    let net = values::parse_ip_net(item)?;
                    if let Some(reason) = values::unusable_unicast(net.addr()) {
                        return Err(format!("Address {net} is {reason}"));
                    }
                    if let Some((_, first)) = draft
                        .addresses
                        .iter()
                        .find(|(known, _)| known.addr() == net.addr())
                    {
                        return Err(format!(
                            "Address {} is listed twice (first on line {first})",
                            net.addr()
                        ));
                    }
                    draft.addresses.push((net, line));
                }
            }
            "MTU" => draft.mtu = Some((values::parse_mtu(value)?, line)),
            "DNS" => {
                for item in values::list_items(value)? {
                    if let Ok(ip) = item.parse::<IpAddr>() {
                        draft.dns_servers.push(ip);
                    } else if values::looks_like_ip(item) {
                        return Err(format!("DNS: invalid IP address {}", shown(item)));
                    } else if values::is_domain_name(item) {
                        draft.dns_search.push(item.to_string());
                    } else {
                        return Err(format!(
                            "DNS: {} is neither an IP address nor a search domain",
                            shown(item)
                        ));
                    }
                }
            }
            "Table" => draft.table = values::parse_table(value)?,
            "PreUp" | "PostUp" | "PreDown" | "PostDown" => {
                if value.is_empty() {
                    return Err(format!("{key} needs a command"));
                }
                let commands = match key {
                    "PreUp" => &mut draft.pre_up,
                    "PostUp" => &mut draft.post_up,
                    "PreDown" => &mut draft.pre_down,
                    _ => &mut draft.post_down,
                };
                commands.push(value.to_string());
            }
            "SaveConfig" => {
                if values::parse_bool(value)? {
                    return Err(
                        "SaveConfig = true is not supported: tundns never writes the config file back"
                            .to_string(),
                    );
                }
            }
            _ => unreachable!("every [Interface] key is handled"),
        }
        Ok(())
    }

    fn peer_key(&mut self, line: usize, key: &str, value: &str) -> Result<(), String> {
        match key {
            "PublicKey" => {
                let public_key = PublicKey::from_base64(value)
                    .map_err(|why| format!("invalid PublicKey: {why}"))?;
                if let Some(first) = self.public_key_lines.get(&public_key) {
                    return Err(format!(
                        "duplicate PublicKey: the [Peer] on line {first} has the same key"
                    ));
                }
                self.public_key_lines.insert(public_key, line);
                self.peers.last_mut().expect("peer draft").public_key = Some(public_key);
            }
            "PresharedKey" => {
                let key = SecretKey::from_base64(value)
                    .map_err(|why| format!("invalid PresharedKey: {why}"))?;
                self.peers.last_mut().expect("peer draft").preshared_key = Some(key);
            }
            "AllowedIPs" => {
                for item in values::list_items(value)? {
                    let net = values::parse_ip_net(item)?;
                    let masked = net.trunc();
                    if masked != net {
                        self.warnings.push(ConfigWarning::new(
                            self.path,
                            line,
                            format!(
                                "AllowedIPs {net} has host bits set; using {masked}, as wg does"
                            ),
                        ));
                    }
                    self.peers
                        .last_mut()
                        .expect("peer draft")
                        .allowed_ips
                        .push((masked, line));
                }
            }
            "Endpoint" => {
                self.peers.last_mut().expect("peer draft").endpoint =
                    Some(values::parse_endpoint(value)?);
            }
            "PersistentKeepalive" => {
                self.peers
                    .last_mut()
                    .expect("peer draft")
                    .persistent_keepalive = values::parse_keepalive(value)?;
            }
            _ => unreachable!("every [Peer] key is handled"),
        }
        Ok(())
    }

    fn dns_proxy_key(&mut self, line: usize, key: &str, value: &str) -> Result<(), String> {
        let draft = self.dns_proxy.as_mut().expect("dns proxy draft");
        let config = &mut draft.config;
        match key {
            "Enabled" => config.enabled = values::parse_bool(value)?,
            "Address" => {
                let (addresses, last_line) =
                    draft.addresses.get_or_insert_with(|| (Vec::new(), line));
                *last_line = line;
                for item in values::list_items(value)? {
                    let ip: IpAddr = item.parse().map_err(|_| {
                        format!(
                            "expected a virtual IP address (no /prefix), found {}",
                            shown(item)
                        )
                    })?;
                    if let Some(reason) = values::unusable_unicast(ip) {
                        return Err(format!("virtual address {ip} is {reason}"));
                    }
                    if ip.is_loopback() {
                        return Err(format!(
                            "virtual address {ip} is loopback: the kernel answers it itself, it never reaches the TUN"
                        ));
                    }
                    if let Some((_, first)) = addresses.iter().find(|(known, _)| *known == ip) {
                        return Err(format!(
                            "virtual address {ip} is listed twice (first on line {first})"
                        ));
                    }
                    addresses.push((ip, line));
                }
            }
            "Upstream" => {
                let (upstreams, last_line) =
                    draft.upstreams.get_or_insert_with(|| (Vec::new(), line));
                *last_line = line;
                for item in values::list_items(value)? {
                    upstreams.push(parse_upstream(item)?);
                }
            }
            "Timeout" => config.upstream_timeout = values::parse_duration(value)?,
            "MaxInFlight" => {
                config.max_in_flight = values::parse_count(value, crate::MAX_IN_FLIGHT_LIMIT)?;
            }
            "TcpIdleTimeout" => config.tcp_idle_timeout = values::parse_duration(value)?,
            "MaxTcpConnections" => {
                config.max_tcp_connections =
                    values::parse_count(value, crate::MAX_TCP_CONNECTIONS_LIMIT)?;
            }
            "CAFile" => {
                config.ca_file = Some(Spanned::new(values::parse_path(key, value)?, line));
            }
            "Cache" => config.cache = values::parse_bool(value)?,
            "CacheSize" => config.cache_size = values::parse_cache_size(value)?,
            "CacheMinTTL" => config.cache_min_ttl = values::parse_ttl(value, true)?,
            "CacheMaxTTL" => config.cache_max_ttl = values::parse_ttl(value, false)?,
            "ServeStale" => {
                config.serve_stale = if value.eq_ignore_ascii_case("off") {
                    None
                } else {
                    Some(values::parse_ttl(value, true)?).filter(|stale| !stale.is_zero())
                };
            }
            "Record" => {
                if value.is_empty() {
                    return Err("Record needs NAME [TTL] TYPE DATA".to_string());
                }
                config.records.push(Spanned::new(value.to_string(), line));
            }
            "HostsFile" => config
                .hosts_files
                .push(Spanned::new(values::parse_path(key, value)?, line)),
            "BlockList" => config
                .block_lists
                .push(Spanned::new(values::parse_path(key, value)?, line)),
            "LocalZone" => {
                for item in values::list_items(value)? {
                    let zone = values::parse_domain(item, false)
                        .map_err(|why| format!("LocalZone: {why}"))?;
                    if !config.local_zones.iter().any(|known| known.value == zone) {
                        config.local_zones.push(Spanned::new(zone, line));
                    }
                }
            }
            "Block" => {
                for item in values::list_items(value)? {
                    let domain =
                        values::parse_domain(item, false).map_err(|why| format!("Block: {why}"))?;
                    if !config.blocked.contains(&domain) {
                        config.blocked.push(domain);
                    }
                }
            }
            "BlockMode" => config.block_mode = values::parse_block_mode(value)?,
            "BlockTTL" => config.block_ttl = values::parse_ttl(value, false)?,
            "MetricsAddress" => {
                config.metrics_address = values::parse_listen_address(key, value)?
                    .map(|address| Spanned::new(address, line));
            }
            "QueryLog" => {
                config.query_log = (!value.eq_ignore_ascii_case("off"))
                    .then(|| values::parse_path(key, value))
                    .transpose()?
                    .map(|path| Spanned::new(path, line));
            }
            "SetSystemDNS" => config.set_system_dns = Some(values::parse_bool(value)?),
            _ => unreachable!("every [DNSProxy] key is handled"),
        }
        Ok(())
    }

    fn route_key(&mut self, line: usize, key: &str, value: &str) -> Result<(), String> {
        let draft = self.routes.last_mut().expect("route draft");
        match key {
            "Domain" => {
                let items = values::list_items(value)?;
                if items.is_empty() {
                    return Err(
                        "Domain needs at least one domain name (\".\" for every name)".to_string(),
                    );
                }
                for item in items {
                    let domain =
                        values::parse_domain(item, true).map_err(|why| format!("Domain: {why}"))?;
                    if let Some(first) = self.routed_domains.get(&domain) {
                        return Err(format!(
                            "Domain {domain:?} is already routed on line {first}"
                        ));
                    }
                    self.routed_domains.insert(domain.clone(), line);
                    draft.domains.push(domain);
                }
            }
            "Upstream" => {
                let items = values::list_items(value)?;
                if items.is_empty() {
                    return Err("Upstream needs at least one resolver".to_string());
                }
                for item in items {
                    draft.upstreams.push((parse_upstream(item)?, line));
                }
            }
            "ThroughTunnel" => draft.through_tunnel = values::parse_bool(value)?,
            _ => unreachable!("every [DNSRoute] key is handled"),
        }
        Ok(())
    }

    /// Closes the last section and runs the checks that span sections.
    fn finish(mut self, interface_name: String) -> Result<Config, ConfigError> {
        self.end_section()?;
        let path = self.path;
        let Some(interface) = self.interface.take() else {
            return Err(ConfigError::for_file(path, "missing [Interface] section"));
        };

        let mtu = match interface.mtu {
            Some((mtu, mtu_line)) => {
                if mtu < crate::MIN_MTU_IPV6
                    && let Some((v6, v6_line)) =
                        interface.addresses.iter().find(|(n, _)| n.addr().is_ipv6())
                {
                    return Err(ConfigError::at(
                        path,
                        mtu_line,
                        format!(
                            "MTU {mtu} is below {}, the IPv6 minimum, and Address {v6} on line {v6_line} is IPv6",
                            crate::MIN_MTU_IPV6
                        ),
                    ));
                }
                mtu
            }
            None => crate::DEFAULT_MTU,
        };

        let mut dns_proxy = match self.dns_proxy.take() {
            Some(draft) => {
                let header_line = draft.header_line;
                let addresses = match draft.addresses {
                    Some((addresses, _)) => addresses,
                    None => draft
                        .config
                        .addresses
                        .iter()
                        .map(|ip| (*ip, header_line))
                        .collect(),
                };
                let upstream_line = draft.upstreams.as_ref().map(|(_, line)| *line);
                let enabled_line = draft.seen.first_line("Enabled");
                let mut proxy = draft.config;
                proxy.addresses = addresses.iter().map(|(ip, _)| *ip).collect();
                if let Some((upstreams, _)) = draft.upstreams {
                    proxy.upstreams = upstreams;
                    proxy.upstreams_configured = true;
                }
                if proxy.enabled {
                    check_virtual_addresses(path, &addresses, &interface.addresses, &proxy)?;
                } else if proxy.set_system_dns == Some(true) {
                    let line = draft.seen.first_line("SetSystemDNS").unwrap_or(header_line);
                    let disabled = enabled_line
                        .map(|line| format!(" (Enabled = false on line {line})"))
                        .unwrap_or_default();
                    return Err(ConfigError::at(
                        path,
                        line,
                        format!(
                            "SetSystemDNS = true needs the DNS proxy, which is disabled{disabled}"
                        ),
                    ));
                }
                DnsProxyFinal {
                    proxy,
                    upstream_line,
                    enabled_line,
                }
            }
            None => {
                let proxy = DnsProxyConfig::default();
                for ip in &proxy.addresses {
                    if let Some((net, line)) =
                        interface.addresses.iter().find(|(n, _)| n.addr() == *ip)
                    {
                        return Err(ConfigError::at(
                            path,
                            *line,
                            format!(
                                "Address {net} uses {ip}, the DNS proxy's default virtual address; \
                                 set another [DNSProxy] Address or use another interface address"
                            ),
                        ));
                    }
                }
                DnsProxyFinal {
                    proxy,
                    upstream_line: None,
                    enabled_line: None,
                }
            }
        };

        let routes = std::mem::take(&mut self.routes);
        if dns_proxy.proxy.enabled {
            let first_error = route_errors(
                path,
                &routes,
                &self.routed_domains,
                &dns_proxy,
                &interface.addresses,
                &self.peers,
            )
            .into_iter()
            .min_by_key(|error| error.line());
            if let Some(error) = first_error {
                return Err(error);
            }
        } else {
            let disabled = match dns_proxy.enabled_line {
                Some(line) => format!(" (Enabled = false on line {line})"),
                None => String::new(),
            };
            for route in &routes {
                self.warnings.push(ConfigWarning::new(
                    path,
                    route.header_line,
                    format!("[DNSRoute] is ignored: the DNS proxy is disabled{disabled}"),
                ));
            }
        }
        dns_proxy.proxy.routes = routes
            .into_iter()
            .map(|route| DnsRouteConfig {
                domains: route.domains,
                upstreams: route.upstreams.into_iter().map(|(u, _)| u).collect(),
                through_tunnel: route.through_tunnel,
                line: route.header_line,
            })
            .collect();
        let dns_proxy = dns_proxy.proxy;

        self.warn_shared_allowed_ips();

        Ok(Config {
            interface_name,
            interface: InterfaceConfig {
                private_key: interface
                    .private_key
                    .expect("checked when the section ended"),
                listen_port: interface.listen_port,
                fwmark: interface.fwmark,
                addresses: interface
                    .addresses
                    .into_iter()
                    .map(|(net, _)| net)
                    .collect(),
                mtu,
                dns_servers: interface.dns_servers,
                dns_search: interface.dns_search,
                table: interface.table,
                pre_up: interface.pre_up,
                post_up: interface.post_up,
                pre_down: interface.pre_down,
                post_down: interface.post_down,
            },
            peers: self
                .peers
                .into_iter()
                .map(|peer| PeerConfig {
                    public_key: peer.public_key.expect("checked when the section ended"),
                    preshared_key: peer.preshared_key,
                    allowed_ips: peer.allowed_ips.into_iter().map(|(net, _)| net).collect(),
                    endpoint: peer.endpoint,
                    persistent_keepalive: peer.persistent_keepalive,
                })
                .collect(),
            dns_proxy,
            warnings: self.warnings,
        })
    }

    /// WireGuard routes a network to one peer only: the last one configured wins.
    fn warn_shared_allowed_ips(&mut self) {
        let mut owner: HashMap<IpNet, usize> = HashMap::new();
        for (peer_index, peer) in self.peers.iter().enumerate() {
            for (net, line) in &peer.allowed_ips {
                if let Some(first_peer) = owner.insert(*net, peer_index)
                    && first_peer != peer_index
                {
                    self.warnings.push(ConfigWarning::new(
                        self.path,
                        *line,
                        format!(
                            "AllowedIPs {net} is also claimed by the [Peer] on line {}; WireGuard gives it to the last one",
                            self.peers[first_peer].header_line
                        ),
                    ));
                }
            }
        }
        self.warnings.sort_by_key(ConfigWarning::line);
    }
}

/// The `[DNSProxy]` section once closed, with the lines the route checks cite.
struct DnsProxyFinal {
    proxy: DnsProxyConfig,
    /// The last `Upstream` line, when `Upstream` was set.
    upstream_line: Option<usize>,
    /// The `Enabled` line, when set.
    enabled_line: Option<usize>,
}

/// Every problem with the routes of an enabled proxy; the caller reports the first
/// in the file.
fn route_errors(
    path: &Path,
    routes: &[RouteDraft],
    routed_domains: &HashMap<String, usize>,
    dns_proxy: &DnsProxyFinal,
    interface_addresses: &[(IpNet, usize)],
    peers: &[PeerDraft],
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    if let (Some(upstream_line), Some(&domain_line)) =
        (dns_proxy.upstream_line, routed_domains.get("."))
    {
        let error = if upstream_line < domain_line {
            ConfigError::at(
                path,
                domain_line,
                format!(
                    "Domain \".\" sets the default upstreams, which [DNSProxy] Upstream on line \
                     {upstream_line} already sets; keep one"
                ),
            )
        } else {
            ConfigError::at(
                path,
                upstream_line,
                format!(
                    "[DNSProxy] Upstream sets the default upstreams, which Domain \".\" on line \
                     {domain_line} already sets; keep one"
                ),
            )
        };
        errors.push(error);
    }
    for route in routes {
        for (upstream, line) in &route.upstreams {
            let ip = upstream.address().ip();
            if dns_proxy.proxy.addresses.contains(&ip) {
                errors.push(ConfigError::at(
                    path,
                    *line,
                    format!("upstream {upstream} is a virtual address of the DNS proxy: queries would loop"),
                ));
            }
            if !route.through_tunnel {
                continue;
            }
            if !peers
                .iter()
                .any(|peer| peer.allowed_ips.iter().any(|(net, _)| net.contains(&ip)))
            {
                errors.push(ConfigError::at(
                    path,
                    *line,
                    format!(
                        "upstream {upstream} is routed ThroughTunnel but is in no [Peer] AllowedIPs"
                    ),
                ));
            }
            if !interface_addresses
                .iter()
                .any(|(net, _)| net.addr().is_ipv4() == ip.is_ipv4())
            {
                let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
                errors.push(ConfigError::at(
                    path,
                    *line,
                    format!(
                        "upstream {upstream} is routed ThroughTunnel but the [Interface] has no {family} Address to send from"
                    ),
                ));
            }
        }
    }
    errors
}

fn check_virtual_addresses(
    path: &Path,
    addresses: &[(IpAddr, usize)],
    interface_addresses: &[(IpNet, usize)],
    proxy: &DnsProxyConfig,
) -> Result<(), ConfigError> {
    for (ip, line) in addresses {
        if let Some((_, interface_line)) = interface_addresses.iter().find(|(n, _)| n.addr() == *ip)
        {
            return Err(ConfigError::at(
                path,
                *line,
                format!(
                    "virtual address {ip} is also an interface Address (line {interface_line})"
                ),
            ));
        }
        if let Some(upstream) = proxy.upstreams.iter().find(|u| u.address().ip() == *ip) {
            return Err(ConfigError::at(
                path,
                *line,
                format!("virtual address {ip} is also the upstream {upstream}: queries would loop"),
            ));
        }
    }
    Ok(())
}

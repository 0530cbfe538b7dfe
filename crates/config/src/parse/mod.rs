//! The line parser: one pass over the text, so that the first error reported is the
//! first one in the file, then checks that need the whole file.
//!
//! This module holds the `Parser`, its per-section drafts and the flow from line to
//! section; `sections` names the sections and their keys, `keys` reads each key's
//! value, and `checks` holds the checks that span a section or the file.

mod checks;
mod keys;
mod sections;

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::path::Path;

use ipnet::IpNet;

use crate::{
    Config, ConfigError, ConfigWarning, DnsProxyConfig, Endpoint, KeyLine, ProxyConfig, PublicKey,
    RouteTable, SecretKey, Spanned, Upstream,
};
use sections::{
    EXPECTED_SECTIONS, Repeat, SECTIONS, Section, Seen, printable_name, unknown_key_message,
};

pub(crate) fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let interface_name = crate::interface_name_from_path(path)?;
    let mut parser = Parser::new(path);
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, raw_line) in text.lines().enumerate() {
        parser.line(index + 1, raw_line)?;
    }
    parser.finish(interface_name)
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
    pre_up: Vec<Spanned<String>>,
    post_up: Vec<Spanned<String>>,
    pre_down: Vec<Spanned<String>>,
    post_down: Vec<Spanned<String>>,
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

struct ProxyDraft {
    header_line: usize,
    seen: Seen,
    config: ProxyConfig,
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
    proxy: Option<ProxyDraft>,
    public_key_lines: HashMap<PublicKey, usize>,
    /// Each routed domain and the line that routed it.
    routed_domains: HashMap<String, usize>,
    warnings: Vec<ConfigWarning>,
    key_lines: Vec<KeyLine>,
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
            proxy: None,
            public_key_lines: HashMap::new(),
            routed_domains: HashMap::new(),
            key_lines: Vec::new(),
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
        self.key_lines.push(KeyLine {
            section: section.header(),
            key: canonical,
            line: number,
        });
        if repeat == Repeat::Once {
            let seen = match section {
                Section::Interface => self.interface.as_mut().map(|d| &mut d.seen),
                Section::Peer => self.peers.last_mut().map(|d| &mut d.seen),
                Section::DnsProxy => self.dns_proxy.as_mut().map(|d| &mut d.seen),
                Section::DnsRoute => self.routes.last_mut().map(|d| &mut d.seen),
                Section::Proxy => self.proxy.as_mut().map(|d| &mut d.seen),
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
            Section::Proxy => self.proxy_key(number, canonical, value),
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
            Section::Proxy => {
                if let Some(first) = &self.proxy {
                    return Err(self.error(
                        number,
                        format!(
                            "duplicate [Proxy] section (first on line {})",
                            first.header_line
                        ),
                    ));
                }
                self.proxy = Some(ProxyDraft {
                    header_line: number,
                    seen: Seen::default(),
                    config: ProxyConfig::default(),
                });
            }
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
                let proxy = &draft.config;
                match (&proxy.tls_certificate, &proxy.tls_key) {
                    (Some(certificate), None) => {
                        return Err(self.error(
                            certificate.line,
                            "TLSCertificate needs TLSKey, the certificate's private key",
                        ));
                    }
                    (None, Some(key)) => {
                        return Err(self.error(
                            key.line,
                            "TLSKey needs TLSCertificate, the key's certificate chain",
                        ));
                    }
                    _ => {}
                }
                if draft.config.enabled {
                    if let Some((addresses, line)) = &draft.addresses
                        && addresses.is_empty()
                        && draft.config.listen.is_empty()
                    {
                        return Err(self.error(
                            *line,
                            "[DNSProxy] Address lists no virtual IP and no host address (set Enabled = false to turn the proxy off)",
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
            Some(Section::Proxy) => {
                let draft = self.proxy.as_ref().expect("proxy draft");
                if draft.config.socks5.is_empty() && draft.config.http.is_empty() {
                    return Err(self.error(
                        draft.header_line,
                        "[Proxy] has no listen address: set SOCKS5 = ip:port and/or HTTP = ip:port",
                    ));
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
}

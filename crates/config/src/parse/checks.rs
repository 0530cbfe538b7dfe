//! Checks that need a whole section or the whole file, and `finish`, which runs them
//! and turns the drafts into the `Config`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use super::{DnsProxyDraft, Parser, PeerDraft, RouteDraft};
use crate::{
    Config, ConfigError, ConfigWarning, DnsProxyConfig, DnsRouteConfig, InterfaceConfig,
    PeerConfig, ProxyConfig,
};

impl Parser<'_> {
    /// `CacheMinTTL` above `CacheMaxTTL` is reported on the later of the two lines.
    pub(super) fn check_ttl_bounds(&self, draft: &DnsProxyDraft) -> Result<(), ConfigError> {
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

    /// Closes the last section and runs the checks that span sections.
    pub(super) fn finish(mut self, interface_name: String) -> Result<Config, ConfigError> {
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
                let address_line = draft
                    .addresses
                    .as_ref()
                    .map_or(header_line, |(_, line)| *line);
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
                    // Without SetSystemDNS, `DNS =` points the system at its own servers.
                    if addresses.is_empty() && proxy.set_system_dns == Some(true) {
                        return Err(ConfigError::at(
                            path,
                            address_line,
                            "the system resolver is pointed at the virtual IPs, and Address lists none: \
                             add one, or set SetSystemDNS = false",
                        ));
                    }
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
        let proxy = match self.proxy.take() {
            Some(draft) => Some(check_proxy(path, draft.config, &dns_proxy)?),
            None => None,
        };

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
            proxy,
            warnings: self.warnings,
            key_lines: self.key_lines,
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

/// The `[Proxy]` section against the rest of the file: a listener on a virtual IP needs
/// the virtual IPs (the DNS proxy enabled), and one that other hosts can reach needs
/// `Credentials`.
fn check_proxy(
    path: &Path,
    proxy: ProxyConfig,
    dns_proxy: &DnsProxyConfig,
) -> Result<ProxyConfig, ConfigError> {
    for (key, listen) in proxy.listeners() {
        let ip = listen.value.ip();
        let on_virtual_ip = dns_proxy.addresses.contains(&ip);
        if on_virtual_ip && !dns_proxy.enabled {
            return Err(ConfigError::at(
                path,
                listen.line,
                format!(
                    "{key} {}: the virtual IPs exist only with the DNS proxy enabled; \
                     enable it, or listen on a host address such as 127.0.0.1:{}",
                    listen.value,
                    listen.value.port()
                ),
            ));
        }
        let port = listen.value.port();
        if let Some(encrypted) = dns_proxy
            .encrypted
            .iter()
            .find(|encrypted| on_virtual_ip && encrypted.is_tcp() && encrypted.port() == port)
        {
            return Err(ConfigError::at(
                path,
                listen.line,
                format!(
                    "{key} {}: port {port} of the virtual IPs serves encrypted DNS; \
                     pick another port, or leave {} out of [DNSProxy] Encrypted",
                    listen.value,
                    encrypted.name()
                ),
            ));
        }
        if on_virtual_ip && port == 53 {
            return Err(ConfigError::at(
                path,
                listen.line,
                format!(
                    "{key} {}: port 53 of the virtual IPs is the DNS proxy's",
                    listen.value
                ),
            ));
        }
        // A virtual IP is this host's alone; a host address may be reachable from others.
        if !on_virtual_ip && !ip.is_loopback() && proxy.credentials.is_none() {
            return Err(ConfigError::at(
                path,
                listen.line,
                format!(
                    "{key} {} is reachable from other hosts: set Credentials, or listen on a loopback address",
                    listen.value
                ),
            ));
        }
    }
    Ok(proxy)
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

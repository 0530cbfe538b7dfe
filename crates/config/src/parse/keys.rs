//! Each section's keys: reads a value and stores it in the section's draft, with the
//! checks one line can answer on its own.

use std::net::{IpAddr, SocketAddr};

use super::Parser;
use crate::upstream::parse_upstream;
use crate::values::{self, shown};
use crate::{ConfigWarning, PublicKey, SecretKey, Spanned};

impl Parser<'_> {
    pub(super) fn interface_key(
        &mut self,
        line: usize,
        key: &str,
        value: &str,
    ) -> Result<(), String> {
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
                commands.push(Spanned::new(value.to_string(), line));
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

    pub(super) fn peer_key(&mut self, line: usize, key: &str, value: &str) -> Result<(), String> {
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

    pub(super) fn dns_proxy_key(
        &mut self,
        line: usize,
        key: &str,
        value: &str,
    ) -> Result<(), String> {
        let draft = self.dns_proxy.as_mut().expect("dns proxy draft");
        let config = &mut draft.config;
        match key {
            "Enabled" => config.enabled = values::parse_bool(value)?,
            "AllowFrom" => {
                for item in values::list_items(value)? {
                    let net = values::parse_ip_net(item)?;
                    if net.prefix_len() == 0 {
                        // Every host on every network: an open resolver.
                        return Err(format!(
                            "AllowFrom {net} would let any host use the virtual IPs; name the networks"
                        ));
                    }
                    config.allow_from.push(net.trunc());
                }
            }
            "Address" => {
                let (addresses, last_line) =
                    draft.addresses.get_or_insert_with(|| (Vec::new(), line));
                *last_line = line;
                for item in values::list_items(value)? {
                    // ip:port is a host socket to serve DNS on, beside the virtual IPs.
                    if let Ok(listen) = item.parse::<SocketAddr>() {
                        if listen.port() == 0 {
                            return Err(format!("{listen}: a listen address needs a port"));
                        }
                        // Other hosts would get an open resolver, with the tunnel's names.
                        if !listen.ip().is_loopback() {
                            return Err(format!(
                                "{listen}: DNS on a host address is served on loopback only"
                            ));
                        }
                        if let Some(first) =
                            config.listen.iter().find(|known| known.value == listen)
                        {
                            return Err(format!(
                                "{listen} is listed twice (first on line {})",
                                first.line
                            ));
                        }
                        config.listen.push(Spanned::new(listen, line));
                        continue;
                    }
                    let ip: IpAddr = item.parse().map_err(|_| {
                        format!(
                            "expected a virtual IP address (no /prefix) or a host address to listen on (ip:port), found {}",
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
            "RateLimit" => {
                config.rate_limit = match value {
                    "0" | "off" => None,
                    _ => values::parse_count(value, crate::MAX_RATE_LIMIT)
                        .ok()
                        .and_then(|count| std::num::NonZeroU32::new(count as u32))
                        .map(Some)
                        .ok_or_else(|| {
                            format!(
                                "RateLimit: expected answers a second from 1 to {}, or 0 or off, \
                                 found {}",
                                crate::MAX_RATE_LIMIT,
                                shown(value)
                            )
                        })?,
                };
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
            "CacheFile" => config.cache_file = values::parse_bool(value)?,
            "Prefetch" => config.prefetch = values::parse_bool(value)?,
            "CacheSize" => config.cache_size = values::parse_cache_size(value)?,
            "CacheMinTTL" => config.cache_min_ttl = values::parse_ttl(value, true)?,
            "CacheMaxTTL" => config.cache_max_ttl = values::parse_ttl(value, false)?,
            "CacheMaxNegativeTTL" => {
                config.cache_max_negative_ttl = values::parse_ttl(value, true)?;
            }
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
            "Encrypted" => {
                config.encrypted.clear();
                if value.eq_ignore_ascii_case("off") {
                    return Ok(());
                }
                for item in values::list_items(value)? {
                    let protocol = crate::EncryptedDns::ALL
                        .into_iter()
                        .find(|protocol| item.eq_ignore_ascii_case(protocol.name()))
                        .ok_or_else(|| {
                            format!(
                                "Encrypted: expected tls, https, quic or off, found {}",
                                shown(item)
                            )
                        })?;
                    if !config.encrypted.contains(&protocol) {
                        config.encrypted.push(protocol);
                    }
                }
            }
            "TLSCertificate" => {
                config.tls_certificate = Some(Spanned::new(values::parse_path(key, value)?, line));
            }
            "TLSKey" => config.tls_key = Some(Spanned::new(values::parse_path(key, value)?, line)),
            _ => unreachable!("every [DNSProxy] key is handled"),
        }
        Ok(())
    }

    pub(super) fn proxy_key(&mut self, line: usize, key: &str, value: &str) -> Result<(), String> {
        let config = &mut self.proxy.as_mut().expect("proxy draft").config;
        match key {
            "SOCKS5" | "HTTP" => {
                for item in values::list_items(value)? {
                    let address = values::parse_listen_address(key, item)?
                        .ok_or_else(|| format!("{key} takes ip:port addresses, not off"))?;
                    let mut all = config.socks5.iter().chain(&config.http);
                    if let Some(first) = all.find(|known| known.value == address) {
                        return Err(format!(
                            "{address} is already a proxy's listen address (line {})",
                            first.line
                        ));
                    }
                    let listeners = match key {
                        "SOCKS5" => &mut config.socks5,
                        _ => &mut config.http,
                    };
                    listeners.push(Spanned::new(address, line));
                }
            }
            "Credentials" => {
                config.credentials = Some(Spanned::new(values::parse_path(key, value)?, line));
            }
            _ => unreachable!("every [Proxy] key is handled"),
        }
        Ok(())
    }

    pub(super) fn route_key(&mut self, line: usize, key: &str, value: &str) -> Result<(), String> {
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
                            "Domain {} is already routed on line {first}",
                            values::shown(&domain)
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
}

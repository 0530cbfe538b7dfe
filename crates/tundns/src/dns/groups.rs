//! Upstream groups: a pool per upstream list, with the settings every pool of a tunnel
//! shares (timeout, mark, source address, CA file). Built at start from the config and at
//! run time for routes added through the control socket.

use std::net::IpAddr;
use std::path::Path;

use tundns_config::{Config, ConfigError, Upstream};
use tundns_upstream::{PoolConfig, Tunnel, UpstreamPool};

/// How a group's queries reach its upstreams.
#[derive(Clone)]
pub enum Reach {
    /// The host's sockets, with the interface's mark: around the tunnel.
    Host,
    /// Sockets bound to this interface address, which the host's routes send into the TUN.
    TunnelRoute(IpAddr),
    /// The rootless mode's userspace stack, from the interface address.
    Userspace(Tunnel),
}

impl Reach {
    /// How a `ThroughTunnel` group of `upstreams` reaches them: through `userspace` when
    /// tundns runs without a TUN, else from the interface address over the host's routes.
    pub fn through_tunnel(
        config: &Config,
        upstreams: &[Upstream],
        userspace: Option<&Tunnel>,
        path: &Path,
        line: usize,
    ) -> Result<Self, ConfigError> {
        let source = tunnel_source(config, upstreams, path, line)?;
        if let Some(upstream) = upstreams
            .iter()
            .find(|upstream| !config.in_allowed_ips(upstream.address().ip()))
        {
            // WireGuard would not take its queries: they would follow the host's routes.
            return Err(ConfigError::at(
                path,
                line,
                format!(
                    "upstream {upstream} is routed ThroughTunnel but is in no [Peer] AllowedIPs"
                ),
            ));
        }
        Ok(match userspace {
            Some(tunnel) => Reach::Userspace(tunnel.clone()),
            None => Reach::TunnelRoute(source),
        })
    }
}

pub fn pool_config(config: &Config, reach: Reach) -> PoolConfig {
    let (fwmark, bind_address, tunnel) = match reach {
        Reach::Host => (config.interface.fwmark.map(|mark| mark.get()), None, None),
        // Queries through the tunnel must not carry the mark that keeps the others out of it.
        Reach::TunnelRoute(source) => (None, Some(source), None),
        Reach::Userspace(tunnel) => (None, None, Some(tunnel)),
    };
    PoolConfig {
        attempt_timeout: config.dns_proxy.upstream_timeout,
        fwmark,
        bind_address,
        tunnel,
        ca_file: config
            .dns_proxy
            .ca_file
            .as_ref()
            .map(|file| file.value.clone()),
        ..PoolConfig::default()
    }
}

/// The interface address that sources queries to a group reached through the tunnel: the
/// first `Address` of the family of the group's upstreams, which must share one family
/// since every socket of the group is bound to that address.
fn tunnel_source(
    config: &Config,
    upstreams: &[Upstream],
    path: &Path,
    line: usize,
) -> Result<IpAddr, ConfigError> {
    let family_v4 = upstreams.first().is_none_or(|up| up.address().is_ipv4());
    if upstreams
        .iter()
        .any(|up| up.address().is_ipv4() != family_v4)
    {
        return Err(ConfigError::at(
            path,
            line,
            "ThroughTunnel upstreams must all be IPv4 or all IPv6: they share one source address"
                .to_owned(),
        ));
    }
    config
        .interface
        .addresses
        .iter()
        .map(|net| net.addr())
        .find(|addr| addr.is_ipv4() == family_v4)
        .ok_or_else(|| {
            ConfigError::at(
                path,
                line,
                "ThroughTunnel needs an interface Address of the upstream's IP family".to_owned(),
            )
        })
}

pub fn upstream_group(
    upstreams: &[Upstream],
    pool: PoolConfig,
    path: &Path,
    line: Option<usize>,
) -> Result<UpstreamPool, ConfigError> {
    UpstreamPool::new(upstreams.to_vec(), pool).map_err(|error| {
        let message = format!("upstreams: {error}");
        match line {
            Some(line) => ConfigError::at(path, line, message),
            None => ConfigError::for_file(path, message),
        }
    })
}

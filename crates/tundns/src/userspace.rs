//! `tundns up --userspace`: the rootless mode. No TUN, no routes, no change to the system
//! resolver; WireGuard runs over an ordinary UDP socket, the proxies' userspace stack is
//! the only thing inside the tunnel, the proxies listen on host addresses and the DNS proxy
//! on the host sockets of `[DNSProxy] Address`. The control and UAPI sockets live under
//! `$XDG_RUNTIME_DIR/tundns`, the cache file under `$XDG_STATE_HOME/tundns`.
//!
//! The same config file works in both modes: keys that would change the host are refused,
//! naming their line ([`refuse_privileged`]); the virtual IPs, which have no TUN to be
//! served from, are left out with one log line. `ThroughTunnel` routes go through the
//! proxies' stack, which carries plain DNS only: an encrypted upstream (DoT, DoH, DoQ,
//! HTTP/3) there is refused.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use gotatun::device::uapi::UapiServer;
use gotatun::tun::MtuWatcher;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;
use tundns_config::{Config, ConfigError, RouteTable};
use tundns_filter::FilterStats;
use tundns_host::paths::{SocketDirectories, user_state_directory};
use tundns_host::system_dns::DnsTakeover;

use crate::control::ControlServer;
use crate::datapath::{self, UserspaceWireGuard};
use crate::dns::cache_file::{CacheFile, CacheSaver};
use crate::dns::config as dns_config;
use crate::dns::host_sockets::{ClaimedDnsSockets, RunningDnsSockets};
use crate::observability::{self, Observability};
use crate::proxy::{ClaimedProxies, ProxyStack, RunningProxies};
use crate::tunnel::{ShutdownSignals, TunnelError, remove_uapi_socket, validate, wireguard_peers};

/// A running rootless tunnel.
pub struct UserspaceTunnel {
    name: String,
    device: UserspaceWireGuard,
    sockets: SocketDirectories,
    uapi: JoinHandle<()>,
    control: Option<ControlServer>,
    observability: Option<Observability>,
    proxies: Option<RunningProxies>,
    dns_sockets: Option<RunningDnsSockets>,
    /// Saves the DNS cache, in this user's state directory, while running and at shutdown.
    cache_saver: Option<CacheSaver>,
}

impl UserspaceTunnel {
    /// Brings the tunnel up as `config` says, changing nothing on the host.
    pub async fn up(config: &Config, path: &Path) -> Result<Self, TunnelError> {
        validate(config, path)?;
        refuse_privileged(config, path)?;
        let sockets = SocketDirectories::user().ok_or_else(|| {
            TunnelError::Userspace(
                "XDG_RUNTIME_DIR is not set: the control socket has nowhere to go".into(),
            )
        })?;
        if config.dns_proxy.enabled && !config.dns_proxy.addresses.is_empty() {
            tracing::info!(
                "[DNSProxy] Address: the virtual IPs are served only through a TUN; --userspace serves DNS on its host addresses (ip:port) alone"
            );
        }
        // The virtual IPs do not exist here: nothing is served on them, or reported.
        let mut config = config.clone();
        config.dns_proxy.addresses.clear();
        let config = &config;
        // Reads the system's resolvers as upstreams when the config names none.
        let takeover = DnsTakeover::prepare(config)?;
        let config = &takeover.resolver_config(config);
        refuse_upstreams_in_tunnel(config, path)?;
        // The proxies' stack is WireGuard's only packet source and sink, and the way into
        // the tunnel of the resolver's ThroughTunnel groups.
        let mut stack = ProxyStack::new(config, MtuWatcher::new(config.interface.mtu), None);
        let tunnel_way = stack.tunnel();
        let resolver = config
            .dns_proxy
            .enabled
            .then(|| dns_config::resolver_parts(config, path, Some(&tunnel_way)))
            .transpose()?;
        // Warm before the first query can arrive.
        let state_directory = user_state_directory();
        if state_directory.is_none() && config.dns_proxy.cache_file {
            tracing::info!(
                "CacheFile: neither $XDG_STATE_HOME nor $HOME is set; the cache is not kept"
            );
        }
        let cache_file = resolver
            .as_ref()
            .zip(state_directory)
            .and_then(|((parts, _), directory)| CacheFile::warm(&directory, config, parts));
        let observability = observability::Claimed::new(config, path)?;
        let proxies = ClaimedProxies::claim(config, path).await?;
        let dns_sockets = ClaimedDnsSockets::bind(config, path).await?;
        let peers = wireguard_peers(config).await?;
        let name = config.interface_name.clone();

        let (uapi_server, uapi) = serve_uapi(&sockets, &name)?;
        let device =
            match datapath::start_userspace_wireguard(config, peers, &mut stack, uapi_server).await
            {
                Ok(device) => device,
                Err(error) => {
                    uapi.abort();
                    remove_uapi_socket(&sockets.uapi_socket(&name));
                    return Err(error.into());
                }
            };
        let proxy = resolver.map(|(parts, local_source)| {
            let proxy = crate::dns::proxy::DnsProxy::new(parts);
            (proxy, local_source)
        });
        if let (Some((proxy, _)), Some(log)) = (&proxy, observability.query_log()) {
            proxy.set_query_log(log.clone());
        }
        let resolver = proxy.as_ref().map(|(proxy, _)| proxy.clone());
        let mut tunnel = Self {
            name,
            device,
            uapi,
            control: None,
            observability: None,
            dns_sockets: resolver
                .as_ref()
                .map(|resolver| dns_sockets.serve(resolver, config)),
            proxies: proxies.map(|claimed| claimed.serve(config, stack, resolver.clone())),
            cache_saver: cache_file
                .zip(resolver.clone())
                .and_then(|(file, proxy)| CacheSaver::start(file, proxy)),
            sockets,
        };
        let stats = Arc::new(FilterStats::default());
        match observability.start(resolver, stats, &tunnel.name, &tunnel.sockets) {
            Ok(running) => tunnel.observability = Some(running),
            Err(error) => {
                tunnel.shut_down().await;
                return Err(error.into());
            }
        }
        match ControlServer::start(config, path, proxy, None, Some(tunnel_way), &tunnel.sockets) {
            Ok(control) => tunnel.control = Some(control),
            Err(error) => {
                tunnel.shut_down().await;
                return Err(error.into());
            }
        }
        tracing::info!(interface = %tunnel.name, "tunnel up (userspace)");
        Ok(tunnel)
    }

    /// Runs until one of `signals` arrives or WireGuard fails, then shuts down.
    pub async fn run_until(mut self, signals: &mut ShutdownSignals) -> Result<(), TunnelError> {
        let failure = signals.until(self.device.wait()).await;
        self.shut_down().await;
        failure.map_or(Ok(()), Err)
    }

    async fn shut_down(mut self) {
        if let Some(control) = self.control.take() {
            control.shut_down();
        }
        drop(self.proxies.take());
        drop(self.dns_sockets.take());
        if let Some(saver) = self.cache_saver.take() {
            saver.stop().await;
        }
        drop(self.observability.take());
        self.device.stop().await;
        self.uapi.abort();
        remove_uapi_socket(&self.sockets.uapi_socket(&self.name));
        tracing::info!(interface = %self.name, "tunnel down");
    }
}

/// Refuses, naming the line, what would change the host, which the rootless mode never
/// does.
pub fn refuse_privileged(config: &Config, path: &Path) -> Result<(), ConfigError> {
    let refuse = |section: &str, key: &str, reason: &str| {
        let line = config.line_of(section, key).unwrap_or(1);
        Err(ConfigError::at(
            path,
            line,
            format!("{key}: {reason}; --userspace changes nothing on the host"),
        ))
    };
    let interface = &config.interface;
    if interface.table != RouteTable::Off && config.line_of("[Interface]", "Table").is_some() {
        return refuse(
            "[Interface]",
            "Table",
            "routes need the TUN (Table = off is accepted)",
        );
    }
    if interface.fwmark.is_some() {
        return refuse(
            "[Interface]",
            "FwMark",
            "marking packets needs CAP_NET_ADMIN",
        );
    }
    for hook in ["PreUp", "PostUp", "PreDown", "PostDown"] {
        if config.line_of("[Interface]", hook).is_some() {
            return refuse(
                "[Interface]",
                hook,
                "hooks are for the interface, and there is none",
            );
        }
    }
    match config.dns_proxy.set_system_dns {
        Some(true) => {
            return refuse(
                "[DNSProxy]",
                "SetSystemDNS",
                "the system resolver is not changed",
            );
        }
        None if !interface.dns_servers.is_empty() || !interface.dns_search.is_empty() => {
            return refuse(
                "[Interface]",
                "DNS",
                "it would point the system resolver at tundns (set SetSystemDNS = false in [DNSProxy] to keep it for the other mode)",
            );
        }
        _ => {}
    }
    if let Some(proxy) = &config.proxy {
        for (key, listen) in proxy.listeners() {
            if config.dns_proxy.addresses.contains(&listen.value.ip()) {
                return Err(ConfigError::at(
                    path,
                    listen.line,
                    format!(
                        "{key} {}: a virtual IP is served through the TUN, which --userspace does not have; listen on a host address such as 127.0.0.1:{}",
                        listen.value,
                        listen.value.port()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Refuses upstreams inside a peer's AllowedIPs, of `config` as it will run (with the
/// system's resolvers in place of the defaults when it names none): without a TUN their
/// queries follow the host's routes, and would leave outside the tunnel, in the clear.
fn refuse_upstreams_in_tunnel(config: &Config, path: &Path) -> Result<(), TunnelError> {
    if !config.dns_proxy.enabled {
        return Ok(());
    }
    let in_tunnel =
        |upstream: &&tundns_config::Upstream| config.in_allowed_ips(upstream.address().ip());
    let reason = |upstream: &tundns_config::Upstream| {
        format!(
            "upstream {upstream} is inside AllowedIPs: --userspace has no TUN to route it through, and would send it outside the tunnel"
        )
    };
    if let Some(upstream) = config.dns_proxy.upstreams.iter().find(in_tunnel) {
        return Err(match config.line_of("[DNSProxy]", "Upstream") {
            Some(line) if config.dns_proxy.upstreams_configured => {
                ConfigError::at(path, line, reason(upstream)).into()
            }
            _ => TunnelError::Userspace(format!(
                "{} (it is the system's, or the default: set [DNSProxy] Upstream to one outside)",
                reason(upstream)
            )),
        });
    }
    for route in config.dns_proxy.routes.iter().filter(|r| !r.through_tunnel) {
        if let Some(upstream) = route.upstreams.iter().find(in_tunnel) {
            let message = format!(
                "{}; ThroughTunnel = true sends it through the tunnel",
                reason(upstream)
            );
            return Err(ConfigError::at(path, route.line, message).into());
        }
    }
    Ok(())
}

/// The UAPI socket at `$XDG_RUNTIME_DIR/tundns/wireguard/<name>.sock`, speaking WireGuard's
/// configuration protocol as the system one does; its task ends when aborted.
fn serve_uapi(
    sockets: &SocketDirectories,
    name: &str,
) -> Result<(UapiServer, JoinHandle<()>), TunnelError> {
    let failure = |error: io::Error| {
        TunnelError::Userspace(format!(
            "UAPI socket in {}: {error}",
            sockets.uapi.display()
        ))
    };
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&sockets.uapi)
        .map_err(failure)?;
    // A socket in them is this user's alone only if they are: this user's own
    // directories, made 0700 (as the control socket's are).
    for directory in [&sockets.control, &sockets.uapi] {
        let metadata = std::fs::symlink_metadata(directory).map_err(failure)?;
        if !metadata.is_dir() || metadata.uid() != nix::unistd::geteuid().as_raw() {
            return Err(TunnelError::Userspace(format!(
                "{} is not a directory owned by this user",
                directory.display()
            )));
        }
        if metadata.mode() & 0o077 != 0 {
            std::fs::set_permissions(directory, std::fs::Permissions::from_mode(0o700))
                .map_err(failure)?;
        }
    }
    let path = sockets.uapi_socket(name);
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        return Err(TunnelError::Userspace(format!(
            "{} is in use: is this tunnel already running?",
            path.display()
        )));
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(failure)?;
    // It hands out the private key: the owner alone, whatever the umask.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(failure)?;
    let (client, server) = UapiServer::new();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            // gotatun's protocol driver reads and writes blocking, on a thread of its own.
            let Ok(stream) = stream.into_std() else {
                continue;
            };
            if stream.set_nonblocking(false).is_ok() {
                client.clone().wrap_read_write(stream);
            }
        }
    });
    Ok((server, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\nAddress = 10.99.0.2/24\n";

    /// The line `refuse_privileged` names for `HEAD` plus `extra`, or `None` if it accepts.
    fn refused_line(extra: &str) -> Option<usize> {
        let config = Config::parse(&format!("{HEAD}{extra}"), "wg0.conf").expect("parses");
        let path = Path::new("wg0.conf");
        let error = match refuse_privileged(&config, path) {
            Err(error) => error.to_string(),
            Ok(()) => refuse_upstreams_in_tunnel(&config, path).err()?.to_string(),
        };
        let text = error;
        assert!(text.contains("wg0.conf"), "{text}");
        text.split(':').nth(1).and_then(|line| line.parse().ok())
    }

    #[test]
    fn what_would_change_the_host_is_refused_on_its_line() {
        assert_eq!(refused_line("Table = 1234\n"), Some(4));
        assert_eq!(refused_line("FwMark = 0x1234\n"), Some(4));
        assert_eq!(refused_line("MTU = 1400\nPostUp = echo up\n"), Some(5));
        assert_eq!(refused_line("DNS = 10.99.0.1\n"), Some(4));
        assert_eq!(refused_line("[DNSProxy]\nSetSystemDNS = true\n"), Some(5));
        assert_eq!(
            refused_line("[Proxy]\nSOCKS5 = 127.0.0.1:1080, 10.30.30.30:1080\n"),
            Some(5)
        );
        let peer = "[Peer]\nPublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\nAllowedIPs = 10.99.0.0/24\n";
        assert_eq!(
            refused_line(&format!(
                "{peer}[DNSProxy]\nUpstream = 192.0.2.53, 10.99.0.53\n"
            )),
            Some(8)
        );
        assert_eq!(
            refused_line(&format!(
                "{peer}[DNSRoute]\nDomain = corp\nUpstream = 10.99.0.53\n"
            )),
            Some(7)
        );
    }

    #[test]
    fn what_changes_nothing_is_accepted() {
        assert_eq!(
            refused_line("Table = off\nFwMark = off\nMTU = 1380\n"),
            None
        );
        assert_eq!(
            refused_line(
                "DNS = 10.99.0.1\n[DNSProxy]\nSetSystemDNS = false\nAddress = 127.0.0.1:5353\n"
            ),
            None
        );
        assert_eq!(refused_line("[Proxy]\nSOCKS5 = 127.0.0.1:1080\n"), None);
        // Sent through the proxies' stack.
        assert_eq!(
            refused_line(
                "[Peer]\nPublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\nAllowedIPs = 10.99.0.0/24\n\
                 [DNSRoute]\nDomain = corp\nUpstream = 10.99.0.1\nThroughTunnel = true\n"
            ),
            None
        );
    }
}

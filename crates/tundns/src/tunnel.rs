//! `tundns up`: the TUN device, its addresses and routes, the filter, the services and the
//! gotatun device, brought up in order and torn down in reverse.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use gotatun::device::uapi::UapiServer;
use gotatun::device::{DeviceBuilder, Peer};
use gotatun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;
use tun_rs::AsyncDevice;
use tundns_config::{Config, Endpoint, RouteTable};
use tundns_filter::{FilterStats, FilteredTun, FilteredTunSender, Rules, Service, VirtualHost};
use tundns_upstream::{PoolConfig, UpstreamPool};

use crate::dns_proxy::{DnsProxy, UdpDns};
use crate::system::{SystemChanges, SystemError, host_route};
use crate::tcp_dns::TcpDns;

/// Where gotatun puts the UAPI socket, as wireguard-go and `wg` expect.
const UAPI_DIRECTORY: &str = "/var/run/wireguard";

/// Why `tundns up` could not bring the tunnel up, or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("creating TUN device {name}: {source}")]
    CreateTun { name: String, source: io::Error },
    #[error(transparent)]
    System(#[from] SystemError),
    #[error("resolving endpoint {host}:{port}: {reason}")]
    Endpoint {
        host: String,
        port: u16,
        reason: String,
    },
    #[error(
        "AllowedIPs {0} would route the tunnel's own traffic into itself; full tunnels need policy routing, which tundns does not do yet (use Table = off and route it yourself)"
    )]
    DefaultRoute(IpNet),
    #[error("starting the UAPI socket: {0}")]
    Uapi(String),
    #[error("starting WireGuard: {0}")]
    WireGuard(#[from] gotatun::device::Error),
    #[error("waiting for signals: {0}")]
    Signals(io::Error),
    #[error("hook `{command}` failed: {reason}")]
    Hook { command: String, reason: String },
}

/// A running tunnel. Dropping it without [`Tunnel::shut_down`] leaves the kernel to remove
/// the interface with the process.
pub struct Tunnel {
    name: String,
    device: gotatun::device::Device<(
        gotatun::udp::socket::UdpSocketFactory,
        FilteredTunSender,
        FilteredTun,
    )>,
    changes: SystemChanges,
    tun: Arc<AsyncDevice>,
    rules: Rules,
    pre_down: Vec<String>,
    post_down: Vec<String>,
}

impl Tunnel {
    /// Brings the tunnel up as `config` says. On failure, whatever was set up is undone.
    pub async fn up(config: &Config) -> Result<Self, TunnelError> {
        let name = config.interface_name.clone();
        run_hooks(&config.interface.pre_up, &name).await?;
        let tun = tun_rs::DeviceBuilder::new()
            .name(&name)
            .mtu(config.interface.mtu)
            .build_async()
            .map_err(|source| TunnelError::CreateTun {
                name: name.clone(),
                source,
            })?;
        let tun = Arc::new(tun);

        let mut changes = SystemChanges::for_interface(&name).await?;
        if let Err(error) = configure_interface(config, &mut changes).await {
            changes.undo().await;
            changes.delete_interface().await;
            return Err(error);
        }

        let rules = Rules::new();
        let stats = Arc::new(FilterStats::default());
        if config.dns_proxy.enabled {
            register_dns_proxy(config, &rules, &tun, &stats);
        }

        let device = match start_wireguard(config, &tun, &rules, &stats).await {
            Ok(device) => device,
            Err(error) => {
                changes.undo().await;
                changes.delete_interface().await;
                remove_uapi_socket(&name);
                return Err(error);
            }
        };
        let tunnel = Self {
            name,
            device,
            changes,
            tun,
            rules,
            pre_down: config.interface.pre_down.clone(),
            post_down: config.interface.post_down.clone(),
        };
        if let Err(error) = run_hooks(&config.interface.post_up, &tunnel.name).await {
            tunnel.shut_down().await;
            return Err(error);
        }
        tracing::info!(interface = %tunnel.name, "tunnel up");
        Ok(tunnel)
    }

    /// The live rule table.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Serves `service` on the virtual IP `ip`: routes the address into the interface and
    /// registers the service in the filter. Both are undone at shutdown.
    pub async fn serve(
        &mut self,
        ip: IpAddr,
        service: Arc<dyn Service>,
    ) -> Result<(), TunnelError> {
        if self.rules.snapshot().get(ip).is_none() {
            self.changes.add_route(host_route(ip)).await?;
        }
        self.rules.insert(ip, service);
        Ok(())
    }

    /// Runs until SIGINT or SIGTERM, or until WireGuard fails, then shuts down.
    pub async fn run_until_signal(mut self) -> Result<(), TunnelError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).map_err(TunnelError::Signals)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(TunnelError::Signals)?;
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
            _ = self.device.wait() => tracing::error!("WireGuard failed: shutting down"),
        }
        self.shut_down().await;
        Ok(())
    }

    /// Stops WireGuard and removes every route, the interface and the UAPI socket.
    pub async fn shut_down(mut self) {
        // Teardown goes on whatever the hooks say: a failing PreDown must not leave routes.
        if let Err(error) = run_hooks(&self.pre_down, &self.name).await {
            tracing::warn!(%error, "PreDown");
        }
        self.device.stop().await;
        for ip in self.rules.snapshot().addresses().collect::<Vec<_>>() {
            self.rules.remove(ip);
        }
        self.changes.undo().await;
        self.changes.delete_interface().await;
        remove_uapi_socket(&self.name);
        drop(self.tun);
        if let Err(error) = run_hooks(&self.post_down, &self.name).await {
            tracing::warn!(%error, "PostDown");
        }
        tracing::info!(interface = %self.name, "tunnel down");
    }
}

async fn configure_interface(
    config: &Config,
    changes: &mut SystemChanges,
) -> Result<(), TunnelError> {
    for address in &config.interface.addresses {
        changes.add_address(*address).await?;
    }
    changes.set_up().await?;
    if config.interface.table != RouteTable::Off {
        for peer in &config.peers {
            for network in &peer.allowed_ips {
                if network.prefix_len() == 0 {
                    return Err(TunnelError::DefaultRoute(*network));
                }
                changes.add_route(*network).await?;
            }
        }
    }
    if config.dns_proxy.enabled {
        for ip in &config.dns_proxy.addresses {
            changes.add_route(host_route(*ip)).await?;
        }
    }
    Ok(())
}

fn register_dns_proxy(
    config: &Config,
    rules: &Rules,
    tun: &Arc<AsyncDevice>,
    stats: &Arc<FilterStats>,
) {
    let settings = &config.dns_proxy;
    let pool = UpstreamPool::new(
        settings.upstreams.clone(),
        PoolConfig {
            attempt_timeout: settings.upstream_timeout,
            fwmark: config.interface.fwmark.map(|mark| mark.get()),
        },
    );
    let proxy = Arc::new(DnsProxy::new(pool, settings.max_in_flight));
    let tcp = TcpDns::spawn(
        proxy.clone(),
        &settings.addresses,
        settings.max_tcp_connections,
        settings.tcp_idle_timeout,
        config.interface.mtu,
        tundns_filter::TunWriter::new(tun.clone(), stats.clone()),
    );
    let host = Arc::new(
        VirtualHost::new("dns")
            .with_udp(53, Arc::new(UdpDns::new(proxy)))
            .with_tcp(53, Arc::new(tcp)),
    );
    for ip in &settings.addresses {
        rules.insert(*ip, host.clone());
    }
}

async fn start_wireguard(
    config: &Config,
    tun: &Arc<AsyncDevice>,
    rules: &Rules,
    stats: &Arc<FilterStats>,
) -> Result<
    gotatun::device::Device<(
        gotatun::udp::socket::UdpSocketFactory,
        FilteredTunSender,
        FilteredTun,
    )>,
    TunnelError,
> {
    let mut peers = Vec::with_capacity(config.peers.len());
    for peer in &config.peers {
        let mut wg_peer = Peer::new(PublicKey::from(*peer.public_key.as_bytes())).with_allowed_ips(
            peer.allowed_ips
                .iter()
                .filter_map(|net| ipnetwork::IpNetwork::new(net.network(), net.prefix_len()).ok()),
        );
        if let Some(endpoint) = &peer.endpoint {
            wg_peer = wg_peer.with_endpoint(resolve_endpoint(endpoint).await?);
        }
        if let Some(psk) = &peer.preshared_key {
            wg_peer = wg_peer.with_preshared_key(*psk.expose_bytes());
        }
        wg_peer.keepalive = peer.persistent_keepalive.map(|seconds| seconds.get());
        peers.push(wg_peer);
    }

    let uapi = UapiServer::default_unix_socket(&config.interface_name, None, None)
        .map_err(|error| TunnelError::Uapi(error.to_string()))?;
    let mut builder = DeviceBuilder::new()
        .with_default_udp()
        .with_ip_pair(
            FilteredTunSender::new(tun.clone(), rules, stats.clone()),
            FilteredTun::new(tun.clone(), rules, config.interface.mtu, stats.clone()),
        )
        .with_private_key(StaticSecret::from(
            *config.interface.private_key.expose_bytes(),
        ))
        .with_listen_port(config.interface.listen_port.unwrap_or(0))
        .with_peers(peers)
        .with_uapi(uapi);
    if let Some(mark) = config.interface.fwmark {
        builder = builder.with_fwmark(mark.get());
    }
    Ok(builder.build().await?)
}

async fn resolve_endpoint(endpoint: &Endpoint) -> Result<SocketAddr, TunnelError> {
    match endpoint {
        Endpoint::Addr(addr) => Ok(*addr),
        Endpoint::Host { host, port } => {
            let failure = |reason: String| TunnelError::Endpoint {
                host: host.clone(),
                port: *port,
                reason,
            };
            tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|error| failure(error.to_string()))?
                .next()
                .ok_or_else(|| failure("no address".into()))
        }
    }
}

/// Runs wg-quick hooks in order with `bash -c`, `%i` standing for the interface name, as
/// wg-quick does. The first failure stops the rest.
async fn run_hooks(commands: &[String], interface: &str) -> Result<(), TunnelError> {
    for command in commands {
        let command = command.replace("%i", interface);
        let failure = |reason: String| TunnelError::Hook {
            command: command.clone(),
            reason,
        };
        let status = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(&command)
            .status()
            .await
            .map_err(|error| failure(error.to_string()))?;
        if !status.success() {
            return Err(failure(status.to_string()));
        }
    }
    Ok(())
}

fn remove_uapi_socket(name: &str) {
    let path: PathBuf = [UAPI_DIRECTORY, &format!("{name}.sock")].iter().collect();
    if let Err(error) = std::fs::remove_file(&path)
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "could not remove the UAPI socket");
    }
}

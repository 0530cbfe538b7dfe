//! `tundns up`: the TUN device, its addresses and routes, the filter, the services and the
//! gotatun device, brought up in order and torn down in reverse.

use std::io::{self, IsTerminal as _};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use gotatun::device::Peer;
use gotatun::x25519::PublicKey;
use tun_rs::SyncDevice;
use tundns_config::{Config, Endpoint, RouteTable, Spanned};
use tundns_filter::{FilterStats, Rules, Service, TunWriter};
use tundns_host::SystemError;
use tundns_host::firewall::{Family, FirewallTable};
use tundns_host::local_addresses::LocalAddresses;
use tundns_host::paths::{MAIN_TABLE, SocketDirectories, uapi_socket_path};
use tundns_host::policy_routing;
use tundns_host::system::{SystemChanges, host_route};
use tundns_host::system_dns::{AppliedDns, DnsPlan, DnsRestore, DnsTakeover, SystemDnsError};

use crate::control::{ControlError, ControlServer};
use crate::datapath::{self, WireGuard};
use crate::dns::cache_file::{CacheFile, CacheSaver};
use crate::dns::config as dns_config;
use crate::dns::encrypted::EncryptedServers;
use crate::dns::encrypted::certificate::{IdentityError, IdentitySource, TlsIdentity};
use crate::dns::host_sockets::{ClaimedDnsSockets, RunningDnsSockets};
use crate::observability::{self, Observability, ObservabilityError};
use crate::proxy::{ClaimedProxies, ProxyStack, RunningProxies, TunSide};

/// How long a PreUp, PostUp, PreDown or PostDown command may run before it is killed
/// (with what it started) and counted as failed: a hook that hangs must not hold the
/// tunnel, or its teardown, for ever.
const HOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Why `tundns up` could not bring the tunnel up, or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("creating TUN device {name}: {source}")]
    CreateTun { name: String, source: io::Error },
    #[error("creating TUN device {name}: {source}: {holder}")]
    Busy {
        name: String,
        source: io::Error,
        /// Who has the name: a process, or the kind of interface.
        holder: String,
    },
    #[error(transparent)]
    System(#[from] SystemError),
    #[error("resolving endpoint {host}:{port}: {reason}")]
    Endpoint {
        host: String,
        port: u16,
        reason: String,
    },
    #[error(transparent)]
    Config(#[from] tundns_config::ConfigError),
    #[error("WireGuard stopped: {0}")]
    WireGuardFailed(String),
    #[error("{0}")]
    TaskFailed(crate::supervise::TaskFailure),
    #[error(transparent)]
    WireGuard(#[from] datapath::StartError),
    #[error("waiting for signals: {0}")]
    Signals(io::Error),
    #[error("system resolver: {0}")]
    SystemDns(#[from] SystemDnsError),
    #[error("{hook} on line {line} (`{command}`) failed: {reason}")]
    Hook {
        /// `PreUp`, `PostUp`, `PreDown` or `PostDown`.
        hook: &'static str,
        line: usize,
        command: String,
        reason: String,
    },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Observability(#[from] ObservabilityError),
    #[error("reading the host's addresses: {0}")]
    LocalAddresses(io::Error),
    #[error("{0}")]
    Userspace(String),
    #[error("nftables: {0}")]
    Firewall(String),
    #[error(transparent)]
    TlsIdentity(#[from] IdentityError),
}

/// A running tunnel. Dropping it without [`Tunnel::shut_down`] leaves the kernel to remove
/// the interface with the process.
pub struct Tunnel {
    name: String,
    device: WireGuard,
    changes: SystemChanges,
    tun: Arc<SyncDevice>,
    rules: Rules,
    pre_down: Vec<Spanned<String>>,
    post_down: Vec<Spanned<String>>,
    /// The system resolver's change, undone first at shutdown.
    system_dns: Option<AppliedDns>,
    /// The control socket, closed first at shutdown.
    control: Option<ControlServer>,
    /// The metrics endpoint and the query log's SIGHUP handler.
    observability: Option<Observability>,
    /// The proxies' listeners, closed with the tunnel.
    proxies: Option<RunningProxies>,
    /// The DNS proxy's host sockets, closed with the tunnel.
    dns_sockets: Option<RunningDnsSockets>,
    /// DNS over TLS and HTTPS on the virtual IPs, stopped with the tunnel.
    encrypted_dns: Option<EncryptedServers>,
    /// Saves the DNS cache while running, and once more at shutdown.
    cache_saver: Option<CacheSaver>,
    /// The nftables tables that keep forwarded packets off the proxies' listeners on the
    /// virtual IPs, deleted at shutdown (replaced at the next start if a crash left them).
    listener_guards: Vec<FirewallTable>,
    uapi: UapiSocket,
}

impl Tunnel {
    /// Brings the tunnel up as `config` says. On failure, whatever was set up is undone.
    /// `path` is where `config` was read from, for errors about its lines.
    pub async fn up(config: &Config, path: &Path) -> Result<Self, TunnelError> {
        validate(config, path)?;
        // A crashed run's policy rules would otherwise stay, beside the pair added below,
        // and its resolver change would be taken for the system's own.
        tundns_host::repair::repair_policy(&config.interface_name).await?;
        if let Err(error) = tundns_host::repair::repair_dns(&config.interface_name) {
            // A record it may not act on stops only a run that would change the resolver
            // itself; any other is told and goes on.
            if DnsPlan::for_config(config).settings.is_some() {
                return Err(error.into());
            }
            tracing::warn!("{error} (this run leaves the system resolver alone, so it goes on)");
        }
        let config = &policy_routing::with_fwmark(config).await?;
        // Reads the system's resolvers before any change.
        let system_dns = DnsTakeover::prepare(config)?;
        let config = &system_dns.resolver_config(config);
        let resolver = config
            .dns_proxy
            .enabled
            .then(|| dns_config::resolver_parts(config, path, None))
            .transpose()?;
        // Warm before the first query can arrive.
        let cache_file = resolver.as_ref().and_then(|(parts, _)| {
            CacheFile::warm(&tundns_host::paths::state_directory(), config, parts)
        });
        // Read (or made) before any change, so a bad certificate leaves nothing behind.
        let identity = tls_identity(config, path)?;
        // Claimed before any change, so an address in use leaves nothing behind.
        let observability = observability::Claimed::new(config, path)?;
        let proxies = ClaimedProxies::claim(config, path).await?;
        let dns_sockets = ClaimedDnsSockets::bind(config, path).await?;
        // Who may use the virtual IPs: this host (and the AllowFrom networks, but never for
        // the proxies' listeners there).
        let serves_virtual_ips = config.dns_proxy.enabled && !config.dns_proxy.addresses.is_empty();
        let local_addresses = if serves_virtual_ips {
            let watched = LocalAddresses::watch().await;
            Some(Arc::new(watched.map_err(TunnelError::LocalAddresses)?))
        } else {
            None
        };
        // Endpoints are resolved before any route exists: once the virtual IPs are routed
        // into the TUN, a resolver pointing at them would wait for a tunnel not yet running.
        let peers = wireguard_peers(config).await?;
        let name = config.interface_name.clone();
        run_hooks("PreUp", &config.interface.pre_up, &name).await?;
        tracing::info!(
            "[#] ip tuntap add mode tun {name}; ip link set mtu {} dev {name}",
            config.interface.mtu
        );
        let tun = datapath::open_tun(&name, config.interface.mtu).map_err(|source| {
            match tundns_host::busy_interface::describe(&name) {
                Some(holder) => TunnelError::Busy {
                    name: name.clone(),
                    source,
                    holder,
                },
                None => TunnelError::CreateTun {
                    name: name.clone(),
                    source,
                },
            }
        })?;

        let mut changes = SystemChanges::for_interface(&name).await?;
        if let Err(error) = configure_interface(config, &mut changes).await {
            changes.undo().await;
            return Err(error);
        }

        let rules = Rules::new();
        let stats = Arc::new(FilterStats::default());
        let mtu = datapath::watch_mtu(&tun, config.interface.mtu);
        let mut proxy_stack = proxies.as_ref().map(|claimed| {
            let tun_side = local_addresses.clone().map(|local| TunSide {
                addresses: claimed.virtual_addresses(),
                writer: TunWriter::new(tun.clone(), stats.clone()),
                local,
            });
            ProxyStack::new(config, mtu.clone(), tun_side)
        });
        let (proxy, encrypted_dns, local_source) = match resolver {
            Some((parts, local_source)) => {
                let (proxy, encrypted) = datapath::serve_dns(
                    config,
                    parts,
                    identity.as_ref(),
                    proxy_stack.as_ref(),
                    local_addresses,
                    &rules,
                    &tun,
                    &stats,
                );
                (Some(proxy), encrypted, Some(local_source))
            }
            None => (None, None, None),
        };
        if let (Some(proxy), Some(log)) = (&proxy, observability.query_log()) {
            proxy.set_query_log(log.clone());
        }

        let started = datapath::start_wireguard(
            config,
            peers,
            &tun,
            mtu,
            proxy_stack.as_mut(),
            &rules,
            &stats,
        )
        .await;
        let device = match started {
            Ok(device) => device,
            Err(error) => {
                changes.undo().await;
                remove_uapi_socket(&uapi_socket_path(&name));
                return Err(error.into());
            }
        };
        let uapi = UapiSocket::bound(uapi_socket_path(&name));
        let mut tunnel = Self {
            uapi,
            name,
            device,
            changes,
            tun,
            rules,
            pre_down: config.interface.pre_down.clone(),
            post_down: config.interface.post_down.clone(),
            system_dns: None,
            control: None,
            observability: None,
            proxies: None,
            dns_sockets: proxy.as_ref().map(|proxy| dns_sockets.serve(proxy, config)),
            encrypted_dns,
            cache_saver: cache_file
                .zip(proxy.clone())
                .and_then(|(file, proxy)| CacheSaver::start(file, proxy)),
            listener_guards: Vec::new(),
        };
        if let Some(claimed) = &proxies {
            let listeners = claimed.virtual_addresses();
            if !listeners.is_empty()
                && let Err(error) = tunnel.guard_virtual_listeners(&listeners).await
            {
                tunnel.shut_down().await;
                return Err(error);
            }
        }
        if let (Some(claimed), Some(stack)) = (proxies, proxy_stack) {
            tunnel.proxies = Some(claimed.serve(config, stack, proxy.clone()));
        }
        let sockets = SocketDirectories::system();
        match observability.start(proxy.clone(), stats, &tunnel.name, &sockets) {
            Ok(running) => tunnel.observability = Some(running),
            Err(error) => {
                tunnel.shut_down().await;
                return Err(error.into());
            }
        }
        // Before PostUp, so a hook may already push records and routes.
        match ControlServer::start(
            config,
            path,
            proxy.zip(local_source),
            tunnel.encrypted_dns.as_ref().map(EncryptedServers::status),
            None,
            &sockets,
        ) {
            Ok(control) => tunnel.control = Some(control),
            Err(error) => {
                tunnel.shut_down().await;
                return Err(error.into());
            }
        }
        // Only now does the proxy answer at the addresses the system is pointed at.
        match system_dns.apply(&tunnel.name) {
            Ok(applied) => tunnel.system_dns = applied,
            Err(error) => {
                tunnel.shut_down().await;
                return Err(error.into());
            }
        }
        if let Err(error) = run_hooks("PostUp", &config.interface.post_up, &tunnel.name).await {
            tunnel.shut_down().await;
            return Err(error);
        }
        tracing::info!(interface = %tunnel.name, "tunnel up");
        Ok(tunnel)
    }

    /// Keeps forwarded packets off the proxies' `listeners` on the virtual IPs, in the
    /// kernel: a host that routes a virtual IP through this machine, even behind a
    /// masquerade that gives its packets this host's address, never reaches them.
    async fn guard_virtual_listeners(
        &mut self,
        listeners: &[SocketAddr],
    ) -> Result<(), TunnelError> {
        let relay_ports = (
            *crate::proxy::ports::LOCAL_PORTS.start(),
            *crate::proxy::ports::LOCAL_PORTS.end(),
        );
        for family in [Family::Ip, Family::Ip6] {
            let table = FirewallTable::for_virtual_listeners(&self.name, family);
            if !listeners.iter().any(|listen| family.holds(&listen.ip())) {
                // A crashed run's table of this family, for listeners no longer configured.
                let _ = table.delete().await;
                continue;
            }
            match table
                .create(table.listeners_ruleset(listeners, relay_ports))
                .await
            {
                Ok(()) => self.listener_guards.push(table),
                Err(error) if error.not_found => {
                    tracing::warn!(
                        "nft not found: the proxies on the virtual IPs rely on their source check alone, which a host behind a masquerade into the TUN passes"
                    );
                    return Ok(());
                }
                Err(error) => return Err(TunnelError::Firewall(error.to_string())),
            }
        }
        Ok(())
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

    /// Stops serving `ip`: the service leaves the filter and the address's route goes.
    pub async fn unserve(&mut self, ip: IpAddr) -> Option<Arc<dyn Service>> {
        let service = self.rules.remove(ip)?;
        self.changes.remove_route(host_route(ip)).await;
        Some(service)
    }

    /// Runs until SIGINT or SIGTERM, or until WireGuard fails, then shuts down.
    pub async fn run_until_signal(self) -> Result<(), TunnelError> {
        let mut signals = ShutdownSignals::install()?;
        self.run_until(&mut signals).await
    }

    /// Runs until one of `signals` arrives (even one that arrived during start-up), or
    /// until WireGuard fails, then shuts down.
    pub async fn run_until(mut self, signals: &mut ShutdownSignals) -> Result<(), TunnelError> {
        let failure = signals.until(self.device.wait()).await;
        self.shut_down().await;
        failure.map_or(Ok(()), Err)
    }

    /// Stops WireGuard and removes every route, the interface and the UAPI socket.
    pub async fn shut_down(mut self) {
        // First, so the host resolves again even if a hook hangs or the process is killed
        // meanwhile.
        match self.system_dns.take().map(AppliedDns::restore) {
            Some(Ok(DnsRestore::Restored(backend))) => {
                tracing::info!(%backend, "system resolver restored");
            }
            Some(Ok(left @ DnsRestore::LeftAsChanged { .. })) => tracing::warn!("{left}"),
            Some(Err(error)) => tracing::error!(%error, "restoring the system resolver"),
            None => {}
        }
        // Teardown goes on whatever the hooks say: a failing PreDown must not leave routes.
        if let Err(error) = run_hooks("PreDown", &self.pre_down, &self.name).await {
            tracing::warn!(%error, "PreDown");
        }
        if let Some(control) = self.control.take() {
            control.shut_down();
        }
        drop(self.proxies.take());
        drop(self.dns_sockets.take());
        drop(self.encrypted_dns.take());
        if let Some(saver) = self.cache_saver.take() {
            saver.stop().await;
        }
        for table in std::mem::take(&mut self.listener_guards) {
            if let Err(error) = table.delete().await {
                tracing::warn!(%error, table = %table.name, "deleting the listeners' table");
            }
        }
        self.device.stop().await;
        for ip in self.rules.snapshot().addresses().collect::<Vec<_>>() {
            self.rules.remove(ip);
        }
        self.changes.undo().await;
        self.uapi.remove();
        drop(self.tun);
        if let Err(error) = run_hooks("PostDown", &self.post_down, &self.name).await {
            tracing::warn!(%error, "PostDown");
        }
        tracing::info!(interface = %self.name, "tunnel down");
    }
}

/// Whether the virtual IPs serve encrypted DNS.
fn serves_encrypted_dns(config: &Config) -> bool {
    let settings = &config.dns_proxy;
    settings.enabled && !settings.addresses.is_empty() && !settings.encrypted.is_empty()
}

/// The identity encrypted DNS presents, when the virtual IPs serve it.
fn tls_identity(config: &Config, path: &Path) -> Result<Option<TlsIdentity>, TunnelError> {
    if !serves_encrypted_dns(config) {
        return Ok(None);
    }
    let settings = &config.dns_proxy;
    let state = tundns_host::paths::state_directory();
    let identity = TlsIdentity::load(settings, path, &config.interface_name, &state)?;
    if let IdentitySource::SelfSigned(file) = &identity.source {
        tracing::info!(
            "[#] encrypted DNS presents the self-signed certificate in {}; pin sha256/{}",
            file.display(),
            identity.pin
        );
    }
    Ok(Some(identity))
}

async fn configure_interface(
    config: &Config,
    changes: &mut SystemChanges,
) -> Result<(), TunnelError> {
    for address in &config.interface.addresses {
        changes.add_address(*address).await?;
    }
    changes.set_up().await?;
    // Best effort: a kernel that cannot cap it hands over a rare super-packet of more
    // segments (a tiny MSS), which the filter drops and counts.
    if let Err(error) = changes
        .set_gso_max_segments(tundns_filter::TUN_MAX_SEGMENTS as u32)
        .await
    {
        tracing::warn!(%error, "could not cap the TUN's GSO segments");
    }
    let table = match config.interface.table {
        RouteTable::Off => None,
        RouteTable::Auto => Some(MAIN_TABLE),
        RouteTable::Id(id) => Some(id),
    };
    if let Some(table) = table {
        for network in config.allowed_ips() {
            if !policy_routing::is_policy_routed(config, network) {
                changes.add_route_in(*network, table).await?;
            }
        }
    }
    policy_routing::install(config, changes).await?;
    if config.dns_proxy.enabled {
        for ip in &config.dns_proxy.addresses {
            changes.add_route(host_route(*ip)).await?;
        }
    }
    Ok(())
}

/// Checks everything `tundns up` would check before touching the system: the config
/// against what this build supports, every record, list file and upstream.
pub fn check(config: &Config, path: &Path) -> Result<(), TunnelError> {
    validate(config, path)?;
    observability::check(config, path)?;
    if config.dns_proxy.enabled {
        dns_config::resolver_parts(config, path, None)?;
    }
    if serves_encrypted_dns(config) {
        TlsIdentity::check_configured(&config.dns_proxy, path)?;
    }
    Ok(())
}

/// Checks what the config parser cannot: setups that cannot work on this host, and those
/// that would work but surprise. `path` is the config's file, for the lines of errors.
pub(crate) fn validate(config: &Config, path: &Path) -> Result<(), TunnelError> {
    if let Some(default) = policy_routing::unsupported_default_route(config) {
        let line = config.line_of("[Interface]", "Table").unwrap_or(1);
        return Err(tundns_config::ConfigError::at(
            path,
            line,
            format!(
                "Table = main with AllowedIPs {default} would route the tunnel's own packets into \
                 itself; use Table = auto (policy routing, as wg-quick does) or another table"
            ),
        )
        .into());
    }
    // Full-tunnel default routes do not catch the upstreams: their sockets carry the mark.
    let allowed_ips = || {
        config
            .allowed_ips()
            .filter(|network| !policy_routing::is_policy_routed(config, network))
    };
    if config.dns_proxy.enabled {
        for upstream in &config.dns_proxy.upstreams {
            let ip = upstream.address().ip();
            if allowed_ips().any(|network| network.contains(&ip)) {
                tracing::warn!(%upstream, "this upstream is inside AllowedIPs: DNS to it goes through the tunnel");
            }
        }
    }
    Ok(())
}

/// SIGINT and SIGTERM, caught from the moment this is installed, so a signal during
/// start-up still ends in an orderly shutdown rather than the default action.
pub struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    /// Caught from the start too, though only the query log acts on it (reopening its
    /// file): SIGHUP's default action would kill the process mid-start-up and leave its
    /// changes behind.
    _hangup: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Starts catching the signals. Needs a running tokio runtime.
    pub fn install() -> Result<Self, TunnelError> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate()).map_err(TunnelError::Signals)?,
            interrupt: signal(SignalKind::interrupt()).map_err(TunnelError::Signals)?,
            _hangup: signal(SignalKind::hangup()).map_err(TunnelError::Signals)?,
        })
    }

    /// Waits for the next signal, for `device` (WireGuard's `wait`) to end, or for an
    /// essential task to fail; the error when it was not a signal.
    pub(crate) async fn until(&mut self, device: impl Future<Output = ()>) -> Option<TunnelError> {
        tokio::select! {
            signal = self.recv() => {
                tracing::info!("{signal}: shutting down");
                None
            }
            () = device => Some(TunnelError::WireGuardFailed("fatal device error".into())),
            failure = crate::supervise::failed() => {
                tracing::error!(%failure, "shutting down");
                Some(TunnelError::TaskFailed(failure))
            }
        }
    }

    /// Waits for the next signal and names it.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// The gotatun peers of `config`, with host-name endpoints resolved.
pub(crate) async fn wireguard_peers(config: &Config) -> Result<Vec<Peer>, TunnelError> {
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
    Ok(peers)
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

/// Runs wg-quick hooks (`hook` names which) in order with `bash -c`, `%i` standing for the
/// interface name, as wg-quick does. The first failure stops the rest. Each runs in its own
/// process group, killed whole when it overruns [`HOOK_TIMEOUT`].
async fn run_hooks(
    hook: &'static str,
    commands: &[Spanned<String>],
    interface: &str,
) -> Result<(), TunnelError> {
    for Spanned { value, line } in commands {
        let command = value.replace("%i", interface);
        tracing::info!("[#] {command}");
        let failure = |reason: String| TunnelError::Hook {
            hook,
            line: *line,
            command: command.clone(),
            reason,
        };
        let mut bash = tokio::process::Command::new("bash");
        bash.arg("-c").arg(&command).kill_on_drop(true);
        // Its own group, to be killed whole, unless it may ask at the terminal (sudo, ssh):
        // there it stays in the foreground group, as wg-quick's do.
        let own_group = !std::io::stdin().is_terminal();
        if own_group {
            bash.process_group(0);
        }
        let mut child = bash.spawn().map_err(|error| failure(error.to_string()))?;
        let status = match tokio::time::timeout(HOOK_TIMEOUT, child.wait()).await {
            Ok(status) => status.map_err(|error| failure(error.to_string()))?,
            Err(_) => {
                match child.id() {
                    Some(group) if own_group => {
                        let _ = nix::sys::signal::killpg(
                            nix::unistd::Pid::from_raw(group as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    _ => {
                        let _ = child.start_kill();
                    }
                }
                let _ = child.wait().await;
                return Err(failure(format!(
                    "still running after {} s, killed",
                    HOOK_TIMEOUT.as_secs()
                )));
            }
        };
        if !status.success() {
            return Err(failure(status.to_string()));
        }
    }
    Ok(())
}

/// The UAPI socket gotatun bound. `wg` knows one path per interface name, so a tunnel of
/// the same name in another network namespace takes the path over when it starts; it is
/// removed at shutdown only while it is still this run's.
struct UapiSocket {
    path: std::path::PathBuf,
    inode: Option<u64>,
}

impl UapiSocket {
    fn bound(path: std::path::PathBuf) -> Self {
        let inode = inode_of(&path);
        Self { path, inode }
    }

    fn remove(&self) {
        match inode_of(&self.path) {
            Some(inode) if Some(inode) == self.inode => remove_uapi_socket(&self.path),
            Some(_) => tracing::info!(
                path = %self.path.display(),
                "left the UAPI socket: a tunnel of the same name (in another network namespace) holds it now"
            ),
            None => {}
        }
    }
}

fn inode_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|metadata| metadata.ino())
}

/// Removes the UAPI socket at `path`, which gotatun leaves behind.
pub(crate) fn remove_uapi_socket(path: &Path) {
    if let Err(error) = std::fs::remove_file(path)
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "could not remove the UAPI socket");
    }
}

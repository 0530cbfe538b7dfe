//! The data path, wired in one place: every packet tundns touches passes through what
//! this file connects.
//!
//! ```text
//!  apps ──► TUN ──► FilteredTun (tundns-filter) ── classify by destination ──┐
//!                      │ virtual IP                                         │ anything else
//!                      ▼                                                    ▼
//!               VirtualHost "dns"                          gotatun: encrypt ──► UDP (GSO) ──► peer
//!                 ├ UDP 53: UdpDns (dns::proxy), on the TUN reader:
//!                 │    Resolver::answer_inline — blocklist, local data, cache:
//!                 │      answered in place, written straight back into the TUN;
//!                 │    a miss ─► Forwarding (collapsing, bound) ─► a task per upstream
//!                 │      request: UpstreamPool (tundns-upstream) drives pool::Pool over
//!                 │      host sockets ─► the answer is written into the TUN
//!                 ├ TCP 53: TcpDns (dns::tcp): smoltcp (tundns-netstack) in one task,
//!                 │      queries through the same DnsProxy, segments back into the TUN
//!                 ├ TCP 853 and 443: EncryptedServers (dns::encrypted): a stack of their
//!                 │      own, settled on the TUN reader; rustls, then DoT framing or h2
//!                 │      (DoH), queries through the same DnsProxy; an established
//!                 │      connection runs on the reader when its client's segment wakes it
//!                 │      (inline), the rest on the servers' thread
//!                 ├ UDP 853: the same servers' QuicPort, the socket of quinn's endpoint:
//!                 │      a stream per DoQ query through the same DnsProxy, datagrams
//!                 │      back into the TUN
//!                 └ the proxies' ports (proxy::on_virtual_ip), from this host only:
//!                        a stack of their own; what they open goes out through the
//!                        proxies' stack on the interface address, straight into
//!                        WireGuard (gotatun's second packet source), and comes back
//!                        through the tap in FilteredTunSender
//!  apps ◄── TUN ◄── FilteredTunSender (drops virtual IPs from the tunnel) ◄── gotatun: decrypt ◄── peer
//! ```
//!
//! The TUN is opened with the kernel's offloads ([`open_tun`]): the filter reads TCP and
//! UDP super-packets of up to 64 KiB in one read and splits them into segments before it
//! classifies them, and writes one flow's decrypted packets coalesced into super-packets,
//! so the host's stack and the TUN pay per super-packet, not per packet. The encrypted
//! packets leave in runs of one size to one peer with `UDP_SEGMENT` ([`GsoUdpFactory`]),
//! and arrive through gotatun's UDP GRO, so the UDP socket pays per run too.
//!
//! The filter runs inside gotatun's TUN reader and writer ([`FilteredTun`] and
//! [`FilteredTunSender`] are its `IpRecv`/`IpSend`). gotatun runs its reading task on the
//! reader's own thread, where it blocks in `read`: a cached DNS answer costs one read and
//! one write and no wake-up of the runtime, and WireGuard's packets are encrypted and sent
//! on that thread, batch by batch. Services answer through a [`TunWriter`], never through
//! WireGuard. `tunnel` calls this at start-up, after the interface exists and before
//! anything is routed to it.
//!
//! The rootless mode (`tundns up --userspace`) has no TUN: the proxies' stack is
//! WireGuard's only packet source, and every decrypted packet goes to its tap
//! ([`start_userspace_wireguard`]).

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use gotatun::device::DeviceBuilder;
use gotatun::device::Peer;
use gotatun::device::uapi::UapiServer;
use gotatun::packet::{Ip, Packet};
use gotatun::tun::channel::IpChannelRx;
use gotatun::tun::{IpSend, MtuWatcher};
use gotatun::x25519::StaticSecret;
use ipnet::IpNet;
use tokio::sync::watch;
use tun_rs::SyncDevice;
use tundns_config::{Config, MAX_MTU};
use tundns_filter::{
    FilterStats, FilteredTun, FilteredTunSender, InboundTap, Rules, SourcePolicy, TunWriter,
    VirtualHost,
};
use tundns_host::local_addresses::LocalAddresses;

use crate::dns::encrypted::EncryptedServers;
use crate::dns::encrypted::certificate::TlsIdentity;
use crate::dns::proxy::{DnsProxy, ResolverParts, UdpDns};
use crate::dns::tcp::TcpDns;
use crate::proxy::ProxyStack;
use crate::udp_offload::GsoUdpFactory;

/// Why WireGuard could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("starting the UAPI socket: {0}")]
    Uapi(String),
    #[error("starting the TUN reader: {0}")]
    TunReader(io::Error),
    #[error("starting WireGuard: {0}")]
    WireGuard(#[from] gotatun::device::Error),
}

/// gotatun's device in the rootless mode: the proxies' stack on both sides.
pub type UserspaceWireGuard = gotatun::device::Device<(GsoUdpFactory, TapOnly, IpChannelRx)>;

/// gotatun's device with the filter on both sides of the TUN.
pub type WireGuard = gotatun::device::Device<(GsoUdpFactory, FilteredTunSender, FilteredTun)>;

/// Creates the TUN interface `name`, with TSO and checksum offload (and USO where the
/// kernel has it); on a kernel that refuses them, a plain one, with one log line.
pub fn open_tun(name: &str, mtu: u16) -> io::Result<Arc<SyncDevice>> {
    let builder = || tun_rs::DeviceBuilder::new().name(name).mtu(mtu);
    let device = match builder().offload(true).build_sync() {
        Ok(device) => device,
        // What a kernel without IFF_VNET_HDR or TSO answers; any other error is not about
        // offloads, and a plain TUN would fail the same way.
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(%error, "the TUN refused offloads; reading and writing plain packets");
            builder().build_sync()?
        }
        Err(error) => return Err(error),
    };
    tracing::debug!(
        tcp = device.tcp_gso(),
        udp = device.udp_gso(),
        "TUN offloads"
    );
    Ok(Arc::new(device))
}

/// How often the TUN's MTU is read back. gotatun pads each packet up to the MTU, so after
/// `ip link set mtu` while running it must learn the new one; a read a second costs nothing.
const MTU_POLL: Duration = Duration::from_secs(1);

/// The TUN's MTU, starting at `configured` and following changes made while running. The
/// poll ends with the last watcher, or with the device.
pub fn watch_mtu(tun: &Arc<SyncDevice>, configured: u16) -> MtuWatcher {
    let (sender, receiver) = watch::channel(configured);
    let tun = Arc::downgrade(tun);
    tokio::spawn(async move {
        let mut poll = tokio::time::interval(MTU_POLL);
        loop {
            tokio::select! {
                () = sender.closed() => return,
                _ = poll.tick() => {}
            }
            let Some(tun) = tun.upgrade() else { return };
            if let Ok(mtu) = tun.mtu() {
                sender.send_if_modified(|current| {
                    let changed = *current != mtu;
                    if changed && mtu > MAX_MTU {
                        tracing::warn!(
                            mtu,
                            max = MAX_MTU,
                            "the TUN's MTU changed beyond what WireGuard carries; larger packets are dropped"
                        );
                    } else if changed {
                        tracing::info!(mtu, "the TUN's MTU changed");
                    }
                    *current = mtu.min(MAX_MTU);
                    changed
                });
            }
        }
    });
    receiver.into()
}

/// Serves DNS on the virtual IPs: UDP inline on the TUN reader, TCP through the netstack,
/// DNS over TLS and HTTPS with `identity` through a netstack of their own; and the
/// proxies' listeners there, if any.
#[allow(clippy::too_many_arguments)]
pub fn serve_dns(
    config: &Config,
    resolver: ResolverParts,
    identity: Option<&TlsIdentity>,
    proxies: Option<&ProxyStack>,
    local: Option<Arc<LocalAddresses>>,
    rules: &Rules,
    tun: &Arc<SyncDevice>,
    stats: &Arc<FilterStats>,
) -> (Arc<DnsProxy>, Option<EncryptedServers>) {
    let settings = &config.dns_proxy;
    let proxy = DnsProxy::new(resolver);
    let writer = || TunWriter::new(tun.clone(), stats.clone());
    let tcp = TcpDns::spawn(
        proxy.clone(),
        &settings.addresses,
        settings.max_tcp_connections,
        settings.tcp_idle_timeout,
        config.interface.mtu,
        writer(),
    );
    let mut host = VirtualHost::new("dns")
        .with_udp(53, Arc::new(UdpDns::new(proxy.clone())))
        .with_tcp(53, Arc::new(tcp));
    let admitted = local.map(|local| {
        let this_host = Arc::new(ThisHost {
            tunnel: config.interface.addresses.iter().map(IpNet::addr).collect(),
            local,
        });
        proxy.set_this_host(this_host.clone());
        Arc::new(ThisHostAndAllowed {
            this_host,
            allow_from: settings.allow_from.clone(),
        })
    });
    if let Some(admitted) = &admitted {
        host = host.admitting(admitted.clone());
    }
    // Only with the sources known: encrypted DNS never serves everyone.
    let encrypted = identity.zip(admitted).and_then(|(identity, admitted)| {
        EncryptedServers::spawn(
            &proxy,
            settings,
            identity,
            config.interface.mtu,
            writer(),
            admitted,
        )
    });
    if let Some(encrypted) = &encrypted {
        host = encrypted.open_ports(host);
    }
    let host = Arc::new(match proxies {
        Some(proxies) => proxies.open_virtual_ports(host),
        None => host,
    });
    for ip in &settings.addresses {
        rules.insert(*ip, host.clone());
    }
    (proxy, encrypted)
}

/// Who may use the virtual IPs: this host's own addresses, kept current from netlink, and
/// the `AllowFrom` networks. Anyone else who routes a packet into the TUN gets silence: no
/// answers to reflect at a spoofed victim, no share of `MaxInFlight`, no look at the cache.
struct ThisHostAndAllowed {
    this_host: Arc<ThisHost>,
    allow_from: Vec<IpNet>,
}

impl SourcePolicy for ThisHostAndAllowed {
    fn admits(&self, source: IpAddr) -> bool {
        self.this_host.admits(source) || self.allow_from.iter().any(|net| net.contains(&source))
    }
}

/// This host's own addresses: exempt from the DNS rate limit too, as answers to it amplify
/// nothing.
struct ThisHost {
    /// The interface's own addresses, the source the host picks for the virtual IPs: known
    /// from the start, before netlink reports them.
    tunnel: Vec<IpAddr>,
    local: Arc<LocalAddresses>,
}

impl SourcePolicy for ThisHost {
    fn admits(&self, source: IpAddr) -> bool {
        self.tunnel.contains(&source) || self.local.contains(source)
    }
}

/// gotatun's device between the filtered TUN and its UDP sockets, with the UAPI socket;
/// with `proxies`, the proxies' stack has its own way in and out of the tunnel: its packets
/// are WireGuard's second source, and the tap takes its packets before the TUN.
pub async fn start_wireguard(
    config: &Config,
    peers: Vec<Peer>,
    tun: &Arc<SyncDevice>,
    mtu: MtuWatcher,
    proxies: Option<&mut ProxyStack>,
    rules: &Rules,
    stats: &Arc<FilterStats>,
) -> Result<WireGuard, StartError> {
    let uapi = UapiServer::default_unix_socket(&config.interface_name, None, None)
        .map_err(|error| StartError::Uapi(error.to_string()))?;
    let mut sender = FilteredTunSender::new(tun.clone(), rules, stats.clone());
    let mut second_source = None;
    if let Some((tap, packets)) = proxies.and_then(ProxyStack::packet_paths) {
        sender = sender.with_tap(tap);
        second_source = Some(packets);
    }
    let mut builder = DeviceBuilder::new()
        .with_udp(GsoUdpFactory::default())
        .with_ip_pair(
            sender,
            FilteredTun::new(tun.clone(), rules, mtu, stats.clone())
                .map_err(StartError::TunReader)?,
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
    if let Some(packets) = second_source {
        builder = builder.with_second_ip_recv(packets);
    }
    Ok(builder.build().await?)
}

/// Where decrypted packets go without a TUN: to the proxies' tap, which takes its own;
/// anything else has nowhere to go and is dropped, as a host without the address would.
pub struct TapOnly(Arc<dyn InboundTap>);

impl IpSend for TapOnly {
    async fn send(&mut self, packet: Packet<Ip>) -> io::Result<()> {
        self.0.take(packet.into_bytes().as_ref());
        self.0.flush();
        Ok(())
    }

    async fn send_many(&mut self, packets: &mut Vec<Packet<Ip>>) -> io::Result<()> {
        for packet in packets.drain(..) {
            self.0.take(packet.into_bytes().as_ref());
        }
        self.0.flush();
        Ok(())
    }
}

/// gotatun's device for the rootless mode: the proxies' stack is its only packet source
/// and sink, over an ordinary UDP socket; `uapi` is served on a socket of the caller's.
pub async fn start_userspace_wireguard(
    config: &Config,
    peers: Vec<Peer>,
    proxies: &mut ProxyStack,
    uapi: UapiServer,
) -> Result<UserspaceWireGuard, StartError> {
    let (tap, packets) = proxies
        .packet_paths()
        .expect("the stack's packet paths are taken once");
    let device = DeviceBuilder::new()
        .with_udp(GsoUdpFactory::default())
        .with_ip_pair(TapOnly(tap), packets)
        .with_private_key(StaticSecret::from(
            *config.interface.private_key.expose_bytes(),
        ))
        .with_listen_port(config.interface.listen_port.unwrap_or(0))
        .with_peers(peers)
        .with_uapi(uapi)
        .build()
        .await?;
    Ok(device)
}

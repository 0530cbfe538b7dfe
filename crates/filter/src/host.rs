//! A virtual host: one virtual IP that behaves like a small, well-mannered machine.
//!
//! It answers ICMP echo, refuses UDP ports nobody listens on with ICMP port unreachable and
//! TCP ports nobody listens on with a RST, and hands everything else to the port's service.
//! A host given a [`SourcePolicy`] does all of that only for the sources it admits, and
//! drops everything else without a word.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;

use tundns_packet::{IpView, Transport};

use crate::{FilterStats, Service, TunWriter};

/// Largest reply the host builds inline: an echo reply is as long as its request, and the
/// TUN reader's buffers are 4 KiB.
const REPLY_BUFFER: usize = 4096;

/// One UDP datagram addressed to a virtual IP.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// The sender, an application on this host.
    pub source: SocketAddr,
    /// The virtual IP and port it was sent to.
    pub destination: SocketAddr,
    /// The UDP payload.
    pub payload: &'a [u8],
}

impl Datagram<'_> {
    /// Builds the IP/UDP packet that answers this datagram with `payload` and writes it
    /// into the TUN.
    pub fn reply(&self, payload: &[u8], tun: &TunWriter) {
        tun.send_udp(self.destination, self.source, payload);
    }
}

/// A UDP service on one port of a [`VirtualHost`]. Runs inline on the TUN reader.
pub trait UdpService: Send + Sync + 'static {
    /// Handles one datagram; answer through `tun` (see [`Datagram::reply`]).
    fn on_datagram(&self, datagram: Datagram<'_>, tun: &TunWriter);
}

/// Who may use a [`VirtualHost`]. Whatever routes a packet into the TUN (a LAN host with a
/// route through this machine, a container behind it) reaches the virtual IPs; the policy
/// decides whom they answer.
pub trait SourcePolicy: Send + Sync + 'static {
    fn admits(&self, source: IpAddr) -> bool;
}

/// A virtual IP with services on some UDP and TCP ports.
///
/// TCP services receive whole IP packets, usually for a userspace TCP stack.
pub struct VirtualHost {
    name: String,
    udp: Vec<(RangeInclusive<u16>, Arc<dyn UdpService>)>,
    tcp: Vec<(u16, Arc<dyn Service>)>,
    sources: Option<Arc<dyn SourcePolicy>>,
}

impl VirtualHost {
    /// A host with no open ports; it still answers ping and refuses connections politely.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            udp: Vec::new(),
            tcp: Vec::new(),
            sources: None,
        }
    }

    /// Serves only the sources `policy` admits; by default, every source.
    pub fn admitting(mut self, policy: Arc<dyn SourcePolicy>) -> Self {
        self.sources = Some(policy);
        self
    }

    /// Opens a UDP port.
    pub fn with_udp(self, port: u16, service: Arc<dyn UdpService>) -> Self {
        self.with_udp_ports(port..=port, service)
    }

    /// Opens a range of UDP ports to one service (sockets it binds as it goes, say);
    /// ranges opened before keep the ports they share with it.
    pub fn with_udp_ports(
        mut self,
        ports: RangeInclusive<u16>,
        service: Arc<dyn UdpService>,
    ) -> Self {
        self.udp.retain(|(opened, _)| *opened != ports);
        self.udp.push((ports, service));
        self
    }

    /// Opens a TCP port; `service` receives the raw IP packets for it.
    pub fn with_tcp(mut self, port: u16, service: Arc<dyn Service>) -> Self {
        self.tcp.retain(|(p, _)| *p != port);
        self.tcp.push((port, service));
        self
    }

    fn udp_service(&self, port: u16) -> Option<&Arc<dyn UdpService>> {
        self.udp
            .iter()
            .find(|(ports, _)| ports.contains(&port))
            .map(|(_, s)| s)
    }

    fn tcp_service(&self, port: u16) -> Option<&Arc<dyn Service>> {
        self.tcp.iter().find(|(p, _)| *p == port).map(|(_, s)| s)
    }
}

/// What the host itself answers when no service takes the packet.
enum HostAnswer {
    PortUnreachable,
    Reset,
    EchoReply,
}

impl Service for VirtualHost {
    fn handle(&self, packet: &[u8], tun: &TunWriter) {
        let Ok(ip) = IpView::parse(packet) else {
            return;
        };
        if let Some(policy) = &self.sources
            && !policy.admits(ip.src())
        {
            FilterStats::bump(&tun.stats().dropped_foreign_source);
            return;
        }
        // Fragments carry no reliable ports and the services' messages are small: a client
        // that fragments towards a virtual IP is retried over TCP by its resolver.
        if ip.is_fragment() {
            return;
        }
        let answer = match ip.transport() {
            Some(Transport::Udp(udp)) => {
                if let Some(service) = self.udp_service(udp.dst_port()) {
                    let datagram = Datagram {
                        source: SocketAddr::new(ip.src(), udp.src_port()),
                        destination: SocketAddr::new(ip.dst(), udp.dst_port()),
                        payload: udp.payload(),
                    };
                    service.on_datagram(datagram, tun);
                    return;
                }
                HostAnswer::PortUnreachable
            }
            Some(Transport::Tcp(tcp)) => {
                if let Some(service) = self.tcp_service(tcp.dst_port()) {
                    service.handle(ip.bytes(), tun);
                    return;
                }
                HostAnswer::Reset
            }
            Some(Transport::Icmpv4(_) | Transport::Icmpv6(_)) => HostAnswer::EchoReply,
            None => return,
        };
        let mut reply = [0u8; REPLY_BUFFER];
        // Each builder refuses what must not be answered (ICMP errors, RSTs, broadcasts).
        let built = match answer {
            HostAnswer::PortUnreachable => tundns_packet::build_port_unreachable(&ip, &mut reply),
            HostAnswer::Reset => tundns_packet::build_tcp_rst(&ip, &mut reply),
            HostAnswer::EchoReply => tundns_packet::build_echo_reply(&ip, &mut reply),
        };
        if let Ok(len) = built {
            tun.send(&reply[..len]);
        }
    }

    fn name(&self) -> &str {
        &self.name
    }
}

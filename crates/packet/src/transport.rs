//! Which transport header an unfragmented packet carries, for the filter and the services.

use crate::icmp::IcmpView;
use crate::ip::IpView;
use crate::protocol;
use crate::tcp::TcpView;
use crate::udp::UdpView;

/// The transport header of an unfragmented packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport<'a> {
    /// UDP datagram.
    Udp(UdpView<'a>),
    /// TCP segment.
    Tcp(TcpView<'a>),
    /// ICMP message over IPv4.
    Icmpv4(IcmpView<'a>),
    /// ICMPv6 message.
    Icmpv6(IcmpView<'a>),
}

impl Transport<'_> {
    /// The IP protocol number of this transport.
    pub fn protocol(&self) -> u8 {
        match self {
            Transport::Udp(_) => protocol::UDP,
            Transport::Tcp(_) => protocol::TCP,
            Transport::Icmpv4(_) => protocol::ICMP,
            Transport::Icmpv6(_) => protocol::ICMPV6,
        }
    }

    /// Destination port for UDP and TCP.
    pub fn destination_port(&self) -> Option<u16> {
        match self {
            Transport::Udp(udp) => Some(udp.dst_port()),
            Transport::Tcp(tcp) => Some(tcp.dst_port()),
            Transport::Icmpv4(_) | Transport::Icmpv6(_) => None,
        }
    }
}

impl<'a> IpView<'a> {
    /// The transport header view.
    ///
    /// `None` for any fragment (a fragment never yields ports), a truncated or invalid
    /// transport header, or a protocol other than UDP, TCP, ICMP (over IPv4) and ICMPv6
    /// (over IPv6).
    pub fn transport(&self) -> Option<Transport<'a>> {
        if self.is_fragment() {
            return None;
        }
        let segment = self.upper_layer_bytes()?;
        match (self.protocol()?, self.version()) {
            (protocol::UDP, _) => UdpView::parse(segment).map(Transport::Udp),
            (protocol::TCP, _) => TcpView::parse(segment).map(Transport::Tcp),
            (protocol::ICMP, 4) => IcmpView::parse(segment).map(Transport::Icmpv4),
            (protocol::ICMPV6, 6) => IcmpView::parse(segment).map(Transport::Icmpv6),
            _ => None,
        }
    }
}

/// `(protocol, destination port)` of an unfragmented UDP or TCP packet, for the filter.
///
/// `None` for anything that does not parse, for fragments, for other protocols, and for
/// a truncated or invalid UDP/TCP header.
#[inline]
pub fn destination_port(buf: &[u8]) -> Option<(u8, u16)> {
    let transport = IpView::parse(buf).ok()?.transport()?;
    Some((transport.protocol(), transport.destination_port()?))
}

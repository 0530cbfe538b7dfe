//! Read-only, zero-copy views of IP packets and their transport headers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::PacketError;

/// IP protocol numbers (IANA "Assigned Internet Protocol Numbers") this crate names.
pub mod protocol {
    /// IPv6 Hop-by-Hop Options.
    pub const HOP_BY_HOP: u8 = 0;
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 Routing header.
    pub const ROUTING: u8 = 43;
    /// IPv6 Fragment header.
    pub const FRAGMENT: u8 = 44;
    /// Encapsulating Security Payload: opaque, ends the walk.
    pub const ESP: u8 = 50;
    /// Authentication Header.
    pub const AH: u8 = 51;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 No Next Header: nothing follows.
    pub const NO_NEXT_HEADER: u8 = 59;
    /// IPv6 Destination Options.
    pub const DESTINATION_OPTIONS: u8 = 60;
}

/// More extension headers than this and the upper layer is reported as unknown:
/// real traffic carries two or three, and the cap bounds the work per packet.
const MAX_IPV6_EXTENSION_HEADERS: usize = 8;

const IPV4_MIN_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;

/// Where a packet sits in a fragment series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// Not fragmented.
    Whole,
    /// Offset 0 with more to come (or an IPv6 atomic fragment): carries the transport header.
    First,
    /// Offset non-zero: carries no transport header.
    Later,
}

/// A validated, read-only view of one IPv4 or IPv6 packet.
///
/// [`parse`](Self::parse) checks the version, the header length and the stated length
/// once and walks IPv6 extension headers, so the accessors are cheap and cannot fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpView<'a> {
    /// Exactly the IP packet: trailing bytes beyond the stated length are cut off.
    bytes: &'a [u8],
    protocol: Option<u8>,
    transport_offset: Option<usize>,
    fragment: Fragment,
}

impl<'a> IpView<'a> {
    /// Parses the IP header at the start of `buf`.
    ///
    /// Validates the version, the IPv4 IHL and the IPv4 total length / IPv6 payload
    /// length against `buf`. Bytes beyond the stated length are ignored. An IPv6 payload
    /// length of 0 (jumbogram) is taken literally: jumbograms are not supported.
    pub fn parse(buf: &'a [u8]) -> Result<Self, PacketError> {
        match buf.first().map(|b| b >> 4) {
            None => Err(PacketError::Truncated),
            Some(4) => Self::parse_v4(buf),
            Some(6) => Self::parse_v6(buf),
            Some(_) => Err(PacketError::BadVersion),
        }
    }

    fn parse_v4(buf: &'a [u8]) -> Result<Self, PacketError> {
        if buf.len() < IPV4_MIN_HEADER {
            return Err(PacketError::Truncated);
        }
        let header_len = usize::from(buf[0] & 0x0f) * 4;
        if header_len < IPV4_MIN_HEADER {
            return Err(PacketError::BadHeaderLength);
        }
        let total_len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if total_len < header_len {
            return Err(PacketError::BadTotalLength);
        }
        let bytes = buf.get(..total_len).ok_or(PacketError::Truncated)?;
        let flags_offset = u16::from_be_bytes([buf[6], buf[7]]);
        let more_fragments = flags_offset & 0x2000 != 0;
        let fragment = match (flags_offset & 0x1fff, more_fragments) {
            (0, false) => Fragment::Whole,
            (0, true) => Fragment::First,
            _ => Fragment::Later,
        };
        Ok(Self {
            bytes,
            protocol: Some(buf[9]),
            transport_offset: (fragment != Fragment::Later).then_some(header_len),
            fragment,
        })
    }

    fn parse_v6(buf: &'a [u8]) -> Result<Self, PacketError> {
        if buf.len() < IPV6_HEADER {
            return Err(PacketError::Truncated);
        }
        let payload_len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
        let bytes = buf
            .get(..IPV6_HEADER + payload_len)
            .ok_or(PacketError::Truncated)?;
        let chain = walk_ipv6_extensions(bytes, buf[6]);
        Ok(Self {
            bytes,
            protocol: chain.protocol,
            transport_offset: chain.transport_offset,
            fragment: chain.fragment,
        })
    }

    /// 4 or 6.
    #[inline]
    pub fn version(&self) -> u8 {
        self.bytes[0] >> 4
    }

    /// Source address.
    #[inline]
    pub fn src(&self) -> IpAddr {
        match self.version() {
            4 => IpAddr::V4(self.addr_v4(12)),
            _ => IpAddr::V6(self.addr_v6(8)),
        }
    }

    /// Destination address.
    #[inline]
    pub fn dst(&self) -> IpAddr {
        match self.version() {
            4 => IpAddr::V4(self.addr_v4(16)),
            _ => IpAddr::V6(self.addr_v6(24)),
        }
    }

    fn addr_v4(&self, offset: usize) -> Ipv4Addr {
        let mut octets = [0u8; 4];
        octets.copy_from_slice(&self.bytes[offset..offset + 4]);
        Ipv4Addr::from(octets)
    }

    fn addr_v6(&self, offset: usize) -> Ipv6Addr {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&self.bytes[offset..offset + 16]);
        Ipv6Addr::from(octets)
    }

    /// Exactly the IP packet, trimmed to its stated length.
    #[inline]
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Upper-layer protocol number (see [`protocol`](crate::protocol)).
    ///
    /// For IPv6 this is the header after the extension chain (Hop-by-Hop, Routing,
    /// Fragment, Destination Options, AH); the walk stops at ESP and No Next Header and
    /// returns them. For a non-first IPv6 fragment it is the Fragment header's Next
    /// Header, since the rest of the chain is not in this packet. `None` if the chain is
    /// truncated or longer than 8 headers.
    #[inline]
    pub fn protocol(&self) -> Option<u8> {
        self.protocol
    }

    /// True for any fragment: IPv4 MF set or offset non-zero, or an IPv6 Fragment header.
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.fragment != Fragment::Whole
    }

    /// True for a fragment with a non-zero offset, which carries no transport header.
    #[inline]
    pub fn is_non_first_fragment(&self) -> bool {
        self.fragment == Fragment::Later
    }

    /// Offset of the upper-layer header within [`bytes`](Self::bytes).
    ///
    /// Some for first fragments too (whose transport header is present); `None` for
    /// non-first fragments and for a truncated or too long IPv6 extension chain.
    #[inline]
    pub fn transport_offset(&self) -> Option<usize> {
        self.transport_offset
    }

    /// The bytes from the upper-layer header to the end of the packet, even for a first
    /// fragment. Builders use it; the filter should use [`transport`](Self::transport).
    pub(crate) fn upper_layer_bytes(&self) -> Option<&'a [u8]> {
        self.bytes.get(self.transport_offset?..)
    }

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
        match (self.protocol?, self.version()) {
            (protocol::UDP, _) => UdpView::parse(segment).map(Transport::Udp),
            (protocol::TCP, _) => TcpView::parse(segment).map(Transport::Tcp),
            (protocol::ICMP, 4) => IcmpView::parse(segment).map(Transport::Icmpv4),
            (protocol::ICMPV6, 6) => IcmpView::parse(segment).map(Transport::Icmpv6),
            _ => None,
        }
    }
}

struct ExtensionChain {
    protocol: Option<u8>,
    transport_offset: Option<usize>,
    fragment: Fragment,
}

/// Walks the IPv6 extension headers of `packet` (already trimmed to its stated length).
fn walk_ipv6_extensions(packet: &[u8], first_next_header: u8) -> ExtensionChain {
    let mut next_header = first_next_header;
    let mut offset = IPV6_HEADER;
    let mut fragment = Fragment::Whole;
    let unknown = |fragment| ExtensionChain {
        protocol: None,
        transport_offset: None,
        fragment,
    };
    for _ in 0..=MAX_IPV6_EXTENSION_HEADERS {
        let header_len = match next_header {
            protocol::HOP_BY_HOP | protocol::ROUTING | protocol::DESTINATION_OPTIONS => {
                match packet.get(offset + 1) {
                    Some(&len) => (usize::from(len) + 1) * 8,
                    None => return unknown(fragment),
                }
            }
            // RFC 4302 2.2: AH counts 32-bit words, minus 2.
            protocol::AH => match packet.get(offset + 1) {
                Some(&len) => (usize::from(len) + 2) * 4,
                None => return unknown(fragment),
            },
            protocol::FRAGMENT => {
                let Some(header) = packet.get(offset..offset + 8) else {
                    return unknown(fragment);
                };
                let offset_units = u16::from_be_bytes([header[2], header[3]]) >> 3;
                if offset_units != 0 {
                    // The rest of the chain and the transport header are in the first fragment.
                    return ExtensionChain {
                        protocol: Some(header[0]),
                        transport_offset: None,
                        fragment: Fragment::Later,
                    };
                }
                fragment = Fragment::First;
                8
            }
            upper => {
                return ExtensionChain {
                    protocol: Some(upper),
                    transport_offset: Some(offset),
                    fragment,
                };
            }
        };
        if offset + header_len > packet.len() {
            return unknown(fragment);
        }
        next_header = packet[offset];
        offset += header_len;
    }
    unknown(fragment)
}

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

/// A UDP datagram whose length field is valid (>= 8 and within the IP payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpView<'a> {
    /// Header and payload, trimmed to the UDP length field.
    bytes: &'a [u8],
}

impl<'a> UdpView<'a> {
    /// Parses a UDP header at the start of `segment` (the IP payload).
    pub fn parse(segment: &'a [u8]) -> Option<Self> {
        let length = usize::from(u16::from_be_bytes([*segment.get(4)?, *segment.get(5)?]));
        if length < 8 {
            return None;
        }
        segment.get(..length).map(|bytes| Self { bytes })
    }

    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes([self.bytes[0], self.bytes[1]])
    }

    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes([self.bytes[2], self.bytes[3]])
    }

    /// The stored checksum (0 means none, allowed over IPv4 only).
    #[inline]
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.bytes[6], self.bytes[7]])
    }

    /// Payload, bounded by the UDP length field.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[8..]
    }

    /// Header and payload.
    #[inline]
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// TCP control bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// No more data from sender.
    pub const FIN: Self = Self(0x01);
    /// Synchronise sequence numbers.
    pub const SYN: Self = Self(0x02);
    /// Reset the connection.
    pub const RST: Self = Self(0x04);
    /// Push function.
    pub const PSH: Self = Self(0x08);
    /// Acknowledgment field is significant.
    pub const ACK: Self = Self(0x10);
    /// Urgent pointer field is significant.
    pub const URG: Self = Self(0x20);

    /// True if every bit of `other` is set.
    #[inline]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for TcpFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// A TCP segment whose data offset is valid (>= 5 and within the IP payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpView<'a> {
    bytes: &'a [u8],
    header_len: usize,
}

impl<'a> TcpView<'a> {
    /// Parses a TCP header at the start of `segment` (the IP payload).
    pub fn parse(segment: &'a [u8]) -> Option<Self> {
        let header_len = usize::from(segment.get(12)? >> 4) * 4;
        if header_len < 20 || header_len > segment.len() {
            return None;
        }
        Some(Self {
            bytes: segment,
            header_len,
        })
    }

    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes([self.bytes[0], self.bytes[1]])
    }

    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes([self.bytes[2], self.bytes[3]])
    }

    /// Sequence number.
    #[inline]
    pub fn seq(&self) -> u32 {
        u32::from_be_bytes([self.bytes[4], self.bytes[5], self.bytes[6], self.bytes[7]])
    }

    /// Acknowledgment number (meaningful only with [`TcpFlags::ACK`]).
    #[inline]
    pub fn ack(&self) -> u32 {
        u32::from_be_bytes([self.bytes[8], self.bytes[9], self.bytes[10], self.bytes[11]])
    }

    /// Control bits.
    #[inline]
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.bytes[13] & 0x3f)
    }

    /// Receive window.
    #[inline]
    pub fn window(&self) -> u16 {
        u16::from_be_bytes([self.bytes[14], self.bytes[15]])
    }

    /// Header length in bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// Segment data after the header and options.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.header_len..]
    }

    /// Header, options and data.
    #[inline]
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// An ICMP or ICMPv6 message with at least its 8-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpView<'a> {
    bytes: &'a [u8],
}

impl<'a> IcmpView<'a> {
    /// Parses an ICMP header at the start of `message` (the IP payload).
    pub fn parse(message: &'a [u8]) -> Option<Self> {
        (message.len() >= 8).then_some(Self { bytes: message })
    }

    /// Type.
    #[inline]
    pub fn icmp_type(&self) -> u8 {
        self.bytes[0]
    }

    /// Code.
    #[inline]
    pub fn code(&self) -> u8 {
        self.bytes[1]
    }

    /// The stored checksum.
    #[inline]
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.bytes[2], self.bytes[3]])
    }

    /// Identifier of an echo request or reply.
    #[inline]
    pub fn echo_id(&self) -> u16 {
        u16::from_be_bytes([self.bytes[4], self.bytes[5]])
    }

    /// Sequence number of an echo request or reply.
    #[inline]
    pub fn echo_seq(&self) -> u16 {
        u16::from_be_bytes([self.bytes[6], self.bytes[7]])
    }

    /// The whole message, header included.
    #[inline]
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
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

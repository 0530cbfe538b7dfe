//! The view of one IPv4 or IPv6 packet, and the IP layer of every reply built here.
//!
//! [`ipv4`] and [`ipv6`] check their own headers; this module turns what they found into
//! one [`IpView`]. Which transport header the packet carries is read in
//! [`transport`](crate::transport), above the transport protocols' own modules.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use crate::checksum::Checksum;
use crate::error::{BuildError, PacketError, Refusal};
use crate::field::read_array;
use crate::{ipv4, ipv6};

/// The byte whose high nibble is the IP version, in IPv4 and IPv6 headers alike.
const VERSION_BYTE: usize = ipv4::field::VER_IHL;

/// Hop limit (IPv6) and TTL (IPv4) of every packet built here.
const DEFAULT_HOP_LIMIT: u8 = 64;

/// Where a packet sits in a fragment series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fragment {
    /// Not fragmented.
    Whole,
    /// Offset 0 with more to come (or an IPv6 atomic fragment): carries the transport header.
    First,
    /// Offset non-zero: carries no transport header.
    Later,
}

impl Fragment {
    /// From the offset, in 8-byte units, of a fragment; `None` for a whole packet.
    #[inline]
    fn at(offset: Option<u16>) -> Self {
        match offset {
            None => Self::Whole,
            Some(0) => Self::First,
            Some(_) => Self::Later,
        }
    }
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
        match buf.get(VERSION_BYTE).map(|b| b >> 4) {
            None => Err(PacketError::Truncated),
            Some(4) => {
                let header = ipv4::parse(buf)?;
                let fragment = Fragment::at(header.fragment_offset);
                Ok(Self {
                    bytes: header.packet,
                    protocol: Some(header.protocol),
                    transport_offset: (fragment != Fragment::Later).then_some(header.header_len),
                    fragment,
                })
            }
            Some(6) => {
                let header = ipv6::parse(buf)?;
                Ok(Self {
                    bytes: header.packet,
                    protocol: header.protocol,
                    transport_offset: header.transport_offset,
                    fragment: Fragment::at(header.fragment_offset),
                })
            }
            Some(_) => Err(PacketError::BadVersion),
        }
    }

    /// 4 or 6.
    #[inline]
    pub fn version(&self) -> u8 {
        self.bytes[VERSION_BYTE] >> 4
    }

    /// Source address.
    #[inline]
    pub fn src(&self) -> IpAddr {
        self.address(ipv4::field::SRC_ADDR, ipv6::field::SRC_ADDR)
    }

    /// Destination address.
    #[inline]
    pub fn dst(&self) -> IpAddr {
        self.address(ipv4::field::DST_ADDR, ipv6::field::DST_ADDR)
    }

    /// The address at `v4` or `v6`, whichever this packet's version has.
    #[inline]
    fn address(&self, v4: Range<usize>, v6: Range<usize>) -> IpAddr {
        match self.version() {
            4 => IpAddr::V4(Ipv4Addr::from(read_array::<4>(self.bytes, v4))),
            _ => IpAddr::V6(Ipv6Addr::from(read_array::<16>(self.bytes, v6))),
        }
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
    #[inline]
    pub(crate) fn upper_layer_bytes(&self) -> Option<&'a [u8]> {
        self.bytes.get(self.transport_offset?..)
    }

    /// The bytes from the upper-layer header on, if the packet is not a fragment and its
    /// upper layer is `protocol`: what a builder answers.
    pub(crate) fn whole_upper_layer(&self, protocol: u8) -> Option<&'a [u8]> {
        if self.is_fragment() || self.protocol != Some(protocol) {
            return None;
        }
        self.upper_layer_bytes()
    }
}

/// Source and destination of a packet being built, of one IP version by construction.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Endpoints {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

impl Endpoints {
    pub(crate) fn new(src: IpAddr, dst: IpAddr) -> Result<Self, BuildError> {
        match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Ok(Self::V4 { src, dst }),
            (IpAddr::V6(src), IpAddr::V6(dst)) => Ok(Self::V6 { src, dst }),
            _ => Err(BuildError::AddressFamilyMismatch),
        }
    }

    /// The original's addresses swapped, if both name a single host.
    pub(crate) fn reply_to(original: &IpView) -> Result<Self, BuildError> {
        let (src, dst) = (original.dst(), original.src());
        if !is_single_host(src) || !is_single_host(dst) {
            return Err(BuildError::Refused(Refusal::NotUnicast));
        }
        Self::new(src, dst)
    }

    /// Length of the IP header written here: [`ipv4::HEADER_LEN`] or [`ipv6::HEADER_LEN`].
    pub(crate) fn header_len(self) -> usize {
        match self {
            Self::V4 { .. } => ipv4::HEADER_LEN,
            Self::V6 { .. } => ipv6::HEADER_LEN,
        }
    }

    /// Checks that `buf` holds the IP header and `payload_len` bytes more, writes the IP
    /// header (hop limit 64) for them, and returns the packet's length and its payload.
    /// The caller has checked that `payload_len` fits the header's length field.
    pub(crate) fn start_packet(
        self,
        buf: &mut [u8],
        protocol: u8,
        payload_len: usize,
    ) -> Result<(usize, &mut [u8]), BuildError> {
        let header_len = self.header_len();
        let total = header_len + payload_len;
        if buf.len() < total {
            return Err(BuildError::BufferTooSmall {
                needed: total,
                available: buf.len(),
            });
        }
        let packet = &mut buf[..total];
        match self {
            Self::V4 { src, dst } => {
                ipv4::write_header(packet, src, dst, protocol, DEFAULT_HOP_LIMIT, payload_len);
            }
            Self::V6 { src, dst } => {
                ipv6::write_header(packet, src, dst, protocol, DEFAULT_HOP_LIMIT, payload_len);
            }
        }
        Ok((total, &mut packet[header_len..]))
    }

    /// Checksum of a segment (checksum field zeroed) with this pseudo-header.
    pub(crate) fn transport_checksum(self, protocol: u8, segment: &[u8]) -> u16 {
        let pseudo_header = match self {
            Self::V4 { src, dst } => {
                Checksum::pseudo_header_v4(src, dst, protocol, segment.len() as u16)
            }
            Self::V6 { src, dst } => {
                Checksum::pseudo_header_v6(src, dst, protocol, segment.len() as u32)
            }
        };
        pseudo_header.add_bytes(segment).finish()
    }
}

/// RFC 1122 3.2.2: an address that "does not define a single host" gets no reply.
fn is_single_host(ip: IpAddr) -> bool {
    match ip {
        // 240.0.0.0/4 (reserved) also covers the limited broadcast 255.255.255.255.
        IpAddr::V4(v4) => {
            !(v4.is_unspecified() || v4.is_multicast() || v4.is_loopback() || v4.octets()[0] >= 240)
        }
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast() || v6.is_loopback()),
    }
}

//! UDP (RFC 768): where each header field sits, the datagram view, and the builders that
//! put IP and UDP headers around a payload.

use std::net::SocketAddr;

use crate::error::BuildError;
use crate::field::{get_u16, read_u16, write_u16};
use crate::ip::Endpoints;
use crate::{ipv4, ipv6, protocol};

/// Byte offsets of the UDP header fields, from the start of the UDP header.
pub mod field {
    use std::ops::Range;

    /// Source port.
    pub const SRC_PORT: Range<usize> = 0..2;
    /// Destination port.
    pub const DST_PORT: Range<usize> = 2..4;
    /// Length of header and payload.
    pub const LENGTH: Range<usize> = 4..6;
    /// Checksum over the pseudo-header, header and payload; 0 means none (IPv4 only).
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// UDP header length.
pub const HEADER_LEN: usize = field::CHECKSUM.end;
/// IPv4 + UDP headers: where a UDP payload starts in an IPv4 packet built here.
pub const IPV4_UDP_HEADERS: usize = ipv4::HEADER_LEN + HEADER_LEN;
/// IPv6 + UDP headers: where a UDP payload starts in an IPv6 packet built here.
pub const IPV6_UDP_HEADERS: usize = ipv6::HEADER_LEN + HEADER_LEN;

/// A UDP datagram whose length field is valid (>= 8 and within the IP payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpView<'a> {
    /// Header and payload, trimmed to the UDP length field.
    bytes: &'a [u8],
}

impl<'a> UdpView<'a> {
    /// Parses a UDP header at the start of `segment` (the IP payload).
    pub fn parse(segment: &'a [u8]) -> Option<Self> {
        let length = usize::from(get_u16(segment, field::LENGTH)?);
        if length < HEADER_LEN {
            return None;
        }
        segment.get(..length).map(|bytes| Self { bytes })
    }

    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        read_u16(self.bytes, field::SRC_PORT)
    }

    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        read_u16(self.bytes, field::DST_PORT)
    }

    /// The stored checksum (0 means none, allowed over IPv4 only).
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.bytes, field::CHECKSUM)
    }

    /// Payload, bounded by the UDP length field.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// Header and payload.
    #[inline]
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// Length of the IP + UDP headers [`write_udp_headers`] puts in front of a payload
/// addressed to `dst`: [`IPV4_UDP_HEADERS`] or [`IPV6_UDP_HEADERS`].
#[inline]
pub fn udp_headers_len(dst: &SocketAddr) -> usize {
    match dst {
        SocketAddr::V4(_) => IPV4_UDP_HEADERS,
        SocketAddr::V6(_) => IPV6_UDP_HEADERS,
    }
}

/// Writes IP and UDP headers in front of a payload already placed at
/// `buf[udp_headers_len(&dst)..][..payload_len]`, computes both checksums, and returns
/// the total packet length.
///
/// This lets a service build its answer in place, without a copy. The payload may be
/// at most 65507 bytes over IPv4 (16-bit total length) and 65527 over IPv6 (16-bit UDP
/// length).
pub fn write_udp_headers(
    buf: &mut [u8],
    src: SocketAddr,
    dst: SocketAddr,
    payload_len: usize,
) -> Result<usize, BuildError> {
    let endpoints = Endpoints::new(src.ip(), dst.ip())?;
    let max = match endpoints {
        Endpoints::V4 { .. } => usize::from(u16::MAX) - IPV4_UDP_HEADERS,
        Endpoints::V6 { .. } => usize::from(u16::MAX) - HEADER_LEN,
    };
    if payload_len > max {
        return Err(BuildError::PayloadTooLarge {
            len: payload_len,
            max,
        });
    }
    let udp_len = HEADER_LEN + payload_len;
    let (total, udp) = endpoints.start_packet(buf, protocol::UDP, udp_len)?;
    write_u16(udp, field::SRC_PORT, src.port());
    write_u16(udp, field::DST_PORT, dst.port());
    write_u16(udp, field::LENGTH, udp_len as u16);
    write_u16(udp, field::CHECKSUM, 0);
    let sum = match endpoints.transport_checksum(protocol::UDP, udp) {
        // RFC 768: a computed 0 is sent as all ones, since 0 means "no checksum".
        0 => 0xffff,
        sum => sum,
    };
    write_u16(udp, field::CHECKSUM, sum);
    Ok(total)
}

/// Copies `payload` after the headers and writes a complete UDP packet; returns its length.
pub fn build_udp(
    buf: &mut [u8],
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> Result<usize, BuildError> {
    let offset = udp_headers_len(&dst);
    let end = offset.saturating_add(payload.len());
    // A buffer too small for the copy is reported by write_udp_headers, which checks
    // families, sizes and capacity.
    if let Some(slot) = buf.get_mut(offset..end) {
        slot.copy_from_slice(payload);
    }
    write_udp_headers(buf, src, dst, payload.len())
}

//! Reply-packet builders. Each writes one packet at the start of a caller-provided
//! buffer and returns its length; nothing is written past that length, and on error the
//! buffer content is unspecified.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::checksum::{Checksum, checksum};
use crate::error::{BuildError, Refusal};
use crate::view::{IpView, TcpFlags, Transport, protocol};

/// IPv4 header length of every packet built here (IHL 5, no options).
pub const IPV4_HEADER_LEN: usize = 20;
/// IPv6 header length of every packet built here (no extension headers).
pub const IPV6_HEADER_LEN: usize = 40;
/// UDP header length.
pub const UDP_HEADER_LEN: usize = 8;
/// TCP header length of every segment built here (no options).
pub const TCP_HEADER_LEN: usize = 20;
/// ICMP and ICMPv6 header length (type, code, checksum, 4 type-specific bytes).
pub const ICMP_HEADER_LEN: usize = 8;
/// IPv4 + UDP headers: where a UDP payload starts in an IPv4 packet built here.
pub const IPV4_UDP_HEADERS: usize = IPV4_HEADER_LEN + UDP_HEADER_LEN;
/// IPv6 + UDP headers: where a UDP payload starts in an IPv6 packet built here.
pub const IPV6_UDP_HEADERS: usize = IPV6_HEADER_LEN + UDP_HEADER_LEN;
/// Largest ICMPv4 error built here (RFC 1812 4.3.2.3: at most 576 bytes).
pub const ICMPV4_ERROR_MAX_LEN: usize = 576;
/// Largest ICMPv6 error built here (RFC 4443 2.4(c): at most the minimum MTU).
pub const ICMPV6_ERROR_MAX_LEN: usize = 1280;

const DEFAULT_HOP_LIMIT: u8 = 64;
const ICMPV4_ECHO_REPLY: u8 = 0;
const ICMPV4_DEST_UNREACHABLE: u8 = 3;
const ICMPV4_PORT_UNREACHABLE: u8 = 3;
const ICMPV4_ECHO_REQUEST: u8 = 8;
const ICMPV6_DEST_UNREACHABLE: u8 = 1;
const ICMPV6_PORT_UNREACHABLE: u8 = 4;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

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
    let ip_header_len = endpoints.ip_header_len();
    let max = match endpoints {
        Endpoints::V4 { .. } => usize::from(u16::MAX) - IPV4_UDP_HEADERS,
        Endpoints::V6 { .. } => usize::from(u16::MAX) - UDP_HEADER_LEN,
    };
    if payload_len > max {
        return Err(BuildError::PayloadTooLarge {
            len: payload_len,
            max,
        });
    }
    let udp_len = UDP_HEADER_LEN + payload_len;
    let total = ensure_capacity(buf, ip_header_len + udp_len)?;
    let packet = &mut buf[..total];
    endpoints.write_ip_header(packet, protocol::UDP, udp_len);
    let udp = &mut packet[ip_header_len..];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp[6..8].fill(0);
    let sum = match endpoints.transport_checksum(protocol::UDP, udp) {
        // RFC 768: a computed 0 is sent as all ones, since 0 means "no checksum".
        0 => 0xffff,
        sum => sum,
    };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
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

/// Writes the echo reply to an ICMP echo request (type 8) or ICMPv6 echo request
/// (type 128): addresses swapped, identifier, sequence number and data kept, type 0 or
/// 129, code 0, fresh checksums. Returns the reply length.
///
/// IPv4 options and IPv6 extension headers of the request are not copied. Fragmented
/// requests are not reassembled ([`BuildError::NotEchoRequest`]).
pub fn build_echo_reply(request: &IpView, buf: &mut [u8]) -> Result<usize, BuildError> {
    let (message, reply_type) = match request.transport() {
        Some(Transport::Icmpv4(icmp)) if icmp.icmp_type() == ICMPV4_ECHO_REQUEST => {
            (icmp.bytes(), ICMPV4_ECHO_REPLY)
        }
        Some(Transport::Icmpv6(icmp)) if icmp.icmp_type() == ICMPV6_ECHO_REQUEST => {
            (icmp.bytes(), ICMPV6_ECHO_REPLY)
        }
        _ => return Err(BuildError::NotEchoRequest),
    };
    let endpoints = Endpoints::reply_to(request)?;
    let ip_header_len = endpoints.ip_header_len();
    let total = ensure_capacity(buf, ip_header_len + message.len())?;
    let packet = &mut buf[..total];
    endpoints.write_ip_header(packet, endpoints.icmp_protocol(), message.len());
    let icmp = &mut packet[ip_header_len..];
    icmp.copy_from_slice(message);
    icmp[0] = reply_type;
    icmp[1] = 0;
    endpoints.store_icmp_checksum(icmp);
    Ok(total)
}

/// Writes an ICMP destination unreachable / port unreachable (type 3 code 3) or ICMPv6
/// destination unreachable / port unreachable (type 1 code 4) about `original`, sourced
/// from the original's destination. Returns its length.
///
/// The error quotes as much of the original as fits in [`ICMPV4_ERROR_MAX_LEN`] or
/// [`ICMPV6_ERROR_MAX_LEN`] bytes in total; `buf` must hold the whole reply, so the
/// output does not depend on the buffer size.
///
/// Refuses ([`BuildError::Refused`]) what must never get an ICMP error
/// (RFC 1122 3.2.2, RFC 4443 2.4(e)): ICMP errors (and ICMP messages whose type cannot
/// be read), non-first fragments, IPv6 packets whose extension chain cannot be walked,
/// and packets whose source or destination is not a single host (unspecified,
/// multicast, broadcast, loopback, IPv4 240.0.0.0/4).
pub fn build_port_unreachable(original: &IpView, buf: &mut [u8]) -> Result<usize, BuildError> {
    if original.is_non_first_fragment() {
        return Err(BuildError::Refused(Refusal::NonFirstFragment));
    }
    let endpoints = Endpoints::reply_to(original)?;
    refuse_icmp_errors(original)?;
    let ip_header_len = endpoints.ip_header_len();
    let (limit, icmp_type, icmp_code) = match endpoints {
        Endpoints::V4 { .. } => (
            ICMPV4_ERROR_MAX_LEN,
            ICMPV4_DEST_UNREACHABLE,
            ICMPV4_PORT_UNREACHABLE,
        ),
        Endpoints::V6 { .. } => (
            ICMPV6_ERROR_MAX_LEN,
            ICMPV6_DEST_UNREACHABLE,
            ICMPV6_PORT_UNREACHABLE,
        ),
    };
    let quote = original.bytes();
    let quote = &quote[..quote.len().min(limit - ip_header_len - ICMP_HEADER_LEN)];
    let icmp_len = ICMP_HEADER_LEN + quote.len();
    let total = ensure_capacity(buf, ip_header_len + icmp_len)?;
    let packet = &mut buf[..total];
    endpoints.write_ip_header(packet, endpoints.icmp_protocol(), icmp_len);
    let icmp = &mut packet[ip_header_len..];
    icmp[0] = icmp_type;
    icmp[1] = icmp_code;
    // Checksum placeholder, then the unused word (RFC 4884 length 0: no extensions).
    icmp[2..ICMP_HEADER_LEN].fill(0);
    icmp[ICMP_HEADER_LEN..].copy_from_slice(quote);
    endpoints.store_icmp_checksum(icmp);
    Ok(total)
}

/// Writes the TCP RST that answers `original`, a segment for a closed port
/// (RFC 9293 3.10.7.1), and returns its length:
/// - if ACK is set: `<SEQ=SEG.ACK><CTL=RST>`;
/// - otherwise: `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`, where SEG.LEN counts the
///   data plus one for SYN and one for FIN.
///
/// Returns [`BuildError::NotTcp`] for anything but an unfragmented TCP segment with a
/// complete header, and refuses to answer a RST or a segment whose source or
/// destination is not a single host.
pub fn build_tcp_rst(original: &IpView, buf: &mut [u8]) -> Result<usize, BuildError> {
    let Some(Transport::Tcp(segment)) = original.transport() else {
        return Err(BuildError::NotTcp);
    };
    let flags = segment.flags();
    if flags.contains(TcpFlags::RST) {
        return Err(BuildError::Refused(Refusal::TcpReset));
    }
    let endpoints = Endpoints::reply_to(original)?;
    let (seq, ack, reply_flags) = if flags.contains(TcpFlags::ACK) {
        (segment.ack(), 0, TcpFlags::RST)
    } else {
        // The payload of a valid IP packet is < 2^16 bytes, so this cannot truncate.
        let seg_len = (segment.payload().len() as u32)
            + u32::from(flags.contains(TcpFlags::SYN))
            + u32::from(flags.contains(TcpFlags::FIN));
        (
            0,
            segment.seq().wrapping_add(seg_len),
            TcpFlags::RST | TcpFlags::ACK,
        )
    };
    let ip_header_len = endpoints.ip_header_len();
    let total = ensure_capacity(buf, ip_header_len + TCP_HEADER_LEN)?;
    let packet = &mut buf[..total];
    endpoints.write_ip_header(packet, protocol::TCP, TCP_HEADER_LEN);
    let tcp = &mut packet[ip_header_len..];
    tcp[0..2].copy_from_slice(&segment.dst_port().to_be_bytes());
    tcp[2..4].copy_from_slice(&segment.src_port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = ((TCP_HEADER_LEN / 4) as u8) << 4;
    tcp[13] = reply_flags.0;
    // Window 0, checksum placeholder, urgent pointer 0.
    tcp[14..TCP_HEADER_LEN].fill(0);
    let sum = endpoints.transport_checksum(protocol::TCP, tcp);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    Ok(total)
}

fn ensure_capacity(buf: &[u8], needed: usize) -> Result<usize, BuildError> {
    if buf.len() < needed {
        return Err(BuildError::BufferTooSmall {
            needed,
            available: buf.len(),
        });
    }
    Ok(needed)
}

/// RFC 1122 3.2.2 / RFC 4443 2.4(e): no ICMP error about an ICMP error. An ICMP type
/// that cannot be read counts as an error, to stay on the safe side.
fn refuse_icmp_errors(original: &IpView) -> Result<(), BuildError> {
    let refuse = Err(BuildError::Refused(Refusal::IcmpError));
    let icmp_type = || {
        original
            .upper_layer_bytes()
            .and_then(|bytes| bytes.first().copied())
    };
    match (original.version(), original.protocol()) {
        (4, Some(protocol::ICMP)) => match icmp_type() {
            // Echo, router advertisement/solicitation, timestamp, information, address mask.
            Some(0 | 8 | 9 | 10 | 13..=18) => Ok(()),
            _ => refuse,
        },
        (6, None) => Err(BuildError::Refused(Refusal::UnknownUpperLayer)),
        // RFC 4443 2.1: types 0-127 are errors, 128-255 informational.
        (6, Some(protocol::ICMPV6)) => match icmp_type() {
            Some(icmp_type) if icmp_type >= 128 => Ok(()),
            _ => refuse,
        },
        _ => Ok(()),
    }
}

/// Source and destination of a packet being built, of one IP version by construction.
#[derive(Debug, Clone, Copy)]
enum Endpoints {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

impl Endpoints {
    fn new(src: IpAddr, dst: IpAddr) -> Result<Self, BuildError> {
        match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Ok(Self::V4 { src, dst }),
            (IpAddr::V6(src), IpAddr::V6(dst)) => Ok(Self::V6 { src, dst }),
            _ => Err(BuildError::AddressFamilyMismatch),
        }
    }

    /// The original's addresses swapped, if both name a single host.
    fn reply_to(original: &IpView) -> Result<Self, BuildError> {
        let (src, dst) = (original.dst(), original.src());
        if !is_single_host(src) || !is_single_host(dst) {
            return Err(BuildError::Refused(Refusal::NotUnicast));
        }
        Self::new(src, dst)
    }

    fn ip_header_len(self) -> usize {
        match self {
            Self::V4 { .. } => IPV4_HEADER_LEN,
            Self::V6 { .. } => IPV6_HEADER_LEN,
        }
    }

    fn icmp_protocol(self) -> u8 {
        match self {
            Self::V4 { .. } => protocol::ICMP,
            Self::V6 { .. } => protocol::ICMPV6,
        }
    }

    /// Writes a 20-byte IPv4 header (TTL 64, DF, ID 0, checksum) or a 40-byte IPv6
    /// header (hop limit 64, flow label 0) for `payload_len` bytes of `protocol`.
    /// The caller has checked that `packet` holds it and that the lengths fit.
    fn write_ip_header(self, packet: &mut [u8], protocol: u8, payload_len: usize) {
        match self {
            Self::V4 { src, dst } => {
                let header = &mut packet[..IPV4_HEADER_LEN];
                header[0] = 0x45;
                header[1] = 0;
                header[2..4]
                    .copy_from_slice(&((IPV4_HEADER_LEN + payload_len) as u16).to_be_bytes());
                // ID 0 with DF: an atomic datagram needs no identification (RFC 6864 4.1).
                header[4..6].fill(0);
                header[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
                header[8] = DEFAULT_HOP_LIMIT;
                header[9] = protocol;
                header[10..12].fill(0);
                header[12..16].copy_from_slice(&src.octets());
                header[16..20].copy_from_slice(&dst.octets());
                let sum = checksum(header);
                header[10..12].copy_from_slice(&sum.to_be_bytes());
            }
            Self::V6 { src, dst } => {
                let header = &mut packet[..IPV6_HEADER_LEN];
                header[0..4].copy_from_slice(&0x6000_0000u32.to_be_bytes());
                header[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
                header[6] = protocol;
                header[7] = DEFAULT_HOP_LIMIT;
                header[8..24].copy_from_slice(&src.octets());
                header[24..40].copy_from_slice(&dst.octets());
            }
        }
    }

    /// Checksum of a segment (checksum field zeroed) with this pseudo-header.
    fn transport_checksum(self, protocol: u8, segment: &[u8]) -> u16 {
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

    /// Fills the checksum of an ICMP message: plain over IPv4, with the pseudo-header for
    /// ICMPv6 (RFC 4443 2.3).
    fn store_icmp_checksum(self, icmp: &mut [u8]) {
        icmp[2..4].fill(0);
        let sum = match self {
            Self::V4 { .. } => checksum(icmp),
            Self::V6 { .. } => self.transport_checksum(protocol::ICMPV6, icmp),
        };
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
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

//! ICMP (RFC 792) and ICMPv6 (RFC 4443), which share their header layout: where each
//! header field sits, the message view, and the echo replies and port unreachable
//! errors a virtual IP answers with.

use crate::checksum::checksum;
use crate::error::{BuildError, Refusal};
use crate::field::{read_u16, write_u16};
use crate::ip::{Endpoints, IpView};
use crate::protocol;

/// Byte offsets of the ICMP and ICMPv6 header fields, from the start of the message.
pub mod field {
    use std::ops::Range;

    /// Message type.
    pub const TYPE: usize = 0;
    /// Message code.
    pub const CODE: usize = 1;
    /// Checksum: of the message over IPv4, with the pseudo-header over IPv6.
    pub const CHECKSUM: Range<usize> = 2..4;
    /// Identifier of an echo request or reply.
    pub const ECHO_IDENT: Range<usize> = 4..6;
    /// Sequence number of an echo request or reply.
    pub const ECHO_SEQ: Range<usize> = 6..8;
}

/// ICMP and ICMPv6 header length: type, code, checksum and four bytes whose meaning
/// depends on the type (the echo identifier and sequence number, or unused).
pub const HEADER_LEN: usize = 8;
/// Largest ICMPv4 error built here (RFC 1812 4.3.2.3: at most 576 bytes).
pub const ICMPV4_ERROR_MAX_LEN: usize = 576;
/// Largest ICMPv6 error built here (RFC 4443 2.4(c): at most the minimum MTU).
pub const ICMPV6_ERROR_MAX_LEN: usize = 1280;

const ICMPV4_ECHO_REPLY: u8 = 0;
const ICMPV4_DEST_UNREACHABLE: u8 = 3;
const ICMPV4_PORT_UNREACHABLE: u8 = 3;
const ICMPV4_ECHO_REQUEST: u8 = 8;
const ICMPV6_DEST_UNREACHABLE: u8 = 1;
const ICMPV6_PORT_UNREACHABLE: u8 = 4;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// An ICMP or ICMPv6 message with at least its 8-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpView<'a> {
    bytes: &'a [u8],
}

impl<'a> IcmpView<'a> {
    /// Parses an ICMP header at the start of `message` (the IP payload).
    pub fn parse(message: &'a [u8]) -> Option<Self> {
        (message.len() >= HEADER_LEN).then_some(Self { bytes: message })
    }

    /// Type.
    #[inline]
    pub fn icmp_type(&self) -> u8 {
        self.bytes[field::TYPE]
    }

    /// Code.
    #[inline]
    pub fn code(&self) -> u8 {
        self.bytes[field::CODE]
    }

    /// The stored checksum.
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.bytes, field::CHECKSUM)
    }

    /// Identifier of an echo request or reply.
    #[inline]
    pub fn echo_id(&self) -> u16 {
        read_u16(self.bytes, field::ECHO_IDENT)
    }

    /// Sequence number of an echo request or reply.
    #[inline]
    pub fn echo_seq(&self) -> u16 {
        read_u16(self.bytes, field::ECHO_SEQ)
    }

    /// The whole message, header included.
    #[inline]
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// The ICMP protocol of an IP version: ICMP over IPv4, ICMPv6 over IPv6.
fn icmp_protocol(version: u8) -> u8 {
    match version {
        4 => protocol::ICMP,
        _ => protocol::ICMPV6,
    }
}

/// Writes the echo reply to an ICMP echo request (type 8) or ICMPv6 echo request
/// (type 128): addresses swapped, identifier, sequence number and data kept, type 0 or
/// 129, code 0, fresh checksums. Returns the reply length.
///
/// IPv4 options and IPv6 extension headers of the request are not copied. Fragmented
/// requests are not reassembled ([`BuildError::NotEchoRequest`]).
pub fn build_echo_reply(request: &IpView, buf: &mut [u8]) -> Result<usize, BuildError> {
    let (request_type, reply_type) = match request.version() {
        4 => (ICMPV4_ECHO_REQUEST, ICMPV4_ECHO_REPLY),
        _ => (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY),
    };
    let protocol = icmp_protocol(request.version());
    let Some(echo) = request
        .whole_upper_layer(protocol)
        .and_then(IcmpView::parse)
        .filter(|icmp| icmp.icmp_type() == request_type)
    else {
        return Err(BuildError::NotEchoRequest);
    };
    let message = echo.bytes();
    let endpoints = Endpoints::reply_to(request)?;
    let (total, icmp) = endpoints.start_packet(buf, protocol, message.len())?;
    icmp.copy_from_slice(message);
    icmp[field::TYPE] = reply_type;
    icmp[field::CODE] = 0;
    store_checksum(endpoints, icmp);
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
    let quote = &quote[..quote.len().min(limit - endpoints.header_len() - HEADER_LEN)];
    let protocol = icmp_protocol(original.version());
    let (total, icmp) = endpoints.start_packet(buf, protocol, HEADER_LEN + quote.len())?;
    icmp[field::TYPE] = icmp_type;
    icmp[field::CODE] = icmp_code;
    // Checksum placeholder, then the unused word (RFC 4884 length 0: no extensions).
    icmp[field::CHECKSUM.start..HEADER_LEN].fill(0);
    icmp[HEADER_LEN..].copy_from_slice(quote);
    store_checksum(endpoints, icmp);
    Ok(total)
}

/// RFC 1122 3.2.2 / RFC 4443 2.4(e): no ICMP error about an ICMP error. An ICMP type
/// that cannot be read counts as an error, to stay on the safe side.
fn refuse_icmp_errors(original: &IpView) -> Result<(), BuildError> {
    let refuse = Err(BuildError::Refused(Refusal::IcmpError));
    let icmp_type = || {
        original
            .upper_layer_bytes()
            .and_then(|bytes| bytes.get(field::TYPE).copied())
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

/// Fills the checksum of an ICMP message: plain over IPv4, with the pseudo-header for
/// ICMPv6 (RFC 4443 2.3).
fn store_checksum(endpoints: Endpoints, icmp: &mut [u8]) {
    write_u16(icmp, field::CHECKSUM, 0);
    let sum = match endpoints {
        Endpoints::V4 { .. } => checksum(icmp),
        Endpoints::V6 { .. } => endpoints.transport_checksum(protocol::ICMPV6, icmp),
    };
    write_u16(icmp, field::CHECKSUM, sum);
}

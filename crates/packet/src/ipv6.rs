//! IPv6 (RFC 8200): where each header field sits, the walk over extension headers, and
//! the header every IPv6 reply built here carries.

use std::net::Ipv6Addr;

use crate::error::PacketError;
use crate::field::{read_u16, write_u16, write_u32};
use crate::protocol;

/// Byte offsets of the IPv6 header fields, from the start of the packet, and of the
/// extension header fields, from the start of each extension header.
pub mod field {
    use std::ops::Range;

    /// Version (high 4 bits), traffic class and flow label.
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    /// Length of everything after this header, extension headers included.
    pub const PAYLOAD_LEN: Range<usize> = 4..6;
    /// Protocol number of the first extension header or of the upper layer.
    pub const NEXT_HEADER: usize = 6;
    /// Hop limit.
    pub const HOP_LIMIT: usize = 7;
    /// Source address.
    pub const SRC_ADDR: Range<usize> = 8..24;
    /// Destination address.
    pub const DST_ADDR: Range<usize> = 24..40;

    /// An extension header's Next Header.
    pub const EXT_NEXT_HEADER: usize = 0;
    /// An extension header's length, in units that depend on the header.
    pub const EXT_LENGTH: usize = 1;
    /// A Fragment header's offset in 8-byte units (high 13 bits) and M flag (low bit).
    pub const FRAGMENT_OFFSET_M: Range<usize> = 2..4;
}

/// Length of the fixed header, and of the header of every packet built here (no
/// extension headers).
pub const HEADER_LEN: usize = field::DST_ADDR.end;

/// Length of a Fragment header (RFC 8200 4.5).
const FRAGMENT_HEADER_LEN: usize = 8;

/// Version 6, traffic class 0, flow label 0.
const VER_TC_FLOW_DEFAULT: u32 = 0x6000_0000;

/// More extension headers than this and the upper layer is reported as unknown:
/// real traffic carries two or three, and the cap bounds the work per packet.
const MAX_EXTENSION_HEADERS: usize = 8;

/// A header that passed [`parse`], with its extension chain walked.
pub(crate) struct Header<'a> {
    /// Exactly the packet: bytes beyond the payload length are cut off.
    pub(crate) packet: &'a [u8],
    /// The upper-layer protocol, or for a non-first fragment the Fragment header's Next
    /// Header; `None` when the chain is truncated or too long.
    pub(crate) protocol: Option<u8>,
    /// Offset of the upper-layer header; `None` for a non-first fragment and whenever
    /// `protocol` is.
    pub(crate) transport_offset: Option<usize>,
    /// `None` without a Fragment header, else its offset in 8-byte units.
    pub(crate) fragment_offset: Option<u16>,
}

/// Checks the payload length against `buf` (which starts with version 6) and walks the
/// extension headers. A payload length of 0 (jumbogram) is taken literally.
#[inline]
pub(crate) fn parse(buf: &[u8]) -> Result<Header<'_>, PacketError> {
    if buf.len() < HEADER_LEN {
        return Err(PacketError::Truncated);
    }
    let payload_len = usize::from(read_u16(buf, field::PAYLOAD_LEN));
    let packet = buf
        .get(..HEADER_LEN + payload_len)
        .ok_or(PacketError::Truncated)?;
    Ok(walk_extensions(packet, buf[field::NEXT_HEADER]))
}

/// Walks the extension headers of `packet` (already trimmed to its stated length).
fn walk_extensions(packet: &[u8], first_next_header: u8) -> Header<'_> {
    let mut next_header = first_next_header;
    let mut offset = HEADER_LEN;
    let mut fragment_offset = None;
    let unknown = |fragment_offset| Header {
        packet,
        protocol: None,
        transport_offset: None,
        fragment_offset,
    };
    for _ in 0..=MAX_EXTENSION_HEADERS {
        let header_len = match next_header {
            protocol::HOP_BY_HOP | protocol::ROUTING | protocol::DESTINATION_OPTIONS => {
                match packet.get(offset + field::EXT_LENGTH) {
                    Some(&len) => (usize::from(len) + 1) * 8,
                    None => return unknown(fragment_offset),
                }
            }
            // RFC 4302 2.2: AH counts 32-bit words, minus 2.
            protocol::AH => match packet.get(offset + field::EXT_LENGTH) {
                Some(&len) => (usize::from(len) + 2) * 4,
                None => return unknown(fragment_offset),
            },
            protocol::FRAGMENT => {
                let Some(header) = packet.get(offset..offset + FRAGMENT_HEADER_LEN) else {
                    return unknown(fragment_offset);
                };
                let offset_units = read_u16(header, field::FRAGMENT_OFFSET_M) >> 3;
                if offset_units != 0 {
                    // The rest of the chain and the transport header are in the first fragment.
                    return Header {
                        packet,
                        protocol: Some(header[field::EXT_NEXT_HEADER]),
                        transport_offset: None,
                        fragment_offset: Some(offset_units),
                    };
                }
                fragment_offset = Some(0);
                FRAGMENT_HEADER_LEN
            }
            upper => {
                return Header {
                    packet,
                    protocol: Some(upper),
                    transport_offset: Some(offset),
                    fragment_offset,
                };
            }
        };
        if offset + header_len > packet.len() {
            return unknown(fragment_offset);
        }
        next_header = packet[offset + field::EXT_NEXT_HEADER];
        offset += header_len;
    }
    unknown(fragment_offset)
}

/// Writes a [`HEADER_LEN`]-byte header (flow label 0) for `payload_len` bytes of
/// `protocol`. The caller has checked that `packet` holds it and that the length fits.
pub(crate) fn write_header(
    packet: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    protocol: u8,
    hop_limit: u8,
    payload_len: usize,
) {
    let header = &mut packet[..HEADER_LEN];
    write_u32(header, field::VER_TC_FLOW, VER_TC_FLOW_DEFAULT);
    write_u16(header, field::PAYLOAD_LEN, payload_len as u16);
    header[field::NEXT_HEADER] = protocol;
    header[field::HOP_LIMIT] = hop_limit;
    header[field::SRC_ADDR].copy_from_slice(&src.octets());
    header[field::DST_ADDR].copy_from_slice(&dst.octets());
}

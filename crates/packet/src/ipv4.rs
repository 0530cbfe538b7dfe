//! IPv4 (RFC 791): where each header field sits, the checks a header must pass, and the
//! header every IPv4 reply built here carries.

use std::net::Ipv4Addr;

use crate::checksum::checksum;
use crate::error::PacketError;
use crate::field::{read_u16, write_u16};

/// Byte offsets of the IPv4 header fields, from the start of the packet.
pub mod field {
    use std::ops::Range;

    /// Version (high nibble) and header length in 32-bit words (low nibble).
    pub const VER_IHL: usize = 0;
    /// DSCP and ECN.
    pub const DSCP_ECN: usize = 1;
    /// Total length of the packet, header included.
    pub const LENGTH: Range<usize> = 2..4;
    /// Identification.
    pub const IDENT: Range<usize> = 4..6;
    /// Flags (high 3 bits) and fragment offset in 8-byte units (low 13 bits).
    pub const FLAGS_FRAGMENT: Range<usize> = 6..8;
    /// Time to live.
    pub const TTL: usize = 8;
    /// Upper-layer protocol number.
    pub const PROTOCOL: usize = 9;
    /// Header checksum.
    pub const CHECKSUM: Range<usize> = 10..12;
    /// Source address.
    pub const SRC_ADDR: Range<usize> = 12..16;
    /// Destination address.
    pub const DST_ADDR: Range<usize> = 16..20;
}

/// Length of a header without options: the shortest header there is, and the header of
/// every packet built here (IHL 5).
pub const HEADER_LEN: usize = field::DST_ADDR.end;

/// Version 4, IHL 5.
const VER_IHL_NO_OPTIONS: u8 = 0x45;
const DONT_FRAGMENT: u16 = 0x4000;
const MORE_FRAGMENTS: u16 = 0x2000;
const FRAGMENT_OFFSET: u16 = 0x1fff;

/// A header that passed [`parse`].
pub(crate) struct Header<'a> {
    /// Exactly the packet: bytes beyond the total length are cut off.
    pub(crate) packet: &'a [u8],
    /// Header length in bytes, options included.
    pub(crate) header_len: usize,
    pub(crate) protocol: u8,
    /// `None` when the packet is whole, else its fragment offset in 8-byte units.
    pub(crate) fragment_offset: Option<u16>,
}

/// Checks the IHL and the total length against `buf` (which starts with version 4).
#[inline]
pub(crate) fn parse(buf: &[u8]) -> Result<Header<'_>, PacketError> {
    if buf.len() < HEADER_LEN {
        return Err(PacketError::Truncated);
    }
    let header_len = usize::from(buf[field::VER_IHL] & 0x0f) * 4;
    if header_len < HEADER_LEN {
        return Err(PacketError::BadHeaderLength);
    }
    let total_len = usize::from(read_u16(buf, field::LENGTH));
    if total_len < header_len {
        return Err(PacketError::BadTotalLength);
    }
    let packet = buf.get(..total_len).ok_or(PacketError::Truncated)?;
    let flags_fragment = read_u16(buf, field::FLAGS_FRAGMENT);
    let offset = flags_fragment & FRAGMENT_OFFSET;
    let is_fragment = offset != 0 || flags_fragment & MORE_FRAGMENTS != 0;
    Ok(Header {
        packet,
        header_len,
        protocol: buf[field::PROTOCOL],
        fragment_offset: is_fragment.then_some(offset),
    })
}

/// Writes a [`HEADER_LEN`]-byte header (DF, ID 0, checksum) for `payload_len` bytes of
/// `protocol`. The caller has checked that `packet` holds it and that the length fits.
pub(crate) fn write_header(
    packet: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    ttl: u8,
    payload_len: usize,
) {
    let header = &mut packet[..HEADER_LEN];
    header[field::VER_IHL] = VER_IHL_NO_OPTIONS;
    header[field::DSCP_ECN] = 0;
    write_u16(header, field::LENGTH, (HEADER_LEN + payload_len) as u16);
    // ID 0 with DF: an atomic datagram needs no identification (RFC 6864 4.1).
    write_u16(header, field::IDENT, 0);
    write_u16(header, field::FLAGS_FRAGMENT, DONT_FRAGMENT);
    header[field::TTL] = ttl;
    header[field::PROTOCOL] = protocol;
    write_u16(header, field::CHECKSUM, 0);
    header[field::SRC_ADDR].copy_from_slice(&src.octets());
    header[field::DST_ADDR].copy_from_slice(&dst.octets());
    let sum = checksum(header);
    write_u16(header, field::CHECKSUM, sum);
}

//! TCP (RFC 9293): where each header field sits, the segment view, and the RST that
//! answers a segment for a closed port.

use crate::error::{BuildError, Refusal};
use crate::field::{read_u16, read_u32, write_u16, write_u32};
use crate::ip::{Endpoints, IpView};
use crate::protocol;

/// Byte offsets of the TCP header fields, from the start of the TCP header.
pub mod field {
    use std::ops::Range;

    /// Source port.
    pub const SRC_PORT: Range<usize> = 0..2;
    /// Destination port.
    pub const DST_PORT: Range<usize> = 2..4;
    /// Sequence number.
    pub const SEQ_NUM: Range<usize> = 4..8;
    /// Acknowledgment number.
    pub const ACK_NUM: Range<usize> = 8..12;
    /// Data offset: header length in 32-bit words (high nibble).
    pub const DATA_OFFSET: usize = 12;
    /// Control bits (low 6 bits).
    pub const FLAGS: usize = 13;
    /// Receive window.
    pub const WINDOW: Range<usize> = 14..16;
    /// Checksum over the pseudo-header, header and data.
    pub const CHECKSUM: Range<usize> = 16..18;
    /// Urgent pointer.
    pub const URGENT: Range<usize> = 18..20;
}

/// Length of a header without options: the shortest header there is, and the header of
/// every segment built here.
pub const HEADER_LEN: usize = field::URGENT.end;

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
        let header_len = usize::from(segment.get(field::DATA_OFFSET)? >> 4) * 4;
        if header_len < HEADER_LEN || header_len > segment.len() {
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
        read_u16(self.bytes, field::SRC_PORT)
    }

    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        read_u16(self.bytes, field::DST_PORT)
    }

    /// Sequence number.
    #[inline]
    pub fn seq(&self) -> u32 {
        read_u32(self.bytes, field::SEQ_NUM)
    }

    /// Acknowledgment number (meaningful only with [`TcpFlags::ACK`]).
    #[inline]
    pub fn ack(&self) -> u32 {
        read_u32(self.bytes, field::ACK_NUM)
    }

    /// Control bits.
    #[inline]
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.bytes[field::FLAGS] & 0x3f)
    }

    /// Receive window.
    #[inline]
    pub fn window(&self) -> u16 {
        read_u16(self.bytes, field::WINDOW)
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
    let Some(segment) = original
        .whole_upper_layer(protocol::TCP)
        .and_then(TcpView::parse)
    else {
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
    let (total, tcp) = endpoints.start_packet(buf, protocol::TCP, HEADER_LEN)?;
    write_u16(tcp, field::SRC_PORT, segment.dst_port());
    write_u16(tcp, field::DST_PORT, segment.src_port());
    write_u32(tcp, field::SEQ_NUM, seq);
    write_u32(tcp, field::ACK_NUM, ack);
    tcp[field::DATA_OFFSET] = ((HEADER_LEN / 4) as u8) << 4;
    tcp[field::FLAGS] = reply_flags.0;
    write_u16(tcp, field::WINDOW, 0);
    write_u16(tcp, field::CHECKSUM, 0);
    write_u16(tcp, field::URGENT, 0);
    let sum = endpoints.transport_checksum(protocol::TCP, tcp);
    write_u16(tcp, field::CHECKSUM, sum);
    Ok(total)
}

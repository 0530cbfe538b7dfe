//! Error types for parsing and building.

/// Why [`IpView::parse`](crate::IpView::parse) rejected a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The buffer is shorter than the IP header or than the length the header states.
    #[error("packet truncated")]
    Truncated,
    /// The version nibble is neither 4 nor 6.
    #[error("IP version is neither 4 nor 6")]
    BadVersion,
    /// IPv4 IHL below 5 (a header shorter than 20 bytes).
    #[error("bad IPv4 header length")]
    BadHeaderLength,
    /// IPv4 total length smaller than its own header.
    #[error("bad IPv4 total length")]
    BadTotalLength,
}

/// Why a builder wrote nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The output buffer cannot hold the packet.
    #[error("buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall {
        /// Bytes the packet needs.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// The payload does not fit the 16-bit length fields.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    PayloadTooLarge {
        /// Payload length asked for.
        len: usize,
        /// Largest payload the headers can describe.
        max: usize,
    },
    /// Source and destination are not of the same IP version.
    #[error("source and destination address families differ")]
    AddressFamilyMismatch,
    /// [`build_echo_reply`](crate::build_echo_reply) was given something other than an
    /// unfragmented ICMP or ICMPv6 echo request.
    #[error("not an unfragmented ICMP echo request")]
    NotEchoRequest,
    /// [`build_tcp_rst`](crate::build_tcp_rst) was given something other than an
    /// unfragmented TCP segment with a complete header.
    #[error("not an unfragmented TCP segment")]
    NotTcp,
    /// The packet is well formed, but the RFCs forbid answering it. Drop it silently.
    #[error("must not answer: {0}")]
    Refused(Refusal),
}

/// Why the RFCs forbid answering a packet (see [`BuildError::Refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The packet is itself an ICMP error, or its ICMP type cannot be read
    /// (RFC 1122 3.2.2, RFC 4443 2.4(e)).
    #[error("the original is an ICMP error")]
    IcmpError,
    /// A fragment other than the first (RFC 1122 3.2.2, RFC 4443 2.4(e)).
    #[error("the original is a non-first fragment")]
    NonFirstFragment,
    /// The source or destination does not name a single host: unspecified, multicast,
    /// broadcast, or (as a source) loopback or reserved.
    #[error("the original's source or destination is not unicast")]
    NotUnicast,
    /// The IPv6 extension header chain is truncated or too long, so the upper layer is unknown.
    #[error("the original's upper-layer protocol is unknown")]
    UnknownUpperLayer,
    /// A TCP RST is never answered (RFC 9293 3.10.7.1).
    #[error("the original is a TCP RST")]
    TcpReset,
}

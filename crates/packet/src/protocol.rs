//! IP protocol numbers (IANA "Assigned Internet Protocol Numbers") this crate names.

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

//! Zero-copy packet views, Internet checksums and reply-packet builders for tundns.
//!
//! This crate owns everything tundns knows about the bytes of an IP packet, one module
//! per protocol: [`ipv4`], [`ipv6`], [`udp`], [`tcp`] and [`icmp`] (ICMP and ICMPv6).
//! Each has a `field` module that says where each header field sits (for example
//! [`ipv4::field::DST_ADDR`]), so that no other crate reads a packet at a literal
//! offset, its read-only view, and the reply it builds:
//! - [`IpView`] and [`Transport`]: read-only views of one IPv4 or IPv6 packet and its
//!   UDP, TCP or ICMP header, validated once at parse time;
//! - [`checksum`] and [`Checksum`]: the Internet checksum (RFC 1071) with pseudo-headers;
//! - builders that write reply packets (UDP datagrams, ICMP echo replies, ICMP port
//!   unreachable, TCP RST) into a caller-provided buffer and return their length.
//!
//! It must never do I/O, never allocate, and never panic, whatever the input: every
//! length is checked before it is used, and malformed or truncated packets become
//! `None` or an error. Fragments are never reassembled and never yield ports.
//!
//! A service answers a UDP query by writing its payload after the header room and
//! letting [`write_udp_headers`] fill the headers in front, without a copy:
//!
//! ```
//! use tundns_packet::{IpView, Transport, udp_headers_len, write_udp_headers};
//!
//! let server = "10.30.30.30:53".parse().unwrap();
//! let client = "10.0.0.2:40000".parse().unwrap();
//! let mut buf = [0u8; 1500];
//! let answer = b"dns answer";
//! buf[udp_headers_len(&client)..][..answer.len()].copy_from_slice(answer);
//! let len = write_udp_headers(&mut buf, server, client, answer.len()).unwrap();
//!
//! let view = IpView::parse(&buf[..len]).unwrap();
//! let Some(Transport::Udp(udp)) = view.transport() else { unreachable!() };
//! assert_eq!((udp.dst_port(), udp.payload()), (40000, &answer[..]));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod checksum;
mod error;
mod field;
pub mod icmp;
mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod protocol;
pub mod tcp;
mod transport;
pub mod udp;

pub use checksum::{Checksum, checksum};
pub use error::{BuildError, PacketError, Refusal};
pub use icmp::{
    HEADER_LEN as ICMP_HEADER_LEN, ICMPV4_ERROR_MAX_LEN, ICMPV6_ERROR_MAX_LEN, IcmpView,
    build_echo_reply, build_port_unreachable,
};
pub use ip::IpView;
pub use ipv4::HEADER_LEN as IPV4_HEADER_LEN;
pub use ipv6::HEADER_LEN as IPV6_HEADER_LEN;
pub use tcp::{HEADER_LEN as TCP_HEADER_LEN, TcpFlags, TcpView, build_tcp_rst};
pub use transport::{Transport, destination_port};
pub use udp::{
    HEADER_LEN as UDP_HEADER_LEN, IPV4_UDP_HEADERS, IPV6_UDP_HEADERS, UdpView, build_udp,
    udp_headers_len, write_udp_headers,
};

//! Test helpers: packets built (by the shared test-support builders) and checked by
//! etherparse, an independent implementation.
#![allow(dead_code)]

use etherparse::{IpFragOffset, Ipv4Header, NetSlice, SlicedPacket, TransportSlice};
use tundns_test_support::packet::{Tcp, echo_request, tcp};

pub const CLIENT_V4: [u8; 4] = [10, 0, 0, 2];
pub const VIRTUAL_V4: [u8; 4] = [10, 30, 30, 30];
pub const CLIENT_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const VIRTUAL_V6: [u8; 16] = [
    0xfd, 0x30, 0, 0x30, 0, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x30,
];

/// TCP segment from the client to the virtual IP. `ack` sets the ACK flag.
pub fn tcp_v4(seq: u32, ack: Option<u32>, syn: bool, fin: bool, payload: &[u8]) -> Vec<u8> {
    tcp(
        CLIENT_V4,
        VIRTUAL_V4,
        &dns_segment(seq, ack, syn, fin),
        payload,
    )
}

pub fn tcp_v6(seq: u32, ack: Option<u32>, syn: bool, fin: bool, payload: &[u8]) -> Vec<u8> {
    tcp(
        CLIENT_V6,
        VIRTUAL_V6,
        &dns_segment(seq, ack, syn, fin),
        payload,
    )
}

pub fn tcp_rst_v4() -> Vec<u8> {
    let segment = Tcp {
        rst: true,
        ..Tcp::new(40000, 53, 7, 0)
    };
    tcp(CLIENT_V4, VIRTUAL_V4, &segment, &[])
}

/// A segment of the client's connection to port 53.
fn dns_segment(seq: u32, ack: Option<u32>, syn: bool, fin: bool) -> Tcp {
    Tcp {
        ack,
        syn,
        fin,
        ..Tcp::new(40000, 53, seq, 1024)
    }
}

pub fn echo_request_v4(id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    echo_request(CLIENT_V4, VIRTUAL_V4, id, seq, data)
}

pub fn echo_request_v6(id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    echo_request(CLIENT_V6, VIRTUAL_V6, id, seq, data)
}

/// Rewrites the IPv4 fragment fields of `packet` (etherparse recomputes the checksum).
pub fn set_ipv4_fragment(packet: &mut [u8], more_fragments: bool, offset_units: u16) {
    let (mut header, _) = Ipv4Header::from_slice(packet).unwrap();
    header.more_fragments = more_fragments;
    header.fragment_offset = IpFragOffset::try_new(offset_units).unwrap();
    let mut bytes = Vec::new();
    header.write(&mut bytes).unwrap();
    packet[..bytes.len()].copy_from_slice(&bytes);
}

/// An IPv6 extension header for [`ipv6_with_extensions`].
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    HopByHop,
    DestinationOptions,
    Routing,
    /// Fragment header with this offset (8-byte units) and M flag.
    Fragment {
        offset_units: u16,
        more: bool,
    },
    Auth,
}

impl Ext {
    fn number(self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::DestinationOptions => 60,
            Ext::Routing => 43,
            Ext::Fragment { .. } => 44,
            Ext::Auth => 51,
        }
    }
}

/// An IPv6 packet with the given extension chain before `upper` (its protocol number
/// `upper_protocol`), laid out by hand and checked against etherparse's walk.
pub fn ipv6_with_extensions(exts: &[Ext], upper_protocol: u8, upper: &[u8]) -> Vec<u8> {
    let mut chain = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(upper_protocol, |e| e.number());
        match *ext {
            // 16 bytes: length field 1, PadN option filling the rest.
            Ext::HopByHop | Ext::DestinationOptions => {
                chain.extend_from_slice(&[next, 1, 1, 12]);
                chain.extend_from_slice(&[0; 12]);
            }
            // Type 0 segments-left 0 routing header, 8 bytes.
            Ext::Routing => chain.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 0]),
            Ext::Fragment { offset_units, more } => {
                let field = (offset_units << 3) | u16::from(more);
                let [hi, lo] = field.to_be_bytes();
                chain.extend_from_slice(&[next, 0, hi, lo, 0, 0, 0x12, 0x34]);
            }
            // AH with a 12-byte ICV: length field (24 / 4) - 2 = 4.
            Ext::Auth => {
                chain.extend_from_slice(&[next, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]);
                chain.extend_from_slice(&[0xaa; 12]);
            }
        }
    }
    let first = exts.first().map_or(upper_protocol, |e| e.number());
    let payload_len = (chain.len() + upper.len()) as u16;
    let mut out = vec![0x60, 0, 0, 0];
    out.extend_from_slice(&payload_len.to_be_bytes());
    out.extend_from_slice(&[first, 64]);
    out.extend_from_slice(&CLIENT_V6);
    out.extend_from_slice(&VIRTUAL_V6);
    out.extend_from_slice(&chain);
    out.extend_from_slice(upper);
    out
}

/// Parses `packet` with etherparse and asserts that every checksum in it is valid:
/// the IPv4 header checksum and the UDP, TCP, ICMP or ICMPv6 checksum.
pub fn assert_checksums_valid(packet: &[u8]) -> SlicedPacket<'_> {
    let sliced = SlicedPacket::from_ip(packet).expect("etherparse rejects the packet");
    let (src4, dst4, src6, dst6) = match sliced.net.as_ref().expect("no IP layer") {
        NetSlice::Ipv4(ipv4) => {
            let header = ipv4.header().to_header();
            assert_eq!(
                header.header_checksum,
                header.calc_header_checksum(),
                "IPv4 header checksum"
            );
            (header.source, header.destination, [0; 16], [0; 16])
        }
        NetSlice::Ipv6(ipv6) => {
            let header = ipv6.header();
            ([0; 4], [0; 4], header.source(), header.destination())
        }
        NetSlice::Arp(_) => panic!("ARP"),
    };
    let is_v4 = matches!(sliced.net, Some(NetSlice::Ipv4(_)));
    match sliced.transport.as_ref().expect("no transport layer") {
        TransportSlice::Udp(udp) => {
            let header = udp.to_header();
            let expected = if is_v4 {
                header.calc_checksum_ipv4_raw(src4, dst4, udp.payload())
            } else {
                header.calc_checksum_ipv6_raw(src6, dst6, udp.payload())
            };
            assert_eq!(udp.checksum(), expected.unwrap(), "UDP checksum");
        }
        TransportSlice::Tcp(tcp) => {
            let header = tcp.to_header();
            let expected = if is_v4 {
                header.calc_checksum_ipv4_raw(src4, dst4, tcp.payload())
            } else {
                header.calc_checksum_ipv6_raw(src6, dst6, tcp.payload())
            };
            assert_eq!(tcp.checksum(), expected.unwrap(), "TCP checksum");
        }
        TransportSlice::Icmpv4(icmp) => {
            let expected = icmp.icmp_type().calc_checksum(icmp.payload());
            assert_eq!(icmp.checksum(), expected, "ICMP checksum");
        }
        TransportSlice::Icmpv6(icmp) => {
            assert!(icmp.is_checksum_valid(src6, dst6), "ICMPv6 checksum");
        }
        other => panic!("unexpected transport {other:?}"),
    }
    sliced
}

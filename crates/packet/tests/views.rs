//! IpView and transport views against packets built by etherparse.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::*;
use etherparse::{Ipv6Slice, SlicedPacket, TransportSlice};
use tundns_packet::{IpView, PacketError, TcpFlags, Transport, destination_port, protocol};
use tundns_test_support::packet::udp;

#[test]
fn ipv4_udp_view() {
    let mut packet = udp(CLIENT_V4, VIRTUAL_V4, 40000, 53, b"query");
    packet.extend_from_slice(b"trailing garbage");
    let view = IpView::parse(&packet).unwrap();
    assert_eq!(view.version(), 4);
    assert_eq!(view.src(), IpAddr::V4(Ipv4Addr::from(CLIENT_V4)));
    assert_eq!(view.dst(), IpAddr::V4(Ipv4Addr::from(VIRTUAL_V4)));
    assert_eq!(
        view.bytes().len(),
        20 + 8 + 5,
        "trimmed to the total length"
    );
    assert_eq!(view.protocol(), Some(protocol::UDP));
    assert_eq!(view.transport_offset(), Some(20));
    assert!(!view.is_fragment());
    let Some(Transport::Udp(udp)) = view.transport() else {
        panic!("not UDP")
    };
    assert_eq!((udp.src_port(), udp.dst_port()), (40000, 53));
    assert_eq!(udp.payload(), b"query");
    assert_eq!(destination_port(&packet), Some((protocol::UDP, 53)));
}

#[test]
fn ipv6_udp_view() {
    let packet = udp(CLIENT_V6, VIRTUAL_V6, 40000, 53, b"query");
    let view = IpView::parse(&packet).unwrap();
    assert_eq!(view.version(), 6);
    assert_eq!(view.src(), IpAddr::V6(Ipv6Addr::from(CLIENT_V6)));
    assert_eq!(view.dst(), IpAddr::V6(Ipv6Addr::from(VIRTUAL_V6)));
    assert_eq!(view.transport_offset(), Some(40));
    let Some(Transport::Udp(udp)) = view.transport() else {
        panic!("not UDP")
    };
    assert_eq!(udp.payload(), b"query");
    assert_eq!(destination_port(&packet), Some((protocol::UDP, 53)));
}

#[test]
fn ipv4_options_move_the_transport() {
    // IHL 6: one 4-byte option (NOP x3 + EOL) before the UDP header.
    let plain = udp(CLIENT_V4, VIRTUAL_V4, 1, 2, b"x");
    let mut packet = plain[..20].to_vec();
    packet[0] = 0x46;
    packet.extend_from_slice(&[1, 1, 1, 0]);
    packet.extend_from_slice(&plain[20..]);
    let total = (packet.len() as u16).to_be_bytes();
    packet[2..4].copy_from_slice(&total);
    let view = IpView::parse(&packet).unwrap();
    assert_eq!(view.transport_offset(), Some(24));
    assert_eq!(destination_port(&packet), Some((protocol::UDP, 2)));
}

#[test]
fn udp_length_field_bounds_the_payload() {
    let mut packet = udp(CLIENT_V4, VIRTUAL_V4, 1, 53, b"abcdef");
    // UDP length 10: two payload bytes, the rest is IP padding.
    packet[24..26].copy_from_slice(&10u16.to_be_bytes());
    let view = IpView::parse(&packet).unwrap();
    let Some(Transport::Udp(udp)) = view.transport() else {
        panic!("not UDP")
    };
    assert_eq!(udp.payload(), b"ab");

    for bad_len in [0u16, 7, 15] {
        packet[24..26].copy_from_slice(&bad_len.to_be_bytes());
        let view = IpView::parse(&packet).unwrap();
        assert!(view.transport().is_none(), "UDP length {bad_len}");
        assert_eq!(destination_port(&packet), None);
    }
}

#[test]
fn tcp_view() {
    let packet = tcp_v4(1000, Some(77), false, true, b"hello");
    let view = IpView::parse(&packet).unwrap();
    let Some(Transport::Tcp(tcp)) = view.transport() else {
        panic!("not TCP")
    };
    assert_eq!((tcp.src_port(), tcp.dst_port()), (40000, 53));
    assert_eq!((tcp.seq(), tcp.ack()), (1000, 77));
    assert!(tcp.flags().contains(TcpFlags::ACK | TcpFlags::FIN));
    assert!(!tcp.flags().contains(TcpFlags::SYN));
    assert_eq!(tcp.header_len(), 20);
    assert_eq!(tcp.payload(), b"hello");
    assert_eq!(destination_port(&packet), Some((protocol::TCP, 53)));

    let mut bad_offset = packet.clone();
    bad_offset[20 + 12] = 4 << 4;
    assert!(IpView::parse(&bad_offset).unwrap().transport().is_none());
    bad_offset[20 + 12] = 15 << 4; // 60-byte header, longer than the segment
    assert!(IpView::parse(&bad_offset).unwrap().transport().is_none());
}

#[test]
fn icmp_views() {
    let v4 = echo_request_v4(0x1234, 7, b"ping");
    let Some(Transport::Icmpv4(icmp)) = IpView::parse(&v4).unwrap().transport() else {
        panic!("not ICMP")
    };
    assert_eq!((icmp.icmp_type(), icmp.code()), (8, 0));
    assert_eq!((icmp.echo_id(), icmp.echo_seq()), (0x1234, 7));
    assert_eq!(icmp.bytes().len(), 12);
    assert_eq!(destination_port(&v4), None, "ICMP has no port");

    let v6 = echo_request_v6(1, 2, b"ping");
    let Some(Transport::Icmpv6(icmp)) = IpView::parse(&v6).unwrap().transport() else {
        panic!("not ICMPv6")
    };
    assert_eq!(icmp.icmp_type(), 128);
}

#[test]
fn icmp_numbers_only_count_in_their_own_version() {
    // Protocol 58 over IPv4 and protocol 1 over IPv6 are not ICMP.
    let mut v4 = echo_request_v4(1, 1, b"");
    v4[9] = protocol::ICMPV6;
    assert!(IpView::parse(&v4).unwrap().transport().is_none());
    let mut v6 = echo_request_v6(1, 1, b"");
    v6[6] = protocol::ICMP;
    assert!(IpView::parse(&v6).unwrap().transport().is_none());
}

#[test]
fn parse_errors() {
    assert_eq!(IpView::parse(&[]), Err(PacketError::Truncated));
    assert_eq!(IpView::parse(&[0x50; 40]), Err(PacketError::BadVersion));
    let packet = udp(CLIENT_V4, VIRTUAL_V4, 1, 2, b"data");

    let mut short_ihl = packet.clone();
    short_ihl[0] = 0x44;
    assert_eq!(IpView::parse(&short_ihl), Err(PacketError::BadHeaderLength));

    let mut long_ihl = packet.clone();
    long_ihl[0] = 0x4f; // 60-byte header, longer than the 32-byte packet
    assert_eq!(IpView::parse(&long_ihl), Err(PacketError::BadTotalLength));

    let mut small_total = packet.clone();
    small_total[2..4].copy_from_slice(&19u16.to_be_bytes());
    assert_eq!(
        IpView::parse(&small_total),
        Err(PacketError::BadTotalLength)
    );

    let mut big_total = packet.clone();
    big_total[2..4].copy_from_slice(&(packet.len() as u16 + 1).to_be_bytes());
    assert_eq!(IpView::parse(&big_total), Err(PacketError::Truncated));

    let v6 = udp(CLIENT_V6, VIRTUAL_V6, 1, 2, b"data");
    assert_eq!(
        IpView::parse(&v6[..v6.len() - 1]),
        Err(PacketError::Truncated)
    );
    assert_eq!(IpView::parse(&v6[..39]), Err(PacketError::Truncated));
}

#[test]
fn ipv4_fragments_never_yield_ports() {
    let whole = udp(CLIENT_V4, VIRTUAL_V4, 40000, 53, &[0; 32]);
    for (more, offset, first) in [(true, 0, true), (true, 4, false), (false, 4, false)] {
        let mut packet = whole.clone();
        set_ipv4_fragment(&mut packet, more, offset);
        let view = IpView::parse(&packet).unwrap();
        assert!(view.is_fragment(), "MF {more} offset {offset}");
        assert_eq!(view.is_non_first_fragment(), !first);
        assert_eq!(view.protocol(), Some(protocol::UDP));
        assert_eq!(view.transport_offset(), first.then_some(20));
        assert!(view.transport().is_none());
        assert_eq!(destination_port(&packet), None);
        // etherparse agrees that this is a fragment.
        let sliced = SlicedPacket::from_ip(&packet).unwrap();
        assert!(sliced.transport.is_none());
    }
}

#[test]
fn ipv6_extension_chain_walk_matches_etherparse() {
    let udp = udp(CLIENT_V6, VIRTUAL_V6, 40000, 53, b"q");
    let udp_header_and_payload = &udp[40..];
    let chains: &[&[Ext]] = &[
        &[],
        &[Ext::HopByHop],
        &[Ext::HopByHop, Ext::DestinationOptions],
        &[Ext::HopByHop, Ext::Routing, Ext::DestinationOptions],
        &[Ext::HopByHop, Ext::Auth, Ext::DestinationOptions],
        &[
            Ext::HopByHop,
            Ext::DestinationOptions,
            Ext::Routing,
            Ext::Auth,
        ],
    ];
    for chain in chains {
        let packet = ipv6_with_extensions(chain, protocol::UDP, udp_header_and_payload);
        let view = IpView::parse(&packet).unwrap();
        let theirs = Ipv6Slice::from_slice(&packet).unwrap();
        assert_eq!(
            view.protocol(),
            Some(theirs.payload().ip_number.0),
            "{chain:?}"
        );
        let their_offset = packet.len() - theirs.payload().payload.len();
        assert_eq!(view.transport_offset(), Some(their_offset), "{chain:?}");
        assert!(!view.is_fragment());
        // The UDP checksum only covers the UDP part, so the port survives re-framing.
        assert_eq!(
            destination_port(&packet),
            Some((protocol::UDP, 53)),
            "{chain:?}"
        );
        let sliced = SlicedPacket::from_ip(&packet).unwrap();
        let Some(TransportSlice::Udp(their_udp)) = sliced.transport else {
            panic!("etherparse found no UDP for {chain:?}")
        };
        assert_eq!(their_udp.destination_port(), 53);
    }
}

#[test]
fn ipv6_fragments_never_yield_ports() {
    let udp = udp(CLIENT_V6, VIRTUAL_V6, 40000, 53, b"q");
    let udp_bytes = &udp[40..];
    let hbh_dst_frag = |offset_units, more| {
        [
            Ext::HopByHop,
            Ext::DestinationOptions,
            Ext::Fragment { offset_units, more },
        ]
    };
    // First fragment: the transport header is there, but still no port.
    let first = ipv6_with_extensions(&hbh_dst_frag(0, true), protocol::UDP, udp_bytes);
    let view = IpView::parse(&first).unwrap();
    assert!(view.is_fragment() && !view.is_non_first_fragment());
    assert_eq!(view.protocol(), Some(protocol::UDP));
    assert_eq!(view.transport_offset(), Some(40 + 16 + 16 + 8));
    assert!(view.transport().is_none());
    assert_eq!(destination_port(&first), None);
    let theirs = Ipv6Slice::from_slice(&first).unwrap();
    assert!(theirs.is_payload_fragmented());
    assert_eq!(theirs.payload().ip_number.0, protocol::UDP);

    // Atomic fragment (offset 0, M clear) is still a fragment.
    let atomic = ipv6_with_extensions(&hbh_dst_frag(0, false), protocol::UDP, udp_bytes);
    assert!(IpView::parse(&atomic).unwrap().is_fragment());
    assert_eq!(destination_port(&atomic), None);

    // Later fragment: protocol from the Fragment header, no transport offset.
    let later = ipv6_with_extensions(&hbh_dst_frag(3, false), protocol::UDP, udp_bytes);
    let view = IpView::parse(&later).unwrap();
    assert!(view.is_non_first_fragment());
    assert_eq!(view.protocol(), Some(protocol::UDP));
    assert_eq!(view.transport_offset(), None);
    assert_eq!(destination_port(&later), None);
}

#[test]
fn ipv6_chain_stops_at_esp_and_no_next_header() {
    for stop in [protocol::ESP, protocol::NO_NEXT_HEADER] {
        let packet = ipv6_with_extensions(&[Ext::HopByHop], stop, &[0; 16]);
        let view = IpView::parse(&packet).unwrap();
        assert_eq!(view.protocol(), Some(stop));
        assert_eq!(view.transport_offset(), Some(56));
        assert!(view.transport().is_none());
    }
}

#[test]
fn ipv6_chain_too_long_or_truncated_is_unknown() {
    let udp = udp(CLIENT_V6, VIRTUAL_V6, 1, 53, b"q");
    let eight = [Ext::DestinationOptions; 8];
    let packet = ipv6_with_extensions(&eight, protocol::UDP, &udp[40..]);
    assert_eq!(
        destination_port(&packet),
        Some((protocol::UDP, 53)),
        "8 is allowed"
    );
    let nine = [Ext::DestinationOptions; 9];
    let packet = ipv6_with_extensions(&nine, protocol::UDP, &udp[40..]);
    let view = IpView::parse(&packet).unwrap();
    assert_eq!((view.protocol(), view.transport_offset()), (None, None));

    // The Hop-by-Hop header claims 16 bytes, but the payload length stops at 8.
    let mut truncated = ipv6_with_extensions(&[Ext::HopByHop], protocol::UDP, &[]);
    truncated[4..6].copy_from_slice(&8u16.to_be_bytes());
    let view = IpView::parse(&truncated).unwrap();
    assert_eq!((view.protocol(), view.transport()), (None, None));
}

#[test]
fn every_truncation_is_rejected_or_bounded() {
    let packets = [
        udp(CLIENT_V4, VIRTUAL_V4, 1, 53, b"payload"),
        udp(CLIENT_V6, VIRTUAL_V6, 1, 53, b"payload"),
        tcp_v4(1, Some(2), false, false, b"data"),
        echo_request_v6(1, 2, b"data"),
        ipv6_with_extensions(
            &[
                Ext::HopByHop,
                Ext::DestinationOptions,
                Ext::Fragment {
                    offset_units: 0,
                    more: true,
                },
            ],
            protocol::UDP,
            &[0; 16],
        ),
    ];
    for packet in &packets {
        for len in 0..packet.len() {
            // The stated length exceeds every prefix.
            assert!(IpView::parse(&packet[..len]).is_err(), "len {len}");
            assert_eq!(destination_port(&packet[..len]), None);
        }
        // Shrinking the stated length instead keeps the parse valid and every view bounded.
        for stated in 0..packet.len() {
            let mut shrunk = packet.clone();
            if packet[0] >> 4 == 4 {
                shrunk[2..4].copy_from_slice(&(stated as u16).to_be_bytes());
            } else {
                let payload = stated.saturating_sub(40) as u16;
                shrunk[4..6].copy_from_slice(&payload.to_be_bytes());
            }
            if let Ok(view) = IpView::parse(&shrunk) {
                assert!(view.bytes().len() <= stated.max(40));
                let _ = (view.protocol(), view.transport(), destination_port(&shrunk));
            }
        }
    }
}

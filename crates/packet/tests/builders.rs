//! Every built packet is re-parsed, and its checksums verified, by etherparse.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::*;
use etherparse::{Icmpv4Type, Icmpv6Type, NetSlice, SlicedPacket, TransportSlice};
use tundns_packet::{
    BuildError, ICMPV4_ERROR_MAX_LEN, ICMPV6_ERROR_MAX_LEN, IPV4_UDP_HEADERS, IPV6_UDP_HEADERS,
    IpView, Refusal, build_echo_reply, build_port_unreachable, build_tcp_rst, build_udp,
    udp_headers_len, write_udp_headers,
};
use tundns_test_support::packet::udp;

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Asserts the IPv4 header fields every builder promises: IHL 5, TTL 64, DF, ID 0.
fn assert_ipv4_defaults(sliced: &SlicedPacket) {
    if let Some(NetSlice::Ipv4(ipv4)) = &sliced.net {
        let header = ipv4.header();
        assert_eq!(header.ihl(), 5);
        assert_eq!(header.ttl(), 64);
        assert!(header.dont_fragment() && !header.more_fragments());
        assert_eq!(header.identification(), 0);
    }
}

fn assert_ipv6_defaults(sliced: &SlicedPacket) {
    if let Some(NetSlice::Ipv6(ipv6)) = &sliced.net {
        let header = ipv6.header();
        assert_eq!(header.hop_limit(), 64);
        assert_eq!(header.flow_label().value(), 0);
        assert_eq!(header.traffic_class(), 0);
    }
}

#[test]
fn udp_header_lengths() {
    assert_eq!(udp_headers_len(&sock("1.2.3.4:5")), IPV4_UDP_HEADERS);
    assert_eq!(udp_headers_len(&sock("[::1]:5")), IPV6_UDP_HEADERS);
    assert_eq!((IPV4_UDP_HEADERS, IPV6_UDP_HEADERS), (28, 48));
}

#[test]
fn build_udp_round_trips_through_etherparse() {
    for (src, dst) in [
        ("10.30.30.30:53", "10.0.0.2:40000"),
        ("[fd30:30:30::30]:53", "[fd00::2]:40000"),
    ] {
        let (src, dst) = (sock(src), sock(dst));
        let payload = b"an answer of odd length";
        let mut buf = [0u8; 200];
        let len = build_udp(&mut buf, src, dst, payload).unwrap();
        assert_eq!(len, udp_headers_len(&dst) + payload.len());
        let sliced = assert_checksums_valid(&buf[..len]);
        assert_ipv4_defaults(&sliced);
        assert_ipv6_defaults(&sliced);
        let Some(TransportSlice::Udp(udp)) = sliced.transport else {
            panic!("not UDP")
        };
        assert_eq!((udp.source_port(), udp.destination_port()), (53, 40000));
        assert_eq!(udp.payload(), payload);
        let view = IpView::parse(&buf[..len]).unwrap();
        assert_eq!((view.src(), view.dst()), (src.ip(), dst.ip()));
    }
}

#[test]
fn write_udp_headers_wraps_a_payload_in_place() {
    let src = sock("10.30.30.30:53");
    let dst = sock("10.0.0.2:40000");
    let mut buf = [0xeeu8; 128];
    buf[IPV4_UDP_HEADERS..][..4].copy_from_slice(b"dns!");
    let len = write_udp_headers(&mut buf, src, dst, 4).unwrap();
    assert_eq!(len, 32);
    assert_eq!(buf[len], 0xee, "nothing written past the packet");
    let sliced = assert_checksums_valid(&buf[..len]);
    let Some(TransportSlice::Udp(udp)) = sliced.transport else {
        panic!("not UDP")
    };
    assert_eq!(udp.payload(), b"dns!");
}

#[test]
fn udp_checksum_zero_is_sent_as_all_ones() {
    // Find a payload whose checksum computes to 0; it must be stored as 0xffff.
    let src = sock("10.30.30.30:53");
    let dst = sock("10.0.0.2:40000");
    let mut buf = [0u8; 64];
    let found = (0..=u16::MAX).find_map(|word| {
        let len = build_udp(&mut buf, src, dst, &word.to_be_bytes()).unwrap();
        (buf[26..28] == [0xff, 0xff]).then_some(len)
    });
    let len = found.expect("some 2-byte payload sums to zero");
    assert_checksums_valid(&buf[..len]);
}

#[test]
fn udp_build_errors() {
    let v4 = sock("10.30.30.30:53");
    let v6 = sock("[fd30:30:30::30]:53");
    let mut buf = [0u8; 64];
    assert_eq!(
        build_udp(&mut buf, v4, v6, b""),
        Err(BuildError::AddressFamilyMismatch)
    );
    assert_eq!(
        build_udp(&mut buf, v4, v4, &[0; 37]),
        Err(BuildError::BufferTooSmall {
            needed: 65,
            available: 64
        })
    );
    assert!(build_udp(&mut buf, v4, v4, &[0; 36]).is_ok());
    assert_eq!(
        write_udp_headers(&mut buf, v4, v4, 65_508),
        Err(BuildError::PayloadTooLarge {
            len: 65_508,
            max: 65_507
        })
    );
    assert_eq!(
        write_udp_headers(&mut buf, v6, v6, 65_528),
        Err(BuildError::PayloadTooLarge {
            len: 65_528,
            max: 65_527
        })
    );
    let mut big = vec![0u8; 65_535];
    assert_eq!(write_udp_headers(&mut big, v4, v4, 65_507), Ok(65_535));
    assert_checksums_valid(&big);
}

#[test]
fn echo_reply_v4() {
    let request = echo_request_v4(0xbeef, 42, b"abcdefghijklmnopq");
    let view = IpView::parse(&request).unwrap();
    let mut buf = [0u8; 128];
    let len = build_echo_reply(&view, &mut buf).unwrap();
    assert_eq!(len, request.len());
    let sliced = assert_checksums_valid(&buf[..len]);
    assert_ipv4_defaults(&sliced);
    let Some(TransportSlice::Icmpv4(icmp)) = sliced.transport else {
        panic!("not ICMP")
    };
    let Icmpv4Type::EchoReply(echo) = icmp.icmp_type() else {
        panic!("not an echo reply: {:?}", icmp.icmp_type())
    };
    assert_eq!((echo.id, echo.seq), (0xbeef, 42));
    assert_eq!(icmp.payload(), b"abcdefghijklmnopq");
    let reply = IpView::parse(&buf[..len]).unwrap();
    assert_eq!((reply.src(), reply.dst()), (view.dst(), view.src()));
}

#[test]
fn echo_reply_v6_drops_extension_headers() {
    let plain = echo_request_v6(7, 9, b"data");
    let request = ipv6_with_extensions(
        &[Ext::HopByHop, Ext::DestinationOptions],
        tundns_packet::protocol::ICMPV6,
        &plain[40..],
    );
    let view = IpView::parse(&request).unwrap();
    let mut buf = [0u8; 128];
    let len = build_echo_reply(&view, &mut buf).unwrap();
    assert_eq!(len, plain.len());
    let sliced = assert_checksums_valid(&buf[..len]);
    assert_ipv6_defaults(&sliced);
    let Some(TransportSlice::Icmpv6(icmp)) = sliced.transport else {
        panic!("not ICMPv6")
    };
    let Icmpv6Type::EchoReply(echo) = icmp.icmp_type() else {
        panic!("not an echo reply: {:?}", icmp.icmp_type())
    };
    assert_eq!((echo.id, echo.seq), (7, 9));
    assert_eq!(icmp.payload(), b"data");
}

#[test]
fn echo_reply_refusals() {
    let mut buf = [0u8; 128];
    let udp = udp(CLIENT_V4, VIRTUAL_V4, 1, 2, b"");
    let view = IpView::parse(&udp).unwrap();
    assert_eq!(
        build_echo_reply(&view, &mut buf),
        Err(BuildError::NotEchoRequest)
    );

    let mut reply_type = echo_request_v4(1, 1, b"");
    reply_type[20] = 0;
    let view = IpView::parse(&reply_type).unwrap();
    assert_eq!(
        build_echo_reply(&view, &mut buf),
        Err(BuildError::NotEchoRequest)
    );

    let mut fragment = echo_request_v4(1, 1, &[0; 16]);
    set_ipv4_fragment(&mut fragment, true, 0);
    let view = IpView::parse(&fragment).unwrap();
    assert_eq!(
        build_echo_reply(&view, &mut buf),
        Err(BuildError::NotEchoRequest)
    );

    let mut to_broadcast = echo_request_v4(1, 1, b"");
    to_broadcast[16..20].copy_from_slice(&[255; 4]);
    let view = IpView::parse(&to_broadcast).unwrap();
    assert_eq!(
        build_echo_reply(&view, &mut buf),
        Err(BuildError::Refused(Refusal::NotUnicast))
    );

    let request = echo_request_v4(1, 1, b"0123456789");
    let view = IpView::parse(&request).unwrap();
    assert!(matches!(
        build_echo_reply(&view, &mut buf[..request.len() - 1]),
        Err(BuildError::BufferTooSmall { .. })
    ));
}

#[test]
fn port_unreachable_v4_quotes_the_original() {
    let original = udp(CLIENT_V4, VIRTUAL_V4, 40000, 99, b"hello");
    let view = IpView::parse(&original).unwrap();
    let mut buf = [0u8; 1500];
    let len = build_port_unreachable(&view, &mut buf).unwrap();
    assert_eq!(len, 28 + original.len());
    let sliced = assert_checksums_valid(&buf[..len]);
    assert_ipv4_defaults(&sliced);
    let Some(TransportSlice::Icmpv4(icmp)) = &sliced.transport else {
        panic!("not ICMP")
    };
    assert_eq!((icmp.type_u8(), icmp.code_u8()), (3, 3));
    assert_eq!(icmp.payload(), &original[..]);
    let reply = IpView::parse(&buf[..len]).unwrap();
    assert_eq!(reply.src(), IpAddr::from(VIRTUAL_V4));
    assert_eq!(reply.dst(), IpAddr::from(CLIENT_V4));
}

#[test]
fn port_unreachable_is_capped_at_the_minimum_mtu() {
    let mut buf = [0u8; 2000];
    let big_v4 = udp(CLIENT_V4, VIRTUAL_V4, 1, 2, &[0x11; 1400]);
    let view = IpView::parse(&big_v4).unwrap();
    let len = build_port_unreachable(&view, &mut buf).unwrap();
    assert_eq!(len, ICMPV4_ERROR_MAX_LEN);
    let sliced = assert_checksums_valid(&buf[..len]);
    let Some(TransportSlice::Icmpv4(icmp)) = sliced.transport else {
        panic!("not ICMP")
    };
    assert_eq!(icmp.payload(), &big_v4[..ICMPV4_ERROR_MAX_LEN - 28]);

    let mut buf6 = [0u8; 2000];
    let big_v6 = udp(CLIENT_V6, VIRTUAL_V6, 1, 2, &[0x22; 1400]);
    let view = IpView::parse(&big_v6).unwrap();
    let len = build_port_unreachable(&view, &mut buf6).unwrap();
    assert_eq!(len, ICMPV6_ERROR_MAX_LEN);
    let sliced = assert_checksums_valid(&buf6[..len]);
    assert_ipv6_defaults(&sliced);
    let Some(TransportSlice::Icmpv6(icmp)) = sliced.transport else {
        panic!("not ICMPv6")
    };
    assert_eq!((icmp.type_u8(), icmp.code_u8()), (1, 4));
    assert_eq!(icmp.payload(), &big_v6[..ICMPV6_ERROR_MAX_LEN - 48]);

    // The buffer must hold the whole capped reply.
    assert!(matches!(
        build_port_unreachable(&view, &mut [0u8; ICMPV6_ERROR_MAX_LEN - 1]),
        Err(BuildError::BufferTooSmall { .. })
    ));
}

#[test]
fn port_unreachable_for_first_fragment_with_extensions() {
    let udp = udp(CLIENT_V6, VIRTUAL_V6, 1, 2, &[0; 24]);
    let first = ipv6_with_extensions(
        &[
            Ext::HopByHop,
            Ext::DestinationOptions,
            Ext::Fragment {
                offset_units: 0,
                more: true,
            },
        ],
        tundns_packet::protocol::UDP,
        &udp[40..],
    );
    let view = IpView::parse(&first).unwrap();
    let mut buf = [0u8; 1500];
    let len = build_port_unreachable(&view, &mut buf).unwrap();
    assert_checksums_valid(&buf[..len]);
}

#[test]
fn port_unreachable_refusals() {
    let mut buf = [0u8; 1500];
    let refused = |packet: &[u8], buf: &mut [u8]| {
        let view = IpView::parse(packet).unwrap();
        match build_port_unreachable(&view, buf) {
            Err(BuildError::Refused(reason)) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    };

    // ICMP errors are never answered; an ICMP echo may be.
    let mut icmp_error = echo_request_v4(1, 1, &[0; 28]);
    icmp_error[20] = 3;
    assert_eq!(refused(&icmp_error, &mut buf), Refusal::IcmpError);
    let mut time_exceeded = echo_request_v4(1, 1, &[0; 28]);
    time_exceeded[20] = 11;
    assert_eq!(refused(&time_exceeded, &mut buf), Refusal::IcmpError);
    let echo = echo_request_v4(1, 1, &[0; 8]);
    assert!(build_port_unreachable(&IpView::parse(&echo).unwrap(), &mut buf).is_ok());

    let mut icmpv6_error = echo_request_v6(1, 1, &[0; 8]);
    icmpv6_error[40] = 1;
    assert_eq!(refused(&icmpv6_error, &mut buf), Refusal::IcmpError);
    let mut icmpv6_truncated = echo_request_v6(1, 1, &[]);
    icmpv6_truncated.truncate(40);
    icmpv6_truncated[4..6].fill(0);
    assert_eq!(refused(&icmpv6_truncated, &mut buf), Refusal::IcmpError);
    let echo6 = echo_request_v6(1, 1, &[0; 8]);
    assert!(build_port_unreachable(&IpView::parse(&echo6).unwrap(), &mut buf).is_ok());

    let mut later = udp(CLIENT_V4, VIRTUAL_V4, 1, 2, &[0; 16]);
    set_ipv4_fragment(&mut later, false, 2);
    assert_eq!(refused(&later, &mut buf), Refusal::NonFirstFragment);
    let later6 = ipv6_with_extensions(
        &[Ext::Fragment {
            offset_units: 2,
            more: false,
        }],
        tundns_packet::protocol::UDP,
        &[0; 16],
    );
    assert_eq!(refused(&later6, &mut buf), Refusal::NonFirstFragment);
    let mut first = udp(CLIENT_V4, VIRTUAL_V4, 1, 2, &[0; 16]);
    set_ipv4_fragment(&mut first, true, 0);
    assert!(build_port_unreachable(&IpView::parse(&first).unwrap(), &mut buf).is_ok());

    let not_single_hosts_v4 = [
        ([0, 0, 0, 0], VIRTUAL_V4),
        ([224, 0, 0, 1], VIRTUAL_V4),
        ([127, 0, 0, 1], VIRTUAL_V4),
        ([255, 255, 255, 255], VIRTUAL_V4),
        (CLIENT_V4, [255, 255, 255, 255]),
        (CLIENT_V4, [239, 1, 2, 3]),
        (CLIENT_V4, [0, 0, 0, 0]),
        (CLIENT_V4, [240, 0, 0, 1]),
    ];
    for (src, dst) in not_single_hosts_v4 {
        let packet = udp(src, dst, 1, 2, b"");
        assert_eq!(
            refused(&packet, &mut buf),
            Refusal::NotUnicast,
            "{src:?} -> {dst:?}"
        );
    }
    let multicast6 = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    for (src, dst) in [
        ([0; 16], VIRTUAL_V6),
        (multicast6, VIRTUAL_V6),
        (CLIENT_V6, multicast6),
    ] {
        let packet = udp(src, dst, 1, 2, b"");
        assert_eq!(refused(&packet, &mut buf), Refusal::NotUnicast);
    }

    let endless = ipv6_with_extensions(
        &[Ext::DestinationOptions; 9],
        tundns_packet::protocol::UDP,
        &[0; 8],
    );
    assert_eq!(refused(&endless, &mut buf), Refusal::UnknownUpperLayer);
}

/// Builds the RST for `original` and returns (seq, ack, RST, ACK flags, ports).
fn rst_fields(original: &[u8]) -> (u32, u32, bool, bool, u16, u16) {
    let view = IpView::parse(original).unwrap();
    let mut buf = [0u8; 128];
    let len = build_tcp_rst(&view, &mut buf).unwrap();
    let sliced = assert_checksums_valid(&buf[..len]);
    assert_ipv4_defaults(&sliced);
    assert_ipv6_defaults(&sliced);
    let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
        panic!("not TCP")
    };
    assert!(!tcp.syn() && !tcp.fin() && !tcp.psh());
    assert_eq!(tcp.window_size(), 0);
    assert!(tcp.payload().is_empty());
    let reply = IpView::parse(&buf[..len]).unwrap();
    assert_eq!((reply.src(), reply.dst()), (view.dst(), view.src()));
    (
        tcp.sequence_number(),
        tcp.acknowledgment_number(),
        tcp.rst(),
        tcp.ack(),
        tcp.source_port(),
        tcp.destination_port(),
    )
}

#[test]
fn rst_for_a_syn_acknowledges_it() {
    // <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>, SYN counting one.
    let syn = tcp_v4(1000, None, true, false, b"");
    assert_eq!(rst_fields(&syn), (0, 1001, true, true, 53, 40000));
    let syn6 = tcp_v6(u32::MAX, None, true, false, b"");
    assert_eq!(rst_fields(&syn6), (0, 0, true, true, 53, 40000), "wraps");
}

#[test]
fn rst_without_ack_counts_data_syn_and_fin() {
    let segment = tcp_v4(5000, None, true, true, b"twelve bytes");
    assert_eq!(rst_fields(&segment).1, 5000 + 12 + 2);
}

#[test]
fn rst_for_an_ack_takes_its_sequence() {
    // <SEQ=SEG.ACK><CTL=RST>
    let segment = tcp_v4(5000, Some(0xdead_beef), false, false, b"data");
    assert_eq!(
        rst_fields(&segment),
        (0xdead_beef, 0, true, false, 53, 40000)
    );
    let segment6 = tcp_v6(1, Some(77), true, false, b"");
    assert_eq!(rst_fields(&segment6), (77, 0, true, false, 53, 40000));
}

#[test]
fn rst_refusals() {
    let mut buf = [0u8; 128];
    let rst = tcp_rst_v4();
    let view = IpView::parse(&rst).unwrap();
    assert_eq!(
        build_tcp_rst(&view, &mut buf),
        Err(BuildError::Refused(Refusal::TcpReset))
    );
    let udp = udp(CLIENT_V4, VIRTUAL_V4, 1, 2, b"");
    assert_eq!(
        build_tcp_rst(&IpView::parse(&udp).unwrap(), &mut buf),
        Err(BuildError::NotTcp)
    );
    let mut fragment = tcp_v4(1, None, true, false, &[0; 16]);
    set_ipv4_fragment(&mut fragment, true, 0);
    assert_eq!(
        build_tcp_rst(&IpView::parse(&fragment).unwrap(), &mut buf),
        Err(BuildError::NotTcp)
    );
    let mut to_multicast = tcp_v4(1, None, true, false, b"");
    to_multicast[16] = 224;
    assert_eq!(
        build_tcp_rst(&IpView::parse(&to_multicast).unwrap(), &mut buf),
        Err(BuildError::Refused(Refusal::NotUnicast))
    );
    let syn = tcp_v4(1, None, true, false, b"");
    assert!(matches!(
        build_tcp_rst(&IpView::parse(&syn).unwrap(), &mut buf[..39]),
        Err(BuildError::BufferTooSmall {
            needed: 40,
            available: 39
        })
    ));
}

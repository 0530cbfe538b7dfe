//! Property tests: no input panics; built packets round-trip through etherparse.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use common::*;
use etherparse::TransportSlice;
use proptest::prelude::*;
use tundns_packet::{
    BuildError, IpView, Refusal, build_echo_reply, build_port_unreachable, build_tcp_rst,
    build_udp, checksum, destination_port, write_udp_headers,
};

type Builder = fn(&IpView, &mut [u8]) -> Result<usize, BuildError>;

/// Runs every parser and builder over `bytes`, with several output buffer sizes.
fn exercise(bytes: &[u8]) {
    let _ = destination_port(bytes);
    let Ok(view) = IpView::parse(bytes) else {
        return;
    };
    assert!(view.bytes().len() <= bytes.len());
    let _ = (view.src(), view.dst(), view.protocol(), view.is_fragment());
    if let Some(offset) = view.transport_offset() {
        assert!(offset <= view.bytes().len());
    }
    if let Some(transport) = view.transport() {
        assert!(!view.is_fragment());
        let _ = transport.destination_port();
    }
    let builders: [Builder; 3] = [build_echo_reply, build_port_unreachable, build_tcp_rst];
    for size in [0, 20, 40, 60, 1500] {
        for build in builders {
            let mut out = vec![0u8; size];
            if let Ok(len) = build(&view, &mut out) {
                assert!(len <= size);
                IpView::parse(&out[..len]).expect("built packets parse");
                assert_checksums_valid(&out[..len]);
            }
        }
    }
}

/// Bytes that start like an IPv4 or IPv6 header with a plausible length, so the
/// property reaches past the first checks.
fn ip_like() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(0x45u8), Just(0x46), Just(0x60)],
        prop::collection::vec(any::<u8>(), 0..200),
        prop::sample::select(vec![0u8, 1, 6, 17, 43, 44, 51, 58, 59, 60]),
    )
        .prop_map(|(first, mut rest, proto)| {
            rest.resize(rest.len().max(60), 0);
            rest.insert(0, first);
            let len = rest.len() as u16;
            if first >> 4 == 4 {
                rest[2..4].copy_from_slice(&len.to_be_bytes());
                rest[9] = proto;
            } else {
                rest[4..6].copy_from_slice(&(len - 40).to_be_bytes());
                rest[6] = proto;
            }
            rest
        })
}

fn addr_pair() -> impl Strategy<Value = (IpAddr, IpAddr)> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<[u8; 4]>())
            .prop_map(|(a, b)| (IpAddr::V4(Ipv4Addr::from(a)), IpAddr::V4(Ipv4Addr::from(b)))),
        (any::<[u8; 16]>(), any::<[u8; 16]>())
            .prop_map(|(a, b)| (IpAddr::V6(Ipv6Addr::from(a)), IpAddr::V6(Ipv6Addr::from(b)))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        exercise(&bytes);
    }

    #[test]
    fn ip_like_bytes_never_panic(bytes in ip_like()) {
        exercise(&bytes);
        for len in 0..bytes.len() {
            exercise(&bytes[..len]);
        }
    }

    #[test]
    fn arbitrary_builder_arguments_never_panic(
        (src, dst) in addr_pair(),
        mixed in any::<bool>(),
        ports in any::<(u16, u16)>(),
        payload_len in 0usize..70_000,
        buf_len in 0usize..2000,
    ) {
        let dst = if mixed { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { dst };
        let mut buf = vec![0u8; buf_len];
        let result = write_udp_headers(
            &mut buf,
            SocketAddr::new(src, ports.0),
            SocketAddr::new(dst, ports.1),
            payload_len,
        );
        if let Ok(len) = result {
            prop_assert!(len <= buf_len);
        }
    }

    #[test]
    fn build_udp_round_trips_through_etherparse(
        (src, dst) in addr_pair(),
        (sport, dport) in any::<(u16, u16)>(),
        payload in prop::collection::vec(any::<u8>(), 0..1400),
    ) {
        let (src, dst) = (SocketAddr::new(src, sport), SocketAddr::new(dst, dport));
        let mut buf = vec![0u8; 1500];
        let len = build_udp(&mut buf, src, dst, &payload).unwrap();
        let sliced = assert_checksums_valid(&buf[..len]);
        let Some(TransportSlice::Udp(udp)) = sliced.transport else {
            panic!("not UDP");
        };
        prop_assert_eq!((udp.source_port(), udp.destination_port()), (sport, dport));
        prop_assert_eq!(udp.payload(), &payload[..]);
        let view = IpView::parse(&buf[..len]).unwrap();
        prop_assert_eq!((view.src(), view.dst()), (src.ip(), dst.ip()));
        prop_assert_eq!(destination_port(&buf[..len]), Some((17, dport)));
        // Our own checksum agrees: a valid IPv4 header sums to zero.
        if src.is_ipv4() {
            prop_assert_eq!(checksum(&buf[..20]), 0);
        }
    }

    #[test]
    fn rst_sequence_arithmetic(
        seq in any::<u32>(),
        ack in prop::option::of(any::<u32>()),
        syn in any::<bool>(),
        fin in any::<bool>(),
        payload in prop::collection::vec(any::<u8>(), 0..100),
        v6 in any::<bool>(),
    ) {
        let original = if v6 {
            tcp_v6(seq, ack, syn, fin, &payload)
        } else {
            tcp_v4(seq, ack, syn, fin, &payload)
        };
        let view = IpView::parse(&original).unwrap();
        let mut buf = [0u8; 80];
        let len = build_tcp_rst(&view, &mut buf).unwrap();
        let sliced = assert_checksums_valid(&buf[..len]);
        let Some(TransportSlice::Tcp(rst)) = sliced.transport else {
            panic!("not TCP");
        };
        prop_assert!(rst.rst());
        match ack {
            Some(their_ack) => {
                prop_assert_eq!(rst.sequence_number(), their_ack);
                prop_assert!(!rst.ack());
            }
            None => {
                let seg_len = payload.len() as u64 + u64::from(syn) + u64::from(fin);
                let expected = ((u64::from(seq) + seg_len) % (1 << 32)) as u32;
                prop_assert_eq!(rst.sequence_number(), 0);
                prop_assert!(rst.ack());
                prop_assert_eq!(rst.acknowledgment_number(), expected);
            }
        }
    }

    #[test]
    fn a_rst_is_never_answered(seq in any::<u32>(), ack in prop::option::of(any::<u32>())) {
        let mut original = tcp_v4(seq, ack, false, false, b"");
        original[20 + 13] |= 0x04;
        let view = IpView::parse(&original).unwrap();
        prop_assert_eq!(
            build_tcp_rst(&view, &mut [0u8; 80]),
            Err(BuildError::Refused(Refusal::TcpReset))
        );
    }
}

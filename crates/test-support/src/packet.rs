//! IP packets built by etherparse: UDP datagrams, TCP segments and ICMP echo requests, over
//! IPv4 or IPv6 (the family of the addresses), always with TTL (hop limit) 64 and valid
//! checksums.

use std::net::IpAddr;

use etherparse::{IpHeaders, PacketBuilder, PacketBuilderStep};

/// The TTL (IPv4) or hop limit (IPv6) of every packet built here.
const HOP_LIMIT: u8 = 64;

/// A UDP datagram from `source`:`source_port` to `destination`:`destination_port`.
pub fn udp(
    source: impl Into<IpAddr>,
    destination: impl Into<IpAddr>,
    source_port: u16,
    destination_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    ip(source.into(), destination.into())
        .udp(source_port, destination_port)
        .write(&mut out, payload)
        .unwrap();
    out
}

/// The TCP header fields a test chooses: ports, numbers and flags.
#[derive(Clone, Copy, Debug)]
pub struct Tcp {
    pub source_port: u16,
    pub destination_port: u16,
    pub seq: u32,
    pub window: u16,
    /// Sets the ACK flag with this acknowledgment number.
    pub ack: Option<u32>,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
}

impl Tcp {
    /// A segment with no flags set.
    pub fn new(source_port: u16, destination_port: u16, seq: u32, window: u16) -> Tcp {
        Tcp {
            source_port,
            destination_port,
            seq,
            window,
            ack: None,
            syn: false,
            fin: false,
            rst: false,
            psh: false,
        }
    }
}

/// A TCP segment from `source` to `destination` with the header `segment` and `payload`.
pub fn tcp(
    source: impl Into<IpAddr>,
    destination: impl Into<IpAddr>,
    segment: &Tcp,
    payload: &[u8],
) -> Vec<u8> {
    let mut builder = ip(source.into(), destination.into()).tcp(
        segment.source_port,
        segment.destination_port,
        segment.seq,
        segment.window,
    );
    if let Some(ack) = segment.ack {
        builder = builder.ack(ack);
    }
    if segment.syn {
        builder = builder.syn();
    }
    if segment.fin {
        builder = builder.fin();
    }
    if segment.rst {
        builder = builder.rst();
    }
    if segment.psh {
        builder = builder.psh();
    }
    let mut out = Vec::new();
    builder.write(&mut out, payload).unwrap();
    out
}

/// An ICMP (IPv4) or ICMPv6 (IPv6) echo request with `id`, `seq` and `data`.
pub fn echo_request(
    source: impl Into<IpAddr>,
    destination: impl Into<IpAddr>,
    id: u16,
    seq: u16,
    data: &[u8],
) -> Vec<u8> {
    let (source, destination) = (source.into(), destination.into());
    let builder = ip(source, destination);
    let mut out = Vec::new();
    if source.is_ipv4() {
        builder
            .icmpv4_echo_request(id, seq)
            .write(&mut out, data)
            .unwrap();
    } else {
        builder
            .icmpv6_echo_request(id, seq)
            .write(&mut out, data)
            .unwrap();
    }
    out
}

fn ip(source: IpAddr, destination: IpAddr) -> PacketBuilderStep<IpHeaders> {
    match (source, destination) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), HOP_LIMIT),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), HOP_LIMIT),
        _ => panic!("{source} and {destination} are of different families"),
    }
}

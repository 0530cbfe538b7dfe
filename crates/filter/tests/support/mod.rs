//! What the filter's tests and benchmarks share: a service that does nothing, and UDP
//! packets built by an independent builder (etherparse).

use std::net::IpAddr;

use tundns_filter::{Service, TunWriter};

/// A service that drops what it gets.
pub struct Nothing;

impl Service for Nothing {
    fn handle(&self, _packet: &[u8], _tun: &TunWriter) {}
    fn name(&self) -> &str {
        "nothing"
    }
}

/// A UDP packet from `source` to `destination` (one family) with `payload_len` zero bytes.
pub fn udp_packet(source: IpAddr, destination: IpAddr, payload_len: usize) -> Vec<u8> {
    let builder = match (source, destination) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            etherparse::PacketBuilder::ipv4(s.octets(), d.octets(), 64)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            etherparse::PacketBuilder::ipv6(s.octets(), d.octets(), 64)
        }
        _ => unreachable!("same family"),
    };
    let mut out = Vec::new();
    builder
        .udp(40000, 443)
        .write(&mut out, &vec![0u8; payload_len])
        .unwrap();
    out
}

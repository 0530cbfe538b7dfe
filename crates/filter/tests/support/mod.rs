//! What the filter's tests and benchmarks share: a service that does nothing, and the UDP
//! packets they classify (built by the shared test-support builder, on etherparse).

use std::net::IpAddr;

use tundns_filter::{Service, TunWriter};
use tundns_test_support::packet::udp;

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
    udp(source, destination, 40000, 443, &vec![0u8; payload_len])
}

//! Any bytes as a packet read from the TUN: the filter classifies them, the views parse
//! them, and the replies a virtual IP sends (echo reply, port unreachable, RST) are built
//! from them. A reply that is built parses back as an IP packet.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tundns_filter::{RuleTable, Rules, Service, TunWriter};
use tundns_packet::{
    IpView, Transport, build_echo_reply, build_port_unreachable, build_tcp_rst, destination_port,
};

struct Nothing;

impl Service for Nothing {
    fn handle(&self, _packet: &[u8], _tun: &TunWriter) {}
    fn name(&self) -> &str {
        "nothing"
    }
}

/// The default virtual IPs, and one whose last byte is 0 (which IPv4 TCP's byte 39 often is).
fn rules() -> &'static RuleTable {
    static RULES: OnceLock<RuleTable> = OnceLock::new();
    RULES.get_or_init(|| {
        let rules = Rules::new();
        let addresses: [IpAddr; 3] = [
            Ipv4Addr::new(10, 30, 30, 30).into(),
            Ipv6Addr::new(0xfd30, 0x30, 0x30, 0, 0, 0, 0, 0x30).into(),
            Ipv4Addr::new(10, 30, 30, 0).into(),
        ];
        for address in addresses {
            rules.insert(address, Arc::new(Nothing));
        }
        rules.reader().load().clone()
    })
}

fuzz_target!(|bytes: &[u8]| {
    let rules = rules();
    let _ = rules.classify(bytes);
    let _ = rules.touches_virtual_ip(bytes);
    let _ = destination_port(bytes);
    let Ok(packet) = IpView::parse(bytes) else {
        return;
    };
    let _ = (
        packet.src(),
        packet.dst(),
        packet.protocol(),
        packet.is_fragment(),
    );
    if let Some(transport) = packet.transport() {
        let _ = transport.destination_port();
        match transport {
            Transport::Udp(udp) => {
                let _ = (udp.src_port(), udp.payload());
            }
            Transport::Tcp(tcp) => {
                let _ = (tcp.seq(), tcp.ack(), tcp.flags(), tcp.payload());
            }
            Transport::Icmpv4(icmp) | Transport::Icmpv6(icmp) => {
                let _ = (icmp.icmp_type(), icmp.echo_id(), icmp.echo_seq());
            }
        }
    }
    let mut reply = [0u8; 1500];
    for build in [build_echo_reply, build_port_unreachable, build_tcp_rst] {
        if let Ok(len) = build(&packet, &mut reply) {
            assert!(len <= reply.len());
            assert!(IpView::parse(&reply[..len]).is_ok(), "a reply parses back");
        }
    }
});

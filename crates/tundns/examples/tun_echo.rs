//! A benchmark baseline, not a service: the least any DNS server behind a TUN can do.
//!
//! ```sh
//! tun_echo techo 10.40.40.1/24 [--offload]    # then: dnsperf -s 10.40.40.40 ...
//! ```
//!
//! It reads every packet from a TUN in a blocking loop and sends each IPv4 UDP datagram back
//! with addresses and ports swapped and the DNS QR bit set: a one-read, one-write answer with
//! no lookup, no checksum and no runtime. `bench/dns-qps.sh` runs it beside tundns so that the
//! TUN's own ceiling is measured in the same run as tundns and unbound.
//!
//! With `--offload` the TUN is opened as tundns opens its own (`IFF_VNET_HDR`, TSO and
//! checksum offload): every read and write then carries a virtio-net header, and the kernel
//! hands over queries whose checksum it left to the reader. The echo still answers with one
//! read and one write, behind a zeroed header: the floor for a server behind a TUN framed
//! the way the tunnel's offloads need.

use std::net::Ipv4Addr;
use std::ops::Range;
use std::process::ExitCode;

use tun_rs::VIRTIO_NET_HDR_LEN;
use tundns_packet::{ipv4, protocol, udp};

const DNS_FLAGS: usize = 2;
const DNS_QR: u8 = 0x80;

/// Turns an IPv4 UDP datagram carrying a DNS query into its echo; false for anything else.
fn reflect(packet: &mut [u8]) -> bool {
    let Some(&first) = packet.first() else {
        return false;
    };
    let header = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || packet.len() < header + udp::HEADER_LEN + DNS_FLAGS + 1 {
        return false;
    }
    if packet[ipv4::field::PROTOCOL] != protocol::UDP {
        return false;
    }
    swap_fields(packet, ipv4::field::SRC_ADDR, ipv4::field::DST_ADDR);
    let datagram = &mut packet[header..];
    swap_fields(datagram, udp::field::SRC_PORT, udp::field::DST_PORT);
    // A zero UDP checksum means "none" over IPv4, so the changed flags need no new sum;
    // swapping addresses leaves the IP header checksum as it was.
    datagram[udp::field::CHECKSUM].fill(0);
    datagram[udp::HEADER_LEN + DNS_FLAGS] |= DNS_QR;
    true
}

/// Swaps two fields of the same length in place.
fn swap_fields(bytes: &mut [u8], one: Range<usize>, other: Range<usize>) {
    for (a, b) in one.zip(other) {
        bytes.swap(a, b);
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(name), Some(network)) = (args.next(), args.next()) else {
        eprintln!("usage: tun_echo <interface> <ipv4-address>/<prefix> [--offload]");
        return ExitCode::from(2);
    };
    let offload = match args.next().as_deref() {
        None => false,
        Some("--offload") => true,
        Some(other) => {
            eprintln!("tun_echo: unknown option {other:?}");
            return ExitCode::from(2);
        }
    };
    let Some((address, prefix)) = network
        .split_once('/')
        .and_then(|(ip, len)| Some((ip.parse::<Ipv4Addr>().ok()?, len.parse::<u8>().ok()?)))
    else {
        eprintln!("tun_echo: {network:?} is not an IPv4 address/prefix");
        return ExitCode::from(2);
    };
    let device = match tun_rs::DeviceBuilder::new()
        .name(name)
        .ipv4(address, prefix, None)
        .offload(offload)
        .build_sync()
    {
        Ok(device) => device,
        Err(error) => {
            eprintln!("tun_echo: creating the TUN: {error}");
            return ExitCode::FAILURE;
        }
    };
    if offload && !device.tcp_gso() {
        eprintln!("tun_echo: the kernel refused the TUN's offloads");
        return ExitCode::FAILURE;
    }
    // The virtio-net header in front of each packet read and written, if any.
    let header = if offload { VIRTIO_NET_HDR_LEN } else { 0 };
    let mut frame = vec![0; header + 65536];
    loop {
        let len = match device.recv(&mut frame) {
            Ok(len) => len,
            Err(error) => {
                eprintln!("tun_echo: reading the TUN: {error}");
                return ExitCode::FAILURE;
            }
        };
        // A query is never a GSO super-packet; the echo's zeroed header asks the kernel for
        // nothing, and its zero UDP checksum needs no completing.
        if len > header && reflect(&mut frame[header..len]) {
            frame[..header].fill(0);
            // A full queue drops the echo as a NIC would; the client counts it lost.
            let _ = device.send(&frame[..len]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_comes_back_as_a_response_to_its_sender() {
        let query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01";
        let mut packet = Vec::new();
        etherparse::PacketBuilder::ipv4([10, 0, 0, 2], [10, 40, 40, 40], 64)
            .udp(5000, 53)
            .write(&mut packet, query)
            .unwrap();
        assert!(reflect(&mut packet));
        let parsed = etherparse::SlicedPacket::from_ip(&packet).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = parsed.net else {
            panic!("not IPv4");
        };
        assert_eq!(ip.header().source(), [10, 40, 40, 40]);
        assert_eq!(ip.header().destination(), [10, 0, 0, 2]);
        assert!(ip.header().to_header().calc_header_checksum() == ip.header().header_checksum());
        let Some(etherparse::TransportSlice::Udp(udp)) = parsed.transport else {
            panic!("not UDP");
        };
        assert_eq!((udp.source_port(), udp.destination_port()), (53, 5000));
        assert_eq!(udp.payload()[2] & DNS_QR, DNS_QR);
        let mut too_short = packet[..20].to_vec();
        assert!(!reflect(&mut too_short));
    }
}

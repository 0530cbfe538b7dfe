//! The offload paths against a per-packet reference, through a real TUN and the kernel.
//!
//! A TUN opened with offloads lives in a network namespace made for the test, which
//! forwards everything it receives from the TUN back out of it. Each case writes a batch of
//! packets (some TCP and UDP flows, in order or not, of varied sizes, over IPv4 and IPv6)
//! through [`FilteredTunSender`], which coalesces each flow's packets into super-packets; the
//! kernel forwards those as super-packets, and [`FilteredTun`] reads them back and splits
//! them. Every flow must come back exactly as it went, packet by packet, with only the TTL
//! (hop limit) one lower (a TCP flow possibly in sequence order: see below); and a flow to
//! a virtual IP must reach its service as whole segments, never through WireGuard. A packet
//! with a wrong checksum is never coalesced: it comes back bit for bit, bad checksum and
//! all, for the host's stack to drop as it drops any such packet.
//!
//! Needs root; skipped without it unless `TUNDNS_E2E=1`, which makes it a failure.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use gotatun::packet::{Ip, Packet, PacketBufPool};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use tundns_filter::{FilterStats, FilteredTun, FilteredTunSender, Rules, Service, TunWriter};
use tundns_test_support::packet::{Tcp, tcp, udp};

const MTU: u16 = 1420;
const TUN_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const TUN_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
/// The far side of every flow: a network routed into the TUN.
const REMOTE_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 7);
const REMOTE_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 2, 0, 0, 0, 0, 0, 7);
/// The near side: another network routed into the TUN, so the kernel forwards back to it.
const LOCAL_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 9);
const LOCAL_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 9);
/// A virtual IP inside the near network.
const VIRTUAL_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 30);

/// One flow of a case: what goes into the TUN, packet by packet.
#[derive(Debug, Clone)]
struct Flow {
    v6: bool,
    udp: bool,
    to_virtual_ip: bool,
    port: u16,
    /// Payload length of each packet; TCP sequence numbers follow them.
    sizes: Vec<usize>,
    /// Packets sent out of order: each listed index swaps with the one after it.
    swaps: Vec<usize>,
    /// Indexes of packets sent with PSH, which ends a coalesced run.
    pushes: Vec<usize>,
    /// Indexes of packets sent with a wrong transport checksum: never coalesced, so they
    /// come back with it, for the host's stack to drop as it drops any such packet.
    corrupt: Vec<usize>,
}

impl Flow {
    fn packets(&self) -> Vec<Vec<u8>> {
        let (source, destination): (IpAddr, IpAddr) = match (self.v6, self.to_virtual_ip) {
            (_, true) => (REMOTE_V4.into(), VIRTUAL_V4.into()),
            (false, false) => (REMOTE_V4.into(), LOCAL_V4.into()),
            (true, false) => (REMOTE_V6.into(), LOCAL_V6.into()),
        };
        let mut seq = 1_000_000u32;
        let mut packets: Vec<Vec<u8>> = self
            .sizes
            .iter()
            .enumerate()
            .map(|(index, &size)| {
                let payload: Vec<u8> = (0..size).map(|byte| (byte + index) as u8).collect();
                let mut packet = if self.udp {
                    udp(source, destination, 4000, self.port, &payload)
                } else {
                    let mut segment = Tcp::new(4000, self.port, seq, 512);
                    segment.ack = Some(77);
                    segment.psh = self.pushes.contains(&index);
                    tcp(source, destination, &segment, &payload)
                };
                seq = seq.wrapping_add(size as u32);
                if self.corrupt.contains(&index) {
                    corrupt_checksum(&mut packet);
                }
                packet
            })
            .collect();
        for &swap in &self.swaps {
            if swap + 1 < packets.len() {
                packets.swap(swap, swap + 1);
            }
        }
        packets
    }
}

/// A packet as the comparison sees it: without its IPv4 identification, and without a
/// TCP PSH flag.
///
/// tun-rs, prepending a segment to a coalesced run that ends in a PSH segment, writes the
/// run with the prepended segment's flags, so the PSH is lost (see the issue-11 note). PSH
/// is a hint that Linux's receiver does not act on, so the comparison leaves it out; the
/// checksum is adjusted for the flag, so a wrong checksum stays wrong.
fn comparable(packet: Vec<u8>) -> Vec<u8> {
    without_tcp_push(without_ipv4_id(packet))
}

const TCP: u8 = 6;
const TCP_PSH: u8 = 0x08;

fn without_tcp_push(mut packet: Vec<u8>) -> Vec<u8> {
    let (_, protocol, _) = flow_key(&packet);
    let transport = transport_offset(&packet);
    if protocol != TCP || packet[transport + 13] & TCP_PSH == 0 {
        return packet;
    }
    let word = |packet: &[u8], at: usize| u16::from_be_bytes([packet[at], packet[at + 1]]);
    let (flags_at, checksum_at) = (transport + 12, transport + 16);
    let old_flags = word(&packet, flags_at);
    packet[transport + 13] &= !TCP_PSH;
    // RFC 1624's incremental update: HC' = ~(~HC + ~m + m').
    let sum = u32::from(!word(&packet, checksum_at))
        + u32::from(!old_flags)
        + u32::from(word(&packet, flags_at));
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    packet[checksum_at..checksum_at + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    packet
}

fn transport_offset(packet: &[u8]) -> usize {
    if packet[0] >> 4 == 4 {
        usize::from(packet[0] & 0x0f) * 4
    } else {
        40
    }
}

/// The packets with a payload, and those without, each in their order.
fn split_empty(packets: Vec<Vec<u8>>) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    packets
        .into_iter()
        .partition(|packet| payload_len(packet) > 0)
}

fn payload_len(packet: &[u8]) -> usize {
    let (_, protocol, _) = flow_key(packet);
    let transport = transport_offset(packet);
    let header = if protocol == TCP {
        usize::from(packet[transport + 12] >> 4) * 4
    } else {
        8
    };
    packet.len() - transport - header
}

/// A packet with its IPv4 identification zeroed. Segmentation numbers the segments up from
/// the super-packet's own, as the kernel's GSO does; with DF set, as on every packet here,
/// the field means nothing, so it is left out of the comparison.
fn without_ipv4_id(mut packet: Vec<u8>) -> Vec<u8> {
    if packet[0] >> 4 == 4 {
        packet[4..6].fill(0);
        fix_ipv4_checksum(&mut packet);
    }
    packet
}

fn fix_ipv4_checksum(packet: &mut [u8]) {
    packet[10..12].fill(0);
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    let checksum = tundns_packet::checksum(&packet[..header_len]);
    packet[10..12].copy_from_slice(&checksum.to_be_bytes());
}

/// Flips a bit of the TCP or UDP checksum.
fn corrupt_checksum(packet: &mut [u8]) {
    let (protocol, transport) = if packet[0] >> 4 == 4 {
        (packet[9], usize::from(packet[0] & 0x0f) * 4)
    } else {
        (packet[6], 40)
    };
    let checksum_at = transport + if protocol == 6 { 16 } else { 6 };
    packet[checksum_at] ^= 0x10;
}

/// What the kernel's forwarding does to a packet: one hop less.
fn forwarded(mut packet: Vec<u8>) -> Vec<u8> {
    if packet[0] >> 4 == 4 {
        packet[8] -= 1;
        fix_ipv4_checksum(&mut packet);
    } else {
        packet[7] -= 1;
    }
    packet
}

/// The flow a packet belongs to: its family, protocol and destination port.
fn flow_key(packet: &[u8]) -> (u8, u8, u16) {
    let (protocol, transport) = if packet[0] >> 4 == 4 {
        (packet[9], usize::from(packet[0] & 0x0f) * 4)
    } else {
        (packet[6], 40)
    };
    let port = u16::from_be_bytes([packet[transport + 2], packet[transport + 3]]);
    (packet[0] >> 4, protocol, port)
}

fn flow() -> impl Strategy<Value = Flow> {
    let mss = 1360usize;
    (
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.2),
        prop::collection::vec(prop_oneof![4 => Just(mss), 1 => 0..mss + 1], 1..48),
        prop::collection::vec(0usize..48, 0..3),
        prop::collection::vec(0usize..48, 0..3),
        prop::collection::vec(0usize..48, 0..2),
    )
        .prop_map(
            |(v6, udp, to_virtual_ip, sizes, swaps, pushes, corrupt)| Flow {
                v6: v6 && !to_virtual_ip,
                udp,
                to_virtual_ip,
                port: 0,
                sizes,
                swaps,
                pushes,
                corrupt,
            },
        )
}

/// Collects what the filter diverts to the virtual IP.
struct Collector(Mutex<Vec<Vec<u8>>>);

impl Service for Collector {
    fn handle(&self, packet: &[u8], _tun: &TunWriter) {
        self.0.lock().unwrap().push(packet.to_vec());
    }

    fn name(&self) -> &str {
        "collector"
    }
}

/// A network namespace for the test, deleted on drop.
struct Namespace(String);

impl Namespace {
    fn new(framing: Framing) -> Self {
        let name = format!("tdoff{}{framing:?}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        Self(name)
    }

    /// Moves the calling thread into the namespace: sockets and TUNs it creates live there.
    fn enter(&self) {
        let file = File::open(format!("/var/run/netns/{}", self.0)).unwrap();
        // SAFETY: setns on a valid namespace descriptor changes only this thread's namespace.
        let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(result, 0, "setns: {}", std::io::Error::last_os_error());
    }

    fn run(&self, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(args);
        run(&full);
    }

    /// A file as seen from inside the namespace (its own /sys).
    fn read(&self, path: &str) -> String {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.0, "cat", path])
            .output()
            .unwrap();
        assert!(output.status.success(), "cat {path} failed");
        String::from_utf8(output.stdout).unwrap()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn run(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(status.success(), "{args:?} failed");
}

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && std::env::var("TUNDNS_E2E").as_deref() == Ok("1") {
        panic!("TUNDNS_E2E=1 but this test needs root");
    }
    if !root {
        eprintln!("skipped: needs root (set TUNDNS_E2E=1 to make this a failure)");
    }
    root
}

#[test]
fn flows_come_back_from_the_kernel_as_they_went() {
    if can_run() {
        round_trip(Framing::Offloads);
    }
}

/// The same flows through a TUN without offloads, as on a kernel that refuses them: every
/// packet is read and written on its own, and comes back all the same.
#[test]
fn flows_come_back_from_a_tun_without_offloads() {
    if can_run() {
        round_trip(Framing::Plain);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Offloads,
    Plain,
}

fn round_trip(framing: Framing) {
    let namespace = Namespace::new(framing);
    namespace.enter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let device = Arc::new(
        tun_rs::DeviceBuilder::new()
            .name("tdoff0")
            .mtu(MTU)
            .offload(framing == Framing::Offloads)
            .build_sync()
            .unwrap(),
    );
    assert_eq!(
        device.tcp_gso(),
        framing == Framing::Offloads,
        "the TUN's offloads"
    );
    let udp_offload = device.udp_gso();
    let tun = "tdoff0";
    for args in [
        &["ip", "link", "set", tun, "up"][..],
        &["ip", "addr", "add", &format!("{TUN_V4}/24"), "dev", tun],
        &[
            "ip",
            "addr",
            "add",
            &format!("{TUN_V6}/64"),
            "dev",
            tun,
            "nodad",
        ],
        &["ip", "route", "add", "10.77.1.0/24", "dev", tun],
        &["ip", "route", "add", "10.77.2.0/24", "dev", tun],
        &["ip", "route", "add", "fd77:1::/64", "dev", tun],
        &["ip", "route", "add", "fd77:2::/64", "dev", tun],
        &["sysctl", "-qw", "net.ipv4.ip_forward=1"],
        &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
        &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"],
        &["sysctl", "-qw", &format!("net.ipv4.conf.{tun}.rp_filter=0")],
        &["sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0"],
        &[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{tun}.send_redirects=0"),
        ],
    ] {
        namespace.run(args);
    }

    let reading_rules = Rules::new();
    let collector = Arc::new(Collector(Mutex::new(Vec::new())));
    reading_rules.insert(VIRTUAL_V4.into(), collector.clone());
    let stats = Arc::new(FilterStats::default());
    // The writer is given no rules, so that the virtual IP's flow reaches the kernel.
    let sender = RefCell::new(FilteredTunSender::new(
        device.clone(),
        &Rules::new(),
        stats.clone(),
    ));
    let reader = FilteredTun::new(
        device.clone(),
        &reading_rules,
        MtuWatcher::new(MTU),
        stats.clone(),
    )
    .unwrap();
    // As gotatun does: the task that reads runs on the reader's own runtime, where `recv`
    // blocks in `read`, and is interrupted before it is stopped.
    let reader_runtime = reader.runtime().unwrap();
    let interrupter = reader.interrupter().unwrap();
    let (read_packets, packets_read) = std::sync::mpsc::channel::<Vec<u8>>();
    let reading = reader_runtime.spawn(read_into(reader, read_packets));

    let mut runner = TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    let strategy = prop::collection::vec(flow(), 1..5);
    let written = Cell::new(0u64);
    runner
        .run(&strategy, |mut flows| {
            for (index, flow) in flows.iter_mut().enumerate() {
                flow.port = 5000 + index as u16;
            }
            let sent: Vec<Vec<Vec<u8>>> = flows.iter().map(Flow::packets).collect();
            // Round-robin across flows, as packets of several connections arrive mixed.
            let mut batch: Vec<Packet<Ip>> = Vec::new();
            let longest = sent.iter().map(Vec::len).max().unwrap_or(0);
            let mut total = 0;
            for round in 0..longest {
                for packets in &sent {
                    if let Some(packet) = packets.get(round) {
                        total += 1;
                        batch.push(ip_packet(packet));
                    }
                }
            }
            collector.0.lock().unwrap().clear();
            written.set(written.get() + total as u64);
            let mut sender = sender.borrow_mut();
            runtime.block_on(sender.send_many(&mut batch)).unwrap();
            let mut received: Vec<Vec<u8>> = Vec::new();
            while received.len() + collector.0.lock().unwrap().len() < total {
                let Ok(packet) = packets_read.recv_timeout(Duration::from_secs(2)) else {
                    break;
                };
                // The kernel's own packets (ICMPv6 redirects, router solicitations) are no
                // flow's.
                if is_tcp_or_udp(&packet) {
                    received.push(packet);
                }
            }
            let diverted = collector.0.lock().unwrap().clone();

            // Each flow's packets, and whether they came through the service or the filter
            // passed them on towards WireGuard.
            let mut by_flow: HashMap<(u8, u8, u16, bool), Vec<Vec<u8>>> = HashMap::new();
            let came_through = |packets: Vec<Vec<u8>>, service| {
                packets.into_iter().map(move |packet| (packet, service))
            };
            for (packet, service) in
                came_through(received, false).chain(came_through(diverted, true))
            {
                let (version, protocol, port) = flow_key(&packet);
                by_flow
                    .entry((version, protocol, port, service))
                    .or_default()
                    .push(packet);
            }
            for (flow, packets) in flows.iter().zip(&sent) {
                let (version, protocol, port) = flow_key(&packets[0]);
                let key = (version, protocol, port, flow.to_virtual_ip);
                let expected: Vec<Vec<u8>> = packets
                    .iter()
                    .cloned()
                    .map(|packet| comparable(forwarded(packet)))
                    .collect();
                let got: Vec<Vec<u8>> = by_flow
                    .remove(&key)
                    .unwrap_or_default()
                    .into_iter()
                    .map(comparable)
                    .collect();
                // Where tun-rs falls short (see the issue-11 note): a packet it does not
                // coalesce with its flow's current run (an empty one; a segment shorter than
                // the run's, or out of sequence) is written where it stands in the batch,
                // while later packets of its flow may still join a run written before it. So a
                // TCP flow, which its receiver reorders, must come back whole but may come
                // back in another order; a UDP flow keeps its order except for its empty
                // datagrams, which must all come back.
                let (mut got, mut expected) = (got, expected);
                if flow.udp {
                    let (data, mut empty) = split_empty(got);
                    let (expected_data, mut expected_empty) = split_empty(expected);
                    empty.sort();
                    expected_empty.sort();
                    prop_assert!(empty == expected_empty, "empty datagrams of {:?}", flow);
                    (got, expected) = (data, expected_data);
                } else {
                    got.sort();
                    expected.sort();
                }
                prop_assert_eq!(got.len(), expected.len(), "packets of {:?}", flow);
                for (index, (got, expected)) in got.iter().zip(&expected).enumerate() {
                    prop_assert!(
                        got == expected,
                        "packet {} of {:?} differs:\n got {:02x?}\nwant {:02x?}",
                        index,
                        flow,
                        got,
                        expected
                    );
                }
            }
            prop_assert!(
                by_flow.is_empty(),
                "packets of no flow: {:?}",
                by_flow.keys()
            );
            Ok(())
        })
        .unwrap();
    // Each super-packet is one packet to the kernel: fewer than were written means the
    // writes were coalesced.
    let kernel_received = namespace.read(&format!("/sys/class/net/{tun}/statistics/rx_packets"));
    let kernel_received: u64 = kernel_received.trim().parse().unwrap();
    let written = written.get();
    eprintln!(
        "{written} packets written as {kernel_received} (UDP offload on this kernel: {udp_offload})"
    );
    match framing {
        Framing::Offloads => assert!(
            kernel_received < written,
            "nothing was coalesced: {written} packets written as {kernel_received}"
        ),
        Framing::Plain => assert_eq!(kernel_received, written, "packets written one by one"),
    }

    // The reading task blocks in `read` on a device that is now quiet; interrupting it and
    // aborting it, as gotatun stops it, must end it at once, and with it the reader's
    // thread, which releases the device.
    let stopping = std::time::Instant::now();
    interrupter.interrupt();
    reading.abort();
    drop(sender);
    while Arc::strong_count(&device) > 1 && stopping.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let stopped_in = stopping.elapsed();
    assert_eq!(
        Arc::strong_count(&device),
        1,
        "the reader still holds the device after {stopped_in:?}"
    );
    assert!(
        stopped_in < Duration::from_millis(500),
        "the reader took {stopped_in:?} to stop"
    );
}

/// Reads `reader` for ever, sending each packet for WireGuard to `packets`.
async fn read_into(mut reader: FilteredTun, packets: std::sync::mpsc::Sender<Vec<u8>>) {
    let mut pool = PacketBufPool::new(16);
    loop {
        for packet in reader.recv(&mut pool).await.unwrap() {
            let _ = packets.send(packet.into_bytes().to_vec());
        }
    }
}

fn is_tcp_or_udp(packet: &[u8]) -> bool {
    let (_, protocol, _) = flow_key(packet);
    protocol == 6 || protocol == 17
}

fn ip_packet(bytes: &[u8]) -> Packet<Ip> {
    Packet::from_bytes(BytesMut::from(bytes))
        .try_into_ip()
        .unwrap()
}

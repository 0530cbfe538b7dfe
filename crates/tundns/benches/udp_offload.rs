//! The cost of sending one batch of encrypted WireGuard packets: segmented (UDP_SEGMENT)
//! against gotatun's sendmmsg. The packets go to a documentation address behind one end of a
//! veth pair in a network namespace the benchmark created; the other end drops them (they
//! are for another host's MAC). What is measured is the sender's system call, the kernel's
//! UDP/IP stack and the veth. Needs root.

use std::hint::black_box;
use std::net::SocketAddr;

use bytes::BytesMut;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use gotatun::packet::Packet;
use gotatun::udp::socket::UdpSocketFactory;
use gotatun::udp::{UdpSend, UdpTransportFactory, UdpTransportFactoryParams};
use tokio::runtime::Runtime;
use tundns::udp_offload::GsoUdpFactory;

#[path = "../tests/netns/mod.rs"]
mod netns;

/// A full WireGuard data packet: a 1420-byte inner packet and 32 bytes of header and tag.
const PACKET_LEN: usize = 1452;

/// Per family: the sender's address, the peer's address, and its port.
const DESTINATIONS: [(&str, &str, &str, &str); 2] = [
    ("v4", "192.0.2.1/24", "192.0.2.2", "192.0.2.2:51820"),
    ("v6", "2001:db8::1/64", "2001:db8::2", "[2001:db8::2]:51820"),
];
const PEER_MAC: &str = "02:00:00:00:00:02";

const PARAMS: UdpTransportFactoryParams = UdpTransportFactoryParams {
    addr: None,
    port: 0,
    fwmark: None,
};

fn send_batch(c: &mut Criterion) {
    let Some(namespace) = netns::Namespace::create_or_skip("bench") else {
        return;
    };
    namespace.ip(&["link", "add", "wg0", "type", "veth", "peer", "name", "wire"]);
    namespace.ip(&["link", "set", "wire", "up"]);
    namespace.ip(&["link", "set", "wg0", "up"]);
    for (_, address, peer, _) in DESTINATIONS {
        namespace.ip(&["address", "add", address, "dev", "wg0", "nodad"]);
        let neighbour = ["neigh", "add", peer, "lladdr", PEER_MAC, "dev", "wg0"];
        namespace.ip(&[&neighbour[..], &["nud", "permanent"]].concat());
    }
    // Criterion runs on this thread alone; the process ends after it.
    namespace.enter();
    let runtime = netns::runtime();
    let segmented = runtime
        .block_on(GsoUdpFactory::default().bind(&PARAMS))
        .expect("bind the segmenting socket")
        .0;
    let sendmmsg = runtime
        .block_on(UdpSocketFactory::default().bind(&PARAMS))
        .expect("bind gotatun's socket")
        .0;
    let batch_len = sendmmsg.max_number_of_packets_to_send();
    let payload = [0x5a; PACKET_LEN];

    let mut group = c.benchmark_group("udp_send_batch");
    group.throughput(Throughput::Elements(batch_len as u64));
    for (family, _, _, destination) in DESTINATIONS {
        let destination: SocketAddr = destination.parse().unwrap();
        let batch = || {
            (0..batch_len)
                .map(|_| {
                    (
                        Packet::from_bytes(BytesMut::from(&payload[..])),
                        destination,
                    )
                })
                .collect::<Vec<_>>()
        };
        bench_sender(
            &mut group,
            &runtime,
            &format!("segmented/{family}"),
            &segmented,
            &batch,
        );
        bench_sender(
            &mut group,
            &runtime,
            &format!("sendmmsg/{family}"),
            &sendmmsg,
            &batch,
        );
    }
    group.finish();
    assert!(segmented.segments(), "the batches went out segmented");
}

/// Times `sender` sending one `batch()` per iteration (building it included, as for every
/// sender).
fn bench_sender(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &Runtime,
    name: &str,
    sender: &impl UdpSend,
    batch: &impl Fn() -> Vec<(Packet, SocketAddr)>,
) {
    group.bench_function(name, |b| {
        let mut buf = Default::default();
        b.iter(|| {
            let mut packets = batch();
            runtime
                .block_on(sender.send_many_to(&mut buf, black_box(&mut packets)))
                .expect("send a batch")
        })
    });
}

criterion_group!(benches, send_batch);
criterion_main!(benches);

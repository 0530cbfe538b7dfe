//! Classification cost per packet: the miss path is the tunnel's overhead.
//!
//! Each iteration classifies a burst of packets, as the TUN reader does during a transfer,
//! so criterion's per-iteration overhead does not swamp a cost of a nanosecond or two. The
//! rule table is loaded once per burst, as `FilteredTun` loads it once per read (a packet or a
//! super-packet's segments).
//! The burst goes through `black_box` whole, so the compiler knows nothing of any packet's
//! bytes and must classify each one.
//!
//! The `_opaque_each` cases put every packet through `black_box` as well, a stricter harness
//! that adds a stack round trip of each packet's pointer; their own floor shows its cost.
//! `miss_v4_reload_per_packet` keeps the cost of loading the rule table for every packet
//! in view. `miss_v4_filter_collision` sends to an address the table's filter cannot rule
//! out (its last byte is a virtual IP's, modulo 64), the price a 1-in-64 destination pays.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tundns_filter::{Rules, RulesReader};

#[path = "../tests/support/mod.rs"]
mod support;
use support::{Nothing, udp_packet};

const BURST: usize = 64;

/// Packets of a bulk transfer's size.
const PAYLOAD: usize = 1200;

/// What `FilteredTun` does with a batch: one load of the rule table, then every packet
/// classified against it.
fn burst_hits(reader: &mut RulesReader, packets: &[Vec<u8>]) -> usize {
    let rules = reader.load();
    black_box(packets)
        .iter()
        .filter(|packet| rules.classify(packet).is_some())
        .count()
}

/// The floor: the same loop reading one byte of each packet, without classifying.
fn burst_floor(packets: &[Vec<u8>]) -> usize {
    black_box(packets)
        .iter()
        .filter(|packet| packet.first() == Some(&0x60))
        .count()
}

/// [`burst_hits`] with every packet opaque to the compiler on its own.
fn burst_hits_opaque_each(reader: &mut RulesReader, packets: &[Vec<u8>]) -> usize {
    let rules = reader.load();
    packets
        .iter()
        .filter(|packet| rules.classify(black_box(packet)).is_some())
        .count()
}

/// [`burst_floor`] with every packet opaque to the compiler on its own.
fn burst_floor_opaque_each(packets: &[Vec<u8>]) -> usize {
    packets
        .iter()
        .filter(|packet| black_box(packet).first() == Some(&0x60))
        .count()
}

/// The burst, loading the rule table again for every packet.
fn burst_hits_reloading(reader: &mut RulesReader, packets: &[Vec<u8>]) -> usize {
    black_box(packets)
        .iter()
        .filter(|packet| reader.load().classify(packet).is_some())
        .count()
}

fn bench(c: &mut Criterion) {
    let rules = Rules::new();
    rules.insert(Ipv4Addr::new(10, 30, 30, 30).into(), Arc::new(Nothing));
    rules.insert(
        Ipv6Addr::new(0xfd30, 0x30, 0x30, 0, 0, 0, 0, 0x30).into(),
        Arc::new(Nothing),
    );
    let client_v4: IpAddr = Ipv4Addr::new(10, 99, 0, 2).into();
    let client_v6: IpAddr = "fd99::2".parse::<Ipv6Addr>().unwrap().into();
    let miss_v4 = vec![udp_packet(client_v4, Ipv4Addr::new(10, 99, 0, 1).into(), PAYLOAD); BURST];
    let miss_v6 = vec![
        udp_packet(
            client_v6,
            "fd99::1".parse::<Ipv6Addr>().unwrap().into(),
            PAYLOAD
        );
        BURST
    ];
    let hit_v4 = vec![udp_packet(client_v4, Ipv4Addr::new(10, 30, 30, 30).into(), PAYLOAD); BURST];
    let collision_v4 =
        vec![udp_packet(client_v4, Ipv4Addr::new(10, 99, 0, 30 + 64).into(), PAYLOAD); BURST];

    let mut group = c.benchmark_group("classify");
    group.throughput(Throughput::Elements(BURST as u64));
    let mut reader = rules.reader();
    group.bench_function("miss_v4", |b| b.iter(|| burst_hits(&mut reader, &miss_v4)));
    group.bench_function("miss_v6", |b| b.iter(|| burst_hits(&mut reader, &miss_v6)));
    group.bench_function("hit_v4", |b| b.iter(|| burst_hits(&mut reader, &hit_v4)));
    group.bench_function("loop_floor", |b| b.iter(|| burst_floor(&miss_v4)));
    group.bench_function("miss_v4_opaque_each", |b| {
        b.iter(|| burst_hits_opaque_each(&mut reader, &miss_v4))
    });
    group.bench_function("loop_floor_opaque_each", |b| {
        b.iter(|| burst_floor_opaque_each(&miss_v4))
    });
    group.bench_function("miss_v4_reload_per_packet", |b| {
        b.iter(|| burst_hits_reloading(&mut reader, &miss_v4))
    });
    group.bench_function("miss_v4_filter_collision", |b| {
        b.iter(|| burst_hits(&mut reader, &collision_v4))
    });
    let mut empty_reader = Rules::new().reader();
    group.bench_function("miss_v4_no_rules", |b| {
        b.iter(|| burst_hits(&mut empty_reader, &miss_v4))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Classification cost per packet: the miss path is the tunnel's overhead.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tundns_filter::{Rules, Service, TunWriter};

struct Nothing;
impl Service for Nothing {
    fn handle(&self, _packet: &[u8], _tun: &TunWriter) {}
    fn name(&self) -> &str {
        "nothing"
    }
}

fn packet(src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let builder = match (src, dst) {
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
        .write(&mut out, &[0u8; 1200])
        .unwrap();
    out
}

fn bench(c: &mut Criterion) {
    let rules = Rules::new();
    rules.insert(Ipv4Addr::new(10, 30, 30, 30).into(), Arc::new(Nothing));
    rules.insert(
        Ipv6Addr::new(0xfd30, 0x30, 0x30, 0, 0, 0, 0, 0x30).into(),
        Arc::new(Nothing),
    );
    let miss_v4 = packet(
        Ipv4Addr::new(10, 99, 0, 2).into(),
        Ipv4Addr::new(10, 99, 0, 1).into(),
    );
    let miss_v6 = packet(
        "fd99::2".parse::<Ipv6Addr>().unwrap().into(),
        "fd99::1".parse::<Ipv6Addr>().unwrap().into(),
    );
    let hit_v4 = packet(
        Ipv4Addr::new(10, 99, 0, 2).into(),
        Ipv4Addr::new(10, 30, 30, 30).into(),
    );

    let mut group = c.benchmark_group("classify");
    group.throughput(Throughput::Elements(1));
    let mut reader = rules.reader();
    group.bench_function("miss_v4", |b| {
        b.iter(|| reader.load().classify(black_box(&miss_v4)).is_some())
    });
    group.bench_function("miss_v6", |b| {
        b.iter(|| reader.load().classify(black_box(&miss_v6)).is_some())
    });
    group.bench_function("hit_v4", |b| {
        b.iter(|| reader.load().classify(black_box(&hit_v4)).is_some())
    });
    let table = rules.snapshot();
    group.bench_function("miss_v4_snapshot", |b| {
        b.iter(|| table.classify(black_box(&miss_v4)).is_some())
    });
    let empty = Rules::new();
    let mut empty_reader = empty.reader();
    group.bench_function("miss_v4_no_rules", |b| {
        b.iter(|| empty_reader.load().classify(black_box(&miss_v4)).is_some())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

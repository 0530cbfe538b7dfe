//! Hot-path costs: classifying a packet, wrapping a DNS answer in IP/UDP headers, and
//! the raw checksum loop.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tundns_packet::{
    IpView, build_udp, checksum, destination_port, udp_headers_len, write_udp_headers,
};

const PAYLOAD_LEN: usize = 100;

fn dns_query(src: &str, dst: &str) -> Vec<u8> {
    let src: SocketAddr = src.parse().unwrap();
    let dst: SocketAddr = dst.parse().unwrap();
    let mut buf = vec![0u8; 1500];
    let len = build_udp(&mut buf, src, dst, &[0x5a; PAYLOAD_LEN]).unwrap();
    buf.truncate(len);
    buf
}

fn classify(c: &mut Criterion) {
    let v4 = dns_query("10.0.0.2:40000", "10.30.30.30:53");
    let v6 = dns_query("[fd00::2]:40000", "[fd30:30:30::30]:53");
    let mut group = c.benchmark_group("classify");
    group.throughput(Throughput::Elements(1));
    group.bench_function("destination_port/v4", |b| {
        b.iter(|| destination_port(black_box(&v4)))
    });
    group.bench_function("destination_port/v6", |b| {
        b.iter(|| destination_port(black_box(&v6)))
    });
    group.bench_function("parse+dst/v4", |b| {
        b.iter(|| IpView::parse(black_box(&v4)).map(|view| view.dst()))
    });
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("write_udp_headers");
    group.throughput(Throughput::Elements(1));
    for (name, src, dst) in [
        ("v4", "10.30.30.30:53", "10.0.0.2:40000"),
        ("v6", "[fd30:30:30::30]:53", "[fd00::2]:40000"),
    ] {
        let src: SocketAddr = src.parse().unwrap();
        let dst: SocketAddr = dst.parse().unwrap();
        let mut buf = vec![0x5au8; udp_headers_len(&dst) + PAYLOAD_LEN];
        group.bench_function(format!("{name}/100B"), |b| {
            b.iter(|| write_udp_headers(black_box(&mut buf), src, dst, black_box(PAYLOAD_LEN)))
        });
    }
    group.finish();
}

fn sum(c: &mut Criterion) {
    let data = vec![0xa5u8; 1500];
    let mut group = c.benchmark_group("checksum");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("1500B", |b| b.iter(|| checksum(black_box(&data))));
    group.finish();
}

criterion_group!(benches, classify, build, sum);
criterion_main!(benches);

//! The classification path allocates nothing: a counting global allocator watches a burst
//! of misses and hits through a rules reader, as the TUN reader does them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tundns_filter::{Rules, Service, TunWriter};

struct CountingAllocator;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

struct Nothing;
impl Service for Nothing {
    fn handle(&self, _packet: &[u8], _tun: &TunWriter) {}
    fn name(&self) -> &str {
        "nothing"
    }
}

fn udp_packet(dst: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ipv4([10, 99, 0, 2], dst, 64)
        .udp(40000, 443)
        .write(&mut out, &[0u8; 100])
        .unwrap();
    out
}

#[test]
fn classifying_misses_and_hits_allocates_nothing() {
    let rules = Rules::new();
    rules.insert(Ipv4Addr::new(10, 30, 30, 30).into(), Arc::new(Nothing));
    let mut reader = rules.reader();
    let miss = udp_packet([10, 99, 0, 1]);
    let hit = udp_packet([10, 30, 30, 30]);
    // The reader's first load settles its cache.
    assert!(reader.load().classify(&hit).is_some());

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut hits = 0;
    for _ in 0..10_000 {
        hits += usize::from(reader.load().classify(&miss).is_some());
        hits += usize::from(reader.load().classify(&hit).is_some());
    }
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(hits, 10_000);
    assert_eq!(after - before, 0, "allocations on the classification path");
}

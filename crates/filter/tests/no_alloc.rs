//! The classification path allocates nothing: a counting global allocator watches a burst
//! of misses and hits through a rules reader, as the TUN reader does them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tundns_filter::Rules;

mod support;
use support::{Nothing, udp_packet};

const PAYLOAD: usize = 100;

struct CountingAllocator;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set on the thread under test: the harness's own threads allocate as they please
    /// (it prints, it times tests), and those allocations are not the filter's.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
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

#[test]
fn classifying_misses_and_hits_allocates_nothing() {
    let dns_v4: IpAddr = Ipv4Addr::new(10, 30, 30, 30).into();
    let dns_v6: IpAddr = Ipv6Addr::new(0xfd30, 0x30, 0x30, 0, 0, 0, 0, 0x30).into();
    let rules = Rules::new();
    rules.insert(dns_v4, Arc::new(Nothing));
    rules.insert(dns_v6, Arc::new(Nothing));
    let mut reader = rules.reader();
    let client_v4: IpAddr = Ipv4Addr::new(10, 99, 0, 2).into();
    let client_v6: IpAddr = "fd99::2".parse::<Ipv6Addr>().unwrap().into();
    let misses = [
        udp_packet(client_v4, Ipv4Addr::new(10, 99, 0, 1).into(), PAYLOAD),
        udp_packet(
            client_v6,
            "fd99::1".parse::<Ipv6Addr>().unwrap().into(),
            PAYLOAD,
        ),
    ];
    let hits = [
        udp_packet(client_v4, dns_v4, PAYLOAD),
        udp_packet(client_v6, dns_v6, PAYLOAD),
    ];
    // The reader's first load settles its cache.
    assert!(reader.load().classify(&hits[0]).is_some());

    COUNTING.with(|counting| counting.set(true));
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut classified = 0;
    for _ in 0..10_000 {
        for packet in misses.iter().chain(&hits) {
            classified += usize::from(reader.load().classify(packet).is_some());
        }
    }
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|counting| counting.set(false));
    assert_eq!(classified, 20_000);
    assert_eq!(after - before, 0, "allocations on the classification path");
}

//! The memory budget: 100k cached typical answers in at most 64 MB of RSS, and
//! the cache's own byte count close to what the process really spends.
//! Alone in its file, so no other test allocates in this process meanwhile.

use std::time::Instant;

use domain::base::iana::Rtype;
use tundns_dns::cache::{Cache, CacheConfig};
use tundns_dns::parse_query;
use tundns_test_support::dns::{Answer, Edns, Query};

const ANSWERS: usize = 100_000;
const BUDGET: u64 = 64 << 20;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// `host<i>.example.com A` with EDNS, and its answer: one A record and an OPT.
fn exchange(i: usize) -> (Vec<u8>, Vec<u8>) {
    let query = Query::new(&format!("host{i}.example.com"), Rtype::A)
        .edns(Edns::new(1232))
        .build();
    let response = Answer::to(&query)
        .a(300, [10, 0, 0, 1])
        .edns(Edns::new(1232))
        .build();
    (query, response)
}

#[test]
fn hundred_thousand_answers_fit_the_budget() {
    let cache = Cache::new(CacheConfig::default());
    let now = Instant::now();
    let before = resident_bytes();
    for i in 0..ANSWERS {
        let (query, response) = exchange(i);
        assert!(cache.insert(&parse_query(&query).unwrap(), &response, now));
    }
    let after = resident_bytes();
    assert_eq!(cache.len(), ANSWERS, "the default size holds them all");
    let grown = after.saturating_sub(before);
    let counted = cache.weight();
    eprintln!(
        "RSS {} MiB (grew {} KiB for {ANSWERS} answers: {} B each); counted {} B each",
        after >> 20,
        grown >> 10,
        grown / ANSWERS as u64,
        counted / ANSWERS as u64
    );
    assert!(after <= BUDGET, "RSS {after} B");
    // The byte bound is honest: the count is within a factor of 1.5 of reality.
    assert!(
        counted * 3 >= grown * 2 && counted * 2 <= grown * 3,
        "counted {counted} B, RSS grew {grown} B"
    );
}

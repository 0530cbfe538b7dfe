//! Any bytes as a client's query to the proxy: what parses is answered by local data (a
//! CNAME chain leading out included), the blocklist and the cache, at several buffer sizes;
//! what does not gets an error answer or nothing. Nothing written overruns its buffer, and
//! the query a chain sends on for its target parses.

#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tundns_dns::cache::{Cache, CacheConfig};
use tundns_dns::{
    BlockList, BlockMode, LocalAnswer, LocalData, LocalDataBuilder, Rcode, parse_query,
    write_error_response,
};

fn local() -> &'static LocalData {
    static LOCAL: OnceLock<LocalData> = OnceLock::new();
    LOCAL.get_or_init(|| {
        let mut builder = LocalDataBuilder::new();
        builder.add_local_zone("lab.internal").unwrap();
        // The property tests' records (crates/dns/tests/resolver_front_properties.rs).
        for line in include_str!("../../crates/dns/tests/fixtures/local-records.txt").lines() {
            builder.add_record(line).unwrap();
        }
        builder.build()
    })
}

fn blocklist() -> &'static BlockList {
    static LIST: OnceLock<BlockList> = OnceLock::new();
    LIST.get_or_init(|| {
        let mut list = BlockList::new(BlockMode::Null, Duration::from_secs(60));
        list.add_domain("ads.example").unwrap();
        list
    })
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(query) = parse_query(bytes) else {
        let mut out = [0u8; 512];
        assert!(write_error_response(bytes, Rcode::FORMERR, &mut out) <= out.len());
        return;
    };
    let cache = Cache::new(CacheConfig::default());
    for size in [0, 11, 12, 40, 512, 4096] {
        let mut out = vec![0u8; size];
        if let Some(answer) = local().answer(&query, &mut out) {
            assert!(answer.written() <= size);
            if let LocalAnswer::Chain(_, chain) = answer {
                let asked = chain.target_query(&query);
                assert!(parse_query(&asked).is_ok(), "a chain's target query parses");
            }
        }
        if let Some(len) = blocklist().answer(&query, &mut out) {
            assert!(len <= size);
        }
        assert_eq!(cache.lookup(&query, Instant::now(), &mut out), None);
    }
});

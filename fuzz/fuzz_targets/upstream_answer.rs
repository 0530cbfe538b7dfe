//! Any bytes as an upstream's answer to a real query: matched against the query, adapted
//! for the client, truncated, searched for CNAMEs into a blocked domain, cached and served
//! from the cache, and used to finish a local CNAME chain. Nothing written overruns its
//! buffer.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tundns_dns::cache::{Cache, CacheConfig};
use tundns_dns::{
    BlockList, BlockMode, CnameChain, LocalAnswer, LocalDataBuilder, adapt_response, parse_query,
    response_matches, write_truncated,
};

/// `out.lab.internal A` with EDNS (DO set), as a client sends it.
const QUERY: &[u8] = b"\x51\x51\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\
\x03out\x03lab\x08internal\x00\x00\x01\x00\x01\
\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x00";

fn chain() -> &'static Arc<CnameChain> {
    static CHAIN: OnceLock<Arc<CnameChain>> = OnceLock::new();
    CHAIN.get_or_init(|| {
        let mut builder = LocalDataBuilder::new();
        builder
            .add_record("out.lab.internal CNAME www.example.com")
            .unwrap();
        let mut out = [0u8; 512];
        match builder
            .build()
            .answer(&parse_query(QUERY).unwrap(), &mut out)
        {
            Some(LocalAnswer::Chain(_, chain)) => chain,
            other => panic!("out.lab.internal leads out of local data: {other:?}"),
        }
    })
}

fn blocklist() -> &'static BlockList {
    static LIST: OnceLock<BlockList> = OnceLock::new();
    LIST.get_or_init(|| {
        let mut list = BlockList::new(BlockMode::NxDomain, Duration::from_secs(60));
        list.add_domain("example.com").unwrap();
        list
    })
}

fuzz_target!(|response: &[u8]| {
    let query = parse_query(QUERY).unwrap();
    let _ = response_matches(query.id(), query.question(), response);
    let _ = blocklist().cloaks_blocked_name(response);
    for size in [0, 12, 100, 512, 65535] {
        let mut out = vec![0u8; size];
        assert!(adapt_response(response, &query, &mut out) <= size);
        assert!(write_truncated(response, &mut out) <= size);
        if let Some(answer) = chain().complete(&query, response, size, |name| name.len() % 3 == 0) {
            assert!(answer.len() <= size);
        }
    }
    let cache = Cache::new(CacheConfig::default());
    let now = Instant::now();
    if cache.insert(&query, response, now) {
        let mut out = vec![0u8; 65535];
        let _ = cache.lookup(&query, now, &mut out);
        let _ = cache.lookup_stale(&query, now, &mut out);
    }
});

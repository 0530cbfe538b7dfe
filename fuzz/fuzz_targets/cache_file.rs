//! Any bytes as the body of a cache file (saved time, entry count, entries), wrapped in
//! a right magic, version, fingerprint and checksum so that the fuzzer reaches the
//! entries rather than stopping at the checksum. Loading never panics; a file refused
//! leaves the cache empty; a file taken saves again to one that loads the same entries.

#![no_main]

use std::time::{Duration, Instant, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use tundns_dns::cache::{CACHE_FILE_MAGIC, CACHE_FILE_VERSION, Cache, CacheConfig, checksum};

const FINGERPRINT: u64 = 0x7475_6e64_6e73_0001;

fn small_cache() -> Cache {
    Cache::new(CacheConfig {
        max_bytes: 64 * 1024,
        ..CacheConfig::default()
    })
}

fuzz_target!(|body: &[u8]| {
    let mut file = CACHE_FILE_MAGIC.to_vec();
    file.extend_from_slice(&CACHE_FILE_VERSION.to_be_bytes());
    file.extend_from_slice(&FINGERPRINT.to_be_bytes());
    file.extend_from_slice(body);
    let sum = checksum(&file);
    file.extend_from_slice(&sum.to_be_bytes());

    // A fixed wall clock (2033): saved times before and after it are both reachable.
    let wall = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let now = Instant::now();
    let cache = small_cache();
    match cache.load(&file, now, wall, FINGERPRINT) {
        Err(_) => assert!(cache.is_empty(), "a refused file left entries behind"),
        Ok(loaded) => {
            assert!(cache.len() <= loaded.fresh + loaded.stale);
            let again = cache.save(now, wall, FINGERPRINT);
            let reloaded = small_cache();
            reloaded
                .load(&again, now, wall, FINGERPRINT)
                .expect("a file the cache saved loads");
            assert_eq!(reloaded.len(), cache.len(), "the saved entries load back");
        }
    }
});

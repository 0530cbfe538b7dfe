//! The cache file (`Cache::save`, `Cache::load`), prefetch hits and the stale answer's
//! Extended DNS Error, checked through `domain`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use domain::base::Message;
use domain::base::iana::{Rcode, Rtype};
use tundns_dns::cache::{
    CACHE_FILE_MAGIC, CACHE_FILE_VERSION, Cache, CacheConfig, LoadError, Loaded, checksum,
    fingerprint,
};
use tundns_dns::parse_query;
use tundns_test_support::dns::{self, Answer, Data, Edns};

const PRINT: u64 = 0x5eed;

fn query(id: u16, qname: &str, edns: bool, dnssec_ok: bool) -> Vec<u8> {
    let query = dns::Query::new(qname, Rtype::A).id(id);
    if edns {
        query.edns(Edns::new(1232).dnssec_ok(dnssec_ok)).build()
    } else {
        query.build()
    }
}

fn positive(request: &[u8], ttls: &[u32]) -> Vec<u8> {
    let answer = Answer::to(request).compressed().recursion_available();
    ttls.iter()
        .enumerate()
        .fold(answer, |answer, (i, &ttl)| {
            answer.a(ttl, [192, 0, 2, i as u8])
        })
        .build()
}

fn nxdomain(request: &[u8], minimum: u32) -> Vec<u8> {
    Answer::to(request)
        .rcode(Rcode::NXDOMAIN)
        .authority(
            "example",
            3600,
            Data::Soa {
                mname: "ns.example".into(),
                rname: "hostmaster.example".into(),
                minimum,
            },
        )
        .build()
}

fn servfail(request: &[u8]) -> Vec<u8> {
    Answer::to(request).rcode(Rcode::SERVFAIL).build()
}

fn ttls(message: &[u8]) -> Vec<u32> {
    let message = Message::from_octets(message).unwrap();
    let mut ttls = Vec::new();
    for section in [message.answer().unwrap(), message.authority().unwrap()] {
        for record in section {
            ttls.push(record.unwrap().ttl().as_secs());
        }
    }
    ttls
}

fn lookup(cache: &Cache, request: &[u8], now: Instant) -> Option<Vec<u8>> {
    let mut out = vec![0; 65535];
    let len = cache.lookup(&parse_query(request).unwrap(), now, &mut out)?;
    Some(out[..len].to_vec())
}

fn lookup_stale(cache: &Cache, request: &[u8], now: Instant) -> Option<Vec<u8>> {
    let mut out = vec![0; 65535];
    let len = cache.lookup_stale(&parse_query(request).unwrap(), now, &mut out)?;
    Some(out[..len].to_vec())
}

fn insert(cache: &Cache, request: &[u8], response: &[u8], now: Instant) {
    assert!(cache.insert(&parse_query(request).unwrap(), response, now));
}

/// The INFO-CODEs of the Extended DNS Errors in `message`'s OPT record.
fn extended_errors(message: &[u8]) -> Vec<u16> {
    let message = Message::from_octets(message).unwrap();
    let Some(opt) = message.opt() else {
        return Vec::new();
    };
    opt.opt()
        .iter::<domain::base::opt::AllOptData<_, _>>()
        .filter_map(Result::ok)
        .filter_map(|option| match option {
            domain::base::opt::AllOptData::ExtendedError(error) => Some(error.code().to_int()),
            _ => None,
        })
        .collect()
}

fn minutes(minutes: u64) -> Duration {
    Duration::from_secs(60 * minutes)
}

/// A whole second of wall-clock time, so that rounding does not blur the tests' ages.
fn whole_second_now() -> SystemTime {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    UNIX_EPOCH + Duration::from_secs(since.as_secs())
}

/// `file` with its checksum made right again after a test changed it.
fn resealed(mut file: Vec<u8>) -> Vec<u8> {
    let body = file.len() - 4;
    let sum = checksum(&file[..body]);
    file[body..].copy_from_slice(&sum.to_be_bytes());
    file
}

/// A cache with a fresh entry (300 s), a negative one (60 s), a DO-keyed one and a
/// SERVFAIL, saved 10 s after they were stored.
fn saved(config: CacheConfig) -> (Vec<u8>, SystemTime, [Vec<u8>; 4]) {
    let cache = Cache::new(config);
    let t0 = Instant::now();
    let requests = [
        query(1, "www.example", true, false),
        query(2, "gone.example", false, false),
        query(3, "signed.example", true, true),
        query(4, "broken.example", false, false),
    ];
    insert(
        &cache,
        &requests[0],
        &positive(&requests[0], &[300, 600]),
        t0,
    );
    insert(&cache, &requests[1], &nxdomain(&requests[1], 60), t0);
    insert(&cache, &requests[2], &positive(&requests[2], &[300]), t0);
    insert(&cache, &requests[3], &servfail(&requests[3]), t0);
    let wall = whole_second_now();
    let file = cache.save(t0 + Duration::from_secs(10), wall, PRINT);
    (file, wall, requests)
}

#[test]
fn a_saved_cache_loads_with_every_ttl_cut_by_the_time_that_passed() {
    let (file, wall, requests) = saved(CacheConfig::default());
    assert_eq!(&file[..8], &CACHE_FILE_MAGIC);
    let cache = Cache::new(CacheConfig::default());
    let now = Instant::now();
    // Saved 10 s after storing; 20 s of wall-clock time pass before the restart.
    let loaded = cache
        .load(&file, now, wall + Duration::from_secs(20), PRINT)
        .unwrap();
    assert_eq!(
        loaded,
        Loaded {
            fresh: 3,
            stale: 0,
            expired: 0
        }
    );
    let hit = lookup(&cache, &query(9, "WWW.example", true, false), now).unwrap();
    assert_eq!(ttls(&hit), [270, 570]);
    assert_eq!(&hit[..2], &9u16.to_be_bytes());
    let negative = lookup(&cache, &requests[1], now).unwrap();
    assert_eq!(negative[3] & 0x0f, 3, "NXDOMAIN");
    assert_eq!(ttls(&negative), [30]);
    // The DO bit is part of the key, in the file too.
    assert!(lookup(&cache, &requests[2], now).is_some());
    assert!(lookup(&cache, &query(5, "signed.example", true, false), now).is_none());
    // SERVFAIL is not kept across a restart.
    assert!(lookup(&cache, &requests[3], now).is_none());
    // It goes on counting down from there.
    let later = lookup(&cache, &requests[0], now + Duration::from_secs(100)).unwrap();
    assert_eq!(ttls(&later), [170, 470]);
}

#[test]
fn an_entry_that_expired_meanwhile_is_only_served_stale_and_only_inside_the_window() {
    let config = CacheConfig {
        serve_stale: minutes(10),
        ..CacheConfig::default()
    };
    let (file, wall, requests) = saved(config.clone());
    let cache = Cache::new(config.clone());
    let now = Instant::now();
    // 6 minutes on: the 300 s answers expired a minute ago, the 60 s NXDOMAIN 5 ago.
    let loaded = cache.load(&file, now, wall + minutes(6), PRINT).unwrap();
    assert_eq!(loaded.fresh + loaded.stale, 3);
    assert_eq!(loaded.stale, 3);
    assert!(lookup(&cache, &requests[0], now).is_none());
    let stale = lookup_stale(&cache, &requests[0], now).unwrap();
    assert_eq!(ttls(&stale), [30, 30]);
    assert_eq!(extended_errors(&stale), [3], "Stale Answer");

    // Past the window: left out.
    let late = Cache::new(config);
    let loaded = late.load(&file, now, wall + minutes(20), PRINT).unwrap();
    assert_eq!(loaded.stale + loaded.fresh, 0);
    assert_eq!(loaded.expired, 3);
    assert!(lookup_stale(&late, &requests[0], now).is_none());

    // Serve-stale off: nothing expired is kept.
    let off = Cache::new(CacheConfig {
        serve_stale: Duration::ZERO,
        ..CacheConfig::default()
    });
    let loaded = off.load(&file, now, wall + minutes(6), PRINT).unwrap();
    assert_eq!((loaded.fresh, loaded.stale), (0, 0));
}

fn refused(file: &[u8], wall: SystemTime) -> LoadError {
    let cache = Cache::new(CacheConfig::default());
    let error = cache.load(file, Instant::now(), wall, PRINT).unwrap_err();
    assert!(cache.is_empty(), "{error}: a refused file changes nothing");
    error
}

#[test]
fn a_wrong_file_is_refused_whole_and_changes_nothing() {
    let (file, wall, _) = saved(CacheConfig::default());
    assert_eq!(refused(b"", wall), LoadError::Foreign);
    assert_eq!(refused(b"# hosts file\n", wall), LoadError::Foreign);
    assert_eq!(refused(&file[..12], wall), LoadError::Truncated);
    let mut version = file.clone();
    version[8..10].copy_from_slice(&(CACHE_FILE_VERSION + 1).to_be_bytes());
    assert_eq!(
        refused(&version, wall),
        LoadError::Version(CACHE_FILE_VERSION + 1)
    );
    let other = Cache::new(CacheConfig::default())
        .load(&file, Instant::now(), wall, PRINT + 1)
        .unwrap_err();
    assert_eq!(other, LoadError::OtherConfig);
    let mut trailing = file.clone();
    trailing.push(0);
    assert_eq!(refused(&trailing, wall), LoadError::Checksum);
    let mut trailing = file[..file.len() - 4].to_vec();
    trailing.extend_from_slice(&[0, 0, 0, 0, 0]);
    assert_eq!(refused(&resealed(trailing), wall), LoadError::TrailingBytes);
    assert_eq!(
        refused(&file, wall - Duration::from_secs(3600)),
        LoadError::SavedInTheFuture
    );
    // Every cut is refused, never half loaded.
    for len in 0..file.len() {
        let error = refused(&file[..len], wall);
        assert!(
            matches!(error, LoadError::Truncated | LoadError::Foreign),
            "{len}: {error}"
        );
    }
    // More entries claimed than there are.
    let mut count = file.clone();
    count[29] += 1;
    assert_eq!(refused(&count, wall), LoadError::Truncated);
    assert_eq!(refused(&resealed(count), wall), LoadError::Truncated);
    // An entry whose flags the cache never sets.
    let mut flags = file.clone();
    flags[30] = 0x40;
    assert_eq!(refused(&resealed(flags), wall), LoadError::BadEntry(0));
    // An entry that is a query, not an answer.
    let mut query_bit = file.clone();
    query_bit[30 + 7 + 2] &= !0x80;
    assert_eq!(refused(&resealed(query_bit), wall), LoadError::BadEntry(0));
}

#[test]
fn a_count_no_body_could_hold_is_refused_before_anything_is_allocated() {
    let (file, wall, _) = saved(CacheConfig::default());
    // As many entries as the cache's size would allow, in a file of three.
    let mut count = file.clone();
    count[26..30].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(refused(&resealed(count.clone()), wall), LoadError::TooLarge);
    let huge = Cache::new(CacheConfig {
        max_bytes: usize::MAX / 2,
        ..CacheConfig::default()
    });
    assert_eq!(
        huge.load(&resealed(count), Instant::now(), wall, PRINT),
        Err(LoadError::Truncated)
    );
    assert!(huge.is_empty());
}

#[test]
fn ages_and_the_time_that_passed_are_rounded_up_never_down() {
    let cache = Cache::new(CacheConfig::default());
    let t0 = Instant::now();
    let request = query(1, "www.example", false, false);
    insert(&cache, &request, &positive(&request, &[300]), t0);
    // Saved 10.5 s after storing, at x.9 s on the wall clock; loaded 0.05 s later,
    // still in second x: 10.55 s old, so at most 289 s of the 300 may be left.
    let wall = whole_second_now() + Duration::from_millis(900);
    let file = cache.save(t0 + Duration::from_millis(10_500), wall, PRINT);
    let loaded = Cache::new(CacheConfig::default());
    let now = Instant::now();
    loaded
        .load(&file, now, wall + Duration::from_millis(50), PRINT)
        .unwrap();
    let hit = lookup(&loaded, &request, now).unwrap();
    assert!(ttls(&hit)[0] <= 289, "{:?}", ttls(&hit));
    // Rounding up costs at most a second each way.
    assert!(ttls(&hit)[0] >= 287, "{:?}", ttls(&hit));
}

#[test]
fn any_byte_changed_is_refused() {
    assert_eq!(
        checksum(b"123456789"),
        0xcbf4_3926,
        "CRC-32/ISO-HDLC check value"
    );
    let (file, wall, _) = saved(CacheConfig::default());
    for at in 0..file.len() {
        for flip in [0x01, 0x20, 0x80, 0xff] {
            let mut changed = file.clone();
            changed[at] ^= flip;
            let cache = Cache::new(CacheConfig::default());
            let result = cache.load(&changed, Instant::now(), wall, PRINT);
            assert!(result.is_err(), "byte {at} ^ {flip:#04x} loaded");
            assert!(cache.is_empty());
        }
    }
}

#[test]
fn a_changed_entry_that_still_reads_as_an_answer_is_refused() {
    // A flipped bit in a TTL or an address reads back as a good answer: only the
    // checksum tells it from the real one.
    let (file, wall, _) = saved(CacheConfig::default());
    let address = file.len() - 4 - 1;
    let mut changed = file.clone();
    changed[address] ^= 0x01;
    assert_eq!(refused(&changed, wall), LoadError::Checksum);
    // Resealed, the same change loads: the checksum is what refused it.
    assert!(
        Cache::new(CacheConfig::default())
            .load(&resealed(changed), Instant::now(), wall, PRINT)
            .is_ok()
    );
}

#[test]
fn the_file_is_bounded_by_the_caches_size() {
    let config = CacheConfig {
        max_bytes: 64 << 10,
        ..CacheConfig::default()
    };
    let cache = Cache::new(config.clone());
    let now = Instant::now();
    for i in 0..2000 {
        let request = query(1, &format!("name-{i}.example"), false, false);
        cache.insert(
            &parse_query(&request).unwrap(),
            &positive(&request, &[300]),
            now,
        );
    }
    let wall = SystemTime::now();
    let file = cache.save(now, wall, PRINT);
    assert!(file.len() <= (64 << 10) + 30 + 4, "{} bytes", file.len());
    let loaded = Cache::new(config.clone())
        .load(&file, now, wall, PRINT)
        .unwrap();
    assert_eq!(loaded.fresh, cache.len());
    // A file larger than this cache holds is refused, not read in part.
    let smaller = Cache::new(CacheConfig {
        max_bytes: 16 << 10,
        ..config
    });
    assert_eq!(
        smaller.load(&file, now, wall, PRINT),
        Err(LoadError::TooLarge)
    );
}

#[test]
fn the_fingerprint_tells_configs_apart() {
    assert_eq!(fingerprint(["a", "b"]), fingerprint(["a", "b"]));
    assert_ne!(fingerprint(["a", "b"]), fingerprint(["ab"]));
    assert_ne!(fingerprint(["a", "b"]), fingerprint(["b", "a"]));
    assert_ne!(fingerprint(["a"]), fingerprint(["a", ""]));
}

#[test]
fn a_hit_in_the_last_tenth_of_the_lifetime_asks_for_a_prefetch() {
    let cache = Cache::new(CacheConfig::default());
    let t0 = Instant::now();
    let long = query(1, "popular.example", false, false);
    let short = query(2, "flappy.example", false, false);
    insert(&cache, &long, &positive(&long, &[100]), t0);
    insert(&cache, &short, &positive(&short, &[9]), t0);
    let mut out = vec![0; 4096];
    let mut hit = |request: &[u8], secs: u64| {
        let query = parse_query(request).unwrap();
        cache
            .lookup_hit(&query, t0 + Duration::from_secs(secs), &mut out)
            .map(|hit| hit.prefetch)
    };
    assert_eq!(hit(&long, 0), Some(false));
    assert_eq!(hit(&long, 89), Some(false));
    assert_eq!(hit(&long, 90), Some(true));
    // Asked once: a refresh that failed is not asked again on every hit.
    assert_eq!(hit(&long, 95), Some(false));
    assert_eq!(hit(&long, 99), Some(false));
    assert_eq!(hit(&long, 100), None, "expired");
    // Under 10 s of life: never prefetched.
    assert_eq!(hit(&short, 8), Some(false));

    let off = Cache::new(CacheConfig {
        prefetch: false,
        ..CacheConfig::default()
    });
    insert(&off, &long, &positive(&long, &[100]), t0);
    let query = parse_query(&long).unwrap();
    let hit = off.lookup_hit(&query, t0 + Duration::from_secs(95), &mut out);
    assert_eq!(hit.map(|hit| hit.prefetch), Some(false));
}

#[test]
fn a_stored_entry_asks_for_one_refresh_however_many_hits_race() {
    let cache = Cache::new(CacheConfig::default());
    let t0 = Instant::now();
    let request = query(1, "popular.example", false, false);
    insert(&cache, &request, &positive(&request, &[100]), t0);
    let due = t0 + Duration::from_secs(95);
    let asked = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    let query = parse_query(&request).unwrap();
                    let mut out = vec![0; 4096];
                    (0..100)
                        .filter(|_| cache.lookup_hit(&query, due, &mut out).unwrap().prefetch)
                        .count()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .sum::<usize>()
    });
    assert_eq!(asked, 1);
    // The refreshed entry is a new one: it asks again in its own last tenth.
    insert(&cache, &request, &positive(&request, &[100]), due);
    let query = parse_query(&request).unwrap();
    let mut out = vec![0; 4096];
    let later = |secs| {
        cache
            .lookup_hit(&query, due + Duration::from_secs(secs), &mut vec![0; 4096])
            .map(|hit| hit.prefetch)
    };
    assert_eq!(later(50), Some(false));
    assert_eq!(later(91), Some(true));
    assert_eq!(later(92), Some(false));
    assert!(cache.lookup(&query, due, &mut out).is_some());
}

#[test]
fn a_stale_answer_says_so_only_to_a_client_with_edns() {
    let cache = Cache::new(CacheConfig::default());
    let t0 = Instant::now();
    let with = query(1, "old.example", true, false);
    let without = query(2, "old.example", false, false);
    insert(&cache, &with, &positive(&with, &[60]), t0);
    insert(&cache, &without, &positive(&without, &[60]), t0);
    let later = t0 + Duration::from_secs(61);
    let stale = lookup_stale(&cache, &with, later).unwrap();
    assert_eq!(extended_errors(&stale), [3]);
    let bare = lookup_stale(&cache, &without, later).unwrap();
    assert!(Message::from_octets(&bare[..]).unwrap().opt().is_none());
    // A fresh hit carries none.
    let fresh = lookup(&cache, &with, t0).unwrap();
    assert!(extended_errors(&fresh).is_empty());
}

#[test]
fn a_blocked_answer_in_place_of_an_upstreams_keeps_its_blocked_error_across_a_restart() {
    let cache = Cache::new(CacheConfig::default());
    let t0 = Instant::now();
    let with = query(1, "cloaked.example", true, false);
    let blocked = nxdomain(&with, 60);
    assert!(cache.insert_blocked(&parse_query(&with).unwrap(), &blocked, t0));
    let plain = query(2, "plain.example", true, false);
    insert(&cache, &plain, &nxdomain(&plain, 60), t0);
    assert_eq!(extended_errors(&lookup(&cache, &with, t0).unwrap()), [15]);
    let without = query(3, "cloaked.example", false, false);
    let bare = lookup(&cache, &without, t0).unwrap();
    assert!(Message::from_octets(&bare[..]).unwrap().opt().is_none());
    assert!(extended_errors(&lookup(&cache, &plain, t0).unwrap()).is_empty());

    let wall = whole_second_now();
    let file = cache.save(t0, wall, PRINT);
    let restarted = Cache::new(CacheConfig::default());
    let now = Instant::now();
    restarted.load(&file, now, wall, PRINT).unwrap();
    assert_eq!(
        extended_errors(&lookup(&restarted, &with, now).unwrap()),
        [15]
    );
    assert!(extended_errors(&lookup(&restarted, &plain, now).unwrap()).is_empty());
}

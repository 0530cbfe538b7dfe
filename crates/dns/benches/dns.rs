//! Hot-path costs of the DNS core: validating a query, rewriting its ID, and
//! matching an upstream answer. `parse_query_via_domain` is the baseline that
//! justifies the hand-written walk: the same checks through `domain`'s `Message`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use domain::base::Message;
use domain::base::iana::{OptionCode, Rtype};
use std::time::{Duration, Instant};

use tundns_dns::cache::{Cache, CacheConfig};
use tundns_dns::{adapt_response, parse_query, response_matches, set_message_id};
use tundns_test_support::dns::{Answer, Edns, Query};

/// A query as dig sends it: `www.example.com A`, RD, EDNS 1232 with a cookie.
fn typical_query() -> Vec<u8> {
    let edns = Edns::new(1232).option(OptionCode::COOKIE, &[1, 2, 3, 4, 5, 6, 7, 8]);
    Query::new("www.example.com", Rtype::A)
        .id(0x1234)
        .edns(edns)
        .build()
}

fn typical_answer(query: &[u8]) -> Vec<u8> {
    Answer::to(query).a(300, [192, 0, 2, 1]).build()
}

/// What `parse_query` checks, done through `domain`.
fn parse_via_domain(msg: &[u8]) -> Option<(u16, u16)> {
    let message = Message::from_octets(msg).ok()?;
    if message.header().qr() {
        return None;
    }
    let question = message.sole_question().ok()?;
    let mut size = 512;
    let sections = message
        .answer()
        .ok()?
        .next_section()
        .ok()??
        .next_section()
        .ok()??;
    for record in sections {
        let record = record.ok()?;
        if record.rtype() == Rtype::OPT {
            size = record.class().to_int();
        }
    }
    message.opt();
    Some((question.qtype().to_int(), size))
}

fn benches(c: &mut Criterion) {
    let query = typical_query();
    assert!(parse_query(&query).unwrap().edns().is_some());
    assert_eq!(parse_via_domain(&query), Some((1, 1232)));

    c.bench_function("parse_query/typical_a", |b| {
        b.iter(|| parse_query(black_box(&query)).is_ok())
    });
    c.bench_function("parse_query_via_domain/typical_a", |b| {
        b.iter(|| parse_via_domain(black_box(&query)))
    });

    let mut rewritten = query.clone();
    c.bench_function("set_message_id", |b| {
        b.iter(|| set_message_id(black_box(&mut rewritten), black_box(0xbeef)))
    });

    let answer = typical_answer(&query);
    let parsed = parse_query(&query).unwrap();
    let question = parsed.question().clone();
    assert!(response_matches(0x1234, &question, &answer));
    c.bench_function("response_matches/typical_a", |b| {
        b.iter(|| response_matches(black_box(0x1234), black_box(&question), black_box(&answer)))
    });
}

/// A query for `name` as dig sends it (RD, EDNS 1232).
fn query_for(name: &str, qtype: Rtype) -> Vec<u8> {
    Query::new(name, qtype)
        .id(0x1234)
        .edns(Edns::new(1232))
        .build()
}

/// The inline resolver-front checks: a local answer (hit and miss), a
/// blocklist check against 100k domains, a split-DNS route lookup.
fn resolver_front(c: &mut Criterion) {
    let mut builder = tundns_dns::LocalDataBuilder::new();
    builder.add_local_zone("lab.internal").unwrap();
    builder
        .add_record("*.dev.lab.internal AAAA fd99::20")
        .unwrap();
    for i in 0..1000 {
        builder
            .add_record(&format!(
                "host{i}.lab.internal A 10.99.{}.{}",
                i / 256,
                i % 256
            ))
            .unwrap();
    }
    builder.add_record("app.lab.internal A 10.99.0.10").unwrap();
    let local = builder.build();
    let mut out = [0u8; 1232];

    let hit = query_for("App.Lab.Internal", Rtype::A);
    let hit = parse_query(&hit).unwrap();
    assert!(local.answer(&hit, &mut out).is_some());
    c.bench_function("local_answer/hit", |b| {
        b.iter(|| local.answer(black_box(&hit), black_box(&mut out)))
    });
    let miss = query_for("www.example.com", Rtype::A);
    let miss = parse_query(&miss).unwrap();
    assert!(local.answer(&miss, &mut out).is_none());
    c.bench_function("local_answer/miss", |b| {
        b.iter(|| local.answer(black_box(&miss), black_box(&mut out)))
    });

    let mut blocklist = tundns_dns::BlockList::new(
        tundns_dns::BlockMode::NxDomain,
        std::time::Duration::from_secs(60),
    );
    for i in 0..100_000 {
        blocklist
            .add_domain(&format!("tracker{i}.ads{}.example", i % 97))
            .unwrap();
    }
    let unblocked = query_for("a.b.cdn.example.com", Rtype::A);
    let unblocked = parse_query(&unblocked).unwrap();
    assert!(!blocklist.is_blocked(unblocked.question()));
    c.bench_function("blocklist_100k/miss_5_labels", |b| {
        b.iter(|| blocklist.is_blocked(black_box(unblocked.question())))
    });
    let blocked = query_for("x.y.tracker99.ads2.example", Rtype::A);
    let blocked = parse_query(&blocked).unwrap();
    assert!(blocklist.is_blocked(blocked.question()));
    c.bench_function("blocklist_100k/hit_5_labels", |b| {
        b.iter(|| blocklist.is_blocked(black_box(blocked.question())))
    });

    let mut routes = tundns_dns::Routes::new(0usize);
    for (index, suffix) in ["corp.internal", "lab.corp.internal", "corp.example"]
        .into_iter()
        .chain((0..20).map(|i| Box::leak(format!("zone{i}.internal").into_boxed_str()) as &str))
        .enumerate()
    {
        routes.add(suffix, index + 1).unwrap();
    }
    let routed = query_for("a.b.www.corp.internal", Rtype::A);
    let routed = parse_query(&routed).unwrap();
    assert_eq!(*routes.lookup(routed.question()), 1);
    c.bench_function("routes/lookup_5_labels", |b| {
        b.iter(|| *routes.lookup(black_box(routed.question())))
    });
}

/// The cache on a typical `www.example.com A` answer: a hit written into a
/// buffer (ID, question case and TTLs patched), an insert, and adapting one
/// upstream answer to a collapsed query in another case.
fn cache_front(c: &mut Criterion) {
    let query = typical_query();
    let answer = typical_answer(&query);
    let parsed = parse_query(&query).unwrap();
    let cache = Cache::new(CacheConfig::default());
    let stored_at = Instant::now();
    assert!(cache.insert(&parsed, &answer, stored_at));

    let mut recased = query.clone();
    recased[13] = b'W';
    recased[..2].copy_from_slice(&[0xab, 0xcd]);
    let client = parse_query(&recased).unwrap();
    let later = stored_at + Duration::from_secs(42);
    let mut out = vec![0u8; 65535];
    assert!(cache.lookup(&client, later, &mut out).is_some());
    c.bench_function("cache/hit_typical_a", |b| {
        b.iter(|| cache.lookup(black_box(&client), black_box(later), black_box(&mut out)))
    });

    let fresh = Cache::new(CacheConfig::default());
    c.bench_function("cache/insert_typical_a", |b| {
        b.iter(|| fresh.insert(black_box(&parsed), black_box(&answer), stored_at))
    });

    assert!(adapt_response(&answer, &client, &mut out) > 0);
    c.bench_function("adapt_response/typical_a", |b| {
        b.iter(|| adapt_response(black_box(&answer), black_box(&client), black_box(&mut out)))
    });
}

criterion_group!(dns, benches, resolver_front, cache_front);
criterion_main!(dns);

//! The resolver's handling of inline misses, driven by hand: a fake clock and scripted
//! group answers, no sockets, no sleeps.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Clock, answer, id_of, marker_of, query, rcode_of};
use tundns_dns::cache::{Cache, CacheConfig};
use tundns_dns::{BlockList, BlockMode, LocalDataBuilder, MAX_MESSAGE_LEN, Routes};
use tundns_resolver::pool::{Answer, ResolveError};
use tundns_resolver::{
    Admission, AnswerPath, Finished, Forwarding, Inline, Prefetch, Protocol, RequestId, Resolver,
    UpstreamRequest, Upstreams,
};
use tundns_test_support::dns::{Answer as CannedAnswer, Data};

/// Groups are named; the driver would hold sockets here.
type Group = &'static str;

fn resolver(cache: bool) -> Resolver<Group> {
    let mut routes = Routes::new(0);
    routes.add("corp.test", 1).unwrap();
    Resolver::new(
        BlockList::new(BlockMode::NxDomain, Duration::from_secs(60)),
        LocalDataBuilder::new().build(),
        cache.then(|| Cache::new(CacheConfig::default())),
        Upstreams {
            routes,
            groups: vec!["public", "corp"],
        },
    )
}

/// Sends `query` through the resolver as a driver would; `client` names the asker.
fn ask(
    resolver: &Resolver<Group>,
    forwarding: &mut Forwarding<u32, Group>,
    client: u32,
    query: &[u8],
    now: std::time::Instant,
) -> Result<Admission<u32>, (usize, AnswerPath)> {
    let mut out = vec![0; MAX_MESSAGE_LEN];
    match resolver.answer_inline(query, Protocol::Udp, now, &mut out) {
        Inline::Miss(miss) => Ok(forwarding.handle_miss(resolver, client, miss, now, &mut out)),
        Inline::Answered(answered) => Err((answered.len, answered.path)),
        Inline::Dropped => panic!("dropped"),
    }
}

fn requests(forwarding: &mut Forwarding<u32, Group>) -> Vec<UpstreamRequest<Group>> {
    std::iter::from_fn(|| forwarding.poll_request()).collect()
}

/// Sends `query` as [`ask`] does, expecting it to go upstream, and returns the requests.
fn asked_upstream(
    resolver: &Resolver<Group>,
    forwarding: &mut Forwarding<u32, Group>,
    client: u32,
    query: &[u8],
    now: std::time::Instant,
) -> Vec<UpstreamRequest<Group>> {
    assert!(matches!(
        ask(resolver, forwarding, client, query, now),
        Ok(Admission::Waiting { collapsed: false })
    ));
    requests(forwarding)
}

/// Hands the group's result to the table, as a driver would, and the answers it makes.
fn settle(
    forwarding: &mut Forwarding<u32, Group>,
    resolver: &Resolver<Group>,
    id: RequestId,
    result: Result<Answer, ResolveError>,
    now: std::time::Instant,
) -> Vec<Finished<u32>> {
    forwarding
        .handle_upstream_answer(resolver, id, result, now)
        .map(|settled| settled.answers(resolver, now).collect())
        .unwrap_or_default()
}

fn upstream_answer(
    request: &UpstreamRequest<Group>,
    marker: u8,
    ttl: u32,
) -> Result<Answer, ResolveError> {
    Ok(Answer {
        response: Bytes::from(answer(&request.query, marker, ttl, 0, false)),
        upstream: "udp://192.0.2.53:53".into(),
    })
}

fn all_failed() -> Result<Answer, ResolveError> {
    Err(ResolveError::AllFailed {
        attempts: 2,
        soft_answer: None,
    })
}

#[test]
fn identical_queries_in_flight_share_one_upstream_request() {
    let clock = Clock::new();
    let resolver = resolver(false);
    let mut forwarding = Forwarding::new(64);
    let now = clock.at_millis(0);
    assert!(matches!(
        ask(
            &resolver,
            &mut forwarding,
            1,
            &query(100, "same.lab.test"),
            now
        ),
        Ok(Admission::Waiting { collapsed: false })
    ));
    assert!(matches!(
        ask(
            &resolver,
            &mut forwarding,
            2,
            &query(101, "SAME.lab.test"),
            now
        ),
        Ok(Admission::Waiting { collapsed: true })
    ));
    let asked = requests(&mut forwarding);
    assert_eq!(asked.len(), 1, "one upstream request for both");
    assert_eq!(asked[0].group, "public");
    assert_eq!(forwarding.waiting(), (2, 64));

    let answers = settle(
        &mut forwarding,
        &resolver,
        asked[0].id,
        upstream_answer(&asked[0], 7, 300),
        now,
    );
    let mut seen: Vec<(u32, u16)> = answers
        .iter()
        .map(|f| (f.client, id_of(&f.answer)))
        .collect();
    seen.sort();
    assert_eq!(seen, [(1, 100), (2, 101)], "each client gets its own ID");
    assert_eq!(&answers[1].answer[13..17], b"SAME", "and its own spelling");
    assert!(answers.iter().all(|f| f.path == AnswerPath::Forwarded));
    assert_eq!(forwarding.waiting(), (0, 64));

    // Once answered, the same question starts a new request.
    ask(
        &resolver,
        &mut forwarding,
        3,
        &query(102, "same.lab.test"),
        now,
    )
    .unwrap();
    assert_eq!(requests(&mut forwarding).len(), 1);
}

#[test]
fn split_dns_routes_pick_the_group() {
    let clock = Clock::new();
    let resolver = resolver(false);
    let mut forwarding = Forwarding::new(64);
    ask(
        &resolver,
        &mut forwarding,
        1,
        &query(1, "git.corp.test"),
        clock.at_millis(0),
    )
    .unwrap();
    assert_eq!(requests(&mut forwarding)[0].group, "corp");
}

#[test]
fn beyond_the_bound_the_answer_is_refused_until_a_slot_comes_back() {
    let clock = Clock::new();
    let resolver = resolver(false);
    let mut forwarding = Forwarding::new(1);
    let now = clock.at_millis(0);
    ask(&resolver, &mut forwarding, 1, &query(1, "a.lab.test"), now).unwrap();
    match ask(&resolver, &mut forwarding, 2, &query(2, "b.lab.test"), now) {
        Ok(Admission::Answered {
            client: 2,
            path: AnswerPath::Refused,
            ..
        }) => {}
        _ => panic!("the second must be refused while the first waits"),
    }
    let asked = requests(&mut forwarding);
    settle(
        &mut forwarding,
        &resolver,
        asked[0].id,
        upstream_answer(&asked[0], 1, 60),
        now,
    );
    assert!(matches!(
        ask(&resolver, &mut forwarding, 3, &query(3, "c.lab.test"), now),
        Ok(Admission::Waiting { .. })
    ));
}

#[test]
fn every_upstream_failing_without_a_stale_answer_gives_servfail() {
    let clock = Clock::new();
    let resolver = resolver(true);
    let mut forwarding = Forwarding::new(64);
    let now = clock.at_millis(0);
    let asked = asked_upstream(
        &resolver,
        &mut forwarding,
        1,
        &query(9, "down.lab.test"),
        now,
    );
    let answers = settle(&mut forwarding, &resolver, asked[0].id, all_failed(), now);
    assert_eq!(answers[0].path, AnswerPath::Servfail);
    assert_eq!(rcode_of(&answers[0].answer), 2);
    assert_eq!(id_of(&answers[0].answer), 9);
    assert_eq!(answers[0].upstream, None);
}

#[test]
fn a_stale_answer_is_served_only_when_every_upstream_fails() {
    let clock = Clock::new();
    let resolver = resolver(true);
    let mut forwarding = Forwarding::new(64);
    // Learned at 0 with a TTL of 1 s.
    let asked = asked_upstream(
        &resolver,
        &mut forwarding,
        1,
        &query(1, "www.lab.test"),
        clock.at_millis(0),
    );
    settle(
        &mut forwarding,
        &resolver,
        asked[0].id,
        upstream_answer(&asked[0], 1, 1),
        clock.at_millis(0),
    );
    assert!(
        ask(
            &resolver,
            &mut forwarding,
            2,
            &query(2, "www.lab.test"),
            clock.at_millis(500)
        )
        .is_err(),
        "fresh: a hit inline"
    );

    // Expired at 2 s: asked upstream again, which answers: the new answer, not the stale.
    let asked = asked_upstream(
        &resolver,
        &mut forwarding,
        3,
        &query(3, "www.lab.test"),
        clock.at_millis(2_000),
    );
    let fresh = settle(
        &mut forwarding,
        &resolver,
        asked[0].id,
        upstream_answer(&asked[0], 2, 1),
        clock.at_millis(2_000),
    );
    assert_eq!(
        (fresh[0].path, marker_of(&fresh[0].answer)),
        (AnswerPath::Forwarded, 2)
    );

    // Expired again at 4 s and every upstream fails: the stale answer, not SERVFAIL.
    let asked = asked_upstream(
        &resolver,
        &mut forwarding,
        4,
        &query(4, "www.lab.test"),
        clock.at_millis(4_000),
    );
    let stale = settle(
        &mut forwarding,
        &resolver,
        asked[0].id,
        all_failed(),
        clock.at_millis(4_000),
    );
    assert_eq!(stale[0].path, AnswerPath::Stale);
    assert_eq!(
        (rcode_of(&stale[0].answer), marker_of(&stale[0].answer)),
        (0, 2)
    );
    assert_eq!(id_of(&stale[0].answer), 4);
}

/// The first EDE option of `message`'s OPT record: its INFO-CODE and EXTRA-TEXT.
/// A query for `name` A with EDNS.
fn edns_query(id: u16, name: &str) -> Vec<u8> {
    tundns_test_support::dns::Query::new(name, domain::base::iana::Rtype::A)
        .id(id)
        .edns(tundns_test_support::dns::Edns::new(1232))
        .build()
}

fn extended_error(message: &[u8]) -> Option<(u16, String)> {
    let message = domain::base::Message::from_octets(message).unwrap();
    let opt = message.opt()?;
    opt.opt()
        .iter::<domain::base::opt::AllOptData<_, _>>()
        .find_map(|option| match option {
            Ok(domain::base::opt::AllOptData::ExtendedError(error)) => Some((
                error.code().to_int(),
                error
                    .text()
                    .and_then(|text| text.ok())
                    .map(|text| text.to_string())
                    .unwrap_or_default(),
            )),
            _ => None,
        })
}

/// When nothing stale is known: an upstream's own error other than SERVFAIL (REFUSED here)
/// becomes SERVFAIL with Extended DNS Error 22 saying so, since passed on it would say
/// that tundns refused; an upstream's SERVFAIL is passed on as it came.
#[test]
fn every_upstream_failing_with_an_error_gives_servfail_that_says_why() {
    let clock = Clock::new();
    let resolver = resolver(false);
    let now = clock.at_millis(0);
    for (rcode, expected_text) in [
        (5, Some("no upstream answered; the last said REFUSED")),
        (4, Some("no upstream answered; the last said NOTIMP")),
        (2, None),
    ] {
        let mut forwarding = Forwarding::new(64);
        let request = edns_query(5, "error.lab.test");
        let asked = asked_upstream(&resolver, &mut forwarding, 1, &request, now);
        let failed = Err(ResolveError::AllFailed {
            attempts: 1,
            soft_answer: Some(Bytes::from(answer(&request, 0, 0, rcode, false))),
        });
        let answers = settle(&mut forwarding, &resolver, asked[0].id, failed, now);
        let answer = &answers[0].answer;
        assert_eq!(
            (answers[0].path, rcode_of(answer)),
            (AnswerPath::Servfail, 2),
            "upstream rcode {rcode}"
        );
        assert_eq!(id_of(answer), 5);
        assert_eq!(
            extended_error(answer),
            expected_text.map(|text| (22, text.to_owned())),
            "upstream rcode {rcode}"
        );
    }

    // Timeouts alone: SERVFAIL with the same code; no EDE for a client without EDNS.
    let mut forwarding = Forwarding::new(64);
    let request = edns_query(6, "silent.lab.test");
    let asked = asked_upstream(&resolver, &mut forwarding, 1, &request, now);
    let answers = settle(&mut forwarding, &resolver, asked[0].id, all_failed(), now);
    assert_eq!(
        extended_error(&answers[0].answer),
        Some((22, "no upstream answered".to_owned()))
    );
    let request = query(7, "silent.lab.test");
    let asked = asked_upstream(&resolver, &mut forwarding, 1, &request, now);
    let answers = settle(&mut forwarding, &resolver, asked[0].id, all_failed(), now);
    assert_eq!(rcode_of(&answers[0].answer), 2);
    assert_eq!(extended_error(&answers[0].answer), None);
}

#[test]
fn a_cname_into_a_blocked_domain_is_answered_as_blocked_and_cached_so() {
    let clock = Clock::new();
    let resolver = resolver(true);
    let mut list = BlockList::new(BlockMode::NxDomain, Duration::from_secs(60));
    list.add_domain("tracker.test").unwrap();
    resolver.set_blocklist(list);
    let mut forwarding = Forwarding::new(64);
    let now = clock.at_millis(0);
    let asked_query = query(6, "metrics.lab.test");
    ask(&resolver, &mut forwarding, 1, &asked_query, now).unwrap();
    let asked = requests(&mut forwarding);
    // metrics.lab.test CNAME tracker.test.
    let cloaked = CannedAnswer::to(&asked[0].query)
        .question_record(300, Data::Cname("tracker.test".into()))
        .build();
    let result = Ok(Answer {
        response: Bytes::from(cloaked),
        upstream: "udp://192.0.2.53:53".into(),
    });
    let answers = settle(&mut forwarding, &resolver, asked[0].id, result, now);
    assert_eq!(answers[0].path, AnswerPath::Blocked);
    assert_eq!(rcode_of(&answers[0].answer), 3, "NXDOMAIN");
    let again = ask(
        &resolver,
        &mut forwarding,
        2,
        &query(7, "metrics.lab.test"),
        now,
    );
    assert!(
        matches!(again, Err((_, AnswerPath::Cache))),
        "answered from memory next time"
    );
    // Answered from memory, it still says why, as the blocklist's own answers do.
    let mut out = vec![0; MAX_MESSAGE_LEN];
    let with_edns = edns_query(8, "metrics.lab.test");
    let Inline::Answered(hit) = resolver.answer_inline(&with_edns, Protocol::Udp, now, &mut out)
    else {
        panic!("a cache hit");
    };
    assert_eq!(rcode_of(&out[..hit.len]), 3, "NXDOMAIN");
    assert_eq!(
        extended_error(&out[..hit.len]),
        Some((15, String::new())),
        "Blocked"
    );
}

#[test]
fn a_query_that_missed_just_before_the_answer_arrived_is_answered_from_the_cache() {
    let clock = Clock::new();
    let resolver = resolver(true);
    let mut forwarding = Forwarding::new(64);
    let now = clock.at_millis(0);
    ask(
        &resolver,
        &mut forwarding,
        1,
        &query(1, "race.lab.test"),
        now,
    )
    .unwrap();
    // The second query misses inline while the first is still asking...
    let second = query(2, "race.lab.test");
    let mut out = vec![0; MAX_MESSAGE_LEN];
    let Inline::Miss(miss) = resolver.answer_inline(&second, Protocol::Udp, now, &mut out) else {
        panic!("a miss: nothing is cached yet");
    };
    // ...and the answer lands before it reaches the forwarding table.
    let asked = requests(&mut forwarding);
    settle(
        &mut forwarding,
        &resolver,
        asked[0].id,
        upstream_answer(&asked[0], 3, 300),
        now,
    );
    match forwarding.handle_miss(&resolver, 2, miss, now, &mut out) {
        Admission::Answered {
            client: 2,
            len,
            path: AnswerPath::Cache,
        } => {
            assert_eq!(id_of(&out[..len]), 2);
            assert_eq!(marker_of(&out[..len]), 3);
        }
        _ => panic!("expected the late cache hit"),
    }
    assert!(
        requests(&mut forwarding).is_empty(),
        "no second upstream request"
    );
}

#[test]
fn a_local_chain_whose_target_became_local_is_never_asked_upstream() {
    let clock = Clock::new();
    let resolver = resolver(false);
    let mut local = LocalDataBuilder::new();
    local
        .add_record("mail.home.test CNAME mail.example.test")
        .unwrap();
    resolver.set_local(local.build());
    let mut forwarding = Forwarding::new(64);
    let now = clock.at_millis(0);
    let asked = query(8, "mail.home.test");
    let mut out = vec![0; MAX_MESSAGE_LEN];
    let Inline::Miss(miss) = resolver.answer_inline(&asked, Protocol::Udp, now, &mut out) else {
        panic!("a chain leading out of local data misses inline");
    };
    // Between the inline look and the table, the chain's target became a local name.
    let mut local = LocalDataBuilder::new();
    local
        .add_record("mail.home.test CNAME mail.example.test")
        .unwrap();
    local.add_record("mail.example.test A 192.0.2.25").unwrap();
    resolver.set_local(local.build());
    match forwarding.handle_miss(&resolver, 1, miss, now, &mut out) {
        Admission::Answered {
            path: AnswerPath::Servfail,
            len,
            ..
        } => assert_eq!(rcode_of(&out[..len]), 2),
        _ => panic!("expected SERVFAIL at once"),
    }
    assert!(
        requests(&mut forwarding).is_empty(),
        "nothing asked upstream"
    );
}

/// The TTL of the answer's one A record, as the client sees it.
fn answer_ttl(message: &[u8]) -> u32 {
    let message = domain::base::Message::from_octets(message).unwrap();
    let record = message.answer().unwrap().next().unwrap().unwrap();
    record.ttl().as_secs()
}

#[test]
fn the_first_forwarded_answer_carries_the_ttls_the_cache_will_serve() {
    for (config, upstream_ttl, expected) in [
        (
            CacheConfig {
                max_ttl: Duration::from_secs(60),
                ..CacheConfig::default()
            },
            300,
            60,
        ),
        (
            CacheConfig {
                min_ttl: Duration::from_secs(600),
                ..CacheConfig::default()
            },
            300,
            600,
        ),
    ] {
        let clock = Clock::new();
        let resolver = Resolver::new(
            BlockList::new(BlockMode::NxDomain, Duration::from_secs(60)),
            LocalDataBuilder::new().build(),
            Some(Cache::new(config)),
            Upstreams {
                routes: Routes::new(0),
                groups: vec!["public"],
            },
        );
        let mut forwarding = Forwarding::new(64);
        let now = clock.at_millis(0);
        let asked = asked_upstream(
            &resolver,
            &mut forwarding,
            1,
            &query(7, "ttl.lab.test"),
            now,
        );
        let answers = settle(
            &mut forwarding,
            &resolver,
            asked[0].id,
            upstream_answer(&asked[0], 1, upstream_ttl),
            now,
        );
        assert_eq!(answer_ttl(&answers[0].answer), expected, "forwarded");
        let hit = ask(
            &resolver,
            &mut forwarding,
            2,
            &query(8, "ttl.lab.test"),
            now,
        );
        assert!(matches!(hit, Err((_, AnswerPath::Cache))));
    }
}

/// Sends `query` inline, expecting a cache hit, and says whether it is due for prefetch.
fn hit_due_for_prefetch(resolver: &Resolver<Group>, query: &[u8], now: std::time::Instant) -> bool {
    let mut out = vec![0; MAX_MESSAGE_LEN];
    match resolver.answer_inline(query, Protocol::Udp, now, &mut out) {
        Inline::Answered(answered) => {
            assert_eq!(answered.path, AnswerPath::Cache);
            answered.prefetch
        }
        _ => panic!("a cache hit expected"),
    }
}

/// A resolver whose cache holds `popular.lab.test` A, answered at 0 ms with a TTL of
/// 100 s (marker 1), and its forwarding with nothing in flight.
fn popular_name_cached_for_100_seconds() -> (Clock, Resolver<Group>, Forwarding<u32, Group>) {
    let clock = Clock::new();
    let resolver = resolver(true);
    let mut forwarding = Forwarding::new(64);
    let asked = asked_upstream(
        &resolver,
        &mut forwarding,
        1,
        &query(1, "popular.lab.test"),
        clock.at_millis(0),
    );
    settle(
        &mut forwarding,
        &resolver,
        asked[0].id,
        upstream_answer(&asked[0], 1, 100),
        clock.at_millis(0),
    );
    (clock, resolver, forwarding)
}

#[test]
fn a_hit_near_expiry_is_answered_at_once_and_refreshed_once_in_the_background() {
    let (clock, resolver, mut forwarding) = popular_name_cached_for_100_seconds();
    assert!(!hit_due_for_prefetch(
        &resolver,
        &query(2, "popular.lab.test"),
        clock.at_millis(89_000)
    ));

    // In the last tenth: the client is answered from the cache, and one refresh is asked.
    let late = clock.at_millis(95_000);
    let second = query(3, "POPULAR.lab.test");
    assert!(hit_due_for_prefetch(&resolver, &second, late));
    let parsed = tundns_dns::parse_query(&second).unwrap();
    assert_eq!(forwarding.prefetch(&resolver, &parsed), Prefetch::Asked);
    assert_eq!(
        forwarding.prefetch(&resolver, &parsed),
        Prefetch::InFlight,
        "one refresh in flight per entry"
    );
    let refresh = requests(&mut forwarding);
    assert_eq!(refresh.len(), 1);
    assert_eq!(refresh[0].group, "public");
    assert_eq!(forwarding.waiting().0, 0, "no client waits for it");

    // Its answer goes to the cache alone: a fresh entry, no longer due.
    let answers = settle(
        &mut forwarding,
        &resolver,
        refresh[0].id,
        upstream_answer(&refresh[0], 2, 100),
        late,
    );
    assert!(answers.is_empty());
    let fourth = query(4, "popular.lab.test");
    let mut out = vec![0; MAX_MESSAGE_LEN];
    let Inline::Answered(answered) =
        resolver.answer_inline(&fourth, Protocol::Udp, clock.at_millis(150_000), &mut out)
    else {
        panic!("the refreshed entry is still fresh after the old one expired");
    };
    assert!(!answered.prefetch);
    assert_eq!(marker_of(&out[..answered.len]), 2);
}

#[test]
fn a_refresh_that_failed_is_not_asked_again_on_every_hit() {
    let (clock, resolver, mut forwarding) = popular_name_cached_for_100_seconds();
    let late = clock.at_millis(95_000);
    let second = query(2, "popular.lab.test");
    assert!(hit_due_for_prefetch(&resolver, &second, late));
    let parsed = tundns_dns::parse_query(&second).unwrap();
    assert_eq!(forwarding.prefetch(&resolver, &parsed), Prefetch::Asked);
    let refresh = requests(&mut forwarding);
    assert!(
        settle(
            &mut forwarding,
            &resolver,
            refresh[0].id,
            all_failed(),
            late
        )
        .is_empty()
    );
    // The old entry still answers, and asks no more: it expires as if never prefetched.
    for (id, millis) in [(3, 96_000), (4, 99_000)] {
        assert!(!hit_due_for_prefetch(
            &resolver,
            &query(id, "popular.lab.test"),
            clock.at_millis(millis)
        ));
    }
}

#[test]
fn prefetch_never_takes_the_slots_clients_wait_in() {
    let clock = Clock::new();
    let resolver = resolver(true);
    let mut forwarding = Forwarding::new(1);
    let waiting = asked_upstream(
        &resolver,
        &mut forwarding,
        1,
        &query(1, "slow.lab.test"),
        clock.at_millis(0),
    );
    assert_eq!(waiting.len(), 1);
    let other = query(2, "other.lab.test");
    let parsed = tundns_dns::parse_query(&other).unwrap();
    assert_eq!(forwarding.prefetch(&resolver, &parsed), Prefetch::Full);
    assert!(requests(&mut forwarding).is_empty());
}

//! The answer cache and the response rewriters, checked through `domain`.

use std::time::{Duration, Instant};

use domain::base::Message;
use domain::base::iana::{Class, OptionCode, Rtype};
use tundns_dns::cache::{Cache, CacheConfig, STALE_TTL};
use tundns_dns::{
    ADVERTISED_UDP_PAYLOAD, HEADER_LEN, OptRcode, Query, Rcode, adapt_response,
    clamp_edns_udp_size, parse_query,
};
use tundns_test_support::dns::{self, Answer, Data, Edns};

#[derive(Clone, Copy, Default)]
struct Flags {
    edns: bool,
    dnssec_ok: bool,
    checking_disabled: bool,
}

const EDNS: Flags = Flags {
    edns: true,
    dnssec_ok: false,
    checking_disabled: false,
};

fn query(id: u16, qname: &str, qtype: Rtype, flags: Flags) -> Vec<u8> {
    let query = dns::Query::new(qname, qtype)
        .id(id)
        .checking_disabled(flags.checking_disabled);
    if flags.edns {
        let edns = Edns::new(4096)
            .dnssec_ok(flags.dnssec_ok)
            .option(OptionCode::COOKIE, &[7; 8]);
        query.edns(edns).build()
    } else {
        query.build()
    }
}

/// An upstream answer to `request`, compressed, AA and RA set, with an OPT carrying a
/// cookie when the request had EDNS; `body` adds the records.
fn response(request: &[u8], rcode: Rcode, body: impl FnOnce(Answer<'_>) -> Answer<'_>) -> Vec<u8> {
    let mut answer = Answer::to(request)
        .rcode(rcode)
        .compressed()
        .authoritative()
        .recursion_available();
    if let Some(opt) = Message::from_octets(request).unwrap().opt() {
        let edns = Edns::new(1232)
            .dnssec_ok(opt.dnssec_ok())
            .option(OptionCode::COOKIE, &[8; 16]);
        answer = answer.edns(edns);
    }
    body(answer).build()
}

/// A records with these TTLs, owned by the question name.
fn positive(request: &[u8], ttls: &[u32]) -> Vec<u8> {
    response(request, Rcode::NOERROR, |answer| {
        ttls.iter().enumerate().fold(answer, |answer, (i, &ttl)| {
            answer.a(ttl, [192, 0, 2, i as u8])
        })
    })
}

/// The SOA of `example` with this MINIMUM.
fn soa(minimum: u32) -> Data {
    Data::Soa {
        mname: "ns.example".into(),
        rname: "hostmaster.example".into(),
        minimum,
    }
}

/// NXDOMAIN or NODATA with an SOA of this TTL and MINIMUM.
fn negative(request: &[u8], rcode: Rcode, soa_ttl: u32, minimum: u32) -> Vec<u8> {
    response(request, rcode, |answer| {
        answer.authority("example", soa_ttl, soa(minimum))
    })
}

fn parsed(bytes: &[u8]) -> Query<'_> {
    parse_query(bytes).unwrap()
}

struct Lab {
    cache: Cache,
    t0: Instant,
}

impl Lab {
    fn new(config: CacheConfig) -> Lab {
        Lab {
            cache: Cache::new(config),
            t0: Instant::now(),
        }
    }

    fn at(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs)
    }

    fn insert(&self, request: &[u8], response: &[u8]) -> bool {
        self.cache.insert(&parsed(request), response, self.t0)
    }

    fn lookup(&self, request: &[u8], secs: f64) -> Option<Vec<u8>> {
        let mut out = [0u8; 65535];
        let len = self
            .cache
            .lookup(&parsed(request), self.at(secs), &mut out)?;
        Some(out[..len].to_vec())
    }

    fn lookup_stale(&self, request: &[u8], secs: f64) -> Option<Vec<u8>> {
        let mut out = [0u8; 65535];
        let len = self
            .cache
            .lookup_stale(&parsed(request), self.at(secs), &mut out)?;
        Some(out[..len].to_vec())
    }
}

/// TTLs of every record but OPT, in message order.
fn ttls(message: &[u8]) -> Vec<u32> {
    let message = Message::from_octets(message).unwrap();
    let mut ttls = Vec::new();
    for section in [
        message.answer().unwrap(),
        message.authority().unwrap(),
        message.additional().unwrap(),
    ] {
        for record in section {
            let record = record.unwrap();
            if record.rtype() != Rtype::OPT {
                ttls.push(record.ttl().as_secs());
            }
        }
    }
    ttls
}

// ---- positive answers and TTLs ----

#[test]
fn a_second_look_counts_each_query_once() {
    let lab = Lab::new(CacheConfig::default());
    let request = query(1, "www.example.com", Rtype::A, EDNS);
    let look_again = |secs| {
        let mut out = [0u8; 512];
        lab.cache
            .lookup_again(&parsed(&request), lab.at(secs), &mut out)
    };
    // Missed inline, and still missing when the forwarding task looks again: one miss.
    assert_eq!(lab.lookup(&request, 0.0), None);
    assert_eq!(look_again(0.0), None);
    assert_eq!((lab.cache.hits(), lab.cache.misses()), (0, 1));
    // Missed inline, then filled by an identical query before the second look: a hit.
    assert_eq!(lab.lookup(&request, 0.5), None);
    assert!(lab.insert(&request, &positive(&request, &[300])));
    assert!(look_again(1.0).is_some());
    assert_eq!((lab.cache.hits(), lab.cache.misses()), (1, 1));
}

#[test]
fn hit_counts_ttls_down() {
    let lab = Lab::new(CacheConfig::default());
    let request = query(1, "www.example.com", Rtype::A, EDNS);
    assert!(lab.insert(&request, &positive(&request, &[300, 100])));
    assert_eq!(ttls(&lab.lookup(&request, 0.0).unwrap()), [300, 100]);
    assert_eq!(ttls(&lab.lookup(&request, 0.99).unwrap()), [300, 100]);
    assert_eq!(ttls(&lab.lookup(&request, 10.5).unwrap()), [290, 90]);
    assert_eq!(ttls(&lab.lookup(&request, 99.9).unwrap()), [201, 1]);
    // Expired with the smallest TTL of the answer.
    assert_eq!(lab.lookup(&request, 100.0), None);
    assert_eq!((lab.cache.hits(), lab.cache.misses()), (4, 1));
    // A time before the insert counts as no time spent.
    let early = lab.t0 - Duration::from_secs(5);
    let mut out = [0u8; 512];
    let len = lab
        .cache
        .lookup(&parsed(&request), early, &mut out)
        .unwrap();
    assert_eq!(ttls(&out[..len]), [300, 100]);
}

#[test]
fn ttls_never_go_below_zero() {
    let lab = Lab::new(CacheConfig::default());
    let request = query(1, "example.com", Rtype::A, EDNS);
    let upstream = response(&request, Rcode::NOERROR, |answer| {
        answer
            .a(100, [192, 0, 2, 1])
            .authority("example.com", 5, Data::Ns("ns.example.com".into()))
    });
    assert!(lab.insert(&request, &upstream));
    assert_eq!(ttls(&lab.lookup(&request, 50.0).unwrap()), [50, 0]);
}

#[test]
fn min_and_max_ttl_clamp_positive_answers() {
    let lab = Lab::new(CacheConfig {
        min_ttl: Duration::from_secs(60),
        max_ttl: Duration::from_secs(3600),
        ..CacheConfig::default()
    });
    let short = query(1, "short.example", Rtype::A, EDNS);
    let long = query(2, "long.example", Rtype::A, EDNS);
    assert!(lab.insert(&short, &positive(&short, &[10])));
    assert!(lab.insert(&long, &positive(&long, &[86400 * 7])));
    assert_eq!(ttls(&lab.lookup(&short, 0.0).unwrap()), [60]);
    assert_eq!(ttls(&lab.lookup(&short, 59.0).unwrap()), [1]);
    assert_eq!(lab.lookup(&short, 60.0), None);
    assert_eq!(ttls(&lab.lookup(&long, 0.0).unwrap()), [3600]);
    assert_eq!(ttls(&lab.lookup(&long, 3599.0).unwrap()), [1]);
    assert_eq!(lab.lookup(&long, 3600.0), None);
}

#[test]
fn zero_ttl_answers_are_not_cached() {
    let lab = Lab::new(CacheConfig::default());
    let request = query(1, "zero.example", Rtype::A, EDNS);
    assert!(!lab.insert(&request, &positive(&request, &[0, 300])));
    // RFC 2181 §8: a TTL with the top bit set counts as 0.
    assert!(!lab.insert(&request, &positive(&request, &[0x8000_0000])));
    assert!(lab.cache.is_empty());
}

// ---- negative answers (RFC 2308) ----

#[test]
fn nxdomain_is_cached_for_the_soa_minimum() {
    let lab = Lab::new(CacheConfig::default());
    let request = query(1, "gone.example", Rtype::A, EDNS);
    assert!(lab.insert(&request, &negative(&request, Rcode::NXDOMAIN, 3600, 300)));
    let hit = lab.lookup(&request, 100.0).unwrap();
    assert_eq!(
        Message::from_octets(&hit[..]).unwrap().header().rcode(),
        Rcode::NXDOMAIN
    );
    // The SOA's TTL is the negative TTL, counted down.
    assert_eq!(ttls(&hit), [200]);
    assert!(lab.lookup(&request, 299.0).is_some());
    assert_eq!(lab.lookup(&request, 300.0), None);
}

#[test]
fn negative_ttl_is_capped_by_the_soa_ttl() {
    let lab = Lab::new(CacheConfig::default());
    let request = query(1, "gone.example", Rtype::A, EDNS);
    assert!(lab.insert(&request, &negative(&request, Rcode::NXDOMAIN, 60, 300)));
    assert_eq!(ttls(&lab.lookup(&request, 0.0).unwrap()), [60]);
    assert_eq!(lab.lookup(&request, 60.0), None);
}

#[test]
fn negative_ttl_is_capped_at_an_hour_unless_configured() {
    let lab = Lab::new(CacheConfig::default());
    let request = query(1, "gone.example", Rtype::A, EDNS);
    assert!(lab.insert(
        &request,
        &negative(&request, Rcode::NXDOMAIN, 86_400, 86_400)
    ));
    assert_eq!(ttls(&lab.lookup(&request, 0.0).unwrap()), [3600]);
    assert_eq!(lab.lookup(&request, 3600.0), None);

    let lab = Lab::new(CacheConfig {
        max_negative_ttl: std::time::Duration::from_secs(30),
        ..CacheConfig::default()
    });
    let request = query(1, "v4only.example", Rtype::AAAA, EDNS);
    assert!(lab.insert(&request, &negative(&request, Rcode::NOERROR, 900, 120)));
    assert_eq!(ttls(&lab.lookup(&request, 0.0).unwrap()), [30]);
    assert_eq!(lab.lookup(&request, 30.0), None);
}

#[test]
fn nodata_is_cached_like_nxdomain() {
    let lab = Lab::new(CacheConfig::default());
    let request = query(1, "v4only.example", Rtype::AAAA, EDNS);
    assert!(lab.insert(&request, &negative(&request, Rcode::NOERROR, 900, 120)));
    let hit = lab.lookup(&request, 0.0).unwrap();
    let message = Message::from_octets(&hit[..]).unwrap();
    assert_eq!(message.header().rcode(), Rcode::NOERROR);
    assert_eq!(message.header_counts().ancount(), 0);
    assert_eq!(ttls(&hit), [120]);
    assert_eq!(lab.lookup(&request, 120.0), None);
}

#[test]
fn nodata_through_a_cname_expires_with_the_cname() {
    let lab = Lab::new(CacheConfig::default());
    let request = query(1, "alias.example", Rtype::AAAA, EDNS);
    let upstream = response(&request, Rcode::NOERROR, |answer| {
        answer
            .question_record(30, Data::Cname("target.example".into()))
            .authority("example", 900, soa(300))
    });
    assert!(lab.insert(&request, &upstream));
    assert_eq!(ttls(&lab.lookup(&request, 0.0).unwrap()), [30, 300]);
    assert_eq!(lab.lookup(&request, 30.0), None);
}

#[test]
fn negative_answers_without_soa_are_not_cached() {
    let lab = Lab::new(CacheConfig::default());
    let request = query(1, "gone.example", Rtype::A, EDNS);
    assert!(!lab.insert(
        &request,
        &response(&request, Rcode::NXDOMAIN, |answer| answer)
    ));
    assert!(!lab.insert(
        &request,
        &response(&request, Rcode::NOERROR, |answer| answer)
    ));
    assert!(lab.cache.is_empty());
}

// ---- what is never cached, or only briefly ----

#[test]
fn servfail_is_short_lived() {
    let lab = Lab::new(CacheConfig::default());
    let request = query(1, "broken.example", Rtype::A, EDNS);
    let servfail = response(&request, Rcode::SERVFAIL, |answer| answer);
    assert!(lab.insert(&request, &servfail));
    let hit = lab.lookup(&request, 4.9).unwrap();
    assert_eq!(
        Message::from_octets(&hit[..]).unwrap().header().rcode(),
        Rcode::SERVFAIL
    );
    assert_eq!(lab.lookup(&request, 5.0), None);
    // Never served stale.
    assert_eq!(lab.lookup_stale(&request, 6.0), None);

    let off = Lab::new(CacheConfig {
        servfail_ttl: Duration::ZERO,
        ..CacheConfig::default()
    });
    assert!(!off.insert(&request, &servfail));
}

#[test]
fn servfail_does_not_replace_a_servable_answer() {
    let lab = Lab::new(CacheConfig {
        serve_stale: Duration::from_secs(100),
        ..CacheConfig::default()
    });
    let request = query(1, "flaky.example", Rtype::A, EDNS);
    let servfail = response(&request, Rcode::SERVFAIL, |answer| answer);
    assert!(lab.insert(&request, &positive(&request, &[60])));
    let mut parsed_request = parsed(&request);
    // Fresh, then stale but servable: the SERVFAIL is not stored.
    assert!(!lab.cache.insert(&parsed_request, &servfail, lab.at(10.0)));
    assert!(!lab.cache.insert(&parsed_request, &servfail, lab.at(150.0)));
    assert!(lab.lookup_stale(&request, 150.0).is_some());
    // Past the stale window it is.
    assert!(lab.cache.insert(&parsed_request, &servfail, lab.at(161.0)));
    parsed_request = parsed(&request);
    let mut out = [0u8; 512];
    let len = lab
        .cache
        .lookup(&parsed_request, lab.at(162.0), &mut out)
        .unwrap();
    assert_eq!(
        Message::from_octets(&out[..len]).unwrap().header().rcode(),
        Rcode::SERVFAIL
    );
}

#[test]
fn truncated_and_other_answers_are_never_cached() {
    let lab = Lab::new(CacheConfig::default());
    let request = query(1, "example.com", Rtype::A, EDNS);
    let mut truncated = positive(&request, &[300]);
    truncated[2] |= 0x02;
    assert!(!lab.insert(&request, &truncated));
    for rcode in [
        Rcode::REFUSED,
        Rcode::NOTIMP,
        Rcode::FORMERR,
        Rcode::YXDOMAIN,
    ] {
        assert!(
            !lab.insert(&request, &response(&request, rcode, |answer| answer)),
            "{rcode}"
        );
    }
    // An extended rcode (BADCOOKIE = 23: header 7, OPT upper bits 1).
    let mut badcookie = positive(&request, &[300]);
    badcookie[3] = (badcookie[3] & 0xf0) | 7;
    let opt_ttl_at = badcookie.len() - 20 - 2 - 4;
    badcookie[opt_ttl_at] = 1;
    assert_eq!(
        Message::from_octets(&badcookie[..]).unwrap().opt_rcode(),
        OptRcode::BADCOOKIE
    );
    assert!(!lab.insert(&request, &badcookie));
    // Malformed: cut short, trailing bytes, counts that lie.
    let good = positive(&request, &[300]);
    for cut in 0..good.len() {
        assert!(!lab.insert(&request, &good[..cut]), "cut at {cut}");
    }
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(!lab.insert(&request, &trailing));
    let mut lying = good.clone();
    lying[7] += 1;
    assert!(!lab.insert(&request, &lying));
    // Not an answer to this question, or not a response.
    let other = query(1, "example.net", Rtype::A, EDNS);
    assert!(!lab.insert(&request, &positive(&other, &[300])));
    let mut not_response = good.clone();
    not_response[2] &= 0x7f;
    assert!(!lab.insert(&request, &not_response));
    assert!(lab.cache.is_empty());
    assert!(lab.insert(&request, &good));
}

// ---- serve-stale (RFC 8767) ----

#[test]
fn stale_is_served_only_within_the_window() {
    let lab = Lab::new(CacheConfig {
        serve_stale: Duration::from_secs(100),
        ..CacheConfig::default()
    });
    let request = query(1, "old.example", Rtype::A, EDNS);
    assert!(lab.insert(&request, &positive(&request, &[60, 600])));
    // Fresh: lookup_stale answers like lookup.
    assert_eq!(ttls(&lab.lookup_stale(&request, 10.0).unwrap()), [50, 590]);
    assert_eq!(lab.cache.stale_hits(), 0);
    // Expired: lookup misses, lookup_stale serves with a 30 s TTL.
    assert_eq!(lab.lookup(&request, 61.0), None);
    let stale = lab.lookup_stale(&request, 61.0).unwrap();
    assert_eq!(ttls(&stale), [STALE_TTL, STALE_TTL]);
    assert_eq!(Message::from_octets(&stale[..]).unwrap().header().id(), 1);
    assert!(lab.lookup_stale(&request, 160.0).is_some());
    assert_eq!(lab.lookup_stale(&request, 160.5), None);
    assert_eq!(lab.cache.stale_hits(), 2);

    let off = Lab::new(CacheConfig {
        serve_stale: Duration::ZERO,
        ..CacheConfig::default()
    });
    assert!(off.insert(&request, &positive(&request, &[60])));
    assert_eq!(off.lookup_stale(&request, 61.0), None);
}

// ---- the key ----

#[test]
fn key_includes_do_and_cd() {
    let lab = Lab::new(CacheConfig::default());
    let plain = query(1, "signed.example", Rtype::A, EDNS);
    let dnssec_ok = Flags {
        dnssec_ok: true,
        ..EDNS
    };
    let with_do = query(2, "signed.example", Rtype::A, dnssec_ok);
    let with_cd = query(
        3,
        "signed.example",
        Rtype::A,
        Flags {
            checking_disabled: true,
            ..EDNS
        },
    );
    assert!(lab.insert(&with_do, &positive(&with_do, &[300])));
    assert_eq!(lab.lookup(&plain, 0.0), None);
    assert_eq!(lab.lookup(&with_cd, 0.0), None);
    let hit = lab.lookup(&with_do, 0.0).unwrap();
    assert!(
        Message::from_octets(&hit[..])
            .unwrap()
            .opt()
            .unwrap()
            .dnssec_ok()
    );
    assert!(lab.insert(&with_cd, &positive(&with_cd, &[300])));
    assert!(lab.lookup(&with_cd, 0.0).is_some());
    assert_eq!(lab.lookup(&plain, 0.0), None);
    // No EDNS at all shares the entry of EDNS without DO.
    assert!(lab.insert(&plain, &positive(&plain, &[300])));
    assert!(
        lab.lookup(&query(4, "signed.example", Rtype::A, Flags::default()), 0.0)
            .is_some()
    );
    assert_eq!(lab.cache.len(), 3);
}

#[test]
fn key_includes_type_and_class() {
    let lab = Lab::new(CacheConfig::default());
    let a = query(1, "example.com", Rtype::A, EDNS);
    assert!(lab.insert(&a, &positive(&a, &[300])));
    assert_eq!(
        lab.lookup(&query(1, "example.com", Rtype::AAAA, EDNS), 0.0),
        None
    );
    let mut chaos = a.clone();
    let class_at = HEADER_LEN + 13 + 2;
    chaos[class_at + 1] = Class::CH.to_int() as u8;
    assert_eq!(lab.lookup(&chaos, 0.0), None);
    assert_eq!(
        lab.lookup(&query(1, "example.org", Rtype::A, EDNS), 0.0),
        None
    );
}

#[test]
fn names_match_case_insensitively_and_hits_keep_the_clients_case() {
    let lab = Lab::new(CacheConfig::default());
    let first = query(1, "WWW.Example.COM", Rtype::A, EDNS);
    assert!(lab.insert(&first, &positive(&first, &[300, 300])));
    let second = query(0xbeef, "www.eXample.com", Rtype::A, EDNS);
    let hit = lab.lookup(&second, 0.0).unwrap();
    let message = Message::from_octets(&hit[..]).unwrap();
    assert_eq!(message.header().id(), 0xbeef);
    let question = message.sole_question().unwrap();
    assert_eq!(question.qname().to_string(), "www.eXample.com");
    // The answers' owners are pointers to the question: the client's case too.
    for record in message.answer().unwrap() {
        assert_eq!(record.unwrap().owner().to_string(), "www.eXample.com");
    }
    // And the stored entry is shared by both spellings.
    assert_eq!(
        Message::from_octets(&lab.lookup(&first, 0.0).unwrap()[..])
            .unwrap()
            .sole_question()
            .unwrap()
            .qname()
            .to_string(),
        "WWW.Example.COM"
    );
    assert_eq!(lab.cache.len(), 1);
}

// ---- the shape of a hit ----

#[test]
fn a_hit_is_the_answer_to_the_clients_query() {
    let lab = Lab::new(CacheConfig::default());
    let first = query(1, "example.com", Rtype::A, EDNS);
    assert!(lab.insert(&first, &positive(&first, &[300])));

    let mut no_rd = query(0x0102, "example.com", Rtype::A, EDNS);
    no_rd[2] &= !0x01;
    let hit = lab.lookup(&no_rd, 0.0).unwrap();
    let message = Message::from_octets(&hit[..]).unwrap();
    let header = message.header();
    assert_eq!(header.id(), 0x0102);
    assert!(header.qr() && header.ra() && !header.rd() && !header.aa() && !header.tc());
    // The upstream's OPT (with its cookie) is replaced by one of our own.
    let opt = message.opt().unwrap();
    assert_eq!(opt.udp_payload_size(), ADVERTISED_UDP_PAYLOAD);
    assert!(opt.opt().is_empty());
    assert_eq!(message.header_counts().arcount(), 1);

    // A client without EDNS gets no OPT.
    let plain = query(7, "example.com", Rtype::A, Flags::default());
    let hit = lab.lookup(&plain, 0.0).unwrap();
    let message = Message::from_octets(&hit[..]).unwrap();
    assert!(message.opt().is_none());
    assert_eq!(message.header_counts().arcount(), 0);
    for record in message.answer().unwrap() {
        record.unwrap();
    }

    // No room in `out`: a miss, nothing written past it.
    let mut small = [0u8; 20];
    assert_eq!(lab.cache.lookup(&parsed(&plain), lab.t0, &mut small), None);
}

// ---- the byte bound ----

#[test]
fn the_byte_bound_evicts() {
    let max_bytes = 256 << 10;
    let cache = Cache::new(CacheConfig {
        max_bytes,
        ..CacheConfig::default()
    });
    let now = Instant::now();
    for i in 0..20_000 {
        let request = query(1, &format!("host{i}.example.com"), Rtype::A, EDNS);
        assert!(cache.insert(&parsed(&request), &positive(&request, &[300]), now));
        assert!(cache.weight() <= max_bytes as u64);
    }
    assert!(cache.len() < 20_000 / 4, "{} entries", cache.len());
    assert!(cache.weight() > max_bytes as u64 / 2);
    cache.clear();
    assert_eq!((cache.len(), cache.weight()), (0, 0));
    // An answer larger than a shard is refused, not silently dropped.
    let tiny = Cache::new(CacheConfig {
        max_bytes: 64,
        ..CacheConfig::default()
    });
    let request = query(1, "example.com", Rtype::A, EDNS);
    assert!(!tiny.insert(&parsed(&request), &positive(&request, &[300]), now));
}

// ---- adapt_response ----

#[test]
fn adapt_rewrites_id_case_rd_and_opt() {
    let first = query(1, "Shared.Example", Rtype::A, EDNS);
    let upstream = positive(&first, &[300, 300]);
    let mut second = query(
        0x4444,
        "sHARED.example",
        Rtype::A,
        Flags {
            dnssec_ok: false,
            ..EDNS
        },
    );
    second[2] &= !0x01;
    let mut out = vec![0u8; upstream.len() + 11];
    let len = adapt_response(&upstream, &parsed(&second), &mut out);
    assert!(len > 0);
    let message = Message::from_octets(&out[..len]).unwrap();
    assert_eq!(message.header().id(), 0x4444);
    assert!(!message.header().rd());
    assert!(message.header().aa(), "only the cache clears AA");
    assert_eq!(
        message.sole_question().unwrap().qname().to_string(),
        "sHARED.example"
    );
    for record in message.answer().unwrap() {
        assert_eq!(record.unwrap().owner().to_string(), "sHARED.example");
    }
    let opt = message.opt().unwrap();
    assert!(opt.opt().is_empty(), "the first client's cookie is dropped");
    assert_eq!(ttls(&out[..len]), [300, 300]);

    // Without EDNS: no OPT; with EDNS but an upstream without: one is added.
    let plain = query(5, "shared.example", Rtype::A, Flags::default());
    let len = adapt_response(&upstream, &parsed(&plain), &mut out);
    assert!(Message::from_octets(&out[..len]).unwrap().opt().is_none());
    let bare = positive(&plain, &[300]);
    let len = adapt_response(&bare, &parsed(&second), &mut out);
    assert_eq!(len, bare.len() + 11);
    assert!(Message::from_octets(&out[..len]).unwrap().opt().is_some());
    assert_eq!(
        adapt_response(&bare, &parsed(&second), &mut out[..bare.len()]),
        0
    );

    // Not an answer to this question, malformed, or not a response: 0.
    let other = query(5, "other.example", Rtype::A, EDNS);
    assert_eq!(adapt_response(&upstream, &parsed(&other), &mut out), 0);
    assert_eq!(
        adapt_response(&upstream[..upstream.len() - 1], &parsed(&second), &mut out),
        0
    );
    assert_eq!(adapt_response(&second, &parsed(&second), &mut out), 0);
}

// ---- clamp_edns_udp_size ----

#[test]
fn clamps_the_advertised_udp_size() {
    let mut msg = query(1, "example.com", Rtype::A, EDNS);
    clamp_edns_udp_size(&mut msg, 1232);
    assert_eq!(parsed(&msg).edns().unwrap().udp_payload_size, 1232);
    clamp_edns_udp_size(&mut msg, 4096);
    assert_eq!(parsed(&msg).edns().unwrap().udp_payload_size, 1232);
    let mut plain = query(1, "example.com", Rtype::A, Flags::default());
    let before = plain.clone();
    clamp_edns_udp_size(&mut plain, 512);
    assert_eq!(plain, before);
    let mut garbage = vec![0xffu8; 40];
    clamp_edns_udp_size(&mut garbage, 512);
    assert_eq!(garbage, vec![0xff; 40]);
}

#[test]
fn a_changed_route_forgets_the_names_under_it() {
    let lab = Lab::new(CacheConfig::default());
    let names = [
        "corp.test",
        "db.corp.test",
        "DB.Corp.Test",
        "x.other.test",
        "corp.test.example",
    ];
    let requests: Vec<Vec<u8>> = names
        .iter()
        .map(|name| query(1, name, Rtype::A, EDNS))
        .collect();
    for request in &requests[..2] {
        assert!(lab.insert(request, &negative(request, Rcode::NXDOMAIN, 3600, 300)));
    }
    for request in &requests[3..] {
        assert!(lab.insert(request, &positive(request, &[300])));
    }
    assert_eq!(lab.cache.forget_under(&["Corp.Test."]), 2);
    assert_eq!(lab.lookup(&requests[1], 0.0), None);
    assert_eq!(lab.lookup(&requests[2], 0.0), None, "any spelling");
    assert!(
        lab.lookup(&requests[3], 0.0).is_some(),
        "another domain stays"
    );
    assert!(
        lab.lookup(&requests[4], 0.0).is_some(),
        "a name that only starts alike stays"
    );
    assert_eq!(lab.cache.forget_under(&["not a name!"]), 0);
    assert_eq!(lab.cache.forget_under(&["."]), 2);
    assert!(lab.cache.is_empty());
}

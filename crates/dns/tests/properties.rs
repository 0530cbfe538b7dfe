//! Property tests: no input panics, and what we accept or write agrees with
//! `domain`'s independent parser.

use domain::base::Message;
use domain::base::iana::{Class, Rtype};
use domain::base::name::ToLabelIter;
use proptest::prelude::*;
use std::time::{Duration, Instant};
use tundns_dns::tcp::FrameDecoder;
use tundns_test_support::dns::{Answer, Edns, Query};

use tundns_dns::cache::{Cache, CacheConfig};
use tundns_dns::{
    MAX_SYNTHESIZED_LEN, QueryError, Rcode, adapt_response, clamp_edns_udp_size, parse_query,
    response_matches, write_error_response, write_truncated,
};

fn arb_label() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9-]{1,20}"
}

fn arb_query() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u16>(),
        prop::collection::vec(arb_label(), 0..6),
        prop::sample::select(vec![
            Rtype::A,
            Rtype::AAAA,
            Rtype::MX,
            Rtype::TXT,
            Rtype::ANY,
        ]),
        any::<bool>(),
        prop::option::of((any::<u16>(), any::<bool>())),
    )
        .prop_map(|(id, labels, qtype, rd, edns)| {
            let text = if labels.is_empty() {
                ".".to_owned()
            } else {
                labels.join(".")
            };
            let query = Query::new(&text, qtype).id(id).recursion_desired(rd);
            match edns {
                Some((size, dnssec_ok)) => query.edns(Edns::new(size).dnssec_ok(dnssec_ok)),
                None => query,
            }
            .build()
        })
}

/// A valid query with some bytes overwritten: exercises the paths just past validity.
fn arb_mutated_query() -> impl Strategy<Value = Vec<u8>> {
    (
        arb_query(),
        prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    )
        .prop_map(|(mut msg, edits)| {
            for (at, byte) in edits {
                let len = msg.len();
                msg[at % len] = byte;
            }
            msg
        })
}

const RCODES: [Rcode; 4] = [
    Rcode::FORMERR,
    Rcode::SERVFAIL,
    Rcode::NOTIMP,
    Rcode::REFUSED,
];

fn exercise_everything(bytes: &[u8]) {
    let _ = parse_query(bytes);
    let mut buf = [0u8; MAX_SYNTHESIZED_LEN];
    for rcode in RCODES {
        let len = write_error_response(bytes, rcode, &mut buf);
        assert!(len <= buf.len());
    }
    let mut small = [0u8; 40];
    let _ = write_truncated(bytes, &mut buf);
    let _ = write_truncated(bytes, &mut small);
    let valid = parse_query(b"\0\x01\x01\0\0\x01\0\0\0\0\0\0\x01a\0\0\x01\0\x01").unwrap();
    let _ = response_matches(1, valid.question(), bytes);
    exercise_rewriters(&valid, bytes);
    if let Ok(query) = parse_query(bytes) {
        exercise_rewriters(&query, bytes);
    }
    let mut copy = bytes.to_vec();
    clamp_edns_udp_size(&mut copy, 512);
    let mut decoder = FrameDecoder::new(512);
    decoder.push(bytes);
    for _ in 0..bytes.len() {
        match decoder.next_message() {
            Ok(Some(_)) => {}
            _ => break,
        }
    }
}

/// Bytes as an upstream response to `query`: cache insert and lookups, adapting.
fn exercise_rewriters(query: &tundns_dns::Query<'_>, bytes: &[u8]) {
    let cache = Cache::new(CacheConfig::default());
    let now = Instant::now();
    let mut out = vec![0u8; 65535];
    let mut response = bytes.to_vec();
    if response.len() > 2 {
        response[2] |= 0x80;
    }
    for candidate in [bytes, &response[..]] {
        if cache.insert(query, candidate, now) {
            let len = cache.lookup(query, now, &mut out).expect("fresh entry");
            Message::from_octets(&out[..len]).expect("cache hit reads");
        }
        let _ = cache.lookup_stale(query, now + Duration::from_secs(100_000), &mut out);
        let _ = cache.lookup(query, now, &mut out[..20]);
        let len = adapt_response(candidate, query, &mut out);
        assert!(len <= candidate.len() + 11);
        let _ = adapt_response(candidate, query, &mut out[..candidate.len() / 2]);
    }
}

/// What `domain` reads in an error response must be what the query asked.
fn check_error_response(query: &[u8], rcode: Rcode) {
    let parsed = parse_query(query).unwrap();
    let mut buf = [0u8; MAX_SYNTHESIZED_LEN];
    let len = write_error_response(query, rcode, &mut buf);
    let response = Message::from_octets(&buf[..len]).expect("header");
    assert_eq!(response.header().id(), parsed.id());
    assert_eq!(response.header().rcode(), rcode);
    assert!(response.header().qr());
    assert_eq!(response.header().rd(), parsed.recursion_desired());
    let question = response.sole_question().expect("question");
    assert_eq!(question.qtype(), Rtype::from_int(parsed.question().qtype()));
    assert_eq!(
        question.qclass(),
        Class::from_int(parsed.question().qclass())
    );
    let mut name = Vec::new();
    for label in question.qname().iter_labels() {
        name.push(label.len() as u8);
        name.extend(label.as_slice().iter().map(u8::to_ascii_lowercase));
    }
    assert_eq!(name, parsed.question().name_wire());
    assert_eq!(response.header_counts().ancount(), 0);
    assert_eq!(response.header_counts().nscount(), 0);
    assert_eq!(
        response.opt().is_some(),
        parsed.edns().is_some() && rcode != Rcode::FORMERR
    );
    // The response is well-formed to the end: every record parses.
    for section in [response.answer(), response.authority()] {
        for record in section.unwrap() {
            record.unwrap();
        }
    }
    assert!(response_matches(
        parsed.id(),
        parsed.question(),
        &buf[..len]
    ));
}

/// An upstream answer to `query`: `ttls.len()` A records with these TTLs.
fn upstream_answer(query: &[u8], ttls: &[u32]) -> Vec<u8> {
    let mut answer = Answer::to(query);
    for (i, &ttl) in ttls.iter().enumerate() {
        answer = answer.a(ttl, [192, 0, 2, i as u8]);
    }
    answer.build()
}

/// The lowercase wire form of a name read by `domain`.
fn lowercase_wire(name: impl ToLabelIter) -> Vec<u8> {
    let mut wire = Vec::new();
    for label in name.iter_labels() {
        wire.push(label.len() as u8);
        wire.extend(label.as_slice().iter().map(u8::to_ascii_lowercase));
    }
    wire
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_responses_to_a_real_query_never_panic(
        query in arb_query(),
        bytes in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        if let Ok(parsed) = parse_query(&query) {
            exercise_rewriters(&parsed, &bytes);
        }
    }

    /// A stored answer read back through `domain`: the second client's ID, its
    /// exact question, the records, TTLs counted down.
    #[test]
    fn cache_hits_round_trip(
        query in arb_query(),
        ttls in prop::collection::vec(1u32..100_000, 1..8),
        second_id in any::<u16>(),
        flip_case in prop::collection::vec(any::<bool>(), 0..64),
        elapsed in 0u64..200_000,
    ) {
        // Answers are A records: ask for A (or ANY, which they also answer).
        let mut query = query;
        let qtype_at = 12 + parse_query(&query).unwrap().question_wire().len() - 4;
        if query[qtype_at + 1] != 255 {
            query[qtype_at..qtype_at + 2].copy_from_slice(&[0, 1]);
        }
        let parsed = parse_query(&query).unwrap();
        let response = upstream_answer(&query, &ttls);
        let cache = Cache::new(CacheConfig::default());
        let now = Instant::now();
        prop_assert!(cache.insert(&parsed, &response, now));

        // The same question from another client, in another case.
        let mut second = query.clone();
        second[..2].copy_from_slice(&second_id.to_be_bytes());
        let question_len = parsed.question_wire().len() - 4;
        for (at, flip) in flip_case.iter().enumerate().take(question_len) {
            let byte = &mut second[12 + at];
            if *flip && byte.is_ascii_alphabetic() {
                *byte ^= 0x20;
            }
        }
        let second_parsed = parse_query(&second).unwrap();
        let mut out = vec![0u8; 65535];
        let lookup = cache.lookup(&second_parsed, now + Duration::from_secs(elapsed), &mut out);
        // The default maximum TTL is a day.
        let ttls: Vec<u32> = ttls.iter().map(|ttl| (*ttl).min(86_400)).collect();
        let min_ttl = *ttls.iter().min().unwrap();
        if elapsed >= u64::from(min_ttl) {
            prop_assert_eq!(lookup, None);
            return Ok(());
        }
        let len = lookup.unwrap();
        let message = Message::from_octets(&out[..len]).unwrap();
        prop_assert_eq!(message.header().id(), second_id);
        prop_assert_eq!(message.header().rd(), second_parsed.recursion_desired());
        prop_assert_eq!(&out[12..12 + question_len + 4], second_parsed.question_wire());
        let question = message.sole_question().unwrap();
        prop_assert_eq!(lowercase_wire(question.qname()), second_parsed.question().name_wire());
        let records: Vec<_> = message.answer().unwrap().map(|record| record.unwrap()).collect();
        prop_assert_eq!(records.len(), ttls.len());
        for (record, ttl) in records.iter().zip(&ttls) {
            prop_assert_eq!(u64::from(record.ttl().as_secs()), u64::from(*ttl) - elapsed);
        }
        prop_assert_eq!(message.opt().is_some(), second_parsed.edns().is_some());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        exercise_everything(&bytes);
    }

    #[test]
    fn mutated_queries_never_panic(bytes in arb_mutated_query()) {
        exercise_everything(&bytes);
    }

    #[test]
    fn built_queries_parse(query in arb_query()) {
        let parsed = parse_query(&query).unwrap();
        let message = Message::from_octets(&query[..]).unwrap();
        prop_assert_eq!(parsed.id(), message.header().id());
        prop_assert_eq!(parsed.edns().is_some(), message.opt().is_some());
    }

    #[test]
    fn error_responses_round_trip(query in arb_query(), rcode in prop::sample::select(RCODES.to_vec())) {
        check_error_response(&query, rcode);
    }

    /// Whatever `parse_query` accepts, `domain` reads with the same question,
    /// and the error response to it round-trips.
    #[test]
    fn accepted_mutations_agree_with_domain(bytes in arb_mutated_query()) {
        if let Ok(parsed) = parse_query(&bytes) {
            let message = Message::from_octets(&bytes[..]).unwrap();
            let question = message.sole_question().unwrap();
            prop_assert_eq!(question.qtype().to_int(), parsed.question().qtype());
            check_error_response(&bytes, Rcode::SERVFAIL);
            check_error_response(&bytes, Rcode::FORMERR);
        } else if let Err(QueryError::Answer(rcode)) = parse_query(&bytes) {
            let mut buf = [0u8; MAX_SYNTHESIZED_LEN];
            let len = write_error_response(&bytes, rcode, &mut buf);
            let response = Message::from_octets(&buf[..len]).unwrap();
            prop_assert_eq!(response.header().id(), u16::from_be_bytes([bytes[0], bytes[1]]));
            prop_assert!(response.header_counts().qdcount() <= 1);
            if response.header_counts().qdcount() == 1 {
                response.sole_question().unwrap();
            }
        }
    }

    /// A truncated response always reads as header + question (+ OPT) with TC.
    #[test]
    fn truncated_responses_are_well_formed(bytes in arb_mutated_query()) {
        let mut response = bytes.clone();
        response[2] |= 0x80;
        let mut buf = [0u8; 512];
        let len = write_truncated(&response, &mut buf);
        let message = Message::from_octets(&buf[..len]).unwrap();
        prop_assert!(message.header().tc());
        let counts = message.header_counts();
        prop_assert_eq!((counts.ancount(), counts.nscount()), (0, 0));
        if counts.qdcount() == 1 {
            message.sole_question().unwrap();
        }
        if counts.arcount() == 1 {
            prop_assert!(message.opt().is_some());
        }
    }
}

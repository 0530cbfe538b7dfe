//! Behaviour of the public API on queries built with `domain` and on
//! hand-crafted malformed messages.

use std::hash::{BuildHasher, RandomState};

use domain::base::iana::{Class, Opcode, Rtype};
use std::net::Ipv6Addr;

use domain::base::iana::OptionCode;
use domain::base::message_builder::StaticCompressor;
use domain::base::{Message, MessageBuilder, Name};
use domain::dep::octseq::OctetsBuilder;
use domain::rdata::{A, Aaaa, Ns, Txt};
use tundns_dns::tcp::FrameDecoder;
use tundns_dns::{
    ADVERTISED_UDP_PAYLOAD, HEADER_LEN, MAX_SYNTHESIZED_LEN, OptRcode, QueryError, Rcode,
    is_truncated, max_udp_response, message_id, parse_query, response_matches, set_message_id,
    write_error_response, write_truncated,
};
use tundns_test_support::dns::{Answer, Edns, Query, header};

fn name(text: &str) -> Name<Vec<u8>> {
    Name::vec_from_str(text).unwrap()
}

/// A client query as dig sends it: RD set, optionally with an OPT record of this UDP payload
/// size and DO bit.
fn query(id: u16, qname: &str, qtype: Rtype, edns: Option<(u16, bool)>) -> Vec<u8> {
    let query = Query::new(qname, qtype).id(id);
    match edns {
        Some((size, dnssec_ok)) => query.edns(Edns::new(size).dnssec_ok(dnssec_ok)),
        None => query,
    }
    .build()
}

/// An upstream answer to `request` with `count` A records, and an OPT record if `with_opt`.
fn answer(request: &[u8], count: usize, with_opt: bool) -> Vec<u8> {
    let mut answer = Answer::to(request);
    for i in 0..count {
        answer = answer.a(60, [192, 0, 2, i as u8]);
    }
    if with_opt {
        answer = answer.edns(Edns::new(1232));
    }
    answer.build()
}

const FORMERR: Result<(), QueryError> = Err(QueryError::Answer(OptRcode::FORMERR));

fn verdict(msg: &[u8]) -> Result<(), QueryError> {
    parse_query(msg).map(|_| ())
}

// ---- parse_query ----

#[test]
fn parses_a_plain_query() {
    let msg = query(0x1234, "www.Example.COM", Rtype::A, None);
    let parsed = parse_query(&msg).unwrap();
    assert_eq!(parsed.id(), 0x1234);
    assert_eq!(parsed.bytes(), &msg[..]);
    assert!(parsed.recursion_desired());
    assert!(!parsed.checking_disabled());
    assert_eq!(parsed.edns(), None);
    let question = parsed.question();
    assert_eq!(question.name_wire(), b"\x03www\x07example\x03com\x00");
    assert_eq!(question.qtype(), Rtype::A.to_int());
    assert_eq!(question.qclass(), Class::IN.to_int());
    assert_eq!(question.to_string(), "www.example.com. A IN");
    // The client's spelling is kept for the answer.
    assert_eq!(
        &parsed.question_wire()[..17],
        b"\x03www\x07Example\x03COM\x00"
    );
    assert_eq!(parsed.question_wire().len(), 17 + 4);
}

#[test]
fn parses_edns() {
    let msg = query(7, "example.org", Rtype::AAAA, Some((4096, true)));
    let edns = parse_query(&msg).unwrap().edns().unwrap();
    assert_eq!(edns.udp_payload_size, 4096);
    assert_eq!(edns.version, 0);
    assert!(edns.dnssec_ok);
}

#[test]
fn unknown_edns_version_is_badvers() {
    let mut msg = query(7, "example.org", Rtype::A, Some((1232, false)));
    // OPT TTL = extended rcode, version, flags: the version byte sits 5 bytes from the end.
    let version_at = msg.len() - 5;
    msg[version_at] = 1;
    assert_eq!(verdict(&msg), Err(QueryError::Answer(OptRcode::BADVERS)));
    msg[version_at] = 255;
    assert_eq!(verdict(&msg), Err(QueryError::Answer(OptRcode::BADVERS)));
    // Malformed and a new version: FORMERR comes first.
    msg.push(0);
    assert_eq!(verdict(&msg), FORMERR);
}

#[test]
fn unknown_edns_options_are_ignored() {
    let mut msg = query(1, "example.com", Rtype::A, None);
    msg[11] = 1;
    msg.extend([0, 0, 41, 4, 0xd0, 0, 0, 0x80, 0, 0, 12]);
    msg.extend([0xfd, 0xe9, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]); // option code 65001, unknown
    let edns = parse_query(&msg).unwrap().edns().unwrap();
    assert_eq!(
        (edns.version, edns.dnssec_ok, edns.udp_payload_size),
        (0, true, 1232)
    );
}

#[test]
fn badvers_response_is_well_formed() {
    let mut request = query(0x5151, "Ver.Example", Rtype::AAAA, Some((4096, true)));
    let version_at = request.len() - 5;
    request[version_at] = 2;
    let Err(QueryError::Answer(rcode)) = parse_query(&request) else {
        panic!("not BADVERS");
    };
    let mut buf = [0u8; MAX_SYNTHESIZED_LEN];
    let len = write_error_response(&request, rcode, &mut buf);
    let response = parse_response(&buf[..len]);
    assert_eq!(response.header().id(), 0x5151);
    // The header holds the low 4 bits (0), the OPT the upper 8 (1): 16 = BADVERS.
    assert_eq!(response.header().rcode(), Rcode::NOERROR);
    assert_eq!(response.opt_rcode(), OptRcode::BADVERS);
    let opt = response.opt().unwrap();
    assert_eq!(opt.version(), 0);
    assert!(opt.dnssec_ok());
    assert_eq!(opt.udp_payload_size(), ADVERTISED_UDP_PAYLOAD);
    assert_eq!(
        response.sole_question().unwrap().qname().to_string(),
        "Ver.Example"
    );
    let counts = response.header_counts();
    assert_eq!(
        (counts.ancount(), counts.nscount(), counts.arcount()),
        (0, 0, 1)
    );
    // An extended rcode gets its OPT even for a query without EDNS.
    let plain = query(1, "a.example", Rtype::A, None);
    let len = write_error_response(&plain, OptRcode::BADVERS, &mut buf);
    assert_eq!(parse_response(&buf[..len]).opt_rcode(), OptRcode::BADVERS);
}

#[test]
fn parses_checking_disabled_and_root_question() {
    let mut msg = query(1, ".", Rtype::NS, None);
    msg[3] |= 0x10;
    let parsed = parse_query(&msg).unwrap();
    assert!(parsed.checking_disabled());
    assert_eq!(parsed.question().name_wire(), b"\x00");
    assert_eq!(parsed.question().to_string(), ". NS IN");
}

#[test]
fn questions_compare_case_insensitively() {
    let lower = query(1, "a.example", Rtype::A, None);
    let upper = query(2, "A.EXAMPLE", Rtype::A, Some((1232, false)));
    let other_type = query(3, "a.example", Rtype::AAAA, None);
    let lower = parse_query(&lower).unwrap();
    let upper = parse_query(&upper).unwrap();
    let other_type = parse_query(&other_type).unwrap();
    assert_eq!(lower.question(), upper.question());
    assert_ne!(lower.question(), other_type.question());
    let state = RandomState::new();
    assert_eq!(
        state.hash_one(lower.question()),
        state.hash_one(upper.question())
    );
}

#[test]
fn short_messages_and_responses_are_dropped() {
    assert_eq!(verdict(&[]), Err(QueryError::Drop));
    assert_eq!(verdict(&[0; 11]), Err(QueryError::Drop));
    let mut response = query(1, "example.com", Rtype::A, None);
    response[2] |= 0x80;
    assert_eq!(verdict(&response), Err(QueryError::Drop));
}

#[test]
fn other_opcodes_are_not_implemented() {
    for opcode in [
        Opcode::IQUERY,
        Opcode::STATUS,
        Opcode::NOTIFY,
        Opcode::UPDATE,
    ] {
        let mut msg = query(1, "example.com", Rtype::SOA, None);
        msg[2] |= opcode.to_int() << 3;
        assert_eq!(
            verdict(&msg),
            Err(QueryError::Answer(OptRcode::NOTIMP)),
            "{opcode}"
        );
    }
}

#[test]
fn question_count_must_be_one() {
    assert_eq!(verdict(&header(1, 0x0100, [0, 0, 0, 0])), FORMERR);
    let mut two = header(1, 0x0100, [2, 0, 0, 0]);
    for _ in 0..2 {
        two.extend(b"\x01a\x00\x00\x01\x00\x01");
    }
    assert_eq!(verdict(&two), FORMERR);
}

#[test]
fn counts_that_lie_are_formerr() {
    let mut msg = query(1, "example.com", Rtype::A, None);
    msg[7] = 1; // ANCOUNT = 1, no record follows
    assert_eq!(verdict(&msg), FORMERR);
    let mut msg = query(1, "example.com", Rtype::A, Some((1232, false)));
    msg[11] = 2; // ARCOUNT = 2, one record present
    assert_eq!(verdict(&msg), FORMERR);
    let mut msg = query(1, "example.com", Rtype::A, Some((1232, false)));
    msg[11] = 0; // ARCOUNT = 0 but an OPT follows: trailing bytes
    assert_eq!(verdict(&msg), FORMERR);
    let mut msg = header(1, 0x0100, [1, 0xffff, 0xffff, 0xffff]);
    msg.extend(b"\x01a\x00\x00\x01\x00\x01");
    assert_eq!(verdict(&msg), FORMERR);
}

#[test]
fn truncated_question_is_formerr() {
    let msg = query(1, "example.com", Rtype::A, None);
    for cut in HEADER_LEN..msg.len() {
        assert_eq!(verdict(&msg[..cut]), FORMERR, "cut at {cut}");
    }
}

#[test]
fn trailing_bytes_are_formerr() {
    let mut msg = query(1, "example.com", Rtype::A, None);
    msg.push(0);
    assert_eq!(verdict(&msg), FORMERR);
}

#[test]
fn bad_names_are_formerr() {
    let with_name = |name: &[u8]| Query::raw_name(name, Rtype::A).id(1).build();
    // Compression loop: the pointer at 12 points to itself.
    assert_eq!(verdict(&with_name(b"\xc0\x0c")), FORMERR);
    // Forward pointer (to the type field after it) and out of range.
    assert_eq!(verdict(&with_name(b"\xc0\x0e")), FORMERR);
    assert_eq!(verdict(&with_name(b"\xff\xff")), FORMERR);
    // Label longer than 63 (0x40 is a reserved label type).
    let mut long_label = vec![64u8];
    long_label.extend([b'a'; 64]);
    long_label.push(0);
    assert_eq!(verdict(&with_name(&long_label)), FORMERR);
    // Name longer than 255.
    let mut long_name = Vec::new();
    for _ in 0..5 {
        long_name.push(60);
        long_name.extend([b'a'; 60]);
    }
    long_name.push(0);
    assert_eq!(verdict(&with_name(&long_name)), FORMERR);
    // A name in an additional record with a loop.
    let mut msg = query(1, "example.com", Rtype::A, None);
    msg[11] = 1;
    let here = msg.len() as u16;
    msg.extend((0xc000 | here).to_be_bytes());
    msg.extend([0, 1, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(verdict(&msg), FORMERR);
}

#[test]
fn compressed_names_in_records_are_accepted() {
    // A query with an answer record whose owner points back to the question.
    let mut msg = query(1, "example.com", Rtype::A, None);
    msg[7] = 1;
    msg.extend([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
    assert!(parse_query(&msg).is_ok());
}

#[test]
fn opt_rules() {
    let opt = [0u8, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0];
    // Two OPT records.
    let mut msg = query(1, "example.com", Rtype::A, Some((1232, false)));
    msg[11] = 2;
    msg.extend(opt);
    assert_eq!(verdict(&msg), FORMERR);
    // OPT in the answer section.
    let mut msg = query(1, "example.com", Rtype::A, None);
    msg[7] = 1;
    msg.extend(opt);
    assert_eq!(verdict(&msg), FORMERR);
    // OPT with a non-root owner.
    let mut msg = query(1, "example.com", Rtype::A, None);
    msg[11] = 1;
    msg.extend([0xc0, 0x0c]);
    msg.extend(&opt[1..]);
    assert_eq!(verdict(&msg), FORMERR);
    // OPT with options is fine.
    let mut msg = query(1, "example.com", Rtype::A, None);
    msg[11] = 1;
    msg.extend([0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 8]);
    msg.extend([0, 10, 0, 4, 1, 2, 3, 4]); // COOKIE-like option
    assert!(parse_query(&msg).unwrap().edns().is_some());
}

// ---- max_udp_response ----

#[test]
fn udp_limit_follows_edns() {
    let limit = |edns| max_udp_response(&parse_query(&query(1, "a.b", Rtype::A, edns)).unwrap());
    assert_eq!(limit(None), 512);
    assert_eq!(limit(Some((0, false))), 512);
    assert_eq!(limit(Some((1232, false))), 1232);
    assert_eq!(limit(Some((4096, false))), 4096);
    assert_eq!(limit(Some((65535, false))), 4096);
}

// ---- header helpers ----

#[test]
fn id_helpers() {
    let mut msg = query(0xabcd, "example.com", Rtype::A, None);
    assert_eq!(message_id(&msg), Some(0xabcd));
    set_message_id(&mut msg, 0x0102);
    assert_eq!(message_id(&msg), Some(0x0102));
    assert_eq!(&msg[..2], &[1, 2]);
    assert_eq!(message_id(&msg[..11]), None);
    let mut short = [9u8; 5];
    set_message_id(&mut short, 0);
    assert_eq!(short, [9; 5]);
}

#[test]
fn truncation_flag() {
    let mut msg = query(1, "example.com", Rtype::A, None);
    assert!(!is_truncated(&msg));
    msg[2] |= 0x02;
    assert!(is_truncated(&msg));
    assert!(!is_truncated(&msg[..11]));
}

// ---- response_matches ----

#[test]
fn matching_responses() {
    let request = query(0x4242, "Www.Example.com", Rtype::A, Some((1232, false)));
    let parsed = parse_query(&request).unwrap();
    let question = parsed.question();
    let good = answer(&request, 2, true);
    assert!(response_matches(0x4242, question, &good));

    // Case differences in the echoed question are fine (0x20 randomisation).
    let mut recased = good.clone();
    recased[13] = b'W';
    recased[17] = b'E';
    assert!(response_matches(0x4242, question, &recased));

    // Wrong ID.
    assert!(!response_matches(0x4243, question, &good));
    // Not a response.
    let mut not_response = good.clone();
    not_response[2] &= 0x7f;
    assert!(!response_matches(0x4242, question, &not_response));
    // Another question: name, type, class.
    let other_name = answer(&query(0x4242, "www.example.net", Rtype::A, None), 1, false);
    assert!(!response_matches(0x4242, question, &other_name));
    let other_type = answer(
        &query(0x4242, "www.example.com", Rtype::AAAA, None),
        0,
        false,
    );
    assert!(!response_matches(0x4242, question, &other_type));
    let mut other_class = good.clone();
    let class_at = HEADER_LEN + 17 + 2 + 1;
    other_class[class_at] = 3;
    assert!(!response_matches(0x4242, question, &other_class));
    // No question, or garbage.
    let mut no_question = good[..HEADER_LEN].to_vec();
    no_question[5] = 0;
    assert!(!response_matches(0x4242, question, &no_question));
    assert!(!response_matches(0x4242, question, &good[..20]));
    assert!(!response_matches(0x4242, question, &[]));
}

// ---- write_error_response ----

fn parse_response(bytes: &[u8]) -> Message<&[u8]> {
    let message = Message::from_octets(bytes).unwrap();
    assert!(message.header().qr());
    assert!(message.header().ra());
    message
}

#[test]
fn servfail_echoes_question_and_edns() {
    let request = query(0x0bad, "Mixed.Case.example", Rtype::MX, Some((4096, true)));
    let mut buf = [0u8; MAX_SYNTHESIZED_LEN];
    let len = write_error_response(&request, Rcode::SERVFAIL, &mut buf);
    let response = parse_response(&buf[..len]);
    assert_eq!(response.header().id(), 0x0bad);
    assert_eq!(response.header().rcode(), Rcode::SERVFAIL);
    assert!(response.header().rd());
    assert!(!response.header().tc());
    let question = response.sole_question().unwrap();
    assert_eq!(question.qtype(), Rtype::MX);
    assert_eq!(question.qname().to_string(), "Mixed.Case.example");
    let counts = response.header_counts();
    assert_eq!(
        (counts.ancount(), counts.nscount(), counts.arcount()),
        (0, 0, 1)
    );
    let opt = response.opt().unwrap();
    assert_eq!(opt.udp_payload_size(), ADVERTISED_UDP_PAYLOAD);
    assert!(opt.dnssec_ok());
    // The error response answers the query, so it matches it.
    let parsed = parse_query(&request).unwrap();
    assert!(response_matches(0x0bad, parsed.question(), &buf[..len]));
}

#[test]
fn formerr_for_trailing_bytes_keeps_question_without_opt() {
    let mut request = query(5, "example.com", Rtype::A, Some((1232, false)));
    request.extend([1, 2, 3]);
    assert_eq!(verdict(&request), FORMERR);
    let mut buf = [0u8; 512];
    let len = write_error_response(&request, Rcode::FORMERR, &mut buf);
    let response = parse_response(&buf[..len]);
    assert_eq!(response.header().rcode(), Rcode::FORMERR);
    assert_eq!(
        response.sole_question().unwrap().qname().to_string(),
        "example.com"
    );
    assert_eq!(response.header_counts().arcount(), 0);
    assert_eq!(len, HEADER_LEN + 13 + 4);
}

#[test]
fn header_only_when_question_unreadable() {
    let mut request = header(77, 0x0100, [1, 0, 0, 0]);
    request.extend(b"\xc0\x0c\x00\x01\x00\x01");
    let mut buf = [0u8; 512];
    let len = write_error_response(&request, Rcode::FORMERR, &mut buf);
    assert_eq!(len, HEADER_LEN);
    let response = parse_response(&buf[..len]);
    assert_eq!(response.header().id(), 77);
    assert_eq!(response.header_counts().qdcount(), 0);

    // Two questions: header only as well.
    let mut two = header(78, 0x0100, [2, 0, 0, 0]);
    two.extend(b"\x01a\x00\x00\x01\x00\x01\x01b\x00\x00\x01\x00\x01");
    assert_eq!(
        write_error_response(&two, Rcode::FORMERR, &mut buf),
        HEADER_LEN
    );
}

#[test]
fn notimp_keeps_opcode() {
    let mut request = query(9, "example.com", Rtype::SOA, None);
    request[2] |= Opcode::NOTIFY.to_int() << 3;
    let mut buf = [0u8; 512];
    let len = write_error_response(&request, Rcode::NOTIMP, &mut buf);
    let response = parse_response(&buf[..len]);
    assert_eq!(response.header().opcode(), Opcode::NOTIFY);
    assert_eq!(response.header().rcode(), Rcode::NOTIMP);
    assert_eq!(response.header_counts().qdcount(), 1);
}

#[test]
fn never_answers_responses_or_short_messages() {
    let mut buf = [0u8; 512];
    assert_eq!(write_error_response(&[0; 11], Rcode::FORMERR, &mut buf), 0);
    let mut response = query(1, "example.com", Rtype::A, None);
    response[2] |= 0x80;
    assert_eq!(write_error_response(&response, Rcode::FORMERR, &mut buf), 0);
}

#[test]
fn small_buffers_degrade_gracefully() {
    let request = query(3, "example.com", Rtype::A, Some((1232, false)));
    assert_eq!(
        write_error_response(&request, Rcode::REFUSED, &mut [0; 11]),
        0
    );
    let mut buf = [0u8; HEADER_LEN + 10];
    let len = write_error_response(&request, Rcode::REFUSED, &mut buf);
    assert_eq!(len, HEADER_LEN);
    assert_eq!(parse_response(&buf[..len]).header_counts().qdcount(), 0);
    let mut buf = [0u8; HEADER_LEN + 17 + 5];
    let len = write_error_response(&request, Rcode::REFUSED, &mut buf);
    let response = parse_response(&buf[..len]);
    assert_eq!(response.header_counts().qdcount(), 1);
    assert_eq!(response.header_counts().arcount(), 0);
}

// ---- write_truncated ----

#[test]
fn truncates_to_header_question_and_opt() {
    let request = query(0x7777, "big.example", Rtype::TXT, Some((1232, true)));
    let big = answer(&request, 100, true);
    assert!(big.len() > 1232);
    let mut buf = [0u8; 1232];
    let len = write_truncated(&big, &mut buf);
    let truncated = Message::from_octets(&buf[..len]).unwrap();
    assert!(truncated.header().tc());
    assert!(truncated.header().qr());
    assert_eq!(truncated.header().id(), 0x7777);
    assert_eq!(truncated.header().rcode(), Rcode::NOERROR);
    let counts = truncated.header_counts();
    assert_eq!(
        (
            counts.qdcount(),
            counts.ancount(),
            counts.nscount(),
            counts.arcount()
        ),
        (1, 0, 0, 1)
    );
    assert_eq!(truncated.opt().unwrap().udp_payload_size(), 1232);
    assert!(is_truncated(&buf[..len]));
    let parsed = parse_query(&request).unwrap();
    assert!(response_matches(0x7777, parsed.question(), &buf[..len]));
}

#[test]
fn truncates_without_opt_when_response_had_none() {
    let request = query(1, "example.com", Rtype::A, None);
    let response = answer(&request, 3, false);
    // The whole RRset of three fits in 512 bytes: nothing is cut but the flag.
    let mut buf = [0u8; 512];
    let len = write_truncated(&response, &mut buf);
    assert_eq!(len, response.len());
    let message = Message::from_octets(&buf[..len]).unwrap();
    assert!(message.header().tc());
    assert_eq!(message.header_counts().ancount(), 3);
    assert_eq!(message.header_counts().arcount(), 0);
    // One byte short of the RRset: none of it.
    let mut buf = vec![0u8; response.len() - 1];
    let len = write_truncated(&response, &mut buf);
    assert_eq!(len, HEADER_LEN + 13 + 4);
    let message = Message::from_octets(&buf[..len]).unwrap();
    assert_eq!(message.header_counts().ancount(), 0);
}

/// A compressed response with answer RRsets of varied sizes, an authority
/// section, glue and an OPT record with an option.
fn multi_rrset_response() -> Vec<u8> {
    let request = query(0x3131, "Multi.Example", Rtype::ANY, Some((1232, false)));
    let request = Message::from_octets(&request[..]).unwrap();
    let target = StaticCompressor::new(Vec::new());
    let mut builder = MessageBuilder::from_target(target)
        .unwrap()
        .start_answer(&request, Rcode::NOERROR)
        .unwrap();
    let owner = name("Multi.Example");
    let other = name("other.multi.example");
    for i in 0..3 {
        builder
            .push((&owner, 300, A::from_octets(192, 0, 2, i)))
            .unwrap();
    }
    for i in 0..2 {
        builder
            .push((
                &owner,
                300,
                Aaaa::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i)),
            ))
            .unwrap();
    }
    // Same owner in another case: the same RRset.
    builder
        .push((&name("MULTI.example"), 300, Aaaa::new(Ipv6Addr::LOCALHOST)))
        .unwrap();
    for text in ["a", "bb", "ccc", "dddddddddddddddddddd"] {
        builder
            .push((
                &owner,
                300,
                Txt::<Vec<u8>>::build_from_slice(text.as_bytes()).unwrap(),
            ))
            .unwrap();
    }
    builder
        .push((&other, 300, A::from_octets(198, 51, 100, 1)))
        .unwrap();
    let mut authority = builder.authority();
    for ns in ["ns1.multi.example", "ns2.multi.example"] {
        authority
            .push((&name("multi.example"), 3600, Ns::new(name(ns))))
            .unwrap();
    }
    let mut additional = authority.additional();
    additional
        .push((
            &name("ns1.multi.example"),
            3600,
            A::from_octets(203, 0, 113, 1),
        ))
        .unwrap();
    additional
        .opt(|opt| {
            opt.set_udp_payload_size(1400);
            opt.set_dnssec_ok(true);
            opt.push_raw_option(OptionCode::COOKIE, 8, |target| target.append_slice(&[9; 8]))
        })
        .unwrap();
    additional.finish().into_target()
}

type SetKey = (String, Rtype, Class);

/// The answer and authority records of a message as (owner lowercase, type, class)
/// per record, in order.
fn record_sets(message: &Message<&[u8]>) -> Vec<(bool, SetKey)> {
    let mut sets = Vec::new();
    for (in_answer, section) in [
        (true, message.answer().unwrap()),
        (false, message.authority().unwrap()),
    ] {
        for record in section {
            let record = record.unwrap();
            let owner = record.owner().to_string().to_ascii_lowercase();
            sets.push((in_answer, (owner, record.rtype(), record.class())));
        }
    }
    sets
}

#[test]
fn truncation_never_splits_an_rrset() {
    let response = multi_rrset_response();
    let original = Message::from_octets(&response[..]).unwrap();
    let original_sets = record_sets(&original);
    let count_of =
        |key: &(bool, SetKey)| original_sets.iter().filter(|other| *other == key).count();
    let mut outcomes = Vec::new();
    for limit in HEADER_LEN..response.len() + 20 {
        let mut buf = vec![0u8; limit];
        let len = write_truncated(&response, &mut buf);
        assert!(len <= limit);
        let truncated = Message::from_octets(&buf[..len]).unwrap();
        assert!(truncated.header().tc(), "limit {limit}");
        assert_eq!(truncated.header().id(), 0x3131);
        if len == HEADER_LEN {
            continue;
        }
        assert_eq!(
            truncated.sole_question().unwrap().qname().to_string(),
            "Multi.Example"
        );
        let kept = record_sets(&truncated);
        // A prefix of the original records...
        assert_eq!(kept[..], original_sets[..kept.len()], "limit {limit}");
        // ...made of whole RRsets...
        for key in &kept {
            assert_eq!(
                kept.iter().filter(|other| *other == key).count(),
                count_of(key),
                "limit {limit}: {key:?} cut"
            );
        }
        // Authority records only once the whole answer is in.
        if kept.iter().any(|(in_answer, _)| !in_answer) {
            assert_eq!(
                truncated.header_counts().ancount(),
                original.header_counts().ancount()
            );
        }
        // The additional section keeps only the OPT, without options.
        let counts = truncated.header_counts();
        if counts.arcount() == 1 {
            let opt = truncated.opt().unwrap();
            assert_eq!(opt.udp_payload_size(), 1400);
            assert!(opt.dnssec_ok());
            assert!(opt.opt().is_empty());
        } else {
            assert_eq!(counts.arcount(), 0);
        }
        for record in truncated.additional().unwrap() {
            assert_eq!(record.unwrap().rtype(), Rtype::OPT);
        }
        if counts.arcount() == 1 {
            outcomes.push((limit, (counts.ancount(), counts.nscount()), len));
        }
    }
    // As many as fit: no larger cut would have fitted in any limit (once the OPT fits).
    let mut size_of_cut = std::collections::BTreeMap::new();
    for &(_, cut, len) in &outcomes {
        assert_eq!(*size_of_cut.entry(cut).or_insert(len), len);
    }
    for &(limit, cut, _) in &outcomes {
        for (&larger, &size) in size_of_cut.range(cut..).skip(1) {
            assert!(
                size > limit,
                "limit {limit}: kept {cut:?}, {larger:?} fits in {size}"
            );
        }
    }
    let seen_counts: std::collections::BTreeSet<_> = size_of_cut.keys().copied().collect();
    // Every cut point showed up: 0, 3 A, +3 AAAA, +4 TXT, +1 A other, then authority.
    let expected: std::collections::BTreeSet<_> =
        [(0, 0), (3, 0), (6, 0), (10, 0), (11, 0), (11, 2)].into();
    assert_eq!(seen_counts, expected);
}

#[test]
fn truncation_keeps_the_most_that_fits() {
    let response = multi_rrset_response();
    let full = {
        let mut buf = vec![0u8; response.len()];
        write_truncated(&response, &mut buf)
    };
    // The full answer and authority plus an empty OPT: exactly this many bytes
    // hold everything, one fewer drops the authority RRset.
    let mut buf = vec![0u8; full];
    let len = write_truncated(&response, &mut buf);
    assert_eq!(len, full);
    let counts = Message::from_octets(&buf[..len]).unwrap().header_counts();
    assert_eq!(
        (counts.ancount(), counts.nscount(), counts.arcount()),
        (11, 2, 1)
    );
    let mut buf = vec![0u8; full - 1];
    let len = write_truncated(&response, &mut buf);
    let counts = Message::from_octets(&buf[..len]).unwrap().header_counts();
    assert_eq!(
        (counts.ancount(), counts.nscount(), counts.arcount()),
        (11, 0, 1)
    );
}

#[test]
fn truncating_garbage() {
    let mut buf = [0u8; 512];
    assert_eq!(write_truncated(&[1; 11], &mut buf), 0);
    assert_eq!(write_truncated(&[0; 40], &mut [0; 11]), 0);
    let mut garbage = header(1, 0x8180, [1, 5, 0, 0]);
    garbage.extend(b"\x05ab");
    assert_eq!(write_truncated(&garbage, &mut buf), HEADER_LEN);
    assert_eq!(buf[5], 0);
    assert!(is_truncated(&buf[..HEADER_LEN]));
}

// ---- tcp ----

#[test]
fn frame_decoder_yields_queries() {
    let first = query(1, "a.example", Rtype::A, None);
    let second = query(2, "b.example", Rtype::AAAA, None);
    let mut stream = Vec::new();
    for msg in [&first, &second] {
        stream.extend(tundns_dns::tcp::length_prefix(msg.len()).unwrap());
        stream.extend(msg.iter());
    }
    let mut decoder = FrameDecoder::new(tundns_dns::tcp::MAX_MESSAGE_LEN);
    assert_eq!(decoder.push(&stream[..5]), 5);
    assert_eq!(decoder.next_message().unwrap(), None);
    assert_eq!(decoder.push(&stream[5..]), stream.len() - 5);
    assert_eq!(decoder.next_message().unwrap().unwrap(), &first[..]);
    assert_eq!(
        parse_query(decoder.next_message().unwrap().unwrap())
            .unwrap()
            .id(),
        2
    );
    assert_eq!(decoder.next_message().unwrap(), None);
}

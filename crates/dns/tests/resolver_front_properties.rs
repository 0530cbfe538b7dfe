//! Property tests for local data, blocklists and routes: no line or query
//! panics, and every answer written reads back whole with `domain`.

use std::sync::OnceLock;
use std::time::Duration;

use domain::base::iana::Rtype;
use domain::base::{Message, ParsedName};
use domain::rdata::AllRecordData;
use proptest::prelude::*;
use tundns_dns::{
    BlockList, BlockMode, CnameChain, LocalAnswer, LocalData, LocalDataBuilder, Routes,
    parse_query, write_error_response,
};
use tundns_test_support::dns::{Answer, Data, Edns, Query};

fn local_data() -> &'static LocalData {
    static DATA: OnceLock<LocalData> = OnceLock::new();
    DATA.get_or_init(|| {
        let mut builder = LocalDataBuilder::new();
        builder.add_local_zone("lab.internal").unwrap();
        // The property tests and the fuzz targets (fuzz/) answer from the same records.
        for line in include_str!("fixtures/local-records.txt").lines() {
            builder.add_record(line).unwrap();
        }
        builder
            .add_hosts_line("10.0.0.5 nas nas.lab.internal")
            .unwrap();
        builder.build()
    })
}

fn blocklists() -> &'static [BlockList; 2] {
    static LISTS: OnceLock<[BlockList; 2]> = OnceLock::new();
    LISTS.get_or_init(|| {
        [BlockMode::NxDomain, BlockMode::Null].map(|mode| {
            let mut list = BlockList::new(mode, Duration::from_secs(30));
            for domain in ["ads.example", "dev.lab.internal", "x"] {
                list.add_domain(domain).unwrap();
            }
            list
        })
    })
}

/// Names drawn from the labels the fixtures use, so queries hit every path.
fn arb_name() -> impl Strategy<Value = String> {
    let label = prop::sample::select(vec![
        "app", "APP", "lab", "internal", "dev", "Dev", "alias", "a", "out", "loop", "note", "x",
        "y", "nas", "ads", "example", "www", "10", "in-addr", "arpa", "5", "0",
    ]);
    prop::collection::vec(label, 0..6).prop_map(|labels| {
        if labels.is_empty() {
            ".".to_owned()
        } else {
            labels.join(".")
        }
    })
}

fn arb_query() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u16>(),
        arb_name(),
        prop::sample::select(vec![
            Rtype::A,
            Rtype::AAAA,
            Rtype::CNAME,
            Rtype::TXT,
            Rtype::PTR,
            Rtype::SOA,
            Rtype::MX,
            Rtype::ANY,
        ]),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(id, name, qtype, edns)| {
            // No RD; an OPT record keeps domain's default UDP payload size, 0.
            let query = Query::new(&name, qtype).id(id).recursion_desired(false);
            match edns {
                Some(dnssec_ok) => query.edns(Edns::new(0).dnssec_ok(dnssec_ok)),
                None => query,
            }
            .build()
        })
}

/// Reads every record of every section; panics on anything malformed.
fn read_whole(response: &[u8], query_id: u16) {
    let message = Message::from_octets(response).expect("a header");
    assert_eq!(message.header().id(), query_id);
    assert!(message.header().qr());
    let mut section = message.answer().expect("the question");
    loop {
        for record in section {
            record
                .expect("a record")
                .into_record::<AllRecordData<_, ParsedName<_>>>()
                .expect("its data");
        }
        match section.next_section().expect("the next section") {
            Some(next) => section = next,
            None => break,
        }
    }
}

/// Answers `bytes` with every part, at several buffer sizes.
fn exercise(bytes: &[u8]) {
    let Ok(query) = parse_query(bytes) else {
        return;
    };
    for size in [0, 11, 12, 40, 512, 4096] {
        let mut out = vec![0u8; size];
        if let Some(len) = local_data().answer(&query, &mut out).map(|a| a.written()) {
            assert!(len <= size);
            if len > 0 {
                read_whole(&out[..len], query.id());
            }
        }
        for list in blocklists() {
            let answered = list.answer(&query, &mut out);
            assert_eq!(answered.is_some(), list.is_blocked(query.question()));
            if let Some(len) = answered
                && len > 0
            {
                read_whole(&out[..len], query.id());
            }
        }
    }
}

/// The query `away.lab.internal A` with EDNS, its chain, and a compressed upstream
/// answer for the chain's target.
fn chain_exchange() -> &'static (Vec<u8>, std::sync::Arc<CnameChain>, Vec<u8>) {
    static EXCHANGE: OnceLock<(Vec<u8>, std::sync::Arc<CnameChain>, Vec<u8>)> = OnceLock::new();
    EXCHANGE.get_or_init(|| {
        let query = Query::new("away.lab.internal", Rtype::A)
            .id(0x5151)
            .recursion_desired(false)
            .edns(Edns::new(0))
            .build();
        let mut out = [0u8; 512];
        let Some(LocalAnswer::Chain(_, chain)) =
            local_data().answer(&parse_query(&query).unwrap(), &mut out)
        else {
            panic!("away.lab.internal leads out of local data");
        };
        let asked = chain.target_query(&parse_query(&query).unwrap());
        let response = [1, 2]
            .into_iter()
            .fold(Answer::to(&asked).compressed(), |answer, last| {
                answer.record("www.example.org", 60, Data::A([192, 0, 2, last]))
            })
            .build();
        (query, chain, response)
    })
}

fn arb_line() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~\t]{0,80}",
        r#"[*a-zA-Z0-9._-]{0,30} ([0-9]{1,11} )?(IN )?(A|AAAA|CNAME|PTR|TXT|MX|a) [ -~]{0,40}"#,
        r#"[0-9a-f:.%]{1,20}( [a-z0-9.*_-]{0,20}){0,3}( #.*)?"#,
        r#"(\|\||@@)?[a-z0-9.]{0,20}\^?(\$[a-z]*)?"#,
        r#"x TXT ("[ -~]{0,10}" ?|\\[0-9]{0,3}|[a-z"\\]{1,5} ){0,6}"#,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_lines_never_panic(lines in prop::collection::vec(arb_line(), 1..8)) {
        let mut builder = LocalDataBuilder::new();
        let mut list = BlockList::new(BlockMode::Null, Duration::from_secs(1));
        let mut routes = Routes::new(0usize);
        for (index, line) in lines.iter().enumerate() {
            let _ = builder.add_record(line);
            let _ = builder.add_hosts_line(line);
            let _ = builder.add_local_zone(line);
            let _ = list.add_list_line(line);
            let _ = list.add_domain(line);
            let _ = routes.add(line, index);
        }
        let local = builder.build();
        // Whatever was built answers well-formed messages.
        let query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01x\x00\x00\x01\x00\x01";
        let parsed = parse_query(query).unwrap();
        let mut out = [0u8; 4096];
        if let Some(len) = local.answer(&parsed, &mut out).map(|a| a.written()) {
            read_whole(&out[..len], 0x1234);
        }
        let _ = routes.lookup(parsed.question());
    }

    #[test]
    fn built_queries_never_panic_and_answers_read_back(query in arb_query()) {
        exercise(&query);
    }

    #[test]
    fn mutated_queries_never_panic(
        query in arb_query(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = query;
        for (at, byte) in edits {
            let len = bytes.len();
            bytes[at % len] = byte;
        }
        exercise(&bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        exercise(&bytes);
    }

    #[test]
    fn any_upstream_answer_finishes_a_chain_whole_or_not_at_all(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        cut in any::<usize>(),
        size in 0usize..600,
    ) {
        let (query, chain, response) = chain_exchange();
        let mut response = response.clone();
        for (at, byte) in edits {
            let len = response.len();
            response[at % len] = byte;
        }
        response.truncate(response.len() - cut % 4);
        let parsed = parse_query(query).unwrap();
        let decided = |name: &[u8]| name.ends_with(b"\x03org\x00") && name.len().is_multiple_of(2);
        if let Some(answer) = chain.complete(&parsed, &response, size, decided) {
            prop_assert!(answer.len() <= size);
            if !answer.is_empty() {
                read_whole(&answer, 0x5151);
            }
        }
    }
}

/// A client may compress its question name into the header (parse_query allows
/// backward pointers); the answer must not copy that pointer, whose target
/// changes in the response header.
#[test]
fn question_compressed_into_the_header() {
    // ID 0x0178 and a zero flags byte read as the name "x" at offset 0.
    let mut message = vec![0x01, b'x', 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    message.extend_from_slice(b"\xc0\x00\x00\x01\x00\x01");
    let parsed = parse_query(&message).unwrap();
    assert_eq!(parsed.question().name_wire(), b"\x01x\x00");
    for list in blocklists() {
        let mut out = [0u8; 512];
        let len = list.answer(&parsed, &mut out).unwrap();
        read_whole(&out[..len], 0x0178);
        let response = Message::from_octets(&out[..len]).unwrap();
        assert_eq!(response.sole_question().unwrap().qname().to_string(), "x");
    }
    let mut reference = [0u8; 512];
    assert!(write_error_response(&message, tundns_dns::Rcode::SERVFAIL, &mut reference) > 0);
}

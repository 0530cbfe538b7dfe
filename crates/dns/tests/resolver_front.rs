//! Local data, blocklists and split-DNS routes, with every answer read back by
//! `domain`'s parser.

use std::time::Duration;

use domain::base::iana::{Class, Rtype};
use domain::base::{Message, MessageBuilder, ParsedName};
use domain::rdata::AllRecordData;
use tundns_dns::{
    BlockList, BlockMode, CnameChain, LocalAnswer, LocalData, LocalDataBuilder, MAX_BLOCKED_LEN,
    Rcode, RecordError, Routes, parse_query,
};
use tundns_test_support::dns::{self, Answer, Data, Edns};

fn query_with(id: u16, qname: &str, qtype: Rtype, class: Class, edns: Option<bool>) -> Vec<u8> {
    let query = dns::Query::new(qname, qtype).id(id).class(class);
    match edns {
        Some(dnssec_ok) => query.edns(Edns::new(4096).dnssec_ok(dnssec_ok)),
        None => query,
    }
    .build()
}

fn query(qname: &str, qtype: Rtype) -> Vec<u8> {
    query_with(0x4242, qname, qtype, Class::IN, None)
}

/// A response as `domain` reads it: header fields and each section's records
/// in presentation form.
#[derive(Debug)]
struct Reply {
    message: Message<Vec<u8>>,
    answer: Vec<String>,
    authority: Vec<String>,
}

impl Reply {
    fn read(bytes: &[u8]) -> Reply {
        let message = Message::from_octets(bytes.to_vec()).expect("a header");
        let mut sections = Vec::new();
        let mut section = message.answer().expect("a question section");
        loop {
            let mut records = Vec::new();
            for record in section {
                let record = record.expect("a well-formed record");
                let record = record
                    .into_record::<AllRecordData<_, ParsedName<_>>>()
                    .expect("record data that parses")
                    .expect("known record data");
                records.push(record.to_string());
            }
            sections.push(records);
            match section.next_section().expect("the next section") {
                Some(next) => section = next,
                None => break,
            }
        }
        assert_eq!(sections.len(), 3);
        let _additional = sections.pop();
        let authority = sections.pop().unwrap();
        let answer = sections.pop().unwrap();
        Reply {
            message,
            answer,
            authority,
        }
    }

    fn rcode(&self) -> Rcode {
        self.message.header().rcode()
    }

    fn aa(&self) -> bool {
        self.message.header().aa()
    }

    fn question_name(&self) -> String {
        self.message.sole_question().unwrap().qname().to_string()
    }
}

fn answer_with(local: &LocalData, message: &[u8]) -> Option<Reply> {
    let parsed = parse_query(message).unwrap();
    let mut out = [0u8; 4096];
    let len = local.answer(&parsed, &mut out)?.written();
    let reply = Reply::read(&out[..len]);
    let header = reply.message.header();
    assert!(header.qr() && header.ra() && header.rd() && !header.tc());
    assert_eq!(header.id(), parsed.id());
    Some(reply)
}

fn ask(local: &LocalData, qname: &str, qtype: Rtype) -> Option<Reply> {
    answer_with(local, &query(qname, qtype))
}

fn local(lines: &[&str]) -> LocalData {
    let mut builder = LocalDataBuilder::new();
    for line in lines {
        builder.add_record(line).unwrap();
    }
    builder.build()
}

fn record_error(text: &str) -> String {
    LocalDataBuilder::new().add_record(text).unwrap_err().0
}

const LAB_SOA: &str =
    "lab.internal. 60 IN SOA lab.internal. hostmaster.lab.internal. 1 3600 600 86400 60";

// ---- local data -------------------------------------------------------------

#[test]
fn a_record_is_answered_authoritatively() {
    let local = local(&["app.lab.internal A 10.99.0.10"]);
    let reply = ask(&local, "app.lab.internal", Rtype::A).unwrap();
    assert!(reply.aa());
    assert_eq!(reply.rcode(), Rcode::NOERROR);
    assert_eq!(reply.answer, ["app.lab.internal. 300 IN A 10.99.0.10"]);
    assert!(reply.authority.is_empty());
    assert!(reply.message.opt().is_none());
}

#[test]
fn id_and_question_spelling_are_the_clients() {
    let local = local(&["app.lab.internal 120 AAAA fd99::10"]);
    let message = query_with(0xbeef, "ApP.LaB.InTeRnAl", Rtype::AAAA, Class::IN, None);
    let reply = answer_with(&local, &message).unwrap();
    assert_eq!(reply.message.header().id(), 0xbeef);
    assert_eq!(reply.question_name(), "ApP.LaB.InTeRnAl");
    assert_eq!(reply.answer, ["ApP.LaB.InTeRnAl. 120 IN AAAA fd99::10"]);
}

#[test]
fn missing_type_is_nodata_with_soa_never_forwarded() {
    let local = local(&["app.lab.internal A 10.99.0.10"]);
    for qtype in [Rtype::AAAA, Rtype::MX, Rtype::HTTPS] {
        let reply = ask(&local, "app.lab.internal", qtype).unwrap();
        assert!(reply.aa());
        assert_eq!(reply.rcode(), Rcode::NOERROR);
        assert!(reply.answer.is_empty());
        assert_eq!(reply.authority, [LAB_SOA]);
    }
}

#[test]
fn names_outside_local_data_are_not_decided() {
    let local = local(&["app.lab.internal A 10.99.0.10"]);
    assert!(ask(&local, "other.lab.internal", Rtype::A).is_none());
    assert!(ask(&local, "lab.internal", Rtype::A).is_none());
    assert!(ask(&local, "www.example.com", Rtype::A).is_none());
    assert!(ask(&local, ".", Rtype::NS).is_none());
    assert!(ask(&local, "x.app.lab.internal", Rtype::A).is_none());
    let chaos = query_with(1, "app.lab.internal", Rtype::TXT, Class::CH, None);
    assert!(answer_with(&local, &chaos).is_none());
}

#[test]
fn single_label_names_get_their_own_soa() {
    let local = local(&["nas A 10.0.0.2"]);
    let reply = ask(&local, "nas", Rtype::AAAA).unwrap();
    assert_eq!(
        reply.authority,
        ["nas. 60 IN SOA nas. hostmaster.nas. 1 3600 600 86400 60"]
    );
}

#[test]
fn local_zone_gives_nxdomain_with_its_soa() {
    let mut builder = LocalDataBuilder::new();
    builder.add_local_zone("Lab.Internal.").unwrap();
    builder.add_record("app.lab.internal A 10.99.0.10").unwrap();
    builder
        .add_record("deep.sub.lab.internal A 10.99.0.11")
        .unwrap();
    let local = builder.build();

    let reply = ask(&local, "missing.lab.internal", Rtype::A).unwrap();
    assert!(reply.aa());
    assert_eq!(reply.rcode(), Rcode::NXDOMAIN);
    assert!(reply.answer.is_empty());
    assert_eq!(reply.authority, [LAB_SOA]);
    let reply = ask(&local, "a.b.missing.lab.internal", Rtype::AAAA).unwrap();
    assert_eq!(reply.rcode(), Rcode::NXDOMAIN);

    // The apex holds the SOA; other types there are NODATA.
    let reply = ask(&local, "lab.internal", Rtype::SOA).unwrap();
    assert_eq!(reply.rcode(), Rcode::NOERROR);
    assert_eq!(reply.answer, [LAB_SOA]);
    let reply = ask(&local, "lab.internal", Rtype::A).unwrap();
    assert_eq!((reply.rcode(), reply.answer.len()), (Rcode::NOERROR, 0));
    assert_eq!(reply.authority, [LAB_SOA]);

    // The empty non-terminal exists: NODATA, not NXDOMAIN (RFC 8020).
    let reply = ask(&local, "sub.lab.internal", Rtype::A).unwrap();
    assert_eq!((reply.rcode(), reply.answer.len()), (Rcode::NOERROR, 0));
    assert_eq!(reply.authority, [LAB_SOA]);

    // Records under the zone use its SOA.
    let reply = ask(&local, "deep.sub.lab.internal", Rtype::TXT).unwrap();
    assert_eq!(reply.authority, [LAB_SOA]);

    assert!(ask(&local, "internal", Rtype::A).is_none());
    assert!(ask(&local, "xlab.internal", Rtype::A).is_none());
}

#[test]
fn innermost_zone_wins() {
    let mut builder = LocalDataBuilder::new();
    builder.add_local_zone("internal").unwrap();
    builder.add_local_zone("lab.internal").unwrap();
    let local = builder.build();
    let reply = ask(&local, "x.lab.internal", Rtype::A).unwrap();
    assert_eq!(reply.authority, [LAB_SOA]);
    let reply = ask(&local, "x.internal", Rtype::A).unwrap();
    assert!(reply.authority[0].starts_with("internal. 60 IN SOA internal."));
}

#[test]
fn wildcard_matches_names_below_but_not_the_parent() {
    let local = local(&[
        "*.dev.lab.internal AAAA fd99::20",
        "exact.dev.lab.internal A 10.0.0.1",
    ]);
    let reply = ask(&local, "Web.Dev.lab.internal", Rtype::AAAA).unwrap();
    assert!(reply.aa());
    assert_eq!(reply.answer, ["Web.Dev.lab.internal. 300 IN AAAA fd99::20"]);
    let reply = ask(&local, "a.b.dev.lab.internal", Rtype::AAAA).unwrap();
    assert_eq!(reply.answer, ["a.b.dev.lab.internal. 300 IN AAAA fd99::20"]);

    // A wildcard name lacking the type: NODATA with the SOA of the wildcard's parent.
    let reply = ask(&local, "web.dev.lab.internal", Rtype::A).unwrap();
    assert!(reply.answer.is_empty());
    assert_eq!(
        reply.authority,
        [
            "dev.lab.internal. 60 IN SOA dev.lab.internal. hostmaster.dev.lab.internal. 1 3600 600 86400 60"
        ]
    );

    // The bare parent is not matched.
    assert!(ask(&local, "dev.lab.internal", Rtype::AAAA).is_none());
    // An exact name wins over the wildcard, and lacks the wildcard's types.
    let reply = ask(&local, "exact.dev.lab.internal", Rtype::AAAA).unwrap();
    assert!(reply.answer.is_empty());
    assert_eq!(reply.authority.len(), 1);
}

#[test]
fn wildcard_parent_inside_a_local_zone_is_nodata() {
    let mut builder = LocalDataBuilder::new();
    builder.add_local_zone("lab.internal").unwrap();
    builder.add_record("*.dev.lab.internal A 10.0.0.9").unwrap();
    let local = builder.build();
    let reply = ask(&local, "dev.lab.internal", Rtype::A).unwrap();
    assert_eq!((reply.rcode(), reply.answer.len()), (Rcode::NOERROR, 0));
    let reply = ask(&local, "x.dev.lab.internal", Rtype::A).unwrap();
    assert_eq!(reply.answer, ["x.dev.lab.internal. 300 IN A 10.0.0.9"]);
}

#[test]
fn deepest_wildcard_wins() {
    let local = local(&["*.lab A 10.0.0.1", "*.dev.lab A 10.0.0.2"]);
    let reply = ask(&local, "x.dev.lab", Rtype::A).unwrap();
    assert_eq!(reply.answer, ["x.dev.lab. 300 IN A 10.0.0.2"]);
    // Plain suffix matching: `dev.lab` itself falls to `*.lab`.
    let reply = ask(&local, "dev.lab", Rtype::A).unwrap();
    assert_eq!(reply.answer, ["dev.lab. 300 IN A 10.0.0.1"]);
}

#[test]
fn cname_chain_is_followed_within_local_data() {
    let local = local(&[
        "app.lab.internal A 10.99.0.10",
        "app.lab.internal A 10.99.0.11",
        "alias.lab.internal CNAME app.lab.internal",
        "Second.lab.internal 30 CNAME Alias.Lab.Internal.",
    ]);
    let reply = ask(&local, "second.lab.internal", Rtype::A).unwrap();
    assert!(reply.aa());
    assert_eq!(
        reply.answer,
        [
            "second.lab.internal. 30 IN CNAME alias.lab.internal.",
            "alias.lab.internal. 300 IN CNAME app.lab.internal.",
            "app.lab.internal. 300 IN A 10.99.0.10",
            "app.lab.internal. 300 IN A 10.99.0.11",
        ]
    );
    // The end of the chain lacks the type: the chain, then its SOA.
    let reply = ask(&local, "alias.lab.internal", Rtype::AAAA).unwrap();
    assert_eq!(reply.rcode(), Rcode::NOERROR);
    assert_eq!(
        reply.answer,
        ["alias.lab.internal. 300 IN CNAME app.lab.internal."]
    );
    assert_eq!(reply.authority, [LAB_SOA]);
    // Asking for the CNAME itself gives the CNAME alone.
    let reply = ask(&local, "second.lab.internal", Rtype::CNAME).unwrap();
    assert_eq!(
        reply.answer,
        ["second.lab.internal. 30 IN CNAME alias.lab.internal."]
    );
}

#[test]
fn cname_chain_ends_outside_or_nowhere() {
    let mut builder = LocalDataBuilder::new();
    builder.add_local_zone("lab.internal").unwrap();
    for line in [
        "out.lab.internal CNAME www.example.com",
        "gone.lab.internal CNAME missing.lab.internal",
        "loop1.lab.internal CNAME loop2.lab.internal",
        "loop2.lab.internal CNAME loop1.lab.internal",
        "wild.lab.internal CNAME host.dev.lab.internal",
        "*.dev.lab.internal TXT wildcard",
    ] {
        builder.add_record(line).unwrap();
    }
    let local = builder.build();
    let reply = ask(&local, "out.lab.internal", Rtype::A).unwrap();
    assert_eq!(
        reply.answer,
        ["out.lab.internal. 300 IN CNAME www.example.com."]
    );
    assert!(reply.authority.is_empty());

    let reply = ask(&local, "gone.lab.internal", Rtype::A).unwrap();
    assert_eq!(reply.rcode(), Rcode::NXDOMAIN);
    assert_eq!(reply.answer.len(), 1);
    assert_eq!(reply.authority, [LAB_SOA]);

    let reply = ask(&local, "loop1.lab.internal", Rtype::A).unwrap();
    assert_eq!(
        reply.answer,
        [
            "loop1.lab.internal. 300 IN CNAME loop2.lab.internal.",
            "loop2.lab.internal. 300 IN CNAME loop1.lab.internal.",
        ]
    );

    let reply = ask(&local, "wild.lab.internal", Rtype::TXT).unwrap();
    assert_eq!(
        reply.answer,
        [
            "wild.lab.internal. 300 IN CNAME host.dev.lab.internal.",
            "host.dev.lab.internal. 300 IN TXT \"wildcard\"",
        ]
    );
}

/// The chain `local` holds for `message`, which must lead out of local data.
fn chain_for(local: &LocalData, message: &[u8]) -> std::sync::Arc<CnameChain> {
    let mut out = [0u8; 4096];
    match local.answer(&parse_query(message).unwrap(), &mut out) {
        Some(LocalAnswer::Chain(_, chain)) => chain,
        other => panic!("not a chain leading out: {other:?}"),
    }
}

/// A record of an upstream's answer.
enum Upstream<'a> {
    A(&'a str, [u8; 4]),
    Cname(&'a str, &'a str),
    /// An SOA for the zone, in the authority section.
    Soa(&'a str),
    /// A CNAME in the authority section, where no server puts one.
    AuthorityCname(&'a str, &'a str),
}

/// An upstream's answer to `query` with `rcode` and `records`, written with name
/// compression as servers do.
fn upstream_response(query: &[u8], rcode: Rcode, records: &[Upstream<'_>]) -> Vec<u8> {
    const TTL: u32 = 120;
    let mut answer = Answer::to(query).rcode(rcode).compressed();
    for record in records {
        answer = match *record {
            Upstream::A(owner, address) => answer.record(owner, TTL, Data::A(address)),
            Upstream::Cname(owner, target) => answer.record(owner, TTL, Data::Cname(target.into())),
            Upstream::Soa(_) | Upstream::AuthorityCname(..) => answer,
        };
    }
    for record in records {
        answer = match *record {
            Upstream::AuthorityCname(owner, target) => {
                answer.authority(owner, TTL, Data::Cname(target.into()))
            }
            Upstream::Soa(zone) => answer.authority(
                zone,
                30,
                Data::Soa {
                    mname: zone.into(),
                    rname: format!("hostmaster.{zone}"),
                    minimum: 30,
                },
            ),
            Upstream::A(..) | Upstream::Cname(..) => answer,
        };
    }
    answer.build()
}

/// `chain` completed from `response` for `client`, read back; nothing is decided here.
fn completed(chain: &CnameChain, client: &[u8], response: &[u8]) -> Option<Reply> {
    let answer = chain.complete(&parse_query(client).unwrap(), response, 65535, |_| false)?;
    Some(Reply::read(&answer))
}

#[test]
fn a_chain_leading_out_asks_for_its_end_in_the_clients_name() {
    let local = local(&[
        "Files.home.internal CNAME files.lab.internal",
        "files.lab.internal 60 CNAME WWW.Example.com",
    ]);
    let message = query_with(
        0x7777,
        "FILES.home.internal",
        Rtype::AAAA,
        Class::IN,
        Some(true),
    );
    let chain = chain_for(&local, &message);
    assert_eq!(chain.target(), b"\x03www\x07example\x03com\x00");

    let upstream = chain.target_query(&parse_query(&message).unwrap());
    let parsed = parse_query(&upstream).expect("a valid query");
    assert_eq!(parsed.id(), 0x7777);
    assert_eq!(parsed.question().name_wire(), chain.target());
    assert_eq!(parsed.question().qtype(), Rtype::AAAA.to_int());
    assert_eq!(parsed.question().qclass(), Class::IN.to_int());
    let edns = parsed.edns().expect("the client's EDNS");
    assert!(edns.dnssec_ok);
    assert_eq!(edns.udp_payload_size, 4096);
    let header = Message::from_octets(&upstream[..]).unwrap().header();
    assert!(header.rd() && !header.qr());

    // Without EDNS the upstream query has none either.
    let plain = query("files.home.internal", Rtype::A);
    let upstream = chain_for(&local, &plain).target_query(&parse_query(&plain).unwrap());
    assert!(parse_query(&upstream).unwrap().edns().is_none());

    // The CNAME itself, and ANY, stay local.
    let mut out = [0u8; 512];
    for rtype in [Rtype::CNAME, Rtype::ANY] {
        let message = query("files.home.internal", rtype);
        let answer = local.answer(&parse_query(&message).unwrap(), &mut out);
        assert!(
            matches!(answer, Some(LocalAnswer::Complete(_))),
            "{rtype}: {answer:?}"
        );
    }
}

#[test]
fn a_chain_is_finished_with_the_upstreams_records() {
    let local = local(&[
        "files.home.internal CNAME files.lab.internal",
        "files.lab.internal 60 CNAME www.example.com",
    ]);
    let message = query_with(
        0x1234,
        "Files.Home.Internal",
        Rtype::A,
        Class::IN,
        Some(false),
    );
    let client = parse_query(&message).unwrap();
    let chain = chain_for(&local, &message);
    let asked = chain.target_query(&client);
    let www = |last| Upstream::A("www.example.com", [192, 0, 2, last]);
    let response = upstream_response(&asked, Rcode::NOERROR, &[www(7), www(8)]);
    let reply = completed(&chain, &message, &response).expect("an answer");
    assert_eq!(reply.message.header().id(), 0x1234);
    assert_eq!(reply.question_name(), "Files.Home.Internal");
    assert_eq!(reply.rcode(), Rcode::NOERROR);
    assert!(reply.aa() && reply.message.header().ra() && !reply.message.header().tc());
    assert_eq!(
        reply.answer,
        [
            "Files.Home.Internal. 300 IN CNAME files.lab.internal.",
            "files.lab.internal. 60 IN CNAME www.example.com.",
            "www.example.com. 120 IN A 192.0.2.7",
            "www.example.com. 120 IN A 192.0.2.8",
        ]
    );
    assert!(reply.message.opt().is_some(), "the client sent EDNS");

    // NXDOMAIN for the end: the chain, the upstream's SOA, and its RCODE (RFC 6604).
    let response = upstream_response(&asked, Rcode::NXDOMAIN, &[Upstream::Soa("example.com")]);
    let reply = completed(&chain, &message, &response).expect("an answer");
    assert_eq!(reply.rcode(), Rcode::NXDOMAIN);
    assert_eq!(reply.answer.len(), 2);
    assert_eq!(reply.authority.len(), 1);
    assert!(
        reply.authority[0].starts_with("example.com. 30 IN SOA"),
        "{:?}",
        reply.authority
    );

    // A failed or garbled upstream answer finishes nothing: the client gets SERVFAIL.
    let response = upstream_response(&asked, Rcode::SERVFAIL, &[]);
    assert!(completed(&chain, &message, &response).is_none());
    assert!(completed(&chain, &message, &response[..20]).is_none());
    assert!(completed(&chain, &message, b"").is_none());

    // Too big for the client's limit: truncated, as local answers are.
    let response = upstream_response(&asked, Rcode::NOERROR, &[www(7)]);
    let cut = chain.complete(&client, &response, 60, |_| false).unwrap();
    assert!(cut.len() <= 60);
    assert!(Message::from_octets(&cut[..]).unwrap().header().tc());
}

#[test]
fn a_chain_keeps_only_what_the_upstream_says_about_its_end() {
    let local = local(&["web.home.internal CNAME www.example.com"]);
    let message = query("web.home.internal", Rtype::A);
    let chain = chain_for(&local, &message);
    let asked = chain.target_query(&parse_query(&message).unwrap());
    // Out of order, with records for names the query never led to, and a SOA of
    // another zone: only www's own chain and its zone's SOA are kept.
    let response = upstream_response(
        &asked,
        Rcode::NOERROR,
        &[
            Upstream::A("cdn.example.net", [192, 0, 2, 9]),
            Upstream::A("web.home.internal", [198, 51, 100, 66]),
            Upstream::Cname("www.example.com", "cdn.example.net"),
            Upstream::A("bank.example.org", [198, 51, 100, 67]),
            Upstream::Soa("example.org"),
            Upstream::Soa("example.net"),
        ],
    );
    let reply = completed(&chain, &message, &response).expect("an answer");
    assert_eq!(
        reply.answer,
        [
            "web.home.internal. 300 IN CNAME www.example.com.",
            "www.example.com. 120 IN CNAME cdn.example.net.",
            "cdn.example.net. 120 IN A 192.0.2.9",
        ]
    );
    assert_eq!(reply.authority.len(), 1);
    assert!(
        reply.authority[0].starts_with("example.net. 30 IN SOA"),
        "{:?}",
        reply.authority
    );

    // A CNAME back into names decided here ends the chain: the upstream does not speak
    // for them.
    let response = upstream_response(
        &asked,
        Rcode::NOERROR,
        &[
            Upstream::Cname("www.example.com", "nas.home.internal"),
            Upstream::A("nas.home.internal", [198, 51, 100, 66]),
        ],
    );
    let decided = |name: &[u8]| name.ends_with(b"\x04home\x08internal\x00");
    let answer = chain
        .complete(&parse_query(&message).unwrap(), &response, 65535, decided)
        .unwrap();
    let reply = Reply::read(&answer);
    assert_eq!(reply.answer.len(), 2, "{:?}", reply.answer);
    assert!(
        reply.answer[1].contains("CNAME nas.home.internal."),
        "{:?}",
        reply.answer
    );

    // A loop between upstream CNAMEs ends when it comes round.
    let response = upstream_response(
        &asked,
        Rcode::NOERROR,
        &[
            Upstream::Cname("www.example.com", "a.example.net"),
            Upstream::Cname("a.example.net", "www.example.com"),
        ],
    );
    let reply = completed(&chain, &message, &response).expect("an answer");
    assert_eq!(reply.answer.len(), 3, "{:?}", reply.answer);
}

#[test]
fn a_chain_passes_on_truncation_and_refuses_extended_errors() {
    let local = local(&["web.home.internal CNAME www.example.com"]);
    let message = query("web.home.internal", Rtype::A);
    let chain = chain_for(&local, &message);
    let asked = chain.target_query(&parse_query(&message).unwrap());

    // A truncated upstream answer stays truncated, so the client retries over TCP.
    let mut response = upstream_response(&asked, Rcode::NOERROR, &[]);
    response[2] |= 0x02;
    let reply = completed(&chain, &message, &response).expect("an answer");
    assert!(reply.message.header().tc());

    // Many compressed records outgrow one message once written out: what fits, with TC.
    let long = format!(
        "{}.example.com",
        ["x".repeat(63), "y".repeat(63), "z".repeat(63)].join(".")
    );
    let mut records = vec![Upstream::Cname("www.example.com", &long)];
    let addresses: Vec<[u8; 4]> = (0..3000u32)
        .map(|i| [10, 0, (i >> 8) as u8, i as u8])
        .collect();
    records.extend(addresses.iter().map(|address| Upstream::A(&long, *address)));
    let response = upstream_response(&asked, Rcode::NOERROR, &records);
    assert!(response.len() < 65535);
    let answer = chain
        .complete(&parse_query(&message).unwrap(), &response, 65535, |_| false)
        .unwrap();
    assert!(answer.len() <= 65535);
    let reply = Reply::read(&answer);
    assert!(reply.message.header().tc(), "cut and marked");
    assert!(
        reply.answer.len() > 200,
        "with what fits: {}",
        reply.answer.len()
    );

    // BADVERS (an extended RCODE in the OPT record) is no answer to build on.
    let mut builder = MessageBuilder::new_vec();
    builder.header_mut().set_qr(true);
    let mut additional = builder.question().additional();
    additional
        .opt(|opt| {
            opt.set_rcode(domain::base::iana::OptRcode::BADVERS);
            Ok(())
        })
        .unwrap();
    let badvers = additional.finish();
    assert!(completed(&chain, &message, &badvers).is_none());
}

#[test]
fn automatic_ptr_for_v4_and_v6() {
    let local = local(&[
        "app.lab.internal A 10.99.0.10",
        "other.lab.internal A 10.99.0.10",
        "app.lab.internal AAAA fd99::1:20",
        "*.dev.lab.internal A 10.99.0.30",
        "named.lab.internal A 10.99.0.40",
        "40.0.99.10.in-addr.arpa PTR explicit.lab.internal",
    ]);
    let reply = ask(&local, "10.0.99.10.in-addr.arpa", Rtype::PTR).unwrap();
    assert!(reply.aa());
    assert_eq!(
        reply.answer,
        ["10.0.99.10.in-addr.arpa. 300 IN PTR app.lab.internal."]
    );
    let nibbles = "0.2.0.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.9.9.d.f.ip6.arpa";
    let reply = ask(&local, nibbles, Rtype::PTR).unwrap();
    assert_eq!(
        reply.answer,
        [format!("{nibbles}. 300 IN PTR app.lab.internal.")]
    );
    let reply = ask(&local, "40.0.99.10.in-addr.arpa", Rtype::PTR).unwrap();
    assert_eq!(
        reply.answer,
        ["40.0.99.10.in-addr.arpa. 300 IN PTR explicit.lab.internal."]
    );
    // Wildcards have no single name to point back to.
    assert!(ask(&local, "30.0.99.10.in-addr.arpa", Rtype::PTR).is_none());
    // A reverse name exists: other types are NODATA.
    let reply = ask(&local, "10.0.99.10.in-addr.arpa", Rtype::A).unwrap();
    assert!(reply.answer.is_empty());
    assert_eq!(reply.authority.len(), 1);
    // 6 records + 2 automatic PTRs (10.99.0.40 has an explicit one).
    assert_eq!(local.len(), 8);
}

#[test]
fn txt_with_spaces_several_strings_and_escapes() {
    let local = local(&[
        r#"note.lab.internal TXT "hello world""#,
        r#"multi.lab.internal 60 IN TXT "first part" second "" "say \"hi\" \\ \065""#,
    ]);
    let reply = ask(&local, "note.lab.internal", Rtype::TXT).unwrap();
    assert_eq!(
        reply.answer,
        ["note.lab.internal. 300 IN TXT \"hello world\""]
    );
    let reply = ask(&local, "multi.lab.internal", Rtype::TXT).unwrap();
    assert_eq!(
        reply.answer,
        [r#"multi.lab.internal. 60 IN TXT "first part" "second" "" "say \"hi\" \\ A""#]
    );
}

#[test]
fn any_question_gets_every_rrset() {
    let local = local(&["h.lab A 10.0.0.1", "h.lab AAAA ::1", "h.lab TXT x"]);
    let reply = ask(&local, "h.lab", Rtype::ANY).unwrap();
    assert_eq!(reply.answer.len(), 3);
}

#[test]
fn rrset_shares_the_lowest_ttl_and_drops_duplicates() {
    let local = local(&[
        "h.lab 600 A 10.0.0.1",
        "h.lab 60 A 10.0.0.2",
        "h.lab A 10.0.0.1",
    ]);
    let reply = ask(&local, "h.lab", Rtype::A).unwrap();
    assert_eq!(
        reply.answer,
        ["h.lab. 60 IN A 10.0.0.1", "h.lab. 60 IN A 10.0.0.2"]
    );
    // Two A records and their automatic PTRs.
    assert_eq!(local.len(), 4);
}

#[test]
fn edns_gets_an_opt_record_with_do_copied() {
    let local = local(&["app.lab A 10.0.0.1"]);
    for dnssec_ok in [false, true] {
        let message = query_with(7, "app.lab", Rtype::A, Class::IN, Some(dnssec_ok));
        let reply = answer_with(&local, &message).unwrap();
        let opt = reply.message.opt().expect("an OPT record");
        assert_eq!(opt.udp_payload_size(), 1232);
        assert_eq!(opt.dnssec_ok(), dnssec_ok);
        assert_eq!(reply.answer.len(), 1);
    }
}

#[test]
fn answer_too_large_for_the_buffer_is_truncated() {
    let lines: Vec<String> = (0..40)
        .map(|i| format!("big.lab TXT \"{i:0>60}\""))
        .collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let local = local(&refs);
    let message = query_with(9, "big.lab", Rtype::TXT, Class::IN, Some(false));
    let parsed = parse_query(&message).unwrap();
    let mut out = [0u8; 512];
    let len = local.answer(&parsed, &mut out).unwrap().written();
    let reply = Reply::read(&out[..len]);
    assert!(reply.message.header().tc());
    assert!(reply.message.header().aa());
    assert!(reply.answer.is_empty());
    assert!(reply.message.opt().is_some());
    let mut big = [0u8; 4096];
    let len = local.answer(&parsed, &mut big).unwrap().written();
    assert_eq!(Reply::read(&big[..len]).answer.len(), 40);
    // Shorter than a header: decided, nothing written.
    assert_eq!(
        local.answer(&parsed, &mut [0u8; 11]).map(|a| a.written()),
        Some(0)
    );
}

#[test]
fn hosts_lines_with_aliases_and_comments() {
    let mut builder = LocalDataBuilder::new();
    for line in [
        "# a hosts file",
        "",
        "   ",
        "10.0.0.5\tnas.lab.internal nas  # the NAS",
        "fd00::5 nas.lab.internal",
        "::1 localhost",
    ] {
        builder.add_hosts_line(line).unwrap();
    }
    let local = builder.build();
    let reply = ask(&local, "nas", Rtype::A).unwrap();
    assert_eq!(reply.answer, ["nas. 300 IN A 10.0.0.5"]);
    let reply = ask(&local, "nas.lab.internal", Rtype::AAAA).unwrap();
    assert_eq!(reply.answer, ["nas.lab.internal. 300 IN AAAA fd00::5"]);
    let reply = ask(&local, "5.0.0.10.in-addr.arpa", Rtype::PTR).unwrap();
    assert_eq!(
        reply.answer,
        ["5.0.0.10.in-addr.arpa. 300 IN PTR nas.lab.internal."]
    );
    assert!(local.len() >= 4);
}

#[test]
fn bad_hosts_lines_are_explained() {
    let error = |line: &str| LocalDataBuilder::new().add_hosts_line(line).unwrap_err().0;
    assert!(error("10.0.0.5").contains("no name"));
    assert!(error("10.0.0.300 host").contains("not an IP address"));
    assert!(error("fe80::1%lo0 localhost").contains("scoped"));
    assert!(error("10.0.0.1 bad_name!").contains("'!'"));
    assert!(error("10.0.0.1 *.wild").contains("wildcard"));
    let mut builder = LocalDataBuilder::new();
    builder.add_record("web CNAME app").unwrap();
    assert!(
        builder
            .add_hosts_line("10.0.0.1 ok web")
            .unwrap_err()
            .0
            .contains("CNAME")
    );
    // Nothing of the refused line was added.
    assert!(builder.build().len() == 1);
}

#[test]
fn bad_records_are_explained() {
    assert!(record_error("").contains("empty record"));
    assert!(record_error("app.lab").contains("no type"));
    assert!(record_error("app.lab A").contains("no data"));
    assert!(record_error("app.lab 300 A").contains("no data"));
    assert!(record_error("app.lab MX 10 mail.lab").contains("unsupported record type"));
    assert!(record_error("app.lab A 10.0.0.256").contains("not an IPv4 address"));
    assert!(record_error("app.lab A fd00::1").contains("not an IPv4 address"));
    assert!(record_error("app.lab AAAA 10.0.0.1").contains("not an IPv6 address"));
    assert!(record_error("app.lab A 10.0.0.1 10.0.0.2").contains("expected an IPv4 address"));
    assert!(record_error("app.lab 4294967296 A 10.0.0.1").contains("TTL"));
    assert!(record_error("app.lab 2147483648 A 10.0.0.1").contains("TTL"));
    assert!(record_error("app..lab A 10.0.0.1").contains("empty label"));
    assert!(record_error("ünï.lab A 10.0.0.1").contains("punycode"));
    assert!(record_error("a.*.lab A 10.0.0.1").contains("first label"));
    assert!(record_error("alias CNAME *.lab").contains("wildcard"));
    assert!(record_error("alias CNAME a b").contains("expected a name"));
    assert!(record_error(r#"t TXT "open"#).contains("unclosed quote"));
    assert!(record_error(r#"t TXT "a"b"#).contains("closing quote"));
    assert!(record_error(r#"t TXT a"b"#).contains("quote inside"));
    assert!(record_error(r#"t TXT "\2""#).contains("bad escape"));
    assert!(record_error(r#"t TXT "\300""#).contains("bad escape"));
    assert!(record_error(&format!("t TXT {}", "x".repeat(256))).contains("255 bytes"));

    let mut builder = LocalDataBuilder::new();
    builder.add_record("web A 10.0.0.1").unwrap();
    assert!(
        builder
            .add_record("web CNAME app")
            .unwrap_err()
            .0
            .contains("other records")
    );
    builder.add_record("alias CNAME app").unwrap();
    builder.add_record("alias CNAME app").unwrap();
    assert!(
        builder
            .add_record("alias CNAME other")
            .unwrap_err()
            .0
            .contains("more than one CNAME")
    );
    assert!(
        builder
            .add_record("alias A 10.0.0.2")
            .unwrap_err()
            .0
            .contains("has a CNAME")
    );

    assert!(
        LocalDataBuilder::new()
            .add_local_zone(".")
            .unwrap_err()
            .0
            .contains("root")
    );
    assert!(LocalDataBuilder::new().add_local_zone("*.lab").is_err());
    let shown = RecordError("x".into()).to_string();
    assert_eq!(shown, "x");
}

#[test]
fn empty_and_counted() {
    let empty = LocalDataBuilder::new().build();
    assert!(empty.is_empty());
    assert_eq!(empty.len(), 0);
    assert!(ask(&empty, "anything", Rtype::A).is_none());
    let mut builder = LocalDataBuilder::new();
    builder.add_local_zone("lab").unwrap();
    assert!(!builder.build().is_empty());
}

#[test]
fn local_data_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<LocalData>();
    shareable::<BlockList>();
    shareable::<Routes<u32>>();
}

// ---- blocklists ------------------------------------------------------------

fn block_reply(list: &BlockList, qname: &str, qtype: Rtype) -> Option<Reply> {
    let message = query(qname, qtype);
    let parsed = parse_query(&message).unwrap();
    assert_eq!(
        list.is_blocked(parsed.question()),
        list.answer(&parsed, &mut [0u8; 512]).is_some()
    );
    let mut out = [0u8; MAX_BLOCKED_LEN];
    let len = list.answer(&parsed, &mut out)?;
    let reply = Reply::read(&out[..len]);
    assert_eq!(reply.message.header().id(), 0x4242);
    assert!(reply.message.header().ra() && reply.message.header().rd());
    Some(reply)
}

fn blocklist(mode: BlockMode) -> BlockList {
    let mut list = BlockList::new(mode, Duration::from_secs(90));
    list.add_domain("ads.example").unwrap();
    list
}

#[test]
fn nxdomain_mode_blocks_the_domain_and_below() {
    let list = blocklist(BlockMode::NxDomain);
    for (name, qtype) in [
        ("ads.example", Rtype::A),
        ("Tracker.ADS.example", Rtype::AAAA),
        ("a.b.c.ads.example", Rtype::MX),
    ] {
        let reply = block_reply(&list, name, qtype).unwrap();
        assert_eq!(reply.rcode(), Rcode::NXDOMAIN);
        assert!(reply.answer.is_empty());
        assert_eq!(reply.question_name(), name);
        // The SOA is owned by the blocked domain, as the client spelled it.
        let zone = &name[name.len() - "ads.example".len()..];
        assert_eq!(
            reply.authority,
            [format!(
                "{zone}. 90 IN SOA {zone}. hostmaster.{zone}. 1 3600 600 86400 90"
            )]
        );
    }
    assert!(block_reply(&list, "example", Rtype::A).is_none());
    assert!(block_reply(&list, "notads.example", Rtype::A).is_none());
    assert!(block_reply(&list, "ads.example.com", Rtype::A).is_none());
}

#[test]
fn null_mode_answers_unspecified_addresses() {
    let list = blocklist(BlockMode::Null);
    let reply = block_reply(&list, "x.ads.example", Rtype::A).unwrap();
    assert_eq!(reply.rcode(), Rcode::NOERROR);
    assert_eq!(reply.answer, ["x.ads.example. 90 IN A 0.0.0.0"]);
    let reply = block_reply(&list, "x.Ads.example", Rtype::AAAA).unwrap();
    assert_eq!(reply.answer, ["x.Ads.example. 90 IN AAAA ::"]);
    let reply = block_reply(&list, "ads.example", Rtype::MX).unwrap();
    assert_eq!(reply.rcode(), Rcode::NOERROR);
    assert!(reply.answer.is_empty());
    assert_eq!(reply.authority.len(), 1);
    assert!(reply.authority[0].ends_with("86400 90"));
}

#[test]
fn a_cname_to_a_blocked_name_cloaks_it() {
    let list = blocklist(BlockMode::NxDomain);
    let client = query("metrics.news.example", Rtype::A);
    let cloaked = |records: &[Upstream<'_>]| {
        list.cloaks_blocked_name(&upstream_response(&client, Rcode::NOERROR, records))
    };
    // Directly, further down the chain, under the blocked domain, in any case.
    assert!(cloaked(&[
        Upstream::Cname("metrics.news.example", "t.ads.example"),
        Upstream::A("t.ads.example", [203, 0, 113, 1]),
    ]));
    assert!(cloaked(&[
        Upstream::Cname("metrics.news.example", "edge.cdn.example"),
        Upstream::Cname("edge.cdn.example", "ADS.example"),
        Upstream::A("ADS.example", [203, 0, 113, 1]),
    ]));
    // A chain that stays clear of it, and a plain answer, are not.
    assert!(!cloaked(&[
        Upstream::Cname("metrics.news.example", "edge.cdn.example"),
        Upstream::A("edge.cdn.example", [203, 0, 113, 1]),
    ]));
    assert!(!cloaked(&[Upstream::A(
        "metrics.news.example",
        [203, 0, 113, 1]
    )]));
    assert!(!cloaked(&[Upstream::Cname(
        "metrics.news.example",
        "notads.example"
    )]));
    // A CNAME only in the authority section does not count.
    assert!(!cloaked(&[
        Upstream::A("metrics.news.example", [203, 0, 113, 1]),
        Upstream::AuthorityCname("metrics.news.example", "ads.example"),
    ]));
    // An empty list judges nothing; neither do bytes that do not read.
    let empty = BlockList::new(BlockMode::NxDomain, Duration::from_secs(90));
    let response = upstream_response(
        &client,
        Rcode::NOERROR,
        &[Upstream::Cname("metrics.news.example", "ads.example")],
    );
    assert!(!empty.cloaks_blocked_name(&response));
    assert!(!list.cloaks_blocked_name(&response[..response.len() - 3]));
    assert!(!list.cloaks_blocked_name(&[]));
}

#[test]
fn a_cloaked_name_is_answered_as_blocked_under_its_own_name() {
    for (mode, rcode) in [
        (BlockMode::NxDomain, Rcode::NXDOMAIN),
        (BlockMode::Null, Rcode::NOERROR),
    ] {
        let list = blocklist(mode);
        let message = query("Metrics.News.example", Rtype::A);
        let mut out = [0u8; MAX_BLOCKED_LEN];
        let len = list.answer_cloaked(&parse_query(&message).unwrap(), &mut out);
        let reply = Reply::read(&out[..len]);
        assert_eq!(reply.rcode(), rcode);
        assert_eq!(reply.message.header().id(), 0x4242);
        match mode {
            BlockMode::NxDomain => assert_eq!(
                reply.authority,
                ["Metrics.News.example. 90 IN SOA Metrics.News.example. \
                  hostmaster.Metrics.News.example. 1 3600 600 86400 90"]
            ),
            BlockMode::Null => {
                assert_eq!(reply.answer, ["Metrics.News.example. 90 IN A 0.0.0.0"]);
            }
        }
    }
}

#[test]
fn a_cloaked_long_name_gets_a_well_formed_soa() {
    let list = blocklist(BlockMode::NxDomain);
    // 252 bytes in wire form: "hostmaster." in front would make RNAME too long.
    let long = format!(
        "{}.{}.{}.{}.example",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(50)
    );
    let message = query(&long, Rtype::A);
    let mut out = [0u8; MAX_BLOCKED_LEN];
    let len = list.answer_cloaked(&parse_query(&message).unwrap(), &mut out);
    let reply = Reply::read(&out[..len]);
    assert_eq!(reply.rcode(), Rcode::NXDOMAIN);
    assert_eq!(
        reply.authority,
        [format!(
            "{long}. 90 IN SOA {long}. {long}. 1 3600 600 86400 90"
        )]
    );
}

#[test]
fn blocked_answer_carries_opt_and_is_not_allocated_per_name() {
    let list = blocklist(BlockMode::NxDomain);
    let message = query_with(3, "ads.example", Rtype::A, Class::IN, Some(true));
    let parsed = parse_query(&message).unwrap();
    let mut out = [0u8; 512];
    let len = list.answer(&parsed, &mut out).unwrap();
    let reply = Reply::read(&out[..len]);
    assert!(reply.message.opt().unwrap().dnssec_ok());
}

#[test]
fn list_lines_in_every_format() {
    let mut list = BlockList::new(BlockMode::NxDomain, Duration::from_secs(60));
    for line in [
        "# StevenBlack-style header",
        "127.0.0.1 localhost",
        "127.0.0.1 localhost.localdomain",
        "127.0.0.1 local",
        "255.255.255.255 broadcasthost",
        "::1 localhost ip6-localhost ip6-loopback",
        "fe80::1%lo0 localhost",
        "ff02::1 ip6-allnodes",
        "0.0.0.0 0.0.0.0",
        "",
        "0.0.0.0 hosts.example # inline comment",
        "127.0.0.1\tloop.example second.example",
        ":: v6.example",
        "plain.example",
        "  Upper.Example.  ",
        "*.wild.example",
        "||adblock.example^",
        "! adblock comment",
        "[Adblock Plus 2.0]",
    ] {
        list.add_list_line(line)
            .unwrap_or_else(|e| panic!("{line:?}: {e}"));
    }
    assert_eq!(list.len(), 8);
    for name in [
        "hosts.example",
        "loop.example",
        "second.example",
        "v6.example",
        "plain.example",
        "upper.example",
        "x.wild.example",
        "adblock.example",
    ] {
        assert!(block_reply(&list, name, Rtype::A).is_some(), "{name}");
    }
    assert!(block_reply(&list, "localhost", Rtype::A).is_none());
    assert!(block_reply(&list, "example", Rtype::A).is_none());
}

#[test]
fn bad_list_lines_are_explained() {
    let error = |line: &str| {
        BlockList::new(BlockMode::Null, Duration::ZERO)
            .add_list_line(line)
            .unwrap_err()
            .0
    };
    assert!(error("@@||allowed.example^").contains("exception"));
    assert!(error("||ads.example^$third-party").contains("options"));
    assert!(error("||ads.example").contains("||domain^"));
    assert!(error("0.0.0.0").contains("no name"));
    assert!(error("two words").contains("expected a domain"));
    assert!(error("0.0.0.0 bad!name").contains("'!'"));
    assert!(error("/regex/").contains("'/'"));
    let mut list = BlockList::new(BlockMode::Null, Duration::ZERO);
    assert!(list.add_domain(".").unwrap_err().0.contains("root"));
    assert!(list.add_domain("*.x").is_err());
    assert!(list.is_empty());
}

#[test]
fn parent_blocking_with_many_entries() {
    let mut list = BlockList::new(BlockMode::NxDomain, Duration::from_secs(60));
    for i in 0..1000 {
        list.add_domain(&format!("d{i}.example")).unwrap();
    }
    list.add_domain("example.org").unwrap();
    assert!(block_reply(&list, "a.b.c.d.example.org", Rtype::A).is_some());
    assert!(block_reply(&list, "x.d999.example", Rtype::A).is_some());
    assert!(block_reply(&list, "d1000.example", Rtype::A).is_none());
}

// ---- routes ------------------------------------------------------------------

fn route<'a>(routes: &'a Routes<&'static str>, name: &str) -> &'a str {
    let message = query(name, Rtype::A);
    let parsed = parse_query(&message).unwrap();
    routes.lookup(parsed.question())
}

#[test]
fn longest_suffix_wins() {
    let mut routes = Routes::new("outside");
    routes.add("corp.internal", "corp").unwrap();
    routes.add("lab.corp.internal.", "lab").unwrap();
    routes.add("Corp.Example", "corp").unwrap();
    assert_eq!(route(&routes, "corp.internal"), "corp");
    assert_eq!(route(&routes, "WWW.corp.internal"), "corp");
    assert_eq!(route(&routes, "lab.corp.internal"), "lab");
    assert_eq!(route(&routes, "x.y.lab.corp.internal"), "lab");
    assert_eq!(route(&routes, "corp.example"), "corp");
    assert_eq!(route(&routes, "xcorp.internal"), "outside");
    assert_eq!(route(&routes, "internal"), "outside");
    assert_eq!(route(&routes, "."), "outside");
    assert_eq!(routes.len(), 3);
}

#[test]
fn root_replaces_the_default_and_duplicates_are_errors() {
    let mut routes = Routes::new("first");
    assert_eq!(route(&routes, "a.b"), "first");
    routes.add(".", "second").unwrap();
    assert_eq!(route(&routes, "a.b"), "second");
    assert_eq!(*routes.default_route(), "second");
    routes.add("b", "b").unwrap();
    assert!(
        routes
            .add("B.", "again")
            .unwrap_err()
            .0
            .contains("already has a route")
    );
    assert!(routes.add("bad name", "x").unwrap_err().0.contains("' '"));
    assert!(routes.add("*.b", "x").is_err());
    assert_eq!(route(&routes, "a.b"), "b");
}

//! End-to-end tests of the resolver (issue 3; the config contract is in the README): cache, serve-stale,
//! local records, split DNS through the tunnel, DoT and DoH upstreams, blocklists, EDNS and
//! truncation, config errors. tundns runs in C against real servers in N (see
//! `common::resolver_lab`): an instrumented unbound whose query log shows what reached the
//! upstream, the same unbound over DoT and DoH with a lab CA, a tunnel-only unbound, dnsdist.
//! Clients are dig, kdig and glibc.
//!
//! The `lab_baseline_*` tests need no tundns: they prove the lab's additions work, so a
//! failure elsewhere points at tundns.
//!
//! Run as root: `TUNDNS_E2E=1 cargo test -p tundns --test resolver`. Without root or the lab
//! tools the tests print "skipped: ..." and pass, unless `TUNDNS_E2E=1`.

mod common;

use common::dig_output::{answer_count, has_flag, message_size, section, status};
use common::resolver_lab::*;
use common::*;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

/// Slack for WireGuard keepalives (32 bytes each) when comparing counters; one DNS query
/// through the tunnel costs more than this on its own.
const KEEPALIVE_SLACK_BYTES: u64 = 64;
const BURST_QUERIES: usize = 20;

// ---------------------------------------------------------------------------------------------
// Baselines: the lab's additions, without tundns.

#[test]
fn lab_baseline_unbound_serves_dot_and_doh_with_the_lab_ca() {
    let lab = lab!(LabOptions::encrypted());
    let c = &lab.client_ns;
    let ca = format!("+tls-ca={}", lab.ca_file().display());
    let hostname = format!("+tls-hostname={TLS_NAME}");
    let https = format!("+https={DOH_PATH}");
    let tls_before = lab.upstream_stat("num.query.tls");
    let https_before = lab.upstream_stat("num.query.https");

    let dot = lab.kdig(
        c,
        UNBOUND_V4,
        &["+tls", &ca, &hostname, WWW_NAME, "A", "+short"],
    );
    assert_eq!(dot.assert_success().stdout.trim(), WWW_A, "{dot}");
    let dot_v6 = lab.kdig(
        c,
        UNBOUND_V6,
        &["+tls", &ca, &hostname, WWW_NAME, "AAAA", "+short"],
    );
    assert_eq!(dot_v6.assert_success().stdout.trim(), WWW_AAAA, "{dot_v6}");
    let doh = lab.kdig(
        c,
        UNBOUND_V4,
        &[&https, &ca, &hostname, WWW_NAME, "AAAA", "+short"],
    );
    assert_eq!(doh.assert_success().stdout.trim(), WWW_AAAA, "{doh}");

    assert!(
        lab.upstream_stat("num.query.tls") > tls_before,
        "no DoT query counted"
    );
    assert!(
        lab.upstream_stat("num.query.https") > https_before,
        "no DoH query counted"
    );

    // The wrong CA: the handshake fails, so the negative tests in this file mean something.
    let wrong = format!("+tls-ca={}", lab.wrong_ca_file().display());
    for transport in ["+tls", https.as_str()] {
        let run = lab.kdig(
            c,
            UNBOUND_V4,
            &[transport, &wrong, &hostname, WWW_NAME, "+short"],
        );
        assert!(
            !run.succeeded() && !run.stdout.contains(WWW_A),
            "a wrong CA must fail the handshake:\n{run}"
        );
    }
    // Nothing listens for TLS on the refusing address.
    let dead = lab.kdig(
        c,
        DEAD_REFUSING,
        &["+tls", &ca, &hostname, WWW_NAME, "+short"],
    );
    assert!(!dead.succeeded(), "{dead}");
}

#[test]
fn lab_baseline_tunnel_resolver_is_reachable_only_through_the_tunnel() {
    let lab = lab!(LabOptions::split_dns());
    let (c, n) = (&lab.client_ns, &lab.network_ns);
    // Without a tunnel, C has no route to it.
    let before_tunnel = lab.dig(c, TUNNEL_RESOLVER_V4, &[CORP_DB_NAME, "+short"]);
    assert!(!before_tunnel.succeeded(), "{before_tunnel}");
    // From a non-tunnel source it refuses.
    let outside = lab.dig(n, TUNNEL_RESOLVER_V4, &["-b", "192.0.2.1", CORP_DB_NAME]);
    assert_eq!(status(&outside).as_deref(), Some("REFUSED"), "{outside}");
    // The outside unbound does not know corp.internal.
    let elsewhere = lab.dig(c, UNBOUND_V4, &[CORP_DB_NAME, "A"]);
    assert_eq!(
        status(&elsewhere).as_deref(),
        Some("NXDOMAIN"),
        "{elsewhere}"
    );

    lab.start_wireguard_go_client();
    lab.assert_ping(c, PEER_TUNNEL_V4);
    let before = lab.peer_transfer_counters();
    let queries_before = lab.tunnel_resolver_queries(CORP_DB_NAME, None);
    for (server, rtype, expected) in [
        (TUNNEL_RESOLVER_V4, "A", CORP_DB_A),
        (TUNNEL_RESOLVER_V6, "AAAA", CORP_DB_AAAA),
    ] {
        let run = lab.dig(c, server, &[CORP_DB_NAME, rtype, "+short"]);
        assert_eq!(run.assert_success().stdout.trim(), expected, "{run}");
    }
    let after = lab.peer_transfer_counters();
    assert!(
        after.since(before) > KEEPALIVE_SLACK_BYTES,
        "the answers must have crossed the tunnel: {before:?} -> {after:?}"
    );
    assert_eq!(
        lab.tunnel_resolver_queries(CORP_DB_NAME, None) - queries_before,
        2,
        "{}",
        lab.tunnel_resolver_log()
    );
}

#[test]
fn lab_baseline_query_log_counts_and_unbound_restarts() {
    let lab = lab!(LabOptions::resolver());
    let c = &lab.client_ns;
    let name = "ttl.lab.test";
    assert_eq!(lab.upstream_queries(name, None), 0);
    for _ in 0..2 {
        let run = lab.dig(c, UNBOUND_V4, &["TtL.LaB.TeSt", "A", "+short"]);
        assert_eq!(run.assert_success().stdout.trim(), "203.0.113.73", "{run}");
    }
    assert_eq!(
        lab.upstream_queries(name, Some("A")),
        2,
        "{}",
        lab.unbound_log()
    );
    assert_eq!(lab.upstream_queries(name, Some("AAAA")), 0);
    let total = lab.upstream_stat("total.num.queries");
    assert!(total >= 2, "total.num.queries = {total}");

    lab.stop_unbound();
    let down = lab.dig(c, UNBOUND_V4, &[name, "A"]);
    assert!(down.stdout.contains("connection refused"), "{down}");
    lab.start_unbound();
    let up = lab.dig(c, UNBOUND_V4, &[name, "A", "+short"]);
    assert_eq!(up.assert_success().stdout.trim(), "203.0.113.73", "{up}");
    // The log carries on across the restart.
    assert_eq!(
        lab.upstream_queries(name, Some("A")),
        3,
        "{}",
        lab.unbound_log()
    );

    // Paused, queries wait in the socket and are answered once it resumes.
    let paused = lab.pause_unbound();
    let started = Instant::now();
    let mut waiting = lab.spawn_in(
        c,
        "paused dig",
        &[
            "dig",
            &format!("@{UNBOUND_V4}"),
            "+tries=1",
            "+time=5",
            "+short",
            name,
            "A",
        ],
    );
    thread::sleep(Duration::from_millis(500));
    assert!(
        waiting.is_running(),
        "answered while paused:\n{}",
        waiting.output()
    );
    drop(paused);
    let status = waiting.wait_for_exit(Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "{}", waiting.output());
    assert_eq!(waiting.output().trim(), "203.0.113.73");
    assert!(started.elapsed() >= Duration::from_millis(500));
}

#[test]
fn lab_baseline_fixtures_for_blocks_edns_and_dnsdist() {
    let lab = lab!(LabOptions {
        dnsdist: true,
        ..LabOptions::resolver()
    });
    let c = &lab.client_ns;
    // The blocked names exist upstream, so a block is an answer unbound would not give.
    for (name, expected) in [
        ("ads.lab.test", "203.0.113.66"),
        ("x.ads.lab.test", "203.0.113.67"),
        ("tracker.lab.test", "203.0.113.68"),
        ("listed.lab.test", "203.0.113.69"),
    ] {
        let run = lab.dig(c, UNBOUND_V4, &[name, "A", "+short"]);
        assert_eq!(run.assert_success().stdout.trim(), expected, "{run}");
    }
    // Negative answers carry the SOA the cache needs for RFC 2308.
    let nxdomain = lab.dig(c, UNBOUND_V4, &["nothing-here.lab.test", "A"]);
    assert_eq!(status(&nxdomain).as_deref(), Some("NXDOMAIN"), "{nxdomain}");
    assert_soa_in_authority(&nxdomain, "lab.test.");
    let nodata = lab.dig(c, UNBOUND_V4, &[WWW_NAME, "MX"]);
    assert_eq!(answer_count(&nodata), Some(0), "{nodata}");
    assert_soa_in_authority(&nodata, "lab.test.");
    // dig and unbound agree on BADVERS, so the tundns check reads the right thing.
    let badvers = lab.dig(c, UNBOUND_V4, &["+edns=1", "+noednsnegotiation", WWW_NAME]);
    assert_eq!(status(&badvers).as_deref(), Some("BADVERS"), "{badvers}");
    // A small buffer truncates the big TXT at unbound too.
    let small = lab.dig(
        c,
        UNBOUND_V4,
        &["+bufsize=512", "+ignore", BIG_TXT_NAME, "TXT"],
    );
    assert!(has_flag(&small, "tc"), "{small}");
    assert_whole_big_txt_records(&small);
    // dnsdist forwards to the same unbound.
    let via_dnsdist = lab.dig(c, DNSDIST_V4, &[WWW_NAME, "A", "+short"]);
    assert_eq!(
        via_dnsdist.assert_success().stdout.trim(),
        WWW_A,
        "{via_dnsdist}"
    );
    // A burst held by a paused unbound is answered on resume, and every query is counted:
    // without a collapsing proxy in between, unbound sees all of them.
    let name = "burst.lab.test";
    let before = lab.upstream_queries(name, None);
    let paused = lab.pause_unbound();
    let mut burst = lab.spawn_parallel_digs(c, UNBOUND_V4, BURST_QUERIES, &[name, "A"]);
    thread::sleep(Duration::from_millis(700));
    assert_eq!(
        lab.upstream_queries(name, None),
        before,
        "answered while paused"
    );
    drop(paused);
    assert!(burst.wait_for_exit(Duration::from_secs(10)).is_some());
    let answered = burst
        .output()
        .lines()
        .filter(|l| *l == "203.0.113.71")
        .count();
    assert_eq!(answered, BURST_QUERIES, "{}", burst.output());
    assert_eq!(lab.upstream_queries(name, None) - before, BURST_QUERIES);
}

// ---------------------------------------------------------------------------------------------
// The cache.

#[test]
fn cache_answers_repeat_without_upstream_and_counts_ttl_down() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(&["Cache = on"]));
    let name = "ttl.lab.test";
    let before = lab.upstream_queries(name, None);
    let first = ask(&lab, &[name, "A"]);
    let first_ttl = single_answer(&first, "203.0.113.73").ttl;
    thread::sleep(Duration::from_millis(2100));
    let second = ask(&lab, &[name, "A"]);
    let second_ttl = single_answer(&second, "203.0.113.73").ttl;
    assert_eq!(
        lab.upstream_queries(name, None) - before,
        1,
        "the repeat must be a cache hit:\n{}",
        lab.unbound_log()
    );
    assert!(
        second_ttl < first_ttl && second_ttl + 5 >= first_ttl,
        "the TTL must count down by about 2 s: {first_ttl} then {second_ttl}"
    );
}

#[test]
fn cache_preserves_the_question_case() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(&["Cache = on"]));
    let before = lab.upstream_queries(WWW_NAME, Some("A"));
    // A miss (forwarded), then a hit, each in its own spelling.
    for spelling in ["WwW.LaB.TeSt", "wWw.lAb.tEsT"] {
        let run = ask(&lab, &[spelling, "A"]);
        let record = single_answer(&run, WWW_A);
        assert_eq!(record.name, format!("{spelling}."), "{run}");
        assert!(
            run.stdout.contains(&format!(";{spelling}.")),
            "the question must echo {spelling}:\n{run}"
        );
    }
    assert_eq!(lab.upstream_queries(WWW_NAME, Some("A")) - before, 1);
}

#[test]
fn cache_keeps_nxdomain() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(&["Cache = on"]));
    let name = "nothing-here.lab.test";
    for _ in 0..2 {
        let run = ask(&lab, &[name, "A"]);
        assert_eq!(status(&run).as_deref(), Some("NXDOMAIN"), "{run}");
        assert_soa_in_authority(&run, "lab.test.");
    }
    assert_eq!(lab.upstream_queries(name, None), 1, "{}", lab.unbound_log());
}

#[test]
fn cache_keeps_nodata() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(&["Cache = on"]));
    for _ in 0..2 {
        let run = ask(&lab, &[WWW_NAME, "MX"]);
        assert_eq!(status(&run).as_deref(), Some("NOERROR"), "{run}");
        assert_eq!(answer_count(&run), Some(0), "{run}");
        assert_soa_in_authority(&run, "lab.test.");
    }
    assert_eq!(lab.upstream_queries(WWW_NAME, Some("MX")), 1);
}

#[test]
fn cache_collapses_identical_queries_in_flight() {
    let options = ClientConfig {
        // Longer than the pause below, so no attempt times out and is retried.
        timeout: "3s".into(),
        ..resolver_config(&["Cache = on"])
    };
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), options);
    let name = "burst.lab.test";
    let before = lab.upstream_queries(name, None);
    // Frozen, unbound holds the first query, so every other one arrives while it is in flight.
    let paused = lab.pause_unbound();
    let mut burst = lab.spawn_parallel_digs(&lab.client_ns, PROXY_V4, BURST_QUERIES, &[name, "A"]);
    thread::sleep(Duration::from_millis(700));
    drop(paused);
    assert!(
        burst.wait_for_exit(Duration::from_secs(10)).is_some(),
        "the burst did not finish"
    );
    let answered = burst
        .output()
        .lines()
        .filter(|line| *line == "203.0.113.71")
        .count();
    assert_eq!(answered, BURST_QUERIES, "{}", burst.output());
    let forwarded = lab.upstream_queries(name, None) - before;
    assert!(
        forwarded <= 2,
        "{BURST_QUERIES} identical queries in flight reached unbound {forwarded} times"
    );
}

// ---------------------------------------------------------------------------------------------
// Serve-stale.

#[test]
fn serve_stale_answers_when_every_upstream_is_down() {
    let (lab, _tundns) = lab_with_tundns!(
        LabOptions::resolver(),
        resolver_config(&["CacheMaxTTL = 1s", "ServeStale = 1h"])
    );
    let name = "stale.lab.test";
    single_answer(&ask(&lab, &[name, "A"]), "203.0.113.70");
    // Expired while unbound answers: refreshed, never served stale.
    thread::sleep(Duration::from_secs(2));
    let before = lab.upstream_queries(name, None);
    single_answer(&ask(&lab, &[name, "A"]), "203.0.113.70");
    assert_eq!(
        lab.upstream_queries(name, None) - before,
        1,
        "an expired entry must be refreshed while the upstream answers"
    );

    lab.stop_unbound();
    thread::sleep(Duration::from_secs(2));
    let stale = ask(&lab, &[name, "A", "+time=5"]);
    assert_eq!(status(&stale).as_deref(), Some("NOERROR"), "{stale}");
    let record = single_answer(&stale, "203.0.113.70");
    assert!(
        (1..=30).contains(&record.ttl),
        "a stale answer carries a short TTL (RFC 8767 suggests 30):\n{stale}"
    );
}

#[test]
fn serve_stale_off_gives_servfail() {
    let (lab, _tundns) = lab_with_tundns!(
        LabOptions::resolver(),
        resolver_config(&["CacheMaxTTL = 1s", "ServeStale = 0s"])
    );
    let name = "stale.lab.test";
    single_answer(&ask(&lab, &[name, "A"]), "203.0.113.70");
    lab.stop_unbound();
    thread::sleep(Duration::from_secs(2));
    let run = ask(&lab, &[name, "A", "+time=5"]);
    assert_eq!(status(&run).as_deref(), Some("SERVFAIL"), "{run}");
    assert_eq!(answer_count(&run), Some(0), "{run}");
}

// ---------------------------------------------------------------------------------------------
// Local records.

const LOCAL_RECORDS: &[&str] = &[
    "Record = app.lab.internal A 10.99.0.10",
    "Record = app.lab.internal AAAA fd99::10",
    "Record = only4.lab.internal A 10.99.0.12",
    "Record = *.dev.lab.internal AAAA fd99::20",
    "Record = alias.lab.internal CNAME app.lab.internal",
    "Record = note.lab.internal 60 TXT \"hello world\"",
    "Record = 11.0.99.10.in-addr.arpa PTR printer.lab.internal",
    "Record = 1.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.9.9.d.f.ip6.arpa PTR printer6.lab.internal",
];

#[test]
fn local_a_record_is_authoritative_on_both_virtual_ips() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(LOCAL_RECORDS));
    for proxy in [PROXY_V4, PROXY_V6] {
        for transport in ["+notcp", "+tcp"] {
            let run = lab.dig(&lab.client_ns, proxy, &["app.lab.internal", "A", transport]);
            let record = single_answer(&run, "10.99.0.10");
            assert_eq!(record.ttl, 300, "the default TTL is 300:\n{run}");
            assert!(has_flag(&run, "aa"), "a local answer has AA:\n{run}");
        }
    }
    assert_eq!(lab.upstream_queries("app.lab.internal", None), 0);
}

#[test]
fn local_aaaa_record() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(LOCAL_RECORDS));
    let run = ask(&lab, &["app.lab.internal", "AAAA"]);
    single_answer(&run, "fd99::10");
    assert!(has_flag(&run, "aa"), "{run}");
}

#[test]
fn local_cname_chain_is_followed() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(LOCAL_RECORDS));
    let run = ask(&lab, &["alias.lab.internal", "A"]);
    let answer = section(&run, "ANSWER");
    assert!(
        answer.iter().any(|r| r.name == "alias.lab.internal."
            && r.rtype == "CNAME"
            && r.data == "app.lab.internal."),
        "the CNAME first:\n{run}"
    );
    assert!(
        answer
            .iter()
            .any(|r| r.name == "app.lab.internal." && r.rtype == "A" && r.data == "10.99.0.10"),
        "then its target's A:\n{run}"
    );
    assert!(has_flag(&run, "aa"), "{run}");
    assert_eq!(lab.upstream_queries("app.lab.internal", None), 0);
}

#[test]
fn local_cname_to_an_outside_name_is_finished_upstream() {
    let mut records = LOCAL_RECORDS.to_vec();
    records.push("Record = web.lab.internal CNAME www.lab.test");
    records.push("Record = gone.lab.internal CNAME missing.lab.test");
    records.push("Record = ads.lab.internal CNAME tracker.lab.test");
    records.push("Block = tracker.lab.test");
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(&records));
    // The lab's own readiness probe asks unbound for www.lab.test too.
    let asked_before = lab.upstream_queries("www.lab.test", Some("A"));
    for transport in ["+notcp", "+tcp"] {
        let run = ask(&lab, &["Web.Lab.Internal", "A", transport]);
        assert_eq!(status(&run).as_deref(), Some("NOERROR"), "{run}");
        let answer = section(&run, "ANSWER");
        assert_eq!(answer.len(), 2, "the CNAME, then the upstream's A:\n{run}");
        assert!(
            answer[0].name == "Web.Lab.Internal."
                && answer[0].rtype == "CNAME"
                && answer[0].data == "www.lab.test.",
            "the client's spelling, then the CNAME:\n{run}"
        );
        assert!(
            answer[1].name == "www.lab.test."
                && answer[1].rtype == "A"
                && answer[1].data == "203.0.113.10",
            "the target's address from unbound:\n{run}"
        );
    }
    // The first query went upstream; the second found the target in the cache.
    assert_eq!(
        lab.upstream_queries("www.lab.test", Some("A")) - asked_before,
        1
    );

    // glibc does not follow a CNAME itself: it needs the address in the same answer.
    assert_getent_finds(&lab, "web.lab.internal", &["203.0.113.10", "2001:db8::10"]);

    // The upstream's NXDOMAIN for the end comes back after the chain, with its SOA.
    let run = ask(&lab, &["gone.lab.internal", "A"]);
    assert_eq!(status(&run).as_deref(), Some("NXDOMAIN"), "{run}");
    let answer = section(&run, "ANSWER");
    assert_eq!(answer.len(), 1, "{run}");
    assert_eq!(answer[0].rtype, "CNAME", "{run}");
    assert!(
        section(&run, "AUTHORITY").iter().any(|r| r.rtype == "SOA"),
        "{run}"
    );

    // A blocked end is answered by the blocklist, and never asked upstream.
    let run = ask(&lab, &["ads.lab.internal", "A"]);
    assert_eq!(status(&run).as_deref(), Some("NXDOMAIN"), "{run}");
    assert_eq!(section(&run, "ANSWER").len(), 1, "the CNAME alone:\n{run}");
    assert_eq!(lab.upstream_queries("tracker.lab.test", None), 0);

    // Asked for the CNAME itself, the proxy answers alone, with authority.
    let run = ask(&lab, &["web.lab.internal", "CNAME"]);
    single_answer(&run, "www.lab.test.");
    assert!(has_flag(&run, "aa"), "{run}");
    assert_eq!(lab.upstream_queries("www.lab.test", Some("CNAME")), 0);
}

#[test]
fn local_txt_record_with_its_own_ttl() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(LOCAL_RECORDS));
    let run = ask(&lab, &["note.lab.internal", "TXT"]);
    let record = single_answer(&run, "\"hello world\"");
    assert_eq!(record.ttl, 60, "{run}");
}

#[test]
fn local_ptr_explicit_v4() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(LOCAL_RECORDS));
    assert_reverse(&lab, "10.99.0.11", "printer.lab.internal.");
}

#[test]
fn local_ptr_explicit_v6() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(LOCAL_RECORDS));
    assert_reverse(&lab, "fd99::11", "printer6.lab.internal.");
}

#[test]
fn local_ptr_automatic_v4() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(LOCAL_RECORDS));
    assert_reverse(&lab, "10.99.0.10", "app.lab.internal.");
}

#[test]
fn local_ptr_automatic_v6() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(LOCAL_RECORDS));
    assert_reverse(&lab, "fd99::10", "app.lab.internal.");
}

#[test]
fn local_wildcard_matches_below_but_not_the_parent() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(LOCAL_RECORDS));
    for name in ["x.dev.lab.internal", "a.b.dev.lab.internal"] {
        let run = ask(&lab, &[name, "AAAA"]);
        let record = single_answer(&run, "fd99::20");
        assert_eq!(
            record.name,
            format!("{name}."),
            "synthesized for the query name:\n{run}"
        );
    }
    let parent = ask(&lab, &["dev.lab.internal", "AAAA"]);
    assert!(
        matches!(status(&parent).as_deref(), Some("NOERROR" | "NXDOMAIN")),
        "{parent}"
    );
    assert_eq!(
        answer_count(&parent),
        Some(0),
        "the wildcard matched its parent:\n{parent}"
    );
}

#[test]
fn local_name_missing_type_is_nodata_with_soa_and_never_forwarded() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(LOCAL_RECORDS));
    // The leak olm had (pangolin#2373): an AAAA for a private name asked upstream.
    for (name, rtype) in [("only4.lab.internal", "AAAA"), ("app.lab.internal", "MX")] {
        let run = ask(&lab, &[name, rtype]);
        assert_eq!(status(&run).as_deref(), Some("NOERROR"), "{run}");
        assert_eq!(answer_count(&run), Some(0), "{run}");
        assert!(has_flag(&run, "aa"), "{run}");
        assert_soa_in_authority(&run, "");
        assert_eq!(
            lab.upstream_queries(name, None),
            0,
            "{name} {rtype} leaked upstream:\n{}",
            lab.unbound_log()
        );
    }
}

#[test]
fn local_zone_unknown_name_is_nxdomain_with_soa() {
    let lines = [LOCAL_RECORDS, &["LocalZone = lab.internal"]].concat();
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(&lines));
    let run = ask(&lab, &["nothere.lab.internal", "A"]);
    assert_eq!(status(&run).as_deref(), Some("NXDOMAIN"), "{run}");
    assert!(has_flag(&run, "aa"), "{run}");
    assert_soa_in_authority(&run, "lab.internal.");
    assert_eq!(lab.upstream_queries("nothere.lab.internal", None), 0);
    // Names outside the zone still go upstream.
    single_answer(&ask(&lab, &[WWW_NAME, "A"]), WWW_A);
}

#[test]
fn hosts_file_names_are_answered() {
    let lab = lab!(LabOptions::resolver());
    let hosts = lab.write_file(
        "hosts",
        "# lab hosts\n10.99.0.30 files.lab.internal files\nfd99::30   files.lab.internal\n",
    );
    let _tundns = start(&lab, &[&format!("HostsFile = {}", hosts.display())]);
    single_answer(&ask(&lab, &["files.lab.internal", "A"]), "10.99.0.30");
    single_answer(&ask(&lab, &["files.lab.internal", "AAAA"]), "fd99::30");
    assert_eq!(lab.upstream_queries("files.lab.internal", None), 0);
}

#[test]
fn getent_resolves_a_local_name_through_glibc() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(LOCAL_RECORDS));
    assert_getent_finds(&lab, "app.lab.internal", &["10.99.0.10", "fd99::10"]);
}

/// `getent ahosts NAME` in the client namespace (glibc, through the proxy) succeeds and
/// lists every one of `addresses`.
#[track_caller]
fn assert_getent_finds(lab: &Lab, name: &str, addresses: &[&str]) {
    let run = lab.exec_in(&lab.client_ns, &["getent", "ahosts", name]);
    run.assert_success();
    for address in addresses {
        assert!(
            run.stdout
                .lines()
                .any(|line| line.starts_with(&format!("{address} "))),
            "{address} missing:\n{run}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Split DNS.

#[test]
fn split_dns_sends_corp_names_through_the_tunnel() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::split_dns(), corp_route(TUNNEL_RESOLVER_V4));
    assert_split_route(&lab);
}

#[test]
fn split_dns_sends_corp_names_through_the_tunnel_over_ipv6() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::split_dns(), corp_route(TUNNEL_RESOLVER_V6));
    assert_split_route(&lab);
}

#[test]
fn split_dns_keeps_other_names_outside_the_tunnel() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::split_dns(), corp_route(TUNNEL_RESOLVER_V4));
    lab.assert_ping(&lab.client_ns, PEER_TUNNEL_V4);
    let name = "ttl.lab.test";
    let before = lab.peer_transfer_counters();
    let upstream_before = lab.upstream_queries(name, None);
    single_answer(&ask(&lab, &[name, "A"]), "203.0.113.73");
    let after = lab.peer_transfer_counters();
    assert!(
        after.since(before) <= KEEPALIVE_SLACK_BYTES,
        "a lab.test query crossed the tunnel: {before:?} -> {after:?}"
    );
    assert_eq!(lab.upstream_queries(name, None) - upstream_before, 1);
    assert_eq!(lab.tunnel_resolver_queries(name, None), 0);
}

// ---------------------------------------------------------------------------------------------
// Encrypted upstreams.

#[test]
fn dot_upstream_answers() {
    let lab = lab!(LabOptions::encrypted());
    let ca = format!("CAFile = {}", lab.ca_file().display());
    let _tundns = start_with_upstreams(&lab, &[&lab.dot_upstream()], &[&ca]);
    let before = lab.upstream_stat("num.query.tls");
    single_answer(&ask(&lab, &[WWW_NAME, "A"]), WWW_A);
    single_answer(&ask(&lab, &[WWW_NAME, "AAAA", "+tcp"]), WWW_AAAA);
    assert!(
        lab.upstream_stat("num.query.tls") > before,
        "no query came over DoT"
    );
}

#[test]
fn doh_upstream_answers() {
    let lab = lab!(LabOptions::encrypted());
    let ca = format!("CAFile = {}", lab.ca_file().display());
    let _tundns = start_with_upstreams(&lab, &[&lab.doh_upstream()], &[&ca]);
    let before = lab.upstream_stat("num.query.https");
    single_answer(&ask(&lab, &[WWW_NAME, "A"]), WWW_A);
    single_answer(&ask(&lab, &[WWW_NAME, "AAAA"]), WWW_AAAA);
    assert!(
        lab.upstream_stat("num.query.https") > before,
        "no query came over DoH"
    );
}

#[test]
fn dot_with_a_wrong_ca_gives_servfail() {
    let lab = lab!(LabOptions::encrypted());
    let wrong = format!("CAFile = {}", lab.wrong_ca_file().display());
    let upstream = lab.dot_upstream();
    assert_untrusted_upstream_servfails(&lab, &upstream, Some(&wrong));
}

#[test]
fn doh_with_a_wrong_ca_gives_servfail() {
    let lab = lab!(LabOptions::encrypted());
    let wrong = format!("CAFile = {}", lab.wrong_ca_file().display());
    let upstream = lab.doh_upstream();
    assert_untrusted_upstream_servfails(&lab, &upstream, Some(&wrong));
}

#[test]
fn dot_without_a_ca_file_trusts_only_system_roots() {
    let lab = lab!(LabOptions::encrypted());
    let upstream = lab.dot_upstream();
    assert_untrusted_upstream_servfails(&lab, &upstream, None);
}

#[test]
fn dot_unreachable_first_upstream_fails_over_fast() {
    let lab = lab!(LabOptions::encrypted());
    let ca = format!("CAFile = {}", lab.ca_file().display());
    let silent = format!("tls://{TLS_NAME}@{DEAD_SILENT}:{DOT_PORT}");
    let _tundns = start_with_upstreams(&lab, &[&silent, &lab.dot_upstream()], &[&ca]);
    for attempt in 0..2 {
        let run = ask(&lab, &[WWW_NAME, "A", "+time=5"]);
        single_answer(&run, WWW_A);
        assert!(
            run.elapsed < Duration::from_secs(2),
            "attempt {attempt}: failover took {:?}:\n{run}",
            run.elapsed
        );
    }
}

#[test]
fn dnsdist_as_a_second_upstream_takes_over() {
    let lab = lab!(LabOptions {
        dnsdist: true,
        ..LabOptions::resolver()
    });
    let _tundns = start_with_upstreams(&lab, &[DEAD_REFUSING, DNSDIST_V4], &["Cache = off"]);
    for _ in 0..3 {
        single_answer(&ask(&lab, &["ttl.lab.test", "A"]), "203.0.113.73");
    }
}

// ---------------------------------------------------------------------------------------------
// Blocklists.

#[test]
fn block_answers_nxdomain_for_the_name_and_below() {
    let (lab, _tundns) = lab_with_tundns!(
        LabOptions::resolver(),
        resolver_config(&["Block = ads.lab.test"])
    );
    assert_blocked_nxdomain(&lab, &["ads.lab.test", "x.ads.lab.test"]);
    // A name that only ends like the blocked one is not under it.
    let unrelated = ask(&lab, &["notads.lab.test", "A"]);
    assert_eq!(
        lab.upstream_queries("notads.lab.test", None),
        1,
        "{unrelated}"
    );
}

/// A name the list does not hold, whose upstream answer leads by CNAME into a blocked
/// domain, is blocked too; the blocked answer is cached, and `tundns dns query` says so.
#[test]
fn block_catches_a_cname_into_a_blocked_domain() {
    let lab = lab!(LabOptions::resolver());
    const CLOAKED: &str = "metrics.lab.test";
    // The lab's upstream does answer with the CNAME.
    let direct = lab.dig(&lab.client_ns, UNBOUND_V4, &[CLOAKED, "A"]);
    let records = section(&direct, "ANSWER");
    assert!(
        records
            .iter()
            .any(|record| record.data == "x.ads.lab.test."),
        "{direct}"
    );
    let _tundns = start(&lab, &["Block = ads.lab.test"]);

    for _ in 0..2 {
        let run = ask(&lab, &[CLOAKED, "A"]);
        assert_eq!(status(&run).as_deref(), Some("NXDOMAIN"), "{run}");
        assert!(section(&run, "ANSWER").is_empty(), "{run}");
    }
    // Asked upstream once (the test's own dig straight to unbound is the other): the
    // second answer came from the cache.
    assert_eq!(lab.upstream_queries(CLOAKED, Some("A")), 2);

    let report = lab.exec_in(
        &lab.client_ns,
        &[
            tundns_bin(),
            "dns",
            "-i",
            &lab.tundns_iface,
            "query",
            CLOAKED,
            "AAAA",
        ],
    );
    report.assert_success();
    assert!(report.stdout.contains("blocked"), "{report}");

    // A CNAME that stays clear of the list is passed on.
    let clear = ask(&lab, &["assets.lab.test", "A"]);
    assert_eq!(status(&clear).as_deref(), Some("NOERROR"), "{clear}");
    assert!(
        section(&clear, "ANSWER")
            .iter()
            .any(|record| record.data == "www.lab.test."),
        "{clear}"
    );
}

#[test]
fn block_mode_null_answers_unspecified_addresses() {
    let (lab, _tundns) = lab_with_tundns!(
        LabOptions::resolver(),
        resolver_config(&["Block = ads.lab.test", "BlockMode = null", "BlockTTL = 60s"])
    );
    for name in ["ads.lab.test", "x.ads.lab.test"] {
        for (rtype, expected) in [("A", "0.0.0.0"), ("AAAA", "::")] {
            let run = ask(&lab, &[name, rtype]);
            let record = single_answer(&run, expected);
            assert!(record.ttl <= 60, "BlockTTL is 60 s:\n{run}");
        }
        assert_eq!(lab.upstream_queries(name, None), 0);
    }
}

#[test]
fn blocklist_file_in_hosts_format() {
    let lab = lab!(LabOptions::resolver());
    let list = lab.write_file(
        "block-hosts.txt",
        "# a hosts-format blocklist\n0.0.0.0 tracker.lab.test\n0.0.0.0 ads.lab.test # inline\n",
    );
    let _tundns = start(&lab, &[&format!("BlockList = {}", list.display())]);
    assert_blocked_nxdomain(
        &lab,
        &["tracker.lab.test", "ads.lab.test", "x.ads.lab.test"],
    );
}

#[test]
fn blocklist_file_with_one_domain_per_line() {
    let lab = lab!(LabOptions::resolver());
    let list = lab.write_file("block-domains.txt", "# domains\nlisted.lab.test\n\n");
    let _tundns = start(&lab, &[&format!("BlockList = {}", list.display())]);
    let run = ask(&lab, &["listed.lab.test", "A"]);
    assert_eq!(status(&run).as_deref(), Some("NXDOMAIN"), "{run}");
    assert_eq!(lab.upstream_queries("listed.lab.test", None), 0);
}

// ---------------------------------------------------------------------------------------------
// EDNS and truncation.

#[test]
fn edns_unknown_version_gets_badvers() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), ClientConfig::default());
    let run = ask(&lab, &["+edns=1", "+noednsnegotiation", WWW_NAME, "A"]);
    assert_eq!(status(&run).as_deref(), Some("BADVERS"), "{run}");
    assert_eq!(answer_count(&run), Some(0), "{run}");
}

#[test]
fn edns_small_buffer_truncates_at_whole_records() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), ClientConfig::default());
    for buffer in ["+bufsize=512", "+noedns"] {
        let run = ask(&lab, &[buffer, "+ignore", BIG_TXT_NAME, "TXT"]);
        assert_eq!(status(&run).as_deref(), Some("NOERROR"), "{run}");
        assert!(has_flag(&run, "tc"), "{buffer}: TC must be set:\n{run}");
        assert_whole_big_txt_records(&run);
    }
    // Over TCP the whole answer still comes back.
    let tcp = ask(&lab, &["+tcp", BIG_TXT_NAME, "TXT"]);
    assert_eq!(section(&tcp, "ANSWER").len(), BIG_TXT_RECORDS, "{tcp}");
}

#[test]
fn edns_unknown_option_is_ignored() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(LOCAL_RECORDS));
    for name in [WWW_NAME, "app.lab.internal"] {
        let run = ask(&lab, &["+ednsopt=65001:00", name, "A"]);
        assert_eq!(status(&run).as_deref(), Some("NOERROR"), "{run}");
        assert_eq!(answer_count(&run), Some(1), "{run}");
    }
}

// ---------------------------------------------------------------------------------------------
// Config errors.

#[test]
fn config_error_malformed_record_names_the_line() {
    let lab = lab!(LabOptions::resolver());
    let bad = "Record = broken.lab.internal A 10.99.0.999";
    let config = lab.client_config(&resolver_config(&[LOCAL_RECORDS[0], bad, LOCAL_RECORDS[1]]));
    let line = line_of(&config, bad);
    let path = lab.write_client_config(&config);
    assert_start_fails_naming(&lab, &path, &format!("{}:{line}:", path.display()));
}

#[test]
fn config_error_bad_hosts_file_line_names_that_file_and_line() {
    let lab = lab!(LabOptions::resolver());
    let hosts = lab.write_file(
        "bad-hosts",
        "# line 1\n10.99.0.30 files.lab.internal\n10.99.0.999 broken.lab.internal\n",
    );
    let config = lab.client_config(&resolver_config(&[&format!(
        "HostsFile = {}",
        hosts.display()
    )]));
    let path = lab.write_client_config(&config);
    assert_start_fails_naming(&lab, &path, &format!("{}:3:", hosts.display()));
}

#[test]
fn config_error_bad_route_domain_names_the_line() {
    let lab = lab!(LabOptions::resolver());
    let config = lab.client_config(&corp_route(TUNNEL_RESOLVER_V4));
    let config = config.replace("Domain = corp.internal", "Domain = corp..internal");
    let line = line_of(&config, "Domain = corp..internal");
    let path = lab.write_client_config(&config);
    assert_start_fails_naming(&lab, &path, &format!("{}:{line}:", path.display()));
}

// ---------------------------------------------------------------------------------------------
// kdig as the client.

#[test]
fn kdig_over_tcp_and_udp_through_the_proxy() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(LOCAL_RECORDS));
    let c = &lab.client_ns;
    let tcp = lab.kdig(c, PROXY_V4, &["+tcp", WWW_NAME, "A", "+short"]);
    assert_eq!(tcp.assert_success().stdout.trim(), WWW_A, "{tcp}");
    let v6 = lab.kdig(c, PROXY_V6, &["+tcp", WWW_NAME, "AAAA", "+short"]);
    assert_eq!(v6.assert_success().stdout.trim(), WWW_AAAA, "{v6}");
    let local = lab.kdig(c, PROXY_V4, &["app.lab.internal", "A"]);
    assert_eq!(status(&local).as_deref(), Some("NOERROR"), "{local}");
    assert!(has_flag(&local, "aa"), "{local}");
    assert!(local.stdout.contains("10.99.0.10"), "{local}");
}

// ---------------------------------------------------------------------------------------------
// Shared checks.

/// Every TXT record in the answer is one of the 24 whole 100-byte strings, the header's count
/// matches what dig parsed, and the message fits in 512 bytes.
fn assert_whole_big_txt_records(run: &Run) {
    let records = section(run, "ANSWER");
    assert_eq!(answer_count(run), Some(records.len()), "{run}");
    for record in &records {
        let text = record.data.trim_matches('"');
        let whole = record.rtype == "TXT"
            && text.len() == 100
            && text[..2].bytes().all(|b| b.is_ascii_digit())
            && text[2..].starts_with("-x")
            && text[3..].bytes().all(|b| b == b'x');
        assert!(whole, "a cut record {record:?}:\n{run}");
    }
    let size = message_size(run).unwrap_or(usize::MAX);
    assert!(size <= 512, "{size} bytes for a 512-byte buffer:\n{run}");
    assert!(
        !run.stdout.contains("malformed") && !run.stderr.contains("malformed"),
        "{run}"
    );
}

/// corp.internal to `resolver` through the tunnel; everything else to the outside unbound.
fn corp_route(resolver: &str) -> ClientConfig {
    ClientConfig {
        routes: vec![DnsRoute {
            domains: vec!["corp.internal".into()],
            upstreams: vec![resolver.into()],
            through_tunnel: true,
        }],
        ..ClientConfig::default()
    }
}

/// The authority section holds an SOA (owned by `zone`, unless empty).
#[track_caller]
fn assert_soa_in_authority(run: &Run, zone: &str) {
    let authority = section(run, "AUTHORITY");
    assert!(
        authority
            .iter()
            .any(|r| r.rtype == "SOA" && (zone.is_empty() || r.name.eq_ignore_ascii_case(zone))),
        "an SOA for {zone:?} must be in the authority section:\n{run}"
    );
}

/// tundns, started with [`LOCAL_RECORDS`], answers the reverse lookup of `address` itself:
/// `expected`, with authority, and unbound never sees a PTR query.
fn assert_reverse(lab: &Lab, address: &str, expected: &str) {
    let run = ask(lab, &["-x", address]);
    let record = single_answer(&run, expected);
    assert_eq!(record.rtype, "PTR", "{run}");
    assert!(has_flag(&run, "aa"), "{run}");
    assert_eq!(
        lab.upstream_stat("num.query.type.PTR"),
        0,
        "a local PTR went upstream:\n{}",
        lab.unbound_log()
    );
}

/// tundns, started with [`corp_route`], sends corp.internal through the tunnel to the
/// tunnel-only resolver and never to the outside unbound.
fn assert_split_route(lab: &Lab) {
    lab.assert_ping(&lab.client_ns, PEER_TUNNEL_V4);
    let tunnel_before = lab.tunnel_resolver_queries(CORP_DB_NAME, None);
    let before = lab.peer_transfer_counters();
    single_answer(&ask(lab, &[CORP_DB_NAME, "A"]), CORP_DB_A);
    single_answer(&ask(lab, &[CORP_DB_NAME, "AAAA", "+tcp"]), CORP_DB_AAAA);
    let after = lab.peer_transfer_counters();
    assert!(
        after.since(before) > KEEPALIVE_SLACK_BYTES,
        "corp.internal must go through the tunnel: {before:?} -> {after:?}"
    );
    assert!(
        lab.tunnel_resolver_queries(CORP_DB_NAME, None) > tunnel_before,
        "{}",
        lab.tunnel_resolver_log()
    );
    assert_eq!(
        lab.upstream_queries(CORP_DB_NAME, None),
        0,
        "asked outside too"
    );
}

/// tundns with `upstream` (and `ca_line`, if any) must answer SERVFAIL, never the address,
/// and unbound must never see the query: the handshake fails first.
fn assert_untrusted_upstream_servfails(lab: &Lab, upstream: &str, ca_line: Option<&str>) {
    let lines: Vec<&str> = ca_line.into_iter().collect();
    let _tundns = start_with_upstreams(lab, &[upstream], &lines);
    let run = ask(lab, &[WWW_NAME, "A", "+time=5"]);
    assert_eq!(status(&run).as_deref(), Some("SERVFAIL"), "{run}");
    assert!(!run.stdout.contains(WWW_A), "{run}");
    assert_eq!(lab.upstream_stat("num.query.tls"), 0);
    assert_eq!(lab.upstream_stat("num.query.https"), 0);
}

/// `tundns up path` must exit non-zero, naming `location`, and
/// leave no interface behind.
fn assert_start_fails_naming(lab: &Lab, path: &Path, location: &str) {
    let run = lab.up_fails(path);
    assert!(
        run.stderr.contains(location),
        "stderr must name {location}:\n{run}"
    );
    let link = lab.exec_in(&lab.client_ns, &["ip", "link", "show", &lab.tundns_iface]);
    assert!(!link.succeeded(), "an interface was created:\n{link}");
}

/// The 1-based line of `config` equal to `line`.
fn line_of(config: &str, line: &str) -> usize {
    config
        .lines()
        .position(|l| l == line)
        .map(|index| index + 1)
        .expect("the line is in the config")
}

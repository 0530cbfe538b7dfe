//! End-to-end tests of the resolver's edges (issue 3) that `resolver.rs` leaves to unit tests
//! or checks only loosely: the cache key's DO and CD bits, `CacheMinTTL`, truncated and
//! SERVFAIL answers in the cache, serve-stale's maximum, failover from a dead DoH upstream,
//! DoT connection reuse, the EDNS size upstream, PTR for hosts-file names, adblock lists,
//! `BlockTTL`, moving on from a REFUSED upstream, and names whose authority never answers,
//! which must not make an upstream that answers everything else dead.
//!
//! tundns runs in C against real servers in N (see `common::resolver_lab` and
//! `common::edges_lab`): the instrumented unbound, whose query log and statistics show what
//! reached it; scripted dnsdist instances that answer SERVFAIL or REFUSED and log what they
//! were asked; tcpdump in N for what only the wire shows.
//!
//! Run as root: `TUNDNS_E2E=1 cargo test -p tundns --test resolver_edges`. Without root or
//! the lab tools the tests print "skipped: ..." and pass, unless `TUNDNS_E2E=1`.

mod common;

use common::dig_output::{Record, answer_count, has_flag, section, status};
use common::edges_lab::ScriptedDnsdist;
use common::resolver_lab::*;
use common::*;
use std::thread;
use std::time::{Duration, Instant};

/// A second address in N for the scripted dnsdist (the lab's own dnsdist uses .55).
const SCRIPTED_DNSDIST_V4: &str = "192.0.2.56";
const SCRIPTED_DNSDIST_V4_CIDR: &str = "192.0.2.56/24";
/// The name the scripted dnsdist answers SERVFAIL for.
const SERVFAIL_NAME: &str = "servfail.lab.test";
/// Fixed by `lab/unbound-resolver-zone.conf`.
const TTL_NAME: &str = "ttl.lab.test";
const TTL_A: &str = "203.0.113.73";
const STALE_NAME: &str = "stale.lab.test";
const STALE_A: &str = "203.0.113.70";
/// Added at run time with a 5 s TTL (see `cache_min_ttl_raises_a_short_upstream_ttl`).
const SHORT_NAME: &str = "short.lab.test";
const SHORT_A: &str = "203.0.113.75";
const SHORT_TTL: u32 = 5;
/// The README: "The client's EDNS size is passed on, capped at 1232."
const UPSTREAM_EDNS_CAP: u32 = 1232;
const DOT_QUERIES: u64 = 20;
/// Only the internal upstream (a scripted dnsdist) knows this name; unbound, the public
/// upstream, answers NXDOMAIN for it.
const INTRANET_NAME: &str = "intranet.lab.test";
const INTRANET_A: &str = "203.0.113.90";
/// The internal upstream never answers names under this zone, as a resolver whose
/// authority for them is unreachable; unbound answers NXDOMAIN at once.
const SILENT_ZONE: &str = "silent.lab.test";
/// More silent names than the timeouts in a row that used to mark an upstream dead (3).
const SILENT_NAMES: usize = 4;

// ---------------------------------------------------------------------------------------------
// The cache.

#[test]
fn cache_key_includes_the_do_and_cd_bits() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(&["Cache = on"]));
    let variants: [&[&str]; 4] = [&[], &["+dnssec"], &["+cd"], &["+dnssec", "+cd"]];
    // Each variant is a different key: each one's first query reaches unbound...
    for (asked, flags) in (1..).zip(variants) {
        let run = ask(&lab, &[&[TTL_NAME, "A"], flags].concat());
        single_answer(&run, TTL_A);
        assert_eq!(
            lab.upstream_queries(TTL_NAME, Some("A")),
            asked,
            "{flags:?} after the other variants must be a miss:\n{run}\n{}",
            lab.unbound_log()
        );
    }
    // ...and a repeat of each is a hit.
    for flags in variants {
        let run = ask(&lab, &[&[TTL_NAME, "A"], flags].concat());
        single_answer(&run, TTL_A);
        assert_eq!(
            lab.upstream_queries(TTL_NAME, Some("A")),
            variants.len(),
            "a repeat of {flags:?} must be a cache hit:\n{}",
            lab.unbound_log()
        );
    }
}

#[test]
fn cache_min_ttl_raises_a_short_upstream_ttl() {
    let lab = lab!(LabOptions::resolver());
    let record = format!("{SHORT_NAME}. {SHORT_TTL} IN A {SHORT_A}");
    lab.unbound_control(&["local_data", &record])
        .assert_success();
    // Baseline: unbound itself gives the short TTL.
    let direct = lab.dig(&lab.client_ns, UNBOUND_V4, &[SHORT_NAME, "A"]);
    assert_eq!(single_answer(&direct, SHORT_A).ttl, SHORT_TTL, "{direct}");

    let _tundns = start(&lab, &["Cache = on", "CacheMinTTL = 60s"]);
    let before = lab.upstream_queries(SHORT_NAME, None);
    single_answer(&ask(&lab, &[SHORT_NAME, "A"]), SHORT_A);
    let hit = ask(&lab, &[SHORT_NAME, "A"]);
    let ttl = single_answer(&hit, SHORT_A).ttl;
    assert!(
        ttl > SHORT_TTL && ttl <= 60,
        "the cached TTL must be raised towards CacheMinTTL = 60 s:\n{hit}"
    );
    // Past the upstream's own TTL, still from the cache.
    thread::sleep(Duration::from_secs(u64::from(SHORT_TTL) + 1));
    let later = ask(&lab, &[SHORT_NAME, "A"]);
    let later_ttl = single_answer(&later, SHORT_A).ttl;
    assert!(
        later_ttl > SHORT_TTL && later_ttl < ttl,
        "after {} s the entry must still be served, counting down from {ttl}:\n{later}",
        SHORT_TTL + 1
    );
    assert_eq!(
        lab.upstream_queries(SHORT_NAME, None) - before,
        1,
        "every answer after the first must come from the cache:\n{}",
        lab.unbound_log()
    );
}

#[test]
fn cache_never_keeps_a_truncated_answer() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(&["Cache = on"]));
    // Truncated for this client by tundns (512 bytes): what it sent must not be what it kept.
    let small = ask(&lab, &["+bufsize=512", "+ignore", BIG_TXT_NAME, "TXT"]);
    assert_eq!(status(&small).as_deref(), Some("NOERROR"), "{small}");
    assert!(
        has_flag(&small, "tc"),
        "TC must be set for 512 bytes:\n{small}"
    );
    assert!(section(&small, "ANSWER").len() < BIG_TXT_RECORDS, "{small}");

    let tcp = ask(&lab, &["+tcp", BIG_TXT_NAME, "TXT"]);
    assert_whole_big_txt(&tcp);
    // A UDP client with room for all of it gets all of it too.
    let large = ask(&lab, &["+bufsize=4096", "+ignore", BIG_TXT_NAME, "TXT"]);
    assert_whole_big_txt(&large);
}

#[test]
fn servfail_is_cached_for_a_few_seconds_only() {
    let lab = lab!(LabOptions::resolver());
    let failing = start_failing_dnsdist(&lab);
    let _tundns = start_with_upstreams(&lab, &[SCRIPTED_DNSDIST_V4], &["Cache = on"]);
    for attempt in 0..2 {
        let run = ask(&lab, &[SERVFAIL_NAME, "A"]);
        assert_eq!(
            status(&run).as_deref(),
            Some("SERVFAIL"),
            "attempt {attempt}:\n{run}"
        );
    }
    assert_eq!(
        failing.queries(SERVFAIL_NAME),
        1,
        "the second SERVFAIL must come from the cache:\n{}",
        failing.log()
    );
    // The README: SERVFAIL is kept for at most 5 s.
    thread::sleep(Duration::from_secs(6));
    let run = ask(&lab, &[SERVFAIL_NAME, "A"]);
    assert_eq!(status(&run).as_deref(), Some("SERVFAIL"), "{run}");
    assert_eq!(
        failing.queries(SERVFAIL_NAME),
        2,
        "after 6 s the SERVFAIL must have left the cache:\n{}",
        failing.log()
    );
}

#[test]
fn serve_stale_stops_at_its_maximum() {
    let (lab, _tundns) = lab_with_tundns!(
        LabOptions::resolver(),
        resolver_config(&["CacheMaxTTL = 1s", "ServeStale = 2s"])
    );
    let cached_at = Instant::now();
    single_answer(&ask(&lab, &[STALE_NAME, "A"]), STALE_A);
    lab.stop_unbound();
    // Expired at 1 s, stale until 3 s: served stale at 2 s...
    sleep_until(cached_at + Duration::from_secs(2));
    let stale = ask(&lab, &[STALE_NAME, "A", "+time=5"]);
    let record = single_answer(&stale, STALE_A);
    assert!((1..=30).contains(&record.ttl), "a stale TTL:\n{stale}");
    // ...and no more at 4 s.
    sleep_until(cached_at + Duration::from_secs(4));
    let late = ask(&lab, &[STALE_NAME, "A", "+time=5"]);
    assert_eq!(
        status(&late).as_deref(),
        Some("SERVFAIL"),
        "3 s past the 1 s TTL, beyond ServeStale = 2s:\n{late}"
    );
    assert_eq!(answer_count(&late), Some(0), "{late}");
}

// ---------------------------------------------------------------------------------------------
// Upstreams.

#[test]
fn doh_unreachable_first_upstream_fails_over_fast() {
    let lab = lab!(LabOptions::encrypted());
    let ca = format!("CAFile = {}", lab.ca_file().display());
    // Nothing listens on that port: the connection is refused at once.
    let closed = format!("https://{TLS_NAME}@{UNBOUND_V4}:8443{DOH_PATH}");
    let mut options = ClientConfig {
        upstreams: vec![closed, lab.doh_upstream()],
        ..resolver_config(&[&ca, "Cache = off"])
    };
    // Longer than the bound below, so only noticing the refusal can meet it.
    options.timeout = "3s".into();
    let _tundns = lab.start_tundns(&lab.client_config(&options));
    let before = lab.upstream_stat("num.query.https");
    for attempt in 0..3 {
        let run = ask(&lab, &[WWW_NAME, "A", "+time=5"]);
        single_answer(&run, WWW_A);
        assert!(
            run.elapsed < Duration::from_millis(1500),
            "attempt {attempt}: failover took {:?}:\n{run}",
            run.elapsed
        );
    }
    assert_eq!(
        lab.upstream_stat("num.query.https") - before,
        3,
        "the working DoH upstream must have answered each query"
    );
}

#[test]
fn dot_reuses_its_connection_for_many_queries() {
    let lab = lab!(LabOptions::encrypted());
    if !tcpdump_or_skip("dot_reuses_its_connection_for_many_queries") {
        return;
    }
    let capture = lab.start_capture(
        &lab.network_ns,
        &format!(
            "tcp and dst host {UNBOUND_V4} and dst port {DOT_PORT} \
             and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn"
        ),
        &[],
    );
    // Baseline: two kdig runs over DoT are two connections, and the capture counts them.
    let kdig_ca = format!("+tls-ca={}", lab.ca_file().display());
    let kdig_hostname = format!("+tls-hostname={TLS_NAME}");
    for _ in 0..2 {
        let run = lab.kdig(
            &lab.client_ns,
            UNBOUND_V4,
            &["+tls", &kdig_ca, &kdig_hostname, WWW_NAME, "A", "+short"],
        );
        assert_eq!(run.assert_success().stdout.trim(), WWW_A, "{run}");
    }
    let baseline_seen = || dot_handshakes(&capture.output()) == 2;
    assert!(
        wait_until(Duration::from_secs(5), baseline_seen),
        "two kdig connections must show as two SYNs:\n{}",
        capture.output()
    );

    let ca = format!("CAFile = {}", lab.ca_file().display());
    let _tundns = start_with_upstreams(&lab, &[&lab.dot_upstream()], &[&ca, "Cache = off"]);
    let before = lab.upstream_stat("num.query.tls");
    for query in 0..DOT_QUERIES {
        let run = ask(&lab, &[WWW_NAME, "A"]);
        assert_eq!(
            single_answer(&run, WWW_A).rtype,
            "A",
            "query {query}:\n{run}"
        );
    }
    let tls_queries = lab.upstream_stat("num.query.tls") - before;
    assert_eq!(
        tls_queries, DOT_QUERIES,
        "with the cache off every query must reach unbound over DoT"
    );
    // Let the last packets reach tcpdump before it stops.
    thread::sleep(Duration::from_millis(300));
    let captured = capture.stop();
    let connections = dot_handshakes(&captured) - 2;
    assert!(
        (1..=2).contains(&connections),
        "{DOT_QUERIES} DoT queries opened {connections} connections:\n{captured}"
    );
}

#[test]
fn edns_size_sent_upstream_is_capped() {
    let lab = lab!(LabOptions::resolver());
    if !tcpdump_or_skip("edns_size_sent_upstream_is_capped") {
        return;
    }
    let capture = lab.start_capture(
        &lab.network_ns,
        &format!("udp and dst host {UNBOUND_V4} and dst port 53"),
        &["-vv"],
    );
    let _tundns = start(&lab, &["Cache = off"]);
    // Baseline: asked directly, unbound receives the client's 4096, and tcpdump shows it.
    let direct = lab.dig(
        &lab.client_ns,
        UNBOUND_V4,
        &["+bufsize=4096", WWW_NAME, "A"],
    );
    single_answer(&direct, WWW_A);
    assert_eq!(
        captured_edns_size(&capture, WWW_NAME),
        Some(4096),
        "{}",
        capture.output()
    );
    let proxied = ask(&lab, &["+bufsize=4096", TTL_NAME, "A"]);
    single_answer(&proxied, TTL_A);
    assert_eq!(
        captured_edns_size(&capture, TTL_NAME),
        Some(UPSTREAM_EDNS_CAP),
        "tundns must pass a 4096-byte EDNS size upstream as {UPSTREAM_EDNS_CAP}:\n{}",
        capture.output()
    );
}

#[test]
fn a_refused_first_upstream_moves_on_to_the_next() {
    let lab = lab!(LabOptions::resolver());
    let refusing = start_failing_dnsdist(&lab);
    let _tundns = start_with_upstreams(&lab, &[SCRIPTED_DNSDIST_V4, UNBOUND_V4], &["Cache = off"]);
    let unbound_before = lab.upstream_queries(TTL_NAME, None);
    for attempt in 1..=3 {
        let run = ask(&lab, &[TTL_NAME, "A"]);
        single_answer(&run, TTL_A);
        assert_eq!(
            refusing.queries(TTL_NAME),
            attempt,
            "the refusing first upstream must be asked first every time:\n{}",
            refusing.log()
        );
    }
    assert_eq!(lab.upstream_queries(TTL_NAME, None) - unbound_before, 3);
}

/// An upstream that refuses everything: tundns answers SERVFAIL with Extended DNS Error 22
/// saying why, not the upstream's REFUSED, which would read as tundns refusing the client.
#[test]
fn an_upstream_that_refuses_everything_gives_servfail_that_says_why() {
    let lab = lab!(LabOptions::resolver());
    let refusing = start_failing_dnsdist(&lab);
    let _tundns = start_with_upstreams(&lab, &[SCRIPTED_DNSDIST_V4], &["Cache = off"]);
    let run = ask(&lab, &[WWW_NAME, "A"]);
    assert_eq!(status(&run).as_deref(), Some("SERVFAIL"), "{run}");
    assert!(
        run.stdout.contains(
            "EDE: 22 (No Reachable Authority): (no upstream answered; the last said REFUSED)"
        ),
        "{run}"
    );
    assert!(refusing.queries(WWW_NAME) >= 1, "{}", refusing.log());
}

/// Issue 13, item 2: a page asks a few names under a zone whose authority never answers.
/// The internal upstream (asked first) stays silent on them while it answers its own names;
/// hedging gets unbound's NXDOMAIN for them at once. When the internal upstream's attempts
/// time out, it must not be marked dead. Before the fix, three timeouts in a row marked it
/// dead, and the next internal name went to unbound and got NXDOMAIN.
#[test]
fn names_whose_authority_never_answers_do_not_kill_an_upstream_that_answers_others() {
    let lab = lab!(LabOptions::resolver());
    let internal = start_internal_dnsdist(&lab);
    let mut options = ClientConfig {
        upstreams: vec![SCRIPTED_DNSDIST_V4.into(), UNBOUND_V4.into()],
        ..resolver_config(&["Cache = off"])
    };
    // The default: ample time for one dig to ask everything below before any attempt ends.
    options.timeout = "2s".into();
    let _tundns = lab.start_tundns(&lab.client_config(&options));
    let public_before = lab.upstream_queries(INTRANET_NAME, None);
    single_answer(&ask(&lab, &[INTRANET_NAME, "A"]), INTRANET_A);

    // One dig, one query after another: the silent names, then an internal one.
    let silent: Vec<String> = (0..SILENT_NAMES)
        .map(|n| format!("n{n}.{SILENT_ZONE}"))
        .collect();
    let mut args: Vec<&str> = silent
        .iter()
        .flat_map(|name| [name.as_str(), "A"])
        .collect();
    args.extend([INTRANET_NAME, "A"]);
    let page = ask(&lab, &args);
    assert_eq!(
        page.stdout.matches("status: NXDOMAIN").count(),
        SILENT_NAMES,
        "unbound answers the silent names, thanks to hedging:\n{page}"
    );
    assert!(page.stdout.contains(INTRANET_A), "{page}");
    for name in &silent {
        assert_eq!(internal.queries(name), 1, "{}", internal.log());
    }

    // Every attempt on a silent name times out at the internal upstream...
    let timed_out = wait_until(Duration::from_secs(5), || {
        let timeouts = upstream_group(&lab)["timeouts"].as_u64();
        timeouts.is_some_and(|count| count >= SILENT_NAMES as u64)
    });
    assert!(timed_out, "{:#}", upstream_group(&lab));
    // ...and it still answers the next internal name, which unbound never hears of.
    let after = ask(&lab, &[INTRANET_NAME, "A"]);
    assert_eq!(
        status(&after).as_deref(),
        Some("NOERROR"),
        "the internal name went to the public upstream:\n{after}\n{:#}",
        upstream_group(&lab)
    );
    single_answer(&after, INTRANET_A);
    assert_eq!(internal.queries(INTRANET_NAME), 3, "{}", internal.log());
    assert_eq!(
        lab.upstream_queries(INTRANET_NAME, None),
        public_before,
        "{}",
        lab.unbound_log()
    );
    let health = &upstream_group(&lab)["upstreams"][0];
    assert_eq!(
        health["upstream"].as_str(),
        Some(format!("udp://{SCRIPTED_DNSDIST_V4}:53").as_str()),
        "{health:#}"
    );
    assert_eq!(health["alive"], true, "{health:#}");
    assert_eq!(health["failures"], 0, "{health:#}");
}

// ---------------------------------------------------------------------------------------------
// Local data and blocklists.

#[test]
fn hosts_file_address_gets_a_ptr_to_its_canonical_name() {
    let lab = lab!(LabOptions::resolver());
    let hosts = lab.write_file(
        "hosts",
        "# lab hosts\n10.99.0.30 files.lab.internal files\nfd99::31 print.lab.internal\n",
    );
    let _tundns = start(&lab, &[&format!("HostsFile = {}", hosts.display())]);
    for (address, name) in [
        ("10.99.0.30", "files.lab.internal."),
        ("fd99::31", "print.lab.internal."),
    ] {
        let run = ask(&lab, &["-x", address]);
        let record = single_answer(&run, name);
        assert_eq!(record.rtype, "PTR", "{run}");
        assert!(has_flag(&run, "aa"), "a local answer has AA:\n{run}");
    }
    assert_eq!(
        lab.upstream_stat("num.query.type.PTR"),
        0,
        "a hosts-file PTR went upstream:\n{}",
        lab.unbound_log()
    );
}

#[test]
fn blocklist_file_in_adblock_format() {
    let lab = lab!(LabOptions::resolver());
    let list = lab.write_file(
        "block-adblock.txt",
        "[Adblock Plus 2.0]\n! an adblock-style list\n||ads.lab.test^\n||tracker.lab.test^ # inline\n",
    );
    let _tundns = start(&lab, &[&format!("BlockList = {}", list.display())]);
    assert_blocked_nxdomain(
        &lab,
        &["ads.lab.test", "x.ads.lab.test", "tracker.lab.test"],
    );
    let unrelated = ask(&lab, &["notads.lab.test", "A"]);
    assert_eq!(
        lab.upstream_queries("notads.lab.test", None),
        1,
        "a name that only ends like a blocked one is not blocked:\n{unrelated}"
    );
}

#[test]
fn block_ttl_is_the_negative_ttl_of_a_blocked_nxdomain() {
    let (lab, _tundns) = lab_with_tundns!(
        LabOptions::resolver(),
        resolver_config(&["Block = ads.lab.test", "BlockTTL = 42s"])
    );
    for name in ["ads.lab.test", "x.ads.lab.test"] {
        let run = ask(&lab, &[name, "A"]);
        assert_eq!(status(&run).as_deref(), Some("NXDOMAIN"), "{run}");
        let soa = single_soa(&run);
        assert_eq!(soa.ttl, 42, "the SOA's TTL:\n{run}");
        assert_eq!(
            soa.data.split_whitespace().last(),
            Some("42"),
            "the SOA's MINIMUM (the negative TTL, RFC 2308):\n{run}"
        );
    }
}

#[test]
fn block_ttl_is_the_ttl_of_a_null_answer() {
    let (lab, _tundns) = lab_with_tundns!(
        LabOptions::resolver(),
        resolver_config(&["Block = ads.lab.test", "BlockMode = null", "BlockTTL = 42s"])
    );
    for (rtype, null) in [("A", "0.0.0.0"), ("AAAA", "::")] {
        let run = ask(&lab, &["ads.lab.test", rtype]);
        assert_eq!(single_answer(&run, null).ttl, 42, "{run}");
    }
    let nodata = ask(&lab, &["ads.lab.test", "MX"]);
    assert_eq!(status(&nodata).as_deref(), Some("NOERROR"), "{nodata}");
    assert_eq!(answer_count(&nodata), Some(0), "{nodata}");
    assert_eq!(single_soa(&nodata).ttl, 42, "{nodata}");
}

// ---------------------------------------------------------------------------------------------
// Shared helpers.

/// Whether tcpdump is there; without it the test is skipped, unless `TUNDNS_E2E=1`.
fn tcpdump_or_skip(test: &str) -> bool {
    if on_path("tcpdump") {
        return true;
    }
    assert!(
        std::env::var("TUNDNS_E2E").as_deref() != Ok("1"),
        "TUNDNS_E2E=1 but tcpdump is missing"
    );
    eprintln!("skipped: {test}: tcpdump is missing (set TUNDNS_E2E=1 to make this a failure)");
    false
}

/// A dnsdist in N that answers SERVFAIL for [`SERVFAIL_NAME`] and REFUSED for every other
/// name, logging each query.
fn start_failing_dnsdist(lab: &Lab) -> ScriptedDnsdist {
    lab.add_network_address(SCRIPTED_DNSDIST_V4_CIDR);
    let rules = format!(
        "addAction(AllRule(), LogAction(QUERY_LOG, false, true, false))\n\
         addAction(QNameRule(\"{SERVFAIL_NAME}.\"), RCodeAction(DNSRCode.SERVFAIL))\n\
         addAction(AllRule(), RCodeAction(DNSRCode.REFUSED))\n"
    );
    let dnsdist = lab.start_scripted_dnsdist(SCRIPTED_DNSDIST_V4, &rules, "ready.lab.test");
    // The baseline: it really answers that way.
    for (name, expected) in [(SERVFAIL_NAME, "SERVFAIL"), (WWW_NAME, "REFUSED")] {
        let run = lab.dig(&lab.client_ns, SCRIPTED_DNSDIST_V4, &[name, "A"]);
        assert_eq!(status(&run).as_deref(), Some(expected), "{run}");
    }
    assert_eq!(dnsdist.queries(SERVFAIL_NAME), 1, "{}", dnsdist.log());
    // The tests count from zero.
    dnsdist.forget_queries();
    dnsdist
}

/// The internal upstream: a dnsdist in N that answers [`INTRANET_NAME`], drops every query
/// under [`SILENT_ZONE`] and refuses the rest, logging each query.
fn start_internal_dnsdist(lab: &Lab) -> ScriptedDnsdist {
    lab.add_network_address(SCRIPTED_DNSDIST_V4_CIDR);
    let rules = format!(
        "addAction(AllRule(), LogAction(QUERY_LOG, false, true, false))\n\
         addAction(makeRule(\"{SILENT_ZONE}.\"), DropAction())\n\
         addAction(QNameRule(\"{INTRANET_NAME}.\"), SpoofAction(\"{INTRANET_A}\"))\n\
         addAction(AllRule(), RCodeAction(DNSRCode.REFUSED))\n"
    );
    let dnsdist = lab.start_scripted_dnsdist(SCRIPTED_DNSDIST_V4, &rules, "ready.lab.test");
    // The baseline: it really answers that way, and unbound does not know the name.
    let c = &lab.client_ns;
    single_answer(
        &lab.dig(c, SCRIPTED_DNSDIST_V4, &[INTRANET_NAME, "A"]),
        INTRANET_A,
    );
    let silent = lab.dig(
        c,
        SCRIPTED_DNSDIST_V4,
        &["+time=1", &format!("baseline.{SILENT_ZONE}"), "A"],
    );
    assert_eq!(status(&silent), None, "no answer expected:\n{silent}");
    let public = lab.dig(c, UNBOUND_V4, &[INTRANET_NAME, "A"]);
    assert_eq!(status(&public).as_deref(), Some("NXDOMAIN"), "{public}");
    dnsdist.forget_queries();
    dnsdist
}

/// The default upstream group in `tundns status --json`.
fn upstream_group(lab: &Lab) -> serde_json::Value {
    let run = lab.exec_in(
        &lab.client_ns,
        &[tundns_bin(), "status", &lab.tundns_iface, "--json"],
    );
    run.assert_success();
    let status: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON status");
    status["ok"]["proxy"]["groups"][0].clone()
}

/// TCP SYNs to unbound's DoT port in tcpdump's output: one per connection opened.
fn dot_handshakes(captured: &str) -> usize {
    let syn = format!("> {UNBOUND_V4}.{DOT_PORT}: Flags [S]");
    captured.lines().filter(|line| line.contains(&syn)).count()
}

/// The EDNS UDP size of the first query for `name` tcpdump (`-vv`) printed, waiting up to
/// 5 s for it: "... A? name. ar: . OPT UDPsize=1232 ...".
fn captured_edns_size(capture: &edges_lab::Capture, name: &str) -> Option<u32> {
    let question = format!("? {name}. ");
    let mut size = None;
    wait_until(Duration::from_secs(5), || {
        size = capture
            .output()
            .lines()
            .find(|line| line.contains(&question))
            .and_then(|line| line.split("UDPsize=").nth(1))
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok());
        size.is_some()
    });
    size
}

fn sleep_until(deadline: Instant) {
    thread::sleep(deadline.saturating_duration_since(Instant::now()));
}

/// The one SOA of the authority section.
#[track_caller]
fn single_soa(run: &Run) -> Record {
    let soas: Vec<Record> = section(run, "AUTHORITY")
        .into_iter()
        .filter(|record| record.rtype == "SOA")
        .collect();
    assert_eq!(soas.len(), 1, "one SOA in the authority section:\n{run}");
    soas[0].clone()
}

/// All 24 TXT records of big.lab.test, without TC.
#[track_caller]
fn assert_whole_big_txt(run: &Run) {
    assert_eq!(status(run).as_deref(), Some("NOERROR"), "{run}");
    assert!(!has_flag(run, "tc"), "a truncated answer:\n{run}");
    let records = section(run, "ANSWER");
    assert_eq!(records.len(), BIG_TXT_RECORDS, "{run}");
    assert!(records.iter().all(|record| record.rtype == "TXT"), "{run}");
}

//! End-to-end tests of the resolver (issue 3, `docs/resolver-plan.md`): cache, serve-stale,
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
    let Some(lab) = lab_or_skip_with(
        "lab_baseline_unbound_serves_dot_and_doh_with_the_lab_ca",
        LabOptions {
            encrypted_upstream: true,
            ..LabOptions::resolver()
        },
    ) else {
        return;
    };
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
    let Some(lab) = lab_or_skip_with(
        "lab_baseline_tunnel_resolver_is_reachable_only_through_the_tunnel",
        LabOptions {
            tunnel_resolver: true,
            ..LabOptions::resolver()
        },
    ) else {
        return;
    };
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
    let Some(lab) = lab_or_skip_with(
        "lab_baseline_query_log_counts_and_unbound_restarts",
        LabOptions::resolver(),
    ) else {
        return;
    };
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
    let Some(lab) = lab_or_skip_with(
        "lab_baseline_fixtures_for_blocks_edns_and_dnsdist",
        LabOptions {
            dnsdist: true,
            ..LabOptions::resolver()
        },
    ) else {
        return;
    };
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
    // A burst of parallel digs all come back.
    let burst = lab.parallel_digs(c, UNBOUND_V4, BURST_QUERIES, &["burst.lab.test", "A"]);
    assert_eq!(
        burst
            .stdout
            .lines()
            .filter(|l| *l == "203.0.113.71")
            .count(),
        BURST_QUERIES,
        "{burst}"
    );
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

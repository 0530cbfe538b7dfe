//! End-to-end tests of a cache that is warm from the first packet (issue 14, §3): the cache
//! file across a restart, prefetch near the end of a TTL, and the Extended DNS Errors
//! (RFC 8914) tundns adds when it answers itself.
//!
//! tundns runs in C against the instrumented unbound in N (see `common::resolver_lab`),
//! whose statistics show what reached it, with real `dig` as the client. unbound answers
//! every name under `trace.lab.test` (a redirect zone, TTL 300) and `prefetch.lab.test`
//! with a TTL of 20 s (`lab/unbound-resolver-zone.conf`).
//!
//! Run as root: `TUNDNS_E2E=1 cargo test -p tundns --test warm_cache`. Without root or the
//! lab tools the tests print "skipped: ..." and pass, unless `TUNDNS_E2E=1`.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use common::dig_output::status;
use common::resolver_lab::*;
use common::*;

const TRACE_NAMES: usize = 1000;
const TRACE_A: &str = "203.0.113.81";
const PREFETCH_NAME: &str = "prefetch.lab.test";
const PREFETCH_A: &str = "203.0.113.82";
const PREFETCH_TTL: u64 = 20;
/// Wall-clock time between the stop and the restart, so that a TTL not cut by it shows.
const RESTART_GAP: Duration = Duration::from_secs(3);

fn cache_file(lab: &Lab) -> PathBuf {
    lab.state_dir()
        .join(format!("{}.dns-cache", lab.tundns_iface))
}

/// Resolves every name of `trace` through tundns with one `dig -f` in C: each name's
/// answer TTL. Every name must be answered with the zone's address.
fn replay(lab: &Lab, trace: &std::path::Path) -> HashMap<String, u32> {
    let run = lab.exec_in_with_timeout(
        &lab.client_ns,
        &[
            "dig",
            &format!("@{PROXY_V4}"),
            "+noall",
            "+answer",
            "+tries=1",
            "+time=2",
            "-f",
            path_str(trace),
        ],
        Duration::from_secs(120),
    );
    run.assert_success();
    let mut ttls = HashMap::new();
    for line in run.stdout.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [name, ttl, "IN", "A", address] = fields.as_slice() {
            assert_eq!(*address, TRACE_A, "{line}");
            ttls.insert(name.to_string(), ttl.parse().unwrap());
        }
    }
    assert_eq!(ttls.len(), TRACE_NAMES, "every name answered:\n{run}");
    ttls
}

/// Issue 14: "Restart and replay: resolve a trace of 1,000 names, restart, replay it. At
/// least 90 % are cache hits and no stale TTL is served." Hits are counted where they
/// cannot lie: queries that reached unbound during the replay. No TTL after the restart
/// may exceed the first answer's minus the whole seconds that surely passed since.
#[test]
fn a_restart_replays_a_trace_of_a_thousand_names_from_the_cache() {
    let lab = lab!(LabOptions::resolver());
    let trace: String = (0..TRACE_NAMES)
        .map(|i| format!("name-{i}.trace.lab.test A\n"))
        .collect();
    let trace = lab.write_file("trace.txt", trace);

    let mut first = start(&lab, &[]);
    let before = lab.upstream_stat("total.num.queries");
    let first_ttls = replay(&lab, &trace);
    let first_done = Instant::now();
    let asked = lab.upstream_stat("total.num.queries") - before;
    assert!(
        asked >= TRACE_NAMES as u64,
        "the first pass goes upstream: {asked}"
    );
    first.stop_cleanly(Duration::from_secs(10));
    drop(first);

    let file = cache_file(&lab);
    let mode = std::fs::metadata(&file)
        .unwrap_or_else(|error| panic!("{}: {error}", file.display()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{}", file.display());

    thread::sleep(RESTART_GAP);
    let second = start(&lab, &[]);
    assert!(
        second.output().contains("cache loaded"),
        "{}",
        second.output()
    );
    let replay_start = Instant::now();
    let before = lab.upstream_stat("total.num.queries");
    let replayed = replay(&lab, &trace);
    let misses = lab.upstream_stat("total.num.queries") - before;
    assert!(
        misses * 10 <= TRACE_NAMES as u64,
        "{misses} of {TRACE_NAMES} replayed names reached unbound: under 90 % cache hits"
    );
    eprintln!("replay after the restart: {misses} of {TRACE_NAMES} names reached unbound");
    let passed = replay_start.duration_since(first_done).as_secs() as u32;
    assert!(passed >= RESTART_GAP.as_secs() as u32);
    for (name, ttl) in &replayed {
        let first_ttl = first_ttls[name];
        assert!(
            ttl + passed <= first_ttl,
            "{name}: TTL {ttl} after the restart, first {first_ttl}, {passed} s since"
        );
    }
}

/// A file that is not a cache file, and one cut short, are ignored with one log line each;
/// tundns starts and answers all the same.
#[test]
fn a_corrupt_cache_file_is_ignored_with_a_log_line() {
    let lab = lab!(LabOptions::resolver());
    let file = cache_file(&lab);
    std::fs::create_dir_all(lab.state_dir()).unwrap();
    std::fs::set_permissions(lab.state_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();

    std::fs::write(&file, b"\x00not a cache file at all").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut tundns = start(&lab, &[]);
    let output = tundns.output();
    assert!(
        output.contains("cache file ignored: not a tundns cache file"),
        "{output}"
    );
    single_answer(&ask(&lab, &[WWW_NAME, "A"]), WWW_A);
    tundns.stop_cleanly(Duration::from_secs(10));
    drop(tundns);

    // The clean stop wrote a good file; cut, it is refused whole.
    let saved = std::fs::read(&file).unwrap();
    assert!(saved.len() > 30, "{} bytes", saved.len());
    std::fs::write(&file, &saved[..saved.len() - 3]).unwrap();
    let mut tundns = start(&lab, &[]);
    let output = tundns.output();
    assert!(output.contains("cache file ignored: cut short"), "{output}");
    assert_eq!(output.matches("cache file ignored").count(), 1, "{output}");
    single_answer(&ask(&lab, &[WWW_NAME, "A"]), WWW_A);
    tundns.stop_cleanly(Duration::from_secs(10));
    drop(tundns);

    // A good file again, but another DNS config's: not loaded either.
    let other = start(&lab, &["Block = ads.lab.test"]);
    assert!(
        other
            .output()
            .contains("cache file ignored: saved under another DNS configuration"),
        "{}",
        other.output()
    );
}

/// unbound's `prefetch: yes`, in tundns: a hit in the last tenth of a 20 s TTL is answered
/// from the cache at once (unbound is frozen meanwhile, so nothing else could answer), and
/// refreshes the entry in the background, so that the name is still a hit after the old
/// entry's expiry.
#[test]
fn prefetch_refreshes_a_name_near_the_end_of_its_ttl_without_the_client_waiting() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::resolver(), resolver_config(&[]));
    let first = single_answer(&ask(&lab, &[PREFETCH_NAME, "A"]), PREFETCH_A);
    let learned = Instant::now();
    assert_eq!(first.ttl as u64, PREFETCH_TTL);
    assert_eq!(lab.upstream_queries(PREFETCH_NAME, Some("A")), 1);

    // Past 90 % of the TTL (18 s), before its end.
    thread::sleep(Duration::from_millis(18_500).saturating_sub(learned.elapsed()));
    let paused = lab.pause_unbound();
    let near_the_end = ask(&lab, &[PREFETCH_NAME, "A", "+tries=1", "+time=1"]);
    let hit = single_answer(&near_the_end, PREFETCH_A);
    assert!(hit.ttl <= 2, "the old entry's TTL:\n{near_the_end}");
    // The refresh waits in unbound's socket until it thaws, within the upstream timeout.
    drop(paused);
    assert!(
        wait_until(Duration::from_secs(5), || lab
            .upstream_queries(PREFETCH_NAME, Some("A"))
            == 2),
        "one refresh reached unbound:\n{}",
        lab.unbound_log()
    );

    let status = lab.exec_in(&lab.client_ns, &[tundns_bin(), "status", &lab.tundns_iface]);
    assert!(
        status.assert_success().stdout.contains("prefetched 1"),
        "{status}"
    );

    // After the old entry's end: the refreshed one answers, nobody asks unbound again.
    thread::sleep(Duration::from_millis(21_000).saturating_sub(learned.elapsed()));
    let after = single_answer(&ask(&lab, &[PREFETCH_NAME, "A"]), PREFETCH_A);
    assert!(after.ttl > 10, "refreshed, TTL {}", after.ttl);
    assert_eq!(lab.upstream_queries(PREFETCH_NAME, Some("A")), 2);
}

/// Prefetch off (`Prefetch = off`): the same hit refreshes nothing.
#[test]
fn prefetch_off_refreshes_nothing() {
    let (lab, _tundns) =
        lab_with_tundns!(LabOptions::resolver(), resolver_config(&["Prefetch = off"]));
    single_answer(&ask(&lab, &[PREFETCH_NAME, "A"]), PREFETCH_A);
    let learned = Instant::now();
    thread::sleep(Duration::from_millis(18_500).saturating_sub(learned.elapsed()));
    single_answer(&ask(&lab, &[PREFETCH_NAME, "A"]), PREFETCH_A);
    thread::sleep(Duration::from_secs(1));
    assert_eq!(lab.upstream_queries(PREFETCH_NAME, Some("A")), 1);
}

/// RFC 8914, as real dig prints it: Blocked (15) for the blocklist, Synthesized (29) for
/// local records, Stale Answer (3) for serve-stale, No Reachable Authority (22) when every
/// upstream fails; nothing for a client that sent no EDNS, nor for a plain forwarded answer.
#[test]
fn extended_dns_errors_say_why_tundns_answered_itself() {
    let (lab, _tundns) = lab_with_tundns!(
        LabOptions::resolver(),
        resolver_config(&[
            "Block = ads.lab.test",
            "Record = nas.lab.internal A 10.99.0.10",
            "CacheMaxTTL = 1s",
            "ServeStale = 1h",
        ])
    );
    let blocked = ask(&lab, &["x.ads.lab.test", "A"]);
    assert_eq!(status(&blocked).as_deref(), Some("NXDOMAIN"), "{blocked}");
    assert!(blocked.stdout.contains("EDE: 15 (Blocked)"), "{blocked}");
    let plain = ask(&lab, &["x.ads.lab.test", "A", "+noedns"]);
    assert_eq!(status(&plain).as_deref(), Some("NXDOMAIN"), "{plain}");
    assert!(!plain.stdout.contains("EDE"), "{plain}");

    let local = ask(&lab, &["nas.lab.internal", "A"]);
    single_answer(&local, "10.99.0.10");
    assert!(local.stdout.contains("EDE: 29"), "{local}");

    let forwarded = ask(&lab, &["stale.lab.test", "A"]);
    single_answer(&forwarded, "203.0.113.70");
    assert!(!forwarded.stdout.contains("EDE"), "{forwarded}");

    lab.stop_unbound();
    thread::sleep(Duration::from_secs(2));
    let stale = ask(&lab, &["stale.lab.test", "A", "+time=5"]);
    single_answer(&stale, "203.0.113.70");
    assert!(stale.stdout.contains("EDE: 3 (Stale Answer)"), "{stale}");

    let failed = ask(&lab, &[WWW_NAME, "A", "+time=5"]);
    assert_eq!(status(&failed).as_deref(), Some("SERVFAIL"), "{failed}");
    assert!(
        failed.stdout.contains("EDE: 22 (No Reachable Authority)"),
        "{failed}"
    );
}

//! End-to-end tests of the DoQ (`quic://`) and DNS over HTTP/3 (`h3://`) upstreams (issue 14
//! §2): tundns in C asks a real QUIC server in N, which forwards to the lab's unbound; clients
//! are dig and kdig through the virtual IP.
//!
//! The server is `examples/lab_quic_upstream.rs`, built from quinn and h3 as published,
//! because Debian's dnsdist (1.7) serves neither DoQ nor DoH over HTTP/3 and unbound serves
//! neither. kdig's DoQ (unverified: Debian's kdig 3.2.6 crashes when it verifies a QUIC
//! server) checks the server itself; the server's own count of answers and unbound's log
//! (queries from the server's address) show each query's path.
//!
//! Run as root: `cargo build --release -p tundns --bin tundns --example lab_quic_upstream &&
//! TUNDNS_E2E=1 cargo test --release -p tundns --test quic_upstreams`. Without root or the lab
//! tools the tests print "skipped: ..." and pass, unless `TUNDNS_E2E=1`.

mod common;

use common::dig_output::status;
use common::resolver_lab::*;
use common::*;
use std::time::Duration;

/// The server's default: connections stay while tundns's own idle timeout (30 s) runs.
const LONG_IDLE: Duration = Duration::from_secs(30);
/// Sent as `MetricsAddress`: tundns's address on C's veth, reachable only in the lab.
const METRICS_ADDRESS: &str = "192.0.2.2:9153";

fn ca_line(lab: &Lab) -> String {
    format!("CAFile = {}", lab.ca_file().display())
}

/// Queries unbound received from the QUIC server (it forwards from its own address).
fn forwarded_by_quic_server(lab: &Lab, name: &str) -> usize {
    lab.unbound_log()
        .lines()
        .filter(|line| {
            line.contains(&format!("info: {QUIC_UPSTREAM_V4} "))
                && line.to_ascii_lowercase().contains(&format!(" {name}. "))
        })
        .count()
}

#[test]
fn doq_upstream_answers() {
    let lab = lab!(LabOptions::encrypted());
    lab.start_quic_upstream(LONG_IDLE);
    let _tundns = start_with_upstreams(&lab, &[&lab.doq_upstream()], &[&ca_line(&lab)]);
    single_answer(&ask(&lab, &[WWW_NAME, "A"]), WWW_A);
    single_answer(&ask(&lab, &[WWW_NAME, "AAAA", "+tcp"]), WWW_AAAA);
    let run = lab.kdig(&lab.client_ns, PROXY_V6, &["ttl.lab.test", "A", "+short"]);
    assert_eq!(run.assert_success().stdout.trim(), "203.0.113.73", "{run}");
    assert_eq!(lab.quic_upstream_answers("doq"), 3);
    assert_eq!(lab.quic_upstream_answers("h3"), 0);
    assert_eq!(forwarded_by_quic_server(&lab, WWW_NAME), 2);
    // The lab's server speaks DoQ to a client tundns did not write, too.
    let direct = lab.kdig(
        &lab.network_ns,
        QUIC_UPSTREAM_V4,
        &["+quic", WWW_NAME, "A", "+short"],
    );
    assert_eq!(direct.assert_success().stdout.trim(), WWW_A, "{direct}");
}

#[test]
fn h3_upstream_answers() {
    let lab = lab!(LabOptions::encrypted());
    lab.start_quic_upstream(LONG_IDLE);
    let _tundns = start_with_upstreams(&lab, &[&lab.h3_upstream()], &[&ca_line(&lab)]);
    single_answer(&ask(&lab, &[WWW_NAME, "A"]), WWW_A);
    single_answer(&ask(&lab, &[WWW_NAME, "AAAA"]), WWW_AAAA);
    assert_eq!(lab.quic_upstream_answers("h3"), 2);
    assert_eq!(lab.quic_upstream_answers("doq"), 0);
    assert_eq!(forwarded_by_quic_server(&lab, WWW_NAME), 2);
}

#[test]
fn quic_upstreams_with_a_wrong_ca_give_servfail() {
    let lab = lab!(LabOptions::encrypted());
    lab.start_quic_upstream(LONG_IDLE);
    let wrong = format!("CAFile = {}", lab.wrong_ca_file().display());
    for upstream in [lab.doq_upstream(), lab.h3_upstream()] {
        let tundns = start_with_upstreams(&lab, &[&upstream], &[&wrong]);
        let run = ask(&lab, &[WWW_NAME, "A", "+time=5"]);
        assert_eq!(
            status(&run).as_deref(),
            Some("SERVFAIL"),
            "{upstream}:\n{run}"
        );
        drop(tundns);
    }
    assert_eq!(lab.quic_upstream_answers("doq"), 0);
    assert_eq!(lab.quic_upstream_answers("h3"), 0);
    assert_eq!(forwarded_by_quic_server(&lab, WWW_NAME), 0);
}

#[test]
fn a_black_holed_doq_upstream_fails_over_to_h3_fast() {
    let lab = lab!(LabOptions::encrypted());
    lab.start_quic_upstream(LONG_IDLE);
    let silent = format!("quic://{TLS_NAME}@{DEAD_SILENT}:{DOQ_PORT}");
    let _tundns = start_with_upstreams(&lab, &[&silent, &lab.h3_upstream()], &[&ca_line(&lab)]);
    for attempt in 0..3 {
        let name = format!("n{attempt}.{WWW_NAME}");
        let run = ask(&lab, &[&name, "A", "+time=5"]);
        assert_eq!(status(&run).as_deref(), Some("NXDOMAIN"), "{run}");
        assert!(
            run.elapsed < Duration::from_secs(2),
            "attempt {attempt}: failover took {:?}:\n{run}",
            run.elapsed
        );
    }
    assert_eq!(lab.quic_upstream_answers("h3"), 3);

    // `tundns status` names both by their URLs, with the pool's view of each.
    let status = lab.exec_in(&lab.client_ns, &[tundns_bin(), "status", &lab.tundns_iface]);
    let shown = &status.assert_success().stdout;
    let doq_line = format!("    quic://{TLS_NAME}@{DEAD_SILENT}:{DOQ_PORT}: ");
    let h3_line = format!("    {}: up, rtt ", lab.h3_upstream());
    assert!(
        shown.contains(&doq_line) && shown.contains(&h3_line),
        "{status}"
    );
}

/// The server closes connections after 300 ms without packets; tundns keeps the session
/// ticket of the first and sends the next query in 0-RTT, which the server takes.
#[test]
fn a_new_quic_connection_resumes_in_0rtt() {
    let lab = lab!(LabOptions::encrypted());
    lab.start_quic_upstream(Duration::from_millis(300));
    let metrics = format!("MetricsAddress = {METRICS_ADDRESS}");
    let _tundns = start_with_upstreams(
        &lab,
        &[&lab.doq_upstream(), &lab.h3_upstream()],
        &[&ca_line(&lab), &metrics, "Cache = off"],
    );
    for round in 0..3 {
        single_answer(&ask(&lab, &[WWW_NAME, "A"]), WWW_A);
        assert_eq!(lab.quic_upstream_answers("doq"), round + 1);
        std::thread::sleep(Duration::from_millis(800));
    }
    let accepted = group_event(&lab, "zero_rtt_accepted");
    let rejected = group_event(&lab, "zero_rtt_rejected");
    assert!(
        accepted >= 2.0 && rejected == 0.0,
        "0-RTT accepted {accepted}, rejected {rejected}"
    );
}

/// `tundns_dns_upstream_group_events_total{group="default",event=...}`, scraped from C.
fn group_event(lab: &Lab, event: &str) -> f64 {
    let url = format!("http://{METRICS_ADDRESS}/metrics");
    let run = lab.exec_in(
        &lab.client_ns,
        &[
            "python3",
            "-c",
            "import sys, urllib.request\n\
             sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())",
            &url,
        ],
    );
    run.assert_success();
    let wanted = format!("event=\"{event}\"");
    run.stdout
        .lines()
        .filter(|line| line.starts_with("tundns_dns_upstream_group_events_total{"))
        .filter(|line| line.contains(&wanted))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

//! End-to-end tests of what shows tundns at work (issue 4, part 4): the Prometheus endpoint
//! (`MetricsAddress`), the query log (`QueryLog`), and the start-up error for a metrics
//! address already in use. tundns runs in the client namespace C against the lab's unbound
//! and wireguard-go peer in N; metrics are scraped from inside C with python3.
//!
//! Run as root: `TUNDNS_E2E=1 cargo test -p tundns --test observability`. Without root or
//! the lab tools the tests print "skipped: ..." and pass, unless `TUNDNS_E2E=1`.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// The client's own address on the veth in C: reachable only from inside the lab.
const METRICS_ADDRESS: &str = "192.0.2.2:9153";
const BLOCKED_NAME: &str = "ads.lab.test";

/// Scrapes `/metrics` from inside C and returns the text.
fn scrape(lab: &Lab) -> String {
    let url = format!("http://{METRICS_ADDRESS}/metrics");
    let run = lab.exec_in(
        &lab.client_ns,
        &[
            "python3",
            "-c",
            "import sys, urllib.request\n\
             r = urllib.request.urlopen(sys.argv[1], timeout=5)\n\
             assert r.headers['Content-Type'].startswith('application/openmetrics-text'), r.headers['Content-Type']\n\
             sys.stdout.write(r.read().decode())",
            &url,
        ],
    );
    run.assert_success();
    assert!(run.stdout.ends_with("# EOF\n"), "{}", run.stdout);
    run.stdout
}

/// Every sample of a scrape, by its full series name (`name{labels}`).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no sample {series} in {samples:#?}"))
}

fn queries(transport: &str, qtype: &str, result: &str) -> String {
    format!(
        "tundns_dns_queries_total{{transport=\"{transport}\",type=\"{qtype}\",result=\"{result}\"}}"
    )
}

/// The value of `series` in `after` minus the one in `before` (absent counts as 0).
fn moved(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
}

/// The lab directory (where the lab writes its files).
fn lab_dir(lab: &Lab) -> PathBuf {
    lab.write_file("observability.marker", "")
        .parent()
        .expect("the lab directory")
        .to_path_buf()
}

fn config(lab: &Lab, query_log: &Path) -> String {
    lab.client_config(&ClientConfig {
        dns_proxy_lines: vec![
            "Cache = on".into(),
            format!("Block = {BLOCKED_NAME}"),
            format!("MetricsAddress = {METRICS_ADDRESS}"),
            format!("QueryLog = {}", query_log.display()),
        ],
        ..ClientConfig::default()
    })
}

fn read_log(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// Waits (at most 5 s) until the log at `path` has `count` lines, and returns them.
fn wait_for_lines(path: &Path, count: usize) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    wait_until(Duration::from_secs(5), || {
        lines = read_log(path);
        lines.len() >= count
    });
    lines
}

#[test]
fn metrics_and_query_log_follow_a_miss_a_hit_a_block_and_a_tcp_query() {
    let lab = lab!();
    let log_path = lab_dir(&lab).join("log").join("queries.jsonl");
    let tundns = lab.start_tundns(&config(&lab, &log_path));
    // Traffic through the tunnel: a handshake and bytes both ways.
    lab.assert_ping(&lab.client_ns, PEER_TUNNEL_V4);
    let before = samples(&scrape(&lab));

    let c = &lab.client_ns;
    let miss = lab.dig(c, PROXY_V4, &[WWW_NAME, "A"]);
    assert!(miss.assert_success().stdout.contains(WWW_A), "{miss}");
    let hit = lab.dig(c, PROXY_V4, &[WWW_NAME, "A"]);
    assert!(hit.assert_success().stdout.contains(WWW_A), "{hit}");
    let blocked = lab.dig(c, PROXY_V4, &[BLOCKED_NAME, "A"]);
    assert!(
        blocked.assert_success().stdout.contains("NXDOMAIN"),
        "{blocked}"
    );
    let tcp = lab.dig(c, PROXY_V4, &["+tcp", WWW_NAME, "AAAA"]);
    assert!(tcp.assert_success().stdout.contains(WWW_AAAA), "{tcp}");

    let after = samples(&scrape(&lab));
    for (series, expected) in [
        (queries("udp", "A", "forwarded"), 1.0),
        (queries("udp", "A", "cache"), 1.0),
        (queries("udp", "A", "blocked"), 1.0),
        (queries("tcp", "AAAA", "forwarded"), 1.0),
        (queries("udp", "AAAA", "forwarded"), 0.0),
        ("tundns_dns_cache_hits_total".into(), 1.0),
        ("tundns_dns_collapsed_queries_total".into(), 0.0),
    ] {
        assert_eq!(
            moved(&before, &after, &series),
            expected,
            "{series} moved by the wrong amount"
        );
    }
    let total = |samples: &HashMap<String, f64>| -> f64 {
        samples
            .iter()
            .filter(|(series, _)| series.starts_with("tundns_dns_queries_total{"))
            .map(|(_, value)| value)
            .sum()
    };
    assert_eq!(total(&after) - total(&before), 4.0, "four queries, no more");
    // The two forwarded queries missed the cache (at least once each).
    assert!(moved(&before, &after, "tundns_dns_cache_misses_total") >= 2.0);
    assert!(value(&after, "tundns_dns_cache_entries") >= 2.0);
    assert_eq!(
        after.get("tundns_dns_prefetches_skipped_total"),
        Some(&0.0),
        "nothing was due for prefetch"
    );
    assert!(value(&after, "tundns_dns_cache_bytes") > 0.0);
    assert_eq!(
        value(&after, "tundns_dns_cache_capacity_bytes"),
        32.0 * 1024.0 * 1024.0
    );

    let upstream = format!("group=\"default\",upstream=\"udp://{UNBOUND_V4}:53\"");
    assert_eq!(
        moved(
            &before,
            &after,
            &format!("tundns_dns_upstream_rtt_seconds_count{{{upstream}}}")
        ),
        2.0,
        "one RTT per upstream answer"
    );
    assert_eq!(
        value(
            &after,
            &format!("tundns_dns_upstream_rtt_seconds_bucket{{le=\"+Inf\",{upstream}}}")
        ),
        value(
            &after,
            &format!("tundns_dns_upstream_rtt_seconds_count{{{upstream}}}")
        )
    );
    assert!(
        value(
            &after,
            &format!("tundns_dns_upstream_srtt_seconds{{{upstream}}}")
        ) > 0.0
    );
    assert_eq!(
        value(&after, &format!("tundns_dns_upstream_up{{{upstream}}}")),
        1.0
    );
    for kind in ["timeout", "refused", "error", "servfail"] {
        assert_eq!(
            value(
                &after,
                &format!("tundns_dns_upstream_errors_total{{{upstream},kind=\"{kind}\"}}")
            ),
            0.0
        );
    }
    assert_eq!(value(&after, "tundns_dns_upstream_in_flight"), 0.0);
    assert_eq!(value(&after, "tundns_dns_upstream_in_flight_limit"), 1024.0);
    assert!(after.contains_key("tundns_dns_tcp_connections"));

    // Three UDP queries and a TCP exchange of several segments went to the proxy.
    assert!(
        moved(
            &before,
            &after,
            "tundns_filter_packets_total{action=\"diverted\"}"
        ) >= 5.0
    );
    assert!(value(&after, "tundns_filter_packets_total{action=\"passed\"}") >= 1.0);
    assert_eq!(
        value(
            &after,
            "tundns_filter_dropped_packets_total{reason=\"inbound_virtual_ip\"}"
        ),
        0.0
    );

    let peer = format!("{{public_key=\"{}\"}}", lab.peer_public_key());
    assert_eq!(value(&after, "tundns_wireguard_up"), 1.0);
    assert!(
        value(
            &after,
            &format!("tundns_wireguard_peer_received_bytes_total{peer}")
        ) > 0.0
    );
    assert!(
        value(
            &after,
            &format!("tundns_wireguard_peer_sent_bytes_total{peer}")
        ) > 0.0
    );
    assert!(
        value(
            &after,
            &format!("tundns_wireguard_peer_last_handshake_seconds{peer}")
        ) > 1.5e9
    );
    assert_eq!(value(&after, "tundns_query_log_lines_total"), 4.0);
    assert_eq!(
        value(
            &after,
            "tundns_query_log_dropped_total{reason=\"queue_full\"}"
        ),
        0.0
    );

    // The query log: one line per query, in order, with every field.
    let lines = wait_for_lines(&log_path, 4);
    let expected = [
        ("udp", "A", "NOERROR", "forwarded"),
        ("udp", "A", "NOERROR", "cache"),
        ("udp", "A", "NXDOMAIN", "blocked"),
        ("tcp", "AAAA", "NOERROR", "forwarded"),
    ];
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for (line, (transport, qtype, result, path)) in lines.iter().zip(expected) {
        let name = if path == "blocked" {
            BLOCKED_NAME
        } else {
            WWW_NAME
        };
        assert_eq!(line["name"], format!("{name}."), "{line}");
        assert_eq!(line["type"], qtype, "{line}");
        assert_eq!(line["transport"], transport, "{line}");
        assert_eq!(line["result"], result, "{line}");
        assert_eq!(line["path"], path, "{line}");
        // The upstream that answered, for forwarded answers only.
        let upstream = if path == "forwarded" {
            serde_json::Value::from(format!("udp://{UNBOUND_V4}:53"))
        } else {
            serde_json::Value::Null
        };
        assert_eq!(line["upstream"], upstream, "{line}");
        let client: SocketAddr = line["client"]
            .as_str()
            .and_then(|client| client.parse().ok())
            .unwrap_or_else(|| panic!("client is ip:port: {line}"));
        assert_eq!(client.ip().to_string(), CLIENT_TUNNEL_V4, "{line}");
        let time = line["time"].as_str().expect("time");
        assert!(
            time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "RFC 3339 UTC time: {line}"
        );
        assert!(line["latency_us"].as_u64().is_some(), "{line}");
        assert_eq!(line.as_object().map(|o| o.len()), Some(9), "{line}");
    }

    // Rotation: move the file away, SIGHUP, and the next line starts a new file.
    let rotated = log_path.with_extension("jsonl.1");
    std::fs::rename(&log_path, &rotated).expect("rotate the log");
    lab.exec_in(c, &["kill", "-HUP", &tundns.pid().to_string()])
        .assert_success();
    let again = lab.dig(c, PROXY_V4, &[WWW_NAME, "A"]);
    again.assert_success();
    let fresh = wait_for_lines(&log_path, 1);
    assert_eq!(fresh.len(), 1, "{fresh:#?}");
    assert_eq!(fresh[0]["path"], "cache");
    assert_eq!(read_log(&rotated).len(), 4);
    // The private key never comes out: not in the query log, the metrics or the logs.
    let secret = lab.client_private_key();
    let query_log = std::fs::read_to_string(&rotated).unwrap_or_default()
        + &std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        !query_log.contains(secret),
        "the private key is in the query log"
    );
    assert!(
        !scrape(&lab).contains(secret),
        "the private key is in the metrics"
    );
    assert!(
        !tundns.output().contains(secret),
        "the private key is in tundns's logs"
    );
}

#[test]
fn metrics_address_in_use_is_a_clear_start_up_error_that_leaves_no_interface() {
    let lab = lab!();
    let c = &lab.client_ns;
    let (host, port) = METRICS_ADDRESS.rsplit_once(':').expect("ip:port");
    let _squatter = lab.spawn_in(
        c,
        "port squatter",
        &[
            "python3",
            "-c",
            "import socket, sys, time\n\
             s = socket.socket()\n\
             s.bind((sys.argv[1], int(sys.argv[2])))\n\
             s.listen()\n\
             time.sleep(60)",
            host,
            port,
        ],
    );
    let listening = wait_until(Duration::from_secs(5), || {
        lab.exec_in(
            c,
            &[
                "python3",
                "-c",
                "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)",
                host,
                port,
            ],
        )
        .succeeded()
    });
    assert!(listening, "the squatter must hold {METRICS_ADDRESS}");

    let log_path = lab_dir(&lab).join("queries.jsonl");
    let config_text = config(&lab, &log_path);
    let path = lab.write_client_config(&config_text);
    let config_line = config_text
        .lines()
        .position(|line| line.starts_with("MetricsAddress"))
        .expect("the key is written")
        + 1;

    // `check` validates the keys without binding: it passes even while the port is taken.
    let check = lab.exec_in(c, &[tundns_bin(), "check", path_str(&path)]);
    assert!(check.succeeded(), "{check}");

    let up = lab.exec_in(c, &[tundns_bin(), "up", path_str(&path)]);
    assert_eq!(up.status.and_then(|s| s.code()), Some(1), "{up}");
    let expected = format!(
        "tundns: {}:{config_line}: MetricsAddress {METRICS_ADDRESS}: cannot listen: Address already in use",
        path.display()
    );
    assert!(
        up.stderr.contains(&expected),
        "expected {expected:?} in:\n{up}"
    );
    let link = lab.exec_in(c, &["ip", "link", "show", &lab.tundns_iface]);
    assert!(!link.succeeded(), "the interface must not exist:\n{link}");
    assert!(
        !uapi_socket(&lab.tundns_iface).exists(),
        "no UAPI socket may be left"
    );
    let route = lab.exec_in(c, &["ip", "route", "get", PROXY_V4]);
    assert!(
        !route.stdout.contains(&lab.tundns_iface),
        "no route into the interface may be left:\n{route}"
    );

    // A malformed address is a config error naming the line, for `check` and `up` alike.
    let bad = config_text.replace(
        &format!("MetricsAddress = {METRICS_ADDRESS}"),
        "MetricsAddress = localhost:9153",
    );
    let bad_path = lab.write_client_config(&bad);
    for command in ["check", "up"] {
        let run = lab.exec_in(c, &[tundns_bin(), command, path_str(&bad_path)]);
        assert_eq!(run.status.and_then(|s| s.code()), Some(2), "{run}");
        assert!(
            run.stderr.contains(&format!(
                "{}:{config_line}: MetricsAddress: expected ip:port or [ipv6]:port (or off), found \"localhost:9153\"",
                bad_path.display()
            )),
            "{run}"
        );
    }
}

//! End-to-end tests of runtime control (issue 4, section 3): `tundns status` and `tundns dns
//! ...` run inside the client namespace against a running tundns, and change what `dig`
//! gets at once; bad requests on the control socket get an error reply and change nothing;
//! the socket is 0600 and goes away with the daemon.
//!
//! Run as root: `TUNDNS_E2E=1 cargo test -p tundns --test control`. Without root or the lab
//! tools the tests print "skipped: ..." and pass, unless `TUNDNS_E2E=1`.

mod common;

use common::dig_output::status;
use common::resolver_lab::*;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

const SITE_NAME: &str = "site.pangolin.internal";
const SITE_A: &str = "10.99.0.77";
const UPSTREAM_WAIT: Duration = Duration::from_secs(5);

fn control_socket(lab: &Lab) -> PathBuf {
    lab.run_dir().join(format!("{}.sock", lab.tundns_iface))
}

/// `tundns ARGS...` inside the client namespace.
fn tundns(lab: &Lab, args: &[&str]) -> Run {
    let mut command = vec![tundns_bin()];
    command.extend_from_slice(args);
    lab.exec_in(&lab.client_ns, &command)
}

/// `tundns dns -i IFACE ARGS...` inside the client namespace; must succeed.
#[track_caller]
fn dns(lab: &Lab, args: &[&str]) -> String {
    let mut command = vec!["dns", "-i", &lab.tundns_iface];
    command.extend_from_slice(args);
    let run = tundns(lab, &command);
    run.assert_success();
    run.stdout
}

/// `dig +short` at the proxy from the client namespace.
fn short(lab: &Lab, name: &str, rtype: &str) -> String {
    let run = lab.dig(&lab.client_ns, PROXY_V4, &[name, rtype, "+short"]);
    run.assert_success();
    run.stdout.trim().to_owned()
}

/// Sends raw request lines on one connection and returns one reply line for each.
fn raw_requests(lab: &Lab, lines: &[&str]) -> Vec<serde_json::Value> {
    let mut stream = UnixStream::connect(control_socket(lab)).expect("connect the control socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    lines
        .iter()
        .map(|line| {
            stream.write_all(line.as_bytes()).unwrap();
            stream.write_all(b"\n").unwrap();
            let mut reply = String::new();
            reader.read_line(&mut reply).expect("a reply line");
            serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply {reply:?}: {e}"))
        })
        .collect()
}

#[test]
fn control_changes_records_routes_and_cache_at_once() {
    let lab = lab!(LabOptions::split_dns());
    let config = lab.client_config(&ClientConfig {
        dns_proxy_lines: vec![
            "Cache = on".into(),
            "Record = nas.home.internal A 10.99.0.10".into(),
        ],
        ..ClientConfig::default()
    });
    let _tundns = lab.start_tundns(&config);

    // Records: added and answered at once, listed with their source, removed at once.
    assert_eq!(short(&lab, SITE_NAME, "A"), "", "not there before");
    let added = dns(&lab, &["records", "add", SITE_NAME, "60", "A", SITE_A]);
    assert!(added.contains("added"), "{added}");
    assert_eq!(short(&lab, SITE_NAME, "A"), SITE_A);
    let records = dns(&lab, &["records", "list"]);
    assert!(
        records.contains("config   nas.home.internal A 10.99.0.10"),
        "{records}"
    );
    assert!(
        records.contains(&format!("runtime  {SITE_NAME} 60 A {SITE_A}")),
        "{records}"
    );
    let query = dns(&lab, &["query", SITE_NAME]);
    assert!(query.contains("path: local"), "{query}");
    assert!(query.contains(SITE_A), "{query}");
    dns(&lab, &["records", "remove", SITE_NAME]);
    assert_eq!(short(&lab, SITE_NAME, "A"), "", "gone at once");
    assert_eq!(short(&lab, "nas.home.internal", "A"), "10.99.0.10");

    // Cache and flush: the second query is a cache hit, the one after a flush reaches unbound.
    // (The lab's readiness check asked unbound for this name already.)
    let before = lab.upstream_queries(WWW_NAME, Some("A"));
    let lab_ref = &lab;
    let reached = |count| move || lab_ref.upstream_queries(WWW_NAME, Some("A")) == before + count;
    assert_eq!(short(&lab, WWW_NAME, "A"), WWW_A);
    assert!(wait_until(UPSTREAM_WAIT, reached(1)));
    let cached = dns(&lab, &["query", WWW_NAME, "A"]);
    assert!(cached.contains("path: cache"), "{cached}");
    assert!(cached.contains(WWW_A), "{cached}");
    assert!(reached(1)());
    let flushed = dns(&lab, &["flush"]);
    assert!(flushed.contains("flushed"), "{flushed}");
    let asked = dns(&lab, &["query", WWW_NAME, "A"]);
    assert!(
        asked.contains(&format!("path: upstream (. -> {UNBOUND_V4}:53)")),
        "{asked}"
    );
    assert!(
        asked.contains(&format!("answered by: udp://{UNBOUND_V4}:53")),
        "{asked}"
    );
    assert!(
        wait_until(UPSTREAM_WAIT, reached(2)),
        "a flush empties the cache"
    );
    assert_eq!(short(&lab, WWW_NAME, "A"), WWW_A);
    assert!(reached(2)(), "cached again");

    // Routes: the tunnel-only resolver answers corp.internal once routed there.
    assert_ne!(short(&lab, CORP_DB_NAME, "A"), CORP_DB_A, "not routed yet");
    let routed = dns(
        &lab,
        &[
            "routes",
            "add",
            "corp.internal",
            TUNNEL_RESOLVER_V4,
            "--through-tunnel",
        ],
    );
    assert!(routed.contains("through the tunnel"), "{routed}");
    let query = dns(&lab, &["query", CORP_DB_NAME]);
    assert!(
        query.contains(&format!(
            "path: upstream (corp.internal -> {TUNNEL_RESOLVER_V4}:53, through the tunnel)"
        )),
        "{query}"
    );
    assert!(
        query.contains("NOERROR") && query.contains(CORP_DB_A),
        "{query}"
    );
    assert_eq!(short(&lab, CORP_DB_NAME, "A"), CORP_DB_A);
    assert!(lab.tunnel_resolver_queries(CORP_DB_NAME, None) >= 1);
    let routes = dns(&lab, &["routes", "list"]);
    assert!(
        routes.contains(&format!("config   . -> {UNBOUND_V4}")),
        "{routes}"
    );
    assert!(
        routes.contains(&format!(
            "runtime  corp.internal -> {TUNNEL_RESOLVER_V4}:53 (through the tunnel)"
        )),
        "{routes}"
    );

    // Status: the peer (handshake done by now), the proxy's addresses, upstream health.
    let status = tundns(&lab, &["status", &lab.tundns_iface]);
    status.assert_success();
    let text = &status.stdout;
    for expected in [
        format!("interface: {}", lab.tundns_iface),
        format!("peer: {}", lab.peer_public_key()),
        format!("endpoint: {PEER_ENDPOINT}"),
        format!("dns proxy: {PROXY_V4}, {PROXY_V6}"),
        format!("udp://{UNBOUND_V4}:53: up, rtt "),
        format!("udp://{TUNNEL_RESOLVER_V4}:53: up, rtt "),
        "upstreams for corp.internal (through the tunnel)".to_owned(),
        "cache: ".to_owned(),
        "queries: blocked 0, local ".to_owned(),
    ] {
        assert!(text.contains(&expected), "{expected:?} missing in:\n{text}");
    }
    assert!(
        text.contains(" seconds ago"),
        "a handshake happened:\n{text}"
    );
    let json = tundns(&lab, &["status", &lab.tundns_iface, "--json"]);
    json.assert_success();
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert!(value["ok"]["peers"][0]["rx_bytes"].as_u64().unwrap() > 0);

    // Removing the route sends corp.internal back to the default upstream at once: what
    // the tunnel's resolver answered, cached until now, is forgotten with the route.
    let removed = dns(&lab, &["routes", "remove", "corp.internal"]);
    assert!(
        removed.contains("forgot 1 cached answers under it"),
        "{removed}"
    );
    assert_ne!(short(&lab, CORP_DB_NAME, "A"), CORP_DB_A);
}

#[test]
fn control_refuses_bad_requests_and_keeps_serving() {
    let (lab, mut tundns_daemon) =
        lab_with_tundns!(LabOptions::resolver(), ClientConfig::default());
    let socket = control_socket(&lab);
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(mode(&socket) & 0o777, 0o600, "socket mode");
    assert_eq!(
        mode(socket.parent().unwrap()) & 0o777,
        0o700,
        "directory mode"
    );
    // Another user is told why, not that nothing runs.
    let as_nobody = lab.exec_in(
        &lab.client_ns,
        &[
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "env",
            "-u",
            "XDG_RUNTIME_DIR",
            tundns_bin(),
            "status",
            &lab.tundns_iface,
        ],
    );
    assert!(!as_nobody.succeeded(), "{as_nobody}");
    assert!(
        as_nobody.stderr.contains("permission denied"),
        "{as_nobody}"
    );

    let replies = raw_requests(
        &lab,
        &[
            "{not json",
            r#"{"command":"reboot"}"#,
            r#"{"command":"records_add","record":"bad.example A 300.1.2.3"}"#,
            r#"{"command":"records_add","record":"bad.example MX 10 mail"}"#,
            r#"{"command":"records_add"}"#,
            r#"{"command":"routes_add","domains":["x.example"],"upstreams":["nowhere"]}"#,
            r#"{"command":"routes_remove","domain":"never.example"}"#,
            r#"{"command":"records_list"}"#,
        ],
    );
    for (index, reply) in replies[..7].iter().enumerate() {
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "request {index}: {reply}");
    }
    assert!(replies[0]["error"].as_str().unwrap().contains("bad JSON"));
    assert_eq!(replies[1]["error"], "unknown command \"reboot\"");
    assert!(replies[2]["error"].as_str().unwrap().contains("300.1.2.3"));
    assert_eq!(replies[7]["ok"], serde_json::json!([]), "nothing was added");

    // The daemon still answers DNS, and other connections still get served.
    assert_eq!(short(&lab, WWW_NAME, "A"), WWW_A);
    let run = tundns(&lab, &["dns", "-i", &lab.tundns_iface, "routes", "list"]);
    run.assert_success();
    assert!(run.stdout.contains(UNBOUND_V4), "{}", run.stdout);
    let refused = tundns(
        &lab,
        &[
            "dns",
            "-i",
            &lab.tundns_iface,
            "records",
            "add",
            "x",
            "BOGUS",
            "1",
        ],
    );
    assert!(!refused.succeeded(), "an invalid record fails the command");
    assert!(
        refused.stderr.contains("unsupported record type"),
        "{}",
        refused.stderr
    );

    tundns_daemon.stop_cleanly(Duration::from_secs(5));
    assert!(!socket.exists(), "the socket is removed at shutdown");
    let gone = tundns(&lab, &["status", &lab.tundns_iface]);
    assert!(!gone.succeeded());
    assert!(gone.stderr.contains("is not running"), "{}", gone.stderr);
}

#[test]
fn blocklist_reload_reads_the_files_again() {
    let lab = lab!(LabOptions::resolver());
    let host1 = ("host1.lab.test", "203.0.113.101");
    let host2 = ("host2.lab.test", "203.0.113.102");
    let list = lab.write_file("reloaded-blocklist.txt", format!("0.0.0.0 {WWW_NAME}\n"));
    let config = lab.client_config(&ClientConfig {
        dns_proxy_lines: vec![
            // Relative to the config file's directory (the lab's), not tundns's cwd.
            "BlockList = reloaded-blocklist.txt".into(),
            "Block = blocked-in-config.lab.test".into(),
            "Cache = off".into(),
        ],
        ..ClientConfig::default()
    });
    let daemon = lab.start_tundns(&config);
    assert_eq!(short(&lab, WWW_NAME, "A"), "", "blocked from the start");
    assert_eq!(short(&lab, host1.0, "A"), host1.1);

    // The file changes: nothing happens until the reload, then the new list applies at once.
    std::fs::write(&list, format!("# updated\n||{}^\n", host1.0)).unwrap();
    assert_eq!(short(&lab, WWW_NAME, "A"), "", "still the old list");
    let reloaded = dns(&lab, &["blocklist", "reload"]);
    assert!(
        reloaded.contains("blocklist reloaded: 2 domains"),
        "the file's and the config's: {reloaded}"
    );
    assert_eq!(short(&lab, WWW_NAME, "A"), WWW_A, "unblocked");
    assert_eq!(short(&lab, host1.0, "A"), "", "blocked");
    let run = lab.dig(
        &lab.client_ns,
        PROXY_V4,
        &["blocked-in-config.lab.test", "A"],
    );
    assert_eq!(status(&run).as_deref(), Some("NXDOMAIN"), "{run}");

    // SIGHUP (`systemctl reload`) reloads too.
    std::fs::write(&list, format!("{}\n", host2.0)).unwrap();
    daemon.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || short(&lab, host2.0, "A")
            .is_empty()),
        "SIGHUP did not reload:\n{}",
        daemon.output()
    );
    assert_eq!(
        short(&lab, host1.0, "A"),
        host1.1,
        "unblocked by the reload"
    );

    // A bad line fails the reload with the file and line, and the list in use stays.
    std::fs::write(&list, format!("{}\n@@||{}^\n", host1.0, host2.0)).unwrap();
    let refused = tundns(
        &lab,
        &["dns", "-i", &lab.tundns_iface, "blocklist", "reload"],
    );
    assert!(!refused.succeeded(), "{refused}");
    let named = format!("{}:2", list.display());
    assert!(refused.stderr.contains(&named), "{named} in:\n{refused}");
    assert!(refused.stderr.contains("unchanged"), "{refused}");
    assert_eq!(short(&lab, host2.0, "A"), "", "still blocked");
    assert_eq!(short(&lab, host1.0, "A"), host1.1, "not blocked again");
}

/// `tundns down IFACE` stops the tunnel as SIGTERM would: exit 0, interface gone, and it
/// returns once the teardown is done.
#[test]
fn down_stops_a_running_tunnel_cleanly() {
    let lab = lab!();
    // A slow PostDown: `down` returns only once the tunnel has let go of the interface.
    let config = lab.client_config(&ClientConfig::default()).replacen(
        "MTU = 1420\n",
        "MTU = 1420\nPostDown = sleep 1\n",
        1,
    );
    let mut daemon = lab.start_tundns(&config);
    let down = lab.exec_in(&lab.client_ns, &[tundns_bin(), "down", &lab.tundns_iface]);
    down.assert_success();
    assert!(
        down.stdout
            .contains(&format!("{}: stopped", lab.tundns_iface)),
        "{down}"
    );
    // As with wg-quick, `up` right after `down` finds the interface free.
    let mut up = lab.start_tundns(&config);
    let status = daemon
        .wait_for_exit(Duration::from_secs(10))
        .expect("tundns stopped");
    assert!(status.success(), "{status:?}:\n{}", daemon.output());
    up.stop_cleanly(Duration::from_secs(10));
    let link = lab.exec_in(&lab.client_ns, &["ip", "link", "show", &lab.tundns_iface]);
    assert!(!link.succeeded(), "the interface outlived `down`:\n{link}");
    let again = lab.exec_in(&lab.client_ns, &[tundns_bin(), "down", &lab.tundns_iface]);
    assert!(!again.succeeded(), "{again}");
}

/// `tundns dns query` asks as a client does, over UDP with EDNS: an upstream that answers
/// clients over UDP only answers it too, and the report says how it was asked. `--no-cache`
/// goes past the cache to the route's upstreams.
#[test]
fn dns_query_asks_as_a_client_would() {
    let lab = lab!(LabOptions::resolver());
    let config = lab.client_config(&ClientConfig {
        dns_proxy_lines: vec!["Cache = on".into()],
        ..ClientConfig::default()
    });
    let _tundns = lab.start_tundns(&config);
    // unbound answers over UDP only from now on.
    let udp_only = lab.write_file(
        "udp-only.nft",
        "table inet udp_only {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    \
         tcp dport 53 reject with tcp reset\n  }\n}\n",
    );
    lab.exec_in(&lab.network_ns, &["nft", "-f", path_str(&udp_only)])
        .assert_success();
    let over_tcp = lab.dig(&lab.network_ns, UNBOUND_V4, &["+tcp", WWW_NAME, "A"]);
    assert!(
        !over_tcp.stdout.contains(WWW_A),
        "unbound still answers TCP:\n{over_tcp}"
    );

    let asked = dns(&lab, &["query", WWW_NAME]);
    assert!(asked.contains(&format!("answer: {WWW_NAME}. ")), "{asked}");
    assert!(asked.contains(WWW_A), "{asked}");
    assert!(asked.contains("asked over: udp\n"), "{asked}");
    assert!(
        asked.contains(&format!("answered by: udp://{UNBOUND_V4}:53\n")),
        "{asked}"
    );
    let cached = dns(&lab, &["query", WWW_NAME]);
    assert!(cached.contains("path: cache"), "{cached}");

    let before = lab.upstream_queries(WWW_NAME, Some("A"));
    let fresh = dns(&lab, &["query", "--no-cache", WWW_NAME]);
    assert!(fresh.contains("path: upstream"), "{fresh}");
    assert!(fresh.contains(WWW_A), "{fresh}");
    assert!(
        wait_until(Duration::from_secs(5), || lab
            .upstream_queries(WWW_NAME, Some("A"))
            > before),
        "--no-cache did not reach unbound"
    );
}

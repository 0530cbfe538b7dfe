//! End-to-end tests: tundns in a client namespace against a real wireguard-go peer and a real
//! unbound upstream in a network namespace (see `common`). Each test builds its own lab.
//!
//! The `lab_baseline_*` tests need no tundns: they prove the lab itself (wireguard-go on both
//! sides, unbound's fixtures, the refusal detectors), so a failure elsewhere points at tundns.
//!
//! Run as root: `TUNDNS_E2E=1 cargo test -p tundns --test e2e`. Without root or the lab tools
//! the tests print "skipped: ..." and pass, unless `TUNDNS_E2E=1`.

mod common;

use common::dig_output::{answer_count, header_flags, status};
use common::*;
use domain::base::iana::Rtype;
use std::time::{Duration, Instant};
use tundns_test_support::dns;

const BURST_QUERIES: usize = 200;
/// Slack for WireGuard keepalives (32 bytes each) when comparing counters; one leaked DNS query
/// costs more than this on its own (transport header, tag, IP, UDP and DNS).
const KEEPALIVE_SLACK_BYTES: u64 = 64;
/// What one WireGuard keepalive adds to the peer's received bytes.
const KEEPALIVE_BYTES: u64 = 32;

// ---------------------------------------------------------------------------------------------
// Baselines: the lab without tundns.

#[test]
fn lab_baseline_wireguard_go_pair() {
    let lab = lab!();
    lab.start_wireguard_go_client();
    let before = lab.peer_transfer_counters();

    assert_tunnel_carries_traffic_both_ways(&lab);

    let after = lab.peer_transfer_counters();
    assert!(
        after.received > before.received && after.sent > before.sent,
        "the peer's counters must show the tunnel traffic: {before:?} -> {after:?}"
    );
    let answer = lab.dig(&lab.client_ns, UNBOUND_V4, &[WWW_NAME, "A", "+short"]);
    assert_eq!(answer.assert_success().stdout.trim(), WWW_A, "{answer}");
}

#[test]
fn lab_baseline_unbound_fixtures() {
    let lab = lab!();
    let c = &lab.client_ns;
    let aaaa = lab.dig(c, UNBOUND_V6, &[WWW_NAME, "AAAA", "+short"]);
    assert_eq!(aaaa.assert_success().stdout.trim(), WWW_AAAA, "{aaaa}");

    // The big answer must really need TCP, or the truncation test proves nothing.
    let udp = lab.dig(c, UNBOUND_V4, &[BIG_TXT_NAME, "TXT", "+ignore"]);
    assert!(header_flags(&udp).contains(&"tc".to_owned()), "{udp}");
    let tcp = lab.dig(c, UNBOUND_V4, &[BIG_TXT_NAME, "TXT", "+tcp", "+short"]);
    assert_eq!(
        tcp.assert_success().stdout.lines().count(),
        BIG_TXT_RECORDS,
        "{tcp}"
    );

    // Names outside the zone are answered by unbound itself, at once.
    let outside = lab.dig(c, UNBOUND_V4, &["example.com", "A"]);
    assert_eq!(status(&outside).as_deref(), Some("NXDOMAIN"), "{outside}");

    lab.set_resolver(c, UNBOUND_V4);
    let getent = lab.exec_in(c, &["getent", "ahosts", WWW_NAME]);
    assert_getent_has_both_families(&getent);
}

#[test]
fn lab_baseline_dead_upstreams_and_refusal_detectors() {
    let lab = lab!();
    let c = &lab.client_ns;
    let refusing = lab.dig(c, DEAD_REFUSING, &[WWW_NAME]);
    assert!(refusing.stdout.contains("connection refused"), "{refusing}");
    let silent = lab.dig(c, DEAD_SILENT, &[WWW_NAME]);
    assert!(silent.stdout.contains("timed out"), "{silent}");

    // The detectors the port-unreachable and RST tests use, against a real kernel in N.
    assert_udp_port_unreachable(&lab, "192.0.2.1");
    assert_udp_port_unreachable(&lab, "2001:db8::1");
    assert_tcp_refused(&lab, "192.0.2.1");
    assert_tcp_refused(&lab, "2001:db8::1");
}

// ---------------------------------------------------------------------------------------------
// The tunnel.

#[test]
fn tunnel_carries_traffic_both_ways() {
    let (lab, mut tundns) = lab_with_tundns!();
    assert_tunnel_carries_traffic_both_ways(&lab);
    assert!(tundns.is_running(), "tundns exited:\n{}", tundns.output());
}

/// The packets tundns has written into its TUN: what the host's stack received from it.
fn tun_rx_packets(lab: &Lab) -> u64 {
    let path = format!("/sys/class/net/{}/statistics/rx_packets", lab.tundns_iface);
    let run = lab.exec_in(&lab.client_ns, &["cat", &path]);
    run.assert_success();
    run.stdout.trim().parse().expect("a packet count")
}

#[test]
fn a_peer_cannot_send_from_outside_its_allowed_ips_between_allowed_packets() {
    let (lab, mut tundns) = lab_with_tundns!();
    lab.assert_ping(&lab.client_ns, PEER_TUNNEL_V4);
    // A source the peer holds but tundns's AllowedIPs for it (10.99.0.0/24) do not: the
    // peer's wireguard-go encrypts it towards tundns, which must drop it after decrypting,
    // whatever the allowed packets before and after it were.
    let outside = "10.98.0.1";
    lab.exec_in(
        &lab.network_ns,
        &[
            "ip",
            "addr",
            "add",
            &format!("{outside}/32"),
            "dev",
            &lab.peer_iface,
        ],
    )
    .assert_success();
    let ping_from = |source: &str| {
        lab.exec_in(
            &lab.network_ns,
            &[
                "ping",
                "-n",
                "-c",
                "1",
                "-W",
                "1",
                "-I",
                source,
                CLIENT_TUNNEL_V4,
            ],
        )
    };
    for _ in 0..3 {
        let before = tun_rx_packets(&lab);
        ping_from(PEER_TUNNEL_V4).assert_success();
        let after_allowed = tun_rx_packets(&lab);
        assert!(
            after_allowed > before,
            "the allowed ping never reached the TUN ({before} -> {after_allowed})"
        );
        let spoofed = ping_from(outside);
        assert!(
            !spoofed.succeeded(),
            "a ping from {outside} was answered:\n{spoofed}"
        );
        let after_outside = tun_rx_packets(&lab);
        assert_eq!(
            after_outside, after_allowed,
            "a packet from {outside} reached the TUN"
        );
    }
    assert!(tundns.is_running(), "tundns exited:\n{}", tundns.output());
}

#[test]
fn wg_show_lists_peer_with_recent_handshake() {
    let (lab, _tundns) = lab_with_tundns!();
    lab.assert_ping(&lab.client_ns, PEER_TUNNEL_V4);

    let iface = &lab.tundns_iface;
    let show = lab.exec_in(&lab.client_ns, &["wg", "show", iface]);
    show.assert_success();
    assert!(
        show.stdout
            .contains(&format!("peer: {}", lab.peer_public_key())),
        "{show}"
    );
    assert!(
        show.stdout.contains(&format!("endpoint: {PEER_ENDPOINT}")),
        "{show}"
    );

    let handshakes = lab.exec_in(&lab.client_ns, &["wg", "show", iface, "latest-handshakes"]);
    let handshake: u64 = handshakes
        .assert_success()
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix(lab.peer_public_key()))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("no handshake time for the peer:\n{handshakes}"));
    let age = unix_time_now().saturating_sub(handshake);
    assert!(
        handshake > 0 && age < 30,
        "handshake {age} s ago:\n{handshakes}"
    );
}

#[test]
fn wg_set_changes_the_running_tunnel() {
    let (lab, _tundns) = lab_with_tundns!();
    let (c, iface) = (&lab.client_ns, &lab.tundns_iface);
    lab.exec_in(
        c,
        &[
            "wg",
            "set",
            iface,
            "peer",
            lab.peer_public_key(),
            "persistent-keepalive",
            "7",
        ],
    )
    .assert_success();
    let keepalive = lab.exec_in(c, &["wg", "show", iface, "persistent-keepalive"]);
    assert!(
        keepalive
            .assert_success()
            .stdout
            .contains(&format!("{}\t7", lab.peer_public_key())),
        "{keepalive}"
    );
    // The change is live, not only stored: the tunnel still carries traffic.
    lab.assert_ping(c, PEER_TUNNEL_V4);
}

#[test]
fn preshared_key_listen_port_and_keepalive_take_effect() {
    let lab = lab!();
    const LISTEN_PORT: u16 = 51999;
    let (c, n) = (&lab.client_ns, &lab.network_ns);
    let psk = lab.exec_in(c, &["wg", "genpsk"]);
    let psk = psk.assert_success().stdout.trim().to_owned();
    let psk_file = lab.write_file("peer.psk", &psk);
    lab.set_client_on_peer(&["preshared-key", path_str(&psk_file)]);
    let config = lab.client_config(&ClientConfig {
        interface_lines: vec![format!("ListenPort = {LISTEN_PORT}")],
        peer_lines: vec![format!("PresharedKey = {psk}")],
        persistent_keepalive: Some(1),
        ..ClientConfig::default()
    });
    let _tundns = lab.start_tundns(&config);

    // The peer requires the key: the handshake, and so the ping, fail without it.
    lab.assert_ping(c, PEER_TUNNEL_V4);
    let show = lab.exec_in(c, &["wg", "show", &lab.tundns_iface]);
    let show = show.assert_success();
    for expected in [
        format!("listening port: {LISTEN_PORT}"),
        "preshared key: (hidden)".to_owned(),
        "persistent keepalive: every 1 second".to_owned(),
    ] {
        assert!(show.stdout.contains(&expected), "no {expected:?}:\n{show}");
    }
    // The peer sees tundns's packets come from the configured port.
    let endpoints = lab.exec_in(n, &["wg", "show", &lab.peer_iface, "endpoints"]);
    let endpoints = endpoints.assert_success();
    assert!(
        endpoints.stdout.contains(&format!(
            "{}\t192.0.2.2:{LISTEN_PORT}",
            lab.client_public_key()
        )),
        "{endpoints}"
    );

    // An idle tunnel with a 1 s keepalive still sends: the peer receives several
    // keepalives in 3.5 s.
    let before = lab.peer_transfer_counters();
    std::thread::sleep(Duration::from_millis(3500));
    let after = lab.peer_transfer_counters();
    assert!(
        after.received >= before.received + 2 * KEEPALIVE_BYTES,
        "no keepalives while idle: {before:?} -> {after:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// DNS through the virtual IPs.

#[test]
fn dns_over_udp_on_virtual_ipv4() {
    let (lab, _tundns) = lab_with_tundns!();
    assert_proxy_answers(&lab, PROXY_V4, &[]);
}

#[test]
fn dns_over_udp_on_virtual_ipv6() {
    let (lab, _tundns) = lab_with_tundns!();
    assert_proxy_answers(&lab, PROXY_V6, &[]);
}

#[test]
fn dns_over_tcp_on_virtual_ipv4() {
    let (lab, _tundns) = lab_with_tundns!();
    assert_proxy_answers(&lab, PROXY_V4, &["+tcp"]);
}

#[test]
fn dns_over_tcp_on_virtual_ipv6() {
    let (lab, _tundns) = lab_with_tundns!();
    assert_proxy_answers(&lab, PROXY_V6, &["+tcp"]);
}

/// Only this host and the `AllowFrom` networks may use the virtual IPs. N, as a LAN host
/// whose packets C forwards into the TUN, gets silence (no answer over UDP or TCP, no echo
/// reply), so it cannot reflect answers at a spoofed victim; once its network is allowed,
/// it is answered.
#[test]
fn the_virtual_ips_serve_this_host_and_allow_from_only() {
    let Some(lab) = lab_or_skip("foreign_source") else {
        return;
    };
    lab.exec_in(&lab.client_ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .assert_success();
    let route = format!("{PROXY_V4}/32");
    lab.exec_in(
        &lab.network_ns,
        &["ip", "route", "add", &route, "via", "192.0.2.2"],
    )
    .assert_success();
    let from_lan =
        |transport: &str| lab.dig(&lab.network_ns, PROXY_V4, &[transport, "+short", WWW_NAME]);

    let mut tundns = lab.start_tundns(&lab.client_config(&ClientConfig::default()));
    assert_proxy_answers(&lab, PROXY_V4, &[]);
    for transport in ["+notcp", "+tcp"] {
        let run = from_lan(transport);
        assert!(
            !run.stdout.contains(WWW_A),
            "a host C forwards was answered over {transport}:\n{run}"
        );
    }
    let ping = lab.exec_in(
        &lab.network_ns,
        &["ping", "-n", "-c", "1", "-W", "1", PROXY_V4],
    );
    assert!(
        !ping.succeeded(),
        "a host C forwards got an echo reply:\n{ping}"
    );
    tundns.stop_cleanly(Duration::from_secs(10));

    let allowed = ClientConfig {
        dns_proxy_lines: vec![
            "AllowFrom = 192.0.2.0/24".to_owned(),
            "RateLimit = 20".to_owned(),
        ],
        ..ClientConfig::default()
    };
    let _tundns = lab.start_tundns(&lab.client_config(&allowed));
    for transport in ["+notcp", "+tcp"] {
        let run = from_lan(transport);
        assert_eq!(run.stdout.trim(), WWW_A, "{run}");
    }
    assert_proxy_answers(&lab, PROXY_V4, &[]);

    // Even an allowed source is no amplifier: 200 queries at once from the LAN get about
    // RateLimit full answers, then empty truncated ones (fewer bytes than asked), while
    // this host itself is never limited.
    let burst = |ns: &str| {
        let run = lab.exec_in(ns, &["python3", "-c", &BURST.replace("SERVER", PROXY_V4)]);
        run.assert_success();
        let counts: Vec<u64> = run
            .stdout
            .split_whitespace()
            .map(|count| count.parse().unwrap())
            .collect();
        (counts[0], counts[1], counts[2], counts[3])
    };
    let (full, truncated, bytes_in, bytes_out) = burst(&lab.network_ns);
    assert!(
        full <= 30 && truncated >= 50,
        "the LAN got {full} full and {truncated} truncated answers to 200 queries"
    );
    assert!(
        bytes_out < bytes_in,
        "{bytes_out} bytes answered to {bytes_in} asked"
    );
    let (full, truncated, _, _) = burst(&lab.client_ns);
    assert!(
        full >= 190 && truncated == 0,
        "this host got {full} full and {truncated} truncated answers to 200 queries"
    );
}

/// Sends 200 UDP queries to SERVER:53 at once, then prints the full answers, the truncated
/// ones, the bytes sent and the bytes received.
const BURST: &str = r#"
import socket, struct, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
name = b"".join(bytes([len(l)]) + l.encode() for l in "www.lab.test".split(".")) + b"\0"
sent = 0
for i in range(200):
    query = struct.pack(">HHHHHH", i, 0x0100, 1, 0, 0, 0) + name + b"\0\1\0\1"
    sent += s.sendto(query, ("SERVER", 53))
full = truncated = received = 0
s.settimeout(1)
deadline = time.monotonic() + 3
try:
    while time.monotonic() < deadline:
        answer = s.recv(65535)
        received += len(answer)
        if answer[2] & 0x02:
            truncated += 1
        elif struct.unpack(">H", answer[6:8])[0] > 0:
            full += 1
except socket.timeout:
    pass
print(full, truncated, sent, received)
"#;

/// A client that trickles a byte at a time (slowloris) keeps no DNS/TCP connection past
/// `TcpIdleTimeout`; one that sends whole queries keeps its connection.
#[test]
fn dns_over_tcp_closes_a_connection_that_only_trickles_bytes() {
    let options = ClientConfig {
        dns_proxy_lines: vec!["TcpIdleTimeout = 2s".to_owned()],
        ..ClientConfig::default()
    };
    let (lab, _tundns) = lab_with_tundns!(LabOptions::default(), options);
    // Sends STEP's bytes every 0.5 s for at most 8 s; prints how long the server kept the
    // connection, or "open" if it never closed it.
    const CLIENT: &str = r#"
import socket, struct, time
query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
query += b"".join(bytes([len(label)]) + label.encode() for label in "NAME".split("."))
query += b"\x00\x00\x01\x00\x01"
framed = struct.pack(">H", len(query)) + query
step = STEP
s = socket.create_connection(("SERVER", 53), timeout=1)
start, sent = time.monotonic(), 0
try:
    while time.monotonic() - start < 8:
        s.sendall(step(framed, sent))
        sent += 1
        time.sleep(0.5)
        s.setblocking(False)
        try:
            if s.recv(65535) == b"":
                raise ConnectionResetError
        except BlockingIOError:
            pass
        s.setblocking(True)
except (ConnectionResetError, BrokenPipeError):
    print(round(time.monotonic() - start, 1))
    raise SystemExit
print("open")
"#;
    let client = |step: &str| {
        let script = CLIENT
            .replace("NAME", WWW_NAME)
            .replace("SERVER", PROXY_V4)
            .replace("STEP", step);
        let run = lab.exec_in(&lab.client_ns, &["python3", "-c", &script]);
        run.assert_success();
        run.stdout.trim().to_owned()
    };
    // One byte of a query at a time: never a whole one.
    let trickled = client(r#"lambda framed, i: framed[:1] if i == 0 else b"\x00""#);
    let closed_after: f64 = trickled
        .parse()
        .unwrap_or_else(|_| panic!("kept open: {trickled}"));
    assert!(closed_after <= 4.0, "closed after {closed_after} s");
    // A whole query each time: kept.
    assert_eq!(client("lambda framed, i: framed"), "open");
}

#[test]
fn dns_over_tcp_serves_several_queries_on_one_connection() {
    let (lab, _tundns) = lab_with_tundns!();
    let queries = [
        WWW_NAME,
        "A",
        WWW_NAME,
        "AAAA",
        WWW_NAME,
        "A",
        "+tcp",
        "+keepopen",
        "+short",
    ];
    let run = lab.dig(&lab.client_ns, PROXY_V4, &queries);
    let answers: Vec<&str> = run.assert_success().stdout.lines().collect();
    assert_eq!(answers, [WWW_A, WWW_AAAA, WWW_A], "{run}");
}

#[test]
fn big_answer_is_truncated_over_udp() {
    let (lab, _tundns) = lab_with_tundns!();
    for proxy in [PROXY_V4, PROXY_V6] {
        let udp = lab.dig(&lab.client_ns, proxy, &[BIG_TXT_NAME, "TXT", "+ignore"]);
        udp.assert_success();
        assert!(
            header_flags(&udp).contains(&"tc".to_owned()),
            "TC expected:\n{udp}"
        );
    }
}

#[test]
fn big_answer_is_complete_over_tcp() {
    let (lab, _tundns) = lab_with_tundns!();
    for proxy in [PROXY_V4, PROXY_V6] {
        let tcp = lab.dig(&lab.client_ns, proxy, &[BIG_TXT_NAME, "TXT", "+tcp"]);
        assert_eq!(answer_count(&tcp), Some(BIG_TXT_RECORDS), "{tcp}");

        // Plain dig sees TC over UDP and retries over TCP by itself.
        let plain = lab.dig(&lab.client_ns, proxy, &[BIG_TXT_NAME, "TXT"]);
        assert!(
            plain.stdout.contains("Truncated, retrying in TCP mode"),
            "{plain}"
        );
        assert_eq!(answer_count(&plain), Some(BIG_TXT_RECORDS), "{plain}");
    }
}

#[test]
fn getent_resolves_through_proxy() {
    let (lab, _tundns) = lab_with_tundns!();
    // The lab points C's resolv.conf at 10.30.30.30; glibc sends A and AAAA together.
    let getent = lab.exec_in(&lab.client_ns, &["getent", "ahosts", WWW_NAME]);
    assert_getent_has_both_families(&getent);
}

#[test]
fn dns_never_crosses_the_tunnel() {
    let lab = lab!();
    // The peer is allowed the virtual IPs' networks too, so a query the filter failed to
    // divert would be encrypted and sent to it, and show in its counters. No
    // PersistentKeepalive: the only tunnel traffic left is passive keepalives, which the
    // same-length idle window measures.
    let config = lab.client_config(&ClientConfig {
        extra_allowed_ips: vec!["10.30.30.0/24".into(), "fd30:30:30::/64".into()],
        ..ClientConfig::default()
    });
    let _tundns = lab.start_tundns(&config);
    lab.assert_ping(&lab.client_ns, PEER_TUNNEL_V4);

    let batch: String = (0..BURST_QUERIES)
        .map(|i| match i % 4 {
            0 => format!("@{PROXY_V4} {WWW_NAME} A\n"),
            1 => format!("@{PROXY_V6} {WWW_NAME} AAAA\n"),
            2 => format!("@{PROXY_V4} {WWW_NAME} AAAA +tcp\n"),
            _ => format!("@{PROXY_V6} {WWW_NAME} A +tcp\n"),
        })
        .collect();
    let batch_file = lab.write_file("burst.batch", batch);

    let before_burst = lab.peer_transfer_counters();
    let started = Instant::now();
    let burst = lab.exec_in(
        &lab.client_ns,
        &[
            "dig",
            "+tries=1",
            "+time=2",
            "+short",
            "-f",
            path_str(&batch_file),
        ],
    );
    let burst_length = started.elapsed();
    let after_burst = lab.peer_transfer_counters();
    let answered = burst
        .stdout
        .lines()
        .filter(|line| *line == WWW_A || *line == WWW_AAAA)
        .count();
    assert_eq!(
        answered, BURST_QUERIES,
        "every query in the burst must be answered:\n{burst}"
    );

    std::thread::sleep(burst_length.max(Duration::from_secs(1)));
    let after_idle = lab.peer_transfer_counters();

    let burst_bytes = after_burst.since(before_burst);
    let idle_bytes = after_idle.since(after_burst);
    assert!(
        burst_bytes <= idle_bytes + KEEPALIVE_SLACK_BYTES,
        "DNS crossed the tunnel: {burst_bytes} bytes during the burst of {BURST_QUERIES} \
         queries ({burst_length:?}), {idle_bytes} bytes in the same idle time"
    );

    // The counters are live: one ping through the tunnel moves them.
    lab.assert_ping(&lab.client_ns, PEER_TUNNEL_V4);
    let after_ping = lab.peer_transfer_counters();
    assert!(
        after_ping.received > after_idle.received,
        "{after_idle:?} -> {after_ping:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Upstream failure.

#[test]
fn failover_past_silent_first_upstream() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::default(), dead_first(DEAD_SILENT));
    assert_failover(&lab);
}

#[test]
fn failover_past_refusing_first_upstream() {
    let (lab, _tundns) = lab_with_tundns!(LabOptions::default(), dead_first(DEAD_REFUSING));
    assert_failover(&lab);
}

#[test]
fn all_upstreams_dead_gives_servfail_quickly() {
    let lab = lab!();
    let config = lab.client_config(&ClientConfig {
        upstreams: vec![DEAD_SILENT.into(), DEAD_REFUSING.into()],
        ..ClientConfig::default()
    });
    let _tundns = lab.start_tundns(&config);
    for proxy in [PROXY_V4, PROXY_V6] {
        let run = lab.dig(&lab.client_ns, proxy, &[WWW_NAME, "A", "+time=4"]);
        assert_eq!(status(&run).as_deref(), Some("SERVFAIL"), "{run}");
        // Two attempts with Timeout = 500ms, well inside dig's own 4 s.
        assert!(
            run.elapsed < Duration::from_millis(2500),
            "too slow:\n{run}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile input.

#[test]
fn garbage_over_udp_leaves_proxy_serving() {
    let (lab, mut tundns) = lab_with_tundns!();
    let files = write_payloads(&lab, "udp", &udp_garbage());
    for proxy in [PROXY_V4, PROXY_V6] {
        let mut command = vec![
            "bash",
            "-c",
            // One write per file, so one datagram per file.
            r#"exec 3<>"/dev/udp/$1/53" || exit 1; shift
               for f; do dd if="$f" bs=70000 count=1 status=none >&3 2>/dev/null; done; exit 0"#,
            "send-garbage",
            proxy,
        ];
        command.extend(files.iter().map(|file| path_str(file)));
        lab.exec_in(&lab.client_ns, &command).assert_success();
    }
    assert_still_serving(&lab, &mut tundns);
}

/// A query whose header reads fine but whose question is broken (a 70-byte label) gets
/// FORMERR with the client's ID, over UDP and on both virtual IPs.
#[test]
fn malformed_query_with_readable_header_gets_formerr() {
    let (lab, _tundns) = lab_with_tundns!();
    let script = r#"
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.settimeout(2)
query = bytes([0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 70]) + b"x" * 70 + bytes([0, 0, 1, 0, 1])
s.sendto(query, (sys.argv[1], 53))
reply = s.recv(4096)
print(f"id={reply[0]:02x}{reply[1]:02x} qr={reply[2] >> 7} rcode={reply[3] & 15}")
"#;
    for proxy in [PROXY_V4, PROXY_V6] {
        let run = lab.exec_in(&lab.client_ns, &["python3", "-c", script, proxy]);
        assert_eq!(
            run.assert_success().stdout.trim(),
            "id=beef qr=1 rcode=1",
            "{run}"
        );
    }
}

#[test]
fn garbage_over_tcp_leaves_proxy_serving() {
    let (lab, mut tundns) = lab_with_tundns!();
    let files = write_payloads(&lab, "tcp", &tcp_garbage());
    for proxy in [PROXY_V4, PROXY_V6] {
        let mut command = vec![
            "bash",
            "-c",
            // One connection per file: connect, write the file, close without reading.
            r#"proxy=$1; shift; connected=0
               for f; do
                 if exec 3<>"/dev/tcp/$proxy/53"; then
                   connected=$((connected + 1))
                   dd if="$f" bs=70000 count=1 status=none >&3 2>/dev/null
                   exec 3>&-
                 fi
               done
               echo "connected $connected""#,
            "send-garbage",
            proxy,
        ];
        command.extend(files.iter().map(|file| path_str(file)));
        let run = lab.exec_in(&lab.client_ns, &command);
        let expected = format!("connected {}", files.len());
        assert_eq!(run.assert_success().stdout.trim(), expected, "{run}");
    }
    assert_still_serving(&lab, &mut tundns);
}

#[test]
fn proxy_does_not_serve_the_tunnel() {
    let (lab, _tundns) = lab_with_tundns!();
    // The client speaks first: until its handshake the peer knows no endpoint for it.
    lab.assert_ping(&lab.client_ns, PEER_TUNNEL_V4);
    lab.assert_ping(&lab.network_ns, CLIENT_TUNNEL_V4);
    // Let the peer route the virtual IP into the tunnel: tundns must drop what arrives.
    let n = &lab.network_ns;
    let allowed = format!("{CLIENT_TUNNEL_V4}/32,{CLIENT_TUNNEL_V6}/128,{PROXY_V4}/32");
    lab.set_client_on_peer(&["allowed-ips", &allowed]);
    lab.exec_in(n, &["ip", "route", "add", PROXY_V4, "dev", &lab.peer_iface])
        .assert_success();

    let run = lab.dig(n, PROXY_V4, &[WWW_NAME, "A"]);
    assert!(
        run.stdout.contains("timed out"),
        "the proxy answered a peer:\n{run}"
    );
    let ping = lab.exec_in(n, &["ping", "-n", "-c", "1", "-W", "1", PROXY_V4]);
    assert!(
        !ping.succeeded(),
        "the virtual IP answered a peer's ping:\n{ping}"
    );
}

// ---------------------------------------------------------------------------------------------
// Other packets to the virtual IPs.

#[test]
fn icmp_echo_answered_on_both_virtual_ips() {
    let (lab, _tundns) = lab_with_tundns!();
    for proxy in [PROXY_V4, PROXY_V6] {
        let ping = lab.exec_in(
            &lab.client_ns,
            &["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", proxy],
        );
        ping.assert_success();
        assert!(ping.stdout.contains("3 received"), "{ping}");
    }
}

#[test]
fn udp_to_other_port_gets_port_unreachable() {
    let (lab, _tundns) = lab_with_tundns!();
    assert_udp_port_unreachable(&lab, PROXY_V4);
    assert_udp_port_unreachable(&lab, PROXY_V6);
}

#[test]
fn tcp_to_other_port_gets_reset() {
    let (lab, _tundns) = lab_with_tundns!();
    assert_tcp_refused(&lab, PROXY_V4);
    assert_tcp_refused(&lab, PROXY_V6);
}

// ---------------------------------------------------------------------------------------------
// Lifecycle and configuration.

#[test]
fn sigterm_exits_cleanly_within_a_second() {
    let lab = lab!();
    let c = lab.client_ns.clone();
    let rules_before = routing_rules(&lab, &c);
    let mut tundns = lab.start_default_tundns();
    lab.assert_ping(&c, PEER_TUNNEL_V4);

    tundns.send_sigterm();
    let status = tundns.wait_for_exit(Duration::from_secs(1));
    let status = status.unwrap_or_else(|| panic!("still running 1 s after SIGTERM"));
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        tundns.output()
    );

    let iface = &lab.tundns_iface;
    let link = lab.exec_in(&c, &["ip", "link", "show", iface]);
    assert!(!link.succeeded(), "the interface is still there:\n{link}");
    for family in ["-4", "-6"] {
        let routes = lab.exec_in(&c, &["ip", family, "route", "show", "table", "all"]);
        let left: Vec<&str> = routes
            .assert_success()
            .stdout
            .lines()
            .filter(|line| {
                [iface.as_str(), "10.99.0.", PROXY_V4, "fd99:", PROXY_V6]
                    .iter()
                    .any(|needle| line.contains(needle))
            })
            .collect();
        assert!(left.is_empty(), "routes left behind: {left:?}");
    }
    assert_eq!(
        routing_rules(&lab, &c),
        rules_before,
        "routing rules changed"
    );
    assert!(
        !uapi_socket(iface).exists(),
        "the UAPI socket is still there"
    );
}

#[test]
fn config_error_unknown_key_names_the_line() {
    let lab = lab!();
    let mut lines: Vec<String> = lab
        .client_config(&ClientConfig::default())
        .lines()
        .map(str::to_owned)
        .collect();
    lines.insert(3, "ListenPrt = 51820".into());
    assert_config_error_names_line(&lab, &lines.join("\n"), 4);
}

#[test]
fn config_error_unknown_section_names_the_line() {
    let lab = lab!();
    let config = lab.client_config(&ClientConfig::default());
    let line = config.lines().count() + 2;
    assert_config_error_names_line(&lab, &format!("{config}\n[Bogus]\nKey = 1\n"), line);
}

/// A failure after the interface, its addresses, its routes and WireGuard are all up (a
/// failing PostUp hook) undoes all of it and exits non-zero; PostUp ran after the routes,
/// so the hook itself proves they existed.
#[test]
fn failure_after_start_up_leaves_nothing_behind() {
    let lab = lab!();
    let c = lab.client_ns.clone();
    let marker = lab.write_file("post-up-saw-routes", "");
    let hook = format!(
        "PostUp = ip route get {PROXY_V4} > {} && false",
        path_str(&marker)
    );
    let mut lines: Vec<String> = lab
        .client_config(&ClientConfig::default())
        .lines()
        .map(str::to_owned)
        .collect();
    lines.insert(1, hook);
    let run = lab.up_fails(&lab.write_client_config(&lines.join("\n")));
    // The hook and its line: the second of the file.
    assert!(
        run.stderr.contains(".conf: PostUp on line 2 ("),
        "the error names the hook:\n{run}"
    );
    let seen = std::fs::read_to_string(&marker).unwrap_or_default();
    assert!(
        seen.contains("dev"),
        "PostUp ran with the routes in place: {seen:?}"
    );

    let link = lab.exec_in(&c, &["ip", "link", "show", &lab.tundns_iface]);
    assert!(!link.succeeded(), "the interface was left behind:\n{link}");
    let route = lab.exec_in(&c, &["ip", "route", "get", PROXY_V4]);
    assert!(!route.succeeded(), "a route was left behind:\n{route}");
    assert!(
        !uapi_socket(&lab.tundns_iface).exists(),
        "the UAPI socket was left behind"
    );
}

// ---------------------------------------------------------------------------------------------
// Shared checks.

/// Ping both ways on IPv4 and IPv6, and a TCP transfer each way (iperf3, one second).
fn assert_tunnel_carries_traffic_both_ways(lab: &Lab) {
    let (c, n) = (&lab.client_ns, &lab.network_ns);
    // C first: until the client's handshake, the peer knows no endpoint for it.
    lab.assert_ping(c, PEER_TUNNEL_V4);
    lab.assert_ping(c, PEER_TUNNEL_V6);
    lab.assert_ping(n, CLIENT_TUNNEL_V4);
    lab.assert_ping(n, CLIENT_TUNNEL_V6);

    lab.spawn_daemon_in(n, "iperf3 server", &["iperf3", "-s", "-B", PEER_TUNNEL_V4]);
    for direction in [None, Some("-R")] {
        let mut command = vec!["iperf3", "-c", PEER_TUNNEL_V4, "-t", "1", "-f", "m"];
        command.extend(direction);
        let mut last = None;
        // The server may still be starting; each attempt is bounded by iperf3's own timeouts.
        let ran = wait_until(Duration::from_secs(10), || {
            let run = lab.exec_in(c, &command);
            let ok = run.succeeded() && run.stdout.contains("receiver");
            last = Some(run);
            ok
        });
        assert!(
            ran,
            "no TCP transfer through the tunnel:\n{}",
            last.expect("ran once")
        );
    }
}

/// tundns, started with the default config, answers www.lab.test at `proxy` over
/// `transport`, and passes on unbound's NXDOMAIN for a name outside the lab.
fn assert_proxy_answers(lab: &Lab, proxy: &str, transport: &[&str]) {
    for (record, expected) in [("A", WWW_A), ("AAAA", WWW_AAAA)] {
        let mut args = vec![WWW_NAME, record, "+short"];
        args.extend_from_slice(transport);
        let run = lab.dig(&lab.client_ns, proxy, &args);
        assert_eq!(run.assert_success().stdout.trim(), expected, "{run}");
    }
    let outside = lab.dig(
        &lab.client_ns,
        proxy,
        &[&["example.com", "A"][..], transport].concat(),
    );
    assert_eq!(status(&outside).as_deref(), Some("NXDOMAIN"), "{outside}");
}

/// The default config with `dead` as the first upstream, before unbound.
fn dead_first(dead: &str) -> ClientConfig {
    ClientConfig {
        upstreams: vec![dead.into(), UNBOUND_V4.into()],
        ..ClientConfig::default()
    }
}

/// tundns, started with [`dead_first`], answers on both virtual IPs from the second upstream.
fn assert_failover(lab: &Lab) {
    for proxy in [PROXY_V4, PROXY_V6] {
        let run = lab.dig(&lab.client_ns, proxy, &[WWW_NAME, "A", "+short", "+time=3"]);
        assert_eq!(run.assert_success().stdout.trim(), WWW_A, "{run}");
    }
}

fn assert_still_serving(lab: &Lab, tundns: &mut Daemon) {
    for proxy in [PROXY_V4, PROXY_V6] {
        for transport in ["+notcp", "+tcp"] {
            let run = lab.dig(&lab.client_ns, proxy, &[WWW_NAME, "A", "+short", transport]);
            assert_eq!(run.assert_success().stdout.trim(), WWW_A, "{run}");
        }
    }
    assert!(tundns.is_running(), "tundns died:\n{}", tundns.output());
}

/// dig sees the ICMP port unreachable as "connection refused" on its connected UDP socket.
fn assert_udp_port_unreachable(lab: &Lab, target: &str) {
    let run = lab.dig(&lab.client_ns, target, &["-p", "9999", WWW_NAME]);
    assert!(
        run.stdout.contains("connection refused"),
        "expected port unreachable:\n{run}"
    );
}

/// A RST makes connect() fail at once with "Connection refused" (a drop would time out).
fn assert_tcp_refused(lab: &Lab, target: &str) {
    let script = format!("exec 3<>/dev/tcp/{target}/9999");
    let run = lab.exec_in_with_timeout(
        &lab.client_ns,
        &["bash", "-c", &script],
        Duration::from_secs(5),
    );
    assert!(
        !run.timed_out() && run.stderr.contains("Connection refused"),
        "expected a RST from {target}:9999:\n{run}"
    );
}

fn assert_getent_has_both_families(getent: &Run) {
    getent.assert_success();
    for address in [WWW_A, WWW_AAAA] {
        assert!(
            getent
                .stdout
                .lines()
                .any(|line| line.starts_with(&format!("{address} "))),
            "{address} missing:\n{getent}"
        );
    }
}

fn assert_config_error_names_line(lab: &Lab, config: &str, line: usize) {
    let path = lab.write_client_config(config);
    let run = lab.up_fails(&path);
    let location = format!("{}:{line}:", path.display());
    assert!(
        run.stderr.contains(&location),
        "stderr must name {location}:\n{run}"
    );
    let link = lab.exec_in(&lab.client_ns, &["ip", "link", "show", &lab.tundns_iface]);
    assert!(!link.succeeded(), "an interface was created:\n{link}");
    assert!(
        !uapi_socket(&lab.tundns_iface).exists(),
        "a UAPI socket was created"
    );
}

fn routing_rules(lab: &Lab, ns: &str) -> String {
    let v4 = lab.exec_in(ns, &["ip", "-4", "rule", "show"]);
    let v6 = lab.exec_in(ns, &["ip", "-6", "rule", "show"]);
    format!(
        "{}{}",
        v4.assert_success().stdout,
        v6.assert_success().stdout
    )
}

// ---------------------------------------------------------------------------------------------
// Garbage.

fn write_payloads(lab: &Lab, kind: &str, payloads: &[Vec<u8>]) -> Vec<std::path::PathBuf> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| lab.write_file(&format!("garbage-{kind}-{i}.bin"), payload))
        .collect()
}

fn www_question() -> Vec<u8> {
    dns::question(WWW_NAME, Rtype::A)
}

/// Malformed DNS messages: each is dropped or answered FORMERR, never a crash or a hang.
fn malformed_messages() -> Vec<Vec<u8>> {
    let query = 0x0100; // RD
    let one_question = [1, 0, 0, 0];
    let with = |mut head: Vec<u8>, tail: &[u8]| {
        head.extend_from_slice(tail);
        head
    };
    vec![
        vec![0x12],
        dns::header(1, query, one_question)[..11].to_vec(),
        dns::header(2, query, one_question),
        // The name is a pointer to itself.
        with(dns::header(3, query, one_question), &[0xc0, 12, 0, 1, 0, 1]),
        // Two pointers pointing at each other.
        with(
            dns::header(4, query, [2, 0, 0, 0]),
            &[0xc0, 18, 0, 1, 0, 1, 0xc0, 12, 0, 1, 0, 1],
        ),
        // A pointer past the end.
        with(
            dns::header(5, query, one_question),
            &[0xc0, 0xff, 0, 1, 0, 1],
        ),
        // A 63-byte label that the message cuts short.
        with(dns::header(6, query, one_question), &[63, b'a', b'b']),
        // A reserved label type (0x40).
        with(
            dns::header(7, query, one_question),
            &[0x41, b'a', 0, 0, 1, 0, 1],
        ),
        // Counts far beyond the message.
        with(
            dns::header(8, query, [65535, 65535, 65535, 65535]),
            &www_question(),
        ),
        // A response, not a query.
        with(dns::header(9, 0x8180, one_question), &www_question()),
        // Opcode UPDATE.
        with(dns::header(10, 0x2800, one_question), &www_question()),
        // An OPT record whose RDLENGTH runs past the end.
        with(
            dns::header(11, query, [1, 0, 0, 1]),
            &[
                &www_question()[..],
                &[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0xff, 0xff, 1, 2],
            ]
            .concat(),
        ),
        // No question at all.
        dns::header(12, query, [0, 0, 0, 0]),
    ]
}

/// Deterministic filler (xorshift), so a failure is reproducible.
fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn udp_garbage() -> Vec<Vec<u8>> {
    let mut payloads = malformed_messages();
    payloads.extend((0..32u64).map(|i| pseudo_random_bytes(i + 1, 1 + (i as usize * 47) % 1500)));
    // Larger than the MTU (IP fragments on the TUN) and close to the UDP maximum.
    payloads.push(pseudo_random_bytes(101, 4000));
    payloads.push(pseudo_random_bytes(102, 65000));
    let mut oversized_query = dns::header(13, 0x0100, [1, 0, 0, 0]);
    oversized_query.extend(www_question());
    oversized_query.resize(9000, 0);
    payloads.push(oversized_query);
    payloads
}

fn tcp_garbage() -> Vec<Vec<u8>> {
    let framed = |message: &[u8]| {
        let mut frame = (message.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(message);
        frame
    };
    let mut streams: Vec<Vec<u8>> = malformed_messages().iter().map(|m| framed(m)).collect();
    streams.extend([
        // A zero-length frame, then a valid-looking one.
        [
            &[0u8, 0][..],
            &framed(&dns::header(20, 0x0100, [0, 0, 0, 0])),
        ]
        .concat(),
        // A frame announcing 65535 bytes that never come.
        [&[0xffu8, 0xff][..], &pseudo_random_bytes(21, 100)].concat(),
        // Half a length prefix.
        vec![0x00],
        // Unframed noise.
        pseudo_random_bytes(22, 3000),
        // Many small frames in one write.
        (0..50)
            .flat_map(|i| framed(&pseudo_random_bytes(30 + i, 20)))
            .collect(),
    ]);
    streams
}

/// A TUN of the same name held by another program: `up` fails, names the program and its
/// pid, and leaves that TUN alone.
#[test]
fn a_busy_interface_names_the_process_holding_it() {
    let lab = lab!();
    let holder_script = format!(
        "import fcntl, os, struct, time\n\
         fd = os.open('/dev/net/tun', os.O_RDWR)\n\
         fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', b'{}', 0x0001 | 0x1000))\n\
         print('holding', flush=True)\n\
         time.sleep(30)\n",
        lab.tundns_iface
    );
    let holder = lab.spawn_in(
        &lab.client_ns,
        "tun holder",
        &["python3", "-c", &holder_script],
    );
    assert!(
        wait_until(Duration::from_secs(5), || holder
            .output()
            .contains("holding")),
        "{}",
        holder.output()
    );
    let config = lab.write_client_config(&lab.client_config(&ClientConfig::default()));
    let refused = lab.up_fails(&config);
    let named = format!("held by python3 (pid {})", holder.pid());
    assert!(refused.stderr.contains(&named), "no {named:?}:\n{refused}");
    lab.exec_in(&lab.client_ns, &["ip", "link", "show", &lab.tundns_iface])
        .assert_success();
}

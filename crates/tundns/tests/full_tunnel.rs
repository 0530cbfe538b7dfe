//! End-to-end tests of full tunnels (`AllowedIPs = 0.0.0.0/0, ::/0`, issue 4 section 2):
//! tundns in C with everything routed to N's wireguard-go, where C reaches N only through
//! default routes (see `common/full_tunnel_lab.rs`). Without wg-quick's policy routing and
//! the mark on WireGuard's and the upstreams' sockets, the handshake and every upstream
//! query would enter the tunnel: captures on the peer's WireGuard interface tell.
//!
//! Run as root: `TUNDNS_E2E=1 cargo test -p tundns --test full_tunnel`. Without root or the
//! lab tools (here also tcpdump, nft, openssl and kdig) the tests print "skipped: ..." and pass,
//! unless `TUNDNS_E2E=1`.

mod common;

use common::full_tunnel_lab::*;
use common::resolver_lab::TUNNEL_RESOLVER_V4;
use common::*;
use std::time::Duration;

/// Query rounds in the burst; each round asks every upstream group once.
const BURST_ROUNDS: usize = 20;

/// Names of `lab/unbound-zone.conf`, each routed to a group of another transport.
const UDP_NAME: &str = "host0.lab.test";
const TCP_NAME: &str = "host1.lab.test";
const DOT_NAME: &str = "host2.lab.test";
const DOH_NAME: &str = "host3.lab.test";
const UDP_V6_NAME: &str = "host4.lab.test";

const SRC_VALID_MARK: &str = "net.ipv4.conf.all.src_valid_mark";

/// The full lab: the outside unbound with DoT and DoH, the tunnel-only resolver, C behind
/// default routes. `None` when the lab cannot run here (see `lab_or_skip`).
fn full_tunnel_lab(test: &str) -> Option<Lab> {
    let missing: Vec<&str> = ["tcpdump", "nft"]
        .into_iter()
        .filter(|tool| !on_path(tool))
        .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var("TUNDNS_E2E").as_deref() != Ok("1"),
            "TUNDNS_E2E=1 but tools are missing: {missing:?}"
        );
        eprintln!("skipped: {test}: missing tools: {missing:?}");
        return None;
    }
    let lab = lab_or_skip_with(
        test,
        LabOptions {
            encrypted_upstream: true,
            tunnel_resolver: true,
            ..LabOptions::default()
        },
    )?;
    lab.reach_network_only_by_default_routes();
    // Start from the kernel's default, so that restoring it is seen.
    lab.exec_in(
        &lab.client_ns,
        &["sysctl", "-qw", &format!("{SRC_VALID_MARK}=0")],
    )
    .assert_success();
    Some(lab)
}

/// One upstream group per transport, no cache (every query goes upstream), and a
/// `ThroughTunnel` group for corp.internal at the tunnel-only resolver.
fn full_tunnel_config(lab: &Lab) -> String {
    let route = |domain: &str, upstream: String, through_tunnel| DnsRoute {
        domains: vec![domain.into()],
        upstreams: vec![upstream],
        through_tunnel,
    };
    lab.full_tunnel_client_config(&ClientConfig {
        upstreams: vec![UNBOUND_V4.into()],
        timeout: "2s".into(),
        dns_proxy_lines: vec![
            "Cache = off".into(),
            format!("CAFile = {}", path_str(&lab.ca_file())),
        ],
        routes: vec![
            route(TCP_NAME, format!("tcp://{UNBOUND_V4}"), false),
            route(DOT_NAME, lab.dot_upstream(), false),
            route(DOH_NAME, lab.doh_upstream(), false),
            route(UDP_V6_NAME, format!("[{UNBOUND_V6}]:53"), false),
            route("corp.internal", TUNNEL_RESOLVER_V4.into(), true),
        ],
        ..ClientConfig::default()
    })
}

/// The whole contract: traffic to N's own addresses goes through the tunnel, upstream DNS
/// over UDP, TCP, DoT and DoH (v4 and v6) never does, the `ThroughTunnel` group does, and
/// SIGTERM takes every rule, route and sysctl change back.
#[test]
fn full_tunnel_keeps_upstream_dns_outside() {
    let lab = lab!(with full_tunnel_lab);
    let c = lab.client_ns.clone();
    let rules_before = lab.policy_rules(&c);
    assert!(lab.routes_in_table(&c, FULL_TUNNEL_TABLE).is_empty());

    let mut tundns = lab.start_tundns(&full_tunnel_config(&lab));
    assert_policy_routing_installed(&lab, &rules_before);

    // Everything else crosses the tunnel: ping and a TCP transfer to N's own addresses.
    let dns_capture = lab.capture_on_peer("port 53 or port 853 or port 443");
    let other_capture = lab.capture_on_peer("icmp or icmp6 or tcp port 5201");
    for target in [
        PEER_TUNNEL_V4,
        PEER_TUNNEL_V6,
        BEHIND_PEER_V4,
        BEHIND_PEER_V6,
    ] {
        lab.assert_ping(&c, target);
    }
    assert_tcp_transfer(&lab, BEHIND_PEER_V4);

    let burst = burst_through_every_group(&lab);
    let other = other_capture.finish();
    for target in [BEHIND_PEER_V4, BEHIND_PEER_V6] {
        assert!(
            other.iter().any(|line| line.contains(target)),
            "no traffic to {target} through the tunnel:\n{}",
            other.join("\n")
        );
    }
    assert!(
        other.iter().any(|line| line.contains(".5201")),
        "the TCP transfer did not cross the tunnel:\n{}",
        other.join("\n")
    );

    // The one exception, last in the same capture (which proves it live): the
    // ThroughTunnel group goes through WireGuard, unmarked.
    let corp = lab.dig(&c, PROXY_V4, &["db.corp.internal", "A", "+short"]);
    assert_eq!(corp.stdout.trim(), "10.99.0.80", "{corp}");
    assert!(lab.tunnel_resolver_queries("db.corp.internal", Some("A")) >= 1);
    let dns = dns_capture.finish();
    let tunnel_resolver = format!("{TUNNEL_RESOLVER_V4}.53");
    let leaked: Vec<&String> = dns
        .iter()
        .filter(|line| !line.contains(&tunnel_resolver))
        .collect();
    assert!(
        leaked.is_empty(),
        "upstream DNS crossed the tunnel ({} packets):\n{leaked:#?}\nburst:\n{burst}",
        leaked.len()
    );
    assert!(
        dns.iter().any(|line| line.contains(&tunnel_resolver)),
        "the ThroughTunnel query did not cross the tunnel:\n{}",
        dns.join("\n")
    );

    // The control: a socket without the mark (dig's own, straight to unbound) does go
    // through the tunnel, and the capture sees it. Marks, not routes, kept the proxy out.
    let control = lab.capture_on_peer("port 53");
    let direct = lab.dig(&c, UNBOUND_V4, &[WWW_NAME, "A", "+short"]);
    assert_eq!(direct.stdout.trim(), WWW_A, "{direct}");
    let control = control.finish();
    assert!(
        control
            .iter()
            .any(|line| line.contains(&format!("{UNBOUND_V4}.53"))),
        "an unmarked query to {UNBOUND_V4} did not show in the capture:\n{}",
        control.join("\n")
    );
    let route = |extra: &[&str]| {
        let mut command = vec!["ip", "route", "get", UNBOUND_V4];
        command.extend_from_slice(extra);
        let run = lab.exec_in(&c, &command);
        run.assert_success();
        run.stdout
    };
    let unmarked = route(&[]);
    assert!(
        unmarked.contains(&format!("dev {}", lab.tundns_iface)),
        "{unmarked}"
    );
    let marked = route(&["mark", "0xca6c"]);
    assert!(
        marked.contains("via 192.0.2.1") && !marked.contains(&lab.tundns_iface),
        "{marked}"
    );

    tundns.stop_cleanly(Duration::from_secs(2));
    assert_policy_routing_gone(&lab, &rules_before);
}

/// A failure after the policy rules exist (a failing PostUp hook, which sees them) undoes
/// them, the tunnel's table and the sysctl.
#[test]
fn full_tunnel_start_up_failure_leaves_no_rules() {
    let lab = lab!(with full_tunnel_lab);
    let c = lab.client_ns.clone();
    let rules_before = lab.policy_rules(&c);
    let marker = lab.write_file("post-up-saw-rules", "");
    let hook = format!("PostUp = ip rule show > {} && false", path_str(&marker));
    let config = full_tunnel_config(&lab).replacen("\n", &format!("\n{hook}\n"), 1);
    let run = lab.up_fails(&lab.write_client_config(&config));
    let seen = std::fs::read_to_string(&marker).unwrap_or_default();
    assert!(
        seen.contains("suppress_prefixlength 0") && seen.contains(FULL_TUNNEL_TABLE),
        "PostUp ran with the rules in place: {seen:?}\n{run}"
    );
    assert_policy_routing_gone(&lab, &rules_before);
}

/// No process cleans up after a SIGKILL: the killed run's rules and sysctl stay. The next
/// `up` of the interface takes them back (its state file says which) before adding its own,
/// so there is one pair of rules per family again, and SIGTERM then leaves none.
#[test]
fn full_tunnel_after_sigkill_next_up_takes_back_the_rules() {
    let lab = lab!(with full_tunnel_lab);
    let c = lab.client_ns.clone();
    let rules_before = lab.policy_rules(&c);
    let state = lab
        .run_dir()
        .join(format!("{}.policy-state", lab.tundns_iface));
    let config = full_tunnel_config(&lab);

    let mut killed = lab.start_tundns(&config);
    assert_policy_routing_installed(&lab, &rules_before);
    assert!(state.exists(), "no {}", state.display());
    killed.kill_without_cleanup();
    let left: Vec<String> = lab
        .policy_rules(&c)
        .into_iter()
        .filter(|rule| !rules_before.contains(rule))
        .collect();
    assert_eq!(left.len(), 4, "a SIGKILLed run leaves its rules: {left:#?}");
    assert!(lab.firewall_table("ip").is_some() && lab.firewall_table("ip6").is_some());
    assert_eq!(lab.sysctl(&c, SRC_VALID_MARK), "1");

    let mut tundns = lab.start_tundns(&config);
    assert_policy_routing_installed(&lab, &rules_before);
    for step in [
        "[#] ip -4 rule add priority ".to_string(),
        "not fwmark 0xca6c table 51820".to_string(),
        "[#] ip -6 route add ::/0 dev".to_string(),
        "[#] sysctl -q net.ipv4.conf.all.src_valid_mark=1".to_string(),
        format!("[#] nft -f (table ip tundns-{})", lab.tundns_iface),
    ] {
        assert!(
            tundns.output().contains(&step),
            "no {step:?}:\n{}",
            tundns.output()
        );
    }
    assert!(
        tundns.output().contains("took back the policy rules"),
        "{}",
        tundns.output()
    );
    tundns.stop_cleanly(Duration::from_secs(2));
    assert_policy_routing_gone(&lab, &rules_before);
    assert!(!state.exists(), "{} left behind", state.display());

    // A state file tundns did not write is neither acted on nor overwritten: `up` refuses.
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        use std::os::unix::fs::PermissionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&state)
            .unwrap();
        std::io::Write::write_all(&mut file, b"not json").unwrap();
        let refused = lab.up_fails(&lab.write_client_config(&config));
        assert!(
            refused
                .stderr
                .contains("not a policy state file tundns wrote"),
            "{refused}"
        );
        // Nor is one others could have written.
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = lab.up_fails(&lab.write_client_config(&config));
        assert!(refused.stderr.contains("mode 644"), "{refused}");
    }
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "not json");
    assert_policy_routing_gone(&lab, &rules_before);
    std::fs::remove_file(&state).unwrap();
}

/// `tundns reset` takes back what a SIGKILLed run left, as the next `up` would, without
/// bringing the tunnel up; a second reset finds nothing to do.
#[test]
fn full_tunnel_after_sigkill_reset_takes_back_the_rules() {
    let lab = lab!(with full_tunnel_lab);
    let c = lab.client_ns.clone();
    let rules_before = lab.policy_rules(&c);
    let mut killed = lab.start_tundns(&full_tunnel_config(&lab));
    assert_policy_routing_installed(&lab, &rules_before);
    killed.kill_without_cleanup();

    let reset = |expected: &str| {
        let run = lab.exec_in(&c, &[tundns_bin(), "reset", &lab.tundns_iface]);
        run.assert_success();
        assert!(run.stdout.contains(expected), "no {expected:?}:\n{run}");
    };
    reset("took back policy rules: 4, nftables tables: 2, sysctl values: 1");
    assert_policy_routing_gone(&lab, &rules_before);
    reset("no policy routing to undo");
}

/// As wg-quick's nftables rules do: a neighbour that routes the tunnel's addresses to this
/// host cannot reach them. With the drop rules flushed, the same pings are answered
/// (through the tunnel), so the rules are what stopped them. A stale table of the same
/// name, whose rule would drop the tunnel's own replies, is replaced at `up`.
#[test]
fn full_tunnel_drops_packets_for_the_tunnel_addresses_from_outside() {
    let lab = lab!(with full_tunnel_lab);
    let (c, n) = (lab.client_ns.clone(), lab.network_ns.clone());
    let table = format!("tundns-{}", lab.tundns_iface);
    let stale = lab.write_file(
        "stale.nft",
        format!(
            "table ip {table} {{\n  chain preraw {{\n    \
             type filter hook prerouting priority raw; policy accept;\n    \
             iif != 99 ip daddr {CLIENT_TUNNEL_V4} drop\n  }}\n}}\n"
        ),
    );
    lab.nft(&["-f", path_str(&stale)]);

    let _tundns = lab.start_tundns(&full_tunnel_config(&lab));
    // The stale rule would drop these replies, which come in on the TUN.
    lab.assert_ping(&c, PEER_TUNNEL_V4);
    let (_, veth_n) = lab.veths();
    for (family, address, via) in [
        ("ip", CLIENT_TUNNEL_V4, "192.0.2.2"),
        ("ip6", CLIENT_TUNNEL_V6, "2001:db8::2"),
    ] {
        let host_route = if family == "ip" { "/32" } else { "/128" };
        let target = format!("{address}{host_route}");
        lab.exec_in(
            &n,
            &["ip", "route", "add", &target, "via", via, "dev", &veth_n],
        )
        .assert_success();
        let spoof = || {
            lab.exec_in(
                &n,
                &["ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", address],
            )
        };

        let dropped = spoof();
        assert!(
            !dropped.succeeded(),
            "the tunnel's address answered a neighbour:\n{dropped}"
        );
        let listed = lab.firewall_table(family).expect("the table");
        assert_eq!(
            listed.matches(" drop").count(),
            2,
            "the stale rule was not replaced (ours are two):\n{listed}"
        );
        let counted: Option<u64> = listed
            .split_once("counter packets ")
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok());
        assert!(
            counted.is_some_and(|packets| packets >= 2),
            "the drop rule did not count the two pings:\n{listed}"
        );

        lab.nft(&["flush", "chain", family, &table, "preraw"]);
        let answered = spoof();
        assert!(
            answered.succeeded(),
            "the control ping was not answered:\n{answered}"
        );
    }
}

/// The reverse of wg-quick's rule: the peer cannot reach this host's other addresses
/// through the tunnel (the sockets meant to bypass it: WireGuard's, the upstreams'), while
/// its packets for the tunnel's own address, and the virtual IPs' answers to any address
/// of this host, pass. With the rule flushed the peer's pings are answered.
#[test]
fn full_tunnel_drops_the_peers_packets_for_the_hosts_other_addresses() {
    let lab = lab!(with full_tunnel_lab);
    let (c, n) = (lab.client_ns.clone(), lab.network_ns.clone());
    let (veth_c, _) = lab.veths();
    // An address of C's own outside the tunnel, as a LAN address would be.
    let other = "198.18.0.77";
    lab.exec_in(
        &c,
        &["ip", "addr", "add", &format!("{other}/32"), "dev", &veth_c],
    )
    .assert_success();
    let _tundns = lab.start_tundns(&full_tunnel_config(&lab));
    // The peer routes that address into its tunnel, as a hostile one would.
    lab.exec_in(
        &n,
        &[
            "wg",
            "set",
            &lab.peer_iface,
            "peer",
            lab.client_public_key(),
            "allowed-ips",
            &format!("10.99.0.2/32,fd99::2/128,{other}/32"),
        ],
    )
    .assert_success();
    lab.exec_in(
        &n,
        &[
            "ip",
            "route",
            "add",
            &format!("{other}/32"),
            "dev",
            &lab.peer_iface,
        ],
    )
    .assert_success();
    let ping = |target: &str| {
        lab.exec_in(
            &n,
            &["ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", target],
        )
    };

    let dropped = ping(other);
    assert!(!dropped.succeeded(), "the peer reached {other}:\n{dropped}");
    ping(CLIENT_TUNNEL_V4).assert_success();
    let listed = lab.firewall_table("ip").expect("the table");
    let counted: Option<u64> = listed
        .lines()
        .find(|rule| rule.contains("fib daddr . iif type != local"))
        .and_then(|rule| rule.split_once("counter packets "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok());
    assert!(
        counted.is_some_and(|packets| packets >= 2),
        "the rule did not count the peer's pings:\n{listed}"
    );
    // A client on that address still gets the virtual IP's answers out of the TUN.
    let dig = lab.dig(&c, PROXY_V4, &["-b", other, WWW_NAME, "A", "+short"]);
    assert_eq!(dig.stdout.trim(), WWW_A, "{dig}");

    let table = format!("tundns-{}", lab.tundns_iface);
    lab.nft(&["flush", "chain", "ip", &table, "preraw"]);
    let answered = ping(other);
    assert!(
        answered.succeeded(),
        "the control ping was not answered:\n{answered}"
    );
}

/// Without nft the full tunnel still works, DNS included, and says what it lacks.
#[test]
fn full_tunnel_without_nft_runs_and_warns() {
    let lab = lab!(with full_tunnel_lab);
    let c = lab.client_ns.clone();
    let rules_before = lab.policy_rules(&c);
    const PATH_WITHOUT_NFT: &str = "/usr/bin:/bin";
    let nft = lab.exec_in(
        &c,
        &[
            "env",
            &format!("PATH={PATH_WITHOUT_NFT}"),
            "sh",
            "-c",
            "command -v nft",
        ],
    );
    assert!(!nft.succeeded(), "nft is on {PATH_WITHOUT_NFT}:\n{nft}");
    let wrapper = lab.write_file(
        "tundns-without-nft",
        format!(
            "#!/bin/sh\nPATH={PATH_WITHOUT_NFT} exec {} up \"$1\"\n",
            tundns_bin()
        ),
    );
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    let mut tundns = lab.start_tundns_with(path_str(&wrapper), &full_tunnel_config(&lab));
    lab.assert_ping(&c, PEER_TUNNEL_V4);
    let answer = lab.dig(&c, PROXY_V4, &[UDP_NAME, "A", "+short"]);
    assert!(
        answer
            .stdout
            .lines()
            .any(|line| line.parse::<std::net::Ipv4Addr>().is_ok()),
        "{answer}"
    );
    assert!(
        tundns.output().contains("nft is not installed"),
        "{}",
        tundns.output()
    );
    assert!(lab.firewall_table("ip").is_none() && lab.firewall_table("ip6").is_none());
    tundns.stop_cleanly(Duration::from_secs(2));
    assert_policy_routing_gone(&lab, &rules_before);
}

/// With strict reverse-path filtering, the answers of upstreams reached through a gateway
/// come in: their queries left marked, and the mark, kept in conntrack, is put back on the
/// answers. Without the mark rules, the same query goes unanswered.
#[test]
fn full_tunnel_works_with_strict_reverse_path_filtering() {
    let lab = lab!(with full_tunnel_lab);
    let c = lab.client_ns.clone();
    let (veth_c, _) = lab.veths();
    for key in ["all", "default", veth_c.as_str()] {
        let setting = format!("net.ipv4.conf.{key}.rp_filter=1");
        lab.exec_in(&c, &["sysctl", "-qw", &setting])
            .assert_success();
    }
    let mut tundns = lab.start_tundns(&full_tunnel_config(&lab));
    lab.assert_ping(&c, PEER_TUNNEL_V4);
    let ask = |name: &str| {
        let run = lab.dig(&c, PROXY_V4, &[name, "A", "+short", "+tries=1", "+time=3"]);
        let answered = run
            .stdout
            .lines()
            .any(|line| line.parse::<std::net::Ipv4Addr>().is_ok());
        (answered, run)
    };
    for name in [UDP_NAME, TCP_NAME, DOT_NAME, DOH_NAME] {
        let (answered, answer) = ask(name);
        assert!(
            answered,
            "{name} unanswered with strict rp_filter:\n{answer}\n{}",
            tundns.output()
        );
    }
    assert!(
        !tundns.output().contains("rp_filter"),
        "a warning about rp_filter, with the table in place:\n{}",
        tundns.output()
    );

    lab.nft(&[
        "flush",
        "chain",
        "ip",
        &format!("tundns-{}", lab.tundns_iface),
        "premangle",
    ]);
    let (answered, run) = ask(UDP_NAME);
    assert!(!answered, "answered without the mark put back:\n{run}");
    tundns.stop_cleanly(Duration::from_secs(2));
}

/// A default route in the main table would carry WireGuard's own packets into the tunnel:
/// refused with a config error that says what to do instead. `Table = auto` is accepted.
#[test]
fn default_route_in_table_main_is_refused() {
    let lab = lab!();
    let full = lab.full_tunnel_client_config(&ClientConfig::default());
    let check = |config: &str| {
        let path = lab.write_client_config(config);
        lab.exec_in(&lab.client_ns, &[tundns_bin(), "check", path_str(&path)])
    };
    check(&full).assert_success();
    let main = full.replacen("\n", "\nTable = main\n", 1);
    let refused = check(&main);
    assert_eq!(
        refused.status.and_then(|status| status.code()),
        Some(2),
        "{refused}"
    );
    assert!(
        refused.stderr.contains("0.0.0.0/0") && refused.stderr.contains("Table = auto"),
        "{refused}"
    );
    // The line of `Table = main`: the second of the file.
    assert!(
        refused.stderr.contains(".conf:2: Table = main"),
        "{refused}"
    );
}

/// Rules as wg-quick adds them, in both families, the table's default routes and the sysctl.
fn assert_policy_routing_installed(lab: &Lab, rules_before: &[String]) {
    let c = &lab.client_ns;
    let added: Vec<String> = lab
        .policy_rules(c)
        .into_iter()
        .filter(|rule| !rules_before.contains(rule))
        .collect();
    for family in ["-4", "-6"] {
        for wanted in [
            format!("not from all fwmark 0xca6c lookup {FULL_TUNNEL_TABLE}"),
            "from all lookup main suppress_prefixlength 0".to_owned(),
        ] {
            assert!(
                added
                    .iter()
                    .any(|rule| rule.starts_with(family) && rule.contains(&wanted)),
                "missing `ip {family} rule` {wanted:?}; added: {added:#?}"
            );
        }
    }
    assert_eq!(added.len(), 4, "{added:#?}");
    let table = lab.routes_in_table(c, FULL_TUNNEL_TABLE);
    for family in ["-4", "-6"] {
        let default = format!("{family} default dev {}", lab.tundns_iface);
        assert!(
            table.iter().any(|route| route.starts_with(&default)),
            "no {default:?} in table {FULL_TUNNEL_TABLE}: {table:#?}"
        );
    }
    assert_eq!(lab.sysctl(c, SRC_VALID_MARK), "1");
    for family in ["ip", "ip6"] {
        let table = lab
            .firewall_table(family)
            .unwrap_or_else(|| panic!("no nftables table in family {family}"));
        let (address_v4, address_v6) = (CLIENT_TUNNEL_V4, CLIENT_TUNNEL_V6);
        let protected = if family == "ip" {
            address_v4
        } else {
            address_v6
        };
        for wanted in [
            "meta l4proto { tcp, udp } meta mark 0x0000ca6c ct mark set meta mark",
            "meta l4proto { tcp, udp } ct mark 0x0000ca6c meta mark set ct mark",
            protected,
        ] {
            assert!(table.contains(wanted), "no {wanted:?} in\n{table}");
        }
        assert_eq!(
            table.matches("fib saddr type != local counter").count(),
            1,
            "one drop rule:\n{table}"
        );
    }
}

fn assert_policy_routing_gone(lab: &Lab, rules_before: &[String]) {
    let c = &lab.client_ns;
    assert_eq!(
        lab.policy_rules(c),
        rules_before,
        "policy rules left behind"
    );
    let table = lab.routes_in_table(c, FULL_TUNNEL_TABLE);
    assert!(
        table.is_empty(),
        "routes left in table {FULL_TUNNEL_TABLE}: {table:#?}"
    );
    assert_eq!(
        lab.sysctl(c, SRC_VALID_MARK),
        "0",
        "{SRC_VALID_MARK} not restored"
    );
    for family in ["ip", "ip6"] {
        let left = lab.firewall_table(family);
        assert!(left.is_none(), "nftables table left behind: {left:?}");
    }
    let link = lab.exec_in(c, &["ip", "link", "show", &lab.tundns_iface]);
    assert!(!link.succeeded(), "the interface is still there:\n{link}");
    // Back to the lab's own routes: N answers directly.
    lab.assert_ping(c, UNBOUND_V4);
}

/// A one-second iperf3 transfer from C to `target` in N.
fn assert_tcp_transfer(lab: &Lab, target: &str) {
    lab.spawn_daemon_in(
        &lab.network_ns,
        "iperf3 behind the peer",
        &["iperf3", "-s", "-B", target],
    );
    let mut last = None;
    // The server may still be starting; each attempt is bounded by iperf3's own timeouts.
    let ran = wait_until(Duration::from_secs(10), || {
        let run = lab.exec_in(&lab.client_ns, &["iperf3", "-c", target, "-t", "1"]);
        let ok = run.succeeded() && run.stdout.contains("receiver");
        last = Some(run);
        ok
    });
    assert!(
        ran,
        "no TCP transfer to {target}:\n{}",
        last.expect("ran once")
    );
}

/// Every group, both virtual IPs, UDP and TCP from the client, `BURST_ROUNDS` times; checks
/// every answer and returns dig's output.
fn burst_through_every_group(lab: &Lab) -> String {
    let names = [
        (UDP_NAME, "203.0.113.100"),
        (TCP_NAME, "203.0.113.101"),
        (DOT_NAME, "203.0.113.102"),
        (DOH_NAME, "203.0.113.103"),
        (UDP_V6_NAME, "203.0.113.104"),
    ];
    let mut batch = String::new();
    let mut expected = Vec::new();
    for round in 0..BURST_ROUNDS {
        let (proxy, transport) = match round % 4 {
            0 => (PROXY_V4, ""),
            1 => (PROXY_V6, ""),
            2 => (PROXY_V4, " +tcp"),
            _ => (PROXY_V6, " +tcp"),
        };
        for (name, address) in names {
            batch.push_str(&format!("@{proxy} {name} A{transport}\n"));
            expected.push(address);
        }
        // Truncated over UDP upstream: the proxy retries over TCP.
        batch.push_str(&format!("@{proxy} {BIG_TXT_NAME} TXT{transport}\n"));
    }
    let batch_file = lab.write_file("full-tunnel-burst.batch", batch);
    let run = lab.exec_in_with_timeout(
        &lab.client_ns,
        &[
            "dig",
            "+tries=1",
            "+time=3",
            "+short",
            "-f",
            path_str(&batch_file),
        ],
        Duration::from_secs(120),
    );
    let answers: Vec<&str> = run
        .stdout
        .lines()
        .filter(|line| !line.starts_with('"'))
        .collect();
    assert_eq!(answers, expected, "every query answered, in order:\n{run}");
    let big_answers = run
        .stdout
        .lines()
        .filter(|line| line.starts_with('"'))
        .count();
    assert!(big_answers >= BURST_ROUNDS, "the big TXT answers:\n{run}");
    run.stdout
}

//! The lab's additions for full tunnels (issue 4, section 2): C reaches N only through
//! default routes, as a real host reaches the Internet, so a full tunnel without policy
//! routing would swallow WireGuard's own packets and every upstream query:
//!
//! ```text
//!  C (client)  192.0.2.2/32 2001:db8::2/128 ── veth ── N (network)  192.0.2.1/24 fe80::1
//!    default via 192.0.2.1 onlink                       (plus everything in the core lab)
//!    default via fe80::1                                203.0.113.77 2001:db8:77::77 on lo:
//!                                                       N's own, so C reaches them by
//!                                                       either path; captures tell which
//! ```
//!
//! Also: captures on the peer's WireGuard interface, and the policy state of a namespace.

use super::*;

/// An address only N has, on its loopback: C reaches it through the tunnel or not at all.
pub const BEHIND_PEER_V4: &str = "203.0.113.77";
pub const BEHIND_PEER_V6: &str = "2001:db8:77::77";

/// wg-quick's (and tundns's) routing table and mark for a full tunnel.
pub const FULL_TUNNEL_TABLE: &str = "51820";

/// A capture running in the background (tcpdump); [`Capture::finish`] stops it and reads it.
pub struct Capture {
    daemon: Daemon,
    file: PathBuf,
}

impl Capture {
    /// Stops the capture, after a moment for the last packets to be printed, and returns
    /// the packets, one line each.
    pub fn finish(mut self) -> Vec<String> {
        thread::sleep(Duration::from_millis(500));
        self.daemon.send_sigterm();
        let stopped = self.daemon.wait_for_exit(Duration::from_secs(5));
        assert!(
            stopped.is_some(),
            "tcpdump did not stop:\n{}",
            self.daemon.output()
        );
        fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            // tcpdump ends its output with an empty line when stopped.
            .filter(|line| !line.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Lab {
    /// Leaves C with host addresses and default routes only (see the module docs), and
    /// gives N the addresses behind the peer. Loose reverse-path filtering in C, as systemd
    /// sets it; the test of strict filtering sets its own.
    pub fn reach_network_only_by_default_routes(&self) {
        let (c, n) = (&self.client_ns, &self.network_ns);
        let (veth_c, veth_n) = self.veths();
        self.exec_in(c, &["ip", "route", "del", "198.51.100.0/24"])
            .assert_success();
        for command in [
            &["ip", "-4", "addr", "del", "192.0.2.2/24", "dev", &veth_c][..],
            &["ip", "-4", "addr", "add", "192.0.2.2/32", "dev", &veth_c],
            &[
                "ip",
                "-4",
                "route",
                "add",
                "default",
                "via",
                "192.0.2.1",
                "dev",
                &veth_c,
                "onlink",
            ],
            &["ip", "-6", "addr", "del", "2001:db8::2/64", "dev", &veth_c],
            &[
                "ip",
                "-6",
                "addr",
                "add",
                "2001:db8::2/128",
                "dev",
                &veth_c,
                "nodad",
            ],
            &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=2"],
        ] {
            self.exec_in(c, command).assert_success();
        }
        for command in [
            &[
                "ip",
                "-6",
                "addr",
                "add",
                "fe80::1/64",
                "dev",
                &veth_n,
                "nodad",
            ][..],
            &[
                "ip",
                "addr",
                "add",
                &format!("{BEHIND_PEER_V4}/32"),
                "dev",
                "lo",
            ],
            &[
                "ip",
                "addr",
                "add",
                &format!("{BEHIND_PEER_V6}/128"),
                "dev",
                "lo",
            ],
        ] {
            self.exec_in(n, command).assert_success();
        }
        self.exec_in(
            c,
            &[
                "ip", "-6", "route", "add", "default", "via", "fe80::1", "dev", &veth_c,
            ],
        )
        .assert_success();
        for target in [UNBOUND_V4, UNBOUND_V6] {
            self.assert_ping(c, target);
        }
    }

    /// [`Lab::client_config`] with `AllowedIPs = 0.0.0.0/0, ::/0`: everything into the tunnel.
    pub fn full_tunnel_client_config(&self, options: &ClientConfig) -> String {
        let config = self.client_config(options);
        let split = "AllowedIPs = 10.99.0.0/24, fd99::/64";
        assert!(
            config.contains(split),
            "the client config changed:\n{config}"
        );
        config.replace(split, "AllowedIPs = 0.0.0.0/0, ::/0")
    }

    /// Starts `tcpdump -n -l --immediate-mode` on the peer's WireGuard interface with the filter `filter`,
    /// and waits until it listens. At most 10 000 packets and 60 s.
    pub fn capture_on_peer(&self, filter: &str) -> Capture {
        let name = format!("tcpdump {}", self.runs.fetch_add(1, Ordering::Relaxed));
        let file = self.dir.join(format!("{}.txt", name.replace(' ', "-")));
        let script = format!(
            "exec timeout 60 tcpdump -i {iface} -n -l --immediate-mode -c 10000 {filter} > {file}",
            iface = self.peer_iface,
            file = path_str(&file),
        );
        let daemon = self.spawn_in(&self.network_ns, &name, &["bash", "-c", &script]);
        let listening = wait_until(DAEMON_START_TIMEOUT, || {
            daemon_log_contains(&daemon, "listening on")
        });
        assert!(listening, "tcpdump did not start:\n{}", daemon.output());
        Capture { daemon, file }
    }

    /// `ip -4 rule` and `ip -6 rule` in `ns`, one line per rule.
    pub fn policy_rules(&self, ns: &str) -> Vec<String> {
        ["-4", "-6"]
            .iter()
            .flat_map(|family| {
                let run = self.exec_in(ns, &["ip", family, "rule", "show"]);
                run.assert_success();
                run.stdout
                    .lines()
                    .map(|line| format!("{family} {line}"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The IPv4 and IPv6 routes of table `table` in `ns`.
    pub fn routes_in_table(&self, ns: &str, table: &str) -> Vec<String> {
        ["-4", "-6"]
            .iter()
            .flat_map(|family| {
                let run = self.exec_in(ns, &["ip", family, "route", "show", "table", table]);
                // An empty IPv6 table is "not found" for some iproute2 versions.
                run.stdout
                    .lines()
                    .map(|line| format!("{family} {line}"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// A sysctl's value in `ns`.
    pub fn sysctl(&self, ns: &str, key: &str) -> String {
        let run = self.exec_in(ns, &["sysctl", "-n", key]);
        run.assert_success();
        run.stdout.trim().to_owned()
    }

    /// tundns's nftables table of `family` (`ip`, `ip6`) in C, as `nft list table` prints
    /// it; `None` when there is none.
    pub fn firewall_table(&self, family: &str) -> Option<String> {
        let name = format!("tundns-{}", self.tundns_iface);
        let run = self.exec_in(&self.client_ns, &["nft", "list", "table", family, &name]);
        run.succeeded().then_some(run.stdout)
    }

    /// `nft` in C.
    pub fn nft(&self, args: &[&str]) {
        let mut command = vec!["nft"];
        command.extend_from_slice(args);
        self.exec_in(&self.client_ns, &command).assert_success();
    }

    /// The veth ends in C and in N.
    pub fn veths(&self) -> (String, String) {
        (format!("{}v", self.id), format!("{}p", self.id))
    }
}

fn daemon_log_contains(daemon: &Daemon, needle: &str) -> bool {
    daemon.output().contains(needle)
}

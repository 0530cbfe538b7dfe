//! Lab helpers for the resolver edge tests (`tests/resolver_edges.rs`), all inside N and all
//! started by the test that needs them, so the shared lab stays as it was:
//!
//! - [`Lab::unbound_control`]: runtime changes to the instrumented unbound (`local_data` with
//!   a short TTL, ...), through its unix control socket in the lab directory;
//! - [`Lab::start_scripted_dnsdist`]: a dnsdist on another address of N that answers from
//!   Lua rules alone (SERVFAIL for one name, REFUSED for the rest, ...) and logs every query
//!   it sees to a file, so a test can count what reached it;
//! - [`Lab::start_capture`]: tcpdump in a lab namespace, for what only the wire shows (TCP
//!   handshakes, the EDNS size an upstream received). It stops with its guard.

use super::*;

/// How long tcpdump may take to start capturing.
const CAPTURE_START_TIMEOUT: Duration = Duration::from_secs(5);

/// A scripted dnsdist: where it listens and where it logs the queries it receives.
pub struct ScriptedDnsdist {
    pub address: String,
    query_log: PathBuf,
}

impl ScriptedDnsdist {
    /// How many queries for `name` (any case, trailing dot optional) it has received.
    pub fn queries(&self, name: &str) -> usize {
        let name = name.trim_end_matches('.');
        self.log()
            .lines()
            .filter_map(|line| line.strip_prefix("Packet from "))
            .filter_map(|rest| rest.split_whitespace().nth(2))
            .filter(|logged| logged.trim_end_matches('.').eq_ignore_ascii_case(name))
            .count()
    }

    /// Empties the query log (dnsdist appends, so it carries on from the new end).
    pub fn forget_queries(&self) {
        fs::write(&self.query_log, "").expect("empty the dnsdist query log");
    }

    /// Every `LogAction` line so far ("Packet from ADDR:PORT for NAME TYPE with id N").
    pub fn log(&self) -> String {
        fs::read_to_string(&self.query_log).unwrap_or_default()
    }
}

/// tcpdump running in a lab namespace; dropping it (also on a panic) stops it.
pub struct Capture {
    daemon: Daemon,
}

impl Capture {
    /// What tcpdump printed so far (packets on stdout, its notices on stderr, interleaved).
    pub fn output(&self) -> String {
        self.daemon.output()
    }

    /// Stops tcpdump (SIGTERM, at most 3 s) and returns everything it printed.
    pub fn stop(mut self) -> String {
        self.daemon.send_sigterm();
        self.daemon.wait_for_exit(Duration::from_secs(3));
        self.daemon.output()
    }
}

impl Lab {
    /// `unbound-control args...` against the instrumented unbound (bounded like every command).
    pub fn unbound_control(&self, args: &[&str]) -> Run {
        assert!(self.options.instrumented, "needs LabOptions::instrumented");
        let config = self.dir.join("unbound.conf");
        let mut command = vec!["unbound-control", "-c", path_str(&config)];
        command.extend_from_slice(args);
        self.exec_in(&self.network_ns, &command)
    }

    /// Adds `cidr` (a documentation address) to N's end of the veth pair, reachable from C.
    pub fn add_network_address(&self, cidr: &str) {
        let veth_n = format!("{}p", self.id);
        self.exec_in(
            &self.network_ns,
            &["ip", "addr", "add", cidr, "dev", &veth_n, "nodad"],
        )
        .assert_success();
    }

    /// dnsdist on `address` (added to N with [`Lab::add_network_address`] first) running
    /// `rules`, Lua after the listening and ACL setup. A rule logs a query with
    /// `LogAction(QUERY_LOG, false, true, false)`: `QUERY_LOG` is replaced by the log's path.
    /// Waits until it answers `ready_name` (any rcode) from N.
    pub fn start_scripted_dnsdist(
        &self,
        address: &str,
        rules: &str,
        ready_name: &str,
    ) -> ScriptedDnsdist {
        let query_log = self.dir.join(format!("dnsdist-{address}-queries.log"));
        let rules = rules.replace("QUERY_LOG", &format!("{:?}", path_str(&query_log)));
        let config = format!(
            "setLocal(\"{address}:53\")\n\
             setACL({{\"192.0.2.0/24\", \"10.99.0.0/24\"}})\n\
             setSecurityPollSuffix(\"\")\n{rules}\n"
        );
        let name = format!("dnsdist {address}");
        self.spawn_dnsdist(&name, &format!("dnsdist-{address}.conf"), &config);
        let ns = &self.network_ns;
        let answered = wait_until(DAEMON_START_TIMEOUT, || {
            dig_output::status(&self.dig(ns, address, &[ready_name, "A"])).is_some()
        });
        assert!(
            answered,
            "scripted dnsdist on {address} did not start answering:\n{}",
            self.daemon_output(&name)
        );
        ScriptedDnsdist {
            address: address.to_owned(),
            query_log,
        }
    }

    /// tcpdump on every interface of `ns` with the pcap `filter`, printing each packet as it
    /// comes (`extra` adds flags such as `-vv`). Returns once it is capturing.
    pub fn start_capture(&self, ns: &str, filter: &str, extra: &[&str]) -> Capture {
        let mut command = vec!["tcpdump", "-i", "any", "-n", "-l", "--immediate-mode"];
        command.extend_from_slice(extra);
        command.push(filter);
        let daemon = self.spawn_in(ns, &format!("tcpdump {ns}"), &command);
        let capture = Capture { daemon };
        let listening = wait_until(CAPTURE_START_TIMEOUT, || {
            capture.output().contains("listening on")
        });
        assert!(
            listening,
            "tcpdump did not start capturing:\n{}",
            capture.output()
        );
        capture
    }
}

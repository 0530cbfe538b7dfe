//! The lab's additions for the resolver tests (issue 3), all inside N and all opt-in through
//! [`LabOptions`], so the core e2e lab stays as it was:
//!
//! ```text
//!  N (network)
//!    unbound 192.0.2.53, 2001:db8::53     :53 plain, :853 DoT, :443 DoH (/dns-query), with a
//!                                         certificate for dns.lab.test from a throwaway lab CA;
//!                                         logs every query it receives (counted by name)
//!    unbound 10.99.0.53, fd99::53         the tunnel-only resolver: addresses of wireguard-go's
//!                                         interface, answers corp.internal, refuses any source
//!                                         outside 10.99.0.0/24 and fd99::/64
//!    dnsdist 192.0.2.55                   forwards to unbound: a second, different upstream
//! ```
//!
//! The CA, its key and the server key live in the lab's temporary directory and go with it.
//! openssl and unbound-control only touch files and a unix socket in that directory.

use super::*;
use std::fmt::Write as _;

/// The TLS server name in unbound's certificate.
pub const TLS_NAME: &str = "dns.lab.test";
pub const DOT_PORT: u16 = 853;
pub const DOH_PORT: u16 = 443;
pub const DOH_PATH: &str = "/dns-query";
/// The tunnel-only resolver: reachable from C only through WireGuard.
pub const TUNNEL_RESOLVER_V4: &str = "10.99.0.53";
pub const TUNNEL_RESOLVER_V6: &str = "fd99::53";
/// Fixed by `lab/unbound-corp-zone.conf`.
pub const CORP_DB_NAME: &str = "db.corp.internal";
pub const CORP_DB_A: &str = "10.99.0.80";
pub const CORP_DB_AAAA: &str = "fd99::80";
/// dnsdist in N, forwarding to unbound.
pub const DNSDIST_V4: &str = "192.0.2.55";
/// The DoQ and HTTP/3 server in N (`examples/lab_quic_upstream.rs`), forwarding to unbound:
/// its own address, so unbound's log tells the queries it forwarded by their source.
pub const QUIC_UPSTREAM_V4: &str = "192.0.2.56";
/// DoQ's port (RFC 9250), on UDP.
pub const DOQ_PORT: u16 = 853;
/// DoH over HTTP/3's port, on UDP.
pub const H3_PORT: u16 = 443;
pub(crate) const DNSDIST_V4_CIDR: &str = "192.0.2.55/24";

const RESOLVER_ZONE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../lab/unbound-resolver-zone.conf"
);
const CORP_ZONE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../lab/unbound-corp-zone.conf"
);
/// The tunnel-only resolver's unbound config, with `@NAME@` placeholders.
const TUNNEL_UNBOUND_TEMPLATE: &str = include_str!("../../../../lab/unbound-tunnel.conf.in");

/// What the lab builds beyond the core topology. `Default` is the core lab of `e2e.rs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LabOptions {
    /// unbound logs every query (see [`Lab::upstream_queries`]), answers `unbound-control`
    /// on a unix socket in the lab directory, and serves `lab/unbound-resolver-zone.conf` too.
    pub instrumented: bool,
    /// unbound also serves DoT and DoH with a certificate from the lab CA.
    pub encrypted_upstream: bool,
    /// A second unbound on 10.99.0.53 / fd99::53 behind N's wireguard-go.
    pub tunnel_resolver: bool,
    /// dnsdist on 192.0.2.55, forwarding to unbound.
    pub dnsdist: bool,
}

impl LabOptions {
    /// The instrumented unbound alone: what most resolver tests need. Tests add the rest.
    pub fn resolver() -> LabOptions {
        LabOptions {
            instrumented: true,
            encrypted_upstream: false,
            tunnel_resolver: false,
            dnsdist: false,
        }
    }

    /// [`LabOptions::resolver`] with the tunnel-only resolver too: the split DNS lab.
    pub fn split_dns() -> LabOptions {
        LabOptions {
            tunnel_resolver: true,
            ..LabOptions::resolver()
        }
    }

    /// [`LabOptions::resolver`] with unbound serving DoT and DoH too.
    pub fn encrypted() -> LabOptions {
        LabOptions {
            encrypted_upstream: true,
            ..LabOptions::resolver()
        }
    }

    pub(crate) fn missing_tools(&self) -> Option<String> {
        let mut tools = vec!["kdig"];
        if self.instrumented {
            tools.push("unbound-control");
        }
        if self.encrypted_upstream {
            tools.push("openssl");
        }
        if self.dnsdist {
            tools.push("dnsdist");
        }
        let missing: Vec<&str> = tools.into_iter().filter(|tool| !on_path(tool)).collect();
        (!missing.is_empty()).then(|| format!("missing tools: {}", missing.join(" ")))
    }
}

/// A `[DNSRoute]` section of the client config.
#[derive(Debug, Clone)]
pub struct DnsRoute {
    pub domains: Vec<String>,
    pub upstreams: Vec<String>,
    pub through_tunnel: bool,
}

impl DnsRoute {
    pub(crate) fn section(&self) -> String {
        format!(
            "\n[DNSRoute]\nDomain = {}\nUpstream = {}\nThroughTunnel = {}\n",
            self.domains.join(", "),
            self.upstreams.join(", "),
            self.through_tunnel
        )
    }
}

/// The outside unbound frozen with SIGSTOP: queries queue in its socket buffers. Dropping the
/// guard (also on a panic) resumes it with SIGCONT.
pub struct Paused {
    pid: u32,
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

impl Lab {
    /// The lab CA's certificate: the `CAFile` that makes unbound's DoT and DoH trusted.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("lab-ca.pem")
    }

    /// unbound's certificate for dns.lab.test (and its IPs), signed by the lab CA, and its
    /// key: what a `TLSCertificate` and `TLSKey` may name.
    pub fn server_certificate(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("server.pem"), self.dir.join("server.key"))
    }

    /// The lab CA's key: a key that is not the server certificate's.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("lab-ca.key")
    }

    /// Another CA, which did not sign unbound's certificate.
    pub fn wrong_ca_file(&self) -> PathBuf {
        self.dir.join("wrong-ca.pem")
    }

    /// `tls://dns.lab.test@192.0.2.53:853`
    pub fn dot_upstream(&self) -> String {
        format!("tls://{TLS_NAME}@{UNBOUND_V4}:{DOT_PORT}")
    }

    /// `https://dns.lab.test@192.0.2.53/dns-query`
    pub fn doh_upstream(&self) -> String {
        format!("https://{TLS_NAME}@{UNBOUND_V4}{DOH_PATH}")
    }

    /// `quic://dns.lab.test@192.0.2.56:853`
    pub fn doq_upstream(&self) -> String {
        format!("quic://{TLS_NAME}@{QUIC_UPSTREAM_V4}:{DOQ_PORT}")
    }

    /// `h3://dns.lab.test@192.0.2.56:443/dns-query`
    pub fn h3_upstream(&self) -> String {
        format!("h3://{TLS_NAME}@{QUIC_UPSTREAM_V4}:{H3_PORT}{DOH_PATH}")
    }

    /// Starts `examples/lab_quic_upstream` in N on 192.0.2.56: DoQ on UDP 853 and DoH over
    /// HTTP/3 on UDP 443, with unbound's certificate (so it needs `encrypted_upstream`),
    /// forwarding to unbound. It closes a connection after `idle_timeout` without packets.
    /// Waits until both are bound.
    pub fn start_quic_upstream(&self, idle_timeout: Duration) {
        assert!(
            self.options.encrypted_upstream,
            "needs LabOptions::encrypted (the lab CA)"
        );
        let ns = &self.network_ns;
        let veth = format!("{}p", self.id);
        let cidr = format!("{QUIC_UPSTREAM_V4}/24");
        self.exec_in(ns, &["ip", "addr", "add", &cidr, "dev", &veth, "nodad"])
            .assert_success();
        let (cert, key) = self.server_certificate();
        let doq = format!("{QUIC_UPSTREAM_V4}:{DOQ_PORT}");
        let h3 = format!("{QUIC_UPSTREAM_V4}:{H3_PORT}");
        let forward = format!("{UNBOUND_V4}:53");
        let idle = idle_timeout.as_millis().to_string();
        let program = quic_upstream_program();
        self.spawn_daemon_in(
            ns,
            "quic upstream",
            &[
                &program,
                "--cert",
                path_str(&cert),
                "--key",
                path_str(&key),
                "--doq",
                &doq,
                "--h3",
                &h3,
                "--forward",
                &forward,
                "--idle-timeout-ms",
                &idle,
            ],
        );
        let listening = wait_until(DAEMON_START_TIMEOUT, || {
            let output = self.daemon_output("quic upstream");
            output.contains("listening doq") && output.contains("listening h3")
        });
        assert!(
            listening,
            "the QUIC upstream did not start:\n{}",
            self.daemon_output("quic upstream")
        );
    }

    /// How many queries the QUIC upstream answered over `protocol` ("doq" or "h3").
    pub fn quic_upstream_answers(&self, protocol: &str) -> usize {
        let line = format!("{protocol} answered");
        self.daemon_output("quic upstream")
            .lines()
            .filter(|l| *l == line)
            .count()
    }

    /// Stops the outside unbound (SIGTERM, bounded); [`Lab::start_unbound`] brings it back
    /// with the same config, and its query log carries on.
    pub fn stop_unbound(&self) {
        let stopped: Vec<Daemon> = {
            let mut daemons = self.daemons.borrow_mut();
            let (unbound, others) = daemons.drain(..).partition(|d| d.name == "unbound");
            *daemons = others;
            unbound
        };
        assert!(!stopped.is_empty(), "unbound is not running");
        drop(stopped);
    }

    /// Freezes the outside unbound until the guard is dropped.
    pub fn pause_unbound(&self) -> Paused {
        let pid = self
            .daemons
            .borrow()
            .iter()
            .find(|daemon| daemon.name == "unbound")
            .map(Daemon::pid)
            .expect("unbound is running");
        // `ip netns exec` execs the command, so the child's pid is unbound's own.
        self.run(&["kill", "-STOP", &pid.to_string()], COMMAND_TIMEOUT)
            .assert_success();
        Paused { pid }
    }

    /// How many queries for `name` (any case, trailing dot optional) of `qtype` ("A", "AAAA";
    /// `None` for any type) the outside unbound has received. Needs `instrumented`.
    pub fn upstream_queries(&self, name: &str, qtype: Option<&str>) -> usize {
        assert!(self.options.instrumented, "needs LabOptions::instrumented");
        count_logged_queries(&self.unbound_log(), name, qtype)
    }

    /// As [`Lab::upstream_queries`], for the tunnel-only resolver.
    pub fn tunnel_resolver_queries(&self, name: &str, qtype: Option<&str>) -> usize {
        count_logged_queries(&self.tunnel_resolver_log(), name, qtype)
    }

    /// The outside unbound's log (every query it received when `instrumented`).
    pub fn unbound_log(&self) -> String {
        fs::read_to_string(self.dir.join("unbound-queries.log")).unwrap_or_default()
    }

    pub fn tunnel_resolver_log(&self) -> String {
        fs::read_to_string(self.dir.join("unbound-tunnel.log")).unwrap_or_default()
    }

    /// One counter of `unbound-control stats_noreset` (`total.num.queries`,
    /// `num.query.tls`, `num.query.https`, ...); 0 when unbound does not report it.
    pub fn upstream_stat(&self, key: &str) -> u64 {
        assert!(self.options.instrumented, "needs LabOptions::instrumented");
        let config = self.dir.join("unbound.conf");
        let run = self.exec_in(
            &self.network_ns,
            &["unbound-control", "-c", path_str(&config), "stats_noreset"],
        );
        run.assert_success();
        run.stdout
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `kdig @server args...` in `ns`: one try, two seconds.
    pub fn kdig(&self, ns: &str, server: &str, args: &[&str]) -> Run {
        let at_server = format!("@{server}");
        let mut command = vec!["kdig", &at_server, "+retry=0", "+time=2"];
        command.extend_from_slice(args);
        self.exec_in(ns, &command)
    }

    /// `count` copies of `dig +short args...` at once from `ns`, in the background: every
    /// dig's answer records, one per line, are the daemon's output.
    pub fn spawn_parallel_digs(
        &self,
        ns: &str,
        server: &str,
        count: usize,
        args: &[&str],
    ) -> Daemon {
        let script = parallel_digs_script(args.len());
        let count = count.to_string();
        let mut command = vec!["bash", "-c", &script, "-", &count, server];
        command.extend_from_slice(args);
        self.spawn_in(ns, "parallel digs", &command)
    }

    /// Adds logging, control, DoT/DoH and the extra zone to unbound's plain config, as the
    /// options ask. Later settings override earlier ones in unbound.conf.
    pub(crate) fn instrument_unbound_config(&self, plain: String) -> String {
        if !self.options.instrumented && !self.options.encrypted_upstream {
            return plain;
        }
        let dir = &self.dir;
        let mut config = plain;
        config.push_str("server:\n");
        if self.options.instrumented {
            let _ = write!(
                config,
                "    logfile: \"{log}\"\n    log-queries: yes\n    extended-statistics: yes\n",
                log = dir.join("unbound-queries.log").display()
            );
        }
        if self.options.encrypted_upstream {
            for addr in [UNBOUND_V4, UNBOUND_V6] {
                let _ = write!(
                    config,
                    "    interface: {addr}@{DOT_PORT}\n    interface: {addr}@{DOH_PORT}\n"
                );
            }
            let _ = write!(
                config,
                "    tls-port: {DOT_PORT}\n    https-port: {DOH_PORT}\n    http-endpoint: \"{DOH_PATH}\"\n\
                 \x20   tls-service-key: \"{key}\"\n    tls-service-pem: \"{pem}\"\n",
                key = dir.join("server.key").display(),
                pem = dir.join("server.pem").display(),
            );
        }
        if self.options.instrumented {
            let _ = write!(
                config,
                "include: \"{RESOLVER_ZONE}\"\nremote-control:\n    control-enable: yes\n\
                 \x20   control-interface: \"{socket}\"\n    control-use-cert: no\n",
                socket = dir.join("unbound.ctl").display()
            );
        }
        config
    }

    /// A CA and a certificate for dns.lab.test (and unbound's IPs) signed by it, plus an
    /// unrelated CA for the wrong-CA tests. P-256 keys, valid for two days.
    pub(crate) fn make_certificates(&self) {
        let dir = path_str(&self.dir);
        let script = r#"set -e
cd "$1"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout lab-ca.key -out lab-ca.pem -subj "/CN=tundns lab CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout wrong-ca.key -out wrong-ca.pem -subj "/CN=tundns lab CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout server.key -out server.csr -subj "/CN=$2"
printf 'subjectAltName=DNS:%s,IP:%s,IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n' \
    "$2" "$3" "$4" >server.ext
openssl x509 -req -in server.csr -CA lab-ca.pem -CAkey lab-ca.key -CAcreateserial -days 2 \
    -extfile server.ext -out server.pem
openssl verify -CAfile lab-ca.pem server.pem
"#;
        // In N, like everything else the lab runs; openssl sends nothing anyway.
        self.exec_in(
            &self.network_ns,
            &[
                "bash", "-c", script, "-", dir, TLS_NAME, UNBOUND_V4, UNBOUND_V6,
            ],
        )
        .assert_success();
    }

    /// The tunnel-only resolver: unbound on addresses of N's wireguard-go interface.
    pub(crate) fn start_tunnel_resolver(&self) {
        let (ns, iface) = (&self.network_ns, &self.peer_iface);
        let v4 = format!("{TUNNEL_RESOLVER_V4}/32");
        let v6 = format!("{TUNNEL_RESOLVER_V6}/128");
        self.exec_in(ns, &["ip", "addr", "add", &v4, "dev", iface])
            .assert_success();
        self.exec_in(ns, &["ip", "addr", "add", &v6, "dev", iface, "nodad"])
            .assert_success();
        // The same template as lab/resolver-lib.sh's lab_start_tunnel_resolver.
        let config = TUNNEL_UNBOUND_TEMPLATE
            .replace("@DIR@", &self.dir.display().to_string())
            .replace("@V4@", TUNNEL_RESOLVER_V4)
            .replace("@V6@", TUNNEL_RESOLVER_V6)
            .replace("@CORP_ZONE@", CORP_ZONE);
        let path = self.write_file("unbound-tunnel.conf", &config);
        self.spawn_daemon_in(
            ns,
            "tunnel unbound",
            &["unbound", "-d", "-c", path_str(&path)],
        );
        let answered = self.wait_for_short_answer(
            ns,
            TUNNEL_RESOLVER_V4,
            &["-b", PEER_TUNNEL_V4, CORP_DB_NAME, "A"],
            CORP_DB_A,
        );
        assert!(
            answered,
            "the tunnel resolver did not start answering:\n{}{}",
            self.daemon_output("tunnel unbound"),
            self.tunnel_resolver_log()
        );
    }

    /// dnsdist on 192.0.2.55 forwarding to unbound; no console, no security polling.
    pub(crate) fn start_dnsdist(&self) {
        let config = format!(
            "setLocal(\"{DNSDIST_V4}:53\")\n\
             setACL({{\"192.0.2.0/24\", \"10.99.0.0/24\"}})\n\
             newServer({{address=\"{UNBOUND_V4}:53\", checkName=\"health.lab.test.\"}})\n\
             setSecurityPollSuffix(\"\")\n"
        );
        self.spawn_dnsdist("dnsdist", "dnsdist.conf", &config);
        let ns = &self.network_ns;
        let answered = self.wait_for_short_answer(ns, DNSDIST_V4, &[WWW_NAME, "A"], WWW_A);
        assert!(
            answered,
            "dnsdist did not start answering:\n{}",
            self.daemon_output("dnsdist")
        );
    }

    /// dnsdist in N as the daemon `name`, supervised, no syslog, running `config` (written to
    /// `file` in the lab directory).
    pub(crate) fn spawn_dnsdist(&self, name: &str, file: &str, config: &str) {
        let path = self.write_file(file, config);
        self.spawn_daemon_in(
            &self.network_ns,
            name,
            &[
                "dnsdist",
                "--supervised",
                "--disable-syslog",
                "-C",
                path_str(&path),
            ],
        );
    }
}

/// `examples/lab_quic_upstream`, which `cargo test` builds next to the binaries (alone:
/// `cargo build [--release] -p tundns --example lab_quic_upstream`).
fn quic_upstream_program() -> String {
    let program = Path::new(tundns_bin())
        .parent()
        .expect("target dir")
        .join("examples")
        .join("lab_quic_upstream");
    assert!(
        program.exists(),
        "{} not built: cargo build -p tundns --example lab_quic_upstream",
        program.display()
    );
    program.to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the resolver test files (`resolver.rs`, `resolver_edges.rs`).

/// The default client config with `lines` added to `[DNSProxy]`.
pub fn resolver_config(lines: &[&str]) -> ClientConfig {
    ClientConfig {
        dns_proxy_lines: lines.iter().map(|line| (*line).to_owned()).collect(),
        ..ClientConfig::default()
    }
}

/// tundns in C with the default config plus `lines` in `[DNSProxy]`.
pub fn start(lab: &Lab, lines: &[&str]) -> Daemon {
    lab.start_tundns(&lab.client_config(&resolver_config(lines)))
}

/// [`start`] with `upstreams` instead of the default upstream.
pub fn start_with_upstreams(lab: &Lab, upstreams: &[&str], lines: &[&str]) -> Daemon {
    let options = ClientConfig {
        upstreams: upstreams.iter().map(|u| (*u).to_owned()).collect(),
        ..resolver_config(lines)
    };
    lab.start_tundns(&lab.client_config(&options))
}

/// `dig @10.30.30.30 args...` from C.
pub fn ask(lab: &Lab, args: &[&str]) -> Run {
    lab.dig(&lab.client_ns, PROXY_V4, args)
}

/// The answer section holds exactly one record, with `data`; returns it.
#[track_caller]
pub fn single_answer(run: &Run, data: &str) -> dig_output::Record {
    let answer = dig_output::section(run, "ANSWER");
    assert_eq!(dig_output::status(run).as_deref(), Some("NOERROR"), "{run}");
    assert!(
        answer.len() == 1 && answer[0].data == data,
        "expected one answer {data}:\n{run}"
    );
    answer[0].clone()
}

/// tundns answers each of `names` NXDOMAIN without asking unbound, and still answers
/// www.lab.test.
#[track_caller]
pub fn assert_blocked_nxdomain(lab: &Lab, names: &[&str]) {
    for name in names {
        let run = ask(lab, &[name, "A"]);
        assert_eq!(
            dig_output::status(&run).as_deref(),
            Some("NXDOMAIN"),
            "{run}"
        );
        assert_eq!(lab.upstream_queries(name, None), 0, "{name} was forwarded");
    }
    single_answer(&ask(lab, &[WWW_NAME, "A"]), WWW_A);
}

/// A bash script: `$1` digs at `$2` with the arguments `$3...`, all at once, each waiting at
/// most 3 s, stderr kept apart from the answers.
fn parallel_digs_script(args: usize) -> String {
    let mut script =
        String::from("for i in $(seq 1 \"$1\"); do dig \"@$2\" +tries=1 +time=3 +short");
    for index in 0..args {
        let _ = write!(script, " \"${{{}}}\"", index + 3);
    }
    script.push_str(" 2>/dev/null & done; wait");
    script
}

/// Counts unbound `log-queries` lines ("info: 192.0.2.2 www.lab.test. A IN") for a name.
fn count_logged_queries(log: &str, name: &str, qtype: Option<&str>) -> usize {
    let name = name.trim_end_matches('.');
    log.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [.., "info:", _source, logged_name, logged_type, "IN"] => {
                    Some((*logged_name, *logged_type))
                }
                _ => None,
            }
        })
        .filter(|(logged_name, logged_type)| {
            logged_name.trim_end_matches('.').eq_ignore_ascii_case(name)
                && qtype.is_none_or(|qtype| logged_type.eq_ignore_ascii_case(qtype))
        })
        .count()
}

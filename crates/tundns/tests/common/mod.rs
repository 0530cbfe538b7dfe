//! The end-to-end lab: throwaway network namespaces holding a real wireguard-go peer and an
//! unbound upstream, with tundns (or, for baselines, wireguard-go) as the client.
//!
//! It must never send a packet outside the namespaces it created: the client namespace C and
//! the network namespace N are joined only to each other by a veth pair, and every upstream
//! lives on a documentation address inside N. It always tears down what it built (the `Drop`
//! of [`Lab`] and [`Daemon`]), including when a test panics. Every wait is bounded.
//!
//! ```text
//!  C (client)  192.0.2.2/24 2001:db8::2/64 ── veth ── N (network)  192.0.2.1/24 2001:db8::1/64
//!    tundns: 10.99.0.2/24 fd99::2/64                    wireguard-go :51820, 10.99.0.1 fd99::1
//!    proxy:  10.30.30.30 fd30:30:30::30                 unbound 192.0.2.53 2001:db8::53
//!    198.51.100.0/24 via N                              192.0.2.54: nothing listens (refuses)
//!                                                       198.51.100.53: blackholed (silent)
//! ```
//!
//! The resolver tests ask for more through [`LabOptions`] and [`lab_or_skip_with`] (see
//! [`resolver_lab`]): an instrumented unbound that logs every query and also serves DoT and
//! DoH with a certificate from a throwaway lab CA, a tunnel-only resolver on 10.99.0.53, and
//! dnsdist on 192.0.2.55 as a second upstream.
//!
//! A test opens with [`lab!`] (the lab alone) or [`lab_with_tundns!`] (the lab with tundns
//! running). Set `TUNDNS_E2E=1` to make missing prerequisites (root, tools) a failure instead
//! of a skip.

#![allow(
    dead_code,
    reason = "shared by several test crates, each using a part of it"
)]

pub mod dig_output;
pub mod edges_lab;
pub mod full_tunnel_lab;
pub mod resolver_lab;

pub use resolver_lab::{DnsRoute, LabOptions};

use std::cell::RefCell;
use std::fmt;
use std::fs::{self, File};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const PROXY_V4: &str = "10.30.30.30";
pub const PROXY_V6: &str = "fd30:30:30::30";
pub const UNBOUND_V4: &str = "192.0.2.53";
pub const UNBOUND_V6: &str = "2001:db8::53";
/// An upstream address in N where nothing listens: queries get ICMP port unreachable.
pub const DEAD_REFUSING: &str = "192.0.2.54";
/// An upstream address blackholed in N: queries vanish without an answer.
pub const DEAD_SILENT: &str = "198.51.100.53";
pub const PEER_ENDPOINT: &str = "192.0.2.1:51820";
pub const PEER_TUNNEL_V4: &str = "10.99.0.1";
pub const PEER_TUNNEL_V6: &str = "fd99::1";
pub const CLIENT_TUNNEL_V4: &str = "10.99.0.2";
pub const CLIENT_TUNNEL_V6: &str = "fd99::2";

/// Answers fixed by `lab/unbound-zone.conf`.
pub const WWW_NAME: &str = "www.lab.test";
pub const WWW_A: &str = "203.0.113.10";
pub const WWW_AAAA: &str = "2001:db8::10";
pub const BIG_TXT_NAME: &str = "big.lab.test";
pub const BIG_TXT_RECORDS: usize = 24;

const UNBOUND_ZONE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../lab/unbound-zone.conf");
const REQUIRED_TOOLS: &[&str] = &[
    "ip",
    "nft",
    "ssh",
    "ssh-keygen",
    "sshd",
    "setpriv",
    "wg",
    "wireguard-go",
    "unbound",
    "dig",
    "ping",
    "iperf3",
    "getent",
    "bash",
    "dd",
    "python3",
    "kill",
];
/// Upper bound for any single command the lab runs, unless a test asks for another.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Builds the lab for `test`, or returns `None` (after printing why) when the machine lacks the
/// prerequisites and `TUNDNS_E2E` is not `1`.
pub fn lab_or_skip(test: &str) -> Option<Lab> {
    lab_or_skip_with(test, LabOptions::default())
}

/// As [`lab_or_skip`], with the extra servers `options` asks for.
pub fn lab_or_skip_with(test: &str, options: LabOptions) -> Option<Lab> {
    let missing = missing_prerequisites().or_else(|| options.missing_tools());
    match missing {
        None => Some(Lab::new(options)),
        Some(reason) if e2e_required() => {
            panic!("TUNDNS_E2E=1 but the e2e lab cannot run: {reason}")
        }
        Some(reason) => {
            eprintln!("skipped: {test}: {reason} (set TUNDNS_E2E=1 to make this a failure)");
            None
        }
    }
}

/// The name of the test function this expands in (the last segment of its path).
#[allow(unused_macros, reason = "not every test file uses every opening")]
macro_rules! test_name {
    () => {{
        fn here() {}
        let path = std::any::type_name_of_val(&here);
        let path = path.strip_suffix("::here").unwrap_or(path);
        path.rsplit("::").next().unwrap_or(path)
    }};
}
#[allow(unused_imports, reason = "not every test file uses every opening")]
pub(crate) use test_name;

/// Opens an end-to-end test: the lab with `options` (the default lab if none), or `return`
/// from the test when this machine cannot build it. Under `TUNDNS_E2E=1` that is a failure
/// instead, never a silent skip (see [`lab_or_skip_with`]). `lab!(with make)` opens a test
/// file's own lab: `make(test_name)` returns `None` to skip, by the same rule.
#[allow(unused_macros, reason = "not every test file uses every opening")]
macro_rules! lab {
    () => {
        $crate::common::lab!($crate::common::LabOptions::default())
    };
    (with $make:path) => {
        match $make($crate::common::test_name!()) {
            Some(lab) => lab,
            None => return,
        }
    };
    ($options:expr) => {
        match $crate::common::lab_or_skip_with($crate::common::test_name!(), $options) {
            Some(lab) => lab,
            None => return,
        }
    };
}
#[allow(unused_imports, reason = "not every test file uses every opening")]
pub(crate) use lab;

/// [`lab!`], then tundns running in C with the client config `config` (a [`ClientConfig`]):
/// `(lab, tundns)`. Bind both (`let (lab, _tundns) = ...`): the daemon stops when dropped,
/// and it drops before the lab.
#[allow(unused_macros, reason = "not every test file uses every opening")]
macro_rules! lab_with_tundns {
    () => {
        $crate::common::lab_with_tundns!(
            $crate::common::LabOptions::default(),
            $crate::common::ClientConfig::default()
        )
    };
    ($options:expr, $config:expr) => {{
        let lab = $crate::common::lab!($options);
        let tundns = lab.start_tundns(&lab.client_config(&$config));
        (lab, tundns)
    }};
}
#[allow(unused_imports, reason = "not every test file uses every opening")]
pub(crate) use lab_with_tundns;

fn e2e_required() -> bool {
    std::env::var("TUNDNS_E2E").is_ok_and(|value| value == "1")
}

fn missing_prerequisites() -> Option<String> {
    let is_root = fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    });
    if !is_root {
        return Some("not running as root (needs network namespaces and TUN)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    let missing: Vec<&str> = REQUIRED_TOOLS
        .iter()
        .copied()
        .filter(|tool| !on_path(tool))
        .collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!("missing tools: {}", missing.join(" ")))
    }
}

pub(crate) fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Retries `condition` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// What a finished (or timed-out) command left behind.
pub struct Run {
    pub command: String,
    /// `None` when the command was killed at its timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|status| status.success())
    }

    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    /// Panics with the whole run unless the command exited 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.succeeded(), "command failed:\n{self}");
        self
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Some(status) => status.to_string(),
            None => "timed out".into(),
        };
        write!(
            f,
            "$ {}\n[{status} after {:?}]\n--- stdout\n{}--- stderr\n{}",
            self.command, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// A long-running process (unbound, wireguard-go, tundns). Dropping it stops it: SIGTERM,
/// then SIGKILL after two seconds.
pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has ended.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// Sends `signal` (`TERM`, `HUP`, ...) through `kill`, to keep the tests free of unsafe
    /// code.
    pub fn signal(&self, signal: &str) {
        // A process that has already gone makes `kill` fail; the callers check the exit status.
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .stderr(Stdio::null())
            .status();
    }

    /// Sends SIGTERM.
    pub fn send_sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends SIGKILL to the process and everything it started (its process group: tundns's
    /// watchdog too), as a power cut would: nothing is left to clean up. Waits for it to go.
    #[track_caller]
    pub fn kill_without_cleanup(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.pid())])
            .stderr(Stdio::null())
            .status();
        assert!(
            self.wait_for_exit(Duration::from_secs(5)).is_some(),
            "{} survived SIGKILL",
            self.name
        );
    }

    /// Sends SIGKILL to the process alone, and waits for it to go: tundns's watchdog
    /// lives on, to restore what tundns changed.
    #[track_caller]
    pub fn kill_alone(&mut self) {
        self.signal("KILL");
        assert!(
            self.wait_for_exit(Duration::from_secs(5)).is_some(),
            "{} survived SIGKILL",
            self.name
        );
    }

    /// Sends SIGTERM and asserts that the process exits with status 0 within `timeout`,
    /// and that the stop logged no error: a clean stop is quiet.
    #[track_caller]
    pub fn stop_cleanly(&mut self, timeout: Duration) {
        self.send_sigterm();
        let status = self.wait_for_exit(timeout);
        let output = self.output();
        assert!(
            status.is_some_and(|status| status.success()),
            "{} did not stop cleanly ({status:?}):\n{output}",
            self.name,
        );
        let stop = output
            .find("shutting down")
            .map_or("", |start| &output[start..]);
        assert!(
            !stop.contains(" ERROR "),
            "{} logged an error while stopping:\n{output}",
            self.name,
        );
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.exit_status();
            status.is_some()
        });
        status
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.is_running() {
            self.send_sigterm();
            if self.wait_for_exit(Duration::from_secs(2)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if thread::panicking() {
            eprintln!("----- {} output -----\n{}", self.name, self.output());
        }
    }
}

/// Per-peer byte counters as `wg show <iface> transfer` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    pub received: u64,
    pub sent: u64,
}

impl Transfer {
    /// Bytes moved in both directions since `earlier`.
    pub fn since(self, earlier: Transfer) -> u64 {
        (self.received - earlier.received) + (self.sent - earlier.sent)
    }
}

/// Options for the client's wg-quick config.
pub struct ClientConfig {
    pub upstreams: Vec<String>,
    /// Networks the peer's `AllowedIPs` holds besides the lab's tunnel subnets.
    pub extra_allowed_ips: Vec<String>,
    /// More `Key = value` lines for `[Interface]` (`ListenPort = ...`).
    pub interface_lines: Vec<String>,
    /// More `Key = value` lines for `[Peer]` (`PresharedKey = ...`).
    pub peer_lines: Vec<String>,
    pub persistent_keepalive: Option<u16>,
    /// `[DNSProxy] Timeout`, per upstream attempt.
    pub timeout: String,
    /// More `Key = value` lines for `[DNSProxy]` (`Cache = on`, `Record = ...`).
    pub dns_proxy_lines: Vec<String>,
    /// `[DNSRoute]` sections, written after `[DNSProxy]`.
    pub routes: Vec<DnsRoute>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            upstreams: vec![UNBOUND_V4.into()],
            extra_allowed_ips: Vec::new(),
            interface_lines: Vec::new(),
            peer_lines: Vec::new(),
            persistent_keepalive: None,
            timeout: "500ms".into(),
            dns_proxy_lines: Vec::new(),
            routes: Vec::new(),
        }
    }
}

struct KeyPair {
    private: String,
    public: String,
}

/// The two namespaces, unbound and the wireguard-go peer in N. See the module docs.
pub struct Lab {
    pub client_ns: String,
    pub network_ns: String,
    /// The interface name tundns gets (the config's file stem).
    pub tundns_iface: String,
    /// wireguard-go's interface in N.
    pub peer_iface: String,
    id: String,
    dir: PathBuf,
    options: LabOptions,
    client_key: KeyPair,
    peer_key: KeyPair,
    /// Interfaces whose UAPI sockets in /var/run/wireguard this lab owns.
    uapi_ifaces: RefCell<Vec<String>>,
    daemons: RefCell<Vec<Daemon>>,
    /// Numbers the output files of [`Lab::run`].
    runs: AtomicU32,
}

impl Lab {
    fn new(options: LabOptions) -> Lab {
        // "td<pid>x<n>" plus a one-letter suffix stays within the 15 bytes of an interface name.
        let id = format!(
            "td{}x{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&id);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the lab directory");
        let mut lab = Lab {
            client_ns: format!("{id}-c"),
            network_ns: format!("{id}-n"),
            tundns_iface: format!("{id}t"),
            peer_iface: format!("{id}w"),
            id,
            dir,
            options,
            client_key: KeyPair::empty(),
            peer_key: KeyPair::empty(),
            uapi_ifaces: RefCell::new(Vec::new()),
            daemons: RefCell::new(Vec::new()),
            runs: AtomicU32::new(0),
        };
        // From here on, a panic drops `lab`, which tears down whatever was built.
        lab.build_network();
        lab.client_key = lab.generate_keys();
        lab.peer_key = lab.generate_keys();
        if lab.options.encrypted_upstream {
            lab.make_certificates();
        }
        lab.start_unbound();
        lab.start_peer();
        if lab.options.tunnel_resolver {
            lab.start_tunnel_resolver();
        }
        if lab.options.dnsdist {
            lab.start_dnsdist();
        }
        lab
    }

    fn build_network(&self) {
        let (c, n) = (&self.client_ns, &self.network_ns);
        let (veth_c, veth_n) = (format!("{}v", self.id), format!("{}p", self.id));
        for ns in [c, n] {
            self.host(&["ip", "netns", "add", ns]).assert_success();
            fs::create_dir_all(self.etc_netns(ns)).expect("create /etc/netns/<ns>");
            fs::write(
                self.etc_netns(ns).join("nsswitch.conf"),
                "hosts: files dns\n",
            )
            .expect("write the namespace's nsswitch.conf");
            self.exec_in(ns, &["ip", "link", "set", "lo", "up"])
                .assert_success();
            // No duplicate address detection: IPv6 addresses are usable the moment they are set.
            self.exec_in(
                ns,
                &[
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ],
            )
            .assert_success();
        }
        // glibc in C asks the proxy; anything in N asks unbound; nothing asks the host's resolver.
        self.set_resolver(c, PROXY_V4);
        self.set_resolver(n, UNBOUND_V4);

        self.host(&[
            "ip", "link", "add", &veth_c, "netns", c, "type", "veth", "peer", "name", &veth_n,
            "netns", n,
        ])
        .assert_success();
        for (ns, dev, addrs) in [
            (c, &veth_c, &["192.0.2.2/24", "2001:db8::2/64"][..]),
            (
                n,
                &veth_n,
                &[
                    "192.0.2.1/24",
                    "2001:db8::1/64",
                    "192.0.2.53/24",
                    "2001:db8::53/64",
                    "192.0.2.54/24",
                    resolver_lab::DNSDIST_V4_CIDR,
                ][..],
            ),
        ] {
            for addr in addrs {
                self.exec_in(ns, &["ip", "addr", "add", addr, "dev", dev, "nodad"])
                    .assert_success();
            }
            self.exec_in(ns, &["ip", "link", "set", dev, "up"])
                .assert_success();
        }
        self.exec_in(
            c,
            &["ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.1"],
        )
        .assert_success();
        self.exec_in(n, &["ip", "route", "add", "blackhole", DEAD_SILENT])
            .assert_success();
    }

    fn generate_keys(&self) -> KeyPair {
        let ns = &self.network_ns;
        let private = self
            .exec_in(ns, &["wg", "genkey"])
            .assert_success()
            .stdout
            .trim()
            .to_owned();
        let key_file = self.write_file("key.tmp", &private);
        let public = self
            .exec_in(
                ns,
                &["bash", "-c", "wg pubkey < \"$1\"", "-", path_str(&key_file)],
            )
            .assert_success()
            .stdout
            .trim()
            .to_owned();
        KeyPair { private, public }
    }

    /// Waits up to [`DAEMON_START_TIMEOUT`] until `dig @server args... +short` in `ns` prints
    /// exactly `expected`; returns whether it did.
    pub(crate) fn wait_for_short_answer(
        &self,
        ns: &str,
        server: &str,
        args: &[&str],
        expected: &str,
    ) -> bool {
        let mut args = args.to_vec();
        args.push("+short");
        wait_until(DAEMON_START_TIMEOUT, || {
            self.dig(ns, server, &args).stdout.trim() == expected
        })
    }

    /// Starts the outside unbound in N (again, after [`Lab::stop_unbound`]) and waits until it
    /// answers.
    pub fn start_unbound(&self) {
        // The zone (and the promise never to recurse) lives in lab/unbound-zone.conf.
        let plain = format!(
            r#"server:
    do-daemonize: no
    chroot: ""
    username: ""
    pidfile: ""
    directory: "{dir}"
    use-syslog: no
    logfile: ""
    verbosity: 0
    num-threads: 1
    port: 53
    interface: {UNBOUND_V4}
    interface: {UNBOUND_V6}
    do-ip6: yes
    access-control: 0.0.0.0/0 allow
    access-control: ::/0 allow
    do-not-query-localhost: yes
    module-config: "iterator"
include: "{UNBOUND_ZONE}"
remote-control:
    control-enable: no
"#,
            dir = self.dir.display(),
        );
        let config = self.instrument_unbound_config(plain);
        let config_path = self.write_file("unbound.conf", &config);
        let ns = &self.network_ns;
        self.spawn_daemon_in(
            ns,
            "unbound",
            &["unbound", "-d", "-c", path_str(&config_path)],
        );
        let answered = self.wait_for_short_answer(ns, UNBOUND_V4, &[WWW_NAME, "A"], WWW_A);
        assert!(
            answered,
            "unbound did not start answering:\n{}{}",
            self.daemon_output("unbound"),
            self.unbound_log()
        );
    }

    /// wireguard-go in N: the peer every client in C talks to.
    fn start_peer(&self) {
        let (ns, iface) = (&self.network_ns, &self.peer_iface);
        self.start_wireguard_go(
            ns,
            iface,
            &self.peer_key.private,
            Some(51820),
            "10.99.0.1/24",
            "fd99::1/64",
        );
        self.exec_in(
            ns,
            &[
                "wg",
                "set",
                iface,
                "peer",
                &self.client_key.public,
                "allowed-ips",
                "10.99.0.2/32,fd99::2/128",
            ],
        )
        .assert_success();
    }

    fn start_wireguard_go(
        &self,
        ns: &str,
        iface: &str,
        private_key: &str,
        listen_port: Option<u16>,
        addr_v4: &str,
        addr_v6: &str,
    ) {
        self.uapi_ifaces.borrow_mut().push(iface.to_owned());
        self.spawn_daemon_in(
            ns,
            &format!("wireguard-go {iface}"),
            &[
                "env",
                "WG_PROCESS_FOREGROUND=1",
                "wireguard-go",
                "-f",
                iface,
            ],
        );
        let socket = uapi_socket(iface);
        assert!(
            wait_until(DAEMON_START_TIMEOUT, || socket.exists()),
            "wireguard-go {iface} did not create {}:\n{}",
            socket.display(),
            self.daemon_output(&format!("wireguard-go {iface}"))
        );
        let key_file = self.write_file(&format!("{iface}.key"), private_key);
        let mut set = vec!["wg", "set", iface, "private-key", path_str(&key_file)];
        let port = listen_port.map(|port| port.to_string());
        if let Some(port) = &port {
            set.extend(["listen-port", port]);
        }
        self.exec_in(ns, &set).assert_success();
        self.exec_in(ns, &["ip", "addr", "add", addr_v4, "dev", iface])
            .assert_success();
        self.exec_in(ns, &["ip", "addr", "add", addr_v6, "dev", iface, "nodad"])
            .assert_success();
        self.exec_in(ns, &["ip", "link", "set", iface, "up"])
            .assert_success();
    }

    /// The baseline client: wireguard-go in C with tundns's keys and addresses.
    pub fn start_wireguard_go_client(&self) {
        let (ns, iface) = (&self.client_ns, format!("{}g", self.id));
        self.start_wireguard_go(
            ns,
            &iface,
            &self.client_key.private,
            None,
            "10.99.0.2/24",
            "fd99::2/64",
        );
        self.exec_in(
            ns,
            &[
                "wg",
                "set",
                &iface,
                "peer",
                &self.peer_key.public,
                "endpoint",
                PEER_ENDPOINT,
                "allowed-ips",
                "10.99.0.0/24,fd99::/64",
            ],
        )
        .assert_success();
    }

    /// A wg-quick config for tundns in C, talking to the lab's peer.
    pub fn client_config(&self, options: &ClientConfig) -> String {
        let lines =
            |lines: &[String]| -> String { lines.iter().map(|line| format!("{line}\n")).collect() };
        let keepalive = options
            .persistent_keepalive
            .map(|seconds| format!("PersistentKeepalive = {seconds}\n"))
            .unwrap_or_default();
        let allowed_ips = ["10.99.0.0/24", "fd99::/64"]
            .into_iter()
            .chain(options.extra_allowed_ips.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(", ");
        let mut config = format!(
            "[Interface]\nPrivateKey = {private}\nAddress = 10.99.0.2/24, fd99::2/64\nMTU = 1420\n{interface}\n\
             [Peer]\nPublicKey = {public}\nEndpoint = {PEER_ENDPOINT}\n\
             AllowedIPs = {allowed_ips}\n{keepalive}{peer}\n\
             [DNSProxy]\nAddress = {PROXY_V4}, {PROXY_V6}\nUpstream = {upstreams}\nTimeout = {timeout}\n",
            private = self.client_key.private,
            interface = lines(&options.interface_lines),
            public = self.peer_key.public,
            peer = lines(&options.peer_lines),
            upstreams = options.upstreams.join(", "),
            timeout = options.timeout,
        );
        config.push_str(&lines(&options.dns_proxy_lines));
        for route in &options.routes {
            config.push_str(&route.section());
        }
        config
    }

    /// Writes `config` as `<tundns_iface>.conf` and returns its path.
    pub fn write_client_config(&self, config: &str) -> PathBuf {
        self.write_file(&format!("{}.conf", self.tundns_iface), config)
    }

    /// Runs `tundns up PATH` once in C (at most 10 s) and asserts that it fails at start-up:
    /// it exits, non-zero. Returns the run for the caller's checks of what it said.
    #[track_caller]
    pub fn up_fails(&self, path: &Path) -> Run {
        let run = self.exec_in_with_timeout(
            &self.client_ns,
            &[tundns_bin(), "up", path_str(path)],
            Duration::from_secs(10),
        );
        assert!(
            !run.timed_out() && !run.succeeded(),
            "`tundns up` must fail:\n{run}"
        );
        run
    }

    /// Runs `tundns up` with `config` in C and waits (at most 10 s) until `wg show` answers and
    /// both virtual IPs are routable in C (UAPI may come up before the routes do).
    pub fn start_tundns(&self, config: &str) -> Daemon {
        self.start_tundns_with(tundns_bin(), config)
    }

    /// As [`Lab::start_tundns`], with another program that takes `up CONFIG` or `CONFIG`
    /// (an example built on the tundns library).
    pub fn start_tundns_with(&self, program: &str, config: &str) -> Daemon {
        let path = self.write_client_config(config);
        self.uapi_ifaces
            .borrow_mut()
            .push(self.tundns_iface.clone());
        let (ns, iface) = (&self.client_ns, &self.tundns_iface);
        let command: Vec<&str> = if program == tundns_bin() {
            vec![program, "up", path_str(&path)]
        } else {
            vec![program, path_str(&path)]
        };
        let mut tundns = self.spawn_in(ns, "tundns", &command);
        // Up once tundns says so (after the control socket and PostUp), `wg` answers and
        // both virtual IPs are routable. (An example may log nothing.)
        let says_up =
            |tundns: &Daemon| program != tundns_bin() || tundns.output().contains("tunnel up");
        let up = wait_until(DAEMON_START_TIMEOUT, || {
            !tundns.is_running()
                || (says_up(&tundns)
                    && self.exec_in(ns, &["wg", "show", iface]).succeeded()
                    && [PROXY_V4, PROXY_V6]
                        .iter()
                        .all(|vip| self.exec_in(ns, &["ip", "route", "get", vip]).succeeded()))
        });
        if let Some(status) = tundns.exit_status() {
            panic!("tundns exited at start-up ({status}):\n{}", tundns.output());
        }
        assert!(
            up,
            "`wg show {iface}` or the routes to the virtual IPs missing after \
             {DAEMON_START_TIMEOUT:?}:\n{}",
            tundns.output()
        );
        tundns
    }

    /// Runs tundns with the default client config.
    pub fn start_default_tundns(&self) -> Daemon {
        let config = self.client_config(&ClientConfig::default());
        self.start_tundns(&config)
    }

    /// Pings `target` from `ns` until one echo comes back (at most 10 s: the first packet may
    /// wait for the handshake).
    #[track_caller]
    pub fn assert_ping(&self, ns: &str, target: &str) {
        let mut last = None;
        let answered = wait_until(Duration::from_secs(10), || {
            let run = self.exec_in(ns, &["ping", "-n", "-c", "1", "-W", "1", target]);
            let ok = run.succeeded();
            last = Some(run);
            ok
        });
        assert!(
            answered,
            "no echo reply from {target} in {ns}:\n{}",
            last.expect("ran once")
        );
    }

    /// The client's counters as seen by the wireguard-go peer in N.
    pub fn peer_transfer_counters(&self) -> Transfer {
        let (ns, iface) = (&self.network_ns, &self.peer_iface);
        let run = self.exec_in(ns, &["wg", "show", iface, "transfer"]);
        run.assert_success();
        let line = run
            .stdout
            .lines()
            .find(|line| line.starts_with(&self.client_key.public))
            .unwrap_or_else(|| panic!("the client is not a peer of {iface}:\n{run}"));
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|field| field.parse().expect("a byte counter"))
            .collect();
        Transfer {
            received: fields[0],
            sent: fields[1],
        }
    }

    /// The client's private key (base64), to prove it never comes out anywhere.
    pub fn client_private_key(&self) -> &str {
        &self.client_key.private
    }

    /// `wg set` on the peer, for its entry of the client: `settings` such as
    /// `["preshared-key", FILE]`.
    pub fn set_client_on_peer(&self, settings: &[&str]) {
        let mut command = vec![
            "wg",
            "set",
            &self.peer_iface,
            "peer",
            &self.client_key.public,
        ];
        command.extend_from_slice(settings);
        self.exec_in(&self.network_ns, &command).assert_success();
    }

    pub fn client_public_key(&self) -> &str {
        &self.client_key.public
    }

    pub fn peer_public_key(&self) -> &str {
        &self.peer_key.public
    }

    /// Points glibc in `ns` at `nameserver` (a bind-mounted /etc/netns/<ns>/resolv.conf).
    pub fn set_resolver(&self, ns: &str, nameserver: &str) {
        fs::write(
            self.etc_netns(ns).join("resolv.conf"),
            format!("nameserver {nameserver}\noptions timeout:2 attempts:1\n"),
        )
        .expect("write the namespace's resolv.conf");
    }

    /// `dig @server args...` in `ns`: one try, two seconds, so a lost answer is a fast failure.
    pub fn dig(&self, ns: &str, server: &str, args: &[&str]) -> Run {
        let at_server = format!("@{server}");
        let mut command = vec!["dig", &at_server, "+tries=1", "+time=2"];
        command.extend_from_slice(args);
        self.exec_in(ns, &command)
    }

    /// Runs a command inside `ns` (bounded by 20 s).
    pub fn exec_in(&self, ns: &str, command: &[&str]) -> Run {
        self.exec_in_with_timeout(ns, command, COMMAND_TIMEOUT)
    }

    pub fn exec_in_with_timeout(&self, ns: &str, command: &[&str], timeout: Duration) -> Run {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(command);
        self.run(&full, timeout)
    }

    /// Starts a long-running command inside `ns`; its output goes to a log in the lab directory.
    pub fn spawn_in(&self, ns: &str, name: &str, command: &[&str]) -> Daemon {
        let log = self.dir.join(format!("{}.log", name.replace(' ', "-")));
        let out = File::create(&log).expect("create a daemon log");
        let err = out.try_clone().expect("clone a log handle");
        // Its own process group, so that a power cut can be played by killing it whole.
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(command)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|error| panic!("spawn {command:?} in {ns}: {error}"));
        Daemon {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// Starts a daemon whose lifetime the lab manages (stopped at teardown).
    pub fn spawn_daemon_in(&self, ns: &str, name: &str, command: &[&str]) {
        let daemon = self.spawn_in(ns, name, command);
        self.daemons.borrow_mut().push(daemon);
    }

    /// Writes a file in the lab directory and returns its path.
    pub fn write_file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.join(name);
        fs::write(&path, contents).expect("write a lab file");
        path
    }

    /// Runs a host command (namespace management only: it sends no packets).
    fn host(&self, command: &[&str]) -> Run {
        self.run(command, COMMAND_TIMEOUT)
    }

    fn run(&self, command: &[&str], timeout: Duration) -> Run {
        let number = self.runs.fetch_add(1, Ordering::Relaxed);
        let stdout_path = self.dir.join(format!("run{number}.out"));
        let stderr_path = self.dir.join(format!("run{number}.err"));
        let started = Instant::now();
        let mut child = Command::new(command[0])
            .args(&command[1..])
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("create a stdout file"))
            .stderr(File::create(&stderr_path).expect("create a stderr file"))
            .spawn()
            .unwrap_or_else(|error| panic!("spawn {command:?}: {error}"));
        let mut status = None;
        wait_until(timeout, || {
            status = child.try_wait().expect("poll a child");
            status.is_some()
        });
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let run = Run {
            command: command.join(" "),
            status,
            stdout: fs::read_to_string(&stdout_path).unwrap_or_default(),
            stderr: fs::read_to_string(&stderr_path).unwrap_or_default(),
            elapsed: started.elapsed(),
        };
        let _ = fs::remove_file(stdout_path);
        let _ = fs::remove_file(stderr_path);
        run
    }

    fn daemon_output(&self, name: &str) -> String {
        self.daemons
            .borrow()
            .iter()
            .filter(|daemon| daemon.name == name)
            .map(Daemon::output)
            .collect()
    }

    /// Where tundns in C keeps its lock, control socket and kernel-state journal: C is a
    /// named network namespace, which gets its own directory.
    pub fn run_dir(&self) -> PathBuf {
        Path::new("/run/tundns/netns").join(&self.client_ns)
    }

    /// Where tundns in C keeps its DNS journal and resolv.conf backup.
    pub fn state_dir(&self) -> PathBuf {
        Path::new("/var/lib/tundns/netns").join(&self.client_ns)
    }

    fn etc_netns(&self, ns: &str) -> PathBuf {
        Path::new("/etc/netns").join(ns)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Stop the daemons first, so wireguard-go removes its own interface and socket.
        self.daemons.borrow_mut().clear();
        for ns in [self.client_ns.clone(), self.network_ns.clone()] {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
            let _ = fs::remove_dir_all(self.etc_netns(&ns));
        }
        for iface in self.uapi_ifaces.borrow().iter() {
            let _ = fs::remove_file(uapi_socket(iface));
        }
        // What tundns in C kept (a test that SIGKILLed it leaves its control socket and maybe
        // state files): C's own directories, removed as an operator would.
        let _ = fs::remove_dir_all(self.run_dir());
        let _ = fs::remove_dir_all(self.state_dir());
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl KeyPair {
    fn empty() -> KeyPair {
        KeyPair {
            private: String::new(),
            public: String::new(),
        }
    }
}

/// The UAPI socket `wg` uses for a userspace interface. Not per namespace: names must be unique.
pub fn uapi_socket(iface: &str) -> PathBuf {
    Path::new("/var/run/wireguard").join(format!("{iface}.sock"))
}

pub fn tundns_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tundns")
}

pub fn unix_time_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("lab paths are UTF-8")
}

//! The fault matrix (issue 13, section 3): tundns killed with SIGKILL at random moments,
//! during start-up, under DNS load and during a reload, 100 times in a row. After each kill
//! its watchdog alone must give everything back within 2 s: the namespace's resolv.conf
//! byte for byte, the full tunnel's policy rules, nftables tables and sysctl, the proxies'
//! listener tables, the interface and its routes, the crash journal's records and both
//! sockets; and `tundns status` must say the tunnel is not running.
//!
//! Run as root: `TUNDNS_E2E=1 cargo test -p tundns --test crash`. `TUNDNS_CRASH_SEED`
//! replays a run (its seed is printed first).

mod common;

use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::full_tunnel_lab::*;
use common::*;

const KILLS: usize = 100;
/// Kills that must land on a tunnel fully up, with the resolver pointed at it: the matrix
/// proves nothing if `up` never got that far.
const MIN_KILLS_WHILE_UP: usize = 20;
/// A kill lands this long after `tundns up` is started, at most.
const LATEST_KILL_MS: u64 = 1_500;
/// Half the kills land this early: start-up takes about 100–300 ms here.
const EARLY_KILL_MS: u64 = 300;
/// How long the watchdog has to give everything back.
const RESTORE_DEADLINE: Duration = Duration::from_secs(2);
/// The load's bound in time, whatever happens to the test.
const LOAD_SECONDS: &str = "600";

const SRC_VALID_MARK: &str = "net.ipv4.conf.all.src_valid_mark";
/// What the namespace's resolv.conf holds before any run: only a byte-for-byte restore
/// gives it back.
const ORIGINAL: &str = "# crash lab\nnameserver 192.0.2.53\noptions timeout:1 attempts:1";

/// A small xorshift generator: the test needs spread, not quality, and a seed to replay.
struct Moments(u64);

impl Moments {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

struct CrashLab {
    lab: Lab,
    rules_before: Vec<String>,
}

impl CrashLab {
    fn new(test: &str) -> Option<CrashLab> {
        let missing: Vec<&str> = ["nft", "dig"]
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
        let lab = lab_or_skip(test)?;
        lab.reach_network_only_by_default_routes();
        lab.exec_in(
            &lab.client_ns,
            &["sysctl", "-qw", &format!("{SRC_VALID_MARK}=0")],
        )
        .assert_success();
        let rules_before = lab.policy_rules(&lab.client_ns);
        let crash_lab = CrashLab { lab, rules_before };
        fs::write(crash_lab.resolv_conf_path(), ORIGINAL).expect("write resolv.conf");
        Some(crash_lab)
    }

    fn resolv_conf_path(&self) -> PathBuf {
        PathBuf::from("/etc/netns")
            .join(&self.lab.client_ns)
            .join("resolv.conf")
    }

    /// A full tunnel that points the system at the proxy, with a block list to reload and
    /// a SOCKS5 proxy on the virtual IP (its listeners' nftables table).
    fn config(&self) -> String {
        let block_list = self.lab.write_file("block.txt", "ads.crash.example\n");
        let options = ClientConfig {
            dns_proxy_lines: vec![format!("BlockList = {}", path_str(&block_list))],
            ..ClientConfig::default()
        };
        format!(
            "{}\n[Proxy]\nSOCKS5 = {PROXY_V4}:1080\n",
            self.lab.full_tunnel_client_config(&options).replacen(
                "MTU = 1420\n",
                &format!("MTU = 1420\nDNS = {PROXY_V4}\n"),
                1
            )
        )
    }

    /// What the killed run still has on the system; empty once all is given back.
    fn left_behind(&self) -> Vec<String> {
        let (c, iface) = (&self.lab.client_ns, &self.lab.tundns_iface);
        let mut left = Vec::new();
        let resolv_conf = fs::read_to_string(self.resolv_conf_path()).unwrap_or_default();
        if resolv_conf != ORIGINAL {
            left.push(format!("resolv.conf:\n{resolv_conf}"));
        }
        for file in [
            self.lab.run_dir().join(format!("{iface}.policy-state")),
            self.lab.state_dir().join(format!("{iface}.dns-state")),
            self.lab
                .state_dir()
                .join(format!("resolv.conf.tundns-{iface}")),
            self.lab.run_dir().join(format!("{iface}.sock")),
            PathBuf::from(format!("/var/run/wireguard/{iface}.sock")),
        ] {
            if fs::symlink_metadata(&file).is_ok() {
                left.push(file.display().to_string());
            }
        }
        let rules = self.lab.policy_rules(c);
        if rules != self.rules_before {
            left.push(format!("policy rules: {rules:#?}"));
        }
        let tables = self.lab.exec_in(c, &["nft", "list", "tables"]).stdout;
        if tables.contains("tundns") {
            left.push(format!("nftables: {tables}"));
        }
        if self.lab.sysctl(c, SRC_VALID_MARK) != "0" {
            left.push(SRC_VALID_MARK.to_string());
        }
        if self
            .lab
            .exec_in(c, &["ip", "link", "show", iface])
            .succeeded()
        {
            left.push(format!("interface {iface}"));
        }
        let routes = self.lab.routes_in_table(c, FULL_TUNNEL_TABLE);
        if !routes.is_empty() {
            left.push(format!("routes: {routes:#?}"));
        }
        left
    }
}

#[test]
fn a_hundred_sigkills_at_random_moments_each_leave_nothing_within_two_seconds() {
    let lab = lab!(with CrashLab::new);
    let seed = std::env::var("TUNDNS_CRASH_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("TUNDNS_CRASH_SEED={seed}");
    let mut moments = Moments(seed);
    let (c, iface) = (lab.lab.client_ns.clone(), lab.lab.tundns_iface.clone());
    let config = lab.lab.write_client_config(&lab.config());
    // Load from the start: while tundns is down, its queries fail fast and it goes on.
    let load = format!(
        "for i in $(seq 1 1000000); do dig +tries=1 +time=1 @{PROXY_V4} www.lab.test >/dev/null; done"
    );
    lab.lab.spawn_daemon_in(
        &c,
        "dns load",
        &["timeout", LOAD_SECONDS, "bash", "-c", &load],
    );

    let mut slowest = Duration::ZERO;
    let mut during_reload = 0;
    let mut while_up = 0;
    for kill in 0..KILLS {
        let mut tundns = lab.lab.spawn_in(
            &c,
            &format!("tundns {kill}"),
            &[tundns_bin(), "up", path_str(&config)],
        );
        let latest = if moments.next(2) == 0 {
            EARLY_KILL_MS
        } else {
            LATEST_KILL_MS
        };
        let moment = Duration::from_millis(moments.next(latest));
        let reload = moments.next(4) == 0;
        if reload {
            thread::sleep(moment.saturating_sub(Duration::from_millis(5)));
            tundns.signal("HUP");
            thread::sleep(Duration::from_millis(5));
            during_reload += 1;
        } else {
            thread::sleep(moment);
        }
        let was_running = tundns.is_running();
        let killed = Instant::now();
        tundns.kill_alone();
        let output = tundns.output();
        // Each `up` must get the interface: the last one's watchdog has let go.
        assert!(
            !output.contains("still restoring") && !output.contains(" runs "),
            "kill {kill}: `up` was refused:\n{output}"
        );
        if output.contains("system resolver points at the tunnel") {
            while_up += 1;
        }
        let mut left = Vec::new();
        let restored = wait_until(RESTORE_DEADLINE, || {
            left = lab.left_behind();
            left.is_empty()
        });
        assert!(
            restored,
            "kill {kill} ({moment:?} after start, running: {was_running}, reload: {reload}, \
             seed {seed}): still there after {RESTORE_DEADLINE:?}: {left:#?}\n--- tundns\n{}",
            tundns.output()
        );
        slowest = slowest.max(killed.elapsed());
        let status = lab
            .lab
            .exec_in(&c, &[tundns_bin(), "status", iface.as_str()]);
        assert!(
            !status.succeeded() && status.stderr.contains("is not running"),
            "kill {kill}: {status}"
        );
        assert!(
            !tundns.output().contains("panicked"),
            "kill {kill}: {}",
            tundns.output()
        );
    }
    eprintln!(
        "{KILLS} kills ({} during start-up, {during_reload} during a reload): \
         everything given back, the slowest in {slowest:?}",
        KILLS - while_up
    );
    assert!(
        while_up >= MIN_KILLS_WHILE_UP,
        "only {while_up} kills landed on a tunnel that was up"
    );
}

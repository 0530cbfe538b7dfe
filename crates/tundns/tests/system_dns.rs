//! The system resolver, end to end: tundns in the client namespace rewrites that namespace's
//! own resolv.conf (`ip netns exec` bind-mounts `/etc/netns/<ns>/resolv.conf` over
//! `/etc/resolv.conf`, so nothing outside the lab is touched) and gives it back byte for byte:
//! on SIGTERM, with `tundns reset` after a SIGKILL, or at the next `tundns up`. A state
//! file tundns did not write, or a resolv.conf someone else rewrote, is left alone.
//!
//! The namespace has neither systemd-resolved nor resolvconf to itself, so the file backend
//! runs here; the other backends' commands are unit-tested in `system_dns.rs`.

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use common::{
    ClientConfig, Daemon, Lab, PROXY_V4, UNBOUND_V4, WWW_A, WWW_NAME, lab, lab_or_skip, path_str,
    tundns_bin, wait_until,
};

/// What the namespace's resolv.conf holds before tundns runs: odd spacing, a tab and no final
/// newline, so that only a byte-for-byte restore passes.
const ORIGINAL: &str = "# the lab's own resolver \t\nnameserver 192.0.2.53\nsearch home.example\noptions timeout:2 attempts:1";
/// A name only the proxy knows (a local record), so answering it proves the proxy answered.
const PROXY_ONLY_NAME: &str = "proxy-only.lab.internal";
const PROXY_ONLY_A: &str = "10.99.0.77";
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The lab with its resolv.conf; the files tundns keeps go with the lab's directories.
struct DnsLab {
    lab: Lab,
}

impl DnsLab {
    fn new(test: &str) -> Option<DnsLab> {
        let lab = lab_or_skip(test)?;
        let dns_lab = DnsLab { lab };
        dns_lab.write_resolv_conf(ORIGINAL);
        Some(dns_lab)
    }

    fn resolv_conf_path(&self) -> PathBuf {
        PathBuf::from("/etc/netns")
            .join(&self.lab.client_ns)
            .join("resolv.conf")
    }

    fn resolv_conf(&self) -> String {
        fs::read_to_string(self.resolv_conf_path()).expect("read the namespace's resolv.conf")
    }

    fn write_resolv_conf(&self, text: &str) {
        fs::write(self.resolv_conf_path(), text).expect("write the namespace's resolv.conf");
    }

    fn state_path(&self) -> PathBuf {
        self.lab
            .state_dir()
            .join(format!("{}.dns-state", self.lab.tundns_iface))
    }

    fn backup_path(&self) -> PathBuf {
        self.lab
            .state_dir()
            .join(format!("resolv.conf.tundns-{}", self.lab.tundns_iface))
    }

    /// The lab's client config with `DNS = <proxy>, lab.test` and a proxy-only record.
    fn config(&self) -> String {
        let options = ClientConfig {
            dns_proxy_lines: vec![format!("Record = {PROXY_ONLY_NAME} A {PROXY_ONLY_A}")],
            ..ClientConfig::default()
        };
        self.lab.client_config(&options).replacen(
            "MTU = 1420\n",
            &format!("MTU = 1420\nDNS = {PROXY_V4}, lab.test\n"),
            1,
        )
    }

    /// Starts tundns and waits until it has pointed the namespace at the proxy.
    fn start(&self, config: &str) -> Daemon {
        let tundns = self.lab.start_tundns(config);
        let applied = wait_until(APPLY_TIMEOUT, || {
            self.resolv_conf()
                .contains(&format!("nameserver {PROXY_V4}\n"))
        });
        assert!(
            applied,
            "resolv.conf not pointed at the proxy:\n{}\n--- tundns\n{}",
            self.resolv_conf(),
            tundns.output()
        );
        tundns
    }

    /// Where `path` goes when tundns retires it.
    fn retired(&self, path: &std::path::Path) -> PathBuf {
        PathBuf::from(format!("{}.retired", path.display()))
    }

    fn tundns(&self, args: &[&str]) -> common::Run {
        let mut command = vec![tundns_bin()];
        command.extend_from_slice(args);
        self.lab.exec_in(&self.lab.client_ns, &command)
    }

    #[track_caller]
    fn assert_restored(&self) {
        assert_eq!(
            self.resolv_conf(),
            ORIGINAL,
            "resolv.conf not restored byte for byte"
        );
        assert!(
            !self.state_path().exists(),
            "the state file outlived the restore"
        );
        assert!(
            !self.backup_path().exists(),
            "the backup outlived the restore"
        );
    }

    #[track_caller]
    fn getent(&self, name: &str) -> String {
        let run = self
            .lab
            .exec_in(&self.lab.client_ns, &["getent", "ahosts", name]);
        run.assert_success();
        run.stdout
    }
}

#[test]
fn up_points_the_system_at_the_proxy_and_sigterm_restores_it_byte_for_byte() {
    let lab = lab!(with DnsLab::new);
    let mut tundns = lab.start(&lab.config());

    let written = lab.resolv_conf();
    let body: Vec<&str> = written
        .lines()
        .filter(|line| !line.starts_with('#'))
        .collect();
    assert_eq!(
        body,
        [
            "nameserver 10.30.30.30",
            "search lab.test home.example",
            "options timeout:2 attempts:1"
        ],
        "{written}"
    );
    assert_eq!(fs::read_to_string(lab.backup_path()).unwrap(), ORIGINAL);
    let state = fs::read_to_string(lab.state_path()).expect("a state file while up");
    assert!(state.contains("\"backend\": \"file\""), "{state}");

    // glibc asks the proxy: a name only the proxy knows resolves, and a short name gets the
    // search domain from `DNS =` before the proxy forwards it to unbound.
    assert!(lab.getent(PROXY_ONLY_NAME).contains(PROXY_ONLY_A));
    assert!(lab.getent("www").contains(WWW_A));

    // Each step is said, as wg-quick says it.
    let iface = &lab.lab.tundns_iface;
    for step in [
        format!("[#] ip tuntap add mode tun {iface}; ip link set mtu 1420 dev {iface}"),
        format!("[#] ip -4 address add 10.99.0.2/24 dev {iface}"),
        format!("[#] ip link set up dev {iface}"),
        format!("[#] ip -4 route add 10.30.30.30/32 dev {iface}"),
        format!(
            "[#] rewrite /etc/resolv.conf (the original is kept in {})",
            lab.backup_path().display()
        ),
    ] {
        assert!(
            tundns.output().contains(&step),
            "no {step:?}:\n{}",
            tundns.output()
        );
    }

    tundns.stop_cleanly(EXIT_TIMEOUT);
    lab.assert_restored();
    assert!(tundns.output().contains("tunnel down"));
}

#[test]
fn sigkill_then_reset_dns_restores_byte_for_byte() {
    let lab = lab!(with DnsLab::new);
    let mut tundns = lab.start(&lab.config());
    tundns.kill_without_cleanup();
    assert_ne!(
        lab.resolv_conf(),
        ORIGINAL,
        "SIGKILL leaves the change behind"
    );
    assert!(lab.state_path().exists());

    let run = lab.tundns(&["reset", &lab.lab.tundns_iface]);
    run.assert_success();
    assert!(run.stdout.contains("restored"), "{run}");
    lab.assert_restored();

    let again = lab.tundns(&["reset", &lab.lab.tundns_iface]);
    again.assert_success();
    assert!(again.stdout.contains("no DNS change to undo"), "{again}");
    assert_eq!(lab.resolv_conf(), ORIGINAL);
}

#[test]
fn reset_dns_takes_the_config_path_too() {
    let lab = lab!(with DnsLab::new);
    let config = lab.config();
    let mut tundns = lab.start(&config);
    tundns.kill_without_cleanup();
    let path = lab.lab.write_client_config(&config);
    // By its old name, which stays.
    lab.tundns(&["reset-dns", path_str(&path)]).assert_success();
    lab.assert_restored();
}

#[test]
fn sigkill_then_up_repairs_at_start_and_restores_at_stop() {
    let lab = lab!(with DnsLab::new);
    let config = lab.config();
    let mut first = lab.start(&config);
    first.kill_without_cleanup();

    let mut second = lab.start(&config);
    assert!(
        second
            .output()
            .contains("system resolver restored (resolv.conf): an earlier run left it changed"),
        "{}",
        second.output()
    );
    // Had the first change not been undone, the backup would now hold tundns's own file.
    assert_eq!(fs::read_to_string(lab.backup_path()).unwrap(), ORIGINAL);
    assert!(lab.getent(PROXY_ONLY_NAME).contains(PROXY_ONLY_A));
    second.stop_cleanly(EXIT_TIMEOUT);
    lab.assert_restored();
}

#[test]
fn a_foreign_state_file_is_left_alone_with_a_clear_message() {
    let lab = lab!(with DnsLab::new);
    let foreign = "{\"backend\": \"file\", \"note\": \"written by someone else\"}\n";
    fs::create_dir_all(lab.lab.state_dir()).unwrap();
    fs::write(lab.state_path(), foreign).unwrap();

    let run = lab.tundns(&["reset", &lab.lab.tundns_iface]);
    assert!(!run.succeeded(), "{run}");
    let state_path = lab.state_path();
    let state_path = path_str(&state_path);
    assert!(
        run.stderr.contains(state_path) && run.stderr.contains("left alone"),
        "{run}"
    );

    // `up` refuses before touching anything: no interface, no resolver change.
    let up = lab
        .lab
        .up_fails(&lab.lab.write_client_config(&lab.config()));
    assert!(up.stderr.contains(state_path), "{up}");
    assert!(
        !lab.lab
            .exec_in(
                &lab.lab.client_ns,
                &["ip", "link", "show", &lab.lab.tundns_iface]
            )
            .succeeded()
    );

    assert_eq!(fs::read_to_string(lab.state_path()).unwrap(), foreign);
    assert_eq!(lab.resolv_conf(), ORIGINAL);
    assert!(!lab.backup_path().exists());

    // A config that changes no DNS is not held back by it: told, and up.
    let mut untouched = lab
        .lab
        .start_tundns(&lab.lab.client_config(&ClientConfig::default()));
    assert!(
        untouched
            .output()
            .contains("leaves the system resolver alone, so it goes on"),
        "{}",
        untouched.output()
    );
    untouched.stop_cleanly(EXIT_TIMEOUT);
    assert_eq!(fs::read_to_string(lab.state_path()).unwrap(), foreign);
    assert_eq!(lab.resolv_conf(), ORIGINAL);
}

/// A resolv.conf rewritten since a crashed run wrote it (dhclient does on every lease) is
/// never overwritten, and never blocks the interface for good: `reset`, or the next `up`,
/// leaves it as it is, keeps tundns's copy of the original and its record as `.retired`,
/// and goes on.
#[test]
fn a_resolv_conf_rewritten_after_a_crash_is_kept_and_up_goes_on() {
    let lab = lab!(with DnsLab::new);
    let mut tundns = lab.start(&lab.config());
    tundns.kill_without_cleanup();
    let theirs = "nameserver 198.51.100.1\n";
    lab.write_resolv_conf(theirs);

    let run = lab.tundns(&["reset", &lab.lab.tundns_iface]);
    run.assert_success();
    assert!(
        run.stdout.contains("changed since tundns wrote it"),
        "{run}"
    );
    assert_eq!(lab.resolv_conf(), theirs);
    // The original is kept where the message says, for the operator to use.
    let original = lab.retired(&lab.backup_path());
    assert_eq!(fs::read_to_string(&original).unwrap(), ORIGINAL);
    assert!(run.stdout.contains(path_str(&original)), "{run}");
    assert!(!lab.state_path().exists() && lab.retired(&lab.state_path()).exists());

    // The same met by `up` itself: it goes on, from the resolv.conf it finds.
    let mut crashed = lab.start(&lab.config());
    crashed.kill_without_cleanup();
    let theirs_again = "nameserver 198.51.100.2\n";
    lab.write_resolv_conf(theirs_again);
    let mut next = lab.start(&lab.config());
    assert!(
        next.output().contains("changed since tundns wrote it"),
        "{}",
        next.output()
    );
    assert!(lab.getent(PROXY_ONLY_NAME).contains(PROXY_ONLY_A));
    next.stop_cleanly(EXIT_TIMEOUT);
    assert_eq!(lab.resolv_conf(), theirs_again);
    assert!(!lab.state_path().exists());
}

/// SIGKILL of tundns alone, as the OOM killer does: its watchdog gives the resolver back
/// byte for byte within 2 s, with no one running `up` or `reset`, and removes the sockets;
/// `tundns status` then says the tunnel is not running.
#[test]
fn after_sigkill_the_watchdog_restores_the_resolver_within_two_seconds() {
    let lab = lab!(with DnsLab::new);
    let mut tundns = lab.start(&lab.config());
    let control = lab
        .lab
        .run_dir()
        .join(format!("{}.sock", lab.lab.tundns_iface));
    assert!(control.exists());
    tundns.kill_alone();
    let restored = wait_until(Duration::from_secs(2), || {
        lab.resolv_conf() == ORIGINAL && !lab.state_path().exists() && !control.exists()
    });
    assert!(
        restored,
        "not restored within 2 s of SIGKILL:\n{}\n--- tundns\n{}",
        lab.resolv_conf(),
        tundns.output()
    );
    lab.assert_restored();
    assert!(
        tundns.output().contains("tundns ended without stopping"),
        "{}",
        tundns.output()
    );
    let status = lab.tundns(&["status", &lab.lab.tundns_iface]);
    assert!(
        !status.succeeded() && status.stderr.contains("is not running"),
        "{status}"
    );
    // The interface is free again at once.
    let mut again = lab.start(&lab.config());
    again.stop_cleanly(EXIT_TIMEOUT);
    lab.assert_restored();
}

/// One tundns per interface: a second `up` is refused with the running one's pid, and so
/// is `reset` while it runs, without touching anything or advising to delete a live file.
#[test]
fn a_second_up_and_a_reset_are_refused_while_the_tunnel_runs() {
    let lab = lab!(with DnsLab::new);
    let config = lab.config();
    let mut tundns = lab.start(&config);
    let written = lab.resolv_conf();
    let pid = format!("pid {}", tundns.pid());

    let second = lab.lab.up_fails(&lab.lab.write_client_config(&config));
    assert!(second.stderr.contains(&pid), "{second}");
    let reset = lab.tundns(&["reset", &lab.lab.tundns_iface]);
    assert!(!reset.succeeded(), "{reset}");
    assert!(
        reset.stderr.contains(&pid)
            && reset.stderr.contains("tundns down")
            && !reset.stderr.contains("remove"),
        "{reset}"
    );
    assert_eq!(lab.resolv_conf(), written);
    assert!(lab.state_path().exists());
    tundns.stop_cleanly(EXIT_TIMEOUT);
    lab.assert_restored();
}

#[test]
fn without_upstream_the_proxy_forwards_to_the_resolvers_the_system_had() {
    let lab = lab!(with DnsLab::new);
    let upstream_line = format!("Upstream = {UNBOUND_V4}\n");
    let config = lab.config();
    assert!(config.contains(&upstream_line));
    let mut tundns = lab.start(&config.replacen(&upstream_line, "", 1));

    assert!(
        tundns.output().contains("using the system's resolvers")
            && tundns.output().contains("192.0.2.53:53"),
        "{}",
        tundns.output()
    );
    // The namespace asks only the proxy now, and only unbound knows www.lab.test: an answer
    // means the proxy forwarded to the resolver the system had, not to itself.
    assert!(!lab.resolv_conf().contains(UNBOUND_V4));
    assert!(lab.getent(WWW_NAME).contains(WWW_A));
    let dig = lab
        .lab
        .dig(&lab.lab.client_ns, PROXY_V4, &[WWW_NAME, "A", "+short"]);
    assert_eq!(dig.stdout.trim(), WWW_A, "{dig}");

    tundns.stop_cleanly(EXIT_TIMEOUT);
    lab.assert_restored();
}

#[test]
fn a_start_up_failure_after_the_change_restores_the_resolver() {
    let lab = lab!(with DnsLab::new);
    // PostUp runs after the resolver is pointed at the proxy; its failure undoes everything.
    let config = lab
        .config()
        .replacen("MTU = 1420\n", "MTU = 1420\nPostUp = exit 3\n", 1);
    let up = lab.lab.up_fails(&lab.lab.write_client_config(&config));
    assert!(up.stderr.contains("exit 3"), "{up}");
    assert!(
        up.stderr.contains("system resolver points at the tunnel"),
        "{up}"
    );
    lab.assert_restored();
}

#[test]
fn set_system_dns_points_the_system_at_every_virtual_address() {
    let lab = lab!(with DnsLab::new);
    let config = lab
        .config()
        .replacen(&format!("DNS = {PROXY_V4}, lab.test\n"), "", 1)
        + "SetSystemDNS = true\n";
    let mut tundns = lab.start(&config);
    let written = lab.resolv_conf();
    assert!(
        written
            .contains("nameserver 10.30.30.30\nnameserver fd30:30:30::30\nsearch home.example\n"),
        "{written}"
    );
    assert!(lab.getent(PROXY_ONLY_NAME).contains(PROXY_ONLY_A));
    tundns.stop_cleanly(EXIT_TIMEOUT);
    lab.assert_restored();
}

/// While tundns is the system resolver, Firefox's canary domain is NXDOMAIN from the proxy
/// itself, so Firefox keeps to the system resolver rather than its own DoH.
#[test]
fn while_tundns_is_the_system_resolver_the_firefox_canary_is_nxdomain() {
    let lab = lab!(with DnsLab::new);
    let mut tundns = lab.start(&lab.config());
    for qtype in ["A", "AAAA"] {
        let run = lab.lab.dig(
            &lab.lab.client_ns,
            PROXY_V4,
            &["use-application-dns.net", qtype],
        );
        assert!(
            run.stdout.contains("status: NXDOMAIN") && run.stdout.contains(" aa "),
            "an authoritative NXDOMAIN from the proxy:\n{run}"
        );
    }
    tundns.stop_cleanly(EXIT_TIMEOUT);
    lab.assert_restored();
}

/// Two network namespaces, one interface name: each tunnel keeps its lock, control socket,
/// journal and resolv.conf backup in its own namespace's directories, so both run, each
/// `tundns status` finds its own, and each stop gives back its own resolv.conf only.
#[test]
fn two_namespaces_may_run_the_same_interface_name() {
    let first = lab!(with DnsLab::new);
    let second = lab!(with DnsLab::new);
    let iface = first.lab.tundns_iface.clone();
    let mut one = first.start(&first.config());
    // The second lab's tunnel, from a file named as the first's interface.
    let path = second
        .lab
        .write_file(&format!("{iface}.conf"), second.config());
    let mut two = second.lab.spawn_in(
        &second.lab.client_ns,
        "tundns second",
        &[tundns_bin(), "up", path_str(&path)],
    );
    let applied = wait_until(APPLY_TIMEOUT, || {
        second
            .resolv_conf()
            .contains(&format!("nameserver {PROXY_V4}\n"))
    });
    assert!(
        applied,
        "the second tunnel did not come up:\n{}",
        two.output()
    );
    for lab in [&first, &second] {
        let status = lab.tundns(&["status", &iface]);
        status.assert_success();
        assert!(
            lab.lab
                .state_dir()
                .join(format!("{iface}.dns-state"))
                .exists()
        );
    }

    two.stop_cleanly(EXIT_TIMEOUT);
    assert_eq!(second.resolv_conf(), ORIGINAL);
    assert!(
        first
            .resolv_conf()
            .contains(&format!("nameserver {PROXY_V4}\n")),
        "stopping the second touched the first's resolver"
    );
    first.tundns(&["status", &iface]).assert_success();
    one.stop_cleanly(EXIT_TIMEOUT);
    first.assert_restored();
}

/// A supervised part that dies stops the tunnel rather than leaving it running without it:
/// with its watchdog killed (and with it the repair and the interface's lock), tundns stops,
/// undoes everything and exits 1, naming what ended.
#[test]
fn the_tunnel_stops_when_its_watchdog_dies() {
    let lab = lab!(with DnsLab::new);
    let mut tundns = lab.start(&lab.config());
    let pid = tundns.pid();
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let watchdog = children.trim().to_owned();
    assert!(
        !watchdog.is_empty() && !watchdog.contains(' '),
        "one child, the watchdog: {children:?}"
    );
    lab.lab
        .exec_in(&lab.lab.client_ns, &["kill", "-KILL", &watchdog])
        .assert_success();
    let status = tundns
        .wait_for_exit(EXIT_TIMEOUT)
        .expect("tundns stops when its watchdog dies");
    assert_eq!(status.code(), Some(1), "{}", tundns.output());
    assert!(
        tundns.output().contains("the watchdog stopped: it ended"),
        "{}",
        tundns.output()
    );
    lab.assert_restored();
}

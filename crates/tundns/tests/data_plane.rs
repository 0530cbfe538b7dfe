//! End-to-end tests of the tunnel's data plane (issue 11): tundns in C against N's real
//! wireguard-go (see `common`), with every byte checked at the far end.
//!
//! - TCP over IPv4 and IPv6: 200 MiB each way, whose SHA-256 the receiver's `sha256sum`
//!   must match;
//! - UDP over IPv4 and IPv6: a paced stream of self-checking datagrams of every size up to
//!   the path MTU, and datagrams of edge sizes (empty, one byte, exactly the MTU, one byte
//!   over, the largest UDP allows), both ways;
//! - ping of every size up to the MTU;
//! - DNS through the virtual IPs while a bulk transfer loads the tunnel both ways: every
//!   query answered, p50/p99 printed.
//!
//! The traffic comes from `common/data_plane.py` (both ends derive the same bytes, so the
//! receiver can check them) and `bench/dns-latency.py`. The tests take turns: each loads
//! the tunnel to its limit, and on a 2-core machine two at once would make their timeouts
//! and loss margins measure each other.
//!
//! Run as root: `TUNDNS_E2E=1 cargo test -p tundns --test data_plane -- --nocapture` (the
//! figures are printed). Without root or the lab tools the tests print "skipped: ..." and
//! pass, unless `TUNDNS_E2E=1`.

mod common;

use common::*;
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

const TRAFFIC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/data_plane.py");
const DNS_LATENCY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/dns-latency.py");

/// The MTU of tundns's interface (`MTU =` in the lab's client config) and wireguard-go's.
const TUNNEL_MTU: usize = 1420;
const PORT: &str = "5301";

const TCP_BYTES: usize = 200 << 20;
/// Far above what a debug build needs here (about 25 s for the slower direction).
const TCP_TIMEOUT: Duration = Duration::from_secs(180);

/// Each size from 4 bytes to the path MTU comes up seven times.
const UDP_STREAM_DATAGRAMS: usize = 10_000;
/// Datagrams per second: with sizes averaging 700 bytes, about 15 Mbit/s, a fraction of
/// what even a debug build carries, so the stream measures correctness, not capacity.
const UDP_STREAM_RATE: &str = "2500";
/// Datagrams of the stream that may go missing: 10 %. The pace is far below capacity, so
/// on an idle machine nothing should be lost. But on a shared 2-core machine tundns or
/// wireguard-go can be off the CPU for a few hundred milliseconds, and the TUN's queue (500
/// packets) and the tunnel sockets' buffers are all that bridges such a gap: at a
/// load average of 8 to 10, runs here lost up to 5 %, every time in the TUN's queue or a
/// tunnel socket's buffer (the failure message shows their drop counters). The margin only
/// catches a collapse; a bug that loses datagrams of some sizes is caught anyway, as every
/// size must arrive at least once, and none may arrive changed or twice.
const UDP_STREAM_MAX_LOST: usize = UDP_STREAM_DATAGRAMS / 10;
/// Times the edge-size datagrams are sent, one every 50 ms (so 300 ms between two copies of
/// a size): each must arrive at least once. A 64 KiB datagram is 47 fragments, any of
/// which a busy machine may drop (see [`UDP_STREAM_MAX_LOST`]); a size that never arrives
/// in three tries is a bug, not bad luck.
const EDGE_COPIES: &str = "3";
const EDGE_RATE: &str = "20";

/// Queries back to back to each virtual IP while the bulk transfer runs, and idle before.
const LOADED_DNS_SECONDS: &str = "2.5";
const IDLE_DNS_SECONDS: &str = "1";
/// An upper bound only: the test stops the bulk transfer once the loaded probes are done.
const BULK_SECONDS: &str = "60";
/// What the bulk transfer must at least move while the loaded probes run, to count as
/// load: a debug build moves 50 MB and more here in that time, even on a busy machine.
const BULK_MIN_BYTES: u64 = 5_000_000;
/// An answer later than this counts as lost: the generous sanity bound on latency.
const DNS_TIMEOUT_SECONDS: &str = "2";

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Opens a test: waits for its turn, then [`lab_with_tundns!`] and the handshake (a ping
/// from C). Bind all three: `let (_turn, lab, _tundns) = tunnel_lab!();`.
macro_rules! tunnel_lab {
    () => {{
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        let (lab, tundns) = lab_with_tundns!();
        lab.assert_ping(&lab.client_ns, PEER_TUNNEL_V4);
        (turn, lab, tundns)
    }};
}

struct Family {
    name: &'static str,
    peer: &'static str,
    client: &'static str,
    /// The IP header plus an ICMP echo or UDP header (both 8 bytes).
    headers: usize,
    /// The largest UDP payload a datagram can carry.
    max_udp_payload: usize,
}

const IPV4: Family = Family {
    name: "IPv4",
    peer: PEER_TUNNEL_V4,
    client: CLIENT_TUNNEL_V4,
    headers: 20 + 8,
    max_udp_payload: 65_535 - 20 - 8,
};

const IPV6: Family = Family {
    name: "IPv6",
    peer: PEER_TUNNEL_V6,
    client: CLIENT_TUNNEL_V6,
    headers: 40 + 8,
    max_udp_payload: 65_535 - 8,
};

impl Family {
    /// The largest ICMP or UDP payload that fills the tunnel's MTU without fragments.
    fn largest_unfragmented(&self) -> usize {
        TUNNEL_MTU - self.headers
    }
}

#[derive(Clone, Copy, Debug)]
enum Direction {
    ClientToPeer,
    PeerToClient,
}

impl Direction {
    const BOTH: [Direction; 2] = [Direction::ClientToPeer, Direction::PeerToClient];

    /// The sending namespace, the receiving one and the receiver's tunnel address.
    fn ends<'a>(self, lab: &'a Lab, family: &Family) -> (&'a str, &'a str, &'static str) {
        match self {
            Direction::ClientToPeer => (&lab.client_ns, &lab.network_ns, family.peer),
            Direction::PeerToClient => (&lab.network_ns, &lab.client_ns, family.client),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TCP.

#[test]
fn tcp_over_ipv4_carries_200_mib_each_way_intact() {
    let (_turn, lab, _tundns) = tunnel_lab!();
    assert_tcp_transfers_intact(&lab, &IPV4);
}

#[test]
fn tcp_over_ipv6_carries_200_mib_each_way_intact() {
    let (_turn, lab, _tundns) = tunnel_lab!();
    assert_tcp_transfers_intact(&lab, &IPV6);
}

/// Sends [`TCP_BYTES`] over one TCP connection each way; the receiver's `sha256sum` of
/// what it read must equal the sender's hash of what it wrote.
fn assert_tcp_transfers_intact(lab: &Lab, family: &Family) {
    for direction in Direction::BOTH {
        assert_tcp_transfer_intact(lab, family, direction);
    }
}

fn assert_tcp_transfer_intact(lab: &Lab, family: &Family, direction: Direction) {
    let (from, to, address) = direction.ends(lab, family);
    let receive =
        format!("set -o pipefail; python3 {TRAFFIC} tcp-receive {address} {PORT} | sha256sum");
    let receiver = start_listener(
        lab,
        to,
        &format!("tcp receiver {direction:?}"),
        &["bash", "-c", &receive],
    );
    let bytes = TCP_BYTES.to_string();
    let send = lab.exec_in_with_timeout(
        from,
        &["python3", TRAFFIC, "tcp-send", address, PORT, &bytes],
        TCP_TIMEOUT,
    );
    send.assert_success();
    let received = finish(receiver, Duration::from_secs(10));
    let sent = field(&send.stdout, "sha256").to_owned();
    let received_hash = received
        .lines()
        .find_map(|line| line.strip_suffix("  -"))
        .unwrap_or_else(|| panic!("no sha256sum from the receiver:\n{received}"));
    assert_eq!(
        received_hash, sent,
        "{} TCP {direction:?}: the bytes changed on the way\nsender: {send}\nreceiver:\n{received}",
        family.name
    );
    let seconds: f64 = field(&send.stdout, "seconds").parse().expect("seconds");
    println!(
        "{} TCP {direction:?}: {} MiB in {seconds:.1} s ({:.0} Mbit/s), sha256 {sent}",
        family.name,
        TCP_BYTES >> 20,
        TCP_BYTES as f64 * 8.0 / seconds / 1e6
    );
}

// ---------------------------------------------------------------------------------------------
// UDP.

#[test]
fn udp_stream_over_ipv4_arrives_intact() {
    let (_turn, lab, _tundns) = tunnel_lab!();
    assert_udp_stream_intact(&lab, &IPV4);
}

#[test]
fn udp_stream_over_ipv6_arrives_intact() {
    let (_turn, lab, _tundns) = tunnel_lab!();
    assert_udp_stream_intact(&lab, &IPV6);
}

/// [`UDP_STREAM_DATAGRAMS`] datagrams of every size up to the path MTU, paced, each way:
/// none may arrive changed or twice, and at most [`UDP_STREAM_MAX_LOST`] may go missing.
fn assert_udp_stream_intact(lab: &Lab, family: &Family) {
    let plan = format!(
        "stream:{UDP_STREAM_DATAGRAMS}:{}",
        family.largest_unfragmented()
    );
    for direction in Direction::BOTH {
        let report = send_udp_plan(lab, family, direction, &plan, UDP_STREAM_RATE, "1");
        assert!(
            report.corrupt == 0 && report.duplicates == 0 && report.sizes_never_arrived == 0,
            "{} UDP {direction:?}: datagrams arrived changed or twice, or some sizes never: {}",
            family.name,
            report.line
        );
        let lost = report.expected - report.distinct;
        assert!(
            lost <= UDP_STREAM_MAX_LOST,
            "{} UDP {direction:?}: {lost} datagrams lost (at most {UDP_STREAM_MAX_LOST} \
             allowed): {}\n{}",
            family.name,
            report.line,
            drop_counters(lab)
        );
        println!(
            "{} UDP stream {direction:?}: {} of {} datagrams intact, {lost} lost",
            family.name, report.distinct, report.expected
        );
    }
}

/// Empty, one byte, exactly the MTU, one byte over (two fragments), 8000 bytes and the
/// largest UDP datagram, over both families and both ways: each arrives intact.
#[test]
fn udp_datagrams_of_edge_sizes_arrive_intact_both_ways() {
    let (_turn, lab, _tundns) = tunnel_lab!();
    for family in [&IPV4, &IPV6] {
        let fills_mtu = family.largest_unfragmented();
        let sizes = [0, 1, fills_mtu, fills_mtu + 1, 8000, family.max_udp_payload];
        let plan = format!("sizes:{}", sizes.map(|size| size.to_string()).join(","));
        for direction in Direction::BOTH {
            let report = send_udp_plan(&lab, family, direction, &plan, EDGE_RATE, EDGE_COPIES);
            assert!(
                report.corrupt == 0 && report.distinct == report.expected,
                "{} UDP {direction:?}, sizes {sizes:?}: not every size arrived intact: {}\n{}",
                family.name,
                report.line,
                drop_counters(&lab)
            );
            println!("{} UDP {direction:?}: sizes {sizes:?} intact", family.name);
        }
    }
}

/// What the UDP receiver of `common/data_plane.py` counted.
struct UdpReport {
    expected: usize,
    distinct: usize,
    duplicates: usize,
    corrupt: usize,
    sizes_never_arrived: usize,
    line: String,
}

/// Sends the datagrams of `plan` at `rate` per second, `copies` times, and returns what the
/// receiver at the far end counted.
fn send_udp_plan(
    lab: &Lab,
    family: &Family,
    direction: Direction,
    plan: &str,
    rate: &str,
    copies: &str,
) -> UdpReport {
    let (from, to, address) = direction.ends(lab, family);
    let receiver = start_listener(
        lab,
        to,
        &format!("udp receiver {direction:?}"),
        &["python3", TRAFFIC, "udp-receive", address, PORT, plan],
    );
    lab.exec_in(
        from,
        &[
            "python3", TRAFFIC, "udp-send", address, PORT, plan, "--rate", rate, "--copies", copies,
        ],
    )
    .assert_success();
    let output = finish(receiver, Duration::from_secs(40));
    let line = output
        .lines()
        .find(|line| line.starts_with("expected="))
        .unwrap_or_else(|| panic!("no report from the UDP receiver:\n{output}"))
        .to_owned();
    let count = |key: &str| -> usize { field(&line, key).parse().expect("a count") };
    UdpReport {
        expected: count("expected"),
        distinct: count("distinct"),
        duplicates: count("duplicates"),
        corrupt: count("corrupt"),
        sizes_never_arrived: count("sizes_never_arrived"),
        line,
    }
}

/// Where datagrams can be dropped on the way: the tunnel interfaces' queues, and the
/// buffer and drop count (`skmem:(... rb<buffer> ... d<drops>)`) of every UDP socket still
/// open in both namespaces, the tunnel's own. (The receiver has closed its socket by then;
/// its 16 MiB buffer holds a whole stream.)
fn drop_counters(lab: &Lab) -> String {
    let counters = [
        (
            &lab.client_ns,
            vec!["ip", "-s", "link", "show", "dev", &lab.tundns_iface],
        ),
        (
            &lab.network_ns,
            vec!["ip", "-s", "link", "show", "dev", &lab.peer_iface],
        ),
        (&lab.client_ns, vec!["ss", "-uanmp"]),
        (&lab.network_ns, vec!["ss", "-uanmp"]),
    ];
    counters
        .iter()
        .map(|(ns, command)| format!("[{ns}] {}", lab.exec_in(ns, command)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Ping.

/// `bash PING_SIZES TARGET SIZE...`: pings TARGET once with each size; prints "lost SIZE"
/// when the first echo goes unanswered, and "fail SIZE: ..." when the retry fails too or
/// comes back with other bytes.
const PING_SIZES: &str = r#"
target=$1
shift
for size; do
    for try in 1 2; do
        out=$(ping -n -c 1 -W 2 -s "$size" "$target" 2>&1) && [[ $out != *"wrong data"* ]] &&
            continue 2
        [[ $try == 1 ]] && echo "lost $size"
    done
    echo "fail $size: $out"
done
"#;

/// Every ICMP payload size from 0 to what fills the MTU, over both families, from C to the
/// peer: eight pings at a time, each size retried once if its echo is lost.
#[test]
fn ping_of_every_size_up_to_the_mtu() {
    let (_turn, lab, _tundns) = tunnel_lab!();
    let c = &lab.client_ns;
    let mtu = lab.exec_in(
        c,
        &["cat", &format!("/sys/class/net/{}/mtu", lab.tundns_iface)],
    );
    assert_eq!(mtu.assert_success().stdout.trim(), TUNNEL_MTU.to_string());
    // The TUN runs with offloads, and the kernel builds no super-packet the filter cannot split.
    let link = lab.exec_in(c, &["ip", "-d", "link", "show", &lab.tundns_iface]);
    let link = &link.assert_success().stdout;
    assert!(
        link.contains("vnet_hdr on"),
        "TUN without offloads:\n{link}"
    );
    assert!(
        link.contains(&format!("gso_max_segs {}", tundns_filter::TUN_MAX_SEGMENTS)),
        "GSO segments not capped:\n{link}"
    );
    let ping_sizes = lab.write_file("ping-sizes.sh", PING_SIZES);
    for family in [&IPV4, &IPV6] {
        let sweep = format!(
            "seq 0 {} | xargs -P 8 -n 50 bash {} {}",
            family.largest_unfragmented(),
            path_str(&ping_sizes),
            family.peer
        );
        let run = lab.exec_in_with_timeout(c, &["bash", "-c", &sweep], Duration::from_secs(60));
        run.assert_success();
        let failed: Vec<&str> = run
            .stdout
            .lines()
            .filter(|line| line.starts_with("fail"))
            .collect();
        assert!(
            failed.is_empty(),
            "{} ping: sizes without an intact echo:\n{}",
            family.name,
            failed.join("\n")
        );
        let lost_once = run
            .stdout
            .lines()
            .filter(|line| line.starts_with("lost"))
            .count();
        println!(
            "{} ping: sizes 0..={} answered in {:.1?} ({lost_once} needed a retry)",
            family.name,
            family.largest_unfragmented(),
            run.elapsed
        );
    }
}

// ---------------------------------------------------------------------------------------------
// DNS under load.

/// iperf3 in both directions at once loads the tunnel; meanwhile queries to both virtual
/// IPs, back to back, are all answered within two seconds. p50/p99 are printed, idle and
/// loaded, not asserted: they measure the machine as much as tundns.
#[test]
fn dns_answers_keep_coming_during_a_bulk_transfer() {
    let (_turn, lab, _tundns) = tunnel_lab!();
    let (c, n) = (&lab.client_ns, &lab.network_ns);
    for proxy in [PROXY_V4, PROXY_V6] {
        probe_dns(&lab, proxy, IDLE_DNS_SECONDS, "idle");
    }
    lab.spawn_daemon_in(n, "iperf3 server", &["iperf3", "-s", "-B", PEER_TUNNEL_V4]);
    let server_listening = wait_until(Duration::from_secs(10), || {
        let listeners = lab.exec_in(n, &["ss", "-Hltn", "sport = :5201"]);
        !listeners.stdout.trim().is_empty()
    });
    assert!(server_listening, "the iperf3 server did not start");
    let mut bulk = lab.spawn_in(
        c,
        "iperf3 bulk",
        &[
            "iperf3",
            "-c",
            PEER_TUNNEL_V4,
            "--bidir",
            "-t",
            BULK_SECONDS,
            "-f",
            "m",
        ],
    );
    thread::sleep(Duration::from_secs(1));
    let (counters_before, started) = (lab.peer_transfer_counters(), Instant::now());
    for proxy in [PROXY_V4, PROXY_V6] {
        probe_dns(&lab, proxy, LOADED_DNS_SECONDS, "during bulk TCP");
    }
    let (moved, elapsed) = (
        lab.peer_transfer_counters().since(counters_before),
        started.elapsed(),
    );
    assert!(
        bulk.is_running() && moved >= BULK_MIN_BYTES,
        "the bulk transfer did not run all along the queries ({moved} bytes moved):\n{}",
        bulk.output()
    );
    println!(
        "bulk: {:.0} MB through the tunnel in {elapsed:.1?} ({:.0} Mbit/s, both ways) while \
         the queries ran",
        moved as f64 / 1e6,
        moved as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
    );
    drop(bulk);
    let after = lab.dig(c, PROXY_V4, &[WWW_NAME, "A", "+short"]);
    assert_eq!(after.stdout.trim(), WWW_A, "{after}");
}

/// Queries `proxy` back to back for `seconds`: every one answered within
/// [`DNS_TIMEOUT_SECONDS`], and the percentiles printed.
fn probe_dns(lab: &Lab, proxy: &str, seconds: &str, condition: &str) {
    let run = lab.exec_in(
        &lab.client_ns,
        &[
            "python3",
            DNS_LATENCY,
            proxy,
            "--count",
            "100000",
            "--warmup",
            "0",
            "--timeout",
            DNS_TIMEOUT_SECONDS,
            "--max-seconds",
            seconds,
        ],
    );
    run.assert_success();
    let answered: usize = field(&run.stdout, "n").parse().expect("a count");
    let lost: usize = field(&run.stdout, "lost").parse().expect("a count");
    assert!(
        lost == 0 && answered > 0,
        "queries to {proxy} went unanswered {condition}:\n{run}"
    );
    println!(
        "DNS at {proxy} {condition}: {answered} answered, p50 {} µs, p99 {} µs, max {} µs",
        field(&run.stdout, "p50"),
        field(&run.stdout, "p99"),
        field(&run.stdout, "max")
    );
}

// ---------------------------------------------------------------------------------------------
// Shared.

/// Starts `command` in `ns` and waits until it says "listening".
fn start_listener(lab: &Lab, ns: &str, name: &str, command: &[&str]) -> Daemon {
    let mut listener = lab.spawn_in(ns, name, command);
    let listening = wait_until(Duration::from_secs(10), || {
        !listener.is_running() || listener.output().contains("listening")
    });
    assert!(
        listening && listener.is_running(),
        "{name} did not start listening:\n{}",
        listener.output()
    );
    listener
}

/// Waits up to `timeout` for `daemon` to exit, asserts that it succeeded, and returns
/// everything it wrote.
fn finish(mut daemon: Daemon, timeout: Duration) -> String {
    let status = daemon.wait_for_exit(timeout);
    let output = daemon.output();
    assert!(
        status.is_some_and(|status| status.success()),
        "a receiver did not finish cleanly ({status:?}):\n{output}"
    );
    output
}

/// The value of `key=value` among the whitespace-separated fields of `text`.
#[track_caller]
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    text.split_whitespace()
        .find_map(|word| word.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {key}= in {text:?}"))
}

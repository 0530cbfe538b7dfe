//! The proxies end to end (issue 12): tundns in C serves SOCKS5 and the HTTP proxy on C's
//! loopback and on the virtual IPs, and their connections reach an HTTP server in N only
//! through the tunnel (the server listens on N's tunnel addresses, which C's host reaches
//! through no route but tundns's own). The listeners on the virtual IPs serve C alone:
//! neither a LAN host whose packets C forwards there nor the tunnel's far side gets in.
//!
//! Real clients: `curl --socks5-hostname`, `curl --socks5`, `curl -x` (forwarding) and
//! `curl -p -x` (CONNECT), and a raw SOCKS5 client (Python) for the reply codes: a blocked
//! name, a closed port, a destination outside every peer's AllowedIPs, an unsupported
//! command and address type, and credentials; the HTTP proxy's statuses for the same.
//!
//! Run as root: `TUNDNS_E2E=1 cargo test -p tundns --test proxy`. Without root or the lab
//! tools the tests print "skipped: ..." and pass, unless `TUNDNS_E2E=1`.

mod common;

use std::os::unix::fs::MetadataExt as _;

use common::resolver_lab::{
    CORP_DB_A, CORP_DB_AAAA, CORP_DB_NAME, TUNNEL_RESOLVER_V4, TUNNEL_RESOLVER_V6,
};
use common::*;

const SOCKS: &str = "127.0.0.1:1080";
const HTTP_PROXY: &str = "http://127.0.0.1:3128";
const VIRTUAL_SOCKS: &str = "10.30.30.30:1080";
const VIRTUAL_SOCKS_V6: &str = "[fd30:30:30::30]:1080";
const VIRTUAL_HTTP_PROXY: &str = "http://10.30.30.30:3128";
const WEB_NAME: &str = "web.lab.internal";
const WEB_PORT: u16 = 8080;
const BLOCKED_NAME: &str = "blocked.lab.test";

/// A raw SOCKS5 client: greets (with `user:password` when given), sends `request` (hex)
/// and prints the reply code, or `closed` when the server hung up.
const SOCKS_CLIENT: &str = r#"
import socket, sys
request, login = bytes.fromhex(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else ""
s = socket.create_connection(("127.0.0.1", 1080), timeout=15)
s.sendall(b"\x05\x01" + (b"\x02" if login else b"\x00"))
method = s.recv(2)
if login:
    user, password = login.split(":")
    s.sendall(bytes([1, len(user)]) + user.encode() + bytes([len(password)]) + password.encode())
    status = s.recv(2)
    if status[1:] != b"\x00":
        print("auth-failed"); sys.exit(0)
elif method[1:] != b"\x00":
    print("method-refused"); sys.exit(0)
s.sendall(request)
reply = s.recv(262)
print(reply[1] if len(reply) > 1 else "closed")
"#;

/// A SOCKS5 CONNECT request (hex) for `host` (a name) and `port`.
fn connect_to_name(host: &str, port: u16) -> String {
    let mut request = vec![5, 1, 0, 3, host.len() as u8];
    request.extend_from_slice(host.as_bytes());
    request.extend_from_slice(&port.to_be_bytes());
    hex(&request)
}

/// A SOCKS5 request (hex) with `command` for the IPv4 address `ip` and `port`.
fn request_to_ipv4(command: u8, ip: [u8; 4], port: u16) -> String {
    let mut request = vec![5, command, 0, 1];
    request.extend_from_slice(&ip);
    request.extend_from_slice(&port.to_be_bytes());
    hex(&request)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The lab with an HTTP server on N's tunnel addresses serving `page`, and tundns in C
/// serving SOCKS5 on C's loopback, with a credentials file of `users` if given.
fn lab_with_proxy(test: &str, page: &str, users: Option<&str>) -> Option<(Lab, Daemon)> {
    lab_with_proxy_and(test, page, users, Vec::new())
}

/// As [`lab_with_proxy`], with more `[Interface]` lines.
fn lab_with_proxy_and(
    test: &str,
    page: &str,
    users: Option<&str>,
    interface_lines: Vec<String>,
) -> Option<(Lab, Daemon)> {
    let lab = lab_or_skip(test)?;
    let credentials = users
        .map(|users| {
            format!(
                "Credentials = {}\n",
                lab.write_file("proxy-users", users).display()
            )
        })
        .unwrap_or_default();
    serve_page(&lab, page);
    let options = ClientConfig {
        dns_proxy_lines: vec![
            format!("Record = {WEB_NAME} A {PEER_TUNNEL_V4}"),
            format!("Record = {WEB_NAME} AAAA {PEER_TUNNEL_V6}"),
            format!("Block = {BLOCKED_NAME}"),
        ],
        interface_lines,
        ..ClientConfig::default()
    };
    let config = format!(
        "{}\n[Proxy]\nSOCKS5 = {SOCKS}, {VIRTUAL_SOCKS}, {VIRTUAL_SOCKS_V6}\n\
         HTTP = 127.0.0.1:3128, 10.30.30.30:3128\n{credentials}",
        lab.client_config(&options)
    );
    let tundns = lab.start_tundns(&config);
    Some((lab, tundns))
}

/// Starts an HTTP server on N's tunnel addresses serving `page` as `/index.html`, and
/// waits until it answers in N.
fn serve_page(lab: &Lab, page: &str) {
    let site = lab.write_file("index.html", page);
    let root = site
        .parent()
        .expect("site dir")
        .to_string_lossy()
        .into_owned();
    lab.spawn_daemon_in(
        &lab.network_ns,
        "http server",
        &[
            "python3",
            "-m",
            "http.server",
            &WEB_PORT.to_string(),
            "--bind",
            "::",
            "--directory",
            &root,
        ],
    );
    let web = format!("{PEER_TUNNEL_V4}:{WEB_PORT}");
    assert!(
        wait_until(std::time::Duration::from_secs(10), || {
            lab.exec_in(&lab.network_ns, &["python3", "-c", &format!(
                "import socket; socket.create_connection(('{PEER_TUNNEL_V4}', {WEB_PORT}), timeout=1)"
            )])
            .succeeded()
        }),
        "the HTTP server in N did not come up at {web}"
    );
}

/// Takes away C's routes to the tunnel's networks, and checks that C can no longer reach
/// N's HTTP server directly: whatever reaches it afterwards went through the proxies.
fn remove_routes_to_the_tunnel(lab: &Lab) {
    lab.exec_in(&lab.client_ns, &["ip", "route", "del", "10.99.0.0/24"])
        .assert_success();
    lab.exec_in(&lab.client_ns, &["ip", "-6", "route", "del", "fd99::/64"])
        .assert_success();
    let direct = lab.exec_in(
        &lab.client_ns,
        &[
            "curl",
            "-sS",
            "--max-time",
            "3",
            &format!("http://{PEER_TUNNEL_V4}:{WEB_PORT}/"),
        ],
    );
    assert!(
        !direct.succeeded(),
        "C reached N's tunnel address without the proxies:\n{direct}"
    );
}

fn socks_reply(lab: &Lab, request: &str, login: Option<&str>) -> String {
    let mut command = vec!["python3", "-c", SOCKS_CLIENT, request];
    command.extend(login);
    let run = lab.exec_in(&lab.client_ns, &command);
    run.assert_success();
    run.stdout.trim().to_owned()
}

#[test]
fn curl_fetches_through_the_tunnel_by_name_and_by_address() {
    let page = "served only inside the tunnel\n".repeat(2000);
    let Some((lab, _tundns)) = lab_with_proxy("proxy_curl", &page, None) else {
        return;
    };
    remove_routes_to_the_tunnel(&lab);

    for (proxy_flag, url) in [
        (
            "--socks5-hostname",
            format!("http://{WEB_NAME}:{WEB_PORT}/index.html"),
        ),
        (
            "--socks5",
            format!("http://{PEER_TUNNEL_V4}:{WEB_PORT}/index.html"),
        ),
        (
            "--socks5",
            format!("http://[{PEER_TUNNEL_V6}]:{WEB_PORT}/index.html"),
        ),
    ] {
        let run = lab.exec_in(
            &lab.client_ns,
            &["curl", "-sS", "--max-time", "10", proxy_flag, SOCKS, &url],
        );
        run.assert_success();
        assert!(
            run.stdout == page,
            "{url} through {proxy_flag}: the page differs"
        );
    }
}

#[test]
fn each_failure_gets_its_socks5_reply_code() {
    let Some((lab, _tundns)) = lab_with_proxy("proxy_replies", "ok\n", None) else {
        return;
    };
    // Succeeded, for comparison.
    assert_eq!(
        socks_reply(&lab, &connect_to_name(WEB_NAME, WEB_PORT), None),
        "0"
    );
    // Rule set: a blocked name.
    assert_eq!(
        socks_reply(&lab, &connect_to_name(BLOCKED_NAME, 80), None),
        "2"
    );
    // Network unreachable: outside every peer's AllowedIPs.
    assert_eq!(
        socks_reply(&lab, &request_to_ipv4(1, [198, 51, 100, 7], 80), None),
        "3"
    );
    // Connection refused: nothing listens on the peer's port; its kernel answers RST.
    assert_eq!(
        socks_reply(&lab, &request_to_ipv4(1, [10, 99, 0, 1], 8081), None),
        "5"
    );
    // Command not supported: BIND.
    assert_eq!(
        socks_reply(&lab, &request_to_ipv4(2, [10, 99, 0, 1], 80), None),
        "7"
    );
    // Address type not supported.
    assert_eq!(socks_reply(&lab, "05010002aabbccdd0050", None), "8");
    // As the far side answers: N routes one tunnel address as unreachable (ICMP host
    // unreachable back through the tunnel) and drops another without a word.
    for command in [
        &["sysctl", "-qw", "net.ipv4.ip_forward=1"][..],
        &["ip", "route", "add", "unreachable", "10.99.0.77/32"][..],
        &["ip", "route", "add", "blackhole", "10.99.0.78/32"][..],
    ] {
        lab.exec_in(&lab.network_ns, command).assert_success();
    }
    // Host unreachable: the ICMP error, at once rather than after the timeout.
    let started = std::time::Instant::now();
    assert_eq!(
        socks_reply(&lab, &request_to_ipv4(1, [10, 99, 0, 77], 80), None),
        "4"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // TTL expired: no answer within the connect timeout (10 s).
    assert_eq!(
        socks_reply(&lab, &request_to_ipv4(1, [10, 99, 0, 78], 80), None),
        "6"
    );
}

#[test]
fn credentials_are_required_when_configured() {
    let users = Some("# proxy users\nalice:s3cret\n");
    let Some((lab, _tundns)) = lab_with_proxy("proxy_credentials", "ok\n", users) else {
        return;
    };
    let request = connect_to_name(WEB_NAME, WEB_PORT);
    assert_eq!(socks_reply(&lab, &request, None), "method-refused");
    assert_eq!(
        socks_reply(&lab, &request, Some("alice:wrong")),
        "auth-failed"
    );
    assert_eq!(socks_reply(&lab, &request, Some("alice:s3cret")), "0");
}

#[test]
fn a_download_arrives_whole_when_the_client_finishes_sending_first() {
    let Some((lab, _tundns)) = lab_with_proxy("proxy_half_close", "ok\n", None) else {
        return;
    };
    // 64 MB of a counting pattern from N's tunnel address, then the sender closes.
    let sender = r#"
import socket
srv = socket.create_server(("10.99.0.1", 5400))
block = bytes(range(256)) * 4096
while True:
    c, _ = srv.accept()
    try:
        for _ in range(64):
            c.sendall(block)
    except OSError:
        pass  # the readiness probe hangs up at once
    c.close()
"#;
    lab.spawn_daemon_in(&lab.network_ns, "sender", &["python3", "-c", sender]);
    let expected = lab
        .exec_in(
            &lab.network_ns,
            &[
                "sh",
                "-c",
                "python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(256)) * 4096 * 64)' | sha256sum",
            ],
        )
        .assert_success()
        .stdout
        .clone();
    assert!(wait_until(std::time::Duration::from_secs(10), || {
        lab.exec_in(
            &lab.network_ns,
            &[
                "python3",
                "-c",
                "import socket; socket.create_connection(('10.99.0.1', 5400), timeout=1)",
            ],
        )
        .succeeded()
    }));
    // `nc -N` sends its FIN at once (stdin is empty): the proxy half-closes towards the
    // sender, which finishes and closes, so both sides are done while bytes are in flight.
    for _ in 0..3 {
        let run = lab.exec_in_with_timeout(
            &lab.client_ns,
            &[
                "sh",
                "-c",
                "nc -N -X 5 -x 127.0.0.1:1080 10.99.0.1 5400 </dev/null | sha256sum",
            ],
            std::time::Duration::from_secs(60),
        );
        run.assert_success();
        assert_eq!(run.stdout, expected, "the download through SOCKS5 differs");
    }
}

#[test]
fn the_hosts_own_listener_in_the_stacks_port_range_keeps_its_packets() {
    let Some((lab, _tundns)) = lab_with_proxy("proxy_host_ports", "ok\n", None) else {
        return;
    };
    // The stack has connections from the interface address...
    assert_eq!(
        socks_reply(&lab, &connect_to_name(WEB_NAME, WEB_PORT), None),
        "0"
    );
    // ...and the host listens on that address, on a port of the stack's range: a peer's
    // connection to it must reach the host's kernel, not the stack.
    let listener = "import socket\n\
                    s = socket.create_server(('10.99.0.2', 62000))\n\
                    c, _ = s.accept(); c.sendall(b'host listener'); c.close()";
    lab.spawn_daemon_in(
        &lab.client_ns,
        "host listener",
        &["python3", "-c", listener],
    );
    let fetch = "import socket, time\n\
                 for _ in range(50):\n\
                 \x20   try:\n\
                 \x20       s = socket.create_connection(('10.99.0.2', 62000), timeout=2); break\n\
                 \x20   except OSError: time.sleep(0.1)\n\
                 print(s.recv(100).decode())";
    let run = lab.exec_in(&lab.network_ns, &["python3", "-c", fetch]);
    run.assert_success();
    assert_eq!(run.stdout.trim(), "host listener");
}

/// curl through the HTTP proxy: what it printed, with `-w` appending the status code.
fn curl_via_http_proxy(lab: &Lab, extra: &[&str], url: &str) -> Run {
    let mut command = vec!["curl", "-sS", "--max-time", "15", "-x", HTTP_PROXY];
    command.extend_from_slice(extra);
    command.extend_from_slice(&["-w", "\n%{http_code}", url]);
    lab.exec_in(&lab.client_ns, &command)
}

#[test]
fn the_http_proxy_forwards_and_tunnels_through_the_tunnel() {
    let page = "served only inside the tunnel\n".repeat(2000);
    let Some((lab, _tundns)) = lab_with_proxy("proxy_http", &page, None) else {
        return;
    };
    remove_routes_to_the_tunnel(&lab);
    let url = format!("http://{WEB_NAME}:{WEB_PORT}/index.html");
    // Forwarded in origin form, and through CONNECT (-p).
    for extra in [&[][..], &["-p"][..]] {
        let run = curl_via_http_proxy(&lab, extra, &url);
        run.assert_success();
        assert_eq!(run.stdout, format!("{page}\n200"), "{extra:?}");
    }
    // Two requests on one kept-alive connection to the proxy.
    let run = lab.exec_in(
        &lab.client_ns,
        &[
            "curl",
            "-sS",
            "--max-time",
            "15",
            "-x",
            HTTP_PROXY,
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}\n",
            &url,
            &url,
        ],
    );
    run.assert_success();
    assert_eq!(
        run.stdout, "200 1\n200 0\n",
        "the second request reuses the connection"
    );

    // The statuses the issue names.
    let status = |url: &str| {
        let run = curl_via_http_proxy(&lab, &[], url);
        run.stdout.lines().last().unwrap_or_default().to_owned()
    };
    assert_eq!(status(&format!("http://{BLOCKED_NAME}/")), "403");
    assert_eq!(status("http://10.99.0.1:8081/"), "502", "refused");
    assert_eq!(status("http://198.51.100.7/"), "502", "outside AllowedIPs");
    // CONNECT to a closed port: the tunnel's RST becomes 502 for the CONNECT itself.
    let run = lab.exec_in(
        &lab.client_ns,
        &[
            "curl",
            "-sS",
            "--max-time",
            "15",
            "-p",
            "-x",
            HTTP_PROXY,
            "-w",
            "%{http_connect}",
            "http://10.99.0.1:8081/",
        ],
    );
    assert_eq!(run.stdout, "502", "{run}");
    // An https:// URL in absolute form (a client must use CONNECT for it) is refused.
    let raw = "import socket\n\
               s = socket.create_connection(('127.0.0.1', 3128), timeout=10)\n\
               s.sendall(b'GET https://web.lab.internal/ HTTP/1.1\\r\\nHost: web.lab.internal\\r\\n\\r\\n')\n\
               print(s.recv(100).split(b'\\r\\n')[0].decode())";
    let run = lab.exec_in(&lab.client_ns, &["python3", "-c", raw]);
    run.assert_success();
    assert_eq!(run.stdout.trim(), "HTTP/1.1 400 Bad Request");
}

#[test]
fn the_http_proxy_asks_for_credentials_when_configured() {
    let users = Some("alice:s3cret\n");
    let Some((lab, _tundns)) = lab_with_proxy("proxy_http_credentials", "ok\n", users) else {
        return;
    };
    let url = format!("http://{WEB_NAME}:{WEB_PORT}/index.html");
    let run = curl_via_http_proxy(&lab, &["-D", "-"], &url);
    assert!(run.stdout.ends_with("\n407"), "{run}");
    assert!(
        run.stdout
            .to_ascii_lowercase()
            .contains("proxy-authenticate: basic"),
        "{run}"
    );
    let run = curl_via_http_proxy(&lab, &["-U", "alice:wrong"], &url);
    assert!(run.stdout.ends_with("407"), "{run}");
    let run = curl_via_http_proxy(&lab, &["-U", "alice:s3cret"], &url);
    assert_eq!(run.stdout, "ok\n\n200");
}

/// A SOCKS5 UDP client: associates, sends `payload` to each destination (`name:port` or
/// `ip:port`) through the relay, and prints each answer's source and payload.
const UDP_CLIENT: &str = r#"
import os, socket, struct, sys
tcp = socket.create_connection((os.environ.get("SOCKS_HOST", "127.0.0.1"), 1080), timeout=10)
tcp.sendall(b"\x05\x01\x00"); assert tcp.recv(2) == b"\x05\x00"
tcp.sendall(b"\x05\x03\x00\x01" + bytes(4) + bytes(2))
reply = tcp.recv(10)
assert reply[1] == 0, reply
relay = (socket.inet_ntoa(reply[4:8]), struct.unpack(">H", reply[8:10])[0])
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.settimeout(5)
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        address = b"\x01" + socket.inet_aton(host)
    except OSError:
        address = b"\x03" + bytes([len(host)]) + host.encode()
    udp.sendto(b"\x00\x00\x00" + address + struct.pack(">H", int(port)) + b"ping " + target.encode(), relay)
    answer = udp.recv(2048)
    if answer[3] == 1:
        source, rest = socket.inet_ntoa(answer[4:8]), answer[8:]
    else:
        source, rest = "[" + socket.inet_ntop(socket.AF_INET6, answer[4:20]) + "]", answer[20:]
    print(source + ":" + str(struct.unpack(">H", rest[:2])[0]), rest[2:].decode())
"#;

#[test]
fn udp_associate_relays_datagrams_through_the_tunnel() {
    let Some((lab, _tundns)) = lab_with_proxy("proxy_udp", "ok\n", None) else {
        return;
    };
    // Dual-stack: a name with both A and AAAA records is sent to its IPv6 address first.
    let echo = "import socket\n\
                s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
                s.bind(('::', 5301))\n\
                while True:\n\
                \x20   data, peer = s.recvfrom(2048); s.sendto(data, peer)";
    lab.spawn_daemon_in(&lab.network_ns, "udp echo", &["python3", "-c", echo]);
    remove_routes_to_the_tunnel(&lab);
    let by_address = format!("{PEER_TUNNEL_V4}:5301");
    let by_name = format!("{WEB_NAME}:5301");
    // On the loopback listener the relay is a host socket; on the virtual IP's, a port of
    // the virtual IP.
    for proxy_host in ["127.0.0.1", PROXY_V4] {
        let run = lab.exec_in(
            &lab.client_ns,
            &[
                "env",
                &format!("SOCKS_HOST={proxy_host}"),
                "python3",
                "-c",
                UDP_CLIENT,
                &by_address,
                &by_name,
            ],
        );
        run.assert_success();
        assert_eq!(
            run.stdout,
            format!(
                "{PEER_TUNNEL_V4}:5301 ping {by_address}\n[{PEER_TUNNEL_V6}]:5301 ping {by_name}\n"
            ),
            "through the listener on {proxy_host}"
        );
    }
}

#[test]
fn with_table_off_only_the_proxies_reach_the_tunnel() {
    let page = "no routes needed\n";
    let lines = vec!["Table = off".to_owned()];
    let Some((lab, _tundns)) = lab_with_proxy_and("proxy_table_off", page, None, lines) else {
        return;
    };
    // tundns adds no route for the peer's AllowedIPs; the kernel's route for the interface
    // address's own prefix goes too, so that nothing but the proxies reaches the tunnel.
    let routes = lab.exec_in(&lab.client_ns, &["ip", "route", "show", "10.99.0.0/24"]);
    assert!(
        routes
            .stdout
            .lines()
            .all(|route| route.contains("proto kernel")),
        "Table = off added a route:\n{routes}"
    );
    remove_routes_to_the_tunnel(&lab);
    let url = format!("http://{WEB_NAME}:{WEB_PORT}/index.html");
    for proxy in [&["--socks5-hostname", SOCKS][..], &["-x", HTTP_PROXY][..]] {
        let mut command = vec!["curl", "-sS", "--max-time", "10"];
        command.extend_from_slice(proxy);
        command.push(&url);
        let run = lab.exec_in(&lab.client_ns, &command);
        run.assert_success();
        assert_eq!(run.stdout, page, "{proxy:?}");
    }
}

#[test]
fn the_listeners_on_the_virtual_ips_serve_this_host_only() {
    let page = "for this host only\n";
    let Some((lab, mut tundns)) = lab_with_proxy("proxy_virtual_ip", page, None) else {
        return;
    };
    remove_routes_to_the_tunnel(&lab);
    let url = format!("http://{WEB_NAME}:{WEB_PORT}/index.html");
    let curl_in = |ns: &str, proxy: &[&str]| {
        let mut command = vec!["curl", "-sS", "--max-time", "5"];
        command.extend_from_slice(proxy);
        command.push(&url);
        lab.exec_in(ns, &command)
    };
    for proxy in [
        &["--socks5-hostname", VIRTUAL_SOCKS][..],
        &["--socks5-hostname", VIRTUAL_SOCKS_V6][..],
        &["-x", VIRTUAL_HTTP_PROXY][..],
        &["-p", "-x", VIRTUAL_HTTP_PROXY][..],
    ] {
        let run = curl_in(&lab.client_ns, proxy);
        run.assert_success();
        assert_eq!(run.stdout, page, "{proxy:?}");
    }

    // N as a LAN host of C: C forwards, and N routes the virtual IP through C.
    lab.exec_in(&lab.client_ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .assert_success();
    lab.exec_in(
        &lab.network_ns,
        &[
            "ip",
            "route",
            "add",
            &format!("{PROXY_V4}/32"),
            "via",
            "192.0.2.2",
        ],
    )
    .assert_success();
    let forwarded = curl_in(&lab.network_ns, &["--socks5-hostname", VIRTUAL_SOCKS]);
    assert!(
        !forwarded.succeeded(),
        "a host whose packets C forwards used the proxy:\n{forwarded}"
    );
    // The same behind a masquerade into the TUN (as Docker's or libvirt's NAT would do),
    // which gives the forwarded packets C's own tunnel address.
    let masquerade = format!(
        "table ip tdnat {{\n  chain post {{\n    type nat hook postrouting priority srcnat;\n    \
         oifname \"{}\" masquerade\n  }}\n}}\n",
        lab.tundns_iface
    );
    let masquerade = lab.write_file("masquerade.nft", masquerade);
    lab.exec_in(&lab.client_ns, &["nft", "-f", masquerade.to_str().unwrap()])
        .assert_success();
    let masqueraded = curl_in(&lab.network_ns, &["--socks5-hostname", VIRTUAL_SOCKS]);
    assert!(
        !masqueraded.succeeded(),
        "a host behind C's masquerade used the proxy:\n{masqueraded}"
    );
    // The far side of the tunnel, with the virtual IP routed to C's peer.
    let allowed = lab
        .exec_in(
            &lab.network_ns,
            &["wg", "show", &lab.peer_iface, "allowed-ips"],
        )
        .assert_success()
        .stdout
        .clone();
    let (client_key, networks) = allowed.trim().split_once('\t').expect("one peer");
    let networks = format!("{},{PROXY_V4}/32", networks.replace(' ', ","));
    lab.exec_in(
        &lab.network_ns,
        &[
            "wg",
            "set",
            &lab.peer_iface,
            "peer",
            client_key,
            "allowed-ips",
            &networks,
        ],
    )
    .assert_success();
    lab.exec_in(
        &lab.network_ns,
        &[
            "ip",
            "route",
            "replace",
            &format!("{PROXY_V4}/32"),
            "dev",
            &lab.peer_iface,
        ],
    )
    .assert_success();
    let through_tunnel = curl_in(&lab.network_ns, &["--socks5-hostname", VIRTUAL_SOCKS]);
    assert!(
        !through_tunnel.succeeded(),
        "the tunnel's far side used the proxy:\n{through_tunnel}"
    );
    // This host still is served.
    let run = curl_in(&lab.client_ns, &["--socks5-hostname", VIRTUAL_SOCKS]);
    run.assert_success();
    let tables = || {
        lab.exec_in(&lab.client_ns, &["nft", "list", "tables"])
            .assert_success()
            .stdout
            .clone()
    };
    assert!(tables().contains("tundns_listeners-"), "{}", tables());
    tundns.stop_cleanly(std::time::Duration::from_secs(10));
    assert!(
        !tables().contains("tundns_listeners-"),
        "the listeners' table outlived tundns:\n{}",
        tables()
    );
}

/// `tundns up --userspace` as `nobody` (through `setpriv`, which execs, so that the exit
/// status is tundns's own) in C: the proxies on loopback and DNS on
/// `127.0.0.1:5353` work, and nothing on the host changed (no interface, no route, no
/// system socket); `tundns status` finds it under `$XDG_RUNTIME_DIR`; SIGTERM cleans up.
#[test]
fn the_rootless_mode_serves_as_nobody_and_changes_nothing() {
    let page = "no root needed\n";
    let Some(lab) = lab_or_skip("proxy_userspace") else {
        return;
    };
    serve_page(&lab, page);
    let options = ClientConfig {
        dns_proxy_lines: vec![
            "Address = 127.0.0.1:5353".to_owned(),
            format!("Record = {WEB_NAME} A {PEER_TUNNEL_V4}"),
        ],
        ..ClientConfig::default()
    };
    let config = format!(
        "{}\n[Proxy]\nSOCKS5 = {SOCKS}\nHTTP = 127.0.0.1:3128\n",
        lab.client_config(&options)
    );
    let rootless = Rootless::new(&lab, &config);
    let mut tundns = rootless.start(&lab);
    let url = format!("http://{WEB_NAME}:{WEB_PORT}/index.html");
    let fetched = wait_until(std::time::Duration::from_secs(15), || {
        lab.exec_in(
            &lab.client_ns,
            &[
                "curl",
                "-sS",
                "--max-time",
                "2",
                "--socks5-hostname",
                SOCKS,
                &url,
            ],
        )
        .stdout
            == page
    });
    assert!(fetched, "no page through SOCKS5:\n{}", tundns.output());
    let run = lab.exec_in(
        &lab.client_ns,
        &["curl", "-sS", "--max-time", "5", "-x", HTTP_PROXY, &url],
    );
    run.assert_success();
    assert_eq!(run.stdout, page);
    for transport in ["+notcp", "+tcp"] {
        let answer = lab.dig(
            &lab.client_ns,
            "127.0.0.1",
            &["-p", "5353", transport, "+short", WEB_NAME],
        );
        answer.assert_success();
        assert_eq!(answer.stdout.trim(), PEER_TUNNEL_V4, "DNS over {transport}");
    }
    let status = rootless.run(&lab, &[tundns_bin(), "status"]);
    status.assert_success();
    assert!(status.stdout.contains(&lab.tundns_iface), "{status}");

    // Nothing on the host: no interface, no route into the tunnel, no system socket.
    let links = lab.exec_in(&lab.client_ns, &["ip", "-o", "link"]);
    assert!(
        !links.stdout.contains(&lab.tundns_iface),
        "an interface appeared:\n{links}"
    );
    let routes = lab.exec_in(&lab.client_ns, &["ip", "route", "get", PEER_TUNNEL_V4]);
    assert!(!routes.stdout.contains(&lab.tundns_iface), "{routes}");
    let system_socket = lab.run_dir().join(format!("{}.sock", lab.tundns_iface));
    assert!(!std::path::Path::new(&system_socket).exists());

    tundns.stop_cleanly(std::time::Duration::from_secs(10));
    let left: Vec<_> = walk(&rootless.runtime_dir)
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "sock"))
        .collect();
    assert!(left.is_empty(), "sockets left behind: {left:?}");
}

/// Names only the tunnel's resolver knows, in the rootless mode: a `ThroughTunnel` route's
/// queries leave through the proxies' userspace stack, over UDP and over TCP, and so do
/// those of a route added at run time (here over IPv6).
#[test]
fn the_rootless_mode_resolves_through_the_tunnel() {
    let Some(lab) = lab_or_skip_with("proxy_userspace_dns", LabOptions::split_dns()) else {
        return;
    };
    let options = ClientConfig {
        dns_proxy_lines: vec!["Address = 127.0.0.1:5353".to_owned()],
        routes: vec![DnsRoute {
            domains: vec!["corp.internal".into()],
            upstreams: vec![TUNNEL_RESOLVER_V4.into()],
            through_tunnel: true,
        }],
        ..ClientConfig::default()
    };
    let rootless = Rootless::new(&lab, &lab.client_config(&options));
    let mut tundns = rootless.start(&lab);
    let dig = |transport: &str, name: &str, qtype: &str| {
        lab.dig(
            &lab.client_ns,
            "127.0.0.1",
            &["-p", "5353", transport, "+short", name, qtype],
        )
    };
    let resolve = |transport: &str, name: &str, qtype: &str| {
        let run = dig(transport, name, qtype);
        run.assert_success();
        run.stdout.trim().to_owned()
    };
    // The lab asked the tunnel resolver itself when it started it: count from here.
    let asked = |name: &str, qtype: &str| lab.tunnel_resolver_queries(name, Some(qtype));
    let db_before = asked(CORP_DB_NAME, "A");
    // The first query may come before tundns listens (refused), and waits for WireGuard's
    // handshake, so it may be asked again meanwhile.
    let up = wait_until(std::time::Duration::from_secs(15), || {
        let run = dig("+notcp", "corp.internal", "SOA");
        run.succeeded() && run.stdout.contains("ns.corp.internal")
    });
    assert!(
        up,
        "no answer from the tunnel's resolver:\n{}\n{}",
        lab.tunnel_resolver_log(),
        tundns.output()
    );
    assert_eq!(resolve("+notcp", CORP_DB_NAME, "A"), CORP_DB_A);
    assert_eq!(asked(CORP_DB_NAME, "A"), db_before + 1);
    // A TCP client's query goes to the upstream over TCP, through the stack's TCP.
    assert_eq!(resolve("+tcp", "wiki.corp.internal", "A"), "10.99.0.81");
    assert_eq!(asked("wiki.corp.internal", "A"), 1);

    // The cache outlives a restart, kept in this user's state directory.
    tundns.stop_cleanly(std::time::Duration::from_secs(10));
    let saved = rootless
        .state_home
        .join("tundns")
        .join(format!("{}.dns-cache", lab.tundns_iface));
    let metadata = std::fs::metadata(&saved).expect("the cache file after a clean stop");
    assert_eq!((metadata.uid(), metadata.mode() & 0o777), (65534, 0o600));
    let mut tundns = rootless.start(&lab);
    let db_before = asked(CORP_DB_NAME, "A");
    let warm = wait_until(std::time::Duration::from_secs(5), || {
        let run = dig("+notcp", CORP_DB_NAME, "A");
        run.succeeded() && run.stdout.trim() == CORP_DB_A
    });
    assert!(warm, "no answer after the restart:\n{}", tundns.output());
    assert_eq!(
        asked(CORP_DB_NAME, "A"),
        db_before,
        "answered from the saved cache"
    );

    let control = |args: &[&str]| {
        let command: Vec<&str> = [tundns_bin(), "dns"].iter().chain(args).copied().collect();
        let run = rootless.run(&lab, &command);
        run.assert_success();
    };
    control(&["routes", "remove", "corp.internal"]);
    control(&[
        "routes",
        "add",
        "corp.internal",
        TUNNEL_RESOLVER_V6,
        "--through-tunnel",
    ]);
    let aaaa_before = asked(CORP_DB_NAME, "AAAA");
    assert_eq!(resolve("+notcp", CORP_DB_NAME, "AAAA"), CORP_DB_AAAA);
    assert_eq!(asked(CORP_DB_NAME, "AAAA"), aaaa_before + 1);
    tundns.stop_cleanly(std::time::Duration::from_secs(10));
}

/// tundns in the rootless mode as `nobody`, with no capabilities, its config,
/// `$XDG_RUNTIME_DIR` and `$XDG_STATE_HOME` in the lab's directory.
struct Rootless {
    config: std::path::PathBuf,
    runtime_dir: std::path::PathBuf,
    state_home: std::path::PathBuf,
}

impl Rootless {
    fn new(lab: &Lab, config: &str) -> Self {
        let config = lab.write_client_config(config);
        let lab_dir = config.parent().expect("the lab directory");
        let runtime_dir = lab_dir.join("xdg");
        let state_home = lab_dir.join("xdg-state");
        for directory in [&runtime_dir, &state_home] {
            std::fs::create_dir(directory).expect("create an XDG directory");
        }
        for owned in [&config, &runtime_dir, &state_home] {
            std::os::unix::fs::chown(owned, Some(65534), Some(65534)).expect("chown to nobody");
        }
        Self {
            config,
            runtime_dir,
            state_home,
        }
    }

    /// `command` as run by `nobody`, with these XDG directories.
    fn as_nobody(&self, command: &[&str]) -> Vec<String> {
        let runtime = format!("XDG_RUNTIME_DIR={}", self.runtime_dir.display());
        let state = format!("XDG_STATE_HOME={}", self.state_home.display());
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
            "env",
            &runtime,
            &state,
        ]
        .iter()
        .chain(command)
        .map(|part| part.to_string())
        .collect()
    }

    fn start(&self, lab: &Lab) -> Daemon {
        let config = self.config.to_str().expect("a UTF-8 path");
        let up = self.as_nobody(&[tundns_bin(), "up", "--userspace", config]);
        let up: Vec<&str> = up.iter().map(String::as_str).collect();
        lab.spawn_in(&lab.client_ns, "tundns userspace", &up)
    }

    fn run(&self, lab: &Lab, command: &[&str]) -> Run {
        let command = self.as_nobody(command);
        let command: Vec<&str> = command.iter().map(String::as_str).collect();
        lab.exec_in(&lab.client_ns, &command)
    }
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// `ssh` with `ProxyCommand='nc -X 5 -x …'`, to an sshd on N's tunnel address, through the
/// SOCKS5 proxy on the virtual IP, by name.
#[test]
fn ssh_reaches_the_far_side_through_nc_and_the_socks5_proxy() {
    let Some((lab, _tundns)) = lab_with_proxy("proxy_ssh", "ok\n", None) else {
        return;
    };
    let dir = lab
        .write_file("ssh.keep", "")
        .parent()
        .expect("the lab directory")
        .join("ssh");
    std::fs::create_dir(&dir).expect("create the ssh directory");
    let key = |name: &str| {
        let path = dir.join(name);
        lab.exec_in(
            &lab.network_ns,
            &[
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                path.to_str().unwrap(),
            ],
        )
        .assert_success();
        path
    };
    let (host_key, client_key) = (key("host"), key("client"));
    let authorized = dir.join("client.pub");
    std::fs::create_dir_all("/run/sshd").expect("sshd's privilege separation directory");
    let listen = format!("ListenAddress={PEER_TUNNEL_V4}:2222");
    let host_key_option = format!("HostKey={}", host_key.display());
    let authorized_option = format!("AuthorizedKeysFile={}", authorized.display());
    lab.spawn_daemon_in(
        &lab.network_ns,
        "sshd",
        &[
            "/usr/sbin/sshd",
            "-D",
            "-e",
            "-f",
            "/dev/null",
            "-o",
            &listen,
            "-o",
            &host_key_option,
            "-o",
            &authorized_option,
            "-o",
            "StrictModes=no",
            "-o",
            "UsePAM=no",
            "-o",
            "PidFile=none",
        ],
    );
    remove_routes_to_the_tunnel(&lab);
    let proxy_command = format!("ProxyCommand=nc -X 5 -x {VIRTUAL_SOCKS} %h %p");
    let ran = wait_until(std::time::Duration::from_secs(10), || {
        let run = lab.exec_in(
            &lab.client_ns,
            &[
                "ssh",
                "-F",
                "/dev/null",
                "-i",
                client_key.to_str().unwrap(),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=5",
                "-o",
                &proxy_command,
                "-p",
                "2222",
                &format!("root@{WEB_NAME}"),
                "echo through-the-tunnel",
            ],
        );
        run.stdout.trim() == "through-the-tunnel"
    });
    assert!(ran, "ssh through nc -X 5 did not run the command");
}

/// Names as the DNS proxy resolves them, for the proxies too: a split-DNS route through
/// the tunnel (to the tunnel-only resolver in N), and one cache for both: a name resolved
/// by either costs the other no new upstream query.
#[test]
fn the_proxies_resolve_through_split_dns_and_share_the_dns_proxys_cache() {
    let page = "on an internal host\n";
    let Some(lab) = lab_or_skip_with("proxy_split_dns", LabOptions::split_dns()) else {
        return;
    };
    // The names exist only in the tunnel-only resolver's zone; N holds their addresses.
    for address in ["10.99.0.80/32", "fd99::80/128", "10.99.0.81/32"] {
        lab.exec_in(
            &lab.network_ns,
            &[
                "ip",
                "addr",
                "add",
                address,
                "dev",
                &lab.peer_iface,
                "nodad",
            ],
        )
        .assert_success();
    }
    serve_page(&lab, page);
    let options = ClientConfig {
        routes: vec![DnsRoute {
            domains: vec!["corp.internal".into()],
            upstreams: vec![TUNNEL_RESOLVER_V4.into()],
            through_tunnel: true,
        }],
        ..ClientConfig::default()
    };
    let config = format!(
        "{}\n[Proxy]\nSOCKS5 = {VIRTUAL_SOCKS}\n",
        lab.client_config(&options)
    );
    let _tundns = lab.start_tundns(&config);
    let fetch = |name: &str| {
        lab.exec_in(
            &lab.client_ns,
            &[
                "curl",
                "-sS",
                "--max-time",
                "10",
                "--socks5-hostname",
                VIRTUAL_SOCKS,
                &format!("http://{name}:{WEB_PORT}/index.html"),
            ],
        )
    };
    let dig_a = |name: &str| {
        let run = lab.dig(&lab.client_ns, PROXY_V4, &[name, "A", "+short"]);
        run.assert_success();
        run.stdout.trim().to_owned()
    };

    // The lab asked the tunnel resolver itself when it started it: count from here.
    let asked = |name: &str| lab.tunnel_resolver_queries(name, Some("A"));
    let (db_before, wiki_before) = (asked(CORP_DB_NAME), asked("wiki.corp.internal"));

    // The proxy first: its lookup fills the cache the DNS proxy answers from.
    let run = fetch(CORP_DB_NAME);
    run.assert_success();
    assert_eq!(run.stdout, page);
    assert_eq!(
        asked(CORP_DB_NAME),
        db_before + 1,
        "{}",
        lab.tunnel_resolver_log()
    );
    assert_eq!(dig_a(CORP_DB_NAME), CORP_DB_A);
    assert_eq!(
        asked(CORP_DB_NAME),
        db_before + 1,
        "the DNS proxy asked again for a name the SOCKS5 proxy had resolved"
    );

    // The DNS proxy first: the proxy's lookup is a cache hit.
    let wiki = "wiki.corp.internal";
    assert_eq!(dig_a(wiki), "10.99.0.81");
    let run = fetch(wiki);
    run.assert_success();
    assert_eq!(run.stdout, page);
    assert_eq!(
        asked(wiki),
        wiki_before + 1,
        "the SOCKS5 proxy asked again for a name the DNS proxy had resolved"
    );
}

//! The library's promise, end to end: `examples/udp_echo.rs` adds a second virtual service
//! (UDP echo on 10.30.30.31:7) next to the DNS proxy, through a real TUN in a namespace lab.

mod common;

use common::*;
use std::path::PathBuf;

const ECHO_IP: &str = "10.30.30.31";

/// `cargo test` builds the examples next to the binaries.
fn echo_example() -> String {
    let bin = PathBuf::from(tundns_bin());
    let example = bin
        .parent()
        .expect("target dir")
        .join("examples")
        .join("udp_echo");
    assert!(example.exists(), "{} not built", example.display());
    example.to_string_lossy().into_owned()
}

/// Sends `payload` to ECHO_IP:port from the client namespace and returns what came back,
/// or the error python reports (e.g. "ConnectionRefusedError").
fn udp_round_trip(lab: &Lab, port: u16, payload: &str) -> Run {
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.settimeout(2)\n\
         s.connect(('{ECHO_IP}', {port}))\n\
         s.send(b'{payload}')\n\
         try:\n    print(s.recv(2048).decode())\n\
         except Exception as e:\n    print(type(e).__name__)\n"
    );
    lab.exec_in(&lab.client_ns, &["python3", "-c", &script])
}

#[test]
fn example_serves_udp_echo_beside_the_dns_proxy() {
    let lab = lab!();
    let config = lab.client_config(&ClientConfig::default());
    let mut daemon = lab.start_tundns_with(&echo_example(), &config);
    let c = lab.client_ns.clone();

    // The echo host may be registered a moment after the DNS proxy's routes appear.
    assert!(
        wait_until(std::time::Duration::from_secs(5), || {
            lab.exec_in(&c, &["ip", "route", "get", ECHO_IP])
                .succeeded()
        }),
        "no route to {ECHO_IP}:\n{}",
        daemon.output()
    );

    let echoed = udp_round_trip(&lab, 7, "hello through the TUN");
    assert_eq!(echoed.stdout.trim(), "hello through the TUN", "{echoed}");

    // The host around the service: ping answered, closed ports refused.
    lab.assert_ping(&c, ECHO_IP);
    let closed = udp_round_trip(&lab, 8, "anyone?");
    assert_eq!(closed.stdout.trim(), "ConnectionRefusedError", "{closed}");

    // The DNS proxy still answers on its own virtual IP.
    let dig = lab.dig(&c, PROXY_V4, &[WWW_NAME, "A", "+short"]);
    assert_eq!(dig.stdout.trim(), WWW_A, "{dig}");

    daemon.send_sigterm();
    let status = daemon.wait_for_exit(std::time::Duration::from_secs(2));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit: {status:?}\n{}",
        daemon.output()
    );
    assert!(
        !lab.exec_in(&c, &["ip", "route", "get", ECHO_IP])
            .succeeded(),
        "route to {ECHO_IP} left behind"
    );
}

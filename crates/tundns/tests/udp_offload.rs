//! WireGuard's segmenting UDP sender against plain receiving sockets (no GRO), so every
//! datagram boundary the kernel produced is visible. Each test runs in a network namespace
//! of its own, entered on a thread of its own: no packet leaves it. Needs root; set
//! `TUNDNS_E2E=1` to make its absence a failure instead of a skip.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use bytes::BytesMut;
use gotatun::packet::Packet;
use gotatun::udp::{UdpSend, UdpTransportFactory, UdpTransportFactoryParams};
use tundns::udp_offload::{GsoUdpFactory, GsoUdpSend, UDP_MAX_SEGMENTS};

mod netns;
use netns::Namespace;

/// The sender as gotatun's device binds it: dual-stack, any port.
async fn bind_sender() -> GsoUdpSend {
    let params = UdpTransportFactoryParams {
        addr: None,
        port: 0,
        fwmark: None,
    };
    let (sender, _receiver) = GsoUdpFactory::default()
        .bind(&params)
        .await
        .expect("bind the WireGuard socket");
    sender
}

/// A plain socket on `ip`: no GRO, so one `recv` is one datagram.
fn receiver(ip: impl Into<std::net::IpAddr>) -> UdpSocket {
    let socket = UdpSocket::bind((ip.into(), 0)).expect("bind a receiver");
    socket.set_nonblocking(true).expect("nonblocking receiver");
    socket
}

/// A datagram whose every byte depends on `sequence`, so a swap, a cut or a merge shows.
fn datagram(sequence: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|offset| (sequence * 131 + offset * 7) as u8)
        .collect()
}

/// Sends `batch` (length and destination of each packet) as one `send_many_to`, then checks
/// that each receiver got exactly its datagrams, intact and in order.
async fn send_and_check(sender: &GsoUdpSend, receivers: &[&UdpSocket], batch: &[(usize, usize)]) {
    assert!(batch.len() <= sender.max_number_of_packets_to_send());
    let addresses: Vec<SocketAddr> = receivers.iter().map(|r| r.local_addr().unwrap()).collect();
    let sent: Vec<(Vec<u8>, SocketAddr)> = batch
        .iter()
        .enumerate()
        .map(|(sequence, &(len, to))| (datagram(sequence, len), addresses[to]))
        .collect();
    let mut packets = sent
        .iter()
        .map(|(bytes, to)| (Packet::from_bytes(BytesMut::from(&bytes[..])), *to))
        .collect();
    let mut buf = Default::default();
    sender
        .send_many_to(&mut buf, &mut packets)
        .await
        .expect("send the batch");
    assert!(packets.is_empty(), "a successful send leaves no packets");

    for (index, receiver) in receivers.iter().enumerate() {
        let expected: Vec<&Vec<u8>> = sent
            .iter()
            .filter(|(_, to)| *to == addresses[index])
            .map(|(bytes, _)| bytes)
            .collect();
        let received = drain(receiver);
        assert_eq!(
            received.len(),
            expected.len(),
            "receiver {index}: datagram count; lengths received {:?}",
            received.iter().map(Vec::len).collect::<Vec<_>>()
        );
        for (position, (got, want)) in received.iter().zip(&expected).enumerate() {
            assert!(
                got == *want,
                "receiver {index}: datagram {position} differs ({} bytes, want {})",
                got.len(),
                want.len()
            );
        }
    }
}

/// Every datagram waiting on `socket`, waiting briefly for stragglers.
fn drain(socket: &UdpSocket) -> Vec<Vec<u8>> {
    let mut received = Vec::new();
    let mut buf = vec![0; 65536];
    let mut idle_rounds = 0;
    while idle_rounds < 20 {
        match socket.recv(&mut buf) {
            Ok(len) => {
                received.push(buf[..len].to_vec());
                idle_rounds = 0;
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                idle_rounds += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(error) => panic!("receive: {error}"),
        }
    }
    received
}

/// `count` packets of `len` bytes to receiver `to`.
fn repeated(len: usize, count: usize, to: usize) -> impl Iterator<Item = (usize, usize)> {
    std::iter::repeat_n((len, to), count)
}

#[test]
fn segmented_batches_arrive_intact_in_order() {
    let Some(namespace) = Namespace::create_or_skip("segmented") else {
        return;
    };
    namespace.run(async || {
        let sender = bind_sender().await;
        assert!(sender.segments(), "this kernel offers UDP_SEGMENT");
        let first = receiver(Ipv4Addr::LOCALHOST);
        let second = receiver(Ipv4Addr::LOCALHOST);
        let v6 = receiver(Ipv6Addr::LOCALHOST);

        for family in [&first, &v6] {
            let receivers = [family];
            // More than one send's segments, then a shorter tail.
            let over_segments: Vec<_> = repeated(1200, UDP_MAX_SEGMENTS + 6, 0)
                .chain(repeated(300, 1, 0))
                .collect();
            send_and_check(&sender, &receivers, &over_segments).await;
            // More bytes than one UDP datagram holds.
            let over_bytes: Vec<_> = repeated(1400, 60, 0).collect();
            send_and_check(&sender, &receivers, &over_bytes).await;
            // Lengths that change, grow, repeat and stand alone.
            let mixed: Vec<_> = [
                200, 200, 1300, 1400, 1400, 1400, 700, 60, 60, 1400, 80, 80, 80, 9,
            ]
            .into_iter()
            .map(|len| (len, 0))
            .collect();
            send_and_check(&sender, &receivers, &mixed).await;
        }

        let two_destinations: Vec<_> = repeated(1000, 10, 0)
            .chain(repeated(1000, 10, 1))
            .chain(repeated(500, 5, 0))
            .chain(repeated(1000, 1, 1))
            .chain(repeated(1000, 10, 0))
            .chain([(1000, 1), (1000, 0), (1000, 1)])
            .collect();
        send_and_check(&sender, &[&first, &second], &two_destinations).await;
        assert!(sender.segments(), "segmentation stayed on");
    });
}

/// Turns UDP checksums off on `socket` (IPv4 only), with which the kernel refuses every
/// segmented send (EINVAL). Neither nix nor socket2 wraps SO_NO_CHECK.
fn turn_checksums_off(socket: &impl AsFd) {
    let on: libc::c_int = 1;
    // SAFETY: `on` outlives the call and its size is passed alongside it.
    let result = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NO_CHECK,
            (&raw const on).cast(),
            size_of_val(&on) as libc::socklen_t,
        )
    };
    assert_eq!(
        result,
        0,
        "SO_NO_CHECK: {}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn a_refused_first_segmented_send_falls_back_for_good() {
    let Some(namespace) = Namespace::create_or_skip("refused") else {
        return;
    };
    namespace.run(async || {
        let sender = bind_sender().await;
        turn_checksums_off(&sender);
        let target = receiver(Ipv4Addr::LOCALHOST);
        let batch: Vec<_> = [(7, 0)]
            .into_iter()
            .chain(repeated(1400, 10, 0))
            .chain(repeated(100, 3, 0))
            .collect();
        send_and_check(&sender, &[&target], &batch).await;
        assert!(
            !sender.segments(),
            "a refusal before any success turns GSO off"
        );
        let small: Vec<_> = repeated(200, 10, 0).collect();
        send_and_check(&sender, &[&target], &small).await;
        assert!(!sender.segments(), "GSO stays off");
    });
}

#[test]
fn a_refused_run_after_gso_worked_falls_back_for_that_run() {
    let Some(namespace) = Namespace::create_or_skip("refused-run") else {
        return;
    };
    namespace.ip(&["link", "set", "lo", "mtu", "1280"]);
    namespace.run(async || {
        let sender = bind_sender().await;
        let target = receiver(Ipv6Addr::LOCALHOST);
        let batch: Vec<_> = repeated(1000, 10, 0)
            .chain(repeated(1400, 10, 0))
            .chain(repeated(1000, 10, 0))
            .collect();
        send_and_check(&sender, &[&target], &batch).await;
        assert!(sender.segments(), "one refused run keeps GSO on");
    });
}

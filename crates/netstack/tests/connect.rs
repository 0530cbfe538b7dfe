//! `TcpStack::connect`: two stacks back to back on a virtual clock, one opening
//! connections (as the proxies do into the tunnel), the other listening (as a
//! server behind the tunnel would), and every way an opening can fail.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, icmpv4, icmpv6};
use tundns_netstack::{ConnectFailure, ConnectionId, Error, Event, Limits, TcpStack};

const STEP: Duration = Duration::from_millis(2);

struct Pair {
    client: TcpStack,
    server: TcpStack,
    start: Instant,
    elapsed: Duration,
    client_events: Vec<Event>,
    server_events: Vec<Event>,
    /// What the client sent since the last step, for tests that look at it.
    client_sent: Vec<Vec<u8>>,
    deliver_to_server: bool,
}

impl Pair {
    fn new(limits: Limits) -> Self {
        Self {
            client: TcpStack::new(limits.clone()),
            server: TcpStack::new(limits),
            start: Instant::now(),
            elapsed: Duration::ZERO,
            client_events: Vec::new(),
            server_events: Vec::new(),
            client_sent: Vec::new(),
            deliver_to_server: true,
        }
    }

    fn now(&self) -> Instant {
        self.start + self.elapsed
    }

    /// One round: both stacks poll, then each one's packets reach the other.
    fn step(&mut self) {
        let now = self.now();
        self.client.poll(now, &mut self.client_events);
        self.server.poll(now, &mut self.server_events);
        let mut to_server = Vec::new();
        self.client
            .drain_transmit(|packet| to_server.push(packet.to_vec()));
        let mut to_client = Vec::new();
        self.server
            .drain_transmit(|packet| to_client.push(packet.to_vec()));
        if self.deliver_to_server {
            for packet in &to_server {
                self.server.receive(packet, now);
            }
        }
        for packet in &to_client {
            self.client.receive(packet, now);
        }
        self.client_sent = to_server;
        self.elapsed += STEP;
    }

    fn run_until(&mut self, steps: usize, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        for _ in 0..steps {
            self.step();
            if done(self) {
                return true;
            }
        }
        false
    }

    fn connect(&mut self, local: &str, remote: &str) -> ConnectionId {
        self.client
            .connect(local.parse().unwrap(), remote.parse().unwrap(), self.now())
            .unwrap()
    }

    /// A connection from 10.99.0.2:61000 to the server listening on 10.99.0.1:80, once
    /// both ends have it: the client's id and the server's.
    fn established(&mut self) -> (ConnectionId, ConnectionId) {
        self.server.listen("10.99.0.1:80".parse().unwrap()).unwrap();
        let id = self.connect("10.99.0.2:61000", "10.99.0.1:80");
        assert!(self.run_until(50, |p| {
            p.outcome(id).is_some() && accepted(&p.server_events).is_some()
        }));
        assert_eq!(self.outcome(id), Some(Ok(())));
        (id, accepted(&self.server_events).unwrap().0)
    }

    fn outcome(&self, id: ConnectionId) -> Option<Result<(), ConnectFailure>> {
        self.client_events.iter().find_map(|event| match *event {
            Event::Connected(connected) if connected == id => Some(Ok(())),
            Event::ConnectFailed { id: failed, reason } if failed == id => Some(Err(reason)),
            _ => None,
        })
    }
}

fn accepted(events: &[Event]) -> Option<(ConnectionId, SocketAddr)> {
    events.iter().find_map(|event| match *event {
        Event::Accepted { id, peer, .. } => Some((id, peer)),
        _ => None,
    })
}

#[test]
fn a_connection_opens_and_carries_bytes_both_ways() {
    for (local, remote) in [
        ("10.99.0.2:61000", "10.99.0.1:80"),
        ("[fd99::2]:61000", "[fd99::1]:80"),
    ] {
        let mut pair = Pair::new(Limits::default());
        pair.server.listen(remote.parse().unwrap()).unwrap();
        let id = pair.connect(local, remote);
        assert!(pair.run_until(50, |p| {
            p.outcome(id).is_some() && accepted(&p.server_events).is_some()
        }));
        assert_eq!(pair.outcome(id), Some(Ok(())));
        let (server_id, peer) = accepted(&pair.server_events).expect("accepted");
        assert_eq!(peer, local.parse().unwrap());

        assert_eq!(pair.client.write(id, b"GET / HTTP/1.0\r\n\r\n"), Ok(18));
        assert!(pair.run_until(50, |p| p.server_events.contains(&Event::Data(server_id))));
        let mut buf = [0u8; 64];
        assert_eq!(pair.server.read(server_id, &mut buf), Ok(18));
        pair.server
            .write(server_id, b"HTTP/1.0 200 OK\r\n\r\n")
            .unwrap();
        assert!(pair.run_until(50, |p| p.client_events.contains(&Event::Data(id))));
        assert_eq!(pair.client.read(id, &mut buf), Ok(19));
        assert_eq!(&buf[..19], b"HTTP/1.0 200 OK\r\n\r\n");
    }
}

#[test]
fn a_closed_port_refuses_the_connection() {
    let mut pair = Pair::new(Limits::default());
    pair.server.listen("10.99.0.1:80".parse().unwrap()).unwrap();
    let id = pair.connect("10.99.0.2:61000", "10.99.0.1:81");
    assert!(pair.run_until(50, |p| p.outcome(id).is_some()));
    assert_eq!(pair.outcome(id), Some(Err(ConnectFailure::Refused)));
    assert_eq!(pair.client.write(id, b"x"), Err(Error::UnknownConnection));
}

#[test]
fn no_answer_fails_at_the_connect_timeout() {
    let limits = Limits {
        connect_timeout: Duration::from_secs(3),
        ..Limits::default()
    };
    let mut pair = Pair::new(limits);
    pair.deliver_to_server = false;
    let id = pair.connect("10.99.0.2:61000", "10.99.0.1:80");
    let steps_in_timeout = (Duration::from_secs(3).as_millis() / STEP.as_millis()) as usize;
    assert!(!pair.run_until(steps_in_timeout - 10, |p| p.outcome(id).is_some()));
    assert!(pair.run_until(20, |p| p.outcome(id).is_some()));
    assert_eq!(pair.outcome(id), Some(Err(ConnectFailure::TimedOut)));
    // The failed connection's slot is freed once its abort is sent.
    pair.step();
    assert_eq!(pair.client.connection_count(), 0);
}

/// The client's SYN, quoted in an ICMP error from `router` with `kind`.
fn icmpv4_error(syn: &[u8], router: [u8; 4], kind: Icmpv4Type) -> Vec<u8> {
    let mut packet = Vec::new();
    PacketBuilder::ipv4(router, [10, 99, 0, 2], 64)
        .icmpv4(kind)
        .write(&mut packet, syn)
        .unwrap();
    packet
}

#[test]
fn icmp_errors_fail_the_connection_with_their_reason() {
    use icmpv4::DestUnreachableHeader as Unreachable;
    let cases = [
        (
            Icmpv4Type::DestinationUnreachable(Unreachable::Host),
            ConnectFailure::HostUnreachable,
        ),
        (
            Icmpv4Type::DestinationUnreachable(Unreachable::Network),
            ConnectFailure::NetworkUnreachable,
        ),
        (
            Icmpv4Type::DestinationUnreachable(Unreachable::Port),
            ConnectFailure::Refused,
        ),
        (
            Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit),
            ConnectFailure::TtlExpired,
        ),
    ];
    for (kind, reason) in cases {
        let mut pair = Pair::new(Limits::default());
        pair.deliver_to_server = false;
        let id = pair.connect("10.99.0.2:61000", "10.99.0.1:80");
        pair.step();
        let syn = pair.client_sent.first().expect("a SYN").clone();
        let now = pair.now();
        // An error about another connection's segment changes nothing.
        let mut other = syn.clone();
        other[20..22].copy_from_slice(&61001u16.to_be_bytes());
        pair.client
            .receive(&icmpv4_error(&other, [192, 0, 2, 9], kind.clone()), now);
        pair.step();
        assert_eq!(pair.outcome(id), None);

        pair.client
            .receive(&icmpv4_error(&syn, [192, 0, 2, 9], kind), now);
        pair.step();
        assert_eq!(pair.outcome(id), Some(Err(reason)));
    }
}

#[test]
fn an_icmpv6_unreachable_fails_the_connection() {
    let mut pair = Pair::new(Limits::default());
    pair.deliver_to_server = false;
    let id = pair.connect("[fd99::2]:61000", "[fd99::1]:80");
    pair.step();
    let syn = pair.client_sent.first().expect("a SYN").clone();
    let mut error = Vec::new();
    PacketBuilder::ipv6(
        "fd99::9".parse::<std::net::Ipv6Addr>().unwrap().octets(),
        "fd99::2".parse::<std::net::Ipv6Addr>().unwrap().octets(),
        64,
    )
    .icmpv6(Icmpv6Type::DestinationUnreachable(
        icmpv6::DestUnreachableCode::Address,
    ))
    .write(&mut error, &syn)
    .unwrap();
    pair.client.receive(&error, pair.now());
    pair.step();
    assert_eq!(pair.outcome(id), Some(Err(ConnectFailure::HostUnreachable)));
}

#[test]
fn connecting_is_bounded_and_a_used_endpoint_is_refused() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let mut pair = Pair::new(limits);
    let remote: SocketAddr = "10.99.0.1:80".parse().unwrap();
    let local: SocketAddr = "10.99.0.2:61000".parse().unwrap();
    let now = pair.now();
    pair.client.connect(local, remote, now).unwrap();
    assert_eq!(
        pair.client.connect(local, remote, now),
        Err(Error::InUse(local))
    );
    pair.client
        .connect("10.99.0.2:61001".parse().unwrap(), remote, now)
        .unwrap();
    assert_eq!(
        pair.client
            .connect("10.99.0.2:61002".parse().unwrap(), remote, now),
        Err(Error::TooManyConnections)
    );
    assert!(matches!(
        pair.client
            .connect("10.99.0.2:0".parse().unwrap(), remote, now),
        Err(Error::InvalidEndpoint(_))
    ));
}

#[test]
fn bytes_left_unread_when_both_sides_finish_are_still_read_before_closed() {
    let mut pair = Pair::new(Limits::default());
    let (id, server_id) = pair.established();
    // The client finishes first; the server answers and finishes too, and the client
    // reaches TIME-WAIT before it reads a byte.
    pair.client.shutdown(id);
    let answer = vec![7u8; 3000];
    assert_eq!(pair.server.write(server_id, &answer), Ok(answer.len()));
    pair.server.close(server_id);
    assert!(pair.run_until(100, |p| p.client_events.contains(&Event::PeerFinished(id))));
    for _ in 0..20 {
        pair.step();
    }
    assert!(
        !pair.client_events.contains(&Event::Closed(id)),
        "closed with bytes unread"
    );
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(read @ 1..) = pair.client.read(id, &mut buf) {
        received.extend_from_slice(&buf[..read]);
    }
    assert_eq!(received, answer);
    assert!(pair.run_until(10, |p| p.client_events.contains(&Event::Closed(id))));
}

#[test]
fn the_local_port_of_a_segment_or_an_icmp_error_is_read() {
    use tundns_packet::IpView;
    let local_tcp_port = |packet: &[u8], local: &[std::net::IpAddr]| -> Option<u16> {
        tundns_netstack::local_tcp_port(&IpView::parse(packet).ok()?, local)
    };
    let local = ["10.99.0.2".parse().unwrap()];
    let tcp_to = |port: u16| {
        let mut packet = Vec::new();
        PacketBuilder::ipv4([10, 99, 0, 1], [10, 99, 0, 2], 64)
            .tcp(80, port, 1, 1000)
            .write(&mut packet, b"")
            .unwrap();
        packet
    };
    assert_eq!(local_tcp_port(&tcp_to(61000), &local), Some(61000));
    assert_eq!(
        local_tcp_port(&tcp_to(61000), &["10.99.0.3".parse().unwrap()]),
        None
    );
    let mut udp = Vec::new();
    PacketBuilder::ipv4([10, 99, 0, 1], [10, 99, 0, 2], 64)
        .udp(53, 61000)
        .write(&mut udp, b"x")
        .unwrap();
    assert_eq!(local_tcp_port(&udp, &local), None);

    // An ICMP error quoting a SYN from the local address names the SYN's source port.
    let mut pair = Pair::new(Limits::default());
    pair.deliver_to_server = false;
    pair.connect("10.99.0.2:61000", "10.99.0.1:80");
    pair.step();
    let syn = pair.client_sent.first().expect("a SYN").clone();
    let unreachable = Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Host);
    assert_eq!(
        local_tcp_port(
            &icmpv4_error(&syn, [192, 0, 2, 9], unreachable.clone()),
            &local
        ),
        Some(61000)
    );
    let mut other = syn.clone();
    other[20..22].copy_from_slice(&40000u16.to_be_bytes());
    assert_eq!(
        local_tcp_port(&icmpv4_error(&other, [192, 0, 2, 9], unreachable), &local),
        Some(40000)
    );
}

#[test]
fn a_connection_opened_after_a_long_idle_spell_gets_its_whole_timeout() {
    let mut pair = Pair::new(Limits::default());
    pair.server.listen("10.99.0.1:80".parse().unwrap()).unwrap();
    pair.step();
    // Nothing polls the stacks for a minute, far beyond the connect timeout.
    pair.elapsed += Duration::from_secs(60);
    let id = pair.connect("10.99.0.2:61000", "10.99.0.1:80");
    assert!(pair.run_until(50, |p| p.outcome(id).is_some()));
    assert_eq!(pair.outcome(id), Some(Ok(())));
}

#[test]
fn a_local_endpoint_is_released_once_its_connection_is_gone() {
    let local: SocketAddr = "10.99.0.2:61000".parse().unwrap();
    // Given up while being opened: reset at once, and freed.
    let mut pair = Pair::new(Limits::default());
    pair.deliver_to_server = false;
    let id = pair.connect("10.99.0.2:61000", "10.99.0.1:80");
    pair.step();
    pair.client.close(id);
    assert!(pair.run_until(5, |p| p.client_events.contains(&Event::Released(local))));
    assert_eq!(pair.client.connection_count(), 0);

    // Closed after use: released once the FIN exchange is over.
    let mut pair = Pair::new(Limits::default());
    let (id, server_id) = pair.established();
    pair.client.close(id);
    assert!(pair.run_until(50, |p| {
        p.server_events.contains(&Event::PeerFinished(server_id))
    }));
    assert!(!pair.client_events.contains(&Event::Released(local)));
    pair.server.close(server_id);
    assert!(pair.run_until(50, |p| p.client_events.contains(&Event::Released(local))));
}

//! `TcpStack` against a real client TCP implementation (a second smoltcp
//! interface), shuttling raw IP packets between them on a virtual clock.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use etherparse::{SlicedPacket, TransportSlice};
use smoltcp::socket::tcp;
use tundns_netstack::{Error, Event, IdleReset, Limits, TcpStack};
use tundns_test_support::packet;

/// Two queries written back to back on one connection come back as two
/// separately written answers, in order.
fn pipelined_queries(service: &str) {
    let mut harness = Harness::new(Limits::default());
    let mut server = FramedEcho::default();
    let client = harness.connect(service);
    harness.establish(&mut server, client);

    let mut both = frame(b"first query");
    both.extend(frame(b"second, longer query"));
    harness.client_socket(client).send_slice(&both).unwrap();
    let mut received = Vec::new();
    assert!(harness.run_until(&mut server, 100, |h| {
        received.extend(h.client_read_all(client));
        received.len() >= both.len()
    }));
    assert_eq!(received, both);
    assert_eq!(server.messages_echoed, 2);

    let accepted = harness.accepted();
    assert_eq!(accepted.len(), 1);
    let (_, peer, local) = accepted[0];
    assert_eq!(local, service.parse::<SocketAddr>().unwrap());
    let client_ip = match local {
        SocketAddr::V4(_) => std::net::IpAddr::from(CLIENT_V4),
        SocketAddr::V6(_) => std::net::IpAddr::from(CLIENT_V6),
    };
    assert_eq!(peer.ip(), client_ip);
    assert_eq!(peer.port(), 40000);
}

#[test]
fn ipv4_serves_several_queries_on_one_connection() {
    pipelined_queries(V4_SERVICE);
}

#[test]
fn ipv6_serves_several_queries_on_one_connection() {
    pipelined_queries(V6_SERVICE);
}

#[test]
fn concurrent_connections_are_kept_apart() {
    let mut harness = Harness::new(Limits::default());
    let mut server = FramedEcho::default();
    // All SYNs reach the stack in the same batch.
    let clients: Vec<_> = (0..6)
        .map(|i| harness.connect(if i % 2 == 0 { V4_SERVICE } else { V6_SERVICE }))
        .collect();
    assert!(harness.run_until(&mut server, 100, |h| h.accepted().len() == 6));
    assert!(clients.iter().all(|&c| harness.client_socket(c).may_send()));
    assert_eq!(harness.stack.connection_count(), 6);

    let messages: Vec<_> = (0..clients.len())
        .map(|i| frame(format!("query from client {i}").as_bytes()))
        .collect();
    for (&client, message) in clients.iter().zip(&messages) {
        harness.client_socket(client).send_slice(message).unwrap();
    }
    let mut received = vec![Vec::new(); clients.len()];
    assert!(harness.run_until(&mut server, 100, |h| {
        for (i, &client) in clients.iter().enumerate() {
            received[i].extend(h.client_read_all(client));
        }
        received
            .iter()
            .zip(&messages)
            .all(|(r, m)| r.len() >= m.len())
    }));
    assert_eq!(received, messages);
}

/// With `IdleReset::Explicit` a byte trickled now and then keeps nothing open (slowloris);
/// only the owner's `keep_alive` does.
#[test]
fn a_trickle_of_bytes_does_not_keep_an_explicit_connection() {
    let limits = Limits {
        idle_timeout: Duration::from_secs(2),
        idle_reset: IdleReset::Explicit,
        ..Limits::default()
    };
    let mut harness = Harness::new(limits);
    let mut server = Silent;
    let client = harness.connect(V4_SERVICE);
    let id = harness.establish(&mut FramedEcho::default(), client);

    // The owner's word restarts the timer...
    harness.elapsed += Duration::from_millis(1500);
    harness.step();
    harness.stack.keep_alive(id);
    harness.elapsed += Duration::from_millis(1500);
    harness.step();
    assert!(
        !harness.closed(id),
        "keep_alive must restart the idle timer"
    );
    // ...and a byte at a time, read or not, does not.
    for _ in 0..2 {
        harness.client_socket(client).send_slice(b"\x00").unwrap();
        harness.settle(&mut server);
        let mut byte = [0u8; 1];
        let _ = harness.stack.read(id, &mut byte);
        harness.elapsed += Duration::from_millis(300);
    }
    assert!(harness.run_until(&mut server, 100, |h| h.closed(id)));
}

#[test]
fn idle_connection_is_closed_after_timeout() {
    let limits = Limits {
        idle_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let mut harness = Harness::new(limits);
    let mut server = FramedEcho::default();
    let client = harness.connect(V4_SERVICE);
    let id = harness.establish(&mut server, client);

    // Activity before the deadline keeps it open.
    harness.elapsed += Duration::from_millis(1500);
    harness
        .client_socket(client)
        .send_slice(&frame(b"q"))
        .unwrap();
    assert!(harness.run_until(&mut server, 100, |h| h.client_read_all(client).len() == 3));
    harness.settle(&mut server);
    harness.elapsed += Duration::from_millis(1500);
    harness.step();
    assert!(!harness.closed(id), "activity must reset the idle timer");

    let delay = harness
        .stack
        .poll_delay(harness.now())
        .expect("an idle deadline");
    assert!(
        delay <= Duration::from_secs(2),
        "poll_delay {delay:?} ignores the idle deadline"
    );

    harness.elapsed += Duration::from_secs(1);
    assert!(harness.run_until(&mut server, 100, |h| h.closed(id)));
    // The stack sends FIN: the client sees the end of the stream.
    assert!(harness.run_until(&mut Silent, 100, |h| !h.client_socket(client).may_recv()));
    assert_eq!(
        harness.stack.write(id, b"late"),
        Err(Error::UnknownConnection)
    );

    // Once the client closes its half too, the connection is released.
    harness.client_socket(client).close();
    assert!(harness.run_until(&mut Silent, 100, |h| h.stack.connection_count() == 0));
}

#[test]
fn closing_connection_whose_peer_vanished_is_released() {
    let limits = Limits {
        idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let mut harness = Harness::new(limits);
    let client = harness.connect(V4_SERVICE);
    let id = harness.establish(&mut Silent, client);
    harness.stack.close(id);
    // The client never answers again: drop everything the stack sends.
    for _ in 0..20 {
        harness.step();
        harness.stack.drain_transmit(|_| {});
        harness.elapsed += Duration::from_millis(200);
    }
    assert_eq!(harness.stack.connection_count(), 0);
    assert!(
        !harness.closed(id),
        "close() is not echoed by Event::Closed"
    );
}

#[test]
fn connections_beyond_the_bound_are_reset() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let mut harness = Harness::new(limits);
    let mut server = FramedEcho::default();
    // Three SYNs in one batch, to two different endpoints.
    let clients = [
        harness.connect(V4_SERVICE),
        harness.connect(V6_SERVICE),
        harness.connect(V4_SERVICE),
    ];
    assert!(harness.run_until(&mut server, 100, |h| {
        h.accepted().len() == 2
            && clients
                .iter()
                .all(|&c| h.client_socket(c).state() != tcp::State::SynSent)
    }));
    let states: Vec<_> = clients
        .iter()
        .map(|&c| harness.client_socket(c).state())
        .collect();
    assert_eq!(
        states,
        [
            tcp::State::Established,
            tcp::State::Established,
            tcp::State::Closed
        ],
        "the third SYN must be refused with a RST"
    );
    assert_eq!(harness.stack.connection_count(), 2);
    assert_eq!(harness.accepted().len(), 2);

    // Freeing a slot lets the next client in.
    let (first, _, _) = harness.accepted()[0];
    harness.stack.close(first);
    assert!(harness.run_until(&mut server, 100, |h| {
        !h.client_socket(clients[0]).may_recv()
    }));
    harness.client_socket(clients[0]).close();
    // A closing connection holds its slot until its FIN exchange is over.
    assert!(harness.run_until(&mut server, 100, |h| h.stack.connection_count() == 1));
    let late = harness.connect(V4_SERVICE);
    harness.establish(&mut server, late);
    assert_eq!(harness.accepted().len(), 3);
    assert!(harness.stack.connection_count() <= 2);
}

#[test]
fn stale_connection_id_is_rejected_and_never_misrouted() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let mut harness = Harness::new(limits);
    let first_client = harness.connect(V4_SERVICE);
    let stale = harness.establish(&mut Silent, first_client);
    harness.stack.close(stale);
    assert_eq!(
        harness.stack.write(stale, b"x"),
        Err(Error::UnknownConnection)
    );
    let mut buf = [0u8; 8];
    assert_eq!(
        harness.stack.read(stale, &mut buf),
        Err(Error::UnknownConnection)
    );

    harness.client_socket(first_client).close();
    assert!(harness.run_until(&mut Silent, 100, |h| h.stack.connection_count() == 0));

    // With one slot, the next connection reuses the stale id's storage.
    let second_client = harness.connect(V4_SERVICE);
    let fresh = harness.establish(&mut Silent, second_client);
    assert_ne!(fresh, stale);
    assert_eq!(
        harness.stack.write(stale, b"misrouted"),
        Err(Error::UnknownConnection)
    );
    harness.stack.close(stale);
    assert_eq!(harness.stack.write(fresh, b"ok"), Ok(2));
    assert!(harness.run_until(
        &mut Silent,
        100,
        |h| h.client_socket(second_client).recv_queue() > 0
    ));
    assert_eq!(harness.client_read_all(second_client), b"ok");
    assert!(
        harness.client_socket(second_client).may_recv(),
        "close(stale) hit the new connection"
    );
}

#[test]
fn peer_half_close_still_gets_its_answer() {
    let mut harness = Harness::new(Limits::default());
    let mut server = FramedEcho::default();
    let client = harness.connect(V6_SERVICE);
    harness.establish(&mut server, client);
    let query = frame(b"query then FIN");
    harness.client_socket(client).send_slice(&query).unwrap();
    harness.client_socket(client).close();
    let mut received = Vec::new();
    assert!(harness.run_until(&mut server, 100, |h| {
        received.extend(h.client_read_all(client));
        !h.client_socket(client).may_recv()
    }));
    assert_eq!(received, query);
    let (id, _, _) = harness.accepted()[0];
    let position = |wanted: Event| harness.events.iter().position(|e| *e == wanted).unwrap();
    assert!(position(Event::Data(id)) <= position(Event::PeerFinished(id)));
    assert!(harness.run_until(&mut Silent, 100, |h| h.stack.connection_count() == 0));
}

#[test]
fn peer_reset_is_reported_as_closed() {
    let mut harness = Harness::new(Limits::default());
    let client = harness.connect(V4_SERVICE);
    let id = harness.establish(&mut Silent, client);
    harness.client_socket(client).abort();
    assert!(harness.run_until(&mut Silent, 100, |h| h.closed(id)));
    assert_eq!(harness.stack.write(id, b"x"), Err(Error::UnknownConnection));
    assert_eq!(harness.stack.connection_count(), 0);
}

#[test]
fn full_send_buffer_applies_back_pressure() {
    let limits = Limits {
        tx_buffer: 2048,
        ..Limits::default()
    };
    let mut harness = Harness::new(limits);
    let client = harness.connect(V4_SERVICE);
    let id = harness.establish(&mut Silent, client);

    let answer: Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
    let mut sent = harness.stack.write(id, &answer).unwrap();
    assert_eq!(sent, 2048, "a write beyond the send buffer is partial");
    assert_eq!(harness.stack.write(id, &answer[sent..]), Ok(0));
    let mut received = Vec::new();
    for _ in 0..200 {
        if received.len() == answer.len() {
            break;
        }
        let events = harness.step();
        if events.contains(&Event::Writable(id)) {
            sent += harness.stack.write(id, &answer[sent..]).unwrap();
        }
        harness.deliver();
        received.extend(harness.client_read_all(client));
    }
    assert_eq!(received, answer);
}

#[test]
fn syn_to_unlistened_port_is_reset() {
    let mut stack = TcpStack::new(Limits::default());
    stack.listen(V4_SERVICE.parse().unwrap()).unwrap();
    let now = std::time::Instant::now();
    let syn = tcp_syn([10, 30, 30, 30], 54);
    stack.receive(&syn, now);
    let mut events = Vec::new();
    stack.poll(now, &mut events);
    assert!(events.is_empty());
    let mut replies = Vec::new();
    stack.drain_transmit(|packet| replies.push(packet.to_vec()));
    assert_eq!(replies.len(), 1);
    let reply = SlicedPacket::from_ip(&replies[0]).unwrap();
    let Some(TransportSlice::Tcp(tcp)) = reply.transport else {
        panic!("expected TCP, got {reply:?}");
    };
    assert!(tcp.rst());
    assert_eq!(tcp.source_port(), 54);
    assert_eq!(tcp.destination_port(), 40000);
    assert_eq!(tcp.acknowledgment_number(), 1001);
}

/// The TCP payload lengths of what the stack sends now, which then reaches the client.
fn sent_payloads(harness: &mut Harness) -> Vec<usize> {
    let mut lengths = Vec::new();
    let to_client = &mut harness.client_device.rx;
    harness.stack.drain_transmit(|packet| {
        to_client.push_back(packet.to_vec());
        let sliced = SlicedPacket::from_ip(packet).unwrap();
        let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
            panic!("expected TCP, got {sliced:?}");
        };
        assert!(tcp.ack(), "every segment after the handshake acknowledges");
        lengths.push(tcp.payload().len());
    });
    harness.deliver();
    lengths
}

/// With no ACK delay, an answer written between `poll_received` and `poll` carries the
/// query's ACK in its one segment (a `poll` in place of `poll_received` sends a lone ACK
/// first), and half a query is acknowledged by the next `poll` itself, leaving no
/// delayed-ACK timer behind.
#[test]
fn without_an_ack_delay_answers_carry_the_ack_and_a_lone_ack_needs_no_timer() {
    let mut harness = Harness::new(Limits {
        ack_delay: None,
        ..Limits::default()
    });
    let mut server = FramedEcho::default();
    let client = harness.connect(V4_SERVICE);
    harness.establish(&mut server, client);
    harness.settle(&mut server);
    assert_eq!(sent_payloads(&mut harness), []);

    let query = frame(b"a whole query");
    harness.client_socket(client).send_slice(&query).unwrap();
    harness.client_to_stack();
    let now = harness.now();
    let mut events = Vec::new();
    harness.stack.poll_received(now, &mut events);
    server.handle(&mut harness.stack, &events);
    events.clear();
    harness.stack.poll(now, &mut events);
    assert_eq!(
        sent_payloads(&mut harness),
        [query.len()],
        "one segment: the answer, with the ACK"
    );

    harness
        .client_socket(client)
        .send_slice(&query[..1])
        .unwrap();
    harness.client_to_stack();
    let now = harness.now();
    events.clear();
    harness.stack.poll_received(now, &mut events);
    server.handle(&mut harness.stack, &events);
    events.clear();
    harness.stack.poll(now, &mut events);
    assert_eq!(sent_payloads(&mut harness), [0], "a lone ACK, at once");
    let next = harness.stack.poll_delay(now).expect("the idle timer");
    assert!(
        next > Duration::from_secs(1),
        "no delayed-ACK timer: {next:?}"
    );
}

#[test]
fn packets_to_unlistened_ips_or_other_protocols_are_dropped() {
    let mut stack = TcpStack::new(Limits::default());
    stack.listen(V4_SERVICE.parse().unwrap()).unwrap();
    let now = std::time::Instant::now();
    stack.receive(&tcp_syn([10, 30, 30, 31], 53), now);
    let udp = packet::udp([10, 0, 0, 2], [10, 30, 30, 30], 40000, 53, b"not tcp");
    stack.receive(&udp, now);
    let mut events = Vec::new();
    stack.poll(now, &mut events);
    let mut replies = 0;
    stack.drain_transmit(|_| replies += 1);
    assert_eq!((events.len(), replies), (0, 0));
    assert_eq!(
        stack.poll_delay(now),
        None,
        "nothing to do without connections"
    );
}

#[test]
fn listen_rejects_endpoints_it_cannot_serve() {
    let mut stack = TcpStack::new(Limits::default());
    for bad in [
        "0.0.0.0:53",
        "10.30.30.30:0",
        "[ff02::1]:53",
        "255.255.255.255:53",
    ] {
        let bad: SocketAddr = bad.parse().unwrap();
        assert_eq!(stack.listen(bad), Err(Error::InvalidEndpoint(bad)));
    }
    assert_eq!(stack.listen(V4_SERVICE.parse().unwrap()), Ok(()));
    assert_eq!(stack.listen(V4_SERVICE.parse().unwrap()), Ok(()));
}

fn tcp_syn(destination: [u8; 4], port: u16) -> Vec<u8> {
    let syn = packet::Tcp {
        syn: true,
        ..packet::Tcp::new(40000, port, 1000, 64240)
    };
    packet::tcp([10, 0, 0, 2], destination, &syn, &[])
}

#[test]
fn retransmitted_syn_does_not_open_a_second_connection() {
    let mut harness = Harness::new(Limits::default());
    let mut server = FramedEcho::default();
    // One full connection cycle frees a socket slot, so the spare listener
    // created when the next SYN arrives sits before that connection in
    // smoltcp's socket set, the order in which smoltcp offers segments.
    let first = harness.connect(V4_SERVICE);
    harness.establish(&mut server, first);
    harness.client_socket(first).close();
    assert!(harness.run_until(&mut server, 100, |h| h.stack.connection_count() == 0));

    let client = harness.connect(V4_SERVICE);
    harness.step();
    // The SYN-ACK is lost: the client retransmits its SYN after a second.
    harness.stack.drain_transmit(|_| {});
    harness.elapsed += Duration::from_millis(1100);
    let id = harness.establish(&mut server, client);
    assert_eq!(harness.stack.connection_count(), 1);

    let query = frame(b"after a lost SYN-ACK");
    harness.client_socket(client).send_slice(&query).unwrap();
    let mut received = Vec::new();
    assert!(harness.run_until(&mut server, 100, |h| {
        received.extend(h.client_read_all(client));
        received.len() >= query.len()
    }));
    assert_eq!(received, query);
    harness.elapsed += Duration::from_secs(3);
    harness.settle(&mut server);
    assert!(!harness.closed(id));
    assert_eq!(harness.stack.connection_count(), 1);
    assert_eq!(harness.accepted().len(), 2);
}

/// A connection reset by its owner is gone at once, for both sides: its slot is free for
/// the next client without waiting on a FIN exchange the peer may never finish.
#[test]
fn a_reset_connection_frees_its_slot_at_once() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let mut harness = Harness::new(limits);
    let mut server = FramedEcho::default();
    let client = harness.connect(V4_SERVICE);
    let id = harness.establish(&mut server, client);
    harness.stack.reset(id);
    assert!(harness.run_until(&mut server, 100, |h| {
        h.client_socket(client).state() == tcp::State::Closed && h.stack.connection_count() == 0
    }));
    let next = harness.connect(V4_SERVICE);
    harness.establish(&mut server, next);
    assert_eq!(harness.accepted().len(), 2);
}

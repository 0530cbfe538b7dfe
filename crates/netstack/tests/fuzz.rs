//! Whatever arrives from the TUN, the stack never panics.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use proptest::prelude::*;
use tundns_netstack::{Event, Limits, TcpStack};
use tundns_test_support::packet::{Tcp, tcp};

const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const SERVICE_V4: Ipv4Addr = Ipv4Addr::new(10, 30, 30, 30);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const SERVICE_V6: Ipv6Addr = Ipv6Addr::new(0xfd30, 0x30, 0x30, 0, 0, 0, 0, 0x30);

fn stack() -> TcpStack {
    let mut stack = TcpStack::new(Limits {
        max_connections: 4,
        ..Limits::default()
    });
    stack.listen("10.30.30.30:53".parse().unwrap()).unwrap();
    stack
        .listen("[fd30:30:30::30]:53".parse().unwrap())
        .unwrap();
    stack
}

/// A sequence or acknowledgment number: arbitrary, or close to what the
/// stack last sent, so that handshakes complete and data flows.
#[derive(Debug, Clone, Copy)]
enum Number {
    Raw(u32),
    NearStack(i16),
}

#[derive(Debug, Clone)]
struct Segment {
    ipv6: bool,
    port: u16,
    client_port: u16,
    seq: Number,
    ack: Option<Number>,
    flags: (bool, bool, bool, bool),
    window: u16,
    payload: Vec<u8>,
}

#[derive(Debug, Clone)]
enum Input {
    Bytes(Vec<u8>),
    Segment(Segment),
    /// A SYN, then the ACK completing the handshake, from this client.
    Handshake {
        ipv6: bool,
        client_port: u16,
    },
}

/// The last sequence and acknowledgment numbers the stack sent to a client.
#[derive(Default, Clone, Copy)]
struct StackNumbers {
    seq: u32,
    ack: u32,
}

impl Segment {
    /// Valid IP and TCP headers and checksums, so it reaches smoltcp's TCP
    /// state machine.
    fn build(&self, numbers: &Numbers) -> Vec<u8> {
        let numbers = numbers
            .get(&(self.ipv6, self.client_port))
            .copied()
            .unwrap_or_default();
        let resolve = |number: Number, base: u32| match number {
            Number::Raw(raw) => raw,
            Number::NearStack(offset) => base.wrapping_add_signed(i32::from(offset)),
        };
        let seq = resolve(self.seq, numbers.ack);
        let (syn, fin, rst, psh) = self.flags;
        let segment = Tcp {
            ack: self
                .ack
                .map(|ack| resolve(ack, numbers.seq.wrapping_add(1))),
            syn,
            fin,
            rst,
            psh,
            ..Tcp::new(self.client_port, self.port, seq, self.window)
        };
        if self.ipv6 {
            tcp(CLIENT_V6, SERVICE_V6, &segment, &self.payload)
        } else {
            tcp(CLIENT_V4, SERVICE_V4, &segment, &self.payload)
        }
    }
}

/// Client (IP version, port) → what the stack last told it.
type Numbers = HashMap<(bool, u16), StackNumbers>;

/// Feeds `inputs` with the clock moving in between; returns how many
/// connections were accepted.
fn run(stack: &mut TcpStack, inputs: &[(Input, u16)]) -> usize {
    let start = Instant::now();
    let mut elapsed = Duration::ZERO;
    let mut numbers = Numbers::new();
    let mut accepted = 0;
    for (input, advance_ms) in inputs {
        elapsed += Duration::from_millis(u64::from(*advance_ms));
        let now = start + elapsed;
        match input {
            Input::Bytes(bytes) => accepted += feed(stack, bytes, now, &mut numbers),
            Input::Segment(segment) => {
                let packet = segment.build(&numbers);
                accepted += feed(stack, &packet, now, &mut numbers);
            }
            &Input::Handshake { ipv6, client_port } => {
                let mut segment = Segment {
                    ipv6,
                    port: 53,
                    client_port,
                    seq: Number::Raw(1000),
                    ack: None,
                    flags: (true, false, false, false),
                    window: 64240,
                    payload: Vec::new(),
                };
                let syn = segment.build(&numbers);
                accepted += feed(stack, &syn, now, &mut numbers);
                segment.seq = Number::NearStack(0);
                segment.ack = Some(Number::NearStack(0));
                segment.flags = (false, false, false, false);
                let ack = segment.build(&numbers);
                accepted += feed(stack, &ack, now, &mut numbers);
            }
        }
    }
    accepted
}

/// One packet in, then poll, answer every readable connection (closing it
/// when asked to by a leading 0xff), drain and note the stack's numbers.
fn feed(stack: &mut TcpStack, packet: &[u8], now: Instant, numbers: &mut Numbers) -> usize {
    let mut accepted = 0;
    let mut events = Vec::new();
    stack.receive(packet, now);
    stack.poll(now, &mut events);
    for event in events.drain(..) {
        match event {
            Event::Accepted { .. } => accepted += 1,
            Event::Data(id) => {
                let mut buf = [0u8; 64];
                let n = stack.read(id, &mut buf).unwrap();
                let _ = stack.write(id, &buf[..n]);
                if buf[..n].first() == Some(&0xff) {
                    stack.close(id);
                }
            }
            _ => {}
        }
    }
    stack.drain_transmit(|packet| {
        if let Ok(SlicedPacket {
            net: Some(net),
            transport: Some(TransportSlice::Tcp(tcp)),
            ..
        }) = SlicedPacket::from_ip(packet)
        {
            let ipv6 = matches!(net, NetSlice::Ipv6(_));
            numbers.insert(
                (ipv6, tcp.destination_port()),
                StackNumbers {
                    seq: tcp.sequence_number(),
                    ack: tcp.acknowledgment_number(),
                },
            );
        }
    });
    let _ = stack.poll_delay(now);
    accepted
}

fn number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<u32>().prop_map(Number::Raw),
        (-4i16..4).prop_map(Number::NearStack),
        any::<i16>().prop_map(Number::NearStack),
    ]
}

fn segment() -> impl Strategy<Value = Segment> {
    (
        any::<bool>(),
        prop::sample::select(vec![53u16, 54]),
        40000u16..40004,
        number(),
        prop::option::weighted(0.8, number()),
        any::<(bool, bool, bool, bool)>(),
        any::<u16>(),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(
            |(ipv6, port, client_port, seq, ack, flags, window, payload)| Segment {
                ipv6,
                port,
                client_port,
                seq,
                ack,
                flags,
                window,
                payload,
            },
        )
}

/// Raw bytes, bytes behind a plausible IPv4 header, or a well-formed segment.
fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..128).prop_map(Input::Bytes),
        1 => prop::collection::vec(any::<u8>(), 0..128).prop_map(|tail| {
            let mut packet = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 2, 10, 30, 30, 30];
            packet.extend(tail);
            Input::Bytes(packet)
        }),
        6 => segment().prop_map(Input::Segment),
        2 => (any::<bool>(), 40000u16..40004)
            .prop_map(|(ipv6, client_port)| Input::Handshake { ipv6, client_port }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        run(&mut stack(), &[(Input::Bytes(bytes), 0)]);
    }

    #[test]
    fn arbitrary_packet_sequences_never_panic(
        inputs in prop::collection::vec((input(), 0u16..3000), 1..40)
    ) {
        let mut stack = stack();
        run(&mut stack, &inputs);
        prop_assert!(stack.connection_count() <= 4);
    }
}

/// Guards the generator: handshakes and relative numbers do reach
/// established connections, for both IP versions.
#[test]
fn generated_inputs_reach_established_connections() {
    let data = |ipv6| Segment {
        ipv6,
        port: 53,
        client_port: 40001,
        seq: Number::NearStack(0),
        ack: Some(Number::NearStack(0)),
        flags: (false, false, false, true),
        window: 64240,
        payload: b"hi".to_vec(),
    };
    for ipv6 in [false, true] {
        let inputs = [
            (
                Input::Handshake {
                    ipv6,
                    client_port: 40001,
                },
                0,
            ),
            (Input::Segment(data(ipv6)), 1),
        ];
        assert_eq!(run(&mut stack(), &inputs), 1);
    }
}

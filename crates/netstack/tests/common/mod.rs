//! A client-side smoltcp interface wired back to back with a `TcpStack`,
//! on a virtual clock, plus a length-prefixed echo server for the stack side.

#![allow(dead_code)] // each test binary uses its own part of the harness

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv6Address};
use tundns_netstack::{ConnectionId, Event, Limits, TcpStack};

pub const V4_SERVICE: &str = "10.30.30.30:53";
pub const V6_SERVICE: &str = "[fd30:30:30::30]:53";
pub const CLIENT_V4: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);
pub const CLIENT_V6: Ipv6Address = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
/// Virtual time per harness step: below smoltcp's 10 ms delayed ACK, far
/// below its 1 s retransmission timeout.
pub const STEP: Duration = Duration::from_millis(2);

#[derive(Default)]
pub struct ClientDevice {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
}

pub struct ClientRx(Vec<u8>);
pub struct ClientTx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for ClientRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for ClientTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0; len];
        let result = f(&mut packet);
        self.0.push_back(packet);
        result
    }
}

impl phy::Device for ClientDevice {
    type RxToken<'a> = ClientRx;
    type TxToken<'a> = ClientTx<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(ClientRx, ClientTx<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((ClientRx(packet), ClientTx(&mut self.tx)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<ClientTx<'_>> {
        Some(ClientTx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = 1420;
        caps
    }
}

pub struct Harness {
    pub stack: TcpStack,
    pub client: Interface,
    pub client_device: ClientDevice,
    pub client_sockets: SocketSet<'static>,
    pub start: Instant,
    pub elapsed: Duration,
    /// Every event the stack reported, in order.
    pub events: Vec<Event>,
    next_client_port: u16,
}

impl Harness {
    pub fn new(limits: Limits) -> Self {
        let mut stack = TcpStack::new(limits);
        stack.listen(V4_SERVICE.parse().unwrap()).unwrap();
        stack.listen(V6_SERVICE.parse().unwrap()).unwrap();
        let mut client_device = ClientDevice::default();
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = 7;
        let mut client = Interface::new(config, &mut client_device, SmolInstant::ZERO);
        client.update_ip_addrs(|addrs| {
            addrs.push(IpCidr::new(CLIENT_V4.into(), 24)).unwrap();
            addrs.push(IpCidr::new(CLIENT_V6.into(), 64)).unwrap();
        });
        client
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::new(10, 0, 0, 1))
            .unwrap();
        client
            .routes_mut()
            .add_default_ipv6_route(Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1))
            .unwrap();
        Self {
            stack,
            client,
            client_device,
            client_sockets: SocketSet::new(Vec::new()),
            start: Instant::now(),
            elapsed: Duration::ZERO,
            events: Vec::new(),
            next_client_port: 40000,
        }
    }

    pub fn now(&self) -> Instant {
        self.start + self.elapsed
    }

    fn client_now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.elapsed.as_micros() as i64)
    }

    /// Opens a client connection to `service` (not yet handshaken).
    pub fn connect(&mut self, service: &str) -> SocketHandle {
        let service: SocketAddr = service.parse().unwrap();
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 8192]),
            tcp::SocketBuffer::new(vec![0; 8192]),
        );
        let port = self.next_client_port;
        self.next_client_port += 1;
        let remote = (IpAddress::from(service.ip()), service.port());
        socket
            .connect(self.client.context(), remote, port)
            .expect("client connect");
        self.client_sockets.add(socket)
    }

    pub fn client_socket(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.client_sockets.get_mut::<tcp::Socket>(handle)
    }

    /// Runs the client and hands what it sent to the stack, which has not yet polled.
    pub fn client_to_stack(&mut self) {
        let client_now = self.client_now();
        self.client.poll(
            client_now,
            &mut self.client_device,
            &mut self.client_sockets,
        );
        let now = self.now();
        while let Some(packet) = self.client_device.tx.pop_front() {
            self.stack.receive(&packet, now);
        }
    }

    /// One round trip of the wire: client out, stack in, stack out, client in.
    /// Returns the events the stack reported in this step.
    pub fn step(&mut self) -> Vec<Event> {
        self.client_to_stack();
        let now = self.now();
        let mut events = Vec::new();
        self.stack.poll(now, &mut events);
        self.events.extend_from_slice(&events);
        events
    }

    /// Sends what the stack queued to the client and lets the clock run.
    pub fn deliver(&mut self) {
        let device = &mut self.client_device;
        self.stack
            .drain_transmit(|packet| device.rx.push_back(packet.to_vec()));
        let client_now = self.client_now();
        self.client.poll(
            client_now,
            &mut self.client_device,
            &mut self.client_sockets,
        );
        self.elapsed += STEP;
    }

    /// Steps with `server` reacting to the stack's events until `done`
    /// holds, at most `max_steps` times. Returns whether `done` held.
    pub fn run_until(
        &mut self,
        server: &mut impl Server,
        max_steps: usize,
        mut done: impl FnMut(&mut Self) -> bool,
    ) -> bool {
        for _ in 0..max_steps {
            if done(self) {
                return true;
            }
            let events = self.step();
            server.handle(&mut self.stack, &events);
            self.deliver();
        }
        done(self)
    }

    pub fn accepted(&self) -> Vec<(ConnectionId, SocketAddr, SocketAddr)> {
        self.events
            .iter()
            .filter_map(|event| match *event {
                Event::Accepted { id, peer, local } => Some((id, peer, local)),
                _ => None,
            })
            .collect()
    }

    /// Lets delayed ACKs and other stragglers cross the wire.
    pub fn settle(&mut self, server: &mut impl Server) {
        self.run_until(server, 20, |_| false);
    }

    /// The stack's id for the client connection `handle`, once accepted.
    pub fn id_of(&mut self, handle: SocketHandle) -> Option<ConnectionId> {
        let client = self.client_socket(handle).local_endpoint()?;
        self.accepted()
            .into_iter()
            .rev()
            .find(|(_, peer, _)| peer.port() == client.port)
            .map(|(id, _, _)| id)
    }

    /// Runs until the stack has accepted the client connection `handle`.
    pub fn establish(&mut self, server: &mut impl Server, handle: SocketHandle) -> ConnectionId {
        assert!(
            self.run_until(server, 100, |h| h.id_of(handle).is_some()),
            "connection was not accepted"
        );
        self.id_of(handle).unwrap()
    }

    pub fn closed(&self, id: ConnectionId) -> bool {
        self.events.contains(&Event::Closed(id))
    }

    /// Everything the client socket has received so far.
    pub fn client_read_all(&mut self, handle: SocketHandle) -> Vec<u8> {
        let socket = self.client_socket(handle);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = socket.recv_slice(&mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        out
    }
}

/// The service side of a test, driven by the stack's events.
pub trait Server {
    fn handle(&mut self, stack: &mut TcpStack, events: &[Event]);
}

/// Does nothing: connections are accepted and left alone.
pub struct Silent;

impl Server for Silent {
    fn handle(&mut self, _: &mut TcpStack, _: &[Event]) {}
}

/// Echoes every complete 2-byte-length-prefixed message as its own write
/// (RFC 7766 framing), and closes when the peer finishes.
#[derive(Default)]
pub struct FramedEcho {
    pending: HashMap<ConnectionId, Vec<u8>>,
    pub messages_echoed: usize,
}

impl Server for FramedEcho {
    fn handle(&mut self, stack: &mut TcpStack, events: &[Event]) {
        for event in events {
            match *event {
                Event::Data(id) => {
                    let buffer = self.pending.entry(id).or_default();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let n = stack.read(id, &mut chunk).unwrap();
                        if n == 0 {
                            break;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                    }
                    while let Some(message) = take_frame(buffer) {
                        let written = stack.write(id, &message).unwrap();
                        assert_eq!(written, message.len(), "test messages fit the tx buffer");
                        self.messages_echoed += 1;
                    }
                }
                Event::PeerFinished(id) => stack.close(id),
                Event::Closed(id) => {
                    self.pending.remove(&id);
                }
                _ => {}
            }
        }
    }
}

/// Prefixes `payload` with its 16-bit big-endian length.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut framed = (payload.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(payload);
    framed
}

/// Removes and returns the first complete frame (prefix included).
pub fn take_frame(buffer: &mut Vec<u8>) -> Option<Vec<u8>> {
    let length = usize::from(u16::from_be_bytes([*buffer.first()?, *buffer.get(1)?]));
    if buffer.len() < 2 + length {
        return None;
    }
    Some(buffer.drain(..2 + length).collect())
}

pub fn service_ip(service: &str) -> IpAddr {
    service.parse::<SocketAddr>().unwrap().ip()
}

//! Userspace TCP for tundns's virtual services (DNS over TCP, RFC 7766) and
//! for the proxies' connections into the tunnel.
//!
//! This crate owns a smoltcp interface over an in-memory device and turns it
//! into connections and byte streams: it accepts TCP connections on listened
//! `(virtual IP, port)` endpoints, opens connections from a local address
//! ([`TcpStack::connect`], telling why one failed: a RST, an ICMP error or no
//! answer), bounds their number, closes idle ones and reports what happened as
//! [`Event`]s. It is sans-IO: the caller feeds the raw IP packets meant for it
//! (diverted from the TUN, or from the tunnel) into [`TcpStack::receive`],
//! drives time through [`TcpStack::poll`] and sends what
//! [`TcpStack::drain_transmit`] hands back. With the ACK delay off
//! ([`Limits::ack_delay`]), [`TcpStack::poll_received`] takes the place of the
//! first `poll`, so that answers written after it carry the ACKs.
//!
//! It must never touch a socket, a clock, a thread or an async runtime, never
//! know which protocol runs over its streams, and never panic on any input.
//!
//! A typical loop:
//!
//! ```
//! # use std::time::Instant;
//! # use tundns_netstack::{Event, Limits, TcpStack};
//! let mut stack = TcpStack::new(Limits::default());
//! stack.listen("10.30.30.30:53".parse().unwrap()).unwrap();
//! let mut events = Vec::new();
//! # let inbound_packets: Vec<Vec<u8>> = Vec::new();
//! let now = Instant::now();
//! for packet in &inbound_packets {
//!     stack.receive(packet, now);
//! }
//! stack.poll(now, &mut events);
//! for event in events.drain(..) {
//!     if let Event::Data(id) = event {
//!         let mut buf = [0u8; 512];
//!         let n = stack.read(id, &mut buf).unwrap_or(0);
//!         let _ = stack.write(id, &buf[..n]);
//!     }
//! }
//! stack.drain_transmit(|packet| { /* write `packet` to the TUN */ });
//! let _next_poll = stack.poll_delay(now);
//! ```

#![forbid(unsafe_code)]

mod device;
mod icmp;

use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::iface::{
    Config, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet,
};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration as SmolDuration, Instant as SmolInstant};
use smoltcp::wire::{HardwareAddress, IpEndpoint};
use tundns_packet::{IpView, Transport, ipv4, ipv6, protocol};

use device::{QUEUE_CAPACITY, QueueDevice};

/// Resource bounds of a [`TcpStack`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections held at once, counting half-open and closing ones. When
    /// reached, no socket listens, so new SYNs are answered with a RST.
    pub max_connections: usize,
    /// A connection idle this long is closed (RFC 7766 §6.2.3 suggests
    /// seconds); what counts as activity is [`Limits::idle_reset`]'s. It is also
    /// how long a closing connection may linger before it is reset.
    pub idle_timeout: Duration,
    /// What keeps a connection from idling out.
    pub idle_reset: IdleReset,
    /// Receive buffer per connection, in bytes (the advertised window).
    pub rx_buffer: usize,
    /// Send buffer per connection, in bytes: how much [`TcpStack::write`]
    /// accepts before applying back-pressure.
    pub tx_buffer: usize,
    /// Largest IP packet the stack emits; set it to the TUN MTU.
    pub mtu: usize,
    /// How long a connection opened with [`TcpStack::connect`] may take to be
    /// established before it fails with [`ConnectFailure::TimedOut`].
    pub connect_timeout: Duration,
    /// How long an ACK may wait for data to ride with (smoltcp's 10 ms by default);
    /// `None` sends it with the next [`TcpStack::poll`] or
    /// [`TcpStack::drain_transmit`]. An owner that answers between
    /// [`TcpStack::poll_received`] and those gets its ACKs carried by its answers
    /// without a timer, and a lone ACK without waiting on one.
    pub ack_delay: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            idle_timeout: Duration::from_secs(10),
            idle_reset: IdleReset::Traffic,
            rx_buffer: 4 * 1024,
            tx_buffer: 16 * 1024,
            mtu: 1420,
            connect_timeout: Duration::from_secs(10),
            ack_delay: Some(Duration::from_millis(10)),
        }
    }
}

/// What resets a connection's idle timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleReset {
    /// Any byte moving either way: for byte streams such as a proxied connection.
    Traffic,
    /// Only [`TcpStack::keep_alive`]: for a protocol of messages, whose client must
    /// not keep a connection by trickling a byte at a time (slowloris).
    Explicit,
}

/// IPv6 requires links to carry 1280-byte packets (RFC 8200 §5).
const MIN_MTU: usize = 1280;
const MAX_MTU: usize = 65535;
/// Large enough for one segment of any sane MSS, so a connection can move.
const MIN_BUFFER: usize = 1024;

/// Names one accepted connection. Ids are never reused: once a connection
/// is gone, every call with its id is ignored or rejected, even when its
/// storage already serves a newer connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId {
    index: usize,
    generation: u64,
}

/// What [`TcpStack::poll`] observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A handshake completed. `peer` is the client, `local` the listened endpoint.
    Accepted {
        id: ConnectionId,
        peer: SocketAddr,
        local: SocketAddr,
    },
    /// New bytes arrived. Edge-triggered: [`TcpStack::read`] until it returns 0.
    Data(ConnectionId),
    /// A write was cut short earlier and the send buffer has room again.
    Writable(ConnectionId),
    /// The peer sent FIN: nothing more will arrive once the buffered bytes are
    /// read. Writing is still allowed; call [`TcpStack::close`] when done.
    PeerFinished(ConnectionId),
    /// The connection is gone (peer reset, idle timeout, or the peer vanished)
    /// and its id is now stale. Not emitted after [`TcpStack::close`].
    Closed(ConnectionId),
    /// A connection opened with [`TcpStack::connect`] is established.
    Connected(ConnectionId),
    /// A connection opened with [`TcpStack::connect`] failed; its id is now stale.
    ConnectFailed {
        id: ConnectionId,
        reason: ConnectFailure,
    },
    /// A connection opened with [`TcpStack::connect`] from this local endpoint is
    /// freed: no packet for it will be taken any more.
    Released(SocketAddr),
}

/// Why a connection opened with [`TcpStack::connect`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The far side answered with a RST, or an ICMP "port unreachable".
    Refused,
    /// An ICMP error said no route leads to the destination's network.
    NetworkUnreachable,
    /// An ICMP error said the destination host cannot be reached.
    HostUnreachable,
    /// An ICMP "time exceeded": the SYN ran out of hops.
    TtlExpired,
    /// No answer within [`Limits::connect_timeout`].
    TimedOut,
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The id is stale: the connection was closed or reported [`Event::Closed`].
    #[error("unknown or closed connection")]
    UnknownConnection,
    /// The connection can no longer send (it was reset).
    #[error("connection can no longer send")]
    SendClosed,
    /// Only a specific unicast address with a non-zero port can be listened on
    /// or connected from and to.
    #[error("cannot use endpoint {0}")]
    InvalidEndpoint(SocketAddr),
    /// [`Limits::max_connections`] are held already.
    #[error("too many connections")]
    TooManyConnections,
    /// The local endpoint of a [`TcpStack::connect`] is in use towards that destination.
    #[error("{0} is in use")]
    InUse(SocketAddr),
}

/// A listened endpoint and its spare listening socket, if any.
struct Endpoint {
    local: SocketAddr,
    listener: Option<SocketHandle>,
}

enum Phase {
    /// A listener took a SYN; not yet reported to the caller.
    Handshake,
    /// Opened by [`TcpStack::connect`], not yet established: it fails at
    /// `deadline`, or earlier with the reason an ICMP error gave.
    Connecting {
        deadline: SmolInstant,
        icmp_failure: Option<ConnectFailure>,
    },
    /// Reported with [`Event::Accepted`]; the caller owns it.
    Open,
    /// Given up by the caller or the idle timer; finishing its FIN exchange
    /// (or its RST) until `deadline`, then reset.
    Closing { deadline: SmolInstant },
}

struct Connection {
    socket: SocketHandle,
    phase: Phase,
    last_activity: SmolInstant,
    /// `recv_queue()` after the last poll or read: growth means new bytes.
    rx_seen: usize,
    /// `send_queue()` after the last poll or write: shrinking means progress.
    tx_seen: usize,
    peer_finished_reported: bool,
    write_blocked: bool,
    /// The local endpoint of a connection opened with [`TcpStack::connect`],
    /// reported with [`Event::Released`] when the connection is freed.
    opened_from: Option<SocketAddr>,
}

impl Connection {
    fn new(socket: SocketHandle, phase: Phase, now: SmolInstant) -> Self {
        Self {
            socket,
            phase,
            last_activity: now,
            rx_seen: 0,
            tx_seen: 0,
            peer_finished_reported: false,
            write_blocked: false,
            opened_from: None,
        }
    }
}

struct Slot {
    generation: u64,
    connection: Option<Connection>,
}

/// A sans-IO TCP server stack for the virtual IPs. See the crate docs.
pub struct TcpStack {
    limits: Limits,
    iface: Interface,
    device: QueueDevice,
    sockets: SocketSet<'static>,
    endpoints: Vec<Endpoint>,
    /// The local IPs [`TcpStack::connect`] opened connections from.
    connect_ips: Vec<IpAddr>,
    slots: Vec<Slot>,
    free_slots: Vec<usize>,
    connection_count: usize,
    /// The first caller-supplied instant; smoltcp time counts from here.
    epoch: Option<Instant>,
    now: SmolInstant,
}

impl TcpStack {
    /// Creates a stack that listens nowhere yet. Out-of-range limits are
    /// clamped: the MTU to 1280..=65535, buffers to at least 1 KiB.
    pub fn new(limits: Limits) -> Self {
        let limits = Limits {
            mtu: limits.mtu.clamp(MIN_MTU, MAX_MTU),
            rx_buffer: limits.rx_buffer.max(MIN_BUFFER),
            tx_buffer: limits.tx_buffer.max(MIN_BUFFER),
            ..limits
        };
        let mut device = QueueDevice::new(limits.mtu);
        let mut config = Config::new(HardwareAddress::Ip);
        // Seeds the initial sequence numbers; std's per-process hash keys are
        // random enough for that without another dependency.
        config.random_seed = RandomState::new().hash_one(0x7475_6e64_6e73_u64);
        let mut iface = Interface::new(config, &mut device, SmolInstant::ZERO);
        // The virtual IPs belong to no interface and there may be several of
        // them, more than smoltcp's address table holds (two by default), so
        // accept every destination: `receive` already lets through only
        // listened IPs.
        iface.set_any_ip(true);
        // Clients have arbitrary addresses, on-link for no prefix of ours.
        // smoltcp 0.14 consults routes (`has_neighbor`) only to unsilence a
        // socket after a failed dispatch, which Medium::Ip never produces, so
        // these catch-all routes are insurance: without one, such a socket
        // would stall for a second. With Medium::Ip the gateway is never used
        // as a next hop, so any value works.
        let routes = iface.routes_mut();
        let ipv4 = routes.add_default_ipv4_route(Ipv4Addr::UNSPECIFIED);
        let ipv6 = routes.add_default_ipv6_route(Ipv6Addr::UNSPECIFIED);
        debug_assert!(
            ipv4.is_ok() && ipv6.is_ok(),
            "two routes fit smoltcp's table"
        );
        Self {
            limits,
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            endpoints: Vec::new(),
            connect_ips: Vec::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            connection_count: 0,
            epoch: None,
            now: SmolInstant::ZERO,
        }
    }

    /// The limits in force, after clamping.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Listens on `local`: a specific unicast IP (typically a virtual IP that
    /// no OS interface owns) and a non-zero port. Any number of IPv4 and IPv6
    /// endpoints may be listened on; listening twice is a no-op.
    pub fn listen(&mut self, local: SocketAddr) -> Result<(), Error> {
        if local.port() == 0 || !is_unicast(local.ip()) {
            return Err(Error::InvalidEndpoint(local));
        }
        let local = canonical(local);
        if !self
            .endpoints
            .iter()
            .any(|endpoint| endpoint.local == local)
        {
            self.endpoints.push(Endpoint {
                local,
                listener: None,
            });
            self.reconcile_listeners();
        }
        Ok(())
    }

    /// Opens a connection from `local` to `remote` at `now`; [`Event::Connected`]
    /// or [`Event::ConnectFailed`] follows, and [`Event::Released`] once the
    /// connection is gone and `local` is free again. Packets for `local`'s IP are
    /// accepted by [`TcpStack::receive`] from now on. Choosing a local port no
    /// other connection to `remote` uses is the caller's part.
    pub fn connect(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        now: Instant,
    ) -> Result<ConnectionId, Error> {
        self.advance_clock(now);
        let (local, remote) = (canonical(local), canonical(remote));
        for endpoint in [local, remote] {
            if endpoint.port() == 0 || !is_unicast(endpoint.ip()) {
                return Err(Error::InvalidEndpoint(endpoint));
            }
        }
        if self.connection_count >= self.limits.max_connections {
            return Err(Error::TooManyConnections);
        }
        let tuple = Some((IpEndpoint::from(local), IpEndpoint::from(remote)));
        if self
            .connections()
            .any(|c| endpoints_of(self.sockets.get(c.socket)) == tuple)
        {
            return Err(Error::InUse(local));
        }
        let mut socket = new_socket(&self.limits);
        socket
            .connect(self.iface.context(), remote, local)
            .map_err(|_| Error::InvalidEndpoint(remote))?;
        if !self.connect_ips.contains(&local.ip()) {
            self.connect_ips.push(local.ip());
        }
        let socket = self.sockets.add(socket);
        let deadline = deadline_after(self.now, self.limits.connect_timeout);
        let mut connection = Connection::new(
            socket,
            Phase::Connecting {
                deadline,
                icmp_failure: None,
            },
            self.now,
        );
        connection.opened_from = Some(local);
        Ok(self.add_connection(connection))
    }

    /// Queues an inbound IP packet (from the TUN, or the tunnel);
    /// [`TcpStack::poll`] (or [`TcpStack::poll_received`]) processes it.
    ///
    /// Only TCP packets addressed to a listened IP or to a local IP of
    /// [`TcpStack::connect`] are kept (IPv6 ones with extension headers are
    /// not), and ICMP errors about a connection being opened, whose reason
    /// that connection then fails with. Everything else is dropped silently,
    /// so a misrouted packet never makes the stack answer for an address it
    /// does not serve. A TCP packet to a listened IP but an unlistened port is
    /// answered with a RST by the next poll. When the inbound queue is full
    /// (1024 packets) the packet is dropped and TCP retransmits it.
    /// Whether [`receive`](Self::receive) would drop a packet for want of room: a caller
    /// handing over a large batch polls first.
    pub fn receive_queue_is_full(&self) -> bool {
        self.device.rx_is_full()
    }

    pub fn receive(&mut self, packet: &[u8], now: Instant) {
        self.advance_clock(now);
        if tcp_destination(packet).is_some_and(|dst| self.is_local_ip(dst)) {
            self.device.push_rx(packet);
        } else if let Some(error) = IpView::parse(packet)
            .ok()
            .and_then(|view| icmp::connect_error(&view))
        {
            self.fail_connecting(error);
        }
    }

    /// Processes queued packets, accepts connections, expires idle ones and
    /// appends what happened to `events`. Call it after `receive` and
    /// whenever [`TcpStack::poll_delay`] says so.
    pub fn poll(&mut self, now: Instant, events: &mut Vec<Event>) {
        self.poll_received(now, events);
        self.flush();
        self.sweep_closing(events);
        self.reconcile_listeners();
    }

    /// The first half of [`poll`](Self::poll): processes the received packets and
    /// reports what they changed, and lets the sockets send nothing: what the owner
    /// writes before the next `poll` leaves with the ACKs, in the same segments. Only
    /// smoltcp's own replies to odd segments (a RST to an unlistened port, the ACK of an
    /// out-of-order, duplicate or out-of-window one) are queued at once.
    pub fn poll_received(&mut self, now: Instant, events: &mut Vec<Event>) {
        let now = self.advance_clock(now);
        self.iface.poll_maintenance(now);
        // One packet at a time, so that a listener that just took a SYN is
        // replaced before the next packet: several clients can connect in
        // one batch, and the connection bound is checked per SYN. Every
        // iteration consumes a queued packet, so this ends.
        while self
            .iface
            .poll_ingress_single(now, &mut self.device, &mut self.sockets)
            != PollIngressSingleResult::None
        {
            self.promote_listeners();
            self.reconcile_listeners();
        }
        self.report_and_expire(events);
    }

    /// Reads buffered bytes of `id` into `buf`; returns how many, 0 when none
    /// are buffered (see [`Event::Data`] and [`Event::PeerFinished`]).
    pub fn read(&mut self, id: ConnectionId, buf: &mut [u8]) -> Result<usize, Error> {
        let now = self.now;
        let connection = open_connection(&mut self.slots, id)?;
        let socket = self.sockets.get_mut::<tcp::Socket>(connection.socket);
        // Errors mean "nothing more to read" (finished or reset); the
        // matching event tells which.
        let read = socket.recv_slice(buf).unwrap_or(0);
        connection.rx_seen = socket.recv_queue();
        if read > 0 && self.limits.idle_reset == IdleReset::Traffic {
            connection.last_activity = now;
        }
        Ok(read)
    }

    /// Restarts `id`'s idle timer: with [`IdleReset::Explicit`], the owner's word that
    /// the connection did something worth keeping it for (a whole message). Unknown
    /// ids are ignored.
    pub fn keep_alive(&mut self, id: ConnectionId) {
        let now = self.now;
        if let Ok(connection) = open_connection(&mut self.slots, id) {
            connection.last_activity = now;
        }
    }

    /// Bytes of `id` received and not yet read; 0 for an unknown id.
    pub fn recv_queue(&self, id: ConnectionId) -> usize {
        self.slots
            .get(id.index)
            .filter(|slot| slot.generation == id.generation)
            .and_then(|slot| slot.connection.as_ref())
            .map_or(0, |connection| {
                self.sockets
                    .get::<tcp::Socket>(connection.socket)
                    .recv_queue()
            })
    }

    /// Queues bytes of `data` for sending and returns how many were taken.
    ///
    /// Back-pressure: when the send buffer ([`Limits::tx_buffer`]) is full the
    /// write is partial, possibly 0 bytes; [`Event::Writable`] then announces
    /// room for the rest. Write whole messages in one call where possible:
    /// Nagle is off, so each write can leave as its own segment.
    pub fn write(&mut self, id: ConnectionId, data: &[u8]) -> Result<usize, Error> {
        let now = self.now;
        let connection = open_connection(&mut self.slots, id)?;
        let socket = self.sockets.get_mut::<tcp::Socket>(connection.socket);
        let written = socket.send_slice(data).map_err(|_| Error::SendClosed)?;
        connection.tx_seen = socket.send_queue();
        if written > 0 && self.limits.idle_reset == IdleReset::Traffic {
            connection.last_activity = now;
        }
        if written < data.len() {
            connection.write_blocked = true;
        }
        Ok(written)
    }

    /// Half-closes `id`: queued bytes are sent, then FIN, while bytes from the
    /// peer can still be read. [`Event::Closed`] follows once both sides are
    /// done. Unknown ids are ignored.
    pub fn shutdown(&mut self, id: ConnectionId) {
        if let Ok(connection) = open_connection(&mut self.slots, id) {
            self.sockets
                .get_mut::<tcp::Socket>(connection.socket)
                .close();
        }
    }

    /// Closes `id` gracefully: queued bytes are sent, then FIN; a connection
    /// still being opened is reset instead. The id becomes
    /// stale at once and no [`Event::Closed`] follows. Unknown ids are ignored.
    pub fn close(&mut self, id: ConnectionId) {
        let deadline = self.deadline(self.now);
        let Some(connection) = live_connection(&mut self.slots, id) else {
            return;
        };
        let socket = self.sockets.get_mut::<tcp::Socket>(connection.socket);
        match connection.phase {
            Phase::Open => socket.close(),
            // Given up before it was established: nobody will ever use it.
            Phase::Connecting { .. } => socket.abort(),
            Phase::Handshake | Phase::Closing { .. } => return,
        }
        connection.phase = Phase::Closing { deadline };
    }

    /// Resets `id` at once (RST), dropping what is queued: for a connection refused
    /// after it was accepted, whose slot must not linger in a FIN exchange the peer may
    /// never finish. The id becomes stale at once and no [`Event::Closed`] follows.
    /// Unknown ids are ignored.
    pub fn reset(&mut self, id: ConnectionId) {
        let deadline = self.deadline(self.now);
        let Some(connection) = live_connection(&mut self.slots, id) else {
            return;
        };
        self.sockets
            .get_mut::<tcp::Socket>(connection.socket)
            .abort();
        connection.phase = Phase::Closing { deadline };
    }

    /// Hands every outbound IP packet to `emit`, in order, for the TUN. It
    /// first lets the sockets send what was written since the last poll, so
    /// `poll`, then `read`/`write`/`close`, then `drain_transmit` answers
    /// in one round.
    pub fn drain_transmit(&mut self, mut emit: impl FnMut(&[u8])) {
        self.flush();
        while let Some(packet) = self.device.pop_tx() {
            emit(&packet);
        }
    }

    /// How long until [`TcpStack::poll`] should run again: `Some(ZERO)` when
    /// work is pending, `None` when only a new packet can create work.
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        let now = self.advance_clock(now);
        if self.device.has_rx() {
            return Some(Duration::ZERO);
        }
        let smoltcp_delay = self
            .iface
            .poll_delay(now, &self.sockets)
            .map(|delay| Duration::from_micros(delay.total_micros()));
        let next_deadline = self
            .slots
            .iter()
            .filter_map(|slot| slot.connection.as_ref())
            .map(|connection| self.expiry(connection))
            .min()
            .map(|deadline| {
                let micros = deadline.total_micros().saturating_sub(now.total_micros());
                Duration::from_micros(u64::try_from(micros).unwrap_or(0))
            });
        match (smoltcp_delay, next_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Connections currently held, including half-open and closing ones.
    pub fn connection_count(&self) -> usize {
        self.connection_count
    }

    /// Converts to smoltcp time, never letting it go backwards.
    fn advance_clock(&mut self, now: Instant) -> SmolInstant {
        let epoch = *self.epoch.get_or_insert(now);
        let micros = now.saturating_duration_since(epoch).as_micros();
        let now = SmolInstant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX));
        if now > self.now {
            self.now = now;
        }
        self.now
    }

    fn deadline(&self, since: SmolInstant) -> SmolInstant {
        deadline_after(since, self.limits.idle_timeout)
    }

    fn expiry(&self, connection: &Connection) -> SmolInstant {
        match connection.phase {
            Phase::Handshake | Phase::Open => self.deadline(connection.last_activity),
            Phase::Connecting { deadline, .. } | Phase::Closing { deadline } => deadline,
        }
    }

    fn is_local_ip(&self, ip: IpAddr) -> bool {
        self.connect_ips.contains(&ip)
            || self
                .endpoints
                .iter()
                .any(|endpoint| endpoint.local.ip() == ip)
    }

    fn connections(&self) -> impl Iterator<Item = &Connection> {
        self.slots
            .iter()
            .filter_map(|slot| slot.connection.as_ref())
    }

    /// Records an ICMP error's reason on the connection being opened that it
    /// names; the next poll fails it.
    fn fail_connecting(&mut self, error: icmp::ConnectError) {
        let tuple = Some((
            IpEndpoint::from(error.local),
            IpEndpoint::from(error.remote),
        ));
        for slot in &mut self.slots {
            if let Some(connection) = &mut slot.connection
                && let Phase::Connecting { icmp_failure, .. } = &mut connection.phase
                && endpoints_of(self.sockets.get(connection.socket)) == tuple
            {
                *icmp_failure = Some(error.reason);
            }
        }
    }

    fn add_connection(&mut self, connection: Connection) -> ConnectionId {
        self.connection_count += 1;
        let index = match self.free_slots.pop() {
            Some(index) => {
                self.slots[index].connection = Some(connection);
                index
            }
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    connection: Some(connection),
                });
                self.slots.len() - 1
            }
        };
        ConnectionId {
            index,
            generation: self.slots[index].generation,
        }
    }

    /// Turns listeners that took a SYN into (half-open) connections.
    fn promote_listeners(&mut self) {
        for index in 0..self.endpoints.len() {
            let Some(handle) = self.endpoints[index].listener else {
                continue;
            };
            if self.sockets.get::<tcp::Socket>(handle).is_listening() {
                continue;
            }
            self.endpoints[index].listener = None;
            // smoltcp offers a segment to sockets in set order, and a spare
            // listener may sit in a freed slot before an existing connection.
            // A retransmitted SYN would then open a second connection on the
            // same 4-tuple; drop it unsent (a SYN-ACK leaves only on egress):
            // the existing connection retransmits its own SYN-ACK.
            let tuple = endpoints_of(self.sockets.get(handle));
            let duplicate = self
                .connections()
                .any(|existing| endpoints_of(self.sockets.get(existing.socket)) == tuple);
            if duplicate {
                self.sockets.remove(handle);
                continue;
            }
            self.add_connection(Connection::new(handle, Phase::Handshake, self.now));
        }
    }

    /// Keeps exactly one spare listener per endpoint while below the
    /// connection bound, and none at the bound (so SYNs get a RST).
    fn reconcile_listeners(&mut self) {
        let below_bound = self.connection_count < self.limits.max_connections;
        for endpoint in &mut self.endpoints {
            match (endpoint.listener, below_bound) {
                (None, true) => {
                    let mut socket = new_socket(&self.limits);
                    if socket.listen(endpoint.local).is_ok() {
                        endpoint.listener = Some(self.sockets.add(socket));
                    }
                }
                (Some(handle), false) => {
                    self.sockets.remove(handle);
                    endpoint.listener = None;
                }
                _ => {}
            }
        }
    }

    /// Reports state changes of every connection and starts closing expired ones.
    fn report_and_expire(&mut self, events: &mut Vec<Event>) {
        let now = self.now;
        let idle_timeout = self.limits.idle_timeout;
        let traffic_keeps_alive = self.limits.idle_reset == IdleReset::Traffic;
        let linger_deadline = self.deadline(now);
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let id = ConnectionId {
                index,
                generation: slot.generation,
            };
            let Some(connection) = slot.connection.as_mut() else {
                continue;
            };
            let idle_deadline = deadline_after(connection.last_activity, idle_timeout);
            let socket = self.sockets.get_mut::<tcp::Socket>(connection.socket);
            if let Phase::Handshake = connection.phase {
                match socket.state() {
                    tcp::State::SynReceived if now >= idle_deadline => {
                        socket.abort();
                        connection.phase = Phase::Closing {
                            deadline: linger_deadline,
                        };
                        continue;
                    }
                    tcp::State::SynReceived => continue,
                    // A RST in SYN-RECEIVED sends smoltcp back to LISTEN; the
                    // spare listener already covers the endpoint.
                    tcp::State::Listen | tcp::State::Closed => {
                        socket.abort();
                        connection.phase = Phase::Closing {
                            deadline: linger_deadline,
                        };
                        continue;
                    }
                    _ => {
                        let (Some(peer), Some(local)) =
                            (socket.remote_endpoint(), socket.local_endpoint())
                        else {
                            continue;
                        };
                        connection.phase = Phase::Open;
                        events.push(Event::Accepted {
                            id,
                            peer: peer.into(),
                            local: local.into(),
                        });
                    }
                }
            }
            if let Phase::Connecting {
                deadline,
                icmp_failure,
            } = connection.phase
            {
                let failure = match socket.state() {
                    tcp::State::SynSent if icmp_failure.is_some() => icmp_failure,
                    tcp::State::SynSent if now >= deadline => Some(ConnectFailure::TimedOut),
                    tcp::State::SynSent => continue,
                    // A RST in SYN-SENT closes the socket.
                    tcp::State::Closed => Some(ConnectFailure::Refused),
                    _ => None,
                };
                if let Some(reason) = failure {
                    socket.abort();
                    connection.phase = Phase::Closing {
                        deadline: linger_deadline,
                    };
                    events.push(Event::ConnectFailed { id, reason });
                    continue;
                }
                connection.phase = Phase::Open;
                connection.last_activity = now;
                events.push(Event::Connected(id));
            }
            if !matches!(connection.phase, Phase::Open) {
                continue;
            }

            let rx_queue = socket.recv_queue();
            if rx_queue > connection.rx_seen {
                if traffic_keeps_alive {
                    connection.last_activity = now;
                }
                events.push(Event::Data(id));
            }
            connection.rx_seen = rx_queue;
            let tx_queue = socket.send_queue();
            if tx_queue < connection.tx_seen && traffic_keeps_alive {
                connection.last_activity = now;
            }
            connection.tx_seen = tx_queue;

            if connection.write_blocked && socket.can_send() {
                connection.write_blocked = false;
                events.push(Event::Writable(id));
            }

            // Both sides finished (TIME-WAIT), or smoltcp's TIME-WAIT already ran out,
            // with bytes still unread: they stay readable until the caller has them, and
            // only then is the connection reported gone.
            let unread = socket.recv_queue() > 0 && socket.may_recv();
            let unreported = !connection.peer_finished_reported;
            match socket.state() {
                tcp::State::CloseWait if unreported => {
                    connection.peer_finished_reported = true;
                    events.push(Event::PeerFinished(id));
                }
                tcp::State::Closed | tcp::State::TimeWait if unread && unreported => {
                    connection.peer_finished_reported = true;
                    events.push(Event::PeerFinished(id));
                }
                tcp::State::Closed | tcp::State::TimeWait if unread => {}
                tcp::State::Closed | tcp::State::TimeWait => {
                    // Reset by the peer, or smoltcp gave up retransmitting.
                    events.push(Event::Closed(id));
                    connection.phase = Phase::Closing {
                        deadline: linger_deadline,
                    };
                    continue;
                }
                _ => {}
            }

            if now >= deadline_after(connection.last_activity, idle_timeout) {
                socket.close();
                connection.phase = Phase::Closing {
                    deadline: linger_deadline,
                };
                events.push(Event::Closed(id));
            }
        }
        for slot in &mut self.slots {
            if let Some(connection) = &mut slot.connection
                && let Phase::Closing { deadline } = connection.phase
                && now >= deadline
            {
                self.sockets
                    .get_mut::<tcp::Socket>(connection.socket)
                    .abort();
            }
        }
    }

    /// Lets the sockets emit their segments into the outbound queue.
    fn flush(&mut self) {
        // Each round that changes something emits at least one packet, and
        // the queue refuses packets beyond its capacity: this bound is never hit.
        for _ in 0..=QUEUE_CAPACITY {
            if self
                .iface
                .poll_egress(self.now, &mut self.device, &mut self.sockets)
                == PollResult::None
            {
                break;
            }
        }
    }

    /// Frees closing connections that finished (or were reset, which `flush`
    /// has now sent).
    fn sweep_closing(&mut self, events: &mut Vec<Event>) {
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(connection) = &slot.connection else {
                continue;
            };
            if !matches!(connection.phase, Phase::Closing { .. }) {
                continue;
            }
            let state = self.sockets.get::<tcp::Socket>(connection.socket).state();
            if matches!(state, tcp::State::Closed | tcp::State::TimeWait) {
                // Leaving TIME-WAIT early frees the slot; a late retransmitted
                // FIN then gets a RST, which the peer treats as closed too.
                self.sockets.remove(connection.socket);
                if let Some(local) = connection.opened_from {
                    events.push(Event::Released(local));
                }
                slot.connection = None;
                slot.generation += 1;
                self.free_slots.push(index);
                self.connection_count -= 1;
            }
        }
    }
}

/// The local port `packet`, from the network, is about, when it is a TCP
/// segment to one of `local_ips` or an ICMP error about a segment from one:
/// what a caller that shares those addresses with the stack (the host's kernel,
/// on the interface address) needs to tell the stack's packets from its own.
/// The caller has the packet parsed already, for its other checks.
pub fn local_tcp_port(packet: &IpView<'_>, local_ips: &[IpAddr]) -> Option<u16> {
    match packet.transport()? {
        // Read from the fixed header alone, as `receive` reads it.
        Transport::Tcp(tcp) => tcp_destination(packet.bytes())
            .filter(|dst| local_ips.contains(dst))
            .map(|_| tcp.dst_port()),
        Transport::Icmpv4(_) | Transport::Icmpv6(_) => {
            let error = icmp::connect_error(packet)?;
            local_ips
                .contains(&error.local.ip())
                .then_some(error.local.port())
        }
        Transport::Udp(_) => None,
    }
}

/// A socket with the stack's buffers.
fn new_socket(limits: &Limits) -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; limits.rx_buffer]),
        tcp::SocketBuffer::new(vec![0; limits.tx_buffer]),
    );
    // DNS answers are written whole; waiting for the ACK of the previous answer
    // would stall pipelined queries. A proxy relays what it has at once.
    socket.set_nagle_enabled(false);
    socket.set_ack_delay(limits.ack_delay.map(|delay| {
        SmolDuration::from_micros(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX))
    }));
    socket
}

fn deadline_after(since: SmolInstant, timeout: Duration) -> SmolInstant {
    let timeout = i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX);
    SmolInstant::from_micros(since.total_micros().saturating_add(timeout))
}

/// The connection behind `id` if the caller still owns it.
fn open_connection(slots: &mut [Slot], id: ConnectionId) -> Result<&mut Connection, Error> {
    live_connection(slots, id)
        .filter(|connection| matches!(connection.phase, Phase::Open))
        .ok_or(Error::UnknownConnection)
}

/// The connection `id` names, in whatever phase, unless its slot went to another since.
fn live_connection(slots: &mut [Slot], id: ConnectionId) -> Option<&mut Connection> {
    slots
        .get_mut(id.index)
        .filter(|slot| slot.generation == id.generation)
        .and_then(|slot| slot.connection.as_mut())
}

/// A connected socket's (local, remote) endpoints; `None` while unconnected.
fn endpoints_of(socket: &tcp::Socket) -> Option<(IpEndpoint, IpEndpoint)> {
    Some((socket.local_endpoint()?, socket.remote_endpoint()?))
}

/// The destination of a TCP-over-IP packet, read from the fixed IP header alone: an
/// IPv6 packet with extension headers does not count as TCP.
fn tcp_destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= ipv4::HEADER_LEN && packet[ipv4::field::PROTOCOL] == protocol::TCP => {
            let dst: [u8; 4] = packet[ipv4::field::DST_ADDR].try_into().ok()?;
            Some(IpAddr::from(dst))
        }
        6 if packet.len() >= ipv6::HEADER_LEN
            && packet[ipv6::field::NEXT_HEADER] == protocol::TCP =>
        {
            let dst: [u8; 16] = packet[ipv6::field::DST_ADDR].try_into().ok()?;
            Some(IpAddr::from(dst))
        }
        _ => None,
    }
}

fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}

/// Drops the IPv6 flow label and scope id, which smoltcp cannot carry.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip(), addr.port())
}

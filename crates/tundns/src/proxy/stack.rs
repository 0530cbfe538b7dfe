//! The proxies' userspace TCP (`tundns-netstack`) as byte streams, on either side of
//! tundns:
//!
//! - towards the tunnel, connections from the interface address whose packets go
//!   straight into WireGuard and come back from it (diverted by the [`StackTap`]), never
//!   through the host's routing table;
//! - towards the host, the proxies' listeners on the virtual IPs, whose packets come from
//!   the TUN through the filter and are written back into it.
//!
//! The tunnel's packets are handed to the stack by its tap, on the tunnel's writer, which
//! settles the stack once per batch: polls it, wakes the streams whose connection moved,
//! and hands what the stack sends to its [`PacketSink`]. A task does the same for the
//! virtual IPs' packets queued by the filter, for the streams' writes, and for timers; the
//! encrypted DNS listeners' packets are handed over and processed on the TUN reader instead
//! ([`UserStack::deliver_and_run_here`]), which then runs the connections they woke (the
//! `inline` module) and settles the stack, so that their writes go out with the ACKs.
//! Whoever settles outside the task wakes it afterwards only when the last settling's
//! deadline is sooner than its timer.
//! A [`StackStream`] reads and writes the stack's buffers directly, under the stack's
//! lock, so its buffers are the only ones and a slow reader closes the TCP window rather
//! than growing memory.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gotatun::packet::{Ip, Packet};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc};
use tundns_filter::InboundTap;
use tundns_netstack::{ConnectFailure, ConnectionId, Error, Event, IdleReset, Limits, TcpStack};
use tundns_packet::{IpView, Transport};

use super::ports::{LOCAL_PORTS, PortSet};
use super::udp_relay::UdpRelay;

/// tokio's timer resolution: deadlines closer than this are one.
const TIMER_RESOLUTION: Duration = Duration::from_millis(1);

/// Packets waiting for the stack's task.
const INBOUND_QUEUE: usize = 4096;
/// Accepted connections waiting for a proxy to take them; beyond this, new ones are
/// reset, as a full listen backlog would.
const ACCEPT_BACKLOG: usize = 128;

/// The stack's resource bounds for proxied connections.
pub fn proxy_limits(mtu: u16) -> Limits {
    Limits {
        max_connections: 4096,
        idle_timeout: Duration::from_secs(600),
        idle_reset: IdleReset::Traffic,
        // The advertised window, which must cover the tunnel's round trip under load: on
        // two busy cores 256 KiB held a download to 0.75 of the kernel's route, 512 KiB
        // carries it at 0.85-0.9. It is reserved, not touched, while a connection idles.
        rx_buffer: 512 * 1024,
        tx_buffer: 256 * 1024,
        mtu: usize::from(mtu),
        connect_timeout: Duration::from_secs(10),
        ..Limits::default()
    }
}

/// Why a connection through the tunnel could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("{0:?}")]
    Failed(ConnectFailure),
    /// No interface address of the destination's family, or no port free.
    #[error("no local address for {0}")]
    NoLocalAddress(SocketAddr),
    #[error("too many connections")]
    TooMany,
}

/// Connections from the interface addresses through the tunnel.
#[derive(Clone)]
pub struct UserStack {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the task: a stream wrote or closed, a connection was opened, or a settling
    /// elsewhere (the tap's, the reader's) left a deadline sooner than its timer.
    work: Arc<Notify>,
    local_ips: Vec<IpAddr>,
    /// The local ports the stack's connections hold, which the tap takes packets for.
    ports: Arc<PortSet>,
}

struct State {
    stack: TcpStack,
    connections: HashMap<ConnectionId, Connection>,
    next_port: u16,
    /// Where the connections accepted on each listen address go.
    accepted: HashMap<SocketAddr, mpsc::Sender<Accepted>>,
    /// Where the stack's packets go.
    outbound: Box<dyn PacketSink>,
    /// The stack's events, reused.
    events: Vec<Event>,
    /// When the task's timer next fires, as the task last armed it (`None`: it waits for
    /// work alone). [`Shared::wake_for`] wakes the task only for an earlier deadline.
    armed: Option<Instant>,
}

/// A connection a listener of the stack accepted.
pub struct Accepted {
    pub stream: StackStream,
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

#[derive(Default)]
struct Connection {
    status: Status,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Status {
    #[default]
    Connecting,
    Failed(ConnectFailure),
    Open {
        peer_finished: bool,
    },
    Closed,
}

/// Where the stack's packets go: gotatun's second packet source, or the TUN.
pub trait PacketSink: Send {
    fn send(&mut self, packet: &[u8]);

    /// The end of what one settling of the stack sent: a sink that gathers packets writes
    /// them here.
    fn flush(&mut self) {}
}

/// What the task needs besides the stack: where its packets arrive, and where its own go.
pub struct StackIo {
    pub inbound: mpsc::Receiver<Vec<u8>>,
    pub outbound: Box<dyn PacketSink>,
}

/// The sink for a stack whose packets go into WireGuard.
pub fn into_tunnel(channel: mpsc::Sender<Packet<Ip>>) -> Box<dyn PacketSink> {
    Box::new(IntoTunnel(channel))
}

struct IntoTunnel(mpsc::Sender<Packet<Ip>>);

impl PacketSink for IntoTunnel {
    fn send(&mut self, packet: &[u8]) {
        let Ok(packet) = Packet::from_bytes(BytesMut::from(packet)).try_into_ip() else {
            return;
        };
        // A full channel drops the packet, as a full NIC queue would; TCP resends it.
        let _ = self.0.try_send(packet);
    }
}

impl UserStack {
    /// A stack opening connections from `local_ips` (the interface addresses), driven by
    /// a task spawned here, which `name`s it if it ever fails.
    pub fn spawn(
        name: &'static str,
        local_ips: Vec<IpAddr>,
        ports: Arc<PortSet>,
        limits: Limits,
        io: StackIo,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                stack: TcpStack::new(limits),
                connections: HashMap::new(),
                next_port: *LOCAL_PORTS.start(),
                accepted: HashMap::new(),
                outbound: io.outbound,
                events: Vec::new(),
                armed: None,
            }),
            work: Arc::new(Notify::new()),
            local_ips,
            ports,
        });
        crate::supervise::spawn_essential(
            name,
            drive(Arc::downgrade(&shared), shared.work.clone(), io.inbound),
        );
        Self { shared }
    }

    /// Listens on each of `addresses`; the connections accepted there arrive on the
    /// receiver. An address that cannot be listened on is logged and skipped.
    pub fn listen(&self, addresses: &[SocketAddr]) -> mpsc::Receiver<Accepted> {
        let (sender, receiver) = mpsc::channel(ACCEPT_BACKLOG);
        let mut state = self.shared.lock();
        for address in addresses {
            match state.stack.listen(*address) {
                Ok(()) => {
                    state.accepted.insert(*address, sender.clone());
                }
                Err(error) => tracing::warn!(%address, %error, "the proxy cannot listen here"),
            }
        }
        receiver
    }

    /// Opens a TCP connection to `remote` through the tunnel.
    pub async fn connect(&self, remote: SocketAddr) -> Result<StackStream, OpenError> {
        let local_ip = self
            .shared
            .local_ips
            .iter()
            .find(|ip| ip.is_ipv4() == remote.is_ipv4())
            .copied()
            .ok_or(OpenError::NoLocalAddress(remote))?;
        let id = {
            let mut state = self.shared.lock();
            let id = state.open(local_ip, remote, &self.shared.ports)?;
            state.connections.insert(id, Connection::default());
            id
        };
        self.shared.work.notify_one();
        let mut pending = PendingConnect {
            shared: &self.shared,
            id: Some(id),
        };
        let outcome = poll_fn(|cx| {
            let mut state = self.shared.lock();
            let connection = state.connections.get_mut(&id).expect("held until settled");
            match connection.status {
                Status::Connecting => {
                    connection.writer = Some(cx.waker().clone());
                    Poll::Pending
                }
                Status::Failed(reason) => Poll::Ready(Err(reason)),
                // Reset as soon as it was established.
                Status::Closed => Poll::Ready(Err(ConnectFailure::Refused)),
                Status::Open { .. } => Poll::Ready(Ok(())),
            }
        })
        .await;
        pending.id = None;
        match outcome {
            Ok(()) => Ok(StackStream {
                shared: self.shared.clone(),
                id,
            }),
            Err(reason) => {
                self.shared.lock().connections.remove(&id);
                Err(OpenError::Failed(reason))
            }
        }
    }

    /// The tap to give the tunnel's writer: it hands the packets of this stack's
    /// connections to the stack and settles it once per batch, and gives `udp` the
    /// datagrams of its associations. It only holds `inbound`, whose drop (with gotatun's
    /// device) tells the task that the tunnel is gone.
    pub fn tap(&self, inbound: mpsc::Sender<Vec<u8>>, udp: Arc<UdpRelay>) -> Arc<dyn InboundTap> {
        Arc::new(StackTap {
            shared: self.shared.clone(),
            received: AtomicBool::new(false),
            _tunnel_alive: inbound,
            udp,
        })
    }

    /// Hands `packet`, for one of the stack's connections or listeners, to the stack on the
    /// caller's thread (the TUN reader) and processes it, sending nothing; runs there the
    /// connections' tasks it woke (`inline::run_here`); then settles the stack, so that
    /// what they wrote leaves with the ACK, in the same segments. The stack's task is woken
    /// only for what is left sooner than its timer.
    pub fn deliver_and_run_here(&self, packet: &[u8]) {
        let _settling = SettlingHere::enter(&self.shared);
        let mut wanted = None;
        crate::inline::run_here(
            || {
                let mut state = self.shared.lock();
                let now = Instant::now();
                state.receive(&self.shared, packet, now);
                state.deliver(&self.shared, now);
            },
            || wanted = self.shared.settle_here(),
        );
        self.shared.wake_for(wanted);
    }

    /// The channel the task drains: the virtual IPs' listeners fill it (unless they hand
    /// their packets over themselves); the tunnel's tap only holds its sender.
    pub fn inbound_channel() -> (mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>) {
        mpsc::channel(INBOUND_QUEUE)
    }
}

impl Shared {
    /// Hands `packet` to the stack on the caller's thread.
    fn receive_here(self: &Arc<Self>, packet: &[u8]) {
        self.lock().receive(self, packet, Instant::now());
    }

    /// Settles the stack on the caller's thread; returns when it next wants settling, which
    /// [`wake_for`](Self::wake_for) must see once the caller's settlings end.
    #[must_use = "the task sleeps through this deadline unless it goes to wake_for"]
    fn settle_here(self: &Arc<Self>) -> Option<Instant> {
        let mut state = self.lock();
        let now = Instant::now();
        state.settle(self, now).map(|delay| now + delay)
    }

    /// Wakes the task only when the stack wants it sooner than it is armed for, by more
    /// than tokio's timer resolution: a timer it sleeps past would fire late, one that
    /// fires early finds nothing due and re-arms. Only the deadline of the last of a run
    /// of settlings counts: an earlier one can want a timer (a delayed ACK on the tunnel's
    /// side) that what followed made needless.
    fn wake_for(&self, wanted: Option<Instant>) {
        let sooner = wanted.is_some_and(|wanted| {
            self.lock()
                .armed
                .is_none_or(|armed| wanted + TIMER_RESOLUTION < armed)
        });
        if sooner {
            self.work.notify_one();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The stack stays consistent even if a holder panicked.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// Opens a connection from the next free local port, which `ports` then holds until
    /// the stack releases it.
    fn open(
        &mut self,
        local_ip: IpAddr,
        remote: SocketAddr,
        ports: &PortSet,
    ) -> Result<ConnectionId, OpenError> {
        let count = usize::from(LOCAL_PORTS.end() - LOCAL_PORTS.start()) + 1;
        for _ in 0..count {
            let port = self.next_port;
            self.next_port = if port == *LOCAL_PORTS.end() {
                *LOCAL_PORTS.start()
            } else {
                port + 1
            };
            if !ports.claim(port) {
                continue;
            }
            let local = SocketAddr::new(local_ip, port);
            match self.stack.connect(local, remote, Instant::now()) {
                Ok(id) => return Ok(id),
                Err(error) => {
                    ports.release(port);
                    return Err(match error {
                        Error::TooManyConnections => OpenError::TooMany,
                        _ => OpenError::NoLocalAddress(remote),
                    });
                }
            }
        }
        Err(OpenError::NoLocalAddress(remote))
    }

    /// Hands an accepted connection to the listener's queue, or resets it when the queue
    /// is full or no proxy takes connections any more.
    fn accept(
        &mut self,
        shared: &Arc<Shared>,
        id: ConnectionId,
        peer: SocketAddr,
        local: SocketAddr,
    ) {
        let queued = match self.accepted.get(&local).map(mpsc::Sender::try_reserve) {
            Some(Ok(slot)) => slot,
            Some(Err(TrySendError::Full(()) | TrySendError::Closed(()))) | None => {
                self.stack.close(id);
                return;
            }
        };
        self.connections.insert(
            id,
            Connection {
                status: Status::Open {
                    peer_finished: false,
                },
                ..Connection::default()
            },
        );
        queued.send(Accepted {
            stream: StackStream {
                shared: shared.clone(),
                id,
            },
            peer,
            local,
        });
    }

    /// Polls the stack until what it received is processed: accepted connections queued,
    /// streams woken, its packets sent. Returns when it next needs polling.
    fn settle(&mut self, shared: &Arc<Shared>, now: Instant) -> Option<Duration> {
        let mut events = std::mem::take(&mut self.events);
        self.stack.poll(now, &mut events);
        self.take_events(shared, events);
        self.stack
            .drain_transmit(|packet| self.outbound.send(packet));
        self.outbound.flush();
        self.stack.poll_delay(now)
    }

    /// Queues `packet` for the stack. A batch can hold more packets than the stack's queue:
    /// what is queued goes first.
    fn receive(&mut self, shared: &Arc<Shared>, packet: &[u8], now: Instant) {
        if self.stack.receive_queue_is_full() {
            self.settle(shared, now);
        }
        self.stack.receive(packet, now);
    }

    /// Processes what the stack received, queuing accepted connections and waking streams,
    /// and sends nothing.
    fn deliver(&mut self, shared: &Arc<Shared>, now: Instant) {
        let mut events = std::mem::take(&mut self.events);
        self.stack.poll_received(now, &mut events);
        self.take_events(shared, events);
    }

    /// Acts on the stack's `events`, and keeps their buffer for the next poll.
    fn take_events(&mut self, shared: &Arc<Shared>, mut events: Vec<Event>) {
        for event in events.drain(..) {
            if let Event::Accepted { id, peer, local } = event {
                self.accept(shared, id, peer, local);
            }
            self.apply(event, &shared.ports);
        }
        self.events = events;
    }

    /// Marks every connection gone and wakes whoever waits on one.
    fn close_all(&mut self) {
        for connection in self.connections.values_mut() {
            connection.status = match connection.status {
                Status::Connecting => Status::Failed(ConnectFailure::NetworkUnreachable),
                _ => Status::Closed,
            };
            for waker in [connection.reader.take(), connection.writer.take()]
                .into_iter()
                .flatten()
            {
                waker.wake();
            }
        }
    }

    /// Records what the stack reported and wakes whoever waits on it.
    fn apply(&mut self, event: Event, ports: &PortSet) {
        let (id, status, wake_reader, wake_writer) = match event {
            Event::Connected(id) => (
                id,
                Some(Status::Open {
                    peer_finished: false,
                }),
                false,
                true,
            ),
            Event::ConnectFailed { id, reason } => (id, Some(Status::Failed(reason)), false, true),
            Event::Data(id) => (id, None, true, false),
            Event::Writable(id) => (id, None, false, true),
            Event::PeerFinished(id) => (
                id,
                Some(Status::Open {
                    peer_finished: true,
                }),
                true,
                false,
            ),
            Event::Closed(id) => (id, Some(Status::Closed), true, true),
            Event::Released(local) => {
                ports.release(local.port());
                return;
            }
            // Taken by `accept`, which holds the stack's `Shared`.
            Event::Accepted { .. } => return,
        };
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        match (connection.status, status) {
            // Once the peer finished, the end of the connection reads as the end of the
            // stream, not as a reset.
            (
                Status::Open {
                    peer_finished: true,
                },
                Some(Status::Closed),
            ) => {}
            (_, Some(status)) => connection.status = status,
            (_, None) => {}
        }
        if wake_reader && let Some(waker) = connection.reader.take() {
            waker.wake();
        }
        if wake_writer && let Some(waker) = connection.writer.take() {
            waker.wake();
        }
    }
}

/// Gives up a connection whose `connect` future was dropped before it settled.
struct PendingConnect<'a> {
    shared: &'a Arc<Shared>,
    id: Option<ConnectionId>,
}

impl Drop for PendingConnect<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let mut state = self.shared.lock();
            state.connections.remove(&id);
            state.stack.close(id);
            drop(state);
            self.shared.work.notify_one();
        }
    }
}

/// The stack's task: packets from `inbound`, streams' writes, timers. It ends when the last
/// handle to the stack is gone, or when `inbound`'s senders are (the tunnel or the TUN is).
async fn drive(shared: Weak<Shared>, work: Arc<Notify>, mut inbound: mpsc::Receiver<Vec<u8>>) {
    let mut batch = Vec::new();
    let mut deadline = None;
    loop {
        let notified = work.notified();
        tokio::select! {
            received = inbound.recv_many(&mut batch, INBOUND_QUEUE) => {
                if received == 0 {
                    // The tunnel is gone: no connection will move again.
                    if let Some(shared) = shared.upgrade() {
                        shared.lock().close_all();
                    }
                    return;
                }
            }
            () = notified => {}
            () = sleep_until(deadline) => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut state = shared.lock();
        let now = Instant::now();
        for packet in batch.drain(..) {
            state.stack.receive(&packet, now);
        }
        // The timer fires at the very instant `wake_for` compares against.
        deadline = state.settle(&shared, now).map(|delay| now + delay);
        state.armed = deadline;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

thread_local! {
    /// The stack whose segment this thread is handing over
    /// ([`UserStack::deliver_and_run_here`]), and settles once the tasks it woke have run.
    static SETTLING_HERE: std::cell::Cell<*const Shared> =
        const { std::cell::Cell::new(std::ptr::null()) };
}

/// Marks a stack as [`SETTLING_HERE`] while it lives, and restores what was marked before.
struct SettlingHere(*const Shared);

impl SettlingHere {
    fn enter(shared: &Arc<Shared>) -> Self {
        Self(SETTLING_HERE.replace(Arc::as_ptr(shared)))
    }

    /// Whether this thread settles `shared` after the tasks it runs.
    fn is(shared: &Arc<Shared>) -> bool {
        SETTLING_HERE.get() == Arc::as_ptr(shared)
    }
}

impl Drop for SettlingHere {
    fn drop(&mut self) {
        SETTLING_HERE.set(self.0);
    }
}

/// Takes the tunnel's packets for the stack's connections: TCP to an interface address
/// and a local port one of them holds, and ICMP errors about such segments. The host's
/// own connections from the interface address, and its listeners, keep theirs.
///
/// It hands them to the stack itself, on the tunnel's writer, and settles the stack once
/// per batch ([`InboundTap::flush`]): the bytes reach the relays with no hand-over to the
/// stack's task, which is woken only when its timers must fire sooner.
struct StackTap {
    shared: Arc<Shared>,
    /// Whether the stack received packets since the last flush.
    received: AtomicBool,
    /// Dropped with the tap, with gotatun's device: the stack's task then closes every
    /// connection.
    _tunnel_alive: mpsc::Sender<Vec<u8>>,
    udp: Arc<UdpRelay>,
}

impl InboundTap for StackTap {
    fn take(&self, packet: &[u8]) -> bool {
        // Parsed once: the tap sees every packet from the tunnel.
        let Ok(ip) = IpView::parse(packet) else {
            return false;
        };
        if let Some(Transport::Udp(udp)) = ip.transport() {
            return self.udp.take(&ip, &udp);
        }
        let ours = tundns_netstack::local_tcp_port(&ip, &self.shared.local_ips)
            .is_some_and(|port| self.shared.ports.contains(port));
        if !ours {
            return false;
        }
        self.shared.receive_here(packet);
        self.received.store(true, Ordering::Relaxed);
        true
    }

    fn flush(&self) {
        if self.received.swap(false, Ordering::Relaxed) {
            let wanted = self.shared.settle_here();
            self.shared.wake_for(wanted);
        }
    }
}

/// Relays bytes both ways between a proxy's `client` and `tunnel` until both ends have
/// finished, in 64 KiB steps: each step is a lock of the stack, so fewer, larger ones cost
/// less than tokio's default 8 KiB.
pub async fn relay<C>(client: &mut C, tunnel: &mut StackStream) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    const STEP: usize = 64 * 1024;
    tokio::io::copy_bidirectional_with_sizes(client, tunnel, STEP, STEP)
        .await
        .map(drop)
}

/// A TCP connection through the tunnel, as a byte stream.
pub struct StackStream {
    shared: Arc<Shared>,
    id: ConnectionId,
}

impl StackStream {
    /// Runs `act` on the stack; when it returns `true` beside its result, something moved
    /// that the task must send (bytes written, a window reopened), and it is woken.
    fn poll_with<T>(
        &self,
        cx: &mut Context<'_>,
        act: impl FnOnce(&mut State, &mut Context<'_>) -> (Poll<io::Result<T>>, bool),
    ) -> Poll<io::Result<T>> {
        let mut state = self.shared.lock();
        let (result, wake) = act(&mut state, cx);
        drop(state);
        // A thread handing this stack a segment settles it once the tasks have run.
        if wake && !SettlingHere::is(&self.shared) {
            self.shared.work.notify_one();
        }
        result
    }
}

impl AsyncRead for StackStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let id = self.id;
        self.poll_with(cx, |state, cx| {
            // A read from a receive buffer at least half full reopens a window the peer
            // may be waiting on: the task sends the update at once. Below that, the update
            // rides on the next ACK, and a read costs no wake-up.
            let window_was_small = state.stack.recv_queue(id) * 2 >= state.stack.limits().rx_buffer;
            let read = state.stack.read(id, buf.initialize_unfilled());
            let connection = state.connections.get_mut(&id).expect("held by the stream");
            let peer_finished = matches!(
                connection.status,
                Status::Open {
                    peer_finished: true
                }
            );
            let result = match read {
                Ok(0) if matches!(connection.status, Status::Open { .. }) && !peer_finished => {
                    connection.reader = Some(cx.waker().clone());
                    Poll::Pending
                }
                Ok(read) => {
                    buf.advance(read);
                    Poll::Ready(Ok(()))
                }
                // Closed: whatever was buffered has been read.
                Err(_) if peer_finished => Poll::Ready(Ok(())),
                Err(_) => Poll::Ready(Err(io::ErrorKind::ConnectionReset.into())),
            };
            (result, window_was_small)
        })
    }
}

impl AsyncWrite for StackStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let id = self.id;
        self.poll_with(cx, |state, cx| match state.stack.write(id, data) {
            Ok(0) if !data.is_empty() => {
                if let Some(connection) = state.connections.get_mut(&id) {
                    connection.writer = Some(cx.waker().clone());
                }
                (Poll::Pending, false)
            }
            Ok(written) => (Poll::Ready(Ok(written)), true),
            Err(_) => (Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())), false),
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes go out at once: the task sends them, or on the reader the settling
        // that follows the run.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let id = self.id;
        self.poll_with(cx, |state, _| {
            state.stack.shutdown(id);
            (Poll::Ready(Ok(())), true)
        })
    }
}

impl StackStream {
    /// Refuses the connection with a RST: its slot is free at once, whatever the peer
    /// does.
    pub fn reset(self) {
        self.shared.lock().stack.reset(self.id);
    }
}

impl Drop for StackStream {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.connections.remove(&self.id);
        state.stack.close(self.id);
        drop(state);
        self.shared.work.notify_one();
    }
}

//! The proxies' way into the tunnel: TCP connections from the interface address, made
//! by a userspace stack (`tundns-netstack`) whose packets go straight into WireGuard and
//! come back from it, never through the host's routing table.
//!
//! One task drives the stack: it takes the packets the [`StackTap`] diverted from the
//! tunnel, polls, wakes the streams whose connection moved, and hands what the stack
//! sends to gotatun's second packet source. A [`TunnelStream`] reads and writes the
//! stack's buffers directly, under the stack's lock, so its buffers are the only ones
//! and a slow reader closes the TCP window rather than growing memory.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gotatun::packet::{Ip, Packet};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, mpsc};
use tundns_filter::InboundTap;
use tundns_netstack::{ConnectFailure, ConnectionId, Error, Event, Limits, TcpStack};
use tundns_packet::{IpView, Transport};

use super::ports::{LOCAL_PORTS, PortSet};
use super::udp_relay::UdpRelay;

/// Packets from the tunnel waiting for the stack's task.
const INBOUND_QUEUE: usize = 4096;

/// The stack's resource bounds for proxied connections.
pub fn proxy_limits(mtu: u16) -> Limits {
    Limits {
        max_connections: 4096,
        idle_timeout: Duration::from_secs(600),
        // Large enough for window scaling to carry a bulk download.
        rx_buffer: 256 * 1024,
        tx_buffer: 256 * 1024,
        mtu: usize::from(mtu),
        connect_timeout: Duration::from_secs(10),
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
pub struct TunnelStack {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the task: a stream wrote or closed, or a connection was opened.
    work: Arc<Notify>,
    local_ips: Vec<IpAddr>,
    /// The local ports the stack's connections hold, which the tap takes packets for.
    ports: Arc<PortSet>,
}

struct State {
    stack: TcpStack,
    connections: HashMap<ConnectionId, Connection>,
    next_port: u16,
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

/// What the task needs besides the stack: where diverted packets arrive, and where the
/// stack's own go (gotatun's second packet source).
pub struct StackIo {
    pub inbound: mpsc::Receiver<Vec<u8>>,
    pub outbound: mpsc::Sender<Packet<Ip>>,
}

impl TunnelStack {
    /// A stack opening connections from `local_ips` (the interface addresses), driven by
    /// a task spawned here, and the tap that diverts the tunnel's packets to it.
    pub fn spawn(local_ips: Vec<IpAddr>, ports: Arc<PortSet>, limits: Limits, io: StackIo) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                stack: TcpStack::new(limits),
                connections: HashMap::new(),
                next_port: *LOCAL_PORTS.start(),
            }),
            work: Arc::new(Notify::new()),
            local_ips,
            ports,
        });
        tokio::spawn(drive(Arc::downgrade(&shared), shared.work.clone(), io));
        Self { shared }
    }

    /// Opens a TCP connection to `remote` through the tunnel.
    pub async fn connect(&self, remote: SocketAddr) -> Result<TunnelStream, OpenError> {
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
            Ok(()) => Ok(TunnelStream {
                shared: self.shared.clone(),
                id,
            }),
            Err(reason) => {
                self.shared.lock().connections.remove(&id);
                Err(OpenError::Failed(reason))
            }
        }
    }

    /// The tap to give the tunnel's writer: it takes the packets of this stack's
    /// connections and queues them for the task, and gives `udp` the datagrams of its
    /// associations.
    pub fn tap(&self, inbound: mpsc::Sender<Vec<u8>>, udp: Arc<UdpRelay>) -> Arc<dyn InboundTap> {
        Arc::new(StackTap {
            local_ips: self.shared.local_ips.clone(),
            ports: self.shared.ports.clone(),
            inbound,
            udp,
        })
    }

    /// The channel the tap fills and the task drains.
    pub fn inbound_channel() -> (mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>) {
        mpsc::channel(INBOUND_QUEUE)
    }
}

impl Shared {
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
            // This stack only connects.
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

/// The stack's task. It ends when the last handle to the stack is gone.
async fn drive(shared: Weak<Shared>, work: Arc<Notify>, mut io: StackIo) {
    let mut events = Vec::new();
    let mut batch = Vec::new();
    let mut delay = None;
    loop {
        let notified = work.notified();
        tokio::select! {
            received = io.inbound.recv_many(&mut batch, INBOUND_QUEUE) => {
                if received == 0 {
                    // The tunnel is gone: no connection will move again.
                    if let Some(shared) = shared.upgrade() {
                        shared.lock().close_all();
                    }
                    return;
                }
            }
            () = notified => {}
            () = sleep(delay) => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut state = shared.lock();
        let now = Instant::now();
        for packet in batch.drain(..) {
            state.stack.receive(&packet, now);
        }
        state.stack.poll(now, &mut events);
        for event in events.drain(..) {
            state.apply(event, &shared.ports);
        }
        state.stack.drain_transmit(|packet| {
            let Ok(packet) = Packet::from_bytes(BytesMut::from(packet)).try_into_ip() else {
                return;
            };
            // A full channel drops the packet, as a full NIC queue would; TCP resends it.
            let _ = io.outbound.try_send(packet);
        });
        delay = state.stack.poll_delay(now);
    }
}

async fn sleep(delay: Option<Duration>) {
    match delay {
        Some(delay) => tokio::time::sleep(delay).await,
        None => std::future::pending().await,
    }
}

/// Takes the tunnel's packets for the stack's connections: TCP to an interface address
/// and a local port one of them holds, and ICMP errors about such segments. The host's
/// own connections from the interface address, and its listeners, keep theirs.
struct StackTap {
    local_ips: Vec<IpAddr>,
    ports: Arc<PortSet>,
    inbound: mpsc::Sender<Vec<u8>>,
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
        let ours = tundns_netstack::local_tcp_port(&ip, &self.local_ips)
            .is_some_and(|port| self.ports.contains(port));
        if !ours {
            return false;
        }
        // Dropped when the task lags this far behind; TCP resends it.
        let _ = self.inbound.try_send(packet.to_vec());
        true
    }
}

/// Relays bytes both ways between a proxy's `client` and `tunnel` until both ends have
/// finished, in 64 KiB steps: each step is a lock of the stack, so fewer, larger ones cost
/// less than tokio's default 8 KiB.
pub async fn relay<C>(client: &mut C, tunnel: &mut TunnelStream) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    const STEP: usize = 64 * 1024;
    tokio::io::copy_bidirectional_with_sizes(client, tunnel, STEP, STEP)
        .await
        .map(drop)
}

/// A TCP connection through the tunnel, as a byte stream.
pub struct TunnelStream {
    shared: Arc<Shared>,
    id: ConnectionId,
}

impl TunnelStream {
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
        if wake {
            self.shared.work.notify_one();
        }
        result
    }
}

impl AsyncRead for TunnelStream {
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

impl AsyncWrite for TunnelStream {
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
        // Written bytes are the task's to send, at once.
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

impl Drop for TunnelStream {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.connections.remove(&self.id);
        state.stack.close(self.id);
        drop(state);
        self.shared.work.notify_one();
    }
}

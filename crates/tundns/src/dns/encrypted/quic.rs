//! DNS over QUIC (RFC 9250) on UDP 853: quinn's server over [`QuicPort`], a UDP socket
//! that is the TUN. Each query is a stream of its own: one length-prefixed message with
//! ID 0, then the stream's end; the answer goes back the same way. A stream that breaks
//! this closes its connection with `DOQ_PROTOCOL_ERROR` (RFC 9250 §4.3.3).
//!
//! It runs in the encrypted DNS servers' runtime (see [`super::ServerThread`]). quinn's
//! endpoint and connection drivers, and each connection's task, are `inline` tasks: a
//! datagram the TUN reader hands over runs what it wakes right there, up to the answer's
//! write into the TUN, as DoT and DoH connections do. A connection and its driver move to
//! the reader only once its handshake is done, and while a handshake is being signed (under
//! the endpoint's lock) the reader leaves the endpoint to its own thread: signing with the
//! server's key is work the tunnel's packets must not wait behind.
//!
//! Bounds as for DoT: connections (`MaxTcpConnections` of its own, and a quarter per client
//! address shared with DoT and DoH, the rest refused), the handshake's time,
//! [`MAX_IN_FLIGHT_PER_CONNECTION`] streams at once (QUIC's own stream credit), each given
//! `TcpIdleTimeout` to bring its whole query, no DATAGRAM frames, and idle time that only a
//! whole query restarts.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::FutureExt as _;
use futures::task::AtomicWaker;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{
    AsyncTimer, AsyncUdpSocket, Connection, Endpoint, EndpointConfig, IdleTimeout,
    MtuDiscoveryConfig, RecvStream, Runtime, SendStream, TokioRuntime, TransportConfig, UdpPoller,
    VarInt,
};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tundns_config::EncryptedDns;
use tundns_dns::MAX_MESSAGE_LEN;
use tundns_dns::doq::{StreamError, carries_tcp_keepalive, error_code, query_from_stream};
use tundns_dns::tcp::append_framed;
use tundns_filter::{Datagram, TunWriter, UdpService};

use super::{
    Activity, Bounds, HANDSHAKE_TIMEOUT, MAX_IN_FLIGHT_PER_CONNECTION, Reply, SourceQuota, reply,
};
use crate::dns::counters::Transport;
use crate::dns::proxy::DnsProxy;
use crate::inline::{OnReader, Spawner};

/// Largest query stream accepted, prefix included; real queries are a few hundred bytes.
const MAX_QUERY_STREAM: usize = 2 + 16 * 1024;
/// Datagrams waiting for the endpoint; beyond this they are dropped, as a full socket
/// buffer would, and QUIC resends.
const MAX_QUEUED_DATAGRAMS: usize = 1024;
/// What the server is called where it fails.
pub(super) const TASK: &str = "DNS over QUIC on the virtual IPs";
/// The IP and UDP headers a QUIC packet travels under, at most (IPv6).
const IP_AND_UDP_HEADERS: u16 = 40 + 8;
/// The smallest datagram QUIC allows (RFC 9000 §14).
const QUIC_MIN_DATAGRAM: u16 = 1200;

/// A datagram for the endpoint: its sender, the virtual IP it was sent to, its payload.
type Received = (SocketAddr, IpAddr, Vec<u8>);

/// UDP 853 of the virtual IPs as quinn's socket: datagrams from the TUN reader are queued
/// for the endpoint's task, and what the endpoint sends is written into the TUN.
pub(super) struct QuicPort {
    received: Mutex<VecDeque<Received>>,
    endpoint_waiting: AtomicWaker,
    tun: TunWriter,
    local: SocketAddr,
    /// Handshakes being accepted, each holding the endpoint's lock while it signs.
    accepting: AtomicUsize,
}

impl QuicPort {
    /// The port on `addresses` (the virtual IPs), answering through `tun`.
    pub(super) fn new(addresses: &[IpAddr], tun: TunWriter) -> Arc<Self> {
        let port = EncryptedDns::Quic.port();
        Arc::new(Self {
            received: Mutex::default(),
            endpoint_waiting: AtomicWaker::new(),
            tun,
            local: SocketAddr::new(addresses[0], port),
            accepting: AtomicUsize::new(0),
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Received>> {
        self.received
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for QuicPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicPort")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// The sources the virtual host admits reach it, on the TUN reader: it queues the datagram
/// for the endpoint and runs there what that wakes (the endpoint's driver, the connection's,
/// the connection's task), which answer into the TUN before the reader reads on.
impl UdpService for QuicPort {
    fn on_datagram(&self, datagram: Datagram<'_>, _tun: &TunWriter) {
        if self.accepting.load(Ordering::Relaxed) == 0 {
            crate::inline::run_here(|| self.hand_over(datagram), || {});
        } else {
            // The endpoint's driver would wait on the signing's lock: to its own thread.
            self.hand_over(datagram);
        }
    }
}

impl QuicPort {
    /// Queues `datagram` for the endpoint and wakes its driver.
    fn hand_over(&self, datagram: Datagram<'_>) {
        {
            let mut queue = self.queue();
            if queue.len() >= MAX_QUEUED_DATAGRAMS {
                return;
            }
            queue.push_back((
                datagram.source,
                datagram.destination.ip(),
                datagram.payload.to_vec(),
            ));
        }
        self.endpoint_waiting.wake();
    }
}

impl AsyncUdpSocket for QuicPort {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // quinn answers from the address the connection was made to; a datagram it sends
        // unprompted (none does on a server) would go from the first virtual IP.
        let source = SocketAddr::new(
            transmit.src_ip.unwrap_or(self.local.ip()),
            self.local.port(),
        );
        let segment = transmit.segment_size.unwrap_or(transmit.contents.len());
        for datagram in transmit.contents.chunks(segment.max(1)) {
            self.tun.send_udp(source, transmit.destination, datagram);
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut queue = self.queue();
        if queue.is_empty() {
            self.endpoint_waiting.register(cx.waker());
            // A datagram queued between the look and the registration wakes no one.
            if queue.is_empty() {
                return Poll::Pending;
            }
        }
        let mut count = 0;
        for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()) {
            let Some((source, destination, payload)) = queue.pop_front() else {
                break;
            };
            let len = payload.len().min(buf.len());
            buf[..len].copy_from_slice(&payload[..len]);
            *meta = RecvMeta {
                addr: source,
                len,
                stride: len,
                ecn: None,
                dst_ip: Some(destination),
            };
            count += 1;
        }
        Poll::Ready(Ok(count))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

thread_local! {
    /// While this thread runs `Incoming::accept` ([`accept`]): the consent of the connection
    /// driver quinn spawns meanwhile, kept for the connection's task to give with its own
    /// once the handshake is done (a ClientHello split over two datagrams is signed by the
    /// driver).
    static DRIVERS_ACCEPTED_HERE: RefCell<Option<Vec<OnReader>>> = const { RefCell::new(None) };
}

/// quinn on tokio, but with its endpoint and connection drivers spawned as `inline` tasks,
/// which the TUN reader runs when a datagram it hands over wakes them: the endpoint's at
/// once, a connection's once its handshake is done.
struct OnTheReader(Spawner);

impl std::fmt::Debug for OnTheReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnTheReader")
    }
}

impl Runtime for OnTheReader {
    fn new_timer(&self, deadline: std::time::Instant) -> Pin<Box<dyn AsyncTimer>> {
        TokioRuntime.new_timer(deadline)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.0
            .spawn(|on_reader| {
                let endpoints_driver =
                    DRIVERS_ACCEPTED_HERE.with(|accepted| match accepted.borrow_mut().as_mut() {
                        Some(drivers) => {
                            drivers.push(on_reader);
                            None
                        }
                        None => Some(on_reader),
                    });
                if let Some(on_reader) = endpoints_driver {
                    on_reader.allow();
                }
                future
            })
            .detach();
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        TokioRuntime.wrap_udp_socket(socket)
    }

    fn now(&self) -> std::time::Instant {
        TokioRuntime.now()
    }
}

/// Accepts `incoming` on this thread, which signs the handshake under quinn's endpoint lock;
/// meanwhile the reader leaves the endpoint to its own thread rather than wait on that lock.
/// Returns the connection, and the consent of the driver quinn spawned for it.
fn accept(
    port: &QuicPort,
    incoming: quinn::Incoming,
) -> (
    Result<quinn::Connecting, quinn::ConnectionError>,
    Vec<OnReader>,
) {
    /// Ends the accepting however `accept` ends.
    struct Accepting<'a>(&'a QuicPort);
    impl Drop for Accepting<'_> {
        fn drop(&mut self) {
            DRIVERS_ACCEPTED_HERE.with(|accepted| accepted.borrow_mut().take());
            self.0.accepting.fetch_sub(1, Ordering::Relaxed);
        }
    }
    port.accepting.fetch_add(1, Ordering::Relaxed);
    DRIVERS_ACCEPTED_HERE.with(|accepted| *accepted.borrow_mut() = Some(Vec::new()));
    let accepting = Accepting(port);
    let connecting = incoming.accept();
    let drivers = DRIVERS_ACCEPTED_HERE
        .with(|accepted| accepted.borrow_mut().take())
        .unwrap_or_default();
    drop(accepting);
    (connecting, drivers)
}

/// Writes into the TUN never wait: a full TUN drops the packet, and QUIC resends.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// quinn's server settings: `tls` (ALPN `doq`, 0-RTT allowed: a query is safe to replay,
/// RFC 9250 §4.5) and the transport's bounds.
pub(super) fn server_config(
    mut tls: rustls::ServerConfig,
    bounds: Bounds,
    mtu: u16,
) -> quinn::ServerConfig {
    tls.max_early_data_size = u32::MAX;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .expect("a TLS 1.3 server config with aws-lc-rs's suites");
    let mut transport = TransportConfig::default();
    let streams = VarInt::from_u32(MAX_IN_FLIGHT_PER_CONNECTION as u32);
    transport
        .max_concurrent_bidi_streams(streams)
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        // DNS over QUIC has no use for DATAGRAM frames: none may sit in a buffer.
        .datagram_receive_buffer_size(None)
        .stream_receive_window(VarInt::from_u32(MAX_QUERY_STREAM as u32))
        .receive_window(VarInt::from_u32(4 * MAX_QUERY_STREAM as u32))
        .send_window(4 * MAX_MESSAGE_LEN as u64)
        // The server closes idle connections itself, on whole queries; QUIC's own idle
        // timeout only ends those whose client is gone.
        .max_idle_timeout(IdleTimeout::try_from(bounds.idle * 2).ok());
    let largest = mtu
        .saturating_sub(IP_AND_UDP_HEADERS)
        .max(QUIC_MIN_DATAGRAM);
    let mut discovery = MtuDiscoveryConfig::default();
    discovery.upper_bound(largest);
    transport.mtu_discovery_config(Some(discovery));
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    config
}

/// Serves DNS over QUIC on `port` until dropped (at shutdown), which drops every
/// connection's task; `spawner` runs quinn's drivers and the established connections.
pub(super) async fn serve(
    port: Arc<QuicPort>,
    config: quinn::ServerConfig,
    proxy: Arc<DnsProxy>,
    quota: Arc<SourceQuota>,
    max_connections: usize,
    bounds: Bounds,
    spawner: Spawner,
) {
    let endpoint = match Endpoint::new_with_abstract_socket(
        EndpointConfig::default(),
        Some(config),
        port.clone(),
        Arc::new(OnTheReader(spawner.clone())),
    ) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            tracing::error!(%error, "DNS over QUIC: cannot start its endpoint");
            return;
        }
    };
    let mut connections: Vec<async_task::Task<()>> = Vec::new();
    while let Some(incoming) = endpoint.accept().await {
        let peer = incoming.remote_address();
        // At most max_connections are held, so the sweep stays short.
        connections.retain(|task| !task.is_finished());
        let share = (connections.len() < max_connections)
            .then(|| quota.take(peer.ip()))
            .flatten();
        let Some(share) = share else {
            tracing::debug!(%peer, "DNS over QUIC: over the connection limits, refused");
            incoming.refuse();
            continue;
        };
        let proxy = proxy.clone();
        let port = port.clone();
        let task = spawner.spawn(|on_reader| async move {
            let _share = share;
            // The handshake's signing happens here, off the reader: the task is not
            // allowed there yet.
            let (connecting, drivers) = accept(&port, incoming);
            let connecting = match connecting {
                Ok(connecting) => connecting,
                Err(error) => {
                    tracing::debug!(%peer, %error, "DNS over QUIC: connection failed");
                    return;
                }
            };
            // A server's 0.5-RTT: queries sent in 0-RTT are answered before the
            // handshake ends.
            let Ok((connection, established)) = connecting.into_0rtt() else {
                return;
            };
            let on_reader = [on_reader].into_iter().chain(drivers).collect();
            serve_connection(connection, established, on_reader, proxy, bounds).await;
        });
        connections.push(task);
    }
}

/// Serves one connection's streams until the client closes it, breaks the protocol,
/// does not finish its handshake in time, or idles. Once the handshake is done it and its
/// driver (`on_reader`) run on the reader that hands its datagrams over.
async fn serve_connection(
    connection: Connection,
    established: quinn::ZeroRttAccepted,
    on_reader: Vec<OnReader>,
    proxy: Arc<DnsProxy>,
    bounds: Bounds,
) {
    let peer = connection.remote_address();
    let activity = Arc::new(Activity::new());
    let mut streams = JoinSet::new();
    let handshake_deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut established = std::pin::pin!(established);
    let mut handshaken = false;
    loop {
        let idle_until = activity.idle_deadline(bounds.idle);
        tokio::select! {
            stream = connection.accept_bi() => {
                let Ok((send, recv)) = stream else { return };
                let stream = QueryStream {
                    connection: connection.clone(),
                    peer,
                    proxy: proxy.clone(),
                    bounds,
                    activity: activity.clone(),
                };
                // A query usually comes whole with its stream and is answered from memory:
                // served here, with no task to spawn and wake. One that has to wait (for the
                // rest of its query, an upstream, the client's window) goes on in a task of
                // its own from where it stopped; the task's first poll registers its waker
                // wherever this one (a no-op) was left.
                let mut serving = Box::pin(stream.serve(send, recv));
                if serving.as_mut().now_or_never().is_none() {
                    streams.spawn(serving);
                }
            }
            Some(_) = streams.join_next() => {}
            _ = &mut established, if !handshaken => {
                handshaken = true;
                on_reader.iter().for_each(OnReader::allow);
            }
            () = tokio::time::sleep_until(handshake_deadline), if !handshaken => {
                tracing::debug!(%peer, "DNS over QUIC: handshake timed out");
                close(&connection, error_code::NO_ERROR, "handshake timed out");
                return;
            }
            () = tokio::time::sleep_until(idle_until) => {
                if activity.has_idled(bounds.idle) {
                    tracing::debug!(%peer, "DNS over QUIC: idle, closing");
                    close(&connection, error_code::NO_ERROR, "idle");
                    return;
                }
            }
        }
    }
}

fn close(connection: &Connection, code: u32, reason: &str) {
    connection.close(VarInt::from_u32(code), reason.as_bytes());
}

/// What one stream's query needs of its connection.
struct QueryStream {
    connection: Connection,
    peer: SocketAddr,
    proxy: Arc<DnsProxy>,
    bounds: Bounds,
    activity: Arc<Activity>,
}

impl QueryStream {
    /// Closes the connection for a breach of RFC 9250 (§4.3.3).
    fn protocol_error(&self, why: &'static str) {
        tracing::debug!(peer = %self.peer, why, "DNS over QUIC: protocol error, closing");
        close(&self.connection, error_code::PROTOCOL_ERROR, why);
    }

    /// Reads the stream's query, answers it on the same stream, and ends the stream.
    async fn serve(self, mut send: SendStream, mut recv: RecvStream) {
        let peer = self.peer;
        // Whole queries on other streams keep the connection; a stream that never ends is
        // given up on its own, so that partial queries cannot pile up.
        let read = tokio::time::timeout(self.bounds.idle, recv.read_to_end(MAX_QUERY_STREAM));
        let Ok(read) = read.await else {
            tracing::debug!(%peer, "DNS over QUIC: a query stream idled, reset");
            let _ = recv.stop(VarInt::from_u32(error_code::REQUEST_CANCELLED));
            let _ = send.reset(VarInt::from_u32(error_code::REQUEST_CANCELLED));
            return;
        };
        let stream = match read {
            Ok(stream) => stream,
            Err(quinn::ReadToEndError::TooLong) => return self.protocol_error("query too long"),
            // Reset by the client, or the connection went.
            Err(quinn::ReadToEndError::Read(_)) => return,
        };
        let query = match query_from_stream(&stream) {
            Ok(query) if carries_tcp_keepalive(query) == Ok(true) => {
                return self.protocol_error("edns-tcp-keepalive in a query (RFC 9250 §5.5.2)");
            }
            Ok(query) => query,
            Err(error) => return self.protocol_error(reason(error)),
        };
        // A whole query: from here the connection is busy, not idle.
        let _in_hand = self.activity.begin();
        let mut framed = Vec::new();
        let framing = |answer: &[u8]| append_framed(&mut framed, answer);
        if let Reply::Forward(forward) = reply(&self.proxy, peer, query, Transport::Quic, framing) {
            append_framed(&mut framed, &forward.resolve().await);
        }
        // A query dropped unanswered (a response, say, or over the rate limit): the
        // client is told it gets nothing on this stream.
        if framed.is_empty() {
            let _ = send.reset(VarInt::from_u32(error_code::REQUEST_CANCELLED));
            return;
        }
        // A client that does not take its answer closes the send window: bounded.
        let written = async {
            send.write_all(&framed).await?;
            send.finish()?;
            Ok::<_, io::Error>(())
        };
        if !matches!(
            tokio::time::timeout(self.bounds.idle, written).await,
            Ok(Ok(()))
        ) {
            tracing::debug!(%peer, "DNS over QUIC: the client does not take its answer");
            let _ = send.reset(VarInt::from_u32(error_code::REQUEST_CANCELLED));
        }
    }
}

/// The reason a connection is closed with, as RFC 9250 §4.3.3 names the error.
fn reason(error: StreamError) -> &'static str {
    match error {
        StreamError::NoLength | StreamError::Cut { .. } => "a query was cut",
        StreamError::TrailingBytes => "more than one message on a stream",
        StreamError::NoHeader => "not a DNS message",
        StreamError::NonZeroId(_) => "a query's message ID is not 0",
    }
}

//! Encrypted DNS on the virtual IPs: DNS over TLS (RFC 7858) on TCP 853, DNS over HTTPS
//! (RFC 8484) on TCP 443 and DNS over QUIC (RFC 9250) on UDP 853, through the same
//! [`DnsProxy`] as UDP and TCP 53.
//!
//! Their TCP is a userspace stack of their own ([`StackListeners`]), and their QUIC is
//! quinn over a socket that is the TUN ([`quic`]), both fed from the TUN for the sources
//! the virtual IPs admit; TLS is rustls with the identity of [`certificate`]. An
//! established DoT, DoH or DoQ connection runs on the TUN reader when a client's segment or
//! datagram wakes it (`crate::inline`); the rest (handshakes, timers, connections an
//! upstream's answer wakes) runs on one thread of its own ([`ServerThread`]).
//! Everything a client can hold is bounded: connections (`MaxTcpConnections`, and a
//! quarter of them per client address), the handshake's time, queries or streams in
//! flight per connection, and idle time, which only a whole query restarts, as for DNS over
//! TCP. Input that is not TLS, HTTP or DNS closes the connection or gets an HTTP error.

pub mod certificate;
mod doh;
mod dot;
mod quic;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tundns_config::{DnsProxyConfig, EncryptedDns};
use tundns_filter::{SourcePolicy, TunWriter, VirtualHost};
use tundns_netstack::{IdleReset, Limits};

use crate::control::protocol::EncryptedStatus;
use tundns_dns::MAX_MESSAGE_LEN;

use crate::dns::counters::Transport;
use crate::dns::proxy::{DnsProxy, Forward, Verdict};
use crate::inline::{OnReader, Spawner};
use crate::proxy::on_virtual_ip::{Handover, StackListeners};
use crate::proxy::stack::Accepted;
use certificate::{IdentitySource, TlsIdentity};

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The share of the connections one client address may hold: a quarter, as for TCP 53.
const CONNECTIONS_PER_SOURCE_DIVISOR: usize = 4;
/// Queries (DoT) or requests (DoH) one connection may have unanswered at once; the rest
/// wait unread, and the client's window closes.
pub(crate) const MAX_IN_FLIGHT_PER_CONNECTION: usize = 64;

/// The bounds every connection is served under.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    /// A connection with nothing unanswered and no whole query for this long is closed.
    pub idle: Duration,
}

/// The encrypted DNS servers of the virtual IPs; dropping them stops them.
pub struct EncryptedServers {
    /// The TCP of DoT and DoH, when either is served.
    listeners: Option<StackListeners>,
    /// UDP 853, when DoQ is served.
    quic: Option<Arc<quic::QuicPort>>,
    tasks: Vec<JoinHandle<()>>,
    /// Where the servers run; `None` only if it could not start (which is reported).
    thread: Option<ServerThread>,
    status: EncryptedStatus,
}

impl EncryptedServers {
    /// Serves `settings.encrypted` on every virtual IP with `identity`, answering through
    /// `tun` the sources `admits` takes; `None` when there is nothing to serve.
    pub fn spawn(
        proxy: &Arc<DnsProxy>,
        settings: &DnsProxyConfig,
        identity: &TlsIdentity,
        mtu: u16,
        tun: TunWriter,
        admits: Arc<dyn SourcePolicy>,
    ) -> Option<Self> {
        if settings.encrypted.is_empty() || settings.addresses.is_empty() {
            return None;
        }
        let endpoints = |protocol: EncryptedDns| -> Vec<SocketAddr> {
            let port = protocol.port();
            settings
                .addresses
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect()
        };
        let over_tcp: Vec<OverTcp> = settings
            .encrypted
            .iter()
            .filter_map(|protocol| OverTcp::of(*protocol))
            .collect();
        let every_tcp_endpoint: Vec<SocketAddr> = over_tcp
            .iter()
            .flat_map(|protocol| endpoints(protocol.protocol()))
            .collect();
        let limits = Limits {
            max_connections: settings.max_tcp_connections,
            // The servers close idle connections themselves, on whole messages; the stack
            // only ends what they left behind.
            idle_timeout: settings.tcp_idle_timeout * 2,
            idle_reset: IdleReset::Traffic,
            rx_buffer: 16 * 1024,
            tx_buffer: 64 * 1024,
            mtu: usize::from(mtu),
            // The TUN reader answers a query before it settles the stack, so the answer
            // carries the ACK; a segment that brings no whole query (a client that writes
            // the length prefix in a TLS record of its own, a miss waiting on an upstream)
            // is acknowledged at once instead of arming a timer, whose every change wakes
            // the stack's task on another thread.
            ack_delay: None,
            ..Limits::default()
        };
        let quota = Arc::new(SourceQuota::new(
            (settings.max_tcp_connections / CONNECTIONS_PER_SOURCE_DIVISOR).max(1),
        ));
        let bounds = Bounds {
            idle: settings.tcp_idle_timeout,
        };
        let quic = settings
            .encrypted
            .contains(&EncryptedDns::Quic)
            .then(|| quic::QuicPort::new(&settings.addresses, tun.clone()));
        let ((listeners, tasks), thread) = ServerThread::start(|| {
            let listeners = (!over_tcp.is_empty()).then(|| {
                StackListeners::new(
                    "encrypted DNS on the virtual IPs",
                    &every_tcp_endpoint,
                    limits,
                    tun.clone(),
                    admits,
                    Handover::OnReader,
                )
            });
            let spawner = Spawner::start("the encrypted DNS connections");
            let mut tasks: Vec<JoinHandle<()>> = over_tcp
                .iter()
                .zip(std::iter::repeat(listeners.as_ref()).flatten())
                .map(|(protocol, listeners)| {
                    let accepted = listeners.listen(&endpoints(protocol.protocol()));
                    let acceptor =
                        TlsAcceptor::from(Arc::new(server_config(identity, protocol.protocol())));
                    let server = Server {
                        protocol: *protocol,
                        proxy: proxy.clone(),
                        acceptor,
                        quota: quota.clone(),
                        bounds,
                        spawner: spawner.clone(),
                    };
                    let name = match protocol {
                        OverTcp::Tls => "DNS over TLS on the virtual IPs",
                        OverTcp::Https => "DNS over HTTPS on the virtual IPs",
                    };
                    crate::supervise::spawn_essential(name, server.accept(accepted))
                })
                .collect();
            if let Some(port) = &quic {
                let config =
                    quic::server_config(server_config(identity, EncryptedDns::Quic), bounds, mtu);
                let server = quic::serve(
                    port.clone(),
                    config,
                    proxy.clone(),
                    quota.clone(),
                    settings.max_tcp_connections,
                    bounds,
                    spawner.clone(),
                );
                tasks.push(crate::supervise::spawn_essential(quic::TASK, server));
            }
            (listeners, tasks)
        });
        for protocol in &settings.encrypted {
            tracing::info!(
                protocol = protocol.name(),
                port = protocol.port(),
                "serving encrypted DNS on the virtual IPs"
            );
        }
        let urls = |protocol: &EncryptedDns| {
            let protocol = *protocol;
            settings
                .addresses
                .iter()
                .map(move |ip| endpoint_url(protocol, *ip))
        };
        let status = EncryptedStatus {
            endpoints: settings.encrypted.iter().flat_map(urls).collect(),
            pin: identity.pin.clone(),
            self_signed: match &identity.source {
                IdentitySource::SelfSigned(path) => Some(path.clone()),
                IdentitySource::Configured => None,
            },
        };
        Some(Self {
            listeners,
            quic,
            tasks,
            thread,
            status,
        })
    }

    /// Where and with what pin the servers are reached, for `tundns status`.
    pub fn status(&self) -> EncryptedStatus {
        self.status.clone()
    }

    /// `host` with the encrypted DNS ports opened.
    pub fn open_ports(&self, mut host: VirtualHost) -> VirtualHost {
        if let Some(listeners) = &self.listeners {
            host = listeners.open_ports(host);
        }
        if let Some(quic) = &self.quic {
            host = host.with_udp(EncryptedDns::Quic.port(), quic.clone());
        }
        host
    }
}

impl Drop for EncryptedServers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        drop(self.thread.take());
    }
}

/// The thread the encrypted DNS servers run on, with a single-threaded runtime: their TCP
/// stack's timers, TLS and QUIC handshakes, and whatever a client's packet did not wake (an
/// upstream's answer, a timeout); an established DoT, DoH or DoQ connection woken by its
/// client runs on the TUN reader instead (`crate::inline`). On tundns's multi-threaded runtime a
/// query reaching an idle process woke a worker, which woke the other to look for more work,
/// and the two took turns on one CPU several times per query (`sched_switch` traces: about
/// 250 us per DoH query). Upstream requests still run on tundns's runtime (see
/// [`DnsProxy`]). Dropping it stops the servers and waits for the thread.
struct ServerThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    /// What the servers are called where they fail.
    const TASK: &str = "the encrypted DNS servers' thread";

    /// Runs `setup` in the thread's runtime, so that what it spawns runs on the thread, then
    /// starts the thread. If the runtime cannot be made, `setup` spawns on the caller's; if
    /// the thread cannot start, the servers fail as an essential task does.
    fn start<T>(setup: impl FnOnce() -> T) -> (T, Option<Self>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::warn!(%error, "encrypted DNS: no runtime of its own, sharing tundns's");
                return (setup(), None);
            }
        };
        let made = {
            let _spawns_here = runtime.enter();
            setup()
        };
        let (stop, stopped) = oneshot::channel::<()>();
        // The runtime is handed over once the thread runs: a closure that failed to start
        // would drop it here, inside tundns's runtime, which tokio does not allow.
        let (hand_over, handed) = std::sync::mpsc::channel::<tokio::runtime::Runtime>();
        let thread = std::thread::Builder::new()
            .name("encrypted-dns".into())
            .spawn(move || {
                if let Ok(runtime) = handed.recv() {
                    // Stopped, the runtime goes and the servers' tasks with it.
                    drop(runtime.block_on(stopped));
                }
            });
        match thread {
            Ok(thread) => {
                let _ = hand_over.send(runtime);
                (
                    made,
                    Some(Self {
                        stop: Some(stop),
                        thread: Some(thread),
                    }),
                )
            }
            Err(error) => {
                runtime.shutdown_background();
                crate::supervise::report(crate::supervise::TaskFailure {
                    task: Self::TASK,
                    reason: format!("its thread did not start: {error}"),
                });
                (made, None)
            }
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A client's URL for `protocol` on `ip`, in the form of tundns's own upstreams.
fn endpoint_url(protocol: EncryptedDns, ip: IpAddr) -> String {
    let host = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    match protocol {
        EncryptedDns::Tls => format!("tls://{host}"),
        EncryptedDns::Https => format!("https://{host}{}", tundns_dns::doh::PATH),
        EncryptedDns::Quic => format!("quic://{host}"),
    }
}

/// rustls's server side with `identity`, offering the ALPN of `protocol`: `dot` (RFC
/// 7858 §3.2), `h2` and `http/1.1` for DoH, or `doq` over TLS 1.3 alone, as QUIC has it.
fn server_config(identity: &TlsIdentity, protocol: EncryptedDns) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match protocol {
        EncryptedDns::Quic => &[&rustls::version::TLS13],
        EncryptedDns::Tls | EncryptedDns::Https => rustls::DEFAULT_VERSIONS,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            identity.certified.clone(),
        )));
    config.alpn_protocols = match protocol {
        EncryptedDns::Tls => vec![b"dot".to_vec()],
        EncryptedDns::Https => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        EncryptedDns::Quic => vec![tundns_dns::doq::ALPN.to_vec()],
    };
    config
}

/// The encrypted DNS served over the TCP of [`StackListeners`].
#[derive(Clone, Copy, Debug)]
enum OverTcp {
    Tls,
    Https,
}

impl OverTcp {
    fn of(protocol: EncryptedDns) -> Option<Self> {
        match protocol {
            EncryptedDns::Tls => Some(OverTcp::Tls),
            EncryptedDns::Https => Some(OverTcp::Https),
            EncryptedDns::Quic => None,
        }
    }

    fn protocol(self) -> EncryptedDns {
        match self {
            OverTcp::Tls => EncryptedDns::Tls,
            OverTcp::Https => EncryptedDns::Https,
        }
    }
}

/// One protocol's accepting side.
struct Server {
    protocol: OverTcp,
    proxy: Arc<DnsProxy>,
    acceptor: TlsAcceptor,
    quota: Arc<SourceQuota>,
    bounds: Bounds,
    /// Where connections run: on the TUN reader once established (see `crate::inline`).
    spawner: Spawner,
}

impl Server {
    /// Serves every connection accepted, each in a task of its own; they all end with
    /// this one (aborted at shutdown), which drops their handles.
    async fn accept(self, mut accepted: mpsc::Receiver<Accepted>) {
        let server = Arc::new(self);
        let mut connections = Vec::new();
        while let Some(connection) = accepted.recv().await {
            let Some(share) = server.quota.take(connection.peer.ip()) else {
                tracing::debug!(
                    peer = %connection.peer,
                    "encrypted DNS: this client holds its share of connections"
                );
                connection.stream.reset();
                continue;
            };
            // At most MaxTcpConnections are held, so the sweep stays short.
            connections.retain(|task: &async_task::Task<()>| !task.is_finished());
            let task = server.spawner.spawn(|on_reader| {
                let server = server.clone();
                async move {
                    let _share = share;
                    server.serve(connection, on_reader).await;
                }
            });
            connections.push(task);
        }
    }

    async fn serve(&self, connection: Accepted, on_reader: OnReader) {
        let peer = connection.peer;
        let handshake = self.acceptor.accept(connection.stream);
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(stream)) => {
                // Established: its queries are answered on the reader that hands them over.
                on_reader.allow();
                stream
            }
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "encrypted DNS: TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "encrypted DNS: TLS handshake timed out");
                return;
            }
        };
        match self.protocol {
            OverTcp::Tls => dot::serve(stream, peer, &self.proxy, self.bounds).await,
            OverTcp::Https => {
                let version = doh::HttpVersion::of_alpn(stream.get_ref().1.alpn_protocol());
                doh::serve(stream, version, peer, &self.proxy, self.bounds).await;
            }
        }
    }
}

/// Queries being answered on one connection, and when the last one finished: a connection
/// idles only with none in hand, and only whole queries count (a client trickling bytes
/// keeps nothing).
pub(crate) struct Activity {
    origin: Instant,
    in_hand: AtomicU64,
    /// Milliseconds from `origin` to the end of the last request.
    last_end_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            origin: Instant::now(),
            in_hand: AtomicU64::new(0),
            last_end_ms: AtomicU64::new(0),
        }
    }

    /// A whole query in hand until the guard goes, answered or cancelled.
    pub(crate) fn begin(&self) -> InHand<'_> {
        self.in_hand.fetch_add(1, Ordering::Relaxed);
        InHand(self)
    }

    /// When the connection became idle (its start, or the end of its last request);
    /// `None` while a request is in hand.
    fn idle_since(&self) -> Option<Instant> {
        let last_end = Duration::from_millis(self.last_end_ms.load(Ordering::Relaxed));
        (self.in_hand.load(Ordering::Relaxed) == 0).then(|| self.origin + last_end)
    }

    /// When to look again whether the connection has idled for `idle`.
    pub(crate) fn idle_deadline(&self, idle: Duration) -> Instant {
        self.idle_since().unwrap_or_else(Instant::now) + idle
    }

    /// Whether nothing was in hand, and no query ended, for `idle`.
    pub(crate) fn has_idled(&self, idle: Duration) -> bool {
        self.idle_since()
            .is_some_and(|since| since + idle <= Instant::now())
    }
}

thread_local! {
    /// Where answers from memory are written: one buffer per thread, not 64 KiB per query.
    static ANSWER: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_MESSAGE_LEN]);
}

/// What a query gets from the proxy when its answer need not stay in place.
pub(crate) enum Reply<T> {
    /// Answered from memory; what `take` made of the answer.
    Ready(T),
    /// Sent on to the upstreams.
    Forward(Forward),
    /// Not a query: nothing.
    Dropped,
}

/// [`DnsProxy::accept_from`] for a query from `peer` over `transport`, its answer from
/// memory written into this thread's buffer and handed to `take`.
pub(crate) fn reply<T>(
    proxy: &Arc<DnsProxy>,
    peer: SocketAddr,
    query: &[u8],
    transport: Transport,
    take: impl FnOnce(&[u8]) -> T,
) -> Reply<T> {
    ANSWER.with_borrow_mut(
        |out| match proxy.accept_from(Some(peer), query, transport, out) {
            Verdict::Answered(len) => Reply::Ready(take(&out[..len])),
            Verdict::Forward(forward) => Reply::Forward(forward),
            Verdict::Drop => Reply::Dropped,
        },
    )
}

/// One query being answered.
pub(crate) struct InHand<'a>(&'a Activity);

impl Drop for InHand<'_> {
    fn drop(&mut self) {
        let activity = self.0;
        let since_origin = u64::try_from(activity.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.last_end_ms.store(since_origin, Ordering::Relaxed);
        activity.in_hand.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connections held per client address, and the most one may hold.
struct SourceQuota {
    held: Mutex<HashMap<IpAddr, usize>>,
    max_per_source: usize,
}

impl SourceQuota {
    fn new(max_per_source: usize) -> Self {
        Self {
            held: Mutex::default(),
            max_per_source,
        }
    }

    /// A share for one more connection from `source`, or `None` when it holds its share.
    fn take(self: &Arc<Self>, source: IpAddr) -> Option<QuotaShare> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(source).or_default();
        if *count >= self.max_per_source {
            return None;
        }
        *count += 1;
        Some(QuotaShare {
            quota: self.clone(),
            source,
        })
    }
}

/// One connection's part of its client's share; given back on drop.
struct QuotaShare {
    quota: Arc<SourceQuota>,
    source: IpAddr,
}

impl Drop for QuotaShare {
    fn drop(&mut self) {
        let mut held = self.quota.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_tasks_run_on_their_thread_and_stop_with_it() {
        /// Tells the test when the runtime holding it drops it.
        struct Dropped(std::sync::mpsc::Sender<&'static str>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                let _ = self.0.send("dropped");
            }
        }
        let (events, seen) = std::sync::mpsc::channel();
        let ((), thread) = ServerThread::start(|| {
            let events = events.clone();
            tokio::spawn(async move {
                let dropped = Dropped(events.clone());
                let name = std::thread::current().name().map(str::to_owned);
                let _ = events.send(if name.as_deref() == Some("encrypted-dns") {
                    "on its thread"
                } else {
                    "elsewhere"
                });
                std::future::pending::<()>().await;
                drop(dropped);
            });
        });
        let thread = thread.expect("the thread starts");
        let wait = Duration::from_secs(5);
        assert_eq!(seen.recv_timeout(wait), Ok("on its thread"));
        drop(thread);
        assert_eq!(seen.recv_timeout(wait), Ok("dropped"));
    }

    #[test]
    fn a_source_holds_at_most_its_share_and_gets_it_back() {
        let quota = Arc::new(SourceQuota::new(2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = quota.take(a).unwrap();
        let _second = quota.take(a).unwrap();
        assert!(quota.take(a).is_none());
        assert!(quota.take(b).is_some());
        drop(first);
        assert!(quota.take(a).is_some());
    }
}

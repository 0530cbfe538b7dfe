//! Executing upstream DNS requests: the only DNS code in tundns that touches sockets.
//!
//! Owns the transports — UDP, TCP (RFC 7766), DNS over TLS (RFC 7858: one persistent,
//! pipelined connection per upstream), DNS over HTTPS (RFC 8484: one HTTP/2 connection
//! with concurrent streams), DNS over QUIC (RFC 9250: one QUIC connection per upstream,
//! a stream per query) and DNS over HTTPS over HTTP/3 (one QUIC connection, a request
//! stream per query) — and [`UpstreamPool`], the thin driver that runs one group's
//! [`tundns_resolver::pool::Pool`]: it makes the attempts the pool asks for, bounds each
//! by the attempt timeout, reports each outcome with the time, and wakes the pool for
//! hedging. Which upstream is asked, when to hedge, when an upstream is dead and when a
//! truncated answer is asked again over TCP are the pool's decisions, not this crate's.
//!
//! Every answer must match before it is accepted: for UDP a random ID per attempt on a
//! connected socket with a random port (sockets are shared by the queries in flight and
//! retired after a few seconds, see `udp_sockets`), the upstream's address and the
//! question; for TCP a fresh random ID on a fresh connection and the question; for DoT a
//! random ID unique on the connection and the question; for DoH, DoQ and HTTP/3 (ID 0 on
//! the wire, RFC 8484 §4.1 and RFC 9250 §4.2.1) the stream and the question. Anything
//! else is ignored and counted. TLS certificates are always verified, against the system
//! roots plus an optional CA file; there is no way to turn verification off. The QUIC
//! transports keep TLS session tickets and send a resumed connection's first queries in
//! 0-RTT (queries are idempotent, RFC 9250 §4.5); a query whose 0-RTT data the server
//! refused is asked again after the handshake. Sockets carry the configured `SO_MARK`
//! and source address, so policy routing decides whether DNS goes around the tunnel or
//! through it; without a TUN, a pool given a [`Tunnel`] sends through it instead (UDP and
//! TCP, with the same matching).
//!
//! It must never decide what a message means beyond that match (validation, truncation
//! for the client and error answers live in `tundns-dns`), never send to anything but
//! the configured upstreams, and never re-encode a message: the client's bytes go out
//! with only the ID rewritten, and the answer comes back with only the ID restored.

#![forbid(unsafe_code)]

mod doh;
mod dot;
mod h3;
mod pool;
mod quic;
mod shared_connection;
mod tls;
mod transport;
mod tunnel;
mod udp_sockets;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use pool::UpstreamPool;
pub use tundns_config::Upstream;
pub use tundns_resolver::Protocol;
pub use tundns_resolver::pool::{
    Answer, DEAD_AFTER_FAILURES, PoolStats, RTT_BUCKET_BOUNDS_MICROS, ResolveError, UpstreamStats,
};
pub use tunnel::{DialFuture, Tunnel, TunnelDial, TunnelPort, TunnelStream};
pub use udp_sockets::{QUERIES_PER_SOCKET, SOCKET_LIFETIME, SOCKETS_PER_UPSTREAM};

/// Settings shared by every upstream of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// How long one attempt at one upstream (connect, handshake, send, answer,
    /// and a TCP retry after a truncated UDP answer) may take.
    pub attempt_timeout: Duration,
    /// `SO_MARK` for every upstream socket, so policy routing can keep DNS out
    /// of the tunnel (setting it needs `CAP_NET_ADMIN`).
    pub fwmark: Option<u32>,
    /// Source address of every upstream socket. Groups "through the tunnel" set
    /// it to the interface address (and no fwmark). Its family must match every
    /// upstream's.
    pub bind_address: Option<IpAddr>,
    /// Extra PEM trust anchors for DoT, DoH, DoQ and HTTP/3, added to the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Send to the next upstream too when the current one has not answered
    /// within a delay derived from its RTT (the first valid answer wins).
    pub hedge: bool,
    /// An idle DoT, DoH, DoQ or HTTP/3 connection (nothing in flight) is closed after this long.
    pub idle_timeout: Duration,
    /// Send every query through this userspace tunnel instead of the host's sockets
    /// (the rootless mode's `ThroughTunnel` groups); plain UDP and TCP only.
    pub tunnel: Option<Tunnel>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            attempt_timeout: Duration::from_secs(2),
            fwmark: None,
            bind_address: None,
            ca_file: None,
            hedge: true,
            idle_timeout: Duration::from_secs(30),
            tunnel: None,
        }
    }
}

/// Why [`UpstreamPool::new`] refused its configuration.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("CA file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("invalid DoH path {0:?}: it must start with '/'")]
    DohPath(String),
    #[error(
        "bind address {bind} and upstream {} are of different address families",
        upstream.url()
    )]
    BindFamily { bind: IpAddr, upstream: Upstream },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error(
        "upstream {} is encrypted, but through the userspace tunnel only plain DNS (UDP, TCP) is sent: WireGuard already encrypts it",
        .0.url()
    )]
    EncryptedThroughTunnel(Upstream),
}

/// The health of one upstream, as [`UpstreamPool::health`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamHealth {
    pub upstream: Upstream,
    /// Smoothed RTT of successful attempts; `None` before the first.
    pub srtt: Option<Duration>,
    /// Consecutive failed attempts.
    pub failures: u32,
    /// False once `failures` reached [`DEAD_AFTER_FAILURES`], until a probe
    /// or an attempt succeeds.
    pub alive: bool,
}

/// What the transports count themselves: messages they ignored.
#[derive(Default)]
struct Counters {
    mismatched_ignored: AtomicU64,
    /// Resumed QUIC connections whose 0-RTT data the server took, or refused.
    zero_rtt_accepted: AtomicU64,
    zero_rtt_rejected: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// How one upstream is reached.
enum Link {
    Udp(udp_sockets::UdpSockets),
    Tcp,
    Tls(dot::DotClient),
    Https(doh::DohClient),
    Quic(quic::DoqClient),
    H3(h3::H3Client),
    /// Through a userspace tunnel; over UDP first when `datagram`, else over TCP.
    Tunnel {
        tunnel: tunnel::Tunnel,
        datagram: bool,
    },
}

/// What every attempt needs besides the query.
struct Context {
    config: PoolConfig,
    counters: std::sync::Arc<Counters>,
}

fn missing_tls() -> PoolError {
    PoolError::Tls("TLS settings missing for a TLS upstream".into())
}

//! Forwarding DNS queries to upstream resolvers: the only DNS code in tundns
//! that touches sockets.
//!
//! Owns the [`UpstreamPool`]: an ordered list of resolvers, tried one after the
//! other with a per-attempt timeout, over UDP or TCP (RFC 7766 framing) on the
//! host's own sockets, outside the tunnel (optionally marked with `SO_MARK` so
//! policy routing keeps them there). Each attempt uses a fresh random message
//! ID and a fresh socket on a kernel-chosen source port, and accepts only an
//! answer whose source, ID and question all match; everything else is ignored
//! and counted. That is the defence against off-path spoofing.
//!
//! It must never decide what a message means beyond that match (validation,
//! truncation for the client and error answers live in `tundns-dns`), never
//! send to anything but the configured upstreams, and never re-encode a
//! message: the client's bytes go out with only the ID rewritten, and the
//! answer comes back with only the ID restored.
//!
//! Later transports (DoT, DoH) and pool policy (RTT, health, hedging) slot in
//! behind [`UpstreamPool::resolve`] without changing its signature.

mod transport;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tundns_dns::{message_id, parse_query, set_message_id};

use transport::AttemptError;

/// How a query travels to the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// One datagram each way. An answer with TC=1 is returned as is, so the
    /// client retries over TCP.
    Udp,
    /// RFC 7766: a 2-byte length prefix before each message, one fresh
    /// connection per attempt.
    Tcp,
}

/// Settings shared by every upstream of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// How long one upstream gets (connect, send and answer) before the next is tried.
    pub attempt_timeout: Duration,
    /// `SO_MARK` for every upstream socket, so policy routing can keep DNS out
    /// of the tunnel (setting it needs `CAP_NET_ADMIN`).
    pub fwmark: Option<u32>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            attempt_timeout: Duration::from_secs(2),
            fwmark: None,
        }
    }
}

/// Why [`UpstreamPool::resolve`] produced no answer. The caller answers the
/// client SERVFAIL (or FORMERR for [`ResolveError::InvalidQuery`]).
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum ResolveError {
    /// The bytes do not pass `tundns_dns::parse_query`: nothing was sent.
    #[error("not a forwardable DNS query")]
    InvalidQuery,
    /// The pool has no upstream.
    #[error("no upstream resolver configured")]
    NoUpstreams,
    /// Every upstream timed out, refused or failed.
    #[error("all {attempts} upstream attempts failed")]
    AllFailed { attempts: usize },
}

/// Counters since the pool was created (read with relaxed ordering: each is
/// exact, but a snapshot is not atomic across them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Calls to `resolve` with a valid query.
    pub queries: u64,
    /// Queries answered by some upstream.
    pub answered: u64,
    /// Queries for which every upstream failed.
    pub all_failed: u64,
    /// Messages received that did not match source, ID or question: forged,
    /// late or garbage. Ignored.
    pub mismatched_ignored: u64,
    /// Attempts that ran out of time.
    pub timeouts: u64,
    /// Attempts refused: ICMP port unreachable (UDP) or RST (TCP).
    pub refusals: u64,
    /// Attempts that failed otherwise: socket errors, connection closed,
    /// framing errors, too many mismatched messages.
    pub failures: u64,
}

#[derive(Default)]
struct Counters {
    queries: AtomicU64,
    answered: AtomicU64,
    all_failed: AtomicU64,
    mismatched_ignored: AtomicU64,
    timeouts: AtomicU64,
    refusals: AtomicU64,
    failures: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// An ordered list of upstream resolvers, tried in turn.
///
/// `resolve` takes `&self`: share one pool (in an `Arc`) between all the
/// proxy's tasks; concurrent queries are independent.
pub struct UpstreamPool {
    upstreams: Vec<SocketAddr>,
    config: PoolConfig,
    counters: Counters,
}

impl UpstreamPool {
    pub fn new(upstreams: Vec<SocketAddr>, config: PoolConfig) -> Self {
        UpstreamPool {
            upstreams,
            config,
            counters: Counters::default(),
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Forwards a client query (raw bytes, as received) and returns the
    /// upstream's response with the client's own ID restored.
    ///
    /// Upstreams are tried in order, each for at most `attempt_timeout`; a
    /// refusal moves on at once. Each attempt sends under a fresh random ID
    /// from a fresh socket, and waits for a message whose source, ID and
    /// question match, ignoring (and counting) everything else.
    ///
    /// The response is returned whatever its rcode or size: fitting it to the
    /// client (`tundns_dns::write_truncated`) is the caller's job.
    pub async fn resolve(&self, query: &[u8], protocol: Protocol) -> Result<Bytes, ResolveError> {
        let parsed = parse_query(query).map_err(|_| ResolveError::InvalidQuery)?;
        if self.upstreams.is_empty() {
            return Err(ResolveError::NoUpstreams);
        }
        bump(&self.counters.queries);
        let client_id = parsed.id();
        let question = parsed.question();
        let mut exchange = transport::Exchange::new(query, protocol);

        for &upstream in &self.upstreams {
            let id = rand::random::<u16>();
            let attempt = exchange.attempt(upstream, id, question, &self.config, &self.counters);
            let outcome = tokio::time::timeout(self.config.attempt_timeout, attempt)
                .await
                .unwrap_or(Err(AttemptError::Timeout));
            match outcome {
                Ok(response) => {
                    let mut response = response.to_vec();
                    debug_assert_eq!(message_id(&response), Some(id));
                    set_message_id(&mut response, client_id);
                    bump(&self.counters.answered);
                    return Ok(Bytes::from(response));
                }
                Err(error) => {
                    bump(match error {
                        AttemptError::Timeout => &self.counters.timeouts,
                        AttemptError::Refused => &self.counters.refusals,
                        _ => &self.counters.failures,
                    });
                    tracing::debug!(%upstream, ?protocol, %question, %error, "upstream attempt failed");
                }
            }
        }
        bump(&self.counters.all_failed);
        Err(ResolveError::AllFailed {
            attempts: self.upstreams.len(),
        })
    }

    pub fn stats(&self) -> PoolStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters = &self.counters;
        PoolStats {
            queries: read(&counters.queries),
            answered: read(&counters.answered),
            all_failed: read(&counters.all_failed),
            mismatched_ignored: read(&counters.mismatched_ignored),
            timeouts: read(&counters.timeouts),
            refusals: read(&counters.refusals),
            failures: read(&counters.failures),
        }
    }
}

//! The DNS proxy as a virtual service: UDP on the TUN reader, TCP on the netstack, and
//! forwarding to the upstream pool in tasks.
//!
//! What can be answered at once (malformed queries, overload) is answered inline; only
//! upstream work leaves the TUN reader, and it is bounded by a semaphore so a flood turns
//! into REFUSED answers, never into unbounded memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tundns_dns::{QueryError, Rcode};
use tundns_filter::{Datagram, TunWriter, UdpService};
use tundns_upstream::{Protocol, UpstreamPool};

/// Room for an error answer: the header, a question of at most 255 + 4 bytes, and slack.
const ERROR_ANSWER_CAPACITY: usize = 512;

/// Counters of the proxy. Relaxed atomics: statistics only.
#[derive(Debug, Default)]
pub struct DnsStats {
    /// Queries forwarded to an upstream and answered.
    pub forwarded: AtomicU64,
    /// Queries answered SERVFAIL because every upstream failed.
    pub servfail: AtomicU64,
    /// Queries answered REFUSED because too many were in flight.
    pub refused_overload: AtomicU64,
    /// Malformed queries answered FORMERR (or NOTIMP).
    pub malformed_answered: AtomicU64,
    /// Packets dropped without an answer (not a query at all).
    pub dropped: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The forwarding DNS proxy shared by the UDP and TCP front ends.
pub struct DnsProxy {
    pool: Arc<UpstreamPool>,
    in_flight: Arc<Semaphore>,
    stats: Arc<DnsStats>,
}

impl DnsProxy {
    /// A proxy forwarding through `pool`, with at most `max_in_flight` upstream queries.
    pub fn new(pool: UpstreamPool, max_in_flight: usize) -> Self {
        Self {
            pool: Arc::new(pool),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            stats: Arc::default(),
        }
    }

    /// The proxy's counters.
    pub fn stats(&self) -> &Arc<DnsStats> {
        &self.stats
    }

    /// Checks a query and decides what happens to it.
    ///
    /// Returns the error answer to send at once, or a [`Forward`] to run in a task.
    pub fn accept(&self, query: &[u8], protocol: Protocol) -> Verdict {
        let max_response = match tundns_dns::parse_query(query) {
            Ok(parsed) => match protocol {
                Protocol::Udp => tundns_dns::max_udp_response(&parsed),
                Protocol::Tcp => usize::from(u16::MAX),
            },
            Err(QueryError::Drop) => {
                bump(&self.stats.dropped);
                return Verdict::Drop;
            }
            Err(QueryError::Answer(rcode)) => {
                bump(&self.stats.malformed_answered);
                return Verdict::Answer(rcode);
            }
        };
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            bump(&self.stats.refused_overload);
            return Verdict::Answer(Rcode::REFUSED);
        };
        Verdict::Forward(Forward {
            query: query.to_vec(),
            protocol,
            max_response,
            pool: self.pool.clone(),
            stats: self.stats.clone(),
            _permit: permit,
        })
    }
}

/// What to do with one client query.
pub enum Verdict {
    /// Not a query: say nothing.
    Drop,
    /// Answer at once with this error code.
    Answer(Rcode),
    /// Ask the upstreams.
    Forward(Forward),
}

/// One query on its way upstream; holds its in-flight permit until it is answered.
pub struct Forward {
    query: Vec<u8>,
    protocol: Protocol,
    max_response: usize,
    pool: Arc<UpstreamPool>,
    stats: Arc<DnsStats>,
    _permit: OwnedSemaphorePermit,
}

impl Forward {
    /// Resolves through the pool; the answer is always something to send: the upstream's
    /// response (truncated for UDP clients that cannot take it all), or SERVFAIL.
    pub async fn resolve(self) -> Vec<u8> {
        match self.pool.resolve(&self.query, self.protocol).await {
            Ok(response) if response.len() > self.max_response => {
                bump(&self.stats.forwarded);
                let mut truncated = vec![0; response.len()];
                let len = tundns_dns::write_truncated(&response, &mut truncated);
                truncated.truncate(len);
                truncated
            }
            Ok(response) => {
                bump(&self.stats.forwarded);
                response.to_vec()
            }
            Err(error) => {
                bump(&self.stats.servfail);
                tracing::debug!(%error, "every upstream failed");
                error_answer(&self.query, Rcode::SERVFAIL)
            }
        }
    }
}

/// An error answer to `query` as an owned message.
pub fn error_answer(query: &[u8], rcode: Rcode) -> Vec<u8> {
    let mut buf = [0u8; ERROR_ANSWER_CAPACITY];
    let len = tundns_dns::write_error_response(query, rcode, &mut buf);
    buf[..len].to_vec()
}

/// DNS over UDP on the virtual IPs.
pub struct UdpDns {
    proxy: Arc<DnsProxy>,
}

impl UdpDns {
    /// The UDP front end of `proxy`.
    pub fn new(proxy: Arc<DnsProxy>) -> Self {
        Self { proxy }
    }
}

impl UdpService for UdpDns {
    fn on_datagram(&self, datagram: Datagram<'_>, tun: &TunWriter) {
        match self.proxy.accept(datagram.payload, Protocol::Udp) {
            Verdict::Drop => {}
            Verdict::Answer(rcode) => {
                let mut buf = [0u8; ERROR_ANSWER_CAPACITY];
                let len = tundns_dns::write_error_response(datagram.payload, rcode, &mut buf);
                datagram.reply(&buf[..len], tun);
            }
            Verdict::Forward(forward) => {
                let (client, server): (SocketAddr, SocketAddr) =
                    (datagram.source, datagram.destination);
                let tun = tun.clone();
                tokio::spawn(async move {
                    let answer = forward.resolve().await;
                    tun.send_udp(server, client, &answer);
                });
            }
        }
    }
}

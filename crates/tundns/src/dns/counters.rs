//! What the DNS proxy counts on the answer path: every query by transport, type and how
//! it was answered, in a fixed array of relaxed atomics, so counting one query is an index
//! computation and one increment. The metrics endpoint and the control socket read them.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use tundns_resolver::{AnswerPath, Protocol};

/// Counters of the proxy, by how each query was answered. Relaxed atomics: statistics only.
#[derive(Debug, Default)]
pub struct DnsStats {
    /// Every query by transport, type and how it was answered (blocked, local, cache,
    /// forwarded, stale, servfail, refused, formerr, dropped).
    pub queries: QueryCounters,
    /// Joined an identical query already in flight instead of asking again.
    pub collapsed: AtomicU64,
    /// Background refreshes of cache entries hit in their last tenth of life (prefetch).
    pub prefetches: AtomicU64,
    /// Refreshes left out because the forwarding table was busy or full: those entries
    /// expire as if never prefetched.
    pub prefetches_skipped: AtomicU64,
    /// Open DNS-over-TCP client connections, as the TCP front end last counted them.
    pub tcp_connections: AtomicU64,
    /// UDP queries over the rate limit: slipped (an empty truncated answer) or dropped.
    pub rate_limited: AtomicU64,
}

/// The query types counted on their own; every other type is counted as `other`.
const COUNTED_TYPES: [(u16, &str); 12] = [
    (1, "A"),
    (2, "NS"),
    (5, "CNAME"),
    (6, "SOA"),
    (12, "PTR"),
    (15, "MX"),
    (16, "TXT"),
    (28, "AAAA"),
    (33, "SRV"),
    (64, "SVCB"),
    (65, "HTTPS"),
    (255, "ANY"),
];
const TYPE_SLOTS: usize = COUNTED_TYPES.len() + 1;
const OTHER_TYPE: usize = COUNTED_TYPES.len();
/// How a client's query reached the proxy: the `transport` of the metrics and the query log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// DNS over TLS (RFC 7858).
    Tls,
    /// DNS over HTTPS (RFC 8484).
    Https,
    /// DNS over QUIC (RFC 9250).
    Quic,
}

impl Transport {
    pub const ALL: [Transport; 5] = [
        Transport::Udp,
        Transport::Tcp,
        Transport::Tls,
        Transport::Https,
        Transport::Quic,
    ];

    /// What the resolver needs to know of it: a datagram, whose answer must fit the
    /// client's UDP size, or a stream.
    pub fn protocol(self) -> Protocol {
        match self {
            Transport::Udp => Protocol::Udp,
            Transport::Tcp | Transport::Tls | Transport::Https | Transport::Quic => Protocol::Tcp,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Https => "https",
            Transport::Quic => "quic",
        }
    }
}

/// The mnemonic of a query type, if it is one of the commonly counted ones.
pub fn type_mnemonic(qtype: u16) -> Option<&'static str> {
    COUNTED_TYPES
        .iter()
        .find(|(known, _)| *known == qtype)
        .map(|(_, name)| *name)
}

fn type_slot(qtype: Option<u16>) -> usize {
    qtype
        .and_then(|qtype| COUNTED_TYPES.iter().position(|(known, _)| *known == qtype))
        .unwrap_or(OTHER_TYPE)
}

fn transport_slot(transport: Transport) -> usize {
    transport as usize
}

/// Queries by transport, path and type: a fixed array of relaxed atomics, so counting
/// one query is an index computation and one increment.
pub struct QueryCounters {
    counts: [[[AtomicU64; TYPE_SLOTS]; AnswerPath::ALL.len()]; Transport::ALL.len()],
}

impl Default for QueryCounters {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| {
                std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0)))
            }),
        }
    }
}

impl fmt::Debug for QueryCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryCounters")
            .field("total", &self.total())
            .finish()
    }
}

impl QueryCounters {
    /// Counts one query; `qtype` is `None` when the query could not be read.
    pub fn record(&self, transport: Transport, qtype: Option<u16>, path: AnswerPath) {
        self.counts[transport_slot(transport)][path as usize][type_slot(qtype)]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Queries counted with this transport, path and type label.
    pub fn get(&self, transport: Transport, path: AnswerPath, type_label: &str) -> u64 {
        let slot = COUNTED_TYPES
            .iter()
            .position(|(_, name)| *name == type_label)
            .unwrap_or(OTHER_TYPE);
        self.counts[transport_slot(transport)][path as usize][slot].load(Ordering::Relaxed)
    }

    /// Queries answered by `path`, over every transport and type.
    pub fn by_path(&self, path: AnswerPath) -> u64 {
        self.counts
            .iter()
            .flat_map(|by_path| &by_path[path as usize])
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }

    /// Every query counted.
    pub fn total(&self) -> u64 {
        self.counts
            .iter()
            .flatten()
            .flatten()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }

    /// Every non-zero count with its labels: transport, path, type.
    pub fn nonzero(&self) -> impl Iterator<Item = ([(&'static str, &'static str); 3], u64)> + '_ {
        Transport::ALL
            .iter()
            .enumerate()
            .flat_map(move |(t, transport)| {
                AnswerPath::ALL.iter().flat_map(move |path| {
                    (0..TYPE_SLOTS).filter_map(move |slot| {
                        let count = self.counts[t][*path as usize][slot].load(Ordering::Relaxed);
                        let qtype = COUNTED_TYPES.get(slot).map_or("other", |(_, name)| *name);
                        (count > 0).then_some((
                            [
                                ("transport", transport.label()),
                                ("type", qtype),
                                ("result", path.label()),
                            ],
                            count,
                        ))
                    })
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_counters_index_transport_path_and_type() {
        let counters = QueryCounters::default();
        counters.record(Transport::Udp, Some(1), AnswerPath::Cache);
        counters.record(Transport::Udp, Some(1), AnswerPath::Cache);
        counters.record(Transport::Tcp, Some(28), AnswerPath::Forwarded);
        counters.record(Transport::Udp, Some(99), AnswerPath::Blocked);
        counters.record(Transport::Udp, None, AnswerPath::Dropped);
        assert_eq!(counters.get(Transport::Udp, AnswerPath::Cache, "A"), 2);
        assert_eq!(counters.get(Transport::Tcp, AnswerPath::Cache, "A"), 0);
        assert_eq!(
            counters.get(Transport::Tcp, AnswerPath::Forwarded, "AAAA"),
            1
        );
        assert_eq!(
            counters.get(Transport::Udp, AnswerPath::Blocked, "other"),
            1
        );
        assert_eq!(
            counters.get(Transport::Udp, AnswerPath::Dropped, "other"),
            1
        );
        assert_eq!(counters.total(), 5);
        assert_eq!(counters.nonzero().count(), 4);
    }
}

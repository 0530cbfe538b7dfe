//! tundns's resolver as a sans-IO state machine: client queries in, answers and upstream
//! requests out, time passed in.
//!
//! It owns every decision the DNS proxy makes, and nothing else:
//! - [`Resolver`]: what memory answers, inline on the TUN reader and with no allocation:
//!   malformed queries, the blocklist, local data, the cache, and local CNAME chains whose
//!   target memory knows. It also holds the split-DNS routes that pick an upstream group.
//! - [`Forwarding`]: the queries memory could not answer: a bound on how many wait at
//!   once, one upstream request for identical queries in flight, a late look in the
//!   cache, CNAME cloaking, chains finished with their target's answer, the fallback
//!   when every upstream fails (serve-stale, then the upstream's own error, then SERVFAIL),
//!   and prefetch: one background refresh of a cache entry hit in its last tenth of life.
//! - [`pool::Pool`]: within one group, which upstream is asked and when: health, probes
//!   of dead upstreams, hedging after an RTT-derived delay, the TCP retry of a truncated
//!   UDP answer.
//!
//! It must never do I/O: no sockets, no tokio, no threads, no `Instant::now()`. Drivers
//! (the `tundns` binary, `tundns-upstream`'s pool) execute what it asks for and pass in
//! the time. Its tests drive it with a fake clock and scripted upstream answers.

#![forbid(unsafe_code)]

mod forwarding;
pub mod pool;
mod resolver;

pub use forwarding::{
    Admission, Finished, Forwarding, Prefetch, RequestId, Settled, UpstreamRequest,
};
pub use resolver::{Answered, Inline, Miss, Resolver, Upstreams};

/// How a client query reached the proxy, and so how a datagram upstream is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Over UDP: a UDP upstream is asked over UDP, and over TCP if the answer is
    /// truncated; the answer is cut to the client's UDP size.
    Udp,
    /// Over TCP: a UDP upstream is asked over TCP straight away, since the client came
    /// over TCP because it expects a large answer.
    Tcp,
}

/// How a query was answered: the label of the metrics and the query log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnswerPath {
    /// From the blocklist.
    Blocked,
    /// From local records or local zones.
    Local,
    /// From the cache.
    Cache,
    /// By an upstream.
    Forwarded,
    /// With an expired cache entry, every upstream having failed (RFC 8767).
    Stale,
    /// SERVFAIL (or an upstream's own failure answer): every upstream failed.
    Servfail,
    /// REFUSED because too many queries were in flight.
    Refused,
    /// FORMERR, NOTIMP or BADVERS for a malformed query.
    Formerr,
    /// Not a query at all: no answer.
    Dropped,
}

impl AnswerPath {
    /// Every path, in label order.
    pub const ALL: [AnswerPath; 9] = [
        AnswerPath::Blocked,
        AnswerPath::Local,
        AnswerPath::Cache,
        AnswerPath::Forwarded,
        AnswerPath::Stale,
        AnswerPath::Servfail,
        AnswerPath::Refused,
        AnswerPath::Formerr,
        AnswerPath::Dropped,
    ];
    /// The label value, also used in the query log.
    pub fn label(self) -> &'static str {
        match self {
            AnswerPath::Blocked => "blocked",
            AnswerPath::Local => "local",
            AnswerPath::Cache => "cache",
            AnswerPath::Forwarded => "forwarded",
            AnswerPath::Stale => "stale",
            AnswerPath::Servfail => "servfail",
            AnswerPath::Refused => "refused",
            AnswerPath::Formerr => "formerr",
            AnswerPath::Dropped => "dropped",
        }
    }
}

//! Response rate limiting over UDP: a bound on the answers one client network gets a
//! second, so that a source the proxy serves, or one that spoofs it, cannot turn the proxy
//! into an amplifier aimed at someone else.
//!
//! Clients are counted by network, as BIND's RRL counts them: an IPv4 /24 or an IPv6 /56,
//! so that a spoofer cannot spread its load over neighbouring addresses. Each has a token
//! bucket of `rate` answers a second, as deep as one second's worth. A query beyond it is
//! answered every second time with an empty, truncated answer (TC=1, smaller than the
//! query: nothing to amplify) so that a real client retries over TCP, which a spoofer
//! cannot follow; the others are dropped.
//!
//! The table of networks is bounded. When it is full, networks whose bucket has refilled
//! (idle a second or more) make room, looked for at most once a second (a sweep walks the
//! whole table); until room is made, a new network is slipped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// Writes the answer to a query that slips: NOERROR, TC=1, the question and an empty OPT
/// record if the query had one. Returns its length; 0 when the query must not be answered,
/// or when the answer would be larger than the query (a question compressed into the
/// header, say): a slip amplifies nothing.
pub fn write_slip(query: &[u8], buf: &mut [u8]) -> usize {
    let len = crate::write_error_response(query, crate::Rcode::NOERROR, buf);
    if len < crate::HEADER_LEN || len > query.len() {
        return 0;
    }
    buf[2] |= crate::wire::FLAGS_TC;
    len
}

/// What to do with one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    /// Within the limit: answer it.
    Answer,
    /// Over: answer with an empty truncated answer, so a real client retries over TCP.
    Slip,
    /// Over: no answer.
    Drop,
}

/// The networks tracked at most; a few MiB at worst.
const MAX_NETWORKS: usize = 65_536;

/// One client network's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Answers left, in billionths of an answer, so that refills are exact to the
    /// nanosecond.
    tokens: u64,
    refilled: Instant,
    /// Queries over the limit so far, for the slip every second time.
    over: u32,
}

/// Per-network token buckets; see the module docs.
#[derive(Debug)]
pub struct RateLimiter {
    /// Answers a second, in billionths.
    rate: u64,
    networks: HashMap<[u8; 8], Bucket>,
    max_networks: usize,
    /// When the full table was last swept for idle networks.
    swept: Option<Instant>,
}

/// One answer, in the buckets' unit.
const ANSWER: u64 = 1_000_000_000;

impl RateLimiter {
    /// A limiter of `rate` answers a second per network.
    pub fn new(rate: NonZeroU32) -> Self {
        Self::with_capacity(rate, MAX_NETWORKS)
    }

    fn with_capacity(rate: NonZeroU32, max_networks: usize) -> Self {
        Self {
            rate: u64::from(rate.get()) * ANSWER,
            networks: HashMap::new(),
            max_networks,
            swept: None,
        }
    }

    /// Whether a query from `source` at `now` may be answered.
    pub fn check(&mut self, source: IpAddr, now: Instant) -> RateVerdict {
        let network = network_of(source);
        if !self.networks.contains_key(&network) && self.networks.len() >= self.max_networks {
            let due = self
                .swept
                .is_none_or(|swept| now.saturating_duration_since(swept) >= Duration::from_secs(1));
            if due {
                self.swept = Some(now);
                self.forget_idle(now);
            }
            if self.networks.len() >= self.max_networks {
                return RateVerdict::Slip;
            }
        }
        let rate = self.rate;
        let bucket = self.networks.entry(network).or_insert(Bucket {
            tokens: rate,
            refilled: now,
            over: 0,
        });
        // Past a second the bucket is full whatever the rate: no overflow to fear.
        let elapsed = now
            .saturating_duration_since(bucket.refilled)
            .min(Duration::from_secs(1));
        let refill = elapsed.as_nanos() as u64 * (rate / ANSWER);
        bucket.tokens = bucket.tokens.saturating_add(refill).min(rate);
        bucket.refilled = now;
        if bucket.tokens >= ANSWER {
            bucket.tokens -= ANSWER;
            bucket.over = 0;
            return RateVerdict::Answer;
        }
        bucket.over = bucket.over.wrapping_add(1);
        if bucket.over % 2 == 1 {
            RateVerdict::Slip
        } else {
            RateVerdict::Drop
        }
    }

    /// Drops the networks whose bucket has refilled: they are as good as new.
    fn forget_idle(&mut self, now: Instant) {
        self.networks.retain(|_, bucket| {
            now.saturating_duration_since(bucket.refilled) < Duration::from_secs(1)
        });
    }
}

/// The /24 of an IPv4 address or the /56 of an IPv6 one (an IPv4-mapped address counts as
/// IPv4), tagged so the two never meet.
fn network_of(source: IpAddr) -> [u8; 8] {
    match source.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            [4, a, b, c, 0, 0, 0, 0]
        }
        IpAddr::V6(v6) => {
            let octets = v6.octets();
            [
                6, octets[0], octets[1], octets[2], octets[3], octets[4], octets[5], octets[6],
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn limiter(rate: u32) -> RateLimiter {
        RateLimiter::new(NonZeroU32::new(rate).unwrap())
    }

    #[test]
    fn a_network_gets_its_rate_then_every_second_query_slips() {
        let now = Instant::now();
        let mut limiter = limiter(10);
        for _ in 0..10 {
            assert_eq!(limiter.check(ip("192.0.2.7"), now), RateVerdict::Answer);
        }
        let over: Vec<RateVerdict> = (0..4)
            .map(|_| limiter.check(ip("192.0.2.7"), now))
            .collect();
        assert_eq!(
            over,
            [
                RateVerdict::Slip,
                RateVerdict::Drop,
                RateVerdict::Slip,
                RateVerdict::Drop
            ]
        );
        // Its neighbours share its /24; another network does not.
        assert_ne!(limiter.check(ip("192.0.2.200"), now), RateVerdict::Answer);
        assert_eq!(limiter.check(ip("198.51.100.7"), now), RateVerdict::Answer);
        // A tenth of a second buys one answer back.
        let later = now + Duration::from_millis(100);
        assert_eq!(limiter.check(ip("192.0.2.7"), later), RateVerdict::Answer);
        assert_ne!(limiter.check(ip("192.0.2.7"), later), RateVerdict::Answer);
    }

    #[test]
    fn ipv6_clients_are_counted_by_slash_56() {
        let now = Instant::now();
        let mut limiter = limiter(1);
        assert_eq!(
            limiter.check(ip("2001:db8:0:1::1"), now),
            RateVerdict::Answer
        );
        assert_eq!(limiter.check(ip("2001:db8:0:2::9"), now), RateVerdict::Slip);
        assert_eq!(
            limiter.check(ip("2001:db8:0:100::1"), now),
            RateVerdict::Answer
        );
        // IPv4-mapped is IPv4.
        assert_eq!(limiter.check(ip("192.0.2.1"), now), RateVerdict::Answer);
        assert_eq!(
            limiter.check(ip("::ffff:192.0.2.2"), now),
            RateVerdict::Slip
        );
    }

    #[test]
    fn a_full_table_makes_room_from_idle_networks_else_slips_newcomers() {
        let now = Instant::now();
        let mut limiter = RateLimiter::with_capacity(NonZeroU32::new(5).unwrap(), 2);
        assert_eq!(limiter.check(ip("192.0.2.1"), now), RateVerdict::Answer);
        assert_eq!(limiter.check(ip("198.51.100.1"), now), RateVerdict::Answer);
        assert_eq!(limiter.check(ip("203.0.113.1"), now), RateVerdict::Slip);
        let idle = now + Duration::from_secs(1);
        assert_eq!(limiter.check(ip("203.0.113.1"), idle), RateVerdict::Answer);
        assert!(limiter.networks.len() <= 2);
    }

    #[test]
    fn a_slip_is_an_empty_truncated_answer_no_larger_than_the_query() {
        use tundns_test_support::dns::{Edns, Query};
        let query = Query::new("www.example.com", domain::base::iana::Rtype::A)
            .id(0x1234)
            .edns(Edns::new(4096))
            .build();
        let mut buf = [0u8; 512];
        let len = write_slip(&query, &mut buf);
        assert!(len > crate::HEADER_LEN && len <= query.len(), "{len}");
        let answer = domain::base::Message::from_octets(&buf[..len]).unwrap();
        assert!(answer.header().tc() && answer.header().qr());
        assert_eq!(answer.header().id(), 0x1234);
        assert_eq!(answer.header_counts().ancount(), 0);
        // The query's EDNS is answered with EDNS, so the client keeps it.
        assert_eq!(answer.header_counts().arcount(), 1);
        assert_eq!(
            write_slip(&buf[..len], &mut [0u8; 512]),
            0,
            "never an answer to an answer"
        );
    }

    #[test]
    fn a_long_silence_refills_to_one_second_and_no_more() {
        let now = Instant::now();
        let mut limiter = limiter(3);
        assert_eq!(limiter.check(ip("192.0.2.1"), now), RateVerdict::Answer);
        let much_later = now + Duration::from_secs(1_000_000);
        let answered = (0..10)
            .filter(|_| limiter.check(ip("192.0.2.1"), much_later) == RateVerdict::Answer)
            .count();
        assert_eq!(answered, 3);
    }
}

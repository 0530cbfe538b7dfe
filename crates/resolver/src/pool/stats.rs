//! What the pool counts: per query ([`PoolStats`]) and per upstream ([`UpstreamStats`]:
//! an RTT histogram and failed attempts by kind). Plain integers: the pool is `&mut`.

use std::time::Duration;

use super::AttemptFailure;

/// Upper bounds of the RTT histogram's buckets, in microseconds (1 ms to 5 s); an RTT
/// above the last falls only in the implicit `+Inf` bucket.
pub const RTT_BUCKET_BOUNDS_MICROS: [u64; 12] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000,
];

const BUCKETS: usize = RTT_BUCKET_BOUNDS_MICROS.len() + 1;

/// Counters since the pool was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Queries started with a valid query.
    pub queries: u64,
    /// Queries answered by some upstream (not counting soft errors).
    pub answered: u64,
    /// Queries for which every attempt failed or was a soft error.
    pub all_failed: u64,
    /// Messages received that did not match source, ID or question: forged, late or
    /// garbage. Ignored. (Counted by the transports, which see them.)
    pub mismatched_ignored: u64,
    /// Attempts that ran out of time.
    pub timeouts: u64,
    /// Attempts refused: ICMP port unreachable (UDP) or RST (TCP).
    pub refusals: u64,
    /// Attempts that failed otherwise: socket, TLS or HTTP errors, connection closed,
    /// framing errors, too many mismatched messages.
    pub failures: u64,
    /// SERVFAIL or REFUSED answers, which moved on to the next upstream.
    pub soft_errors: u64,
    /// Attempts started because the previous upstream was slow (hedging).
    pub hedged: u64,
    /// Truncated UDP answers asked again over TCP.
    pub tcp_retries: u64,
    /// Probes of dead upstreams.
    pub probes: u64,
    /// Resumed QUIC connections (DoQ, HTTP/3) whose 0-RTT data the server accepted, or
    /// refused (the query was asked again after the handshake). Counted by the transports.
    pub zero_rtt_accepted: u64,
    pub zero_rtt_rejected: u64,
}

/// What one upstream has seen since the pool was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpstreamStats {
    /// Answers (including SERVFAIL and REFUSED) per RTT bucket, not cumulative: entry
    /// `i` counts RTTs above bound `i - 1` up to bound `i` of
    /// [`RTT_BUCKET_BOUNDS_MICROS`]; the last entry counts those above every bound.
    pub rtt_buckets: [u64; BUCKETS],
    /// The sum of the RTTs counted, in microseconds.
    pub rtt_sum_micros: u64,
    /// Attempts that ran out of time.
    pub timeouts: u64,
    /// Attempts refused: ICMP port unreachable or RST.
    pub refusals: u64,
    /// Attempts that failed otherwise (socket, TLS, HTTP, framing).
    pub failures: u64,
    /// SERVFAIL or REFUSED answers.
    pub soft_errors: u64,
}

impl UpstreamStats {
    /// Answers counted in the histogram.
    pub fn rtt_count(&self) -> u64 {
        self.rtt_buckets.iter().sum()
    }

    pub(crate) fn record_rtt(&mut self, rtt: Duration) {
        let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        let bucket = RTT_BUCKET_BOUNDS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(BUCKETS - 1);
        self.rtt_buckets[bucket] += 1;
        self.rtt_sum_micros = self.rtt_sum_micros.saturating_add(micros);
    }

    pub(crate) fn record_failure(&mut self, failure: AttemptFailure) {
        count_failure(
            failure,
            [&mut self.timeouts, &mut self.refusals, &mut self.failures],
        );
    }
}

impl PoolStats {
    pub(crate) fn record_failure(&mut self, failure: AttemptFailure) {
        count_failure(
            failure,
            [&mut self.timeouts, &mut self.refusals, &mut self.failures],
        );
    }
}

/// Adds one to the counter of `failure`'s kind among timeouts, refusals and failures.
fn count_failure(failure: AttemptFailure, [timeouts, refusals, failures]: [&mut u64; 3]) {
    *match failure {
        AttemptFailure::Timeout => timeouts,
        AttemptFailure::Refused => refusals,
        AttemptFailure::Failed
        | AttemptFailure::SharedConnectFailed
        | AttemptFailure::LocalShortage => failures,
    } += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtts_land_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        let mut stats = UpstreamStats::default();
        for millis in [0, 1, 2, 30, 5_000, 9_000] {
            stats.record_rtt(Duration::from_millis(millis));
        }
        // 0 and 1 ms: ≤ 1 ms; 2 ms: ≤ 2.5 ms; 30 ms: ≤ 50 ms; 5 s: ≤ 5 s; 9 s: +Inf.
        assert_eq!(stats.rtt_buckets, [2, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(stats.rtt_sum_micros, 14_033_000);
        assert_eq!(stats.rtt_count(), 6);
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let mut stats = UpstreamStats::default();
        stats.record_failure(AttemptFailure::Timeout);
        stats.record_failure(AttemptFailure::Timeout);
        stats.record_failure(AttemptFailure::Refused);
        stats.soft_errors += 1;
        assert_eq!(
            (
                stats.timeouts,
                stats.refusals,
                stats.failures,
                stats.soft_errors
            ),
            (2, 1, 0, 1)
        );
    }
}

//! Per-upstream counters for observability: a histogram of attempt RTTs and the failed
//! attempts by kind. Relaxed atomics in fixed arrays, so recording costs a few additions
//! on the answer path and never allocates; readers take a [`UpstreamStats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::transport::AttemptError;

/// Upper bounds of the RTT histogram's buckets, in microseconds (1 ms to 5 s); an RTT
/// above the last falls only in the implicit `+Inf` bucket.
pub const RTT_BUCKET_BOUNDS_MICROS: [u64; 12] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000,
];

const BUCKETS: usize = RTT_BUCKET_BOUNDS_MICROS.len() + 1;

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
}

#[derive(Default)]
pub(crate) struct UpstreamCounters {
    rtt_buckets: [AtomicU64; BUCKETS],
    rtt_sum_micros: AtomicU64,
    timeouts: AtomicU64,
    refusals: AtomicU64,
    failures: AtomicU64,
    soft_errors: AtomicU64,
}

impl UpstreamCounters {
    pub(crate) fn record_rtt(&self, rtt: Duration) {
        let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        let bucket = RTT_BUCKET_BOUNDS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(BUCKETS - 1);
        self.rtt_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.rtt_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn record_soft_error(&self) {
        self.soft_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_error(&self, error: &AttemptError) {
        let counter = match error {
            AttemptError::Timeout => &self.timeouts,
            AttemptError::Refused => &self.refusals,
            _ => &self.failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> UpstreamStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        UpstreamStats {
            rtt_buckets: std::array::from_fn(|i| read(&self.rtt_buckets[i])),
            rtt_sum_micros: read(&self.rtt_sum_micros),
            timeouts: read(&self.timeouts),
            refusals: read(&self.refusals),
            failures: read(&self.failures),
            soft_errors: read(&self.soft_errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtts_land_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        let counters = UpstreamCounters::default();
        for millis in [0, 1, 2, 30, 5_000, 9_000] {
            counters.record_rtt(Duration::from_millis(millis));
        }
        let stats = counters.snapshot();
        // 0 and 1 ms: ≤ 1 ms; 2 ms: ≤ 2.5 ms; 30 ms: ≤ 50 ms; 5 s: ≤ 5 s; 9 s: +Inf.
        assert_eq!(stats.rtt_buckets, [2, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(stats.rtt_sum_micros, 14_033_000);
        assert_eq!(stats.rtt_count(), 6);
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let counters = UpstreamCounters::default();
        counters.record_error(&AttemptError::Timeout);
        counters.record_error(&AttemptError::Timeout);
        counters.record_error(&AttemptError::Refused);
        counters.record_soft_error();
        let stats = counters.snapshot();
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

//! Per-upstream health: smoothed RTT, consecutive failures, dead or alive, and
//! the probe back-off of a dead upstream.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::DEAD_AFTER_FAILURES;

/// Assumed before the first sample: hedging then waits 3 × this.
const INITIAL_SRTT: Duration = Duration::from_millis(100);
const HEDGE_MIN: Duration = Duration::from_millis(20);
const HEDGE_MAX: Duration = Duration::from_millis(500);
/// A dead upstream is probed after this, then twice as late after each failed
/// probe, up to `PROBE_BACKOFF_MAX`.
const PROBE_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Health {
    /// Microseconds; 0 means no sample yet.
    srtt_micros: AtomicU64,
    failures: AtomicU32,
    dead: AtomicBool,
    probe: Mutex<Probe>,
}

struct Probe {
    retry_at: Instant,
    backoff: Duration,
    in_progress: bool,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            retry_at: Instant::now(),
            backoff: PROBE_BACKOFF_INITIAL,
            in_progress: false,
        }
    }
}

impl Health {
    pub fn alive(&self) -> bool {
        !self.dead.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn srtt(&self) -> Option<Duration> {
        match self.srtt_micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// How long to wait for this upstream before asking the next one too.
    pub fn hedge_delay(&self) -> Duration {
        (self.srtt().unwrap_or(INITIAL_SRTT) * 3).clamp(HEDGE_MIN, HEDGE_MAX)
    }

    /// An answer came back in `rtt`: fold it into the SRTT (gain 1/8, as TCP
    /// does; concurrent updates may lose a sample, which an average tolerates)
    /// and revive the upstream.
    pub fn record_success(&self, rtt: Duration) {
        let sample = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        let old = self.srtt_micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.srtt_micros.store(new.max(1), Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        if self.dead.swap(false, Ordering::Relaxed) {
            *self.lock_probe() = Probe::default();
        }
    }

    /// An attempt failed. Returns true when this failure marked the upstream dead.
    pub fn record_failure(&self) -> bool {
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures < DEAD_AFTER_FAILURES || self.dead.swap(true, Ordering::Relaxed) {
            return false;
        }
        *self.lock_probe() = Probe {
            retry_at: Instant::now() + PROBE_BACKOFF_INITIAL,
            ..Probe::default()
        };
        true
    }

    /// True (once per back-off period) when a dead upstream is due a probe.
    pub fn claim_probe(&self, now: Instant) -> bool {
        let mut probe = self.lock_probe();
        if probe.in_progress || now < probe.retry_at {
            return false;
        }
        probe.in_progress = true;
        true
    }

    pub fn probe_failed(&self, now: Instant) {
        let mut probe = self.lock_probe();
        probe.backoff = (probe.backoff * 2).min(PROBE_BACKOFF_MAX);
        probe.retry_at = now + probe.backoff;
        probe.in_progress = false;
    }

    fn lock_probe(&self) -> std::sync::MutexGuard<'_, Probe> {
        // The state stays consistent even if a holder panicked.
        self.probe
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hedge_delay_follows_the_srtt_within_bounds() {
        let health = Health::default();
        assert_eq!(health.hedge_delay(), INITIAL_SRTT * 3);
        health.record_success(Duration::from_millis(1));
        assert_eq!(health.hedge_delay(), HEDGE_MIN);
        for _ in 0..100 {
            health.record_success(Duration::from_secs(2));
        }
        assert_eq!(health.hedge_delay(), HEDGE_MAX);
    }

    #[test]
    fn srtt_is_an_ewma() {
        let health = Health::default();
        health.record_success(Duration::from_millis(80));
        health.record_success(Duration::from_millis(160));
        assert_eq!(health.srtt(), Some(Duration::from_millis(90)));
    }

    #[test]
    fn consecutive_failures_kill_and_success_revives() {
        let health = Health::default();
        assert!(!health.record_failure());
        health.record_success(Duration::from_millis(1));
        for _ in 1..DEAD_AFTER_FAILURES {
            assert!(!health.record_failure());
        }
        assert!(health.alive());
        assert!(health.record_failure());
        assert!(!health.alive());
        assert!(!health.record_failure(), "reported dead only once");
        assert_eq!(health.failures(), DEAD_AFTER_FAILURES + 1);
        health.record_success(Duration::from_millis(1));
        assert!(health.alive());
        assert_eq!(health.failures(), 0);
    }

    #[test]
    fn probes_back_off() {
        let health = Health::default();
        for _ in 0..DEAD_AFTER_FAILURES {
            health.record_failure();
        }
        let now = Instant::now();
        assert!(!health.claim_probe(now), "not before the back-off");
        let due = now + PROBE_BACKOFF_INITIAL;
        assert!(health.claim_probe(due));
        assert!(!health.claim_probe(due), "one probe at a time");
        health.probe_failed(due);
        assert!(!health.claim_probe(due + PROBE_BACKOFF_INITIAL));
        assert!(health.claim_probe(due + PROBE_BACKOFF_INITIAL * 2));
    }
}

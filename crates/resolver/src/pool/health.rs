//! One upstream's health: smoothed RTT, consecutive failures, when it last answered, dead or
//! alive, and the probe back-off of a dead upstream. Every method takes the time it happens
//! at.

use std::time::{Duration, Instant};

/// Consecutive failures that mark an upstream dead. A timeout counts only when the upstream
/// answered nothing else after the attempt was sent (see `Pool::record_failure`).
pub const DEAD_AFTER_FAILURES: u32 = 3;

/// Assumed before the first sample: hedging then waits 3 × this.
const INITIAL_SRTT: Duration = Duration::from_millis(100);
const HEDGE_MIN: Duration = Duration::from_millis(20);
const HEDGE_MAX: Duration = Duration::from_millis(500);
/// A dead upstream is probed after this, then twice as late after each failed probe, up
/// to `PROBE_BACKOFF_MAX`.
pub(crate) const PROBE_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(crate) struct Health {
    srtt: Option<Duration>,
    failures: u32,
    /// When the upstream last answered anything, a probe included.
    last_answer: Option<Instant>,
    /// Set while the upstream is dead: when it may be probed next.
    probe: Option<Probe>,
}

#[derive(Debug)]
struct Probe {
    due: Instant,
    backoff: Duration,
    in_progress: bool,
}

impl Health {
    pub(crate) fn alive(&self) -> bool {
        self.probe.is_none()
    }

    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    pub(crate) fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// How long to wait for this upstream before asking the next one too.
    pub(crate) fn hedge_delay(&self) -> Duration {
        (self.srtt.unwrap_or(INITIAL_SRTT) * 3).clamp(HEDGE_MIN, HEDGE_MAX)
    }

    /// Whether the upstream answered anything at or after `instant`.
    pub(crate) fn answered_since(&self, instant: Instant) -> bool {
        self.last_answer.is_some_and(|answered| answered >= instant)
    }

    /// An answer came back at `now`, `rtt` after its attempt was sent: fold the RTT into the
    /// SRTT (gain 1/8, as TCP does) and revive the upstream.
    pub(crate) fn record_success(&mut self, rtt: Duration, now: Instant) {
        let sample = rtt.max(Duration::from_micros(1));
        self.srtt = Some(match self.srtt {
            None => sample,
            Some(old) => old - old / 8 + sample / 8,
        });
        self.failures = 0;
        self.last_answer = Some(now);
        self.probe = None;
    }

    /// An attempt failed at `now`. Returns true when this failure marked the upstream dead.
    pub(crate) fn record_failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        if self.failures < DEAD_AFTER_FAILURES || self.probe.is_some() {
            return false;
        }
        self.probe = Some(Probe {
            due: now + PROBE_BACKOFF_INITIAL,
            backoff: PROBE_BACKOFF_INITIAL,
            in_progress: false,
        });
        true
    }

    /// True (once per back-off period) when a dead upstream is due a probe at `now`.
    pub(crate) fn claim_probe(&mut self, now: Instant) -> bool {
        match &mut self.probe {
            Some(probe) if !probe.in_progress && now >= probe.due => {
                probe.in_progress = true;
                true
            }
            _ => false,
        }
    }

    /// The probe claimed last failed at `now`: wait twice as long for the next one.
    pub(crate) fn probe_failed(&mut self, now: Instant) {
        if let Some(probe) = &mut self.probe {
            probe.backoff = (probe.backoff * 2).min(PROBE_BACKOFF_MAX);
            probe.due = now + probe.backoff;
            probe.in_progress = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hedge_delay_follows_the_srtt_within_bounds() {
        let mut health = Health::default();
        assert_eq!(health.hedge_delay(), INITIAL_SRTT * 3);
        health.record_success(Duration::from_millis(1), Instant::now());
        assert_eq!(health.hedge_delay(), HEDGE_MIN);
        for _ in 0..100 {
            health.record_success(Duration::from_secs(2), Instant::now());
        }
        assert_eq!(health.hedge_delay(), HEDGE_MAX);
    }

    #[test]
    fn srtt_is_an_ewma() {
        let mut health = Health::default();
        health.record_success(Duration::from_millis(80), Instant::now());
        health.record_success(Duration::from_millis(160), Instant::now());
        assert_eq!(health.srtt(), Some(Duration::from_millis(90)));
    }

    #[test]
    fn consecutive_failures_kill_and_success_revives() {
        let now = Instant::now();
        let mut health = Health::default();
        assert!(!health.record_failure(now));
        health.record_success(Duration::from_millis(1), Instant::now());
        for _ in 1..DEAD_AFTER_FAILURES {
            assert!(!health.record_failure(now));
        }
        assert!(health.alive());
        assert!(health.record_failure(now));
        assert!(!health.alive());
        assert!(!health.record_failure(now), "reported dead only once");
        assert_eq!(health.failures(), DEAD_AFTER_FAILURES + 1);
        health.record_success(Duration::from_millis(1), Instant::now());
        assert!(health.alive());
        assert_eq!(health.failures(), 0);
    }

    #[test]
    fn probes_back_off() {
        let now = Instant::now();
        let mut health = Health::default();
        for _ in 0..DEAD_AFTER_FAILURES {
            health.record_failure(now);
        }
        assert!(!health.claim_probe(now), "not before the back-off");
        let due = now + PROBE_BACKOFF_INITIAL;
        assert!(health.claim_probe(due));
        assert!(!health.claim_probe(due), "one probe at a time");
        health.probe_failed(due);
        assert!(!health.claim_probe(due + PROBE_BACKOFF_INITIAL));
        assert!(health.claim_probe(due + PROBE_BACKOFF_INITIAL * 2));
    }

    #[test]
    fn answered_since_looks_at_the_last_answer() {
        let sent = Instant::now();
        let mut health = Health::default();
        assert!(!health.answered_since(sent), "never answered");
        health.record_success(Duration::from_millis(5), sent + Duration::from_millis(5));
        assert!(health.answered_since(sent));
        assert!(health.answered_since(sent + Duration::from_millis(5)));
        assert!(!health.answered_since(sent + Duration::from_millis(6)));
    }
}

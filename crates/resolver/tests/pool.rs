//! The pool's upstream choice, driven by hand: a fake clock and scripted attempt outcomes,
//! no sockets, no sleeps.

mod common;

use std::time::Duration;

use common::{Clock, answer, id_of, marker_of, query, rcode_of};
use tundns_resolver::Protocol;
use tundns_resolver::pool::{
    AttemptFailure, DEAD_AFTER_FAILURES, Pool, PoolPolicy, ResolveError, Transmit, UpstreamEntry,
};

fn pool(upstreams: usize, hedge: bool) -> Pool {
    let entries = (0..upstreams)
        .map(|index| UpstreamEntry {
            label: format!("udp://192.0.2.{}:53", 53 + index).into(),
            datagram: true,
        })
        .collect();
    let policy = PoolPolicy {
        attempt_timeout: Duration::from_secs(2),
        hedge,
    };
    Pool::new(entries, policy)
}

fn transmits(pool: &mut Pool) -> Vec<Transmit> {
    std::iter::from_fn(|| pool.poll_transmit()).collect()
}

fn only_transmit(pool: &mut Pool) -> Transmit {
    let mut all = transmits(pool);
    assert_eq!(all.len(), 1, "exactly one attempt expected");
    all.remove(0)
}

/// Starts an exchange for `query(id, name)` over UDP at `at`, and returns its one attempt.
fn start(pool: &mut Pool, id: u16, name: &str, at: std::time::Instant) -> Transmit {
    pool.start(&query(id, name), Protocol::Udp, at).unwrap();
    only_transmit(pool)
}

/// Fails the first of two upstreams `DEAD_AFTER_FAILURES` times with `failure`, each
/// attempt `step` ms after the last, the second answering each query in its stead.
fn kill_the_first_upstream(pool: &mut Pool, clock: &Clock, failure: AttemptFailure, step: u64) {
    let mut now = 0;
    for round in 0..DEAD_AFTER_FAILURES {
        let primary = start(pool, round as u16, "a.lab.test", clock.at_millis(now));
        assert_eq!(primary.upstream, 0, "round {round}");
        now += step;
        pool.handle_attempt(primary.attempt, Err(failure), clock.at_millis(now));
        let failover = only_transmit(pool);
        assert_eq!(failover.upstream, 1);
        pool.handle_attempt(
            failover.attempt,
            answered(&failover, 2),
            clock.at_millis(now),
        );
        assert!(pool.poll_outcome().unwrap().1.is_ok());
    }
}

/// The upstream's answer to the attempt, with the ID it carried on the wire.
fn answered(transmit: &Transmit, marker: u8) -> Result<Vec<u8>, AttemptFailure> {
    Ok(answer(&transmit.query, marker, 300, 0, false))
}

#[test]
fn hedging_asks_the_next_upstream_after_the_rtt_derived_delay() {
    let clock = Clock::new();
    let mut pool = pool(2, true);
    // A first exchange teaches the pool that upstream 0 answers in 10 ms.
    let first = start(&mut pool, 1, "a.lab.test", clock.at_millis(0));
    assert_eq!(first.upstream, 0);
    pool.handle_attempt(first.attempt, answered(&first, 1), clock.at_millis(10));
    assert!(pool.poll_outcome().unwrap().1.is_ok());

    // 3 × 10 ms, above the 20 ms floor: the next upstream is asked 30 ms in.
    let exchange = pool
        .start(&query(2, "b.lab.test"), Protocol::Udp, clock.at_millis(100))
        .unwrap();
    let slow = only_transmit(&mut pool);
    assert_eq!(slow.upstream, 0);
    assert_eq!(pool.poll_timeout(), Some(clock.at_millis(130)));
    pool.handle_timeout(clock.at_millis(129));
    assert!(pool.poll_transmit().is_none(), "not before the delay");
    pool.handle_timeout(clock.at_millis(130));
    let hedge = only_transmit(&mut pool);
    assert_eq!(hedge.upstream, 1);
    assert_eq!(pool.stats().hedged, 1);
    assert_eq!(pool.poll_timeout(), None, "no upstream left to hedge to");

    // The hedge answers first and wins; the slow attempt still counts when it ends.
    pool.handle_attempt(hedge.attempt, answered(&hedge, 2), clock.at_millis(140));
    let (id, outcome) = pool.poll_outcome().unwrap();
    assert_eq!(id, exchange);
    let answer = outcome.unwrap();
    assert_eq!(marker_of(&answer.response), 2);
    assert_eq!(id_of(&answer.response), 2, "the client's ID");
    assert_eq!(&*answer.upstream, "udp://192.0.2.54:53");
    pool.handle_attempt(slow.attempt, answered(&slow, 1), clock.at_millis(400));
    assert!(pool.poll_outcome().is_none());
    assert_eq!(pool.upstream_stats()[0].rtt_count(), 2);
}

#[test]
fn without_hedging_a_slow_upstream_is_waited_for() {
    let clock = Clock::new();
    let mut pool = pool(2, false);
    let only = start(&mut pool, 1, "a.lab.test", clock.at_millis(0));
    assert_eq!(pool.poll_timeout(), None);
    pool.handle_attempt(only.attempt, answered(&only, 1), clock.at_millis(1_500));
    assert!(pool.poll_outcome().unwrap().1.is_ok());
}

#[test]
fn a_dead_upstream_is_skipped_until_a_probe_brings_it_back() {
    let clock = Clock::new();
    let mut pool = pool(2, false);
    let now = 2_000 * u64::from(DEAD_AFTER_FAILURES);
    kill_the_first_upstream(&mut pool, &clock, AttemptFailure::Timeout, 2_000);
    assert_eq!(pool.poll_reset(), Some(0), "its connection is dropped");
    assert!(!pool.health()[0].alive);

    // Dead: skipped, and not probed before the back-off has passed.
    pool.start(
        &query(10, "b.lab.test"),
        Protocol::Udp,
        clock.at_millis(now + 500),
    )
    .unwrap();
    let skipped = only_transmit(&mut pool);
    assert_eq!(skipped.upstream, 1);
    pool.handle_attempt(
        skipped.attempt,
        answered(&skipped, 2),
        clock.at_millis(now + 510),
    );
    assert!(pool.poll_outcome().unwrap().1.is_ok());

    // After the back-off, a query doubles as the probe; the query itself goes to 1.
    pool.start(
        &query(11, "c.lab.test"),
        Protocol::Udp,
        clock.at_millis(now + 1_000),
    )
    .unwrap();
    let attempts = transmits(&mut pool);
    let upstreams: Vec<usize> = attempts.iter().map(|t| t.upstream).collect();
    assert_eq!(upstreams, [0, 1], "the probe, then the query");
    assert_eq!(pool.stats().probes, 1);
    pool.handle_attempt(
        attempts[1].attempt,
        answered(&attempts[1], 2),
        clock.at_millis(now + 1_010),
    );
    assert_eq!(
        marker_of(&pool.poll_outcome().unwrap().1.unwrap().response),
        2
    );
    pool.handle_attempt(
        attempts[0].attempt,
        answered(&attempts[0], 1),
        clock.at_millis(now + 1_020),
    );
    assert!(pool.poll_outcome().is_none(), "a probe answers no exchange");
    assert!(pool.health()[0].alive, "the probe brought it back");

    pool.start(
        &query(12, "d.lab.test"),
        Protocol::Udp,
        clock.at_millis(now + 1_100),
    )
    .unwrap();
    assert_eq!(only_transmit(&mut pool).upstream, 0, "first again");
}

#[test]
fn a_failed_probe_doubles_the_wait_for_the_next() {
    let clock = Clock::new();
    let mut pool = pool(2, false);
    kill_the_first_upstream(&mut pool, &clock, AttemptFailure::Refused, 0);
    pool.start(
        &query(9, "a.lab.test"),
        Protocol::Udp,
        clock.at_millis(1_000),
    )
    .unwrap();
    let probe = transmits(&mut pool)
        .into_iter()
        .find(|t| t.upstream == 0)
        .unwrap();
    pool.handle_attempt(
        probe.attempt,
        Err(AttemptFailure::Timeout),
        clock.at_millis(3_000),
    );
    pool.start(
        &query(10, "a.lab.test"),
        Protocol::Udp,
        clock.at_millis(4_999),
    )
    .unwrap();
    assert_eq!(
        only_transmit(&mut pool).upstream,
        1,
        "no probe within the 2 s back-off"
    );
    pool.start(
        &query(11, "a.lab.test"),
        Protocol::Udp,
        clock.at_millis(5_000),
    )
    .unwrap();
    assert!(transmits(&mut pool).iter().any(|t| t.upstream == 0));
}

#[test]
fn when_every_upstream_is_dead_all_are_still_tried() {
    let clock = Clock::new();
    let mut pool = pool(2, false);
    for round in 0..DEAD_AFTER_FAILURES {
        pool.start(
            &query(round as u16, "a.lab.test"),
            Protocol::Udp,
            clock.at_millis(0),
        )
        .unwrap();
        for _ in 0..2 {
            let attempt = only_transmit(&mut pool);
            pool.handle_attempt(
                attempt.attempt,
                Err(AttemptFailure::Timeout),
                clock.at_millis(0),
            );
        }
        assert!(matches!(
            pool.poll_outcome().unwrap().1,
            Err(ResolveError::AllFailed { attempts: 2, .. })
        ));
    }
    assert!(pool.health().iter().all(|upstream| !upstream.alive));
    pool.start(&query(9, "a.lab.test"), Protocol::Udp, clock.at_millis(10))
        .unwrap();
    assert_eq!(
        only_transmit(&mut pool).upstream,
        0,
        "tried in order, no probe needed"
    );
}

#[test]
fn a_truncated_udp_answer_is_asked_again_over_tcp() {
    let clock = Clock::new();
    let mut pool = pool(1, false);
    let udp = start(&mut pool, 7, "big.lab.test", clock.at_millis(0));
    assert_eq!(udp.protocol, Protocol::Udp);
    let truncated = answer(&udp.query, 1, 300, 0, true);
    pool.handle_attempt(udp.attempt, Ok(truncated), clock.at_millis(5));
    let tcp = only_transmit(&mut pool);
    assert_eq!((tcp.upstream, tcp.protocol), (0, Protocol::Tcp));
    assert_eq!(pool.stats().tcp_retries, 1);
    pool.handle_attempt(tcp.attempt, answered(&tcp, 2), clock.at_millis(9));
    let answer = pool.poll_outcome().unwrap().1.unwrap();
    assert_eq!(marker_of(&answer.response), 2, "the full answer, over TCP");
    assert_eq!(answer.response[2] & 0x02, 0, "not truncated");
    assert!(
        answer
            .upstream
            .ends_with("(over TCP: its UDP answer was truncated)"),
        "the answer says how it came: {}",
        answer.upstream
    );
}

#[test]
fn the_truncated_answer_stands_when_the_tcp_retry_fails() {
    let clock = Clock::new();
    let mut pool = pool(1, false);
    let udp = start(&mut pool, 7, "big.lab.test", clock.at_millis(0));
    pool.handle_attempt(
        udp.attempt,
        Ok(answer(&udp.query, 1, 300, 0, true)),
        clock.at_millis(5),
    );
    let tcp = only_transmit(&mut pool);
    pool.handle_attempt(
        tcp.attempt,
        Err(AttemptFailure::Refused),
        clock.at_millis(6),
    );
    let answer = pool.poll_outcome().unwrap().1.unwrap();
    assert_ne!(answer.response[2] & 0x02, 0, "TC still set");
    assert!(pool.health()[0].alive);
    assert_eq!(pool.health()[0].failures, 0, "the upstream did answer");
}

#[test]
fn a_client_over_tcp_asks_a_udp_upstream_over_tcp_at_once() {
    let clock = Clock::new();
    let mut pool = pool(1, false);
    pool.start(&query(7, "big.lab.test"), Protocol::Tcp, clock.at_millis(0))
        .unwrap();
    assert_eq!(only_transmit(&mut pool).protocol, Protocol::Tcp);
}

#[test]
fn soft_errors_move_on_and_the_last_is_kept_when_all_fail() {
    let clock = Clock::new();
    let mut pool = pool(2, false);
    let first = start(&mut pool, 3, "a.lab.test", clock.at_millis(0));
    pool.handle_attempt(
        first.attempt,
        Ok(answer(&first.query, 0, 0, 2, false)),
        clock.at_millis(1),
    );
    let second = only_transmit(&mut pool);
    assert_eq!(second.upstream, 1, "SERVFAIL moves on");
    pool.handle_attempt(
        second.attempt,
        Ok(answer(&second.query, 0, 0, 5, false)),
        clock.at_millis(2),
    );
    match pool.poll_outcome().unwrap().1 {
        Err(ResolveError::AllFailed {
            attempts: 2,
            soft_answer: Some(soft),
        }) => {
            assert_eq!(rcode_of(&soft), 5, "the last one's REFUSED");
            assert_eq!(id_of(&soft), 3);
        }
        other => panic!("expected every upstream to fail, got {other:?}"),
    }
    assert_eq!(pool.stats().soft_errors, 2);
    assert_eq!(pool.stats().all_failed, 1);
}

#[test]
fn an_abandoned_exchange_reports_nothing_but_its_attempt_still_counts() {
    let clock = Clock::new();
    let mut pool = pool(1, true);
    let exchange = pool
        .start(&query(3, "a.lab.test"), Protocol::Udp, clock.at_millis(0))
        .unwrap();
    let attempt = only_transmit(&mut pool);
    pool.abandon(exchange);
    assert_eq!(pool.poll_timeout(), None);
    pool.handle_attempt(
        attempt.attempt,
        Err(AttemptFailure::Timeout),
        clock.at_millis(2_000),
    );
    assert!(pool.poll_outcome().is_none());
    assert_eq!(pool.health()[0].failures, 1);
}

#[test]
fn invalid_queries_and_empty_pools_send_nothing() {
    let clock = Clock::new();
    let mut empty = pool(0, true);
    assert_eq!(
        empty.start(&query(1, "a.lab.test"), Protocol::Udp, clock.at_millis(0)),
        Err(ResolveError::NoUpstreams)
    );
    let mut one = pool(1, true);
    assert_eq!(
        one.start(&[1, 2, 3], Protocol::Udp, clock.at_millis(0)),
        Err(ResolveError::InvalidQuery)
    );
    assert!(one.poll_transmit().is_none());
}

#[test]
fn the_tcp_retry_shares_the_attempts_deadline_and_running_out_fails_the_attempt() {
    let clock = Clock::new();
    let mut pool = pool(2, false);
    let udp = start(&mut pool, 7, "big.lab.test", clock.at_millis(0));
    assert_eq!(udp.deadline, clock.at_millis(2_000));
    pool.handle_attempt(
        udp.attempt,
        Ok(answer(&udp.query, 1, 300, 0, true)),
        clock.at_millis(1_500),
    );
    let tcp = only_transmit(&mut pool);
    assert_eq!(
        tcp.deadline,
        clock.at_millis(2_000),
        "what is left of the first attempt's time"
    );
    pool.handle_attempt(
        tcp.attempt,
        Err(AttemptFailure::Timeout),
        clock.at_millis(2_000),
    );
    assert_eq!(
        pool.health()[0].failures,
        1,
        "a timeout, as before the retry existed"
    );
    let next = only_transmit(&mut pool);
    assert_eq!(next.upstream, 1, "the next upstream is asked");
}

#[test]
fn a_shortage_on_tundns_side_does_not_kill_the_upstream() {
    let clock = Clock::new();
    let mut pool = pool(2, false);
    kill_the_first_upstream(&mut pool, &clock, AttemptFailure::LocalShortage, 10);
    assert!(pool.health()[0].alive);
    assert_eq!(pool.health()[0].failures, 0);
    assert_eq!(pool.poll_reset(), None);
}

/// A page's worth of names at once: one the primary answers, and as many as kill an
/// upstream under a zone whose authority never answers. Hedging gets the second upstream's
/// answer for those; the primary's attempts run on and time out. Round after round, the
/// primary stays alive: it answered another name after each timed-out attempt was sent.
#[test]
fn timeouts_on_names_it_cannot_resolve_do_not_kill_an_upstream_that_answers_others() {
    let clock = Clock::new();
    let mut pool = pool(2, true);
    let rounds = 3;
    let mut id = 0;
    let mut next_id = || {
        id += 1;
        id
    };
    for round in 0..rounds {
        let now = u64::from(round) * 3_000;
        let answered_name = start(&mut pool, next_id(), "www.lab.test", clock.at_millis(now));
        let silent: Vec<Transmit> = (0..DEAD_AFTER_FAILURES)
            .map(|n| {
                let name = format!("n{n}.slow.lab.test");
                start(&mut pool, next_id(), &name, clock.at_millis(now + 1))
            })
            .collect();
        assert_eq!(answered_name.upstream, 0);
        assert!(silent.iter().all(|attempt| attempt.upstream == 0));
        // Sent before the silent names, answered after they were sent.
        pool.handle_attempt(
            answered_name.attempt,
            answered(&answered_name, 1),
            clock.at_millis(now + 5),
        );
        assert!(pool.poll_outcome().unwrap().1.is_ok());

        pool.handle_timeout(clock.at_millis(now + 400));
        let hedges = transmits(&mut pool);
        assert_eq!(hedges.len(), silent.len(), "round {round}");
        for hedge in hedges {
            assert_eq!(hedge.upstream, 1, "round {round}");
            pool.handle_attempt(
                hedge.attempt,
                answered(&hedge, 2),
                clock.at_millis(now + 410),
            );
        }
        for outcome in std::iter::from_fn(|| pool.poll_outcome()) {
            assert_eq!(marker_of(&outcome.1.unwrap().response), 2);
        }
        for attempt in silent {
            pool.handle_attempt(
                attempt.attempt,
                Err(AttemptFailure::Timeout),
                clock.at_millis(now + 2_001),
            );
        }
        assert!(pool.health()[0].alive, "round {round}: {:?}", pool.health());
    }
    assert_eq!(pool.poll_reset(), None, "no connection dropped");
    assert_eq!(pool.health()[0].failures, 0, "none held against it");
    assert_eq!(
        pool.upstream_stats()[0].timeouts,
        u64::from(rounds * DEAD_AFTER_FAILURES),
        "the timeouts still show in the statistics"
    );
    let next = start(&mut pool, next_id(), "www.lab.test", clock.at_millis(9_000));
    assert_eq!(next.upstream, 0, "still asked first");
}

/// The rule above does not slow down noticing a dead upstream: once it stops answering,
/// the attempts sent after its last answer kill it after as many timeouts as ever, even
/// when they were all in flight at once.
#[test]
fn an_upstream_that_falls_silent_dies_after_as_many_timeouts_as_before() {
    let clock = Clock::new();
    let mut pool = pool(2, false);
    let last = start(&mut pool, 1, "www.lab.test", clock.at_millis(0));
    pool.handle_attempt(last.attempt, answered(&last, 1), clock.at_millis(5));
    assert!(pool.poll_outcome().unwrap().1.is_ok());

    let unanswered: Vec<Transmit> = (0..DEAD_AFTER_FAILURES)
        .map(|n| {
            let name = format!("n{n}.lab.test");
            start(&mut pool, 10 + n as u16, &name, clock.at_millis(10))
        })
        .collect();
    for (n, attempt) in (1..).zip(unanswered) {
        assert_eq!(attempt.upstream, 0);
        pool.handle_attempt(
            attempt.attempt,
            Err(AttemptFailure::Timeout),
            clock.at_millis(2_010),
        );
        assert_eq!(pool.health()[0].failures, n);
        assert_eq!(pool.health()[0].alive, n < DEAD_AFTER_FAILURES, "after {n}");
        let failover = only_transmit(&mut pool);
        assert_eq!(failover.upstream, 1);
        pool.handle_attempt(
            failover.attempt,
            answered(&failover, 2),
            clock.at_millis(2_011),
        );
        assert!(pool.poll_outcome().unwrap().1.is_ok());
    }
    assert_eq!(pool.poll_reset(), Some(0), "its connection is dropped");
}

//! The choice of upstream within one group, as a state machine: which upstream to ask
//! first, when to ask the next one too (hedging), when a truncated UDP answer is asked
//! again over TCP, when an upstream is dead and when a probe may bring it back.
//!
//! A driver feeds it and executes what it asks for:
//! - [`Pool::start`] begins an exchange for one client query;
//! - [`Pool::poll_transmit`] yields the attempts to make (which upstream, over which
//!   protocol, what bytes);
//! - [`Pool::handle_attempt`] takes each attempt's outcome, timeouts included (the driver
//!   bounds each attempt by [`PoolPolicy::attempt_timeout`]);
//! - [`Pool::poll_timeout`] and [`Pool::handle_timeout`] drive hedging;
//! - [`Pool::poll_outcome`] yields each exchange's result;
//! - [`Pool::poll_reset`] names upstreams just marked dead, whose connections to drop.
//!
//! Order: the configured order among the alive upstreams. RTT decides *when* to hedge,
//! not the order: the first upstream is the one the administrator chose as primary, and
//! hedging already hides a slow primary. When every upstream is dead, all are tried in
//! order, so the pool recovers as soon as the network does. An attempt runs on after its
//! exchange ended (another upstream won, or the exchange was abandoned), so a black-holed
//! upstream that keeps losing to hedging is still seen to fail.
//!
//! Health: consecutive failures mark an upstream dead, but a timeout counts only if the
//! upstream answered nothing after that attempt was sent. An upstream that answers other
//! names meanwhile is alive; the silent name's own authority is what fails.

mod health;
mod stats;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tundns_dns::{Question, Rcode, is_truncated, parse_query, set_message_id};

pub use health::DEAD_AFTER_FAILURES;
pub use stats::{PoolStats, RTT_BUCKET_BOUNDS_MICROS, UpstreamStats};

use self::health::Health;
use crate::Protocol;

/// What the pool's decisions depend on besides the upstreams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolPolicy {
    /// How long one attempt may take, a truncated answer's TCP retry included; the driver
    /// enforces it ([`Transmit::deadline`]) and reports a timeout.
    pub attempt_timeout: Duration,
    /// Ask the next upstream too when the current one has not answered within a delay
    /// derived from its RTT (the first valid answer wins).
    pub hedge: bool,
}

/// One upstream as the pool sees it.
#[derive(Clone, Debug)]
pub struct UpstreamEntry {
    /// How it is named in answers and logs (`udp://192.0.2.53:53`).
    pub label: Arc<str>,
    /// A datagram upstream: a client query that came over UDP is asked over UDP, and a
    /// truncated answer is asked again over TCP.
    pub datagram: bool,
}

/// Why one attempt produced no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptFailure {
    /// No answer within the attempt timeout.
    Timeout,
    /// ICMP port unreachable or a TCP reset.
    Refused,
    /// A socket, TLS, HTTP or framing error, or too many mismatched messages.
    Failed,
    /// A connection that another attempt started failed; that attempt counts the failure
    /// against the upstream's health, this one does not.
    SharedConnectFailed,
    /// tundns's own side could not make the attempt (no local port free, too many
    /// connections, a query the transport cannot carry): not the upstream's fault, and not
    /// counted against its health.
    LocalShortage,
}

/// Names an exchange: one client query through the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExchangeId(u64);

/// Names an attempt: one query sent to one upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttemptId(u64);

/// An attempt for the driver to make.
#[derive(Clone, Debug)]
pub struct Transmit {
    pub attempt: AttemptId,
    /// Index of the upstream, in the order the pool was built with.
    pub upstream: usize,
    /// How a datagram upstream is asked; other upstreams have one way only.
    pub protocol: Protocol,
    /// The query, with the client's ID (the transport picks its own).
    pub query: Bytes,
    /// Its question, which the answer must match.
    pub question: Question,
    /// When the attempt is reported as timed out if it has not ended.
    pub deadline: Instant,
}

/// An upstream's answer to an exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The response, with the client's ID.
    pub response: Bytes,
    /// The upstream that gave it.
    pub upstream: Arc<str>,
}

/// Why an exchange produced no usable answer. The caller serves stale data if it has
/// some, and otherwise answers SERVFAIL (or FORMERR for [`ResolveError::InvalidQuery`]).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// The bytes are not a forwardable query: nothing was sent.
    #[error("not a forwardable DNS query")]
    InvalidQuery,
    /// The pool has no upstream.
    #[error("no upstream resolver configured")]
    NoUpstreams,
    /// Every attempt timed out, failed, or answered an error ([`is_soft_error`]).
    /// `soft_answer` is the last such error answer (client's ID restored), from which the
    /// caller tells the client why when it has nothing stale.
    #[error("all {attempts} upstream attempts failed")]
    AllFailed {
        attempts: usize,
        soft_answer: Option<Bytes>,
    },
}

struct Upstream {
    entry: UpstreamEntry,
    health: Health,
    stats: UpstreamStats,
}

/// One client query on its way through the upstreams.
struct Exchange {
    query: Bytes,
    question: Question,
    client_id: u16,
    protocol: Protocol,
    /// The upstreams to ask, in order; `order[..launched]` have been asked.
    order: Vec<usize>,
    launched: usize,
    /// Attempts of this exchange not yet settled.
    outstanding: usize,
    /// When the next upstream is asked too, if the current one is still silent.
    hedge_at: Option<Instant>,
    soft_answer: Option<Bytes>,
}

/// What an attempt is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Part of an exchange (which may have ended since).
    Exchange(ExchangeId),
    /// Checks whether a dead upstream is back.
    Probe,
}

struct Attempt {
    purpose: Purpose,
    upstream: usize,
    protocol: Protocol,
    started: Instant,
    /// Set on the TCP attempt that follows a truncated UDP answer: that answer, still
    /// valid if TCP fails.
    truncated: Option<Bytes>,
}

/// Upstream resolvers with health, hedging and failover. See the module documentation.
pub struct Pool {
    upstreams: Vec<Upstream>,
    policy: PoolPolicy,
    exchanges: HashMap<ExchangeId, Exchange>,
    attempts: HashMap<AttemptId, Attempt>,
    transmits: VecDeque<Transmit>,
    outcomes: VecDeque<(ExchangeId, Result<Answer, ResolveError>)>,
    resets: VecDeque<usize>,
    next_id: u64,
    stats: PoolStats,
}

/// The health of one upstream, as [`Pool::health`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamHealth {
    pub label: Arc<str>,
    /// Smoothed RTT of successful attempts; `None` before the first.
    pub srtt: Option<Duration>,
    /// Consecutive failed attempts held against the upstream: not a timeout while it
    /// answered other queries, nor a failure on tundns's side.
    pub failures: u32,
    /// False once `failures` reached [`DEAD_AFTER_FAILURES`], until a probe or an attempt
    /// succeeds.
    pub alive: bool,
}

impl Pool {
    pub fn new(upstreams: Vec<UpstreamEntry>, policy: PoolPolicy) -> Self {
        Pool {
            upstreams: upstreams
                .into_iter()
                .map(|entry| Upstream {
                    entry,
                    health: Health::default(),
                    stats: UpstreamStats::default(),
                })
                .collect(),
            policy,
            exchanges: HashMap::new(),
            attempts: HashMap::new(),
            transmits: VecDeque::new(),
            outcomes: VecDeque::new(),
            resets: VecDeque::new(),
            next_id: 0,
            stats: PoolStats::default(),
        }
    }

    pub fn policy(&self) -> &PoolPolicy {
        &self.policy
    }

    /// Starts forwarding a client query (raw bytes, as received) at `now`. The first
    /// alive upstream is asked first; dead upstreams due a probe get this query as one.
    pub fn start(
        &mut self,
        query: &[u8],
        protocol: Protocol,
        now: Instant,
    ) -> Result<ExchangeId, ResolveError> {
        let parsed = parse_query(query).map_err(|_| ResolveError::InvalidQuery)?;
        if self.upstreams.is_empty() {
            return Err(ResolveError::NoUpstreams);
        }
        self.stats.queries += 1;
        let id = ExchangeId(self.fresh_id());
        let query = Bytes::copy_from_slice(query);
        let order = self.plan(&query, parsed.question(), protocol, now);
        self.exchanges.insert(
            id,
            Exchange {
                query,
                question: parsed.question().clone(),
                client_id: parsed.id(),
                protocol,
                order,
                launched: 0,
                outstanding: 0,
                hedge_at: None,
                soft_answer: None,
            },
        );
        self.launch_next(id, now);
        Ok(id)
    }

    /// The next attempt to make, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next exchange that ended, with its answer or why there is none.
    pub fn poll_outcome(&mut self) -> Option<(ExchangeId, Result<Answer, ResolveError>)> {
        self.outcomes.pop_front()
    }

    /// The next upstream just marked dead: its persistent connection, if any, should be
    /// dropped so the probe that may revive it starts afresh.
    pub fn poll_reset(&mut self) -> Option<usize> {
        self.resets.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) has work next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.exchanges
            .values()
            .filter_map(|exchange| exchange.hedge_at)
            .min()
    }

    /// Asks the next upstream for every exchange whose current upstream has been silent
    /// past its hedge delay.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<ExchangeId> = self
            .exchanges
            .iter()
            .filter(|(_, exchange)| exchange.hedge_at.is_some_and(|at| at <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            self.stats.hedged += 1;
            self.launch_next(id, now);
        }
    }

    /// Gives up on an exchange: no outcome will be reported for it. Its attempts still
    /// running settle the upstreams' health when they end.
    pub fn abandon(&mut self, exchange: ExchangeId) {
        self.exchanges.remove(&exchange);
    }

    /// An attempt ended at `now`: with the upstream's answer (ID as on the wire), or
    /// failed.
    pub fn handle_attempt(
        &mut self,
        id: AttemptId,
        outcome: Result<Vec<u8>, AttemptFailure>,
        now: Instant,
    ) {
        let Some(attempt) = self.attempts.remove(&id) else {
            return;
        };
        let Purpose::Exchange(exchange_id) = attempt.purpose else {
            return self.settle_probe(&attempt, outcome.is_ok(), now);
        };
        let response = match (outcome, &attempt.truncated) {
            (Ok(response), _) => response,
            // The retry shares the attempt's time: running out of it fails the attempt.
            (Err(failure), Some(truncated)) if failure != AttemptFailure::Timeout => {
                tracing::debug!(
                    ?failure,
                    "TCP retry after TC failed, the truncated answer stands"
                );
                truncated.to_vec()
            }
            (Err(failure), _) => {
                self.record_failure(&attempt, failure, now);
                if let Some(exchange) = self.exchanges.get_mut(&exchange_id) {
                    exchange.outstanding -= 1;
                    self.move_on(exchange_id, now);
                }
                return;
            }
        };
        if attempt.protocol == Protocol::Udp
            && is_truncated(&response)
            && let Some(exchange) = self.exchanges.get(&exchange_id)
        {
            let asked = (exchange.query.clone(), exchange.question.clone());
            return self.retry_over_tcp(attempt, asked, response);
        }
        self.record_answer(&attempt, &response, now);
        let Some(exchange) = self.exchanges.get_mut(&exchange_id) else {
            return;
        };
        exchange.outstanding -= 1;
        let mut response = response;
        set_message_id(&mut response, exchange.client_id);
        let response = Bytes::from(response);
        let label = &self.upstreams[attempt.upstream].entry.label;
        if is_soft_error(&response) {
            self.stats.soft_errors += 1;
            tracing::debug!(upstream = %label, question = %exchange.question, "soft error answer, moving on");
            exchange.soft_answer = Some(response);
            return self.move_on(exchange_id, now);
        }
        self.stats.answered += 1;
        // Said as it happened: a datagram upstream's answer that came over TCP.
        let upstream = if attempt.truncated.is_some() {
            Arc::from(format!("{label} (over TCP: its UDP answer was truncated)"))
        } else {
            label.clone()
        };
        let answer = Answer { response, upstream };
        self.exchanges.remove(&exchange_id);
        self.outcomes.push_back((exchange_id, Ok(answer)));
    }

    /// Counters since the pool was created (`mismatched_ignored` is the transports' to
    /// fill in).
    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    /// Each upstream's RTT histogram and errors, in configured order.
    pub fn upstream_stats(&self) -> Vec<UpstreamStats> {
        self.upstreams
            .iter()
            .map(|upstream| upstream.stats)
            .collect()
    }

    pub fn health(&self) -> Vec<UpstreamHealth> {
        self.upstreams
            .iter()
            .map(|upstream| UpstreamHealth {
                label: upstream.entry.label.clone(),
                srtt: upstream.health.srtt(),
                failures: upstream.health.failures(),
                alive: upstream.health.alive(),
            })
            .collect()
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The upstreams to ask, in order: the alive ones, or all when none is (the query
    /// itself is then the probe). Otherwise dead upstreams due a probe get one.
    fn plan(
        &mut self,
        query: &Bytes,
        question: &Question,
        protocol: Protocol,
        now: Instant,
    ) -> Vec<usize> {
        let alive: Vec<usize> = (0..self.upstreams.len())
            .filter(|&index| self.upstreams[index].health.alive())
            .collect();
        if alive.is_empty() {
            return (0..self.upstreams.len()).collect();
        }
        for index in 0..self.upstreams.len() {
            if self.upstreams[index].health.claim_probe(now) {
                self.stats.probes += 1;
                let probe = self.attempt(Purpose::Probe, index, protocol, now);
                self.transmit(probe, query.clone(), question.clone());
            }
        }
        alive
    }

    /// The next upstream in the exchange's order, or its end when none is left and
    /// nothing is outstanding.
    fn move_on(&mut self, id: ExchangeId, now: Instant) {
        let Some(exchange) = self.exchanges.get(&id) else {
            return;
        };
        if exchange.launched < exchange.order.len() {
            return self.launch_next(id, now);
        }
        if exchange.outstanding > 0 {
            return;
        }
        let exchange = self.exchanges.remove(&id).expect("looked up above");
        self.stats.all_failed += 1;
        let failed = ResolveError::AllFailed {
            attempts: exchange.launched,
            soft_answer: exchange.soft_answer,
        };
        self.outcomes.push_back((id, Err(failed)));
    }

    fn launch_next(&mut self, id: ExchangeId, now: Instant) {
        let hedge = self.policy.hedge;
        let Some(exchange) = self.exchanges.get_mut(&id) else {
            return;
        };
        let Some(&index) = exchange.order.get(exchange.launched) else {
            exchange.hedge_at = None;
            return;
        };
        exchange.launched += 1;
        exchange.outstanding += 1;
        let more = exchange.launched < exchange.order.len();
        exchange.hedge_at =
            (hedge && more).then(|| now + self.upstreams[index].health.hedge_delay());
        let (protocol, query) = (exchange.protocol, exchange.query.clone());
        let question = exchange.question.clone();
        let attempt = self.attempt(Purpose::Exchange(id), index, protocol, now);
        self.transmit(attempt, query, question);
    }

    fn attempt(
        &self,
        purpose: Purpose,
        upstream: usize,
        protocol: Protocol,
        now: Instant,
    ) -> Attempt {
        let datagram = self.upstreams[upstream].entry.datagram;
        Attempt {
            purpose,
            upstream,
            protocol: if datagram { protocol } else { Protocol::Tcp },
            started: now,
            truncated: None,
        }
    }

    fn transmit(&mut self, attempt: Attempt, query: Bytes, question: Question) {
        let id = AttemptId(self.fresh_id());
        self.transmits.push_back(Transmit {
            attempt: id,
            upstream: attempt.upstream,
            protocol: attempt.protocol,
            query,
            question,
            deadline: attempt.started + self.policy.attempt_timeout,
        });
        self.attempts.insert(id, attempt);
    }

    /// A truncated UDP answer: the same upstream is asked over TCP, within the same
    /// attempt as far as health, the exchange and the attempt's deadline are concerned.
    fn retry_over_tcp(
        &mut self,
        attempt: Attempt,
        (query, question): (Bytes, Question),
        truncated: Vec<u8>,
    ) {
        self.stats.tcp_retries += 1;
        let retry = Attempt {
            protocol: Protocol::Tcp,
            truncated: Some(Bytes::from(truncated)),
            ..attempt
        };
        self.transmit(retry, query, question);
    }

    fn settle_probe(&mut self, attempt: &Attempt, answered: bool, now: Instant) {
        let upstream = &mut self.upstreams[attempt.upstream];
        if answered {
            upstream
                .health
                .record_success(now.saturating_duration_since(attempt.started), now);
            tracing::info!(upstream = %upstream.entry.label, "upstream is back");
        } else {
            upstream.health.probe_failed(now);
            self.resets.push_back(attempt.upstream);
        }
    }

    fn record_answer(&mut self, attempt: &Attempt, response: &[u8], now: Instant) {
        let upstream = &mut self.upstreams[attempt.upstream];
        let rtt = now.saturating_duration_since(attempt.started);
        upstream.health.record_success(rtt, now);
        upstream.stats.record_rtt(rtt);
        if is_soft_error(response) {
            upstream.stats.soft_errors += 1;
        }
    }

    fn record_failure(&mut self, attempt: &Attempt, failure: AttemptFailure, now: Instant) {
        let upstream = &mut self.upstreams[attempt.upstream];
        upstream.stats.record_failure(failure);
        self.stats.record_failure(failure);
        let upstreams_fault = match failure {
            AttemptFailure::Refused | AttemptFailure::Failed => true,
            // Silence is the upstream's fault only if it answered nothing else meanwhile.
            // If it did, this name is slow (its authority never answers, say), and a web
            // page asking a few such names must not send every other name elsewhere.
            AttemptFailure::Timeout => !upstream.health.answered_since(attempt.started),
            // A failed connect that several queries waited for counts once: for the query
            // that started it. A shortage on tundns's side does not count.
            AttemptFailure::SharedConnectFailed | AttemptFailure::LocalShortage => false,
        };
        if upstreams_fault && upstream.health.record_failure(now) {
            tracing::warn!(upstream = %upstream.entry.label, "upstream marked dead");
            self.resets.push_back(attempt.upstream);
        }
    }
}

/// SERVFAIL, REFUSED, NOTIMP and FORMERR say "not from me": another upstream may do
/// better. Other codes (YXDOMAIN for a DNAME that overflows, say) are answers.
pub fn is_soft_error(response: &[u8]) -> bool {
    let rcode = response.get(3).map_or(0, |flags| flags & 0x0f);
    [
        Rcode::SERVFAIL,
        Rcode::REFUSED,
        Rcode::NOTIMP,
        Rcode::FORMERR,
    ]
    .iter()
    .any(|soft| soft.to_int() == rcode)
}

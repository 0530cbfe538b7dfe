//! [`UpstreamPool`]: one upstream group's sockets, and the driver of its
//! [`Pool`](tundns_resolver::pool::Pool) state machine.
//!
//! The pool sits behind a mutex that is never held across an await. Each attempt it asks
//! for runs in a task, bounded by the attempt timeout, and reports its outcome back with
//! the time; one timer task per pool sleeps until the next hedge deadline. An attempt
//! whose query already ended runs on to its end, so its upstream's health still learns
//! how it went.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use tokio::sync::{Notify, oneshot};
use tundns_dns::Question;
use tundns_resolver::Protocol;
use tundns_resolver::pool::{
    Answer, AttemptFailure, AttemptId, ExchangeId, Pool, PoolPolicy, ResolveError, Transmit,
    UpstreamEntry, UpstreamStats,
};

use crate::transport::{self, AttemptError};
use crate::{
    Context, Link, PoolConfig, PoolError, PoolStats, Upstream, UpstreamHealth, doh, dot, h3,
    missing_tls, quic, tls, tunnel, udp_sockets,
};

/// What an exchange's waiter is told.
type Outcome = Result<Answer, ResolveError>;

/// Upstream resolvers with health, hedging and failover; see
/// [`Pool`](tundns_resolver::pool::Pool) for the policy.
///
/// `resolve` takes `&self`; cloning the pool is cheap and shares everything.
#[derive(Clone)]
pub struct UpstreamPool {
    inner: Arc<Inner>,
}

struct Inner {
    members: Vec<Member>,
    context: Context,
    state: Mutex<State>,
    /// Wakes the hedge timer: a deadline earlier than the one it sleeps until, or the pool
    /// gone. Shared with the timer, which holds the pool only weakly.
    timer_wake: Arc<Notify>,
    timer_started: AtomicBool,
}

struct State {
    pool: Pool,
    /// The queries waiting for their exchange's outcome.
    waiting: HashMap<ExchangeId, oneshot::Sender<Outcome>>,
    /// The deadline the hedge timer sleeps until.
    timer_at: Option<Instant>,
}

/// One upstream of the pool, and how it is reached.
struct Member {
    upstream: Upstream,
    link: Link,
}

impl UpstreamPool {
    /// Builds the pool; TLS settings are loaded here (system roots and `ca_file`), so a
    /// bad CA file fails at start-up, naming the file.
    pub fn new(upstreams: Vec<Upstream>, config: PoolConfig) -> Result<Self, PoolError> {
        let needs_tls = config.ca_file.is_some()
            || upstreams
                .iter()
                .any(|upstream| !matches!(upstream, Upstream::Udp(_) | Upstream::Tcp(_)));
        let tls = if needs_tls {
            Some(tls::ClientConfigs::new(config.ca_file.as_deref())?)
        } else {
            None
        };
        let mut built = Vec::with_capacity(upstreams.len());
        for upstream in upstreams {
            if let Some(bind) = config.bind_address
                && bind.is_ipv4() != upstream.address().is_ipv4()
            {
                return Err(PoolError::BindFamily { bind, upstream });
            }
            let link = match (&upstream, &config.tunnel) {
                (Upstream::Udp(_), Some(tunnel)) => Link::Tunnel {
                    tunnel: tunnel.clone(),
                    datagram: true,
                },
                (Upstream::Tcp(_), Some(tunnel)) => Link::Tunnel {
                    tunnel: tunnel.clone(),
                    datagram: false,
                },
                (
                    Upstream::Tls { .. }
                    | Upstream::Https { .. }
                    | Upstream::Quic { .. }
                    | Upstream::H3 { .. },
                    Some(_),
                ) => {
                    return Err(PoolError::EncryptedThroughTunnel(upstream));
                }
                (Upstream::Udp(address), None) => Link::Udp(udp_sockets::UdpSockets::new(*address)),
                (Upstream::Tcp(_), None) => Link::Tcp,
                (
                    Upstream::Tls {
                        server_name,
                        address,
                    },
                    None,
                ) => {
                    let tls = tls.as_ref().ok_or_else(missing_tls)?;
                    Link::Tls(dot::DotClient::new(*address, server_name, tls.dot.clone())?)
                }
                (
                    Upstream::Https {
                        server_name,
                        address,
                        path,
                    },
                    None,
                ) => {
                    let tls = tls.as_ref().ok_or_else(missing_tls)?;
                    Link::Https(doh::DohClient::new(
                        *address,
                        server_name,
                        path,
                        tls.doh.clone(),
                    )?)
                }
                (
                    Upstream::Quic {
                        server_name,
                        address,
                    },
                    None,
                ) => {
                    let tls = tls.as_ref().ok_or_else(missing_tls)?;
                    Link::Quic(quic::DoqClient::new(
                        *address,
                        server_name,
                        tls.doq.clone(),
                    )?)
                }
                (
                    Upstream::H3 {
                        server_name,
                        address,
                        path,
                    },
                    None,
                ) => {
                    let tls = tls.as_ref().ok_or_else(missing_tls)?;
                    Link::H3(h3::H3Client::new(
                        *address,
                        server_name,
                        path,
                        tls.h3.clone(),
                    )?)
                }
            };
            built.push(Member { upstream, link });
        }
        let entries = built
            .iter()
            .map(|member| UpstreamEntry {
                label: member.upstream.url().into(),
                datagram: matches!(
                    member.link,
                    Link::Udp(_) | Link::Tunnel { datagram: true, .. }
                ),
            })
            .collect();
        let policy = PoolPolicy {
            attempt_timeout: config.attempt_timeout,
            hedge: config.hedge,
        };
        Ok(UpstreamPool {
            inner: Arc::new(Inner {
                members: built,
                state: Mutex::new(State {
                    pool: Pool::new(entries, policy),
                    waiting: HashMap::new(),
                    timer_at: None,
                }),
                timer_wake: Arc::default(),
                timer_started: AtomicBool::new(false),
                context: Context {
                    config,
                    counters: Arc::default(),
                },
            }),
        })
    }

    pub fn upstreams(&self) -> impl ExactSizeIterator<Item = &Upstream> {
        self.inner.members.iter().map(|member| &member.upstream)
    }

    pub fn config(&self) -> &PoolConfig {
        &self.inner.context.config
    }

    /// Forwards a client query (raw bytes, as received) and returns an upstream's answer
    /// with the client's own ID restored.
    ///
    /// The first alive upstream is asked first. The next one is asked when an attempt
    /// fails (timeout, refusal, error), answers SERVFAIL or REFUSED, or, with hedging, has
    /// not answered within clamp(3 × its smoothed RTT, 20 ms, 500 ms). The first other
    /// answer wins. Each attempt is bounded by `attempt_timeout`.
    ///
    /// The response is returned whatever its size: fitting it to the client
    /// (`tundns_dns::write_truncated`) is the caller's job.
    pub async fn resolve(
        &self,
        query: &[u8],
        client_protocol: Protocol,
    ) -> Result<bytes::Bytes, ResolveError> {
        let answer = self.resolve_from(query, client_protocol).await?;
        Ok(answer.response)
    }

    /// [`resolve`](Self::resolve), saying which upstream answered.
    pub async fn resolve_from(
        &self,
        query: &[u8],
        client_protocol: Protocol,
    ) -> Result<Answer, ResolveError> {
        if self.inner.context.config.hedge {
            self.inner.start_hedge_timer();
        }
        let (exchange, outcome) = {
            let mut state = self.inner.lock();
            let exchange = state.pool.start(query, client_protocol, Instant::now())?;
            let (sender, receiver) = oneshot::channel();
            state.waiting.insert(exchange, sender);
            self.inner.pump(&mut state);
            (exchange, receiver)
        };
        let _abandon = Abandon {
            inner: &self.inner,
            exchange,
        };
        outcome.await.unwrap_or(Err(ResolveError::AllFailed {
            attempts: 0,
            soft_answer: None,
        }))
    }

    pub fn stats(&self) -> PoolStats {
        let mut stats = self.inner.lock().pool.stats();
        let counters = &self.inner.context.counters;
        stats.mismatched_ignored = counters.mismatched_ignored.load(Ordering::Relaxed);
        stats.zero_rtt_accepted = counters.zero_rtt_accepted.load(Ordering::Relaxed);
        stats.zero_rtt_rejected = counters.zero_rtt_rejected.load(Ordering::Relaxed);
        stats
    }

    /// Each upstream's RTT histogram and errors, in configured order.
    pub fn upstream_stats(&self) -> Vec<(Upstream, UpstreamStats)> {
        let stats = self.inner.lock().pool.upstream_stats();
        self.upstreams().cloned().zip(stats).collect()
    }

    pub fn health(&self) -> Vec<UpstreamHealth> {
        let health = self.inner.lock().pool.health();
        self.upstreams()
            .zip(health)
            .map(|(upstream, health)| UpstreamHealth {
                upstream: upstream.clone(),
                srtt: health.srtt,
                failures: health.failures,
                alive: health.alive,
            })
            .collect()
    }
}

/// Sleeps until the pool's next hedge deadline and asks the next upstreams then: one
/// wake-up per deadline for the whole pool, re-armed when an earlier deadline appears. Ends
/// when the pool is dropped.
async fn hedge_timer(pool: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(inner) = pool.upgrade() else { return };
            let mut state = inner.lock();
            state.timer_at = state.pool.poll_timeout();
            state.timer_at
        };
        let deadline = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = deadline => {
                let Some(inner) = pool.upgrade() else { return };
                let mut state = inner.lock();
                state.pool.handle_timeout(Instant::now());
                inner.pump(&mut state);
            }
            () = wake.notified() => {}
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The timer sees the pool gone and ends.
        self.timer_wake.notify_one();
    }
}

/// Tells the pool a query gave up waiting (its future was dropped), so it stops hedging.
struct Abandon<'a> {
    inner: &'a Arc<Inner>,
    exchange: ExchangeId,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        if state.waiting.remove(&self.exchange).is_some() {
            state.pool.abandon(self.exchange);
        }
    }
}

/// Reports an attempt as failed if its task ends without reporting (a panic, or the
/// runtime shutting down), so its exchange is never left waiting for it.
struct Unsettled<'a> {
    inner: &'a Arc<Inner>,
    attempt: Option<AttemptId>,
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if let Some(attempt) = self.attempt.take() {
            self.inner.settle(attempt, Err(AttemptFailure::Failed));
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The pool stays consistent even if a holder panicked.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Does what the pool asks for: attempts, connection resets, outcomes.
    fn pump(self: &Arc<Self>, state: &mut State) {
        while let Some(transmit) = state.pool.poll_transmit() {
            tokio::spawn(self.clone().attempt(transmit));
        }
        while let Some(index) = state.pool.poll_reset() {
            self.members[index].link.drop_connection();
        }
        while let Some((exchange, outcome)) = state.pool.poll_outcome() {
            if let Some(waiting) = state.waiting.remove(&exchange) {
                let _ = waiting.send(outcome);
            }
        }
        if let Some(next) = state.pool.poll_timeout()
            && state.timer_at.is_none_or(|armed| next < armed)
        {
            self.timer_wake.notify_one();
        }
    }

    /// Starts the pool's hedge timer, once, on the runtime of the first query.
    fn start_hedge_timer(self: &Arc<Self>) {
        if !self.timer_started.swap(true, Ordering::Relaxed) {
            let wake = self.timer_wake.clone();
            tokio::spawn(hedge_timer(Arc::downgrade(self), wake));
        }
    }

    /// One attempt, bounded by the attempt timeout; its outcome goes back to the pool.
    async fn attempt(self: Arc<Self>, transmit: Transmit) {
        let mut unsettled = Unsettled {
            inner: &self,
            attempt: Some(transmit.attempt),
        };
        let outcome = self.exchange(&transmit).await;
        unsettled.attempt = None;
        self.settle(transmit.attempt, outcome);
    }

    fn settle(self: &Arc<Self>, attempt: AttemptId, outcome: Result<Vec<u8>, AttemptFailure>) {
        let mut state = self.lock();
        state.pool.handle_attempt(attempt, outcome, Instant::now());
        self.pump(&mut state);
    }

    async fn exchange(&self, transmit: &Transmit) -> Result<Vec<u8>, AttemptFailure> {
        let question = &transmit.question;
        let member = &self.members[transmit.upstream];
        let exchange = member.link.exchange(
            &transmit.query,
            question,
            transmit.protocol,
            member.upstream.address(),
            &self.context,
        );
        let outcome = tokio::time::timeout_at(transmit.deadline.into(), exchange)
            .await
            .unwrap_or(Err(AttemptError::Timeout));
        outcome.map(shrink).map_err(|error| {
            tracing::debug!(
                upstream = %member.upstream.url(),
                protocol = ?transmit.protocol,
                %question,
                %error,
                "upstream attempt failed"
            );
            error.failure()
        })
    }
}

impl Link {
    /// One attempt, unbounded in time (the caller bounds it). Returns the matching
    /// answer with the ID it had on the wire.
    async fn exchange(
        &self,
        query: &[u8],
        question: &Question,
        protocol: Protocol,
        address: std::net::SocketAddr,
        context: &Context,
    ) -> Result<Vec<u8>, AttemptError> {
        match (self, protocol) {
            (Link::Udp(sockets), Protocol::Udp) => sockets.exchange(query, question, context).await,
            (Link::Udp(_) | Link::Tcp, _) => {
                transport::tcp(address, query, question, context).await
            }
            (Link::Tls(client), _) => client.exchange(query, question, context).await,
            (Link::Https(client), _) => client.exchange(query, question, context).await,
            (Link::Quic(client), _) => client.exchange(query, question, context).await,
            (Link::H3(client), _) => client.exchange(query, question, context).await,
            (
                Link::Tunnel {
                    tunnel,
                    datagram: true,
                },
                Protocol::Udp,
            ) => tunnel::udp(tunnel, address, query, question, context).await,
            (Link::Tunnel { tunnel, .. }, _) => {
                tunnel::tcp(tunnel, address, query, question, context).await
            }
        }
    }

    /// Forgets a persistent connection, so the next attempt (a probe) starts afresh.
    fn drop_connection(&self) {
        match self {
            Link::Tls(client) => client.drop_connection(),
            Link::Https(client) => client.drop_connection(),
            Link::Quic(client) => client.drop_connection(),
            Link::H3(client) => client.drop_connection(),
            Link::Udp(sockets) => sockets.retire_all(),
            Link::Tcp | Link::Tunnel { .. } => {}
        }
    }
}

impl AttemptError {
    /// What the pool's health makes of the error.
    fn failure(&self) -> AttemptFailure {
        match self {
            AttemptError::Timeout => AttemptFailure::Timeout,
            AttemptError::Refused => AttemptFailure::Refused,
            AttemptError::ConnectFailed => AttemptFailure::SharedConnectFailed,
            // A client's query DoQ cannot carry says nothing of the upstream either.
            AttemptError::LocalShortage(_) | AttemptError::KeepaliveNotRemoved(_) => {
                AttemptFailure::LocalShortage
            }
            _ => AttemptFailure::Failed,
        }
    }
}

/// Receive buffers are sized for the largest message; the answer kept (and perhaps
/// cached by the caller) should not be.
fn shrink(mut response: Vec<u8>) -> Vec<u8> {
    if response.capacity() > response.len() + response.len() / 2 {
        response.shrink_to_fit();
    }
    response
}

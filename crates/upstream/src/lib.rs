//! Forwarding DNS queries to upstream resolvers: the only DNS code in tundns
//! that touches sockets.
//!
//! Owns the [`UpstreamPool`]: a list of resolvers reached over UDP (with a TCP
//! retry when the answer is truncated), TCP (RFC 7766), DNS over TLS (RFC 7858:
//! one persistent, pipelined connection per upstream) or DNS over HTTPS
//! (RFC 8484: one HTTP/2 connection with concurrent streams), and the policy
//! over them: smoothed RTT and failure counts per upstream, dead upstreams
//! skipped until a background probe shows them back, hedging to the next
//! upstream when the current one is slow, and SERVFAIL/REFUSED treated as soft
//! errors that move on.
//!
//! Every answer must match before it is accepted: for UDP a random ID per
//! attempt on a connected socket with a random port (sockets are shared by the
//! queries in flight and retired after a few seconds, see `udp_sockets`), the
//! upstream's address and the question; for TCP a fresh random ID on a fresh
//! connection and the question; for DoT a random ID unique on the
//! connection and the question; for DoH (ID 0 on the wire, RFC 8484 §4.1) the
//! HTTP stream and the question. Anything else is ignored and counted. TLS
//! certificates are always verified, against the system roots plus an optional
//! CA file; there is no way to turn verification off. Sockets carry the
//! configured `SO_MARK` and source address, so policy routing decides whether
//! DNS goes around the tunnel or through it.
//!
//! It must never decide what a message means beyond that match (validation,
//! truncation for the client and error answers live in `tundns-dns`), never
//! send to anything but the configured upstreams, and never re-encode a
//! message: the client's bytes go out with only the ID rewritten, and the
//! answer comes back with only the ID restored.

mod doh;
mod dot;
mod health;
mod shared_connection;
mod tls;
mod transport;
mod udp_sockets;
mod upstream_stats;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tundns_dns::{Question, Rcode, parse_query, set_message_id};

use health::Health;
use transport::AttemptError;
pub use udp_sockets::{QUERIES_PER_SOCKET, SOCKET_LIFETIME, SOCKETS_PER_UPSTREAM};
use upstream_stats::UpstreamCounters;
pub use upstream_stats::{RTT_BUCKET_BOUNDS_MICROS, UpstreamStats};

/// How the client's query reached the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// A UDP upstream is asked over UDP (and over TCP if the answer is truncated).
    Udp,
    /// A UDP upstream is asked over TCP straight away: the client came over TCP
    /// because it expects a large answer.
    Tcp,
}

/// How the pool reaches one upstream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP; an answer with TC=1 is asked again over TCP from the same upstream.
    Udp,
    /// RFC 7766: a fresh connection per attempt.
    Tcp,
    /// DNS over TLS (RFC 7858). `server_name` is the SNI and the name the
    /// certificate must carry (an IP address is allowed).
    Tls { server_name: String },
    /// DNS over HTTPS (RFC 8484), HTTP/2 POST. `path` starts with `/`.
    Https { server_name: String, path: String },
}

/// One upstream resolver.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamSpec {
    pub transport: Transport,
    /// Where to connect. For DoH this is the bootstrap address, so reaching the
    /// upstream needs no plain DNS (port 443 by convention).
    pub address: SocketAddr,
}

/// The URL forms of the configuration (`udp://`, `tcp://`, `tls://name@ip:port`,
/// `https://name@ip:port/path`).
impl fmt::Display for UpstreamSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.transport {
            Transport::Udp => write!(f, "udp://{}", self.address),
            Transport::Tcp => write!(f, "tcp://{}", self.address),
            Transport::Tls { server_name } => write!(f, "tls://{server_name}@{}", self.address),
            Transport::Https { server_name, path } => {
                write!(f, "https://{server_name}@{}{path}", self.address)
            }
        }
    }
}

/// Settings shared by every upstream of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// How long one attempt at one upstream (connect, handshake, send, answer,
    /// and a TCP retry after a truncated UDP answer) may take.
    pub attempt_timeout: Duration,
    /// `SO_MARK` for every upstream socket, so policy routing can keep DNS out
    /// of the tunnel (setting it needs `CAP_NET_ADMIN`).
    pub fwmark: Option<u32>,
    /// Source address of every upstream socket. Groups "through the tunnel" set
    /// it to the interface address (and no fwmark). Its family must match every
    /// upstream's.
    pub bind_address: Option<IpAddr>,
    /// Extra PEM trust anchors for DoT and DoH, added to the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Send to the next upstream too when the current one has not answered
    /// within a delay derived from its RTT (the first valid answer wins).
    pub hedge: bool,
    /// An idle DoT or DoH connection (nothing in flight) is closed after this long.
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            attempt_timeout: Duration::from_secs(2),
            fwmark: None,
            bind_address: None,
            ca_file: None,
            hedge: true,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Why [`UpstreamPool::new`] refused its configuration.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("CA file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("invalid DoH path {0:?}: it must start with '/'")]
    DohPath(String),
    #[error("bind address {bind} and upstream {upstream} are of different address families")]
    BindFamily {
        bind: IpAddr,
        upstream: UpstreamSpec,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// Why [`UpstreamPool::resolve`] produced no usable answer. The caller serves
/// stale data if it has some, and otherwise answers SERVFAIL (or FORMERR for
/// [`ResolveError::InvalidQuery`]).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// The bytes do not pass `tundns_dns::parse_query`: nothing was sent.
    #[error("not a forwardable DNS query")]
    InvalidQuery,
    /// The pool has no upstream.
    #[error("no upstream resolver configured")]
    NoUpstreams,
    /// Every attempt timed out, failed, or answered SERVFAIL or REFUSED.
    /// `soft_answer` is the last such SERVFAIL/REFUSED answer (client's ID
    /// restored), which the caller may forward when it has nothing stale.
    #[error("all {attempts} upstream attempts failed")]
    AllFailed {
        attempts: usize,
        soft_answer: Option<Bytes>,
    },
}

/// Counters since the pool was created (read with relaxed ordering: each is
/// exact, but a snapshot is not atomic across them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Calls to `resolve` with a valid query.
    pub queries: u64,
    /// Queries answered by some upstream (not counting soft errors).
    pub answered: u64,
    /// Queries for which every attempt failed or was a soft error.
    pub all_failed: u64,
    /// Messages received that did not match source, ID or question: forged,
    /// late or garbage. Ignored.
    pub mismatched_ignored: u64,
    /// Attempts that ran out of time.
    pub timeouts: u64,
    /// Attempts refused: ICMP port unreachable (UDP) or RST (TCP).
    pub refusals: u64,
    /// Attempts that failed otherwise: socket, TLS or HTTP errors, connection
    /// closed, framing errors, too many mismatched messages.
    pub failures: u64,
    /// SERVFAIL or REFUSED answers, which moved on to the next upstream.
    pub soft_errors: u64,
    /// Attempts started because the previous upstream was slow (hedging).
    pub hedged: u64,
    /// Truncated UDP answers asked again over TCP.
    pub tcp_retries: u64,
    /// Background probes of dead upstreams.
    pub probes: u64,
}

/// An upstream's answer, as [`UpstreamPool::resolve_from`] gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The response, with the client's ID.
    pub response: Bytes,
    /// The upstream that gave it, as its spec displays (`udp://192.0.2.53:53`).
    pub upstream: Arc<str>,
}

/// The health of one upstream, as [`UpstreamPool::health`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamHealth {
    pub spec: UpstreamSpec,
    /// Smoothed RTT of successful attempts; `None` before the first.
    pub srtt: Option<Duration>,
    /// Consecutive failed attempts.
    pub failures: u32,
    /// False once `failures` reached [`DEAD_AFTER_FAILURES`], until a probe
    /// or an attempt succeeds.
    pub alive: bool,
}

/// Consecutive failures that mark an upstream dead.
pub const DEAD_AFTER_FAILURES: u32 = 3;

#[derive(Default)]
struct Counters {
    queries: AtomicU64,
    answered: AtomicU64,
    all_failed: AtomicU64,
    mismatched_ignored: AtomicU64,
    timeouts: AtomicU64,
    refusals: AtomicU64,
    failures: AtomicU64,
    soft_errors: AtomicU64,
    hedged: AtomicU64,
    tcp_retries: AtomicU64,
    probes: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What every attempt needs besides the query.
struct Context {
    config: PoolConfig,
    counters: Arc<Counters>,
}

enum Link {
    Udp(udp_sockets::UdpSockets),
    Tcp,
    Tls(dot::DotClient),
    Https(doh::DohClient),
}

struct Upstream {
    spec: UpstreamSpec,
    /// `spec` as text, shared by every [`Answer`] it gives.
    label: Arc<str>,
    link: Link,
    health: Health,
    counters: UpstreamCounters,
}

impl Upstream {
    /// One attempt, unbounded in time (the caller bounds it). Returns the
    /// matching answer with the ID it had on the wire.
    async fn exchange(
        &self,
        query: &[u8],
        question: &Question,
        client_protocol: Protocol,
        context: &Context,
    ) -> Result<Vec<u8>, AttemptError> {
        let address = self.spec.address;
        match &self.link {
            Link::Udp(sockets) => match client_protocol {
                Protocol::Udp => {
                    transport::udp_then_tcp(sockets, address, query, question, context).await
                }
                Protocol::Tcp => transport::tcp(address, query, question, context).await,
            },
            Link::Tcp => transport::tcp(address, query, question, context).await,
            Link::Tls(client) => client.exchange(query, question, context).await,
            Link::Https(client) => client.exchange(query, question, context).await,
        }
    }

    /// Forgets a persistent connection, so the next attempt (a probe) starts afresh.
    fn drop_connection(&self) {
        match &self.link {
            Link::Tls(client) => client.drop_connection(),
            Link::Https(client) => client.drop_connection(),
            Link::Udp(sockets) => sockets.retire_all(),
            Link::Tcp => {}
        }
    }
}

struct Inner {
    upstreams: Vec<Upstream>,
    context: Context,
}

/// What every attempt of one query sends.
struct Outgoing {
    query: Vec<u8>,
    question: Question,
    client_protocol: Protocol,
}

/// How one attempt ended: the upstream's index and its answer or error.
type Settled = (usize, Result<Vec<u8>, AttemptError>);

impl Inner {
    /// One attempt at upstream `index`, bounded by the attempt timeout. Its
    /// outcome is recorded in the upstream's health and counters before it is
    /// returned, so it counts even when nobody waits for it any more.
    async fn attempt(self: Arc<Self>, index: usize, outgoing: Arc<Outgoing>) -> Settled {
        let upstream = &self.upstreams[index];
        let counters = &self.context.counters;
        let started = Instant::now();
        let exchange = upstream.exchange(
            &outgoing.query,
            &outgoing.question,
            outgoing.client_protocol,
            &self.context,
        );
        let outcome = tokio::time::timeout(self.context.config.attempt_timeout, exchange)
            .await
            .unwrap_or(Err(AttemptError::Timeout));
        match &outcome {
            Ok(response) => {
                let rtt = started.elapsed();
                upstream.health.record_success(rtt);
                upstream.counters.record_rtt(rtt);
                if is_soft_error(response) {
                    upstream.counters.record_soft_error();
                }
            }
            Err(error) => {
                upstream.counters.record_error(error);
                bump(match error {
                    AttemptError::Timeout => &counters.timeouts,
                    AttemptError::Refused => &counters.refusals,
                    _ => &counters.failures,
                });
                // A failed connect that several queries waited for counts
                // once: for the query that started it.
                let counted = !matches!(error, AttemptError::ConnectFailed);
                if counted && upstream.health.record_failure() {
                    upstream.drop_connection();
                    tracing::warn!(upstream = %upstream.spec, "upstream marked dead");
                }
                tracing::debug!(
                    upstream = %upstream.spec,
                    client_protocol = ?outgoing.client_protocol,
                    question = %outgoing.question,
                    %error,
                    "upstream attempt failed"
                );
            }
        }
        (index, outcome)
    }
}

/// The attempts of one query. When the query ends with some still running
/// (another one won the race, or the caller gave up), they are handed to one
/// background task and run on until they end (each is bounded by the attempt
/// timeout), so a black-holed upstream that keeps losing to hedging is still
/// seen to fail, and a slow one still gets its RTT measured.
struct InFlight<F: Future<Output = Settled> + Send + 'static>(FuturesUnordered<F>);

impl<F: Future<Output = Settled> + Send + 'static> Drop for InFlight<F> {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let mut running = std::mem::take(&mut self.0);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { while running.next().await.is_some() {} });
        }
    }
}

/// Upstream resolvers with health, hedging and failover.
///
/// Order: the configured order among the alive upstreams. RTT is used to
/// decide *when* to hedge, not to reorder: the first upstream is the one the
/// administrator chose as primary (often the nearest or the one with the right
/// view of private names), and hedging already hides a slow primary. When
/// every upstream is dead, all are tried in order, so the pool recovers as soon
/// as the network does.
///
/// `resolve` takes `&self`; cloning the pool is cheap and shares everything.
#[derive(Clone)]
pub struct UpstreamPool {
    inner: Arc<Inner>,
}

impl UpstreamPool {
    /// Builds the pool; TLS settings are loaded here (system roots and
    /// `ca_file`), so a bad CA file fails at start-up, naming the file.
    pub fn new(upstreams: Vec<UpstreamSpec>, config: PoolConfig) -> Result<Self, PoolError> {
        let needs_tls = config.ca_file.is_some()
            || upstreams.iter().any(|spec| {
                matches!(
                    spec.transport,
                    Transport::Tls { .. } | Transport::Https { .. }
                )
            });
        let tls = if needs_tls {
            Some(tls::ClientConfigs::new(config.ca_file.as_deref())?)
        } else {
            None
        };
        let mut built = Vec::with_capacity(upstreams.len());
        for spec in upstreams {
            if let Some(bind) = config.bind_address
                && bind.is_ipv4() != spec.address.is_ipv4()
            {
                return Err(PoolError::BindFamily {
                    bind,
                    upstream: spec,
                });
            }
            let link = match &spec.transport {
                Transport::Udp => Link::Udp(udp_sockets::UdpSockets::new(spec.address)),
                Transport::Tcp => Link::Tcp,
                Transport::Tls { server_name } => {
                    let tls = tls.as_ref().ok_or_else(missing_tls)?;
                    Link::Tls(dot::DotClient::new(
                        spec.address,
                        server_name,
                        tls.dot.clone(),
                    )?)
                }
                Transport::Https { server_name, path } => {
                    let tls = tls.as_ref().ok_or_else(missing_tls)?;
                    Link::Https(doh::DohClient::new(
                        spec.address,
                        server_name,
                        path,
                        tls.doh.clone(),
                    )?)
                }
            };
            built.push(Upstream {
                label: spec.to_string().into(),
                spec,
                link,
                health: Health::default(),
                counters: UpstreamCounters::default(),
            });
        }
        Ok(UpstreamPool {
            inner: Arc::new(Inner {
                upstreams: built,
                context: Context {
                    config,
                    counters: Arc::default(),
                },
            }),
        })
    }

    pub fn upstreams(&self) -> impl ExactSizeIterator<Item = &UpstreamSpec> {
        self.inner.upstreams.iter().map(|upstream| &upstream.spec)
    }

    pub fn config(&self) -> &PoolConfig {
        &self.inner.context.config
    }

    /// Forwards a client query (raw bytes, as received) and returns an
    /// upstream's answer with the client's own ID restored.
    ///
    /// The first alive upstream is asked first. The next one is asked when an
    /// attempt fails (timeout, refusal, error), answers SERVFAIL or REFUSED,
    /// or, with hedging, has not answered within clamp(3 × its smoothed RTT,
    /// 20 ms, 500 ms). The first other answer wins. Each attempt is bounded by
    /// `attempt_timeout`, and the attempts still running when the query ends
    /// run on in the background until they end, so a losing upstream still
    /// gets its failure or its RTT recorded.
    ///
    /// The response is returned whatever its size: fitting it to the client
    /// (`tundns_dns::write_truncated`) is the caller's job.
    pub async fn resolve(
        &self,
        query: &[u8],
        client_protocol: Protocol,
    ) -> Result<Bytes, ResolveError> {
        let answer = self.resolve_from(query, client_protocol).await?;
        Ok(answer.response)
    }

    /// [`resolve`](Self::resolve), saying which upstream answered.
    pub async fn resolve_from(
        &self,
        query: &[u8],
        client_protocol: Protocol,
    ) -> Result<Answer, ResolveError> {
        let parsed = parse_query(query).map_err(|_| ResolveError::InvalidQuery)?;
        let inner = &*self.inner;
        if inner.upstreams.is_empty() {
            return Err(ResolveError::NoUpstreams);
        }
        let counters = &inner.context.counters;
        bump(&counters.queries);
        let client_id = parsed.id();
        let question = parsed.question();
        let order = self.plan(query, question, client_protocol);
        let config = &inner.context.config;
        let outgoing = Arc::new(Outgoing {
            query: query.to_vec(),
            question: question.clone(),
            client_protocol,
        });

        let launch = |index: usize| self.inner.clone().attempt(index, outgoing.clone());
        let mut attempts = InFlight(FuturesUnordered::new());
        attempts.0.push(launch(order[0]));
        let mut launched = 1;
        let mut hedge_at = Instant::now() + inner.upstreams[order[0]].health.hedge_delay();
        let mut soft_answer = None;

        loop {
            let may_hedge = config.hedge && launched < order.len();
            tokio::select! {
                Some((index, outcome)) = attempts.0.next() => {
                    // Failures are already recorded by the attempt itself.
                    if let Ok(mut response) = outcome {
                        set_message_id(&mut response, client_id);
                        let response = Bytes::from(shrink(response));
                        if !is_soft_error(&response) {
                            bump(&counters.answered);
                            let upstream = inner.upstreams[index].label.clone();
                            return Ok(Answer { response, upstream });
                        }
                        bump(&counters.soft_errors);
                        tracing::debug!(upstream = %inner.upstreams[index].spec, %question, "soft error answer, moving on");
                        soft_answer = Some(response);
                    }
                    if launched < order.len() {
                        attempts.0.push(launch(order[launched]));
                        hedge_at = Instant::now() + inner.upstreams[order[launched]].health.hedge_delay();
                        launched += 1;
                    } else if attempts.0.is_empty() {
                        break;
                    }
                }
                () = tokio::time::sleep_until(hedge_at.into()), if may_hedge => {
                    bump(&counters.hedged);
                    attempts.0.push(launch(order[launched]));
                    hedge_at = Instant::now() + inner.upstreams[order[launched]].health.hedge_delay();
                    launched += 1;
                }
                else => break,
            }
        }
        bump(&counters.all_failed);
        Err(ResolveError::AllFailed {
            attempts: launched,
            soft_answer,
        })
    }

    /// The upstreams to ask, in order: the alive ones, or all when none is (the
    /// query itself is then the probe). Otherwise dead upstreams whose back-off
    /// has passed get a background probe with this query.
    fn plan(&self, query: &[u8], question: &Question, client_protocol: Protocol) -> Vec<usize> {
        let upstreams = &self.inner.upstreams;
        let alive: Vec<usize> = (0..upstreams.len())
            .filter(|&index| upstreams[index].health.alive())
            .collect();
        if alive.is_empty() {
            return (0..upstreams.len()).collect();
        }
        let now = Instant::now();
        for (index, upstream) in upstreams.iter().enumerate() {
            if !upstream.health.alive() && upstream.health.claim_probe(now) {
                self.spawn_probe(index, query, question.clone(), client_protocol);
            }
        }
        alive
    }

    fn spawn_probe(
        &self,
        index: usize,
        query: &[u8],
        question: Question,
        client_protocol: Protocol,
    ) {
        let inner = self.inner.clone();
        let query = query.to_vec();
        bump(&inner.context.counters.probes);
        tokio::spawn(async move {
            let upstream = &inner.upstreams[index];
            let started = Instant::now();
            let attempt = upstream.exchange(&query, &question, client_protocol, &inner.context);
            match tokio::time::timeout(inner.context.config.attempt_timeout, attempt).await {
                Ok(Ok(_)) => {
                    upstream.health.record_success(started.elapsed());
                    tracing::info!(upstream = %upstream.spec, "upstream is back");
                }
                _ => {
                    upstream.health.probe_failed(Instant::now());
                    upstream.drop_connection();
                }
            }
        });
    }

    pub fn stats(&self) -> PoolStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters = &self.inner.context.counters;
        PoolStats {
            queries: read(&counters.queries),
            answered: read(&counters.answered),
            all_failed: read(&counters.all_failed),
            mismatched_ignored: read(&counters.mismatched_ignored),
            timeouts: read(&counters.timeouts),
            refusals: read(&counters.refusals),
            failures: read(&counters.failures),
            soft_errors: read(&counters.soft_errors),
            hedged: read(&counters.hedged),
            tcp_retries: read(&counters.tcp_retries),
            probes: read(&counters.probes),
        }
    }

    /// Each upstream's RTT histogram and errors, in configured order.
    pub fn upstream_stats(&self) -> Vec<(UpstreamSpec, UpstreamStats)> {
        self.inner
            .upstreams
            .iter()
            .map(|upstream| (upstream.spec.clone(), upstream.counters.snapshot()))
            .collect()
    }

    pub fn health(&self) -> Vec<UpstreamHealth> {
        self.inner
            .upstreams
            .iter()
            .map(|upstream| UpstreamHealth {
                spec: upstream.spec.clone(),
                srtt: upstream.health.srtt(),
                failures: upstream.health.failures(),
                alive: upstream.health.alive(),
            })
            .collect()
    }
}

fn missing_tls() -> PoolError {
    PoolError::Tls("TLS settings missing for a TLS upstream".into())
}

/// SERVFAIL and REFUSED say "not from me": another upstream may do better.
fn is_soft_error(response: &[u8]) -> bool {
    let rcode = response.get(3).map_or(0, |flags| flags & 0x0f);
    rcode == Rcode::SERVFAIL.to_int() || rcode == Rcode::REFUSED.to_int()
}

/// Receive buffers are sized for the largest message; the answer kept (and
/// perhaps cached by the caller) should not be.
fn shrink(mut response: Vec<u8>) -> Vec<u8> {
    if response.capacity() > response.len() + response.len() / 2 {
        response.shrink_to_fit();
    }
    response
}

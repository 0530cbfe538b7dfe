//! The DNS proxy as a virtual service: the resolver pipeline, its UDP front end on the TUN
//! reader, and the forwarding tasks. (The TCP front end is in `tcp_dns`.)
//!
//! Everything that can be answered from memory is answered inline, on the TUN reader, into a
//! reused buffer: malformed queries, overload, the blocklist, local data and cache hits. Only
//! a cache miss leaves the reader, for a task bounded by a semaphore (a flood turns into
//! REFUSED answers, never into unbounded memory). Identical queries in flight share one
//! upstream query. A local CNAME chain that leads out of local data is answered with the
//! chain followed by its last target's answer: inline when the blocklist or the cache knows
//! the target, else from a task that asks the upstreams for the target.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

use arc_swap::{ArcSwap, Guard};
use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tundns_dns::cache::Cache;
use tundns_dns::{
    BlockList, CnameChain, LocalAnswer, LocalData, Query, QueryError, Question, Rcode, Routes,
};
use tundns_filter::{Datagram, TunWriter, UdpService};
use tundns_upstream::{Protocol, ResolveError, UpstreamPool};

use crate::metrics::{AnswerPath, QueryCounters};
use crate::query_log::{Arrival, QueryLog};

/// The largest DNS message (the TCP length prefix is 16 bits).
pub const MAX_MESSAGE: usize = 65535;

/// The EDNS UDP size passed to upstreams when the client asks for more: large enough for
/// most answers, small enough to avoid IP fragmentation (DNS Flag Day 2020).
const UPSTREAM_EDNS_SIZE: u16 = 1232;

/// Room for a cache hit found after an inline miss; a larger entry is simply asked again.
const LATE_HIT_BUFFER: usize = 4096;

/// Counters of the proxy, by how each query was answered. Relaxed atomics: statistics only.
#[derive(Debug, Default)]
pub struct DnsStats {
    /// Every query by transport, type and how it was answered (blocked, local, cache,
    /// forwarded, stale, servfail, refused, formerr, dropped).
    pub queries: QueryCounters,
    /// Joined an identical query already in flight instead of asking again.
    pub collapsed: AtomicU64,
    /// Open DNS-over-TCP client connections, as the TCP front end last counted them.
    pub tcp_connections: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What the resolver is made of; built from the config by `dns_config`.
pub struct ResolverParts {
    /// Names answered NXDOMAIN or with a null address.
    pub blocklist: BlockList,
    /// Local records and zones, answered with authority.
    pub local: LocalData,
    /// The answer cache, unless turned off.
    pub cache: Option<Cache>,
    /// Which upstream group answers which names.
    pub routes: Routes<usize>,
    /// The upstream groups, indexed by `routes`.
    pub groups: Vec<UpstreamPool>,
    /// Upstream queries in flight at once, at most.
    pub max_in_flight: usize,
}

/// Identical questions share one upstream query: same name (any case), type, class, and
/// the DO and CD bits, which change the answer.
#[derive(Clone, PartialEq, Eq, Hash)]
struct CollapseKey {
    question: Question,
    dnssec_ok: bool,
    checking_disabled: bool,
    /// A UDP-started query may come back truncated; a TCP client must not share it.
    over_tcp: bool,
}

impl CollapseKey {
    fn of(query: &Query<'_>, protocol: Protocol) -> Self {
        Self {
            question: query.question().clone(),
            dnssec_ok: query.edns().is_some_and(|edns| edns.dnssec_ok),
            checking_disabled: query.checking_disabled(),
            over_tcp: protocol == Protocol::Tcp,
        }
    }
}

/// What the upstreams said to one query.
#[derive(Clone)]
enum UpstreamAnswer {
    /// An answer to pass on, and the upstream that gave it.
    Answer(Bytes, Arc<str>),
    /// The blocked answer, in place of one whose CNAME led to a blocked name, and the
    /// upstream that gave that one.
    Cloaked(Bytes, Arc<str>),
    /// Every upstream failed; the last one's own SERVFAIL or REFUSED, if any, is kept to
    /// pass on when nothing stale can be served instead.
    Failed(Option<Bytes>),
}

/// An upstream answer several clients wait for.
type SharedAnswer = Shared<BoxFuture<'static, UpstreamAnswer>>;

/// Removes a finished query from the in-flight table however its task ends, so a panic
/// or a cancellation never leaves later identical queries waiting on a dead entry.
struct InFlightEntry<'a> {
    table: &'a Mutex<HashMap<CollapseKey, SharedAnswer>>,
    key: CollapseKey,
}

impl Drop for InFlightEntry<'_> {
    fn drop(&mut self) {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

/// The upstream groups and which names each answers.
pub struct Upstreams {
    pub routes: Routes<usize>,
    /// Indexed by `routes`; 0 is the `[DNSProxy] Upstream` group.
    pub groups: Vec<UpstreamPool>,
}

impl Upstreams {
    /// The group that answers `question`, with its index.
    pub fn group_for(&self, question: &Question) -> (usize, &UpstreamPool) {
        let index = *self.routes.lookup(question);
        (index, &self.groups[index])
    }
}

/// The resolver shared by the UDP and TCP front ends.
pub struct DnsProxy {
    /// Swapped whole when the control socket reloads the block lists.
    blocklist: ArcSwap<BlockList>,
    /// Swapped whole when the control socket changes records.
    local: ArcSwap<LocalData>,
    cache: Option<Cache>,
    /// Swapped whole when the control socket changes routes.
    upstreams: ArcSwap<Upstreams>,
    in_flight: Mutex<HashMap<CollapseKey, SharedAnswer>>,
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    stats: DnsStats,
    query_log: OnceLock<QueryLog>,
}

/// What to do with one client query.
pub enum Verdict {
    /// Not a query: say nothing.
    Drop,
    /// The answer is in the caller's buffer, this many bytes long.
    Answered(usize),
    /// Ask the upstreams, in a task.
    Forward(Forward),
}

impl DnsProxy {
    /// A resolver from its parts.
    pub fn new(parts: ResolverParts) -> Arc<Self> {
        Arc::new(Self {
            blocklist: ArcSwap::from_pointee(parts.blocklist),
            local: ArcSwap::from_pointee(parts.local),
            cache: parts.cache,
            upstreams: ArcSwap::from_pointee(Upstreams {
                routes: parts.routes,
                groups: parts.groups,
            }),
            in_flight: Mutex::default(),
            permits: Arc::new(Semaphore::new(parts.max_in_flight)),
            max_in_flight: parts.max_in_flight,
            stats: DnsStats::default(),
            query_log: OnceLock::new(),
        })
    }

    /// Logs every query from now on to `log`. Only the first log set is kept.
    pub fn set_query_log(&self, log: QueryLog) {
        let _ = self.query_log.set(log);
    }

    /// Queries being resolved upstream now, and the most allowed at once.
    pub fn upstream_in_flight(&self) -> (usize, usize) {
        let available = self.permits.available_permits();
        (
            self.max_in_flight.saturating_sub(available),
            self.max_in_flight,
        )
    }

    /// Counts a finished query and, with the query log on, queues its line.
    fn observe(
        &self,
        arrival: &Arrival,
        question: Option<&Question>,
        path: AnswerPath,
        answer: &[u8],
    ) {
        self.observe_from(arrival, question, path, answer, None);
    }

    /// [`observe`](Self::observe) for an answer `upstream` gave.
    fn observe_from(
        &self,
        arrival: &Arrival,
        question: Option<&Question>,
        path: AnswerPath,
        answer: &[u8],
        upstream: Option<Arc<str>>,
    ) {
        self.stats
            .queries
            .record(arrival.transport, question.map(Question::qtype), path);
        if let Some(log) = self.query_log.get() {
            log.record(arrival.answered(question, path, answer, upstream));
        }
    }

    /// The proxy's counters.
    pub fn stats(&self) -> &DnsStats {
        &self.stats
    }

    /// The answer cache, if on.
    pub fn cache(&self) -> Option<&Cache> {
        self.cache.as_ref()
    }

    /// The blocklist now in use.
    pub fn blocklist(&self) -> Guard<Arc<BlockList>> {
        self.blocklist.load()
    }

    /// Puts `blocklist` in use for every query from now on. A list that differs from the
    /// one in use empties the cache: it may hold answers blocked for a CNAME into a domain
    /// the new list lets through, or answers with a CNAME into a domain it now blocks. The
    /// same list again (a SIGHUP to rotate the query log) keeps the cache.
    pub fn set_blocklist(&self, blocklist: BlockList) {
        let changed = **self.blocklist.load() != blocklist;
        self.blocklist.store(Arc::new(blocklist));
        if let Some(cache) = self.cache.as_ref().filter(|_| changed) {
            cache.clear();
        }
    }

    /// The local data now in use.
    pub fn local(&self) -> Guard<Arc<LocalData>> {
        self.local.load()
    }

    /// Puts `local` in use for every query from now on.
    pub fn set_local(&self, local: LocalData) {
        self.local.store(Arc::new(local));
    }

    /// The routes and upstream groups now in use.
    pub fn upstreams(&self) -> Arc<Upstreams> {
        self.upstreams.load_full()
    }

    /// Puts `upstreams` in use for queries from now on; queries already asking keep theirs.
    pub fn set_upstreams(&self, upstreams: Upstreams) {
        self.upstreams.store(Arc::new(upstreams));
    }

    /// Answers `query` from memory into `out` if it can, or hands back a [`Forward`].
    ///
    /// `out` must hold [`MAX_MESSAGE`] bytes. UDP answers are cut to what the client takes.
    pub fn accept(self: &Arc<Self>, query: &[u8], protocol: Protocol, out: &mut [u8]) -> Verdict {
        self.accept_from(None, query, protocol, out)
    }

    /// [`accept`](Self::accept) for a query from `client`, whom the query log names.
    pub fn accept_from(
        self: &Arc<Self>,
        client: Option<SocketAddr>,
        query: &[u8],
        protocol: Protocol,
        out: &mut [u8],
    ) -> Verdict {
        let arrival = Arrival::now(client, protocol, self.query_log.get().is_some());
        let parsed = match tundns_dns::parse_query(query) {
            Ok(parsed) => parsed,
            Err(QueryError::Drop) => {
                self.observe(&arrival, None, AnswerPath::Dropped, &[]);
                return Verdict::Drop;
            }
            Err(QueryError::Answer(rcode)) => {
                let len = tundns_dns::write_error_response(query, rcode, out);
                self.observe(&arrival, None, AnswerPath::Formerr, &out[..len]);
                return answered(len);
            }
        };
        let chain = match self.answer_from_memory(&parsed, out) {
            FromMemory::Answered(len, path) => {
                let len = fit_for_client(&parsed, protocol, out, len);
                self.observe(&arrival, Some(parsed.question()), path, &out[..len]);
                return answered(len);
            }
            FromMemory::Chain(chain_len, chain) => {
                if let Some((answer, path)) = self.chain_from_memory(&parsed, &chain)
                    && let Some(written) = out.get_mut(..answer.len())
                {
                    written.copy_from_slice(&answer);
                    let len = fit_for_client(&parsed, protocol, out, answer.len());
                    self.observe(&arrival, Some(parsed.question()), path, &out[..len]);
                    return answered(len);
                }
                Some((chain_len, chain))
            }
            FromMemory::Unknown => None,
        };
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            // Overloaded. A local chain still gets its local part, which `out` holds.
            if let Some((chain_len, _)) = chain {
                let len = fit_for_client(&parsed, protocol, out, chain_len);
                let question = Some(parsed.question());
                self.observe(&arrival, question, AnswerPath::Local, &out[..len]);
                return answered(len);
            }
            let len = tundns_dns::write_error_response(query, Rcode::REFUSED, out);
            let question = Some(parsed.question());
            self.observe(&arrival, question, AnswerPath::Refused, &out[..len]);
            return answered(len);
        };
        Verdict::Forward(Forward {
            proxy: self.clone(),
            query: query.to_vec(),
            chain: chain.map(|(_, chain)| chain),
            protocol,
            arrival,
            _permit: permit,
        })
    }

    /// Blocklist, then local data, then the cache: the first that knows writes the answer.
    fn answer_from_memory(&self, query: &Query<'_>, out: &mut [u8]) -> FromMemory {
        if let Some(len) = self.blocklist.load().answer(query, out) {
            return FromMemory::Answered(len, AnswerPath::Blocked);
        }
        match self.local.load().answer(query, out) {
            Some(LocalAnswer::Complete(len)) => {
                return FromMemory::Answered(len, AnswerPath::Local);
            }
            Some(LocalAnswer::Chain(len, chain)) => return FromMemory::Chain(len, chain),
            None => {}
        }
        let cache = self.cache.as_ref();
        match cache.and_then(|cache| cache.lookup(query, Instant::now(), out)) {
            Some(len) => FromMemory::Answered(len, AnswerPath::Cache),
            None => FromMemory::Unknown,
        }
    }

    /// The upstream answer to `query`, sharing the upstream query with identical queries
    /// already in flight.
    async fn upstream_answer(
        self: &Arc<Self>,
        query: &Query<'_>,
        protocol: Protocol,
    ) -> UpstreamAnswer {
        let key = CollapseKey::of(query, protocol);
        let shared = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            match in_flight.get(&key) {
                Some(shared) => {
                    bump(&self.stats.collapsed);
                    shared.clone()
                }
                None => {
                    let ask =
                        self.clone()
                            .ask_upstream(key.clone(), query.bytes().to_vec(), protocol);
                    let shared = ask.boxed().shared();
                    in_flight.insert(key, shared.clone());
                    shared
                }
            }
        };
        shared.await
    }

    /// One upstream query for everyone waiting on `key`; the answer goes into the cache.
    async fn ask_upstream(
        self: Arc<Self>,
        key: CollapseKey,
        mut query: Vec<u8>,
        protocol: Protocol,
    ) -> UpstreamAnswer {
        // Later identical queries start afresh (or hit the cache) once this one is done.
        let _entry = InFlightEntry {
            table: &self.in_flight,
            key,
        };
        tundns_dns::clamp_edns_udp_size(&mut query, UPSTREAM_EDNS_SIZE);
        let Ok(parsed) = tundns_dns::parse_query(&query) else {
            return UpstreamAnswer::Failed(None);
        };
        // Held to the end: a route removed meanwhile does not cancel this query.
        let upstreams = self.upstreams.load_full();
        let group = upstreams.group_for(parsed.question()).1;
        let answered = group.resolve_from(&query, protocol).await;
        let blocklist = self.blocklist.load();
        let (answer, cacheable) = match answered {
            Ok(answer) if blocklist.cloaks_blocked_name(&answer.response) => {
                // Cached as the blocked answer, so that the next asking is answered inline.
                let mut out = vec![0; tundns_dns::MAX_BLOCKED_LEN];
                let len = blocklist.answer_cloaked(&parsed, &mut out);
                out.truncate(len);
                let blocked = Bytes::from(out);
                (
                    UpstreamAnswer::Cloaked(blocked.clone(), answer.upstream),
                    Some(blocked),
                )
            }
            Ok(answer) => (
                UpstreamAnswer::Answer(answer.response.clone(), answer.upstream),
                Some(answer.response),
            ),
            Err(ResolveError::AllFailed {
                soft_answer: Some(soft),
                ..
            }) => {
                // A SERVFAIL is cached briefly (the cache's rule), sparing a failing
                // upstream the same question again and again.
                (UpstreamAnswer::Failed(Some(soft.clone())), Some(soft))
            }
            Err(error) => {
                tracing::debug!(%error, "every upstream failed");
                (UpstreamAnswer::Failed(None), None)
            }
        };
        if let (Some(cache), Some(response)) = (&self.cache, cacheable) {
            cache.insert(&parsed, &response, Instant::now());
        }
        answer
    }
}

/// What memory knows about a query.
enum FromMemory {
    /// The answer is written, `len` bytes.
    Answered(usize, AnswerPath),
    /// A local CNAME chain that leads out of local data, written alone (`len` bytes); the
    /// rest is its target's answer.
    Chain(usize, Arc<CnameChain>),
    /// Nothing: ask upstream.
    Unknown,
}

fn answered(len: usize) -> Verdict {
    if len == 0 {
        Verdict::Drop
    } else {
        Verdict::Answered(len)
    }
}

/// Cuts a UDP answer in `out[..len]` to the client's limit, at a whole RRset, with TC set.
fn fit_for_client(query: &Query<'_>, protocol: Protocol, out: &mut [u8], len: usize) -> usize {
    let limit = match protocol {
        Protocol::Udp => tundns_dns::max_udp_response(query),
        Protocol::Tcp => return len,
    };
    if len <= limit {
        return len;
    }
    let full = out[..len].to_vec();
    tundns_dns::write_truncated(&full, &mut out[..limit])
}

/// One query on its way upstream; holds its in-flight permit until it is answered.
pub struct Forward {
    proxy: Arc<DnsProxy>,
    query: Vec<u8>,
    /// When set, upstream is asked for the chain's last target, not for `query`.
    chain: Option<Arc<CnameChain>>,
    protocol: Protocol,
    arrival: Arrival,
    _permit: OwnedSemaphorePermit,
}

impl Forward {
    /// Resolves through the upstreams; the answer is always something to send: the
    /// upstream's answer, a stale one when every upstream failed, or SERVFAIL.
    pub async fn resolve(self) -> Vec<u8> {
        self.resolve_from().await.answer
    }

    /// [`resolve`](Self::resolve), with how the answer was found and the upstream that
    /// gave it, when one did.
    pub async fn resolve_from(self) -> Resolved {
        let proxy = &self.proxy;
        let Ok(query) = tundns_dns::parse_query(&self.query) else {
            return Resolved {
                answer: error_answer(&self.query, Rcode::SERVFAIL),
                path: AnswerPath::Servfail,
                upstream: None,
            };
        };
        let Found {
            mut out,
            len,
            path,
            upstream,
        } = match &self.chain {
            None => proxy.answer_from_upstream(&query, self.protocol).await,
            Some(chain) => proxy.finish_chain(chain, &query, self.protocol).await,
        };
        let len = fit_for_client(&query, self.protocol, &mut out, len);
        out.truncate(len);
        let question = Some(query.question());
        proxy.observe_from(&self.arrival, question, path, &out, upstream.clone());
        Resolved {
            answer: out,
            path,
            upstream,
        }
    }
}

/// What [`Forward::resolve_from`] found.
pub struct Resolved {
    /// The answer to send.
    pub answer: Vec<u8>,
    /// How it was found: from an upstream, or blocked because the upstream's answer led
    /// to a blocked name, or stale, or SERVFAIL.
    pub path: AnswerPath,
    /// The upstream that gave it, when one did.
    pub upstream: Option<Arc<str>>,
}

/// What the forwarding task found for a query: `len` bytes of `out`, how they were found,
/// and the upstream that gave them, when one did.
struct Found {
    out: Vec<u8>,
    len: usize,
    path: AnswerPath,
    upstream: Option<Arc<str>>,
}

impl Found {
    fn new((out, len): (Vec<u8>, usize), path: AnswerPath) -> Self {
        Found {
            out,
            len,
            path,
            upstream: None,
        }
    }
}

/// `response` as the answer to `query` (its ID and spelling), or `None` if malformed.
fn adapted(response: &[u8], query: &Query<'_>) -> Option<(Vec<u8>, usize)> {
    // Only the ID, the question's case and the OPT record change; an OPT record is
    // added for a client that sent EDNS when the upstream's answer had none.
    let mut out = vec![0; response.len() + tundns_dns::OPT_RECORD_LEN];
    let len = tundns_dns::adapt_response(response, query, &mut out);
    (len > 0).then_some((out, len))
}

impl DnsProxy {
    /// The answer to `query` once memory had none: a cache hit after all, the upstream's
    /// answer, or what [`fallback`](Self::fallback) gives when no upstream answered.
    async fn answer_from_upstream(
        self: &Arc<Self>,
        query: &Query<'_>,
        protocol: Protocol,
    ) -> Found {
        if let Some(hit) = self.late_cache_hit(query) {
            return Found::new(hit, AnswerPath::Cache);
        }
        let (response, upstream, path) = match self.upstream_answer(query, protocol).await {
            UpstreamAnswer::Answer(response, upstream) => {
                (response, upstream, AnswerPath::Forwarded)
            }
            UpstreamAnswer::Cloaked(blocked, upstream) => (blocked, upstream, AnswerPath::Blocked),
            UpstreamAnswer::Failed(soft) => return self.fallback(query, soft.as_deref()),
        };
        match adapted(&response, query) {
            Some(answer) => Found {
                upstream: Some(upstream),
                ..Found::new(answer, path)
            },
            None => self.fallback(query, None),
        }
    }

    /// The answer to `query`, whose local CNAME `chain` leads out of local data, when
    /// memory knows the chain's target: the chain, then the target's blocked or cached
    /// answer. The path is the target's.
    fn chain_from_memory(
        &self,
        query: &Query<'_>,
        chain: &CnameChain,
    ) -> Option<(Vec<u8>, AnswerPath)> {
        let asked = chain.target_query(query);
        let target = tundns_dns::parse_query(&asked).ok()?;
        let mut memory = vec![0; LATE_HIT_BUFFER];
        let FromMemory::Answered(len, path) = self.answer_from_memory(&target, &mut memory) else {
            return None;
        };
        let answer = chain.complete(query, &memory[..len], MAX_MESSAGE, |name| {
            self.decides(name)
        })?;
        Some((answer, path))
    }

    /// [`chain_from_memory`](Self::chain_from_memory) once memory had nothing: the
    /// chain, then the target's answer from the upstreams (or a stale one). SERVFAIL
    /// when there is none to build on. The path is the target's.
    async fn finish_chain(
        self: &Arc<Self>,
        chain: &CnameChain,
        query: &Query<'_>,
        protocol: Protocol,
    ) -> Found {
        let servfail = || {
            let out = error_answer(query.bytes(), Rcode::SERVFAIL);
            let len = out.len();
            Found::new((out, len), AnswerPath::Servfail)
        };
        // Local data may have changed since the query arrived; its names never go upstream.
        if self.local.load().holds_name(chain.target()) {
            return servfail();
        }
        let asked = chain.target_query(query);
        let Ok(target) = tundns_dns::parse_query(&asked) else {
            return servfail();
        };
        let found = self.answer_from_upstream(&target, protocol).await;
        match chain.complete(query, &found.out[..found.len], MAX_MESSAGE, |name| {
            self.decides(name)
        }) {
            Some(out) => Found {
                len: out.len(),
                out,
                ..found
            },
            None => servfail(),
        }
    }

    /// Whether local data or the blocklist answers for `name`: an upstream's CNAME that
    /// leads there ends the chain it completes.
    fn decides(&self, name: &[u8]) -> bool {
        self.local.load().holds_name(name) || self.blocklist.load().blocks_name(name)
    }

    /// A cache hit for a query that missed inline: an identical query may have been
    /// answered in between, and asking again would be a second upstream query.
    fn late_cache_hit(&self, query: &Query<'_>) -> Option<(Vec<u8>, usize)> {
        let cache = self.cache.as_ref()?;
        let mut out = vec![0; LATE_HIT_BUFFER];
        let len = cache.lookup_again(query, Instant::now(), &mut out)?;
        Some((out, len))
    }

    /// The answer when no upstream answered: a stale one if the cache still has it (RFC
    /// 8767), else the last upstream's own SERVFAIL or REFUSED, else our SERVFAIL.
    fn fallback(&self, query: &Query<'_>, soft: Option<&[u8]>) -> Found {
        let mut out = vec![0; MAX_MESSAGE];
        let stale = self
            .cache
            .as_ref()
            .and_then(|cache| cache.lookup_stale(query, Instant::now(), &mut out));
        if let Some(len) = stale {
            return Found::new((out, len), AnswerPath::Stale);
        }
        if let Some(answer) = soft.and_then(|soft| adapted(soft, query)) {
            return Found::new(answer, AnswerPath::Servfail);
        }
        let len = tundns_dns::write_error_response(query.bytes(), Rcode::SERVFAIL, &mut out);
        Found::new((out, len), AnswerPath::Servfail)
    }
}

/// An error answer to `query` as an owned message.
pub fn error_answer(query: &[u8], rcode: Rcode) -> Vec<u8> {
    let mut out = vec![0; tundns_dns::MAX_SYNTHESIZED_LEN];
    let len = tundns_dns::write_error_response(query, rcode, &mut out);
    out.truncate(len);
    out
}

thread_local! {
    /// The inline answer buffer of each TUN reader thread: room for the IP and UDP headers
    /// and the largest message, allocated once.
    static UDP_REPLY: RefCell<Vec<u8>> =
        RefCell::new(vec![0; tundns_packet::IPV6_UDP_HEADERS + MAX_MESSAGE]);
}

/// DNS over UDP on the virtual IPs.
pub struct UdpDns {
    proxy: Arc<DnsProxy>,
}

impl UdpDns {
    /// The UDP front end of `proxy`.
    pub fn new(proxy: Arc<DnsProxy>) -> Self {
        Self { proxy }
    }
}

impl UdpService for UdpDns {
    fn on_datagram(&self, datagram: Datagram<'_>, tun: &TunWriter) {
        let (client, server) = (datagram.source, datagram.destination);
        let forward = UDP_REPLY.with_borrow_mut(|buf| {
            // The answer is written where the UDP payload goes, then headers in front of it.
            let headers = tundns_packet::udp_headers_len(&client);
            match self.proxy.accept_from(
                Some(client),
                datagram.payload,
                Protocol::Udp,
                &mut buf[headers..],
            ) {
                Verdict::Drop => None,
                Verdict::Answered(len) => {
                    if let Ok(total) = tundns_packet::write_udp_headers(buf, server, client, len) {
                        tun.send(&buf[..total]);
                    }
                    None
                }
                Verdict::Forward(forward) => Some(forward),
            }
        });
        if let Some(forward) = forward {
            let tun = tun.clone();
            tokio::spawn(async move {
                let answer = forward.resolve().await;
                tun.send_udp(server, client, &answer);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;
    use tokio::net::UdpSocket;
    use tundns_dns::cache::CacheConfig;
    use tundns_upstream::{PoolConfig, Transport, UpstreamSpec};

    /// A query for `name` A IN, without EDNS.
    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut msg = id.to_be_bytes().to_vec();
        msg.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            msg.push(label.len() as u8);
            msg.extend_from_slice(label.as_bytes());
        }
        msg.extend_from_slice(&[0, 0, 1, 0, 1]);
        msg
    }

    /// Answers every query with `records` A records (pointing at the question), TTL 300,
    /// and counts the queries it saw.
    async fn fake_upstream(records: u8) -> (SocketAddr, Arc<AtomicUsize>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut answer = buf[..len].to_vec();
                answer[2] |= 0x80; // QR
                answer[3] |= 0x80; // RA
                answer[6..8].copy_from_slice(&u16::from(records).to_be_bytes());
                answer[10..12].copy_from_slice(&[0, 0]); // drop the client's OPT count
                let question_end = 12 + answer[12..].iter().position(|&b| b == 0).unwrap() + 5;
                answer.truncate(question_end);
                for i in 0..records {
                    answer.extend_from_slice(&[
                        0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 203, 0, 113, i,
                    ]);
                }
                let _ = socket.send_to(&answer, from).await;
            }
        });
        (address, seen)
    }

    fn proxy(upstream: SocketAddr, max_in_flight: usize, cache: bool) -> Arc<DnsProxy> {
        let spec = UpstreamSpec {
            transport: Transport::Udp,
            address: upstream,
        };
        let pool = UpstreamPool::new(vec![spec], PoolConfig::default()).unwrap();
        DnsProxy::new(ResolverParts {
            blocklist: BlockList::new(tundns_dns::BlockMode::NxDomain, Duration::from_secs(60)),
            local: tundns_dns::LocalDataBuilder::new().build(),
            cache: cache.then(|| Cache::new(CacheConfig::default())),
            routes: Routes::new(0),
            groups: vec![pool],
            max_in_flight,
        })
    }

    fn rcode(answer: &[u8]) -> u8 {
        answer[3] & 0x0f
    }

    #[tokio::test]
    async fn beyond_the_in_flight_bound_the_answer_is_refused_at_once() {
        let (upstream, _) = fake_upstream(1).await;
        let proxy = proxy(upstream, 1, false);
        let mut out = vec![0; MAX_MESSAGE];
        let first = proxy.accept(&query(1, "a.lab.test"), Protocol::Udp, &mut out);
        assert!(matches!(first, Verdict::Forward(_)));
        match proxy.accept(&query(2, "b.lab.test"), Protocol::Udp, &mut out) {
            Verdict::Answered(len) => {
                assert_eq!(&out[..2], &2u16.to_be_bytes());
                assert_eq!(rcode(&out[..len]), 5, "REFUSED");
            }
            _ => panic!("the second query must be refused while the first holds the only permit"),
        }
        drop(first);
        let third = proxy.accept(&query(3, "c.lab.test"), Protocol::Udp, &mut out);
        assert!(
            matches!(third, Verdict::Forward(_)),
            "the permit comes back"
        );
        assert_eq!(proxy.stats().queries.by_path(AnswerPath::Refused), 1);
    }

    #[tokio::test]
    async fn malformed_query_with_readable_header_is_answered_formerr_inline() {
        let (upstream, seen) = fake_upstream(1).await;
        let proxy = proxy(upstream, 8, false);
        let mut bad = query(7, "a.lab.test");
        bad[12] = 70; // a label longer than 63
        let mut out = vec![0; MAX_MESSAGE];
        let Verdict::Answered(len) = proxy.accept(&bad, Protocol::Udp, &mut out) else {
            panic!("FORMERR expected");
        };
        assert_eq!(rcode(&out[..len]), 1);
        assert!(matches!(
            proxy.accept(&bad[..5], Protocol::Udp, &mut out),
            Verdict::Drop
        ));
        assert_eq!(seen.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_udp_answer_too_big_for_the_client_is_truncated_by_the_proxy() {
        // 40 records of 16 bytes: about 670 bytes, more than a client without EDNS takes.
        let (upstream, _) = fake_upstream(40).await;
        let proxy = proxy(upstream, 8, false);
        let mut out = vec![0; MAX_MESSAGE];
        let Verdict::Forward(forward) =
            proxy.accept(&query(9, "big.lab.test"), Protocol::Udp, &mut out)
        else {
            panic!("must be forwarded");
        };
        let answer = forward.resolve().await;
        assert!(answer.len() <= 512, "{} bytes", answer.len());
        assert_ne!(answer[2] & 0x02, 0, "TC set");
        assert_eq!(&answer[..2], &9u16.to_be_bytes());
        // The 40 A records are one RRset, which does not fit whole: it is left out rather
        // than cut (RFC 2181 §9), leaving the header and the question ("big.lab.test" A IN).
        assert_eq!(u16::from_be_bytes([answer[6], answer[7]]), 0);
        assert_eq!(answer.len(), 12 + 18);
    }

    #[tokio::test]
    async fn a_cached_answer_is_served_inline_with_the_new_clients_id() {
        let (upstream, seen) = fake_upstream(1).await;
        let proxy = proxy(upstream, 8, true);
        let mut out = vec![0; MAX_MESSAGE];
        let Verdict::Forward(forward) =
            proxy.accept(&query(11, "www.lab.test"), Protocol::Udp, &mut out)
        else {
            panic!("the first query goes upstream");
        };
        forward.resolve().await;
        let Verdict::Answered(len) =
            proxy.accept(&query(12, "WWW.lab.test"), Protocol::Udp, &mut out)
        else {
            panic!("the second is a cache hit");
        };
        assert_eq!(&out[..2], &12u16.to_be_bytes());
        assert_eq!(&out[13..16], b"WWW", "the client's spelling");
        assert_eq!(rcode(&out[..len]), 0);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        assert_eq!(proxy.stats().queries.by_path(AnswerPath::Cache), 1);
    }

    #[tokio::test]
    async fn a_changed_blocklist_empties_the_cache() {
        let (upstream, seen) = fake_upstream(1).await;
        let proxy = proxy(upstream, 8, true);
        let ask = |id| {
            let mut out = vec![0; MAX_MESSAGE];
            match proxy.accept(&query(id, "www.lab.test"), Protocol::Udp, &mut out) {
                Verdict::Forward(forward) => Some(forward),
                _ => None,
            }
        };
        let list = |domains: &[&str]| {
            let mut list = BlockList::new(tundns_dns::BlockMode::NxDomain, Duration::from_secs(60));
            for domain in domains {
                list.add_domain(domain).unwrap();
            }
            list
        };
        ask(21)
            .expect("the first query goes upstream")
            .resolve()
            .await;
        assert!(ask(22).is_none(), "the second is a cache hit");
        // The same (empty) list again keeps the cache.
        proxy.set_blocklist(list(&[]));
        assert!(ask(23).is_none(), "still a cache hit");
        // Answers cached under the old list may now be blocked, or no longer.
        proxy.set_blocklist(list(&["ads.example"]));
        assert_eq!(proxy.cache().unwrap().len(), 0);
        ask(24)
            .expect("upstream again after the reload")
            .resolve()
            .await;
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn identical_queries_in_flight_share_one_upstream_query() {
        let (upstream, seen) = fake_upstream(1).await;
        let proxy = proxy(upstream, 64, false);
        let mut out = vec![0; MAX_MESSAGE];
        let forwards: Vec<Forward> = (0..20)
            .map(|id| {
                match proxy.accept(&query(100 + id, "same.lab.test"), Protocol::Udp, &mut out) {
                    Verdict::Forward(forward) => forward,
                    _ => panic!("all go upstream"),
                }
            })
            .collect();
        let answers = futures::future::join_all(forwards.into_iter().map(Forward::resolve)).await;
        for (id, answer) in (100u16..).zip(&answers) {
            assert_eq!(&answer[..2], &id.to_be_bytes());
            assert_eq!(rcode(answer), 0);
        }
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }
}

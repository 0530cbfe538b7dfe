//! The queries memory could not answer, on their way to the upstreams and back.
//!
//! A driver hands each inline miss to [`Forwarding::handle_miss`], executes the
//! [`UpstreamRequest`]s it then yields, passes each request's result to
//! [`Forwarding::handle_upstream_answer`], and sends the [`Finished`] answers it yields to
//! their clients. `C` is the driver's token for a waiting client: where its answer goes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tundns_dns::{CnameChain, ExtendedError, MAX_MESSAGE_LEN, Query, Question, Rcode};

use crate::pool::{Answer, ResolveError};
use crate::resolver::{Miss, Resolver, fit_for_client};
use crate::{AnswerPath, Protocol};

/// The EDNS UDP size passed to upstreams when the client asks for more: large enough for
/// most answers, small enough to avoid IP fragmentation (DNS Flag Day 2020).
const UPSTREAM_EDNS_SIZE: u16 = 1232;

/// Room for a cache hit found after an inline miss; a larger entry is simply asked again.
const LATE_HIT_BUFFER: usize = 4096;

/// Names one upstream request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(u64);

/// A query for the driver to resolve through an upstream group.
pub struct UpstreamRequest<G> {
    pub id: RequestId,
    /// The group the split-DNS routes chose, as they stood when the query came.
    pub group: G,
    /// The query, its EDNS UDP size clamped for the upstreams.
    pub query: Vec<u8>,
    pub protocol: Protocol,
}

/// What [`Forwarding::handle_miss`] did with a query.
pub enum Admission<C> {
    /// The answer is written in the caller's buffer, `len` bytes: REFUSED under
    /// overload, or a cache hit that arrived since the inline look. The client is handed
    /// back.
    Answered {
        client: C,
        len: usize,
        path: AnswerPath,
    },
    /// Waiting for an upstream request; `collapsed` when it joined an identical query
    /// already in flight.
    Waiting { collapsed: bool },
}

/// What the upstreams said to one request, and the clients that waited for it.
pub struct Settled<C> {
    shared: UpstreamAnswer,
    waiters: Vec<Waiter<C>>,
}

impl<C> Settled<C> {
    /// Each waiting client's answer, adapted to its own query (ID, spelling, EDNS, size).
    pub fn answers<G>(
        self,
        resolver: &Resolver<G>,
        now: Instant,
    ) -> impl Iterator<Item = Finished<C>> {
        let shared = self.shared;
        self.waiters
            .into_iter()
            .map(move |waiter| finish(resolver, waiter, &shared, now))
    }
}

/// An answer for a client that waited.
pub struct Finished<C> {
    pub client: C,
    pub answer: Vec<u8>,
    pub path: AnswerPath,
    /// The question it answers.
    pub question: Question,
    /// The upstream that gave it, when one did.
    pub upstream: Option<Arc<str>>,
}

/// Identical questions share one upstream request: same name (any case), type, class,
/// and the DO and CD bits, which change the answer.
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

struct Waiter<C> {
    client: C,
    /// The client's query, as received.
    query: Vec<u8>,
    protocol: Protocol,
    /// When set, upstream was asked for the chain's last target, not for `query`.
    chain: Option<Arc<CnameChain>>,
    /// The question of `query`, for the answer's log line.
    question: Question,
}

impl<C> Waiter<C> {
    fn new(
        client: C,
        query: &Query<'_>,
        protocol: Protocol,
        chain: Option<Arc<CnameChain>>,
    ) -> Self {
        Waiter {
            client,
            query: query.bytes().to_vec(),
            protocol,
            chain,
            question: query.question().clone(),
        }
    }
}

struct InFlight<C> {
    /// What was asked upstream, to cache the answer under.
    asked: Vec<u8>,
    waiters: Vec<Waiter<C>>,
}

/// What the upstreams said to one request.
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

/// What [`Forwarding::prefetch`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefetch {
    /// A refresh is queued ([`Forwarding::poll_request`]).
    Asked,
    /// An identical query is in flight already; its answer refreshes the entry.
    InFlight,
    /// As many requests are in flight as clients may wait: the refresh is left out.
    Full,
}

/// The queries waiting for upstreams. See the module documentation.
pub struct Forwarding<C, G> {
    in_flight: HashMap<CollapseKey, InFlight<C>>,
    requests: HashMap<RequestId, CollapseKey>,
    outbox: VecDeque<UpstreamRequest<G>>,
    /// Clients waiting, and the most allowed at once.
    waiting: usize,
    max_waiting: usize,
    next_id: u64,
}

impl<C, G: Clone> Forwarding<C, G> {
    /// At most `max_waiting` clients wait at once; the next is answered REFUSED.
    pub fn new(max_waiting: usize) -> Self {
        Forwarding {
            in_flight: HashMap::new(),
            requests: HashMap::new(),
            outbox: VecDeque::new(),
            waiting: 0,
            max_waiting,
            next_id: 0,
        }
    }

    /// Clients waiting for upstreams now, and the most allowed at once.
    pub fn waiting(&self) -> (usize, usize) {
        (self.waiting, self.max_waiting)
    }

    /// Takes a query [`Resolver::answer_inline`] missed, for `client`, at `now`. `out` is
    /// the buffer the inline answer would have gone to, which may hold a local chain.
    pub fn handle_miss(
        &mut self,
        resolver: &Resolver<G>,
        client: C,
        miss: Miss<'_>,
        now: Instant,
        out: &mut [u8],
    ) -> Admission<C> {
        let Miss {
            query,
            protocol,
            chain,
        } = miss;
        if self.waiting >= self.max_waiting {
            // Overloaded. A local chain still gets its local part, which `out` holds.
            if let Some((chain_len, _)) = chain {
                let len = fit_for_client(&query, protocol, out, chain_len);
                return answered(client, len, AnswerPath::Local);
            }
            let len = tundns_dns::write_error_response(query.bytes(), Rcode::REFUSED, out);
            return answered(client, len, AnswerPath::Refused);
        }
        let chain = chain.map(|(_, chain)| chain);
        // A chain asks upstream for its target; anything else is asked as it came. Local
        // data may have changed since the inline look: its names never go upstream.
        let target = chain.as_ref().map(|chain| chain.target_query(&query));
        let parsed_target = target.as_deref().map(tundns_dns::parse_query);
        let asked_query = match &parsed_target {
            None => &query,
            Some(Ok(target)) if !resolver.local().holds_name(target.question().name_wire()) => {
                target
            }
            Some(_) => {
                let len = tundns_dns::write_error_response(query.bytes(), Rcode::SERVFAIL, out);
                return answered(client, len, AnswerPath::Servfail);
            }
        };
        // An identical query may have been answered since the inline look; asking again
        // would be a second upstream query.
        if let Some((len, path)) = late_hit(
            resolver,
            &query,
            chain.as_deref(),
            protocol,
            asked_query,
            now,
            out,
        ) {
            return answered(client, len, path);
        }
        let key = CollapseKey::of(asked_query, protocol);
        let waiter = Waiter::new(client, &query, protocol, chain);
        self.waiting += 1;
        if let Some(in_flight) = self.in_flight.get_mut(&key) {
            in_flight.waiters.push(waiter);
            return Admission::Waiting { collapsed: true };
        }
        let asked = target.unwrap_or_else(|| query.bytes().to_vec());
        self.ask(resolver, key, asked, protocol, vec![waiter]);
        Admission::Waiting { collapsed: false }
    }

    /// Refreshes the cache entry that answered `query` inline, due for prefetch
    /// ([`Answered::prefetch`](crate::Answered::prefetch)): one upstream request that no
    /// client waits for, whose answer only the cache learns. The cache says so on one hit
    /// per stored entry only, so a refresh that fails is not asked again. Nothing is
    /// asked when an identical query is in flight already, or when as
    /// many requests are in flight as clients may wait: prefetch never crowds out a
    /// client.
    pub fn prefetch(&mut self, resolver: &Resolver<G>, query: &Query<'_>) -> Prefetch {
        let key = CollapseKey::of(query, Protocol::Udp);
        if self.in_flight.contains_key(&key) {
            return Prefetch::InFlight;
        }
        if self.in_flight.len() >= self.max_waiting {
            return Prefetch::Full;
        }
        self.ask(
            resolver,
            key,
            query.bytes().to_vec(),
            Protocol::Udp,
            Vec::new(),
        );
        Prefetch::Asked
    }

    /// The next request to execute.
    pub fn poll_request(&mut self) -> Option<UpstreamRequest<G>> {
        self.outbox.pop_front()
    }

    /// The upstream group's result for request `id`, at `now`: the cache learns it, and
    /// the clients that waited on it are handed back with it, to be answered with
    /// [`Settled::answers`] (outside whatever lock guards this table).
    pub fn handle_upstream_answer(
        &mut self,
        resolver: &Resolver<G>,
        id: RequestId,
        result: Result<Answer, ResolveError>,
        now: Instant,
    ) -> Option<Settled<C>> {
        let key = self.requests.remove(&id)?;
        let in_flight = self.in_flight.remove(&key)?;
        self.waiting -= in_flight.waiters.len();
        Some(Settled {
            shared: learn(resolver, &in_flight.asked, result, now),
            waiters: in_flight.waiters,
        })
    }

    fn ask(
        &mut self,
        resolver: &Resolver<G>,
        key: CollapseKey,
        asked: Vec<u8>,
        protocol: Protocol,
        waiters: Vec<Waiter<C>>,
    ) {
        self.next_id += 1;
        let id = RequestId(self.next_id);
        let mut query = asked.clone();
        tundns_dns::clamp_edns_udp_size(&mut query, UPSTREAM_EDNS_SIZE);
        let group = resolver.upstreams().group_for(&key.question).1.clone();
        self.outbox.push_back(UpstreamRequest {
            id,
            group,
            query,
            protocol,
        });
        self.requests.insert(id, key.clone());
        self.in_flight.insert(key, InFlight { asked, waiters });
    }
}

fn answered<C>(client: C, len: usize, path: AnswerPath) -> Admission<C> {
    Admission::Answered { client, len, path }
}

/// A cache hit for `query`, which missed inline, written into `out`: its length and path.
/// `asked` is what upstream would be asked: `query`, or its chain's target.
fn late_hit<G>(
    resolver: &Resolver<G>,
    query: &Query<'_>,
    chain: Option<&CnameChain>,
    protocol: Protocol,
    asked: &Query<'_>,
    now: Instant,
    out: &mut [u8],
) -> Option<(usize, AnswerPath)> {
    let cache = resolver.cache()?;
    let len = match chain {
        None => cache.lookup_again(asked, now, out)?,
        Some(chain) => {
            let mut hit = vec![0; LATE_HIT_BUFFER];
            let len = cache.lookup_again(asked, now, &mut hit)?;
            let Some(answer) = resolver.complete_chain(chain, query, &hit[..len]) else {
                let len = tundns_dns::write_error_response(query.bytes(), Rcode::SERVFAIL, out);
                return Some((len, AnswerPath::Servfail));
            };
            out.get_mut(..answer.len())?.copy_from_slice(&answer);
            answer.len()
        }
    };
    Some((fit_for_client(query, protocol, out, len), AnswerPath::Cache))
}

/// What the upstreams said, as every waiter shares it; the cache learns it first.
fn learn<G>(
    resolver: &Resolver<G>,
    asked: &[u8],
    result: Result<Answer, ResolveError>,
    now: Instant,
) -> UpstreamAnswer {
    let Ok(parsed) = tundns_dns::parse_query(asked) else {
        return UpstreamAnswer::Failed(None);
    };
    let blocklist = resolver.blocklist();
    let (answer, cacheable) = match result {
        Ok(answer) if blocklist.cloaks_blocked_name(&answer.response) => {
            // Cached as the blocked answer, so that the next asking is answered inline.
            let mut out = vec![0; tundns_dns::MAX_BLOCKED_LEN];
            let len = blocklist.answer_cloaked(&parsed, &mut out);
            out.truncate(len);
            let blocked = Bytes::from(out);
            if let Some(cache) = resolver.cache() {
                cache.insert_blocked(&parsed, &blocked, now);
            }
            (UpstreamAnswer::Cloaked(blocked, answer.upstream), None)
        }
        Ok(answer) => {
            // Cached here, and every client sees the TTLs the cache will serve, the first
            // one included.
            let response = resolver
                .cache()
                .and_then(|cache| cache.insert_with_cached_ttls(&parsed, &answer.response, now))
                .map_or(answer.response, Bytes::from);
            (UpstreamAnswer::Answer(response, answer.upstream), None)
        }
        Err(ResolveError::AllFailed {
            soft_answer: Some(soft),
            ..
        }) => {
            // A SERVFAIL is cached briefly (the cache's rule), sparing a failing upstream
            // the same question again and again.
            (UpstreamAnswer::Failed(Some(soft.clone())), Some(soft))
        }
        Err(error) => {
            tracing::debug!(%error, "every upstream failed");
            (UpstreamAnswer::Failed(None), None)
        }
    };
    if let (Some(cache), Some(response)) = (resolver.cache(), cacheable) {
        cache.insert(&parsed, &response, now);
    }
    answer
}

/// One waiter's answer, from what the upstreams said.
fn finish<C, G>(
    resolver: &Resolver<G>,
    waiter: Waiter<C>,
    shared: &UpstreamAnswer,
    now: Instant,
) -> Finished<C> {
    let Ok(query) = tundns_dns::parse_query(&waiter.query) else {
        // It parsed when it came; an answer is owed all the same.
        return Finished {
            client: waiter.client,
            answer: error_answer(&waiter.query, Rcode::SERVFAIL),
            path: AnswerPath::Servfail,
            question: waiter.question,
            upstream: None,
        };
    };
    let found = match &waiter.chain {
        None => for_query(resolver, &query, shared, now),
        Some(chain) => finish_chain(resolver, chain, &query, shared, now),
    };
    let Found {
        mut out,
        path,
        upstream,
    } = found;
    let len = out.len();
    let len = fit_for_client(&query, waiter.protocol, &mut out, len);
    out.truncate(len);
    Finished {
        client: waiter.client,
        answer: out,
        path,
        question: waiter.question,
        upstream,
    }
}

/// What a waiter's answer was found as.
struct Found {
    out: Vec<u8>,
    path: AnswerPath,
    upstream: Option<Arc<str>>,
}

/// `shared` as the answer to `query`, or the fallback when it is none.
fn for_query<G>(
    resolver: &Resolver<G>,
    query: &Query<'_>,
    shared: &UpstreamAnswer,
    now: Instant,
) -> Found {
    let (response, upstream, path) = match shared {
        UpstreamAnswer::Answer(response, upstream) => (response, upstream, AnswerPath::Forwarded),
        UpstreamAnswer::Cloaked(blocked, upstream) => (blocked, upstream, AnswerPath::Blocked),
        UpstreamAnswer::Failed(soft) => return fallback(resolver, query, soft.as_deref(), now),
    };
    match adapted(response, query) {
        Some(out) => Found {
            out,
            path,
            upstream: Some(upstream.clone()),
        },
        None => fallback(resolver, query, None, now),
    }
}

/// The chain, then its target's answer from `shared` (or a stale one). SERVFAIL when
/// there is none to build on. The path is the target's.
fn finish_chain<G>(
    resolver: &Resolver<G>,
    chain: &CnameChain,
    query: &Query<'_>,
    shared: &UpstreamAnswer,
    now: Instant,
) -> Found {
    let servfail = || Found {
        out: error_answer(query.bytes(), Rcode::SERVFAIL),
        path: AnswerPath::Servfail,
        upstream: None,
    };
    let asked = chain.target_query(query);
    let Ok(target) = tundns_dns::parse_query(&asked) else {
        return servfail();
    };
    let found = for_query(resolver, &target, shared, now);
    match resolver.complete_chain(chain, query, &found.out) {
        Some(out) => Found { out, ..found },
        None => servfail(),
    }
}

/// The answer when no upstream answered: a stale one if the cache still has it (RFC
/// 8767), else the last upstream's own SERVFAIL, else our SERVFAIL saying why.
fn fallback<G>(
    resolver: &Resolver<G>,
    query: &Query<'_>,
    soft: Option<&[u8]>,
    now: Instant,
) -> Found {
    let mut out = vec![0; MAX_MESSAGE_LEN];
    let stale = resolver
        .cache()
        .and_then(|cache| cache.lookup_stale(query, now, &mut out));
    let soft_rcode = soft.and_then(|soft| soft.get(3)).map(|flags| flags & 0x0f);
    let (out, path) = match (stale, soft_rcode) {
        (Some(len), _) => {
            out.truncate(len);
            (out, AnswerPath::Stale)
        }
        // An upstream's SERVFAIL is passed on, with whatever extended error it carries.
        (None, Some(rcode)) if rcode == Rcode::SERVFAIL.to_int() => {
            match soft.and_then(|soft| adapted(soft, query)) {
                Some(soft) => (soft, AnswerPath::Servfail),
                None => (
                    unreachable_answer(query, "no upstream answered"),
                    AnswerPath::Servfail,
                ),
            }
        }
        // Any other error (REFUSED, NOTIMP, ...) was the upstream's, not tundns's: passed
        // on, it would tell the client that tundns refused.
        (None, Some(rcode)) => {
            let text = format!(
                "no upstream answered; the last said {}",
                Rcode::masked_from_int(rcode)
            );
            (unreachable_answer(query, &text), AnswerPath::Servfail)
        }
        (None, None) => (
            unreachable_answer(query, "no upstream answered"),
            AnswerPath::Servfail,
        ),
    };
    Found {
        out,
        path,
        upstream: None,
    }
}

/// `response` as the answer to `query` (its ID and spelling), or `None` if malformed.
fn adapted(response: &[u8], query: &Query<'_>) -> Option<Vec<u8>> {
    // Only the ID, the question's case and the OPT record change; an OPT record is added
    // for a client that sent EDNS when the upstream's answer had none.
    let mut out = vec![0; response.len() + tundns_dns::OPT_RECORD_LEN];
    let len = tundns_dns::adapt_response(response, query, &mut out);
    out.truncate(len);
    (len > 0).then_some(out)
}

/// SERVFAIL for `query`, saying why: Extended DNS Error 22 (No Reachable Authority).
fn unreachable_answer(query: &Query<'_>, why: &str) -> Vec<u8> {
    let mut out = vec![0; tundns_dns::MAX_SYNTHESIZED_LEN + 6 + why.len()];
    let error = ExtendedError {
        code: ExtendedError::NO_REACHABLE_AUTHORITY,
        text: why,
    };
    let len =
        tundns_dns::write_error_response_explained(query.bytes(), Rcode::SERVFAIL, error, &mut out);
    out.truncate(len);
    out
}

/// An error answer to `query` as an owned message.
fn error_answer(query: &[u8], rcode: Rcode) -> Vec<u8> {
    let mut out = vec![0; tundns_dns::MAX_SYNTHESIZED_LEN];
    let len = tundns_dns::write_error_response(query, rcode, &mut out);
    out.truncate(len);
    out
}

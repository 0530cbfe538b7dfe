//! What memory answers, inline: the blocklist, local data and the cache, in that order,
//! and the split-DNS routes that pick an upstream group for the rest.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::{ArcSwap, Guard};
use tundns_dns::cache::Cache;
use tundns_dns::{
    BlockList, CnameChain, LocalAnswer, LocalData, MAX_MESSAGE_LEN, Query, QueryError, Question,
    Routes,
};

use crate::{AnswerPath, Protocol};

/// Room for a chain target's answer found in memory; a larger one is asked upstream.
const CHAIN_TARGET_BUFFER: usize = 4096;

/// The upstream groups and which names each answers. `G` is the driver's handle on a
/// group (its sockets and its [`pool::Pool`](crate::pool::Pool)).
pub struct Upstreams<G> {
    pub routes: Routes<usize>,
    /// Indexed by `routes`; 0 is the `[DNSProxy] Upstream` group.
    pub groups: Vec<G>,
}

impl<G> Upstreams<G> {
    /// The group that answers `question`, with its index.
    pub fn group_for(&self, question: &Question) -> (usize, &G) {
        let index = *self.routes.lookup(question);
        (index, &self.groups[index])
    }
}

/// The resolver's data, shared by every front end and read without locks: each part is
/// swapped whole when the control socket changes it.
pub struct Resolver<G> {
    blocklist: ArcSwap<BlockList>,
    local: ArcSwap<LocalData>,
    cache: Option<Cache>,
    upstreams: ArcSwap<Upstreams<G>>,
}

/// What [`Resolver::answer_inline`] did with a query.
pub enum Inline<'q> {
    /// Not a query: say nothing.
    Dropped,
    /// The answer is written.
    Answered(Answered<'q>),
    /// Memory does not know: hand it to [`Forwarding`](crate::Forwarding).
    Miss(Miss<'q>),
}

/// An answer written into the caller's buffer.
pub struct Answered<'q> {
    /// Its length.
    pub len: usize,
    pub path: AnswerPath,
    /// The query it answers, when it parsed.
    pub query: Option<Query<'q>>,
    /// A cache hit in the last tenth of its entry's lifetime: hand the query to
    /// [`Forwarding::prefetch`](crate::Forwarding::prefetch) to refresh the entry.
    pub prefetch: bool,
}

/// A query memory could not answer.
pub struct Miss<'q> {
    pub(crate) query: Query<'q>,
    pub(crate) protocol: Protocol,
    /// A local CNAME chain that leads out of local data, and the length of the chain
    /// alone, written in the caller's buffer: the answer under overload.
    pub(crate) chain: Option<(usize, Arc<CnameChain>)>,
}

impl<'q> Miss<'q> {
    pub fn query(&self) -> &Query<'q> {
        &self.query
    }
}

/// What memory knows about a query.
enum FromMemory {
    /// The answer is written, `len` bytes; `bool`: a cache hit due for prefetch.
    Answered(usize, AnswerPath, bool),
    /// A local CNAME chain that leads out of local data, written alone (`len` bytes).
    Chain(usize, Arc<CnameChain>),
    /// Nothing: ask upstream.
    Unknown,
}

impl<G> Resolver<G> {
    pub fn new(
        blocklist: BlockList,
        local: LocalData,
        cache: Option<Cache>,
        upstreams: Upstreams<G>,
    ) -> Self {
        Resolver {
            blocklist: ArcSwap::from_pointee(blocklist),
            local: ArcSwap::from_pointee(local),
            cache,
            upstreams: ArcSwap::from_pointee(upstreams),
        }
    }

    /// Answers `query` from memory into `out` if it can. `out` must hold
    /// [`MAX_MESSAGE_LEN`] bytes; a UDP answer is cut to what the client takes.
    pub fn answer_inline<'q>(
        &self,
        query: &'q [u8],
        protocol: Protocol,
        now: Instant,
        out: &mut [u8],
    ) -> Inline<'q> {
        let parsed = match tundns_dns::parse_query(query) {
            Ok(parsed) => parsed,
            Err(QueryError::Drop) => return Inline::Dropped,
            Err(QueryError::Answer(rcode)) => {
                let len = tundns_dns::write_error_response(query, rcode, out);
                return answered(len, AnswerPath::Formerr, None, false);
            }
        };
        match self.answer_from_memory(&parsed, now, out) {
            FromMemory::Answered(len, path, prefetch) => {
                let len = fit_for_client(&parsed, protocol, out, len);
                answered(len, path, Some(parsed), prefetch)
            }
            FromMemory::Chain(chain_len, chain) => {
                if let Some((answer, path)) = self.chain_from_memory(&parsed, &chain, now)
                    && let Some(written) = out.get_mut(..answer.len())
                {
                    written.copy_from_slice(&answer);
                    let len = fit_for_client(&parsed, protocol, out, answer.len());
                    return answered(len, path, Some(parsed), false);
                }
                Inline::Miss(Miss {
                    query: parsed,
                    protocol,
                    chain: Some((chain_len, chain)),
                })
            }
            FromMemory::Unknown => Inline::Miss(Miss {
                query: parsed,
                protocol,
                chain: None,
            }),
        }
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
    pub fn upstreams(&self) -> Arc<Upstreams<G>> {
        self.upstreams.load_full()
    }

    /// Puts `upstreams` in use for queries from now on; queries already asking keep theirs.
    pub fn set_upstreams(&self, upstreams: Upstreams<G>) {
        self.upstreams.store(Arc::new(upstreams));
    }

    /// Blocklist, then local data, then the cache: the first that knows writes the answer.
    fn answer_from_memory(&self, query: &Query<'_>, now: Instant, out: &mut [u8]) -> FromMemory {
        if let Some(len) = self.blocklist.load().answer(query, out) {
            return FromMemory::Answered(len, AnswerPath::Blocked, false);
        }
        match self.local.load().answer(query, out) {
            Some(LocalAnswer::Complete(len)) => {
                return FromMemory::Answered(len, AnswerPath::Local, false);
            }
            Some(LocalAnswer::Chain(len, chain)) => return FromMemory::Chain(len, chain),
            None => {}
        }
        match self
            .cache
            .as_ref()
            .and_then(|c| c.lookup_hit(query, now, out))
        {
            Some(hit) => FromMemory::Answered(hit.len, AnswerPath::Cache, hit.prefetch),
            None => FromMemory::Unknown,
        }
    }

    /// The answer to `query`, whose local CNAME `chain` leads out of local data, when
    /// memory knows the chain's target: the chain, then the target's blocked or cached
    /// answer. The path is the target's.
    fn chain_from_memory(
        &self,
        query: &Query<'_>,
        chain: &CnameChain,
        now: Instant,
    ) -> Option<(Vec<u8>, AnswerPath)> {
        let asked = chain.target_query(query);
        let target = tundns_dns::parse_query(&asked).ok()?;
        let mut memory = vec![0; CHAIN_TARGET_BUFFER];
        let FromMemory::Answered(len, path, _) = self.answer_from_memory(&target, now, &mut memory)
        else {
            return None;
        };
        let answer = self.complete_chain(chain, query, &memory[..len])?;
        Some((answer, path))
    }

    /// The chain, then `target_answer`'s records about its target.
    pub(crate) fn complete_chain(
        &self,
        chain: &CnameChain,
        query: &Query<'_>,
        target_answer: &[u8],
    ) -> Option<Vec<u8>> {
        chain.complete(query, target_answer, MAX_MESSAGE_LEN, |name| {
            self.decides(name)
        })
    }

    /// Whether local data or the blocklist answers for `name`: an upstream's CNAME that
    /// leads there ends the chain it completes.
    fn decides(&self, name: &[u8]) -> bool {
        self.local.load().holds_name(name) || self.blocklist.load().blocks_name(name)
    }
}

fn answered<'q>(
    len: usize,
    path: AnswerPath,
    query: Option<Query<'q>>,
    prefetch: bool,
) -> Inline<'q> {
    if len == 0 {
        Inline::Dropped
    } else {
        Inline::Answered(Answered {
            len,
            path,
            query,
            prefetch,
        })
    }
}

/// Cuts a UDP answer in `out[..len]` to the client's limit, at a whole RRset, with TC set.
pub(crate) fn fit_for_client(
    query: &Query<'_>,
    protocol: Protocol,
    out: &mut [u8],
    len: usize,
) -> usize {
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

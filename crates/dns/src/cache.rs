//! The answer cache: upstream responses kept as wire bytes, answered by copying
//! and patching in place (ID, RD, the client's question spelling, TTLs counted
//! down), with no allocation and no re-encoding on a hit.
//!
//! What is cached (RFC 2308, RFC 8767):
//! - positive answers, for the smallest answer TTL clamped to
//!   [`CacheConfig::min_ttl`, `max_ttl`]; each record's TTL is clamped likewise;
//! - NXDOMAIN and NODATA with an SOA in the authority section, for the SOA's
//!   MINIMUM capped by the SOA's own TTL (and by any CNAME in the answer,
//!   [`CacheConfig::max_negative_ttl`] and `max_ttl`); the stored SOA's TTL becomes
//!   that negative TTL;
//! - SERVFAIL, for [`CacheConfig::servfail_ttl`] at most, and never in place of
//!   an entry that can still be served fresh or stale.
//!
//! Never cached: TC=1, other rcodes (extended ones included), opcodes other than
//! QUERY, responses that do not walk cleanly to their last byte, and answers
//! whose lifetime would be 0.
//!
//! Entries are stored with ID 0, a lowercase question, AA cleared and no OPT
//! record; a hit gets an OPT that mirrors the client's (see
//! [`adapt_response`](crate::adapt_response)). Expired entries stay until
//! evicted, so [`Cache::lookup_stale`] can serve them when every upstream fails,
//! with Extended DNS Error 3 (Stale Answer) for a client that sent EDNS.
//!
//! A blocked answer stored in place of an upstream's ([`Cache::insert_blocked`]: its
//! CNAME chain led to a blocked name) keeps, on every fresh hit, the Extended DNS Error
//! 15 (Blocked) the blocklist's own answers carry.
//!
//! Prefetch (as unbound's `prefetch: yes`): a hit in the last tenth of an entry's
//! lifetime says so ([`Hit::prefetch`]), so that the driver refreshes it in the
//! background while the client is answered at once. Only the first such hit on a
//! stored entry says so: an entry asks for one refresh at most, whether it succeeds
//! (a new entry replaces it) or not (it expires as if never prefetched). Entries that
//! live less than [`PREFETCH_MIN_LIFETIME`] are never prefetched.
//!
//! The cache outlives a restart through [`Cache::save`] and [`Cache::load`]
//! (the `persist` module): the file format, its bounds and its checks.

use core::fmt;
use core::hash::BuildHasher;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod persist;
pub use persist::{CACHE_FILE_MAGIC, CACHE_FILE_VERSION, LoadError, Loaded, checksum, fingerprint};

use quick_cache::{DefaultHashBuilder, Weighter};

use crate::block::BLOCKED;
use crate::query::{Query, Question};
use crate::response::{ExtendedError, append_extended_error};
use crate::rewrite::{append_client_opt, patch_for_client};
use crate::routes::Routes;
use crate::sections::{self, Record, Records, Section, effective_ttl};
use crate::synth::{TYPE_ANY, TYPE_SOA};
use crate::wire::{self, FLAGS_AA, HEADER_LEN};

/// TTL of a stale answer (RFC 8767 §5 recommends 30 seconds).
pub const STALE_TTL: u32 = 30;

/// Entries that live less than this many seconds are never prefetched: refreshing them
/// would cost an upstream query every few seconds per popular name.
pub const PREFETCH_MIN_LIFETIME: u32 = 10;

/// What a stale answer says about itself to a client that sent EDNS.
const STALE_ANSWER: ExtendedError<'static> = ExtendedError {
    code: ExtendedError::STALE_ANSWER,
    text: "",
};

const RCODE_MASK: u8 = 0x0f;
const RCODE_NOERROR: u8 = 0;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;
/// SOA RDATA ends with SERIAL, REFRESH, RETRY, EXPIRE, MINIMUM (32 bits each),
/// after two names of at least one byte each.
const SOA_MIN_RDATA_LEN: usize = 2 + 5 * 4;

const KEY_DNSSEC_OK: u8 = 1;
const KEY_CHECKING_DISABLED: u8 = 2;

/// Memory an entry costs besides its bytes: the key and value in quick_cache's
/// slab with its links and the index slot, a share of the ghost (recently
/// evicted) entries the eviction policy keeps, and the Arc allocation's
/// reference counts and allocator rounding. Calibrated by `tests/cache_memory.rs`.
const ENTRY_OVERHEAD: usize = 128;

/// Cache limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Bound on the memory the entries take, in bytes.
    pub max_bytes: usize,
    /// Shortest time a positive answer is kept (its TTLs are raised to this).
    pub min_ttl: Duration,
    /// Longest time any answer is kept (its TTLs are lowered to this).
    pub max_ttl: Duration,
    /// Longest time an NXDOMAIN or NODATA is kept, as unbound's
    /// `cache-max-negative-ttl`: a name that appears upstream shows within this.
    pub max_negative_ttl: Duration,
    /// How long past its expiry an answer may still be served when every
    /// upstream fails (RFC 8767); zero turns serve-stale off.
    pub serve_stale: Duration,
    /// How long a SERVFAIL is remembered; zero means never.
    pub servfail_ttl: Duration,
    /// Whether a hit in the last tenth of an entry's lifetime asks for a refresh.
    pub prefetch: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_bytes: 32 << 20,
            min_ttl: Duration::ZERO,
            max_ttl: Duration::from_secs(86_400),
            max_negative_ttl: Duration::from_secs(3600),
            serve_stale: Duration::from_secs(86_400),
            servfail_ttl: Duration::from_secs(5),
            prefetch: true,
        }
    }
}

/// A cached response.
#[derive(Clone)]
struct Entry {
    /// The message (`message_len` bytes), then the offset of every TTL field
    /// in it as a big-endian u16.
    stored: Arc<[u8]>,
    stored_at: Instant,
    /// Seconds the entry is fresh for.
    lifetime: u32,
    message_len: u16,
    /// `KEY_*` bits of the queries it answers.
    key_flags: u8,
    servfail: bool,
    /// The blocklist's answer in place of an upstream's.
    blocked: bool,
    /// Set by the one hit that asked for this entry's refresh; shared by the copies the
    /// map hands out.
    prefetch_claimed: Arc<AtomicBool>,
}

impl Entry {
    fn message(&self) -> &[u8] {
        &self.stored[..usize::from(self.message_len)]
    }

    fn ttl_offsets(&self) -> impl Iterator<Item = usize> + '_ {
        self.stored[usize::from(self.message_len)..]
            .chunks_exact(2)
            .map(|pair| usize::from(u16::from_be_bytes([pair[0], pair[1]])))
    }

    /// Writes the answer to `query` as a fresh hit `elapsed` seconds after storing: every
    /// TTL counted down, and a blocked answer's Extended DNS Error 15 (Blocked).
    fn write_fresh(&self, query: &Query<'_>, out: &mut [u8], elapsed: u32) -> Option<usize> {
        let explained = self.blocked.then_some(BLOCKED);
        self.write_answer(query, out, |ttl| ttl.saturating_sub(elapsed), explained)
    }

    /// Whether this entry was stored for `question` and these key flags (keys
    /// are hashes, so two questions may share one).
    fn answers(&self, question: &Question, key_flags: u8) -> bool {
        let name = question.name_wire();
        let fixed = HEADER_LEN + name.len();
        let message = self.message();
        self.key_flags == key_flags
            && message.get(HEADER_LEN..fixed) == Some(name)
            && wire::read_u16(message, fixed) == Some(question.qtype())
            && wire::read_u16(message, fixed + 2) == Some(question.qclass())
    }

    /// Age in whole seconds, and whether the entry is still fresh.
    fn age(&self, now: Instant) -> (Duration, bool) {
        let age = now.saturating_duration_since(self.stored_at);
        (age, age.as_secs() < u64::from(self.lifetime))
    }

    /// Whether a fresh entry `elapsed` seconds old is in the last tenth of its lifetime,
    /// and lives long enough to be worth refreshing.
    fn due_for_prefetch(&self, elapsed: u32) -> bool {
        !self.servfail
            && self.lifetime >= PREFETCH_MIN_LIFETIME
            && elapsed >= self.lifetime - self.lifetime / 10
    }

    /// [`due_for_prefetch`](Self::due_for_prefetch), for the first hit that asks only:
    /// one refresh per stored entry, however many hits race for it.
    fn claim_prefetch(&self, elapsed: u32) -> bool {
        self.due_for_prefetch(elapsed)
            && self
                .prefetch_claimed
                .compare_exchange(false, true, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Writes the answer to `query` into `out`, every TTL mapped by `ttl`, with
    /// `explained` in the OPT record of a client that sent EDNS.
    fn write_answer(
        &self,
        query: &Query<'_>,
        out: &mut [u8],
        ttl: impl Fn(u32) -> u32,
        explained: Option<ExtendedError<'_>>,
    ) -> Option<usize> {
        let message = self.message();
        let len = message.len();
        out.get_mut(..len)?.copy_from_slice(message);
        let question_end = HEADER_LEN + query.question().name_wire().len() + 4;
        patch_for_client(query, out, question_end);
        for at in self.ttl_offsets() {
            let field = &mut out[at..at + 4];
            let stored = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
            field.copy_from_slice(&ttl(stored).to_be_bytes());
        }
        let len = append_client_opt(query, 0, out, len)?;
        match explained {
            Some(error) if query.edns().is_some() => append_extended_error(out, len, error),
            _ => Some(len),
        }
    }
}

#[derive(Clone, Copy)]
struct EntryWeighter;

impl Weighter<u64, Entry> for EntryWeighter {
    fn weight(&self, _key: &u64, entry: &Entry) -> u64 {
        (entry.stored.len() + ENTRY_OVERHEAD) as u64
    }
}

/// The answer cache. `Send + Sync`; every method takes `&self`.
pub struct Cache {
    entries: quick_cache::sync::Cache<u64, Entry, EntryWeighter>,
    /// Keys the entries by a randomly seeded hash (an entry found by its hash
    /// is checked against the question before use).
    hasher: DefaultHashBuilder,
    config: CacheConfig,
    hits: AtomicU64,
    misses: AtomicU64,
    stale_hits: AtomicU64,
    /// Counts every change to the entries, so that a saver knows whether there is news.
    changes: AtomicU64,
}

/// A fresh answer [`Cache::lookup_hit`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// Its length.
    pub len: usize,
    /// The entry is in the last tenth of its lifetime and no hit before asked for its
    /// refresh: ask upstream again in the background, so that the next client finds it
    /// fresh (see the module doc).
    pub prefetch: bool,
}

impl Cache {
    pub fn new(config: CacheConfig) -> Self {
        let typical_weight = 100 + ENTRY_OVERHEAD;
        let entries = quick_cache::sync::Cache::with_weighter(
            (config.max_bytes / typical_weight).max(1),
            config.max_bytes as u64,
            EntryWeighter,
        );
        Cache {
            entries,
            hasher: DefaultHashBuilder::default(),
            config,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stale_hits: AtomicU64::new(0),
            changes: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// A fresh hit written into `out` as the answer to `query`: the client's ID
    /// and RD bit, its question as spelled (answer names that point into the
    /// question take that spelling too), every TTL counted down by the whole
    /// seconds spent in the cache, and an OPT record if the query has EDNS.
    /// `None` (a miss) when there is no fresh entry or it does not fit in `out`.
    /// Does not allocate.
    pub fn lookup(&self, query: &Query<'_>, now: Instant, out: &mut [u8]) -> Option<usize> {
        self.lookup_hit(query, now, out).map(|hit| hit.len)
    }

    /// [`lookup`](Self::lookup), also saying whether the entry is due for a prefetch
    /// (never when [`CacheConfig::prefetch`] is off). Does not allocate.
    pub fn lookup_hit(&self, query: &Query<'_>, now: Instant, out: &mut [u8]) -> Option<Hit> {
        let answer = self.fresh_answer(query, now, out);
        let counter = if answer.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        answer
    }

    /// [`lookup`](Self::lookup) again for a query whose miss is already counted, after
    /// an identical query may have filled the entry: a hit moves the query from the
    /// misses to the hits, a miss counts nothing, so each query counts once.
    pub fn lookup_again(&self, query: &Query<'_>, now: Instant, out: &mut [u8]) -> Option<usize> {
        let answer = self.fresh_answer(query, now, out)?.len;
        self.hits.fetch_add(1, Ordering::Relaxed);
        // Saturating: a caller that skipped `lookup` must not wrap the count.
        let _ = self
            .misses
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |misses| {
                misses.checked_sub(1)
            });
        Some(answer)
    }

    fn fresh_answer(&self, query: &Query<'_>, now: Instant, out: &mut [u8]) -> Option<Hit> {
        let entry = self.find(query)?;
        let (age, fresh) = entry.age(now);
        if !fresh {
            return None;
        }
        let elapsed = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
        let len = entry.write_fresh(query, out, elapsed)?;
        let prefetch = self.config.prefetch && entry.claim_prefetch(elapsed);
        Some(Hit { len, prefetch })
    }

    /// RFC 8767: an expired entry no more than [`CacheConfig::serve_stale`] past
    /// its expiry, written like [`lookup`](Self::lookup) but with every TTL set
    /// to [`STALE_TTL`] and, for a client that sent EDNS, Extended DNS Error 3 (Stale
    /// Answer). For when every upstream failed; a fresh entry is served as `lookup`
    /// would, a SERVFAIL entry never.
    pub fn lookup_stale(&self, query: &Query<'_>, now: Instant, out: &mut [u8]) -> Option<usize> {
        let entry = self.find(query).filter(|entry| !entry.servfail)?;
        let (age, fresh) = entry.age(now);
        if fresh {
            let elapsed = age.as_secs() as u32;
            return entry.write_fresh(query, out, elapsed);
        }
        if !self.servable_stale(&entry, age) {
            return None;
        }
        let len = entry.write_answer(query, out, |_| STALE_TTL, Some(STALE_ANSWER))?;
        self.stale_hits.fetch_add(1, Ordering::Relaxed);
        Some(len)
    }

    /// [`insert`](Self::insert)s `response` and returns it with each record's TTL as the
    /// cache keeps it (`min_ttl`, `max_ttl`, the negative caps), so that the first,
    /// forwarded answer tells a downstream cache what later hits will; `None` when the
    /// cache would not keep it, and the upstream's TTLs stand.
    pub fn insert_with_cached_ttls(
        &self,
        query: &Query<'_>,
        response: &[u8],
        now: Instant,
    ) -> Option<Vec<u8>> {
        let prepared = prepare(&self.config, query.question(), response)?;
        let message_len = usize::from(prepared.message_len);
        let mut clamped = response.to_vec();
        // The stored message has the response's layout up to its OPT record; the
        // offsets of its TTLs follow it.
        for at in prepared.stored[message_len..].chunks_exact(2) {
            let at = usize::from(u16::from_be_bytes([at[0], at[1]]));
            clamped[at..at + 4].copy_from_slice(&prepared.stored[at..at + 4]);
        }
        self.store(query.question(), key_flags(query), prepared, now);
        Some(clamped)
    }

    /// Stores an upstream `response` to `query` (see the module doc for what is
    /// kept and for how long). Returns whether it was stored.
    pub fn insert(&self, query: &Query<'_>, response: &[u8], now: Instant) -> bool {
        self.insert_as(query, response, false, now)
    }

    /// [`insert`](Self::insert)s the blocklist's `response` in place of an upstream's
    /// answer to `query`: its fresh hits carry Extended DNS Error 15 (Blocked), as the
    /// blocklist's own answers do.
    pub fn insert_blocked(&self, query: &Query<'_>, response: &[u8], now: Instant) -> bool {
        self.insert_as(query, response, true, now)
    }

    fn insert_as(&self, query: &Query<'_>, response: &[u8], blocked: bool, now: Instant) -> bool {
        prepare(&self.config, query.question(), response).is_some_and(|mut prepared| {
            prepared.blocked = blocked;
            self.store(query.question(), key_flags(query), prepared, now)
        })
    }

    /// Stores `prepared`, unless it is a SERVFAIL and a servable answer is kept, or it
    /// would not fit a shard. Returns whether it was stored.
    fn store(&self, question: &Question, key_flags: u8, prepared: Prepared, now: Instant) -> bool {
        let key = self.key(question, key_flags);
        if prepared.servfail
            && let Some(existing) = self.entries.get(&key)
            && existing.answers(question, key_flags)
            && !existing.servfail
        {
            let (age, fresh) = existing.age(now);
            if fresh || self.servable_stale(&existing, age) {
                return false;
            }
        }
        let entry = Entry {
            stored: prepared.stored.into(),
            stored_at: now,
            lifetime: prepared.lifetime,
            message_len: prepared.message_len,
            key_flags,
            servfail: prepared.servfail,
            blocked: prepared.blocked,
            prefetch_claimed: Arc::new(AtomicBool::new(false)),
        };
        if EntryWeighter.weight(&key, &entry) > self.entries.shard_capacity() {
            return false;
        }
        self.entries.insert(key, entry);
        self.changes.fetch_add(1, Ordering::Relaxed);
        true
    }

    pub fn clear(&self) {
        self.entries.clear();
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    /// A number that grows whenever an entry is stored or forgotten: equal numbers mean
    /// nothing was (entries evicted to make room are part of a store).
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// Forgets every entry for a name at or under one of `domains` (`"."` is every
    /// name): what a split-DNS route's old upstreams said must not shadow its new ones.
    /// Returns how many were forgotten; a domain that is not a name forgets nothing.
    pub fn forget_under(&self, domains: &[impl AsRef<str>]) -> usize {
        let mut under = Routes::new(false);
        for domain in domains {
            let _ = under.add(domain.as_ref(), true);
        }
        // Counted here: entries come and go meanwhile, so lengths before and after say
        // nothing.
        let forgotten = core::cell::Cell::new(0);
        self.entries.retain(|_, entry| {
            let keep = Question::read(&entry.stored, HEADER_LEN)
                .is_none_or(|(question, _)| !*under.lookup(&question));
            if !keep {
                forgotten.set(forgotten.get() + 1);
            }
            keep
        });
        self.changes.fetch_add(1, Ordering::Relaxed);
        forgotten.get()
    }

    /// Number of entries, expired ones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Memory the entries are counted as taking, in bytes.
    pub fn weight(&self) -> u64 {
        self.entries.weight()
    }

    /// Fresh answers served by [`lookup`](Self::lookup).
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// [`lookup`](Self::lookup) calls that found no fresh answer.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Expired answers served by [`lookup_stale`](Self::lookup_stale).
    pub fn stale_hits(&self) -> u64 {
        self.stale_hits.load(Ordering::Relaxed)
    }

    fn key(&self, question: &Question, key_flags: u8) -> u64 {
        self.hasher.hash_one((
            question.name_wire(),
            question.qtype(),
            question.qclass(),
            key_flags,
        ))
    }

    fn find(&self, query: &Query<'_>) -> Option<Entry> {
        let key_flags = key_flags(query);
        let entry = self.entries.get(&self.key(query.question(), key_flags))?;
        entry.answers(query.question(), key_flags).then_some(entry)
    }

    /// Whether an expired entry of this age may still be served stale.
    fn servable_stale(&self, entry: &Entry, age: Duration) -> bool {
        !entry.servfail
            && !self.config.serve_stale.is_zero()
            && age <= Duration::from_secs(u64::from(entry.lifetime)) + self.config.serve_stale
    }
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("len", &self.len())
            .field("weight", &self.weight())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn key_flags(query: &Query<'_>) -> u8 {
    let mut flags = 0;
    if query.edns().is_some_and(|edns| edns.dnssec_ok) {
        flags |= KEY_DNSSEC_OK;
    }
    if query.checking_disabled() {
        flags |= KEY_CHECKING_DISABLED;
    }
    flags
}

/// A response ready to store.
struct Prepared {
    stored: Vec<u8>,
    message_len: u16,
    lifetime: u32,
    servfail: bool,
    /// See [`Entry::blocked`].
    blocked: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Positive,
    Negative,
    ServFail,
}

fn secs(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

/// Checks `response` against the caching rules and builds what to store.
fn prepare(config: &CacheConfig, question: &Question, response: &[u8]) -> Option<Prepared> {
    let name = question.name_wire();
    let question_end = HEADER_LEN + name.len() + 4;
    if response.len() < HEADER_LEN
        || response[2] & (wire::FLAGS_QR | wire::FLAGS_OPCODE_MASK | wire::FLAGS_TC)
            != wire::FLAGS_QR
        || wire::read_u16(response, 4) != Some(1)
        || wire::name_equals(response, HEADER_LEN, name) != Some(question_end - 4)
        || wire::read_u16(response, question_end - 4) != Some(question.qtype())
        || wire::read_u16(response, question_end - 2) != Some(question.qclass())
    {
        return None;
    }
    let walk = sections::walk(response)?;
    if walk.end != response.len() {
        return None;
    }
    if let Some(opt) = &walk.opt
        && (!opt.is_last || opt.record.ttl >> 24 != 0)
    {
        return None;
    }
    let message_len = walk.end_without_opt();

    let (min_ttl, max_ttl) = (secs(config.min_ttl), secs(config.max_ttl));
    let max_negative_ttl = secs(config.max_negative_ttl).min(max_ttl);
    let positive_ttl = |ttl: u32| effective_ttl(ttl).clamp(min_ttl.min(max_ttl), max_ttl);
    let mut answer_ttl = u32::MAX;
    let mut has_answer = false;
    let mut negative_ttl = None;
    for record in Records::new(response)? {
        let record = record.ok()?;
        match record.section {
            Section::Answer => {
                answer_ttl = answer_ttl.min(effective_ttl(record.ttl));
                has_answer |= answers_qtype(&record, question.qtype());
            }
            Section::Authority if record.rtype == TYPE_SOA && negative_ttl.is_none() => {
                negative_ttl = Some(soa_negative_ttl(response, &record)?);
            }
            _ => {}
        }
    }
    let rcode = response[3] & RCODE_MASK;
    let (kind, lifetime) = match rcode {
        RCODE_SERVFAIL => (Kind::ServFail, secs(config.servfail_ttl)),
        RCODE_NOERROR if has_answer => (Kind::Positive, positive_ttl(answer_ttl)),
        RCODE_NOERROR | RCODE_NXDOMAIN => (
            Kind::Negative,
            negative_ttl?.min(answer_ttl).min(max_negative_ttl),
        ),
        _ => return None,
    };
    if lifetime == 0 {
        return None;
    }

    let mut stored = Vec::with_capacity(message_len + 2 * 16);
    stored.extend_from_slice(&response[..message_len]);
    stored[..2].fill(0);
    stored[2] &= !FLAGS_AA;
    stored[HEADER_LEN..HEADER_LEN + name.len()].copy_from_slice(name);
    if walk.opt.is_some() {
        let additional = wire::read_u16(&stored, 10)? - 1;
        wire::write_u16(&mut stored, 10, additional);
    }
    for record in Records::new(response)? {
        let record = record.ok()?;
        if record.is_opt() {
            continue;
        }
        let ttl = effective_ttl(record.ttl);
        let ttl = match kind {
            Kind::Positive => positive_ttl(ttl),
            Kind::Negative if record.section == Section::Authority && record.rtype == TYPE_SOA => {
                ttl.min(soa_negative_ttl(response, &record)?)
                    .min(max_negative_ttl)
            }
            Kind::Negative => ttl.min(max_negative_ttl),
            Kind::ServFail => ttl.min(lifetime),
        };
        let at = record.ttl_at();
        stored[at..at + 4].copy_from_slice(&ttl.to_be_bytes());
        stored.extend_from_slice(&u16::try_from(at).ok()?.to_be_bytes());
    }
    Some(Prepared {
        stored,
        message_len: u16::try_from(message_len).ok()?,
        lifetime,
        servfail: kind == Kind::ServFail,
        blocked: false,
    })
}

fn answers_qtype(record: &Record, qtype: u16) -> bool {
    record.rtype == qtype || qtype == TYPE_ANY
}

/// RFC 2308 §5: the lesser of the SOA's TTL and its MINIMUM field.
fn soa_negative_ttl(msg: &[u8], soa: &Record) -> Option<u32> {
    if soa.end - soa.rdata_start() < SOA_MIN_RDATA_LEN {
        return None;
    }
    let minimum = msg.get(soa.end - 4..soa.end)?;
    let minimum = u32::from_be_bytes([minimum[0], minimum[1], minimum[2], minimum[3]]);
    Some(effective_ttl(soa.ttl).min(effective_ttl(minimum)))
}

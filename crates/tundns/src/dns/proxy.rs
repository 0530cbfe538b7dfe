//! The DNS proxy's driver: it runs the sans-IO [`tundns_resolver`] on the TUN reader and
//! in tasks.
//!
//! Everything memory can answer is answered inline, on the TUN reader, into a reused
//! buffer ([`Resolver::answer_inline`]): malformed queries, the blocklist, local data and
//! cache hits. A miss goes to [`Forwarding`], behind a mutex the TUN reader takes only
//! then; each upstream request it yields runs in a task through its group's
//! [`UpstreamPool`], and the answers come back to their clients from that task: written
//! into the TUN for UDP, or handed to whoever awaits a [`Forward`] (DNS over TCP, the
//! control socket). Every answer is counted, and logged when the query log is on.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

use arc_swap::Guard;
use tokio::sync::oneshot;
use tundns_dns::cache::Cache;
use tundns_dns::rate_limit::{RateLimiter, RateVerdict, write_slip};
use tundns_dns::{BlockList, LocalData, MAX_MESSAGE_LEN, Question, Routes};
use tundns_filter::{Datagram, SourcePolicy, TunWriter, UdpService};
use tundns_resolver::pool::{Answer, ResolveError};
use tundns_resolver::{
    Admission, AnswerPath, Finished, Forwarding, Inline, Prefetch, RequestId, Resolver,
    UpstreamRequest,
};
use tundns_upstream::UpstreamPool;

use crate::dns::counters::Transport;

pub use crate::dns::counters::DnsStats;
use crate::dns::query_log::{Arrival, QueryLog};

/// The upstream groups and which names each answers.
pub type Upstreams = tundns_resolver::Upstreams<UpstreamPool>;

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
    /// Queries waiting for upstreams at once, at most.
    pub max_in_flight: usize,
    /// UDP answers a second to one client network other than this host; `None` is off.
    pub rate_limit: Option<NonZeroU32>,
    /// The fingerprint of the DNS config, for the cache file (see `cache_file`).
    pub cache_fingerprint: u64,
}

/// Where a waiting client's answer goes.
enum ReplyTo {
    /// Into the TUN, from the virtual IP the query went to.
    Udp {
        tun: TunWriter,
        server: SocketAddr,
        client: SocketAddr,
    },
    /// To whoever awaits the [`Forward`].
    Waiter(oneshot::Sender<Resolved>),
}

/// A client waiting for the upstreams.
struct Client {
    reply: ReplyTo,
    arrival: Arrival,
}

/// The resolver shared by the UDP and TCP front ends and the control socket.
pub struct DnsProxy {
    resolver: Resolver<UpstreamPool>,
    forwarding: Mutex<Forwarding<Client, UpstreamPool>>,
    stats: DnsStats,
    query_log: OnceLock<QueryLog>,
    rate_limit: Option<Mutex<RateLimiter>>,
    /// Who is exempt from the rate limit beside loopback: this host's own addresses.
    this_host: OnceLock<Arc<dyn SourcePolicy>>,
    /// The fingerprint of the DNS config this proxy was built from, or of the blocklist
    /// reloaded since.
    cache_fingerprint: AtomicU64,
    /// Set once the routes change through the control socket.
    routes_changed: AtomicBool,
    /// Where upstream requests run: the runtime the proxy was made on, whichever thread
    /// took the query (the TUN reader, the encrypted DNS servers' thread). Other clients
    /// may wait on the same request, so it must outlive any one front end.
    upstream_runtime: Option<tokio::runtime::Handle>,
}

/// What to do with one client query. `W` is what the caller holds while the query
/// waits for the upstreams: a [`Forward`] to await, or nothing when the answer goes
/// straight into the TUN.
pub enum Verdict<W = Forward> {
    /// Not a query: say nothing.
    Drop,
    /// The answer is in the caller's buffer, this many bytes long.
    Answered(usize),
    /// Waiting for the upstreams.
    Forward(W),
}

impl DnsProxy {
    /// A resolver from its parts.
    pub fn new(parts: ResolverParts) -> Arc<Self> {
        let upstreams = Upstreams {
            routes: parts.routes,
            groups: parts.groups,
        };
        Arc::new(Self {
            resolver: Resolver::new(parts.blocklist, parts.local, parts.cache, upstreams),
            forwarding: Mutex::new(Forwarding::new(parts.max_in_flight)),
            stats: DnsStats::default(),
            query_log: OnceLock::new(),
            rate_limit: parts
                .rate_limit
                .map(|rate| Mutex::new(RateLimiter::new(rate))),
            this_host: OnceLock::new(),
            cache_fingerprint: AtomicU64::new(parts.cache_fingerprint),
            routes_changed: AtomicBool::new(false),
            upstream_runtime: tokio::runtime::Handle::try_current().ok(),
        })
    }

    /// The fingerprint of the DNS config this proxy was built from, or last reloaded
    /// (the blocklist), which its cache file carries.
    pub fn cache_fingerprint(&self) -> u64 {
        self.cache_fingerprint.load(Ordering::Relaxed)
    }

    /// The fingerprint of the DNS config now in use, after a reload: the cache file is
    /// saved under it, so that the next start, which computes it afresh, keeps the file.
    pub fn set_cache_fingerprint(&self, fingerprint: u64) {
        self.cache_fingerprint.store(fingerprint, Ordering::Relaxed);
    }

    /// Whether the routes changed through the control socket since the start: the cache
    /// may hold answers from upstreams the config does not route to.
    pub fn routes_changed(&self) -> bool {
        self.routes_changed.load(Ordering::Relaxed)
    }

    /// Exempts `this_host`'s addresses from the rate limit, as loopback is: answers to this
    /// host amplify nothing. Only the first policy set is kept.
    pub fn set_this_host(&self, this_host: Arc<dyn SourcePolicy>) {
        let _ = self.this_host.set(this_host);
    }

    /// Whether a UDP query from `source` may be answered now, by the rate limit.
    fn rate_verdict(&self, source: IpAddr, now: Instant) -> RateVerdict {
        let Some(limiter) = &self.rate_limit else {
            return RateVerdict::Answer;
        };
        let exempt = source.to_canonical().is_loopback()
            || self
                .this_host
                .get()
                .is_some_and(|this_host| this_host.admits(source));
        if exempt {
            return RateVerdict::Answer;
        }
        limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .check(source, now)
    }

    /// Logs every query from now on to `log`. Only the first log set is kept.
    pub fn set_query_log(&self, log: QueryLog) {
        let _ = self.query_log.set(log);
    }

    /// Queries being resolved upstream now, and the most allowed at once.
    pub fn upstream_in_flight(&self) -> (usize, usize) {
        self.forwarding().waiting()
    }

    /// The proxy's counters.
    pub fn stats(&self) -> &DnsStats {
        &self.stats
    }

    /// The answer cache, if on.
    pub fn cache(&self) -> Option<&Cache> {
        self.resolver.cache()
    }

    /// The blocklist now in use.
    pub fn blocklist(&self) -> Guard<Arc<BlockList>> {
        self.resolver.blocklist()
    }

    /// Puts `blocklist` in use for every query from now on; a different list empties the
    /// cache (see [`Resolver::set_blocklist`]).
    pub fn set_blocklist(&self, blocklist: BlockList) {
        self.resolver.set_blocklist(blocklist);
    }

    /// The local data now in use.
    pub fn local(&self) -> Guard<Arc<LocalData>> {
        self.resolver.local()
    }

    /// Puts `local` in use for every query from now on.
    pub fn set_local(&self, local: LocalData) {
        self.resolver.set_local(local);
    }

    /// The routes and upstream groups now in use.
    pub fn upstreams(&self) -> Arc<Upstreams> {
        self.resolver.upstreams()
    }

    /// Puts `upstreams` in use for queries from now on; queries already asking keep theirs.
    pub fn set_upstreams(&self, upstreams: Upstreams) {
        self.resolver.set_upstreams(upstreams);
        self.routes_changed.store(true, Ordering::Relaxed);
    }

    /// Answers `query` from memory into `out` if it can, or hands back a [`Forward`].
    ///
    /// `out` must hold [`MAX_MESSAGE_LEN`] bytes. UDP answers are cut to what the client
    /// takes.
    pub fn accept(self: &Arc<Self>, query: &[u8], transport: Transport, out: &mut [u8]) -> Verdict {
        self.accept_from(None, query, transport, out)
    }

    /// [`accept`](Self::accept) for a query from `client`, whom the query log names.
    pub fn accept_from(
        self: &Arc<Self>,
        client: Option<SocketAddr>,
        query: &[u8],
        transport: Transport,
        out: &mut [u8],
    ) -> Verdict {
        let waiter = || {
            let (sender, receiver) = oneshot::channel();
            (ReplyTo::Waiter(sender), Forward { receiver })
        };
        self.accept_with(client, query, transport, out, waiter)
    }

    /// Answers from memory, or queues the query for the upstreams with the reply target
    /// `reply` makes (only then, so an inline answer costs nothing more).
    fn accept_with<W>(
        self: &Arc<Self>,
        client: Option<SocketAddr>,
        query: &[u8],
        transport: Transport,
        out: &mut [u8],
        reply: impl FnOnce() -> (ReplyTo, W),
    ) -> Verdict<W> {
        let now = Instant::now();
        if transport == Transport::Udp
            && let Some(client) = client
        {
            match self.rate_verdict(client.ip(), now) {
                RateVerdict::Answer => {}
                RateVerdict::Slip => {
                    self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    return match write_slip(query, out) {
                        0 => Verdict::Drop,
                        len => Verdict::Answered(len),
                    };
                }
                RateVerdict::Drop => {
                    self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    return Verdict::Drop;
                }
            }
        }
        let arrival = Arrival::now(client, transport, self.query_log.get().is_some());
        let miss = match self
            .resolver
            .answer_inline(query, transport.protocol(), now, out)
        {
            Inline::Dropped => {
                self.observe(&arrival, None, AnswerPath::Dropped, &[], None);
                return Verdict::Drop;
            }
            Inline::Answered(answered) => {
                let question = answered.query.as_ref().map(|query| query.question());
                let answer = &out[..answered.len];
                self.observe(&arrival, question, answered.path, answer, None);
                if answered.prefetch
                    && let Some(query) = &answered.query
                {
                    self.prefetch(query);
                }
                return Verdict::Answered(answered.len);
            }
            Inline::Miss(miss) => miss,
        };
        let question = miss.query().question().clone();
        let (reply, waiter) = reply();
        let client = Client { reply, arrival };
        let mut forwarding = self.forwarding();
        match forwarding.handle_miss(&self.resolver, client, miss, now, out) {
            Admission::Answered { client, len, path } => {
                drop(forwarding);
                let answer = &out[..len];
                self.observe(&client.arrival, Some(&question), path, answer, None);
                Verdict::Answered(len)
            }
            Admission::Waiting { collapsed } => {
                if collapsed {
                    self.stats.collapsed.fetch_add(1, Ordering::Relaxed);
                }
                while let Some(request) = forwarding.poll_request() {
                    self.spawn_upstream(request);
                }
                Verdict::Forward(waiter)
            }
        }
    }

    /// Refreshes the cache entry that just answered `query` in its last tenth of life, in
    /// a task of its own (see [`Forwarding::prefetch`]). A client answered from the cache
    /// never waits for the forwarding table: when it is busy or full the refresh is left
    /// out (and counted), and the entry expires as if never prefetched (the cache asks
    /// once per entry).
    fn prefetch(self: &Arc<Self>, query: &tundns_dns::Query<'_>) {
        let skipped = || {
            self.stats
                .prefetches_skipped
                .fetch_add(1, Ordering::Relaxed)
        };
        let mut forwarding = match self.forwarding.try_lock() {
            Ok(forwarding) => forwarding,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                skipped();
                return;
            }
        };
        match forwarding.prefetch(&self.resolver, query) {
            Prefetch::Asked => {}
            Prefetch::InFlight => return,
            Prefetch::Full => {
                skipped();
                return;
            }
        }
        self.stats.prefetches.fetch_add(1, Ordering::Relaxed);
        while let Some(request) = forwarding.poll_request() {
            self.spawn_upstream(request);
        }
    }

    /// Runs `request` on the upstream runtime (the caller's, for a proxy made outside one).
    fn spawn_upstream(self: &Arc<Self>, request: UpstreamRequest<UpstreamPool>) {
        let asking = self.clone().ask_upstream(request);
        match &self.upstream_runtime {
            Some(runtime) => drop(runtime.spawn(asking)),
            None => drop(tokio::spawn(asking)),
        }
    }

    /// Resolves one request through its upstream group, then answers everyone waiting.
    async fn ask_upstream(self: Arc<Self>, request: UpstreamRequest<UpstreamPool>) {
        let mut unanswered = Unanswered {
            proxy: &self,
            request: Some(request.id),
        };
        let result = request
            .group
            .resolve_from(&request.query, request.protocol)
            .await;
        unanswered.request = None;
        self.answer(request.id, result);
    }

    /// Hands the group's result for `request` to the forwarding table, then answers
    /// everyone who waited for it.
    fn answer(&self, request: RequestId, result: Result<Answer, ResolveError>) {
        let settled = self.forwarding().handle_upstream_answer(
            &self.resolver,
            request,
            result,
            Instant::now(),
        );
        // Each client's answer is made outside the lock the TUN reader takes on a miss.
        for answer in settled
            .into_iter()
            .flat_map(|settled| settled.answers(&self.resolver, Instant::now()))
        {
            self.deliver(answer);
        }
    }

    /// Counts and logs an answer for a client that waited, and sends it.
    fn deliver(&self, finished: Finished<Client>) {
        let Finished {
            client,
            answer,
            path,
            question,
            upstream,
        } = finished;
        let arrival = &client.arrival;
        self.observe(arrival, Some(&question), path, &answer, upstream.clone());
        match client.reply {
            ReplyTo::Udp {
                tun,
                server,
                client,
            } => tun.send_udp(server, client, &answer),
            ReplyTo::Waiter(sender) => {
                let _ = sender.send(Resolved {
                    answer,
                    path,
                    upstream,
                });
            }
        }
    }

    /// Counts a finished query and, with the query log on, queues its line.
    fn observe(
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

    fn forwarding(&self) -> MutexGuard<'_, Forwarding<Client, UpstreamPool>> {
        // The table stays consistent even if a holder panicked.
        self.forwarding
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Answers a request's waiting clients as if every upstream failed when its task ends
/// without an answer (a panic, or the runtime shutting down): they get SERVFAIL or a stale
/// answer, and their slots come back.
struct Unanswered<'a> {
    proxy: &'a DnsProxy,
    request: Option<RequestId>,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        // Answering needs no runtime (TUN writes never wait), so this holds while the
        // runtime shuts down too.
        if let Some(request) = self.request.take() {
            let failed = ResolveError::AllFailed {
                attempts: 0,
                soft_answer: None,
            };
            self.proxy.answer(request, Err(failed));
        }
    }
}

/// One query waiting for the upstreams.
pub struct Forward {
    receiver: oneshot::Receiver<Resolved>,
}

impl Forward {
    /// The answer, always something to send: the upstream's answer, a stale one when
    /// every upstream failed, or SERVFAIL.
    pub async fn resolve(self) -> Vec<u8> {
        self.resolve_from().await.answer
    }

    /// [`resolve`](Self::resolve), with how the answer was found and the upstream that
    /// gave it, when one did.
    pub async fn resolve_from(self) -> Resolved {
        self.receiver.await.unwrap_or_else(|_| Resolved {
            answer: Vec::new(),
            path: AnswerPath::Dropped,
            upstream: None,
        })
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

thread_local! {
    /// The inline answer buffer of each TUN reader thread: room for the TUN's framing, the
    /// IP and UDP headers and the largest message, allocated once.
    static UDP_REPLY: RefCell<Vec<u8>> =
        RefCell::new(vec![0; TunWriter::MAX_UDP_PAYLOAD_OFFSET + MAX_MESSAGE_LEN]);
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
        UDP_REPLY.with_borrow_mut(|buf| {
            // The answer is written where the UDP payload goes, then headers in front of it.
            let offset = TunWriter::udp_payload_offset(&client);
            let reply = || {
                let tun = tun.clone();
                (
                    ReplyTo::Udp {
                        tun,
                        server,
                        client,
                    },
                    (),
                )
            };
            let out = &mut buf[offset..];
            let verdict =
                self.proxy
                    .accept_with(Some(client), datagram.payload, Transport::Udp, out, reply);
            if let Verdict::Answered(len) = verdict {
                tun.send_udp_in_place(buf, server, client, len);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::base::iana::Rtype;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;
    use tokio::net::UdpSocket;
    use tundns_dns::cache::CacheConfig;
    use tundns_test_support::dns::{Answer, Query};
    use tundns_upstream::{PoolConfig, Upstream};

    /// A query for `name` A IN, without EDNS.
    fn query(id: u16, name: &str) -> Vec<u8> {
        Query::new(name, Rtype::A).id(id).build()
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
                let answer = (0..records)
                    .fold(
                        Answer::to(&buf[..len]).compressed().recursion_available(),
                        |answer, i| answer.a(300, [203, 0, 113, i]),
                    )
                    .build();
                let _ = socket.send_to(&answer, from).await;
            }
        });
        (address, seen)
    }

    fn proxy(upstream: SocketAddr, max_in_flight: usize, cache: bool) -> Arc<DnsProxy> {
        DnsProxy::new(ResolverParts {
            cache: cache.then(|| Cache::new(CacheConfig::default())),
            max_in_flight,
            ..parts(upstream)
        })
    }

    /// A resolver with one UDP upstream, no cache and no rate limit.
    fn parts(upstream: SocketAddr) -> ResolverParts {
        let spec = Upstream::Udp(upstream);
        let pool = UpstreamPool::new(vec![spec], PoolConfig::default()).unwrap();
        ResolverParts {
            blocklist: BlockList::new(tundns_dns::BlockMode::NxDomain, Duration::from_secs(60)),
            local: tundns_dns::LocalDataBuilder::new().build(),
            cache: None,
            routes: Routes::new(0),
            groups: vec![pool],
            max_in_flight: 8,
            rate_limit: None,
            cache_fingerprint: 0,
        }
    }

    fn rcode(answer: &[u8]) -> u8 {
        answer[3] & 0x0f
    }

    #[tokio::test]
    async fn a_hit_due_for_prefetch_never_waits_for_the_forwarding_table() {
        let (upstream, seen) = fake_upstream(1).await;
        let proxy = proxy(upstream, 8, true);
        let request = query(1, "popular.lab.test");
        let answer = Answer::to(&request).a(100, [192, 0, 2, 1]).build();
        let Some(stored_at) = Instant::now().checked_sub(Duration::from_secs(95)) else {
            return; // Too soon after boot to date an entry back.
        };
        let parsed = tundns_dns::parse_query(&request).unwrap();
        assert!(proxy.cache().unwrap().insert(&parsed, &answer, stored_at));
        // Someone holds the table (a slow upstream answer being settled, say).
        let held = proxy.forwarding();
        let (done, answered) = std::sync::mpsc::channel();
        let client = {
            let (proxy, runtime) = (proxy.clone(), tokio::runtime::Handle::current());
            std::thread::spawn(move || {
                let _runtime = runtime.enter();
                let mut out = vec![0; MAX_MESSAGE_LEN];
                let verdict = proxy.accept(&query(2, "popular.lab.test"), Transport::Udp, &mut out);
                let _ = done.send(matches!(verdict, Verdict::Answered(_)));
            })
        };
        let verdict = answered.recv_timeout(Duration::from_secs(2));
        drop(held);
        client.join().unwrap();
        assert_eq!(verdict, Ok(true), "answered from the cache without waiting");
        // The refresh was left out, and counted; a later hit on the same entry asks no more.
        assert_eq!(proxy.stats.prefetches_skipped.load(Ordering::Relaxed), 1);
        let mut out = vec![0; MAX_MESSAGE_LEN];
        let verdict = proxy.accept(&query(3, "popular.lab.test"), Transport::Udp, &mut out);
        assert!(matches!(verdict, Verdict::Answered(_)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(seen.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn beyond_the_in_flight_bound_the_answer_is_refused_at_once() {
        let (upstream, _) = fake_upstream(1).await;
        let proxy = proxy(upstream, 1, false);
        let mut out = vec![0; MAX_MESSAGE_LEN];
        let first = proxy.accept(&query(1, "a.lab.test"), Transport::Udp, &mut out);
        assert!(matches!(first, Verdict::Forward(_)));
        match proxy.accept(&query(2, "b.lab.test"), Transport::Udp, &mut out) {
            Verdict::Answered(len) => {
                assert_eq!(&out[..2], &2u16.to_be_bytes());
                assert_eq!(rcode(&out[..len]), 5, "REFUSED");
            }
            _ => panic!("the second query must be refused while the first holds the only permit"),
        }
        // The slot is held until the upstream answers, not merely while someone waits.
        let Verdict::Forward(first) = first else {
            unreachable!("matched above")
        };
        first.resolve().await;
        let third = proxy.accept(&query(3, "c.lab.test"), Transport::Udp, &mut out);
        assert!(matches!(third, Verdict::Forward(_)), "the slot comes back");
        assert_eq!(proxy.stats().queries.by_path(AnswerPath::Refused), 1);
    }

    #[tokio::test]
    async fn over_the_rate_limit_a_network_is_slipped_then_dropped_but_this_host_never() {
        struct Only(IpAddr);
        impl SourcePolicy for Only {
            fn admits(&self, source: IpAddr) -> bool {
                source == self.0
            }
        }
        let (upstream, _) = fake_upstream(1).await;
        let proxy = DnsProxy::new(ResolverParts {
            rate_limit: NonZeroU32::new(2),
            max_in_flight: 64,
            ..parts(upstream)
        });
        let this_host: IpAddr = "192.0.2.2".parse().unwrap();
        proxy.set_this_host(Arc::new(Only(this_host)));
        let mut out = vec![0; MAX_MESSAGE_LEN];
        let mut ask = |client: IpAddr, id: u16| {
            let query = query(id, "a.lab.test");
            let from = Some(SocketAddr::new(client, 5353));
            match proxy.accept_from(from, &query, Transport::Udp, &mut out) {
                Verdict::Answered(len) if out[2] & 0x02 != 0 && len <= query.len() => "slip",
                Verdict::Drop => "drop",
                _ => "answer",
            }
        };
        let lan: IpAddr = "198.51.100.7".parse().unwrap();
        let seen: Vec<&str> = (0..5).map(|id| ask(lan, id)).collect();
        assert_eq!(seen, ["answer", "answer", "slip", "drop", "slip"]);
        for id in 0..5 {
            assert_eq!(ask(this_host, 10 + id), "answer");
            assert_eq!(ask("127.0.0.1".parse().unwrap(), 20 + id), "answer");
        }
        assert_eq!(proxy.stats().rate_limited.load(Ordering::Relaxed), 3);
        // Over TCP there is nothing to amplify: never limited.
        let tcp = proxy.accept_from(
            Some(SocketAddr::new(lan, 5353)),
            &query(30, "a.lab.test"),
            Transport::Tcp,
            &mut out,
        );
        assert!(matches!(tcp, Verdict::Forward(_)));
    }

    #[tokio::test]
    async fn malformed_query_with_readable_header_is_answered_formerr_inline() {
        let (upstream, seen) = fake_upstream(1).await;
        let proxy = proxy(upstream, 8, false);
        let mut bad = query(7, "a.lab.test");
        bad[12] = 70; // a label longer than 63
        let mut out = vec![0; MAX_MESSAGE_LEN];
        let Verdict::Answered(len) = proxy.accept(&bad, Transport::Udp, &mut out) else {
            panic!("FORMERR expected");
        };
        assert_eq!(rcode(&out[..len]), 1);
        assert!(matches!(
            proxy.accept(&bad[..5], Transport::Udp, &mut out),
            Verdict::Drop
        ));
        assert_eq!(seen.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_udp_answer_too_big_for_the_client_is_truncated_by_the_proxy() {
        // 40 records of 16 bytes: about 670 bytes, more than a client without EDNS takes.
        let (upstream, _) = fake_upstream(40).await;
        let proxy = proxy(upstream, 8, false);
        let mut out = vec![0; MAX_MESSAGE_LEN];
        let Verdict::Forward(forward) =
            proxy.accept(&query(9, "big.lab.test"), Transport::Udp, &mut out)
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
        let mut out = vec![0; MAX_MESSAGE_LEN];
        let Verdict::Forward(forward) =
            proxy.accept(&query(11, "www.lab.test"), Transport::Udp, &mut out)
        else {
            panic!("the first query goes upstream");
        };
        forward.resolve().await;
        let Verdict::Answered(len) =
            proxy.accept(&query(12, "WWW.lab.test"), Transport::Udp, &mut out)
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
            let mut out = vec![0; MAX_MESSAGE_LEN];
            match proxy.accept(&query(id, "www.lab.test"), Transport::Udp, &mut out) {
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
        let mut out = vec![0; MAX_MESSAGE_LEN];
        let forwards: Vec<Forward> = (0..20)
            .map(|id| {
                match proxy.accept(&query(100 + id, "same.lab.test"), Transport::Udp, &mut out) {
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

    #[test]
    fn a_request_whose_task_ends_unanswered_answers_its_clients_and_frees_their_slots() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (proxy, forward, _silent) = runtime.block_on(async {
            // An upstream that never answers, and a timeout longer than the test.
            let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let pool = UpstreamPool::new(
                vec![Upstream::Udp(silent.local_addr().unwrap())],
                PoolConfig {
                    attempt_timeout: Duration::from_secs(60),
                    ..PoolConfig::default()
                },
            )
            .unwrap();
            let proxy = DnsProxy::new(ResolverParts {
                blocklist: BlockList::new(tundns_dns::BlockMode::NxDomain, Duration::from_secs(60)),
                local: tundns_dns::LocalDataBuilder::new().build(),
                cache: None,
                routes: Routes::new(0),
                groups: vec![pool],
                max_in_flight: 8,
                rate_limit: None,
                cache_fingerprint: 0,
            });
            let mut out = vec![0; MAX_MESSAGE_LEN];
            let Verdict::Forward(forward) =
                proxy.accept(&query(31, "gone.lab.test"), Transport::Udp, &mut out)
            else {
                panic!("must be forwarded");
            };
            // Let the request's task start and wait on the silent upstream.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            (proxy, forward, silent)
        });
        assert_eq!(proxy.upstream_in_flight().0, 1);
        // Shutting the runtime down drops the request's task mid-wait.
        drop(runtime);
        let waiting = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let resolved = waiting
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(5), forward.resolve_from()).await
            })
            .expect("the waiting client is answered");
        assert_eq!(resolved.path, AnswerPath::Servfail);
        assert_eq!(rcode(&resolved.answer), 2);
        assert_eq!(proxy.upstream_in_flight().0, 0, "the slot came back");
    }
}

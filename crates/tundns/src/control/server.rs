//! The control socket of a running tunnel: `/run/tundns/<iface>.sock`, root-only, serving
//! the requests of `control_protocol` (status, records, routes, blocklist reload, cache
//! flush, traced queries). Changes swap the proxy's local data, blocklist or upstream table
//! whole, so queries in flight finish on what they started with. A bad request gets an
//! error reply and changes nothing; one connection's trouble never reaches another.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain::base::iana::Rtype;
use domain::base::{Message, MessageBuilder, Name, ParsedName, Record};
use domain::rdata::AllRecordData;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tundns_config::Config;
use tundns_host::paths::SocketDirectories;
use tundns_resolver::AnswerPath;
use tundns_upstream::{Protocol, Tunnel};

use crate::dns::counters::Transport;

use crate::control::protocol::{
    AnsweredBy, CacheStatus, Done, EncryptedStatus, GroupStatus, MAX_REQUEST_LINE, PeerStatus,
    ProxyStatus, QueryReport, Reply, Request, Status, UpstreamStatus, read_request,
};
use crate::dns::config as dns_config;
use crate::dns::proxy::{DnsProxy, Verdict};
use crate::dns::runtime::{LocalSource, RouteEntry, SplitRoutes};
use crate::observability::wireguard as wireguard_stats;
use tundns_dns::{MAX_MESSAGE_LEN, Query, is_truncated};

/// Clients served at once; more wait for a slot.
const MAX_CONNECTIONS: usize = 16;
/// A connection that sends nothing for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the UAPI socket gets to answer `get=1`.
const UAPI_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the control socket could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("control socket {path}: {reason}")]
    Unsafe { path: PathBuf, reason: String },
    #[error("control socket {0}: another tundns serves this interface")]
    InUse(PathBuf),
}

/// What the requests act on.
struct State {
    interface: String,
    uapi_socket: PathBuf,
    config: Config,
    /// Where `config` was read from, for errors about its lines.
    config_path: PathBuf,
    /// Held from reading the block lists to swapping them in, so that of two reloads at
    /// once the later read is the one in use.
    blocklist_reload: tokio::sync::Mutex<()>,
    /// `None` when the DNS proxy is off.
    dns: Option<Dns>,
    /// `None` when the virtual IPs serve no encrypted DNS.
    encrypted: Option<EncryptedStatus>,
}

struct Dns {
    proxy: Arc<DnsProxy>,
    /// The sources of the proxy's swappable parts; the lock orders changes.
    sources: Mutex<Sources>,
}

impl Dns {
    fn sources(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Sources {
    local: LocalSource,
    routes: SplitRoutes,
}

/// A serving control socket; [`ControlServer::shut_down`] (or drop) stops it and removes
/// the socket file.
pub struct ControlServer {
    path: PathBuf,
    task: JoinHandle<()>,
    /// Reloads the block lists on SIGHUP; `None` when the DNS proxy is off.
    hangups: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Starts serving `/run/tundns/<iface>.sock` for the tunnel of `config`. `dns` is the
    /// proxy and what its local data was built from, or `None` when the DNS proxy is off;
    /// DNS requests then get an error. Routes added through the tunnel go through
    /// `userspace` when tundns runs without a TUN.
    pub fn start(
        config: &Config,
        config_path: &Path,
        dns: Option<(Arc<DnsProxy>, LocalSource)>,
        encrypted: Option<EncryptedStatus>,
        userspace: Option<Tunnel>,
        sockets: &SocketDirectories,
    ) -> Result<Self, ControlError> {
        let path = sockets.control_socket(&config.interface_name);
        let dns = dns.map(|(proxy, local)| Dns {
            sources: Mutex::new(Sources {
                local,
                routes: SplitRoutes::from_config(config, &proxy.upstreams(), userspace),
            }),
            proxy,
        });
        let listener = bind(&path)?;
        let state = Arc::new(State {
            interface: config.interface_name.clone(),
            uapi_socket: sockets.uapi_socket(&config.interface_name),
            config: config.clone(),
            config_path: config_path.to_owned(),
            blocklist_reload: tokio::sync::Mutex::new(()),
            dns,
            encrypted,
        });
        let hangups = match &state.dns {
            Some(_) => {
                let hangups = Hangups::register().map_err(|source| ControlError::Io {
                    path: path.clone(),
                    source,
                })?;
                Some(tokio::spawn(hangups.run(state.clone())))
            }
            None => None,
        };
        let task = crate::supervise::spawn_essential("the control socket", serve(listener, state));
        tracing::info!(path = %path.display(), "control socket");
        Ok(Self {
            path,
            task,
            hangups,
        })
    }

    /// Stops serving and removes the socket.
    pub fn shut_down(self) {
        drop(self);
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(hangups) = &self.hangups {
            hangups.abort();
        }
        if let Err(error) = fs::remove_file(&self.path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), %error, "could not remove the control socket");
        }
    }
}

/// Creates the directory (0700, ours) and binds the socket (0600), refusing anything that
/// would let another user in.
fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let unsafe_path = |reason: String| ControlError::Unsafe {
        path: path.to_owned(),
        reason,
    };
    let io_error = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    let directory = path.parent().unwrap_or(Path::new("/"));
    match fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(directory)
    {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(io_error(error)),
    }
    let metadata = fs::symlink_metadata(directory).map_err(io_error)?;
    if !metadata.is_dir() || metadata.uid() != nix::unistd::geteuid().as_raw() {
        return Err(unsafe_path(format!(
            "{} is not a directory owned by this user",
            directory.display()
        )));
    }
    if metadata.mode() & 0o077 != 0 {
        fs::set_permissions(directory, fs::Permissions::from_mode(0o700)).map_err(io_error)?;
    }
    if fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_owned()));
        }
        // Left by a tundns that was killed.
        fs::remove_file(path).map_err(io_error)?;
    }
    let previous = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(previous);
    let listener = listener.map_err(io_error)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_error)?;
    let mode = fs::symlink_metadata(path).map_err(io_error)?.mode() & 0o777;
    if mode != 0o600 {
        let _ = fs::remove_file(path);
        return Err(unsafe_path(format!("mode {mode:o}, not 600")));
    }
    Ok(listener)
}

async fn serve(listener: UnixListener, state: Arc<State>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let state = state.clone();
                tokio::spawn(async move {
                    if let Err(error) = serve_connection(stream, &state).await {
                        tracing::debug!(%error, "control connection");
                    }
                    drop(slot);
                });
            }
            Err(error) => {
                tracing::warn!(%error, "control socket accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection(stream: UnixStream, state: &State) -> io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut reader).take(MAX_REQUEST_LINE as u64 + 1);
        let read = limited.read_until(b'\n', &mut line);
        let Ok(read) = tokio::time::timeout(IDLE_TIMEOUT, read).await else {
            return Ok(());
        };
        if read? == 0 {
            return Ok(());
        }
        if line.len() > MAX_REQUEST_LINE {
            let reply = Reply::Error(format!("request longer than {MAX_REQUEST_LINE} bytes"));
            writer.write_all(reply.to_line().as_bytes()).await?;
            return Ok(());
        }
        let reply = match read_request(&line) {
            None => continue,
            Some(Ok(request)) => handle(state, request).await,
            Some(Err(message)) => Reply::Error(message),
        };
        writer.write_all(reply.to_line().as_bytes()).await?;
    }
}

async fn handle(state: &State, request: Request) -> Reply {
    let result = match (request, &state.dns) {
        (Request::Status, _) => Ok(Reply::ok(status(state).await)),
        (Request::Stop, _) => stop(state),
        (_, None) => Err("the DNS proxy is off ([DNSProxy] Enabled = false)".into()),
        (Request::RecordsList, Some(dns)) => Ok(Reply::ok(dns.sources().local.entries())),
        (Request::RecordsAdd { record }, Some(dns)) => add_record(dns, &record),
        (Request::RecordsRemove { record }, Some(dns)) => remove_records(dns, &record),
        (Request::RoutesList, Some(dns)) => Ok(Reply::ok(dns.sources().routes.entries())),
        (
            Request::RoutesAdd {
                domains,
                upstreams,
                through_tunnel,
            },
            Some(dns),
        ) => add_route(&state.config, dns, &domains, &upstreams, through_tunnel).await,
        (Request::RoutesRemove { domain }, Some(dns)) => remove_route(dns, &domain).await,
        (Request::BlocklistReload, Some(dns)) => reload_blocklist(state, dns).await,
        (Request::Flush, Some(dns)) => Ok(flush(&dns.proxy)),
        (Request::Query { name, qtype, fresh }, Some(dns)) => {
            query(dns, &name, &qtype, fresh).await
        }
    };
    result.unwrap_or_else(Reply::Error)
}

/// Stops the tunnel the way SIGTERM does, so that one path takes everything down: the
/// process signals itself, and the reply goes out while shutdown begins.
fn stop(state: &State) -> Result<Reply, String> {
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM)
        .map_err(|error| format!("could not stop: {error}"))?;
    Ok(done(format!("{}: stopping", state.interface)))
}

fn done(message: String) -> Reply {
    tracing::info!("control: {message}");
    Reply::ok(Done { message })
}

fn add_record(dns: &Dns, record: &str) -> Result<Reply, String> {
    let mut sources = dns.sources();
    match sources.local.with_record(record)? {
        Some((next, local)) => {
            dns.proxy.set_local(local);
            sources.local = next;
            Ok(done(format!("added {}", record.trim())))
        }
        None => Ok(done(format!("{} is already there", record.trim()))),
    }
}

fn remove_records(dns: &Dns, pattern: &str) -> Result<Reply, String> {
    let mut sources = dns.sources();
    let (next, local, removed) = sources.local.without_records(pattern)?;
    dns.proxy.set_local(local);
    sources.local = next;
    Ok(done(format!(
        "removed {removed} record{} matching {}",
        if removed == 1 { "" } else { "s" },
        pattern.trim()
    )))
}

/// SIGHUP, registered before the first one can arrive.
struct Hangups(tokio::signal::unix::Signal);

impl Hangups {
    fn register() -> io::Result<Hangups> {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::hangup()).map(Hangups)
    }

    /// Reloads the block lists on every SIGHUP, as `tundns dns blocklist reload` does, so
    /// that `systemctl reload` picks up a list a cron job updated. (The query log reopens
    /// on the same signal, in `observability`.)
    async fn run(mut self, state: Arc<State>) {
        let Some(dns) = &state.dns else {
            return;
        };
        while self.0.recv().await.is_some() {
            if let Err(error) = reload_blocklist(&state, dns).await {
                tracing::warn!("SIGHUP: {error}");
            }
        }
    }
}

async fn reload_blocklist(state: &State, dns: &Dns) -> Result<Reply, String> {
    let _one_at_a_time = state.blocklist_reload.lock().await;
    let (config, path) = (state.config.clone(), state.config_path.clone());
    let proxy = dns.proxy.clone();
    // Lists run to hundreds of thousands of lines: read them, and compare them with the
    // list in use (which decides whether the cache is emptied), off the runtime's workers.
    let domains = tokio::task::spawn_blocking(move || {
        // Before the lists are read: should a file change in between, the fingerprint is
        // of the older text, and the next start discards the file rather than keep answers
        // filled under another list.
        let fingerprint = dns_config::cache_fingerprint(&config, &path);
        let blocklist = dns_config::blocklist(&config, &path)?;
        let domains = blocklist.len();
        proxy.set_blocklist(blocklist);
        // The cache file is saved under the config now in use, which the next start
        // computes afresh from the same files.
        proxy.set_cache_fingerprint(fingerprint);
        Ok::<_, tundns_config::ConfigError>(domains)
    })
    .await
    .map_err(|error| format!("reading the blocklist: {error}"))?
    .map_err(|error| format!("the blocklist is unchanged: {error}"))?;
    Ok(done(format!(
        "blocklist reloaded: {domains} domain{}",
        if domains == 1 { "" } else { "s" }
    )))
}

async fn add_route(
    config: &Config,
    dns: &Dns,
    domains: &[String],
    upstreams: &[String],
    through_tunnel: bool,
) -> Result<Reply, String> {
    {
        let mut sources = dns.sources();
        let (next, built) =
            sources
                .routes
                .with_route(config, domains, upstreams, through_tunnel)?;
        dns.proxy.set_upstreams(built);
        sources.routes = next;
    }
    Ok(done(format!(
        "routed {} to {}{}{}",
        domains.join(", "),
        upstreams.join(", "),
        if through_tunnel {
            " through the tunnel"
        } else {
            ""
        },
        forget_under(&dns.proxy, domains.to_vec()).await
    )))
}

/// Forgets what the cache learnt of names under `domains`, whose upstreams just changed
/// (an NXDOMAIN from the old ones would hide the new ones' names for up to a day); says
/// how much, for the reply. A large cache takes a while to walk: off the runtime, and
/// with the control lock free.
async fn forget_under(proxy: &Arc<DnsProxy>, domains: Vec<String>) -> String {
    let proxy = proxy.clone();
    let forgotten = tokio::task::spawn_blocking(move || {
        proxy.cache().map(|cache| cache.forget_under(&domains))
    })
    .await
    .ok()
    .flatten();
    match forgotten {
        Some(0) | None => String::new(),
        Some(forgotten) => format!("; forgot {forgotten} cached answers under it"),
    }
}

async fn remove_route(dns: &Dns, domain: &str) -> Result<Reply, String> {
    {
        let mut sources = dns.sources();
        let (next, built) = sources.routes.without_route(domain)?;
        dns.proxy.set_upstreams(built);
        sources.routes = next;
    }
    Ok(done(format!(
        "removed the route of {}{}",
        domain.trim(),
        forget_under(&dns.proxy, vec![domain.trim().to_owned()]).await
    )))
}

fn flush(proxy: &DnsProxy) -> Reply {
    match proxy.cache() {
        Some(cache) => {
            let entries = cache.len();
            cache.clear();
            done(format!("flushed {entries} cache entries"))
        }
        None => Reply::Error("the cache is off (Cache = off)".into()),
    }
}

async fn status(state: &State) -> Status {
    let (listen_port, peers) = match read_uapi(&state.uapi_socket).await {
        Ok(text) => parse_uapi(&text),
        Err(error) => {
            tracing::debug!(%error, "reading the UAPI socket");
            (None, Vec::new())
        }
    };
    Status {
        interface: state.interface.clone(),
        listen_port,
        peers,
        proxy: state
            .dns
            .as_ref()
            .map(|dns| proxy_status(&state.config, dns, state.encrypted.clone())),
    }
}

fn proxy_status(config: &Config, dns: &Dns, encrypted: Option<EncryptedStatus>) -> ProxyStatus {
    let proxy = &dns.proxy;
    let upstreams = proxy.upstreams();
    let routes = dns.sources().routes.clone();
    let groups = upstreams
        .groups
        .iter()
        .enumerate()
        .map(|(index, pool)| {
            let entry = routes.group_entry(index);
            let stats = pool.stats();
            GroupStatus {
                domains: entry
                    .as_ref()
                    .map(|e| e.domains.clone())
                    .unwrap_or_default(),
                through_tunnel: entry.is_some_and(|e| e.through_tunnel),
                upstreams: pool
                    .health()
                    .into_iter()
                    .map(|health| UpstreamStatus {
                        upstream: health.upstream.url(),
                        alive: health.alive,
                        rtt_ms: health.srtt.map(|rtt| rtt.as_secs_f64() * 1000.0),
                        failures: health.failures,
                    })
                    .collect(),
                queries: stats.queries,
                answered: stats.answered,
                timeouts: stats.timeouts,
            }
        })
        .collect();
    let cache = proxy.cache().map(|cache| {
        let (hits, misses) = (cache.hits(), cache.misses());
        CacheStatus {
            entries: cache.len(),
            bytes: cache.weight(),
            hits,
            misses,
            hit_ratio: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
        }
    });
    let stats = proxy.stats();
    let by_path = |path| stats.queries.by_path(path);
    let queries = [
        ("blocked", by_path(AnswerPath::Blocked)),
        ("local", by_path(AnswerPath::Local)),
        ("cache", by_path(AnswerPath::Cache)),
        ("upstream", by_path(AnswerPath::Forwarded)),
        (
            "collapsed",
            stats.collapsed.load(std::sync::atomic::Ordering::Relaxed),
        ),
        (
            "prefetched",
            stats.prefetches.load(std::sync::atomic::Ordering::Relaxed),
        ),
        (
            "prefetch_skipped",
            stats
                .prefetches_skipped
                .load(std::sync::atomic::Ordering::Relaxed),
        ),
        ("stale", by_path(AnswerPath::Stale)),
        ("servfail", by_path(AnswerPath::Servfail)),
        ("refused_overload", by_path(AnswerPath::Refused)),
        ("malformed", by_path(AnswerPath::Formerr)),
        ("dropped", by_path(AnswerPath::Dropped)),
    ]
    .into_iter()
    .map(|(name, count)| (name.to_owned(), count))
    .collect();
    ProxyStatus {
        addresses: config.dns_proxy.addresses.clone(),
        listen: config
            .dns_proxy
            .listen
            .iter()
            .map(|listen| listen.value)
            .collect(),
        local_records: proxy.local().len(),
        groups,
        cache,
        queries,
        encrypted,
    }
}

/// The answer of the interface's UAPI socket to `get=1`.
async fn read_uapi(path: &Path) -> io::Result<zeroize::Zeroizing<String>> {
    tokio::time::timeout(UAPI_TIMEOUT, wireguard_stats::get(path))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the UAPI socket did not answer"))?
}

/// The listen port and the peers of a UAPI `get=1` answer, read leniently: a line that
/// does not parse is passed over. The private key is not kept.
fn parse_uapi(text: &str) -> (Option<u16>, Vec<PeerStatus>) {
    let (device, _) = wireguard_stats::parse_device(text);
    let peers = device
        .peers
        .into_iter()
        .map(|peer| PeerStatus {
            public_key: peer.stats.public_key,
            endpoint: peer.endpoint,
            allowed_ips: peer.allowed_ips,
            latest_handshake: Some(peer.stats.last_handshake.as_secs()).filter(|&s| s > 0),
            rx_bytes: peer.stats.rx_bytes,
            tx_bytes: peer.stats.tx_bytes,
            persistent_keepalive: peer.persistent_keepalive,
        })
        .collect();
    (device.listen_port, peers)
}

/// The EDNS payload size `tundns dns query` offers, as dig and the DNS flag day's clients do.
const QUERY_UDP_PAYLOAD: u16 = 1232;

/// A query for `name` `qtype` with RD set and EDNS, as a client would send it.
fn build_query(name: &str, qtype: &str) -> Result<(Vec<u8>, Rtype), String> {
    let owner: Name<Vec<u8>> = name
        .trim()
        .parse()
        .map_err(|error| format!("bad name {name:?}: {error}"))?;
    let rtype: Rtype = qtype
        .trim()
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| format!("unknown type {qtype:?}"))?;
    let mut builder = MessageBuilder::new_vec();
    builder.header_mut().set_random_id();
    builder.header_mut().set_rd(true);
    let mut question = builder.question();
    question
        .push((&owner, rtype))
        .map_err(|error| format!("building the query: {error}"))?;
    let mut additional = question.additional();
    additional
        .opt(|opt| {
            opt.set_udp_payload_size(QUERY_UDP_PAYLOAD);
            Ok(())
        })
        .map_err(|error| format!("building the query: {error}"))?;
    Ok((additional.into_message().into_octets(), rtype))
}

/// `tundns dns query`: asks as a client would (UDP with EDNS, then TCP if the answer comes
/// back truncated) and says how it was answered; `fresh` asks the route's upstreams past
/// everything the proxy keeps.
async fn query(dns: &Dns, name: &str, qtype: &str, fresh: bool) -> Result<Reply, String> {
    let (message, rtype) = build_query(name, qtype)?;
    let parsed = tundns_dns::parse_query(&message).map_err(|_| format!("bad query for {name}"))?;
    let started = Instant::now();
    let (asked, transport) = if fresh {
        (
            ask_upstreams(dns, &parsed, &message).await?,
            "straight to the route's upstreams, as the pool asks them",
        )
    } else {
        let asked = ask_proxy(dns, &parsed, &message, Transport::Udp).await?;
        if is_truncated(&asked.answer) {
            let asked = ask_proxy(dns, &parsed, &message, Transport::Tcp).await?;
            (asked, "udp, then tcp: the answer was truncated")
        } else {
            (asked, "udp")
        }
    };
    let elapsed = started.elapsed();
    let (rcode, answers, authority) = describe_answer(&asked.answer)?;
    Ok(Reply::ok(QueryReport {
        name: name.trim().to_owned(),
        qtype: rtype.to_string(),
        path: asked.path,
        group: asked.group,
        upstream: asked.upstream,
        rcode,
        answers,
        authority,
        elapsed_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        transport: transport.to_owned(),
    }))
}

/// One answer to `tundns dns query`, with where it came from.
struct Asked {
    answer: Vec<u8>,
    path: AnsweredBy,
    group: Option<RouteEntry>,
    upstream: Option<String>,
}

/// Asks the route's upstream group directly.
async fn ask_upstreams(dns: &Dns, parsed: &Query<'_>, message: &[u8]) -> Result<Asked, String> {
    let upstreams = dns.proxy.upstreams();
    let (index, group) = upstreams.group_for(parsed.question());
    let answer = group
        .resolve_from(message, Protocol::Udp)
        .await
        .map_err(|error| format!("no upstream answered: {error}"))?;
    Ok(Asked {
        answer: answer.response.to_vec(),
        path: AnsweredBy::Upstream,
        group: dns.sources().routes.group_entry(index),
        upstream: Some(answer.upstream.to_string()),
    })
}

/// Asks the proxy as a client over `transport` would.
async fn ask_proxy(
    dns: &Dns,
    parsed: &Query<'_>,
    message: &[u8],
    transport: Transport,
) -> Result<Asked, String> {
    let proxy = &dns.proxy;
    let name = parsed.question();
    let mut out = vec![0; MAX_MESSAGE_LEN];
    // What `accept` will find, looked at first without counting: blocklist and local data
    // are pure; a memory answer that is neither is the cache's.
    let from_list = if proxy.blocklist().is_blocked(parsed.question()) {
        Some(AnsweredBy::Blocked)
    } else if proxy.local().answer(parsed, &mut out).is_some() {
        Some(AnsweredBy::Local)
    } else {
        None
    };
    let (answer, path, group, upstream) = match proxy.accept(message, transport, &mut out) {
        Verdict::Drop => return Err(format!("the proxy dropped the query for {name}")),
        Verdict::Answered(len) => {
            let answer = out[..len].to_vec();
            // REFUSED is never cached: from memory, it is the overload answer.
            let path = from_list.unwrap_or(if rcode_of(&answer) == REFUSED {
                AnsweredBy::Overload
            } else {
                AnsweredBy::Cache
            });
            (answer, path, None, None)
        }
        Verdict::Forward(forward) => {
            let index = proxy.upstreams().group_for(parsed.question()).0;
            let group = dns.sources().routes.group_entry(index);
            let resolved = forward.resolve_from().await;
            let upstream = resolved.upstream.map(|upstream| upstream.to_string());
            let path = match resolved.path {
                AnswerPath::Blocked => AnsweredBy::Blocked,
                _ => AnsweredBy::Upstream,
            };
            (resolved.answer, path, group, upstream)
        }
    };
    Ok(Asked {
        answer,
        path,
        group,
        upstream,
    })
}

const REFUSED: u8 = 5;

fn rcode_of(message: &[u8]) -> u8 {
    message.get(3).map_or(0, |flags| flags & 0x0f)
}

/// The rcode and the answer and authority records of `answer`, in zone-file form.
fn describe_answer(answer: &[u8]) -> Result<(String, Vec<String>, Vec<String>), String> {
    let message =
        Message::from_octets(answer).map_err(|_| "the answer is not a DNS message".to_owned())?;
    let rcode = message.header().rcode().to_string();
    let section = |records: domain::base::message::RecordSection<'_, &[u8]>| {
        records
            .limit_to::<AllRecordData<&[u8], ParsedName<&[u8]>>>()
            .map(|record| {
                record
                    .map(|record: Record<ParsedName<&[u8]>, _>| record.to_string())
                    .map_err(|error| format!("bad record in the answer: {error}"))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let answers = section(message.answer().map_err(|e| e.to_string())?)?;
    let authority = section(message.authority().map_err(|e| e.to_string())?)?;
    Ok((rcode, answers, authority))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UAPI_ANSWER: &str = "private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a\n\
listen_port=51820\n\
public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33\n\
endpoint=192.0.2.1:51820\n\
last_handshake_time_sec=1700000000\n\
last_handshake_time_nsec=5\n\
rx_bytes=1234\n\
tx_bytes=5678\n\
persistent_keepalive_interval=25\n\
allowed_ip=10.99.0.0/24\n\
allowed_ip=fd99::/64\n\
public_key=58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceb7e19321376\n\
last_handshake_time_sec=0\n\
rx_bytes=0\n\
tx_bytes=0\n\
persistent_keepalive_interval=0\n\
errno=0\n";

    #[test]
    fn uapi_answers_give_peers_without_the_private_key() {
        let (port, peers) = parse_uapi(UAPI_ANSWER);
        assert_eq!(port, Some(51820));
        assert_eq!(peers.len(), 2);
        assert_eq!(
            peers[0].public_key,
            "uFmW/sycfx/G0lcqdu2hHVm80gvo5UOxXOS9hajnWjM="
        );
        assert_eq!(peers[0].endpoint.as_deref(), Some("192.0.2.1:51820"));
        assert_eq!(peers[0].latest_handshake, Some(1_700_000_000));
        assert_eq!((peers[0].rx_bytes, peers[0].tx_bytes), (1234, 5678));
        assert_eq!(peers[0].persistent_keepalive, Some(25));
        assert_eq!(peers[0].allowed_ips, ["10.99.0.0/24", "fd99::/64"]);
        assert_eq!(peers[1].latest_handshake, None, "no handshake yet");
        assert_eq!(peers[1].endpoint, None);
        let json = serde_json::to_string(&peers).unwrap();
        assert!(!json.contains("e84b5a6d"), "the private key never leaves");
    }

    #[test]
    fn garbage_from_the_uapi_socket_gives_no_peers() {
        assert_eq!(parse_uapi("nonsense\n=\nerrno=1\n"), (None, Vec::new()));
        assert_eq!(wireguard_stats::base64_key("abc"), None);
        assert_eq!(wireguard_stats::base64_key(&"zz".repeat(32)), None);
    }

    #[test]
    fn queries_are_built_for_any_type_and_refused_for_bad_input() {
        let (message, rtype) = build_query("www.lab.test", "aaaa").unwrap();
        assert_eq!(rtype, Rtype::AAAA);
        let parsed = tundns_dns::parse_query(&message).unwrap();
        assert_eq!(parsed.question().qtype(), 28);
        assert!(parsed.recursion_desired());
        assert!(build_query("www.lab.test", "TYPE65").is_ok());
        assert!(build_query("a..b", "A").is_err());
        assert!(build_query(&"a".repeat(64), "A").is_err());
        assert!(build_query("x.test", "NOTATYPE").is_err());
    }

    #[test]
    fn answers_are_described_record_by_record() {
        let (query, _) = build_query("x.test", "A").unwrap();
        // The question alone: the query's OPT record (11 bytes) is its last.
        let mut answer = query[..query.len() - 11].to_vec();
        answer[11] = 0;
        answer[2] |= 0x80;
        answer[3] = (answer[3] & 0xf0) | 3;
        answer[7] = 1;
        answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1]);
        let (rcode, answers, authority) = describe_answer(&answer).unwrap();
        assert_eq!(rcode, "NXDOMAIN");
        assert_eq!(answers.len(), 1);
        assert!(answers[0].contains("10.0.0.1"), "{}", answers[0]);
        assert!(authority.is_empty());
        assert!(describe_answer(&[1, 2, 3]).is_err());
    }
}

//! Prometheus metrics: the per-query counters the resolver bumps, and the scrape-time
//! collector and HTTP endpoint that read them with everything else worth watching.
//!
//! Nothing here sits between a packet and its answer except [`QueryCounters::record`]:
//! one relaxed increment in a fixed array indexed by transport, path and a small set of
//! query types. Everything else (cache, upstreams, filter, WireGuard peers) is read only
//! when Prometheus scrapes, from the atomics those parts already keep, by a
//! [`Collector`] built for that scrape. No registry is touched per packet.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tundns_filter::FilterStats;
use tundns_upstream::RTT_BUCKET_BOUNDS_MICROS;

use crate::dns::proxy::DnsProxy;
use crate::dns::query_log::QueryLogStats;
use crate::observability::wireguard::{self, PeerStats};

pub use tundns_resolver::AnswerPath;

/// What the collector reads at scrape time.
pub struct MetricsSources {
    /// The resolver, when the proxy is enabled.
    pub proxy: Option<Arc<DnsProxy>>,
    /// The filter's packet counters.
    pub filter: Arc<FilterStats>,
    /// The query log's counters, when it is on.
    pub query_log: Option<Arc<QueryLogStats>>,
    /// The WireGuard interface.
    pub interface: String,
    /// Its UAPI socket, which gives the peers' counters.
    pub uapi_socket: PathBuf,
}

/// How long a scrape waits for the UAPI socket before leaving the peers out.
const UAPI_TIMEOUT: Duration = Duration::from_secs(1);

/// Renders every metric in the OpenMetrics text format. Reads the WireGuard peers over
/// the UAPI socket first; if that fails, the peers are left out and
/// `tundns_wireguard_up` says so.
pub async fn render(sources: &Arc<MetricsSources>) -> String {
    let peers =
        match tokio::time::timeout(UAPI_TIMEOUT, wireguard::read_peers(&sources.uapi_socket)).await
        {
            Ok(Ok(peers)) => Some(peers),
            Ok(Err(error)) => {
                tracing::debug!(%error, "metrics: reading the UAPI socket");
                None
            }
            Err(_) => None,
        };
    render_with_peers(sources.clone(), peers)
}

/// Renders the metrics with peers already read (`None` when they could not be).
pub fn render_with_peers(sources: Arc<MetricsSources>, peers: Option<Vec<PeerStats>>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape { sources, peers }));
    let mut text = String::new();
    // Writing into a String cannot fail; a collector error would leave the text short.
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        text.clear();
        text.push_str("# EOF\n");
    }
    text
}

/// One scrape's view: the live sources plus the peers read for it.
struct Scrape {
    sources: Arc<MetricsSources>,
    peers: Option<Vec<PeerStats>>,
}

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scrape")
            .field("interface", &self.sources.interface)
            .finish_non_exhaustive()
    }
}

/// Writes one metric family: a descriptor, then each labelled sample.
fn family<L, V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result
where
    L: prometheus_client::encoding::EncodeLabelSet,
    V: Sample,
{
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A counter or gauge value.
trait Sample {
    fn encode(self, encoder: prometheus_client::encoding::MetricEncoder) -> fmt::Result;
}

/// A monotonic count.
struct Count(u64);
/// A point-in-time value.
struct Level(f64);

impl Sample for Count {
    fn encode(self, encoder: prometheus_client::encoding::MetricEncoder) -> fmt::Result {
        ConstCounter::new(self.0).encode(encoder)
    }
}

impl Sample for Level {
    fn encode(self, encoder: prometheus_client::encoding::MetricEncoder) -> fmt::Result {
        ConstGauge::new(self.0).encode(encoder)
    }
}

/// Writes one metric without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    value: impl Sample,
) -> fmt::Result {
    value.encode(encoder.encode_descriptor(name, help, None, metric_type)?)
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        if let Some(proxy) = &self.sources.proxy {
            encode_resolver(proxy, &mut encoder)?;
        }
        encode_filter(&self.sources.filter, &mut encoder)?;
        if let Some(log) = &self.sources.query_log {
            single(
                &mut encoder,
                "tundns_query_log_lines",
                "Query log lines written.",
                MetricType::Counter,
                Count(load(&log.written)),
            )?;
            family(
                &mut encoder,
                "tundns_query_log_dropped",
                "Query log lines dropped: the writer fell behind or the file could not be written.",
                MetricType::Counter,
                [
                    ([("reason", "queue_full")], Count(load(&log.dropped))),
                    ([("reason", "write_error")], Count(load(&log.write_errors))),
                ],
            )?;
        }
        encode_wireguard(self.peers.as_deref(), &mut encoder)
    }
}

fn encode_resolver(proxy: &DnsProxy, encoder: &mut DescriptorEncoder) -> fmt::Result {
    let stats = proxy.stats();
    family(
        encoder,
        "tundns_dns_queries",
        "DNS queries to the virtual IPs by transport, query type and how they were answered.",
        MetricType::Counter,
        stats
            .queries
            .nonzero()
            .map(|(labels, count)| (labels, Count(count))),
    )?;
    single(
        encoder,
        "tundns_dns_collapsed_queries",
        "Queries that joined an identical query already in flight upstream.",
        MetricType::Counter,
        Count(load(&stats.collapsed)),
    )?;
    single(
        encoder,
        "tundns_dns_prefetches",
        "Cache entries refreshed in the background, hit in their last tenth of life.",
        MetricType::Counter,
        Count(load(&stats.prefetches)),
    )?;
    single(
        encoder,
        "tundns_dns_prefetches_skipped",
        "Prefetch refreshes left out because the forwarding table was busy or full.",
        MetricType::Counter,
        Count(load(&stats.prefetches_skipped)),
    )?;
    single(
        encoder,
        "tundns_dns_rate_limited_queries",
        "UDP queries over RateLimit from one client network: slipped (TC=1) or dropped.",
        MetricType::Counter,
        Count(load(&stats.rate_limited)),
    )?;
    let (in_flight, limit) = proxy.upstream_in_flight();
    single(
        encoder,
        "tundns_dns_upstream_in_flight",
        "Queries being resolved upstream now.",
        MetricType::Gauge,
        Level(in_flight as f64),
    )?;
    single(
        encoder,
        "tundns_dns_upstream_in_flight_limit",
        "MaxInFlight: beyond it, queries are refused.",
        MetricType::Gauge,
        Level(limit as f64),
    )?;
    single(
        encoder,
        "tundns_dns_tcp_connections",
        "Open DNS-over-TCP client connections.",
        MetricType::Gauge,
        Level(load(&stats.tcp_connections) as f64),
    )?;
    if let Some(cache) = proxy.cache() {
        let counters = [
            (
                "tundns_dns_cache_hits",
                "Cache lookups that found a fresh answer.",
                cache.hits(),
            ),
            (
                "tundns_dns_cache_misses",
                "Cache lookups that found nothing fresh.",
                cache.misses(),
            ),
            (
                "tundns_dns_cache_stale_hits",
                "Expired answers served because every upstream failed.",
                cache.stale_hits(),
            ),
        ];
        for (name, help, value) in counters {
            single(encoder, name, help, MetricType::Counter, Count(value))?;
        }
        let gauges = [
            (
                "tundns_dns_cache_entries",
                "Answers in the cache.",
                cache.len() as f64,
            ),
            (
                "tundns_dns_cache_bytes",
                "Bytes the cache holds, as its bound counts them.",
                cache.weight() as f64,
            ),
            (
                "tundns_dns_cache_capacity_bytes",
                "CacheSize: the cache's bound.",
                cache.config().max_bytes as f64,
            ),
        ];
        for (name, help, value) in gauges {
            single(encoder, name, help, MetricType::Gauge, Level(value))?;
        }
    }
    encode_upstreams(proxy, encoder)
}

fn encode_upstreams(proxy: &DnsProxy, encoder: &mut DescriptorEncoder) -> fmt::Result {
    let upstreams = proxy.upstreams();
    let groups = &upstreams.groups;
    let group_label = |index: usize| {
        if index == 0 {
            "default".to_string()
        } else {
            format!("route{index}")
        }
    };
    let per_upstream: Vec<_> = groups
        .iter()
        .enumerate()
        .flat_map(|(index, pool)| {
            let group = group_label(index);
            let health = pool.health();
            pool.upstream_stats()
                .into_iter()
                .zip(health)
                .map(move |((spec, stats), health)| {
                    let labels = vec![("group", group.clone()), ("upstream", spec.url())];
                    (labels, stats, health)
                })
        })
        .collect();

    let mut metric = encoder.encode_descriptor(
        "tundns_dns_upstream_rtt_seconds",
        "Round-trip time of each upstream answer (SERVFAIL and REFUSED included).",
        None,
        MetricType::Histogram,
    )?;
    for (labels, stats, _) in &per_upstream {
        let buckets: Vec<(f64, u64)> = RTT_BUCKET_BOUNDS_MICROS
            .iter()
            .map(|&bound| bound as f64 / 1e6)
            .chain([f64::INFINITY])
            .zip(stats.rtt_buckets)
            .collect();
        metric
            .encode_family(labels)?
            .encode_histogram::<NoLabelSet>(
                stats.rtt_sum_micros as f64 / 1e6,
                stats.rtt_count(),
                &buckets,
                None,
            )?;
    }
    family(
        encoder,
        "tundns_dns_upstream_errors",
        "Failed upstream attempts by kind: timeout, refused (ICMP or RST), error (socket, TLS, HTTP, framing), servfail (an error answer: SERVFAIL, REFUSED, NOTIMP or FORMERR).",
        MetricType::Counter,
        per_upstream.iter().flat_map(|(labels, stats, _)| {
            [
                ("timeout", stats.timeouts),
                ("refused", stats.refusals),
                ("error", stats.failures),
                ("servfail", stats.soft_errors),
            ]
            .into_iter()
            .map(|(kind, count)| {
                let mut labels = labels.clone();
                labels.push(("kind", kind.to_string()));
                (labels, Count(count))
            })
        }),
    )?;
    family(
        encoder,
        "tundns_dns_upstream_srtt_seconds",
        "Smoothed RTT of each upstream (absent before its first answer).",
        MetricType::Gauge,
        per_upstream.iter().filter_map(|(labels, _, health)| {
            health
                .srtt
                .map(|srtt| (labels.clone(), Level(srtt.as_secs_f64())))
        }),
    )?;
    family(
        encoder,
        "tundns_dns_upstream_up",
        "1 while an upstream is considered alive, 0 while it is skipped until a probe shows it back.",
        MetricType::Gauge,
        per_upstream
            .iter()
            .map(|(labels, _, health)| (labels.clone(), Level(f64::from(u8::from(health.alive))))),
    )?;
    let pool_counters = groups.iter().enumerate().flat_map(|(index, pool)| {
        let stats = pool.stats();
        let group = group_label(index);
        [
            ("queries", stats.queries),
            ("all_failed", stats.all_failed),
            ("mismatched_ignored", stats.mismatched_ignored),
            ("hedged", stats.hedged),
            ("tcp_retries", stats.tcp_retries),
            ("probes", stats.probes),
            ("zero_rtt_accepted", stats.zero_rtt_accepted),
            ("zero_rtt_rejected", stats.zero_rtt_rejected),
        ]
        .map(move |(event, count)| {
            (
                [("group", group.clone()), ("event", event.to_string())],
                Count(count),
            )
        })
    });
    family(
        encoder,
        "tundns_dns_upstream_group_events",
        "Per upstream group: queries sent, queries every upstream failed, forged or late answers ignored, hedged attempts, TCP retries of truncated answers, probes of dead upstreams, resumed QUIC connections whose 0-RTT the upstream accepted or refused.",
        MetricType::Counter,
        pool_counters,
    )
}

fn encode_filter(stats: &FilterStats, encoder: &mut DescriptorEncoder) -> fmt::Result {
    family(
        encoder,
        "tundns_filter_packets",
        "Packets read from the TUN: diverted to a virtual service or passed to WireGuard.",
        MetricType::Counter,
        [
            ([("action", "diverted")], Count(load(&stats.diverted))),
            ([("action", "passed")], Count(load(&stats.passed))),
        ],
    )?;
    family(
        encoder,
        "tundns_filter_dropped_packets",
        "Packets the filter dropped, by reason: not_ip (outbound, not an IP packet), bad_offload (outbound super-packets whose virtio-net header or length did not add up, and inbound batches the TUN refused), inbound_virtual_ip (from the tunnel, to or from a virtual IP), foreign_source (to a virtual IP from a host it does not serve), reply_failed (a service's reply could not be written into the TUN).",
        MetricType::Counter,
        [
            (
                [("reason", "not_ip")],
                Count(load(&stats.dropped_malformed)),
            ),
            (
                [("reason", "bad_offload")],
                Count(load(&stats.dropped_offload)),
            ),
            (
                [("reason", "inbound_virtual_ip")],
                Count(load(&stats.dropped_inbound_virtual)),
            ),
            (
                [("reason", "foreign_source")],
                Count(load(&stats.dropped_foreign_source)),
            ),
            (
                [("reason", "reply_failed")],
                Count(load(&stats.reply_errors)),
            ),
        ],
    )
}

fn encode_wireguard(peers: Option<&[PeerStats]>, encoder: &mut DescriptorEncoder) -> fmt::Result {
    single(
        encoder,
        "tundns_wireguard_up",
        "1 when the UAPI socket answered this scrape, so the peer metrics are present.",
        MetricType::Gauge,
        Level(f64::from(u8::from(peers.is_some()))),
    )?;
    let peers = peers.unwrap_or_default();
    let label = |peer: &PeerStats| [("public_key", peer.public_key.clone())];
    family(
        encoder,
        "tundns_wireguard_peer_received_bytes",
        "Bytes received from each peer.",
        MetricType::Counter,
        peers.iter().map(|peer| (label(peer), Count(peer.rx_bytes))),
    )?;
    family(
        encoder,
        "tundns_wireguard_peer_sent_bytes",
        "Bytes sent to each peer.",
        MetricType::Counter,
        peers.iter().map(|peer| (label(peer), Count(peer.tx_bytes))),
    )?;
    family(
        encoder,
        "tundns_wireguard_peer_last_handshake_seconds",
        "Unix time of each peer's latest handshake, as WireGuard reports it; 0 before the first.",
        MetricType::Gauge,
        peers
            .iter()
            .map(|peer| (label(peer), Level(peer.last_handshake.as_secs_f64()))),
    )
}

/// The metrics endpoint: an HTTP/1 server on a listener bound at start-up. Dropping it
/// stops the server.
pub struct MetricsServer {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapes served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;

/// Binds `address` for the metrics endpoint. `IP_FREEBIND` lets it be an address the
/// tunnel has not been given yet; an address in use fails here, before anything else
/// is set up.
pub fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if address.is_ipv4() {
        socket.set_freebind_v4(true)?;
    } else {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(128)?;
    Ok(socket.into())
}

impl MetricsServer {
    /// Serves `GET /metrics` on `listener`. Needs a running tokio runtime.
    pub fn spawn(
        listener: std::net::TcpListener,
        sources: Arc<MetricsSources>,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let task = crate::supervise::spawn_essential("the metrics endpoint", async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::debug!(%error, "metrics: accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let sources = sources.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let sources = sources.clone();
                        async move { Ok::<_, Infallible>(respond(request, &sources).await) }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "metrics: connection");
                    }
                    drop(permit);
                });
            }
        });
        Ok(Self { task })
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn respond(
    request: Request<Incoming>,
    sources: &Arc<MetricsSources>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let (status, content_type, body) = match (request.method(), path) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            (StatusCode::OK, OPENMETRICS, render(sources).await)
        }
        (&Method::GET | &Method::HEAD, "/") => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "tundns: metrics at /metrics\n".to_string(),
        ),
        (&Method::GET | &Method::HEAD, _) => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".to_string(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample named exactly `series` (with its labels).
    fn sample_value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.split(' ').next()?.parse().ok()
        })
    }

    fn sources_without_proxy() -> Arc<MetricsSources> {
        let filter = Arc::new(FilterStats::default());
        filter.diverted.fetch_add(3, Ordering::Relaxed);
        filter.passed.fetch_add(5, Ordering::Relaxed);
        filter
            .dropped_inbound_virtual
            .fetch_add(1, Ordering::Relaxed);
        Arc::new(MetricsSources {
            proxy: None,
            filter,
            query_log: None,
            interface: "wgtest0".into(),
            uapi_socket: "/nonexistent/wgtest0.sock".into(),
        })
    }

    #[test]
    fn the_text_is_openmetrics_with_filter_and_wireguard_families() {
        let peers = vec![PeerStats {
            public_key: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=".into(),
            rx_bytes: 1234,
            tx_bytes: 5678,
            last_handshake: Duration::from_secs(1_700_000_000),
        }];
        let text = render_with_peers(sources_without_proxy(), Some(peers));
        for (series, value) in [
            ("tundns_filter_packets_total{action=\"diverted\"}", 3.0),
            ("tundns_filter_packets_total{action=\"passed\"}", 5.0),
            (
                "tundns_filter_dropped_packets_total{reason=\"inbound_virtual_ip\"}",
                1.0,
            ),
            (
                "tundns_filter_dropped_packets_total{reason=\"not_ip\"}",
                0.0,
            ),
            ("tundns_wireguard_up", 1.0),
            (
                "tundns_wireguard_peer_received_bytes_total{public_key=\"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"}",
                1234.0,
            ),
            (
                "tundns_wireguard_peer_sent_bytes_total{public_key=\"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"}",
                5678.0,
            ),
            (
                "tundns_wireguard_peer_last_handshake_seconds{public_key=\"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"}",
                1.7e9,
            ),
        ] {
            assert_eq!(
                sample_value(&text, series),
                Some(value),
                "{series} in\n{text}"
            );
        }
        assert!(
            text.contains("# TYPE tundns_filter_packets counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE tundns_wireguard_up gauge\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            !text.contains("tundns_dns_"),
            "no proxy, no resolver metrics"
        );
    }

    #[test]
    fn without_the_uapi_socket_the_peers_are_absent_and_up_is_zero() {
        let text = render_with_peers(sources_without_proxy(), None);
        assert_eq!(sample_value(&text, "tundns_wireguard_up"), Some(0.0));
        assert!(!text.contains("tundns_wireguard_peer_received_bytes_total{"));
    }

    #[test]
    fn every_line_is_a_comment_or_a_well_formed_sample() {
        let text = render_with_peers(sources_without_proxy(), Some(Vec::new()));
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect(line);
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(
                series.starts_with("tundns_")
                    && series
                        .bytes()
                        .take_while(|&b| b != b'{')
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{line}"
            );
        }
    }
}

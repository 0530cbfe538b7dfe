//! `dns-latency [--gap-ms=N] SERVER NAME COUNT TRANSPORTS [SERVER_PID]`: times COUNT queries
//! for NAME A, one at a time, over each of TRANSPORTS (a comma-separated list of `udp`,
//! `dot`, `dot1`, `doh` and `doq`), each over one reused connection, all from hickory's
//! clients (UDP from one connected socket: hickory's own UDP client binds a socket per query,
//! which would weigh on the baseline), and prints each transport's p50 and p99 in
//! microseconds; given the server's process id, also the CPU time it spent per answer, in
//! microseconds, and how many times per answer one of its threads was put on a CPU (its
//! periodic timers included, which weigh when queries are far apart). Queries go back to
//! back, or N milliseconds apart (at most 1000), so that each finds the server idle, as a
//! browser's or a phone's sporadic queries do:
//!
//! ```text
//! udp n=300 p50=41 p99=88 cpu=9.8 runs=1.02
//! doq n=300 p50=63 p99=120 cpu=31.2 runs=2.10
//! ```
//!
//! hickory's DoT client writes each query's length prefix in a TLS record of its own, so
//! that a query reaches the server as two segments. Stub resolvers (systemd-resolved,
//! Android, unbound) write the prefix and the query in one record; `dot1` does so, from
//! rustls directly, over the same TLS configuration.
//!
//! For `bench/dns-encrypted.sh`: one client for every transport, so that the ratio to UDP is
//! the server's and the protocol's, not a difference between tools (dnsperf 2.11 has no DoQ,
//! and kdig opens a connection per query). DoT is on port 853, DoH on 443 at `/dns-query`
//! (POST, as hickory asks), DoQ on UDP 853. The server is trusted whatever its certificate:
//! the benchmark measures time, and the tests check the pin. Run it inside the benchmark's
//! namespace; COUNT is at most 10,000, and each query times out after 2 s.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt as _};
use hickory_proto::ProtoError;
use hickory_proto::h2::HttpsClientStreamBuilder;
use hickory_proto::op::{Message, Query};
use hickory_proto::quic::QuicClientStream;
use hickory_proto::rr::{Name, RecordType};
use hickory_proto::runtime::{TokioRuntimeProvider, TokioTime};
use hickory_proto::rustls::tls_client_connect;
use hickory_proto::xfer::{
    DnsExchange, DnsHandle as _, DnsMultiplexer, DnsRequest, DnsRequestOptions,
    DnsRequestSender as _, DnsResponse,
};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tundns_test_support::tls::pinned_client_config;

const MAX_COUNT: usize = 10_000;
const MAX_GAP_MS: u64 = 1000;
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// The name the TLS clients ask for; the server is trusted whatever it presents.
const SERVER_NAME: &str = "dns.tundns.internal";

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let gap = match args
        .first()
        .and_then(|first| first.strip_prefix("--gap-ms="))
    {
        Some(gap) => {
            let gap = gap
                .parse::<u64>()
                .ok()
                .filter(|gap| *gap <= MAX_GAP_MS)
                .unwrap_or_else(|| exit("--gap-ms is 0..=1000"));
            args.remove(0);
            Duration::from_millis(gap)
        }
        None => Duration::ZERO,
    };
    let (server, name, count, transports, server_pid) = match args.as_slice() {
        [server, name, count, transports] => (server, name, count, transports, None),
        [server, name, count, transports, pid] => (server, name, count, transports, Some(pid)),
        _ => exit("usage: dns-latency [--gap-ms=N] SERVER NAME COUNT TRANSPORTS [SERVER_PID]"),
    };
    let server_pid = server_pid.map(|pid| {
        pid.parse::<u32>()
            .ok()
            .filter(|pid| server_use(*pid).is_some())
            .unwrap_or_else(|| exit("SERVER_PID is a running process's id"))
    });
    let server: IpAddr = server
        .parse()
        .unwrap_or_else(|_| exit("SERVER is an IP address"));
    let name = Name::from_ascii(name).unwrap_or_else(|_| exit("NAME is a domain name"));
    let count = count
        .parse::<usize>()
        .ok()
        .filter(|count| (1..=MAX_COUNT).contains(count))
        .unwrap_or_else(|| exit("COUNT is 1..=10000"));
    let transports: Vec<Transport> = transports
        .split(',')
        .map(|transport| {
            Transport::of(transport)
                .unwrap_or_else(|| exit("TRANSPORTS is a list of udp, dot, dot1, doh and doq"))
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        for transport in transports {
            let timed = transport.time(server, &name, count, gap, server_pid).await;
            report(transport.label(), &timed);
        }
    });
}

#[derive(Clone, Copy)]
enum Transport {
    Udp,
    Tls,
    /// DoT with each query in one TLS record.
    TlsOneRecord,
    Https,
    Quic,
}

impl Transport {
    fn of(label: &str) -> Option<Self> {
        Some(match label {
            "udp" => Self::Udp,
            "dot" => Self::Tls,
            "dot1" => Self::TlsOneRecord,
            "doh" => Self::Https,
            "doq" => Self::Quic,
            _ => return None,
        })
    }

    fn label(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tls => "dot",
            Self::TlsOneRecord => "dot1",
            Self::Https => "doh",
            Self::Quic => "doq",
        }
    }

    /// Connects (outside the timing), then times `count` queries.
    async fn time(
        self,
        server: IpAddr,
        name: &Name,
        count: usize,
        gap: Duration,
        server_pid: Option<u32>,
    ) -> Timed {
        let label = self.label();
        let provider = TokioRuntimeProvider::default();
        let tls = || Arc::new(pinned_client_config(None));
        match self {
            Self::Udp => {
                let udp = connected_udp(SocketAddr::new(server, 53)).await;
                let udp = &udp;
                time_queries(server_pid, name, count, gap, |request| {
                    Box::pin(futures::stream::once(ask_over_udp(udp, request)))
                })
                .await
            }
            Self::Tls => {
                let (connect, handle) = tls_client_connect(
                    SocketAddr::new(server, 853),
                    SERVER_NAME.into(),
                    tls(),
                    provider,
                );
                let multiplexer = DnsMultiplexer::new(connect, handle, None);
                let (exchange, background) = DnsExchange::connect::<_, _, TokioTime>(multiplexer)
                    .await
                    .unwrap_or_else(|error| exit(&format!("{label}: {error}")));
                tokio::spawn(background);
                time_queries(server_pid, name, count, gap, |request| {
                    exchange.send(request)
                })
                .await
            }
            Self::TlsOneRecord => {
                let stream = Mutex::new(tls_one_record_connect(server, tls()).await);
                let stream = &stream;
                time_queries(server_pid, name, count, gap, |request| {
                    Box::pin(futures::stream::once(async move {
                        ask_in_one_record(&mut *stream.lock().await, request).await
                    }))
                })
                .await
            }
            Self::Https => {
                let mut https = HttpsClientStreamBuilder::with_client_config(tls(), provider)
                    .build(
                        SocketAddr::new(server, 443),
                        SERVER_NAME.into(),
                        "/dns-query".into(),
                    )
                    .await
                    .unwrap_or_else(|error| exit(&format!("{label}: {error}")));
                time_queries(server_pid, name, count, gap, |request| {
                    https.send_message(request)
                })
                .await
            }
            Self::Quic => {
                let mut builder = QuicClientStream::builder();
                builder.crypto_config(pinned_client_config(None));
                let mut quic = builder
                    .build(SocketAddr::new(server, 853), SERVER_NAME.into())
                    .await
                    .unwrap_or_else(|error| exit(&format!("{label}: {error}")));
                time_queries(server_pid, name, count, gap, |request| {
                    quic.send_message(request)
                })
                .await
            }
        }
    }
}

/// A UDP socket connected to `server`, reused for every query, as a stub resolver's is.
async fn connected_udp(server: SocketAddr) -> UdpSocket {
    let any: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any)
        .await
        .unwrap_or_else(|error| exit(&format!("udp: {error}")));
    socket
        .connect(server)
        .await
        .unwrap_or_else(|error| exit(&format!("udp: {error}")));
    socket
}

/// Sends `request` on `udp` and takes the first datagram that parses as the answer to its
/// ID. Its buffer is on the stack, as a stub resolver's is: no allocation beyond the answer's
/// own, as for the other transports.
async fn ask_over_udp(udp: &UdpSocket, request: DnsRequest) -> Result<DnsResponse, ProtoError> {
    let id = request.id();
    udp.send(&request.to_vec()?).await?;
    let mut buffer = [0u8; 4096];
    loop {
        let len = udp.recv(&mut buffer).await?;
        if let Some(response) = answer_to(id, buffer[..len].to_vec()) {
            return Ok(response);
        }
    }
}

/// A TLS connection to DoT on `server`, with Nagle's delay off, as stub resolvers set it.
async fn tls_one_record_connect(
    server: IpAddr,
    config: Arc<rustls::ClientConfig>,
) -> TlsStream<TcpStream> {
    let connect = async {
        let tcp = TcpStream::connect(SocketAddr::new(server, 853)).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(SERVER_NAME).expect("a valid server name");
        TlsConnector::from(config).connect(name, tcp).await
    };
    connect
        .await
        .unwrap_or_else(|error| exit(&format!("dot1: {error}")))
}

/// Sends `request` with its length prefix in one write (one TLS record) and reads the
/// answer that follows.
async fn ask_in_one_record(
    stream: &mut TlsStream<TcpStream>,
    request: DnsRequest,
) -> Result<DnsResponse, ProtoError> {
    let id = request.id();
    let message = request.to_vec()?;
    let length = u16::try_from(message.len()).expect("a query under 64 KiB");
    let mut framed = Vec::with_capacity(2 + message.len());
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(&message);
    stream.write_all(&framed).await?;
    stream.flush().await?;
    loop {
        let mut prefix = [0u8; 2];
        stream.read_exact(&mut prefix).await?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        stream.read_exact(&mut answer).await?;
        if let Some(response) = answer_to(id, answer) {
            return Ok(response);
        }
    }
}

/// `message` as the answer to query `id`; `None` for anything else, which the caller skips.
fn answer_to(id: u16, message: Vec<u8>) -> Option<DnsResponse> {
    DnsResponse::from_buffer(message)
        .ok()
        .filter(|response| response.id() == id)
}

/// Each query's time from send to answer, in microseconds, sorted, and what the server spent.
struct Timed {
    times: Vec<u64>,
    server: Option<ServerUse>,
}

/// What a server's threads used: CPU time, and how many times one was put on a CPU (a
/// wake-up, or a return after preemption). Each run beyond the one a query needs is a
/// hand-over between threads, which on an idle machine also wakes a CPU.
#[derive(Clone, Copy)]
struct ServerUse {
    cpu_ns: u64,
    runs: u64,
}

/// Times `count` queries for `name` A sent one after another by `send`, and the CPU time
/// `server_pid` spent meanwhile.
async fn time_queries<S>(
    server_pid: Option<u32>,
    name: &Name,
    count: usize,
    gap: Duration,
    mut send: impl FnMut(DnsRequest) -> S,
) -> Timed
where
    S: Stream<Item = Result<DnsResponse, ProtoError>> + Unpin,
{
    let before = server_pid.and_then(server_use);
    let mut times = Vec::with_capacity(count);
    for sent in 0..count {
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        let mut message = Message::new();
        message
            .set_id(sent as u16)
            .add_query(Query::query(name.clone(), RecordType::A))
            .set_recursion_desired(true);
        let request = DnsRequest::new(message, DnsRequestOptions::default());
        let started = Instant::now();
        let answer = tokio::time::timeout(QUERY_TIMEOUT, send(request).next()).await;
        match answer {
            Ok(Some(Ok(response))) if !response.answers().is_empty() => {
                times.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            other => exit(&format!("a query failed: {other:?}")),
        }
    }
    let server = before
        .zip(server_pid.and_then(server_use))
        .map(|(before, after)| ServerUse {
            cpu_ns: after.cpu_ns.saturating_sub(before.cpu_ns),
            runs: after.runs.saturating_sub(before.runs),
        });
    times.sort_unstable();
    Timed { times, server }
}

/// Prints one transport's quantiles, and the server's CPU time (microseconds) and thread
/// runs per answer when known.
fn report(transport: &str, timed: &Timed) {
    let times = &timed.times;
    let at = |quantile: f64| times[((times.len() - 1) as f64 * quantile) as usize];
    let mut line = format!(
        "{transport} n={} p50={} p99={}",
        times.len(),
        at(0.5),
        at(0.99)
    );
    if let Some(spent) = timed.server {
        let answers = times.len() as f64;
        let cpu_us = spent.cpu_ns as f64 / 1e3 / answers;
        let runs = spent.runs as f64 / answers;
        line += &format!(" cpu={cpu_us:.1} runs={runs:.2}");
    }
    println!("{line}");
}

/// What `pid`'s threads used so far: each thread's `schedstat` holds its time on a CPU in
/// nanoseconds (/proc/PID/stat counts clock ticks, too coarse for a few thousand answers) and
/// its count of runs. A thread that ends between two reads takes its share with it; the
/// servers' threads live as long as they do.
fn server_use(pid: u32) -> Option<ServerUse> {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let per_thread = threads.flatten().filter_map(|thread| {
        let schedstat = std::fs::read_to_string(thread.path().join("schedstat")).ok()?;
        let mut fields = schedstat.split_whitespace().map(str::parse::<u64>);
        let cpu_ns = fields.next()?.ok()?;
        let runs = fields.nth(1)?.ok()?;
        Some(ServerUse { cpu_ns, runs })
    });
    Some(
        per_thread.fold(ServerUse { cpu_ns: 0, runs: 0 }, |total, thread| {
            ServerUse {
                cpu_ns: total.cpu_ns + thread.cpu_ns,
                runs: total.runs + thread.runs,
            }
        }),
    )
}

fn exit(why: &str) -> ! {
    eprintln!("dns-latency: {why}");
    std::process::exit(2)
}

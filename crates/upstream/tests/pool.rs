//! The pool against fake upstreams written here, on loopback only.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use domain::base::iana::{Rcode, Rtype};
use domain::base::{Message, MessageBuilder, Name, Ttl};
use domain::rdata::A;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Mutex;
use tundns_upstream::{PoolConfig, Protocol, ResolveError, UpstreamPool};

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Upper bound on any fake server loop, on top of the tests' own timeouts.
const MAX_SERVED: usize = 1000;

fn query(id: u16, qname: &str) -> Vec<u8> {
    let mut builder = MessageBuilder::new_vec();
    builder.header_mut().set_id(id);
    builder.header_mut().set_rd(true);
    let mut question = builder.question();
    question
        .push((Name::<Vec<u8>>::vec_from_str(qname).unwrap(), Rtype::A))
        .unwrap();
    question.finish()
}

/// An answer to `request` with `count` A records whose last octet is `marker`.
fn answer(request: &[u8], count: usize, marker: u8) -> Vec<u8> {
    let request = Message::from_octets(request).unwrap();
    let mut builder = MessageBuilder::new_vec()
        .start_answer(&request, Rcode::NOERROR)
        .unwrap();
    let owner = request.sole_question().unwrap().into_qname();
    for _ in 0..count {
        builder
            .push((
                &owner,
                Ttl::from_secs(60),
                A::from_octets(192, 0, 2, marker),
            ))
            .unwrap();
    }
    builder.finish()
}

fn with_id(mut msg: Vec<u8>, id: u16) -> Vec<u8> {
    msg[..2].copy_from_slice(&id.to_be_bytes());
    msg
}

fn id_of(msg: &[u8]) -> u16 {
    u16::from_be_bytes([msg[0], msg[1]])
}

/// The last octet of the first A record (answers built by `answer`).
fn marker_of(msg: &[u8]) -> u8 {
    *msg.last().unwrap()
}

fn pool(upstreams: Vec<SocketAddr>, attempt_timeout: Duration) -> UpstreamPool {
    UpstreamPool::new(
        upstreams,
        PoolConfig {
            attempt_timeout,
            ..PoolConfig::default()
        },
    )
}

/// A UDP upstream that answers each query with whatever `respond` returns
/// (each message sent in order, from the server's own socket).
async fn udp_upstream<F>(respond: F) -> SocketAddr
where
    F: Fn(&[u8], SocketAddr) -> Vec<Vec<u8>> + Send + 'static,
{
    let socket = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        for _ in 0..MAX_SERVED {
            let Ok((len, client)) = socket.recv_from(&mut buf).await else {
                return;
            };
            for reply in respond(&buf[..len], client) {
                let _ = socket.send_to(&reply, client).await;
            }
        }
    });
    address
}

/// A bound UDP socket that never answers (kept alive by the returned guard).
async fn silent_udp_upstream() -> (SocketAddr, UdpSocket) {
    let socket = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    (socket.local_addr().unwrap(), socket)
}

/// A loopback port with nothing behind it (for UDP and TCP alike).
async fn closed_port() -> SocketAddr {
    let socket = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let address = socket.local_addr().unwrap();
    drop(socket);
    address
}

/// A TCP upstream: for each connection, reads framed queries and writes the
/// frames `respond` returns.
async fn tcp_upstream<F>(respond: F) -> SocketAddr
where
    F: Fn(&[u8]) -> Vec<Vec<u8>> + Send + Sync + 'static,
{
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        for _ in 0..MAX_SERVED {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let respond = respond.clone();
            tokio::spawn(async move {
                let mut prefix = [0u8; 2];
                if stream.read_exact(&mut prefix).await.is_err() {
                    return;
                }
                let mut request = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
                if stream.read_exact(&mut request).await.is_err() {
                    return;
                }
                for reply in respond(&request) {
                    let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                    framed.extend(reply);
                    let _ = stream.write_all(&framed).await;
                }
            });
        }
    });
    address
}

#[tokio::test]
async fn only_the_matching_answer_is_accepted() {
    let upstream = udp_upstream(|request, client| {
        let id = id_of(request);
        // A forgery from another port of the same host, with the right ID and
        // question: the connected socket must never deliver it.
        let spoofer = std::net::UdpSocket::bind((LOOPBACK, 0)).unwrap();
        spoofer.send_to(&answer(request, 1, 66), client).unwrap();
        let wrong_question = with_id(answer(&query(0, "evil.example"), 1, 77), id);
        vec![
            with_id(answer(request, 1, 11), id.wrapping_add(1)),
            wrong_question,
            b"garbage".to_vec(),
            answer(request, 1, 42),
        ]
    })
    .await;
    let pool = pool(vec![upstream], Duration::from_secs(2));
    let request = query(0xc11e, "www.example.com");
    let response = pool.resolve(&request, Protocol::Udp).await.unwrap();
    assert_eq!(id_of(&response), 0xc11e);
    assert_eq!(marker_of(&response), 42);
    let stats = pool.stats();
    assert_eq!(stats.mismatched_ignored, 3);
    assert_eq!((stats.queries, stats.answered), (1, 1));
}

#[tokio::test]
async fn each_attempt_uses_a_random_id_and_a_fresh_port() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let upstream = udp_upstream(move |request, client| {
        log.lock().unwrap().push((id_of(request), client.port()));
        vec![answer(request, 1, 1)]
    })
    .await;
    let pool = pool(vec![upstream], Duration::from_secs(2));
    for _ in 0..20 {
        let response = pool
            .resolve(&query(7, "example.com"), Protocol::Udp)
            .await
            .unwrap();
        assert_eq!(id_of(&response), 7);
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 20);
    assert!(
        seen.iter().any(|&(id, _)| id != 7),
        "upstream IDs are the client's"
    );
    let ports: std::collections::HashSet<_> = seen.iter().map(|&(_, port)| port).collect();
    assert!(ports.len() > 1, "every query came from port {ports:?}");
}

#[tokio::test]
async fn a_silent_upstream_fails_over_after_the_timeout() {
    let (silent, _guard) = silent_udp_upstream().await;
    let good = udp_upstream(|request, _| vec![answer(request, 1, 2)]).await;
    let timeout = Duration::from_millis(200);
    let pool = pool(vec![silent, good], timeout);
    let started = Instant::now();
    let response = pool
        .resolve(&query(1, "example.com"), Protocol::Udp)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(marker_of(&response), 2);
    assert!(elapsed >= timeout && elapsed < timeout * 5, "{elapsed:?}");
    assert_eq!(pool.stats().timeouts, 1);
}

#[tokio::test]
async fn a_refusing_upstream_fails_over_at_once() {
    let closed = closed_port().await;
    let good = udp_upstream(|request, _| vec![answer(request, 1, 3)]).await;
    let pool = pool(vec![closed, good], Duration::from_secs(2));
    let started = Instant::now();
    let response = pool
        .resolve(&query(1, "example.com"), Protocol::Udp)
        .await
        .unwrap();
    assert_eq!(marker_of(&response), 3);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let stats = pool.stats();
    assert_eq!((stats.refusals, stats.timeouts), (1, 0));
}

#[tokio::test]
async fn all_dead_fails_within_the_sum_of_timeouts() {
    let (silent_a, _guard_a) = silent_udp_upstream().await;
    let (silent_b, _guard_b) = silent_udp_upstream().await;
    let closed = closed_port().await;
    let timeout = Duration::from_millis(150);
    let pool = pool(vec![silent_a, closed, silent_b], timeout);
    let started = Instant::now();
    let error = pool
        .resolve(&query(1, "example.com"), Protocol::Udp)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(error, ResolveError::AllFailed { attempts: 3 });
    assert!(
        elapsed >= timeout * 2 && elapsed < timeout * 2 + Duration::from_secs(1),
        "{elapsed:?}"
    );
    let stats = pool.stats();
    assert_eq!(
        (stats.timeouts, stats.refusals, stats.all_failed),
        (2, 1, 1)
    );
}

#[tokio::test]
async fn truncated_udp_answers_pass_through() {
    let upstream = udp_upstream(|request, _| {
        let mut truncated = answer(request, 0, 0);
        truncated[2] |= 0x02;
        vec![truncated]
    })
    .await;
    let pool = pool(vec![upstream], Duration::from_secs(2));
    let response = pool
        .resolve(&query(0x5151, "big.example"), Protocol::Udp)
        .await
        .unwrap();
    assert!(tundns_dns::is_truncated(&response));
    assert_eq!(id_of(&response), 0x5151);
}

#[tokio::test]
async fn tcp_carries_large_answers_and_ignores_mismatches() {
    let upstream = tcp_upstream(|request| {
        let id = id_of(request);
        vec![
            with_id(answer(request, 1, 9), id ^ 0xffff),
            answer(request, 200, 5),
        ]
    })
    .await;
    let closed = closed_port().await;
    let pool = pool(vec![closed, upstream], Duration::from_secs(2));
    let response = pool
        .resolve(&query(0x0a0b, "big.example"), Protocol::Tcp)
        .await
        .unwrap();
    assert_eq!(id_of(&response), 0x0a0b);
    let message = Message::from_octets(&response[..]).unwrap();
    assert_eq!(message.header_counts().ancount(), 200);
    assert!(response.len() > 4096);
    let stats = pool.stats();
    assert_eq!((stats.refusals, stats.mismatched_ignored), (1, 1));
}

#[tokio::test]
async fn tcp_upstream_closing_early_fails_over() {
    let closes = tcp_upstream(|_| Vec::new()).await;
    let good = tcp_upstream(|request| vec![answer(request, 1, 8)]).await;
    let pool = pool(vec![closes, good], Duration::from_secs(2));
    let response = pool
        .resolve(&query(1, "example.com"), Protocol::Tcp)
        .await
        .unwrap();
    assert_eq!(marker_of(&response), 8);
    assert_eq!(pool.stats().failures, 1);
}

#[tokio::test]
async fn concurrent_resolves_share_one_pool() {
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    let upstream = udp_upstream(move |request, _| {
        counter.fetch_add(1, Ordering::Relaxed);
        vec![answer(request, 1, request[12])]
    })
    .await;
    let pool = Arc::new(pool(vec![upstream], Duration::from_secs(2)));
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..64u16 {
        let pool = pool.clone();
        let results = results.clone();
        tasks.push(tokio::spawn(async move {
            // Names of different lengths, so each answer's marker identifies its question.
            let name = format!("{}.example", "a".repeat(usize::from(i % 60) + 1));
            let response = pool.resolve(&query(i, &name), Protocol::Udp).await.unwrap();
            results
                .lock()
                .await
                .push((i, id_of(&response), marker_of(&response)));
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let results = results.lock().await;
    assert_eq!(results.len(), 64);
    for &(i, id, marker) in results.iter() {
        assert_eq!(id, i);
        assert_eq!(usize::from(marker), usize::from(i % 60) + 1);
    }
    assert_eq!(served.load(Ordering::Relaxed), 64);
    assert_eq!(pool.stats().answered, 64);
}

#[tokio::test]
async fn ipv6_loopback_works_when_available() {
    let Ok(socket) = UdpSocket::bind("[::1]:0").await else {
        return;
    };
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 512];
        if let Ok((len, client)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&answer(&buf[..len], 1, 6), client).await;
        }
    });
    let pool = pool(vec![address], Duration::from_secs(2));
    let response = pool
        .resolve(&query(3, "v6.example"), Protocol::Udp)
        .await
        .unwrap();
    assert_eq!(marker_of(&response), 6);
}

#[tokio::test]
async fn fwmark_is_applied_or_reported() {
    let good = udp_upstream(|request, _| vec![answer(request, 1, 4)]).await;
    let pool = UpstreamPool::new(
        vec![good],
        PoolConfig {
            attempt_timeout: Duration::from_secs(2),
            fwmark: Some(0x5a5a),
        },
    );
    // SO_MARK needs CAP_NET_ADMIN: probe whether this process has it.
    let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let result = pool.resolve(&query(1, "example.com"), Protocol::Udp).await;
    if probe.set_mark(0x5a5a).is_ok() {
        assert_eq!(marker_of(&result.unwrap()), 4);
    } else {
        assert_eq!(result.unwrap_err(), ResolveError::AllFailed { attempts: 1 });
        assert_eq!(pool.stats().failures, 1);
    }
}

#[tokio::test]
async fn invalid_queries_and_empty_pools_send_nothing() {
    let pool = pool(Vec::new(), Duration::from_secs(1));
    let mut response = query(1, "example.com");
    response[2] |= 0x80;
    assert_eq!(
        pool.resolve(&response, Protocol::Udp).await,
        Err(ResolveError::InvalidQuery)
    );
    assert_eq!(
        pool.resolve(b"short", Protocol::Tcp).await,
        Err(ResolveError::InvalidQuery)
    );
    assert_eq!(
        pool.resolve(&query(1, "example.com"), Protocol::Udp).await,
        Err(ResolveError::NoUpstreams)
    );
    assert_eq!(pool.stats().queries, 0);
}

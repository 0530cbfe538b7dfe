//! DoQ (RFC 9250) and DoH over HTTP/3 against in-process quinn and h3 servers on
//! loopback, with a CA made in the test.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use common::*;
use domain::base::iana::{OptionCode, Rtype};
use quinn::crypto::rustls::QuicServerConfig;
use tundns_test_support::dns::{Edns, Query};
use tundns_upstream::{PoolConfig, Protocol, ResolveError, Upstream, UpstreamPool};

const TIMEOUT: Duration = Duration::from_secs(3);

fn quic(address: SocketAddr) -> Upstream {
    Upstream::Quic {
        server_name: SERVER_NAME.into(),
        address,
    }
}

fn h3(address: SocketAddr) -> Upstream {
    Upstream::H3 {
        server_name: SERVER_NAME.into(),
        address,
        path: "/dns-query".into(),
    }
}

/// What a fake QUIC server saw.
#[derive(Default)]
struct ServerLog {
    /// QUIC connections accepted.
    accepts: AtomicUsize,
    /// The DNS ID of every query received.
    ids: Mutex<Vec<u16>>,
}

impl ServerLog {
    fn ids(&self) -> Vec<u16> {
        self.ids.lock().unwrap().clone()
    }
}

/// What the server sends back on a query's stream: after the delay, these bytes as they
/// are (the test frames them, or not).
type Reply = (Duration, Vec<u8>);

/// A QUIC server on `bind` with the test PKI, taking 0-RTT (TLS 1.3 only, as QUIC needs).
/// Its session cache is its own: a new server does not know an old one's tickets.
fn quic_server(pki: &TestPki, alpn: &[u8], bind: SocketAddr) -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(pki.key_der.clone().into());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), key)
        .unwrap();
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.max_early_data_size = u32::MAX;
    let crypto = QuicServerConfig::try_from(tls).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    quinn::Endpoint::server(config, bind).unwrap()
}

/// A DoQ server on `bind`: each bidirectional stream's query is read to its end and
/// answered with `respond`'s bytes, then the stream is finished. Returns its endpoint.
fn doq_upstream<F>(pki: &TestPki, bind: SocketAddr, respond: F) -> (quinn::Endpoint, Arc<ServerLog>)
where
    F: Fn(&[u8]) -> Reply + Send + Sync + 'static,
{
    let endpoint = quic_server(pki, b"doq", bind);
    let server = endpoint.clone();
    let log = Arc::new(ServerLog::default());
    let server_log = log.clone();
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        for _ in 0..MAX_SERVED {
            let Some(incoming) = server.accept().await else {
                return;
            };
            server_log.accepts.fetch_add(1, Ordering::Relaxed);
            let (log, respond) = (server_log.clone(), respond.clone());
            tokio::spawn(async move {
                let Ok(connecting) = incoming.accept() else {
                    return;
                };
                // Serve 0-RTT streams as they come.
                let Ok((connection, _)) = connecting.into_0rtt() else {
                    return;
                };
                for _ in 0..MAX_SERVED {
                    let Ok((mut send, mut recv)) = connection.accept_bi().await else {
                        return;
                    };
                    let (log, respond) = (log.clone(), respond.clone());
                    tokio::spawn(async move {
                        let Ok(framed) = recv.read_to_end(65537).await else {
                            return;
                        };
                        let query = &framed[2..];
                        log.ids.lock().unwrap().push(id_of(query));
                        let (delay, reply) = respond(query);
                        tokio::time::sleep(delay).await;
                        let _ = send.write_all(&reply).await;
                        let _ = send.finish();
                        // Keep the stream until the client has read it.
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    });
    (endpoint, log)
}

/// `message` with its 2-byte length prefix, as a DoQ answer goes on the wire.
fn framed(message: Vec<u8>) -> Vec<u8> {
    let mut framed = (message.len() as u16).to_be_bytes().to_vec();
    framed.extend(message);
    framed
}

/// A DoH server over HTTP/3 on `bind`: POST /dns-query with an `application/dns-message`
/// body answered by `respond`'s message. Returns its endpoint.
fn h3_upstream<F>(pki: &TestPki, bind: SocketAddr, respond: F) -> (quinn::Endpoint, Arc<ServerLog>)
where
    F: Fn(&[u8]) -> Reply + Send + Sync + 'static,
{
    let endpoint = quic_server(pki, b"h3", bind);
    let server = endpoint.clone();
    let log = Arc::new(ServerLog::default());
    let server_log = log.clone();
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        for _ in 0..MAX_SERVED {
            let Some(incoming) = server.accept().await else {
                return;
            };
            server_log.accepts.fetch_add(1, Ordering::Relaxed);
            let (log, respond) = (server_log.clone(), respond.clone());
            tokio::spawn(async move {
                let Ok(connecting) = incoming.accept() else {
                    return;
                };
                let Ok((connection, _)) = connecting.into_0rtt() else {
                    return;
                };
                let Ok(mut h3) =
                    h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(connection))
                        .await
                else {
                    return;
                };
                for _ in 0..MAX_SERVED {
                    let Ok(Some(resolver)) = h3.accept().await else {
                        return;
                    };
                    let (log, respond) = (log.clone(), respond.clone());
                    tokio::spawn(async move {
                        let Ok((request, mut stream)) = resolver.resolve_request().await else {
                            return;
                        };
                        let mut body = Vec::new();
                        while let Ok(Some(mut chunk)) = stream.recv_data().await {
                            while chunk.has_remaining() {
                                let part = chunk.chunk().to_vec();
                                chunk.advance(part.len());
                                body.extend(part);
                            }
                        }
                        let wrong = request.method() != http::Method::POST
                            || request.uri().path() != "/dns-query"
                            || request
                                .headers()
                                .get(http::header::CONTENT_TYPE)
                                .is_none_or(|value| value != "application/dns-message");
                        if wrong || body.len() < 12 {
                            let response = http::Response::builder()
                                .status(http::StatusCode::BAD_REQUEST)
                                .body(())
                                .unwrap();
                            let _ = stream.send_response(response).await;
                            let _ = stream.finish().await;
                            return;
                        }
                        log.ids.lock().unwrap().push(id_of(&body));
                        let (delay, reply) = respond(&body);
                        tokio::time::sleep(delay).await;
                        let response = http::Response::builder()
                            .header(http::header::CONTENT_TYPE, "application/dns-message")
                            .body(())
                            .unwrap();
                        let _ = stream.send_response(response).await;
                        let _ = stream.send_data(Bytes::from(reply)).await;
                        let _ = stream.finish().await;
                    });
                }
            });
        }
    });
    (endpoint, log)
}

/// A DoQ or HTTP/3 server on `bind` answering with `respond`'s message.
type ServerAt = fn(&TestPki, SocketAddr, fn(&[u8]) -> Reply) -> (quinn::Endpoint, Arc<ServerLog>);
/// The same on a fresh loopback port: its address.
type Server = fn(&TestPki, fn(&[u8]) -> Reply) -> (SocketAddr, Arc<ServerLog>);

fn doq_server_at(
    pki: &TestPki,
    bind: SocketAddr,
    respond: fn(&[u8]) -> Reply,
) -> (quinn::Endpoint, Arc<ServerLog>) {
    doq_upstream(pki, bind, move |query| {
        let (delay, reply) = respond(query);
        (delay, framed(reply))
    })
}

fn h3_server_at(
    pki: &TestPki,
    bind: SocketAddr,
    respond: fn(&[u8]) -> Reply,
) -> (quinn::Endpoint, Arc<ServerLog>) {
    h3_upstream(pki, bind, respond)
}

/// Polls `done` every 20 ms, letting the runtime run meanwhile, until it holds or
/// `bound` has passed.
async fn wait_until_async(bound: Duration, done: impl Fn() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < bound {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

fn any_port() -> SocketAddr {
    (LOOPBACK, 0).into()
}

fn doq_server(pki: &TestPki, respond: fn(&[u8]) -> Reply) -> (SocketAddr, Arc<ServerLog>) {
    let (endpoint, log) = doq_server_at(pki, any_port(), respond);
    (endpoint.local_addr().unwrap(), log)
}

fn h3_server(pki: &TestPki, respond: fn(&[u8]) -> Reply) -> (SocketAddr, Arc<ServerLog>) {
    let (endpoint, log) = h3_server_at(pki, any_port(), respond);
    (endpoint.local_addr().unwrap(), log)
}

fn marked(query: &[u8]) -> Reply {
    (Duration::ZERO, answer(query, 1, 4))
}

fn slow_marked(query: &[u8]) -> Reply {
    (Duration::from_millis(100), answer(query, 1, 5))
}

fn other_question(_: &[u8]) -> Reply {
    (Duration::ZERO, answer(&query(0, "evil.example"), 1, 66))
}

#[tokio::test]
async fn doq_sends_id_zero_and_restores_the_id() {
    answers_with_id_zero_on_the_wire("doq-id", doq_server, quic).await;
}

#[tokio::test]
async fn h3_sends_id_zero_and_restores_the_id() {
    answers_with_id_zero_on_the_wire("h3-id", h3_server, h3).await;
}

async fn answers_with_id_zero_on_the_wire(
    test: &str,
    server: Server,
    spec: fn(SocketAddr) -> Upstream,
) {
    let pki = TestPki::new(test);
    let (address, log) = server(&pki, marked);
    let pool = configured(vec![spec(address)], pki.pool_config(TIMEOUT));
    for id in [0x4242, 7] {
        let response = pool
            .resolve(&query(id, "example.com"), Protocol::Udp)
            .await
            .unwrap();
        assert_eq!((id_of(&response), marker_of(&response)), (id, 4));
    }
    assert_eq!(log.ids(), [0, 0]);
    assert_eq!(pool.stats().answered, 2);
}

#[tokio::test]
async fn doq_shares_one_connection_between_concurrent_queries() {
    shares_one_connection("doq-share", doq_server, quic).await;
}

#[tokio::test]
async fn h3_shares_one_connection_between_concurrent_queries() {
    shares_one_connection("h3-share", h3_server, h3).await;
}

async fn shares_one_connection(test: &str, server: Server, spec: fn(SocketAddr) -> Upstream) {
    let pki = TestPki::new(test);
    let (address, log) = server(&pki, slow_marked);
    let pool = Arc::new(configured(vec![spec(address)], pki.pool_config(TIMEOUT)));
    pool.resolve(&query(1, "warm.example"), Protocol::Udp)
        .await
        .unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for id in 1..=8u16 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let response = pool
                .resolve(&query(id, "example.com"), Protocol::Udp)
                .await
                .unwrap();
            assert_eq!((id_of(&response), marker_of(&response)), (id, 5));
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Eight 100 ms answers at once, not one after the other.
    assert_elapsed_below(started, Duration::from_millis(500));
    assert_eq!(log.accepts.load(Ordering::Relaxed), 1);
    assert_eq!(log.ids().len(), 9);
}

#[tokio::test]
async fn a_doq_answer_to_another_question_is_ignored_and_fails_over() {
    answer_to_another_question_fails_over("doq-forged", doq_server, quic).await;
}

#[tokio::test]
async fn an_h3_answer_to_another_question_is_ignored_and_fails_over() {
    answer_to_another_question_fails_over("h3-forged", h3_server, h3).await;
}

async fn answer_to_another_question_fails_over(
    test: &str,
    server: Server,
    spec: fn(SocketAddr) -> Upstream,
) {
    let pki = TestPki::new(test);
    let (forger, _) = server(&pki, other_question);
    let good = udp_upstream(|request, _| vec![answer(request, 1, 6)]).await;
    let pool = configured(
        vec![spec(forger), udp(good)],
        PoolConfig {
            hedge: false,
            ..pki.pool_config(TIMEOUT)
        },
    );
    let response = pool
        .resolve(&query(1, "www.example.com"), Protocol::Udp)
        .await
        .unwrap();
    assert_eq!(marker_of(&response), 6);
    let stats = pool.stats();
    assert_eq!((stats.mismatched_ignored, stats.failures), (1, 1));
}

#[tokio::test]
async fn malformed_doq_answers_fail_the_attempt_without_harm() {
    let pki = TestPki::new("doq-malformed");
    let (endpoint, log) = doq_upstream(&pki, any_port(), |query| {
        let reply = match first_label(query).as_str() {
            // A length that promises more than comes.
            "short" => vec![0, 40, 1, 2, 3],
            // Two answers on one stream.
            "twice" => [framed(answer(query, 1, 1)), framed(answer(query, 1, 2))].concat(),
            // An empty message.
            "empty" => vec![0, 0],
            _ => framed(answer(query, 1, 7)),
        };
        (Duration::ZERO, reply)
    });
    let address = endpoint.local_addr().unwrap();
    let pool = configured(
        vec![quic(address)],
        PoolConfig {
            hedge: false,
            ..pki.pool_config(TIMEOUT)
        },
    );
    for name in ["short.example", "twice.example", "empty.example"] {
        let error = pool
            .resolve(&query(1, name), Protocol::Udp)
            .await
            .unwrap_err();
        assert!(
            matches!(error, ResolveError::AllFailed { attempts: 1, .. }),
            "{name}: {error:?}"
        );
    }
    let pool = configured(vec![quic(address)], pki.pool_config(TIMEOUT));
    let response = resolve_example(&pool).await;
    assert_eq!(marker_of(&response), 7);
    assert_eq!(log.ids().len(), 4, "the server saw every query");
}

/// `example.com A` with ID 0x4242 and an OPT record carrying `options`.
fn query_with_options(options: &[(OptionCode, &[u8])]) -> Vec<u8> {
    let edns = options.iter().fold(Edns::new(1232), |edns, (code, data)| {
        edns.option(*code, data)
    });
    Query::new("example.com", Rtype::A)
        .id(0x4242)
        .edns(edns)
        .build()
}

#[tokio::test]
async fn doq_takes_edns_tcp_keepalive_out_of_the_query() {
    let pki = TestPki::new("doq-keepalive");
    let received = Arc::new(Mutex::new(Vec::new()));
    let server_received = received.clone();
    let (endpoint, _) = doq_upstream(&pki, any_port(), move |query| {
        server_received.lock().unwrap().push(query.to_vec());
        (Duration::ZERO, framed(answer(query, 1, 4)))
    });
    let address = endpoint.local_addr().unwrap();
    let pool = configured(vec![quic(address)], pki.pool_config(TIMEOUT));
    let cookie = (OptionCode::COOKIE, &[1, 2, 3, 4, 5, 6, 7, 8][..]);
    let keepalive = (OptionCode::TCP_KEEPALIVE, &[][..]);
    let response = pool
        .resolve(&query_with_options(&[keepalive, cookie]), Protocol::Udp)
        .await
        .unwrap();
    assert_eq!((id_of(&response), marker_of(&response)), (0x4242, 4));
    let without_keepalive = with_id(query_with_options(&[cookie]), 0);
    assert_eq!(*received.lock().unwrap(), [without_keepalive]);

    // Options that do not parse could hide one: such a query is not sent.
    let mut unreadable = query_with_options(&[keepalive, cookie]);
    let cookie_len_low_byte = unreadable.len() - 9;
    unreadable[cookie_len_low_byte] = 9;
    let error = pool.resolve(&unreadable, Protocol::Udp).await.unwrap_err();
    assert!(
        matches!(error, ResolveError::AllFailed { attempts: 1, .. }),
        "{error:?}"
    );
    assert_eq!(received.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn doq_verifies_the_certificate_against_the_ca_file_only() {
    verifies_the_certificate("doq-verify", doq_server, quic).await;
}

#[tokio::test]
async fn h3_verifies_the_certificate_against_the_ca_file_only() {
    verifies_the_certificate("h3-verify", h3_server, h3).await;
}

async fn verifies_the_certificate(test: &str, server: Server, spec: fn(SocketAddr) -> Upstream) {
    let pki = TestPki::new(test);
    let (address, log) = server(&pki, marked);
    let untrusting = sequential(vec![spec(address)], TIMEOUT);
    assert!(
        untrusting
            .resolve(&query(1, "example.com"), Protocol::Udp)
            .await
            .is_err()
    );
    assert!(log.ids().is_empty(), "a query went out unverified");
    let wrong_name = match spec(address) {
        Upstream::Quic { address, .. } => Upstream::Quic {
            server_name: "other.lab.test".into(),
            address,
        },
        Upstream::H3 { address, path, .. } => Upstream::H3 {
            server_name: "other.lab.test".into(),
            address,
            path,
        },
        other => panic!("not a QUIC upstream: {other}"),
    };
    let misnamed = configured(vec![wrong_name], pki.pool_config(TIMEOUT));
    assert!(
        misnamed
            .resolve(&query(1, "example.com"), Protocol::Udp)
            .await
            .is_err()
    );
    assert!(log.ids().is_empty(), "a query went to a misnamed server");
    let trusting = configured(vec![spec(address)], pki.pool_config(TIMEOUT));
    assert_eq!(marker_of(&resolve_example(&trusting).await), 4);
}

#[tokio::test]
async fn an_idle_doq_connection_closes_and_the_next_resumes_in_0rtt() {
    resumes_in_0rtt("doq-0rtt", doq_server, quic).await;
}

#[tokio::test]
async fn an_idle_h3_connection_closes_and_the_next_resumes_in_0rtt() {
    resumes_in_0rtt("h3-0rtt", h3_server, h3).await;
}

/// The first connection is a full handshake that leaves a resumption ticket; it closes
/// when idle, and the next query goes in 0-RTT on a new one, which the server takes.
async fn resumes_in_0rtt(test: &str, server: Server, spec: fn(SocketAddr) -> Upstream) {
    let pki = TestPki::new(test);
    let (address, log) = server(&pki, marked);
    let pool = configured(
        vec![spec(address)],
        PoolConfig {
            idle_timeout: Duration::from_millis(200),
            ..pki.pool_config(TIMEOUT)
        },
    );
    resolve_example(&pool).await;
    assert_eq!(pool.stats().zero_rtt_accepted, 0, "no ticket yet");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let response = pool
        .resolve(&query(0x0277, "example.com"), Protocol::Udp)
        .await
        .unwrap();
    assert_eq!((id_of(&response), marker_of(&response)), (0x0277, 4));
    assert_eq!(
        log.accepts.load(Ordering::Relaxed),
        2,
        "the idle one closed"
    );
    let stats = pool.stats();
    assert_eq!(
        (
            stats.zero_rtt_accepted,
            stats.zero_rtt_rejected,
            stats.failures
        ),
        (1, 0, 0)
    );
}

#[tokio::test]
async fn a_silent_quic_upstream_fails_over_and_is_marked_dead() {
    let pki = TestPki::new("quic-silent");
    let (silent_doq, _doq_guard) = silent_udp_upstream().await;
    let (silent_h3, _h3_guard) = silent_udp_upstream().await;
    let good = udp_upstream(|request, _| vec![answer(request, 1, 8)]).await;
    let timeout = Duration::from_millis(300);
    let pool = configured(
        vec![quic(silent_doq), h3(silent_h3), udp(good)],
        PoolConfig {
            hedge: false,
            ..pki.pool_config(timeout)
        },
    );
    let started = Instant::now();
    let response = resolve_example(&pool).await;
    assert_eq!(marker_of(&response), 8);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout * 2 && elapsed < timeout * 2 + Duration::from_millis(700),
        "{elapsed:?}"
    );
    assert_eq!(pool.stats().timeouts, 2);
    for _ in 1..tundns_upstream::DEAD_AFTER_FAILURES {
        resolve_example(&pool).await;
    }
    let health = pool.health();
    assert!(!health[0].alive && !health[1].alive, "{health:?}");
    assert!(health[2].alive);

    // With hedging, a silent QUIC upstream costs one hedge delay, not a timeout.
    let hedged = configured(
        vec![quic(silent_doq), udp(good)],
        PoolConfig {
            attempt_timeout: Duration::from_secs(3),
            ..pki.pool_config(TIMEOUT)
        },
    );
    let started = Instant::now();
    resolve_example(&hedged).await;
    assert_elapsed_below(started, Duration::from_secs(1));
}

#[tokio::test]
async fn sequential_doq_queries_reuse_the_connection_and_feed_the_rtt() {
    let pki = TestPki::new("doq-sequential");
    let (address, log) = doq_server(&pki, marked);
    let pool = configured(vec![quic(address)], pki.pool_config(TIMEOUT));
    resolve_example(&pool).await;
    resolve_example(&pool).await;
    assert_eq!(log.accepts.load(Ordering::Relaxed), 1);
    assert_eq!(pool.upstream_stats()[0].1.rtt_count(), 2);
}

#[test]
fn quic_upstreams_need_valid_names_and_paths() {
    let address = "127.0.0.1:853".parse().unwrap();
    let bad_name = Upstream::Quic {
        server_name: "not a name!".into(),
        address,
    };
    assert!(matches!(
        UpstreamPool::new(vec![bad_name], PoolConfig::default()),
        Err(tundns_upstream::PoolError::ServerName(_))
    ));
    let bad_path = Upstream::H3 {
        server_name: SERVER_NAME.into(),
        address,
        path: "dns-query".into(),
    };
    assert!(matches!(
        UpstreamPool::new(vec![bad_path], PoolConfig::default()),
        Err(tundns_upstream::PoolError::DohPath(_))
    ));
}

#[tokio::test]
async fn doq_asks_again_when_a_restarted_server_refuses_0rtt() {
    asks_again_when_0rtt_is_refused("doq-0rtt-refused", doq_server_at, quic).await;
}

#[tokio::test]
async fn h3_asks_again_when_a_restarted_server_refuses_0rtt() {
    asks_again_when_0rtt_is_refused("h3-0rtt-refused", h3_server_at, h3).await;
}

/// A server restarted on the same port does not know the ticket the client kept: the
/// client sends its query in 0-RTT, the server refuses it, and the query is asked again
/// once the handshake is over, without failing the attempt.
async fn asks_again_when_0rtt_is_refused(
    test: &str,
    server: ServerAt,
    spec: fn(SocketAddr) -> Upstream,
) {
    let pki = TestPki::new(test);
    let (first, first_log) = server(&pki, any_port(), marked);
    let address = first.local_addr().unwrap();
    let pool = configured(
        vec![spec(address)],
        PoolConfig {
            idle_timeout: Duration::from_millis(200),
            ..pki.pool_config(TIMEOUT)
        },
    );
    resolve_example(&pool).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.close(0u32.into(), b"restart");
    tokio::time::timeout(TIMEOUT, first.wait_idle())
        .await
        .unwrap();
    drop(first);
    // The old socket goes once the old server's tasks have seen the close (bounded).
    let free = wait_until_async(TIMEOUT, || std::net::UdpSocket::bind(address).is_ok()).await;
    assert!(free, "{address} stayed in use");
    let (_second, second_log) = server(&pki, address, marked);

    let response = pool
        .resolve(&query(0x5eed, "example.com"), Protocol::Udp)
        .await
        .unwrap();
    assert_eq!((id_of(&response), marker_of(&response)), (0x5eed, 4));
    assert_eq!(first_log.ids().len(), 1);
    assert_eq!(second_log.ids(), [0]);
    let stats = pool.stats();
    assert_eq!(
        (
            stats.zero_rtt_accepted,
            stats.zero_rtt_rejected,
            stats.failures
        ),
        (0, 1, 0)
    );
}

/// A resumed connection that fails its handshake (the restarted server's certificate is
/// from another CA) is a failed attempt, not a refused 0-RTT.
#[tokio::test]
async fn a_failed_resumed_handshake_is_not_a_refused_0rtt() {
    let pki = TestPki::new("doq-0rtt-lost");
    let (first, _) = doq_server_at(&pki, any_port(), marked);
    let address = first.local_addr().unwrap();
    let pool = configured(
        vec![quic(address)],
        PoolConfig {
            idle_timeout: Duration::from_millis(200),
            ..pki.pool_config(TIMEOUT)
        },
    );
    resolve_example(&pool).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.close(0u32.into(), b"restart");
    tokio::time::timeout(TIMEOUT, first.wait_idle())
        .await
        .unwrap();
    drop(first);
    let free = wait_until_async(TIMEOUT, || std::net::UdpSocket::bind(address).is_ok()).await;
    assert!(free, "{address} stayed in use");
    let other_ca = TestPki::new("doq-0rtt-lost-other");
    let (_second, second_log) = doq_server_at(&other_ca, address, marked);

    let error = pool
        .resolve(&query(1, "example.com"), Protocol::Udp)
        .await
        .unwrap_err();
    assert!(matches!(error, ResolveError::AllFailed { .. }), "{error:?}");
    // The 0-RTT outcome is known once the handshake has failed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = pool.stats();
    assert_eq!(
        (
            stats.zero_rtt_accepted,
            stats.zero_rtt_rejected,
            stats.failures
        ),
        (0, 0, 1)
    );
    assert!(
        second_log.ids().len() <= 1,
        "0-RTT data may arrive, no more"
    );
}

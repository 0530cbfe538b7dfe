//! Fake upstreams and DNS messages for the pool's tests, on loopback only.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use domain::base::iana::{Rcode, Rtype};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tundns_test_support::dns::{Answer, Query};
use tundns_upstream::{PoolConfig, Protocol, Upstream, UpstreamPool};

pub const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Upper bound on any fake server loop, on top of the tests' own timeouts.
pub const MAX_SERVED: usize = 1000;

/// `qname A` with RD and no EDNS.
pub fn query(id: u16, qname: &str) -> Vec<u8> {
    Query::new(qname, Rtype::A).id(id).build()
}

/// An answer to `request` with `count` A records whose last octet is `marker`.
pub fn answer(request: &[u8], count: usize, marker: u8) -> Vec<u8> {
    (0..count)
        .fold(Answer::to(request), |answer, _| {
            answer.a(60, [192, 0, 2, marker])
        })
        .build()
}

/// An answer to `request` with no records and `rcode`.
pub fn error_answer(request: &[u8], rcode: Rcode) -> Vec<u8> {
    Answer::to(request).rcode(rcode).build()
}

pub fn with_id(mut msg: Vec<u8>, id: u16) -> Vec<u8> {
    msg[..2].copy_from_slice(&id.to_be_bytes());
    msg
}

pub fn id_of(msg: &[u8]) -> u16 {
    u16::from_be_bytes([msg[0], msg[1]])
}

pub fn rcode_of(msg: &[u8]) -> u8 {
    msg[3] & 0x0f
}

/// The last octet of the first A record (answers built by `answer`).
pub fn marker_of(msg: &[u8]) -> u8 {
    *msg.last().unwrap()
}

/// The first label of the question, as text.
pub fn first_label(msg: &[u8]) -> String {
    let len = usize::from(msg[12]);
    String::from_utf8_lossy(&msg[13..13 + len]).into_owned()
}

pub fn udp(address: SocketAddr) -> Upstream {
    Upstream::Udp(address)
}

pub fn tcp(address: SocketAddr) -> Upstream {
    Upstream::Tcp(address)
}

pub fn tls(address: SocketAddr) -> Upstream {
    Upstream::Tls {
        server_name: SERVER_NAME.into(),
        address,
    }
}

pub fn https(address: SocketAddr) -> Upstream {
    Upstream::Https {
        server_name: SERVER_NAME.into(),
        address,
        path: "/dns-query".into(),
    }
}

pub fn pool(upstreams: Vec<Upstream>, attempt_timeout: Duration) -> UpstreamPool {
    configured(
        upstreams,
        PoolConfig {
            attempt_timeout,
            ..PoolConfig::default()
        },
    )
}

/// A pool without hedging: upstreams are tried strictly one after the other.
pub fn sequential(upstreams: Vec<Upstream>, attempt_timeout: Duration) -> UpstreamPool {
    configured(
        upstreams,
        PoolConfig {
            attempt_timeout,
            hedge: false,
            ..PoolConfig::default()
        },
    )
}

pub fn configured(upstreams: Vec<Upstream>, config: PoolConfig) -> UpstreamPool {
    UpstreamPool::new(upstreams, config).unwrap()
}

/// `pool`'s answer to `example.com` (id 1, the client asking over UDP); panics on an error.
pub async fn resolve_example(pool: &UpstreamPool) -> bytes::Bytes {
    pool.resolve(&query(1, "example.com"), Protocol::Udp)
        .await
        .unwrap()
}

/// Less than `bound` has passed since `started`.
#[track_caller]
pub fn assert_elapsed_below(started: Instant, bound: Duration) {
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());
}

/// A UDP upstream that answers each query with whatever `respond` returns
/// (each message sent in order, from the server's own socket).
pub async fn udp_upstream<F>(respond: F) -> SocketAddr
where
    F: Fn(&[u8], SocketAddr) -> Vec<Vec<u8>> + Send + 'static,
{
    let socket = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let address = socket.local_addr().unwrap();
    serve_udp(socket, respond);
    address
}

pub fn serve_udp<F>(socket: UdpSocket, respond: F)
where
    F: Fn(&[u8], SocketAddr) -> Vec<Vec<u8>> + Send + 'static,
{
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
}

/// A UDP upstream that answers every query after `delay`, with `marker`.
pub async fn delayed_udp_upstream(delay: Duration, marker: u8) -> SocketAddr {
    let socket = Arc::new(UdpSocket::bind((LOOPBACK, 0)).await.unwrap());
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        for _ in 0..MAX_SERVED {
            let Ok((len, client)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let reply = answer(&buf[..len], 1, marker);
            let socket = socket.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = socket.send_to(&reply, client).await;
            });
        }
    });
    address
}

/// A bound UDP socket that never answers (kept alive by the returned guard).
pub async fn silent_udp_upstream() -> (SocketAddr, UdpSocket) {
    let socket = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    (socket.local_addr().unwrap(), socket)
}

/// A loopback port with nothing behind it (for UDP and TCP alike).
pub async fn closed_port() -> SocketAddr {
    let socket = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let address = socket.local_addr().unwrap();
    drop(socket);
    address
}

/// A TCP listener that accepts and then never says anything (a stalled
/// server): returns its address and its accept count.
pub async fn mute_tcp_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..MAX_SERVED {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::Relaxed);
            held.push(stream);
        }
    });
    (address, accepts)
}

/// A TCP upstream: for each connection, reads framed queries and writes the
/// frames `respond` returns. Returns its address and its accept count.
pub async fn tcp_upstream<F>(respond: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(&[u8]) -> Vec<Vec<u8>> + Send + Sync + 'static,
{
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    (address, serve_tcp(listener, respond))
}

pub fn serve_tcp<F>(listener: TcpListener, respond: F) -> Arc<AtomicUsize>
where
    F: Fn(&[u8]) -> Vec<Vec<u8>> + Send + Sync + 'static,
{
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        for _ in 0..MAX_SERVED {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::Relaxed);
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
    accepts
}

pub const SERVER_NAME: &str = "dns.lab.test";

/// A throw-away CA, a server certificate for [`SERVER_NAME`] it signed, and
/// the CA written to a PEM file.
pub struct TestPki {
    pub ca_file: PathBuf,
    pub chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    pub key_der: Vec<u8>,
}

impl TestPki {
    pub fn new(test: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tundns test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec![SERVER_NAME.to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let dir =
            std::env::temp_dir().join(format!("tundns-upstream-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        TestPki {
            ca_file,
            chain: vec![leaf.der().clone()],
            key_der: key.serialize_der(),
        }
    }

    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    pub fn pool_config(&self, attempt_timeout: Duration) -> PoolConfig {
        PoolConfig {
            attempt_timeout,
            ca_file: Some(self.ca_file.clone()),
            ..PoolConfig::default()
        }
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        if let Some(dir) = self.ca_file.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// What a fake DoT or DoH server sends back for one query: messages, each
/// after its delay.
pub type Replies = Vec<(Duration, Vec<u8>)>;

/// A DoT server: TLS with the test PKI, framed queries read in a loop, each
/// reply written after its delay (so answers can come out of order).
/// Returns its address and its accept count.
pub async fn dot_upstream<F>(pki: &TestPki, respond: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(&[u8]) -> Replies + Send + Sync + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config(&[]));
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        for _ in 0..MAX_SERVED {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let acceptor = acceptor.clone();
            let respond = respond.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let (mut reader, mut writer) = tokio::io::split(stream);
                let (frames, mut queue) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
                tokio::spawn(async move {
                    while let Some(frame) = queue.recv().await {
                        if writer.write_all(&frame).await.is_err() || writer.flush().await.is_err()
                        {
                            return;
                        }
                    }
                });
                for _ in 0..MAX_SERVED {
                    let mut prefix = [0u8; 2];
                    if reader.read_exact(&mut prefix).await.is_err() {
                        return;
                    }
                    let mut request = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
                    if reader.read_exact(&mut request).await.is_err() {
                        return;
                    }
                    for (delay, reply) in respond(&request) {
                        let frames = frames.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                            framed.extend(reply);
                            let _ = frames.send(framed);
                        });
                    }
                }
            });
        }
    });
    (address, accepts)
}

/// What a fake DoH server saw.
#[derive(Default)]
pub struct DohLog {
    pub accepts: AtomicUsize,
    /// The DNS ID of every query body received.
    pub ids: std::sync::Mutex<Vec<u16>>,
}

/// A DoH server: TLS with ALPN h2, HTTP/2, POST /dns-query with an
/// `application/dns-message` body answered by `respond` (the first reply,
/// after its delay).
pub async fn doh_upstream<F>(pki: &TestPki, respond: F) -> (SocketAddr, Arc<DohLog>)
where
    F: Fn(&[u8]) -> (Duration, Vec<u8>) + Send + Sync + 'static,
{
    use http_body_util::{BodyExt, Full};
    use hyper::{Request, Response, StatusCode};

    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config(&[b"h2"]));
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    let log = Arc::new(DohLog::default());
    let server_log = log.clone();
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        for _ in 0..MAX_SERVED {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            server_log.accepts.fetch_add(1, Ordering::Relaxed);
            let acceptor = acceptor.clone();
            let respond = respond.clone();
            let log = server_log.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let respond = respond.clone();
                        let log = log.clone();
                        async move {
                            let wrong = request.method() != hyper::Method::POST
                                || request.uri().path() != "/dns-query"
                                || request
                                    .headers()
                                    .get(hyper::header::CONTENT_TYPE)
                                    .is_none_or(|value| value != "application/dns-message");
                            let body = request.into_body().collect().await?.to_bytes();
                            if wrong || body.len() < 12 {
                                let mut response = Response::new(Full::new(bytes::Bytes::new()));
                                *response.status_mut() = StatusCode::BAD_REQUEST;
                                return Ok::<_, hyper::Error>(response);
                            }
                            log.ids.lock().unwrap().push(id_of(&body));
                            let (delay, reply) = respond(&body);
                            tokio::time::sleep(delay).await;
                            let mut response = Response::new(Full::new(bytes::Bytes::from(reply)));
                            response.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                "application/dns-message".parse().unwrap(),
                            );
                            Ok(response)
                        }
                    });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    (address, log)
}

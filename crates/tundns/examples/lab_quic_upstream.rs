//! The end-to-end lab's DoQ (RFC 9250) and DoH over HTTP/3 server: it answers each query
//! by forwarding it over UDP to a plain resolver (the lab's unbound).
//!
//! It exists because Debian's dnsdist (1.7) serves neither DoQ nor DoH3 (dnsdist does
//! from 1.9), and unbound serves neither: the `quic://` and `h3://` upstreams need a server
//! in the peer's namespace that no tundns code runs. This one is built from quinn, h3 and
//! h3-quinn as published, and `cargo test` builds it with the other examples.
//!
//! ```sh
//! lab_quic_upstream --cert server.pem --key server.key \
//!     --doq 192.0.2.53:853 --h3 192.0.2.53:443 --forward 192.0.2.53:53
//! ```
//!
//! It takes 0-RTT, serves `POST /dns-query` only, prints one line per answered query
//! (`doq answered`, `h3 answered`) and never panics on what a client sends: a malformed
//! stream or request is dropped.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use clap::Parser;
use hyper::http;
use quinn::crypto::rustls::QuicServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::UdpSocket;

/// How long the forwarded query may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest DNS message.
const MAX_MESSAGE: usize = 65535;
/// Connections, and streams per connection, served at once.
const MAX_STREAMS: u32 = 128;

#[derive(Parser)]
struct Args {
    /// PEM certificate chain.
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key.
    #[arg(long)]
    key: PathBuf,
    /// UDP address DoQ is served on.
    #[arg(long)]
    doq: Option<SocketAddr>,
    /// UDP address DoH over HTTP/3 is served on.
    #[arg(long)]
    h3: Option<SocketAddr>,
    /// The plain DNS resolver queries are forwarded to, from the address served on.
    #[arg(long)]
    forward: SocketAddr,
    /// Close a connection after this long without packets (QUIC's idle timeout).
    #[arg(long, default_value_t = 30_000)]
    idle_timeout_ms: u32,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match serve(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lab_quic_upstream: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let chain = CertificateDer::pem_file_iter(&args.cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&args.key)?;
    let serve = |address, alpn: &[u8]| -> Result<quinn::Endpoint, Box<dyn std::error::Error>> {
        let endpoint = endpoint(
            address,
            alpn,
            chain.clone(),
            key.clone_key(),
            args.idle_timeout_ms,
        )?;
        println!("listening {} on {address}", String::from_utf8_lossy(alpn));
        Ok(endpoint)
    };
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(address) = args.doq {
        let endpoint = serve(address, b"doq")?;
        let forward = Forward {
            to: args.forward,
            from: address.ip(),
        };
        tasks.spawn(accept(endpoint, move |connection| {
            serve_doq(connection, forward)
        }));
    }
    if let Some(address) = args.h3 {
        let endpoint = serve(address, b"h3")?;
        let forward = Forward {
            to: args.forward,
            from: address.ip(),
        };
        tasks.spawn(accept(endpoint, move |connection| {
            serve_h3(connection, forward)
        }));
    }
    if tasks.is_empty() {
        return Err("nothing to serve: give --doq, --h3 or both".into());
    }
    tasks.join_all().await;
    Ok(())
}

/// A QUIC server endpoint on `address` for `alpn`, taking 0-RTT.
fn endpoint(
    address: SocketAddr,
    alpn: &[u8],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    idle_timeout_ms: u32,
) -> Result<quinn::Endpoint, Box<dyn std::error::Error>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.max_early_data_size = u32::MAX;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(MAX_STREAMS.into())
        .max_idle_timeout(Some(quinn::VarInt::from_u32(idle_timeout_ms).into()));
    config.transport_config(Arc::new(transport));
    Ok(quinn::Endpoint::server(config, address)?)
}

/// Accepts connections (with their 0-RTT data) and serves each in its own task.
async fn accept<F, S>(endpoint: quinn::Endpoint, serve: F)
where
    F: Fn(quinn::Connection) -> S,
    S: Future<Output = ()> + Send + 'static,
{
    while let Some(incoming) = endpoint.accept().await {
        let Ok(connecting) = incoming.accept() else {
            continue;
        };
        match connecting.into_0rtt() {
            Ok((connection, _)) => {
                tokio::spawn(serve(connection));
            }
            Err(connecting) => {
                if let Ok(connection) = connecting.await {
                    tokio::spawn(serve(connection));
                }
            }
        }
    }
}

/// RFC 9250 §4.2: one query per stream, length-prefixed, answered the same way.
async fn serve_doq(connection: quinn::Connection, forward: Forward) {
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        tokio::spawn(async move {
            let Ok(framed) = recv.read_to_end(2 + MAX_MESSAGE).await else {
                return;
            };
            let Some((prefix, query)) = framed.split_first_chunk::<2>() else {
                return;
            };
            if usize::from(u16::from_be_bytes(*prefix)) != query.len() {
                let _ = send.reset(quinn::VarInt::from_u32(0x2));
                return;
            }
            let Some(answer) = ask(forward, query).await else {
                return;
            };
            let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
            framed.extend(answer);
            if send.write_all(&framed).await.is_ok() && send.finish().is_ok() {
                println!("doq answered");
                let _ = send.stopped().await;
            }
        });
    }
}

/// RFC 8484 over HTTP/3: `POST /dns-query` with an `application/dns-message` body.
async fn serve_h3(connection: quinn::Connection, forward: Forward) {
    let Ok(mut h3) =
        h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(connection)).await
    else {
        return;
    };
    while let Ok(Some(resolver)) = h3.accept().await {
        tokio::spawn(async move {
            let Ok((request, mut stream)) = resolver.resolve_request().await else {
                return;
            };
            let mut query = Vec::new();
            while let Ok(Some(mut chunk)) = stream.recv_data().await {
                if query.len() + chunk.remaining() > MAX_MESSAGE {
                    return;
                }
                while chunk.has_remaining() {
                    let part = chunk.chunk();
                    query.extend_from_slice(part);
                    let taken = part.len();
                    chunk.advance(taken);
                }
            }
            let acceptable = request.method() == http::Method::POST
                && request.uri().path() == "/dns-query"
                && request
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|value| value == "application/dns-message");
            let answer = match acceptable {
                true => ask(forward, &query).await,
                false => None,
            };
            let Some(answer) = answer else {
                let response = http::Response::builder()
                    .status(http::StatusCode::BAD_REQUEST)
                    .body(());
                if let Ok(response) = response {
                    let _ = stream.send_response(response).await;
                    let _ = stream.finish().await;
                }
                return;
            };
            let response = http::Response::builder()
                .header(http::header::CONTENT_TYPE, "application/dns-message")
                .body(());
            let Ok(response) = response else { return };
            if stream.send_response(response).await.is_ok()
                && stream.send_data(Bytes::from(answer)).await.is_ok()
                && stream.finish().await.is_ok()
            {
                println!("h3 answered");
            }
        });
    }
}

/// Where queries are forwarded, and from which address: the one this server serves on,
/// so the resolver's log tells them from anyone else's.
#[derive(Clone, Copy)]
struct Forward {
    to: SocketAddr,
    from: IpAddr,
}

/// `query` over UDP to the resolver, from a fresh port; the first answer with its ID.
async fn ask(forward: Forward, query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let socket = UdpSocket::bind((forward.from, 0)).await.ok()?;
    socket.connect(forward.to).await.ok()?;
    socket.send(query).await.ok()?;
    let mut buf = vec![0; MAX_MESSAGE];
    tokio::time::timeout(FORWARD_TIMEOUT, async {
        for _ in 0..16 {
            let len = socket.recv(&mut buf).await.ok()?;
            if len >= 12 && buf[..2] == query[..2] {
                return Some(buf[..len].to_vec());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

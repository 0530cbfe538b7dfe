//! `doq-reference ADDRESS IDENTITY_PEM`: the smallest DNS over QUIC server the benchmarks
//! compare tundns's with, since Debian's dnsdist (1.7) serves no DoQ: quinn as published,
//! on a single-threaded runtime, answering every query from memory with one A record
//! (192.0.2.1, TTL 300) for its question, one task per stream. It serves on UDP ADDRESS with
//! the certificate chain and key in IDENTITY_PEM, until killed.
//!
//! It measures what a QUIC stack costs a server that crosses no TUN and holds no resolver:
//! run it on a loopback address beside the server under test, and time both with
//! `dns-latency`. Malformed input is dropped; it never panics on what a client sends.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};
use quinn::crypto::rustls::QuicServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The largest query stream read, prefix included.
const MAX_QUERY_STREAM: usize = 2 + 16 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [address, identity] = args.as_slice() else {
        exit("usage: doq-reference ADDRESS IDENTITY_PEM");
    };
    let address: SocketAddr = address
        .parse()
        .unwrap_or_else(|_| exit("ADDRESS is an IP address and port"));
    let chain = CertificateDer::pem_file_iter(identity)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .unwrap_or_else(|error| exit(&format!("{identity}: {error}")));
    let key = PrivateKeyDer::from_pem_file(identity)
        .unwrap_or_else(|error| exit(&format!("{identity}: {error}")));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("aws-lc-rs supports TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap_or_else(|error| exit(&format!("{identity}: {error}")));
    tls.alpn_protocols = vec![b"doq".to_vec()];
    let crypto = QuicServerConfig::try_from(tls).unwrap_or_else(|error| exit(&error.to_string()));
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let endpoint = quinn::Endpoint::server(config, address)
            .unwrap_or_else(|error| exit(&format!("{address}: {error}")));
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                while let Ok((send, recv)) = connection.accept_bi().await {
                    tokio::spawn(answer(send, recv));
                }
            });
        }
    });
}

/// Reads one length-prefixed query and answers it on the same stream.
async fn answer(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let Ok(framed) = recv.read_to_end(MAX_QUERY_STREAM).await else {
        return;
    };
    let Some((_, query)) = framed.split_first_chunk::<2>() else {
        return;
    };
    let Some(answer) = answer_from_memory(query) else {
        return;
    };
    let mut framed = u16::try_from(answer.len())
        .unwrap_or(u16::MAX)
        .to_be_bytes()
        .to_vec();
    framed.extend(answer);
    if send.write_all(&framed).await.is_ok() {
        let _ = send.finish();
    }
}

/// The response to `query`: its question, and one A record for it.
fn answer_from_memory(query: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let question = query.queries().first()?.clone();
    let mut response = Message::new();
    response
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_answer(Record::from_rdata(
            question.name().clone(),
            300,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
        ))
        .add_query(question);
    response.to_vec().ok()
}

fn exit(why: &str) -> ! {
    eprintln!("doq-reference: {why}");
    std::process::exit(2)
}

//! One attempt over UDP or TCP, the errors of every transport, and the socket
//! set-up (source address, `SO_MARK`) they all share.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tundns_dns::doq::KeepaliveError;
use tundns_dns::tcp::length_prefix;
use tundns_dns::{Question, response_matches, set_message_id};

use crate::{Context, Counters, PoolConfig, PoolError, bump};

/// Messages that fail the match before an attempt gives up on the upstream,
/// so a flood of forgeries costs bounded work per attempt.
pub const MAX_IGNORED_PER_ATTEMPT: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("timed out")]
    Timeout,
    #[error("refused")]
    Refused,
    #[error("connection closed before an answer")]
    Closed,
    #[error("invalid TCP framing from upstream")]
    Framing,
    #[error("{MAX_IGNORED_PER_ATTEMPT} mismatched messages")]
    TooManyMismatched,
    #[error("the answer does not match the question")]
    Mismatched,
    #[error("too many queries in flight on one connection")]
    Busy,
    /// The connection this query waited for, which another query started,
    /// failed; that query counts the failure against the upstream.
    #[error("the shared connection attempt failed")]
    ConnectFailed,
    #[error("HTTP: {0}")]
    Http(String),
    #[error("QUIC: {0}")]
    Quic(String),
    /// The server refused the 0-RTT data of a resumed QUIC connection: the query is
    /// asked again once the handshake is over.
    #[error("the server refused 0-RTT data")]
    EarlyDataRejected,
    /// tundns's side could not make the attempt: no local port, too many connections.
    #[error("no local resources: {0}")]
    LocalShortage(io::Error),
    /// DoQ must take the edns-tcp-keepalive option out of the query (RFC 9250 §5.5.2), and
    /// could not: the query is not sent rather than risk the connection.
    #[error("DoQ query not sent, its edns-tcp-keepalive could not be taken out: {0}")]
    KeepaliveNotRemoved(#[from] KeepaliveError),
    #[error("{0}")]
    Io(io::Error),
}

impl From<io::Error> for AttemptError {
    fn from(error: io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => {
                AttemptError::Refused
            }
            io::ErrorKind::UnexpectedEof => AttemptError::Closed,
            io::ErrorKind::TimedOut => AttemptError::Timeout,
            _ => AttemptError::Io(error),
        }
    }
}

/// The local address for a socket to `upstream`: the configured source
/// address (the pool checked its family), or any address on a kernel-chosen port.
pub(crate) fn local_address(upstream: SocketAddr, config: &PoolConfig) -> SocketAddr {
    match (config.bind_address, upstream) {
        (Some(ip), _) => SocketAddr::new(ip, 0),
        (None, SocketAddr::V4(_)) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        (None, SocketAddr::V6(_)) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

pub(crate) fn mark(socket: SockRef<'_>, config: &PoolConfig) -> io::Result<()> {
    match config.fwmark {
        Some(fwmark) => socket.set_mark(fwmark),
        None => Ok(()),
    }
}

/// Where a DoT or DoH upstream is reached: its address, and a TLS client for its name.
pub struct TlsEndpoint {
    pub address: SocketAddr,
    server_name: ServerName<'static>,
    connector: TlsConnector,
}

impl TlsEndpoint {
    pub fn new(
        address: SocketAddr,
        server_name: &str,
        tls: Arc<ClientConfig>,
    ) -> Result<Self, PoolError> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| PoolError::ServerName(server_name.to_owned()))?;
        Ok(TlsEndpoint {
            address,
            server_name: name,
            connector: TlsConnector::from(tls),
        })
    }

    /// A TCP connection with a TLS session on it. The future owns what it needs, so
    /// a task can run it.
    pub fn connect(
        &self,
        config: &PoolConfig,
    ) -> impl Future<Output = Result<TlsStream<TcpStream>, AttemptError>> + Send + 'static {
        let address = self.address;
        let server_name = self.server_name.clone();
        let connector = self.connector.clone();
        let config = config.clone();
        async move {
            let tcp = tcp_connect(address, &config).await?;
            Ok(connector.connect(server_name, tcp).await?)
        }
    }
}

/// A TCP connection to `upstream` with the pool's mark and source address.
pub async fn tcp_connect(upstream: SocketAddr, config: &PoolConfig) -> io::Result<TcpStream> {
    let socket = match upstream {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    mark(SockRef::from(&socket), config)?;
    if config.bind_address.is_some() {
        socket.bind(local_address(upstream, config))?;
    }
    let stream = socket.connect(upstream).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A fresh connection and a fresh random ID; the query in one write; answers
/// read frame by frame until the matching one.
pub async fn tcp(
    upstream: SocketAddr,
    query: &[u8],
    question: &Question,
    context: &Context,
) -> Result<Vec<u8>, AttemptError> {
    let stream = tcp_connect(upstream, &context.config).await?;
    framed_exchange(stream, upstream, query, question, context).await
}

/// The query, with a fresh random ID, in one write on `stream`, a fresh connection to
/// `upstream`; answers read frame by frame until the matching one.
pub async fn framed_exchange(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    upstream: SocketAddr,
    query: &[u8],
    question: &Question,
    context: &Context,
) -> Result<Vec<u8>, AttemptError> {
    let id = rand::random::<u16>();
    let outgoing = framed(query, id)?;
    stream.write_all(&outgoing).await?;
    for _ in 0..MAX_IGNORED_PER_ATTEMPT {
        let mut prefix = [0u8; 2];
        stream.read_exact(&mut prefix).await?;
        let len = usize::from(u16::from_be_bytes(prefix));
        if len == 0 {
            return Err(AttemptError::Framing);
        }
        let mut received = vec![0; len];
        stream.read_exact(&mut received).await?;
        if response_matches(id, question, &received) {
            return Ok(received);
        }
        ignore(upstream, len, &context.counters);
    }
    Err(AttemptError::TooManyMismatched)
}

/// The query with a 2-byte length prefix (RFC 7766 §8) and `id` in place.
pub fn framed(query: &[u8], id: u16) -> Result<Vec<u8>, AttemptError> {
    let prefix = length_prefix(query.len()).ok_or(AttemptError::Framing)?;
    let mut outgoing = Vec::with_capacity(query.len() + 2);
    outgoing.extend(prefix);
    outgoing.extend_from_slice(query);
    set_message_id(&mut outgoing[2..], id);
    Ok(outgoing)
}

pub fn ignore(upstream: SocketAddr, len: usize, counters: &Counters) {
    bump(&counters.mismatched_ignored);
    tracing::debug!(%upstream, len, "ignored a mismatched DNS message");
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUERY: &[u8] =
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01";

    #[test]
    fn tcp_queries_carry_a_length_prefix_and_the_new_id() {
        let outgoing = framed(QUERY, 0xabcd).unwrap();
        assert_eq!(outgoing[..2], [0, QUERY.len() as u8]);
        assert_eq!(outgoing[2..4], [0xab, 0xcd]);
        assert_eq!(&outgoing[4..], &QUERY[2..]);
    }

    #[test]
    fn io_errors_map_to_attempt_outcomes() {
        let kind = |kind| AttemptError::from(io::Error::from(kind));
        assert!(matches!(
            kind(io::ErrorKind::ConnectionRefused),
            AttemptError::Refused
        ));
        assert!(matches!(
            kind(io::ErrorKind::ConnectionReset),
            AttemptError::Refused
        ));
        assert!(matches!(
            kind(io::ErrorKind::UnexpectedEof),
            AttemptError::Closed
        ));
        assert!(matches!(
            kind(io::ErrorKind::PermissionDenied),
            AttemptError::Io(_)
        ));
    }

    #[test]
    fn the_source_address_follows_the_config() {
        let v4: SocketAddr = "192.0.2.53:53".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::53]:53".parse().unwrap();
        let mut config = PoolConfig::default();
        assert_eq!(local_address(v4, &config), "0.0.0.0:0".parse().unwrap());
        assert_eq!(local_address(v6, &config), "[::]:0".parse().unwrap());
        config.bind_address = Some("10.99.0.2".parse().unwrap());
        assert_eq!(local_address(v4, &config), "10.99.0.2:0".parse().unwrap());
    }
}

//! One attempt against one upstream, over UDP or TCP.

use std::io;
use std::net::SocketAddr;

use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};
use tundns_dns::tcp::{MAX_MESSAGE_LEN, length_prefix};
use tundns_dns::{Question, response_matches, set_message_id};

use crate::{Counters, PoolConfig, Protocol, bump};

/// Messages that fail the match before an attempt gives up on the upstream,
/// so a flood of forgeries costs bounded work per attempt.
const MAX_IGNORED_PER_ATTEMPT: usize = 256;

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
            _ => AttemptError::Io(error),
        }
    }
}

/// The buffers of one query across its attempts.
pub struct Exchange {
    protocol: Protocol,
    /// The query as it goes on the wire (with the TCP length prefix for TCP).
    outgoing: Vec<u8>,
    /// Where the ID sits in `outgoing`.
    id_offset: usize,
    received: Vec<u8>,
}

impl Exchange {
    /// `query` has passed `parse_query`, so it is at least a header long and,
    /// being a UDP payload or a TCP frame, at most 65535 bytes.
    pub fn new(query: &[u8], protocol: Protocol) -> Self {
        let mut outgoing = Vec::with_capacity(query.len() + 2);
        let id_offset = match protocol {
            Protocol::Udp => 0,
            Protocol::Tcp => {
                outgoing.extend(length_prefix(query.len()).unwrap_or([0xff, 0xff]));
                2
            }
        };
        outgoing.extend_from_slice(query);
        Exchange {
            protocol,
            outgoing,
            id_offset,
            received: vec![0; MAX_MESSAGE_LEN],
        }
    }

    /// Sends the query to `upstream` under `id` and waits (without a deadline:
    /// the caller bounds it) for the matching answer.
    pub async fn attempt(
        &mut self,
        upstream: SocketAddr,
        id: u16,
        question: &Question,
        config: &PoolConfig,
        counters: &Counters,
    ) -> Result<&[u8], AttemptError> {
        set_message_id(&mut self.outgoing[self.id_offset..], id);
        let expected = Expected {
            upstream,
            id,
            question,
        };
        let len = match self.protocol {
            Protocol::Udp => {
                udp_exchange(
                    &self.outgoing,
                    &mut self.received,
                    &expected,
                    config,
                    counters,
                )
                .await?
            }
            Protocol::Tcp => {
                tcp_exchange(
                    &self.outgoing,
                    &mut self.received,
                    &expected,
                    config,
                    counters,
                )
                .await?
            }
        };
        Ok(&self.received[..len])
    }
}

struct Expected<'a> {
    upstream: SocketAddr,
    id: u16,
    question: &'a Question,
}

impl Expected<'_> {
    fn matches(&self, source: SocketAddr, response: &[u8]) -> bool {
        // Compare address and port only: a received IPv6 address may carry a
        // scope or flow label the configured one lacks.
        source.ip() == self.upstream.ip()
            && source.port() == self.upstream.port()
            && response_matches(self.id, self.question, response)
    }

    fn ignore(&self, source: SocketAddr, len: usize, counters: &Counters) {
        bump(&counters.mismatched_ignored);
        tracing::debug!(upstream = %self.upstream, %source, len, "ignored a mismatched DNS message");
    }
}

fn mark(socket: SockRef<'_>, config: &PoolConfig) -> io::Result<()> {
    match config.fwmark {
        Some(fwmark) => socket.set_mark(fwmark),
        None => Ok(()),
    }
}

/// A fresh socket on a kernel-chosen port, connected to the upstream (so the
/// kernel reports ICMP refusals and filters other sources), then a wait for the
/// matching datagram.
async fn udp_exchange(
    query: &[u8],
    received: &mut [u8],
    expected: &Expected<'_>,
    config: &PoolConfig,
    counters: &Counters,
) -> Result<usize, AttemptError> {
    let local: SocketAddr = match expected.upstream {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    mark(SockRef::from(&socket), config)?;
    socket.connect(expected.upstream).await?;
    socket.send(query).await?;
    for _ in 0..MAX_IGNORED_PER_ATTEMPT {
        let (len, source) = socket.recv_from(received).await?;
        if expected.matches(source, &received[..len]) {
            return Ok(len);
        }
        expected.ignore(source, len, counters);
    }
    Err(AttemptError::TooManyMismatched)
}

/// A fresh connection; the query in one write; answers read frame by frame
/// until the matching one.
async fn tcp_exchange(
    framed_query: &[u8],
    received: &mut [u8],
    expected: &Expected<'_>,
    config: &PoolConfig,
    counters: &Counters,
) -> Result<usize, AttemptError> {
    let socket = match expected.upstream {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    mark(SockRef::from(&socket), config)?;
    let mut stream = socket.connect(expected.upstream).await?;
    stream.set_nodelay(true)?;
    stream.write_all(framed_query).await?;
    let source = stream.peer_addr()?;
    for _ in 0..MAX_IGNORED_PER_ATTEMPT {
        let mut prefix = [0u8; 2];
        stream.read_exact(&mut prefix).await?;
        let len = usize::from(u16::from_be_bytes(prefix));
        if len == 0 {
            return Err(AttemptError::Framing);
        }
        stream.read_exact(&mut received[..len]).await?;
        if expected.matches(source, &received[..len]) {
            return Ok(len);
        }
        expected.ignore(source, len, counters);
    }
    Err(AttemptError::TooManyMismatched)
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUERY: &[u8] =
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01";

    #[test]
    fn tcp_queries_carry_a_length_prefix() {
        let exchange = Exchange::new(QUERY, Protocol::Tcp);
        assert_eq!(exchange.outgoing[..2], [0, QUERY.len() as u8]);
        assert_eq!(&exchange.outgoing[2..], QUERY);
        assert_eq!(exchange.id_offset, 2);
        let exchange = Exchange::new(QUERY, Protocol::Udp);
        assert_eq!(exchange.outgoing, QUERY);
        assert_eq!(exchange.id_offset, 0);
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
}

//! Upstreams reached through a userspace tunnel rather than the host's sockets.
//!
//! In the rootless mode a `ThroughTunnel` group has no TUN and no route into WireGuard:
//! its queries ride the userspace stack the proxies' connections use. The driver supplies
//! that way in ([`TunnelDial`]); this module keeps the host sockets' rules for what is
//! accepted (a random ID per attempt, the upstream's address and the question), over UDP
//! and over TCP. Encrypted transports are not offered there: WireGuard already encrypts
//! the query, and the pool refuses them ([`PoolError::EncryptedThroughTunnel`]).
//!
//! [`PoolError::EncryptedThroughTunnel`]: crate::PoolError::EncryptedThroughTunnel

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tundns_dns::{Question, response_matches, set_message_id};

use crate::Context;
use crate::transport::{AttemptError, MAX_IGNORED_PER_ATTEMPT, framed_exchange, ignore};

/// What a [`TunnelDial`] method gives back, later.
pub type DialFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A TCP connection through the tunnel.
pub trait TunnelStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> TunnelStream for T {}

/// One local UDP port inside the tunnel, given up when dropped.
pub trait TunnelPort: Send {
    fn send_to(&self, payload: &[u8], to: SocketAddr) -> io::Result<()>;

    /// The next datagram to this port, with its sender; `None` once the tunnel is gone.
    fn recv(&mut self) -> DialFuture<'_, Option<(SocketAddr, Vec<u8>)>>;
}

/// A way into the tunnel from the interface address.
pub trait TunnelDial: Send + Sync {
    /// A fresh local UDP port; an error is a shortage on this side (no port free).
    fn port(&self) -> io::Result<Box<dyn TunnelPort>>;

    /// A TCP connection to `upstream`. A reset from the far side is `ConnectionRefused`;
    /// a shortage on this side (no port or address, too many connections) is
    /// `AddrNotAvailable` or `ResourceBusy`, which does not count against the upstream.
    fn connect(&self, upstream: SocketAddr) -> DialFuture<'_, io::Result<Box<dyn TunnelStream>>>;
}

/// The tunnel a pool sends its queries through ([`PoolConfig::tunnel`]); two are equal
/// when they are the same way in.
///
/// [`PoolConfig::tunnel`]: crate::PoolConfig::tunnel
#[derive(Clone)]
pub struct Tunnel(Arc<dyn TunnelDial>);

impl Tunnel {
    pub fn new(dial: Arc<dyn TunnelDial>) -> Self {
        Self(dial)
    }
}

impl PartialEq for Tunnel {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Tunnel {}

impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tunnel")
    }
}

/// One UDP attempt from a fresh port: the query with a random ID, then datagrams until
/// one from `upstream` matches it.
pub(crate) async fn udp(
    tunnel: &Tunnel,
    upstream: SocketAddr,
    query: &[u8],
    question: &Question,
    context: &Context,
) -> Result<Vec<u8>, AttemptError> {
    let mut port = tunnel.0.port().map_err(AttemptError::LocalShortage)?;
    let id = rand::random::<u16>();
    let mut outgoing = query.to_vec();
    set_message_id(&mut outgoing, id);
    port.send_to(&outgoing, upstream)?;
    for _ in 0..MAX_IGNORED_PER_ATTEMPT {
        let (from, received) = port.recv().await.ok_or(AttemptError::Closed)?;
        if from == upstream && response_matches(id, question, &received) {
            return Ok(received);
        }
        ignore(upstream, received.len(), &context.counters);
    }
    Err(AttemptError::TooManyMismatched)
}

/// One TCP attempt on a fresh connection through the tunnel.
pub(crate) async fn tcp(
    tunnel: &Tunnel,
    upstream: SocketAddr,
    query: &[u8],
    question: &Question,
    context: &Context,
) -> Result<Vec<u8>, AttemptError> {
    let stream = tunnel
        .0
        .connect(upstream)
        .await
        .map_err(|error| match error.kind() {
            io::ErrorKind::AddrNotAvailable | io::ErrorKind::ResourceBusy => {
                AttemptError::LocalShortage(error)
            }
            _ => error.into(),
        })?;
    framed_exchange(stream, upstream, query, question, context).await
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::Ordering;

    use tundns_dns::parse_query;

    use super::*;
    use crate::{Counters, PoolConfig};

    const QUERY: &[u8] =
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01";

    /// What the port sent, and where.
    type Sent = Arc<Mutex<Vec<(Vec<u8>, SocketAddr)>>>;
    /// Each reply's sender, and the ID it carries instead of the query's.
    type Replies = VecDeque<(SocketAddr, Option<u16>)>;

    /// A port whose datagrams are the first query sent, answered as `replies` say.
    struct ScriptedPort {
        sent: Sent,
        replies: Replies,
    }

    impl TunnelPort for ScriptedPort {
        fn send_to(&self, payload: &[u8], to: SocketAddr) -> io::Result<()> {
            self.sent.lock().unwrap().push((payload.to_vec(), to));
            Ok(())
        }

        fn recv(&mut self) -> DialFuture<'_, Option<(SocketAddr, Vec<u8>)>> {
            let sent = self.sent.lock().unwrap()[0].0.clone();
            let reply = self.replies.pop_front().map(|(from, id)| {
                let mut answer = sent;
                answer[2] |= 0x80;
                if let Some(id) = id {
                    set_message_id(&mut answer, id);
                }
                (from, answer)
            });
            Box::pin(async move { reply })
        }
    }

    struct ScriptedDial {
        sent: Sent,
        replies: Mutex<Option<Replies>>,
    }

    impl TunnelDial for ScriptedDial {
        fn port(&self) -> io::Result<Box<dyn TunnelPort>> {
            Ok(Box::new(ScriptedPort {
                sent: self.sent.clone(),
                replies: self.replies.lock().unwrap().take().unwrap_or_default(),
            }))
        }

        fn connect(&self, _: SocketAddr) -> DialFuture<'_, io::Result<Box<dyn TunnelStream>>> {
            Box::pin(async { Err(io::ErrorKind::Unsupported.into()) })
        }
    }

    #[tokio::test]
    async fn only_the_upstreams_answer_to_this_query_is_taken() {
        let upstream: SocketAddr = "10.99.0.53:53".parse().unwrap();
        let stranger: SocketAddr = "10.99.0.9:53".parse().unwrap();
        let sent = Arc::default();
        let dial = ScriptedDial {
            sent: Arc::clone(&sent),
            // From another host; from the upstream with another ID; then the answer.
            replies: Mutex::new(Some(VecDeque::from([
                (stranger, None),
                (upstream, Some(7)),
                (upstream, None),
            ]))),
        };
        let tunnel = Tunnel::new(Arc::new(dial));
        let context = Context {
            config: PoolConfig::default(),
            counters: Arc::new(Counters::default()),
        };
        let question = parse_query(QUERY).unwrap().question().clone();
        let answer = udp(&tunnel, upstream, QUERY, &question, &context)
            .await
            .expect("the upstream's answer");
        let (query, to) = sent.lock().unwrap()[0].clone();
        assert_eq!(to, upstream);
        assert_eq!(answer[..2], query[..2]);
        assert_eq!(
            context.counters.mismatched_ignored.load(Ordering::Relaxed),
            2
        );
    }

    #[tokio::test]
    async fn a_tunnel_gone_ends_the_attempt() {
        let dial = ScriptedDial {
            sent: Arc::default(),
            replies: Mutex::new(None),
        };
        let context = Context {
            config: PoolConfig::default(),
            counters: Arc::new(Counters::default()),
        };
        let question = parse_query(QUERY).unwrap().question().clone();
        let outcome = udp(
            &Tunnel::new(Arc::new(dial)),
            "10.99.0.53:53".parse().unwrap(),
            QUERY,
            &question,
            &context,
        )
        .await;
        assert!(matches!(outcome, Err(AttemptError::Closed)));
    }
}

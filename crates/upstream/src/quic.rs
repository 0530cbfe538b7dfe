//! DNS over QUIC (RFC 9250), and the QUIC connection that DoQ and DoH over HTTP/3 share:
//! how it is opened (the pool's `SO_MARK` and source address, 0-RTT when a resumption
//! ticket allows it) and when it is closed (idle for `idle_timeout`).
//!
//! A DoQ query takes one bidirectional stream of the upstream's one connection: the
//! query with ID 0, without edns-tcp-keepalive (§5.5.2: a server closes the connection
//! over it) and with a 2-byte length prefix, then the end of the stream (§4.2); the
//! answer is the one length-prefixed message the server sends before its end. Streams
//! are independent, so answers come in any order and a slow one holds up no other. A
//! query given up on stops its stream with DOQ_REQUEST_CANCELLED (§4.3).
//!
//! Each connection has its own UDP socket on a kernel-chosen port, so a new connection
//! also means a new port. Opening it is [`SharedConnection`]'s job.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ConnectionError, EndpointConfig, RecvStream, TokioRuntime, VarInt};
use rustls_pki_types::ServerName;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tundns_dns::doq::without_tcp_keepalive;
use tundns_dns::tcp::MAX_MESSAGE_LEN;
use tundns_dns::{Question, response_matches};

use crate::shared_connection::{Persistent, SharedConnection};
use crate::transport::{self, AttemptError, local_address, mark};
use crate::{Context, Counters, PoolConfig, PoolError, bump};

/// RFC 9250 §4.3: the application error codes.
const DOQ_NO_ERROR: u32 = 0x0;
const DOQ_REQUEST_CANCELLED: u32 = 0x3;
/// RFC 9114 §8.1: closing an HTTP/3 connection that did nothing wrong.
pub const H3_NO_ERROR: u32 = 0x100;

/// Where a QUIC upstream is reached, and the TLS client (with its session tickets) for it.
pub struct QuicEndpoint {
    pub address: SocketAddr,
    server_name: String,
    client: quinn::ClientConfig,
    /// The application's error code for a clean close.
    no_error: VarInt,
    /// The server refused the last 0-RTT attempt: the next connection waits for its
    /// handshake instead, since the session store may hold more of the refused tickets.
    early_data_refused: Arc<AtomicBool>,
}

impl QuicEndpoint {
    pub fn new(
        address: SocketAddr,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
        no_error: u32,
        server_streams: u32,
    ) -> Result<Self, PoolError> {
        ServerName::try_from(server_name)
            .map_err(|_| PoolError::ServerName(server_name.to_owned()))?;
        let crypto =
            QuicClientConfig::try_from(tls).map_err(|error| PoolError::Tls(error.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(Arc::new(bounded_transport(server_streams)));
        Ok(QuicEndpoint {
            address,
            server_name: server_name.to_owned(),
            client,
            no_error: VarInt::from_u32(no_error),
            early_data_refused: Arc::default(),
        })
    }

    /// A new connection on its own socket. With a resumption ticket that allows early
    /// data it is returned at once, before the handshake ends, so the first query goes
    /// in 0-RTT; whether the server took it is logged and counted when the handshake ends.
    pub fn connect(
        &self,
        config: &PoolConfig,
        counters: &Arc<Counters>,
    ) -> impl Future<Output = Result<QuicConnection, AttemptError>> + Send + 'static {
        let address = self.address;
        let server_name = self.server_name.clone();
        let client = self.client.clone();
        let no_error = self.no_error;
        let early_data_refused = self.early_data_refused.clone();
        let config = config.clone();
        let counters = counters.clone();
        async move {
            let endpoint = client_endpoint(address, &config)?;
            let connecting = endpoint
                .connect_with(client, address, &server_name)
                .map_err(|error| AttemptError::Quic(error.to_string()))?;
            let without_early_data = early_data_refused.swap(false, Ordering::Relaxed);
            let connecting = if without_early_data {
                Err(connecting)
            } else {
                connecting.into_0rtt()
            };
            let (connection, early) = match connecting {
                Ok((connection, accepted)) => {
                    let (tell, early) = tokio::sync::watch::channel(EarlyData::Pending);
                    let handshaking = connection.clone();
                    tokio::spawn(async move {
                        let outcome = if accepted.await {
                            bump(&counters.zero_rtt_accepted);
                            EarlyData::Accepted
                        } else if handshaking.close_reason().is_some() {
                            EarlyData::Lost
                        } else {
                            bump(&counters.zero_rtt_rejected);
                            early_data_refused.store(true, Ordering::Relaxed);
                            EarlyData::Rejected
                        };
                        tracing::debug!(upstream = %address, ?outcome, "0-RTT outcome");
                        tell.send_replace(outcome);
                    });
                    (connection, Some(early))
                }
                Err(connecting) => (connecting.await.map_err(connection_error)?, None),
            };
            let connection = QuicConnection {
                connection,
                early,
                activity: Arc::new(Activity::default()),
                no_error,
            };
            tokio::spawn(close_when_idle(
                connection.connection.clone(),
                connection.activity.clone(),
                config.idle_timeout,
                no_error,
            ));
            Ok(connection)
        }
    }
}

/// A UDP socket with the pool's mark and source address, and a client endpoint on it.
fn client_endpoint(
    upstream: SocketAddr,
    config: &PoolConfig,
) -> Result<quinn::Endpoint, AttemptError> {
    let open = || -> std::io::Result<quinn::Endpoint> {
        let socket = Socket::new(
            Domain::for_address(upstream),
            Type::DGRAM.nonblocking().cloexec(),
            Some(Protocol::UDP),
        )?;
        mark(SockRef::from(&socket), config)?;
        socket.bind(&local_address(upstream, config).into())?;
        quinn::Endpoint::new(
            EndpointConfig::default(),
            None,
            socket.into(),
            Arc::new(TokioRuntime),
        )
    };
    Ok(open()?)
}

/// What the server made of the 0-RTT data of a resumed connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EarlyData {
    Pending,
    Accepted,
    Rejected,
    /// The connection ended before its handshake did: the attempt fails as it would have.
    Lost,
}

/// One QUIC connection to an upstream.
pub struct QuicConnection {
    pub connection: quinn::Connection,
    /// `Some` when it was opened with 0-RTT: what the server made of it, once known.
    early: Option<tokio::sync::watch::Receiver<EarlyData>>,
    activity: Arc<Activity>,
    no_error: VarInt,
}

impl QuicConnection {
    /// Marks a query in flight until the guard drops, for the idle timer.
    pub fn begin(&self) -> InFlight {
        self.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            activity: self.activity.clone(),
        }
    }

    /// Whether the server refused this connection's 0-RTT data, waiting for the handshake
    /// to tell when it has not yet; `false` for a connection opened without 0-RTT.
    pub async fn early_data_rejected(&self) -> bool {
        let Some(early) = &self.early else {
            return false;
        };
        let mut early = early.clone();
        matches!(
            early
                .wait_for(|outcome| *outcome != EarlyData::Pending)
                .await
                .as_deref(),
            Ok(EarlyData::Rejected)
        )
    }
}

impl Persistent for QuicConnection {
    fn is_closed(&self) -> bool {
        self.connection.close_reason().is_some()
    }

    fn close(&self) {
        self.connection.close(self.no_error, b"");
    }
}

#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    last_active: Mutex<Option<Instant>>,
}

impl Activity {
    fn last_active(&self) -> Option<Instant> {
        *self
            .last_active
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub struct InFlight {
    activity: Arc<Activity>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self
            .activity
            .last_active
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Closes `connection` once nothing has been in flight for `idle_timeout`; ends with it.
async fn close_when_idle(
    connection: quinn::Connection,
    activity: Arc<Activity>,
    idle_timeout: Duration,
    no_error: VarInt,
) {
    let opened = Instant::now();
    loop {
        let idle_since = match activity.in_flight.load(Ordering::Relaxed) {
            0 => activity.last_active().unwrap_or(opened),
            _ => Instant::now(),
        };
        tokio::select! {
            _ = connection.closed() => return,
            () = tokio::time::sleep_until((idle_since + idle_timeout).into()) => {
                let idle = activity.in_flight.load(Ordering::Relaxed) == 0
                    && activity.last_active().unwrap_or(opened).elapsed() >= idle_timeout;
                if idle {
                    connection.close(no_error, b"idle");
                    return;
                }
            }
        }
    }
}

pub fn connection_error(error: ConnectionError) -> AttemptError {
    match error {
        ConnectionError::TimedOut => AttemptError::Timeout,
        ConnectionError::ApplicationClosed(_)
        | ConnectionError::ConnectionClosed(_)
        | ConnectionError::LocallyClosed
        | ConnectionError::Reset => AttemptError::Closed,
        other => AttemptError::Quic(other.to_string()),
    }
}

pub struct DoqClient {
    endpoint: QuicEndpoint,
    connection: SharedConnection<QuicConnection>,
}

impl DoqClient {
    pub fn new(
        address: SocketAddr,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, PoolError> {
        Ok(DoqClient {
            endpoint: QuicEndpoint::new(address, server_name, tls, DOQ_NO_ERROR, 0)?,
            connection: SharedConnection::new(),
        })
    }

    pub async fn exchange(
        &self,
        query: &[u8],
        question: &Question,
        context: &Context,
    ) -> Result<Vec<u8>, AttemptError> {
        let query = &*without_tcp_keepalive(query)?;
        let connect = || {
            let connecting = self.endpoint.connect(&context.config, &context.counters);
            async move { Ok(Arc::new(connecting.await?)) }
        };
        self.connection
            .exchange(
                context.config.attempt_timeout,
                connect,
                |connection: Arc<QuicConnection>| async move {
                    let _active = connection.begin();
                    match self.query(&connection, query, question, context).await {
                        // The server refused the 0-RTT data, and the stream with it: the
                        // handshake is over now, so ask again on the same connection.
                        Err(AttemptError::EarlyDataRejected) => {
                            self.query(&connection, query, question, context).await
                        }
                        outcome => outcome,
                    }
                },
            )
            .await
    }

    pub fn drop_connection(&self) {
        self.connection.drop_connection();
    }

    async fn query(
        &self,
        connection: &QuicConnection,
        query: &[u8],
        question: &Question,
        context: &Context,
    ) -> Result<Vec<u8>, AttemptError> {
        let outgoing = transport::framed(query, 0)?;
        let (mut send, recv) = connection
            .connection
            .open_bi()
            .await
            .map_err(connection_error)?;
        let mut recv = CancelOnDrop(Some(recv));
        send.write_all(&outgoing).await.map_err(write_error)?;
        // Already finished only if the stream was reset meanwhile: the read below says so.
        let _ = send.finish();
        let received = recv
            .stream()
            .read_to_end(2 + MAX_MESSAGE_LEN)
            .await
            .map_err(read_error)?;
        recv.0 = None;
        let message = single_message(&received).ok_or(AttemptError::Framing)?;
        if !response_matches(0, question, message) {
            transport::ignore(self.endpoint.address, message.len(), &context.counters);
            return Err(AttemptError::Mismatched);
        }
        Ok(message.to_vec())
    }
}

/// The one message of a DoQ answer stream: a 2-byte length and exactly that many bytes.
fn single_message(received: &[u8]) -> Option<&[u8]> {
    let (prefix, message) = received.split_first_chunk::<2>()?;
    (!message.is_empty() && usize::from(u16::from_be_bytes(*prefix)) == message.len())
        .then_some(message)
}

/// The receiving half of a query's stream: stopped with DOQ_REQUEST_CANCELLED if the
/// query ends before its answer is read (a timeout, or another upstream won).
struct CancelOnDrop(Option<RecvStream>);

impl CancelOnDrop {
    fn stream(&mut self) -> &mut RecvStream {
        self.0.as_mut().expect("taken only once the answer is read")
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(mut stream) = self.0.take() {
            let _ = stream.stop(VarInt::from_u32(DOQ_REQUEST_CANCELLED));
        }
    }
}

fn write_error(error: quinn::WriteError) -> AttemptError {
    match error {
        quinn::WriteError::ZeroRttRejected => AttemptError::EarlyDataRejected,
        quinn::WriteError::ConnectionLost(error) => connection_error(error),
        other => AttemptError::Quic(other.to_string()),
    }
}

fn read_error(error: quinn::ReadToEndError) -> AttemptError {
    match error {
        quinn::ReadToEndError::Read(quinn::ReadError::ZeroRttRejected) => {
            AttemptError::EarlyDataRejected
        }
        quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(error)) => {
            connection_error(error)
        }
        quinn::ReadToEndError::TooLong => AttemptError::Framing,
        other => AttemptError::Quic(other.to_string()),
    }
}

/// What a server can make tundns hold: no bidirectional streams of its own, at most
/// `server_streams` unidirectional ones (HTTP/3's control and QPACK streams), no DATAGRAM
/// frames, and windows of one answer per stream and 1 MiB per connection.
fn bounded_transport(server_streams: u32) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(server_streams))
        .datagram_receive_buffer_size(None)
        .stream_receive_window(VarInt::from_u32(2 + MAX_MESSAGE_LEN as u32))
        .receive_window(VarInt::from_u32(1 << 20));
    transport
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_stream_holds_exactly_one_message() {
        assert_eq!(single_message(b"\x00\x03abc"), Some(&b"abc"[..]));
        for bad in [
            &b""[..],
            b"\x00",
            b"\x00\x00",
            b"\x00\x03ab",
            b"\x00\x03abcd",
            b"\x00\x02ab\x00\x02cd",
        ] {
            assert_eq!(single_message(bad), None, "{bad:?}");
        }
    }
}

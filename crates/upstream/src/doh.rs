//! DNS over HTTPS (RFC 8484): POST `application/dns-message` over one HTTP/2
//! connection per upstream, each query on its own stream, concurrently.
//!
//! The query goes out with ID 0 (§4.1: HTTP caches then see identical bodies
//! for identical questions); the stream ties the answer to the query, and the
//! question must still match. The connection goes to the configured bootstrap
//! address, so reaching the upstream needs no plain DNS lookup; it is closed
//! after `idle_timeout` with nothing in flight, and replaced when it breaks;
//! opening it is [`SharedConnection`]'s job.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use tokio::sync::watch;
use tundns_dns::tcp::MAX_MESSAGE_LEN;
use tundns_dns::{Question, response_matches, set_message_id};

use crate::shared_connection::{Persistent, SharedConnection};
use crate::transport::{self, AttemptError, TlsEndpoint};
use crate::{Context, PoolError};

const DNS_MESSAGE: &str = "application/dns-message";

pub struct DohClient {
    endpoint: TlsEndpoint,
    uri: Uri,
    connection: SharedConnection<Connection>,
}

/// The URI a DoH request goes to, over HTTP/2 or HTTP/3: `server_name` (an IPv6 literal in
/// brackets), the port unless it is 443, and `path`, which must start with `/`.
pub(crate) fn request_uri(
    address: SocketAddr,
    server_name: &str,
    path: &str,
) -> Result<Uri, PoolError> {
    if !path.starts_with('/') {
        return Err(PoolError::DohPath(path.to_owned()));
    }
    let host = match server_name.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => server_name.to_owned(),
    };
    let authority = match address.port() {
        443 => host,
        port => format!("{host}:{port}"),
    };
    Uri::try_from(format!("https://{authority}{path}"))
        .map_err(|_| PoolError::DohPath(path.to_owned()))
}

impl DohClient {
    pub fn new(
        address: SocketAddr,
        server_name: &str,
        path: &str,
        tls: Arc<ClientConfig>,
    ) -> Result<Self, PoolError> {
        let endpoint = TlsEndpoint::new(address, server_name, tls)?;
        let uri = request_uri(address, server_name, path)?;
        Ok(DohClient {
            endpoint,
            uri,
            connection: SharedConnection::new(),
        })
    }

    pub async fn exchange(
        &self,
        query: &[u8],
        question: &Question,
        context: &Context,
    ) -> Result<Vec<u8>, AttemptError> {
        // A new connection: connect, TLS and HTTP/2 handshakes, within the attempt timeout.
        let connect = || {
            let tls = self.endpoint.connect(&context.config);
            let address = self.endpoint.address;
            let idle_timeout = context.config.idle_timeout;
            async move {
                let tls = tls.await?;
                if let Some(alpn) = tls.get_ref().1.alpn_protocol()
                    && alpn != b"h2"
                {
                    return Err(AttemptError::Http(
                        "the server did not agree to HTTP/2".into(),
                    ));
                }
                let (sender, driver) = http2::Builder::new(TokioExecutor::new())
                    .handshake::<_, Full<Bytes>>(TokioIo::new(tls))
                    .await
                    .map_err(|error| AttemptError::Http(error.to_string()))?;
                let state = Arc::new(State::default());
                tokio::spawn(drive(driver, state.clone(), idle_timeout, address));
                Ok(Arc::new(Connection { sender, state }))
            }
        };
        self.connection
            .exchange(
                context.config.attempt_timeout,
                connect,
                |connection: Arc<Connection>| async move {
                    self.post(&connection, query, question, context).await
                },
            )
            .await
    }

    pub fn drop_connection(&self) {
        self.connection.drop_connection();
    }

    async fn post(
        &self,
        connection: &Connection,
        query: &[u8],
        question: &Question,
        context: &Context,
    ) -> Result<Vec<u8>, AttemptError> {
        let _active = connection.state.begin();
        let mut body = query.to_vec();
        set_message_id(&mut body, 0);
        let request = Request::post(self.uri.clone())
            .header(CONTENT_TYPE, DNS_MESSAGE)
            .header(ACCEPT, DNS_MESSAGE)
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| AttemptError::Http(error.to_string()))?;
        let mut sender = connection.sender.clone();
        sender.ready().await.map_err(hyper_error)?;
        let response = sender.send_request(request).await.map_err(hyper_error)?;
        if response.status() != StatusCode::OK {
            return Err(AttemptError::Http(format!("status {}", response.status())));
        }
        let content_type = response.headers().get(CONTENT_TYPE);
        if !content_type.is_some_and(|value| value.as_bytes().starts_with(DNS_MESSAGE.as_bytes())) {
            return Err(AttemptError::Http(format!(
                "content type {content_type:?}, not {DNS_MESSAGE}"
            )));
        }
        let body = Limited::new(response.into_body(), MAX_MESSAGE_LEN)
            .collect()
            .await
            .map_err(|error| AttemptError::Http(error.to_string()))?
            .to_bytes();
        if !response_matches(0, question, &body) {
            transport::ignore(self.endpoint.address, body.len(), &context.counters);
            return Err(AttemptError::Mismatched);
        }
        Ok(body.to_vec())
    }
}

fn hyper_error(error: hyper::Error) -> AttemptError {
    if error.is_closed() || error.is_canceled() {
        AttemptError::Closed
    } else {
        AttemptError::Http(error.to_string())
    }
}

struct Connection {
    sender: SendRequest<Full<Bytes>>,
    state: Arc<State>,
}

impl Persistent for Connection {
    fn is_closed(&self) -> bool {
        self.sender.is_closed() || self.state.closed.load(Ordering::Relaxed)
    }

    fn close(&self) {
        self.state.close();
    }
}

struct State {
    in_flight: AtomicUsize,
    last_active: Mutex<Instant>,
    closed: AtomicBool,
    close_signal: watch::Sender<bool>,
}

impl Default for State {
    fn default() -> Self {
        State {
            in_flight: AtomicUsize::new(0),
            last_active: Mutex::new(Instant::now()),
            closed: AtomicBool::new(false),
            close_signal: watch::channel(false).0,
        }
    }
}

impl State {
    fn begin(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { state: self }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.close_signal.send_replace(true);
    }

    fn last_active(&self) -> Instant {
        *self
            .last_active
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct InFlight<'a> {
    state: &'a State,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        *self
            .state
            .last_active
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Instant::now();
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs the HTTP/2 connection until it ends, is closed, or has been idle for
/// `idle_timeout` (dropping the driver closes the socket).
async fn drive<F>(driver: F, state: Arc<State>, idle_timeout: Duration, upstream: SocketAddr)
where
    F: Future<Output = hyper::Result<()>>,
{
    tokio::pin!(driver);
    let mut closing = state.close_signal.subscribe();
    loop {
        let idle_at = if state.in_flight.load(Ordering::Relaxed) == 0 {
            state.last_active() + idle_timeout
        } else {
            Instant::now() + idle_timeout
        };
        tokio::select! {
            result = &mut driver => {
                if let Err(error) = result {
                    tracing::debug!(%upstream, %error, "DoH connection failed");
                }
                break;
            }
            _ = closing.wait_for(|closed| *closed) => break,
            () = tokio::time::sleep_until(idle_at.into()) => {
                if state.in_flight.load(Ordering::Relaxed) == 0
                    && state.last_active().elapsed() >= idle_timeout
                {
                    break;
                }
            }
        }
    }
    state.close();
}

//! DNS over HTTPS over HTTP/3 (RFC 8484 on RFC 9114): POST `application/dns-message`
//! on the upstream's one QUIC connection (see [`crate::quic`]), each query on its own
//! request stream, concurrently.
//!
//! As for DoH over HTTP/2, the query goes out with ID 0, the stream ties the answer to
//! the query and the question must still match. A connection opened in 0-RTT whose
//! early data the server refused has lost its HTTP/3 control streams with it: it is
//! closed, and the query asked again on a new one.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Request, StatusCode, Uri};
use tundns_dns::tcp::MAX_MESSAGE_LEN;
use tundns_dns::{Question, response_matches, set_message_id};

use crate::doh::request_uri;
use crate::quic::{H3_NO_ERROR, QuicConnection, QuicEndpoint};
use crate::shared_connection::{Persistent, SharedConnection};
use crate::transport::{self, AttemptError};
use crate::{Context, PoolError};

const DNS_MESSAGE: &str = "application/dns-message";
/// The largest header section a server's response may carry: a DoH response has a few.
const MAX_FIELD_SECTION: u64 = 16 * 1024;

type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

pub struct H3Client {
    endpoint: QuicEndpoint,
    uri: Uri,
    connection: SharedConnection<Connection>,
}

impl H3Client {
    pub fn new(
        address: SocketAddr,
        server_name: &str,
        path: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, PoolError> {
        // HTTP/3's control and two QPACK streams, and room for a server's grease streams.
        let endpoint = QuicEndpoint::new(address, server_name, tls, H3_NO_ERROR, 8)?;
        let uri = request_uri(address, server_name, path)?;
        Ok(H3Client {
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
        // A new connection: the QUIC handshake (or 0-RTT) and HTTP/3's control streams.
        let connect = || {
            let connecting = self.endpoint.connect(&context.config, &context.counters);
            let upstream = self.endpoint.address;
            async move {
                let quic = connecting.await?;
                let (mut driver, sender) = h3::client::builder()
                    .max_field_section_size(MAX_FIELD_SECTION)
                    .build(h3_quinn::Connection::new(quic.connection.clone()))
                    .await
                    .map_err(|error| AttemptError::Http(error.to_string()))?;
                tokio::spawn(async move {
                    let error = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
                    if !error.is_h3_no_error() {
                        tracing::debug!(%upstream, %error, "HTTP/3 connection ended");
                    }
                });
                Ok(Arc::new(Connection { quic, sender }))
            }
        };
        self.connection
            .exchange(
                context.config.attempt_timeout,
                connect,
                |connection: Arc<Connection>| async move {
                    let outcome = self.post(&connection, query, question, context).await;
                    if outcome.is_err() && connection.quic.early_data_rejected().await {
                        connection.close();
                        return Err(AttemptError::EarlyDataRejected);
                    }
                    outcome
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
        let _active = connection.quic.begin();
        let mut body = query.to_vec();
        set_message_id(&mut body, 0);
        let request = Request::post(self.uri.clone())
            .header(CONTENT_TYPE, DNS_MESSAGE)
            .header(ACCEPT, DNS_MESSAGE)
            .body(())
            .map_err(|error| AttemptError::Http(error.to_string()))?;
        let mut sender = connection.sender.clone();
        let mut stream = match sender.send_request(request).await {
            Ok(stream) => stream,
            Err(error) => {
                let error = stream_error(error);
                // After a GOAWAY the connection takes nothing new: closed, so the next
                // query opens another.
                if matches!(error, AttemptError::Closed) {
                    connection.quic.close();
                }
                return Err(error);
            }
        };
        stream
            .send_data(Bytes::from(body))
            .await
            .map_err(stream_error)?;
        stream.finish().await.map_err(stream_error)?;
        let response = stream.recv_response().await.map_err(stream_error)?;
        if response.status() != StatusCode::OK {
            return Err(AttemptError::Http(format!("status {}", response.status())));
        }
        let content_type = response.headers().get(CONTENT_TYPE);
        if !content_type.is_some_and(|value| value.as_bytes().starts_with(DNS_MESSAGE.as_bytes())) {
            return Err(AttemptError::Http(format!(
                "content type {content_type:?}, not {DNS_MESSAGE}"
            )));
        }
        let mut answer = BytesMut::new();
        while let Some(mut chunk) = stream.recv_data().await.map_err(stream_error)? {
            if answer.len() + chunk.remaining() > MAX_MESSAGE_LEN {
                return Err(AttemptError::Http("answer body too long".into()));
            }
            while chunk.has_remaining() {
                let part = chunk.chunk();
                answer.extend_from_slice(part);
                let taken = part.len();
                chunk.advance(taken);
            }
        }
        if !response_matches(0, question, &answer) {
            transport::ignore(self.endpoint.address, answer.len(), &context.counters);
            return Err(AttemptError::Mismatched);
        }
        Ok(answer.to_vec())
    }
}

fn stream_error(error: h3::error::StreamError) -> AttemptError {
    if error.is_h3_no_error() {
        AttemptError::Closed
    } else {
        match error {
            // A GOAWAY: the server takes no new requests on this connection.
            h3::error::StreamError::ConnectionError { .. }
            | h3::error::StreamError::RemoteClosing { .. } => AttemptError::Closed,
            other => AttemptError::Http(other.to_string()),
        }
    }
}

struct Connection {
    quic: QuicConnection,
    sender: SendRequest,
}

impl Persistent for Connection {
    fn is_closed(&self) -> bool {
        self.quic.is_closed()
    }

    fn close(&self) {
        self.quic.close();
    }
}

//! DNS over HTTPS (RFC 8484): `GET` with the query in `?dns=` and `POST` with it as the
//! body, both as `application/dns-message`, on [`PATH`], over HTTP/2 or HTTP/1.1 as ALPN
//! chose. Each request is a query through the proxy; the answer is the response body,
//! with a `Cache-Control` `max-age` of its lowest TTL.
//!
//! HTTP/2 is the `h2` crate driven by the connection's own task, which answers a request
//! from memory as it takes it: no task, no wake-up and no channel per request, as the
//! inline rule for UDP has it. Only a forwarded query or a `POST` body still on its way
//! waits, beside the connection in the same task. HTTP/1.1, one request at a time, is
//! hyper's.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tundns_dns::MAX_MESSAGE_LEN;
use tundns_dns::doh::{MEDIA_TYPE, PATH, max_age, query_from_get};

use super::{Activity, Bounds, InHand, MAX_IN_FLIGHT_PER_CONNECTION, Reply, reply};
use crate::dns::counters::Transport;
use crate::dns::proxy::{DnsProxy, Forward};

/// The largest header list a request may bring; a DoH request's is a few hundred bytes.
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// Serves one connection's requests, over HTTP/2 when ALPN chose `h2`, until the client
/// closes it or it idles: no request for `bounds.idle` while none is being answered.
pub(super) async fn serve<S>(
    stream: S,
    http2: bool,
    peer: SocketAddr,
    proxy: &Arc<DnsProxy>,
    bounds: Bounds,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    if http2 {
        serve_http2(stream, peer, proxy, bounds).await;
    } else {
        serve_http1(stream, peer, proxy, bounds).await;
    }
}

async fn serve_http2<S>(stream: S, peer: SocketAddr, proxy: &Arc<DnsProxy>, bounds: Bounds)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(MAX_IN_FLIGHT_PER_CONNECTION as u32)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(64 * 1024)
        // A query is at most 64 KiB: no client needs more in flight to send one.
        .initial_window_size(MAX_MESSAGE_LEN as u32)
        .initial_connection_window_size(4 * MAX_MESSAGE_LEN as u32)
        .handshake::<_, Bytes>(stream);
    let mut connection = match tokio::time::timeout(bounds.idle, handshake).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "DNS over HTTPS: HTTP/2 handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "DNS over HTTPS: no HTTP/2 preface in time");
            return;
        }
    };
    let activity = Activity::new();
    // Requests that wait on a forward or a body; at most the streams HTTP/2 lets in.
    let mut waiting = FuturesUnordered::new();
    // Once idle, the client is told to go (GOAWAY) and given `bounds.idle` to finish.
    let mut closing_by = None;
    loop {
        let look_again = closing_by.unwrap_or_else(|| activity.idle_deadline(bounds.idle));
        tokio::select! {
            request = connection.accept() => match request {
                Some(Ok((request, mut respond))) => {
                    if let Some(rest) = respond_now(request, &mut respond, peer, proxy, &activity) {
                        waiting.push(respond_later(rest, respond, peer, proxy, bounds, &activity));
                    }
                }
                Some(Err(error)) => {
                    tracing::debug!(%peer, %error, "DNS over HTTPS: connection ended");
                    return;
                }
                None => return,
            },
            Some(()) = waiting.next(), if !waiting.is_empty() => {}
            () = tokio::time::sleep_until(look_again) => {
                if closing_by.is_some() {
                    tracing::debug!(%peer, "DNS over HTTPS: did not close in time");
                    return;
                }
                if activity.has_idled(bounds.idle) {
                    tracing::debug!(%peer, "DNS over HTTPS: idle, closing");
                    connection.graceful_shutdown();
                    closing_by = Some(Instant::now() + bounds.idle);
                }
            }
        }
    }
}

/// What is left of an HTTP/2 request that cannot be answered at once.
enum Rest<'a> {
    /// A `POST` whose body is still coming.
    Body { body: h2::RecvStream, is_dns: bool },
    /// A query on its way to the upstreams.
    Forward(Forward, InHand<'a>),
}

/// Answers `request` on `respond` if nothing needs waiting for; otherwise what is left.
fn respond_now<'a>(
    request: Request<h2::RecvStream>,
    respond: &mut h2::server::SendResponse<Bytes>,
    peer: SocketAddr,
    proxy: &Arc<DnsProxy>,
    activity: &'a Activity,
) -> Option<Rest<'a>> {
    let query = match asked(&request) {
        Ok(Asked::Query(query)) => query,
        Ok(Asked::Body { is_dns }) => {
            return Some(Rest::Body {
                body: request.into_body(),
                is_dns,
            });
        }
        Err(refusal) => {
            send(respond, refusal.response());
            return None;
        }
    };
    let in_hand = activity.begin();
    match answer(&query, peer, proxy) {
        Answer::Now(response) => {
            send(respond, response);
            None
        }
        Answer::Later(forward) => Some(Rest::Forward(forward, in_hand)),
    }
}

/// Finishes what [`respond_now`] left: reads the body, waits for the forward.
async fn respond_later(
    rest: Rest<'_>,
    mut respond: h2::server::SendResponse<Bytes>,
    peer: SocketAddr,
    proxy: &Arc<DnsProxy>,
    bounds: Bounds,
    activity: &Activity,
) {
    let (forward, _in_hand) = match rest {
        Rest::Forward(forward, in_hand) => (forward, in_hand),
        Rest::Body { body, is_dns } => {
            let body = tokio::time::timeout(bounds.idle, read_body(body)).await;
            let query = body
                .unwrap_or(Err(Refusal::BODY_TOO_SLOW))
                .and_then(|body| query_from_body(body, is_dns));
            let query = match query {
                Ok(query) => query,
                Err(refusal) => return send(&mut respond, refusal.response()),
            };
            let in_hand = activity.begin();
            match answer(&query, peer, proxy) {
                Answer::Now(response) => return send(&mut respond, response),
                Answer::Later(forward) => (forward, in_hand),
            }
        }
    };
    send(
        &mut respond,
        answer_response(forward.resolve().await.into()),
    );
}

/// A `POST` body, whole, and at most a DNS message long.
async fn read_body(mut body: h2::RecvStream) -> Result<Bytes, Refusal> {
    let mut whole = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|_| Refusal::BODY_TOO_LARGE)?;
        // Read is read: the window opens again for the rest.
        let _ = body.flow_control().release_capacity(chunk.len());
        if whole.len() + chunk.len() > MAX_MESSAGE_LEN {
            return Err(Refusal::BODY_TOO_LARGE);
        }
        whole.extend_from_slice(&chunk);
    }
    Ok(whole.freeze())
}

/// Sends `response` on its stream, with its length (hyper's HTTP/1.1 adds it; some
/// clients, dig's among them, read no body without it); a client that reset the stream
/// gets nothing.
fn send(respond: &mut h2::server::SendResponse<Bytes>, response: Response<Bytes>) {
    let (mut head, body) = response.into_parts();
    head.headers
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    let Ok(mut stream) = respond.send_response(Response::from_parts(head, ()), false) else {
        return;
    };
    let _ = stream.send_data(body, true);
}

async fn serve_http1<S>(stream: S, peer: SocketAddr, proxy: &Arc<DnsProxy>, bounds: Bounds)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let activity = Arc::new(Activity::new());
    let service = {
        let proxy = proxy.clone();
        let activity = activity.clone();
        hyper::service::service_fn(move |request| {
            let proxy = proxy.clone();
            let activity = activity.clone();
            async move {
                let response = answer_http1(request, peer, &proxy, bounds, &activity).await;
                Ok::<_, Infallible>(response.map(Full::new))
            }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.idle)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    loop {
        let idle_until = activity.idle_deadline(bounds.idle);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "DNS over HTTPS: connection ended");
                }
                return;
            }
            () = tokio::time::sleep_until(idle_until) => {
                if activity.has_idled(bounds.idle) {
                    tracing::debug!(%peer, "DNS over HTTPS: idle, closing");
                    connection.as_mut().graceful_shutdown();
                    // Whatever the client does now, the connection ends in bounded time.
                    let _ = tokio::time::timeout(bounds.idle, connection.as_mut()).await;
                    return;
                }
            }
        }
    }
}

/// The response to one HTTP/1.1 request.
async fn answer_http1(
    request: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    proxy: &Arc<DnsProxy>,
    bounds: Bounds,
    activity: &Activity,
) -> Response<Bytes> {
    let query = match asked(&request) {
        Ok(Asked::Query(query)) => Ok(query),
        Ok(Asked::Body { is_dns }) => {
            let body = Limited::new(request.into_body(), MAX_MESSAGE_LEN).collect();
            match tokio::time::timeout(bounds.idle, body).await {
                Ok(Ok(body)) => query_from_body(body.to_bytes(), is_dns),
                Ok(Err(_)) => Err(Refusal::BODY_TOO_LARGE),
                Err(_) => Err(Refusal::BODY_TOO_SLOW),
            }
        }
        Err(refusal) => Err(refusal),
    };
    let query = match query {
        Ok(query) => query,
        Err(refusal) => return refusal.response(),
    };
    let _in_hand = activity.begin();
    match answer(&query, peer, proxy) {
        Answer::Now(response) => response,
        Answer::Later(forward) => answer_response(forward.resolve().await.into()),
    }
}

/// What a request asks, read from its head.
enum Asked {
    /// A `GET`'s query, from `?dns=`.
    Query(Vec<u8>),
    /// A `POST`: the query is its body, if its media type says so.
    Body { is_dns: bool },
}

/// The request's method, path and query string read as DoH: its query or what it is
/// missing.
fn asked<B>(request: &Request<B>) -> Result<Asked, Refusal> {
    if request.uri().path() != PATH {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "DNS over HTTPS is served on /dns-query",
        ));
    }
    match *request.method() {
        Method::GET => query_from_get(request.uri().query())
            .map(Asked::Query)
            .map_err(|error| Refusal::new(StatusCode::BAD_REQUEST, error.to_string())),
        // Whatever the type, the body is read: a response before it would reset the
        // stream, and the client would see no status.
        Method::POST => Ok(Asked::Body {
            is_dns: request
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.split(';').next())
                .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case(MEDIA_TYPE)),
        }),
        _ => Err(Refusal::new(StatusCode::METHOD_NOT_ALLOWED, "GET or POST")),
    }
}

/// A `POST`'s query, once its body is in.
fn query_from_body(body: Bytes, is_dns: bool) -> Result<Vec<u8>, Refusal> {
    if is_dns {
        Ok(body.into())
    } else {
        Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be application/dns-message",
        ))
    }
}

/// What the proxy makes of a query.
enum Answer {
    /// Answered from memory, or refused.
    Now(Response<Bytes>),
    /// Sent on to the upstreams.
    Later(Forward),
}

fn answer(query: &[u8], peer: SocketAddr, proxy: &Arc<DnsProxy>) -> Answer {
    match reply(proxy, peer, query, Transport::Https, Bytes::copy_from_slice) {
        Reply::Ready(answer) => Answer::Now(answer_response(answer)),
        Reply::Forward(forward) => Answer::Later(forward),
        Reply::Dropped => {
            Answer::Now(Refusal::new(StatusCode::BAD_REQUEST, "not a DNS query").response())
        }
    }
}

/// `answer` as the response body, kept by HTTP caches no longer than its lowest TTL.
fn answer_response(answer: Bytes) -> Response<Bytes> {
    if answer.is_empty() {
        return Refusal::new(StatusCode::BAD_GATEWAY, "no answer").response();
    }
    let max_age = HeaderValue::try_from(format!("max-age={}", max_age(&answer)))
        .expect("digits are a header value");
    let mut response = Response::new(answer);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
    headers.insert(CACHE_CONTROL, max_age);
    response
}

/// An HTTP error: its status, and why in plain text.
struct Refusal {
    status: StatusCode,
    why: Cow<'static, str>,
}

impl Refusal {
    const BODY_TOO_LARGE: Self = Self {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        why: Cow::Borrowed("the body is larger than a DNS message, or was cut"),
    };
    const BODY_TOO_SLOW: Self = Self {
        status: StatusCode::REQUEST_TIMEOUT,
        why: Cow::Borrowed("the body came too slowly"),
    };

    fn new(status: StatusCode, why: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            why: why.into(),
        }
    }

    fn response(self) -> Response<Bytes> {
        let mut response = Response::new(Bytes::from(format!("{}\n", self.why)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(ALLOW, HeaderValue::from_static("GET, POST"));
        }
        response
    }
}

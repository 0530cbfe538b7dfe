//! DNS over HTTPS (RFC 8484): `GET` with the query in `?dns=` and `POST` with it as the
//! body, both as `application/dns-message`, on [`PATH`], over HTTP/2 or HTTP/1.1 as ALPN
//! chose. Each request is a query through the proxy; the answer is the response body,
//! with a `Cache-Control` `max-age` of its lowest TTL.
//!
//! HTTP/2 is [`http2`]'s, answering from memory in the connection's own task; HTTP/1.1,
//! one request at a time, is hyper's. What a request asks and what it gets are the same
//! for both, and are here.

mod http2;

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tundns_dns::MAX_MESSAGE_LEN;
use tundns_dns::doh::{MEDIA_TYPE, PATH, max_age, query_from_get};

use super::{Activity, Bounds, InHand, Reply, reply};
use crate::dns::counters::Transport;
use crate::dns::proxy::{DnsProxy, Forward};

/// The HTTP a connection speaks, as ALPN chose.
#[derive(Clone, Copy)]
pub(super) enum HttpVersion {
    /// ALPN `h2`.
    Http2,
    /// ALPN `http/1.1`, or none.
    Http1,
}

impl HttpVersion {
    /// The version the ALPN protocol `alpn` names; HTTP/2 is never guessed without it
    /// (RFC 9113 §3.2).
    pub(super) fn of_alpn(alpn: Option<&[u8]>) -> Self {
        if alpn == Some(b"h2") {
            Self::Http2
        } else {
            Self::Http1
        }
    }
}

/// Serves one connection's requests until the client closes it or it idles: no request
/// for `bounds.idle` while none is being answered.
pub(super) async fn serve<S>(
    stream: S,
    version: HttpVersion,
    peer: SocketAddr,
    proxy: &Arc<DnsProxy>,
    bounds: Bounds,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    match version {
        HttpVersion::Http2 => http2::serve(stream, peer, proxy, bounds).await,
        HttpVersion::Http1 => serve_http1(stream, peer, proxy, bounds).await,
    }
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
            let body = async {
                let body = body.await.map_err(|_| Refusal::BODY_TOO_LARGE)?;
                Ok(body.to_bytes())
            };
            query_of_body(body, is_dns, bounds).await
        }
        Err(refusal) => Err(refusal),
    };
    match query {
        Ok(query) => respond_to_query(&query, peer, proxy, activity).await,
        Err(refusal) => refusal.response(),
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

/// A `POST`'s query: its `body`, read whole within `bounds.idle`.
async fn query_of_body(
    body: impl Future<Output = Result<Bytes, Refusal>>,
    is_dns: bool,
    bounds: Bounds,
) -> Result<Vec<u8>, Refusal> {
    let body = tokio::time::timeout(bounds.idle, body)
        .await
        .unwrap_or(Err(Refusal::BODY_TOO_SLOW))?;
    if is_dns {
        Ok(body.into())
    } else {
        Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be application/dns-message",
        ))
    }
}

/// The response to `query`, from memory or, when it must, from the upstreams; the
/// connection is busy, not idle, until it is made.
async fn respond_to_query(
    query: &[u8],
    peer: SocketAddr,
    proxy: &Arc<DnsProxy>,
    activity: &Activity,
) -> Response<Bytes> {
    match answer_or_forward(query, peer, proxy, activity) {
        Ok(response) => response,
        Err((forward, _in_hand)) => forwarded(forward).await,
    }
}

/// The response to `query` from memory, or its forward, with the connection busy until it
/// is answered.
fn answer_or_forward<'a>(
    query: &[u8],
    peer: SocketAddr,
    proxy: &Arc<DnsProxy>,
    activity: &'a Activity,
) -> Result<Response<Bytes>, (Forward, InHand<'a>)> {
    let in_hand = activity.begin();
    match reply(proxy, peer, query, Transport::Https, Bytes::copy_from_slice) {
        Reply::Ready(answer) => Ok(answer_response(answer)),
        Reply::Forward(forward) => Err((forward, in_hand)),
        Reply::Dropped => Ok(Refusal::new(StatusCode::BAD_REQUEST, "not a DNS query").response()),
    }
}

/// The response to a forwarded query, once the upstreams answered.
async fn forwarded(forward: Forward) -> Response<Bytes> {
    answer_response(forward.resolve().await.into())
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
    const TOO_MANY_WAITING: Self = Self {
        status: StatusCode::SERVICE_UNAVAILABLE,
        why: Cow::Borrowed("too many queries of this connection wait on the upstreams"),
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

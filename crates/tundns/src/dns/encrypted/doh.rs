//! DNS over HTTPS (RFC 8484): `GET` with the query in `?dns=` and `POST` with it as the
//! body, both as `application/dns-message`, on [`PATH`], over HTTP/2 or HTTP/1.1 as ALPN
//! chose. Each request is a query through the proxy; the answer is the response body,
//! with a `Cache-Control` `max-age` of its lowest TTL.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tundns_dns::MAX_MESSAGE_LEN;
use tundns_dns::doh::{MEDIA_TYPE, PATH, max_age, query_from_get};

use super::{Activity, Bounds, MAX_IN_FLIGHT_PER_CONNECTION, Reply, reply};
use crate::dns::counters::Transport;
use crate::dns::proxy::DnsProxy;

/// Serves one connection's requests until the client closes it or it idles: no request
/// for `bounds.idle` while none is being answered.
pub(super) async fn serve<S>(stream: S, peer: SocketAddr, proxy: &Arc<DnsProxy>, bounds: Bounds)
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
            async move { Ok::<_, Infallible>(answer(request, peer, &proxy, bounds, &activity).await) }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.idle)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_IN_FLIGHT_PER_CONNECTION as u32)
        .max_header_list_size(16 * 1024)
        .max_send_buf_size(64 * 1024)
        // A query is at most 64 KiB: no client needs more in flight to send one.
        .initial_stream_window_size(MAX_MESSAGE_LEN as u32)
        .initial_connection_window_size(4 * MAX_MESSAGE_LEN as u32);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
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

/// The response to one request.
async fn answer(
    request: Request<Incoming>,
    peer: SocketAddr,
    proxy: &Arc<DnsProxy>,
    bounds: Bounds,
    activity: &Activity,
) -> Response<Full<Bytes>> {
    if request.uri().path() != PATH {
        return status(
            StatusCode::NOT_FOUND,
            "DNS over HTTPS is served on /dns-query",
        );
    }
    let query = match *request.method() {
        Method::GET => match query_from_get(request.uri().query()) {
            Ok(query) => query,
            Err(error) => return status(StatusCode::BAD_REQUEST, &error.to_string()),
        },
        Method::POST => {
            let media_type_is_dns = request
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.split(';').next())
                .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case(MEDIA_TYPE));
            // Read whatever the type: a response before the body would reset the stream,
            // and the client would see no status.
            let body = Limited::new(request.into_body(), MAX_MESSAGE_LEN).collect();
            let body = match tokio::time::timeout(bounds.idle, body).await {
                Ok(Ok(body)) => body.to_bytes(),
                Ok(Err(_)) => {
                    return status(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "the body is larger than a DNS message, or was cut",
                    );
                }
                Err(_) => return status(StatusCode::REQUEST_TIMEOUT, "the body came too slowly"),
            };
            if !media_type_is_dns {
                return status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "the body must be application/dns-message",
                );
            }
            body.to_vec()
        }
        _ => {
            let mut response = status(StatusCode::METHOD_NOT_ALLOWED, "GET or POST");
            response
                .headers_mut()
                .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, POST"));
            return response;
        }
    };
    // A whole query: from here the connection is busy, not idle.
    let _in_hand = activity.begin();
    let answer = match reply(
        proxy,
        peer,
        &query,
        Transport::Https,
        Bytes::copy_from_slice,
    ) {
        Reply::Ready(answer) => answer,
        Reply::Forward(forward) => Bytes::from(forward.resolve().await),
        Reply::Dropped => return status(StatusCode::BAD_REQUEST, "not a DNS query"),
    };
    if answer.is_empty() {
        return status(StatusCode::BAD_GATEWAY, "no answer");
    }
    let max_age = max_age(&answer);
    Response::builder()
        .header(CONTENT_TYPE, MEDIA_TYPE)
        .header(CACHE_CONTROL, format!("max-age={max_age}"))
        .body(Full::new(answer))
        .expect("a valid response")
}

fn status(status: StatusCode, why: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{why}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    response
}

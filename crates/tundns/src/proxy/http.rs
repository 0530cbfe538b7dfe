//! The HTTP proxy, on host addresses and on the virtual IPs: `CONNECT` to any port, and
//! absolute-form `http://` requests forwarded in origin form, both through the tunnel.
//!
//! hyper drives the client's connection (keep-alive, bodies streamed both ways, never
//! buffered whole); `tundns-proxy` decides where a request goes and who sent it; each
//! request's connection to the origin is a [`StackStream`], opened by
//! [`super::open::Opener`] as the SOCKS5 proxy opens its own.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HOST, HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tundns_proxy::http::{self as proxy_http, PROXY_AUTHENTICATE as CHALLENGE, Target};
use tundns_proxy::socks5::Reply;

use super::open::Opener;
use super::stack::relay;
use super::{Client, ClientStream};

/// How long a client may take to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Work that outlives a request's answer (a CONNECT tunnel, an origin connection still
/// sending a body), run by the client's own task so that it counts against the client's
/// slot and ends with it.
type Relay = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What every HTTP proxy client's task shares.
pub struct HttpProxy {
    pub opener: Arc<Opener>,
}

impl HttpProxy {
    /// Serves one client's connection: its requests, one after another (keep-alive),
    /// and its CONNECT tunnels.
    pub async fn serve_client<S: ClientStream>(
        self: Arc<Self>,
        client: Client<S>,
    ) -> std::io::Result<()> {
        let (relays, mut relay_queue) = mpsc::unbounded_channel::<Relay>();
        let service = hyper::service::service_fn(move |request| {
            let (proxy, relays) = (self.clone(), relays.clone());
            async move { Ok::<_, Infallible>(proxy.handle(request, &relays).await) }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(client.stream), service)
            .with_upgrades();
        // The relays run beside the connection and after it, until the last one ends; the
        // queue closes with the service, which ends with the connection.
        let relaying = async {
            let mut running = JoinSet::new();
            loop {
                tokio::select! {
                    relay = relay_queue.recv() => match relay {
                        Some(relay) => { running.spawn(relay); }
                        None => break,
                    },
                    Some(_) = running.join_next(), if !running.is_empty() => {}
                }
            }
            while running.join_next().await.is_some() {}
        };
        let (served, ()) = tokio::join!(served, relaying);
        served.map_err(std::io::Error::other)
    }

    async fn handle(
        &self,
        request: Request<Incoming>,
        relays: &mpsc::UnboundedSender<Relay>,
    ) -> Response<ProxyBody> {
        if let Some(credentials) = &self.opener.credentials {
            let login = request
                .headers()
                .get(PROXY_AUTHORIZATION)
                .and_then(proxy_http::basic_credentials);
            let accepted = login.is_some_and(|(user, password)| {
                credentials.verify(user.as_bytes(), password.as_bytes())
            });
            if !accepted {
                let mut response = status(StatusCode::PROXY_AUTHENTICATION_REQUIRED);
                response
                    .headers_mut()
                    .insert(PROXY_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
                return response;
            }
        }
        match proxy_http::target(request.method(), request.uri()) {
            Ok(Target::Tunnel(destination)) => match self.opener.open(&destination).await {
                Ok(tunnel) => {
                    let _ = relays.send(Box::pin(async move {
                        let mut tunnel = tunnel;
                        match hyper::upgrade::on(request).await {
                            Ok(upgraded) => {
                                let mut client = TokioIo::new(upgraded);
                                let _ = relay(&mut client, &mut tunnel).await;
                            }
                            Err(error) => tracing::debug!(%error, "CONNECT upgrade failed"),
                        }
                    }));
                    status(StatusCode::OK)
                }
                Err(reply) => status(status_for(reply)),
            },
            Ok(Target::Forward {
                destination,
                path,
                authority,
            }) => match self.opener.open(&destination).await {
                Ok(tunnel) => forward(request, tunnel, &path, &authority, relays).await,
                Err(reply) => status(status_for(reply)),
            },
            Err(error) => status(error.status),
        }
    }
}

/// Sends `request` to the origin over `tunnel` in origin form, and its answer back.
async fn forward(
    request: Request<Incoming>,
    tunnel: super::stack::StackStream,
    path: &str,
    authority: &str,
    relays: &mpsc::UnboundedSender<Relay>,
) -> Response<ProxyBody> {
    let (mut parts, body) = request.into_parts();
    let Ok(uri) = path.parse() else {
        return status(StatusCode::BAD_REQUEST);
    };
    parts.uri = uri;
    // The proxy speaks its own version to the origin (RFC 9110 §2.5).
    parts.version = Version::HTTP_11;
    proxy_http::strip_hop_by_hop(&mut parts.headers);
    // The absolute-form target names the origin; a client's own Host (which could name a
    // blocked host behind the same address) is replaced (RFC 9112 §3.2.2).
    let Ok(host) = HeaderValue::from_str(authority) else {
        return status(StatusCode::BAD_REQUEST);
    };
    parts.headers.insert(HOST, host);
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(tunnel)).await {
            Ok(pair) => pair,
            Err(_) => return status(StatusCode::BAD_GATEWAY),
        };
    let _ = relays.send(Box::pin(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "HTTP proxy origin connection");
        }
    }));
    match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            proxy_http::strip_hop_by_hop(&mut parts.headers);
            // The proxy's own connection to the client is HTTP/1.1 whatever the origin
            // spoke: an HTTP/1.0 origin must not end the client's keep-alive.
            parts.version = Version::HTTP_11;
            Response::from_parts(parts, body.boxed())
        }
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

/// The status for a connection that could not be opened, as the issue's table says:
/// a blocked name is forbidden, a timeout a gateway timeout, anything else a bad gateway.
fn status_for(reply: Reply) -> StatusCode {
    match reply {
        Reply::NotAllowed => StatusCode::FORBIDDEN,
        Reply::TtlExpired => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    }
}

fn status(code: StatusCode) -> Response<ProxyBody> {
    let body = if code == StatusCode::OK {
        Empty::new().map_err(|never| match never {}).boxed()
    } else {
        Full::new(Bytes::from(format!("{code}\n")))
            .map_err(|never| match never {})
            .boxed()
    };
    let mut response = Response::new(body);
    *response.status_mut() = code;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_the_statuses_the_issue_names() {
        assert_eq!(status_for(Reply::NotAllowed), StatusCode::FORBIDDEN);
        assert_eq!(status_for(Reply::TtlExpired), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            status_for(Reply::ConnectionRefused),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            status_for(Reply::NetworkUnreachable),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(status_for(Reply::HostUnreachable), StatusCode::BAD_GATEWAY);
    }
}

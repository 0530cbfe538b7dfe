//! The proxy side of HTTP/1.1 (RFC 9110, RFC 9112): where a request goes, who sent it,
//! and what is passed on to the origin.
//!
//! The request head itself is parsed by the HTTP library that drives the connection;
//! this module decides on its parts: a `CONNECT host:port` opens a tunnel, an
//! absolute-form `http://` request is forwarded in origin form without the hop-by-hop
//! headers, and anything else gets the status returned here.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};

use crate::Destination;

/// Where a proxy request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `CONNECT`: a byte tunnel to the destination.
    Tunnel(Destination),
    /// An absolute-form `http://` request, sent on to the destination with `path` (the
    /// origin form: path and query) and `authority` as its `Host`.
    Forward {
        destination: Destination,
        path: String,
        authority: String,
    },
}

/// A request no proxy can carry out, with the status that says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {reason}")]
pub struct TargetError {
    pub status: StatusCode,
    pub reason: &'static str,
}

impl TargetError {
    fn bad_request(reason: &'static str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            reason,
        }
    }
}

/// Decides where a request with `method` and request target `uri` goes.
pub fn target(method: &Method, uri: &Uri) -> Result<Target, TargetError> {
    if method == Method::CONNECT {
        // Authority form (RFC 9112 §3.2.3): host and port, nothing else.
        if uri.scheme().is_some() || uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(TargetError::bad_request("CONNECT takes host:port"));
        }
        let authority = uri
            .authority()
            .ok_or(TargetError::bad_request("CONNECT takes host:port"))?;
        let port = authority
            .port_u16()
            .ok_or(TargetError::bad_request("CONNECT needs a port"))?;
        return destination(authority, port).map(Target::Tunnel);
    }
    match uri.scheme_str() {
        Some(scheme) if scheme.eq_ignore_ascii_case("http") => {}
        Some(_) => {
            return Err(TargetError::bad_request(
                "only http:// is forwarded; use CONNECT for https",
            ));
        }
        None => {
            return Err(TargetError::bad_request(
                "not a proxy request: the target must be an absolute http:// URL",
            ));
        }
    }
    let authority = uri
        .authority()
        .ok_or(TargetError::bad_request("an http:// URL without a host"))?;
    if authority.as_str().contains('@') {
        return Err(TargetError::bad_request("user information in the URL"));
    }
    // A port that is written but is no port (`host:99999`) is refused, not taken as 80;
    // an empty one (`host:`) is the default (RFC 3986 §3.2.3).
    let port = match (written_port(authority.as_str()), authority.port_u16()) {
        (None, _) => 80,
        (Some(_), Some(port)) => port,
        (Some(_), None) => return Err(TargetError::bad_request("the port is not a port")),
    };
    let destination = destination(authority, port)?;
    let path = uri
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_owned();
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    Ok(Target::Forward {
        destination,
        path,
        authority: authority.as_str().to_owned(),
    })
}

/// The port an authority spells out, if any: what follows the last `:` after the host
/// (a bracketed IPv6 literal's own colons do not count), when it is not empty.
fn written_port(authority: &str) -> Option<&str> {
    let after_host = match authority.rfind(']') {
        Some(end) => &authority[end + 1..],
        None => authority,
    };
    after_host
        .rsplit_once(':')
        .map(|(_, port)| port)
        .filter(|port| !port.is_empty())
}

fn destination(authority: &http::uri::Authority, port: u16) -> Result<Destination, TargetError> {
    Destination::from_host(authority.host(), port).ok_or(TargetError::bad_request(
        "the host is not a valid name or address",
    ))
}

/// The username and password of a `Proxy-Authorization: Basic` value (RFC 7617), or
/// `None` for any other scheme or a value that does not decode.
pub fn basic_credentials(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The challenge sent with `407 Proxy Authentication Required`.
pub const PROXY_AUTHENTICATE: &str = "Basic realm=\"tundns\", charset=\"UTF-8\"";

/// Removes what concerns only the client's connection to the proxy (RFC 9110 §7.6.1):
/// `Connection` and every header it names, the fixed hop-by-hop headers and the
/// client's proxy credentials, so that none of it reaches the origin.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn uri(text: &str) -> Uri {
        text.parse().unwrap()
    }

    #[test]
    fn connect_opens_a_tunnel_to_host_and_port() {
        assert_eq!(
            target(&Method::CONNECT, &uri("www.lab.test:443")),
            Ok(Target::Tunnel(Destination::Name {
                name: "www.lab.test".into(),
                port: 443
            }))
        );
        assert_eq!(
            target(&Method::CONNECT, &uri("[2001:db8::7]:22")),
            Ok(Target::Tunnel(Destination::Addr(
                "[2001:db8::7]:22".parse().unwrap()
            )))
        );
        for bad in ["www.lab.test", "http://www.lab.test:80/", "/"] {
            let error = target(&Method::CONNECT, &uri(bad)).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn absolute_http_urls_are_forwarded_in_origin_form() {
        assert_eq!(
            target(&Method::GET, &uri("http://Web.Lab.Test:8080/a/b?c=d")),
            Ok(Target::Forward {
                destination: Destination::Name {
                    name: "web.lab.test".into(),
                    port: 8080
                },
                path: "/a/b?c=d".into(),
                authority: "Web.Lab.Test:8080".into(),
            })
        );
        let Ok(Target::Forward {
            destination, path, ..
        }) = target(&Method::POST, &uri("http://192.0.2.1"))
        else {
            panic!("forwarded");
        };
        assert_eq!(
            destination,
            Destination::Addr("192.0.2.1:80".parse().unwrap())
        );
        assert_eq!(path, "/");
        for bad in [
            "/index.html",
            "https://web.lab.test/",
            "http://user:pw@web.lab.test/",
            "http://web.lab.test:99999/",
        ] {
            assert!(target(&Method::GET, &uri(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn basic_credentials_decode_and_other_schemes_do_not() {
        let value = HeaderValue::from_static("Basic dXNlcjpwYTpzcw==");
        assert_eq!(
            basic_credentials(&value),
            Some(("user".into(), "pa:ss".into()))
        );
        for bad in [
            "Bearer dXNlcjpwYXNz",
            "Basic !!!",
            "Basic",
            "Basic dXNlcg==",
        ] {
            assert_eq!(
                basic_credentials(&HeaderValue::from_static(bad)),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_never_reach_the_origin() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("web.lab.test"));
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        headers.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "host"]);
    }

    proptest! {
        #[test]
        fn any_request_target_gets_a_destination_or_a_status(
            method in prop_oneof![Just(Method::CONNECT), Just(Method::GET)],
            text in "[ -~]{0,80}"
        ) {
            if let Ok(uri) = text.parse::<Uri>()
                && let Ok(Target::Forward { path, .. }) = target(&method, &uri)
            {
                prop_assert!(path.starts_with('/'));
            }
        }
    }
}

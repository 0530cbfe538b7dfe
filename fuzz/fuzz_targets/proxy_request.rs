//! Any bytes as what a proxy client sends: SOCKS5's greeting, RFC 1929's credentials, a
//! request and a UDP relay datagram, and an HTTP request target and `Proxy-Authorization`
//! value. Each is a whole message within the bytes, incomplete, or refused with a reply
//! code or status; nothing panics, and a request's destination written back reads the same.

#![no_main]

use http::{HeaderValue, Method, Uri};
use libfuzzer_sys::fuzz_target;
use tundns_proxy::socks5::{self, Reply};
use tundns_proxy::{Destination, http as proxy_http};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(Some((_, len))) = socks5::parse_greeting(bytes) {
        assert!(len <= bytes.len());
    }
    if let Ok(Some((_, len))) = socks5::parse_user_password(bytes) {
        assert!(len <= bytes.len());
    }
    if let Ok(Some((request, len))) = socks5::parse_request(bytes) {
        assert!(len <= bytes.len());
        if let Destination::Addr(addr) = request.destination {
            let mut written = socks5::reply(Reply::Succeeded, addr).as_bytes().to_vec();
            written[1] = bytes[1];
            let (again, _) = socks5::parse_request(&written).unwrap().unwrap();
            assert_eq!(again.destination, Destination::Addr(addr));
        }
    }
    if let Ok(datagram) = socks5::parse_udp_datagram(bytes) {
        assert!(datagram.payload.len() < bytes.len());
    }
    if let Ok(uri) = Uri::try_from(bytes) {
        for method in [Method::CONNECT, Method::GET] {
            if let Ok(proxy_http::Target::Forward { path, .. }) = proxy_http::target(&method, &uri)
            {
                assert!(path.starts_with('/'));
            }
        }
    }
    if let Ok(value) = HeaderValue::from_bytes(bytes) {
        let _ = proxy_http::basic_credentials(&value);
    }
});

//! SOCKS5 (RFC 1928) with username/password authentication (RFC 1929).
//!
//! A session is: the client's greeting and the method tundns selects; with
//! username/password, the client's credentials and a status; the client's request and
//! a reply. Each `parse_*` function takes the bytes received so far and returns
//! `Ok(None)` while they do not yet hold the whole message, `Ok(Some((message, len)))`
//! once they do, and an error naming what the client must be told otherwise. UDP relay
//! datagrams carry a header of their own ([`parse_udp_datagram`], [`write_udp_header`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::Destination;

/// The protocol version, first byte of every SOCKS5 message but RFC 1929's.
pub const VERSION: u8 = 5;
/// The version byte of RFC 1929's sub-negotiation.
pub const AUTH_VERSION: u8 = 1;
/// The method selection that tells the client none of its methods is acceptable.
pub const NO_ACCEPTABLE_METHODS: u8 = 0xff;
/// Longest reply or UDP header: an IPv6 address and a port behind four bytes, or a
/// 255-byte name behind five.
pub const MAX_HEADER_LEN: usize = 4 + 1 + 255 + 2;

const ATYP_IPV4: u8 = 1;
const ATYP_NAME: u8 = 3;
const ATYP_IPV6: u8 = 4;

/// An authentication method tundns offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Method {
    NoAuthentication = 0x00,
    UsernamePassword = 0x02,
}

/// The methods a client's greeting offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Greeting {
    pub no_authentication: bool,
    pub username_password: bool,
}

impl Greeting {
    /// The method to use: username/password when credentials are required, none
    /// otherwise; `None` when the client did not offer it.
    pub fn select(&self, credentials_required: bool) -> Option<Method> {
        if credentials_required {
            self.username_password.then_some(Method::UsernamePassword)
        } else {
            self.no_authentication.then_some(Method::NoAuthentication)
        }
    }
}

/// The method selection message for `method` (`None`: no acceptable method).
pub fn method_selection(method: Option<Method>) -> [u8; 2] {
    [
        VERSION,
        method.map_or(NO_ACCEPTABLE_METHODS, |method| method as u8),
    ]
}

/// A message that is not SOCKS5 (or RFC 1929) at all: the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("version {0} is not SOCKS5")]
    Version(u8),
    #[error("a greeting that offers no method")]
    NoMethods,
}

/// Parses `VER NMETHODS METHODS...`.
pub fn parse_greeting(buf: &[u8]) -> Result<Option<(Greeting, usize)>, Malformed> {
    let Some((&version, rest)) = buf.split_first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(Malformed::Version(version));
    }
    let Some((&count, rest)) = rest.split_first() else {
        return Ok(None);
    };
    if count == 0 {
        return Err(Malformed::NoMethods);
    }
    let Some(methods) = rest.get(..usize::from(count)) else {
        return Ok(None);
    };
    let mut greeting = Greeting::default();
    for &method in methods {
        match method {
            0x00 => greeting.no_authentication = true,
            0x02 => greeting.username_password = true,
            _ => {}
        }
    }
    Ok(Some((greeting, 2 + methods.len())))
}

/// RFC 1929's username and password, as the client sent them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserPassword<'a> {
    pub username: &'a [u8],
    pub password: &'a [u8],
}

/// Parses `VER ULEN UNAME PLEN PASSWD` (RFC 1929).
pub fn parse_user_password(buf: &[u8]) -> Result<Option<(UserPassword<'_>, usize)>, Malformed> {
    let Some((&version, rest)) = buf.split_first() else {
        return Ok(None);
    };
    if version != AUTH_VERSION {
        return Err(Malformed::Version(version));
    }
    let Some((username, rest)) = length_prefixed(rest) else {
        return Ok(None);
    };
    let Some((password, _)) = length_prefixed(rest) else {
        return Ok(None);
    };
    let len = 3 + username.len() + password.len();
    Ok(Some((UserPassword { username, password }, len)))
}

/// RFC 1929's status reply: 0 for success, anything else closes the connection.
pub fn user_password_status(accepted: bool) -> [u8; 2] {
    [AUTH_VERSION, if accepted { 0 } else { 1 }]
}

fn length_prefixed(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = buf.split_first()?;
    let len = usize::from(len);
    Some((rest.get(..len)?, rest.get(len..)?))
}

/// What a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Connect,
    /// Accepted by the parser so that it can be refused with the right reply.
    Bind,
    UdpAssociate,
}

/// A client's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    pub destination: Destination,
}

/// The reply codes of RFC 1928 §6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    Succeeded = 0x00,
    GeneralFailure = 0x01,
    /// "Connection not allowed by ruleset": a blocked name, a refused client.
    NotAllowed = 0x02,
    NetworkUnreachable = 0x03,
    HostUnreachable = 0x04,
    ConnectionRefused = 0x05,
    TtlExpired = 0x06,
    CommandNotSupported = 0x07,
    AddressTypeNotSupported = 0x08,
}

/// A request that cannot be carried out as written: the client gets `reply`, and the
/// connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("refused request: {reply:?}")]
pub struct RequestError {
    pub reply: Reply,
}

impl RequestError {
    fn new(reply: Reply) -> Self {
        Self { reply }
    }
}

/// Parses `VER CMD RSV ATYP DST.ADDR DST.PORT`. An unknown command is refused before
/// its address is read, so that even a request whose address cannot be parsed gets
/// "command not supported".
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, RequestError> {
    let [version, command, _reserved, rest @ ..] = buf else {
        return match buf.first() {
            Some(&version) if version != VERSION => Err(RequestError::new(Reply::GeneralFailure)),
            _ => Ok(None),
        };
    };
    if *version != VERSION {
        return Err(RequestError::new(Reply::GeneralFailure));
    }
    let command = match command {
        1 => Command::Connect,
        2 => Command::Bind,
        3 => Command::UdpAssociate,
        _ => return Err(RequestError::new(Reply::CommandNotSupported)),
    };
    Ok(parse_address(rest)?.map(|(destination, len)| {
        (
            Request {
                command,
                destination,
            },
            3 + len,
        )
    }))
}

/// Parses `ATYP ADDR PORT`; the length read.
fn parse_address(buf: &[u8]) -> Result<Option<(Destination, usize)>, RequestError> {
    let Some((&kind, rest)) = buf.split_first() else {
        return Ok(None);
    };
    let (host, rest) = match kind {
        ATYP_IPV4 => match rest.split_first_chunk::<4>() {
            Some((octets, rest)) => (Host::Ip(Ipv4Addr::from(*octets).into()), rest),
            None => return Ok(None),
        },
        ATYP_IPV6 => match rest.split_first_chunk::<16>() {
            Some((octets, rest)) => (Host::Ip(Ipv6Addr::from(*octets).into()), rest),
            None => return Ok(None),
        },
        ATYP_NAME => match length_prefixed(rest) {
            Some((name, rest)) => (Host::Name(name), rest),
            None => return Ok(None),
        },
        _ => return Err(RequestError::new(Reply::AddressTypeNotSupported)),
    };
    let Some((port, rest)) = rest.split_first_chunk::<2>() else {
        return Ok(None);
    };
    let port = u16::from_be_bytes(*port);
    let destination = match host {
        Host::Ip(ip) => Destination::Addr(SocketAddr::new(ip, port)),
        // A name that is no host name (or an IP literal: some clients send those as
        // names) is taken as `Destination::from_host` takes it; garbage is refused.
        Host::Name(name) => std::str::from_utf8(name)
            .ok()
            .and_then(|name| Destination::from_host(name, port))
            .ok_or(RequestError::new(Reply::HostUnreachable))?,
    };
    Ok(Some((destination, buf.len() - rest.len())))
}

enum Host<'a> {
    Ip(IpAddr),
    Name(&'a [u8]),
}

/// A reply or UDP header, built in place.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    bytes: [u8; MAX_HEADER_LEN],
    len: usize,
}

impl Header {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn new(prefix: [u8; 3]) -> Self {
        let mut bytes = [0; MAX_HEADER_LEN];
        bytes[..3].copy_from_slice(&prefix);
        Self { bytes, len: 3 }
    }

    fn push(&mut self, data: &[u8]) {
        self.bytes[self.len..self.len + data.len()].copy_from_slice(data);
        self.len += data.len();
    }

    fn push_addr(&mut self, addr: SocketAddr) {
        match addr.ip() {
            IpAddr::V4(ip) => {
                self.push(&[ATYP_IPV4]);
                self.push(&ip.octets());
            }
            IpAddr::V6(ip) => {
                self.push(&[ATYP_IPV6]);
                self.push(&ip.octets());
            }
        }
        self.push(&addr.port().to_be_bytes());
    }
}

/// `VER REP RSV ATYP BND.ADDR BND.PORT`. Failures carry the unspecified address, as
/// RFC 1928 leaves them nothing to report.
pub fn reply(code: Reply, bound: SocketAddr) -> Header {
    let mut header = Header::new([VERSION, code as u8, 0]);
    header.push_addr(bound);
    header
}

/// A UDP relay datagram's destination and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpDatagram<'a> {
    pub destination: Destination,
    pub payload: &'a [u8],
}

/// Why a relayed datagram is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UdpError {
    #[error("a truncated or malformed header")]
    Malformed,
    /// RFC 1928 §7 lets a relay drop fragments rather than reassemble them.
    #[error("a fragment ({0})")]
    Fragment(u8),
}

/// Parses `RSV(2) FRAG ATYP DST.ADDR DST.PORT DATA`.
pub fn parse_udp_datagram(datagram: &[u8]) -> Result<UdpDatagram<'_>, UdpError> {
    let [_, _, fragment, rest @ ..] = datagram else {
        return Err(UdpError::Malformed);
    };
    if *fragment != 0 {
        return Err(UdpError::Fragment(*fragment));
    }
    match parse_address(rest) {
        Ok(Some((destination, len))) => Ok(UdpDatagram {
            destination,
            payload: &rest[len..],
        }),
        _ => Err(UdpError::Malformed),
    }
}

/// The header in front of a datagram relayed back to the client from `source`.
pub fn write_udp_header(source: SocketAddr) -> Header {
    let mut header = Header::new([0, 0, 0]);
    header.push_addr(source);
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_greeting_is_read_once_whole_and_the_method_follows_the_credentials_setting() {
        let greeting = [5, 2, 0x00, 0x02];
        for cut in 0..greeting.len() {
            assert_eq!(parse_greeting(&greeting[..cut]), Ok(None), "cut at {cut}");
        }
        let (offered, len) = parse_greeting(&[5, 2, 0x00, 0x02, 0xaa]).unwrap().unwrap();
        assert_eq!(len, 4);
        assert_eq!(offered.select(false), Some(Method::NoAuthentication));
        assert_eq!(offered.select(true), Some(Method::UsernamePassword));
        let (only_none, _) = parse_greeting(&[5, 1, 0x00]).unwrap().unwrap();
        assert_eq!(only_none.select(true), None);
        assert_eq!(method_selection(None), [5, 0xff]);
        assert_eq!(parse_greeting(&[4, 1, 0]), Err(Malformed::Version(4)));
        assert_eq!(parse_greeting(&[5, 0]), Err(Malformed::NoMethods));
    }

    #[test]
    fn username_and_password_are_read_as_sent() {
        let message = [1, 4, b'u', b's', b'e', b'r', 2, b'p', b'w'];
        for cut in 0..message.len() {
            assert_eq!(
                parse_user_password(&message[..cut]),
                Ok(None),
                "cut at {cut}"
            );
        }
        let (parsed, len) = parse_user_password(&message).unwrap().unwrap();
        assert_eq!(
            (parsed.username, parsed.password, len),
            (&b"user"[..], &b"pw"[..], 9)
        );
        assert_eq!(parse_user_password(&[5, 0, 0]), Err(Malformed::Version(5)));
        assert_eq!(user_password_status(false), [1, 1]);
    }

    #[test]
    fn requests_name_their_destination_in_each_address_type() {
        let v4 = [5, 1, 0, 1, 192, 0, 2, 7, 0, 80];
        let (request, len) = parse_request(&v4).unwrap().unwrap();
        assert_eq!(len, v4.len());
        assert_eq!(request.command, Command::Connect);
        assert_eq!(
            request.destination,
            Destination::Addr("192.0.2.7:80".parse().unwrap())
        );

        let mut v6 = vec![5, 3, 0, 4];
        v6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&53u16.to_be_bytes());
        let (request, _) = parse_request(&v6).unwrap().unwrap();
        assert_eq!(request.command, Command::UdpAssociate);
        assert_eq!(
            request.destination,
            Destination::Addr("[2001:db8::1]:53".parse().unwrap())
        );

        let mut named = vec![5, 1, 0, 3, 12];
        named.extend_from_slice(b"WWW.lab.test");
        named.extend_from_slice(&443u16.to_be_bytes());
        for cut in 0..named.len() {
            assert_eq!(parse_request(&named[..cut]), Ok(None), "cut at {cut}");
        }
        let (request, len) = parse_request(&named).unwrap().unwrap();
        assert_eq!(len, named.len());
        assert_eq!(
            request.destination,
            Destination::Name {
                name: "www.lab.test".into(),
                port: 443
            }
        );
    }

    #[test]
    fn bad_requests_get_the_reply_code_rfc_1928_names() {
        let refused = |bytes: &[u8]| parse_request(bytes).unwrap_err().reply;
        assert_eq!(refused(&[5, 9, 0]), Reply::CommandNotSupported);
        assert_eq!(
            refused(&[5, 1, 0, 2, 1, 2, 3, 4]),
            Reply::AddressTypeNotSupported
        );
        assert_eq!(refused(&[4, 1, 0, 1]), Reply::GeneralFailure);
        assert_eq!(refused(&[4]), Reply::GeneralFailure);
        assert_eq!(
            refused(&[5, 1, 0, 3, 3, b'a', b' ', b'b', 0, 80]),
            Reply::HostUnreachable
        );
    }

    #[test]
    fn replies_and_udp_headers_carry_the_address() {
        let header = reply(Reply::Succeeded, "10.30.30.30:1080".parse().unwrap());
        assert_eq!(header.as_bytes(), [5, 0, 0, 1, 10, 30, 30, 30, 0x04, 0x38]);
        let failure = reply(Reply::TtlExpired, SocketAddr::from(([0, 0, 0, 0], 0)));
        assert_eq!(failure.as_bytes()[1], 0x06);

        let source: SocketAddr = "[2001:db8::53]:53".parse().unwrap();
        let mut datagram = write_udp_header(source).as_bytes().to_vec();
        datagram.extend_from_slice(b"payload");
        let parsed = parse_udp_datagram(&datagram).unwrap();
        assert_eq!(parsed.destination, Destination::Addr(source));
        assert_eq!(parsed.payload, b"payload");
        datagram[2] = 1;
        assert_eq!(parse_udp_datagram(&datagram), Err(UdpError::Fragment(1)));
        assert_eq!(
            parse_udp_datagram(&[0, 0, 0, 1, 1]),
            Err(UdpError::Malformed)
        );
    }

    proptest! {
        #[test]
        fn no_input_panics_and_a_complete_message_never_reads_past_the_buffer(
            bytes in proptest::collection::vec(any::<u8>(), 0..300)
        ) {
            if let Ok(Some((_, len))) = parse_greeting(&bytes) { prop_assert!(len <= bytes.len()); }
            if let Ok(Some((_, len))) = parse_user_password(&bytes) { prop_assert!(len <= bytes.len()); }
            if let Ok(Some((_, len))) = parse_request(&bytes) { prop_assert!(len <= bytes.len()); }
            let _ = parse_udp_datagram(&bytes);
        }

        #[test]
        fn a_request_for_any_address_reads_back_as_written(
            ip in any::<IpAddr>(), port in any::<u16>(), command in 1u8..=3
        ) {
            let written = reply(Reply::Succeeded, SocketAddr::new(ip, port));
            let mut request = written.as_bytes().to_vec();
            request[1] = command;
            let (parsed, len) = parse_request(&request).unwrap().unwrap();
            prop_assert_eq!(len, request.len());
            prop_assert_eq!(parsed.destination, Destination::Addr(SocketAddr::new(ip, port)));
        }
    }
}

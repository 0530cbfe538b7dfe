//! ICMP errors about a TCP segment this stack sent: smoltcp ignores them, but a
//! connection being opened should fail with what the network said, at once.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tundns_packet::{IpView, ipv4, ipv6, protocol};

use crate::ConnectFailure;

/// An ICMP error about the segment `local` sent to `remote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectError {
    pub(crate) local: SocketAddr,
    pub(crate) remote: SocketAddr,
    pub(crate) reason: ConnectFailure,
}

/// ICMP's fixed header before the invoking packet (RFC 792, RFC 4443).
const ICMP_HEADER_LEN: usize = 8;

/// The error `view` carries, if it is an ICMP or ICMPv6 error whose invoking
/// packet is a TCP segment (its IP header and ports are all that is read).
pub(crate) fn connect_error(view: &IpView<'_>) -> Option<ConnectError> {
    let message = view.bytes().get(view.transport_offset()?..)?;
    let (&kind, &code) = (message.first()?, message.get(1)?);
    let reason = match (view.protocol()?, kind) {
        (protocol::ICMP, 3) => match code {
            2 | 3 => ConnectFailure::Refused,
            0 | 6 | 11 => ConnectFailure::NetworkUnreachable,
            // "Fragmentation needed" is about the path's MTU, not the destination.
            4 => return None,
            _ => ConnectFailure::HostUnreachable,
        },
        (protocol::ICMP, 11) | (protocol::ICMPV6, 3) => ConnectFailure::TtlExpired,
        (protocol::ICMPV6, 1) => match code {
            0 => ConnectFailure::NetworkUnreachable,
            4 => ConnectFailure::Refused,
            _ => ConnectFailure::HostUnreachable,
        },
        _ => return None,
    };
    let (local, remote) = invoking_tcp_endpoints(message.get(ICMP_HEADER_LEN..)?)?;
    // An error about our segment comes to the address that sent it.
    (local.ip() == view.dst()).then_some(ConnectError {
        local,
        remote,
        reason,
    })
}

/// The (source, destination) endpoints of the TCP segment quoted in an ICMP
/// error: its IP header and at least the first 4 bytes of TCP.
fn invoking_tcp_endpoints(quoted: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let (src, dst, tcp): (IpAddr, IpAddr, &[u8]) = match quoted.first()? >> 4 {
        4 => {
            let header_len = usize::from(quoted[0] & 0x0f) * 4;
            if header_len < ipv4::HEADER_LEN || *quoted.get(ipv4::field::PROTOCOL)? != protocol::TCP
            {
                return None;
            }
            let src: [u8; 4] = quoted.get(ipv4::field::SRC_ADDR)?.try_into().ok()?;
            let dst: [u8; 4] = quoted.get(ipv4::field::DST_ADDR)?.try_into().ok()?;
            (
                Ipv4Addr::from(src).into(),
                Ipv4Addr::from(dst).into(),
                quoted.get(header_len..)?,
            )
        }
        6 => {
            if *quoted.get(ipv6::field::NEXT_HEADER)? != protocol::TCP {
                return None;
            }
            let src: [u8; 16] = quoted.get(ipv6::field::SRC_ADDR)?.try_into().ok()?;
            let dst: [u8; 16] = quoted.get(ipv6::field::DST_ADDR)?.try_into().ok()?;
            (
                Ipv6Addr::from(src).into(),
                Ipv6Addr::from(dst).into(),
                quoted.get(ipv6::HEADER_LEN..)?,
            )
        }
        _ => return None,
    };
    let ports = tcp.get(..4)?;
    Some((
        SocketAddr::new(src, u16::from_be_bytes([ports[0], ports[1]])),
        SocketAddr::new(dst, u16::from_be_bytes([ports[2], ports[3]])),
    ))
}

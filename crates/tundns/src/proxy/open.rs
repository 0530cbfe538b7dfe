//! Opening a proxied connection, the same for every proxy: the destination's name
//! resolved by tundns's resolver, each address checked against the peers' AllowedIPs,
//! then tried through the tunnel in happy-eyeballs order.

use std::net::SocketAddr;
use std::sync::Arc;

use ipnet::IpNet;
use tundns_netstack::ConnectFailure;
use tundns_proxy::socks5::Reply;
use tundns_proxy::{Credentials, Destination};

use super::lookup::{self, LookupError};
use super::stack::{OpenError, StackStream, UserStack};
use super::udp_relay::UdpRelay;
use crate::dns::proxy::DnsProxy;

/// What every proxy needs to open connections and to admit clients.
pub struct Opener {
    pub stack: UserStack,
    /// Where UDP associations get their port and their way into the tunnel.
    pub udp: Arc<UdpRelay>,
    /// Names are resolved here; without the DNS proxy, only addresses can be asked for.
    pub resolver: Option<Arc<DnsProxy>>,
    /// Every peer's AllowedIPs: a destination outside all of them is unreachable.
    pub allowed_ips: Vec<IpNet>,
    /// Who may use the proxies; `None`: anyone who can reach the listener.
    pub credentials: Option<Credentials>,
}

impl Opener {
    /// A connection through the tunnel to `destination`, or the SOCKS5 reply that says
    /// why not (the HTTP proxy turns it into a status).
    pub async fn open(&self, destination: &Destination) -> Result<StackStream, Reply> {
        let mut reply = Reply::NetworkUnreachable;
        for candidate in self.reachable(destination).await? {
            match self.stack.connect(candidate).await {
                Ok(stream) => return Ok(stream),
                Err(error) => reply = reply_for(error),
            }
        }
        Err(reply)
    }

    /// The addresses of `destination` the tunnel reaches, in the order to try them.
    pub async fn reachable(&self, destination: &Destination) -> Result<Vec<SocketAddr>, Reply> {
        let candidates = match destination {
            Destination::Addr(addr) => vec![*addr],
            Destination::Name { name, port } => {
                let resolver = self.resolver.as_ref().ok_or(Reply::HostUnreachable)?;
                lookup::resolve(resolver, name, *port)
                    .await
                    .map_err(|error| match error {
                        LookupError::Blocked => Reply::NotAllowed,
                        LookupError::NoAddress | LookupError::Failed => Reply::HostUnreachable,
                    })?
            }
        };
        let reachable: Vec<SocketAddr> = candidates
            .into_iter()
            // An IPv4-mapped IPv6 address is the IPv4 address it maps.
            .map(|candidate| SocketAddr::new(candidate.ip().to_canonical(), candidate.port()))
            .filter(is_connectable)
            .filter(|candidate| {
                self.allowed_ips
                    .iter()
                    .any(|net| net.contains(&candidate.ip()))
            })
            .collect();
        if reachable.is_empty() {
            return Err(Reply::NetworkUnreachable);
        }
        Ok(reachable)
    }
}

/// A unicast address and a port: where a connection or a datagram can go.
fn is_connectable(destination: &SocketAddr) -> bool {
    let ip = destination.ip();
    destination.port() != 0
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && ip != std::net::IpAddr::V4(std::net::Ipv4Addr::BROADCAST)
}

/// The SOCKS5 reply for a connection that could not be opened.
fn reply_for(error: OpenError) -> Reply {
    match error {
        OpenError::Failed(ConnectFailure::Refused) => Reply::ConnectionRefused,
        OpenError::Failed(ConnectFailure::NetworkUnreachable) => Reply::NetworkUnreachable,
        OpenError::Failed(ConnectFailure::HostUnreachable) => Reply::HostUnreachable,
        OpenError::Failed(ConnectFailure::TtlExpired | ConnectFailure::TimedOut) => {
            Reply::TtlExpired
        }
        OpenError::NoLocalAddress(_) => Reply::NetworkUnreachable,
        OpenError::TooMany => Reply::GeneralFailure,
    }
}

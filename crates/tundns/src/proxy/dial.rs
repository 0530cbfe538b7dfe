//! The proxies' userspace stack as the resolver's way into the tunnel: in the rootless
//! mode, a `ThroughTunnel` group's queries leave from the interface address through the
//! stack's TCP and the relay's UDP ports, as a proxied connection does.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tundns_netstack::ConnectFailure;
use tundns_upstream::{DialFuture, TunnelDial, TunnelPort, TunnelStream};

use super::stack::{OpenError, UserStack};
use super::udp_relay::{Association, SendError, UdpRelay};

/// The stack and the UDP relay, dialling for the resolver.
pub struct StackDial {
    pub stack: UserStack,
    pub udp: Arc<UdpRelay>,
}

impl TunnelDial for StackDial {
    fn port(&self) -> io::Result<Box<dyn TunnelPort>> {
        let association = self
            .udp
            .associate()
            .ok_or_else(|| io::Error::other("every UDP port through the tunnel is taken"))?;
        Ok(Box::new(association))
    }

    fn connect(&self, upstream: SocketAddr) -> DialFuture<'_, io::Result<Box<dyn TunnelStream>>> {
        Box::pin(async move {
            match self.stack.connect(upstream).await {
                Ok(stream) => Ok(Box::new(stream) as Box<dyn TunnelStream>),
                Err(error) => Err(io::Error::new(open_error_kind(error), error)),
            }
        })
    }
}

fn open_error_kind(error: OpenError) -> io::ErrorKind {
    match error {
        OpenError::Failed(ConnectFailure::Refused) => io::ErrorKind::ConnectionRefused,
        OpenError::Failed(ConnectFailure::NetworkUnreachable) => io::ErrorKind::NetworkUnreachable,
        OpenError::Failed(ConnectFailure::HostUnreachable) => io::ErrorKind::HostUnreachable,
        OpenError::Failed(ConnectFailure::TtlExpired | ConnectFailure::TimedOut) => {
            io::ErrorKind::TimedOut
        }
        OpenError::NoLocalAddress(_) => io::ErrorKind::AddrNotAvailable,
        OpenError::TooMany => io::ErrorKind::Other,
    }
}

impl TunnelPort for Association {
    fn send_to(&self, payload: &[u8], to: SocketAddr) -> io::Result<()> {
        self.send(to, payload).map_err(|error| {
            let kind = match error {
                SendError::NoLocalAddress => io::ErrorKind::AddrNotAvailable,
                SendError::TooLarge => io::ErrorKind::InvalidInput,
            };
            io::Error::new(kind, error)
        })
    }

    fn recv(&mut self) -> DialFuture<'_, Option<(SocketAddr, Vec<u8>)>> {
        Box::pin(async move {
            Association::recv(self)
                .await
                .map(|inbound| (inbound.from, inbound.payload))
        })
    }
}

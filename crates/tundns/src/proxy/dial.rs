//! The proxies' userspace stack as the resolver's way into the tunnel: in the rootless
//! mode, a `ThroughTunnel` group's queries leave from the interface address through the
//! stack's TCP and the relay's UDP ports, as a proxied connection does.
//!
//! Each UDP attempt holds a relay port of its own, as an association does; the resolver
//! holds at most [`RESOLVER_PORTS`] of them, so that a burst of queries leaves SOCKS5's
//! associations the rest.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tundns_netstack::ConnectFailure;
use tundns_upstream::{DialFuture, TunnelDial, TunnelPort, TunnelStream};

use super::stack::{OpenError, UserStack};
use super::udp_relay::{Association, MAX_ASSOCIATIONS, SendError, UdpRelay};

/// Relay ports the resolver's attempts hold at once: half of the relay's associations.
pub const RESOLVER_PORTS: usize = MAX_ASSOCIATIONS / 2;

/// The stack and the UDP relay, dialling for the resolver.
pub struct StackDial {
    stack: UserStack,
    udp: Arc<UdpRelay>,
    ports: Arc<Semaphore>,
}

impl StackDial {
    pub fn new(stack: UserStack, udp: Arc<UdpRelay>) -> Self {
        Self {
            stack,
            udp,
            ports: Arc::new(Semaphore::new(RESOLVER_PORTS)),
        }
    }
}

/// A relay port held by one of the resolver's attempts.
struct ResolverPort {
    association: Association,
    _held: OwnedSemaphorePermit,
}

impl TunnelDial for StackDial {
    fn port(&self) -> io::Result<Box<dyn TunnelPort>> {
        let shortage = |what: &str| io::Error::new(io::ErrorKind::ResourceBusy, what);
        let held = self
            .ports
            .clone()
            .try_acquire_owned()
            .map_err(|_| shortage("the resolver holds all its UDP ports through the tunnel"))?;
        let association = self
            .udp
            .associate()
            .ok_or_else(|| shortage("every UDP port through the tunnel is taken"))?;
        Ok(Box::new(ResolverPort {
            association,
            _held: held,
        }))
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
        OpenError::TooMany => io::ErrorKind::ResourceBusy,
    }
}

impl TunnelPort for ResolverPort {
    fn send_to(&self, payload: &[u8], to: SocketAddr) -> io::Result<()> {
        self.association.send(to, payload).map_err(|error| {
            let kind = match error {
                SendError::NoLocalAddress => io::ErrorKind::AddrNotAvailable,
                SendError::TooLarge => io::ErrorKind::InvalidInput,
            };
            io::Error::new(kind, error)
        })
    }

    fn recv(&mut self) -> DialFuture<'_, Option<(SocketAddr, Vec<u8>)>> {
        Box::pin(async move {
            self.association
                .recv()
                .await
                .map(|inbound| (inbound.from, inbound.payload))
        })
    }
}

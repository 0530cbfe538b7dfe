//! UDP for the proxies (SOCKS5's UDP ASSOCIATE): each association holds a local port on
//! the interface address; datagrams leave from it as IP packets built here and handed to
//! WireGuard, and datagrams to it are taken from the tunnel before the TUN.
//!
//! UDP needs no stack: a datagram is one packet each way, so the relay builds and parses
//! them with `tundns-packet`, and fragments are not reassembled (like most relays, it
//! carries datagrams up to the tunnel's MTU).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use gotatun::packet::{Ip, Packet};
use tokio::sync::mpsc;
use tundns_packet::udp::{udp_headers_len, write_udp_headers};
use tundns_packet::{IpView, UdpView};

use super::ports::{LOCAL_PORTS, PortSet};

/// Datagrams waiting for an association's task.
const ASSOCIATION_QUEUE: usize = 256;
/// Associations at once.
pub const MAX_ASSOCIATIONS: usize = 512;

/// A datagram from the tunnel for an association.
pub struct Inbound {
    pub from: SocketAddr,
    pub payload: Vec<u8>,
}

/// The associations and their way into and out of the tunnel.
pub struct UdpRelay {
    local_ips: Vec<IpAddr>,
    /// The tunnel's MTU: a datagram whose packet is larger is not sent.
    mtu: usize,
    ports: Arc<PortSet>,
    outbound: mpsc::Sender<Packet<Ip>>,
    associations: Mutex<HashMap<u16, mpsc::Sender<Inbound>>>,
}

impl UdpRelay {
    /// A relay on the interface addresses `local_ips`, sending into `outbound`.
    pub fn new(
        local_ips: Vec<IpAddr>,
        mtu: u16,
        ports: Arc<PortSet>,
        outbound: mpsc::Sender<Packet<Ip>>,
    ) -> Self {
        Self {
            local_ips,
            mtu: usize::from(mtu),
            ports,
            outbound,
            associations: Mutex::new(HashMap::new()),
        }
    }

    /// A new association on a free local port; `None` when all are taken.
    pub fn associate(self: &Arc<Self>) -> Option<Association> {
        let mut associations = self.lock();
        if associations.len() >= MAX_ASSOCIATIONS {
            return None;
        }
        // A random free port: a forged datagram must guess it as well as the DNS ID or the
        // SOCKS client's traffic. The scan from a random start finds the last ones free.
        let count = usize::from(LOCAL_PORTS.end() - LOCAL_PORTS.start()) + 1;
        let start = rand::random_range(0..count);
        let port = (0..count)
            .map(|step| *LOCAL_PORTS.start() + ((start + step) % count) as u16)
            .find(|port| self.ports.claim(*port))?;
        let (sender, inbound) = mpsc::channel(ASSOCIATION_QUEUE);
        associations.insert(port, sender);
        Some(Association {
            relay: self.clone(),
            port,
            inbound,
        })
    }

    /// Takes the datagram `udp` of the packet `ip` from the tunnel if it is to an
    /// association's port.
    pub fn take(&self, ip: &IpView<'_>, udp: &UdpView<'_>) -> bool {
        if !self.local_ips.contains(&ip.dst()) || !self.ports.contains(udp.dst_port()) {
            return false;
        }
        let associations = self.lock();
        let Some(association) = associations.get(&udp.dst_port()) else {
            return false;
        };
        // Dropped when the association lags this far behind, as UDP may be.
        let _ = association.try_send(Inbound {
            from: SocketAddr::new(ip.src(), udp.src_port()),
            payload: udp.payload().to_vec(),
        });
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u16, mpsc::Sender<Inbound>>> {
        self.associations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One association: its port, and the datagrams that arrive for it.
pub struct Association {
    relay: Arc<UdpRelay>,
    port: u16,
    inbound: mpsc::Receiver<Inbound>,
}

/// Why a datagram was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no interface address of the destination's family")]
    NoLocalAddress,
    #[error("larger than the tunnel's MTU")]
    TooLarge,
}

impl Association {
    /// Sends `payload` to `to` through the tunnel. A full queue drops it, as UDP may.
    pub fn send(&self, to: SocketAddr, payload: &[u8]) -> Result<(), SendError> {
        let local_ip = self
            .relay
            .local_ips
            .iter()
            .find(|ip| ip.is_ipv4() == to.is_ipv4())
            .ok_or(SendError::NoLocalAddress)?;
        let from = SocketAddr::new(*local_ip, self.port);
        let offset = udp_headers_len(&to);
        // IPv4 packets are sent with Don't Fragment: one larger than the tunnel's MTU
        // would be lost on the way, so it is refused here.
        if offset + payload.len() > self.relay.mtu {
            return Err(SendError::TooLarge);
        }
        let mut buf = BytesMut::zeroed(offset + payload.len());
        buf[offset..].copy_from_slice(payload);
        let len = write_udp_headers(&mut buf, from, to, payload.len())
            .map_err(|_| SendError::TooLarge)?;
        buf.truncate(len);
        if let Ok(packet) = Packet::from_bytes(buf).try_into_ip() {
            let _ = self.relay.outbound.try_send(packet);
        }
        Ok(())
    }

    /// The next datagram from the tunnel; `None` once the relay is gone.
    pub async fn recv(&mut self) -> Option<Inbound> {
        self.inbound.recv().await
    }
}

impl Drop for Association {
    fn drop(&mut self) {
        self.relay.lock().remove(&self.port);
        self.relay.ports.release(self.port);
    }
}

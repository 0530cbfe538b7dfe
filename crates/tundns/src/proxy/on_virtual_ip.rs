//! Listeners on the virtual IPs: TCP served by a userspace stack of their own
//! ([`StackListeners`], which encrypted DNS uses too), fed from the TUN and answering into
//! it, and for the proxies ([`VirtualListeners`]) the UDP relay sockets of SOCKS5
//! associations made there.
//!
//! The proxies serve only this host: a packet whose source is not one of the host's own
//! addresses (a LAN or container host that routed the virtual IP through this machine) is
//! dropped before any stack sees it. The tunnel side never gets here: the filter drops
//! every decrypted packet that names a virtual IP.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tundns_filter::{
    Datagram, Service, SourcePolicy, TunBatch, TunWriter, UdpService, VirtualHost,
};
use tundns_host::local_addresses::LocalAddresses;
use tundns_netstack::Limits;
use tundns_packet::IpView;

use super::ports::LOCAL_PORTS;
use super::stack::{Accepted, PacketSink, StackIo, UserStack, proxy_limits};

/// Datagrams waiting for one relay socket's association.
const RELAY_QUEUE: usize = 256;

/// A datagram to a relay socket: its sender and payload.
type RelayDatagram = (SocketAddr, Vec<u8>);
/// The bound relay sockets, by address.
type RelaySockets = HashMap<SocketAddr, mpsc::Sender<RelayDatagram>>;

/// Where the TUN reader's segments for [`StackListeners`] are handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handover {
    /// Queued for the stack's task, on its runtime.
    ToTask,
    /// On the reader: it settles the stack itself and runs the connection tasks that
    /// allow it (the `inline` module) before it reads on.
    OnReader,
}

/// A userspace stack of its own accepting TCP connections on ports of the virtual IPs.
pub struct StackListeners {
    stack: UserStack,
    tcp: Arc<AdmittedTcp>,
    tcp_ports: Vec<u16>,
}

impl StackListeners {
    /// A stack named `name` for listeners on `addresses` (which the caller then
    /// [`listen`]s on), answering through `tun`, taking the segments of the sources
    /// `admits` takes, handed over as `handover` says.
    ///
    /// [`listen`]: Self::listen
    pub fn new(
        name: &'static str,
        addresses: &[SocketAddr],
        limits: Limits,
        tun: TunWriter,
        admits: Arc<dyn SourcePolicy>,
        handover: Handover,
    ) -> Self {
        let (inbound_tx, inbound) = UserStack::inbound_channel();
        let stack = UserStack::spawn(
            name,
            Vec::new(),
            Arc::default(),
            limits,
            StackIo {
                inbound,
                outbound: Box::new(tun.batch()),
            },
        );
        let mut tcp_ports: Vec<u16> = addresses.iter().map(SocketAddr::port).collect();
        tcp_ports.sort_unstable();
        tcp_ports.dedup();
        Self {
            tcp: Arc::new(AdmittedTcp {
                stack: stack.clone(),
                inbound: inbound_tx,
                handover,
                admits,
            }),
            stack,
            tcp_ports,
        }
    }

    /// Listens on `addresses`, which must be among those given to [`new`](Self::new).
    pub fn listen(&self, addresses: &[SocketAddr]) -> mpsc::Receiver<Accepted> {
        self.stack.listen(addresses)
    }

    /// `host` with the listeners' TCP ports opened.
    pub fn open_ports(&self, mut host: VirtualHost) -> VirtualHost {
        for port in &self.tcp_ports {
            host = host.with_tcp(*port, self.tcp.clone());
        }
        host
    }
}

/// The proxies' side of the virtual IPs: a stack listening on their ports, and the relay
/// ports of the associations made there, for this host only.
pub struct VirtualListeners {
    tcp: StackListeners,
    pub relays: Arc<RelayPorts>,
}

impl VirtualListeners {
    /// Listeners on `addresses`, answering through `tun`, for packets from `local` sources
    /// only.
    pub fn new(
        addresses: &[SocketAddr],
        mtu: u16,
        tun: TunWriter,
        local: Arc<LocalAddresses>,
    ) -> Self {
        let tcp = StackListeners::new(
            "the proxies' listeners on the virtual IPs",
            addresses,
            proxy_limits(mtu),
            tun.clone(),
            Arc::new(ThisHostOnly(local.clone())),
            Handover::ToTask,
        );
        Self {
            tcp,
            relays: Arc::new(RelayPorts {
                tun,
                local,
                sockets: Mutex::default(),
            }),
        }
    }

    /// Listens on `addresses`, which must be among those given to [`new`](Self::new).
    pub fn listen(&self, addresses: &[SocketAddr]) -> mpsc::Receiver<Accepted> {
        self.tcp.listen(addresses)
    }

    /// `host` with the listeners' TCP ports and the relays' UDP ports opened.
    pub fn open_ports(&self, host: VirtualHost) -> VirtualHost {
        self.tcp
            .open_ports(host)
            .with_udp_ports(LOCAL_PORTS, self.relays.clone())
    }
}

/// This host's own addresses.
struct ThisHostOnly(Arc<LocalAddresses>);

impl SourcePolicy for ThisHostOnly {
    fn admits(&self, source: IpAddr) -> bool {
        self.0.contains(source)
    }
}

/// The listeners' segments to the host are written per settling of their stack, one
/// connection's consecutive segments as one super-packet: a download through a virtual IP
/// costs a TUN write per batch rather than per segment.
impl PacketSink for TunBatch {
    fn send(&mut self, packet: &[u8]) {
        if self.push(packet) {
            PacketSink::flush(self);
        }
    }

    fn flush(&mut self) {
        self.write_reply();
    }
}

/// The listeners' TCP ports: segments from admitted sources go to the stack.
struct AdmittedTcp {
    stack: UserStack,
    /// The stack's task's queue; with [`Handover::OnReader`], held only so that the task
    /// runs on (for timers and the streams' writes) while the listeners exist.
    inbound: mpsc::Sender<Vec<u8>>,
    handover: Handover,
    admits: Arc<dyn SourcePolicy>,
}

impl Service for AdmittedTcp {
    fn handle(&self, packet: &[u8], _tun: &TunWriter) {
        let admitted = IpView::parse(packet).is_ok_and(|ip| self.admits.admits(ip.src()));
        if !admitted {
            tracing::trace!("dropped a segment from a source these listeners do not serve");
            return;
        }
        match self.handover {
            // Dropped when the stack's task lags this far behind; TCP resends it.
            Handover::ToTask => drop(self.inbound.try_send(packet.to_vec())),
            Handover::OnReader => self.stack.deliver_and_run_here(packet),
        }
    }

    fn name(&self) -> &str {
        "stack-tcp"
    }
}

/// The UDP relay ports on the virtual IPs, one per association, from [`LOCAL_PORTS`].
pub struct RelayPorts {
    tun: TunWriter,
    local: Arc<LocalAddresses>,
    sockets: Mutex<RelaySockets>,
}

impl RelayPorts {
    /// A relay socket on a free port of `ip`; `None` when every port is taken.
    pub fn bind(self: &Arc<Self>, ip: IpAddr) -> Option<RelaySocket> {
        let mut sockets = self.lock();
        let local = LOCAL_PORTS
            .map(|port| SocketAddr::new(ip, port))
            .find(|address| !sockets.contains_key(address))?;
        let (sender, datagrams) = mpsc::channel(RELAY_QUEUE);
        sockets.insert(local, sender);
        Some(RelaySocket {
            ports: self.clone(),
            local,
            datagrams,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RelaySockets> {
        self.sockets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl UdpService for RelayPorts {
    fn on_datagram(&self, datagram: Datagram<'_>, _tun: &TunWriter) {
        if !self.local.contains(datagram.source.ip()) {
            return;
        }
        if let Some(socket) = self.lock().get(&datagram.destination) {
            // A full queue costs that datagram, as a full socket buffer would.
            let _ = socket.try_send((datagram.source, datagram.payload.to_vec()));
        }
    }
}

/// A UDP relay socket on a virtual IP, as a SOCKS5 association uses it.
pub struct RelaySocket {
    ports: Arc<RelayPorts>,
    local: SocketAddr,
    datagrams: mpsc::Receiver<RelayDatagram>,
}

impl RelaySocket {
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next datagram sent to this socket, copied into `buf` (cut to its length).
    pub async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (from, payload) = self
            .datagrams
            .recv()
            .await
            .ok_or(io::ErrorKind::BrokenPipe)?;
        let len = payload.len().min(buf.len());
        buf[..len].copy_from_slice(&payload[..len]);
        Ok((len, from))
    }

    /// Writes a datagram from this socket to `to` into the TUN.
    pub fn send_to(&self, payload: &[u8], to: SocketAddr) {
        self.ports.tun.send_udp(self.local, to, payload);
    }
}

impl Drop for RelaySocket {
    fn drop(&mut self) {
        self.ports.lock().remove(&self.local);
    }
}

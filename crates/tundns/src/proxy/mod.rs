//! The proxies: SOCKS5 and HTTP on host addresses and on the virtual IPs
//! ([`on_virtual_ip`]), whose connections leave through WireGuard from a userspace stack
//! on the interface address ([`stack`]), never through the host's routing table, and
//! whose names tundns's own resolver answers ([`lookup`]).
//!
//! `tunnel` claims the listeners and reads the credentials before it changes anything
//! ([`ClaimedProxies::claim`]), builds the stacks and their packet paths before WireGuard
//! starts ([`ProxyStack::new`]), and serves once the tunnel is up
//! ([`ClaimedProxies::serve`]).

pub mod dial;
pub mod http;
pub mod lookup;
pub mod on_virtual_ip;
pub mod open;
pub mod ports;
pub mod socks5;
pub mod stack;
pub mod udp_relay;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gotatun::tun::MtuWatcher;
use gotatun::tun::channel::{IpChannelRx, ip_channel};
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tundns_config::{Config, ConfigError, Spanned};
use tundns_filter::{InboundTap, TunWriter, VirtualHost};
use tundns_host::local_addresses::LocalAddresses;
use tundns_proxy::Credentials;
use tundns_upstream::Tunnel;

use crate::dns::proxy::DnsProxy;
use http::HttpProxy;
use on_virtual_ip::VirtualListeners;
use open::Opener;
use ports::PortSet;
use socks5::Socks5;
use stack::{Accepted, StackIo, UserStack, into_tunnel, proxy_limits};
use udp_relay::UdpRelay;

/// Packets of the stack waiting for WireGuard.
const OUTBOUND_QUEUE: usize = 4096;

/// Client connections served at once by all the proxies together; more wait for a slot.
const MAX_CLIENTS: usize = 2048;
/// Client connections one address may hold at once (a browser opens many); more are
/// closed at once, so that one client cannot take every slot.
const MAX_CLIENTS_PER_ADDRESS: usize = 512;

/// A proxy client's connection, from a host socket or from the virtual IPs' stack.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ClientStream for T {}

/// A client a listener accepted.
pub struct Client<S> {
    pub stream: S,
    pub peer: SocketAddr,
    /// The listener's address, where a SOCKS5 association's relay is bound too.
    pub local: SocketAddr,
}

/// A listener of either kind: a host socket, or listen addresses on the virtual IPs.
trait Listener: Send + 'static {
    type Stream: ClientStream;

    /// The next client; `None` once the listener is gone.
    fn accept(&mut self) -> impl Future<Output = Option<io::Result<Client<Self::Stream>>>> + Send;
}

impl Listener for TcpListener {
    type Stream = TcpStream;

    async fn accept(&mut self) -> Option<io::Result<Client<TcpStream>>> {
        let accepted = TcpListener::accept(self).await.and_then(|(stream, peer)| {
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr()?;
            Ok(Client {
                stream,
                peer,
                local,
            })
        });
        Some(accepted)
    }
}

impl Listener for mpsc::Receiver<Accepted> {
    type Stream = stack::StackStream;

    async fn accept(&mut self) -> Option<io::Result<Client<stack::StackStream>>> {
        let accepted = self.recv().await?;
        Some(Ok(Client {
            stream: accepted.stream,
            peer: accepted.peer,
            local: accepted.local,
        }))
    }
}

/// The `[Proxy]` listeners, bound (host sockets) or noted (virtual IPs), and the
/// credentials, read: what can fail on the config's account, done before tundns changes
/// anything.
pub struct ClaimedProxies {
    socks5: Vec<TcpListener>,
    http: Vec<TcpListener>,
    virtual_socks5: Vec<SocketAddr>,
    virtual_http: Vec<SocketAddr>,
    credentials: Option<Credentials>,
}

impl ClaimedProxies {
    /// Binds every listener and reads the credentials file; `None` without `[Proxy]`.
    pub async fn claim(config: &Config, path: &Path) -> Result<Option<Self>, ConfigError> {
        let Some(proxy) = &config.proxy else {
            return Ok(None);
        };
        let credentials = match &proxy.credentials {
            Some(file) => Some(read_credentials(&file.value).map_err(|error| match error {
                CredentialsFileError::Read(reason) => ConfigError::at(
                    path,
                    file.line,
                    format!("Credentials {}: {reason}", file.value.display()),
                ),
                CredentialsFileError::Line(error) => {
                    ConfigError::at(&file.value, error.line, error.message)
                }
            })?),
            None => None,
        };
        let on_virtual_ip = |listen: &&Spanned<SocketAddr>| {
            config.dns_proxy.enabled && config.dns_proxy.addresses.contains(&listen.value.ip())
        };
        let (virtual_socks5, host_socks5): (Vec<_>, Vec<_>) =
            proxy.socks5.iter().partition(on_virtual_ip);
        let (virtual_http, host_http): (Vec<_>, Vec<_>) =
            proxy.http.iter().partition(on_virtual_ip);
        Ok(Some(Self {
            socks5: bind_all("SOCKS5", &host_socks5, path).await?,
            http: bind_all("HTTP", &host_http, path).await?,
            virtual_socks5: virtual_socks5.iter().map(|listen| listen.value).collect(),
            virtual_http: virtual_http.iter().map(|listen| listen.value).collect(),
            credentials,
        }))
    }

    /// The listen addresses on the virtual IPs.
    pub fn virtual_addresses(&self) -> Vec<SocketAddr> {
        [&self.virtual_socks5, &self.virtual_http]
            .into_iter()
            .flatten()
            .copied()
            .collect()
    }

    /// Serves every listener through `stack`; the tasks and the virtual IPs' listeners
    /// end when the handle is dropped.
    pub fn serve(
        self,
        config: &Config,
        stack: ProxyStack,
        resolver: Option<Arc<DnsProxy>>,
    ) -> RunningProxies {
        let allowed_ips: Vec<IpNet> = config.allowed_ips().copied().collect();
        let opener = Arc::new(Opener {
            stack: stack.stack.clone(),
            udp: stack.udp.clone(),
            resolver,
            allowed_ips,
            credentials: self.credentials,
        });
        let http = Arc::new(HttpProxy {
            opener: opener.clone(),
        });
        let socks5 = Arc::new(Socks5 {
            opener: opener.clone(),
            virtual_relays: None,
        });
        let mut serving = Serving {
            slots: Arc::new(ClientSlots::default()),
            tasks: Vec::new(),
        };
        for listener in self.socks5 {
            let socks5 = socks5.clone();
            serving.spawn(listener, "SOCKS5", move |client| {
                socks5.clone().serve_client(client)
            });
        }
        for listener in self.http {
            let http = http.clone();
            serving.spawn(listener, "HTTP", move |client| {
                http.clone().serve_client(client)
            });
        }
        if let Some(listeners) = &stack.on_virtual_ips {
            let socks5 = Arc::new(Socks5 {
                opener,
                virtual_relays: Some(listeners.relays.clone()),
            });
            for address in self.virtual_socks5 {
                let socks5 = socks5.clone();
                tracing::info!(%address, "SOCKS5 proxy listening");
                serving.spawn(listeners.listen(&[address]), "SOCKS5", move |client| {
                    socks5.clone().serve_client(client)
                });
            }
            for address in self.virtual_http {
                let http = http.clone();
                tracing::info!(%address, "HTTP proxy listening");
                serving.spawn(listeners.listen(&[address]), "HTTP", move |client| {
                    http.clone().serve_client(client)
                });
            }
        }
        RunningProxies {
            tasks: serving.tasks,
            _on_virtual_ips: stack.on_virtual_ips,
        }
    }
}

/// The listeners' tasks, and the client slots they share.
struct Serving {
    slots: Arc<ClientSlots>,
    tasks: Vec<JoinHandle<()>>,
}

impl Serving {
    fn spawn<L, F, Fut>(&mut self, listener: L, proxy: &'static str, serve: F)
    where
        L: Listener,
        F: Fn(Client<L::Stream>) -> Fut + Send + 'static,
        Fut: Future<Output = io::Result<()>> + Send + 'static,
    {
        let slots = self.slots.clone();
        self.tasks.push(crate::supervise::spawn_essential(
            "a proxy's listener",
            serve_clients(listener, proxy, slots, serve),
        ));
    }
}

/// The bounds on client connections all the proxies share.
struct ClientSlots {
    total: Arc<Semaphore>,
    per_address: Mutex<HashMap<IpAddr, usize>>,
}

impl Default for ClientSlots {
    fn default() -> Self {
        Self {
            total: Arc::new(Semaphore::new(MAX_CLIENTS)),
            per_address: Mutex::new(HashMap::new()),
        }
    }
}

impl ClientSlots {
    /// Counts a connection from `address`; `None` when that address holds its maximum.
    fn admit(self: &Arc<Self>, address: IpAddr) -> Option<AddressSlot> {
        let mut counts = self.lock();
        let count = counts.entry(address).or_default();
        if *count >= MAX_CLIENTS_PER_ADDRESS {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            slots: self.clone(),
            address,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_address
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One address's count for one connection, given back when dropped.
struct AddressSlot {
    slots: Arc<ClientSlots>,
    address: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.slots.lock();
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// Binds each of `key`'s listen addresses; an address that cannot be bound is an error on
/// its line.
async fn bind_all(
    key: &str,
    addresses: &[&Spanned<SocketAddr>],
    path: &Path,
) -> Result<Vec<TcpListener>, ConfigError> {
    let mut bound = Vec::with_capacity(addresses.len());
    for listen in addresses {
        let listener = TcpListener::bind(listen.value).await.map_err(|error| {
            ConfigError::at(
                path,
                listen.line,
                format!("{key} {}: cannot listen: {error}", listen.value),
            )
        })?;
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "{key} proxy listening");
        }
        bound.push(listener);
    }
    Ok(bound)
}

/// Accepts clients on `listener` and serves each with `serve` in a task of its own, within
/// the shared `slots`, until this is aborted, which ends every client's task too.
async fn serve_clients<L, F, Fut>(
    mut listener: L,
    proxy: &'static str,
    slots: Arc<ClientSlots>,
    serve: F,
) where
    L: Listener,
    F: Fn(Client<L::Stream>) -> Fut,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    let mut clients = JoinSet::new();
    loop {
        // Finished clients' results are collected as new ones come.
        while clients.try_join_next().is_some() {}
        let Ok(permit) = slots.total.clone().acquire_owned().await else {
            return;
        };
        let client = match listener.accept().await {
            None => return,
            Some(Ok(client)) => client,
            Some(Err(error)) => {
                tracing::debug!(%error, "{proxy} proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = client.peer;
        let Some(address_slot) = slots.admit(peer.ip()) else {
            tracing::debug!(%peer, "{proxy} proxy: too many connections from this address");
            continue;
        };
        let served = serve(client);
        clients.spawn(async move {
            if let Err(error) = served.await {
                tracing::debug!(%peer, %error, "{proxy} proxy client");
            }
            drop((permit, address_slot));
        });
    }
}

enum CredentialsFileError {
    Read(String),
    Line(tundns_proxy::CredentialsError),
}

fn read_credentials(file: &Path) -> Result<Credentials, CredentialsFileError> {
    let text = std::fs::read_to_string(file)
        .map_err(|error| CredentialsFileError::Read(error.to_string()))?;
    Credentials::parse(&text).map_err(CredentialsFileError::Line)
}

/// The proxies' userspace stacks and UDP relay: the stack towards the tunnel, with its
/// two packet paths (the tap that takes its packets from the tunnel's writer, and the
/// channel gotatun reads its packets from, given to WireGuard with
/// [`ProxyStack::packet_paths`]), and the listeners on the virtual IPs, if any.
pub struct ProxyStack {
    pub stack: UserStack,
    pub udp: Arc<UdpRelay>,
    paths: Option<(Arc<dyn InboundTap>, IpChannelRx)>,
    on_virtual_ips: Option<VirtualListeners>,
}

/// The listeners on the virtual IPs, and what they need of the TUN side.
pub struct TunSide {
    pub addresses: Vec<SocketAddr>,
    pub writer: TunWriter,
    pub local: Arc<LocalAddresses>,
}

impl ProxyStack {
    /// A stack on the interface addresses, its packets at most the TUN's MTU, and one for
    /// the listeners on the virtual IPs, answering through the TUN, if there are any.
    pub fn new(config: &Config, mtu: MtuWatcher, tun: Option<TunSide>) -> Self {
        let local_ips: Vec<IpAddr> = config.interface.addresses.iter().map(IpNet::addr).collect();
        let (outbound, packets) = ip_channel(OUTBOUND_QUEUE, mtu);
        let (inbound_tx, inbound) = UserStack::inbound_channel();
        let ports = Arc::new(PortSet::default());
        let udp = Arc::new(UdpRelay::new(
            local_ips.clone(),
            config.interface.mtu,
            ports.clone(),
            outbound.clone(),
        ));
        let stack = UserStack::spawn(
            "the proxies' userspace stack",
            local_ips,
            ports,
            proxy_limits(config.interface.mtu),
            StackIo {
                inbound,
                outbound: into_tunnel(outbound),
            },
        );
        let tap = stack.tap(inbound_tx, udp.clone());
        let on_virtual_ips = tun.filter(|tun| !tun.addresses.is_empty()).map(|tun| {
            VirtualListeners::new(&tun.addresses, config.interface.mtu, tun.writer, tun.local)
        });
        Self {
            stack,
            udp,
            paths: Some((tap, packets)),
            on_virtual_ips,
        }
    }

    /// `host` with the ports of the listeners on the virtual IPs opened.
    pub fn open_virtual_ports(&self, host: VirtualHost) -> VirtualHost {
        match &self.on_virtual_ips {
            Some(listeners) => listeners.open_ports(host),
            None => host,
        }
    }

    /// The stack as a way into the tunnel for the resolver's `ThroughTunnel` groups.
    pub fn tunnel(&self) -> Tunnel {
        Tunnel::new(Arc::new(dial::StackDial::new(
            self.stack.clone(),
            self.udp.clone(),
        )))
    }

    /// The tap and the packet channel, for WireGuard's start; taken once.
    pub fn packet_paths(&mut self) -> Option<(Arc<dyn InboundTap>, IpChannelRx)> {
        self.paths.take()
    }
}

/// The proxies' tasks, aborted when this is dropped, and the stack of their listeners on
/// the virtual IPs, which ends with it.
pub struct RunningProxies {
    tasks: Vec<JoinHandle<()>>,
    _on_virtual_ips: Option<VirtualListeners>,
}

impl Drop for RunningProxies {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_holds_at_most_its_share_of_the_client_slots() {
        let slots = Arc::new(ClientSlots::default());
        let (one, other): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "::1".parse().unwrap());
        let mut held: Vec<AddressSlot> = (0..MAX_CLIENTS_PER_ADDRESS)
            .map(|_| slots.admit(one).expect("below the bound"))
            .collect();
        assert!(slots.admit(one).is_none());
        assert!(
            slots.admit(other).is_some(),
            "another address is not held back"
        );
        held.pop();
        assert!(
            slots.admit(one).is_some(),
            "a closed connection frees its slot"
        );
        drop(held);
        assert!(slots.lock().get(&one).is_none_or(|count| *count <= 1));
    }
}

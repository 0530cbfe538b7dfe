//! The proxies: SOCKS5 on host addresses, whose connections leave through WireGuard from
//! a userspace stack on the interface address ([`tunnel_stack`]), never through the
//! host's routing table, and whose names tundns's own resolver answers ([`lookup`]).
//!
//! `tunnel` claims the listeners and reads the credentials before it changes anything
//! ([`ClaimedProxies::claim`]), builds the stack's packet paths before WireGuard starts
//! ([`ProxyStack::new`]), and serves once the tunnel is up ([`ClaimedProxies::serve`]).

pub mod http;
pub mod lookup;
pub mod open;
pub mod ports;
pub mod socks5;
pub mod tunnel_stack;
pub mod udp_relay;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gotatun::tun::MtuWatcher;
use gotatun::tun::channel::{IpChannelRx, ip_channel};
use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tundns_config::{Config, ConfigError, Spanned};
use tundns_filter::InboundTap;
use tundns_proxy::Credentials;

use crate::dns::proxy::DnsProxy;
use http::HttpProxy;
use open::Opener;
use ports::PortSet;
use socks5::Socks5;
use tunnel_stack::{StackIo, TunnelStack, proxy_limits};
use udp_relay::UdpRelay;

/// Packets of the stack waiting for WireGuard.
const OUTBOUND_QUEUE: usize = 4096;

/// Client connections served at once by all the proxies together; more wait for a slot.
const MAX_CLIENTS: usize = 2048;
/// Client connections one address may hold at once (a browser opens many); more are
/// closed at once, so that one client cannot take every slot.
const MAX_CLIENTS_PER_ADDRESS: usize = 512;

/// The `[Proxy]` listeners, bound, and the credentials, read: what can fail on the
/// config's account, done before tundns changes anything.
pub struct ClaimedProxies {
    socks5: Vec<TcpListener>,
    http: Vec<TcpListener>,
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
        Ok(Some(Self {
            socks5: bind_all("SOCKS5", &proxy.socks5, path).await?,
            http: bind_all("HTTP", &proxy.http, path).await?,
            credentials,
        }))
    }

    /// Serves every listener through `stack`; the tasks end when the handle is dropped.
    pub fn serve(
        self,
        config: &Config,
        stack: &ProxyStack,
        resolver: Option<Arc<DnsProxy>>,
    ) -> RunningProxies {
        let allowed_ips: Vec<IpNet> = config
            .peers
            .iter()
            .flat_map(|peer| peer.allowed_ips.iter().copied())
            .collect();
        let opener = Arc::new(Opener {
            stack: stack.stack.clone(),
            udp: stack.udp.clone(),
            resolver,
            allowed_ips,
            credentials: self.credentials,
        });
        let socks5 = Arc::new(Socks5 {
            opener: opener.clone(),
        });
        let http = Arc::new(HttpProxy { opener });
        let slots = Arc::new(ClientSlots::default());
        let mut tasks = Vec::new();
        for listener in self.socks5 {
            let socks5 = socks5.clone();
            tasks.push(tokio::spawn(serve_clients(
                listener,
                "SOCKS5",
                slots.clone(),
                move |client| socks5.clone().serve_client(client),
            )));
        }
        for listener in self.http {
            let http = http.clone();
            tasks.push(tokio::spawn(serve_clients(
                listener,
                "HTTP",
                slots.clone(),
                move |client| http.clone().serve_client(client),
            )));
        }
        RunningProxies(tasks)
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
    addresses: &[Spanned<SocketAddr>],
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
        bound.push(listener);
    }
    Ok(bound)
}

/// Accepts clients on `listener` and serves each with `serve` in a task of its own, within
/// the shared `slots`, until this is aborted, which ends every client's task too.
async fn serve_clients<F, Fut>(
    listener: TcpListener,
    proxy: &'static str,
    slots: Arc<ClientSlots>,
    serve: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "{proxy} proxy listening");
    }
    let mut clients = JoinSet::new();
    loop {
        // Finished clients' results are collected as new ones come.
        while clients.try_join_next().is_some() {}
        let Ok(permit) = slots.total.clone().acquire_owned().await else {
            return;
        };
        let (client, peer): (TcpStream, SocketAddr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "{proxy} proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(address_slot) = slots.admit(peer.ip()) else {
            tracing::debug!(%peer, "{proxy} proxy: too many connections from this address");
            continue;
        };
        let _ = client.set_nodelay(true);
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

/// The proxies' userspace stack and UDP relay, and their two packet paths: the tap that
/// takes their packets from the tunnel's writer, and the channel gotatun reads their
/// packets from (given to WireGuard with [`ProxyStack::packet_paths`]).
pub struct ProxyStack {
    pub stack: TunnelStack,
    pub udp: Arc<UdpRelay>,
    paths: Option<(Arc<dyn InboundTap>, IpChannelRx)>,
}

impl ProxyStack {
    /// A stack on the interface addresses, its packets at most the TUN's MTU.
    pub fn new(config: &Config, mtu: MtuWatcher) -> Self {
        let local_ips: Vec<IpAddr> = config.interface.addresses.iter().map(IpNet::addr).collect();
        let (outbound, packets) = ip_channel(OUTBOUND_QUEUE, mtu);
        let (inbound_tx, inbound) = TunnelStack::inbound_channel();
        let ports = Arc::new(PortSet::default());
        let udp = Arc::new(UdpRelay::new(
            local_ips.clone(),
            config.interface.mtu,
            ports.clone(),
            outbound.clone(),
        ));
        let stack = TunnelStack::spawn(
            local_ips,
            ports,
            proxy_limits(config.interface.mtu),
            StackIo { inbound, outbound },
        );
        let tap = stack.tap(inbound_tx, udp.clone());
        Self {
            stack,
            udp,
            paths: Some((tap, packets)),
        }
    }

    /// The tap and the packet channel, for WireGuard's start; taken once.
    pub fn packet_paths(&mut self) -> Option<(Arc<dyn InboundTap>, IpChannelRx)> {
        self.paths.take()
    }
}

/// The proxies' tasks, aborted when this is dropped.
pub struct RunningProxies(Vec<JoinHandle<()>>);

impl Drop for RunningProxies {
    fn drop(&mut self) {
        for task in &self.0 {
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

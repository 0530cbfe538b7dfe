//! The proxies: SOCKS5 on host addresses, whose connections leave through WireGuard from
//! a userspace stack on the interface address ([`tunnel_stack`]), never through the
//! host's routing table, and whose names tundns's own resolver answers ([`lookup`]).
//!
//! `tunnel` claims the listeners and reads the credentials before it changes anything
//! ([`ClaimedProxies::claim`]), builds the stack's packet paths before WireGuard starts
//! ([`ProxyStack::new`]), and serves once the tunnel is up ([`ClaimedProxies::serve`]).

pub mod lookup;
pub mod socks5;
pub mod tunnel_stack;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use gotatun::tun::MtuWatcher;
use gotatun::tun::channel::{IpChannelRx, ip_channel};
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tundns_config::{Config, ConfigError};
use tundns_filter::InboundTap;
use tundns_proxy::Credentials;

use crate::dns::proxy::DnsProxy;
use socks5::Socks5;
use tunnel_stack::{StackIo, TunnelStack, proxy_limits};

/// Packets of the stack waiting for WireGuard.
const OUTBOUND_QUEUE: usize = 4096;

/// The `[Proxy]` listeners, bound, and the credentials, read: what can fail on the
/// config's account, done before tundns changes anything.
pub struct ClaimedProxies {
    socks5: Vec<TcpListener>,
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
        let mut socks5 = Vec::with_capacity(proxy.socks5.len());
        for listen in &proxy.socks5 {
            let listener = TcpListener::bind(listen.value).await.map_err(|error| {
                ConfigError::at(
                    path,
                    listen.line,
                    format!("SOCKS5 {}: cannot listen: {error}", listen.value),
                )
            })?;
            socks5.push(listener);
        }
        Ok(Some(Self {
            socks5,
            credentials,
        }))
    }

    /// Serves every listener through `stack`; the tasks end when the handle is dropped.
    pub fn serve(
        self,
        config: &Config,
        stack: TunnelStack,
        resolver: Option<Arc<DnsProxy>>,
    ) -> RunningProxies {
        let allowed_ips: Vec<IpNet> = config
            .peers
            .iter()
            .flat_map(|peer| peer.allowed_ips.iter().copied())
            .collect();
        let server = Arc::new(Socks5 {
            stack,
            resolver,
            allowed_ips,
            credentials: self.credentials,
        });
        let tasks = self
            .socks5
            .into_iter()
            .map(|listener| {
                if let Ok(address) = listener.local_addr() {
                    tracing::info!(%address, "SOCKS5 proxy listening");
                }
                tokio::spawn(server.clone().serve(listener))
            })
            .collect();
        RunningProxies(tasks)
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

/// The proxies' userspace stack and its two packet paths: the tap that takes its packets
/// from the tunnel's writer, and the channel gotatun reads its packets from.
pub struct ProxyStack {
    pub stack: TunnelStack,
    pub tap: Arc<dyn InboundTap>,
    pub packets: IpChannelRx,
}

impl ProxyStack {
    /// A stack on the interface addresses, its packets at most the TUN's MTU.
    pub fn new(config: &Config, mtu: MtuWatcher) -> Self {
        let local_ips: Vec<IpAddr> = config.interface.addresses.iter().map(IpNet::addr).collect();
        let (outbound, packets) = ip_channel(OUTBOUND_QUEUE, mtu);
        let (inbound_tx, inbound) = TunnelStack::inbound_channel();
        let stack = TunnelStack::spawn(
            local_ips,
            proxy_limits(config.interface.mtu),
            StackIo { inbound, outbound },
        );
        let tap = stack.tap(inbound_tx);
        Self {
            stack,
            tap,
            packets,
        }
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

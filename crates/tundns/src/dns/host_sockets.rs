//! The DNS proxy on host sockets (`[DNSProxy] Address = 127.0.0.1:5353`): UDP and TCP,
//! through the same [`DnsProxy`] as the virtual IPs. It is how the rootless mode, which has
//! no TUN, serves DNS, and a port on loopback for whoever prefers one to a virtual IP.
//!
//! The sockets are bound before tundns changes anything ([`ClaimedDnsSockets::bind`]),
//! so an address in use is a config error on its line.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::dns::counters::Transport;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tundns_config::{Config, ConfigError};
use tundns_dns::MAX_MESSAGE_LEN;
use tundns_dns::tcp::{FrameDecoder, append_framed};

use crate::dns::proxy::{DnsProxy, Verdict};

/// Largest query accepted over TCP, as on the virtual IPs.
const MAX_TCP_QUERY: usize = 16 * 1024;
/// Queries one TCP connection may have waiting on upstreams at once; the connection is
/// read no further until one is answered.
const MAX_PIPELINED: usize = 64;

/// The host sockets, bound.
pub struct ClaimedDnsSockets {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
}

impl ClaimedDnsSockets {
    /// Binds UDP and TCP on every `[DNSProxy] Address` host address; an address that
    /// cannot be bound is an error on its line.
    pub async fn bind(config: &Config, path: &Path) -> Result<Self, ConfigError> {
        let mut claimed = Self {
            udp: Vec::new(),
            tcp: Vec::new(),
        };
        if !config.dns_proxy.enabled {
            return Ok(claimed);
        }
        for listen in &config.dns_proxy.listen {
            let error = |error: io::Error| {
                ConfigError::at(
                    path,
                    listen.line,
                    format!("Address {}: cannot listen: {error}", listen.value),
                )
            };
            claimed
                .udp
                .push(UdpSocket::bind(listen.value).await.map_err(error)?);
            claimed
                .tcp
                .push(TcpListener::bind(listen.value).await.map_err(error)?);
        }
        Ok(claimed)
    }

    /// Serves every socket through `proxy`; the tasks end when the handle is dropped.
    pub fn serve(self, proxy: &Arc<DnsProxy>, config: &Config) -> RunningDnsSockets {
        let mut tasks = Vec::new();
        for socket in self.udp {
            if let Ok(address) = socket.local_addr() {
                tracing::info!(%address, "DNS proxy listening (UDP)");
            }
            tasks.push(crate::supervise::spawn_essential(
                "the DNS proxy on a host address (UDP)",
                serve_udp(Arc::new(socket), proxy.clone()),
            ));
        }
        let connections = Arc::new(Semaphore::new(config.dns_proxy.max_tcp_connections));
        for listener in self.tcp {
            if let Ok(address) = listener.local_addr() {
                tracing::info!(%address, "DNS proxy listening (TCP)");
            }
            tasks.push(crate::supervise::spawn_essential(
                "the DNS proxy on a host address (TCP)",
                serve_tcp(
                    listener,
                    proxy.clone(),
                    connections.clone(),
                    config.dns_proxy.tcp_idle_timeout,
                ),
            ));
        }
        RunningDnsSockets(tasks)
    }
}

/// The host sockets' tasks, aborted when this is dropped.
pub struct RunningDnsSockets(Vec<JoinHandle<()>>);

impl Drop for RunningDnsSockets {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, proxy: Arc<DnsProxy>) {
    let mut query = vec![0u8; MAX_MESSAGE_LEN];
    let mut answer = vec![0u8; MAX_MESSAGE_LEN];
    loop {
        // A failed receive (an ICMP error from an earlier answer) costs nothing.
        let Ok((len, client)) = socket.recv_from(&mut query).await else {
            continue;
        };
        match proxy.accept_from(Some(client), &query[..len], Transport::Udp, &mut answer) {
            Verdict::Drop => {}
            Verdict::Answered(len) => {
                let _ = socket.send_to(&answer[..len], client).await;
            }
            Verdict::Forward(forward) => {
                let socket = socket.clone();
                tokio::spawn(async move {
                    let answer = forward.resolve().await;
                    if !answer.is_empty() {
                        let _ = socket.send_to(&answer, client).await;
                    }
                });
            }
        }
    }
}

async fn serve_tcp(
    listener: TcpListener,
    proxy: Arc<DnsProxy>,
    connections: Arc<Semaphore>,
    idle_timeout: Duration,
) {
    let mut clients = JoinSet::new();
    loop {
        while clients.try_join_next().is_some() {}
        let Ok(permit) = connections.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, client)) = listener.accept().await else {
            continue;
        };
        let proxy = proxy.clone();
        clients.spawn(async move {
            if let Err(error) = serve_connection(stream, client, &proxy, idle_timeout).await {
                tracing::debug!(%client, %error, "DNS over TCP");
            }
            drop(permit);
        });
    }
}

/// One client connection: queries read as they come, answered in completion order (RFC
/// 7766 §6.2.1.1), until the client finishes or stays idle for `idle_timeout`.
async fn serve_connection(
    mut stream: TcpStream,
    client: SocketAddr,
    proxy: &Arc<DnsProxy>,
    idle_timeout: Duration,
) -> io::Result<()> {
    let mut decoder = FrameDecoder::new(MAX_TCP_QUERY);
    let mut chunk = vec![0u8; 4096];
    let mut answer = vec![0u8; MAX_MESSAGE_LEN];
    let mut waiting = FuturesUnordered::new();
    let mut finished = false;
    loop {
        if finished && waiting.is_empty() {
            return Ok(());
        }
        let reading = !finished && waiting.len() < MAX_PIPELINED;
        tokio::select! {
            read = tokio::time::timeout(idle_timeout, stream.read(&mut chunk)), if reading => {
                let read = match read {
                    Err(_) if waiting.is_empty() => return Ok(()),
                    Err(_) | Ok(Ok(0)) => {
                        finished = true;
                        continue;
                    }
                    Ok(Ok(read)) => read,
                    Ok(Err(error)) => return Err(error),
                };
                let mut offered = &chunk[..read];
                while !offered.is_empty() {
                    let taken = decoder.push(offered);
                    offered = &offered[taken..];
                    while let Some(query) = decoder.next_message().map_err(io::Error::other)? {
                        match proxy.accept_from(Some(client), query, Transport::Tcp, &mut answer) {
                            Verdict::Drop => {}
                            Verdict::Answered(len) => {
                                write_framed(&mut stream, &answer[..len], idle_timeout).await?;
                            }
                            Verdict::Forward(forward) => waiting.push(forward.resolve()),
                        }
                        // A burst of queries waits for an answer before the next is taken.
                        if waiting.len() >= MAX_PIPELINED
                            && let Some(resolved) = waiting.next().await
                        {
                            write_framed(&mut stream, &resolved, idle_timeout).await?;
                        }
                    }
                }
            }
            Some(resolved) = waiting.next(), if !waiting.is_empty() => {
                write_framed(&mut stream, &resolved, idle_timeout).await?;
            }
        }
    }
}

/// Writes one answer with its length; a client that does not read it within `timeout`
/// loses the connection rather than holding its slot.
async fn write_framed(stream: &mut TcpStream, answer: &[u8], timeout: Duration) -> io::Result<()> {
    let mut framed = Vec::with_capacity(2 + answer.len());
    if !append_framed(&mut framed, answer) {
        return Ok(());
    }
    tokio::time::timeout(timeout, stream.write_all(&framed))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

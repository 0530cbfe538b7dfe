//! The SOCKS5 server on host addresses: RFC 1928's CONNECT through the tunnel, with
//! RFC 1929's username and password when credentials are configured.
//!
//! The protocol is `tundns-proxy`'s; this is its driver: a task per client that reads
//! the handshake within a deadline, resolves names through tundns's resolver, opens the
//! connection through the [`TunnelStack`] and relays bytes both ways.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tundns_netstack::ConnectFailure;
use tundns_proxy::socks5::{self, Command, Header, Reply};
use tundns_proxy::{Credentials, Destination};

use super::lookup::{self, LookupError};
use super::tunnel_stack::{OpenError, TunnelStack, TunnelStream};
use crate::dns::proxy::DnsProxy;

/// How long a client may take to greet, authenticate and ask.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients served at once; more wait for a slot.
const MAX_CLIENTS: usize = 2048;

/// What every SOCKS5 client's task shares.
pub struct Socks5 {
    pub stack: TunnelStack,
    /// Names are resolved here; without the DNS proxy, only addresses can be asked for.
    pub resolver: Option<Arc<DnsProxy>>,
    /// Every peer's AllowedIPs: a destination outside all of them is unreachable.
    pub allowed_ips: Vec<IpNet>,
    pub credentials: Option<Credentials>,
}

impl Socks5 {
    /// Serves `listener` until the task is aborted, which ends every client's task too.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
        let mut clients = JoinSet::new();
        loop {
            // Finished clients' results are collected as new ones come.
            while clients.try_join_next().is_some() {}
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (client, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(%error, "SOCKS5 accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let server = self.clone();
            clients.spawn(async move {
                if let Err(error) = server.serve_client(client).await {
                    tracing::debug!(%peer, %error, "SOCKS5 client");
                }
                drop(permit);
            });
        }
    }

    async fn serve_client(&self, mut client: TcpStream) -> io::Result<()> {
        client.set_nodelay(true)?;
        let request =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(&mut client)).await {
                Ok(result) => result?,
                Err(_) => return Err(io::ErrorKind::TimedOut.into()),
            };
        let Some((request, early_data)) = request else {
            return Ok(());
        };
        if request.command != Command::Connect {
            return refuse(&mut client, Reply::CommandNotSupported).await;
        }
        let mut tunnel = match self.open(&request.destination).await {
            Ok(stream) => stream,
            Err(reply) => return refuse(&mut client, reply).await,
        };
        let unspecified = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        client
            .write_all(socks5::reply(Reply::Succeeded, unspecified).as_bytes())
            .await?;
        // What the client sent right behind its request (a TLS ClientHello, say).
        tunnel.write_all(&early_data).await?;
        tokio::io::copy_bidirectional(&mut client, &mut tunnel).await?;
        Ok(())
    }

    /// Greeting, authentication and request, and the bytes that came behind the request;
    /// `None` once the client was told no.
    async fn handshake(
        &self,
        client: &mut TcpStream,
    ) -> io::Result<Option<(socks5::Request, Vec<u8>)>> {
        let mut buffer = Vec::with_capacity(512);
        let greeting = read_message(client, &mut buffer, |bytes| {
            socks5::parse_greeting(bytes).map_err(|_| Reply::GeneralFailure)
        })
        .await?;
        let Ok(greeting) = greeting else {
            return Ok(None);
        };
        let method = greeting.select(self.credentials.is_some());
        client.write_all(&socks5::method_selection(method)).await?;
        match method {
            None => return Ok(None),
            Some(socks5::Method::UsernamePassword) => {
                let credentials = self
                    .credentials
                    .as_ref()
                    .expect("selected with credentials");
                let accepted = read_message(client, &mut buffer, |bytes| {
                    socks5::parse_user_password(bytes)
                        .map(|parsed| {
                            parsed.map(|(login, len)| {
                                (credentials.verify(login.username, login.password), len)
                            })
                        })
                        .map_err(|_| Reply::GeneralFailure)
                })
                .await?;
                let accepted = accepted.unwrap_or(false);
                client
                    .write_all(&socks5::user_password_status(accepted))
                    .await?;
                if !accepted {
                    return Ok(None);
                }
            }
            Some(socks5::Method::NoAuthentication) => {}
        }
        let request = read_message(client, &mut buffer, |bytes| {
            socks5::parse_request(bytes).map_err(|error| error.reply)
        })
        .await?;
        match request {
            Ok(request) => Ok(Some((request, buffer))),
            Err(reply) => refuse(client, reply).await.map(|()| None),
        }
    }

    /// A connection through the tunnel to `destination`, or the reply that says why not.
    async fn open(&self, destination: &Destination) -> Result<TunnelStream, Reply> {
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
        let mut reply = Reply::NetworkUnreachable;
        for candidate in candidates {
            if !self
                .allowed_ips
                .iter()
                .any(|net| net.contains(&candidate.ip()))
            {
                continue;
            }
            match self.stack.connect(candidate).await {
                Ok(stream) => return Ok(stream),
                Err(error) => reply = reply_for(error),
            }
        }
        Err(reply)
    }
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

async fn refuse(client: &mut TcpStream, reply: Reply) -> io::Result<()> {
    let unspecified = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let header: Header = socks5::reply(reply, unspecified);
    client.write_all(header.as_bytes()).await?;
    client.shutdown().await
}

/// Reads until `parse` finds a whole message at the front of `buffer`, which it then
/// removes; `Err(reply)` when the message is refused.
async fn read_message<T>(
    client: &mut TcpStream,
    buffer: &mut Vec<u8>,
    parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, Reply>,
) -> io::Result<Result<T, Reply>> {
    loop {
        match parse(buffer) {
            Ok(Some((message, len))) => {
                buffer.drain(..len);
                return Ok(Ok(message));
            }
            Ok(None) => {}
            Err(reply) => return Ok(Err(reply)),
        }
        if buffer.len() >= socks5::MAX_HEADER_LEN * 2 {
            return Ok(Err(Reply::GeneralFailure));
        }
        let mut chunk = [0u8; 512];
        let read = client.read(&mut chunk).await?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

//! The SOCKS5 server: RFC 1928's CONNECT and UDP ASSOCIATE through the tunnel, with
//! RFC 1929's username and password when credentials are configured, on host addresses
//! and on the virtual IPs alike.
//!
//! The protocol is `tundns-proxy`'s; this is its driver: a task per client that reads
//! the handshake within a deadline, opens the connection through the tunnel with the
//! [`Opener`] and relays bytes both ways.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tundns_proxy::Destination;
use tundns_proxy::socks5::{self, Command, Header, Reply};

use super::on_virtual_ip::{RelayPorts, RelaySocket};
use super::open::Opener;
use super::stack::relay;
use super::udp_relay::SendError;
use super::{Client, ClientStream};

/// How long a client may take to greet, authenticate and ask.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The bound address of a reply that has none to report: a CONNECT's local endpoint
/// means nothing to a client outside the tunnel, and a failure has none.
const UNSPECIFIED: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
/// A UDP association with no datagram either way for this long ends.
const ASSOCIATION_IDLE: Duration = Duration::from_secs(300);
/// The largest datagram a client may send to the relay (a UDP payload over IPv6).
const MAX_DATAGRAM: usize = 65536;

/// What every SOCKS5 client's task of one kind of listener shares.
pub struct Socks5 {
    pub opener: Arc<Opener>,
    /// Where associations bind their relay: the virtual IPs' relay ports for listeners
    /// there, a host socket otherwise.
    pub virtual_relays: Option<Arc<RelayPorts>>,
}

impl Socks5 {
    /// Serves one client: the handshake, then a CONNECT's bytes both ways until either
    /// side ends, or a UDP association for as long as the client's connection lasts.
    pub async fn serve_client<S: ClientStream>(
        self: Arc<Self>,
        client: Client<S>,
    ) -> io::Result<()> {
        let Client {
            stream: mut client,
            peer,
            local,
        } = client;
        let request =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(&mut client)).await {
                Ok(result) => result?,
                Err(_) => return Err(io::ErrorKind::TimedOut.into()),
            };
        let Some((request, early_data)) = request else {
            return Ok(());
        };
        match request.command {
            Command::Connect => {}
            Command::UdpAssociate => {
                return self
                    .associate(client, peer.ip(), local.ip(), &request.destination)
                    .await;
            }
            Command::Bind => return refuse(&mut client, Reply::CommandNotSupported).await,
        }
        let mut tunnel = match self.opener.open(&request.destination).await {
            Ok(stream) => stream,
            Err(reply) => return refuse(&mut client, reply).await,
        };
        client
            .write_all(socks5::reply(Reply::Succeeded, UNSPECIFIED).as_bytes())
            .await?;
        // What the client sent right behind its request (a TLS ClientHello, say).
        tunnel.write_all(&early_data).await?;
        relay(&mut client, &mut tunnel).await?;
        Ok(())
    }

    /// UDP ASSOCIATE (RFC 1928 §7): a relay socket on the address the client reached,
    /// taking datagrams from the client's address only (the port its request named, or the
    /// one its first datagram came from), for as long as the client's TCP connection stays
    /// open and datagrams keep moving.
    async fn associate(
        &self,
        mut client: impl ClientStream,
        client_ip: IpAddr,
        local_ip: IpAddr,
        expected: &Destination,
    ) -> io::Result<()> {
        let client_ip = client_ip.to_canonical();
        let relay = match &self.virtual_relays {
            Some(relays) => relays.bind(local_ip).map(Relay::Virtual),
            None => UdpSocket::bind(SocketAddr::new(local_ip.to_canonical(), 0))
                .await
                .ok()
                .map(Relay::Host),
        };
        let (Some(mut association), Some(mut relay)) = (self.opener.udp.associate(), relay) else {
            return refuse(&mut client, Reply::GeneralFailure).await;
        };
        client
            .write_all(socks5::reply(Reply::Succeeded, relay.local_addr()?).as_bytes())
            .await?;
        let mut client_udp = match expected {
            Destination::Addr(addr) if addr.port() != 0 => {
                Some(SocketAddr::new(client_ip, addr.port()))
            }
            _ => None,
        };
        let mut datagram = vec![0u8; MAX_DATAGRAM];
        let mut control = [0u8; 64];
        let idle = tokio::time::sleep(ASSOCIATION_IDLE);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                // The end of the control connection ends the association.
                read = client.read(&mut control) => match read {
                    Ok(0) | Err(_) => return Ok(()),
                    Ok(_) => continue,
                },
                () = &mut idle => return Ok(()),
                received = relay.recv_from(&mut datagram) => {
                    // A failed receive costs that datagram, never the association.
                    let Ok((len, from)) = received else { continue };
                    let from = SocketAddr::new(from.ip().to_canonical(), from.port());
                    if from.ip() != client_ip || client_udp.is_some_and(|known| known != from) {
                        continue;
                    }
                    let Ok(parsed) = socks5::parse_udp_datagram(&datagram[..len]) else {
                        continue;
                    };
                    // Names and AllowedIPs as for CONNECT; a datagram that cannot go is
                    // dropped, as UDP may drop it.
                    let Ok(reachable) = self.opener.reachable(&parsed.destination).await else {
                        continue;
                    };
                    client_udp = Some(from);
                    idle.as_mut().reset(tokio::time::Instant::now() + ASSOCIATION_IDLE);
                    // The first address of a family the tunnel has an address of.
                    for to in reachable {
                        if association.send(to, parsed.payload) != Err(SendError::NoLocalAddress) {
                            break;
                        }
                    }
                }
                inbound = association.recv() => {
                    let Some(inbound) = inbound else { return Ok(()) };
                    let Some(to) = client_udp else { continue };
                    idle.as_mut().reset(tokio::time::Instant::now() + ASSOCIATION_IDLE);
                    let mut reply = socks5::write_udp_header(inbound.from).as_bytes().to_vec();
                    reply.extend_from_slice(&inbound.payload);
                    relay.send_to(&reply, to).await;
                }
            }
        }
    }

    /// Greeting, authentication and request, and the bytes that came behind the request;
    /// `None` once the client was told no.
    async fn handshake(
        &self,
        client: &mut impl ClientStream,
    ) -> io::Result<Option<(socks5::Request, Vec<u8>)>> {
        let mut buffer = Vec::with_capacity(512);
        let greeting = read_message(client, &mut buffer, |bytes| {
            socks5::parse_greeting(bytes).map_err(|_| Reply::GeneralFailure)
        })
        .await?;
        let Ok(greeting) = greeting else {
            return Ok(None);
        };
        let method = greeting.select(self.opener.credentials.is_some());
        client.write_all(&socks5::method_selection(method)).await?;
        match method {
            None => return Ok(None),
            Some(socks5::Method::UsernamePassword) => {
                let credentials = self
                    .opener
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
}

async fn refuse(client: &mut impl ClientStream, reply: Reply) -> io::Result<()> {
    let header: Header = socks5::reply(reply, UNSPECIFIED);
    client.write_all(header.as_bytes()).await?;
    client.shutdown().await
}

/// Reads until `parse` finds a whole message at the front of `buffer`, which it then
/// removes; `Err(reply)` when the message is refused.
async fn read_message<T>(
    client: &mut impl ClientStream,
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

/// An association's relay socket: a host socket, or a port on a virtual IP.
enum Relay {
    Host(UdpSocket),
    Virtual(RelaySocket),
}

impl Relay {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Self::Host(socket) => socket.local_addr(),
            Self::Virtual(socket) => Ok(socket.local_addr()),
        }
    }

    async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        match self {
            Self::Host(socket) => socket.recv_from(buf).await,
            Self::Virtual(socket) => socket.recv_from(buf).await,
        }
    }

    /// Sends a datagram; one that fails is lost, as UDP may lose it.
    async fn send_to(&self, payload: &[u8], to: SocketAddr) {
        match self {
            Self::Host(socket) => {
                let _ = socket.send_to(payload, to).await;
            }
            Self::Virtual(socket) => socket.send_to(payload, to),
        }
    }
}

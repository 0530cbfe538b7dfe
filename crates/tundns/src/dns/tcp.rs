//! DNS over TCP on the virtual IPs (RFC 7766), served by the userspace netstack.
//!
//! The TUN reader hands TCP segments to one task that owns the [`TcpStack`]. That task
//! splits each connection's stream into queries, forwards them through the shared
//! [`DnsProxy`] (several at once per connection: answers go back in completion order, as
//! RFC 7766 §6.2.1.1 allows), and writes the stack's segments back into the TUN.
//!
//! A client cannot hold connections by trickling bytes (slowloris): only a whole query
//! or a whole answer restarts a connection's idle timer. One client address holds at most
//! a quarter of the connections, and one connection at most
//! [`MAX_IN_FLIGHT_PER_CONNECTION`] queries; beyond that its bytes wait in the stack and
//! its TCP window closes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tundns_dns::tcp::{FrameDecoder, append_framed};
use tundns_filter::{Service, TunWriter};
use tundns_netstack::{ConnectionId, Event, IdleReset, Limits, TcpStack};

use crate::dns::counters::Transport;
use crate::dns::proxy::{DnsProxy, Verdict};
use tundns_dns::MAX_MESSAGE_LEN;

/// Largest query accepted over TCP. Real queries are a few hundred bytes; the bound keeps
/// each connection's buffer small.
const MAX_QUERY: usize = 16 * 1024;
/// Segments queued from the TUN reader to the stack; beyond this TCP retransmits.
const SEGMENT_QUEUE: usize = 4096;
/// Answers written but not yet taken by the stack, per connection, before it is closed
/// as a client that does not read.
const MAX_PENDING_ANSWERS: usize = 256 * 1024;
/// Queries one connection may have upstream at once; the rest wait unread.
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 64;
/// The share of the connections one client address may hold: a quarter.
const CONNECTIONS_PER_SOURCE_DIVISOR: usize = 4;
/// How long to sleep when smoltcp has no timer running.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// The TCP front end of the DNS proxy, as a service for TCP port 53.
pub struct TcpDns {
    segments: mpsc::Sender<Vec<u8>>,
}

impl TcpDns {
    /// Starts the netstack task listening on port 53 of every address.
    pub fn spawn(
        proxy: Arc<DnsProxy>,
        addresses: &[IpAddr],
        max_connections: usize,
        idle_timeout: Duration,
        mtu: u16,
        tun: TunWriter,
    ) -> Self {
        let mut stack = TcpStack::new(Limits {
            max_connections,
            idle_timeout,
            idle_reset: IdleReset::Explicit,
            mtu: usize::from(mtu),
            ..Limits::default()
        });
        for ip in addresses {
            if let Err(error) = stack.listen(SocketAddr::new(*ip, 53)) {
                tracing::warn!(%ip, %error, "DNS over TCP not available on this address");
            }
        }
        let (segments, inbox) = mpsc::channel(SEGMENT_QUEUE);
        let per_source = (max_connections / CONNECTIONS_PER_SOURCE_DIVISOR).max(1);
        crate::supervise::spawn_essential(
            "DNS over TCP on the virtual IPs",
            StackTask::new(stack, proxy, tun, per_source).run(inbox),
        );
        Self { segments }
    }
}

impl Service for TcpDns {
    fn handle(&self, packet: &[u8], _tun: &TunWriter) {
        // A full queue drops the segment; the client's TCP retransmits it.
        let _ = self.segments.try_send(packet.to_vec());
    }

    fn name(&self) -> &str {
        "dns-tcp"
    }
}

/// One client connection's DNS state.
struct Connection {
    decoder: FrameDecoder,
    /// Framed answers the stack has not taken yet.
    pending: Vec<u8>,
    in_flight: usize,
    peer_finished: bool,
    /// The client, for the query log.
    peer: SocketAddr,
}

struct StackTask {
    stack: TcpStack,
    proxy: Arc<DnsProxy>,
    tun: TunWriter,
    connections: HashMap<ConnectionId, Connection>,
    answers_tx: mpsc::UnboundedSender<(ConnectionId, Vec<u8>)>,
    answers_rx: mpsc::UnboundedReceiver<(ConnectionId, Vec<u8>)>,
    events: Vec<Event>,
    /// Where answers from memory are written, reused for every query.
    answer: Vec<u8>,
    /// Open connections by client address, and the most one may hold.
    per_source: HashMap<IpAddr, usize>,
    max_per_source: usize,
}

impl StackTask {
    fn new(stack: TcpStack, proxy: Arc<DnsProxy>, tun: TunWriter, max_per_source: usize) -> Self {
        let (answers_tx, answers_rx) = mpsc::unbounded_channel();
        Self {
            stack,
            proxy,
            tun,
            connections: HashMap::new(),
            answers_tx,
            answers_rx,
            events: Vec::new(),
            answer: vec![0; MAX_MESSAGE_LEN],
            per_source: HashMap::new(),
            max_per_source,
        }
    }

    /// Forgets connection `id`, and its share of its client's connections.
    fn remove(&mut self, id: ConnectionId) {
        if let Some(connection) = self.connections.remove(&id)
            && let Some(count) = self.per_source.get_mut(&connection.peer.ip())
        {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&connection.peer.ip());
            }
        }
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Vec<u8>>) {
        loop {
            self.poll_and_transmit();
            let delay = self.stack.poll_delay(Instant::now()).unwrap_or(IDLE_POLL);
            tokio::select! {
                segment = inbox.recv() => {
                    let Some(segment) = segment else { return };
                    self.stack.receive(&segment, Instant::now());
                    while let Ok(segment) = inbox.try_recv() {
                        self.stack.receive(&segment, Instant::now());
                    }
                }
                Some((id, answer)) = self.answers_rx.recv() => self.queue_answer(id, &answer, true),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Runs the stack until it has nothing more to report, then sends its segments.
    fn poll_and_transmit(&mut self) {
        // Handling an event can write, which can produce more events; a few rounds settle it.
        for _ in 0..4 {
            self.stack.poll(Instant::now(), &mut self.events);
            if self.events.is_empty() {
                break;
            }
            let events = std::mem::take(&mut self.events);
            for event in &events {
                self.handle_event(*event);
            }
            self.events = events;
            self.events.clear();
        }
        let tun = &self.tun;
        self.stack.drain_transmit(|packet| tun.send(packet));
        let open = self.connections.len() as u64;
        self.proxy
            .stats()
            .tcp_connections
            .store(open, Ordering::Relaxed);
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::Accepted { id, peer, .. } => {
                let held = self.per_source.entry(peer.ip()).or_default();
                if *held >= self.max_per_source {
                    tracing::debug!(%peer, "DNS/TCP: this client holds its share of connections");
                    self.stack.reset(id);
                    return;
                }
                *held += 1;
                self.connections.insert(
                    id,
                    Connection {
                        decoder: FrameDecoder::new(MAX_QUERY),
                        pending: Vec::new(),
                        in_flight: 0,
                        peer_finished: false,
                        peer,
                    },
                );
            }
            Event::Data(id) => self.read_queries(id),
            Event::Writable(id) => self.flush(id),
            Event::PeerFinished(id) => {
                if let Some(connection) = self.connections.get_mut(&id) {
                    connection.peer_finished = true;
                }
                self.close_if_done(id);
            }
            Event::Closed(id) => self.remove(id),
            // This stack only listens.
            Event::Connected(_) | Event::ConnectFailed { .. } | Event::Released(_) => {}
        }
    }

    /// Reads what the decoder has room for and starts the whole queries in it, until the
    /// stack holds no more or the connection is at its bound of queries in flight: then
    /// the rest waits in the stack, and the client's window closes.
    fn read_queries(&mut self, id: ConnectionId) {
        let mut chunk = [0u8; 4096];
        loop {
            let Some(connection) = self.connections.get(&id) else {
                return;
            };
            let room = connection.decoder.room().min(chunk.len());
            if room == 0 || connection.in_flight >= MAX_IN_FLIGHT_PER_CONNECTION {
                return;
            }
            let Ok(read) = self.stack.read(id, &mut chunk[..room]) else {
                self.remove(id);
                return;
            };
            if read == 0 {
                return;
            }
            let Some(connection) = self.connections.get_mut(&id) else {
                return;
            };
            connection.decoder.push(&chunk[..read]);
            if !self.dispatch_queries(id) {
                return;
            }
        }
    }

    /// Starts every whole query buffered on the connection. Returns false when the
    /// connection was closed for a framing error.
    fn dispatch_queries(&mut self, id: ConnectionId) -> bool {
        loop {
            let Some(connection) = self.connections.get_mut(&id) else {
                return false;
            };
            if connection.in_flight >= MAX_IN_FLIGHT_PER_CONNECTION {
                return true;
            }
            let verdict = match connection.decoder.next_message() {
                Ok(Some(query)) => {
                    // A whole query: the one thing from the client that keeps it open.
                    self.stack.keep_alive(id);
                    let peer = Some(connection.peer);
                    self.proxy
                        .accept_from(peer, query, Transport::Tcp, &mut self.answer)
                }
                Ok(None) => return true,
                Err(error) => {
                    tracing::debug!(%error, "closing DNS/TCP connection");
                    self.remove(id);
                    self.stack.close(id);
                    return false;
                }
            };
            match verdict {
                Verdict::Drop => {}
                Verdict::Answered(len) => {
                    let answer = std::mem::take(&mut self.answer);
                    self.queue_answer(id, &answer[..len], false);
                    self.answer = answer;
                }
                Verdict::Forward(forward) => {
                    connection.in_flight += 1;
                    let answers = self.answers_tx.clone();
                    tokio::spawn(async move {
                        let answer = forward.resolve().await;
                        let _ = answers.send((id, answer));
                    });
                }
            }
        }
    }

    /// Frames `answer` and hands it to the stack, keeping what does not fit for later.
    fn queue_answer(&mut self, id: ConnectionId, answer: &[u8], completes_query: bool) {
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        let was_full = connection.in_flight >= MAX_IN_FLIGHT_PER_CONNECTION;
        if completes_query {
            connection.in_flight = connection.in_flight.saturating_sub(1);
        }
        self.queue_framed(id, answer);
        // Room again: what waited in the decoder and the stack goes on.
        if completes_query && was_full && self.dispatch_queries(id) {
            self.read_queries(id);
        }
    }

    fn queue_framed(&mut self, id: ConnectionId, answer: &[u8]) {
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        if connection.pending.len() + answer.len() > MAX_PENDING_ANSWERS {
            self.remove(id);
            self.stack.close(id);
            return;
        }
        if !append_framed(&mut connection.pending, answer) {
            return;
        }
        // A whole answer out: the connection is doing what it is for.
        self.stack.keep_alive(id);
        self.flush(id);
    }

    fn flush(&mut self, id: ConnectionId) {
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        if !connection.pending.is_empty() {
            match self.stack.write(id, &connection.pending) {
                Ok(written) => {
                    connection.pending.drain(..written);
                }
                Err(_) => {
                    self.remove(id);
                    return;
                }
            }
        }
        self.close_if_done(id);
    }

    /// Closes a connection whose client has finished sending once every answer is out.
    fn close_if_done(&mut self, id: ConnectionId) {
        let Some(connection) = self.connections.get(&id) else {
            return;
        };
        if connection.peer_finished && connection.in_flight == 0 && connection.pending.is_empty() {
            self.remove(id);
            self.stack.close(id);
        }
    }
}

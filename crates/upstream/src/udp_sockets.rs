//! The UDP sockets to one upstream: each on a random port, connected, and shared by the
//! queries in flight, as dnsmasq shares its random-port sockets.
//!
//! A fresh socket per query costs a socket, a bind, a connect, two epoll changes and a
//! close: a third of the forwarding CPU under load. Here the first queries each open a
//! socket on a kernel-chosen (random) port, up to [`SOCKETS_PER_UPSTREAM`]; later ones take
//! one of the open sockets at random. A socket takes at most [`QUERIES_PER_SOCKET`]
//! queries and lives at most [`SOCKET_LIFETIME`], then takes no more and closes once its
//! last answer is in, so ports keep changing under steady load too.
//!
//! An off-path forger must still guess the port among the whole ephemeral range and the
//! 16-bit ID: the ports are random and are never shown to anyone but the upstream. Each
//! socket has one receive task, which hands every answer to the query whose ID and question
//! it matches; anything else is ignored and counted.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, oneshot};
use tundns_dns::tcp::MAX_MESSAGE_LEN;
use tundns_dns::{Question, message_id, response_matches, set_message_id};

use crate::transport::{AttemptError, ignore, local_address, mark};
use crate::{Context, Counters};

/// Sockets open at once per upstream.
pub const SOCKETS_PER_UPSTREAM: usize = 32;
/// Queries one socket takes before it is retired.
pub const QUERIES_PER_SOCKET: u32 = 128;
/// How long one socket takes new queries.
pub const SOCKET_LIFETIME: Duration = Duration::from_secs(10);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

type OpenSockets = Mutex<Vec<Arc<PortSocket>>>;

/// The sockets to one upstream.
pub struct UdpSockets {
    upstream: SocketAddr,
    /// Sockets taking new queries. Lock order: this list, then a socket's `waiting`.
    open: Arc<OpenSockets>,
}

/// How a waiting query's attempt ends, as the receive task sees it.
enum Outcome {
    Answer(Vec<u8>),
    Failed(io::ErrorKind),
}

struct Waiter {
    question: Question,
    outcome: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct Waiting {
    by_id: HashMap<u16, Waiter>,
    /// Queries this socket has taken.
    taken: u32,
    /// No longer in the open list; the receive task ends once `by_id` is empty.
    retired: bool,
}

struct PortSocket {
    socket: UdpSocket,
    waiting: Mutex<Waiting>,
    /// Woken when a retired socket's last query leaves.
    drained: Notify,
}

impl UdpSockets {
    pub fn new(upstream: SocketAddr) -> Self {
        UdpSockets {
            upstream,
            open: Arc::default(),
        }
    }

    /// One query and its matching answer, with a random ID on the wire.
    pub async fn exchange(
        &self,
        query: &[u8],
        question: &Question,
        context: &Context,
    ) -> Result<Vec<u8>, AttemptError> {
        let (registration, outcome) = self.register(question, context)?;
        let mut outgoing = query.to_vec();
        set_message_id(&mut outgoing, registration.id);
        registration.port.socket.send(&outgoing).await?;
        match outcome.await {
            Ok(Outcome::Answer(answer)) => Ok(answer),
            Ok(Outcome::Failed(kind)) => Err(io::Error::from(kind).into()),
            Err(_) => Err(AttemptError::Closed),
        }
    }

    /// Retires every open socket, so the next query starts on a new port.
    pub fn retire_all(&self) {
        let retiring = std::mem::take(&mut *lock(&self.open));
        for port in retiring {
            port.retire_locked(&mut lock(&port.waiting));
        }
    }

    /// A socket for the next query, and a random ID free on it.
    fn register(
        &self,
        question: &Question,
        context: &Context,
    ) -> Result<(Registration, oneshot::Receiver<Outcome>), AttemptError> {
        let mut open = lock(&self.open);
        let index = if open.len() < SOCKETS_PER_UPSTREAM {
            // Opening a socket is a few system calls; the list is not held meanwhile.
            drop(open);
            let opened = self.open_socket(context);
            open = lock(&self.open);
            match opened {
                Ok(port) => {
                    open.push(port);
                    open.len() - 1
                }
                // Out of descriptors, say: an open socket still serves.
                Err(_) if !open.is_empty() => rand::random_range(0..open.len()),
                Err(error) => return Err(error.into()),
            }
        } else {
            rand::random_range(0..open.len())
        };
        let port = open[index].clone();
        let mut waiting = lock(&port.waiting);
        let id = loop {
            let id = rand::random::<u16>();
            if !waiting.by_id.contains_key(&id) {
                break id;
            }
        };
        let (outcome, receiver) = oneshot::channel();
        waiting.by_id.insert(
            id,
            Waiter {
                question: question.clone(),
                outcome,
            },
        );
        waiting.taken += 1;
        if waiting.taken >= QUERIES_PER_SOCKET {
            open.swap_remove(index);
            waiting.retired = true;
        }
        drop(waiting);
        Ok((Registration { port, id }, receiver))
    }

    /// A new socket on a kernel-chosen port, connected to the upstream (so the kernel
    /// drops datagrams from anyone else and reports ICMP refusals), with its receive task.
    fn open_socket(&self, context: &Context) -> io::Result<Arc<PortSocket>> {
        let socket = Socket::new(
            Domain::for_address(self.upstream),
            Type::DGRAM.nonblocking().cloexec(),
            Some(Protocol::UDP),
        )?;
        mark(SockRef::from(&socket), &context.config)?;
        socket.bind(&local_address(self.upstream, &context.config).into())?;
        socket.connect(&self.upstream.into())?;
        let port = Arc::new(PortSocket {
            socket: UdpSocket::from_std(socket.into())?,
            waiting: Mutex::default(),
            drained: Notify::new(),
        });
        tokio::spawn(receive(
            port.clone(),
            Arc::downgrade(&self.open),
            self.upstream,
            context.counters.clone(),
        ));
        Ok(port)
    }
}

impl Drop for UdpSockets {
    /// The pool is gone (a reload replaced it): its sockets close as their answers come in.
    fn drop(&mut self) {
        self.retire_all();
    }
}

/// A query's claim on its ID; dropping it (answered, timed out or cancelled) frees the ID.
struct Registration {
    port: Arc<PortSocket>,
    id: u16,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut waiting = lock(&self.port.waiting);
        waiting.by_id.remove(&self.id);
        if waiting.retired && waiting.by_id.is_empty() {
            self.port.drained.notify_one();
        }
    }
}

impl PortSocket {
    fn retire_locked(&self, waiting: &mut Waiting) {
        waiting.retired = true;
        if waiting.by_id.is_empty() {
            self.drained.notify_one();
        }
    }

    /// Takes the socket out of the open list once its lifetime is over.
    fn retire(self: &Arc<Self>, open: &Weak<OpenSockets>) {
        if let Some(open) = open.upgrade() {
            lock(&open).retain(|port| !Arc::ptr_eq(port, self));
        }
        self.retire_locked(&mut lock(&self.waiting));
    }

    fn done(&self) -> bool {
        let waiting = lock(&self.waiting);
        waiting.retired && waiting.by_id.is_empty()
    }

    /// Hands `answer` to the query it matches; anything else is ignored and counted.
    fn deliver(&self, answer: &[u8], upstream: SocketAddr, counters: &Counters) {
        let mut waiting = lock(&self.waiting);
        let matched = message_id(answer).filter(|id| {
            waiting
                .by_id
                .get(id)
                .is_some_and(|waiter| response_matches(*id, &waiter.question, answer))
        });
        match matched.and_then(|id| waiting.by_id.remove(&id)) {
            Some(waiter) => {
                let _ = waiter.outcome.send(Outcome::Answer(answer.to_vec()));
            }
            None => {
                drop(waiting);
                ignore(upstream, answer.len(), counters);
            }
        }
    }

    /// An error on the socket ends every query waiting on it: a refusal (ICMP port
    /// unreachable) cannot be pinned to one of them, and the upstream is refusing anyway.
    fn fail_all(&self, kind: io::ErrorKind) {
        let mut waiting = lock(&self.waiting);
        for (_, waiter) in waiting.by_id.drain() {
            let _ = waiter.outcome.send(Outcome::Failed(kind));
        }
    }
}

/// Reads the socket's answers until it is retired and its last query has left.
async fn receive(
    port: Arc<PortSocket>,
    open: Weak<OpenSockets>,
    upstream: SocketAddr,
    counters: Arc<Counters>,
) {
    let mut buf = vec![0; MAX_MESSAGE_LEN];
    let lifetime = tokio::time::sleep(SOCKET_LIFETIME);
    tokio::pin!(lifetime);
    let mut aged = false;
    while !port.done() {
        tokio::select! {
            received = port.socket.recv(&mut buf) => match received {
                Ok(len) => port.deliver(&buf[..len], upstream, &counters),
                Err(error) => {
                    port.fail_all(error.kind());
                    if error.kind() != io::ErrorKind::ConnectionRefused {
                        tracing::debug!(%upstream, %error, "UDP socket to upstream failed");
                        port.retire(&open);
                    }
                }
            },
            () = &mut lifetime, if !aged => {
                aged = true;
                port.retire(&open);
            }
            () = port.drained.notified() => {}
        }
    }
}

//! DNS over TLS (RFC 7858): one persistent connection per upstream, shared by
//! every query and pipelined (RFC 7766 §6.2.1.1): each query goes out under a
//! random ID unique among those in flight, and a reader task hands each answer
//! to the query whose ID and question it matches, in whatever order they come.
//!
//! A writer task owns the sending half, so a query cancelled mid-send (timeout,
//! or another upstream won the race) never leaves half a frame on the wire. The
//! connection is closed after `idle_timeout` with nothing in flight, and
//! replaced when it breaks; opening it is [`SharedConnection`]'s job.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tundns_dns::tcp::{FrameDecoder, MAX_MESSAGE_LEN};
use tundns_dns::{Question, message_id, response_matches};

use crate::shared_connection::{Persistent, SharedConnection};
use crate::transport::{self, AttemptError, TlsEndpoint};
use crate::{Context, Counters, PoolError, bump};

/// Queries in flight on one connection at most (a quarter of the ID space, so
/// a random free ID is found in a few tries).
const MAX_IN_FLIGHT: usize = 16384;
/// Queued frames the writer has not written yet.
const WRITE_QUEUE: usize = 256;

pub struct DotClient {
    endpoint: TlsEndpoint,
    connection: SharedConnection<Connection>,
}

impl DotClient {
    pub fn new(
        address: SocketAddr,
        server_name: &str,
        tls: Arc<ClientConfig>,
    ) -> Result<Self, PoolError> {
        Ok(DotClient {
            endpoint: TlsEndpoint::new(address, server_name, tls)?,
            connection: SharedConnection::new(),
        })
    }

    pub async fn exchange(
        &self,
        query: &[u8],
        question: &Question,
        context: &Context,
    ) -> Result<Vec<u8>, AttemptError> {
        // A new connection: connect and handshake, within the attempt timeout.
        let connect = || {
            let tls = self.endpoint.connect(&context.config);
            let address = self.endpoint.address;
            let idle_timeout = context.config.idle_timeout;
            let counters = context.counters.clone();
            async move {
                Ok(Connection::spawn(
                    tls.await?,
                    address,
                    idle_timeout,
                    counters,
                ))
            }
        };
        self.connection
            .exchange(
                context.config.attempt_timeout,
                connect,
                |connection: Arc<Connection>| async move { connection.exchange(query, question).await },
            )
            .await
    }

    /// Closes the current connection (its tasks end when they see the flag).
    pub fn drop_connection(&self) {
        self.connection.drop_connection();
    }
}

struct Pending {
    /// Tells this query from a later one that got the same ID.
    serial: u64,
    question: Question,
    reply: oneshot::Sender<Vec<u8>>,
}

struct Connection {
    frames: mpsc::Sender<Vec<u8>>,
    pending: Mutex<HashMap<u16, Pending>>,
    closed: AtomicBool,
    close_signal: watch::Sender<bool>,
    serials: AtomicU64,
}

impl Connection {
    /// The connection over `stream`, with its reader and writer tasks
    /// holding it until it closes.
    fn spawn<S>(
        stream: S,
        upstream: SocketAddr,
        idle_timeout: Duration,
        counters: Arc<Counters>,
    ) -> Arc<Self>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (frames, queue) = mpsc::channel(WRITE_QUEUE);
        let (close_signal, _) = watch::channel(false);
        let state = Arc::new(Connection {
            frames,
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            close_signal,
            serials: AtomicU64::new(0),
        });
        let (reader, writer) = tokio::io::split(stream);
        tokio::spawn(state.clone().read_loop(reader, upstream, counters));
        tokio::spawn(state.clone().write_loop(writer, queue, idle_timeout));
        state
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u16, Pending>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn exchange(
        self: &Arc<Self>,
        query: &[u8],
        question: &Question,
    ) -> Result<Vec<u8>, AttemptError> {
        let (reply, answer) = oneshot::channel();
        let serial = self.serials.fetch_add(1, Ordering::Relaxed);
        let id = {
            let mut pending = self.lock_pending();
            if self.is_closed() {
                return Err(AttemptError::Closed);
            }
            if pending.len() >= MAX_IN_FLIGHT {
                return Err(AttemptError::Busy);
            }
            let id = loop {
                let id = rand::random::<u16>();
                if !pending.contains_key(&id) {
                    break id;
                }
            };
            let question = question.clone();
            pending.insert(
                id,
                Pending {
                    serial,
                    question,
                    reply,
                },
            );
            id
        };
        let _forget = ForgetOnDrop {
            connection: self,
            id,
            serial,
        };
        let frame = transport::framed(query, id)?;
        self.frames
            .send(frame)
            .await
            .map_err(|_| AttemptError::Closed)?;
        answer.await.map_err(|_| AttemptError::Closed)
    }

    async fn read_loop<R: AsyncRead>(
        self: Arc<Self>,
        reader: R,
        upstream: SocketAddr,
        counters: Arc<Counters>,
    ) {
        tokio::pin!(reader);
        let mut closing = self.close_signal.subscribe();
        let mut decoder = FrameDecoder::new(MAX_MESSAGE_LEN);
        let mut chunk = vec![0u8; 16 * 1024];
        'stream: loop {
            let read = tokio::select! {
                read = reader.read(&mut chunk) => read,
                _ = closing.wait_for(|closed| *closed) => break,
            };
            let len = match read {
                Ok(0) => break,
                Ok(len) => len,
                Err(error) => {
                    tracing::debug!(%upstream, %error, "DoT connection failed");
                    break;
                }
            };
            let mut taken = 0;
            while taken < len {
                taken += decoder.push(&chunk[taken..len]);
                loop {
                    match decoder.next_message() {
                        Ok(Some(message)) => self.deliver(message, upstream, &counters),
                        Ok(None) => break,
                        Err(error) => {
                            tracing::debug!(%upstream, %error, "DoT framing error");
                            break 'stream;
                        }
                    }
                }
            }
        }
        self.close();
    }

    /// Hands `message` to the query waiting for its ID if the question
    /// matches; anything else is counted and dropped.
    fn deliver(&self, message: &[u8], upstream: SocketAddr, counters: &Counters) {
        let mut pending = self.lock_pending();
        let waiting = message_id(message).and_then(|id| {
            let entry = pending.get(&id)?;
            response_matches(id, &entry.question, message).then_some(id)
        });
        match waiting.and_then(|id| pending.remove(&id)) {
            // The query may have given up meanwhile: nothing to do then.
            Some(entry) => drop(entry.reply.send(message.to_vec())),
            None => {
                bump(&counters.mismatched_ignored);
                tracing::debug!(%upstream, len = message.len(), "ignored a mismatched DoT message");
            }
        }
    }

    async fn write_loop<W: AsyncWrite>(
        self: Arc<Self>,
        writer: W,
        mut queue: mpsc::Receiver<Vec<u8>>,
        idle_timeout: std::time::Duration,
    ) {
        tokio::pin!(writer);
        let mut closing = self.close_signal.subscribe();
        loop {
            let frame = tokio::select! {
                frame = tokio::time::timeout(idle_timeout, queue.recv()) => frame,
                _ = closing.wait_for(|closed| *closed) => break,
            };
            let frame = match frame {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_idle) if self.lock_pending().is_empty() => break,
                Err(_busy) => continue,
            };
            if writer.write_all(&frame).await.is_err() {
                break;
            }
            // Write whatever else is queued before flushing: one TLS record
            // and one segment for a burst of queries.
            let mut failed = false;
            while let Ok(frame) = queue.try_recv() {
                if writer.write_all(&frame).await.is_err() {
                    failed = true;
                    break;
                }
            }
            if failed || writer.flush().await.is_err() {
                break;
            }
        }
        self.close();
        // close_notify, then FIN; best effort.
        let _ = writer.shutdown().await;
    }
}

impl Persistent for Connection {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Marks the connection closed, wakes both tasks, and fails every query
    /// still waiting on it (their senders are dropped).
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.close_signal.send_replace(true);
        self.lock_pending().clear();
    }
}

/// Removes a query's entry when it ends for any reason (answered, timed out,
/// cancelled), so late answers are counted as mismatched and IDs are reused.
struct ForgetOnDrop<'a> {
    connection: &'a Connection,
    id: u16,
    serial: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        let mut pending = self.connection.lock_pending();
        if pending
            .get(&self.id)
            .is_some_and(|entry| entry.serial == self.serial)
        {
            pending.remove(&self.id);
        }
    }
}

//! DNS over TLS (RFC 7858): RFC 7766's framing inside TLS. Queries are answered as they
//! complete, several at once per connection, as on TCP 53.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tundns_dns::MAX_MESSAGE_LEN;
use tundns_dns::tcp::{FrameDecoder, append_framed};

use super::{Bounds, MAX_IN_FLIGHT_PER_CONNECTION};
use crate::dns::counters::Transport;
use crate::dns::proxy::{DnsProxy, Verdict};

/// Largest query accepted; real ones are a few hundred bytes.
const MAX_QUERY: usize = 16 * 1024;
/// Answers gathered into one TLS write, at most (beyond one answer).
const WRITE_BATCH: usize = 64 * 1024;

/// An answer to write, with the query's place among those in flight: given back only once
/// the answer is written, so a client that does not read holds at most
/// [`MAX_IN_FLIGHT_PER_CONNECTION`] answers.
type Outgoing = (Vec<u8>, OwnedSemaphorePermit);

/// Serves the queries of one connection until the client closes it, idles, sends what
/// is not DNS framing, or stops reading its answers.
pub(super) async fn serve<S>(stream: S, peer: SocketAddr, proxy: &Arc<DnsProxy>, bounds: Bounds)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, writer) = tokio::io::split(stream);
    let (answers, outbox) = mpsc::channel(MAX_IN_FLIGHT_PER_CONNECTION);
    // The writer ends when every sender is gone (the reader and its forwards), or the
    // client stops taking answers; either way the reader then stops at its next send.
    tokio::join!(
        read_queries(reader, peer, proxy, bounds, answers),
        write_answers(writer, outbox, bounds)
    );
}

async fn read_queries<R: AsyncRead>(
    reader: R,
    peer: SocketAddr,
    proxy: &Arc<DnsProxy>,
    bounds: Bounds,
    answers: mpsc::Sender<Outgoing>,
) {
    tokio::pin!(reader);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION));
    let mut decoder = FrameDecoder::new(MAX_QUERY);
    let mut chunk = vec![0u8; 4096];
    let mut out = vec![0u8; MAX_MESSAGE_LEN];
    let mut deadline = Instant::now() + bounds.idle;
    loop {
        loop {
            let query = match decoder.next_message() {
                Ok(Some(query)) => query,
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(%peer, %error, "DNS over TLS: closing");
                    return;
                }
            };
            // The writer gave up on a client that does not read: nothing more is asked.
            if answers.is_closed() {
                return;
            }
            // A whole query: the one thing from the client that keeps it open.
            deadline = Instant::now() + bounds.idle;
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            match proxy.accept_from(Some(peer), query, Transport::Tls, &mut out) {
                Verdict::Drop => {}
                Verdict::Answered(len) => {
                    if answers.send((out[..len].to_vec(), permit)).await.is_err() {
                        return;
                    }
                }
                Verdict::Forward(forward) => {
                    let answers = answers.clone();
                    tokio::spawn(async move {
                        let answer = forward.resolve().await;
                        let _ = answers.send((answer, permit)).await;
                    });
                }
            }
        }
        let room = decoder.room().min(chunk.len());
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, reader.read(&mut chunk[..room])) => read,
            () = answers.closed() => return,
        };
        match read {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(read)) => {
                decoder.push(&chunk[..read]);
            }
            // Idle, unless an answer is still being worked on.
            Err(_) if in_flight.available_permits() < MAX_IN_FLIGHT_PER_CONNECTION => {
                deadline = Instant::now() + bounds.idle;
            }
            Err(_) => {
                tracing::debug!(%peer, "DNS over TLS: idle, closing");
                return;
            }
        }
    }
}

/// Writes the answers as they come, framed; those that came together go in one TLS
/// flush. A client that takes no answer for `bounds.idle` is closed.
async fn write_answers<W: AsyncWrite>(
    writer: W,
    mut outbox: mpsc::Receiver<Outgoing>,
    bounds: Bounds,
) {
    tokio::pin!(writer);
    let mut framed = Vec::new();
    let mut places = Vec::new();
    while let Some((answer, place)) = outbox.recv().await {
        append_framed(&mut framed, &answer);
        places.push(place);
        while framed.len() < WRITE_BATCH
            && let Ok((answer, place)) = outbox.try_recv()
        {
            append_framed(&mut framed, &answer);
            places.push(place);
        }
        let written = async {
            writer.write_all(&framed).await?;
            writer.flush().await
        };
        if !matches!(tokio::time::timeout(bounds.idle, written).await, Ok(Ok(()))) {
            return;
        }
        framed.clear();
        places.clear();
    }
    let _ = tokio::time::timeout(bounds.idle, writer.shutdown()).await;
}

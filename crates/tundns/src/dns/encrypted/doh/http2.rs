//! DoH over HTTP/2: the `h2` crate driven by the connection's own task, which answers a
//! request from memory as it takes it (no task, wake-up or channel per request, as the
//! inline rule for UDP has it). Only a forwarded query, or a `POST` body still on its way,
//! waits, beside the connection in the same task.
//!
//! The requests already read when the connection is polled are answered as a batch under
//! a [`Cork`], so that their answers leave in one TLS record and one TCP write rather than
//! one each.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use h2::RecvStream;
use h2::server::SendResponse;
use http::header::{CONTENT_LENGTH, DATE, HeaderValue};
use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tundns_dns::MAX_MESSAGE_LEN;

use super::{Asked, Refusal, answer_or_forward, asked, forwarded, query_of_body, respond_to_query};
use crate::dns::encrypted::{Activity, Bounds, InHand, MAX_IN_FLIGHT_PER_CONNECTION};
use crate::dns::proxy::{DnsProxy, Forward};

/// The largest header list a request may bring; a DoH request's is a few hundred bytes.
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// What a cork holds before it writes anyway: one TLS record's plaintext.
const CORK_LIMIT: usize = 16 * 1024;
/// The most requests one batch takes before its answers are written: streams answered in
/// the batch let new ones in, and the first answer should not wait on all of them.
const MAX_BATCH: usize = 64;

/// Serves one connection's requests until the client closes it, breaks the protocol or
/// idles.
pub(super) async fn serve<S>(stream: S, peer: SocketAddr, proxy: &Arc<DnsProxy>, bounds: Bounds)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let cork = Cork::default();
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(MAX_IN_FLIGHT_PER_CONNECTION as u32)
        .max_header_list_size(MAX_HEADER_LIST)
        // A query is at most 64 KiB: no client needs more in flight to send one.
        .initial_window_size(MAX_MESSAGE_LEN as u32)
        .initial_connection_window_size(4 * MAX_MESSAGE_LEN as u32)
        .handshake::<_, Bytes>(Corked::new(stream, cork.clone()));
    let mut connection = match tokio::time::timeout(bounds.idle, handshake).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "DNS over HTTPS: HTTP/2 handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "DNS over HTTPS: no HTTP/2 preface in time");
            return;
        }
    };
    let activity = Activity::new();
    // Requests that wait on a forward or a body, reset by the client or not: a reset frees
    // a stream, not the query's place among the upstreams' (see `respond_later`).
    let mut waiting = FuturesUnordered::new();
    // Once idle, the client is told to go (GOAWAY) and given `bounds.idle` to finish.
    let mut closing_by = None;
    loop {
        let look_again = closing_by.unwrap_or_else(|| activity.idle_deadline(bounds.idle));
        tokio::select! {
            accepted = connection.accept() => {
                // The requests already read are answered before anything is written.
                cork.hold();
                let mut next = Some(accepted);
                let mut taken = 0;
                while let Some(accepted) = next.take() {
                    match accepted {
                        // Its share of waiting taken by streams it reset: no more now.
                        Some(Ok((_, mut respond))) if waiting.len() >= MAX_IN_FLIGHT_PER_CONNECTION => {
                            send(&mut respond, Refusal::TOO_MANY_WAITING.response());
                        }
                        Some(Ok((request, mut respond))) => {
                            if let Some(rest) =
                                respond_now(request, &mut respond, peer, proxy, &activity)
                            {
                                waiting.push(respond_later(
                                    rest, respond, peer, proxy, bounds, &activity,
                                ));
                            }
                        }
                        Some(Err(error)) => {
                            tracing::debug!(%peer, %error, "DNS over HTTPS: connection ended");
                            return;
                        }
                        None => return,
                    }
                    taken += 1;
                    if taken < MAX_BATCH {
                        next = connection.accept().now_or_never();
                    }
                }
                // The next poll of the connection writes the batch.
                cork.release();
            }
            Some(()) = waiting.next(), if !waiting.is_empty() => {}
            () = tokio::time::sleep_until(look_again) => {
                if closing_by.is_some() {
                    tracing::debug!(%peer, "DNS over HTTPS: did not close in time");
                    return;
                }
                if activity.has_idled(bounds.idle) {
                    tracing::debug!(%peer, "DNS over HTTPS: idle, closing");
                    connection.graceful_shutdown();
                    closing_by = Some(Instant::now() + bounds.idle);
                }
            }
        }
    }
}

/// What is left of a request that cannot be answered at once.
enum Rest<'a> {
    /// A `POST` whose body is still coming.
    Body { body: RecvStream, is_dns: bool },
    /// A query on its way to the upstreams.
    Forward(Forward, InHand<'a>),
}

/// Answers `request` on `respond` if nothing needs waiting for; otherwise what is left.
fn respond_now<'a>(
    request: Request<RecvStream>,
    respond: &mut SendResponse<Bytes>,
    peer: SocketAddr,
    proxy: &Arc<DnsProxy>,
    activity: &'a Activity,
) -> Option<Rest<'a>> {
    let query = match asked(&request) {
        Ok(Asked::Query(query)) => query,
        Ok(Asked::Body { is_dns }) => {
            return Some(Rest::Body {
                body: request.into_body(),
                is_dns,
            });
        }
        Err(refusal) => {
            send(respond, refusal.response());
            return None;
        }
    };
    match answer_or_forward(&query, peer, proxy, activity) {
        Ok(response) => {
            send(respond, response);
            None
        }
        Err((forward, in_hand)) => Some(Rest::Forward(forward, in_hand)),
    }
}

/// Finishes what [`respond_now`] left. A client that resets the stream gets nothing, but
/// its query keeps its place in `waiting` until the upstreams answer: HTTP/2 no longer
/// counts the stream, and the upstreams would still be asked.
async fn respond_later(
    rest: Rest<'_>,
    mut respond: SendResponse<Bytes>,
    peer: SocketAddr,
    proxy: &Arc<DnsProxy>,
    bounds: Bounds,
    activity: &Activity,
) {
    let response = waited_response(rest, peer, proxy, bounds, activity);
    tokio::pin!(response);
    tokio::select! {
        response = &mut response => send(&mut respond, response),
        _ = std::future::poll_fn(|cx| respond.poll_reset(cx)) => {
            response.await;
        }
    }
}

/// The response to what [`respond_now`] left, once its body is in and its forward answered.
async fn waited_response(
    rest: Rest<'_>,
    peer: SocketAddr,
    proxy: &Arc<DnsProxy>,
    bounds: Bounds,
    activity: &Activity,
) -> Response<Bytes> {
    match rest {
        Rest::Forward(forward, _in_hand) => forwarded(forward).await,
        Rest::Body { body, is_dns } => match query_of_body(read_body(body), is_dns, bounds).await {
            Ok(query) => respond_to_query(&query, peer, proxy, activity).await,
            Err(refusal) => refusal.response(),
        },
    }
}

/// A `POST` body, whole, and at most a DNS message long.
async fn read_body(mut body: RecvStream) -> Result<Bytes, Refusal> {
    let mut whole = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|_| Refusal::BODY_TOO_LARGE)?;
        // Read is read: the window opens again for the rest.
        let _ = body.flow_control().release_capacity(chunk.len());
        if whole.len() + chunk.len() > MAX_MESSAGE_LEN {
            return Err(Refusal::BODY_TOO_LARGE);
        }
        whole.extend_from_slice(&chunk);
    }
    Ok(whole.freeze())
}

/// Sends `response` on its stream with the headers hyper would add: its length (some
/// clients, dig's among them, read no body without it) and the `Date` (RFC 9110
/// §6.6.1). A client that reset the stream gets nothing.
fn send(respond: &mut SendResponse<Bytes>, response: Response<Bytes>) {
    let (mut head, body) = response.into_parts();
    head.headers
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    head.headers.insert(DATE, date_now());
    let Ok(mut stream) = respond.send_response(Response::from_parts(head, ()), false) else {
        return;
    };
    let _ = stream.send_data(body, true);
}

thread_local! {
    /// This second's `Date`, made once a second per thread.
    static THIS_SECONDS_DATE: RefCell<(u64, HeaderValue)> =
        const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
}

fn date_now() -> HeaderValue {
    // A clock before 1970 says 1970: an HTTP date cannot be earlier.
    let second = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    THIS_SECONDS_DATE.with_borrow_mut(|(made_in, date)| {
        if *made_in != second {
            let this_second = SystemTime::UNIX_EPOCH + Duration::from_secs(second);
            *date = HeaderValue::try_from(httpdate::fmt_http_date(this_second))
                .expect("an HTTP date is a header value");
            *made_in = second;
        }
        date.clone()
    })
}

/// Whether a [`Corked`] stream holds its writes; an `Arc` only so that the connection's
/// future stays `Send` (the cork is held and released by the task that polls it).
#[derive(Clone, Default)]
struct Cork(Arc<AtomicBool>);

impl Cork {
    fn hold(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn release(&self) {
        self.0.store(false, Ordering::Relaxed);
    }

    fn is_held(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A stream whose writes are gathered, and written at a flush while its cork is not held
/// (or once [`CORK_LIMIT`] is gathered): h2 flushes after every poll, which would make a
/// TLS record of every answer.
struct Corked<S> {
    stream: S,
    gathered: Vec<u8>,
    /// How much of `gathered` the stream took.
    written: usize,
    cork: Cork,
}

impl<S: AsyncWrite + Unpin> Corked<S> {
    fn new(stream: S, cork: Cork) -> Self {
        Self {
            stream,
            gathered: Vec::new(),
            written: 0,
            cork,
        }
    }

    fn poll_write_gathered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.gathered.len() {
            let rest = &self.gathered[self.written..];
            let written = ready!(Pin::new(&mut self.stream).poll_write(cx, rest))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += written;
        }
        self.gathered.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Corked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = ready!(Pin::new(&mut self.stream).poll_read(cx, buf));
        // A client that stopped sending (EOF, or TCP closed without TLS's close_notify)
        // ends the connection without another flush: the batch's answers go now.
        if (read.is_err() || buf.filled().len() == before)
            && let Poll::Ready(Ok(())) = self.poll_write_gathered(cx)
        {
            let _ = Pin::new(&mut self.stream).poll_flush(cx);
        }
        Poll::Ready(read)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Corked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.gathered.len() >= CORK_LIMIT {
            ready!(self.poll_write_gathered(cx))?;
        }
        let taken = buf.len().min(CORK_LIMIT - self.gathered.len());
        self.gathered.extend_from_slice(&buf[..taken]);
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.cork.is_held() {
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_write_gathered(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_gathered(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

//! The one persistent connection of a DoT, DoH, DoQ or HTTP/3 upstream, and how it is
//! opened: by a background task bounded by the attempt timeout, whose outcome
//! every query that asked meanwhile shares.
//!
//! No lock is held while connecting, so forgetting the connection
//! ([`SharedConnection::drop_connection`]) always works, and a query waits for
//! the connect in progress only until that connect gives up: a burst of
//! queries toward a black-holed upstream fails over once, together, instead of
//! each opening a connection after the previous one timed out. Only the query
//! that started the connect gets its error; the others get
//! [`AttemptError::ConnectFailed`], so one failed connect counts as one
//! failure of the upstream.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::transport::AttemptError;

/// A connection the slot can hold.
pub trait Persistent: Send + Sync + 'static {
    fn is_closed(&self) -> bool;
    fn close(&self);
}

/// What the queries waiting for a connect see: nothing yet, then the
/// connection or the fact that it failed.
type Outcome<C> = Option<Result<Arc<C>, ()>>;

enum Slot<C> {
    Empty,
    Connecting(watch::Receiver<Outcome<C>>),
    Open(Arc<C>),
}

/// How a query gets a new connection.
enum Wait<C> {
    /// Another query's connect was in progress: its outcome, when it comes.
    Joined(watch::Receiver<Outcome<C>>),
    /// This query started the connect.
    Started(JoinHandle<Result<Arc<C>, AttemptError>>),
}

pub struct SharedConnection<C> {
    slot: Arc<Mutex<Slot<C>>>,
}

impl<C: Persistent> SharedConnection<C> {
    pub fn new() -> Self {
        SharedConnection {
            slot: Arc::new(Mutex::new(Slot::Empty)),
        }
    }

    /// The open connection (and `true`: it was reused), or a new one. When
    /// none is open or being opened, `connect` is spawned, bounded by
    /// `timeout`; it keeps running if this query is cancelled, so the queries
    /// that joined it still get an outcome.
    pub async fn get<F>(
        &self,
        timeout: Duration,
        connect: impl FnOnce() -> F,
    ) -> Result<(Arc<C>, bool), AttemptError>
    where
        F: Future<Output = Result<Arc<C>, AttemptError>> + Send + 'static,
    {
        let wait = {
            let mut slot = lock(&self.slot);
            match &*slot {
                Slot::Open(connection) if !connection.is_closed() => {
                    return Ok((connection.clone(), true));
                }
                Slot::Connecting(outcome) => Wait::Joined(outcome.clone()),
                Slot::Open(_) | Slot::Empty => {
                    let (publish, outcome) = watch::channel(None);
                    *slot = Slot::Connecting(outcome);
                    Wait::Started(tokio::spawn(open(
                        Arc::downgrade(&self.slot),
                        publish,
                        tokio::time::timeout(timeout, connect()),
                    )))
                }
            }
        };
        match wait {
            Wait::Joined(mut outcome) => match outcome.wait_for(Option::is_some).await.as_deref() {
                Ok(Some(Ok(connection))) => Ok((connection.clone(), false)),
                Ok(Some(Err(()))) => Err(AttemptError::ConnectFailed),
                Ok(None) | Err(_) => Err(AttemptError::Closed),
            },
            Wait::Started(task) => match task.await {
                Ok(connection) => Ok((connection?, false)),
                Err(_panicked_or_aborted) => Err(AttemptError::Closed),
            },
        }
    }

    /// `exchange` on the open connection or a new one (see [`Self::get`]). The server
    /// may have closed an idle connection we had not noticed yet: when a reused one
    /// turns out closed, once more on a fresh one; so too when the server refused a
    /// resumed QUIC connection's 0-RTT data and that connection cannot go on.
    pub async fn exchange<F, E, T>(
        &self,
        timeout: Duration,
        connect: impl Fn() -> F,
        exchange: impl Fn(Arc<C>) -> E,
    ) -> Result<T, AttemptError>
    where
        F: Future<Output = Result<Arc<C>, AttemptError>> + Send + 'static,
        E: Future<Output = Result<T, AttemptError>>,
    {
        let (connection, reused) = self.get(timeout, &connect).await?;
        match exchange(connection).await {
            Err(error)
                if matches!(error, AttemptError::EarlyDataRejected)
                    || (reused && matches!(error, AttemptError::Closed)) =>
            {
                let (connection, _) = self.get(timeout, &connect).await?;
                exchange(connection).await
            }
            outcome => outcome,
        }
    }

    /// Closes the open connection, if any, so the next query starts afresh.
    /// A connect in progress is left to finish: it is bounded already.
    pub fn drop_connection(&self) {
        let mut slot = lock(&self.slot);
        if let Slot::Open(connection) = &*slot {
            connection.close();
            *slot = Slot::Empty;
        }
    }
}

/// The connect task: runs `connect`, installs its connection in the slot (if
/// the client still exists), tells the waiting queries, and returns the
/// outcome with its error for the query that started it.
async fn open<C: Persistent>(
    slot: Weak<Mutex<Slot<C>>>,
    publish: watch::Sender<Outcome<C>>,
    connect: impl Future<Output = Result<Result<Arc<C>, AttemptError>, tokio::time::error::Elapsed>>,
) -> Result<Arc<C>, AttemptError> {
    let outcome = match connect.await {
        Ok(connected) => connected,
        Err(_elapsed) => Err(AttemptError::Timeout),
    };
    match slot.upgrade() {
        Some(slot) => {
            *lock(&slot) = match &outcome {
                Ok(connection) => Slot::Open(connection.clone()),
                Err(_) => Slot::Empty,
            }
        }
        None => {
            if let Ok(connection) = &outcome {
                connection.close();
            }
        }
    }
    publish.send_replace(Some(outcome.as_ref().map(Arc::clone).map_err(|_| ())));
    outcome
}

fn lock<C>(slot: &Mutex<Slot<C>>) -> MutexGuard<'_, Slot<C>> {
    // Every write leaves a valid state, even if a holder panicked.
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

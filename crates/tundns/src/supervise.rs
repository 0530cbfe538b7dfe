//! Essential tasks: the services a running tunnel cannot do without (the DNS proxy's TCP
//! stack and host sockets, the proxies' stack and listeners, the control socket, the
//! metrics endpoint). They run for as long as the tunnel does; one that ends on its own,
//! by returning or by a panic, stops the tunnel: everything is undone and the exit status
//! is 1. A service is never silently gone while the process looks healthy.
//!
//! Their owners abort them at shutdown, which is no failure: an aborted task never reaches
//! the report. The record is the process's, as the tunnel is (one per process, as `tundns
//! up` runs it): the first failure is kept and [`failed`] returns it.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;

use futures::FutureExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// An essential task that ended while it should have run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    /// What the task serves: "DNS over TCP on the virtual IPs".
    pub task: &'static str,
    /// "it ended" or the panic's message.
    pub reason: String,
}

impl std::fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} stopped: {}", self.task, self.reason)
    }
}

fn failures() -> &'static watch::Sender<Option<TaskFailure>> {
    static FAILURES: OnceLock<watch::Sender<Option<TaskFailure>>> = OnceLock::new();
    FAILURES.get_or_init(|| watch::Sender::new(None))
}

/// Spawns `future` as the essential task `task`. Abort it through the handle to stop it.
pub fn spawn_essential<F>(task: &'static str, future: F) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let reason = match AssertUnwindSafe(future).catch_unwind().await {
            Ok(()) => "it ended".to_string(),
            Err(panic) => panic
                .downcast_ref::<&str>()
                .map(|message| (*message).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .map_or_else(
                    || "it panicked".to_string(),
                    |m| format!("it panicked: {m}"),
                ),
        };
        report(TaskFailure { task, reason });
    })
}

/// Records that `failure` happened; the first one recorded is what [`failed`] returns. For
/// essential work that is not a task (a thread, another process).
pub fn report(failure: TaskFailure) {
    tracing::debug!(%failure, "essential task ended");
    failures().send_if_modified(|first| {
        let unset = first.is_none();
        first.get_or_insert(failure);
        unset
    });
}

/// Waits until an essential task fails, and returns the first failure.
pub async fn failed() -> TaskFailure {
    let mut watching = failures().subscribe();
    match watching.wait_for(Option::is_some).await {
        Ok(failure) => failure
            .clone()
            .unwrap_or_else(|| unreachable!("waited for Some")),
        // The sender is a static: it is never dropped.
        Err(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// One test, as the record is the process's: an aborted task is no failure; the first
    /// task to end is, and the one after it does not replace it.
    #[tokio::test]
    async fn an_essential_task_that_ends_is_reported_and_an_aborted_one_is_not() {
        let aborted = spawn_essential("aborted", std::future::pending());
        aborted.abort();
        let _ = aborted.await;
        let quiet = tokio::time::timeout(Duration::from_millis(50), failed()).await;
        assert!(quiet.is_err(), "an aborted task was reported: {quiet:?}");

        let _ = spawn_essential("the control socket", async { panic!("boom") }).await;
        let _ = spawn_essential("the metrics endpoint", async {}).await;
        let failure = tokio::time::timeout(Duration::from_secs(1), failed())
            .await
            .expect("the failure is reported");
        assert_eq!(failure.task, "the control socket");
        assert_eq!(
            failure.to_string(),
            "the control socket stopped: it panicked: boom"
        );
    }
}

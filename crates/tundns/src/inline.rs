//! Tasks the TUN reader runs itself, when the packets it hands over wake them.
//!
//! A cached answer over UDP costs the TUN reader one read and one write: it answers on its
//! own thread. A DNS-over-TLS or DNS-over-HTTPS query also goes through a userspace TCP stack
//! and the connection's task; run on the encrypted servers' thread, that task made every
//! query wake a second thread, which on these two-vCPU machines cost more than the TLS and
//! TCP work itself. So a connection's task is an [`async_task`] task whose wake-ups choose
//! where it runs:
//!
//! - woken inside [`run_here`] (the reader settling the stack with a client's segment), it
//!   runs right there, on the reader, before the reader reads on;
//! - woken anywhere else (a timer, an upstream's answer to a query that missed the cache,
//!   the stack's own task), it runs on the thread of the [`Spawner`]'s runtime.
//!
//! A task runs on the reader only once it [`OnReader::allow`]s it: a TLS handshake signs
//! with the server's key, work the tunnel's packets must not wait behind, so connections
//! shake hands on their own thread and move once established.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_task::{Runnable, Task};
use tokio::sync::mpsc;

/// Runs of tasks one [`run_here`] makes at most: a task that keeps waking itself goes on
/// on its own thread rather than hold the reader.
const MAX_RUNS_HERE: usize = 256;

thread_local! {
    /// While [`run_here`] runs on this thread: the tasks woken meanwhile that may run here.
    static WOKEN_HERE: RefCell<Option<VecDeque<Runnable>>> = const { RefCell::new(None) };
}

/// Spawns tasks that run on the reader when it wakes them, and otherwise on the runtime
/// [`Spawner::start`] was called in.
#[derive(Clone)]
pub(crate) struct Spawner {
    elsewhere: mpsc::UnboundedSender<Runnable>,
}

impl Spawner {
    /// Starts the runner of the tasks woken elsewhere, on the current runtime.
    pub(crate) fn start() -> Self {
        let (elsewhere, mut woken) = mpsc::unbounded_channel::<Runnable>();
        tokio::spawn(async move {
            while let Some(runnable) = woken.recv().await {
                runnable.run();
            }
        });
        Self { elsewhere }
    }

    /// Spawns the future `task` makes; it runs on the reader once it allows it
    /// ([`OnReader::allow`]). Dropping the returned handle cancels it.
    pub(crate) fn spawn<F>(&self, task: impl FnOnce(OnReader) -> F) -> Task<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let allowed = Arc::new(AtomicBool::new(false));
        // Unconstrained: tokio's cooperative budget is that of the task polling, which on the
        // reader is gotatun's reading task; spent there, tokio defers the wake-up to the
        // reader's runtime, which sits blocked in `read`, and the task hangs. These tasks
        // yield on their own I/O, bounded by the stack's buffers and their channels.
        let future = tokio::task::unconstrained(task(OnReader(allowed.clone())));
        let elsewhere = self.elsewhere.clone();
        let schedule = move |runnable: Runnable| {
            let runnable = if allowed.load(Ordering::Relaxed) {
                match wake_here(runnable) {
                    Ok(()) => return,
                    Err(runnable) => runnable,
                }
            } else {
                runnable
            };
            // The runner is gone only at shutdown: the task is dropped with it.
            let _ = elsewhere.send(runnable);
        };
        let (runnable, task) = async_task::spawn(future, schedule);
        runnable.schedule();
        task
    }
}

/// A task's consent to run on the reader.
pub(crate) struct OnReader(Arc<AtomicBool>);

impl OnReader {
    /// From now on, the task runs on the reader when the reader wakes it.
    pub(crate) fn allow(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Queues `runnable` to run on this thread, if a [`run_here`] is running here.
fn wake_here(runnable: Runnable) -> Result<(), Runnable> {
    WOKEN_HERE.with(|woken| match woken.borrow_mut().as_mut() {
        Some(queue) => {
            queue.push_back(runnable);
            Ok(())
        }
        None => Err(runnable),
    })
}

/// Whether a [`run_here`] is running on this thread, which settles the stack after the
/// tasks it runs: what they write needs no other wake-up to go out.
pub(crate) fn is_running_here() -> bool {
    WOKEN_HERE.with(|woken| woken.borrow().is_some())
}

fn next_woken_here() -> Option<Runnable> {
    WOKEN_HERE.with(|woken| woken.borrow_mut().as_mut()?.pop_front())
}

/// Calls `settle`, then runs on this thread every allowed task it woke, calling `settle`
/// again after each round so that what they wrote goes out and what that moves runs too.
/// Whatever is left after [`MAX_RUNS_HERE`] runs goes to the tasks' own thread. Called
/// from inside a `run_here`, it only settles.
pub(crate) fn run_here(mut settle: impl FnMut()) {
    let outermost = WOKEN_HERE.with(|woken| {
        let mut woken = woken.borrow_mut();
        let outermost = woken.is_none();
        woken.get_or_insert_with(VecDeque::new);
        outermost
    });
    settle();
    if !outermost {
        return;
    }
    let mut runs = 0;
    while runs < MAX_RUNS_HERE {
        let mut ran = false;
        while runs < MAX_RUNS_HERE
            && let Some(runnable) = next_woken_here()
        {
            runnable.run();
            runs += 1;
            ran = true;
        }
        if !ran {
            break;
        }
        settle();
    }
    let left = WOKEN_HERE.with(|woken| woken.borrow_mut().take().unwrap_or_default());
    for runnable in left {
        // Nothing runs here any more: to the task's own thread.
        runnable.schedule();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records the thread each poll of a task ran on, and is woken from outside.
    #[derive(Default)]
    struct Probe {
        threads: Mutex<Vec<std::thread::ThreadId>>,
        waker: Mutex<Option<std::task::Waker>>,
    }

    impl Probe {
        fn wake(&self) {
            if let Some(waker) = self.waker.lock().unwrap().take() {
                waker.wake();
            }
        }

        fn threads(&self) -> Vec<std::thread::ThreadId> {
            self.threads.lock().unwrap().clone()
        }
    }

    /// A task that records each poll and waits to be woken again, `polls` times.
    async fn probed(probe: Arc<Probe>, on_reader: OnReader, allow_after: usize, polls: usize) {
        for poll in 0..polls {
            if poll == allow_after {
                on_reader.allow();
            }
            std::future::poll_fn(|cx| {
                probe
                    .threads
                    .lock()
                    .unwrap()
                    .push(std::thread::current().id());
                *probe.waker.lock().unwrap() = Some(cx.waker().clone());
                std::task::Poll::Pending::<()>
            })
            .await;
        }
    }

    #[test]
    fn an_allowed_task_woken_inside_run_here_runs_there_and_elsewhere_on_its_thread() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let spawner = runtime.block_on(async { Spawner::start() });
        let probe = Arc::new(Probe::default());
        let task = spawner.spawn(|on_reader| probed(probe.clone(), on_reader, 0, 4));
        // The first poll, from the spawn: on the runtime's thread.
        runtime.block_on(tokio::task::yield_now());
        let here = std::thread::current().id();
        assert_eq!(probe.threads(), [here], "run by the runtime, driven here");

        // Woken inside run_here on another thread: it runs there.
        let reader = std::thread::spawn({
            let probe = probe.clone();
            move || {
                let mut segment = Some(());
                run_here(|| {
                    if segment.take().is_some() {
                        probe.wake();
                    }
                });
                std::thread::current().id()
            }
        })
        .join()
        .unwrap();
        assert_eq!(probe.threads(), [here, reader]);

        // Woken outside run_here: on the runtime's thread again.
        probe.wake();
        runtime.block_on(tokio::task::yield_now());
        assert_eq!(probe.threads(), [here, reader, here]);
        drop(task);
    }

    #[test]
    fn a_task_not_yet_allowed_is_never_run_by_run_here() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let spawner = runtime.block_on(async { Spawner::start() });
        let probe = Arc::new(Probe::default());
        let _task = spawner.spawn(|on_reader| probed(probe.clone(), on_reader, usize::MAX, 3));
        runtime.block_on(tokio::task::yield_now());
        std::thread::spawn({
            let probe = probe.clone();
            move || run_here(|| probe.wake())
        })
        .join()
        .unwrap();
        assert_eq!(
            probe.threads().len(),
            1,
            "queued for its own thread, not run"
        );
        runtime.block_on(tokio::task::yield_now());
        let here = std::thread::current().id();
        assert_eq!(probe.threads(), [here, here]);
    }

    #[test]
    fn a_task_woken_by_every_settling_leaves_the_reader_after_the_bound() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let spawner = runtime.block_on(async { Spawner::start() });
        let probe = Arc::new(Probe::default());
        let _task = spawner.spawn(|on_reader| probed(probe.clone(), on_reader, 0, usize::MAX));
        runtime.block_on(tokio::task::yield_now());
        let reader = std::thread::spawn({
            let probe = probe.clone();
            move || {
                run_here(|| probe.wake());
                std::thread::current().id()
            }
        })
        .join()
        .unwrap();
        let on_reader = probe.threads().iter().filter(|id| **id == reader).count();
        assert_eq!(on_reader, MAX_RUNS_HERE);
        // The wake left over went to the task's own thread.
        runtime.block_on(tokio::task::yield_now());
        let here = std::thread::current().id();
        assert_eq!(probe.threads().last(), Some(&here));
        assert_eq!(probe.threads().len(), 1 + MAX_RUNS_HERE + 1);
    }
}

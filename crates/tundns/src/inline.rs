//! Tasks the TUN reader runs itself, when the packets it hands over wake them.
//!
//! A cached answer over UDP costs the TUN reader one read and one write: it answers on its
//! own thread. A DNS-over-TLS or DNS-over-HTTPS query also goes through a userspace TCP stack
//! and the connection's task; run on the encrypted servers' thread, that task made every
//! query wake a second thread, which on these two-vCPU machines cost more than the TLS and
//! TCP work itself. So a connection's task is an [`async_task`] task whose wake-ups choose
//! where it runs:
//!
//! - woken inside [`run_here`] (the reader handing the stack a client's segment), it runs
//!   right there, on the reader, before the stack is settled and the reader reads on, so
//!   that its answer leaves with the segment's ACK;
//! - woken anywhere else (a timer, an upstream's answer to a query that missed the cache,
//!   the stack's own task), it runs on the thread of the [`Spawner`]'s runtime.
//!
//! A task runs on the reader only once it [`OnReader::allow`]s it: a TLS handshake signs
//! with the server's key, work the tunnel's packets must not wait behind, so connections
//! (and quinn's connection drivers) shake hands on their own thread and move once
//! established; quinn's endpoint driver, which signs nothing, is allowed at once. Wherever it runs, a task runs
//! inside its own runtime's context: what it spawns and the timers it sets live there, not
//! on the reader's runtime or tundns's. A task that panics is dropped with an error line;
//! the reader and the other tasks go on.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use async_task::{Runnable, Task};
use futures::FutureExt as _;
use tokio::runtime::Handle;
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
    runtime: Handle,
}

impl Spawner {
    /// Starts the runner of the tasks woken elsewhere, on the current runtime, as the
    /// essential task `name`: it ends only with the runtime.
    pub(crate) fn start(name: &'static str) -> Self {
        let (elsewhere, mut woken) = mpsc::unbounded_channel::<Runnable>();
        let keep_open = elsewhere.clone();
        crate::supervise::spawn_essential(name, async move {
            let _keep_open = keep_open;
            while let Some(runnable) = woken.recv().await {
                runnable.run();
            }
        });
        Self {
            elsewhere,
            runtime: Handle::current(),
        }
    }

    /// Spawns the future `task` makes; it runs on the reader once it allows it
    /// ([`OnReader::allow`]). Dropping the returned handle cancels it.
    pub(crate) fn spawn<F>(&self, task: impl FnOnce(OnReader) -> F) -> Task<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let allowed = Arc::new(AtomicBool::new(false));
        let future = task(OnReader(allowed.clone()));
        let future = async move {
            if AssertUnwindSafe(future).catch_unwind().await.is_err() {
                tracing::error!("an encrypted DNS task panicked and is dropped");
            }
        };
        // Unconstrained: tokio's cooperative budget is that of the task polling, which on the
        // reader is gotatun's reading task; spent there, tokio defers the wake-up to the
        // reader's runtime, which sits blocked in `read`, and the task hangs. These tasks
        // yield on their own I/O, bounded by the stack's buffers and their channels.
        let future = InRuntime {
            runtime: self.runtime.clone(),
            future: Box::pin(tokio::task::unconstrained(future)),
        };
        let elsewhere = self.elsewhere.clone();
        let schedule = move |runnable: Runnable| {
            let not_here = if allowed.load(Ordering::Relaxed) {
                wake_here(runnable).err()
            } else {
                Some(runnable)
            };
            if let Some(runnable) = not_here
                && let Err(gone) = elsewhere.send(runnable)
            {
                // The runner is gone only at shutdown. Dropping the task here would drop
                // its future inside the wake-up, where the waker may hold a lock the
                // future's drop takes (quinn's drivers do): it is leaked instead.
                std::mem::forget(gone.0);
            }
        };
        let (runnable, task) = async_task::spawn(future, schedule);
        runnable.schedule();
        task
    }
}

/// A future polled inside `runtime`'s context, whichever thread polls it.
struct InRuntime<F> {
    runtime: Handle,
    future: Pin<Box<F>>,
}

impl<F: Future> Future for InRuntime<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _inside = self.runtime.enter();
        self.future.as_mut().poll(cx)
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

/// Queues `runnable` to run on this thread, if a [`run_here`] is running here. A wake-up
/// while the thread's locals are torn down finds none.
fn wake_here(runnable: Runnable) -> Result<(), Runnable> {
    let mut runnable = Some(runnable);
    let _ = WOKEN_HERE.try_with(|woken| {
        if let Some(queue) = woken.borrow_mut().as_mut() {
            queue.extend(runnable.take());
        }
    });
    runnable.map_or(Ok(()), Err)
}

/// Whether a [`run_here`] is running on this thread.
#[cfg(test)]
fn is_running_here() -> bool {
    WOKEN_HERE
        .try_with(|woken| woken.borrow().is_some())
        .unwrap_or(false)
}

fn next_woken_here() -> Option<Runnable> {
    WOKEN_HERE.with(|woken| woken.borrow_mut().as_mut()?.pop_front())
}

/// Ends the outermost [`run_here`], however it ends (a `settle` that panics included): no
/// task is left queued where nothing will run it, and the thread stops counting as
/// running here.
struct LeaveHere;

impl Drop for LeaveHere {
    fn drop(&mut self) {
        let left = WOKEN_HERE.with(|woken| woken.borrow_mut().take().unwrap_or_default());
        for runnable in left {
            // Nothing runs here any more: to the task's own thread.
            runnable.schedule();
        }
    }
}

/// Calls `receive`, runs on this thread every allowed task it woke, then calls `settle`,
/// and again runs what that woke and settles, until a round wakes nothing: what the tasks
/// wrote goes out with the first settling, and what that moves runs too. Whatever is left
/// after [`MAX_RUNS_HERE`] runs goes to the tasks' own thread. Called from inside a
/// `run_here`, it only receives and settles.
pub(crate) fn run_here(receive: impl FnOnce(), mut settle: impl FnMut()) {
    let outermost = WOKEN_HERE.with(|woken| {
        let mut woken = woken.borrow_mut();
        let outermost = woken.is_none();
        woken.get_or_insert_with(VecDeque::new);
        outermost
    });
    if !outermost {
        receive();
        settle();
        return;
    }
    let _leave = LeaveHere;
    receive();
    let mut runs = run_woken_here(0);
    settle();
    while runs < MAX_RUNS_HERE {
        let round_started_at = runs;
        runs = run_woken_here(runs);
        if runs == round_started_at {
            break;
        }
        settle();
    }
}

/// Runs the tasks woken here until none is left or `runs` reaches [`MAX_RUNS_HERE`];
/// returns the runs made so far.
fn run_woken_here(mut runs: usize) -> usize {
    while runs < MAX_RUNS_HERE
        && let Some(runnable) = next_woken_here()
    {
        runnable.run();
        runs += 1;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::thread::ThreadId;

    /// Records the thread of each step of a task, and wakes it from outside.
    #[derive(Default)]
    struct Probe {
        threads: Mutex<Vec<ThreadId>>,
        waker: Mutex<Option<std::task::Waker>>,
    }

    impl Probe {
        fn wake(&self) {
            if let Some(waker) = self.waker.lock().unwrap().take() {
                waker.wake();
            }
        }

        fn threads(&self) -> Vec<ThreadId> {
            self.threads.lock().unwrap().clone()
        }
    }

    /// A task that takes `steps` steps, each recorded and then waiting for a wake-up; it
    /// allows running on the reader from the start, or never.
    async fn probed(probe: Arc<Probe>, on_reader: OnReader, allowed: bool, steps: usize) {
        if allowed {
            on_reader.allow();
        }
        for _ in 0..steps {
            probe
                .threads
                .lock()
                .unwrap()
                .push(std::thread::current().id());
            let mut waited = false;
            std::future::poll_fn(|cx| {
                if waited {
                    return Poll::Ready(());
                }
                waited = true;
                *probe.waker.lock().unwrap() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
        }
    }

    fn runtime_and_spawner() -> (tokio::runtime::Runtime, Spawner) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let spawner = runtime.block_on(async { Spawner::start("test tasks") });
        (runtime, spawner)
    }

    /// A runtime with one probed task spawned on it, its first step taken there.
    fn probed_task(allowed: bool, steps: usize) -> (tokio::runtime::Runtime, Arc<Probe>, Task<()>) {
        let (runtime, spawner) = runtime_and_spawner();
        let probe = Arc::new(Probe::default());
        let task = spawner.spawn(|on_reader| probed(probe.clone(), on_reader, allowed, steps));
        runtime.block_on(tokio::task::yield_now());
        (runtime, probe, task)
    }

    /// Runs `receive` and `settle` inside `run_here` on a thread of its own; returns that
    /// thread's id.
    fn on_a_reader(
        receive: impl FnOnce() + Send + 'static,
        settle: impl FnMut() + Send + 'static,
    ) -> ThreadId {
        std::thread::spawn(move || {
            run_here(receive, settle);
            assert!(
                !is_running_here(),
                "the reader no longer counts as running here"
            );
            std::thread::current().id()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn an_allowed_task_woken_inside_run_here_runs_there_and_elsewhere_on_its_thread() {
        let (runtime, probe, _task) = probed_task(true, 4);
        // The first step, from the spawn: on the runtime's thread.
        let here = std::thread::current().id();
        assert_eq!(probe.threads(), [here], "run by the runtime, driven here");

        // Woken once inside run_here on another thread: it runs there, once.
        let waker = probe.clone();
        let reader = on_a_reader(move || waker.wake(), || {});
        assert_eq!(probe.threads(), [here, reader]);

        // Woken outside run_here: on the runtime's thread again.
        probe.wake();
        runtime.block_on(tokio::task::yield_now());
        assert_eq!(probe.threads(), [here, reader, here]);
    }

    #[test]
    fn a_task_not_yet_allowed_is_never_run_by_run_here() {
        let (runtime, probe, _task) = probed_task(false, 3);
        let waker = probe.clone();
        on_a_reader(move || waker.wake(), || {});
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
    fn a_task_woken_after_its_runner_is_gone_is_not_dropped_inside_the_wake() {
        struct DropFlag(Arc<AtomicBool>);
        impl Drop for DropFlag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let (runtime, spawner) = runtime_and_spawner();
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = DropFlag(dropped.clone());
        let (wakers, waker) = std::sync::mpsc::channel();
        spawner
            .spawn(move |_| async move {
                let _flag = flag;
                std::future::poll_fn(|cx| {
                    let _ = wakers.send(cx.waker().clone());
                    Poll::<()>::Pending
                })
                .await;
            })
            .detach();
        runtime.block_on(tokio::task::yield_now());
        let waker = waker.try_recv().expect("the task ran once");
        // The runner, and its channel, go with the runtime.
        drop(runtime);
        waker.wake();
        assert!(
            !dropped.load(Ordering::SeqCst),
            "dropped inside the wake-up"
        );
    }

    #[test]
    fn a_task_woken_by_the_segment_runs_before_the_first_settling() {
        let (_runtime, probe, _task) = probed_task(true, 4);
        let waker = probe.clone();
        let watcher = probe.clone();
        let seen_by_settlings = Arc::new(Mutex::new(Vec::new()));
        let seen = seen_by_settlings.clone();
        on_a_reader(
            move || waker.wake(),
            move || seen.lock().unwrap().push(watcher.threads().len()),
        );
        // The spawn's step and the reader's: what the task wrote goes with that settling.
        assert_eq!(*seen_by_settlings.lock().unwrap(), [2]);
    }

    #[test]
    fn a_task_woken_by_every_settling_leaves_the_reader_after_the_bound() {
        let (runtime, probe, _task) = probed_task(true, usize::MAX);
        let (by_segment, by_settling) = (probe.clone(), probe.clone());
        let reader = on_a_reader(move || by_segment.wake(), move || by_settling.wake());
        let on_reader = probe.threads().iter().filter(|id| **id == reader).count();
        assert_eq!(on_reader, MAX_RUNS_HERE);
        // The wake-up left over went to the task's own thread.
        runtime.block_on(tokio::task::yield_now());
        let here = std::thread::current().id();
        assert_eq!(probe.threads().last(), Some(&here));
        assert_eq!(probe.threads().len(), 1 + MAX_RUNS_HERE + 1);
    }

    #[test]
    fn a_task_that_panics_on_the_reader_is_dropped_and_the_reader_goes_on() {
        let (runtime, spawner) = runtime_and_spawner();
        let probe = Arc::new(Probe::default());
        let doomed = spawner.spawn(|on_reader| {
            let probe = probe.clone();
            async move {
                probed(probe, on_reader, true, 1).await;
                panic!("a bug in a connection's task");
            }
        });
        runtime.block_on(tokio::task::yield_now());
        let waker = probe.clone();
        on_a_reader(move || waker.wake(), || {});
        assert!(doomed.is_finished(), "ended by its panic, on the reader");
        // What it spawns runs in its runtime, wherever it runs: this one still serves.
        let survivor = Arc::new(Probe::default());
        let _task = spawner.spawn(|on_reader| probed(survivor.clone(), on_reader, true, 2));
        runtime.block_on(tokio::task::yield_now());
        assert_eq!(survivor.threads().len(), 1);
    }

    #[test]
    fn a_task_spawns_and_sets_timers_in_its_own_runtime_even_on_the_reader() {
        let (runtime, spawner) = runtime_and_spawner();
        let (spawned_on, spawned) = std::sync::mpsc::channel();
        let probe = Arc::new(Probe::default());
        let _task = spawner.spawn(|on_reader| {
            let probe = probe.clone();
            async move {
                probed(probe, on_reader, true, 1).await;
                // On the reader now: a task spawned here must run on the runtime's thread.
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    let _ = spawned_on.send(std::thread::current().id());
                });
            }
        });
        runtime.block_on(tokio::task::yield_now());
        let waker = probe.clone();
        on_a_reader(move || waker.wake(), || {});
        runtime.block_on(async { tokio::time::sleep(std::time::Duration::from_millis(20)).await });
        assert_eq!(
            spawned.try_recv(),
            Ok(std::thread::current().id()),
            "spawned into, and timed by, the spawner's runtime"
        );
    }
}

//! The TUN reader's thread: a runtime of its own, on which gotatun's task that reads the
//! TUN runs, so that the read can block in the kernel.
//!
//! A DNS answer is one read and one write. Woken by a runtime's reactor, each read also
//! paid an `epoll_wait`, the scheduler's round trip and a last read that found the TUN
//! empty: more CPU than the answer itself. Reading on a thread of its own and handing the
//! packets to WireGuard's task cost the tunnel a second thread on every batch. So gotatun
//! runs its reading task here ([`gotatun::tun::IpRecv::runtime`]): the task blocks in
//! `read`, answers the services' packets inline, and encrypts and sends the others itself,
//! as it did when the runtime woke it.
//!
//! A task blocked in `read` cannot be aborted, so gotatun interrupts it first
//! ([`ReadControl`], a [`RecvInterrupter`]): a flag, and a signal whose handler does
//! nothing, installed without `SA_RESTART`, so that the `read` returns `EINTR`.

use std::io;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gotatun::tun::RecvInterrupter;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How often an interrupt repeats its signal while the read goes on: a signal that lands
/// just before the thread enters `read` is not seen there.
const INTERRUPT_KICK: Duration = Duration::from_millis(1);

/// How long an interrupt waits for the read to end before giving up, with an error line.
/// It runs in gotatun's connection stop, under the device's lock; a reader that does not
/// answer in this time has its task left blocked until the TUN's next packet.
const INTERRUPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Between the task's blocking read and whoever must stop that task.
#[derive(Default)]
pub(crate) struct ReadControl {
    /// Set by [`RecvInterrupter::interrupt`]: no read may start.
    interrupted: AtomicBool,
    /// Set while the task is in, or about to enter, a blocking read.
    in_read: AtomicBool,
    /// The reader thread, to signal.
    thread: OnceLock<libc::pthread_t>,
}

impl ReadControl {
    /// Called before a blocking read, and held until it returns: `None` once interrupted,
    /// and then the read must not start.
    pub(crate) fn enter_read(&self) -> Option<ReadGuard<'_>> {
        // SeqCst on both sides: either this sees the interrupt, or the interrupt sees the
        // read and signals it.
        self.in_read.store(true, Ordering::SeqCst);
        let guard = ReadGuard(self);
        (!self.is_interrupted()).then_some(guard)
    }

    pub(crate) fn is_interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }
}

/// A blocking read in progress; dropping it, when the read returns or unwinds, says so.
pub(crate) struct ReadGuard<'a>(&'a ReadControl);

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        self.0.in_read.store(false, Ordering::SeqCst);
    }
}

impl RecvInterrupter for ReadControl {
    fn interrupt(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
        let Some(&thread) = self.thread.get() else {
            return;
        };
        let started = Instant::now();
        while self.in_read.load(Ordering::SeqCst) {
            if started.elapsed() > INTERRUPT_TIMEOUT {
                tracing::error!("the TUN reader did not leave its read");
                return;
            }
            // SAFETY: the thread is alive: it is in its read loop (`in_read`), and only
            // `ReaderThread`'s drop, which interrupts first, ends it. The signal's handler
            // is installed and does nothing.
            unsafe { libc::pthread_kill(thread, stop_signal()) };
            std::thread::sleep(INTERRUPT_KICK);
        }
    }

    fn resume(&self) {
        self.interrupted.store(false, Ordering::SeqCst);
    }
}

/// The reader's thread and its runtime. Dropping it interrupts any read, stops the runtime
/// (dropping any task left on it) and waits for the thread, unless dropped on it.
pub(crate) struct ReaderThread {
    runtime: Handle,
    control: Arc<ReadControl>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ReaderThread {
    pub(crate) fn spawn() -> io::Result<Self> {
        install_stop_handler()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tun-reader".into())
            .spawn(move || {
                // A thread inherits its creator's mask, which may block the signal.
                unblock_stop_signal();
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        let control = Arc::new(ReadControl::default());
        let _ = control.thread.set(thread.as_pthread_t());
        Ok(Self {
            runtime: handle,
            control,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The runtime the reading task runs on.
    pub(crate) fn runtime(&self) -> &Handle {
        &self.runtime
    }

    pub(crate) fn control(&self) -> &Arc<ReadControl> {
        &self.control
    }
}

impl Drop for ReaderThread {
    fn drop(&mut self) {
        self.control.interrupt();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(thread) = self.thread.take() else {
            return;
        };
        // Dropped on the thread itself (the last task there held the last reference): the
        // runtime ends once this returns, and the thread with it.
        if thread.thread().id() != std::thread::current().id() {
            let _ = thread.join();
        }
    }
}

/// The signal that interrupts the reader's `read`: a real-time one, which nothing else in
/// tundns uses and which, unlike `SIGURG` or `SIGUSR1`, no library or user sends by habit.
fn stop_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// Installs the stop signal's handler, once per process: it does nothing, and without
/// `SA_RESTART` a `read` it interrupts returns `EINTR` rather than going on. A handler
/// someone else installed first is an error rather than silently replaced.
fn install_stop_handler() -> io::Result<()> {
    extern "C" fn interrupt(_: libc::c_int) {}
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        // SAFETY: zeroed sigactions are valid; the handler is async-signal-safe (it does
        // nothing).
        unsafe {
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(stop_signal(), std::ptr::null(), &mut previous) != 0 {
                return Err(errno());
            }
            if previous.sa_sigaction != libc::SIG_DFL {
                return Err(libc::EBUSY);
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(stop_signal(), &action, std::ptr::null_mut()) != 0 {
                return Err(errno());
            }
        }
        Ok(())
    });
    installed.map_err(|code| {
        io::Error::new(
            io::Error::from_raw_os_error(code).kind(),
            format!(
                "installing the TUN reader's signal handler (SIGRTMIN): {}",
                io::Error::from_raw_os_error(code)
            ),
        )
    })
}

/// Unblocks the stop signal for the calling thread.
fn unblock_stop_signal() {
    // SAFETY: the set is initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, stop_signal());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// A pipe nobody writes to: a read from it blocks until a signal interrupts it.
    fn silent_pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: pipe returned two fresh descriptors that nothing else owns.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    /// What the reading task does, on a pipe: reads while not interrupted, then reports.
    async fn read_until_interrupted(control: Arc<ReadControl>, pipe: OwnedFd) -> io::Error {
        loop {
            let Some(_reading) = control.enter_read() else {
                return io::Error::other("interrupted before a read");
            };
            let mut byte = [0u8; 1];
            // SAFETY: one valid byte of buffer for a valid descriptor.
            let read = unsafe { libc::read(pipe.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
            assert!(read < 0, "nobody writes to the pipe");
            let error = io::Error::last_os_error();
            if control.is_interrupted() {
                return error;
            }
        }
    }

    #[test]
    fn an_interrupt_ends_a_blocking_read_on_the_readers_thread() {
        let thread = ReaderThread::spawn().unwrap();
        let control = thread.control().clone();
        let (read_end, _write_end) = silent_pipe();
        let task = thread
            .runtime()
            .spawn(read_until_interrupted(control.clone(), read_end));
        // Let the task block in its read.
        let started = Instant::now();
        while !control.in_read.load(Ordering::SeqCst) {
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "the task never read"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));

        let interrupting = Instant::now();
        control.interrupt();
        assert!(
            interrupting.elapsed() < Duration::from_millis(500),
            "the interrupt took {:?}",
            interrupting.elapsed()
        );
        let ended = thread.runtime().block_on(task);
        assert_eq!(ended.unwrap().kind(), io::ErrorKind::Interrupted);
        assert!(
            control.enter_read().is_none(),
            "no read starts once interrupted"
        );
        control.resume();
        assert!(
            control.enter_read().is_some(),
            "reads start again once resumed"
        );
    }

    #[test]
    fn an_interrupt_without_a_read_in_progress_returns_at_once() {
        let thread = ReaderThread::spawn().unwrap();
        let started = Instant::now();
        thread.control().interrupt();
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(thread.control().enter_read().is_none());
        // Dropping the thread joins it: it must end though nothing runs on it.
        let dropping = Instant::now();
        drop(thread);
        assert!(dropping.elapsed() < Duration::from_millis(500));
    }
}

//! The TUN reader: a thread of its own that blocks in `read` on the TUN, classifies every
//! packet, answers the virtual IPs' packets there and then, and hands the rest to
//! WireGuard.
//!
//! A thread that blocks in `read`, rather than a task woken by the runtime, because a DNS
//! answer is one read and one write: as a task, each read also paid the reactor's
//! `epoll_wait`, the scheduler's round trip and a last read that found the device empty,
//! more CPU than the answer itself. WireGuard's packets cross to gotatun's task through a
//! [`Handoff`] that gotatun drains whole, so a burst read while gotatun was busy reaches it
//! as one batch.
//!
//! A thread blocked in `read` does not see a flag, so stopping it takes a signal: the
//! reader's handler does nothing, and is installed without `SA_RESTART`, so the `read`
//! returns `EINTR` and the loop sees the stop.

use std::io;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gotatun::packet::{Ip, Packet};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tun_rs::SyncDevice;

use crate::offload::{Read, SegmentReader, TUN_MAX_SEGMENTS};
use crate::rules::RulesReader;
use crate::tun::{FilterStats, TunWriter};

/// Packets waiting for WireGuard beyond which the reader waits too: a slow WireGuard then
/// holds packets back in the TUN's queue, as it did when it read the TUN itself, rather
/// than in memory here.
const MAX_PENDING: usize = 4 * TUN_MAX_SEGMENTS;

/// How often a stop repeats its signal while the reader has not ended: a signal that
/// lands just before the thread enters `read` is not seen there.
const STOP_KICK: Duration = Duration::from_millis(2);

/// How long a stop waits for the reader before leaving it behind, with an error line.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Packets on their way from the reader thread to gotatun's task.
#[derive(Default)]
struct Handoff {
    pending: Mutex<Pending>,
    /// Wakes gotatun's task when `pending` gets packets or an end.
    filled: Notify,
    /// Wakes the reader when `pending` has room again, or the stop is asked.
    drained: Condvar,
}

#[derive(Default)]
struct Pending {
    packets: Vec<Packet<Ip>>,
    /// Set once the reader has ended: the error that ended it, or none for a stop.
    ended: Option<io::Error>,
    /// Set by [`TunReader`]'s drop.
    stopping: bool,
}

impl Handoff {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding it leaves nothing half-done: a Vec push or a flag.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Moves `batch` to the pending packets, first waiting for room. False once the
    /// reader is asked to stop.
    fn push(&self, batch: &mut Vec<Packet<Ip>>) -> bool {
        let mut pending = self.lock();
        while pending.packets.len() >= MAX_PENDING && !pending.stopping {
            pending = self
                .drained
                .wait(pending)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if pending.stopping {
            return false;
        }
        pending.packets.append(batch);
        drop(pending);
        self.filled.notify_one();
        true
    }

    fn end(&self, error: io::Error) {
        self.lock().ended = Some(error);
        self.filled.notify_one();
    }
}

/// The reader thread, seen from [`crate::FilteredTun`]: its packets, and its stop.
///
/// Dropping it stops the thread and waits for it, so that the device goes with it.
pub(crate) struct TunReader {
    handoff: Arc<Handoff>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TunReader {
    /// Starts reading `device`, which must be in blocking mode. Services run on the thread
    /// inside the tokio runtime `spawn` is called in, if any, so that they may spawn tasks.
    pub(crate) fn spawn(
        device: Arc<SyncDevice>,
        rules: RulesReader,
        writer: TunWriter,
        stats: Arc<FilterStats>,
    ) -> io::Result<Self> {
        install_stop_handler()?;
        let handoff = Arc::new(Handoff::default());
        let stop = Arc::new(AtomicBool::new(false));
        let reading = ReadLoop {
            device,
            rules,
            writer,
            stats,
            segments: SegmentReader::new(),
            handoff: handoff.clone(),
            stop: stop.clone(),
        };
        let runtime = Handle::try_current().ok();
        let thread = std::thread::Builder::new()
            .name("tun-reader".into())
            .spawn(move || {
                let _runtime = runtime.as_ref().map(Handle::enter);
                reading.run();
            })?;
        Ok(Self {
            handoff,
            stop,
            thread: Some(thread),
        })
    }

    /// Waits for packets for WireGuard and moves all of them into `into` (which is empty);
    /// the error that ended the reader once it has ended.
    ///
    /// Waiting is the only await, so a cancelled call loses nothing.
    pub(crate) async fn next(&self, into: &mut Vec<Packet<Ip>>) -> io::Result<()> {
        loop {
            {
                let mut pending = self.handoff.lock();
                if !pending.packets.is_empty() {
                    std::mem::swap(&mut pending.packets, into);
                    drop(pending);
                    self.handoff.drained.notify_one();
                    return Ok(());
                }
                if let Some(error) = &pending.ended {
                    return Err(io::Error::new(error.kind(), error.to_string()));
                }
            }
            // A notification sent since the check above is kept as a permit, so this
            // returns at once rather than missing it.
            self.handoff.filled.notified().await;
        }
    }
}

impl Drop for TunReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.handoff.lock().stopping = true;
        self.handoff.drained.notify_one();
        let Some(thread) = self.thread.take() else {
            return;
        };
        let started = Instant::now();
        while !thread.is_finished() {
            if started.elapsed() > STOP_TIMEOUT {
                tracing::error!("the TUN reader did not stop; leaving it behind");
                return;
            }
            // SAFETY: the thread has not been joined or detached (its handle is here), so
            // its pthread_t is valid; the signal's handler is installed and does nothing.
            unsafe { libc::pthread_kill(thread.as_pthread_t(), stop_signal()) };
            std::thread::sleep(STOP_KICK);
        }
        let _ = thread.join();
    }
}

/// The signal that interrupts the reader's `read`: a real-time one, which nothing else in
/// tundns uses and which, unlike `SIGURG` or `SIGUSR1`, no library or user sends by habit.
fn stop_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// Installs the stop signal's handler, once per process: it does nothing, and without
/// `SA_RESTART` a `read` it interrupts returns `EINTR` rather than going on.
fn install_stop_handler() -> io::Result<()> {
    extern "C" fn interrupt(_: libc::c_int) {}
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        // SAFETY: a zeroed sigaction is valid, and the handler is async-signal-safe: it
        // does nothing.
        let result = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(stop_signal(), &action, std::ptr::null_mut())
        };
        if result == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL))
        }
    });
    installed.map_err(io::Error::from_raw_os_error)
}

/// The thread's side.
struct ReadLoop {
    device: Arc<SyncDevice>,
    rules: RulesReader,
    writer: TunWriter,
    stats: Arc<FilterStats>,
    segments: SegmentReader,
    handoff: Arc<Handoff>,
    stop: Arc<AtomicBool>,
}

impl ReadLoop {
    fn run(mut self) {
        let mut batch = Vec::with_capacity(TUN_MAX_SEGMENTS);
        while !self.stop.load(Ordering::Acquire) {
            match self.segments.read(&self.device) {
                Ok(read) => self.classify(read, &mut batch),
                // The stop signal, or another one delivered to this thread.
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // gotatun learns of it on its next read, and stops as it stopped on a
                    // failed read.
                    self.handoff.end(error);
                    return;
                }
            }
            if !batch.is_empty() && !self.handoff.push(&mut batch) {
                return;
            }
        }
    }

    /// Sends the services' packets of one read to their service and the others to
    /// `batch`. The read is classified against one load of the rule table, so a rule
    /// changed at runtime applies from the next read on.
    fn classify(&mut self, read: Read, batch: &mut Vec<Packet<Ip>>) {
        let count = match read {
            Read::Packets(count) => count,
            Read::Malformed => {
                FilterStats::add(&self.stats.dropped_offload, 1);
                return;
            }
        };
        let rules = self.rules.load();
        let mut diverted = 0;
        let mut malformed = 0;
        let mut passed = 0;
        for index in 0..count {
            let packet = self.segments.packet(index);
            if let Some(service) = rules.classify(packet) {
                diverted += 1;
                service.handle(packet, &self.writer);
                continue;
            }
            // A malformed packet must not end gotatun's reader task, so it is dropped here
            // rather than handed over.
            match self.segments.take(index).try_into_ip() {
                Ok(ip) => {
                    passed += 1;
                    batch.push(ip);
                }
                Err(_) => malformed += 1,
            }
        }
        FilterStats::add(&self.stats.diverted, diverted);
        FilterStats::add(&self.stats.dropped_malformed, malformed);
        FilterStats::add(&self.stats.passed, passed);
    }
}

//! The watchdog: a second, idle tundns process beside `tundns up` that gives the system back
//! if `up` dies without stopping (SIGKILL, the OOM killer, a crash), within moments and
//! without waiting for anyone to run `up` or `reset` again.
//!
//! `up` starts it first, before it changes anything (`tundns watchdog IFACE`, this same
//! program). The watchdog takes the interface's instance lock (refusing a second `up`, and
//! waiting out a watchdog still restoring after an earlier death), says `ready`, then blocks
//! reading a pipe from `up`. A clean stop writes [`STOPPED`] before `up` exits; any other
//! end of the pipe is `up`'s death, after which the watchdog takes back what the crash
//! journal records (policy rules, nftables tables, sysctl, the system resolver) and the
//! sockets `up` left, then lets go of the lock. The TUN, with its addresses and routes, goes
//! with `up`'s file descriptors.
//!
//! It ignores SIGINT, SIGTERM and SIGHUP, which reach it with `up` from a terminal or a
//! service manager: `up` stops on them and tells it. The kernel's SIGKILL of the whole
//! group, as at a power cut, leaves the journal for the next `up` or `tundns reset`.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use tundns_host::instance::InstanceLock;

use crate::supervise::TaskFailure;
use tundns_host::paths::SocketDirectories;

/// What `up` writes when it stopped cleanly and undid everything itself.
const STOPPED: &str = "stopped\n";

/// What the watchdog says once it holds the lock.
const READY: &str = "ready";

/// How long a new watchdog waits for an earlier one to finish restoring.
const RESTORE_PATIENCE: Duration = Duration::from_secs(10);

/// The watchdog of a running `up`.
pub struct Watchdog {
    child: Child,
    pipe: ChildStdin,
}

/// Why the watchdog could not be started.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("starting the watchdog: {0}")]
    Spawn(std::io::Error),
    /// The lock is taken: its message says by whom.
    #[error("{0}")]
    Refused(String),
}

impl Watchdog {
    /// Starts the watchdog of `interface` and waits until it holds the instance lock.
    pub fn spawn(interface: &str) -> Result<Self, WatchdogError> {
        // The real path, so the watchdog is named `tundns` like its parent.
        let program = std::env::current_exe().map_err(WatchdogError::Spawn)?;
        let mut child = Command::new(program)
            .args([
                "watchdog",
                "--parent",
                &std::process::id().to_string(),
                interface,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(WatchdogError::Spawn)?;
        let (Some(pipe), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            unreachable!("both were asked for as pipes");
        };
        let mut said = String::new();
        let mut stdout = BufReader::new(stdout);
        // The watchdog answers within RESTORE_PATIENCE, or exits, which ends the line.
        let read = stdout.read_line(&mut said);
        if said.trim_end() == READY {
            // Its end while the tunnel runs (someone killed it) leaves the tunnel without
            // its repair and the interface without its lock: the tunnel stops.
            std::thread::spawn(move || {
                let _ = stdout.read_to_end(&mut Vec::new());
                crate::supervise::report(TaskFailure {
                    task: "the watchdog",
                    reason: "it ended".to_string(),
                });
            });
            return Ok(Watchdog { child, pipe });
        }
        let _ = child.wait();
        match read {
            Err(error) => Err(WatchdogError::Spawn(error)),
            Ok(_) if said.trim().is_empty() => Err(WatchdogError::Refused(
                "the watchdog ended before it was ready".to_string(),
            )),
            Ok(_) => Err(WatchdogError::Refused(said.trim().to_string())),
        }
    }

    /// Everything is undone: the watchdog may go, and it waits for it to have let go of
    /// the lock.
    pub fn stand_down(mut self) {
        if let Err(error) = self.pipe.write_all(STOPPED.as_bytes()) {
            tracing::warn!(%error, "telling the watchdog");
        }
        drop(self.pipe);
        let _ = self.child.wait();
    }
}

/// `tundns watchdog --parent PID IFACE`: the watchdog's whole life. Returns its exit status.
pub fn watch(interface: &str, parent: u32) -> u8 {
    ignore_stop_signals();
    let mut lock = match InstanceLock::acquire(interface, RESTORE_PATIENCE) {
        Ok(lock) => lock,
        Err(error) => {
            say(&error.to_string());
            return 1;
        }
    };
    if let Err(error) = lock.guard(parent) {
        tracing::warn!(%error, "recording the running tundns in its lock file");
    }
    say(READY);
    let mut message = Vec::new();
    let _ = std::io::stdin().take(64).read_to_end(&mut message);
    if message == STOPPED.as_bytes() {
        return 0;
    }
    tracing::warn!(%interface, pid = parent, "tundns ended without stopping: restoring what it changed");
    wait_for_exit(parent);
    restore(interface);
    drop(lock);
    0
}

/// Takes back what the dead `up` left: the journal's records and its sockets.
fn restore(interface: &str) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "starting the runtime: nothing restored");
            return;
        }
    };
    let repair = runtime.block_on(tundns_host::repair(interface));
    match repair.dns {
        Ok(Some(restore)) => tracing::warn!(%interface, "{restore}"),
        Ok(None) => {}
        Err(error) => tracing::error!(%interface, %error, "restoring the system resolver"),
    }
    match repair.policy {
        Ok(Some(taken)) => tracing::warn!(
            %interface,
            rules = taken.rules,
            firewall_tables = taken.firewall_tables,
            sysctls = taken.sysctls,
            "took back the full tunnel's policy routing"
        ),
        Ok(None) => {}
        Err(error) => tracing::error!(%interface, %error, "taking back the policy routing"),
    }
    for socket in SocketDirectories::system().remove_stale_sockets(interface) {
        tracing::info!(socket = %socket.display(), "removed a socket the run left");
    }
}

/// Waits until `parent` has finished exiting: its files close (ending the pipe) before it
/// is a zombie, and until then the journal takes it for a running tundns (a panic unwinding
/// may take long). It has once the watchdog is handed to another parent.
fn wait_for_exit(parent: u32) {
    while nix::unistd::getppid().as_raw() as u32 == parent {
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

/// SIGINT, SIGTERM, SIGHUP and SIGQUIT come with `up`'s, from a terminal or a service
/// manager: `up` stops on them and tells the watchdog.
fn ignore_stop_signals() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    for stop in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        // SAFETY: SIG_IGN installs no handler code.
        if let Err(error) = unsafe { signal(stop, SigHandler::SigIgn) } {
            tracing::warn!(%error, signal = %stop, "could not ignore");
        }
    }
}

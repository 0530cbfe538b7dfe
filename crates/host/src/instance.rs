//! One tundns per interface: the instance lock, `/run/tundns/<iface>.lock`.
//!
//! Whoever may change the system for an interface holds it: `tundns up`'s watchdog for
//! the whole run (and, if `up` dies, until it has restored what `up` changed), and `tundns
//! reset` while it repairs. A second `up`, or a `reset` while the tunnel runs, is refused
//! with the pid of the running `up`; one that comes while a watchdog is still restoring
//! waits for it. The lock is the kernel's (`flock`), so it goes with its holder, however
//! that ends: no pid in a file is ever trusted to mean "still running".
//!
//! The file holds the pid of the `up` the lock guards, for the message. It stays after
//! the run: removing a lock file lets two runs lock two different files.

use std::fs::File;
use std::io::{self, Read as _, Seek as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::atomic_file::FileError;
use crate::journal::{live_tundns_start, private_directory};
use crate::paths::run_directory;

/// How often a waiting acquirer tries the lock again.
const RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// The lock of one interface, held until dropped.
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
    path: PathBuf,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A running `tundns up` holds it.
    #[error(
        "tundns (pid {pid}) runs {interface}; `tundns down {interface}` stops it and undoes its changes"
    )]
    Running { interface: String, pid: u32 },
    /// Its holder is no running `up` (a watchdog restoring, a `reset`) and did not let go in
    /// time.
    #[error("another tundns is still restoring {interface} ({path}); try again in a moment")]
    StillRestoring { interface: String, path: PathBuf },
    #[error(transparent)]
    File(#[from] FileError),
}

impl InstanceLock {
    /// The lock file of `interface`.
    pub fn path(interface: &str) -> PathBuf {
        run_directory().join(format!("{interface}.lock"))
    }

    /// Takes `interface`'s lock. A running `up` holding it is refused at once; any other
    /// holder (a watchdog restoring after its `up` died) is waited for, up to `patience`.
    pub fn acquire(interface: &str, patience: Duration) -> Result<Self, LockError> {
        let path = Self::path(interface);
        if let Some(directory) = path.parent() {
            private_directory(directory)?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(FileError::of("opening", &path))?;
        let deadline = Instant::now() + patience;
        loop {
            // SAFETY: flock on a descriptor this function owns; it touches nothing else.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(InstanceLock { file, path });
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::WouldBlock {
                return Err(FileError::of("locking", &path)(error).into());
            }
            if let Some(pid) = guarded_pid(&file).filter(|pid| live_tundns_start(*pid).is_some()) {
                return Err(LockError::Running {
                    interface: interface.to_string(),
                    pid,
                });
            }
            if Instant::now() >= deadline {
                return Err(LockError::StillRestoring {
                    interface: interface.to_string(),
                    path,
                });
            }
            std::thread::sleep(RETRY_INTERVAL);
        }
    }

    /// Waits until no one holds `interface`'s lock, up to `patience`: a stopping `up` has
    /// let go once its watchdog has, after every hook and undo. False if it is still held.
    pub fn wait_until_free(interface: &str, patience: Duration) -> bool {
        let path = Self::path(interface);
        let deadline = Instant::now() + patience;
        loop {
            let file = match std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
            {
                Ok(file) => file,
                Err(_) => return true,
            };
            // SAFETY: flock on a descriptor this function owns; it touches nothing else.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(RETRY_INTERVAL);
        }
    }

    /// Records `pid` as the `up` this lock guards, for others' messages.
    pub fn guard(&mut self, pid: u32) -> Result<(), FileError> {
        let failed = FileError::of("writing", &self.path);
        self.file
            .set_len(0)
            .and_then(|()| self.file.rewind())
            .and_then(|()| writeln!(self.file, "{pid}"))
            .map_err(failed)
    }
}

/// The pid a lock file names, if it names one.
fn guarded_pid(mut file: &File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

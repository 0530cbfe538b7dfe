//! The crash journal: each change tundns makes to the system is recorded here before it is
//! made, so that the next run of the interface, or `tundns reset`, can take back what a run
//! that could not stop cleanly (SIGKILL, a crash, a power cut) left behind (`repair`, one
//! entry point for every kind of record).
//!
//! - **One format.** A record is one JSON object: a header ([`Record`]: the `format` of its
//!   kind, the interface, the pid of the tundns that wrote it and, for changes a reboot
//!   undoes, its network namespace) followed by its [`Entry`]'s own fields. It is written
//!   whole or not at all, root-only ([`write_atomically`]).
//! - **One location policy.** One file per interface and kind, `<iface>.<extension>`, in a
//!   directory chosen by how long the change lives ([`Lifetime`]): the kernel's state (policy
//!   rules, nftables, sysctl) goes with a reboot, and so does `/run/tundns`, where its
//!   record lives: a record that outlived its changes could match another tunnel's. A
//!   rewritten file survives a reboot, and so does `/var/lib/tundns`, so that it can still
//!   be given back after one.
//! - **One check** before a record is acted on ([`left_behind`]): the file must be root's
//!   alone (mode 0600, not a symbolic link, in a directory no one else may write), tundns's,
//!   of this kind and interface; the tundns that wrote it must not be running any more (the
//!   same pid *and* start time, since the same boot); and a record of kernel state must come
//!   from this network namespace. Anything else is refused and left alone, and so is what
//!   it records: tundns never acts on, nor overwrites, a record it cannot vouch for.
//! - **Stale records are retired, not obeyed for ever.** A record of kernel state from
//!   before a reboot lists changes the reboot took back; one whose changes someone else has
//!   since replaced (a resolv.conf that dhclient rewrote) can never be undone. Either is
//!   moved aside to `<file>.retired`, kept for people to read, with a log line, and the run
//!   goes on ([`Journal::retire`]).

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::atomic_file::{FileError, write_atomically};
use crate::paths::{run_directory, state_directory};

/// How long a recorded change lives, which decides where its record is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Kernel state, gone after a reboot: recorded under [`run_directory`].
    UntilReboot,
    /// Files, which survive a reboot: recorded under [`state_directory`].
    Persistent,
}

impl Lifetime {
    fn directory(self) -> PathBuf {
        match self {
            Lifetime::UntilReboot => run_directory(),
            Lifetime::Persistent => state_directory(),
        }
    }
}

/// One kind of record, and how it is named and explained.
#[derive(Debug)]
pub struct Kind {
    /// What its records carry as `format`; anything else is not tundns's to touch.
    pub format: &'static str,
    /// What it is called in messages: "DNS state".
    pub name: &'static str,
    /// The file name after the interface: `<iface>.<extension>`.
    pub extension: &'static str,
    pub lifetime: Lifetime,
    /// What its changes are, in messages: "DNS change".
    pub changes: &'static str,
    /// What stays as it is when a record is refused: "the system resolver".
    pub left_alone: &'static str,
    /// What a person checks before removing a refused record.
    pub check: &'static str,
}

impl Kind {
    /// The record of `interface`'s changes of this kind.
    pub fn path(&self, interface: &str) -> PathBuf {
        self.lifetime
            .directory()
            .join(format!("{interface}.{}", self.extension))
    }
}

/// What one kind of record holds beside the header.
pub trait Entry: Serialize + DeserializeOwned {
    const KIND: &'static Kind;

    /// What the format cannot say: `Err(reason)` for an entry of `interface`'s not to act
    /// on. Everything an undo would touch (paths, names, values) is checked here: a record
    /// names only what tundns itself would have changed for that interface.
    fn validate(&self, _interface: &str) -> Result<(), String> {
        Ok(())
    }
}

/// A record as the file holds it: the header, then the entry's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record<E> {
    /// The kind's [`Kind::format`].
    pub format: String,
    /// The interface whose changes these are. Policy records written before the journal
    /// was shared do not name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The tundns that made the changes.
    pub pid: u32,
    /// The network namespace they were made in (the inode of its `/proc/*/ns/net`), for
    /// changes a reboot undoes: an inode names a namespace only until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    /// The boot the changes were made in (`/proc/sys/kernel/random/boot_id`): after a
    /// reboot, the pid names another process and kernel state is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// When the writer started, in clock ticks since boot (`/proc/<pid>/stat`): a pid reused
    /// by a later tundns is not the writer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<u64>,
    #[serde(flatten)]
    pub entry: E,
}

impl<E: Entry> Record<E> {
    /// A record of this process's changes to `interface`.
    pub fn new(interface: &str, entry: E) -> Self {
        Record {
            format: E::KIND.format.to_string(),
            interface: Some(interface.to_string()),
            pid: std::process::id(),
            netns: match E::KIND.lifetime {
                Lifetime::UntilReboot => current_netns(),
                Lifetime::Persistent => None,
            },
            boot_id: current_boot_id(),
            started: live_tundns_start(std::process::id()),
            entry,
        }
    }

    /// Whether the tundns that wrote this record is still running.
    fn writer(&self) -> Writer {
        if let (Some(recorded), Some(now)) = (&self.boot_id, current_boot_id())
            && *recorded != now
        {
            return Writer::BeforeReboot;
        }
        // This process is no other run, whatever the file says: a container's tundns is pid
        // 1 in every run.
        if self.pid == std::process::id() {
            return Writer::Gone;
        }
        match live_tundns_start(self.pid) {
            Some(started) if self.started.is_none_or(|recorded| recorded == started) => {
                Writer::Running
            }
            _ => Writer::Gone,
        }
    }

    /// The file's text: pretty JSON, for the people who may have to read it.
    pub fn to_json(&self) -> String {
        // Strings, numbers and lists of them always serialize.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Reads a record's bytes: only a well-formed record of `interface`, in the format this
    /// tundns writes, is accepted; `Err` says why not.
    pub fn parse(bytes: &[u8], interface: &str) -> Result<Self, String> {
        let kind = E::KIND;
        let record: Self = serde_json::from_slice(bytes)
            .map_err(|error| format!("not a {} file tundns wrote ({error})", kind.name))?;
        if record.format != kind.format {
            return Err(format!(
                "not a {} file tundns wrote (format {:?}, expected {:?})",
                kind.name, record.format, kind.format
            ));
        }
        if let Some(other) = record.interface.as_deref()
            && other != interface
        {
            return Err(format!("it is for interface {other:?}, not {interface:?}"));
        }
        record.entry.validate(interface)?;
        Ok(record)
    }
}

/// What became of the tundns that wrote a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    Running,
    /// Ended (or another process has its pid now), in this boot.
    Gone,
    /// From an earlier boot.
    BeforeReboot,
}

/// A record of changes tundns must not act on, or could not read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Not tundns's, not this interface's, or not from this network namespace.
    #[error(
        "{}: {reason}; it was left alone, and so was {}. Check {}, then remove the file",
        path.display(), kind.left_alone, kind.check
    )]
    Refused {
        path: PathBuf,
        reason: String,
        kind: &'static Kind,
    },
    /// The tundns that wrote it still runs, and may still undo its changes itself.
    #[error("tundns (pid {pid}) still runs {interface} and owns its {}; stop it first", kind.changes)]
    StillRunning {
        interface: String,
        pid: u32,
        kind: &'static Kind,
    },
    #[error(transparent)]
    File(#[from] FileError),
}

/// A record of this process's changes, written before each change and removed once they
/// are undone.
#[derive(Debug)]
pub struct Journal<E> {
    interface: String,
    path: PathBuf,
    record: Record<E>,
    /// Whether the file is this record's: written by this process or found left behind.
    on_disk: bool,
}

impl<E: Entry> Journal<E> {
    /// A record of `interface`'s changes, not written yet.
    pub fn new(interface: &str, entry: E) -> Self {
        Journal {
            interface: interface.to_string(),
            path: E::KIND.path(interface),
            record: Record::new(interface, entry),
            on_disk: false,
        }
    }

    /// The interface whose changes these are.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Where the record is written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn entry(&self) -> &E {
        &self.record.entry
    }

    pub fn entry_mut(&mut self) -> &mut E {
        &mut self.record.entry
    }

    /// Writes the record whole, root-only, in a root-only directory.
    pub fn write(&mut self) -> Result<(), FileError> {
        if let Some(directory) = self.path.parent() {
            private_directory(directory)?;
        }
        write_atomically(&self.path, self.record.to_json().as_bytes(), 0o600)?;
        self.on_disk = true;
        Ok(())
    }

    /// Moves the record aside to `<file>.retired`, replacing an older one there, when what
    /// it records can no longer be undone: kept for people to read, out of the way of the
    /// next run. Returns where it went.
    pub fn retire(&mut self) -> Result<PathBuf, FileError> {
        let retired = retired_path(&self.path);
        std::fs::rename(&self.path, &retired).map_err(FileError::of("retiring", &self.path))?;
        self.on_disk = false;
        Ok(retired)
    }

    /// Removes the file, once what it records is undone. A file this record never wrote
    /// is not its to remove.
    pub fn remove(&mut self) -> Result<(), FileError> {
        if !self.on_disk {
            return Ok(());
        }
        match std::fs::remove_file(&self.path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                Err(FileError::of("removing", &self.path)(error))
            }
            _ => {
                self.on_disk = false;
                Ok(())
            }
        }
    }
}

/// The record an earlier run of `interface` left, if there is one and it passes the
/// check: tundns's, of this kind and interface, its writer gone, and for kernel state, from
/// this network namespace.
pub fn left_behind<E: Entry>(interface: &str) -> Result<Option<Journal<E>>, JournalError> {
    let kind = E::KIND;
    let path = kind.path(interface);
    let refuse = |reason: String| JournalError::Refused {
        path: path.clone(),
        reason,
        kind,
    };
    let bytes = match read_private(&path) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(None),
        Err(PrivateReadError::Unsafe(reason)) => return Err(refuse(reason)),
        Err(PrivateReadError::Io(error)) => {
            return Err(FileError::of("reading", &path)(error).into());
        }
    };
    let record = Record::<E>::parse(&bytes, interface).map_err(refuse)?;
    let writer = record.writer();
    let mut journal = Journal {
        interface: interface.to_string(),
        path: path.clone(),
        record,
        on_disk: true,
    };
    match writer {
        Writer::Running => {
            return Err(JournalError::StillRunning {
                interface: interface.to_string(),
                pid: journal.record.pid,
                kind,
            });
        }
        Writer::BeforeReboot if kind.lifetime == Lifetime::UntilReboot => {
            let retired = journal.retire()?;
            tracing::warn!(
                record = %retired.display(),
                "a {} from before a reboot, which took back its {}s: retired",
                kind.name,
                kind.changes
            );
            return Ok(None);
        }
        Writer::BeforeReboot | Writer::Gone => {}
    }
    if kind.lifetime == Lifetime::UntilReboot
        && (journal.record.netns.is_none() || journal.record.netns != current_netns())
    {
        // A named namespace's directory is that name's: a record of another namespace there
        // is from one of the same name deleted since, whose kernel state went with it.
        if crate::paths::network_namespace().is_some_and(|name| !name.starts_with("netns-")) {
            let retired = journal.retire()?;
            tracing::warn!(
                record = %retired.display(),
                "a {} from a namespace of this name deleted since, which took its {}s with it: retired",
                kind.name,
                kind.changes
            );
            return Ok(None);
        }
        return Err(refuse(format!(
            "left by a tundns in another network namespace, whose {} it lists",
            kind.changes
        )));
    }
    Ok(Some(journal))
}

/// Where a record, or a backup, goes when it is retired.
pub fn retired_path(path: &Path) -> PathBuf {
    let mut retired = path.as_os_str().to_owned();
    retired.push(".retired");
    PathBuf::from(retired)
}

/// Creates `directory` (0700) if need be, or makes an existing one of ours 0700: only
/// this user may add, replace or read what is in it.
pub fn private_directory(directory: &Path) -> Result<(), FileError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(directory)
        .map_err(FileError::of("creating", directory))?;
    let metadata =
        std::fs::symlink_metadata(directory).map_err(FileError::of("checking", directory))?;
    if !metadata.is_dir() || metadata.uid() != nix::unistd::geteuid().as_raw() {
        return Err(FileError::of("checking", directory)(io::Error::other(
            "not a directory of this user's",
        )));
    }
    if metadata.mode() & 0o077 != 0 {
        std::fs::set_permissions(directory, std::fs::Permissions::from_mode(0o700))
            .map_err(FileError::of("restricting", directory))?;
    }
    Ok(())
}

/// A record that could not be read, or must not be trusted.
enum PrivateReadError {
    Unsafe(String),
    Io(io::Error),
}

/// The largest record read: a few rules and a resolv.conf fit many times over.
const MAX_RECORD_BYTES: u64 = 1 << 20;

/// Reads a record only if no one but this user (root) can have written it: a regular
/// file, not a symbolic link, of this user's, mode 0600 or stricter, in a directory of
/// this user's that no one else may write to. `None` when there is no file.
fn read_private(path: &Path) -> Result<Option<Vec<u8>>, PrivateReadError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let me = nix::unistd::geteuid().as_raw();
    let directory = path.parent().unwrap_or(Path::new("/"));
    match std::fs::symlink_metadata(directory) {
        Ok(metadata) => {
            if !metadata.is_dir() || metadata.uid() != me || metadata.mode() & 0o022 != 0 {
                return Err(PrivateReadError::Unsafe(format!(
                    "its directory {} may be written by others (owner uid {}, mode {:o}); \
                     it must be root's, mode 0700",
                    directory.display(),
                    metadata.uid(),
                    metadata.mode() & 0o7777
                )));
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(PrivateReadError::Io(error)),
    }
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) if error.raw_os_error() == Some(libc::ELOOP) => {
            return Err(PrivateReadError::Unsafe(
                "it is a symbolic link, which tundns never writes".to_string(),
            ));
        }
        Err(error) => return Err(PrivateReadError::Io(error)),
    };
    let metadata = file.metadata().map_err(PrivateReadError::Io)?;
    if !metadata.is_file() || metadata.uid() != me || metadata.mode() & 0o077 != 0 {
        return Err(PrivateReadError::Unsafe(format!(
            "it is not a private file of root's (owner uid {}, mode {:o}); tundns writes its \
             records mode 0600",
            metadata.uid(),
            metadata.mode() & 0o7777
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(PrivateReadError::Io)?;
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Err(PrivateReadError::Unsafe(format!(
            "larger than {MAX_RECORD_BYTES} bytes"
        )));
    }
    Ok(Some(bytes))
}

/// The network namespace this process runs in.
fn current_netns() -> Option<u64> {
    std::fs::metadata("/proc/self/ns/net")
        .ok()
        .map(|meta| meta.ino())
}

/// This boot's ID; `None` where `/proc` does not say.
fn current_boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string()).filter(|id| !id.is_empty())
}

/// When `pid` started (clock ticks since boot), if it is a live (not zombie) tundns.
pub fn live_tundns_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ... starttime(22nd) ...": comm may hold spaces and parentheses, so
    // split at the last ')'. After it, the state is field 3.
    let (head, tail) = stat.rsplit_once(')')?;
    let comm = head.split_once('(').map(|(_, comm)| comm)?;
    let mut fields = tail.split_whitespace();
    let state = fields.next()?;
    if comm != "tundns" || matches!(state, "Z" | "X") {
        return None;
    }
    fields.nth(22 - 4)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_not_a_running_tundns() {
        assert_eq!(live_tundns_start(std::process::id()), None);
        assert_eq!(live_tundns_start(u32::MAX), None);
    }

    /// A fresh directory of this user's, mode 0700.
    fn private_temp(test: &str) -> PathBuf {
        let directory =
            std::env::temp_dir().join(format!("tundns-journal-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        private_directory(&directory).unwrap();
        directory
    }

    fn unsafe_reason(path: &Path) -> String {
        match read_private(path) {
            Err(PrivateReadError::Unsafe(reason)) => reason,
            Err(PrivateReadError::Io(error)) => panic!("{error}"),
            Ok(bytes) => panic!("read {bytes:?}"),
        }
    }

    #[test]
    fn only_a_private_file_in_a_private_directory_is_read() {
        use std::os::unix::fs::PermissionsExt as _;
        let directory = private_temp("private");
        let record = directory.join("wg0.dns-state");
        assert!(read_private(&record).ok().unwrap().is_none());
        write_atomically(&record, b"{}", 0o600).unwrap();
        assert_eq!(read_private(&record).ok().unwrap().unwrap(), b"{}");

        std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(unsafe_reason(&record).contains("mode 644"));
        std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o600)).unwrap();

        let link = directory.join("wg1.dns-state");
        std::os::unix::fs::symlink(&record, &link).unwrap();
        assert!(unsafe_reason(&link).contains("symbolic link"));

        std::fs::set_permissions(&directory, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(unsafe_reason(&record).contains("may be written by others"));
        // Writing a record takes the directory back to 0700.
        private_directory(&directory).unwrap();
        assert!(read_private(&record).is_ok());
        std::fs::remove_dir_all(&directory).unwrap();
    }

    /// A process named `tundns` (a copy of `sleep`), so the checks on the writer meet a
    /// live one.
    fn a_running_tundns(test: &str) -> (std::process::Child, PathBuf) {
        let directory = private_temp(test);
        let program = directory.join("tundns");
        std::fs::copy("/bin/sleep", &program).unwrap();
        let child = std::process::Command::new(&program)
            .arg("30")
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        // exec has replaced the fork's name once /proc shows `tundns`.
        while live_tundns_start(child.id()).is_none() {
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        (child, directory)
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    struct Nothing {}

    static NOTHING: Kind = Kind {
        format: "tundns-test/1",
        name: "test state",
        extension: "test-state",
        lifetime: Lifetime::UntilReboot,
        changes: "test change",
        left_alone: "nothing",
        check: "nothing",
    };

    impl Entry for Nothing {
        const KIND: &'static Kind = &NOTHING;
    }

    #[test]
    fn a_writer_is_running_only_with_its_pid_start_time_and_boot() {
        let (mut child, directory) = a_running_tundns("writer");
        let record = Record {
            pid: child.id(),
            started: live_tundns_start(child.id()),
            ..Record::new("wg0", Nothing {})
        };
        assert_eq!(record.writer(), Writer::Running);
        // The same pid, started at another time: reused by another process.
        let reused = Record {
            started: record.started.map(|started| started + 1),
            ..record.clone()
        };
        assert_eq!(reused.writer(), Writer::Gone);
        let rebooted = Record {
            boot_id: Some("00000000-0000-0000-0000-000000000000".to_string()),
            ..record.clone()
        };
        assert_eq!(rebooted.writer(), Writer::BeforeReboot);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(record.writer(), Writer::Gone);
        std::fs::remove_dir_all(&directory).unwrap();
    }
}

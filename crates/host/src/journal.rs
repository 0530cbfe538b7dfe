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
//! - **One check** before a record is acted on ([`left_behind`]): the file must be tundns's,
//!   of this kind and interface; the tundns that wrote it must not be running any more; and
//!   a record of kernel state must come from this network namespace. Anything else is
//!   refused and left alone, and so is what it records: tundns never acts on, nor
//!   overwrites, a record it cannot vouch for.

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::atomic_file::{FileError, write_atomically};
use crate::paths::{RUN_DIRECTORY, STATE_DIRECTORY};

/// How long a recorded change lives, which decides where its record is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Kernel state, gone after a reboot: recorded under [`RUN_DIRECTORY`].
    UntilReboot,
    /// Files, which survive a reboot: recorded under [`STATE_DIRECTORY`].
    Persistent,
}

impl Lifetime {
    fn directory(self) -> &'static Path {
        Path::new(match self {
            Lifetime::UntilReboot => RUN_DIRECTORY,
            Lifetime::Persistent => STATE_DIRECTORY,
        })
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

    /// What the format cannot say: `Err(reason)` for an entry not to act on.
    fn validate(&self) -> Result<(), String> {
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
            entry,
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
        record.entry.validate()?;
        Ok(record)
    }
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
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(directory)
                .map_err(FileError::of("creating", directory))?;
        }
        write_atomically(&self.path, self.record.to_json().as_bytes(), 0o600)?;
        self.on_disk = true;
        Ok(())
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
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(FileError::of("reading", &path)(error).into()),
    };
    let refuse = |reason: String| JournalError::Refused {
        path: path.clone(),
        reason,
        kind,
    };
    let record = Record::<E>::parse(&bytes, interface).map_err(refuse)?;
    // This process is no other run, whatever the file says: a container's tundns is pid 1
    // in every run.
    if record.pid != std::process::id() && process_is_tundns(record.pid) {
        return Err(JournalError::StillRunning {
            interface: interface.to_string(),
            pid: record.pid,
            kind,
        });
    }
    if kind.lifetime == Lifetime::UntilReboot
        && (record.netns.is_none() || record.netns != current_netns())
    {
        return Err(refuse(format!(
            "left by a tundns in another network namespace, whose {} it lists",
            kind.changes
        )));
    }
    Ok(Some(Journal {
        interface: interface.to_string(),
        path,
        record,
        on_disk: true,
    }))
}

/// The network namespace this process runs in.
fn current_netns() -> Option<u64> {
    std::fs::metadata("/proc/self/ns/net")
        .ok()
        .map(|meta| meta.ino())
}

/// True when `pid` is a live (not zombie) tundns process.
fn process_is_tundns(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) state ...": comm may hold spaces and parentheses, so split at the last ')'.
    let Some((head, tail)) = stat.rsplit_once(')') else {
        return false;
    };
    let comm = head
        .split_once('(')
        .map(|(_, comm)| comm)
        .unwrap_or_default();
    let state = tail.split_whitespace().next().unwrap_or_default();
    comm == "tundns" && !matches!(state, "Z" | "X")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_not_a_running_tundns() {
        assert!(!process_is_tundns(std::process::id()));
        assert!(!process_is_tundns(u32::MAX));
    }
}

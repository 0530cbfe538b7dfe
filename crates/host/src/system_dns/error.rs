//! Why the system resolver could not be changed, given back or repaired.

use std::io;
use std::path::PathBuf;

use crate::atomic_file::FileError;
use crate::command_line::CommandError;
use crate::journal::JournalError;

/// A failure to change, restore or repair the system resolver.
#[derive(Debug, thiserror::Error)]
pub enum SystemDnsError {
    /// A journal record this run must not act on, or could not read.
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "this network namespace shares the host's /etc/resolv.conf; tundns will not point the host \
         at a proxy it cannot reach (give the namespace its own: /etc/netns/<ns>/resolv.conf)"
    )]
    SharedWithHost,
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Command(#[from] CommandError),
}

impl From<FileError> for SystemDnsError {
    fn from(
        FileError {
            action,
            path,
            source,
        }: FileError,
    ) -> Self {
        SystemDnsError::Io {
            action,
            path,
            source,
        }
    }
}

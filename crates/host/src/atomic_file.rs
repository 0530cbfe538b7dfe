//! Writing a file whole or not at all: the state files that let the next run undo what a
//! crashed one changed, and the backups they point at. A crash mid-write leaves either the
//! old file or the new one, never a truncated one.

use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// A file operation that failed: what was being done, to which file.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FileError {
    /// The error of `action` on `path`, for `map_err`.
    pub fn of(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FileError {
        let path = path.to_path_buf();
        move |source| FileError {
            action,
            path,
            source,
        }
    }
}

/// Writes `contents` to `path` with permissions `mode`: to a temporary name beside it,
/// synced, then renamed over it.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(FileError::of("creating", &temporary))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(FileError::of("writing", &temporary))?;
    std::fs::rename(&temporary, path).map_err(FileError::of("renaming into", path))
}

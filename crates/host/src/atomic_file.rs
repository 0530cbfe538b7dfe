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
/// synced, then renamed over it, and the directory synced so the rename outlives a power
/// cut too. A failed write leaves no temporary file behind.
///
/// The temporary file is created new (`O_EXCL|O_NOFOLLOW`): whatever was at its name (a
/// crashed write's leftover, or a link planted there) is removed first, never written
/// through.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    match std::fs::remove_file(&temporary) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            return Err(FileError::of("removing", &temporary)(error));
        }
        _ => {}
    }
    let written = write_synced(&temporary, contents, mode).and_then(|()| {
        std::fs::rename(&temporary, path).map_err(FileError::of("renaming into", path))
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written?;
    let directory = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(directory)
        .and_then(|directory| directory.sync_all())
        .map_err(FileError::of("syncing the directory of", path))
}

fn write_synced(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(path)
        .map_err(FileError::of("creating", path))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(FileError::of("writing", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_write_replaces_the_file_whole_with_its_mode_and_leaves_no_temporary() {
        let directory = std::env::temp_dir().join(format!("tundns-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("state");
        write_atomically(&path, b"first", 0o600).unwrap();
        write_atomically(&path, b"second", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!directory.join("state.tmp").exists());
        // A rename that cannot happen (the target is a directory) leaves no temporary either.
        let blocked = directory.join("blocked");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        assert!(write_atomically(&blocked, b"x", 0o600).is_err());
        assert!(!directory.join("blocked.tmp").exists());
        // A link planted at the temporary name is removed, not written through.
        let target = directory.join("target");
        std::fs::write(&target, b"untouched").unwrap();
        std::os::unix::fs::symlink(&target, directory.join("state.tmp")).unwrap();
        write_atomically(&path, b"third", 0o600).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"untouched");
        assert_eq!(std::fs::read(&path).unwrap(), b"third");
        std::fs::remove_dir_all(&directory).unwrap();
    }
}

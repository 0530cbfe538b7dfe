//! The one error type, and the warnings a valid file may still carry.

use std::fmt;
use std::path::{Path, PathBuf};

/// Why a config file was rejected.
///
/// `Display` is `path:line: message`, or `path: message` for problems that belong
/// to the whole file (it cannot be read, it has no `[Interface]`, its name is not a
/// valid interface name). Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    path: PathBuf,
    line: Option<usize>,
    message: String,
}

impl ConfigError {
    /// An error at a line of a file, for callers that check what this crate keeps
    /// unvalidated (a [`crate::Spanned`] `Record`, a `HostsFile`'s contents) and want
    /// the same `path:line: message` form. `line` is 1-based.
    pub fn at(path: impl AsRef<Path>, line: usize, message: impl Into<String>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
            line: Some(line),
            message: message.into(),
        }
    }

    /// An error about a file as a whole, with no line to point at.
    pub fn for_file(path: &Path, message: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            line: None,
            message: message.into(),
        }
    }

    /// The file the error is about, as it was given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The 1-based line, when the error belongs to one line.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The message without the `path:line: ` prefix.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Something accepted but worth logging, such as `AllowedIPs` with host bits set
/// (masked, as `wg` does). `Display` is `path:line: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    path: PathBuf,
    line: usize,
    message: String,
}

impl ConfigWarning {
    pub(crate) fn new(path: &Path, line: usize, message: String) -> Self {
        Self {
            path: path.to_path_buf(),
            line,
            message,
        }
    }

    /// The 1-based line the warning is about.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The message without the `path:line: ` prefix.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
    }
}

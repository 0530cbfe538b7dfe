//! The error of a change to links, routes, policy rules and sysctl.

/// A failed system change, with what was being attempted.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// The kernel refused a netlink request.
    #[error("{action}: {source}")]
    Netlink {
        action: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// The netlink socket could not be opened.
    #[error("opening a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    /// The interface vanished between its creation and its configuration.
    #[error("interface {0} not found")]
    NoSuchInterface(String),
    /// Every candidate routing table for a full tunnel already holds routes.
    #[error("no empty routing table from {0} on for the full tunnel; set FwMark to choose one")]
    NoFreeTable(u32),
    /// A sysctl could not be read or written.
    #[error("setting {path}: {source}")]
    Sysctl {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The record of the changes to undo after a crash could not be written.
    #[error(transparent)]
    State(#[from] crate::atomic_file::FileError),
    /// A record of an earlier run's changes this run must not act on, or overwrite.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
}

/// The error of the netlink request `action`, for `map_err`.
pub(crate) fn failed(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> SystemError {
    let action = action.into();
    move |source| SystemError::Netlink { action, source }
}

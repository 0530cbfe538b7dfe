//! The places and numbers tundns shares with the rest of the system, defined once.

use std::path::{Path, PathBuf};

/// tundns's runtime directory, emptied by a reboot: the control sockets and the journal of
/// changes a reboot undoes anyway (`/run/tundns/<iface>.sock`, `<iface>.policy-state`).
pub const RUN_DIRECTORY: &str = "/run/tundns";

/// tundns's state directory, kept across reboots: the journal of changes that outlive one
/// (`/var/lib/tundns/<iface>.dns-state` for a rewritten resolv.conf).
pub const STATE_DIRECTORY: &str = "/var/lib/tundns";

/// Where gotatun, like wireguard-go, puts the UAPI sockets, as `wg` expects them.
pub const UAPI_DIRECTORY: &str = "/var/run/wireguard";

/// The kernel's main routing table, where wg-quick's `Table = auto` puts routes.
pub const MAIN_TABLE: u32 = 254;

/// The UAPI socket of `interface`.
pub fn uapi_socket_path(interface: &str) -> PathBuf {
    Path::new(UAPI_DIRECTORY).join(format!("{interface}.sock"))
}

/// Where one run keeps its sockets: the system's directories for `tundns up`, and one
/// under `$XDG_RUNTIME_DIR` for the rootless mode, which cannot write those.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketDirectories {
    /// The control sockets, `<iface>.sock`.
    pub control: PathBuf,
    /// The UAPI sockets, `<iface>.sock`.
    pub uapi: PathBuf,
}

impl SocketDirectories {
    /// `/run/tundns` and `/var/run/wireguard`, where `wg` finds the UAPI socket.
    pub fn system() -> Self {
        Self {
            control: PathBuf::from(RUN_DIRECTORY),
            uapi: PathBuf::from(UAPI_DIRECTORY),
        }
    }

    /// `$XDG_RUNTIME_DIR/tundns` and its `wireguard` subdirectory; `None` without
    /// `XDG_RUNTIME_DIR`.
    pub fn user() -> Option<Self> {
        let runtime =
            std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| Path::new(dir).is_absolute())?;
        let control = Path::new(&runtime).join("tundns");
        Some(Self {
            uapi: control.join("wireguard"),
            control,
        })
    }

    /// Every directory a control socket may be in: the system's, then the user's.
    pub fn all() -> Vec<Self> {
        std::iter::once(Self::system())
            .chain(Self::user())
            .collect()
    }

    pub fn control_socket(&self, interface: &str) -> PathBuf {
        self.control.join(format!("{interface}.sock"))
    }

    pub fn uapi_socket(&self, interface: &str) -> PathBuf {
        self.uapi.join(format!("{interface}.sock"))
    }
}

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

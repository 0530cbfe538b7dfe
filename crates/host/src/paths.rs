//! The places and numbers tundns shares with the rest of the system, defined once.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// tundns's runtime directory, emptied by a reboot: the control sockets and the journal of
/// changes a reboot undoes anyway (`/run/tundns/<iface>.sock`, `<iface>.policy-state`).
pub const RUN_DIRECTORY: &str = "/run/tundns";

/// tundns's state directory, kept across reboots: the journal of changes that outlive one
/// (`/var/lib/tundns/<iface>.dns-state` for a rewritten resolv.conf).
pub const STATE_DIRECTORY: &str = "/var/lib/tundns";

/// Where `ip netns add` names network namespaces.
const NAMED_NAMESPACES: &str = "/run/netns";

/// The network namespace this process runs in, when it is not the one pid 1 runs in: its
/// `ip netns` name, or `netns-<inode>` for an unnamed one. `None` in pid 1's namespace (the
/// host's, or a container's own, whose `/run` and `/var` are its own too).
///
/// Tunnels in two namespaces may use the same interface name, so everything tundns keeps
/// per interface (lock, control socket, crash journal, resolv.conf backup) goes in a
/// directory of the namespace's ([`run_directory`], [`state_directory`]). Only the UAPI
/// socket stays where `wg` looks for it.
pub fn network_namespace() -> Option<&'static str> {
    static NAMESPACE: OnceLock<Option<String>> = OnceLock::new();
    NAMESPACE.get_or_init(find_network_namespace).as_deref()
}

fn find_network_namespace() -> Option<String> {
    let identity = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .map(|metadata| (metadata.dev(), metadata.ino()))
    };
    let mine = identity(Path::new("/proc/self/ns/net"))?;
    // A name `ip netns` gave it first: pid 1's namespace may not be readable, even by root.
    let named = std::fs::read_dir(NAMED_NAMESPACES)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .find(|entry| identity(&entry.path()) == Some(mine))
        .and_then(|entry| entry.file_name().into_string().ok())
        .filter(|name| !name.is_empty() && !name.starts_with('.') && !name.contains('/'));
    if named.is_some() {
        return named;
    }
    match identity(Path::new("/proc/1/ns/net")) {
        Some(init) if init != mine => Some(format!("netns-{}", mine.1)),
        // Pid 1's, or one that cannot be told apart from it.
        _ => None,
    }
}

/// `base`, or its directory for this process's network namespace.
fn scoped(base: &str) -> PathBuf {
    match network_namespace() {
        None => PathBuf::from(base),
        Some(namespace) => Path::new(base).join("netns").join(namespace),
    }
}

/// [`RUN_DIRECTORY`], or its directory for this network namespace.
pub fn run_directory() -> PathBuf {
    scoped(RUN_DIRECTORY)
}

/// [`STATE_DIRECTORY`], or its directory for this network namespace.
pub fn state_directory() -> PathBuf {
    scoped(STATE_DIRECTORY)
}

/// The rootless mode's state directory, this user's: `$XDG_STATE_HOME/tundns`, else
/// `$HOME/.local/state/tundns` (the XDG base directory default); `None` when neither is
/// an absolute path.
pub fn user_state_directory() -> Option<PathBuf> {
    let state_home = absolute_directory("XDG_STATE_HOME")
        .or_else(|| absolute_directory("HOME").map(|home| home.join(".local").join("state")))?;
    Some(state_home.join("tundns"))
}

/// The directory the environment variable `name` holds, when it is an absolute path (the
/// XDG base directory rule: a relative one is ignored).
fn absolute_directory(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
}

/// Where gotatun, like wireguard-go, puts the UAPI sockets, as `wg` expects them.
pub const UAPI_DIRECTORY: &str = "/var/run/wireguard";

/// Where `tundns up wg0` looks for `wg0.conf`, in order: tundns's own, then wg-quick's.
pub const CONFIG_DIRECTORIES: [&str; 2] = ["/etc/tundns", "/etc/wireguard"];

/// The config file `argument` names: a path as given when it looks like one (it holds a
/// `/`, ends in `.conf` or is a file here), else an interface name, whose `<name>.conf` is
/// looked for in `directories` in order, as wg-quick does.
pub fn config_file(argument: &str, directories: &[impl AsRef<Path>]) -> Result<PathBuf, String> {
    if argument.contains('/') || argument.ends_with(".conf") || Path::new(argument).is_file() {
        return Ok(PathBuf::from(argument));
    }
    if let Some(problem) = tundns_config::interface_name_problem(argument) {
        return Err(format!(
            "{argument:?} is neither a config path nor an interface name: {problem}"
        ));
    }
    let candidates: Vec<PathBuf> = directories
        .iter()
        .map(|directory| directory.as_ref().join(format!("{argument}.conf")))
        .collect();
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| {
            let looked: Vec<String> = candidates
                .iter()
                .map(|path| path.display().to_string())
                .collect();
            format!(
                "no config for {argument}: looked for {}",
                looked.join(" and ")
            )
        })
}

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
    /// [`run_directory`] and `/var/run/wireguard`, where `wg` finds the UAPI socket.
    pub fn system() -> Self {
        Self {
            control: run_directory(),
            uapi: PathBuf::from(UAPI_DIRECTORY),
        }
    }

    /// `$XDG_RUNTIME_DIR/tundns` and its `wireguard` subdirectory; `None` without
    /// `XDG_RUNTIME_DIR`.
    pub fn user() -> Option<Self> {
        let control = absolute_directory("XDG_RUNTIME_DIR")?.join("tundns");
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

    /// Removes `interface`'s control and UAPI sockets when no one listens on them any more
    /// (a run that was killed left them); returns those removed.
    pub fn remove_stale_sockets(&self, interface: &str) -> Vec<PathBuf> {
        [self.control_socket(interface), self.uapi_socket(interface)]
            .into_iter()
            .filter(|socket| is_stale_socket(socket) && std::fs::remove_file(socket).is_ok())
            .collect()
    }
}

/// A socket file whose listener is gone: connecting is refused.
pub fn is_stale_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    std::fs::symlink_metadata(path).is_ok_and(|metadata| metadata.file_type().is_socket())
        && std::os::unix::net::UnixStream::connect(path)
            .is_err_and(|error| error.kind() == std::io::ErrorKind::ConnectionRefused)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two config directories under a fresh temporary one, as `/etc/tundns` and
    /// `/etc/wireguard` would be.
    fn directories(test: &str) -> [PathBuf; 2] {
        let root = std::env::temp_dir().join(format!("tundns-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let both = [root.join("tundns"), root.join("wireguard")];
        for directory in &both {
            std::fs::create_dir_all(directory).unwrap();
        }
        both
    }

    #[test]
    fn a_name_is_looked_for_in_tundns_then_wireguard() {
        let [tundns, wireguard] = directories("config-lookup");
        let dirs = [&tundns, &wireguard];
        std::fs::write(wireguard.join("wg0.conf"), "").unwrap();
        assert_eq!(
            config_file("wg0", &dirs).unwrap(),
            wireguard.join("wg0.conf")
        );
        std::fs::write(tundns.join("wg0.conf"), "").unwrap();
        assert_eq!(config_file("wg0", &dirs).unwrap(), tundns.join("wg0.conf"));
        let missing = config_file("wg1", &dirs).unwrap_err();
        assert!(missing.contains("wg1.conf and"), "{missing}");
        let _ = std::fs::remove_dir_all(tundns.parent().unwrap());
    }

    #[test]
    fn a_path_is_taken_as_given() {
        let none: [&str; 0] = [];
        assert_eq!(config_file("./wg0", &none).unwrap(), PathBuf::from("./wg0"));
        assert_eq!(
            config_file("wg0.conf", &none).unwrap(),
            PathBuf::from("wg0.conf")
        );
        assert_eq!(
            config_file("/etc/wireguard/wg0.conf", &none).unwrap(),
            PathBuf::from("/etc/wireguard/wg0.conf")
        );
        assert!(config_file("-wg0", &none).unwrap_err().contains("neither"));
    }
}

//! Which backend changes the system resolver, chosen from what the machine looks like
//! ([`Probe`]), and the commands each backend runs.

use serde::{Deserialize, Serialize};

use super::plan::ResolverSettings;
use super::resolvconf::{self, ResolvconfFlavor};
use super::resolved;
use crate::command_line::CommandLine;

/// How the system resolver is changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// systemd-resolved, per link, through `resolvectl`.
    Resolved,
    /// Debian's resolvconf: `resolvconf -a|-d <record>`.
    Resolvconf,
    /// openresolv: as Debian's, with `-m 0 -x` so the tunnel's servers come first and alone.
    Openresolv,
    /// `/etc/resolv.conf` rewritten in place, the original kept next to it.
    File,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Resolved => "systemd-resolved",
            Backend::Resolvconf => "resolvconf",
            Backend::Openresolv => "openresolv",
            Backend::File => "resolv.conf",
        })
    }
}

impl Backend {
    /// The resolvconf this backend drives, if it is one.
    pub fn resolvconf_flavor(self) -> Option<ResolvconfFlavor> {
        match self {
            Backend::Resolvconf => Some(ResolvconfFlavor::Debian),
            Backend::Openresolv => Some(ResolvconfFlavor::Openresolv),
            Backend::Resolved | Backend::File => None,
        }
    }
}

/// What the machine looks like, for [`choose_backend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// systemd-resolved answers on its socket and `resolvectl` is installed.
    pub resolved_running: bool,
    /// This process shares the network namespace of PID 1, where resolved manages links.
    pub in_init_network_namespace: bool,
    /// `/etc/resolv.conf` is a mount point of its own (`ip netns exec`, containers): a file
    /// private to this namespace, which nothing else manages.
    pub resolv_conf_is_mount: bool,
    /// The resolvconf on `PATH`, unless it is systemd's `resolvectl` shim.
    pub resolvconf: Option<ResolvconfFlavor>,
}

/// True when this process runs in a network namespace other than the host's but sees the
/// host's resolver configuration: changing it would point the whole host at a proxy it
/// cannot reach.
pub fn shares_the_hosts_resolver(probe: &Probe) -> bool {
    !probe.in_init_network_namespace && !probe.resolv_conf_is_mount
}

/// systemd-resolved when it runs and can see this namespace's links; else resolvconf; else
/// the file. A resolv.conf mounted for this namespace alone is always edited as a file.
pub fn choose_backend(probe: &Probe) -> Backend {
    if probe.resolv_conf_is_mount {
        return Backend::File;
    }
    if probe.resolved_running && probe.in_init_network_namespace {
        return Backend::Resolved;
    }
    match probe.resolvconf {
        Some(ResolvconfFlavor::Debian) => Backend::Resolvconf,
        Some(ResolvconfFlavor::Openresolv) => Backend::Openresolv,
        None => Backend::File,
    }
}

/// The commands that apply `settings` to `record` (the interface for resolved, the
/// resolvconf record name otherwise). None for the file backend.
pub fn apply_commands(
    backend: Backend,
    record: &str,
    settings: &ResolverSettings,
) -> Vec<CommandLine> {
    match (backend, backend.resolvconf_flavor()) {
        (Backend::Resolved, _) => resolved::apply_commands(record, settings),
        (_, Some(flavor)) => resolvconf::apply_commands(flavor, record, settings),
        _ => Vec::new(),
    }
}

/// The commands that take back what [`apply_commands`] did.
pub fn revert_commands(backend: Backend, record: &str) -> Vec<CommandLine> {
    match (backend, backend.resolvconf_flavor()) {
        (Backend::Resolved, _) => resolved::revert_commands(record),
        (_, Some(flavor)) => resolvconf::revert_commands(flavor, record),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system_dns::plan::tests::settings;

    #[test]
    fn backend_choice() {
        let base = Probe {
            resolved_running: true,
            in_init_network_namespace: true,
            resolv_conf_is_mount: false,
            resolvconf: Some(ResolvconfFlavor::Debian),
        };
        assert_eq!(choose_backend(&base), Backend::Resolved);
        let other_namespace = Probe {
            in_init_network_namespace: false,
            ..base
        };
        assert_eq!(choose_backend(&other_namespace), Backend::Resolvconf);
        // ...which is why such a namespace may not change the resolver at all.
        assert!(shares_the_hosts_resolver(&other_namespace));
        assert!(!shares_the_hosts_resolver(&base));
        let mounted = Probe {
            resolv_conf_is_mount: true,
            ..base
        };
        assert_eq!(choose_backend(&mounted), Backend::File);
        assert!(!shares_the_hosts_resolver(&Probe {
            in_init_network_namespace: false,
            ..mounted
        }));
        let openresolv = Probe {
            resolved_running: false,
            resolvconf: Some(ResolvconfFlavor::Openresolv),
            ..base
        };
        assert_eq!(choose_backend(&openresolv), Backend::Openresolv);
        let bare = Probe {
            resolved_running: false,
            resolvconf: None,
            ..base
        };
        assert_eq!(choose_backend(&bare), Backend::File);
    }

    fn lines(commands: &[CommandLine]) -> Vec<String> {
        commands.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn resolved_commands() {
        let wanted = settings(&["10.30.30.30", "fd30:30:30::30"], &["corp.example"]);
        assert_eq!(
            lines(&apply_commands(Backend::Resolved, "wg0", &wanted)),
            [
                "resolvectl dns wg0 10.30.30.30 fd30:30:30::30",
                "resolvectl domain wg0 ~. corp.example",
                "resolvectl default-route wg0 true",
            ]
        );
        let search_only = settings(&[], &["corp.example"]);
        assert_eq!(
            lines(&apply_commands(Backend::Resolved, "wg0", &search_only)),
            ["resolvectl domain wg0 corp.example"]
        );
        assert_eq!(
            lines(&revert_commands(Backend::Resolved, "wg0")),
            ["resolvectl revert wg0"]
        );
    }

    #[test]
    fn resolvconf_commands() {
        let wanted = settings(&["10.30.30.30"], &["a.example", "b.example"]);
        let debian = apply_commands(Backend::Resolvconf, "tun.wg0", &wanted);
        assert_eq!(lines(&debian), ["resolvconf -a tun.wg0"]);
        assert_eq!(
            debian[0].stdin.as_deref(),
            Some("nameserver 10.30.30.30\nsearch a.example b.example\n")
        );
        let openresolv = apply_commands(Backend::Openresolv, "wg0", &wanted);
        assert_eq!(lines(&openresolv), ["resolvconf -a wg0 -m 0 -x"]);
        assert_eq!(openresolv[0].stdin, debian[0].stdin);
        assert_eq!(
            lines(&revert_commands(Backend::Resolvconf, "tun.wg0")),
            ["resolvconf -d tun.wg0"]
        );
        assert_eq!(
            lines(&revert_commands(Backend::Openresolv, "wg0")),
            ["resolvconf -d wg0 -f"]
        );
        assert!(apply_commands(Backend::File, "wg0", &wanted).is_empty());
    }
}

//! The system resolver's record in the crash journal: the change made, with what it takes
//! to undo it.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use super::backend::Backend;
use super::resolv_conf::{RESOLV_CONF, backup_path};
use crate::journal::{Entry, Kind, Lifetime};

/// The journal entry of a change to the system resolver, written before the change is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsEntry {
    pub change: DnsChange,
}

impl Entry for DnsEntry {
    const KIND: &'static Kind = &Kind {
        format: "tundns-dns-state/1",
        name: "DNS state",
        extension: "dns-state",
        // A rewritten resolv.conf outlives a reboot, and so must its record.
        lifetime: Lifetime::Persistent,
        changes: "DNS change",
        left_alone: "the system resolver",
        check: "the resolver",
    };

    fn validate(&self, interface: &str) -> Result<(), String> {
        match &self.change {
            DnsChange::Resolved => Ok(()),
            DnsChange::Resolvconf { record, .. } => {
                // What `up` names it: the interface, or an interface-order prefix and it.
                let prefix = record
                    .strip_suffix(interface)
                    .and_then(|rest| rest.is_empty().then_some("").or(rest.strip_suffix('.')));
                match prefix {
                    Some(prefix)
                        if prefix
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                            && !prefix.starts_with('-') =>
                    {
                        Ok(())
                    }
                    _ => Err(format!(
                        "the resolvconf record {record:?} is not one tundns names for {interface}"
                    )),
                }
            }
            DnsChange::File {
                path,
                backup,
                original_base64,
                ..
            } => {
                let managed = Path::new(RESOLV_CONF);
                if path != managed || *backup != backup_path(managed, interface) {
                    return Err(format!(
                        "it names {} and {}, but tundns only ever rewrites {RESOLV_CONF}, backed up \
                         to {}",
                        path.display(),
                        backup.display(),
                        backup_path(managed, interface).display()
                    ));
                }
                match original_base64 {
                    Some(original) if BASE64.decode(original).is_err() => {
                        Err("original_base64 is not base64".to_string())
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}

/// What was changed, with what it takes to undo it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "kebab-case")]
pub enum DnsChange {
    /// Per-link settings; `resolvectl revert` drops them (and they go with the link).
    Resolved,
    /// A resolvconf record, removed with `resolvconf -d`.
    Resolvconf { record: String, openresolv: bool },
    /// A rewritten file.
    File {
        path: PathBuf,
        /// A copy of the original, for people; the restore uses `original_base64`.
        backup: PathBuf,
        /// The original bytes, or `None` when there was no file.
        original_base64: Option<String>,
        /// Exactly what tundns wrote: the file is tundns's to restore only while it holds this.
        written: String,
    },
}

impl DnsChange {
    /// The backend that made the change.
    pub fn backend(&self) -> Backend {
        match self {
            DnsChange::Resolved => Backend::Resolved,
            DnsChange::Resolvconf {
                openresolv: true, ..
            } => Backend::Openresolv,
            DnsChange::Resolvconf { .. } => Backend::Resolvconf,
            DnsChange::File { .. } => Backend::File,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Record;

    type DnsState = Record<DnsEntry>;
    const STATE_FORMAT: &str = DnsEntry::KIND.format;

    fn file_state() -> DnsState {
        DnsState {
            format: STATE_FORMAT.to_string(),
            interface: Some("wg0".to_string()),
            pid: 42,
            netns: None,
            boot_id: None,
            started: None,
            entry: DnsEntry {
                change: DnsChange::File {
                    path: RESOLV_CONF.into(),
                    backup: backup_path(Path::new(RESOLV_CONF), "wg0"),
                    original_base64: Some(BASE64.encode(b"nameserver 192.0.2.53\n\xff")),
                    written: "nameserver 10.30.30.30\n".to_string(),
                },
            },
        }
    }

    #[test]
    fn state_round_trips_and_names_its_backend() {
        let state = file_state();
        let json = state.to_json();
        assert!(json.contains("\"backend\": \"file\""), "{json}");
        assert!(json.contains("/etc/resolv.conf.tundns-wg0"), "{json}");
        assert_eq!(DnsState::parse(json.as_bytes(), "wg0"), Ok(state));
        let resolved = DnsState {
            entry: DnsEntry {
                change: DnsChange::Resolved,
            },
            ..file_state()
        };
        assert_eq!(
            DnsState::parse(resolved.to_json().as_bytes(), "wg0"),
            Ok(resolved)
        );
    }

    #[test]
    fn foreign_and_corrupt_states_are_refused() {
        let json = file_state().to_json();
        let refused = |bytes: &[u8], interface: &str| DnsState::parse(bytes, interface).is_err();
        assert!(refused(json.as_bytes(), "wg1"));
        assert!(refused(&json.as_bytes()[..json.len() / 2], "wg0"));
        assert!(refused(b"", "wg0"));
        assert!(refused(b"nameserver 10.30.30.30\n", "wg0"));
        assert!(refused(
            json.replace(STATE_FORMAT, "tundns-dns-state/9").as_bytes(),
            "wg0"
        ));
        assert!(refused(
            json.replace("\"file\"", "\"carrier-pigeon\"").as_bytes(),
            "wg0"
        ));
        let bad_base64 = serde_json::to_string(&DnsState {
            entry: DnsEntry {
                change: DnsChange::File {
                    path: RESOLV_CONF.into(),
                    backup: "/b".into(),
                    original_base64: Some("not base64!".into()),
                    written: String::new(),
                },
            },
            ..file_state()
        })
        .unwrap();
        assert!(refused(bad_base64.as_bytes(), "wg0"));
        // A record names only the file tundns manages, and its backup for this interface.
        let elsewhere = |path: &str, backup: &str| DnsState {
            entry: DnsEntry {
                change: DnsChange::File {
                    path: path.into(),
                    backup: backup.into(),
                    original_base64: None,
                    written: String::new(),
                },
            },
            ..file_state()
        };
        for (path, backup) in [
            ("/etc/shadow", "/etc/resolv.conf.tundns-wg0"),
            (RESOLV_CONF, "/etc/shadow"),
            (RESOLV_CONF, "/etc/resolv.conf.tundns-wg1"),
        ] {
            let json = elsewhere(path, backup).to_json();
            assert!(refused(json.as_bytes(), "wg0"), "{path} {backup}");
        }
        let resolvconf = |record: &str| DnsState {
            entry: DnsEntry {
                change: DnsChange::Resolvconf {
                    record: record.into(),
                    openresolv: false,
                },
            },
            ..file_state()
        };
        for record in ["wg0", "tun.wg0"] {
            let json = resolvconf(record).to_json();
            assert_eq!(
                DnsState::parse(json.as_bytes(), "wg0"),
                Ok(resolvconf(record))
            );
        }
        for record in ["-d", "-a.wg0", "wg1", "x/y.wg0", "tun.wg0 -x"] {
            assert!(
                refused(resolvconf(record).to_json().as_bytes(), "wg0"),
                "{record}"
            );
        }
    }

    #[test]
    fn the_record_is_kept_across_reboots() {
        assert_eq!(
            DnsEntry::KIND.path("wg0"),
            Path::new("/var/lib/tundns/wg0.dns-state")
        );
    }
}

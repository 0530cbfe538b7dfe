//! Changing the system resolver as planned and giving it back: the journal record first,
//! then the change; on the way down, or after a crash, the undo.

use std::borrow::Cow;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tundns_config::{Config, Upstream};

use super::backend::{
    Backend, apply_commands, choose_backend, revert_commands, shares_the_hosts_resolver,
};
use super::entry::{DnsChange, DnsEntry};
use super::error::SystemDnsError;
use super::plan::{DnsPlan, ResolverSettings, join, system_upstreams};
use super::probe::{probe, system_resolvers};
use super::resolv_conf::{
    FileRestore, RESOLV_CONF, backup_path, file_restore, parse_resolv_conf, render_resolv_conf,
};
use super::resolvconf::{RESOLVCONF_INTERFACE_ORDER, resolvconf_record_name};
use crate::atomic_file::{FileError, write_atomically};
use crate::command_line::CommandLine;
use crate::journal::{self, Entry as _, Journal, JournalError, retired_path};

/// A resolv.conf larger than this is not one tundns will keep a copy of.
const MAX_RESOLV_CONF_BYTES: u64 = 64 << 10;

/// What `tundns up` does about the system resolver, decided before the tunnel exists.
#[derive(Debug)]
pub struct DnsTakeover {
    plan: DnsPlan,
    backend: Backend,
    upstreams: Vec<Upstream>,
}

impl DnsTakeover {
    /// Plans, picks the backend and reads the system's resolvers (the upstreams when the
    /// config names none). Changes nothing: what an earlier run left is
    /// taken back before this, by `tundns_host::repair`.
    pub fn prepare(config: &Config) -> Result<Self, SystemDnsError> {
        let interface = &config.interface_name;
        let plan = DnsPlan::for_config(config);
        for warning in &plan.warnings {
            tracing::warn!("{warning}");
        }
        let probe = probe();
        if plan.settings.is_some() && shares_the_hosts_resolver(&probe) {
            return Err(SystemDnsError::SharedWithHost);
        }
        let backend = choose_backend(&probe);
        let needs_upstreams = config.dns_proxy.enabled && !config.dns_proxy.upstreams_configured;
        let upstreams = if needs_upstreams {
            let found = system_resolvers(backend, interface);
            let upstreams = system_upstreams(found, &config.dns_proxy.addresses);
            if upstreams.is_empty() {
                tracing::warn!(
                    "no Upstream configured and no system resolver found: using the defaults"
                );
            } else {
                tracing::info!(
                    upstreams = %upstreams.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    "no Upstream configured: using the system's resolvers"
                );
            }
            upstreams
        } else {
            Vec::new()
        };
        Ok(Self {
            plan,
            backend,
            upstreams,
        })
    }

    /// `config` with the system's resolvers as upstreams when it names none.
    pub fn resolver_config<'c>(&self, config: &'c Config) -> Cow<'c, Config> {
        if self.upstreams.is_empty() {
            return Cow::Borrowed(config);
        }
        let mut config = config.clone();
        config.dns_proxy.upstreams = self.upstreams.clone();
        Cow::Owned(config)
    }

    /// Points the system resolver as planned, journaling the change first. `None` when the
    /// plan leaves it alone. On failure, whatever was done is undone.
    pub fn apply(&self, interface: &str) -> Result<Option<AppliedDns>, SystemDnsError> {
        let Some(settings) = &self.plan.settings else {
            return Ok(None);
        };
        // The original's copy for people, written only once the record names it.
        let mut copy = None;
        let change = match (self.backend, self.backend.resolvconf_flavor()) {
            (Backend::Resolved, _) => DnsChange::Resolved,
            (_, Some(flavor)) => {
                let order = std::fs::read_to_string(RESOLVCONF_INTERFACE_ORDER).ok();
                DnsChange::Resolvconf {
                    record: resolvconf_record_name(flavor, order.as_deref(), interface),
                    openresolv: self.backend == Backend::Openresolv,
                }
            }
            _ => {
                let path = PathBuf::from(RESOLV_CONF);
                let original = read_small(&path)?;
                let backup = backup_path(&path, interface);
                let parsed =
                    parse_resolv_conf(&String::from_utf8_lossy(original.as_deref().unwrap_or(&[])));
                let written = render_resolv_conf(&parsed, settings, interface, &backup);
                copy = original.clone().map(|original| (backup.clone(), original));
                DnsChange::File {
                    path,
                    backup,
                    original_base64: original.map(|bytes| BASE64.encode(bytes)),
                    written,
                }
            }
        };
        let mut journal = Journal::new(interface, DnsEntry { change });
        journal.write()?;
        let changed = copy
            .map_or(Ok(()), |(backup, original)| {
                write_atomically(&backup, &original, 0o644).map_err(SystemDnsError::from)
            })
            .and_then(|()| make_change(&journal, settings));
        if let Err(error) = changed {
            if let Err(undo_error) = undo(&mut journal, Undo::OwnStop) {
                tracing::warn!(%undo_error, "undoing a half-made DNS change");
            }
            return Err(error);
        }
        tracing::info!(backend = %self.backend, servers = %join(&settings.servers), "system resolver points at the tunnel");
        Ok(Some(AppliedDns { journal }))
    }
}

/// What giving the system resolver back came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsRestore {
    /// Given back as it was, through this backend.
    Restored(Backend),
    /// Someone rewrote the file since tundns did (dhclient does on every lease): theirs is
    /// the system's resolver now, and stays. tundns's copy of the original and its record
    /// are retired, kept beside for people, so that nothing waits on them.
    LeftAsChanged {
        file: PathBuf,
        /// The original, when there was one.
        original: Option<PathBuf>,
        record: PathBuf,
    },
}

impl std::fmt::Display for DnsRestore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsRestore::Restored(backend) => write!(f, "system resolver restored ({backend})"),
            DnsRestore::LeftAsChanged {
                file,
                original,
                record,
            } => {
                write!(
                    f,
                    "{} changed since tundns wrote it, so it stays as it is now",
                    file.display()
                )?;
                if let Some(original) = original {
                    write!(
                        f,
                        "; the original is kept in {} (put it back yourself if you want it)",
                        original.display()
                    )?;
                }
                write!(f, "; tundns's record is retired to {}", record.display())
            }
        }
    }
}

/// A change made to the system resolver, undone by [`AppliedDns::restore`].
#[derive(Debug)]
pub struct AppliedDns {
    journal: Journal<DnsEntry>,
}

impl AppliedDns {
    /// Gives the system resolver back and removes the journal's record.
    pub fn restore(mut self) -> Result<DnsRestore, SystemDnsError> {
        undo(&mut self.journal, Undo::OwnStop)
    }
}

/// Undoes the change an earlier run of `interface` left behind, if the journal records one
/// it may act on; `None` when there is none.
pub(crate) fn undo_left_dns(interface: &str) -> Result<Option<DnsRestore>, SystemDnsError> {
    let Some(mut journal) = journal::left_behind::<DnsEntry>(interface)? else {
        return Ok(None);
    };
    undo(&mut journal, Undo::AfterCrash).map(Some)
}

/// Who is undoing a change, which decides what may be touched.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Undo {
    /// The run that made the change, stopping: its link and record are its own.
    OwnStop,
    /// A later run or `reset`, after the one that made it died. Its TUN went with it, so
    /// an interface of that name now, and resolved's per-link settings or a resolvconf record
    /// for it, belong to whoever created it since (wg-quick, say) and are left alone.
    AfterCrash,
}

fn interface_exists(interface: &str) -> bool {
    Path::new("/sys/class/net").join(interface).exists()
}

fn make_change(
    journal: &Journal<DnsEntry>,
    settings: &ResolverSettings,
) -> Result<(), SystemDnsError> {
    let change = &journal.entry().change;
    match change {
        DnsChange::Resolved => run_all(&apply_commands(
            Backend::Resolved,
            journal.interface(),
            settings,
        )),
        DnsChange::Resolvconf { record, .. } => {
            run_all(&apply_commands(change.backend(), record, settings))
        }
        DnsChange::File {
            path,
            written,
            backup,
            ..
        } => {
            tracing::info!(
                "[#] rewrite {} (the original is kept in {})",
                path.display(),
                backup.display()
            );
            overwrite_in_place(path, Some(written.as_bytes()))
        }
    }
}

/// Undoes the journaled change and removes its files. When the resolver is not tundns's to
/// restore any more, it stays as it is, and the record and backup are retired.
fn undo(journal: &mut Journal<DnsEntry>, by: Undo) -> Result<DnsRestore, SystemDnsError> {
    let interface = journal.interface();
    let change = &journal.entry().change;
    match change {
        DnsChange::Resolved => {
            // After a crash the per-link settings went with the link.
            if by == Undo::OwnStop {
                run_all_lenient(&revert_commands(Backend::Resolved, interface));
            }
        }
        DnsChange::Resolvconf { record, .. } => {
            if by == Undo::OwnStop || !interface_exists(interface) {
                run_all_lenient(&revert_commands(change.backend(), record));
            } else {
                tracing::warn!(
                    %interface,
                    %record,
                    "left the resolvconf record alone: the interface exists again and is not this run's"
                );
            }
        }
        DnsChange::File {
            path,
            backup,
            original_base64,
            written,
        } => {
            let original = original_base64
                .as_deref()
                .map(|text| BASE64.decode(text))
                .transpose()
                .map_err(|_| JournalError::Refused {
                    path: journal.path().to_path_buf(),
                    reason: "original_base64 is not base64".to_string(),
                    kind: DnsEntry::KIND,
                })?;
            let current = read_small(path)?;
            match file_restore(current.as_deref(), original.as_deref(), written) {
                FileRestore::PutBack => overwrite_in_place(path, original.as_deref())?,
                FileRestore::AlreadyOriginal => {}
                FileRestore::ChangedByOthers => {
                    let (file, backup) = (path.clone(), backup.clone());
                    let original = match std::fs::rename(&backup, retired_path(&backup)) {
                        Ok(()) => Some(retired_path(&backup)),
                        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
                        Err(error) => return Err(io_error("retiring", &backup)(error)),
                    };
                    let record = journal.retire()?;
                    return Ok(DnsRestore::LeftAsChanged {
                        file,
                        original,
                        record,
                    });
                }
            }
            remove_if_present(backup)?;
        }
    }
    let backend = change.backend();
    journal.remove()?;
    Ok(DnsRestore::Restored(backend))
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SystemDnsError {
    let error = FileError::of(action, path);
    move |source| error(source).into()
}

fn run_all(commands: &[CommandLine]) -> Result<(), SystemDnsError> {
    for command in commands {
        tracing::info!("[#] {command}");
        command.run()?;
    }
    Ok(())
}

fn run_all_lenient(commands: &[CommandLine]) {
    for command in commands {
        if let Err(error) = command.run() {
            tracing::debug!(%error, "reverting the DNS change");
        }
    }
}

/// Reads a resolv.conf-sized file; `None` when it does not exist.
fn read_small(path: &Path) -> Result<Option<Vec<u8>>, SystemDnsError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error("reading", path)(error)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_RESOLV_CONF_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error("reading", path))?;
    if bytes.len() as u64 > MAX_RESOLV_CONF_BYTES {
        return Err(io_error("reading", path)(io::Error::other(format!(
            "larger than {MAX_RESOLV_CONF_BYTES} bytes"
        ))));
    }
    Ok(Some(bytes))
}

/// Writes `contents` to `path` through the existing inode: resolv.conf may be a bind mount
/// (`ip netns exec`, containers) or a symlink, which a rename would break. `None` removes
/// the file.
fn overwrite_in_place(path: &Path, contents: Option<&[u8]>) -> Result<(), SystemDnsError> {
    let Some(contents) = contents else {
        return remove_if_present(path);
    };
    use std::os::unix::fs::PermissionsExt as _;
    let existed = path.exists();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_error("opening", path))?;
    if !existed {
        // Every program reads resolv.conf, whatever the umask of `tundns up` (0077).
        file.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io_error("setting the mode of", path))?;
    }
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io_error("writing", path))
}

fn remove_if_present(path: &Path) -> Result<(), SystemDnsError> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(io_error("removing", path)(error))
        }
        _ => Ok(()),
    }
}

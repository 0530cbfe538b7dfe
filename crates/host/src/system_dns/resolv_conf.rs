//! The file backend's decisions: what `/etc/resolv.conf` says, what tundns writes there
//! instead, where the original is kept, and whether the file is still tundns's to give back.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::plan::{MAX_NAMESERVERS, ResolverSettings};

/// The file the file backend rewrites.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// What a resolv.conf says, as far as tundns cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` lines that hold a plain IP (scoped link-local ones are skipped).
    pub nameservers: Vec<IpAddr>,
    /// The last `search` or `domain` line's names (glibc keeps only the last).
    pub search: Vec<String>,
    /// `options` lines, verbatim.
    pub options: Vec<String>,
}

/// Reads what tundns needs from resolv.conf text; unknown lines are ignored.
pub fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut parsed = ResolvConf::default();
    for line in text.lines() {
        let line = line.trim();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ip) = words.next().and_then(|word| word.parse().ok()) {
                    parsed.nameservers.push(ip);
                }
            }
            Some("search" | "domain") => {
                parsed.search = words.map(ToString::to_string).collect();
            }
            Some("options") => parsed.options.push(line.to_string()),
            _ => {}
        }
    }
    parsed
}

/// The resolv.conf tundns writes: its servers (or the original's when it names none), its
/// search domains before the original's, and the original's options.
pub fn render_resolv_conf(
    original: &ResolvConf,
    settings: &ResolverSettings,
    interface: &str,
    backup: &Path,
) -> String {
    let mut text = format!(
        "# Written by tundns for {interface} while it runs; the original is kept in {}\n\
         # and comes back when tundns stops (after a crash: tundns reset {interface}).\n",
        backup.display()
    );
    let servers = if settings.servers.is_empty() {
        &original.nameservers
    } else {
        &settings.servers
    };
    for server in servers.iter().take(MAX_NAMESERVERS) {
        text.push_str(&format!("nameserver {server}\n"));
    }
    let mut search: Vec<&str> = Vec::new();
    for domain in settings.search.iter().chain(&original.search) {
        if !search.contains(&domain.as_str()) {
            search.push(domain);
        }
    }
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    for options in &original.options {
        text.push_str(options);
        text.push('\n');
    }
    text
}

/// What restoring a rewritten file comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRestore {
    /// The file holds what tundns wrote, is empty (tundns was killed between the truncation
    /// and the write of an in-place rewrite) or is gone: put the original back, which
    /// overwrites no one's.
    PutBack,
    /// The file already holds the original (the change never happened, or was undone).
    AlreadyOriginal,
    /// Someone else wrote the file since: leave it.
    ChangedByOthers,
}

/// Decides whether a file tundns rewrote is still tundns's to restore. `None` is a
/// missing file.
pub fn file_restore(current: Option<&[u8]>, original: Option<&[u8]>, written: &str) -> FileRestore {
    match current {
        Some(current) if current == written.as_bytes() => FileRestore::PutBack,
        _ if current == original => FileRestore::AlreadyOriginal,
        // A write of a few hundred bytes is one write(2): a kill leaves it whole or not begun.
        None | Some([]) => FileRestore::PutBack,
        Some(_) => FileRestore::ChangedByOthers,
    }
}

/// The backup kept of a rewritten resolv.conf: next to it, or in another network
/// namespace (whose resolv.conf is a bind mount over the host's `/etc`), in that
/// namespace's state directory.
pub fn backup_path(resolv_conf: &Path, interface: &str) -> PathBuf {
    let suffix = format!(".tundns-{interface}");
    match crate::paths::network_namespace() {
        None => {
            let mut name = resolv_conf.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        }
        Some(_) => {
            let mut name = resolv_conf.file_name().unwrap_or_default().to_owned();
            name.push(suffix);
            crate::paths::state_directory().join(name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system_dns::plan::tests::{ips, settings};

    #[test]
    fn resolv_conf_parsing() {
        let parsed = parse_resolv_conf(
            "# comment\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\n\
             nameserver  2001:db8::53 \ndomain old.example\nsearch a.example b.example\n\
             options timeout:2 attempts:1\nsortlist 10.0.0.0\nnameserver\n",
        );
        assert_eq!(parsed.nameservers, ips(&["192.0.2.53", "2001:db8::53"]));
        assert_eq!(parsed.search, ["a.example", "b.example"]);
        assert_eq!(parsed.options, ["options timeout:2 attempts:1"]);
    }

    #[test]
    fn rendered_resolv_conf() {
        let original = parse_resolv_conf(
            "nameserver 192.0.2.53\nsearch home.example corp.example\noptions edns0\n",
        );
        let backup = Path::new("/etc/resolv.conf.tundns-wg0");
        let text = render_resolv_conf(
            &original,
            &settings(
                &["10.30.30.30", "fd30:30:30::30", "192.0.2.1", "192.0.2.2"],
                &["corp.example"],
            ),
            "wg0",
            backup,
        );
        let body: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            body,
            [
                "nameserver 10.30.30.30",
                "nameserver fd30:30:30::30",
                "nameserver 192.0.2.1",
                "search corp.example home.example",
                "options edns0",
            ]
        );
        assert!(text.contains("/etc/resolv.conf.tundns-wg0"));
        assert!(text.contains("tundns reset wg0"));
        let search_only =
            render_resolv_conf(&original, &settings(&[], &["x.example"]), "wg0", backup);
        assert!(search_only.contains("nameserver 192.0.2.53\nsearch x.example home.example"));
    }

    #[test]
    fn a_file_is_restored_only_while_it_holds_what_tundns_wrote() {
        let written = "nameserver 10.30.30.30\n";
        let original: &[u8] = b"nameserver 192.0.2.53\n";
        assert_eq!(
            file_restore(Some(written.as_bytes()), Some(original), written),
            FileRestore::PutBack
        );
        assert_eq!(
            file_restore(Some(written.as_bytes()), None, written),
            FileRestore::PutBack
        );
        assert_eq!(
            file_restore(Some(original), Some(original), written),
            FileRestore::AlreadyOriginal
        );
        assert_eq!(
            file_restore(None, None, written),
            FileRestore::AlreadyOriginal
        );
        assert_eq!(
            file_restore(Some(b"nameserver 198.51.100.1\n"), Some(original), written),
            FileRestore::ChangedByOthers
        );
        // A write of tundns's own cut short by a SIGKILL between the truncation and the
        // write, or a file someone removed: putting the original back overwrites no one's.
        assert_eq!(
            file_restore(Some(b""), Some(original), written),
            FileRestore::PutBack
        );
        assert_eq!(
            file_restore(None, Some(original), written),
            FileRestore::PutBack
        );
        // Someone else's shorter file is theirs, even when it begins as the original did.
        assert_eq!(
            file_restore(Some(&original[..5]), Some(original), written),
            FileRestore::ChangedByOthers
        );
    }

    #[test]
    fn backup_path_is_beside_the_file() {
        assert_eq!(
            backup_path(Path::new("/etc/resolv.conf"), "wg0"),
            Path::new("/etc/resolv.conf.tundns-wg0")
        );
    }
}

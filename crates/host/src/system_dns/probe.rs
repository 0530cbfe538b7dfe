//! Looking at the machine before anything changes: which resolver it runs, whether this
//! network namespace has a resolv.conf of its own, and which resolvers the system had.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tundns_config::{DNS_PORT, Upstream};

use super::backend::{Backend, Probe};
use super::resolv_conf::{RESOLV_CONF, parse_resolv_conf};
use super::resolvconf::ResolvconfFlavor;
use super::resolved::{RESOLVED_SOCKET, resolved_upstreams};
use crate::command_line::CommandLine;

/// Looks at the machine for [`super::backend::choose_backend`].
pub fn probe() -> Probe {
    use std::os::unix::fs::MetadataExt as _;
    let namespace = |pid: &str| {
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .ok()
            .map(|meta| (meta.dev(), meta.ino()))
    };
    let in_init_network_namespace = match (namespace("self"), namespace("1")) {
        (Some(own), Some(init)) => own == init,
        _ => true,
    };
    Probe {
        resolved_running: on_path("resolvectl")
            && std::os::unix::net::UnixStream::connect(RESOLVED_SOCKET).is_ok(),
        in_init_network_namespace,
        resolv_conf_is_mount: resolv_conf_is_mount(),
        resolvconf: resolvconf_flavor(),
    }
}

/// The system's resolvers before tundns changes anything.
pub fn system_resolvers(backend: Backend, interface: &str) -> Vec<Upstream> {
    if backend == Backend::Resolved {
        match CommandLine::new("resolvectl", &["dns"], None).run() {
            Ok(dns) => {
                let dot = match CommandLine::new("resolvectl", &["dnsovertls"], None).run() {
                    Ok(dot) => Some(dot),
                    Err(error) => {
                        tracing::warn!(%error, "reading systemd-resolved's DNSOverTLS");
                        None
                    }
                };
                return resolved_upstreams(&dns, dot.as_deref(), interface);
            }
            Err(error) => tracing::warn!(%error, "reading systemd-resolved's servers"),
        }
    }
    let text = std::fs::read(RESOLV_CONF).unwrap_or_default();
    parse_resolv_conf(&String::from_utf8_lossy(&text))
        .nameservers
        .into_iter()
        .map(|ip| Upstream::Udp(SocketAddr::new(ip, DNS_PORT)))
        .collect()
}

fn resolv_conf_is_mount() -> bool {
    let canonical = std::fs::canonicalize(RESOLV_CONF).ok();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo.lines().any(|line| {
        let mount_point = line.split(' ').nth(4).unwrap_or_default();
        mount_point == RESOLV_CONF
            || canonical
                .as_deref()
                .is_some_and(|canonical| Path::new(mount_point) == canonical)
    })
}

fn resolvconf_flavor() -> Option<ResolvconfFlavor> {
    let path = find_on_path("resolvconf")?;
    // systemd ships `resolvconf` as a link to resolvectl, which needs resolved running.
    let target = std::fs::canonicalize(&path).unwrap_or(path);
    if target.file_name().is_some_and(|name| name == "resolvectl") {
        return None;
    }
    let version = CommandLine::new("resolvconf", &["--version"], None)
        .run()
        .unwrap_or_default();
    Some(if version.contains("openresolv") {
        ResolvconfFlavor::Openresolv
    } else {
        ResolvconfFlavor::Debian
    })
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn on_path(program: &str) -> bool {
    find_on_path(program).is_some()
}

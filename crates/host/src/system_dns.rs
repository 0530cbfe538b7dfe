//! The system resolver: pointing it at the proxy on `up`, giving it back on the way down,
//! and repairing it after a run that could not (a crash, SIGKILL, a reboot).
//!
//! `[Interface] DNS` keeps wg-quick's meaning: its IPs become the system's name servers and
//! its names the search domains, for as long as the tunnel runs. `[DNSProxy] SetSystemDNS =
//! true` points the system at the proxy's virtual IPs whatever `DNS` says; `false` leaves the
//! system resolver alone.
//!
//! Three backends, picked at run time ([`choose_backend`]): systemd-resolved (per-link
//! settings through `resolvectl`), resolvconf (Debian's or openresolv, a per-interface
//! record), or `/etc/resolv.conf` itself, rewritten in place with the original kept next to
//! it. Every change is recorded in a state file ([`DnsState`]) *before* it is made, so the
//! next `tundns up` of the interface, or `tundns reset`, can undo it after a crash. A
//! state file tundns cannot read, or a resolv.conf that no longer holds what tundns wrote,
//! is reported and left alone: tundns never overwrites a resolver config it did not write.
//!
//! The decisions (which settings, which backend, the commands, the file's content, whether
//! the file is still ours) are pure functions with unit tests; the I/O around them is thin.

use std::borrow::Cow;
use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use tundns_config::{Config, DNS_PORT, Upstream};

use crate::atomic_file::{FileError, write_atomically};
use crate::command_line::{CommandError, CommandLine};

/// Where the state files live, one per interface.
pub const STATE_DIR: &str = "/var/lib/tundns";
/// The file the file backend rewrites.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// systemd-resolved's varlink socket: something listens on it while resolved runs.
const RESOLVED_SOCKET: &str = "/run/systemd/resolve/io.systemd.Resolve";
/// Debian resolvconf's ordering of interface records.
const RESOLVCONF_INTERFACE_ORDER: &str = "/etc/resolvconf/interface-order";
/// The `format` every state file carries; anything else is not ours to touch.
const STATE_FORMAT: &str = "tundns-dns-state/1";
/// glibc reads at most this many `nameserver` lines (MAXNS).
const MAX_NAMESERVERS: usize = 3;
/// A resolv.conf larger than this is not one tundns will keep a copy of.
const MAX_RESOLV_CONF_BYTES: u64 = 64 << 10;

/// What the system resolver is told while the tunnel runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverSettings {
    /// Name servers, in order. Empty when `DNS` names search domains only: the system
    /// keeps its own servers then.
    pub servers: Vec<IpAddr>,
    /// Search domains, in order.
    pub search: Vec<String>,
}

/// What the config asks of the system resolver, and what is worth a warning about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `None`: the system resolver is left alone.
    pub settings: Option<ResolverSettings>,
    pub warnings: Vec<String>,
}

/// Decides what `config` asks of the system resolver.
pub fn plan(config: &Config) -> Plan {
    let dns = &config.interface;
    let proxy = &config.dns_proxy;
    let proxy_addresses: &[IpAddr] = if proxy.enabled { &proxy.addresses } else { &[] };
    let mut warnings = Vec::new();
    let listed = !dns.dns_servers.is_empty() || !dns.dns_search.is_empty();
    let settings = match proxy.set_system_dns {
        Some(false) => {
            if listed {
                warnings.push(
                    "DNS = is not applied: SetSystemDNS = false leaves the system resolver alone"
                        .to_string(),
                );
            }
            None
        }
        Some(true) => {
            let ignored: Vec<String> = dns
                .dns_servers
                .iter()
                .filter(|ip| !proxy_addresses.contains(ip))
                .map(ToString::to_string)
                .collect();
            if !ignored.is_empty() {
                warnings.push(format!(
                    "DNS = {} is not given to the system: SetSystemDNS = true points it at the proxy only",
                    ignored.join(", ")
                ));
            }
            Some(ResolverSettings {
                servers: proxy_addresses.to_vec(),
                search: dns.dns_search.clone(),
            })
        }
        None if listed => {
            if proxy.enabled
                && !dns.dns_servers.is_empty()
                && !dns
                    .dns_servers
                    .iter()
                    .any(|ip| proxy_addresses.contains(ip))
            {
                warnings.push(format!(
                    "DNS = names none of the proxy's addresses ({}): the system resolver will bypass the proxy",
                    join(proxy_addresses)
                ));
            }
            Some(ResolverSettings {
                servers: dns.dns_servers.clone(),
                search: dns.dns_search.clone(),
            })
        }
        None => None,
    };
    if let Some(settings) = &settings
        && settings.servers.len() > MAX_NAMESERVERS
    {
        warnings.push(format!(
            "DNS = names {} servers; resolv.conf readers use the first {MAX_NAMESERVERS}",
            settings.servers.len()
        ));
    }
    Plan { settings, warnings }
}

fn join(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

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

/// Which resolvconf is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvconfFlavor {
    Debian,
    Openresolv,
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
    let servers: Vec<String> = settings.servers.iter().map(ToString::to_string).collect();
    match backend {
        Backend::Resolved => {
            let mut commands = Vec::new();
            let mut domains: Vec<String> = settings.search.clone();
            if !servers.is_empty() {
                let mut args = vec!["dns".to_string(), record.to_string()];
                args.extend(servers);
                commands.push(CommandLine {
                    program: "resolvectl",
                    args,
                    stdin: None,
                });
                // "~." routes every name to this link, as wg-quick's resolvconf shim does.
                domains.insert(0, "~.".to_string());
            }
            if !domains.is_empty() {
                let mut args = vec!["domain".to_string(), record.to_string()];
                args.extend(domains);
                commands.push(CommandLine {
                    program: "resolvectl",
                    args,
                    stdin: None,
                });
            }
            if !settings.servers.is_empty() {
                commands.push(CommandLine::new(
                    "resolvectl",
                    &["default-route", record, "true"],
                    None,
                ));
            }
            commands
        }
        Backend::Resolvconf => vec![CommandLine::new(
            "resolvconf",
            &["-a", record],
            Some(resolvconf_record(settings)),
        )],
        Backend::Openresolv => vec![CommandLine::new(
            "resolvconf",
            &["-a", record, "-m", "0", "-x"],
            Some(resolvconf_record(settings)),
        )],
        Backend::File => Vec::new(),
    }
}

/// The commands that take back what [`apply_commands`] did.
pub fn revert_commands(backend: Backend, record: &str) -> Vec<CommandLine> {
    match backend {
        Backend::Resolved => vec![CommandLine::new("resolvectl", &["revert", record], None)],
        Backend::Resolvconf => vec![CommandLine::new("resolvconf", &["-d", record], None)],
        Backend::Openresolv => vec![CommandLine::new("resolvconf", &["-d", record, "-f"], None)],
        Backend::File => Vec::new(),
    }
}

/// The resolv.conf fragment resolvconf reads on stdin.
fn resolvconf_record(settings: &ResolverSettings) -> String {
    let mut text = String::new();
    for server in &settings.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !settings.search.is_empty() {
        text.push_str(&format!("search {}\n", settings.search.join(" ")));
    }
    text
}

/// The resolvconf record for `interface`. Debian orders records by the patterns in
/// `/etc/resolvconf/interface-order`; like wg-quick, the record takes the prefix of the
/// first plain `name*` pattern there (`tun*` gives `tun.wg0`) so that it sorts first.
pub fn resolvconf_record_name(
    flavor: ResolvconfFlavor,
    interface_order: Option<&str>,
    interface: &str,
) -> String {
    let prefix = match (flavor, interface_order) {
        (ResolvconfFlavor::Debian, Some(order)) => order.lines().map(str::trim).find_map(|line| {
            line.strip_suffix('*').filter(|prefix| {
                !prefix.is_empty()
                    && prefix
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
        }),
        _ => None,
    };
    match prefix {
        Some(prefix) => format!("{prefix}.{interface}"),
        None => interface.to_string(),
    }
}

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

/// Port of DNS over TLS (RFC 7858).
const DOT_PORT: u16 = 853;

/// systemd-resolved's `DNSOverTLS=` setting for a link, or globally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotMode {
    No,
    /// TLS first, plain DNS when TLS fails.
    Opportunistic,
    /// TLS only.
    Yes,
}

/// The upstreams systemd-resolved uses, from `resolvectl dns` output (`dns`) and
/// `resolvectl dnsovertls` output (`dot`, `None` when it could not be read), except those
/// of `interface` itself.
///
/// A server is `ADDRESS[:PORT][#NAME]`; link-local ones, which need the link they belong
/// to, are skipped. Where resolved speaks DNS over TLS to a server, so does tundns, with
/// the same server name (the address's text when there is none): taking over the system's
/// resolvers must not turn its encrypted DNS into plain DNS. Opportunistic mode becomes the
/// TLS upstream followed by the plain one. Without `dot`, a server with a name (which only
/// DNS over TLS uses) is taken as opportunistic, one without as plain.
pub fn resolved_upstreams(dns: &str, dot: Option<&str>, interface: &str) -> Vec<Upstream> {
    let own_link = format!("({interface})");
    let modes = resolvectl_lines(dot.unwrap_or_default())
        .filter_map(|(label, value)| Some((label, parse_dot_mode(value.trim())?)))
        .collect::<Vec<_>>();
    let mode_of = |label: &str, named: bool| {
        let find = |wanted: &str| modes.iter().find(|(l, _)| *l == wanted).map(|(_, m)| *m);
        match find(label).or_else(|| find("Global")) {
            Some(mode) => mode,
            None if dot.is_none() && named => DotMode::Opportunistic,
            None => DotMode::No,
        }
    };
    let mut upstreams = Vec::new();
    for (label, list) in resolvectl_lines(dns) {
        if label.ends_with(&own_link) {
            continue;
        }
        for word in list.split_whitespace() {
            let Some((address, port, name)) = parse_resolved_server(word) else {
                continue;
            };
            let plain = Upstream::Udp(SocketAddr::new(address, port.unwrap_or(DNS_PORT)));
            let tls = || Upstream::Tls {
                server_name: name.map_or_else(|| address.to_string(), str::to_ascii_lowercase),
                address: SocketAddr::new(address, port.unwrap_or(DOT_PORT)),
            };
            let wanted = match mode_of(label, name.is_some()) {
                DotMode::No => vec![plain],
                DotMode::Opportunistic => vec![tls(), plain],
                DotMode::Yes => vec![tls()],
            };
            for upstream in wanted {
                if !upstreams.contains(&upstream) {
                    upstreams.push(upstream);
                }
            }
        }
    }
    upstreams
}

/// The `LABEL: VALUE` lines of resolvectl output, the label trimmed. A line that starts
/// with white space continues the previous label's value: resolvectl wraps long lists to
/// the terminal's width, indented under the first.
fn resolvectl_lines(output: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut label = None;
    output.lines().filter_map(move |line| {
        if line.starts_with(char::is_whitespace) {
            return Some((label?, line));
        }
        let (this, value) = line.split_once(':')?;
        label = Some(this.trim());
        Some((this.trim(), value))
    })
}

/// A `DNSOverTLS=` value; `None` for an unset one (the global setting applies).
fn parse_dot_mode(value: &str) -> Option<DotMode> {
    match value {
        "yes" | "true" | "1" | "on" => Some(DotMode::Yes),
        "opportunistic" => Some(DotMode::Opportunistic),
        "no" | "false" | "0" | "off" => Some(DotMode::No),
        _ => None,
    }
}

/// `ADDRESS[:PORT][%SCOPE][#NAME]` as resolved prints a server: the address, the port if
/// given and the TLS server name if given. `None` for a link-local (scoped) or unreadable
/// one.
fn parse_resolved_server(word: &str) -> Option<(IpAddr, Option<u16>, Option<&str>)> {
    let (server, name) = match word.split_once('#') {
        Some((server, name)) if !name.is_empty() => (server, Some(name)),
        Some((server, _)) => (server, None),
        None => (word, None),
    };
    if server.contains('%') {
        return None;
    }
    let (address, port) = match server.parse::<IpAddr>() {
        Ok(address) => (address, None),
        Err(_) => {
            let socket = server.parse::<SocketAddr>().ok()?;
            (socket.ip(), Some(socket.port()))
        }
    };
    match address {
        IpAddr::V6(v6) if v6.is_unicast_link_local() => None,
        _ => Some((address, port, name)),
    }
}

/// The upstreams taken from the system's resolvers: never one of the proxy's own
/// addresses (queries would loop), nor systemd-resolved's stub, which forwards to the proxy
/// once the system points at it.
pub fn system_upstreams(found: Vec<Upstream>, proxy_addresses: &[IpAddr]) -> Vec<Upstream> {
    const RESOLVED_STUBS: [IpAddr; 2] = [
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 54)),
    ];
    found
        .into_iter()
        .filter(|upstream| {
            let ip = upstream.address().ip();
            !proxy_addresses.contains(&ip)
                && !RESOLVED_STUBS.contains(&ip)
                && !ip.is_unspecified()
                && ip != IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        })
        .collect()
}

/// A recorded change to the system resolver, written before the change is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsState {
    /// Always [`STATE_FORMAT`].
    pub format: String,
    pub interface: String,
    /// The tundns process that made the change.
    pub pid: u32,
    pub change: Change,
}

/// What was changed, with what it takes to undo it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "kebab-case")]
pub enum Change {
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

/// Why a state file is not one tundns will act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Foreign(pub String);

impl DnsState {
    /// Serializes the state as pretty JSON.
    pub fn to_json(&self) -> String {
        // A struct of strings and numbers always serializes.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Reads a state file's bytes: only a well-formed state of `interface`, in the format
    /// this tundns writes, is accepted.
    pub fn parse(bytes: &[u8], interface: &str) -> Result<Self, Foreign> {
        let state: DnsState = serde_json::from_slice(bytes)
            .map_err(|error| Foreign(format!("not a tundns DNS state ({error})")))?;
        if state.format != STATE_FORMAT {
            return Err(Foreign(format!(
                "format {:?}, expected {STATE_FORMAT:?}",
                state.format
            )));
        }
        if state.interface != interface {
            return Err(Foreign(format!(
                "it is for interface {:?}, not {interface:?}",
                state.interface
            )));
        }
        if let Change::File {
            original_base64: Some(original),
            ..
        } = &state.change
            && BASE64.decode(original).is_err()
        {
            return Err(Foreign("original_base64 is not base64".to_string()));
        }
        Ok(state)
    }
}

/// What restoring a rewritten file comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRestore {
    /// The file holds what tundns wrote: put the original back.
    PutBack,
    /// The file already holds the original (the change never happened, or was undone).
    AlreadyOriginal,
    /// Someone else wrote the file since: leave it.
    ChangedByOthers,
}

/// Decides whether a file tundns rewrote is still tundns's to restore. `None` is a
/// missing file.
pub fn file_restore(current: Option<&[u8]>, original: Option<&[u8]>, written: &str) -> FileRestore {
    if current == Some(written.as_bytes()) {
        FileRestore::PutBack
    } else if current == original {
        FileRestore::AlreadyOriginal
    } else {
        FileRestore::ChangedByOthers
    }
}

/// The backup kept next to a rewritten resolv.conf.
pub fn backup_path(resolv_conf: &Path, interface: &str) -> PathBuf {
    let mut name = resolv_conf.as_os_str().to_owned();
    name.push(format!(".tundns-{interface}"));
    PathBuf::from(name)
}

/// The state file of `interface`.
pub fn state_path(interface: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{interface}.dns-state"))
}

/// A failure to change, restore or repair the system resolver.
#[derive(Debug, thiserror::Error)]
pub enum SystemDnsError {
    #[error(
        "{path}: {reason}; it was left alone, and so was the system resolver. Check the resolver, then remove the file"
    )]
    ForeignState { path: PathBuf, reason: String },
    #[error(
        "{file} changed since tundns wrote it, so tundns leaves it alone; the original is in {backup} \
         (restore it yourself if you want it back), then remove {state}"
    )]
    ChangedByOthers {
        file: PathBuf,
        backup: PathBuf,
        state: PathBuf,
    },
    #[error(
        "this network namespace shares the host's /etc/resolv.conf; tundns will not point the host \
         at a proxy it cannot reach (give the namespace its own: /etc/netns/<ns>/resolv.conf)"
    )]
    SharedWithHost,
    #[error("tundns (pid {pid}) still runs {interface} and owns its DNS change; stop it first")]
    StillRunning { interface: String, pid: u32 },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Command(#[from] CommandError),
}

impl From<FileError> for SystemDnsError {
    fn from(
        FileError {
            action,
            path,
            source,
        }: FileError,
    ) -> Self {
        SystemDnsError::Io {
            action,
            path,
            source,
        }
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SystemDnsError {
    let error = FileError::of(action, path);
    move |source| error(source).into()
}

/// The interface `tundns reset` means: a config path's file stem (`wg0.conf`,
/// `/etc/wireguard/wg0.conf`), or an interface name as is.
pub fn interface_for(target: &str) -> Result<String, tundns_config::ConfigError> {
    if target.is_empty() || target.contains('/') || target.ends_with(".conf") {
        tundns_config::interface_name_from_path(target)
    } else {
        tundns_config::interface_name_from_path(format!("{target}.conf"))
    }
}

/// What [`repair`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// No state file: nothing to do.
    Nothing,
    /// A change left by an earlier run was undone.
    Restored(Backend),
}

/// Undoes a change an earlier run of `interface` left behind, if its state file says so.
pub fn repair(interface: &str) -> Result<Repair, SystemDnsError> {
    let path = state_path(interface);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Repair::Nothing),
        Err(error) => return Err(io_error("reading", &path)(error)),
    };
    let state = DnsState::parse(&bytes, interface).map_err(|Foreign(reason)| {
        SystemDnsError::ForeignState {
            path: path.clone(),
            reason,
        }
    })?;
    if state.pid != std::process::id() && process_is_tundns(state.pid) {
        return Err(SystemDnsError::StillRunning {
            interface: interface.to_string(),
            pid: state.pid,
        });
    }
    let backend = undo(&state, &path, Undo::AfterCrash)?;
    Ok(Repair::Restored(backend))
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

/// A change made to the system resolver, undone by [`AppliedDns::restore`].
#[derive(Debug)]
pub struct AppliedDns {
    state: DnsState,
    state_path: PathBuf,
}

impl AppliedDns {
    /// Gives the system resolver back and removes the state file.
    pub fn restore(self) -> Result<Backend, SystemDnsError> {
        undo(&self.state, &self.state_path, Undo::OwnStop)
    }
}

/// What `tundns up` does about the system resolver, decided before the tunnel exists.
#[derive(Debug)]
pub struct Prepared {
    plan: Plan,
    backend: Backend,
    upstreams: Vec<Upstream>,
}

impl Prepared {
    /// Repairs what an earlier run left, picks the backend and reads the system's resolvers
    /// (the upstreams when the config names none). Changes nothing else.
    pub fn new(config: &Config) -> Result<Self, SystemDnsError> {
        let interface = &config.interface_name;
        if let Repair::Restored(backend) = repair(interface)? {
            tracing::warn!(%interface, %backend, "restored the system resolver an earlier run left changed");
        }
        let plan = plan(config);
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

    /// Points the system resolver as planned, recording the change first. `None` when the
    /// plan leaves it alone. On failure, whatever was done is undone.
    pub fn apply(&self, interface: &str) -> Result<Option<AppliedDns>, SystemDnsError> {
        let Some(settings) = &self.plan.settings else {
            return Ok(None);
        };
        let state_path = state_path(interface);
        let change = match self.backend {
            Backend::Resolved => Change::Resolved,
            Backend::Resolvconf | Backend::Openresolv => {
                let flavor = if self.backend == Backend::Openresolv {
                    ResolvconfFlavor::Openresolv
                } else {
                    ResolvconfFlavor::Debian
                };
                let order = std::fs::read_to_string(RESOLVCONF_INTERFACE_ORDER).ok();
                Change::Resolvconf {
                    record: resolvconf_record_name(flavor, order.as_deref(), interface),
                    openresolv: flavor == ResolvconfFlavor::Openresolv,
                }
            }
            Backend::File => {
                let path = PathBuf::from(RESOLV_CONF);
                let original = read_small(&path)?;
                let backup = backup_path(&path, interface);
                let parsed =
                    parse_resolv_conf(&String::from_utf8_lossy(original.as_deref().unwrap_or(&[])));
                let written = render_resolv_conf(&parsed, settings, interface, &backup);
                if let Some(original) = &original {
                    write_atomically(&backup, original, 0o644)?;
                }
                Change::File {
                    path,
                    backup,
                    original_base64: original.map(|bytes| BASE64.encode(bytes)),
                    written,
                }
            }
        };
        let state = DnsState {
            format: STATE_FORMAT.to_string(),
            interface: interface.to_string(),
            pid: std::process::id(),
            change,
        };
        std::fs::create_dir_all(STATE_DIR).map_err(io_error("creating", Path::new(STATE_DIR)))?;
        write_atomically(&state_path, state.to_json().as_bytes(), 0o600)?;
        let applied = AppliedDns { state, state_path };
        if let Err(error) = make_change(&applied.state, settings) {
            if let Err(undo_error) = undo(&applied.state, &applied.state_path, Undo::OwnStop) {
                tracing::warn!(%undo_error, "undoing a half-made DNS change");
            }
            return Err(error);
        }
        tracing::info!(backend = %self.backend, servers = %join(&settings.servers), "system resolver points at the tunnel");
        Ok(Some(applied))
    }
}

fn make_change(state: &DnsState, settings: &ResolverSettings) -> Result<(), SystemDnsError> {
    match &state.change {
        Change::Resolved => run_all(&apply_commands(
            Backend::Resolved,
            &state.interface,
            settings,
        )),
        Change::Resolvconf { record, openresolv } => {
            let backend = if *openresolv {
                Backend::Openresolv
            } else {
                Backend::Resolvconf
            };
            run_all(&apply_commands(backend, record, settings))
        }
        Change::File { path, written, .. } => overwrite_in_place(path, Some(written.as_bytes())),
    }
}

/// Undoes `state`'s change and removes its files. The state file stays when the resolver
/// is not tundns's to restore any more.
fn undo(state: &DnsState, state_path: &Path, by: Undo) -> Result<Backend, SystemDnsError> {
    let backend = match &state.change {
        Change::Resolved => {
            // After a crash the per-link settings went with the link.
            if by == Undo::OwnStop {
                run_all_lenient(&revert_commands(Backend::Resolved, &state.interface));
            }
            Backend::Resolved
        }
        Change::Resolvconf { record, openresolv } => {
            let backend = if *openresolv {
                Backend::Openresolv
            } else {
                Backend::Resolvconf
            };
            if by == Undo::OwnStop || !interface_exists(&state.interface) {
                run_all_lenient(&revert_commands(backend, record));
            } else {
                tracing::warn!(
                    interface = %state.interface,
                    %record,
                    "left the resolvconf record alone: the interface exists again and is not this run's"
                );
            }
            backend
        }
        Change::File {
            path,
            backup,
            original_base64,
            written,
        } => {
            let original = original_base64
                .as_deref()
                .map(|text| BASE64.decode(text))
                .transpose()
                .map_err(|_| SystemDnsError::ForeignState {
                    path: state_path.to_path_buf(),
                    reason: "original_base64 is not base64".to_string(),
                })?;
            let current = read_small(path)?;
            match file_restore(current.as_deref(), original.as_deref(), written) {
                FileRestore::PutBack => overwrite_in_place(path, original.as_deref())?,
                FileRestore::AlreadyOriginal => {}
                FileRestore::ChangedByOthers => {
                    return Err(SystemDnsError::ChangedByOthers {
                        file: path.clone(),
                        backup: backup.clone(),
                        state: state_path.to_path_buf(),
                    });
                }
            }
            remove_if_present(backup)?;
            Backend::File
        }
    };
    remove_if_present(state_path)?;
    Ok(backend)
}

/// The system's resolvers before tundns changes anything.
fn system_resolvers(backend: Backend, interface: &str) -> Vec<Upstream> {
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

/// Looks at the machine for [`choose_backend`].
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

/// True when `pid` is a live (not zombie) tundns process.
pub(crate) fn process_is_tundns(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) state ...": comm may hold spaces and parentheses, so split at the last ')'.
    let Some((head, tail)) = stat.rsplit_once(')') else {
        return false;
    };
    let comm = head
        .split_once('(')
        .map(|(_, comm)| comm)
        .unwrap_or_default();
    let state = tail.split_whitespace().next().unwrap_or_default();
    comm == "tundns" && !matches!(state, "Z" | "X")
}

fn run_all(commands: &[CommandLine]) -> Result<(), SystemDnsError> {
    for command in commands {
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

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";

    fn config(interface: &str, proxy: &str) -> Config {
        let text = format!("[Interface]\n{KEY}\n{interface}\n[DNSProxy]\n{proxy}\n");
        Config::parse(&text, "wg0.conf").expect("a valid config")
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    fn settings(servers: &[&str], search: &[&str]) -> ResolverSettings {
        ResolverSettings {
            servers: ips(servers),
            search: search.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn dns_naming_the_proxy_points_the_system_at_it_with_the_search_domains() {
        let plan = plan(&config("DNS = 10.30.30.30, corp.example", ""));
        assert_eq!(
            plan.settings,
            Some(settings(&["10.30.30.30"], &["corp.example"]))
        );
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    }

    #[test]
    fn no_dns_and_no_set_system_dns_leaves_the_system_alone() {
        assert_eq!(plan(&config("", "")).settings, None);
    }

    #[test]
    fn set_system_dns_true_uses_the_virtual_addresses() {
        let plan = plan(&config("DNS = lab.example", "SetSystemDNS = true"));
        assert_eq!(
            plan.settings,
            Some(settings(
                &["10.30.30.30", "fd30:30:30::30"],
                &["lab.example"]
            ))
        );
        let plan = super::plan(&config("DNS = 192.0.2.1", "SetSystemDNS = on"));
        assert_eq!(
            plan.settings.unwrap().servers,
            ips(&["10.30.30.30", "fd30:30:30::30"])
        );
        assert!(
            plan.warnings[0].contains("192.0.2.1"),
            "{:?}",
            plan.warnings
        );
    }

    #[test]
    fn set_system_dns_false_wins_over_dns() {
        let plan = plan(&config("DNS = 10.30.30.30", "SetSystemDNS = false"));
        assert_eq!(plan.settings, None);
        assert!(plan.warnings[0].contains("SetSystemDNS = false"));
    }

    #[test]
    fn dns_bypassing_the_proxy_is_applied_as_wg_quick_does_with_a_warning() {
        let plan = plan(&config("DNS = 192.0.2.53", ""));
        assert_eq!(plan.settings, Some(settings(&["192.0.2.53"], &[])));
        assert!(plan.warnings[0].contains("bypass"), "{:?}", plan.warnings);
        let disabled = super::plan(&config("DNS = 192.0.2.53", "Enabled = false"));
        assert!(disabled.warnings.is_empty());
    }

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

    #[test]
    fn resolvconf_record_names_follow_the_interface_order() {
        let order = "lo.inet6\nlo\nlo.!(pdns|pdns-recursor)\ntun*\ntap*\n";
        assert_eq!(
            resolvconf_record_name(ResolvconfFlavor::Debian, Some(order), "wg0"),
            "tun.wg0"
        );
        assert_eq!(
            resolvconf_record_name(ResolvconfFlavor::Debian, None, "wg0"),
            "wg0"
        );
        assert_eq!(
            resolvconf_record_name(ResolvconfFlavor::Openresolv, Some(order), "wg0"),
            "wg0"
        );
    }

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
    fn resolvectl_output_without_our_own_link() {
        let dns = "Global: 192.0.2.1 192.0.2.1\n\
                   Link 2 (eth0): 198.51.100.53#dns.example 2001:db8::53 fe80::1 fe80::2%2\n    \
                   [2001:db8::54]:5353\n\
                   Link 3 (wg0): 10.30.30.30\n         10.30.30.31\n\
                   Link 4 (eth1):\n";
        let servers: Vec<String> = resolved_upstreams(dns, Some(""), "wg0")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            servers,
            [
                "192.0.2.1:53",
                "198.51.100.53:53",
                "[2001:db8::53]:53",
                "[2001:db8::54]:5353"
            ]
        );
    }

    #[test]
    fn resolved_dns_over_tls_stays_encrypted() {
        let dns = "Global: 192.0.2.1#dns.example 192.0.2.2:8853#Other.Example\n\
                   Link 2 (eth0): 198.51.100.53#dot.example 198.51.100.54\n\
                   Link 3 (eth1): 203.0.113.53#ignored.example\n\
                   Link 4 (wg0): 10.30.30.30#dns.example\n";
        let dot = "Global: yes\n\
                   Link 2 (eth0): opportunistic\n\
                   Link 3 (eth1): no\n\
                   Link 4 (wg0):\n";
        let tls = |name: &str, address: &str| Upstream::Tls {
            server_name: name.into(),
            address: address.parse().unwrap(),
        };
        let udp = |address: &str| Upstream::Udp(address.parse().unwrap());
        assert_eq!(
            resolved_upstreams(dns, Some(dot), "wg0"),
            [
                tls("dns.example", "192.0.2.1:853"),
                tls("other.example", "192.0.2.2:8853"),
                tls("dot.example", "198.51.100.53:853"),
                udp("198.51.100.53:53"),
                // Opportunistic without a name: TLS checked against the address.
                tls("198.51.100.54", "198.51.100.54:853"),
                udp("198.51.100.54:53"),
                udp("203.0.113.53:53"),
            ]
        );
        // A link without its own setting follows the global one.
        let unset = "Global: yes\nLink 2 (eth0):\n";
        assert_eq!(
            resolved_upstreams("Link 2 (eth0): 198.51.100.53", Some(unset), "wg0"),
            [tls("198.51.100.53", "198.51.100.53:853")]
        );
        // No DNSOverTLS line at all: plain DNS, resolved's default.
        assert_eq!(
            resolved_upstreams("Global: 192.0.2.1#dns.example", Some(""), "wg0"),
            [udp("192.0.2.1:53")]
        );
        // DNSOverTLS unreadable: a named server (a name is only for TLS) tries TLS first.
        assert_eq!(
            resolved_upstreams("Global: 192.0.2.1#dns.example 192.0.2.2", None, "wg0"),
            [
                tls("dns.example", "192.0.2.1:853"),
                udp("192.0.2.1:53"),
                udp("192.0.2.2:53")
            ]
        );
        // Wrapped lines continue their label, IPv6 with a port and a name included.
        let wrapped = "Global: 1.1.1.1#cloudflare-dns.com\n        \
                       [2606:4700:4700::1111]:853#cloudflare-dns.com\n";
        assert_eq!(
            resolved_upstreams(wrapped, Some("Global: yes\n"), "wg0"),
            [
                tls("cloudflare-dns.com", "1.1.1.1:853"),
                tls("cloudflare-dns.com", "[2606:4700:4700::1111]:853"),
            ]
        );
    }

    #[test]
    fn system_upstreams_never_loop_through_the_proxy() {
        let found: Vec<Upstream> = [
            "10.30.30.30:53",
            "127.0.0.53:53",
            "192.0.2.53:53",
            "[fd30:30:30::30]:53",
            "0.0.0.0:53",
            "[2001:db8::53]:53",
        ]
        .iter()
        .map(|s| Upstream::Udp(s.parse().unwrap()))
        .collect();
        let upstreams = system_upstreams(found, &ips(&["10.30.30.30", "fd30:30:30::30"]));
        assert_eq!(
            upstreams,
            [
                Upstream::Udp("192.0.2.53:53".parse().unwrap()),
                Upstream::Udp("[2001:db8::53]:53".parse().unwrap()),
            ]
        );
    }

    fn file_state() -> DnsState {
        DnsState {
            format: STATE_FORMAT.to_string(),
            interface: "wg0".to_string(),
            pid: 42,
            change: Change::File {
                path: RESOLV_CONF.into(),
                backup: backup_path(Path::new(RESOLV_CONF), "wg0"),
                original_base64: Some(BASE64.encode(b"nameserver 192.0.2.53\n\xff")),
                written: "nameserver 10.30.30.30\n".to_string(),
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
            change: Change::Resolved,
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
            change: Change::File {
                path: RESOLV_CONF.into(),
                backup: "/b".into(),
                original_base64: Some("not base64!".into()),
                written: String::new(),
            },
            ..file_state()
        })
        .unwrap();
        assert!(refused(bad_base64.as_bytes(), "wg0"));
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
        assert_eq!(
            file_restore(None, Some(original), written),
            FileRestore::ChangedByOthers
        );
    }

    #[test]
    fn paths() {
        assert_eq!(
            backup_path(Path::new("/etc/resolv.conf"), "wg0"),
            Path::new("/etc/resolv.conf.tundns-wg0")
        );
        assert_eq!(
            state_path("wg0"),
            Path::new("/var/lib/tundns/wg0.dns-state")
        );
    }

    #[test]
    fn reset_dns_takes_an_interface_or_a_config() {
        assert_eq!(interface_for("wg0").unwrap(), "wg0");
        assert_eq!(interface_for("tun.x").unwrap(), "tun.x");
        assert_eq!(interface_for("wg0.conf").unwrap(), "wg0");
        assert_eq!(
            interface_for("/etc/wireguard/office.conf").unwrap(),
            "office"
        );
        assert!(interface_for("much-too-long-for-linux").is_err());
        assert!(interface_for("").is_err());
    }

    #[test]
    fn this_process_is_not_a_running_tundns() {
        assert!(!process_is_tundns(std::process::id()));
        assert!(!process_is_tundns(u32::MAX));
    }
}

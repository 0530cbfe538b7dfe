//! The CLI side of the control socket: `tundns status` and `tundns dns ...`. Finds the
//! running tunnel's socket, sends one request, and prints the reply as text (or as the
//! reply's JSON with `--json`).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use serde::de::DeserializeOwned;

use crate::control::protocol::{
    Done, QueryReport, RecordEntry, Reply, Request, RouteEntry, Source, Status,
};
use tundns_host::instance::InstanceLock;
use tundns_host::paths::SocketDirectories;

/// A reply takes at most this long: a traced query may wait for every upstream in turn.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// `tundns dns ...`
#[derive(Debug, Subcommand)]
pub enum DnsCommand {
    /// Local records (the config's `Record =` form).
    Records {
        #[command(subcommand)]
        command: RecordsCommand,
    },
    /// Split-DNS routes: domains answered by their own upstreams.
    Routes {
        #[command(subcommand)]
        command: RoutesCommand,
    },
    /// The blocklist.
    Blocklist {
        #[command(subcommand)]
        command: BlocklistCommand,
    },
    /// Empty the answer cache.
    Flush,
    /// Ask the running proxy and show which path answered, the answer and the time taken.
    Query {
        name: String,
        /// A, AAAA, TXT, MX, ... or TYPEnnn.
        #[arg(default_value = "A")]
        qtype: String,
        /// Ask the route's upstreams directly, past the cache, the blocklist and local data.
        #[arg(long)]
        no_cache: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RecordsCommand {
    /// Every local record and where it comes from.
    List,
    /// Add a record, e.g. `nas.home.internal 60 A 10.99.0.10`. Not written to the config.
    Add {
        #[arg(required = true, num_args = 1..)]
        record: Vec<String>,
    },
    /// Remove the records matching NAME [TYPE [DATA]].
    Remove {
        #[arg(required = true, num_args = 1..)]
        record: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BlocklistCommand {
    /// Read the `BlockList` files again (after a cron job updated them, say) and use them
    /// from the next query on. A bad line keeps the old list and names the file and line.
    Reload,
}

#[derive(Debug, Subcommand)]
pub enum RoutesCommand {
    /// Every route, the default (`.`) included.
    List,
    /// Route DOMAINS (comma-separated) to UPSTREAMS (comma-separated, `Upstream =` forms).
    Add {
        domains: String,
        upstreams: String,
        /// Send these queries through the tunnel, from the interface address.
        #[arg(long)]
        through_tunnel: bool,
    },
    /// Remove the route of DOMAIN.
    Remove { domain: String },
}

/// Runs `tundns status`; the output to print, or the error.
pub fn status(interface: Option<&str>, json: bool) -> Result<String, String> {
    let socket = find_socket(interface)?;
    let reply = call(&socket, &Request::Status)?;
    if json {
        return Ok(pretty(&reply));
    }
    Ok(render_status(&payload(reply)?))
}

/// Runs `tundns down`: asks the tunnel to stop, then waits (at most `wait`) until it is
/// gone: a root tunnel once its lock is free (after PostDown and its watchdog, so that an
/// `up` right after finds the interface free), a rootless one once its UAPI socket is
/// (shutdown removes it last).
pub fn down(interface: Option<&str>, wait: std::time::Duration) -> Result<String, String> {
    let socket = find_socket(interface)?;
    let name = socket
        .file_stem()
        .and_then(|name| name.to_str())
        .ok_or_else(|| format!("{}: not a control socket", socket.display()))?
        .to_owned();
    let message = payload::<Done>(call(&socket, &Request::Stop)?)?.message;
    let deadline = std::time::Instant::now() + wait;
    let still_running = || Err(format!("{message}, but still running after {wait:?}"));
    let wait_while = |present: &dyn Fn() -> bool| {
        while present() {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        true
    };
    if !wait_while(&|| socket.exists()) {
        return still_running();
    }
    if socket == SocketDirectories::system().control_socket(&name) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if !InstanceLock::wait_until_free(&name, left) {
            return still_running();
        }
    } else if let Some(user) = SocketDirectories::user() {
        // The UAPI socket in the user's own directory, which no other tunnel shares.
        let uapi = user.uapi_socket(&name);
        if !wait_while(&|| uapi.exists()) {
            return still_running();
        }
    }
    Ok(format!(
        "{}: stopped\n",
        message.trim_end_matches(": stopping")
    ))
}

/// Runs one `tundns dns ...` command; the output to print, or the error.
pub fn dns(interface: Option<&str>, json: bool, command: DnsCommand) -> Result<String, String> {
    let request = request_of(command);
    let socket = find_socket(interface)?;
    let reply = call(&socket, &request)?;
    if json {
        return Ok(pretty(&reply));
    }
    Ok(match request {
        Request::RecordsList => render_records(&payload::<Vec<RecordEntry>>(reply)?),
        Request::RoutesList => render_routes(&payload::<Vec<RouteEntry>>(reply)?),
        Request::Query { .. } => render_query(&payload(reply)?),
        _ => payload::<Done>(reply)?.message + "\n",
    })
}

fn request_of(command: DnsCommand) -> Request {
    let split = |list: &str| -> Vec<String> {
        list.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect()
    };
    match command {
        DnsCommand::Records { command } => match command {
            RecordsCommand::List => Request::RecordsList,
            RecordsCommand::Add { record } => Request::RecordsAdd {
                record: record.join(" "),
            },
            RecordsCommand::Remove { record } => Request::RecordsRemove {
                record: record.join(" "),
            },
        },
        DnsCommand::Routes { command } => match command {
            RoutesCommand::List => Request::RoutesList,
            RoutesCommand::Add {
                domains,
                upstreams,
                through_tunnel,
            } => Request::RoutesAdd {
                domains: split(&domains),
                upstreams: split(&upstreams),
                through_tunnel,
            },
            RoutesCommand::Remove { domain } => Request::RoutesRemove { domain },
        },
        DnsCommand::Blocklist {
            command: BlocklistCommand::Reload,
        } => Request::BlocklistReload,
        DnsCommand::Flush => Request::Flush,
        DnsCommand::Query {
            name,
            qtype,
            no_cache,
        } => Request::Query {
            name,
            qtype,
            fresh: no_cache,
        },
    }
}

/// The socket of `interface`, or the only one there is: in the system's directory
/// (`tundns up`), or in the user's (`tundns up --userspace`).
pub fn find_socket(interface: Option<&str>) -> Result<PathBuf, String> {
    let directories = SocketDirectories::all();
    let searched = || {
        directories
            .iter()
            .map(|directories| directories.control.display().to_string())
            .collect::<Vec<_>>()
            .join(" or ")
    };
    // A directory this user may not look into (a root tunnel's, for anyone else) is
    // said so, rather than taken for no tunnel at all.
    let denied = |directory: &Path| {
        format!(
            "{}: permission denied: a tunnel started by root is controlled by root",
            directory.display()
        )
    };
    if let Some(interface) = interface {
        if let Some(problem) = tundns_config::interface_name_problem(interface) {
            return Err(format!("invalid interface name {interface:?}: {problem}"));
        }
        let mut refused = None;
        for directories in &directories {
            let socket = directories.control_socket(interface);
            match socket.try_exists() {
                Ok(true) => return Ok(socket),
                Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                    refused.get_or_insert_with(|| denied(&directories.control));
                }
                _ => {}
            }
        }
        return Err(refused.unwrap_or_else(|| {
            format!(
                "{interface} is not running (no control socket in {})",
                searched()
            )
        }));
    }
    let mut refused = None;
    let mut sockets = Vec::new();
    for directories in &directories {
        match list_sockets(&directories.control) {
            Ok(found) => sockets.extend(found),
            Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                refused.get_or_insert_with(|| denied(&directories.control));
            }
            Err(_) => {}
        }
    }
    match sockets.as_slice() {
        [only] => Ok(only.clone()),
        [] => Err(refused.unwrap_or_else(|| {
            format!("no tundns is running (no control socket in {})", searched())
        })),
        several => Err(format!(
            "several tunnels are running ({}): name one",
            several
                .iter()
                .filter_map(|path| path.file_stem()?.to_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The sockets in `directory`; none when it does not exist.
fn list_sockets(directory: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut sockets: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sock"))
        .collect();
    sockets.sort();
    Ok(sockets)
}

/// Sends `request` and reads the reply line.
pub fn call(socket: &Path, request: &Request) -> Result<Reply, String> {
    let failure = |error: std::io::Error| format!("{}: {error}", socket.display());
    let mut stream = UnixStream::connect(socket).map_err(|error| {
        if error.kind() == std::io::ErrorKind::ConnectionRefused {
            let interface = socket.file_stem().unwrap_or_default().to_string_lossy();
            format!(
                "{interface} is not running: {} is a stale socket from a run that died \
                 (`tundns reset {interface}` removes it)",
                socket.display()
            )
        } else {
            failure(error)
        }
    })?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(failure)?;
    let mut line = serde_json::to_string(request).map_err(|error| error.to_string())?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(failure)?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(failure)?;
    serde_json::from_str(&reply).map_err(|error| format!("bad reply {reply:?}: {error}"))
}

fn payload<T: DeserializeOwned>(reply: Reply) -> Result<T, String> {
    match reply {
        Reply::Ok(value) => serde_json::from_value(value).map_err(|e| format!("bad reply: {e}")),
        Reply::Error(message) => Err(message),
    }
}

fn pretty(reply: &Reply) -> String {
    serde_json::to_string_pretty(reply).unwrap_or_default() + "\n"
}

fn render_status(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "interface: {}", status.interface);
    if let Some(port) = status.listen_port {
        let _ = writeln!(out, "  listening port: {port}");
    }
    let now = unix_now();
    for peer in &status.peers {
        let _ = writeln!(out, "\npeer: {}", peer.public_key);
        if let Some(endpoint) = &peer.endpoint {
            let _ = writeln!(out, "  endpoint: {endpoint}");
        }
        if !peer.allowed_ips.is_empty() {
            let _ = writeln!(out, "  allowed ips: {}", peer.allowed_ips.join(", "));
        }
        let handshake = match peer.latest_handshake {
            Some(at) => format!("{} seconds ago", now.saturating_sub(at)),
            None => "none yet".into(),
        };
        let _ = writeln!(out, "  latest handshake: {handshake}");
        let _ = writeln!(
            out,
            "  transfer: {} received, {} sent",
            bytes(peer.rx_bytes),
            bytes(peer.tx_bytes)
        );
    }
    let Some(proxy) = &status.proxy else {
        let _ = writeln!(out, "\ndns proxy: off");
        return out;
    };
    let addresses: Vec<String> = proxy
        .addresses
        .iter()
        .map(ToString::to_string)
        .chain(proxy.listen.iter().map(ToString::to_string))
        .collect();
    let _ = writeln!(out, "\ndns proxy: {}", addresses.join(", "));
    let _ = writeln!(out, "  local records: {}", proxy.local_records);
    for group in &proxy.groups {
        let tunnel = if group.through_tunnel {
            " (through the tunnel)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  upstreams for {}{tunnel}: {} queries, {} answered, {} timeouts",
            if group.domains.is_empty() {
                "(unused)".into()
            } else {
                group.domains.join(", ")
            },
            group.queries,
            group.answered,
            group.timeouts
        );
        for upstream in &group.upstreams {
            let rtt = upstream
                .rtt_ms
                .map_or("rtt -".into(), |rtt| format!("rtt {rtt:.1} ms"));
            let _ = writeln!(
                out,
                "    {}: {}, {rtt}, {} failures in a row",
                upstream.upstream,
                if upstream.alive { "up" } else { "down" },
                upstream.failures
            );
        }
    }
    match &proxy.cache {
        Some(cache) => {
            let ratio = cache
                .hit_ratio
                .map_or("-".into(), |ratio| format!("{:.1}%", ratio * 100.0));
            let _ = writeln!(
                out,
                "  cache: {} entries, {}, {} hits, {} misses, hit ratio {ratio}",
                cache.entries,
                bytes(cache.bytes),
                cache.hits,
                cache.misses
            );
        }
        None => {
            let _ = writeln!(out, "  cache: off");
        }
    }
    let counts: Vec<String> = proxy
        .queries
        .iter()
        .map(|(name, count)| format!("{name} {count}"))
        .collect();
    let _ = writeln!(out, "  queries: {}", counts.join(", "));
    if let Some(encrypted) = &proxy.encrypted {
        let _ = writeln!(out, "  encrypted: {}", encrypted.endpoints.join(", "));
        let certificate = match &encrypted.self_signed {
            Some(path) => format!("self-signed, {}", path.display()),
            None => "TLSCertificate".to_string(),
        };
        let _ = writeln!(out, "  certificate: {certificate}");
        let _ = writeln!(out, "  pin: sha256/{}", encrypted.pin);
    }
    out
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn bytes(count: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{count} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::Config => "config",
        Source::Runtime => "runtime",
    }
}

fn render_records(records: &[RecordEntry]) -> String {
    let mut out = String::new();
    for entry in records {
        let _ = writeln!(out, "{:<8} {}", source_name(entry.source), entry.record);
    }
    if records.is_empty() {
        out.push_str("no local records\n");
    }
    out
}

fn render_routes(routes: &[RouteEntry]) -> String {
    let mut out = String::new();
    for route in routes {
        let _ = writeln!(
            out,
            "{:<8} {} -> {}{}",
            source_name(route.source),
            route.domains.join(", "),
            route.upstreams.join(", "),
            if route.through_tunnel {
                " (through the tunnel)"
            } else {
                ""
            }
        );
    }
    out
}

fn render_query(report: &QueryReport) -> String {
    let mut out = String::new();
    let path = match (&report.path, &report.group) {
        (crate::control::protocol::AnsweredBy::Upstream, Some(group)) => format!(
            "upstream ({} -> {}{})",
            group.domains.join(", "),
            group.upstreams.join(", "),
            if group.through_tunnel {
                ", through the tunnel"
            } else {
                ""
            }
        ),
        (path, _) => serde_json::to_value(path)
            .ok()
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_default(),
    };
    let _ = writeln!(out, "{} {}: {}", report.name, report.qtype, report.rcode);
    let _ = writeln!(out, "path: {path}");
    if let Some(upstream) = &report.upstream {
        let _ = writeln!(out, "answered by: {upstream}");
    }
    if !report.transport.is_empty() {
        let _ = writeln!(out, "asked over: {}", report.transport);
    }
    let _ = writeln!(out, "time: {:.3} ms", report.elapsed_us as f64 / 1000.0);
    for record in &report.answers {
        let _ = writeln!(out, "answer: {record}");
    }
    for record in &report.authority {
        let _ = writeln!(out, "authority: {record}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{
        AnsweredBy, CacheStatus, EncryptedStatus, GroupStatus, PeerStatus, ProxyStatus,
        UpstreamStatus,
    };
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: DnsCommand,
    }

    fn request(args: &[&str]) -> Request {
        let cli = Cli::try_parse_from(std::iter::once("dns").chain(args.iter().copied())).unwrap();
        request_of(cli.command)
    }

    #[test]
    fn a_name_that_is_no_interface_reaches_no_socket() {
        for name in ["../../tmp/x", "-wg0", "w$(id)"] {
            let error = find_socket(Some(name)).unwrap_err();
            assert!(error.starts_with("invalid interface name"), "{error}");
        }
    }

    #[test]
    fn commands_become_requests() {
        assert_eq!(
            request(&["records", "add", "nas.lab", "60", "A", "10.0.0.1"]),
            Request::RecordsAdd {
                record: "nas.lab 60 A 10.0.0.1".into()
            }
        );
        assert_eq!(
            request(&[
                "routes",
                "add",
                "corp, corp.example",
                "10.99.0.53,10.99.0.54",
                "--through-tunnel"
            ]),
            Request::RoutesAdd {
                domains: vec!["corp".into(), "corp.example".into()],
                upstreams: vec!["10.99.0.53".into(), "10.99.0.54".into()],
                through_tunnel: true
            }
        );
        assert_eq!(
            request(&["query", "www.lab"]),
            Request::Query {
                name: "www.lab".into(),
                qtype: "A".into(),
                fresh: false,
            }
        );
        assert_eq!(
            request(&["query", "--no-cache", "www.lab", "TXT"]),
            Request::Query {
                name: "www.lab".into(),
                qtype: "TXT".into(),
                fresh: true,
            }
        );
        assert_eq!(request(&["flush"]), Request::Flush);
        assert!(Cli::try_parse_from(["dns", "records", "add"]).is_err());
    }

    #[test]
    fn a_lone_socket_is_found_and_several_need_a_name() {
        let dir = std::env::temp_dir().join(format!("tundns-sockets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(list_sockets(&dir).unwrap().is_empty());
        std::fs::write(dir.join("wg0.sock"), "").unwrap();
        std::fs::write(dir.join("notes.txt"), "").unwrap();
        assert_eq!(list_sockets(&dir).unwrap(), [dir.join("wg0.sock")]);
        std::fs::write(dir.join("wg1.sock"), "").unwrap();
        assert_eq!(list_sockets(&dir).unwrap().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn status_shows_peers_upstreams_cache_and_counters() {
        let status = Status {
            interface: "wg0".into(),
            listen_port: Some(51820),
            peers: vec![PeerStatus {
                public_key: "KEY=".into(),
                endpoint: Some("192.0.2.1:51820".into()),
                allowed_ips: vec!["10.99.0.0/24".into()],
                latest_handshake: None,
                rx_bytes: 2048,
                tx_bytes: 10,
                persistent_keepalive: None,
            }],
            proxy: Some(ProxyStatus {
                addresses: vec!["10.30.30.30".parse().unwrap()],
                listen: vec!["127.0.0.1:5353".parse().unwrap()],
                local_records: 2,
                groups: vec![GroupStatus {
                    domains: vec![".".into()],
                    through_tunnel: false,
                    upstreams: vec![UpstreamStatus {
                        upstream: "udp://192.0.2.53:53".into(),
                        alive: true,
                        rtt_ms: Some(1.25),
                        failures: 0,
                    }],
                    queries: 3,
                    answered: 3,
                    timeouts: 0,
                }],
                cache: Some(CacheStatus {
                    entries: 1,
                    bytes: 300,
                    hits: 1,
                    misses: 3,
                    hit_ratio: Some(0.25),
                }),
                queries: vec![("local".into(), 4), ("upstream".into(), 3)],
                encrypted: Some(EncryptedStatus {
                    endpoints: vec![
                        "tls://10.30.30.30".into(),
                        "https://10.30.30.30/dns-query".into(),
                    ],
                    pin: "PIN=".into(),
                    self_signed: Some("/var/lib/tundns/wg0.dns-identity.pem".into()),
                }),
            }),
        };
        let text = render_status(&status);
        for expected in [
            "interface: wg0",
            "peer: KEY=",
            "endpoint: 192.0.2.1:51820",
            "latest handshake: none yet",
            "2.00 KiB received, 10 B sent",
            "dns proxy: 10.30.30.30, 127.0.0.1:5353",
            "udp://192.0.2.53:53: up, rtt 1.2 ms",
            "hit ratio 25.0%",
            "queries: local 4, upstream 3",
            "encrypted: tls://10.30.30.30, https://10.30.30.30/dns-query",
            "certificate: self-signed, /var/lib/tundns/wg0.dns-identity.pem",
            "pin: sha256/PIN=",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in:\n{text}");
        }
    }

    #[test]
    fn a_query_report_names_its_path() {
        let report = QueryReport {
            name: "db.corp".into(),
            qtype: "A".into(),
            path: AnsweredBy::Upstream,
            group: Some(RouteEntry {
                domains: vec!["corp".into()],
                upstreams: vec!["10.99.0.53".into()],
                through_tunnel: true,
                source: Source::Runtime,
            }),
            upstream: Some("udp://10.99.0.53:53".into()),
            rcode: "NOERROR".into(),
            answers: vec!["db.corp. 300 IN A 10.99.0.80".into()],
            authority: vec![],
            elapsed_us: 1500,
            transport: "udp".into(),
        };
        let text = render_query(&report);
        assert!(
            text.contains("path: upstream (corp -> 10.99.0.53, through the tunnel)"),
            "{text}"
        );
        assert!(text.contains("answered by: udp://10.99.0.53:53"), "{text}");
        assert!(text.contains("time: 1.500 ms"), "{text}");
        assert!(
            text.contains("answer: db.corp. 300 IN A 10.99.0.80"),
            "{text}"
        );
        let local = QueryReport {
            path: AnsweredBy::Local,
            group: None,
            upstream: None,
            ..report
        };
        let text = render_query(&local);
        assert!(
            text.contains("path: local") && !text.contains("answered by"),
            "{text}"
        );
    }
}

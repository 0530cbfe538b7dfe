//! Parsing and validation of the tundns config file: a wg-quick file, as is, plus an
//! optional `[DNSProxy]` section and any number of `[DNSRoute]` sections.
//!
//! This crate owns the file format: sections, keys, values, defaults, and every check
//! that can be made from the text alone. It turns a file into a typed [`Config`], or a
//! [`ConfigError`] whose `Display` is `path:line: message`.
//!
//! It must never change the system, read any file but the config itself, resolve
//! names, open sockets, or print or log anything: it is pure. Key material never
//! appears in `Debug` output or in error messages ([`SecretKey`] prints `<redacted>`,
//! and a bad key is described without being echoed).
//!
//! What it cannot check from the text alone it keeps with its line, as a
//! [`Spanned`] value: `Record` syntax is checked by the DNS crate, and `HostsFile`,
//! `BlockList` and `CAFile` are read by tundns. Either reports a problem with
//! [`ConfigError::at`], so every message has the same `path:line: message` form.
//!
//! # Format
//!
//! INI-like, as wg-quick reads it. `#` starts a comment anywhere on a line (wg-quick
//! strips it even from `PostUp`, and this parser from a `Record`'s TXT data).
//! Blank lines are ignored. Section names and keys are matched case-insensitively.
//! List keys take comma-separated values and may repeat; other repeatable keys
//! (`Record`, `HostsFile`, `BlockList`, hooks) take one value per line; any other
//! key may appear once per section.
//!
//! ```text
//! [Interface]                    # exactly once
//! PrivateKey = <base64>          # required
//! ListenPort = 51820             # 0..=65535
//! FwMark = 0xca6c                # decimal, 0x-hex, or off (0 also means off)
//! Address = 10.0.0.2/24, fd00::2/64   # list; a bare IP means /32 or /128
//! MTU = 1420                     # default 1420; 576 to 4064, >= 1280 with an IPv6 Address
//! DNS = 192.0.2.53, corp.example # list: IPs are servers, names are search domains
//! Table = auto                   # off, auto, main, local, default or a number
//! PreUp / PostUp / PreDown / PostDown = <command>   # may repeat, order kept
//! SaveConfig = false             # true is rejected: tundns never writes the file back
//!
//! [Peer]                         # zero or more
//! PublicKey = <base64>           # required, unique across peers
//! PresharedKey = <base64>
//! AllowedIPs = 0.0.0.0/0, ::/0   # list; host bits are masked with a warning, like wg
//! Endpoint = vpn.example.com:51820    # ip:port, [v6]:port or host:port (not resolved)
//! PersistentKeepalive = 25       # off (or 0) or 1..=65535 seconds
//!
//! [DNSProxy]                     # at most once; tundns's own
//! Enabled = true                 # default true
//! Address = 10.30.30.30, fd30:30:30::30   # list of virtual IPs (these are the defaults)
//! AllowFrom = 192.168.1.0/24     # list of networks whose hosts may use the virtual IPs
//!                                # besides this host's own addresses; default none
//! Upstream = 192.0.2.53, tls://dns.lab.test@192.0.2.53   # ordered list of URLs, below
//! Timeout = 2s                   # per upstream attempt; ms, s or m; default 2s
//! MaxInFlight = 1024             # default 1024
//! RateLimit = 1000               # UDP answers a second per client network (/24, /56) other
//!                                # than this host; 0 = off; default 1000
//! TcpIdleTimeout = 10s           # default 10s
//! MaxTcpConnections = 256        # default 256
//! CAFile = /etc/tundns/lab-ca.pem     # extra trust anchors for tls:// and https://
//! Cache = on                     # default on
//! CacheFile = on                 # keep the cache across restarts; default on
//! Prefetch = on                  # refresh popular answers before they expire; default on
//! CacheSize = 32MiB              # bytes, KiB, MiB or GiB; 64KiB..=1GiB; default 32MiB
//! CacheMinTTL = 0s               # s, m, h or d; 0s..=7d; default 0s
//! CacheMaxTTL = 1d               # 1s..=7d, not below CacheMinTTL; default 1d
//! CacheMaxNegativeTTL = 1h       # NXDOMAIN and NODATA; 0s..=7d (0s: never); default 1h
//! ServeStale = 1d                # maximum staleness; 0s or off turns it off; default 1d
//! Record = app.lab.internal A 10.99.0.10   # repeatable; NAME [TTL] TYPE DATA, kept as text
//! HostsFile = /etc/tundns/hosts  # repeatable; hosts(5) format
//! LocalZone = lab.internal       # list of domains answered locally (NXDOMAIN if unknown)
//! Block = ads.example            # list of domains blocked with everything under them
//! BlockList = /etc/tundns/block.txt   # repeatable; hosts format or one domain per line
//! BlockMode = nxdomain           # nxdomain or null (0.0.0.0 / ::); default nxdomain
//! BlockTTL = 60s                 # 1s..=7d; default 60s
//! MetricsAddress = 127.0.0.1:9153     # Prometheus metrics over HTTP; default off
//! QueryLog = /var/log/tundns/queries.jsonl   # one JSON line per query; default off
//! SetSystemDNS = true           # point the system resolver at the proxy; false: never
//!                               # touch it; default: follow [Interface] DNS
//! Encrypted = tls, https         # encrypted DNS served on the virtual IPs: tls (DoT, TCP
//!                                # 853), https (DoH, TCP 443), or off; default tls, https
//! TLSCertificate = /etc/tundns/dns.pem   # its certificate chain (PEM), with TLSKey; default:
//! TLSKey = /etc/tundns/dns.key   # a self-signed one tundns makes once and keeps
//!
//! [DNSRoute]                     # zero or more: split DNS, longest suffix wins
//! Domain = corp.internal, corp.example    # required list; "." is the default route
//! Upstream = 10.99.0.53          # required list; same URL forms as [DNSProxy] Upstream
//! ThroughTunnel = true           # default false: sourced from the interface address
//! ```
//!
//! Upstream URLs ([`Upstream`]): a bare `ip`, `ip:port` or `[v6]:port` is UDP with a
//! TCP retry on truncation, as is `udp://ip[:port]`; `tcp://ip[:port]` is TCP only;
//! `tls://name@ip[:port]` is DNS over TLS (port 853), `tls://ip` using the IP as the
//! server name; `https://name@ip[:port]/path` is DNS over HTTPS (port 443, path
//! `/dns-query` if none), `https://ip/path` using the IP as the server name;
//! `quic://name@ip[:port]` is DNS over QUIC (UDP port 853) and `h3://name@ip[:port]/path`
//! DNS over HTTPS over HTTP/3 (UDP port 443, the same path default). Host names are never
//! resolved, so `name@ip` gives the bootstrap address. In a URL an IPv6 address is
//! bracketed.
//!
//! A domain may be routed by one `[DNSRoute]` only. Names no route matches go to
//! `[DNSProxy] Upstream`, which therefore cannot be set together with a `.` route.
//! A `ThroughTunnel` upstream must be inside some `[Peer] AllowedIPs` and have an
//! interface `Address` of its family to be sourced from. With the proxy disabled,
//! `[DNSRoute]` sections only draw a warning.
//!
//! Booleans accept `true/false`, `yes/no`, `on/off` and `1/0`, in any case. The
//! interface is named after the file stem (`/etc/wireguard/wg0.conf` → `wg0`), which
//! must be a valid Linux interface name. Hook commands are kept verbatim: substituting
//! `%i` is the job of whoever runs them.
//!
//! The default upstreams (8.8.8.8 and 8.8.4.4) are the design's; tests must always set
//! their own `Upstream` so that no query ever leaves the test's namespaces.
//!
//! # Example
//!
//! ```
//! use tundns_config::{Config, Upstream};
//!
//! let text = "\
//! [Interface]
//! PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=
//! Address = 10.0.0.2/24
//!
//! [DNSProxy]
//! Upstream = 192.0.2.53
//! ";
//! let config = Config::parse(text, "/etc/wireguard/wg0.conf")?;
//! assert_eq!(config.interface_name, "wg0");
//! assert_eq!(config.interface.mtu, 1420);
//! assert_eq!(config.dns_proxy.upstreams, [Upstream::Udp("192.0.2.53:53".parse()?)]);
//!
//! let error = Config::parse("[Interface]\nAdress = 10.0.0.2/24\n", "wg0.conf").unwrap_err();
//! assert_eq!(
//!     error.to_string(),
//!     r#"wg0.conf:2: unknown key "Adress" in [Interface] (did you mean "Address"?)"#
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

mod error;
mod key;
mod parse;
mod upstream;
mod values;

use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::{NonZeroU16, NonZeroU32};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use zeroize::Zeroizing;

pub use error::{ConfigError, ConfigWarning};
pub use key::{KEY_LEN, PublicKey, SecretKey};
pub use upstream::{DEFAULT_DOH_PATH, DNS_PORT, DOH_PORT, DOQ_PORT, DOT_PORT, Upstream};

/// MTU used when `[Interface]` has no `MTU`, as wg-quick's usual value.
pub const DEFAULT_MTU: u16 = 1420;
/// Smallest MTU accepted without IPv6 addresses (the IPv4 minimum datagram size).
pub const MIN_MTU_IPV4: u16 = 576;

/// The largest MTU: gotatun receives each WireGuard datagram into a 4096-byte buffer, which
/// holds a 16-byte header and a 16-byte tag besides the packet.
pub const MAX_MTU: u16 = 4096 - 32;
/// Smallest MTU accepted when the interface has an IPv6 address (RFC 8200).
pub const MIN_MTU_IPV6: u16 = 1280;
/// Encrypted DNS the proxy serves on its virtual IPs (`Encrypted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncryptedDns {
    /// `tls`: DNS over TLS (RFC 7858) on TCP port 853.
    Tls,
    /// `https`: DNS over HTTPS (RFC 8484) on TCP port 443.
    Https,
    /// `quic`: DNS over QUIC (RFC 9250) on UDP port 853.
    Quic,
}

impl EncryptedDns {
    /// Every protocol, as `Encrypted` names them.
    pub const ALL: [EncryptedDns; 3] = [EncryptedDns::Tls, EncryptedDns::Https, EncryptedDns::Quic];

    /// The port it is served on.
    pub const fn port(self) -> u16 {
        match self {
            EncryptedDns::Tls | EncryptedDns::Quic => DOT_PORT,
            EncryptedDns::Https => DOH_PORT,
        }
    }

    /// Whether it is served over TCP (else over UDP).
    pub const fn is_tcp(self) -> bool {
        matches!(self, EncryptedDns::Tls | EncryptedDns::Https)
    }

    /// Its name in `Encrypted`.
    pub const fn name(self) -> &'static str {
        match self {
            EncryptedDns::Tls => "tls",
            EncryptedDns::Https => "https",
            EncryptedDns::Quic => "quic",
        }
    }
}

/// Default virtual IPv4 address of the DNS proxy.
pub const DEFAULT_VIRTUAL_IPV4: Ipv4Addr = Ipv4Addr::new(10, 30, 30, 30);
/// Default virtual IPv6 address of the DNS proxy (a ULA mirroring the IPv4 one).
pub const DEFAULT_VIRTUAL_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd30, 0x30, 0x30, 0, 0, 0, 0, 0x30);
/// Default upstream resolvers, in order. Tests must always configure their own.
pub const DEFAULT_UPSTREAMS: [Upstream; 2] = [
    Upstream::Udp(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)),
        DNS_PORT,
    )),
    Upstream::Udp(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(8, 8, 4, 4)),
        DNS_PORT,
    )),
];
/// Default per-attempt upstream timeout.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Default bound on DNS queries being worked on at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// Default `RateLimit`: UDP answers a second to one client network other than this host.
pub const DEFAULT_RATE_LIMIT: u32 = 1000;
/// Upper bound accepted for `RateLimit`.
pub const MAX_RATE_LIMIT: usize = 1_000_000;
/// Default idle timeout of a DNS-over-TCP client connection.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on concurrent DNS-over-TCP client connections.
pub const DEFAULT_MAX_TCP_CONNECTIONS: usize = 256;
/// Upper bound accepted for `MaxInFlight`.
pub const MAX_IN_FLIGHT_LIMIT: usize = 1 << 20;
/// Upper bound accepted for `MaxTcpConnections`.
pub const MAX_TCP_CONNECTIONS_LIMIT: usize = 65_535;
/// Default `CacheSize`, in bytes.
pub const DEFAULT_CACHE_SIZE: usize = 32 << 20;
/// Smallest `CacheSize` accepted: room for one largest DNS message.
pub const MIN_CACHE_SIZE: usize = 64 << 10;
/// Largest `CacheSize` accepted.
pub const MAX_CACHE_SIZE: usize = 1 << 30;
/// Default `CacheMinTTL`: answers keep their own TTL.
pub const DEFAULT_CACHE_MIN_TTL: Duration = Duration::ZERO;
/// Default `CacheMaxTTL`.
pub const DEFAULT_CACHE_MAX_TTL: Duration = Duration::from_secs(86_400);
/// Default `CacheMaxNegativeTTL`: an hour, as unbound's `cache-max-negative-ttl`.
pub const DEFAULT_CACHE_MAX_NEGATIVE_TTL: Duration = Duration::from_secs(3600);
/// Default `ServeStale`: the longest an expired answer is served (RFC 8767).
pub const DEFAULT_SERVE_STALE: Duration = Duration::from_secs(86_400);
/// Default `BlockTTL`.
pub const DEFAULT_BLOCK_TTL: Duration = Duration::from_secs(60);
/// Upper bound of `CacheMinTTL`, `CacheMaxTTL`, `ServeStale` and `BlockTTL`.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 86_400);
/// Larger files are rejected unread: a config file is a few kilobytes.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Longest Linux interface name, in bytes (`IFNAMSIZ` - 1).
pub const MAX_INTERFACE_NAME_LEN: usize = 15;

/// A whole, validated config file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The interface name, from the file stem.
    pub interface_name: String,
    /// The `[Interface]` section.
    pub interface: InterfaceConfig,
    /// The `[Peer]` sections, in file order.
    pub peers: Vec<PeerConfig>,
    /// The `[DNSProxy]` section, or its defaults when the file has none, with the
    /// `[DNSRoute]` sections.
    pub dns_proxy: DnsProxyConfig,
    /// The `[Proxy]` section, if the file has one.
    pub proxy: Option<ProxyConfig>,
    /// Things accepted but worth logging, in file order.
    pub warnings: Vec<ConfigWarning>,
    /// Every key written, with its section and line, in file order: for checks made by
    /// whoever uses the config (the rootless mode's refusals, say).
    pub key_lines: Vec<KeyLine>,
}

impl Config {
    /// Every peer's `AllowedIPs`, in file order.
    pub fn allowed_ips(&self) -> impl Iterator<Item = &IpNet> {
        self.peers.iter().flat_map(|peer| &peer.allowed_ips)
    }

    /// Whether `ip` is inside some peer's `AllowedIPs`: WireGuard takes packets to it.
    pub fn in_allowed_ips(&self, ip: IpAddr) -> bool {
        self.allowed_ips().any(|network| network.contains(&ip))
    }

    /// The first line `key` was written on in `section` (`"[Interface]"`), if it was.
    pub fn line_of(&self, section: &str, key: &str) -> Option<usize> {
        self.key_lines
            .iter()
            .find(|written| written.section == section && written.key == key)
            .map(|written| written.line)
    }
}

/// One key as written in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLine {
    /// The section's header, canonically spelled (`"[Interface]"`).
    pub section: &'static str,
    /// The key, canonically spelled (`"FwMark"`).
    pub key: &'static str,
    pub line: usize,
}

/// The `[Interface]` section.
#[derive(Debug, Clone)]
pub struct InterfaceConfig {
    /// `PrivateKey`.
    pub private_key: SecretKey,
    /// `ListenPort`; `None` lets WireGuard pick one.
    pub listen_port: Option<u16>,
    /// `FwMark`; `None` when absent, `off` or 0.
    pub fwmark: Option<NonZeroU32>,
    /// `Address`, in file order, host bits kept (`10.0.0.2/24` is address 10.0.0.2 on
    /// 10.0.0.0/24).
    pub addresses: Vec<IpNet>,
    /// `MTU`, or [`DEFAULT_MTU`].
    pub mtu: u16,
    /// The IPs listed in `DNS`, in order.
    pub dns_servers: Vec<IpAddr>,
    /// The names listed in `DNS` (search domains), in order.
    pub dns_search: Vec<String>,
    /// `Table`, [`RouteTable::Auto`] when absent.
    pub table: RouteTable,
    /// `PreUp` commands, in order, verbatim, with their lines.
    pub pre_up: Vec<Spanned<String>>,
    /// `PostUp` commands, in order, verbatim, with their lines.
    pub post_up: Vec<Spanned<String>>,
    /// `PreDown` commands, in order, verbatim, with their lines.
    pub pre_down: Vec<Spanned<String>>,
    /// `PostDown` commands, in order, verbatim, with their lines.
    pub post_down: Vec<Spanned<String>>,
}

/// The routing table wg-quick's `Table` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteTable {
    /// Add no routes.
    Off,
    /// wg-quick's default: the main table, or a policy-routing table for default routes.
    Auto,
    /// A table number (`main` is 254, `local` 255, `default` 253).
    Id(u32),
}

/// A `[Peer]` section.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// `PublicKey`.
    pub public_key: PublicKey,
    /// `PresharedKey`.
    pub preshared_key: Option<SecretKey>,
    /// `AllowedIPs`, in file order, host bits masked.
    pub allowed_ips: Vec<IpNet>,
    /// `Endpoint`.
    pub endpoint: Option<Endpoint>,
    /// `PersistentKeepalive`; `None` when absent, `off` or 0.
    pub persistent_keepalive: Option<NonZeroU16>,
}

/// A peer's `Endpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `ip:port` or `[v6]:port`.
    Addr(SocketAddr),
    /// `host:port`, left for the caller to resolve.
    Host {
        /// A syntactically valid DNS name (not an IP address).
        host: String,
        /// 1..=65535.
        port: u16,
    },
}

/// The `[DNSProxy]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsProxyConfig {
    /// `Enabled`, default true.
    pub enabled: bool,
    /// `Address`: the virtual IPs, in order, without duplicates. Default
    /// [`DEFAULT_VIRTUAL_IPV4`] and [`DEFAULT_VIRTUAL_IPV6`]; empty when `Address` lists
    /// host addresses only.
    pub addresses: Vec<IpAddr>,
    /// The `ip:port` items of `Address`: host sockets the proxy also serves DNS on, over
    /// UDP and TCP (the only ones in the rootless mode). Not bound here.
    pub listen: Vec<Spanned<SocketAddr>>,
    /// `AllowFrom`: networks whose hosts may use the virtual IPs' services, besides this
    /// host's own addresses (the proxies' listeners excepted: they serve this host only).
    pub allow_from: Vec<IpNet>,
    /// `Upstream`: resolvers to try in order, for names no route in `routes` matches.
    /// Default [`DEFAULT_UPSTREAMS`].
    pub upstreams: Vec<Upstream>,
    /// `Timeout`: per upstream attempt.
    pub upstream_timeout: Duration,
    /// `MaxInFlight`: queries worked on at once, at least 1.
    pub max_in_flight: usize,
    /// `RateLimit`: UDP answers a second to one client network (/24 or /56) other than this
    /// host, so that no allowed source can make the proxy an amplifier; `None` is off.
    pub rate_limit: Option<std::num::NonZeroU32>,
    /// `TcpIdleTimeout`: idle time after which a client TCP connection is closed.
    pub tcp_idle_timeout: Duration,
    /// `MaxTcpConnections`: concurrent client TCP connections, at least 1.
    pub max_tcp_connections: usize,
    /// `CAFile`: extra trust anchors for `tls://` and `https://` upstreams, the path as
    /// written; `None` means the system roots only. Not read here.
    pub ca_file: Option<Spanned<PathBuf>>,
    /// `Cache`, default true.
    pub cache: bool,
    /// `CacheFile`, default true: the cache is kept in the state directory across restarts.
    pub cache_file: bool,
    /// `Prefetch`, default true: a hit in the last tenth of an answer's TTL refreshes it.
    pub prefetch: bool,
    /// `CacheSize`: the cache's bound in bytes, [`MIN_CACHE_SIZE`]..=[`MAX_CACHE_SIZE`].
    pub cache_size: usize,
    /// `CacheMinTTL`: cached TTLs are raised to at least this.
    pub cache_min_ttl: Duration,
    /// `CacheMaxTTL`: cached TTLs are cut to at most this; never below `cache_min_ttl`.
    pub cache_max_ttl: Duration,
    /// `CacheMaxNegativeTTL`: longest an NXDOMAIN or NODATA is cached.
    pub cache_max_negative_ttl: Duration,
    /// `ServeStale`: how long past expiry an answer may still be served when every
    /// upstream fails; `None` when `0s` or `off`.
    pub serve_stale: Option<Duration>,
    /// `Record`: local records as written (`NAME [TTL] TYPE DATA`), in file order.
    /// Their syntax is the DNS crate's to check.
    pub records: Vec<Spanned<String>>,
    /// `HostsFile`: hosts(5) files to load local records from, paths as written.
    pub hosts_files: Vec<Spanned<PathBuf>>,
    /// `LocalZone`: domains answered only locally, lowercase without the final dot,
    /// without duplicates.
    pub local_zones: Vec<Spanned<String>>,
    /// `Block`: blocked domains (each with every name under it), lowercase without the
    /// final dot, without duplicates.
    pub blocked: Vec<String>,
    /// `BlockList`: files of blocked domains, paths as written.
    pub block_lists: Vec<Spanned<PathBuf>>,
    /// `BlockMode`: how a blocked name is answered.
    pub block_mode: BlockMode,
    /// `BlockTTL`: the TTL of blocked answers.
    pub block_ttl: Duration,
    /// The `[DNSRoute]` sections, in file order. Kept (with a warning) when the proxy
    /// is disabled.
    pub routes: Vec<DnsRouteConfig>,
    /// `MetricsAddress`: where Prometheus metrics are served over HTTP; `None` (the
    /// default, or `off`) serves none. Not bound here.
    pub metrics_address: Option<Spanned<SocketAddr>>,
    /// `QueryLog`: the file that gets one JSON line per query; `None` (the default, or
    /// `off`) logs none. Not opened here.
    pub query_log: Option<Spanned<PathBuf>>,
    /// `SetSystemDNS`: `Some(true)` points the system resolver at the virtual IPs,
    /// `Some(false)` leaves it alone even when `[Interface] DNS` is set, `None` (the
    /// default) applies `DNS` as wg-quick does. `true` needs the proxy enabled.
    pub set_system_dns: Option<bool>,
    /// `Encrypted`: what encrypted DNS is served on the virtual IPs, without duplicates;
    /// default [`EncryptedDns::ALL`], empty when `off`.
    pub encrypted: Vec<EncryptedDns>,
    /// `TLSCertificate`: the certificate chain (PEM) encrypted DNS presents, the path as
    /// written; set together with `tls_key` or not at all. `None`: tundns makes a
    /// self-signed one. Not read here.
    pub tls_certificate: Option<Spanned<PathBuf>>,
    /// `TLSKey`: the private key (PEM) of `tls_certificate`. Not read here.
    pub tls_key: Option<Spanned<PathBuf>>,
    /// Whether `Upstream` was written. When it was not, `upstreams` holds
    /// [`DEFAULT_UPSTREAMS`], and tundns prefers the resolvers the system already had.
    pub upstreams_configured: bool,
}

/// The `[Proxy]` section: proxies whose connections leave through the tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyConfig {
    /// `SOCKS5`: addresses to serve SOCKS5 on, in order: virtual IPs (of
    /// [`DnsProxyConfig::addresses`], the DNS proxy enabled, not port 53) or host
    /// addresses. A host address that is not loopback requires `credentials`. No address is in this list and `http` twice, and the two
    /// together hold at least one.
    pub socks5: Vec<Spanned<SocketAddr>>,
    /// `HTTP`: addresses to serve the HTTP proxy (CONNECT and `http://`) on, as
    /// `socks5`.
    pub http: Vec<Spanned<SocketAddr>>,
    /// `Credentials`: the file of `user:password` lines, the path as written; `None`
    /// means no authentication. Not read here.
    pub credentials: Option<Spanned<PathBuf>>,
}

impl ProxyConfig {
    /// Every listen address with its key (`"SOCKS5"` or `"HTTP"`), SOCKS5's first.
    pub fn listeners(&self) -> impl Iterator<Item = (&'static str, &Spanned<SocketAddr>)> {
        let socks5 = self.socks5.iter().map(|listen| ("SOCKS5", listen));
        socks5.chain(self.http.iter().map(|listen| ("HTTP", listen)))
    }
}

/// A value with the 1-based line of the config file it came from, for checks made
/// after parsing (report them with [`ConfigError::at`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// The line it was written on.
    pub line: usize,
}

impl<T> Spanned<T> {
    /// Pairs a value with its line.
    pub fn new(value: T, line: usize) -> Self {
        Self { value, line }
    }
}

/// How the DNS proxy answers a blocked name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BlockMode {
    /// `nxdomain`: NXDOMAIN with an SOA.
    #[default]
    NxDomain,
    /// `null`: `0.0.0.0` for A, `::` for AAAA, no data for other types.
    Null,
}

/// A `[DNSRoute]` section: queries for names at or under `domains` go to `upstreams`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRouteConfig {
    /// `Domain`: lowercase, without the final dot; `.` is the default route. No domain
    /// appears in two routes.
    pub domains: Vec<String>,
    /// `Upstream`: resolvers to try in order, at least one.
    pub upstreams: Vec<Upstream>,
    /// `ThroughTunnel`: queries are sourced from the interface address and sent
    /// through WireGuard. Default false.
    pub through_tunnel: bool,
    /// The line of the `[DNSRoute]` header.
    pub line: usize,
}

impl Default for DnsProxyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            addresses: vec![
                IpAddr::V4(DEFAULT_VIRTUAL_IPV4),
                IpAddr::V6(DEFAULT_VIRTUAL_IPV6),
            ],
            listen: Vec::new(),
            allow_from: Vec::new(),
            upstreams: DEFAULT_UPSTREAMS.to_vec(),
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            rate_limit: std::num::NonZeroU32::new(DEFAULT_RATE_LIMIT),
            tcp_idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT,
            max_tcp_connections: DEFAULT_MAX_TCP_CONNECTIONS,
            ca_file: None,
            cache: true,
            cache_file: true,
            prefetch: true,
            cache_size: DEFAULT_CACHE_SIZE,
            cache_min_ttl: DEFAULT_CACHE_MIN_TTL,
            cache_max_ttl: DEFAULT_CACHE_MAX_TTL,
            cache_max_negative_ttl: DEFAULT_CACHE_MAX_NEGATIVE_TTL,
            serve_stale: Some(DEFAULT_SERVE_STALE),
            records: Vec::new(),
            hosts_files: Vec::new(),
            local_zones: Vec::new(),
            blocked: Vec::new(),
            block_lists: Vec::new(),
            block_mode: BlockMode::NxDomain,
            block_ttl: DEFAULT_BLOCK_TTL,
            routes: Vec::new(),
            metrics_address: None,
            query_log: None,
            set_system_dns: None,
            encrypted: EncryptedDns::ALL.to_vec(),
            tls_certificate: None,
            tls_key: None,
            upstreams_configured: false,
        }
    }
}

impl Config {
    /// Reads and parses a config file. The interface is named after the file stem.
    ///
    /// A missing, unreadable, non-UTF-8 or larger than [`MAX_FILE_BYTES`] file is an
    /// error. The bytes read are zeroed once parsed.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let cannot_read = |error: std::io::Error| {
            ConfigError::for_file(path, format!("cannot read config file: {error}"))
        };
        let file = std::fs::File::open(path).map_err(cannot_read)?;
        let mut bytes = Zeroizing::new(Vec::new());
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(cannot_read)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(ConfigError::for_file(
                path,
                format!("config file is larger than {MAX_FILE_BYTES} bytes"),
            ));
        }
        let text = std::str::from_utf8(&bytes).map_err(|error| {
            let line = 1 + bytes[..error.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            ConfigError::at(path, line, "not valid UTF-8")
        })?;
        Self::parse(text, path)
    }

    /// Parses config text. `path` names the interface (its stem) and prefixes every
    /// message; it is not read.
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        parse::parse(text, path.as_ref())
    }
}

/// The interface name a config path gives: its file stem, checked as wg-quick checks it:
/// 1..=15 of `A-Z a-z 0-9 _ = + . -`, and not `.` or `..`. The name reaches hooks (`%i`),
/// `ip`, `nft` and `resolvectl` command lines, so nothing else passes, and no leading `-`
/// either, which those tools would read as an option.
pub fn interface_name_from_path(path: impl AsRef<Path>) -> Result<String, ConfigError> {
    let path = path.as_ref();
    let stem = path.file_stem().ok_or_else(|| {
        ConfigError::for_file(
            path,
            "the path has no file name to name the interface after",
        )
    })?;
    let name = stem.to_str().ok_or_else(|| {
        ConfigError::for_file(
            path,
            "the file name is not valid UTF-8, so it cannot name the interface",
        )
    })?;
    let problem = interface_name_problem(name);
    match problem {
        Some(problem) => Err(ConfigError::for_file(
            path,
            format!(
                "invalid interface name {} (taken from the file name): {problem}",
                values::shown(name)
            ),
        )),
        None => Ok(name.to_string()),
    }
}

/// Why `name` cannot name an interface (see [`interface_name_from_path`]), if it cannot.
pub fn interface_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("it is empty".to_string())
    } else if name.len() > MAX_INTERFACE_NAME_LEN {
        Some(format!(
            "it is {} bytes long, the limit is {MAX_INTERFACE_NAME_LEN}",
            name.len()
        ))
    } else if name == "." || name == ".." {
        Some("it cannot be . or ..".to_string())
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_=+.-".contains(*c)))
    {
        Some(format!(
            "it contains {}, and only A-Z a-z 0-9 _ = + . - may name an interface, as in wg-quick",
            values::shown(&c.to_string())
        ))
    } else if name.starts_with('-') {
        Some("it starts with '-', which commands would take for an option".to_string())
    } else {
        None
    }
}

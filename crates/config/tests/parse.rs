//! Parsing of whole files: a realistic wg-quick file, defaults, every error with its
//! exact line, secrets kept out of output, and the file-level entry point.

use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU16, NonZeroU32};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use tundns_config::{
    BlockMode, Config, ConfigError, DEFAULT_UPSTREAMS, DEFAULT_VIRTUAL_IPV4, DEFAULT_VIRTUAL_IPV6,
    DnsProxyConfig, DnsRouteConfig, EncryptedDns, Endpoint, PublicKey, RouteTable, Spanned,
    Upstream, interface_name_from_path,
};

const PRIVATE_KEY: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
/// The first bytes of PRIVATE_KEY as `{:?}` of a byte array would print them.
const PRIVATE_KEY_DEBUG_BYTES: &str = "200, 9, 243, 229";
const PEER_A: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
const PEER_B: &str = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";
const PRESHARED_KEY: &str = "gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBz6EA=";
const PRESHARED_KEY_DEBUG_BYTES: &str = "128, 222, 185, 6";

fn realistic() -> String {
    format!(
        "\
# wg0: office tunnel
[Interface]
PrivateKey = {PRIVATE_KEY}
ListenPort = 51820
FwMark = 0xca6c
Address = 10.0.0.2/24, fd00::2/64
Address = 10.0.1.2
MTU = 1380
DNS = 192.0.2.53, 2001:db8::53, corp.example
DNS = lab.example.
Table = 1234
PreUp = echo pre-up %i
PostUp = iptables -A FORWARD -i %i -j ACCEPT # trailing comments go, as in wg-quick
PostUp = echo second
PreDown = echo pre-down
PostDown = echo post-down
SaveConfig = false

[Peer]
PublicKey = {PEER_A}
PresharedKey = {PRESHARED_KEY}
AllowedIPs = 0.0.0.0/0, ::/0
Endpoint = vpn.example.com:51820
PersistentKeepalive = 25

[Peer]
PublicKey = {PEER_B}
AllowedIPs = 198.51.100.0/24
AllowedIPs = 2001:db8:1::/48
Endpoint = [2001:db8::1]:51820
PersistentKeepalive = off

[DNSProxy]
Enabled = true
Address = 10.30.30.30, fd30:30:30::30
Address = 10.30.30.31
Upstream = 192.0.2.53, 198.51.100.53:5353
Upstream = [2001:db8::53]:53, 2001:db8::54
Timeout = 500ms
MaxInFlight = 64
TcpIdleTimeout = 30s
MaxTcpConnections = 16
Upstream = tcp://192.0.2.54, tls://dns.lab.test@192.0.2.53:853, https://dns.lab.test@[2001:db8::53]/dns-query, quic://dns.lab.test@192.0.2.53, h3://dns.lab.test@[2001:db8::53]:8443/q
CAFile = /etc/tundns/lab-ca.pem
Cache = on
CacheSize = 64MiB
CacheMinTTL = 30s
CacheMaxTTL = 12h
CacheMaxNegativeTTL = 10m
ServeStale = 2d
Record = app.lab.internal A 10.99.0.10
Record = *.dev.lab.internal 60 AAAA fd99::20
Record = note.lab.internal TXT \"hello, world\"   # a comment, not data
HostsFile = /etc/tundns/hosts
HostsFile = relative hosts, with a comma
LocalZone = Lab.Internal., 99.10.in-addr.arpa
Block = ads.example, tracker.example
Block = ADS.example.
BlockList = /etc/tundns/block.txt
BlockMode = null
BlockTTL = 5m

[DNSRoute]
Domain = corp.internal, Corp.Example.
Upstream = 10.99.0.53, tls://ns.corp.internal@10.99.0.54
ThroughTunnel = true

[DNSRoute]   # reverse lookups, outside the tunnel
Domain = 10.in-addr.arpa
domain = d.f.ip6.arpa
Upstream = tcp://[2001:db8::5353]:5353
"
    )
}

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, "wg0.conf").map_err(|e| e.to_string())
}

fn parse_err(text: &str) -> String {
    match parse(text) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(message) => message,
    }
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn sock(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn udp(text: &str) -> Upstream {
    Upstream::Udp(sock(text))
}

fn spanned<T>(value: impl Into<T>, line: usize) -> Spanned<T> {
    Spanned::new(value.into(), line)
}

fn minimal() -> String {
    format!("[Interface]\nPrivateKey = {PRIVATE_KEY}\n")
}

#[test]
fn realistic_file_with_every_key() {
    let config = parse(&realistic()).unwrap();
    assert_eq!(config.interface_name, "wg0");

    let interface = &config.interface;
    assert_eq!(
        interface.private_key.expose_bytes(),
        &[
            200, 9, 243, 229, 49, 126, 149, 117, 201, 181, 237, 120, 182, 56, 183, 206, 83, 13,
            171, 232, 93, 218, 182, 20, 34, 2, 65, 128, 29, 223, 6, 105
        ]
    );
    assert_eq!(interface.listen_port, Some(51820));
    assert_eq!(interface.fwmark, NonZeroU32::new(0xca6c));
    assert_eq!(
        interface.addresses,
        vec![net("10.0.0.2/24"), net("fd00::2/64"), net("10.0.1.2/32")]
    );
    assert_eq!(interface.mtu, 1380);
    assert_eq!(
        interface.dns_servers,
        vec![ip("192.0.2.53"), ip("2001:db8::53")]
    );
    assert_eq!(interface.dns_search, vec!["corp.example", "lab.example."]);
    assert_eq!(interface.table, RouteTable::Id(1234));
    assert_eq!(commands(&interface.pre_up), vec!["echo pre-up %i"]);
    assert_eq!(
        commands(&interface.post_up),
        vec!["iptables -A FORWARD -i %i -j ACCEPT", "echo second"]
    );
    assert_eq!(commands(&interface.pre_down), vec!["echo pre-down"]);
    assert_eq!(commands(&interface.post_down), vec!["echo post-down"]);
    // Each hook keeps its own line, for the message when it fails.
    let lines: Vec<usize> = interface.post_up.iter().map(|hook| hook.line).collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0] < lines[1], "{lines:?}");
    assert!(
        realistic()
            .lines()
            .nth(lines[1] - 1)
            .unwrap()
            .contains("echo second"),
        "{lines:?}"
    );

    assert_eq!(config.peers.len(), 2);
    let a = &config.peers[0];
    assert_eq!(a.public_key, PublicKey::from_base64(PEER_A).unwrap());
    assert_eq!(a.public_key.to_string(), PEER_A);
    assert_eq!(
        a.preshared_key.as_ref().unwrap().expose_bytes()[..4],
        [128, 222, 185, 6]
    );
    assert_eq!(a.allowed_ips, vec![net("0.0.0.0/0"), net("::/0")]);
    assert_eq!(
        a.endpoint,
        Some(Endpoint::Host {
            host: "vpn.example.com".into(),
            port: 51820
        })
    );
    assert_eq!(a.persistent_keepalive, NonZeroU16::new(25));
    let b = &config.peers[1];
    assert_eq!(b.public_key.to_string(), PEER_B);
    assert!(b.preshared_key.is_none());
    assert_eq!(
        b.allowed_ips,
        vec![net("198.51.100.0/24"), net("2001:db8:1::/48")]
    );
    assert_eq!(
        b.endpoint,
        Some(Endpoint::Addr(sock("[2001:db8::1]:51820")))
    );
    assert_eq!(b.persistent_keepalive, None);

    assert_eq!(
        config.dns_proxy,
        DnsProxyConfig {
            enabled: true,
            addresses: vec![ip("10.30.30.30"), ip("fd30:30:30::30"), ip("10.30.30.31")],
            listen: Vec::new(),
            allow_from: Vec::new(),
            upstreams: vec![
                udp("192.0.2.53:53"),
                udp("198.51.100.53:5353"),
                udp("[2001:db8::53]:53"),
                udp("[2001:db8::54]:53"),
                Upstream::Tcp(sock("192.0.2.54:53")),
                Upstream::Tls {
                    server_name: "dns.lab.test".into(),
                    address: sock("192.0.2.53:853"),
                },
                Upstream::Https {
                    server_name: "dns.lab.test".into(),
                    address: sock("[2001:db8::53]:443"),
                    path: "/dns-query".into(),
                },
                Upstream::Quic {
                    server_name: "dns.lab.test".into(),
                    address: sock("192.0.2.53:853"),
                },
                Upstream::H3 {
                    server_name: "dns.lab.test".into(),
                    address: sock("[2001:db8::53]:8443"),
                    path: "/q".into(),
                },
            ],
            upstream_timeout: Duration::from_millis(500),
            max_in_flight: 64,
            rate_limit: std::num::NonZeroU32::new(1000),
            tcp_idle_timeout: Duration::from_secs(30),
            max_tcp_connections: 16,
            ca_file: Some(spanned("/etc/tundns/lab-ca.pem", 44)),
            cache: true,
            cache_file: true,
            prefetch: true,
            cache_size: 64 << 20,
            cache_min_ttl: Duration::from_secs(30),
            cache_max_ttl: Duration::from_secs(12 * 3600),
            cache_max_negative_ttl: Duration::from_secs(600),
            serve_stale: Some(Duration::from_secs(2 * 86_400)),
            records: vec![
                spanned("app.lab.internal A 10.99.0.10", 51),
                spanned("*.dev.lab.internal 60 AAAA fd99::20", 52),
                spanned("note.lab.internal TXT \"hello, world\"", 53),
            ],
            hosts_files: vec![
                spanned("/etc/tundns/hosts", 54),
                spanned("relative hosts, with a comma", 55),
            ],
            local_zones: vec![
                spanned("lab.internal", 56),
                spanned("99.10.in-addr.arpa", 56),
            ],
            blocked: vec!["ads.example".into(), "tracker.example".into()],
            block_lists: vec![spanned("/etc/tundns/block.txt", 59)],
            block_mode: BlockMode::Null,
            block_ttl: Duration::from_secs(300),
            routes: vec![
                DnsRouteConfig {
                    domains: vec!["corp.internal".into(), "corp.example".into()],
                    upstreams: vec![
                        udp("10.99.0.53:53"),
                        Upstream::Tls {
                            server_name: "ns.corp.internal".into(),
                            address: sock("10.99.0.54:853"),
                        },
                    ],
                    through_tunnel: true,
                    line: 63,
                },
                DnsRouteConfig {
                    domains: vec!["10.in-addr.arpa".into(), "d.f.ip6.arpa".into()],
                    upstreams: vec![Upstream::Tcp(sock("[2001:db8::5353]:5353"))],
                    through_tunnel: false,
                    line: 68,
                },
            ],
            metrics_address: None,
            query_log: None,
            set_system_dns: None,
            encrypted: EncryptedDns::ALL.to_vec(),
            tls_certificate: None,
            tls_key: None,
            upstreams_configured: true,
        }
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn defaults_when_keys_and_dns_proxy_section_are_absent() {
    let config = parse(&minimal()).unwrap();
    let interface = &config.interface;
    assert_eq!(interface.listen_port, None);
    assert_eq!(interface.fwmark, None);
    assert!(interface.addresses.is_empty());
    assert_eq!(interface.mtu, 1420);
    assert_eq!(interface.table, RouteTable::Auto);
    assert!(interface.dns_servers.is_empty() && interface.dns_search.is_empty());
    assert!(interface.pre_up.is_empty() && interface.post_down.is_empty());
    assert!(config.peers.is_empty());
    assert_eq!(config.dns_proxy, DnsProxyConfig::default());
    assert_eq!(
        config.dns_proxy.addresses,
        vec![
            IpAddr::V4(DEFAULT_VIRTUAL_IPV4),
            IpAddr::V6(DEFAULT_VIRTUAL_IPV6)
        ]
    );
    assert_eq!(config.dns_proxy.addresses[1], ip("fd30:30:30::30"));
    assert_eq!(
        config.dns_proxy.upstreams,
        vec![udp("8.8.8.8:53"), udp("8.8.4.4:53")]
    );
    assert_eq!(config.dns_proxy.upstreams, DEFAULT_UPSTREAMS.to_vec());
    assert!(config.dns_proxy.enabled);
    assert_eq!(config.dns_proxy.upstream_timeout, Duration::from_secs(2));
    assert_eq!(config.dns_proxy.max_in_flight, 1024);
    assert_eq!(config.dns_proxy.tcp_idle_timeout, Duration::from_secs(10));
    assert_eq!(config.dns_proxy.max_tcp_connections, 256);
    assert_eq!(config.dns_proxy.ca_file, None);
    assert!(config.dns_proxy.cache);
    assert_eq!(config.dns_proxy.cache_size, 32 << 20);
    assert_eq!(config.dns_proxy.cache_min_ttl, Duration::ZERO);
    assert_eq!(config.dns_proxy.cache_max_ttl, Duration::from_secs(86_400));
    assert_eq!(
        config.dns_proxy.serve_stale,
        Some(Duration::from_secs(86_400))
    );
    assert!(config.dns_proxy.records.is_empty());
    assert!(config.dns_proxy.hosts_files.is_empty());
    assert!(config.dns_proxy.local_zones.is_empty());
    assert!(config.dns_proxy.blocked.is_empty());
    assert!(config.dns_proxy.block_lists.is_empty());
    assert_eq!(config.dns_proxy.block_mode, BlockMode::NxDomain);
    assert_eq!(config.dns_proxy.block_ttl, Duration::from_secs(60));
    assert!(config.dns_proxy.routes.is_empty());

    let empty_section = parse(&format!("{}[DNSProxy]\n", minimal())).unwrap();
    assert_eq!(empty_section.dns_proxy, DnsProxyConfig::default());
}

#[test]
fn value_variants() {
    let config = parse(&format!(
        "{}FwMark = off\nTable = off\nListenPort = 0\n[Peer]\nPublicKey = {PEER_A}\nPersistentKeepalive = 0\nEndpoint = 192.0.2.1:51820\nAllowedIPs =\n[DNSProxy]\nEnabled = no\nAddress =\n",
        minimal()
    ))
    .unwrap();
    assert_eq!(config.interface.fwmark, None);
    assert_eq!(config.interface.table, RouteTable::Off);
    assert_eq!(config.interface.listen_port, Some(0));
    assert_eq!(config.peers[0].persistent_keepalive, None);
    assert_eq!(
        config.peers[0].endpoint,
        Some(Endpoint::Addr(sock("192.0.2.1:51820")))
    );
    assert!(config.peers[0].allowed_ips.is_empty());
    assert!(!config.dns_proxy.enabled);
    assert!(config.dns_proxy.addresses.is_empty());

    for (table, expected) in [
        ("auto", RouteTable::Auto),
        ("main", RouteTable::Id(254)),
        ("local", RouteTable::Id(255)),
        ("default", RouteTable::Id(253)),
        ("51820", RouteTable::Id(51820)),
    ] {
        let config = parse(&format!("{}Table = {table}\n", minimal())).unwrap();
        assert_eq!(config.interface.table, expected, "{table}");
    }
    let fwmark = parse(&format!("{}FwMark = 51820\n", minimal())).unwrap();
    assert_eq!(fwmark.interface.fwmark, NonZeroU32::new(51820));
    let low_mtu = parse(&format!("{}Address = 10.0.0.2/24\nMTU = 576\n", minimal())).unwrap();
    assert_eq!(low_mtu.interface.mtu, 576);
    let v6_mtu = parse(&format!("{}Address = fd00::2/64\nMTU = 1280\n", minimal())).unwrap();
    assert_eq!(v6_mtu.interface.mtu, 1280);
    let max_mtu = parse(&format!("{}MTU = 4064\n", minimal())).unwrap();
    assert_eq!(max_mtu.interface.mtu, 4064);
}

#[test]
fn keys_and_sections_are_case_insensitive() {
    let text = format!(
        "[interface]\nprivatekey = {PRIVATE_KEY}\nLISTENPORT = 1\nmtu = 1400\naddress = 10.0.0.2/24\n\
         [PEER]\npublickey = {PEER_A}\nallowedips = 10.0.0.0/24\nENDPOINT = 192.0.2.1:1\n\
         [dnsproxy]\nupstream = 192.0.2.53\nTIMEOUT = 1S\n"
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.interface.listen_port, Some(1));
    assert_eq!(config.interface.mtu, 1400);
    assert_eq!(config.peers[0].allowed_ips, vec![net("10.0.0.0/24")]);
    assert_eq!(config.dns_proxy.upstreams, vec![udp("192.0.2.53:53")]);
    assert_eq!(config.dns_proxy.upstream_timeout, Duration::from_secs(1));
    // A differently-cased repeat is still a duplicate.
    assert_eq!(
        parse_err(&format!("{}mtu = 1400\nMtu = 1300\n", minimal())),
        "wg0.conf:4: duplicate key \"MTU\" in [Interface] (first set on line 3)"
    );
}

#[test]
fn comments_blank_lines_and_whitespace() {
    let text = format!(
        "\u{feff}# leading comment\n\n   # indented comment\n  [ Interface ]   # header comment\n\
         \tPrivateKey={PRIVATE_KEY}#no space before the comment\r\n\
         ListenPort    =    51820   \r\n\
         # Address = 10.9.9.9/24\n\
         PostUp = echo a # b\n"
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.interface.listen_port, Some(51820));
    assert!(config.interface.addresses.is_empty());
    assert_eq!(commands(&config.interface.post_up), vec!["echo a"]);
}

/// The commands of hooks, without their lines.
fn commands(hooks: &[tundns_config::Spanned<String>]) -> Vec<&str> {
    hooks.iter().map(|hook| hook.value.as_str()).collect()
}

#[test]
fn allowed_ips_with_host_bits_are_masked_with_a_warning() {
    let config = parse(&format!(
        "{}[Peer]\nPublicKey = {PEER_A}\nAllowedIPs = 10.0.0.1/24, 2001:db8::1/64, 192.0.2.7\n",
        minimal()
    ))
    .unwrap();
    assert_eq!(
        config.peers[0].allowed_ips,
        vec![
            net("10.0.0.0/24"),
            net("2001:db8::/64"),
            net("192.0.2.7/32")
        ]
    );
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        vec![
            "wg0.conf:5: AllowedIPs 10.0.0.1/24 has host bits set; using 10.0.0.0/24, as wg does",
            "wg0.conf:5: AllowedIPs 2001:db8::1/64 has host bits set; using 2001:db8::/64, as wg does",
        ]
    );
}

#[test]
fn allowed_ips_shared_between_peers_warns() {
    let config = parse(&format!(
        "{}[Peer]\nPublicKey = {PEER_A}\nAllowedIPs = 0.0.0.0/0\n[Peer]\nPublicKey = {PEER_B}\nAllowedIPs = 0.0.0.0/0\n",
        minimal()
    ))
    .unwrap();
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        vec![
            "wg0.conf:8: AllowedIPs 0.0.0.0/0 is also claimed by the [Peer] on line 3; WireGuard gives it to the last one"
        ]
    );
}

#[test]
fn resolver_key_variants() {
    let config = parse(&format!(
        "{}[dnsproxy]\ncache = OFF\ncachesize = 65536\ncacheminttl = 0s\nCACHEMAXTTL = 7d\n\
         servestale = 0s\nblockmode = NXDOMAIN\nblockttl = 1s\ncafile = ca.pem\n\
         localzone = lab.internal\nLocalZone = LAB.internal., other.internal\n\
         record = a.lab.internal A 10.0.0.1\n",
        minimal()
    ))
    .unwrap();
    let proxy = &config.dns_proxy;
    assert!(!proxy.cache);
    assert_eq!(proxy.cache_size, 65_536);
    assert_eq!(proxy.cache_min_ttl, Duration::ZERO);
    assert_eq!(proxy.cache_max_ttl, Duration::from_secs(7 * 86_400));
    assert_eq!(proxy.serve_stale, None);
    assert_eq!(proxy.block_mode, BlockMode::NxDomain);
    assert_eq!(proxy.block_ttl, Duration::from_secs(1));
    assert_eq!(proxy.ca_file, Some(spanned("ca.pem", 11)));
    // A zone listed again is kept once, at its first line.
    assert_eq!(
        proxy.local_zones,
        vec![spanned("lab.internal", 12), spanned("other.internal", 13)]
    );
    assert_eq!(
        proxy.records,
        vec![spanned("a.lab.internal A 10.0.0.1", 14)]
    );

    let kept = parse(&format!(
        "{}[DNSProxy]\nCacheFile = off\nPrefetch = no\n",
        minimal()
    ))
    .unwrap();
    assert!(!kept.dns_proxy.cache_file && !kept.dns_proxy.prefetch);
    let defaults = parse(&format!("{}[DNSProxy]\n", minimal())).unwrap();
    assert!(defaults.dns_proxy.cache_file && defaults.dns_proxy.prefetch);
    let stale_off = parse(&format!("{}[DNSProxy]\nServeStale = off\n", minimal())).unwrap();
    assert_eq!(stale_off.dns_proxy.serve_stale, None);
    let equal_ttls = parse(&format!(
        "{}[DNSProxy]\nCacheMinTTL = 1h\nCacheMaxTTL = 60m\n",
        minimal()
    ))
    .unwrap();
    assert_eq!(
        equal_ttls.dns_proxy.cache_min_ttl,
        Duration::from_secs(3600)
    );
    assert_eq!(
        equal_ttls.dns_proxy.cache_max_ttl,
        Duration::from_secs(3600)
    );
}

#[test]
fn default_route_and_routes_before_the_interface() {
    let config = parse(&format!(
        "[DNSRoute]\nDomain = .\nUpstream = https://dns.lab.test@192.0.2.53/dns-query\n\
         [DNSRoute]\nDomain = corp.internal\nUpstream = 10.99.0.53\n{}",
        minimal()
    ))
    .unwrap();
    let routes = &config.dns_proxy.routes;
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0].domains, vec!["."]);
    assert_eq!(routes[0].line, 1);
    assert_eq!(
        routes[0].upstreams,
        vec![Upstream::Https {
            server_name: "dns.lab.test".into(),
            address: sock("192.0.2.53:443"),
            path: "/dns-query".into(),
        }]
    );
    // Not through the tunnel, so AllowedIPs and interface addresses do not matter.
    assert!(!routes[1].through_tunnel);
    assert_eq!(routes[1].upstreams, vec![udp("10.99.0.53:53")]);
    // [DNSProxy] Upstream stays at its default for the integrator to ignore.
    assert_eq!(config.dns_proxy.upstreams, DEFAULT_UPSTREAMS.to_vec());
    assert!(config.warnings.is_empty());
}

#[test]
fn routes_with_the_proxy_disabled_warn() {
    let config = parse(&format!(
        "{}[DNSRoute]\nDomain = corp.internal\nUpstream = 10.30.30.30\nThroughTunnel = true\n\
         [DNSProxy]\nEnabled = off\n[DNSRoute]\nDomain = .\nUpstream = 192.0.2.53\n",
        minimal()
    ))
    .unwrap();
    assert!(!config.dns_proxy.enabled);
    assert_eq!(config.dns_proxy.routes.len(), 2);
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        vec![
            "wg0.conf:3: [DNSRoute] is ignored: the DNS proxy is disabled (Enabled = false on line 8)",
            "wg0.conf:9: [DNSRoute] is ignored: the DNS proxy is disabled (Enabled = false on line 8)",
        ]
    );
    // Values are still checked when the proxy is off.
    assert_eq!(
        parse_err(&format!(
            "{}[DNSProxy]\nEnabled = false\n[DNSRoute]\nDomain = corp.internal\nUpstream = dns.corp\n",
            minimal()
        )),
        "wg0.conf:7: expected an IP, ip:port, [ipv6]:port or a udp://, tcp://, tls://, https://, quic:// or h3:// URL (host names are not resolved), found \"dns.corp\""
    );
}

#[test]
fn callers_report_at_a_config_line() {
    let config = parse(&realistic()).unwrap();
    let record = &config.dns_proxy.records[1];
    let error = ConfigError::at("wg0.conf", record.line, "unknown record type \"AAAAA\"");
    assert_eq!(
        error.to_string(),
        "wg0.conf:52: unknown record type \"AAAAA\""
    );
    assert_eq!(error.line(), Some(52));
    assert_eq!(error.path(), std::path::Path::new("wg0.conf"));
    assert_eq!(error.message(), "unknown record type \"AAAAA\"");
}

/// Each case: the text and the exact `Display` of the error.
fn error_cases() -> Vec<(String, String)> {
    let m = minimal(); // lines 1-2
    let peer = format!("[Peer]\nPublicKey = {PEER_A}\n");
    let cases: Vec<(String, &str)> = vec![
        // Structure.
        (
            format!("# hi\nPrivateKey = {PRIVATE_KEY}\n"),
            "wg0.conf:2: key \"PrivateKey\" before any section header",
        ),
        (
            format!("{m}\nAdress = 10.0.0.2/24\n"),
            "wg0.conf:4: unknown key \"Adress\" in [Interface] (did you mean \"Address\"?)",
        ),
        (
            format!("{m}Foo = bar\n"),
            "wg0.conf:3: unknown key \"Foo\" in [Interface]",
        ),
        (
            format!("{m}PublicKey = {PEER_A}\n"),
            "wg0.conf:3: unknown key \"PublicKey\" in [Interface] (it belongs in [Peer])",
        ),
        (
            format!("{m}Upstream = 192.0.2.53\n"),
            "wg0.conf:3: unknown key \"Upstream\" in [Interface] (it belongs in [DNSProxy])",
        ),
        (
            format!("{m}[Peers]\n"),
            "wg0.conf:3: unknown section [Peers]: expected [Interface], [Peer], [DNSProxy], [DNSRoute] or [Proxy]",
        ),
        (
            format!("{m}[Peer\n"),
            "wg0.conf:3: malformed section header: expected [Interface], [Peer], [DNSProxy], [DNSRoute] or [Proxy]",
        ),
        (
            format!("{m}ListenPort 51820\n"),
            "wg0.conf:3: expected \"Key = Value\" or a [Section] header (missing \"=\")",
        ),
        (
            format!("{m} = 5\n"),
            "wg0.conf:3: missing key name before \"=\"",
        ),
        (
            format!("{m}ListenPort = 1\n\nListenPort = 2\n"),
            "wg0.conf:5: duplicate key \"ListenPort\" in [Interface] (first set on line 3)",
        ),
        (
            format!("{m}[Interface]\n"),
            "wg0.conf:3: duplicate [Interface] section (first on line 1)",
        ),
        (
            format!("{m}[DNSProxy]\n[DNSProxy]\n"),
            "wg0.conf:4: duplicate [DNSProxy] section (first on line 3)",
        ),
        ("".to_string(), "wg0.conf: missing [Interface] section"),
        (
            format!("# nothing\n{peer}"),
            "wg0.conf: missing [Interface] section",
        ),
        (
            "\n[Interface]\nListenPort = 1\n[Peer]\n".to_string(),
            "wg0.conf:2: [Interface] has no PrivateKey",
        ),
        (
            format!("{m}[Peer]\nAllowedIPs = 10.0.0.0/24\n[DNSProxy]\n"),
            "wg0.conf:3: [Peer] has no PublicKey",
        ),
        (
            format!("{m}{peer}[Peer]\nPublicKey = {PEER_A}\n"),
            "wg0.conf:6: duplicate PublicKey: the [Peer] on line 4 has the same key",
        ),
        // [Interface] values.
        (
            format!("[Interface]\nPrivateKey = {}\n", &PRIVATE_KEY[..43]),
            "wg0.conf:2: invalid PrivateKey: must be 44 characters of base64 (32 bytes)",
        ),
        (
            "[Interface]\nPrivateKey = ****************************************====\n".to_string(),
            "wg0.conf:2: invalid PrivateKey: is not valid base64 (expected 32 bytes, as `wg genkey` prints)",
        ),
        (
            format!("{m}ListenPort = 65536\n"),
            "wg0.conf:3: expected a port number 0..=65535, found \"65536\"",
        ),
        (
            format!("{m}FwMark = 0xZZ\n"),
            "wg0.conf:3: expected off, a decimal or a 0x-hexadecimal 32-bit number, found \"0xZZ\"",
        ),
        (
            format!("{m}Address = 10.0.0.300/24\n"),
            "wg0.conf:3: expected an IP address with optional /prefix, found \"10.0.0.300/24\"",
        ),
        (
            format!("{m}Address = 10.0.0.2/33\n"),
            "wg0.conf:3: expected an IP address with optional /prefix, found \"10.0.0.2/33\"",
        ),
        (
            format!("{m}Address = 10.0.0.2/24,\n"),
            "wg0.conf:3: empty item in comma-separated list",
        ),
        (
            format!("{m}Address = 0.0.0.0/0\n"),
            "wg0.conf:3: Address 0.0.0.0/0 is unspecified",
        ),
        (
            format!("{m}Address = 10.0.0.2/24\nAddress = 10.0.0.2/32\n"),
            "wg0.conf:4: Address 10.0.0.2 is listed twice (first on line 3)",
        ),
        (
            format!("{m}MTU = 575\n"),
            "wg0.conf:3: MTU must be a number from 576 to 4064, found \"575\"",
        ),
        (
            format!("{m}MTU = 4065\n"),
            "wg0.conf:3: MTU must be a number from 576 to 4064, found \"4065\"",
        ),
        (
            format!("{m}MTU = 1279\nAddress = 10.0.0.2/24\nAddress = fd00::2/64\n"),
            "wg0.conf:3: MTU 1279 is below 1280, the IPv6 minimum, and Address fd00::2/64 on line 5 is IPv6",
        ),
        (
            format!("{m}DNS = 192.0.2.300\n"),
            "wg0.conf:3: DNS: invalid IP address \"192.0.2.300\"",
        ),
        (
            format!("{m}DNS = 192.0.2.53, bad domain\n"),
            "wg0.conf:3: DNS: \"bad domain\" is neither an IP address nor a search domain",
        ),
        (
            format!("{m}Table = 0\n"),
            "wg0.conf:3: Table must be off, auto, main, local, default or a number 1..=4294967295, found \"0\"",
        ),
        (
            format!("{m}PostUp =\n"),
            "wg0.conf:3: PostUp needs a command",
        ),
        (
            format!("{m}SaveConfig = true\n"),
            "wg0.conf:3: SaveConfig = true is not supported: tundns never writes the config file back",
        ),
        (
            format!("{m}SaveConfig = maybe\n"),
            "wg0.conf:3: expected true or false, found \"maybe\"",
        ),
        // [Peer] values.
        (
            format!("{m}[Peer]\nPublicKey = not-a-key\n"),
            "wg0.conf:4: invalid PublicKey: must be 44 characters of base64 (32 bytes)",
        ),
        (
            format!("{m}{peer}PresharedKey = {}\n", &PRESHARED_KEY[1..]),
            "wg0.conf:5: invalid PresharedKey: must be 44 characters of base64 (32 bytes)",
        ),
        (
            format!("{m}{peer}AllowedIPs = 10.0.0.0/24, nonsense\n"),
            "wg0.conf:5: expected an IP address with optional /prefix, found \"nonsense\"",
        ),
        (
            format!("{m}{peer}Endpoint = 2001:db8::1:51820\n"),
            "wg0.conf:5: an IPv6 endpoint must be written [address]:port, found \"2001:db8::1:51820\"",
        ),
        (
            format!("{m}{peer}Endpoint = 192.0.2.1\n"),
            "wg0.conf:5: expected host:port, ipv4:port or [ipv6]:port, found \"192.0.2.1\"",
        ),
        (
            format!("{m}{peer}Endpoint = vpn.example.com:0\n"),
            "wg0.conf:5: Endpoint port must be 1..=65535, found \"vpn.example.com:0\"",
        ),
        (
            format!("{m}{peer}Endpoint = 192.0.2.1:1\nEndpoint = 192.0.2.1:2\n"),
            "wg0.conf:6: duplicate key \"Endpoint\" in [Peer] (first set on line 5)",
        ),
        (
            format!("{m}{peer}PersistentKeepalive = 65536\n"),
            "wg0.conf:5: PersistentKeepalive must be off or 1..=65535 seconds, found \"65536\"",
        ),
        // [DNSProxy] values.
        (
            format!("{m}[DNSProxy]\nEnabled = sometimes\n"),
            "wg0.conf:4: expected true or false, found \"sometimes\"",
        ),
        (
            format!("{m}[DNSProxy]\nAddress = 10.30.30.30/32\n"),
            "wg0.conf:4: expected a virtual IP address (no /prefix) or a host address to listen on (ip:port), found \"10.30.30.30/32\"",
        ),
        (
            format!("{m}[DNSProxy]\nAddress = 0.0.0.0\n"),
            "wg0.conf:4: virtual address 0.0.0.0 is unspecified",
        ),
        (
            format!("{m}[DNSProxy]\nAddress = ::\n"),
            "wg0.conf:4: virtual address :: is unspecified",
        ),
        (
            format!("{m}[DNSProxy]\nAddress = 10.30.30.30, 224.0.0.251\n"),
            "wg0.conf:4: virtual address 224.0.0.251 is multicast",
        ),
        (
            format!("{m}[DNSProxy]\nAddress = ff02::fb\n"),
            "wg0.conf:4: virtual address ff02::fb is multicast",
        ),
        (
            format!("{m}[DNSProxy]\nAddress = 127.0.0.53\n"),
            "wg0.conf:4: virtual address 127.0.0.53 is loopback: the kernel answers it itself, it never reaches the TUN",
        ),
        (
            format!("{m}[DNSProxy]\nAddress = 10.30.30.30\nAddress = 10.30.30.30\n"),
            "wg0.conf:5: virtual address 10.30.30.30 is listed twice (first on line 4)",
        ),
        (
            format!(
                "{m}Address = 10.0.0.2/24\n[DNSProxy]\nUpstream = 192.0.2.53\n\nAddress = 10.30.30.30, 10.0.0.2\n"
            ),
            "wg0.conf:7: virtual address 10.0.0.2 is also an interface Address (line 3)",
        ),
        (
            // The interface address comes after the [DNSProxy] section: still caught.
            format!(
                "[DNSProxy]\nAddress = fd00::2\n[Interface]\nPrivateKey = {PRIVATE_KEY}\nAddress = fd00::2/64\n"
            ),
            "wg0.conf:2: virtual address fd00::2 is also an interface Address (line 5)",
        ),
        (
            format!("{m}Address = 10.30.30.30/24\n"),
            "wg0.conf:3: Address 10.30.30.30/24 uses 10.30.30.30, the DNS proxy's default virtual address; set another [DNSProxy] Address or use another interface address",
        ),
        (
            format!("{m}[DNSProxy]\nAddress = 192.0.2.53\nUpstream = 192.0.2.53\n"),
            "wg0.conf:4: virtual address 192.0.2.53 is also the upstream 192.0.2.53:53: queries would loop",
        ),
        (
            format!("{m}[DNSProxy]\nAddress =\n"),
            "wg0.conf:4: [DNSProxy] Address lists no virtual IP and no host address (set Enabled = false to turn the proxy off)",
        ),
        (
            format!("{m}[DNSProxy]\nUpstream =\n[Peer]\nPublicKey = {PEER_A}\n"),
            "wg0.conf:4: [DNSProxy] Upstream lists no resolver (set Enabled = false to turn the proxy off)",
        ),
        (
            format!("{m}[DNSProxy]\nUpstream = dns.google\n"),
            "wg0.conf:4: expected an IP, ip:port, [ipv6]:port or a udp://, tcp://, tls://, https://, quic:// or h3:// URL (host names are not resolved), found \"dns.google\"",
        ),
        (
            format!("{m}[DNSProxy]\nUpstream = 192.0.2.53:0\n"),
            "wg0.conf:4: upstream port must be 1..=65535, found \"192.0.2.53:0\"",
        ),
        (
            format!("{m}[DNSProxy]\nUpstream = 192.0.2.53, 224.0.0.1\n"),
            "wg0.conf:4: upstream 224.0.0.1 is multicast",
        ),
        (
            format!("{m}[DNSProxy]\nTimeout = 2\n"),
            "wg0.conf:4: expected a duration such as 500ms, 2s or 1m (at most 1 hour, more than 0), found \"2\"",
        ),
        (
            format!("{m}[DNSProxy]\nTcpIdleTimeout = 0s\n"),
            "wg0.conf:4: expected a duration such as 500ms, 2s or 1m (at most 1 hour, more than 0), found \"0s\"",
        ),
        (
            format!("{m}[DNSProxy]\nMaxInFlight = 0\n"),
            "wg0.conf:4: expected a number in 1..=1048576, found \"0\"",
        ),
        (
            format!("{m}[DNSProxy]\nMaxTcpConnections = 65536\n"),
            "wg0.conf:4: expected a number in 1..=65535, found \"65536\"",
        ),
        (
            format!("{m}[DNSProxy]\nEnabled = true\nEnabled = false\n"),
            "wg0.conf:5: duplicate key \"Enabled\" in [DNSProxy] (first set on line 4)",
        ),
        (
            format!("{m}[DNSProxy]\nAdress = 10.30.30.30\n"),
            "wg0.conf:4: unknown key \"Adress\" in [DNSProxy] (did you mean \"Address\"?)",
        ),
        // [DNSProxy] resolver keys.
        (
            format!("{m}[DNSProxy]\nUpstream = 192.0.2.53, https://dns.lab.test/dns-query\n"),
            "wg0.conf:4: upstream \"https://dns.lab.test/dns-query\" needs a bootstrap address: https://name@ip/path (host names are not resolved)",
        ),
        (
            format!("{m}[DNSProxy]\nUpstream = 192.0.2.53\nUpstream = tls://dns.lab.test\n"),
            "wg0.conf:5: upstream \"tls://dns.lab.test\" needs a bootstrap address: tls://name@ip (host names are not resolved)",
        ),
        (
            format!("{m}[DNSProxy]\nUpstream = doq://192.0.2.53\n"),
            "wg0.conf:4: unknown upstream scheme in \"doq://192.0.2.53\": expected udp://, tcp://, tls://, https://, quic:// or h3://",
        ),
        (
            format!("{m}[DNSProxy]\nUpstream = 192.0.2.53\nUpstream = quic://dns.lab.test\n"),
            "wg0.conf:5: upstream \"quic://dns.lab.test\" needs a bootstrap address: quic://name@ip (host names are not resolved)",
        ),
        (
            format!("{m}[DNSProxy]\nUpstream = h3://dns.lab.test@192.0.2.53/a%zz\n"),
            "wg0.conf:4: invalid path \"/a%zz\" in upstream \"h3://dns.lab.test@192.0.2.53/a%zz\"",
        ),
        (
            format!("{m}[DNSProxy]\nUpstream = tcp://2001:db8::53\n"),
            "wg0.conf:4: an IPv6 address in a URL must be in brackets ([ipv6] or [ipv6]:port), found \"tcp://2001:db8::53\"",
        ),
        (
            format!("{m}[DNSProxy]\nUpstream = tls://dns_lab@192.0.2.53\n"),
            "wg0.conf:4: invalid server name \"dns_lab\" in upstream \"tls://dns_lab@192.0.2.53\" (expected a host name or an IP address)",
        ),
        (
            format!("{m}[DNSProxy]\nUpstream = https://dns.lab.test@192.0.2.53:0/dns-query\n"),
            "wg0.conf:4: upstream port must be 1..=65535, found \"https://dns.lab.test@192.0.2.53:0/dns-query\"",
        ),
        (
            format!(
                "{m}[DNSProxy]\nAddress = 192.0.2.53\nUpstream = tls://dns.lab.test@192.0.2.53\n"
            ),
            "wg0.conf:4: virtual address 192.0.2.53 is also the upstream tls://dns.lab.test@192.0.2.53:853: queries would loop",
        ),
        (
            format!("{m}[DNSProxy]\nCAFile =\n"),
            "wg0.conf:4: CAFile needs a file path",
        ),
        (
            format!("{m}[DNSProxy]\nCAFile = a.pem\ncafile = b.pem\n"),
            "wg0.conf:5: duplicate key \"CAFile\" in [DNSProxy] (first set on line 4)",
        ),
        (
            format!("{m}[DNSProxy]\nCache = maybe\n"),
            "wg0.conf:4: expected true or false, found \"maybe\"",
        ),
        (
            format!("{m}[DNSProxy]\nCacheSize = 32MB\n"),
            "wg0.conf:4: expected a size such as 32MiB, 512KiB or 1GiB (64KiB..=1GiB); sizes are binary: use KiB, MiB or GiB, found \"32MB\"",
        ),
        (
            format!("{m}[DNSProxy]\nCacheSize = 1KiB\n"),
            "wg0.conf:4: expected a size such as 32MiB, 512KiB or 1GiB (64KiB..=1GiB), found \"1KiB\"",
        ),
        (
            format!("{m}[DNSProxy]\nCacheSize = 2GiB\n"),
            "wg0.conf:4: expected a size such as 32MiB, 512KiB or 1GiB (64KiB..=1GiB), found \"2GiB\"",
        ),
        (
            format!("{m}[DNSProxy]\nCacheMinTTL = 8d\n"),
            "wg0.conf:4: expected a duration such as 30s, 5m, 1h or 1d (0s..=7d), found \"8d\"",
        ),
        (
            format!("{m}[DNSProxy]\nCacheMaxTTL = 0s\n"),
            "wg0.conf:4: expected a duration such as 30s, 5m, 1h or 1d (1s..=7d), found \"0s\"",
        ),
        (
            format!("{m}[DNSProxy]\nCacheMaxTTL = 500ms\n"),
            "wg0.conf:4: expected a duration such as 30s, 5m, 1h or 1d (1s..=7d), found \"500ms\"",
        ),
        (
            format!("{m}[DNSProxy]\nCacheMinTTL = 2d\n"),
            "wg0.conf:4: CacheMinTTL is above CacheMaxTTL, which defaults to 1d",
        ),
        (
            format!("{m}[DNSProxy]\nCacheMinTTL = 2h\nCacheMaxTTL = 1h\n[Peer]\n"),
            "wg0.conf:5: CacheMaxTTL is below CacheMinTTL (line 4)",
        ),
        (
            format!("{m}[DNSProxy]\nCacheMaxTTL = 1h\n\nCacheMinTTL = 61m\n"),
            "wg0.conf:6: CacheMinTTL is above CacheMaxTTL (line 4)",
        ),
        (
            format!("{m}[DNSProxy]\nServeStale = 1w\n"),
            "wg0.conf:4: expected a duration such as 30s, 5m, 1h or 1d (0s..=7d), found \"1w\"",
        ),
        (
            format!("{m}[DNSProxy]\nServeStale = off\nServeStale = 0s\n"),
            "wg0.conf:5: duplicate key \"ServeStale\" in [DNSProxy] (first set on line 4)",
        ),
        (
            format!("{m}[DNSProxy]\nRecord = a.lab A 10.0.0.1\nRecord = # only a comment\n"),
            "wg0.conf:5: Record needs NAME [TTL] TYPE DATA",
        ),
        (
            format!("{m}[DNSProxy]\nHostsFile =\n"),
            "wg0.conf:4: HostsFile needs a file path",
        ),
        (
            format!("{m}[DNSProxy]\nBlockList = /etc/a\nBlockList =\n"),
            "wg0.conf:5: BlockList needs a file path",
        ),
        (
            format!("{m}[DNSProxy]\nLocalZone = lab.internal, lab..internal\n"),
            "wg0.conf:4: LocalZone: expected a domain name, found \"lab..internal\"",
        ),
        (
            format!("{m}[DNSProxy]\nLocalZone = .\n"),
            "wg0.conf:4: LocalZone: the root \".\" would cover every name; list domains instead",
        ),
        (
            format!("{m}[DNSProxy]\nBlock = ads.example\nBlock = *.ads.example\n"),
            "wg0.conf:5: Block: expected a domain name, found \"*.ads.example\" (no wildcard needed: a domain covers every name under it)",
        ),
        (
            format!("{m}[DNSProxy]\nBlock = 192.0.2.1\n"),
            "wg0.conf:4: Block: expected a domain name, found \"192.0.2.1\"",
        ),
        (
            format!("{m}[DNSProxy]\nBlock = a.example,,b.example\n"),
            "wg0.conf:4: empty item in comma-separated list",
        ),
        (
            format!("{m}[DNSProxy]\nBlockMode = refused\n"),
            "wg0.conf:4: expected nxdomain or null, found \"refused\"",
        ),
        (
            format!("{m}[DNSProxy]\nBlockTTL = 0s\n"),
            "wg0.conf:4: expected a duration such as 30s, 5m, 1h or 1d (1s..=7d), found \"0s\"",
        ),
        (
            format!("{m}[DNSProxy]\nCachSize = 1MiB\n"),
            "wg0.conf:4: unknown key \"CachSize\" in [DNSProxy] (did you mean \"CacheSize\"?)",
        ),
        (
            format!("{m}[DNSProxy]\nDomain = corp.internal\n"),
            "wg0.conf:4: unknown key \"Domain\" in [DNSProxy] (it belongs in [DNSRoute])",
        ),
        (
            format!("{m}Record = a.lab A 10.0.0.1\n"),
            "wg0.conf:3: unknown key \"Record\" in [Interface] (it belongs in [DNSProxy])",
        ),
        // [DNSRoute].
        (
            format!("{m}[DNSRoute]\n[Peer]\n"),
            "wg0.conf:3: [DNSRoute] has no Domain",
        ),
        (
            format!("{m}[DNSRoute]\nDomain = corp.internal\n"),
            "wg0.conf:3: [DNSRoute] has no Upstream",
        ),
        (
            format!("{m}[DNSRoute]\nDomain =\n"),
            "wg0.conf:4: Domain needs at least one domain name (\".\" for every name)",
        ),
        (
            format!("{m}[DNSRoute]\nDomain = *.corp.internal\n"),
            "wg0.conf:4: Domain: expected a domain name, found \"*.corp.internal\" (no wildcard needed: a domain covers every name under it)",
        ),
        (
            format!("{m}[DNSRoute]\nDomain = corp.internal\nUpstream =\n"),
            "wg0.conf:5: Upstream needs at least one resolver",
        ),
        (
            format!(
                "{m}[DNSRoute]\nDomain = corp.internal\nUpstream = https://ns.corp.internal/dns-query\n"
            ),
            "wg0.conf:5: upstream \"https://ns.corp.internal/dns-query\" needs a bootstrap address: https://name@ip/path (host names are not resolved)",
        ),
        (
            format!(
                "{m}[DNSRoute]\nDomain = corp.internal\nUpstream = 192.0.2.53\nThroughTunnel = maybe\n"
            ),
            "wg0.conf:6: expected true or false, found \"maybe\"",
        ),
        (
            format!("{m}[DNSRoute]\nThroughTunnel = no\nthroughtunnel = no\n"),
            "wg0.conf:5: duplicate key \"ThroughTunnel\" in [DNSRoute] (first set on line 4)",
        ),
        (
            format!(
                "{m}[DNSRoute]\nDomain = corp.internal\nUpstream = 192.0.2.53\n\
                 [DNSRoute]\nDomain = corp.example, Corp.Internal.\nUpstream = 192.0.2.54\n"
            ),
            "wg0.conf:7: Domain \"corp.internal\" is already routed on line 4",
        ),
        (
            format!("{m}[DNSRoute]\nDomain = .\nDomain = .\n"),
            "wg0.conf:5: Domain \".\" is already routed on line 4",
        ),
        // A private key pasted as a label twice is not echoed (found by fuzz/config_file).
        (
            format!(
                "{m}[DNSRoute]\nDomain = {key}.example\nDomain = {key}.example\n",
                key = "s".repeat(44)
            ),
            "wg0.conf:5: Domain a value that looks like key material (not shown) is already routed on line 4",
        ),
        (
            format!("{m}[DNSRoute]\nDomain = corp.internal\nUpstream = 10.30.30.30\n"),
            "wg0.conf:5: upstream 10.30.30.30:53 is a virtual address of the DNS proxy: queries would loop",
        ),
        (
            format!(
                "{m}[DNSProxy]\nUpstream = 192.0.2.53\n[DNSRoute]\nDomain = corp.internal, .\nUpstream = 192.0.2.54\n"
            ),
            "wg0.conf:6: Domain \".\" sets the default upstreams, which [DNSProxy] Upstream on line 4 already sets; keep one",
        ),
        (
            format!(
                "{m}[DNSRoute]\nDomain = .\nUpstream = 192.0.2.54\n[DNSProxy]\nUpstream = 192.0.2.53\n"
            ),
            "wg0.conf:7: [DNSProxy] Upstream sets the default upstreams, which Domain \".\" on line 4 already sets; keep one",
        ),
        (
            format!(
                "{m}Address = 10.0.0.2/24\n{peer}AllowedIPs = 10.99.0.0/24\n\
                 [DNSRoute]\nDomain = corp.internal\nUpstream = 10.99.0.53, 10.98.0.53\nThroughTunnel = true\n"
            ),
            "wg0.conf:9: upstream 10.98.0.53:53 is routed ThroughTunnel but is in no [Peer] AllowedIPs",
        ),
        (
            format!(
                "{m}Address = 10.0.0.2/24\n{peer}AllowedIPs = ::/0\n\
                 [DNSRoute]\nDomain = corp.internal\nThroughTunnel = true\nUpstream = tls://ns.corp.internal@[2001:db8::53]\n"
            ),
            "wg0.conf:10: upstream tls://ns.corp.internal@[2001:db8::53]:853 is routed ThroughTunnel but the [Interface] has no IPv6 Address to send from",
        ),
        (
            // Of the checks made once the file is read, the first line wins.
            format!(
                "{m}Address = 10.0.0.2/24\n{peer}AllowedIPs = 10.99.0.0/24\n\
                 [DNSRoute]\nDomain = b.internal\nUpstream = 10.97.0.53\nThroughTunnel = true\n\
                 [DNSRoute]\nDomain = a.internal\nUpstream = 10.30.30.30\n"
            ),
            "wg0.conf:9: upstream 10.97.0.53:53 is routed ThroughTunnel but is in no [Peer] AllowedIPs",
        ),
    ];
    cases
        .into_iter()
        .map(|(text, expected)| (text, expected.to_string()))
        .collect()
}

#[test]
fn every_error_names_file_line_and_problem() {
    let mut failures = Vec::new();
    for (text, expected) in error_cases() {
        let got = match Config::parse(&text, "wg0.conf") {
            Ok(_) => "<parsed>".to_string(),
            Err(error) => {
                // The accessors agree with Display.
                let prefix = match error.line() {
                    Some(line) => format!("wg0.conf:{line}: "),
                    None => "wg0.conf: ".to_string(),
                };
                assert_eq!(error.to_string(), format!("{prefix}{}", error.message()));
                assert_eq!(error.path(), std::path::Path::new("wg0.conf"));
                error.to_string()
            }
        };
        if got != expected {
            failures.push(format!(
                "text:\n{text}\nexpected: {expected}\ngot:      {got}\n"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn first_error_in_the_file_wins() {
    let text = format!("{}MTU = 1\n[Nope]\nFoo = 1\n", minimal());
    assert_eq!(
        parse_err(&text),
        "wg0.conf:3: MTU must be a number from 576 to 4064, found \"1\""
    );
}

#[test]
fn disabled_proxy_skips_address_conflict_checks() {
    let config = parse(&format!(
        "{}Address = 10.30.30.30/24\n[DNSProxy]\nEnabled = false\n",
        minimal()
    ))
    .unwrap();
    assert!(!config.dns_proxy.enabled);
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let config = parse(&realistic()).unwrap();
    let debug = format!("{config:?}");
    let pretty = format!("{config:#?}");
    for output in [&debug, &pretty] {
        assert!(!output.contains(PRIVATE_KEY));
        assert!(!output.contains(PRESHARED_KEY));
        assert!(!output.contains(PRIVATE_KEY_DEBUG_BYTES));
        assert!(!output.contains(PRESHARED_KEY_DEBUG_BYTES));
        assert!(output.contains("<redacted>"));
        // Public keys are not secret and help when reading a dump.
        assert!(output.contains(PEER_A));
    }
}

#[test]
fn secrets_never_appear_in_error_output() {
    let almost = &PRIVATE_KEY[..43];
    let with_junk = format!("{PRIVATE_KEY}x");
    let texts = vec![
        format!("[Interface]\nPrivateKey = {almost}\n"),
        format!("[Interface]\nPrivateKey = {with_junk}\n"),
        format!("[Interface]\nPrivateKey = {PRIVATE_KEY} {PRIVATE_KEY}\n"),
        format!("{}[Peer]\nPublicKey = {almost}\n", minimal()),
        format!(
            "{}[Peer]\nPublicKey = {PEER_A}\nPresharedKey = {almost}\n",
            minimal()
        ),
        // A key pasted on a line of its own parses as an unknown key named by the key.
        format!("[Interface]\n{PRIVATE_KEY}\n"),
        format!("[Interface]\n{almost}\n"),
        format!("[Interface]\n{almost} = 1\n"),
        format!("[{almost}]\n"),
        format!("{almost} = 1\n"),
        format!("[Interface]\nPrivateKey = {PRIVATE_KEY}\nPrivateKey = {PRIVATE_KEY}\n"),
        // A private key pasted under a key whose bad values are otherwise echoed.
        format!("{}Address = {PRIVATE_KEY}\n", minimal()),
        format!("{}DNS = 192.0.2.53, {almost}\n", minimal()),
        format!(
            "{}[Peer]\nPublicKey = {PEER_A}\nEndpoint = {PRIVATE_KEY}:51820\n",
            minimal()
        ),
        format!("{}[DNSProxy]\nUpstream = {PRIVATE_KEY}\n", minimal()),
    ];
    for text in texts {
        let error = Config::parse(&text, "wg0.conf").unwrap_err();
        for output in [error.to_string(), format!("{error:?}")] {
            assert!(!output.contains(almost), "{output}");
            assert!(!output.contains(&PRIVATE_KEY[..20]), "{output}");
        }
    }
    assert_eq!(
        parse_err(&format!("[Interface]\n{PRIVATE_KEY}\n")),
        "wg0.conf:2: unknown key in [Interface] (not shown: it does not look like a key name)"
    );
}

#[test]
fn interface_name_comes_from_the_file_stem() {
    let config = Config::parse(&minimal(), "/etc/wireguard/office-1.conf").unwrap();
    assert_eq!(config.interface_name, "office-1");
    assert_eq!(interface_name_from_path("wg0.conf").unwrap(), "wg0");
    assert_eq!(interface_name_from_path("a.b.conf").unwrap(), "a.b");
    assert_eq!(
        interface_name_from_path("w_g=0+x-1.conf").unwrap(),
        "w_g=0+x-1"
    );
    assert_eq!(interface_name_from_path("wg0").unwrap(), "wg0");
    assert_eq!(
        interface_name_from_path("x234567890abcde.conf").unwrap(),
        "x234567890abcde"
    );

    for (path, expected) in [
        (
            "x234567890abcdef.conf",
            "x234567890abcdef.conf: invalid interface name \"x234567890abcdef\" (taken from the file name): it is 16 bytes long, the limit is 15",
        ),
        (
            "wg 0.conf",
            "wg 0.conf: invalid interface name \"wg 0\" (taken from the file name): it contains \" \", and only A-Z a-z 0-9 _ = + . - may name an interface, as in wg-quick",
        ),
        (
            "wg:0.conf",
            "wg:0.conf: invalid interface name \"wg:0\" (taken from the file name): it contains \":\", and only A-Z a-z 0-9 _ = + . - may name an interface, as in wg-quick",
        ),
        (
            "w$(id>x).conf",
            "w$(id>x).conf: invalid interface name \"w$(id>x)\" (taken from the file name): it contains \"$\", and only A-Z a-z 0-9 _ = + . - may name an interface, as in wg-quick",
        ),
        (
            "-wg0.conf",
            "-wg0.conf: invalid interface name \"-wg0\" (taken from the file name): it starts with '-', which commands would take for an option",
        ),
        (
            "...conf",
            "...conf: invalid interface name \"..\" (taken from the file name): it cannot be . or ..",
        ),
        (
            "/",
            "/: the path has no file name to name the interface after",
        ),
    ] {
        assert_eq!(
            Config::parse(&minimal(), path).unwrap_err().to_string(),
            expected,
            "{path}"
        );
    }
}

/// A file in a fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tundns-config-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn from_file_reads_parses_and_names() {
    let dir = TempDir::new("read");
    let path = dir.0.join("wg7.conf");
    std::fs::write(&path, realistic()).unwrap();
    let config = Config::from_file(&path).unwrap();
    assert_eq!(config.interface_name, "wg7");
    assert_eq!(config.peers.len(), 2);

    std::fs::write(&path, format!("{}Adress = 1\n", minimal())).unwrap();
    let error = Config::from_file(&path).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}:3: unknown key \"Adress\" in [Interface] (did you mean \"Address\"?)",
            path.display()
        )
    );
}

#[test]
fn from_file_errors() {
    let dir = TempDir::new("errors");

    let missing = dir.0.join("missing.conf");
    let error = Config::from_file(&missing).unwrap_err();
    assert_eq!(error.line(), None);
    assert_eq!(
        error.to_string(),
        format!(
            "{}: cannot read config file: No such file or directory (os error 2)",
            missing.display()
        )
    );

    let directory = dir.0.join("adir.conf");
    std::fs::create_dir(&directory).unwrap();
    let error = Config::from_file(&directory).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!(
            "{}: cannot read config file: ",
            directory.display()
        )),
        "{error}"
    );

    let latin1 = dir.0.join("latin1.conf");
    let mut bytes = minimal().into_bytes();
    bytes.extend_from_slice(b"# ok\nPostUp = echo caf\xe9\n");
    std::fs::write(&latin1, bytes).unwrap();
    assert_eq!(
        Config::from_file(&latin1).unwrap_err().to_string(),
        format!("{}:4: not valid UTF-8", latin1.display())
    );

    let huge = dir.0.join("huge.conf");
    let mut text = minimal();
    text.push_str(&"#".repeat(1 << 20));
    std::fs::write(&huge, text).unwrap();
    assert_eq!(
        Config::from_file(&huge).unwrap_err().to_string(),
        format!(
            "{}: config file is larger than 1048576 bytes",
            huge.display()
        )
    );
}

#[test]
fn rate_limit_defaults_to_a_thousand_and_can_be_turned_off() {
    let m = minimal();
    let default = parse(&format!("{m}[DNSProxy]\n")).unwrap();
    assert_eq!(default.dns_proxy.rate_limit.map(|n| n.get()), Some(1000));
    let set = parse(&format!("{m}[DNSProxy]\nRateLimit = 50\n")).unwrap();
    assert_eq!(set.dns_proxy.rate_limit.map(|n| n.get()), Some(50));
    for off in ["0", "off"] {
        let config = parse(&format!("{m}[DNSProxy]\nRateLimit = {off}\n")).unwrap();
        assert_eq!(config.dns_proxy.rate_limit, None, "{off}");
    }
    let bad = parse_err(&format!("{m}[DNSProxy]\nRateLimit = fast\n"));
    assert!(bad.contains("wg0.conf:4: RateLimit"), "{bad}");
}

#[test]
fn encrypted_dns_defaults_to_tls_https_and_quic_and_takes_its_certificate_in_pairs() {
    let config = parse(&minimal()).unwrap();
    assert_eq!(config.dns_proxy.encrypted, EncryptedDns::ALL);
    assert_eq!(config.dns_proxy.tls_certificate, None);

    let text = format!(
        "{}[DNSProxy]\nEncrypted = HTTPS, https\nTLSCertificate = /etc/tundns/dns.pem\nTLSKey = /etc/tundns/dns.key\n",
        minimal()
    );
    let proxy = parse(&text).unwrap().dns_proxy;
    assert_eq!(proxy.encrypted, [EncryptedDns::Https]);
    assert_eq!(
        proxy.tls_certificate,
        Some(spanned("/etc/tundns/dns.pem", 5))
    );
    assert_eq!(proxy.tls_key, Some(spanned("/etc/tundns/dns.key", 6)));

    let off = format!("{}[DNSProxy]\nEncrypted = off\n", minimal());
    assert!(parse(&off).unwrap().dns_proxy.encrypted.is_empty());
    let quic = format!("{}[DNSProxy]\nEncrypted = QUIC\n", minimal());
    assert_eq!(
        parse(&quic).unwrap().dns_proxy.encrypted,
        [EncryptedDns::Quic]
    );

    assert_eq!(
        parse_err(&format!(
            "{}[DNSProxy]\nEncrypted = tls, quick\n",
            minimal()
        )),
        r#"wg0.conf:4: Encrypted: expected tls, https, quic or off, found "quick""#
    );
    assert_eq!(
        parse_err(&format!(
            "{}[DNSProxy]\nTLSCertificate = /c.pem\n",
            minimal()
        )),
        "wg0.conf:4: TLSCertificate needs TLSKey, the certificate's private key"
    );
    assert_eq!(
        parse_err(&format!("{}[DNSProxy]\nTLSKey = /k.pem\n", minimal())),
        "wg0.conf:4: TLSKey needs TLSCertificate, the key's certificate chain"
    );
}

#[test]
fn a_proxy_cannot_take_the_port_encrypted_dns_serves() {
    let text = format!("{}[Proxy]\nHTTP = 10.30.30.30:443\n", minimal());
    assert_eq!(
        parse_err(&text),
        "wg0.conf:4: HTTP 10.30.30.30:443: port 443 of the virtual IPs serves encrypted DNS; \
         pick another port, or leave https out of [DNSProxy] Encrypted"
    );
    let text = format!(
        "{}[DNSProxy]\nEncrypted = tls\n[Proxy]\nHTTP = 10.30.30.30:443\n",
        minimal()
    );
    assert!(parse(&text).is_ok());
    // DNS over QUIC takes UDP 853 only: the proxies listen on TCP.
    let text = format!(
        "{}[DNSProxy]\nEncrypted = quic\n[Proxy]\nSOCKS5 = 10.30.30.30:853\n",
        minimal()
    );
    assert!(parse(&text).is_ok());
}

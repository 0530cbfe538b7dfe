//! `[Proxy]`: the SOCKS5 listeners and the credentials file, and what the file gets for
//! a listener others could reach, a virtual IP without the DNS proxy or on its port, an
//! empty section or a repeat.

use std::net::SocketAddr;
use std::path::PathBuf;

use tundns_config::{Config, Spanned};

const HEAD: &str = "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n";

fn parse(extra: &str) -> Result<Config, String> {
    Config::parse(&format!("{HEAD}{extra}"), "wg0.conf").map_err(|error| error.to_string())
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[test]
fn no_section_means_no_proxy() {
    assert_eq!(parse("").unwrap().proxy, None);
}

#[test]
fn loopback_listeners_need_no_credentials() {
    let proxy = parse("[Proxy]\nSOCKS5 = 127.0.0.1:1080, [::1]:1080\n")
        .unwrap()
        .proxy
        .unwrap();
    assert_eq!(
        proxy.socks5,
        [
            Spanned::new(addr("127.0.0.1:1080"), 4),
            Spanned::new(addr("[::1]:1080"), 4)
        ]
    );
    assert_eq!(proxy.credentials, None);
}

#[test]
fn the_http_proxy_listens_beside_or_without_socks5() {
    let proxy = parse("[Proxy]\nHTTP = 127.0.0.1:3128\n")
        .unwrap()
        .proxy
        .unwrap();
    assert!(proxy.socks5.is_empty());
    assert_eq!(proxy.http, [Spanned::new(addr("127.0.0.1:3128"), 4)]);
}

#[test]
fn a_listener_other_hosts_reach_requires_credentials() {
    let error = parse("[Proxy]\nSOCKS5 = 127.0.0.1:1080\nSOCKS5 = 0.0.0.0:1080\n").unwrap_err();
    assert!(error.starts_with("wg0.conf:5:"), "{error}");
    assert!(error.contains("set Credentials"), "{error}");

    let proxy = parse("[Proxy]\nSOCKS5 = 192.0.2.2:1080\nCredentials = /etc/tundns/proxy-users\n")
        .unwrap()
        .proxy
        .unwrap();
    assert_eq!(
        proxy.credentials,
        Some(Spanned::new(PathBuf::from("/etc/tundns/proxy-users"), 5))
    );
}

#[test]
fn bad_sections_and_values_name_their_line() {
    let line_of = |extra: &str| {
        let error = parse(extra).unwrap_err();
        error
            .split(':')
            .nth(1)
            .and_then(|line| line.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("no line in {error}"))
    };
    // An empty section is reported on its header.
    assert_eq!(line_of("[Proxy]\nCredentials = /etc/users\n"), 3);
    assert_eq!(line_of("[Proxy]\nSOCKS5 = 127.0.0.1:0\n"), 4);
    assert_eq!(line_of("[Proxy]\nSOCKS5 = localhost:1080\n"), 4);
    assert_eq!(
        line_of("[Proxy]\nSOCKS5 = 127.0.0.1:1080\nSOCKS5 = 127.0.0.1:1080\n"),
        5
    );
    assert_eq!(line_of("[Proxy]\nSOCKS5 = 127.0.0.1:1080\n[Proxy]\n"), 5);
    assert_eq!(
        line_of("[Proxy]\nSOCKS5 = 127.0.0.1:1080\nCredentials = /a\nCredentials = /b\n"),
        6
    );
    // The virtual IPs exist only with the DNS proxy, whose port 53 they keep.
    assert_eq!(
        line_of("[DNSProxy]\nEnabled = false\n[Proxy]\nSOCKS5 = 10.30.30.30:1080\n"),
        6
    );
    assert_eq!(line_of("[Proxy]\nHTTP = 10.30.30.30:53\n"), 4);
}

#[test]
fn a_virtual_ip_serves_the_proxies_to_this_host_without_credentials() {
    let config = parse(
        "[DNSProxy]\nAddress = 10.30.30.30, fd00:30:30::30\n\
         [Proxy]\nSOCKS5 = 10.30.30.30:1080, [fd00:30:30::30]:1080\nHTTP = 10.30.30.30:3128\n",
    )
    .unwrap();
    let proxy = config.proxy.unwrap();
    assert_eq!(
        proxy.socks5,
        [
            Spanned::new(addr("10.30.30.30:1080"), 6),
            Spanned::new(addr("[fd00:30:30::30]:1080"), 6)
        ]
    );
    assert_eq!(proxy.http, [Spanned::new(addr("10.30.30.30:3128"), 7)]);
}

#[test]
fn the_dns_proxy_listens_on_host_addresses_beside_or_without_virtual_ips() {
    let config =
        parse("[DNSProxy]\nAddress = 10.30.30.30, 127.0.0.1:5353\nAddress = [::1]:5353\n").unwrap();
    assert_eq!(
        config.dns_proxy.addresses,
        ["10.30.30.30".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        config.dns_proxy.listen,
        [
            Spanned::new(addr("127.0.0.1:5353"), 4),
            Spanned::new(addr("[::1]:5353"), 5)
        ]
    );
    // Host addresses alone: no virtual IP, which the system resolver cannot then point at.
    let config = parse("[DNSProxy]\nAddress = 127.0.0.1:5353\n").unwrap();
    assert!(config.dns_proxy.addresses.is_empty());
    let error = parse("[DNSProxy]\nAddress = 127.0.0.1:5353\nSetSystemDNS = true\n").unwrap_err();
    assert!(error.contains(":4:"), "{error}");
    let error = parse("[DNSProxy]\nAddress = 192.0.2.2:53\n").unwrap_err();
    assert!(
        error.contains(":4:") && error.contains("loopback"),
        "{error}"
    );
    let error = parse("[DNSProxy]\nAddress = 127.0.0.1:5353, 127.0.0.1:5353\n").unwrap_err();
    assert!(error.contains("listed twice"), "{error}");
}

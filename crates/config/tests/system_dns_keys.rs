//! `[DNSProxy] SetSystemDNS`, and whether `Upstream` was written: what tundns needs to
//! decide whether to take over the system resolver and where its default upstreams come from.

use tundns_config::{Config, DEFAULT_UPSTREAMS};

const INTERFACE: &str = "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n";

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(&format!("{INTERFACE}{text}"), "wg0.conf").map_err(|error| error.to_string())
}

#[test]
fn set_system_dns_is_unset_by_default_and_takes_booleans() {
    assert_eq!(parse("").unwrap().dns_proxy.set_system_dns, None);
    assert_eq!(
        parse("[DNSProxy]\n").unwrap().dns_proxy.set_system_dns,
        None
    );
    for (value, expected) in [("true", true), ("On", true), ("no", false), ("0", false)] {
        let config = parse(&format!("[DNSProxy]\nSetSystemDNS = {value}\n")).unwrap();
        assert_eq!(config.dns_proxy.set_system_dns, Some(expected), "{value}");
    }
    let config = parse("[dnsproxy]\nsetsystemdns = yes\n").unwrap();
    assert_eq!(config.dns_proxy.set_system_dns, Some(true));
}

#[test]
fn set_system_dns_rejects_non_booleans_and_repeats() {
    let error = parse("[DNSProxy]\nSetSystemDNS = maybe\n").unwrap_err();
    assert!(error.starts_with("wg0.conf:4: "), "{error}");
    let error = parse("[DNSProxy]\nSetSystemDNS = true\nSetSystemDNS = false\n").unwrap_err();
    assert!(error.starts_with("wg0.conf:5: "), "{error}");
}

#[test]
fn set_system_dns_true_needs_the_proxy() {
    let error = parse("[DNSProxy]\nEnabled = false\nSetSystemDNS = true\n").unwrap_err();
    assert_eq!(
        error,
        "wg0.conf:5: SetSystemDNS = true needs the DNS proxy, which is disabled (Enabled = false on line 4)"
    );
    let config = parse("[DNSProxy]\nEnabled = false\nSetSystemDNS = false\n").unwrap();
    assert_eq!(config.dns_proxy.set_system_dns, Some(false));
}

#[test]
fn upstreams_configured_tells_written_upstreams_from_the_defaults() {
    for text in ["", "[DNSProxy]\n", "[DNSProxy]\nCache = off\n"] {
        let proxy = parse(text).unwrap().dns_proxy;
        assert!(!proxy.upstreams_configured, "{text:?}");
        assert_eq!(proxy.upstreams, DEFAULT_UPSTREAMS.to_vec());
    }
    let proxy = parse("[DNSProxy]\nUpstream = 8.8.8.8\n").unwrap().dns_proxy;
    assert!(proxy.upstreams_configured, "even when it names a default");
}

#[test]
fn dns_keeps_servers_and_search_domains_apart() {
    let config = parse("DNS = 10.30.30.30, corp.example\nDNS = fd30:30:30::30\n").unwrap();
    let servers: Vec<String> = config
        .interface
        .dns_servers
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(servers, ["10.30.30.30", "fd30:30:30::30"]);
    assert_eq!(config.interface.dns_search, ["corp.example"]);
}

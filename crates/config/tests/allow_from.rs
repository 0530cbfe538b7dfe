//! `[DNSProxy] AllowFrom`: the networks besides this host whose hosts may use the virtual
//! IPs.

use ipnet::IpNet;
use tundns_config::Config;

const INTERFACE: &str = "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n";

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(&format!("{INTERFACE}{text}"), "wg0.conf").map_err(|error| error.to_string())
}

fn nets(texts: &[&str]) -> Vec<IpNet> {
    texts.iter().map(|text| text.parse().unwrap()).collect()
}

#[test]
fn nobody_else_by_default() {
    assert!(parse("").unwrap().dns_proxy.allow_from.is_empty());
}

#[test]
fn networks_are_listed_repeated_and_masked() {
    let config = parse(
        "[DNSProxy]\nAllowFrom = 192.168.1.0/24, fd00:1::/64\nAllowFrom = 10.1.2.3/16, 172.16.0.9\n",
    )
    .unwrap();
    assert_eq!(
        config.dns_proxy.allow_from,
        nets(&[
            "192.168.1.0/24",
            "fd00:1::/64",
            "10.1.0.0/16",
            "172.16.0.9/32"
        ])
    );
}

#[test]
fn everyone_or_nonsense_is_refused_on_its_line() {
    for (value, says) in [
        ("0.0.0.0/0", "any host"),
        ("::/0", "any host"),
        ("lan", "lan"),
    ] {
        let error = parse(&format!(
            "[DNSProxy]\nEnabled = true\nAllowFrom = {value}\n"
        ))
        .expect_err(value);
        assert!(error.contains("wg0.conf:5"), "{error}");
        assert!(error.contains(says), "{error}");
    }
}

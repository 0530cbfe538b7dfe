//! `[DNSProxy] MetricsAddress` and `QueryLog`: their forms, defaults and errors.

use std::net::SocketAddr;
use std::path::PathBuf;

use tundns_config::{Config, Spanned};

const HEAD: &str = "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n[DNSProxy]\nUpstream = 192.0.2.53\n";

fn parse(extra: &str) -> Result<Config, String> {
    Config::parse(&format!("{HEAD}{extra}"), "wg0.conf").map_err(|error| error.to_string())
}

#[test]
fn both_are_off_by_default() {
    let config = parse("").unwrap();
    assert_eq!(config.dns_proxy.metrics_address, None);
    assert_eq!(config.dns_proxy.query_log, None);
}

#[test]
fn metrics_address_takes_ipv4_and_bracketed_ipv6_with_the_line() {
    let config = parse("MetricsAddress = 127.0.0.1:9153\n").unwrap();
    let expected: SocketAddr = "127.0.0.1:9153".parse().unwrap();
    assert_eq!(
        config.dns_proxy.metrics_address,
        Some(Spanned::new(expected, 5))
    );
    let config = parse("metricsaddress = [::1]:9153\n").unwrap();
    let expected: SocketAddr = "[::1]:9153".parse().unwrap();
    assert_eq!(
        config
            .dns_proxy
            .metrics_address
            .map(|spanned| spanned.value),
        Some(expected)
    );
    assert_eq!(
        parse("MetricsAddress = off\n")
            .unwrap()
            .dns_proxy
            .metrics_address,
        None
    );
}

#[test]
fn query_log_keeps_the_path_and_its_line() {
    let config = parse("QueryLog = /var/log/tundns/queries.jsonl\n").unwrap();
    assert_eq!(
        config.dns_proxy.query_log,
        Some(Spanned::new(
            PathBuf::from("/var/log/tundns/queries.jsonl"),
            5
        ))
    );
    assert_eq!(parse("QueryLog = OFF\n").unwrap().dns_proxy.query_log, None);
}

#[test]
fn bad_values_name_the_line() {
    let cases = [
        (
            "MetricsAddress = 127.0.0.1\n",
            "wg0.conf:5: MetricsAddress: expected ip:port or [ipv6]:port (or off), found \"127.0.0.1\"",
        ),
        (
            "MetricsAddress = localhost:9153\n",
            "wg0.conf:5: MetricsAddress: expected ip:port or [ipv6]:port (or off), found \"localhost:9153\"",
        ),
        (
            "MetricsAddress = 127.0.0.1:0\n",
            "wg0.conf:5: MetricsAddress port must be 1..=65535, found \"127.0.0.1:0\"",
        ),
        (
            "MetricsAddress = 127.0.0.1:9153\nMetricsAddress = 127.0.0.1:9154\n",
            "wg0.conf:6: duplicate key \"MetricsAddress\" in [DNSProxy] (first set on line 5)",
        ),
        ("QueryLog =\n", "wg0.conf:5: QueryLog needs a file path"),
    ];
    for (extra, expected) in cases {
        assert_eq!(parse(extra).unwrap_err(), expected, "{extra}");
    }
}

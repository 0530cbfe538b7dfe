//! Properties: arbitrary text never panics, errors point at a real line, and a secret
//! placed anywhere in a file never comes back out in an error or a `Debug` dump.

use proptest::prelude::*;
use tundns_config::Config;

const PRIVATE_KEY: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";

/// Lines built from the pieces the parser cares about, so that the generated files
/// get past the first line often enough to exercise every key and the final checks.
fn config_line() -> impl Strategy<Value = String> {
    let headers = prop::sample::select(vec![
        "[Interface]",
        "[interface]",
        "[Peer]",
        "[DNSProxy]",
        "[DNSRoute]",
        "[dnsroute]",
        "[Bogus]",
        "[",
        "[]",
    ])
    .prop_map(str::to_string);
    let keys = prop::sample::select(vec![
        "PrivateKey",
        "ListenPort",
        "FwMark",
        "Address",
        "MTU",
        "DNS",
        "Table",
        "PostUp",
        "SaveConfig",
        "PublicKey",
        "PresharedKey",
        "AllowedIPs",
        "Endpoint",
        "PersistentKeepalive",
        "Enabled",
        "Upstream",
        "Timeout",
        "MaxInFlight",
        "TcpIdleTimeout",
        "MaxTcpConnections",
        "CAFile",
        "Cache",
        "CacheSize",
        "CacheMinTTL",
        "CacheMaxTTL",
        "ServeStale",
        "Record",
        "HostsFile",
        "LocalZone",
        "Block",
        "BlockList",
        "BlockMode",
        "BlockTTL",
        "Domain",
        "ThroughTunnel",
        "Nope",
    ]);
    let values = prop_oneof![
        Just(PRIVATE_KEY.to_string()),
        Just("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=".to_string()),
        Just("10.0.0.2/24, fd00::2/64".to_string()),
        Just("10.30.30.30".to_string()),
        Just("192.0.2.53:53".to_string()),
        Just("[2001:db8::1]:51820".to_string()),
        Just("host.example:1".to_string()),
        Just("0x1f".to_string()),
        Just("1280".to_string()),
        Just("2s".to_string()),
        Just("1d".to_string()),
        Just("0s".to_string()),
        Just("32MiB".to_string()),
        Just("null".to_string()),
        Just(".".to_string()),
        Just("corp.internal, lab.internal".to_string()),
        Just("10.99.0.53".to_string()),
        Just("tls://dns.lab.test@192.0.2.53:853".to_string()),
        Just("https://dns.lab.test@[2001:db8::53]/dns-query".to_string()),
        Just("https://dns.lab.test/dns-query".to_string()),
        Just("app.lab.internal A 10.99.0.10".to_string()),
        r"(udp|tcp|tls|https)://[a-z.@0-9:\[\]/%]{0,24}",
        Just("off".to_string()),
        Just("true".to_string()),
        Just("".to_string()),
        "[0-9a-zA-Z:./,\\[\\] ]{0,24}",
        any::<String>(),
    ];
    prop_oneof![
        headers,
        (keys, values).prop_map(|(key, value)| format!("{key} = {value}")),
        Just("# comment".to_string()),
        Just(String::new()),
        any::<String>(),
    ]
}

fn check(text: &str) {
    let line_count = text.lines().count();
    match Config::parse(text, "wg0.conf") {
        Ok(config) => {
            let debug = format!("{config:?}");
            // The generator also pastes the secret's text as the value of ordinary keys (a
            // PublicKey, a PostUp command); there it is not a secret, and Debug may show it.
            let pasted_as_plain_value = text.lines().any(|line| {
                let key = line.trim_start().to_ascii_lowercase();
                line.contains(PRIVATE_KEY)
                    && !key.starts_with("privatekey")
                    && !key.starts_with("presharedkey")
            });
            if !pasted_as_plain_value {
                assert!(!debug.contains(PRIVATE_KEY));
            }
            assert!(!debug.contains("200, 9, 243, 229"));
        }
        Err(error) => {
            let shown = error.to_string();
            assert!(shown.starts_with("wg0.conf:"), "{shown}");
            if let Some(line) = error.line() {
                assert!(
                    (1..=line_count).contains(&line),
                    "{shown} ({line_count} lines)"
                );
            }
            assert!(!shown.contains(PRIVATE_KEY), "{shown}");
            assert!(!shown.contains(&PRIVATE_KEY[..12]), "{shown}");
            assert!(!format!("{error:?}").contains(&PRIVATE_KEY[..12]));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        check(&text);
    }

    #[test]
    fn arbitrary_bytes_never_panic_as_text(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn config_shaped_text_never_panics(lines in prop::collection::vec(config_line(), 0..24)) {
        check(&lines.join("\n"));
    }

    #[test]
    fn valid_prefix_then_anything_never_panics(lines in prop::collection::vec(config_line(), 0..12)) {
        let text = format!("[Interface]\nPrivateKey = {PRIVATE_KEY}\n{}", lines.join("\n"));
        check(&text);
    }
}

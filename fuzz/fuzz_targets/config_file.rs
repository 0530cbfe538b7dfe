//! Any bytes as a config file (`wg0.conf`): wg-quick's `[Interface]` and `[Peer]` sections
//! and tundns's own. An error names a line of the input, or none; no message or warning
//! shows something shaped like key material. A file that parses keeps every line it points
//! at within the input, its upstreams written back parse to the same value, its domains
//! are in their one spelling, and its `Block` domains are ones the blocklist takes (tundns
//! counts on it).

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tundns_config::{Config, Upstream};
use tundns_dns::{BlockList, BlockMode, LocalDataBuilder, Routes};

/// The config crate's promise: a value holding a run this long of base64 characters is
/// never echoed.
const KEY_LIKE_RUN: usize = 40;

/// The longest run of base64 characters in a message, the character after a `\` left out:
/// a value is quoted as Rust writes a string, and its escapes (`\0`) are not its text.
fn longest_base64_run(message: &str) -> usize {
    let (mut longest, mut run, mut escaped) = (0, 0, false);
    for c in message.chars() {
        if !escaped && (c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=')) {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
        escaped = !escaped && c == '\\';
    }
    longest
}

fn assert_no_key_material(message: &str) {
    let longest = longest_base64_run(message);
    assert!(
        longest < KEY_LIKE_RUN,
        "a message shows something shaped like key material: {message}"
    );
}

/// Lowercase, without the final dot, no two alike (`.` is a spelling of its own).
fn assert_one_spelling<'a>(domains: impl IntoIterator<Item = &'a String>) {
    let mut seen = std::collections::HashSet::new();
    for domain in domains {
        assert_eq!(*domain, domain.to_ascii_lowercase(), "{domain:?} lowercase");
        assert!(
            domain == "." || !domain.ends_with('.'),
            "{domain:?} final dot"
        );
        assert!(seen.insert(domain), "{domain:?} twice");
    }
}

fn assert_round_trip(upstream: &Upstream) {
    let written = upstream.to_string();
    assert_eq!(
        written.parse::<Upstream>().as_ref(),
        Ok(upstream),
        "{written}"
    );
    let url = upstream.url();
    assert_eq!(url.parse::<Upstream>().as_ref(), Ok(upstream), "{url}");
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let lines = text.lines().count();
    let in_file = |line: usize| (1..=lines).contains(&line);
    let config = match Config::parse(text, "/etc/wireguard/wg0.conf") {
        Ok(config) => config,
        Err(error) => {
            if let Some(line) = error.line() {
                assert!(in_file(line), "line {line} of {lines}: {error}");
            }
            assert_no_key_material(&error.to_string());
            return;
        }
    };
    assert_eq!(config.interface_name, "wg0");
    for warning in &config.warnings {
        assert!(in_file(warning.line()), "{warning}");
        assert_no_key_material(&warning.to_string());
    }
    for written in &config.key_lines {
        assert!(in_file(written.line), "{written:?}");
    }
    let proxy = &config.dns_proxy;
    let spanned_lines = proxy
        .listen
        .iter()
        .map(|s| s.line)
        .chain(proxy.ca_file.iter().map(|s| s.line))
        .chain(proxy.records.iter().map(|s| s.line))
        .chain(proxy.hosts_files.iter().map(|s| s.line))
        .chain(proxy.local_zones.iter().map(|s| s.line))
        .chain(proxy.block_lists.iter().map(|s| s.line))
        .chain(proxy.metrics_address.iter().map(|s| s.line))
        .chain(proxy.query_log.iter().map(|s| s.line))
        .chain(proxy.routes.iter().map(|route| route.line))
        .chain(
            config
                .proxy
                .iter()
                .flat_map(|p| p.listeners().map(|(_, s)| s.line)),
        )
        .chain(
            config
                .proxy
                .iter()
                .flat_map(|p| p.credentials.iter().map(|s| s.line)),
        );
    for line in spanned_lines {
        assert!(in_file(line), "line {line} of {lines}");
    }

    let mtu = config.interface.mtu;
    assert!((tundns_config::MIN_MTU_IPV4..=tundns_config::MAX_MTU).contains(&mtu));
    if config
        .interface
        .addresses
        .iter()
        .any(|a| a.addr().is_ipv6())
    {
        assert!(mtu >= tundns_config::MIN_MTU_IPV6);
    }
    assert!(proxy.cache_min_ttl <= proxy.cache_max_ttl);
    assert!(
        (tundns_config::MIN_CACHE_SIZE..=tundns_config::MAX_CACHE_SIZE).contains(&proxy.cache_size)
    );

    for upstream in proxy
        .upstreams
        .iter()
        .chain(proxy.routes.iter().flat_map(|route| &route.upstreams))
    {
        assert_round_trip(upstream);
    }

    assert_one_spelling(&proxy.blocked);
    assert_one_spelling(proxy.local_zones.iter().map(|zone| &zone.value));
    assert_one_spelling(proxy.routes.iter().flat_map(|route| &route.domains));
    let mut blocklist = BlockList::new(BlockMode::NxDomain, Duration::from_secs(60));
    for domain in &proxy.blocked {
        blocklist
            .add_domain(domain)
            .unwrap_or_else(|error| panic!("Block = {domain}: {error}"));
    }
    // What tundns does next with the text the config keeps (crates/tundns/src/dns/config.rs):
    // it may refuse it, with the line, but not panic.
    let mut local = LocalDataBuilder::new();
    for record in &proxy.records {
        let _ = local.add_record(&record.value);
    }
    for zone in &proxy.local_zones {
        let _ = local.add_local_zone(&zone.value);
    }
    let _ = local.build();
    let mut routes = Routes::new(0);
    for (index, route) in proxy.routes.iter().enumerate() {
        for domain in &route.domains {
            let _ = routes.add(domain, index + 1);
        }
    }
});

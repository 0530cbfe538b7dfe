//! Any bytes as a `BlockList` file (hosts format, one domain per line, `*.domain`,
//! adblock's `||domain^`; `#` and `!` comments, `[...]` headers), read a line at a time as
//! tundns reads it. A line refused adds nothing; a domain of a line taken is blocked, with
//! the names under it, and a blocked query is answered within its buffer.

#![no_main]

use std::net::IpAddr;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tundns_dns::{BlockList, BlockMode, parse_query};

/// Names of the machine itself, which list files carry and which block nothing (as
/// `crates/dns/src/block.rs` lists them).
const LOCAL_HOST_NAMES: [&str; 12] = [
    "localhost",
    "localhost.localdomain",
    "localdomain",
    "local",
    "broadcasthost",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-mcastprefix",
    "ip6-allnodes",
    "ip6-allrouters",
    "ip6-allhosts",
];

/// The wire form of a plain name as list files write it (letters, digits, `-`, `_`;
/// labels of 1..=63 bytes, at most 255 in all, an optional final dot), lowercase; `None`
/// for anything else, the root included.
fn wire_name(text: &str) -> Option<Vec<u8>> {
    let body = text.strip_suffix('.').unwrap_or(text);
    let mut wire = Vec::new();
    for label in body.split('.') {
        let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if label.is_empty() || label.len() > 63 || !label.bytes().all(plain) {
            return None;
        }
        wire.push(label.len() as u8);
        wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    wire.push(0);
    (wire.len() <= 255).then_some(wire)
}

/// The domains a line names: each name after a hosts line's address, or the one entry.
fn named_domains(line: &str) -> Vec<&str> {
    let trimmed = line.trim();
    if trimmed.starts_with('!') || (trimmed.starts_with('[') && trimmed.ends_with(']')) {
        return Vec::new();
    }
    let content = trimmed.split('#').next().unwrap_or_default().trim();
    let tokens: Vec<&str> = content.split_whitespace().collect();
    match tokens.as_slice() {
        [one] => {
            let domain = match one.strip_prefix("||") {
                Some(rule) => rule.strip_suffix('^').unwrap_or(rule),
                None => one.strip_prefix("*.").unwrap_or(one),
            };
            vec![domain]
        }
        [_address, names @ ..] => names.to_vec(),
        [] => Vec::new(),
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let mut list = BlockList::new(BlockMode::Null, Duration::from_secs(60));
    let mut taken = Vec::new();
    for line in text.lines() {
        let before = list.len();
        match list.add_list_line(line) {
            Ok(()) => taken.push(line),
            Err(_) => assert_eq!(list.len(), before, "refused, yet added: {line:?}"),
        }
    }
    for line in taken {
        for domain in named_domains(line) {
            let local = LOCAL_HOST_NAMES
                .iter()
                .any(|name| name.eq_ignore_ascii_case(domain.strip_suffix('.').unwrap_or(domain)));
            if local || domain.parse::<IpAddr>().is_ok() {
                continue;
            }
            let Some(wire) = wire_name(domain) else {
                continue;
            };
            assert!(list.blocks_name(&wire), "{line:?}: {domain} is not blocked");
            let mut below = b"\x03sub".to_vec();
            below.extend_from_slice(&wire);
            if below.len() <= 255 {
                assert!(
                    list.blocks_name(&below),
                    "{line:?}: sub.{domain} is not blocked"
                );
                let mut query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00".to_vec();
                query.extend_from_slice(&below);
                query.extend_from_slice(b"\x00\x01\x00\x01");
                let query = parse_query(&query).expect("a plain A query");
                for size in [0, 12, 64, 512] {
                    let mut out = vec![0u8; size];
                    let written = list.answer(&query, &mut out);
                    assert!(
                        written.is_some_and(|len| len <= size),
                        "{domain}: {written:?}"
                    );
                }
            }
        }
    }
});

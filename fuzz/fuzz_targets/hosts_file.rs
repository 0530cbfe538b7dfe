//! Any bytes as a `HostsFile` (hosts(5): `ADDRESS NAME [ALIAS...]`, `#` comments), read a
//! line at a time as tundns reads it. Every name of a line taken answers its A or AAAA
//! query from local data with that address; every line taken is also one a `BlockList`
//! takes, since list files accept the hosts format.

#![no_main]

use std::net::IpAddr;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tundns_dns::{BlockList, BlockMode, LocalAnswer, LocalDataBuilder, parse_query};

/// A query for `name` (as written: mixed case, maybe a final dot) of type `qtype`, or
/// `None` when the name does not fit a message.
fn query(name: &str, qtype: u16) -> Option<Vec<u8>> {
    let mut message = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00".to_vec();
    let name = name.strip_suffix('.').unwrap_or(name);
    for label in name.split('.').filter(|_| !name.is_empty()) {
        message.push(u8::try_from(label.len()).ok()?);
        message.extend_from_slice(label.as_bytes());
    }
    message.push(0);
    message.extend_from_slice(&qtype.to_be_bytes());
    message.extend_from_slice(&1u16.to_be_bytes());
    Some(message)
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let mut builder = LocalDataBuilder::new();
    let mut list = BlockList::new(BlockMode::Null, Duration::from_secs(60));
    let mut hosts = Vec::new();
    for line in text.lines() {
        if builder.add_hosts_line(line).is_err() {
            continue;
        }
        if let Err(error) = list.add_list_line(line) {
            panic!("hosts line {line:?} taken, refused as a blocklist line: {error}");
        }
        let content = line.split('#').next().unwrap_or_default();
        let mut tokens = content.split_whitespace();
        if let Some(address) = tokens.next() {
            let address: IpAddr = address
                .parse()
                .expect("a hosts line taken starts with an IP");
            hosts.extend(tokens.map(|name| (address, name.to_owned())));
        }
    }
    let local = builder.build();
    let mut out = vec![0u8; 65535];
    for (address, name) in hosts {
        let (qtype, octets) = match address {
            IpAddr::V4(v4) => (1u16, v4.octets().to_vec()),
            IpAddr::V6(v6) => (28u16, v6.octets().to_vec()),
        };
        let Some(message) = query(&name, qtype) else {
            continue;
        };
        let Ok(query) = parse_query(&message) else {
            continue;
        };
        let answer = local.answer(&query, &mut out);
        let Some(LocalAnswer::Complete(len)) = answer else {
            panic!("{name} {address}: {answer:?}");
        };
        let answer = &out[..len];
        assert_eq!(answer[3] & 0x0f, 0, "{name}: NOERROR");
        assert!(answer[2] & 0x04 != 0, "{name}: authoritative");
        assert!(
            u16::from_be_bytes([answer[6], answer[7]]) >= 1,
            "{name}: an answer"
        );
        assert!(
            answer[12..].windows(octets.len()).any(|w| w == octets),
            "{name}: {address} in the answer"
        );
    }
});

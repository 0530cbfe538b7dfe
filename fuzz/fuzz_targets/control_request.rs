//! Any bytes as what a client writes to the control socket: newline-separated request lines,
//! each read as the server reads it. A request that parses serialises to a line that parses
//! back to the same request; an error reply is one JSON line. A record added with
//! `records_add` is removed by `records_remove` with its own text, and a bad record or
//! pattern changes nothing; a route's upstreams written back parse to the same value.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tundns::control::protocol::{MAX_REQUEST_LINE, Reply, Request, read_request};
use tundns::dns::runtime::LocalSource;
use tundns_config::Upstream;

/// Local records as a config holds them: the property tests' fixture.
fn records() -> &'static LocalSource {
    static SOURCE: OnceLock<LocalSource> = OnceLock::new();
    SOURCE.get_or_init(|| {
        let mut source = LocalSource::default();
        for line in include_str!("../../crates/dns/tests/fixtures/local-records.txt").lines() {
            if let Some((next, _)) = source.with_record(line).unwrap() {
                source = next;
            }
        }
        source
    })
}

fn check(request: Request) {
    let line = serde_json::to_string(&request).unwrap();
    assert!(!line.contains('\n'), "{line}");
    assert_eq!(
        read_request(line.as_bytes()),
        Some(Ok(request.clone())),
        "{line}"
    );
    let base = records();
    let count = base.entries().len();
    match request {
        Request::RecordsAdd { record } => {
            if let Ok(Some((added, _))) = base.with_record(&record) {
                assert_eq!(added.entries().len(), count + 1);
                let (removed, _, gone) = added
                    .without_records(&record)
                    .unwrap_or_else(|error| panic!("{record:?} added, not removed: {error}"));
                assert!(gone >= 1);
                assert_eq!(removed.entries().len(), count + 1 - gone);
            }
        }
        Request::RecordsRemove { record } => {
            if let Ok((removed, _, gone)) = base.without_records(&record) {
                assert!(gone >= 1);
                assert_eq!(removed.entries().len(), count - gone);
            }
        }
        Request::RoutesAdd { upstreams, .. } => {
            for text in upstreams {
                if let Ok(upstream) = text.parse::<Upstream>() {
                    let written = upstream.to_string();
                    assert_eq!(written.parse::<Upstream>(), Ok(upstream), "{text:?}");
                }
            }
        }
        _ => {}
    }
}

fuzz_target!(|bytes: &[u8]| {
    // As the server reads a connection: up to each newline, a line at most this long.
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if line.len() > MAX_REQUEST_LINE {
            return;
        }
        match read_request(line) {
            None => {}
            Some(Ok(request)) => check(request),
            Some(Err(message)) => {
                let reply = Reply::Error(message).to_line();
                assert_eq!(reply.find('\n'), Some(reply.len() - 1), "{reply}");
                let back: Reply = serde_json::from_str(&reply).unwrap();
                assert!(matches!(back, Reply::Error(_)));
            }
        }
    }
});

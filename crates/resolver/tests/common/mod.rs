//! Queries and answers for driving the resolver without sockets.

#![allow(dead_code)] // each test file uses its own part

use std::time::{Duration, Instant};

/// A query for `name` A IN with recursion desired, without EDNS.
pub fn query(id: u16, name: &str) -> Vec<u8> {
    let mut message = id.to_be_bytes().to_vec();
    message.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        message.push(label.len() as u8);
        message.extend_from_slice(label.as_bytes());
    }
    message.extend_from_slice(&[0, 0, 1, 0, 1]);
    message
}

/// An answer to `query` with one A record 203.0.113.`marker`, TTL `ttl`; `flags` are
/// OR-ed into the second flags byte (RCODE) and `tc` sets TC.
pub fn answer(query: &[u8], marker: u8, ttl: u32, rcode: u8, tc: bool) -> Vec<u8> {
    let mut answer = query.to_vec();
    answer[2] |= 0x80 | if tc { 0x02 } else { 0 };
    answer[3] = 0x80 | rcode;
    if rcode == 0 {
        answer[6..8].copy_from_slice(&1u16.to_be_bytes());
        answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        answer.extend_from_slice(&ttl.to_be_bytes());
        answer.extend_from_slice(&[0, 4, 203, 0, 113, marker]);
    }
    answer
}

pub fn id_of(message: &[u8]) -> u16 {
    u16::from_be_bytes([message[0], message[1]])
}

pub fn rcode_of(message: &[u8]) -> u8 {
    message[3] & 0x0f
}

/// The last byte of the first A record: the upstream's marker.
pub fn marker_of(message: &[u8]) -> u8 {
    *message.last().expect("an answer")
}

/// A fake clock: an instant and offsets from it.
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Self {
        Clock(Instant::now())
    }

    pub fn at_millis(&self, millis: u64) -> Instant {
        self.0 + Duration::from_millis(millis)
    }
}

//! Queries and answers for driving the resolver without sockets.

#![allow(dead_code)] // each test file uses its own part

use std::time::{Duration, Instant};

use domain::base::iana::{Rcode, Rtype};
use tundns_test_support::dns::{Answer, Query};

/// A query for `name` A IN with recursion desired, without EDNS.
pub fn query(id: u16, name: &str) -> Vec<u8> {
    Query::new(name, Rtype::A).id(id).build()
}

/// An answer to `query`: with RCODE `rcode`, and for NOERROR one A record 203.0.113.`marker`
/// with TTL `ttl`; `tc` sets TC.
pub fn answer(query: &[u8], marker: u8, ttl: u32, rcode: u8, tc: bool) -> Vec<u8> {
    let mut answer = Answer::to(query).rcode(Rcode::checked_from_int(rcode).expect("an RCODE"));
    if rcode == 0 {
        answer = answer.a(ttl, [203, 0, 113, marker]);
    }
    if tc {
        answer = answer.truncated();
    }
    answer.build()
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

//! The sans-IO DNS core of tundns.
//!
//! Owns everything the proxy decides about a DNS message by looking at its
//! bytes: validating a client query ([`parse_query`]); the answer cache
//! ([`cache::Cache`]: TTLs counted down in place, negative caching, serve-stale,
//! prefetch hints, and the cache file's encoding, checked on reading);
//! local authoritative data ([`LocalData`]), blocklists ([`BlockList`]) and
//! split-DNS routes ([`Routes`]); the responses the proxy writes itself
//! ([`write_error_response`], [`write_truncated`] at whole RRsets), with an Extended DNS
//! Error ([`ExtendedError`], RFC 8914) saying why when tundns answers itself; matching an
//! upstream answer to its question ([`response_matches`]) and adapting it to
//! each client ([`adapt_response`]); the client's UDP size limit; RFC 7766
//! TCP framing ([`tcp::FrameDecoder`]); the DNS in a DoH request ([`doh`]) and a
//! DoQ stream ([`doq`]); and what the proxy says about itself ([`discovery`]: DDR,
//! the Firefox canary).
//!
//! It must never do I/O: no sockets, no clocks (callers pass `Instant`s), no
//! async, no threads. Functions on the per-packet path do not allocate, and no
//! input, however malformed, makes them panic. Everything keys on the same
//! [`Query`] and [`Question`] values: a `Question` is case-insensitive in
//! `Eq`/`Hash`, so it can key the cache, while [`Query::question_wire`] keeps
//! the client's own spelling for the answer.
//!
//! Parsing is a hand-written, bounds-checked walk of the wire format: it
//! validates a whole query (every record, no trailing bytes) in one pass with
//! no allocation, which measures several times faster than going through
//! `domain`'s `Message` (see `benches/dns.rs`). `domain` serves as the
//! independent oracle in the tests, and provides the [`Rcode`] type.

#![forbid(unsafe_code)]

mod block;
pub mod cache;
mod chain;
pub mod discovery;
pub mod doh;
pub mod doq;
mod local;
mod names;
mod query;
pub mod rate_limit;
mod response;
mod rewrite;
mod routes;
mod sections;
mod synth;
pub mod tcp;
mod wire;

pub use block::{BlockList, BlockMode, MAX_BLOCKED_LEN};
pub use chain::CnameChain;
pub use domain::base::iana::{OptRcode, Rcode};
pub use local::{DEFAULT_TTL, LocalAnswer, LocalData, LocalDataBuilder, NEGATIVE_TTL};
pub use names::RecordError;
pub use query::{
    Edns, MAX_UDP_RESPONSE, MIN_UDP_RESPONSE, Query, QueryError, Question, max_udp_response,
    parse_query,
};
pub use response::{
    ADVERTISED_UDP_PAYLOAD, ExtendedError, MAX_SYNTHESIZED_LEN, is_truncated, message_id,
    response_matches, set_message_id, write_error_response, write_error_response_explained,
    write_truncated,
};
pub use rewrite::{adapt_response, clamp_edns_udp_size};
pub use routes::Routes;
pub use wire::{HEADER_LEN, MAX_MESSAGE_LEN, OPT_RECORD_LEN};

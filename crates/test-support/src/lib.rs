//! What the workspace's tests and benchmarks share: DNS queries and answers ([`dns`]) and
//! IPv4/IPv6 packets with UDP, TCP or ICMP echo inside ([`packet`]).
//!
//! Every byte here is written by independent implementations (`domain` for DNS, `etherparse`
//! for IP), so a test that reads them back with tundns's own code checks that code against
//! someone else's. Only what tests and benchmarks need; a raw escape hatch where they craft
//! malformed input on purpose.
//!
//! A dev-dependency only: it never ships in the tundns binary, and no library crate's normal
//! dependencies may name it.

pub mod dns;
pub mod packet;

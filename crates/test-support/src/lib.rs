//! What the workspace's tests and benchmarks share: DNS queries and answers ([`dns`]),
//! IPv4/IPv6 packets with UDP, TCP or ICMP echo inside ([`packet`]), and TLS clients that
//! trust a server by its pin ([`tls`]). The `dns-latency` binary times UDP, DoT, DoH and DoQ
//! from one client for the benchmarks, and `doq-reference` is the bare DoQ server they compare
//! tundns's with.
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
pub mod tls;

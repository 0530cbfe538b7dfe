//! tundns: a userspace WireGuard client whose TUN device answers DNS itself.
//!
//! This crate is the wiring: it reads the config, creates the TUN device and its addresses
//! and routes, registers the DNS proxy on the virtual IPs in the filter, runs WireGuard
//! through gotatun and undoes every system change on the way down. The logic lives in the
//! crates it wires: `tundns-packet`, `tundns-filter`, `tundns-dns`, `tundns-upstream`,
//! `tundns-netstack`, `tundns-config` and `tundns-host` (every change to the operating
//! system).

pub mod control;
pub mod control_client;
pub mod control_protocol;
pub mod dns_config;
pub mod dns_proxy;
pub mod dns_runtime;
pub mod metrics;
pub mod observability;
pub mod query_log;
pub mod tcp_dns;
pub mod tunnel;
pub mod wireguard_stats;

//! tundns: a userspace WireGuard client whose TUN device answers DNS itself.
//!
//! This crate is the wiring: it reads the config, creates the TUN device and its addresses
//! and routes, registers the DNS proxy on the virtual IPs in the filter, runs WireGuard
//! through gotatun and undoes every system change on the way down. The logic lives in the
//! crates it wires: `tundns-packet`, `tundns-filter`, `tundns-dns`, `tundns-upstream`,
//! `tundns-netstack`, `tundns-config` and `tundns-host` (every change to the operating
//! system).

pub mod control;
pub mod datapath;
pub mod dns;
pub mod observability;
pub mod tunnel;

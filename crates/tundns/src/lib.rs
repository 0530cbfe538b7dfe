//! tundns: a userspace WireGuard client whose TUN device answers DNS itself.
//!
//! This crate is the binary and a thin shell around the crates that own the logic:
//! - [`datapath`]: the whole packet path, wired and documented in one file;
//! - [`dns`]: the drivers that run the sans-IO `tundns-resolver` on the TUN reader and in
//!   tasks, and build it from the config;
//! - `inline`: connection tasks that the TUN reader runs itself when its packets wake them;
//! - [`control`]: the control socket's server, client and protocol;
//! - [`observability`]: the metrics endpoint and the query log's lifecycle;
//! - [`proxy`]: the SOCKS5 and HTTP proxies, whose connections leave through the tunnel
//!   from a userspace stack;
//! - [`supervise`]: the tasks a running tunnel cannot do without, whose end stops it;
//! - [`tunnel`]: `tundns up`, brought up in order and torn down in reverse;
//! - [`userspace`]: `tundns up --userspace`, the rootless mode: no TUN, nothing changed on
//!   the host;
//! - [`watchdog`]: the process beside `tundns up` that gives the system back if it dies.
//!
//! It must never hold logic a library crate could own: packets are `tundns-packet`'s and
//! `tundns-filter`'s, DNS decisions `tundns-dns`'s and `tundns-resolver`'s, upstream I/O
//! `tundns-upstream`'s, and every change to the operating system `tundns-host`'s.

pub mod control;
pub mod datapath;
pub mod dns;
mod inline;
pub mod observability;
pub mod proxy;
pub mod supervise;
pub mod tunnel;
pub mod udp_offload;
pub mod userspace;
pub mod watchdog;

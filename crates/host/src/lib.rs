//! tundns-host: everything tundns changes on the operating system, and the means to take it
//! back.
//!
//! It owns the TUN link's addresses and routes, a full tunnel's policy rules, sysctl and
//! nftables tables, the system resolver, the crash journal that records each of those
//! changes before it is made (so that the next run, `tundns reset` or the watchdog can undo
//! what a run that could not stop cleanly left), the instance lock that keeps one tundns
//! per interface ([`instance`]), and the runner for the system tools they need
//! (`resolvectl`, `resolvconf`, `nft`).
//!
//! It never touches the data path: no packets, no DNS answers, no WireGuard. It does not
//! create the TUN device either; it configures one that exists.

pub mod atomic_file;
pub mod busy_interface;
pub mod command_line;
pub mod error;
pub mod firewall;
pub mod instance;
pub mod journal;
pub mod local_addresses;
pub mod paths;
pub mod policy_routing;
pub mod policy_rules;
pub mod repair;
pub mod system;
pub mod system_dns;

pub use error::SystemError;
pub use repair::{CrashRepair, repair};

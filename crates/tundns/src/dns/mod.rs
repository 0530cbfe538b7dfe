//! The DNS proxy's drivers: they run the sans-IO `tundns-resolver` on the TUN reader and
//! in tasks, and build it from the config.
//!
//! - [`proxy`]: the resolver's driver and its UDP front end, inline on the TUN reader;
//! - [`tcp`]: DNS over TCP on the virtual IPs, through the userspace netstack;
//! - [`encrypted`]: DNS over TLS and over HTTPS on the virtual IPs, with their identity;
//! - [`host_sockets`]: DNS over UDP and TCP on host addresses (`Address = ip:port`);
//! - [`config`]: the resolver's parts, built from the config;
//! - [`cache_file`]: the cache kept across restarts in the state directory;
//! - [`groups`]: upstream groups (pools) built from upstream lists;
//! - [`runtime`]: the local records and split-DNS routes that change at run time;
//! - [`counters`] and [`query_log`]: what every answer is counted and logged as.

pub mod cache_file;
pub mod config;
pub mod counters;
pub mod encrypted;
pub mod groups;
pub mod host_sockets;
pub mod proxy;
pub mod query_log;
pub mod runtime;
pub mod tcp;

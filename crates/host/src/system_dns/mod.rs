//! The system resolver: pointing it at the proxy on `up`, giving it back on the way down,
//! and repairing it after a run that could not (a crash, SIGKILL, a reboot).
//!
//! `[Interface] DNS` keeps wg-quick's meaning: its IPs become the system's name servers and
//! its names the search domains, for as long as the tunnel runs. `[DNSProxy] SetSystemDNS =
//! true` points the system at the proxy's virtual IPs whatever `DNS` says; `false` leaves the
//! system resolver alone.
//!
//! Three backends, picked at run time ([`choose_backend`]): systemd-resolved (per-link
//! settings through `resolvectl`), resolvconf (Debian's or openresolv, a per-interface
//! record), or `/etc/resolv.conf` itself, rewritten in place with the original kept next to
//! it. Every change is recorded in the crash journal ([`DnsEntry`], [`crate::journal`])
//! *before* it is made, so the next `tundns up` of the interface, or `tundns reset`, can
//! undo it after a crash. A record tundns cannot vouch for is reported and left alone, and
//! a resolv.conf that no longer holds what tundns wrote stays as it is, its record retired:
//! tundns never overwrites a resolver config it did not write.
//!
//! The decisions are pure functions with unit tests: what the config asks ([`plan`]), which
//! backend ([`backend`]), each backend's commands and parsing ([`resolved`], [`resolvconf`],
//! [`resolv_conf`]) and the journal entry ([`entry`]). The I/O around them is thin: looking
//! at the machine ([`probe`]), then making and undoing the change ([`apply`]).

pub mod apply;
pub mod backend;
pub mod entry;
pub mod error;
pub mod plan;
pub mod probe;
pub mod resolv_conf;
pub mod resolvconf;
pub mod resolved;

pub use apply::{AppliedDns, DnsRestore, DnsTakeover};
pub use backend::{Backend, Probe, choose_backend};
pub use entry::{DnsChange, DnsEntry};
pub use error::SystemDnsError;
pub use plan::{DnsPlan, ResolverSettings};

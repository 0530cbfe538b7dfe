//! The packet filter between the TUN device and WireGuard, and the virtual-service API.
//!
//! Outbound, [`FilteredTun`] reads each packet from the TUN and classifies it by destination
//! against the [`Rules`]: a packet for a virtual IP goes, inline, to the [`Service`]
//! registered there, which answers through a [`TunWriter`]; every other packet goes to
//! gotatun unchanged. gotatun's reading task runs on the reader's own thread, where it
//! blocks in `read` (the `reader` module), so that an answer costs a read and a write.
//! Inbound, [`FilteredTunSender`] drops decrypted packets that name a virtual IP, so peers
//! can neither spoof nor reach a service.
//!
//! On a TUN opened with offloads, reads are GSO super-packets, split into segments before
//! any is classified, and writes coalesce one flow's packets after each is checked; the
//! `offload` module owns that framing.
//!
//! This crate owns classification and dispatch. It never parses DNS and never touches a
//! socket; the path to WireGuard takes no lock of its own and makes no allocation (the
//! packet buffers come from a pool).

mod host;
mod offload;
mod reader;
mod rules;
mod tun;

pub use host::{Datagram, SourcePolicy, UdpService, VirtualHost};
pub use offload::TUN_MAX_SEGMENTS;
pub use rules::{RuleTable, Rules, RulesReader};
pub use tun::{FilterStats, FilteredTun, FilteredTunSender, InboundTap, TunBatch, TunWriter};

/// A service living on a virtual IP.
///
/// [`Service::handle`] runs inline on the TUN reader, so it must return quickly: answer what
/// can be answered at once through `tun`, and hand anything slower (upstream I/O) to a task
/// holding a clone of the writer.
pub trait Service: Send + Sync + 'static {
    /// Handles one IP packet whose destination is this service's virtual IP.
    fn handle(&self, packet: &[u8], tun: &TunWriter);

    /// A short name for logs and status output.
    fn name(&self) -> &str;
}

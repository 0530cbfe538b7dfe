//! The local ports of the proxies' connections and UDP associations on the interface
//! address: the packets from the tunnel to one of them are the proxies', every other
//! packet to that address is the host's.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};

/// Local ports the proxies use: above Linux's default ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768–60999), so that the host's own connections from
/// the interface address do not pick them.
pub const LOCAL_PORTS: RangeInclusive<u16> = 61000..=65535;

/// Ports of [`LOCAL_PORTS`] in use, readable without a lock by the tunnel's writer.
pub struct PortSet {
    bits: Vec<AtomicU64>,
}

impl Default for PortSet {
    /// Every port free.
    fn default() -> Self {
        let ports = usize::from(LOCAL_PORTS.end() - LOCAL_PORTS.start()) + 1;
        Self {
            bits: (0..ports.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl PortSet {
    /// The word and bit of `port`, if it is one of [`LOCAL_PORTS`].
    fn slot(&self, port: u16) -> Option<(&AtomicU64, u64)> {
        let index = usize::from(port.checked_sub(*LOCAL_PORTS.start())?);
        Some((self.bits.get(index / 64)?, 1 << (index % 64)))
    }

    /// Takes `port` if it is free.
    pub fn claim(&self, port: u16) -> bool {
        self.slot(port)
            .is_some_and(|(word, bit)| word.fetch_or(bit, Ordering::AcqRel) & bit == 0)
    }

    pub fn release(&self, port: u16) {
        if let Some((word, bit)) = self.slot(port) {
            word.fetch_and(!bit, Ordering::AcqRel);
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.slot(port)
            .is_some_and(|(word, bit)| word.load(Ordering::Acquire) & bit != 0)
    }
}

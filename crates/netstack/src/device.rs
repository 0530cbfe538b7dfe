//! The in-memory smoltcp device: two bounded packet queues.

use std::collections::VecDeque;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Packets waiting in either direction. Bounded so that a caller that stops
/// polling or draining cannot make the stack grow without limit; TCP
/// retransmits whatever is dropped here.
pub(crate) const QUEUE_CAPACITY: usize = 1024;

pub(crate) struct QueueDevice {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    mtu: usize,
}

impl QueueDevice {
    pub(crate) fn new(mtu: usize) -> Self {
        Self {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu,
        }
    }

    /// Queues an inbound packet; returns false (dropping it) when the queue is full.
    pub(crate) fn push_rx(&mut self, packet: &[u8]) -> bool {
        if self.rx.len() >= QUEUE_CAPACITY {
            return false;
        }
        self.rx.push_back(packet.to_vec());
        true
    }

    pub(crate) fn rx_is_full(&self) -> bool {
        self.rx.len() >= QUEUE_CAPACITY
    }

    pub(crate) fn has_rx(&self) -> bool {
        !self.rx.is_empty()
    }

    pub(crate) fn pop_tx(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }
}

pub(crate) struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

pub(crate) struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut packet = vec![0; len];
        let result = f(&mut packet);
        // A reply token handed out with an inbound packet cannot refuse up
        // front, so a full queue drops the packet here instead.
        if self.0.len() < QUEUE_CAPACITY {
            self.0.push_back(packet);
        }
        result
    }
}

impl phy::Device for QueueDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((RxToken(packet), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        (self.tx.len() < QUEUE_CAPACITY).then_some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

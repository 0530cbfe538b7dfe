//! TUN I/O with the kernel's offloads: GSO super-packets split on the way out, one flow's
//! packets coalesced (GRO) on the way in, and the virtio-net header every write carries.
//!
//! tun-rs does the splitting and the coalescing (`recv_multiple`, `send_multiple` and its
//! [`GROTable`]); this module owns the buffers they need and turns what they report into
//! packets, drops and counts. On a device opened without offloads (`IFF_VNET_HDR`
//! refused), the same calls read and write plain packets.

use std::io::{self, IoSlice};

use bytes::BytesMut;
use gotatun::packet::{Packet, PacketBufPool};
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, SyncDevice, VIRTIO_NET_HDR_LEN};

/// Largest read from the TUN: a virtio-net header and the largest IP super-packet.
const RAW_READ_LEN: usize = VIRTIO_NET_HDR_LEN + u16::MAX as usize;

/// Segments one super-packet may split into. tundns caps the TUN's `gso_max_segs` at this
/// (`SystemChanges::set_gso_max_segments`), so the kernel segments larger ones itself; a
/// super-packet of more, which only a kernel ignoring the cap would build, is dropped and
/// counted, as a bogus one is.
pub const TUN_MAX_SEGMENTS: usize = 128;

/// Most packets one [`Coalescer::write`] hands to tun-rs at once; it bounds the memory of
/// the coalescing buffers to this many 64 KiB buffers.
const MAX_WRITE_BATCH: usize = IDEAL_BATCH_SIZE;

/// Capacity of a coalescing buffer: tun-rs only coalesces into a buffer that can hold a
/// whole super-packet with its headroom.
const COALESCE_BUFFER_LEN: usize = 2 * VIRTIO_NET_HDR_LEN + u16::MAX as usize;

/// The header of a packet that asks nothing of the kernel: no segmentation, checksums done.
const PLAIN_HEADER: [u8; VIRTIO_NET_HDR_LEN] = [0; VIRTIO_NET_HDR_LEN];

/// How the device frames the packets read from and written to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Each read and write starts with a virtio-net header (`IFF_VNET_HDR`).
    VirtioHeader,
    /// Bare IP packets.
    Plain,
}

impl Framing {
    /// The framing `device` was opened with.
    pub(crate) fn of(device: &SyncDevice) -> Self {
        if device.tcp_gso() {
            Self::VirtioHeader
        } else {
            Self::Plain
        }
    }

    /// The bytes in front of each packet read or written: the virtio-net header, or none.
    pub(crate) fn header_len(self) -> usize {
        match self {
            Self::VirtioHeader => VIRTIO_NET_HDR_LEN,
            Self::Plain => 0,
        }
    }

    /// Writes one packet, with the header the framing needs. A TUN write never waits: the
    /// kernel takes the packet into its stack, or refuses it.
    pub(crate) fn send(self, device: &SyncDevice, packet: &[u8]) -> io::Result<usize> {
        match self {
            Self::VirtioHeader => {
                device.send_vectored(&[IoSlice::new(&PLAIN_HEADER), IoSlice::new(packet)])
            }
            Self::Plain => device.send(packet),
        }
    }
}

/// Whether `error` came from the device (an OS error, or nothing to read yet) rather than
/// from tun-rs refusing a packet or a batch, which it reports without an OS error code.
pub(crate) fn is_device_error(error: &io::Error) -> bool {
    error.raw_os_error().is_some() || error.kind() == io::ErrorKind::WouldBlock
}

/// What one read from the TUN gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// This many packets, ready in [`SegmentReader::take`].
    Packets(usize),
    /// A super-packet whose virtio-net header or length did not add up; nothing to take.
    Malformed,
}

/// Packet buffers the reader keeps for reuse: those of the packets on their way to
/// WireGuard come back to it once sent.
const POOL_CAPACITY: usize = 1024;

/// Reads the TUN into gotatun's packet buffers, one super-packet split into its segments.
pub(crate) struct SegmentReader {
    /// One raw read: the virtio-net header and the (super-)packet.
    raw: Box<[u8]>,
    /// Buffers for the segments of the next read, always [`TUN_MAX_SEGMENTS`] of them once
    /// the first read has filled it.
    spare: Vec<SegmentBuffer>,
    sizes: Vec<usize>,
    pool: PacketBufPool,
}

impl SegmentReader {
    pub(crate) fn new() -> Self {
        Self {
            raw: vec![0; RAW_READ_LEN].into_boxed_slice(),
            spare: Vec::with_capacity(TUN_MAX_SEGMENTS),
            sizes: vec![0; TUN_MAX_SEGMENTS],
            pool: PacketBufPool::new(POOL_CAPACITY),
        }
    }

    /// Waits for the next read, in the device's own (blocking) mode.
    pub(crate) fn read(&mut self, device: &SyncDevice) -> io::Result<Read> {
        while self.spare.len() < TUN_MAX_SEGMENTS {
            self.spare.push(SegmentBuffer(self.pool.get()));
        }
        let result = device.recv_multiple(&mut self.raw, &mut self.spare, &mut self.sizes, 0);
        Self::sort(result)
    }

    /// The `index`th packet of the last read.
    pub(crate) fn packet(&self, index: usize) -> &[u8] {
        &self.spare[index].0[..self.sizes[index]]
    }

    /// Takes the `index`th packet of the last read, trimmed to its length, leaving a fresh
    /// buffer in its place. A packet only looked at (a service's) keeps its buffer for the
    /// next read, and costs the pool nothing.
    pub(crate) fn take(&mut self, index: usize) -> Packet<[u8]> {
        let SegmentBuffer(mut packet) =
            std::mem::replace(&mut self.spare[index], SegmentBuffer(self.pool.get()));
        packet.truncate(self.sizes[index]);
        packet
    }

    /// A device error is returned; any other is tun-rs refusing what the kernel handed
    /// over (a bogus `gso_size` or `csum_start`, a length that does not add up, more
    /// segments than [`TUN_MAX_SEGMENTS`]), which costs that read only.
    fn sort(result: io::Result<usize>) -> io::Result<Read> {
        match result {
            Ok(count) => Ok(Read::Packets(count)),
            Err(error) if is_device_error(&error) => Err(error),
            Err(error) => {
                tracing::debug!(%error, "dropped a super-packet from the TUN");
                Ok(Read::Malformed)
            }
        }
    }
}

/// One of gotatun's packet buffers, as the byte buffer tun-rs splits into.
struct SegmentBuffer(Packet<[u8]>);

impl AsRef<[u8]> for SegmentBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for SegmentBuffer {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// Writes batches of packets into the TUN, one flow's consecutive TCP or UDP packets
/// coalesced into one super-packet where the device allows it.
pub(crate) struct Coalescer {
    /// Each packet behind room for the virtio-net header, with capacity to grow into a
    /// super-packet; kept between batches for their allocations.
    buffers: Vec<BytesMut>,
    /// Buffers of the current batch.
    filled: usize,
    table: GROTable,
}

impl Coalescer {
    pub(crate) fn new() -> Self {
        Self {
            buffers: Vec::new(),
            filled: 0,
            table: GROTable::default(),
        }
    }

    /// Adds `packet` to the batch; the batch is full at [`MAX_WRITE_BATCH`] packets.
    pub(crate) fn push(&mut self, packet: &[u8]) {
        if self.filled == self.buffers.len() {
            self.buffers
                .push(BytesMut::with_capacity(COALESCE_BUFFER_LEN));
        }
        let buffer = &mut self.buffers[self.filled];
        buffer.clear();
        buffer.extend_from_slice(&PLAIN_HEADER);
        buffer.extend_from_slice(packet);
        self.filled += 1;
    }

    pub(crate) fn is_full(&self) -> bool {
        self.filled == MAX_WRITE_BATCH
    }

    /// Writes the batch, coalesced, and empties it; after an error too, the next batch
    /// starts clean.
    pub(crate) fn write(&mut self, device: &SyncDevice) -> io::Result<()> {
        let filled = std::mem::take(&mut self.filled);
        if filled == 0 {
            return Ok(());
        }
        let batch = &mut self.buffers[..filled];
        device
            .send_multiple(&mut self.table, batch, VIRTIO_NET_HDR_LEN)
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_super_packet_costs_that_read_only() {
        let refused = io::Error::new(io::ErrorKind::InvalidInput, "gso_size must be non-zero");
        assert_eq!(SegmentReader::sort(Err(refused)).unwrap(), Read::Malformed);
        let short = io::Error::other("length of packet (9) <= VIRTIO_NET_HDR_LEN (10)");
        assert_eq!(SegmentReader::sort(Err(short)).unwrap(), Read::Malformed);
    }

    #[test]
    fn device_errors_and_an_empty_device_are_returned() {
        let empty = io::Error::from(io::ErrorKind::WouldBlock);
        assert!(SegmentReader::sort(Err(empty)).is_err());
        let gone = io::Error::from_raw_os_error(libc::ENODEV);
        assert!(SegmentReader::sort(Err(gone)).is_err());
        assert_eq!(SegmentReader::sort(Ok(3)).unwrap(), Read::Packets(3));
    }
}

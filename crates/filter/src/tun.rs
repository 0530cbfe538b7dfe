//! The TUN side of the filter: gotatun's `IpRecv`/`IpSend` wrappers and the reply writer.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use gotatun::packet::{Ip, Packet, PacketBufPool};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher};
use tun_rs::AsyncDevice;

use crate::offload::{Coalescer, Framing, Read, SegmentReader, TUN_MAX_SEGMENTS, is_device_error};
use crate::rules::{Rules, RulesReader};

/// Packets (with the framing's header) up to this size are built on the stack; larger ones
/// allocate.
const SMALL_PACKET: usize = 1536;

/// Packets after which one [`FilteredTun::recv`] stops reading: enough to spread the
/// rule-table load and the counter updates over many packets during a transfer, few enough
/// that the first packet of a batch does not wait long for WireGuard. One read may give up
/// to a super-packet's worth of segments beyond it.
const RECV_BATCH: usize = 64;

/// Counters kept by the filter. Relaxed atomics: they are statistics, not synchronisation.
#[derive(Debug, Default)]
pub struct FilterStats {
    /// Outbound packets handed to a virtual service.
    pub diverted: AtomicU64,
    /// Outbound packets handed to WireGuard.
    pub passed: AtomicU64,
    /// Outbound packets that are not IP and were dropped before WireGuard.
    pub dropped_malformed: AtomicU64,
    /// Outbound super-packets whose virtio-net header or length did not add up, dropped
    /// whole, and inbound batches the TUN refused to coalesce.
    pub dropped_offload: AtomicU64,
    /// Inbound packets from the tunnel whose source or destination is a virtual IP.
    pub dropped_inbound_virtual: AtomicU64,
    /// Replies that could not be written into the TUN, or were dropped because too many
    /// were already waiting for it.
    pub reply_errors: AtomicU64,
}

impl FilterStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds a batch's count, skipping the atomic operation when there is nothing to add.
    fn add(counter: &AtomicU64, count: u64) {
        if count > 0 {
            counter.fetch_add(count, Ordering::Relaxed);
        }
    }
}

/// Writes IP packets straight into the TUN, towards the host's own stack.
///
/// Services use it to answer; it is cheap to clone into tasks.
#[derive(Clone)]
pub struct TunWriter {
    device: Arc<AsyncDevice>,
    framing: Framing,
    stats: Arc<FilterStats>,
    /// Replies waiting in tasks for the device to become writable.
    waiting: Arc<AtomicUsize>,
}

/// Replies allowed to wait for a busy TUN at once; beyond, they are dropped as a full
/// NIC queue drops them, rather than piling up tasks.
const MAX_WAITING_REPLIES: usize = 256;

impl TunWriter {
    /// A writer for `device` that counts failures in `stats`.
    pub fn new(device: Arc<AsyncDevice>, stats: Arc<FilterStats>) -> Self {
        Self {
            framing: Framing::of(&device),
            device,
            stats,
            waiting: Arc::default(),
        }
    }

    /// Writes one packet without waiting. Safe to call inline on the TUN reader.
    ///
    /// A TUN write practically never blocks; in the rare case the reactor has not yet
    /// seen the device writable, the packet is copied to a task that waits for it.
    pub fn send(&self, packet: &[u8]) {
        self.finish_send(self.framing.try_send(&self.device, packet), packet);
    }

    /// Acts on a write of `packet` that did not wait: done, handed to a task that waits for
    /// the device, or counted.
    fn finish_send(&self, written: io::Result<usize>, packet: &[u8]) {
        match written {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                if self.waiting.fetch_add(1, Ordering::Relaxed) >= MAX_WAITING_REPLIES {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    FilterStats::bump(&self.stats.reply_errors);
                    return;
                }
                let writer = self.clone();
                let packet = packet.to_vec();
                tokio::spawn(async move {
                    writer.send_async(&packet).await;
                    writer.waiting.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(error) => self.count_error(&error),
        }
    }

    /// Builds an IP/UDP packet around `payload` and writes it without waiting.
    ///
    /// The packet is built behind room for the framing's header (zeroed: nothing asked of
    /// the kernel), so that the reply to a cached query is one plain write.
    pub fn send_udp(&self, source: SocketAddr, destination: SocketAddr, payload: &[u8]) {
        let header = self.framing.header_len();
        let needed = header + tundns_packet::udp_headers_len(&destination) + payload.len();
        let mut small = [0u8; SMALL_PACKET];
        let mut large = Vec::new();
        let buf = if needed <= SMALL_PACKET {
            &mut small[..]
        } else {
            large.resize(needed, 0);
            &mut large[..]
        };
        match tundns_packet::build_udp(&mut buf[header..], source, destination, payload) {
            Ok(len) => {
                let frame = &buf[..header + len];
                self.finish_send(self.device.try_send(frame), &frame[header..]);
            }
            Err(error) => {
                FilterStats::bump(&self.stats.reply_errors);
                tracing::debug!(?error, "could not build a UDP reply");
            }
        }
    }

    /// Writes one packet, waiting for the device if it must.
    pub async fn send_async(&self, packet: &[u8]) {
        if let Err(error) = self.framing.send(&self.device, packet).await {
            self.count_error(&error);
        }
    }

    /// The filter's counters.
    pub fn stats(&self) -> &Arc<FilterStats> {
        &self.stats
    }

    fn count_error(&self, error: &io::Error) {
        FilterStats::bump(&self.stats.reply_errors);
        tracing::debug!(%error, "could not write a reply into the TUN");
    }
}

/// gotatun's TUN reader: every outbound packet is classified; packets for a virtual IP go
/// to their service inline, everything else goes on to WireGuard.
///
/// Each [`IpRecv::recv`] waits for one read, then takes whatever else the TUN already
/// holds, until [`RECV_BATCH`] packets, without waiting again. A read gives one packet, or
/// the segments of one GSO super-packet, each classified on its own: a virtual IP is never
/// reached through an offloaded packet. The whole batch is classified against one load of
/// the rule table, so a rule changed at runtime applies from the next batch on.
pub struct FilteredTun {
    device: Arc<AsyncDevice>,
    rules: RulesReader,
    writer: TunWriter,
    mtu: MtuWatcher,
    stats: Arc<FilterStats>,
    reader: SegmentReader,
    /// The current batch's packets for WireGuard; kept between calls for its allocation.
    passed: Vec<Packet<Ip>>,
}

impl FilteredTun {
    /// Wraps `device`, whose MTU `mtu` follows, diverting by `rules`.
    pub fn new(
        device: Arc<AsyncDevice>,
        rules: &Rules,
        mtu: MtuWatcher,
        stats: Arc<FilterStats>,
    ) -> Self {
        Self {
            writer: TunWriter::new(device.clone(), stats.clone()),
            device,
            rules: rules.reader(),
            mtu,
            stats,
            reader: SegmentReader::new(),
            passed: Vec::with_capacity(RECV_BATCH + TUN_MAX_SEGMENTS),
        }
    }

    /// Classifies the packets of `first` and of every read the TUN can give at once after
    /// it, until [`RECV_BATCH`] packets: diverted packets go to their service, the others
    /// into `self.passed`.
    ///
    /// Nothing here waits, so the only await in [`IpRecv::recv`] comes before a batch and
    /// a cancelled `recv` loses no packet it has read.
    fn filter_batch(&mut self, first: Read, pool: &PacketBufPool) {
        let rules = self.rules.load();
        let mut read = first;
        let mut packets = 0;
        let mut diverted = 0;
        let mut malformed = 0;
        let mut malformed_offload = 0;
        loop {
            match read {
                Read::Packets(count) => {
                    packets += count;
                    for index in 0..count {
                        let packet = self.reader.packet(index);
                        if let Some(service) = rules.classify(packet) {
                            diverted += 1;
                            service.handle(packet, &self.writer);
                            continue;
                        }
                        // A malformed packet must not end gotatun's reader task, so it is
                        // dropped here rather than reported as an error.
                        match self.reader.take(index, pool).try_into_ip() {
                            Ok(ip) => self.passed.push(ip),
                            Err(_) => malformed += 1,
                        }
                    }
                }
                Read::Malformed => malformed_offload += 1,
            }
            if packets >= RECV_BATCH {
                break;
            }
            // WouldBlock ends the batch; so does any other error, which the next awaited
            // read reports if it persists.
            match self.reader.try_read(&self.device, pool) {
                Ok(next) => read = next,
                Err(_) => break,
            }
        }
        FilterStats::add(&self.stats.diverted, diverted);
        FilterStats::add(&self.stats.dropped_malformed, malformed);
        FilterStats::add(&self.stats.dropped_offload, malformed_offload);
        FilterStats::add(&self.stats.passed, self.passed.len() as u64);
    }
}

impl IpRecv for FilteredTun {
    async fn recv<'a>(
        &'a mut self,
        pool: &mut PacketBufPool,
    ) -> io::Result<impl Iterator<Item = Packet<Ip>> + Send + 'a> {
        // The previous batch's iterator has been dropped, which emptied `passed`.
        while self.passed.is_empty() {
            let read = self.reader.read(&self.device, pool).await?;
            self.filter_batch(read, pool);
        }
        Ok(self.passed.drain(..))
    }

    fn mtu(&self) -> MtuWatcher {
        self.mtu.clone()
    }
}

/// gotatun's TUN writer: decrypted packets from the tunnel go to the host, except those
/// that name a virtual IP.
///
/// gotatun hands over every packet waiting for the TUN at once ([`IpSend::send_many`]);
/// each is checked on its own, then one flow's consecutive packets are coalesced into a
/// super-packet, so the host's stack sees a few large packets rather than many small ones.
pub struct FilteredTunSender {
    device: Arc<AsyncDevice>,
    rules: RulesReader,
    stats: Arc<FilterStats>,
    coalescer: Coalescer,
}

impl FilteredTunSender {
    /// Wraps `device`, dropping by `rules`.
    pub fn new(device: Arc<AsyncDevice>, rules: &Rules, stats: Arc<FilterStats>) -> Self {
        Self {
            device,
            rules: rules.reader(),
            stats,
            coalescer: Coalescer::new(),
        }
    }

    /// Writes the coalescer's batch. A batch tun-rs refuses is dropped and counted, so that
    /// gotatun, which ends its writer on such errors, goes on.
    async fn flush(&mut self) -> io::Result<()> {
        match self.coalescer.write(&self.device).await {
            Err(error) if !is_device_error(&error) => {
                FilterStats::bump(&self.stats.dropped_offload);
                tracing::debug!(%error, "dropped a batch for the TUN");
                Ok(())
            }
            result => result,
        }
    }
}

impl IpSend for FilteredTunSender {
    async fn send(&mut self, packet: Packet<Ip>) -> io::Result<()> {
        self.send_many(&mut Vec::from([packet])).await
    }

    /// Checks and writes every packet of the batch, whatever a write answers; the first
    /// error is returned at the end, so that one failed write costs its own packets only.
    async fn send_many(&mut self, packets: &mut Vec<Packet<Ip>>) -> io::Result<()> {
        let mut dropped = 0;
        let mut first_error = Ok(());
        // One load of the rule table for the batch; the rule is checked on every packet
        // before coalescing, so it holds for every coalesced packet too.
        let mut batch = packets.drain(..).map(Packet::into_bytes).peekable();
        while batch.peek().is_some() {
            let rules = self.rules.load();
            for packet in batch.by_ref() {
                if rules.touches_virtual_ip(packet.as_ref()) {
                    dropped += 1;
                    continue;
                }
                self.coalescer.push(packet.as_ref());
                if self.coalescer.is_full() {
                    break;
                }
            }
            let written = self.flush().await;
            if first_error.is_ok() {
                first_error = written;
            }
        }
        FilterStats::add(&self.stats.dropped_inbound_virtual, dropped);
        first_error
    }
}

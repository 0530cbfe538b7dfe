//! The TUN side of the filter: gotatun's `IpRecv`/`IpSend` wrappers and the reply writer.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gotatun::packet::{Ip, Packet, PacketBufPool};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher, RecvInterrupter};
use tokio::runtime::Handle;
use tun_rs::SyncDevice;

use crate::offload::{Coalescer, Framing, Read, SegmentReader, TUN_MAX_SEGMENTS, is_device_error};
use crate::reader::ReaderThread;
use crate::rules::{Rules, RulesReader};

/// Packets (with the framing's header) up to this size are built on the stack; larger ones
/// allocate.
const SMALL_PACKET: usize = 1536;

/// Room for the largest framing header in front of a packet built in place.
const FRAME_ROOM: usize = tun_rs::VIRTIO_NET_HDR_LEN;

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
    /// whole, and batches for the TUN (from the tunnel, or a service's) that it refused to
    /// coalesce.
    pub dropped_offload: AtomicU64,
    /// Inbound packets from the tunnel whose source or destination is a virtual IP.
    pub dropped_inbound_virtual: AtomicU64,
    /// Outbound packets to a virtual IP from a source its host does not admit: another
    /// host whose packets were routed or forwarded into the TUN.
    pub dropped_foreign_source: AtomicU64,
    /// Replies (single packets or a service's batches) that could not be written into the
    /// TUN.
    pub reply_errors: AtomicU64,
}

impl FilterStats {
    pub(crate) fn bump(counter: &AtomicU64) {
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
    device: Arc<SyncDevice>,
    framing: Framing,
    stats: Arc<FilterStats>,
}

impl TunWriter {
    /// The largest [`udp_payload_offset`](Self::udp_payload_offset), an IPv6 reply's.
    pub const MAX_UDP_PAYLOAD_OFFSET: usize = FRAME_ROOM + tundns_packet::IPV6_UDP_HEADERS;

    /// A writer for `device` that counts failures in `stats`.
    pub fn new(device: Arc<SyncDevice>, stats: Arc<FilterStats>) -> Self {
        Self {
            framing: Framing::of(&device),
            device,
            stats,
        }
    }

    /// Writes one packet. A TUN write never waits (the kernel takes the packet into its
    /// stack or refuses it), so this is safe inline on the TUN reader and in tasks.
    pub fn send(&self, packet: &[u8]) {
        if let Err(error) = self.framing.send(&self.device, packet) {
            self.count_error(&error);
        }
    }

    /// Builds an IP/UDP packet around `payload` and writes it.
    pub fn send_udp(&self, source: SocketAddr, destination: SocketAddr, payload: &[u8]) {
        let offset = Self::udp_payload_offset(&destination);
        let needed = offset + payload.len();
        let mut small = [0u8; SMALL_PACKET];
        let mut large = Vec::new();
        let buf = if needed <= SMALL_PACKET {
            &mut small[..]
        } else {
            large.resize(needed, 0);
            &mut large[..]
        };
        buf[offset..needed].copy_from_slice(payload);
        self.send_udp_in_place(buf, source, destination, payload.len());
    }

    /// Where [`send_udp_in_place`](Self::send_udp_in_place) wants the payload of a reply to
    /// `destination`: behind room for the IP and UDP headers and the TUN's framing.
    pub fn udp_payload_offset(destination: &SocketAddr) -> usize {
        FRAME_ROOM + tundns_packet::udp_headers_len(destination)
    }

    /// Writes the IP/UDP packet whose payload is already at
    /// `buf[udp_payload_offset(&destination)..][..payload_len]`: the headers are written
    /// in front of it, and the TUN's framing header (zeroed: nothing asked of the kernel)
    /// in front of those, so that the reply is built without a copy and sent in one plain
    /// write.
    pub fn send_udp_in_place(
        &self,
        buf: &mut [u8],
        source: SocketAddr,
        destination: SocketAddr,
        payload_len: usize,
    ) {
        let header = self.framing.header_len();
        // The framing's header sits right in front of the IP header.
        let start = FRAME_ROOM - header;
        match tundns_packet::write_udp_headers(
            &mut buf[FRAME_ROOM..],
            source,
            destination,
            payload_len,
        ) {
            Ok(len) => {
                buf[start..FRAME_ROOM].fill(0);
                if let Err(error) = self.device.send(&buf[start..FRAME_ROOM + len]) {
                    self.count_error(&error);
                }
            }
            Err(error) => {
                FilterStats::bump(&self.stats.reply_errors);
                tracing::debug!(?error, "could not build a UDP reply");
            }
        }
    }

    /// A writer of batches into the same device: one flow's consecutive packets leave as
    /// one super-packet, where a packet at a time would cost a write each.
    pub fn batch(&self) -> TunBatch {
        TunBatch::new(self.device.clone(), self.stats.clone())
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

/// Packets gathered for the TUN and written together, one flow's consecutive packets
/// coalesced into a super-packet, so the host's stack sees a few large packets rather than
/// many small ones.
pub struct TunBatch {
    device: Arc<SyncDevice>,
    coalescer: Coalescer,
    stats: Arc<FilterStats>,
}

impl TunBatch {
    fn new(device: Arc<SyncDevice>, stats: Arc<FilterStats>) -> Self {
        Self {
            device,
            coalescer: Coalescer::new(),
            stats,
        }
    }

    /// Adds `packet` to the batch; returns whether the batch is now full, and must be
    /// written before the next push.
    #[must_use]
    pub fn push(&mut self, packet: &[u8]) -> bool {
        self.coalescer.push(packet);
        self.coalescer.is_full()
    }

    /// Writes the batch and empties it. A batch tun-rs refuses is dropped and counted, so
    /// that one bad packet costs its batch only (and gotatun, which ends its writer on
    /// such errors, goes on); the device's own errors are returned.
    pub fn write(&mut self) -> io::Result<()> {
        match self.coalescer.write(&self.device) {
            Err(error) if !is_device_error(&error) => {
                FilterStats::bump(&self.stats.dropped_offload);
                tracing::debug!(%error, "dropped a batch for the TUN");
                Ok(())
            }
            result => result,
        }
    }

    /// Writes the batch as a service's reply: a failure is counted and logged, as
    /// [`TunWriter::send`]'s is.
    pub fn write_reply(&mut self) {
        if let Err(error) = self.write() {
            FilterStats::bump(&self.stats.reply_errors);
            tracing::debug!(%error, "could not write a batch into the TUN");
        }
    }
}

/// Packets after which one [`FilteredTun::recv`] stops reading: enough for gotatun to
/// send them in runs (`UDP_SEGMENT`) and with one lock of the device, few enough that the
/// first packet of a batch does not wait long for WireGuard. One read may give up to a
/// super-packet's worth of segments beyond it.
const RECV_BATCH: usize = 64;

/// gotatun's TUN reader: every outbound packet is classified; packets for a virtual IP go
/// to their service inline, everything else goes on to WireGuard.
///
/// gotatun runs the task that calls [`IpRecv::recv`] on the reader's own thread and
/// runtime (the `reader` module), where `recv` blocks in `read`. Once a read has given
/// packets for WireGuard, `recv` takes whatever else the TUN already holds, until
/// [`RECV_BATCH`] packets, without blocking again. A read gives one packet, or the segments
/// of one GSO super-packet, each classified on its own: a virtual IP is never reached
/// through an offloaded packet. Each read is classified against one load of the rule
/// table, so a rule changed at runtime applies from the next read on.
///
/// Services run inside the runtime [`FilteredTun::new`] was called in, so that what they
/// spawn (an upstream query) runs there, not on the reader's thread.
pub struct FilteredTun {
    device: Arc<SyncDevice>,
    rules: RulesReader,
    writer: TunWriter,
    mtu: MtuWatcher,
    stats: Arc<FilterStats>,
    reader: SegmentReader,
    /// The current batch's packets for WireGuard; kept between calls for its allocation.
    passed: Vec<Packet<Ip>>,
    services_runtime: Option<Handle>,
    thread: ReaderThread,
}

impl FilteredTun {
    /// Wraps `device`, which must be in blocking mode (as tun-rs builds a `SyncDevice`),
    /// whose MTU `mtu` follows, diverting by `rules`, and starts the reader's thread.
    pub fn new(
        device: Arc<SyncDevice>,
        rules: &Rules,
        mtu: MtuWatcher,
        stats: Arc<FilterStats>,
    ) -> io::Result<Self> {
        Ok(Self {
            writer: TunWriter::new(device.clone(), stats.clone()),
            device,
            rules: rules.reader(),
            mtu,
            stats,
            reader: SegmentReader::new(),
            passed: Vec::with_capacity(RECV_BATCH + TUN_MAX_SEGMENTS),
            services_runtime: Handle::try_current().ok(),
            thread: ReaderThread::spawn()?,
        })
    }

    /// Classifies one read: diverted packets go to their service, the others into
    /// `self.passed`.
    fn filter_read(&mut self, read: Read) {
        let count = match read {
            Read::Packets(count) => count,
            Read::Malformed => {
                FilterStats::bump(&self.stats.dropped_offload);
                return;
            }
        };
        let _services = self.services_runtime.as_ref().map(Handle::enter);
        let rules = self.rules.load();
        let mut diverted = 0;
        let mut malformed = 0;
        let mut passed = 0;
        for index in 0..count {
            let packet = self.reader.packet(index);
            if let Some(service) = rules.classify(packet) {
                diverted += 1;
                service.handle(packet, &self.writer);
                continue;
            }
            // A malformed packet must not end gotatun's reader task, so it is dropped here
            // rather than reported as an error.
            match self.reader.take(index).try_into_ip() {
                Ok(ip) => {
                    passed += 1;
                    self.passed.push(ip);
                }
                Err(_) => malformed += 1,
            }
        }
        FilterStats::add(&self.stats.diverted, diverted);
        FilterStats::add(&self.stats.dropped_malformed, malformed);
        FilterStats::add(&self.stats.passed, passed);
    }

    /// Reads on, without blocking, while the TUN holds packets and the batch has room: at
    /// most [`RECV_BATCH`] reads, so that a flood of packets for a service cannot hold a
    /// batch back, and none once interrupted.
    fn read_more(&mut self) {
        for _ in 0..RECV_BATCH {
            if self.passed.len() >= RECV_BATCH
                || self.thread.control().is_interrupted()
                || !readable_now(&self.device)
            {
                return;
            }
            match self.reader.read(&self.device) {
                Ok(read) => self.filter_read(read),
                // What the next blocking read meets again, if it persists.
                Err(_) => return,
            }
        }
    }
}

/// Whether a read from `device` would not block.
fn readable_now(device: &SyncDevice) -> bool {
    let mut poll = libc::pollfd {
        fd: device.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready == 1 && poll.revents & libc::POLLIN != 0
}

impl IpRecv for FilteredTun {
    async fn recv<'a>(
        &'a mut self,
        _pool: &mut PacketBufPool,
    ) -> io::Result<impl Iterator<Item = Packet<Ip>> + Send + 'a> {
        // The previous batch's iterator has been dropped, which emptied `passed`.
        while self.passed.is_empty() {
            let read = match self.thread.control().enter_read() {
                Some(_reading) => self.reader.read(&self.device),
                // Interrupted: the task awaiting this is being stopped.
                None => std::future::pending().await,
            };
            match read {
                Ok(read) => self.filter_read(read),
                // The interrupt's signal, or another: the task yields, so that an abort
                // lands, and reads again unless interrupted.
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {
                    tokio::task::yield_now().await;
                }
                // A read blocked when the interface is deleted ends with EFAULT (the
                // queue shut down); gotatun ends its task on ENODEV, as on the EBADFD the
                // next read would give, without logging a spurious error first.
                Err(error) if error.raw_os_error() == Some(libc::EFAULT) => {
                    return Err(io::Error::from_raw_os_error(libc::ENODEV));
                }
                Err(error) => return Err(error),
            }
        }
        self.read_more();
        Ok(self.passed.drain(..))
    }

    fn mtu(&self) -> MtuWatcher {
        self.mtu.clone()
    }

    fn runtime(&self) -> Option<Handle> {
        Some(self.thread.runtime().clone())
    }

    fn interrupter(&self) -> Option<Arc<dyn RecvInterrupter>> {
        Some(self.thread.control().clone())
    }
}

/// gotatun's TUN writer: decrypted packets from the tunnel go to the host, except those
/// that name a virtual IP.
///
/// gotatun hands over every packet waiting for the TUN at once ([`IpSend::send_many`]);
/// each is checked on its own, then one flow's consecutive packets are coalesced into a
/// super-packet, so the host's stack sees a few large packets rather than many small ones.
pub struct FilteredTunSender {
    rules: RulesReader,
    stats: Arc<FilterStats>,
    batch: TunBatch,
    tap: Option<Arc<dyn InboundTap>>,
}

/// Takes packets from the tunnel that belong to an in-process network stack (the
/// proxies' connections from the interface address) before they reach the TUN.
pub trait InboundTap: Send + Sync {
    /// Whether the tap took `packet`; a packet it leaves goes on to the TUN.
    fn take(&self, packet: &[u8]) -> bool;

    /// Called once the packets of a batch have been offered: a tap that gathers what it
    /// took acts on it here.
    fn flush(&self) {}
}

impl FilteredTunSender {
    /// Wraps `device`, dropping by `rules`.
    pub fn new(device: Arc<SyncDevice>, rules: &Rules, stats: Arc<FilterStats>) -> Self {
        Self {
            rules: rules.reader(),
            batch: TunBatch::new(device, stats.clone()),
            stats,
            tap: None,
        }
    }

    /// Lets `tap` take what it owns of the tunnel's packets, after the virtual-IP check.
    pub fn with_tap(mut self, tap: Arc<dyn InboundTap>) -> Self {
        self.tap = Some(tap);
        self
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
                if self
                    .tap
                    .as_ref()
                    .is_some_and(|tap| tap.take(packet.as_ref()))
                {
                    continue;
                }
                if self.batch.push(packet.as_ref()) {
                    break;
                }
            }
            let written = self.batch.write();
            if first_error.is_ok() {
                first_error = written;
            }
        }
        if let Some(tap) = &self.tap {
            tap.flush();
        }
        FilterStats::add(&self.stats.dropped_inbound_virtual, dropped);
        first_error
    }
}

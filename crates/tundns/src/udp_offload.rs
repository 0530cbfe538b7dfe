//! WireGuard's UDP socket with UDP generic segmentation offload (GSO) on send.
//!
//! [`GsoUdpFactory`] binds gotatun's own [`UdpSocket`] (binding, fwmark, dual-stack and GRO
//! on receive stay gotatun's) and sends each batch of encrypted packets as runs: consecutive
//! packets to one destination with one length (the last may be shorter) leave in a single
//! `sendmsg` with a `UDP_SEGMENT` control message, so the kernel walks its UDP/IP stack once
//! per run instead of once per packet. Everything else goes through gotatun's `sendmmsg`.
//!
//! A kernel or route that refuses segmentation before it ever worked switches the socket to
//! gotatun's path for good, with one log line.
//!
//! The socket's buffers are sized for a tunnel, not for a DNS client: the kernel's default
//! receive buffer (208 KiB) holds only a few GRO batches, and a burst beyond it is lost
//! whole, which TCP inside the tunnel pays for with retransmissions.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use gotatun::packet::Packet;
use gotatun::udp::socket::{UdpSocket, UdpSocketFactory};
use gotatun::udp::{UdpSend, UdpTransportFactory, UdpTransportFactoryParams};
use nix::sys::socket::{
    ControlMessage, MsgFlags, SockaddrStorage, getsockopt, sendmsg, setsockopt, sockopt,
};
use tokio::io::Interest;

/// The WireGuard socket's send and receive buffers, as wireguard-go sizes them.
const SOCKET_BUFFER: usize = 7 << 20;

/// The kernel's cap on segments per send (`UDP_MAX_SEGMENTS`; 128 only since Linux 6.9).
pub const UDP_MAX_SEGMENTS: usize = 64;

const UDP_HEADER_LEN: usize = 8;
const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;

/// gotatun's UDP transport, with batches sent through UDP GSO where the kernel takes it.
#[derive(Debug, Default)]
pub struct GsoUdpFactory {
    sockets: UdpSocketFactory,
}

impl UdpTransportFactory for GsoUdpFactory {
    type Send = GsoUdpSend;
    type Recv = UdpSocket;

    async fn bind(
        &mut self,
        params: &UdpTransportFactoryParams,
    ) -> io::Result<(Self::Send, Self::Recv)> {
        let (socket, receiver) = self.sockets.bind(params).await?;
        size_buffers(&socket);
        let segmentation = Segmentation::default();
        // Kernels before 4.18 have no UDP_SEGMENT and answer ENOPROTOOPT.
        if let Err(error) = getsockopt(&socket, sockopt::UdpGsoSegment) {
            segmentation.refuse(&io::Error::from(error));
        }
        let sender = GsoUdpSend {
            socket,
            segmentation: Arc::new(segmentation),
        };
        Ok((sender, receiver))
    }
}

/// The sending half of a [`GsoUdpFactory`] socket.
#[derive(Clone)]
pub struct GsoUdpSend {
    socket: UdpSocket,
    segmentation: Arc<Segmentation>,
}

impl GsoUdpSend {
    /// Whether batches still go out segmented; false once the kernel refused.
    pub fn segments(&self) -> bool {
        !self.segmentation.is_refused()
    }

    /// Sends `run` (one destination, all but the last of one length) as one segmented send.
    async fn send_segmented(&self, run: &[(Packet, SocketAddr)]) -> io::Result<()> {
        let (first, destination) = &run[0];
        let segment_size = u16::try_from(first.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment over 64 KiB"))?;
        let destination = SockaddrStorage::from(*destination);
        let mut payload = [IoSlice::new(&[]); UDP_MAX_SEGMENTS];
        for (slice, (packet, _)) in payload.iter_mut().zip(run) {
            *slice = IoSlice::new(packet);
        }
        let payload = &payload[..run.len()];
        let socket = self.socket.socket();
        socket
            .async_io(Interest::WRITABLE, || {
                sendmsg(
                    socket.as_raw_fd(),
                    payload,
                    &[ControlMessage::UdpGsoSegments(&segment_size)],
                    MsgFlags::MSG_DONTWAIT,
                    Some(&destination),
                )
                .map_err(io::Error::from)
            })
            .await?;
        Ok(())
    }

    /// Sends the front `count` packets of `packets` with gotatun's `sendmmsg`; on error they
    /// go back to the front (gotatun's leaves its whole group), so `packets` keeps its order.
    async fn send_unsegmented(
        &self,
        buf: &mut GsoSendBuf,
        packets: &mut Vec<(Packet, SocketAddr)>,
        count: usize,
    ) -> io::Result<()> {
        buf.unsegmented.clear();
        buf.unsegmented.extend(packets.drain(..count));
        let sent = self
            .socket
            .send_many_to(&mut buf.sendmmsg, &mut buf.unsegmented)
            .await;
        if sent.is_err() {
            packets.splice(..0, buf.unsegmented.drain(..));
        }
        sent
    }
}

/// The scratch space [`GsoUdpSend::send_many_to`] reuses between batches.
#[derive(Default)]
pub struct GsoSendBuf {
    sendmmsg: <UdpSocket as UdpSend>::SendManyBuf,
    unsegmented: Vec<(Packet, SocketAddr)>,
}

impl UdpSend for GsoUdpSend {
    type SendManyBuf = GsoSendBuf;

    async fn send_to(&self, packet: Packet, destination: SocketAddr) -> io::Result<()> {
        self.socket.send_to(packet, destination).await
    }

    fn max_number_of_packets_to_send(&self) -> usize {
        self.socket.max_number_of_packets_to_send()
    }

    /// Sends `packets` in order, as segmented runs and `sendmmsg` groups. As gotatun's
    /// contract allows, on error `packets` keeps, in order, every packet not known to be sent:
    /// none of a failed segmented run, all of a failed `sendmmsg` group.
    async fn send_many_to(
        &self,
        buf: &mut GsoSendBuf,
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) -> io::Result<()> {
        while !packets.is_empty() {
            if self.segmentation.is_refused() {
                let count = packets.len();
                return self.send_unsegmented(buf, packets, count).await;
            }
            let run = segment_run(packets);
            if run > 1 {
                match self.send_segmented(&packets[..run]).await {
                    Ok(()) => {
                        self.segmentation.worked();
                        packets.drain(..run);
                        continue;
                    }
                    // A segment over the route's MTU: sendmmsg may fragment what GSO may not.
                    Err(error) if error.raw_os_error() == Some(libc::EMSGSIZE) => {
                        tracing::debug!("UDP GSO run over the MTU ({error}); sent with sendmmsg")
                    }
                    Err(error) if is_refusal(&error) => self.segmentation.refuse(&error),
                    Err(error) => return Err(error),
                }
            }
            let count = run.max(unsegmented_prefix(packets));
            self.send_unsegmented(buf, packets, count).await?;
        }
        Ok(())
    }

    fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        UdpSend::local_addr(&self.socket)
    }

    fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        self.socket.set_fwmark(mark)
    }
}

impl AsFd for GsoUdpSend {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// Gives `socket` [`SOCKET_BUFFER`]-sized buffers: past `net.core.[rw]mem_max` where tundns
/// may (`CAP_NET_ADMIN`), else as far as that cap allows. A refusal costs speed, not the
/// tunnel, so it is only logged.
fn size_buffers(socket: &impl AsFd) {
    let receive = setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER)
        .or_else(|_| setsockopt(socket, sockopt::RcvBuf, &SOCKET_BUFFER));
    let send = setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER)
        .or_else(|_| setsockopt(socket, sockopt::SndBuf, &SOCKET_BUFFER));
    if let Err(error) = receive.and(send) {
        tracing::debug!("WireGuard's socket keeps smaller buffers: {error}");
    }
    // Without the capability the kernel caps the size silently; the kernel reports twice
    // what it grants.
    if let Ok(granted) = getsockopt(socket, sockopt::RcvBuf)
        && granted / 2 < SOCKET_BUFFER
    {
        tracing::info!(
            "WireGuard's socket receives into {} KiB, not {} KiB: net.core.rmem_max caps it without CAP_NET_ADMIN, and a fast tunnel loses bursts beyond it",
            granted / 2 / 1024,
            SOCKET_BUFFER / 1024
        );
    }
}

/// Whether a segmented send failed because segmentation itself was refused: no UDP_SEGMENT
/// (ENOPROTOOPT), no checksum offload or IPsec on the route (EIO), checksums turned off
/// (EINVAL; before Linux 6.14 also a segment over the route's MTU, since then EMSGSIZE).
fn is_refusal(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT)
    )
}

/// What one socket learnt about segmentation, shared by the clones of its sender.
#[derive(Default)]
struct Segmentation(AtomicU8);

const UNPROVEN: u8 = 0;
const WORKS: u8 = 1;
const REFUSED: u8 = 2;

impl Segmentation {
    fn is_refused(&self) -> bool {
        self.0.load(Ordering::Relaxed) == REFUSED
    }

    fn worked(&self) {
        if self.0.load(Ordering::Relaxed) == UNPROVEN {
            let _ = self
                .0
                .compare_exchange(UNPROVEN, WORKS, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// A refusal before any segmented send worked means this kernel or route never takes
    /// one: stop trying. After one worked, it is this run's (say, a larger segment).
    fn refuse(&self, error: &io::Error) {
        match self
            .0
            .compare_exchange(UNPROVEN, REFUSED, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => tracing::warn!(
                "UDP GSO refused ({error}); WireGuard sends with sendmmsg from now on"
            ),
            Err(_) => tracing::debug!("UDP GSO refused one run ({error}); sent with sendmmsg"),
        }
    }
}

/// How many packets from the front of `packets` one segmented send can carry: one
/// destination, one length (the last may be shorter, not empty), within the kernel's limits
/// on segments and on the bytes of one UDP datagram. 1 means: send the first alone.
fn segment_run<P: Deref<Target = [u8]>>(packets: &[(P, SocketAddr)]) -> usize {
    let Some((first, destination)) = packets.first() else {
        return 0;
    };
    let segment_size = first.len();
    let ip_header_len = match destination {
        SocketAddr::V4(_) => IPV4_HEADER_LEN,
        SocketAddr::V6(_) => IPV6_HEADER_LEN,
    };
    let max_bytes = usize::from(u16::MAX) - UDP_HEADER_LEN - ip_header_len;
    let mut bytes = 0;
    let mut count = 0;
    for (packet, to) in packets.iter().take(UDP_MAX_SEGMENTS) {
        let len = packet.len();
        if to != destination || len == 0 || len > segment_size || bytes + len > max_bytes {
            break;
        }
        bytes += len;
        count += 1;
        if len < segment_size {
            break;
        }
    }
    count.max(1)
}

/// How many packets from the front of `packets` start no segmentable run.
fn unsegmented_prefix<P: Deref<Target = [u8]>>(packets: &[(P, SocketAddr)]) -> usize {
    (0..packets.len())
        .find(|&start| segment_run(&packets[start..]) > 1)
        .unwrap_or(packets.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "192.0.2.1:51820";
    const B: &str = "192.0.2.2:51820";
    const V6: &str = "[2001:db8::1]:51820";

    fn batch(packets: &[(usize, &str)]) -> Vec<(Vec<u8>, SocketAddr)> {
        packets
            .iter()
            .map(|&(len, to)| (vec![0; len], to.parse().unwrap()))
            .collect()
    }

    #[test]
    fn a_run_is_one_destination_and_one_length_with_a_shorter_tail() {
        assert_eq!(segment_run(&batch(&[(100, A); 5])), 5);
        assert_eq!(
            segment_run(&batch(&[(100, A), (100, A), (40, A), (40, A)])),
            3
        );
        assert_eq!(segment_run(&batch(&[(100, A), (100, A), (120, A)])), 2);
        assert_eq!(segment_run(&batch(&[(100, A), (100, A), (100, B)])), 2);
        assert_eq!(segment_run(&batch(&[(100, A), (0, A)])), 1);
        assert_eq!(segment_run(&batch(&[(0, A), (0, A)])), 1);
        assert_eq!(segment_run(&batch(&[(100, A)])), 1);
        assert_eq!(segment_run(&batch(&[])), 0);
    }

    #[test]
    fn a_run_stays_within_the_kernels_limits() {
        assert_eq!(segment_run(&batch(&[(100, A); 100])), UDP_MAX_SEGMENTS);
        // 65535 - 8 - 20 = 65507 bytes: 46 packets of 1400 and a tail of up to 1107.
        assert_eq!(segment_run(&batch(&[(1400, A); 60])), 46);
        let with_tail = |len, to| {
            let mut packets = batch(&[(1400, to); 46]);
            packets.extend(batch(&[(len, to)]));
            segment_run(&packets)
        };
        assert_eq!(with_tail(1107, A), 47);
        assert_eq!(with_tail(1108, A), 46);
        // 65535 - 8 - 40 = 65487 bytes: the IPv6 header leaves 20 bytes less.
        assert_eq!(with_tail(1087, V6), 47);
        assert_eq!(with_tail(1088, V6), 46);
    }

    #[test]
    fn the_unsegmented_prefix_ends_where_a_run_starts() {
        assert_eq!(
            unsegmented_prefix(&batch(&[(10, A), (20, A), (30, B), (30, B)])),
            2
        );
        assert_eq!(unsegmented_prefix(&batch(&[(10, A), (10, B), (10, A)])), 3);
        assert_eq!(unsegmented_prefix(&batch(&[(10, A), (10, A)])), 0);
    }
}

//! The rule table: which virtual IP belongs to which service.
//!
//! Readers see an immutable [`RuleTable`] snapshot through `arc-swap`, so the TUN reader
//! classifies without a lock; writers (any thread, any time) copy the table, change the copy
//! and publish it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Cache};
use tundns_packet::{ipv4, ipv6};

use crate::Service;

/// One immutable snapshot of the virtual IPs and their services.
///
/// Each address family keeps a 64-bit filter inline in the table: a miss reads two bytes of
/// the packet and two words of the table, and touches no other cache line and no reference
/// count. Only a packet the filters cannot rule out is compared with the addresses
/// themselves.
#[derive(Clone, Default)]
pub struct RuleTable {
    v4: AddressSet<u32>,
    v6: AddressSet<u128>,
}

/// An address as the rule table stores it: the destination bytes of a packet read in
/// native order.
trait AddressKey: Copy + PartialEq {
    /// The address's last byte, which the filter is indexed by.
    fn last_byte(self) -> u8;
}

impl AddressKey for u32 {
    #[inline(always)]
    fn last_byte(self) -> u8 {
        self.to_ne_bytes()[3]
    }
}

impl AddressKey for u128 {
    #[inline(always)]
    fn last_byte(self) -> u8 {
        self.to_ne_bytes()[15]
    }
}

/// The addresses of one family and their services.
#[derive(Clone, Default)]
struct AddressSet<K> {
    /// Bit `b % 64` is set for each address whose last byte is `b`.
    ///
    /// The last byte is where the hosts of one subnet differ, so the virtual IP's
    /// neighbours are ruled out by one shift, however many addresses the table holds. Any
    /// other destination has, per address, a 1 in 64 chance of being compared with the
    /// addresses instead, which costs time and nothing else.
    filter: u64,
    keys: Vec<K>,
    /// `services[i]` serves `keys[i]`.
    services: Vec<Arc<dyn Service>>,
}

impl<K: AddressKey> AddressSet<K> {
    /// The index of `key` in `keys`.
    #[inline(always)]
    fn position(&self, key: K) -> Option<usize> {
        if !self.may_contain(key.last_byte()) {
            return None;
        }
        self.keys.iter().position(|&k| k == key)
    }

    /// False when no address ends in `last_byte`.
    #[inline(always)]
    fn may_contain(&self, last_byte: u8) -> bool {
        self.filter >> (last_byte % 64) & 1 != 0
    }

    fn service(&self, key: K) -> Option<&Arc<dyn Service>> {
        self.services.get(self.position(key)?)
    }

    fn upsert(&mut self, key: K, service: Arc<dyn Service>) -> Option<Arc<dyn Service>> {
        if let Some(index) = self.position(key) {
            return Some(std::mem::replace(&mut self.services[index], service));
        }
        self.keys.push(key);
        self.services.push(service);
        self.filter |= filter_bit(key);
        None
    }

    fn remove(&mut self, key: K) -> Option<Arc<dyn Service>> {
        let index = self.position(key)?;
        self.keys.remove(index);
        let service = self.services.remove(index);
        self.filter = self
            .keys
            .iter()
            .fold(0, |filter, &key| filter | filter_bit(key));
        Some(service)
    }
}

/// The bit of [`AddressSet::filter`] that stands for `key`.
fn filter_bit(key: impl AddressKey) -> u64 {
    1 << (key.last_byte() % 64)
}

/// Offset of the destination address's last byte in an IPv4 header.
const IPV4_DESTINATION_LAST: usize = ipv4::field::DST_ADDR.end - 1;
/// Offset of the destination address's last byte in an IPv6 header.
const IPV6_DESTINATION_LAST: usize = ipv6::field::DST_ADDR.end - 1;

impl RuleTable {
    /// The service that owns the destination of this outbound packet, if any.
    ///
    /// Anything too short to hold a destination, or not IPv4 or IPv6, is a miss, and
    /// gotatun drops it.
    ///
    /// A packet of 40 bytes or more is ruled out without reading its version: byte 19 goes
    /// through the IPv4 filter, byte 39 through the IPv6 one, and the packet is a miss when
    /// both say so. That is a length check, two shifts and one branch; each way of looking
    /// at the version first that was tried cost 0.06 to 0.4 ns more per packet. In the
    /// packet's own family the byte is the destination's last; in the other it is whatever
    /// lies there, which can only send the packet to the exact lookup for nothing (about
    /// 2.5 ns more, `miss_v4_filter_collision` in the bench). For an IPv4 TCP packet
    /// byte 39 is the urgent pointer's low byte, nearly always 0, and for an IPv6 packet
    /// byte 19 is the source address's twelfth: a virtual IPv6 address ending in 0x00,
    /// 0x40, 0x80 or 0xc0 sends all IPv4 TCP that way, and a virtual IPv4 address whose
    /// last byte matches this host's IPv6 source there (modulo 64) all IPv6 traffic.
    #[inline]
    pub fn classify(&self, packet: &[u8]) -> Option<&Arc<dyn Service>> {
        if let Some(header) = packet.first_chunk::<{ IPV6_DESTINATION_LAST + 1 }>() {
            let v4 = self.v4.filter >> (header[IPV4_DESTINATION_LAST] % 64);
            let v6 = self.v6.filter >> (header[IPV6_DESTINATION_LAST] % 64);
            if (v4 | v6) & 1 == 0 {
                return None;
            }
        }
        self.classify_exactly(packet)
    }

    /// The exact lookup, for packets the filters let through and for those too short for
    /// them (IPv4 packets under 40 bytes).
    ///
    /// Out of line and cold so that the miss path around it stays a few instructions with
    /// its registers to itself: `miss_v4_opaque_each` measured 1.02 ns per packet this way
    /// and 1.12 ns with this inlined. A packet that gets here is usually on its way to a
    /// service, which costs far more than the call.
    #[cold]
    #[inline(never)]
    fn classify_exactly(&self, packet: &[u8]) -> Option<&Arc<dyn Service>> {
        match packet.first()? >> 4 {
            4 => self.v4.service(read_v4(packet, ipv4::field::DST_ADDR)?),
            6 => self.v6.service(read_v6(packet, ipv6::field::DST_ADDR)?),
            _ => None,
        }
    }

    /// True when an inbound packet (decrypted from the tunnel) names a virtual IP as its
    /// source or its destination. Such packets are dropped: a peer must neither spoof a
    /// service nor reach one, because the services serve this host only.
    #[inline]
    pub fn touches_virtual_ip(&self, packet: &[u8]) -> bool {
        match packet.first().map(|b| b >> 4) {
            Some(4) => {
                let (Some(src), Some(dst)) = (
                    read_v4(packet, ipv4::field::SRC_ADDR),
                    read_v4(packet, ipv4::field::DST_ADDR),
                ) else {
                    return false;
                };
                self.v4.position(src).is_some() || self.v4.position(dst).is_some()
            }
            Some(6) => {
                let (Some(src), Some(dst)) = (
                    read_v6(packet, ipv6::field::SRC_ADDR),
                    read_v6(packet, ipv6::field::DST_ADDR),
                ) else {
                    return false;
                };
                self.v6.position(src).is_some() || self.v6.position(dst).is_some()
            }
            _ => false,
        }
    }

    /// The service registered on `ip`.
    pub fn get(&self, ip: IpAddr) -> Option<&Arc<dyn Service>> {
        match ip {
            IpAddr::V4(ip) => self.v4.service(ipv4_key(ip)),
            IpAddr::V6(ip) => self.v6.service(ipv6_key(ip)),
        }
    }

    /// Every virtual IP in the table.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let v4 = self
            .v4
            .keys
            .iter()
            .map(|ip| IpAddr::V4(Ipv4Addr::from(ip.to_ne_bytes())));
        let v6 = self
            .v6
            .keys
            .iter()
            .map(|ip| IpAddr::V6(Ipv6Addr::from(ip.to_ne_bytes())));
        v4.chain(v6)
    }

    /// Number of virtual IPs.
    pub fn len(&self) -> usize {
        self.v4.keys.len() + self.v6.keys.len()
    }

    /// True when no virtual IP is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&mut self, ip: IpAddr, service: Arc<dyn Service>) -> Option<Arc<dyn Service>> {
        match ip {
            IpAddr::V4(ip) => self.v4.upsert(ipv4_key(ip), service),
            IpAddr::V6(ip) => self.v6.upsert(ipv6_key(ip), service),
        }
    }

    fn remove(&mut self, ip: IpAddr) -> Option<Arc<dyn Service>> {
        match ip {
            IpAddr::V4(ip) => self.v4.remove(ipv4_key(ip)),
            IpAddr::V6(ip) => self.v6.remove(ipv6_key(ip)),
        }
    }
}

/// Addresses are compared as the raw bytes of the packet reinterpreted in native order,
/// which saves a byte swap per packet; the keys are stored the same way.
fn ipv4_key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn ipv6_key(ip: Ipv6Addr) -> u128 {
    u128::from_ne_bytes(ip.octets())
}

/// The IPv4 address at `field` of `packet` as a key; `None` if the packet ends before it.
#[inline(always)]
fn read_v4(packet: &[u8], field: Range<usize>) -> Option<u32> {
    Some(u32::from_ne_bytes(packet.get(field)?.try_into().ok()?))
}

/// The IPv6 address at `field` of `packet` as a key; `None` if the packet ends before it.
#[inline(always)]
fn read_v6(packet: &[u8], field: Range<usize>) -> Option<u128> {
    Some(u128::from_ne_bytes(packet.get(field)?.try_into().ok()?))
}

/// The live, shared rule table. Cheap to clone; every clone sees every change.
#[derive(Clone, Default)]
pub struct Rules {
    current: Arc<ArcSwap<RuleTable>>,
    /// Serialises writers so that two concurrent edits never lose one another.
    writer: Arc<Mutex<()>>,
}

impl Rules {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `service` on `ip`, returning the service it replaced.
    pub fn insert(&self, ip: IpAddr, service: Arc<dyn Service>) -> Option<Arc<dyn Service>> {
        self.update(|table| table.insert(ip, service))
    }

    /// Unregisters `ip`, returning its service.
    pub fn remove(&self, ip: IpAddr) -> Option<Arc<dyn Service>> {
        self.update(|table| table.remove(ip))
    }

    /// The table as it is now.
    pub fn snapshot(&self) -> Arc<RuleTable> {
        self.current.load_full()
    }

    /// A per-task reader that sees changes with one atomic load per [`RulesReader::load`]
    /// and no reference-count traffic.
    pub fn reader(&self) -> RulesReader {
        RulesReader {
            cache: Cache::new(self.current.clone()),
        }
    }

    fn update<R>(&self, edit: impl FnOnce(&mut RuleTable) -> R) -> R {
        let _guard = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut table = RuleTable::clone(&self.current.load());
        let result = edit(&mut table);
        self.current.store(Arc::new(table));
        result
    }
}

/// A cached view of [`Rules`] for one reader.
pub struct RulesReader {
    cache: Cache<Arc<ArcSwap<RuleTable>>, Arc<RuleTable>>,
}

impl RulesReader {
    /// The current table. A change made since the previous call is seen now.
    #[inline]
    pub fn load(&mut self) -> &RuleTable {
        self.cache.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TunWriter;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use tundns_test_support::packet::udp;

    struct Named(&'static str);
    impl Service for Named {
        fn handle(&self, _packet: &[u8], _tun: &TunWriter) {}
        fn name(&self) -> &str {
            self.0
        }
    }

    /// Long enough that IPv4 packets, too, take the filters' path.
    const PAYLOAD: &[u8] = b"a payload of some thirty bytes..";

    fn v4_packet(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        udp(src, dst, 1000, 53, PAYLOAD)
    }

    fn v6_packet(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        udp(src, dst, 1000, 53, PAYLOAD)
    }

    const DNS_V4: Ipv4Addr = Ipv4Addr::new(10, 30, 30, 30);
    const DNS_V6: Ipv6Addr = Ipv6Addr::new(0xfd30, 0x30, 0x30, 0, 0, 0, 0, 0x30);
    const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
    const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 2);

    fn rules_with_dns() -> Rules {
        let rules = Rules::new();
        rules.insert(DNS_V4.into(), Arc::new(Named("dns")));
        rules.insert(DNS_V6.into(), Arc::new(Named("dns6")));
        rules
    }

    #[test]
    fn classifies_by_destination_v4_and_v6() {
        let table = rules_with_dns().snapshot();
        let hit = table.classify(&v4_packet(CLIENT_V4, DNS_V4)).unwrap();
        assert_eq!(hit.name(), "dns");
        let hit6 = table.classify(&v6_packet(CLIENT_V6, DNS_V6)).unwrap();
        assert_eq!(hit6.name(), "dns6");
        assert!(table.classify(&v4_packet(DNS_V4, CLIENT_V4)).is_none());
        assert!(table.classify(&v6_packet(DNS_V6, CLIENT_V6)).is_none());
        assert!(
            table
                .classify(&v4_packet(CLIENT_V4, Ipv4Addr::new(10, 30, 30, 31)))
                .is_none()
        );
    }

    #[test]
    fn short_or_foreign_packets_are_misses() {
        let table = rules_with_dns().snapshot();
        let full = v4_packet(CLIENT_V4, DNS_V4);
        for len in 0..ipv4::HEADER_LEN {
            assert!(table.classify(&full[..len]).is_none(), "len {len}");
        }
        let full6 = v6_packet(CLIENT_V6, DNS_V6);
        for len in 0..ipv6::HEADER_LEN {
            assert!(table.classify(&full6[..len]).is_none(), "len {len}");
        }
        let mut wrong_version = full.clone();
        wrong_version[ipv4::field::VER_IHL] = 0x55;
        assert!(table.classify(&wrong_version).is_none());
    }

    #[test]
    fn ipv4_packets_shorter_than_an_ipv6_header_are_classified() {
        let table = rules_with_dns().snapshot();
        let mut bare = v4_packet(CLIENT_V4, DNS_V4);
        bare.truncate(tundns_packet::IPV4_UDP_HEADERS);
        assert_eq!(table.classify(&bare).unwrap().name(), "dns");
        bare[ipv4::field::DST_ADDR].copy_from_slice(&CLIENT_V4.octets());
        assert!(table.classify(&bare).is_none());
    }

    #[test]
    fn destinations_that_pass_the_filter_are_compared_exactly() {
        let table = rules_with_dns().snapshot();
        // Same last byte modulo 64 as a virtual IP: the filter lets these through.
        let neighbour_v4 = Ipv4Addr::new(10, 30, 30, 30 + 64);
        assert!(
            table
                .classify(&v4_packet(CLIENT_V4, neighbour_v4))
                .is_none()
        );
        let neighbour_v6 = Ipv6Addr::new(0xfd30, 0x30, 0x30, 0, 0, 0, 0, 0x30 + 64);
        assert!(
            table
                .classify(&v6_packet(CLIENT_V6, neighbour_v6))
                .is_none()
        );

        // Byte 39 of an IPv4 packet, or byte 19 of an IPv6 one, matching the other
        // family's filter.
        let mut v4 = v4_packet(CLIENT_V4, Ipv4Addr::new(10, 99, 0, 1));
        v4[IPV6_DESTINATION_LAST] = DNS_V6.octets()[15];
        assert!(table.classify(&v4).is_none());
        let mut source = CLIENT_V6.octets();
        source[IPV4_DESTINATION_LAST - ipv6::field::SRC_ADDR.start] = DNS_V4.octets()[3];
        let v6 = v6_packet(
            Ipv6Addr::from(source),
            Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 1),
        );
        assert!(table.classify(&v6).is_none());
    }

    #[test]
    fn inbound_packets_naming_a_virtual_ip_are_flagged() {
        let table = rules_with_dns().snapshot();
        assert!(table.touches_virtual_ip(&v4_packet(DNS_V4, CLIENT_V4)));
        assert!(table.touches_virtual_ip(&v4_packet(CLIENT_V4, DNS_V4)));
        assert!(table.touches_virtual_ip(&v6_packet(DNS_V6, CLIENT_V6)));
        assert!(!table.touches_virtual_ip(&v4_packet(Ipv4Addr::new(10, 99, 0, 1), CLIENT_V4)));
        assert!(!table.touches_virtual_ip(&v6_packet(CLIENT_V6, CLIENT_V6)));
        assert!(!table.touches_virtual_ip(&[]));
    }

    #[test]
    fn rules_change_at_runtime_and_readers_see_it() {
        let rules = Rules::new();
        let mut reader = rules.reader();
        let packet = v4_packet(CLIENT_V4, DNS_V4);
        assert!(reader.load().classify(&packet).is_none());

        rules.insert(DNS_V4.into(), Arc::new(Named("first")));
        assert_eq!(reader.load().classify(&packet).unwrap().name(), "first");

        let old = rules.insert(DNS_V4.into(), Arc::new(Named("second")));
        assert_eq!(old.unwrap().name(), "first");
        assert_eq!(reader.load().classify(&packet).unwrap().name(), "second");
        assert_eq!(reader.load().len(), 1);

        assert_eq!(rules.remove(DNS_V4.into()).unwrap().name(), "second");
        assert!(reader.load().classify(&packet).is_none());
        assert!(rules.remove(DNS_V4.into()).is_none());
    }

    #[test]
    fn many_addresses_keep_their_services_through_removals() {
        let rules = Rules::new();
        let names: Vec<&'static str> = (0..20).map(|i| &*format!("s{i}").leak()).collect();
        for (i, name) in names.iter().enumerate() {
            rules.insert(
                Ipv4Addr::new(10, 30, 30, i as u8).into(),
                Arc::new(Named(name)),
            );
        }
        for i in [0usize, 7, 8, 19, 3] {
            assert_eq!(
                rules
                    .remove(Ipv4Addr::new(10, 30, 30, i as u8).into())
                    .unwrap()
                    .name(),
                names[i]
            );
        }
        let table = rules.snapshot();
        assert_eq!(table.len(), 15);
        for (i, name) in names.iter().enumerate() {
            let packet = v4_packet(CLIENT_V4, Ipv4Addr::new(10, 30, 30, i as u8));
            match table.classify(&packet) {
                Some(service) => assert_eq!(service.name(), *name),
                None => assert!([0, 7, 8, 19, 3].contains(&i), "lost {i}"),
            }
        }
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let rules = Rules::new();
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let rules = rules.clone();
                std::thread::spawn(move || {
                    for i in 0..50u8 {
                        rules.insert(Ipv4Addr::new(10, 30, t, i).into(), Arc::new(Named("x")));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(rules.snapshot().len(), 400);
        let listed: std::collections::HashSet<_> = rules.snapshot().addresses().collect();
        assert!(listed.contains(&IpAddr::V4(Ipv4Addr::new(10, 30, 7, 49))));
    }

    /// What `classify` must answer, without the filter.
    fn classify_by_scan<'t>(table: &'t RuleTable, packet: &[u8]) -> Option<&'t Arc<dyn Service>> {
        let destination = match packet.first()? >> 4 {
            4 => IpAddr::V4(Ipv4Addr::from(
                <[u8; 4]>::try_from(packet.get(ipv4::field::DST_ADDR)?).ok()?,
            )),
            6 => IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(packet.get(ipv6::field::DST_ADDR)?).ok()?,
            )),
            _ => return None,
        };
        table.get(destination)
    }

    proptest::proptest! {
        #[test]
        fn classify_agrees_with_a_scan_of_the_addresses(
            virtual_ends in proptest::collection::vec(proptest::num::u8::ANY, 0..12),
            pick in 0usize..16,
            other_end in proptest::num::u8::ANY,
            other_family_byte in proptest::num::u8::ANY,
            len in ipv4::HEADER_LEN..=80,
            ipv6 in proptest::bool::ANY,
        ) {
            let rules = Rules::new();
            for (i, &end) in virtual_ends.iter().enumerate() {
                let name: &'static str = format!("s{i}").leak();
                rules.insert(Ipv4Addr::new(10, 30, 30, end).into(), Arc::new(Named(name)));
                let v6 = Ipv6Addr::new(0xfd30, 0x30, 0x30, 0, 0, 0, 0, u16::from(end));
                rules.insert(v6.into(), Arc::new(Named(name)));
            }
            let table = rules.snapshot();
            // A virtual IP's last byte for most picks, else any byte.
            let end = virtual_ends.get(pick).copied().unwrap_or(other_end);
            let mut packet = if ipv6 {
                let destination = Ipv6Addr::new(0xfd30, 0x30, 0x30, 0, 0, 0, 0, u16::from(end));
                let mut packet = v6_packet(CLIENT_V6, destination);
                packet[IPV4_DESTINATION_LAST] = other_family_byte;
                packet
            } else {
                let mut packet = v4_packet(CLIENT_V4, Ipv4Addr::new(10, 30, 30, end));
                packet[IPV6_DESTINATION_LAST] = other_family_byte;
                packet
            };
            packet.truncate(len);
            let expected = classify_by_scan(&table, &packet).map(|service| service.name());
            let classified = table.classify(&packet).map(|service| service.name());
            proptest::prop_assert_eq!(classified, expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let table = rules_with_dns().snapshot();
            let _ = table.classify(&bytes);
            let _ = table.touches_virtual_ip(&bytes);
        }
    }
}

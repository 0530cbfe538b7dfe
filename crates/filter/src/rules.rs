//! The rule table: which virtual IP belongs to which service.
//!
//! Readers see an immutable [`RuleTable`] snapshot through `arc-swap`, so the TUN reader
//! classifies without a lock; writers (any thread, any time) copy the table, change the copy
//! and publish it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Cache};

use crate::Service;

/// One immutable snapshot of the virtual IPs and their services.
///
/// Addresses are kept apart from the services, as plain integers in packet byte order, in
/// arrays stored inside the table itself: a miss compares a few words that sit next to the
/// table's header and touches no other cache line and no reference count.
#[derive(Clone, Default)]
pub struct RuleTable {
    v4: AddressSet<u32>,
    v6: AddressSet<u128>,
}

/// Inline capacity per address family; more addresses spill into a vector.
const INLINE_ADDRESSES: usize = 8;

#[derive(Clone, Default)]
struct AddressSet<K> {
    inline: [K; INLINE_ADDRESSES],
    inline_len: usize,
    spilled: Vec<K>,
    /// Services in the order of `inline` then `spilled`.
    services: Vec<Arc<dyn Service>>,
}

impl<K: Copy + Default + PartialEq> AddressSet<K> {
    #[inline(always)]
    fn position(&self, key: K) -> Option<usize> {
        let inline = &self.inline[..self.inline_len.min(INLINE_ADDRESSES)];
        if let Some(index) = inline.iter().position(|&k| k == key) {
            return Some(index);
        }
        if self.spilled.is_empty() {
            return None;
        }
        let index = self.spilled.iter().position(|&k| k == key)?;
        Some(INLINE_ADDRESSES + index)
    }

    fn keys(&self) -> impl Iterator<Item = K> + '_ {
        self.inline[..self.inline_len]
            .iter()
            .chain(&self.spilled)
            .copied()
    }

    fn len(&self) -> usize {
        self.inline_len + self.spilled.len()
    }

    fn service(&self, key: K) -> Option<&Arc<dyn Service>> {
        self.services.get(self.position(key)?)
    }

    fn upsert(&mut self, key: K, service: Arc<dyn Service>) -> Option<Arc<dyn Service>> {
        if let Some(index) = self.position(key) {
            return Some(std::mem::replace(&mut self.services[index], service));
        }
        if self.inline_len < INLINE_ADDRESSES {
            self.inline[self.inline_len] = key;
            self.services.insert(self.inline_len, service);
            self.inline_len += 1;
        } else {
            self.spilled.push(key);
            self.services.push(service);
        }
        None
    }

    fn remove(&mut self, key: K) -> Option<Arc<dyn Service>> {
        let index = self.position(key)?;
        let service = self.services.remove(index);
        let mut keys: Vec<K> = self.keys().collect();
        keys.remove(index);
        let services = std::mem::take(&mut self.services);
        *self = Self::default();
        for (key, service) in keys.into_iter().zip(services) {
            self.upsert(key, service);
        }
        Some(service)
    }
}

impl RuleTable {
    /// The service that owns the destination of this outbound packet, if any.
    ///
    /// Reads only the version nibble and the destination address; anything too short to
    /// hold them is a miss, and gotatun drops it.
    #[inline]
    pub fn classify(&self, packet: &[u8]) -> Option<&Arc<dyn Service>> {
        match packet.first()? >> 4 {
            4 => self.v4.service(read_v4(packet, 16)?),
            6 => self.v6.service(read_v6(packet, 24)?),
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
                let (Some(src), Some(dst)) = (read_v4(packet, 12), read_v4(packet, 16)) else {
                    return false;
                };
                self.v4.position(src).is_some() || self.v4.position(dst).is_some()
            }
            Some(6) => {
                let (Some(src), Some(dst)) = (read_v6(packet, 8), read_v6(packet, 24)) else {
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
            .keys()
            .map(|ip| IpAddr::V4(Ipv4Addr::from(ip.to_ne_bytes())));
        let v6 = self
            .v6
            .keys()
            .map(|ip| IpAddr::V6(Ipv6Addr::from(ip.to_ne_bytes())));
        v4.chain(v6)
    }

    /// Number of virtual IPs.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
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

#[inline(always)]
fn read_v4(packet: &[u8], offset: usize) -> Option<u32> {
    let bytes = packet.get(offset..offset + 4)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

#[inline(always)]
fn read_v6(packet: &[u8], offset: usize) -> Option<u128> {
    let bytes = packet.get(offset..offset + 16)?;
    Some(u128::from_ne_bytes(bytes.try_into().ok()?))
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

    /// A per-task reader that sees changes with one atomic load per packet and no
    /// reference-count traffic.
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
    /// The current table.
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

    struct Named(&'static str);
    impl Service for Named {
        fn handle(&self, _packet: &[u8], _tun: &TunWriter) {}
        fn name(&self) -> &str {
            self.0
        }
    }

    fn v4_packet(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let builder = etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 64).udp(1000, 53);
        let mut out = Vec::new();
        builder.write(&mut out, b"payload").unwrap();
        out
    }

    fn v6_packet(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        let builder = etherparse::PacketBuilder::ipv6(src.octets(), dst.octets(), 64).udp(1000, 53);
        let mut out = Vec::new();
        builder.write(&mut out, b"payload").unwrap();
        out
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
        for len in 0..20 {
            assert!(table.classify(&full[..len]).is_none(), "len {len}");
        }
        let full6 = v6_packet(CLIENT_V6, DNS_V6);
        for len in 0..40 {
            assert!(table.classify(&full6[..len]).is_none(), "len {len}");
        }
        let mut wrong_version = full.clone();
        wrong_version[0] = 0x55;
        assert!(table.classify(&wrong_version).is_none());
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

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let table = rules_with_dns().snapshot();
            let _ = table.classify(&bytes);
            let _ = table.touches_virtual_ip(&bytes);
        }
    }
}

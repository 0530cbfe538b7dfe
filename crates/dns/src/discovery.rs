//! What tundns tells clients about itself through DNS.
//!
//! - Discovery of Designated Resolvers (DDR, RFC 9462): `_dns.resolver.arpa` SVCB records
//!   name the encrypted endpoints (RFC 9461 SvcParams: `alpn`, `port`, the address hints,
//!   and `dohpath` for DoH), so that a client that knows only the plain resolver's address
//!   can upgrade to DoT or DoH. The virtual IPs are private addresses, so clients may use
//!   them opportunistically (RFC 9462 §4.2) with the self-signed identity.
//! - Firefox's canary domain (`use-application-dns.net`): answered NXDOMAIN, Firefox keeps
//!   to the system resolver instead of switching to its own DoH, which would bypass tundns.
//!
//! Both are local data: answered in place, like any `Record`.

use std::net::IpAddr;

use crate::local::LocalDataBuilder;
use crate::names::{RecordError, Wildcard, parse_name};
use crate::synth::{TYPE_A, TYPE_AAAA};

/// The special-use domain of DDR, never forwarded.
pub const RESOLVER_ARPA: &str = "resolver.arpa";
/// The name DDR clients ask for, SVCB (RFC 9462 §4).
pub const DESIGNATED_RESOLVER_NAME: &str = "_dns.resolver.arpa";
/// Firefox's canary domain: NXDOMAIN turns its own DoH off.
pub const CANARY_DOMAIN: &str = "use-application-dns.net";
/// The SVCB TargetName of the designations, and a name of the self-signed identity.
pub const RESOLVER_NAME: &str = "dns.tundns.internal";

const TYPE_SVCB: u16 = 64;
/// How long clients may keep the designations.
const DESIGNATION_TTL: u32 = 300;

const KEY_ALPN: u16 = 1;
const KEY_PORT: u16 = 3;
const KEY_IPV4HINT: u16 = 4;
const KEY_IPV6HINT: u16 = 6;
const KEY_DOHPATH: u16 = 7;

/// One encrypted endpoint, as DDR designates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncryptedEndpoint {
    /// DNS over TLS on `port`: ALPN `dot`.
    Tls { port: u16 },
    /// DNS over HTTPS on `port` at `path`: ALPN `h2`, and `dohpath` `path{?dns}`.
    Https { port: u16, path: String },
    /// DNS over QUIC on UDP `port`: ALPN `doq` (RFC 9250 §4.1.1).
    Quic { port: u16 },
}

impl LocalDataBuilder {
    /// Designates `endpoints`, served on `addresses`, for `_dns.resolver.arpa`: one SVCB
    /// record each, in the order given (its SvcPriority), and the target name's addresses,
    /// so that a client that looks the target up finds them here.
    pub fn add_designated_resolvers(
        &mut self,
        endpoints: &[EncryptedEndpoint],
        addresses: &[IpAddr],
    ) -> Result<(), RecordError> {
        let owner = parse_name(DESIGNATED_RESOLVER_NAME, Wildcard::Forbidden)?;
        let target = parse_name(RESOLVER_NAME, Wildcard::Forbidden)?;
        for (index, endpoint) in endpoints.iter().enumerate() {
            let priority = u16::try_from(index + 1)
                .map_err(|_| RecordError("too many designated resolvers".into()))?;
            let rdata = svcb_rdata(priority, &target, endpoint, addresses);
            self.insert_record(owner.clone(), TYPE_SVCB, DESIGNATION_TTL, rdata)?;
        }
        for address in addresses {
            let (rtype, rdata) = match address {
                IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
                IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
            };
            self.insert_record(target.clone(), rtype, DESIGNATION_TTL, rdata)?;
        }
        Ok(())
    }

    /// Answers `resolver.arpa` (RFC 9462 §6.4) from local data alone: another resolver's
    /// designations say nothing about this one, so its names are never forwarded.
    pub fn add_resolver_arpa(&mut self) -> Result<(), RecordError> {
        self.add_local_zone(RESOLVER_ARPA)
    }

    /// Answers Firefox's canary domain NXDOMAIN, unless a record gives it data.
    pub fn add_canary(&mut self) -> Result<(), RecordError> {
        self.add_nonexistent(CANARY_DOMAIN)
    }
}

/// SVCB RDATA (RFC 9460 §2.2): priority, target, then the SvcParams in ascending key order.
fn svcb_rdata(
    priority: u16,
    target: &[u8],
    endpoint: &EncryptedEndpoint,
    addresses: &[IpAddr],
) -> Vec<u8> {
    let mut rdata = priority.to_be_bytes().to_vec();
    rdata.extend_from_slice(target);
    let (alpn, port, doh_path): (&[u8], u16, Option<String>) = match endpoint {
        EncryptedEndpoint::Tls { port } => (b"dot", *port, None),
        EncryptedEndpoint::Https { port, path } => (b"h2", *port, Some(format!("{path}{{?dns}}"))),
        EncryptedEndpoint::Quic { port } => (crate::doq::ALPN, *port, None),
    };
    let mut alpn_value = vec![alpn.len() as u8];
    alpn_value.extend_from_slice(alpn);
    push_param(&mut rdata, KEY_ALPN, &alpn_value);
    push_param(&mut rdata, KEY_PORT, &port.to_be_bytes());
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for address in addresses {
        match address {
            IpAddr::V4(address) => v4.extend_from_slice(&address.octets()),
            IpAddr::V6(address) => v6.extend_from_slice(&address.octets()),
        }
    }
    for (key, hint) in [(KEY_IPV4HINT, v4), (KEY_IPV6HINT, v6)] {
        if !hint.is_empty() {
            push_param(&mut rdata, key, &hint);
        }
    }
    if let Some(path) = doh_path {
        push_param(&mut rdata, KEY_DOHPATH, path.as_bytes());
    }
    rdata
}

fn push_param(rdata: &mut Vec<u8>, key: u16, value: &[u8]) {
    rdata.extend_from_slice(&key.to_be_bytes());
    rdata.extend_from_slice(&(value.len() as u16).to_be_bytes());
    rdata.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LocalAnswer, parse_query};
    use domain::base::iana::{Rcode, Rtype};
    use domain::base::{Message, ParsedName};
    use domain::rdata::AllRecordData;
    use tundns_test_support::dns::Query;

    fn answer(local: &crate::LocalData, name: &str, qtype: Rtype) -> Vec<u8> {
        let query = Query::new(name, qtype).build();
        let query = parse_query(&query).unwrap();
        let mut out = vec![0u8; 4096];
        match local.answer(&query, &mut out) {
            Some(LocalAnswer::Complete(len)) => out[..len].to_vec(),
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn the_designations_are_svcb_records_domain_reads_back() {
        let mut builder = LocalDataBuilder::new();
        builder
            .add_designated_resolvers(
                &[
                    EncryptedEndpoint::Tls { port: 853 },
                    EncryptedEndpoint::Https {
                        port: 443,
                        path: "/dns-query".into(),
                    },
                    EncryptedEndpoint::Quic { port: 853 },
                ],
                &[
                    "10.30.30.30".parse().unwrap(),
                    "fd30:30:30::30".parse().unwrap(),
                ],
            )
            .unwrap();
        builder.add_canary().unwrap();
        builder.add_resolver_arpa().unwrap();
        let local = builder.build();

        let target = answer(&local, RESOLVER_NAME, Rtype::A);
        let target = Message::from_octets(target.as_slice()).unwrap();
        assert_eq!(target.header_counts().ancount(), 1, "the target's address");
        let other = answer(&local, "other.resolver.arpa", Rtype::A);
        let other = Message::from_octets(other.as_slice()).unwrap();
        assert_eq!(other.header().rcode(), Rcode::NXDOMAIN, "never forwarded");

        let bytes = answer(&local, "_DNS.resolver.arpa", Rtype::SVCB);
        let message = Message::from_octets(bytes.as_slice()).unwrap();
        assert_eq!(message.header().rcode(), Rcode::NOERROR);
        let texts: Vec<String> = message
            .answer()
            .unwrap()
            .limit_to::<AllRecordData<_, ParsedName<_>>>()
            .map(|record| record.unwrap().data().to_string())
            .collect();
        assert_eq!(
            texts,
            [
                "1 dns.tundns.internal. alpn=dot port=853 ipv4hint=10.30.30.30 ipv6hint=fd30:30:30::30",
                "2 dns.tundns.internal. alpn=h2 port=443 ipv4hint=10.30.30.30 ipv6hint=fd30:30:30::30 dohpath=/dns-query{?dns}",
                "3 dns.tundns.internal. alpn=doq port=853 ipv4hint=10.30.30.30 ipv6hint=fd30:30:30::30",
            ]
        );

        for qtype in [Rtype::A, Rtype::AAAA, Rtype::HTTPS] {
            let canary = answer(&local, "use-application-dns.net", qtype);
            let canary = Message::from_octets(canary.as_slice()).unwrap();
            assert_eq!(canary.header().rcode(), Rcode::NXDOMAIN, "{qtype}");
        }
        let below = Query::new("www.use-application-dns.net", Rtype::A).build();
        assert!(
            local
                .answer(&parse_query(&below).unwrap(), &mut [0u8; 512])
                .is_none()
        );

        let mut builder = LocalDataBuilder::new();
        builder
            .add_record("use-application-dns.net A 192.0.2.1")
            .unwrap();
        builder.add_canary().unwrap();
        let canary = answer(&builder.build(), "use-application-dns.net", Rtype::A);
        let canary = Message::from_octets(canary.as_slice()).unwrap();
        assert_eq!(canary.header().rcode(), Rcode::NOERROR, "a record wins");
    }
}

//! Names the proxies' clients ask for, resolved by tundns's own resolver: the same local
//! records, split-DNS routes, blocklist and cache as the DNS proxy's clients get, and
//! never a lookup outside tundns.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::dns::counters::Transport;
use domain::base::iana::Rcode;
use domain::base::{Message, MessageBuilder, Name, Rtype};
use domain::rdata::{A, Aaaa};
use tundns_dns::MAX_MESSAGE_LEN;

use crate::dns::proxy::{DnsProxy, Verdict};

/// Why a name gave no address to connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("the name is blocked")]
    Blocked,
    #[error("the name has no address")]
    NoAddress,
    #[error("the resolver failed")]
    Failed,
}

/// The addresses of `name`, in the order a happy-eyeballs client tries them (RFC 8305
/// §4): IPv6 and IPv4 alternating, IPv6 first, each family in the resolver's order.
pub async fn resolve(
    proxy: &Arc<DnsProxy>,
    name: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, LookupError> {
    let owner: Name<Vec<u8>> = name.parse().map_err(|_| LookupError::NoAddress)?;
    if proxy.blocklist().blocks_name(owner.as_slice()) {
        return Err(LookupError::Blocked);
    }
    let (v6, v4) = tokio::join!(
        addresses(proxy, &owner, Rtype::AAAA),
        addresses(proxy, &owner, Rtype::A)
    );
    let (v6, v4) = match (v6, v4) {
        (Err(error), Err(_)) => return Err(error),
        (v6, v4) => (v6.unwrap_or_default(), v4.unwrap_or_default()),
    };
    let mut ordered = Vec::with_capacity(v6.len() + v4.len());
    let (mut v6, mut v4) = (v6.into_iter(), v4.into_iter());
    loop {
        match (v6.next(), v4.next()) {
            (None, None) => break,
            (first, second) => ordered.extend(first.into_iter().chain(second)),
        }
    }
    if ordered.is_empty() {
        return Err(LookupError::NoAddress);
    }
    Ok(ordered
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

/// The `rtype` addresses of `owner`, asked of the DNS proxy as any client asks it.
async fn addresses(
    proxy: &Arc<DnsProxy>,
    owner: &Name<Vec<u8>>,
    rtype: Rtype,
) -> Result<Vec<IpAddr>, LookupError> {
    let mut builder = MessageBuilder::new_vec();
    builder.header_mut().set_random_id();
    builder.header_mut().set_rd(true);
    let mut question = builder.question();
    question
        .push((owner, rtype))
        .map_err(|_| LookupError::NoAddress)?;
    let query = question.into_message().into_octets();
    let mut out = vec![0; MAX_MESSAGE_LEN];
    let answer = match proxy.accept(&query, Transport::Tcp, &mut out) {
        Verdict::Drop => return Err(LookupError::Failed),
        Verdict::Answered(len) => out[..len].to_vec(),
        Verdict::Forward(forward) => forward.resolve().await,
    };
    let message = Message::from_octets(answer.as_slice()).map_err(|_| LookupError::Failed)?;
    match message.header().rcode() {
        Rcode::NOERROR => {}
        Rcode::NXDOMAIN => return Err(LookupError::NoAddress),
        _ => return Err(LookupError::Failed),
    }
    let records = message.answer().map_err(|_| LookupError::Failed)?;
    let found = match rtype {
        Rtype::A => records
            .limit_to::<A>()
            .filter_map(Result::ok)
            .map(|record| IpAddr::V4(record.data().addr()))
            .collect(),
        _ => records
            .limit_to::<Aaaa>()
            .filter_map(Result::ok)
            .map(|record| IpAddr::V6(record.data().addr()))
            .collect(),
    };
    Ok(found)
}

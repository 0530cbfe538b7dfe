//! Local CNAME chains that lead out of local data, finished with the upstreams'
//! answer for their end.
//!
//! `files.home.internal CNAME files.example.com` is only useful if the client
//! also gets `files.example.com`'s addresses: stub resolvers such as glibc's do
//! not follow a CNAME themselves, so a bare chain reads as "no address". The
//! proxy asks the upstreams for the chain's last target, in the client's name
//! (type, class, RD, CD and EDNS), and answers with the chain followed by what
//! the upstream said, as unbound does for its `local-data` CNAMEs.

use domain::base::{Message, ParsedName};
use domain::rdata::AllRecordData;

use crate::query::Query;
use crate::response::{opt_ttl, write_empty_opt};
use crate::synth::{self, RCODE_NOERROR, RCODE_NXDOMAIN, Reply};
use crate::wire::{HEADER_LEN, OPT_RECORD_LEN};

/// A local CNAME chain whose last target lies outside local data.
#[derive(Debug)]
pub struct CnameChain {
    /// The chain's CNAME records, the first owned by the question name.
    body: Box<[u8]>,
    /// How many records `body` holds.
    links: u16,
    /// The last CNAME's target, a wire name.
    target: Box<[u8]>,
}

impl CnameChain {
    pub(crate) fn new(body: Vec<u8>, links: u16, target: Vec<u8>) -> Self {
        CnameChain {
            body: body.into(),
            links,
            target: target.into(),
        }
    }

    /// The chain's last target, a wire name.
    pub fn target(&self) -> &[u8] {
        &self.target
    }

    /// The query to send upstream in place of `query`: the same message about the
    /// chain's target (same ID, flags, type, class and EDNS payload size and DO bit).
    pub fn target_query(&self, query: &Query<'_>) -> Vec<u8> {
        let question = query.question();
        let mut out = Vec::with_capacity(HEADER_LEN + self.target.len() + 4 + OPT_RECORD_LEN);
        out.extend_from_slice(&query.bytes()[..4]);
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&self.target);
        out.extend_from_slice(&question.qtype().to_be_bytes());
        out.extend_from_slice(&question.qclass().to_be_bytes());
        if let Some(edns) = query.edns() {
            let start = out.len();
            out.resize(start + OPT_RECORD_LEN, 0);
            write_empty_opt(
                edns.udp_payload_size,
                opt_ttl(0, edns.dnssec_ok),
                &mut out[start..],
            );
            out[11] = 1;
        }
        out
    }

    /// Writes the answer to `query` into `out`, from `response`, an upstream's answer to
    /// [`target_query`](Self::target_query): the chain, then the response's answer and
    /// authority records (names written out in full), with the response's RCODE and
    /// AA set, as RFC 1035 §4.1.1 defines it for the first owner name.
    ///
    /// `None` when the response does not parse or is neither NOERROR nor NXDOMAIN (RFC
    /// 6604: NXDOMAIN there is about the chain's end): then the client gets SERVFAIL.
    /// `out`'s length is the size limit, as for [`LocalData::answer`](crate::LocalData::answer).
    pub fn complete(&self, query: &Query<'_>, response: &[u8], out: &mut [u8]) -> Option<usize> {
        let message = Message::from_octets(response).ok()?;
        let rcode = message.header().rcode().to_int();
        if rcode != RCODE_NOERROR && rcode != RCODE_NXDOMAIN {
            return None;
        }
        let mut body = self.body.to_vec();
        let answers = append_records(&mut body, message.answer().ok()?)?;
        let authorities = append_records(&mut body, message.authority().ok()?)?;
        let reply = Reply {
            authoritative: true,
            rcode,
            ancount: self.links.checked_add(answers)?,
            nscount: authorities,
        };
        Some(synth::write_reply(query, reply, &body, out))
    }
}

/// Appends `section`'s records to `body` without compression (the pointers in them
/// would not hold in another message); returns how many.
fn append_records(
    body: &mut Vec<u8>,
    section: domain::base::message::RecordSection<'_, &[u8]>,
) -> Option<u16> {
    let mut count: u16 = 0;
    for record in section {
        let record = record
            .ok()?
            .to_any_record::<AllRecordData<&[u8], ParsedName<&[u8]>>>()
            .ok()?;
        record.compose(body).ok()?;
        count = count.checked_add(1)?;
    }
    Some(count)
}

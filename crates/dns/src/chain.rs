//! Local CNAME chains that lead out of local data, finished with an answer for
//! their end.
//!
//! `files.home.internal CNAME files.example.com` is only useful if the client
//! also gets `files.example.com`'s addresses: stub resolvers such as glibc's do
//! not follow a CNAME themselves, so a bare chain reads as "no address". The
//! proxy asks for the chain's last target with the client's type, class, RD, AD
//! and CD bits and EDNS payload size and DO bit (from memory, else from the
//! upstreams), and answers with the chain followed by what that answer says
//! about the target, as unbound does for its `local-data` CNAMEs.
//!
//! The upstream's answer is scrubbed as unbound scrubs one: only the records of
//! the target and of the names its own CNAMEs lead to are kept, and in the
//! authority section only the SOA, NS and DNSSEC records of the last name's
//! zone. A CNAME leading back to a name that local data or the blocklist
//! decides ends the chain there: the upstream never speaks for those names.

use domain::base::iana::OptRcode;
use domain::base::{Message, ParsedName, Rtype, ToName};
use domain::rdata::AllRecordData;

use crate::names::is_at_or_below;
use crate::query::Query;
use crate::response::{opt_ttl, write_empty_opt};
use crate::synth::{self, Reply};
use crate::wire::{
    FLAGS_RD, FLAGS_TC, FLAGS2_AD, FLAGS2_CD, HEADER_LEN, MAX_MESSAGE_LEN, OPT_RECORD_LEN,
};

/// The most CNAMEs of the upstream's followed after the local chain's end.
const MAX_UPSTREAM_LINKS: usize = 8;

/// A local CNAME chain whose last target lies outside local data.
#[derive(Debug)]
pub struct CnameChain {
    /// The chain's CNAME records, the first owned by the question name.
    body: Box<[u8]>,
    /// How many records `body` holds.
    links: u16,
    /// The last CNAME's target, a lowercase wire name.
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

    /// The chain's last target, a lowercase wire name.
    pub fn target(&self) -> &[u8] {
        &self.target
    }

    /// The query to ask in place of `query`: the chain's target, with `query`'s ID,
    /// type and class, its RD, AD and CD bits, and its EDNS payload size and DO bit.
    pub fn target_query(&self, query: &Query<'_>) -> Vec<u8> {
        let question = query.question();
        let bytes = query.bytes();
        let mut out = Vec::with_capacity(HEADER_LEN + self.target.len() + 4 + OPT_RECORD_LEN);
        out.extend_from_slice(&bytes[..2]);
        out.push(bytes[2] & FLAGS_RD);
        out.push(bytes[3] & (FLAGS2_AD | FLAGS2_CD));
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

    /// The answer to `query`, from `response`, an answer to
    /// [`target_query`](Self::target_query): the chain, then the response's records
    /// about the target (scrubbed, see the module docs; names written out in full),
    /// with the response's RCODE and AA set, as RFC 1035 §4.1.1 defines it for the
    /// first owner name. `decided_here` tells the names that local data or the
    /// blocklist answer for. TC is set when the response had it, or when what it
    /// says does not fit in one message. At most `limit` bytes, truncated as
    /// [`LocalData::answer`](crate::LocalData::answer) truncates.
    ///
    /// `None` when the response does not parse or is neither NOERROR nor NXDOMAIN
    /// (RFC 6604: NXDOMAIN there is about the chain's end): the client then gets
    /// SERVFAIL.
    pub fn complete(
        &self,
        query: &Query<'_>,
        response: &[u8],
        limit: usize,
        decided_here: impl Fn(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let message = Message::from_octets(response).ok()?;
        let rcode = message.opt_rcode();
        if rcode != OptRcode::NOERROR && rcode != OptRcode::NXDOMAIN {
            return None;
        }
        let name_len = query.question().name_wire().len() + 4;
        let question_len = name_len.max(query.question_wire().len());
        // Records are written out uncompressed (their pointers would not hold here), so
        // a compressed upstream answer can outgrow one message: what does not fit is left
        // out, and the answer has TC set.
        let room = MAX_MESSAGE_LEN - HEADER_LEN - question_len - OPT_RECORD_LEN;
        let mut scrubbed = Scrubbed {
            body: self.body.to_vec(),
            room,
            count: 0,
            truncated: message.header().tc(),
        };
        let last = scrubbed.follow_chain(&message, self.target.to_vec(), decided_here)?;
        let answers = scrubbed.count;
        scrubbed.count = 0;
        scrubbed.keep_zone_records(&message, &last)?;
        let reply = Reply {
            authoritative: true,
            rcode: rcode.rcode().to_int(),
            ancount: self.links.checked_add(answers)?,
            nscount: scrubbed.count,
            // Part local, part upstream: neither code fits the whole.
            explained: None,
        };
        let size = HEADER_LEN + question_len + scrubbed.body.len() + OPT_RECORD_LEN;
        let mut out = vec![0; size.min(limit)];
        let len = synth::write_reply(query, reply, &scrubbed.body, &mut out);
        if scrubbed.truncated && len > 2 {
            out[2] |= FLAGS_TC;
        }
        out.truncate(len);
        Some(out)
    }
}

type ParsedRecord<'a> =
    domain::base::Record<ParsedName<&'a [u8]>, AllRecordData<&'a [u8], ParsedName<&'a [u8]>>>;

/// The records kept from an upstream's answer so far.
struct Scrubbed {
    body: Vec<u8>,
    /// The most `body` may hold.
    room: usize,
    /// Records appended to `body` in the current section.
    count: u16,
    truncated: bool,
}

impl Scrubbed {
    /// Keeps the answer records owned by `name` and by the names its CNAMEs lead to,
    /// in whatever order the upstream gave them; returns the last name reached.
    fn follow_chain(
        &mut self,
        message: &Message<&[u8]>,
        mut name: Vec<u8>,
        decided_here: impl Fn(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let mut visited = vec![name.clone()];
        for _ in 0..=MAX_UPSTREAM_LINKS {
            let mut next = None;
            for record in message.answer().ok()? {
                let record = parse(record.ok()?)?;
                if lowercase_wire(record.owner()) != name {
                    continue;
                }
                if let AllRecordData::Cname(cname) = record.data() {
                    next = Some(lowercase_wire(cname.cname()));
                }
                self.append(&record)?;
            }
            match next {
                Some(target) if !visited.contains(&target) && !decided_here(&target) => {
                    visited.push(target.clone());
                    name = target;
                }
                _ => break,
            }
        }
        Some(name)
    }

    /// Keeps the authority records about the zone of `name`: SOA, NS and DNSSEC
    /// records owned by `name` or one of its ancestors.
    fn keep_zone_records(&mut self, message: &Message<&[u8]>, name: &[u8]) -> Option<()> {
        for record in message.authority().ok()? {
            let record = parse(record.ok()?)?;
            let about_the_zone = matches!(
                record.rtype(),
                Rtype::SOA | Rtype::NS | Rtype::NSEC | Rtype::NSEC3 | Rtype::RRSIG
            );
            if about_the_zone && is_at_or_below(name, &lowercase_wire(record.owner())) {
                self.append(&record)?;
            }
        }
        Some(())
    }

    /// Appends `record` unless the body is full, which sets `truncated` instead.
    fn append(&mut self, record: &ParsedRecord<'_>) -> Option<()> {
        let start = self.body.len();
        record.compose(&mut self.body).ok()?;
        if self.body.len() > self.room {
            self.body.truncate(start);
            self.truncated = true;
        } else {
            self.count = self.count.checked_add(1)?;
        }
        Some(())
    }
}

fn parse<'a>(record: domain::base::ParsedRecord<'_, &'a [u8]>) -> Option<ParsedRecord<'a>> {
    record
        .to_any_record::<AllRecordData<&[u8], ParsedName<&[u8]>>>()
        .ok()
}

/// `name` as an uncompressed lowercase wire name, as local data keys names.
fn lowercase_wire(name: &impl ToName) -> Vec<u8> {
    let mut wire = Vec::new();
    for label in name.iter_labels() {
        wire.push(label.len() as u8);
        wire.extend(label.as_slice().iter().map(u8::to_ascii_lowercase));
    }
    wire
}

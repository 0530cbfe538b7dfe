//! Writing the answers that local data and blocklists make themselves: a header,
//! the client's question in its own spelling, a precomputed body, and an OPT
//! record when the client sent EDNS (as [`write_error_response`] does), carrying the
//! reply's Extended DNS Error (RFC 8914) if it has one.
//!
//! Bodies refer to the question name with the pointer [`QUESTION_NAME`]
//! (offset 12), so one body serves every spelling of a name and every name a
//! wildcard matches.
//!
//! [`write_error_response`]: crate::write_error_response

use crate::query::Query;
use crate::response::{
    ADVERTISED_UDP_PAYLOAD, ExtendedError, append_extended_error, opt_ttl, write_empty_opt,
};
use crate::wire::{self, FLAGS_AA, HEADER_LEN, MAX_MESSAGE_LEN, OPT_RECORD_LEN};

pub(crate) const CLASS_IN: u16 = 1;
pub(crate) const CLASS_ANY: u16 = 255;
pub(crate) const TYPE_A: u16 = 1;
pub(crate) const TYPE_CNAME: u16 = 5;
pub(crate) const TYPE_SOA: u16 = 6;
pub(crate) const TYPE_PTR: u16 = 12;
pub(crate) const TYPE_TXT: u16 = 16;
pub(crate) const TYPE_AAAA: u16 = 28;
pub(crate) const TYPE_ANY: u16 = 255;

pub(crate) const RCODE_NOERROR: u8 = 0;
pub(crate) const RCODE_NXDOMAIN: u8 = 3;

/// A compression pointer to the question name, which every answer written here
/// carries uncompressed at offset 12.
pub(crate) const QUESTION_NAME: [u8; 2] = [0xc0, HEADER_LEN as u8];

/// SOA timers of the synthesised zones: serial, refresh, retry, expire.
const SOA_TIMERS: [u32; 4] = [1, 3600, 600, 86400];

/// The header fields of an answer; the body holds `ancount + nscount` records.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reply {
    pub authoritative: bool,
    pub rcode: u8,
    pub ancount: u16,
    pub nscount: u16,
    /// Why tundns answered itself, told to clients that sent EDNS.
    pub explained: Option<ExtendedError<'static>>,
}

/// Writes the answer to `query` into `out` and returns its length.
///
/// `out`'s length is the size limit. An answer that does not fit (or would
/// exceed 65535 bytes) is written in its truncated form: TC=1, no records, the
/// question and the OPT record when they fit, so the client retries over TCP.
/// Returns 0 only when `out` is shorter than a header. Does not allocate.
pub(crate) fn write_reply(query: &Query<'_>, reply: Reply, body: &[u8], out: &mut [u8]) -> usize {
    if out.len() < HEADER_LEN {
        return 0;
    }
    // A client may compress its question name into the header; then the name is
    // written out from its lowercase form, as a pointer back would now misread.
    let question_wire = query.question_wire();
    let name_wire = query.question().name_wire();
    let compressed = question_wire.len() != name_wire.len() + 4;
    let (name, type_and_class) = if compressed {
        (name_wire, &question_wire[question_wire.len() - 4..])
    } else {
        question_wire.split_at(name_wire.len())
    };
    let question_len = name.len() + 4;
    let opt_len = if query.edns().is_some() {
        OPT_RECORD_LEN + reply.explained.map_or(0, |error| error.option_len())
    } else {
        0
    };
    let full_len = HEADER_LEN + question_len + body.len() + opt_len;
    let fits = full_len <= out.len() && full_len <= MAX_MESSAGE_LEN;

    let bytes = query.bytes();
    out[..2].copy_from_slice(&bytes[..2]);
    out[2] = wire::FLAGS_QR
        | if reply.authoritative { FLAGS_AA } else { 0 }
        | if fits { 0 } else { wire::FLAGS_TC }
        | (bytes[2] & wire::FLAGS_RD);
    out[3] = wire::FLAGS2_RA | (bytes[3] & wire::FLAGS2_CD) | (reply.rcode & 0x0f);
    out[4..HEADER_LEN].fill(0);
    let mut len = HEADER_LEN;
    if HEADER_LEN + question_len > out.len() {
        return len;
    }
    out[len..len + name.len()].copy_from_slice(name);
    len += name.len();
    out[len..len + 4].copy_from_slice(type_and_class);
    len += 4;
    wire::write_u16(out, 4, 1);

    if fits {
        out[len..len + body.len()].copy_from_slice(body);
        len += body.len();
        wire::write_u16(out, 6, reply.ancount);
        wire::write_u16(out, 8, reply.nscount);
    }
    if let Some(edns) = query.edns()
        && out.len() - len >= OPT_RECORD_LEN
    {
        len += write_empty_opt(
            ADVERTISED_UDP_PAYLOAD,
            opt_ttl(0, edns.dnssec_ok),
            &mut out[len..],
        );
        wire::write_u16(out, 10, 1);
        if let Some(error) = reply.explained {
            len = append_extended_error(out, len, error).unwrap_or(len);
        }
    }
    len
}

/// Appends a class IN record. `owner` is a wire name or a compression pointer.
pub(crate) fn push_record(out: &mut Vec<u8>, owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) {
    out.extend_from_slice(owner);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    // Callers keep RDATA well under 64 KiB (names, addresses, TXT of at most 65535).
    out.extend_from_slice(&(rdata.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.extend_from_slice(rdata);
}

/// The SOA RDATA of a synthesised zone at `zone` (a wire name or a pointer):
/// MNAME is the zone, RNAME `hostmaster.<zone>` (the zone itself when that
/// would be too long), MINIMUM the negative-caching TTL (RFC 2308).
pub(crate) fn soa_rdata(zone: &[u8], minimum: u32) -> Vec<u8> {
    let mut rdata = Vec::with_capacity(2 * zone.len() + 31);
    rdata.extend_from_slice(zone);
    if zone.len() + 11 <= wire::MAX_NAME_LEN {
        rdata.extend_from_slice(b"\x0ahostmaster");
    }
    rdata.extend_from_slice(zone);
    for value in SOA_TIMERS.into_iter().chain([minimum]) {
        rdata.extend_from_slice(&value.to_be_bytes());
    }
    rdata
}

/// A compression pointer to the suffix of the question name at `offset` in its
/// wire form.
pub(crate) fn question_suffix_pointer(offset: usize) -> [u8; 2] {
    let target = (HEADER_LEN + offset) as u16 | 0xc000;
    target.to_be_bytes()
}

//! Checking upstream responses and writing the responses the proxy makes itself.

use domain::base::iana::OptRcode;

use crate::query::{Question, read_query};
use crate::sections::{self, Records, Section};
use crate::wire::{self, HEADER_LEN, NameBuf, NameCase, OPT_RECORD_LEN};

/// UDP payload size advertised in the OPT record of our own error responses
/// (the 2020 DNS flag day value: fits any path MTU without fragmentation).
pub const ADVERTISED_UDP_PAYLOAD: u16 = 1232;

/// A buffer this long always holds a whole [`write_error_response`] or
/// [`write_truncated`] output: header, the longest question, an OPT record.
pub const MAX_SYNTHESIZED_LEN: usize = HEADER_LEN + wire::MAX_NAME_LEN + 4 + OPT_RECORD_LEN;

/// True when `response` answers `question` under `expected_id`: QR=1, the same
/// ID, exactly one question, and that question equal to `question` (name
/// case-insensitively, type, class). Anything malformed is `false`.
pub fn response_matches(expected_id: u16, question: &Question, response: &[u8]) -> bool {
    if response.len() < HEADER_LEN
        || response[2] & wire::FLAGS_QR == 0
        || message_id(response) != Some(expected_id)
        || wire::read_u16(response, 4) != Some(1)
    {
        return false;
    }
    let Some(fixed) = wire::name_equals(response, HEADER_LEN, question.name_wire()) else {
        return false;
    };
    wire::read_u16(response, fixed) == Some(question.qtype())
        && wire::read_u16(response, fixed + 2) == Some(question.qclass())
}

/// The message ID, or `None` when the message is shorter than a header.
#[inline]
pub fn message_id(msg: &[u8]) -> Option<u16> {
    if msg.len() < HEADER_LEN {
        return None;
    }
    Some(u16::from_be_bytes([msg[0], msg[1]]))
}

/// Rewrites the message ID in place. Does nothing when the message is shorter
/// than a header (such a message is never forwarded).
#[inline]
pub fn set_message_id(msg: &mut [u8], id: u16) {
    if msg.len() >= HEADER_LEN {
        wire::write_u16(msg, 0, id);
    }
}

/// The TC bit: the answer did not fit and the client should retry over TCP.
#[inline]
pub fn is_truncated(msg: &[u8]) -> bool {
    msg.len() >= HEADER_LEN && msg[2] & wire::FLAGS_TC != 0
}

/// Writes the error response to `query_bytes` into `buf` and returns its length.
///
/// The response keeps the query's ID, opcode, RD and CD bits, sets QR=1, RA=1 and
/// `rcode`, and echoes the question (in the client's letter case) when QDCOUNT
/// is 1 and the question reads; otherwise it is a bare header with QDCOUNT=0.
/// A well-formed query with EDNS (of any version) gets an OPT record back (DO
/// copied), except for FORMERR. An extended rcode such as BADVERS always gets
/// an OPT record: its upper 8 bits go in the OPT TTL (RFC 6891 §6.1.3), with
/// EDNS version 0. Counts always describe what was written.
///
/// Returns 0, writing nothing, when the input must not be answered (shorter than
/// a header, or QR=1) or `buf` is shorter than a header. Parts that do not fit
/// in `buf` are left out; [`MAX_SYNTHESIZED_LEN`] bytes always suffice.
/// Does not allocate.
pub fn write_error_response(
    query_bytes: &[u8],
    rcode: impl Into<OptRcode>,
    buf: &mut [u8],
) -> usize {
    if query_bytes.len() < HEADER_LEN
        || query_bytes[2] & wire::FLAGS_QR != 0
        || buf.len() < HEADER_LEN
    {
        return 0;
    }
    let rcode = rcode.into();
    let (header_rcode, extended_rcode) = rcode.to_parts();
    buf[..2].copy_from_slice(&query_bytes[..2]);
    buf[2] = wire::FLAGS_QR | (query_bytes[2] & (wire::FLAGS_OPCODE_MASK | wire::FLAGS_RD));
    buf[3] = wire::FLAGS2_RA | (query_bytes[3] & wire::FLAGS2_CD) | header_rcode.to_int();
    buf[4..HEADER_LEN].fill(0);
    let mut len = HEADER_LEN;

    if wire::read_u16(query_bytes, 4) == Some(1) {
        len += write_question_from(query_bytes, &mut buf[HEADER_LEN..]);
        if len > HEADER_LEN {
            wire::write_u16(buf, 4, 1);
        }
    }

    let edns = read_query(query_bytes).ok().and_then(|query| query.edns());
    let wants_opt = extended_rcode != 0 || (edns.is_some() && rcode != OptRcode::FORMERR);
    if wants_opt && buf.len() - len >= OPT_RECORD_LEN {
        let dnssec_ok = edns.is_some_and(|edns| edns.dnssec_ok);
        len += write_empty_opt(
            ADVERTISED_UDP_PAYLOAD,
            opt_ttl(extended_rcode, dnssec_ok),
            &mut buf[len..],
        );
        wire::write_u16(buf, 10, 1);
    }
    len
}

/// An Extended DNS Error (RFC 8914): why tundns answered as it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtendedError<'a> {
    /// The INFO-CODE (RFC 8914 §4).
    pub code: u16,
    /// The EXTRA-TEXT, for a human reading the answer.
    pub text: &'a str,
}

impl ExtendedError<'_> {
    /// INFO-CODE 3: an expired answer, served because every upstream failed (RFC 8767).
    pub const STALE_ANSWER: u16 = 3;
    /// INFO-CODE 15: the blocklist answered. tundns's lists are the operator's policy,
    /// not a filter the client asked for (that would be 17, Filtered).
    pub const BLOCKED: u16 = 15;
    /// INFO-CODE 22: no upstream could be reached, or none gave a usable answer.
    pub const NO_REACHABLE_AUTHORITY: u16 = 22;
    /// INFO-CODE 29 (IANA registry, expert review after RFC 8914): the answer was made
    /// by the resolver, not taken from an authoritative server: local records and zones.
    pub const SYNTHESIZED: u16 = 29;

    /// The bytes the option takes in an OPT record's RDATA.
    pub fn option_len(&self) -> usize {
        EXTENDED_ERROR_HEADER_LEN + self.text.len()
    }
}

/// The EDNS option code of an Extended DNS Error.
const OPTION_EXTENDED_ERROR: u16 = 15;

/// OPTION-CODE, OPTION-LENGTH and INFO-CODE, before the EXTRA-TEXT.
const EXTENDED_ERROR_HEADER_LEN: usize = 6;

/// [`write_error_response`], with `error` in its OPT record. A client that sent no EDNS
/// gets no OPT record (RFC 6891), so no extended error either.
pub fn write_error_response_explained(
    query_bytes: &[u8],
    rcode: impl Into<OptRcode>,
    error: ExtendedError<'_>,
    buf: &mut [u8],
) -> usize {
    let len = write_error_response(query_bytes, rcode, buf);
    // The OPT record, when written, is the message's last and only additional record.
    if len < HEADER_LEN || wire::read_u16(buf, 10) != Some(1) {
        return len;
    }
    append_extended_error(buf, len, error).unwrap_or(len)
}

/// Appends `error` to the OPT record that ends `buf[..len]`, an OPT this crate wrote
/// with no options (its RDLENGTH, 0, is the message's last two bytes). Returns the new
/// length; `None`, changing nothing, when it does not fit. Does not allocate.
pub(crate) fn append_extended_error(
    buf: &mut [u8],
    len: usize,
    error: ExtendedError<'_>,
) -> Option<usize> {
    let option_len = error.option_len();
    let rdlen = u16::try_from(option_len).ok()?;
    if len < OPT_RECORD_LEN || wire::read_u16(buf, len - 2) != Some(0) {
        return None;
    }
    let option = buf.get_mut(len..len + option_len)?;
    wire::write_u16(option, 0, OPTION_EXTENDED_ERROR);
    wire::write_u16(option, 2, rdlen - 4);
    wire::write_u16(option, 4, error.code);
    option[EXTENDED_ERROR_HEADER_LEN..].copy_from_slice(error.text.as_bytes());
    wire::write_u16(buf, len - 2, rdlen);
    Some(len + option_len)
}

/// The TTL field of an OPT record: extended rcode, version 0, the DO flag.
pub(crate) fn opt_ttl(extended_rcode: u8, dnssec_ok: bool) -> u32 {
    u32::from(extended_rcode) << 24 | if dnssec_ok { 0x8000 } else { 0 }
}

/// Writes the truncated form of an upstream `response` into `buf` and returns
/// its length; `buf`'s length is the size limit. The client retries over TCP
/// (RFC 7766 §5).
///
/// The result keeps the header with TC=1, the question, then as many whole
/// RRsets of the answer section as fit, and only when all of them fit, as many
/// whole RRsets of the authority section as fit. No record and no RRset is ever
/// cut. The additional section is dropped except the OPT record, kept without
/// its options. Counts describe what was written. RRsets are runs of
/// consecutive records with the same owner (case-insensitively), type and class.
///
/// What is kept is a byte prefix of the response, so compression pointers stay
/// valid. A response that does not walk cleanly keeps only its question; one
/// whose question does not read gets a bare header with QDCOUNT=0. Returns 0
/// when the response is shorter than a header or `buf` is. Does not allocate.
pub fn write_truncated(response: &[u8], buf: &mut [u8]) -> usize {
    if response.len() < HEADER_LEN || buf.len() < HEADER_LEN {
        return 0;
    }
    buf[..4].copy_from_slice(&response[..4]);
    buf[2] |= wire::FLAGS_TC;
    buf[4..HEADER_LEN].fill(0);
    if wire::read_u16(response, 4) != Some(1) {
        return HEADER_LEN;
    }
    let walk = sections::walk(response).filter(|walk| question_is_plain(response, walk));
    let Some(walk) = walk else {
        // Records may point into a compressed question: keep only the question.
        let len = HEADER_LEN + write_question_from(response, &mut buf[HEADER_LEN..]);
        if len > HEADER_LEN {
            wire::write_u16(buf, 4, 1);
        }
        return len;
    };
    if walk.question_end > buf.len() {
        return HEADER_LEN;
    }
    let opt = walk
        .opt
        .as_ref()
        .filter(|_| buf.len() - walk.question_end >= OPT_RECORD_LEN)
        .map(|opt| opt.record);
    let budget = buf.len() - if opt.is_some() { OPT_RECORD_LEN } else { 0 };
    let (cut, answers, authorities) = whole_rrsets_within(response, budget);
    buf[HEADER_LEN..cut].copy_from_slice(&response[HEADER_LEN..cut]);
    wire::write_u16(buf, 4, 1);
    wire::write_u16(buf, 6, answers);
    wire::write_u16(buf, 8, authorities);
    let mut len = cut;
    if let Some(opt) = opt {
        len += write_empty_opt(opt.class, opt.ttl, &mut buf[len..]);
        wire::write_u16(buf, 10, 1);
    }
    len
}

/// Whether the single question of a walked message is uncompressed, so the
/// header can change without changing any name.
fn question_is_plain(msg: &[u8], walk: &sections::Walk) -> bool {
    let mut name = NameBuf::new();
    wire::copy_name(msg, HEADER_LEN, NameCase::Verbatim, &mut name)
        .is_some_and(|end| end == HEADER_LEN + name.len && end + 4 == walk.question_end)
}

/// Where to cut a message (that walks cleanly) so that it ends with whole
/// RRsets of the answer, then authority, section, no later than `budget`; and
/// the answer and authority counts kept.
fn whole_rrsets_within(msg: &[u8], budget: usize) -> (usize, u16, u16) {
    let Some(mut records) = Records::new(msg) else {
        return (HEADER_LEN, 0, 0);
    };
    let mut cut = (records.position(), 0, 0);
    let mut counts = (0u16, 0u16);
    let mut previous: Option<sections::Record> = None;
    let mut previous_owner = NameBuf::new();
    let mut owner = NameBuf::new();
    let mut overflowed = false;
    for record in &mut records {
        let Ok(record) = record else {
            overflowed = true;
            break;
        };
        if record.section == Section::Additional {
            break;
        }
        if !sections::owner_name(msg, &record, &mut owner) {
            overflowed = true;
            break;
        }
        if let Some(previous) = previous {
            let same_rrset = previous.section == record.section
                && previous.rtype == record.rtype
                && previous.class == record.class
                && previous_owner.as_slice() == owner.as_slice();
            if !same_rrset {
                cut = (previous.end, counts.0, counts.1);
            }
        }
        if record.end > budget {
            overflowed = true;
            break;
        }
        match record.section {
            Section::Answer => counts.0 += 1,
            _ => counts.1 += 1,
        }
        previous = Some(record);
        core::mem::swap(&mut previous_owner, &mut owner);
    }
    if let Some(previous) = previous.filter(|_| !overflowed) {
        cut = (previous.end, counts.0, counts.1);
    }
    cut
}

/// Copies the question at offset 12 of `msg`, decompressed and in its original
/// case, to the start of `out`. Returns the bytes written: 0 when it does not
/// read or does not fit.
fn write_question_from(msg: &[u8], out: &mut [u8]) -> usize {
    let mut name = NameBuf::new();
    let Some(fixed) = wire::copy_name(msg, HEADER_LEN, NameCase::Verbatim, &mut name) else {
        return 0;
    };
    let Some(type_and_class) = msg.get(fixed..fixed + 4) else {
        return 0;
    };
    let total = name.len + 4;
    if out.len() < total {
        return 0;
    }
    out[..name.len].copy_from_slice(name.as_slice());
    out[name.len..total].copy_from_slice(type_and_class);
    total
}

pub(crate) fn write_empty_opt(udp_payload_size: u16, ttl: u32, out: &mut [u8]) -> usize {
    out[0] = 0;
    wire::write_u16(out, 1, wire::RTYPE_OPT);
    wire::write_u16(out, 3, udp_payload_size);
    out[5..9].copy_from_slice(&ttl.to_be_bytes());
    wire::write_u16(out, 9, 0);
    OPT_RECORD_LEN
}

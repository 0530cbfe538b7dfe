//! Checking upstream responses and writing the responses the proxy makes itself.

use domain::base::iana::Rcode;

use crate::query::{Question, parse_query};
use crate::wire::{self, HEADER_LEN, NameBuf, NameCase};

/// UDP payload size advertised in the OPT record of our own error responses
/// (the 2020 DNS flag day value: fits any path MTU without fragmentation).
pub const ADVERTISED_UDP_PAYLOAD: u16 = 1232;

/// Length of an OPT record without options: root owner + type, class, TTL, RDLENGTH.
const OPT_RECORD_LEN: usize = 1 + wire::RR_FIXED_LEN;

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
/// A query that passes [`parse_query`] with EDNS gets an OPT record back (DO
/// copied), except for FORMERR. Counts always describe what was written.
///
/// Returns 0, writing nothing, when the input must not be answered (shorter than
/// a header, or QR=1) or `buf` is shorter than a header. Parts that do not fit
/// in `buf` are left out; [`MAX_SYNTHESIZED_LEN`] bytes always suffice.
/// Does not allocate.
pub fn write_error_response(query_bytes: &[u8], rcode: Rcode, buf: &mut [u8]) -> usize {
    if query_bytes.len() < HEADER_LEN
        || query_bytes[2] & wire::FLAGS_QR != 0
        || buf.len() < HEADER_LEN
    {
        return 0;
    }
    buf[..2].copy_from_slice(&query_bytes[..2]);
    buf[2] = wire::FLAGS_QR | (query_bytes[2] & (wire::FLAGS_OPCODE_MASK | wire::FLAGS_RD));
    buf[3] = wire::FLAGS2_RA | (query_bytes[3] & wire::FLAGS2_CD) | rcode.to_int();
    buf[4..HEADER_LEN].fill(0);
    let mut len = HEADER_LEN;

    if wire::read_u16(query_bytes, 4) == Some(1) {
        len += write_question_from(query_bytes, &mut buf[HEADER_LEN..]);
        if len > HEADER_LEN {
            wire::write_u16(buf, 4, 1);
        }
    }

    if rcode != Rcode::FORMERR
        && let Ok(query) = parse_query(query_bytes)
        && let Some(edns) = query.edns()
        && buf.len() - len >= OPT_RECORD_LEN
    {
        let ttl = if edns.dnssec_ok { 0x8000 } else { 0 };
        len += write_empty_opt(ADVERTISED_UDP_PAYLOAD, ttl, &mut buf[len..]);
        wire::write_u16(buf, 10, 1);
    }
    len
}

/// Writes the truncated form of an upstream `response` into `buf` and returns
/// its length: the header with TC=1, the question, and the response's OPT record
/// (without its options) when it had one. ANCOUNT and NSCOUNT are 0. The client
/// retries over TCP (RFC 7766 §5).
///
/// `buf`'s length is the size limit. Returns 0 when the response is shorter than
/// a header or `buf` is. A response whose question does not read gets a bare
/// header with QDCOUNT=0. Does not allocate.
pub fn write_truncated(response: &[u8], buf: &mut [u8]) -> usize {
    if response.len() < HEADER_LEN || buf.len() < HEADER_LEN {
        return 0;
    }
    buf[..4].copy_from_slice(&response[..4]);
    buf[2] |= wire::FLAGS_TC;
    buf[4..HEADER_LEN].fill(0);
    let mut len = HEADER_LEN;

    if wire::read_u16(response, 4) == Some(1) {
        len += write_question_from(response, &mut buf[HEADER_LEN..]);
        if len > HEADER_LEN {
            wire::write_u16(buf, 4, 1);
        }
    }

    if len > HEADER_LEN
        && buf.len() - len >= OPT_RECORD_LEN
        && let Some((udp_payload_size, ttl)) = find_opt(response)
    {
        len += write_empty_opt(udp_payload_size, ttl, &mut buf[len..]);
        wire::write_u16(buf, 10, 1);
    }
    len
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

/// The CLASS (UDP payload size) and TTL (extended rcode, version, flags) of the
/// first OPT record in the additional section, when the message walks cleanly.
fn find_opt(msg: &[u8]) -> Option<(u16, u32)> {
    let [qdcount, ancount, nscount, arcount] = wire::counts(msg)?;
    let mut pos = HEADER_LEN;
    for _ in 0..qdcount {
        pos = wire::skip_name(msg, pos)? + 4;
    }
    let records = u32::from(ancount) + u32::from(nscount) + u32::from(arcount);
    let first_additional = records - u32::from(arcount);
    for index in 0..records {
        let (record, next) = wire::read_record(msg, pos)?;
        if index >= first_additional && record.rtype == wire::RTYPE_OPT && record.owner_is_root {
            return Some((record.class, record.ttl));
        }
        pos = next;
    }
    None
}

fn write_empty_opt(udp_payload_size: u16, ttl: u32, out: &mut [u8]) -> usize {
    out[0] = 0;
    wire::write_u16(out, 1, wire::RTYPE_OPT);
    wire::write_u16(out, 3, udp_payload_size);
    out[5..9].copy_from_slice(&ttl.to_be_bytes());
    wire::write_u16(out, 9, 0);
    OPT_RECORD_LEN
}

//! Turning one upstream answer into the answer to another client's identical
//! query, and adjusting a query's EDNS before it goes upstream. Both work by
//! copying and patching bytes in place, never by re-encoding.

use crate::query::Query;
use crate::response::{ADVERTISED_UDP_PAYLOAD, opt_ttl, write_empty_opt};
use crate::sections;
use crate::wire::{self, HEADER_LEN, OPT_RECORD_LEN};

/// Writes `response` into `out` as the answer to `query`, for in-flight
/// collapsing (many clients, one upstream answer): the query's ID, RD bit and
/// question spelling. When the response's OPT record is its last record, it is
/// replaced by one that mirrors the client: present only if the query has EDNS,
/// our advertised UDP size, the query's DO bit, the response's extended rcode,
/// no options (an upstream's cookie belongs to whoever asked it).
///
/// The result is at most `response.len()` + 11 bytes (an OPT added for a client
/// with EDNS when the response had none). Returns 0 when it does not fit in
/// `out`, or when `response` is malformed, not a response, or not an answer to
/// `query`'s question. Does not allocate.
pub fn adapt_response(response: &[u8], query: &Query<'_>, out: &mut [u8]) -> usize {
    let question = query.question();
    if response.len() < HEADER_LEN
        || response[2] & wire::FLAGS_QR == 0
        || wire::read_u16(response, 4) != Some(1)
    {
        return 0;
    }
    let Some(question_fixed) = wire::name_equals(response, HEADER_LEN, question.name_wire()) else {
        return 0;
    };
    if wire::read_u16(response, question_fixed) != Some(question.qtype())
        || wire::read_u16(response, question_fixed + 2) != Some(question.qclass())
    {
        return 0;
    }
    let Some(walk) = sections::walk(response) else {
        return 0;
    };
    let (body_end, extended_rcode, replace_opt) = match &walk.opt {
        Some(opt) if opt.is_last => (opt.record.start, (opt.record.ttl >> 24) as u8, true),
        Some(_) => (walk.end, 0, false),
        None => (walk.end, 0, true),
    };
    let Some(body) = out.get_mut(..body_end) else {
        return 0;
    };
    body.copy_from_slice(&response[..body_end]);
    patch_for_client(query, out, walk.question_end);
    if !replace_opt {
        return body_end;
    }
    let mut additional = wire::read_u16(response, 10).unwrap_or(0);
    if walk.opt.is_some() {
        additional -= 1;
    }
    wire::write_u16(out, 10, additional);
    append_client_opt(query, extended_rcode, out, body_end).unwrap_or(0)
}

/// Sets the client's ID and RD bit in a response copied to `out`, and its
/// question spelling when both questions are uncompressed (same length, so the
/// same label offsets: pointers into the question stay valid).
pub(crate) fn patch_for_client(query: &Query<'_>, out: &mut [u8], question_end: usize) {
    let client_question = query.question_wire();
    out[..2].copy_from_slice(&query.bytes()[..2]);
    out[2] = (out[2] & !wire::FLAGS_RD) | (query.bytes()[2] & wire::FLAGS_RD);
    let plain_len = query.question().name_wire().len() + 4;
    if client_question.len() == plain_len && question_end == HEADER_LEN + plain_len {
        out[HEADER_LEN..question_end].copy_from_slice(client_question);
    }
}

/// Appends, after `out[..len]` (a response without OPT), the OPT record the
/// client's query calls for, if it has EDNS, and counts it in ARCOUNT. Returns
/// the new length; `None` when it does not fit.
pub(crate) fn append_client_opt(
    query: &Query<'_>,
    extended_rcode: u8,
    out: &mut [u8],
    len: usize,
) -> Option<usize> {
    let Some(edns) = query.edns() else {
        return Some(len);
    };
    let room = out.get_mut(len..len + OPT_RECORD_LEN)?;
    write_empty_opt(
        ADVERTISED_UDP_PAYLOAD,
        opt_ttl(extended_rcode, edns.dnssec_ok),
        room,
    );
    let additional = wire::read_u16(out, 10)?;
    wire::write_u16(out, 10, additional.checked_add(1)?);
    Some(len + OPT_RECORD_LEN)
}

/// Lowers the EDNS UDP payload size a message's OPT record advertises to at
/// most `max`, in place (the client's size passes upstream, clamped). Does
/// nothing to a message without OPT or one that does not walk cleanly.
pub fn clamp_edns_udp_size(msg: &mut [u8], max: u16) {
    let Some(opt) = sections::walk(msg).and_then(|walk| walk.opt) else {
        return;
    };
    let size_at = opt.record.fixed + 2;
    if opt.record.class > max {
        wire::write_u16(msg, size_at, max);
    }
}

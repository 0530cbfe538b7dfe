//! DNS over QUIC messages (RFC 9250) as a server sees them: one query per stream, with
//! the 2-byte length prefix of DNS over TCP and a message ID of 0.
//!
//! The QUIC itself (streams, their ends, connection errors) is the server's; this module
//! only reads what is DNS in a stream, names the protocol's error codes, and keeps
//! edns-tcp-keepalive out of DoQ queries (§5.5.2).

use std::borrow::Cow;
use std::ops::Range;

use domain::base::iana::OptionCode;
use domain::base::opt::{Opt, UnknownOptData};

use crate::response::message_id;
use crate::sections::{self, OptInfo};
use crate::wire::{self, HEADER_LEN, NameBuf, NameCase};

/// The ALPN token of DNS over QUIC (RFC 9250 §4.1.1).
pub const ALPN: &[u8] = b"doq";

/// RFC 9250 §8.4's error codes, for closing a connection or resetting a stream.
pub mod error_code {
    /// No error: the connection is closed because it idled.
    pub const NO_ERROR: u32 = 0x0;
    /// The server could not answer the query on this stream.
    pub const INTERNAL_ERROR: u32 = 0x1;
    /// The peer broke the protocol (§4.3.3): the connection is closed.
    pub const PROTOCOL_ERROR: u32 = 0x2;
    /// The query on this stream was given up.
    pub const REQUEST_CANCELLED: u32 = 0x3;
    /// The server is over its limits.
    pub const EXCESSIVE_LOAD: u32 = 0x4;
}

/// How a stream breaks the protocol (RFC 9250 §4.3.3); each one closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("the stream ended inside its length prefix")]
    NoLength,
    #[error("the stream ended before the {expected} bytes its prefix announced ({got})")]
    Cut { expected: usize, got: usize },
    #[error("the stream carries more than one message")]
    TrailingBytes,
    #[error("the message is shorter than a DNS header")]
    NoHeader,
    #[error("the query's message ID is {0}, not 0")]
    NonZeroId(u16),
}

/// The query in everything a client sent on one stream before ending it: exactly one
/// length-prefixed message whose ID is 0.
pub fn query_from_stream(stream: &[u8]) -> Result<&[u8], StreamError> {
    let Some((prefix, message)) = stream.split_first_chunk::<2>() else {
        return Err(StreamError::NoLength);
    };
    let expected = usize::from(u16::from_be_bytes(*prefix));
    if message.len() < expected {
        return Err(StreamError::Cut {
            expected,
            got: message.len(),
        });
    }
    if message.len() > expected {
        return Err(StreamError::TrailingBytes);
    }
    if message.len() < HEADER_LEN {
        return Err(StreamError::NoHeader);
    }
    match message_id(message) {
        Some(0) => Ok(message),
        Some(id) => Err(StreamError::NonZeroId(id)),
        None => Err(StreamError::NoHeader),
    }
}

/// Why edns-tcp-keepalive cannot be looked for in a message, or taken out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeepaliveError {
    #[error("the message's records or EDNS options do not parse")]
    Unreadable,
    /// Taking bytes out of the OPT record could change what the rest of the message says.
    #[error("the message is more than a question and its OPT record")]
    Unremovable,
}

/// Whether `query` carries the edns-tcp-keepalive option (RFC 7828), which a DoQ server
/// must treat as a protocol error (RFC 9250 §5.5.2). Fails only as `Unreadable`.
pub fn carries_tcp_keepalive(query: &[u8]) -> Result<bool, KeepaliveError> {
    Ok(opt_with_tcp_keepalive(query)?.is_some())
}

/// `query` as a DoQ client may send it: without its edns-tcp-keepalive options (RFC 9250
/// §5.5.2), its OPT record's RDLENGTH fixed, every other byte as it was. Borrowed when
/// there is none to remove.
///
/// Taken out only of a query shaped as clients send one: a question, then the OPT with a
/// root owner as the only record. Elsewhere the bytes taken out could change the rest of
/// the message (a name pointing past them, a TSIG or SIG(0) signing them): `Unremovable`.
pub fn without_tcp_keepalive(query: &[u8]) -> Result<Cow<'_, [u8]>, KeepaliveError> {
    let Some(opt) = opt_with_tcp_keepalive(query)? else {
        return Ok(Cow::Borrowed(query));
    };
    let alone = wire::counts(query) == Some([1, 0, 0, 1]) && query[opt.record.start] == 0;
    if !alone {
        return Err(KeepaliveError::Unremovable);
    }
    let rdata = opt.record.rdata_start()..opt.record.end;
    let options = &query[rdata.clone()];
    let mut kept = query[..rdata.start].to_vec();
    for (code, range) in edns_options(options)? {
        if code != OptionCode::TCP_KEEPALIVE {
            kept.extend_from_slice(&options[range]);
        }
    }
    let rdlength =
        u16::try_from(kept.len() - rdata.start).map_err(|_| KeepaliveError::Unreadable)?;
    // RDLENGTH is the last field before the RDATA.
    wire::write_u16(&mut kept, rdata.start - 2, rdlength);
    // Only bytes that are no record (trailing garbage) follow the last record.
    kept.extend_from_slice(&query[rdata.end..]);
    // A compressed question name can still read the options: a pointer's target may run
    // on past the pointer.
    if !same_question_name(query, &kept) {
        return Err(KeepaliveError::Unremovable);
    }
    Ok(Cow::Owned(kept))
}

fn same_question_name(before: &[u8], after: &[u8]) -> bool {
    let (mut name_before, mut name_after) = (NameBuf::new(), NameBuf::new());
    let end_before = wire::copy_name(before, HEADER_LEN, NameCase::Verbatim, &mut name_before);
    let end_after = wire::copy_name(after, HEADER_LEN, NameCase::Verbatim, &mut name_after);
    end_before == end_after && name_before.as_slice() == name_after.as_slice()
}

/// `message`'s OPT record, when it carries edns-tcp-keepalive.
fn opt_with_tcp_keepalive(message: &[u8]) -> Result<Option<OptInfo>, KeepaliveError> {
    let walk = sections::walk(message).ok_or(KeepaliveError::Unreadable)?;
    let Some(opt) = walk.opt else {
        return Ok(None);
    };
    let rdata = &message[opt.record.rdata_start()..opt.record.end];
    let carries = edns_options(rdata)?.any(|(code, _)| code == OptionCode::TCP_KEEPALIVE);
    Ok(carries.then_some(opt))
}

/// An EDNS option's code and length fields, before its data.
const OPTION_HEADER_LEN: usize = 4;

/// The options in an OPT record's RDATA: each one's code and where it is in `rdata`,
/// its code and length fields included.
fn edns_options(
    rdata: &[u8],
) -> Result<impl Iterator<Item = (OptionCode, Range<usize>)> + '_, KeepaliveError> {
    let options = Opt::from_slice(rdata).map_err(|_| KeepaliveError::Unreadable)?;
    let mut start = 0;
    // `from_slice` checked every option's length, so reading one never fails.
    Ok(options
        .iter::<UnknownOptData<&[u8]>>()
        .map_while(Result::ok)
        .map(move |option| {
            let end = start + OPTION_HEADER_LEN + option.as_slice().len();
            let range = start..end;
            start = end;
            (option.code(), range)
        }))
}

#[cfg(test)]
mod tests {
    use domain::base::iana::Rtype;
    use tundns_test_support::dns::{Edns, Query};

    use super::*;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut stream = (message.len() as u16).to_be_bytes().to_vec();
        stream.extend_from_slice(message);
        stream
    }

    #[test]
    fn one_message_with_id_zero_is_the_query() {
        let query = [0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1];
        assert_eq!(query_from_stream(&framed(&query)), Ok(&query[..]));
    }

    #[test]
    fn every_other_stream_is_a_protocol_error() {
        let query = [0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1];
        let mut with_id = query;
        with_id[1] = 7;
        let mut two = framed(&query);
        two.extend_from_slice(&framed(&query));
        let cut = &framed(&query)[..10];
        assert_eq!(query_from_stream(&[]), Err(StreamError::NoLength));
        assert_eq!(query_from_stream(&[0]), Err(StreamError::NoLength));
        assert_eq!(
            query_from_stream(cut),
            Err(StreamError::Cut {
                expected: 17,
                got: 8
            })
        );
        assert_eq!(query_from_stream(&two), Err(StreamError::TrailingBytes));
        assert_eq!(
            query_from_stream(&framed(&with_id)),
            Err(StreamError::NonZeroId(7))
        );
        assert_eq!(
            query_from_stream(&framed(&[0; 5])),
            Err(StreamError::NoHeader)
        );
        assert_eq!(query_from_stream(&[0, 0]), Err(StreamError::NoHeader));
    }

    const COOKIE: &[u8] = &[1, 2, 3, 4, 5, 6, 7, 8];

    fn query_with(options: &[(OptionCode, &[u8])]) -> Vec<u8> {
        let edns = options.iter().fold(Edns::new(1232), |edns, (code, data)| {
            edns.option(*code, data)
        });
        Query::new("example.com", Rtype::A).edns(edns).build()
    }

    /// `message` with an A record appended to its additional section, after its OPT, as a
    /// TSIG would be.
    fn with_record_after_opt(mut message: Vec<u8>) -> Vec<u8> {
        message[11] += 1;
        message.extend_from_slice(&[0, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
        message
    }

    #[test]
    fn keepalive_is_removed_and_every_other_byte_kept() {
        let keepalive = (OptionCode::TCP_KEEPALIVE, &[0, 100][..]);
        let cookie = (OptionCode::COOKIE, COOKIE);
        let padding = (OptionCode::PADDING, &[0; 5][..]);
        let cases = [
            (vec![keepalive], vec![]),
            (vec![(OptionCode::TCP_KEEPALIVE, &[][..])], vec![]),
            (vec![cookie, keepalive, padding], vec![cookie, padding]),
            (vec![keepalive, cookie, keepalive], vec![cookie]),
        ];
        for (sent, kept) in cases {
            let query = query_with(&sent);
            let expected = query_with(&kept);
            assert_eq!(carries_tcp_keepalive(&query), Ok(true));
            assert_eq!(without_tcp_keepalive(&query).as_deref(), Ok(&expected[..]));
            assert_eq!(carries_tcp_keepalive(&expected), Ok(false));
            let mut trailing = query.clone();
            trailing.push(0xff);
            let mut expected_trailing = expected;
            expected_trailing.push(0xff);
            assert_eq!(
                without_tcp_keepalive(&trailing).as_deref(),
                Ok(&expected_trailing[..]),
                "bytes after the last record stay"
            );
        }
    }

    #[test]
    fn keepalive_is_taken_out_only_of_a_question_and_its_opt() {
        let query = query_with(&[(OptionCode::TCP_KEEPALIVE, &[])]);
        let signed = with_record_after_opt(query);
        assert_eq!(carries_tcp_keepalive(&signed), Ok(true));
        assert_eq!(
            without_tcp_keepalive(&signed),
            Err(KeepaliveError::Unremovable)
        );
        // Found by the doq_stream fuzz target: the question name is a label, then a
        // pointer to offset 2, where a 39-byte label runs on into the OPT's keepalive.
        let name_reads_options = [
            0, 0, 39, 0, 0, 1, 0, 0, 0, 0, 0, 1, 3, 119, 0, 0, 192, 2, 4, 0, 1, 4, 1, 1, 0, 0, 41,
            4, 208, 0, 0, 0, 0, 0, 4, 0, 11, 0, 0, 3, 119, 0, 1, 0, 0, 1,
        ];
        assert_eq!(carries_tcp_keepalive(&name_reads_options), Ok(true));
        assert_eq!(
            without_tcp_keepalive(&name_reads_options),
            Err(KeepaliveError::Unremovable)
        );
        let without_keepalive = with_record_after_opt(query_with(&[]));
        assert!(matches!(
            without_tcp_keepalive(&without_keepalive),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn a_query_without_keepalive_is_borrowed_as_it_is() {
        let plain = Query::new("example.com", Rtype::A).build();
        let with_cookie = query_with(&[(OptionCode::COOKIE, COOKIE)]);
        for query in [plain, query_with(&[]), with_cookie] {
            assert_eq!(carries_tcp_keepalive(&query), Ok(false));
            let sent = without_tcp_keepalive(&query).unwrap();
            assert!(matches!(sent, Cow::Borrowed(_)));
            assert_eq!(*sent, query[..]);
        }
    }

    #[test]
    fn unreadable_options_or_records_are_refused() {
        let query = query_with(&[
            (OptionCode::TCP_KEEPALIVE, &[]),
            (OptionCode::COOKIE, COOKIE),
        ]);
        // The cookie's OPTION-LENGTH, the message's last option, now runs past the RDATA.
        let mut overlong = query.clone();
        let cookie_len_at = overlong.len() - COOKIE.len() - 1;
        overlong[cookie_len_at] = 9;
        // RDLENGTH cuts the cookie inside its code and length fields.
        let mut cut = query.clone();
        let rdlength_low_byte_at = cut.len() - COOKIE.len() - 9;
        cut[rdlength_low_byte_at] = 6;
        cut.truncate(cut.len() - COOKIE.len() - 2);
        let mut records_cut = query.clone();
        records_cut.pop();
        for bad in [overlong, cut, records_cut, vec![0; 5]] {
            let unreadable = KeepaliveError::Unreadable;
            assert_eq!(carries_tcp_keepalive(&bad), Err(unreadable), "{bad:?}");
            assert_eq!(without_tcp_keepalive(&bad), Err(unreadable), "{bad:?}");
        }
    }
}

//! Any bytes as everything a DNS over QUIC client sent on one stream before ending it,
//! read as the server reads it (`doq::query_from_stream`). Never panics; a query taken is
//! exactly the stream after its 2-byte length, has ID 0 and frames back into the same
//! stream; a stream refused is refused for what its bytes show. On a query taken, the
//! edns-tcp-keepalive check and its removal (what the DoQ upstream sends) agree, and the
//! removal leaves a query that carries none and parses as the original did (same question
//! and EDNS parameters), or is refused as unremovable.

#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use tundns_dns::doq::{
    KeepaliveError, StreamError, carries_tcp_keepalive, query_from_stream, without_tcp_keepalive,
};
use tundns_dns::tcp::append_framed;
use tundns_dns::{HEADER_LEN, message_id, parse_query};

fuzz_target!(|stream: &[u8]| {
    match query_from_stream(stream) {
        Ok(query) => {
            assert_eq!(
                query,
                &stream[2..],
                "the query is the stream after its length"
            );
            assert_eq!(message_id(query), Some(0));
            let mut reframed = Vec::new();
            assert!(append_framed(&mut reframed, query));
            assert_eq!(reframed, stream, "the query frames back into the stream");
            check_keepalive_removal(query);
        }
        Err(error) => check_refusal(stream, error),
    }
});

/// The refusal is the first rule `stream` breaks, in the order the protocol reads it.
fn check_refusal(stream: &[u8], error: StreamError) {
    let Some((prefix, message)) = stream.split_first_chunk::<2>() else {
        assert_eq!(error, StreamError::NoLength);
        return;
    };
    let expected = usize::from(u16::from_be_bytes(*prefix));
    let got = message.len();
    let reason = if got < expected {
        StreamError::Cut { expected, got }
    } else if got > expected {
        StreamError::TrailingBytes
    } else if got < HEADER_LEN {
        StreamError::NoHeader
    } else {
        StreamError::NonZeroId(u16::from_be_bytes([message[0], message[1]]))
    };
    assert_eq!(error, reason);
    assert_ne!(error, StreamError::NonZeroId(0));
}

fn check_keepalive_removal(query: &[u8]) {
    match (carries_tcp_keepalive(query), without_tcp_keepalive(query)) {
        (Ok(false), Ok(sent)) => assert!(matches!(sent, Cow::Borrowed(sent) if sent == query)),
        (Ok(true), Ok(sent)) => {
            assert!(sent.len() < query.len(), "an option was removed");
            assert_eq!(carries_tcp_keepalive(&sent), Ok(false));
            assert_eq!(
                sent[..HEADER_LEN],
                query[..HEADER_LEN],
                "the header is kept"
            );
            let meaning = |message| {
                parse_query(message).map(|parsed| (parsed.question_wire().to_vec(), parsed.edns()))
            };
            assert_eq!(
                meaning(&sent),
                meaning(query),
                "the query parses as it did, with the same question and EDNS parameters"
            );
        }
        (Ok(true), Err(KeepaliveError::Unremovable))
        | (Err(KeepaliveError::Unreadable), Err(KeepaliveError::Unreadable)) => {}
        (carries, sent) => panic!("the check ({carries:?}) and the removal ({sent:?}) disagree"),
    }
}

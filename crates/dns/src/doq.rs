//! DNS over QUIC messages (RFC 9250) as a server sees them: one query per stream, with
//! the 2-byte length prefix of DNS over TCP and a message ID of 0.
//!
//! The QUIC itself (streams, their ends, connection errors) is the server's; this module
//! only reads what is DNS in a stream and names the protocol's error codes.

use crate::response::message_id;
use crate::wire::HEADER_LEN;

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

#[cfg(test)]
mod tests {
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
}

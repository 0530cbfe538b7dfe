//! DNS over TCP framing (RFC 1035 §4.2.2, RFC 7766 §8): each message is preceded
//! by its length as a 2-byte big-endian integer.

use core::fmt;

pub use crate::wire::MAX_MESSAGE_LEN;

/// A framing violation. The stream cannot be resynchronised: close the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A length prefix of 0: no DNS message is empty.
    ZeroLength,
    /// A length prefix above the decoder's limit.
    TooLong { len: usize, max: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::ZeroLength => f.write_str("DNS/TCP frame with length 0"),
            FrameError::TooLong { len, max } => {
                write!(f, "DNS/TCP frame of {len} bytes exceeds the limit of {max}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// The 2-byte length prefix for a message of `len` bytes, or `None` when `len`
/// is 0 or does not fit in 16 bits.
pub fn length_prefix(len: usize) -> Option<[u8; 2]> {
    match u16::try_from(len) {
        Ok(0) | Err(_) => None,
        Ok(len) => Some(len.to_be_bytes()),
    }
}

/// Appends `message` to `framed` with its length prefix. Nothing is appended, and the
/// result is false, for an empty message (a query dropped unanswered has nothing to say,
/// which is not a zero-length message) or one that does not fit in 16 bits.
pub fn append_framed(framed: &mut Vec<u8>, message: &[u8]) -> bool {
    let Some(prefix) = length_prefix(message.len()) else {
        return false;
    };
    framed.extend_from_slice(&prefix);
    framed.extend_from_slice(message);
    true
}

/// A bounded decoder turning a byte stream into whole DNS messages.
///
/// Memory is fixed at construction: one frame (prefix + `max_message_len`).
/// [`push`](Self::push) takes only what fits and reports how much it took; the
/// caller drains messages with [`next_message`](Self::next_message) and pushes
/// the rest. Since the buffer holds a whole maximal frame, draining always
/// makes room, so a well-behaved stream never stalls.
pub struct FrameDecoder {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    max_message_len: usize,
}

impl FrameDecoder {
    /// A decoder for messages of at most `max_message_len` bytes (clamped to
    /// [1, 65535]).
    pub fn new(max_message_len: usize) -> Self {
        let max_message_len = max_message_len.clamp(1, MAX_MESSAGE_LEN);
        FrameDecoder {
            buf: vec![0; 2 + max_message_len].into_boxed_slice(),
            start: 0,
            end: 0,
            max_message_len,
        }
    }

    /// How many bytes the next [`push`](Self::push) takes at most.
    pub fn room(&self) -> usize {
        self.buf.len() - (self.end - self.start)
    }

    /// Buffers as much of `data` as fits; returns the number of bytes taken.
    pub fn push(&mut self, data: &[u8]) -> usize {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let taken = data.len().min(self.buf.len() - self.end);
        self.buf[self.end..self.end + taken].copy_from_slice(&data[..taken]);
        self.end += taken;
        taken
    }

    /// The next whole message, `Ok(None)` when more bytes are needed, or the
    /// framing error that ends the stream.
    pub fn next_message(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let available = &self.buf[self.start..self.end];
        if available.len() < 2 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([available[0], available[1]]));
        if len == 0 {
            return Err(FrameError::ZeroLength);
        }
        if len > self.max_message_len {
            return Err(FrameError::TooLong {
                len,
                max: self.max_message_len,
            });
        }
        if available.len() < 2 + len {
            return Ok(None);
        }
        let message_start = self.start + 2;
        self.start = message_start + len;
        if self.start == self.end {
            // Nothing left: the next push need not move anything.
            let message = message_start..message_start + len;
            self.start = 0;
            self.end = 0;
            return Ok(Some(&self.buf[message]));
        }
        Ok(Some(&self.buf[message_start..message_start + len]))
    }

    /// Bytes buffered but not yet returned as a message (a partial frame, or
    /// frames not drained yet). Non-zero at connection close means a cut message.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(msg: &[u8]) -> Vec<u8> {
        let mut framed = length_prefix(msg.len()).unwrap().to_vec();
        framed.extend_from_slice(msg);
        framed
    }

    #[test]
    fn prefix_bounds() {
        assert_eq!(length_prefix(0), None);
        assert_eq!(length_prefix(1), Some([0, 1]));
        assert_eq!(length_prefix(65535), Some([0xff, 0xff]));
        assert_eq!(length_prefix(65536), None);
        let mut framed = vec![9];
        assert!(append_framed(&mut framed, b"ab"));
        assert!(!append_framed(&mut framed, b""));
        assert!(!append_framed(&mut framed, &[0; 65536]));
        assert_eq!(framed, [9, 0, 2, b'a', b'b']);
    }

    #[test]
    fn several_messages_in_one_push() {
        let mut stream = frame(b"first");
        stream.extend(frame(b"second"));
        let mut decoder = FrameDecoder::new(512);
        assert_eq!(decoder.push(&stream), stream.len());
        assert_eq!(decoder.next_message().unwrap(), Some(&b"first"[..]));
        assert_eq!(decoder.next_message().unwrap(), Some(&b"second"[..]));
        assert_eq!(decoder.next_message().unwrap(), None);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn byte_by_byte() {
        let stream = frame(b"hello dns");
        let mut decoder = FrameDecoder::new(512);
        for (i, byte) in stream.iter().enumerate() {
            assert_eq!(decoder.next_message().unwrap(), None);
            assert_eq!(decoder.push(std::slice::from_ref(byte)), 1);
            assert_eq!(decoder.buffered(), i + 1);
        }
        assert_eq!(decoder.next_message().unwrap(), Some(&b"hello dns"[..]));
    }

    #[test]
    fn zero_length_is_an_error() {
        let mut decoder = FrameDecoder::new(512);
        decoder.push(&[0, 0, 1, 2]);
        assert_eq!(decoder.next_message(), Err(FrameError::ZeroLength));
    }

    #[test]
    fn too_long_is_an_error_before_the_body_arrives() {
        let mut decoder = FrameDecoder::new(100);
        decoder.push(&[0, 101]);
        assert_eq!(
            decoder.next_message(),
            Err(FrameError::TooLong { len: 101, max: 100 })
        );
    }

    #[test]
    fn push_is_bounded_and_draining_makes_room() {
        let max = 10;
        let mut stream = Vec::new();
        for i in 0..5u8 {
            stream.extend(frame(&[i; 10]));
        }
        let mut decoder = FrameDecoder::new(max);
        let mut offset = 0;
        let mut received = Vec::new();
        // Bounded loop: each round either takes bytes or yields a message.
        for _ in 0..100 {
            offset += decoder.push(&stream[offset..]);
            assert!(decoder.buffered() <= 2 + max);
            while let Some(message) = decoder.next_message().unwrap() {
                received.push(message.to_vec());
            }
            if offset == stream.len() && decoder.buffered() == 0 {
                break;
            }
        }
        assert_eq!(received, (0..5u8).map(|i| vec![i; 10]).collect::<Vec<_>>());
    }

    #[test]
    fn largest_message_fits() {
        let body = vec![7u8; MAX_MESSAGE_LEN];
        let stream = frame(&body);
        let mut decoder = FrameDecoder::new(usize::MAX);
        assert_eq!(decoder.push(&stream), stream.len());
        assert_eq!(
            decoder.next_message().unwrap().unwrap().len(),
            MAX_MESSAGE_LEN
        );
    }
}

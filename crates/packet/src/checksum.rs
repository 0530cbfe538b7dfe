//! The Internet checksum (RFC 1071) and the IPv4/IPv6 pseudo-headers.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Internet checksum of `data`, ready to store in a header.
///
/// Over a header or segment that already contains its checksum, the result is 0 when
/// the checksum is valid.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    Checksum::new().add_bytes(data).finish()
}

/// An accumulating ones' complement sum.
///
/// Chunks passed to [`add_bytes`](Self::add_bytes) are summed as if concatenated, so
/// every chunk except the last must have an even length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checksum {
    // Deferred carries: 64 bits absorb 2^32 additions of 32-bit words, far beyond any packet.
    sum: u64,
}

impl Checksum {
    /// An empty sum.
    #[inline]
    pub const fn new() -> Self {
        Self { sum: 0 }
    }

    /// Starts a TCP/UDP checksum with the IPv4 pseudo-header (RFC 768, RFC 9293 3.1).
    #[inline]
    pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> Self {
        Self::new()
            .add_u32(src.to_bits())
            .add_u32(dst.to_bits())
            .add_u16(u16::from(protocol))
            .add_u16(length)
    }

    /// Starts a TCP/UDP/ICMPv6 checksum with the IPv6 pseudo-header (RFC 8200 8.1).
    #[inline]
    pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, length: u32) -> Self {
        Self::new()
            .add_bytes(&src.octets())
            .add_bytes(&dst.octets())
            .add_u32(length)
            .add_u16(u16::from(next_header))
    }

    /// Adds one 16-bit word.
    #[inline]
    pub const fn add_u16(self, word: u16) -> Self {
        Self {
            sum: self.sum + word as u64,
        }
    }

    /// Adds two 16-bit words given as one big-endian `u32`.
    #[inline]
    pub const fn add_u32(self, words: u32) -> Self {
        Self {
            sum: self.sum + words as u64,
        }
    }

    /// Adds `data` as big-endian 16-bit words, padding an odd last byte with zero.
    #[inline]
    pub fn add_bytes(self, data: &[u8]) -> Self {
        Self {
            sum: self.sum + sum_be_words(data),
        }
    }

    /// The ones' complement of the folded sum: the value to store in a header.
    #[inline]
    pub const fn finish(self) -> u16 {
        !self.fold()
    }

    /// The folded ones' complement sum, before complementing.
    #[inline]
    const fn fold(self) -> u16 {
        let mut sum = self.sum;
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }
}

/// Sums `data` as 32-bit big-endian words into a 64-bit accumulator.
///
/// Summing 32-bit words and folding later gives the same ones' complement result as
/// summing 16-bit words (2^16 ≡ 1 mod 2^16 - 1), at half the additions; the plain loop
/// over fixed-size chunks lets the compiler vectorise it.
fn sum_be_words(data: &[u8]) -> u64 {
    let mut sum = 0u64;
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_be_bytes(word);
        sum += (word >> 32) + (word & 0xffff_ffff);
    }
    let mut rest = chunks.remainder();
    if let Some((head, tail)) = rest.split_first_chunk::<4>() {
        sum += u64::from(u32::from_be_bytes(*head));
        rest = tail;
    }
    if let Some((head, tail)) = rest.split_first_chunk::<2>() {
        sum += u64::from(u16::from_be_bytes(*head));
        rest = tail;
    }
    if let Some(&last) = rest.first() {
        sum += u64::from(last) << 8;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward RFC 1071 reference: 16-bit words, fold at the end.
    fn reference(data: &[u8]) -> u16 {
        let mut sum = 0u32;
        for pair in data.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn matches_reference_for_every_length() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 151 + 7) as u8).collect();
        for len in 0..data.len() {
            assert_eq!(checksum(&data[..len]), reference(&data[..len]), "len {len}");
        }
    }

    #[test]
    fn all_ones_input_carries() {
        let data = [0xffu8; 1501];
        assert_eq!(checksum(&data), reference(&data));
    }

    #[test]
    fn stored_checksum_verifies_to_zero() {
        // A real IPv4 header (from Wikipedia's checksum example), checksum b861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&header), 0);
        let mut zeroed = header;
        zeroed[10..12].fill(0);
        assert_eq!(checksum(&zeroed), 0xb861);
    }

    #[test]
    fn chunks_sum_like_concatenation() {
        let data: Vec<u8> = (0..77u8).collect();
        let split = Checksum::new()
            .add_bytes(&data[..20])
            .add_bytes(&data[20..])
            .finish();
        assert_eq!(split, checksum(&data));
    }
}

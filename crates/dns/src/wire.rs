//! Hand-written, bounds-checked reads of the DNS wire format (RFC 1035 §4).
//!
//! These walk a message without allocating. Every read is checked, so malformed
//! input yields `None`, never a panic.

/// Length of the fixed DNS header.
pub const HEADER_LEN: usize = 12;
/// The largest DNS message: the TCP length prefix is 16 bits, and no transport carries more.
pub const MAX_MESSAGE_LEN: usize = u16::MAX as usize;
/// Longest uncompressed name on the wire, root label included (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 255;
/// Fixed part of a resource record after its owner name: type, class, TTL, RDLENGTH.
pub const RR_FIXED_LEN: usize = 10;
/// RR type of the EDNS OPT pseudo-record (RFC 6891).
pub const RTYPE_OPT: u16 = 41;
/// Length of an OPT record without options: root owner + type, class, TTL, RDLENGTH.
pub const OPT_RECORD_LEN: usize = 1 + RR_FIXED_LEN;

pub const FLAGS_QR: u8 = 0x80;
pub const FLAGS_AA: u8 = 0x04;
pub const FLAGS_OPCODE_MASK: u8 = 0x78;
pub const FLAGS_TC: u8 = 0x02;
pub const FLAGS_RD: u8 = 0x01;
pub const FLAGS2_RA: u8 = 0x80;
pub const FLAGS2_AD: u8 = 0x20;
pub const FLAGS2_CD: u8 = 0x10;

#[inline]
pub fn read_u16(msg: &[u8], pos: usize) -> Option<u16> {
    let bytes = msg.get(pos..pos.checked_add(2)?)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

#[inline]
pub fn write_u16(buf: &mut [u8], pos: usize, value: u16) {
    buf[pos..pos + 2].copy_from_slice(&value.to_be_bytes());
}

/// Section counts of a header: QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT.
#[inline]
pub fn counts(msg: &[u8]) -> Option<[u16; 4]> {
    Some([
        read_u16(msg, 4)?,
        read_u16(msg, 6)?,
        read_u16(msg, 8)?,
        read_u16(msg, 10)?,
    ])
}

/// A decompressed name: wire form, root label included.
pub struct NameBuf {
    pub bytes: [u8; MAX_NAME_LEN],
    pub len: usize,
}

impl NameBuf {
    pub const fn new() -> Self {
        NameBuf {
            bytes: [0; MAX_NAME_LEN],
            len: 0,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// How [`copy_name`] writes the labels.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum NameCase {
    /// As they are.
    Verbatim,
    /// ASCII letters lowercased (names compare case-insensitively).
    Lowercase,
}

/// Walks the name starting at `start`, following compression pointers, and
/// calls `visit` with each label (length byte included, root label last).
/// `visit` returning `false` stops the walk with `None`.
///
/// Returns the offset just past the name in the message (past the first pointer
/// when the name is compressed).
///
/// Rejected (`None`): reads past the end, label types 0x40/0x80, a decompressed
/// name longer than 255 bytes, and pointers that do not point strictly before the
/// place the walk last jumped to. That last rule forbids forward pointers and
/// makes loops impossible: the jump target decreases strictly at every hop.
#[inline]
fn walk_labels(msg: &[u8], start: usize, mut visit: impl FnMut(&[u8]) -> bool) -> Option<usize> {
    let mut pos = start;
    let mut pointer_limit = start;
    let mut end_in_message = None;
    let mut name_len = 0usize;
    loop {
        let len_byte = *msg.get(pos)?;
        match len_byte & 0xc0 {
            // A length byte with the top two bits clear: a label of 0..=63 bytes.
            0x00 => {
                let label_len = usize::from(len_byte);
                name_len += 1 + label_len;
                // The root label still has to fit after a non-root one.
                if name_len + usize::from(label_len != 0) > MAX_NAME_LEN {
                    return None;
                }
                let label = msg.get(pos..pos + 1 + label_len)?;
                if !visit(label) {
                    return None;
                }
                pos += 1 + label_len;
                if label_len == 0 {
                    return Some(end_in_message.unwrap_or(pos));
                }
            }
            0xc0 => {
                let low = *msg.get(pos + 1)?;
                let target = usize::from(len_byte & 0x3f) << 8 | usize::from(low);
                if target >= pointer_limit {
                    return None;
                }
                end_in_message.get_or_insert(pos + 2);
                pointer_limit = target;
                pos = target;
            }
            _ => return None,
        }
    }
}

/// Validates the name at `start`; returns the offset just past it.
pub fn skip_name(msg: &[u8], start: usize) -> Option<usize> {
    walk_labels(msg, start, |_| true)
}

/// Decompresses the name at `start` into `out`; returns the offset just past it.
///
/// On the answer path every query's name goes through here, so an uncompressed name (every
/// question in practice) is copied and lowercased as one run of bytes rather than label by
/// label. Lowercasing leaves the length bytes alone: they are below 64.
pub fn copy_name(msg: &[u8], start: usize, case: NameCase, out: &mut NameBuf) -> Option<usize> {
    let mut len = 0;
    let end = walk_labels(msg, start, |label| {
        len += label.len();
        true
    })?;
    // Uncompressed, the name is exactly `msg[start..end]`. Through a pointer, `end` is two
    // bytes past the labels before it and `len` adds the target's length, which is 1 (the
    // root) or at least 3, never 2: the two cannot meet.
    if end == start + len {
        out.bytes[..len].copy_from_slice(&msg[start..end]);
    } else {
        let mut copied = 0;
        walk_labels(msg, start, |label| {
            out.bytes[copied..copied + label.len()].copy_from_slice(label);
            copied += label.len();
            true
        })?;
    }
    if case == NameCase::Lowercase {
        out.bytes[..len].make_ascii_lowercase();
    }
    out.len = len;
    Some(end)
}

/// Whether the name at `start` equals `lowercase_wire` (an uncompressed name
/// in lowercase), ignoring ASCII case; returns the offset just past it. `None`
/// when the name is malformed or differs.
pub fn name_equals(msg: &[u8], start: usize, lowercase_wire: &[u8]) -> Option<usize> {
    let mut compared = 0;
    let end = walk_labels(msg, start, |label| {
        let Some(expected) = lowercase_wire.get(compared..compared + label.len()) else {
            return false;
        };
        compared += label.len();
        // The length bytes are below 64, so lowercasing leaves them alone.
        label
            .iter()
            .zip(expected)
            .all(|(byte, expected)| byte.to_ascii_lowercase() == *expected)
    })?;
    (compared == lowercase_wire.len()).then_some(end)
}

/// The fixed fields of a resource record.
pub struct RecordHeader {
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    /// Whether the owner name is the root (a single zero byte, uncompressed).
    pub owner_is_root: bool,
}

/// Reads the record at `pos`; returns it and the offset just past it.
pub fn read_record(msg: &[u8], pos: usize) -> Option<(RecordHeader, usize)> {
    let owner_is_root = msg.get(pos) == Some(&0);
    let fixed = skip_name(msg, pos)?;
    let fields = msg.get(fixed..fixed + RR_FIXED_LEN)?;
    let rdata_len = usize::from(u16::from_be_bytes([fields[8], fields[9]]));
    let rdata_start = fixed + RR_FIXED_LEN;
    let end = rdata_start + rdata_len;
    if end > msg.len() {
        return None;
    }
    let header = RecordHeader {
        rtype: u16::from_be_bytes([fields[0], fields[1]]),
        class: u16::from_be_bytes([fields[2], fields[3]]),
        ttl: u32::from_be_bytes([fields[4], fields[5], fields[6], fields[7]]),
        owner_is_root,
    };
    Some((header, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(msg: &[u8], start: usize) -> Option<(usize, Vec<u8>)> {
        let mut out = NameBuf::new();
        let end = copy_name(msg, start, NameCase::Lowercase, &mut out)?;
        let lower = out.as_slice().to_vec();
        assert_eq!(skip_name(msg, start), Some(end));
        assert_eq!(name_equals(msg, start, &lower), Some(end));
        Some((end, out.as_slice().to_vec()))
    }

    #[test]
    fn plain_name_is_lowercased() {
        let msg = b"\x03WwW\x07example\x03COM\x00rest";
        let (end, name) = walk(msg, 0).unwrap();
        assert_eq!(end, 17);
        assert_eq!(name, b"\x03www\x07example\x03com\x00");
    }

    #[test]
    fn verbatim_keeps_case() {
        let mut out = NameBuf::new();
        copy_name(b"\x02Ab\x00", 0, NameCase::Verbatim, &mut out).unwrap();
        assert_eq!(out.as_slice(), b"\x02Ab\x00");
    }

    #[test]
    fn name_equality_ignores_case_only() {
        let msg = b"\x03WwW\x07example\x00";
        assert_eq!(
            name_equals(msg, 0, b"\x03www\x07example\x00"),
            Some(msg.len())
        );
        assert_eq!(name_equals(msg, 0, b"\x03www\x07exampla\x00"), None);
        assert_eq!(name_equals(msg, 0, b"\x03www\x00"), None);
        assert_eq!(name_equals(msg, 0, b"\x03www\x07example\x03com\x00"), None);
        assert_eq!(name_equals(b"\x00", 0, b"\x00"), Some(1));
    }

    #[test]
    fn backward_pointer_is_followed() {
        // "example.com" at 0, then "www" + pointer to 0 at 13.
        let msg = b"\x07example\x03com\x00\x03www\xc0\x00";
        let (end, name) = walk(msg, 13).unwrap();
        assert_eq!(end, msg.len());
        assert_eq!(name, b"\x03www\x07example\x03com\x00");
    }

    #[test]
    fn compressed_name_is_copied_label_by_label_and_lowercased() {
        // "Example.COM" at 0; "WWW" + pointer to it at 13; "A" + pointer to the root at 19.
        let msg = b"\x07Example\x03COM\x00\x03WWW\xc0\x00\x01A\xc0\x0c";
        let (end, name) = walk(msg, 13).unwrap();
        assert_eq!(end, 19);
        assert_eq!(name, b"\x03www\x07example\x03com\x00");
        // Two bytes of labels, then a pointer to a one-byte name: `end - start` (4) and the
        // name's length (3) differ, so this is not taken for an uncompressed name.
        let (end, name) = walk(msg, 19).unwrap();
        assert_eq!(end, msg.len());
        assert_eq!(name, b"\x01a\x00");
    }

    #[test]
    fn pointer_to_itself_or_forward_is_rejected() {
        assert!(walk(b"\xc0\x00", 0).is_none());
        assert!(walk(b"\xc0\x02\x00", 0).is_none());
    }

    #[test]
    fn pointer_loop_is_rejected() {
        // 0: "a" + pointer to 4; 4: pointer to 0 — each points at the other.
        let msg = b"\x01a\xc0\x04\xc0\x00";
        assert!(walk(msg, 4).is_none());
        assert!(walk(msg, 0).is_none());
    }

    #[test]
    fn pointer_out_of_range_is_rejected() {
        let mut msg = vec![0u8; 20];
        msg.extend_from_slice(b"\xc0\x30");
        assert!(walk(&msg, 20).is_none());
    }

    #[test]
    fn reserved_label_types_are_rejected() {
        assert!(walk(b"\x41aaaa\x00", 0).is_none());
        assert!(walk(b"\x81aaaa\x00", 0).is_none());
    }

    #[test]
    fn name_length_limits() {
        // 63-byte label accepted, 64 is a reserved type (0x40), too long.
        let mut ok = vec![63u8];
        ok.extend([b'a'; 63]);
        ok.push(0);
        assert!(walk(&ok, 0).is_some());

        // Four 63-byte labels: 4 * 64 + 1 = 257 > 255.
        let mut long = Vec::new();
        for _ in 0..4 {
            long.push(63u8);
            long.extend([b'a'; 63]);
        }
        long.push(0);
        assert!(walk(&long, 0).is_none());

        // Exactly 255: three 63-byte labels (192) + one 61-byte label (62) + root.
        let mut max = Vec::new();
        for _ in 0..3 {
            max.push(63u8);
            max.extend([b'a'; 63]);
        }
        max.push(61);
        max.extend([b'b'; 61]);
        max.push(0);
        assert_eq!(max.len(), 255);
        assert_eq!(walk(&max, 0).unwrap().1.len(), 255);
    }

    #[test]
    fn truncated_name_is_rejected() {
        assert!(walk(b"\x03ww", 0).is_none());
        assert!(walk(b"\x03www", 0).is_none());
        assert!(walk(b"\xc0", 0).is_none());
        assert!(walk(b"", 0).is_none());
    }

    #[test]
    fn record_reading() {
        let msg = b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x02ab";
        let (rr, end) = read_record(msg, 0).unwrap();
        assert_eq!(rr.rtype, RTYPE_OPT);
        assert_eq!(rr.class, 1232);
        assert_eq!(rr.ttl, 0x8000);
        assert!(rr.owner_is_root);
        assert_eq!(end, 13);
        assert!(read_record(&msg[..12], 0).is_none());
        assert!(read_record(&msg[..8], 0).is_none());
    }
}

//! Walking the records of a whole message, with the offsets the in-place
//! rewriters need (TTL fields, record boundaries, the OPT record).

use crate::wire::{self, HEADER_LEN, NameBuf, NameCase, RR_FIXED_LEN};

/// The section a record sits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Section {
    Answer,
    Authority,
    Additional,
}

/// One resource record, located in its message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Record {
    pub section: Section,
    /// Offset of the owner name.
    pub start: usize,
    /// Offset of the TYPE field, just past the owner name.
    pub fixed: usize,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    /// Offset just past the record (the end of its RDATA).
    pub end: usize,
}

impl Record {
    /// Offset of the TTL field.
    pub fn ttl_at(&self) -> usize {
        self.fixed + 4
    }

    pub fn rdata_start(&self) -> usize {
        self.fixed + RR_FIXED_LEN
    }

    pub fn is_opt(&self) -> bool {
        self.rtype == wire::RTYPE_OPT
    }
}

/// The records of a message after its question section, in order. Stops at the
/// first malformed record (yielding `Err(())` once) or after the last counted one.
pub(crate) struct Records<'a> {
    msg: &'a [u8],
    pos: usize,
    index: u32,
    answers: u32,
    authorities: u32,
    total: u32,
    failed: bool,
}

impl<'a> Records<'a> {
    /// Skips the header and the QDCOUNT questions; `None` when they do not read.
    pub fn new(msg: &'a [u8]) -> Option<Records<'a>> {
        let [qdcount, ancount, nscount, arcount] = wire::counts(msg)?;
        let mut pos = HEADER_LEN;
        for _ in 0..qdcount {
            pos = wire::skip_name(msg, pos)? + 4;
            if pos > msg.len() {
                return None;
            }
        }
        let answers = u32::from(ancount);
        let authorities = u32::from(nscount);
        Some(Records {
            msg,
            pos,
            index: 0,
            answers,
            authorities,
            total: answers + authorities + u32::from(arcount),
            failed: false,
        })
    }

    /// Offset just past the question section, before any record is read; then
    /// just past the last record read.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn section_of(&self, index: u32) -> Section {
        if index < self.answers {
            Section::Answer
        } else if index < self.answers + self.authorities {
            Section::Authority
        } else {
            Section::Additional
        }
    }
}

impl Iterator for Records<'_> {
    type Item = Result<Record, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.index >= self.total {
            return None;
        }
        let Some(record) = read_record(self.msg, self.pos, self.section_of(self.index)) else {
            self.failed = true;
            return Some(Err(()));
        };
        self.index += 1;
        self.pos = record.end;
        Some(Ok(record))
    }
}

fn read_record(msg: &[u8], start: usize, section: Section) -> Option<Record> {
    let fixed = wire::skip_name(msg, start)?;
    let fields = msg.get(fixed..fixed + RR_FIXED_LEN)?;
    let rdata_len = usize::from(u16::from_be_bytes([fields[8], fields[9]]));
    let end = fixed + RR_FIXED_LEN + rdata_len;
    if end > msg.len() {
        return None;
    }
    Some(Record {
        section,
        start,
        fixed,
        rtype: u16::from_be_bytes([fields[0], fields[1]]),
        class: u16::from_be_bytes([fields[2], fields[3]]),
        ttl: u32::from_be_bytes([fields[4], fields[5], fields[6], fields[7]]),
        end,
    })
}

/// The owner name of a record, lowercased and decompressed, for RRset grouping.
pub(crate) fn owner_name(msg: &[u8], record: &Record, out: &mut NameBuf) -> bool {
    wire::copy_name(msg, record.start, NameCase::Lowercase, out).is_some()
}

/// The OPT record of a message, located.
pub(crate) struct OptInfo {
    pub record: Record,
    /// Whether the OPT is the message's last record, so the message can be cut there.
    pub is_last: bool,
}

/// What a full walk of a message finds.
pub(crate) struct Walk {
    /// Offset of the first question, past the header.
    pub question_end: usize,
    /// Offset just past the last record; bytes after it are trailing garbage.
    pub end: usize,
    pub opt: Option<OptInfo>,
}

impl Walk {
    /// Offset just past the last record that is not a final OPT: where the
    /// message can be cut to drop its OPT.
    pub fn end_without_opt(&self) -> usize {
        match &self.opt {
            Some(opt) if opt.is_last => opt.record.start,
            _ => self.end,
        }
    }
}

/// Walks a whole message; `None` when it is malformed. A second OPT, or one
/// outside the additional section, is malformed.
pub(crate) fn walk(msg: &[u8]) -> Option<Walk> {
    let mut records = Records::new(msg)?;
    let question_end = records.position();
    let mut opt: Option<OptInfo> = None;
    for record in &mut records {
        let record = record.ok()?;
        if let Some(found) = &mut opt {
            found.is_last = false;
        }
        if record.is_opt() {
            if opt.is_some() || record.section != Section::Additional {
                return None;
            }
            opt = Some(OptInfo {
                record,
                is_last: true,
            });
        }
    }
    Some(Walk {
        question_end,
        end: records.position(),
        opt,
    })
}

/// Reads an RFC 2181 §8 TTL: values with the top bit set count as 0.
pub(crate) fn effective_ttl(ttl: u32) -> u32 {
    if ttl > i32::MAX as u32 { 0 } else { ttl }
}

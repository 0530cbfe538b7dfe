//! Validating a client query.

use core::fmt;
use core::hash::{Hash, Hasher};

use domain::base::iana::{Class, OptRcode, Rtype};

use crate::wire::{self, NameBuf, NameCase};

/// The question of a message: name, type and class.
///
/// The name is kept decompressed and lowercased, so equality and hashing are
/// case-insensitive, as DNS names are; the client's own spelling stays in
/// [`Query::question_wire`]. A `Question` is a fixed-size value (no heap).
#[derive(Clone)]
pub struct Question {
    name: [u8; wire::MAX_NAME_LEN],
    name_len: u8,
    qtype: u16,
    qclass: u16,
}

impl Question {
    /// Reads the question at `pos`; returns it and the offset just past it.
    pub(crate) fn read(msg: &[u8], pos: usize) -> Option<(Question, usize)> {
        let mut name = NameBuf::new();
        let fixed = wire::copy_name(msg, pos, NameCase::Lowercase, &mut name)?;
        let qtype = wire::read_u16(msg, fixed)?;
        let qclass = wire::read_u16(msg, fixed + 2)?;
        let question = Question {
            name: name.bytes,
            name_len: name.len as u8,
            qtype,
            qclass,
        };
        Some((question, fixed + 4))
    }

    /// The name in lowercase, uncompressed wire form, root label included.
    pub fn name_wire(&self) -> &[u8] {
        &self.name[..usize::from(self.name_len)]
    }

    pub fn qtype(&self) -> u16 {
        self.qtype
    }

    pub fn qclass(&self) -> u16 {
        self.qclass
    }
}

impl PartialEq for Question {
    fn eq(&self, other: &Self) -> bool {
        self.qtype == other.qtype
            && self.qclass == other.qclass
            && self.name_wire() == other.name_wire()
    }
}

impl Eq for Question {}

impl Hash for Question {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name_wire().hash(state);
        self.qtype.hash(state);
        self.qclass.hash(state);
    }
}

/// `example.com. A IN`, for logs.
impl fmt::Display for Question {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_presentation_name(self.name_wire(), f)?;
        write!(
            f,
            " {} {}",
            Rtype::from_int(self.qtype),
            Class::from_int(self.qclass)
        )
    }
}

impl fmt::Debug for Question {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Question({self})")
    }
}

fn write_presentation_name(name: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let mut pos = 0;
    while let Some(&len) = name.get(pos) {
        if len == 0 {
            break;
        }
        for &byte in &name[pos + 1..pos + 1 + usize::from(len)] {
            match byte {
                b'.' | b'\\' => write!(f, "\\{}", byte as char)?,
                0x21..=0x7e => write!(f, "{}", byte as char)?,
                _ => write!(f, "\\{byte:03}")?,
            }
        }
        f.write_str(".")?;
        pos += 1 + usize::from(len);
    }
    if pos == 0 {
        f.write_str(".")?;
    }
    Ok(())
}

/// The EDNS(0) parameters of a message's OPT record (RFC 6891 §6.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Edns {
    /// Largest UDP payload the sender can reassemble (the OPT CLASS field).
    pub udp_payload_size: u16,
    /// EDNS version. Only 0 is defined: [`parse_query`] answers others with BADVERS.
    pub version: u8,
    /// The DO bit: the sender wants DNSSEC records.
    pub dnssec_ok: bool,
}

impl Edns {
    fn from_opt_record(udp_payload_size: u16, ttl: u32) -> Edns {
        let [_extended_rcode, version, flags_high, _] = ttl.to_be_bytes();
        Edns {
            udp_payload_size,
            version,
            dnssec_ok: flags_high & 0x80 != 0,
        }
    }
}

/// A client query that passed [`parse_query`]: one question, a standard QUERY
/// opcode, every section well-formed, nothing after the last record.
#[derive(Clone, Debug)]
pub struct Query<'a> {
    bytes: &'a [u8],
    question: Question,
    question_end: usize,
    edns: Option<Edns>,
}

impl<'a> Query<'a> {
    /// The whole message, as received.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn id(&self) -> u16 {
        u16::from_be_bytes([self.bytes[0], self.bytes[1]])
    }

    pub fn question(&self) -> &Question {
        &self.question
    }

    /// The question section exactly as the client sent it (its own letter case).
    pub fn question_wire(&self) -> &'a [u8] {
        &self.bytes[wire::HEADER_LEN..self.question_end]
    }

    pub fn edns(&self) -> Option<Edns> {
        self.edns
    }

    pub fn recursion_desired(&self) -> bool {
        self.bytes[2] & wire::FLAGS_RD != 0
    }

    /// The CD bit (RFC 4035): the client does its own DNSSEC validation.
    pub fn checking_disabled(&self) -> bool {
        self.bytes[3] & wire::FLAGS2_CD != 0
    }
}

/// Why a message is not a query we can forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryError {
    /// Fewer than 12 bytes, or QR=1. Drop silently: answering a response could
    /// start a loop between two servers, and a short message has no ID to answer.
    Drop,
    /// The header is readable but the message is unusable: answer with this rcode
    /// (see [`write_error_response`](crate::write_error_response)). NOTIMP for
    /// opcodes other than QUERY, FORMERR for everything malformed, BADVERS (an
    /// extended rcode, RFC 6891 §6.1.3) for an EDNS version other than 0.
    Answer(OptRcode),
}

/// Validates a client query without allocating.
///
/// FORMERR covers: QDCOUNT other than 1, a bad name anywhere in the message
/// (label longer than 63, reserved label type, name longer than 255, compression
/// pointer that is not strictly backward), counts larger than the records
/// present, trailing bytes, and OPT records that break RFC 6891 (more than one,
/// outside the additional section, or with a non-root owner). A well-formed
/// query whose OPT record has an EDNS version other than 0 gets BADVERS; its
/// EDNS options, known or not, are not looked at.
pub fn parse_query(msg: &[u8]) -> Result<Query<'_>, QueryError> {
    let query = read_query(msg)?;
    if query.edns.is_some_and(|edns| edns.version != 0) {
        return Err(QueryError::Answer(OptRcode::BADVERS));
    }
    Ok(query)
}

/// [`parse_query`] without the EDNS version check: what error responses echo.
pub(crate) fn read_query(msg: &[u8]) -> Result<Query<'_>, QueryError> {
    const FORMERR: QueryError = QueryError::Answer(OptRcode::FORMERR);
    if msg.len() < wire::HEADER_LEN || msg[2] & wire::FLAGS_QR != 0 {
        return Err(QueryError::Drop);
    }
    if msg[2] & wire::FLAGS_OPCODE_MASK != 0 {
        return Err(QueryError::Answer(OptRcode::NOTIMP));
    }
    let [qdcount, ancount, nscount, arcount] = wire::counts(msg).ok_or(FORMERR)?;
    if qdcount != 1 {
        return Err(FORMERR);
    }
    let (question, question_end) = Question::read(msg, wire::HEADER_LEN).ok_or(FORMERR)?;

    let mut pos = question_end;
    let mut edns = None;
    let records = u32::from(ancount) + u32::from(nscount) + u32::from(arcount);
    let first_additional = records - u32::from(arcount);
    for index in 0..records {
        let (record, next) = wire::read_record(msg, pos).ok_or(FORMERR)?;
        if record.rtype == wire::RTYPE_OPT {
            if index < first_additional || edns.is_some() || !record.owner_is_root {
                return Err(FORMERR);
            }
            edns = Some(Edns::from_opt_record(record.class, record.ttl));
        }
        pos = next;
    }
    if pos != msg.len() {
        return Err(FORMERR);
    }
    Ok(Query {
        bytes: msg,
        question,
        question_end,
        edns,
    })
}

/// The smallest UDP response size every client accepts (RFC 1035 §2.3.4).
pub const MIN_UDP_RESPONSE: usize = 512;
/// Upper bound on the UDP response size we honour, whatever the client advertises.
pub const MAX_UDP_RESPONSE: usize = 4096;

/// Largest UDP response the client accepts: its EDNS payload size clamped to
/// [512, 4096], or 512 without EDNS.
pub fn max_udp_response(query: &Query<'_>) -> usize {
    query.edns.map_or(MIN_UDP_RESPONSE, |edns| {
        usize::from(edns.udp_payload_size).clamp(MIN_UDP_RESPONSE, MAX_UDP_RESPONSE)
    })
}

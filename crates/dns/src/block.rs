//! Blocklists: names answered NXDOMAIN, or 0.0.0.0 / `::`, instead of being
//! resolved.
//!
//! A blocked domain blocks itself and every name under it. A lookup hashes the
//! question name and each of its parents: O(labels), whatever the list's size,
//! and no allocation.
//!
//! An upstream answer whose CNAME leads to a blocked name is blocked too: that
//! is how trackers hide under a site's own name ("CNAME cloaking").

use core::fmt;
use core::time::Duration;
use std::net::IpAddr;

use crate::names::{self, NameSet, RecordError, Wildcard, error, parse_name};
use crate::query::{Query, Question};
use crate::response::ExtendedError;
use crate::sections::{Records, Section};
use crate::synth::{
    self, CLASS_ANY, CLASS_IN, QUESTION_NAME, RCODE_NOERROR, RCODE_NXDOMAIN, Reply, TYPE_A,
    TYPE_AAAA, TYPE_CNAME, TYPE_SOA,
};
use crate::wire::{self, NameBuf, NameCase};

/// The records of a blocked answer fit in this many bytes: an SOA whose names
/// point into the question, or one address record.
const BLOCKED_BODY_LEN: usize = 64;

/// A buffer this long always holds a whole blocked answer, its extended error included.
pub const MAX_BLOCKED_LEN: usize = crate::MAX_SYNTHESIZED_LEN + BLOCKED_BODY_LEN + 6;

/// The Extended DNS Error of every blocked answer (RFC 8914): Blocked (15), because the
/// lists are the operator's policy, not a filter the client asked for (Filtered, 17).
pub(crate) const BLOCKED: ExtendedError<'static> = ExtendedError {
    code: ExtendedError::BLOCKED,
    text: "",
};

/// How a blocked name is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockMode {
    /// NXDOMAIN with an SOA whose MINIMUM is the block TTL.
    NxDomain,
    /// 0.0.0.0 for A, `::` for AAAA (TTL = the block TTL); NODATA with that SOA
    /// for other types.
    Null,
}

/// Names that hosts files and list files use for the machine itself, never to
/// block anything.
const LOCAL_HOST_NAMES: [&str; 12] = [
    "localhost",
    "localhost.localdomain",
    "localdomain",
    "local",
    "broadcasthost",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-mcastprefix",
    "ip6-allnodes",
    "ip6-allrouters",
    "ip6-allhosts",
];

/// A set of blocked domains and how to answer them.
#[derive(PartialEq, Eq)]
pub struct BlockList {
    mode: BlockMode,
    ttl: u32,
    domains: NameSet,
}

impl BlockList {
    /// An empty list. `ttl` (whole seconds, at most 2^31 - 1) is the TTL of the
    /// null answers and of the SOA in negative ones.
    pub fn new(mode: BlockMode, ttl: Duration) -> Self {
        BlockList {
            mode,
            ttl: ttl.as_secs().min(i32::MAX as u64) as u32,
            domains: NameSet::default(),
        }
    }

    /// Blocks `domain` and everything under it. The root is refused.
    pub fn add_domain(&mut self, domain: &str) -> Result<(), RecordError> {
        let wire = parse_name(domain, Wildcard::Forbidden)?;
        if wire == [0] {
            return Err(error(
                "refusing to block the root: it would block every name",
            ));
        }
        self.domains.insert(wire.into());
        Ok(())
    }

    /// Adds one line of a list file. Accepted forms:
    /// - hosts format, `ADDRESS NAME [NAME...]` with any address (`0.0.0.0`,
    ///   `127.0.0.1`, `::1`, scoped ones too); names of the machine itself
    ///   (`localhost`, `broadcasthost`, `ip6-allnodes`, ...) and addresses in
    ///   the name column are skipped;
    /// - one domain per line (a leading `*.` is dropped: the domain is blocked
    ///   with everything under it);
    /// - adblock-style `||domain^`; rules with options (`$...`) or exceptions
    ///   (`@@`) are refused rather than misread;
    /// - blank lines, `#` comments (also after an entry), and adblock's `!`
    ///   comments and `[Adblock Plus 2.0]`-style headers.
    pub fn add_list_line(&mut self, line: &str) -> Result<(), RecordError> {
        let trimmed = line.trim();
        if trimmed.starts_with('!') || (trimmed.starts_with('[') && trimmed.ends_with(']')) {
            return Ok(());
        }
        let content = trimmed.split('#').next().unwrap_or_default().trim();
        if content.is_empty() {
            return Ok(());
        }
        if content.starts_with("@@") {
            return Err(error(format!(
                "adblock exception rules are not supported: {content:?}"
            )));
        }
        if let Some(rule) = content.strip_prefix("||") {
            if rule.contains('$') {
                return Err(error(format!(
                    "adblock rule options ($...) are not supported: {content:?}"
                )));
            }
            let domain = rule.strip_suffix('^').ok_or_else(|| {
                error(format!(
                    "adblock rule {content:?} must have the form ||domain^"
                ))
            })?;
            return self.add_domain(domain);
        }
        let mut tokens = content.split_whitespace();
        let first = tokens.next().unwrap_or_default();
        let address = first.split('%').next().unwrap_or_default();
        if address.parse::<IpAddr>().is_ok() {
            let mut domains = Vec::new();
            for name in tokens {
                if is_local_host_name(name) || name.parse::<IpAddr>().is_ok() {
                    continue;
                }
                domains.push(parse_name(name, Wildcard::Forbidden)?);
            }
            if domains.is_empty() && !content.contains(char::is_whitespace) {
                return Err(error(format!(
                    "hosts line {content:?} has an address but no name"
                )));
            }
            self.domains.extend(domains.into_iter().map(Vec::into));
            return Ok(());
        }
        if tokens.next().is_some() {
            return Err(error(format!(
                "expected a domain, a hosts line or ||domain^, found {content:?}"
            )));
        }
        if is_local_host_name(first) {
            return Ok(());
        }
        self.add_domain(first.strip_prefix("*.").unwrap_or(first))
    }

    /// Whether the question's name, or one of its parents, is blocked.
    #[inline]
    pub fn is_blocked(&self, question: &Question) -> bool {
        self.blocks_name(question.name_wire())
    }

    /// Whether `name` (a lowercase wire name), or one of its parents, is blocked.
    pub fn blocks_name(&self, name: &[u8]) -> bool {
        self.blocked_suffix(name).is_some()
    }

    /// When `query` is blocked, writes the blocked answer into `out` and returns
    /// its length: the client's ID and question spelling, RA=1, RD and CD
    /// copied, an OPT record when the query had one. The SOA of negative answers
    /// is owned by the blocked domain. `out`'s length is the size limit, as for
    /// [`LocalData::answer`](crate::LocalData::answer). Does not allocate.
    pub fn answer(&self, query: &Query<'_>, out: &mut [u8]) -> Option<usize> {
        let offset = self.blocked_suffix(query.question().name_wire())?;
        Some(self.write_blocked(query, offset, out))
    }

    /// Whether `response`, an upstream's answer, leads through a CNAME in its
    /// answer section to a blocked name. A message that does not read is not
    /// judged here. Does not allocate.
    pub fn cloaks_blocked_name(&self, response: &[u8]) -> bool {
        if self.domains.is_empty() {
            return false;
        }
        let Some(records) = Records::new(response) else {
            return false;
        };
        let mut target = NameBuf::new();
        records
            .map_while(Result::ok)
            .take_while(|record| record.section == Section::Answer)
            .filter(|record| record.rtype == TYPE_CNAME)
            .any(|record| {
                wire::copy_name(
                    response,
                    record.rdata_start(),
                    NameCase::Lowercase,
                    &mut target,
                )
                .is_some_and(|_| self.blocks_name(target.as_slice()))
            })
    }

    /// The blocked answer to `query`, whose name is not itself blocked but
    /// whose upstream answer [cloaks](Self::cloaks_blocked_name) a blocked one:
    /// as [`answer`](Self::answer), with the question's name owning the SOA.
    pub fn answer_cloaked(&self, query: &Query<'_>, out: &mut [u8]) -> usize {
        self.write_blocked(query, 0, out)
    }

    /// Writes the blocked answer to `query`; the name at `zone_offset` in the
    /// question name owns the SOA of a negative answer.
    fn write_blocked(&self, query: &Query<'_>, zone_offset: usize, out: &mut [u8]) -> usize {
        let question = query.question();

        let class_in = question.qclass() == CLASS_IN || question.qclass() == CLASS_ANY;
        let null_address: Option<&[u8]> = match (self.mode, question.qtype()) {
            (BlockMode::Null, TYPE_A) if class_in => Some(&[0; 4]),
            (BlockMode::Null, TYPE_AAAA) if class_in => Some(&[0; 16]),
            _ => None,
        };
        let mut body = [0u8; BLOCKED_BODY_LEN];
        let mut len = 0;
        let mut push = |bytes: &[u8]| {
            body[len..len + bytes.len()].copy_from_slice(bytes);
            len += bytes.len();
        };
        let reply = if let Some(address) = null_address {
            let rtype = question.qtype();
            push(&QUESTION_NAME);
            push(&rtype.to_be_bytes());
            push(&CLASS_IN.to_be_bytes());
            push(&self.ttl.to_be_bytes());
            push(&(address.len() as u16).to_be_bytes());
            push(address);
            Reply {
                authoritative: false,
                rcode: RCODE_NOERROR,
                ancount: 1,
                nscount: 0,
                explained: Some(BLOCKED),
            }
        } else {
            // The blocked domain is a suffix of the question name: point into it.
            let zone = synth::question_suffix_pointer(zone_offset);
            // RNAME is hostmaster.<zone>, or the zone itself when that would be too long.
            let zone_len = question.name_wire().len() - zone_offset;
            let hostmaster: &[u8] = if zone_len + 11 <= wire::MAX_NAME_LEN {
                b"\x0ahostmaster"
            } else {
                b""
            };
            push(&zone);
            push(&TYPE_SOA.to_be_bytes());
            push(&CLASS_IN.to_be_bytes());
            push(&self.ttl.to_be_bytes());
            push(&(24 + hostmaster.len() as u16).to_be_bytes());
            push(&zone);
            push(hostmaster);
            push(&zone);
            for value in [1, 3600, 600, 86400, self.ttl] {
                push(&u32::to_be_bytes(value));
            }
            let rcode = match self.mode {
                BlockMode::NxDomain => RCODE_NXDOMAIN,
                BlockMode::Null => RCODE_NOERROR,
            };
            Reply {
                authoritative: false,
                rcode,
                ancount: 0,
                nscount: 1,
                explained: Some(BLOCKED),
            }
        };
        synth::write_reply(query, reply, &body[..len], out)
    }

    /// Number of blocked domains.
    pub fn len(&self) -> usize {
        self.domains.len()
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// Offset in `name` of its longest blocked suffix.
    #[inline]
    fn blocked_suffix(&self, name: &[u8]) -> Option<usize> {
        if self.domains.is_empty() {
            return None;
        }
        names::suffixes(name)
            .find(|(_, suffix)| self.domains.contains(*suffix))
            .map(|(offset, _)| offset)
    }
}

impl fmt::Debug for BlockList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockList")
            .field("mode", &self.mode)
            .field("ttl", &self.ttl)
            .field("domains", &self.domains.len())
            .finish()
    }
}

fn is_local_host_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    LOCAL_HOST_NAMES
        .iter()
        .any(|local| local.eq_ignore_ascii_case(name))
}

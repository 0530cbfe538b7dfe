//! Local authoritative data: records from the configuration and hosts files,
//! and zones declared local.
//!
//! Every answer is computed once, by [`LocalDataBuilder::build`], as a wire
//! template (answer and authority sections, owners pointing at the question
//! name). Answering a query is a table lookup and a copy: the client's ID, its
//! own spelling of the question, the template, an OPT record when it sent EDNS.
//!
//! What is local:
//! - a name with records: its records of the asked type (AA=1), a CNAME chain
//!   followed as far as the local data goes, or NODATA with an SOA when it has
//!   none of that type. Never forwarded: a public AAAA for a private name leaks.
//!   Only a chain that leads out of local data goes on upstream, for its last
//!   target ([`CnameChain`]).
//! - a name matched by a wildcard `*.parent`: the same, for any name one or more
//!   labels below `parent` that has no records of its own. The bare parent is
//!   not matched. This is a plain suffix match, not RFC 4592's closest-encloser
//!   rule: `*.lab` also matches `a.b.lab` when `b.lab` has records.
//! - a name under a zone declared local that has nothing: NXDOMAIN with the
//!   zone's SOA. Parents of local names inside such a zone (empty
//!   non-terminals) get NODATA, not NXDOMAIN (RFC 8020).
//!
//! The SOA of a name is that of the innermost local zone holding it; outside
//! local zones it is synthesised at the record's parent (at the name itself for
//! single-label names), e.g. `lab.internal` for `app.lab.internal`. Its TTL and
//! MINIMUM are [`NEGATIVE_TTL`].
//!
//! Local data is class IN: queries of other classes are not local.

use core::fmt;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::chain::CnameChain;
use crate::names::{
    self, NameMap, NameSet, RecordError, WILDCARD_LABEL, Wildcard, error, parse_name,
};
use crate::query::Query;
use crate::response::ExtendedError;
use crate::synth::{
    self, CLASS_ANY, CLASS_IN, QUESTION_NAME, RCODE_NOERROR, RCODE_NXDOMAIN, Reply, TYPE_A,
    TYPE_AAAA, TYPE_ANY, TYPE_CNAME, TYPE_PTR, TYPE_SOA, TYPE_TXT,
};

/// TTL of records given without one.
pub const DEFAULT_TTL: u32 = 300;
/// TTL and MINIMUM of the SOAs in negative answers: how long a client caches
/// "no such name" or "no such type" (RFC 2308).
pub const NEGATIVE_TTL: u32 = 60;
/// Largest TTL (RFC 2181 §8).
const MAX_TTL: u32 = i32::MAX as u32;
/// More CNAME hops than this end the chain where it is (and break loops).
const MAX_CNAME_CHAIN: usize = 8;
/// Records one name may hold of one type.
const MAX_RRSET_LEN: usize = 1024;

/// The records of one type at one owner.
#[derive(Debug)]
struct RrSet {
    rtype: u16,
    ttl: u32,
    rdatas: Vec<Vec<u8>>,
}

/// Collects records, hosts lines and local zones; [`build`](Self::build) turns
/// them into [`LocalData`].
#[derive(Debug, Default)]
pub struct LocalDataBuilder {
    /// Owner (lowercase wire name, possibly `*.`-prefixed) → its RRsets.
    names: HashMap<Vec<u8>, Vec<RrSet>>,
    zones: Vec<Vec<u8>>,
    /// Every address record with a plain owner, in the order added, with its TTL:
    /// the first name given for an address gets the automatic PTR.
    addresses: Vec<(IpAddr, Vec<u8>, u32)>,
    records: usize,
    /// Names answered NXDOMAIN whatever the type, unless they hold data.
    nonexistent: Vec<Vec<u8>>,
    /// Filled by `build`: see [`empty_non_terminals`](Self::empty_non_terminals).
    empty_non_terminals: NameSet,
}

impl LocalDataBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one record: `NAME [TTL] [IN] TYPE DATA`, with TYPE one of
    /// `A`, `AAAA`, `CNAME`, `PTR` or `TXT` (case-insensitive) and TTL in
    /// seconds ([`DEFAULT_TTL`] when left out). TXT data is one or more quoted
    /// strings (`"a b" "c"`, escapes `\"`, `\\`, `\DDD`) or bare words, each at
    /// most 255 bytes. NAME may be a wildcard `*.parent`.
    ///
    /// A name holds either one CNAME or other records, never both (RFC 1034
    /// §3.6.2). Repeating a record is harmless; the records of one name and type
    /// share the lowest TTL given (RFC 2181 §5.2).
    pub fn add_record(&mut self, text: &str) -> Result<(), RecordError> {
        let (name_text, mut rest) =
            next_token(text).ok_or_else(|| error("empty record: expected NAME [TTL] TYPE DATA"))?;
        let owner = parse_name(name_text, Wildcard::Allowed)?;
        let mut ttl = None;
        let mut class_seen = false;
        let type_text = loop {
            let (token, after) = next_token(rest)
                .ok_or_else(|| error(format!("record {text:?} has no type and data")))?;
            rest = after;
            if ttl.is_none() && token.bytes().all(|b| b.is_ascii_digit()) {
                ttl = Some(parse_ttl(token)?);
            } else if !class_seen && token.eq_ignore_ascii_case("IN") {
                class_seen = true;
            } else {
                break token;
            }
        };
        let ttl = ttl.unwrap_or(DEFAULT_TTL);
        let data = rest.trim();
        if data.is_empty() {
            return Err(error(format!("record {text:?} has no data")));
        }
        let (rtype, rdata) = match type_text.to_ascii_uppercase().as_str() {
            "A" => {
                let address = single_token(data, "an IPv4 address")?
                    .parse::<Ipv4Addr>()
                    .map_err(|_| error(format!("A record data {data:?} is not an IPv4 address")))?;
                (TYPE_A, address.octets().to_vec())
            }
            "AAAA" => {
                let address = single_token(data, "an IPv6 address")?
                    .parse::<Ipv6Addr>()
                    .map_err(|_| {
                        error(format!("AAAA record data {data:?} is not an IPv6 address"))
                    })?;
                (TYPE_AAAA, address.octets().to_vec())
            }
            "CNAME" => (
                TYPE_CNAME,
                parse_name(single_token(data, "a name")?, Wildcard::Forbidden)?,
            ),
            "PTR" => (
                TYPE_PTR,
                parse_name(single_token(data, "a name")?, Wildcard::Forbidden)?,
            ),
            "TXT" => (TYPE_TXT, parse_txt(data)?),
            _ => {
                return Err(error(format!(
                    "unsupported record type {type_text:?}: expected A, AAAA, CNAME, PTR or TXT"
                )));
            }
        };
        self.check_insert(&owner, rtype, &rdata)?;
        if let Some(address) = address_of(rtype, &rdata)
            && !owner.starts_with(WILDCARD_LABEL)
        {
            self.addresses.push((address, owner.clone(), ttl));
        }
        self.insert(owner, rtype, ttl, rdata);
        Ok(())
    }

    /// Adds one hosts(5) line: `ADDRESS NAME [ALIAS...]`, `#` starting a
    /// comment; blank and comment-only lines are accepted and add nothing. Every
    /// name gets an A or AAAA record ([`DEFAULT_TTL`]); the first name (the
    /// canonical one) gets the automatic PTR.
    pub fn add_hosts_line(&mut self, line: &str) -> Result<(), RecordError> {
        let content = line.split('#').next().unwrap_or_default();
        let Some((address_text, rest)) = next_token(content) else {
            return Ok(());
        };
        let address = parse_address(address_text)?;
        let mut owners = Vec::new();
        let mut rest = rest;
        while let Some((name, after)) = next_token(rest) {
            owners.push(parse_name(name, Wildcard::Forbidden)?);
            rest = after;
        }
        if owners.is_empty() {
            return Err(error(format!(
                "hosts line {:?} has an address but no name",
                line.trim()
            )));
        }
        let (rtype, rdata) = match address {
            IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
            IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
        };
        for owner in &owners {
            self.check_insert(owner, rtype, &rdata)?;
        }
        for owner in owners {
            self.addresses.push((address, owner.clone(), DEFAULT_TTL));
            self.insert(owner, rtype, DEFAULT_TTL, rdata.clone());
        }
        Ok(())
    }

    /// Declares `zone` local: names under it (and the zone itself) that have no
    /// local data get NXDOMAIN with the zone's SOA, and are never forwarded.
    pub fn add_local_zone(&mut self, zone: &str) -> Result<(), RecordError> {
        let wire = parse_name(zone, Wildcard::Forbidden)?;
        if wire == [0] {
            return Err(error(
                "the root cannot be a local zone: every name would be",
            ));
        }
        if !self.zones.contains(&wire) {
            self.zones.push(wire);
        }
        Ok(())
    }

    /// Adds the automatic PTR records (an A or AAAA record's address, unless
    /// that reverse name has data of its own), the zones' SOAs, and computes
    /// every answer.
    pub fn build(mut self) -> LocalData {
        for (address, owner, ttl) in std::mem::take(&mut self.addresses) {
            let reverse = reverse_name(address);
            if !self.names.contains_key(&reverse) {
                self.insert(reverse, TYPE_PTR, ttl, owner);
            }
        }
        // Deepest zones first, so the first zone holding a name is its innermost.
        self.zones
            .sort_by_key(|zone| core::cmp::Reverse(names::label_count(zone)));
        for zone in &self.zones {
            let sets = self.names.entry(zone.clone()).or_default();
            if !sets.iter().any(|set| set.rtype == TYPE_CNAME) {
                sets.push(RrSet {
                    rtype: TYPE_SOA,
                    ttl: NEGATIVE_TTL,
                    rdatas: vec![synth::soa_rdata(zone, NEGATIVE_TTL)],
                });
            }
        }
        self.empty_non_terminals = self.empty_non_terminals();

        let mut exact = NameMap::default();
        let mut wildcards = NameMap::default();
        for (owner, sets) in &self.names {
            let node = self.node(owner, sets);
            match owner.strip_prefix(WILDCARD_LABEL) {
                Some(parent) => wildcards.insert(parent.into(), node),
                None => exact.insert(owner.as_slice().into(), node),
            };
        }
        for name in &self.empty_non_terminals {
            let node = Node {
                by_type: Box::new([]),
                otherwise: self.negative(Vec::new(), 0, name, RCODE_NOERROR),
            };
            exact.insert(name.clone(), node);
        }
        for name in &self.nonexistent {
            let node = Node {
                by_type: Box::new([]),
                otherwise: self.negative(Vec::new(), 0, name, RCODE_NXDOMAIN),
            };
            exact.entry(name.as_slice().into()).or_insert(node);
        }
        let zones = self
            .zones
            .iter()
            .map(|zone| {
                let nxdomain = self.negative(Vec::new(), 0, zone, RCODE_NXDOMAIN);
                (zone.as_slice().into(), nxdomain)
            })
            .collect();
        LocalData {
            exact,
            wildcards,
            zones,
            records: self.records,
        }
    }

    fn check_insert(&self, owner: &[u8], rtype: u16, rdata: &[u8]) -> Result<(), RecordError> {
        let Some(sets) = self.names.get(owner) else {
            return Ok(());
        };
        let shown = names::display(owner);
        if let Some(cname) = sets.iter().find(|set| set.rtype == TYPE_CNAME) {
            if rtype != TYPE_CNAME {
                return Err(error(format!(
                    "{shown} has a CNAME, which cannot share its name with other records"
                )));
            }
            if cname.rdatas[0] != rdata {
                return Err(error(format!("{shown} has more than one CNAME")));
            }
        } else if rtype == TYPE_CNAME && !sets.is_empty() {
            return Err(error(format!(
                "{shown} has other records, so it cannot have a CNAME"
            )));
        }
        if sets
            .iter()
            .any(|set| set.rtype == rtype && set.rdatas.len() >= MAX_RRSET_LEN)
        {
            return Err(error(format!(
                "{shown} has more than {MAX_RRSET_LEN} records of one type"
            )));
        }
        Ok(())
    }

    /// Answers `name` NXDOMAIN for every type, unless data is added for it.
    pub(crate) fn add_nonexistent(&mut self, name: &str) -> Result<(), RecordError> {
        self.nonexistent
            .push(parse_name(name, Wildcard::Forbidden)?);
        Ok(())
    }

    /// Adds a record tundns writes itself (wire owner and RDATA), with the checks a
    /// written one gets.
    pub(crate) fn insert_record(
        &mut self,
        owner: Vec<u8>,
        rtype: u16,
        ttl: u32,
        rdata: Vec<u8>,
    ) -> Result<(), RecordError> {
        self.check_insert(&owner, rtype, &rdata)?;
        self.insert(owner, rtype, ttl, rdata);
        Ok(())
    }

    /// Adds a record that passed [`check_insert`](Self::check_insert).
    fn insert(&mut self, owner: Vec<u8>, rtype: u16, ttl: u32, rdata: Vec<u8>) {
        let sets = self.names.entry(owner).or_default();
        let set = match sets.iter().position(|set| set.rtype == rtype) {
            Some(index) => &mut sets[index],
            None => {
                sets.push(RrSet {
                    rtype,
                    ttl,
                    rdatas: Vec::new(),
                });
                sets.last_mut().expect("just pushed")
            }
        };
        set.ttl = set.ttl.min(ttl);
        if !set.rdatas.contains(&rdata) {
            set.rdatas.push(rdata);
            self.records += 1;
        }
    }

    /// Parents of local names, inside a local zone, that have no data: they
    /// exist (NODATA), unlike their unknown siblings (NXDOMAIN).
    fn empty_non_terminals(&self) -> NameSet {
        let mut found = NameSet::default();
        for owner in self.names.keys() {
            let base = owner.strip_prefix(WILDCARD_LABEL).unwrap_or(owner);
            let ancestors = names::suffixes(base).map(|(_, suffix)| suffix);
            let start = usize::from(!owner.starts_with(WILDCARD_LABEL));
            for ancestor in ancestors.skip(start) {
                if !self.names.contains_key(ancestor) && self.zone_of(ancestor).is_some() {
                    found.insert(ancestor.into());
                }
            }
        }
        found
    }

    /// The innermost local zone holding `name`.
    fn zone_of(&self, name: &[u8]) -> Option<&[u8]> {
        self.zones
            .iter()
            .find(|zone| names::is_at_or_below(name, zone))
            .map(Vec::as_slice)
    }

    /// Where the SOA of `owner` lives: its local zone, else its parent (the name
    /// itself for a single label).
    fn soa_owner<'a>(&'a self, owner: &'a [u8]) -> &'a [u8] {
        if let Some(zone) = self.zone_of(owner) {
            return zone;
        }
        match names::parent(owner) {
            Some(parent) if parent != [0] => parent,
            _ => owner,
        }
    }

    /// `body` (holding `ancount` answer records) followed by the SOA of `name`.
    fn negative(&self, mut body: Vec<u8>, ancount: u16, name: &[u8], rcode: u8) -> Answer {
        let zone = self.soa_owner(name);
        let rdata = synth::soa_rdata(zone, NEGATIVE_TTL);
        synth::push_record(&mut body, zone, TYPE_SOA, NEGATIVE_TTL, &rdata);
        Answer::new(rcode, ancount, 1, body)
    }

    fn node(&self, owner: &[u8], sets: &[RrSet]) -> Node {
        if let Some(cname) = sets.iter().find(|set| set.rtype == TYPE_CNAME) {
            return self.cname_node(cname);
        }
        let mut by_type: Vec<(u16, Answer)> = sets
            .iter()
            .map(|set| {
                let mut body = Vec::new();
                push_rrset(&mut body, &QUESTION_NAME, set);
                let answer = Answer::new(RCODE_NOERROR, set.rdatas.len() as u16, 0, body);
                (set.rtype, answer)
            })
            .collect();
        if !sets.is_empty() {
            let mut body = Vec::new();
            for set in sets {
                push_rrset(&mut body, &QUESTION_NAME, set);
            }
            let count = sets.iter().map(|set| set.rdatas.len()).sum::<usize>();
            by_type.push((TYPE_ANY, Answer::new(RCODE_NOERROR, count as u16, 0, body)));
        }
        Node {
            by_type: by_type.into(),
            otherwise: self.negative(Vec::new(), 0, owner, RCODE_NOERROR),
        }
    }

    /// A CNAME's answers: the CNAME alone for CNAME and ANY questions; for the
    /// others the chain as far as local data takes it, then what its end holds.
    fn cname_node(&self, cname: &RrSet) -> Node {
        let mut first = Vec::new();
        push_rrset(&mut first, &QUESTION_NAME, cname);
        let mut by_type = vec![
            (TYPE_CNAME, Answer::new(RCODE_NOERROR, 1, 0, first.clone())),
            (TYPE_ANY, Answer::new(RCODE_NOERROR, 1, 0, first.clone())),
        ];
        let mut chain = first;
        let mut links: u16 = 1;
        let mut target = cname.rdatas[0].clone();
        let mut visited = vec![target.clone()];
        let otherwise = loop {
            match self.resolve(&target) {
                Resolved::Records(sets) => {
                    if let Some(next) = sets.iter().find(|set| set.rtype == TYPE_CNAME) {
                        let next_target = next.rdatas[0].clone();
                        if visited.contains(&next_target) || visited.len() > MAX_CNAME_CHAIN {
                            break Answer::new(RCODE_NOERROR, links, 0, chain);
                        }
                        push_rrset(&mut chain, &target, next);
                        links += 1;
                        visited.push(next_target.clone());
                        target = next_target;
                        continue;
                    }
                    for set in sets {
                        let mut body = chain.clone();
                        push_rrset(&mut body, &target, set);
                        let count = links + set.rdatas.len() as u16;
                        by_type.push((set.rtype, Answer::new(RCODE_NOERROR, count, 0, body)));
                    }
                    break self.negative(chain, links, &target, RCODE_NOERROR);
                }
                Resolved::EmptyNonTerminal => {
                    break self.negative(chain, links, &target, RCODE_NOERROR);
                }
                Resolved::NxDomain => break self.negative(chain, links, &target, RCODE_NXDOMAIN),
                Resolved::NotLocal => {
                    let end = CnameChain::new(chain.clone(), links, target);
                    let mut answer = Answer::new(RCODE_NOERROR, links, 0, chain);
                    answer.chain = Some(Arc::new(end));
                    break answer;
                }
            }
        };
        Node {
            by_type: by_type.into(),
            otherwise,
        }
    }

    /// What local data holds for `name`, as [`LocalData::answer`] will see it.
    fn resolve(&self, name: &[u8]) -> Resolved<'_> {
        if let Some(sets) = self.names.get(name) {
            return Resolved::Records(sets);
        }
        if self.empty_non_terminals.contains(name) {
            return Resolved::EmptyNonTerminal;
        }
        for (_, ancestor) in names::suffixes(name).skip(1) {
            let wildcard = [WILDCARD_LABEL, ancestor].concat();
            if let Some(sets) = self.names.get(&wildcard) {
                return Resolved::Records(sets);
            }
            if self.zones.iter().any(|zone| zone == ancestor) {
                return Resolved::NxDomain;
            }
        }
        Resolved::NotLocal
    }
}

enum Resolved<'a> {
    Records(&'a [RrSet]),
    EmptyNonTerminal,
    NxDomain,
    NotLocal,
}

/// The Extended DNS Error of every local answer: Synthesized (29), since tundns made it
/// from its own records rather than an authoritative server's.
const SYNTHESIZED: ExtendedError<'static> = ExtendedError {
    code: ExtendedError::SYNTHESIZED,
    text: "",
};

/// A precomputed answer: header fields and the records after the question.
#[derive(Debug)]
struct Answer {
    reply: Reply,
    body: Box<[u8]>,
    /// Set when `body` is a CNAME chain that leads out of local data.
    chain: Option<Arc<CnameChain>>,
}

impl Answer {
    fn new(rcode: u8, ancount: u16, nscount: u16, body: Vec<u8>) -> Self {
        Answer {
            reply: Reply {
                authoritative: true,
                rcode,
                ancount,
                nscount,
                explained: Some(SYNTHESIZED),
            },
            body: body.into(),
            chain: None,
        }
    }
}

/// The answers of one name (or one wildcard): by question type, and for every
/// other type.
#[derive(Debug)]
struct Node {
    by_type: Box<[(u16, Answer)]>,
    otherwise: Answer,
}

impl Node {
    #[inline]
    fn answer_for(&self, qtype: u16) -> &Answer {
        self.by_type
            .iter()
            .find(|(rtype, _)| *rtype == qtype)
            .map_or(&self.otherwise, |(_, answer)| answer)
    }
}

/// What local data wrote for a query.
#[derive(Debug)]
pub enum LocalAnswer {
    /// The whole answer, `len` bytes.
    Complete(usize),
    /// A CNAME chain that leads out of local data, `len` bytes: the chain alone,
    /// which [`CnameChain::complete`] finishes with the upstream's answer for its
    /// last target.
    Chain(usize, Arc<CnameChain>),
}

impl LocalAnswer {
    /// The length of what was written.
    pub fn written(&self) -> usize {
        match self {
            LocalAnswer::Complete(len) | LocalAnswer::Chain(len, _) => *len,
        }
    }
}

/// Local authoritative data, immutable once built (see the module docs).
pub struct LocalData {
    exact: NameMap<Node>,
    /// Keyed by the wildcard's parent: `lab.internal` for `*.lab.internal`.
    wildcards: NameMap<Node>,
    /// Each local zone's NXDOMAIN answer.
    zones: NameMap<Answer>,
    records: usize,
}

impl LocalData {
    /// When local data decides `query`, writes the answer into `out`; `None` means
    /// the name is not local (go on to the cache and the upstreams).
    ///
    /// `out`'s length is the size limit (the client's UDP limit, see
    /// [`max_udp_response`](crate::max_udp_response), or 65535 over TCP): an
    /// answer that does not fit is written with TC=1 and no records. Answers
    /// have AA=1 and RA=1, RD and CD copied, the client's ID and question
    /// spelling, and an OPT record (payload 1232, DO copied) when the query had
    /// one. A length of 0 only when `out` is shorter than a header. Allocates
    /// nothing but, for a chain, a reference count.
    pub fn answer(&self, query: &Query<'_>, out: &mut [u8]) -> Option<LocalAnswer> {
        let question = query.question();
        if question.qclass() != CLASS_IN && question.qclass() != CLASS_ANY {
            return None;
        }
        let answer = self.find(question.name_wire(), question.qtype())?;
        let len = synth::write_reply(query, answer.reply, &answer.body, out);
        Some(match &answer.chain {
            None => LocalAnswer::Complete(len),
            Some(chain) => LocalAnswer::Chain(len, chain.clone()),
        })
    }

    /// Whether local data answers for `name` (a lowercase wire name), whatever the type.
    pub fn holds_name(&self, name: &[u8]) -> bool {
        self.find(name, TYPE_ANY).is_some()
    }

    #[inline]
    fn find(&self, name: &[u8], qtype: u16) -> Option<&Answer> {
        if let Some(node) = self.exact.get(name) {
            return Some(node.answer_for(qtype));
        }
        if self.wildcards.is_empty() && self.zones.is_empty() {
            return None;
        }
        for (_, ancestor) in names::suffixes(name).skip(1) {
            if let Some(node) = self.wildcards.get(ancestor) {
                return Some(node.answer_for(qtype));
            }
            if let Some(nxdomain) = self.zones.get(ancestor) {
                return Some(nxdomain);
            }
        }
        None
    }

    /// Number of records, automatic PTRs included (SOAs are not counted).
    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0 && self.zones.is_empty()
    }
}

impl fmt::Debug for LocalData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalData")
            .field("records", &self.records)
            .field("names", &self.exact.len())
            .field("wildcards", &self.wildcards.len())
            .field("zones", &self.zones.len())
            .finish()
    }
}

fn push_rrset(body: &mut Vec<u8>, owner: &[u8], set: &RrSet) {
    for rdata in &set.rdatas {
        synth::push_record(body, owner, set.rtype, set.ttl, rdata);
    }
}

/// The first whitespace-separated token of `text` and what follows it.
pub(crate) fn next_token(text: &str) -> Option<(&str, &str)> {
    let text = text.trim_start();
    if text.is_empty() {
        return None;
    }
    let end = text.find(char::is_whitespace).unwrap_or(text.len());
    Some(text.split_at(end))
}

fn single_token<'a>(data: &'a str, what: &str) -> Result<&'a str, RecordError> {
    match next_token(data) {
        Some((token, rest)) if rest.trim().is_empty() => Ok(token),
        _ => Err(error(format!("expected {what}, found {data:?}"))),
    }
}

fn parse_ttl(token: &str) -> Result<u32, RecordError> {
    token
        .parse::<u32>()
        .ok()
        .filter(|ttl| *ttl <= MAX_TTL)
        .ok_or_else(|| error(format!("TTL {token} is larger than {MAX_TTL} seconds")))
}

/// An address in a hosts line; a scope (`fe80::1%eth0`) is refused.
fn parse_address(text: &str) -> Result<IpAddr, RecordError> {
    if text.contains('%') {
        return Err(error(format!(
            "scoped address {text:?} cannot be served in DNS"
        )));
    }
    text.parse()
        .map_err(|_| error(format!("{text:?} is not an IP address")))
}

fn address_of(rtype: u16, rdata: &[u8]) -> Option<IpAddr> {
    match rtype {
        TYPE_A => <[u8; 4]>::try_from(rdata).ok().map(IpAddr::from),
        TYPE_AAAA => <[u8; 16]>::try_from(rdata).ok().map(IpAddr::from),
        _ => None,
    }
}

/// `d.c.b.a.in-addr.arpa` or the 32 nibbles of `ip6.arpa`, in wire form.
pub(crate) fn reverse_name(address: IpAddr) -> Vec<u8> {
    let mut wire = Vec::with_capacity(72);
    match address {
        IpAddr::V4(v4) => {
            for octet in v4.octets().iter().rev() {
                let digits = octet.to_string();
                wire.push(digits.len() as u8);
                wire.extend_from_slice(digits.as_bytes());
            }
            wire.extend_from_slice(b"\x07in-addr\x04arpa\x00");
        }
        IpAddr::V6(v6) => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for byte in v6.octets().iter().rev() {
                wire.extend_from_slice(&[1, HEX[usize::from(byte & 0x0f)]]);
                wire.extend_from_slice(&[1, HEX[usize::from(byte >> 4)]]);
            }
            wire.extend_from_slice(b"\x03ip6\x04arpa\x00");
        }
    }
    wire
}

/// TXT RDATA from quoted strings (`"a b"`, escapes `\"`, `\\`, `\DDD`) and bare
/// words, each one character-string of at most 255 bytes.
fn parse_txt(data: &str) -> Result<Vec<u8>, RecordError> {
    let bytes = data.as_bytes();
    let mut rdata = Vec::with_capacity(bytes.len() + 1);
    let mut pos = 0;
    loop {
        while bytes.get(pos).is_some_and(u8::is_ascii_whitespace) {
            pos += 1;
        }
        if pos == bytes.len() {
            break;
        }
        let mut string = Vec::new();
        if bytes[pos] == b'"' {
            pos += 1;
            loop {
                match bytes.get(pos) {
                    None => return Err(error(format!("TXT data {data:?} has an unclosed quote"))),
                    Some(b'"') => {
                        pos += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let (byte, used) = parse_escape(&bytes[pos + 1..])
                            .ok_or_else(|| error(format!("TXT data {data:?} has a bad escape")))?;
                        string.push(byte);
                        pos += 1 + used;
                    }
                    Some(&byte) => {
                        string.push(byte);
                        pos += 1;
                    }
                }
            }
            if bytes.get(pos).is_some_and(|b| !b.is_ascii_whitespace()) {
                return Err(error(format!(
                    "TXT data {data:?}: a closing quote must be followed by a space"
                )));
            }
        } else {
            while let Some(&byte) = bytes.get(pos).filter(|b| !b.is_ascii_whitespace()) {
                if byte == b'"' {
                    return Err(error(format!(
                        "TXT data {data:?}: a quote inside a bare word"
                    )));
                }
                string.push(byte);
                pos += 1;
            }
        }
        if string.len() > 255 {
            return Err(error(format!(
                "a TXT string is longer than 255 bytes: split it into several quoted strings ({data:?})"
            )));
        }
        rdata.push(string.len() as u8);
        rdata.extend_from_slice(&string);
    }
    if rdata.is_empty() {
        return Err(error("TXT record has no text"));
    }
    if rdata.len() > usize::from(u16::MAX) {
        return Err(error("TXT record is longer than 65535 bytes"));
    }
    Ok(rdata)
}

/// The byte an escape (after its backslash) stands for, and the bytes it used.
fn parse_escape(after: &[u8]) -> Option<(u8, usize)> {
    let first = *after.first()?;
    if !first.is_ascii_digit() {
        return Some((first, 1));
    }
    let digits = after.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits
        .iter()
        .fold(0u32, |value, digit| value * 10 + u32::from(digit - b'0'));
    u8::try_from(value).ok().map(|byte| (byte, 3))
}

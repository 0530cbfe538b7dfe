//! DNS messages built by `domain`: a client's [`Query`] and an upstream's [`Answer`] to it,
//! plus [`header`] and [`question`] for the malformed messages tests write byte by byte.

use domain::base::iana::{Class, OptionCode, Rcode, Rtype};
use domain::base::message_builder::{AdditionalBuilder, RecordSectionBuilder, StaticCompressor};
use domain::base::name::ToName;
use domain::base::{Message, MessageBuilder, Name, Serial, Ttl};
use domain::dep::octseq::Truncate;
use domain::rdata::{A, Cname, Ns, Soa};

/// Where a message's question starts: right after the 12-byte header.
const QUESTION_START: usize = 12;

/// An EDNS OPT record: the UDP payload size, the DO bit and raw options.
#[derive(Clone, Debug)]
pub struct Edns {
    udp_payload_size: u16,
    dnssec_ok: bool,
    options: Vec<(OptionCode, Vec<u8>)>,
}

impl Edns {
    /// An OPT record advertising `udp_payload_size`, DO clear, no options.
    pub fn new(udp_payload_size: u16) -> Edns {
        Edns {
            udp_payload_size,
            dnssec_ok: false,
            options: Vec::new(),
        }
    }

    pub fn dnssec_ok(mut self, dnssec_ok: bool) -> Edns {
        self.dnssec_ok = dnssec_ok;
        self
    }

    /// Appends the option `code` with `data` as its value.
    pub fn option(mut self, code: OptionCode, data: &[u8]) -> Edns {
        self.options.push((code, data.to_vec()));
        self
    }

    fn push<T: domain::base::wire::Composer>(&self, additional: &mut AdditionalBuilder<T>) {
        additional
            .opt(|opt| {
                opt.set_udp_payload_size(self.udp_payload_size);
                opt.set_dnssec_ok(self.dnssec_ok);
                for (code, data) in &self.options {
                    let len = u16::try_from(data.len()).expect("an option fits a message");
                    opt.push_raw_option(*code, len, |target| target.append_slice(data))?;
                }
                Ok(())
            })
            .unwrap();
    }
}

/// A client's query with one question. By default as dig sends it without options: ID 0,
/// RD set, class IN, no EDNS.
#[derive(Clone, Debug)]
pub struct Query {
    id: u16,
    name: QueryName,
    qtype: Rtype,
    class: Class,
    recursion_desired: bool,
    checking_disabled: bool,
    edns: Option<Edns>,
}

#[derive(Clone, Debug)]
enum QueryName {
    Text(String),
    /// Wire bytes written as they are, for names `domain` refuses to build.
    Wire(Vec<u8>),
}

impl Query {
    /// A query for `name` (presentation form, `.` for the root) and `qtype`.
    pub fn new(name: &str, qtype: Rtype) -> Query {
        Query::with_name(QueryName::Text(name.to_owned()), qtype)
    }

    /// A query whose question name is `wire`, copied as it is: malformed names, compression
    /// pointers, labels past the limits.
    pub fn raw_name(wire: &[u8], qtype: Rtype) -> Query {
        Query::with_name(QueryName::Wire(wire.to_vec()), qtype)
    }

    fn with_name(name: QueryName, qtype: Rtype) -> Query {
        Query {
            id: 0,
            name,
            qtype,
            class: Class::IN,
            recursion_desired: true,
            checking_disabled: false,
            edns: None,
        }
    }

    pub fn id(mut self, id: u16) -> Query {
        self.id = id;
        self
    }

    pub fn class(mut self, class: Class) -> Query {
        self.class = class;
        self
    }

    /// The RD bit.
    pub fn recursion_desired(mut self, rd: bool) -> Query {
        self.recursion_desired = rd;
        self
    }

    /// The CD bit.
    pub fn checking_disabled(mut self, cd: bool) -> Query {
        self.checking_disabled = cd;
        self
    }

    pub fn edns(mut self, edns: Edns) -> Query {
        self.edns = Some(edns);
        self
    }

    /// The message's bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut builder = MessageBuilder::new_vec();
        let header = builder.header_mut();
        header.set_id(self.id);
        header.set_rd(self.recursion_desired);
        header.set_cd(self.checking_disabled);
        let mut question = builder.question();
        let name = match &self.name {
            QueryName::Text(text) => text.as_str(),
            QueryName::Wire(_) => ".",
        };
        let name = Name::<Vec<u8>>::vec_from_str(name).expect("a valid name");
        question.push((name, self.qtype, self.class)).unwrap();
        let mut additional = question.additional();
        if let Some(edns) = &self.edns {
            edns.push(&mut additional);
        }
        let mut message = additional.finish();
        if let QueryName::Wire(wire) = &self.name {
            // The root name is the single byte 0 at the start of the question.
            message.splice(QUESTION_START..QUESTION_START + 1, wire.iter().copied());
        }
        message
    }
}

/// A record's data.
#[derive(Clone, Debug)]
pub enum Data {
    A([u8; 4]),
    Cname(String),
    Ns(String),
    /// An SOA with this primary server, mailbox and MINIMUM; serial 1, refresh 3600, retry
    /// 600, expire 86400.
    Soa {
        mname: String,
        rname: String,
        minimum: u32,
    },
}

#[derive(Clone, Debug)]
struct Record {
    /// `None`: the question's name, as the request spells it.
    owner: Option<String>,
    ttl: u32,
    data: Data,
}

#[derive(Clone, Copy)]
enum Section {
    Answer,
    Authority,
}

/// An upstream's answer to a request: its ID, RD, opcode and question copied, QR set.
/// Written uncompressed unless [`Answer::compressed`].
#[derive(Clone, Debug)]
pub struct Answer<'a> {
    request: &'a [u8],
    rcode: Rcode,
    compressed: bool,
    authoritative: bool,
    recursion_available: bool,
    truncated: bool,
    answer: Vec<Record>,
    authority: Vec<Record>,
    edns: Option<Edns>,
}

impl<'a> Answer<'a> {
    /// A NOERROR answer to `request` with no records yet.
    pub fn to(request: &'a [u8]) -> Answer<'a> {
        Answer {
            request,
            rcode: Rcode::NOERROR,
            compressed: false,
            authoritative: false,
            recursion_available: false,
            truncated: false,
            answer: Vec::new(),
            authority: Vec::new(),
            edns: None,
        }
    }

    pub fn rcode(mut self, rcode: Rcode) -> Answer<'a> {
        self.rcode = rcode;
        self
    }

    /// Names compressed, as servers write them.
    pub fn compressed(mut self) -> Answer<'a> {
        self.compressed = true;
        self
    }

    /// The AA bit.
    pub fn authoritative(mut self) -> Answer<'a> {
        self.authoritative = true;
        self
    }

    /// The RA bit.
    pub fn recursion_available(mut self) -> Answer<'a> {
        self.recursion_available = true;
        self
    }

    /// The TC bit.
    pub fn truncated(mut self) -> Answer<'a> {
        self.truncated = true;
        self
    }

    /// An A record for the question's name in the answer section.
    pub fn a(self, ttl: u32, address: [u8; 4]) -> Answer<'a> {
        self.question_record(ttl, Data::A(address))
    }

    /// A record for the question's name in the answer section.
    pub fn question_record(self, ttl: u32, data: Data) -> Answer<'a> {
        self.add(Section::Answer, None, ttl, data)
    }

    /// A record for `owner` in the answer section.
    pub fn record(self, owner: &str, ttl: u32, data: Data) -> Answer<'a> {
        self.add(Section::Answer, Some(owner), ttl, data)
    }

    /// A record for `owner` in the authority section.
    pub fn authority(self, owner: &str, ttl: u32, data: Data) -> Answer<'a> {
        self.add(Section::Authority, Some(owner), ttl, data)
    }

    fn add(mut self, section: Section, owner: Option<&str>, ttl: u32, data: Data) -> Answer<'a> {
        let record = Record {
            owner: owner.map(str::to_owned),
            ttl,
            data,
        };
        match section {
            Section::Answer => self.answer.push(record),
            Section::Authority => self.authority.push(record),
        }
        self
    }

    pub fn edns(mut self, edns: Edns) -> Answer<'a> {
        self.edns = Some(edns);
        self
    }

    /// The message's bytes.
    pub fn build(&self) -> Vec<u8> {
        if self.compressed {
            let target = StaticCompressor::new(Vec::new());
            self.compose(MessageBuilder::from_target(target).unwrap())
                .into_target()
        } else {
            self.compose(MessageBuilder::new_vec())
        }
    }

    fn compose<T>(&self, builder: MessageBuilder<T>) -> T
    where
        T: domain::base::wire::Composer + Truncate,
    {
        let request = Message::from_octets(self.request).expect("a request with a header");
        let mut answer = builder.start_answer(&request, self.rcode).unwrap();
        let header = answer.header_mut();
        header.set_aa(self.authoritative);
        header.set_ra(self.recursion_available);
        header.set_tc(self.truncated);
        let question_name: Name<Vec<u8>> = request
            .sole_question()
            .expect("a request with one question")
            .into_qname()
            .to_name();
        for record in &self.answer {
            record.push(&mut answer, &question_name);
        }
        let mut authority = answer.authority();
        for record in &self.authority {
            record.push(&mut authority, &question_name);
        }
        let mut additional = authority.additional();
        if let Some(edns) = &self.edns {
            edns.push(&mut additional);
        }
        additional.finish()
    }
}

impl Record {
    fn push<T: domain::base::wire::Composer>(
        &self,
        section: &mut impl RecordSectionBuilder<T>,
        question_name: &Name<Vec<u8>>,
    ) {
        let owner = match &self.owner {
            Some(owner) => name(owner),
            None => question_name.clone(),
        };
        let ttl = Ttl::from_secs(self.ttl);
        match &self.data {
            Data::A([a, b, c, d]) => section.push((owner, ttl, A::from_octets(*a, *b, *c, *d))),
            Data::Cname(target) => section.push((owner, ttl, Cname::new(name(target)))),
            Data::Ns(server) => section.push((owner, ttl, Ns::new(name(server)))),
            Data::Soa {
                mname,
                rname,
                minimum,
            } => {
                let soa = Soa::new(
                    name(mname),
                    name(rname),
                    Serial(1),
                    Ttl::from_secs(3600),
                    Ttl::from_secs(600),
                    Ttl::from_secs(86400),
                    Ttl::from_secs(*minimum),
                );
                section.push((owner, ttl, soa))
            }
        }
        .unwrap();
    }
}

/// A 12-byte DNS header with these flags and section counts (question, answer, authority,
/// additional), for messages written byte by byte.
pub fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut header = Vec::with_capacity(QUESTION_START);
    header.extend(id.to_be_bytes());
    header.extend(flags.to_be_bytes());
    for count in counts {
        header.extend(count.to_be_bytes());
    }
    header
}

/// The question section's bytes for `name`, `qtype` and class IN, for messages written byte
/// by byte after a [`header`].
pub fn question(name: &str, qtype: Rtype) -> Vec<u8> {
    Query::new(name, qtype).build().split_off(QUESTION_START)
}

fn name(text: &str) -> Name<Vec<u8>> {
    Name::vec_from_str(text).expect("a valid name")
}

//! Helpers shared by the DNS crate's test files.

use domain::base::iana::Rtype;
use domain::base::{MessageBuilder, Name};

/// A client query for `qname` and `qtype` with `id` and the RD bit `rd`, plus an OPT record
/// with the UDP payload size and DO bit of `edns`, if any.
pub fn build_query(
    id: u16,
    qname: &str,
    qtype: Rtype,
    rd: bool,
    edns: Option<(u16, bool)>,
) -> Vec<u8> {
    let mut builder = MessageBuilder::new_vec();
    builder.header_mut().set_id(id);
    builder.header_mut().set_rd(rd);
    let mut question = builder.question();
    question
        .push((Name::<Vec<u8>>::vec_from_str(qname).unwrap(), qtype))
        .unwrap();
    let mut additional = question.additional();
    if let Some((size, dnssec_ok)) = edns {
        additional
            .opt(|opt| {
                opt.set_udp_payload_size(size);
                opt.set_dnssec_ok(dnssec_ok);
                Ok(())
            })
            .unwrap();
    }
    additional.finish()
}

//! DNS over HTTPS messages (RFC 8484) as a server sees them: the query a `GET` carries in
//! its `dns` parameter, and how long an answer may be kept by HTTP caches.
//!
//! The HTTP itself (methods, media types, status codes) is the server's; this module
//! only reads and writes what is DNS in it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::sections::{Records, Section, effective_ttl};
use crate::synth::TYPE_SOA;
use crate::wire::MAX_MESSAGE_LEN;

/// The media type of a DNS message in a request or a response body.
pub const MEDIA_TYPE: &str = "application/dns-message";

/// The path DoH is served on, as clients are told (RFC 8484 §4.1's example, and every
/// client's default).
pub const PATH: &str = "/dns-query";

/// Why a `GET` carries no query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GetError {
    #[error("no dns parameter")]
    Missing,
    #[error("the dns parameter is not base64url")]
    NotBase64Url,
    #[error("the query is larger than a DNS message")]
    TooLarge,
}

/// The query in the `dns` parameter of a request's query string (`a=b&dns=...`): base64url
/// without padding, as RFC 8484 §6 writes it; padding is accepted too.
pub fn query_from_get(query_string: Option<&str>) -> Result<Vec<u8>, GetError> {
    let value = query_string
        .into_iter()
        .flat_map(|query| query.split('&'))
        .find_map(|pair| pair.strip_prefix("dns="))
        .ok_or(GetError::Missing)?;
    // Padding, maybe percent-encoded (in either case), which base64url leaves out.
    let mut value = value;
    while let Some(rest) = value
        .strip_suffix('=')
        .or_else(|| value.strip_suffix("%3D"))
        .or_else(|| value.strip_suffix("%3d"))
    {
        value = rest;
    }
    // Encoded, a largest message is 4/3 of it: refuse more before decoding.
    if value.len() > MAX_MESSAGE_LEN.div_ceil(3) * 4 {
        return Err(GetError::TooLarge);
    }
    let query = URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| GetError::NotBase64Url)?;
    if query.len() > MAX_MESSAGE_LEN {
        return Err(GetError::TooLarge);
    }
    Ok(query)
}

/// How many seconds an HTTP cache may keep `answer` (RFC 8484 §5.1): its lowest TTL in the
/// answer and authority sections, an SOA counting its minimum too (RFC 2308 §5). An answer
/// without records, or one that does not read, may not be kept: 0.
pub fn max_age(answer: &[u8]) -> u32 {
    let Some(records) = Records::new(answer) else {
        return 0;
    };
    let mut lowest: Option<u32> = None;
    for record in records {
        let Ok(record) = record else {
            return 0;
        };
        if record.section == Section::Additional {
            break;
        }
        let mut ttl = effective_ttl(record.ttl);
        if record.rtype == TYPE_SOA
            && let Some(minimum) = answer
                .get(record.end.saturating_sub(4)..record.end)
                .filter(|_| record.end - record.rdata_start() >= 22)
        {
            let minimum = u32::from_be_bytes([minimum[0], minimum[1], minimum[2], minimum[3]]);
            ttl = ttl.min(effective_ttl(minimum));
        }
        lowest = Some(lowest.map_or(ttl, |lowest| lowest.min(ttl)));
    }
    lowest.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::base::iana::{Rcode, Rtype};
    use tundns_test_support::dns::{Answer, Data, Query};

    #[test]
    fn the_get_parameter_is_base64url_with_or_without_padding() {
        // RFC 8484 §4.1.1's example: www.example.com A.
        let example = "AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB";
        let query = query_from_get(Some(&format!("ct=x&dns={example}"))).unwrap();
        assert_eq!(&query[12..29], b"\x03www\x07example\x03com\x00");
        for padding in ["%3D%3D", "%3d%3d", "=="] {
            let padded = format!("dns={example}{padding}");
            assert_eq!(query_from_get(Some(&padded)).unwrap(), query);
        }
        assert_eq!(query_from_get(Some("x=1")), Err(GetError::Missing));
        assert_eq!(query_from_get(None), Err(GetError::Missing));
        assert_eq!(
            query_from_get(Some("dns=a+b/")),
            Err(GetError::NotBase64Url)
        );
        let huge = "A".repeat(90_000);
        assert_eq!(
            query_from_get(Some(&format!("dns={huge}"))),
            Err(GetError::TooLarge)
        );
    }

    #[test]
    fn max_age_is_the_lowest_ttl_of_the_answer_and_authority() {
        let query = Query::new("a.example", Rtype::A).build();
        let answer = Answer::to(&query)
            .a(300, [192, 0, 2, 1])
            .a(60, [192, 0, 2, 2])
            .build();
        assert_eq!(max_age(&answer), 60);
        let soa = |minimum| Data::Soa {
            mname: "ns.example".into(),
            rname: "hostmaster.example".into(),
            minimum,
        };
        let negative = Answer::to(&query)
            .rcode(Rcode::NXDOMAIN)
            .authority("example", 900, soa(30));
        assert_eq!(max_age(&negative.build()), 30, "the SOA's minimum");
        let negative = Answer::to(&query)
            .rcode(Rcode::NXDOMAIN)
            .authority("example", 20, soa(30));
        assert_eq!(max_age(&negative.build()), 20, "the SOA's own TTL");
        assert_eq!(
            max_age(&Answer::to(&query).rcode(Rcode::SERVFAIL).build()),
            0
        );
        assert_eq!(max_age(b"\x00\x01"), 0);
    }
}

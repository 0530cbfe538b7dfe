//! Reading dig's and kdig's default output: header flags, rcode, section records, message size.

use super::Run;

/// One resource record as dig prints it: `www.lab.test.  300  IN  A  203.0.113.10`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub ttl: u32,
    pub rtype: String,
    /// Everything after the type, as printed.
    pub data: String,
}

/// The flags of dig's ";; flags: qr aa tc rd ra;" line (kdig: ";; Flags: qr aa ...").
pub fn header_flags(run: &Run) -> Vec<String> {
    run.stdout
        .lines()
        .find_map(|line| {
            line.strip_prefix(";; flags: ")
                .or_else(|| line.strip_prefix(";; Flags: "))
        })
        .and_then(|rest| rest.split(';').next())
        .map(|flags| flags.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

pub fn has_flag(run: &Run, flag: &str) -> bool {
    header_flags(run).iter().any(|f| f == flag)
}

/// The rcode of the last answer dig printed ("NOERROR", "SERVFAIL", ...); kdig's
/// ";; ->>HEADER<<- opcode: QUERY; status: NOERROR; id: 1" too.
pub fn status(run: &Run) -> Option<String> {
    run.stdout
        .lines()
        .rev()
        .find_map(|line| line.split("status: ").nth(1))
        .and_then(|rest| rest.split([',', ';']).next())
        .map(str::to_owned)
}

/// ANSWER: n from the last header dig printed.
pub fn answer_count(run: &Run) -> Option<usize> {
    run.stdout
        .lines()
        .rev()
        .find_map(|line| line.split("ANSWER: ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .and_then(|count| count.trim().parse().ok())
}

/// The records of one section ("ANSWER", "AUTHORITY", "ADDITIONAL") of dig's output.
pub fn section(run: &Run, name: &str) -> Vec<Record> {
    let header = format!(";; {name} SECTION:");
    run.stdout
        .lines()
        .skip_while(|line| !line.starts_with(&header))
        .skip(1)
        .take_while(|line| !line.trim().is_empty() && !line.starts_with(";;"))
        .filter_map(parse_record)
        .collect()
}

/// ";; MSG SIZE  rcvd: 512" as a number.
pub fn message_size(run: &Run) -> Option<usize> {
    run.stdout
        .lines()
        .find_map(|line| line.split("MSG SIZE  rcvd: ").nth(1))
        .and_then(|size| size.trim().parse().ok())
}

fn parse_record(line: &str) -> Option<Record> {
    let mut fields = line.split_whitespace();
    let name = fields.next()?.to_owned();
    let ttl = fields.next()?.parse().ok()?;
    if fields.next()? != "IN" {
        return None;
    }
    let rtype = fields.next()?.to_owned();
    let data = fields.collect::<Vec<_>>().join(" ");
    Some(Record {
        name,
        ttl,
        rtype,
        data,
    })
}

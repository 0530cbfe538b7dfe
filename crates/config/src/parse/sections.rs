//! The sections a config may have, the keys each takes and whether a key may
//! repeat, and the "unknown key" message with its "did you mean" hint.

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Interface,
    Peer,
    DnsProxy,
    DnsRoute,
    Proxy,
}

/// What a header must be, for messages about one that is not.
pub(super) const EXPECTED_SECTIONS: &str =
    "expected [Interface], [Peer], [DNSProxy], [DNSRoute] or [Proxy]";

impl Section {
    pub(super) fn header(self) -> &'static str {
        match self {
            Section::Interface => "[Interface]",
            Section::Peer => "[Peer]",
            Section::DnsProxy => "[DNSProxy]",
            Section::DnsRoute => "[DNSRoute]",
            Section::Proxy => "[Proxy]",
        }
    }

    /// The keys of the section, canonically spelled, and whether each may repeat.
    pub(super) fn keys(self) -> &'static [(&'static str, Repeat)] {
        use Repeat::{Many, Once};
        match self {
            Section::Interface => &[
                ("PrivateKey", Once),
                ("ListenPort", Once),
                ("FwMark", Once),
                ("Address", Many),
                ("MTU", Once),
                ("DNS", Many),
                ("Table", Once),
                ("PreUp", Many),
                ("PostUp", Many),
                ("PreDown", Many),
                ("PostDown", Many),
                ("SaveConfig", Once),
            ],
            Section::Peer => &[
                ("PublicKey", Once),
                ("PresharedKey", Once),
                ("AllowedIPs", Many),
                ("Endpoint", Once),
                ("PersistentKeepalive", Once),
            ],
            Section::DnsProxy => &[
                ("Enabled", Once),
                ("Address", Many),
                ("AllowFrom", Many),
                ("Upstream", Many),
                ("Timeout", Once),
                ("MaxInFlight", Once),
                ("RateLimit", Once),
                ("TcpIdleTimeout", Once),
                ("MaxTcpConnections", Once),
                ("CAFile", Once),
                ("Cache", Once),
                ("CacheFile", Once),
                ("Prefetch", Once),
                ("CacheSize", Once),
                ("CacheMinTTL", Once),
                ("CacheMaxTTL", Once),
                ("CacheMaxNegativeTTL", Once),
                ("ServeStale", Once),
                ("Record", Many),
                ("HostsFile", Many),
                ("LocalZone", Many),
                ("Block", Many),
                ("BlockList", Many),
                ("BlockMode", Once),
                ("BlockTTL", Once),
                ("MetricsAddress", Once),
                ("QueryLog", Once),
                ("SetSystemDNS", Once),
                ("Encrypted", Once),
                ("TLSCertificate", Once),
                ("TLSKey", Once),
            ],
            Section::DnsRoute => &[
                ("Domain", Many),
                ("Upstream", Many),
                ("ThroughTunnel", Once),
            ],
            Section::Proxy => &[("SOCKS5", Many), ("HTTP", Many), ("Credentials", Once)],
        }
    }
}

pub(super) const SECTIONS: [Section; 5] = [
    Section::Interface,
    Section::Peer,
    Section::DnsProxy,
    Section::DnsRoute,
    Section::Proxy,
];

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Repeat {
    Once,
    Many,
}

/// Which single-valued keys a section has seen, and where.
#[derive(Default)]
pub(super) struct Seen(pub(super) Vec<(&'static str, usize)>);

impl Seen {
    pub(super) fn first_line(&self, key: &str) -> Option<usize> {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, line)| *line)
    }
}

/// A key name safe to repeat in a message: a short identifier. Anything else (a
/// pasted base64 key, say) is not echoed.
pub(super) fn printable_name(name: &str) -> Option<&str> {
    const MAX_NAME_LEN: usize = 32;
    (name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    .then_some(name)
}

/// Levenshtein distance, ASCII case-insensitive, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<u8> = a.bytes().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<u8> = b.bytes().map(|c| c.to_ascii_lowercase()).collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

pub(super) fn unknown_key_message(section: Section, key: &str) -> String {
    let Some(name) = printable_name(key) else {
        return format!(
            "unknown key in {} (not shown: it does not look like a key name)",
            section.header()
        );
    };
    let mut message = format!("unknown key {name:?} in {}", section.header());
    if let Some(other) = SECTIONS.iter().find(|other| {
        **other != section
            && other
                .keys()
                .iter()
                .any(|(known, _)| known.eq_ignore_ascii_case(key))
    }) {
        message.push_str(&format!(" (it belongs in {})", other.header()));
    } else if let Some((suggestion, _)) = section
        .keys()
        .iter()
        .filter(|(known, _)| edit_distance(known, key) <= 2)
        .min_by_key(|(known, _)| edit_distance(known, key))
    {
        message.push_str(&format!(" (did you mean {suggestion:?}?)"));
    }
    message
}

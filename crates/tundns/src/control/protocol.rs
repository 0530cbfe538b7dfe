//! The control socket's protocol: one JSON request per line, answered by one JSON reply per
//! line, `{"ok": ...}` or `{"error": "..."}`. Pure types, shared by the server (`control`)
//! and the CLI (`control_client`); no I/O here.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::dns::runtime::{RecordEntry, RouteEntry, Source};

/// The longest request line taken; a longer one is an error and ends the connection.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// One request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// Interface, peers, proxy addresses, upstream health, cache and query counters.
    Status,
    /// Stops the tunnel, as SIGTERM does: `tundns down`.
    Stop,
    /// Every local record, from the config and added at run time.
    RecordsList,
    /// Adds one record, written as the config's `Record =` value.
    RecordsAdd { record: String },
    /// Removes the records matching `NAME [TYPE [DATA]]`.
    RecordsRemove { record: String },
    /// The split-DNS routes, the default one included.
    RoutesList,
    /// Routes `domains` to a new group of `upstreams` (the config's `Upstream =` forms).
    RoutesAdd {
        domains: Vec<String>,
        upstreams: Vec<String>,
        #[serde(default)]
        through_tunnel: bool,
    },
    /// Removes the route of `domain`.
    RoutesRemove { domain: String },
    /// Reads the `BlockList` files again and puts them in use, with the `Block` domains
    /// the config had at start-up.
    BlocklistReload,
    /// Empties the answer cache.
    Flush,
    /// Asks the running proxy, as a client would, and says which path answered.
    Query {
        name: String,
        #[serde(default = "default_qtype")]
        qtype: String,
        /// Ask the route's upstreams directly: the cache is neither read nor written, and
        /// the blocklist and local data are passed by.
        #[serde(default)]
        fresh: bool,
    },
}

fn default_qtype() -> String {
    "A".into()
}

/// Reads one request line as the server does, its newline included or not: `None` for a
/// blank line, which gets no reply; otherwise the request, or the error reply's message (a
/// line that is not UTF-8 is bad JSON). The length limit, [`MAX_REQUEST_LINE`], is the
/// caller's to enforce before, as it ends the connection.
pub fn read_request(line: &[u8]) -> Option<Result<Request, String>> {
    let Ok(text) = std::str::from_utf8(line) else {
        return Some(Err("bad JSON: not UTF-8".into()));
    };
    let text = text.trim();
    (!text.is_empty()).then(|| parse_request(text))
}

/// Parses one request line; the error is the reply's message.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|error| format!("bad JSON: {error}"))?;
    let Some(command) = value.get("command") else {
        return Err("bad request: no \"command\"".into());
    };
    let Some(command) = command.as_str().map(str::to_owned) else {
        return Err("bad request: \"command\" must be a string".into());
    };
    serde_json::from_value(value).map_err(|error| {
        let message = error.to_string();
        if message.starts_with("unknown variant") {
            format!("unknown command {command:?}")
        } else {
            format!("bad {command} request: {message}")
        }
    })
}

/// One reply: `{"ok": payload}` or `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(serde_json::Value),
    Error(String),
}

impl Reply {
    /// A successful reply carrying `payload`.
    pub fn ok(payload: impl Serialize) -> Reply {
        match serde_json::to_value(payload) {
            Ok(value) => Reply::Ok(value),
            Err(error) => Reply::Error(format!("encoding the reply: {error}")),
        }
    }

    /// The reply as one line, newline included.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"error":"encoding the reply"}"#.into());
        line.push('\n');
        line
    }
}

/// The reply to a change: what was done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub message: String,
}

/// `tundns status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub interface: String,
    pub listen_port: Option<u16>,
    pub peers: Vec<PeerStatus>,
    /// `None` when `[DNSProxy] Enabled = false`.
    pub proxy: Option<ProxyStatus>,
}

/// One WireGuard peer, as the UAPI socket reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Base64, as in the config.
    pub public_key: String,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// Seconds since the Unix epoch; `None` before the first handshake.
    pub latest_handshake: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub persistent_keepalive: Option<u16>,
}

/// The DNS proxy's part of the status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyStatus {
    /// The virtual IPs.
    pub addresses: Vec<IpAddr>,
    /// The host sockets (`Address = ip:port`).
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    pub local_records: usize,
    pub groups: Vec<GroupStatus>,
    pub cache: Option<CacheStatus>,
    /// Queries by how they were answered, in a fixed order.
    pub queries: Vec<(String, u64)>,
    /// Encrypted DNS on the virtual IPs, when served.
    #[serde(default)]
    pub encrypted: Option<EncryptedStatus>,
}

/// Encrypted DNS on the virtual IPs, as a client configures it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedStatus {
    /// Where it is served, as URLs: `tls://10.30.30.30`, `https://10.30.30.30/dns-query`.
    pub endpoints: Vec<String>,
    /// The SPKI pin: base64 of the SHA-256 of the key's SubjectPublicKeyInfo.
    pub pin: String,
    /// The self-signed certificate's file; `None` for `TLSCertificate`.
    pub self_signed: Option<PathBuf>,
}

/// One upstream group and the domains routed to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub domains: Vec<String>,
    pub through_tunnel: bool,
    pub upstreams: Vec<UpstreamStatus>,
    pub queries: u64,
    pub answered: u64,
    pub timeouts: u64,
}

/// One upstream's health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamStatus {
    pub upstream: String,
    pub alive: bool,
    /// Smoothed round-trip time, once measured.
    pub rtt_ms: Option<f64>,
    /// Failures in a row.
    pub failures: u32,
}

/// The answer cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheStatus {
    pub entries: usize,
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
    /// Hits over lookups, `None` before the first lookup.
    pub hit_ratio: Option<f64>,
}

/// Which part of the resolver answered a `query` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnsweredBy {
    Blocked,
    Local,
    Cache,
    Upstream,
    /// Refused at once: too many queries in flight.
    Overload,
}

/// The reply to a `query` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryReport {
    pub name: String,
    pub qtype: String,
    pub path: AnsweredBy,
    /// For [`AnsweredBy::Upstream`]: the group asked, by its domains and upstreams.
    pub group: Option<RouteEntry>,
    /// For [`AnsweredBy::Upstream`]: the upstream that answered, if one did (not when the
    /// answer is stale or SERVFAIL).
    #[serde(default)]
    pub upstream: Option<String>,
    pub rcode: String,
    pub answers: Vec<String>,
    pub authority: Vec<String>,
    pub elapsed_us: u64,
    /// How the query was asked, as a client asks: `udp`, or `udp, then tcp` after a
    /// truncated answer.
    #[serde(default)]
    pub transport: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_from_their_json_lines() {
        assert_eq!(
            parse_request(r#"{"command":"status"}"#),
            Ok(Request::Status)
        );
        assert_eq!(
            parse_request(r#"{"command":"records_add","record":"a.lab A 10.0.0.1"}"#),
            Ok(Request::RecordsAdd {
                record: "a.lab A 10.0.0.1".into()
            })
        );
        assert_eq!(
            parse_request(r#"{"command":"query","name":"a.lab"}"#),
            Ok(Request::Query {
                name: "a.lab".into(),
                qtype: "A".into(),
                fresh: false,
            })
        );
        assert_eq!(
            parse_request(
                r#"{"command":"routes_add","domains":["corp"],"upstreams":["10.0.0.53"]}"#
            ),
            Ok(Request::RoutesAdd {
                domains: vec!["corp".into()],
                upstreams: vec!["10.0.0.53".into()],
                through_tunnel: false
            })
        );
    }

    #[test]
    fn bad_requests_get_a_message_naming_the_problem() {
        let error = parse_request("{not json").unwrap_err();
        assert!(error.starts_with("bad JSON"), "{error}");
        assert_eq!(
            parse_request(r#"{"command":"reboot"}"#).unwrap_err(),
            "unknown command \"reboot\""
        );
        let error = parse_request(r#"{"command":"records_add"}"#).unwrap_err();
        assert!(error.contains("missing field `record`"), "{error}");
        let error = parse_request(r#"{"record":"x"}"#).unwrap_err();
        assert!(error.contains("no \"command\""), "{error}");
        let error = parse_request(r#"{"command":7}"#).unwrap_err();
        assert!(error.contains("must be a string"), "{error}");
        assert!(parse_request("[]").is_err());
    }

    #[test]
    fn lines_are_read_as_the_server_reads_them() {
        assert_eq!(read_request(b"  \r\n"), None);
        assert_eq!(
            read_request(b"{\"command\":\"flush\"}\r\n"),
            Some(Ok(Request::Flush))
        );
        assert_eq!(
            read_request(b"{\"command\":\"\xff\"}\n"),
            Some(Err("bad JSON: not UTF-8".into()))
        );
    }

    #[test]
    fn requests_round_trip_through_json() {
        let requests = [
            Request::Status,
            Request::Stop,
            Request::RecordsList,
            Request::RecordsRemove {
                record: "a.lab A".into(),
            },
            Request::RoutesRemove {
                domain: "corp".into(),
            },
            Request::RoutesAdd {
                domains: vec!["corp".into(), "corp.example".into()],
                upstreams: vec!["tls://dns@192.0.2.1".into()],
                through_tunnel: true,
            },
            Request::Flush,
            Request::Query {
                name: "x".into(),
                qtype: "AAAA".into(),
                fresh: true,
            },
        ];
        for request in requests {
            let line = serde_json::to_string(&request).unwrap();
            assert_eq!(parse_request(&line), Ok(request), "{line}");
        }
    }

    #[test]
    fn replies_are_one_line_with_ok_or_error() {
        let ok = Reply::ok(Done {
            message: "flushed".into(),
        });
        assert_eq!(ok.to_line(), "{\"ok\":{\"message\":\"flushed\"}}\n");
        let error = Reply::Error("no such route".into());
        assert_eq!(error.to_line(), "{\"error\":\"no such route\"}\n");
        let back: Reply = serde_json::from_str(ok.to_line().trim()).unwrap();
        assert_eq!(back, ok);
    }
}

//! Per-peer WireGuard counters, read from the device's own UAPI socket with `get=1`, as
//! `wg show` reads them.
//!
//! The answer to `get=1` carries the private key and preshared keys; only the peers'
//! public keys, byte counters and handshake times are kept, and the buffer is zeroed
//! once parsed.

use std::io;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

pub use tundns_host::paths::uapi_socket_path;

/// The UAPI answer is a few lines per peer; a larger one is not a WireGuard device.
const MAX_ANSWER: usize = 1 << 20;

/// What one peer has done since the device started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStats {
    /// Base64, as in the config file and `wg show`.
    pub public_key: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Time of the latest handshake since the Unix epoch; zero before the first.
    pub last_handshake: Duration,
}

/// Asks the UAPI socket at `path` for the device's state and returns its peers.
pub async fn read_peers(path: &Path) -> io::Result<Vec<PeerStats>> {
    parse_get(&get(path).await?)
}

/// The UAPI socket's answer to `get=1`: the one reader of gotatun's UAPI socket, for the
/// metrics and the control socket alike. Zeroed when dropped: it holds the private key.
pub async fn get(path: &Path) -> io::Result<Zeroizing<String>> {
    let mut stream = tokio::net::UnixStream::connect(path).await?;
    stream.write_all(b"get=1\n\n").await?;
    let mut answer = Zeroizing::new(Vec::with_capacity(4096));
    let mut chunk = Zeroizing::new([0u8; 4096]);
    // The answer ends with a blank line; wireguard-go keeps the connection open after it.
    while !answer.ends_with(b"\n\n") {
        let read = stream.read(&mut chunk[..]).await?;
        if read == 0 {
            break;
        }
        if answer.len() + read > MAX_ANSWER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "UAPI answer too large",
            ));
        }
        answer.extend_from_slice(&chunk[..read]);
    }
    let text = String::from_utf8(std::mem::take(&mut *answer))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "UAPI answer is not UTF-8"))?;
    Ok(Zeroizing::new(text))
}

/// A device's state as its answer to `get=1` gives it; private and preshared keys are
/// not kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceState {
    pub listen_port: Option<u16>,
    pub peers: Vec<UapiPeer>,
}

/// One peer of a `get=1` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UapiPeer {
    pub stats: PeerStats,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// Seconds; `None` when off.
    pub persistent_keepalive: Option<u16>,
}

/// Parses the answer to `get=1`, strictly: the peers, or an error for the first line
/// that does not parse or an `errno` other than 0.
pub fn parse_get(text: &str) -> io::Result<Vec<PeerStats>> {
    match parse_device(text) {
        (_, Some(problem)) => Err(io::Error::new(io::ErrorKind::InvalidData, problem)),
        (device, None) => Ok(device.peers.into_iter().map(|peer| peer.stats).collect()),
    }
}

/// Parses the answer to `get=1`: `key=value` lines, each `public_key` starting a peer,
/// ending with `errno=N`. A line that does not parse is read as well as it can be (a
/// line without '=' passed over, a key that is not hex kept as given, a number that is
/// not one as 0) and the first such problem, or a failing `errno`, is returned beside
/// the state.
pub fn parse_device(text: &str) -> (DeviceState, Option<String>) {
    let mut device = DeviceState::default();
    let mut problem: Option<String> = None;
    let mut note = |message: String| {
        problem.get_or_insert(message);
    };
    let mut handshake_nanos = 0u32;
    for line in text.lines().filter(|line| !line.is_empty()) {
        let Some((key, value)) = line.split_once('=') else {
            note("a UAPI line without '='".into());
            continue;
        };
        let mut number = || {
            value.parse::<u64>().unwrap_or_else(|_| {
                note(format!("UAPI {key} is not a number"));
                0
            })
        };
        match key {
            "public_key" => {
                if let Some(peer) = device.peers.last_mut() {
                    peer.stats.last_handshake = peer
                        .stats
                        .last_handshake
                        .saturating_add(Duration::from_nanos(handshake_nanos.into()));
                }
                handshake_nanos = 0;
                let public_key = base64_key(value).unwrap_or_else(|| {
                    note("UAPI public_key is not 32 hex bytes".into());
                    value.to_owned()
                });
                device.peers.push(UapiPeer {
                    stats: PeerStats {
                        public_key,
                        rx_bytes: 0,
                        tx_bytes: 0,
                        last_handshake: Duration::ZERO,
                    },
                    endpoint: None,
                    allowed_ips: Vec::new(),
                    persistent_keepalive: None,
                });
            }
            "errno" if value != "0" => note(format!("UAPI get failed: errno {value}")),
            "listen_port" if device.peers.is_empty() => device.listen_port = value.parse().ok(),
            _ => {
                let Some(peer) = device.peers.last_mut() else {
                    continue;
                };
                match key {
                    "rx_bytes" => peer.stats.rx_bytes = number(),
                    "tx_bytes" => peer.stats.tx_bytes = number(),
                    "last_handshake_time_sec" => {
                        peer.stats.last_handshake = Duration::from_secs(number());
                    }
                    "last_handshake_time_nsec" => {
                        handshake_nanos = u32::try_from(number()).unwrap_or(0) % 1_000_000_000;
                    }
                    "endpoint" => peer.endpoint = Some(value.to_owned()),
                    "allowed_ip" => peer.allowed_ips.push(value.to_owned()),
                    "persistent_keepalive_interval" => {
                        peer.persistent_keepalive =
                            value.parse().ok().filter(|&seconds: &u16| seconds > 0);
                    }
                    _ => {}
                }
            }
        }
    }
    if let Some(peer) = device.peers.last_mut() {
        peer.stats.last_handshake = peer
            .stats
            .last_handshake
            .saturating_add(Duration::from_nanos(handshake_nanos.into()));
    }
    (device, problem)
}

/// A UAPI key (64 hex digits) in the config's base64 form.
pub fn base64_key(hex: &str) -> Option<String> {
    if hex.len() != 64 {
        return None;
    }
    let bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As gotatun answers: the interface's private key first, then each peer.
    const ANSWER: &str = "private_key=c809f3e5317e9575c9b5ed78b638b7ce530dabe85ddab614220241801ddf0669\n\
listen_port=51820\n\
public_key=c53201039adba14be71f886da1d8dbe9eebded08cb111b75340078999aa9f038\n\
preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n\
endpoint=192.0.2.1:51820\n\
last_handshake_time_sec=1700000000\n\
last_handshake_time_nsec=500000000\n\
rx_bytes=1234\n\
tx_bytes=5678\n\
persistent_keepalive_interval=25\n\
allowed_ip=10.99.0.0/24\n\
public_key=4eb32f4a83f88d842563a448cc181bb2c42a637bf12363e2fb2ef594e5965d7d\n\
rx_bytes=0\n\
tx_bytes=148\n\
last_handshake_time_sec=0\n\
last_handshake_time_nsec=0\n\
errno=0\n\n";

    #[test]
    fn peers_are_read_with_base64_keys_and_the_private_key_is_not_kept() {
        let peers = parse_get(ANSWER).unwrap();
        assert_eq!(
            peers,
            [
                PeerStats {
                    public_key: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=".into(),
                    rx_bytes: 1234,
                    tx_bytes: 5678,
                    last_handshake: Duration::new(1_700_000_000, 500_000_000),
                },
                PeerStats {
                    public_key: "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=".into(),
                    rx_bytes: 0,
                    tx_bytes: 148,
                    last_handshake: Duration::ZERO,
                },
            ]
        );
        assert!(!format!("{peers:?}").contains("yAnz5TF"));
    }

    #[test]
    fn errors_and_garbage_are_errors_not_panics() {
        assert!(parse_get("errno=13\n\n").is_err());
        assert!(parse_get("public_key=zz\n").is_err());
        assert!(parse_get("no equals sign\n").is_err());
        let bad_number = "public_key=c53201039adba14be71f886da1d8dbe9eebded08cb111b75340078999aa9f038\nrx_bytes=-1\n";
        assert!(parse_get(bad_number).is_err());
        assert_eq!(parse_get("errno=0\n\n").unwrap(), []);
    }
}

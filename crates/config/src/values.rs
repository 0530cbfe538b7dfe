//! Parsers for single values. Each returns a message (without `path:line`) on error.
//! Values are echoed in messages only by callers that know they are not secrets, and
//! always through [`shown`], which bounds their length.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

use ipnet::IpNet;

use crate::{BlockMode, Endpoint, RouteTable};

/// Quotes a value for a message, cut to a readable length. A value holding something
/// shaped like key material (a long run of base64 characters) is not shown at all: a
/// private key pasted under the wrong key must not reach a log.
pub(crate) fn shown(value: &str) -> String {
    const MAX_CHARS: usize = 64;
    const KEY_LIKE_RUN: usize = 40;
    let longest_base64_run = value
        .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=')))
        .map(str::len)
        .max()
        .unwrap_or(0);
    if longest_base64_run >= KEY_LIKE_RUN {
        "a value that looks like key material (not shown)".to_string()
    } else if value.chars().count() <= MAX_CHARS {
        format!("{value:?}")
    } else {
        let cut: String = value.chars().take(MAX_CHARS).collect();
        format!("{cut:?}...")
    }
}

/// Splits a list value on commas. An empty value is an empty list; an empty item
/// inside a non-empty list (`a,,b`, a trailing comma) is an error.
pub(crate) fn list_items(value: &str) -> Result<Vec<&str>, String> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(str::trim)
        .map(|item| {
            if item.is_empty() {
                Err("empty item in comma-separated list".to_string())
            } else {
                Ok(item)
            }
        })
        .collect()
}

pub(crate) fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!("expected true or false, found {}", shown(value))),
    }
}

/// A decimal number, or hexadecimal with a `0x` prefix.
fn parse_u32(value: &str) -> Option<u32> {
    match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) if !hex.is_empty() && !hex.starts_with(['+', '-']) => {
            u32::from_str_radix(hex, 16).ok()
        }
        Some(_) => None,
        None if value.starts_with('+') => None,
        None => value.parse().ok(),
    }
}

fn parse_decimal(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

pub(crate) fn parse_port(value: &str) -> Result<u16, String> {
    parse_decimal(value)
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| format!("expected a port number 0..=65535, found {}", shown(value)))
}

/// `off` and `0` both mean no mark, as with `wg`.
pub(crate) fn parse_fwmark(value: &str) -> Result<Option<NonZeroU32>, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    parse_u32(value).map(NonZeroU32::new).ok_or_else(|| {
        format!(
            "expected off, a decimal or a 0x-hexadecimal 32-bit number, found {}",
            shown(value)
        )
    })
}

pub(crate) fn parse_mtu(value: &str) -> Result<u16, String> {
    parse_decimal(value)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|mtu| (crate::MIN_MTU_IPV4..=crate::MAX_MTU).contains(mtu))
        .ok_or_else(|| {
            format!(
                "MTU must be a number from {} to {}, found {}",
                crate::MIN_MTU_IPV4,
                crate::MAX_MTU,
                shown(value)
            )
        })
}

/// `off`, `auto`, a table number, or one of the names every iproute2 install knows.
pub(crate) fn parse_table(value: &str) -> Result<RouteTable, String> {
    match value.to_ascii_lowercase().as_str() {
        "off" => return Ok(RouteTable::Off),
        "auto" => return Ok(RouteTable::Auto),
        "main" => return Ok(RouteTable::Id(254)),
        "local" => return Ok(RouteTable::Id(255)),
        "default" => return Ok(RouteTable::Id(253)),
        _ => {}
    }
    match parse_decimal(value).and_then(|n| u32::try_from(n).ok()) {
        Some(0) | None => Err(format!(
            "Table must be off, auto, main, local, default or a number 1..=4294967295, found {}",
            shown(value)
        )),
        Some(id) => Ok(RouteTable::Id(id)),
    }
}

/// `off` and `0` both disable keepalives, as with `wg`.
pub(crate) fn parse_keepalive(value: &str) -> Result<Option<NonZeroU16>, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    parse_decimal(value)
        .and_then(|n| u16::try_from(n).ok())
        .map(NonZeroU16::new)
        .ok_or_else(|| {
            format!(
                "PersistentKeepalive must be off or 1..=65535 seconds, found {}",
                shown(value)
            )
        })
}

/// A number in `1..=max`.
pub(crate) fn parse_count(value: &str, max: usize) -> Result<usize, String> {
    match parse_decimal(value).and_then(|n| usize::try_from(n).ok()) {
        Some(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a number in 1..={max}, found {}",
            shown(value)
        )),
    }
}

/// `text` split where its leading digits end: the number and its unit.
fn number_and_unit(text: &str) -> (&str, &str) {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text.split_at(digits_end)
}

/// A positive whole number with a unit: `ms`, `s` or `m` (`500ms`, `2s`, `1m`).
pub(crate) fn parse_duration(value: &str) -> Result<Duration, String> {
    const MAX: Duration = Duration::from_secs(3600);
    let lower = value.to_ascii_lowercase();
    let (number, unit) = number_and_unit(&lower);
    let bad = || {
        format!(
            "expected a duration such as 500ms, 2s or 1m (at most 1 hour, more than 0), found {}",
            shown(value)
        )
    };
    let number = parse_decimal(number).ok_or_else(bad)?;
    let duration = match unit.trim_start() {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.checked_mul(60).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    if duration.is_zero() || duration > MAX {
        return Err(bad());
    }
    Ok(duration)
}

/// `ip/prefix`, or a bare IP meaning a single host (/32 or /128). Host bits are kept.
pub(crate) fn parse_ip_net(value: &str) -> Result<IpNet, String> {
    if value.contains('/') {
        value.parse::<IpNet>().map_err(|_| {
            format!(
                "expected an IP address with optional /prefix, found {}",
                shown(value)
            )
        })
    } else {
        value.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
            format!(
                "expected an IP address with optional /prefix, found {}",
                shown(value)
            )
        })
    }
}

/// Text that someone meant as an IP address: only digits and dots, or anything with a
/// colon (a domain name has neither shape).
pub(crate) fn looks_like_ip(value: &str) -> bool {
    value.contains(':') || value.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// A DNS name as a resolver accepts it: labels of letters, digits, `-` and `_`,
/// 1..=63 bytes each, 253 bytes in all, an optional final dot.
pub(crate) fn is_domain_name(value: &str) -> bool {
    let name = value.strip_suffix('.').unwrap_or(value);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `ip:port`, `[v6]:port`, or `host:port` (kept unresolved).
pub(crate) fn parse_endpoint(value: &str) -> Result<Endpoint, String> {
    if let Ok(address) = value.parse::<SocketAddr>() {
        if address.port() == 0 {
            return Err(format!(
                "Endpoint port must be 1..=65535, found {}",
                shown(value)
            ));
        }
        return Ok(Endpoint::Addr(address));
    }
    let usage = || {
        format!(
            "expected host:port, ipv4:port or [ipv6]:port, found {}",
            shown(value)
        )
    };
    if value.starts_with('[') {
        return Err(usage());
    }
    let (host, port) = value.rsplit_once(':').ok_or_else(usage)?;
    if host.contains(':') {
        return Err(format!(
            "an IPv6 endpoint must be written [address]:port, found {}",
            shown(value)
        ));
    }
    let port = match parse_decimal(port).and_then(|n| u16::try_from(n).ok()) {
        Some(port) if port != 0 => port,
        _ => {
            return Err(format!(
                "Endpoint port must be 1..=65535, found {}",
                shown(value)
            ));
        }
    };
    if looks_like_ip(host) || !is_domain_name(host) {
        return Err(usage());
    }
    Ok(Endpoint::Host {
        host: host.to_string(),
        port,
    })
}

/// How a name given to `Block`, `LocalZone` or `Domain` is kept: lowercase, without
/// the final dot. The root `.` is accepted only where `root_allowed`.
pub(crate) fn parse_domain(value: &str, root_allowed: bool) -> Result<String, String> {
    if value == "." {
        return if root_allowed {
            Ok(".".to_string())
        } else {
            Err("the root \".\" would cover every name; list domains instead".to_string())
        };
    }
    if value.starts_with("*.") {
        return Err(format!(
            "expected a domain name, found {} (no wildcard needed: a domain covers every name under it)",
            shown(value)
        ));
    }
    if looks_like_ip(value) || !is_domain_name(value) {
        return Err(format!("expected a domain name, found {}", shown(value)));
    }
    Ok(value
        .strip_suffix('.')
        .unwrap_or(value)
        .to_ascii_lowercase())
}

/// A local address to listen on: `ip:port` or `[v6]:port` with a port of 1..=65535, or
/// `off` for none.
pub(crate) fn parse_listen_address(key: &str, value: &str) -> Result<Option<SocketAddr>, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    match value.parse::<SocketAddr>() {
        Ok(address) if address.port() != 0 => Ok(Some(address)),
        Ok(_) => Err(format!(
            "{key} port must be 1..=65535, found {}",
            shown(value)
        )),
        Err(_) => Err(format!(
            "{key}: expected ip:port or [ipv6]:port (or off), found {}",
            shown(value)
        )),
    }
}

/// A path kept as given: non-empty, without control characters.
pub(crate) fn parse_path(key: &str, value: &str) -> Result<std::path::PathBuf, String> {
    if value.is_empty() {
        return Err(format!("{key} needs a file path"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!(
            "{key}: the path {} contains a control character",
            shown(value)
        ));
    }
    Ok(value.into())
}

/// A whole number of seconds, minutes, hours or days (`30s`, `5m`, `1h`, `1d`), at
/// most [`crate::MAX_TTL`]; zero only where `zero_allowed`.
pub(crate) fn parse_ttl(value: &str, zero_allowed: bool) -> Result<Duration, String> {
    let lower = value.to_ascii_lowercase();
    let (number, unit) = number_and_unit(&lower);
    let bad = || {
        let least = if zero_allowed { "0s" } else { "1s" };
        format!(
            "expected a duration such as 30s, 5m, 1h or 1d ({least}..=7d), found {}",
            shown(value)
        )
    };
    let number = parse_decimal(number).ok_or_else(bad)?;
    let unit_seconds: u64 = match unit.trim_start() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let duration = Duration::from_secs(number.checked_mul(unit_seconds).ok_or_else(bad)?);
    if (duration.is_zero() && !zero_allowed) || duration > crate::MAX_TTL {
        return Err(bad());
    }
    Ok(duration)
}

/// A byte count: plain bytes (an optional `B`) or `KiB`, `MiB`, `GiB`, within
/// [`crate::MIN_CACHE_SIZE`]..=[`crate::MAX_CACHE_SIZE`].
pub(crate) fn parse_cache_size(value: &str) -> Result<usize, String> {
    let lower = value.to_ascii_lowercase();
    let (number, unit) = number_and_unit(&lower);
    let bad = |hint: &str| {
        format!(
            "expected a size such as 32MiB, 512KiB or 1GiB (64KiB..=1GiB){hint}, found {}",
            shown(value)
        )
    };
    let number = parse_decimal(number).ok_or_else(|| bad(""))?;
    let multiplier: u64 = match unit.trim_start() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "k" | "kb" | "m" | "mb" | "g" | "gb" => {
            return Err(bad("; sizes are binary: use KiB, MiB or GiB"));
        }
        _ => return Err(bad("")),
    };
    number
        .checked_mul(multiplier)
        .and_then(|bytes| usize::try_from(bytes).ok())
        .filter(|bytes| (crate::MIN_CACHE_SIZE..=crate::MAX_CACHE_SIZE).contains(bytes))
        .ok_or_else(|| bad(""))
}

pub(crate) fn parse_block_mode(value: &str) -> Result<BlockMode, String> {
    match value.to_ascii_lowercase().as_str() {
        "nxdomain" => Ok(BlockMode::NxDomain),
        "null" => Ok(BlockMode::Null),
        _ => Err(format!("expected nxdomain or null, found {}", shown(value))),
    }
}

/// Why an address cannot be a unicast host address, if it cannot.
pub(crate) fn unusable_unicast(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        Some("the broadcast address")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("500 ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2S"), Ok(Duration::from_secs(2)));
        for bad in [
            "",
            "2",
            "0s",
            "s",
            "-1s",
            "1.5s",
            "2h",
            "61m",
            "99999999999999999999s",
            "+2s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fwmarks() {
        assert_eq!(parse_fwmark("off"), Ok(None));
        assert_eq!(parse_fwmark("0"), Ok(None));
        assert_eq!(parse_fwmark("51820"), Ok(NonZeroU32::new(51820)));
        assert_eq!(parse_fwmark("0xca6c"), Ok(NonZeroU32::new(0xca6c)));
        assert_eq!(parse_fwmark("0xFFFFFFFF"), Ok(NonZeroU32::new(u32::MAX)));
        for bad in [
            "",
            "0x",
            "0x100000000",
            "4294967296",
            "-1",
            "+1",
            "0x+1",
            "on",
        ] {
            assert!(parse_fwmark(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("192.0.2.1:51820"),
            Ok(Endpoint::Addr("192.0.2.1:51820".parse().unwrap()))
        );
        assert_eq!(
            parse_endpoint("[2001:db8::1]:51820"),
            Ok(Endpoint::Addr("[2001:db8::1]:51820".parse().unwrap()))
        );
        assert_eq!(
            parse_endpoint("vpn.example.com:51820"),
            Ok(Endpoint::Host {
                host: "vpn.example.com".into(),
                port: 51820
            })
        );
        for bad in [
            "192.0.2.1",
            "192.0.2.1:0",
            "192.0.2.1:65536",
            "2001:db8::1:51820",
            "[2001:db8::1]",
            "[2001:db8::1:51820",
            "300.0.2.1:51820",
            "vpn example.com:51820",
            ":51820",
            "host:",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("0s", true), Ok(Duration::ZERO));
        assert_eq!(parse_ttl("30s", false), Ok(Duration::from_secs(30)));
        assert_eq!(parse_ttl("5m", false), Ok(Duration::from_secs(300)));
        assert_eq!(parse_ttl("2H", false), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_ttl("1 d", false), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_ttl("7d", false), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_ttl("0s", false).is_err());
        for bad in [
            "",
            "0",
            "30",
            "8d",
            "169h",
            "500ms",
            "1w",
            "-1s",
            "1.5h",
            "+1s",
            "d",
            "99999999999999999999d",
            "18446744073709551615d",
        ] {
            assert!(parse_ttl(bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn mtus_fit_gotatun_buffers() {
        assert_eq!(parse_mtu("576"), Ok(576));
        assert_eq!(parse_mtu("4064"), Ok(4064));
        for bad in ["575", "4065", "9000", "65535", "70000", "", "1420 bytes"] {
            assert!(parse_mtu(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cache_sizes() {
        assert_eq!(parse_cache_size("32MiB"), Ok(32 << 20));
        assert_eq!(parse_cache_size("64kib"), Ok(64 << 10));
        assert_eq!(parse_cache_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_cache_size("65536"), Ok(65_536));
        assert_eq!(parse_cache_size("65536B"), Ok(65_536));
        for bad in [
            "",
            "MiB",
            "63KiB",
            "65535",
            "2GiB",
            "1025MiB",
            "32MB",
            "32M",
            "1.5GiB",
            "-1MiB",
            "18446744073709551615GiB",
            "32 MiB extra",
        ] {
            assert!(parse_cache_size(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_cache_size("32MB"),
            Err("expected a size such as 32MiB, 512KiB or 1GiB (64KiB..=1GiB); sizes are binary: use KiB, MiB or GiB, found \"32MB\"".to_string())
        );
    }

    #[test]
    fn domains() {
        assert_eq!(
            parse_domain("Corp.Example.", false),
            Ok("corp.example".into())
        );
        assert_eq!(parse_domain("_dmarc.corp", false), Ok("_dmarc.corp".into()));
        assert_eq!(parse_domain(".", true), Ok(".".into()));
        for bad in [
            ".",
            "*.ads.example",
            "1.2.3.4",
            "2001:db8::1",
            "a..b",
            "ex ample",
            "",
        ] {
            assert!(parse_domain(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn block_modes_and_paths() {
        assert_eq!(parse_block_mode("NXDOMAIN"), Ok(BlockMode::NxDomain));
        assert_eq!(parse_block_mode("null"), Ok(BlockMode::Null));
        assert!(parse_block_mode("refused").is_err());
        assert_eq!(parse_path("CAFile", "ca.pem"), Ok("ca.pem".into()));
        assert!(parse_path("CAFile", "").is_err());
        assert!(parse_path("CAFile", "a\u{7}b").is_err());
    }

    #[test]
    fn domain_names() {
        assert!(is_domain_name("example.com"));
        assert!(is_domain_name("example.com."));
        assert!(is_domain_name("corp"));
        assert!(!is_domain_name("."));
        assert!(!is_domain_name("a..b"));
        assert!(!is_domain_name(&"a".repeat(64)));
        assert!(!is_domain_name("ex ample"));
    }

    #[test]
    fn lists() {
        assert_eq!(list_items(""), Ok(vec![]));
        assert_eq!(list_items("a, b ,c"), Ok(vec!["a", "b", "c"]));
        assert!(list_items("a,,b").is_err());
        assert!(list_items("a,").is_err());
    }

    #[test]
    fn shown_is_bounded() {
        assert_eq!(shown("abc"), "\"abc\"");
        assert!(shown(&"x.".repeat(1000)).len() < 80);
    }

    #[test]
    fn shown_hides_key_material() {
        for value in [
            "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=",
            "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=:51820",
            "10.0.0.1/24 yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3f",
        ] {
            assert_eq!(
                shown(value),
                "a value that looks like key material (not shown)"
            );
        }
    }
}

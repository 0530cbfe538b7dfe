//! Full tunnels: a default route in `AllowedIPs` with `Table = auto`, done as wg-quick's
//! `add_default` does it. A firewall mark doubles as the number of a routing table that
//! holds only the default route into the tunnel, and two policy rules per family send
//! everything unmarked there:
//!
//! ```text
//! ip rule add not fwmark 51820 table 51820          # unmarked traffic: the tunnel's table
//! ip rule add table main suppress_prefixlength 0    # but main's more specific routes first
//! ip route add default dev wg0 table 51820
//! sysctl net.ipv4.conf.all.src_valid_mark=1         # with an IPv4 default route
//! ```
//!
//! WireGuard's own UDP and every upstream DNS socket carry the mark (the config's `FwMark`,
//! set here when absent), so they skip the tunnel's table and leave through the main table:
//! DNS never enters the tunnel. Upstream groups marked `ThroughTunnel` carry no mark, and
//! so do enter it. This module owns the choice of mark and table and what a full tunnel
//! installs; [`crate::policy_rules`] adds each rule, sysctl and table, journals it and takes
//! it back.
//!
//! Like wg-quick, it also adds an nftables table per family ([`crate::firewall`]) that drops
//! packets for the tunnel's addresses arriving from elsewhere and lets marked replies
//! through strict reverse-path filtering. The tables are recorded like the rules. Without
//! `nft`, or if it fails, the tunnel runs without them and says so.

use std::net::IpAddr;
use std::num::NonZeroU32;

use ipnet::IpNet;
use rtnetlink::Handle;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
use tundns_config::{Config, RouteTable};

use crate::error::SystemError;
use crate::firewall::{Family, FirewallTable};
use crate::paths::MAIN_TABLE;
use crate::policy_rules::{RuleKind, SRC_VALID_MARK};
use crate::system::{SystemChanges, list_routes};

/// wg-quick's first choice of mark and table.
pub const DEFAULT_TABLE: u32 = 51820;

/// How many tables after [`DEFAULT_TABLE`] are tried for an empty one.
const TABLE_SEARCH_LIMIT: u32 = 1024;

/// Reverse-path filtering for all interfaces: 1 is strict.
const RP_FILTER: &str = "/proc/sys/net/ipv4/conf/all/rp_filter";

/// The default routes (`0.0.0.0/0`, `::/0`) that policy routing carries, one per family:
/// any in the peers' `AllowedIPs` when `Table = auto`.
pub fn default_routes(config: &Config) -> Vec<IpNet> {
    if config.interface.table != RouteTable::Auto {
        return Vec::new();
    }
    let mut defaults: Vec<IpNet> = Vec::new();
    for network in config.peers.iter().flat_map(|peer| &peer.allowed_ips) {
        if network.prefix_len() == 0
            && !defaults
                .iter()
                .any(|seen| seen.addr().is_ipv4() == network.addr().is_ipv4())
        {
            defaults.push(network.trunc());
        }
    }
    defaults
}

/// True when `network` is routed by policy rules rather than into a table directly.
pub fn is_policy_routed(config: &Config, network: &IpNet) -> bool {
    network.prefix_len() == 0 && config.interface.table == RouteTable::Auto
}

/// A default route tundns cannot route safely: one put into the main table by
/// `Table = main` (254) would carry the tunnel's own packets into itself.
pub fn unsupported_default_route(config: &Config) -> Option<IpNet> {
    if config.interface.table != RouteTable::Id(MAIN_TABLE) {
        return None;
    }
    config
        .peers
        .iter()
        .flat_map(|peer| &peer.allowed_ips)
        .find(|network| network.prefix_len() == 0)
        .copied()
}

/// The config to run: for a full tunnel without `FwMark`, the first routing table from
/// 51820 with no routes in it becomes the mark, as wg-quick picks it. Otherwise `config`
/// as it is. Reads the routing tables; changes nothing.
pub async fn with_fwmark(config: &Config) -> Result<Config, SystemError> {
    let mut config = config.clone();
    if config.interface.fwmark.is_none() && !default_routes(&config).is_empty() {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        let connection = tokio::spawn(connection);
        let table = free_table(&handle).await;
        connection.abort();
        config.interface.fwmark = NonZeroU32::new(table?);
    }
    Ok(config)
}

/// The first table from [`DEFAULT_TABLE`] on that holds no IPv4 or IPv6 route.
async fn free_table(handle: &Handle) -> Result<u32, SystemError> {
    let mut used = Vec::new();
    for ipv6 in [false, true] {
        let routes = list_routes(handle, ipv6).await?;
        used.extend(routes.iter().map(route_table));
    }
    (DEFAULT_TABLE..DEFAULT_TABLE + TABLE_SEARCH_LIMIT)
        .find(|table| !used.contains(table))
        .ok_or(SystemError::NoFreeTable(DEFAULT_TABLE))
}

fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

/// Installs the rules, routes and sysctl of a full tunnel, recording each in `changes`.
/// Does nothing unless the config has a default route with `Table = auto`; the mark must
/// have been chosen by [`with_fwmark`] (or configured).
pub async fn install(config: &Config, changes: &mut SystemChanges) -> Result<(), SystemError> {
    let defaults = default_routes(config);
    if defaults.is_empty() {
        return Ok(());
    }
    let table = config
        .interface
        .fwmark
        .map_or(DEFAULT_TABLE, NonZeroU32::get);
    let tunnel_addresses: Vec<IpAddr> =
        config.interface.addresses.iter().map(IpNet::addr).collect();
    let virtual_ips: &[IpAddr] = if config.dns_proxy.enabled {
        &config.dns_proxy.addresses
    } else {
        &[]
    };
    let interface_index = changes.interface_index();
    for default in defaults {
        let (family, firewall_family) = match default {
            IpNet::V4(_) => (AddressFamily::Inet, Family::Ip),
            IpNet::V6(_) => (AddressFamily::Inet6, Family::Ip6),
        };
        {
            let (handle, policy) = changes.policy();
            let ipv6 = family == AddressFamily::Inet6;
            policy
                .add_rule(handle, RuleKind::UnmarkedToTable { ipv6, table })
                .await?;
            policy
                .add_rule(handle, RuleKind::MainWithoutDefault { ipv6 })
                .await?;
        }
        changes.add_route_in(default, table).await?;
        let policy = changes.policy().1;
        let firewall = FirewallTable::for_interface(&config.interface_name, firewall_family);
        let ruleset = firewall.ruleset(interface_index, table, &tunnel_addresses, virtual_ips);
        let filtered = policy.add_firewall_table(firewall, ruleset).await?;
        if family == AddressFamily::Inet {
            policy.set_sysctl(SRC_VALID_MARK, "1")?;
            if !filtered {
                warn_if_strict_rp_filter();
            }
        }
    }
    tracing::info!(
        fwmark = table,
        table,
        "full tunnel: policy routing installed"
    );
    Ok(())
}

/// Strict reverse-path filtering drops replies from an endpoint or upstream behind a
/// gateway: their lookup, unmarked, finds the tunnel. The nftables table restores the mark
/// from conntrack; without it, tundns says so.
fn warn_if_strict_rp_filter() {
    if std::fs::read_to_string(RP_FILTER).is_ok_and(|value| value.trim() == "1") {
        tracing::warn!(
            "net.ipv4.conf.all.rp_filter = 1 (strict) drops replies from an endpoint or \
             upstream reached through a gateway in a full tunnel; use 2 (loose)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(table: &str, allowed_ips: &str) -> Config {
        let text = format!(
            "[Interface]\nPrivateKey = {key}\nAddress = 10.99.0.2/24\n{table}\n\
             [Peer]\nPublicKey = {key}\nAllowedIPs = {allowed_ips}\n",
            key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        );
        Config::parse(&text, std::path::Path::new("wg0.conf")).expect("a valid config")
    }

    #[test]
    fn default_routes_one_per_family_only_with_table_auto() {
        let full = config("", "0.0.0.0/0, ::/0, 10.99.0.0/24, 0.0.0.0/0");
        assert_eq!(
            default_routes(&full),
            vec![
                "0.0.0.0/0".parse::<IpNet>().unwrap(),
                "::/0".parse().unwrap()
            ]
        );
        assert!(default_routes(&config("", "10.99.0.0/24, ::/1")).is_empty());
        assert!(default_routes(&config("Table = off", "0.0.0.0/0")).is_empty());
        assert!(default_routes(&config("Table = 1234", "0.0.0.0/0")).is_empty());
    }

    #[test]
    fn only_table_main_with_a_default_route_is_refused() {
        let refused = config("Table = main", "10.99.0.0/24, ::/0");
        assert_eq!(
            unsupported_default_route(&refused),
            Some("::/0".parse().unwrap())
        );
        for (table, allowed_ips) in [
            ("", "0.0.0.0/0, ::/0"),
            ("Table = off", "0.0.0.0/0"),
            ("Table = 1234", "0.0.0.0/0"),
            ("Table = main", "10.99.0.0/24"),
        ] {
            assert_eq!(
                unsupported_default_route(&config(table, allowed_ips)),
                None,
                "{table} {allowed_ips}"
            );
        }
    }

    #[test]
    fn policy_routed_networks_are_the_default_routes_with_table_auto() {
        let auto = config("", "0.0.0.0/0");
        assert!(is_policy_routed(&auto, &"0.0.0.0/0".parse().unwrap()));
        assert!(!is_policy_routed(&auto, &"10.0.0.0/8".parse().unwrap()));
        let off = config("Table = off", "0.0.0.0/0");
        assert!(!is_policy_routed(&off, &"0.0.0.0/0".parse().unwrap()));
    }
}

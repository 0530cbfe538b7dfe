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
//! so do enter it. This module owns the choice of mark and table, the rules and the sysctl;
//! each change is recorded in [`PolicyChanges`] as it is made and undone at teardown. The
//! record is also written to a state file under `/run` before each change, so that the next
//! `up` of the interface takes back what a run that could not stop cleanly (SIGKILL, a
//! crash) left ([`repair`]); the tunnel's table empties itself when the interface goes, and
//! a reboot clears both the rules and the file.
//!
//! Like wg-quick, it also adds an nftables table per family ([`crate::firewall`]) that drops
//! packets for the tunnel's addresses arriving from elsewhere and lets marked replies
//! through strict reverse-path filtering. The tables are recorded like the rules. Without
//! `nft`, or if it fails, the tunnel runs without them and says so.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use rtnetlink::{Handle, IpVersion};
use serde::{Deserialize, Serialize};
use tundns_config::{Config, RouteTable};

use crate::atomic_file::{FileError, write_atomically};
use crate::firewall::{Family, FirewallTable};
use crate::paths::{MAIN_TABLE, RUN_DIRECTORY};
use crate::system::{SystemChanges, SystemError, failed, list_routes};
use crate::system_dns::process_is_tundns;

/// wg-quick's first choice of mark and table.
pub const DEFAULT_TABLE: u32 = 51820;

/// How many tables after [`DEFAULT_TABLE`] are tried for an empty one.
const TABLE_SEARCH_LIMIT: u32 = 1024;

/// The priority the kernel gives the first rule added after its defaults.
const FIRST_FREE_PRIORITY: u32 = 32765;

/// Lets marked packets through strict reverse-path filtering.
const SRC_VALID_MARK: &str = "/proc/sys/net/ipv4/conf/all/src_valid_mark";

/// Reverse-path filtering for all interfaces: 1 is strict.
const RP_FILTER: &str = "/proc/sys/net/ipv4/conf/all/rp_filter";

/// The `format` every policy state file carries; anything else is not ours to touch.
const STATE_FORMAT: &str = "tundns-policy-state/1";

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
        let ruleset = firewall.ruleset(interface_index, table, &tunnel_addresses);
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

/// `not fwmark TABLE table TABLE`
fn unmarked_to_table(family: AddressFamily, table: u32) -> RuleMessage {
    let mut rule = rule_to_table(family, table);
    rule.header.flags = RuleFlags::Invert;
    rule.attributes.push(RuleAttribute::FwMark(table));
    rule
}

/// `table main suppress_prefixlength 0`
fn main_without_default(family: AddressFamily) -> RuleMessage {
    let mut rule = rule_to_table(family, MAIN_TABLE);
    rule.attributes.push(RuleAttribute::SuppressPrefixLen(0));
    rule
}

fn rule_to_table(family: AddressFamily, table: u32) -> RuleMessage {
    let mut rule = RuleMessage::default();
    rule.header.family = family;
    rule.header.action = RuleAction::ToTable;
    // Tables above 255 only fit the attribute; the header then says "see the attribute".
    rule.header.table = u8::try_from(table).unwrap_or(0);
    rule.attributes.push(RuleAttribute::Table(table));
    rule
}

/// One of the two rules of a full tunnel, per family, as the state file records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RuleKind {
    /// `not fwmark TABLE table TABLE`
    UnmarkedToTable { ipv6: bool, table: u32 },
    /// `table main suppress_prefixlength 0`
    MainWithoutDefault { ipv6: bool },
}

impl RuleKind {
    fn family(self) -> AddressFamily {
        match self {
            RuleKind::UnmarkedToTable { ipv6: true, .. }
            | RuleKind::MainWithoutDefault { ipv6: true } => AddressFamily::Inet6,
            _ => AddressFamily::Inet,
        }
    }

    fn message(self, priority: u32) -> RuleMessage {
        let mut rule = match self {
            RuleKind::UnmarkedToTable { table, .. } => unmarked_to_table(self.family(), table),
            RuleKind::MainWithoutDefault { .. } => main_without_default(self.family()),
        };
        rule.attributes.push(RuleAttribute::Priority(priority));
        rule
    }
}

/// What a full tunnel changed, written before each change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PolicyState {
    format: String,
    /// The tundns that made the changes.
    pid: u32,
    /// The network namespace they were made in (the inode of its `/proc/*/ns/net`).
    netns: u64,
    /// Rules added, with their priority, oldest first.
    rules: Vec<(RuleKind, u32)>,
    /// Sysctl files changed, with the value each had before.
    sysctls: Vec<(String, String)>,
    /// nftables tables added, oldest first.
    #[serde(default)]
    firewall_tables: Vec<FirewallTable>,
}

/// The state file of `interface`'s policy changes. Under `/run`, which a reboot empties
/// as it empties the rules: a record that outlived its rules could match another tunnel's.
fn state_path(interface: &str) -> PathBuf {
    Path::new(RUN_DIRECTORY).join(format!("{interface}.policy-state"))
}

/// The network namespace this process runs in.
fn current_netns() -> Option<u64> {
    std::fs::metadata("/proc/self/ns/net")
        .ok()
        .map(|meta| meta.ino())
}

/// The policy rules, sysctl values and nftables tables a full tunnel changed, for teardown.
pub struct PolicyChanges {
    state_path: PathBuf,
    state: PolicyState,
    /// Whether the state file exists (written at the first change).
    written: bool,
}

impl PolicyChanges {
    /// Nothing changed yet for `interface`.
    pub fn new(interface: &str) -> Self {
        Self {
            state_path: state_path(interface),
            state: PolicyState {
                format: STATE_FORMAT.into(),
                pid: std::process::id(),
                netns: current_netns().unwrap_or_default(),
                rules: Vec::new(),
                sysctls: Vec::new(),
                firewall_tables: Vec::new(),
            },
            written: false,
        }
    }

    /// Adds a rule of `kind` with the priority the kernel would pick for it (just above the
    /// highest-priority rule but the local table's), so teardown deletes exactly this rule.
    /// The state file records it first.
    async fn add_rule(&mut self, handle: &Handle, kind: RuleKind) -> Result<(), SystemError> {
        let priority = next_priority(handle, kind.family()).await?;
        let rule = kind.message(priority);
        self.state.rules.push((kind, priority));
        self.write_state()?;
        let mut request = handle.rule().add();
        *request.message_mut() = rule.clone();
        if let Err(source) = request.execute().await {
            // Not added: not to be deleted after a crash either.
            self.state.rules.pop();
            self.write_state()?;
            return Err(SystemError::Netlink {
                action: format!("adding policy rule {}", describe(&rule)),
                source,
            });
        }
        tracing::debug!(rule = %describe(&rule), "policy rule added");
        Ok(())
    }

    /// Creates `table` from `ruleset`, recording it first. Returns false, with a warning,
    /// when nft is missing or refuses: the tunnel works without the table, less guarded.
    async fn add_firewall_table(
        &mut self,
        table: FirewallTable,
        ruleset: String,
    ) -> Result<bool, SystemError> {
        self.state.firewall_tables.push(table.clone());
        self.write_state()?;
        if let Err(error) = table.create(ruleset).await {
            self.state.firewall_tables.pop();
            self.write_state()?;
            let mut consequence =
                "packets for the tunnel's addresses are not filtered by interface".to_owned();
            if table.family == Family::Ip {
                consequence
                    .push_str(", and strict rp_filter drops replies from outside the tunnel");
            }
            if error.not_found {
                tracing::warn!("nft is not installed: {consequence}");
            } else {
                tracing::warn!(%error, "could not add the nftables table: {consequence}");
            }
            return Ok(false);
        }
        tracing::debug!(table = %table.name, family = ?table.family, "nftables table added");
        Ok(true)
    }

    /// Writes `value` to the sysctl file at `path`, recording the old value first.
    fn set_sysctl(&mut self, path: &'static str, value: &str) -> Result<(), SystemError> {
        let old =
            std::fs::read_to_string(path).map_err(|source| SystemError::Sysctl { path, source })?;
        let old = old.trim();
        if old == value
            || self
                .state
                .sysctls
                .iter()
                .any(|(changed, _)| changed == path)
        {
            return Ok(());
        }
        self.state.sysctls.push((path.into(), old.to_string()));
        self.write_state()?;
        std::fs::write(path, value).map_err(|source| SystemError::Sysctl { path, source })
    }

    /// Writes the state file whole, root-only, in a root-only directory.
    fn write_state(&mut self) -> Result<(), SystemError> {
        let text = serde_json::to_string(&self.state).expect("the state serializes");
        if let Some(directory) = self.state_path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(directory)
                .map_err(FileError::of("creating", directory))?;
        }
        write_atomically(&self.state_path, text.as_bytes(), 0o600)?;
        self.written = true;
        Ok(())
    }

    /// Deletes the tables and the rules, restores the sysctl values and removes the state
    /// file. Errors are logged: teardown goes on.
    pub async fn undo(&mut self, handle: &Handle) {
        undo_recorded(handle, &mut self.state).await;
        if self.written {
            remove_state(&self.state_path);
            self.written = false;
        }
    }
}

/// Deletes `state`'s nftables tables, then its rules newest first, and restores its sysctl
/// values (only those this module changes, whatever the file says). A table that cannot be
/// deleted is logged; the next `up` of the interface replaces it.
async fn undo_recorded(handle: &Handle, state: &mut PolicyState) -> PolicyRepair {
    let mut undone = PolicyRepair::default();
    while let Some(table) = state.firewall_tables.pop() {
        match table.delete().await {
            Ok(()) => undone.firewall_tables += 1,
            Err(error) => tracing::warn!(
                table = %table.name,
                %error,
                "could not remove the nftables table; the next up of this interface replaces it"
            ),
        }
    }
    while let Some((kind, priority)) = state.rules.pop() {
        let rule = kind.message(priority);
        match handle.rule().del(rule.clone()).execute().await {
            Ok(()) => undone.rules += 1,
            Err(error) => {
                tracing::warn!(rule = %describe(&rule), %error, "could not remove policy rule");
            }
        }
    }
    while let Some((path, old)) = state.sysctls.pop() {
        if path != SRC_VALID_MARK {
            continue;
        }
        match std::fs::write(SRC_VALID_MARK, &old) {
            Ok(()) => undone.sysctls += 1,
            Err(error) => tracing::warn!(path, %error, "could not restore sysctl"),
        }
    }
    undone
}

fn remove_state(path: &Path) {
    if let Err(error) = std::fs::remove_file(path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "could not remove the policy state file");
    }
}

/// Takes back the policy rules, sysctl values and nftables tables that an earlier run for
/// `interface` left when it could not stop cleanly, as its state file records them, and
/// removes the file.
///
/// A state file that is not tundns's, one of a tundns still running, or one from another
/// network namespace is left alone, and so is the tunnel: the error says what to check.
/// Failing to delete a recorded rule (already gone, say) is only logged.
pub async fn repair(interface: &str) -> Result<Option<PolicyRepair>, SystemError> {
    let path = state_path(interface);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(FileError::of("reading", &path)(error).into()),
    };
    let refuse = |reason: String| SystemError::ForeignState {
        path: path.clone(),
        reason,
    };
    let mut state = match serde_json::from_str::<PolicyState>(&text) {
        Ok(state) if state.format == STATE_FORMAT => state,
        _ => return Err(refuse("not a policy state file tundns wrote".into())),
    };
    // This process is no other run, whatever the file says: a container's tundns is
    // pid 1 in every run.
    if state.pid != std::process::id() && process_is_tundns(state.pid) {
        return Err(refuse(format!(
            "tundns (pid {}) still runs {interface} with these rules; stop it first",
            state.pid
        )));
    }
    if current_netns() != Some(state.netns) {
        return Err(refuse(
            "left by a tundns in another network namespace, whose rules it lists".into(),
        ));
    }
    let (connection, handle, _) = rtnetlink::new_connection()?;
    let connection = tokio::spawn(connection);
    let repaired = undo_recorded(&handle, &mut state).await;
    connection.abort();
    remove_state(&path);
    tracing::info!(
        interface,
        rules = repaired.rules,
        firewall_tables = repaired.firewall_tables,
        sysctls = repaired.sysctls,
        "took back the policy rules of an earlier run that did not stop cleanly"
    );
    Ok(Some(repaired))
}

/// What [`repair`] took back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyRepair {
    /// Policy rules deleted.
    pub rules: usize,
    /// nftables tables deleted.
    pub firewall_tables: usize,
    /// Sysctl values restored.
    pub sysctls: usize,
}

/// One less than the lowest non-zero priority among `family`'s rules: where the kernel
/// puts a rule added without one, as `ip rule add` and wg-quick do.
async fn next_priority(handle: &Handle, family: AddressFamily) -> Result<u32, SystemError> {
    let version = match family {
        AddressFamily::Inet6 => IpVersion::V6,
        _ => IpVersion::V4,
    };
    let rules: Vec<RuleMessage> = handle
        .rule()
        .get(version)
        .execute()
        .try_collect()
        .await
        .map_err(failed("listing policy rules"))?;
    let lowest = rules
        .iter()
        .filter_map(rule_priority)
        .filter(|priority| *priority > 1)
        .min();
    Ok(lowest.map_or(FIRST_FREE_PRIORITY, |priority| priority - 1))
}

fn rule_priority(rule: &RuleMessage) -> Option<u32> {
    rule.attributes
        .iter()
        .find_map(|attribute| match attribute {
            RuleAttribute::Priority(priority) => Some(*priority),
            _ => None,
        })
}

/// The rule as `ip rule` would print it, for logs and errors.
fn describe(rule: &RuleMessage) -> String {
    let family = if rule.header.family == AddressFamily::Inet6 {
        "-6"
    } else {
        "-4"
    };
    let mut text = family.to_string();
    if let Some(priority) = rule_priority(rule) {
        text.push_str(&format!(" priority {priority}"));
    }
    if rule.header.flags.contains(RuleFlags::Invert) {
        text.push_str(" not");
    }
    // In `ip rule`'s order, whatever order the attributes are in.
    for attribute in &rule.attributes {
        if let RuleAttribute::FwMark(mark) = attribute {
            text.push_str(&format!(" fwmark {mark:#x}"));
        }
    }
    for attribute in &rule.attributes {
        match attribute {
            RuleAttribute::Table(table) => text.push_str(&format!(" table {table}")),
            RuleAttribute::SuppressPrefixLen(length) => {
                text.push_str(&format!(" suppress_prefixlength {length}"));
            }
            _ => {}
        }
    }
    text
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
    fn rules_are_wg_quicks() {
        let unmarked = unmarked_to_table(AddressFamily::Inet, 51820);
        assert_eq!(describe(&unmarked), "-4 not fwmark 0xca6c table 51820");
        assert_eq!(unmarked.header.action, RuleAction::ToTable);
        let mut main = main_without_default(AddressFamily::Inet6);
        main.attributes.push(RuleAttribute::Priority(32764));
        assert_eq!(
            describe(&main),
            "-6 priority 32764 table 254 suppress_prefixlength 0"
        );
        assert_eq!(main.header.table, 254);
    }

    #[test]
    fn the_state_file_records_each_rule_as_added() {
        let state = PolicyState {
            format: STATE_FORMAT.into(),
            pid: 42,
            netns: 4026531840,
            rules: vec![
                (
                    RuleKind::UnmarkedToTable {
                        ipv6: false,
                        table: 51820,
                    },
                    32765,
                ),
                (RuleKind::MainWithoutDefault { ipv6: true }, 32764),
            ],
            sysctls: vec![(SRC_VALID_MARK.into(), "0".into())],
            firewall_tables: vec![FirewallTable::for_interface("wg0", Family::Ip6)],
        };
        let text = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<PolicyState>(&text).unwrap(), state);
        assert!(
            text.contains(r#""firewall_tables":[{"family":"ip6","name":"tundns-wg0"}]"#),
            "{text}"
        );
        // A file from before the tables were recorded still reads.
        let without_tables = text.replace(
            r#","firewall_tables":[{"family":"ip6","name":"tundns-wg0"}]"#,
            "",
        );
        let read = serde_json::from_str::<PolicyState>(&without_tables).unwrap();
        assert!(read.firewall_tables.is_empty());
        let described: Vec<String> = state
            .rules
            .iter()
            .map(|(kind, priority)| describe(&kind.message(*priority)))
            .collect();
        assert_eq!(
            described,
            [
                "-4 priority 32765 not fwmark 0xca6c table 51820",
                "-6 priority 32764 table 254 suppress_prefixlength 0",
            ]
        );
        assert_eq!(state_path("wg0"), Path::new("/run/tundns/wg0.policy-state"));
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

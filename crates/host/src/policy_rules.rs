//! A full tunnel's policy rules, sysctl values and nftables tables ([`crate::firewall`]):
//! each added and recorded in [`PolicyChanges`] as it is made, the record journaled
//! ([`crate::journal`]) before each change, and all of it undone at teardown, or by the next
//! run of the interface after a run that could not stop cleanly
//! ([`undo_left_policy`]). The tunnel's table empties itself when the interface goes, and a
//! reboot clears both the rules and their record.
//!
//! Which rules a full tunnel needs is `policy_routing`'s decision.

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use rtnetlink::{Handle, IpVersion};
use serde::{Deserialize, Serialize};

use crate::error::{SystemError, failed};
use crate::firewall::{Family, FirewallTable};
use crate::journal::{self, Entry, Journal, Kind, Lifetime};
use crate::paths::MAIN_TABLE;

/// The priority the kernel gives the first rule added after its defaults.
const FIRST_FREE_PRIORITY: u32 = 32765;

/// Lets marked packets through strict reverse-path filtering.
pub(crate) const SRC_VALID_MARK: &str = "/proc/sys/net/ipv4/conf/all/src_valid_mark";

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

/// One of the two rules of a full tunnel, per family, as the journal records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RuleKind {
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

/// What a full tunnel changed, as the journal records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEntry {
    /// Rules added, with their priority, oldest first.
    rules: Vec<(RuleKind, u32)>,
    /// Sysctl files changed, with the value each had before.
    sysctls: Vec<(String, String)>,
    /// nftables tables added, oldest first.
    #[serde(default)]
    firewall_tables: Vec<FirewallTable>,
}

impl Entry for PolicyEntry {
    const KIND: &'static Kind = &Kind {
        format: "tundns-policy-state/1",
        name: "policy state",
        extension: "policy-state",
        lifetime: Lifetime::UntilReboot,
        changes: "policy rules",
        left_alone: "the policy routing",
        check: "`ip rule`, `ip -6 rule` and `nft list tables`",
    };

    fn validate(&self, interface: &str) -> Result<(), String> {
        if let Some(table) = self
            .firewall_tables
            .iter()
            .find(|table| **table != FirewallTable::for_interface(interface, table.family))
        {
            return Err(format!(
                "the nftables table {:?} is not one tundns names for {interface}",
                table.name
            ));
        }
        let restorable = |(path, old): &(String, String)| {
            path == SRC_VALID_MARK
                && !old.trim().is_empty()
                && old.trim().len() <= 8
                && old.trim().bytes().all(|b| b.is_ascii_digit())
        };
        match self.sysctls.iter().find(|sysctl| !restorable(sysctl)) {
            Some((path, old)) => Err(format!(
                "the sysctl {path:?} = {old:?} is not one tundns changes"
            )),
            None => Ok(()),
        }
    }
}

/// The policy rules, sysctl values and nftables tables a full tunnel changed, for teardown.
pub struct PolicyChanges {
    journal: Journal<PolicyEntry>,
}

impl PolicyChanges {
    /// Nothing changed yet for `interface`.
    pub fn new(interface: &str) -> Self {
        Self {
            journal: Journal::new(interface, PolicyEntry::default()),
        }
    }

    /// Adds a rule of `kind` with the priority the kernel would pick for it (just above the
    /// highest-priority rule but the local table's), so teardown deletes exactly this rule.
    /// The journal records it first.
    pub(crate) async fn add_rule(
        &mut self,
        handle: &Handle,
        kind: RuleKind,
    ) -> Result<(), SystemError> {
        let priority = next_priority(handle, kind.family()).await?;
        let rule = kind.message(priority);
        self.journal.entry_mut().rules.push((kind, priority));
        self.journal.write()?;
        if let Some((family, rest)) = describe(&rule).split_once(' ') {
            tracing::info!("[#] ip {family} rule add {rest}");
        }
        let mut request = handle.rule().add();
        *request.message_mut() = rule.clone();
        if let Err(source) = request.execute().await {
            // Not added: not to be deleted after a crash either.
            self.journal.entry_mut().rules.pop();
            self.journal.write()?;
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
    pub(crate) async fn add_firewall_table(
        &mut self,
        table: FirewallTable,
        ruleset: String,
    ) -> Result<bool, SystemError> {
        self.journal.entry_mut().firewall_tables.push(table.clone());
        self.journal.write()?;
        tracing::info!(
            "[#] nft -f (table {} {})",
            table.family.keyword(),
            table.name
        );
        if let Err(error) = table.create(ruleset).await {
            self.journal.entry_mut().firewall_tables.pop();
            self.journal.write()?;
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
    pub(crate) fn set_sysctl(
        &mut self,
        path: &'static str,
        value: &str,
    ) -> Result<(), SystemError> {
        let old =
            std::fs::read_to_string(path).map_err(|source| SystemError::Sysctl { path, source })?;
        let old = old.trim();
        if old == value
            || self
                .journal
                .entry()
                .sysctls
                .iter()
                .any(|(changed, _)| changed == path)
        {
            return Ok(());
        }
        self.journal
            .entry_mut()
            .sysctls
            .push((path.into(), old.to_string()));
        self.journal.write()?;
        let key = path.trim_start_matches("/proc/sys/").replace('/', ".");
        tracing::info!("[#] sysctl -q {key}={value}");
        std::fs::write(path, value).map_err(|source| SystemError::Sysctl { path, source })
    }

    /// Deletes the tables and the rules, restores the sysctl values and removes the
    /// journal's record. Errors are logged: teardown goes on.
    pub async fn undo(&mut self, handle: &Handle) {
        undo_recorded(handle, &mut self.journal).await;
    }
}

/// Deletes the nftables tables `journal` records, then its rules newest first, restores its
/// sysctl values (only those this module changes, whatever the record says) and removes
/// the record. A table that cannot be deleted is logged; the next `up` of the interface
/// replaces it.
async fn undo_recorded(handle: &Handle, journal: &mut Journal<PolicyEntry>) -> PolicyRepair {
    let mut undone = PolicyRepair::default();
    let state = journal.entry_mut();
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
    if let Err(error) = journal.remove() {
        tracing::warn!(%error, "could not remove the policy state file");
    }
    undone
}

/// Takes back the policy rules, sysctl values and nftables tables that an earlier run of
/// `interface` left when it could not stop cleanly, as its journal records them, and
/// removes the record. `None` when there is none.
///
/// A record the journal refuses is left alone, and so is the tunnel: the error says what
/// to check. Failing to delete a recorded rule (already gone, say) is only logged.
pub(crate) async fn undo_left_policy(interface: &str) -> Result<Option<PolicyRepair>, SystemError> {
    let Some(mut journal) = journal::left_behind::<PolicyEntry>(interface)? else {
        return Ok(None);
    };
    let (connection, handle, _) = rtnetlink::new_connection()?;
    let connection = tokio::spawn(connection);
    let repaired = undo_recorded(&handle, &mut journal).await;
    connection.abort();
    tracing::info!(
        interface,
        rules = repaired.rules,
        firewall_tables = repaired.firewall_tables,
        sysctls = repaired.sysctls,
        "took back the policy rules of an earlier run that did not stop cleanly"
    );
    Ok(Some(repaired))
}

/// What taking back an earlier run's policy routing undid.
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
    use std::path::Path;

    use super::*;
    use crate::journal::Record;

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
        let state = Record {
            format: PolicyEntry::KIND.format.into(),
            interface: Some("wg0".into()),
            pid: 42,
            netns: Some(4026531840),
            boot_id: None,
            started: None,
            entry: PolicyEntry {
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
            },
        };
        let text = serde_json::to_string(&state).unwrap();
        assert_eq!(
            serde_json::from_str::<Record<PolicyEntry>>(&text).unwrap(),
            state
        );
        assert!(
            text.contains(r#""firewall_tables":[{"family":"ip6","name":"tundns-wg0"}]"#),
            "{text}"
        );
        // A file from before the tables were recorded still reads.
        let without_tables = text.replace(
            r#","firewall_tables":[{"family":"ip6","name":"tundns-wg0"}]"#,
            "",
        );
        let read = serde_json::from_str::<Record<PolicyEntry>>(&without_tables).unwrap();
        assert!(read.entry.firewall_tables.is_empty());
        let described: Vec<String> = state
            .entry
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
        assert_eq!(
            PolicyEntry::KIND.path("wg0"),
            Path::new("/run/tundns/wg0.policy-state")
        );
    }

    #[test]
    fn a_state_file_from_before_the_shared_journal_still_reads() {
        let old = r#"{"format":"tundns-policy-state/1","pid":42,"netns":4026531840,"rules":[[{"main-without-default":{"ipv6":true}},32764]],"sysctls":[]}"#;
        let read = Record::<PolicyEntry>::parse(old.as_bytes(), "wg0").unwrap();
        assert_eq!(read.netns, Some(4026531840));
        assert_eq!(
            read.entry.rules,
            [(RuleKind::MainWithoutDefault { ipv6: true }, 32764)]
        );
    }

    #[test]
    fn a_record_names_only_this_interfaces_tables_and_the_one_sysctl() {
        let record = |tables: &str, sysctls: &str| {
            format!(
                r#"{{"format":"tundns-policy-state/1","interface":"wg0","pid":42,"netns":1,"rules":[],"sysctls":{sysctls},"firewall_tables":{tables}}}"#
            )
        };
        let parse = |json: String| Record::<PolicyEntry>::parse(json.as_bytes(), "wg0");
        let ours = r#"[{"family":"ip","name":"tundns-wg0"}]"#;
        let mark = format!(r#"[["{SRC_VALID_MARK}","0"]]"#);
        assert!(parse(record(ours, &mark)).is_ok());
        for tables in [
            r#"[{"family":"ip","name":"filter"}]"#,
            r#"[{"family":"ip","name":"tundns-wg1"}]"#,
            r#"[{"family":"ip","name":"tundns-wg0; flush ruleset"}]"#,
        ] {
            let refused = parse(record(tables, "[]")).unwrap_err();
            assert!(refused.contains("nftables table"), "{refused}");
        }
        for sysctls in [
            r#"[["/proc/sys/net/ipv4/ip_forward","0"]]"#.to_string(),
            format!(r#"[["{SRC_VALID_MARK}","1 x"]]"#),
            format!(r#"[["{SRC_VALID_MARK}",""]]"#),
        ] {
            let refused = parse(record("[]", &sysctls)).unwrap_err();
            assert!(refused.contains("sysctl"), "{refused}");
        }
    }
}

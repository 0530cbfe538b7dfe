//! The one way back after a run that could not stop cleanly: everything the crash journal
//! ([`crate::journal`]) records for an interface is taken back, kind by kind.

use crate::error::SystemError;
use crate::firewall::{Family, FirewallTable};
use crate::policy_rules::{PolicyRepair, undo_left_policy};
use crate::system_dns::apply::DnsRestore;
use crate::system_dns::apply::undo_left_dns;
use crate::system_dns::error::SystemDnsError;

/// What taking back an earlier run's changes came to, per kind of change. Each is taken
/// back on its own: a record refused does not keep the other from being acted on.
#[derive(Debug)]
pub struct CrashRepair {
    /// The full tunnel's policy rules, nftables tables and sysctl values; `None` when
    /// nothing was recorded.
    pub policy: Result<Option<PolicyRepair>, SystemError>,
    /// The system resolver: given back, or left as someone else changed it; `None` when
    /// nothing was recorded.
    pub dns: Result<Option<DnsRestore>, SystemDnsError>,
}

/// Takes back what an earlier run of `interface` left, as the journal records it, kind by
/// kind: what `tundns reset` does. `tundns up` calls the two parts itself, in order.
pub async fn repair(interface: &str) -> CrashRepair {
    remove_listener_tables(interface).await;
    CrashRepair {
        policy: repair_policy(interface).await,
        dns: repair_dns(interface),
    }
}

/// Deletes the proxies' listener tables a crashed run of `interface` left (see
/// [`FirewallTable::for_virtual_listeners`]); without `nft`, or without tables, nothing.
pub async fn remove_listener_tables(interface: &str) {
    for family in [Family::Ip, Family::Ip6] {
        let table = FirewallTable::for_virtual_listeners(interface, family);
        if let Err(error) = table.delete().await
            && !error.not_found
        {
            tracing::warn!(%error, table = %table.name, "deleting a listeners' table");
        }
    }
}

/// Takes back a crashed full tunnel's policy rules, nftables tables and sysctl values.
///
/// `tundns up` runs this first and stops on an error before [`repair_dns`]: a policy record
/// refused (a running tundns's, or an unnamed namespace's whose directory is shared) keeps
/// the run from touching a resolver that is not its own either.
pub async fn repair_policy(interface: &str) -> Result<Option<PolicyRepair>, SystemError> {
    undo_left_policy(interface).await
}

/// Gives the system resolver back as a crashed run of `interface` left it recorded.
pub fn repair_dns(interface: &str) -> Result<Option<DnsRestore>, SystemDnsError> {
    let dns = undo_left_dns(interface);
    match &dns {
        Ok(Some(restore @ DnsRestore::Restored(_))) => {
            tracing::warn!(%interface, "{restore}: an earlier run left it changed");
        }
        Ok(Some(restore @ DnsRestore::LeftAsChanged { .. })) => {
            tracing::warn!(%interface, "after an earlier run: {restore}");
        }
        _ => {}
    }
    dns
}

/// The interface `tundns reset` means: a config path's file stem (`wg0.conf`,
/// `/etc/wireguard/wg0.conf`), or an interface name as is.
pub fn interface_for(target: &str) -> Result<String, tundns_config::ConfigError> {
    if target.is_empty() || target.contains('/') || target.ends_with(".conf") {
        tundns_config::interface_name_from_path(target)
    } else {
        tundns_config::interface_name_from_path(format!("{target}.conf"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_dns_takes_an_interface_or_a_config() {
        assert_eq!(interface_for("wg0").unwrap(), "wg0");
        assert_eq!(interface_for("tun.x").unwrap(), "tun.x");
        assert_eq!(interface_for("wg0.conf").unwrap(), "wg0");
        assert_eq!(
            interface_for("/etc/wireguard/office.conf").unwrap(),
            "office"
        );
        assert!(interface_for("much-too-long-for-linux").is_err());
        assert!(interface_for("").is_err());
    }
}

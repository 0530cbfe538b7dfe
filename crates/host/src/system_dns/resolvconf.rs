//! The resolvconf backend's decisions, for Debian's resolvconf and openresolv: the record's
//! name and content and the commands that add and remove it.

use super::plan::ResolverSettings;
use crate::command_line::CommandLine;

/// Debian resolvconf's ordering of interface records.
pub const RESOLVCONF_INTERFACE_ORDER: &str = "/etc/resolvconf/interface-order";

/// Which resolvconf is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvconfFlavor {
    Debian,
    Openresolv,
}

/// The command that adds `record` with `settings`. openresolv gets `-m 0 -x` so that the
/// tunnel's servers come first and alone.
pub fn apply_commands(
    flavor: ResolvconfFlavor,
    record: &str,
    settings: &ResolverSettings,
) -> Vec<CommandLine> {
    let args: &[&str] = match flavor {
        ResolvconfFlavor::Debian => &["-a", record],
        ResolvconfFlavor::Openresolv => &["-a", record, "-m", "0", "-x"],
    };
    vec![CommandLine::new(
        "resolvconf",
        args,
        Some(resolvconf_record(settings)),
    )]
}

/// The command that removes `record`.
pub fn revert_commands(flavor: ResolvconfFlavor, record: &str) -> Vec<CommandLine> {
    let args: &[&str] = match flavor {
        ResolvconfFlavor::Debian => &["-d", record],
        ResolvconfFlavor::Openresolv => &["-d", record, "-f"],
    };
    vec![CommandLine::new("resolvconf", args, None)]
}

/// The resolv.conf fragment resolvconf reads on stdin.
fn resolvconf_record(settings: &ResolverSettings) -> String {
    let mut text = String::new();
    for server in &settings.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !settings.search.is_empty() {
        text.push_str(&format!("search {}\n", settings.search.join(" ")));
    }
    text
}

/// The resolvconf record for `interface`. Debian orders records by the patterns in
/// `/etc/resolvconf/interface-order`; like wg-quick, the record takes the prefix of the
/// first plain `name*` pattern there (`tun*` gives `tun.wg0`) so that it sorts first.
pub fn resolvconf_record_name(
    flavor: ResolvconfFlavor,
    interface_order: Option<&str>,
    interface: &str,
) -> String {
    let prefix = match (flavor, interface_order) {
        (ResolvconfFlavor::Debian, Some(order)) => order.lines().map(str::trim).find_map(|line| {
            line.strip_suffix('*').filter(|prefix| {
                !prefix.is_empty()
                    && !prefix.starts_with('-')
                    && prefix
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
        }),
        _ => None,
    };
    match prefix {
        Some(prefix) => format!("{prefix}.{interface}"),
        None => interface.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolvconf_record_names_follow_the_interface_order() {
        let order = "lo.inet6\nlo\nlo.!(pdns|pdns-recursor)\ntun*\ntap*\n";
        assert_eq!(
            resolvconf_record_name(ResolvconfFlavor::Debian, Some(order), "wg0"),
            "tun.wg0"
        );
        assert_eq!(
            resolvconf_record_name(ResolvconfFlavor::Debian, None, "wg0"),
            "wg0"
        );
        assert_eq!(
            resolvconf_record_name(ResolvconfFlavor::Openresolv, Some(order), "wg0"),
            "wg0"
        );
    }
}

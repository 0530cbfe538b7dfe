//! Full tunnels' nftables rules, as wg-quick adds them: one table per family with a default
//! route, named after the interface (`tundns-wg0`).
//!
//! - `preraw` drops a packet for the tunnel's own addresses that arrives on another
//!   interface from a source that is not this host. Without it a neighbour on the LAN can
//!   reach the tunnel's address and probe what the tunnel carries (CVE-2019-14899). The
//!   virtual IPs are left out: this host owns no address there, and a host that forwards
//!   (containers, VMs) may mean its guests to use the proxy. The reverse too: a packet from
//!   the tunnel for one of this host's *other* addresses is dropped, so the peer cannot
//!   reach the sockets that are meant to bypass the tunnel (WireGuard's own, the DNS
//!   upstreams': it could sweep their ports with ICMP errors and mark upstreams dead).
//! - `postmangle` copies the mark of WireGuard's and the upstreams' packets (UDP and TCP)
//!   into conntrack, and `premangle` puts it back on their replies. With the mark the
//!   reply's reverse-path lookup skips the tunnel's table and finds the way it came, so
//!   strict reverse-path filtering (`rp_filter = 1`) lets it in.
//!
//! The ruleset is text fed to `nft -f -`: one transaction, all or nothing, that replaces a
//! table of the same name left by a run that could not delete it. The drop rule matches
//! the interface by index, which a replaced table always has right.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::command_line::{CommandError, CommandLine};

/// An nftables address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ip,
    Ip6,
}

impl Family {
    /// How nft names the family: `ip` or `ip6`.
    pub fn keyword(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }

    /// Whether `address` is of this family.
    pub fn holds(self, address: &IpAddr) -> bool {
        address.is_ipv6() == (self == Family::Ip6)
    }
}

/// One family's table of a full tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallTable {
    pub family: Family,
    pub name: String,
}

impl FirewallTable {
    /// The table for `interface` in `family`. Letters, digits, `-` and `.` stay; any
    /// other byte, `_` included, becomes `_` and two hex digits, so that two interfaces
    /// never share a table.
    pub fn for_interface(interface: &str, family: Family) -> Self {
        let mut name = String::from("tundns-");
        for byte in interface.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.') {
                name.push(char::from(byte));
            } else {
                name.push_str(&format!("_{byte:02x}"));
            }
        }
        FirewallTable { family, name }
    }

    /// The ruleset that creates this table, replacing any of the same name, for the
    /// interface with index `interface_index`, packets marked `mark`, the tunnel's own
    /// addresses `protected` and the `virtual_ips` (whose answers come out of the TUN to
    /// any of this host's addresses), each of this table's family.
    pub fn ruleset(
        &self,
        interface_index: u32,
        mark: u32,
        protected: &[IpAddr],
        virtual_ips: &[IpAddr],
    ) -> String {
        let family = self.family.keyword();
        let set = |addresses: &[IpAddr]| {
            let listed: Vec<String> = addresses
                .iter()
                .filter(|address| self.family.holds(address))
                .map(IpAddr::to_string)
                .collect();
            (!listed.is_empty()).then(|| format!("{{ {} }}", listed.join(", ")))
        };
        let from_outside = set(protected).map_or(String::new(), |protected| {
            format!(
                "iif != {interface_index} {family} daddr {protected} fib saddr type != local counter drop\n    "
            )
        });
        let not_virtual = set(virtual_ips).map_or(String::new(), |virtual_ips| {
            format!("{family} saddr != {virtual_ips} ")
        });
        // Local to this host, but not an address of the tunnel's own (whenever it was added).
        let from_the_tunnel = format!(
            "iif {interface_index} {not_virtual}fib daddr type local fib daddr . iif type != local counter drop"
        );
        let preraw = format!(
            "  chain preraw {{\n    type filter hook prerouting priority raw; policy accept;\n    \
             {from_outside}{from_the_tunnel}\n  }}\n"
        );
        format!(
            "{removal}table {family} {name} {{\n{preraw}  \
             chain premangle {{\n    type filter hook prerouting priority mangle; policy accept;\n    \
             meta l4proto {{ tcp, udp }} ct mark {mark} meta mark set ct mark\n  }}\n  \
             chain postmangle {{\n    type filter hook postrouting priority mangle; policy accept;\n    \
             meta l4proto {{ tcp, udp }} meta mark {mark} ct mark set meta mark\n  }}\n}}\n",
            removal = self.removal(),
            name = self.name,
        )
    }

    /// The table that keeps forwarded packets off the proxies' listeners on the virtual
    /// IPs of `interface`, in `family`. Its name starts `tundns_`, which no full tunnel's
    /// table has (an `_` in an interface name is escaped).
    pub fn for_virtual_listeners(interface: &str, family: Family) -> Self {
        let full_tunnel = Self::for_interface(interface, family);
        FirewallTable {
            family,
            name: full_tunnel.name.replacen("tundns-", "tundns_listeners-", 1),
        }
    }

    /// The ruleset that creates the listeners' table, replacing any of the same name: it
    /// drops forwarded packets to the `tcp` listen addresses of this table's family and to
    /// the UDP `relay_ports` of their IPs. This host's own packets are never forwarded, so
    /// they pass; a routed host's are dropped before any masquerade makes them look local.
    pub fn listeners_ruleset(
        &self,
        tcp: &[std::net::SocketAddr],
        relay_ports: (u16, u16),
    ) -> String {
        let family = self.family.keyword();
        let mut rules = String::new();
        let mut ips: Vec<IpAddr> = Vec::new();
        for listen in tcp.iter().filter(|listen| self.family.holds(&listen.ip())) {
            rules.push_str(&format!(
                "    {family} daddr {} tcp dport {} drop
",
                listen.ip(),
                listen.port()
            ));
            if !ips.contains(&listen.ip()) {
                ips.push(listen.ip());
            }
        }
        for ip in ips {
            rules.push_str(&format!(
                "    {family} daddr {ip} udp dport {}-{} drop
",
                relay_ports.0, relay_ports.1
            ));
        }
        format!(
            "{removal}table {family} {name} {{
               chain forward {{
    type filter hook forward priority filter; policy accept;
{rules}  }}
}}
",
            removal = self.removal(),
            name = self.name,
        )
    }

    /// The ruleset that deletes this table, and succeeds when there is none: declaring the
    /// table first makes sure there is one to delete.
    fn removal(&self) -> String {
        let family = self.family.keyword();
        format!(
            "table {family} {name} {{}}\ndelete table {family} {name}\n",
            name = self.name
        )
    }

    /// Creates the table from `ruleset` (see [`FirewallTable::ruleset`]).
    pub async fn create(&self, ruleset: String) -> Result<(), CommandError> {
        run_blocking(CommandLine::new("nft", &["-f", "-"], Some(ruleset))).await
    }

    /// Deletes the table and everything in it. A table that is already gone is no error.
    pub async fn delete(&self) -> Result<(), CommandError> {
        run_blocking(CommandLine::new("nft", &["-f", "-"], Some(self.removal()))).await
    }
}

/// Runs `command` off the async workers: nft may take a while on a busy ruleset.
async fn run_blocking(command: CommandLine) -> Result<(), CommandError> {
    let description = command.to_string();
    match tokio::task::spawn_blocking(move || command.run()).await {
        Ok(result) => result.map(drop),
        Err(error) => Err(CommandError {
            command: description,
            reason: error.to_string(),
            not_found: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_what_nft_takes() {
        let table = FirewallTable::for_interface("wg0", Family::Ip);
        assert_eq!(table.name, "tundns-wg0");
        let odd = FirewallTable::for_interface("a+b\"c.d_e-fä", Family::Ip6);
        assert_eq!(odd.name, "tundns-a_2bb_22c.d_5fe-f_c3_a4");
        // Names that differ keep differing.
        let plus = FirewallTable::for_interface("wg+0", Family::Ip).name;
        let underscore = FirewallTable::for_interface("wg_0", Family::Ip).name;
        assert_ne!(plus, underscore);
    }

    #[test]
    fn each_family_protects_its_own_addresses() {
        let protected: Vec<IpAddr> = ["10.99.0.2", "fd99::2", "10.30.30.30", "fd30:30:30::30"]
            .iter()
            .map(|address| address.parse().unwrap())
            .collect();
        let v4 = FirewallTable::for_interface("wg0", Family::Ip).ruleset(7, 51820, &protected, &[]);
        assert!(
            v4.starts_with(
                "table ip tundns-wg0 {}\ndelete table ip tundns-wg0\ntable ip tundns-wg0 {\n"
            ),
            "{v4}"
        );
        assert!(
            v4.contains(
                "iif != 7 ip daddr { 10.99.0.2, 10.30.30.30 } fib saddr type != local counter drop"
            ),
            "{v4}"
        );
        assert!(
            v4.contains("meta l4proto { tcp, udp } meta mark 51820 ct mark set meta mark"),
            "{v4}"
        );
        assert!(
            v4.contains("meta l4proto { tcp, udp } ct mark 51820 meta mark set ct mark"),
            "{v4}"
        );
        let v6 =
            FirewallTable::for_interface("wg0", Family::Ip6).ruleset(7, 51820, &protected, &[]);
        assert!(
            v6.contains("iif != 7 ip6 daddr { fd99::2, fd30:30:30::30 }"),
            "{v6}"
        );
        assert_eq!(v6.matches('{').count(), v6.matches('}').count(), "{v6}");
    }

    #[test]
    fn no_address_of_the_family_only_the_tunnels_packets_for_the_host_are_dropped() {
        let protected: Vec<IpAddr> = vec!["10.99.0.2".parse().unwrap()];
        let v6 =
            FirewallTable::for_interface("wg0", Family::Ip6).ruleset(7, 51820, &protected, &[]);
        assert!(!v6.contains("iif != 7"), "{v6}");
        assert!(
            v6.contains("iif 7 fib daddr type local fib daddr . iif type != local counter drop"),
            "{v6}"
        );
        assert!(v6.contains("chain premangle"), "{v6}");
    }

    #[test]
    fn the_peer_reaches_only_the_tunnels_own_addresses_on_this_host() {
        let protected: Vec<IpAddr> = vec!["10.99.0.2".parse().unwrap()];
        let virtual_ips: Vec<IpAddr> = vec!["10.30.30.30".parse().unwrap()];
        let v4 = FirewallTable::for_interface("wg0", Family::Ip).ruleset(
            7,
            51820,
            &protected,
            &virtual_ips,
        );
        // The virtual IPs' answers, to whichever address of this host asked, pass.
        assert!(
            v4.contains(
                "iif 7 ip saddr != { 10.30.30.30 } fib daddr type local fib daddr . iif type != local counter drop"
            ),
            "{v4}"
        );
    }
}

//! What the config asks of the system resolver, decided without looking at the system:
//! the servers and search domains to give it, the warnings worth giving, and which of the
//! system's resolvers the proxy may forward to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tundns_config::{Config, Upstream};

/// glibc reads at most this many `nameserver` lines (MAXNS).
pub const MAX_NAMESERVERS: usize = 3;

/// What the system resolver is told while the tunnel runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverSettings {
    /// Name servers, in order. Empty when `DNS` names search domains only: the system
    /// keeps its own servers then.
    pub servers: Vec<IpAddr>,
    /// Search domains, in order.
    pub search: Vec<String>,
}

/// What the config asks of the system resolver, and what is worth a warning about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsPlan {
    /// `None`: the system resolver is left alone.
    pub settings: Option<ResolverSettings>,
    pub warnings: Vec<String>,
}

impl DnsPlan {
    /// Decides what `config` asks of the system resolver.
    pub fn for_config(config: &Config) -> DnsPlan {
        let dns = &config.interface;
        let proxy = &config.dns_proxy;
        let proxy_addresses: &[IpAddr] = if proxy.enabled { &proxy.addresses } else { &[] };
        let mut warnings = Vec::new();
        let listed = !dns.dns_servers.is_empty() || !dns.dns_search.is_empty();
        let settings = match proxy.set_system_dns {
            Some(false) => {
                if listed {
                    warnings.push(
                    "DNS = is not applied: SetSystemDNS = false leaves the system resolver alone"
                        .to_string(),
                );
                }
                None
            }
            Some(true) => {
                let ignored: Vec<String> = dns
                    .dns_servers
                    .iter()
                    .filter(|ip| !proxy_addresses.contains(ip))
                    .map(ToString::to_string)
                    .collect();
                if !ignored.is_empty() {
                    warnings.push(format!(
                    "DNS = {} is not given to the system: SetSystemDNS = true points it at the proxy only",
                    ignored.join(", ")
                ));
                }
                Some(ResolverSettings {
                    servers: proxy_addresses.to_vec(),
                    search: dns.dns_search.clone(),
                })
            }
            None if listed => {
                if proxy.enabled
                    && !dns.dns_servers.is_empty()
                    && !dns
                        .dns_servers
                        .iter()
                        .any(|ip| proxy_addresses.contains(ip))
                {
                    warnings.push(format!(
                    "DNS = names none of the proxy's addresses ({}): the system resolver will bypass the proxy",
                    join(proxy_addresses)
                ));
                }
                Some(ResolverSettings {
                    servers: dns.dns_servers.clone(),
                    search: dns.dns_search.clone(),
                })
            }
            None => None,
        };
        if let Some(settings) = &settings
            && settings.servers.len() > MAX_NAMESERVERS
        {
            warnings.push(format!(
                "DNS = names {} servers; resolv.conf readers use the first {MAX_NAMESERVERS}",
                settings.servers.len()
            ));
        }
        DnsPlan { settings, warnings }
    }
}

pub(super) fn join(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The upstreams taken from the system's resolvers: never one of the proxy's own
/// addresses (queries would loop), nor systemd-resolved's stub, which forwards to the proxy
/// once the system points at it.
pub fn system_upstreams(found: Vec<Upstream>, proxy_addresses: &[IpAddr]) -> Vec<Upstream> {
    const RESOLVED_STUBS: [IpAddr; 2] = [
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 54)),
    ];
    found
        .into_iter()
        .filter(|upstream| {
            let ip = upstream.address().ip();
            !proxy_addresses.contains(&ip)
                && !RESOLVED_STUBS.contains(&ip)
                && !ip.is_unspecified()
                && ip != IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        })
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const KEY: &str = "PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";

    fn config(interface: &str, proxy: &str) -> Config {
        let text = format!("[Interface]\n{KEY}\n{interface}\n[DNSProxy]\n{proxy}\n");
        Config::parse(&text, "wg0.conf").expect("a valid config")
    }

    pub(in crate::system_dns) fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    pub(in crate::system_dns) fn settings(servers: &[&str], search: &[&str]) -> ResolverSettings {
        ResolverSettings {
            servers: ips(servers),
            search: search.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn dns_naming_the_proxy_points_the_system_at_it_with_the_search_domains() {
        let plan = DnsPlan::for_config(&config("DNS = 10.30.30.30, corp.example", ""));
        assert_eq!(
            plan.settings,
            Some(settings(&["10.30.30.30"], &["corp.example"]))
        );
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    }

    #[test]
    fn no_dns_and_no_set_system_dns_leaves_the_system_alone() {
        assert_eq!(DnsPlan::for_config(&config("", "")).settings, None);
    }

    #[test]
    fn set_system_dns_true_uses_the_virtual_addresses() {
        let plan = DnsPlan::for_config(&config("DNS = lab.example", "SetSystemDNS = true"));
        assert_eq!(
            plan.settings,
            Some(settings(
                &["10.30.30.30", "fd30:30:30::30"],
                &["lab.example"]
            ))
        );
        let plan = DnsPlan::for_config(&config("DNS = 192.0.2.1", "SetSystemDNS = on"));
        assert_eq!(
            plan.settings.unwrap().servers,
            ips(&["10.30.30.30", "fd30:30:30::30"])
        );
        assert!(
            plan.warnings[0].contains("192.0.2.1"),
            "{:?}",
            plan.warnings
        );
    }

    #[test]
    fn set_system_dns_false_wins_over_dns() {
        let plan = DnsPlan::for_config(&config("DNS = 10.30.30.30", "SetSystemDNS = false"));
        assert_eq!(plan.settings, None);
        assert!(plan.warnings[0].contains("SetSystemDNS = false"));
    }

    #[test]
    fn dns_bypassing_the_proxy_is_applied_as_wg_quick_does_with_a_warning() {
        let plan = DnsPlan::for_config(&config("DNS = 192.0.2.53", ""));
        assert_eq!(plan.settings, Some(settings(&["192.0.2.53"], &[])));
        assert!(plan.warnings[0].contains("bypass"), "{:?}", plan.warnings);
        let disabled = DnsPlan::for_config(&config("DNS = 192.0.2.53", "Enabled = false"));
        assert!(disabled.warnings.is_empty());
    }

    #[test]
    fn system_upstreams_never_loop_through_the_proxy() {
        let found: Vec<Upstream> = [
            "10.30.30.30:53",
            "127.0.0.53:53",
            "192.0.2.53:53",
            "[fd30:30:30::30]:53",
            "0.0.0.0:53",
            "[2001:db8::53]:53",
        ]
        .iter()
        .map(|s| Upstream::Udp(s.parse().unwrap()))
        .collect();
        let upstreams = system_upstreams(found, &ips(&["10.30.30.30", "fd30:30:30::30"]));
        assert_eq!(
            upstreams,
            [
                Upstream::Udp("192.0.2.53:53".parse().unwrap()),
                Upstream::Udp("[2001:db8::53]:53".parse().unwrap()),
            ]
        );
    }
}

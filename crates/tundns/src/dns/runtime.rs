//! What the resolver's run-time changeable parts are built from: the local records (config,
//! hosts files, and records added through the control socket) and the split-DNS route
//! table. Each change builds the new `LocalData` or `Upstreams` aside and checks it whole;
//! only a change that builds is kept, so a bad one leaves everything as it was.

use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tundns_config::{Config, EncryptedDns, Upstream};
use tundns_dns::discovery::EncryptedEndpoint;
use tundns_dns::{LocalData, LocalDataBuilder, Routes};
use tundns_host::system_dns::DnsPlan;
use tundns_upstream::{Tunnel, UpstreamPool};

use crate::dns::groups::{self, Reach};
use crate::dns::proxy::Upstreams;

/// Where a record or a route comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The config file (`Record =`, `[DNSRoute]`, `[DNSProxy] Upstream`).
    Config,
    /// Added through the control socket; gone at restart.
    Runtime,
}

/// One local record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordEntry {
    pub record: String,
    pub source: Source,
}

/// One split-DNS route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    pub domains: Vec<String>,
    pub upstreams: Vec<String>,
    pub through_tunnel: bool,
    pub source: Source,
}

/// The sources of the local data, in the order the config's are read.
#[derive(Debug, Clone, Default)]
pub struct LocalSource {
    /// `Record =` values, then runtime ones, as written.
    records: Vec<(String, Source)>,
    zones: Vec<String>,
    hosts_lines: Vec<String>,
    about_itself: AboutItself,
}

/// What the proxy says about itself through DNS: the designations of its encrypted
/// endpoints (DDR), and the canary that keeps Firefox on the system resolver while tundns
/// is it.
#[derive(Debug, Clone, Default)]
pub struct AboutItself {
    designated: Vec<EncryptedEndpoint>,
    addresses: Vec<IpAddr>,
    canary: bool,
}

impl AboutItself {
    pub fn from_config(config: &Config) -> Self {
        let settings = &config.dns_proxy;
        let designated = if settings.addresses.is_empty() {
            Vec::new()
        } else {
            settings
                .encrypted
                .iter()
                .map(|protocol| match protocol {
                    EncryptedDns::Tls => EncryptedEndpoint::Tls {
                        port: protocol.port(),
                    },
                    EncryptedDns::Https => EncryptedEndpoint::Https {
                        port: protocol.port(),
                        path: tundns_dns::doh::PATH.to_string(),
                    },
                    EncryptedDns::Quic => EncryptedEndpoint::Quic {
                        port: protocol.port(),
                    },
                })
                .collect()
        };
        Self {
            designated,
            addresses: settings.addresses.clone(),
            canary: DnsPlan::for_config(config).settings.is_some(),
        }
    }

    /// Adds it to `builder`, after the config's own data, which wins: a designation that
    /// clashes with a record (a CNAME at `_dns.resolver.arpa`) is left out, with a warning.
    pub fn add_to(&self, builder: &mut LocalDataBuilder) {
        if self.addresses.is_empty() {
            return;
        }
        let mut added = builder.add_resolver_arpa();
        if added.is_ok() && !self.designated.is_empty() {
            added = builder.add_designated_resolvers(&self.designated, &self.addresses);
        }
        if let Err(error) = added {
            tracing::warn!(%error, "the local records leave no room for the DDR designations");
        }
        if self.canary && builder.add_canary().is_err() {
            tracing::warn!("the Firefox canary domain cannot be answered");
        }
    }
}

impl LocalSource {
    /// The config's records and local zones, and the lines of its hosts files as read when
    /// the local data was first built (`dns_config` reads each file once).
    pub fn from_config(config: &Config, hosts_lines: Vec<String>) -> Self {
        let about_itself = AboutItself::from_config(config);
        let settings = &config.dns_proxy;
        Self {
            records: settings
                .records
                .iter()
                .map(|record| (record.value.clone(), Source::Config))
                .collect(),
            zones: settings
                .local_zones
                .iter()
                .map(|zone| zone.value.clone())
                .collect(),
            hosts_lines,
            about_itself,
        }
    }

    /// What the proxy says about itself.
    pub fn about_itself(&self) -> &AboutItself {
        &self.about_itself
    }

    /// The local data these sources make.
    pub fn build(&self) -> Result<LocalData, String> {
        let mut builder = LocalDataBuilder::new();
        for (record, _) in &self.records {
            builder
                .add_record(record)
                .map_err(|error| error.to_string())?;
        }
        for zone in &self.zones {
            builder
                .add_local_zone(zone)
                .map_err(|error| error.to_string())?;
        }
        for line in &self.hosts_lines {
            builder
                .add_hosts_line(line)
                .map_err(|error| error.to_string())?;
        }
        self.about_itself.add_to(&mut builder);
        Ok(builder.build())
    }

    /// Every record, as written.
    pub fn entries(&self) -> Vec<RecordEntry> {
        self.records
            .iter()
            .map(|(record, source)| RecordEntry {
                record: record.clone(),
                source: *source,
            })
            .collect()
    }

    /// These sources plus `record`, and what they build; an error if the record is bad
    /// or clashes with the others (a CNAME next to other data). `None` for a record
    /// already there.
    pub fn with_record(&self, record: &str) -> Result<Option<(Self, LocalData)>, String> {
        let record = record.trim();
        LocalDataBuilder::new()
            .add_record(record)
            .map_err(|error| error.to_string())?;
        let key = RecordKey::of(record).ok_or("the record needs NAME TYPE DATA")?;
        if self
            .records
            .iter()
            .any(|(existing, _)| RecordKey::of(existing).as_ref() == Some(&key))
        {
            return Ok(None);
        }
        let mut next = self.clone();
        next.records.push((record.to_owned(), Source::Runtime));
        let local = next.build()?;
        Ok(Some((next, local)))
    }

    /// These sources without the records matching `pattern` (`NAME [TYPE [DATA]]`), what
    /// they build, and how many went. Config records may go too, until the next start.
    pub fn without_records(&self, pattern: &str) -> Result<(Self, LocalData, usize), String> {
        let pattern = RecordKey::pattern(pattern).ok_or("expected NAME [TYPE [DATA]]")?;
        let mut next = self.clone();
        next.records
            .retain(|(record, _)| !RecordKey::of(record).is_some_and(|key| pattern.matches(&key)));
        let removed = self.records.len() - next.records.len();
        if removed == 0 {
            return Err("no local record matches".into());
        }
        let local = next.build()?;
        Ok((next, local, removed))
    }
}

/// A record reduced to what identifies it: name, type and data, in one spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RecordKey {
    name: String,
    rtype: Option<String>,
    data: Option<String>,
}

impl RecordKey {
    /// The key of a whole record (`NAME [TTL] [IN] TYPE DATA`).
    fn of(record: &str) -> Option<Self> {
        Self::pattern(record).filter(|key| key.rtype.is_some() && key.data.is_some())
    }

    /// `NAME [TTL] [IN] [TYPE [DATA]]`, TTL and class ignored.
    fn pattern(text: &str) -> Option<Self> {
        let mut tokens = text.split_whitespace().peekable();
        let name = normal_name(tokens.next()?);
        if tokens
            .peek()
            .is_some_and(|token| token.bytes().all(|b| b.is_ascii_digit()))
        {
            tokens.next();
        }
        if tokens
            .peek()
            .is_some_and(|token| token.eq_ignore_ascii_case("IN"))
        {
            tokens.next();
        }
        let rtype = tokens.next().map(str::to_ascii_uppercase);
        let data: Vec<&str> = tokens.collect();
        let data = (!data.is_empty()).then(|| {
            let joined = data.join(" ");
            match rtype.as_deref() {
                Some("A" | "AAAA") => joined
                    .parse::<IpAddr>()
                    .map_or(joined, |address| address.to_string()),
                Some("CNAME" | "PTR") => normal_name(&joined),
                _ => joined,
            }
        });
        Some(Self { name, rtype, data })
    }

    /// Whether `self`, as a pattern, matches the record `key`.
    fn matches(&self, key: &RecordKey) -> bool {
        self.name == key.name
            && self
                .rtype
                .as_ref()
                .is_none_or(|rtype| key.rtype.as_ref() == Some(rtype))
            && self
                .data
                .as_ref()
                .is_none_or(|data| key.data.as_ref() == Some(data))
    }
}

/// A domain name in one spelling: lowercase, without the final dot (`.` stays `.`).
pub fn normal_name(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    match lower.strip_suffix('.') {
        Some("") | None => lower,
        Some(stripped) => stripped.to_owned(),
    }
}

/// One route: the domains sent to one upstream group.
#[derive(Clone)]
struct Route {
    domains: Vec<String>,
    upstreams: Vec<Upstream>,
    through_tunnel: bool,
    source: Source,
    pool: UpstreamPool,
}

/// The split-DNS route table: the `[DNSProxy] Upstream` group and the routes.
#[derive(Clone)]
pub struct SplitRoutes {
    default_upstreams: Vec<Upstream>,
    default_pool: UpstreamPool,
    routes: Vec<Route>,
    /// The way into the tunnel of `ThroughTunnel` routes when tundns runs without a TUN.
    userspace: Option<Tunnel>,
}

impl SplitRoutes {
    /// The table `dns_config` built from `config`: group 0 is the default, group `i` the
    /// config's route `i - 1`. Routes added later through the tunnel go through
    /// `userspace` when tundns runs without a TUN.
    pub fn from_config(config: &Config, upstreams: &Upstreams, userspace: Option<Tunnel>) -> Self {
        let routes = config
            .dns_proxy
            .routes
            .iter()
            .zip(upstreams.groups.iter().skip(1))
            .map(|(route, pool)| Route {
                domains: route.domains.iter().map(|d| normal_name(d)).collect(),
                upstreams: route.upstreams.clone(),
                through_tunnel: route.through_tunnel,
                source: Source::Config,
                pool: pool.clone(),
            })
            .collect();
        Self {
            default_upstreams: config.dns_proxy.upstreams.clone(),
            default_pool: upstreams.groups[0].clone(),
            routes,
            userspace,
        }
    }

    /// The routes and groups the proxy uses.
    pub fn build(&self) -> Result<Upstreams, String> {
        let mut routes = Routes::new(0);
        let mut groups = vec![self.default_pool.clone()];
        let mut seen = Vec::new();
        for route in &self.routes {
            groups.push(route.pool.clone());
            for domain in &route.domains {
                if seen.contains(domain) {
                    return Err(format!("{domain} already has a route"));
                }
                seen.push(domain.clone());
                routes
                    .add(domain, groups.len() - 1)
                    .map_err(|error| error.to_string())?;
            }
        }
        Ok(Upstreams { routes, groups })
    }

    /// Every route, the default (`.` → `[DNSProxy] Upstream`) first unless a route took `.`.
    pub fn entries(&self) -> Vec<RouteEntry> {
        let default_taken = self
            .routes
            .iter()
            .any(|r| r.domains.iter().any(|d| d == "."));
        let default = (!default_taken).then(|| self.default_entry());
        default
            .into_iter()
            .chain(self.routes.iter().map(Route::entry))
            .collect()
    }

    /// The default route: `.` to `[DNSProxy] Upstream`.
    fn default_entry(&self) -> RouteEntry {
        RouteEntry {
            domains: vec![".".into()],
            upstreams: self
                .default_upstreams
                .iter()
                .map(|u| u.to_string())
                .collect(),
            through_tunnel: false,
            source: Source::Config,
        }
    }

    /// The route entry of group `index` (0: the default).
    pub fn group_entry(&self, index: usize) -> Option<RouteEntry> {
        match index {
            0 => Some(self.default_entry()),
            _ => self.routes.get(index - 1).map(Route::entry),
        }
    }

    /// This table plus a route of `domains` to a new group of `upstreams`, and what it builds.
    pub fn with_route(
        &self,
        config: &Config,
        domains: &[String],
        upstreams: &[String],
        through_tunnel: bool,
    ) -> Result<(Self, Upstreams), String> {
        if domains.is_empty() {
            return Err("a route needs at least one domain".into());
        }
        if upstreams.is_empty() {
            return Err("a route needs at least one upstream".into());
        }
        let upstreams = upstreams
            .iter()
            .map(|text| text.parse::<Upstream>())
            .collect::<Result<Vec<_>, _>>()?;
        let reach = if through_tunnel {
            Reach::through_tunnel(
                config,
                &upstreams,
                self.userspace.as_ref(),
                Path::new(""),
                0,
            )
            .map_err(|error| error.message().to_owned())?
        } else {
            if self.userspace.is_some()
                && let Some(upstream) = upstreams
                    .iter()
                    .find(|upstream| config.in_allowed_ips(upstream.address().ip()))
            {
                // Without a TUN, the host's routes would send it outside the tunnel.
                return Err(format!(
                    "upstream {upstream} is inside AllowedIPs: route it through the tunnel"
                ));
            }
            Reach::Host
        };
        let pool = UpstreamPool::new(upstreams.clone(), groups::pool_config(config, reach))
            .map_err(|error| format!("upstreams: {error}"))?;
        let mut next = self.clone();
        next.routes.push(Route {
            domains: domains.iter().map(|d| normal_name(d)).collect(),
            upstreams,
            through_tunnel,
            source: Source::Runtime,
            pool,
        });
        let built = next.build()?;
        Ok((next, built))
    }

    /// This table without the route of `domain`, and what it builds.
    pub fn without_route(&self, domain: &str) -> Result<(Self, Upstreams), String> {
        let domain = normal_name(domain);
        let mut next = self.clone();
        let route = next
            .routes
            .iter_mut()
            .find(|route| route.domains.contains(&domain))
            .ok_or_else(|| format!("{domain} has no route"))?;
        route.domains.retain(|d| *d != domain);
        next.routes.retain(|route| !route.domains.is_empty());
        let built = next.build()?;
        Ok((next, built))
    }
}

impl Route {
    fn entry(&self) -> RouteEntry {
        RouteEntry {
            domains: self.domains.clone(),
            upstreams: self.upstreams.iter().map(|u| u.to_string()).collect(),
            through_tunnel: self.through_tunnel,
            source: self.source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tundns_upstream::PoolConfig;

    fn source(records: &[&str]) -> LocalSource {
        LocalSource {
            records: records
                .iter()
                .map(|r| (r.to_string(), Source::Config))
                .collect(),
            ..LocalSource::default()
        }
    }

    #[test]
    fn a_record_is_added_once_and_a_bad_one_changes_nothing() {
        let base = source(&["nas.lab A 10.0.0.1"]);
        let (added, local) = base.with_record("site.lab 60 A 10.0.0.2").unwrap().unwrap();
        assert_eq!(local.len(), 4, "two A records and their PTRs");
        assert_eq!(added.entries()[1].source, Source::Runtime);
        assert!(added.with_record("SITE.lab. A 10.0.0.2").unwrap().is_none());
        assert!(base.with_record("bad.lab A 300.0.0.1").is_err());
        assert!(base.with_record("x.lab MX 10 mail").is_err());
        assert!(base.with_record("").is_err());
        // A CNAME next to other data is refused by the whole build.
        let error = base.with_record("nas.lab CNAME other.lab").unwrap_err();
        assert!(error.contains("CNAME"), "{error}");
        assert_eq!(base.entries().len(), 1);
    }

    #[test]
    fn removal_matches_name_type_and_data_in_any_spelling() {
        let base = source(&[
            "nas.lab A 10.0.0.1",
            "nas.lab 60 IN AAAA fd00::1",
            "www.lab CNAME NAS.lab.",
            "other.lab A 10.0.0.9",
        ]);
        let (_, _, removed) = base.without_records("NAS.LAB.").unwrap();
        assert_eq!(removed, 2);
        let (next, _, removed) = base.without_records("nas.lab AAAA fd00:0::1").unwrap();
        assert_eq!(removed, 1);
        assert_eq!(next.entries().len(), 3);
        let (_, _, removed) = base.without_records("www.lab cname nas.lab").unwrap();
        assert_eq!(removed, 1);
        assert!(base.without_records("nas.lab A 10.0.0.2").is_err());
        assert!(base.without_records("  ").is_err());
    }

    fn pool(address: &str) -> UpstreamPool {
        let upstream: Upstream = address.parse().unwrap();
        UpstreamPool::new(vec![upstream], PoolConfig::default()).unwrap()
    }

    fn table() -> SplitRoutes {
        SplitRoutes {
            default_upstreams: vec!["192.0.2.53".parse().unwrap()],
            default_pool: pool("192.0.2.53"),
            routes: vec![Route {
                domains: vec!["corp.internal".into()],
                upstreams: vec!["10.0.0.53".parse().unwrap()],
                through_tunnel: false,
                source: Source::Config,
                pool: pool("10.0.0.53"),
            }],
            userspace: None,
        }
    }

    fn config() -> Config {
        Config::parse(
            "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\nAddress = 10.99.0.2/24\n\
             [Peer]\nPublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\nAllowedIPs = 10.99.0.0/24\n",
            "/etc/wireguard/wg0.conf",
        )
        .unwrap()
    }

    fn question(name: &str) -> tundns_dns::Question {
        let mut query = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            query.push(label.len() as u8);
            query.extend_from_slice(label.as_bytes());
        }
        query.extend_from_slice(&[0, 0, 1, 0, 1]);
        tundns_dns::parse_query(&query).unwrap().question().clone()
    }

    #[test]
    fn routes_are_added_and_removed_by_domain() {
        let base = table();
        let (added, upstreams) = base
            .with_route(
                &config(),
                &["Site.Example.".into()],
                &["10.99.0.53".into()],
                true,
            )
            .unwrap();
        assert_eq!(upstreams.group_for(&question("a.site.example")).0, 2);
        assert_eq!(upstreams.group_for(&question("db.corp.internal")).0, 1);
        assert_eq!(upstreams.group_for(&question("example.org")).0, 0);
        let entries = added.entries();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[2].domains, ["site.example"]);
        assert!(entries[2].through_tunnel);
        assert_eq!(entries[2].source, Source::Runtime);

        let (removed, upstreams) = added.without_route("site.example").unwrap();
        assert_eq!(removed.entries().len(), 2);
        assert_eq!(upstreams.group_for(&question("a.site.example")).0, 0);
        assert!(added.without_route("nowhere.example").is_err());
    }

    #[test]
    fn a_bad_route_is_refused_whole() {
        let base = table();
        let config = config();
        let add = |domains: &[&str], upstreams: &[&str], tunnel: bool| {
            let domains: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
            let upstreams: Vec<String> = upstreams.iter().map(|u| u.to_string()).collect();
            base.with_route(&config, &domains, &upstreams, tunnel)
                .err()
                .unwrap_or_default()
        };
        assert!(add(&["corp.internal"], &["10.0.0.1"], false).contains("already has a route"));
        assert!(add(&["x.example"], &["not-an-ip"], false).contains("not-an-ip"));
        assert!(add(&["x.example"], &[], false).contains("at least one upstream"));
        assert!(add(&[], &["10.0.0.1"], false).contains("at least one domain"));
        assert!(add(&["bad..name"], &["10.0.0.1"], false).len() > 3);
        // No IPv6 interface address to source a tunnel query from.
        assert!(add(&["x.example"], &["[fd99::53]:53"], true).contains("IP family"));
        // WireGuard would not take it: it would leave by the host's routes.
        assert!(add(&["x.example"], &["192.0.2.53"], true).contains("no [Peer] AllowedIPs"));
    }

    /// A way into the tunnel that is never used: these tests only build pools.
    struct Unused;

    impl tundns_upstream::TunnelDial for Unused {
        fn port(&self) -> std::io::Result<Box<dyn tundns_upstream::TunnelPort>> {
            Err(std::io::ErrorKind::Unsupported.into())
        }

        fn connect(
            &self,
            _: std::net::SocketAddr,
        ) -> tundns_upstream::DialFuture<'_, std::io::Result<Box<dyn tundns_upstream::TunnelStream>>>
        {
            Box::pin(async { Err(std::io::ErrorKind::Unsupported.into()) })
        }
    }

    #[test]
    fn without_a_tun_routes_into_the_tunnel_must_go_through_it() {
        let base = SplitRoutes {
            userspace: Some(Tunnel::new(std::sync::Arc::new(Unused))),
            ..table()
        };
        let config = config();
        let add = |upstream: &str, tunnel: bool| {
            base.with_route(&config, &["x.example".into()], &[upstream.into()], tunnel)
                .err()
        };
        let outside = add("10.99.0.53", false).expect("refused");
        assert!(outside.contains("inside AllowedIPs"), "{outside}");
        for encrypted in [
            "tls://dns.corp@10.99.0.53",
            "quic://dns.corp@10.99.0.53",
            "h3://dns.corp@10.99.0.53/dns-query",
        ] {
            let refusal = add(encrypted, true).expect("refused");
            assert!(refusal.contains("only plain DNS"), "{refusal}");
        }
        assert_eq!(add("10.99.0.53", true), None);
        assert_eq!(add("tcp://10.99.0.53", true), None);
        assert_eq!(add("192.0.2.53", false), None);
    }

    #[test]
    fn the_default_route_shows_until_a_route_takes_the_root() {
        let base = table();
        assert_eq!(base.entries()[0].domains, ["."]);
        let (taken, upstreams) = base
            .with_route(&config(), &[".".into()], &["192.0.2.54".into()], false)
            .unwrap();
        assert_eq!(taken.entries().len(), 2);
        assert_eq!(upstreams.group_for(&question("example.org")).0, 2);
        let (back, upstreams) = taken.without_route(".").unwrap();
        assert_eq!(back.entries()[0].domains, ["."]);
        assert_eq!(upstreams.group_for(&question("example.org")).0, 0);
    }
}

//! Turns the `[DNSProxy]` and `[DNSRoute]` sections into the resolver's parts: reads the
//! hosts and block list files, checks every record, and builds the upstream groups.
//!
//! Every error names the file and line it comes from: the config's own line for `Record`,
//! `LocalZone`, `Block` and `[DNSRoute]`, the list file's line for `HostsFile` and
//! `BlockList` entries. Nothing here touches the network or the system.

use std::path::{Path, PathBuf};

use tundns_config::{Config, ConfigError, Spanned};
use tundns_dns::cache::{Cache, CacheConfig};
use tundns_dns::{BlockList, BlockMode, LocalData, LocalDataBuilder, RecordError, Routes};
use tundns_upstream::Tunnel;

use crate::dns::groups::{Reach, pool_config, upstream_group};
use crate::dns::proxy::ResolverParts;
use crate::dns::runtime::LocalSource;

/// Builds the resolver described by `config`, read from `path`, and the sources of its local
/// data for the control socket. `ThroughTunnel` groups send through `userspace` when tundns
/// runs without a TUN.
pub fn resolver_parts(
    config: &Config,
    path: &Path,
    userspace: Option<&Tunnel>,
) -> Result<(ResolverParts, LocalSource), ConfigError> {
    let settings = &config.dns_proxy;
    // The default group's upstreams carry no line of their own; a CA file is what usually
    // fails there, so its line is the one to name.
    let default_line = settings.ca_file.as_ref().map(|file| file.line);
    let mut groups = vec![upstream_group(
        &settings.upstreams,
        pool_config(config, Reach::Host),
        path,
        default_line,
    )?];
    let mut routes = Routes::new(0);
    for route in &settings.routes {
        let reach = if route.through_tunnel {
            Reach::through_tunnel(config, &route.upstreams, userspace, path, route.line)?
        } else {
            Reach::Host
        };
        let group = upstream_group(
            &route.upstreams,
            pool_config(config, reach),
            path,
            Some(route.line),
        )?;
        groups.push(group);
        for domain in &route.domains {
            routes
                .add(domain, groups.len() - 1)
                .map_err(|error| at(path, route.line, error))?;
        }
    }
    let (local, local_source) = local_data(config, path)?;
    let parts = ResolverParts {
        blocklist: blocklist(config, path)?,
        local,
        cache: settings.cache.then(|| {
            Cache::new(CacheConfig {
                max_bytes: settings.cache_size,
                min_ttl: settings.cache_min_ttl,
                max_ttl: settings.cache_max_ttl,
                max_negative_ttl: settings.cache_max_negative_ttl,
                serve_stale: settings.serve_stale.unwrap_or_default(),
                prefetch: settings.prefetch,
                ..CacheConfig::default()
            })
        }),
        cache_fingerprint: cache_fingerprint(config, path),
        routes,
        groups,
        max_in_flight: settings.max_in_flight,
        rate_limit: settings.rate_limit,
    };
    Ok((parts, local_source))
}

/// The fingerprint of everything that decides what the cache holds: the upstreams and
/// routes, local data, blocklists (the files' lines as they are now) and the TTL bounds.
/// A cache file saved under another is ignored (see [`tundns_dns::cache::fingerprint`]).
/// A list file that does not read here has already failed the caller.
pub(crate) fn cache_fingerprint(config: &Config, path: &Path) -> u64 {
    let settings = &config.dns_proxy;
    let mut parts: Vec<String> = Vec::new();
    parts.extend(settings.upstreams.iter().map(ToString::to_string));
    for route in &settings.routes {
        parts.push(format!(
            "route {} {}",
            route.domains.join(" "),
            route.through_tunnel
        ));
        parts.extend(route.upstreams.iter().map(ToString::to_string));
    }
    parts.extend(settings.records.iter().map(|record| record.value.clone()));
    parts.extend(settings.local_zones.iter().map(|zone| zone.value.clone()));
    parts.extend(settings.blocked.iter().cloned());
    parts.push(format!(
        "{:?} {:?} {:?} {:?} {:?} {:?}",
        settings.block_mode,
        settings.block_ttl,
        settings.cache_min_ttl,
        settings.cache_max_ttl,
        settings.cache_max_negative_ttl,
        settings.addresses,
    ));
    let directory = path.parent().unwrap_or(Path::new(""));
    for file in settings.hosts_files.iter().chain(&settings.block_lists) {
        let text = std::fs::read_to_string(directory.join(&file.value)).unwrap_or_default();
        parts.push(text);
    }
    tundns_dns::cache::fingerprint(&parts)
}

/// The local data, and what it was built from, kept for changes through the control socket.
fn local_data(config: &Config, path: &Path) -> Result<(LocalData, LocalSource), ConfigError> {
    let settings = &config.dns_proxy;
    let mut builder = LocalDataBuilder::new();
    let mut hosts_lines = Vec::new();
    for record in &settings.records {
        builder
            .add_record(&record.value)
            .map_err(|error| at(path, record.line, error))?;
    }
    for zone in &settings.local_zones {
        builder
            .add_local_zone(&zone.value)
            .map_err(|error| at(path, zone.line, error))?;
    }
    for file in &settings.hosts_files {
        for_each_line(path, file, |line| {
            hosts_lines.push(line.to_owned());
            builder.add_hosts_line(line)
        })?;
    }
    let source = LocalSource::from_config(config, hosts_lines);
    source.about_itself().add_to(&mut builder);
    Ok((builder.build(), source))
}

/// The blocklist of `config`, read from `path`: its `Block` domains and the `BlockList`
/// files as they are now. At start-up, and again whenever the control socket reloads it.
pub fn blocklist(config: &Config, path: &Path) -> Result<BlockList, ConfigError> {
    let settings = &config.dns_proxy;
    let mode = match settings.block_mode {
        tundns_config::BlockMode::NxDomain => BlockMode::NxDomain,
        tundns_config::BlockMode::Null => BlockMode::Null,
    };
    let mut blocklist = BlockList::new(mode, settings.block_ttl);
    for domain in &settings.blocked {
        // The config parser has validated these names already.
        blocklist
            .add_domain(domain)
            .map_err(|error| ConfigError::for_file(path, error.0))?;
    }
    for file in &settings.block_lists {
        for_each_line(path, file, |line| blocklist.add_list_line(line))?;
    }
    Ok(blocklist)
}

/// Feeds every line of the list file named at `file` to `add`; an unreadable file is
/// reported at the config line naming it, a bad entry at its own line in the file. A
/// relative name is relative to the config file's directory, whatever the daemon's working
/// directory.
fn for_each_line(
    config_path: &Path,
    file: &Spanned<PathBuf>,
    mut add: impl FnMut(&str) -> Result<(), RecordError>,
) -> Result<(), ConfigError> {
    let list_path = match config_path.parent() {
        Some(directory) => directory.join(&file.value),
        None => file.value.clone(),
    };
    let text = std::fs::read_to_string(&list_path).map_err(|error| {
        at(
            config_path,
            file.line,
            format!("reading {}: {error}", list_path.display()),
        )
    })?;
    for (index, line) in text.lines().enumerate() {
        add(line).map_err(|error| at(&list_path, index + 1, error))?;
    }
    Ok(())
}

fn at(path: &Path, line: usize, message: impl ToString) -> ConfigError {
    ConfigError::at(path, line, message.to_string())
}

//! Bringing up what shows tundns at work: the metrics endpoint (`MetricsAddress`) and the
//! query log (`QueryLog`), and reopening the log on SIGHUP.
//!
//! Both are claimed before the system is touched ([`Claimed::new`]): the address is
//! bound and the file opened, so an address in use or an unwritable path is a start-up
//! error that leaves no interface behind. Serving starts once the tunnel is up
//! ([`Claimed::start`]); dropping the [`Observability`] stops it.
//!
//! - [`metrics`]: the Prometheus endpoint, read at scrape time;
//! - [`wireguard`]: the one reader of gotatun's UAPI socket, for peers' counters.

pub mod metrics;
pub mod wireguard;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tundns_host::paths::SocketDirectories;

use tundns_config::Config;
use tundns_filter::FilterStats;

use crate::dns::proxy::DnsProxy;
use crate::dns::query_log::QueryLog;
use crate::observability::metrics::{MetricsServer, MetricsSources};

/// Why the metrics endpoint or the query log could not start.
#[derive(Debug, thiserror::Error)]
pub enum ObservabilityError {
    #[error("{config}:{line}: MetricsAddress {address}: cannot listen: {source}")]
    Metrics {
        config: PathBuf,
        line: usize,
        address: SocketAddr,
        source: io::Error,
    },
    #[error("{config}:{line}: QueryLog {file}: {reason}")]
    QueryLog {
        config: PathBuf,
        line: usize,
        file: PathBuf,
        reason: String,
    },
    #[error("starting the metrics endpoint: {0}")]
    Start(io::Error),
}

/// Checks what `up` would refuse that the parser cannot see, without changing anything:
/// a query log path that is a directory. Warns about a metrics endpoint other hosts can
/// reach.
pub fn check(config: &Config, path: &Path) -> Result<(), ObservabilityError> {
    let settings = &config.dns_proxy;
    if let Some(address) = &settings.metrics_address
        && !address.value.ip().is_loopback()
    {
        tracing::warn!(
            "MetricsAddress {} is not a loopback address: other hosts may read the metrics (peer keys, upstreams, query counts)",
            address.value
        );
    }
    if let Some(file) = &settings.query_log
        && file.value.is_dir()
    {
        return Err(ObservabilityError::QueryLog {
            config: path.to_path_buf(),
            line: file.line,
            file: file.value.clone(),
            reason: "is a directory".into(),
        });
    }
    Ok(())
}

/// The metrics listener and the query log, claimed but not yet serving.
pub struct Claimed {
    listener: Option<std::net::TcpListener>,
    query_log: Option<QueryLog>,
}

impl Claimed {
    /// Binds `MetricsAddress` and opens `QueryLog` (creating its directory if needed).
    /// On error nothing is left bound or running.
    pub fn new(config: &Config, path: &Path) -> Result<Self, ObservabilityError> {
        check(config, path)?;
        let settings = &config.dns_proxy;
        let listener = settings
            .metrics_address
            .as_ref()
            .map(|address| {
                crate::observability::metrics::bind(address.value).map_err(|source| {
                    ObservabilityError::Metrics {
                        config: path.to_path_buf(),
                        line: address.line,
                        address: address.value,
                        source,
                    }
                })
            })
            .transpose()?;
        let query_log = settings
            .query_log
            .as_ref()
            .map(|file| {
                let failure = |reason: String| ObservabilityError::QueryLog {
                    config: path.to_path_buf(),
                    line: file.line,
                    file: file.value.clone(),
                    reason,
                };
                if let Some(directory) = file.value.parent()
                    && !directory.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(directory).map_err(|error| {
                        failure(format!("creating {}: {error}", directory.display()))
                    })?;
                }
                QueryLog::open(&file.value)
                    .map_err(|error| failure(format!("cannot open: {error}")))
            })
            .transpose()?;
        Ok(Self {
            listener,
            query_log,
        })
    }

    /// The query log, to hand to the resolver.
    pub fn query_log(&self) -> Option<&QueryLog> {
        self.query_log.as_ref()
    }

    /// Starts serving metrics about `proxy` (if the resolver runs), the filter's `filter`
    /// counters and the WireGuard device `interface` (whose UAPI socket is in `sockets`),
    /// and reopening the log on SIGHUP. Needs a running tokio runtime.
    pub fn start(
        self,
        proxy: Option<Arc<DnsProxy>>,
        filter: Arc<FilterStats>,
        interface: &str,
        sockets: &SocketDirectories,
    ) -> Result<Observability, ObservabilityError> {
        let server = match self.listener {
            Some(listener) => {
                let address = listener.local_addr().map_err(ObservabilityError::Start)?;
                let sources = Arc::new(MetricsSources {
                    proxy,
                    filter,
                    query_log: self.query_log.as_ref().map(|log| log.stats().clone()),
                    interface: interface.to_string(),
                    uapi_socket: sockets.uapi_socket(interface),
                });
                let server =
                    MetricsServer::spawn(listener, sources).map_err(ObservabilityError::Start)?;
                tracing::info!(%address, "serving metrics at /metrics");
                Some(server)
            }
            None => None,
        };
        let reopener = reopen_on_sighup(self.query_log).map_err(ObservabilityError::Start)?;
        Ok(Observability {
            _server: server,
            _reopener: reopener,
        })
    }
}

/// The running metrics endpoint and SIGHUP handler; dropping it stops both.
pub struct Observability {
    _server: Option<MetricsServer>,
    _reopener: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// SIGHUP reopens the query log (after logrotate moved it). It is caught even without a
/// log, so `systemctl reload` never kills the daemon.
fn reopen_on_sighup(log: Option<QueryLog>) -> io::Result<AbortOnDrop> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    Ok(AbortOnDrop(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match &log {
                Some(log) => {
                    tracing::info!("SIGHUP: reopening the query log");
                    log.reopen();
                }
                None => tracing::info!("SIGHUP: no query log to reopen"),
            }
        }
    })))
}

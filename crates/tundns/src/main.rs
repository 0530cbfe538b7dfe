//! The `tundns` command line.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tundns::control::client::{self as control_client, DnsCommand};
use tundns::tunnel::{self, ShutdownSignals, Tunnel, TunnelError};
use tundns::userspace::UserspaceTunnel;
use tundns::watchdog::{self, Watchdog};
use tundns_config::Config;
use tundns_host::CrashRepair;
use tundns_host::instance::InstanceLock;
use tundns_host::paths::{CONFIG_DIRECTORIES, SocketDirectories, config_file};
use tundns_host::policy_rules::PolicyRepair;
use tundns_host::repair::interface_for;

/// mimalloc: the forwarding path allocates a few small buffers per query, and glibc's
/// allocator was a tenth of its CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "A userspace WireGuard client whose TUN device answers DNS itself"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring a tunnel up from a wg-quick file (plus [DNSProxy]) and run it in the
    /// foreground until SIGINT or SIGTERM. The interface is named after the file.
    Up {
        /// The config: a path (/etc/wireguard/wg0.conf), or an interface name (wg0) whose
        /// file is looked for in /etc/tundns, then /etc/wireguard.
        config: String,
        /// Run rootless: no TUN, routes or system resolver change; WireGuard over an
        /// ordinary UDP socket, reached only through the proxies on host addresses and the
        /// DNS proxy on [DNSProxy] Address ip:port. Sockets go under $XDG_RUNTIME_DIR.
        #[arg(long)]
        userspace: bool,
    },
    /// Validate a config without touching the system.
    Check {
        /// The config: a path, or an interface name (as for `up`).
        config: String,
    },
    /// Take back what a run that could not stop cleanly (a crash, SIGKILL, a reboot) left:
    /// its change to the system resolver, and a full tunnel's policy rules, nftables tables
    /// and sysctl. What tundns did not write is reported and left alone.
    #[command(alias = "reset-dns")]
    Reset {
        /// The interface (wg0) or its config (/etc/wireguard/wg0.conf).
        target: String,
    },
    /// Stop a running tunnel cleanly, as SIGTERM would, through its control socket.
    Down {
        /// The interface; may be left out when one tunnel runs.
        interface: Option<String>,
    },
    /// Show a running tunnel: peers, the DNS proxy's upstreams, cache and query counters.
    Status {
        /// The interface; may be left out when one tunnel runs.
        interface: Option<String>,
        /// Print the control socket's JSON reply.
        #[arg(long)]
        json: bool,
    },
    /// Inspect and change the running DNS proxy: records, routes, cache, test queries.
    Dns {
        /// The interface; may be left out when one tunnel runs.
        #[arg(short, long, global = true)]
        interface: Option<String>,
        /// Print the control socket's JSON reply.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: DnsCommand,
    },
    /// `tundns up` starts this beside itself: it restores the system if `up` dies.
    #[command(hide = true)]
    Watchdog {
        /// The `tundns up` it watches.
        #[arg(long)]
        parent: u32,
        interface: String,
    },
}

/// Logging without `RUST_LOG`: gotatun logs every UAPI connection at info, which each
/// metrics scrape and `tundns status` would repeat.
const DEFAULT_LOG_FILTER: &str = "info,gotatun::device::uapi=warn";

/// How long `tundns down` waits for the tunnel to be gone.
const DOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// How long `tundns reset` waits for a watchdog still restoring the interface.
const RESET_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Exit status for a config that does not parse, as distinct from a runtime failure.
const EXIT_CONFIG: u8 = 2;

/// Raises the soft limit on open files to the hard one: each proxied connection holds a
/// socket, and the default soft limit (1024) would otherwise run out under a browser's load
/// and take the DNS proxy's upstream sockets with it.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct passed, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::debug!("could not raise the open-file limit");
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let argument = match &cli.command {
        Command::Up { config, .. } | Command::Check { config } => config,
        Command::Reset { target } => return reset(target),
        Command::Watchdog { parent, interface } => {
            return ExitCode::from(watchdog::watch(interface, *parent));
        }
        Command::Status { .. } | Command::Dns { .. } | Command::Down { .. } => {
            return control(cli.command);
        }
    };
    let path = match config_file(argument, &CONFIG_DIRECTORIES) {
        Ok(path) => path,
        Err(error) => {
            eprintln!("tundns: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let path = path.as_path();
    warn_if_world_accessible(path);
    let config = match Config::from_file(path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tundns: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    raise_open_file_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tundns: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    if matches!(cli.command, Command::Up { .. }) {
        // As wireguard-go does: the UAPI socket hands out the private key, so nothing
        // this process creates may be readable by others.
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    }
    let result = match cli.command {
        Command::Reset { .. }
        | Command::Status { .. }
        | Command::Dns { .. }
        | Command::Down { .. }
        | Command::Watchdog { .. } => unreachable!("returned above"),
        Command::Check { .. } => runtime
            .block_on(async { tunnel::check(&config, path) })
            .map(|()| {
                println!(
                    "{}: ok (interface {})",
                    path.display(),
                    config.interface_name
                );
            }),
        Command::Up {
            userspace: true, ..
        } => runtime.block_on(async {
            let mut signals = ShutdownSignals::install()?;
            let tunnel = UserspaceTunnel::up(&config, path).await?;
            tunnel.run_until(&mut signals).await
        }),
        Command::Up {
            userspace: false, ..
        } => {
            // Before any change: from here on, a death of this process is repaired.
            let watchdog = match Watchdog::spawn(&config.interface_name) {
                Ok(watchdog) => watchdog,
                Err(error) => {
                    eprintln!("tundns: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(async {
                let mut signals = ShutdownSignals::install()?;
                let tunnel = Tunnel::up(&config, path).await?;
                tunnel.run_until(&mut signals).await
            });
            // Whatever the result, start-up failures and shutdowns undo their own changes.
            runtime.shutdown_background();
            watchdog.stand_down();
            return exit_status(result, path);
        }
    };
    // Tasks still holding the TUN or sockets are dropped here rather than awaited, so a
    // stuck upstream query cannot delay the exit.
    runtime.shutdown_background();
    exit_status(result, path)
}

/// The exit status of `up` or `check`, after printing its error.
fn exit_status(result: Result<(), TunnelError>, path: &Path) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(TunnelError::Config(error)) => {
            eprintln!("tundns: {error}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(error @ TunnelError::Hook { .. }) => {
            eprintln!("tundns: {}: {error}", path.display());
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("tundns: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Warns, as wg-quick does, when others may read the config (it holds the private key):
/// when both the file and its directory let them in.
fn warn_if_world_accessible(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| std::fs::metadata(path).map(|m| m.permissions().mode());
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if let (Ok(file), Ok(directory)) = (mode(path), mode(directory))
        && file & directory & 0o007 != 0
    {
        eprintln!(
            "tundns: warning: {} is world accessible, and holds a private key (chmod 600 it)",
            path.display()
        );
    }
}

/// `tundns reset`: undoes what a run of the interface left behind, the DNS change and the
/// full tunnel's policy routing, each on its own: a failure of one does not stop the other.
fn reset(target: &str) -> ExitCode {
    let interface = match interface_for(target) {
        Ok(interface) => interface,
        Err(error) => {
            eprintln!("tundns: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tundns: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Held while repairing: a running tunnel is refused, and an `up` meanwhile waits.
    let _lock = match InstanceLock::acquire(&interface, RESET_PATIENCE) {
        Ok(lock) => lock,
        Err(error) => {
            eprintln!("tundns: {error}");
            return ExitCode::FAILURE;
        }
    };
    let CrashRepair { policy, dns } = runtime.block_on(tundns_host::repair(&interface));
    for socket in SocketDirectories::system().remove_stale_sockets(&interface) {
        println!(
            "{interface}: removed {}, left by a run that died",
            socket.display()
        );
    }
    let mut status = ExitCode::SUCCESS;
    match dns {
        Ok(None) => println!("{interface}: no DNS change to undo"),
        Ok(Some(restore)) => println!("{interface}: {restore}"),
        Err(error) => {
            eprintln!("tundns: {interface}: {error}");
            status = ExitCode::FAILURE;
        }
    }
    match policy {
        Ok(None) => println!("{interface}: no policy routing to undo"),
        Ok(Some(PolicyRepair {
            rules,
            firewall_tables,
            sysctls,
        })) => println!(
            "{interface}: took back policy rules: {rules}, nftables tables: {firewall_tables}, \
             sysctl values: {sysctls}"
        ),
        Err(error) => {
            eprintln!("tundns: {interface}: {error}");
            status = ExitCode::FAILURE;
        }
    }
    status
}

/// `tundns status` and `tundns dns ...`: one request to the running tunnel's control socket.
fn control(command: Command) -> ExitCode {
    let result = match command {
        Command::Status { interface, json } => control_client::status(interface.as_deref(), json),
        Command::Down { interface } => control_client::down(interface.as_deref(), DOWN_WAIT),
        Command::Dns {
            interface,
            json,
            command,
        } => control_client::dns(interface.as_deref(), json, command),
        _ => Err("not a control command".into()),
    };
    match result {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tundns: {error}");
            ExitCode::FAILURE
        }
    }
}

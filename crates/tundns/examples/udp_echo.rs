//! A second virtual service next to the DNS proxy: UDP echo (RFC 862) on 10.30.30.31:7.
//!
//! ```sh
//! udp_echo wg0.conf     # as `tundns up wg0.conf`, plus the echo host
//! ```
//!
//! Everything a virtual service needs is here: a `UdpService`, a `VirtualHost` that gives the
//! address ping, port-unreachable and RST manners, and `Tunnel::serve` to register it and route
//! its address into the TUN.

use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::sync::Arc;

use tundns::tunnel::{ShutdownSignals, Tunnel};
use tundns_config::Config;
use tundns_filter::{Datagram, TunWriter, UdpService, VirtualHost};

const ECHO_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 30, 30, 31));
const ECHO_PORT: u16 = 7;

/// Sends every datagram back to where it came from.
struct Echo;

impl UdpService for Echo {
    fn on_datagram(&self, datagram: Datagram<'_>, tun: &TunWriter) {
        datagram.reply(datagram.payload, tun);
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: udp_echo <config>");
        return ExitCode::from(2);
    };
    let config = match Config::from_file(&path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("udp_echo: {error}");
            return ExitCode::from(2);
        }
    };
    let result = async {
        let mut signals = ShutdownSignals::install()?;
        let mut tunnel = Tunnel::up(&config, path.as_ref()).await?;
        let echo = VirtualHost::new("echo").with_udp(ECHO_PORT, Arc::new(Echo));
        if let Err(error) = tunnel.serve(ECHO_IP, Arc::new(echo)).await {
            tunnel.shut_down().await;
            return Err(error);
        }
        tunnel.run_until(&mut signals).await
    };
    match result.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("udp_echo: {error}");
            ExitCode::FAILURE
        }
    }
}

//! This host's own addresses, kept current from netlink: what tells a packet an
//! application on this host sent to a virtual IP from one the host forwarded there (a LAN
//! or container host that routed the virtual IP through this machine).

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures::{StreamExt, TryStreamExt};
use rtnetlink::constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use tokio::task::JoinHandle;

/// The addresses of every interface in this network namespace; a watcher task follows
/// netlink's address notifications until this is dropped.
pub struct LocalAddresses {
    current: Arc<ArcSwap<Vec<IpAddr>>>,
    watcher: JoinHandle<()>,
    connection: JoinHandle<()>,
}

impl LocalAddresses {
    /// Reads the addresses and starts following their changes.
    pub async fn watch() -> io::Result<Self> {
        let (mut connection, handle, mut notifications) = rtnetlink::new_connection()?;
        connection
            .socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))?;
        let connection = tokio::spawn(connection);
        let current = Arc::new(ArcSwap::from_pointee(dump(&handle).await?));
        let watched = current.clone();
        let watcher = tokio::spawn(async move {
            while notifications.next().await.is_some() {
                // A burst of changes (an interface coming up) is read back once.
                while notifications.try_recv().is_ok() {}
                match dump(&handle).await {
                    Ok(addresses) => watched.store(Arc::new(addresses)),
                    Err(error) => tracing::warn!(%error, "reading the host's addresses"),
                }
            }
            tracing::warn!("netlink stopped: the host's addresses are no longer followed");
        });
        Ok(Self {
            current,
            watcher,
            connection,
        })
    }

    /// Whether `ip` is one of this host's addresses (an IPv4-mapped address counts as
    /// the IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_loopback() || self.current.load().contains(&ip)
    }
}

impl Drop for LocalAddresses {
    fn drop(&mut self) {
        self.watcher.abort();
        self.connection.abort();
    }
}

async fn dump(handle: &rtnetlink::Handle) -> io::Result<Vec<IpAddr>> {
    let mut messages = handle.address().get().execute();
    let mut addresses = Vec::new();
    while let Some(message) = messages.try_next().await.map_err(io::Error::other)? {
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the far end's on a
        // point-to-point link, and the own one where IFA_LOCAL is absent (IPv6).
        let (mut local, mut address) = (None, None);
        for attribute in message.attributes {
            match attribute {
                AddressAttribute::Local(ip) => local = Some(ip),
                AddressAttribute::Address(ip) => address = Some(ip),
                _ => {}
            }
        }
        if let Some(ip) = local.or(address)
            && !addresses.contains(&ip)
        {
            addresses.push(ip);
        }
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_is_always_local_and_a_documentation_address_never_is() {
        let local = LocalAddresses::watch().await.expect("netlink");
        assert!(local.contains("127.0.0.1".parse().unwrap()));
        assert!(local.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!local.contains("192.0.2.77".parse().unwrap()));
    }
}

//! The system changes tundns makes: the interface's addresses, its routes, the link state
//! (and, through [`crate::policy_rules`], a full tunnel's policy rules, sysctl and nftables
//! tables).
//!
//! Every change is recorded in a [`SystemChanges`] as it is made, so teardown — on a
//! signal, or when setup fails half-way — undoes exactly what was done and nothing else.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::error::{SystemError, failed};
use crate::paths::MAIN_TABLE;
use crate::policy_rules::PolicyChanges;

/// Every route of one family (IPv6 when `ipv6`), in all tables.
pub(crate) async fn list_routes(
    handle: &Handle,
    ipv6: bool,
) -> Result<Vec<RouteMessage>, SystemError> {
    let dump = if ipv6 {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    };
    handle
        .route()
        .get(dump)
        .execute()
        .try_collect()
        .await
        .map_err(failed("listing routes"))
}

/// The routes added so far, and the netlink handle that adds and removes them.
pub struct SystemChanges {
    handle: Handle,
    interface: String,
    index: u32,
    /// Routes added so far, with their table, for teardown.
    routes: Vec<(IpNet, u32)>,
    /// A full tunnel's policy rules and sysctl values.
    policy: PolicyChanges,
}

impl SystemChanges {
    /// Opens a netlink connection for the interface `name`, which must exist.
    pub async fn for_interface(name: &str) -> Result<Self, SystemError> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        let link = handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await
            .map_err(failed(format!("looking up interface {name}")))?;
        let index = link
            .map(|l| l.header.index)
            .ok_or_else(|| SystemError::NoSuchInterface(name.to_string()))?;
        Ok(Self {
            handle,
            interface: name.to_string(),
            index,
            routes: Vec::new(),
            policy: PolicyChanges::new(name),
        })
    }

    /// Assigns an address. IPv6 addresses skip duplicate address detection: the link is a
    /// point-to-point tunnel, and DAD would hold the address back for a second or more.
    pub async fn add_address(&self, address: IpNet) -> Result<(), SystemError> {
        let mut request =
            self.handle
                .address()
                .add(self.index, address.addr(), address.prefix_len());
        if address.addr().is_ipv6() {
            request
                .message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        tracing::info!(
            "[#] ip {} address add {address} dev {}",
            family_flag(address),
            self.interface
        );
        request.execute().await.map_err(failed(format!(
            "adding address {address} to {}",
            self.interface
        )))
    }

    /// Brings the link up.
    pub async fn set_up(&self) -> Result<(), SystemError> {
        tracing::info!("[#] ip link set up dev {}", self.interface);
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(self.index).up().build())
            .execute()
            .await
            .map_err(failed(format!("bringing {} up", self.interface)))
    }

    /// Caps the segments of one GSO super-packet the kernel hands the interface, so that
    /// none has more than its reader can split; the kernel then segments larger ones itself.
    pub async fn set_gso_max_segments(&self, segments: u32) -> Result<(), SystemError> {
        let mut link = LinkUnspec::new_with_index(self.index).build();
        link.attributes.push(LinkAttribute::GsoMaxSegs(segments));
        self.handle
            .link()
            .set(link)
            .execute()
            .await
            .map_err(failed(format!(
                "capping {}'s GSO segments at {segments}",
                self.interface
            )))
    }

    /// Routes `network` into the interface and remembers it for teardown.
    ///
    /// A route the kernel already has through this interface (the prefix route of an
    /// `Address`, say) is left alone and not recorded, as wg-quick does; the same prefix
    /// through another interface is an error rather than a silent hijack.
    pub async fn add_route(&mut self, network: IpNet) -> Result<(), SystemError> {
        self.add_route_in(network, MAIN_TABLE).await
    }

    /// As [`SystemChanges::add_route`], in routing table `table`.
    pub async fn add_route_in(&mut self, network: IpNet, table: u32) -> Result<(), SystemError> {
        let request = self.handle.route().add(self.route_message(network, table));
        match request.execute().await {
            Ok(()) => {
                let in_table = if table == MAIN_TABLE {
                    String::new()
                } else {
                    format!(" table {table}")
                };
                tracing::info!(
                    "[#] ip {} route add {network} dev {}{in_table}",
                    family_flag(network),
                    self.interface
                );
                self.routes.push((network, table));
                Ok(())
            }
            Err(rtnetlink::Error::NetlinkError(message))
                if message.raw_code() == -libc::EEXIST
                    && self.routes_here(network, table).await? =>
            {
                tracing::debug!(%network, "route already present on the interface");
                Ok(())
            }
            Err(source) => Err(SystemError::Netlink {
                action: format!(
                    "adding route {network} via {} (table {table})",
                    self.interface
                ),
                source,
            }),
        }
    }

    /// Removes a route this process added; a route it did not add is left alone.
    pub async fn remove_route(&mut self, network: IpNet) {
        let Some(index) = self.routes.iter().position(|(net, _)| *net == network) else {
            return;
        };
        let (network, table) = self.routes.remove(index);
        self.delete_route(network, table).await;
    }

    /// True when `table` routes exactly `network` through this interface.
    async fn routes_here(&self, network: IpNet, table: u32) -> Result<bool, SystemError> {
        let routes = list_routes(&self.handle, matches!(network, IpNet::V6(_))).await?;
        let wanted = self.route_message(network, table);
        Ok(routes.iter().any(|route| {
            route.header.destination_prefix_length == network.prefix_len()
                && wanted
                    .attributes
                    .iter()
                    .all(|attribute| route.attributes.contains(attribute))
        }))
    }

    /// Removes every policy rule and route this process added, newest first, restores the
    /// sysctl values it changed, and deletes the interface (its addresses go with it).
    /// Errors are logged, not returned: teardown goes on so that as much as possible is
    /// restored.
    pub async fn undo(&mut self) {
        self.policy.undo(&self.handle).await;
        while let Some((network, table)) = self.routes.pop() {
            self.delete_route(network, table).await;
        }
        self.delete_interface().await;
    }

    async fn delete_route(&self, network: IpNet, table: u32) {
        let message = self.route_message(network, table);
        if let Err(error) = self.handle.route().del(message).execute().await {
            // The kernel removes an interface's routes with the interface itself.
            tracing::debug!(%network, %error, "route already gone");
        }
    }

    /// The index of the interface these changes are made to.
    pub(crate) fn interface_index(&self) -> u32 {
        self.index
    }

    /// The netlink handle and the record of a full tunnel's policy changes.
    pub(crate) fn policy(&mut self) -> (&Handle, &mut PolicyChanges) {
        (&self.handle, &mut self.policy)
    }

    /// Deletes the interface. Its addresses and remaining routes go with it.
    async fn delete_interface(&self) {
        if let Err(error) = self.handle.link().del(self.index).execute().await {
            tracing::debug!(interface = %self.interface, %error, "interface already gone");
        }
    }

    fn route_message(
        &self,
        network: IpNet,
        table: u32,
    ) -> rtnetlink::packet_route::route::RouteMessage {
        match network {
            IpNet::V4(net) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .output_interface(self.index)
                .table_id(table)
                .build(),
            IpNet::V6(net) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .output_interface(self.index)
                .table_id(table)
                .build(),
        }
    }
}

/// `-4` or `-6`, as `ip` takes it, for the `[#]` lines.
fn family_flag(network: IpNet) -> &'static str {
    match network {
        IpNet::V4(_) => "-4",
        IpNet::V6(_) => "-6",
    }
}

/// The host route for a single virtual IP.
pub fn host_route(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

//! Routes: add or replace townlink's own, purge them, learn a gateway.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

use super::{collect, request, Netlink, NetlinkError, Result};
use crate::routing::{RouteSpec, PROTOCOL};

fn table_of(msg: &RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(msg.header.table as u32)
}

fn gateway_of(msg: &RouteMessage) -> Option<IpAddr> {
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })
}

fn oif_of(msg: &RouteMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

impl Netlink {
    async fn route_message(&self, spec: &RouteSpec) -> Result<RouteMessage> {
        let index = self.require_link(&spec.interface).await?;
        let builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(spec.destination.addr(), spec.destination.prefix_len())
            .map_err(|e| NetlinkError::Invalid(e.to_string()))?
            .output_interface(index)
            .table_id(spec.table)
            .protocol(RouteProtocol::Other(PROTOCOL));
        let builder = match spec.gateway {
            Some(gw) => builder
                .gateway(gw)
                .map_err(|e| NetlinkError::Invalid(e.to_string()))?,
            None => builder.scope(RouteScope::Link),
        };
        Ok(builder.build())
    }

    /// Installs a route, replacing any route to the same destination in the
    /// same table (one netlink message: this is how failover switches).
    pub async fn replace_route(&self, spec: &RouteSpec) -> Result<()> {
        let msg = self.route_message(spec).await?;
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(request(format!(
                "installing route {} dev {} table {}",
                spec.destination, spec.interface, spec.table
            )))
    }

    /// Removes one of townlink's routes (e.g. a revoked site's LAN); a
    /// route that is already gone is fine.
    pub async fn delete_route(&self, spec: &RouteSpec) -> Result<()> {
        let msg = self.route_message(spec).await?;
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -3 => Ok(()),
            Err(e) => Err(request(format!(
                "removing route {} dev {} table {}",
                spec.destination, spec.interface, spec.table
            ))(e)),
        }
    }

    /// Every route (all tables, both families) carrying townlink's protocol.
    pub async fn our_routes(&self) -> Result<Vec<RouteMessage>> {
        let mut ours = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = match family {
                AddressFamily::Inet => RouteMessageBuilder::<Ipv4Addr>::new().build(),
                _ => RouteMessageBuilder::<Ipv6Addr>::new().build(),
            };
            // Dump every table, not only main.
            query.header.table = RouteHeader::RT_TABLE_UNSPEC;
            let routes =
                collect(self.handle.route().get(query).execute(), "listing routes").await?;
            ours.extend(
                routes
                    .into_iter()
                    .filter(|r| r.header.protocol == RouteProtocol::Other(PROTOCOL)),
            );
        }
        Ok(ours)
    }

    pub(super) async fn purge_routes(&self) -> Result<usize> {
        let routes = self.our_routes().await?;
        let n = routes.len();
        for route in routes {
            let table = table_of(&route);
            match self.handle.route().del(route).execute().await {
                Ok(()) => {}
                // Already gone (e.g. with its interface): fine.
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -3 => {}
                Err(e) => {
                    return Err(request(format!(
                        "removing a townlink route in table {table}"
                    ))(e))
                }
            }
        }
        Ok(n)
    }

    /// The gateway the kernel uses on interface `name`: the main table's
    /// default route through it first, else any route through it with a
    /// gateway. `None` when there is none (point-to-point link).
    pub async fn learn_gateway(&self, name: &str, ipv6: bool) -> Result<Option<IpAddr>> {
        let index = self.require_link(name).await?;
        let query = if ipv6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        let routes = collect(self.handle.route().get(query).execute(), "listing routes").await?;
        let through: Vec<&RouteMessage> = routes
            .iter()
            .filter(|r| {
                oif_of(r) == Some(index) && table_of(r) == RouteHeader::RT_TABLE_MAIN as u32
            })
            .collect();
        let default = through
            .iter()
            .filter(|r| r.header.destination_prefix_length == 0)
            .find_map(|r| gateway_of(r));
        Ok(default.or_else(|| through.iter().find_map(|r| gateway_of(r))))
    }
}

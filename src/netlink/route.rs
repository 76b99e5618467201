//! Routes: add or replace townlink's own, purge them, learn a gateway,
//! read the routes townlink did not make.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

use ipnet::IpNet;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::RouteType;

use super::{collect, kernel_refused, request, Netlink, NetlinkError, Result};
use crate::routing::{KernelRoute, RouteSpec, LOCAL_TABLE, MAIN_TABLE, PROTOCOL};

fn destination_of(msg: &RouteMessage) -> Option<IpNet> {
    let len = msg.header.destination_prefix_length;
    let addr = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    });
    let addr = match (addr, msg.header.address_family) {
        (Some(a), _) => a,
        (None, AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (None, _) => return None,
    };
    IpNet::new(addr, len).ok().map(|n| n.trunc())
}

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

/// " metric N" for a route with a metric, as `ip route` writes it.
fn metric_words(spec: &RouteSpec) -> String {
    spec.metric
        .map(|m| format!(" metric {m}"))
        .unwrap_or_default()
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
        let builder = match spec.metric {
            Some(metric) => builder.priority(metric),
            None => builder,
        };
        let builder = match spec.gateway {
            Some(gw) => builder
                .gateway(gw)
                .map_err(|e| NetlinkError::Invalid(e.to_string()))?,
            None => builder.scope(RouteScope::Link),
        };
        Ok(builder.build())
    }

    /// Installs a route, replacing any route to the same destination in the
    /// same table with the same metric (one netlink message: this is how
    /// failover switches). A route with another metric stays: changing a
    /// metric is adding the new route, then deleting the old one.
    pub async fn replace_route(&self, spec: &RouteSpec) -> Result<()> {
        let msg = self.route_message(spec).await?;
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(request(format!(
                "installing route {} dev {} table {}{}",
                spec.destination,
                spec.interface,
                spec.table,
                metric_words(spec)
            )))
    }

    /// Adds a route that must not replace one townlink did not make
    /// (`NLM_F_EXCL`): a hub's route to a site's LAN. A route to the same
    /// destination in the same table that townlink made through the same
    /// interface is taken as this one (added again after a crash); any
    /// other makes this an error, and the route in place is left as it is.
    pub async fn add_route(&self, spec: &RouteSpec) -> Result<()> {
        let msg = self.route_message(spec).await?;
        let index = oif_of(&msg);
        let what = || {
            format!(
                "adding route {} dev {} table {}",
                spec.destination, spec.interface, spec.table
            )
        };
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if kernel_refused(&e, libc::EEXIST) => {
                let existing = self.routes_to(spec.destination, spec.table).await?;
                if existing.iter().any(|r| {
                    r.header.protocol == RouteProtocol::Other(PROTOCOL) && oif_of(r) == index
                }) {
                    return Ok(());
                }
                let protocols: Vec<String> = existing
                    .iter()
                    .map(|r| r.header.protocol.to_string())
                    .collect();
                Err(NetlinkError::Invalid(format!(
                    "{}: a route to {} that townlink did not make is in place (proto {}); \
                     it is left as it is",
                    what(),
                    spec.destination,
                    protocols.join(", ")
                )))
            }
            Err(e) => Err(request(what())(e)),
        }
    }

    /// The routes of `table` to exactly `destination`.
    async fn routes_to(&self, destination: IpNet, table: u32) -> Result<Vec<RouteMessage>> {
        Ok(self
            .dump_routes()
            .await?
            .into_iter()
            .filter(|r| table_of(r) == table && destination_of(r) == Some(destination))
            .collect())
    }

    /// Every route of every table, both families.
    async fn dump_routes(&self) -> Result<Vec<RouteMessage>> {
        let mut all = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = match family {
                AddressFamily::Inet => RouteMessageBuilder::<Ipv4Addr>::new().build(),
                _ => RouteMessageBuilder::<Ipv6Addr>::new().build(),
            };
            query.header.table = RouteHeader::RT_TABLE_UNSPEC;
            all.extend(collect(self.handle.route().get(query).execute(), "listing routes").await?);
        }
        Ok(all)
    }

    /// The routes of the main and local tables that townlink did not
    /// make: what the host reaches by itself, and its own addresses.
    pub async fn kernel_routes(&self) -> Result<Vec<KernelRoute>> {
        let links = collect(self.handle.link().get().execute(), "listing interfaces").await?;
        let name_of = |index: u32| {
            links
                .iter()
                .find(|l| l.header.index == index)
                .and_then(|l| {
                    l.attributes.iter().find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    })
                })
        };
        Ok(self
            .dump_routes()
            .await?
            .iter()
            .filter(|r| r.header.protocol != RouteProtocol::Other(PROTOCOL))
            .filter(|r| matches!(table_of(r), MAIN_TABLE | LOCAL_TABLE))
            .filter_map(|r| {
                Some(KernelRoute {
                    destination: destination_of(r)?,
                    table: table_of(r),
                    local: r.header.kind == RouteType::Local,
                    interface: oif_of(r).and_then(name_of),
                    gateway: gateway_of(r),
                    protocol: r.header.protocol.to_string(),
                })
            })
            .collect())
    }

    /// Removes one of townlink's routes (e.g. a revoked site's LAN), the
    /// one with its metric when it has one; a route that is already gone
    /// is fine.
    pub async fn delete_route(&self, spec: &RouteSpec) -> Result<()> {
        let msg = self.route_message(spec).await?;
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            // ESRCH: no such route.
            Err(e) if kernel_refused(&e, libc::ESRCH) => Ok(()),
            Err(e) => Err(request(format!(
                "removing route {} dev {} table {}{}",
                spec.destination,
                spec.interface,
                spec.table,
                metric_words(spec)
            ))(e)),
        }
    }

    /// Every route (all tables, both families) carrying townlink's protocol.
    pub async fn our_routes(&self) -> Result<Vec<RouteMessage>> {
        Ok(self
            .dump_routes()
            .await?
            .into_iter()
            .filter(|r| r.header.protocol == RouteProtocol::Other(PROTOCOL))
            .collect())
    }

    pub(super) async fn purge_routes(&self) -> Result<usize> {
        let routes = self.our_routes().await?;
        let n = routes.len();
        for route in routes {
            let table = table_of(&route);
            match self.handle.route().del(route).execute().await {
                Ok(()) => {}
                // Already gone (e.g. with its interface): fine.
                Err(e) if kernel_refused(&e, libc::ESRCH) => {}
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

//! What townlink installs in the kernel for a config: routes and rules,
//! computed without I/O so that the plan can be tested and reviewed.
//!
//! Annex (uplinks in file order, index `i`; hubs in file order, index `h`,
//! each with its own tunnel device `D_h`, the first one `tunnel.interface`):
//! - main table: every prefix reached through a hub → the device of the
//!   active hub (a prefix the active hub does not list: the device of the
//!   preferred hub that lists it); with several hubs also each hub's
//!   tunnel address /32 → its own device, and the tunnel network → the
//!   active hub's device (with one hub, the tunnel address's prefix route
//!   on `tunnel.interface` covers both);
//! - table `T_WG + 16 h`: default → the uplink hub `h`'s tunnel uses
//!   (failover replaces this route);
//! - table `T_WG + 1 + i`: default → uplink `i` (its prober uses it);
//! - rules: `fwmark M_WG + 16 h → T_WG + 16 h`, `fwmark M_WG + 1 + i →
//!   T_WG + 1 + i` (priorities `P + 16 h`, `P + 1 + i`).
//!
//! Hub: main table: every site's LAN prefix → tunnel interface; table
//! [`RETURN_TABLE`] (116): every site with a session here, its LAN
//! prefixes and tunnel address → tunnel interface, metric 100 (attached)
//! or 1000 ([`return_routes`], written by `daemon::return_path`).
//!
//! Every route and rule carries protocol [`PROTOCOL`], so that a later start
//! can find and remove what a crashed run left, and nothing else.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{AnnexConfig, RoutingConfig};
use crate::sites::{Reserved, Site, SiteSet};

/// The `rtm_protocol` of townlink's routes and rules (`ip route show proto 116`).
pub const PROTOCOL: u8 = 116;
/// The kernel's main table.
pub const MAIN_TABLE: u32 = 254;
/// The kernel's local table (this host's own addresses).
pub const LOCAL_TABLE: u32 = 255;
/// The hub's table of return routes: per site, its LAN prefixes and its
/// tunnel address, metric 100 when attached here, 1000 with a session
/// only; read by the hub's BGP daemon (`config/bird/hub.conf`), never by
/// the hub's own forwarding. Only `daemon::return_path` writes it.
pub const RETURN_TABLE: u32 = 116;

/// A route of the kernel that townlink did not make (any protocol but
/// [`PROTOCOL`]), as read from the main and local tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    pub destination: IpNet,
    pub table: u32,
    /// A `local` route: an address of this host.
    pub local: bool,
    pub interface: Option<String>,
    pub gateway: Option<IpAddr>,
    /// `kernel`, `boot`, `static`, `dhcp`, `bird`, ...
    pub protocol: String,
}

/// The hub's own networks that no site's LAN may take: each address of
/// the hub, and each route of the main table townlink did not make (the
/// records server's network, the uplink's, any route an administrator or
/// a DHCP client added). Default routes are left out: every prefix lies
/// inside them, and the LAN check refuses prefixes wide enough to matter
/// (`sites::MIN_LAN_V4`).
pub fn hub_reserved(routes: &[KernelRoute]) -> Vec<Reserved> {
    routes
        .iter()
        .filter_map(|r| {
            let dev = r
                .interface
                .as_ref()
                .map_or(String::new(), |i| format!(" dev {i}"));
            let what = if r.table == LOCAL_TABLE && r.local {
                format!("the hub's address {}{dev}", r.destination.addr())
            } else if r.table == MAIN_TABLE && r.destination.prefix_len() > 0 {
                let via = r.gateway.map_or(String::new(), |g| format!(" via {g}"));
                format!(
                    "the hub's route {}{via}{dev} (proto {}), which townlink did not make",
                    r.destination, r.protocol
                )
            } else {
                return None;
            };
            Some(Reserved {
                prefix: r.destination,
                what,
                inside_ok: false,
            })
        })
        .collect()
}

/// A route townlink owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub destination: IpNet,
    pub table: u32,
    pub interface: String,
    /// `None`: directly on the link (scope link), e.g. the tunnel or a
    /// point-to-point 4G interface.
    pub gateway: Option<IpAddr>,
    /// The route's metric (`priority`); `None`: the kernel's default (0).
    /// Two routes to one destination with different metrics are two
    /// routes (table [`RETURN_TABLE`]).
    pub metric: Option<u32>,
}

/// A policy rule townlink owns: `fwmark → table`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleSpec {
    pub fwmark: u32,
    pub table: u32,
    pub priority: u32,
    pub ipv6: bool,
}

/// An uplink's next hop, once learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    pub interface: String,
    pub gateway: Option<IpAddr>,
}

fn default_route(ipv6: bool) -> IpNet {
    if ipv6 {
        "::/0".parse().expect("literal")
    } else {
        "0.0.0.0/0".parse().expect("literal")
    }
}

/// The route that sends the packets of hub `hub`'s tunnel device out of
/// an uplink.
pub fn tunnel_uplink_route(
    routing: &RoutingConfig,
    hub: usize,
    hop: &NextHop,
    ipv6: bool,
) -> RouteSpec {
    RouteSpec {
        destination: default_route(ipv6),
        table: routing.hub_table(hub),
        interface: hop.interface.clone(),
        gateway: hop.gateway,
        metric: None,
    }
}

/// The address each tunnel device gets: the configured one (its prefix
/// routes the tunnel network) with one hub; with several, its /32 (/128)
/// on every device, the tunnel network being routed by [`hub_routes_via`].
pub fn device_address(tunnel_address: IpNet, hubs: usize) -> IpNet {
    if hubs > 1 {
        IpNet::from(tunnel_address.addr())
    } else {
        tunnel_address
    }
}

/// The main table's routes of an annex whose tunnel is on hub `active`
/// (index in `annex.hubs`): what a switch of hub replaces, one route
/// each. `tunnel_address` is the annex's own (`tunnel.address`).
pub fn hub_routes_via(annex: &AnnexConfig, tunnel_address: IpNet, active: usize) -> Vec<RouteSpec> {
    let on = |h: usize, destination: IpNet| RouteSpec {
        destination,
        table: MAIN_TABLE,
        interface: annex.hubs[h].interface.as_str().to_string(),
        gateway: None,
        metric: None,
    };
    let several = annex.hubs.len() > 1;
    let mut routes: Vec<RouteSpec> = Vec::new();
    if several {
        for (h, hub) in annex.hubs.iter().enumerate() {
            routes.push(on(h, IpNet::from(hub.address)));
        }
        routes.push(on(active, tunnel_address.trunc()));
    }
    // The hubs, the active one first, then by preference.
    let mut order: Vec<usize> = (0..annex.hubs.len()).collect();
    order.sort_by_key(|h| (*h != active, annex.hubs[*h].priority, *h));
    for h in order {
        for prefix in &annex.hubs[h].routes {
            if !routes.iter().any(|r| r.destination == *prefix) {
                routes.push(on(h, *prefix));
            }
        }
    }
    routes
}

/// Routes and rules of an annex; `hops[i]` is uplink `i`'s next hop,
/// `active_hub` the hub carrying the tunnel, `tunnels[h]` the uplink whose
/// route goes into hub `h`'s table.
pub fn annex_plan(
    annex: &AnnexConfig,
    routing: &RoutingConfig,
    tunnel_address: IpNet,
    hops: &[NextHop],
    active_hub: usize,
    tunnels: &[usize],
    ipv6_endpoint: bool,
) -> (Vec<RouteSpec>, Vec<RuleSpec>) {
    let mut routes = hub_routes_via(annex, tunnel_address, active_hub);
    let mut rules = Vec::new();
    for (h, uplink) in tunnels.iter().enumerate().take(annex.hubs.len()) {
        routes.push(tunnel_uplink_route(
            routing,
            h,
            &hops[*uplink],
            ipv6_endpoint,
        ));
        rules.push(RuleSpec {
            fwmark: routing.hub_fwmark(h),
            table: routing.hub_table(h),
            priority: routing.hub_rule_priority(h),
            ipv6: ipv6_endpoint,
        });
    }
    for (i, hop) in hops.iter().enumerate() {
        routes.push(RouteSpec {
            destination: default_route(ipv6_endpoint),
            table: routing.uplink_table(i),
            interface: hop.interface.clone(),
            gateway: hop.gateway,
            metric: None,
        });
        rules.push(RuleSpec {
            fwmark: routing.uplink_fwmark(i),
            table: routing.uplink_table(i),
            priority: routing.rule_priority + 1 + i as u32,
            ipv6: ipv6_endpoint,
        });
    }
    // Ordered by priority, as `ip rule` lists them.
    rules.sort_by_key(|r| r.priority);
    (routes, rules)
}

/// Routes of a hub: each site's LAN through the tunnel. (The sites' tunnel
/// addresses are covered by the tunnel interface's own prefix route.)
pub fn hub_routes(sites: &SiteSet, tunnel_interface: &str) -> Vec<RouteSpec> {
    sites
        .iter()
        .flat_map(|s| site_routes(s, tunnel_interface))
        .collect()
}

/// The hub's routes of one site: its LAN prefixes through the tunnel.
pub fn site_routes(site: &Site, tunnel_interface: &str) -> Vec<RouteSpec> {
    site.lan
        .iter()
        .map(|prefix| RouteSpec {
            destination: *prefix,
            table: MAIN_TABLE,
            interface: tunnel_interface.to_string(),
            gateway: None,
            metric: None,
        })
        .collect()
}

/// A hub's routes of one site in [`RETURN_TABLE`], for its BGP daemon to
/// announce (`docs/backup-site.md`): the site's tunnel address (/32,
/// /128) and LAN prefixes through the tunnel, with `metric` (the MED).
pub fn return_routes(site: &Site, tunnel_interface: &str, metric: u32) -> Vec<RouteSpec> {
    site.allowed_ips()
        .into_iter()
        .map(|prefix| RouteSpec {
            destination: prefix,
            table: RETURN_TABLE,
            interface: tunnel_interface.to_string(),
            gateway: None,
            metric: Some(metric),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hubs_addresses_and_routes_are_reserved_but_not_its_default() {
        let route =
            |dst: &str, table: u32, local: bool, gw: Option<&str>, proto: &str| KernelRoute {
                destination: dst.parse().unwrap(),
                table,
                local,
                interface: Some("rec0".into()),
                gateway: gw.map(|g| g.parse().unwrap()),
                protocol: proto.into(),
            };
        let reserved = hub_reserved(&[
            route("0.0.0.0/0", MAIN_TABLE, false, Some("198.18.0.1"), "boot"),
            route("10.50.0.0/24", MAIN_TABLE, false, None, "kernel"),
            route(
                "192.168.9.0/24",
                MAIN_TABLE,
                false,
                Some("10.50.0.10"),
                "static",
            ),
            route("10.50.0.1/32", LOCAL_TABLE, true, None, "kernel"),
            route("10.50.0.255/32", LOCAL_TABLE, false, None, "kernel"),
            route("10.60.0.0/24", 100, false, None, "static"),
        ]);
        let what: Vec<&str> = reserved.iter().map(|r| r.what.as_str()).collect();
        assert_eq!(
            what,
            vec![
                "the hub's route 10.50.0.0/24 dev rec0 (proto kernel), which townlink did not make",
                "the hub's route 192.168.9.0/24 via 10.50.0.10 dev rec0 (proto static), which \
                 townlink did not make",
                "the hub's address 10.50.0.1 dev rec0",
            ]
        );
        assert!(reserved.iter().all(|r| !r.inside_ok));
    }
    use crate::config::{Endpoint, HubPeer, Uplink};
    use crate::sites::Name;

    fn annex() -> AnnexConfig {
        let key = crate::keys::PrivateKey::generate().public_key();
        AnnexConfig {
            name: Name::new("annex-1").unwrap(),
            lan: vec!["192.168.1.0/24".parse().unwrap()],
            hubs: vec![HubPeer {
                name: Name::new("main").unwrap(),
                public_key: key,
                endpoint: Endpoint::parse("198.18.0.2:51820").unwrap(),
                address: "10.99.0.1".parse().unwrap(),
                routes: vec![
                    "10.50.0.0/24".parse().unwrap(),
                    "192.168.2.0/24".parse().unwrap(),
                ],
                keepalive: 25,
                probe_port: 51821,
                fingerprint: crate::fingerprint::Fingerprint::from_bytes([7; 32]),
                priority: 0,
                interface: crate::config::InterfaceName::new("tl0").unwrap(),
            }],
            uplinks: ["fiber", "lte"]
                .iter()
                .enumerate()
                .map(|(i, n)| Uplink {
                    name: Name::new(n).unwrap(),
                    interface: crate::config::InterfaceName::new(&format!("eth{i}")).unwrap(),
                    gateway: None,
                    priority: i as u32,
                    metered: i == 1,
                    probe_budget: None,
                })
                .collect(),
            failover: crate::decision::Policy::default(),
        }
    }

    #[test]
    fn annex_plan_steers_tunnel_and_each_uplink() {
        let routing = RoutingConfig::default();
        let hops = vec![
            NextHop {
                interface: "eth0".into(),
                gateway: Some("198.18.11.1".parse().unwrap()),
            },
            NextHop {
                interface: "eth1".into(),
                gateway: None,
            },
        ];
        let address: IpNet = "10.99.0.2/24".parse().unwrap();
        let (routes, rules) = annex_plan(&annex(), &routing, address, &hops, 0, &[1], false);
        let main: Vec<_> = routes.iter().filter(|r| r.table == MAIN_TABLE).collect();
        assert_eq!(main.len(), 2);
        assert!(main
            .iter()
            .all(|r| r.interface == "tl0" && r.gateway.is_none()));
        let tunnel = routes.iter().find(|r| r.table == 7400).unwrap();
        assert_eq!(
            tunnel.interface, "eth1",
            "the active uplink carries the tunnel"
        );
        assert_eq!(tunnel.destination, "0.0.0.0/0".parse::<IpNet>().unwrap());
        assert_eq!(
            routes.iter().find(|r| r.table == 7401).unwrap().gateway,
            hops[0].gateway
        );
        assert_eq!(
            routes.iter().find(|r| r.table == 7402).unwrap().interface,
            "eth1"
        );
        assert_eq!(
            rules
                .iter()
                .map(|r| (r.fwmark, r.table, r.priority))
                .collect::<Vec<_>>(),
            vec![
                (0x7400, 7400, 7400),
                (0x7401, 7401, 7401),
                (0x7402, 7402, 7402)
            ]
        );
    }
}

#[cfg(test)]
mod two_hubs {
    use super::*;
    use crate::config::{Endpoint, HubPeer, InterfaceName, Uplink};
    use crate::sites::Name;

    fn hub(name: &str, address: &str, routes: &[&str], priority: u32, dev: &str) -> HubPeer {
        HubPeer {
            name: Name::new(name).unwrap(),
            public_key: crate::keys::PrivateKey::generate().public_key(),
            endpoint: Endpoint::parse("198.18.0.2:51820").unwrap(),
            address: address.parse().unwrap(),
            routes: routes.iter().map(|r| r.parse().unwrap()).collect(),
            keepalive: 25,
            probe_port: 51821,
            fingerprint: crate::fingerprint::Fingerprint::from_bytes([7; 32]),
            priority,
            interface: InterfaceName::new(dev).unwrap(),
        }
    }

    /// Main (tl0) and backup (tl1) both serve the records network; only
    /// main lists 192.168.2.0/24, only backup 10.60.0.0/24.
    fn annex() -> AnnexConfig {
        AnnexConfig {
            name: Name::new("annex-1").unwrap(),
            lan: vec!["192.168.1.0/24".parse().unwrap()],
            hubs: vec![
                hub(
                    "main",
                    "10.99.0.1",
                    &["10.50.0.0/24", "192.168.2.0/24"],
                    0,
                    "tl0",
                ),
                hub(
                    "backup",
                    "10.99.0.254",
                    &["10.50.0.0/24", "10.60.0.0/24"],
                    1,
                    "tl1",
                ),
            ],
            uplinks: ["fiber", "lte"]
                .iter()
                .enumerate()
                .map(|(i, n)| Uplink {
                    name: Name::new(n).unwrap(),
                    interface: InterfaceName::new(&format!("eth{i}")).unwrap(),
                    gateway: None,
                    priority: i as u32,
                    metered: i == 1,
                    probe_budget: None,
                })
                .collect(),
            failover: crate::decision::Policy::default(),
        }
    }

    fn main_table(routes: &[RouteSpec]) -> Vec<(String, String)> {
        routes
            .iter()
            .filter(|r| r.table == MAIN_TABLE)
            .map(|r| (r.destination.to_string(), r.interface.clone()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn hops() -> Vec<NextHop> {
        vec![
            NextHop {
                interface: "eth0".into(),
                gateway: Some("198.18.11.1".parse().unwrap()),
            },
            NextHop {
                interface: "eth1".into(),
                gateway: None,
            },
        ]
    }

    #[test]
    fn each_hub_has_its_device_and_the_active_one_takes_the_shared_routes() {
        let annex = annex();
        let address: IpNet = "10.99.0.2/24".parse().unwrap();
        assert_eq!(
            device_address(address, 2),
            "10.99.0.2/32".parse::<IpNet>().unwrap()
        );
        assert_eq!(device_address(address, 1), address, "one hub: as today");
        let routing = RoutingConfig::default();
        // On main over the fiber; backup's tunnel over the fiber too.
        let (routes, rules) = annex_plan(&annex, &routing, address, &hops(), 0, &[0, 0], false);
        assert_eq!(
            main_table(&routes),
            pairs(&[
                ("10.99.0.1/32", "tl0"),
                ("10.99.0.254/32", "tl1"),
                ("10.99.0.0/24", "tl0"),
                ("10.50.0.0/24", "tl0"),
                ("192.168.2.0/24", "tl0"),
                ("10.60.0.0/24", "tl1"),
            ])
        );
        let defaults: Vec<(u32, &str)> = routes
            .iter()
            .filter(|r| r.table != MAIN_TABLE)
            .map(|r| (r.table, r.interface.as_str()))
            .collect();
        assert_eq!(
            defaults,
            vec![
                (7400, "eth0"),
                (7416, "eth0"),
                (7401, "eth0"),
                (7402, "eth1")
            ]
        );
        assert_eq!(
            rules
                .iter()
                .map(|r| (r.fwmark, r.table, r.priority))
                .collect::<Vec<_>>(),
            vec![
                (0x7400, 7400, 7400),
                (0x7401, 7401, 7401),
                (0x7402, 7402, 7402),
                (0x7410, 7416, 7416),
            ]
        );
        // A switch to backup (on the 4G; main's tunnel stays on the fiber):
        // the shared prefixes and the tunnel network move, a prefix only
        // main serves stays on main's device, each hub's /32 on its own.
        let (routes, _) = annex_plan(&annex, &routing, address, &hops(), 1, &[0, 1], false);
        assert_eq!(
            main_table(&routes),
            pairs(&[
                ("10.99.0.1/32", "tl0"),
                ("10.99.0.254/32", "tl1"),
                ("10.99.0.0/24", "tl1"),
                ("10.50.0.0/24", "tl1"),
                ("10.60.0.0/24", "tl1"),
                ("192.168.2.0/24", "tl0"),
            ])
        );
        assert_eq!(
            main_table(&routes),
            main_table(&hub_routes_via(&annex, address, 1))
        );
        let t = |hub| tunnel_uplink_route(&routing, hub, &hops()[1], false);
        assert_eq!((t(0).table, t(1).table), (7400, 7416));
        assert_eq!(t(1).interface, "eth1");
    }

    #[test]
    fn a_sites_return_routes_are_its_address_and_lans_in_table_116_with_the_metric() {
        let site = Site {
            name: crate::sites::Name::new("annex-1").unwrap(),
            public_key: crate::keys::PrivateKey::generate().public_key(),
            address: "10.99.0.2".parse().unwrap(),
            lan: vec![
                "192.168.1.0/24".parse().unwrap(),
                "192.168.11.0/24".parse().unwrap(),
            ],
            certificate: None,
        };
        let routes = return_routes(&site, "tl0", 1000);
        let seen: Vec<(String, u32, &str, Option<u32>)> = routes
            .iter()
            .map(|r| {
                (
                    r.destination.to_string(),
                    r.table,
                    r.interface.as_str(),
                    r.metric,
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("10.99.0.2/32".to_string(), 116, "tl0", Some(1000)),
                ("192.168.1.0/24".to_string(), 116, "tl0", Some(1000)),
                ("192.168.11.0/24".to_string(), 116, "tl0", Some(1000)),
            ]
        );
        assert!(routes.iter().all(|r| r.gateway.is_none()));
        // The main table's routes of the site are unchanged, no metric.
        assert!(site_routes(&site, "tl0")
            .iter()
            .all(|r| r.table == MAIN_TABLE && r.metric.is_none()));
    }
}

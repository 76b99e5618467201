//! The annex's sections: `name`, `lan`, `[[hub]]` and `[[uplink]]`.

use super::*;

pub(super) fn annex(
    c: &mut Checker,
    raw: &RawConfig,
    tunnel: &TunnelFacts,
    routing: &RoutingConfig,
) -> Option<AnnexConfig> {
    let name = c.name("name", raw.name.as_ref());
    let lan = c.prefixes("lan", raw.lan.as_ref(), tunnel.address);

    let raw_hubs = raw.hub.as_deref().unwrap_or_default();
    if raw_hubs.is_empty() {
        c.push(
            "hub",
            "missing: an annex needs one [[hub]]",
            Some("add [[hub]] with name, public_key, endpoint, address, routes"),
        );
    }
    let hubs: Vec<Option<HubPeer>> = raw_hubs
        .iter()
        .enumerate()
        .map(|(i, h)| hub_peer(c, i, h, tunnel, &lan))
        .collect();
    distinct_hubs(c, raw_hubs);

    let raw_uplinks = raw.uplink.as_deref().unwrap_or_default();
    if raw_uplinks.is_empty() {
        c.push(
            "uplink",
            "missing: an annex needs at least one [[uplink]]",
            Some("add [[uplink]] with name and interface for the fiber and the 4G link"),
        );
    }
    let uplinks: Vec<Option<Uplink>> = raw_uplinks
        .iter()
        .enumerate()
        .map(|(i, u)| uplink(c, i, u))
        .collect();
    // Duplicates are checked on the values as written, so that a mistake in
    // another field of the same uplink does not hide them.
    for (i, a) in raw_uplinks.iter().enumerate() {
        for (j, b) in raw_uplinks.iter().enumerate().skip(i + 1) {
            if let (Some(x), Some(y)) = (&a.name, &b.name) {
                if x == y {
                    c.push(
                        format!("uplink[{j}].name"),
                        format!("{y} is already the name of uplink[{i}]"),
                        None,
                    );
                }
            }
            if let (Some(x), Some(y)) = (&a.interface, &b.interface) {
                if x == y {
                    c.push(
                        format!("uplink[{j}].interface"),
                        format!("{y} is already the interface of uplink[{i}]"),
                        None,
                    );
                }
            }
        }
        if let (Some(x), Some(t)) = (&a.interface, &tunnel.interface) {
            if x == t.as_str() {
                c.push(
                    format!("uplink[{i}].interface"),
                    "is the tunnel interface",
                    Some("an uplink is the physical interface toward the ISP"),
                );
            }
        }
        if let Some(x) = &a.interface {
            if let Some(j) = raw_hubs
                .iter()
                .position(|h| h.interface.as_ref() == Some(x))
            {
                c.push(
                    format!("uplink[{i}].interface"),
                    format!("is the tunnel interface of hub[{j}]"),
                    Some("an uplink is the physical interface toward the ISP"),
                );
            }
        }
    }
    let n = raw_uplinks.len() as u32;
    // The last table in use: the last uplink's, or the last hub's device's.
    let hubs_n = raw_hubs.len().max(1) as u32;
    let last = (routing.table + n).max(routing.table + HUB_STRIDE * (hubs_n - 1));
    if routing.table < 256 && last >= 253 {
        c.push(
            "routing.table",
            format!(
                "tables {}..={last} would include the kernel's tables 253-255",
                routing.table,
            ),
            None,
        );
    }
    if hubs_n > 1 && n >= HUB_STRIDE {
        c.push(
            "uplink",
            format!("{n} uplinks with {hubs_n} hubs; at most 15 with several hubs"),
            Some(&format!(
                "hub h's tunnel device uses table routing.table + {HUB_STRIDE}*h, uplink i's \
                 routing.table + 1 + i (docs/decisions.md)"
            )),
        );
    }

    let failover = failover(c, raw.failover.as_ref().unwrap_or(&RawFailover::default()));

    let hubs: Option<Vec<HubPeer>> = hubs.into_iter().collect();
    let uplinks: Option<Vec<Uplink>> = uplinks.into_iter().collect();
    Some(AnnexConfig {
        name: name?,
        lan,
        hubs: hubs.filter(|h| !h.is_empty())?,
        uplinks: uplinks.filter(|u| !u.is_empty())?,
        failover: failover?,
    })
}

pub(super) fn hub_peer(
    c: &mut Checker,
    i: usize,
    h: &RawHub,
    tunnel: &TunnelFacts,
    lan: &[IpNet],
) -> Option<HubPeer> {
    let p = |k: &str| format!("hub[{i}].{k}");
    let name = c.name(&p("name"), h.name.as_ref());
    let public_key = c.public_key(&p("public_key"), h.public_key.as_ref());
    let endpoint = c
        .required(
            &p("endpoint"),
            h.endpoint.as_ref(),
            "the hub's public address and port, e.g. \"hub.example.net:51820\"",
        )
        .and_then(|e| {
            Endpoint::parse(e)
                .map_err(|m| c.push(p("endpoint"), m, None))
                .ok()
        });
    let address = c
        .required(
            &p("address"),
            h.address.as_ref(),
            "the hub's tunnel address, e.g. \"10.99.0.1\"",
        )
        .and_then(|a| c.ip(&p("address"), a));
    if let (Some(a), Some(t)) = (address, tunnel.address) {
        in_tunnel_network(c, &p("address"), a, t);
    }
    let probe_port = h.probe_port.map_or(Some(DEFAULT_PROBE_PORT), |v| {
        c.int(&p("probe_port"), v, 1, 65535)
    });
    let fingerprint = c
        .required(
            &p("fingerprint"),
            h.fingerprint.as_ref(),
            "the hub's probe certificate fingerprint, printed by `townlink gencert` on the hub",
        )
        .and_then(|f| c.fingerprint(&p("fingerprint"), f));
    let routes = c.prefixes(&p("routes"), h.routes.as_ref(), None);
    for (j, r) in routes.iter().enumerate() {
        if let Some(l) = lan.iter().find(|l| l.contains(r)) {
            c.push(
                format!("{}[{j}]", p("routes")),
                format!("{r} lies inside this annex's own LAN {l}"),
                Some("routes are what the hub serves: records server, other sites; not the local LAN"),
            );
        }
    }
    let keepalive = h.keepalive.map_or(Some(DEFAULT_KEEPALIVE), |k| {
        c.int(&p("keepalive"), k, 0, 3600)
    });
    let priority = h
        .priority
        .map_or(Some(i as u32), |v| c.int(&p("priority"), v, 0, 1000));
    // One tunnel device per hub: the first hub's is `tunnel.interface`,
    // every other hub names its own.
    let interface = match (&h.interface, i) {
        (None, 0) => tunnel.interface.clone(),
        (None, _) => {
            c.push(
                p("interface"),
                "missing: every hub but the first needs its own tunnel interface",
                Some(&format!(
                    "add interface = \"tl{i}\" (a name no other interface has; the first hub \
                     uses tunnel.interface)"
                )),
            );
            None
        }
        (Some(name), _) => {
            let given = c.interface(&p("interface"), Some(name));
            match (&given, &tunnel.interface, i) {
                (Some(g), Some(t), 0) if g != t => {
                    c.push(
                        p("interface"),
                        format!("{g} is not tunnel.interface ({t})"),
                        Some(
                            "the first hub's tunnel device is tunnel.interface: leave this key out",
                        ),
                    );
                    None
                }
                (Some(g), Some(t), _) if i > 0 && g == t => {
                    c.push(
                        p("interface"),
                        format!("{g} is tunnel.interface, the first hub's tunnel device"),
                        Some(&format!("give this hub its own device, e.g. \"tl{i}\"")),
                    );
                    None
                }
                _ => given,
            }
        }
    };
    Some(HubPeer {
        name: name?,
        public_key: public_key?,
        endpoint: endpoint?,
        address: address?,
        routes,
        keepalive: keepalive?,
        probe_port: probe_port?,
        fingerprint: fingerprint?,
        priority: priority?,
        interface: interface?,
    })
}

/// Hubs' names, tunnel interfaces, tunnel addresses and public keys are
/// each the hub's own: checked on the values as written, so that a mistake
/// in another field of the same hub does not hide them.
fn distinct_hubs(c: &mut Checker, raw_hubs: &[RawHub]) {
    for (i, a) in raw_hubs.iter().enumerate() {
        for (j, b) in raw_hubs.iter().enumerate().skip(i + 1) {
            for (key, x, y) in [
                ("name", &a.name, &b.name),
                ("interface", &a.interface, &b.interface),
                ("address", &a.address, &b.address),
                ("public_key", &a.public_key, &b.public_key),
            ] {
                if let (Some(x), Some(y)) = (x, y) {
                    if x == y {
                        c.push(
                            format!("hub[{j}].{key}"),
                            format!("{y} is already the {key} of hub[{i}]"),
                            Some("each hub has its own name, tunnel interface, address and key"),
                        );
                    }
                }
            }
        }
    }
}

pub(super) fn uplink(c: &mut Checker, i: usize, u: &RawUplink) -> Option<Uplink> {
    let p = |k: &str| format!("uplink[{i}].{k}");
    let name = c.name(&p("name"), u.name.as_ref());
    let interface = c.interface(&p("interface"), u.interface.as_ref());
    let gateway = match &u.gateway {
        None => Some(None),
        Some(g) => c.ip(&p("gateway"), g).map(Some),
    };
    let priority = u
        .priority
        .map_or(Some(i as u32), |v| c.int(&p("priority"), v, 0, 1000));
    let metered = u.metered.unwrap_or(false);
    let probe_budget = match &u.probe_budget {
        None => Some(metered.then_some(DEFAULT_PROBE_BUDGET)),
        Some(text) => match crate::size::parse(text) {
            Some(b) if b >= MIN_PROBE_BUDGET => Some(Some(b)),
            Some(_) => {
                c.push(
                    p("probe_budget"),
                    format!("{text:?} is below the smallest budget, 100 kB"),
                    Some("a standby 4G probed every 30 s needs about 20 MB per 30 days"),
                );
                None
            }
            None => {
                c.push(
                    p("probe_budget"),
                    format!("{text:?} is not a size"),
                    Some("write a number and a unit (B, kB, MB, GB), e.g. \"30 MB\" (per 30 days)"),
                );
                None
            }
        },
    };
    Some(Uplink {
        name: name?,
        interface: interface?,
        gateway: gateway?,
        priority: priority?,
        metered,
        probe_budget: probe_budget?,
    })
}

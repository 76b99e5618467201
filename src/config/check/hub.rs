//! The hub's sections: `[[site]]` tables and the LANs no site may take.

use super::*;

pub(super) fn hub(
    c: &mut Checker,
    raw: &RawConfig,
    tunnel: &TunnelFacts,
    base: &Path,
) -> Option<HubConfig> {
    let mut seen: Vec<SiteSeen> = Vec::new();
    let mut complete = true;
    let before = c.problems.len();
    let reserved = reserved(tunnel, raw.enrollment.as_ref());
    for (i, s) in raw.site.iter().flatten().enumerate() {
        let (facts, site) = site(c, i, s, tunnel, &seen, &reserved);
        complete &= site.is_some();
        seen.push(facts);
    }
    let enrollment = enrollment(
        c,
        raw.enrollment.as_ref().unwrap_or(&RawEnrollment::default()),
        tunnel,
        base,
    );
    let follow = follow(c, raw, &seen, tunnel);
    let mut sites = SiteSet::new();
    // Conflicts between sites were reported field by field above.
    if complete && c.problems.len() == before {
        for (i, site) in seen.into_iter().filter_map(|f| f.site).enumerate() {
            if let Err(e) = sites.insert(site) {
                c.push(format!("site[{i}]"), e.to_string(), None);
            }
        }
    }
    match (complete, enrollment, follow) {
        (true, Some(enrollment), Some((follow, followers))) => Some(HubConfig {
            sites,
            enrollment,
            follow,
            followers,
        }),
        _ => None,
    }
}

/// What a `[[site]]` table says, each field present when it is valid, so
/// that the next tables are compared with every valid field of this one.
pub(super) struct SiteSeen {
    pub(super) name: Option<Name>,
    pub(super) public_key: Option<PublicKey>,
    pub(super) address: Option<IpAddr>,
    pub(super) lan: Vec<(usize, IpNet)>,
    pub(super) certificate: Option<Fingerprint>,
    pub(super) site: Option<Site>,
}

impl SiteSeen {
    /// `site[0] (annex-1)`, or `site[0]` without a valid name.
    pub(super) fn label(&self, j: usize) -> String {
        match &self.name {
            Some(n) => format!("site[{j}] ({n})"),
            None => format!("site[{j}]"),
        }
    }
}

/// What no site's LAN may take, as far as the file tells: the tunnel
/// network and `enrollment.routes` (the valid ones; the others are
/// reported by the enrollment check). The hub's addresses and routes are
/// checked when it runs (`daemon::sites`).
pub(super) fn reserved(tunnel: &TunnelFacts, enrollment: Option<&RawEnrollment>) -> Vec<Reserved> {
    let mut reserved: Vec<Reserved> = tunnel
        .address
        .map(|t| Reserved {
            prefix: t.trunc(),
            what: format!("the tunnel network {}", t.trunc()),
            inside_ok: false,
        })
        .into_iter()
        .collect();
    let routes = enrollment.and_then(|e| e.routes.as_ref());
    for (i, text) in routes.into_iter().flatten().enumerate() {
        if let Ok(net) = text.parse::<IpNet>() {
            reserved.push(Reserved {
                prefix: net.trunc(),
                what: format!("enrollment.routes[{i}] {}", net.trunc()),
                inside_ok: true,
            });
        }
    }
    reserved
}

pub(super) fn site(
    c: &mut Checker,
    i: usize,
    s: &RawSite,
    tunnel: &TunnelFacts,
    earlier: &[SiteSeen],
    reserved: &[Reserved],
) -> (SiteSeen, Option<Site>) {
    let p = |k: &str| format!("site[{i}].{k}");
    let name = c.name(&p("name"), s.name.as_ref());
    if let Some(n) = &name {
        if let Some(j) = earlier.iter().position(|e| e.name.as_ref() == Some(n)) {
            c.push(
                p("name"),
                format!("{n} is already the name of site[{j}]"),
                Some("each site needs its own name"),
            );
        }
    }
    let public_key = c.public_key(&p("public_key"), s.public_key.as_ref());
    if let (Some(k), Some(own)) = (&public_key, &tunnel.public_key) {
        if k == own {
            c.push(
                p("public_key"),
                "is the hub's own public key",
                Some("use the annex's key (`townlink pubkey` on the annex)"),
            );
        }
    }
    if let Some(k) = &public_key {
        if let Some((j, e)) = earlier
            .iter()
            .enumerate()
            .find(|(_, e)| e.public_key.as_ref() == Some(k))
        {
            c.push(
                p("public_key"),
                format!("is already the public key of {}", e.label(j)),
                Some("each annex has its own key pair (`townlink genkey` on the annex)"),
            );
        }
    }
    let address = c
        .required(
            &p("address"),
            s.address.as_ref(),
            "the site's tunnel address, e.g. \"10.99.0.2\"",
        )
        .and_then(|a| c.ip(&p("address"), a));
    if let (Some(a), Some(t)) = (address, tunnel.address) {
        in_tunnel_network(c, &p("address"), a, t);
    }
    if let Some(a) = address {
        if let Some((j, e)) = earlier
            .iter()
            .enumerate()
            .find(|(_, e)| e.address == Some(a))
        {
            c.push(
                p("address"),
                format!("{a} is already the address of {}", e.label(j)),
                Some("each site needs its own tunnel address"),
            );
        }
    }
    // Each prefix: its shape and the hub's networks, then the earlier sites.
    let lan = c.checked_prefixes(&p("lan"), s.lan.as_ref(), |n| {
        if let Some(problem) = lan_problem(n, reserved) {
            return Some((
                problem,
                Some(
                    "a site's LAN is the network behind that annex; the tunnel, the records \
                     server and the Internet stay the hub's",
                ),
            ));
        }
        earlier.iter().enumerate().find_map(|(j, e)| {
            let (_, q) = e.lan.iter().find(|(_, q)| overlaps(n, q))?;
            Some((
                format!("{n} overlaps {q} of {}", e.label(j)),
                Some("each site needs its own LAN prefixes"),
            ))
        })
    });
    let certificate = match &s.certificate {
        None => Some(None),
        Some(f) => c.fingerprint(&p("certificate"), f).map(Some),
    };
    if let Some(Some(f)) = &certificate {
        if let Some((j, e)) = earlier
            .iter()
            .enumerate()
            .find(|(_, e)| e.certificate.as_ref() == Some(f))
        {
            c.push(
                p("certificate"),
                format!("is already the certificate of {}", e.label(j)),
                Some("each annex makes its own (`townlink gencert` on the annex)"),
            );
        }
    }
    let site = (|| {
        Some(Site {
            name: name.clone()?,
            public_key: public_key?,
            address: address?,
            lan: lan.iter().map(|(_, n)| *n).collect(),
            certificate: certificate?,
        })
    })();
    let facts = SiteSeen {
        name,
        public_key,
        address,
        lan,
        certificate: certificate.flatten(),
        site: site.clone(),
    };
    (facts, site)
}

pub(super) fn in_tunnel_network(c: &mut Checker, path: &str, a: IpAddr, t: IpNet) {
    if !t.contains(&a) {
        c.push(
            path,
            format!("{a} is outside the tunnel network {}", t.trunc()),
            Some("pick an address of tunnel.address's network"),
        );
    } else if a == t.addr() {
        c.push(
            path,
            format!("{a} is this router's own tunnel address"),
            None,
        );
    }
}

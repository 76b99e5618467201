//! `[enrollment]` (hub).

use super::*;

pub(super) fn enrollment(
    c: &mut Checker,
    e: &RawEnrollment,
    tunnel: &TunnelFacts,
    base: &Path,
) -> Option<EnrollmentConfig> {
    let mut ok = true;
    let registry = match e.registry.as_deref() {
        Some("") => {
            c.push(
                "enrollment.registry",
                "is empty",
                Some("give a file path, e.g. /var/lib/townlink/sites.json"),
            );
            ok = false;
            PathBuf::new()
        }
        Some(p) => base.join(p),
        None => PathBuf::from(DEFAULT_REGISTRY),
    };
    let mut endpoints = Vec::new();
    for (i, text) in e.endpoints.iter().flatten().enumerate() {
        match Endpoint::parse(text) {
            Ok(ep) => endpoints.push(ep),
            Err(m) => {
                c.push(format!("enrollment.endpoints[{i}]"), m, None);
                ok = false;
            }
        }
    }
    let before = c.problems.len();
    let routes = c.prefixes("enrollment.routes", e.routes.as_ref(), None);
    ok &= c.problems.len() == before;
    let network = tunnel.address.map(|a| a.trunc());
    let pool = match (&e.pool, network) {
        (Some(text), _) => match c.prefix("enrollment.pool", text) {
            Some(p) => {
                if let Some(t) = network {
                    if !t.contains(&p) {
                        c.push(
                            "enrollment.pool",
                            format!("{p} is not inside the tunnel network {t}"),
                            Some("enrolled sites get tunnel addresses: take them from the tunnel network"),
                        );
                        ok = false;
                    }
                }
                Some(p)
            }
            None => {
                ok = false;
                None
            }
        },
        (None, t) => t,
    };
    let token_ttl = c.duration(
        "enrollment.token_ttl",
        e.token_ttl.as_ref(),
        EnrollmentConfig::DEFAULT_TOKEN_TTL,
        Duration::from_secs(60),
        EnrollmentConfig::MAX_TOKEN_TTL,
    );
    let hub_name = match &e.hub_name {
        Some(n) => c.name("enrollment.hub_name", Some(n)),
        None => Name::new("main").ok(),
    };
    let keepalive = e.keepalive.map_or(Some(DEFAULT_KEEPALIVE), |k| {
        c.int("enrollment.keepalive", k, 0, 3600)
    });
    let checks = enrollment_checks(c, e, &routes);
    match (ok, pool, token_ttl, hub_name, keepalive, checks) {
        (true, Some(pool), Some(token_ttl), Some(hub_name), Some(keepalive), Some(checks)) => {
            Some(EnrollmentConfig {
                registry,
                endpoints,
                routes,
                pool,
                token_ttl,
                hub_name,
                keepalive,
                checks,
            })
        }
        _ => None,
    }
}

/// `enrollment.check`: distinct names, targets the annexes route to the hub.
fn enrollment_checks(
    c: &mut Checker,
    e: &RawEnrollment,
    routes: &[IpNet],
) -> Option<Vec<EnrollmentCheck>> {
    let mut checks: Vec<EnrollmentCheck> = Vec::new();
    let mut ok = true;
    let items = e.check.as_ref().map(|x| x.items()).unwrap_or_default();
    let single = matches!(e.check, Some(crate::config::raw::OneOrMany::One(_)));
    for (i, text) in items.into_iter().enumerate() {
        let path = if single {
            "enrollment.check".to_string()
        } else {
            format!("enrollment.check[{i}]")
        };
        let check = match EnrollmentCheck::parse(text, i) {
            Ok(k) => k,
            Err(m) => {
                c.push(path, m, None);
                ok = false;
                continue;
            }
        };
        if checks.iter().any(|k| k.name == check.name) {
            let m = format!("{} is the name of another check", check.name);
            c.push(path, m, Some("name them: \"NAME=ADDRESS:PORT\""));
            ok = false;
        } else if !routes.iter().any(|r| r.contains(&check.tcp.ip())) {
            c.push(
                path,
                format!("{} is not inside enrollment.routes", check.tcp.ip()),
                Some("annexes reach only enrollment.routes through the hub: add its network there"),
            );
            ok = false;
        }
        checks.push(check);
    }
    ok.then_some(checks)
}

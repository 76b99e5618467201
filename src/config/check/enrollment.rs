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
    match (ok, pool, token_ttl, hub_name, keepalive) {
        (true, Some(pool), Some(token_ttl), Some(hub_name), Some(keepalive)) => {
            Some(EnrollmentConfig {
                registry,
                endpoints,
                routes,
                pool,
                token_ttl,
                hub_name,
                keepalive,
            })
        }
        _ => None,
    }
}

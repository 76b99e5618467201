//! `[follow]` and `[[follower]]` (hub): who follows whose registry.

use super::*;
use crate::config::raw::{RawFollow, RawFollower};

/// `[follow]` and `[[follower]]`; `sites`: the `[[site]]` tables (a
/// follower's certificate, key and address are none of theirs). `None`
/// when a problem was found.
pub(super) fn follow(
    c: &mut Checker,
    raw: &RawConfig,
    sites: &[SiteSeen],
    tunnel: &TunnelFacts,
) -> Option<(Option<FollowConfig>, Vec<FollowerConfig>)> {
    let before = c.problems.len();
    let follow = raw.follow.as_ref().and_then(|f| follow_section(c, f));
    let hub_name = raw
        .enrollment
        .as_ref()
        .and_then(|e| e.hub_name.as_deref())
        .unwrap_or("main");
    let followers = followers(
        c,
        raw.follower.as_deref().unwrap_or_default(),
        sites,
        tunnel,
        hub_name,
    );
    if let Some(f) = &raw.follow {
        let main = f.name.as_deref().unwrap_or(FollowConfig::DEFAULT_MAIN);
        if raw.follower.as_ref().is_some_and(|v| !v.is_empty()) {
            c.push(
                "follower",
                "a hub that follows another hub ([follow]) cannot have followers",
                Some("every follower follows the main hub: list it in the main hub's config"),
            );
        }
        if raw.enrollment.is_some() {
            c.push(
                "enrollment",
                format!(
                    "a hub that follows another hub ([follow]) enrolls no site: its sites \
                     come from {main}"
                ),
                Some("remove [enrollment]; run `townlink site add` on the main hub"),
            );
        }
    }
    (c.problems.len() == before).then_some((follow, followers?))
}

fn follow_section(c: &mut Checker, f: &RawFollow) -> Option<FollowConfig> {
    let main = match &f.name {
        Some(n) => c.name("follow.name", Some(n)),
        None => Name::new(FollowConfig::DEFAULT_MAIN).ok(),
    };
    let endpoint = c
        .required(
            "follow.endpoint",
            f.endpoint.as_ref(),
            "the main hub's probe responder, host:port, e.g. \"hub-main.example.net:51821\"",
        )
        .and_then(|text| {
            Endpoint::parse(text)
                .map_err(|m| c.push("follow.endpoint", m, None))
                .ok()
        });
    let fingerprint = c
        .required(
            "follow.fingerprint",
            f.fingerprint.as_ref(),
            "the main hub's probe certificate fingerprint, printed by `townlink gencert` there",
        )
        .and_then(|text| c.fingerprint("follow.fingerprint", text));
    Some(FollowConfig {
        main: main?,
        endpoint: endpoint?,
        fingerprint: fingerprint?,
    })
}

fn followers(
    c: &mut Checker,
    raw: &[RawFollower],
    sites: &[SiteSeen],
    tunnel: &TunnelFacts,
    hub_name: &str,
) -> Option<Vec<FollowerConfig>> {
    let mut out: Vec<FollowerConfig> = Vec::new();
    let mut names: Vec<(usize, Name)> = Vec::new();
    let mut certificates: Vec<(usize, Fingerprint)> = Vec::new();
    let mut keys: Vec<(usize, PublicKey)> = Vec::new();
    let mut addresses: Vec<(usize, IpAddr)> = Vec::new();
    let mut ok = true;
    for (i, f) in raw.iter().enumerate() {
        let p = |k: &str| format!("follower[{i}].{k}");
        let name = c.name(&p("name"), f.name.as_ref());
        if let Some(n) = &name {
            if let Some((j, _)) = names.iter().find(|(_, m)| m == n) {
                c.push(
                    p("name"),
                    format!("{n} is already the name of follower[{j}]"),
                    Some("each follower needs its own name"),
                );
            } else if n.as_str() == hub_name {
                c.push(
                    p("name"),
                    format!("{n} is this hub's name (enrollment.hub_name)"),
                    Some(
                        "annexes name every hub: give the backup hub its own name, e.g. \"backup\"",
                    ),
                );
            }
            names.push((i, n.clone()));
        }
        let certificate = c
            .required(
                &p("certificate"),
                f.certificate.as_ref(),
                "the follower's probe certificate fingerprint (`townlink gencert` on that hub)",
            )
            .and_then(|text| c.fingerprint(&p("certificate"), text));
        if let Some(fp) = &certificate {
            if let Some((j, _)) = certificates.iter().find(|(_, g)| g == fp) {
                c.push(
                    p("certificate"),
                    format!("is already the certificate of follower[{j}]"),
                    Some("each hub makes its own (`townlink gencert`)"),
                );
            } else if let Some(j) = sites
                .iter()
                .position(|s| s.certificate.as_ref() == Some(fp))
            {
                c.push(
                    p("certificate"),
                    format!("is the certificate of site[{j}]"),
                    Some("a follower is a hub, not an annex: each makes its own certificate"),
                );
            }
            certificates.push((i, *fp));
        }
        let public_key = c.public_key(&p("public_key"), f.public_key.as_ref());
        if let Some(k) = &public_key {
            if tunnel.public_key.as_ref() == Some(k) {
                c.push(
                    p("public_key"),
                    "is this hub's own public key",
                    Some("give the backup hub's key (`townlink pubkey` on the backup hub)"),
                );
            } else if let Some((j, _)) = keys.iter().find(|(_, g)| g == k) {
                c.push(
                    p("public_key"),
                    format!("is already the public key of follower[{j}]"),
                    Some("each hub has its own key pair"),
                );
            } else if let Some((j, s)) = sites
                .iter()
                .enumerate()
                .find(|(_, s)| s.public_key.as_ref() == Some(k))
            {
                c.push(
                    p("public_key"),
                    format!("is the public key of {}", s.label(j)),
                    Some("a follower is a hub, not an annex: give the backup hub's key"),
                );
            }
            keys.push((i, *k));
        }
        let endpoints = follower_endpoints(c, i, f.endpoints.as_ref());
        let address = c
            .required(
                &p("address"),
                f.address.as_ref(),
                "the backup hub's tunnel address (its tunnel.address without the length), \
                 e.g. \"10.99.0.254\"",
            )
            .and_then(|a| c.ip(&p("address"), a));
        if let Some(a) = address {
            if let Some(t) = tunnel.address {
                in_tunnel_network(c, &p("address"), a, t);
            }
            if let Some((j, _)) = addresses.iter().find(|(_, b)| *b == a) {
                c.push(
                    p("address"),
                    format!("{a} is already the address of follower[{j}]"),
                    Some("each hub has its own tunnel address"),
                );
            } else if let Some((j, s)) =
                sites.iter().enumerate().find(|(_, s)| s.address == Some(a))
            {
                c.push(
                    p("address"),
                    format!("{a} is the address of {}", s.label(j)),
                    Some("each hub and site has its own tunnel address"),
                );
            }
            addresses.push((i, a));
        }
        let probe_port = f.probe_port.map_or(Some(DEFAULT_PROBE_PORT), |v| {
            c.int(&p("probe_port"), v, 1, 65535)
        });
        let priority = f
            .priority
            .map_or(Some(i as u32 + 1), |v| c.int(&p("priority"), v, 0, 1000));
        match (
            name,
            certificate,
            public_key,
            endpoints,
            address,
            probe_port,
            priority,
        ) {
            (
                Some(name),
                Some(certificate),
                Some(public_key),
                Some(endpoints),
                Some(address),
                Some(probe_port),
                Some(priority),
            ) => out.push(FollowerConfig {
                name,
                certificate,
                public_key,
                endpoints,
                address,
                probe_port,
                priority,
            }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

/// `follower[i].endpoints`: at least one `host:port`.
fn follower_endpoints(
    c: &mut Checker,
    i: usize,
    raw: Option<&Vec<String>>,
) -> Option<Vec<Endpoint>> {
    let path = format!("follower[{i}].endpoints");
    let list = c.required(
        &path,
        raw,
        "the backup hub's public WireGuard endpoints, e.g. [\"hub-backup.example.net:51820\"]",
    )?;
    if list.is_empty() {
        c.push(
            &path,
            "is empty",
            Some("give at least one host:port where annexes reach the backup hub's WireGuard"),
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (j, text) in list.iter().enumerate() {
        match Endpoint::parse(text) {
            Ok(e) => out.push(e),
            Err(m) => {
                c.push(format!("{path}[{j}]"), m, None);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

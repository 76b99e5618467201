//! `[follow]` and `[[follower]]` (hub): who follows whose registry.

use super::*;
use crate::config::raw::{RawFollow, RawFollower};

/// `[follow]` and `[[follower]]`; `site_certificates`: the `[[site]]`
/// tables' certificates (a follower's may be none of them). `None` when
/// a problem was found.
pub(super) fn follow(
    c: &mut Checker,
    raw: &RawConfig,
    site_certificates: &[(usize, Fingerprint)],
) -> Option<(Option<FollowConfig>, Vec<FollowerConfig>)> {
    let before = c.problems.len();
    let follow = raw.follow.as_ref().and_then(|f| follow_section(c, f));
    let followers = followers(
        c,
        raw.follower.as_deref().unwrap_or_default(),
        site_certificates,
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
    site_certificates: &[(usize, Fingerprint)],
) -> Option<Vec<FollowerConfig>> {
    let mut out: Vec<FollowerConfig> = Vec::new();
    let mut names: Vec<(usize, Name)> = Vec::new();
    let mut certificates: Vec<(usize, Fingerprint)> = Vec::new();
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
            } else if let Some((j, _)) = site_certificates.iter().find(|(_, g)| g == fp) {
                c.push(
                    p("certificate"),
                    format!("is the certificate of site[{j}]"),
                    Some("a follower is a hub, not an annex: each makes its own certificate"),
                );
            }
            certificates.push((i, *fp));
        }
        match (name, certificate) {
            (Some(name), Some(certificate)) => out.push(FollowerConfig { name, certificate }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

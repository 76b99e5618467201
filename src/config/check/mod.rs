//! Validation of a raw config: collects every problem, with its key path and
//! a hint, and builds the typed [`Config`] only when there is none. One file
//! per section, as in `raw.rs`; [`Checker`] holds the problems and the
//! checks of single values that every section uses.

mod annex;
mod checker;
mod checks;
mod control;
mod enrollment;
mod failover;
mod follow;
mod hub;
mod probe;
mod routing;
mod tunnel;

// Shared by every section file (each starts with `use super::*`).
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ipnet::IpNet;

use std::time::Duration;

use super::raw::{
    RawCheck, RawConfig, RawControl, RawEnrollment, RawFailover, RawHub, RawMetrics, RawProbe,
    RawRouting, RawSite, RawTunnel, RawUplink,
};
use super::*;
use crate::decision::{Damping, Policy, Prefer, Sla};
use crate::sites::{lan_problem, overlaps, Reserved, Site};

use annex::*;
use checker::*;
use checks::*;
use control::*;
use enrollment::*;
use failover::*;
use follow::*;
use hub::*;
use probe::*;
use routing::*;
use tunnel::*;

/// Validates a raw config; `problems` holds what parsing already found
/// (unknown keys). Returns the typed config only if no problem is found.
pub fn validate(
    raw: RawConfig,
    base: &Path,
    problems: Vec<Problem>,
) -> Result<Config, Vec<Problem>> {
    validate_with(raw, base, problems, Vec::new())
}

/// [`validate`], where the keys in `typed` had a value of the wrong type
/// (reported in `problems` and left out of `raw`).
pub(super) fn validate_with(
    raw: RawConfig,
    base: &Path,
    problems: Vec<Problem>,
    typed: Vec<String>,
) -> Result<Config, Vec<Problem>> {
    let mut c = Checker { problems, typed };
    let role = c.required(
        "role",
        raw.role.as_deref(),
        "role = \"hub\" or role = \"annex\"",
    );
    let is_hub = match role {
        Some("hub") => Some(true),
        Some("annex") => Some(false),
        Some(other) => {
            c.push(
                "role",
                format!("{other:?} is not a role"),
                Some("role = \"hub\" or role = \"annex\""),
            );
            None
        }
        None => None,
    };

    let (facts, tunnel) = match &raw.tunnel {
        Some(t) => tunnel(&mut c, t, base, is_hub),
        None => {
            c.push(
                "tunnel",
                "missing section",
                Some("add a [tunnel] section: interface, private_key_file, address"),
            );
            (TunnelFacts::default(), None)
        }
    };
    let routing = routing(
        &mut c,
        raw.routing.as_ref().unwrap_or(&RawRouting::default()),
    );
    let probe = match &raw.probe {
        Some(p) => probe(&mut c, p, base, is_hub),
        None => {
            c.push(
                "probe",
                "missing section",
                Some("add [probe] with certificate_file and key_file (made by `townlink gencert`)"),
            );
            None
        }
    };

    let control = control(&mut c, raw.control.as_ref(), base);
    let state_directory = match raw.state_directory.as_deref() {
        Some("") => {
            c.push(
                "state_directory",
                "is empty",
                Some("give a directory, e.g. /var/lib/townlink"),
            );
            PathBuf::new()
        }
        Some(p) => base.join(p),
        None => PathBuf::from(DEFAULT_STATE_DIRECTORY),
    };
    let metrics = metrics(&mut c, raw.metrics.as_ref());
    let checks = checks(&mut c, raw.check.as_deref().unwrap_or_default());

    let role = match is_hub {
        Some(true) => {
            for (key, present) in [
                ("name", raw.name.is_some()),
                ("lan", raw.lan.is_some()),
                ("hub", raw.hub.is_some()),
                ("uplink", raw.uplink.is_some()),
                ("failover", raw.failover.is_some()),
            ] {
                if present {
                    c.push(
                        key,
                        "is an annex setting, not valid with role = \"hub\"",
                        Some("remove it, or set role = \"annex\""),
                    );
                }
            }
            hub(&mut c, &raw, &facts, base).map(Role::Hub)
        }
        Some(false) => {
            for (key, present) in [
                ("site", raw.site.is_some()),
                ("enrollment", raw.enrollment.is_some()),
                ("follow", raw.follow.is_some()),
                ("follower", raw.follower.is_some()),
            ] {
                if !present {
                    continue;
                }
                c.push(
                    key,
                    "is a hub setting, not valid with role = \"annex\"",
                    Some("remove it, or set role = \"hub\""),
                );
            }
            annex(&mut c, &raw, &facts, &routing).map(Role::Annex)
        }
        None => None,
    };

    match (tunnel, probe, role) {
        (Some(tunnel), Some(probe), Some(role)) if c.problems.is_empty() => Ok(Config {
            tunnel,
            routing,
            probe,
            control,
            metrics,
            checks,
            state_directory,
            role,
        }),
        _ => {
            debug_assert!(!c.problems.is_empty());
            Err(c.problems)
        }
    }
}

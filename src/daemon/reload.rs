//! `systemctl reload` (SIGHUP): re-read the config and apply, without
//! touching the tunnel, what can change live:
//! - `[[check]]` (the checks restart),
//! - `[failover]` and the probe rates of `[probe]` (annex),
//! - `[[site]]` and `[enrollment]` (hub; changed sites are removed and
//!   added again, the others keep their sessions).
//!
//! Everything else (tunnel, routing, role, name, LAN, hubs, uplinks,
//! certificates, control socket, metrics address, probe timeout) is
//! reported as taking effect at the next restart. A config that fails the
//! check is refused whole, and the running one kept.

use std::path::Path;

use super::{start_checks, Running};
use crate::config::{Config, Role};
use crate::probe::tls::Identity;

/// Keys whose change needs a restart, by comparing old and new (and the
/// probe certificates they name, loaded).
fn needs_restart(
    (old, old_identity): (&Config, &Identity),
    (new, new_identity): (&Config, &Identity),
) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let (ot, nt) = (&old.tunnel, &new.tunnel);
    let mut check = |changed: bool, key: &'static str| {
        if changed {
            keys.push(key);
        }
    };
    check(ot.interface != nt.interface, "tunnel.interface");
    check(
        ot.private_key.public_key() != nt.private_key.public_key(),
        "tunnel.private_key_file",
    );
    check(ot.address != nt.address, "tunnel.address");
    check(ot.listen_port != nt.listen_port, "tunnel.listen_port");
    check(ot.mtu != nt.mtu, "tunnel.mtu");
    check(ot.threads != nt.threads, "tunnel.threads");
    check(old.routing != new.routing, "routing");
    check(
        old_identity.fingerprint() != new_identity.fingerprint(),
        "probe.certificate_file",
    );
    check(
        old.probe.listen_port != new.probe.listen_port,
        "probe.listen_port",
    );
    check(old.probe.timeout != new.probe.timeout, "probe.timeout");
    check(old.control != new.control, "control");
    check(old.metrics != new.metrics, "metrics");
    check(
        old.state_directory != new.state_directory,
        "state_directory",
    );
    match (&old.role, &new.role) {
        (Role::Annex(a), Role::Annex(b)) => {
            check(a.name != b.name, "name");
            check(a.lan != b.lan, "lan");
            check(a.hubs != b.hubs, "hub");
            check(a.uplinks != b.uplinks, "uplink");
        }
        (Role::Hub(a), Role::Hub(b)) => {
            check(a.follow != b.follow, "follow");
            check(a.followers != b.followers, "follower");
        }
        _ => check(true, "role"),
    }
    keys
}

/// Applies the config at `path`; returns the STATUS line for systemd.
pub(super) async fn reload(path: &Path, current: &mut Config, running: &mut Running) -> String {
    tracing::info!(config = %path.display(), "reloading the config");
    let (new, new_identity) = match super::load(path) {
        Ok(loaded) => loaded,
        Err(e) => {
            let problems: Vec<String> = e.problems.iter().map(|p| p.to_string()).collect();
            tracing::error!(
                config = %path.display(),
                problems = %problems.join("; "),
                "reload refused: the config has problems; the running config is kept"
            );
            return format!(
                "reload refused ({} problem(s) in {}); {}",
                problems.len(),
                path.display(),
                running.telemetry.status_line()
            );
        }
    };
    let restart = needs_restart((current, &running.identity), (&new, &new_identity));
    if restart.contains(&"role") {
        tracing::error!("reload refused: the role changed; restart townlink to change it");
        return format!(
            "reload refused (role changed); {}",
            running.telemetry.status_line()
        );
    }
    let mut applied: Vec<String> = Vec::new();
    if current.checks != new.checks {
        running.checks.cancel();
        running.checks = running.stop.child_token();
        running.telemetry.set_checks(&new.checks);
        start_checks(&new, running);
        applied.push(format!("{} check(s)", new.checks.len()));
    }
    if let (Role::Annex(a), Role::Annex(b)) = (&current.role, &new.role) {
        let probe_changed = current.probe.interval != new.probe.interval
            || current.probe.standby_interval != new.probe.standby_interval
            || current.probe.metered_interval != new.probe.metered_interval;
        if a.failover != b.failover || probe_changed {
            if let Some(tx) = &running.failover_settings {
                tx.send_replace((b.failover, new.probe.clone()));
                applied.push("failover and probe rates".into());
            }
        }
    }
    let mut refused = None;
    if let (Role::Hub(_), Role::Hub(h)) = (&current.role, &new.role) {
        if let Some(sites) = &running.hub_sites {
            match sites.reload(h.sites.clone(), h.enrollment.clone()).await {
                Ok(changes) => applied.extend(changes),
                Err(e) => {
                    tracing::error!(error = %e, "reload: the sites were not changed");
                    refused = Some(e);
                }
            }
        }
    }
    if !restart.is_empty() {
        tracing::warn!(
            keys = %restart.join(", "),
            "reload: these changes take effect at the next restart (systemctl restart townlink)"
        );
    }
    tracing::info!(
        applied = %if applied.is_empty() { "nothing".to_string() } else { applied.join(", ") },
        "reload applied"
    );
    // What the running daemon now follows: the new config, except the
    // parts that need a restart and a refused site change.
    let mut kept = new;
    if refused.is_some() {
        if let (Role::Hub(old), Role::Hub(h)) = (&current.role, &mut kept.role) {
            h.sites = old.sites.clone();
        }
    }
    if !restart.is_empty() {
        kept.tunnel = current.tunnel.clone();
        kept.routing = current.routing;
        kept.control = current.control.clone();
        kept.metrics = current.metrics;
        kept.state_directory = current.state_directory.clone();
        kept.probe.certificate_file = current.probe.certificate_file.clone();
        kept.probe.key_file = current.probe.key_file.clone();
        kept.probe.listen_port = current.probe.listen_port;
        kept.probe.timeout = current.probe.timeout;
        if let (Role::Hub(old), Role::Hub(h)) = (&current.role, &mut kept.role) {
            h.follow = old.follow.clone();
            h.followers = old.followers.clone();
        }
        if let (Role::Annex(old), Role::Annex(a)) = (&current.role, &mut kept.role) {
            a.name = old.name.clone();
            a.lan = old.lan.clone();
            a.hubs = old.hubs.clone();
            a.uplinks = old.uplinks.clone();
        }
    }
    *current = kept;
    let mut status = running.telemetry.status_line();
    if !restart.is_empty() {
        status.push_str(&format!("; restart pending for {}", restart.join(", ")));
    }
    status
}

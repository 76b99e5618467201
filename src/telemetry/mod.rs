//! What the daemon knows about itself, for `/metrics` and `townlink status`.
//!
//! One [`Telemetry`] per daemon, shared by every task: the failover task
//! writes uplink qualities and switches, the probers and the responder
//! count bytes and connections, the [`collector`] copies kernel and tunnel
//! counters every second, the checks write their results. `/metrics`
//! ([`http`]) encodes the registry; the control socket serves
//! [`Telemetry::snapshot`].

mod annex;
pub mod collector;
pub mod http;
mod hub;
pub mod metrics;
pub mod status;
mod sync;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;

use crate::config::{Config, Role};
use crate::decision::Health;
use crate::sites::SiteSource;
use crate::tunnel::PeerStatus;
use metrics::*;
use status::*;

/// Unix time in seconds, as metrics and status show points in time.
pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub fn now() -> f64 {
    unix(SystemTime::now())
}

/// A Unix time in seconds as RFC 3339 (UTC), for messages.
pub fn stamp(unix_seconds: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_seconds)).to_string()
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Sets a counter to a value read elsewhere (a kernel or tunnel counter).
/// A smaller value means the source was reset (peer re-added, interface
/// recreated): the counter starts again from it, which Prometheus' `rate()`
/// handles as a counter reset.
fn set_counter(c: &prometheus_client::metrics::counter::Counter, v: u64) {
    c.inner().store(v, std::sync::atomic::Ordering::Relaxed);
}

pub struct Telemetry {
    metrics: Metrics,
    registry: Registry,
    status: Mutex<Status>,
    /// An annex's number of uplinks: path (h, u) is `status.paths[h * uplinks + u]`.
    uplinks: usize,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

fn uplink(name: &str) -> UplinkLabels {
    UplinkLabels {
        uplink: name.to_string(),
    }
}

fn path(hub: &str, uplink: &str) -> PathLabels {
    PathLabels {
        uplink: uplink.to_string(),
        hub: hub.to_string(),
    }
}

fn path_state(l: &PathLabels, state: &str) -> PathStateLabels {
    PathStateLabels {
        uplink: l.uplink.clone(),
        hub: l.hub.clone(),
        state: state.to_string(),
    }
}

/// The labels of a path's view (`Status::paths`).
fn path_of(v: &UplinkView) -> PathLabels {
    path(v.hub.as_deref().unwrap_or_default(), &v.name)
}

fn peer(name: &str) -> PeerLabels {
    PeerLabels {
        peer: name.to_string(),
    }
}

impl Telemetry {
    /// Creates every series the config already determines.
    pub fn new(config: &Config) -> Arc<Telemetry> {
        let m = Metrics::default();
        let t = &config.tunnel;
        let mut status = Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: now(),
            tunnel: TunnelView {
                interface: t.interface.to_string(),
                address: t.address.to_string(),
                listen_port: t.listen_port,
                peers: Vec::new(),
            },
            ..Status::default()
        };
        m.last_failover.set(0.0);
        let mut uplinks = 0;
        let role = match &config.role {
            Role::Annex(annex) => {
                status.name = Some(annex.name.to_string());
                let (active, _) = annex.preferred_uplink();
                let (active_hub, _) = annex.preferred_hub();
                uplinks = annex.uplinks.len();
                for (i, u) in annex.uplinks.iter().enumerate() {
                    let l = uplink(u.name.as_str());
                    m.uplink_preferred
                        .get_or_create(&l)
                        .set((i == active) as i64);
                    m.uplink_metered.get_or_create(&l).set(u.metered as i64);
                    if let Some(budget) = u.probe_budget {
                        m.uplink_probe_budget.get_or_create(&l).set(budget as f64);
                        m.uplink_probe_budget_available
                            .get_or_create(&l)
                            .set(budget as f64 * crate::probe::budget::BURST_SHARE);
                        m.uplink_probe_budget_limited.get_or_create(&l).set(0);
                    }
                    let _ = m.uplink_receive.get_or_create(&l);
                    let _ = m.uplink_transmit.get_or_create(&l);
                }
                for (h, hub) in annex.hubs.iter().enumerate() {
                    m.hub_preferred
                        .get_or_create(&HubLabels {
                            hub: hub.name.to_string(),
                        })
                        .set((h == active_hub) as i64);
                    status.hubs.push(HubView {
                        name: hub.name.to_string(),
                        interface: hub.interface.to_string(),
                        active: h == active_hub,
                        preferred: h == active_hub,
                    });
                    for (i, u) in annex.uplinks.iter().enumerate() {
                        let l = path(hub.name.as_str(), u.name.as_str());
                        let here = h == active_hub && i == active;
                        m.uplink_up.get_or_create(&l).set(0);
                        m.uplink_active.get_or_create(&l).set(here as i64);
                        for s in STATES {
                            m.uplink_state
                                .get_or_create(&path_state(&l, s.as_str()))
                                .set((s == Health::Unknown) as i64);
                        }
                        for s in PROBE_CONNECTION_STATES {
                            m.uplink_probe_connection
                                .get_or_create(&path_state(&l, s))
                                .set((s == "connecting") as i64);
                        }
                        m.uplink_rtt.get_or_create(&l).set(f64::NAN);
                        m.uplink_jitter.get_or_create(&l).set(0.0);
                        m.uplink_loss.get_or_create(&l).set(f64::NAN);
                        m.uplink_late.get_or_create(&l).set(f64::NAN);
                        m.uplink_holddown
                            .get_or_create(&l)
                            .set(seconds(annex.failover.holddown));
                        m.uplink_penalty.get_or_create(&l).set(0.0);
                        for f in [
                            &m.uplink_probe_sent,
                            &m.uplink_probe_received,
                            &m.uplink_state_changes,
                        ] {
                            let _ = f.get_or_create(&l);
                        }
                        status.paths.push(UplinkView {
                            name: u.name.to_string(),
                            hub: Some(hub.name.to_string()),
                            interface: u.interface.to_string(),
                            metered: u.metered,
                            probe: "connecting".into(),
                            state: Health::Unknown,
                            active: here,
                            holddown_s: seconds(annex.failover.holddown),
                            ..UplinkView::default()
                        });
                    }
                }
                // Every switch between two paths, by every reason class.
                for from in &status.paths {
                    for to in &status.paths {
                        if from.name == to.name && from.hub == to.hub {
                            continue;
                        }
                        for r in REASONS {
                            let _ = m.failovers.get_or_create(&FailoverLabels {
                                from: from.name.clone(),
                                to: to.name.clone(),
                                reason: r.as_str().into(),
                                from_hub: from.hub.clone().unwrap_or_default(),
                                to_hub: to.hub.clone().unwrap_or_default(),
                            });
                        }
                    }
                }
                status.show_active_hub(uplinks);
                for h in &annex.hubs {
                    let _ = m.peer_last_handshake.get_or_create(&peer(h.name.as_str()));
                    let _ = m.peer_receive.get_or_create(&peer(h.name.as_str()));
                    let _ = m.peer_transmit.get_or_create(&peer(h.name.as_str()));
                    status.tunnel.peers.push(PeerView {
                        name: h.name.to_string(),
                        ..PeerView::default()
                    });
                }
                RouterRole::Annex
            }
            Role::Hub(hub) => {
                for r in ["authenticated", "refused", "limited", "timed_out"] {
                    let _ = m
                        .responder_connections
                        .get_or_create(&ResultLabels { result: r.into() });
                }
                for cause in crate::probe::guard::CAUSES {
                    let _ = m.responder_dropped_datagrams.get_or_create(&CauseLabels {
                        cause: cause.into(),
                    });
                }
                status.responder = Some(ResponderView::default());
                m.sync_following.set(hub.follow.is_some() as i64);
                m.sync_connected.set(0);
                m.sync_last_snapshot.set(0.0);
                status.follow = hub.follow.as_ref().map(|f| FollowView {
                    main: f.main.to_string(),
                    endpoint: f.endpoint.to_string(),
                    ..FollowView::default()
                });
                for r in ["joined", "refused"] {
                    let _ = m
                        .enrollments
                        .get_or_create(&ResultLabels { result: r.into() });
                }
                for s in hub.sites.iter() {
                    Self::site_series(&m, s.name.as_str());
                    status.sites.push(SiteView {
                        name: s.name.to_string(),
                        source: SiteSource::Config,
                        address: s.address.to_string(),
                        peer: PeerView {
                            name: s.name.to_string(),
                            ..PeerView::default()
                        },
                        report: None,
                        attachment: AttachmentView::default(),
                    });
                }
                RouterRole::Hub
            }
        };
        status.role = role;
        for c in &config.checks {
            let l = CheckLabels {
                check: c.name.to_string(),
            };
            m.check_up.get_or_create(&l).set(0);
            m.check_latency.get_or_create(&l).set(f64::NAN);
            status.checks.push(CheckView {
                name: c.name.to_string(),
                target: c.tcp.to_string(),
                ..CheckView::default()
            });
        }
        for cause in METRICS_DROP_CAUSES {
            let _ = m.metrics_dropped_connections.get_or_create(&CauseLabels {
                cause: cause.into(),
            });
        }
        let _ = m.connection_panics("metrics");
        if role == RouterRole::Hub {
            let _ = m.connection_panics("responder");
        }
        let registry = m.registry(role);
        Arc::new(Telemetry {
            metrics: m,
            registry,
            status: Mutex::new(status),
            uplinks,
        })
    }

    fn status(&self) -> MutexGuard<'_, Status> {
        // A panic elsewhere while holding the lock leaves plain data; keep serving it.
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The OpenMetrics text of every series.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }

    /// The status, with the counters of this instant.
    pub fn snapshot(&self) -> Status {
        let mut s = self.status().clone();
        let m = &self.metrics;
        let hubs: Vec<String> = s.hubs.iter().map(|h| h.name.clone()).collect();
        for u in &mut s.uplinks {
            // What the uplink spends on probing: every hub's prober over it.
            let over = |f: &prometheus_client::metrics::family::Family<
                PathLabels,
                prometheus_client::metrics::counter::Counter,
            >| {
                hubs.iter()
                    .map(|h| f.get_or_create(&path(h, &u.name)).get())
                    .sum::<u64>()
            };
            u.probe_sent_bytes = over(&m.uplink_probe_sent);
            u.probe_received_bytes = over(&m.uplink_probe_received);
        }
        for u in &mut s.paths {
            let p = path_of(u);
            u.probe_sent_bytes = m.uplink_probe_sent.get_or_create(&p).get();
            u.probe_received_bytes = m.uplink_probe_received.get_or_create(&p).get();
        }
        for u in s.paths.iter_mut().chain(s.uplinks.iter_mut()) {
            let p = path_of(u);
            u.state_changes = m.uplink_state_changes.get_or_create(&p).get();
            let l = uplink(&u.name);
            u.rx_bytes = m.uplink_receive.get_or_create(&l).get();
            u.tx_bytes = m.uplink_transmit.get_or_create(&l).get();
            u.budget = m.uplink_probe_budget.get(&l).map(|b| BudgetView {
                budget_bytes: b.get() as u64,
                available_bytes: m
                    .uplink_probe_budget_available
                    .get_or_create(&l)
                    .get()
                    .max(0.0) as u64,
                limited: m.uplink_probe_budget_limited.get_or_create(&l).get() == 1,
            });
        }
        if let Some(r) = &mut s.responder {
            let c = |r: &str| {
                m.responder_connections
                    .get_or_create(&ResultLabels { result: r.into() })
                    .get()
            };
            r.authenticated = c("authenticated");
            r.refused = c("refused");
            r.garbage = m.responder_garbage.get();
            r.echoed = m.responder_echoes.get();
        }
        s
    }

    /// One line for `systemctl status` (changes only with states, not with
    /// every RTT): the active uplink and each uplink's state, the checks;
    /// on the hub, the sites with a recent handshake.
    pub fn status_line(&self) -> String {
        let s = self.status();
        let mut parts = Vec::new();
        if s.role == RouterRole::Hub {
            let now = now();
            let connected = s
                .sites
                .iter()
                .filter(|v| {
                    v.peer
                        .last_handshake
                        .is_some_and(|h| now - h < crate::sites::info::CONNECTED_S)
                })
                .count();
            parts.push(format!(
                "hub: {} sites, {connected} with a handshake in the last 3 min",
                s.sites.len()
            ));
        } else {
            // With several hubs, every path ("main/fiber up").
            let (views, active) = if s.hubs.len() > 1 {
                let active = match (&s.active_hub, &s.active) {
                    (Some(h), Some(u)) => format!("{h}/{u}"),
                    _ => "-".into(),
                };
                (&s.paths, active)
            } else {
                (&s.uplinks, s.active.clone().unwrap_or_else(|| "-".into()))
            };
            let uplinks: Vec<String> = views
                .iter()
                .map(|u| match (&u.hub, s.hubs.len() > 1) {
                    (Some(h), true) => format!("{h}/{} {}", u.name, u.state.as_str()),
                    _ => format!("{} {}", u.name, u.state.as_str()),
                })
                .collect();
            parts.push(format!("tunnel on {active} ({})", uplinks.join(", ")));
            if let Some(p) = &s.probing {
                parts.push(p.clone());
            }
        }
        if !s.checks.is_empty() {
            let ok = s.checks.iter().filter(|c| c.up == Some(true)).count();
            parts.push(format!("checks {ok}/{} ok", s.checks.len()));
        }
        parts.join("; ")
    }

    /// The tunnel's view of a peer named `name` (the hub, or a site).
    pub fn peer(&self, name: &str, p: &PeerStatus) {
        let m = &self.metrics;
        let l = peer(name);
        set_counter(&m.peer_receive.get_or_create(&l), p.rx_bytes);
        set_counter(&m.peer_transmit.get_or_create(&l), p.tx_bytes);
        let handshake = p.last_handshake.map(unix);
        m.peer_last_handshake
            .get_or_create(&l)
            .set(handshake.unwrap_or(0.0));
        let view = PeerView {
            name: name.to_string(),
            endpoint: p.endpoint.map(|e| e.to_string()),
            last_handshake: handshake,
            rx_bytes: p.rx_bytes,
            tx_bytes: p.tx_bytes,
        };
        let mut s = self.status();
        if let Some(v) = s.tunnel.peers.iter_mut().find(|v| v.name == name) {
            *v = view;
        } else if let Some(site) = s.sites.iter_mut().find(|v| v.name == name) {
            site.peer = view;
        }
    }

    /// A reloaded list of checks: series of removed checks go, new ones start at 0.
    pub fn set_checks(&self, checks: &[crate::config::CheckConfig]) {
        let m = &self.metrics;
        let mut s = self.status();
        for old in &s.checks {
            if !checks.iter().any(|c| c.name.as_str() == old.name) {
                let l = CheckLabels {
                    check: old.name.clone(),
                };
                m.check_up.remove(&l);
                m.check_latency.remove(&l);
            }
        }
        let mut views = Vec::new();
        for c in checks {
            let l = CheckLabels {
                check: c.name.to_string(),
            };
            let kept = s
                .checks
                .iter()
                .find(|v| v.name == c.name.as_str() && v.target == c.tcp.to_string())
                .cloned();
            if kept.is_none() {
                m.check_up.get_or_create(&l).set(0);
                m.check_latency.get_or_create(&l).set(f64::NAN);
            }
            views.push(kept.unwrap_or(CheckView {
                name: c.name.to_string(),
                target: c.tcp.to_string(),
                ..CheckView::default()
            }));
        }
        s.checks = views;
    }

    /// The result of one run of check `name`: the latency, or why it failed.
    pub fn check(&self, name: &str, result: Result<Duration, String>) {
        let m = &self.metrics;
        let l = CheckLabels {
            check: name.to_string(),
        };
        m.check_up.get_or_create(&l).set(result.is_ok() as i64);
        if let Ok(d) = &result {
            m.check_latency.get_or_create(&l).set(seconds(*d));
        }
        let mut s = self.status();
        if let Some(c) = s.checks.iter_mut().find(|c| c.name == name) {
            c.at = Some(now());
            c.up = Some(result.is_ok());
            match result {
                Ok(d) => {
                    c.latency_ms = Some(ms(d));
                    c.error = None;
                }
                Err(e) => c.error = Some(e),
            }
        }
    }
}

#[cfg(test)]
mod tests;

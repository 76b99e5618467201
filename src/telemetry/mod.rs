//! What the daemon knows about itself, for `/metrics` and `townlink status`.
//!
//! One [`Telemetry`] per daemon, shared by every task: the failover task
//! writes uplink qualities and switches, the probers and the responder
//! count bytes and connections, the [`collector`] copies kernel and tunnel
//! counters every second, the checks write their results. `/metrics`
//! ([`http`]) encodes the registry; the control socket serves
//! [`Telemetry::snapshot`].

pub mod collector;
pub mod http;
pub mod metrics;
pub mod status;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;

use crate::config::{Config, Role};
use crate::decision::{Decision, Health, Quality, StateChange};
use crate::probe::budget::BudgetGauges;
use crate::probe::prober::{Connection, ProbeCounters};
use crate::probe::responder::{self, ResponderCounters};
use crate::probe::wire::{self, Report};
use crate::sites::{Name, SiteSource};
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
        let role = match &config.role {
            Role::Annex(annex) => {
                status.name = Some(annex.name.to_string());
                let (active, _) = annex.preferred_uplink();
                for (i, u) in annex.uplinks.iter().enumerate() {
                    let l = uplink(u.name.as_str());
                    m.uplink_up.get_or_create(&l).set(0);
                    m.uplink_preferred
                        .get_or_create(&l)
                        .set((i == active) as i64);
                    m.uplink_metered.get_or_create(&l).set(u.metered as i64);
                    m.uplink_active.get_or_create(&l).set((i == active) as i64);
                    for s in STATES {
                        m.uplink_state
                            .get_or_create(&UplinkStateLabels {
                                uplink: l.uplink.clone(),
                                state: s.as_str().into(),
                            })
                            .set((s == Health::Unknown) as i64);
                    }
                    for s in PROBE_CONNECTION_STATES {
                        m.uplink_probe_connection
                            .get_or_create(&UplinkStateLabels {
                                uplink: l.uplink.clone(),
                                state: s.into(),
                            })
                            .set((s == "connecting") as i64);
                    }
                    if let Some(budget) = u.probe_budget {
                        m.uplink_probe_budget.get_or_create(&l).set(budget as f64);
                        m.uplink_probe_budget_available
                            .get_or_create(&l)
                            .set(budget as f64 * crate::probe::budget::BURST_SHARE);
                        m.uplink_probe_budget_limited.get_or_create(&l).set(0);
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
                        &m.uplink_receive,
                        &m.uplink_transmit,
                    ] {
                        let _ = f.get_or_create(&l);
                    }
                    for (j, to) in annex.uplinks.iter().enumerate() {
                        if i == j {
                            continue;
                        }
                        for r in REASONS {
                            let _ = m.failovers.get_or_create(&FailoverLabels {
                                from: u.name.to_string(),
                                to: to.name.to_string(),
                                reason: r.as_str().into(),
                            });
                        }
                    }
                    status.uplinks.push(UplinkView {
                        name: u.name.to_string(),
                        interface: u.interface.to_string(),
                        metered: u.metered,
                        probe: "connecting".into(),
                        state: Health::Unknown,
                        active: i == active,
                        holddown_s: seconds(annex.failover.holddown),
                        ..UplinkView::default()
                    });
                }
                status.active = Some(annex.uplinks[active].name.to_string());
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
        })
    }

    /// A panic while serving one connection of `listener` (metrics,
    /// responder): logged and counted; the listener goes on. Such a panic
    /// is a bug, but a remote client must not be able to stop the whole
    /// router with it (see `docs/systemd.md`).
    pub fn connection_panicked(
        &self,
        listener: &str,
        remote: std::net::SocketAddr,
        panic: &(dyn std::any::Any + Send),
    ) {
        let message = if let Some(s) = panic.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = panic.downcast_ref::<String>() {
            s.clone()
        } else {
            "(no message)".to_string()
        };
        self.metrics.connection_panics(listener).inc();
        tracing::error!(
            listener,
            %remote,
            panic = %message,
            "a connection panicked: it was closed, the listener goes on (a bug: please report it)"
        );
    }

    /// The result of an enrollment attempt.
    pub fn enrollment(&self, joined: bool) {
        let result = if joined { "joined" } else { "refused" };
        self.metrics
            .enrollments
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    /// A site the hub added at run time (enrollment, or at start from the registry).
    pub fn add_site(&self, name: &str, address: std::net::IpAddr, source: SiteSource) {
        Self::site_series(&self.metrics, name);
        let mut s = self.status();
        if !s.sites.iter().any(|v| v.name == name) {
            s.sites.push(SiteView {
                name: name.to_string(),
                source,
                address: address.to_string(),
                peer: PeerView {
                    name: name.to_string(),
                    ..PeerView::default()
                },
                report: None,
            });
            s.sites.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }

    /// A site the hub removed: its series go too.
    pub fn remove_site(&self, name: &str) {
        let m = &self.metrics;
        m.peer_last_handshake.remove(&peer(name));
        m.peer_receive.remove(&peer(name));
        m.peer_transmit.remove(&peer(name));
        m.site_report.remove(&SiteLabels {
            site: name.to_string(),
        });
        let mut s = self.status();
        if let Some(i) = s.sites.iter().position(|v| v.name == name) {
            let view = s.sites.remove(i);
            for u in view.report.iter().flat_map(|r| &r.uplinks) {
                Self::remove_site_uplink(m, name, &u.name);
            }
        }
    }

    fn site_series(m: &Metrics, site: &str) {
        let _ = m.peer_last_handshake.get_or_create(&peer(site));
        let _ = m.peer_receive.get_or_create(&peer(site));
        let _ = m.peer_transmit.get_or_create(&peer(site));
        let _ = m.site_report.get_or_create(&SiteLabels {
            site: site.to_string(),
        });
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
        for u in &mut s.uplinks {
            let l = uplink(&u.name);
            u.state_changes = m.uplink_state_changes.get_or_create(&l).get();
            u.probe_sent_bytes = m.uplink_probe_sent.get_or_create(&l).get();
            u.probe_received_bytes = m.uplink_probe_received.get_or_create(&l).get();
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
            let uplinks: Vec<String> = s
                .uplinks
                .iter()
                .map(|u| format!("{} {}", u.name, u.state.as_str()))
                .collect();
            parts.push(format!(
                "tunnel on {} ({})",
                s.active.as_deref().unwrap_or("-"),
                uplinks.join(", ")
            ));
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

    /// The byte counters of uplink `name`'s prober.
    pub fn probe_counters(&self, name: &str) -> ProbeCounters {
        let l = uplink(name);
        ProbeCounters {
            sent_bytes: self.metrics.uplink_probe_sent.get_or_create_owned(&l),
            received_bytes: self.metrics.uplink_probe_received.get_or_create_owned(&l),
        }
    }

    /// The gauges of uplink `name`'s probe budget.
    pub fn probe_budget(&self, name: &str) -> BudgetGauges {
        let l = uplink(name);
        let m = &self.metrics;
        BudgetGauges {
            budget: m.uplink_probe_budget.get_or_create_owned(&l),
            available: m.uplink_probe_budget_available.get_or_create_owned(&l),
            limited: m.uplink_probe_budget_limited.get_or_create_owned(&l),
        }
    }

    /// How every prober's connection fares, and what the annex can no
    /// longer measure because of it ("probe responder unreachable",
    /// "refused by the hub: ..."), if anything.
    pub fn probing(&self, connections: &[Connection], problem: Option<String>) {
        let m = &self.metrics;
        let mut s = self.status();
        for (u, c) in s.uplinks.iter_mut().zip(connections) {
            if u.probe == c.as_str() {
                continue;
            }
            u.probe = c.as_str().into();
            for st in PROBE_CONNECTION_STATES {
                m.uplink_probe_connection
                    .get_or_create(&UplinkStateLabels {
                        uplink: u.name.clone(),
                        state: st.into(),
                    })
                    .set((st == c.as_str()) as i64);
            }
        }
        s.probing = problem;
    }

    pub fn responder_counters(&self) -> ResponderCounters {
        let m = &self.metrics;
        let r = |r: &str| {
            m.responder_connections
                .get_or_create_owned(&ResultLabels { result: r.into() })
        };
        let dropped = |cause: &str| {
            m.responder_dropped_datagrams
                .get_or_create_owned(&CauseLabels {
                    cause: cause.into(),
                })
        };
        ResponderCounters {
            authenticated: r("authenticated"),
            refused: r("refused"),
            limited: r("limited"),
            timed_out: r("timed_out"),
            garbage: m.responder_garbage.clone(),
            echoed: m.responder_echoes.clone(),
            handshakes: m.responder_handshakes.clone(),
            open: m.responder_open_connections.clone(),
            guard: std::sync::Arc::new(crate::probe::guard::GuardCounters {
                malformed: dropped("malformed"),
                unsupported_version: dropped("unsupported_version"),
                short_initial: dropped("short_initial"),
                rate_limited: dropped("rate_limited"),
                socket_buffer: dropped("socket_buffer"),
                retries: m.responder_retries.clone(),
            }),
        }
    }

    /// The engine's view of every uplink, after each event.
    pub fn uplinks(&self, qualities: &[Quality], active: usize) {
        let m = &self.metrics;
        let mut s = self.status();
        for (i, (u, q)) in s.uplinks.iter_mut().zip(qualities).enumerate() {
            let l = uplink(&u.name);
            m.uplink_up
                .get_or_create(&l)
                .set((q.health == Health::Up) as i64);
            m.uplink_active.get_or_create(&l).set((i == active) as i64);
            for st in STATES {
                m.uplink_state
                    .get_or_create(&UplinkStateLabels {
                        uplink: u.name.clone(),
                        state: st.as_str().into(),
                    })
                    .set((st == q.health) as i64);
            }
            m.uplink_rtt
                .get_or_create(&l)
                .set(q.rtt.map_or(f64::NAN, seconds));
            m.uplink_jitter.get_or_create(&l).set(seconds(q.jitter));
            m.uplink_loss
                .get_or_create(&l)
                .set(q.loss.unwrap_or(f64::NAN));
            m.uplink_late
                .get_or_create(&l)
                .set(q.late.unwrap_or(f64::NAN));
            m.uplink_holddown.get_or_create(&l).set(seconds(q.holddown));
            m.uplink_penalty.get_or_create(&l).set(q.penalty);
            u.state = q.health;
            u.active = i == active;
            u.rtt_ms = q.rtt.map(ms);
            u.jitter_ms = ms(q.jitter);
            u.loss = q.loss;
            u.late = q.late;
            u.holddown_s = seconds(q.holddown);
            u.penalty = q.penalty;
        }
        s.active = s.uplinks.get(active).map(|u| u.name.clone());
    }

    pub fn state_change(&self, c: &StateChange) {
        let mut s = self.status();
        if let Some(u) = s.uplinks.get_mut(c.uplink) {
            u.reason = Some(c.reason.clone());
            self.metrics
                .uplink_state_changes
                .get_or_create(&uplink(&u.name))
                .inc();
        }
    }

    /// A switch the kernel took.
    pub fn failover(&self, d: &Decision) {
        let at = now();
        let mut s = self.status();
        let name = |i: usize| s.uplinks.get(i).map(|u| u.name.clone()).unwrap_or_default();
        let (from, to) = (name(d.from), name(d.to));
        self.metrics
            .failovers
            .get_or_create(&FailoverLabels {
                from: from.clone(),
                to: to.clone(),
                reason: d.class.as_str().into(),
            })
            .inc();
        self.metrics.last_failover.set(at);
        s.failovers += 1;
        s.last_failover = Some(FailoverView {
            at,
            from,
            to,
            class: d.class.as_str().into(),
            reason: d.reason.clone(),
        });
    }

    /// What an annex sends the hub: its active uplink and their qualities.
    pub fn report(&self) -> Report {
        let s = self.status();
        Report {
            active: s.active.clone().unwrap_or_default(),
            uplinks: s
                .uplinks
                .iter()
                .map(|u| wire::Uplink {
                    name: u.name.clone(),
                    state: u.state.as_str().into(),
                    rtt_ms: u.rtt_ms,
                    loss: u.loss,
                })
                .collect(),
        }
    }

    /// The kernel counters of uplink `i`'s interface.
    pub fn uplink_bytes(&self, name: &str, rx: u64, tx: u64) {
        let l = uplink(name);
        set_counter(&self.metrics.uplink_receive.get_or_create(&l), rx);
        set_counter(&self.metrics.uplink_transmit.get_or_create(&l), tx);
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

    /// A report from the annex of `site` (authenticated by its certificate).
    /// Series of uplinks the site no longer reports are removed.
    pub fn site_report(&self, site: &Name, report: Report) {
        let m = &self.metrics;
        let at = now();
        let mut s = self.status();
        let Some(view) = s.sites.iter_mut().find(|v| v.name == site.as_str()) else {
            return;
        };
        let before = view.report.as_ref().map(|r| r.active.as_str());
        if before != Some(report.active.as_str()) {
            tracing::info!(
                site = %site,
                from = before.unwrap_or("-"),
                to = %report.active,
                "site reports its tunnel on another uplink"
            );
        }
        if let Some(old) = &view.report {
            for u in &old.uplinks {
                if !report.uplinks.iter().any(|n| n.name == u.name) {
                    Self::remove_site_uplink(m, site.as_str(), &u.name);
                }
            }
        }
        for u in &report.uplinks {
            let l = SiteUplinkLabels {
                site: site.to_string(),
                uplink: u.name.clone(),
            };
            m.site_uplink_active
                .get_or_create(&l)
                .set((u.name == report.active) as i64);
            m.site_uplink_up
                .get_or_create(&l)
                .set((u.state == Health::Up.as_str()) as i64);
            m.site_uplink_rtt
                .get_or_create(&l)
                .set(u.rtt_ms.map_or(f64::NAN, |v| v / 1000.0));
            m.site_uplink_loss
                .get_or_create(&l)
                .set(u.loss.unwrap_or(f64::NAN));
        }
        m.site_report
            .get_or_create(&SiteLabels {
                site: site.to_string(),
            })
            .set(at);
        view.report = Some(SiteReportView {
            at,
            active: report.active,
            uplinks: report
                .uplinks
                .into_iter()
                .map(|u| ReportedUplink {
                    name: u.name,
                    state: u.state,
                    rtt_ms: u.rtt_ms,
                    loss: u.loss,
                })
                .collect(),
        });
    }

    fn remove_site_uplink(m: &Metrics, site: &str, uplink: &str) {
        let l = SiteUplinkLabels {
            site: site.to_string(),
            uplink: uplink.to_string(),
        };
        m.site_uplink_active.remove(&l);
        m.site_uplink_up.remove(&l);
        m.site_uplink_rtt.remove(&l);
        m.site_uplink_loss.remove(&l);
    }
}

/// The responder's reports and panics go to the metrics and the status view.
impl responder::Events for Telemetry {
    fn site_report(&self, site: &Name, report: Report) {
        Telemetry::site_report(self, site, report)
    }

    fn connection_panicked(
        &self,
        remote: std::net::SocketAddr,
        panic: &(dyn std::any::Any + Send),
    ) {
        Telemetry::connection_panicked(self, "responder", remote, panic)
    }
}

#[cfg(test)]
mod tests;

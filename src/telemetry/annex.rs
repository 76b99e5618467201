//! The annex's side of telemetry: its paths (each hub over each uplink)
//! and uplinks as the failover task, the probers and the collector see
//! them, and the report it sends the hub (its active path and the
//! qualities of every path).

use super::metrics::*;
use super::status::*;
use super::{ms, now, path, path_of, path_state, seconds, set_counter, uplink, Telemetry};
use crate::decision::{Decision, Health, PathId, Quality, StateChange};
use crate::probe::budget::BudgetGauges;
use crate::probe::prober::{Connection, ProbeCounters};
use crate::probe::wire::{self, Report};

impl Telemetry {
    /// The index of path `p` in `Status::paths`.
    fn index(&self, p: PathId) -> usize {
        p.hub * self.uplinks + p.uplink
    }

    /// The byte counters of the prober of hub `hub` over uplink `name`.
    pub fn probe_counters(&self, hub: &str, name: &str) -> ProbeCounters {
        let l = path(hub, name);
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

    /// How every prober's connection fares (one per path, hub by hub),
    /// and what the annex can no longer measure because of it ("probe
    /// responder unreachable", "refused by the hub: ..."), if anything.
    pub fn probing(&self, connections: &[Connection], problem: Option<String>) {
        let m = &self.metrics;
        let mut s = self.status();
        for (u, c) in s.paths.iter_mut().zip(connections) {
            if u.probe == c.as_str() {
                continue;
            }
            u.probe = c.as_str().into();
            let l = path_of(u);
            for st in PROBE_CONNECTION_STATES {
                m.uplink_probe_connection
                    .get_or_create(&path_state(&l, st))
                    .set((st == c.as_str()) as i64);
            }
        }
        s.probing = problem;
        s.show_active_hub(self.uplinks);
    }

    /// The engine's view of every path (hub by hub, as
    /// [`crate::decision::Engine::paths`] lists them), after each event.
    pub fn paths(&self, qualities: &[Quality], active: PathId) {
        let m = &self.metrics;
        let mut s = self.status();
        let active = self.index(active);
        for (i, (u, q)) in s.paths.iter_mut().zip(qualities).enumerate() {
            let l = path_of(u);
            m.uplink_up
                .get_or_create(&l)
                .set((q.health == Health::Up) as i64);
            m.uplink_active.get_or_create(&l).set((i == active) as i64);
            for st in STATES {
                m.uplink_state
                    .get_or_create(&path_state(&l, st.as_str()))
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
        let hub = active / self.uplinks.max(1);
        for (h, v) in s.hubs.iter_mut().enumerate() {
            v.active = h == hub;
        }
        s.show_active_hub(self.uplinks);
    }

    pub fn state_change(&self, c: &StateChange) {
        let i = self.index(c.path);
        let mut s = self.status();
        if let Some(u) = s.paths.get_mut(i) {
            u.reason = Some(c.reason.clone());
            self.metrics
                .uplink_state_changes
                .get_or_create(&path_of(u))
                .inc();
        }
        s.show_active_hub(self.uplinks);
    }

    /// A switch the kernel took.
    pub fn failover(&self, d: &Decision) {
        let at = now();
        let (from, to) = (self.index(d.from), self.index(d.to));
        let mut s = self.status();
        let name = |i: usize| {
            s.paths
                .get(i)
                .map(|u| (u.name.clone(), u.hub.clone().unwrap_or_default()))
                .unwrap_or_default()
        };
        let ((from, from_hub), (to, to_hub)) = (name(from), name(to));
        self.metrics
            .failovers
            .get_or_create(&FailoverLabels {
                from: from.clone(),
                to: to.clone(),
                reason: d.class.as_str().into(),
                from_hub: from_hub.clone(),
                to_hub: to_hub.clone(),
            })
            .inc();
        self.metrics.last_failover.set(at);
        s.failovers += 1;
        s.last_failover = Some(FailoverView {
            at,
            from,
            to,
            from_hub: Some(from_hub),
            to_hub: Some(to_hub),
            class: d.class.as_str().into(),
            reason: d.reason.clone(),
        });
    }

    /// What an annex sends the hub: its active path (hub and uplink), the
    /// uplinks as seen through the active hub, and with several hubs
    /// every path.
    pub fn report(&self) -> Report {
        let s = self.status();
        let wire = |u: &UplinkView| wire::Uplink {
            name: u.name.clone(),
            hub: None,
            state: u.state.as_str().into(),
            rtt_ms: u.rtt_ms,
            loss: u.loss,
        };
        Report {
            active: s.active.clone().unwrap_or_default(),
            hub: s.active_hub.clone(),
            uplinks: s.uplinks.iter().map(wire).collect(),
            paths: if s.hubs.len() > 1 {
                s.paths
                    .iter()
                    .map(|u| wire::Uplink {
                        hub: u.hub.clone(),
                        ..wire(u)
                    })
                    .collect()
            } else {
                Vec::new()
            },
            ..Report::default()
        }
    }

    /// The kernel counters of uplink `i`'s interface.
    pub fn uplink_bytes(&self, name: &str, rx: u64, tx: u64) {
        let l = uplink(name);
        set_counter(&self.metrics.uplink_receive.get_or_create(&l), rx);
        set_counter(&self.metrics.uplink_transmit.get_or_create(&l), tx);
    }
}

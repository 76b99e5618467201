//! The annex's side of telemetry: its uplinks as the failover task, the
//! probers and the collector see them, and the report it sends the hub
//! (its active uplink and their qualities).

use super::metrics::*;
use super::status::*;
use super::{ms, now, seconds, set_counter, uplink, Telemetry};
use crate::decision::{Decision, Health, Quality, StateChange};
use crate::probe::budget::BudgetGauges;
use crate::probe::prober::{Connection, ProbeCounters};
use crate::probe::wire::{self, Report};

impl Telemetry {
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
        if let Some(u) = s.uplinks.get_mut(c.path.uplink) {
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
        let (from, to) = (name(d.from.uplink), name(d.to.uplink));
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
}

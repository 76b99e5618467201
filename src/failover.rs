//! Applies the decision engine's choices on an annex.
//!
//! Feeds the probers' samples and a regular tick to the [`Engine`]; on a
//! decision, replaces the default route of the tunnel's table (one netlink
//! message) and pushes traffic through the tunnel at once, so that the hub
//! learns the new endpoint (WireGuard roaming; the annex never changes the
//! peer's endpoint). Also sets each prober's rate: fast where the engine
//! wants it (the active uplink, all of them while the active one is not
//! up, a preferred one being judged for its return), slow on a standby
//! one, slower still on a metered one.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{ProbeConfig, RoutingConfig};
use crate::decision::{Decision, Engine, Policy, Sample};
use crate::netlink::Netlink;
use crate::probe::prober::Outgoing;
use crate::routing::{self, NextHop};
use crate::telemetry::Telemetry;
use crate::tunnel;

/// How often time alone is given to the engine (hold-downs, sustained SLA violations).
const TICK: Duration = Duration::from_millis(50);
/// How often the annex reports to the hub when nothing changes.
pub const REPORT_PERIOD: Duration = Duration::from_secs(5);
/// How often RTT and loss reach the telemetry when no state changes
/// (samples arrive 10-30 times a second; scrapes come every few seconds).
const TELEMETRY_PERIOD: Duration = Duration::from_millis(250);

/// When the engine's view was last published.
struct Published {
    telemetry: Instant,
    report: Instant,
}

/// What the failover task needs besides the engine.
pub struct Failover {
    pub net: Netlink,
    pub routing: RoutingConfig,
    pub hops: Vec<NextHop>,
    pub names: Vec<String>,
    pub metered: Vec<bool>,
    pub ipv6: bool,
    /// The hub's tunnel address: where traffic is pushed after a switch.
    pub hub_address: IpAddr,
    pub probe: ProbeConfig,
    /// One per uplink: the interval its prober uses.
    pub intervals: Vec<watch::Sender<Duration>>,
    pub telemetry: std::sync::Arc<Telemetry>,
    /// The report for the hub, and the prober that carries it.
    pub reports: watch::Sender<Outgoing>,
    /// Reloaded `[failover]` and `[probe]` settings.
    pub settings: watch::Receiver<(Policy, ProbeConfig)>,
}

impl Failover {
    fn set_rates(&self, engine: &Engine) {
        for (i, tx) in self.intervals.iter().enumerate() {
            // Fast: the active uplink, all while it is not up, and a
            // preferred uplink being judged for its return (the engine says).
            let interval = if engine.wants_fast_probes(i) {
                self.probe.interval
            } else if self.metered[i] {
                self.probe.metered_interval
            } else {
                self.probe.standby_interval
            };
            tx.send_if_modified(|current| {
                let changed = *current != interval;
                *current = interval;
                changed
            });
        }
    }

    /// Publishes the engine's view: to the telemetry at a change, else at
    /// most every [`TELEMETRY_PERIOD`]; the hub's report at a change, else
    /// every [`REPORT_PERIOD`].
    fn publish(&self, engine: &Engine, now: bool, last: &mut Published) {
        if !now && last.telemetry.elapsed() < TELEMETRY_PERIOD {
            return;
        }
        last.telemetry = Instant::now();
        let qualities: Vec<_> = (0..self.names.len()).map(|i| engine.quality(i)).collect();
        self.telemetry.uplinks(&qualities, engine.active());
        let last_report = &mut last.report;
        if now || last_report.elapsed() >= REPORT_PERIOD {
            *last_report = Instant::now();
            let datagram = self.telemetry.report().encode().map(bytes::Bytes::from);
            if datagram.is_none() {
                tracing::debug!("the report for the hub is too large: not sent");
            }
            self.reports.send_replace(Outgoing {
                uplink: engine.active(),
                datagram,
            });
        }
    }

    /// Points the tunnel's table at uplink `to`; true when the kernel took it.
    async fn route_to(&self, to: usize) -> bool {
        let route = routing::tunnel_uplink_route(&self.routing, &self.hops[to], self.ipv6);
        match self.net.replace_route(&route).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(uplink = %self.names[to], error = %e, "cannot switch the tunnel's route; will retry");
                false
            }
        }
    }

    async fn apply(&self, d: &Decision) -> bool {
        let started = Instant::now();
        let ok = self.route_to(d.to).await;
        if ok {
            tunnel::push_traffic(self.hub_address);
        }
        tracing::warn!(
            from = %self.names[d.from],
            to = %self.names[d.to],
            class = d.class.as_str(),
            reason = %d.reason,
            switch_ms = started.elapsed().as_secs_f64() * 1000.0,
            applied = ok,
            "failover"
        );
        ok
    }

    /// Runs until `stop` (or until every prober is gone).
    pub async fn run(
        mut self,
        mut engine: Engine,
        mut samples: mpsc::Receiver<Sample>,
        clock: Instant,
        stop: CancellationToken,
    ) {
        let mut routed = engine.active();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.set_rates(&engine);
        let mut last = Published {
            telemetry: Instant::now(),
            report: Instant::now(),
        };
        self.publish(&engine, true, &mut last);
        loop {
            let decision = tokio::select! {
                _ = stop.cancelled() => return,
                Ok(()) = self.settings.changed() => {
                    let (policy, probe) = self.settings.borrow_and_update().clone();
                    engine.set_policy(policy);
                    self.probe = probe;
                    tracing::info!("failover and probe settings reloaded");
                    engine.tick(clock.elapsed())
                }
                s = samples.recv() => match s {
                    Some(s) => engine.observe(clock.elapsed(), s),
                    None => return,
                },
                _ = tick.tick() => engine.tick(clock.elapsed()),
            };
            let changes = engine.take_changes();
            for c in &changes {
                self.telemetry.state_change(c);
                tracing::info!(
                    uplink = %self.names[c.uplink],
                    from = c.from.as_str(),
                    to = c.to.as_str(),
                    reason = %c.reason,
                    "uplink state"
                );
            }
            let changed = !changes.is_empty() || decision.is_some();
            if let Some(d) = decision {
                if self.apply(&d).await {
                    routed = d.to;
                    self.telemetry.failover(&d);
                }
            } else if routed != engine.active() && self.route_to(engine.active()).await {
                // An earlier switch failed in the kernel: retried on every event.
                routed = engine.active();
                tunnel::push_traffic(self.hub_address);
                tracing::info!(uplink = %self.names[routed], "tunnel route switched on retry");
            }
            self.set_rates(&engine);
            self.publish(&engine, changed, &mut last);
        }
    }
}

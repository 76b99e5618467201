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
//!
//! Two things the engine cannot see are handled here:
//! - a prober that stops reporting ([`Silence`]): its uplink is fed lost
//!   probes, so that it goes down by the usual rule, with a reason that
//!   says the prober is silent;
//! - probes that cannot measure anything ([`Probing`]): the hub's probe
//!   responder unreachable on every uplink while the tunnel's handshake is
//!   fresh (a firewall dropping UDP 51821), or the hub refusing this
//!   annex. Then the uplinks are shown unmeasured rather than down, the
//!   tunnel stays where it is (no uplink answers, so the engine moves
//!   nothing) and no uplink is probed fast for it (`docs/failover.md`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{ProbeConfig, RoutingConfig};
use crate::decision::{
    Decision, Engine, Health, Outcome, PathId, Policy, Quality, Sample, Standby, Time,
};
use crate::netlink::Netlink;
use crate::probe::budget::Budget;
use crate::probe::prober::{Connection, Refusal, ReportForHub};
use crate::probe::wire::Report;
use crate::routing::{self, NextHop, RouteSpec};
use crate::telemetry::Telemetry;
use crate::tunnel;

/// How often time alone is given to the engine (hold-downs, sustained SLA violations).
const TICK: Duration = Duration::from_millis(50);
/// How often the annex reports to the hub when nothing changes.
pub const REPORT_PERIOD: Duration = Duration::from_secs(5);
/// How often RTT and loss reach the telemetry when no state changes
/// (samples arrive 10-30 times a second; scrapes come every few seconds).
const TELEMETRY_PERIOD: Duration = Duration::from_millis(250);
/// A WireGuard handshake younger than this means the tunnel works
/// (WireGuard's REJECT_AFTER_TIME is 180 s; rekeying starts at 120 s).
pub const HANDSHAKE_FRESH: Duration = Duration::from_secs(135);
/// A prober is silent when no sample came for three of its intervals,
/// plus the probe timeout, plus this.
const SILENCE_SLACK: Duration = Duration::from_secs(1);

/// Failed attempts in a row on every uplink before the responder counts
/// as unreachable: a hub that starts (or restarts) at the same time as
/// the annex is not one (the 4G's third attempt ends ~9 s after start).
pub const UNREACHABLE_AFTER: u32 = 3;

/// When the engine's view was last published.
struct Published {
    telemetry: Instant,
    report: Instant,
    /// The active hub of the last report.
    hub: usize,
}

/// The path to a hub other than the active one that a report would take:
/// the uplink its tunnel uses ([`Engine::tunnel_uplink`]), whether that
/// path is up, and whether that uplink is metered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StandbyPath {
    uplink: usize,
    up: bool,
    metered: bool,
}

/// The uplink whose prober sends the report to hub `h`, if that hub gets
/// it now. Every hub must know whether it is the annex's active hub (its
/// table 116, `docs/backup-site.md`):
/// - the active hub: over the active path, at every report (a new active
///   hub at once, since a switch is published at once);
/// - another hub: over the path its tunnel uses, when that path is up,
///   at every report if its uplink is not metered; over a metered uplink
///   only at a switch of hub (`switched`), once: never periodically over
///   the 4G (its bill);
/// - the hub just `left`: once, over its tunnel's path whatever its state
///   (a path down by its SLA may still carry it), so that it stops
///   counting the annex as attached at once.
fn report_over(h: usize, active: PathId, left: Option<usize>, path: StandbyPath) -> Option<usize> {
    let switched = left.is_some();
    if h == active.hub {
        Some(active.uplink)
    } else if left == Some(h) || (path.up && (switched || !path.metered)) {
        Some(path.uplink)
    } else {
        None
    }
}

/// What the probes as a whole can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probing {
    /// Some prober is connected (or still on its first attempt).
    Measuring,
    /// No prober reaches the hub's probe responder.
    ResponderUnreachable,
    /// The hub refuses this annex's probes.
    Refused(Refusal),
}

impl Probing {
    /// From every prober's connection.
    pub fn of(connections: &[Connection]) -> Probing {
        if connections.contains(&Connection::Up) {
            return Probing::Measuring;
        }
        if let Some(r) = connections.iter().find_map(|c| match c {
            Connection::Refused(r) => Some(*r),
            _ => None,
        }) {
            return Probing::Refused(r);
        }
        if !connections.is_empty()
            && connections.iter().all(|c| {
                matches!(c, Connection::Unreachable { failures } if *failures >= UNREACHABLE_AFTER)
            })
        {
            return Probing::ResponderUnreachable;
        }
        Probing::Measuring
    }

    /// The words of status and logs; `None` while measuring.
    pub fn problem(self) -> Option<String> {
        match self {
            Probing::Measuring => None,
            Probing::ResponderUnreachable => Some("probe responder unreachable".into()),
            Probing::Refused(r) => Some(format!("refused by the hub: {}", r.as_str())),
        }
    }

    /// Probing cannot tell anything about the uplinks, and probing faster
    /// would not help: the hub refuses us, or its responder is unreachable
    /// everywhere while the tunnel itself works.
    pub fn calm(self, handshake_fresh: bool) -> bool {
        match self {
            Probing::Measuring => false,
            Probing::ResponderUnreachable => handshake_fresh,
            Probing::Refused(_) => true,
        }
    }
}

/// Notices a prober that stopped reporting (a hung or ended task, a bug):
/// no sample for three of its intervals plus the timeout (plus
/// [`SILENCE_SLACK`]). Its uplink is then fed one lost probe per interval.
#[derive(Debug, Clone)]
pub struct Silence {
    uplinks: Vec<Heard>,
    /// The path of each watched prober (by default prober `i` is uplink
    /// `i` of the only hub).
    paths: Vec<PathId>,
}

#[derive(Debug, Clone, Copy)]
struct Heard {
    /// When the last sample came (or the watch started).
    last: Time,
    /// The interval in force at the last sample.
    interval: Duration,
    /// Silent since, and when the next lost probe is due.
    silent: Option<(Time, Time)>,
}

impl Silence {
    pub fn new(intervals: &[Duration], now: Time) -> Silence {
        Silence {
            uplinks: intervals
                .iter()
                .map(|i| Heard {
                    last: now,
                    interval: *i,
                    silent: None,
                })
                .collect(),
            paths: (0..intervals.len()).map(|i| PathId::new(0, i)).collect(),
        }
    }

    /// The same, prober `i` being the probe stream of `paths[i]`.
    pub fn for_paths(paths: Vec<PathId>, intervals: &[Duration], now: Time) -> Silence {
        Silence {
            paths,
            ..Silence::new(intervals, now)
        }
    }

    /// A sample of prober `i` came; returns how long it had been silent.
    pub fn heard(&mut self, i: usize, now: Time, interval: Duration) -> Option<Duration> {
        let h = self.uplinks.get_mut(i)?;
        h.last = now;
        h.interval = interval;
        h.silent.take().map(|(since, _)| now.saturating_sub(since))
    }

    /// Since when uplink `i` is silent, if it is.
    pub fn silent_since(&self, i: usize) -> Option<Time> {
        self.uplinks.get(i)?.silent.map(|(since, _)| since)
    }

    /// The lost probes due at `now` for silent probers. `intervals[i]` is
    /// the longest time uplink `i`'s prober may now take between probes;
    /// the returned flag is true for an uplink that just fell silent.
    pub fn due(
        &mut self,
        now: Time,
        intervals: &[Duration],
        timeout: Duration,
    ) -> Vec<(Sample, bool)> {
        let mut out = Vec::new();
        for (i, (h, current)) in self.uplinks.iter_mut().zip(intervals).enumerate() {
            // A rate just lowered still has its old probe on the way.
            let every = h.interval.max(*current);
            let path = self.paths.get(i).copied().unwrap_or(PathId::new(0, i));
            let lost = |at: Time| Sample {
                path,
                sent: at.saturating_sub(timeout),
                outcome: Outcome::Lost,
            };
            match h.silent {
                None => {
                    let limit = every * 3 + timeout + SILENCE_SLACK;
                    if now.saturating_sub(h.last) >= limit {
                        h.silent = Some((h.last, now + every));
                        out.push((lost(now), true));
                    }
                }
                Some((since, next)) if now >= next => {
                    h.silent = Some((since, now + every));
                    out.push((lost(now), false));
                }
                Some(_) => {}
            }
        }
        out
    }
}

/// What the failover task needs besides the engine. Probers are indexed
/// by path, hub by hub as [`Engine::paths`] lists them: path (h, u) is
/// `h * uplinks + u`.
pub struct Failover {
    pub net: Netlink,
    pub routing: RoutingConfig,
    /// One per uplink.
    pub hops: Vec<NextHop>,
    /// One per uplink: its name.
    pub names: Vec<String>,
    /// One per uplink.
    pub metered: Vec<bool>,
    pub ipv6: bool,
    /// One per hub: its tunnel address, where traffic is pushed after a switch.
    pub hub_addresses: Vec<IpAddr>,
    /// One per hub: the main table's routes while that hub is active
    /// (`routing::hub_routes_via`); replaced at a switch of hub.
    pub hub_routes: Vec<Vec<RouteSpec>>,
    pub probe: ProbeConfig,
    /// One per path: the interval its prober uses.
    pub intervals: Vec<watch::Sender<Duration>>,
    pub telemetry: std::sync::Arc<Telemetry>,
    /// One per hub: the report for that hub, and the prober that carries
    /// it (the active path's, and the standby hubs': [`report_over`]).
    pub reports: Vec<watch::Sender<ReportForHub>>,
    /// Reloaded `[failover]` and `[probe]` settings.
    pub settings: watch::Receiver<(Policy, ProbeConfig)>,
    /// One per path: how its prober's connection fares.
    pub connections: Vec<watch::Receiver<Connection>>,
    /// One per uplink: its probe budget, if it has one (shared by its paths).
    pub budgets: Vec<Option<Arc<Budget>>>,
    /// One per hub: the last WireGuard handshake with it (from its
    /// handshake keeper).
    pub handshake: Vec<watch::Receiver<Option<SystemTime>>>,
}

/// Where the kernel's routes point, as far as the kernel took them.
struct Routed {
    /// The hub whose device has the main table's routes.
    hub: usize,
    /// Per hub: the uplink its device's table routes through.
    tables: Vec<usize>,
}

impl Failover {
    fn index(&self, p: PathId) -> usize {
        p.hub * self.names.len() + p.uplink
    }

    fn set_rates(&self, engine: &Engine) {
        // Not for trouble that faster probing cannot solve (see `Probing::calm`).
        let calm = self.calm(engine.active().hub);
        for p in engine.paths() {
            let Some(tx) = self.intervals.get(self.index(p)) else {
                continue;
            };
            let interval = interval(engine, p, calm, &self.probe);
            tx.send_if_modified(|current| {
                let changed = *current != interval;
                *current = interval;
                changed
            });
        }
    }

    fn connections(&self) -> Vec<Connection> {
        self.connections.iter().map(|c| *c.borrow()).collect()
    }

    fn handshake_fresh(&self, hub: usize) -> bool {
        self.handshake
            .get(hub)
            .and_then(|h| *h.borrow())
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < HANDSHAKE_FRESH)
    }

    fn calm(&self, hub: usize) -> bool {
        Probing::of(&self.connections()).calm(self.handshake_fresh(hub))
    }

    /// The longest time each prober may now take between two samples.
    fn expected_intervals(&self) -> Vec<Duration> {
        let n = self.names.len().max(1);
        self.intervals
            .iter()
            .enumerate()
            .map(|(i, tx)| {
                let every = *tx.borrow();
                match self.budgets.get(i % n).and_then(|b| b.as_ref()) {
                    // A probe delayed by the budget may wait a few exchanges' refill.
                    Some(b) if b.limited() => every.max(b.pacing() * 4),
                    _ => every,
                }
            })
            .collect()
    }

    /// Publishes the engine's view: to the telemetry at a change, else at
    /// most every [`TELEMETRY_PERIOD`]; the hub's report at a change, else
    /// every [`REPORT_PERIOD`].
    fn publish(&self, engine: &Engine, now: bool, last: &mut Published) {
        if !now && last.telemetry.elapsed() < TELEMETRY_PERIOD {
            return;
        }
        last.telemetry = Instant::now();
        let connections = self.connections();
        let probing = Probing::of(&connections);
        let active = engine.active();
        let qualities: Vec<Quality> = engine
            .paths()
            .map(|p| {
                let q = shown(engine.quality(p), engine.policy().sla.min_samples);
                let c = connections
                    .get(self.index(p))
                    .copied()
                    .unwrap_or(Connection::Connecting);
                unmeasured(q, probing, c)
            })
            .collect();
        self.telemetry.paths(&qualities, active);
        self.telemetry.probing(&connections, probing.problem());
        let last_report = &mut last.report;
        if now || last_report.elapsed() >= REPORT_PERIOD {
            *last_report = Instant::now();
            let report = self.telemetry.report();
            let several = self.reports.len() > 1;
            let left = (last.hub != active.hub).then_some(last.hub);
            // The active path's probe interval, as the prober is (or is
            // about to be) told: the active hub's freshness window.
            let every = interval(engine, active, self.calm(active.hub), &self.probe);
            let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
            last.hub = active.hub;
            for (h, reports) in self.reports.iter().enumerate() {
                let uplink = engine.tunnel_uplink(h);
                let path = StandbyPath {
                    uplink,
                    up: engine.quality(PathId::new(h, uplink)).health == Health::Up,
                    metered: self.metered.get(uplink).copied().unwrap_or(true),
                };
                let out = match report_over(h, active, left, path) {
                    Some(uplink) => {
                        // Each hub is told whether it is the active one
                        // (with one hub, a report without paths says it).
                        let datagram = Report {
                            here: several.then_some(h == active.hub),
                            every_ms: Some(every_ms),
                            ..report.clone()
                        }
                        .encode_fitting()
                        .map(bytes::Bytes::from);
                        if datagram.is_none() {
                            tracing::debug!(
                                hub = h,
                                "the report for the hub is too large: not sent"
                            );
                        }
                        ReportForHub { uplink, datagram }
                    }
                    None => ReportForHub {
                        uplink: active.uplink,
                        datagram: None,
                    },
                };
                reports.send_replace(out);
            }
        }
    }

    /// Points hub `hub`'s table at uplink `to`; true when the kernel took it.
    async fn route_to(&self, hub: usize, to: usize) -> bool {
        let route = routing::tunnel_uplink_route(&self.routing, hub, &self.hops[to], self.ipv6);
        match self.net.replace_route(&route).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(uplink = %self.names[to], hub, error = %e, "cannot switch the tunnel's route; will retry");
                false
            }
        }
    }

    /// Moves the main table's routes to hub `hub`'s device; true when the
    /// kernel took every one.
    async fn routes_to_hub(&self, hub: usize) -> bool {
        let mut ok = true;
        for route in self.hub_routes.get(hub).into_iter().flatten() {
            if let Err(e) = self.net.replace_route(route).await {
                tracing::error!(destination = %route.destination, interface = %route.interface, error = %e, "cannot move a route to the hub's tunnel device; will retry");
                ok = false;
            }
        }
        ok
    }

    /// Brings the kernel's routes where the engine wants them: each hub's
    /// table via its tunnel's uplink (the active path's for the active
    /// hub, [`Engine::tunnel_uplink`] for the others), the main table's
    /// routes on the active hub's device; traffic pushed to each hub whose
    /// route moved (WireGuard roaming). Returns whether everything is in
    /// place, and what moved.
    async fn reconcile(&self, engine: &Engine, routed: &mut Routed) -> (bool, Vec<String>) {
        let active = engine.active();
        let mut ok = true;
        let mut moved = Vec::new();
        for h in 0..routed.tables.len() {
            let want = if h == active.hub {
                active.uplink
            } else {
                engine.tunnel_uplink(h)
            };
            if routed.tables[h] == want {
                continue;
            }
            if self.route_to(h, want).await {
                routed.tables[h] = want;
                moved.push(format!("hub {h} over {}", self.names[want]));
                if h != active.hub || routed.hub == active.hub {
                    tunnel::push_traffic(self.hub_addresses[h]);
                }
            } else {
                ok = false;
            }
        }
        if routed.hub != active.hub {
            if self.routes_to_hub(active.hub).await {
                routed.hub = active.hub;
                moved.push(format!("routes to hub {}", active.hub));
                tunnel::push_traffic(self.hub_addresses[active.hub]);
            } else {
                ok = false;
            }
        }
        (ok, moved)
    }

    fn log_switch(engine: &Engine, d: &Decision, started: Instant, ok: bool) {
        tracing::warn!(
            from = %engine.name(d.from),
            to = %engine.name(d.to),
            class = d.class.as_str(),
            reason = %d.reason,
            // Two decimals: the raw float printed 0.23725100000000002.
            switch_ms = %format_args!("{:.2}", started.elapsed().as_secs_f64() * 1000.0),
            applied = ok,
            "failover"
        );
    }

    /// Runs until `stop` (or until every prober is gone).
    pub async fn run(
        mut self,
        mut engine: Engine,
        mut samples: mpsc::Receiver<Sample>,
        clock: Instant,
        stop: CancellationToken,
    ) {
        let start = engine.active();
        let mut routed = Routed {
            hub: start.hub,
            tables: (0..engine.hubs())
                .map(|h| engine.tunnel_uplink(h))
                .collect(),
        };
        let path_names: Vec<String> = engine.paths().map(|p| engine.name(p).to_string()).collect();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.set_rates(&engine);
        let mut silence = Silence::for_paths(
            engine.paths().collect(),
            &self.expected_intervals(),
            clock.elapsed(),
        );
        let mut last = Published {
            telemetry: Instant::now(),
            report: Instant::now(),
            hub: start.hub,
        };
        let mut probing = Probing::Measuring;
        self.publish(&engine, true, &mut last);
        loop {
            let mut decisions = Vec::new();
            tokio::select! {
                _ = stop.cancelled() => return,
                Ok(()) = self.settings.changed() => {
                    let (policy, probe) = self.settings.borrow_and_update().clone();
                    engine.set_policy(policy);
                    self.probe = probe;
                    tracing::info!("failover and probe settings reloaded");
                    decisions.extend(engine.tick(clock.elapsed()));
                }
                s = samples.recv() => match s {
                    Some(s) => {
                        let now = clock.elapsed();
                        let i = self.index(s.path);
                        let every = self.intervals.get(i).map_or(Duration::ZERO, |tx| *tx.borrow());
                        if let Some(silent) = silence.heard(i, now, every) {
                            tracing::info!(uplink = %path_names.get(i).map_or("?", |n| n.as_str()), silent_s = silent.as_secs_f64(), "the uplink's prober reports again");
                        }
                        decisions.extend(engine.observe(now, s));
                    }
                    None => return,
                },
                _ = tick.tick() => {
                    let now = clock.elapsed();
                    decisions.extend(engine.tick(now));
                    for (lost, new) in silence.due(now, &self.expected_intervals(), self.probe.timeout) {
                        if new {
                            tracing::error!(uplink = %engine.name(lost.path), "the uplink's prober sent no probe result for several intervals: its probes count as lost until it reports again");
                        }
                        decisions.extend(engine.observe(now, lost));
                    }
                }
            };
            let now = clock.elapsed();
            let mut changes = engine.take_changes();
            let connections = self.connections();
            for c in &mut changes {
                c.reason = explain(
                    &c.reason,
                    self.index(c.path),
                    c.to == Health::Down,
                    &path_names,
                    &silence,
                    &connections,
                    now,
                );
                self.telemetry.state_change(c);
                tracing::info!(
                    uplink = %engine.name(c.path),
                    from = c.from.as_str(),
                    to = c.to.as_str(),
                    reason = %c.reason,
                    "uplink state"
                );
            }
            let now_probing = Probing::of(&connections);
            let probing_changed = now_probing != probing;
            if probing_changed {
                self.log_probing(probing, now_probing, engine.active().hub);
                probing = now_probing;
            }
            let changed = !changes.is_empty() || !decisions.is_empty() || probing_changed;
            for d in &mut decisions {
                if d.class == crate::decision::ReasonClass::Dead {
                    d.reason = explain(
                        &d.reason,
                        self.index(d.from),
                        true,
                        &path_names,
                        &silence,
                        &connections,
                        now,
                    );
                }
                let started = Instant::now();
                let (ok, _) = self.reconcile(&engine, &mut routed).await;
                Self::log_switch(&engine, d, started, ok);
                if ok {
                    self.telemetry.failover(d);
                }
            }
            if decisions.is_empty() {
                // An earlier switch the kernel refused, retried on every
                // event; or a standby hub's tunnel following its best uplink.
                let (_, moved) = self.reconcile(&engine, &mut routed).await;
                if !moved.is_empty() {
                    tracing::info!(moved = ?moved, "tunnel routes switched");
                }
            }
            self.set_rates(&engine);
            self.publish(&engine, changed, &mut last);
        }
    }

    fn log_probing(&self, before: Probing, now: Probing, hub: usize) {
        let fresh = self.handshake_fresh(hub);
        match now {
            Probing::Measuring => {
                tracing::info!(was = ?before.problem(), "probes measure the uplinks again");
            }
            Probing::ResponderUnreachable => tracing::warn!(
                handshake_fresh = fresh,
                "probe responder unreachable on every uplink (a firewall dropping UDP to the hub's probe port, 51821 by default?); {}",
                if fresh {
                    "the tunnel's handshake is fresh, so the tunnel works: it stays where it is, and no uplink is probed fast for this"
                } else {
                    "and the tunnel has no fresh handshake either: the hub itself may be unreachable"
                }
            ),
            Probing::Refused(r) => tracing::warn!(
                reason = r.as_str(),
                handshake_fresh = fresh,
                "refused by the hub: {}; the uplinks cannot be measured, and probes retry every few minutes",
                r.as_str()
            ),
        }
    }
}

/// The probe interval of path `p`. Fast: the active path, all while it is
/// not up, a preferred path being judged for its return, the other hubs
/// over the active uplink while it loses probes (the engine says); only
/// the active one while probing cannot measure (`calm`). Else its standby
/// rate: a metered standby uplink's paths each every `metered_interval` ×
/// the number of hubs, so that it costs what one hub cost.
fn interval(engine: &Engine, p: PathId, calm: bool, probe: &ProbeConfig) -> Duration {
    if engine.wants_fast_probes(p) && (p == engine.active() || !calm) {
        probe.interval
    } else {
        match engine.standby(p) {
            Standby::Regular => probe.standby_interval,
            Standby::Metered { hubs } => probe.metered_interval * hubs.max(1),
        }
    }
}

/// An uplink's quality as shown: the loss and late ratios only once the
/// window holds `min_samples` probes, as many as the engine needs to
/// judge the SLA. Before that a ratio means little (one lost probe of
/// three right after start is "33.3 %"): status says "measuring", the
/// metrics NaN.
fn shown(mut q: Quality, min_samples: usize) -> Quality {
    if q.samples < min_samples.max(1) {
        q.loss = None;
        q.late = None;
    }
    q
}

/// An uplink's quality as shown: while probes cannot measure (responder
/// unreachable, refused), an uplink without a connection is unknown, not
/// "down at 100 % loss".
fn unmeasured(mut q: Quality, probing: Probing, connection: Connection) -> Quality {
    if probing != Probing::Measuring && connection != Connection::Up {
        q.health = Health::Unknown;
        q.rtt = None;
        q.loss = None;
        q.late = None;
        q.jitter = Duration::ZERO;
    }
    q
}

/// The reason of a state change (or a switch) of uplink `i`, with what the
/// engine cannot know: its prober is silent, or its probes never reach the
/// responder, or the hub refuses them.
fn explain(
    reason: &str,
    i: usize,
    down: bool,
    names: &[String],
    silence: &Silence,
    connections: &[Connection],
    now: Time,
) -> String {
    if !down {
        return reason.to_string();
    }
    if let Some(since) = silence.silent_since(i) {
        return format!(
            "{}: prober silent for {:.1} s (no probe result): counted as lost",
            names[i],
            now.saturating_sub(since).as_secs_f64()
        );
    }
    match connections.get(i) {
        Some(Connection::Unreachable { .. }) => {
            format!("{reason} (probe responder unreachable over {})", names[i])
        }
        Some(Connection::Refused(r)) => format!("{reason} (refused by the hub: {})", r.as_str()),
        _ => reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Engine, Policy};

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_silent_prober_makes_its_uplink_down_and_says_why() {
        let names = vec!["fiber".to_string(), "lte".to_string()];
        let mut engine = Engine::new(
            Policy::default(),
            &[("hub".into(), 0)],
            &[("fiber".into(), 0, false), ("lte".into(), 1, false)],
            PathId::new(0, 0),
        );
        let intervals = [100 * MS, 100 * MS];
        let timeout = 300 * MS;
        let mut silence = Silence::new(&intervals, Duration::ZERO);
        let connections = [Connection::Up, Connection::Up];
        let mut now = Duration::ZERO;
        let mut downs = Vec::new();
        let mut decisions = Vec::new();
        let mut fiber_silent_at = None;
        // Both answer for 8 s; then the fiber's prober stops (no sample at
        // all: not even lost ones), the 4G's goes on.
        while now < Duration::from_secs(14) {
            now += 50 * MS;
            let fiber_alive = now < Duration::from_secs(8);
            if now.as_millis() % 100 == 0 {
                for (i, alive) in [(0, fiber_alive), (1, true)] {
                    if !alive {
                        continue;
                    }
                    let s = Sample {
                        path: PathId::new(0, i),
                        sent: now - 10 * MS,
                        outcome: Outcome::Echo { rtt: 10 * MS },
                    };
                    silence.heard(i, now, intervals[i]);
                    decisions.extend(engine.observe(now, s));
                }
            }
            decisions.extend(engine.tick(now));
            for (lost, new) in silence.due(now, &intervals, timeout) {
                assert_eq!(lost.path.uplink, 0, "the 4G's prober reports");
                if new {
                    fiber_silent_at.get_or_insert(now);
                }
                decisions.extend(engine.observe(now, lost));
            }
            for c in engine.take_changes() {
                if c.to == Health::Down {
                    downs.push((
                        now,
                        explain(
                            &c.reason,
                            c.path.uplink,
                            true,
                            &names,
                            &silence,
                            &connections,
                            now,
                        ),
                    ));
                }
            }
        }
        // Silent after 3 intervals + timeout + slack (1.6 s), down 4 lost
        // probes later (0.3 s more).
        let silent_at = fiber_silent_at.expect("the silence was noticed");
        assert!(
            silent_at > Duration::from_secs(9) && silent_at < Duration::from_millis(9_700),
            "{silent_at:?}"
        );
        assert_eq!(downs.len(), 1, "{downs:?}");
        let (down_at, reason) = &downs[0];
        assert!(*down_at < Duration::from_secs(10) + 500 * MS, "{down_at:?}");
        assert!(
            reason.starts_with("fiber: prober silent for") && reason.contains("counted as lost"),
            "{reason}"
        );
        // And the tunnel left it for the 4G, which still answers.
        assert_eq!(engine.active(), PathId::new(0, 1));
        assert!(
            decisions
                .iter()
                .any(|d| d.from.uplink == 0 && d.to.uplink == 1),
            "{decisions:?}"
        );
    }

    #[test]
    fn each_path_gets_its_rate_and_a_metered_uplink_is_spread_over_the_hubs() {
        let probe = ProbeConfig {
            certificate_file: Default::default(),
            key_file: Default::default(),
            listen_port: 0,
            interval: 100 * MS,
            standby_interval: Duration::from_secs(1),
            metered_interval: Duration::from_secs(30),
            timeout: 300 * MS,
        };
        let uplinks = [("fiber".into(), 0, false), ("lte".into(), 1, true)];
        let rates = |hubs: &[(String, u32)]| {
            let mut engine = Engine::new(Policy::default(), hubs, &uplinks, PathId::new(0, 0));
            // The active path answers until it is up.
            let mut now = Duration::ZERO;
            while engine.quality(PathId::new(0, 0)).health != Health::Up {
                now += 100 * MS;
                assert!(now < Duration::from_secs(60), "the fiber never came up");
                let echo = Sample {
                    path: PathId::new(0, 0),
                    sent: now - 10 * MS,
                    outcome: Outcome::Echo { rtt: 10 * MS },
                };
                engine.observe(now, echo);
            }
            engine
                .paths()
                .map(|p| {
                    (
                        engine.name(p).to_string(),
                        interval(&engine, p, false, &probe),
                    )
                })
                .collect::<Vec<_>>()
        };
        let s = Duration::from_secs;
        // One hub: as before.
        assert_eq!(
            rates(&[("main".into(), 0)]),
            vec![("fiber".into(), 100 * MS), ("lte".into(), s(30))]
        );
        // Two hubs: the backup hub over the active fiber at the standby
        // rate; each hub over the 4G every minute (the 4G costs what one
        // hub cost).
        assert_eq!(
            rates(&[("main".into(), 0), ("backup".into(), 1)]),
            vec![
                ("main/fiber".into(), 100 * MS),
                ("main/lte".into(), s(60)),
                ("backup/fiber".into(), s(1)),
                ("backup/lte".into(), s(60)),
            ]
        );
        // Silence watches each path's prober.
        let paths = vec![PathId::new(0, 0), PathId::new(1, 0)];
        let mut silence = Silence::for_paths(paths, &[100 * MS, 100 * MS], Duration::ZERO);
        silence.heard(0, Duration::from_secs(3), 100 * MS);
        let due = silence.due(Duration::from_secs(3), &[100 * MS, 100 * MS], 300 * MS);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0.path, PathId::new(1, 0));
    }

    #[test]
    fn a_slower_rate_is_no_silence_nor_is_a_prober_that_reports() {
        let mut silence = Silence::new(&[100 * MS], Duration::ZERO);
        let timeout = 300 * MS;
        // The standby rate: one sample per 30 s is fine.
        let slow = [Duration::from_secs(30)];
        let mut now = Duration::ZERO;
        while now < Duration::from_secs(300) {
            now += Duration::from_secs(1);
            if now.as_secs() % 30 == 0 {
                assert_eq!(silence.heard(0, now, slow[0]), None);
            }
            assert!(silence.due(now, &slow, timeout).is_empty(), "at {now:?}");
        }
        // From 30 s to 100 ms: the last sample is old, but the old rate
        // still governs until the next sample.
        let fast = [100 * MS];
        now += Duration::from_secs(20);
        assert!(silence.due(now, &fast, timeout).is_empty());
        // ... and a prober that stops at the fast rate is found.
        silence.heard(0, now, fast[0]);
        now += Duration::from_secs(2);
        let due = silence.due(now, &fast, timeout);
        assert_eq!(due.len(), 1);
        assert!(due[0].1);
        assert!(silence.due(now + 50 * MS, &fast, timeout).is_empty());
        assert_eq!(silence.due(now + 100 * MS, &fast, timeout).len(), 1);
        assert_eq!(
            silence.heard(0, now + 150 * MS, fast[0]),
            Some(Duration::from_millis(2_150))
        );
    }

    #[test]
    fn the_report_goes_to_the_active_hub_and_to_standby_hubs_never_periodically_over_the_4g() {
        let on = PathId::new(1, 0);
        let path = |uplink: usize, up: bool, metered: bool| StandbyPath {
            uplink,
            up,
            metered,
        };
        let fiber_up = path(0, true, false);
        let lte_up = path(1, true, true);
        // The active hub, over the active path, whatever the other paths.
        assert_eq!(report_over(1, on, None, path(1, false, true)), Some(0));
        assert_eq!(report_over(1, on, Some(0), fiber_up), Some(0));
        // Steady on (backup, fiber): the main hub hears every report over
        // its tunnel's fiber while that path is up ...
        assert_eq!(report_over(0, on, None, fiber_up), Some(0));
        // ... nothing while it is not ...
        assert_eq!(report_over(0, on, None, path(0, false, false)), None);
        // ... and never periodically over the 4G.
        assert_eq!(report_over(0, on, None, lte_up), None);
        // At a switch of hub, every hub with an up path hears it at once,
        // over the 4G too (once: the next reports are periodic).
        assert_eq!(report_over(2, on, Some(0), lte_up), Some(1));
        assert_eq!(report_over(2, on, Some(0), fiber_up), Some(0));
        assert_eq!(report_over(2, on, Some(0), path(1, false, true)), None);
        // The hub just left hears it once over its tunnel's path, even
        // down (by its SLA, it may still carry the report).
        assert_eq!(report_over(0, on, Some(0), path(1, false, true)), Some(1));
        assert_eq!(report_over(0, on, Some(0), path(0, false, false)), Some(0));
    }

    #[test]
    fn probing_states_and_calm() {
        use Connection::*;
        let unreachable = Unreachable {
            failures: UNREACHABLE_AFTER,
        };
        let refused = Refused(Refusal::UnknownCertificate);
        // A hub starting with the annex: not unreachable after one failure.
        assert_eq!(
            Probing::of(&[Unreachable { failures: 1 }, unreachable]),
            Probing::Measuring
        );
        assert_eq!(Probing::of(&[Up, unreachable]), Probing::Measuring);
        assert_eq!(Probing::of(&[Connecting, unreachable]), Probing::Measuring);
        assert_eq!(
            Probing::of(&[unreachable, unreachable]),
            Probing::ResponderUnreachable
        );
        assert_eq!(
            Probing::of(&[refused, unreachable]),
            Probing::Refused(Refusal::UnknownCertificate)
        );
        assert_eq!(
            Probing::ResponderUnreachable.problem().as_deref(),
            Some("probe responder unreachable")
        );
        assert_eq!(
            Probing::Refused(Refusal::UnknownCertificate)
                .problem()
                .as_deref(),
            Some("refused by the hub: unknown certificate")
        );
        // Responder unreachable with a fresh handshake: no fast probing.
        assert!(Probing::ResponderUnreachable.calm(true));
        // Without one, the hub (or the active uplink) may be gone: probe fast.
        assert!(!Probing::ResponderUnreachable.calm(false));
        assert!(Probing::Refused(Refusal::Revoked).calm(false));
        assert!(!Probing::Measuring.calm(true));
    }

    #[test]
    fn ratios_are_shown_once_the_window_can_be_judged() {
        let q = Quality {
            health: Health::Up,
            rtt: Some(Duration::from_millis(1)),
            jitter: Duration::ZERO,
            loss: Some(1.0 / 3.0),
            late: Some(0.0),
            samples: 3,
            consecutive_lost: 0,
            holddown: Duration::from_secs(10),
            penalty: 0.0,
        };
        let early = shown(q, 20);
        assert_eq!(
            (early.loss, early.late),
            (None, None),
            "1 of 3 is not 33.3 %"
        );
        assert_eq!(
            early.rtt, q.rtt,
            "an RTT is a measurement from the first echo"
        );
        let judged = Quality { samples: 20, ..q };
        assert_eq!(shown(judged, 20), judged);
    }

    #[test]
    fn unmeasured_uplinks_are_unknown_not_down() {
        let down = Quality {
            health: Health::Down,
            rtt: None,
            jitter: Duration::ZERO,
            loss: Some(1.0),
            late: Some(0.0),
            samples: 40,
            consecutive_lost: 40,
            holddown: Duration::from_secs(10),
            penalty: 1.0,
        };
        let unreachable = Connection::Unreachable { failures: 2 };
        let shown = unmeasured(down, Probing::ResponderUnreachable, unreachable);
        assert_eq!(shown.health, Health::Unknown);
        assert_eq!(shown.loss, None);
        // While probes measure, a down uplink is down.
        assert_eq!(unmeasured(down, Probing::Measuring, unreachable), down);
    }
}

//! The failover decision engine: a pure state machine, fed probe outcomes
//! and time, that says which path (a hub, reached over an uplink) carries
//! the tunnel and why.
//!
//! Down fast, up slowly, for each path:
//! - a path is **down** after `down_after_lost` consecutive probes were
//!   lost (no echo at all), or after its SLA (probes not answered in time,
//!   median RTT, jitter over `window`) has been violated for `sustain`: a
//!   brownout, or congestion when the probes come back late (a queue);
//! - a down path is **recovering** once it answers again and meets its SLA,
//!   and **up** after its hold-down of continuous health, judged on the SLA
//!   over enough probes; the hold-down grows with each failure (flap
//!   damping, `damping.rs`);
//! - the active path is the up path first in the path order (`Prefer`:
//!   by uplink then hub, or by hub then uplink); with none up, the last
//!   active one is kept (and still probed);
//! - leaving a dead path needs a fresh echo of the new one; moving to
//!   another hub because the active hub answers on none of its paths is a
//!   hub failure (`hub_down`), done at once; paths passed over because
//!   they share the failure go down with it (`docs/failover.md`, rules 10
//!   to 17).
//!
//! With one hub a path is an uplink, and reasons name the uplink alone
//! ("fiber: ..."); with several they name both ("main/fiber: ...").
//!
//! One file per concern: `window.rs` (the SLA window and its judgement),
//! `damping.rs` (penalty and hold-down), `link.rs` (one path's health),
//! this file (the choice among paths).
//!
//! No I/O and no clock: time is passed in (`Time`, the time since the
//! daemon started), so every rule is tested with synthetic probe streams.

mod damping;
mod link;
mod window;

use std::fmt;
use std::time::Duration;

pub use damping::Damping;
use link::{Link, Role};

/// A point in time: the time since the daemon started.
pub type Time = Duration;

/// With no path up, how long the best answering path must have answered
/// before it takes the tunnel, so that paths coming back at the same
/// moment are compared by the path order rather than by who answered first.
pub const ALL_DOWN_SETTLE: Duration = Duration::from_millis(500);

/// An uplink that has not answered yet is not declared down before this
/// time since start: the first QUIC handshake with the hub may take a few
/// probe intervals (a loaded router, a hub starting at the same time), and
/// the standby answering first is no reason to leave the preferred uplink.
/// A preferred uplink dead at boot costs this much more before the switch.
pub const STARTUP_GRACE: Duration = Duration::from_secs(5);

/// Paths that went down within this time of each other went down
/// together: with every path of every hub down, most likely every hub (or
/// the annex's own side) was unreachable, not every uplink.
pub const TOGETHER: Duration = Duration::from_secs(2);

/// After every path went down together, the active one gets this long,
/// from the first answer of another one, to answer again before the tunnel
/// moves: a restart of the only hub does not move every annex to 4G and
/// back. Not when another hub answers: that is a hub failure, left at once.
pub const HUB_SETTLE: Duration = Duration::from_secs(5);

/// A candidate path that lost this many probes in a row, all sent after
/// the active path's first lost one, and answered none of them, is passed
/// over when the tunnel leaves a dead path: it shares the failure (the
/// same dead uplink, the same dead hub). Two, not one: a single random
/// loss does not send the tunnel to a worse path.
pub const SILENT_AFTER: u32 = 2;

/// A path: a hub reached over an uplink (indices in config order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathId {
    pub hub: usize,
    pub uplink: usize,
}

impl PathId {
    pub fn new(hub: usize, uplink: usize) -> PathId {
        PathId { hub, uplink }
    }
}

/// The order of paths, `[failover] prefer` (`docs/failover.md`, "Paths").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prefer {
    /// By uplink priority, then hub priority: a preferred hub reachable
    /// only over the 4G gives way to another hub over the fiber.
    #[default]
    Uplink,
    /// By hub priority, then uplink priority: the preferred hub at any
    /// cost (e.g. when the other site is read-only).
    Hub,
}

impl Prefer {
    pub fn as_str(self) -> &'static str {
        match self {
            Prefer::Uplink => "uplink",
            Prefer::Hub => "hub",
        }
    }

    /// From the config's words.
    pub fn parse(s: &str) -> Option<Prefer> {
        match s {
            "uplink" => Some(Prefer::Uplink),
            "hub" => Some(Prefer::Hub),
            _ => None,
        }
    }
}

/// The probe rate a path gets when it is not probed fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standby {
    /// `probe.standby_interval`: an uplink not metered, or the active
    /// uplink (its paths to the other hubs are the hub-failure candidates).
    Regular,
    /// `probe.metered_interval` × `hubs`: a metered standby uplink, whose
    /// probes are spread over the hubs so that it costs what one hub cost.
    Metered { hubs: u32 },
}

/// The thresholds of a link's service level, over a sliding window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sla {
    /// The window of probes (by send time) the SLA is measured over.
    pub window: Duration,
    /// Fewer resolved probes than this in the window: the SLA is not judged
    /// (slowly probed standby uplinks are judged by losses only).
    pub min_samples: usize,
    /// Loss ratio above which the SLA is violated (0.10 = 10 %).
    pub max_loss: f64,
    pub max_rtt: Duration,
    pub max_jitter: Duration,
    /// How long a violation must last before the uplink is declared down.
    pub sustain: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub down_after_lost: u32,
    pub sla: Sla,
    /// The hold-down after one failure (the base of the damping).
    pub holddown: Duration,
    pub damping: Damping,
    /// The order of paths.
    pub prefer: Prefer,
}

impl Default for Policy {
    /// The defaults, chosen in `docs/failover.md`.
    fn default() -> Self {
        Policy {
            down_after_lost: 4,
            sla: Sla {
                window: Duration::from_secs(10),
                min_samples: 20,
                max_loss: 0.15,
                max_rtt: Duration::from_millis(250),
                max_jitter: Duration::from_millis(50),
                sustain: Duration::from_secs(2),
            },
            holddown: Duration::from_secs(10),
            damping: Damping::default(),
            prefer: Prefer::Uplink,
        }
    }
}

/// What became of one probe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Echo {
        rtt: Duration,
    },
    /// Not answered within the probe timeout.
    Lost,
    /// Answered after it was counted lost (at its timeout): a queue, not
    /// a dead link. `rtt` is its real round-trip time.
    Late {
        rtt: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub path: PathId,
    /// When the probe was sent.
    pub sent: Time,
    pub outcome: Outcome,
}

/// The health of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No answer yet since start.
    Unknown,
    Up,
    /// Answering again, waiting for the hold-down.
    Recovering,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Recovering => "recovering",
            Health::Down => "down",
        }
    }
}

/// Why a switch happened, as a bounded class (metric label) …
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasonClass {
    /// The active path stopped answering.
    Dead,
    /// The active hub stopped answering: on an uplink that still reaches
    /// another hub, or on every uplink; the tunnel moved to another hub.
    HubDown,
    /// The active uplink violated its SLA (loss, RTT, jitter).
    Brownout,
    /// The active uplink's probes came back late: a queue (a saturated
    /// line), not a dead one.
    Congested,
    /// A preferred path came back after its hold-down (or, with nothing
    /// up, one answers again).
    Recovered,
}

impl ReasonClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonClass::Dead => "dead",
            ReasonClass::HubDown => "hub_down",
            ReasonClass::Brownout => "brownout",
            ReasonClass::Congested => "congested",
            ReasonClass::Recovered => "recovered",
        }
    }
}

/// A decision to move the tunnel from one path to another.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub from: PathId,
    pub to: PathId,
    pub class: ReasonClass,
    /// … and in words, e.g. "fiber: 4 probes lost in 650 ms" (one hub),
    /// "main/fiber: 4 probes lost in 650 ms; ..." (several).
    pub reason: String,
    pub at: Time,
}

/// A change of a path's health, for logs and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    pub path: PathId,
    pub from: Health,
    pub to: Health,
    pub reason: String,
    pub at: Time,
}

/// The measured quality of a path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    pub health: Health,
    /// Median RTT of the probes answered in the window (late ones included).
    pub rtt: Option<Duration>,
    /// RFC 3550 interarrival jitter of the RTT.
    pub jitter: Duration,
    /// Lost / resolved probes in the window; `None` with no probe resolved.
    pub loss: Option<f64>,
    /// Late / resolved probes in the window (answered after the timeout).
    pub late: Option<f64>,
    /// Resolved probes in the window: below `sla.min_samples` the ratios
    /// above are not judged (and not shown, see `failover::shown`).
    pub samples: usize,
    pub consecutive_lost: u32,
    /// Down or recovering: the hold-down of this recovery; up: the one a
    /// failure now would give.
    pub holddown: Duration,
    /// The damping penalty now (about the number of recent failures,
    /// halved every half-life).
    pub penalty: f64,
}

/// A hub as the engine knows it.
#[derive(Debug, Clone)]
struct Hub {
    name: String,
    priority: u32,
}

/// An uplink as the engine knows it.
#[derive(Debug, Clone)]
struct Uplink {
    name: String,
    priority: u32,
    metered: bool,
}

/// The engine: one per annex, over every path (hub × uplink).
#[derive(Debug, Clone)]
pub struct Engine {
    policy: Policy,
    hubs: Vec<Hub>,
    uplinks: Vec<Uplink>,
    /// One per path, hub by hub: path (h, u) is `links[h * uplinks + u]`.
    links: Vec<Link>,
    active: PathId,
    /// Per hub, the uplink its tunnel uses (see [`Engine::tunnel_uplink`]).
    tunnels: Vec<usize>,
    /// Per hub, the first lost probe of its last failure (a `hub_down`
    /// switch away from it).
    hub_failed_at: Vec<Option<Time>>,
    changes: Vec<StateChange>,
    /// The time of the last event, for what depends on time in queries.
    now: Time,
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

impl Engine {
    /// `hubs`: (name, priority) in config order; `uplinks`: (name,
    /// priority, metered) in config order; `active` carries the tunnel at
    /// start. A lower priority is preferred, then the first in the file.
    pub fn new(
        policy: Policy,
        hubs: &[(String, u32)],
        uplinks: &[(String, u32, bool)],
        active: PathId,
    ) -> Engine {
        assert!(
            active.hub < hubs.len() && active.uplink < uplinks.len(),
            "active path out of range"
        );
        let several = hubs.len() > 1;
        let mut links = Vec::with_capacity(hubs.len() * uplinks.len());
        for (hub, _) in hubs {
            for (uplink, _, _) in uplinks {
                let name = if several {
                    format!("{hub}/{uplink}")
                } else {
                    uplink.clone()
                };
                links.push(Link::new(name, &policy));
            }
        }
        Engine {
            policy,
            hubs: hubs
                .iter()
                .map(|(name, priority)| Hub {
                    name: name.clone(),
                    priority: *priority,
                })
                .collect(),
            uplinks: uplinks
                .iter()
                .map(|(name, priority, metered)| Uplink {
                    name: name.clone(),
                    priority: *priority,
                    metered: *metered,
                })
                .collect(),
            links,
            active,
            tunnels: vec![active.uplink; hubs.len()],
            hub_failed_at: vec![None; hubs.len()],
            changes: Vec::new(),
            now: Time::ZERO,
        }
    }

    /// The number of hubs.
    pub fn hubs(&self) -> usize {
        self.hubs.len()
    }

    /// The number of uplinks.
    pub fn uplinks(&self) -> usize {
        self.uplinks.len()
    }

    /// Every path, hub by hub, uplinks in config order.
    pub fn paths(&self) -> impl Iterator<Item = PathId> + '_ {
        let n = self.uplinks.len();
        (0..self.links.len()).map(move |i| PathId::new(i / n, i % n))
    }

    /// The path's name as reasons start: "fiber" with one hub, "main/fiber"
    /// with several.
    pub fn name(&self, path: PathId) -> &str {
        &self.link(path).name
    }

    pub fn active(&self) -> PathId {
        self.active
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// A reloaded policy; states, windows and penalties carry on under the
    /// new rules (a hold-down in progress keeps its length; a new path
    /// order applies at the next tick).
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    fn index(&self, p: PathId) -> Option<usize> {
        (p.hub < self.hubs.len() && p.uplink < self.uplinks.len())
            .then(|| p.hub * self.uplinks.len() + p.uplink)
    }

    /// Panics on a path out of range: paths come from this engine's own
    /// hubs and uplinks (`paths`), never from input.
    fn link(&self, p: PathId) -> &Link {
        let i = self.index(p).expect("path out of range");
        &self.links[i]
    }

    fn health(&self, p: PathId) -> Health {
        self.link(p).health
    }

    pub fn quality(&self, path: PathId) -> Quality {
        self.link(path).quality(&self.policy, self.now)
    }

    /// The place of a path in the order of `[failover] prefer` (lower is
    /// preferred).
    fn rank(&self, p: PathId) -> (u32, usize, u32, usize) {
        let (h, u) = (self.hubs[p.hub].priority, self.uplinks[p.uplink].priority);
        match self.policy.prefer {
            Prefer::Uplink => (u, p.uplink, h, p.hub),
            Prefer::Hub => (h, p.hub, u, p.uplink),
        }
    }

    /// Every path, best first in the path order.
    fn ranked(&self) -> Vec<PathId> {
        let mut paths: Vec<PathId> = self.paths().collect();
        paths.sort_by_key(|p| self.rank(*p));
        paths
    }

    /// Whether path `p` should be probed fast (`probe.interval`) rather
    /// than at a standby rate ([`Engine::standby`]):
    /// - the active path; every path while the active one is not up;
    /// - a path preferred over the active one that is not up but answers
    ///   (recovering, or down while still answering, as after a
    ///   brownout): a candidate to take the tunnel back, whose hold-down is
    ///   judged on the SLA, which needs `sla_min_samples` probes in the
    ///   window. A preferred path that answers nothing is probed at its
    ///   standby rate until it does;
    /// - the paths to the other hubs on the active uplink while the active
    ///   path is losing probes (before it is down): if it dies, they tell
    ///   at once whether the hub or the uplink failed.
    pub fn wants_fast_probes(&self, p: PathId) -> bool {
        if self.index(p).is_none() {
            return false;
        }
        let a = self.active;
        let trouble = p.uplink == a.uplink && self.link(a).consecutive_lost().0 > 0;
        self.judged_fast(p) || trouble
    }

    /// [`Engine::wants_fast_probes`] but for the short bursts of trouble:
    /// whether a hold-down is judged on the SLA.
    fn judged_fast(&self, p: PathId) -> bool {
        let a = self.active;
        if p == a || self.health(a) != Health::Up {
            return true;
        }
        let l = self.link(p);
        self.rank(p) < self.rank(a)
            && match l.health {
                Health::Up | Health::Recovering => true,
                Health::Down | Health::Unknown => l.window.has_answers(),
            }
    }

    /// The rate of path `p` when it is not probed fast: regular on an
    /// uplink not metered and on the active uplink; on a metered standby
    /// uplink, `probe.metered_interval` times the number of hubs (each hub
    /// in turn), so that the metered uplink's standby probing costs what
    /// it did with one hub.
    pub fn standby(&self, p: PathId) -> Standby {
        let metered = self.uplinks.get(p.uplink).is_some_and(|u| u.metered);
        if !metered || p.uplink == self.active.uplink {
            Standby::Regular
        } else {
            Standby::Metered {
                hubs: u32::try_from(self.hubs.len()).unwrap_or(u32::MAX),
            }
        }
    }

    /// The uplink the tunnel to `hub` uses: the active path's uplink for
    /// the active hub; for another hub, the best uplink on which it is
    /// up, not metered first, then by uplink priority; if it is up on
    /// none, the one it used last (at start, the active path's uplink).
    /// A hub left by a `hub_down` switch is up on a path only once that
    /// path answered since (not by a metered standby's old answer).
    /// So the sessions with standby hubs stay established over the fiber
    /// and do not cost 4G.
    pub fn tunnel_uplink(&self, hub: usize) -> usize {
        self.tunnels.get(hub).copied().unwrap_or(self.active.uplink)
    }

    fn update_tunnels(&mut self) {
        for h in 0..self.hubs.len() {
            if h == self.active.hub {
                self.tunnels[h] = self.active.uplink;
                continue;
            }
            // A hub left by a `hub_down` switch counts as up on a path
            // only once that path answered since: a metered standby up
            // by an answer from before the failure does not take the
            // dead hub's session.
            let failed = self.hub_failed_at[h];
            let best = (0..self.uplinks.len())
                .filter(|u| {
                    let p = PathId::new(h, *u);
                    self.health(p) == Health::Up
                        && failed.is_none_or(|at| self.link(p).answered_since(at))
                })
                .min_by_key(|u| {
                    let up = &self.uplinks[*u];
                    (up.metered, up.priority, *u)
                });
            if let Some(u) = best {
                self.tunnels[h] = u;
            }
        }
    }

    /// The health changes since the last call, oldest first.
    pub fn take_changes(&mut self) -> Vec<StateChange> {
        std::mem::take(&mut self.changes)
    }

    /// Feeds one probe outcome (of a path this engine does not know: ignored).
    pub fn observe(&mut self, now: Time, sample: Sample) -> Option<Decision> {
        let policy = self.policy;
        let i = self.index(sample.path)?;
        self.links[i].observe(&policy, now, &sample);
        self.tick(now)
    }

    /// Re-evaluates every path at `now` (call regularly: hold-downs and
    /// sustained violations end with time, not with samples).
    pub fn tick(&mut self, now: Time) -> Option<Decision> {
        self.now = self.now.max(now);
        let paths: Vec<PathId> = self.paths().collect();
        for (i, p) in paths.into_iter().enumerate() {
            let role = Role {
                active: p == self.active,
                fast: self.judged_fast(p),
            };
            let from = self.links[i].health;
            if let Some((to, reason)) = self.links[i].evaluate(&self.policy, now, role) {
                self.links[i].health = to;
                self.changes.push(StateChange {
                    path: p,
                    from,
                    to,
                    reason,
                    at: now,
                });
            }
        }
        let decision = self.select(now);
        self.update_tunnels();
        decision
    }

    /// The path the tunnel leaves a dead active path for: the first up
    /// path in the path order that answered a probe sent after the active
    /// path's first lost one (`first`; none after a brownout: the hub
    /// answers, the states stand). A better path not heard since is
    /// waited for (it is probed fast now), unless it lost
    /// [`SILENT_AFTER`] probes in a row since then, or its hub failed
    /// before and it has not answered since
    /// ([`Engine::hub_silent_since_failure`]): it shares the failure, is
    /// passed over (returned with why) and goes down with it, so that a
    /// return to it waits for its hold-down.
    fn proven(&self, first: Option<Time>) -> Option<(PathId, Vec<(PathId, String)>)> {
        let mut passed = Vec::new();
        for p in self.ranked() {
            if p == self.active || self.health(p) != Health::Up {
                continue;
            }
            let Some(first) = first else {
                return Some((p, passed));
            };
            let l = self.link(p);
            if l.answered_since(first) {
                return Some((p, passed));
            }
            let lost = l.lost_since(first);
            if lost >= SILENT_AFTER {
                let why = format!(
                    "{}: {lost} probes lost along with {}",
                    l.name,
                    self.link(self.active).name
                );
                passed.push((p, why));
                continue;
            }
            if self.hub_silent_since_failure(p, first) {
                let why = format!(
                    "{}: no answer since hub {} failed",
                    l.name, self.hubs[p.hub].name
                );
                passed.push((p, why));
                continue;
            }
            return None;
        }
        None
    }

    /// `p`'s hub failed before the active path's trouble began (`first`;
    /// a `hub_down` switch left it) and `p` has not answered since: `p`
    /// is up by an old answer (a metered standby probed once a minute) of
    /// a hub that failed. Such a `p` is not waited for when the tunnel
    /// leaves a dead path: it is passed over.
    fn hub_silent_since_failure(&self, p: PathId, first: Time) -> bool {
        self.hub_failed_at
            .get(p.hub)
            .copied()
            .flatten()
            .is_some_and(|at| at < first && !self.link(p).answered_since(at))
    }

    /// Leaving active path `from` (dead since its first lost probe `first`)
    /// for `to` on another hub: the old hub failed when none of its paths
    /// answered since, and either another hub answers on `from`'s uplink
    /// (the uplink works, the hub does not answer over it: the annex cannot
    /// tell a dead hub from a hub cut from this uplink without probing its
    /// other paths, maybe metered) or every path of the old hub is down.
    /// Returns where it is silent, for the reason.
    fn hub_failed(&self, from: PathId, to: PathId, first: Option<Time>) -> Option<String> {
        let first = first?;
        if from.hub == to.hub {
            return None;
        }
        let old = (0..self.uplinks.len()).map(|u| PathId::new(from.hub, u));
        if old.clone().any(|p| self.link(p).answered_since(first)) {
            return None;
        }
        let all_down = old
            .clone()
            .all(|p| matches!(self.health(p), Health::Down | Health::Unknown));
        if all_down && self.uplinks.len() > 1 {
            return Some("every uplink".to_string());
        }
        let uplink_works = (0..self.hubs.len())
            .filter(|h| *h != from.hub)
            .any(|h| self.link(PathId::new(h, from.uplink)).answered_since(first));
        (uplink_works || all_down).then(|| self.uplinks[from.uplink].name.clone())
    }

    fn select(&mut self, now: Time) -> Option<Decision> {
        let ranked = self.ranked();
        let best_with = |health: Health| ranked.iter().copied().find(|p| self.health(*p) == health);
        let a = self.active;
        let current = self.link(a);
        let none_up = if self.hubs.len() > 1 {
            "no path is up"
        } else {
            "no uplink is up"
        };
        let mut returning = false;
        let (best, class, reason) = match best_with(Health::Up) {
            Some(best) if best == a => return None,
            Some(best) if current.health == Health::Up => {
                // The active path is fine, but a preferred one is back:
                // a return, on probation (see Damping::probation).
                returning = true;
                (
                    best,
                    ReasonClass::Recovered,
                    format!(
                        "{}: healthy for {}, preferred over {}",
                        self.link(best).name,
                        damping::words(self.link(best).holddown),
                        current.name
                    ),
                )
            }
            // The active path is not judged yet (start-up): a standby that
            // answered first is no reason to leave it. Four lost probes
            // make it down soon enough if it is dead.
            Some(_) if current.health == Health::Unknown => return None,
            // The active path answers again (in hold-down after an outage
            // it shared with the others, e.g. a hub restart): the traffic
            // flows, no reason to move it. A new failure makes it down
            // again.
            Some(_) if current.health == Health::Recovering => return None,
            // The active path is down: move to the best one that is up,
            // once it has answered a probe sent after the active one's
            // first lost probe (`proven`). A standby's "up" may be a minute
            // old (metered probing); if no hub answers, the others' next
            // probes are lost too and nothing moves (see HUB_SETTLE). When
            // another hub answers while the active hub answers nowhere, the
            // tunnel moves to it at once: a hub failure.
            Some(_) => {
                let first = current.consecutive_lost().1;
                let (best, passed) = self.proven(first)?;
                // The paths passed over share the failure: down with it
                // (a return to one of them waits for its hold-down).
                for (p, why) in passed {
                    let from = self.health(p);
                    if let Some(i) = self.index(p) {
                        let policy = self.policy;
                        self.links[i].pass_over(&policy, now, why.clone());
                        self.changes.push(StateChange {
                            path: p,
                            from,
                            to: Health::Down,
                            reason: why,
                            at: now,
                        });
                    }
                }
                let current = self.link(a);
                let (mut class, mut reason) = current.down_reason.clone();
                let silent = (class == ReasonClass::Dead)
                    .then(|| self.hub_failed(a, best, first))
                    .flatten();
                if let Some(over) = silent {
                    class = ReasonClass::HubDown;
                    self.hub_failed_at[a.hub] = first;
                    reason = format!(
                        "{reason}; hub {} silent over {over}, hub {} answering over {}",
                        self.hubs[a.hub].name,
                        self.hubs[best.hub].name,
                        self.uplinks[best.uplink].name
                    );
                }
                (best, class, reason)
            }
            // Nothing is up: a path that answers again is better than a
            // dead one, hold-down or not (unless the active one answers too).
            None if current.health == Health::Down => {
                // Paths that come back together (every hub was unreachable,
                // not the uplinks) are compared by the path order: the best
                // one must have answered for ALL_DOWN_SETTLE first; and if
                // it went down together with the active one, the active
                // one gets HUB_SETTLE to come back.
                let best = best_with(Health::Recovering)?;
                let candidate = self.link(best);
                let together = match (current.down_at, candidate.down_at) {
                    (Some(a), Some(b)) => a.max(b) - a.min(b) <= TOGETHER,
                    _ => false,
                };
                let settle = if together {
                    HUB_SETTLE
                } else {
                    ALL_DOWN_SETTLE
                };
                let settled = candidate
                    .healthy_since
                    .is_some_and(|since| now.saturating_sub(since) >= settle);
                if !settled {
                    return None;
                }
                (
                    best,
                    ReasonClass::Recovered,
                    format!("{}: answering again while {none_up}", candidate.name),
                )
            }
            None => return None,
        };
        let from = self.active;
        self.active = best;
        if returning {
            if let Some(i) = self.index(best) {
                self.links[i].returned_at = Some(now);
            }
        }
        Some(Decision {
            from,
            to: best,
            class,
            reason,
            at: now,
        })
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reason)
    }
}

#[cfg(test)]
mod tests;

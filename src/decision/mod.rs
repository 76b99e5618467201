//! The failover decision engine: a pure state machine, fed probe outcomes
//! and time, that says which uplink carries the tunnel and why.
//!
//! Down fast, up slowly:
//! - an uplink is **down** after `down_after_lost` consecutive probes were
//!   lost (no echo at all), or after its SLA (probes not answered in time,
//!   median RTT, jitter over `window`) has been violated for `sustain`: a
//!   brownout, or congestion when the probes come back late (a queue);
//! - a down uplink is **recovering** once it answers again and meets its SLA,
//!   and **up** after its hold-down of continuous health, judged on the SLA
//!   over enough probes; the hold-down grows with each failure (flap
//!   damping, `damping.rs`);
//! - the active uplink is the up uplink of best priority; with none up, the
//!   last active one is kept (and still probed).
//!
//! One file per concern: `window.rs` (the SLA window and its judgement),
//! `damping.rs` (penalty and hold-down), `link.rs` (one link's health),
//! this file (the choice among links).
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

/// With no uplink up, how long the best answering uplink must have answered
/// before it takes the tunnel, so that uplinks coming back at the same
/// moment are compared by priority rather than by who answered first.
pub const ALL_DOWN_SETTLE: Duration = Duration::from_millis(500);

/// An uplink that has not answered yet is not declared down before this
/// time since start: the first QUIC handshake with the hub may take a few
/// probe intervals (a loaded router, a hub starting at the same time), and
/// the standby answering first is no reason to leave the preferred uplink.
/// A preferred uplink dead at boot costs this much more before the switch.
pub const STARTUP_GRACE: Duration = Duration::from_secs(5);

/// Uplinks that went down within this time of each other went down
/// together: most likely the hub (or its responder) was unreachable, not
/// every uplink.
pub const TOGETHER: Duration = Duration::from_secs(2);

/// After uplinks went down together, the active one gets this long, from
/// the first answer of another one, to answer again before the tunnel
/// moves: a hub restart does not move every annex to 4G and back.
pub const HUB_SETTLE: Duration = Duration::from_secs(5);

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
    pub uplink: usize,
    /// When the probe was sent.
    pub sent: Time,
    pub outcome: Outcome,
}

/// The health of an uplink.
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
    /// The active uplink stopped answering.
    Dead,
    /// The active uplink violated its SLA (loss, RTT, jitter).
    Brownout,
    /// The active uplink's probes came back late: a queue (a saturated
    /// line), not a dead one.
    Congested,
    /// A preferred uplink came back after its hold-down.
    Recovered,
}

impl ReasonClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonClass::Dead => "dead",
            ReasonClass::Brownout => "brownout",
            ReasonClass::Congested => "congested",
            ReasonClass::Recovered => "recovered",
        }
    }
}

/// A decision to move the tunnel from one uplink to another.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub from: usize,
    pub to: usize,
    pub class: ReasonClass,
    /// … and in words, e.g. "fiber: 4 probes lost in 650 ms".
    pub reason: String,
    pub at: Time,
}

/// A change of an uplink's health, for logs and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    pub uplink: usize,
    pub from: Health,
    pub to: Health,
    pub reason: String,
    pub at: Time,
}

/// The measured quality of an uplink.
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

/// The engine: one per annex (later: per path, i.e. hub × uplink).
#[derive(Debug, Clone)]
pub struct Engine {
    policy: Policy,
    links: Vec<Link>,
    active: usize,
    changes: Vec<StateChange>,
    /// The time of the last event, for what depends on time in queries.
    now: Time,
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

impl Engine {
    /// `uplinks`: (name, priority) in config order; `active` carries the
    /// tunnel at start.
    pub fn new(policy: Policy, uplinks: &[(String, u32)], active: usize) -> Engine {
        assert!(active < uplinks.len(), "active uplink out of range");
        Engine {
            policy,
            links: uplinks
                .iter()
                .map(|(name, priority)| Link::new(name.clone(), *priority, &policy))
                .collect(),
            active,
            changes: Vec::new(),
            now: Time::ZERO,
        }
    }

    pub fn active(&self) -> usize {
        self.active
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// A reloaded policy; states, windows and penalties carry on under the
    /// new rules (a hold-down in progress keeps its length).
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    pub fn quality(&self, uplink: usize) -> Quality {
        self.links[uplink].quality(&self.policy, self.now)
    }

    /// Whether uplink `i` should be probed fast (`probe.interval`) rather
    /// than at a standby rate: the active uplink; every uplink while the
    /// active one is not up; and an uplink preferred over the active one
    /// that is not up but answers (recovering, or down while still
    /// answering, as after a brownout): it is a candidate to take the
    /// tunnel back, and its hold-down is judged on the SLA, which needs
    /// `sla_min_samples` probes in the window. A preferred uplink that
    /// answers nothing is probed at its standby rate until it does.
    pub fn wants_fast_probes(&self, i: usize) -> bool {
        let a = self.active;
        if i == a || self.links[a].health != Health::Up {
            return true;
        }
        let Some(l) = self.links.get(i) else {
            return false;
        };
        let preferred = (l.priority, i) < (self.links[a].priority, a);
        preferred
            && match l.health {
                Health::Up | Health::Recovering => true,
                Health::Down | Health::Unknown => l.window.has_answers(),
            }
    }

    /// The health changes since the last call, oldest first.
    pub fn take_changes(&mut self) -> Vec<StateChange> {
        std::mem::take(&mut self.changes)
    }

    /// Feeds one probe outcome.
    pub fn observe(&mut self, now: Time, sample: Sample) -> Option<Decision> {
        let policy = self.policy;
        self.links
            .get_mut(sample.uplink)?
            .observe(&policy, now, &sample);
        self.tick(now)
    }

    /// Re-evaluates every uplink at `now` (call regularly: hold-downs and
    /// sustained violations end with time, not with samples).
    pub fn tick(&mut self, now: Time) -> Option<Decision> {
        self.now = self.now.max(now);
        for i in 0..self.links.len() {
            let role = Role {
                active: i == self.active,
                fast: self.wants_fast_probes(i),
            };
            let from = self.links[i].health;
            if let Some((to, reason)) = self.links[i].evaluate(&self.policy, now, role) {
                self.links[i].health = to;
                self.changes.push(StateChange {
                    uplink: i,
                    from,
                    to,
                    reason,
                    at: now,
                });
            }
        }
        self.select(now)
    }

    fn select(&mut self, now: Time) -> Option<Decision> {
        let best_with = |health: Health| {
            (0..self.links.len())
                .filter(|i| self.links[*i].health == health)
                .min_by_key(|i| (self.links[*i].priority, *i))
        };
        let current = &self.links[self.active];
        let mut returning = false;
        let (best, class, reason) = match best_with(Health::Up) {
            Some(best) if best == self.active => return None,
            Some(best) if current.health == Health::Up => {
                // The active uplink is fine, but a preferred one is back:
                // a return, on probation (see Damping::probation).
                returning = true;
                (
                    best,
                    ReasonClass::Recovered,
                    format!(
                        "{}: healthy for {}, preferred over {}",
                        self.links[best].name,
                        damping::words(self.links[best].holddown),
                        current.name
                    ),
                )
            }
            // The active uplink is not judged yet (start-up): a standby that
            // answered first is no reason to leave it. Four lost probes
            // make it down soon enough if it is dead.
            Some(_) if current.health == Health::Unknown => return None,
            // The active uplink answers again (in hold-down after an
            // outage it shared with the others, e.g. a hub restart): the
            // traffic flows, no reason to move it. A new failure makes it
            // down again.
            Some(_) if current.health == Health::Recovering => return None,
            // The active uplink is down: move to the best one that is up,
            // once it has answered a probe sent after the active one's
            // first lost probe. A standby's "up" may be 30 s old (metered probing); if
            // the hub, not the uplink, is unreachable, the standby's next
            // probes are lost too and nothing moves (see HUB_SETTLE).
            Some(best) => {
                let fresh = match current.consecutive_lost().1 {
                    Some(first) => self.links[best].last_echo_sent >= Some(first),
                    // A brownout: the hub answers, the standby's state stands.
                    None => true,
                };
                if !fresh {
                    return None;
                }
                (best, current.down_reason.0, current.down_reason.1.clone())
            }
            // Nothing is up: an uplink that answers again is better than a
            // dead one, hold-down or not (unless the active one answers too).
            None if current.health == Health::Down => {
                // Uplinks that come back together (the hub was unreachable,
                // not the uplinks) are compared by priority: the best one
                // must have answered for ALL_DOWN_SETTLE first; and if it
                // went down together with the active one, the active one
                // gets HUB_SETTLE to come back.
                let best = best_with(Health::Recovering)?;
                let together = match (current.down_at, self.links[best].down_at) {
                    (Some(a), Some(b)) => a.max(b) - a.min(b) <= TOGETHER,
                    _ => false,
                };
                let settle = if together {
                    HUB_SETTLE
                } else {
                    ALL_DOWN_SETTLE
                };
                let settled = self.links[best]
                    .healthy_since
                    .is_some_and(|since| now.saturating_sub(since) >= settle);
                if !settled {
                    return None;
                }
                (
                    best,
                    ReasonClass::Recovered,
                    format!(
                        "{}: answering again while no uplink is up",
                        self.links[best].name
                    ),
                )
            }
            None => return None,
        };
        let from = self.active;
        self.active = best;
        if returning {
            self.links[best].returned_at = Some(now);
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

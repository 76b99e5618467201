//! The failover decision engine: a pure state machine, fed probe outcomes
//! and time, that says which uplink carries the tunnel and why.
//!
//! Down fast, up slowly:
//! - an uplink is **down** after `down_after_lost` consecutive probes went
//!   unanswered, or after its SLA (loss, median RTT, jitter over `window`)
//!   has been violated for `sustain` (a brownout);
//! - a down uplink is **recovering** once it answers again and meets its SLA,
//!   and **up** after `holddown` of continuous health (two consecutive
//!   losses or an SLA violation send it back to down);
//! - the active uplink is the up uplink of best priority; with none up, the
//!   last active one is kept (and still probed).
//!
//! No I/O and no clock: time is passed in (`Time`, the time since the
//! daemon started), so every rule is tested with synthetic probe streams.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

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
    pub holddown: Duration,
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
    /// Answered after it was counted lost: only remembered for the reason text.
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
    /// The active uplink violated its SLA.
    Brownout,
    /// A preferred uplink came back after its hold-down.
    Recovered,
}

impl ReasonClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonClass::Dead => "dead",
            ReasonClass::Brownout => "brownout",
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
    /// Median RTT of the answered probes in the window.
    pub rtt: Option<Duration>,
    /// RFC 3550 interarrival jitter of the RTT.
    pub jitter: Duration,
    /// Lost / resolved probes in the window; `None` with no probe resolved.
    pub loss: Option<f64>,
    pub consecutive_lost: u32,
}

#[derive(Debug, Clone)]
struct Link {
    name: String,
    priority: u32,
    health: Health,
    /// Why it is down (kept for the switch reason).
    down_reason: (ReasonClass, String),
    /// (send time, RTT or None if lost), oldest first.
    window: VecDeque<(Time, Option<Duration>)>,
    consecutive_lost: u32,
    first_lost_sent: Option<Time>,
    last_rtt: Option<Duration>,
    jitter_s: f64,
    late_rtt: Option<Duration>,
    breach_since: Option<Time>,
    healthy_since: Option<Time>,
    /// When it last went down.
    down_at: Option<Time>,
    /// Send time of the last probe that was echoed.
    last_echo_sent: Option<Time>,
}

impl Link {
    fn stats(&self) -> (usize, f64, Option<Duration>) {
        let n = self.window.len();
        let lost = self.window.iter().filter(|(_, r)| r.is_none()).count();
        let mut rtts: Vec<Duration> = self.window.iter().filter_map(|(_, r)| *r).collect();
        rtts.sort();
        let median = (!rtts.is_empty()).then(|| rtts[rtts.len() / 2]);
        let loss = if n == 0 { 0.0 } else { lost as f64 / n as f64 };
        (n, loss, median)
    }

    /// The SLA violation in words, if the SLA is judged and violated.
    fn breach(&self, sla: &Sla) -> Option<String> {
        let (n, loss, median) = self.stats();
        if n < sla.min_samples {
            return None;
        }
        if loss > sla.max_loss {
            return Some(format!(
                "loss {:.0}% > {:.0}%",
                loss * 100.0,
                sla.max_loss * 100.0
            ));
        }
        if let Some(rtt) = median.filter(|r| *r > sla.max_rtt) {
            return Some(format!(
                "RTT {} ms > {} ms",
                rtt.as_millis(),
                sla.max_rtt.as_millis()
            ));
        }
        let jitter = Duration::from_secs_f64(self.jitter_s);
        if jitter > sla.max_jitter {
            return Some(format!(
                "jitter {} ms > {} ms",
                jitter.as_millis(),
                sla.max_jitter.as_millis()
            ));
        }
        None
    }
}

/// The engine: one per annex (later: per path, i.e. hub × uplink).
#[derive(Debug, Clone)]
pub struct Engine {
    policy: Policy,
    links: Vec<Link>,
    active: usize,
    changes: Vec<StateChange>,
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
                .map(|(name, priority)| Link {
                    name: name.clone(),
                    priority: *priority,
                    health: Health::Unknown,
                    down_reason: (ReasonClass::Dead, String::new()),
                    window: VecDeque::new(),
                    consecutive_lost: 0,
                    first_lost_sent: None,
                    last_rtt: None,
                    jitter_s: 0.0,
                    late_rtt: None,
                    breach_since: None,
                    healthy_since: None,
                    down_at: None,
                    last_echo_sent: None,
                })
                .collect(),
            active,
            changes: Vec::new(),
        }
    }

    pub fn active(&self) -> usize {
        self.active
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// A reloaded policy; states and windows carry on under the new rules.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    pub fn quality(&self, uplink: usize) -> Quality {
        let l = &self.links[uplink];
        let (n, loss, rtt) = l.stats();
        Quality {
            health: l.health,
            rtt,
            jitter: Duration::from_secs_f64(l.jitter_s),
            loss: (n > 0).then_some(loss),
            consecutive_lost: l.consecutive_lost,
        }
    }

    /// The health changes since the last call, oldest first.
    pub fn take_changes(&mut self) -> Vec<StateChange> {
        std::mem::take(&mut self.changes)
    }

    /// Feeds one probe outcome.
    pub fn observe(&mut self, now: Time, sample: Sample) -> Option<Decision> {
        let l = self.links.get_mut(sample.uplink)?;
        match sample.outcome {
            Outcome::Echo { rtt } => {
                if matches!(l.health, Health::Down | Health::Unknown) && l.consecutive_lost > 0 {
                    // A dead uplink answers again, or a new one answers for
                    // the first time (probes before its first QUIC
                    // handshake count as lost): judge it on what it does
                    // from now on, not on the outage still in its window.
                    l.window.retain(|(sent, _)| *sent > sample.sent);
                }
                l.window.push_back((sample.sent, Some(rtt)));
                l.consecutive_lost = 0;
                l.first_lost_sent = None;
                l.late_rtt = None;
                if let Some(prev) = l.last_rtt {
                    // RFC 3550: J += (|D| - J) / 16.
                    let d = (rtt.as_secs_f64() - prev.as_secs_f64()).abs();
                    l.jitter_s += (d - l.jitter_s) / 16.0;
                }
                l.last_rtt = Some(rtt);
                l.last_echo_sent = l.last_echo_sent.max(Some(sample.sent));
            }
            Outcome::Lost => {
                l.window.push_back((sample.sent, None));
                l.consecutive_lost += 1;
                l.first_lost_sent.get_or_insert(sample.sent);
            }
            Outcome::Late { rtt } => l.late_rtt = Some(rtt),
        }
        // Keep the window ordered by send time (outcomes resolve out of order).
        l.window.make_contiguous().sort_by_key(|(sent, _)| *sent);
        self.tick(now)
    }

    /// Re-evaluates every uplink at `now` (call regularly: hold-downs and
    /// sustained violations end with time, not with samples).
    pub fn tick(&mut self, now: Time) -> Option<Decision> {
        for i in 0..self.links.len() {
            self.evaluate(i, now);
        }
        self.select(now)
    }

    fn set_health(&mut self, i: usize, to: Health, reason: String, now: Time) {
        let l = &mut self.links[i];
        if l.health == to {
            return;
        }
        self.changes.push(StateChange {
            uplink: i,
            from: l.health,
            to,
            reason,
            at: now,
        });
        l.health = to;
        if to == Health::Down {
            l.down_at = Some(now);
        }
    }

    fn evaluate(&mut self, i: usize, now: Time) {
        let p = self.policy;
        let l = &mut self.links[i];
        let horizon = now.saturating_sub(p.sla.window);
        while l.window.front().is_some_and(|(sent, _)| *sent < horizon) {
            l.window.pop_front();
        }
        let breach = l.breach(&p.sla);
        match (&breach, l.breach_since) {
            (Some(_), None) => l.breach_since = Some(now),
            (None, Some(_)) => l.breach_since = None,
            _ => {}
        }
        // Not yet answered, still starting: not down yet (see STARTUP_GRACE).
        let starting = l.health == Health::Unknown && now < STARTUP_GRACE;
        let dead = l.consecutive_lost >= p.down_after_lost && !starting;
        let dead_reason = || {
            let span = now.saturating_sub(l.first_lost_sent.unwrap_or(now));
            let mut r = format!(
                "{}: {} probes lost in {} ms",
                l.name,
                l.consecutive_lost,
                ms(span)
            );
            if let Some(late) = l.late_rtt {
                r.push_str(&format!(" (late answers at {} ms)", ms(late)));
            }
            r
        };
        let answered = l.window.back().is_some_and(|(_, r)| r.is_some()) && l.consecutive_lost == 0;
        match l.health {
            Health::Unknown | Health::Up if dead => {
                let reason = dead_reason();
                l.down_reason = (ReasonClass::Dead, reason.clone());
                l.healthy_since = None;
                self.set_health(i, Health::Down, reason, now);
            }
            Health::Up => {
                let sustained = l
                    .breach_since
                    .is_some_and(|since| now.saturating_sub(since) >= p.sla.sustain);
                if let (true, Some(b)) = (sustained, &breach) {
                    let since = now.saturating_sub(l.breach_since.unwrap_or(now));
                    let reason =
                        format!("{}: brownout: {b} for {:.1} s", l.name, since.as_secs_f64());
                    l.down_reason = (ReasonClass::Brownout, reason.clone());
                    self.set_health(i, Health::Down, reason, now);
                }
            }
            Health::Unknown => {
                if answered {
                    let reason = format!("{}: answering", l.name);
                    self.set_health(i, Health::Up, reason, now);
                }
            }
            Health::Down => {
                if answered && breach.is_none() {
                    l.healthy_since = Some(now);
                    let reason = format!(
                        "{}: answering again, hold-down {} s",
                        l.name,
                        p.holddown.as_secs()
                    );
                    self.set_health(i, Health::Recovering, reason, now);
                }
            }
            Health::Recovering => {
                if l.consecutive_lost >= 2 || breach.is_some() {
                    let reason = match &breach {
                        Some(b) => format!("{}: {b} during hold-down", l.name),
                        None => format!(
                            "{}: {} probes lost during hold-down",
                            l.name, l.consecutive_lost
                        ),
                    };
                    l.healthy_since = None;
                    self.set_health(i, Health::Down, reason, now);
                } else if l
                    .healthy_since
                    .is_some_and(|s| now.saturating_sub(s) >= p.holddown)
                {
                    let reason = format!("{}: healthy for {} s", l.name, p.holddown.as_secs());
                    self.set_health(i, Health::Up, reason, now);
                }
            }
        }
    }

    fn select(&mut self, now: Time) -> Option<Decision> {
        let best_with = |health: Health| {
            (0..self.links.len())
                .filter(|i| self.links[*i].health == health)
                .min_by_key(|i| (self.links[*i].priority, *i))
        };
        let current = &self.links[self.active];
        let (best, class, reason) = match best_with(Health::Up) {
            Some(best) if best == self.active => return None,
            Some(best) if current.health == Health::Up => (
                // The active uplink is fine, but a preferred one is back.
                best,
                ReasonClass::Recovered,
                format!(
                    "{}: healthy for {} s, preferred over {}",
                    self.links[best].name,
                    self.policy.holddown.as_secs(),
                    current.name
                ),
            ),
            // The active uplink is not judged yet (start-up): a standby that
            // answered first is no reason to leave it. Four lost probes
            // make it down soon enough if it is dead.
            Some(_) if current.health == Health::Unknown => return None,
            // The active uplink answers again (in hold-down after an
            // outage it shared with the others, e.g. a hub restart): the
            // traffic flows, no reason to move it. Two lost probes make it
            // down again.
            Some(_) if current.health == Health::Recovering => return None,
            // The active uplink is down: move to the best one that is up,
            // once it has answered a probe sent after the active one's
            // first lost probe. A standby's "up" may be 30 s old (metered probing); if
            // the hub, not the uplink, is unreachable, the standby's next
            // probes are lost too and nothing moves (see HUB_SETTLE).
            Some(best) => {
                let fresh = match current.first_lost_sent {
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

//! One link's health: its window, its damping, and the rules that move it
//! between `unknown`, `up`, `down` and `recovering` (rules 1 to 4 of
//! `docs/failover.md`). A link is one (hub, uplink) path; nothing here
//! knows which, nor how it ranks among the others (`mod.rs` does).

use std::time::Duration;

use super::damping::{self, Penalty};
use super::window::{BaseRtt, Breach, Fate, Window};
use super::{ms, Health, Outcome, Policy, Quality, ReasonClass, Sample, Time, STARTUP_GRACE};

/// During a hold-down judged by losses only (a slowly probed standby,
/// fewer probes than `sla_min_samples`), this many lost in a row send the
/// link back to down.
const RECOVERY_LOST: u32 = 2;

/// A return needs at most this share of `max_loss` not answered in time
/// over the hold-down: leave above 15 %, come back at 7.5 % or less.
pub(super) const RETURN_MARGIN: f64 = 0.5;

/// The hold-down of a link that left by its SLA (brownout, congestion) is
/// this many times its damped hold-down: its loss is a ratio estimated from
/// probes, and the 100 probes of one base hold-down cannot tell a link at
/// 7 % from one at 12 % reliably (a loss ramp came back once in about 100
/// simulated runs with the base hold-down, never with twice it).
pub(super) const SLA_FACTOR: u32 = 2;

/// "7.5%", "12%".
fn percent(ratio: f64) -> String {
    let p = ratio * 100.0;
    if (p - p.round()).abs() < 0.05 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

/// What the engine tells a link about its place.
#[derive(Debug, Clone, Copy)]
pub(super) struct Role {
    /// It carries the tunnel.
    pub active: bool,
    /// It is probed fast (the engine asked for it): its hold-down is judged
    /// on the SLA, over at least `sla_min_samples` probes.
    pub fast: bool,
}

#[derive(Debug, Clone)]
pub(super) struct Link {
    /// "fiber" with one hub, "main/fiber" with several: the start of its reasons.
    pub name: String,
    pub health: Health,
    /// Why it went down (kept for the switch reason).
    pub down_reason: (ReasonClass, String),
    pub window: Window,
    base_rtt: BaseRtt,
    last_rtt: Option<Duration>,
    jitter_s: f64,
    /// The RTT of the last late echo, for reasons.
    late_rtt: Option<Duration>,
    breach_since: Option<Time>,
    /// When its current hold-down began.
    pub healthy_since: Option<Time>,
    /// When it last went down.
    pub down_at: Option<Time>,
    /// Send time of the last probe echoed in time.
    pub last_echo_sent: Option<Time>,
    penalty: Penalty,
    /// The hold-down of the current recovery, fixed when it went down.
    pub holddown: Duration,
    /// It went down by its SLA (brownout, congestion): hold-down doubled.
    doubled: Option<ReasonClass>,
    /// Probes sent during the hold-down and resolved, and how many of them
    /// were not answered in time (lost or late).
    recovery_probes: usize,
    recovery_unanswered: usize,
    /// When it got the tunnel back from another link (a return), for the
    /// probation.
    pub returned_at: Option<Time>,
}

impl Link {
    pub fn new(name: String, policy: &Policy) -> Link {
        Link {
            name,
            health: Health::Unknown,
            down_reason: (ReasonClass::Dead, String::new()),
            window: Window::default(),
            base_rtt: BaseRtt::default(),
            last_rtt: None,
            jitter_s: 0.0,
            late_rtt: None,
            breach_since: None,
            healthy_since: None,
            down_at: None,
            last_echo_sent: None,
            penalty: Penalty::default(),
            holddown: policy.holddown,
            doubled: None,
            recovery_probes: 0,
            recovery_unanswered: 0,
            returned_at: None,
        }
    }

    fn jitter(&self) -> Duration {
        Duration::from_secs_f64(self.jitter_s)
    }

    /// The lost probes in a row (in send order) and when the first was sent.
    pub fn consecutive_lost(&self) -> (u32, Option<Time>) {
        self.window.trailing_lost()
    }

    /// It answered a probe sent at or after `since`: it works now.
    pub fn answered_since(&self, since: Time) -> bool {
        self.last_echo_sent >= Some(since)
    }

    /// The lost probes in a row at the end of its window that were sent at
    /// or after `since`.
    pub fn lost_since(&self, since: Time) -> u32 {
        self.window.trailing_lost_since(since)
    }

    pub fn quality(&self, policy: &Policy, now: Time) -> Quality {
        let s = self.window.stats();
        let holddown = match self.health {
            Health::Down | Health::Recovering => self.holddown,
            Health::Up | Health::Unknown => self.penalty.next_holddown(policy, now),
        };
        Quality {
            health: self.health,
            rtt: s.median,
            jitter: self.jitter(),
            loss: s.loss(),
            late: s.late_ratio(),
            samples: s.n,
            consecutive_lost: self.consecutive_lost().0,
            holddown,
            penalty: self.penalty.value(policy, now),
        }
    }

    /// Records one probe outcome.
    pub fn observe(&mut self, policy: &Policy, now: Time, sample: &Sample) {
        // Probes sent during the hold-down (late ones were counted at their timeout).
        let resolved = !matches!(sample.outcome, Outcome::Late { .. });
        let during = self.healthy_since.is_some_and(|s| sample.sent >= s);
        if self.health == Health::Recovering && resolved && during {
            self.recovery_probes += 1;
            if sample.outcome == Outcome::Lost {
                self.recovery_unanswered += 1;
            }
        }
        match sample.outcome {
            Outcome::Echo { rtt } => {
                let outage = self.window.lost_run_before(sample.sent)
                    >= policy.down_after_lost.max(1) as usize;
                let dead = match self.health {
                    Health::Unknown => true,
                    Health::Down => self.down_reason.0 == ReasonClass::Dead,
                    Health::Up | Health::Recovering => false,
                };
                if outage && dead {
                    // A dead link answers again, or a new one answers for
                    // the first time (probes before its first QUIC
                    // handshake count as lost): judge it on what it does
                    // from now on, not on the outage still in its window.
                    // A link down by brownout keeps everything (rule 3).
                    self.window.forget_lost_run_before(sample.sent);
                }
                self.window.insert(sample.sent, Fate::Echo(rtt));
                self.late_rtt = None;
                if let Some(prev) = self.last_rtt {
                    // RFC 3550: J += (|D| - J) / 16.
                    let d = (rtt.as_secs_f64() - prev.as_secs_f64()).abs();
                    self.jitter_s += (d - self.jitter_s) / 16.0;
                }
                self.last_rtt = Some(rtt);
                self.base_rtt.add(now, rtt);
                self.last_echo_sent = self.last_echo_sent.max(Some(sample.sent));
            }
            Outcome::Lost => self.window.insert(sample.sent, Fate::Lost),
            Outcome::Late { rtt } => {
                // The probe was counted lost at its timeout: it is late,
                // not lost (a queue, not a dead link).
                self.window.mark_late(sample.sent, rtt);
                self.late_rtt = Some(rtt);
            }
        }
    }

    /// Applies rules 1 to 4 at `now`; returns the new health and why, if it changed.
    pub fn evaluate(&mut self, p: &Policy, now: Time, role: Role) -> Option<(Health, String)> {
        self.window.expire(now.saturating_sub(p.sla.window));
        let breach = self
            .window
            .breach(&p.sla, self.base_rtt.get(), self.jitter());
        match (&breach, self.breach_since) {
            (Some(_), None) => self.breach_since = Some(now),
            (None, Some(_)) => self.breach_since = None,
            _ => {}
        }
        let (lost, first_lost) = self.consecutive_lost();
        // Not yet answered, still starting: not down yet (see STARTUP_GRACE).
        let starting = self.health == Health::Unknown && now < STARTUP_GRACE;
        let dead = lost >= p.down_after_lost && !starting;
        let dead_reason = |what: &str| {
            let span = now.saturating_sub(first_lost.unwrap_or(now));
            format!("{}: {lost} probes lost {what}{} ms", self.name, ms(span))
        };
        let answered = self
            .window
            .last()
            .is_some_and(|f| matches!(f, Fate::Echo(_)));
        match self.health {
            Health::Unknown | Health::Up if dead => {
                let mut reason = dead_reason("in ");
                if let Some(late) = self.late_rtt {
                    reason.push_str(&format!(" (late answers at {} ms)", ms(late)));
                }
                self.fall(p, now, role, ReasonClass::Dead, reason.clone());
                Some((Health::Down, reason))
            }
            Health::Up => {
                let since = self.breach_since?;
                let b = breach.filter(|_| now.saturating_sub(since) >= p.sla.sustain)?;
                let reason = format!(
                    "{}: {}: {} for {:.1} s",
                    self.name,
                    b.class.as_str(),
                    b.text,
                    now.saturating_sub(since).as_secs_f64()
                );
                self.fall(p, now, role, b.class, reason.clone());
                Some((Health::Down, reason))
            }
            Health::Unknown => answered.then(|| (Health::Up, format!("{}: answering", self.name))),
            Health::Down => {
                if !(answered && breach.is_none()) {
                    return None;
                }
                self.healthy_since = Some(now);
                self.recovery_probes = 0;
                self.recovery_unanswered = 0;
                let mut damped = self.holddown;
                let mut doubled = "";
                if let Some(class) = self.doubled {
                    damped = self.holddown / SLA_FACTOR;
                    doubled = match class {
                        ReasonClass::Congested => ", doubled after congestion",
                        _ => ", doubled after a brownout",
                    };
                }
                let why = self.penalty.why(p, damped, now) + doubled;
                Some((
                    Health::Recovering,
                    format!(
                        "{}: answering again, hold-down {}{why}",
                        self.name,
                        damping::words(self.holddown)
                    ),
                ))
            }
            Health::Recovering => {
                let judged = self.window.stats().n >= p.sla.min_samples;
                // Judged like an active link: a violation must last `sla_sustain`.
                let sustained = self
                    .breach_since
                    .is_some_and(|since| now.saturating_sub(since) >= p.sla.sustain);
                let failure = if dead {
                    Some((ReasonClass::Dead, dead_reason("during hold-down in ")))
                } else if let (true, Some(Breach { class, text })) = (sustained, &breach) {
                    let reason =
                        format!("{}: {}: {text} during hold-down", self.name, class.as_str());
                    Some((*class, reason))
                } else if !judged && lost >= RECOVERY_LOST {
                    Some((ReasonClass::Dead, dead_reason("during hold-down in ")))
                } else {
                    None
                };
                if let Some((class, reason)) = failure {
                    self.fall(p, now, role, class, reason.clone());
                    return Some((Health::Down, reason));
                }
                let held = self
                    .healthy_since
                    .is_some_and(|s| now.saturating_sub(s) >= self.holddown);
                if !held {
                    return None;
                }
                let up = (
                    Health::Up,
                    format!(
                        "{}: healthy for {}",
                        self.name,
                        damping::words(self.holddown)
                    ),
                );
                // A slowly probed standby is judged by losses only.
                if !role.fast {
                    return Some(up);
                }
                // A fast-probed link proves itself over enough probes, well
                // inside its SLA: at most half of `max_loss` not answered in
                // time over the hold-down (hysteresis: a link hovering at
                // the threshold does not come and go).
                let n = self.recovery_probes;
                if n < p.sla.min_samples {
                    return None;
                }
                let unanswered = self.recovery_unanswered as f64 / n as f64;
                let margin = p.sla.max_loss * RETURN_MARGIN;
                if unanswered <= margin {
                    return Some(up);
                }
                let reason = format!(
                    "{}: brownout: {} of probes not answered in time during hold-down, a return needs at most {}",
                    self.name,
                    percent(unanswered),
                    percent(margin)
                );
                self.fall(p, now, role, ReasonClass::Brownout, reason.clone());
                Some((Health::Down, reason))
            }
        }
    }

    /// Goes down without a rule of its own: passed over when the tunnel
    /// left a dead path whose failure it shares (`Engine::proven`).
    pub fn pass_over(&mut self, p: &Policy, now: Time, reason: String) {
        let role = Role {
            active: false,
            fast: true,
        };
        self.fall(p, now, role, ReasonClass::Dead, reason);
        self.health = Health::Down;
    }

    /// Goes down: a failure for the damping (unless it never answered),
    /// and the hold-down of the coming recovery.
    fn fall(&mut self, p: &Policy, now: Time, role: Role, class: ReasonClass, reason: String) {
        if self.health != Health::Unknown {
            let failed_return = self.health == Health::Up
                && role.active
                && self
                    .returned_at
                    .is_some_and(|r| now.saturating_sub(r) < p.damping.probation);
            self.penalty.fail(p, now, failed_return);
        }
        let damped = self.penalty.holddown(p, now);
        let longest = p.damping.max_holddown.max(p.holddown);
        let by_sla = matches!(class, ReasonClass::Brownout | ReasonClass::Congested);
        // Doubled only where it changes something (not at the maximum).
        self.doubled = (by_sla && damped < longest).then_some(class);
        self.holddown = match self.doubled {
            Some(_) => (damped * SLA_FACTOR).min(longest),
            None => damped,
        };
        self.returned_at = None;
        self.healthy_since = None;
        self.down_at = Some(now);
        self.down_reason = (class, reason);
    }
}

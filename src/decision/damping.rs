//! Flap damping of one link: each failure adds to a penalty that decays
//! with a half-life; the hold-down a link must pass before it carries the
//! tunnel again doubles with each unit of penalty, up to a maximum.
//!
//! - penalty `P`: `+1` per failure (a change to `down` from `up` or
//!   `recovering`), halved every `half_life`, at most one failure above
//!   the level that gives the maximum hold-down;
//! - hold-down `holddown × 2^(P − 1)`, between `holddown` and
//!   `max_holddown`: one failure (`P = 1`) gives the base hold-down, three
//!   in quick succession about four times it;
//! - a failed return (the link goes down within `probation` of taking the
//!   tunnel back) raises the penalty to the maximum hold-down's level at
//!   once: the link cannot carry the traffic it had, however healthy it
//!   looks idle.

use std::collections::VecDeque;
use std::time::Duration;

use super::{Policy, Time};

/// The damping settings (part of [`Policy`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Damping {
    /// The penalty halves in this time.
    pub half_life: Duration,
    /// The longest hold-down.
    pub max_holddown: Duration,
    /// A link that goes down within this time of getting the tunnel back
    /// failed its return (under load): its hold-down goes to the maximum.
    pub probation: Duration,
}

impl Default for Damping {
    fn default() -> Self {
        Damping {
            half_life: Duration::from_secs(300),
            max_holddown: Duration::from_secs(600),
            probation: Duration::from_secs(30),
        }
    }
}

/// The hold-down grows from at least this (so that `holddown = "0s"` still damps).
const GROWTH_FLOOR: Duration = Duration::from_secs(1);

/// Failures older than this many half-lives are no longer named in reasons.
const NAMED_HALF_LIVES: u32 = 2;

/// The penalty of one link.
#[derive(Debug, Clone, Default)]
pub(super) struct Penalty {
    /// The value at `at`.
    value: f64,
    at: Time,
    /// Recent failures (within two half-lives), oldest first.
    failures: VecDeque<Time>,
    /// The last failure was a failed return.
    failed_return: bool,
}

/// The penalty that gives the maximum hold-down.
fn cap_level(p: &Policy) -> f64 {
    let growth = p.holddown.max(GROWTH_FLOOR).as_secs_f64();
    1.0 + (p.damping.max_holddown.as_secs_f64() / growth)
        .log2()
        .max(0.0)
}

/// The hold-down for a penalty.
pub(super) fn holddown(p: &Policy, penalty: f64) -> Duration {
    if penalty <= 1.0 {
        return p.holddown.min(p.damping.max_holddown.max(p.holddown));
    }
    let growth = p.holddown.max(GROWTH_FLOOR).as_secs_f64();
    let secs = growth * 2f64.powf((penalty - 1.0).min(64.0));
    Duration::from_secs_f64(secs.min(p.damping.max_holddown.as_secs_f64()))
        .max(p.holddown.min(p.damping.max_holddown))
}

/// "40 s", "10 min", "1 h 5 min".
pub(super) fn words(d: Duration) -> String {
    let s = d.as_secs_f64().round() as u64;
    match s {
        0..120 => format!("{s} s"),
        120..3600 => format!("{} min", (s + 30) / 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600 + 30) / 60),
    }
}

impl Penalty {
    /// The decayed value at `now`.
    pub fn value(&self, p: &Policy, now: Time) -> f64 {
        let half_life = p.damping.half_life.as_secs_f64();
        if self.value == 0.0 || half_life <= 0.0 {
            return if half_life <= 0.0 { 0.0 } else { self.value };
        }
        let age = now.saturating_sub(self.at).as_secs_f64();
        self.value * 0.5f64.powf(age / half_life)
    }

    /// A failure at `now`; `failed_return`: within the probation of a return.
    pub fn fail(&mut self, p: &Policy, now: Time, failed_return: bool) {
        let cap = cap_level(p);
        let mut v = self.value(p, now) + 1.0;
        if failed_return {
            v = v.max(cap);
        }
        self.value = v.min(cap + 1.0);
        self.at = now;
        self.failures.push_back(now);
        self.failed_return = failed_return;
        self.forget(p, now);
    }

    fn forget(&mut self, p: &Policy, now: Time) {
        let horizon = now.saturating_sub(p.damping.half_life * NAMED_HALF_LIVES);
        while self.failures.front().is_some_and(|t| *t < horizon) {
            self.failures.pop_front();
        }
    }

    /// The hold-down a failure now would give.
    pub fn next_holddown(&self, p: &Policy, now: Time) -> Duration {
        holddown(p, self.value(p, now) + 1.0)
    }

    /// The hold-down for the current penalty (right after a failure: the
    /// one that failure gave).
    pub fn holddown(&self, p: &Policy, now: Time) -> Duration {
        holddown(p, self.value(p, now))
    }

    /// Why a hold-down is longer than the base one, e.g. " after 3
    /// failures in 5 min" (from the first to the last of the failures of
    /// the last two half-lives); empty for the base hold-down.
    pub fn why(&self, p: &Policy, holddown: Duration, now: Time) -> String {
        // The base hold-down (a first failure, or old ones decayed away).
        if holddown.as_secs_f64().round() <= p.holddown.as_secs_f64().round() {
            return String::new();
        }
        let recent: Vec<Time> = self
            .failures
            .iter()
            .copied()
            .filter(|t| *t >= now.saturating_sub(p.damping.half_life * NAMED_HALF_LIVES))
            .collect();
        let mut text = match (recent.first(), recent.last(), recent.len()) {
            (Some(first), Some(last), n) if n > 1 => {
                format!(
                    " after {n} failures in {}",
                    words(last.saturating_sub(*first))
                )
            }
            _ => " after earlier failures".to_string(),
        };
        if self.failed_return {
            text.push_str(&format!(
                ", the last one within {} of a return",
                words(p.damping.probation)
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Time {
        Duration::from_secs(s)
    }

    #[test]
    fn holddown_doubles_per_failure_decays_and_is_capped() {
        let p = Policy::default();
        let mut pen = Penalty::default();
        pen.fail(&p, secs(100), false);
        assert_eq!(pen.holddown(&p, secs(100)), secs(10), "one failure: base");
        pen.fail(&p, secs(100), false);
        assert_eq!(pen.holddown(&p, secs(100)), secs(20));
        pen.fail(&p, secs(100), false);
        assert_eq!(pen.holddown(&p, secs(100)), secs(40));
        assert_eq!(pen.why(&p, secs(40), secs(100)), " after 3 failures in 0 s");
        // One half-life later the penalty is halved: 1.5 → 10 × 2^0.5.
        let later = secs(100 + 300);
        assert!((pen.value(&p, later) - 1.5).abs() < 1e-9);
        assert_eq!(pen.holddown(&p, later).as_secs(), 14);
        // Many failures: never beyond the maximum, and the penalty is
        // bounded, so it decays back in bounded time.
        for i in 0..50 {
            pen.fail(&p, later + secs(i), false);
        }
        assert_eq!(pen.holddown(&p, later + secs(50)), secs(600));
        let level = pen.value(&p, later + secs(49));
        assert!(level <= cap_level(&p) + 1.0 + 1e-9, "{level}");
        // A day later, a failure is a first failure again.
        assert_eq!(pen.next_holddown(&p, secs(86_400)), secs(10));
    }

    #[test]
    fn a_failed_return_goes_to_the_maximum_at_once() {
        let p = Policy::default();
        let mut pen = Penalty::default();
        pen.fail(&p, secs(10), false);
        pen.fail(&p, secs(30), true);
        assert_eq!(pen.holddown(&p, secs(30)), secs(600));
        assert_eq!(
            pen.why(&p, secs(600), secs(30)),
            " after 2 failures in 20 s, the last one within 30 s of a return"
        );
    }

    #[test]
    fn a_zero_holddown_still_damps() {
        let p = Policy {
            holddown: Duration::ZERO,
            ..Policy::default()
        };
        let mut pen = Penalty::default();
        pen.fail(&p, secs(1), false);
        assert_eq!(pen.holddown(&p, secs(1)), Duration::ZERO);
        pen.fail(&p, secs(1), false);
        assert_eq!(pen.holddown(&p, secs(1)), secs(2));
    }

    #[test]
    fn durations_in_words() {
        assert_eq!(words(secs(40)), "40 s");
        assert_eq!(words(secs(600)), "10 min");
        assert_eq!(words(secs(3900)), "1 h 5 min");
    }
}

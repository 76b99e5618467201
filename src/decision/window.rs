//! The SLA window of one link: what became of every probe sent in the last
//! `Sla::window`, by send time, and the judgement of the SLA over it.
//!
//! A probe is *echoed* (within the probe timeout, with its RTT), *lost* (no
//! echo within the timeout) or *late* (counted lost at its timeout, then
//! echoed: its real RTT is known). Lost and late are told apart: a late
//! echo is a queue, not a dead link (see `docs/failover.md`, "Queueing is
//! not death").

use std::collections::VecDeque;
use std::time::Duration;

use super::{ms, ReasonClass, Sla, Time};

/// What became of one probe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Fate {
    Echo(Duration),
    Lost,
    Late(Duration),
}

/// A late echo is matched to its lost probe by send time, within this
/// tolerance (the prober stamps send times in microseconds; probes are at
/// least 20 ms apart).
const MATCH: Duration = Duration::from_millis(1);

/// Counts over the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Stats {
    /// Resolved probes.
    pub n: usize,
    pub lost: usize,
    pub late: usize,
    /// Median RTT of the echoed and late probes.
    pub median: Option<Duration>,
    /// Median RTT of the late probes.
    pub median_late: Option<Duration>,
}

impl Stats {
    pub fn loss(&self) -> Option<f64> {
        (self.n > 0).then(|| self.lost as f64 / self.n as f64)
    }

    pub fn late_ratio(&self) -> Option<f64> {
        (self.n > 0).then(|| self.late as f64 / self.n as f64)
    }
}

/// An SLA violation: its class (brownout or congested) and its words.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Breach {
    pub class: ReasonClass,
    pub text: String,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Window {
    /// (send time, fate), oldest first.
    samples: VecDeque<(Time, Fate)>,
}

fn pct(part: usize, n: usize) -> f64 {
    part as f64 * 100.0 / n.max(1) as f64
}

/// A percentage above `limit` in words: "22%", or "15.4%" when rounding
/// would make it look equal to the limit.
fn above(value: f64, limit: f64) -> String {
    if value.round() <= limit.round() {
        format!("{value:.1}%")
    } else {
        format!("{value:.0}%")
    }
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    v.get(v.len() / 2).copied()
}

impl Window {
    /// Adds a resolved probe, in send order (outcomes resolve out of order).
    pub fn insert(&mut self, sent: Time, fate: Fate) {
        let at = self
            .samples
            .iter()
            .rposition(|(s, _)| *s <= sent)
            .map_or(0, |i| i + 1);
        self.samples.insert(at, (sent, fate));
    }

    /// A late echo of a probe counted lost: the probe becomes late.
    /// False when that probe is no longer in the window.
    pub fn mark_late(&mut self, sent: Time, rtt: Duration) -> bool {
        let found =
            self.samples.iter_mut().rev().find(|(s, f)| {
                *f == Fate::Lost && s.max(&sent).saturating_sub(*s.min(&sent)) <= MATCH
            });
        match found {
            Some(entry) => {
                entry.1 = Fate::Late(rtt);
                true
            }
            None => false,
        }
    }

    /// Drops the probes sent before `horizon`.
    pub fn expire(&mut self, horizon: Time) {
        while self.samples.front().is_some_and(|(s, _)| *s < horizon) {
            self.samples.pop_front();
        }
    }

    /// The lost probes at the end of the window, in send order: how many,
    /// and when the first of them was sent.
    pub fn trailing_lost(&self) -> (u32, Option<Time>) {
        let mut n = 0;
        let mut first = None;
        for (sent, fate) in self.samples.iter().rev() {
            if *fate != Fate::Lost {
                break;
            }
            n += 1;
            first = Some(*sent);
        }
        (n, first)
    }

    /// The lost probes at the end of the window that were sent at or after
    /// `since`: how many (the run ends at an answer or at `since`).
    pub fn trailing_lost_since(&self, since: Time) -> u32 {
        let run = self
            .samples
            .iter()
            .rev()
            .take_while(|(sent, fate)| *fate == Fate::Lost && *sent >= since)
            .count();
        u32::try_from(run).unwrap_or(u32::MAX)
    }

    /// The run of lost probes sent just before `sent`: how many.
    pub fn lost_run_before(&self, sent: Time) -> usize {
        self.samples
            .iter()
            .rev()
            .skip_while(|(s, _)| *s >= sent)
            .take_while(|(_, f)| *f == Fate::Lost)
            .count()
    }

    /// Forgets the run of lost probes sent just before `sent` (an outage
    /// that ended).
    pub fn forget_lost_run_before(&mut self, sent: Time) {
        let end = self
            .samples
            .iter()
            .rposition(|(s, _)| *s < sent)
            .map_or(0, |i| i + 1);
        let run = self.lost_run_before(sent);
        self.samples.drain(end - run..end);
    }

    /// The fate of the last probe, in send order.
    pub fn last(&self) -> Option<Fate> {
        self.samples.back().map(|(_, f)| *f)
    }

    /// Whether any probe in the window was answered (in time or late).
    pub fn has_answers(&self) -> bool {
        self.samples.iter().any(|(_, f)| *f != Fate::Lost)
    }

    pub fn stats(&self) -> Stats {
        let mut lost = 0;
        let mut late = 0;
        let mut rtts = Vec::with_capacity(self.samples.len());
        let mut lates = Vec::new();
        for (_, fate) in &self.samples {
            match fate {
                Fate::Echo(rtt) => rtts.push(*rtt),
                Fate::Lost => lost += 1,
                Fate::Late(rtt) => {
                    late += 1;
                    rtts.push(*rtt);
                    lates.push(*rtt);
                }
            }
        }
        Stats {
            n: self.samples.len(),
            lost,
            late,
            median: median(rtts),
            median_late: median(lates),
        }
    }

    /// The SLA violation, if the SLA is judged (enough probes) and
    /// violated. `base_rtt`: the link's lowest recent RTT, to tell the
    /// queue delay; `jitter`: the RFC 3550 jitter.
    ///
    /// Checked in this order:
    /// - probes not answered in time (lost + late) above `max_loss`:
    ///   *congested* when the late ones are at least a quarter of them
    ///   (a queue delays, and drops only what overflows), else a
    ///   *brownout* by loss;
    /// - median RTT above `max_rtt` (brownout);
    /// - jitter above `max_jitter` (brownout).
    pub fn breach(
        &self,
        sla: &Sla,
        base_rtt: Option<Duration>,
        jitter: Duration,
    ) -> Option<Breach> {
        let s = self.stats();
        if s.n < sla.min_samples.max(1) {
            return None;
        }
        let unanswered = s.lost + s.late;
        let limit = sla.max_loss * 100.0;
        if unanswered as f64 / s.n as f64 > sla.max_loss {
            if s.late > 0 && s.late * 4 >= unanswered {
                let late_rtt = s.median_late.unwrap_or_default();
                let queue = late_rtt.saturating_sub(base_rtt.unwrap_or_default());
                let mut text = format!("{:.0}% of probes late", pct(s.late, s.n));
                if s.lost > 0 {
                    text.push_str(&format!(", {:.0}% lost", pct(s.lost, s.n)));
                }
                text.push_str(&format!(
                    " (> {limit:.0}%), queue delay {} ms (late answers at {} ms)",
                    ms(queue),
                    ms(late_rtt)
                ));
                return Some(Breach {
                    class: ReasonClass::Congested,
                    text,
                });
            }
            let text = if s.late == 0 {
                format!("loss {} > {limit:.0}%", above(pct(s.lost, s.n), limit))
            } else {
                format!(
                    "loss {:.0}% and {:.0}% late > {limit:.0}%",
                    pct(s.lost, s.n),
                    pct(s.late, s.n)
                )
            };
            return Some(Breach {
                class: ReasonClass::Brownout,
                text,
            });
        }
        if let Some(rtt) = s.median.filter(|r| *r > sla.max_rtt) {
            return Some(Breach {
                class: ReasonClass::Brownout,
                text: format!("RTT {} ms > {} ms", ms(rtt), ms(sla.max_rtt)),
            });
        }
        if jitter > sla.max_jitter {
            return Some(Breach {
                class: ReasonClass::Brownout,
                text: format!("jitter {} ms > {} ms", ms(jitter), ms(sla.max_jitter)),
            });
        }
        None
    }
}

/// The lowest RTT of the last few minutes (a minimum per minute, five
/// minutes kept): the path's own delay, without queue. The queue delay of
/// a late echo is its RTT minus this.
#[derive(Debug, Clone, Default)]
pub(super) struct BaseRtt {
    /// (minute, lowest RTT in it), oldest first.
    minutes: VecDeque<(u64, Duration)>,
}

const BASE_MINUTES: u64 = 5;

impl BaseRtt {
    pub fn add(&mut self, now: Time, rtt: Duration) {
        let minute = now.as_secs() / 60;
        match self.minutes.back_mut() {
            Some((m, low)) if *m == minute => *low = (*low).min(rtt),
            _ => self.minutes.push_back((minute, rtt)),
        }
        while self
            .minutes
            .front()
            .is_some_and(|(m, _)| *m + BASE_MINUTES <= minute)
        {
            self.minutes.pop_front();
        }
    }

    pub fn get(&self) -> Option<Duration> {
        self.minutes.iter().map(|(_, low)| *low).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Time {
        Duration::from_millis(ms)
    }

    #[test]
    fn late_echoes_replace_their_lost_probe_and_end_its_run() {
        let mut w = Window::default();
        w.insert(at(0), Fate::Echo(at(5)));
        w.insert(at(200), Fate::Lost);
        w.insert(at(100), Fate::Lost);
        assert_eq!(w.trailing_lost(), (2, Some(at(100))));
        // The prober's stamp is in microseconds: matched within 1 ms.
        assert!(w.mark_late(at(100) + Duration::from_micros(400), at(420)));
        assert_eq!(w.trailing_lost(), (1, Some(at(200))));
        assert!(!w.mark_late(at(150), at(420)), "no probe sent then");
        let s = w.stats();
        assert_eq!((s.n, s.lost, s.late), (3, 1, 1));
        assert_eq!(s.median_late, Some(at(420)));
    }

    #[test]
    fn an_ended_outage_is_forgotten_and_nothing_else() {
        let mut w = Window::default();
        w.insert(at(0), Fate::Lost);
        w.insert(at(100), Fate::Echo(at(5)));
        for t in [200, 300, 400, 500] {
            w.insert(at(t), Fate::Lost);
        }
        assert_eq!(w.lost_run_before(at(600)), 4);
        w.forget_lost_run_before(at(600));
        w.insert(at(600), Fate::Echo(at(5)));
        let s = w.stats();
        assert_eq!((s.n, s.lost), (3, 1), "the older loss stays");
    }

    fn sla() -> Sla {
        Sla {
            window: Duration::from_secs(10),
            min_samples: 20,
            max_loss: 0.15,
            max_rtt: at(250),
            max_jitter: at(50),
            sustain: Duration::from_secs(2),
        }
    }

    #[test]
    fn late_probes_are_congestion_lost_ones_a_brownout() {
        let mut queued = Window::default();
        let mut lossy = Window::default();
        for i in 0..100u64 {
            let (q, l) = match i % 5 {
                0 => (Fate::Late(at(408)), Fate::Lost),
                _ => (Fate::Echo(at(8)), Fate::Echo(at(8))),
            };
            queued.insert(at(100 * i), q);
            lossy.insert(at(100 * i), l);
        }
        let b = queued.breach(&sla(), Some(at(8)), at(0)).expect("breach");
        assert_eq!(b.class, ReasonClass::Congested);
        assert_eq!(
            b.text,
            "20% of probes late (> 15%), queue delay 400 ms (late answers at 408 ms)"
        );
        let b = lossy.breach(&sla(), Some(at(8)), at(0)).expect("breach");
        assert_eq!(b.class, ReasonClass::Brownout);
        assert_eq!(b.text, "loss 20% > 15%");
        // Too few probes: not judged.
        let mut few = Window::default();
        for i in 0..19u64 {
            few.insert(at(100 * i), Fate::Lost);
        }
        assert_eq!(few.breach(&sla(), None, at(0)), None);
    }

    #[test]
    fn base_rtt_is_the_lowest_of_the_last_minutes() {
        let mut b = BaseRtt::default();
        b.add(Duration::from_secs(10), at(8));
        b.add(Duration::from_secs(70), at(30));
        assert_eq!(b.get(), Some(at(8)));
        b.add(Duration::from_secs(5 * 60 + 10), at(40));
        assert_eq!(b.get(), Some(at(30)), "the first minute expired");
    }
}

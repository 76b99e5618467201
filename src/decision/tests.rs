//! Synthetic probe streams on a fake clock: every failover rule, no sleep.

use super::*;

const FIBER: usize = 0;
const LTE: usize = 1;

/// A deterministic random generator (xorshift64*), for random loss.
struct Rng(u64);

impl Rng {
    fn chance(&mut self, p: f64) -> bool {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// Probes the uplinks the way the daemon's probers do: fast on the active
/// uplink (and on every uplink while the active one is not up), slowly on
/// a standby one; a probe without answer within the timeout is lost.
struct Sim {
    engine: Engine,
    now: Time,
    next_probe: Vec<Time>,
    pending: Vec<(Time, Sample)>,
    decisions: Vec<Decision>,
    changes: Vec<StateChange>,
    fast: Duration,
    slow: Duration,
    timeout: Duration,
    rng: Rng,
}

fn t(secs: f64) -> Time {
    Duration::from_secs_f64(secs)
}

impl Sim {
    fn new() -> Sim {
        Sim::with(Policy::default(), Duration::from_secs(1))
    }

    fn with(policy: Policy, slow: Duration) -> Sim {
        let uplinks = vec![("fiber".to_string(), 0), ("lte".to_string(), 1)];
        Sim {
            engine: Engine::new(policy, &uplinks, FIBER),
            now: Time::ZERO,
            next_probe: vec![Time::ZERO; 2],
            pending: Vec::new(),
            decisions: Vec::new(),
            changes: Vec::new(),
            fast: Duration::from_millis(100),
            slow,
            timeout: Duration::from_millis(300),
            rng: Rng(0x9e37_79b9_7f4a_7c15),
        }
    }

    fn interval(&self, uplink: usize) -> Duration {
        let active = self.engine.active();
        if uplink == active || self.engine.quality(active).health != Health::Up {
            self.fast
        } else {
            self.slow
        }
    }

    /// Runs until `until`; `link(uplink, now, rng)` is the RTT of a probe
    /// sent now, or `None` if the network drops it.
    fn run(
        &mut self,
        until: Time,
        mut link: impl FnMut(usize, Time, &mut Rng) -> Option<Duration>,
    ) {
        let step = Duration::from_millis(10);
        while self.now < until {
            for u in 0..2 {
                if self.now >= self.next_probe[u] {
                    let sent = self.now;
                    match link(u, sent, &mut self.rng) {
                        Some(rtt) if rtt <= self.timeout => self.pending.push((
                            sent + rtt,
                            Sample {
                                uplink: u,
                                sent,
                                outcome: Outcome::Echo { rtt },
                            },
                        )),
                        Some(rtt) => {
                            self.pending.push((
                                sent + self.timeout,
                                Sample {
                                    uplink: u,
                                    sent,
                                    outcome: Outcome::Lost,
                                },
                            ));
                            self.pending.push((
                                sent + rtt,
                                Sample {
                                    uplink: u,
                                    sent,
                                    outcome: Outcome::Late { rtt },
                                },
                            ));
                        }
                        None => self.pending.push((
                            sent + self.timeout,
                            Sample {
                                uplink: u,
                                sent,
                                outcome: Outcome::Lost,
                            },
                        )),
                    }
                    self.next_probe[u] = sent + self.interval(u);
                }
            }
            self.pending.sort_by_key(|(at, _)| *at);
            while self.pending.first().is_some_and(|(at, _)| *at <= self.now) {
                let (_, sample) = self.pending.remove(0);
                let d = self.engine.observe(self.now, sample);
                self.decisions.extend(d);
            }
            let d = self.engine.tick(self.now);
            self.decisions.extend(d);
            self.changes.extend(self.engine.take_changes());
            self.now += step;
        }
    }
}

const FIBER_RTT: Duration = Duration::from_millis(8);
const LTE_RTT: Duration = Duration::from_millis(45);

fn healthy(u: usize) -> Option<Duration> {
    Some(if u == FIBER { FIBER_RTT } else { LTE_RTT })
}

/// Both uplinks healthy for 5 s: both up, fiber active, no decision.
fn warmed_up() -> Sim {
    let mut sim = Sim::new();
    sim.run(t(5.0), |u, _, _| healthy(u));
    assert_eq!(sim.engine.quality(FIBER).health, Health::Up);
    assert_eq!(sim.engine.quality(LTE).health, Health::Up);
    assert!(sim.decisions.is_empty());
    sim
}

#[test]
fn dead_link_switches_in_under_a_second() {
    let mut sim = warmed_up();
    sim.run(t(10.0), |u, now, _| {
        if u == FIBER && now >= t(5.0) {
            None
        } else {
            healthy(u)
        }
    });
    assert_eq!(sim.decisions.len(), 1, "{:#?}", sim.decisions);
    let d = &sim.decisions[0];
    assert_eq!((d.from, d.to, d.class), (FIBER, LTE, ReasonClass::Dead));
    let detection = d.at - t(5.0);
    assert!(
        detection < Duration::from_secs(1),
        "detected after {detection:?}"
    );
    assert!(
        d.reason.starts_with("fiber: 4 probes lost in "),
        "{}",
        d.reason
    );
    assert_eq!(sim.engine.quality(FIBER).health, Health::Down);
}

#[test]
fn brownout_by_loss_switches() {
    let mut sim = warmed_up();
    sim.run(t(20.0), |u, now, rng| {
        if u == FIBER && now >= t(5.0) && rng.chance(0.30) {
            None
        } else {
            healthy(u)
        }
    });
    let d = sim.decisions.first().expect("a switch");
    assert_eq!(
        (d.to, d.class),
        (LTE, ReasonClass::Brownout),
        "{}",
        d.reason
    );
    assert!(
        d.reason.starts_with("fiber: brownout: loss "),
        "{}",
        d.reason
    );
    assert!(
        d.at - t(5.0) < Duration::from_secs(12),
        "after {:?}",
        d.at - t(5.0)
    );
    assert_eq!(
        sim.decisions.len(),
        1,
        "no flapping back while the loss lasts"
    );
}

#[test]
fn brownout_by_rtt_switches() {
    let mut sim = warmed_up();
    // +272 ms: under the probe timeout, over the SLA's 250 ms.
    sim.run(t(15.0), |u, now, _| {
        if u == FIBER && now >= t(5.0) {
            Some(Duration::from_millis(280))
        } else {
            healthy(u)
        }
    });
    let d = sim.decisions.first().expect("a switch");
    assert_eq!(d.class, ReasonClass::Brownout);
    assert!(d.reason.contains("RTT 280 ms > 250 ms"), "{}", d.reason);
}

#[test]
fn delay_beyond_timeout_switches_fast_and_says_so() {
    let mut sim = warmed_up();
    sim.run(t(10.0), |u, now, _| {
        if u == FIBER && now >= t(5.0) {
            Some(Duration::from_millis(408))
        } else {
            healthy(u)
        }
    });
    let d = sim.decisions.first().expect("a switch");
    assert_eq!(d.class, ReasonClass::Dead);
    assert!(d.at - t(5.0) < Duration::from_secs(1));
    assert!(d.reason.contains("late answers at 408 ms"), "{}", d.reason);
}

/// "2 % loss" on a link, as iptables applies it in the test bed, drops
/// 2 % in each direction: a probe round trip is lost with probability
/// 1 - 0.98² ≈ 4 %. Both rates are tested.
#[test]
fn two_percent_random_loss_never_switches() {
    for (seed, p) in [
        (1u64, 0.02),
        (0xdead_beef, 0.0396),
        (0x1234_5678_9abc, 0.0396),
        (7, 0.0396),
        (8, 0.0396),
    ] {
        let mut sim = warmed_up();
        sim.rng = Rng(seed);
        sim.run(t(605.0), |u, _, rng| {
            if u == FIBER && rng.chance(p) {
                None
            } else {
                healthy(u)
            }
        });
        assert!(
            sim.decisions.is_empty(),
            "seed {seed:#x}: {:#?}",
            sim.decisions
        );
        assert_eq!(sim.engine.quality(FIBER).health, Health::Up);
        let loss = sim.engine.quality(FIBER).loss.unwrap();
        assert!(loss < 0.15, "window loss {loss}");
    }
}

#[test]
fn flapping_link_is_not_followed() {
    let mut sim = warmed_up();
    // 3 s dead, 3 s fine, for three minutes.
    sim.run(t(185.0), |u, now, _| {
        let flap_down = now >= t(5.0) && ((now.as_secs_f64() - 5.0) / 3.0) as u64 % 2 == 0;
        if u == FIBER && flap_down {
            None
        } else {
            healthy(u)
        }
    });
    assert_eq!(sim.decisions.len(), 1, "{:#?}", sim.decisions);
    assert_eq!(sim.decisions[0].to, LTE);
    assert_eq!(sim.engine.active(), LTE);
    // The flaps are seen (down/recovering), just not followed.
    let downs = sim
        .changes
        .iter()
        .filter(|c| c.uplink == FIBER && c.to == Health::Down)
        .count();
    assert!(downs > 10, "fiber went down {downs} times");
}

#[test]
fn recovery_returns_once_after_the_holddown() {
    let mut sim = warmed_up();
    sim.run(t(60.0), |u, now, _| {
        if u == FIBER && now >= t(5.0) && now < t(15.0) {
            None
        } else {
            healthy(u)
        }
    });
    assert_eq!(sim.decisions.len(), 2, "{:#?}", sim.decisions);
    let back = &sim.decisions[1];
    assert_eq!(
        (back.from, back.to, back.class),
        (LTE, FIBER, ReasonClass::Recovered)
    );
    let holddown = sim.engine.policy().holddown;
    assert!(
        back.at - t(15.0) >= holddown,
        "returned after {:?}",
        back.at - t(15.0)
    );
    assert!(
        back.at - t(15.0) < holddown + Duration::from_secs(13),
        "returned after {:?}",
        back.at - t(15.0)
    );
    assert!(
        back.reason
            .contains("fiber: healthy for 10 s, preferred over lte"),
        "{}",
        back.reason
    );
}

#[test]
fn both_down_keeps_the_last_then_takes_the_first_back() {
    let mut sim = warmed_up();
    sim.run(
        t(25.0),
        |_, now, _| if now >= t(5.0) { None } else { Some(FIBER_RTT) },
    );
    // Fiber went down first; 4G was down too by then, or went down after a switch.
    assert_eq!(sim.engine.quality(FIBER).health, Health::Down);
    assert_eq!(sim.engine.quality(LTE).health, Health::Down);
    let before = sim.decisions.len();
    assert!(before <= 1, "{:#?}", sim.decisions);
    let kept = sim.engine.active();
    sim.run(t(40.0), |u, now, _| {
        if u == LTE && now >= t(25.0) {
            healthy(u)
        } else {
            None
        }
    });
    if kept == FIBER {
        let d = sim
            .decisions
            .last()
            .expect("switch to the 4G that came back");
        assert_eq!(d.to, LTE);
        // Both went down together (as when the hub is unreachable): fiber
        // had HUB_SETTLE to come back first.
        let after = d.at - t(25.0);
        assert!(
            after >= HUB_SETTLE && after < HUB_SETTLE + Duration::from_secs(2),
            "after {after:?}"
        );
        assert!(
            d.reason.contains("answering again while no uplink is up"),
            "{}",
            d.reason
        );
    }
    assert_eq!(sim.engine.active(), LTE);
}

#[test]
fn standby_down_is_reported_without_switch() {
    let mut sim = warmed_up();
    sim.run(t(15.0), |u, now, _| {
        if u == LTE && now >= t(5.0) {
            None
        } else {
            healthy(u)
        }
    });
    assert!(sim.decisions.is_empty());
    assert_eq!(sim.engine.quality(LTE).health, Health::Down);
    let change = sim
        .changes
        .iter()
        .find(|c| c.uplink == LTE && c.to == Health::Down)
        .unwrap();
    assert!(
        change.reason.starts_with("lte: 4 probes lost"),
        "{}",
        change.reason
    );
}

#[test]
fn an_uplink_that_never_answered_is_not_chosen() {
    let mut sim = Sim::new();
    sim.run(t(10.0), |_, _, _| None);
    assert!(sim.decisions.is_empty());
    assert_eq!(sim.engine.active(), FIBER);
    assert_eq!(sim.engine.quality(LTE).health, Health::Down);
}

#[test]
fn jitter_follows_rfc3550() {
    let mut e = Engine::new(Policy::default(), &[("a".into(), 0)], 0);
    for (i, ms) in [10u64, 30, 10, 30].iter().enumerate() {
        let sent = Duration::from_millis(100 * i as u64);
        e.observe(
            sent,
            Sample {
                uplink: 0,
                sent,
                outcome: Outcome::Echo {
                    rtt: Duration::from_millis(*ms),
                },
            },
        );
    }
    // J1 = 20/16, J2 = J1 + (20 - J1)/16, J3 likewise (ms).
    let mut j = 0.0f64;
    for _ in 0..3 {
        j += (20.0 - j) / 16.0;
    }
    let got = e.quality(0).jitter.as_secs_f64() * 1000.0;
    assert!((got - j).abs() < 1e-6, "{got} vs {j}");
}

#[test]
fn standby_answering_first_at_start_is_no_reason_to_switch() {
    let uplinks = [("fiber".to_string(), 0), ("lte".to_string(), 1)];
    let at = Duration::from_millis;
    let echo = |uplink, sent| Sample {
        uplink,
        sent,
        outcome: Outcome::Echo { rtt: at(5) },
    };
    let mut e = Engine::new(Policy::default(), &uplinks, FIBER);
    assert_eq!(e.observe(at(5), echo(LTE, at(0))), None);
    assert_eq!(e.observe(at(6), echo(FIBER, at(1))), None);
    assert_eq!(e.active(), FIBER);
    // A fiber slow to answer at start (its first handshake takes a while)
    // is not declared dead during the start-up grace...
    let mut e = Engine::new(Policy::default(), &uplinks, FIBER);
    assert_eq!(e.observe(at(5), echo(LTE, at(0))), None);
    let lost = |n: u64| Sample {
        uplink: FIBER,
        sent: at(100 * n),
        outcome: Outcome::Lost,
    };
    for n in 0..10 {
        assert_eq!(e.observe(at(100 * n + 300), lost(n)), None);
    }
    assert_eq!(e.quality(FIBER).health, Health::Unknown);
    assert_eq!(e.observe(at(1400), echo(FIBER, at(1390))), None);
    assert_eq!(e.quality(FIBER).health, Health::Up);
    // ... but a fiber dead from the start fails over once the grace is over.
    let mut e = Engine::new(Policy::default(), &uplinks, FIBER);
    assert_eq!(e.observe(at(5), echo(LTE, at(0))), None);
    for n in 0..47 {
        assert_eq!(e.observe(at(100 * n + 300), lost(n)), None, "probe {n}");
    }
    // The 4G answers a probe sent while the fiber was failing.
    assert_eq!(e.observe(at(4950), echo(LTE, at(4900))), None);
    let d = e.tick(STARTUP_GRACE).expect("switch after the grace");
    assert_eq!((d.to, d.class), (LTE, ReasonClass::Dead));
}

#[test]
fn uplinks_back_together_after_all_down_are_compared_by_priority() {
    // The hub was unreachable (both uplinks down at start-up, as when an
    // annex starts before its hub); then both answer, the 4G 1 ms first.
    let mut sim = Sim::new();
    sim.run(t(6.0), |_, _, _| None);
    assert_eq!(sim.engine.quality(FIBER).health, Health::Down);
    assert_eq!(sim.engine.quality(LTE).health, Health::Down);
    sim.run(t(30.0), |u, _, _| {
        Some(if u == LTE {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(2)
        })
    });
    assert!(sim.decisions.is_empty(), "{:#?}", sim.decisions);
    assert_eq!(sim.engine.active(), FIBER);
    assert_eq!(sim.engine.quality(FIBER).health, Health::Up);
}

#[test]
fn a_hub_restart_moves_no_tunnel() {
    // Both uplinks lose the hub at once (it restarts); the 4G's probe
    // connection comes back 1.5 s before the fiber's.
    let mut sim = warmed_up();
    sim.run(t(12.0), |u, now, _| {
        let back = if u == LTE { t(10.0) } else { t(11.5) };
        if now >= t(5.0) && now < back {
            None
        } else {
            healthy(u)
        }
    });
    sim.run(t(30.0), |u, _, _| healthy(u));
    assert!(sim.decisions.is_empty(), "{:#?}", sim.decisions);
    assert_eq!(sim.engine.active(), FIBER);
    assert_eq!(sim.engine.quality(FIBER).health, Health::Up);
}

#[test]
fn an_active_uplink_that_died_alone_is_left_fast_even_after_all_down() {
    // Fiber dies; the 4G dies 5 s later (not together), then comes back:
    // the tunnel moves after ALL_DOWN_SETTLE, not HUB_SETTLE.
    let mut sim = warmed_up();
    sim.run(t(6.0), |u, now, _| {
        if u == FIBER && now >= t(5.0) {
            None
        } else {
            healthy(u)
        }
    });
    let first = sim.decisions.len();
    sim.run(t(30.0), |u, now, _| {
        if u == FIBER || (now >= t(10.0) && now < t(20.0)) {
            None
        } else {
            healthy(u)
        }
    });
    assert_eq!(sim.engine.active(), LTE, "{:#?}", sim.decisions);
    let _ = first;
}

#[test]
fn probes_lost_before_the_first_answer_are_no_brownout() {
    // The fiber's first QUIC handshake takes 0.8 s: 8 probes lost, then
    // a clean link. Without forgetting them, 8 of the first 20 probes
    // would be a 40 % loss brownout right after start.
    let mut sim = Sim::new();
    sim.run(t(30.0), |u, now, _| {
        if u == FIBER && now < t(0.8) {
            None
        } else {
            healthy(u)
        }
    });
    assert!(sim.decisions.is_empty(), "{:#?}", sim.decisions);
    assert_eq!(sim.engine.quality(FIBER).health, Health::Up);
    assert_eq!(sim.engine.quality(FIBER).loss, Some(0.0));
}

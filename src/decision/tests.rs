//! Synthetic probe streams on a fake clock: every failover rule, no sleep.
//!
//! With one hub (most tests) a path is an uplink: `FIBER` and `LTE`. The
//! tests of the path rules (two hubs) are at the end.

use super::*;

const FIBER: PathId = PathId { hub: 0, uplink: 0 };
const LTE: PathId = PathId { hub: 0, uplink: 1 };

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

/// Probes the paths the way the daemon's probers do: fast where the
/// engine wants it (`Engine::wants_fast_probes`), slowly on a standby one
/// (`Engine::standby`: a metered uplink's standby probes spread over the
/// hubs); a probe without answer within the timeout is lost (and late if
/// its echo comes after). Ticks the engine every 50 ms, as the failover
/// task does.
struct Sim {
    engine: Engine,
    now: Time,
    next_probe: Vec<Time>,
    pending: Vec<(Time, Sample)>,
    decisions: Vec<Decision>,
    changes: Vec<StateChange>,
    fast: Duration,
    slow: Duration,
    metered: Duration,
    timeout: Duration,
    rng: Rng,
    /// When the tunnel last moved.
    active_since: Time,
    /// Probes sent per path, for the probing cost.
    sent: Vec<u64>,
}

fn t(secs: f64) -> Time {
    Duration::from_secs_f64(secs)
}

impl Sim {
    fn new() -> Sim {
        Sim::with(Policy::default(), Duration::from_secs(1))
    }

    /// One hub; the 4G probed like the fiber on standby (as before paths).
    fn with(policy: Policy, slow: Duration) -> Sim {
        let uplinks = [
            ("fiber".to_string(), 0, false),
            ("lte".to_string(), 1, false),
        ];
        Sim::over(policy, &[("hub".to_string(), 0)], &uplinks, slow)
    }

    fn over(
        policy: Policy,
        hubs: &[(String, u32)],
        uplinks: &[(String, u32, bool)],
        slow: Duration,
    ) -> Sim {
        let engine = Engine::new(policy, hubs, uplinks, PathId::new(0, 0));
        let paths = engine.paths().count();
        Sim {
            engine,
            now: Time::ZERO,
            next_probe: vec![Time::ZERO; paths],
            pending: Vec::new(),
            decisions: Vec::new(),
            changes: Vec::new(),
            fast: Duration::from_millis(100),
            slow,
            metered: Duration::from_secs(30),
            timeout: Duration::from_millis(300),
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            active_since: Time::ZERO,
            sent: vec![0; paths],
        }
    }

    /// The rate the failover task would set (`Failover::set_rates`).
    fn interval(&self, path: PathId) -> Duration {
        if self.engine.wants_fast_probes(path) {
            self.fast
        } else {
            match self.engine.standby(path) {
                Standby::Regular => self.slow,
                Standby::Metered { hubs } => self.metered * hubs,
            }
        }
    }

    /// Runs until `until`; `link(path, now, rng)` is the RTT of a probe
    /// sent now, or `None` if the network drops it.
    fn run(
        &mut self,
        until: Time,
        mut link: impl FnMut(PathId, Time, &mut Rng) -> Option<Duration>,
    ) {
        self.run_loaded(until, |p, rng| link(p.path, p.sent, rng));
    }

    /// Like [`Sim::run`], with what the network knows of the load: which
    /// path carries the tunnel, and since when.
    fn run_loaded(
        &mut self,
        until: Time,
        mut link: impl FnMut(&Probe, &mut Rng) -> Option<Duration>,
    ) {
        let step = Duration::from_millis(10);
        // The daemon's failover task ticks every 50 ms (and at each sample).
        let tick = Duration::from_millis(50);
        let paths: Vec<PathId> = self.engine.paths().collect();
        while self.now < until {
            for (i, path) in paths.iter().copied().enumerate() {
                // A faster rate applies at once, as in the prober.
                let interval = self.interval(path);
                self.next_probe[i] = self.next_probe[i].min(self.now + interval);
                if self.now >= self.next_probe[i] {
                    let sent = self.now;
                    self.sent[i] += 1;
                    let probe = Probe {
                        path,
                        sent,
                        active: self.engine.active(),
                        active_since: self.active_since,
                    };
                    let pending = &mut self.pending;
                    let mut resolve = |at: Time, outcome| {
                        let sample = Sample {
                            path,
                            sent,
                            outcome,
                        };
                        let i = pending.partition_point(|(t, _)| *t <= at);
                        pending.insert(i, (at, sample));
                    };
                    match link(&probe, &mut self.rng) {
                        Some(rtt) if rtt <= self.timeout => {
                            resolve(sent + rtt, Outcome::Echo { rtt })
                        }
                        Some(rtt) => {
                            resolve(sent + self.timeout, Outcome::Lost);
                            resolve(sent + rtt, Outcome::Late { rtt });
                        }
                        None => resolve(sent + self.timeout, Outcome::Lost),
                    }
                    self.next_probe[i] = sent + interval;
                }
            }
            let mut ticked = false;
            while self.pending.first().is_some_and(|(at, _)| *at <= self.now) {
                let (_, sample) = self.pending.remove(0);
                let d = self.engine.observe(self.now, sample);
                self.decide(d);
                ticked = true;
            }
            if !ticked && (self.now.as_millis() % tick.as_millis()) == 0 {
                let d = self.engine.tick(self.now);
                self.decide(d);
            }
            self.changes.extend(self.engine.take_changes());
            self.now += step;
        }
    }

    fn decide(&mut self, d: Option<Decision>) {
        if let Some(d) = d {
            self.active_since = d.at;
            self.decisions.push(d);
        }
    }

    /// Decisions at or after `from`.
    fn switches_since(&self, from: Time) -> Vec<&Decision> {
        self.decisions.iter().filter(|d| d.at >= from).collect()
    }
}

/// A probe as the simulated network sees it.
struct Probe {
    path: PathId,
    sent: Time,
    /// The path carrying the tunnel when it was sent, and since when.
    active: PathId,
    active_since: Time,
}

const FIBER_RTT: Duration = Duration::from_millis(8);
const LTE_RTT: Duration = Duration::from_millis(45);

/// The RTT of a path whose network is fine: its uplink's.
fn healthy(p: PathId) -> Option<Duration> {
    Some(if p.uplink == FIBER.uplink {
        FIBER_RTT
    } else {
        LTE_RTT
    })
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

/// Rule changed on purpose (issue 14, "queueing is not death"): a delay
/// beyond the probe timeout was a dead link after four lost probes
/// (0.7 s); its echoes come back late, so it is a queue: congested, a
/// brownout by late probes, with the queue delay in the reason.
#[test]
fn delay_beyond_timeout_is_congestion_not_death() {
    let mut sim = warmed_up();
    sim.run(t(15.0), |u, now, _| {
        if u == FIBER && now >= t(5.0) {
            Some(Duration::from_millis(408))
        } else {
            healthy(u)
        }
    });
    let d = sim.decisions.first().expect("a switch");
    assert_eq!(d.class, ReasonClass::Congested, "{}", d.reason);
    // 15 % of the window's probes late (1.5 s), sustained for 2 s.
    let after = d.at - t(5.0);
    assert!(after < Duration::from_secs(5), "after {after:?}");
    assert!(d.reason.starts_with("fiber: congested: "), "{}", d.reason);
    assert!(
        d.reason
            .contains("queue delay 400 ms (late answers at 408 ms)"),
        "{}",
        d.reason
    );
    assert!(
        !sim.changes
            .iter()
            .any(|c| c.path == FIBER && c.reason.contains("probes lost")),
        "{:#?}",
        sim.changes
    );
    assert_eq!(sim.decisions.len(), 1, "{:#?}", sim.decisions);
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
        .filter(|c| c.path == FIBER && c.to == Health::Down)
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
        .find(|c| c.path == LTE && c.to == Health::Down)
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
    let a = PathId::new(0, 0);
    let mut e = Engine::new(
        Policy::default(),
        &[("hub".into(), 0)],
        &[("a".into(), 0, false)],
        a,
    );
    for (i, ms) in [10u64, 30, 10, 30].iter().enumerate() {
        let sent = Duration::from_millis(100 * i as u64);
        e.observe(
            sent,
            Sample {
                path: a,
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
    let got = e.quality(a).jitter.as_secs_f64() * 1000.0;
    assert!((got - j).abs() < 1e-6, "{got} vs {j}");
}

#[test]
fn standby_answering_first_at_start_is_no_reason_to_switch() {
    let hubs = [("hub".to_string(), 0)];
    let uplinks = [
        ("fiber".to_string(), 0, false),
        ("lte".to_string(), 1, true),
    ];
    let at = Duration::from_millis;
    let echo = |path, sent| Sample {
        path,
        sent,
        outcome: Outcome::Echo { rtt: at(5) },
    };
    let mut e = Engine::new(Policy::default(), &hubs, &uplinks, FIBER);
    assert_eq!(e.observe(at(5), echo(LTE, at(0))), None);
    assert_eq!(e.observe(at(6), echo(FIBER, at(1))), None);
    assert_eq!(e.active(), FIBER);
    // A fiber slow to answer at start (its first handshake takes a while)
    // is not declared dead during the start-up grace...
    let mut e = Engine::new(Policy::default(), &hubs, &uplinks, FIBER);
    assert_eq!(e.observe(at(5), echo(LTE, at(0))), None);
    let lost = |n: u64| Sample {
        path: FIBER,
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
    let mut e = Engine::new(Policy::default(), &hubs, &uplinks, FIBER);
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

/// The round-trip loss of a probe when each direction drops `p`.
fn round_trip(p: f64) -> f64 {
    1.0 - (1.0 - p) * (1.0 - p)
}

/// The fiber's health changes, as (time, to, reason).
fn fiber_changes(sim: &Sim) -> Vec<(Time, Health, String)> {
    sim.changes
        .iter()
        .filter(|c| c.path == FIBER)
        .map(|c| (c.at, c.to, c.reason.clone()))
        .collect()
}

/// Rule 3, as it was not applied: a fiber down by brownout was seen
/// `recovering` with loss 0.0 two seconds later while the drops went on
/// (its window was emptied by the first echo after a few losses in a row,
/// then judged on too few probes). It keeps its window and stays down.
#[test]
fn a_link_down_by_brownout_keeps_what_it_saw() {
    for seed in [1u64, 2, 3] {
        let mut sim = warmed_up();
        sim.rng = Rng(seed);
        let lossy = |u: PathId, now: Time, rng: &mut Rng| {
            if u == FIBER && now >= t(5.0) && rng.chance(0.27) {
                None
            } else {
                healthy(u)
            }
        };
        sim.run(t(20.0), lossy);
        let d = sim.decisions.first().expect("a switch");
        assert_eq!(d.class, ReasonClass::Brownout, "{}", d.reason);
        let mut at = sim.now;
        while at < t(120.0) {
            at += t(1.0);
            sim.run(at, lossy);
            let q = sim.engine.quality(FIBER);
            assert_eq!(q.health, Health::Down, "seed {seed} at {at:?}: {q:?}");
            let loss = q.loss.expect("judged");
            assert!(loss > 0.15, "seed {seed} at {at:?}: loss {loss}");
        }
        assert_eq!(sim.decisions.len(), 1, "{:#?}", sim.decisions);
    }
}

/// 25 % loss per direction (about 44 % of round trips): one switch, and
/// the fiber never passes a hold-down (issue 14 saw 11 switches in 150 s).
#[test]
fn a_constantly_lossy_link_switches_once() {
    for seed in [1u64, 0xdead_beef, 42, 7] {
        let mut sim = warmed_up();
        sim.rng = Rng(seed);
        sim.run(t(605.0), |u, now, rng| {
            if u == FIBER && now >= t(5.0) && rng.chance(round_trip(0.25)) {
                None
            } else {
                healthy(u)
            }
        });
        assert_eq!(sim.decisions.len(), 1, "seed {seed}: {:#?}", sim.decisions);
        assert_eq!(sim.engine.active(), LTE);
        let back_up = fiber_changes(&sim)
            .into_iter()
            .filter(|(at, to, _)| *to == Health::Up && *at > t(5.0))
            .count();
        assert_eq!(back_up, 0, "seed {seed}: the fiber came back up");
    }
}

/// Loss rising from 0 to 40 % per direction over 5 minutes, then staying:
/// exactly one switch (issue 14 saw 5 and 9).
#[test]
fn a_loss_ramp_switches_exactly_once() {
    for seed in [1u64, 2, 3, 0xdead_beef, 0x1234_5678_9abc, 99] {
        let mut sim = warmed_up();
        sim.rng = Rng(seed);
        sim.run(t(605.0), |u, now, rng| {
            let per_direction = 0.40 * ((now.as_secs_f64() - 5.0) / 300.0).clamp(0.0, 1.0);
            if u == FIBER && rng.chance(round_trip(per_direction)) {
                None
            } else {
                healthy(u)
            }
        });
        assert_eq!(sim.decisions.len(), 1, "seed {seed}: {:#?}", sim.decisions);
        assert_eq!(sim.decisions[0].class, ReasonClass::Brownout);
    }
}

/// A fiber that is fine while idle and saturates 1.5 s after it carries
/// the tunnel (a line too small for the traffic, a deep queue: echoes
/// late at 400 ms and a few losses). Idle, it passes any hold-down; the
/// first return fails under load, and the hold-down goes to its maximum:
/// at most 3 switches in 10 minutes (issue 14 saw 40 in 4 minutes).
#[test]
fn a_link_that_fails_only_under_load_is_not_followed() {
    let saturated = |p: &Probe, rng: &mut Rng| -> Option<Duration> {
        let loaded = p.active == FIBER && p.sent >= t(5.0) && p.sent >= p.active_since + t(1.5);
        if p.path != FIBER || !loaded {
            healthy(p.path)
        } else if rng.chance(0.03) {
            None
        } else {
            Some(Duration::from_millis(400))
        }
    };
    let mut sim = warmed_up();
    sim.run_loaded(t(605.0), saturated);
    let switches = sim.switches_since(t(5.0));
    assert!(switches.len() <= 3, "{switches:#?}");
    let first = switches.first().expect("the saturated fiber is left");
    assert_eq!(first.class, ReasonClass::Congested, "{}", first.reason);
    assert!(first.reason.contains("queue delay 39"), "{}", first.reason);
    assert_eq!(sim.engine.active(), LTE);
    // The failed return is named, with the hold-down it gave.
    let max = sim.engine.policy().damping.max_holddown;
    if switches.len() == 3 {
        assert_eq!(sim.engine.quality(FIBER).holddown, max);
        let reasons: Vec<String> = fiber_changes(&sim)
            .into_iter()
            .filter(|(_, to, _)| *to == Health::Recovering)
            .map(|(_, _, r)| r)
            .collect();
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("hold-down 10 min after 2 failures in")
                    && r.contains("the last one within 30 s of a return")),
            "{reasons:#?}"
        );
    }

    // The same by loss instead of a queue: half the probes lost while loaded.
    let mut sim = warmed_up();
    sim.run_loaded(t(605.0), |p, rng| {
        let loaded = p.active == FIBER && p.sent >= t(5.0) && p.sent >= p.active_since + t(1.5);
        if p.path == FIBER && loaded && rng.chance(0.5) {
            None
        } else {
            healthy(p.path)
        }
    });
    let switches = sim.switches_since(t(5.0));
    assert!(switches.len() <= 3, "{switches:#?}");
    assert_eq!(switches[0].class, ReasonClass::Brownout);
}

/// One clean outage: back after the base hold-down, not later, and the
/// reason names no earlier failure.
#[test]
fn one_clean_outage_returns_after_the_base_holddown() {
    let mut sim = warmed_up();
    sim.run(t(60.0), |u, now, _| {
        if u == FIBER && now >= t(5.0) && now < t(15.0) {
            None
        } else {
            healthy(u)
        }
    });
    assert_eq!(sim.decisions.len(), 2, "{:#?}", sim.decisions);
    let back = sim.decisions[1].at - t(15.0);
    // The silent fiber is probed every second (standby rate) until it
    // answers, then fast: the hold-down starts at most 1 s after the restore.
    assert!(
        back >= t(10.0) && back <= t(11.5),
        "returned {back:?} after the restore"
    );
    let recovering = fiber_changes(&sim)
        .into_iter()
        .find(|(_, to, _)| *to == Health::Recovering)
        .expect("recovering");
    assert_eq!(recovering.2, "fiber: answering again, hold-down 10 s");
    // One failure 55 s ago: the penalty is 2^(-55/300), the hold-down a
    // failure now would give 10 s × 2^penalty.
    let q = sim.engine.quality(FIBER);
    assert_eq!(q.health, Health::Up);
    assert!((0.85..0.9).contains(&q.penalty), "{q:?}");
    assert_eq!(q.holddown.as_secs(), 18, "{q:?}");
}

/// Each failure adds to the penalty: the hold-down grows, the reason says
/// why; after a calm hour, a failure gives the base hold-down again.
/// (Outages more than `probation` after each return: no failed return.)
#[test]
fn repeated_failures_grow_the_holddown_and_calm_shrinks_it() {
    let outages = [(5.0, 7.0), (60.0, 62.0), (130.0, 132.0), (3800.0, 3802.0)];
    let mut sim = warmed_up();
    sim.run(t(3900.0), |u, now, _| {
        let s = now.as_secs_f64();
        if u == FIBER && outages.iter().any(|(a, b)| s >= *a && s < *b) {
            None
        } else {
            healthy(u)
        }
    });
    let changes = fiber_changes(&sim);
    let downs: Vec<f64> = changes
        .iter()
        .filter(|(_, to, _)| *to == Health::Down)
        .map(|(at, _, _)| at.as_secs_f64())
        .collect();
    let recoveries: Vec<(Time, String)> = changes
        .into_iter()
        .filter(|(_, to, _)| *to == Health::Recovering)
        .map(|(at, _, r)| (at, r))
        .collect();
    assert_eq!(downs.len(), 4, "{downs:?}");
    assert_eq!(recoveries.len(), 4, "{recoveries:#?}");
    // The penalty at each failure: +1, halved every 300 s.
    let mut penalty = 0.0f64;
    let mut last = 0.0;
    let expected: Vec<f64> = downs
        .iter()
        .map(|at| {
            penalty = penalty * 0.5f64.powf((at - last) / 300.0) + 1.0;
            last = *at;
            10.0 * 2f64.powf(penalty - 1.0)
        })
        .collect();
    assert!(
        expected[1] > 17.0 && expected[2] > expected[1] + 8.0,
        "{expected:?}"
    );
    assert!(expected[3] < 10.1, "{expected:?}");
    assert_eq!(recoveries[0].1, "fiber: answering again, hold-down 10 s");
    assert_eq!(
        recoveries[1].1,
        format!(
            "fiber: answering again, hold-down {} s after 2 failures in 55 s",
            expected[1].round()
        )
    );
    assert_eq!(
        recoveries[2].1,
        format!(
            "fiber: answering again, hold-down {} s after 3 failures in 2 min",
            expected[2].round()
        )
    );
    assert_eq!(recoveries[3].1, "fiber: answering again, hold-down 10 s");
    // Every return waited for its hold-down: 4 outages, 8 switches.
    assert_eq!(sim.decisions.len(), 8, "{:#?}", sim.decisions);
    for (i, back) in sim.decisions.iter().skip(1).step_by(2).enumerate() {
        let held = (back.at - recoveries[i].0).as_secs_f64();
        assert!(
            held >= expected[i] && held < expected[i] + 0.2,
            "return {i} after {held} s, hold-down {} s: {}",
            expected[i],
            back.reason
        );
    }
}

/// The probing that judges a return: a silent preferred uplink at its
/// standby rate, an answering one fast (its hold-down is judged on the
/// SLA); a standby that is not preferred stays slow.
#[test]
fn a_candidate_to_return_is_probed_fast() {
    let mut sim = warmed_up();
    assert!(sim.engine.wants_fast_probes(FIBER));
    assert!(!sim.engine.wants_fast_probes(LTE));
    sim.run(t(17.0), |u, now, _| {
        if u == FIBER && now >= t(5.0) {
            None
        } else {
            healthy(u)
        }
    });
    assert_eq!(sim.engine.active(), LTE);
    assert!(!sim.engine.wants_fast_probes(FIBER), "silent: standby rate");
    sim.run(t(20.0), |u, _, _| healthy(u));
    assert_eq!(sim.engine.quality(FIBER).health, Health::Recovering);
    assert!(sim.engine.wants_fast_probes(FIBER), "judged: fast");
    assert!(sim.engine.wants_fast_probes(LTE), "active");
    sim.run(t(40.0), |u, _, _| healthy(u));
    assert_eq!(sim.engine.active(), FIBER);
    assert!(!sim.engine.wants_fast_probes(LTE));
}

/// A return is judged over at least `sla_min_samples` probes, however
/// short the hold-down.
#[test]
fn a_return_needs_enough_probes() {
    let policy = Policy {
        holddown: Duration::from_secs(1),
        ..Policy::default()
    };
    let mut sim = Sim::with(policy, Duration::from_secs(1));
    sim.run(t(5.0), |u, _, _| healthy(u));
    sim.run(t(30.0), |u, now, _| {
        if u == FIBER && now < t(8.0) {
            None
        } else {
            healthy(u)
        }
    });
    assert_eq!(sim.decisions.len(), 2, "{:#?}", sim.decisions);
    let recovering = fiber_changes(&sim)
        .into_iter()
        .find(|(_, to, _)| *to == Health::Recovering)
        .expect("recovering")
        .0;
    let held = sim.decisions[1].at - recovering;
    // 20 probes at 100 ms: about 2 s, not the 1 s hold-down.
    assert!(held >= t(1.9) && held < t(3.0), "returned after {held:?}");
}

/// The simulator's long runs: 200 minutes of random round-trip loss at
/// 2, 4 and 6 %, no switch, no down.
#[test]
fn random_loss_for_200_minutes_never_switches() {
    for (seed, p) in [(11u64, 0.02), (12, 0.04), (13, 0.06)] {
        let mut sim = warmed_up();
        sim.rng = Rng(seed);
        sim.run(t(5.0 + 200.0 * 60.0), |u, _, rng| {
            if u == FIBER && rng.chance(p) {
                None
            } else {
                healthy(u)
            }
        });
        assert!(sim.decisions.is_empty(), "{p}: {:#?}", sim.decisions);
        let downs = fiber_changes(&sim)
            .into_iter()
            .filter(|(_, to, _)| *to == Health::Down)
            .count();
        assert_eq!(downs, 0, "{p}: fiber went down");
    }
}

// ---- Paths: two hubs ----------------------------------------------------
//
// The main hub (priority 0) and the backup hub (priority 1), each reached
// over the fiber (priority 0) and the 4G (priority 1, metered: its standby
// probes spread over the hubs, `Engine::standby`).

const MAIN_FIBER: PathId = PathId { hub: 0, uplink: 0 };
const MAIN_LTE: PathId = PathId { hub: 0, uplink: 1 };
const BACKUP_FIBER: PathId = PathId { hub: 1, uplink: 0 };
const BACKUP_LTE: PathId = PathId { hub: 1, uplink: 1 };

fn two_hubs(prefer: Prefer) -> Sim {
    let policy = Policy {
        prefer,
        ..Policy::default()
    };
    let hubs = [("main".to_string(), 0), ("backup".to_string(), 1)];
    let uplinks = [
        ("fiber".to_string(), 0, false),
        ("lte".to_string(), 1, true),
    ];
    Sim::over(policy, &hubs, &uplinks, Duration::from_secs(1))
}

/// Two hubs, every path healthy for 5 s: every path up, main/fiber active.
fn two_hubs_warmed_up(prefer: Prefer) -> Sim {
    let mut sim = two_hubs(prefer);
    sim.run(t(5.0), |p, _, _| healthy(p));
    for p in [MAIN_FIBER, MAIN_LTE, BACKUP_FIBER, BACKUP_LTE] {
        assert_eq!(sim.engine.quality(p).health, Health::Up, "{p:?}");
    }
    assert_eq!(sim.engine.active(), MAIN_FIBER);
    assert!(sim.decisions.is_empty(), "{:#?}", sim.decisions);
    sim
}

/// A network where `hub` is dead from `from` to `until`.
fn hub_dead(
    hub: usize,
    from: Time,
    until: Time,
) -> impl FnMut(PathId, Time, &mut Rng) -> Option<Duration> {
    move |p, now, _| {
        if p.hub == hub && now >= from && now < until {
            None
        } else {
            healthy(p)
        }
    }
}

/// Every path to the main hub stops answering while the backup hub
/// answers: a hub failure. The tunnel goes to the backup hub over the same
/// fiber at once (no HUB_SETTLE: the backup hub's fresh echo proves the
/// annex's side works), with its own reason class. `prefer = "hub"` first
/// tries the main hub over the 4G: silent too (two probes), passed over.
#[test]
fn a_dead_hub_is_left_for_the_other_hub_at_once() {
    for (prefer, within, silent) in [
        (Prefer::Uplink, t(1.0), "fiber"),
        (Prefer::Hub, t(1.5), "every uplink"),
    ] {
        let mut sim = two_hubs_warmed_up(prefer);
        sim.run(t(15.0), hub_dead(0, t(5.0), t(1e6)));
        assert_eq!(sim.decisions.len(), 1, "{prefer:?}: {:#?}", sim.decisions);
        let d = &sim.decisions[0];
        assert_eq!(
            (d.from, d.to, d.class),
            (MAIN_FIBER, BACKUP_FIBER, ReasonClass::HubDown),
            "{prefer:?}"
        );
        assert_eq!(d.class.as_str(), "hub_down");
        let detection = d.at - t(5.0);
        assert!(
            detection < within,
            "{prefer:?}: detected after {detection:?}"
        );
        assert!(
            d.reason.starts_with("main/fiber: 4 probes lost in "),
            "{}",
            d.reason
        );
        let end = format!("; hub main silent over {silent}, hub backup answering over fiber");
        assert!(d.reason.ends_with(&end), "{}", d.reason);
    }
}

/// The main hub back after 10 s down: the tunnel returns to it once, after
/// its hold-down (judged per path, like an uplink's), and stays there.
#[test]
fn the_preferred_hub_back_is_returned_to_once_after_the_holddown() {
    let mut sim = two_hubs_warmed_up(Prefer::Uplink);
    sim.run(t(200.0), hub_dead(0, t(5.0), t(15.0)));
    assert_eq!(sim.decisions.len(), 2, "{:#?}", sim.decisions);
    let back = &sim.decisions[1];
    assert_eq!(
        (back.from, back.to, back.class),
        (BACKUP_FIBER, MAIN_FIBER, ReasonClass::Recovered)
    );
    let holddown = sim.engine.policy().holddown;
    let after = back.at - t(15.0);
    assert!(
        after >= holddown && after < holddown + Duration::from_secs(3),
        "returned after {after:?}"
    );
    assert!(
        back.reason
            .contains("main/fiber: healthy for 10 s, preferred over backup/fiber"),
        "{}",
        back.reason
    );
    assert_eq!(sim.engine.active(), MAIN_FIBER);
}

/// The fiber to the main hub broken, the fiber to the backup hub and the
/// 4G to both fine. `prefer = "uplink"` (the default): the backup hub over
/// the fiber; `prefer = "hub"`: the main hub over the 4G.
#[test]
fn the_preferred_hub_unreachable_over_one_uplink_is_chosen_by_prefer() {
    let broken = |p: PathId, now: Time, _: &mut Rng| {
        if p == MAIN_FIBER && now >= t(5.0) {
            None
        } else {
            healthy(p)
        }
    };
    for (prefer, to) in [(Prefer::Uplink, BACKUP_FIBER), (Prefer::Hub, MAIN_LTE)] {
        let mut sim = two_hubs_warmed_up(prefer);
        sim.run(t(200.0), broken);
        assert_eq!(sim.decisions.len(), 1, "{prefer:?}: {:#?}", sim.decisions);
        let d = &sim.decisions[0];
        assert_eq!((d.from, d.to), (MAIN_FIBER, to), "{prefer:?}: {d:#?}");
        let detection = d.at - t(5.0);
        assert!(
            detection < Duration::from_secs(2),
            "{prefer:?}: detected after {detection:?}"
        );
        assert_eq!(sim.engine.active(), to, "{prefer:?}");
        assert_eq!(sim.engine.quality(to).health, Health::Up, "{prefer:?}");
    }
}

/// Every hub silent on every path (the annex's own side cut, or both hubs
/// restarting): the last path is kept and every path probed fast. When
/// they come back together, the path order decides: the backup hub
/// answering first is no reason to leave the main one (it has HUB_SETTLE);
/// a main hub still silent after HUB_SETTLE is left for the backup one.
#[test]
fn every_hub_silent_keeps_the_last_path_then_the_order_decides() {
    for main_later in [t(2.0), t(30.0)] {
        let mut sim = two_hubs_warmed_up(Prefer::Uplink);
        sim.run(
            t(30.0),
            |p, now, _| if now >= t(5.0) { None } else { healthy(p) },
        );
        assert!(sim.decisions.is_empty(), "{:#?}", sim.decisions);
        assert_eq!(sim.engine.active(), MAIN_FIBER);
        let paths = [MAIN_FIBER, MAIN_LTE, BACKUP_FIBER, BACKUP_LTE];
        for p in paths {
            assert_eq!(sim.engine.quality(p).health, Health::Down, "{p:?}");
            assert!(sim.engine.wants_fast_probes(p), "{p:?} probed fast");
        }
        // Still probed: every path sent at least 10 probes in the last 5 s.
        let sent = sim.sent.clone();
        sim.run(t(35.0), |_, _, _| None);
        for p in paths {
            let i = sim.engine.index(p).unwrap();
            assert!(
                sim.sent[i] - sent[i] >= 40,
                "{p:?}: {}",
                sim.sent[i] - sent[i]
            );
        }
        // The backup hub answers at 40 s, the main one `main_later`.
        let back = t(40.0) + main_later;
        sim.run(t(120.0), |p, now, _| {
            let answers = if p.hub == 0 { back } else { t(40.0) };
            if now >= answers {
                healthy(p)
            } else {
                None
            }
        });
        if main_later < HUB_SETTLE {
            assert!(sim.decisions.is_empty(), "{:#?}", sim.decisions);
            assert_eq!(sim.engine.active(), MAIN_FIBER);
        } else {
            let d = sim.decisions.first().expect("a switch to the backup hub");
            assert_eq!((d.from, d.to), (MAIN_FIBER, BACKUP_FIBER), "{d:#?}");
            assert_eq!(d.class, ReasonClass::Recovered);
            let after = d.at - t(40.0);
            assert!(
                after >= HUB_SETTLE && after < HUB_SETTLE + Duration::from_secs(1),
                "after {after:?}"
            );
            assert!(
                d.reason
                    .contains("backup/fiber: answering again while no path is up"),
                "{}",
                d.reason
            );
            // And back to the main hub once it passed its hold-down.
            assert_eq!(sim.decisions.len(), 2, "{:#?}", sim.decisions);
            assert_eq!(sim.engine.active(), MAIN_FIBER);
        }
    }
}

/// On the backup hub (the main one dead), the fiber dies: the tunnel goes
/// to the backup hub over the 4G in under a second, as on the main hub,
/// and back to the backup hub's fiber once, after its hold-down.
#[test]
fn uplink_failover_on_the_backup_hub_works_as_on_the_main_hub() {
    let mut sim = two_hubs_warmed_up(Prefer::Uplink);
    let network = |p: PathId, now: Time, _: &mut Rng| {
        let main_dead = p.hub == 0 && now >= t(5.0);
        let fiber_dead = p.uplink == 0 && now >= t(30.0) && now < t(40.0);
        if main_dead || fiber_dead {
            None
        } else {
            healthy(p)
        }
    };
    sim.run(t(100.0), network);
    assert_eq!(sim.decisions.len(), 3, "{:#?}", sim.decisions);
    let hops: Vec<_> = sim
        .decisions
        .iter()
        .map(|d| (d.from, d.to, d.class))
        .collect();
    assert_eq!(
        hops,
        [
            (MAIN_FIBER, BACKUP_FIBER, ReasonClass::HubDown),
            (BACKUP_FIBER, BACKUP_LTE, ReasonClass::Dead),
            (BACKUP_LTE, BACKUP_FIBER, ReasonClass::Recovered),
        ]
    );
    let failover = &sim.decisions[1];
    let detection = failover.at - t(30.0);
    assert!(
        detection < Duration::from_secs(1),
        "detected after {detection:?}"
    );
    assert!(
        failover
            .reason
            .starts_with("backup/fiber: 4 probes lost in "),
        "{}",
        failover.reason
    );
    let back = sim.decisions[2].at - t(40.0);
    let holddown = sim.engine.policy().holddown;
    assert!(
        back >= holddown && back < holddown + Duration::from_secs(3),
        "returned after {back:?}"
    );
}

/// The fiber dies for every hub while the 4G answers: an uplink failure,
/// not a hub failure. The tunnel goes to the 4G and stays with the
/// preferred hub (it answers there), in under a second.
#[test]
fn an_uplink_dead_for_every_hub_keeps_the_preferred_hub() {
    let mut sim = two_hubs_warmed_up(Prefer::Uplink);
    sim.run(t(20.0), |p, now, _| {
        if p.uplink == 0 && now >= t(5.0) {
            None
        } else {
            healthy(p)
        }
    });
    assert_eq!(sim.decisions.len(), 1, "{:#?}", sim.decisions);
    let d = &sim.decisions[0];
    assert_eq!(
        (d.from, d.to, d.class),
        (MAIN_FIBER, MAIN_LTE, ReasonClass::Dead)
    );
    let detection = d.at - t(5.0);
    assert!(
        detection < Duration::from_secs(1),
        "detected after {detection:?}"
    );
    assert!(
        d.reason.starts_with("main/fiber: 4 probes lost in ") && !d.reason.contains("hub main"),
        "{}",
        d.reason
    );
    assert_eq!(sim.engine.quality(BACKUP_FIBER).health, Health::Down);
}

/// 2 % loss per direction on the fiber to both hubs (about 4 % of round
/// trips, each path its own draws) for 200 simulated minutes: no switch
/// of hub or uplink, and the active path never down.
#[test]
fn two_percent_loss_for_200_minutes_with_two_hubs_never_switches() {
    let p = round_trip(0.02);
    let mut sim = two_hubs_warmed_up(Prefer::Uplink);
    sim.rng = Rng(21);
    sim.run(t(5.0 + 200.0 * 60.0), |path, _, rng| {
        if path.uplink == 0 && rng.chance(p) {
            None
        } else {
            healthy(path)
        }
    });
    assert!(sim.decisions.is_empty(), "{:#?}", sim.decisions);
    let downs: Vec<_> = sim
        .changes
        .iter()
        .filter(|c| c.path == MAIN_FIBER && c.to == Health::Down)
        .collect();
    assert!(downs.is_empty(), "{downs:#?}");
}

/// The probe rates of paths: the active path fast; the other hub over the
/// active uplink at the regular standby rate (a hub-failure candidate),
/// fast as soon as the active path loses a probe; the metered 4G's standby
/// probes spread over the hubs, so that two hubs cost what one did.
#[test]
fn paths_are_probed_at_their_rates() {
    let mut sim = two_hubs_warmed_up(Prefer::Uplink);
    let e = &sim.engine;
    assert!(e.wants_fast_probes(MAIN_FIBER));
    for p in [MAIN_LTE, BACKUP_FIBER, BACKUP_LTE] {
        assert!(!e.wants_fast_probes(p), "{p:?}");
    }
    assert_eq!(e.standby(BACKUP_FIBER), Standby::Regular);
    for p in [MAIN_LTE, BACKUP_LTE] {
        assert_eq!(e.standby(p), Standby::Metered { hubs: 2 }, "{p:?}");
    }
    // An hour of standby: each hub's 4G probed every 2 × 30 s, the two
    // together as often as one hub's was (every 30 s).
    let before = sim.sent.clone();
    sim.run(t(3605.0), |p, _, _| healthy(p));
    let sent = |p: PathId| {
        let i = sim.engine.index(p).unwrap();
        sim.sent[i] - before[i]
    };
    for p in [MAIN_LTE, BACKUP_LTE] {
        assert!((59..=61).contains(&sent(p)), "{p:?}: {}", sent(p));
    }
    assert!(
        (3599..=3601).contains(&sent(BACKUP_FIBER)),
        "{}",
        sent(BACKUP_FIBER)
    );
    // The active path loses one probe: the other hub over the fiber is
    // probed fast (if the main hub dies, it proves the fiber works).
    let mut e = sim.engine.clone();
    let now = t(3605.0);
    e.observe(
        now + t(0.3),
        Sample {
            path: MAIN_FIBER,
            sent: now,
            outcome: Outcome::Lost,
        },
    );
    assert!(e.wants_fast_probes(BACKUP_FIBER));
    assert!(!e.wants_fast_probes(BACKUP_LTE));
    // On the 4G (the fiber dead for both hubs), the 4G is the active
    // uplink: the other hub over it at the regular standby rate.
    let mut sim = two_hubs_warmed_up(Prefer::Uplink);
    sim.run(t(20.0), |p, now, _| {
        if p.uplink == 0 && now >= t(5.0) {
            None
        } else {
            healthy(p)
        }
    });
    assert_eq!(sim.engine.active(), MAIN_LTE);
    assert_eq!(sim.engine.standby(BACKUP_LTE), Standby::Regular);
    assert!(!sim.engine.wants_fast_probes(BACKUP_LTE));
}

/// The uplink of each hub's tunnel: the active path's for the active hub;
/// for another hub the best uplink on which it is up, not metered first,
/// then by priority; on none, the last one.
#[test]
fn each_hubs_tunnel_takes_the_best_uplink_that_reaches_it() {
    let hubs = [("main".to_string(), 0), ("backup".to_string(), 1)];
    // The 4G before the DSL by priority, but metered.
    let uplinks = [
        ("fiber".to_string(), 0, false),
        ("lte".to_string(), 1, true),
        ("dsl".to_string(), 2, false),
    ];
    let (fiber, lte, dsl) = (0, 1, 2);
    let mut sim = Sim::over(Policy::default(), &hubs, &uplinks, Duration::from_secs(1));
    sim.run(t(5.0), |p, _, _| healthy(p));
    assert_eq!(sim.engine.tunnel_uplink(0), fiber);
    assert_eq!(sim.engine.tunnel_uplink(1), fiber);
    // The fiber dies for both hubs: main over the 4G (by priority, the
    // tunnel's path), backup's session over the DSL (not metered).
    sim.run(t(20.0), |p, now, _| {
        if p.uplink == fiber && now >= t(5.0) {
            None
        } else {
            healthy(p)
        }
    });
    assert_eq!(sim.engine.active(), PathId::new(0, lte));
    assert_eq!(sim.engine.tunnel_uplink(0), lte);
    assert_eq!(sim.engine.tunnel_uplink(1), dsl);
    // The backup hub dies everywhere: its tunnel stays where it was.
    sim.run(t(40.0), |p, now, _| {
        if p.uplink == fiber || (p.hub == 1 && now >= t(20.0)) {
            None
        } else {
            healthy(p)
        }
    });
    for u in [fiber, lte, dsl] {
        assert_ne!(sim.engine.quality(PathId::new(1, u)).health, Health::Up);
    }
    assert_eq!(sim.engine.tunnel_uplink(1), dsl);
    // Everything back: the main hub over the fiber after its hold-down,
    // the backup hub's session back on the fiber.
    sim.run(t(80.0), |p, _, _| healthy(p));
    assert_eq!(sim.engine.active(), MAIN_FIBER);
    assert_eq!(sim.engine.tunnel_uplink(0), fiber);
    assert_eq!(sim.engine.tunnel_uplink(1), fiber);
    assert_eq!(
        sim.engine.tunnel_uplink(7),
        fiber,
        "unknown hub: the active uplink"
    );
}

/// A dead hub's session is not moved onto the metered 4G because its 4G
/// path, probed once a minute, is still up by an answer from before the
/// failure: it stays on the uplink it used (found by the two-hub netns
/// test: the dead main hub's session went to the 4G, where its keepalives
/// and handshake attempts cost money for nothing).
#[test]
fn a_dead_hubs_tunnel_is_not_moved_by_an_old_answer() {
    let hubs = [("main".to_string(), 0), ("backup".to_string(), 1)];
    let uplinks = [
        ("fiber".to_string(), 0, false),
        ("lte".to_string(), 1, true),
    ];
    let mut sim = Sim::over(Policy::default(), &hubs, &uplinks, Duration::from_secs(60));
    sim.run(t(5.0), |p, _, _| healthy(p));
    assert_eq!(sim.engine.quality(MAIN_LTE).health, Health::Up);
    sim.run(t(8.0), hub_dead(0, t(5.0), t(1e6)));
    assert_eq!(sim.engine.active(), BACKUP_FIBER);
    assert_eq!(
        sim.engine.quality(MAIN_LTE).health,
        Health::Up,
        "up by an old answer"
    );
    assert_eq!(sim.engine.tunnel_uplink(0), MAIN_FIBER.uplink);
    // The main hub back (it answers over the 4G first): its session
    // follows its best uplink again.
    sim.run(t(120.0), |p, _, _| healthy(p));
    assert_eq!(sim.engine.tunnel_uplink(0), MAIN_FIBER.uplink);
    assert_eq!(sim.engine.active(), MAIN_FIBER);
}

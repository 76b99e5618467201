//! The probe byte budget of a metered uplink: a token bucket over the bytes
//! the uplink's prober really sends and receives (IP and UDP headers
//! included, as the carrier bills them).
//!
//! `probe_budget` bytes per [`PERIOD`] (30 days): the bucket holds at most
//! a tenth of it ([`BURST_SHARE`]) and refills with the rest over the
//! period, so that **no 30-day window ever holds more than the budget**
//! (at most the bucket, plus the refill of 30 days). Every counted byte is
//! taken from the bucket; before a probe or a connection attempt the
//! prober asks whether the bucket holds its cost, and waits when it does
//! not. The budget only ever lowers the rate the failover task asks for.
//! A probe exchange on a standby uplink every 30 s costs ~20 MB a month,
//! well inside the refill of the default 30 MB budget; a day of active 4G
//! probing (10 exchanges a second) empties the bucket in about 20 minutes,
//! after which the 4G is probed only as fast as the budget refills.
//!
//! The bucket's level outlives the daemon ([`Saved`], kept in the state
//! directory by `daemon::budgets`): a restart resumes it, refilled for
//! the time the daemon was down, so that a daemon restarting in a loop
//! cannot start each run with a full bucket. Only the first start of an
//! uplink (nothing saved) gets a full one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The period a budget is given for.
pub const PERIOD: Duration = Duration::from_secs(30 * 24 * 3600);
/// The share of the budget the bucket holds (the largest burst).
pub const BURST_SHARE: f64 = 0.1;
/// What one probe exchange costs on the wire: the probe, its echo and the
/// ACK-only packet QUIC requires (measured, `docs/failover.md`).
pub const PROBE_COST: u64 = 240;
/// What one connection attempt may cost: the client's padded Initial
/// (1200 bytes + headers) twice, and the hub's Retry and handshake.
pub const ATTEMPT_COST: u64 = 5_000;

/// The metric gauges of one budget: the metrics' gauges themselves.
#[derive(Debug, Default, Clone)]
pub struct BudgetGauges {
    /// Bytes per [`PERIOD`].
    pub budget: FloatGauge,
    /// Bytes in the bucket now.
    pub available: FloatGauge,
    /// 1 while the budget delays probes or connection attempts.
    pub limited: Gauge,
}

/// Unix times before this (2025-01-01) come from a clock that was never
/// set (routers without a real-time clock): no refill is counted from or
/// to them.
const CLOCK_SANITY: u64 = 1_735_689_600;

/// What is kept of a budget between two runs of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// The budget the level was counted against (bytes per [`PERIOD`]).
    pub budget: u64,
    /// Bytes in the bucket when it was saved (below zero after an
    /// overdraft).
    pub level: f64,
    /// When it was saved, in Unix seconds.
    pub at: u64,
    /// Saved at a clean stop. A run saves its level when it starts and
    /// whenever it spent [`UNSAVED_SHARE`] of its bucket since the last
    /// save: a run that ended otherwise (a crash, a power cut) may have
    /// spent that much unseen, and the next run is charged for it.
    pub clean: bool,
}

/// The share of a bucket a run may spend before it saves its level: what
/// a crash can leave unsaved, charged to the run after a crash, so that a
/// daemon in a crash loop drains its bucket as if it had saved every byte.
pub const UNSAVED_SHARE: f64 = 0.05;

/// The token bucket itself, on an explicit clock (tested without sleeping).
#[derive(Debug, Clone)]
pub struct Bucket {
    capacity: f64,
    /// Bytes per second.
    rate: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket for `budget` bytes per [`PERIOD`].
    pub fn new(budget: u64, now: Instant) -> Bucket {
        let budget = budget as f64;
        let capacity = budget * BURST_SHARE;
        Bucket {
            capacity,
            rate: (budget - capacity) / PERIOD.as_secs_f64(),
            level: capacity,
            at: now,
        }
    }

    /// The bucket as a previous run left it, less [`UNSAVED_SHARE`] if
    /// that run did not stop cleanly, refilled for the time in between
    /// (`unix_now - saved.at`; none when either time is before 2025 or the
    /// clock went back). A level that is not a number counts as empty; a
    /// smaller budget than the saved one cuts the level to the new bucket.
    pub fn resume(budget: u64, saved: &Saved, now: Instant, unix_now: u64) -> Bucket {
        let mut bucket = Bucket::new(budget, now);
        let mut level = if saved.level.is_finite() {
            saved.level.min(bucket.capacity)
        } else {
            0.0
        };
        if !saved.clean {
            level -= bucket.capacity * UNSAVED_SHARE;
        }
        let level = level.max(-bucket.capacity);
        let down = if saved.at < CLOCK_SANITY || unix_now < CLOCK_SANITY {
            0
        } else {
            unix_now.saturating_sub(saved.at)
        };
        bucket.level = (level + down as f64 * bucket.rate).min(bucket.capacity);
        bucket
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.rate).min(self.capacity);
        self.at = self.at.max(now);
    }

    /// Bytes that went over the wire (may leave the bucket below zero:
    /// ACKs and retransmissions are counted after the fact).
    pub fn spend(&mut self, bytes: u64, now: Instant) {
        self.refill(now);
        self.level -= bytes as f64;
    }

    /// Bytes in the bucket at `now`.
    pub fn level(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.level
    }

    /// How long until the bucket holds `cost` bytes (zero: now).
    pub fn wait_for(&mut self, cost: u64, now: Instant) -> Duration {
        self.refill(now);
        let missing = cost as f64 - self.level;
        if missing <= 0.0 {
            return Duration::ZERO;
        }
        if self.rate <= 0.0 {
            return PERIOD;
        }
        Duration::from_secs_f64((missing / self.rate).min(PERIOD.as_secs_f64()))
    }

    /// The time the budget gives one probe exchange when it limits.
    pub fn pacing(&self) -> Duration {
        if self.rate <= 0.0 {
            return PERIOD;
        }
        Duration::from_secs_f64((PROBE_COST as f64 / self.rate).min(PERIOD.as_secs_f64()))
    }
}

/// A budget shared by the prober (which spends and asks) and the failover
/// task (which reads whether it limits).
#[derive(Debug)]
pub struct Budget {
    bytes: u64,
    bucket: Mutex<Bucket>,
    gauges: BudgetGauges,
    /// Bytes spent since the level was last taken to be saved.
    unsaved: AtomicU64,
}

impl Budget {
    /// A full budget of `bytes` per [`PERIOD`] (an uplink's first start).
    pub fn new(bytes: u64, gauges: BudgetGauges) -> Budget {
        Budget::with_bucket(bytes, Bucket::new(bytes, Instant::now()), gauges)
    }

    /// The budget as a previous run saved it ([`Bucket::resume`]).
    pub fn resume(bytes: u64, saved: &Saved, unix_now: u64, gauges: BudgetGauges) -> Budget {
        let bucket = Bucket::resume(bytes, saved, Instant::now(), unix_now);
        Budget::with_bucket(bytes, bucket, gauges)
    }

    fn with_bucket(bytes: u64, bucket: Bucket, gauges: BudgetGauges) -> Budget {
        gauges.budget.set(bytes as f64);
        gauges.available.set(bucket.level.max(0.0));
        gauges.limited.set(0);
        Budget {
            bytes,
            bucket: Mutex::new(bucket),
            gauges,
            unsaved: AtomicU64::new(0),
        }
    }

    /// The largest burst: the bucket's size in bytes.
    pub fn capacity(&self) -> f64 {
        self.bucket().capacity
    }

    /// Bytes spent since the last [`Budget::take_saved`].
    pub fn unsaved(&self) -> u64 {
        self.unsaved.load(Ordering::Relaxed)
    }

    /// The level to save now (`clean`: at a clean stop); the bytes it
    /// covers are no longer unsaved. Give them back
    /// ([`Budget::save_failed`]) if the save fails.
    pub fn take_saved(&self, unix_now: u64, clean: bool) -> (Saved, u64) {
        let mut b = self.bucket();
        let covered = self.unsaved.swap(0, Ordering::Relaxed);
        let level = b.level(Instant::now());
        (
            Saved {
                budget: self.bytes,
                level,
                at: unix_now,
                clean,
            },
            covered,
        )
    }

    /// A save of [`Budget::take_saved`] did not reach the disk.
    pub fn save_failed(&self, covered: u64) {
        self.unsaved.fetch_add(covered, Ordering::Relaxed);
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        // Plain numbers: a panic elsewhere cannot leave them inconsistent.
        self.bucket.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts bytes that went over the wire.
    pub fn spend(&self, bytes: u64) {
        let mut b = self.bucket();
        b.spend(bytes, Instant::now());
        self.unsaved.fetch_add(bytes, Ordering::Relaxed);
        self.gauges.available.set(b.level.max(0.0));
    }

    /// Asks for `cost` bytes now: zero if they may be spent, else how long
    /// to wait. Updates the `limited` gauge.
    pub fn ask(&self, cost: u64) -> Duration {
        let mut b = self.bucket();
        let wait = b.wait_for(cost, Instant::now());
        self.gauges.available.set(b.level.max(0.0));
        self.gauges.limited.set((!wait.is_zero()) as i64);
        wait
    }

    /// Whether the budget delayed the last probe or attempt.
    pub fn limited(&self) -> bool {
        self.gauges.limited.get() == 1
    }

    /// The time between probe exchanges while the budget limits.
    pub fn pacing(&self) -> Duration {
        self.bucket().pacing()
    }

    /// Bytes in the bucket now.
    pub fn available(&self) -> f64 {
        self.bucket().level(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    #[test]
    fn no_thirty_day_window_holds_more_than_the_budget() {
        // An uplink that spends whatever the bucket allows, in 1 kB steps,
        // for 60 days: every 30-day window stays within the budget.
        let t0 = Instant::now();
        let mut b = Bucket::new(30 * MB, t0);
        let step = Duration::from_secs(600);
        let mut spent = Vec::new();
        let mut now = t0;
        while now < t0 + 2 * PERIOD {
            let mut in_step = 0;
            while b.wait_for(1_000, now).is_zero() {
                b.spend(1_000, now);
                in_step += 1_000;
            }
            spent.push(in_step);
            now += step;
        }
        let per_window = (PERIOD.as_secs() / step.as_secs()) as usize;
        let worst = spent
            .windows(per_window)
            .map(|w| w.iter().sum::<u64>())
            .max()
            .unwrap();
        assert!(worst <= 30 * MB, "{worst} bytes in 30 days");
        // And it really spends what it may: more than 29 MB in the first window.
        assert!(worst > 29 * MB, "{worst}");
    }

    #[test]
    fn a_standby_probe_every_30_s_is_never_limited() {
        let t0 = Instant::now();
        let mut b = Bucket::new(30 * MB, t0);
        let mut now = t0;
        for _ in 0..(2 * PERIOD.as_secs() / 30) {
            assert!(b.wait_for(PROBE_COST, now).is_zero());
            b.spend(PROBE_COST, now);
            now += Duration::from_secs(30);
        }
    }

    /// 2026-12-01, a sane clock.
    const DAY_1: u64 = 1_796_083_200;

    #[test]
    fn a_resumed_bucket_is_refilled_only_for_the_time_it_was_down() {
        let t0 = Instant::now();
        let budget = 30 * MB;
        let saved = Saved {
            budget,
            level: 1_000.0,
            at: DAY_1,
            clean: true,
        };
        // Restarted at once: what was left, not a full bucket.
        let mut b = Bucket::resume(budget, &saved, t0, DAY_1);
        assert_eq!(b.level(t0), 1_000.0);
        // Down for an hour: an hour of refill (27 MB / 30 days = 37.5 kB/h).
        let mut b = Bucket::resume(budget, &saved, t0, DAY_1 + 3600);
        let refill = b.level(t0) - 1_000.0;
        assert!((refill - 37_500.0).abs() < 1.0, "{refill}");
        // Down for a year: full, never more.
        let mut b = Bucket::resume(budget, &saved, t0, DAY_1 + 365 * 86_400);
        assert_eq!(b.level(t0), 3.0 * MB as f64);
    }

    #[test]
    fn a_clock_gone_back_or_never_set_refills_nothing() {
        let t0 = Instant::now();
        let budget = 30 * MB;
        let saved = Saved {
            budget,
            level: 500.0,
            at: DAY_1,
            clean: true,
        };
        assert_eq!(
            Bucket::resume(budget, &saved, t0, DAY_1 - 86_400).level(t0),
            500.0
        );
        // A router that booted in 1970 and saved then, now with a set clock.
        let early = Saved {
            at: 86_400,
            ..saved
        };
        assert_eq!(Bucket::resume(budget, &early, t0, DAY_1).level(t0), 500.0);
        // A set clock then, 1970 now.
        assert_eq!(Bucket::resume(budget, &saved, t0, 3_600).level(t0), 500.0);
    }

    #[test]
    fn a_saved_level_never_exceeds_the_bucket_it_comes_back_to() {
        let t0 = Instant::now();
        let at = DAY_1;
        // The budget was cut from 300 MB to 30 MB: a 3 MB bucket at most.
        let big = Saved {
            budget: 300 * MB,
            level: 30.0 * MB as f64,
            at,
            clean: true,
        };
        assert_eq!(
            Bucket::resume(30 * MB, &big, t0, at).level(t0),
            3.0 * MB as f64
        );
        // A level written by hand or damaged: not a number is empty, an
        // overdraft is at most one bucket.
        let nan = Saved {
            budget: 30 * MB,
            level: f64::NAN,
            ..big
        };
        assert_eq!(Bucket::resume(30 * MB, &nan, t0, at).level(t0), 0.0);
        let deep = Saved {
            budget: 30 * MB,
            level: -1e18,
            ..big
        };
        assert_eq!(
            Bucket::resume(30 * MB, &deep, t0, at).level(t0),
            -3.0 * MB as f64
        );
    }

    #[test]
    fn spending_is_unsaved_until_taken_and_given_back_on_a_failed_save() {
        let budget = Budget::new(30 * MB, BudgetGauges::default());
        budget.spend(240);
        budget.spend(5_000);
        assert_eq!(budget.unsaved(), 5_240);
        let (saved, covered) = budget.take_saved(DAY_1, true);
        assert_eq!(covered, 5_240);
        assert_eq!(budget.unsaved(), 0);
        assert_eq!(saved.budget, 30 * MB);
        assert_eq!(saved.at, DAY_1);
        assert!(
            (saved.level - (3.0 * MB as f64 - 5_240.0)).abs() < 1.0,
            "{}",
            saved.level
        );
        budget.save_failed(covered);
        assert_eq!(budget.unsaved(), 5_240);
        // And a budget resumed from it starts where this one was.
        let again = Budget::resume(30 * MB, &saved, DAY_1, BudgetGauges::default());
        assert!((again.available() - saved.level).abs() < 1.0);
    }

    #[test]
    fn a_run_that_did_not_stop_cleanly_is_charged_what_it_may_not_have_saved() {
        let t0 = Instant::now();
        let crashed = Saved {
            budget: 30 * MB,
            level: 3.0 * MB as f64,
            at: DAY_1,
            clean: false,
        };
        // 5 % of the 3 MB bucket.
        assert_eq!(
            Bucket::resume(30 * MB, &crashed, t0, DAY_1).level(t0),
            2_850_000.0
        );
        // Twenty crashes in a row drain a full bucket (the refill aside).
        let mut saved = crashed;
        for _ in 0..20 {
            saved.level = Bucket::resume(30 * MB, &saved, t0, DAY_1).level(t0);
        }
        assert!(saved.level.abs() < 1.0, "{}", saved.level);
    }

    #[test]
    fn an_empty_bucket_paces_probes_at_its_refill_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(30 * MB, t0);
        b.spend(3 * MB, t0);
        let wait = b.wait_for(PROBE_COST, t0);
        // 27 MB over 30 days is 10.4 B/s: one exchange per ~23 s.
        assert!(
            wait > Duration::from_secs(20) && wait < Duration::from_secs(26),
            "{wait:?}"
        );
        assert_eq!(b.pacing().as_secs(), wait.as_secs());
        assert!(b.wait_for(PROBE_COST, t0 + wait).is_zero());
    }
}

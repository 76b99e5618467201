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
//! The bucket starts full at every start of the daemon (it is not kept on
//! disk): a daemon restarting in a loop could spend more (systemd's start
//! limit stops such a loop).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;

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
    bucket: Mutex<Bucket>,
    gauges: BudgetGauges,
}

impl Budget {
    pub fn new(bytes: u64, gauges: BudgetGauges) -> Budget {
        let bucket = Bucket::new(bytes, Instant::now());
        gauges.budget.set(bytes as f64);
        gauges.available.set(bucket.capacity);
        gauges.limited.set(0);
        Budget {
            bucket: Mutex::new(bucket),
            gauges,
        }
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        // Plain numbers: a panic elsewhere cannot leave them inconsistent.
        self.bucket.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts bytes that went over the wire.
    pub fn spend(&self, bytes: u64) {
        let mut b = self.bucket();
        b.spend(bytes, Instant::now());
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

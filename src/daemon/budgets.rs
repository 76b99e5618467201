//! The probe budgets of the metered uplinks, kept in the state directory
//! across restarts (`probe-budget-<uplink>.json`, 0600), so that a daemon
//! that restarts (a crash loop, a reboot, a technician's restarts) goes on
//! from the bucket it left instead of a full one.
//!
//! Loaded once at start. Saved by the "probe budget keeper" service when
//! it starts (marked "not stopped cleanly"), when an uplink has spent
//! [`UNSAVED_SHARE`] of its bucket since the last save, at least every
//! [`SAVE_EVERY`] while it spends, and at stop (marked clean). A crash
//! leaves at most that share unsaved, and the next start charges it
//! (`probe::budget::Bucket::resume`): a crash loop drains the bucket as a
//! daemon that saved every byte would. An uplink on the 4G writes a few
//! hundred bytes a minute at most, an idle one nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::unix_now;
use crate::fsutil;
use crate::probe::budget::{Budget, BudgetGauges, Saved, UNSAVED_SHARE};

/// A budget that spends is saved at least this often.
pub const SAVE_EVERY: Duration = Duration::from_secs(600);
/// How often the keeper looks.
const LOOK_EVERY: Duration = Duration::from_secs(10);

/// Where an uplink's budget is kept.
pub fn path(state_directory: &Path, uplink: &str) -> PathBuf {
    state_directory.join(format!("probe-budget-{uplink}.json"))
}

/// The uplink's budget as the last run left it; full when nothing was
/// saved (its first start); empty, with a warning, when the file cannot be
/// read or parsed (the 4G bill is not gambled on a damaged file: an empty
/// bucket still allows the standby probes, see `probe::budget`).
pub fn load(state_directory: &Path, uplink: &str, bytes: u64, gauges: BudgetGauges) -> Budget {
    let file = path(state_directory, uplink);
    let now = unix_now();
    let saved = match std::fs::read(&file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(uplink, file = %file.display(), "no saved probe budget: a full bucket");
            return Budget::new(bytes, gauges);
        }
        Err(e) => Err(e.to_string()),
        Ok(text) => serde_json::from_slice::<Saved>(&text).map_err(|e| e.to_string()),
    };
    match saved {
        Ok(saved) => Budget::resume(bytes, &saved, now, gauges),
        Err(e) => {
            tracing::warn!(
                uplink,
                file = %file.display(),
                error = %e,
                "cannot read the saved probe budget: starting from an empty bucket (the file is rewritten at the next save)"
            );
            let empty = Saved {
                budget: bytes,
                level: 0.0,
                at: now,
                clean: true,
            };
            Budget::resume(bytes, &empty, now, gauges)
        }
    }
}

/// One budget the keeper saves.
pub struct Kept {
    pub uplink: String,
    pub file: PathBuf,
    pub budget: Arc<Budget>,
    last_save: Instant,
    failing: bool,
}

impl Kept {
    pub fn new(state_directory: &Path, uplink: &str, budget: Arc<Budget>) -> Kept {
        Kept {
            uplink: uplink.to_string(),
            file: path(state_directory, uplink),
            budget,
            last_save: Instant::now(),
            failing: false,
        }
    }

    fn due(&self, now: Instant) -> bool {
        let unsaved = self.budget.unsaved();
        unsaved > 0
            && (unsaved as f64 >= self.budget.capacity() * UNSAVED_SHARE
                || now.duration_since(self.last_save) >= SAVE_EVERY)
    }

    /// Writes the level now (off the async workers); a failure gives the
    /// spending back to the next save and is logged once until a save
    /// works again.
    async fn save(&mut self, clean: bool) {
        let (saved, covered) = self.budget.take_saved(unix_now(), clean);
        let file = self.file.clone();
        let written = tokio::task::spawn_blocking(move || {
            let text = serde_json::to_vec(&saved).map_err(std::io::Error::other)?;
            fsutil::write_atomic(&file, &text, 0o600)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        self.last_save = Instant::now();
        match written {
            Ok(()) => {
                if self.failing {
                    tracing::info!(uplink = %self.uplink, file = %self.file.display(), "probe budget saved again");
                }
                self.failing = false;
            }
            Err(e) => {
                self.budget.save_failed(covered);
                if !self.failing {
                    tracing::warn!(
                        uplink = %self.uplink,
                        file = %self.file.display(),
                        error = %e,
                        "cannot save the probe budget: a restart would not know what was spent (check state_directory)"
                    );
                }
                self.failing = true;
            }
        }
    }
}

/// Saves every budget at once (this run has not stopped cleanly yet), then
/// each when due, and every one at stop (clean).
pub async fn keep(kept: Vec<Kept>, stop: CancellationToken) {
    keep_looking(kept, LOOK_EVERY, stop).await
}

async fn keep_looking(mut kept: Vec<Kept>, every: Duration, stop: CancellationToken) {
    for k in kept.iter_mut() {
        k.save(false).await;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                let now = Instant::now();
                for k in kept.iter_mut().filter(|k| k.due(now)) {
                    k.save(false).await;
                }
            }
        }
    }
    for k in kept.iter_mut() {
        k.save(true).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    fn saved_in(file: &Path) -> Saved {
        serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap()
    }

    #[test]
    fn the_first_start_is_full_a_damaged_file_empty() {
        let dir = tempfile::tempdir().unwrap();
        let b = load(dir.path(), "lte", 30 * MB, BudgetGauges::default());
        assert_eq!(b.available(), 3.0 * MB as f64);
        std::fs::write(path(dir.path(), "lte"), b"{\"budget\": 30").unwrap();
        let b = load(dir.path(), "lte", 30 * MB, BudgetGauges::default());
        assert!(b.available() < 10.0, "{}", b.available());
    }

    /// Waits until `file` holds a save that `ok` accepts.
    async fn wait_for_save(file: &Path, ok: impl Fn(&Saved) -> bool) -> Saved {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(text) = std::fs::read(file) {
                if let Ok(saved) = serde_json::from_slice::<Saved>(&text) {
                    if ok(&saved) {
                        return saved;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no such save in {}",
                file.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_restart_goes_on_from_what_the_last_run_spent() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path(), "lte");
        let first = Arc::new(load(dir.path(), "lte", 30 * MB, BudgetGauges::default()));
        let stop = CancellationToken::new();
        let keeper = tokio::spawn(keep_looking(
            vec![Kept::new(dir.path(), "lte", first.clone())],
            Duration::from_millis(50),
            stop.clone(),
        ));
        // Saved at once, as a run that has not stopped cleanly.
        let at_start = wait_for_save(&file, |s| !s.clean).await;
        assert_eq!(at_start.level, 3e6);
        // 200 kB is more than a twentieth of the 3 MB bucket: saved at the
        // keeper's next look, before any stop.
        first.spend(200_000);
        let running = wait_for_save(&file, |s| s.level < 2.9e6).await;
        assert!((running.level - 2.8e6).abs() < 10.0, "{}", running.level);
        assert!(!running.clean);
        assert_eq!(first.unsaved(), 0);
        // Spending below the share waits for the stop, which saves it clean.
        first.spend(1_000);
        stop.cancel();
        keeper.await.unwrap();
        let stopped = saved_in(&file);
        assert!(stopped.clean);
        assert!((stopped.level - 2.799e6).abs() < 10.0, "{}", stopped.level);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // The next run starts from there, not from a full bucket.
        let second = load(dir.path(), "lte", 30 * MB, BudgetGauges::default());
        assert!(
            (second.available() - 2.799e6).abs() < 100.0,
            "{}",
            second.available()
        );
    }

    #[tokio::test]
    async fn a_run_that_never_stopped_cleanly_costs_the_next_one_a_twentieth() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path(), "lte");
        let first = Arc::new(load(dir.path(), "lte", 30 * MB, BudgetGauges::default()));
        let keeper = tokio::spawn(keep(
            vec![Kept::new(dir.path(), "lte", first.clone())],
            CancellationToken::new(),
        ));
        wait_for_save(&file, |s| !s.clean).await;
        // A crash: the keeper never saves again.
        keeper.abort();
        let _ = keeper.await;
        first.spend(50_000);
        let second = load(dir.path(), "lte", 30 * MB, BudgetGauges::default());
        assert!(
            (second.available() - 2.85e6).abs() < 100.0,
            "{}",
            second.available()
        );
    }

    #[tokio::test]
    async fn a_failed_save_keeps_the_spending_for_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let budget = Arc::new(Budget::new(30 * MB, BudgetGauges::default()));
        budget.spend(300_000);
        let mut k = Kept::new(&gone, "lte", budget.clone());
        k.save(false).await;
        assert!(k.failing);
        assert_eq!(budget.unsaved(), 300_000);
        std::fs::create_dir(&gone).unwrap();
        k.save(false).await;
        assert!(!k.failing);
        assert_eq!(budget.unsaved(), 0);
        assert!((saved_in(&k.file).level - 2.7e6).abs() < 10.0);
    }
}

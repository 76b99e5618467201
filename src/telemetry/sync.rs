//! A following hub's view of the main hub's registry: connected or not,
//! the last snapshot applied, the site changes it made (metrics
//! `townlink_sync_*`, the status line "sites from MAIN at ENDPOINT").

use super::{now, Telemetry};

impl Telemetry {
    /// The channel to the main hub is open (a snapshot arrived) or gone.
    pub fn sync_connected(&self, connected: bool) {
        self.metrics.sync_connected.set(connected as i64);
        if let Some(f) = &mut self.status().follow {
            f.connected = connected;
        }
    }

    /// A snapshot of the main hub's registry was applied: `changes` site
    /// changes made here.
    pub fn sync_applied(&self, version: u64, changes: u64) {
        let at = now();
        self.metrics.sync_last_snapshot.set(at);
        self.metrics.sync_applied_changes.inc_by(changes);
        if let Some(f) = &mut self.status().follow {
            f.last_snapshot = Some(at);
            f.version = Some(version);
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::dir_with_key;

    #[test]
    fn a_followers_status_says_where_its_sites_come_from() {
        let dir = dir_with_key();
        let text = format!(
            "role = \"hub\"\n[tunnel]\ninterface = \"tl0\"\nprivate_key_file = \"k.key\"\n\
             address = \"10.99.0.254/24\"\nlisten_port = 51820\n[probe]\n\
             certificate_file = \"p.crt\"\nkey_file = \"p.key\"\n[follow]\n\
             endpoint = \"hub-main.example.net:51821\"\nfingerprint = \"{}\"\n",
            crate::fingerprint::Fingerprint::from_bytes([7; 32])
        );
        let t = Telemetry::new(&crate::config::parse(&text, dir.path()).unwrap());
        let shown = t.snapshot().render(now());
        assert!(
            shown.contains("sites from main at hub-main.example.net:51821: NOT CONNECTED, no snapshot since start"),
            "{shown}"
        );
        t.sync_applied(12, 3);
        t.sync_connected(true);
        let shown = t.snapshot().render(now());
        assert!(
            shown.contains(
                "sites from main at hub-main.example.net:51821: connected, last snapshot v12"
            ),
            "{shown}"
        );
        let m = t.encode();
        assert!(m.contains("townlink_sync_following 1"), "{m}");
        assert!(m.contains("townlink_sync_connected 1"), "{m}");
        assert!(m.contains("townlink_sync_applied_changes_total 3"), "{m}");
        t.sync_connected(false);
        assert!(!t.snapshot().follow.unwrap().connected);
    }
}

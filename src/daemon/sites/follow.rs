//! The hubs' registry sync (issue 18), carried out: on the main hub, each
//! change of the registry makes a new snapshot frame for the followers
//! (`probe::responder` sends it); on a following hub, each snapshot
//! received is persisted, then applied as one job under the sites' lock,
//! through the same [`SiteDeps`] as every site change:
//! persist the copy → remove revoked and removed sites → install the
//! joined ones → commit. A crash after the persist: the next start
//! applies the copy. At start a follower applies its copy before the main
//! hub answers.

use std::path::Path;
use std::sync::atomic::Ordering;

use super::*;
use crate::enroll::hub::FollowPlan;
use crate::enroll::sync::Snapshot;

/// A follower's copy of the main hub's registry, under `state_directory`.
pub const FOLLOWED_FILE: &str = "followed-sites.json";

impl HubSites {
    /// The registry, written by the caller, is now the state; followers
    /// get its new snapshot.
    pub(super) fn commit(&self, roster: &mut Roster, registry: Registry) {
        roster.commit(registry);
        self.publish_registry(roster);
    }

    /// A new snapshot frame for the followers.
    fn publish_registry(&self, roster: &Roster) {
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        match Snapshot::of(roster.registry(), version).encode_frame() {
            Ok(frame) => {
                self.frames.send_replace(Arc::new(frame));
            }
            Err(e) => tracing::error!(
                error = %e,
                "the registry cannot be sent to the followers: they keep the last snapshot"
            ),
        }
    }

    /// The latest snapshot frame and each next one (the responder sends
    /// them to the followers).
    pub fn registry_frames(&self) -> watch::Receiver<Arc<Vec<u8>>> {
        self.frames.subscribe()
    }

    /// `site add` and `site remove` run on the main hub only.
    pub(super) fn not_following(&self) -> Result<(), SiteError> {
        match &self.follow {
            Some(f) => Err(SiteError::Follows {
                main: f.main.clone(),
                endpoint: f.endpoint.to_string(),
            }),
            None => Ok(()),
        }
    }

    pub fn following(&self) -> Option<&FollowConfig> {
        self.follow.as_ref()
    }

    /// At start: a main hub makes its first snapshot; a follower applies
    /// its persisted copy, so it serves every site it knew while the main
    /// hub does not answer.
    pub(super) async fn start_following(&self) -> Result<(), SiteError> {
        if self.follow.is_none() {
            let roster = self.roster.lock().await;
            self.publish_registry(&roster);
            return Ok(());
        }
        match load_followed(&self.followed_path) {
            Ok(None) => {
                tracing::info!(copy = %self.followed_path.display(), "no copy of the main hub's registry yet");
            }
            Ok(Some(snapshot)) => {
                let plan = self.follow_now(snapshot, false).await?;
                tracing::info!(
                    copy = %self.followed_path.display(),
                    sites = plan.active.len(),
                    "sites installed from the copy of the main hub's registry"
                );
            }
            // The main hub sends a whole new snapshot when it answers.
            Err(e) => tracing::error!(
                copy = %self.followed_path.display(),
                error = %e,
                "the copy of the main hub's registry is not valid: it is ignored until the \
                 main hub sends its registry"
            ),
        }
        Ok(())
    }

    /// A snapshot from the main hub, applied as a job of its own.
    pub async fn follow(self: &Arc<Self>, snapshot: Snapshot) -> Result<FollowPlan, SiteError> {
        let this = self.clone();
        let what = format!("follow registry version {}", snapshot.version);
        self.change(what, async move { this.follow_now(snapshot, true).await })
            .await
    }

    async fn follow_now(
        &self,
        snapshot: Snapshot,
        from_main: bool,
    ) -> Result<FollowPlan, SiteError> {
        let mut roster = self.roster.lock().await;
        let reserved = self
            .deps
            .reserved(self.hub.address, roster.settings())
            .await?;
        let mut plan = roster.follow_plan(&snapshot, &reserved, self.hub.address.addr());
        // 1. Persist first: a crash from here on is repaired by the next
        //    start, which applies the copy.
        if from_main && roster.followed().map(|f| &f.sites) != Some(&snapshot.sites) {
            self.persist_followed(&snapshot).await?;
        }
        self.checkpoint(Step::Persisted)?;
        // 2. What goes, then what comes (a removed site may free an
        //    address or a LAN).
        for (s, what) in plan
            .revocations
            .iter()
            .map(|s| (s, "revoked"))
            .chain(plan.removals.iter().map(|s| (s, "removed")))
        {
            let closed = self.deps.sessions.close_site(&s.name);
            match self.deps.uninstall(s).await {
                Ok(()) => {
                    tracing::warn!(site = %s.name, probe_connections_closed = closed, "site {what} on the main hub: peer, routes and probes removed")
                }
                Err(e) => {
                    tracing::error!(site = %s.name, error = %e, "site {what} on the main hub, but not every trace of it could be removed")
                }
            }
        }
        for s in &plan.joins {
            match self.deps.install(s, SiteSource::Followed).await {
                Ok(()) => {
                    tracing::info!(site = %s.name, address = %s.address, "site joined on the main hub: installed")
                }
                Err(e) => {
                    tracing::error!(site = %s.name, error = %e, "cannot install the main hub's site: retried at its next snapshot");
                    plan.active.remove(&s.name);
                }
            }
        }
        for c in &plan.conflicts {
            tracing::warn!(site = %c.site, reason = %c.reason, "the main hub's site is not installed here");
        }
        self.checkpoint(Step::Applied)?;
        // 3. Probes welcome.
        roster.finish_follow(snapshot.clone(), plan.active.clone());
        self.deps.publish(roster.active());
        if from_main {
            self.deps
                .telemetry
                .sync_applied(snapshot.version, plan.changes() as u64);
        }
        Ok(plan)
    }

    /// Writes the copy (atomic replace, fsync, mode 0600) on the blocking pool.
    async fn persist_followed(&self, snapshot: &Snapshot) -> Result<(), SiteError> {
        let path = self.followed_path.clone();
        let bytes = snapshot
            .encode()
            .map_err(|e| SiteError::RegistryTask(e.to_string()))?;
        let written = tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            crate::fsutil::write_atomic(&path, &bytes, 0o600)
        })
        .await
        .map_err(|e| SiteError::RegistryTask(e.to_string()))?;
        written.map_err(|source| SiteError::FollowedWrite {
            path: self.followed_path.clone(),
            source,
        })
    }
}

/// The persisted copy; `None` when there is none yet.
fn load_followed(path: &Path) -> Result<Option<Snapshot>, String> {
    match std::fs::read(path) {
        Ok(bytes) => Snapshot::decode(&bytes)
            .map(Some)
            .map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

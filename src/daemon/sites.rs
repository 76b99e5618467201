//! The hub's live set of sites, carried out: the decisions are
//! `enroll::hub::Roster`'s (pure, unit-tested there); here they run as
//! jobs, under one lock, with their side effects: the registry file, the
//! tunnel peer, the LAN routes, the probe certificates, telemetry and the
//! collector's peers ([`SiteDeps`]).
//!
//! Every change is made under one lock and persisted before it is
//! answered, so concurrent `site add` never lose a site nor hand out an
//! address twice. A change that cannot be completed is undone.
//!
//! Each change runs as a job of its own under the daemon's supervisor and
//! holds the lock to its end: a caller that gives up (the control
//! socket's 5 s, the enrollment's 15 s) only stops waiting, never the
//! change. The registry is the source of truth and is written first; the
//! kernel and the tunnel follow it, and every start installs every joined
//! site from it. So a crash at any step leaves a state the next start
//! repairs:
//! - join: persist "joined" → install peer and routes → publish the probe
//!   certificate. A crash after the persist: the next start installs the
//!   site; the annex, whose answer was lost, joins again with the same
//!   token and keys and gets its settings again.
//! - remove: persist "revoked" → close probe sessions, remove peer and
//!   routes. A crash after the persist: the next start does not install
//!   the site. The revocation, once recorded, is never lost.
//!
//! Registry writes (fsync) run on the blocking pool.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use ipnet::IpNet;
use tokio::sync::{watch, Mutex};

use futures::future::BoxFuture;

use super::supervisor::Supervisor;
use super::unix_now;
use crate::config::{EnrollmentConfig, FollowConfig};
use crate::control::server::SiteAdmin;
pub use crate::enroll::hub::HubIdentity;
pub use crate::enroll::hub::SiteError;
use crate::enroll::hub::{info_of, lan_allowed, site_name, Admission, JoinRefusal, Roster};
use crate::enroll::registry::Registry;
use crate::enroll::{JoinRequest, JoinResponse, Settings};
use crate::fingerprint::Fingerprint;
use crate::keys::PublicKey;
use crate::netlink::Netlink;
use crate::probe::responder::Sessions;
use crate::probe::tls::AllowedSites;
use crate::routing;
use crate::sites::{Name, Reserved, Site, SiteInfo, SiteSet, SiteSource};
use crate::telemetry::collector::CollectorTargets;
use crate::telemetry::{stamp, Telemetry};
use crate::tunnel::{PeerConfig, Tunnel};

pub struct HubSites {
    roster: Mutex<Roster>,
    deps: SiteDeps,
    /// The registry file (fixed until a restart).
    registry_path: PathBuf,
    hub: HubIdentity,
    /// Runs each change as a job of its own.
    supervisor: Supervisor,
    /// `[follow]`: the main hub this hub follows (its `site add` and
    /// `site remove` are refused there); `None` on a main hub.
    follow: Option<FollowConfig>,
    /// A follower's copy of the main hub's registry (`follow.rs`).
    followed_path: PathBuf,
    /// The registry as followers receive it: the latest snapshot frame.
    frames: watch::Sender<Arc<Vec<u8>>>,
    /// The registry's version in `frames`.
    version: std::sync::atomic::AtomicU64,
    /// Tests: the step at which the next change stops dead, as in a crash.
    #[cfg(test)]
    crash_at: std::sync::Mutex<Option<Step>>,
}

/// The steps of a change after which a crash leaves something to repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The registry has the new state; the kernel and tunnel not yet.
    Persisted,
    /// The peer and routes follow the registry; not yet published.
    Applied,
}

impl std::fmt::Debug for HubSites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSites").finish_non_exhaustive()
    }
}

/// The tunnel peer of a site: no endpoint (the annex calls in, possibly
/// from behind a carrier's NAT; WireGuard roaming follows it).
pub fn site_peer(site: &Site) -> PeerConfig {
    PeerConfig {
        public_key: site.public_key,
        endpoint: None,
        allowed_ips: site.allowed_ips(),
        keepalive: None,
    }
}

/// What a site's installation touches, and the only code that touches
/// it: the tunnel peer, the LAN routes, the probe certificates, the
/// status view and the collector's peers; and the hub's networks that no
/// LAN may take.
pub struct SiteDeps {
    pub tunnel: Arc<Tunnel>,
    pub net: Netlink,
    pub interface: String,
    pub allowed: Arc<AllowedSites>,
    pub sessions: Arc<Sessions>,
    pub telemetry: Arc<Telemetry>,
    pub collector: watch::Sender<CollectorTargets>,
    /// The installed sites, for the return path (`super::return_path`).
    pub installed: watch::Sender<Vec<Site>>,
}

impl SiteDeps {
    /// Peer and LAN routes of a site. A route townlink did not make to
    /// the same prefix is never replaced: the install fails instead.
    async fn install(&self, site: &Site, source: SiteSource) -> anyhow::Result<()> {
        self.tunnel.add_peer(&site_peer(site)).await?;
        for route in routing::site_routes(site, &self.interface) {
            if let Err(e) = self.net.add_route(&route).await {
                let _ = self.uninstall(site).await;
                return Err(e.into());
            }
        }
        self.telemetry
            .add_site(site.name.as_str(), site.address, source);
        tracing::info!(site = %site.name, address = %site.address, "site added");
        Ok(())
    }

    /// Routes, peer and status line of a site; every step is tried.
    async fn uninstall(&self, site: &Site) -> anyhow::Result<()> {
        let mut first_error = None;
        for route in routing::site_routes(site, &self.interface) {
            if let Err(e) = self.net.delete_route(&route).await {
                first_error.get_or_insert(anyhow::Error::from(e));
            }
        }
        if let Err(e) = self.tunnel.remove_peer(&site.public_key).await {
            first_error.get_or_insert(e.into());
        }
        self.telemetry.remove_site(site.name.as_str());
        first_error.map_or(Ok(()), Err)
    }

    /// Probe certificates and collector sources from the installed sites.
    fn publish(&self, active: &SiteSet) {
        self.allowed.set(
            active
                .iter()
                .filter_map(|s| s.certificate.map(|f| (f, s.name.clone()))),
        );
        self.collector.send_modify(|s| {
            s.peers = active
                .iter()
                .map(|s| (s.public_key, s.name.to_string()))
                .collect();
        });
        self.installed
            .send_replace(active.iter().cloned().collect());
    }

    /// What no site's LAN may take on this hub now: the tunnel network,
    /// `enrollment.routes` (a LAN inside one is fine), the hub's addresses
    /// and the routes of its main table that townlink did not make.
    async fn reserved(
        &self,
        hub_address: IpNet,
        enrollment: &EnrollmentConfig,
    ) -> Result<Vec<Reserved>, SiteError> {
        let tunnel = hub_address.trunc();
        let mut reserved = vec![Reserved {
            prefix: tunnel,
            what: format!("the tunnel network {tunnel}"),
            inside_ok: false,
        }];
        reserved.extend(enrollment.routes.iter().enumerate().map(|(i, r)| Reserved {
            prefix: *r,
            what: format!("enrollment.routes[{i}] {r}"),
            inside_ok: true,
        }));
        let kernel = self
            .net
            .kernel_routes()
            .await
            .map_err(SiteError::HubRoutes)?;
        reserved.extend(routing::hub_reserved(&kernel));
        Ok(reserved)
    }

    /// The last handshake of each peer (Unix s); none if the tunnel does
    /// not answer.
    async fn handshakes(&self) -> HashMap<PublicKey, u64> {
        match self.tunnel.status().await {
            Ok(s) => s
                .peers
                .iter()
                .filter_map(|p| {
                    let t = p.last_handshake?.duration_since(UNIX_EPOCH).ok()?;
                    Some((p.public_key, t.as_secs()))
                })
                .collect(),
            Err(_) => HashMap::new(),
        }
    }
}

/// Everything the hub needs to run its sites.
pub struct HubSitesSetup {
    pub deps: SiteDeps,
    pub enrollment: EnrollmentConfig,
    pub hub: HubIdentity,
    pub supervisor: Supervisor,
    /// `[follow]`: the sites come from the main hub (the registry file
    /// is not read; the followed copy is, under `state_directory`).
    pub follow: Option<FollowConfig>,
    pub state_directory: PathBuf,
}

impl HubSites {
    /// Loads the registry and installs every site (config and joined):
    /// peers, LAN routes, probe certificates.
    pub async fn start(
        config_sites: SiteSet,
        setup: HubSitesSetup,
    ) -> anyhow::Result<Arc<HubSites>> {
        let HubSitesSetup {
            deps,
            enrollment,
            hub,
            supervisor,
            follow,
            state_directory,
        } = setup;
        // A follower's sites come from the main hub, never its own file.
        let registry = match follow {
            Some(_) => Registry::default(),
            None => Registry::load(&enrollment.registry)?,
        };
        let reserved = deps.reserved(hub.address, &enrollment).await?;
        let registry_path = enrollment.registry.clone();
        let (mut roster, to_install) =
            Roster::start(config_sites, enrollment, registry, &reserved)?;
        for site in to_install.iter() {
            deps.install(site, roster.source_of(&site.name)).await?;
            roster
                .activate(site.clone())
                .expect("checked by Roster::start");
            if site.certificate.is_none() {
                tracing::warn!(site = %site.name, "site has no certificate: its probes will be refused");
            }
        }
        deps.publish(roster.active());
        for (site, follower) in roster.at_follower_addresses(&hub.followers) {
            tracing::warn!(
                site = %site,
                follower = %follower,
                "the site has the tunnel address of the backup hub {follower}, which does not \
                 serve it: run `townlink site remove {site}` and enroll it again"
            );
        }
        // A follower's registry is its copy of the main hub's, not the
        // `[enrollment] registry` file it never reads.
        let shown = match follow {
            Some(_) => state_directory.join(follow::FOLLOWED_FILE),
            None => registry_path.clone(),
        };
        tracing::info!(
            sites = roster.active().len(),
            pending = roster.pending(),
            registry = %shown.display(),
            "sites installed"
        );
        let sites = Arc::new(HubSites {
            roster: Mutex::new(roster),
            deps,
            registry_path,
            hub,
            supervisor,
            follow,
            followed_path: state_directory.join(follow::FOLLOWED_FILE),
            frames: watch::channel(Arc::new(Vec::new())).0,
            version: std::sync::atomic::AtomicU64::new(0),
            #[cfg(test)]
            crash_at: std::sync::Mutex::new(None),
        });
        sites.start_following().await?;
        Ok(sites)
    }

    /// Runs a change as a job of its own: the caller may stop waiting
    /// (timeout, dropped future), the change goes on to its end.
    async fn change<T, E, F>(&self, what: String, change: F) -> Result<T, E>
    where
        F: std::future::Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<SiteError> + Send + 'static,
    {
        match self.supervisor.job(what.clone(), change).await {
            Ok(Some(result)) => result,
            _ => Err(E::from(SiteError::Interrupted { what })),
        }
    }

    /// Writes the registry (atomic replace, fsync) on the blocking pool.
    async fn persist(&self, registry: &Registry) -> Result<(), SiteError> {
        let (registry, path) = (registry.clone(), self.registry_path.clone());
        tokio::task::spawn_blocking(move || registry.save(&path))
            .await
            .map_err(|e| SiteError::RegistryTask(e.to_string()))??;
        Ok(())
    }

    /// Where tests stop a change dead, as a crash would; nothing in
    /// production builds.
    fn checkpoint(&self, _step: Step) -> Result<(), SiteError> {
        #[cfg(test)]
        if *self.crash_at.lock().unwrap() == Some(_step) {
            return Err(SiteError::Crashed(match _step {
                Step::Persisted => "Persisted",
                Step::Applied => "Applied",
            }));
        }
        Ok(())
    }

    /// A reloaded config: the `[[site]]` tables and `[enrollment]`
    /// settings. Sites that changed are removed and added again; the
    /// others keep their sessions. Refused whole if the new sites conflict
    /// with enrolled ones. Returns what changed, in words.
    pub async fn reload(
        self: &Arc<Self>,
        config_sites: SiteSet,
        enrollment: EnrollmentConfig,
    ) -> Result<Vec<String>, SiteError> {
        let this = self.clone();
        self.change("sites reload".into(), async move {
            this.reload_now(config_sites, enrollment).await
        })
        .await
    }

    async fn reload_now(
        &self,
        config_sites: SiteSet,
        enrollment: EnrollmentConfig,
    ) -> Result<Vec<String>, SiteError> {
        let mut roster = self.roster.lock().await;
        let mut changes = Vec::new();
        if enrollment.registry != self.registry_path {
            changes.push("enrollment.registry: takes effect at the next restart".to_string());
        }
        let reserved = self.deps.reserved(self.hub.address, &enrollment).await?;
        let mut plan = roster.plan_reload(&config_sites, &reserved)?;
        for s in &plan.displaced {
            self.deps.sessions.close_site(&s.name);
            if let Err(e) = self.deps.uninstall(s).await {
                tracing::error!(site = %s.name, error = %e, "not every trace of the main hub's site could be removed");
            }
            tracing::warn!(site = %s.name, "the main hub's site is removed here: a new [[site]] table clashes with it (this hub's own tables win)");
            changes.push(format!("site {} of the main hub removed", s.name));
        }
        for s in &plan.gone {
            self.deps.sessions.close_site(&s.name);
            if let Err(e) = self.deps.uninstall(s).await {
                tracing::error!(site = %s.name, error = %e, "not every trace of the site could be removed");
            }
            changes.push(format!("site {} removed", s.name));
        }
        for s in &plan.new {
            if let Err(e) = self.deps.install(s, SiteSource::Config).await {
                tracing::error!(site = %s.name, error = %e, "cannot add the site");
                plan.active.remove(&s.name);
                continue;
            }
            changes.push(format!("site {} added", s.name));
        }
        let settings_changed =
            roster.finish_reload(config_sites, enrollment, plan.active, &self.registry_path);
        self.deps.publish(roster.active());
        changes.extend(settings_changed);
        Ok(changes)
    }

    /// `site add`: reserves an address and issues a token.
    pub async fn add(
        self: &Arc<Self>,
        name: &str,
        lan: &[IpNet],
        ttl: Option<Duration>,
    ) -> Result<(String, SiteInfo), SiteError> {
        self.not_following()?;
        let name = site_name(name)?;
        let (this, lan) = (self.clone(), lan.to_vec());
        self.change(format!("site add {name}"), async move {
            this.add_now(name, &lan, ttl).await
        })
        .await
    }

    async fn add_now(
        &self,
        name: Name,
        lan: &[IpNet],
        ttl: Option<Duration>,
    ) -> Result<(String, SiteInfo), SiteError> {
        let mut roster = self.roster.lock().await;
        let reserved = self
            .deps
            .reserved(self.hub.address, roster.settings())
            .await?;
        let now = unix_now();
        let (registry, entry, token) = roster.add(name, lan, ttl, now, &reserved, &self.hub)?;
        self.persist(&registry).await?;
        self.commit(&mut roster, registry);
        tracing::info!(site = %entry.name, address = %entry.address, expires = %stamp(token.expires), "site added: token issued");
        Ok((token.encode_secret(), info_of(&entry, None, now)))
    }

    /// `site list`.
    pub async fn list(&self) -> Vec<SiteInfo> {
        let handshakes = self.deps.handshakes().await;
        let roster = self.roster.lock().await;
        let mut list = roster.list(&handshakes, unix_now());
        for site in &mut list {
            site.tunnel_on = self.deps.telemetry.site_tunnel_on(&site.name);
            site.attachment = self.deps.telemetry.site_attachment(&site.name);
        }
        list
    }

    /// `site remove`: revokes a site live.
    pub async fn remove(self: &Arc<Self>, name: &str) -> Result<SiteInfo, SiteError> {
        self.not_following()?;
        let name = site_name(name)?;
        let this = self.clone();
        self.change(format!("site remove {name}"), async move {
            this.remove_now(name).await
        })
        .await
    }

    async fn remove_now(&self, name: Name) -> Result<SiteInfo, SiteError> {
        let mut roster = self.roster.lock().await;
        let now = unix_now();
        let (registry, revoked) = roster.revoke(&name, now)?;
        // 1. Persist first: from here on, no start brings the site back.
        self.persist(&registry).await?;
        self.commit(&mut roster, registry);
        self.checkpoint(Step::Persisted)?;
        // 2. Then the live state follows: probes, peer, routes.
        if let Some(site) = roster.deactivate(&name) {
            self.deps.publish(roster.active());
            let closed = self.deps.sessions.close_site(&name);
            if let Err(e) = self.deps.uninstall(&site).await {
                tracing::error!(site = %name, error = %e, "revoked, but not every trace of the site could be removed");
                return Err(SiteError::NotCleared {
                    site: name,
                    detail: format!("{e:#}"),
                });
            }
            tracing::warn!(site = %name, probe_connections_closed = closed, "site revoked: peer, routes and probes removed");
        } else {
            tracing::warn!(site = %name, "pending site revoked: its token is void");
        }
        self.checkpoint(Step::Applied)?;
        Ok(info_of(&revoked, None, now))
    }

    /// An annex's enrollment request, over QUIC with certificate
    /// `certificate`: decided by [`Roster::admit`] (the secret first, one
    /// answer to whoever does not prove the token), then carried out.
    pub async fn join(
        self: &Arc<Self>,
        request: JoinRequest,
        certificate: Fingerprint,
        remote: SocketAddr,
    ) -> JoinResponse {
        let this = self.clone();
        // Remote text: logged only once it is a valid site name.
        let site = Name::new(&request.site).ok();
        let what = site
            .as_ref()
            .map_or("site join".to_string(), |n| format!("site join {n}"));
        let result = self
            .change(
                what,
                async move { this.try_join(&request, certificate).await },
            )
            .await;
        let site = site.map_or("(invalid)".to_string(), |n| n.to_string());
        match result {
            Ok(settings) => {
                self.deps.telemetry.enrollment(true);
                tracing::info!(site = %settings.site, %remote, address = %settings.address, "site joined");
                JoinResponse::Joined(settings)
            }
            Err(JoinRefusal::NotAToken { detail }) => {
                self.deps.telemetry.enrollment(false);
                tracing::warn!(site = %site, %remote, %detail, "enrollment refused: the request proves no token");
                JoinResponse::Refused {
                    reason: JoinRefusal::NotAToken { detail }.to_string(),
                }
            }
            Err(refusal) => {
                self.deps.telemetry.enrollment(false);
                let reason = refusal.to_string();
                tracing::warn!(site = %site, %remote, %reason, "enrollment refused");
                JoinResponse::Refused { reason }
            }
        }
    }

    async fn try_join(
        &self,
        request: &JoinRequest,
        certificate: Fingerprint,
    ) -> Result<Settings, JoinRefusal> {
        let mut roster = self.roster.lock().await;
        let now = unix_now();
        let (site, joined) = match roster.admit(request, certificate, now, &self.hub.public_key)? {
            // The same token with the same keys: the annex lost our answer
            // (or a crash came between): answer again, install if needed.
            Admission::Again { site, entry } => {
                let name = site.name.clone();
                if roster.active().get(&name).is_none() {
                    self.lan_routable(&roster, &site).await?;
                    roster
                        .check_activate(&site)
                        .map_err(JoinRefusal::Conflict)?;
                    self.deps
                        .install(&site, SiteSource::Enrolled)
                        .await
                        .map_err(|e| JoinRefusal::NotAdded {
                            detail: format!("{e:#}"),
                        })?;
                    roster.activate(site).map_err(JoinRefusal::Conflict)?;
                    self.deps.publish(roster.active());
                }
                tracing::info!(site = %name, "join repeated with the same token and keys: settings sent again");
                return Ok(roster.settings_for(&entry, &self.hub)?);
            }
            Admission::First { site, joined } => (site, joined),
        };
        // The hub's networks as they are now (a route may have come since `site add`).
        self.lan_routable(&roster, &site).await?;
        roster
            .check_activate(&site)
            .map_err(JoinRefusal::Conflict)?;
        // 1. Persist: the registry is the source of truth; from here on a
        //    crash is repaired by the next start, which installs the site.
        let before = roster.registry().clone();
        let mut registry = before.clone();
        registry.put(joined.clone());
        self.persist(&registry)
            .await
            .map_err(JoinRefusal::NotRecorded)?;
        self.commit(&mut roster, registry);
        self.checkpoint(Step::Persisted)?;
        // 2. Peer and routes.
        if let Err(e) = self.deps.install(&site, SiteSource::Enrolled).await {
            // Back to pending, so that the token works again. Should that
            // fail too, the registry keeps "joined": a restart installs
            // the site, and the annex's retry gets its settings.
            match self.persist(&before).await {
                Ok(()) => self.commit(&mut roster, before),
                Err(e2) => {
                    tracing::error!(site = %site.name, error = %e2, "cannot undo the join in the registry")
                }
            }
            return Err(JoinRefusal::NotAdded {
                detail: format!("{e:#}"),
            });
        }
        self.checkpoint(Step::Applied)?;
        // 3. Its probes are welcome.
        roster.activate(site).map_err(JoinRefusal::Conflict)?;
        self.deps.publish(roster.active());
        Ok(roster.settings_for(&joined, &self.hub)?)
    }

    /// Refuses a site whose LAN would take one of the hub's networks now;
    /// the detail goes to the hub's journal only.
    async fn lan_routable(&self, roster: &Roster, site: &Site) -> Result<(), JoinRefusal> {
        let reserved = self
            .deps
            .reserved(self.hub.address, roster.settings())
            .await?;
        if let Err(e) = lan_allowed(site, &reserved) {
            tracing::error!(site = %site.name, "join refused: {e}");
            return Err(JoinRefusal::LanRefused(site.name.clone()));
        }
        Ok(())
    }
}

impl SiteAdmin for HubSites {
    fn site_add(
        self: Arc<Self>,
        name: String,
        lan: Vec<IpNet>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'static, Result<(String, SiteInfo), SiteError>> {
        Box::pin(async move { HubSites::add(&self, &name, &lan, ttl).await })
    }

    fn site_list(self: Arc<Self>) -> BoxFuture<'static, Vec<SiteInfo>> {
        Box::pin(async move { HubSites::list(&self).await })
    }

    fn site_remove(
        self: Arc<Self>,
        name: String,
    ) -> BoxFuture<'static, Result<SiteInfo, SiteError>> {
        Box::pin(async move { HubSites::remove(&self, &name).await })
    }
}

mod follow;

#[cfg(test)]
mod tests;

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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use tokio::sync::{watch, Mutex};

use futures::future::BoxFuture;

use super::supervisor::Supervisor;
use crate::config::EnrollmentConfig;
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub struct HubSites {
    roster: Mutex<Roster>,
    deps: SiteDeps,
    /// The registry file (fixed until a restart).
    registry_path: PathBuf,
    hub: HubIdentity,
    /// Runs each change as a job of its own.
    supervisor: Supervisor,
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
        } = setup;
        let registry = Registry::load(&enrollment.registry)?;
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
        tracing::info!(
            sites = roster.active().len(),
            pending = roster.pending(),
            registry = %registry_path.display(),
            "sites installed"
        );
        Ok(Arc::new(HubSites {
            roster: Mutex::new(roster),
            deps,
            registry_path,
            hub,
            supervisor,
            #[cfg(test)]
            crash_at: std::sync::Mutex::new(None),
        }))
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
        roster.commit(registry);
        tracing::info!(site = %entry.name, address = %entry.address, expires = %stamp(token.expires), "site added: token issued");
        Ok((token.encode_secret(), info_of(&entry, None, now)))
    }

    /// `site list`.
    pub async fn list(&self) -> Vec<SiteInfo> {
        let handshakes = self.deps.handshakes().await;
        let roster = self.roster.lock().await;
        roster.list(&handshakes, unix_now())
    }

    /// `site remove`: revokes a site live.
    pub async fn remove(self: &Arc<Self>, name: &str) -> Result<SiteInfo, SiteError> {
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
        roster.commit(registry);
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
        roster.commit(registry);
        self.checkpoint(Step::Persisted)?;
        // 2. Peer and routes.
        if let Err(e) = self.deps.install(&site, SiteSource::Enrolled).await {
            // Back to pending, so that the token works again. Should that
            // fail too, the registry keeps "joined": a restart installs
            // the site, and the annex's retry gets its settings.
            match self.persist(&before).await {
                Ok(()) => roster.commit(before),
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

#[cfg(test)]
mod tests {
    //! Site changes against a fake tunnel device and a real kernel routing
    //! table, in a network namespace of the test's own (needs root, as
    //! every test of townlink).
    use super::*;
    use crate::enroll::hub::{CLOCK_SANITY, NOT_A_TOKEN};
    use crate::enroll::registry::EntryState;
    use crate::enroll::token::SECRET_LEN;
    use crate::enroll::token::{Secret, Token};
    use crate::keys::PrivateKey;
    use crate::sites::SiteState;
    use crate::tunnel::fake::{self, FakeDevice};

    /// Runs `body` on a thread in a new network namespace.
    fn in_netns<F, Fut>(body: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        std::thread::spawn(move || {
            // SAFETY: unshare only changes this thread's network namespace.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {} (the tests need root)",
                std::io::Error::last_os_error()
            );
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(body());
        })
        .join()
        .expect("test thread");
    }

    const LAN: &str = "192.168.7.0/24";

    /// A hub's parts, with its registry in `dir`; sites routed via `lo`.
    struct Hub {
        dir: tempfile::TempDir,
        config: crate::config::Config,
        net: Netlink,
    }

    impl Hub {
        async fn new() -> Hub {
            let dir = tempfile::tempdir().unwrap();
            let key = PrivateKey::generate();
            let key_path = dir.path().join("hub.key");
            crate::fsutil::write_atomic(&key_path, key.to_base64_secret().as_bytes(), 0o600)
                .unwrap();
            let id = crate::probe::tls::Identity::generate("hub").unwrap();
            crate::fsutil::write_atomic(
                &dir.path().join("hub.crt"),
                id.cert_pem().as_bytes(),
                0o644,
            )
            .unwrap();
            crate::fsutil::write_atomic(
                &dir.path().join("hub.pem"),
                id.key_pem_secret().as_bytes(),
                0o600,
            )
            .unwrap();
            let text =
                "role = \"hub\"\n[tunnel]\ninterface = \"lo\"\nprivate_key_file = \"hub.key\"\n\
                        address = \"10.99.0.1/24\"\nlisten_port = 51820\n[probe]\n\
                        certificate_file = \"hub.crt\"\nkey_file = \"hub.pem\"\n[enrollment]\n\
                        registry = \"sites.json\"\nendpoints = [\"198.18.0.2:51820\"]\n\
                        routes = [\"10.50.0.0/24\"]\n";
            let config = crate::config::parse(text, dir.path()).unwrap();
            let net = Netlink::connect().unwrap();
            let lo = net.require_link("lo").await.unwrap();
            net.set_up(lo, "lo", 65535).await.unwrap();
            Hub { dir, config, net }
        }

        /// Starts the hub's sites on a fresh device, as a (re)start does:
        /// what an earlier run left in the kernel is purged first.
        async fn start(&self) -> (Arc<HubSites>, FakeDevice) {
            let (sites, device) = self.start_with(SiteSet::new()).await;
            (sites.unwrap(), device)
        }

        /// [`Hub::start`] with `[[site]]` tables.
        async fn start_with(
            &self,
            config_sites: SiteSet,
        ) -> (anyhow::Result<Arc<HubSites>>, FakeDevice) {
            self.net.purge().await.unwrap();
            let (tunnel, device) = fake::tunnel("lo", Duration::from_secs(2));
            let crate::config::Role::Hub(hub) = &self.config.role else {
                unreachable!()
            };
            let (supervisor, _) = Supervisor::new();
            let sites = HubSites::start(
                config_sites,
                HubSitesSetup {
                    deps: SiteDeps {
                        tunnel: Arc::new(tunnel),
                        net: self.net.clone(),
                        interface: "lo".into(),
                        allowed: Arc::default(),
                        sessions: Arc::default(),
                        telemetry: Telemetry::new(&self.config),
                        collector: watch::channel(CollectorTargets::default()).0,
                    },
                    enrollment: hub.enrollment.clone(),
                    hub: HubIdentity {
                        public_key: self.config.tunnel.private_key.public_key(),
                        fingerprint: crate::probe::tls::Identity::load(
                            &self.config.probe.certificate_file,
                            &self.config.probe.key_file,
                        )
                        .unwrap()
                        .fingerprint(),
                        probe_port: 51821,
                        address: self.config.tunnel.address,
                    },
                    supervisor,
                },
            )
            .await;
            (sites, device)
        }

        fn registry(&self) -> Registry {
            Registry::load(&self.dir.path().join("sites.json")).unwrap()
        }

        /// Runs `ip ARGS` in the test's namespace.
        fn ip(&self, args: &[&str]) -> String {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }

        /// The LAN prefixes routed by townlink (protocol 116).
        fn routes(&self) -> Vec<String> {
            let out = std::process::Command::new("ip")
                .args(["-j", "route", "show", "proto", "116"])
                .output()
                .unwrap();
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or(serde_json::json!([]));
            v.as_array()
                .unwrap()
                .iter()
                .map(|r| r["dst"].as_str().unwrap().to_string())
                .collect()
        }
    }

    /// An annex with its own keys and the token of `site add`.
    struct Annex {
        key: PublicKey,
        certificate: Fingerprint,
        token: Token,
    }

    impl Annex {
        async fn added(sites: &Arc<HubSites>, n: u8) -> Annex {
            let (token, _) = sites
                .add("annex-7", &[LAN.parse().unwrap()], None)
                .await
                .unwrap();
            Annex {
                key: PrivateKey::generate().public_key(),
                certificate: Fingerprint::from_bytes([n; 32]),
                token: Token::decode(&token).unwrap(),
            }
        }

        fn request(&self) -> JoinRequest {
            JoinRequest {
                site: "annex-7".into(),
                secret: hex::encode(self.token.secret.expose()),
                public_key: self.key.to_string(),
            }
        }

        async fn join(&self, sites: &Arc<HubSites>) -> JoinResponse {
            sites
                .join(
                    self.request(),
                    self.certificate,
                    "198.18.11.2:4000".parse().unwrap(),
                )
                .await
        }
    }

    /// `townlink status` shows the site.
    fn shown(sites: &HubSites) -> bool {
        sites
            .deps
            .telemetry
            .snapshot()
            .sites
            .iter()
            .any(|s| s.name == "annex-7")
    }

    fn state(hub: &Hub) -> &'static str {
        hub.registry()
            .get(&Name::new("annex-7").unwrap())
            .unwrap()
            .state
            .as_str()
    }

    #[test]
    fn a_join_goes_on_when_its_caller_gives_up() {
        in_netns(|| async {
            let hub = Hub::new().await;
            let (sites, device) = hub.start().await;
            let annex = Annex::added(&sites, 1).await;
            // A slow device: the enrollment's caller gives up half-way.
            device.set_delay(Duration::from_millis(300));
            let gave_up =
                tokio::time::timeout(Duration::from_millis(100), annex.join(&sites)).await;
            assert!(gave_up.is_err());
            // The change ends on its own: registry, peer, route, probes
            // (list() waits for the lock the change holds to its end).
            let _ = sites.list().await;
            assert_eq!(state(&hub), "joined");
            assert_eq!(device.peers(), vec![annex.key.to_hex()]);
            assert_eq!(hub.routes(), vec![LAN.to_string()]);
            assert_eq!(
                sites
                    .deps
                    .allowed
                    .site(&annex.certificate)
                    .map(|n| n.to_string()),
                Some("annex-7".to_string())
            );
            assert!(shown(&sites));
        });
    }

    #[test]
    fn a_remove_goes_on_when_its_caller_gives_up() {
        in_netns(|| async {
            let hub = Hub::new().await;
            let (sites, device) = hub.start().await;
            let annex = Annex::added(&sites, 1).await;
            assert!(matches!(annex.join(&sites).await, JoinResponse::Joined(_)));
            device.set_delay(Duration::from_millis(300));
            let gave_up =
                tokio::time::timeout(Duration::from_millis(50), sites.remove("annex-7")).await;
            assert!(gave_up.is_err());
            let _ = sites.list().await;
            assert_eq!(state(&hub), "revoked");
            assert_eq!(device.peers(), Vec::<String>::new());
            assert_eq!(hub.routes(), Vec::<String>::new());
            assert_eq!(sites.deps.allowed.site(&annex.certificate), None);
            assert!(!shown(&sites), "status still shows the revoked site");
        });
    }

    #[test]
    fn a_crash_at_any_step_of_a_join_is_repaired_by_the_next_start() {
        for step in [Step::Persisted, Step::Applied] {
            in_netns(move || async move {
                let hub = Hub::new().await;
                let (sites, _) = hub.start().await;
                let annex = Annex::added(&sites, 1).await;
                *sites.crash_at.lock().unwrap() = Some(step);
                // The annex never gets an answer (the hub died).
                assert!(
                    matches!(annex.join(&sites).await, JoinResponse::Refused { .. }),
                    "{step:?}"
                );
                drop(sites);
                let (sites, device) = hub.start().await;
                assert_eq!(state(&hub), "joined", "{step:?}");
                assert_eq!(device.peers(), vec![annex.key.to_hex()], "{step:?}");
                assert_eq!(hub.routes(), vec![LAN.to_string()], "{step:?}");
                // The annex asks again with the same token and keys: its settings.
                let JoinResponse::Joined(settings) = annex.join(&sites).await else {
                    panic!("{step:?}: the repeated join was refused")
                };
                assert_eq!(settings.address.to_string(), "10.99.0.2/24");
                assert_eq!(device.peers(), vec![annex.key.to_hex()]);
            });
        }
    }

    #[test]
    fn a_crash_at_any_step_of_a_remove_is_repaired_by_the_next_start() {
        for step in [Step::Persisted, Step::Applied] {
            in_netns(move || async move {
                let hub = Hub::new().await;
                let (sites, _) = hub.start().await;
                let annex = Annex::added(&sites, 1).await;
                assert!(matches!(annex.join(&sites).await, JoinResponse::Joined(_)));
                *sites.crash_at.lock().unwrap() = Some(step);
                assert!(sites.remove("annex-7").await.is_err(), "{step:?}");
                drop(sites);
                let (sites, device) = hub.start().await;
                assert_eq!(state(&hub), "revoked", "{step:?}");
                assert_eq!(device.peers(), Vec::<String>::new(), "{step:?}");
                assert_eq!(hub.routes(), Vec::<String>::new(), "{step:?}");
                assert_eq!(sites.deps.allowed.site(&annex.certificate), None);
            });
        }
    }

    #[test]
    fn a_lost_answer_is_sent_again_only_to_the_same_keys() {
        in_netns(|| async {
            let hub = Hub::new().await;
            let (sites, device) = hub.start().await;
            let annex = Annex::added(&sites, 1).await;
            let JoinResponse::Joined(first) = annex.join(&sites).await else {
                panic!("first join refused")
            };
            // The same annex again (its answer was lost): same settings, one peer.
            let JoinResponse::Joined(again) = annex.join(&sites).await else {
                panic!("repeated join refused")
            };
            assert_eq!(first, again);
            assert_eq!(device.peers(), vec![annex.key.to_hex()]);
            // Another key, or another certificate, with the same token: used.
            for other in [
                Annex {
                    key: PrivateKey::generate().public_key(),
                    certificate: annex.certificate,
                    token: annex.token.clone(),
                },
                Annex {
                    key: annex.key,
                    certificate: Fingerprint::from_bytes([2; 32]),
                    token: annex.token.clone(),
                },
            ] {
                let JoinResponse::Refused { reason } = other.join(&sites).await else {
                    panic!("a second annex joined with a used token")
                };
                assert!(reason.contains("already used"), "{reason}");
            }
            // Without the secret, the same keys are not enough.
            let mut forged = annex.request();
            forged.secret = "00".repeat(SECRET_LEN);
            let refused = sites
                .join(
                    forged,
                    annex.certificate,
                    "198.18.11.2:4000".parse().unwrap(),
                )
                .await;
            assert!(matches!(refused, JoinResponse::Refused { .. }));
            assert_eq!(device.peers(), vec![annex.key.to_hex()]);
        });
    }

    /// A route to `prefix` that an administrator made (proto static).
    fn admin_route(hub: &Hub, prefix: &str) {
        hub.ip(&["route", "add", prefix, "dev", "lo", "proto", "static"]);
    }

    #[test]
    fn site_add_refuses_a_lan_that_takes_the_hubs_networks() {
        in_netns(|| async {
            let hub = Hub::new().await;
            admin_route(&hub, "172.30.0.0/16");
            hub.ip(&["address", "add", "10.77.0.1/24", "dev", "lo"]);
            let (sites, _) = hub.start().await;
            let refused = |lan: &'static str| {
                let sites = sites.clone();
                async move {
                    sites
                        .add("annex-9", &[lan.parse().unwrap()], None)
                        .await
                        .unwrap_err()
                        .to_string()
                }
            };
            assert_eq!(
                refused("128.0.0.0/1").await,
                "site annex-9: LAN 128.0.0.0/1 is wider than /8: a site's LAN that large would \
                 take the hub's routes to a large part of the Internet"
            );
            assert_eq!(
                refused("10.50.0.0/24").await,
                "site annex-9: LAN 10.50.0.0/24 overlaps enrollment.routes[0] 10.50.0.0/24"
            );
            assert_eq!(
                refused("172.30.1.0/24").await,
                "site annex-9: LAN 172.30.1.0/24 overlaps the hub's route 172.30.0.0/16 dev lo \
                 (proto static), which townlink did not make"
            );
            let own = refused("10.77.0.0/24").await;
            assert!(
                own.starts_with("site annex-9: LAN 10.77.0.0/24 overlaps the hub's"),
                "{own}"
            );
            assert!(own.contains("10.77.0."), "{own}");
            assert_eq!(
                refused("10.99.0.0/25").await,
                "site annex-9: LAN 10.99.0.0/25 overlaps the tunnel network 10.99.0.0/24"
            );
            assert!(hub.registry().sites.is_empty(), "nothing recorded");
            // A LAN of its own is fine.
            sites
                .add("annex-9", &["192.168.9.0/24".parse().unwrap()], None)
                .await
                .unwrap();
        });
    }

    #[test]
    fn a_join_is_refused_when_the_hub_routes_the_lan_itself() {
        in_netns(|| async {
            let hub = Hub::new().await;
            let (sites, device) = hub.start().await;
            let annex = Annex::added(&sites, 1).await;
            // Between `site add` and `join`, the hub got a route to that LAN.
            admin_route(&hub, LAN);
            let JoinResponse::Refused { reason } = annex.join(&sites).await else {
                panic!("joined over the hub's own route")
            };
            assert!(
                reason.contains("overlaps one of the hub's own networks"),
                "{reason}"
            );
            assert_eq!(state(&hub), "pending");
            assert_eq!(device.peers(), Vec::<String>::new());
            assert_eq!(hub.routes(), Vec::<String>::new());
            let kept = hub.ip(&["route", "show", LAN]);
            assert!(kept.contains("proto static"), "{kept}");
        });
    }

    #[test]
    fn a_route_townlink_did_not_make_is_never_replaced() {
        in_netns(|| async {
            let hub = Hub::new().await;
            let (sites, device) = hub.start().await;
            // Install directly (the checks before it would refuse the
            // site): the route in place stays, the install fails whole.
            admin_route(&hub, LAN);
            let site = Site {
                name: Name::new("annex-7").unwrap(),
                public_key: PrivateKey::generate().public_key(),
                address: "10.99.0.9".parse().unwrap(),
                lan: vec![LAN.parse().unwrap()],
                certificate: None,
            };
            let e = sites
                .deps
                .install(&site, SiteSource::Enrolled)
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("that townlink did not make is in place (proto static)"),
                "{e}"
            );
            let kept = hub.ip(&["-j", "route", "show", LAN]);
            let kept: serde_json::Value = serde_json::from_str(&kept).unwrap();
            assert_eq!(kept.as_array().unwrap().len(), 1, "{kept}");
            assert_eq!(kept[0]["protocol"], "static", "{kept}");
            assert_eq!(hub.routes(), Vec::<String>::new());
            assert_eq!(
                device.peers(),
                Vec::<String>::new(),
                "the peer is taken back"
            );
            // Without the administrator's route it installs, and adding
            // its route again over townlink's own is fine.
            hub.ip(&["route", "del", LAN, "proto", "static"]);
            sites
                .deps
                .install(&site, SiteSource::Enrolled)
                .await
                .unwrap();
            for route in routing::site_routes(&site, "lo") {
                hub.net.add_route(&route).await.unwrap();
            }
            assert_eq!(hub.routes(), vec![LAN.to_string()]);
        });
    }

    #[test]
    fn a_start_refuses_a_config_site_over_the_hubs_route_and_skips_an_enrolled_one() {
        in_netns(|| async {
            let hub = Hub::new().await;
            let (sites, _) = hub.start().await;
            let annex = Annex::added(&sites, 1).await;
            assert!(matches!(annex.join(&sites).await, JoinResponse::Joined(_)));
            drop(sites);
            // The hub got a route of its own to the enrolled site's LAN.
            hub.net.purge().await.unwrap();
            admin_route(&hub, LAN);
            let (sites, device) = hub.start().await;
            assert_eq!(device.peers(), Vec::<String>::new(), "not installed");
            assert_eq!(hub.routes(), Vec::<String>::new());
            assert_eq!(state(&hub), "joined", "the registry is not changed");
            drop(sites);
            // A [[site]] over it: the start is refused, naming the site.
            let mut config = SiteSet::new();
            config
                .insert(Site {
                    name: Name::new("annex-8").unwrap(),
                    public_key: PrivateKey::generate().public_key(),
                    address: "10.99.0.8".parse().unwrap(),
                    lan: vec!["192.168.7.128/25".parse().unwrap()],
                    certificate: None,
                })
                .unwrap();
            let (refused, _) = hub.start_with(config).await;
            let e = refused
                .expect_err("started over the hub's route")
                .to_string();
            assert!(
                e.starts_with(
                    "site annex-8: LAN 192.168.7.128/25 overlaps the hub's route 192.168.7.0/24 \
                     dev lo (proto static)"
                ),
                "{e}"
            );
        });
    }

    /// What the daemon logs while `body` runs on this thread (the hub's
    /// journal), as text.
    async fn logged<F: std::future::Future>(body: F) -> (F::Output, String) {
        #[derive(Clone, Default)]
        struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        let out = body.await;
        drop(guard);
        let text = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
        (out, text)
    }

    fn refusal(response: JoinResponse) -> String {
        match response {
            JoinResponse::Refused { reason } => reason,
            JoinResponse::Joined(s) => panic!("joined: {s:?}"),
        }
    }

    #[test]
    fn a_wrong_secret_gets_one_answer_whatever_the_site() {
        in_netns(|| async {
            let hub = Hub::new().await;
            let (sites, device) = hub.start().await;
            let pending = Annex::added(&sites, 1).await;
            let ask = |site: &str, secret: String| {
                let sites = sites.clone();
                let request = JoinRequest {
                    site: site.into(),
                    secret,
                    public_key: PrivateKey::generate().public_key().to_string(),
                };
                async move {
                    let remote = "198.18.11.2:4000".parse().unwrap();
                    sites
                        .join(request, Fingerprint::from_bytes([9; 32]), remote)
                        .await
                }
            };
            let forged = || hex::encode(Secret::generate().expose());
            let hostile = format!("x\n{}", "evil\n".repeat(16 * 1024 / 5));
            let (answers, log) = logged(async {
                let mut answers = Vec::new();
                // Unknown, pending (wrong secret), not hex, hostile name.
                answers.push(refusal(ask("nobody", forged()).await));
                answers.push(refusal(ask("annex-7", forged()).await));
                answers.push(refusal(ask("annex-7", "zz".into()).await));
                answers.push(refusal(ask(&hostile, forged()).await));
                // Joined, then revoked: a wrong secret still learns nothing.
                assert!(matches!(
                    pending.join(&sites).await,
                    JoinResponse::Joined(_)
                ));
                answers.push(refusal(ask("annex-7", forged()).await));
                sites.remove("annex-7").await.unwrap();
                answers.push(refusal(ask("annex-7", forged()).await));
                answers
            })
            .await;
            for a in &answers {
                assert_eq!(a, NOT_A_TOKEN, "{answers:#?}");
            }
            assert_eq!(device.peers(), Vec::<String>::new());
            // The hub's journal keeps the detail; the hostile name never
            // reaches it (nor does any secret).
            for detail in [
                "no site of that name",
                "secret does not match (pending)",
                "secret is not 32 hex digits",
                "secret does not match (joined)",
                "secret does not match (revoked)",
            ] {
                assert!(log.contains(detail), "{detail}: {log}");
            }
            assert!(log.contains("site name not valid (16"), "{log}");
            assert!(!log.contains("evil"), "{log}");
            assert!(log.lines().all(|l| l.len() < 1000), "{log}");
        });
    }

    #[test]
    fn the_rightful_annex_hears_why_it_is_refused() {
        in_netns(|| async {
            let hub = Hub::new().await;
            let (sites, _) = hub.start().await;
            // Expired (the registry says so).
            let annex = Annex::added(&sites, 1).await;
            {
                let mut roster = sites.roster.lock().await;
                let mut registry = roster.registry().clone();
                let mut entry = registry
                    .get(&Name::new("annex-7").unwrap())
                    .unwrap()
                    .clone();
                entry.state = EntryState::Pending {
                    secret_hash: annex.token.secret.hash(),
                    expires: CLOCK_SANITY + 1,
                };
                registry.put(entry);
                roster.commit(registry);
            }
            let reason = refusal(annex.join(&sites).await);
            assert!(
                reason.starts_with("the token expired at 2025-01-01T00:00:01Z"),
                "{reason}"
            );
            sites.remove("annex-7").await.unwrap();
            // Revoked.
            let annex = Annex::added(&sites, 1).await;
            sites.remove("annex-7").await.unwrap();
            let reason = refusal(annex.join(&sites).await);
            assert!(
                reason.starts_with("site annex-7 was revoked at "),
                "{reason}"
            );
            // Already used by other keys.
            let annex = Annex::added(&sites, 1).await;
            assert!(matches!(annex.join(&sites).await, JoinResponse::Joined(_)));
            let other = Annex {
                key: PrivateKey::generate().public_key(),
                certificate: annex.certificate,
                token: annex.token.clone(),
            };
            let reason = refusal(other.join(&sites).await);
            assert!(
                reason.starts_with("this token was already used: site annex-7 joined at "),
                "{reason}"
            );
        });
    }

    #[test]
    fn an_unknown_site_costs_one_comparison_like_a_known_one() {
        in_netns(|| async {
            let hub = Hub::new().await;
            let (sites, _) = hub.start().await;
            let annex = Annex::added(&sites, 1).await;
            let mut costs = Vec::new();
            for site in ["annex-7", "nobody"] {
                let mut request = annex.request();
                request.site = site.into();
                request.secret = hex::encode(Secret::generate().expose());
                let before = crate::enroll::token::comparisons();
                let remote = "198.18.11.2:4000".parse().unwrap();
                refusal(sites.join(request, annex.certificate, remote).await);
                costs.push(crate::enroll::token::comparisons() - before);
            }
            assert_eq!(costs, vec![1, 1], "hash comparisons: known, unknown site");
        });
    }

    #[test]
    fn a_reload_refuses_a_site_over_the_hubs_route() {
        in_netns(|| async {
            let hub = Hub::new().await;
            let (sites, device) = hub.start().await;
            admin_route(&hub, "172.30.0.0/16");
            let mut config = SiteSet::new();
            config
                .insert(Site {
                    name: Name::new("annex-8").unwrap(),
                    public_key: PrivateKey::generate().public_key(),
                    address: "10.99.0.8".parse().unwrap(),
                    lan: vec!["172.30.8.0/24".parse().unwrap()],
                    certificate: None,
                })
                .unwrap();
            let crate::config::Role::Hub(h) = &hub.config.role else {
                unreachable!()
            };
            let e = sites
                .reload(config, h.enrollment.clone())
                .await
                .unwrap_err()
                .to_string();
            assert_eq!(
                e,
                "site annex-8: LAN 172.30.8.0/24 overlaps the hub's route 172.30.0.0/16 dev lo \
                 (proto static), which townlink did not make; sites left as they were"
            );
            assert_eq!(device.peers(), Vec::<String>::new());
            assert_eq!(hub.routes(), Vec::<String>::new());
        });
    }

    #[test]
    fn a_config_site_is_configured_with_its_keys_and_removed_by_a_reload() {
        in_netns(|| async {
            let hub = Hub::new().await;
            let key = PrivateKey::generate().public_key();
            let mut config = SiteSet::new();
            config
                .insert(Site {
                    name: Name::new("annex-8").unwrap(),
                    public_key: key,
                    address: "10.99.0.8".parse().unwrap(),
                    lan: vec![],
                    certificate: None,
                })
                .unwrap();
            let (sites, _) = hub.start_with(config).await;
            let sites = sites.unwrap();
            let listed = sites.list().await;
            assert_eq!(listed.len(), 1);
            let s = &listed[0];
            // Not "joined": it never registered anything, nor connected.
            assert_eq!(
                (s.state, s.source),
                (SiteState::Configured, SiteSource::Config)
            );
            assert_eq!(s.public_key, Some(key.to_string()));
            assert_eq!(s.certificate, None, "no made-up all-zero fingerprint");
            let e = sites.remove("annex-8").await.unwrap_err().to_string();
            assert!(
                e.contains("remove its [[site]] table, then `systemctl reload townlink`"),
                "{e}"
            );
        });
    }
}

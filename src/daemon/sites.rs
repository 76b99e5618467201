//! The hub's live set of sites: the `[[site]]` tables of its config and
//! the sites enrolled through the registry. Adding a site issues a token;
//! joining registers the annex's keys and adds its peer, routes and probe
//! certificate at once; removing revokes all of that, live, without
//! touching any other site's session.
//!
//! Every change is made under one lock and persisted before it is
//! answered, so concurrent `site add` never lose a site nor hand out an
//! address twice. A change that cannot be completed is undone.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use tokio::sync::{watch, Mutex};

use crate::config::EnrollmentConfig;
use crate::control::SiteInfo;
use crate::enroll::registry::{allocate, Entry, EntryState, Registry};
use crate::enroll::token::{Secret, Token, SECRET_LEN};
use crate::enroll::{JoinRequest, JoinResponse, Settings};
use crate::keys::PublicKey;
use crate::netlink::Netlink;
use crate::probe::responder::Sessions;
use crate::probe::tls::{AllowedSites, Fingerprint};
use crate::routing;
use crate::sites::{overlaps, Name, Site, SiteSet};
use crate::telemetry::collector::Sources;
use crate::telemetry::{stamp, Telemetry};
use crate::tunnel::{PeerConfig, Tunnel};

/// A session younger than this makes a site "connected" (WireGuard
/// rekeys every 2 minutes while traffic or keepalives flow).
const CONNECTED: Duration = Duration::from_secs(180);

/// Any earlier time means the clock was never set (routers without RTC).
const CLOCK_SANITY: u64 = 1_735_689_600; // 2025-01-01

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The hub's identity, as tokens and new annexes need it.
#[derive(Debug, Clone)]
pub struct HubIdentity {
    pub public_key: PublicKey,
    pub fingerprint: Fingerprint,
    pub probe_port: u16,
    /// The hub's tunnel address, with the tunnel network's length.
    pub address: IpNet,
}

struct Inner {
    config_sites: SiteSet,
    /// Reloadable with the config (except the registry's path).
    enrollment: EnrollmentConfig,
    registry: Registry,
    /// Every site with a tunnel peer: the config's and the joined ones.
    active: SiteSet,
}

pub struct HubSites {
    inner: Mutex<Inner>,
    tunnel: Arc<Tunnel>,
    net: Netlink,
    interface: String,
    allowed: Arc<AllowedSites>,
    sessions: Arc<Sessions>,
    telemetry: Arc<Telemetry>,
    sources: watch::Sender<Sources>,
    /// The registry file (fixed until a restart).
    registry_path: std::path::PathBuf,
    hub: HubIdentity,
}

impl std::fmt::Debug for HubSites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSites").finish_non_exhaustive()
    }
}

fn site_of(entry: &Entry) -> Option<Site> {
    match &entry.state {
        EntryState::Joined {
            public_key,
            certificate,
            ..
        } => Some(Site {
            name: entry.name.clone(),
            public_key: *public_key,
            address: entry.address,
            lan: entry.lan.clone(),
            certificate: Some(*certificate),
        }),
        _ => None,
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

/// Everything the hub needs to run its sites.
pub struct Parts {
    pub tunnel: Arc<Tunnel>,
    pub net: Netlink,
    pub interface: String,
    pub allowed: Arc<AllowedSites>,
    pub sessions: Arc<Sessions>,
    pub telemetry: Arc<Telemetry>,
    pub sources: watch::Sender<Sources>,
    pub enrollment: EnrollmentConfig,
    pub hub: HubIdentity,
}

impl HubSites {
    /// Loads the registry and installs every site (config and joined):
    /// peers, LAN routes, probe certificates.
    pub async fn start(config_sites: SiteSet, parts: Parts) -> anyhow::Result<Arc<HubSites>> {
        let registry = Registry::load(&parts.enrollment.registry)?;
        let mut active = config_sites.clone();
        for entry in &registry.sites {
            if let Some(site) = site_of(entry) {
                active.insert(site).map_err(|e| {
                    anyhow::anyhow!(
                        "enrolled site {} in {} conflicts with the config: {e}; remove the \
                         [[site]] table or run `townlink site remove {}`",
                        entry.name,
                        parts.enrollment.registry.display(),
                        entry.name
                    )
                })?;
            }
        }
        let hub = Arc::new(HubSites {
            inner: Mutex::new(Inner {
                config_sites,
                enrollment: parts.enrollment.clone(),
                registry,
                active: SiteSet::new(),
            }),
            tunnel: parts.tunnel,
            net: parts.net,
            interface: parts.interface,
            allowed: parts.allowed,
            sessions: parts.sessions,
            telemetry: parts.telemetry,
            sources: parts.sources,
            registry_path: parts.enrollment.registry.clone(),
            hub: parts.hub,
        });
        {
            let mut inner = hub.inner.lock().await;
            for site in active.iter() {
                hub.install(site).await?;
                inner.active.insert(site.clone()).expect("checked above");
                if site.certificate.is_none() {
                    tracing::warn!(site = %site.name, "site has no certificate: its probes will be refused");
                }
            }
            hub.publish(&inner.active);
            let pending = inner
                .registry
                .sites
                .iter()
                .filter(|e| matches!(e.state, EntryState::Pending { .. }))
                .count();
            tracing::info!(
                sites = inner.active.len(),
                pending,
                registry = %hub.registry_path.display(),
                "sites installed"
            );
        }
        Ok(hub)
    }

    /// Peer and LAN routes of a site.
    async fn install(&self, site: &Site) -> anyhow::Result<()> {
        self.tunnel.add_peer(&site_peer(site)).await?;
        for route in routing::site_routes(site, &self.interface) {
            if let Err(e) = self.net.replace_route(&route).await {
                let _ = self.uninstall(site).await;
                return Err(e.into());
            }
        }
        self.telemetry.add_site(site.name.as_str(), site.address);
        tracing::info!(site = %site.name, address = %site.address, "site added");
        Ok(())
    }

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

    /// Probe certificates and collector sources from the active sites.
    fn publish(&self, active: &SiteSet) {
        self.allowed.set(
            active
                .iter()
                .filter_map(|s| s.certificate.map(|f| (f, s.name.clone()))),
        );
        self.sources.send_modify(|s| {
            s.peers = active
                .iter()
                .map(|s| (s.public_key, s.name.to_string()))
                .collect();
        });
    }

    /// A reloaded config: the `[[site]]` tables and `[enrollment]`
    /// settings. Sites that changed are removed and added again; the
    /// others keep their sessions. Refused whole if the new sites conflict
    /// with enrolled ones. Returns what changed, in words.
    pub async fn reload(
        &self,
        config_sites: SiteSet,
        enrollment: EnrollmentConfig,
    ) -> Result<Vec<String>, String> {
        let mut inner = self.inner.lock().await;
        let mut changes = Vec::new();
        if enrollment.registry != self.registry_path {
            changes.push("enrollment.registry: takes effect at the next restart".to_string());
        }
        let gone: Vec<Site> = inner
            .config_sites
            .iter()
            .filter(|s| config_sites.get(&s.name) != Some(s))
            .cloned()
            .collect();
        let new: Vec<Site> = config_sites
            .iter()
            .filter(|s| inner.config_sites.get(&s.name) != Some(s))
            .cloned()
            .collect();
        let mut active = inner.active.clone();
        for s in &gone {
            active.remove(&s.name);
        }
        for s in &new {
            active
                .insert(s.clone())
                .map_err(|e| format!("site[{}]: {e}; sites left as they were", s.name))?;
            if inner
                .registry
                .get(&s.name)
                .is_some_and(|e| !matches!(e.state, EntryState::Revoked { .. }))
            {
                return Err(format!(
                    "site {} is enrolled in the registry too; sites left as they were",
                    s.name
                ));
            }
        }
        for s in &gone {
            self.sessions.close_site(&s.name);
            if let Err(e) = self.uninstall(s).await {
                tracing::error!(site = %s.name, error = %e, "not every trace of the site could be removed");
            }
            changes.push(format!("site {} removed", s.name));
        }
        for s in &new {
            if let Err(e) = self.install(s).await {
                tracing::error!(site = %s.name, error = %e, "cannot add the site");
                active.remove(&s.name);
                continue;
            }
            changes.push(format!("site {} added", s.name));
        }
        inner.active = active;
        inner.config_sites = config_sites;
        self.publish(&inner.active);
        let mut e = enrollment;
        e.registry = self.registry_path.clone();
        if inner.enrollment != e {
            inner.enrollment = e;
            changes.push("enrollment settings".to_string());
        }
        Ok(changes)
    }

    /// `site add`: reserves an address and issues a token.
    pub async fn add(
        &self,
        name: &str,
        lan: &[IpNet],
        ttl: Option<Duration>,
    ) -> Result<(String, SiteInfo), String> {
        let name = Name::new(name).map_err(|e| format!("site name {name:?} {e}"))?;
        let mut inner = self.inner.lock().await;
        let e = inner.enrollment.clone();
        if e.endpoints.is_empty() {
            return Err("the hub's config has no enrollment.endpoints: tokens must tell annexes \
                        where the hub is; add e.g. endpoints = [\"hub.example.net:51820\"] and restart"
                .into());
        }
        if e.routes.is_empty() {
            return Err(
                "the hub's config has no enrollment.routes: add the prefixes annexes \
                        reach through the hub (records server, other LANs) and restart"
                    .into(),
            );
        }
        let ttl = ttl.unwrap_or(e.token_ttl);
        if ttl > EnrollmentConfig::MAX_TOKEN_TTL || ttl < Duration::from_secs(1) {
            return Err("--expires must be between 1s and 30 days".into());
        }
        let now = unix_now();
        if inner.config_sites.get(&name).is_some() {
            return Err(format!(
                "site {name} is defined in the hub's config file ([[site]])"
            ));
        }
        if let Some(old) = inner.registry.get(&name) {
            if !matches!(old.state, EntryState::Revoked { .. }) {
                return Err(format!(
                    "site {name} already exists ({}); remove it first to issue a new token",
                    old.state.as_str()
                ));
            }
        }
        check_lan(&inner, &name, lan, self.hub.address.trunc())?;
        let mut taken: Vec<IpAddr> = vec![self.hub.address.addr()];
        taken.extend(inner.config_sites.iter().map(|s| s.address));
        taken.extend(
            inner
                .registry
                .sites
                .iter()
                .filter(|e| !matches!(e.state, EntryState::Revoked { .. }))
                .map(|e| e.address),
        );
        let address = allocate(e.pool, &taken)
            .ok_or_else(|| format!("no free address left in enrollment.pool {}", e.pool))?;
        let secret = Secret::generate();
        let expires = now + ttl.as_secs();
        let entry = Entry {
            name: name.clone(),
            address,
            lan: lan.to_vec(),
            created_at: now,
            state: EntryState::Pending {
                secret_hash: secret.hash(),
                expires,
            },
        };
        let before = inner.registry.clone();
        inner.registry.put(entry.clone());
        if let Err(err) = inner.registry.save(&self.registry_path) {
            inner.registry = before;
            return Err(err.to_string());
        }
        let token = Token {
            endpoints: e.endpoints.iter().map(|p| p.to_string()).collect(),
            probe_port: self.hub.probe_port,
            hub_public_key: self.hub.public_key,
            hub_fingerprint: self.hub.fingerprint,
            site: name.clone(),
            secret,
            expires,
        };
        tracing::info!(site = %name, address = %address, expires = %stamp(expires), "site added: token issued");
        Ok((token.encode_secret(), info_of(&entry, "enrolled", None)))
    }

    /// `site list`.
    pub async fn list(&self) -> Vec<SiteInfo> {
        let handshakes: HashMap<PublicKey, u64> = match self.tunnel.status().await {
            Ok(s) => s
                .peers
                .iter()
                .filter_map(|p| {
                    let t = p.last_handshake?.duration_since(UNIX_EPOCH).ok()?;
                    Some((p.public_key, t.as_secs()))
                })
                .collect(),
            Err(_) => HashMap::new(),
        };
        let inner = self.inner.lock().await;
        let mut out: Vec<SiteInfo> = inner
            .config_sites
            .iter()
            .map(|s| {
                let entry = Entry {
                    name: s.name.clone(),
                    address: s.address,
                    lan: s.lan.clone(),
                    created_at: 0,
                    state: EntryState::Joined {
                        public_key: s.public_key,
                        certificate: s.certificate.unwrap_or(Fingerprint::from_bytes([0; 32])),
                        joined_at: 0,
                    },
                };
                let mut info = info_of(&entry, "config", handshakes.get(&s.public_key).copied());
                info.joined_at = None;
                info
            })
            .collect();
        out.extend(inner.registry.sites.iter().map(|e| {
            let handshake = match &e.state {
                EntryState::Joined { public_key, .. } => handshakes.get(public_key).copied(),
                _ => None,
            };
            info_of(e, "enrolled", handshake)
        }));
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// `site remove`: revokes a site live.
    pub async fn remove(&self, name: &str) -> Result<SiteInfo, String> {
        let name = Name::new(name).map_err(|e| format!("site name {name:?} {e}"))?;
        let mut inner = self.inner.lock().await;
        if inner.config_sites.get(&name).is_some() {
            return Err(format!(
                "site {name} is defined in the hub's config file: remove its [[site]] table and restart"
            ));
        }
        let Some(entry) = inner.registry.get(&name).cloned() else {
            return Err(format!(
                "there is no site {name} (see `townlink site list`)"
            ));
        };
        if matches!(entry.state, EntryState::Revoked { .. }) {
            return Err(format!("site {name} is already revoked"));
        }
        // Persist first: whatever happens next, a restart will not bring it back.
        let before = inner.registry.clone();
        let mut revoked = entry.clone();
        revoked.state = EntryState::Revoked {
            revoked_at: unix_now(),
        };
        inner.registry.put(revoked.clone());
        if let Err(err) = inner.registry.save(&self.registry_path) {
            inner.registry = before;
            return Err(err.to_string());
        }
        if let Some(site) = inner.active.remove(&name) {
            self.publish(&inner.active);
            let closed = self.sessions.close_site(&name);
            if let Err(e) = self.uninstall(&site).await {
                tracing::error!(site = %name, error = %e, "revoked, but not every trace of the site could be removed");
            }
            tracing::warn!(site = %name, probe_connections_closed = closed, "site revoked: peer, routes and probes removed");
        } else {
            tracing::warn!(site = %name, "pending site revoked: its token is void");
        }
        Ok(info_of(&revoked, "enrolled", None))
    }

    /// An annex's enrollment request, over QUIC with certificate `certificate`.
    pub async fn join(
        &self,
        request: JoinRequest,
        certificate: Fingerprint,
        remote: SocketAddr,
    ) -> JoinResponse {
        match self.try_join(&request, certificate, remote).await {
            Ok(settings) => {
                self.telemetry.enrollment(true);
                tracing::info!(site = %settings.site, %remote, address = %settings.address, "site joined");
                JoinResponse::Joined(settings)
            }
            Err(reason) => {
                self.telemetry.enrollment(false);
                tracing::warn!(site = %request.site, %remote, %reason, "enrollment refused");
                JoinResponse::Refused { reason }
            }
        }
    }

    async fn try_join(
        &self,
        request: &JoinRequest,
        certificate: Fingerprint,
        remote: SocketAddr,
    ) -> Result<Settings, String> {
        let name =
            Name::new(&request.site).map_err(|_| "the site name is not valid".to_string())?;
        let mut inner = self.inner.lock().await;
        let not_waiting = || {
            format!(
                "no site {name} is waiting to join this hub: ask the administrator for a token \
                 (townlink site add {name})"
            )
        };
        if inner.config_sites.get(&name).is_some() {
            return Err(not_waiting());
        }
        let entry = inner.registry.get(&name).cloned().ok_or_else(not_waiting)?;
        let (secret_hash, expires) = match &entry.state {
            EntryState::Pending {
                secret_hash,
                expires,
            } => (secret_hash.clone(), *expires),
            EntryState::Joined { joined_at, .. } => {
                return Err(format!(
                    "this token was already used: site {name} joined at {}; tokens are \
                     single-use, ask the administrator for a new one",
                    stamp(*joined_at)
                ))
            }
            EntryState::Revoked { revoked_at } => {
                return Err(format!(
                    "site {name} was revoked at {}; ask the administrator for a new token",
                    stamp(*revoked_at)
                ))
            }
        };
        let mut bytes = [0u8; SECRET_LEN];
        let secret = hex::decode_to_slice(&request.secret, &mut bytes)
            .ok()
            .map(|_| Secret::from_bytes(bytes));
        bytes.fill(0);
        if !secret.is_some_and(|s| s.matches(&secret_hash)) {
            return Err(format!(
                "the token's secret does not match the one issued for site {name} (forged, or \
                 replaced by a newer `site add`)"
            ));
        }
        let now = unix_now();
        if now > expires {
            return Err(if now < CLOCK_SANITY {
                "the hub's clock is not synchronised (it says it is before 2025): fix NTP on the \
                 hub, then try again"
                    .to_string()
            } else {
                format!(
                    "the token expired at {}; ask the administrator for a new one",
                    stamp(expires)
                )
            });
        }
        let public_key: PublicKey = request
            .public_key
            .parse()
            .map_err(|e| format!("the annex's public key {e}"))?;
        let site = Site {
            name: name.clone(),
            public_key,
            address: entry.address,
            lan: entry.lan.clone(),
            certificate: Some(certificate),
        };
        if public_key == self.hub.public_key {
            return Err("the annex's public key is the hub's own".into());
        }
        let mut active = inner.active.clone();
        active.insert(site.clone()).map_err(|e| e.to_string())?;
        self.install(&site)
            .await
            .map_err(|e| format!("the hub could not add the site: {e:#}"))?;
        let before = inner.registry.clone();
        let mut joined = entry.clone();
        joined.state = EntryState::Joined {
            public_key,
            certificate,
            joined_at: now,
        };
        inner.registry.put(joined);
        if let Err(err) = inner.registry.save(&self.registry_path) {
            inner.registry = before;
            let _ = self.uninstall(&site).await;
            return Err(format!("the hub could not record the site: {err}"));
        }
        inner.active = active;
        self.publish(&inner.active);
        let _ = remote;
        Ok(Settings {
            site: name.to_string(),
            address: IpNet::new(entry.address, self.hub.address.prefix_len())
                .map_err(|e| e.to_string())?,
            lan: entry.lan,
            hub_name: inner.enrollment.hub_name.to_string(),
            hub_address: self.hub.address.addr(),
            routes: inner.enrollment.routes.clone(),
            keepalive: inner.enrollment.keepalive,
        })
    }
}

fn check_lan(inner: &Inner, name: &Name, lan: &[IpNet], tunnel: IpNet) -> Result<(), String> {
    for (i, p) in lan.iter().enumerate() {
        if p.trunc() != *p {
            return Err(format!(
                "LAN {p} has host bits set (did you mean {}?)",
                p.trunc()
            ));
        }
        if overlaps(p, &tunnel) {
            return Err(format!("LAN {p} overlaps the tunnel network {tunnel}"));
        }
        if let Some(q) = lan[..i].iter().find(|q| overlaps(p, q)) {
            return Err(format!("LAN {p} overlaps {q}, given too"));
        }
        for s in inner.active.iter().filter(|s| &s.name != name) {
            if let Some(q) = s.lan.iter().find(|q| overlaps(p, q)) {
                return Err(format!("LAN {p} overlaps {q} of site {}", s.name));
            }
        }
        for e in inner
            .registry
            .sites
            .iter()
            .filter(|e| matches!(e.state, EntryState::Pending { .. }) && &e.name != name)
        {
            if let Some(q) = e.lan.iter().find(|q| overlaps(p, q)) {
                return Err(format!("LAN {p} overlaps {q} of pending site {}", e.name));
            }
        }
    }
    Ok(())
}

fn info_of(e: &Entry, source: &str, last_handshake: Option<u64>) -> SiteInfo {
    let mut info = SiteInfo {
        name: e.name.to_string(),
        state: e.state.as_str().into(),
        source: source.into(),
        address: e.address,
        lan: e.lan.clone(),
        expires: None,
        joined_at: None,
        revoked_at: None,
        last_handshake,
    };
    match &e.state {
        EntryState::Pending { expires, .. } => info.expires = Some(*expires),
        EntryState::Joined { joined_at, .. } => {
            info.joined_at = Some(*joined_at);
            if last_handshake.is_some_and(|t| unix_now().saturating_sub(t) < CONNECTED.as_secs()) {
                info.state = "connected".into();
            }
        }
        EntryState::Revoked { revoked_at } => info.revoked_at = Some(*revoked_at),
    }
    info
}

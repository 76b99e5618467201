//! The hub's side of enrollment as a state machine, without I/O: which
//! sites the hub has (its config's `[[site]]` tables, the registry, the
//! ones installed), and what each site change makes of them.
//!
//! A change is decided here and carried out by the daemon
//! (`daemon::sites`), which writes the registry, installs or removes the
//! site's peer and routes, and only then commits the new state here:
//! - `site add`: [`Roster::add`] reserves an address and gives the
//!   registry with the new pending entry, and the token.
//! - `join`: [`Roster::admit`] checks the secret first (one answer,
//!   [`NOT_A_TOKEN`], to whoever does not prove the token), then tells the
//!   rightful annex why it is refused (expired, used, revoked), or gives
//!   the site to install: a first join, or the same token and keys again
//!   (the annex lost the answer).
//! - `site remove`: [`Roster::revoke`] gives the registry with the site
//!   revoked.
//! - a reload: [`Roster::plan_reload`] says which `[[site]]` tables go
//!   and come.
//!
//! The kernel's routes matter to a site's LAN ([`Reserved`]); the daemon
//! reads them and hands them in. Times are Unix seconds, handed in too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

mod error;
mod follow;

pub use error::{JoinRefusal, SiteError, NOT_A_TOKEN};
pub use follow::{FollowConflict, FollowPlan};

use super::registry::{allocate, Entry, EntryState, Registry};
use super::token::{Secret, Token, TokenHub, SECRET_LEN};
use super::{JoinRequest, Settings};
use crate::config::EnrollmentConfig;
use crate::fingerprint::Fingerprint;
use crate::keys::PublicKey;
use crate::sites::{
    lan_problem, overlaps, Name, Reserved, Site, SiteConflict, SiteInfo, SiteSet, SiteSource,
    SiteState,
};

/// Any earlier time means the clock was never set (routers without RTC).
pub const CLOCK_SANITY: u64 = 1_735_689_600; // 2025-01-01

/// The hub's identity, as tokens and new annexes need it.
#[derive(Debug, Clone)]
pub struct HubIdentity {
    pub public_key: PublicKey,
    pub fingerprint: Fingerprint,
    pub probe_port: u16,
    /// The hub's tunnel address, with the tunnel network's length.
    pub address: IpNet,
    /// `[[follower]]`: the backup hubs annexes also reach (their tunnel
    /// addresses are never handed to a site).
    pub followers: Vec<crate::config::FollowerConfig>,
}

/// What a join that proves its token comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// A first join: record `joined`, then install `site`.
    First { site: Site, joined: Entry },
    /// The same token and keys again (the annex lost the hub's answer, or
    /// a crash came between): answer again, install `site` if it is not.
    Again { site: Site, entry: Entry },
}

/// Which `[[site]]` tables a reload removes and adds, and the installed
/// sites once it is done.
#[derive(Debug, Clone)]
pub struct ReloadPlan {
    pub gone: Vec<Site>,
    pub new: Vec<Site>,
    /// A following hub: the main hub's sites a new `[[site]]` table
    /// clashes with (name, key, address or LAN), removed for it (this
    /// hub's own tables win, as at a snapshot).
    pub displaced: Vec<Site>,
    /// The installed sites with the new ones in (an install that fails
    /// takes its site out again).
    pub active: SiteSet,
}

/// What the hub knows of its sites: the `[[site]]` tables, the
/// `[enrollment]` settings, the registry, and the sites installed (a
/// tunnel peer, routes, probes welcome).
#[derive(Debug)]
pub struct Roster {
    config_sites: SiteSet,
    /// Reloadable with the config (except the registry's path).
    settings: EnrollmentConfig,
    registry: Registry,
    /// Every site with a tunnel peer: the config's and the joined ones.
    active: SiteSet,
    /// What a join for a name the hub does not enroll is compared with,
    /// so that it costs what a known site's does.
    dummy_hash: String,
    /// A following hub: the main hub's registry as last applied here.
    followed: Option<super::sync::Snapshot>,
}

/// The site a joined entry stands for.
pub fn site_of(entry: &Entry) -> Option<Site> {
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

/// A site whose LAN would take one of the hub's networks is refused,
/// with its name, the prefix and what it overlaps.
pub fn lan_allowed(site: &Site, reserved: &[Reserved]) -> Result<(), SiteError> {
    match site.lan.iter().find_map(|p| lan_problem(p, reserved)) {
        Some(problem) => Err(SiteError::LanReserved {
            site: site.name.clone(),
            problem,
        }),
        None => Ok(()),
    }
}

/// A valid site name, or the error `site add`/`site remove` answer.
pub fn site_name(given: &str) -> Result<Name, SiteError> {
    Name::new(given).map_err(|problem| SiteError::InvalidName {
        given: given.to_string(),
        problem,
    })
}

impl Roster {
    /// The hub's sites at start: every `[[site]]` table and every joined
    /// entry of the registry, checked against the hub's networks and each
    /// other. Nothing is installed yet: the daemon installs
    /// [`Roster::to_install`] one by one ([`Roster::activate`]).
    ///
    /// A `[[site]]` table over the hub's networks, or an enrolled site in
    /// conflict with one, refuses the start; an enrolled site over the
    /// hub's networks is left out (logged), the registry unchanged.
    pub fn start(
        config_sites: SiteSet,
        settings: EnrollmentConfig,
        registry: Registry,
        reserved: &[Reserved],
    ) -> Result<(Roster, SiteSet), SiteError> {
        for site in config_sites.iter() {
            lan_allowed(site, reserved).map_err(|e| SiteError::ConfigSiteLan(Box::new(e)))?;
        }
        let mut to_install = config_sites.clone();
        for entry in &registry.sites {
            let Some(site) = site_of(entry) else {
                continue;
            };
            if let Err(e) = lan_allowed(&site, reserved) {
                // Not installed: it would take the hub's own traffic.
                tracing::error!(
                    site = %site.name,
                    "{e}: the enrolled site is not installed; run `townlink site remove {}` \
                     and enroll it again with its real LAN",
                    site.name
                );
                continue;
            }
            to_install
                .insert(site)
                .map_err(|conflict| SiteError::EnrolledConflict {
                    site: entry.name.clone(),
                    registry: settings.registry.clone(),
                    conflict,
                })?;
        }
        let roster = Roster {
            config_sites,
            settings,
            registry,
            active: SiteSet::new(),
            dummy_hash: Secret::generate().hash(),
            followed: None,
        };
        Ok((roster, to_install))
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn settings(&self) -> &EnrollmentConfig {
        &self.settings
    }

    /// The installed sites.
    pub fn active(&self) -> &SiteSet {
        &self.active
    }

    /// A `[[site]]` table, or enrolled.
    pub fn source_of(&self, name: &Name) -> SiteSource {
        if self.config_sites.get(name).is_some() {
            SiteSource::Config
        } else {
            SiteSource::Enrolled
        }
    }

    /// Enrolled sites (pending or joined) at a follower's tunnel address,
    /// with that follower's name: enrolled before the `[[follower]]`
    /// table named the address (`site add` skips it since), they are not
    /// served by that backup hub.
    pub fn at_follower_addresses(
        &self,
        followers: &[crate::config::FollowerConfig],
    ) -> Vec<(Name, Name)> {
        self.registry
            .sites
            .iter()
            .filter(|e| !matches!(e.state, EntryState::Revoked { .. }))
            .filter_map(|e| {
                let f = followers.iter().find(|f| f.address == e.address)?;
                Some((e.name.clone(), f.name.clone()))
            })
            .collect()
    }

    /// Sites waiting for their annex.
    pub fn pending(&self) -> usize {
        self.registry
            .sites
            .iter()
            .filter(|e| matches!(e.state, EntryState::Pending { .. }))
            .count()
    }

    /// The registry, written by the caller, is now the state.
    pub fn commit(&mut self, registry: Registry) {
        self.registry = registry;
    }

    /// Whether `site` could be installed next to the installed ones.
    pub fn check_activate(&self, site: &Site) -> Result<(), SiteConflict> {
        self.active.clone().insert(site.clone())
    }

    /// `site` is installed.
    pub fn activate(&mut self, site: Site) -> Result<(), SiteConflict> {
        self.active.insert(site)
    }

    /// `name` is no longer installed; its site, if it was.
    pub fn deactivate(&mut self, name: &Name) -> Option<Site> {
        self.active.remove(name)
    }

    /// `site add NAME`: the registry with a pending entry for the site (a
    /// free address, the LAN checked) and its token. `now` in Unix s;
    /// `reserved`: the hub's networks as they are now.
    pub fn add(
        &self,
        name: Name,
        lan: &[IpNet],
        ttl: Option<Duration>,
        now: u64,
        reserved: &[Reserved],
        hub: &HubIdentity,
    ) -> Result<(Registry, Entry, Token), SiteError> {
        let e = &self.settings;
        if e.endpoints.is_empty() {
            return Err(SiteError::NoEndpoints);
        }
        if e.routes.is_empty() {
            return Err(SiteError::NoRoutes);
        }
        let ttl = ttl.unwrap_or(e.token_ttl);
        if ttl > EnrollmentConfig::MAX_TOKEN_TTL || ttl < Duration::from_secs(1) {
            return Err(SiteError::Validity);
        }
        if self.config_sites.get(&name).is_some() {
            return Err(SiteError::DefinedInConfig(name));
        }
        if let Some(old) = self.registry.get(&name) {
            if !matches!(old.state, EntryState::Revoked { .. }) {
                return Err(SiteError::Exists {
                    site: name,
                    state: old.state.site_state(),
                });
            }
        }
        self.check_lan(&name, lan, reserved)?;
        let mut taken: Vec<IpAddr> = vec![hub.address.addr()];
        taken.extend(hub.followers.iter().map(|f| f.address));
        taken.extend(self.config_sites.iter().map(|s| s.address));
        taken.extend(
            self.registry
                .sites
                .iter()
                .filter(|e| !matches!(e.state, EntryState::Revoked { .. }))
                .map(|e| e.address),
        );
        let address = allocate(e.pool, &taken).ok_or(SiteError::PoolExhausted(e.pool))?;
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
        let mut registry = self.registry.clone();
        registry.put(entry.clone());
        // Only this hub: it alone keeps the secret's hash; the backup hubs
        // come in the join's answer (docs/decisions.md).
        let token = Token {
            hubs: vec![TokenHub {
                endpoints: e.endpoints.iter().map(|p| p.to_string()).collect(),
                probe_port: hub.probe_port,
                public_key: hub.public_key,
                fingerprint: hub.fingerprint,
            }],
            site: name,
            secret,
            expires,
        };
        Ok((registry, entry, token))
    }

    /// A new site's LAN: no host bits, none of the hub's networks, no
    /// overlap with itself, an installed site or a pending one.
    fn check_lan(
        &self,
        name: &Name,
        lan: &[IpNet],
        reserved: &[Reserved],
    ) -> Result<(), SiteError> {
        for (i, p) in lan.iter().enumerate() {
            if p.trunc() != *p {
                return Err(SiteError::HostBits { prefix: *p });
            }
            if let Some(problem) = lan_problem(p, reserved) {
                return Err(SiteError::LanReserved {
                    site: name.clone(),
                    problem,
                });
            }
            if let Some(q) = lan[..i].iter().find(|q| overlaps(p, q)) {
                return Err(SiteError::LanGivenTwice {
                    prefix: *p,
                    other: *q,
                });
            }
            for s in self.active.iter().filter(|s| &s.name != name) {
                if let Some(q) = s.lan.iter().find(|q| overlaps(p, q)) {
                    return Err(SiteError::LanOverlaps {
                        prefix: *p,
                        other: *q,
                        site: s.name.clone(),
                    });
                }
            }
            for e in self
                .registry
                .sites
                .iter()
                .filter(|e| matches!(e.state, EntryState::Pending { .. }) && &e.name != name)
            {
                if let Some(q) = e.lan.iter().find(|q| overlaps(p, q)) {
                    return Err(SiteError::LanOverlapsPending {
                        prefix: *p,
                        other: *q,
                        site: e.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// `site remove NAME`: the registry with the site revoked, and its
    /// entry. Its token stays known (hashed), so that its holder hears
    /// that the site was revoked.
    pub fn revoke(&self, name: &Name, now: u64) -> Result<(Registry, Entry), SiteError> {
        if self.config_sites.get(name).is_some() {
            return Err(SiteError::RemoveFromConfig(name.clone()));
        }
        let Some(entry) = self.registry.get(name) else {
            return Err(SiteError::NotFound(name.clone()));
        };
        if matches!(entry.state, EntryState::Revoked { .. }) {
            return Err(SiteError::AlreadyRevoked(name.clone()));
        }
        let mut revoked = entry.clone();
        revoked.state = EntryState::Revoked {
            revoked_at: now,
            secret_hash: entry.state.secret_hash().map(str::to_string),
        };
        let mut registry = self.registry.clone();
        registry.put(revoked.clone());
        Ok((registry, revoked))
    }

    /// An annex's enrollment request, over QUIC with certificate
    /// `certificate`, at `now` (Unix s).
    ///
    /// The secret is checked first, against the registry's hash for the
    /// site or, for a name the hub does not enroll, against a dummy hash
    /// (the same cost: one SHA-256, one constant-time comparison). A
    /// request that does not prove a token is [`JoinRefusal::NotAToken`],
    /// whatever the site (unknown, pending, joined, revoked). Only the
    /// holder of the token hears why it is refused (expired, already used
    /// by other keys, revoked). The LAN against the hub's networks is the
    /// caller's next step ([`lan_allowed`]).
    pub fn admit(
        &self,
        request: &JoinRequest,
        certificate: Fingerprint,
        now: u64,
        hub_key: &PublicKey,
    ) -> Result<Admission, JoinRefusal> {
        let mut bytes = [0u8; SECRET_LEN];
        let secret = hex::decode_to_slice(&request.secret, &mut bytes)
            .ok()
            .map(|_| Secret::from_bytes(bytes));
        bytes.fill(0);
        let name = Name::new(&request.site).ok();
        // The hash the request must prove: the registry's for this site;
        // for any other name a dummy one, compared all the same.
        let config_site = name
            .as_ref()
            .is_some_and(|n| self.config_sites.get(n).is_some());
        let entry = name
            .as_ref()
            .filter(|_| !config_site)
            .and_then(|n| self.registry.get(n));
        let stored = entry.and_then(|e| e.state.secret_hash());
        let candidate = secret
            .clone()
            .unwrap_or_else(|| Secret::from_bytes([0; SECRET_LEN]));
        let matched = candidate.matches(stored.unwrap_or(&self.dummy_hash));
        let (Some(name), Some(entry), Some(secret_hash), Some(_), true) =
            (name, entry, stored, secret.as_ref(), matched)
        else {
            let detail = if Name::new(&request.site).is_err() {
                format!("site name not valid ({} bytes)", request.site.len())
            } else if config_site {
                "a site of the config file ([[site]]), which does not enroll".to_string()
            } else if let Some(e) = entry {
                if secret.is_none() {
                    "secret is not 32 hex digits".to_string()
                } else if e.state.secret_hash().is_none() {
                    format!(
                        "secret cannot be checked ({}: the registry keeps no hash of its token)",
                        e.state.as_str()
                    )
                } else {
                    format!("secret does not match ({})", e.state.as_str())
                }
            } else {
                "no site of that name".to_string()
            };
            return Err(JoinRefusal::NotAToken { detail });
        };
        // From here on the caller holds this site's token: it is told why.
        let public_key = request.public_key.parse::<PublicKey>();
        let expires = match &entry.state {
            EntryState::Pending { expires, .. } => *expires,
            EntryState::Joined {
                public_key: key,
                certificate: cert,
                ..
            } if public_key.as_ref() == Ok(key) && *cert == certificate => {
                let site = site_of(entry).expect("a joined entry is a site");
                return Ok(Admission::Again {
                    site,
                    entry: entry.clone(),
                });
            }
            EntryState::Joined { joined_at, .. } => {
                return Err(JoinRefusal::AlreadyUsed {
                    site: name,
                    joined_at: *joined_at,
                })
            }
            EntryState::Revoked { revoked_at, .. } => {
                return Err(JoinRefusal::Revoked {
                    site: name,
                    revoked_at: *revoked_at,
                })
            }
        };
        if now > expires {
            return Err(if now < CLOCK_SANITY {
                JoinRefusal::ClockNotSynchronised
            } else {
                JoinRefusal::Expired { at: expires }
            });
        }
        let public_key = public_key.map_err(JoinRefusal::BadKey)?;
        if public_key == *hub_key {
            return Err(JoinRefusal::HubsOwnKey);
        }
        let site = Site {
            name,
            public_key,
            address: entry.address,
            lan: entry.lan.clone(),
            certificate: Some(certificate),
        };
        let mut joined = entry.clone();
        joined.state = EntryState::Joined {
            public_key,
            certificate,
            joined_at: now,
            secret_hash: Some(secret_hash.to_string()),
        };
        Ok(Admission::First { site, joined })
    }

    /// What the annex of `entry` needs to write its config.
    pub fn settings_for(&self, entry: &Entry, hub: &HubIdentity) -> Result<Settings, SiteError> {
        let prefix_len = hub.address.prefix_len();
        let address =
            IpNet::new(entry.address, prefix_len).map_err(|_| SiteError::AddressFamily {
                site: entry.name.clone(),
                address: entry.address,
                prefix_len,
            })?;
        let e = &self.settings;
        let main = super::HubSettings {
            name: e.hub_name.to_string(),
            endpoints: e.endpoints.iter().map(|p| p.to_string()).collect(),
            public_key: hub.public_key.to_string(),
            fingerprint: hub.fingerprint.to_string(),
            address: hub.address.addr(),
            probe_port: hub.probe_port,
            priority: 0,
        };
        let followers = hub.followers.iter().map(|f| super::HubSettings {
            name: f.name.to_string(),
            endpoints: f.endpoints.iter().map(|p| p.to_string()).collect(),
            public_key: f.public_key.to_string(),
            fingerprint: f.certificate.to_string(),
            address: f.address,
            probe_port: f.probe_port,
            priority: f.priority,
        });
        Ok(Settings {
            hubs: std::iter::once(main).chain(followers).collect(),
            site: entry.name.to_string(),
            address,
            lan: entry.lan.clone(),
            hub_name: e.hub_name.to_string(),
            hub_address: hub.address.addr(),
            routes: e.routes.clone(),
            keepalive: e.keepalive,
            checks: e.checks.clone(),
        })
    }

    /// `site list`: every site, by name; `handshakes`: the last tunnel
    /// handshake of each peer (Unix s).
    pub fn list(&self, handshakes: &HashMap<PublicKey, u64>, now: u64) -> Vec<SiteInfo> {
        let mut out: Vec<SiteInfo> = self
            .config_sites
            .iter()
            .map(|s| {
                let handshake = handshakes.get(&s.public_key).copied();
                SiteInfo {
                    name: s.name.to_string(),
                    state: SiteState::from_handshake(
                        SiteState::Configured,
                        handshake.map(|t| t as f64),
                        now as f64,
                    ),
                    source: SiteSource::Config,
                    address: s.address,
                    lan: s.lan.clone(),
                    expires: None,
                    joined_at: None,
                    revoked_at: None,
                    last_handshake: handshake,
                    public_key: Some(s.public_key.to_string()),
                    certificate: s.certificate.map(|f| f.to_string()),
                    tunnel_on: None,
                    attachment: None,
                }
            })
            .collect();
        out.extend(self.registry.sites.iter().map(|e| {
            let handshake = match &e.state {
                EntryState::Joined { public_key, .. } => handshakes.get(public_key).copied(),
                _ => None,
            };
            info_of(e, handshake, now)
        }));
        out.extend(
            self.followed
                .iter()
                .flat_map(|f| &f.sites)
                // A [[site]] table of this hub's config wins (its line is above).
                .filter(|s| self.config_sites.get(&s.name).is_none())
                .map(|s| follow::info_of_synced(s, handshakes, now)),
        );
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// A reload's new `[[site]]` tables: which go, which come (changed
    /// ones do both), checked against the hub's networks now
    /// (`reserved`, with the new `enrollment.routes`), the installed
    /// sites and the registry. Refused whole.
    pub fn plan_reload(
        &self,
        config_sites: &SiteSet,
        reserved: &[Reserved],
    ) -> Result<ReloadPlan, SiteError> {
        let gone: Vec<Site> = self
            .config_sites
            .iter()
            .filter(|s| config_sites.get(&s.name) != Some(s))
            .cloned()
            .collect();
        let new: Vec<Site> = config_sites
            .iter()
            .filter(|s| self.config_sites.get(&s.name) != Some(s))
            .cloned()
            .collect();
        let mut active = self.active.clone();
        for s in &gone {
            active.remove(&s.name);
        }
        let refused = |e: SiteError| SiteError::ReloadRefused(Box::new(e));
        let displaced = self.displaced_by(&new, &mut active);
        for s in &new {
            lan_allowed(s, reserved).map_err(refused)?;
            active.insert(s.clone()).map_err(|conflict| {
                refused(SiteError::ConfigConflict {
                    site: s.name.clone(),
                    conflict,
                })
            })?;
            if self
                .registry
                .get(&s.name)
                .is_some_and(|e| !matches!(e.state, EntryState::Revoked { .. }))
            {
                return Err(refused(SiteError::EnrolledToo(s.name.clone())));
            }
        }
        Ok(ReloadPlan {
            gone,
            new,
            displaced,
            active,
        })
    }

    /// The reload is applied: `active` installed, the new tables and
    /// settings in force (the registry's path stays `registry_path` until
    /// a restart). Returns what changed in the settings, in words.
    pub fn finish_reload(
        &mut self,
        config_sites: SiteSet,
        mut settings: EnrollmentConfig,
        active: SiteSet,
        registry_path: &Path,
    ) -> Option<String> {
        self.active = active;
        self.config_sites = config_sites;
        settings.registry = registry_path.to_path_buf();
        if self.settings != settings {
            self.settings = settings;
            return Some("enrollment settings".to_string());
        }
        None
    }
}

/// A registry entry as `site list` shows it.
pub fn info_of(e: &Entry, last_handshake: Option<u64>, now: u64) -> SiteInfo {
    let mut info = SiteInfo {
        name: e.name.to_string(),
        state: e.state.site_state(),
        source: SiteSource::Enrolled,
        address: e.address,
        lan: e.lan.clone(),
        expires: None,
        joined_at: None,
        revoked_at: None,
        last_handshake,
        public_key: None,
        certificate: None,
        tunnel_on: None,
        attachment: None,
    };
    match &e.state {
        EntryState::Pending { expires, .. } => info.expires = Some(*expires),
        EntryState::Joined {
            joined_at,
            public_key,
            certificate,
            ..
        } => {
            info.joined_at = Some(*joined_at);
            info.state = SiteState::from_handshake(
                SiteState::Joined,
                last_handshake.map(|t| t as f64),
                now as f64,
            );
            info.public_key = Some(public_key.to_string());
            info.certificate = Some(certificate.to_string());
        }
        EntryState::Revoked { revoked_at, .. } => info.revoked_at = Some(*revoked_at),
    }
    info
}

#[cfg(test)]
mod tests;

//! A following hub's decision (issue 18): what a snapshot of the main
//! hub's registry changes here. The daemon (`daemon::sites`) persists the
//! snapshot first, then removes what goes (revocations, removals), then
//! installs what comes (joins), then commits ([`Roster::finish_follow`]).

use super::*;
use crate::enroll::sync::{Snapshot, SyncedSite, SyncedState};

/// What a received snapshot changes on this hub. Removals and
/// revocations are carried out before joins (a removed site may free the
/// address or LAN a new one takes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowPlan {
    /// The snapshot's version.
    pub version: u64,
    /// Joined on the main hub, not installed here as they are (new, or
    /// changed: then also in `removals`).
    pub joins: Vec<Site>,
    /// Installed here, revoked on the main hub.
    pub revocations: Vec<Site>,
    /// Installed here, and no longer joined on the main hub as they are
    /// (gone from its registry, changed, or now in conflict here).
    pub removals: Vec<Site>,
    /// Joined sites of the snapshot left out here, with why: a `[[site]]`
    /// table of this hub's own config of that name (it wins), a clash with
    /// one (key, address, LAN), or a LAN over this hub's networks.
    pub conflicts: Vec<FollowConflict>,
    /// The installed sites once the plan is carried out (a join whose
    /// install fails is taken out again).
    pub active: SiteSet,
}

impl FollowPlan {
    /// Joins, revocations and removals: the changes carried out.
    pub fn changes(&self) -> usize {
        self.joins.len() + self.revocations.len() + self.removals.len()
    }
}

/// A site of the main hub that this hub does not install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowConflict {
    pub site: Name,
    pub reason: String,
}

impl Roster {
    /// What `snapshot` (the main hub's registry) changes here, against the
    /// installed sites, this hub's networks now (`reserved`) and its own
    /// tunnel address (`hub_address`: a site there would take this hub's
    /// own traffic). This hub's own `[[site]]` tables are kept whatever
    /// the snapshot says.
    pub fn follow_plan(
        &self,
        snapshot: &Snapshot,
        reserved: &[Reserved],
        hub_address: IpAddr,
    ) -> FollowPlan {
        let mut next = SiteSet::new();
        for s in self
            .active
            .iter()
            .filter(|s| self.config_sites.get(&s.name).is_some())
        {
            next.insert(s.clone())
                .expect("the installed sites do not conflict");
        }
        let mut conflicts = Vec::new();
        for synced in &snapshot.sites {
            let Some(site) = synced.site() else {
                continue;
            };
            let refused = if self.config_sites.get(&site.name).is_some() {
                Some("a [[site]] table of this hub's config has that name (it wins)".to_string())
            } else if site.address == hub_address {
                Some(format!(
                    "its tunnel address {hub_address} is this hub's own: give this hub an \
                     address the main hub's enrollment.pool does not hand out"
                ))
            } else if let Err(e) = lan_allowed(&site, reserved) {
                Some(e.to_string())
            } else {
                next.insert(site.clone()).err().map(|c| c.to_string())
            };
            if let Some(reason) = refused {
                conflicts.push(FollowConflict {
                    site: site.name.clone(),
                    reason,
                });
            }
        }
        let joins: Vec<Site> = next
            .iter()
            .filter(|s| self.config_sites.get(&s.name).is_none())
            .filter(|s| self.active.get(&s.name) != Some(*s))
            .cloned()
            .collect();
        let (mut revocations, mut removals) = (Vec::new(), Vec::new());
        for s in self
            .active
            .iter()
            .filter(|s| self.config_sites.get(&s.name).is_none())
            .filter(|s| next.get(&s.name) != Some(*s))
        {
            let revoked = snapshot.sites.iter().any(|synced| {
                synced.name == s.name && matches!(synced.state, SyncedState::Revoked { .. })
            });
            if revoked {
                revocations.push(s.clone());
            } else {
                removals.push(s.clone());
            }
        }
        FollowPlan {
            version: snapshot.version,
            joins,
            revocations,
            removals,
            conflicts,
            active: next,
        }
    }

    /// The plan is carried out: `active` installed, `snapshot` the
    /// main hub's registry as this hub follows it.
    pub fn finish_follow(&mut self, snapshot: Snapshot, active: SiteSet) {
        self.active = active;
        self.followed = Some(snapshot);
    }

    /// A following hub's reload: the main hub's installed sites that a
    /// new `[[site]]` table clashes with are taken out of `active` and
    /// returned (this hub's own tables win, as at a snapshot; the next
    /// snapshot reports them as conflicts). Nothing on a main hub.
    pub(super) fn displaced_by(&self, new: &[Site], active: &mut SiteSet) -> Vec<Site> {
        if self.followed.is_none() {
            return Vec::new();
        }
        let followed: Vec<Site> = active
            .iter()
            .filter(|s| self.config_sites.get(&s.name).is_none())
            .cloned()
            .collect();
        let mut displaced = Vec::new();
        for f in followed {
            let clashes = new.iter().any(|n| {
                let mut pair = SiteSet::new();
                pair.insert(n.clone()).is_ok() && pair.insert(f.clone()).is_err()
            });
            if clashes {
                active.remove(&f.name);
                displaced.push(f);
            }
        }
        displaced
    }

    /// The main hub's registry as last applied here (a following hub).
    pub fn followed(&self) -> Option<&Snapshot> {
        self.followed.as_ref()
    }
}

/// A site of the main hub's registry as `site list` shows it here.
pub(super) fn info_of_synced(
    s: &SyncedSite,
    handshakes: &HashMap<PublicKey, u64>,
    now: u64,
) -> SiteInfo {
    let mut info = SiteInfo {
        name: s.name.to_string(),
        state: SiteState::Pending,
        source: SiteSource::Followed,
        address: s.address,
        lan: s.lan.clone(),
        expires: None,
        joined_at: None,
        revoked_at: None,
        last_handshake: None,
        public_key: None,
        certificate: None,
        tunnel_on: None,
        attachment: None,
    };
    match &s.state {
        SyncedState::Pending { expires } => info.expires = Some(*expires),
        SyncedState::Joined {
            public_key,
            certificate,
            joined_at,
        } => {
            let handshake = handshakes.get(public_key).copied();
            info.last_handshake = handshake;
            info.joined_at = Some(*joined_at);
            info.state = SiteState::from_handshake(
                SiteState::Joined,
                handshake.map(|t| t as f64),
                now as f64,
            );
            info.public_key = Some(public_key.to_string());
            info.certificate = Some(certificate.to_string());
        }
        SyncedState::Revoked { revoked_at } => {
            info.state = SiteState::Revoked;
            info.revoked_at = Some(*revoked_at);
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::config::Endpoint;
    use crate::enroll::sync::{SyncedSite, FORMAT};
    use crate::keys::PrivateKey;

    fn name(n: &str) -> Name {
        Name::new(n).unwrap()
    }

    /// This hub's own tunnel address.
    const HUB: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 99, 0, 254));

    fn reserved() -> Vec<Reserved> {
        vec![Reserved {
            prefix: "10.99.0.0/24".parse().unwrap(),
            what: "the tunnel network 10.99.0.0/24".into(),
            inside_ok: false,
        }]
    }

    /// A following hub with these `[[site]]` tables, all installed.
    fn follower(config_sites: &[Site]) -> Roster {
        let settings = EnrollmentConfig {
            registry: PathBuf::from("/nonexistent"),
            endpoints: vec![Endpoint::parse("198.18.0.3:51820").unwrap()],
            routes: vec![],
            pool: "10.99.0.0/24".parse().unwrap(),
            token_ttl: Duration::from_secs(3600),
            hub_name: name("backup"),
            keepalive: 25,
            checks: vec![],
        };
        let mut set = SiteSet::new();
        for s in config_sites {
            set.insert(s.clone()).unwrap();
        }
        let (mut roster, to_install) =
            Roster::start(set, settings, Registry::default(), &reserved()).unwrap();
        for s in to_install.iter() {
            roster.activate(s.clone()).unwrap();
        }
        roster
    }

    fn site(n: &str, host: u8) -> Site {
        Site {
            name: name(n),
            public_key: PrivateKey::generate().public_key(),
            address: format!("10.99.0.{host}").parse().unwrap(),
            lan: vec![format!("192.168.{host}.0/24").parse().unwrap()],
            certificate: Some(Fingerprint::from_bytes([host; 32])),
        }
    }

    fn synced(s: &Site, state: &str) -> SyncedSite {
        SyncedSite {
            name: s.name.clone(),
            address: s.address,
            lan: s.lan.clone(),
            created_at: 1,
            state: match state {
                "joined" => SyncedState::Joined {
                    public_key: s.public_key,
                    certificate: s.certificate.unwrap(),
                    joined_at: 2,
                },
                "pending" => SyncedState::Pending { expires: 3 },
                _ => SyncedState::Revoked { revoked_at: 4 },
            },
        }
    }

    fn snapshot(version: u64, sites: Vec<SyncedSite>) -> Snapshot {
        Snapshot {
            format: FORMAT,
            version,
            sites,
        }
    }

    /// Carries a plan out as the daemon does when every install works.
    fn apply(roster: &mut Roster, snap: Snapshot) -> FollowPlan {
        let plan = roster.follow_plan(&snap, &reserved(), HUB);
        roster.finish_follow(snap, plan.active.clone());
        plan
    }

    fn names(sites: &[Site]) -> Vec<&str> {
        sites.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn joined_sites_are_installed_pending_and_revoked_ones_not() {
        let mut r = follower(&[]);
        let (a, b, c) = (site("a", 2), site("b", 3), site("c", 4));
        let plan = apply(
            &mut r,
            snapshot(
                1,
                vec![
                    synced(&a, "joined"),
                    synced(&b, "pending"),
                    synced(&c, "revoked"),
                ],
            ),
        );
        assert_eq!(names(&plan.joins), ["a"]);
        assert!(plan.revocations.is_empty() && plan.removals.is_empty());
        assert!(plan.conflicts.is_empty());
        assert_eq!(plan.changes(), 1);
        assert_eq!(r.active().get(&a.name), Some(&a));
        assert_eq!(r.active().len(), 1);
        assert_eq!(r.followed().unwrap().version, 1);
        // The same snapshot again changes nothing.
        let again = r.follow_plan(r.followed().unwrap(), &reserved(), HUB);
        assert_eq!(again.changes(), 0);
    }

    #[test]
    fn a_revocation_and_a_removal_are_told_apart() {
        let mut r = follower(&[]);
        let (a, b) = (site("a", 2), site("b", 3));
        apply(
            &mut r,
            snapshot(1, vec![synced(&a, "joined"), synced(&b, "joined")]),
        );
        assert_eq!(r.active().len(), 2);
        // a revoked on the main hub; b gone from its registry altogether.
        let plan = apply(&mut r, snapshot(2, vec![synced(&a, "revoked")]));
        assert_eq!(names(&plan.revocations), ["a"]);
        assert_eq!(names(&plan.removals), ["b"]);
        assert!(plan.joins.is_empty());
        assert_eq!(r.active().len(), 0);
    }

    #[test]
    fn a_site_that_joined_again_with_new_keys_is_removed_then_added() {
        let mut r = follower(&[]);
        let a = site("a", 2);
        apply(&mut r, snapshot(1, vec![synced(&a, "joined")]));
        let mut a2 = site("a", 2);
        a2.lan = a.lan.clone();
        let plan = apply(&mut r, snapshot(2, vec![synced(&a2, "joined")]));
        assert_eq!(plan.removals, vec![a]);
        assert_eq!(plan.joins, vec![a2.clone()]);
        assert_eq!(r.active().get(&a2.name), Some(&a2));
    }

    #[test]
    fn this_hubs_own_site_tables_win_and_conflicts_are_reported() {
        let own = site("own", 2);
        let mut r = follower(std::slice::from_ref(&own));
        // The main hub has a site of the same name, one with own's
        // address, one over this hub's tunnel network, and a good one.
        let same_name = site("own", 9);
        let mut same_address = site("clash", 5);
        same_address.address = own.address;
        let mut over_tunnel = site("wide", 6);
        over_tunnel.lan = vec!["10.99.0.0/16".parse().unwrap()];
        let good = site("good", 7);
        let on_hub = site("onhub", 254);
        let plan = apply(
            &mut r,
            snapshot(
                1,
                vec![
                    synced(&same_address, "joined"),
                    synced(&good, "joined"),
                    synced(&same_name, "joined"),
                    synced(&over_tunnel, "joined"),
                    synced(&on_hub, "joined"),
                ],
            ),
        );
        assert_eq!(names(&plan.joins), ["good"]);
        let refused: Vec<&str> = plan.conflicts.iter().map(|c| c.site.as_str()).collect();
        assert_eq!(refused, ["clash", "own", "wide", "onhub"]);
        assert!(
            plan.conflicts[3].reason.contains("this hub's own"),
            "{:?}",
            plan.conflicts
        );
        assert!(
            plan.conflicts[1].reason.contains("[[site]]"),
            "{:?}",
            plan.conflicts
        );
        assert!(
            plan.conflicts[0].reason.contains("10.99.0.2"),
            "{:?}",
            plan.conflicts
        );
        assert!(
            plan.conflicts[2].reason.contains("tunnel network"),
            "{:?}",
            plan.conflicts
        );
        // The config's site is untouched, and never removed by a snapshot;
        // `site list` shows it once, as the config's.
        assert_eq!(r.active().get(&own.name), Some(&own));
        let list = r.list(&HashMap::new(), 1);
        let own_lines: Vec<_> = list.iter().filter(|i| i.name == "own").collect();
        assert_eq!(own_lines.len(), 1);
        assert_eq!(own_lines[0].source, SiteSource::Config);
        let good_line = list.iter().find(|i| i.name == "good").unwrap();
        assert_eq!(
            (good_line.source, good_line.state),
            (SiteSource::Followed, SiteState::Joined)
        );
        let plan = apply(&mut r, snapshot(2, vec![]));
        assert_eq!(names(&plan.removals), ["good"]);
        assert_eq!(r.active().get(&own.name), Some(&own));
        assert_eq!(r.active().len(), 1);
    }

    #[test]
    fn a_new_site_table_at_a_reload_displaces_the_main_hubs_site_it_clashes_with() {
        let mut r = follower(&[]);
        let (a, b) = (site("a", 2), site("b", 3));
        apply(
            &mut r,
            snapshot(1, vec![synced(&a, "joined"), synced(&b, "joined")]),
        );
        // A [[site]] of this hub's own with a's LAN.
        let mut own = site("own", 9);
        own.lan = a.lan.clone();
        let mut tables = SiteSet::new();
        tables.insert(own.clone()).unwrap();
        let plan = r.plan_reload(&tables, &reserved()).unwrap();
        assert_eq!(plan.displaced, vec![a.clone()]);
        assert_eq!(names(&plan.new), ["own"]);
        assert!(plan.active.get(&a.name).is_none());
        assert!(plan.active.get(&b.name).is_some() && plan.active.get(&own.name).is_some());
        r.finish_reload(
            tables,
            r.settings().clone(),
            plan.active,
            Path::new("/nonexistent"),
        );
        // The next snapshot keeps it out, and says why.
        let again = r.follow_plan(r.followed().unwrap(), &reserved(), HUB);
        assert_eq!(again.changes(), 0);
        assert_eq!(again.conflicts.len(), 1);
        assert_eq!(again.conflicts[0].site, a.name);
        // On a main hub the same reload is refused whole instead.
        let mut main = follower(&[]);
        main.activate(a.clone()).unwrap();
        let mut tables = SiteSet::new();
        tables.insert(own).unwrap();
        assert!(main.plan_reload(&tables, &reserved()).is_err());
    }
}

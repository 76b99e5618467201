//! The hub's enrollment decided without I/O: a fake clock (`now`), the
//! hub's networks handed in, the registry kept in memory.

use std::path::PathBuf;

use super::*;
use crate::config::Endpoint;
use crate::keys::PrivateKey;

/// 2026-01-01, a synchronised clock.
const NOW: u64 = 1_767_225_600;
const LAN: &str = "192.168.7.0/24";

fn settings() -> EnrollmentConfig {
    EnrollmentConfig {
        registry: PathBuf::from("/var/lib/townlink/sites.json"),
        endpoints: vec![Endpoint::parse("198.18.0.2:51820").unwrap()],
        routes: vec!["10.50.0.0/24".parse().unwrap()],
        pool: "10.99.0.0/24".parse().unwrap(),
        token_ttl: Duration::from_secs(3600),
        hub_name: Name::new("hub").unwrap(),
        keepalive: 25,
        checks: vec![],
    }
}

fn hub() -> HubIdentity {
    HubIdentity {
        public_key: PrivateKey::generate().public_key(),
        fingerprint: Fingerprint::from_bytes([7; 32]),
        probe_port: 51821,
        address: "10.99.0.1/24".parse().unwrap(),
        followers: vec![],
    }
}

fn reserved() -> Vec<Reserved> {
    vec![Reserved {
        prefix: "10.99.0.0/24".parse().unwrap(),
        what: "the tunnel network 10.99.0.0/24".into(),
        inside_ok: false,
    }]
}

fn name(n: &str) -> Name {
    Name::new(n).unwrap()
}

fn roster_with(config_sites: SiteSet) -> Roster {
    let (roster, to_install) =
        Roster::start(config_sites, settings(), Registry::default(), &reserved()).unwrap();
    let mut roster = roster;
    for site in to_install.iter() {
        roster.activate(site.clone()).unwrap();
    }
    roster
}

fn roster() -> Roster {
    roster_with(SiteSet::new())
}

/// `site add annex-7`, committed as the daemon does once it is written.
fn added(roster: &mut Roster, hub: &HubIdentity) -> Token {
    let (registry, entry, token) = roster
        .add(
            name("annex-7"),
            &[LAN.parse().unwrap()],
            None,
            NOW,
            &reserved(),
            hub,
        )
        .unwrap();
    assert_eq!(entry.state.site_state(), SiteState::Pending);
    roster.commit(registry);
    token
}

/// An annex: its keys, its certificate, the token's secret.
struct Annex {
    key: PublicKey,
    certificate: Fingerprint,
    secret: String,
}

impl Annex {
    fn with(token: &Token) -> Annex {
        Annex {
            key: PrivateKey::generate().public_key(),
            certificate: Fingerprint::from_bytes([1; 32]),
            secret: hex::encode(token.secret.expose()),
        }
    }

    fn request(&self) -> JoinRequest {
        JoinRequest {
            site: "annex-7".into(),
            secret: self.secret.clone(),
            public_key: self.key.to_string(),
        }
    }

    fn admit(
        &self,
        roster: &Roster,
        now: u64,
        hub: &HubIdentity,
    ) -> Result<Admission, JoinRefusal> {
        roster.admit(&self.request(), self.certificate, now, &hub.public_key)
    }
}

/// A first join, committed and installed as the daemon does.
fn joined(roster: &mut Roster, annex: &Annex, hub: &HubIdentity) -> Entry {
    let Ok(Admission::First { site, joined }) = annex.admit(roster, NOW + 10, hub) else {
        panic!("the first join was refused")
    };
    let mut registry = roster.registry().clone();
    registry.put(joined.clone());
    roster.commit(registry);
    roster.activate(site).unwrap();
    joined
}

fn state(roster: &Roster) -> SiteState {
    roster
        .registry()
        .get(&name("annex-7"))
        .unwrap()
        .state
        .site_state()
}

#[test]
fn add_reserves_the_first_free_address_and_issues_a_token() {
    let (mut roster, hub) = (roster(), hub());
    let token = added(&mut roster, &hub);
    assert_eq!(token.site, name("annex-7"));
    assert_eq!(token.expires, NOW + 3600);
    assert_eq!(token.hubs.len(), 1, "the issuing hub only");
    assert_eq!(token.issuer().public_key, hub.public_key);
    assert_eq!(token.issuer().fingerprint, hub.fingerprint);
    assert_eq!(
        token.issuer().endpoints,
        vec!["198.18.0.2:51820".to_string()]
    );
    let entry = roster.registry().get(&name("annex-7")).unwrap();
    assert_eq!(entry.address.to_string(), "10.99.0.2");
    assert_eq!(
        entry.state.secret_hash(),
        Some(token.secret.hash().as_str())
    );
    // Again while it is pending: refused, naming its state.
    let e = roster
        .add(name("annex-7"), &[], None, NOW, &reserved(), &hub)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "site annex-7 already exists (pending); remove it first to issue a new token"
    );
    // Another site gets the next address; its LAN may not take annex-7's.
    let e = roster
        .add(
            name("annex-8"),
            &["192.168.7.128/25".parse().unwrap()],
            None,
            NOW,
            &reserved(),
            &hub,
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "LAN 192.168.7.128/25 overlaps 192.168.7.0/24 of pending site annex-7"
    );
    let (_, entry, _) = roster
        .add(name("annex-8"), &[], None, NOW, &reserved(), &hub)
        .unwrap();
    assert_eq!(entry.address.to_string(), "10.99.0.3");
}

#[test]
fn add_refuses_what_cannot_make_a_token_or_a_lan() {
    let hub = hub();
    let add = |roster: &Roster, lan: &str, ttl: Option<u64>| {
        roster
            .add(
                name("annex-9"),
                &[lan.parse().unwrap()],
                ttl.map(Duration::from_secs),
                NOW,
                &reserved(),
                &hub,
            )
            .unwrap_err()
            .to_string()
    };
    let mut no_endpoints = roster();
    no_endpoints.settings.endpoints.clear();
    assert!(
        add(&no_endpoints, LAN, None).starts_with("the hub's config has no enrollment.endpoints")
    );
    let roster = roster();
    assert_eq!(
        add(&roster, LAN, Some(31 * 86_400)),
        "--expires must be between 1s and 30 days"
    );
    assert_eq!(
        add(&roster, "192.168.7.1/24", None),
        "LAN 192.168.7.1/24 has host bits set (did you mean 192.168.7.0/24?)"
    );
    assert_eq!(
        add(&roster, "10.99.0.0/25", None),
        "site annex-9: LAN 10.99.0.0/25 overlaps the tunnel network 10.99.0.0/24"
    );
    assert!(roster.registry().sites.is_empty(), "nothing recorded");
}

#[test]
fn a_token_is_single_use_and_the_same_keys_hear_their_settings_again() {
    let (mut roster, hub) = (roster(), hub());
    let token = added(&mut roster, &hub);
    let annex = Annex::with(&token);
    let entry = joined(&mut roster, &annex, &hub);
    assert_eq!(state(&roster), SiteState::Joined);
    // The same token, keys and certificate: the annex lost the answer.
    let Ok(Admission::Again { site, entry: again }) = annex.admit(&roster, NOW + 20, &hub) else {
        panic!("the same keys were refused")
    };
    assert_eq!((site.public_key, again), (annex.key, entry.clone()));
    let settings = roster.settings_for(&entry, &hub).unwrap();
    assert_eq!(settings.address.to_string(), "10.99.0.2/24");
    assert_eq!(settings.routes, settings_routes());
    // Other keys, or another certificate, with the same token: used.
    for other in [
        Annex {
            key: PrivateKey::generate().public_key(),
            ..Annex::with(&token)
        },
        Annex {
            key: annex.key,
            certificate: Fingerprint::from_bytes([2; 32]),
            secret: annex.secret.clone(),
        },
    ] {
        let e = other.admit(&roster, NOW + 20, &hub).unwrap_err();
        assert!(matches!(e, JoinRefusal::AlreadyUsed { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("this token was already used: site annex-7 joined at "),
            "{e}"
        );
    }
}

fn settings_routes() -> Vec<IpNet> {
    vec!["10.50.0.0/24".parse().unwrap()]
}

#[test]
fn an_expired_token_is_refused_and_a_clock_before_2025_is_named() {
    let (mut roster, hub) = (roster(), hub());
    let annex = Annex::with(&added(&mut roster, &hub));
    assert!(matches!(
        annex.admit(&roster, NOW + 3600, &hub),
        Ok(Admission::First { .. })
    ));
    let e = annex.admit(&roster, NOW + 3601, &hub).unwrap_err();
    assert!(
        matches!(e, JoinRefusal::Expired { at } if at == NOW + 3600),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("the token expired at 2026-01-01T01:00:00Z"),
        "{e}"
    );
    // A token made while the clock was unset, checked once it still is.
    let mut entry = roster.registry().get(&name("annex-7")).unwrap().clone();
    entry.state = EntryState::Pending {
        secret_hash: entry.state.secret_hash().unwrap().to_string(),
        expires: 1_000,
    };
    let mut registry = roster.registry().clone();
    registry.put(entry);
    roster.commit(registry);
    let e = annex.admit(&roster, 2_000, &hub).unwrap_err();
    assert!(matches!(e, JoinRefusal::ClockNotSynchronised), "{e:?}");
}

#[test]
fn a_request_that_proves_no_token_gets_one_answer_whatever_the_site() {
    let (mut roster, hub) = (roster(), hub());
    let mut config = SiteSet::new();
    config
        .insert(Site {
            name: name("annex-8"),
            public_key: PrivateKey::generate().public_key(),
            address: "10.99.0.8".parse().unwrap(),
            lan: vec![],
            certificate: None,
        })
        .unwrap();
    roster.config_sites = config;
    let token = added(&mut roster, &hub);
    let forged = || hex::encode(Secret::generate().expose());
    let ask = |roster: &Roster, site: &str, secret: String, key: String| {
        let request = JoinRequest {
            site: site.into(),
            secret,
            public_key: key,
        };
        match roster.admit(
            &request,
            Fingerprint::from_bytes([1; 32]),
            NOW,
            &hub.public_key,
        ) {
            Err(JoinRefusal::NotAToken { detail }) => detail,
            other => panic!("{site}: {other:?}"),
        }
    };
    let key = || PrivateKey::generate().public_key().to_string();
    assert_eq!(
        ask(&roster, "nobody", forged(), key()),
        "no site of that name"
    );
    assert_eq!(
        ask(&roster, "annex-7", forged(), key()),
        "secret does not match (pending)"
    );
    assert_eq!(
        ask(&roster, "annex-7", "zz".into(), key()),
        "secret is not 32 hex digits"
    );
    assert_eq!(
        ask(&roster, "bad name!", forged(), key()),
        "site name not valid (9 bytes)"
    );
    assert_eq!(
        ask(&roster, "annex-8", forged(), key()),
        "a site of the config file ([[site]]), which does not enroll"
    );
    // The secret comes first: a wrong one with a broken key says nothing
    // of the key.
    assert_eq!(
        ask(&roster, "annex-7", forged(), "not a key".into()),
        "secret does not match (pending)"
    );
    // Joined, then revoked: a wrong secret still learns nothing.
    let annex = Annex::with(&token);
    joined(&mut roster, &annex, &hub);
    assert_eq!(
        ask(&roster, "annex-7", forged(), key()),
        "secret does not match (joined)"
    );
    let (registry, _) = roster.revoke(&name("annex-7"), NOW + 30).unwrap();
    roster.commit(registry);
    assert_eq!(
        ask(&roster, "annex-7", forged(), key()),
        "secret does not match (revoked)"
    );
    // Whatever the detail, the annex hears one sentence.
    assert_eq!(
        JoinRefusal::NotAToken {
            detail: "no site of that name".into()
        }
        .to_string(),
        NOT_A_TOKEN
    );
}

#[test]
fn the_holder_of_the_token_hears_about_its_key() {
    let (mut roster, hub) = (roster(), hub());
    let token = added(&mut roster, &hub);
    let mut annex = Annex::with(&token);
    let mut request = annex.request();
    request.public_key = "not a key".into();
    let e = roster
        .admit(&request, annex.certificate, NOW, &hub.public_key)
        .unwrap_err();
    assert!(matches!(e, JoinRefusal::BadKey(_)), "{e:?}");
    assert!(e.to_string().starts_with("the annex's public key "), "{e}");
    annex.key = hub.public_key;
    let e = annex.admit(&roster, NOW, &hub).unwrap_err();
    assert_eq!(e.to_string(), "the annex's public key is the hub's own");
}

#[test]
fn revoke_voids_the_token_and_tells_its_holder() {
    let (mut roster, hub) = (roster(), hub());
    let token = added(&mut roster, &hub);
    let annex = Annex::with(&token);
    joined(&mut roster, &annex, &hub);
    let (registry, revoked) = roster.revoke(&name("annex-7"), NOW + 30).unwrap();
    assert!(matches!(
        revoked.state,
        EntryState::Revoked { revoked_at, .. } if revoked_at == NOW + 30
    ));
    // Not committed yet: nothing changed.
    assert_eq!(state(&roster), SiteState::Joined);
    roster.commit(registry);
    assert_eq!(
        roster.deactivate(&name("annex-7")).map(|s| s.public_key),
        Some(annex.key)
    );
    let e = annex.admit(&roster, NOW + 40, &hub).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("site annex-7 was revoked at 2026-01-01T00:00:30Z; ask the administrator"),
        "{e}"
    );
    let again = roster.revoke(&name("annex-7"), NOW + 50).unwrap_err();
    assert_eq!(again.to_string(), "site annex-7 is already revoked");
    let none = roster.revoke(&name("nobody"), NOW).unwrap_err();
    assert_eq!(
        none.to_string(),
        "there is no site nobody (see `townlink site list`)"
    );
    // A revoked name can be added again, at its old address.
    let token = added(&mut roster, &hub);
    assert_eq!(
        roster
            .registry()
            .get(&name("annex-7"))
            .unwrap()
            .address
            .to_string(),
        "10.99.0.2"
    );
    assert!(matches!(
        Annex::with(&token).admit(&roster, NOW, &hub),
        Ok(Admission::First { .. })
    ));
}

#[test]
fn a_change_not_committed_leaves_the_roster_as_it_was() {
    // The daemon commits only what it wrote and installed: a join whose
    // install failed is rolled back by not committing it (the registry
    // written back), and the token works again.
    let (mut roster, hub) = (roster(), hub());
    let token = added(&mut roster, &hub);
    let annex = Annex::with(&token);
    let before = roster.registry().clone();
    let Ok(Admission::First { joined, .. }) = annex.admit(&roster, NOW, &hub) else {
        panic!("refused")
    };
    let mut registry = before.clone();
    registry.put(joined);
    roster.commit(registry);
    roster.commit(before.clone());
    assert_eq!(roster.registry(), &before);
    assert_eq!(state(&roster), SiteState::Pending);
    assert!(roster.active().is_empty());
    assert!(matches!(
        annex.admit(&roster, NOW + 1, &hub),
        Ok(Admission::First { .. })
    ));
    // A revocation or an add not committed changes nothing either.
    roster.revoke(&name("annex-7"), NOW).unwrap();
    roster
        .add(name("annex-9"), &[], None, NOW, &reserved(), &hub)
        .unwrap();
    assert_eq!(roster.registry(), &before);
}

#[test]
fn a_reload_is_refused_whole_when_a_table_takes_an_enrolled_name() {
    let (mut roster, hub) = (roster(), hub());
    let token = added(&mut roster, &hub);
    joined(&mut roster, &Annex::with(&token), &hub);
    let mut config = SiteSet::new();
    config
        .insert(Site {
            name: name("annex-7"),
            public_key: PrivateKey::generate().public_key(),
            address: "10.99.0.9".parse().unwrap(),
            lan: vec![],
            certificate: None,
        })
        .unwrap();
    let e = roster.plan_reload(&config, &reserved()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "site[annex-7]: a site named annex-7 already exists; sites left as they were"
    );
    // Another name: planned, nothing applied until finish_reload.
    let mut config = SiteSet::new();
    config
        .insert(Site {
            name: name("annex-8"),
            public_key: PrivateKey::generate().public_key(),
            address: "10.99.0.8".parse().unwrap(),
            lan: vec![],
            certificate: None,
        })
        .unwrap();
    let plan = roster.plan_reload(&config, &reserved()).unwrap();
    assert_eq!(plan.new.len(), 1);
    assert!(plan.gone.is_empty());
    assert_eq!(plan.active.len(), 2);
    assert_eq!(roster.active().len(), 1);
    let path = roster.settings().registry.clone();
    let changed = roster.finish_reload(config, settings(), plan.active, &path);
    assert_eq!(changed, None);
    assert_eq!(roster.source_of(&name("annex-8")), SiteSource::Config);
    assert_eq!(roster.active().len(), 2);
}

/// A backup hub (`[[follower]]`) at 10.99.0.2.
fn follower(address: &str) -> crate::config::FollowerConfig {
    crate::config::FollowerConfig {
        name: name("backup"),
        certificate: Fingerprint::from_bytes([9; 32]),
        public_key: PrivateKey::generate().public_key(),
        endpoints: vec![Endpoint::parse("198.18.1.2:51820").unwrap()],
        address: address.parse().unwrap(),
        probe_port: 51821,
        priority: 1,
    }
}

#[test]
fn the_pool_never_hands_out_a_followers_address() {
    let mut roster = roster();
    let hub = HubIdentity {
        followers: vec![follower("10.99.0.2")],
        ..hub()
    };
    added(&mut roster, &hub);
    let entry = roster.registry().get(&name("annex-7")).unwrap();
    assert_eq!(entry.address.to_string(), "10.99.0.3");
}

#[test]
fn the_settings_name_every_hub_the_main_hub_first() {
    let mut roster = roster();
    let backup = follower("10.99.0.254");
    let hub = HubIdentity {
        followers: vec![backup.clone()],
        ..hub()
    };
    let token = added(&mut roster, &hub);
    let annex = Annex::with(&token);
    let entry = joined(&mut roster, &annex, &hub);
    let s = roster.settings_for(&entry, &hub).unwrap();
    // What an older annex reads.
    assert_eq!(s.hub_name, "hub");
    assert_eq!(s.hub_address.to_string(), "10.99.0.1");
    let names: Vec<&str> = s.hubs.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["hub", "backup"]);
    let main = &s.hubs[0];
    assert_eq!(main.public_key, hub.public_key.to_string());
    assert_eq!(main.fingerprint, hub.fingerprint.to_string());
    assert_eq!(main.endpoints, token.issuer().endpoints);
    assert_eq!(main.address.to_string(), "10.99.0.1");
    assert_eq!((main.probe_port, main.priority), (51821, 0));
    let b = &s.hubs[1];
    assert_eq!(b.public_key, backup.public_key.to_string());
    assert_eq!(b.fingerprint, backup.certificate.to_string());
    assert_eq!(b.endpoints, vec!["198.18.1.2:51820".to_string()]);
    assert_eq!(b.address.to_string(), "10.99.0.254");
    assert_eq!((b.probe_port, b.priority), (51821, 1));
}

#[test]
fn a_site_enrolled_at_a_followers_address_before_it_was_listed_is_named() {
    let mut roster = roster();
    // Enrolled while the hub listed no follower: it gets 10.99.0.2.
    added(&mut roster, &hub());
    assert!(roster.at_follower_addresses(&[]).is_empty());
    let backup = follower("10.99.0.2");
    assert_eq!(
        roster.at_follower_addresses(std::slice::from_ref(&backup)),
        vec![(name("annex-7"), name("backup"))]
    );
    assert!(roster
        .at_follower_addresses(&[follower("10.99.0.254")])
        .is_empty());
    // Revoked: it no longer takes the address.
    let (registry, _) = roster.revoke(&name("annex-7"), NOW).unwrap();
    roster.commit(registry);
    assert!(roster.at_follower_addresses(&[backup]).is_empty());
}

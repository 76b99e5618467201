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
        Hub::with(
            "[enrollment]\nregistry = \"sites.json\"\nendpoints = [\"198.18.0.2:51820\"]\n\
             routes = [\"10.50.0.0/24\"]\n",
        )
        .await
    }

    /// A hub that follows the main hub at 198.18.0.2:51821.
    async fn follower() -> Hub {
        Hub::with(&format!(
            "[follow]\nendpoint = \"198.18.0.2:51821\"\nfingerprint = \"{}\"\n",
            Fingerprint::from_bytes([0x77; 32])
        ))
        .await
    }

    async fn with(section: &str) -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate();
        let key_path = dir.path().join("hub.key");
        crate::fsutil::write_atomic(&key_path, key.to_base64_secret().as_bytes(), 0o600).unwrap();
        let id = crate::probe::tls::Identity::generate("hub").unwrap();
        crate::fsutil::write_atomic(&dir.path().join("hub.crt"), id.cert_pem().as_bytes(), 0o644)
            .unwrap();
        crate::fsutil::write_atomic(
            &dir.path().join("hub.pem"),
            id.key_pem_secret().as_bytes(),
            0o600,
        )
        .unwrap();
        let text = format!(
            "role = \"hub\"\n[tunnel]\ninterface = \"lo\"\nprivate_key_file = \"hub.key\"\n\
             address = \"10.99.0.1/24\"\nlisten_port = 51820\n[probe]\n\
             certificate_file = \"hub.crt\"\nkey_file = \"hub.pem\"\n{section}"
        );
        let config = crate::config::parse(&text, dir.path()).unwrap();
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
                    installed: watch::channel(Vec::new()).0,
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
                    followers: hub.followers.clone(),
                },
                supervisor,
                follow: hub.follow.clone(),
                state_directory: self.dir.path().join("state"),
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
        let gave_up = tokio::time::timeout(Duration::from_millis(100), annex.join(&sites)).await;
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

#[test]
fn a_join_whose_install_fails_goes_back_to_pending_and_the_token_works_again() {
    in_netns(|| async {
        let hub = Hub::new().await;
        let (sites, device) = hub.start().await;
        let annex = Annex::added(&sites, 1).await;
        // A peer with the annex's key is in the tunnel already: the
        // device refuses to add it again, so the install fails after the
        // registry said "joined".
        let squatter = PeerConfig {
            public_key: annex.key,
            endpoint: None,
            allowed_ips: vec![],
            keepalive: None,
        };
        sites.deps.tunnel.add_peer(&squatter).await.unwrap();
        let reason = refusal(annex.join(&sites).await);
        assert!(
            reason.starts_with("the hub could not add the site: "),
            "{reason}"
        );
        assert_eq!(state(&hub), "pending", "the registry is rolled back");
        assert_eq!(hub.routes(), Vec::<String>::new());
        assert_eq!(sites.deps.allowed.site(&annex.certificate), None);
        assert!(!shown(&sites));
        // Once the tunnel can take it, the same token joins.
        sites.deps.tunnel.remove_peer(&annex.key).await.unwrap();
        assert!(matches!(annex.join(&sites).await, JoinResponse::Joined(_)));
        assert_eq!(state(&hub), "joined");
        assert_eq!(device.peers(), vec![annex.key.to_hex()]);
        assert_eq!(hub.routes(), vec![LAN.to_string()]);
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

/// A snapshot of a main hub's registry with annex-7 in `state`.
fn snapshot(version: u64, key: PublicKey, state: &str) -> crate::enroll::sync::Snapshot {
    use crate::enroll::sync::{Snapshot, SyncedSite, SyncedState, FORMAT};
    Snapshot {
        format: FORMAT,
        version,
        sites: vec![SyncedSite {
            name: Name::new("annex-7").unwrap(),
            address: "10.99.0.2".parse().unwrap(),
            lan: vec![LAN.parse().unwrap()],
            created_at: CLOCK_SANITY,
            state: match state {
                "joined" => SyncedState::Joined {
                    public_key: key,
                    certificate: Fingerprint::from_bytes([9; 32]),
                    joined_at: CLOCK_SANITY + 1,
                },
                _ => SyncedState::Revoked {
                    revoked_at: CLOCK_SANITY + 2,
                },
            },
        }],
    }
}

fn listed(list: &[SiteInfo]) -> Vec<String> {
    list.iter()
        .map(|s| format!("{} {} {}", s.name, s.state, s.source.as_str()))
        .collect()
}

#[test]
fn a_follower_installs_the_main_hubs_sites_after_persisting_its_copy() {
    in_netns(|| async {
        let hub = Hub::follower().await;
        let (sites, device) = hub.start().await;
        let key = PrivateKey::generate().public_key();
        let plan = sites.follow(snapshot(1, key, "joined")).await.unwrap();
        assert_eq!(plan.joins.len(), 1);
        assert_eq!(device.peers(), vec![key.to_hex()]);
        assert_eq!(hub.routes(), vec![LAN.to_string()]);
        assert_eq!(
            sites
                .deps
                .allowed
                .site(&Fingerprint::from_bytes([9; 32]))
                .map(|n| n.to_string()),
            Some("annex-7".to_string())
        );
        assert!(shown(&sites));
        assert_eq!(listed(&sites.list().await), ["annex-7 joined followed"]);
        let copy = hub.dir.path().join("state").join(follow::FOLLOWED_FILE);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&copy).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            crate::enroll::sync::Snapshot::decode(&std::fs::read(&copy).unwrap()).unwrap(),
            snapshot(1, key, "joined")
        );
        // Revoked on the main hub: removed here, live.
        let plan = sites.follow(snapshot(2, key, "revoked")).await.unwrap();
        assert_eq!(plan.revocations.len(), 1);
        assert_eq!(device.peers(), Vec::<String>::new());
        assert_eq!(hub.routes(), Vec::<String>::new());
        assert!(!shown(&sites));
        assert_eq!(listed(&sites.list().await), ["annex-7 revoked followed"]);
        let status = sites.deps.telemetry.snapshot();
        let f = status.follow.unwrap();
        assert_eq!(
            (f.main.as_str(), f.endpoint.as_str(), f.version),
            ("main", "198.18.0.2:51821", Some(2))
        );
        assert_eq!(sites.deps.telemetry.metrics().sync_applied_changes.get(), 2);
    });
}

#[test]
fn a_follower_restarted_without_its_main_hub_serves_its_copy() {
    in_netns(|| async {
        let hub = Hub::follower().await;
        let key = PrivateKey::generate().public_key();
        {
            let (sites, _device) = hub.start().await;
            sites.follow(snapshot(1, key, "joined")).await.unwrap();
        }
        let (sites, device) = hub.start().await;
        assert_eq!(device.peers(), vec![key.to_hex()]);
        assert_eq!(hub.routes(), vec![LAN.to_string()]);
        assert_eq!(listed(&sites.list().await), ["annex-7 joined followed"]);
        // No snapshot from the main hub since this start.
        let f = sites.deps.telemetry.snapshot().follow.unwrap();
        assert_eq!((f.connected, f.version), (false, None));
    });
}

#[test]
fn a_crash_after_the_copy_is_persisted_is_repaired_by_the_next_start() {
    in_netns(|| async {
        let hub = Hub::follower().await;
        let key = PrivateKey::generate().public_key();
        {
            let (sites, device) = hub.start().await;
            *sites.crash_at.lock().unwrap() = Some(Step::Persisted);
            assert!(sites.follow(snapshot(1, key, "joined")).await.is_err());
            assert_eq!(device.peers(), Vec::<String>::new());
        }
        let (_sites, device) = hub.start().await;
        assert_eq!(device.peers(), vec![key.to_hex()]);
    });
}

#[test]
fn site_add_and_remove_on_a_follower_name_the_main_hub() {
    in_netns(|| async {
        let hub = Hub::follower().await;
        let (sites, _device) = hub.start().await;
        let expected = "this hub follows main at 198.18.0.2:51821: run the command there";
        let e = sites.add("annex-8", &[], None).await.unwrap_err();
        assert_eq!(e.to_string(), expected);
        let e = sites.remove("annex-8").await.unwrap_err();
        assert_eq!(e.to_string(), expected);
        // Nothing of the main hub's registry file is read or written.
        assert!(!hub.dir.path().join("sites.json").exists());
    });
}

#[test]
fn the_main_hub_sends_a_snapshot_without_secrets_at_every_registry_change() {
    in_netns(|| async {
        let hub = Hub::new().await;
        let (sites, _device) = hub.start().await;
        let mut frames = sites.registry_frames();
        let read = |frames: &mut watch::Receiver<Arc<Vec<u8>>>| {
            let frame = frames.borrow_and_update().clone();
            let len = crate::enroll::sync::frame_len(frame[..4].try_into().unwrap()).unwrap();
            assert_eq!(len, frame.len() - 4);
            let text = String::from_utf8(frame[4..].to_vec()).unwrap();
            (
                crate::enroll::sync::Snapshot::decode(text.as_bytes()).unwrap(),
                text,
            )
        };
        let (first, _) = read(&mut frames);
        assert!(first.sites.is_empty());
        let annex = Annex::added(&sites, 1).await;
        assert!(frames.has_changed().unwrap());
        let (pending, text) = read(&mut frames);
        assert!(pending.version > first.version);
        assert_eq!(pending.sites[0].state.as_str(), "pending");
        let hash = annex.token.secret.hash();
        assert!(!text.contains(&hash), "{text}");
        assert!(matches!(annex.join(&sites).await, JoinResponse::Joined(_)));
        let (joined, text) = read(&mut frames);
        assert!(joined.version > pending.version);
        assert_eq!(joined.sites[0].site().unwrap().public_key, annex.key);
        assert!(!text.contains(&hash), "{text}");
        sites.remove("annex-7").await.unwrap();
        let (revoked, _) = read(&mut frames);
        assert_eq!(revoked.sites[0].state.as_str(), "revoked");
    });
}

#[test]
fn a_followers_new_site_table_displaces_the_main_hubs_site_at_a_reload() {
    in_netns(|| async {
        let hub = Hub::follower().await;
        let (sites, device) = hub.start().await;
        let followed = PrivateKey::generate().public_key();
        sites.follow(snapshot(1, followed, "joined")).await.unwrap();
        assert_eq!(device.peers(), vec![followed.to_hex()]);
        // A [[site]] of the follower's own, with the same LAN.
        let own = Site {
            name: Name::new("own").unwrap(),
            public_key: PrivateKey::generate().public_key(),
            address: "10.99.0.9".parse().unwrap(),
            lan: vec![LAN.parse().unwrap()],
            certificate: None,
        };
        let mut tables = SiteSet::new();
        tables.insert(own.clone()).unwrap();
        let crate::config::Role::Hub(h) = &hub.config.role else {
            unreachable!()
        };
        let changes = sites.reload(tables, h.enrollment.clone()).await.unwrap();
        assert!(
            changes.contains(&"site annex-7 of the main hub removed".to_string()),
            "{changes:?}"
        );
        assert_eq!(device.peers(), vec![own.public_key.to_hex()]);
        assert_eq!(hub.routes(), vec![LAN.to_string()]);
        // The main hub's next snapshot leaves it out.
        let plan = sites.follow(snapshot(2, followed, "joined")).await.unwrap();
        assert_eq!((plan.changes(), plan.conflicts.len()), (0, 1));
        assert_eq!(device.peers(), vec![own.public_key.to_hex()]);
    });
}

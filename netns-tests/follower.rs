//! A backup hub follows the main hub's registry (issue 18, step 3a): a
//! second hub namespace (`hub-backup`, 198.18.3.2 on `core`) runs townlink
//! with `[follow]`; the main hub lists it as `[[follower]]`. Joins and
//! removals on the main hub reach the backup hub within seconds; the
//! backup hub restarted while the main hub is down keeps its sites;
//! `site add` on it is refused; a certificate that is no follower's is
//! refused by the main hub.

mod testbed;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::{link, townlink_bin, write_identity, write_key, Daemon, Netns, Options, Wan};

/// Within this time of a change on the main hub, the backup hub has it.
const FOLLOW_WITHIN: Duration = Duration::from_secs(5);

/// The backup hub: its namespace, daemon and files. Field order is drop
/// order: the daemon before its namespace.
struct Backup {
    daemon: Option<Daemon>,
    ns: Netns,
    config: PathBuf,
    socket: PathBuf,
    dir: PathBuf,
    starts: usize,
    _tmp: tempfile::TempDir,
}

impl Backup {
    fn start(&mut self) {
        let log = self.dir.join(format!("backup-{}.log", self.starts));
        self.starts += 1;
        let d = Daemon::start(&self.ns, &self.config, log);
        d.wait_for_log(&["townlink is up"], Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
        self.daemon = Some(d);
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("backup hub running")
    }

    fn site(&self, args: &[&str]) -> (i32, String, String) {
        site(&self.socket, args)
    }

    fn sites(&self) -> Vec<Value> {
        sites(&self.socket)
    }

    /// LAN routes townlink installed in the backup hub's kernel.
    fn routes(&self) -> Vec<String> {
        self.ns
            .ip_json(&["route", "show", "proto", "116"])
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{} dev {}",
                    r["dst"].as_str().unwrap(),
                    r["dev"].as_str().unwrap()
                )
            })
            .collect()
    }

    fn status(&self) -> Value {
        let out = Command::new(townlink_bin())
            .args(["status", "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits for `what` to hold, polling every 50 ms.
    fn wait(&self, what: &str, within: Duration, ok: impl Fn(&Backup) -> bool) -> Duration {
        let start = Instant::now();
        while !ok(self) {
            assert!(
                start.elapsed() < within,
                "backup hub: not {what} within {within:?}\nsites: {:?}\nroutes: {:?}\n{}",
                self.sites(),
                self.routes(),
                self.daemon().log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    }
}

fn site(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(townlink_bin())
        .arg("site")
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("run townlink site");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sites(socket: &Path) -> Vec<Value> {
    let (code, out, err) = site(socket, &["list", "--json"]);
    assert_eq!(code, 0, "site list: {err}");
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

fn find<'a>(sites: &'a [Value], name: &str) -> Option<&'a Value> {
    sites.iter().find(|s| s["name"] == name)
}

/// The WAN with one enrolling main hub that lists the backup hub as its
/// follower, and the backup hub (not started).
fn wan_with_backup() -> (Wan, Backup) {
    let tmp = tempfile::tempdir().unwrap();
    let backup_dir = tmp.path().to_path_buf();
    let backup_fp = write_identity(&backup_dir, "backup-probe");
    let backup_key = write_key(&backup_dir.join("backup.key")).public_key();
    let mut wan = Wan::build_with(
        1,
        &Options {
            enrolled_sites: true,
            hub_extra: format!(
                "[[follower]]\nname = \"backup\"\ncertificate = \"{backup_fp}\"\n\
                 public_key = \"{backup_key}\"\nendpoints = [\"198.18.3.2:51820\"]\n\
                 address = \"10.99.0.254\"\n"
            ),
            ..Options::default()
        },
    );
    wan.start_hub();
    wan.daemons[0]
        .wait_for_log(&["townlink is up"], Duration::from_secs(20))
        .unwrap();
    let main_fp = townlink::probe::tls::Identity::load(
        &wan.dir.path().join("hub-probe.crt"),
        &wan.dir.path().join("hub-probe.key"),
    )
    .unwrap()
    .fingerprint();
    let ns = Netns::new(format!("{}-bk", wan.hub.name));
    ns.sysctl("net.ipv4.ip_forward", "1");
    link(
        &ns,
        "core0",
        "198.18.3.2/24",
        &wan.core,
        "bk0",
        "198.18.3.1/24",
    );
    ns.ip(&["route", "add", "default", "via", "198.18.3.1"]);
    let config = backup_dir.join("backup.toml");
    std::fs::write(
        &config,
        format!(
            "role = \"hub\"\nstate_directory = \"backup-state\"\n\n[tunnel]\ninterface = \"tl0\"\n\
             private_key_file = \"backup.key\"\naddress = \"10.99.0.254/24\"\nlisten_port = 51820\n\n\
             [probe]\ncertificate_file = \"backup-probe.crt\"\nkey_file = \"backup-probe.key\"\n\
             listen_port = 51821\n\n[control]\nsocket = \"backup.sock\"\n\n\
             [follow]\nendpoint = \"198.18.0.2:51821\"\nfingerprint = \"{main_fp}\"\n"
        ),
    )
    .unwrap();
    let backup = Backup {
        daemon: None,
        ns,
        config,
        socket: backup_dir.join("backup.sock"),
        dir: backup_dir,
        starts: 0,
        _tmp: tmp,
    };
    (wan, backup)
}

#[test]
fn the_backup_hub_follows_joins_and_removals_and_keeps_them_while_the_main_hub_is_down() {
    let (mut wan, mut backup) = wan_with_backup();
    backup.start();
    // Its start-up line names the copy it serves, not an `[enrollment]
    // registry` it never reads.
    let installed = backup.daemon().log_lines(&["sites installed"]);
    assert_eq!(installed.len(), 1, "{installed:?}");
    assert!(
        installed[0].contains("backup-state/followed-sites.json"),
        "{installed:?}"
    );
    let main_socket = wan.dir.path().join("hub.sock");

    // 1. site add + join on the main hub: the backup hub has annex-1
    //    joined, with the same key and address, its peer and LAN route.
    let token = wan.site_add("annex-1", &["--lan", "192.168.1.0/24"]);
    let (code, out, err) = wan.join(1, &token);
    assert_eq!(code, 0, "join: {out}{err}");
    let joined = Instant::now();
    let main_view = find(&sites(&main_socket), "annex-1").cloned().unwrap();
    backup.wait("showing annex-1 joined", FOLLOW_WITHIN, |b| {
        find(&b.sites(), "annex-1").is_some_and(|s| s["state"] == "joined")
    });
    backup.wait("routing annex-1's LAN", FOLLOW_WITHIN, |b| {
        b.routes().contains(&"192.168.1.0/24 dev tl0".to_string())
    });
    eprintln!(
        "the backup hub installed annex-1 {:?} after its join",
        joined.elapsed()
    );
    let seen = backup.sites();
    let view = find(&seen, "annex-1").unwrap();
    for key in ["address", "public_key", "certificate", "lan"] {
        assert_eq!(view[key], main_view[key], "{key}");
    }
    assert_eq!(view["source"], "followed");
    let (code, text, err) = backup.site(&["list"]);
    assert_eq!(code, 0, "{err}");
    eprintln!("$ townlink site list   # on the backup hub\n{text}");
    assert!(
        text.starts_with(
            "sites from main at 198.18.0.2:51821 (connected): add and remove sites there\n"
        ),
        "{text}"
    );
    assert!(text.contains("followed"), "{text}");
    // The peer is in the backup hub's tunnel (status shows what the
    // tunnel has), and the status says where the sites come from.
    let status = backup.status();
    assert!(
        status["sites"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "annex-1"),
        "{status}"
    );
    assert_eq!(status["follow"]["main"], "main");
    assert_eq!(status["follow"]["endpoint"], "198.18.0.2:51821");
    assert_eq!(status["follow"]["connected"], true);
    // The copy holds no secret.
    let copy =
        std::fs::read_to_string(backup.dir.join("backup-state/followed-sites.json")).unwrap();
    assert!(!copy.contains("secret"), "{copy}");
    assert!(!copy.contains(&token[4..20]), "{copy}");

    // 2. site add on the backup hub is refused with the main hub named.
    let (code, _, err) = backup.site(&["add", "annex-2", "--lan", "192.168.2.0/24"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("this hub follows main at 198.18.0.2:51821: run the command there"),
        "{err}"
    );

    // 3. The main hub down, the backup hub restarted: it still has annex-1.
    wan.daemons[0].kill();
    backup
        .daemon
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(10));
    backup.start();
    let view = find(&backup.sites(), "annex-1").cloned();
    assert_eq!(
        view.map(|v| v["public_key"].clone()),
        Some(main_view["public_key"].clone())
    );
    assert!(backup
        .routes()
        .contains(&"192.168.1.0/24 dev tl0".to_string()));
    assert_eq!(backup.status()["follow"]["connected"], false);

    // 4. The main hub back, annex-1 removed there: removed on the backup
    //    hub within seconds of the removal.
    wan.start_hub();
    wan.daemons[1]
        .wait_for_log(&["townlink is up"], Duration::from_secs(20))
        .unwrap();
    backup.wait(
        "connected to the main hub again",
        Duration::from_secs(20),
        |b| b.status()["follow"]["connected"] == true,
    );
    let (code, _, err) = site(&main_socket, &["remove", "annex-1"]);
    assert_eq!(code, 0, "{err}");
    let took = backup.wait("showing annex-1 revoked", FOLLOW_WITHIN, |b| {
        find(&b.sites(), "annex-1").is_some_and(|s| s["state"] == "revoked")
            && b.routes().is_empty()
    });
    eprintln!("the backup hub removed annex-1 {took:?} after its removal");
    assert!(find(
        &backup.status()["sites"].as_array().unwrap().clone(),
        "annex-1"
    )
    .is_none());
}

#[test]
fn the_main_hub_refuses_a_certificate_that_is_no_followers() {
    let (wan, backup) = wan_with_backup();
    let main_fp = townlink::probe::tls::Identity::load(
        &wan.dir.path().join("hub-probe.crt"),
        &wan.dir.path().join("hub-probe.key"),
    )
    .unwrap()
    .fingerprint();
    // A hub with a certificate the main hub does not list, from the
    // backup hub's address.
    let reason = backup.ns.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let stranger = townlink::probe::tls::Identity::generate("stranger").unwrap();
                let rustls = townlink::probe::tls::sync_client_config(&stranger, main_fp).unwrap();
                let config = quinn::ClientConfig::new(Arc::new(
                    quinn::crypto::rustls::QuicClientConfig::try_from(rustls).unwrap(),
                ));
                let client = quinn::Endpoint::client("0.0.0.0:0".parse().unwrap()).unwrap();
                let conn = client
                    .connect_with(
                        config,
                        "198.18.0.2:51821".parse().unwrap(),
                        townlink::probe::tls::SERVER_NAME,
                    )
                    .unwrap()
                    .await
                    .expect("the handshake itself succeeds (the key is held)");
                let uni = tokio::time::timeout(Duration::from_secs(5), conn.accept_uni())
                    .await
                    .expect("closed at once");
                assert!(uni.is_err(), "a stranger got the registry");
                conn.close_reason()
                    .map(|r| r.to_string())
                    .unwrap_or_default()
            })
    });
    assert!(reason.contains("unknown follower"), "{reason}");
    wan.daemons[0]
        .wait_for_log(&["unknown certificate (sync)"], Duration::from_secs(5))
        .unwrap();
}

/// Issue 18 step 3b: with a backup hub listed on the main hub, `site add`
/// there and `join` on the annex give a config with both hubs (each with
/// its device), `townlink check` accepts it, and the annex's sessions with
/// both hubs come up: the WireGuard handshake and the probes of each hub,
/// the backup hub having learnt the site over the sync channel.
#[test]
fn an_annex_enrolled_on_the_main_hub_gets_both_hubs_and_reaches_both() {
    let (mut wan, mut backup) = wan_with_backup();
    backup.start();
    let backup_fp = townlink::probe::tls::Identity::load(
        &backup.dir.join("backup-probe.crt"),
        &backup.dir.join("backup-probe.key"),
    )
    .unwrap()
    .fingerprint();

    let token = wan.site_add("annex-1", &["--lan", "192.168.1.0/24"]);
    assert!(token.starts_with("tl1.Ag"), "a format-2 token: {token}");
    let (code, out, err) = wan.join(1, &token);
    assert_eq!(code, 0, "join: {out}{err}");
    assert!(
        out.starts_with(
            "joined as site annex-1 (tunnel address 10.99.0.2/24), hubs main at \
             198.18.0.2:51820 and backup at 198.18.3.2:51820\n"
        ),
        "{out}"
    );

    // The written config: both hubs, the main hub preferred, one device each.
    let config = wan.annex(1).config.clone();
    let check = Command::new(townlink_bin())
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "townlink check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let parsed = townlink::config::load(&config).unwrap();
    let townlink::config::Role::Annex(a) = &parsed.role else {
        panic!("annex expected")
    };
    let hubs: Vec<(String, String, String, String, u32)> = a
        .hubs
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                h.endpoint.to_string(),
                h.address.to_string(),
                h.interface.to_string(),
                h.priority,
            )
        })
        .collect();
    assert_eq!(
        hubs,
        vec![
            (
                "main".into(),
                "198.18.0.2:51820".into(),
                "10.99.0.1".into(),
                "tl0".into(),
                0
            ),
            (
                "backup".into(),
                "198.18.3.2:51820".into(),
                "10.99.0.254".into(),
                "tl1".into(),
                1
            ),
        ]
    );
    assert_eq!(a.hubs[1].fingerprint, backup_fp);
    assert_eq!(a.hubs[1].probe_port, 51821);
    assert_eq!(a.hubs[1].routes, a.hubs[0].routes);

    // The backup hub learnt the site; the annex reaches both hubs.
    backup.wait("showing annex-1 joined", FOLLOW_WITHIN, |b| {
        find(&b.sites(), "annex-1").is_some_and(|s| s["state"] == "joined")
    });
    let annex = wan.start_annex(1);
    for path in ["main/fiber", "backup/fiber"] {
        wan.daemons[annex]
            .wait_for_log(
                &["uplink state", &format!("uplink={path}"), "to=\"up\""],
                Duration::from_secs(30),
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", backup.daemon().log_text()));
    }
    let metrics: std::net::SocketAddr = "127.0.0.1:9475".parse().unwrap();
    for hub in ["main", "backup"] {
        let series = format!("townlink_peer_last_handshake_timestamp_seconds{{peer=\"{hub}\"}}");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let body = testbed::http_get(&wan.annex(1).ns, metrics, "/metrics")
                .map(|(_, b)| b)
                .unwrap_or_default();
            if testbed::metric_value(&body, &series).is_some_and(|t| t > 0.0) {
                break;
            }
            assert!(Instant::now() < deadline, "no handshake with {hub}: {body}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // The backup hub sees the annex's handshake too.
    backup.wait("having a handshake with annex-1", FOLLOW_WITHIN, |b| {
        find(&b.sites(), "annex-1").is_some_and(|s| s["last_handshake"].as_u64().is_some())
    });
}

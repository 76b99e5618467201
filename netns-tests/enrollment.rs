//! Enrollment from the CLI: `townlink site add` on the hub, `townlink join`
//! on a fresh annex, revocation, refusals, a hub restart.

mod testbed;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::{echo_server, echo_within, Options, Wan, RECORDS};

fn enrolling_wan(annexes: usize) -> Wan {
    let mut wan = Wan::build_with(
        annexes,
        &Options {
            enrolled_sites: true,
            ..Options::default()
        },
    );
    wan.start_hub();
    wan.daemons[0]
        .wait_for_log(&["townlink is up"], Duration::from_secs(20))
        .unwrap();
    wan
}

fn sites(wan: &Wan) -> Vec<Value> {
    let (code, out, err) = wan.site(&["list", "--json"]);
    assert_eq!(code, 0, "site list: {err}");
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

fn state_of(wan: &Wan, name: &str) -> String {
    sites(wan)
        .iter()
        .find(|s| s["name"] == name)
        .map(|s| s["state"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no site {name}"))
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn join_then_refusals_revocation_and_hub_restart() {
    let mut wan = enrolling_wan(2);
    let records = echo_server(&wan.records, &format!("{RECORDS}:7000"));
    assert_eq!(sites(&wan), Vec::<Value>::new(), "a hub with no sites");

    // 1. site add, join in a fresh annex namespace, traffic within 10 s of `run`.
    let token = wan.site_add("annex-1", &["--lan", "192.168.1.0/24"]);
    assert!(token.starts_with("tl1."), "{token}");
    assert_eq!(state_of(&wan, "annex-1"), "pending");
    let (code, out, err) = wan.join(1, &token);
    assert_eq!(code, 0, "join: {out}{err}");
    assert!(out.contains("joined as site annex-1"), "{out}");
    let dir = wan.join_dir(1);
    assert_eq!(mode(&dir.join("private.key")), 0o600);
    assert_eq!(mode(&dir.join("probe.key")), 0o600);
    let hub_log = wan.daemons[0].log_text();
    assert!(!hub_log.contains(&token[4..]), "the token is never logged");
    let check = std::process::Command::new(testbed::townlink_bin())
        .args(["check", "-c"])
        .arg(dir.join("townlink.toml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let started = Instant::now();
    wan.start_annex(1);
    let t = echo_within(&wan.annex(1).lan, records, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("annex-1 LAN → records: {e}\n{}", wan.daemons[1].log_text()));
    eprintln!(
        "annex-1 reached the records server {:?} after run ({t:?} of retries)",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // 2. The same token again (from annex-2's namespace): refused on both sides.
    let (code, _, err) = wan.join(2, &token);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already used"), "{err}");
    wan.daemons[0]
        .wait_for_log(
            &["enrollment refused", "site=annex-1", "already used"],
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(
        !wan.join_dir(2).join("private.key").exists(),
        "a refused join leaves no key behind"
    );

    // 2b. `join --force` on the working annex-1 with a used token: refused,
    // and annex-1's config and keys are byte for byte what they were.
    let files = |dir: &std::path::Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = files(&dir);
    let (code, _, err) = wan.join_force(1, &token);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already used"), "{err}");
    assert_eq!(
        files(&dir),
        before,
        "a refused join --force changed annex-1"
    );
    echo_within(&wan.annex(1).lan, records, Duration::from_secs(5)).unwrap();

    // 3. An expired token is refused.
    // (The administrator's view: plain text; docs/enrollment.md shows it.)
    let (code, out, err) = wan.site(&[
        "add",
        "annex-2",
        "--lan",
        "192.168.2.0/24",
        "--expires",
        "1s",
    ]);
    assert_eq!(code, 0, "{err}");
    eprintln!("$ townlink site add annex-2 --lan 192.168.2.0/24 --expires 1s\n{out}");
    assert!(
        out.contains("site annex-2 added: tunnel address 10.99.0.3, LAN 192.168.2.0/24"),
        "{out}"
    );
    let expiring = out
        .lines()
        .find(|l| l.starts_with("tl1."))
        .expect("the token on a line of its own")
        .to_string();
    std::thread::sleep(Duration::from_millis(2500));
    let (code, _, err) = wan.join(2, &expiring);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("expired"), "{err}");

    // 4. Truncated and forged tokens are refused with a clear message.
    let (code, _, err) = wan.join(2, &expiring[..expiring.len() - 6]);
    assert_eq!(code, 1);
    assert!(err.contains("truncated or mistyped"), "{err}");
    let mut forged = townlink::enroll::token::Token::decode(&expiring).unwrap();
    forged.secret = townlink::enroll::token::Secret::generate();
    forged.expires += 3600;
    let (code, _, err) = wan.join(2, &forged.encode_secret());
    assert_eq!(code, 1);
    assert!(err.contains("the hub does not accept this token"), "{err}");
    // A forged token for a site the hub does not know gets the very same
    // answer (issue 16, item 3): the hub's journal alone tells them apart.
    let mut unknown = forged.clone();
    unknown.site = townlink::sites::Name::new("nobody").unwrap();
    let (code, _, err_unknown) = wan.join(2, &unknown.encode_secret());
    assert_eq!(code, 1);
    assert_eq!(err_unknown, err, "an unknown site is answered differently");
    wan.daemons[0]
        .wait_for_log(
            &[
                "enrollment refused",
                "site=annex-2",
                "secret does not match (pending)",
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    wan.daemons[0]
        .wait_for_log(
            &["enrollment refused", "site=nobody", "no site of that name"],
            Duration::from_secs(5),
        )
        .unwrap();

    // 5. Revoke the pending site, enroll it again, join, run.
    let (code, _, err) = wan.site(&["remove", "annex-2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(state_of(&wan, "annex-2"), "revoked");
    let token2 = wan.site_add("annex-2", &["--lan", "192.168.2.0/24"]);
    let (code, out, err) = wan.join(2, &token2);
    assert_eq!(code, 0, "join annex-2: {out}{err}");
    eprintln!("$ townlink join <token> --uplink ...\n{out}");
    wan.start_annex(2);
    echo_within(&wan.annex(2).lan, records, Duration::from_secs(10)).unwrap();
    let (_, table, _) = wan.site(&["list"]);
    eprintln!("$ townlink site list\n{table}");
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("annex-1") && l.contains("connected")),
        "{table}"
    );
    let listed = sites(&wan);
    let a1 = listed.iter().find(|s| s["name"] == "annex-1").unwrap();
    assert_eq!(a1["state"], "connected", "{listed:#?}");
    assert_eq!(a1["address"], "10.99.0.2");

    // 6. Revoking annex-1 stops its traffic; annex-2 keeps working.
    let (code, out, err) = wan.site(&["remove", "annex-1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked"), "{out}");
    eprintln!("$ townlink site remove annex-1\n{out}");
    assert!(
        echo_within(&wan.annex(1).lan, records, Duration::from_secs(3)).is_err(),
        "annex-1 still reaches the records server after its revocation"
    );
    echo_within(&wan.annex(2).lan, records, Duration::from_secs(5)).unwrap();
    // Its probes are refused from now on: the hub closed them as
    // revoked, and the annex backs off to minutes (docs/failover.md).
    wan.daemons[1]
        .wait_for_log(
            &["refused by the hub", "reason=\"site revoked\""],
            Duration::from_secs(30),
        )
        .unwrap();

    // The hub's metrics count the attempts: 2 joins; replay, forced replay,
    // expiry, forgery, forgery for an unknown site refused.
    let (_, metrics) =
        testbed::http_get(&wan.hub, "127.0.0.1:9475".parse().unwrap(), "/metrics").unwrap();
    let value = |series: &str| testbed::metric_value(&metrics, series);
    assert_eq!(
        value("townlink_enrollments_total{result=\"joined\"}"),
        Some(2.0)
    );
    assert_eq!(
        value("townlink_enrollments_total{result=\"refused\"}"),
        Some(5.0)
    );

    // 7. After a hub restart, every joined site still works; the revoked one not.
    let hub = &mut wan.daemons[0];
    assert!(hub.stop(Duration::from_secs(10)).success());
    wan.start_hub();
    let restarted = wan.daemons.len() - 1;
    wan.daemons[restarted]
        .wait_for_log(&["sites installed", "sites=1"], Duration::from_secs(20))
        .unwrap();
    echo_within(&wan.annex(2).lan, records, Duration::from_secs(45))
        .unwrap_or_else(|e| panic!("annex-2 after the hub restart: {e}"));
    assert!(echo_within(&wan.annex(1).lan, records, Duration::from_secs(3)).is_err());
    assert_eq!(state_of(&wan, "annex-1"), "revoked");
    // The hub's restart cut the probes of both uplinks at once: annex-2
    // kept its tunnel on the fiber (no move to 4G and back).
    let annex2 = &wan.daemons[2];
    assert_eq!(
        annex2.log_lines(&["failover from="]),
        Vec::<String>::new(),
        "{}",
        annex2.log_text()
    );
    assert!(matches!(
        state_of(&wan, "annex-2").as_str(),
        "joined" | "connected"
    ));
}

#[test]
fn concurrent_site_adds_never_lose_a_site_nor_share_an_address() {
    let wan = enrolling_wan(0);
    let socket = wan.dir.path().join("hub.sock");
    let children: Vec<_> = (0..8)
        .map(|i| {
            std::process::Command::new(testbed::townlink_bin())
                .args(["site", "add", &format!("site-{i}"), "--json", "--socket"])
                .arg(&socket)
                .args(["--lan", &format!("172.20.{i}.0/24")])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut addresses = BTreeSet::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        addresses.insert(v["site"]["address"].as_str().unwrap().to_string());
    }
    assert_eq!(addresses.len(), 8, "{addresses:?}");
    assert!(!addresses.contains("10.99.0.1"), "the hub's own address");
    let listed = sites(&wan);
    assert_eq!(listed.len(), 8);
    assert!(listed.iter().all(|s| s["state"] == "pending"));
    // The registry on disk holds all of them (mode 0600), and a LAN clash is refused.
    let registry = wan.dir.path().join("hub-sites.json");
    assert_eq!(mode(&registry), 0o600);
    let text = std::fs::read_to_string(&registry).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["sites"].as_array().unwrap().len(), 8);
    assert!(!text.contains("tl1."), "no token in the registry");
    let (code, _, err) = wan.site(&["add", "clash", "--lan", "172.20.3.128/25"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("overlaps 172.20.3.0/24 of pending site site-3"),
        "{err}"
    );
    let (code, _, err) = wan.site(&["add", "site-1"]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");

    // A LAN that would take the hub's own routes (issue 16, item 1): half
    // the Internet, the records network, the hub's uplink network.
    for (lan, why) in [
        ("128.0.0.0/1", "site grab: LAN 128.0.0.0/1 is wider than /8"),
        (
            "10.50.0.0/24",
            "site grab: LAN 10.50.0.0/24 overlaps enrollment.routes[0] 10.50.0.0/24",
        ),
        (
            "198.18.0.0/25",
            "site grab: LAN 198.18.0.0/25 overlaps the hub's route 198.18.0.0/24 dev core0 \
             (proto kernel), which townlink did not make",
        ),
    ] {
        let (code, _, err) = wan.site(&["add", "grab", "--lan", lan]);
        assert_eq!(code, 1, "{lan}: {err}");
        assert!(err.contains(why), "{lan}: {err}");
    }
    assert_eq!(sites(&wan).len(), 8, "a refused site was recorded");
}

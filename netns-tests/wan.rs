//! The WAN comes up: reachability through the hub, clean stop, crash
//! recovery, and refusal of a bad config. Needs root (CI runs as root).

mod testbed;

use std::time::Duration;

use testbed::{echo_server, echo_within, Netns, Wan, RECORDS};

const UP_WITHIN: Duration = Duration::from_secs(20);
const STOP_WITHIN: Duration = Duration::from_secs(10);

#[test]
fn lan_host_reaches_records_server() {
    let mut wan = Wan::build(1);
    let records = echo_server(&wan.records, &format!("{RECORDS}:7000"));
    wan.start_hub();
    wan.start_annex(1);
    let took = echo_within(&wan.annex(1).lan, records, UP_WITHIN).unwrap();
    eprintln!("records server reached from lan1 after {took:?}");
    // The exchange really went through the tunnel: the hub saw the annex's
    // fiber address as the peer's endpoint, and counted bytes.
    let hub_tl0 = wan.hub.ip_json(&["-s", "link", "show", "tl0"]);
    let rx = hub_tl0[0]["stats64"]["rx"]["bytes"].as_u64().unwrap();
    assert!(rx > 0, "hub's tunnel interface received nothing: {hub_tl0}");
}

#[test]
fn annexes_reach_each_other_through_the_hub() {
    let mut wan = Wan::build(2);
    let lan2 = echo_server(&wan.annex(2).lan, "192.168.2.10:7001");
    let lan1 = echo_server(&wan.annex(1).lan, "192.168.1.10:7001");
    wan.start_hub();
    wan.start_annex(1);
    wan.start_annex(2);
    echo_within(&wan.annex(1).lan, lan2, UP_WITHIN).unwrap();
    echo_within(&wan.annex(2).lan, lan1, UP_WITHIN).unwrap();
}

/// Everything townlink may add in a namespace: rules and routes with its
/// protocol, and the tunnel interface (its addresses go with it).
fn leftovers(ns: &Netns) -> Vec<String> {
    let mut found = Vec::new();
    for family in ["-4", "-6"] {
        for rule in ns.ip_json(&[family, "rule", "show"]).as_array().unwrap() {
            if rule["protocol"].as_str() == Some("116") || rule["protocol"].as_u64() == Some(116) {
                found.push(format!("rule {rule}"));
            }
        }
        for route in ns
            .ip_json(&[family, "route", "show", "table", "all", "proto", "116"])
            .as_array()
            .unwrap()
        {
            found.push(format!("route {route}"));
        }
    }
    for addr in ns.ip_json(&["addr", "show"]).as_array().unwrap() {
        if addr["ifname"] == "tl0" {
            found.push(format!("interface {addr}"));
        }
        for a in addr["addr_info"].as_array().into_iter().flatten() {
            if a["local"].as_str().is_some_and(|l| l.starts_with("10.99.")) {
                found.push(format!("address {a}"));
            }
        }
    }
    found
}

#[test]
fn stop_and_crash_leave_nothing_behind() {
    let mut wan = Wan::build(1);
    let records = echo_server(&wan.records, &format!("{RECORDS}:7000"));
    let hub = wan.start_hub();
    let annex = wan.start_annex(1);
    echo_within(&wan.annex(1).lan, records, UP_WITHIN).unwrap();
    // Running: the annex has its rules and routes.
    assert!(
        !leftovers(&wan.annex(1).ns).is_empty(),
        "nothing installed while running?"
    );

    // 1. Clean stop of both.
    assert!(
        wan.daemons[annex].stop(STOP_WITHIN).success(),
        "annex exit status"
    );
    assert!(
        wan.daemons[hub].stop(STOP_WITHIN).success(),
        "hub exit status"
    );
    // Each prober counted its bytes, both ways, and said so at stop.
    for uplink in ["fiber", "lte"] {
        let line = wan.daemons[annex].log_lines(&["prober stopped", &format!("uplink={uplink}")]);
        let count = |field: &str| -> u64 {
            line.first()
                .and_then(|l| l.split(&format!("{field}=")).nth(1))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        assert!(
            count("sent_bytes") > 0 && count("received_bytes") > 0,
            "{uplink}: {line:?}"
        );
    }
    assert_eq!(
        leftovers(&wan.annex(1).ns),
        Vec::<String>::new(),
        "annex after SIGTERM"
    );
    assert_eq!(
        leftovers(&wan.hub),
        Vec::<String>::new(),
        "hub after SIGTERM"
    );

    // 2. Crash: SIGKILL leaves rules and routes in tables 7400+.
    wan.start_hub();
    let annex = wan.start_annex(1);
    echo_within(&wan.annex(1).lan, records, UP_WITHIN).unwrap();
    wan.daemons[annex].kill();
    let after_crash = leftovers(&wan.annex(1).ns);
    assert!(
        after_crash.iter().any(|l| l.starts_with("rule")),
        "a SIGKILL should leave rules for the next start to clean: {after_crash:?}"
    );

    // 3. Restart over the leftovers: works, then stops clean.
    let annex = wan.start_annex(1);
    echo_within(&wan.annex(1).lan, records, UP_WITHIN).unwrap();
    assert!(
        wan.daemons[annex]
            .log_text()
            .contains("removed routes and rules left by an earlier run"),
        "restart should report the cleanup"
    );
    assert!(wan.daemons[annex].stop(STOP_WITHIN).success());
    let last = wan.daemons.len() - 3;
    assert!(wan.daemons[last].stop(STOP_WITHIN).success(), "second hub");
    assert_eq!(
        leftovers(&wan.annex(1).ns),
        Vec::<String>::new(),
        "annex after crash, restart, stop"
    );
    assert_eq!(leftovers(&wan.hub), Vec::<String>::new(), "hub at the end");
}

/// Log lines at WARN or ERROR level.
fn alarms(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect()
}

#[test]
fn a_clean_stop_logs_no_alarm() {
    let mut wan = Wan::build(1);
    let records = echo_server(&wan.records, &format!("{RECORDS}:7000"));
    let hub = wan.start_hub();
    let annex = wan.start_annex(1);
    echo_within(&wan.annex(1).lan, records, UP_WITHIN).unwrap();
    for (i, what) in [(annex, "annex"), (hub, "hub")] {
        let status = wan.daemons[i].stop(STOP_WITHIN);
        let log = wan.daemons[i].log_text();
        assert!(status.success(), "{what} exit status {status}\n{log}");
        let stop = log
            .find("SIGTERM received")
            .unwrap_or_else(|| panic!("{what} saw no SIGTERM:\n{log}"));
        // From the signal on: a clean stop alarms nobody.
        assert_eq!(
            alarms(&log[stop..]),
            Vec::<&str>::new(),
            "{what} stop:\n{log}"
        );
        assert!(log.contains("stopped"), "{what}:\n{log}");
    }
}

/// The kernel settings townlink changes on an annex.
fn kernel_settings(ns: &Netns) -> Vec<String> {
    [
        "net.ipv4.ip_forward",
        "net.ipv4.conf.fiber0.rp_filter",
        "net.ipv4.conf.lte0.rp_filter",
    ]
    .iter()
    .map(|key| {
        let out = ns.exec(&["sysctl", key]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
    .collect()
}

#[test]
fn a_crash_then_a_clean_stop_puts_the_kernel_settings_back() {
    let mut wan = Wan::build(1);
    {
        let ns = &wan.annex(1).ns;
        // No forwarding, strict reverse-path filtering: townlink changes both.
        ns.sysctl("net.ipv4.ip_forward", "0");
        for key in [
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.conf.fiber0.rp_filter",
            "net.ipv4.conf.lte0.rp_filter",
        ] {
            ns.sysctl(key, "1");
        }
    }
    let original = kernel_settings(&wan.annex(1).ns);
    wan.start_hub();
    let annex = wan.start_annex(1);
    wan.daemons[annex]
        .wait_for_log(&["townlink is up"], UP_WITHIN)
        .unwrap();
    let running = kernel_settings(&wan.annex(1).ns);
    assert_eq!(
        running,
        vec![
            "net.ipv4.ip_forward = 1",
            "net.ipv4.conf.fiber0.rp_filter = 2",
            "net.ipv4.conf.lte0.rp_filter = 2"
        ]
    );
    // A crash leaves them changed; the next start puts them back before
    // it changes them again, so that its clean stop restores the originals.
    wan.daemons[annex].kill();
    assert_eq!(kernel_settings(&wan.annex(1).ns), running);
    let annex = wan.start_annex(1);
    wan.daemons[annex]
        .wait_for_log(&["townlink is up"], UP_WITHIN)
        .unwrap();
    assert_eq!(kernel_settings(&wan.annex(1).ns), running);
    assert!(wan.daemons[annex].stop(STOP_WITHIN).success());
    assert_eq!(kernel_settings(&wan.annex(1).ns), original);
    assert_eq!(
        wan.daemons[annex]
            .log_lines(&["restored a kernel setting left changed by an earlier run"])
            .len(),
        3,
        "{}",
        wan.daemons[annex].log_text()
    );
    // Nothing is left to restore after a clean stop (the 4G's probe
    // budget stays: it outlives the daemon by design).
    let state = wan.dir.path().join("annex1-state");
    let left: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["probe-budget-lte.json"], "{}", state.display());
}

/// A snapshot of the namespace's network state, without what the kernel
/// changes on its own (IPv6 link-local addresses and flags, carrier state).
fn state(ns: &Netns) -> Vec<String> {
    let mut s = Vec::new();
    for link in ns.ip_json(&["addr", "show"]).as_array().unwrap() {
        s.push(format!("link {}", link["ifname"]));
        // IPv6 link-local addresses are the kernel's, added when a link's carrier settles.
        let addrs = link["addr_info"].as_array().into_iter().flatten();
        for a in addrs.filter(|a| !a["local"].as_str().is_some_and(|l| l.starts_with("fe80:"))) {
            s.push(format!(
                "addr {} {}/{}",
                link["ifname"], a["local"], a["prefixlen"]
            ));
        }
    }
    for family in ["-4", "-6"] {
        for rule in ns.ip_json(&[family, "rule", "show"]).as_array().unwrap() {
            s.push(format!("rule {rule}"));
        }
        for r in ns
            .ip_json(&[family, "route", "show", "table", "all"])
            .as_array()
            .unwrap()
        {
            s.push(format!(
                "route {} {} dev {} via {} table {} proto {}",
                r["type"], r["dst"], r["dev"], r["gateway"], r["table"], r["protocol"]
            ));
        }
    }
    s.push(
        String::from_utf8_lossy(&ns.exec(&["sysctl", "net.ipv4.ip_forward"]).stdout).into_owned(),
    );
    s.sort();
    s
}

#[test]
fn bad_config_is_refused_with_every_problem_and_changes_nothing() {
    let wan = Wan::build(1);
    let annex = wan.annex(1);
    let dir = wan.dir.path();
    // A key file readable by others, and many mistakes.
    let key = dir.join("loose.key");
    testbed::write_key(&key);
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        r#"role = "annex"
name = "annex-1"
lan = ["192.168.1.0/33", "192.168.1.0/24", "192.168.1.128/25"]
colour = "blue"

[tunnel]
interface = "tl0"
private_key_file = "loose.key"
address = "10.99.0.2/24"

[[hub]]
name = "main"
public_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
endpoint = "198.18.0.2"
address = "10.98.0.1"
routes = ["10.50.0.0/24"]

[[uplink]]
name = "fiber"
interface = "fiber0"
gateway = "198.18.11.x"

[[uplink]]
name = "fiber"
interface = "missing-key-file-is-next"
"#,
    )
    .unwrap();
    let before = state(&annex.ns);
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &annex.ns.name,
            env!("CARGO_BIN_EXE_townlink"),
            "run",
            "-c",
        ])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr:\n{stderr}");
    for expected in [
        "lan[0]: \"192.168.1.0/33\" is not a CIDR prefix",
        "lan[2]: 192.168.1.128/25 overlaps 192.168.1.0/24",
        "colour: unknown key",
        "tunnel.private_key_file:",
        "readable by others",
        "hub[0].public_key: key is a low-order",
        "hub[0].endpoint: expected host:port",
        "hub[0].address: 10.98.0.1 is outside the tunnel network 10.99.0.0/24",
        "uplink[0].gateway: \"198.18.11.x\" is not an IP address",
        "uplink[1].name: fiber is already the name of uplink[0]",
        "interface: \"missing-key-file-is-next\" must be 1 to 15 characters long",
        "probe: missing section",
        "hub[0].fingerprint: missing",
        "12 problems found",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert_eq!(
        state(&annex.ns),
        before,
        "a refused config changed the system"
    );

    // `check` lists the same problems and exits 1; a good file exits 0.
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_townlink"))
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stderr).contains("12 problems found"));
    let good = std::process::Command::new(env!("CARGO_BIN_EXE_townlink"))
        .args(["check", "-c"])
        .arg(&annex.config)
        .output()
        .unwrap();
    assert_eq!(
        good.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(String::from_utf8_lossy(&good.stdout).contains("valid (annex annex-1 on tl0"));
}

/// Issue 16, item 1: a site's LAN must not take a route of the hub that
/// townlink did not make (here the administrator's route to a network
/// behind the records side). Before, the hub replaced it with its own
/// route into the tunnel.
#[test]
fn a_site_lan_over_a_route_of_the_hub_is_refused_and_that_route_is_kept() {
    let mut wan = Wan::build(1);
    let out = wan.hub.ip(&[
        "route",
        "add",
        "192.168.1.0/24",
        "via",
        RECORDS,
        "proto",
        "static",
    ]);
    assert!(out.status.success(), "{out:?}");
    let route = |wan: &Wan| wan.hub.ip_json(&["route", "show", "192.168.1.0/24"]);
    let before = route(&wan);
    let i = wan.start_hub();
    let status = wan.daemons[i].wait(UP_WITHIN);
    let log = wan.daemons[i].log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(
            "site annex-1: LAN 192.168.1.0/24 overlaps the hub's route 192.168.1.0/24 via \
             10.50.0.10 dev rec0 (proto static), which townlink did not make"
        ),
        "{log}"
    );
    assert_eq!(route(&wan), before, "the administrator's route changed");
    assert_eq!(before[0]["protocol"], "static", "{before}");
    assert_eq!(
        wan.hub.ip_json(&["route", "show", "proto", "116"]),
        serde_json::json!([]),
        "townlink left routes behind"
    );
}

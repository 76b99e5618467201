//! Probing that never lies and never burns the 4G: a hub restart, a hub
//! whose probe responder is firewalled, a hub that refuses the annex.
//! Each test prints its figure (gap, bytes per second on the 4G) before
//! asserting, so that a run against another build (`TOWNLINK_BIN`) gives
//! the "before" figure.

mod testbed;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use testbed::{status, udp_echo_server, Options, UdpStream, Wan, PROBE_PORT, RECORDS};

fn annex_socket(wan: &Wan) -> PathBuf {
    wan.dir.path().join("annex1.sock")
}

/// The probe bytes (sent + received) of uplink `name`, from `status --json`.
fn probe_bytes(wan: &Wan, name: &str) -> u64 {
    let (code, out, err) = status(&annex_socket(wan), true);
    assert_eq!(code, 0, "status: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    let u = v["uplinks"]
        .as_array()
        .expect("uplinks")
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("no uplink {name} in {out}"));
    u["probe_sent_bytes"].as_u64().unwrap() + u["probe_received_bytes"].as_u64().unwrap()
}

/// Polls `townlink status` until its text contains `what`; returns the text.
fn wait_for_status(wan: &Wan, what: &str, within: Duration) -> Result<String, String> {
    let deadline = Instant::now() + within;
    loop {
        let (_, text, _) = status(&annex_socket(wan), false);
        if text.contains(what) {
            return Ok(text);
        }
        if Instant::now() > deadline {
            return Err(format!("status never said {what:?}; last:\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The 4G's probe bytes over 60 s, from 10 s after the annex started.
fn lte_bytes_per_minute(wan: &Wan, started: Instant) -> u64 {
    std::thread::sleep(
        (started + Duration::from_secs(10)).saturating_duration_since(Instant::now()),
    );
    let before = probe_bytes(wan, "lte");
    std::thread::sleep(Duration::from_secs(60));
    let after = probe_bytes(wan, "lte");
    let spent = after - before;
    eprintln!(
        "4G probe bytes over 60 s: {spent} ({:.1} B/s); since start: {after}",
        spent as f64 / 60.0
    );
    spent
}

#[test]
fn hub_restart_costs_seconds_not_15() {
    let mut wan = Wan::build(1);
    let echo = udp_echo_server(&wan.records, &format!("{RECORDS}:7002"));
    let hub = wan.start_hub();
    let annex = wan.start_annex(1);
    for uplink in ["fiber", "lte"] {
        wan.daemons[annex]
            .wait_for_log(
                &["uplink state", &format!("uplink={uplink}"), "to=\"up\""],
                Duration::from_secs(30),
            )
            .unwrap();
    }
    let stream = UdpStream::start(&wan.annex(1).lan, echo, 50);
    stream.wait_for_echoes(50, Duration::from_secs(20)).unwrap();

    wan.daemons[hub].stop(Duration::from_secs(10));
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let hub = wan.start_hub();
    // The restarted hub answers from the moment its responder listens
    // (its sites and their peers are in place by then).
    wan.daemons[hub]
        .wait_for_log(&["probe responder listening"], Duration::from_secs(20))
        .unwrap();
    let up = Instant::now();
    stream.wait_for_echoes(50, Duration::from_secs(40)).unwrap();
    let back = stream
        .first_echo_after(up)
        .expect("echoes after the restart");
    let gap = back - up;
    eprintln!(
        "traffic back {gap:?} after the restarted hub answered ({:?} after the stop)",
        back - stopped
    );
    let a = &wan.daemons[annex];
    assert!(gap < Duration::from_secs(2), "gap {gap:?}");
    a.wait_for_log(&["the hub restarted"], Duration::from_secs(1))
        .unwrap();
    // No uplink switch, and the stream keeps flowing.
    assert_eq!(a.log_lines(&["failover from="]), Vec::<String>::new());
    assert_eq!(wan.annex(1).tunnel_uplink(), "fiber0");
    stream.wait_for_echoes(100, Duration::from_secs(5)).unwrap();
    // One re-handshake for one restart, whichever prober saw it first.
    assert_eq!(a.log_lines(&["the hub restarted"]).len(), 1);
}

#[test]
fn responder_unreachable_spares_the_4g_and_says_so() {
    let mut wan = Wan::build(1);
    // A firewall in front of the hub drops the probes (UDP 51821), not
    // WireGuard (UDP 51820).
    wan.hub.exec(&[
        "iptables",
        "-A",
        "INPUT",
        "-p",
        "udp",
        "--dport",
        &PROBE_PORT.to_string(),
        "-j",
        "DROP",
    ]);
    let echo = udp_echo_server(&wan.records, &format!("{RECORDS}:7002"));
    wan.start_hub();
    let started = Instant::now();
    let annex = wan.start_annex(1);
    let stream = UdpStream::start(&wan.annex(1).lan, echo, 50);
    stream.wait_for_echoes(50, Duration::from_secs(20)).unwrap();

    let spent = lte_bytes_per_minute(&wan, started);
    for line in wan.daemons[annex].log_lines(&["uplink=lte", "probe connection failed"]) {
        eprintln!("{line}");
    }
    // docs/failover.md: a metered uplink that cannot reach the responder
    // retries after its interval (30 s), then 1, 2, 4, 8, 16 min, then
    // every 20 min; an attempt without answer costs four 1,228-byte
    // packets (its Initial, twice more after 1 s, and the one that closes
    // it). So at most two attempts in this minute: 9,824 bytes, against
    // ~55 kB before. (Its budget, 30 MB per 30 days with a 3 MB bucket,
    // would stop anything worse.)
    assert!(spent <= 9_824, "{spent} probe bytes on the 4G in 60 s");

    let text =
        wait_for_status(&wan, "probe responder unreachable", Duration::from_secs(5)).unwrap();
    eprintln!("{text}");
    assert!(text.contains("tunnel handshake"), "{text}");
    assert!(text.contains("the tunnel works"), "{text}");
    assert!(text.contains("probes unreachable"), "{text}");
    assert!(!text.contains("100.0 %"), "no 100 % loss shown: {text}");
    // Users' traffic flows, on the fiber, and nothing moved.
    stream.wait_for_echoes(50, Duration::from_secs(5)).unwrap();
    assert_eq!(wan.annex(1).tunnel_uplink(), "fiber0");
    let a = &wan.daemons[annex];
    assert_eq!(a.log_lines(&["failover from="]), Vec::<String>::new());
    a.wait_for_log(
        &[
            "probe responder unreachable on every uplink",
            "tunnel works",
        ],
        Duration::from_secs(1),
    )
    .unwrap();
}

#[test]
fn a_refused_annex_backs_off_to_minutes() {
    // The hub does not know the annex (not registered yet).
    let options = Options {
        enrolled_sites: true,
        ..Options::default()
    };
    let mut wan = Wan::build_with(1, &options);
    let hub = wan.start_hub();
    let started = Instant::now();
    let annex = wan.start_annex(1);

    let spent = lte_bytes_per_minute(&wan, started);
    let elapsed = started.elapsed();
    let refusals = wan.daemons[hub].log_lines(&["probe connection refused: unknown certificate"]);
    eprintln!(
        "{} refusals logged by the hub in {elapsed:?}",
        refusals.len()
    );
    // Over 70 s: an attempt at start and one a minute later, per uplink.
    assert!(refusals.len() <= 4, "{refusals:#?}");
    assert!(spent <= 15_000, "{spent} probe bytes on the 4G in 60 s");

    let text = wait_for_status(
        &wan,
        "refused by the hub: unknown certificate",
        Duration::from_secs(5),
    )
    .unwrap();
    eprintln!("{text}");
    assert!(text.contains("no tunnel handshake"), "{text}");
    assert!(text.contains("probes refused"), "{text}");
    assert!(!text.contains("100.0 %"), "no 100 % loss shown: {text}");
    // Said once per uplink, not per attempt.
    let a = &wan.daemons[annex];
    assert_eq!(
        a.log_lines(&["refused by the hub: its probe responder"])
            .len(),
        2
    );
}

#[test]
fn a_firewall_that_starts_dropping_the_probes_is_named_in_the_journal() {
    let mut wan = Wan::build(1);
    let echo = udp_echo_server(&wan.records, &format!("{RECORDS}:7002"));
    wan.start_hub();
    let annex = wan.start_annex(1);
    let stream = UdpStream::start(&wan.annex(1).lan, echo, 50);
    stream.wait_for_echoes(50, Duration::from_secs(20)).unwrap();
    wait_for_status(&wan, "lte        lte0     up", Duration::from_secs(20)).unwrap();
    // The hub's firewall starts dropping UDP 51821 (a rule added on a
    // running WAN), not WireGuard's 51820.
    let cut = Instant::now();
    wan.hub.exec(&[
        "iptables",
        "-A",
        "INPUT",
        "-p",
        "udp",
        "--dport",
        &PROBE_PORT.to_string(),
        "-j",
        "DROP",
    ]);
    // What the journal says (docs/technician.md quotes it): every uplink
    // down at once, "N probes lost", and no switch (none is up) ...
    let a = &wan.daemons[annex];
    for uplink in ["fiber", "lte"] {
        let line = a
            .wait_for_log(
                &[
                    "uplink state",
                    &format!("uplink={uplink}"),
                    "to=\"down\"",
                    &format!("{uplink}: 4 probes lost in"),
                ],
                Duration::from_secs(10),
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", a.log_text()));
        eprintln!("{line}");
    }
    // ... then, once the fiber's connection has been silent for 10 s, that
    // it cannot reach the responder.
    let line = a
        .wait_for_log(
            &["cannot reach the hub's probe responder", "uplink=fiber"],
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", a.log_text()));
    eprintln!("after {:?}: {line}", cut.elapsed());
    let (_, text, _) = status(&annex_socket(&wan), false);
    eprintln!("{text}");
    // The tunnel stays where it was, and users' traffic flows.
    assert_eq!(a.log_lines(&["failover from="]), Vec::<String>::new());
    assert_eq!(wan.annex(1).tunnel_uplink(), "fiber0");
    stream.wait_for_echoes(50, Duration::from_secs(5)).unwrap();
}

/// The 4G's probe budget as `status --json` shows it: (bytes available,
/// budget), once the annex answers.
fn lte_budget(wan: &Wan) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, _) = status(&annex_socket(wan), true);
        if code == 0 {
            let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
            let lte = v["uplinks"]
                .as_array()
                .expect("uplinks")
                .iter()
                .find(|u| u["name"] == "lte")
                .expect("uplink lte");
            let b = &lte["budget"];
            return (
                b["available_bytes"].as_u64().expect("available_bytes"),
                b["budget_bytes"].as_u64().expect("budget_bytes"),
            );
        }
        assert!(Instant::now() < deadline, "the annex never answered status");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The 4G's probe budget outlives the daemon: a run that crashed is
/// charged what it may have spent unsaved (a twentieth of the bucket), so
/// that a daemon in a crash loop cannot start each run with a full bucket;
/// a clean stop saves the level and the next run goes on from it.
#[test]
fn the_probe_budget_outlives_a_crash_and_a_restart() {
    let mut wan = Wan::build(1);
    wan.start_hub();
    let annex = wan.start_annex(1);
    wan.daemons[annex]
        .wait_for_log(
            &["uplink state", "uplink=lte", "to=\"up\""],
            Duration::from_secs(30),
        )
        .unwrap();
    let (first, budget) = lte_budget(&wan);
    let bucket = budget / 10;
    eprintln!("first run: {first} of a {bucket}-byte bucket");
    assert!(first <= bucket && first > bucket * 9 / 10, "{first}");
    let file = wan.dir.path().join("annex1-state/probe-budget-lte.json");
    assert!(file.exists(), "no {}", file.display());

    wan.daemons[annex].kill();
    let annex = wan.start_annex(1);
    // The budget is loaded when probing starts (until then status shows
    // the configured bucket).
    wan.daemons[annex]
        .wait_for_log(
            &["probing every hub over every uplink"],
            Duration::from_secs(30),
        )
        .unwrap();
    let (after_crash, _) = lte_budget(&wan);
    eprintln!("after a crash: {after_crash}");
    // Charged 5 % of the bucket (150 kB), the few seconds' refill aside.
    assert!(after_crash < first - bucket / 25, "{after_crash}");
    assert!(after_crash > first - bucket / 10, "{after_crash}");

    std::thread::sleep(Duration::from_secs(3));
    wan.daemons[annex].stop(Duration::from_secs(10));
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("saved budget")).unwrap();
    assert_eq!(saved["clean"], true, "{saved}");
    let level = saved["level"].as_f64().expect("level");
    let annex = wan.start_annex(1);
    wan.daemons[annex]
        .wait_for_log(
            &["probing every hub over every uplink"],
            Duration::from_secs(30),
        )
        .unwrap();
    let (after_stop, _) = lte_budget(&wan);
    eprintln!("saved at the clean stop: {level:.0}; after the restart: {after_stop}");
    // Where the last run left it, less what this run's start spent (its
    // QUIC handshake and first probes: ~18 kB measured, as in the first
    // run): not charged the 150 kB of a crash, not refilled to full.
    let (after_stop, level) = (after_stop as f64, level);
    assert!(after_stop <= level + 1_000.0, "{after_stop} vs {level}");
    assert!(after_stop > level - 50_000.0, "{after_stop} vs {level}");
}

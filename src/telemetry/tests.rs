//! The naming rules of docs/metrics.md, checked on the encoded registry of
//! both roles, and the status view.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;
use crate::config::tests::{dir_with_key, example, hub_example_with_sites};
use crate::decision::{Decision, PathId, ReasonClass, StateChange};
use crate::probe::wire::Report;
use crate::sites::Name;

/// One metric family of the encoded text.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    unit: Option<String>,
    help: bool,
    /// (sample name, labels).
    samples: Vec<(String, BTreeMap<String, String>)>,
}

fn labels(text: &str) -> BTreeMap<String, String> {
    // Our label values never hold '"' or ',' (names are plain), so a
    // simple split is exact here.
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').expect("label=value");
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect()
}

fn parse(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    for line in text.lines() {
        let words: Vec<&str> = line.splitn(4, ' ').collect();
        match words.as_slice() {
            ["#", "EOF"] => {}
            ["#", "TYPE", name, kind] => {
                families.entry(name.to_string()).or_default().kind = kind.to_string()
            }
            ["#", "UNIT", name, unit] => {
                families.entry(name.to_string()).or_default().unit = Some(unit.to_string())
            }
            ["#", "HELP", name, ..] => families.entry(name.to_string()).or_default().help = true,
            _ => {
                let (series, _value) = line.rsplit_once(' ').expect("sample line");
                let (name, labels) = match series.split_once('{') {
                    Some((n, l)) => (n, self::labels(l.trim_end_matches('}'))),
                    None => (series, BTreeMap::new()),
                };
                let family = families
                    .keys()
                    .filter(|f| name.starts_with(f.as_str()))
                    .max_by_key(|f| f.len())
                    .unwrap_or_else(|| panic!("sample {name} before its # TYPE"))
                    .clone();
                families
                    .get_mut(&family)
                    .expect("found above")
                    .samples
                    .push((name.to_string(), labels));
            }
        }
    }
    families
}

/// An annex and a hub telemetry after some events, as a dashboard sees them.
fn scrapes() -> (String, String) {
    let dir = dir_with_key();
    let annex_config = example("annex.toml", dir.path()).expect("annex example");
    let hub_config = hub_example_with_sites(dir.path()).expect("hub example");
    let annex = Telemetry::new(&annex_config);
    let hub = Telemetry::new(&hub_config);
    annex.failover(&Decision {
        from: PathId::new(0, 0),
        to: PathId::new(0, 1),
        class: ReasonClass::Dead,
        reason: "fiber: 4 probes lost in a row".into(),
        at: Duration::from_secs(3),
    });
    annex.check("records", Ok(Duration::from_millis(12)));
    let site = hub_config_site(&hub_config);
    hub.site_report(&site, annex.report());
    (annex.encode(), hub.encode())
}

fn hub_config_site(config: &crate::config::Config) -> Name {
    let Role::Hub(h) = &config.role else {
        panic!("hub expected")
    };
    h.sites.iter().next().expect("a site").name.clone()
}

/// The metric names listed in docs/metrics.md.
fn documented() -> BTreeSet<String> {
    let doc = include_str!("../../docs/metrics.md");
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(n, _)| n.to_string()))
        .filter(|n| n.starts_with("townlink_"))
        .collect()
}

const LABELS: [&str; 18] = [
    "uplink",
    "hub",
    "from_hub",
    "to_hub",
    "interface",
    "metered",
    "state",
    "from",
    "to",
    "reason",
    "peer",
    "check",
    "site",
    "result",
    "version",
    "role",
    "cause",
    "listener",
];

fn check_rules(text: &str) -> BTreeSet<String> {
    let families = parse(text);
    let mut exported = BTreeSet::new();
    let unit_words = [
        "ms",
        "milliseconds",
        "percent",
        "kb",
        "mb",
        "kbytes",
        "minutes",
        "hours",
    ];
    for (name, f) in &families {
        assert!(name.starts_with("townlink_"), "{name}: prefix townlink_");
        assert!(f.help, "{name}: has HELP");
        for w in unit_words {
            assert!(
                !name.split('_').any(|part| part == w),
                "{name}: non-base unit {w}"
            );
        }
        if let Some(unit) = &f.unit {
            assert!(
                ["seconds", "bytes", "ratio"].contains(&unit.as_str()),
                "{name}: unit {unit} is not a base unit"
            );
            assert!(
                name.ends_with(&format!("_{unit}")),
                "{name}: ends with its unit"
            );
        }
        for suffix in ["seconds", "bytes", "ratio"] {
            if name.ends_with(&format!("_{suffix}")) {
                assert_eq!(f.unit.as_deref(), Some(suffix), "{name}: # UNIT line");
            }
        }
        if name.contains("time") {
            assert!(
                name.ends_with("_timestamp_seconds"),
                "{name}: a point in time is _timestamp_seconds"
            );
        }
        if name.ends_with("_loss_ratio") || name.ends_with("_ratio") {
            assert_eq!(f.kind, "gauge", "{name}: a ratio is a gauge");
        }
        assert!(
            !f.samples.is_empty() || name.starts_with("townlink_site_uplink_"),
            "{name}: every series exists from the first scrape"
        );
        for (sample, labels) in &f.samples {
            match f.kind.as_str() {
                "counter" => assert_eq!(sample, &format!("{name}_total"), "counter sample"),
                "info" => assert_eq!(sample, &format!("{name}_info"), "info sample"),
                "gauge" => {
                    assert_eq!(sample, name, "gauge sample");
                    assert!(
                        !name.ends_with("_total"),
                        "{name}: gauge named like a counter"
                    )
                }
                other => panic!("{name}: unexpected type {other}"),
            }
            for (k, v) in labels {
                assert!(
                    LABELS.contains(&k.as_str()),
                    "{sample}: unbounded label {k}"
                );
                let numeric = v.trim_end_matches(|c: char| c.is_ascii_alphabetic() || c == '%');
                assert!(
                    numeric == v || numeric.parse::<f64>().is_err(),
                    "{sample}: label {k}={v} carries a unit"
                );
            }
            if let Some(s) = labels.get("state") {
                let known = if name == "townlink_uplink_probe_connection" {
                    PROBE_CONNECTION_STATES.contains(&s.as_str())
                } else {
                    STATES.iter().any(|h| h.as_str() == s)
                };
                assert!(known, "{sample}: state {s}");
            }
            if let Some(r) = labels.get("reason") {
                assert!(
                    REASONS.iter().any(|c| c.as_str() == r),
                    "{sample}: reason {r}"
                );
            }
            exported.insert(sample.clone());
        }
    }
    exported
}

#[test]
fn registry_follows_the_naming_rules_and_the_docs() {
    let (annex, hub) = scrapes();
    let mut exported = check_rules(&annex);
    exported.extend(check_rules(&hub));
    let documented = documented();
    let missing: Vec<_> = exported.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "exported but not in docs/metrics.md: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "in docs/metrics.md but not exported: {stale:?}"
    );
}

#[test]
fn each_role_exports_its_own_families_only() {
    let (annex, hub) = scrapes();
    let families = |text: &str| -> Vec<String> { parse(text).into_keys().collect() };
    for f in families(&annex) {
        assert!(
            !f.starts_with("townlink_site_") && !f.starts_with("townlink_responder_"),
            "annex exports the hub's {f}"
        );
    }
    for f in families(&hub) {
        assert!(
            !f.starts_with("townlink_uplink_")
                && f != "townlink_hub_preferred"
                && !f.starts_with("townlink_failovers")
                && !f.starts_with("townlink_last_failover"),
            "hub exports the annex's {f}"
        );
    }
}

#[test]
fn every_series_exists_before_any_event() {
    let dir = dir_with_key();
    let annex = Telemetry::new(&example("annex.toml", dir.path()).unwrap());
    let text = annex.encode();
    // 2 uplinks, 1 hub: 2 directions × 5 reasons, all at 0.
    let failovers: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("townlink_failovers_total{"))
        .collect();
    assert_eq!(failovers.len(), 10, "{failovers:?}");
    assert!(failovers.iter().all(|l| l.ends_with(" 0")), "{failovers:?}");
    assert!(text.contains("townlink_last_failover_timestamp_seconds 0.0"));
    assert!(text.contains("townlink_uplink_active{uplink=\"fiber\",hub=\"main\"} 1"));
    assert!(text.contains("townlink_uplink_state{uplink=\"lte\",hub=\"main\",state=\"unknown\"} 1"));
    assert!(text.contains("townlink_check_up{check=\"records\"} 0"));
    // The damping: no failure yet, the base hold-down.
    assert!(text.contains("townlink_uplink_penalty{uplink=\"fiber\",hub=\"main\"} 0.0"));
    assert!(text.contains("townlink_uplink_holddown_seconds{uplink=\"fiber\",hub=\"main\"} 10.0"));
}

#[test]
fn a_failover_is_counted_and_shown() {
    let dir = dir_with_key();
    let annex = Telemetry::new(&example("annex.toml", dir.path()).unwrap());
    let before = now();
    annex.failover(&Decision {
        from: PathId::new(0, 0),
        to: PathId::new(0, 1),
        class: ReasonClass::Brownout,
        reason: "fiber: loss 31 % over 10 s".into(),
        at: Duration::from_secs(30),
    });
    let text = annex.encode();
    assert!(
        text.contains("townlink_failovers_total{from=\"fiber\",to=\"lte\",reason=\"brownout\",from_hub=\"main\",to_hub=\"main\"} 1")
    );
    let status = annex.snapshot();
    assert_eq!(status.failovers, 1);
    let f = status.last_failover.clone().expect("last failover");
    assert_eq!(
        (f.from.as_str(), f.to.as_str(), f.class.as_str()),
        ("fiber", "lte", "brownout")
    );
    assert!(f.at >= before);
    let shown = status.render(f.at + 5.0);
    assert!(shown.contains("last switch fiber → lte"), "{shown}");
    assert!(
        shown.contains("brownout (fiber: loss 31 % over 10 s)"),
        "{shown}"
    );
}

#[test]
fn hub_keeps_each_sites_report_under_its_certificate_name() {
    let dir = dir_with_key();
    let config = hub_example_with_sites(dir.path()).unwrap();
    let hub = Telemetry::new(&config);
    let site = hub_config_site(&config);
    let report = |active: &str, uplinks: &[&str]| Report {
        active: active.into(),
        uplinks: uplinks
            .iter()
            .map(|u| crate::probe::wire::Uplink {
                name: u.to_string(),
                state: "up".into(),
                rtt_ms: Some(20.0),
                loss: Some(0.0),
                ..Default::default()
            })
            .collect(),
        ..Report::default()
    };
    hub.site_report(&site, report("lte", &["fiber", "lte"]));
    let text = hub.encode();
    let active = format!("townlink_site_uplink_active{{site=\"{site}\",uplink=\"lte\"}} 1");
    assert!(text.contains(&active), "{text}");
    assert!(text.contains(&format!(
        "townlink_site_uplink_rtt_seconds{{site=\"{site}\",uplink=\"lte\"}} 0.02"
    )));
    // An uplink the site no longer reports disappears.
    hub.site_report(&site, report("lte", &["lte"]));
    let text = hub.encode();
    assert!(!text.contains("uplink=\"fiber\""), "{text}");
    // A report for a site that is not registered changes nothing.
    hub.site_report(&Name::new("ghost").unwrap(), report("lte", &["lte"]));
    assert!(!hub.encode().contains("ghost"));
    let status = hub.snapshot();
    let view = status
        .sites
        .iter()
        .find(|s| s.name == site.as_str())
        .unwrap();
    assert_eq!(view.report.as_ref().unwrap().active, "lte");
}

#[test]
fn status_renders_uplinks_checks_and_sites() {
    let dir = dir_with_key();
    let annex = Telemetry::new(&example("annex.toml", dir.path()).unwrap());
    annex.check("records", Err("connection refused".into()));
    let s = annex.snapshot();
    let text = s.render(now());
    assert!(text.contains("uplinks (active: fiber)"), "{text}");
    assert!(text.contains("records"), "{text}");
    assert!(text.contains("FAILED: connection refused"), "{text}");
    assert!(text.contains("last switch: none since start"), "{text}");
    // The JSON is the same data, and reads back.
    let json = serde_json::to_string(&s).unwrap();
    let back: Status = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
}

#[test]
fn status_json_writes_roles_states_and_sources_as_words() {
    let dir = dir_with_key();
    let annex = Telemetry::new(&example("annex.toml", dir.path()).unwrap()).snapshot();
    let json = serde_json::to_value(&annex).unwrap();
    assert_eq!(json["role"], "annex");
    assert_eq!(json["uplinks"][0]["state"], "unknown");
    let hub = Telemetry::new(&hub_example_with_sites(dir.path()).unwrap()).snapshot();
    let json = serde_json::to_value(&hub).unwrap();
    assert_eq!(json["role"], "hub");
    assert_eq!(json["sites"][0]["source"], "config");
    // A state this townlink does not know is refused, not taken as another.
    let mut text = serde_json::to_value(&annex).unwrap();
    text["uplinks"][0]["state"] = "sideways".into();
    let e = serde_json::from_value::<Status>(text)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown uplink state \"sideways\""), "{e}");
}

#[test]
fn status_shows_the_damping_and_why_an_uplink_is_out() {
    let dir = dir_with_key();
    let annex = Telemetry::new(&example("annex.toml", dir.path()).unwrap());
    let q = |health, holddown: u64, penalty| crate::decision::Quality {
        health,
        rtt: Some(Duration::from_millis(8)),
        jitter: Duration::ZERO,
        loss: Some(0.0),
        late: Some(0.2),
        samples: 100,
        consecutive_lost: 0,
        holddown: Duration::from_secs(holddown),
        penalty,
    };
    annex.paths(
        &[q(Health::Recovering, 37, 2.6), q(Health::Up, 10, 0.0)],
        PathId::new(0, 1),
    );
    annex.state_change(&StateChange {
        path: PathId::new(0, 0),
        from: Health::Down,
        to: Health::Recovering,
        reason: "fiber: answering again, hold-down 37 s after 3 failures in 2 min".into(),
        at: Duration::from_secs(100),
    });
    let text = annex.encode();
    assert!(text.contains("townlink_uplink_holddown_seconds{uplink=\"fiber\",hub=\"main\"} 37.0"));
    assert!(text.contains("townlink_uplink_penalty{uplink=\"fiber\",hub=\"main\"} 2.6"));
    assert!(text.contains("townlink_uplink_late_ratio{uplink=\"fiber\",hub=\"main\"} 0.2"));
    let shown = annex.snapshot().render(now());
    assert!(
        shown.contains("late 20.0 %; hold-down 37 s, penalty 2.6"),
        "{shown}"
    );
    assert!(
        shown
            .contains("\n      fiber: answering again, hold-down 37 s after 3 failures in 2 min\n"),
        "{shown}"
    );
    // An up uplink that never failed shows neither.
    let lte = shown.lines().find(|l| l.contains(" lte ")).unwrap();
    assert!(!lte.contains("hold-down"), "{lte}");
}

#[test]
fn status_says_why_probes_cannot_measure() {
    use crate::probe::prober::{Connection, Refusal};
    let dir = dir_with_key();
    let annex = Telemetry::new(&example("annex.toml", dir.path()).unwrap());
    let unreachable = Connection::Unreachable { failures: 2 };
    annex.probing(
        &[unreachable, unreachable],
        Some("probe responder unreachable".into()),
    );
    let now = now();
    let peer = |handshake: Option<f64>| crate::tunnel::PeerStatus {
        public_key: crate::keys::PrivateKey::generate().public_key(),
        endpoint: None,
        allowed_ips: Vec::new(),
        last_handshake: handshake.map(|h| std::time::UNIX_EPOCH + Duration::from_secs_f64(h)),
        rx_bytes: 0,
        tx_bytes: 0,
        keepalive: None,
    };
    annex.peer("main", &peer(Some(now - 12.0)));
    let text = annex.snapshot().render(now);
    assert!(
        text.contains(
            "probe responder unreachable (tunnel handshake 12s ago: the tunnel works); uplinks not measured"
        ),
        "{text}"
    );
    assert!(text.contains("probes unreachable"), "{text}");
    // The lte's budget (30 MB by default for a metered uplink) is shown.
    assert!(text.contains("budget 30 MB/30 days, 3 MB left"), "{text}");
    assert!(annex.status_line().contains("probe responder unreachable"));
    let metrics = annex.encode();
    assert!(
        metrics
            .contains("townlink_uplink_probe_connection{uplink=\"fiber\",hub=\"main\",state=\"unreachable\"} 1"),
        "{metrics}"
    );

    let refused = Connection::Refused(Refusal::UnknownCertificate);
    annex.probing(
        &[refused, unreachable],
        Some("refused by the hub: unknown certificate".into()),
    );
    annex.peer("main", &peer(None));
    let text = annex.snapshot().render(now);
    assert!(
        text.contains("refused by the hub: unknown certificate (no tunnel handshake yet)"),
        "{text}"
    );
    annex.probing(&[Connection::Up, Connection::Up], None);
    let text = annex.snapshot().render(now);
    assert!(!text.contains("not measured"), "{text}");
}

#[test]
fn a_window_too_short_to_judge_shows_measuring_and_nan() {
    let dir = dir_with_key();
    let annex = Telemetry::new(&example("annex.toml", dir.path()).unwrap());
    let q = crate::decision::Quality {
        health: Health::Up,
        rtt: Some(Duration::from_micros(300)),
        jitter: Duration::ZERO,
        // What `failover::shown` leaves of 1 lost probe in 3.
        loss: None,
        late: None,
        samples: 3,
        consecutive_lost: 0,
        holddown: Duration::from_secs(10),
        penalty: 0.0,
    };
    annex.paths(&[q, q], PathId::new(0, 0));
    let text = annex.snapshot().render(now());
    let fiber = text.lines().find(|l| l.contains(" fiber ")).unwrap();
    assert!(fiber.contains("loss measuring"), "{text}");
    assert!(!text.contains('%'), "{text}");
    assert!(annex
        .encode()
        .contains("townlink_uplink_loss_ratio{uplink=\"fiber\",hub=\"main\"} NaN"));
}

#[test]
fn a_config_site_is_configured_until_its_first_handshake() {
    let dir = dir_with_key();
    let hub = Telemetry::new(&hub_example_with_sites(dir.path()).unwrap());
    let mut status = hub.snapshot();
    let t = now();
    let line = |s: &crate::telemetry::status::Status| {
        let text = s.render(t);
        text.lines()
            .find(|l| l.trim_start().starts_with("annex-1"))
            .unwrap()
            .to_string()
    };
    assert!(line(&status).contains(" configured "), "{}", line(&status));
    status.sites[0].peer.last_handshake = Some(t - 5.0);
    assert!(line(&status).contains(" connected "), "{}", line(&status));
    status.sites[0].peer.last_handshake = Some(t - 600.0);
    assert!(line(&status).contains(" silent "), "{}", line(&status));
}

#[test]
fn a_refused_annex_is_not_told_its_tunnel_works() {
    let dir = dir_with_key();
    let annex = Telemetry::new(&example("annex.toml", dir.path()).unwrap());
    let mut status = annex.snapshot();
    let t = now();
    status.tunnel.peers = vec![crate::telemetry::status::PeerView {
        name: "main".into(),
        last_handshake: Some(t - 3.0),
        ..Default::default()
    }];
    status.probing = Some("refused by the hub: site revoked".into());
    let text = status.render(t);
    assert!(
        text.contains(
            "refused by the hub: site revoked (last tunnel handshake 3s ago); uplinks not measured"
        ),
        "{text}"
    );
    status.probing = Some("probe responder unreachable".into());
    assert!(status.render(t).contains("the tunnel works"));
}

/// The annex example with a second hub, `backup` (device tl1).
fn two_hubs(dir: &std::path::Path) -> crate::config::Config {
    let mut config = example("annex.toml", dir).unwrap();
    let Role::Annex(a) = &mut config.role else {
        panic!("annex expected")
    };
    let mut backup = a.hubs[0].clone();
    backup.name = Name::new("backup").unwrap();
    backup.interface = crate::config::InterfaceName::new("tl1").unwrap();
    backup.priority = 1;
    a.hubs.push(backup);
    config
}

#[test]
fn with_two_hubs_every_path_has_its_series_and_a_hub_switch_names_both_hubs() {
    let dir = dir_with_key();
    let annex = Telemetry::new(&two_hubs(dir.path()));
    let text = annex.encode();
    for hub in ["main", "backup"] {
        for uplink in ["fiber", "lte"] {
            let l = format!("{{uplink=\"{uplink}\",hub=\"{hub}\"");
            for family in [
                "townlink_uplink_up",
                "townlink_uplink_active",
                "townlink_uplink_rtt_seconds",
                "townlink_uplink_loss_ratio",
                "townlink_uplink_probe_sent_bytes_total",
                "townlink_uplink_state_changes_total",
            ] {
                assert!(
                    text.contains(&format!("{family}{l}")),
                    "{family}{l}: {text}"
                );
            }
        }
    }
    // 4 paths: 12 ordered pairs × 5 reasons, hub_down among them.
    let failovers = text
        .lines()
        .filter(|l| l.starts_with("townlink_failovers_total{"))
        .count();
    assert_eq!(failovers, 60);
    assert!(text.contains(
        "townlink_failovers_total{from=\"fiber\",to=\"fiber\",reason=\"hub_down\",from_hub=\"main\",to_hub=\"backup\"} 0"
    ));
    // Uplink series stay per uplink.
    assert!(text.contains("townlink_uplink_metered{uplink=\"lte\"} 1"));
    // One series per hub says which is preferred.
    assert!(
        text.contains("townlink_hub_preferred{hub=\"main\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("townlink_hub_preferred{hub=\"backup\"} 0"),
        "{text}"
    );

    // The main hub dies: backup/fiber becomes active, main/fiber down.
    let q = |health| crate::decision::Quality {
        health,
        rtt: Some(Duration::from_millis(8)),
        jitter: Duration::ZERO,
        loss: Some(0.0),
        late: Some(0.0),
        samples: 100,
        consecutive_lost: 0,
        holddown: Duration::from_secs(10),
        penalty: 0.0,
    };
    annex.state_change(&StateChange {
        path: PathId::new(0, 0),
        from: Health::Up,
        to: Health::Down,
        reason: "main/fiber: 4 probes lost in 600 ms".into(),
        at: Duration::from_secs(10),
    });
    annex.failover(&Decision {
        from: PathId::new(0, 0),
        to: PathId::new(1, 0),
        class: ReasonClass::HubDown,
        reason: "main/fiber: 4 probes lost in 600 ms; hub main silent over fiber".into(),
        at: Duration::from_secs(10),
    });
    annex.paths(
        &[q(Health::Down), q(Health::Up), q(Health::Up), q(Health::Up)],
        PathId::new(1, 0),
    );
    // A state change of a path to a hub that is not active is counted too.
    annex.state_change(&StateChange {
        path: PathId::new(0, 1),
        from: Health::Up,
        to: Health::Down,
        reason: "main/lte: 4 probes lost".into(),
        at: Duration::from_secs(11),
    });
    annex
        .probe_counters("backup", "fiber")
        .sent_bytes
        .inc_by(100);
    let text = annex.encode();
    assert!(text.contains(
        "townlink_failovers_total{from=\"fiber\",to=\"fiber\",reason=\"hub_down\",from_hub=\"main\",to_hub=\"backup\"} 1"
    ), "{text}");
    // A switch of hub leaves the preferred hub as it is.
    assert!(
        text.contains("townlink_hub_preferred{hub=\"main\"} 1"),
        "{text}"
    );
    assert!(text.contains("townlink_uplink_active{uplink=\"fiber\",hub=\"backup\"} 1"));
    assert!(text.contains("townlink_uplink_active{uplink=\"fiber\",hub=\"main\"} 0"));
    assert!(text.contains("townlink_uplink_state{uplink=\"fiber\",hub=\"main\",state=\"down\"} 1"));
    assert!(text.contains("townlink_uplink_state_changes_total{uplink=\"lte\",hub=\"main\"} 1"));
    assert!(text
        .contains("townlink_uplink_probe_sent_bytes_total{uplink=\"fiber\",hub=\"backup\"} 100"));
    assert!(
        text.contains("townlink_uplink_probe_sent_bytes_total{uplink=\"fiber\",hub=\"main\"} 0")
    );
    // The status: `uplinks` as seen through the active hub, every path in `paths`.
    let s = annex.snapshot();
    assert_eq!(s.active_hub.as_deref(), Some("backup"));
    assert_eq!(s.active.as_deref(), Some("fiber"));
    assert_eq!(s.uplinks.len(), 2);
    assert!(s.uplinks.iter().all(|u| u.hub.as_deref() == Some("backup")));
    // The uplink's probe bytes are every hub's over it; a path's its own.
    annex.probe_counters("main", "fiber").sent_bytes.inc_by(20);
    let s = annex.snapshot();
    assert_eq!(s.uplinks[0].probe_sent_bytes, 120);
    assert_eq!(s.paths[0].probe_sent_bytes, 20);
    assert_eq!(s.paths[2].probe_sent_bytes, 100);
    assert_eq!(s.paths.len(), 4);
    assert_eq!(s.paths[0].state, Health::Down);
    assert_eq!(
        s.paths[1].reason.as_deref(),
        Some("main/lte: 4 probes lost")
    );
    let hubs: Vec<(&str, bool, bool)> = s
        .hubs
        .iter()
        .map(|h| (h.name.as_str(), h.active, h.preferred))
        .collect();
    assert_eq!(hubs, vec![("main", false, true), ("backup", true, false)]);
    let f = s.last_failover.unwrap();
    assert_eq!(
        (f.from_hub.as_deref(), f.to_hub.as_deref()),
        (Some("main"), Some("backup"))
    );
}

#[test]
fn the_preferred_hub_is_the_lowest_priority_then_the_first() {
    let dir = dir_with_key();
    // (townlink_hub_preferred of main and backup, status' preferred flags)
    let preferred = |main: u32, backup: u32| {
        let mut config = two_hubs(dir.path());
        let Role::Annex(a) = &mut config.role else {
            panic!("annex expected")
        };
        a.hubs[0].priority = main;
        a.hubs[1].priority = backup;
        let t = Telemetry::new(&config);
        let text = t.encode();
        let mut series: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("townlink_hub_preferred{hub=\""))
            .collect();
        series.sort();
        let shown: Vec<bool> = t.snapshot().hubs.iter().map(|h| h.preferred).collect();
        (series.join(", "), shown)
    };
    // The backup hub by its priority; on a tie, the first in the file.
    assert_eq!(
        preferred(3, 1),
        ("backup\"} 1, main\"} 0".to_string(), vec![false, true])
    );
    assert_eq!(
        preferred(2, 2),
        ("backup\"} 0, main\"} 1".to_string(), vec![true, false])
    );
    assert_eq!(
        preferred(0, 1),
        ("backup\"} 0, main\"} 1".to_string(), vec![true, false])
    );
}

#[test]
fn with_two_hubs_status_shows_one_line_per_path_and_the_active_hub() {
    let dir = dir_with_key();
    let annex = Telemetry::new(&two_hubs(dir.path()));
    let q = |health| crate::decision::Quality {
        health,
        rtt: Some(Duration::from_millis(8)),
        jitter: Duration::ZERO,
        loss: Some(0.0),
        late: Some(0.0),
        samples: 100,
        consecutive_lost: 0,
        holddown: Duration::from_secs(10),
        penalty: 0.0,
    };
    annex.state_change(&StateChange {
        path: PathId::new(0, 0),
        from: Health::Up,
        to: Health::Down,
        reason: "main/fiber: 4 probes lost in 600 ms".into(),
        at: Duration::from_secs(10),
    });
    annex.failover(&Decision {
        from: PathId::new(0, 0),
        to: PathId::new(1, 0),
        class: ReasonClass::HubDown,
        reason: "main/fiber: 4 probes lost in 600 ms; hub main silent over fiber".into(),
        at: Duration::from_secs(10),
    });
    annex.paths(
        &[
            q(Health::Down),
            q(Health::Down),
            q(Health::Up),
            q(Health::Up),
        ],
        PathId::new(1, 0),
    );
    let s = annex.snapshot();
    let text = s.render(now());
    assert!(
        text.contains("hubs (active: backup): main (tl0, preferred), backup (tl1)"),
        "{text}"
    );
    assert!(text.contains("paths (active: backup/fiber)"), "{text}");
    let line = |name: &str| {
        text.lines()
            .find(|l| {
                l.get(4..)
                    .is_some_and(|l| l.starts_with(&format!("{name} ")))
            })
            .unwrap_or_else(|| panic!("no line for {name}: {text}"))
            .to_string()
    };
    assert!(line("main/fiber").contains(" down "), "{text}");
    assert!(line("main/lte").contains(" down "), "{text}");
    assert!(line("backup/fiber").starts_with("  * "), "{text}");
    assert!(line("backup/lte").contains(" up "), "{text}");
    assert!(
        text.contains("\n      main/fiber: 4 probes lost in 600 ms\n"),
        "{text}"
    );
    // The 4G's budget once, not once per hub.
    assert_eq!(text.matches("budget 30 MB/30 days").count(), 1, "{text}");
    assert!(
        text.contains("last switch main/fiber → backup/fiber at"),
        "{text}"
    );
    assert!(
        text.contains(": hub_down (main/fiber: 4 probes lost"),
        "{text}"
    );
    assert!(!text.contains("uplinks (active"), "{text}");
    assert_eq!(
        annex.status_line(),
        "tunnel on backup/fiber (main/fiber down, main/lte down, backup/fiber up, backup/lte up); checks 0/1 ok"
    );
    // The JSON: uplinks through the active hub, and every hub and path.
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["active"], "fiber");
    assert_eq!(json["active_hub"], "backup");
    assert_eq!(json["uplinks"][0]["hub"], "backup");
    assert_eq!(json["uplinks"][0]["state"], "up");
    assert_eq!(json["paths"][0]["hub"], "main");
    assert_eq!(json["paths"][0]["state"], "down");
    assert_eq!(json["hubs"][1]["active"], true);
    assert_eq!(json["last_failover"]["from_hub"], "main");
    assert_eq!(json["last_failover"]["to_hub"], "backup");
    let back: Status = serde_json::from_value(json).unwrap();
    assert_eq!(back, s);
}

#[test]
fn with_one_hub_the_status_text_is_per_uplink_as_before() {
    let dir = dir_with_key();
    let annex = Telemetry::new(&example("annex.toml", dir.path()).unwrap());
    let text = annex.snapshot().render(now());
    assert!(text.contains("uplinks (active: fiber)"), "{text}");
    assert!(!text.contains("hubs ("), "{text}");
    assert!(!text.contains("main/"), "{text}");
    assert!(
        text.contains("\n  * fiber      eth1     unknown "),
        "{text}"
    );
    assert_eq!(
        annex.status_line(),
        "tunnel on fiber (fiber unknown, lte unknown); checks 0/1 ok"
    );
    // A status from before several hubs (no hubs, paths, hub) still reads.
    let mut json = serde_json::to_value(annex.snapshot()).unwrap();
    for key in ["hubs", "paths", "active_hub"] {
        json.as_object_mut().unwrap().remove(key);
    }
    json["uplinks"][0].as_object_mut().unwrap().remove("hub");
    let old: Status = serde_json::from_value(json).unwrap();
    assert!(old.paths.is_empty());
    assert!(old.render(now()).contains("uplinks (active: fiber)"));
}

#[test]
fn the_hub_shows_which_hub_a_site_with_several_uses() {
    let dir = dir_with_key();
    let config = hub_example_with_sites(dir.path()).unwrap();
    let hub = Telemetry::new(&config);
    let site = hub_config_site(&config);
    // What an annex with two hubs sends after leaving the main hub.
    let annex = Telemetry::new(&two_hubs(dir.path()));
    let q = |health| crate::decision::Quality {
        health,
        rtt: Some(Duration::from_millis(8)),
        jitter: Duration::ZERO,
        loss: Some(0.0),
        late: Some(0.0),
        samples: 100,
        consecutive_lost: 0,
        holddown: Duration::from_secs(10),
        penalty: 0.0,
    };
    annex.paths(
        &[
            q(Health::Down),
            q(Health::Down),
            q(Health::Up),
            q(Health::Up),
        ],
        PathId::new(1, 0),
    );
    let report = annex.report();
    assert_eq!(report.hub.as_deref(), Some("backup"));
    assert_eq!(report.active, "fiber");
    assert_eq!(report.paths.len(), 4);
    assert_eq!(report.paths[0].hub.as_deref(), Some("main"));
    assert_eq!(report.paths[0].state, "down");
    // It goes over the wire whole.
    let wire = report.encode().expect("fits");
    let report = Report::parse(&wire).expect("well formed");
    hub.site_report(&site, report);
    let status = hub.snapshot();
    let view = status
        .sites
        .iter()
        .find(|s| s.name == site.as_str())
        .unwrap();
    let r = view.report.as_ref().unwrap();
    assert_eq!(r.hub.as_deref(), Some("backup"));
    assert_eq!(r.paths.len(), 4);
    let text = status.render(now());
    assert!(text.contains("on backup/fiber rtt 8.0 ms"), "{text}");
    // `site list` shows it too.
    assert_eq!(
        hub.site_tunnel_on(site.as_str()).as_deref(),
        Some("backup/fiber")
    );
    // A one-hub annex: its report names its hub, the hub's line is as before.
    let one = Telemetry::new(&example("annex.toml", dir.path()).unwrap());
    let report = one.report();
    assert_eq!(
        (report.hub.as_deref(), report.paths.len()),
        (Some("main"), 0)
    );
    hub.site_report(&site, report);
    let text = hub.snapshot().render(now());
    assert!(text.contains(" on fiber rtt"), "{text}");
    assert_eq!(hub.site_tunnel_on(site.as_str()), None);
}

#[test]
fn the_hub_shows_which_sites_are_attached_here_from_the_first_scrape() {
    use crate::sites::attachment::Attachment;
    let dir = dir_with_key();
    let config = hub_example_with_sites(dir.path()).unwrap();
    let hub = Telemetry::new(&config);
    let site = hub_config_site(&config);
    // From the first scrape: not attached, no route.
    let text = hub.encode();
    assert!(
        text.contains(&format!("townlink_site_attached{{site=\"{site}\"}} 0")),
        "{text}"
    );
    assert!(text.contains(&format!(
        "townlink_site_return_route_metric{{site=\"{site}\"}} 0"
    )));
    assert!(text.contains("townlink_sites_attached 0"), "{text}");
    let now = super::now();
    let rendered = hub.snapshot().render(now);
    assert!(
        rendered.contains("sites (2, 0 attached here)"),
        "{rendered}"
    );
    // Attached here.
    hub.site_attachments(&[(site.clone(), Attachment::Attached, Some(100))]);
    let text = hub.encode();
    assert!(text.contains(&format!("townlink_site_attached{{site=\"{site}\"}} 1")));
    assert!(text.contains(&format!(
        "townlink_site_return_route_metric{{site=\"{site}\"}} 100"
    )));
    assert!(text.contains("townlink_sites_attached 1"), "{text}");
    let rendered = hub.snapshot().render(now);
    assert!(
        rendered.contains("sites (2, 1 attached here)"),
        "{rendered}"
    );
    assert!(
        rendered.contains("attached here (route metric 100); no report"),
        "{rendered}"
    );
    // On another hub, named by its report.
    let elsewhere = Attachment::Elsewhere {
        hub: Some("backup".into()),
    };
    hub.site_attachments(&[(site.clone(), elsewhere, Some(1000))]);
    let rendered = hub.snapshot().render(now);
    assert!(
        rendered.contains("sites (2, 0 attached here)"),
        "{rendered}"
    );
    assert!(
        rendered.contains("on hub backup (route metric 1000)"),
        "{rendered}"
    );
    let json = serde_json::to_value(hub.snapshot()).unwrap();
    assert_eq!(json["sites"][0]["attachment"]["state"], "elsewhere");
    assert_eq!(json["sites"][0]["attachment"]["hub"], "backup");
    assert_eq!(json["sites"][0]["attachment"]["route_metric"], 1000);
    assert!(hub.encode().contains("townlink_sites_attached 0"));
    // A site the hub does not have changes nothing; a removed site's
    // series go with it.
    hub.site_attachments(&[(Name::new("ghost").unwrap(), Attachment::Attached, Some(100))]);
    assert!(!hub.encode().contains("ghost"));
    hub.site_attachments(&[(site.clone(), Attachment::Attached, Some(100))]);
    hub.remove_site(site.as_str());
    let text = hub.encode();
    assert!(!text.contains(&format!("site=\"{site}\"")), "{text}");
    assert!(text.contains("townlink_sites_attached 0"), "{text}");
}

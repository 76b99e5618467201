//! What a technician and a dashboard see: `townlink status`, `/metrics`,
//! and a real Prometheus server scraping a hub and an annex through a
//! failover. Alert rules are checked with promtool.

mod testbed;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::{
    echo_server, http_get, metric_value as sample, status, Impairment, Netns, Options, Wan, RECORDS,
};

const RECORDS_PORT: u16 = 8080;

/// Annex metrics on `listen`, a check of the records server every second.
fn options(annex_metrics: &str) -> Options {
    Options {
        annex_extra: format!(
            "[metrics]\nlisten = \"{annex_metrics}\"\n\n[[check]]\nname = \"records\"\ntcp = \"{RECORDS}:{RECORDS_PORT}\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n"
        ),
        ..Options::default()
    }
}

/// A WAN with one annex, both uplinks up, the records check passing.
fn running(annex_metrics: &str) -> Wan {
    let mut wan = Wan::build_with(1, &options(annex_metrics));
    echo_server(&wan.records, &format!("{RECORDS}:{RECORDS_PORT}"));
    wan.start_hub();
    let annex = wan.start_annex(1);
    for uplink in ["fiber", "lte"] {
        wan.daemons[annex]
            .wait_for_log(
                &["uplink state", &format!("uplink={uplink}"), "to=\"up\""],
                Duration::from_secs(30),
            )
            .unwrap();
    }
    wan.daemons[annex]
        .wait_for_log(&["check up", "check=records"], Duration::from_secs(20))
        .unwrap();
    wan
}

/// Polls `f` every 200 ms until it returns `Some`.
fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn status_json(socket: &Path) -> Value {
    let (code, out, err) = status(socket, true);
    assert_eq!(code, 0, "townlink status: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON: {e}: {out}"))
}

fn annex_socket(wan: &Wan) -> PathBuf {
    wan.dir.path().join("annex1.sock")
}

fn hub_socket(wan: &Wan) -> PathBuf {
    wan.dir.path().join("hub.sock")
}

#[test]
fn status_and_metrics_follow_a_failover() {
    let t0 = Instant::now();
    let wan = running("127.0.0.1:9475");
    eprintln!("running after {:?}", t0.elapsed());
    let annex_ns = &wan.annex(1).ns;
    let metrics_addr: SocketAddr = "127.0.0.1:9475".parse().unwrap();

    // Control socket: mode 0600.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(annex_socket(&wan)).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let s = status_json(&annex_socket(&wan));
    assert_eq!(s["role"], "annex");
    assert_eq!(s["active"], "fiber");
    assert_eq!(s["uplinks"][0]["state"], "up", "{s:#}");
    assert!(s["uplinks"][0]["rtt_ms"].as_f64().unwrap() > 0.0, "{s:#}");
    assert_eq!(s["checks"][0]["up"], true, "{s:#}");
    assert!(s["last_failover"].is_null());

    let (code, body) = http_get(annex_ns, metrics_addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        sample(
            &body,
            "townlink_uplink_active{uplink=\"fiber\",hub=\"main\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &body,
            "townlink_failovers_total{from=\"fiber\",to=\"lte\",reason=\"dead\",from_hub=\"main\",to_hub=\"main\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&body, "townlink_check_up{check=\"records\"}"),
        Some(1.0)
    );
    assert_eq!(http_get(annex_ns, metrics_addr, "/other").unwrap().0, 404);

    let cut = townlink::telemetry::now();
    let _fiber_down = Impairment::blackhole(&wan.isp_fiber, "a1");
    wan.wait_for_uplink("lte0", Duration::from_secs(20))
        .unwrap();
    eprintln!("switched after {:?}", t0.elapsed());

    // The annex's status and metrics show the switch and its reason.
    let s = wait_for("status shows lte active", Duration::from_secs(10), || {
        let s = status_json(&annex_socket(&wan));
        (s["active"] == "lte" && s["uplinks"][0]["state"] == "down").then_some(s)
    });
    let f = &s["last_failover"];
    assert_eq!(
        (f["from"].as_str(), f["to"].as_str()),
        (Some("fiber"), Some("lte"))
    );
    assert_eq!(f["class"], "dead");
    assert!(f["reason"].as_str().unwrap().contains("probes lost"), "{f}");
    assert!(f["at"].as_f64().unwrap() >= cut);
    let (code, text, _) = status(&annex_socket(&wan), false);
    assert_eq!(code, 0);
    assert!(text.contains("uplinks (active: lte)"), "{text}");
    assert!(text.contains("last switch fiber → lte"), "{text}");

    let body = wait_for("check passes over 4G", Duration::from_secs(20), || {
        let (_, body) = http_get(annex_ns, metrics_addr, "/metrics").ok()?;
        (sample(&body, "townlink_check_up{check=\"records\"}") == Some(1.0)).then_some(body)
    });
    assert_eq!(
        sample(
            &body,
            "townlink_failovers_total{from=\"fiber\",to=\"lte\",reason=\"dead\",from_hub=\"main\",to_hub=\"main\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&body, "townlink_uplink_active{uplink=\"lte\",hub=\"main\"}"),
        Some(1.0)
    );
    assert!(sample(&body, "townlink_last_failover_timestamp_seconds").unwrap() >= cut);
    assert!(
        sample(
            &body,
            "townlink_uplink_probe_sent_bytes_total{uplink=\"lte\",hub=\"main\"}"
        )
        .unwrap()
            > 0.0
    );
    assert!(
        sample(
            &body,
            "townlink_uplink_transmit_bytes_total{uplink=\"lte\"}"
        )
        .unwrap()
            > 0.0
    );

    eprintln!("check up over 4G after {:?}", t0.elapsed());
    // The hub's status shows the site on 4G, as the annex reported it.
    let hub = wait_for("hub sees the site on lte", Duration::from_secs(30), || {
        let s = status_json(&hub_socket(&wan));
        (s["sites"][0]["report"]["active"] == "lte").then_some(s)
    });
    eprintln!("hub saw the report after {:?}", t0.elapsed());
    assert_eq!(hub["role"], "hub");
    assert_eq!(hub["sites"][0]["name"], "annex-1");
    assert!(
        hub["responder"]["authenticated"].as_u64().unwrap() >= 2,
        "{hub:#}"
    );
    let (_, text, _) = status(&hub_socket(&wan), false);
    assert!(text.contains("annex-1"), "{text}");
    assert!(text.contains("on lte"), "{text}");
}

#[test]
fn status_without_a_daemon_says_so_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let (code, out, err) = status(&socket, false);
    assert_eq!(code, 3, "stdout {out} stderr {err}");
    assert!(err.contains("townlink is not running"), "{err}");
    assert!(err.contains(&socket.display().to_string()), "{err}");
    // A stale socket file (a crashed daemon) reads the same.
    let _stale = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(_stale);
    let (code, _, err) = status(&socket, true);
    assert_eq!(code, 3, "{err}");
}

/// A Prometheus server in a namespace, killed (by PID) on drop.
struct Prometheus<'a> {
    child: Child,
    ns: &'a Netns,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl<'a> Prometheus<'a> {
    fn start(ns: &'a Netns, targets: &[(&str, &str)]) -> Prometheus<'a> {
        assert!(
            Command::new("prometheus").arg("--version").output().is_ok(),
            "Debian's prometheus package is needed (scripts/test installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n",
        );
        for (job, target) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ));
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let addr: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "prometheus"])
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            ns,
            addr,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn api(&self, path: &str) -> Result<Value, String> {
        let (code, body) = http_get(self.ns, self.addr, path)?;
        if code != 200 {
            return Err(format!("HTTP {code}: {body}"));
        }
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{v}"));
        }
        Ok(v["data"].clone())
    }

    /// The result vector of an instant PromQL query.
    fn query(&self, promql: &str) -> Vec<Value> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(promql)))
            .unwrap_or_else(|e| panic!("query {promql}: {e}"));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    fn value(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql);
        r.first()?["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus<'_> {
    fn drop(&mut self) {
        // `ip netns exec` execs prometheus: the PID is prometheus' own.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The metric names listed in docs/metrics.md.
fn documented_metrics() -> BTreeSet<String> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md"))
            .unwrap();
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(n, _)| n.to_string()))
        .filter(|n| n.starts_with("townlink_"))
        .collect()
}

#[test]
fn prometheus_scrapes_hub_and_annex_through_a_failover() {
    // The annex's metrics listen on its tunnel address: the central
    // Prometheus (here in the hub's namespace) scrapes it through the WAN.
    let wan = running("10.99.0.2:9475");
    let prom = Prometheus::start(
        &wan.hub,
        &[("hub", "127.0.0.1:9475"), ("annex", "10.99.0.2:9475")],
    );
    let all_up = |prom: &Prometheus| -> Option<Vec<Value>> {
        let targets = prom.api("/api/v1/targets").ok()?;
        let active = targets["activeTargets"].as_array()?.clone();
        let ok = active.len() == 2
            && active
                .iter()
                .all(|t| t["health"] == "up" && t["lastError"] == "");
        ok.then_some(active)
    };
    wait_for("both targets up", Duration::from_secs(60), || all_up(&prom))
        .into_iter()
        .for_each(|t| eprintln!("target {} {}", t["labels"]["job"], t["health"]));

    let dead = r#"townlink_failovers_total{job="annex",from="fiber",to="lte",reason="dead"}"#;
    let before = prom
        .value(dead)
        .expect("the failover counter exists from the start");
    let _fiber_down = Impairment::blackhole(&wan.isp_fiber, "a1");
    wan.wait_for_uplink("lte0", Duration::from_secs(20))
        .unwrap();

    // PromQL shows 4G active on the annex, and in the hub's view of the site.
    wait_for("annex reports lte active", Duration::from_secs(30), || {
        (prom.value(r#"townlink_uplink_active{job="annex",uplink="lte"}"#) == Some(1.0))
            .then_some(())
    });
    assert_eq!(
        prom.value(r#"townlink_uplink_active{job="annex",uplink="fiber"}"#),
        Some(0.0)
    );
    wait_for("hub sees annex-1 on lte", Duration::from_secs(30), || {
        (prom.value(r#"townlink_site_uplink_active{job="hub",site="annex-1",uplink="lte"}"#)
            == Some(1.0))
        .then_some(())
    });
    let switches = wan.daemons[1].log_lines(&["failover from="]);
    assert_eq!(
        prom.value(dead),
        Some(before + 1.0),
        "one more dead fiber → lte switch; the annex logged: {switches:#?}"
    );
    // Every target up, with an empty lastError (a scrape may fail while the
    // tunnel moves; the next one must succeed).
    let targets = wait_for(
        "both targets up after the failover",
        Duration::from_secs(30),
        || all_up(&prom),
    );
    assert_eq!(targets.len(), 2);

    // Every query of the Grafana dashboard is valid PromQL, on documented metrics.
    let documented = documented_metrics();
    for expr in dashboard_queries() {
        for name in metric_names(&expr) {
            assert!(
                documented
                    .iter()
                    .any(|d| d == &name || d.starts_with(&format!("{name}_"))),
                "dashboard uses {name}, which docs/metrics.md does not list"
            );
        }
        let promql = expr
            .replace("$instance", ".+")
            .replace("$__rate_interval", "1m");
        prom.query(&promql);
    }
    // The dashboard's per-site view finds the annex.
    assert_eq!(
        prom.query(r#"townlink_uplink_active{instance=~".+"} == 1"#)
            .len(),
        1
    );

    // Every documented metric is returned by a query.
    let mut missing = Vec::new();
    for name in documented_metrics() {
        if prom.query(&name).is_empty() {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "documented metrics Prometheus does not have: {missing:?}\n{}",
        prom.log()
    );
}

/// Every PromQL expression of docs/monitoring/grafana-wan.json.
fn dashboard_queries() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) => out.push(e.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring/grafana-wan.json"),
    )
    .unwrap();
    let json: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut out = Vec::new();
    walk(&json, &mut out);
    assert!(out.len() > 10, "dashboard queries: {out:?}");
    out
}

/// The `townlink_*` names an expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("townlink_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring"))
        .output()
        .expect("promtool (Debian package prometheus; scripts/test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_and_each_has_a_test() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS: 11 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Each alert has a test that expects it to fire and one that expects silence.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring");
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("alerts.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 11);
    for alert in alerts {
        let cases: Vec<&str> = tests
            .split("alertname: ")
            .skip(1)
            // The whole name: TownlinkOnBackup's cases are not TownlinkOnBackupHub's.
            .filter(|c| c.starts_with(&format!("{alert}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "{alert}: no test where it stays silent"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_labels:")),
            "{alert}: no test where it fires"
        );
    }
}

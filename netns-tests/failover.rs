//! Failover from fiber to 4G and back, as a LAN user's traffic sees it.
//! Bounds are generous: CI machines are noisy.

mod testbed;

use std::time::{Duration, Instant};

use testbed::{udp_echo_server, Daemon, Impairment, Options, UdpStream, Wan, RECORDS};

/// Fiber and 4G both probed and up, a 50 packets/s stream flowing.
fn running(options: &Options) -> (Wan, UdpStream) {
    let mut wan = Wan::build_with(1, options);
    let echo = udp_echo_server(&wan.records, &format!("{RECORDS}:7002"));
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
    let stream = UdpStream::start(&wan.annex(1).lan, echo, 50);
    stream.wait_for_echoes(50, Duration::from_secs(20)).unwrap();
    assert_eq!(wan.annex(1).tunnel_uplink(), "fiber0");
    // Start-up alone switches nothing, whichever uplink answered first.
    assert_eq!(
        wan.daemons[annex].log_lines(&["failover from="]),
        Vec::<String>::new()
    );
    (wan, stream)
}

#[test]
fn fiber_blackhole_moves_traffic_to_4g_behind_nat() {
    let (wan, stream) = running(&Options::default());
    let annex = &wan.daemons[1];
    let cut = Instant::now();
    let _fiber_down = Impairment::blackhole(&wan.isp_fiber, "a1");

    // 1. The stream resumes over 4G, with a short gap.
    stream
        .wait_for_echoes(100, Duration::from_secs(20))
        .unwrap();
    let gap = stream.longest_gap_since(cut);
    eprintln!("outage gap seen by the LAN stream: {gap:?}");
    assert!(gap < Duration::from_secs(3), "gap {gap:?}");
    assert_eq!(wan.annex(1).tunnel_uplink(), "lte0");
    let line = annex
        .wait_for_log(&["failover from=fiber", "to=lte"], Duration::from_secs(1))
        .unwrap();
    assert!(line.contains("fiber: 4 probes lost in"), "{line}");

    // 5. The hub sees the annex at the carrier's NAT address (isp-4g's
    // address toward the core), and its replies arrive (the stream flows).
    let hub = &wan.daemons[0];
    let seen = hub
        .wait_for_log(
            &[
                "site endpoint changed",
                "site=annex-1",
                "endpoint=198.18.2.2:",
            ],
            Duration::from_secs(10),
        )
        .unwrap();
    eprintln!("hub: {seen}");
    stream.wait_for_echoes(50, Duration::from_secs(5)).unwrap();
}

#[test]
fn fiber_restored_returns_once_after_the_holddown() {
    let (wan, stream) = running(&Options::default());
    let annex = &wan.daemons[1];
    let fiber_down = Impairment::blackhole(&wan.isp_fiber, "a1");
    wan.wait_for_uplink("lte0", Duration::from_secs(10))
        .unwrap();
    drop(fiber_down);
    let restored = Instant::now();
    // Default hold-down: 10 s of continuous health from the first answer.
    let back = wan
        .wait_for_uplink("fiber0", Duration::from_secs(40))
        .unwrap();
    let after = back - restored;
    eprintln!("back on fiber {after:?} after the restore");
    assert!(
        after >= Duration::from_secs(10),
        "returned before the hold-down: {after:?}"
    );
    // Exactly once: stay on fiber, one switch each way.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(wan.annex(1).tunnel_uplink(), "fiber0");
    let switches = annex.log_lines(&["failover from="]);
    assert_eq!(switches.len(), 2, "{switches:#?}");
    assert!(
        switches[1].contains("from=lte") && switches[1].contains("to=fiber"),
        "{}",
        switches[1]
    );
    assert!(
        switches[1].contains("class=\"recovered\""),
        "{}",
        switches[1]
    );
    stream.wait_for_echoes(50, Duration::from_secs(5)).unwrap();
}

#[test]
fn two_percent_loss_on_fiber_does_not_switch() {
    let (wan, stream) = running(&Options::default());
    let annex = &wan.daemons[1];
    // Only what happens under loss counts: start-up may already have seen
    // the fiber down while the hub's responder came up.
    let fiber_down = || annex.log_lines(&["uplink state", "uplink=fiber", "to=\"down\""]);
    let down_before = fiber_down();
    let lossy = Impairment::loss(&wan.isp_fiber, "a1", 0.02);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        assert_eq!(
            wan.annex(1).tunnel_uplink(),
            "fiber0",
            "switched after {:?}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let end = Instant::now();
    drop(lossy);
    assert_eq!(annex.log_lines(&["failover from="]), Vec::<String>::new());
    assert_eq!(fiber_down(), down_before, "fiber went down under 2 % loss");
    // Losses were really applied and seen: over the loss window the stream
    // (50 packets/s, on a fixed schedule) got back about 96 % of its
    // packets; without loss it would get them all. (Counting the echoes
    // since the stream started was wrong: a slow start-up added echoes.)
    let sent = 50.0 * end.duration_since(start).as_secs_f64();
    let received = stream.count_between(start, end) as f64;
    assert!(
        received < 0.99 * sent && received > 0.85 * sent,
        "{received} echoes for about {sent} packets"
    );
}

#[test]
fn brownout_by_loss_switches_to_4g() {
    let (wan, _stream) = running(&Options::default());
    let annex = &wan.daemons[1];
    let cut = Instant::now();
    let _lossy = Impairment::loss(&wan.isp_fiber, "a1", 0.30);
    let switched = wan
        .wait_for_uplink("lte0", Duration::from_secs(20))
        .unwrap();
    eprintln!("switched {:?} after 30 % loss began", switched - cut);
    // One switch, the brownout (no start-up flap before it).
    let switches = annex.log_lines(&["failover from="]);
    assert_eq!(switches.len(), 1, "{switches:#?}");
    assert!(
        switches[0].contains("failover from=fiber to=lte"),
        "{}",
        switches[0]
    );
    eprintln!("{}", switches[0]);
}

#[test]
fn both_down_then_4g_back_recovers_without_restart() {
    let (wan, stream) = running(&Options::default());
    let annex = &wan.daemons[1];
    let pid = annex.pid();
    let fiber_down = Impairment::blackhole(&wan.isp_fiber, "a1");
    let lte_down = Impairment::blackhole(&wan.isp_4g, "a1");
    std::thread::sleep(Duration::from_secs(20));
    let before = stream.count();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        stream.count(),
        before,
        "traffic flowed with both uplinks down?"
    );
    drop(lte_down);
    let back = Instant::now();
    stream.wait_for_echoes(50, Duration::from_secs(30)).unwrap();
    let resumed = stream.first_echo_after(back).unwrap() - back;
    eprintln!("traffic resumed {resumed:?} after 4G came back");
    assert_eq!(wan.annex(1).tunnel_uplink(), "lte0");
    assert_eq!(annex.pid(), pid, "same daemon");
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "daemon still running"
    );
    drop(fiber_down);
}

#[test]
fn standby_4g_down_is_reported_without_switch() {
    // A faster metered interval than the default 30 s, so that the four
    // lost probes that make the 4G down take seconds, not a minute.
    let options = Options {
        annex_probe: "metered_interval = \"1s\"".into(),
        ..Options::default()
    };
    let (wan, stream) = running(&options);
    let annex = &wan.daemons[1];
    let _lte_down = Impairment::blackhole(&wan.isp_4g, "a1");
    let line = annex
        .wait_for_log(
            &["uplink state", "uplink=lte", "to=\"down\""],
            Duration::from_secs(20),
        )
        .unwrap();
    assert!(line.contains("lte: 4 probes lost"), "{line}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(annex.log_lines(&["failover from="]), Vec::<String>::new());
    assert_eq!(wan.annex(1).tunnel_uplink(), "fiber0");
    stream.wait_for_echoes(50, Duration::from_secs(5)).unwrap();
}

#[test]
fn netem_tool_delays_jitters_and_drops() {
    use testbed::netem::{Netem, Params};
    let wan = Wan::build(1);
    // A path that crosses isp-4g without the tunnel: annex → core.
    wan.annex(1)
        .ns
        .ip(&["route", "add", "198.18.2.0/24", "via", "100.64.1.1"]);
    let echo = udp_echo_server(&wan.core, "198.18.2.1:7003");
    let socket = wan
        .annex(1)
        .ns
        .run(|| std::net::UdpSocket::bind("100.64.1.2:0"))
        .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let rtts = |n: usize| -> Vec<Option<Duration>> {
        (0..n)
            .map(|i| {
                let sent = Instant::now();
                socket.send_to(&(i as u64).to_be_bytes(), echo).unwrap();
                let mut buf = [0u8; 8];
                loop {
                    match socket.recv(&mut buf) {
                        Ok(_) if buf == (i as u64).to_be_bytes() => return Some(sent.elapsed()),
                        Ok(_) => continue,
                        Err(_) => return None,
                    }
                }
            })
            .collect()
    };
    let base: Vec<Duration> = rtts(10)
        .into_iter()
        .map(|r| r.expect("no loss without netem"))
        .collect();
    assert!(
        base.iter().all(|r| *r < Duration::from_millis(50)),
        "{base:?}"
    );

    // 150 ms ± 30 ms toward the annex: every RTT within [120, 180] ms (+ slack).
    let params = Params {
        delay: Duration::from_millis(150),
        jitter: Duration::from_millis(30),
        loss: 0.0,
    };
    let netem = Netem::start(&wan.isp_4g, &["-o", "a1"], 0, params);
    let delayed: Vec<Duration> = rtts(20)
        .into_iter()
        .map(|r| r.expect("no loss asked"))
        .collect();
    // Never early (a delay line cannot be); late only by scheduling noise:
    // the median in the band, at most 2 of 20 beyond it (a loaded CI run
    // saw one at 549 ms).
    assert!(
        delayed.iter().all(|r| *r >= Duration::from_millis(118)),
        "{delayed:?}"
    );
    let mut sorted = delayed.clone();
    sorted.sort();
    assert!(
        sorted[10] < Duration::from_millis(200),
        "median: {delayed:?}"
    );
    assert!(
        delayed
            .iter()
            .filter(|r| **r >= Duration::from_millis(260))
            .count()
            <= 2,
        "{delayed:?}"
    );
    let spread = delayed
        .iter()
        .max()
        .unwrap()
        .saturating_sub(*delayed.iter().min().unwrap());
    assert!(spread > Duration::from_millis(5), "no jitter? {delayed:?}");
    assert_eq!(
        netem
            .stats
            .queued
            .load(std::sync::atomic::Ordering::Relaxed),
        20
    );
    drop(netem);

    // 50 % loss: some answers, some not.
    let params = Params {
        loss: 0.5,
        ..Params::default()
    };
    let _netem = Netem::start(&wan.isp_4g, &["-o", "a1"], 0, params);
    let answered = rtts(30).iter().filter(|r| r.is_some()).count();
    assert!(
        (5..=25).contains(&answered),
        "{answered} of 30 answered at 50 % loss"
    );
}

#[test]
fn fiber_delay_brownout_switches_to_4g() {
    use testbed::netem::{Netem, Params};
    let (wan, stream) = running(&Options::default());
    let annex = &wan.daemons[1];
    let cut = Instant::now();
    // +400 ms toward the annex on the fiber side.
    let params = Params {
        delay: Duration::from_millis(400),
        ..Params::default()
    };
    let _slow = Netem::start(&wan.isp_fiber, &["-o", "a1"], 0, params);
    let switched = wan
        .wait_for_uplink("lte0", Duration::from_secs(15))
        .unwrap();
    eprintln!("switched {:?} after +400 ms began", switched - cut);
    let switches = annex.log_lines(&["failover from="]);
    assert_eq!(switches.len(), 1, "{switches:#?}");
    assert!(
        switches[0].contains("failover from=fiber to=lte"),
        "{}",
        switches[0]
    );
    assert!(
        switches[0].contains("late answers at 4"),
        "the reason names the delay: {}",
        switches[0]
    );
    stream.wait_for_echoes(50, Duration::from_secs(5)).unwrap();
}

#[test]
fn fiber_loss_ramp_switches_once() {
    let (wan, stream) = running(&Options::default());
    let annex = &wan.daemons[1];
    // 0 → 40 % per direction (issue 14: such a ramp gave 5 and 9
    // switches): fast to 6 %, slowly (1 % every 8 s) through the
    // threshold region, where the old rules flapped, then fast to 40 %.
    let start = Instant::now();
    let mut lossy = None;
    let steps = [(2, 3), (4, 3), (6, 3)]
        .into_iter()
        .chain((7..=14).map(|p| (p, 8)))
        .chain([(20, 5), (30, 5), (40, 20)]);
    for (percent, secs) in steps {
        // The old rules go before the new ones come (never twice the loss).
        drop(lossy.take());
        lossy = Some(Impairment::loss(
            &wan.isp_fiber,
            "a1",
            percent as f64 / 100.0,
        ));
        std::thread::sleep(Duration::from_secs(secs));
    }
    let switches = annex.log_lines(&["failover from="]);
    eprintln!("{switches:#?}");
    let downs = annex.log_lines(&["uplink state", "uplink=fiber", "to=\"down\""]);
    eprintln!(
        "fiber down {} times in {:?} of ramp",
        downs.len(),
        start.elapsed()
    );
    assert_eq!(switches.len(), 1, "{switches:#?}");
    assert!(
        switches[0].contains("failover from=fiber to=lte"),
        "{}",
        switches[0]
    );
    assert_eq!(wan.annex(1).tunnel_uplink(), "lte0");
    drop(lossy);
    stream.wait_for_echoes(50, Duration::from_secs(5)).unwrap();
}

#[test]
fn fiber_saturated_by_the_lan_upload_is_not_followed() {
    use testbed::load::{Tbf, UdpUpload};
    let (wan, stream) = running(&Options::default());
    let annex = &wan.daemons[1];
    // The fiber box: 2 Mbit/s upstream, a queue of up to 500 ms. The LAN
    // host uploads 2.4 Mbit/s through the tunnel: while the fiber carries
    // the tunnel its queue fills within seconds (probes late by ~500 ms,
    // some dropped); idle, it is fine at once.
    let line = Tbf::start(&wan.isp_fiber, "core0", "2mbit", "500ms");
    let sink: std::net::SocketAddr = format!("{RECORDS}:7010").parse().unwrap();
    let upload = UdpUpload::start(&wan.annex(1).lan, &wan.records, sink, 2_400_000);
    let start = Instant::now();
    let mut seen = 0;
    while start.elapsed() < Duration::from_secs(180) {
        std::thread::sleep(Duration::from_secs(1));
        let switches = annex.log_lines(&["failover from="]);
        for s in &switches[seen..] {
            eprintln!("{:>5.1} s: {s}", start.elapsed().as_secs_f64());
        }
        seen = switches.len();
    }
    let uploaded = upload.received.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "uploaded {:.1} MB in 180 s; fiber line: {}",
        uploaded as f64 / 1e6,
        line.stats()
    );
    let switches = annex.log_lines(&["failover from="]);
    // The saturated fiber was left, for a queue (late echoes) or a run of
    // drops from the full queue...
    assert!(!switches.is_empty(), "the saturated fiber was never left");
    assert!(
        switches[0].contains("failover from=fiber to=lte"),
        "{}",
        switches[0]
    );
    // ... and then not followed back and forth: one try at most (issue 14
    // saw 40 switches in 4 minutes).
    assert!(switches.len() <= 3, "{switches:#?}");
    // The upload flowed (over 4G, mostly: 54 MB at its full rate), and so
    // does the users' stream.
    assert!(uploaded > 30_000_000, "uploaded {uploaded} B");
    stream.wait_for_echoes(50, Duration::from_secs(5)).unwrap();
}

/// A backup hub next to the test bed's hub (issue 18): its own namespace
/// on the core (198.18.3.2), its own link to the records server, every
/// annex of the bed as a `[[site]]` (the main hub's, copied), and the
/// records server's replies to the annexes' LANs routed through it. That
/// return path is static (the data centre's BGP is the hubs' side,
/// `backup_site.rs`): the test watches the annex's side of a switch.
/// Field order is drop order: the daemon before its namespace.
struct BackupHub {
    daemon: Daemon,
    ns: testbed::Netns,
    config: std::path::PathBuf,
}

impl BackupHub {
    fn start(wan: &Wan) -> BackupHub {
        use testbed::{link, write_identity, write_key};
        let name = wan.hub.name.replace("-hub", "-backup");
        let ns = testbed::Netns::new(name);
        link(
            &wan.core,
            "hub1",
            "198.18.3.1/24",
            &ns,
            "core0",
            "198.18.3.2/24",
        );
        ns.ip(&["route", "add", "default", "via", "198.18.3.1"]);
        link(
            &ns,
            "rec0",
            "10.52.0.1/24",
            &wan.records,
            "eth1",
            "10.52.0.10/24",
        );
        ns.ip(&["route", "add", "10.50.0.0/24", "via", "10.52.0.10"]);
        wan.records
            .ip(&["route", "add", "192.168.0.0/16", "via", "10.52.0.1"]);
        let dir = wan.dir.path();
        let public = write_key(&dir.join("backup.key")).public_key();
        let fingerprint = write_identity(dir, "backup-probe");
        let config = dir.join("backup.toml");
        let text = std::fs::read_to_string(&wan.hub_config)
            .unwrap()
            .replace("\"hub.key\"", "\"backup.key\"")
            .replace("\"hub-probe.", "\"backup-probe.")
            .replace("\"hub.sock\"", "\"backup.sock\"")
            .replace("\"hub-sites.json\"", "\"backup-sites.json\"")
            .replace("\"hub-state\"", "\"backup-state\"")
            .replace("198.18.0.2:", "198.18.3.2:")
            .replace("\"10.99.0.1/24\"", "\"10.99.0.254/24\"");
        std::fs::write(&config, text).unwrap();
        for annex in &wan.annexes {
            let mut text = std::fs::read_to_string(&annex.config).unwrap();
            text.push_str(&format!(
                "\n[[hub]]\nname = \"backup\"\ninterface = \"tl1\"\npublic_key = \"{public}\"\n\
                 endpoint = \"198.18.3.2:{}\"\naddress = \"10.99.0.254\"\n\
                 routes = [\"10.50.0.0/24\", \"192.168.0.0/16\"]\nfingerprint = \"{fingerprint}\"\n",
                testbed::HUB_PORT
            ));
            std::fs::write(&annex.config, text).unwrap();
        }
        let daemon = Daemon::start(&ns, &config, dir.join("backup.log"));
        BackupHub { daemon, ns, config }
    }

    /// Stops the backup hub's townlink cleanly and starts it again.
    fn restart(&mut self) {
        assert!(self.daemon.stop(Duration::from_secs(10)).success());
        let log = self.config.with_extension("restarted.log");
        self.daemon = Daemon::start(&self.ns, &self.config, log);
    }
}

/// The device of annex 1's main-table route to the records network.
fn records_device(wan: &Wan) -> String {
    let routes = wan.annex(1).ns.ip_json(&["route", "show", "10.50.0.0/24"]);
    routes[0]["dev"].as_str().unwrap_or_default().to_string()
}

/// The bed with a backup hub, both hubs up over the fiber, a 50 packets/s
/// stream to the records server flowing on the main hub: (bed, backup
/// hub, stream, index of the main hub's and of the annex's daemon).
fn two_hubs_running() -> (Wan, BackupHub, UdpStream, usize, usize) {
    two_hubs_running_with(&Options::default())
}

/// [`two_hubs_running`] with the annex's `options`.
fn two_hubs_running_with(options: &Options) -> (Wan, BackupHub, UdpStream, usize, usize) {
    let mut wan = Wan::build_with(1, options);
    // A router with strict reverse-path filtering: the replies come back
    // through the backup hub (tl1) while the records network is routed
    // to the main hub's device (tl0); the annex loosens it on its
    // devices.
    wan.annex(1).ns.sysctl("net.ipv4.conf.all.rp_filter", "1");
    let echo = udp_echo_server(&wan.records, &format!("{RECORDS}:7002"));
    let main = wan.start_hub();
    let backup = BackupHub::start(&wan);
    let annex = wan.start_annex(1);
    for path in ["main/fiber", "backup/fiber"] {
        wan.daemons[annex]
            .wait_for_log(
                &["uplink state", &format!("uplink={path}"), "to=\"up\""],
                Duration::from_secs(30),
            )
            .unwrap();
    }
    let stream = UdpStream::start(&wan.annex(1).lan, echo, 50);
    stream.wait_for_echoes(50, Duration::from_secs(20)).unwrap();
    // One device per hub; the records network on the main hub's; both
    // hubs' tunnels over the fiber.
    assert_eq!(records_device(&wan), "tl0");
    assert_eq!(wan.annex(1).tunnel_uplink(), "fiber0");
    let backup_table = wan.annex(1).ns.ip_json(&["route", "show", "table", "7416"]);
    assert_eq!(backup_table[0]["dev"], "fiber0", "{backup_table}");
    assert_eq!(
        wan.daemons[annex].log_lines(&["failover from="]),
        Vec::<String>::new()
    );
    // A WireGuard session with each hub, as the annex's metrics show
    // (each device's collector): no handshake waits for a switch.
    let metrics: std::net::SocketAddr = "127.0.0.1:9475".parse().unwrap();
    for hub in ["main", "backup"] {
        let series = format!("townlink_peer_last_handshake_timestamp_seconds{{peer=\"{hub}\"}}");
        let deadline = Instant::now() + Duration::from_secs(10);
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
    (wan, backup, stream, main, annex)
}

/// Polls annex 1's route to the records network until it is on `device`.
fn wait_for_records_device(wan: &Wan, device: &str, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    while records_device(wan) != device {
        assert!(Instant::now() < deadline, "records network not on {device}");
        std::thread::sleep(Duration::from_millis(10));
    }
    Instant::now()
}

/// Issue 18, test 5: the fiber to the main hub blocked, the fiber to the
/// backup hub fine. With `prefer = "uplink"` (the default) the annex uses
/// (backup, fiber) rather than (main, 4G), and returns to the main hub
/// once the fiber reaches it again, after the hold-down.
#[test]
fn the_main_hub_cut_from_the_fiber_only_is_left_for_the_backup_hub_over_the_fiber() {
    let (wan, _backup, stream, _main, annex) = two_hubs_running();
    let cut = Instant::now();
    // Drops what the annex's fiber sends to the main hub (the core's link
    // to it): the main hub still answers over the 4G.
    let blocked = Impairment::new(&wan.core, "hub0", &["-s", "198.18.11.0/24", "-j", "DROP"]);
    stream
        .wait_for_echoes(100, Duration::from_secs(20))
        .unwrap();
    let gap = stream.longest_gap_since(cut);
    eprintln!("fiber to the main hub blocked: gap {gap:?}");
    assert!(gap < Duration::from_secs(2), "gap {gap:?}");
    assert_eq!(records_device(&wan), "tl1");
    let backup_table = wan.annex(1).ns.ip_json(&["route", "show", "table", "7416"]);
    assert_eq!(backup_table[0]["dev"], "fiber0", "{backup_table}");
    let line = wan.daemons[annex]
        .wait_for_log(
            &["failover from=main/fiber", "to=backup/fiber"],
            Duration::from_secs(1),
        )
        .unwrap();
    eprintln!("{line}");
    // Stays there while the fiber to the main hub is blocked.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(records_device(&wan), "tl1");
    drop(blocked);
    let unblocked = Instant::now();
    let back = wait_for_records_device(&wan, "tl0", Duration::from_secs(60));
    eprintln!(
        "back on the main hub {:?} after the unblock",
        back - unblocked
    );
    assert!(back - unblocked >= Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    let switches = wan.daemons[annex].log_lines(&["failover from="]);
    assert_eq!(switches.len(), 2, "{switches:#?}");
    assert!(
        switches[1].contains("from=backup/fiber") && switches[1].contains("to=main/fiber"),
        "{}",
        switches[1]
    );
    assert_eq!(wan.annex(1).tunnel_uplink(), "fiber0");
    stream.wait_for_echoes(50, Duration::from_secs(5)).unwrap();
}

/// The same cut with `prefer = "hub"`: the main hub at any cost, over
/// the 4G.
#[test]
fn with_prefer_hub_the_main_hub_cut_from_the_fiber_is_kept_over_the_4g() {
    let options = Options {
        annex_failover: "prefer = \"hub\"".into(),
        ..Options::default()
    };
    let (wan, _backup, stream, _main, annex) = two_hubs_running_with(&options);
    let cut = Instant::now();
    let _blocked = Impairment::new(&wan.core, "hub0", &["-s", "198.18.11.0/24", "-j", "DROP"]);
    stream
        .wait_for_echoes(100, Duration::from_secs(20))
        .unwrap();
    let gap = stream.longest_gap_since(cut);
    eprintln!("fiber to the main hub blocked, prefer = hub: gap {gap:?}");
    assert!(gap < Duration::from_secs(3), "gap {gap:?}");
    let line = wan.daemons[annex]
        .wait_for_log(
            &["failover from=main/fiber", "to=main/lte"],
            Duration::from_secs(1),
        )
        .unwrap();
    eprintln!("{line}");
    assert_eq!(records_device(&wan), "tl0");
    assert_eq!(wan.annex(1).tunnel_uplink(), "lte0");
    std::thread::sleep(Duration::from_secs(3));
    let switches = wan.daemons[annex].log_lines(&["failover from="]);
    assert_eq!(switches.len(), 1, "{switches:#?}");
}

#[test]
fn a_dead_main_hub_is_left_for_the_backup_hub_and_returned_to_once() {
    let (mut wan, backup, stream, main, annex) = two_hubs_running();

    // The main hub dies (its tunnel and its probe responder).
    let cut = Instant::now();
    wan.daemons[main].kill();
    stream
        .wait_for_echoes(100, Duration::from_secs(20))
        .unwrap();
    let gap = stream.longest_gap_since(cut);
    eprintln!("main hub killed: gap seen by the LAN stream {gap:?}");
    assert!(gap < Duration::from_secs(2), "gap {gap:?}");
    assert_eq!(records_device(&wan), "tl1");
    // Both sessions still over the fiber: the dead main hub's is not
    // moved to the 4G by the 4G's answer from before.
    assert_eq!(wan.annex(1).tunnel_uplink(), "fiber0", "main's session");
    let backup_table = wan.annex(1).ns.ip_json(&["route", "show", "table", "7416"]);
    assert_eq!(backup_table[0]["dev"], "fiber0", "{backup_table}");
    let line = wan.daemons[annex]
        .wait_for_log(
            &["failover from=main/fiber", "to=backup/fiber"],
            Duration::from_secs(1),
        )
        .unwrap();
    assert!(line.contains("class=\"hub_down\""), "{line}");
    // What the technician sees: the switch and its reason, the backup
    // hub active, every path.
    let socket = wan.dir.path().join("annex1.sock");
    let (code, out, err) = testbed::status(&socket, true);
    assert_eq!(code, 0, "{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["active"], "fiber", "{s}");
    assert_eq!(s["active_hub"], "backup", "{s}");
    assert_eq!(s["uplinks"][0]["hub"], "backup", "{s}");
    assert_eq!(s["last_failover"]["from_hub"], "main", "{s}");
    assert_eq!(s["last_failover"]["to_hub"], "backup", "{s}");
    assert_eq!(s["last_failover"]["class"], "hub_down", "{s}");
    let reason = s["last_failover"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("hub main silent over") && reason.contains("hub backup answering"),
        "{s}"
    );
    let paths: Vec<(String, bool)> = s["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                format!(
                    "{}/{}",
                    p["hub"].as_str().unwrap(),
                    p["name"].as_str().unwrap()
                ),
                p["active"] == true,
            )
        })
        .collect();
    assert_eq!(
        paths,
        [
            ("main/fiber".to_string(), false),
            ("main/lte".to_string(), false),
            ("backup/fiber".to_string(), true),
            ("backup/lte".to_string(), false)
        ],
        "{s}"
    );
    assert_eq!(s["paths"][0]["state"], "down", "{s}");
    let (code, text, _) = testbed::status(&socket, false);
    assert_eq!(code, 0);
    assert!(text.contains("hubs (active: backup)"), "{text}");
    assert!(text.contains("paths (active: backup/fiber)"), "{text}");
    assert!(
        text.contains("last switch main/fiber → backup/fiber"),
        "{text}"
    );
    // The annex's metrics: the backup hub's path active, the switch of
    // hub counted with both hubs.
    let metrics: std::net::SocketAddr = "127.0.0.1:9475".parse().unwrap();
    let (_, body) = testbed::http_get(&wan.annex(1).ns, metrics, "/metrics").unwrap();
    let value = |series: &str| testbed::metric_value(&body, series);
    assert_eq!(
        value(r#"townlink_uplink_active{uplink="fiber",hub="backup"}"#),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        value(r#"townlink_uplink_active{uplink="fiber",hub="main"}"#),
        Some(0.0)
    );
    assert_eq!(
        value(r#"townlink_uplink_state{uplink="fiber",hub="main",state="down"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(
            r#"townlink_failovers_total{from="fiber",to="fiber",reason="hub_down",from_hub="main",to_hub="backup"}"#
        ),
        Some(1.0),
        "{body}"
    );
    // The backup hub knows that the annex uses it: its report names the
    // backup hub, with every path.
    let backup_socket = wan.dir.path().join("backup.sock");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, out, _) = testbed::status(&backup_socket, true);
        let hub: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let report = hub["sites"]
            .as_array()
            .and_then(|sites| sites.iter().find(|v| v["name"] == "annex-1"))
            .map(|v| v["report"].clone())
            .unwrap_or_default();
        if report["hub"] == "backup" && report["active"] == "fiber" {
            assert_eq!(
                report["paths"].as_array().map(Vec::len),
                Some(4),
                "{report}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backup hub does not see annex-1 on it: {report}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // ... and so does its `site list`.
    let out = std::process::Command::new(testbed::townlink_bin())
        .args(["site", "list", "--json", "--socket"])
        .arg(&backup_socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let annex1 = list
        .as_array()
        .and_then(|l| l.iter().find(|v| v["name"] == "annex-1"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(annex1["tunnel_on"], "backup/fiber", "{list}");

    // The main hub back: one return, after its hold-down (10 s by default).
    let restarted = Instant::now();
    wan.start_hub();
    let after = wait_for_records_device(&wan, "tl0", Duration::from_secs(60)) - restarted;
    eprintln!("back on the main hub {after:?} after its restart");
    assert!(after >= Duration::from_secs(10), "{after:?}");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(records_device(&wan), "tl0");
    let switches = wan.daemons[annex].log_lines(&["failover from="]);
    assert_eq!(switches.len(), 2, "{switches:#?}");
    assert!(
        switches[1].contains("from=backup/fiber") && switches[1].contains("to=main/fiber"),
        "{}",
        switches[1]
    );
    stream.wait_for_echoes(50, Duration::from_secs(5)).unwrap();
    assert_eq!(
        wan.daemons[annex].log_lines(&[" ERROR "]),
        Vec::<String>::new()
    );

    // A clean stop takes both devices, every rule and route with them.
    assert!(wan.daemons[annex].stop(Duration::from_secs(10)).success());
    let ns = &wan.annex(1).ns;
    for device in ["tl0", "tl1"] {
        let out = ns.run_output(&["ip", "link", "show", device]);
        assert!(!out.status.success(), "{device} left behind");
    }
    let rules = ns.ip_json(&["rule", "show"]);
    assert!(
        rules
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["table"] != "7416" && r["table"] != 7416),
        "{rules}"
    );
    let routes = ns.ip_json(&["route", "show", "table", "all", "proto", "116"]);
    assert_eq!(routes, serde_json::json!([]), "{routes}");
    drop(backup);
}

/// Issue 18, test 4: on the backup hub (the main one dead), the fiber
/// dies too: the tunnel goes to the backup hub over the 4G (behind the
/// carrier's NAT), not to the dead main hub's 4G path, which is up only
/// by an answer from before (rule 16).
#[test]
fn on_the_backup_hub_a_dead_fiber_is_left_for_the_4g() {
    let (mut wan, _backup, stream, main, annex) = two_hubs_running();
    wan.daemons[main].kill();
    wait_for_records_device(&wan, "tl1", Duration::from_secs(10));
    stream.wait_for_echoes(50, Duration::from_secs(10)).unwrap();
    let cut = Instant::now();
    let _fiber_down = Impairment::blackhole(&wan.isp_fiber, "a1");
    stream
        .wait_for_echoes(100, Duration::from_secs(20))
        .unwrap();
    let gap = stream.longest_gap_since(cut);
    eprintln!("fiber dead on the backup hub: gap {gap:?}");
    assert!(gap < Duration::from_secs(3), "gap {gap:?}");
    assert_eq!(records_device(&wan), "tl1");
    let backup_table = wan.annex(1).ns.ip_json(&["route", "show", "table", "7416"]);
    assert_eq!(backup_table[0]["dev"], "lte0", "{backup_table}");
    let line = wan.daemons[annex]
        .wait_for_log(
            &["failover from=backup/fiber", "to=backup/lte"],
            Duration::from_secs(1),
        )
        .unwrap();
    eprintln!("{line}");
    let switches = wan.daemons[annex].log_lines(&["failover from="]);
    assert_eq!(switches.len(), 2, "{switches:#?}");
    // The dead main hub's session stays where it was.
    assert_eq!(wan.annex(1).tunnel_uplink(), "fiber0");
}

/// Issue 18, test 8: a restart of the backup hub moves no annex; the
/// annex starts a new session with it at once (its own hub-restart
/// detection, per hub), so that it is ready for a switch again.
#[test]
fn a_restart_of_the_backup_hub_moves_nothing() {
    let (wan, mut backup, stream, _main, annex) = two_hubs_running();
    let before = Instant::now();
    backup.restart();
    wan.daemons[annex]
        .wait_for_log(
            &["hub peer re-added, traffic pushed", "hub=backup"],
            Duration::from_secs(30),
        )
        .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        wan.daemons[annex].log_lines(&["failover from="]),
        Vec::<String>::new()
    );
    assert_eq!(records_device(&wan), "tl0");
    // The records server's replies come back through the backup hub in
    // this bed (static return path): they stopped during its restart
    // and flow again over the new session.
    eprintln!(
        "backup hub restarted: gap {:?} (the return path)",
        stream.longest_gap_since(before)
    );
    stream.wait_for_echoes(50, Duration::from_secs(5)).unwrap();
    assert!(backup.daemon.log_text().contains("annex-1"));
}

/// The metric of annex 1's routes (its LAN 192.168.1.0/24 and its tunnel
/// address 10.99.0.2) in the table 116 of the hub in namespace `ns`: the
/// lowest of each (the one BIRD announces), `None` for none; both must
/// agree, else `Some(0)` (a moment between two writes).
fn return_metric(ns: &str) -> Option<u64> {
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", ns, "ip", "-j", "route", "show", "table", "116",
        ])
        .output()
        .unwrap();
    let routes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let lowest = |dst: &str| {
        routes
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["dst"] == dst && r["dev"] == "tl0" && r["protocol"] == "116")
            .map(|r| r["metric"].as_u64().unwrap_or(0))
            .min()
    };
    match (lowest("192.168.1.0/24"), lowest("10.99.0.2")) {
        (a, b) if a == b => a,
        _ => Some(0),
    }
}

/// Polls `ns`'s table 116 until annex 1's routes have `metric`; the time.
fn wait_for_return_metric(ns: &str, metric: Option<u64>, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        let now = return_metric(ns);
        if now == metric {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{ns}: table 116 has annex-1 at {now:?}, not {metric:?} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every change of annex 1's metric in each hub's table 116, polled every
/// 20 ms in a thread until [`Watch::stop`].
struct Watch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Vec<Option<u64>>>>,
}

impl Watch {
    fn start(namespaces: &[&str]) -> Watch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let namespaces: Vec<String> = namespaces.iter().map(|s| s.to_string()).collect();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen: Vec<Vec<Option<u64>>> = vec![Vec::new(); namespaces.len()];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for (ns, seen) in namespaces.iter().zip(&mut seen) {
                    let m = return_metric(ns);
                    // A moment between two writes (both metrics) is no change.
                    if m != Some(0) && seen.last() != Some(&m) {
                        seen.push(m);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        Watch { stop, thread }
    }

    /// The metrics each hub's table went through, in order.
    fn stop(self) -> Vec<Vec<Option<u64>>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Issue 18, step 4 (the hubs' side of tests 2 and 3): each hub's table
/// 116 follows the hub the annex uses. Both up: the main hub has annex 1
/// at metric 100, the backup hub at 1000 (a session, the annex's report
/// naming the main hub). The main hub's WAN blackholed: the annex goes to
/// the backup hub, which attaches it at once (metric 100); the main hub,
/// which never hears it leave, detaches it when its probes stop (1 s) and
/// keeps metric 1000 (its handshake is young). The main hub back: each
/// goes back, exactly once. Then a site removed on a hub loses its routes
/// there.
#[test]
fn the_hubs_return_routes_follow_the_annex_to_the_backup_hub_and_back_once() {
    let (wan, backup, stream, main, annex) = two_hubs_running();
    let (main_ns, backup_ns) = (wan.hub.name.clone(), backup.ns.name.clone());
    wait_for_return_metric(&main_ns, Some(100), Duration::from_secs(5));
    wait_for_return_metric(&backup_ns, Some(1000), Duration::from_secs(5));
    // What each hub shows.
    let attachment = |socket: &std::path::Path| {
        let (_, out, _) = testbed::status(socket, true);
        let s: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        s["sites"]
            .as_array()
            .and_then(|sites| sites.iter().find(|v| v["name"] == "annex-1"))
            .map(|v| v["attachment"].clone())
            .unwrap_or_default()
    };
    let main_socket = wan.dir.path().join("hub.sock");
    let backup_socket = wan.dir.path().join("backup.sock");
    let a = attachment(&main_socket);
    assert_eq!(
        (&a["state"], &a["route_metric"]),
        (&"attached".into(), &100.into()),
        "{a}"
    );
    let a = attachment(&backup_socket);
    assert_eq!(a["state"], "elsewhere", "{a}");
    assert_eq!(a["hub"], "main", "{a}");
    assert_eq!(a["route_metric"], 1000, "{a}");
    let (_, text, _) = testbed::status(&main_socket, false);
    assert!(text.contains("1 attached here)"), "{text}");

    let watch = Watch::start(&[&main_ns, &backup_ns]);
    let cut = Instant::now();
    let blackhole = Impairment::blackhole(&wan.core, "hub0");
    let on_backup = wait_for_return_metric(&backup_ns, Some(100), Duration::from_secs(2)) - cut;
    let main_detached = wait_for_return_metric(&main_ns, Some(1000), Duration::from_secs(2)) - cut;
    eprintln!(
        "main hub's WAN blackholed: backup hub at metric 100 after {on_backup:?}, main hub at 1000 after {main_detached:?}"
    );
    stream
        .wait_for_echoes(100, Duration::from_secs(20))
        .unwrap();
    eprintln!(
        "main hub's WAN blackholed: gap seen by the LAN stream {:?}",
        stream.longest_gap_since(cut)
    );
    assert_eq!(records_device(&wan), "tl1");
    wan.daemons[main]
        .wait_for_log(
            &[
                "site attachment changed",
                "site=annex-1",
                "from=\"attached here\"",
                "to=\"session only\"",
            ],
            Duration::from_secs(1),
        )
        .unwrap();
    // The main hub keeps its session route while cut off.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(return_metric(&main_ns), Some(1000));
    assert_eq!(return_metric(&backup_ns), Some(100));

    drop(blackhole);
    let restored = Instant::now();
    let back = wait_for_records_device(&wan, "tl0", Duration::from_secs(60));
    let main_back = wait_for_return_metric(&main_ns, Some(100), Duration::from_secs(2)) - back;
    let backup_back = wait_for_return_metric(&backup_ns, Some(1000), Duration::from_secs(2)) - back;
    eprintln!(
        "annex back on the main hub {:?} after the restore; then main hub at metric 100 after {main_back:?}, backup hub at 1000 after {backup_back:?}",
        back - restored
    );
    std::thread::sleep(Duration::from_secs(3));
    let seen = watch.stop();
    assert_eq!(
        seen,
        vec![
            vec![Some(100), Some(1000), Some(100)],
            vec![Some(1000), Some(100), Some(1000)]
        ],
        "metrics of annex-1 in table 116 (main hub, backup hub)"
    );
    let switches = wan.daemons[annex].log_lines(&["failover from="]);
    assert_eq!(switches.len(), 2, "{switches:#?}");

    // A site removed on the backup hub (its [[site]] table deleted,
    // reloaded) loses its routes there at once.
    let text = std::fs::read_to_string(&backup.config).unwrap();
    let start = text.find("[[site]]\nname = \"annex-1\"").unwrap();
    let end = text[start + 1..]
        .find("\n[")
        .map_or(text.len(), |i| start + 2 + i);
    std::fs::write(
        &backup.config,
        format!("{}{}", &text[..start], &text[end..]),
    )
    .unwrap();
    // `ip netns exec` execs townlink: the PID is townlink's own.
    unsafe { libc::kill(backup.daemon.pid(), libc::SIGHUP) };
    wait_for_return_metric(&backup_ns, None, Duration::from_secs(5));
    assert_eq!(return_metric(&main_ns), Some(100));
}

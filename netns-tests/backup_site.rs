//! The backup site's return path (issue 18), first the mechanics without
//! townlink: each hub's BIRD (the shipped `config/bird/hub.conf`) announces
//! what is written in its kernel table 116 with protocol 116, with
//! MED = the route's metric, to the data centre's BIRD (`config/bird/dc.conf`),
//! which installs the best route in its main table. Routes are added by hand
//! here, as townlink will add them: metric 100 on the hub a site is attached
//! to, 1000 on a hub the site merely has a live session with.
//!
//! Every figure is printed (`--no-capture`); the bounds are generous (CI
//! machines are noisy), the goal is < 1 s.
//!
//! Then the whole backup site (issue 18, tests 1-8): townlink on both hubs
//! writing table 116 ([`BackupSite`]), an annex enrolled on hub-main with
//! both hubs, a LAN host streaming to the records server behind the dc,
//! and the dc told where the annex is by BGP only.

mod testbed;

use std::time::{Duration, Instant};

use testbed::bgp::{blackhole_local, BackupSite, DataCentre};
use testbed::{udp_echo_server, Impairment, UdpStream, RECORDS};

/// A site's LAN and a host on it (what the records server answers to).
const SITE_LAN: &str = "192.168.1.0/24";
const SITE_HOST: &str = "192.168.1.10";
/// Bound of every withdrawal the design wants under a second.
const WITHDRAWAL: Duration = Duration::from_secs(2);
/// Bound of an announcement on a live session (BIRD follows the kernel's
/// route notifications).
const ANNOUNCEMENT: Duration = Duration::from_secs(2);

/// Both hubs' sessions up, the site attached to hub-main (metric 100) and
/// live on hub-backup (metric 1000), the dc routing it to hub-main.
fn attached_to_main() -> DataCentre {
    let dcn = DataCentre::build();
    eprintln!(
        "bgp: every session Established {:?} after the BIRDs started",
        dcn.bgp_up
    );
    dcn.main.stand_in_tunnel();
    dcn.backup.stand_in_tunnel();
    assert_eq!(dcn.dc_route(SITE_HOST), None, "announced before any route");

    let t = Instant::now();
    dcn.backup.announce(SITE_LAN, 1000);
    let took = dcn
        .wait_dc_route(SITE_HOST, Some("backup"), t, ANNOUNCEMENT)
        .unwrap();
    eprintln!("bgp: hub-backup's route (metric 1000) at the dc after {took:?}");
    let t = Instant::now();
    dcn.main.announce(SITE_LAN, 100);
    let took = dcn
        .wait_dc_route(SITE_HOST, Some("main"), t, ANNOUNCEMENT)
        .unwrap();
    eprintln!("bgp: hub-main's route (metric 100) preferred at the dc after {took:?}");
    dcn
}

#[test]
fn dc_prefers_the_attached_hub_and_follows_a_killed_one() {
    let mut dcn = attached_to_main();

    // The dc's BIRD has both announcements, MED = the hubs' metrics, and
    // installed hub-main's as a kernel route of its own (proto bird).
    assert_eq!(dcn.dc_med(SITE_LAN, "hub_main"), Some(100));
    assert_eq!(dcn.dc_med(SITE_LAN, "hub_backup"), Some(1000));
    let routes = dcn.dc_bird_routes();
    let routes = routes.as_array().unwrap();
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0]["dst"], SITE_LAN, "{routes:?}");
    assert_eq!(routes[0]["gateway"], dcn.main.dc_address, "{routes:?}");
    assert_eq!(routes[0]["dev"], "main0", "{routes:?}");

    // hub-main's BIRD dies: its sessions close, the dc takes hub-backup's.
    let t = Instant::now();
    dcn.main.bird.kill();
    let took = dcn
        .wait_dc_route(SITE_HOST, Some("backup"), t, WITHDRAWAL)
        .unwrap();
    eprintln!("bgp: SIGKILL of hub-main's BIRD -> dc on hub-backup after {took:?}");

    // Back: hub-main's route wins again once its session is up. Started
    // once the dc has been refused a connection (it retries every second),
    // as after a real outage; the session is watched from the dc only: a
    // birdc request to hub-main's BIRD would wake its main loop and hide
    // what the assert below checks.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dcn
        .dc_bird
        .birdc(&["show", "protocols", "all", "hub_main"])
        .unwrap()
        .contains("Connection refused")
    {
        assert!(
            Instant::now() < deadline,
            "the dc never tried hub-main again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    dcn.main.bird.spawn();
    let established = dcn
        .dc_bird
        .wait_established("hub_main", Duration::from_secs(30))
        .unwrap();
    let took = dcn
        .wait_dc_route(SITE_HOST, Some("main"), t, Duration::from_secs(30))
        .unwrap();
    let first_update = established.elapsed();
    eprintln!(
        "bgp: hub-main's BIRD restarted -> session up after {:?}, dc on hub-main after {took:?} ({first_update:?} after the session came up)",
        established - t
    );
    // BIRD 2.0.12 may hold a session's first updates until its main loop
    // wakes for something else (up to 3 s); keepalives every second bound
    // that (config/bird/hub.conf).
    assert!(
        first_update < Duration::from_secs(2),
        "hub-main's first update reached the dc {first_update:?} after the session came up"
    );
}

#[test]
fn bfd_withdraws_a_silent_hub() {
    let dcn = attached_to_main();
    let bfd = dcn.dc_bird.birdc(&["show", "bfd", "sessions"]).unwrap();
    for hub in [&dcn.main, &dcn.backup] {
        assert!(
            bfd.lines()
                .any(|l| l.contains(hub.dc_address) && l.contains(" Up ")),
            "no BFD session up with {}:\n{bfd}",
            hub.dc_address
        );
    }

    // hub-main goes silent on its dc link (BIRD alive, TCP session open):
    // only BFD can tell, the BGP hold timer would take seconds.
    let t = Instant::now();
    let cut = blackhole_local(&dcn.main.ns, "dc0");
    let took = dcn
        .wait_dc_route(SITE_HOST, Some("backup"), t, WITHDRAWAL)
        .unwrap();
    eprintln!("bgp: hub-main's dc link blackholed -> dc on hub-backup after {took:?}");
    let state = dcn
        .dc_bird
        .birdc(&["show", "protocols", "hub_main"])
        .unwrap();
    assert!(state.contains("BFD session down"), "{state}");

    // The link back: the session comes up again by itself.
    let t = Instant::now();
    drop(cut);
    let took = dcn
        .wait_dc_route(SITE_HOST, Some("main"), t, Duration::from_secs(30))
        .unwrap();
    eprintln!("bgp: hub-main's dc link restored -> dc on hub-main after {took:?}");
}

#[test]
fn removed_routes_are_withdrawn_and_only_townlinks_are_announced() {
    let dcn = attached_to_main();

    // What is not townlink's (another protocol in table 116, protocol 116
    // in another table) is never announced, and the dc refuses what is no
    // site's (the records network, a default route): checked once a later
    // route of townlink's has arrived (BIRD reads the kernel's
    // notifications in order, the dc the hub's updates in order).
    let add = |args: &str| dcn.main.ns.ip(&args.split(' ').collect::<Vec<_>>());
    add("route add 192.168.50.0/24 dev tl0 proto static table 116");
    add("route add 192.168.51.0/24 dev tl0 proto 116 table 100");
    dcn.main.announce("10.50.0.0/24", 100);
    dcn.main.announce("default", 100);
    let t = Instant::now();
    dcn.main.announce("192.168.52.0/24", 100);
    dcn.wait_dc_route("192.168.52.10", Some("main"), t, ANNOUNCEMENT)
        .unwrap();
    assert_eq!(dcn.dc_route("192.168.50.10"), None);
    assert_eq!(dcn.dc_route("192.168.51.10"), None);
    let sent = dcn
        .main
        .bird
        .birdc(&["show", "route", "export", "dc"])
        .unwrap();
    for prefix in ["10.50.0.0/24", "0.0.0.0/0"] {
        assert!(
            sent.contains(prefix),
            "hub-main does not send {prefix}:\n{sent}"
        );
        assert_eq!(dcn.dc_med(prefix, "hub_main"), None, "dc took {prefix}");
    }
    let installed = dcn.dc_bird_routes();
    let installed: Vec<&str> = installed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["dst"].as_str())
        .collect();
    assert_eq!(installed, [SITE_LAN, "192.168.52.0/24"]);
    dcn.main.withdraw("10.50.0.0/24", 100);
    dcn.main.withdraw("default", 100);

    // townlink removes the site's route (the site left hub-main).
    let t = Instant::now();
    dcn.main.withdraw(SITE_LAN, 100);
    let took = dcn
        .wait_dc_route(SITE_HOST, Some("backup"), t, WITHDRAWAL)
        .unwrap();
    eprintln!("bgp: route removed from hub-main's table 116 -> dc on hub-backup after {took:?}");

    // The site attaches to hub-backup: townlink adds the route with the new
    // metric, then removes the old one (`ip route replace` keys on the
    // metric: it would add a second route). BIRD announces the lowest
    // metric of the prefix in table 116, so the MED follows with no gap.
    let t = Instant::now();
    dcn.backup.announce(SITE_LAN, 100);
    let took = dcn
        .wait_dc_med(SITE_LAN, "hub_backup", Some(100), t, ANNOUNCEMENT)
        .unwrap();
    eprintln!(
        "bgp: metric 100 added next to 1000 on hub-backup -> MED 100 at the dc after {took:?}"
    );
    dcn.backup.withdraw(SITE_LAN, 1000);
    // and back: detached again, live only (the 100 route removed last).
    dcn.backup.announce(SITE_LAN, 1000);
    let t = Instant::now();
    dcn.backup.withdraw(SITE_LAN, 100);
    dcn.wait_dc_med(SITE_LAN, "hub_backup", Some(1000), t, ANNOUNCEMENT)
        .unwrap();
    assert_eq!(dcn.dc_route(SITE_HOST), Some("backup"));

    // ... and from hub-backup too (the site went silent): unreachable.
    let t = Instant::now();
    dcn.backup.withdraw(SITE_LAN, 1000);
    let took = dcn.wait_dc_route(SITE_HOST, None, t, WITHDRAWAL).unwrap();
    eprintln!(
        "bgp: route removed from hub-backup's table 116 -> unreachable at the dc after {took:?}"
    );

    // townlink dies on hub-main: its tunnel interface goes, and the kernel
    // drops every route through it.
    dcn.backup.announce(SITE_LAN, 1000);
    let t = Instant::now();
    dcn.main.announce(SITE_LAN, 100);
    dcn.wait_dc_route(SITE_HOST, Some("main"), t, ANNOUNCEMENT)
        .unwrap();
    let t = Instant::now();
    dcn.main.ns.ip(&["link", "del", "tl0"]);
    let took = dcn
        .wait_dc_route(SITE_HOST, Some("backup"), t, WITHDRAWAL)
        .unwrap();
    dcn.wait_dc_route("192.168.52.10", None, t, WITHDRAWAL)
        .unwrap();
    eprintln!("bgp: hub-main's tunnel interface deleted -> dc on hub-backup after {took:?}");
}

/// Bound of the LAN stream's gap when the annex's hub fails (issue 18).
const HUB_GAP: Duration = Duration::from_secs(2);
/// Bound of the gap when the annex's uplink fails (as in failover.rs).
const UPLINK_GAP: Duration = Duration::from_secs(3);
/// The default hold-down of a path that comes back.
const HOLDDOWN: Duration = Duration::from_secs(10);

/// What a user's traffic depends on: the hub the annex sends to (its
/// route to the records network) and the hub the dc sends the answers
/// to (its route to the annex's LAN; None: unreachable).
#[derive(Debug, Clone, Copy, PartialEq)]
struct View {
    annex: &'static str,
    dc: Option<&'static str>,
}

fn view(site: &BackupSite) -> View {
    View {
        annex: site.annex_hub(),
        dc: site.dcn.dc_route(SITE_HOST),
    }
}

/// Polls the [`View`] every 10 ms until `done` holds, then `settle` more;
/// returns every view seen with its time since `since` (the first is the
/// view at the start). Panics when `done` never holds within `within`.
fn watch(
    site: &BackupSite,
    since: Instant,
    within: Duration,
    settle: Duration,
    done: impl Fn(View) -> bool,
) -> Vec<(Duration, View)> {
    let mut seen = vec![(since.elapsed(), view(site))];
    let mut settled: Option<Instant> = None;
    loop {
        let now = view(site);
        if seen.last().map(|(_, v)| *v) != Some(now) {
            seen.push((since.elapsed(), now));
        }
        match settled {
            None if done(now) => settled = Some(Instant::now()),
            Some(t) if t.elapsed() >= settle => return seen,
            None if since.elapsed() > within => {
                panic!("not done within {within:?}: {seen:?}")
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The times at which the annex's hub (`annex`) or the dc's route
/// (else) changed in `seen`, with the new value.
fn changes(seen: &[(Duration, View)], annex: bool) -> Vec<(Duration, Option<&'static str>)> {
    let pick = |v: &View| if annex { Some(v.annex) } else { v.dc };
    seen.windows(2)
        .filter(|w| pick(&w[0].1) != pick(&w[1].1))
        .map(|w| (w[1].0, pick(&w[1].1)))
        .collect()
}

/// Polls the [`View`] every 10 ms, asserting that it stays `steady`,
/// until `until` holds (at most `within`); returns the time since `since`.
fn hold(
    site: &BackupSite,
    steady: View,
    since: Instant,
    within: Duration,
    until: impl Fn(&BackupSite) -> bool,
) -> Duration {
    loop {
        assert_eq!(view(site), steady, "after {:?}", since.elapsed());
        if until(site) {
            return since.elapsed();
        }
        assert!(since.elapsed() < within, "not done within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The annex's switches so far (its log).
fn switches(site: &BackupSite) -> Vec<String> {
    site.annex_daemon().log_lines(&["failover from="])
}

/// The backup site with both hubs up and the annex enrolled on hub-main
/// (with `annex_extra` appended to the config `join` wrote): the annex on
/// (main, fiber), its session with hub-backup live over the fiber, the
/// stream flowing, hub-main announcing the annex's LAN with MED 100 and
/// hub-backup with MED 1000, the dc routing it to hub-main (issue 18,
/// test 1).
fn both_up(annex_extra: &str) -> (BackupSite, UdpStream) {
    let t = Instant::now();
    let mut site = BackupSite::build();
    eprintln!(
        "bed: built in {:?} (BGP sessions up {:?} after the BIRDs started, enrollment {:?})",
        t.elapsed(),
        site.dcn.bgp_up,
        site.enrolled_in
    );
    if !annex_extra.is_empty() {
        let mut text = std::fs::read_to_string(&site.annex.config).unwrap();
        text.push_str(annex_extra);
        std::fs::write(&site.annex.config, text).unwrap();
    }
    let echo = udp_echo_server(&site.dcn.records, &format!("{RECORDS}:7002"));
    let started = Instant::now();
    site.start_annex();
    for path in ["main/fiber", "backup/fiber"] {
        site.annex_daemon()
            .wait_for_log(
                &["uplink state", &format!("uplink={path}"), "to=\"up\""],
                Duration::from_secs(30),
            )
            .unwrap();
    }
    let stream = UdpStream::start(&site.annex.lan, echo, 50);
    stream.wait_for_echoes(50, Duration::from_secs(20)).unwrap();
    let took = site
        .dcn
        .wait_dc_route(SITE_HOST, Some("main"), started, Duration::from_secs(10))
        .unwrap();
    site.dcn
        .wait_dc_med(
            SITE_LAN,
            "hub_main",
            Some(100),
            started,
            Duration::from_secs(10),
        )
        .unwrap();
    let backup_live = site
        .dcn
        .wait_dc_med(
            SITE_LAN,
            "hub_backup",
            Some(1000),
            started,
            Duration::from_secs(10),
        )
        .unwrap();
    eprintln!(
        "annex started: dc on hub-main after {took:?}, hub-backup's MED 1000 after {backup_live:?}, 50 echoes after {:?}",
        started.elapsed()
    );
    assert_eq!(site.records_device(), "tl0");
    assert_eq!(site.session_uplink("main"), "fiber0");
    assert_eq!(site.session_uplink("backup"), "fiber0");
    // Each hub writes the LAN and the annex's tunnel address.
    let main_routes = site.table_116("main");
    for dst in [SITE_LAN, "10.99.0.2"] {
        assert!(
            main_routes.contains(&(dst.to_string(), 100)),
            "{main_routes:?}"
        );
    }
    assert_eq!(switches(&site), Vec::<String>::new());
    (site, stream)
}

/// Issue 18, tests 1, 2 (SIGKILL) and 3: hub-main's townlink dies, the
/// annex and the dc move to hub-backup; hub-main back, both return after
/// the annex's hold-down, exactly once.
#[test]
fn a_killed_main_hub_is_left_by_the_annex_and_the_dc_and_returned_to_once() {
    let (mut site, stream) = both_up("");

    let cut = Instant::now();
    site.main.kill();
    let dc_took = site
        .dcn
        .wait_dc_route(SITE_HOST, Some("backup"), cut, WITHDRAWAL)
        .unwrap();
    let med = site
        .dcn
        .wait_dc_med(SITE_LAN, "hub_backup", Some(100), cut, WITHDRAWAL)
        .unwrap();
    stream
        .wait_for_echoes(100, Duration::from_secs(20))
        .unwrap();
    let gap = stream.longest_gap_since(cut);
    eprintln!(
        "hub-main killed: stream gap {gap:?}; dc on hub-backup after {dc_took:?}, its MED 100 after {med:?}"
    );
    assert!(gap < HUB_GAP, "gap {gap:?}");
    assert_eq!(site.annex_hub(), "backup");
    let line = site
        .annex_daemon()
        .wait_for_log(
            &["failover from=main/fiber", "to=backup/fiber"],
            Duration::from_secs(1),
        )
        .unwrap();
    assert!(line.contains("class=\"hub_down\""), "{line}");
    assert_eq!(site.dcn.dc_med(SITE_LAN, "hub_main"), None);
    let backup_routes = site.table_116("backup");
    assert!(
        backup_routes.contains(&(SITE_LAN.to_string(), 100)),
        "{backup_routes:?}"
    );

    // hub-main back: the annex returns once its path has been healthy
    // for the hold-down, and the dc with it, each exactly once.
    let restarted = Instant::now();
    site.start_main();
    let seen = watch(
        &site,
        restarted,
        Duration::from_secs(60),
        Duration::from_secs(5),
        |v| v.annex == "main" && v.dc == Some("main"),
    );
    let annex = changes(&seen, true);
    let dc = changes(&seen, false);
    eprintln!("hub-main restarted: annex {annex:?}, dc {dc:?}");
    assert_eq!(annex.len(), 1, "{seen:?}");
    assert_eq!(dc.len(), 1, "{seen:?}");
    assert!(
        annex[0].0 >= HOLDDOWN,
        "returned before the hold-down: {seen:?}"
    );
    assert!(
        dc[0].0 >= annex[0].0.saturating_sub(Duration::from_millis(500)),
        "the dc left hub-backup before the annex did: {seen:?}"
    );
    let all = switches(&site);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(
        all[1].contains("from=backup/fiber") && all[1].contains("to=main/fiber"),
        "{}",
        all[1]
    );
    site.dcn
        .wait_dc_med(SITE_LAN, "hub_backup", Some(1000), restarted, WITHDRAWAL)
        .unwrap();
    stream.wait_for_echoes(50, Duration::from_secs(5)).unwrap();
}

/// Issue 18, test 2 (blackhole) and 3: hub-main's WAN dropped in the core
/// (hub-main, its townlink and its BGP session alive): the annex moves to
/// hub-backup and hub-main, no longer hearing the annex's fast probes,
/// lets the dc go there too; the WAN back, both return once.
#[test]
fn a_blackholed_main_hub_is_left_by_the_annex_and_the_dc_and_returned_to_once() {
    let (site, stream) = both_up("");

    let cut = Instant::now();
    let blackhole = Impairment::blackhole(&site.dcn.core, "main0");
    let dc_took = site
        .dcn
        .wait_dc_route(SITE_HOST, Some("backup"), cut, WITHDRAWAL)
        .unwrap();
    stream
        .wait_for_echoes(100, Duration::from_secs(20))
        .unwrap();
    let gap = stream.longest_gap_since(cut);
    eprintln!("hub-main's WAN blackholed: stream gap {gap:?}; dc on hub-backup after {dc_took:?}");
    assert!(gap < HUB_GAP, "gap {gap:?}");
    assert_eq!(site.annex_hub(), "backup");
    site.annex_daemon()
        .wait_for_log(
            &["failover from=main/fiber", "to=backup/fiber"],
            Duration::from_secs(1),
        )
        .unwrap();
    // hub-main keeps the annex as a live session (its handshake is young).
    site.dcn
        .wait_dc_med(SITE_LAN, "hub_main", Some(1000), cut, WITHDRAWAL)
        .unwrap();
    assert_eq!(site.dcn.dc_med(SITE_LAN, "hub_backup"), Some(100));

    let restored = Instant::now();
    drop(blackhole);
    let seen = watch(
        &site,
        restored,
        Duration::from_secs(60),
        Duration::from_secs(5),
        |v| v.annex == "main" && v.dc == Some("main"),
    );
    let annex = changes(&seen, true);
    let dc = changes(&seen, false);
    eprintln!("hub-main's WAN restored: annex {annex:?}, dc {dc:?}");
    assert_eq!(annex.len(), 1, "{seen:?}");
    assert_eq!(dc.len(), 1, "{seen:?}");
    assert!(
        annex[0].0 >= HOLDDOWN,
        "returned before the hold-down: {seen:?}"
    );
    // hub-main's last report from the annex is from before the blackhole:
    // it attaches the annex again only on a new report, when the annex
    // is back, not as soon as the annex's standby probes reach it again.
    assert!(
        dc[0].0 >= annex[0].0.saturating_sub(Duration::from_millis(500)),
        "the dc left hub-backup before the annex did: {seen:?}"
    );
    assert_eq!(switches(&site).len(), 2, "{:#?}", switches(&site));
    stream.wait_for_echoes(50, Duration::from_secs(5)).unwrap();
}

/// Issue 18, test 4: on hub-backup (hub-main dead), the fiber dies too:
/// the annex goes on to hub-backup over the 4G (behind the carrier's
/// NAT); the dc keeps sending to hub-backup.
#[test]
fn on_the_backup_hub_a_dead_fiber_is_left_for_the_4g_and_the_dc_stays() {
    let (mut site, stream) = both_up("");
    let t = Instant::now();
    site.main.kill();
    site.dcn
        .wait_dc_route(SITE_HOST, Some("backup"), t, WITHDRAWAL)
        .unwrap();
    stream.wait_for_echoes(50, Duration::from_secs(10)).unwrap();
    assert_eq!(site.annex_hub(), "backup");

    let cut = Instant::now();
    let _fiber_down = Impairment::blackhole(&site.isp_fiber, "a1");
    stream
        .wait_for_echoes(100, Duration::from_secs(20))
        .unwrap();
    let gap = stream.longest_gap_since(cut);
    eprintln!("fiber dead on hub-backup: stream gap {gap:?}");
    assert!(gap < UPLINK_GAP, "gap {gap:?}");
    assert_eq!(site.annex_hub(), "backup");
    assert_eq!(site.session_uplink("backup"), "lte0");
    // The dead hub-main's session stays where it was: its 4G path is up
    // only by an answer from before.
    assert_eq!(site.session_uplink("main"), "fiber0");
    site.annex_daemon()
        .wait_for_log(
            &["failover from=backup/fiber", "to=backup/lte"],
            Duration::from_secs(1),
        )
        .unwrap();
    assert_eq!(switches(&site).len(), 2, "{:#?}", switches(&site));
    assert_eq!(site.dcn.dc_route(SITE_HOST), Some("backup"));
    assert_eq!(site.dcn.dc_med(SITE_LAN, "hub_backup"), Some(100));
}

/// Issue 18, test 5: the fiber to hub-main blocked (in the core), the
/// fiber to hub-backup fine: with `prefer = "uplink"` (the default) the
/// annex uses (backup, fiber), not (main, 4G), and the dc follows it.
#[test]
fn the_main_hub_cut_from_the_fiber_only_is_left_for_the_backup_hub_and_the_dc_follows() {
    let (site, stream) = both_up("");
    let cut = Instant::now();
    let _blocked = Impairment::new(
        &site.dcn.core,
        "main0",
        &["-s", "198.18.11.0/24", "-j", "DROP"],
    );
    let dc_took = site
        .dcn
        .wait_dc_route(SITE_HOST, Some("backup"), cut, WITHDRAWAL)
        .unwrap();
    stream
        .wait_for_echoes(100, Duration::from_secs(20))
        .unwrap();
    let gap = stream.longest_gap_since(cut);
    eprintln!("fiber to hub-main blocked: stream gap {gap:?}; dc on hub-backup after {dc_took:?}");
    assert!(gap < HUB_GAP, "gap {gap:?}");
    site.annex_daemon()
        .wait_for_log(
            &["failover from=main/fiber", "to=backup/fiber"],
            Duration::from_secs(1),
        )
        .unwrap();
    // Stays there while the fiber to hub-main is blocked.
    let on_backup = View {
        annex: "backup",
        dc: Some("backup"),
    };
    let t = Instant::now();
    hold(&site, on_backup, t, Duration::from_secs(6), |_| {
        t.elapsed() > Duration::from_secs(5)
    });
    assert_eq!(site.session_uplink("backup"), "fiber0");
    assert_eq!(switches(&site).len(), 1, "{:#?}", switches(&site));
}

/// Issue 18, tests 6 and 8: 2 % random loss on the fiber for 60 s moves
/// nothing (no switch of hub or uplink, the dc's route stays on
/// hub-main); then a restart of hub-backup moves nothing either, and
/// hub-backup announces the annex again as a live session.
#[test]
fn fiber_loss_and_a_backup_hub_restart_move_nothing() {
    let (mut site, stream) = both_up("");
    let steady = View {
        annex: "main",
        dc: Some("main"),
    };

    let lossy = Impairment::loss(&site.isp_fiber, "a1", 0.02);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        assert_eq!(view(&site), steady, "after {:?}", start.elapsed());
        assert_eq!(site.session_uplink("main"), "fiber0");
        std::thread::sleep(Duration::from_millis(200));
    }
    let end = Instant::now();
    drop(lossy);
    assert_eq!(switches(&site), Vec::<String>::new());
    // The losses were real: about 96 % of the stream came back.
    let sent = 50.0 * end.duration_since(start).as_secs_f64();
    let received = stream.count_between(start, end) as f64;
    eprintln!("2 % loss for 60 s: {received} echoes for about {sent} packets, no switch");
    assert!(
        received < 0.99 * sent && received > 0.85 * sent,
        "{received} echoes for about {sent} packets"
    );

    // hub-backup restarted: its routes go with it, then it writes them
    // again once the annex has a new session with it; nothing moves.
    let before = Instant::now();
    site.backup.stop();
    let gone = hold(&site, steady, before, WITHDRAWAL, |site| {
        site.dcn.dc_med(SITE_LAN, "hub_backup").is_none()
    });
    site.start_backup();
    let annex = site.annex_daemon();
    hold(&site, steady, before, Duration::from_secs(30), |_| {
        !annex
            .log_lines(&["hub peer re-added, traffic pushed", "hub=backup"])
            .is_empty()
    });
    let live = hold(&site, steady, before, Duration::from_secs(30), |site| {
        site.dcn.dc_med(SITE_LAN, "hub_backup") == Some(1000)
    });
    let t = Instant::now();
    hold(&site, steady, t, Duration::from_secs(4), |_| {
        t.elapsed() > Duration::from_secs(3)
    });
    let gap = stream.longest_gap_since(before);
    eprintln!(
        "hub-backup restarted: its MED gone from the dc after {gone:?}, 1000 again after {live:?}; stream gap {gap:?}"
    );
    assert_eq!(switches(&site), Vec::<String>::new());
    // The answers never took hub-backup: the stream did not notice.
    assert!(gap < Duration::from_secs(1), "gap {gap:?}");
}

/// Issue 18, test 7: the annex, enrolled on hub-main by token and `join`,
/// keeps working through hub-backup after hub-main is killed; `site
/// remove` on hub-main (restarted) revokes it on hub-backup too, while
/// the annex is still there: its peer and its table-116 routes go, and
/// the dc has no route to its LAN. A long hold-down keeps the annex on
/// hub-backup until then.
#[test]
fn a_site_removed_on_the_main_hub_is_revoked_on_the_backup_hub_it_is_on() {
    let (mut site, stream) = both_up("\n[failover]\nholddown = \"120s\"\n");
    let cut = Instant::now();
    site.main.kill();
    site.dcn
        .wait_dc_route(SITE_HOST, Some("backup"), cut, WITHDRAWAL)
        .unwrap();
    stream
        .wait_for_echoes(100, Duration::from_secs(20))
        .unwrap();
    eprintln!(
        "hub-main killed: stream gap {:?}",
        stream.longest_gap_since(cut)
    );
    assert_eq!(site.annex_hub(), "backup");

    // hub-main back; hub-backup follows it again (its channel to the dead
    // hub ends by idle timeout, then it connects again).
    let applied = |site: &BackupSite| {
        site.backup
            .daemon()
            .log_lines(&["main hub's registry applied"])
            .len()
    };
    let before = applied(&site);
    let restarted = Instant::now();
    site.start_main();
    while applied(&site) == before {
        assert!(
            restarted.elapsed() < Duration::from_secs(60),
            "hub-backup does not follow hub-main again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "hub-backup follows hub-main again {:?} after its restart",
        restarted.elapsed()
    );
    assert_eq!(site.annex_hub(), "backup", "returned within the hold-down");
    assert_eq!(site.dcn.dc_route(SITE_HOST), Some("backup"));

    let removed = Instant::now();
    let (code, _, err) = site.main.site(&["remove", "annex-1"]);
    assert_eq!(code, 0, "site remove: {err}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let revoked = site
            .backup
            .listed_site("annex-1")
            .is_some_and(|s| s["state"] == "revoked");
        let peer = site.backup.status()["sites"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "annex-1");
        if revoked && !peer && site.table_116("backup").is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hub-backup still serves annex-1: revoked {revoked}, peer {peer}, table 116 {:?}",
            site.table_116("backup")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let on_backup = removed.elapsed();
    let dc = site
        .dcn
        .wait_dc_route(SITE_HOST, None, removed, WITHDRAWAL)
        .unwrap();
    eprintln!(
        "annex-1 removed on hub-main: revoked on hub-backup after {on_backup:?}, unreachable from the dc after {dc:?}"
    );
    assert_eq!(site.table_116("main"), Vec::<(String, u64)>::new());
    assert_eq!(site.dcn.dc_route("10.99.0.2"), None);
    // The annex's traffic no longer passes.
    std::thread::sleep(Duration::from_millis(500));
    let count = stream.count();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        stream.count(),
        count,
        "a removed site's traffic still flows"
    );
}

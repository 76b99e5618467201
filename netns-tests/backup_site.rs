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

mod testbed;

use std::time::{Duration, Instant};

use testbed::bgp::{blackhole_local, DataCentre};

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

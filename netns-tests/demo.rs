//! The demo WAN: a hub with the records server behind it, two annexes with
//! fiber and 4G uplinks (the 4G behind the carrier's NAT), all in network
//! namespaces of their own. Shows the annexes reaching the records server
//! and each other, what townlink installed, a live failover from fiber to
//! 4G and back, and a clean stop.
//!
//! Run it with `sudo scripts/demo` (builds townlink first).

mod testbed;

use std::time::Duration;

use std::time::Instant;

use testbed::{
    echo_server, echo_within, http_get, status, udp_echo_server, Impairment, Netns, Options,
    UdpStream, Wan, RECORDS,
};

fn title(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

fn show(ns: &Netns, label: &str, args: &[&str]) {
    let out = ns.ip(args);
    println!("-- {label}: ip {}", args.join(" "));
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("   {line}");
    }
}

fn main() {
    // The WAN is dropped (processes stopped, namespaces removed) before the
    // process exits, whatever the outcome.
    std::process::exit(demo());
}

/// Runs the demo; 0 when everything shown worked.
fn demo() -> i32 {
    title("building the WAN in network namespaces");
    // Every annex checks the records server through the tunnel each second.
    let mut wan = Wan::build_with(
        2,
        &Options {
            annex_extra: format!(
                "[[check]]\nname = \"records\"\ntcp = \"{RECORDS}:7000\"\ninterval = \"1s\"\n"
            ),
            ..Options::default()
        },
    );
    println!(
        "   records server {RECORDS} behind the hub (198.18.0.2); annex-N: fiber 198.18.1N.2, \
         4G 100.64.N.2 (NATed by the carrier), LAN 192.168.N.0/24"
    );
    let records = echo_server(&wan.records, &format!("{RECORDS}:7000"));
    let lan1 = echo_server(&wan.annex(1).lan, "192.168.1.10:7000");

    title("starting townlink: hub, annex-1, annex-2");
    wan.start_hub();
    wan.start_annex(1);
    wan.start_annex(2);

    title("users reach the records server through the tunnel");
    for n in 1..=2 {
        match echo_within(&wan.annex(n).lan, records, Duration::from_secs(20)) {
            Ok(t) => println!(
                "   LAN host of annex-{n} -> records server {records}: echo OK after {t:.1?}"
            ),
            Err(e) => {
                println!("   LAN host of annex-{n}: FAILED: {e}");
                return 1;
            }
        }
    }
    match echo_within(&wan.annex(2).lan, lan1, Duration::from_secs(20)) {
        Ok(t) => println!(
            "   LAN host of annex-2 -> LAN host of annex-1 (via the hub): echo OK after {t:.1?}"
        ),
        Err(e) => {
            println!("   annex-2 -> annex-1 FAILED: {e}");
            return 1;
        }
    }

    title("what townlink installed on annex-1");
    show(
        &wan.annex(1).ns,
        "policy rules (tunnel socket mark 0x7400, one per uplink)",
        &["rule", "show"],
    );
    show(
        &wan.annex(1).ns,
        "the tunnel's table: the active uplink",
        &["route", "show", "table", "7400"],
    );
    show(
        &wan.annex(1).ns,
        "routes through the tunnel",
        &["route", "show", "dev", "tl0"],
    );
    show(
        &wan.hub,
        "hub's tunnel interface counters",
        &["-s", "link", "show", "tl0"],
    );

    title("live failover: annex-1's fiber goes dark");
    let annex1 = &wan.daemons[1];
    for uplink in ["fiber", "lte"] {
        let _ = annex1.wait_for_log(
            &["uplink state", &format!("uplink={uplink}"), "to=\"up\""],
            Duration::from_secs(30),
        );
    }
    let echo = udp_echo_server(&wan.records, &format!("{RECORDS}:7002"));
    let stream = UdpStream::start(&wan.annex(1).lan, echo, 50);
    let _ = stream.wait_for_echoes(50, Duration::from_secs(10));
    println!(
        "   a LAN host of annex-1 sends 50 UDP packets/s to the records server, which echoes them"
    );
    let cut = Instant::now();
    let blackhole = Impairment::blackhole(&wan.isp_fiber, "a1");
    println!("   fiber blackholed at the ISP (iptables DROP)");
    if stream
        .wait_for_echoes(100, Duration::from_secs(20))
        .is_err()
    {
        println!("   FAILED: the stream did not resume");
        return 1;
    }
    println!(
        "   the stream resumed over 4G; longest gap: {:.0?}",
        stream.longest_gap_since(cut)
    );
    for line in annex1.log_lines(&["failover from="]) {
        println!(
            "   annex-1: {}",
            line.split_once("failover ").map_or(line.as_str(), |x| x.1)
        );
    }
    if let Ok(line) = wan.daemons[0].wait_for_log(
        &["site endpoint changed", "site=annex-1", "198.18.2.2"],
        Duration::from_secs(5),
    ) {
        println!(
            "   hub:     {} (the carrier's NAT address)",
            line.split_once("changed ").map_or(line.as_str(), |x| x.1)
        );
    }
    show(
        &wan.annex(1).ns,
        "the tunnel's table now",
        &["route", "show", "table", "7400"],
    );

    title("what the technician sees: townlink status");
    std::thread::sleep(Duration::from_secs(6)); // the next report reaches the hub
    for (who, socket) in [("annex-1", "annex1.sock"), ("hub", "hub.sock")] {
        let (code, out, err) = status(&wan.dir.path().join(socket), false);
        println!("-- {who}: townlink status   (exit {code})");
        for line in out.lines().chain(err.lines()) {
            println!("   {line}");
        }
    }

    title("what the dashboard sees: /metrics (excerpt; the full list is docs/metrics.md)");
    let addr = "127.0.0.1:9475".parse().expect("address");
    // DEMO_FULL_METRICS=1 prints every line of both scrapes.
    let full = std::env::var_os("DEMO_FULL_METRICS").is_some();
    let excerpt = |ns: &Netns, who: &str, keep: &[&str]| match http_get(ns, addr, "/metrics") {
        Ok((200, body)) if full => {
            println!("-- {who}: GET http://{addr}/metrics");
            body.lines().for_each(|l| println!("   {l}"));
        }
        Ok((200, body)) => {
            println!(
                "-- {who}: GET http://{addr}/metrics ({} lines)",
                body.lines().count()
            );
            for line in body
                .lines()
                .filter(|l| keep.iter().any(|k| l.starts_with(k)))
            {
                // Counters that are still 0 are there too; the excerpt skips them.
                if !((line.contains("_total") || line.contains("_state{")) && line.ends_with(" 0"))
                {
                    println!("   {line}");
                }
            }
        }
        other => println!("-- {who}: scrape failed: {other:?}"),
    };
    excerpt(
        &wan.annex(1).ns,
        "annex-1",
        &[
            "townlink_build_info",
            "townlink_uplink_active",
            "townlink_uplink_state{",
            "townlink_uplink_rtt_seconds",
            "townlink_uplink_loss_ratio",
            "townlink_uplink_probe_",
            "townlink_failovers_total",
            "townlink_last_failover",
            "townlink_peer_last_handshake",
            "townlink_check_",
        ],
    );
    excerpt(
        &wan.hub,
        "hub",
        &[
            "townlink_build_info",
            "townlink_site_",
            "townlink_peer_last_handshake",
            "townlink_responder_",
        ],
    );

    title("fiber restored: back after the hold-down, once");
    let restored = Instant::now();
    drop(blackhole);
    while wan.annex(1).tunnel_uplink() != "fiber0" && restored.elapsed() < Duration::from_secs(40) {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "   back on fiber {:.1?} after the restore (10 s hold-down of continuous health)",
        restored.elapsed()
    );
    if let Some(line) = annex1.log_lines(&["failover from=lte"]).last() {
        println!(
            "   annex-1: {}",
            line.split_once("failover ").map_or(line.as_str(), |x| x.1)
        );
    }
    drop(stream);

    title("stopping townlink (SIGTERM) and checking that nothing is left");
    for d in wan.daemons.iter_mut().rev() {
        let status = d.stop(Duration::from_secs(10));
        println!("   {} exited: {status}", d.name);
    }
    show(
        &wan.annex(1).ns,
        "annex-1 rules after stop",
        &["rule", "show"],
    );
    show(
        &wan.annex(1).ns,
        "annex-1 townlink routes after stop (protocol 116)",
        &["route", "show", "table", "all", "proto", "116"],
    );

    title("done: removing the namespaces");
    0
}

//! The demo WAN: a hub with the records server behind it, two annexes with
//! fiber and 4G uplinks (the 4G behind the carrier's NAT), all in network
//! namespaces of their own. Shows the annexes reaching the records server
//! and each other, what townlink installed, and a clean stop.
//!
//! Run it with `sudo scripts/demo` (builds townlink first).

mod testbed;

use std::time::Duration;

use testbed::{echo_server, echo_within, Netns, Wan, RECORDS};

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
    title("building the WAN in network namespaces");
    let mut wan = Wan::build(2);
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
                std::process::exit(1);
            }
        }
    }
    match echo_within(&wan.annex(2).lan, lan1, Duration::from_secs(20)) {
        Ok(t) => println!(
            "   LAN host of annex-2 -> LAN host of annex-1 (via the hub): echo OK after {t:.1?}"
        ),
        Err(e) => {
            println!("   annex-2 -> annex-1 FAILED: {e}");
            std::process::exit(1);
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
}

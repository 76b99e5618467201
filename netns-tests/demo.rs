//! The demo WAN: a hub with the records server behind it, two annexes with
//! fiber and 4G uplinks (the 4G behind the carrier's NAT), all in network
//! namespaces of their own. Shows the annexes reaching the records server
//! and each other, what townlink installed, a live failover from fiber to
//! 4G and back, and a clean stop.
//!
//! Then the backup site (issue 18, `docs/backup-site.md`): hub-main and
//! hub-backup, each running townlink and BIRD, the data centre's router
//! (BIRD) with the records server behind it, an annex enrolled on hub-main
//! with both hubs. Shows the BGP sessions and routes, then a crash of
//! hub-main's townlink: the stream gap users saw, the data centre's route
//! moving to hub-backup, what status and metrics say; then hub-main back
//! and the annex's return after the hold-down.
//!
//! Every step that fails prints `FAILED` and the demo exits 1. The
//! namespaces, daemons and BIRDs are removed on every way out: a normal
//! end, a failure (also a panic in the test bed), and SIGINT, SIGTERM or
//! SIGHUP (Ctrl-C), which [`interrupt`] handles.
//!
//! Run it with `sudo scripts/demo` (builds townlink first).

mod testbed;

use std::time::Duration;

use std::time::Instant;

use testbed::bgp::BackupSite;
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
    interrupt::install();
    // Each WAN is dropped (processes stopped, namespaces removed) before
    // the process exits, whatever the outcome: also when the test bed
    // panics (unwinding drops it).
    let code = match std::panic::catch_unwind(|| match one_hub() {
        0 => backup_site(),
        code => code,
    }) {
        Ok(code) => code,
        Err(_) => {
            if !interrupt::interrupted() {
                println!(
                    "\n\x1b[1mFAILED\x1b[0m: a step of the demo panicked (its message is above)"
                );
            }
            1
        }
    };
    interrupt::wait_if_interrupted();
    if code != 0 {
        println!(
            "\n\x1b[1mdemo FAILED\x1b[0m (exit {code}); everything it started has been removed"
        );
    }
    std::process::exit(code);
}

/// The one-hub WAN; 0 when everything shown worked.
fn one_hub() -> i32 {
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
    interrupt::register_dir(wan.dir.path());
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

    title("removing the one-hub WAN's namespaces");
    drop(wan);
    0
}

/// The annex's LAN at the backup site, and its host that streams.
const SITE_LAN: &str = "192.168.1.0/24";
const SITE_HOST: &str = "192.168.1.10";

/// Prints a command's output, indented, under `label`.
fn print_block(label: &str, text: &str) {
    println!("-- {label}");
    for line in text.lines() {
        println!("   {line}");
    }
}

/// `townlink status` of the daemon behind `socket`, printed.
fn print_status(who: &str, socket: &std::path::Path) {
    let (code, out, err) = status(socket, false);
    print_block(
        &format!("{who}: townlink status   (exit {code})"),
        &format!("{out}{err}"),
    );
}

/// The lines of `ns`'s /metrics (default address) that start with one of
/// `keep`, counters still at 0 left out; every line with
/// DEMO_FULL_METRICS=1.
fn print_metrics(ns: &Netns, who: &str, keep: &[&str]) -> Result<(), String> {
    let addr = "127.0.0.1:9475".parse().expect("address");
    let full = std::env::var_os("DEMO_FULL_METRICS").is_some();
    match http_get(ns, addr, "/metrics") {
        Ok((200, body)) => {
            println!("-- {who}: GET http://{addr}/metrics (excerpt)");
            for line in body
                .lines()
                .filter(|l| full || keep.iter().any(|k| l.starts_with(k)))
                .filter(|l| full || !(l.contains("_total") && l.ends_with(" 0")))
            {
                println!("   {line}");
            }
            Ok(())
        }
        other => Err(format!("scrape of {who}'s /metrics failed: {other:?}")),
    }
}

/// The part of a "failover from=..." log line from `from=` on.
fn switch_text(line: &str) -> &str {
    line.find("from=").map_or(line, |i| &line[i..])
}

/// The backup-site act; 0 when everything shown worked.
fn backup_site() -> i32 {
    match backup_site_steps() {
        Ok(()) => 0,
        Err(e) => {
            println!("   \x1b[1mFAILED\x1b[0m: {e}");
            1
        }
    }
}

fn backup_site_steps() -> Result<(), String> {
    title("the backup site: hub-main and hub-backup, the data centre told by BGP");
    println!(
        "   dc router (BIRD) with the records server {RECORDS} behind it; hub-main (10.60.1.2 \
         on the dc link, WAN 198.18.0.2) and hub-backup (10.60.2.2, WAN 198.18.3.2), each \
         running townlink and BIRD with config/bird/*.conf; annex-1 with fiber and 4G"
    );
    let built = Instant::now();
    let mut site = BackupSite::build();
    interrupt::register_dir(site.dcn.dir.path());
    println!(
        "   built in {:.1?}: BGP sessions Established {:.1?} after the BIRDs started; \
         annex-1 enrolled on hub-main (`site add`, `join` with the token: both hubs in its \
         config), hub-backup listed it {:.1?} later (it follows hub-main's registry)",
        built.elapsed(),
        site.dcn.bgp_up,
        site.enrolled_in
    );
    let protocols = site.dcn.dc_bird.birdc(&["show", "protocols"])?;
    print_block(
        "dc: birdc show protocols (the BGP sessions with both hubs)",
        &protocols
            .lines()
            .filter(|l| l.starts_with("Name") || l.starts_with("hub_"))
            .collect::<Vec<_>>()
            .join("\n"),
    );

    title("the backup site: annex-1 starts, on hub-main over its fiber");
    let echo = udp_echo_server(&site.dcn.records, &format!("{RECORDS}:7002"));
    let started = Instant::now();
    site.start_annex();
    for path in ["main/fiber", "backup/fiber"] {
        site.annex_daemon().wait_for_log(
            &["uplink state", &format!("uplink={path}"), "to=\"up\""],
            Duration::from_secs(30),
        )?;
    }
    let dc_main =
        site.dcn
            .wait_dc_route(SITE_HOST, Some("main"), started, Duration::from_secs(10))?;
    site.dcn.wait_dc_med(
        SITE_LAN,
        "hub_backup",
        Some(1000),
        started,
        Duration::from_secs(10),
    )?;
    println!(
        "   both hubs' sessions up; the dc routes annex-1's LAN via hub-main {dc_main:.1?} \
         after the annex started"
    );
    show(
        &site.dcn.dc,
        "dc: its kernel routes learnt by BGP (annex-1's LAN and tunnel address)",
        &["route", "show", "proto", "bird"],
    );
    show(
        &site.dcn.main.ns,
        "hub-main: what townlink wrote for BIRD (metric 100: attached here)",
        &["route", "show", "table", "116"],
    );
    show(
        &site.dcn.backup.ns,
        "hub-backup: (metric 1000: a live session, not attached)",
        &["route", "show", "table", "116"],
    );
    print_status("annex-1", &site.annex_socket());

    title("the backup site: hub-main's townlink crashes (SIGKILL)");
    let stream = UdpStream::start(&site.annex.lan, echo, 50);
    stream
        .wait_for_echoes(50, Duration::from_secs(20))
        .map_err(|e| format!("the stream through hub-main does not flow: {e}"))?;
    println!(
        "   a LAN host of annex-1 sends 50 UDP packets/s to the records server, which echoes them"
    );
    let cut = Instant::now();
    site.main.kill();
    println!("   kill -KILL <hub-main's townlink>   (its BIRD stays up)");
    let dc_took = site
        .dcn
        .wait_dc_route(SITE_HOST, Some("backup"), cut, Duration::from_secs(2))?;
    let med_took = site.dcn.wait_dc_med(
        SITE_LAN,
        "hub_backup",
        Some(100),
        cut,
        Duration::from_secs(5),
    )?;
    stream
        .wait_for_echoes(100, Duration::from_secs(20))
        .map_err(|e| format!("the stream did not resume through hub-backup: {e}"))?;
    let gap = stream.longest_gap_since(cut);
    println!(
        "   the stream resumed through hub-backup; longest gap users saw: {gap:.0?} \
         (the tests' bound: 2 s)"
    );
    println!(
        "   the dc's route to annex-1's LAN moved to hub-backup {dc_took:.0?} after the crash; \
         hub-backup announced it as attached (MED 100) after {med_took:.0?}"
    );
    let line = site.annex_daemon().wait_for_log(
        &["failover from=main/", "to=backup/"],
        Duration::from_secs(2),
    )?;
    println!("   annex-1: {}", switch_text(&line));
    show(
        &site.dcn.dc,
        "dc: its route now",
        &["route", "show", "proto", "bird"],
    );
    show(
        &site.dcn.backup.ns,
        "hub-backup: table 116 now (metric 100: attached here)",
        &["route", "show", "table", "116"],
    );
    print_status("annex-1", &site.annex_socket());
    print_status("hub-backup", &site.backup.socket);
    print_metrics(
        &site.annex.ns,
        "annex-1",
        &["townlink_uplink_active{", "townlink_failovers_total{"],
    )?;
    print_metrics(
        &site.dcn.backup.ns,
        "hub-backup",
        &["townlink_sites_attached"],
    )?;

    title("the backup site: hub-main's townlink back, the annex returns after the hold-down");
    let restarted = Instant::now();
    site.start_main();
    println!(
        "   hub-main's townlink started again (up after {:.1?})",
        restarted.elapsed()
    );
    // Every change of the annex's hub (its route to the records network)
    // and of the dc's route, polled every 10 ms until both are back on
    // hub-main, then 3 s more to see that nothing flaps.
    let mut annex_changes = Vec::new();
    let mut dc_changes = Vec::new();
    let (mut annex_was, mut dc_was) = (site.annex_hub(), site.dcn.dc_route(SITE_HOST));
    let mut back: Option<Instant> = None;
    loop {
        let (annex_now, dc_now) = (site.annex_hub(), site.dcn.dc_route(SITE_HOST));
        if annex_now != annex_was {
            annex_changes.push((restarted.elapsed(), annex_now));
            annex_was = annex_now;
        }
        if dc_now != dc_was {
            dc_changes.push((restarted.elapsed(), dc_now));
            dc_was = dc_now;
        }
        match back {
            None if annex_now == "main" && dc_now == Some("main") => back = Some(Instant::now()),
            Some(t) if t.elapsed() >= Duration::from_secs(3) => break,
            None if restarted.elapsed() > Duration::from_secs(60) => {
                return Err(format!(
                    "annex-1 and the dc not back on hub-main 60 s after its restart \
                     (annex on {annex_now:?}, dc on {dc_now:?})"
                ));
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (Some((annex_back, _)), Some((dc_back, _))) = (annex_changes.last(), dc_changes.last())
    else {
        return Err("no change of hub seen".to_string());
    };
    println!(
        "   annex-1 back on hub-main {annex_back:.1?} after hub-main's restart (its path healthy \
         for the 10 s hold-down); the dc's route back via hub-main at {dc_back:.1?}; \
         changes seen: annex {}, dc {} (once each, no flapping)",
        annex_changes.len(),
        dc_changes.len()
    );
    if let Some(line) = site
        .annex_daemon()
        .log_lines(&["failover from=backup/", "to=main/"])
        .last()
    {
        println!("   annex-1: {}", switch_text(line));
    }
    show(
        &site.dcn.dc,
        "dc: its route now",
        &["route", "show", "proto", "bird"],
    );
    stream
        .wait_for_echoes(50, Duration::from_secs(5))
        .map_err(|e| format!("the stream does not flow through hub-main again: {e}"))?;
    println!(
        "   the stream flows through hub-main again; longest gap since the restart: {:.0?}",
        stream.longest_gap_since(restarted)
    );
    drop(stream);

    title("the backup site: stopping everything");
    let mut stopped = Vec::new();
    if let Some(d) = site.annex_runs.last_mut() {
        stopped.push(("annex-1's townlink", d.stop(Duration::from_secs(10))));
    }
    for (who, hub) in [
        ("hub-main's townlink", &mut site.main),
        ("hub-backup's townlink", &mut site.backup),
    ] {
        if let Some(d) = hub.runs.last_mut() {
            stopped.push((who, d.stop(Duration::from_secs(10))));
        }
    }
    for (who, bird) in [
        ("dc's BIRD", &mut site.dcn.dc_bird),
        ("hub-main's BIRD", &mut site.dcn.main.bird),
        ("hub-backup's BIRD", &mut site.dcn.backup.bird),
    ] {
        stopped.push((who, bird.stop(Duration::from_secs(10))));
    }
    for (who, status) in &stopped {
        println!("   {who} exited: {status}");
    }
    let prefix = site.dcn.prefix.clone();
    drop(site);
    let left = std::fs::read_dir("/run/netns")
        .map(|dir| {
            dir.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .count()
        })
        .unwrap_or(0);
    println!("   namespaces removed ({left} of this site left)");
    if let Some((who, status)) = stopped.iter().find(|(_, s)| !s.success()) {
        return Err(format!("{who} did not stop cleanly: {status}"));
    }
    if left != 0 {
        return Err(format!("{left} namespaces named {prefix}-* are left"));
    }
    title("done");
    Ok(())
}

/// Ctrl-C (and SIGTERM, SIGHUP): the demo stops what it started and
/// removes its namespaces before it exits (130), wherever it was.
///
/// A handler (reset to the default in children at exec, so townlink and
/// BIRD keep theirs) writes the signal's number to a pipe; one thread
/// reads it, sends SIGTERM to the demo's own children (by PID: townlink,
/// BIRD), SIGKILL to those still running 5 s later, deletes the
/// namespaces named after this process (`tlPID-*`, as the test bed names
/// them) and the directories registered here.
mod interrupt {
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    static INTERRUPTED: AtomicBool = AtomicBool::new(false);
    static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    /// The pipe's write end, for the handler.
    static PIPE: AtomicI32 = AtomicI32::new(-1);

    extern "C" fn on_signal(sig: libc::c_int) {
        let byte = sig as u8;
        // SAFETY: write(2) is async-signal-safe; one byte from a local.
        unsafe { libc::write(PIPE.load(Ordering::Relaxed), (&raw const byte).cast(), 1) };
    }

    /// Call first in `main`.
    pub fn install() {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            eprintln!("warning: no pipe for the signal handler: Ctrl-C will not clean up");
            return;
        }
        PIPE.store(fds[1], Ordering::Relaxed);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: a zeroed sigaction with a handler that only writes
            // to the pipe.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(sig, &action, std::ptr::null_mut());
            }
        }
        // Once interrupted, what fails in the main thread (its commands
        // and children are going away) is no news.
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !interrupted() {
                report(info)
            }
        }));
        let read_end = fds[0];
        std::thread::spawn(move || {
            let mut byte = 0u8;
            loop {
                // SAFETY: reads one byte into a local.
                let n = unsafe { libc::read(read_end, (&raw mut byte).cast(), 1) };
                if n == 1 {
                    break;
                }
                if n < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                return;
            }
            INTERRUPTED.store(true, Ordering::SeqCst);
            // From here on, only this thread speaks: what the main thread
            // still prints (its commands and daemons going away under it)
            // goes to /dev/null.
            let _ = std::io::stdout().flush();
            let mut out = quiet_others();
            let _ = writeln!(
                out,
                "\n\x1b[1minterrupted\x1b[0m (signal {byte}): stopping what the demo started, \
                 removing its namespaces"
            );
            clean_up();
            let _ = writeln!(out, "   done: nothing of the demo is left");
            std::process::exit(130);
        });
    }

    /// Points stdout and stderr at /dev/null; returns the old stdout.
    fn quiet_others() -> Box<dyn Write> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: dup of our own stdout; the new descriptor is owned by
        // the File.
        let saved = unsafe { libc::dup(1) };
        let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
            return Box::new(std::io::stdout());
        };
        if saved < 0 {
            return Box::new(std::io::stdout());
        }
        // SAFETY: dup2 onto the standard descriptors of this process.
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(null.as_raw_fd(), 2);
        }
        Box::new(unsafe { std::fs::File::from_raw_fd(saved) })
    }

    pub fn interrupted() -> bool {
        INTERRUPTED.load(Ordering::SeqCst)
    }

    /// A directory to remove when interrupted.
    pub fn register_dir(dir: &Path) {
        DIRS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(dir.to_path_buf());
    }

    /// When interrupted, the other thread cleans up and exits: wait for it.
    pub fn wait_if_interrupted() {
        while interrupted() {
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// The PIDs of this process's children still running (not zombies).
    fn children() -> Vec<i32> {
        let me = std::process::id().to_string();
        let Ok(proc_dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        proc_dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                // "PID (comm) STATE PPID ...": comm may hold spaces.
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    return false;
                };
                let Some((_, rest)) = stat.rsplit_once(')') else {
                    return false;
                };
                let mut fields = rest.split_whitespace();
                let state = fields.next();
                fields.next() == Some(me.as_str()) && state != Some("Z")
            })
            .collect()
    }

    fn clean_up() {
        let kill = |sig| {
            for pid in children() {
                // SAFETY: a signal to a child of ours, by PID.
                unsafe { libc::kill(pid, sig) };
            }
        };
        kill(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !children().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        kill(libc::SIGKILL);
        let prefix = format!("tl{}-", std::process::id());
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            for name in dir.flatten().map(|e| e.file_name()) {
                if name.to_string_lossy().starts_with(&prefix) {
                    let _ = std::process::Command::new("ip")
                        .args(["netns", "del"])
                        .arg(&name)
                        .status();
                }
            }
        }
        for dir in DIRS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

//! Failover benchmark (not a test), on the default settings but for flap
//! damping, which is off (`max_holddown` = `holddown`, no `probation`) so
//! that every cut of the series is measured alike:
//! - EVENTS fiber blackholes (default 20): the outage gap seen by a LAN
//!   stream of 50 packets/s, and the detection time (blackhole → the
//!   tunnel's route on 4G);
//! - LOSS_MINUTES minutes (default 10; or LOSS_SECONDS seconds) of 2 %
//!   random loss on the fiber: false switches;
//! - over that same time, with the 4G on standby: the bytes the 4G uplink
//!   spends on probing, counted by iptables in the carrier's namespace
//!   (IP bytes, both directions), per hour and per 30-day month.
//!
//! Exits non-zero when a blackhole causes no switch, or when anything it
//! needs fails (a daemon that does not start, a stream that gets no echo).
//!
//! Run it with `sudo scripts/bench-failover`; CI runs it with EVENTS=1
//! LOSS_SECONDS=10.

mod testbed;

use std::time::{Duration, Instant};

use testbed::{udp_echo_server, Impairment, Options, UdpStream, Wan, PROBE_PORT, RECORDS};

fn env(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: expected a whole number")),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// IP bytes of probe traffic through the 4G carrier for annex 1, both directions.
fn probe_bytes_4g(wan: &Wan) -> u64 {
    let out = wan
        .isp_4g
        .exec(&["iptables", "-L", "FORWARD", "-v", "-x", "-n"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.contains(&format!("dpt:{PROBE_PORT}")) || l.contains(&format!("spt:{PROBE_PORT}"))
        })
        .filter_map(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|b| b.parse::<u64>().ok())
        })
        .sum()
}

fn main() {
    // The WAN is dropped (daemons stopped, namespaces removed) when `bench`
    // returns, before the process exits.
    std::process::exit(bench());
}

/// Runs the benchmark; 0 when every blackhole caused a switch.
fn bench() -> i32 {
    let events = env("EVENTS", 20) as usize;
    let loss_seconds = env("LOSS_SECONDS", 60 * env("LOSS_MINUTES", 10));
    // Flap damping off for this run (the hold-down stays at its base, no
    // probation): 20 cuts a few seconds apart are what damping exists to
    // calm, and would otherwise keep the fiber out for minutes after the
    // third. Detection and the gap do not depend on it; the loss phase's
    // rules (SLA window, thresholds) are the defaults.
    let options = Options {
        annex_failover: "max_holddown = \"10s\"\nprobation = \"0s\"\n".into(),
        ..Options::default()
    };
    let mut wan = Wan::build_with(1, &options);
    // Counting rules (no target: they only count) for the probe traffic.
    let port = PROBE_PORT.to_string();
    wan.isp_4g.exec(&[
        "iptables", "-I", "FORWARD", "-i", "a1", "-p", "udp", "--dport", &port,
    ]);
    wan.isp_4g.exec(&[
        "iptables", "-I", "FORWARD", "-o", "a1", "-p", "udp", "--sport", &port,
    ]);
    let echo = udp_echo_server(&wan.records, &format!("{RECORDS}:7002"));
    wan.start_hub();
    let annex = wan.start_annex(1);
    for uplink in ["fiber", "lte"] {
        wan.daemons[annex]
            .wait_for_log(
                &["uplink state", &format!("uplink={uplink}"), "to=\"up\""],
                Duration::from_secs(30),
            )
            .expect("uplinks up");
    }
    // The 4G is up, so its probes went through the carrier: if the counting
    // rules saw none, the probe-bytes figure below would be a silent 0.
    if probe_bytes_4g(&wan) == 0 {
        eprintln!("error: no probe bytes counted on the 4G although it is up: the counting rules match nothing");
        return 1;
    }
    let stream = UdpStream::start(&wan.annex(1).lan, echo, 50);
    stream
        .wait_for_echoes(50, Duration::from_secs(20))
        .expect("stream flows");

    println!("== {events} fiber blackholes (default settings but flap damping off, 50 packets/s LAN stream)");
    let mut gaps = Vec::new();
    let mut detections = Vec::new();
    for i in 0..events {
        let cut = Instant::now();
        let blackhole = Impairment::blackhole(&wan.isp_fiber, "a1");
        let Ok(switched) = wan.wait_for_uplink("lte0", Duration::from_secs(10)) else {
            println!("   event {i}: no switch within 10 s");
            continue;
        };
        stream
            .wait_for_echoes(100, Duration::from_secs(20))
            .expect("stream resumes on 4G");
        let gap = stream.longest_gap_since(cut);
        let detection = switched - cut;
        println!(
            "   event {:2}: gap {:>7}, detection {:>7}",
            i + 1,
            ms(gap),
            ms(detection)
        );
        gaps.push(gap);
        detections.push(detection);
        drop(blackhole);
        wan.wait_for_uplink("fiber0", Duration::from_secs(60))
            .expect("back on fiber");
        // Let the fiber's window fill with fresh samples before the next cut.
        std::thread::sleep(Duration::from_secs(3));
    }
    gaps.sort();
    detections.sort();

    println!("== {loss_seconds} s of 2 % random loss on the fiber (4G on standby)");
    let switches_before = wan.daemons[annex].log_lines(&["failover from="]).len();
    let bytes_before = probe_bytes_4g(&wan);
    let started = Instant::now();
    let lossy = Impairment::loss(&wan.isp_fiber, "a1", 0.02);
    let mut false_switches = 0;
    while started.elapsed() < Duration::from_secs(loss_seconds) {
        std::thread::sleep(Duration::from_secs(1));
        if wan.annex(1).tunnel_uplink() != "fiber0" {
            false_switches += 1;
            let _ = wan.wait_for_uplink("fiber0", Duration::from_secs(60));
        }
    }
    drop(lossy);
    let elapsed = started.elapsed();
    let bytes = probe_bytes_4g(&wan) - bytes_before;
    let switches = wan.daemons[annex].log_lines(&["failover from="]).len() - switches_before;
    let per_hour = bytes as f64 * 3600.0 / elapsed.as_secs_f64();
    let per_month_mb = per_hour * 24.0 * 30.0 / 1e6;

    let n = gaps.len();
    println!();
    println!("failover benchmark, default settings, flap damping off ({n} blackhole events)");
    println!(
        "load average (1 min) at the end: {} ({} cores)",
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|t| t.split_whitespace().next().map(str::to_string))
            .unwrap_or_else(|| "?".into()),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9}   target",
        "", "median", "p95", "max"
    );
    if n > 0 {
        println!(
            "{:<34} {:>9} {:>9} {:>9}   median < 1 s: {}",
            "outage gap seen by the LAN stream",
            ms(percentile(&gaps, 0.5)),
            ms(percentile(&gaps, 0.95)),
            ms(*gaps.last().expect("n > 0")),
            if percentile(&gaps, 0.5) < Duration::from_secs(1) {
                "met"
            } else {
                "NOT met"
            }
        );
        println!(
            "{:<34} {:>9} {:>9} {:>9}",
            "detection (cut -> route on 4G)",
            ms(percentile(&detections, 0.5)),
            ms(percentile(&detections, 0.95)),
            ms(*detections.last().expect("n > 0")),
        );
    }
    println!(
        "false switches in {:.1} min of 2 % loss: {} (route checks) / {} (log)   target 0: {}",
        elapsed.as_secs_f64() / 60.0,
        false_switches,
        switches,
        if false_switches == 0 && switches == 0 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "standby 4G probing: {bytes} bytes in {:.0} s = {:.0} bytes/h = {:.1} MB/month   target < 30: {}",
        elapsed.as_secs_f64(),
        per_hour,
        per_month_mb,
        if per_month_mb < 30.0 { "met" } else { "NOT met" }
    );
    if n < events {
        println!("{} events did not switch", events - n);
        return 1;
    }
    0
}

//! Failover from fiber to 4G and back, as a LAN user's traffic sees it.
//! Bounds are generous: CI machines are noisy.

mod testbed;

use std::time::{Duration, Instant};

use testbed::{udp_echo_server, Impairment, Options, UdpStream, Wan, RECORDS};

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
        .wait_for_log(
            &["failover", "from=fiber", "to=lte"],
            Duration::from_secs(1),
        )
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

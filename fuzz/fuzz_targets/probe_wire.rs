//! The probe datagrams (`src/probe/wire.rs`): what the hub's responder does
//! with any datagram of an annex (`echo_for`, `Report::parse`), and what an
//! annex's prober does with any datagram of the hub (`parse_echo`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use townlink::probe::wire::{self, Report};
use townlink::sites::attachment::{self, WINDOW_MAX, WINDOW_MIN};

fuzz_target!(|data: &[u8]| {
    if let Some(echo) = wire::echo_for(data) {
        // Only a well-formed probe is echoed, with its sequence and stamp.
        let p = wire::parse_echo(&echo).expect("an echo parses");
        assert_eq!(wire::probe(p).as_slice(), data);
    }
    if let Some(report) = Report::parse(data) {
        assert!(wire::echo_for(data).is_none(), "a report is not a probe");
        // A report read names its active uplink, and its active path when
        // it lists paths (version 2); bounded.
        assert!(report.uplinks.iter().any(|u| u.name == report.active));
        assert!(report.uplinks.len() <= wire::MAX_REPORTED_UPLINKS);
        assert!(report.paths.len() <= wire::MAX_REPORTED_PATHS);
        assert!(
            report.paths.is_empty()
                || report
                    .paths
                    .iter()
                    .any(|p| p.name == report.active && p.hub == report.hub),
            "the active path is listed"
        );
        // Whatever interval it states, the hub's window is bounded.
        let window = attachment::fresh_window(report.every());
        assert!((WINDOW_MIN..=WINDOW_MAX).contains(&window), "{window:?}");
        if let Some(again) = report.encode() {
            assert_eq!(Report::parse(&again), Some(report.clone()), "round trip");
        }
        // What an annex sends when its paths do not fit still reads, and
        // still tells its receiver whether it is the active hub.
        if let Some(fitted) = report.encode_fitting() {
            let fitted = Report::parse(&fitted).expect("a fitted report reads");
            assert_eq!(fitted.here, report.here, "`here` is kept");
            assert_eq!(fitted.every_ms, report.every_ms, "`every_ms` is kept");
            if report.here.is_some() {
                assert_eq!(fitted.names_receiver(), report.names_receiver());
            }
        }
    }
    let _ = wire::parse_echo(data);
});

//! The probe datagrams (RFC 9221 QUIC datagrams), version 1.
//!
//! ```text
//! probe (annex → hub): 0x01 | seq: u64 BE | stamp: u64 BE   (17 bytes)
//! echo  (hub → annex): 0x02 | seq: u64 BE | stamp: u64 BE   (the probe, type changed)
//! report (annex → hub): 0x03 | JSON of Report                 (at most 1000 bytes)
//! hello (annex → hub): 0x04 | 16 zero bytes                   (17 bytes)
//! instance (hub → annex): 0x05 | instance: u64 BE | 8 zero bytes (17 bytes)
//! ```
//! `stamp` is the annex's send time in microseconds of its own monotonic
//! clock; the hub never interprets it, nor does the annex trust it: the
//! RTT is measured from the send time the annex kept. `instance` is a
//! random number the hub's responder draws at each start: an annex that
//! sees it change knows the hub restarted (and lost every WireGuard
//! session), which a reconnection alone does not tell. The hub answers a
//! hello with its instance, same size: no amplification. A hub without
//! hello support counts it as garbage; an annex ignores datagrams it does
//! not know. A report tells the hub the annex's
//! active path (its hub and uplink) and what its probes measure
//! ([`Report`], versioned); the hub trusts the site
//! name of the connection's certificate, never a name in the report.
//! Anything else is garbage: the hub drops and counts it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sites::Name;

pub const PROBE: u8 = 0x01;
pub const ECHO: u8 = 0x02;
pub const REPORT: u8 = 0x03;
pub const HELLO: u8 = 0x04;
pub const INSTANCE: u8 = 0x05;
pub const LEN: usize = 17;
/// Largest report: fits a QUIC datagram on a 1280-byte path.
pub const MAX_REPORT: usize = 1000;
/// Most uplinks a report may list (bounds the hub's metric series per site).
pub const MAX_REPORTED_UPLINKS: usize = 8;
/// Most paths a report may list.
pub const MAX_REPORTED_PATHS: usize = 16;
/// The version of the reports this annex sends.
pub const REPORT_VERSION: u32 = 2;

fn version_1() -> u32 {
    1
}

/// An annex's report to the hub, as JSON (fields are added, never
/// changed: a hub ignores what it does not know, and reads a report
/// without what it knows as an older annex's).
///
/// - version 1 (`v` absent): `active` (the uplink) and `uplinks`;
/// - version 2: `v`, `hub` (the active hub, as the annex's `[[hub]] name`)
///   and, with several hubs, `paths`: every hub over every uplink; and
///   `here`, whether the hub receiving the report is the annex's active
///   hub (an annex with several hubs sends a report to each: the hub does
///   not know the name the annex gives it). Without `here` (an annex with
///   one hub, or from before it), a report without `paths` means "here".
///   Also `every_ms`, the active path's probe interval: the hub's
///   freshness window follows it (absent: an annex from before it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    #[serde(default = "version_1")]
    pub v: u32,
    /// The active path's uplink.
    pub active: String,
    /// The active path's hub (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// Every uplink, as seen through the active hub.
    pub uplinks: Vec<Uplink>,
    /// Every path, each with its `hub` (version 2, several hubs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<Uplink>,
    /// Whether the receiving hub is the active one (version 2, several
    /// hubs; see [`Report::names_receiver`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub here: Option<bool>,
    /// The active path's probe interval, in milliseconds (version 2,
    /// optional): how often the active hub should hear the annex (see
    /// [`Report::every`]). Absent from an annex from before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
}

impl Default for Report {
    fn default() -> Report {
        Report {
            v: REPORT_VERSION,
            active: String::new(),
            hub: None,
            uplinks: Vec::new(),
            paths: Vec::new(),
            here: None,
            every_ms: None,
        }
    }
}

/// One uplink (or path) in a report: its name, its state and what its
/// probes measure. The hub's status view keeps its own copy
/// (`telemetry::status::ReportedUplink`): this is the wire format.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Uplink {
    pub name: String,
    /// A path's hub (in `paths`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    pub state: String,
    pub rtt_ms: Option<f64>,
    pub loss: Option<f64>,
}

impl Uplink {
    fn well_formed(&self) -> bool {
        let finite = |v: Option<f64>| v.is_none_or(|v| v.is_finite() && v >= 0.0);
        Name::new(&self.name).is_ok()
            && self.hub.as_deref().is_none_or(|h| Name::new(h).is_ok())
            && Name::new(&self.state).is_ok()
            && finite(self.rtt_ms)
            && finite(self.loss)
            && self.loss.is_none_or(|l| l <= 1.0)
    }
}

impl Report {
    /// Whether the report says that the hub receiving it is the annex's
    /// active hub: its `here`; without it, a report that lists no paths
    /// (an annex with one hub, or a version-1 report). A report with
    /// paths but no `here` (an annex from before `here`) cannot tell.
    pub fn names_receiver(&self) -> bool {
        self.here.unwrap_or(self.paths.is_empty())
    }

    /// The active path's probe interval the report states (any `u64` of
    /// milliseconds reads: the hub bounds what it derives from it, see
    /// `sites::attachment::fresh_window`); `None`: not stated.
    pub fn every(&self) -> Option<Duration> {
        self.every_ms.map(Duration::from_millis)
    }

    /// The datagram; `None` if it would be larger than [`MAX_REPORT`].
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut b = vec![REPORT];
        serde_json::to_writer(&mut b, self).ok()?;
        (b.len() <= MAX_REPORT).then_some(b)
    }

    /// The datagram, without the paths if they do not fit (many hubs and
    /// uplinks with long names); `None` if even that is too large.
    pub fn encode_fitting(&self) -> Option<Vec<u8>> {
        self.encode().or_else(|| {
            Report {
                paths: Vec::new(),
                ..self.clone()
            }
            .encode()
        })
    }

    /// A well-formed report: plain names, sane numbers, the active uplink
    /// listed (and the active path, when paths are).
    pub fn parse(b: &[u8]) -> Option<Report> {
        if b.len() > MAX_REPORT || b.first() != Some(&REPORT) {
            return None;
        }
        let r: Report = serde_json::from_slice(&b[1..]).ok()?;
        let ok = r.v >= 1
            && r.uplinks.len() <= MAX_REPORTED_UPLINKS
            && r.paths.len() <= MAX_REPORTED_PATHS
            && r.uplinks.iter().any(|u| u.name == r.active)
            && r.hub.as_deref().is_none_or(|h| Name::new(h).is_ok())
            && r.uplinks.iter().all(Uplink::well_formed)
            && r.paths.iter().all(|p| p.hub.is_some() && p.well_formed())
            && (r.paths.is_empty() || r.paths.iter().any(|p| p.name == r.active && p.hub == r.hub));
        ok.then_some(r)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub seq: u64,
    pub stamp_us: u64,
}

fn encode(kind: u8, p: Probe) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[0] = kind;
    b[1..9].copy_from_slice(&p.seq.to_be_bytes());
    b[9..17].copy_from_slice(&p.stamp_us.to_be_bytes());
    b
}

fn decode(kind: u8, b: &[u8]) -> Option<Probe> {
    if b.len() != LEN || b[0] != kind {
        return None;
    }
    Some(Probe {
        seq: u64::from_be_bytes(b[1..9].try_into().ok()?),
        stamp_us: u64::from_be_bytes(b[9..17].try_into().ok()?),
    })
}

pub fn probe(p: Probe) -> [u8; LEN] {
    encode(PROBE, p)
}

pub fn parse_echo(b: &[u8]) -> Option<Probe> {
    decode(ECHO, b)
}

/// The hub's answer to a datagram: the echo of a well-formed probe, or
/// `None` for garbage.
pub fn echo_for(b: &[u8]) -> Option<[u8; LEN]> {
    decode(PROBE, b).map(|p| encode(ECHO, p))
}

/// The annex's question for the hub's instance.
pub fn hello() -> [u8; LEN] {
    encode(
        HELLO,
        Probe {
            seq: 0,
            stamp_us: 0,
        },
    )
}

/// The hub's answer to a hello: its instance; `None` if `b` is no hello.
pub fn instance_for(b: &[u8], instance: u64) -> Option<[u8; LEN]> {
    decode(HELLO, b)?;
    Some(encode(
        INSTANCE,
        Probe {
            seq: instance,
            stamp_us: 0,
        },
    ))
}

/// What the annex accepts from the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromHub {
    Echo(Probe),
    Instance(u64),
}

pub fn parse_from_hub(b: &[u8]) -> Option<FromHub> {
    if let Some(p) = decode(ECHO, b) {
        return Some(FromHub::Echo(p));
    }
    decode(INSTANCE, b).map(|p| FromHub::Instance(p.seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_round_trip() {
        let p = Probe {
            seq: 42,
            stamp_us: 1_234_567,
        };
        let echo = echo_for(&probe(p)).unwrap();
        assert_eq!(parse_echo(&echo), Some(p));
        assert_eq!(parse_echo(&probe(p)), None, "a probe is not an echo");
    }

    #[test]
    fn report_round_trip_and_refusals() {
        let up = |name: &str| Uplink {
            name: name.into(),
            state: "up".into(),
            rtt_ms: Some(12.5),
            loss: Some(0.01),
            ..Uplink::default()
        };
        let r = Report {
            active: "lte".into(),
            uplinks: vec![up("fiber"), up("lte")],
            ..Report::default()
        };
        let b = r.encode().expect("small report");
        assert_eq!(b[0], REPORT);
        assert_eq!(Report::parse(&b), Some(r.clone()));
        // Not a probe: no echo for it.
        assert_eq!(echo_for(&b), None);
        // Truncated, active not listed, bad name, bad loss, too many uplinks.
        assert_eq!(Report::parse(&b[..b.len() - 1]), None);
        let mut bad = r.clone();
        bad.active = "dsl".into();
        assert_eq!(Report::parse(&bad.encode().unwrap()), None);
        let mut bad = r.clone();
        bad.uplinks[0].name = "Fiber Optic".into();
        assert_eq!(Report::parse(&bad.encode().unwrap()), None);
        let mut bad = r.clone();
        bad.uplinks[0].loss = Some(1.5);
        assert_eq!(Report::parse(&bad.encode().unwrap()), None);
        let mut bad = r;
        bad.uplinks = (0..9).map(|i| up(&format!("u{i}"))).collect();
        bad.active = "u0".into();
        assert_eq!(Report::parse(&bad.encode().unwrap()), None);
    }

    #[test]
    fn a_report_names_the_active_path_and_an_old_one_still_reads() {
        let path = |hub: &str, name: &str, state: &str| Uplink {
            name: name.into(),
            hub: Some(hub.into()),
            state: state.into(),
            rtt_ms: Some(0.3),
            loss: Some(0.0),
        };
        let r = Report {
            active: "fiber".into(),
            hub: Some("backup".into()),
            uplinks: vec![path("backup", "fiber", "up"), path("backup", "lte", "up")],
            paths: vec![
                path("main", "fiber", "down"),
                path("main", "lte", "down"),
                path("backup", "fiber", "up"),
                path("backup", "lte", "up"),
            ],
            ..Report::default()
        };
        let b = r.encode().expect("small report");
        let text = std::str::from_utf8(&b[1..]).unwrap();
        assert!(
            text.starts_with("{\"v\":2,\"active\":\"fiber\",\"hub\":\"backup\","),
            "{text}"
        );
        assert_eq!(Report::parse(&b), Some(r.clone()));
        // A version-1 report (an annex from before several hubs).
        let mut old = vec![REPORT];
        old.extend_from_slice(
            br#"{"active":"fiber","uplinks":[{"name":"fiber","state":"up","rtt_ms":1.5,"loss":0.0}]}"#,
        );
        let read = Report::parse(&old).expect("a version-1 report reads");
        assert_eq!((read.v, read.hub, read.paths.len()), (1, None, 0));
        // What a version-1 hub reads of a version-2 report: its own fields.
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct V1 {
            active: String,
            uplinks: Vec<serde_json::Value>,
        }
        let v1: V1 = serde_json::from_slice(&b[1..]).expect("a version-1 hub reads it");
        assert_eq!(v1.active, "fiber");
        // Refused: a path without its hub, a bad hub name, the active
        // path not among the paths, too many paths.
        let mut bad = r.clone();
        bad.paths[0].hub = None;
        assert_eq!(Report::parse(&bad.encode().unwrap()), None);
        let mut bad = r.clone();
        bad.hub = Some("Main Hub".into());
        assert_eq!(Report::parse(&bad.encode().unwrap()), None);
        let mut bad = r.clone();
        bad.hub = Some("main".into());
        bad.paths
            .retain(|p| p.hub.as_deref() != Some("main") || p.name != "fiber");
        assert_eq!(Report::parse(&bad.encode().unwrap()), None);
        let many = |n: usize| {
            let paths: Vec<String> = (0..n)
                .map(|i| format!(r#"{{"name":"f","hub":"h{i}","state":"up"}}"#))
                .collect();
            let mut b = vec![REPORT];
            b.extend_from_slice(
                format!(
                    r#"{{"v":2,"active":"f","hub":"h0","uplinks":[{{"name":"f","state":"up"}}],"paths":[{}]}}"#,
                    paths.join(",")
                )
                .as_bytes(),
            );
            assert!(b.len() <= MAX_REPORT);
            b
        };
        assert!(Report::parse(&many(MAX_REPORTED_PATHS)).is_some());
        assert_eq!(Report::parse(&many(MAX_REPORTED_PATHS + 1)), None);
        // Paths that do not fit are left out, the rest is sent.
        let mut big = r;
        big.paths = (0..16)
            .map(|i| path(&format!("hub-with-a-long-name-{i}"), "fiber", "up"))
            .collect();
        big.hub = Some("hub-with-a-long-name-0".into());
        assert_eq!(big.encode(), None);
        let fitted = Report::parse(&big.encode_fitting().expect("fits without paths")).unwrap();
        assert!(fitted.paths.is_empty());
        assert_eq!(fitted.hub.as_deref(), Some("hub-with-a-long-name-0"));
    }

    #[test]
    fn a_report_says_whether_its_receiver_is_the_active_hub() {
        let path = |hub: &str, name: &str| Uplink {
            name: name.into(),
            hub: Some(hub.into()),
            state: "up".into(),
            ..Uplink::default()
        };
        let mut r = Report {
            active: "fiber".into(),
            hub: Some("main".into()),
            uplinks: vec![path("main", "fiber")],
            paths: vec![path("main", "fiber"), path("backup", "fiber")],
            here: Some(false),
            ..Report::default()
        };
        let b = r.encode().unwrap();
        let text = std::str::from_utf8(&b[1..]).unwrap();
        assert!(text.ends_with(",\"here\":false}"), "{text}");
        let read = Report::parse(&b).unwrap();
        assert_eq!(read, r);
        assert!(!read.names_receiver());
        r.here = Some(true);
        assert!(Report::parse(&r.encode().unwrap())
            .unwrap()
            .names_receiver());
        // `here` survives the fitting of a report too large for its paths.
        let fitted = Report {
            paths: Vec::new(),
            ..r.clone()
        };
        assert!(fitted.names_receiver());
        r.here = Some(false);
        let fitted = Report::parse(&r.encode_fitting().unwrap()).unwrap();
        assert!(!fitted.names_receiver());
        // Without `here`: a report without paths (one hub, or version 1)
        // names its receiver; one with paths (an annex from before `here`)
        // does not.
        r.here = None;
        assert!(!r.names_receiver());
        r.paths.clear();
        assert!(r.names_receiver());
        let mut old = vec![REPORT];
        old.extend_from_slice(br#"{"active":"fiber","uplinks":[{"name":"fiber","state":"up"}]}"#);
        assert!(Report::parse(&old).unwrap().names_receiver());
    }

    #[test]
    fn a_report_states_the_active_paths_interval_and_reads_without_it() {
        let r = Report {
            active: "fiber".into(),
            uplinks: vec![Uplink {
                name: "fiber".into(),
                state: "up".into(),
                ..Uplink::default()
            }],
            every_ms: Some(100),
            ..Report::default()
        };
        let b = r.encode().unwrap();
        assert!(std::str::from_utf8(&b[1..])
            .unwrap()
            .ends_with(",\"every_ms\":100}"));
        let read = Report::parse(&b).unwrap();
        assert_eq!(read.every(), Some(Duration::from_millis(100)));
        // An older annex's report: no interval.
        let mut old = vec![REPORT];
        old.extend_from_slice(
            br#"{"v":2,"active":"fiber","uplinks":[{"name":"fiber","state":"up"}],"here":true}"#,
        );
        assert_eq!(Report::parse(&old).unwrap().every(), None);
        // Any u64 reads (the hub bounds what it makes of it); what is no
        // u64 makes the report garbage, like any malformed field.
        let with = |every: &str| {
            let mut b = vec![REPORT];
            b.extend_from_slice(
                format!(
                    r#"{{"active":"f","uplinks":[{{"name":"f","state":"up"}}],"every_ms":{every}}}"#
                )
                .as_bytes(),
            );
            Report::parse(&b)
        };
        assert_eq!(
            with("18446744073709551615").unwrap().every(),
            Some(Duration::from_millis(u64::MAX))
        );
        assert_eq!(with("0").unwrap().every(), Some(Duration::ZERO));
        assert_eq!(with("-1"), None);
        assert_eq!(with("1e30"), None);
        assert_eq!(with("18446744073709551616"), None);
        // What an older hub reads: the fields it knows.
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Before {
            active: String,
            here: Option<bool>,
        }
        let before: Before = serde_json::from_slice(&b[1..]).unwrap();
        assert_eq!(before.active, "fiber");
    }

    #[test]
    fn hello_gets_the_instance_same_size() {
        let answer = instance_for(&hello(), 0xdead_beef_0123).expect("a hello");
        assert_eq!(answer.len(), hello().len());
        assert_eq!(
            parse_from_hub(&answer),
            Some(FromHub::Instance(0xdead_beef_0123))
        );
        assert_eq!(echo_for(&hello()), None, "a hello is not a probe");
        let p = Probe {
            seq: 7,
            stamp_us: u64::MAX,
        };
        assert_eq!(instance_for(&probe(p), 1), None, "a probe is not a hello");
        assert_eq!(
            parse_from_hub(&echo_for(&probe(p)).unwrap()),
            Some(FromHub::Echo(p))
        );
        assert_eq!(parse_from_hub(&hello()), None);
        assert_eq!(instance_for(&hello()[..16], 1), None);
    }

    #[test]
    fn garbage_gets_no_answer() {
        assert_eq!(echo_for(b""), None);
        assert_eq!(echo_for(&[PROBE; 16]), None);
        assert_eq!(echo_for(&[PROBE; 18]), None);
        assert_eq!(echo_for(&[0xff; LEN]), None);
        assert_eq!(
            echo_for(
                &echo_for(&probe(Probe {
                    seq: 1,
                    stamp_us: 2
                }))
                .unwrap()
            ),
            None,
            "echoes are not echoed"
        );
    }
}

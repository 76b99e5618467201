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
//! active uplink and what its probes measure; the hub trusts the site
//! name of the connection's certificate, never a name in the report.
//! Anything else is garbage: the hub drops and counts it.

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

/// An annex's report to the hub.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub active: String,
    pub uplinks: Vec<Uplink>,
}

/// One uplink in a report: its name, its state and what its probes
/// measure. The hub's status view keeps its own copy
/// (`telemetry::status::ReportedUplink`): this is the wire format.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Uplink {
    pub name: String,
    pub state: String,
    pub rtt_ms: Option<f64>,
    pub loss: Option<f64>,
}

impl Report {
    /// The datagram; `None` if it would be larger than [`MAX_REPORT`].
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut b = vec![REPORT];
        serde_json::to_writer(&mut b, self).ok()?;
        (b.len() <= MAX_REPORT).then_some(b)
    }

    /// A well-formed report: plain names, sane numbers, the active uplink listed.
    pub fn parse(b: &[u8]) -> Option<Report> {
        if b.len() > MAX_REPORT || b.first() != Some(&REPORT) {
            return None;
        }
        let r: Report = serde_json::from_slice(&b[1..]).ok()?;
        let finite = |v: Option<f64>| v.is_none_or(|v| v.is_finite() && v >= 0.0);
        let ok = r.uplinks.len() <= MAX_REPORTED_UPLINKS
            && r.uplinks.iter().any(|u| u.name == r.active)
            && r.uplinks.iter().all(|u| {
                Name::new(&u.name).is_ok()
                    && Name::new(&u.state).is_ok()
                    && finite(u.rtt_ms)
                    && finite(u.loss)
                    && u.loss.is_none_or(|l| l <= 1.0)
            });
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
        };
        let r = Report {
            active: "lte".into(),
            uplinks: vec![up("fiber"), up("lte")],
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

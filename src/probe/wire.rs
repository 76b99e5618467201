//! The probe datagrams (RFC 9221 QUIC datagrams), version 1.
//!
//! ```text
//! probe (annex → hub): 0x01 | seq: u64 BE | stamp: u64 BE   (17 bytes)
//! echo  (hub → annex): 0x02 | seq: u64 BE | stamp: u64 BE   (the probe, type changed)
//! ```
//! `stamp` is the annex's send time in microseconds of its own monotonic
//! clock; the hub never interprets it. Anything else is garbage: the hub
//! drops and counts it.

pub const PROBE: u8 = 0x01;
pub const ECHO: u8 = 0x02;
pub const LEN: usize = 17;

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

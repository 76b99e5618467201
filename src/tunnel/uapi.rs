//! The WireGuard UAPI text protocol, as boringtun 0.7.1 speaks it.
//!
//! Pure encoding and parsing, no I/O. The rules learnt from boringtun
//! (see `../shared/design.md`, traps 1-5) are enforced here:
//! keys go out in hex only; one peer per request; a peer is never modified
//! in place (the caller removes it and adds it again); `private_key`,
//! `listen_port` and `fwmark` go in that order; boringtun's
//! `last_handshake_time_sec` is an age and is turned into a point in time.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use crate::keys::{PrivateKey, PublicKey};

/// The request that reads the device state.
pub const GET: &str = "get=1\n\n";

/// Interface-level settings, sent once at start-up.
pub fn set_device(
    private_key: &PrivateKey,
    listen_port: Option<u16>,
    fwmark: Option<u32>,
) -> String {
    let mut req = format!("set=1\nprivate_key={}\n", private_key.to_hex_secret());
    if let Some(port) = listen_port {
        req.push_str(&format!("listen_port={port}\n"));
    }
    if let Some(mark) = fwmark {
        req.push_str(&format!("fwmark={mark}\n"));
    }
    req.push('\n');
    req
}

/// A peer to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    /// Persistent keepalive in seconds; 0 or `None` disables it.
    pub keepalive: Option<u16>,
}

/// Adds one peer (one peer per request: boringtun trap 2).
pub fn add_peer(peer: &PeerConfig) -> String {
    let mut req = format!("set=1\npublic_key={}\n", peer.public_key.to_hex());
    if let Some(ep) = peer.endpoint {
        req.push_str(&format!("endpoint={ep}\n"));
    }
    if let Some(k) = peer.keepalive.filter(|k| *k > 0) {
        req.push_str(&format!("persistent_keepalive_interval={k}\n"));
    }
    for ip in &peer.allowed_ips {
        req.push_str(&format!("allowed_ip={}/{}\n", ip.addr(), ip.prefix_len()));
    }
    req.push('\n');
    req
}

pub fn remove_peer(public_key: &PublicKey) -> String {
    format!("set=1\npublic_key={}\nremove=true\n\n", public_key.to_hex())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UapiError {
    #[error("the tunnel device answered errno={0} ({1})")]
    Errno(i32, String),
    #[error("the tunnel device's answer has no errno line")]
    NoErrno,
    #[error("the tunnel device's answer has a malformed line {0:?}")]
    Malformed(String),
}

/// Splits a complete answer (up to and without the final empty line) into
/// its `key=value` body; fails unless it ends with `errno=0`.
pub fn parse_answer(text: &str) -> Result<Vec<(&str, &str)>, UapiError> {
    let mut pairs = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| UapiError::Malformed(line.to_string()))?;
        pairs.push((k, v));
    }
    match pairs.pop() {
        Some(("errno", "0")) => Ok(pairs),
        Some(("errno", n)) => {
            let n: i32 = n
                .parse()
                .map_err(|_| UapiError::Malformed(format!("errno={n}")))?;
            Err(UapiError::Errno(
                n,
                std::io::Error::from_raw_os_error(n).to_string(),
            ))
        }
        _ => Err(UapiError::NoErrno),
    }
}

/// The device as `get` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceStatus {
    pub public_key: Option<PublicKey>,
    pub listen_port: Option<u16>,
    pub fwmark: Option<u32>,
    pub peers: Vec<PeerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    /// When the last handshake completed (a point in time, unlike boringtun's age).
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub keepalive: Option<u16>,
}

fn hex_key(v: &str) -> Result<PublicKey, UapiError> {
    let bad = || UapiError::Malformed(format!("key {v}"));
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(v, &mut bytes).map_err(|_| bad())?;
    PublicKey::from_bytes(bytes).map_err(|_| bad())
}

/// Parses the body of a `get` answer; `now` converts handshake ages to times.
pub fn parse_status(pairs: &[(&str, &str)], now: SystemTime) -> Result<DeviceStatus, UapiError> {
    let bad = |k: &str, v: &str| UapiError::Malformed(format!("{k}={v}"));
    let mut status = DeviceStatus::default();
    let mut age: (Option<u64>, u32) = (None, 0);
    let finish = |peer: &mut PeerStatus, age: &mut (Option<u64>, u32)| {
        if let Some(secs) = age.0.take() {
            peer.last_handshake = now.checked_sub(Duration::new(secs, age.1));
        }
        age.1 = 0;
    };
    for &(k, v) in pairs {
        match (k, status.peers.last_mut()) {
            ("own_public_key", None) => status.public_key = Some(hex_key(v)?),
            ("private_key", None) => {}
            ("listen_port", None) => status.listen_port = Some(v.parse().map_err(|_| bad(k, v))?),
            ("fwmark", None) => status.fwmark = Some(v.parse().map_err(|_| bad(k, v))?),
            ("public_key", last) => {
                if let Some(p) = last {
                    finish(p, &mut age);
                }
                status.peers.push(PeerStatus {
                    public_key: hex_key(v)?,
                    endpoint: None,
                    allowed_ips: Vec::new(),
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    keepalive: None,
                });
            }
            (_, None) => {}
            ("endpoint", Some(p)) => p.endpoint = Some(v.parse().map_err(|_| bad(k, v))?),
            ("allowed_ip", Some(p)) => p.allowed_ips.push(v.parse().map_err(|_| bad(k, v))?),
            ("rx_bytes", Some(p)) => p.rx_bytes = v.parse().map_err(|_| bad(k, v))?,
            ("tx_bytes", Some(p)) => p.tx_bytes = v.parse().map_err(|_| bad(k, v))?,
            ("persistent_keepalive_interval", Some(p)) => {
                p.keepalive = Some(v.parse().map_err(|_| bad(k, v))?)
            }
            ("last_handshake_time_sec", Some(_)) => age.0 = Some(v.parse().map_err(|_| bad(k, v))?),
            ("last_handshake_time_nsec", Some(_)) => {
                age.1 = v.parse::<u32>().map_err(|_| bad(k, v))?.min(999_999_999)
            }
            (_, Some(_)) => {}
        }
    }
    if let Some(p) = status.peers.last_mut() {
        finish(p, &mut age);
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> PublicKey {
        let mut seed = [b; 32];
        seed[0] &= 248;
        let k: PrivateKey =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, seed)
                .parse()
                .unwrap();
        k.public_key()
    }

    #[test]
    fn device_settings_come_in_the_safe_order() {
        let k: PrivateKey = "ULh948zvGUz4O0SHrUjP3M7xiCPhlWy45lN+M5ByhUY="
            .parse()
            .unwrap();
        let req = set_device(&k, Some(51820), Some(0x7400));
        let lines: Vec<&str> = req.lines().collect();
        assert_eq!(lines[0], "set=1");
        assert!(lines[1].starts_with("private_key="));
        assert_eq!(lines[1].len(), "private_key=".len() + 64);
        assert_eq!(lines[2], "listen_port=51820");
        assert_eq!(lines[3], "fwmark=29696");
        assert!(req.ends_with("\n\n"));
        assert!(
            !req.contains('+') && !req.contains("=\n\n"),
            "keys in hex, never base64"
        );
    }

    #[test]
    fn one_peer_per_request_in_hex() {
        let peer = PeerConfig {
            public_key: key(7),
            endpoint: Some("198.18.0.2:51820".parse().unwrap()),
            allowed_ips: vec![
                "10.99.0.1/32".parse().unwrap(),
                "10.50.0.0/24".parse().unwrap(),
            ],
            keepalive: Some(25),
        };
        let req = add_peer(&peer);
        assert_eq!(req.matches("public_key=").count(), 1);
        assert!(req.contains(&format!("public_key={}\n", key(7).to_hex())));
        assert!(req.contains("endpoint=198.18.0.2:51820\n"));
        assert!(req.contains("persistent_keepalive_interval=25\n"));
        assert!(req.contains("allowed_ip=10.50.0.0/24\n"));
        assert!(req.ends_with("\n\n"));
        assert_eq!(
            remove_peer(&key(7)),
            format!("set=1\npublic_key={}\nremove=true\n\n", key(7).to_hex())
        );
    }

    #[test]
    fn answers_are_checked() {
        assert_eq!(parse_answer("errno=0\n").unwrap(), vec![]);
        assert!(matches!(
            parse_answer("errno=22\n"),
            Err(UapiError::Errno(22, _))
        ));
        assert_eq!(parse_answer("listen_port=1\n"), Err(UapiError::NoErrno));
        assert!(matches!(
            parse_answer("garbage\nerrno=0\n"),
            Err(UapiError::Malformed(_))
        ));
    }

    #[test]
    fn handshake_age_becomes_a_point_in_time() {
        let text = format!(
            "own_public_key={}\nlisten_port=51820\npublic_key={}\nendpoint=198.18.11.2:40000\nallowed_ip=10.99.0.2/32\n\
             last_handshake_time_sec=5\nlast_handshake_time_nsec=0\nrx_bytes=100\ntx_bytes=200\n\
             public_key={}\nallowed_ip=10.99.0.3/32\nrx_bytes=0\ntx_bytes=0\nerrno=0\n",
            key(1).to_hex(),
            key(2).to_hex(),
            key(3).to_hex()
        );
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let pairs = parse_answer(&text).unwrap();
        let st = parse_status(&pairs, now).unwrap();
        assert_eq!(st.public_key, Some(key(1)));
        assert_eq!(st.listen_port, Some(51820));
        assert_eq!(st.peers.len(), 2);
        assert_eq!(
            st.peers[0].last_handshake,
            Some(now - Duration::from_secs(5))
        );
        assert_eq!(st.peers[0].rx_bytes, 100);
        assert_eq!(st.peers[0].tx_bytes, 200);
        assert_eq!(
            st.peers[0].endpoint,
            Some("198.18.11.2:40000".parse().unwrap())
        );
        assert_eq!(
            st.peers[1].last_handshake, None,
            "never handshaken stays None"
        );
        assert_eq!(
            st.peers[1].allowed_ips,
            vec!["10.99.0.3/32".parse::<IpNet>().unwrap()]
        );
    }
}

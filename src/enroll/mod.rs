//! Enrollment: an administrator adds a site on the hub (`townlink site
//! add`), which prints a one-time [`token`]; on the new annex, `townlink
//! join TOKEN` generates the keys locally, proves the token's secret to the
//! hub over QUIC (pinning the hub's certificate), registers its public key
//! and certificate, and writes its config. The hub keeps the sites in its
//! [`registry`] and adds or removes their peers live.
//!
//! The exchange runs on the hub's QUIC responder (same UDP port as the
//! probes), on connections with the ALPN [`ALPN`]: one bidirectional
//! stream, one JSON [`JoinRequest`], one JSON [`JoinResponse`].

pub mod hub;
pub mod join;
pub mod registry;
pub mod sync;
pub mod token;

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub const ALPN: &[u8] = crate::probe::tls::ENROLL_ALPN;
/// Largest request or response read from the other side.
pub const MAX_MESSAGE: usize = crate::probe::responder::MAX_ENROLL_MESSAGE;

/// The annex's request; its certificate is the one of the connection.
/// Its `Debug` never shows the secret, nor a site name or key that is not
/// valid (text from the network).
#[derive(Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub site: String,
    /// The token's secret, hex.
    pub secret: String,
    /// The annex's WireGuard public key (base64).
    pub public_key: String,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let site = match crate::sites::Name::new(&self.site) {
            Ok(name) => format!("{name:?}"),
            Err(_) => format!("<{} bytes, not a site name>", self.site.len()),
        };
        let key = match self.public_key.parse::<crate::keys::PublicKey>() {
            Ok(key) => key.to_string(),
            Err(_) => format!("<{} bytes, not a key>", self.public_key.len()),
        };
        f.debug_struct("JoinRequest")
            .field("site", &format_args!("{site}"))
            .field("secret", &format_args!("<redacted>"))
            .field("public_key", &format_args!("{key}"))
            .finish()
    }
}

/// What the hub tells a new annex: everything its config needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub site: String,
    /// The annex's tunnel address, with the tunnel network's length.
    pub address: IpNet,
    pub lan: Vec<IpNet>,
    pub hub_name: String,
    pub hub_address: IpAddr,
    /// What the annex routes through the hub.
    pub routes: Vec<IpNet>,
    pub keepalive: u16,
    /// End-to-end checks the annex runs (`[enrollment] check` of the hub);
    /// absent from an older hub's answer.
    #[serde(default)]
    pub checks: Vec<crate::config::EnrollmentCheck>,
    /// Every hub the annex reaches, the answering (main) hub first, then
    /// its `[[follower]]`s. Absent from an older hub's answer: the only
    /// hub is then the token's, named `hub_name` at `hub_address` (which
    /// a hub still sends, for older annexes).
    #[serde(default)]
    pub hubs: Vec<HubSettings>,
}

/// One hub as an enrolled annex needs it (its `[[hub]]` table): text from
/// the network, checked by `join` before anything is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubSettings {
    pub name: String,
    /// Public WireGuard endpoints, `host:port`, preferred first.
    pub endpoints: Vec<String>,
    /// WireGuard public key, base64.
    pub public_key: String,
    /// Probe certificate, `sha256:...`.
    pub fingerprint: String,
    /// Tunnel address.
    pub address: IpAddr,
    pub probe_port: u16,
    /// `[[hub]] priority`: lower is preferred.
    pub priority: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum JoinResponse {
    Joined(Settings),
    Refused { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_request_never_prints_its_secret_nor_a_hostile_name() {
        let secret = "0123456789abcdef0123456789abcdef".to_string();
        let request = JoinRequest {
            site: format!("evil\n{}", "x".repeat(16 * 1024)),
            secret: secret.clone(),
            public_key: "k".repeat(5000),
        };
        let shown = format!("{request:?}");
        let head: String = shown.chars().take(300).collect();
        assert!(!shown.contains(&secret), "{head}");
        assert!(!shown.contains("evil"), "{head}");
        assert!(shown.len() < 200, "{} characters: {head}", shown.len());
        let good = JoinRequest {
            site: "annex-1".into(),
            ..request
        };
        assert!(format!("{good:?}").contains("annex-1"));
    }
}

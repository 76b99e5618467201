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

pub mod join;
pub mod registry;
pub mod token;

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub const ALPN: &[u8] = b"townlink-enroll/1";
/// Largest request or response read from the other side.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// The annex's request; its certificate is the one of the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub site: String,
    /// The token's secret, hex.
    pub secret: String,
    /// The annex's WireGuard public key (base64).
    pub public_key: String,
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum JoinResponse {
    Joined(Settings),
    Refused { reason: String },
}

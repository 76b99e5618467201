//! The local control socket: `townlink status` (and, later, site
//! administration) ask the running daemon over a Unix socket.
//!
//! Protocol: the client sends one JSON [`Request`] on one line, the daemon
//! answers one JSON [`Response`] on one line and closes. Who may connect
//! is decided by the socket's mode: 0600 (root), or 0660 with
//! `control.group`. What a caller may ask is decided by its peer
//! credentials: the status for everyone who connects, site
//! administration for root only.

pub mod client;
pub mod server;

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::telemetry::status::Status;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Hub: reserve a site and issue its token.
    SiteAdd {
        name: String,
        #[serde(default)]
        lan: Vec<IpNet>,
        /// Token validity in seconds; the hub's default when absent.
        expires: Option<u64>,
    },
    SiteList,
    /// Hub: revoke a site live.
    SiteRemove {
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Status(Box<Status>),
    /// The token holds a secret: shown to the administrator, never logged.
    SiteAdded {
        token: String,
        site: SiteInfo,
    },
    Sites {
        sites: Vec<SiteInfo>,
    },
    SiteRemoved {
        site: SiteInfo,
    },
    Error {
        message: String,
    },
}

/// One line of `townlink site list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteInfo {
    pub name: String,
    /// pending, joined (enrolled) or configured (config file) before a
    /// tunnel handshake, connected (handshake within 3 minutes), silent
    /// (an older handshake), revoked.
    pub state: String,
    /// "config" (a `[[site]]` table) or "enrolled" (the registry).
    pub source: String,
    pub address: IpAddr,
    pub lan: Vec<IpNet>,
    /// Pending: when the token expires (Unix s).
    pub expires: Option<u64>,
    /// Joined: when.
    pub joined_at: Option<u64>,
    /// Revoked: when.
    pub revoked_at: Option<u64>,
    /// Unix s of the last tunnel handshake.
    pub last_handshake: Option<u64>,
    /// The site's WireGuard public key (joined and config sites).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// The fingerprint of the site's probe certificate, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

/// Longest request line the daemon reads.
pub const MAX_REQUEST: usize = 64 * 1024;

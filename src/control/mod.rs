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

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use crate::sites::SiteInfo;
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

/// Longest request line the daemon reads.
pub const MAX_REQUEST: usize = 64 * 1024;

//! The local control socket: `townlink status` (and, later, site
//! administration) ask the running daemon over a Unix socket.
//!
//! Protocol: the client sends one JSON [`Request`] on one line, the daemon
//! answers one JSON [`Response`] on one line and closes. Access is by file
//! permissions: mode 0600 (root), or 0660 with `control.group`.

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

use crate::telemetry::status::Status;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Status(Box<Status>),
    Error { message: String },
}

/// Longest request line the daemon reads.
pub const MAX_REQUEST: usize = 64 * 1024;

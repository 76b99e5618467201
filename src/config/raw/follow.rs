//! The hubs' registry-following sections as written (issue 18): `[follow]`
//! on a hub that follows the main hub's registry, `[[follower]]` on the
//! main hub.

use serde::Deserialize;

/// `[follow]`: the main hub this hub takes its sites from.
#[derive(Debug, Default, Deserialize)]
pub struct RawFollow {
    /// The main hub's name, in messages (default "main").
    pub name: Option<String>,
    /// The main hub's probe responder, `host:port`.
    pub endpoint: Option<String>,
    /// The main hub's probe certificate, `sha256:...`.
    pub fingerprint: Option<String>,
}

/// `[[follower]]`: a hub that may follow this one's registry.
#[derive(Debug, Default, Deserialize)]
pub struct RawFollower {
    pub name: Option<String>,
    /// The follower's probe certificate, `sha256:...`.
    pub certificate: Option<String>,
    /// What annexes need of the follower (put in enrollment settings).
    pub public_key: Option<String>,
    pub endpoints: Option<Vec<String>>,
    pub address: Option<String>,
    pub probe_port: Option<i64>,
    pub priority: Option<i64>,
}

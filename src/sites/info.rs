//! What the hub tells of one site: a line of `townlink site list`, the
//! answer of `site add` and `site remove` (control socket), and the
//! state words the status view shows. Below the control socket and the
//! daemon, so that both speak of a site the same way.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A session younger than this makes a site "connected" (WireGuard
/// rekeys every 2 minutes while traffic or keepalives flow).
pub const CONNECTED_S: f64 = 180.0;

/// Where a site is, as `site list` and `townlink status` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteState {
    /// A token was issued; nobody joined with it yet.
    Pending,
    /// Enrolled; no tunnel handshake since the hub started.
    Joined,
    /// A `[[site]]` table of the hub's config; no tunnel handshake since
    /// the hub started.
    Configured,
    /// A tunnel handshake within [`CONNECTED_S`].
    Connected,
    /// An older handshake.
    Silent,
    /// Removed by an administrator: no tunnel, no probes, token void.
    Revoked,
}

impl SiteState {
    pub fn as_str(self) -> &'static str {
        match self {
            SiteState::Pending => "pending",
            SiteState::Joined => "joined",
            SiteState::Configured => "configured",
            SiteState::Connected => "connected",
            SiteState::Silent => "silent",
            SiteState::Revoked => "revoked",
        }
    }

    /// A site's state from its last tunnel handshake (Unix s, like `now`):
    /// `never` (what it is before any handshake: [`SiteState::Joined`]
    /// when enrolled, [`SiteState::Configured`] when a `[[site]]` table),
    /// connected (a handshake within 3 minutes) or silent (an older one).
    pub fn from_handshake(never: SiteState, last_handshake: Option<f64>, now: f64) -> SiteState {
        match last_handshake {
            None => never,
            Some(t) if now - t < CONNECTED_S => SiteState::Connected,
            Some(_) => SiteState::Silent,
        }
    }
}

/// Pads like a string, so that `{:<10}` lines up the columns.
impl fmt::Display for SiteState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where a site comes from (`site list`'s SOURCE).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteSource {
    /// A `[[site]]` table of the hub's config file.
    Config,
    /// The registry (`site add`, then `join`). The default: what a status
    /// without the field (an older daemon) was shown as.
    #[default]
    Enrolled,
    /// Enrolled on the main hub, learnt from it (a hub with `[follow]`).
    Followed,
}

impl SiteSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SiteSource::Config => "config",
            SiteSource::Enrolled => "enrolled",
            SiteSource::Followed => "followed",
        }
    }

    /// What a site of this source is before any tunnel handshake.
    pub fn never_connected(self) -> SiteState {
        match self {
            SiteSource::Config => SiteState::Configured,
            SiteSource::Enrolled | SiteSource::Followed => SiteState::Joined,
        }
    }
}

/// Pads like a string, so that `{:<9}` lines up the columns.
impl fmt::Display for SiteSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One line of `townlink site list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteInfo {
    pub name: String,
    pub state: SiteState,
    pub source: SiteSource,
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
    /// The path the site's annex last reported its tunnel on, as
    /// `hub/uplink` (the hub as the annex names it), for an annex with
    /// several hubs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_on: Option<String>,
    /// Whether it is attached to this hub (a running hub's sites).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<super::attachment::AttachmentView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_sources_are_written_as_before_and_pad_like_text() {
        for (state, text) in [
            (SiteState::Pending, "pending"),
            (SiteState::Joined, "joined"),
            (SiteState::Configured, "configured"),
            (SiteState::Connected, "connected"),
            (SiteState::Silent, "silent"),
            (SiteState::Revoked, "revoked"),
        ] {
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{text}\"")
            );
            assert_eq!(state.to_string(), text);
            let back: SiteState = serde_json::from_str(&format!("\"{text}\"")).unwrap();
            assert_eq!(back, state);
        }
        for (source, text) in [
            (SiteSource::Config, "config"),
            (SiteSource::Enrolled, "enrolled"),
        ] {
            assert_eq!(
                serde_json::to_string(&source).unwrap(),
                format!("\"{text}\"")
            );
            assert_eq!(source.to_string(), text);
        }
        assert_eq!(format!("[{:<10}]", SiteState::Joined), "[joined    ]");
        assert_eq!(format!("[{:<9}]", SiteSource::Config), "[config   ]");
    }

    #[test]
    fn the_state_follows_the_last_handshake() {
        let now = 10_000.0;
        let never = SiteSource::Config.never_connected();
        assert_eq!(
            SiteState::from_handshake(never, None, now),
            SiteState::Configured
        );
        assert_eq!(
            SiteState::from_handshake(SiteState::Joined, Some(now - 179.0), now),
            SiteState::Connected
        );
        assert_eq!(
            SiteState::from_handshake(SiteState::Joined, Some(now - 181.0), now),
            SiteState::Silent
        );
    }
}

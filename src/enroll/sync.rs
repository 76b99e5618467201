//! What the main hub tells its followers (issue 18, "Both hubs know every
//! site"): a versioned snapshot of the registry's sites, without any
//! secret, and how it is framed on the sync channel (ALPN
//! `townlink-sync/1`) and in the follower's persisted copy.
//!
//! A snapshot holds, per site: its name, state, tunnel address, LANs and
//! times, and once joined its WireGuard public key and probe certificate
//! fingerprint. Never a token's secret nor its hash: a follower cannot
//! enroll anyone, and a stolen copy of its state directory gives nothing
//! that lets an annex join.
//!
//! Encoding: JSON (serde), at most [`MAX_SNAPSHOT`] bytes. On the channel
//! each snapshot is one frame: its length (4 bytes, big endian), then the
//! JSON. The follower's copy on disk is the JSON alone. What a received
//! snapshot changes on the follower is `enroll::hub::Roster::follow_plan`.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::registry::{fingerprint_text, key_text, EntryState, Registry};
use crate::fingerprint::Fingerprint;
use crate::keys::PublicKey;
use crate::sites::{Name, Site};

/// The encoding's version; a follower refuses any other.
pub const FORMAT: u32 = 1;
/// Largest snapshot sent, read or loaded (about 2,500 sites): what a
/// follower reads from the main hub, and keeps in memory, is bounded.
pub const MAX_SNAPSHOT: usize = 1 << 20;
/// The frame header: the snapshot's length, big endian.
pub const FRAME_HEADER: usize = 4;

/// The main hub's sites at one version of its registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub format: u32,
    /// The main hub's registry version: every change to its registry
    /// makes a new one. It counts from the main hub's start, so a
    /// follower compares versions only within one connection.
    pub version: u64,
    /// By name.
    pub sites: Vec<SyncedSite>,
}

/// One site of the main hub's registry, without its token's secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedSite {
    pub name: Name,
    pub address: IpAddr,
    #[serde(default)]
    pub lan: Vec<IpNet>,
    pub created_at: u64,
    #[serde(flatten)]
    pub state: SyncedState,
}

/// A site's state, as a follower needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum SyncedState {
    /// A token was issued on the main hub; nobody joined with it yet.
    Pending { expires: u64 },
    /// The annex joined on the main hub: its keys.
    Joined {
        #[serde(with = "key_text")]
        public_key: PublicKey,
        #[serde(with = "fingerprint_text")]
        certificate: Fingerprint,
        joined_at: u64,
    },
    /// Removed on the main hub.
    Revoked { revoked_at: u64 },
}

impl SyncedState {
    pub fn as_str(&self) -> &'static str {
        match self {
            SyncedState::Pending { .. } => "pending",
            SyncedState::Joined { .. } => "joined",
            SyncedState::Revoked { .. } => "revoked",
        }
    }
}

impl SyncedSite {
    /// The site a joined entry installs.
    pub fn site(&self) -> Option<Site> {
        match &self.state {
            SyncedState::Joined {
                public_key,
                certificate,
                ..
            } => Some(Site {
                name: self.name.clone(),
                public_key: *public_key,
                address: self.address,
                lan: self.lan.clone(),
                certificate: Some(*certificate),
            }),
            _ => None,
        }
    }
}

/// Why a snapshot is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("snapshot of {0} bytes, more than the {MAX_SNAPSHOT} this townlink reads")]
    TooLarge(usize),
    #[error("snapshot format {0} where this townlink reads {FORMAT}: update both hubs")]
    Format(u32),
    #[error("snapshot not valid: {0}")]
    Invalid(String),
    #[error("site {0} appears twice in the snapshot")]
    Duplicate(Name),
}

impl Snapshot {
    /// The registry's sites at `version`, secrets left out.
    pub fn of(registry: &Registry, version: u64) -> Snapshot {
        let mut sites: Vec<SyncedSite> = registry
            .sites
            .iter()
            .map(|e| SyncedSite {
                name: e.name.clone(),
                address: e.address,
                lan: e.lan.clone(),
                created_at: e.created_at,
                state: match &e.state {
                    EntryState::Pending { expires, .. } => {
                        SyncedState::Pending { expires: *expires }
                    }
                    EntryState::Joined {
                        public_key,
                        certificate,
                        joined_at,
                        ..
                    } => SyncedState::Joined {
                        public_key: *public_key,
                        certificate: *certificate,
                        joined_at: *joined_at,
                    },
                    EntryState::Revoked { revoked_at, .. } => SyncedState::Revoked {
                        revoked_at: *revoked_at,
                    },
                },
            })
            .collect();
        sites.sort_by(|a, b| a.name.cmp(&b.name));
        Snapshot {
            format: FORMAT,
            version,
            sites,
        }
    }

    /// The JSON of the snapshot, refused when larger than [`MAX_SNAPSHOT`].
    pub fn encode(&self) -> Result<Vec<u8>, SyncError> {
        let bytes = serde_json::to_vec(self).expect("a snapshot serializes");
        if bytes.len() > MAX_SNAPSHOT {
            return Err(SyncError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    /// One frame of the sync channel: length, then the JSON.
    pub fn encode_frame(&self) -> Result<Vec<u8>, SyncError> {
        let body = self.encode()?;
        let mut frame = Vec::with_capacity(FRAME_HEADER + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        Ok(frame)
    }

    /// A snapshot from its JSON (from the main hub, or the follower's
    /// copy): length, format, every field and unique names checked.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, SyncError> {
        if bytes.len() > MAX_SNAPSHOT {
            return Err(SyncError::TooLarge(bytes.len()));
        }
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        // The format first, so that a newer main hub is named as such.
        let head: Head = serde_json::from_slice(bytes).map_err(invalid)?;
        if head.format != FORMAT {
            return Err(SyncError::Format(head.format));
        }
        let snapshot: Snapshot = serde_json::from_slice(bytes).map_err(invalid)?;
        let mut names = HashSet::new();
        for s in &snapshot.sites {
            if !names.insert(&s.name) {
                return Err(SyncError::Duplicate(s.name.clone()));
            }
        }
        Ok(snapshot)
    }

    pub fn joined(&self) -> usize {
        self.sites
            .iter()
            .filter(|s| matches!(s.state, SyncedState::Joined { .. }))
            .count()
    }
}

/// The length a frame header announces, refused beyond [`MAX_SNAPSHOT`]
/// before anything more is read.
pub fn frame_len(header: [u8; FRAME_HEADER]) -> Result<usize, SyncError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_SNAPSHOT {
        return Err(SyncError::TooLarge(len));
    }
    Ok(len)
}

/// A decoding error in words, bounded (the text may quote the input).
fn invalid(e: serde_json::Error) -> SyncError {
    let mut text = e.to_string();
    if text.len() > 200 {
        let mut end = 200;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    SyncError::Invalid(text)
}

#[cfg(test)]
mod tests;

//! Why a site change or a join is refused, in words that name the site
//! (or the key) and what to do. The annex that does not prove its token
//! hears one sentence, [`NOT_A_TOKEN`], whatever the reason.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use crate::enroll::registry::RegistryError;
use crate::keys::KeyError;
use crate::netlink::NetlinkError;
use crate::sites::{Name, SiteConflict, SiteState};
use crate::telemetry::stamp;

/// The one answer to an enrollment request that does not prove a token,
/// whatever the site: an attacker learns nothing of the registry.
pub const NOT_A_TOKEN: &str = "the hub does not accept this token (unknown, replaced by a newer \
                               `site add`, or mistyped): ask the administrator for a new one";

/// Why a site change (`site add`, `site remove`, a reload, the start) is
/// refused or did not complete. Each names the site, or the key, and
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("site name {given:?} {problem}")]
    InvalidName { given: String, problem: String },
    #[error(
        "the hub's config has no enrollment.endpoints: tokens must tell annexes where the hub \
         is; add e.g. endpoints = [\"hub.example.net:51820\"] and restart"
    )]
    NoEndpoints,
    #[error(
        "the hub's config has no enrollment.routes: add the prefixes annexes reach through the \
         hub (records server, other LANs) and restart"
    )]
    NoRoutes,
    #[error("--expires must be between 1s and 30 days")]
    Validity,
    #[error("site {0} is defined in the hub's config file ([[site]])")]
    DefinedInConfig(Name),
    #[error("site {site} already exists ({state}); remove it first to issue a new token")]
    Exists { site: Name, state: SiteState },
    #[error(
        "site {0} is defined in the hub's config file: remove its [[site]] table, then \
         `systemctl reload townlink` (applied live)"
    )]
    RemoveFromConfig(Name),
    /// `site add` or `site remove` on a hub that follows another.
    #[error("this hub follows {main} at {endpoint}: run the command there")]
    Follows { main: Name, endpoint: String },
    #[error("cannot write the followed registry {path}: {source}")]
    FollowedWrite {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("there is no site {0} (see `townlink site list`)")]
    NotFound(Name),
    #[error("site {0} is already revoked")]
    AlreadyRevoked(Name),
    #[error("LAN {prefix} has host bits set (did you mean {}?)", .prefix.trunc())]
    HostBits { prefix: IpNet },
    /// The LAN would take one of the hub's networks.
    #[error("site {site}: LAN {problem}")]
    LanReserved { site: Name, problem: String },
    #[error("LAN {prefix} overlaps {other}, given too")]
    LanGivenTwice { prefix: IpNet, other: IpNet },
    #[error("LAN {prefix} overlaps {other} of site {site}")]
    LanOverlaps {
        prefix: IpNet,
        other: IpNet,
        site: Name,
    },
    #[error("LAN {prefix} overlaps {other} of pending site {site}")]
    LanOverlapsPending {
        prefix: IpNet,
        other: IpNet,
        site: Name,
    },
    #[error("no free address left in enrollment.pool {0}")]
    PoolExhausted(IpNet),
    #[error(
        "site {site}: its address {address} in the registry does not fit the tunnel network \
         (/{prefix_len}): remove the site and enroll it again"
    )]
    AddressFamily {
        site: Name,
        address: IpAddr,
        prefix_len: u8,
    },
    #[error("cannot read the hub's routes: {0}")]
    HubRoutes(NetlinkError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("writing the registry failed: {0}")]
    RegistryTask(String),
    #[error(
        "site {site} is revoked (recorded), but not every trace of it could be removed: \
         {detail}; restart townlink to clear it"
    )]
    NotCleared { site: Name, detail: String },
    /// The change's job ended without an answer (a panic): the daemon
    /// stops and the next start repairs the sites from the registry.
    #[error(
        "{what} failed inside the hub (see its journal); townlink restarts and repairs the \
         sites from the registry, then try again"
    )]
    Interrupted { what: String },
    /// A reload whose `[[site]]` tables cannot be applied.
    #[error("{0}; sites left as they were")]
    ReloadRefused(Box<SiteError>),
    #[error("site[{site}]: {conflict}")]
    ConfigConflict { site: Name, conflict: SiteConflict },
    #[error("site {0} is enrolled in the registry too")]
    EnrolledToo(Name),
    /// At start: a `[[site]]` table whose LAN takes a network of the hub.
    #[error("{0}: change the LAN of its [[site]] table, or the route, then start again")]
    ConfigSiteLan(Box<SiteError>),
    #[error(
        "enrolled site {site} in {} conflicts with the config: {conflict}; remove the [[site]] \
         table or run `townlink site remove {site}`",
        .registry.display()
    )]
    EnrolledConflict {
        site: Name,
        registry: PathBuf,
        conflict: SiteConflict,
    },
    /// Tests stop a change dead at a step, as a crash would.
    #[cfg(test)]
    #[error("test: crashed after {0}")]
    Crashed(&'static str),
}

/// Why a join is refused. Only [`JoinRefusal::NotAToken`] reaches a
/// caller that does not prove the token; every other one is told as it
/// is, to the holder of the token.
#[derive(Debug, thiserror::Error)]
pub enum JoinRefusal {
    /// The annex hears [`NOT_A_TOKEN`]; the hub's journal `detail`.
    #[error("{NOT_A_TOKEN}")]
    NotAToken { detail: String },
    #[error("the token expired at {}; ask the administrator for a new one", stamp(*.at))]
    Expired { at: u64 },
    #[error(
        "the hub's clock is not synchronised (it says it is before 2025): fix NTP on the hub, \
         then try again"
    )]
    ClockNotSynchronised,
    #[error(
        "this token was already used: site {site} joined at {}; tokens are single-use, ask the \
         administrator for a new one",
        stamp(*.joined_at)
    )]
    AlreadyUsed { site: Name, joined_at: u64 },
    #[error(
        "site {site} was revoked at {}; ask the administrator for a new token",
        stamp(*.revoked_at)
    )]
    Revoked { site: Name, revoked_at: u64 },
    #[error("the annex's public key {0}")]
    BadKey(KeyError),
    #[error("the annex's public key is the hub's own")]
    HubsOwnKey,
    /// The site's LAN would take one of the hub's networks (which one
    /// stays in the hub's journal).
    #[error(
        "the hub cannot route site {0}'s LAN: it overlaps one of the hub's own networks (the \
         hub's journal says which); ask the administrator to enroll the site again with its \
         real LAN"
    )]
    LanRefused(Name),
    #[error("{0}")]
    Conflict(SiteConflict),
    #[error("the hub could not record the site: {0}")]
    NotRecorded(SiteError),
    #[error("the hub could not add the site: {detail}")]
    NotAdded { detail: String },
    #[error(transparent)]
    Hub(#[from] SiteError),
}

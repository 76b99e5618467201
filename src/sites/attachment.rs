//! Whether a site is attached to this hub: the hub's side of the return
//! path (`docs/backup-site.md`). Pure: the ages are measured by the caller
//! (`daemon::return_path`), so the rules are tested on a fake clock.
//!
//! - **attached**: the site's latest report names this hub as its active
//!   one (`probe::wire::Report::names_receiver`: for an annex with one
//!   hub, any report) and a datagram came from the site within the
//!   freshness window ([`fresh_window`]: five probe intervals of the
//!   active path, as the report states it), with no silence that long
//!   since that report arrived. Five probes lost in a row: a hub that
//!   loses the site's fast probes (its WAN cut) detaches it within the
//!   window (0.5 s at the default 100 ms) even if it never hears the site
//!   leave. After such a gap the report is stale (the site may have left
//!   meanwhile, and its report saying so been lost): the hub waits for a
//!   new one (every 5 s on the active path, and at every new probe
//!   connection) before it attaches the site again;
//! - otherwise, **elsewhere** when the site has a WireGuard session with
//!   this hub (a handshake younger than [`SESSION_FRESH`]) and its latest
//!   report names another hub; **session** when it has a session but no
//!   report says where it is;
//! - otherwise **silent**.
//!
//! Table 116 follows: metric [`ATTACHED_METRIC`] when attached,
//! [`SESSION_METRIC`] with a session (elsewhere or session), no route
//! when silent.

use std::time::Duration;

/// The freshness window of a report that states no probe interval (an
/// annex from before `every_ms`).
pub const ATTACH_FRESH: Duration = Duration::from_secs(1);
/// The freshness window in probe intervals of the active path.
pub const WINDOW_PROBES: u32 = 5;
/// The shortest freshness window (a 20 ms interval: scheduling delays
/// on a busy hub must not read as lost probes).
pub const WINDOW_MIN: Duration = Duration::from_millis(300);
/// The longest freshness window (a 10 s interval would give 50 s; a
/// value from the wire is bounded by it).
pub const WINDOW_MAX: Duration = Duration::from_secs(60);

/// The freshness window for a site whose report states the active path's
/// probe interval `every`: [`WINDOW_PROBES`] intervals within
/// [`WINDOW_MIN`]..=[`WINDOW_MAX`]; [`ATTACH_FRESH`] without one. Any
/// value gives a bounded window (it comes from the wire).
pub fn fresh_window(every: Option<Duration>) -> Duration {
    every.map_or(ATTACH_FRESH, |e| {
        e.saturating_mul(WINDOW_PROBES)
            .clamp(WINDOW_MIN, WINDOW_MAX)
    })
}
/// A WireGuard handshake younger than this is a session (WireGuard's
/// REJECT_AFTER_TIME: an older one carries no traffic any more).
pub const SESSION_FRESH: Duration = Duration::from_secs(180);
/// Table 116's metric (BGP MED) of an attached site's routes.
pub const ATTACHED_METRIC: u32 = 100;
/// Table 116's metric of a site with a session only.
pub const SESSION_METRIC: u32 = 1000;

/// What the hub knows of a site, as ages (now − then).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// The site's latest report: whether it names this hub as active, and
    /// the hub it names (the annex's name for it); `None`: no report since
    /// the hub started.
    pub report: Option<(bool, Option<String>)>,
    /// The active path's probe interval its latest report states.
    pub every: Option<Duration>,
    /// Since the last datagram from the site (any probe connection).
    pub datagram: Option<Duration>,
    /// The longest silence between two datagrams from the site since its
    /// latest report arrived.
    pub gap_since_report: Duration,
    /// Since the last WireGuard handshake with the site.
    pub handshake: Option<Duration>,
}

/// A site's attachment to this hub.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Attachment {
    /// Its active hub is this one, and it is heard.
    Attached,
    /// A session with this hub; its report names another hub (the
    /// annex's name for it, if the report says).
    Elsewhere { hub: Option<String> },
    /// A session with this hub; no report says where it is (none yet, or
    /// one naming this hub whose probes stopped).
    Session,
    /// Nothing recent.
    #[default]
    Silent,
}

impl Attachment {
    /// Decides by the rules of the module.
    pub fn of(e: &Evidence) -> Attachment {
        let fresh = |age: Option<Duration>, limit: Duration| age.is_some_and(|a| a < limit);
        let here = matches!(e.report, Some((true, _)));
        let window = fresh_window(e.every);
        if here && fresh(e.datagram, window) && e.gap_since_report < window {
            return Attachment::Attached;
        }
        if !fresh(e.handshake, SESSION_FRESH) {
            return Attachment::Silent;
        }
        match &e.report {
            Some((false, hub)) => Attachment::Elsewhere { hub: hub.clone() },
            _ => Attachment::Session,
        }
    }

    /// The metric of the site's routes in table 116; `None`: no route.
    pub fn metric(&self) -> Option<u32> {
        match self {
            Attachment::Attached => Some(ATTACHED_METRIC),
            Attachment::Elsewhere { .. } | Attachment::Session => Some(SESSION_METRIC),
            Attachment::Silent => None,
        }
    }

    /// The word of status, metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Attachment::Attached => "attached",
            Attachment::Elsewhere { .. } => "elsewhere",
            Attachment::Session => "session",
            Attachment::Silent => "silent",
        }
    }

    /// The words of a log line or a status line.
    pub fn describe(&self) -> String {
        AttachmentView::from((self, None)).describe()
    }
}

/// A site's attachment to this hub as status and `site list` show it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct AttachmentView {
    /// `attached` (here), `elsewhere` (on another hub, with a session
    /// here), `session` (a session here, no report says where), `silent`.
    pub state: String,
    /// `elsewhere`: the hub its report names (the annex's name for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// The metric of its routes in table 116 (100, 1000); none: no route.
    pub route_metric: Option<u32>,
}

impl Default for AttachmentView {
    fn default() -> AttachmentView {
        AttachmentView {
            state: "silent".into(),
            hub: None,
            route_metric: None,
        }
    }
}

impl AttachmentView {
    /// The words of a status line: "attached here", "on hub backup",
    /// "on another hub", "session only", "silent".
    pub fn describe(&self) -> String {
        match (self.state.as_str(), &self.hub) {
            ("attached", _) => "attached here".into(),
            ("elsewhere", Some(h)) => format!("on hub {h}"),
            ("elsewhere", None) => "on another hub".into(),
            ("session", _) => "session only".into(),
            (other, _) => other.into(),
        }
    }

    /// [`describe`](Self::describe) with the route's metric:
    /// "attached here (route metric 100)", "silent".
    pub fn words(&self) -> String {
        match self.route_metric {
            Some(m) => format!("{} (route metric {m})", self.describe()),
            None => self.describe(),
        }
    }
}

impl From<(&Attachment, Option<u32>)> for AttachmentView {
    fn from((a, route_metric): (&Attachment, Option<u32>)) -> AttachmentView {
        AttachmentView {
            state: a.as_str().into(),
            hub: match a {
                Attachment::Elsewhere { hub } => hub.clone(),
                _ => None,
            },
            route_metric,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    fn evidence(
        report: Option<(bool, Option<&str>)>,
        datagram: Option<Duration>,
        handshake: Option<Duration>,
    ) -> Evidence {
        Evidence {
            report: report.map(|(here, hub)| (here, hub.map(String::from))),
            every: None,
            datagram,
            gap_since_report: Duration::ZERO,
            handshake,
        }
    }

    #[test]
    fn a_report_naming_this_hub_and_a_fresh_datagram_attach() {
        let here = Some((true, Some("main")));
        let a = Attachment::of(&evidence(here, Some(100 * MS), Some(5 * S)));
        assert_eq!(a, Attachment::Attached);
        assert_eq!(a.metric(), Some(ATTACHED_METRIC));
        // The handshake does not matter while the site is heard (a hub
        // restarted a moment ago, before the new handshake).
        assert_eq!(
            Attachment::of(&evidence(here, Some(999 * MS), None)),
            Attachment::Attached
        );
    }

    #[test]
    fn a_stale_datagram_detaches_within_a_second() {
        let here = Some((true, Some("main")));
        // The probes stopped a second ago (the hub's WAN cut): the
        // session still counts, at the worse metric.
        let a = Attachment::of(&evidence(here, Some(ATTACH_FRESH), Some(10 * S)));
        assert_eq!(a, Attachment::Session);
        assert_eq!(a.metric(), Some(SESSION_METRIC));
        assert_eq!(
            Attachment::of(&evidence(here, Some(ATTACH_FRESH), Some(200 * S))),
            Attachment::Silent
        );
    }

    #[test]
    fn a_report_from_before_a_gap_does_not_attach_until_a_new_one() {
        let here = Some((true, Some("main")));
        // The hub's WAN was cut for 10 s, and is back: the site's
        // (standby) probes arrive again, but its last report is from
        // before the cut; the one saying it left was lost meanwhile.
        let back = Evidence {
            gap_since_report: 10 * S,
            ..evidence(here, Some(50 * MS), Some(20 * S))
        };
        assert_eq!(Attachment::of(&back), Attachment::Session);
        assert_eq!(Attachment::of(&back).metric(), Some(SESSION_METRIC));
        // Any silence as long as the freshness window is such a gap.
        let just = Evidence {
            gap_since_report: ATTACH_FRESH,
            ..back.clone()
        };
        assert_eq!(Attachment::of(&just), Attachment::Session);
        // Shorter silences (a few lost probes) are no gap.
        let short = Evidence {
            gap_since_report: ATTACH_FRESH - MS,
            ..back.clone()
        };
        assert_eq!(Attachment::of(&short), Attachment::Attached);
        // A new report naming this hub (its gap restarts at zero) attaches.
        let renewed = Evidence {
            gap_since_report: Duration::ZERO,
            ..back
        };
        assert_eq!(Attachment::of(&renewed), Attachment::Attached);
    }

    #[test]
    fn the_window_is_five_probe_intervals_bounded() {
        assert_eq!(fresh_window(Some(100 * MS)), 500 * MS);
        assert_eq!(fresh_window(Some(20 * MS)), WINDOW_MIN);
        assert_eq!(fresh_window(Some(Duration::ZERO)), WINDOW_MIN);
        assert_eq!(fresh_window(Some(10 * S)), 50 * S);
        assert_eq!(fresh_window(Some(13 * S)), WINDOW_MAX);
        // Whatever the wire says: no overflow, no panic.
        assert_eq!(fresh_window(Some(Duration::MAX)), WINDOW_MAX);
        assert_eq!(
            fresh_window(Some(Duration::from_millis(u64::MAX))),
            WINDOW_MAX
        );
        // An annex from before `every_ms`.
        assert_eq!(fresh_window(None), ATTACH_FRESH);
    }

    #[test]
    fn the_window_follows_the_stated_interval() {
        let here = Some((true, Some("main")));
        let at = |every: Option<Duration>, silent: Duration, gap: Duration| {
            Attachment::of(&Evidence {
                every,
                gap_since_report: gap,
                ..evidence(here, Some(silent), Some(10 * S))
            })
        };
        // 100 ms probes: detached after 0.5 s of silence, not 1 s.
        assert_eq!(
            at(Some(100 * MS), 499 * MS, Duration::ZERO),
            Attachment::Attached
        );
        assert_eq!(
            at(Some(100 * MS), 500 * MS, Duration::ZERO),
            Attachment::Session
        );
        // A gap of 0.5 s since the report makes it stale too.
        assert_eq!(at(Some(100 * MS), 10 * MS, 500 * MS), Attachment::Session);
        // 2 s probes: 8 s of silence is four lost probes, still attached.
        assert_eq!(at(Some(2 * S), 8 * S, 8 * S), Attachment::Attached);
        assert_eq!(at(Some(2 * S), 10 * S, Duration::ZERO), Attachment::Session);
        // No interval stated: 1 s.
        assert_eq!(at(None, 999 * MS, 999 * MS), Attachment::Attached);
        assert_eq!(at(None, ATTACH_FRESH, Duration::ZERO), Attachment::Session);
    }

    #[test]
    fn a_report_naming_another_hub_is_elsewhere_even_while_heard() {
        let elsewhere = Some((false, Some("backup")));
        // Standby probes keep coming: still not attached here.
        let a = Attachment::of(&evidence(elsewhere, Some(10 * MS), Some(30 * S)));
        assert_eq!(
            a,
            Attachment::Elsewhere {
                hub: Some("backup".into())
            }
        );
        assert_eq!(a.metric(), Some(SESSION_METRIC));
        assert_eq!(a.describe(), "on hub backup");
        // Without a session, nothing.
        let a = Attachment::of(&evidence(elsewhere, Some(10 * MS), None));
        assert_eq!(a, Attachment::Silent);
        assert_eq!(a.metric(), None);
    }

    #[test]
    fn an_annex_with_one_hub_is_attached_by_any_report() {
        // Its reports have no paths and no `here` (version 1 or one hub):
        // `names_receiver` reads them as naming this hub.
        let one_hub = Some((true, None));
        assert_eq!(
            Attachment::of(&evidence(one_hub, Some(50 * MS), Some(S))),
            Attachment::Attached
        );
    }

    #[test]
    fn a_session_needs_a_handshake_younger_than_180_s() {
        let h = |age: Duration| Attachment::of(&evidence(None, None, Some(age)));
        assert_eq!(h(179 * S), Attachment::Session);
        assert_eq!(h(SESSION_FRESH), Attachment::Silent);
        assert_eq!(
            Attachment::of(&evidence(None, None, None)),
            Attachment::Silent
        );
    }

    #[test]
    fn no_report_yet_is_a_session_or_nothing_by_the_handshake() {
        // Probes without a report yet (the hub just started): not attached.
        assert_eq!(
            Attachment::of(&evidence(None, Some(10 * MS), Some(3 * S))),
            Attachment::Session
        );
        assert_eq!(
            Attachment::of(&evidence(None, Some(10 * MS), None)),
            Attachment::Silent
        );
    }
}

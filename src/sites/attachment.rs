//! Whether a site is attached to this hub: the hub's side of the return
//! path (`docs/backup-site.md`). Pure: the ages are measured by the caller
//! (`daemon::return_path`), so the rules are tested on a fake clock.
//!
//! - **attached**: the site's latest report names this hub as its active
//!   one (`probe::wire::Report::names_receiver`: for an annex with one
//!   hub, any report) and a datagram came from the site within
//!   [`ATTACH_FRESH`], with no silence that long since that report
//!   arrived. The active path is probed every 100 ms: a second of silence
//!   is ten lost probes in a row, so a hub that loses the site's fast
//!   probes (its WAN cut) detaches it within a second even if it never
//!   hears the site leave. After such a gap the report is stale (the site
//!   may have left meanwhile, and its report saying so been lost): the
//!   hub waits for a new one (every 5 s on the active path, and at every
//!   new probe connection) before it attaches the site again;
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

/// A datagram at least this recent is needed to be attached.
pub const ATTACH_FRESH: Duration = Duration::from_secs(1);
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
        if here && fresh(e.datagram, ATTACH_FRESH) && e.gap_since_report < ATTACH_FRESH {
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

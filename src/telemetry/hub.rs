//! The hub's side of telemetry: its sites (series and status lines that
//! come and go with them), the reports their annexes send (each site's
//! uplinks, as the hub shows them), enrollments, and the probe
//! responder's counters and events.

use super::metrics::*;
use super::status::*;
use super::{now, peer, Telemetry};
use crate::decision::Health;
use crate::probe::responder::{self, ResponderCounters};
use crate::probe::wire::Report;
use crate::sites::attachment::Attachment;
use crate::sites::{Name, SiteSource};

impl Telemetry {
    /// The result of an enrollment attempt.
    pub fn enrollment(&self, joined: bool) {
        let result = if joined { "joined" } else { "refused" };
        self.metrics
            .enrollments
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    /// A site the hub added at run time (enrollment, or at start from the registry).
    pub fn add_site(&self, name: &str, address: std::net::IpAddr, source: SiteSource) {
        Self::site_series(&self.metrics, name);
        let mut s = self.status();
        if !s.sites.iter().any(|v| v.name == name) {
            s.sites.push(SiteView {
                name: name.to_string(),
                source,
                address: address.to_string(),
                peer: PeerView {
                    name: name.to_string(),
                    ..PeerView::default()
                },
                report: None,
                attachment: AttachmentView::default(),
            });
            s.sites.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }

    /// A site the hub removed: its series go too.
    pub fn remove_site(&self, name: &str) {
        let m = &self.metrics;
        m.peer_last_handshake.remove(&peer(name));
        m.peer_receive.remove(&peer(name));
        m.peer_transmit.remove(&peer(name));
        m.site_report.remove(&SiteLabels {
            site: name.to_string(),
        });
        let mut s = self.status();
        // Under the status lock, as `site_attachments` sets them.
        let site = SiteLabels {
            site: name.to_string(),
        };
        m.site_attached.remove(&site);
        m.site_return_route_metric.remove(&site);
        if let Some(i) = s.sites.iter().position(|v| v.name == name) {
            let view = s.sites.remove(i);
            for u in view.report.iter().flat_map(|r| &r.uplinks) {
                Self::remove_site_uplink(m, name, &u.name);
            }
        }
        Self::count_attached(m, &s);
    }

    fn count_attached(m: &Metrics, s: &Status) {
        let n = s
            .sites
            .iter()
            .filter(|v| v.attachment.state == "attached")
            .count();
        m.sites_attached.set(n as i64);
    }

    /// The attachment of sites to this hub and the metric of their routes
    /// in table 116 (`daemon::return_path`, at each change). A site the
    /// hub no longer has is ignored.
    pub fn site_attachments(&self, changes: &[(Name, Attachment, Option<u32>)]) {
        let m = &self.metrics;
        let mut s = self.status();
        for (site, attachment, metric) in changes {
            let Some(view) = s.sites.iter_mut().find(|v| v.name == site.as_str()) else {
                continue;
            };
            view.attachment = AttachmentView::from((attachment, *metric));
            let l = SiteLabels {
                site: site.to_string(),
            };
            m.site_attached
                .get_or_create(&l)
                .set((*attachment == Attachment::Attached) as i64);
            m.site_return_route_metric
                .get_or_create(&l)
                .set(metric.map_or(0, i64::from));
        }
        Self::count_attached(m, &s);
    }

    pub(super) fn site_series(m: &Metrics, site: &str) {
        let _ = m.peer_last_handshake.get_or_create(&peer(site));
        let _ = m.peer_receive.get_or_create(&peer(site));
        let _ = m.peer_transmit.get_or_create(&peer(site));
        let l = SiteLabels {
            site: site.to_string(),
        };
        let _ = m.site_report.get_or_create(&l);
        let _ = m.site_attached.get_or_create(&l);
        let _ = m.site_return_route_metric.get_or_create(&l);
    }

    /// A report from the annex of `site` (authenticated by its certificate).
    /// Series of uplinks the site no longer reports are removed.
    pub fn site_report(&self, site: &Name, report: Report) {
        let m = &self.metrics;
        let at = now();
        let mut s = self.status();
        let Some(view) = s.sites.iter_mut().find(|v| v.name == site.as_str()) else {
            return;
        };
        let before = view.report.as_ref().map(|r| r.active.as_str());
        if before != Some(report.active.as_str()) {
            tracing::info!(
                site = %site,
                from = before.unwrap_or("-"),
                to = %report.active,
                "site reports its tunnel on another uplink"
            );
        }
        let hub_before = view.report.as_ref().and_then(|r| r.hub.as_deref());
        if report.hub.is_some() && hub_before != report.hub.as_deref() {
            tracing::info!(
                site = %site,
                from = hub_before.unwrap_or("-"),
                to = report.hub.as_deref().unwrap_or("-"),
                "site reports its tunnel to another hub"
            );
        }
        if let Some(old) = &view.report {
            for u in &old.uplinks {
                if !report.uplinks.iter().any(|n| n.name == u.name) {
                    Self::remove_site_uplink(m, site.as_str(), &u.name);
                }
            }
        }
        for u in &report.uplinks {
            let l = SiteUplinkLabels {
                site: site.to_string(),
                uplink: u.name.clone(),
            };
            m.site_uplink_active
                .get_or_create(&l)
                .set((u.name == report.active) as i64);
            m.site_uplink_up
                .get_or_create(&l)
                .set((u.state == Health::Up.as_str()) as i64);
            m.site_uplink_rtt
                .get_or_create(&l)
                .set(u.rtt_ms.map_or(f64::NAN, |v| v / 1000.0));
            m.site_uplink_loss
                .get_or_create(&l)
                .set(u.loss.unwrap_or(f64::NAN));
        }
        m.site_report
            .get_or_create(&SiteLabels {
                site: site.to_string(),
            })
            .set(at);
        let view_of = |u: crate::probe::wire::Uplink| ReportedUplink {
            name: u.name,
            hub: u.hub,
            state: u.state,
            rtt_ms: u.rtt_ms,
            loss: u.loss,
        };
        view.report = Some(SiteReportView {
            at,
            active: report.active,
            hub: report.hub,
            uplinks: report.uplinks.into_iter().map(view_of).collect(),
            paths: report.paths.into_iter().map(view_of).collect(),
        });
    }

    /// A site's attachment to this hub, if the hub has the site.
    pub fn site_attachment(&self, site: &str) -> Option<AttachmentView> {
        let s = self.status();
        Some(s.sites.iter().find(|v| v.name == site)?.attachment.clone())
    }

    /// The path a site's annex last reported its tunnel on, as
    /// "hub/uplink", if it has several hubs (its report lists paths).
    pub fn site_tunnel_on(&self, site: &str) -> Option<String> {
        let s = self.status();
        let r = s.sites.iter().find(|v| v.name == site)?.report.as_ref()?;
        match &r.hub {
            Some(h) if !r.paths.is_empty() => Some(format!("{h}/{}", r.active)),
            _ => None,
        }
    }

    fn remove_site_uplink(m: &Metrics, site: &str, uplink: &str) {
        let l = SiteUplinkLabels {
            site: site.to_string(),
            uplink: uplink.to_string(),
        };
        m.site_uplink_active.remove(&l);
        m.site_uplink_up.remove(&l);
        m.site_uplink_rtt.remove(&l);
        m.site_uplink_loss.remove(&l);
    }

    pub fn responder_counters(&self) -> ResponderCounters {
        let m = &self.metrics;
        let r = |r: &str| {
            m.responder_connections
                .get_or_create_owned(&ResultLabels { result: r.into() })
        };
        let dropped = |cause: &str| {
            m.responder_dropped_datagrams
                .get_or_create_owned(&CauseLabels {
                    cause: cause.into(),
                })
        };
        ResponderCounters {
            authenticated: r("authenticated"),
            refused: r("refused"),
            limited: r("limited"),
            timed_out: r("timed_out"),
            garbage: m.responder_garbage.clone(),
            echoed: m.responder_echoes.clone(),
            handshakes: m.responder_handshakes.clone(),
            open: m.responder_open_connections.clone(),
            guard: std::sync::Arc::new(crate::probe::guard::GuardCounters {
                malformed: dropped("malformed"),
                unsupported_version: dropped("unsupported_version"),
                short_initial: dropped("short_initial"),
                rate_limited: dropped("rate_limited"),
                socket_buffer: dropped("socket_buffer"),
                retries: m.responder_retries.clone(),
            }),
        }
    }

    /// A panic while serving one connection of `listener` (metrics,
    /// responder): logged and counted; the listener goes on. Such a panic
    /// is a bug, but a remote client must not be able to stop the whole
    /// router with it (see `docs/systemd.md`).
    pub fn connection_panicked(
        &self,
        listener: &str,
        remote: std::net::SocketAddr,
        panic: &(dyn std::any::Any + Send),
    ) {
        let message = if let Some(s) = panic.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = panic.downcast_ref::<String>() {
            s.clone()
        } else {
            "(no message)".to_string()
        };
        self.metrics.connection_panics(listener).inc();
        tracing::error!(
            listener,
            %remote,
            panic = %message,
            "a connection panicked: it was closed, the listener goes on (a bug: please report it)"
        );
    }
}

/// The responder's reports and panics go to the metrics and the status view.
impl responder::Events for Telemetry {
    fn site_report(&self, site: &Name, report: Report) {
        Telemetry::site_report(self, site, report)
    }

    fn connection_panicked(
        &self,
        remote: std::net::SocketAddr,
        panic: &(dyn std::any::Any + Send),
    ) {
        Telemetry::connection_panicked(self, "responder", remote, panic)
    }
}

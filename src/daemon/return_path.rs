//! The hub's return path (`docs/backup-site.md`): which sites are attached
//! to this hub (`sites::attachment`, decided here every
//! [`EVALUATE_EVERY`] and at once when a report arrives), and the routes
//! of table 116 that follow (`routing::return_routes`), which the hub's
//! BGP daemon announces to the data centre. The only writer of table 116.
//!
//! - evidence: what the responder heard of each site
//!   (`probe::responder::Sessions::heard`: its last datagram, its last
//!   report) and the WireGuard handshakes (`tunnel.status()`, read at most
//!   every [`HANDSHAKES_EVERY`]);
//! - a change of metric adds the new routes, then deletes the old ones: a
//!   prefix always has a route, and BIRD announces the lowest metric, so
//!   the MED changes with no withdrawal in between;
//! - a site that is gone (removed, revoked) loses its routes at the next
//!   evaluation; a change the kernel refuses is retried at the next one,
//!   logged once per site until it succeeds;
//! - each change of attachment is logged (site, from, to) and goes to the
//!   status and metrics.
//!
//! Table 116 starts empty (the start purges every protocol-116 route) and
//! is purged again at stop; if the daemon dies, its tunnel interface goes
//! and the kernel drops every route through it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::keys::PublicKey;
use crate::netlink::Netlink;
use crate::probe::responder::Sessions;
use crate::routing::{self, RouteSpec};
use crate::sites::attachment::{Attachment, Evidence};
use crate::sites::{Name, Site};
use crate::telemetry::Telemetry;
use crate::tunnel::Tunnel;

/// How often the attachments are evaluated without a report (the active
/// path's probe interval: a lost probe is seen within one).
pub const EVALUATE_EVERY: Duration = Duration::from_millis(100);
/// How often the tunnel's handshakes are read at most.
pub const HANDSHAKES_EVERY: Duration = Duration::from_secs(1);

/// Writes table 116's routes: netlink in the daemon, a fake in tests.
pub(super) trait RouteWriter {
    /// Adds the route, or replaces the one with the same destination and metric.
    fn put(&self, route: &RouteSpec) -> impl Future<Output = Result<(), String>> + Send;
    /// Deletes the route (the one with its metric); gone already is fine.
    fn delete(&self, route: &RouteSpec) -> impl Future<Output = Result<(), String>> + Send;
}

impl RouteWriter for Netlink {
    async fn put(&self, route: &RouteSpec) -> Result<(), String> {
        self.replace_route(route).await.map_err(|e| e.to_string())
    }

    async fn delete(&self, route: &RouteSpec) -> Result<(), String> {
        self.delete_route(route).await.map_err(|e| e.to_string())
    }
}

/// Table 116 as this hub wrote it: per site, the routes the kernel took.
#[derive(Debug, Default)]
pub(super) struct ReturnTable {
    installed: BTreeMap<Name, Vec<RouteSpec>>,
    /// Sites whose last change failed (logged once until it succeeds).
    failing: HashSet<Name>,
}

impl ReturnTable {
    /// Brings every site's routes to `want`; a site not in `want` loses
    /// its routes.
    pub(super) async fn reconcile<W: RouteWriter>(
        &mut self,
        writer: &W,
        want: &BTreeMap<Name, Vec<RouteSpec>>,
    ) {
        let gone: Vec<Name> = self
            .installed
            .keys()
            .filter(|s| !want.contains_key(*s))
            .cloned()
            .collect();
        for site in gone {
            self.set(writer, &site, &[]).await;
        }
        self.failing.retain(|s| want.contains_key(s));
        for (site, routes) in want {
            self.set(writer, site, routes).await;
        }
    }

    /// Brings one site's routes to `want`: the new ones first, then the
    /// old ones deleted, only once every new one is in.
    async fn set<W: RouteWriter>(&mut self, writer: &W, site: &Name, want: &[RouteSpec]) {
        let have = self.installed.get(site).cloned().unwrap_or_default();
        let mut now = have.clone();
        let mut error = None;
        for r in want.iter().filter(|r| !have.contains(r)) {
            match writer.put(r).await {
                Ok(()) => now.push(r.clone()),
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        if error.is_none() {
            for r in have.iter().filter(|r| !want.contains(r)) {
                match writer.delete(r).await {
                    Ok(()) => now.retain(|n| n != r),
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                }
            }
        }
        if now.is_empty() {
            self.installed.remove(site);
        } else {
            self.installed.insert(site.clone(), now);
        }
        match error {
            Some(e) => {
                if self.failing.insert(site.clone()) {
                    tracing::error!(site = %site, table = routing::RETURN_TABLE, error = %e, "cannot write the site's return route; retrying every 100 ms (logged once)");
                }
            }
            None => {
                if self.failing.remove(site) {
                    tracing::info!(site = %site, table = routing::RETURN_TABLE, "the site's return routes are written again");
                }
            }
        }
    }

    /// The metric of the site's routes in the table (the lowest: the one
    /// BIRD announces); `None`: no route.
    pub(super) fn metric(&self, site: &Name) -> Option<u32> {
        self.installed
            .get(site)?
            .iter()
            .filter_map(|r| r.metric)
            .min()
    }
}

/// What the status shows of each site (its attachment and route metric),
/// and the site it was shown for: a site changed by a reload (removed
/// and added again) is a new status line, shown again.
#[derive(Debug, Default)]
pub(super) struct Shown(HashMap<Name, (Site, Attachment, Option<u32>)>);

impl Shown {
    /// The evaluation of every installed site: what the status must be
    /// told (logging each change of attachment); sites no longer
    /// installed are forgotten.
    pub(super) fn update(
        &mut self,
        now: &[(&Site, Attachment, Option<u32>)],
    ) -> Vec<(Name, Attachment, Option<u32>)> {
        let mut changes = Vec::new();
        for (site, a, metric) in now {
            let name = &site.name;
            let before = self.0.get(name).filter(|b| &b.0 == *site);
            if before.is_some_and(|b| &b.1 == a && &b.2 == metric) {
                continue;
            }
            let from = before.map_or(Attachment::Silent, |b| b.1.clone());
            if &from != a {
                tracing::info!(site = %name, from = from.describe().as_str(), to = a.describe().as_str(), route_metric = metric.unwrap_or(0), "site attachment changed");
            }
            self.0
                .insert(name.clone(), ((*site).clone(), a.clone(), *metric));
            changes.push((name.clone(), a.clone(), *metric));
        }
        self.0
            .retain(|name, _| now.iter().any(|(site, _, _)| &site.name == name));
        changes
    }
}

/// What the return path reads and where it writes.
pub(super) struct ReturnPath {
    pub net: Netlink,
    pub tunnel: Arc<Tunnel>,
    /// The tunnel interface (every route of table 116 goes through it).
    pub interface: String,
    pub sessions: Arc<Sessions>,
    /// The sites installed on this hub.
    pub sites: watch::Receiver<Vec<Site>>,
    pub telemetry: Arc<Telemetry>,
}

/// Evaluates and writes until `stop`.
pub(super) async fn run(path: ReturnPath, stop: CancellationToken) {
    let mut table = ReturnTable::default();
    let mut shown = Shown::default();
    let mut handshakes: HashMap<PublicKey, SystemTime> = HashMap::new();
    let mut handshakes_read: Option<Instant> = None;
    let mut tick = tokio::time::interval(EVALUATE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            _ = path.sessions.report_arrived() => {}
        }
        if handshakes_read.is_none_or(|t| t.elapsed() >= HANDSHAKES_EVERY) {
            handshakes_read = Some(Instant::now());
            if let Ok(status) = path.tunnel.status().await {
                handshakes = status
                    .peers
                    .iter()
                    .filter_map(|p| Some((p.public_key, p.last_handshake?)))
                    .collect();
            }
        }
        let sites = path.sites.borrow().clone();
        let heard = path.sessions.heard();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut want = BTreeMap::new();
        let mut attachments = Vec::with_capacity(sites.len());
        for site in &sites {
            let h = heard.get(&site.name);
            let evidence = Evidence {
                report: h.and_then(|h| h.report.clone()),
                every: h.and_then(|h| h.every),
                datagram: h
                    .and_then(|h| h.datagram)
                    .map(|t| now.saturating_duration_since(t)),
                gap_since_report: h.map_or(Duration::ZERO, |h| h.gap_since_report),
                // A handshake "in the future" (the clock stepped back) is fresh.
                handshake: handshakes
                    .get(&site.public_key)
                    .map(|t| wall.duration_since(*t).unwrap_or_default()),
            };
            let a = Attachment::of(&evidence);
            if let Some(metric) = a.metric() {
                want.insert(
                    site.name.clone(),
                    routing::return_routes(site, &path.interface, metric),
                );
            }
            attachments.push((site, a));
        }
        table.reconcile(&path.net, &want).await;
        let now: Vec<(&Site, Attachment, Option<u32>)> = attachments
            .into_iter()
            .map(|(site, a)| (site, a, table.metric(&site.name)))
            .collect();
        let changes = shown.update(&now);
        if !changes.is_empty() {
            path.telemetry.site_attachments(&changes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records every write; refuses puts while `refuse` is set.
    #[derive(Default)]
    struct Fake {
        log: Mutex<Vec<String>>,
        refuse: Mutex<bool>,
    }

    fn words(r: &RouteSpec) -> String {
        format!(
            "{} dev {} table {} metric {}",
            r.destination,
            r.interface,
            r.table,
            r.metric.unwrap_or(0)
        )
    }

    impl RouteWriter for Fake {
        async fn put(&self, r: &RouteSpec) -> Result<(), String> {
            if *self.refuse.lock().unwrap() {
                return Err("refused".into());
            }
            self.log.lock().unwrap().push(format!("add {}", words(r)));
            Ok(())
        }

        async fn delete(&self, r: &RouteSpec) -> Result<(), String> {
            self.log.lock().unwrap().push(format!("del {}", words(r)));
            Ok(())
        }
    }

    impl Fake {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.log.lock().unwrap())
        }
    }

    fn site(name: &str, address: &str, lan: &str) -> Site {
        Site {
            name: Name::new(name).unwrap(),
            public_key: crate::keys::PrivateKey::generate().public_key(),
            address: address.parse().unwrap(),
            lan: vec![lan.parse().unwrap()],
            certificate: None,
        }
    }

    fn want(sites: &[(&Site, u32)]) -> BTreeMap<Name, Vec<RouteSpec>> {
        sites
            .iter()
            .map(|(s, m)| (s.name.clone(), routing::return_routes(s, "tl0", *m)))
            .collect()
    }

    #[tokio::test]
    async fn a_metric_change_adds_the_new_routes_before_deleting_the_old() {
        let fake = Fake::default();
        let mut table = ReturnTable::default();
        let a = site("annex-1", "10.99.0.2", "192.168.1.0/24");
        table.reconcile(&fake, &want(&[(&a, 1000)])).await;
        assert_eq!(
            fake.take(),
            [
                "add 10.99.0.2/32 dev tl0 table 116 metric 1000",
                "add 192.168.1.0/24 dev tl0 table 116 metric 1000"
            ]
        );
        assert_eq!(table.metric(&a.name), Some(1000));
        // Unchanged: nothing written.
        table.reconcile(&fake, &want(&[(&a, 1000)])).await;
        assert!(fake.take().is_empty());
        // Attached: every new route first, then the old ones.
        table.reconcile(&fake, &want(&[(&a, 100)])).await;
        assert_eq!(
            fake.take(),
            [
                "add 10.99.0.2/32 dev tl0 table 116 metric 100",
                "add 192.168.1.0/24 dev tl0 table 116 metric 100",
                "del 10.99.0.2/32 dev tl0 table 116 metric 1000",
                "del 192.168.1.0/24 dev tl0 table 116 metric 1000"
            ]
        );
        assert_eq!(table.metric(&a.name), Some(100));
    }

    #[tokio::test]
    async fn a_site_gone_or_silent_loses_its_routes() {
        let fake = Fake::default();
        let mut table = ReturnTable::default();
        let a = site("annex-1", "10.99.0.2", "192.168.1.0/24");
        let b = site("annex-2", "10.99.0.3", "192.168.2.0/24");
        table
            .reconcile(&fake, &want(&[(&a, 100), (&b, 1000)]))
            .await;
        fake.take();
        // annex-1 removed from the hub (or silent: no metric, not wanted).
        table.reconcile(&fake, &want(&[(&b, 1000)])).await;
        assert_eq!(
            fake.take(),
            [
                "del 10.99.0.2/32 dev tl0 table 116 metric 100",
                "del 192.168.1.0/24 dev tl0 table 116 metric 100"
            ]
        );
        assert_eq!(table.metric(&a.name), None);
        assert_eq!(table.metric(&b.name), Some(1000));
        table.reconcile(&fake, &BTreeMap::new()).await;
        assert_eq!(fake.take().len(), 2);
        assert!(table.installed.is_empty());
    }

    #[tokio::test]
    async fn a_refused_change_keeps_the_old_routes_and_is_retried() {
        let fake = Fake::default();
        let mut table = ReturnTable::default();
        let a = site("annex-1", "10.99.0.2", "192.168.1.0/24");
        table.reconcile(&fake, &want(&[(&a, 1000)])).await;
        fake.take();
        *fake.refuse.lock().unwrap() = true;
        table.reconcile(&fake, &want(&[(&a, 100)])).await;
        // Nothing deleted: the site keeps its metric-1000 routes.
        assert!(fake.take().is_empty());
        assert_eq!(table.metric(&a.name), Some(1000));
        assert!(table.failing.contains(&a.name));
        // The next evaluation retries, and succeeds.
        *fake.refuse.lock().unwrap() = false;
        table.reconcile(&fake, &want(&[(&a, 100)])).await;
        assert_eq!(fake.take().len(), 4);
        assert_eq!(table.metric(&a.name), Some(100));
        assert!(table.failing.is_empty());
    }

    #[test]
    fn the_status_is_told_each_change_and_a_site_changed_by_a_reload_again() {
        let mut shown = Shown::default();
        let a = site("annex-1", "10.99.0.2", "192.168.1.0/24");
        let b = site("annex-2", "10.99.0.3", "192.168.2.0/24");
        let names = |c: Vec<(Name, Attachment, Option<u32>)>| -> Vec<String> {
            c.into_iter()
                .map(|(n, a, m)| format!("{n} {} {m:?}", a.as_str()))
                .collect()
        };
        // The first evaluation: every site.
        let now = [
            (&a, Attachment::Session, Some(1000)),
            (&b, Attachment::Silent, None),
        ];
        assert_eq!(
            names(shown.update(&now)),
            ["annex-1 session Some(1000)", "annex-2 silent None"]
        );
        // Nothing changed: nothing told.
        assert!(shown.update(&now).is_empty());
        // A change of attachment, and of the route's metric only (the
        // kernel took the new routes at a later evaluation).
        let now = [
            (&a, Attachment::Attached, Some(1000)),
            (&b, Attachment::Silent, None),
        ];
        assert_eq!(names(shown.update(&now)), ["annex-1 attached Some(1000)"]);
        let now = [
            (&a, Attachment::Attached, Some(100)),
            (&b, Attachment::Silent, None),
        ];
        assert_eq!(names(shown.update(&now)), ["annex-1 attached Some(100)"]);
        // annex-2 changed by a reload (a new LAN): a new status line,
        // told again though its attachment is the same.
        let b2 = site("annex-2", "10.99.0.3", "192.168.22.0/24");
        let now = [
            (&a, Attachment::Attached, Some(100)),
            (&b2, Attachment::Silent, None),
        ];
        assert_eq!(names(shown.update(&now)), ["annex-2 silent None"]);
        // A removed site is forgotten: back, it is told again.
        let now = [(&a, Attachment::Attached, Some(100))];
        assert!(shown.update(&now).is_empty());
        let now = [
            (&a, Attachment::Attached, Some(100)),
            (&b2, Attachment::Silent, None),
        ];
        assert_eq!(names(shown.update(&now)), ["annex-2 silent None"]);
    }
}

//! The Prometheus metrics of a router: every family, registered once.
//!
//! Names follow Prometheus' rules (base units, `_total`, `_seconds`,
//! `_bytes`, `_ratio`, points in time as `_timestamp_seconds`), labels are
//! bounded (names from the config or the site registry, a fixed set of
//! states and reason classes), and every series a router can know of at
//! start-up is created at start-up. `docs/metrics.md` lists them all; a
//! unit test walks the registry against both the rules and that list.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

use super::status::RouterRole;
use crate::decision::{Health, ReasonClass};

pub type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UplinkLabels {
    pub uplink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UplinkInfoLabels {
    pub uplink: String,
    pub interface: String,
    pub metered: String,
}

/// A path: an uplink and the hub reached over it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    pub uplink: String,
    pub hub: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathStateLabels {
    pub uplink: String,
    pub hub: String,
    pub state: String,
}

/// A hub of an annex (its `[[hub]] name`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HubLabels {
    pub hub: String,
}

/// A switch from one path to another: the uplinks, the hubs, the reason class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailoverLabels {
    pub from: String,
    pub to: String,
    pub reason: String,
    pub from_hub: String,
    pub to_hub: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteLabels {
    pub site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteUplinkLabels {
    pub site: String,
    pub uplink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

/// Why the `/metrics` server closed a connection: the values of the
/// `cause` label of `townlink_metrics_dropped_connections_total`.
pub const METRICS_DROP_CAUSES: [&str; 2] = ["header_timeout", "evicted"];

/// Every state an uplink can be in: the values of the `state` label.
pub const STATES: [Health; 4] = [
    Health::Unknown,
    Health::Up,
    Health::Recovering,
    Health::Down,
];
/// Every state of a probe connection: the values of its `state` label.
pub const PROBE_CONNECTION_STATES: [&str; 4] =
    ["connecting", "connected", "unreachable", "refused"];

/// Every reason class of a failover: the values of the `reason` label.
pub const REASONS: [ReasonClass; 5] = [
    ReasonClass::Dead,
    ReasonClass::HubDown,
    ReasonClass::Brownout,
    ReasonClass::Congested,
    ReasonClass::Recovered,
];

/// The metric families. Cheap to clone (every metric is an `Arc` inside).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    // Annex: paths (an uplink and the hub reached over it).
    pub uplink_up: Family<PathLabels, Gauge>,
    pub uplink_active: Family<PathLabels, Gauge>,
    pub uplink_state: Family<PathStateLabels, Gauge>,
    pub uplink_rtt: Family<PathLabels, FloatGauge>,
    pub uplink_jitter: Family<PathLabels, FloatGauge>,
    pub uplink_loss: Family<PathLabels, FloatGauge>,
    pub uplink_late: Family<PathLabels, FloatGauge>,
    pub uplink_holddown: Family<PathLabels, FloatGauge>,
    pub uplink_penalty: Family<PathLabels, FloatGauge>,
    pub uplink_probe_sent: Family<PathLabels, Counter>,
    pub uplink_probe_received: Family<PathLabels, Counter>,
    pub uplink_state_changes: Family<PathLabels, Counter>,
    pub uplink_probe_connection: Family<PathStateLabels, Gauge>,
    // Annex: uplinks.
    pub uplink_preferred: Family<UplinkLabels, Gauge>,
    pub uplink_metered: Family<UplinkLabels, Gauge>,
    pub uplink_receive: Family<UplinkLabels, Counter>,
    pub uplink_transmit: Family<UplinkLabels, Counter>,
    // Annex: probe budgets of the uplinks that have one.
    pub uplink_probe_budget: Family<UplinkLabels, FloatGauge>,
    pub uplink_probe_budget_available: Family<UplinkLabels, FloatGauge>,
    pub uplink_probe_budget_limited: Family<UplinkLabels, Gauge>,
    // Annex: its hubs.
    pub hub_preferred: Family<HubLabels, Gauge>,
    // Annex: failovers.
    pub failovers: Family<FailoverLabels, Counter>,
    pub last_failover: FloatGauge,
    // Both roles: the tunnel's peers (the hub on an annex, every site on the hub).
    pub peer_receive: Family<PeerLabels, Counter>,
    pub peer_transmit: Family<PeerLabels, Counter>,
    pub peer_last_handshake: Family<PeerLabels, FloatGauge>,
    // Both roles: end-to-end checks.
    pub check_up: Family<CheckLabels, Gauge>,
    pub check_latency: Family<CheckLabels, FloatGauge>,
    // Both roles: the listeners.
    pub metrics_dropped_connections: Family<CauseLabels, Counter>,
    pub connection_panics: Family<ListenerLabels, Counter>,
    // Hub: what each annex reports over its probe connection.
    pub site_report: Family<SiteLabels, FloatGauge>,
    pub site_uplink_active: Family<SiteUplinkLabels, Gauge>,
    pub site_uplink_up: Family<SiteUplinkLabels, Gauge>,
    pub site_uplink_rtt: Family<SiteUplinkLabels, FloatGauge>,
    pub site_uplink_loss: Family<SiteUplinkLabels, FloatGauge>,
    // Hub: which sites are attached here, and their table-116 routes.
    pub site_attached: Family<SiteLabels, Gauge>,
    pub sites_attached: Gauge,
    pub site_return_route_metric: Family<SiteLabels, Gauge>,
    // Hub: the probe responder.
    pub responder_connections: Family<ResultLabels, Counter>,
    pub responder_garbage: Counter,
    pub responder_echoes: Counter,
    pub responder_dropped_datagrams: Family<CauseLabels, Counter>,
    pub responder_retries: Counter,
    pub responder_handshakes: Gauge,
    pub responder_open_connections: Gauge,
    // Hub: enrollment.
    pub enrollments: Family<ResultLabels, Counter>,
    // Hub: a backup hub following the main hub's registry.
    pub sync_following: Gauge,
    pub sync_connected: Gauge,
    pub sync_last_snapshot: FloatGauge,
    pub sync_applied_changes: Counter,
}

/// Registers a metric whose name ends in a base unit with that unit, so
/// that the OpenMetrics `# UNIT` line matches the suffix.
fn register(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: impl prometheus_client::registry::Metric,
) {
    let units = [
        ("_seconds", Unit::Seconds),
        ("_bytes", Unit::Bytes),
        ("_ratio", Unit::Other("ratio".into())),
    ];
    for (suffix, unit) in units {
        if let Some(base) = name.strip_suffix(suffix) {
            registry.register_with_unit(base, help, unit, metric);
            return;
        }
    }
    registry.register(name, help, metric);
}

impl Metrics {
    /// The panic counter of `listener`'s connections.
    pub fn connection_panics(&self, listener: &str) -> Counter {
        self.connection_panics.get_or_create_owned(&ListenerLabels {
            listener: listener.into(),
        })
    }

    /// The registry of a role: the families that role exports, and
    /// `townlink_build_info`.
    pub fn registry(&self, role: RouterRole) -> Registry {
        let mut r = Registry::with_prefix("townlink");
        let m = self.clone();
        r.register(
            "build",
            "Version of townlink and the role it runs as",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                role: role.as_str().to_string(),
            }),
        );
        let r_ = &mut r;
        register(
            r_,
            "peer_receive_bytes",
            "Bytes received from the tunnel peer (the hub on an annex, a site on the hub)",
            m.peer_receive,
        );
        register(
            r_,
            "peer_transmit_bytes",
            "Bytes sent to the tunnel peer",
            m.peer_transmit,
        );
        register(
            r_,
            "peer_last_handshake_timestamp_seconds",
            "Unix time of the last completed handshake with the tunnel peer (0: none)",
            m.peer_last_handshake,
        );
        register(
            r_,
            "check_up",
            "1 when the last end-to-end check succeeded, else 0",
            m.check_up,
        );
        register(
            r_,
            "check_latency_seconds",
            "Time the last successful end-to-end check took (NaN before the first success)",
            m.check_latency,
        );
        register(
            r_,
            "metrics_dropped_connections",
            "Connections the /metrics server closed, by cause (header_timeout: headers not sent in time; evicted: closed to make room)",
            m.metrics_dropped_connections,
        );
        register(
            r_,
            "connection_panics",
            "Panics while serving one connection of a listener (metrics, responder): the connection was closed, the listener goes on",
            m.connection_panics,
        );
        if role == RouterRole::Annex {
            register(
                r_,
                "uplink_up",
                "1 when the hub answers probes over the uplink within the SLA (the path's state is up), else 0",
                m.uplink_up,
            );
            register(
                r_,
                "uplink_preferred",
                "1 for the uplink the tunnel uses when every uplink is healthy (lowest priority), else 0",
                m.uplink_preferred,
            );
            register(
                r_,
                "uplink_metered",
                "1 for an uplink billed by volume (metered = true, 4G), else 0",
                m.uplink_metered,
            );
            register(
                r_,
                "uplink_active",
                "1 for the path (hub over uplink) the tunnel goes through, else 0",
                m.uplink_active,
            );
            register(
                r_,
                "uplink_state",
                "1 for the path's current state (unknown, up, recovering, down), 0 for the others",
                m.uplink_state,
            );
            register(
                r_,
                "uplink_rtt_seconds",
                "Median probe round-trip time over the SLA window, late echoes included (NaN before the first echo)",
                m.uplink_rtt,
            );
            register(
                r_,
                "uplink_jitter_seconds",
                "Mean variation between consecutive probe round-trip times over the SLA window",
                m.uplink_jitter,
            );
            register(
                r_,
                "uplink_loss_ratio",
                "Share of probes lost over the SLA window, 0 to 1 (NaN before enough samples)",
                m.uplink_loss,
            );
            register(
                r_,
                "uplink_late_ratio",
                "Share of probes answered only after the probe timeout (a queue) over the SLA window, 0 to 1 (NaN before the first probe)",
                m.uplink_late,
            );
            register(
                r_,
                "uplink_holddown_seconds",
                "Down or recovering: the hold-down of this recovery; up: the hold-down a failure now would give (grows with the penalty)",
                m.uplink_holddown,
            );
            register(
                r_,
                "uplink_penalty",
                "Flap damping penalty: about the number of recent failures, halved every damping half-life",
                m.uplink_penalty,
            );
            register(
                r_,
                "uplink_probe_sent_bytes",
                "Bytes the path's prober (to the hub over the uplink) sent, IP and UDP headers included",
                m.uplink_probe_sent,
            );
            register(
                r_,
                "uplink_probe_received_bytes",
                "Bytes the path's prober (to the hub over the uplink) received, IP and UDP headers included",
                m.uplink_probe_received,
            );
            register(
                r_,
                "uplink_state_changes",
                "Changes of the path's state",
                m.uplink_state_changes,
            );
            register(
                r_,
                "uplink_receive_bytes",
                "Bytes received on the uplink's interface (kernel counter, all traffic)",
                m.uplink_receive,
            );
            register(
                r_,
                "uplink_transmit_bytes",
                "Bytes sent on the uplink's interface (kernel counter, all traffic)",
                m.uplink_transmit,
            );
            register(
                r_,
                "uplink_probe_connection",
                "1 for the state of the path's probe connection to the hub (connecting, connected, unreachable, refused), 0 for the others",
                m.uplink_probe_connection,
            );
            register(
                r_,
                "uplink_probe_budget_bytes",
                "Probe bytes the uplink may use per 30 days (probe_budget; uplinks with a budget only)",
                m.uplink_probe_budget,
            );
            register(
                r_,
                "uplink_probe_budget_available_bytes",
                "Probe bytes the uplink may spend now (its budget's token bucket)",
                m.uplink_probe_budget_available,
            );
            register(
                r_,
                "uplink_probe_budget_limited",
                "1 while the probe budget delays the uplink's probes or connection attempts, else 0",
                m.uplink_probe_budget_limited,
            );
            register(
                r_,
                "hub_preferred",
                "1 for the hub the tunnel uses when every hub is reachable (lowest priority, then first), else 0",
                m.hub_preferred,
            );
            register(
                r_,
                "failovers",
                "Switches of the tunnel from one path (hub over uplink) to another, by reason class",
                m.failovers,
            );
            register(
                r_,
                "last_failover_timestamp_seconds",
                "Unix time of the last switch of the tunnel (0: none since start)",
                m.last_failover,
            );
        }
        if role == RouterRole::Hub {
            register(
                r_,
                "site_report_timestamp_seconds",
                "Unix time of the last report of the site's annex (0: none since the hub started)",
                m.site_report,
            );
            register(
                r_,
                "site_uplink_active",
                "1 for the uplink the site's annex reports its tunnel goes through",
                m.site_uplink_active,
            );
            register(
                r_,
                "site_uplink_up",
                "1 when the site's annex reports this uplink up",
                m.site_uplink_up,
            );
            register(
                r_,
                "site_uplink_rtt_seconds",
                "Probe round-trip time the site's annex reports for this uplink",
                m.site_uplink_rtt,
            );
            register(
                r_,
                "site_uplink_loss_ratio",
                "Probe loss the site's annex reports for this uplink, 0 to 1",
                m.site_uplink_loss,
            );
            register(
                r_,
                "site_attached",
                "1 when the site is attached to this hub (its report names this hub and it was heard within 1 s)",
                m.site_attached,
            );
            register(
                r_,
                "sites_attached",
                "Sites attached to this hub",
                m.sites_attached,
            );
            register(
                r_,
                "site_return_route_metric",
                "Metric (BGP MED) of the site's routes in table 116: 100 attached here, 1000 session only, 0 none",
                m.site_return_route_metric,
            );
            register(
                r_,
                "responder_connections",
                "Probe connections to the hub, by result (authenticated, refused, limited, timed_out)",
                m.responder_connections,
            );
            register(
                r_,
                "responder_dropped_datagrams",
                "Datagrams the responder dropped before any handshake, by cause (malformed, unsupported_version, short_initial, rate_limited)",
                m.responder_dropped_datagrams,
            );
            register(
                r_,
                "responder_retries",
                "QUIC Retry packets the responder sent (one per admitted Initial without a token)",
                m.responder_retries,
            );
            register(
                r_,
                "responder_handshakes",
                "Probe and enrollment handshakes in progress",
                m.responder_handshakes,
            );
            register(
                r_,
                "responder_open_connections",
                "Probe and enrollment connections open, handshakes included",
                m.responder_open_connections,
            );
            register(
                r_,
                "responder_garbage_datagrams",
                "Datagrams on authenticated probe connections that were neither probes nor reports",
                m.responder_garbage,
            );
            register(
                r_,
                "responder_echoes",
                "Probes the hub answered",
                m.responder_echoes,
            );
            register(
                r_,
                "enrollments",
                "Enrollment attempts (townlink join), by result (joined, refused)",
                m.enrollments,
            );
            register(
                r_,
                "sync_following",
                "1 on a hub that follows the main hub's registry ([follow]), 0 on a main hub",
                m.sync_following,
            );
            register(
                r_,
                "sync_connected",
                "1 while this hub (with [follow]) has the main hub's registry channel open; 0 on a main hub",
                m.sync_connected,
            );
            register(
                r_,
                "sync_last_snapshot_timestamp_seconds",
                "Unix time this hub last applied a snapshot of the main hub's registry (0: none since start)",
                m.sync_last_snapshot,
            );
            register(
                r_,
                "sync_applied_changes",
                "Site changes (joins, revocations, removals) applied from the main hub's registry",
                m.sync_applied_changes,
            );
        }
        r
    }
}

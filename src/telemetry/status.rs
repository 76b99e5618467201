//! What `townlink status` shows: the daemon's view, as JSON on the control
//! socket and as a compact text for a technician.
//!
//! Times are Unix seconds (like the metrics), durations milliseconds,
//! loss a ratio from 0 to 1.

use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

use crate::decision::Health;
pub use crate::sites::attachment::AttachmentView;
use crate::sites::{SiteSource, SiteState};

/// What a router runs as (`role` of the status, of `townlink_build_info`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouterRole {
    Hub,
    #[default]
    Annex,
}

impl RouterRole {
    pub fn as_str(self) -> &'static str {
        match self {
            RouterRole::Hub => "hub",
            RouterRole::Annex => "annex",
        }
    }
}

impl fmt::Display for RouterRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// An uplink's [`Health`] as its word ("unknown", "up", "recovering",
/// "down"), the same as the `state` label of the metrics.
mod health_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::decision::Health;
    use crate::telemetry::metrics::STATES;

    pub fn serialize<S: Serializer>(h: &Health, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(h.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Health, D::Error> {
        let text = String::deserialize(d)?;
        STATES
            .into_iter()
            .find(|h| h.as_str() == text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown uplink state {text:?}")))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub version: String,
    pub role: RouterRole,
    /// The annex's name; none on the hub.
    pub name: Option<String>,
    pub started_at: f64,
    pub tunnel: TunnelView,
    /// Annex only.
    pub uplinks: Vec<UplinkView>,
    /// Annex only: the uplink the tunnel goes through.
    pub active: Option<String>,
    /// Annex only: the hub the tunnel goes to.
    #[serde(default)]
    pub active_hub: Option<String>,
    /// Annex only: every hub, in config order.
    #[serde(default)]
    pub hubs: Vec<HubView>,
    /// Annex only: every path (a hub over an uplink), hub by hub, uplinks
    /// in config order. `uplinks` are the active hub's paths.
    #[serde(default)]
    pub paths: Vec<UplinkView>,
    /// Annex only: why the probes measure nothing, e.g. "probe responder
    /// unreachable" or "refused by the hub: unknown certificate".
    #[serde(default)]
    pub probing: Option<String>,
    pub failovers: u64,
    pub last_failover: Option<FailoverView>,
    pub checks: Vec<CheckView>,
    /// Hub only.
    pub sites: Vec<SiteView>,
    /// Hub only.
    pub responder: Option<ResponderView>,
    /// A hub with `[follow]`: where its sites come from.
    #[serde(default)]
    pub follow: Option<FollowView>,
}

/// A following hub's view of the main hub's registry.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FollowView {
    /// The main hub's name and probe endpoint.
    pub main: String,
    pub endpoint: String,
    pub connected: bool,
    /// Unix time of the last snapshot applied (none since start: the
    /// persisted copy, if any, is in force).
    pub last_snapshot: Option<f64>,
    pub version: Option<u64>,
}

/// A hub as an annex knows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HubView {
    pub name: String,
    /// Its tunnel device on the annex.
    pub interface: String,
    /// The tunnel goes to this hub.
    pub active: bool,
    /// The hub used when every path answers (lowest priority).
    pub preferred: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TunnelView {
    pub interface: String,
    pub address: String,
    pub listen_port: Option<u16>,
    /// Annex: the hub. (The hub's peers are in `sites`.)
    pub peers: Vec<PeerView>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerView {
    pub name: String,
    pub endpoint: Option<String>,
    pub last_handshake: Option<f64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UplinkView {
    /// The uplink's name.
    pub name: String,
    /// The hub this view is about (a path), or seen through (`uplinks`:
    /// the active hub).
    #[serde(default)]
    pub hub: Option<String>,
    pub interface: String,
    pub metered: bool,
    /// The probe connection: connecting, connected, unreachable, refused.
    #[serde(default)]
    pub probe: String,
    #[serde(with = "health_text")]
    pub state: Health,
    pub active: bool,
    pub rtt_ms: Option<f64>,
    pub jitter_ms: f64,
    pub loss: Option<f64>,
    /// Share of probes answered after the timeout (a queue).
    #[serde(default)]
    pub late: Option<f64>,
    /// Down or recovering: the hold-down of this recovery; up: the one a
    /// failure now would give.
    #[serde(default)]
    pub holddown_s: f64,
    /// The flap damping penalty (about the number of recent failures).
    #[serde(default)]
    pub penalty: f64,
    pub state_changes: u64,
    /// Why the uplink is in its state, e.g. "4 probes lost in a row".
    pub reason: Option<String>,
    /// A path: its prober's bytes; an uplink (`uplinks`): every hub's
    /// prober over it, what its probe budget counts.
    pub probe_sent_bytes: u64,
    pub probe_received_bytes: u64,
    /// Kernel counters of the interface.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// The probe budget, for an uplink that has one.
    #[serde(default)]
    pub budget: Option<BudgetView>,
}

/// An uplink nothing is known of yet (state unknown).
impl Default for UplinkView {
    fn default() -> UplinkView {
        UplinkView {
            name: String::new(),
            hub: None,
            interface: String::new(),
            metered: false,
            probe: String::new(),
            state: Health::Unknown,
            active: false,
            rtt_ms: None,
            jitter_ms: 0.0,
            loss: None,
            late: None,
            holddown_s: 0.0,
            penalty: 0.0,
            state_changes: 0,
            reason: None,
            probe_sent_bytes: 0,
            probe_received_bytes: 0,
            rx_bytes: 0,
            tx_bytes: 0,
            budget: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BudgetView {
    /// Bytes per 30 days.
    pub budget_bytes: u64,
    /// Bytes that may be spent now.
    pub available_bytes: u64,
    /// The budget delays probes or connection attempts.
    pub limited: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FailoverView {
    pub at: f64,
    /// The uplinks, from and to.
    pub from: String,
    pub to: String,
    /// The hubs, from and to.
    #[serde(default)]
    pub from_hub: Option<String>,
    #[serde(default)]
    pub to_hub: Option<String>,
    /// dead, hub_down, brownout, congested or recovered.
    pub class: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CheckView {
    pub name: String,
    pub target: String,
    /// None until the first attempt ends.
    pub up: Option<bool>,
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
    pub at: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SiteView {
    pub name: String,
    /// A `[[site]]` table, or enrolled.
    #[serde(default)]
    pub source: SiteSource,
    pub address: String,
    pub peer: PeerView,
    /// What the annex last reported over its probe connection.
    pub report: Option<SiteReportView>,
    /// Whether it is attached to this hub, and its table-116 routes.
    #[serde(default)]
    pub attachment: AttachmentView,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SiteReportView {
    pub at: f64,
    /// The uplink the annex's tunnel goes through.
    pub active: String,
    /// The hub it goes to, as the annex names it (its `[[hub]] name`);
    /// none from an annex that does not say (report version 1).
    #[serde(default)]
    pub hub: Option<String>,
    /// The uplinks as seen through that hub.
    pub uplinks: Vec<ReportedUplink>,
    /// An annex with several hubs: every path, each with its hub.
    #[serde(default)]
    pub paths: Vec<ReportedUplink>,
}

/// One uplink as an annex reports it to the hub (the wire format is
/// `probe::wire::Uplink`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReportedUplink {
    pub name: String,
    /// A path's hub.
    #[serde(default)]
    pub hub: Option<String>,
    pub state: String,
    pub rtt_ms: Option<f64>,
    pub loss: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ResponderView {
    pub authenticated: u64,
    pub refused: u64,
    pub garbage: u64,
    pub echoed: u64,
}

/// A path's name as reasons write it: "main/fiber".
fn path_name(u: &UplinkView) -> String {
    match &u.hub {
        Some(h) => format!("{h}/{}", u.name),
        None => u.name.clone(),
    }
}

/// One end of a switch: the uplink, "hub/uplink" with several hubs.
fn switch_end(several: bool, hub: &Option<String>, uplink: &str) -> String {
    match hub {
        Some(h) if several => format!("{h}/{uplink}"),
        _ => uplink.to_string(),
    }
}

/// "12.3 ms", or "-" when unknown.
fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1} ms"))
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1} %", v * 100.0))
}

/// "2026-11-24 21:30:05 UTC (42 s ago)", relative to `now`.
pub fn when(t: f64, now: f64) -> String {
    let stamp = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t.max(0.0));
    let ago = (now - t).max(0.0).round() as u64;
    format!(
        "{} ({} ago)",
        humantime::format_rfc3339_seconds(stamp),
        humantime::format_duration(std::time::Duration::from_secs(ago))
    )
}

impl Status {
    /// `uplinks`, `active` and `active_hub` from `paths` and `hubs`: the
    /// active hub's paths, `uplinks` per hub.
    pub(crate) fn show_active_hub(&mut self, uplinks: usize) {
        let h = self.hubs.iter().position(|h| h.active).unwrap_or(0);
        self.active_hub = self.hubs.get(h).map(|h| h.name.clone());
        self.uplinks = self
            .paths
            .iter()
            .skip(h * uplinks)
            .take(uplinks)
            .cloned()
            .collect();
        self.active = self
            .uplinks
            .iter()
            .find(|u| u.active)
            .map(|u| u.name.clone());
    }

    /// The human view, as of Unix time `now`.
    pub fn render(&self, now: f64) -> String {
        let mut o = String::new();
        let _ = self.write(&mut o, now);
        o
    }

    /// One line for an uplink (or a path, `name` "hub/uplink"), and its
    /// reason on the next line when it is not up.
    fn write_uplink(
        &self,
        o: &mut String,
        u: &UplinkView,
        name: &str,
        width: usize,
        budget: bool,
    ) -> fmt::Result {
        let mut notes = Vec::new();
        if u.late.is_some_and(|l| l > 0.0) {
            notes.push(format!("late {}", pct(u.late)));
        }
        // The damping, when it matters: out of service, or failed recently.
        if matches!(u.state, Health::Down | Health::Recovering) || u.penalty >= 0.05 {
            notes.push(format!(
                "hold-down {} s, penalty {:.1}",
                u.holddown_s.round(),
                u.penalty
            ));
        }
        if !u.probe.is_empty() && u.probe != "connected" {
            notes.push(format!("probes {}", u.probe));
        }
        if u.metered {
            notes.push(format!(
                "metered, {} B probing",
                u.probe_sent_bytes + u.probe_received_bytes
            ));
        }
        if let Some(b) = u.budget.as_ref().filter(|_| budget) {
            notes.push(format!(
                "budget {}/30 days, {} left{}",
                crate::size::format(b.budget_bytes as f64),
                crate::size::format(b.available_bytes as f64),
                if b.limited { ", LIMITING probes" } else { "" }
            ));
        }
        // No ratio yet: the window holds too few probes to mean
        // anything (unless probes cannot measure at all, said above).
        let loss = match u.loss {
            None if self.probing.is_none() => "measuring".to_string(),
            l => pct(l),
        };
        writeln!(
            o,
            "  {} {:<width$} {:<8} {:<10} rtt {:>9}  jitter {:>8}  loss {:>9}  {}",
            if u.active { '*' } else { ' ' },
            name,
            u.interface,
            u.state.as_str(),
            ms(u.rtt_ms),
            ms(Some(u.jitter_ms)),
            loss,
            notes.join("; ")
        )?;
        // Why an uplink is out of service (and for how long).
        if u.state != Health::Up {
            if let Some(r) = &u.reason {
                writeln!(o, "      {r}")?;
            }
        }
        Ok(())
    }

    fn write(&self, o: &mut String, now: f64) -> fmt::Result {
        match &self.name {
            Some(n) => writeln!(o, "townlink {} · {} {n}", self.version, self.role)?,
            None => writeln!(o, "townlink {} · {}", self.version, self.role)?,
        }
        let t = &self.tunnel;
        writeln!(o, "tunnel {} {}", t.interface, t.address)?;
        for p in &t.peers {
            writeln!(
                o,
                "  peer {:<12} {}  handshake {}  rx {} B  tx {} B",
                p.name,
                p.endpoint.as_deref().unwrap_or("-"),
                p.last_handshake.map_or("never".into(), |h| when(h, now)),
                p.rx_bytes,
                p.tx_bytes
            )?;
        }
        if !self.uplinks.is_empty() {
            // With several hubs, one line per path; with one, per uplink.
            let several = self.hubs.len() > 1;
            if several {
                let hubs: Vec<String> = self
                    .hubs
                    .iter()
                    .map(|h| {
                        let mut notes = vec![h.interface.clone()];
                        if h.preferred {
                            notes.push("preferred".into());
                        }
                        format!("{} ({})", h.name, notes.join(", "))
                    })
                    .collect();
                writeln!(
                    o,
                    "hubs (active: {}): {}",
                    self.active_hub.as_deref().unwrap_or("-"),
                    hubs.join(", ")
                )?;
                writeln!(
                    o,
                    "paths (active: {})",
                    match (&self.active_hub, &self.active) {
                        (Some(h), Some(u)) => format!("{h}/{u}"),
                        _ => "-".into(),
                    }
                )?;
            } else {
                writeln!(
                    o,
                    "uplinks (active: {})",
                    self.active.as_deref().unwrap_or("-")
                )?;
            }
            if let Some(p) = &self.probing {
                // What the tunnel itself says, since the probes cannot.
                // A hub that refuses this annex has removed (or never had)
                // its peer: an earlier handshake proves nothing then.
                let refused = p.starts_with("refused by the hub");
                let peer = t
                    .peers
                    .iter()
                    .find(|p| Some(&p.name) == self.active_hub.as_ref())
                    .or(t.peers.first());
                let handshake = match peer.and_then(|p| p.last_handshake) {
                    Some(h) if now - h < 180.0 => format!(
                        "{} {} ago{}",
                        if refused {
                            "last tunnel handshake"
                        } else {
                            "tunnel handshake"
                        },
                        humantime::format_duration(std::time::Duration::from_secs(
                            (now - h).max(0.0).round() as u64
                        )),
                        if refused { "" } else { ": the tunnel works" }
                    ),
                    Some(h) => format!("no tunnel handshake since {}", when(h, now)),
                    None => "no tunnel handshake yet".into(),
                };
                writeln!(o, "  {p} ({handshake}); uplinks not measured")?;
            }
            if several {
                let width = self
                    .paths
                    .iter()
                    .map(|u| path_name(u).chars().count())
                    .max()
                    .unwrap_or(0)
                    .max(10);
                let mut budgets = std::collections::BTreeSet::new();
                for u in &self.paths {
                    // An uplink's budget once, on its first path.
                    let budget = budgets.insert(u.name.clone());
                    self.write_uplink(o, u, &path_name(u), width, budget)?;
                }
            } else {
                for u in &self.uplinks {
                    self.write_uplink(o, u, &u.name, 10, true)?;
                }
            }
            match &self.last_failover {
                Some(f) => writeln!(
                    o,
                    "last switch {} → {} at {}: {} ({}); {} since start",
                    switch_end(several, &f.from_hub, &f.from),
                    switch_end(several, &f.to_hub, &f.to),
                    when(f.at, now),
                    f.class,
                    f.reason,
                    self.failovers
                )?,
                None => writeln!(o, "last switch: none since start")?,
            }
        }
        if !self.checks.is_empty() {
            writeln!(o, "checks")?;
            for c in &self.checks {
                let state = match c.up {
                    None => "pending".to_string(),
                    Some(true) => format!("ok {}", ms(c.latency_ms)),
                    Some(false) => format!("FAILED: {}", c.error.as_deref().unwrap_or("?")),
                };
                writeln!(o, "  {:<12} tcp {:<22} {state}", c.name, c.target)?;
            }
        }
        if let Some(r) = &self.responder {
            writeln!(
                o,
                "probe responder: {} authenticated, {} refused, {} garbage, {} echoed",
                r.authenticated, r.refused, r.garbage, r.echoed
            )?;
        }
        if let Some(f) = &self.follow {
            let snapshot = match (f.last_snapshot, f.version) {
                (Some(t), Some(v)) => format!("last snapshot v{v} {}", when(t, now)),
                _ => "no snapshot since start (the persisted copy is in force)".into(),
            };
            writeln!(
                o,
                "sites from {} at {}: {}, {snapshot}",
                f.main,
                f.endpoint,
                if f.connected {
                    "connected"
                } else {
                    "NOT CONNECTED"
                }
            )?;
        }
        if self.role == RouterRole::Hub {
            let attached = self
                .sites
                .iter()
                .filter(|s| s.attachment.state == "attached")
                .count();
            writeln!(o, "sites ({}, {attached} attached here)", self.sites.len())?;
            for s in &self.sites {
                let report = match &s.report {
                    Some(r) => {
                        let active = r.uplinks.iter().find(|u| u.name == r.active);
                        // The hub, from an annex that has several.
                        let on = match &r.hub {
                            Some(h) if !r.paths.is_empty() => format!("{h}/{}", r.active),
                            _ => r.active.clone(),
                        };
                        format!(
                            "on {on} rtt {} loss {}",
                            ms(active.and_then(|u| u.rtt_ms)),
                            pct(active.and_then(|u| u.loss))
                        )
                    }
                    None => "no report".into(),
                };
                let attachment = s.attachment.words();
                writeln!(
                    o,
                    "  {:<12} {:<10} {:<12} {:<22} handshake {}  {attachment}; {report}",
                    s.name,
                    SiteState::from_handshake(
                        s.source.never_connected(),
                        s.peer.last_handshake,
                        now
                    ),
                    s.address,
                    s.peer.endpoint.as_deref().unwrap_or("-"),
                    s.peer
                        .last_handshake
                        .map_or("never".into(), |h| when(h, now)),
                )?;
            }
        }
        Ok(())
    }
}

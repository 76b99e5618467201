//! Copies the counters that live elsewhere (the tunnel's peers, the
//! uplinks' interfaces in the kernel) into the telemetry, once a second.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Telemetry;
use crate::keys::PublicKey;
use crate::netlink::Netlink;
use crate::tunnel::Tunnel;

/// How often the counters are read; well below any scrape interval.
pub const PERIOD: Duration = Duration::from_secs(1);

/// What to read: the tunnel's peers by key, the uplinks by interface.
#[derive(Debug, Clone, Default)]
pub struct CollectorTargets {
    /// Peer key → the name it is shown under (hub name, site name).
    pub peers: HashMap<PublicKey, String>,
    /// (uplink name, interface name).
    pub interfaces: Vec<(String, String)>,
}

pub async fn run(
    telemetry: Arc<Telemetry>,
    tunnel: Arc<Tunnel>,
    net: Netlink,
    sources: tokio::sync::watch::Receiver<CollectorTargets>,
    stop: CancellationToken,
) {
    let service_status = crate::service::Status::default();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Log a failing source once, not every second.
    let mut failing: HashMap<String, bool> = HashMap::new();
    let mut report = |what: &str, error: Option<String>| {
        let was = failing
            .insert(what.to_string(), error.is_some())
            .unwrap_or(false);
        match error {
            Some(e) if !was => tracing::warn!(source = what, error = %e, "cannot read counters"),
            None if was => tracing::info!(source = what, "counters readable again"),
            _ => {}
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sources = sources.borrow().clone();
        match tunnel.status().await {
            Ok(status) => {
                report("tunnel", None);
                for p in &status.peers {
                    if let Some(name) = sources.peers.get(&p.public_key) {
                        telemetry.peer(name, p);
                    }
                }
            }
            Err(e) => report("tunnel", Some(e.to_string())),
        }
        for (uplink, interface) in &sources.interfaces {
            match net.counters(interface).await {
                Ok(c) => {
                    report(interface, None);
                    telemetry.uplink_bytes(uplink, c.rx_bytes, c.tx_bytes);
                }
                Err(e) => report(interface, Some(e.to_string())),
            }
        }
        service_status.set(&telemetry.status_line());
    }
}

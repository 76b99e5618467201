//! The hub's start-up: one peer per site, a route per site LAN, the QUIC
//! probe responder, and a monitor of the sites' tunnel endpoints.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Installed;
use crate::config::{Config, HubConfig};
use crate::keys::PublicKey;
use crate::probe::responder;
use crate::probe::tls::AllowedSites;
use crate::routing;
use crate::sites::{Name, Site, SiteSet};
use crate::tunnel::{PeerConfig, Tunnel};

/// How often the hub looks at its peers' endpoints.
const MONITOR_PERIOD: Duration = Duration::from_secs(1);

/// The tunnel peer of a site: no endpoint (the annex calls in, possibly
/// from behind a carrier's NAT; WireGuard roaming follows it).
pub fn site_peer(site: &Site) -> PeerConfig {
    PeerConfig {
        public_key: site.public_key,
        endpoint: None,
        allowed_ips: site.allowed_ips(),
        keepalive: None,
    }
}

/// The fingerprints the responder accepts: the sites that have one.
pub fn allowed_sites(
    sites: &SiteSet,
) -> impl Iterator<Item = (crate::probe::tls::Fingerprint, Name)> + '_ {
    sites
        .iter()
        .filter_map(|s| s.certificate.map(|f| (f, s.name.clone())))
}

pub(super) async fn start(
    config: &Config,
    hub: &HubConfig,
    installed: &mut Installed,
) -> anyhow::Result<()> {
    let tunnel = installed
        .tunnel
        .clone()
        .expect("tunnel is created before the role starts");
    for site in hub.sites.iter() {
        tunnel.add_peer(&site_peer(site)).await?;
        tracing::info!(site = %site.name, address = %site.address, "site added");
        if site.certificate.is_none() {
            tracing::warn!(site = %site.name, "site has no certificate: its probes will be refused");
        }
    }
    for route in routing::hub_routes(&hub.sites, config.tunnel.interface.as_str()) {
        installed.net.replace_route(&route).await?;
    }

    let allowed = Arc::new(AllowedSites::default());
    allowed.set(allowed_sites(&hub.sites));
    // Dual-stack where IPv6 exists, IPv4 otherwise.
    let port = config.probe.listen_port;
    let endpoint = responder::endpoint(
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
        &config.probe.identity,
        allowed.clone(),
    )
    .or_else(|_| {
        responder::endpoint(
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            &config.probe.identity,
            allowed.clone(),
        )
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot open the probe responder on UDP port {port} (probe.listen_port): {e}"
        )
    })?;
    tracing::info!(port, "probe responder listening");
    let counters = Arc::new(installed.telemetry.responder_counters());
    installed.tasks.spawn(responder::serve(
        endpoint,
        allowed,
        counters,
        installed.telemetry.clone(),
        installed.stop.clone(),
    ));

    let names: HashMap<PublicKey, Name> = hub
        .sites
        .iter()
        .map(|s| (s.public_key, s.name.clone()))
        .collect();
    installed
        .tasks
        .spawn(monitor_peers(tunnel, names, installed.stop.clone()));
    Ok(())
}

/// Logs every change of a site's tunnel endpoint (e.g. the annex moved to
/// its 4G uplink, seen through the carrier's NAT).
async fn monitor_peers(
    tunnel: Arc<Tunnel>,
    names: HashMap<PublicKey, Name>,
    stop: CancellationToken,
) {
    let mut endpoints: HashMap<PublicKey, SocketAddr> = HashMap::new();
    let mut tick = tokio::time::interval(MONITOR_PERIOD);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(status) = tunnel.status().await else {
            continue;
        };
        for peer in status.peers {
            let (Some(endpoint), Some(site)) = (peer.endpoint, names.get(&peer.public_key)) else {
                continue;
            };
            if endpoints.insert(peer.public_key, endpoint) != Some(endpoint) {
                tracing::info!(site = %site, endpoint = %endpoint, "site endpoint changed");
            }
        }
    }
}

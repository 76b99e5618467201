//! The hub's start-up: one peer per site, a route per site LAN.

use super::Installed;
use crate::config::{Config, HubConfig};
use crate::routing;
use crate::sites::Site;
use crate::tunnel::PeerConfig;

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

pub(super) async fn start(
    config: &Config,
    hub: &HubConfig,
    installed: &mut Installed,
) -> anyhow::Result<()> {
    let tunnel = installed
        .tunnel
        .as_ref()
        .expect("tunnel is created before the role starts");
    for site in hub.sites.iter() {
        tunnel.add_peer(&site_peer(site)).await?;
        tracing::info!(site = %site.name, address = %site.address, "site added");
    }
    for route in routing::hub_routes(&hub.sites, config.tunnel.interface.as_str()) {
        installed.net.replace_route(&route).await?;
    }
    Ok(())
}

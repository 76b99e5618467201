//! The hub's start-up: its sites (config and registry, see [`super::sites`]),
//! the QUIC responder (probes and enrollment), the return path (which
//! sites are attached here, table 116: [`super::return_path`]) and a
//! monitor of the sites' tunnel endpoints.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::return_path::ReturnPath;
use super::sites::{HubIdentity, HubSites, HubSitesSetup, SiteDeps};
use super::Running;
use crate::config::{Config, HubConfig};
use crate::enroll::{JoinRequest, JoinResponse};
use crate::keys::PublicKey;
use crate::probe::responder::{self, Context, Sessions, SyncSource};
use crate::probe::tls::AllowedSites;
use crate::telemetry::collector::CollectorTargets;
use crate::tunnel::Tunnel;

/// How often the hub looks at its peers' endpoints.
const MONITOR_PERIOD: Duration = Duration::from_secs(1);

pub(super) async fn start(
    config: &Config,
    hub: &HubConfig,
    running: &mut Running,
    sources: watch::Sender<CollectorTargets>,
) -> anyhow::Result<Arc<HubSites>> {
    let tunnel = running
        .tunnel
        .clone()
        .expect("tunnel is created before the role starts");
    let allowed = Arc::new(AllowedSites::default());
    let sessions = Arc::new(Sessions::default());
    let monitor = sources.subscribe();
    let (installed, installed_sites) = watch::channel(Vec::new());
    let sites = HubSites::start(
        hub.sites.clone(),
        HubSitesSetup {
            deps: SiteDeps {
                tunnel: tunnel.clone(),
                net: running.net.clone(),
                interface: config.tunnel.interface.to_string(),
                allowed: allowed.clone(),
                sessions: sessions.clone(),
                telemetry: running.telemetry.clone(),
                collector: sources,
                installed,
            },
            enrollment: hub.enrollment.clone(),
            hub: HubIdentity {
                public_key: config.tunnel.private_key.public_key(),
                fingerprint: running.identity.fingerprint(),
                probe_port: config.probe.listen_port,
                address: config.tunnel.address,
                followers: hub.followers.clone(),
            },
            supervisor: running.supervisor.clone(),
            follow: hub.follow.clone(),
            state_directory: config.state_directory.clone(),
        },
    )
    .await?;

    // Dual-stack where IPv6 exists, IPv4 otherwise.
    let port = config.probe.listen_port;
    let identity = &running.identity;
    let counters = Arc::new(running.telemetry.responder_counters());
    let endpoint = responder::endpoint(
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
        identity,
        &counters,
    )
    .or_else(|_| {
        responder::endpoint(
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            identity,
            &counters,
        )
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot open the probe responder on UDP port {port} (probe.listen_port): {e}"
        )
    })?;
    let instance = responder::new_instance();
    tracing::info!(
        port,
        instance = format!("{instance:016x}"),
        "probe responder listening (probes and enrollment)"
    );
    let enroller_sites = sites.clone();
    let return_path = ReturnPath {
        net: running.net.clone(),
        tunnel: tunnel.clone(),
        interface: config.tunnel.interface.to_string(),
        sessions: sessions.clone(),
        sites: installed_sites,
        telemetry: running.telemetry.clone(),
    };
    let context = Context {
        allowed,
        sessions,
        counters,
        events: running.telemetry.clone(),
        enroll: Some(Arc::new(move |request, certificate, remote| {
            let sites = enroller_sites.clone();
            Box::pin(async move {
                let response = match serde_json::from_slice::<JoinRequest>(&request) {
                    Ok(request) => sites.join(request, certificate, remote).await,
                    Err(e) => JoinResponse::Refused {
                        reason: format!("the request is not understood: {e}"),
                    },
                };
                serde_json::to_vec(&response).map_err(|e| e.to_string())
            })
        })),
        sync: registry_for_followers(hub, &sites),
        instance,
    };
    if let Some(follow) = &hub.follow {
        let client = super::follow::client(identity, follow)?;
        tracing::info!(main = %follow.main, endpoint = %follow.endpoint, "following the main hub's registry");
        running.supervisor.service(
            "follow main hub",
            &running.stop,
            super::follow::run(
                sites.clone(),
                follow.clone(),
                client,
                running.telemetry.clone(),
                running.stop.clone(),
            ),
        );
    }
    running.supervisor.service(
        "probe responder",
        &running.stop,
        responder::serve(endpoint, context, running.stop.clone()),
    );
    running.supervisor.service(
        "return path",
        &running.stop,
        super::return_path::run(return_path, running.stop.clone()),
    );
    running.supervisor.service(
        "site monitor",
        &running.stop,
        monitor_peers(tunnel, monitor, running.stop.clone()),
    );
    Ok(sites)
}

/// The registry for the `[[follower]]` certificates (ALPN
/// `townlink-sync/1`); none when the hub has no follower.
fn registry_for_followers(hub: &HubConfig, sites: &Arc<HubSites>) -> Option<SyncSource> {
    if hub.followers.is_empty() {
        return None;
    }
    let followers = hub.followers.clone();
    let sites = sites.clone();
    Some(Arc::new(move |fingerprint| {
        let f = followers.iter().find(|f| &f.certificate == fingerprint)?;
        Some((f.name.clone(), sites.registry_frames()))
    }))
}

/// Logs every change of a site's tunnel endpoint (e.g. the annex moved to
/// its 4G uplink, seen through the carrier's NAT).
async fn monitor_peers(
    tunnel: Arc<Tunnel>,
    sources: watch::Receiver<CollectorTargets>,
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
        let names = sources.borrow().peers.clone();
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

//! The annex's start-up: uplink next hops, policy routing, the hub peer,
//! and the handshake keeper that pushes traffic into the tunnel whenever
//! the session with the hub is missing (boringtun trap 7).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::Installed;
use crate::config::{AnnexConfig, Config, HubPeer};
use crate::decision::Engine;
use crate::failover::Failover;
use crate::probe::prober::{self, Outgoing, ProberSpec};
use crate::probe::{responder, tls};
use crate::routing::{self, NextHop};
use crate::tunnel::{self, PeerConfig, Tunnel};
use tokio::sync::{mpsc, watch};

/// How often the handshake keeper looks at the tunnel.
const KEEPER_PERIOD: Duration = Duration::from_secs(2);
/// A session older than this is about to be rejected (WireGuard's
/// REJECT_AFTER_TIME is 180 s; rekeying starts at 120 s): push traffic.
const STALE_HANDSHAKE: Duration = Duration::from_secs(135);
/// The next hop of every uplink: from the config, else learned from the kernel.
async fn next_hops(
    annex: &AnnexConfig,
    installed: &Installed,
    ipv6: bool,
) -> anyhow::Result<Vec<NextHop>> {
    let mut hops = Vec::new();
    for (i, up) in annex.uplinks.iter().enumerate() {
        let gateway = match up.gateway {
            Some(gw) => {
                installed
                    .net
                    .require_link(up.interface.as_str())
                    .await
                    .with_context(|| {
                        format!("uplink[{i}] {} (interface {})", up.name, up.interface)
                    })?;
                Some(gw)
            }
            None => {
                let learned = installed
                    .net
                    .learn_gateway(up.interface.as_str(), ipv6)
                    .await
                    .with_context(|| {
                        format!("uplink[{i}] {} (interface {})", up.name, up.interface)
                    })?;
                match learned {
                    Some(gw) => {
                        tracing::info!(uplink = %up.name, gateway = %gw, "gateway learned from the kernel")
                    }
                    None => {
                        tracing::info!(uplink = %up.name, "no gateway on this interface: routing directly on the link")
                    }
                }
                learned
            }
        };
        hops.push(NextHop {
            interface: up.interface.as_str().to_string(),
            gateway,
        });
    }
    Ok(hops)
}

fn hub_peer(hub: &HubPeer, endpoint: SocketAddr) -> PeerConfig {
    PeerConfig {
        public_key: hub.public_key,
        endpoint: Some(endpoint),
        allowed_ips: hub.allowed_ips(),
        keepalive: Some(hub.keepalive),
    }
}

pub(super) async fn start(
    config: &Config,
    annex: &AnnexConfig,
    installed: &mut Installed,
) -> anyhow::Result<()> {
    // Only one hub for now; the plan and the peers are per hub already.
    let hub = &annex.hubs[0];
    let endpoint = hub
        .endpoint
        .resolve()
        .await
        .with_context(|| format!("resolving hub[0].endpoint {}", hub.endpoint))?;
    let ipv6 = endpoint.is_ipv6();
    let hops = next_hops(annex, installed, ipv6).await?;
    for up in &annex.uplinks {
        installed
            .sysctls
            .loosen_rp_filter(up.interface.as_str())
            .with_context(|| format!("setting loose reverse-path filtering on {}", up.interface))?;
    }

    let (active, active_uplink) = annex.preferred_uplink();
    let (routes, rules) = routing::annex_plan(
        annex,
        &config.routing,
        config.tunnel.interface.as_str(),
        &hops,
        active,
        ipv6,
    );
    for rule in &rules {
        installed.net.add_rule(rule).await?;
    }
    for route in &routes {
        installed.net.replace_route(route).await?;
    }
    tracing::info!(uplink = %active_uplink.name, interface = %active_uplink.interface, "tunnel routed through uplink");

    let tunnel = installed
        .tunnel
        .as_ref()
        .expect("tunnel is created before the role starts");
    tunnel.add_peer(&hub_peer(hub, endpoint)).await?;
    tracing::info!(hub = %hub.name, endpoint = %endpoint, "hub peer added");
    tunnel::push_traffic(hub.address);
    installed.supervisor.service(
        "handshake keeper",
        &installed.stop,
        keep_handshake(tunnel.clone(), hub.clone(), installed.stop.clone()),
    );
    start_failover(config, annex, installed, endpoint, hops, active, ipv6)?;
    Ok(())
}

/// One prober per uplink, and the failover task they report to.
fn start_failover(
    config: &Config,
    annex: &AnnexConfig,
    installed: &mut Installed,
    endpoint: SocketAddr,
    hops: Vec<NextHop>,
    active: usize,
    ipv6: bool,
) -> anyhow::Result<()> {
    let hub = &annex.hubs[0];
    let crypto = tls::client_config(&config.probe.identity, hub.fingerprint)?;
    let mut client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto)?,
    ));
    client.transport_config(Arc::new(responder::transport()));
    let probe_addr = SocketAddr::new(endpoint.ip(), hub.probe_port);
    let clock = Instant::now();
    let (samples_tx, samples_rx) = mpsc::channel(1024);
    let mut intervals = Vec::new();
    let (reports, reports_rx) = watch::channel(Outgoing::default());
    for (i, up) in annex.uplinks.iter().enumerate() {
        let (tx, rx) = watch::channel(config.probe.interval);
        intervals.push(tx);
        let spec = ProberSpec {
            uplink: i,
            name: up.name.to_string(),
            interface: up.interface.to_string(),
            fwmark: config.routing.uplink_fwmark(i),
            hub: probe_addr,
            client: client.clone(),
            timeout: config.probe.timeout,
        };
        installed.supervisor.service(
            format!("prober {}", up.name),
            &installed.stop,
            prober::run(
                spec,
                rx,
                reports_rx.clone(),
                samples_tx.clone(),
                Arc::new(installed.telemetry.probe_counters(up.name.as_str())),
                clock,
                installed.stop.clone(),
            ),
        );
    }
    let names: Vec<(String, u32)> = annex
        .uplinks
        .iter()
        .map(|u| (u.name.to_string(), u.priority))
        .collect();
    let engine = Engine::new(annex.failover, &names, active);
    let (settings_tx, settings) = watch::channel((annex.failover, config.probe.clone()));
    installed.failover_settings = Some(settings_tx);
    let failover = Failover {
        net: installed.net.clone(),
        routing: config.routing,
        hops,
        names: names.into_iter().map(|(n, _)| n).collect(),
        metered: annex.uplinks.iter().map(|u| u.metered).collect(),
        ipv6,
        hub_address: hub.address,
        probe: config.probe.clone(),
        intervals,
        telemetry: installed.telemetry.clone(),
        reports,
        settings,
    };
    installed.supervisor.service(
        "failover",
        &installed.stop,
        failover.run(engine, samples_rx, clock, installed.stop.clone()),
    );
    tracing::info!(hub = %probe_addr, uplinks = annex.uplinks.len(), "probing the hub over every uplink");
    Ok(())
}

/// Watches the session with the hub and pushes traffic into the tunnel
/// while there is none (start-up, after an outage longer than boringtun's
/// 90 s of handshake attempts, after the hub restarted).
pub(super) async fn keep_handshake(tunnel: Arc<Tunnel>, hub: HubPeer, stop: CancellationToken) {
    let mut established = false;
    let mut tick = tokio::time::interval(KEEPER_PERIOD);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let status = match tunnel.status().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the tunnel status");
                continue;
            }
        };
        let age = status
            .peers
            .iter()
            .find(|p| p.public_key == hub.public_key)
            .and_then(|p| p.last_handshake)
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        let fresh = age.is_some_and(|a| a < STALE_HANDSHAKE);
        if fresh != established {
            established = fresh;
            if fresh {
                tracing::info!(hub = %hub.name, "handshake with the hub established");
            } else {
                tracing::warn!(hub = %hub.name, "no recent handshake with the hub: pushing traffic into the tunnel");
            }
        }
        if !fresh {
            tunnel::push_traffic(hub.address);
        }
    }
}

//! The annex's start-up: uplink next hops, policy routing, the hub peer,
//! and the handshake keeper that pushes traffic into the tunnel whenever
//! the session with the hub is missing (boringtun trap 7), and starts a new
//! handshake at once when the probes see that the hub restarted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{budgets, Running};
use crate::config::{AnnexConfig, Config, HubPeer};
use crate::decision::{Engine, PathId};
use crate::failover::{Failover, HANDSHAKE_FRESH};
use crate::probe::budget::Budget;
use crate::probe::prober::{self, Connection, ProberIo, ProberSpec, ReportForHub};
use crate::probe::{responder, tls};
use crate::routing::{self, NextHop};
use crate::tunnel::{self, PeerConfig, Tunnel};
use tokio::sync::{mpsc, watch};

/// How often the handshake keeper looks at the tunnel.
const KEEPER_PERIOD: Duration = Duration::from_secs(2);
/// The initial RTT estimate of the probe connections of uplinks that are
/// not metered: a connection attempt retransmits its first packet after
/// about 3 × this, so a hub that comes back is found quickly. Metered
/// uplinks keep quinn's 333 ms: fewer retransmitted 1.2 kB packets.
const FAST_INITIAL_RTT: Duration = Duration::from_millis(100);
/// The next hop of every uplink: from the config, else learned from the kernel.
async fn next_hops(
    annex: &AnnexConfig,
    running: &Running,
    ipv6: bool,
) -> anyhow::Result<Vec<NextHop>> {
    let mut hops = Vec::new();
    for (i, up) in annex.uplinks.iter().enumerate() {
        let gateway = match up.gateway {
            Some(gw) => {
                running
                    .net
                    .require_link(up.interface.as_str())
                    .await
                    .with_context(|| {
                        format!("uplink[{i}] {} (interface {})", up.name, up.interface)
                    })?;
                Some(gw)
            }
            None => {
                let learned = running
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
    running: &mut Running,
) -> anyhow::Result<()> {
    let several = annex.hubs.len() > 1;
    let mut endpoints = Vec::with_capacity(annex.hubs.len());
    for (h, hub) in annex.hubs.iter().enumerate() {
        let endpoint = hub
            .endpoint
            .resolve()
            .await
            .with_context(|| format!("resolving hub[{h}].endpoint {}", hub.endpoint))?;
        if let Some(first) = endpoints.first() {
            if SocketAddr::is_ipv6(first) != endpoint.is_ipv6() {
                anyhow::bail!(
                    "hub[{h}].endpoint {} resolves to {endpoint}, hub[0]'s to {first}: give \
                     every hub an endpoint of the same address family",
                    hub.endpoint
                );
            }
        }
        endpoints.push(endpoint);
    }
    let ipv6 = endpoints[0].is_ipv6();
    let hops = next_hops(annex, running, ipv6).await?;
    for up in &annex.uplinks {
        running
            .sysctls
            .loosen_rp_filter(up.interface.as_str())
            .with_context(|| format!("setting loose reverse-path filtering on {}", up.interface))?;
    }

    // One tunnel device per hub: the first one (tunnel.interface) is made
    // by `super::start`, the others here, with the same key.
    let mut tunnels = vec![running
        .tunnel
        .clone()
        .expect("tunnel is created before the role starts")];
    for (h, hub) in annex.hubs.iter().enumerate().skip(1) {
        let name = hub.interface.as_str();
        let tunnel = Arc::new(Tunnel::create(name, super::tuning(config))?);
        running.hub_tunnels.push(tunnel.clone());
        tunnel
            .configure(
                &config.tunnel.private_key,
                None,
                Some(config.routing.hub_fwmark(h)),
            )
            .await
            .with_context(|| format!("configuring hub[{h}]'s tunnel device {name}"))?;
        let index = running.net.require_link(name).await?;
        running
            .net
            .add_address(
                index,
                name,
                routing::device_address(config.tunnel.address, annex.hubs.len()),
            )
            .await?;
        running.net.set_up(index, name, config.tunnel.mtu).await?;
        tunnels.push(tunnel);
    }

    if several {
        for hub in &annex.hubs {
            let name = hub.interface.as_str();
            crate::sysctl::loosen_own_interface(name).with_context(|| {
                format!("setting loose reverse-path filtering on the tunnel device {name}")
            })?;
        }
    }
    let (active, active_uplink) = annex.preferred_uplink();
    let (active_hub, _) = annex.preferred_hub();
    let (routes, rules) = routing::annex_plan(
        annex,
        &config.routing,
        config.tunnel.address,
        &hops,
        active_hub,
        &vec![active; annex.hubs.len()],
        ipv6,
    );
    for rule in &rules {
        running.net.add_rule(rule).await?;
    }
    for route in &routes {
        running.net.replace_route(route).await?;
    }
    tracing::info!(uplink = %active_uplink.name, interface = %active_uplink.interface, "tunnel routed through uplink");

    let mut instances = Vec::new();
    let mut handshakes = Vec::new();
    for (h, hub) in annex.hubs.iter().enumerate() {
        let tunnel = &tunnels[h];
        let endpoint = endpoints[h];
        tunnel.add_peer(&hub_peer(hub, endpoint)).await?;
        tracing::info!(hub = %hub.name, endpoint = %endpoint, interface = %tunnel.name(), "hub peer added");
        tunnel::push_traffic(hub.address);
        let (instance_tx, instance) = watch::channel(None);
        let (handshake_tx, handshake) = watch::channel(None);
        instances.push(instance_tx);
        handshakes.push(handshake);
        let task = if several {
            format!("handshake keeper {}", hub.name)
        } else {
            "handshake keeper".to_string()
        };
        running.supervisor.service(
            task,
            &running.stop,
            keep_handshake(
                tunnel.clone(),
                hub_peer(hub, endpoint),
                hub.clone(),
                Keeper {
                    instance,
                    handshake: handshake_tx,
                },
                running.stop.clone(),
            ),
        );
    }
    start_failover(
        config,
        annex,
        running,
        &endpoints,
        hops,
        PathId::new(active_hub, active),
        ipv6,
        instances,
        handshakes,
    )?;
    Ok(())
}

/// One prober per path (hub, uplink), and the failover task they report to.
#[allow(clippy::too_many_arguments)]
fn start_failover(
    config: &Config,
    annex: &AnnexConfig,
    running: &mut Running,
    endpoints: &[SocketAddr],
    hops: Vec<NextHop>,
    active: PathId,
    ipv6: bool,
    hub_instances: Vec<watch::Sender<Option<u64>>>,
    handshake: Vec<watch::Receiver<Option<SystemTime>>>,
) -> anyhow::Result<()> {
    let uplinks: Vec<(String, u32, bool)> = annex
        .uplinks
        .iter()
        .map(|u| (u.name.to_string(), u.priority, u.metered))
        .collect();
    let hubs: Vec<(String, u32)> = annex
        .hubs
        .iter()
        .map(|h| (h.name.to_string(), h.priority))
        .collect();
    let engine = Engine::new(annex.failover, &hubs, &uplinks, active);
    let clock = Instant::now();
    let (samples_tx, samples_rx) = mpsc::channel(1024);
    // The budget of an uplink is shared by its paths, and kept in the
    // state directory across restarts (`budgets`).
    let budgets: Vec<Option<Arc<Budget>>> = annex
        .uplinks
        .iter()
        .map(|up| {
            up.probe_budget.map(|bytes| {
                Arc::new(budgets::load(
                    &config.state_directory,
                    up.name.as_str(),
                    bytes,
                    running.telemetry.probe_budget(up.name.as_str()),
                ))
            })
        })
        .collect();
    let kept = annex
        .uplinks
        .iter()
        .zip(&budgets)
        .filter_map(|(up, b)| {
            b.as_ref()
                .map(|b| budgets::Kept::new(&config.state_directory, up.name.as_str(), b.clone()))
        })
        .collect();
    running.supervisor.service(
        "probe budget keeper",
        &running.stop,
        budgets::keep(kept, running.stop.clone()),
    );
    let mut intervals = Vec::new();
    let mut connections = Vec::new();
    let mut reports = Vec::new();
    let mut probe_addrs = Vec::new();
    for (h, hub) in annex.hubs.iter().enumerate() {
        let crypto = tls::client_config(&running.identity, hub.fingerprint)?;
        let quic = Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(crypto)?);
        let client = |metered: bool| {
            let mut transport = responder::transport();
            if !metered {
                transport.initial_rtt(FAST_INITIAL_RTT);
            }
            let mut client = quinn::ClientConfig::new(quic.clone());
            client.transport_config(Arc::new(transport));
            client
        };
        let probe_addr = SocketAddr::new(endpoints[h].ip(), hub.probe_port);
        probe_addrs.push(probe_addr);
        let (report_tx, reports_rx) = watch::channel(ReportForHub::default());
        reports.push(report_tx);
        for (i, up) in annex.uplinks.iter().enumerate() {
            let path = PathId::new(h, i);
            let (tx, rx) = watch::channel(config.probe.interval);
            intervals.push(tx);
            let (connection, connection_rx) = watch::channel(Connection::Connecting);
            connections.push(connection_rx);
            let name = engine.name(path).to_string();
            let spec = ProberSpec {
                uplink: i,
                hub_index: h,
                name: name.clone(),
                interface: up.interface.to_string(),
                fwmark: config.routing.uplink_fwmark(i),
                hub: probe_addr,
                client: client(up.metered),
                timeout: config.probe.timeout,
                metered: up.metered,
            };
            let io = ProberIo {
                interval: rx,
                reports: reports_rx.clone(),
                samples: samples_tx.clone(),
                connection,
                hub_instance: hub_instances[h].clone(),
                counters: Arc::new(
                    running
                        .telemetry
                        .probe_counters(hub.name.as_str(), up.name.as_str()),
                ),
                budget: budgets[i].clone(),
            };
            running.supervisor.service(
                format!("prober {name}"),
                &running.stop,
                prober::run(spec, io, clock, running.stop.clone()),
            );
        }
    }
    let (settings_tx, settings) = watch::channel((annex.failover, config.probe.clone()));
    running.failover_settings = Some(settings_tx);
    let failover = Failover {
        net: running.net.clone(),
        routing: config.routing,
        hops,
        names: annex.uplinks.iter().map(|u| u.name.to_string()).collect(),
        metered: annex.uplinks.iter().map(|u| u.metered).collect(),
        ipv6,
        hub_addresses: annex.hubs.iter().map(|h| h.address).collect(),
        hub_routes: (0..annex.hubs.len())
            .map(|h| routing::hub_routes_via(annex, config.tunnel.address, h))
            .collect(),
        probe: config.probe.clone(),
        intervals,
        telemetry: running.telemetry.clone(),
        reports,
        settings,
        connections,
        budgets,
        handshake,
    };
    running.supervisor.service(
        "failover",
        &running.stop,
        failover.run(engine, samples_rx, clock, running.stop.clone()),
    );
    tracing::info!(hubs = ?probe_addrs, uplinks = annex.uplinks.len(), "probing every hub over every uplink");
    Ok(())
}

/// What the handshake keeper listens to and tells.
pub(super) struct Keeper {
    /// The hub's instance, as the probes learn it.
    pub instance: watch::Receiver<Option<u64>>,
    /// The last handshake with the hub, for the failover task.
    pub handshake: watch::Sender<Option<SystemTime>>,
}

/// Watches the session with the hub and pushes traffic into the tunnel
/// while there is none (start-up, after an outage longer than boringtun's
/// 90 s of handshake attempts). When the probes learn that the hub
/// restarted (its instance changed), the hub no longer knows our session
/// and would drop our packets until boringtun's own timers give up on it
/// (keepalive and rekey timeouts, ~15 s): the peer is removed and added
/// again (boringtun starts a handshake only for a peer without session,
/// and only when traffic comes) and traffic is pushed at once.
pub(super) async fn keep_handshake(
    tunnel: Arc<Tunnel>,
    peer: PeerConfig,
    hub: HubPeer,
    mut keeper: Keeper,
    stop: CancellationToken,
) {
    let mut established = false;
    let mut tick = tokio::time::interval(KEEPER_PERIOD);
    let mut known: Option<u64> = *keeper.instance.borrow_and_update();
    let mut watching = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            r = keeper.instance.changed(), if watching => {
                if r.is_err() {
                    // Every prober is gone; the tick goes on.
                    watching = false;
                    continue;
                }
                let new = *keeper.instance.borrow_and_update();
                let restarted = matches!((known, new), (Some(a), Some(b)) if a != b);
                known = new.or(known);
                if restarted {
                    let started = Instant::now();
                    tracing::warn!(hub = %hub.name, "the hub restarted (new probe responder instance): starting a new handshake now");
                    match tunnel.replace_peer(&peer).await {
                        Ok(()) => {
                            tunnel::push_traffic(hub.address);
                            tracing::info!(hub = %hub.name, took_ms = started.elapsed().as_secs_f64() * 1000.0, "hub peer re-added, traffic pushed");
                        }
                        Err(e) => {
                            tracing::error!(hub = %hub.name, error = %e, "cannot re-add the hub peer after its restart; boringtun's own timers will renew the session");
                        }
                    }
                    established = false;
                }
                continue;
            }
        }
        let status = match tunnel.status().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the tunnel status");
                continue;
            }
        };
        let last = status
            .peers
            .iter()
            .find(|p| p.public_key == hub.public_key)
            .and_then(|p| p.last_handshake);
        keeper.handshake.send_replace(last);
        let age = last.and_then(|t| SystemTime::now().duration_since(t).ok());
        let fresh = age.is_some_and(|a| a < HANDSHAKE_FRESH);
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

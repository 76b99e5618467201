//! `townlink run`: bring the router up, keep it up, take it down cleanly.
//!
//! Start-up order: refuse if the tunnel interface already exists (another
//! instance, or a foreign interface), remove what a crashed run left
//! (routes and rules tagged with townlink's protocol), create the tunnel,
//! configure it, add addresses, routes and rules, then the role's tasks.
//! Shutdown, on the cancellation token or after a failed start-up, undoes
//! it in reverse: tasks, rules, routes, interface (with its addresses),
//! kernel settings. Nothing is left half-done.

mod annex;
mod budgets;
mod follow;
mod hub;
mod reload;
mod return_path;
mod sites;
mod supervisor;

pub use sites::HubSites;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

use supervisor::{Event, Heart, Liveness, Supervisor};

use crate::config::{Config, ConfigError, Problem, Role};
use crate::control;
use crate::netlink::Netlink;
use crate::probe::tls::Identity;
use crate::sysctl;
use crate::telemetry::{self, collector, Telemetry};
use crate::tunnel::{Tuning, Tunnel};

/// Receive/send buffer of the tunnel's UDP socket: with the kernel default
/// the receiver drops packets under load (see docs/performance.md).
const TUNNEL_SOCKET_BUFFER: usize = 4 << 20;
/// How often the daemon checks that the tunnel answers (and feeds the
/// systemd watchdog if it does and every task is alive); the watchdog
/// itself is pinged at half systemd's interval at most.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// Reads and validates the config at `path` (see [`crate::config::load`]),
/// then loads the probe certificate and key it names: the config only
/// checks that they can be read; here they are parsed and must belong
/// together. Used by `townlink run`, `townlink check` and each reload, so
/// that all three report a bad pair the same way, with its key path.
pub fn load(path: &std::path::Path) -> Result<(Config, Identity), ConfigError> {
    let config = crate::config::load(path)?;
    let identity =
        Identity::load(&config.probe.certificate_file, &config.probe.key_file).map_err(|e| {
            ConfigError {
                file: path.to_path_buf(),
                problems: vec![Problem {
                    path: "probe".into(),
                    message: e,
                    hint: Some("make a new pair with `townlink gencert`".into()),
                }],
            }
        })?;
    Ok((config, identity))
}

/// Now, in Unix seconds (0 for a clock before 1970).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The running daemon: what start-up changed, so that shutdown can undo
/// exactly that.
struct Running {
    net: Netlink,
    tunnel: Option<Arc<Tunnel>>,
    /// An annex with several hubs: the tunnel devices of hubs 1.. (hub 0's
    /// is `tunnel`).
    hub_tunnels: Vec<Arc<Tunnel>>,
    /// Kernel settings changed, recorded in the state directory.
    sysctls: sysctl::Record,
    /// Every task of the daemon (see [`supervisor`]).
    supervisor: Supervisor,
    /// Cancels the role's tasks (child of the daemon's token).
    stop: CancellationToken,
    telemetry: Arc<Telemetry>,
    /// The probe certificate the daemon started with (a reload keeps it:
    /// a new one needs a restart).
    identity: Identity,
    /// What a reload changes live.
    failover_settings:
        Option<tokio::sync::watch::Sender<(crate::decision::Policy, crate::config::ProbeConfig)>>,
    hub_sites: Option<Arc<HubSites>>,
    /// The control socket's handler (holds the hub's sites too).
    handler: Option<Arc<control::server::Handler>>,
    /// Cancels the end-to-end checks (replaced on reload).
    checks: CancellationToken,
}

impl Running {
    async fn teardown(mut self) {
        self.stop.cancel();
        if !self.supervisor.wait(Duration::from_secs(5)).await {
            tracing::warn!("some tasks did not stop within 5 s");
        }
        // Everything that holds the tunnel goes before it is closed: the
        // hub's sites (also reachable through the control handler).
        self.hub_sites = None;
        self.handler = None;
        match self.net.purge().await {
            Ok((routes, rules)) => {
                tracing::info!(routes, rules, "removed townlink routes and rules")
            }
            Err(e) => tracing::error!(error = %e, "could not remove every townlink route and rule"),
        }
        let tunnels = self
            .tunnel
            .take()
            .into_iter()
            .chain(self.hub_tunnels.drain(..));
        for tunnel in tunnels {
            let name = tunnel.name().to_string();
            let holders = Arc::strong_count(&tunnel) - 1;
            if holders > 0 {
                // A task that did not stop: closed anyway, its requests fail.
                tracing::warn!(interface = %name, holders, "tunnel still referenced at stop: closing it anyway");
            }
            tunnel.close().await;
            match self.net.link_index(&name).await {
                Ok(None) => tracing::info!(interface = %name, "tunnel interface removed"),
                Ok(Some(_)) => {
                    tracing::error!(interface = %name, "tunnel interface still present after stop")
                }
                Err(e) => {
                    tracing::warn!(interface = %name, error = %e, "could not check the tunnel interface")
                }
            }
        }
        self.sysctls.restore_all();
    }
}

/// Locks the state directory (created if needed) for this instance: a
/// `flock` on the directory itself, so that nothing is left in it, held
/// until the returned handle is dropped or the process ends, whatever way.
/// A second instance with the same directory is refused, with the key to
/// change.
pub fn lock_state_directory(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let shown = dir.display();
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the state directory {shown} (state_directory)"))?;
    let handle = std::fs::File::open(dir)
        .with_context(|| format!("cannot open the state directory {shown} (state_directory)"))?;
    // SAFETY: flock on a file descriptor this function owns.
    if unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!(
                "another townlink uses the state directory {shown}: stop it, or give this \
                 instance its own state_directory"
            );
        }
        return Err(e)
            .with_context(|| format!("cannot lock the state directory {shown} (state_directory)"));
    }
    Ok(handle)
}

/// Runs the daemon until `shutdown` is cancelled (`config` and `identity`
/// from [`load`]). On a start-up error,
/// everything done so far is undone before the error is returned.
///
/// Each message on `reload` (SIGHUP: `systemctl reload`) re-reads the
/// config at `path` and applies what can change live (see [`reload`]).
pub async fn run(
    config: Config,
    identity: Identity,
    path: std::path::PathBuf,
    shutdown: CancellationToken,
    mut reload: tokio::sync::mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    // First the local listeners: a second instance is refused here, before
    // it touches the kernel.
    let control = control::server::bind(&config.control).await?;
    let metrics = match config.metrics.listen {
        Some(addr) => Some((telemetry::http::bind(addr).await?, addr)),
        None => None,
    };
    let net = Netlink::connect()?;
    let name = config.tunnel.interface.as_str();
    if net.link_index(name).await?.is_some() {
        bail!(
            "interface {name} already exists: another townlink is running, or another program uses \
             this name (stop it, or set tunnel.interface to a free name)"
        );
    }
    if let Role::Annex(annex) = &config.role {
        for (h, hub) in annex.hubs.iter().enumerate().skip(1) {
            let other = hub.interface.as_str();
            if net.link_index(other).await?.is_some() {
                bail!(
                    "interface {other} already exists: another townlink is running, or another \
                     program uses this name (stop it, or set hub[{h}].interface to a free name)"
                );
            }
        }
    }
    // The state directory is this instance's alone (its records, the
    // hub's registry by default): held locked while it runs.
    let _state_lock = lock_state_directory(&config.state_directory)?;
    // Kernel settings a crashed run left changed go back first, so that
    // this run records the real originals.
    let record = config.state_directory.join(format!("sysctl-{name}.json"));
    let (sysctls, restored) = sysctl::Record::open(&record)?;
    for c in &restored {
        tracing::warn!(setting = %c.path.display(), value = %c.previous, "restored a kernel setting left changed by an earlier run");
    }
    let (routes, rules) = net
        .purge()
        .await
        .context("removing what an earlier run left")?;
    if routes + rules > 0 {
        tracing::warn!(
            routes,
            rules,
            "removed routes and rules left by an earlier run"
        );
    }

    let (supervisor, mut failures) = Supervisor::new();
    let mut running = Running {
        net: net.clone(),
        tunnel: None,
        hub_tunnels: Vec::new(),
        sysctls,
        supervisor,
        stop: shutdown.child_token(),
        telemetry: Telemetry::new(&config),
        identity,
        failover_settings: None,
        hub_sites: None,
        handler: None,
        checks: CancellationToken::new(),
    };
    running.checks = running.stop.child_token();
    tracing::info!(path = %config.control.socket.display(), "control socket ready");
    let handler = running
        .handler
        .insert(Arc::new(control::server::Handler {
            telemetry: running.telemetry.clone(),
            hub: Default::default(),
        }))
        .clone();
    running.supervisor.service(
        "control socket",
        &running.stop,
        control::server::serve(control, handler.clone(), running.stop.clone()),
    );
    if let Some((listener, addr)) = metrics {
        tracing::info!(%addr, "serving /metrics");
        running.supervisor.service(
            "metrics server",
            &running.stop,
            telemetry::http::serve(listener, running.telemetry.clone(), running.stop.clone()),
        );
    }
    let started = tokio::select! {
        r = start(&config, &mut running, &handler) => r,
        _ = shutdown.cancelled() => Err(anyhow::anyhow!("stopped during start-up")),
        f = failures.next() => Err(anyhow::anyhow!("{f} during start-up")),
    };
    // Only `running` holds it from here on (teardown drops it in order).
    drop(handler);
    if let Err(e) = started {
        running.teardown().await;
        return Err(e);
    }
    tracing::info!(
        role = match config.role { Role::Hub(_) => "hub", Role::Annex(_) => "annex" },
        interface = %name,
        "townlink is up"
    );
    crate::service::ready(&running.telemetry.status_line());
    let mut watchdog = crate::service::Watchdog::from_env();
    let mut heart = Heart::new(HEARTBEAT, move || watchdog.alive());
    let mut current = config;
    let failed = loop {
        // Only for this beat: teardown must find the tunnel held by `running` alone.
        let tunnels: Vec<Arc<Tunnel>> = running
            .tunnel
            .iter()
            .chain(&running.hub_tunnels)
            .cloned()
            .collect();
        let event = heart
            .run(
                &running.supervisor,
                &mut failures,
                &shutdown,
                &mut reload,
                || liveness(tunnels.clone()),
            )
            .await;
        drop(tunnels);
        match event {
            Event::Stop => break None,
            Event::Failed(e) => break Some(e),
            Event::Reload => {
                crate::service::reloading();
                let status = reload::reload(&path, &mut current, &mut running).await;
                crate::service::reloaded(&status);
            }
        }
    };
    crate::service::stopping();
    match &failed {
        None => tracing::info!("stopping"),
        Some(e) => tracing::error!(error = %e, "stopping after a failure (a restart repairs it)"),
    }
    running.teardown().await;
    tracing::info!("stopped");
    match failed {
        None => Ok(()),
        Some(e) => bail!("{e}; townlink stopped (systemd restarts it)"),
    }
}

/// One heartbeat: does every tunnel device (one per hub on an annex) answer?
async fn liveness(tunnels: Vec<Arc<Tunnel>>) -> Liveness {
    let mut unsure = None;
    for tunnel in tunnels {
        match tunnel.status().await {
            Ok(_) => {}
            Err(e) if e.is_broken() => {
                return Liveness::Dead(e.to_string());
            }
            Err(e) => unsure = unsure.or(Some(e.to_string())),
        }
    }
    unsure.map_or(Liveness::Alive, Liveness::Unsure)
}

async fn start(
    config: &Config,
    running: &mut Running,
    handler: &control::server::Handler,
) -> anyhow::Result<()> {
    let t = &config.tunnel;
    let name = t.interface.as_str();
    let annex = matches!(config.role, Role::Annex(_));
    let tunnel = Tunnel::create(name, tuning(config))?;
    let tunnel = &**running.tunnel.insert(Arc::new(tunnel));
    // Only the annex steers its tunnel socket by mark.
    let fwmark = annex.then_some(config.routing.fwmark);
    tunnel
        .configure(&t.private_key, t.listen_port, fwmark)
        .await?;

    let net = &running.net;
    let index = net.require_link(name).await?;
    // With several hubs, each hub's device has the address as a /32.
    let hubs = match &config.role {
        Role::Annex(a) => a.hubs.len(),
        Role::Hub(_) => 1,
    };
    net.add_address(index, name, crate::routing::device_address(t.address, hubs))
        .await?;
    net.set_up(index, name, t.mtu).await?;

    if config.routing.forwarding {
        running
            .sysctls
            .set("net/ipv4/ip_forward", "1")
            .context("enabling IPv4 forwarding")?;
    }

    // What the collector reads; the hub changes it as sites come and go.
    let (sources, sources_rx) = tokio::sync::watch::channel(collector::CollectorTargets::default());
    match &config.role {
        Role::Hub(hub) => {
            let sites = hub::start(config, hub, running, sources).await?;
            running.hub_sites = Some(sites.clone());
            let _ = handler.hub.set(sites);
        }
        Role::Annex(annex) => {
            annex::start(config, annex, running).await?;
            sources.send_replace(collector::CollectorTargets {
                peers: annex
                    .hubs
                    .iter()
                    .map(|h| (h.public_key, h.name.to_string()))
                    .collect(),
                interfaces: annex
                    .uplinks
                    .iter()
                    .map(|u| (u.name.to_string(), u.interface.to_string()))
                    .collect(),
            });
        }
    }
    running.supervisor.service(
        "collector",
        &running.stop,
        collector::run(
            running.telemetry.clone(),
            running.tunnel.clone().expect("tunnel created above"),
            running.net.clone(),
            sources_rx,
            running.stop.clone(),
        ),
    );
    // An annex with several hubs: each other hub's device has its own
    // collector for its one peer (the session kept with a standby hub).
    if let Role::Annex(annex) = &config.role {
        for (hub, tunnel) in annex.hubs.iter().skip(1).zip(&running.hub_tunnels) {
            let (_keep, peers) = tokio::sync::watch::channel(collector::CollectorTargets {
                peers: [(hub.public_key, hub.name.to_string())].into(),
                interfaces: Vec::new(),
            });
            running.supervisor.service(
                format!("collector {}", hub.interface),
                &running.stop,
                collector::run(
                    running.telemetry.clone(),
                    tunnel.clone(),
                    running.net.clone(),
                    peers,
                    running.stop.clone(),
                ),
            );
        }
    }
    start_checks(config, running);
    Ok(())
}

/// How the tunnel devices are made.
fn tuning(config: &Config) -> Tuning {
    Tuning {
        threads: config.tunnel.threads,
        // Per-peer connected sockets would not get the larger buffers,
        // and annexes must not use them anyway (trap 6).
        connected_socket: false,
        socket_buffer: TUNNEL_SOCKET_BUFFER,
    }
}

/// One task per end-to-end check, under `running.checks`.
fn start_checks(config: &Config, running: &Running) {
    for check in &config.checks {
        running.supervisor.service(
            format!("check {}", check.name),
            &running.checks,
            crate::checks::run(
                check.clone(),
                running.telemetry.clone(),
                running.checks.clone(),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::dir_with_key;
    use crate::fingerprint::Fingerprint;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn a_second_instance_with_the_same_state_directory_is_refused_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = super::lock_state_directory(&state).unwrap();
        let e = super::lock_state_directory(&state).unwrap_err().to_string();
        assert!(
            e.contains("another townlink uses the state directory")
                && e.contains("its own state_directory"),
            "{e}"
        );
        // Nothing is left in the directory; it is free again once the first
        // instance is gone (also after a crash: the lock goes with the process).
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
        drop(first);
        super::lock_state_directory(&state).unwrap();
    }

    /// The hub example in `dir`, pointing at `dir_with_key`'s files.
    fn hub_file(dir: &std::path::Path) -> std::path::PathBuf {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hub.toml"),
        )
        .unwrap()
        .replace("/etc/townlink/private.key", "k.key")
        .replace("/etc/townlink/probe.crt", "p.crt")
        .replace("/etc/townlink/probe.key", "p.key");
        let file = dir.join("townlink.toml");
        std::fs::write(&file, text).unwrap();
        file
    }

    #[test]
    fn load_reads_the_probe_certificate_and_names_a_bad_one_by_key_path() {
        let dir = dir_with_key();
        let file = hub_file(dir.path());
        let (config, identity) = load(&file).unwrap();
        let cert = std::fs::read(&config.probe.certificate_file).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&cert).unwrap();
        assert_eq!(identity.fingerprint(), Fingerprint::of(&der));

        std::fs::write(dir.path().join("p.crt"), "not a certificate").unwrap();
        let e = load(&file).unwrap_err();
        assert_eq!(e.file, file);
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].path, "probe");
        assert!(
            e.problems[0].message.contains("not a PEM certificate"),
            "{e}"
        );
        assert!(e.to_string().contains("townlink gencert"), "{e}");

        // A certificate with another key: the pair must belong together.
        let other = Identity::generate("other").unwrap();
        std::fs::write(dir.path().join("p.crt"), other.cert_pem()).unwrap();
        let e = load(&file).unwrap_err();
        assert!(
            e.problems[0].message.contains("do not belong together"),
            "{e}"
        );
    }
}

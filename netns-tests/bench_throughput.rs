//! Throughput benchmark (not a test): iperf3, one TCP stream from the
//! annex to the hub over the fiber path of the netns WAN (annex → ISP →
//! core → hub), through each of:
//! - nothing (the raw path, the ceiling);
//! - townlink with `tunnel.threads` 1 (the default) and 2, as a real hub
//!   and annex started from the test bed's configs (the same ones the
//!   netns tests use, so they cannot drift from what the daemon accepts);
//! - boringtun-cli 0.7.1 with `--threads 1` and its default of 4;
//! - wireguard-go (Debian).
//!
//! Every configuration is set up once; then RUNS rounds measure each of
//! them in turn for SECS seconds, so that a change of load on the machine
//! hits all of them alike. Prints the median of each, and its ratio to the
//! raw path and to the best boringtun-cli configuration (townlink's target:
//! at least 0.90 of it). Exits non-zero when anything fails (a daemon that
//! does not start, a tunnel that passes no traffic, an iperf3 error).
//!
//! Run it with `sudo scripts/bench-throughput` (RUNS=3 SECS=5 by default);
//! CI runs it once with RUNS=1 SECS=2. The reference implementations are
//! found through BORINGTUN_CLI (a path) and `wireguard-go` on the PATH.

mod testbed;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed::{write_key, Background, Netns, Options, Wan};

/// The hub's address on the core network.
const HUB_CORE: &str = "198.18.0.2";
/// The hub's tunnel address in the test bed's configs.
const HUB_TUNNEL: &str = "10.99.0.1";

fn main() {
    // Every guard (daemons, helper processes, namespaces) is dropped when
    // `bench` returns, before the process exits.
    let code = match bench() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn env_u64(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{name}={v:?}: expected a positive whole number")),
    }
}

/// The last `n` lines of a log, indented, for error messages.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| format!("    {l}\n"))
        .collect()
}

/// Waits until `addr` answers a ping from `from`; returns how long it took.
fn wait_reachable(from: &Netns, addr: &str, within: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    while start.elapsed() < within {
        let ok = Command::new("ip")
            .args([
                "netns", "exec", &from.name, "ping", "-q", "-c", "1", "-W", "1", addr,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run ping: {e}"))?
            .success();
        if ok {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "{addr} does not answer from {} within {within:?}",
        from.name
    ))
}

/// Waits until something listens on TCP `port` in `ns`.
fn wait_listening(ns: &Netns, port: u16, within: Duration) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < within {
        let out = ns.run_output(&["ss", "-Hltn", &format!("sport = :{port}")]);
        if out.status.success() && !out.stdout.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "nothing listens on port {port} in {} within {within:?}",
        ns.name
    ))
}

/// One iperf3 run (one TCP stream) from `from` to `to`: Mbit/s received.
fn iperf(from: &Netns, to: &str, secs: u64, out: &Path) -> Result<f64, String> {
    let file = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &from.name, "iperf3", "-J", "-c", to])
        .args(["-t", &secs.to_string(), "--connect-timeout", "3000"])
        .stdout(file)
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run iperf3: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(secs + 20);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("iperf3 to {to} did not end within {}s", secs + 20));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("iperf3 to {to} ({status}): unreadable output: {e}"))?;
    if let Some(error) = json["error"].as_str() {
        return Err(format!("iperf3 to {to}: {error}"));
    }
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| format!("iperf3 to {to} ({status}): no received rate in its output"))?;
    if !status.success() || bps <= 0.0 {
        return Err(format!("iperf3 to {to} ({status}): {bps} bit/s"));
    }
    Ok(bps / 1e6)
}

/// `[tunnel] threads = n` in a test bed config.
fn set_threads(config: &Path, n: u32) -> Result<(), String> {
    let text = std::fs::read_to_string(config).map_err(|e| e.to_string())?;
    if text.matches("\n[tunnel]\n").count() != 1 {
        return Err(format!(
            "{}: expected one [tunnel] table in the test bed's config",
            config.display()
        ));
    }
    let text = text.replace("\n[tunnel]\n", &format!("\n[tunnel]\nthreads = {n}\n"));
    std::fs::write(config, text).map_err(|e| e.to_string())
}

/// townlink hub and annex in a WAN of their own, with `threads` workers.
fn townlink(threads: u32) -> Result<Wan, String> {
    let mut wan = Wan::build_with(1, &Options::default());
    set_threads(&wan.hub_config, threads)?;
    set_threads(&wan.annex(1).config, threads)?;
    wan.start_hub();
    wan.start_annex(1);
    if let Err(e) = wait_reachable(&wan.annex(1).ns, HUB_TUNNEL, Duration::from_secs(30)) {
        let logs: String = wan
            .daemons
            .iter()
            .map(|d| {
                format!(
                    "  log of townlink in {}:\n{}",
                    d.name,
                    tail(&d.log_text(), 15)
                )
            })
            .collect();
        return Err(format!("townlink threads={threads}: {e}\n{logs}"));
    }
    Ok(wan)
}

#[derive(Clone, Copy)]
enum Peer {
    Boringtun(Option<u32>),
    WireguardGo,
}

/// A reference WireGuard tunnel between the annex and the hub namespaces:
/// its processes (stopped on drop) and the hub end's tunnel address.
struct PeerTunnel {
    procs: Vec<Background>,
    sockets: Vec<PathBuf>,
    target: String,
}

impl Drop for PeerTunnel {
    fn drop(&mut self) {
        self.procs.clear();
        // A process stopped by SIGKILL leaves its UAPI socket behind.
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
    }
}

/// Starts `peer` in `annex` and `hub`; `n` keeps names, ports and
/// addresses apart from the other tunnels.
fn peer_tunnel(
    peer: Peer,
    n: u8,
    annex: &Netns,
    hub: &Netns,
    dir: &Path,
) -> Result<PeerTunnel, String> {
    let tag = match peer {
        Peer::Boringtun(Some(t)) => format!("bt{t}"),
        Peer::Boringtun(None) => "btd".to_string(),
        Peer::WireguardGo => "wgo".to_string(),
    };
    let pid = std::process::id();
    let mut tunnel = PeerTunnel {
        procs: Vec::new(),
        sockets: Vec::new(),
        target: format!("10.97.{n}.2"),
    };
    let ports = [51840 + 2 * u16::from(n), 51841 + 2 * u16::from(n)];
    let mut keys = Vec::new();
    for (side, ns) in [("a", annex), ("b", hub)] {
        let ifname = format!("{tag}{side}{pid}");
        let log = dir.join(format!("{ifname}.log"));
        let key_file = dir.join(format!("{ifname}.key"));
        keys.push((
            ifname.clone(),
            key_file.clone(),
            write_key(&key_file).public_key(),
        ));
        let socket = PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"));
        let proc = match peer {
            Peer::Boringtun(threads) => {
                let bin = std::env::var("BORINGTUN_CLI").map_err(|_| {
                    "BORINGTUN_CLI is not set (the path of boringtun-cli)".to_string()
                })?;
                let threads = threads.map(|t| t.to_string());
                let mut args = vec![bin.as_str(), "-f"];
                if let Some(t) = &threads {
                    args.extend(["--threads", t.as_str()]);
                }
                let log_arg = log.with_extension("out");
                let log_arg = log_arg.to_str().expect("UTF-8 path");
                args.extend(["--log", log_arg, ifname.as_str()]);
                ns.spawn(&args, &[("WG_SUDO", "true")], log)
            }
            Peer::WireguardGo => ns.spawn(
                &["wireguard-go", "-f", &ifname],
                &[("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")],
                log,
            ),
        };
        tunnel.procs.push(proc);
        tunnel.sockets.push(socket.clone());
        let start = Instant::now();
        while !socket.exists() {
            let p = tunnel.procs.last_mut().expect("just pushed");
            if start.elapsed() > Duration::from_secs(10) || p.exited().is_some() {
                return Err(format!(
                    "{tag}: no UAPI socket {} ({}):\n{}",
                    socket.display(),
                    p.name,
                    tail(&p.log_text(), 15)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for (i, (side, ns)) in [("a", annex), ("b", hub)].into_iter().enumerate() {
        let (ifname, key_file, _) = &keys[i];
        let (_, _, other_key) = &keys[1 - i];
        let other_key = other_key.to_string();
        let port = ports[i].to_string();
        let key_file = key_file.to_str().expect("UTF-8 path");
        let mut args = vec![
            "wg",
            "set",
            ifname,
            "private-key",
            key_file,
            "listen-port",
            &port,
            "peer",
            &other_key,
        ];
        // The annex knows the hub's endpoint; the hub learns the annex's.
        let endpoint = format!("{HUB_CORE}:{}", ports[1]);
        let allowed = format!("10.97.{n}.{}/32", 2 - i);
        if side == "a" {
            args.extend(["endpoint", &endpoint]);
        }
        args.extend(["allowed-ips", &allowed]);
        let out = ns.run_output(&args);
        if !out.status.success() {
            return Err(format!(
                "{tag}: wg set in {}: {}",
                ns.name,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        ns.ip(&[
            "addr",
            "add",
            &format!("10.97.{n}.{}/24", i + 1),
            "dev",
            ifname,
        ]);
        ns.ip(&["link", "set", ifname, "mtu", "1420", "up"]);
    }
    wait_reachable(annex, &tunnel.target, Duration::from_secs(20)).map_err(|e| {
        let logs: String = tunnel
            .procs
            .iter()
            .map(|p| format!("  log of {}:\n{}", p.name, tail(&p.log_text(), 10)))
            .collect();
        format!("{tag}: {e}\n{logs}")
    })?;
    Ok(tunnel)
}

struct Row<'a> {
    label: &'static str,
    from: &'a Netns,
    to: String,
    runs: Vec<f64>,
}

/// The 1-minute load average: other work on the machine skews the figures.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[(s.len() - 1) / 2]
}

fn bench() -> Result<(), String> {
    let runs = env_u64("RUNS", 3)?;
    let secs = env_u64("SECS", 5)?;

    println!("== setting up: the WAN, townlink (1 and 2 threads), boringtun-cli, wireguard-go");
    // One WAN per townlink configuration (same interface names and ports);
    // the raw path and the reference implementations use the first one.
    let one = townlink(1)?;
    let two = townlink(2)?;
    let annex = &one.annex(1).ns;
    let dir = one.dir.path();
    let mut servers = Vec::new();
    for wan in [&one, &two] {
        servers.push(wan.hub.spawn(
            &["iperf3", "-s"],
            &[],
            wan.dir.path().join("iperf3-server.log"),
        ));
        wait_listening(&wan.hub, 5201, Duration::from_secs(10))?;
    }
    let bt1 = peer_tunnel(Peer::Boringtun(Some(1)), 1, annex, &one.hub, dir)?;
    let bt4 = peer_tunnel(Peer::Boringtun(None), 2, annex, &one.hub, dir)?;
    let wgo = peer_tunnel(Peer::WireguardGo, 3, annex, &one.hub, dir)?;

    let mut rows = vec![
        Row {
            label: "raw path",
            from: annex,
            to: HUB_CORE.into(),
            runs: vec![],
        },
        Row {
            label: "townlink threads=1",
            from: annex,
            to: HUB_TUNNEL.into(),
            runs: vec![],
        },
        Row {
            label: "townlink threads=2",
            from: &two.annex(1).ns,
            to: HUB_TUNNEL.into(),
            runs: vec![],
        },
        Row {
            label: "boringtun-cli --threads 1",
            from: annex,
            to: bt1.target.clone(),
            runs: vec![],
        },
        Row {
            label: "boringtun-cli default (4)",
            from: annex,
            to: bt4.target.clone(),
            runs: vec![],
        },
        Row {
            label: "wireguard-go",
            from: annex,
            to: wgo.target.clone(),
            runs: vec![],
        },
    ];
    let out = dir.join("iperf3.json");
    let load_before = load();
    for round in 1..=runs {
        println!("== round {round} of {runs} ({secs} s each)");
        for row in &mut rows {
            let v =
                iperf(row.from, &row.to, secs, &out).map_err(|e| format!("{}: {e}", row.label))?;
            println!("   {:<28} {v:>8.0} Mbit/s", row.label);
            row.runs.push(v);
        }
    }

    let raw = median(&rows[0].runs);
    let (bt_label, bt) = rows
        .iter()
        .filter(|r| r.label.starts_with("boringtun"))
        .map(|r| (r.label, median(&r.runs)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("rows");
    let (tl_label, tl) = rows
        .iter()
        .filter(|r| r.label.starts_with("townlink"))
        .map(|r| (r.label, median(&r.runs)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("rows");
    println!();
    println!("iperf3, 1 TCP stream, annex -> hub over the fiber path, median of {runs} x {secs} s");
    println!(
        "load average (1 min) before the rounds: {load_before}, after: {} ({} cores)",
        load(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<28} {:>8} {:>7} {:>12}   runs (Mbit/s)",
        "configuration", "Mbit/s", "x raw", "x best bt"
    );
    for row in &rows {
        let m = median(&row.runs);
        let all: Vec<String> = row.runs.iter().map(|v| format!("{v:.0}")).collect();
        println!(
            "{:<28} {m:>8.0} {:>7.3} {:>12.2}   {}",
            row.label,
            m / raw,
            m / bt,
            all.join(" ")
        );
    }
    println!();
    println!(
        "best townlink ({tl_label}) / best boringtun-cli ({bt_label}) = {:.2} (target >= 0.90): {}",
        tl / bt,
        if tl / bt >= 0.9 { "met" } else { "NOT met" }
    );
    drop((bt1, bt4, wgo, servers));
    Ok(())
}

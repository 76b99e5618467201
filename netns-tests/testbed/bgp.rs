//! The backup-site test bed: two hubs and the data centre told by BGP.
//!
//! ```text
//!                 ┌── hub-main   (10.60.1.2 | 198.18.0.2) ──┐
//!  records ── dc ─┤                                         ├── core
//!   (BIRD: dc)    └── hub-backup (10.60.2.2 | 198.18.3.2) ──┘
//!                     (BIRD on each hub)
//! ```
//! Every router runs its own BIRD 2 ([`Bird`]) with the configuration the
//! project ships (`config/bird/hub.conf`, `config/bird/dc.conf`), rendered
//! by [`render`] with this topology's addresses: the tests read those files,
//! they keep no copy. The dc learns each site's prefixes from both hubs and
//! installs the route with the lower MED in its main table; it has no
//! default route, so a prefix no hub announces is unreachable from it.
//!
//! Namespaces are named per process and per topology (as [`super::Wan`]'s);
//! dropping a [`DataCentre`] stops every BIRD by PID, then deletes the
//! namespaces and the directory, also when the test panics.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{
    link, write_identity, write_key, Daemon, Impairment, Netns, HUB_PORT, PROBE_PORT, RECORDS,
};

/// The shipped configurations, read at build time: one source for the
/// technician and the tests.
pub const HUB_CONF: &str = include_str!("../../config/bird/hub.conf");
pub const DC_CONF: &str = include_str!("../../config/bird/dc.conf");

/// The AS every hub shares, and the data centre's.
pub const HUB_AS: u32 = 65010;
pub const DC_AS: u32 = 65000;

/// What the dc accepts from the hubs: the annexes' LANs (`192.168.N.0/24`)
/// and tunnel addresses (`10.99.0.0/24`), as in [`super::Wan`].
pub const SITE_PREFIXES: &str = "[ 192.168.0.0/16+, 10.99.0.0/24+ ]";

/// Renders a shipped BIRD configuration: sets the value of each
/// `define NAME = VALUE;` named in `values` and sends the log to `log`
/// instead of syslog. Panics if the file lacks one of them (the shipped
/// file changed under the tests).
pub fn render(template: &str, values: &[(&str, &str)], log: &Path) -> String {
    let mut found = vec![false; values.len()];
    let mut log_found = false;
    let mut out = String::with_capacity(template.len());
    for line in template.lines() {
        let mut replaced = None;
        if let Some(rest) = line.trim_start().strip_prefix("define ") {
            if let Some((name, _)) = rest.split_once('=') {
                if let Some(i) = values.iter().position(|(n, _)| *n == name.trim()) {
                    found[i] = true;
                    replaced = Some(format!("define {} = {};", values[i].0, values[i].1));
                }
            }
        }
        if line.trim() == "log syslog all;" {
            log_found = true;
            replaced = Some(format!("log \"{}\" all;", log.display()));
        }
        out.push_str(replaced.as_deref().unwrap_or(line));
        out.push('\n');
    }
    for (i, (name, _)) in values.iter().enumerate() {
        assert!(found[i], "no `define {name} = ...;` in the BIRD template");
    }
    assert!(log_found, "no `log syslog all;` line in the BIRD template");
    out
}

/// One BIRD 2 process in a namespace, with its own configuration, control
/// socket, pid file and log under the topology's directory (namespaces
/// share the file system). Stopped on drop (SIGTERM, then SIGKILL).
pub struct Bird {
    /// e.g. "hub-main"; names the files.
    pub name: String,
    pub netns: String,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub pid_file: PathBuf,
    /// BIRD's own log (`log "FILE" all`), plus its stdout and stderr.
    pub log: PathBuf,
    child: Option<Child>,
    /// When the running process was spawned.
    pub started: Instant,
}

impl Bird {
    /// Writes `config` to `DIR/NAME.conf` and starts `bird -f` with it in
    /// `ns`; does not wait for anything.
    pub fn start(ns: &Netns, name: &str, config: &str, dir: &Path) -> Bird {
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, config).expect("BIRD config");
        let mut bird = Bird {
            name: name.to_string(),
            netns: ns.name.clone(),
            config: path,
            socket: dir.join(format!("{name}.ctl")),
            pid_file: dir.join(format!("{name}.pid")),
            log: dir.join(format!("{name}.log")),
            child: None,
            started: Instant::now(),
        };
        bird.spawn();
        bird
    }

    /// (Re)starts the process with the same files.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "BIRD {} is running", self.name);
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("BIRD log file");
        self.started = Instant::now();
        // `ip netns exec` execs bird, which stays in the foreground (-f):
        // the child's PID is BIRD's own.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "bird", "-f", "-c"])
            .arg(&self.config)
            .arg("-s")
            .arg(&self.socket)
            .arg("-P")
            .arg(&self.pid_file)
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start BIRD {}: {e}", self.name));
        self.child = Some(child);
        // Fail now, with a useful message, when bird is missing or refuses
        // the configuration (it exits at once).
        std::thread::sleep(Duration::from_millis(50));
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            self.child = None;
            panic!(
                "BIRD {} exited at start ({status}); is bird2 installed (scripts/test installs it)?\n{}",
                self.name,
                self.log_text()
            );
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("BIRD running").id() as i32
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: the router dies; its sessions close (or go silent).
    pub fn kill(&mut self) -> ExitStatus {
        unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        self.wait(Duration::from_secs(10))
    }

    /// SIGTERM and wait (BIRD closes its sessions cleanly).
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        self.wait(timeout)
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("BIRD running");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!("BIRD {} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `birdc -s SOCKET ARGS...`: its output, or why it failed.
    pub fn birdc(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run birdc: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "birdc {args:?} for {}: {}{}",
                self.name,
                text,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Whether `show protocols` lists `protocol` as Established.
    pub fn established(&self, protocol: &str) -> bool {
        self.birdc(&["show", "protocols", protocol])
            .map(|text| {
                text.lines().any(|l| {
                    let mut words = l.split_whitespace();
                    words.next() == Some(protocol) && words.any(|w| w == "Established")
                })
            })
            .unwrap_or(false)
    }

    /// Waits until the BGP session `protocol` is Established; returns when
    /// it was seen so. Each poll is a birdc request, which also wakes
    /// BIRD's main loop: watch a session from the peer's side when the
    /// timing of this BIRD's own updates matters.
    pub fn wait_established(&self, protocol: &str, within: Duration) -> Result<Instant, String> {
        let deadline = Instant::now() + within;
        loop {
            if self.established(protocol) {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "BGP session {protocol} of {} not Established within {within:?}:\n{}",
                    self.name,
                    self.birdc(&["show", "protocols", "all", protocol])
                        .unwrap_or_else(|e| e)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the process (if running); on a panicking thread, prints what
    /// BIRD knew and its log first.
    fn shut_down(&mut self) {
        if self.child.is_none() {
            return;
        }
        if std::thread::panicking() {
            eprintln!(
                "---- BIRD {} ----\n{}\n{}\n{}",
                self.name,
                self.birdc(&["show", "protocols", "all"])
                    .unwrap_or_else(|e| e),
                self.birdc(&["show", "route", "all"]).unwrap_or_else(|e| e),
                self.log_text()
            );
        }
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// iptables rules in `ns`'s filter table (each a chain and its match and
/// target), removed on drop.
fn local_rules<'a>(ns: &'a Netns, rules: &[&[&str]]) -> Impairment<'a> {
    let mut added = Vec::new();
    for rule in rules {
        let rule: Vec<String> = rule.iter().map(|s| s.to_string()).collect();
        let mut args = vec!["iptables", "-I"];
        args.extend(rule.iter().map(String::as_str));
        ns.exec(&args);
        added.push(rule);
    }
    Impairment { ns, rules: added }
}

/// Drops every packet `ns` itself sends or receives on `iface` (INPUT and
/// OUTPUT chains: BGP and BFD end in the router, they are not forwarded),
/// until dropped.
pub fn blackhole_local<'a>(ns: &'a Netns, iface: &str) -> Impairment<'a> {
    local_rules(
        ns,
        &[
            &["INPUT", "-i", iface, "-j", "DROP"],
            &["OUTPUT", "-o", iface, "-j", "DROP"],
        ],
    )
}

/// Refuses (TCP reset) the BGP connections `ns` opens on `iface`, so that
/// only the peer's connections come up, until dropped.
pub fn refuse_outgoing_bgp<'a>(ns: &'a Netns, iface: &str) -> Impairment<'a> {
    local_rules(
        ns,
        &[&[
            "OUTPUT",
            "-o",
            iface,
            "-p",
            "tcp",
            "--dport",
            "179",
            "--syn",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ]],
    )
}

/// One hub router: its namespace, its BGP speaker, its addresses.
pub struct Hub {
    /// "main" or "backup".
    pub role: &'static str,
    /// Dropped before the namespace.
    pub bird: Bird,
    pub ns: Netns,
    /// The hub's address on its link to the dc (interface `dc0`); BGP next hop.
    pub dc_address: &'static str,
    /// The dc's address on that link.
    pub dc_peer: &'static str,
    /// The hub's public (WAN) address on its link to `core` (interface `core0`).
    pub wan_address: &'static str,
}

impl Hub {
    /// Creates `tl0`, a veth pair standing in for townlink's tunnel
    /// interface (this kernel has no dummy links), for routes added by hand.
    pub fn stand_in_tunnel(&self) {
        self.ns.ip(&[
            "link", "add", "tl0", "type", "veth", "peer", "name", "tl0-peer",
        ]);
        self.ns.ip(&["link", "set", "tl0-peer", "up"]);
        self.ns.ip(&["link", "set", "tl0", "up"]);
    }

    /// What townlink will write for a site: `ip route replace PREFIX dev tl0
    /// proto 116 table 116 metric METRIC`.
    pub fn announce(&self, prefix: &str, metric: u32) {
        self.ns.ip(&[
            "route",
            "replace",
            prefix,
            "dev",
            "tl0",
            "proto",
            "116",
            "table",
            "116",
            "metric",
            &metric.to_string(),
        ]);
    }

    /// Removes that route again.
    pub fn withdraw(&self, prefix: &str, metric: u32) {
        self.ns.ip(&[
            "route",
            "del",
            prefix,
            "dev",
            "tl0",
            "proto",
            "116",
            "table",
            "116",
            "metric",
            &metric.to_string(),
        ]);
    }
}

/// The two-hub topology with its BGP speakers.
pub struct DataCentre {
    pub main: Hub,
    pub backup: Hub,
    /// The data centre router's BGP speaker (protocols `hub_main`, `hub_backup`).
    pub dc_bird: Bird,
    pub dc: Netns,
    pub records: Netns,
    pub core: Netns,
    /// How long after the three BIRDs were started every session was Established.
    pub bgp_up: Duration,
    /// The prefix of every namespace name of this topology (`tlPID-N`).
    pub prefix: String,
    pub dir: tempfile::TempDir,
}

impl DataCentre {
    /// Builds the namespaces, starts a BIRD on each router with the shipped
    /// configurations and waits until both hubs' sessions with the dc are
    /// Established.
    pub fn build() -> DataCentre {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the netns tests need root (network namespaces); run them as root"
        );
        let prefix = format!(
            "tl{}-{}",
            std::process::id(),
            super::COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let ns = |role: &str| Netns::new(format!("{prefix}-{role}"));
        let dir = tempfile::tempdir().expect("temp dir");

        let dc = ns("dc");
        let records = ns("records");
        let core = ns("core");
        let hub_main = ns("hub-main");
        let hub_backup = ns("hub-backup");
        for n in [&dc, &core, &hub_main, &hub_backup] {
            n.sysctl("net.ipv4.ip_forward", "1");
        }
        link(
            &dc,
            "rec0",
            "10.50.0.1/24",
            &records,
            "eth0",
            &format!("{RECORDS}/24"),
        );
        records.ip(&["route", "add", "default", "via", "10.50.0.1"]);

        // (role, namespace, hub's dc-link address, dc's, hub's WAN address, core's)
        let mut hubs = Vec::new();
        for (role, ns, dc_address, dc_peer, wan_address, core_address) in [
            (
                "main",
                hub_main,
                "10.60.1.2",
                "10.60.1.1",
                "198.18.0.2",
                "198.18.0.1",
            ),
            (
                "backup",
                hub_backup,
                "10.60.2.2",
                "10.60.2.1",
                "198.18.3.2",
                "198.18.3.1",
            ),
        ] {
            let side = format!("{role}0");
            link(
                &ns,
                "dc0",
                &format!("{dc_address}/24"),
                &dc,
                &side,
                &format!("{dc_peer}/24"),
            );
            link(
                &ns,
                "core0",
                &format!("{wan_address}/24"),
                &core,
                &side,
                &format!("{core_address}/24"),
            );
            // The internet by the WAN, the records server by the dc.
            ns.ip(&["route", "add", "default", "via", core_address]);
            ns.ip(&["route", "add", "10.50.0.0/24", "via", dc_peer]);
            hubs.push((role, ns, dc_address, dc_peer, wan_address));
        }

        let log = |name: &str| dir.path().join(format!("{name}.log"));
        let dc_conf = render(
            DC_CONF,
            &[
                ("DC_ROUTER_ID", "10.60.1.1"),
                ("DC_AS", &DC_AS.to_string()),
                ("HUB_AS", &HUB_AS.to_string()),
                ("HUB_MAIN_ADDRESS", hubs[0].2),
                ("HUB_BACKUP_ADDRESS", hubs[1].2),
                ("SITE_PREFIXES", SITE_PREFIXES),
            ],
            &log("dc"),
        );
        let dc_bird = Bird::start(&dc, "dc", &dc_conf, dir.path());
        let mut started = Vec::new();
        for (role, ns, dc_address, dc_peer, wan_address) in hubs {
            let name = format!("hub-{role}");
            let conf = render(
                HUB_CONF,
                &[
                    ("HUB_ADDRESS", dc_address),
                    ("HUB_AS", &HUB_AS.to_string()),
                    ("DC_ADDRESS", dc_peer),
                    ("DC_AS", &DC_AS.to_string()),
                ],
                &log(&name),
            );
            let bird = Bird::start(&ns, &name, &conf, dir.path());
            started.push(Hub {
                role,
                bird,
                ns,
                dc_address,
                dc_peer,
                wan_address,
            });
        }
        let backup = started.pop().expect("backup hub");
        let main = started.pop().expect("main hub");
        let mut dcn = DataCentre {
            main,
            backup,
            dc_bird,
            dc,
            records,
            core,
            bgp_up: Duration::ZERO,
            prefix,
            dir,
        };
        let within = Duration::from_secs(30);
        let mut up = Duration::ZERO;
        for (bird, protocol) in [
            (&dcn.dc_bird, "hub_main"),
            (&dcn.dc_bird, "hub_backup"),
            (&dcn.main.bird, "dc"),
            (&dcn.backup.bird, "dc"),
        ] {
            let seen = bird.wait_established(protocol, within).unwrap();
            up = up.max(seen.saturating_duration_since(dcn.dc_bird.started));
        }
        dcn.bgp_up = up;
        dcn
    }

    /// The dc's next hop toward `addr` (`ip -j route get`), or None when
    /// the dc has no route to it.
    pub fn dc_next_hop(&self, addr: &str) -> Option<String> {
        let out = Command::new("ip")
            .args(["-n", &self.dc.name, "-j", "route", "get", addr])
            .output()
            .expect("run ip route get");
        if !out.status.success() {
            // "Network is unreachable": no hub announces it.
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("ip -j route get {addr}: {e}"));
        v[0]["gateway"].as_str().map(str::to_string)
    }

    /// Which hub the dc sends `addr`'s traffic to: "main", "backup", or
    /// None (unreachable). Panics on any other next hop.
    pub fn dc_route(&self, addr: &str) -> Option<&'static str> {
        let hop = self.dc_next_hop(addr)?;
        [&self.main, &self.backup]
            .into_iter()
            .find(|h| h.dc_address == hop)
            .map(|h| h.role)
            .or_else(|| panic!("dc routes {addr} via {hop}, which is no hub"))
    }

    /// Polls the dc's route to `addr` every 5 ms until it goes to `hub`
    /// (None: unreachable); returns the time since `since`.
    pub fn wait_dc_route(
        &self,
        addr: &str,
        hub: Option<&str>,
        since: Instant,
        within: Duration,
    ) -> Result<Duration, String> {
        let deadline = Instant::now() + within;
        loop {
            let now = self.dc_route(addr);
            if now == hub {
                return Ok(since.elapsed());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "dc route to {addr}: {now:?} after {within:?}, expected {hub:?}\n{}",
                    self.dc
                        .run_output(&["ip", "route", "show"])
                        .stdout
                        .escape_ascii()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The MED of `protocol`'s (`hub_main`, `hub_backup`) route to `prefix`
    /// in the dc's BIRD, None when that hub announces no such route.
    pub fn dc_med(&self, prefix: &str, protocol: &str) -> Option<u32> {
        let text = match self
            .dc_bird
            .birdc(&["show", "route", prefix, "protocol", protocol, "all"])
        {
            Ok(text) => text,
            // birdc fails when no protocol has a route to the prefix.
            Err(e) if e.contains("Network not found") => return None,
            Err(e) => panic!("{e}"),
        };
        text.lines()
            .find_map(|l| l.trim().strip_prefix("BGP.med:"))
            .map(|v| v.trim().parse().expect("BGP.med is a number"))
    }

    /// Polls [`DataCentre::dc_med`] every 5 ms until it is `med`; returns
    /// the time since `since`.
    pub fn wait_dc_med(
        &self,
        prefix: &str,
        protocol: &str,
        med: Option<u32>,
        since: Instant,
        within: Duration,
    ) -> Result<Duration, String> {
        let deadline = Instant::now() + within;
        loop {
            let now = self.dc_med(prefix, protocol);
            if now == med {
                return Ok(since.elapsed());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "MED of {protocol}'s {prefix} at the dc: {now:?} after {within:?}, expected {med:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The dc's kernel routes installed by BIRD (`proto bird`), as JSON.
    pub fn dc_bird_routes(&self) -> serde_json::Value {
        self.dc.ip_json(&["route", "show", "proto", "bird"])
    }
}

impl DataCentre {
    /// A new namespace of this topology, named `PREFIX-ROLE`.
    pub fn netns(&self, role: &str) -> Netns {
        Netns::new(format!("{}-{role}", self.prefix))
    }

    /// Stops every BIRD (by PID); idempotent.
    pub fn stop_birds(&mut self) {
        self.main.bird.shut_down();
        self.backup.bird.shut_down();
        self.dc_bird.shut_down();
    }
}

impl Drop for DataCentre {
    fn drop(&mut self) {
        // Every BIRD before any namespace goes (fields drop afterwards).
        self.stop_birds();
    }
}

/// The tunnel addresses of the two hubs.
pub const MAIN_TUNNEL: &str = "10.99.0.1";
pub const BACKUP_TUNNEL: &str = "10.99.0.254";
/// What both hubs route for the annexes: the records network and the
/// other annexes' LANs.
const HUB_ROUTES: &str = r#"["10.50.0.0/24", "192.168.0.0/16"]"#;

/// townlink on one hub of a [`BackupSite`]: its files and every process
/// started from them (the last one is the current one; the earlier ones
/// keep their logs, printed when a test panics). Started again with the
/// same files, as systemd would.
pub struct HubTownlink {
    /// "hub-main" or "hub-backup": names the files.
    pub name: String,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub runs: Vec<Daemon>,
}

impl HubTownlink {
    /// Starts townlink in `ns` and waits until it says it is up.
    pub fn start(&mut self, ns: &Netns) {
        let log = self
            .config
            .with_file_name(format!("{}-{}.log", self.name, self.runs.len()));
        let daemon = Daemon::start(ns, &self.config, log);
        let up = daemon.wait_for_log(&["townlink is up"], Duration::from_secs(20));
        self.runs.push(daemon);
        up.unwrap();
    }

    /// The running process.
    pub fn daemon(&self) -> &Daemon {
        self.runs.last().expect("started")
    }

    /// SIGKILL: the hub's townlink crashes (its tunnel interface goes
    /// with it; the hub's BIRD stays up).
    pub fn kill(&mut self) {
        self.runs.last_mut().expect("started").kill();
    }

    /// SIGTERM, waiting for a clean exit.
    pub fn stop(&mut self) {
        let status = self
            .runs
            .last_mut()
            .expect("started")
            .stop(Duration::from_secs(10));
        assert!(status.success(), "{} stopped with {status}", self.name);
    }

    /// `townlink site ARGS --socket <this hub's socket>`: (exit code,
    /// stdout, stderr).
    pub fn site(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(super::townlink_bin())
            .arg("site")
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("run townlink site");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `site list --json` on this hub: the site named `name`, if listed.
    pub fn listed_site(&self, name: &str) -> Option<serde_json::Value> {
        let (code, out, err) = self.site(&["list", "--json"]);
        assert_eq!(code, 0, "site list on {}: {err}", self.name);
        let list: serde_json::Value = serde_json::from_str(&out).expect("site list JSON");
        list.as_array()?.iter().find(|s| s["name"] == name).cloned()
    }

    /// `townlink status --json` of this hub.
    pub fn status(&self) -> serde_json::Value {
        let (code, out, err) = super::status(&self.socket, true);
        assert_eq!(code, 0, "status of {}: {err}", self.name);
        serde_json::from_str(&out).expect("status JSON")
    }
}

/// The backup site with townlink (issue 18): the [`DataCentre`] bed, each
/// hub namespace also running townlink as a hub on its WAN side (`core0`),
/// and annex 1 with fiber and 4G (NAT) as in [`super::Wan`].
///
/// ```text
///                 ┌── hub-main   (townlink + BIRD) ──┐           ┌── fiber ──┐
///  records ── dc ─┤                                   ├── core ──┤           ├── annex1 ── lan1
///   (BIRD)        └── hub-backup (townlink + BIRD) ──┘           └── 4g NAT ─┘
/// ```
/// hub-main enrolls (`[enrollment]`) and lists hub-backup as its
/// `[[follower]]`; hub-backup follows it (`[follow]`, over the WAN). The
/// annex is enrolled by `townlink site add` on hub-main and `townlink
/// join`: its config has both hubs (`tl0` main, preferred; `tl1` backup).
/// The records server sits behind the dc, which learns the annexes' LANs
/// by BGP only: no static return path.
///
/// Dropping it stops the daemons (annex, then hubs), then every BIRD, then
/// deletes the namespaces, also when a test panics.
pub struct BackupSite {
    /// townlink on annex 1, every run (the last is the current one).
    pub annex_runs: Vec<Daemon>,
    pub main: HubTownlink,
    pub backup: HubTownlink,
    pub annex: super::Annex,
    pub isp_fiber: Netns,
    pub isp_4g: Netns,
    pub dcn: DataCentre,
    /// How long the enrollment took: `site add` on hub-main, `join` on
    /// the annex, until hub-backup listed the site as joined.
    pub enrolled_in: Duration,
}

impl BackupSite {
    /// Builds the bed, starts both hubs' townlink, enrolls annex 1
    /// (LAN 192.168.1.0/24) on hub-main and waits until hub-backup has it;
    /// the annex is not started.
    pub fn build() -> BackupSite {
        let dcn = DataCentre::build();
        let ns = |role: &str| dcn.netns(role);
        let (isp_fiber, isp_4g) = super::isps(&dcn.core, &ns);
        let (annex_ns, lan) = super::annex_namespaces(&dcn.core, &isp_fiber, &isp_4g, 1, &ns);
        let dir = dcn.dir.path().to_path_buf();

        write_key(&dir.join("hub-main.key"));
        let main_fp = write_identity(&dir, "hub-main-probe");
        let backup_key = write_key(&dir.join("hub-backup.key"));
        let backup_fp = write_identity(&dir, "hub-backup-probe");
        let hub_config = |name: &str, tunnel: &str, rest: String| {
            let config = dir.join(format!("{name}.toml"));
            std::fs::write(
                &config,
                format!(
                    "role = \"hub\"\nstate_directory = \"{name}-state\"\n\n\
                     [tunnel]\ninterface = \"tl0\"\nprivate_key_file = \"{name}.key\"\n\
                     address = \"{tunnel}/24\"\nlisten_port = {HUB_PORT}\n\n\
                     [probe]\ncertificate_file = \"{name}-probe.crt\"\n\
                     key_file = \"{name}-probe.key\"\nlisten_port = {PROBE_PORT}\n\n\
                     [control]\nsocket = \"{name}.sock\"\n\n{rest}"
                ),
            )
            .expect("hub config");
            HubTownlink {
                name: name.to_string(),
                config,
                socket: dir.join(format!("{name}.sock")),
                runs: Vec::new(),
            }
        };
        let main = hub_config(
            "hub-main",
            MAIN_TUNNEL,
            format!(
                "[enrollment]\nregistry = \"hub-main-sites.json\"\n\
                 endpoints = [\"{}:{HUB_PORT}\"]\nroutes = {HUB_ROUTES}\n\n\
                 [[follower]]\nname = \"backup\"\ncertificate = \"{backup_fp}\"\n\
                 public_key = \"{}\"\nendpoints = [\"{}:{HUB_PORT}\"]\n\
                 address = \"{BACKUP_TUNNEL}\"\n",
                dcn.main.wan_address,
                backup_key.public_key(),
                dcn.backup.wan_address,
            ),
        );
        let backup = hub_config(
            "hub-backup",
            BACKUP_TUNNEL,
            format!(
                "[follow]\nname = \"main\"\nendpoint = \"{}:{PROBE_PORT}\"\n\
                 fingerprint = \"{main_fp}\"\n",
                dcn.main.wan_address
            ),
        );
        let mut site = BackupSite {
            annex_runs: Vec::new(),
            main,
            backup,
            annex: super::Annex {
                ns: annex_ns,
                lan,
                config: PathBuf::new(),
                lan_host: "192.168.1.10".to_string(),
            },
            isp_fiber,
            isp_4g,
            dcn,
            enrolled_in: Duration::ZERO,
        };
        site.main.start(&site.dcn.main.ns);
        site.backup.start(&site.dcn.backup.ns);

        let started = Instant::now();
        let (code, out, err) =
            site.main
                .site(&["add", "annex-1", "--lan", "192.168.1.0/24", "--json"]);
        assert_eq!(code, 0, "site add annex-1: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("site add JSON");
        let token = v["token"].as_str().expect("token").to_string();
        let (code, out, err) = super::join_annex(&mut site.annex, 1, &dir, &token);
        assert_eq!(code, 0, "join: {out}{err}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while site
            .backup
            .listed_site("annex-1")
            .is_none_or(|s| s["state"] != "joined")
        {
            assert!(
                Instant::now() < deadline,
                "hub-backup does not list annex-1 as joined"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        site.enrolled_in = started.elapsed();
        site
    }

    /// Starts townlink on the annex.
    pub fn start_annex(&mut self) {
        let log = self
            .dcn
            .dir
            .path()
            .join(format!("annex1-{}.log", self.annex_runs.len()));
        self.annex_runs
            .push(Daemon::start(&self.annex.ns, &self.annex.config, log));
    }

    /// The annex's current townlink.
    pub fn annex_daemon(&self) -> &Daemon {
        self.annex_runs.last().expect("annex started")
    }

    /// The annex's control socket (as [`super::join_annex`] wrote it).
    pub fn annex_socket(&self) -> PathBuf {
        self.dcn.dir.path().join("annex1.sock")
    }

    /// Starts hub-main's townlink (again).
    pub fn start_main(&mut self) {
        self.main.start(&self.dcn.main.ns);
    }

    /// Starts hub-backup's townlink (again).
    pub fn start_backup(&mut self) {
        self.backup.start(&self.dcn.backup.ns);
    }

    /// The device of the annex's route to the records network: `tl0` on
    /// hub-main, `tl1` on hub-backup.
    pub fn records_device(&self) -> String {
        let routes = self.annex.ns.ip_json(&["route", "show", "10.50.0.0/24"]);
        routes[0]["dev"].as_str().unwrap_or_default().to_string()
    }

    /// The annex's hub in use, from [`BackupSite::records_device`]:
    /// "main", "backup" or "" (neither).
    pub fn annex_hub(&self) -> &'static str {
        match self.records_device().as_str() {
            "tl0" => "main",
            "tl1" => "backup",
            _ => "",
        }
    }

    /// The uplink the session with `hub` leaves by (its table: 7400 for
    /// the first hub, 7416 for the second).
    pub fn session_uplink(&self, hub: &str) -> String {
        let table = if hub == "main" { "7400" } else { "7416" };
        let routes = self.annex.ns.ip_json(&["route", "show", "table", table]);
        routes[0]["dev"].as_str().unwrap_or_default().to_string()
    }

    /// `ip route show table 116` on a hub ("main" or "backup"), as
    /// (destination, metric) pairs.
    pub fn table_116(&self, hub: &str) -> Vec<(String, u64)> {
        let ns = if hub == "main" {
            &self.dcn.main.ns
        } else {
            &self.dcn.backup.ns
        };
        ns.ip_json(&["route", "show", "table", "116"])
            .as_array()
            .expect("routes")
            .iter()
            .map(|r| {
                (
                    r["dst"].as_str().unwrap_or_default().to_string(),
                    r["metric"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }
}

impl Drop for BackupSite {
    fn drop(&mut self) {
        // Daemons (annex first, so that no hub sees it leave by its own
        // death), then every BIRD, then the namespaces (fields).
        self.annex_runs.clear();
        self.main.runs.clear();
        self.backup.runs.clear();
        self.dcn.stop_birds();
    }
}

//! The WAN test bed: network namespaces made by the test itself.
//!
//! ```text
//!  records ── hub ── core ──┬── isp-fiber ── annex-N ── lan-N
//!                           └── isp-4g (NAT) ─┘
//! ```
//! Every namespace name carries a per-process, per-topology prefix, so tests
//! run in parallel. Dropping a [`Wan`] stops the daemons it started (by PID)
//! and deletes its namespaces, also when the test panics. Nothing is
//! configured in the root namespace.
#![allow(dead_code)]

pub mod bgp;
pub mod load;
pub mod netem;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use townlink::keys::PrivateKey;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Netns {
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs a program inside the namespace; its output, whatever the exit.
    pub fn run_output(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    /// Runs a program inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Runs `f` on a thread that has entered this namespace; sockets made
    /// there stay in the namespace wherever they are used afterwards.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a valid namespace fd; it only affects this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in namespace panicked")
    }

    /// JSON of `ip -j ARGS` in this namespace.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let out = self.ip(&full);
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return serde_json::Value::Array(vec![]);
        }
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("ip -j {args:?}: {e}: {text}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Connects namespace `a` (interface `ia`, address `aa`) to `b` by a veth pair.
pub fn link(a: &Netns, ia: &str, aa: &str, b: &Netns, ib: &str, ab: &str) {
    a.ip(&[
        "link", "add", ia, "type", "veth", "peer", "name", ib, "netns", &b.name,
    ]);
    a.ip(&["addr", "add", aa, "dev", ia]);
    b.ip(&["addr", "add", ab, "dev", ib]);
    a.ip(&["link", "set", ia, "up"]);
    b.ip(&["link", "set", ib, "up"]);
}

/// The townlink binary: `$TOWNLINK_BIN`, else the one cargo built for the
/// tests, else the one next to the running example (`target/*/examples/..`).
pub fn townlink_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("TOWNLINK_BIN") {
        return PathBuf::from(path);
    }
    if let Some(path) = option_env!("CARGO_BIN_EXE_townlink") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("townlink"))
        .expect("target directory")
}

/// A townlink process, stopped on drop (SIGTERM, then SIGKILL).
pub struct Daemon {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(ns: &Netns, config: &Path, log: PathBuf) -> Daemon {
        Daemon::start_with(ns, config, log, &[], &[])
    }

    /// Like [`Daemon::start`], with a command in front of townlink (e.g.
    /// `setpriv ...`, which must exec it) and extra environment variables.
    pub fn start_with(
        ns: &Netns,
        config: &Path,
        log: PathBuf,
        prefix: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let out = File::create(&log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(prefix)
            .envs(env.iter().copied())
            .arg(townlink_bin())
            .args(["run", "-c"])
            .arg(config)
            .env("RUST_LOG", "info,townlink=debug")
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn townlink");
        Daemon {
            name: ns.name.clone(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn signal(&self, sig: i32) {
        // `ip netns exec` execs townlink: the PID is townlink's own.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Sends SIGTERM and waits for the exit (at most `timeout`).
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(timeout)
    }

    /// SIGKILL: a crash, leaving whatever the daemon had installed.
    pub fn kill(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait(Duration::from_secs(10))
    }

    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not exit within {timeout:?}\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- log of townlink in {} ----\n{}",
                self.name,
                self.log_text()
            );
        }
    }
}

/// Writes a private key file with mode 0600; returns the key.
pub fn write_key(path: &Path) -> PrivateKey {
    use std::os::unix::fs::OpenOptionsExt;
    let key = PrivateKey::generate();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("key file");
    writeln!(f, "{}", key.to_base64_secret()).expect("write key");
    key
}

pub const RECORDS: &str = "10.50.0.10";
pub const HUB_PORT: u16 = 51820;
pub const PROBE_PORT: u16 = 51821;

/// Settings of the annexes' configs that tests change.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Extra lines of `[probe]`, e.g. `metered_interval = "2s"`.
    pub annex_probe: String,
    /// Extra lines of `[failover]`, e.g. `holddown = "5s"`.
    pub annex_failover: String,
    /// Extra sections at the end of every annex's config (`{n}` is
    /// replaced by the annex's number), e.g. `[metrics]` or `[[check]]`.
    pub annex_extra: String,
    /// Extra sections at the end of the hub's config.
    pub hub_extra: String,
    /// The hub starts without `[[site]]` tables: annexes enroll with
    /// `townlink site add` and `townlink join` (see [`Wan::join`]).
    pub enrolled_sites: bool,
}

/// Writes `NAME.crt` and `NAME.key` (mode 0600) into `dir`; returns the
/// certificate's fingerprint.
pub fn write_identity(dir: &Path, name: &str) -> String {
    let id = townlink::probe::tls::Identity::generate(name).expect("certificate");
    townlink::fsutil::write_atomic(
        &dir.join(format!("{name}.crt")),
        id.cert_pem().as_bytes(),
        0o644,
    )
    .expect("cert");
    townlink::fsutil::write_atomic(
        &dir.join(format!("{name}.key")),
        id.key_pem_secret().as_bytes(),
        0o600,
    )
    .expect("key");
    id.fingerprint().to_string()
}

/// One annex: its namespaces and addresses.
pub struct Annex {
    pub ns: Netns,
    pub lan: Netns,
    pub config: PathBuf,
    pub lan_host: String,
}

/// The annexes' carriers on `core` (the internet): `fiber` (198.18.1.2)
/// and `4g` (198.18.2.2, with the carrier's NAT), both forwarding. `ns`
/// makes a namespace of the topology from its role.
pub fn isps(core: &Netns, ns: &impl Fn(&str) -> Netns) -> (Netns, Netns) {
    let isp_fiber = ns("fiber");
    let isp_4g = ns("4g");
    for n in [&isp_fiber, &isp_4g] {
        n.sysctl("net.ipv4.ip_forward", "1");
    }
    link(
        core,
        "fib0",
        "198.18.1.1/24",
        &isp_fiber,
        "core0",
        "198.18.1.2/24",
    );
    link(
        core,
        "lte0",
        "198.18.2.1/24",
        &isp_4g,
        "core0",
        "198.18.2.2/24",
    );
    isp_fiber.ip(&["route", "add", "default", "via", "198.18.1.1"]);
    isp_4g.ip(&["route", "add", "default", "via", "198.18.2.1"]);
    // The carrier's NAT: 4G subscribers leave with the carrier's address.
    isp_4g.exec(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        "core0",
        "-j",
        "MASQUERADE",
    ]);
    (isp_fiber, isp_4g)
}

/// Annex `n`'s namespaces (1-based): the router `annexN` with `fiber0`
/// (198.18.1N.2 behind `isp_fiber`, its default route) and `lte0`
/// (100.64.N.2 behind `isp_4g`'s NAT), and the LAN `lanN` (192.168.N.0/24,
/// the host at .10, the annex at .1); `core` routes 198.18.1N.0/24 to the
/// fiber carrier. Returns (annex, LAN).
pub fn annex_namespaces(
    core: &Netns,
    isp_fiber: &Netns,
    isp_4g: &Netns,
    n: usize,
    ns: &impl Fn(&str) -> Netns,
) -> (Netns, Netns) {
    let fiber_net = format!("198.18.1{n}");
    core.ip(&[
        "route",
        "add",
        &format!("{fiber_net}.0/24"),
        "via",
        "198.18.1.2",
    ]);
    let a = ns(&format!("annex{n}"));
    let lan = ns(&format!("lan{n}"));
    link(
        isp_fiber,
        &format!("a{n}"),
        &format!("{fiber_net}.1/24"),
        &a,
        "fiber0",
        &format!("{fiber_net}.2/24"),
    );
    link(
        isp_4g,
        &format!("a{n}"),
        &format!("100.64.{n}.1/24"),
        &a,
        "lte0",
        &format!("100.64.{n}.2/24"),
    );
    a.ip(&["route", "add", "default", "via", &format!("{fiber_net}.1")]);
    link(
        &a,
        "lan0",
        &format!("192.168.{n}.1/24"),
        &lan,
        "eth0",
        &format!("192.168.{n}.10/24"),
    );
    lan.ip(&["route", "add", "default", "via", &format!("192.168.{n}.1")]);

    (a, lan)
}

/// The whole WAN. Field order is drop order: daemons before namespaces.
pub struct Wan {
    pub daemons: Vec<Daemon>,
    pub annexes: Vec<Annex>,
    pub hub: Netns,
    pub records: Netns,
    pub core: Netns,
    pub isp_fiber: Netns,
    pub isp_4g: Netns,
    pub hub_config: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Wan {
    /// Builds the topology for `annexes` annexes and writes every config,
    /// with the default settings.
    pub fn build(annexes: usize) -> Wan {
        Wan::build_with(annexes, &Options::default())
    }

    /// Builds the topology with extra lines in the annexes' `[probe]` and
    /// `[failover]` sections.
    pub fn build_with(annexes: usize, options: &Options) -> Wan {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the netns tests need root (network namespaces); run them as root"
        );
        let prefix = format!(
            "tl{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let ns = |role: &str| Netns::new(format!("{prefix}-{role}"));
        let dir = tempfile::tempdir().expect("temp dir");

        let hub = ns("hub");
        let records = ns("records");
        let core = ns("core");
        let (isp_fiber, isp_4g) = isps(&core, &ns);
        for n in [&hub, &core] {
            n.sysctl("net.ipv4.ip_forward", "1");
        }
        link(
            &hub,
            "core0",
            "198.18.0.2/24",
            &core,
            "hub0",
            "198.18.0.1/24",
        );
        hub.ip(&["route", "add", "default", "via", "198.18.0.1"]);
        link(
            &hub,
            "rec0",
            "10.50.0.1/24",
            &records,
            "eth0",
            &format!("{RECORDS}/24"),
        );
        records.ip(&["route", "add", "default", "via", "10.50.0.1"]);
        let hub_key = write_key(&dir.path().join("hub.key"));
        let hub_fp = write_identity(dir.path(), "hub-probe");
        let mut sites = String::new();
        let mut list = Vec::new();
        for n in 1..=annexes {
            let fiber_net = format!("198.18.1{n}");
            let (a, lan) = annex_namespaces(&core, &isp_fiber, &isp_4g, n, &ns);
            let key = write_key(&dir.path().join(format!("annex{n}.key")));
            let cert = write_identity(dir.path(), &format!("annex{n}-probe"));
            if !options.enrolled_sites {
                sites.push_str(&format!(
                "\n[[site]]\nname = \"annex-{n}\"\npublic_key = \"{}\"\naddress = \"10.99.0.{}\"\nlan = [\"192.168.{n}.0/24\"]\ncertificate = \"{cert}\"\n",
                key.public_key(),
                n + 1
            ));
            }
            let config = dir.path().join(format!("annex{n}.toml"));
            std::fs::write(
                &config,
                format!(
                    r#"role = "annex"
name = "annex-{n}"
lan = ["192.168.{n}.0/24"]
state_directory = "annex{n}-state"

[tunnel]
interface = "tl0"
private_key_file = "annex{n}.key"
address = "10.99.0.{addr}/24"

[probe]
certificate_file = "annex{n}-probe.crt"
key_file = "annex{n}-probe.key"
{probe_extra}

[failover]
{failover_extra}

[[hub]]
name = "main"
public_key = "{hub_pub}"
endpoint = "198.18.0.2:{HUB_PORT}"
address = "10.99.0.1"
routes = ["10.50.0.0/24", "192.168.0.0/16"]
fingerprint = "{hub_fp}"

[[uplink]]
name = "fiber"
interface = "fiber0"
gateway = "{fiber_net}.1"
priority = 0

[[uplink]]
name = "lte"
interface = "lte0"
gateway = "100.64.{n}.1"
priority = 1
metered = true

[control]
socket = "annex{n}.sock"

{annex_extra}
"#,
                    annex_extra = options.annex_extra.replace("{n}", &n.to_string()),
                    addr = n + 1,
                    hub_pub = hub_key.public_key(),
                    probe_extra = options.annex_probe,
                    failover_extra = options.annex_failover,
                ),
            )
            .expect("annex config");
            list.push(Annex {
                ns: a,
                lan,
                config,
                lan_host: format!("192.168.{n}.10"),
            });
        }
        let hub_config = dir.path().join("hub.toml");
        std::fs::write(
            &hub_config,
            format!(
                "role = \"hub\"\nstate_directory = \"hub-state\"\n\n[tunnel]\ninterface = \"tl0\"\nprivate_key_file = \"hub.key\"\naddress = \"10.99.0.1/24\"\nlisten_port = {HUB_PORT}\n\n[probe]\ncertificate_file = \"hub-probe.crt\"\nkey_file = \"hub-probe.key\"\nlisten_port = {PROBE_PORT}\n\n[control]\nsocket = \"hub.sock\"\n\n[enrollment]\nregistry = \"hub-sites.json\"\nendpoints = [\"198.18.0.2:{HUB_PORT}\"]\nroutes = [\"10.50.0.0/24\", \"192.168.0.0/16\"]\n{sites}\n{hub_extra}",
                hub_extra = options.hub_extra
            ),
        )
        .expect("hub config");

        Wan {
            daemons: Vec::new(),
            annexes: list,
            hub,
            records,
            core,
            isp_fiber,
            isp_4g,
            hub_config,
            dir,
        }
    }

    /// Starts townlink on the hub; returns its index in `daemons`.
    pub fn start_hub(&mut self) -> usize {
        let log = self
            .dir
            .path()
            .join(format!("hub-{}.log", self.daemons.len()));
        self.daemons
            .push(Daemon::start(&self.hub, &self.hub_config, log));
        self.daemons.len() - 1
    }

    /// Starts townlink on annex `n` (1-based); returns its index in `daemons`.
    pub fn start_annex(&mut self, n: usize) -> usize {
        let a = &self.annexes[n - 1];
        let log = self
            .dir
            .path()
            .join(format!("annex{n}-{}.log", self.daemons.len()));
        self.daemons.push(Daemon::start(&a.ns, &a.config, log));
        self.daemons.len() - 1
    }

    /// `townlink site ARGS --socket <hub's socket>`: (exit code, stdout, stderr).
    pub fn site(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(townlink_bin())
            .arg("site")
            .args(args)
            .arg("--socket")
            .arg(self.dir.path().join("hub.sock"))
            .output()
            .expect("run townlink site");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `townlink site add NAME ARGS --json`: the token (panics on failure).
    pub fn site_add(&self, name: &str, args: &[&str]) -> String {
        let mut all = vec!["add", name, "--json"];
        all.extend_from_slice(args);
        let (code, out, err) = self.site(&all);
        assert_eq!(code, 0, "site add {name}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("site add JSON");
        v["token"].as_str().expect("token").to_string()
    }

    /// The directory annex `n` joins into.
    pub fn join_dir(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("annex{n}-joined"))
    }

    /// `townlink join TOKEN` inside annex `n`'s namespace, with both
    /// uplinks named, into [`Wan::join_dir`]: (exit code, stdout, stderr).
    /// On success, annex `n` runs from the written config (with its own
    /// control socket added).
    pub fn join(&mut self, n: usize, token: &str) -> (i32, String, String) {
        let dir = self.dir.path().to_path_buf();
        join_annex(&mut self.annexes[n - 1], n, &dir, token)
    }

    /// `townlink join TOKEN --force` inside annex `n`'s namespace into
    /// [`Wan::join_dir`], both uplinks named; nothing changed afterwards:
    /// (exit code, stdout, stderr).
    pub fn join_force(&self, n: usize, token: &str) -> (i32, String, String) {
        let dir = self.join_dir(n);
        let out = self.annex(n).ns.run_output(&[
            townlink_bin().to_str().expect("UTF-8 path"),
            "join",
            token,
            "--force",
            "--dir",
            dir.to_str().expect("UTF-8 path"),
            "--uplink",
            &format!("fiber=fiber0,gateway=198.18.1{n}.1"),
            "--uplink",
            &format!("lte=lte0,gateway=100.64.{n}.1,metered"),
        ]);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn annex(&self, n: usize) -> &Annex {
        &self.annexes[n - 1]
    }
}

/// `townlink join TOKEN` inside annex `n`'s namespace (1-based), with
/// both uplinks named (the 4G metered), into `DIR/annexN-joined`:
/// (exit code, stdout, stderr). On success the written config gets a
/// state directory and a control socket of its own under `dir`
/// (`annexN-state`, `annexN.sock`), and becomes `annex.config`.
pub fn join_annex(annex: &mut Annex, n: usize, dir: &Path, token: &str) -> (i32, String, String) {
    let join_dir = dir.join(format!("annex{n}-joined"));
    let out = annex.ns.run_output(&[
        townlink_bin().to_str().expect("UTF-8 path"),
        "join",
        token,
        "--dir",
        join_dir.to_str().expect("UTF-8 path"),
        "--uplink",
        &format!("fiber=fiber0,gateway=198.18.1{n}.1"),
        "--uplink",
        &format!("lte=lte0,gateway=100.64.{n}.1,metered"),
    ]);
    let result = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    if result.0 == 0 {
        let config = join_dir.join("townlink.toml");
        let mut text = format!(
            "state_directory = \"{}\"\n{}",
            dir.join(format!("annex{n}-state")).display(),
            std::fs::read_to_string(&config).expect("written config")
        );
        text.push_str(&format!(
            "\n[control]\nsocket = \"{}\"\n",
            dir.join(format!("annex{n}.sock")).display()
        ));
        std::fs::write(&config, text).expect("config");
        annex.config = config;
    }
    result
}

/// A TCP echo server listening in `ns` on `addr`; runs until the process ends.
pub fn echo_server(ns: &Netns, addr: &str) -> SocketAddr {
    let addr: SocketAddr = addr.parse().expect("address");
    let listener = ns
        .run(move || TcpListener::bind(addr))
        .expect("bind echo server");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Connects from `ns` to `addr` and checks an echo round trip of `payload`.
pub fn echo_once(ns: &Netns, addr: SocketAddr, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut conn = ns.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.write_all(payload)?;
    let mut got = vec![0u8; payload.len()];
    conn.read_exact(&mut got)?;
    Ok(got)
}

/// Retries an echo round trip until it succeeds or `within` passes.
pub fn echo_within(ns: &Netns, addr: SocketAddr, within: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let payload = format!("hello from {} to {addr}", ns.name).into_bytes();
    let mut last = String::new();
    while start.elapsed() < within {
        match echo_once(ns, addr, &payload) {
            Ok(got) if got == payload => return Ok(start.elapsed()),
            Ok(got) => last = format!("echo mismatch: {got:?}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("no echo from {addr} within {within:?}: {last}"))
}

/// A UDP echo server in `ns` on `addr`; runs until the process ends.
pub fn udp_echo_server(ns: &Netns, addr: &str) -> SocketAddr {
    let addr: SocketAddr = addr.parse().expect("address");
    let socket = ns
        .run(move || std::net::UdpSocket::bind(addr))
        .expect("bind udp echo");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    addr
}

/// A steady stream of small UDP packets from a LAN host to an echo server,
/// recording when each echo comes back: what a user's traffic sees.
pub struct UdpStream {
    echoes: std::sync::Arc<std::sync::Mutex<Vec<Instant>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl UdpStream {
    /// `pps` packets per second from `ns` to `to`.
    pub fn start(ns: &Netns, to: SocketAddr, pps: u32) -> UdpStream {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let socket = ns
            .run(|| std::net::UdpSocket::bind("0.0.0.0:0"))
            .expect("bind stream socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let echoes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let sender = socket.try_clone().expect("clone socket");
        let (stop_tx, stop_rx) = (stop.clone(), stop.clone());
        std::thread::spawn(move || {
            let period = Duration::from_secs(1) / pps;
            let mut seq = 0u64;
            let mut next = Instant::now();
            while !stop_tx.load(Ordering::Relaxed) {
                let _ = sender.send_to(&seq.to_be_bytes(), to);
                seq += 1;
                next += period;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        let record = echoes.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop_rx.load(Ordering::Relaxed) {
                if socket.recv(&mut buf).is_ok() {
                    record.lock().expect("lock").push(Instant::now());
                }
            }
        });
        UdpStream { echoes, stop }
    }

    pub fn count(&self) -> usize {
        self.echoes.lock().expect("lock").len()
    }

    /// Echoes received between `from` and `to`.
    pub fn count_between(&self, from: Instant, to: Instant) -> usize {
        self.echoes
            .lock()
            .expect("lock")
            .iter()
            .filter(|t| **t >= from && **t < to)
            .count()
    }

    /// Waits until at least `n` more echoes arrived (at most `within`).
    pub fn wait_for_echoes(&self, n: usize, within: Duration) -> Result<(), String> {
        let target = self.count() + n;
        let deadline = Instant::now() + within;
        while self.count() < target {
            if Instant::now() > deadline {
                return Err(format!(
                    "only {} of {n} echoes within {within:?}",
                    self.count() + n - target
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The longest time without echo between `from` and the last echo,
    /// counting from `from` itself.
    pub fn longest_gap_since(&self, from: Instant) -> Duration {
        let echoes = self.echoes.lock().expect("lock");
        let mut last = from;
        let mut longest = Duration::ZERO;
        for t in echoes.iter().filter(|t| **t >= from) {
            longest = longest.max(t.saturating_duration_since(last));
            last = *t;
        }
        longest
    }

    /// The first echo at or after `from`, if any.
    pub fn first_echo_after(&self, from: Instant) -> Option<Instant> {
        self.echoes
            .lock()
            .expect("lock")
            .iter()
            .find(|t| **t >= from)
            .copied()
    }
}

impl Drop for UdpStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// iptables rules in an isp namespace, removed on drop (or with the namespace).
pub struct Impairment<'a> {
    ns: &'a Netns,
    rules: Vec<Vec<String>>,
}

impl<'a> Impairment<'a> {
    /// Applies `match_and_target` (e.g. `["-j", "DROP"]`) to everything
    /// forwarded to or from `iface` in `ns`.
    pub fn new(ns: &'a Netns, iface: &str, match_and_target: &[&str]) -> Impairment<'a> {
        let mut rules = Vec::new();
        for dir in ["-i", "-o"] {
            let mut rule: Vec<String> = vec!["FORWARD".into(), dir.into(), iface.into()];
            rule.extend(match_and_target.iter().map(|s| s.to_string()));
            let mut args = vec!["iptables", "-I"];
            args.extend(rule.iter().map(String::as_str));
            ns.exec(&args);
            rules.push(rule);
        }
        Impairment { ns, rules }
    }

    /// Drops everything.
    pub fn blackhole(ns: &'a Netns, iface: &str) -> Impairment<'a> {
        Impairment::new(ns, iface, &["-j", "DROP"])
    }

    /// Drops each packet with probability `p` (each direction).
    pub fn loss(ns: &'a Netns, iface: &str, p: f64) -> Impairment<'a> {
        let p = format!("{p}");
        Impairment::new(
            ns,
            iface,
            &[
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ],
        )
    }
}

impl Drop for Impairment<'_> {
    fn drop(&mut self) {
        for rule in &self.rules {
            let mut args = vec!["netns", "exec", &self.ns.name, "iptables", "-D"];
            args.extend(rule.iter().map(String::as_str));
            let _ = Command::new("ip").args(&args).status();
        }
    }
}

impl Daemon {
    /// Waits until the log has a line containing every one of `parts`;
    /// returns that line.
    pub fn wait_for_log(&self, parts: &[&str], within: Duration) -> Result<String, String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self.log_lines(parts).into_iter().next() {
                return Ok(line);
            }
            if Instant::now() > deadline {
                return Err(format!("no log line with {parts:?} within {within:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every log line containing all of `parts`.
    pub fn log_lines(&self, parts: &[&str]) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_string)
            .collect()
    }
}

impl Wan {
    /// Polls annex 1's tunnel uplink every 10 ms until it is `iface`;
    /// returns when it was seen.
    pub fn wait_for_uplink(&self, iface: &str, within: Duration) -> Result<Instant, String> {
        let deadline = Instant::now() + within;
        loop {
            if self.annex(1).tunnel_uplink() == iface {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                return Err(format!("tunnel not on {iface} within {within:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Annex {
    /// The interface the tunnel's own packets leave by (table 7400).
    pub fn tunnel_uplink(&self) -> String {
        let routes = self.ns.ip_json(&["route", "show", "table", "7400"]);
        routes[0]["dev"].as_str().unwrap_or_default().to_string()
    }
}

/// `GET path` from inside `ns`: (status code, body).
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let path = path.to_string();
    ns.run(move || {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut text = String::new();
        conn.read_to_string(&mut text)
            .map_err(|e| format!("read: {e}"))?;
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no header end")?;
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or("no status code")?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        Ok((code, body))
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `townlink status --socket SOCKET [--json]`: (exit code, stdout, stderr).
pub fn status(socket: &Path, json: bool) -> (i32, String, String) {
    let mut cmd = Command::new(townlink_bin());
    cmd.arg("status").arg("--socket").arg(socket);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("run townlink status");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value of `series` (its exact text before the value) in a scrape.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    })
}

/// A helper process started in a namespace (iperf3, a reference WireGuard
/// implementation...), stopped by PID on drop: SIGTERM, then SIGKILL.
pub struct Background {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Netns {
    /// Starts `args` in this namespace with extra environment variables,
    /// output to `log`; the process is stopped when the guard drops.
    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Background {
        let out = File::create(&log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .envs(env.iter().copied())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?} in {}: {e}", self.name));
        Background {
            name: format!("{} in {}", args[0], self.name),
            child: Some(child),
            log,
        }
    }
}

impl Background {
    /// `None` while it runs, its exit status once it ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("wait"))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `ip netns exec` execs the program: the PID is the program's own.
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

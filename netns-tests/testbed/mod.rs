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
        let out = File::create(&log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
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

/// One annex: its namespaces and addresses.
pub struct Annex {
    pub ns: Netns,
    pub lan: Netns,
    pub config: PathBuf,
    pub lan_host: String,
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
    /// Builds the topology for `annexes` annexes and writes every config.
    pub fn build(annexes: usize) -> Wan {
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
        let isp_fiber = ns("fiber");
        let isp_4g = ns("4g");
        for n in [&hub, &core, &isp_fiber, &isp_4g] {
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
        link(
            &core,
            "fib0",
            "198.18.1.1/24",
            &isp_fiber,
            "core0",
            "198.18.1.2/24",
        );
        link(
            &core,
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

        let hub_key = write_key(&dir.path().join("hub.key"));
        let mut sites = String::new();
        let mut list = Vec::new();
        for n in 1..=annexes {
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
                &isp_fiber,
                &format!("a{n}"),
                &format!("{fiber_net}.1/24"),
                &a,
                "fiber0",
                &format!("{fiber_net}.2/24"),
            );
            link(
                &isp_4g,
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

            let key = write_key(&dir.path().join(format!("annex{n}.key")));
            sites.push_str(&format!(
                "\n[[site]]\nname = \"annex-{n}\"\npublic_key = \"{}\"\naddress = \"10.99.0.{}\"\nlan = [\"192.168.{n}.0/24\"]\n",
                key.public_key(),
                n + 1
            ));
            let config = dir.path().join(format!("annex{n}.toml"));
            std::fs::write(
                &config,
                format!(
                    r#"role = "annex"
name = "annex-{n}"
lan = ["192.168.{n}.0/24"]

[tunnel]
interface = "tl0"
private_key_file = "annex{n}.key"
address = "10.99.0.{addr}/24"

[[hub]]
name = "main"
public_key = "{hub_pub}"
endpoint = "198.18.0.2:{HUB_PORT}"
address = "10.99.0.1"
routes = ["10.50.0.0/24", "192.168.0.0/16"]

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
"#,
                    addr = n + 1,
                    hub_pub = hub_key.public_key()
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
                "role = \"hub\"\n\n[tunnel]\ninterface = \"tl0\"\nprivate_key_file = \"hub.key\"\naddress = \"10.99.0.1/24\"\nlisten_port = {HUB_PORT}\n{sites}"
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

    pub fn annex(&self, n: usize) -> &Annex {
        &self.annexes[n - 1]
    }
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

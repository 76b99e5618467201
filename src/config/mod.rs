//! The router's configuration: one TOML file, role `hub` or `annex`.
//!
//! [`load`] reads the file and returns either a fully validated [`Config`]
//! or every [`Problem`] found, each with its key path and a hint.
//! The reference of every key is `docs/configuration.md`; commented examples
//! are in `config/`.

mod check;
mod follow;
mod raw;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::decision::Policy;
use crate::fingerprint::Fingerprint;
use crate::keys::{PrivateKey, PublicKey};
use crate::sites::{Name, SiteSet};

pub use check::validate;
pub use follow::{FollowConfig, FollowerConfig};

/// The reference of every key, where the package installs it (a router
/// has no source tree: hints name this path, not `docs/`).
pub const CONFIGURATION_DOC: &str = "/usr/share/doc/townlink/configuration.md";

/// Default MTU of the tunnel interface: 1500 minus the WireGuard/UDP/IPv6 overhead.
pub const DEFAULT_MTU: u16 = 1420;
/// Default routing table of the tunnel's UDP socket (`fwmark` → `table`).
/// Uplink `i` (0-based, in file order) uses table + 1 + i and fwmark + 1 + i.
pub const DEFAULT_TABLE: u32 = 7400;
pub const DEFAULT_FWMARK: u32 = 0x7400;
pub const DEFAULT_RULE_PRIORITY: u32 = 7400;
/// Hub `h` (0-based, file order) has its own tunnel device, whose socket
/// uses fwmark `fwmark + 16 h`, table `table + 16 h`, rule priority
/// `rule_priority + 16 h`; the uplinks' tables stay at `table + 1 + i`, so
/// with several hubs there are at most 15 uplinks.
pub const HUB_STRIDE: u32 = 16;
/// Default persistent keepalive towards the hub, seconds.
pub const DEFAULT_KEEPALIVE: u16 = 25;
/// Default number of boringtun worker threads (see `docs/performance.md`).
pub const DEFAULT_THREADS: usize = 1;
/// Default UDP port of the hub's QUIC probe responder.
pub const DEFAULT_PROBE_PORT: u16 = 51821;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub tunnel: TunnelConfig,
    pub routing: RoutingConfig,
    pub probe: ProbeConfig,
    pub control: ControlConfig,
    pub metrics: MetricsConfig,
    /// End-to-end checks through the tunnel, in file order.
    pub checks: Vec<CheckConfig>,
    /// Where the daemon keeps what must survive a crash (the kernel
    /// settings it changed).
    pub state_directory: PathBuf,
    pub role: Role,
}

/// Default state directory (systemd's `StateDirectory=townlink`).
pub const DEFAULT_STATE_DIRECTORY: &str = "/var/lib/townlink";

/// Default path of the control socket (`townlink status`, site admin).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/townlink/townlink.sock";
/// Default address of `/metrics`: loopback only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9475";

/// The local control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    pub socket: std::path::PathBuf,
    /// A group that may use the socket too (mode 0660); without it, mode 0600.
    pub group: Option<String>,
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where `/metrics` listens; `None` when `metrics.enabled = false`.
    pub listen: Option<SocketAddr>,
}

/// An end-to-end check: a TCP connection through the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    pub name: Name,
    pub tcp: SocketAddr,
    pub interval: std::time::Duration,
    pub timeout: std::time::Duration,
}

impl CheckConfig {
    pub const DEFAULT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
    pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
}

/// The probing channel: this router's certificate, and (annex) the rates.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// This router's certificate (PEM). The check only makes sure it can
    /// be read; it is parsed where it is used (`daemon::load`).
    pub certificate_file: PathBuf,
    /// Its private key (PKCS#8 PEM), mode 0600.
    pub key_file: PathBuf,
    /// Hub: the UDP port of the responder.
    pub listen_port: u16,
    /// Probe interval on the active uplink (and on every uplink while the
    /// active one is not up).
    pub interval: std::time::Duration,
    /// On a standby uplink that is not metered.
    pub standby_interval: std::time::Duration,
    /// On a standby uplink with `metered = true` (4G).
    pub metered_interval: std::time::Duration,
    /// A probe without echo within this time is lost.
    pub timeout: std::time::Duration,
}

impl ProbeConfig {
    pub const DEFAULT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
    pub const DEFAULT_STANDBY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
    pub const DEFAULT_METERED_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
    pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(300);
}

#[derive(Debug, Clone)]
pub enum Role {
    Hub(HubConfig),
    Annex(AnnexConfig),
}

#[derive(Debug, Clone)]
pub struct TunnelConfig {
    pub interface: InterfaceName,
    pub private_key: PrivateKey,
    pub address: IpNet,
    /// UDP port of the tunnel; `None` lets the kernel choose (annexes).
    pub listen_port: Option<u16>,
    pub mtu: u16,
    pub threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutingConfig {
    pub table: u32,
    pub fwmark: u32,
    pub rule_priority: u32,
    /// Turn on IPv4/IPv6 forwarding while running (restored at stop).
    pub forwarding: bool,
}

impl RoutingConfig {
    /// Table and fwmark of the uplink at `index` in the config.
    pub fn uplink_table(&self, index: usize) -> u32 {
        self.table + 1 + index as u32
    }
    pub fn uplink_fwmark(&self, index: usize) -> u32 {
        self.fwmark + 1 + index as u32
    }
    /// Table, fwmark and rule priority of the tunnel device of the hub at
    /// `index` in the config: [`HUB_STRIDE`] apart, hub 0 at `table`,
    /// `fwmark`, `rule_priority` (its uplinks' between them).
    pub fn hub_table(&self, index: usize) -> u32 {
        self.table + HUB_STRIDE * index as u32
    }
    pub fn hub_fwmark(&self, index: usize) -> u32 {
        self.fwmark + HUB_STRIDE * index as u32
    }
    pub fn hub_rule_priority(&self, index: usize) -> u32 {
        self.rule_priority + HUB_STRIDE * index as u32
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            table: DEFAULT_TABLE,
            fwmark: DEFAULT_FWMARK,
            rule_priority: DEFAULT_RULE_PRIORITY,
            forwarding: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The `[[site]]` tables of the file; enrolled sites are in the registry.
    pub sites: SiteSet,
    pub enrollment: EnrollmentConfig,
    /// `[follow]`: the main hub whose registry this hub follows.
    pub follow: Option<FollowConfig>,
    /// `[[follower]]`: the hubs that may follow this one's registry.
    pub followers: Vec<FollowerConfig>,
}

/// Default path of the hub's site registry.
pub const DEFAULT_REGISTRY: &str = "/var/lib/townlink/sites.json";

/// How the hub enrolls new sites (`townlink site add`, `townlink join`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentConfig {
    /// The registry file of enrolled sites (owned by the hub).
    pub registry: PathBuf,
    /// The hub's public WireGuard endpoints, put in tokens; `site add`
    /// needs at least one.
    pub endpoints: Vec<Endpoint>,
    /// What an enrolled annex routes through the hub (records server, other LANs).
    pub routes: Vec<IpNet>,
    /// Where enrolled sites' tunnel addresses come from (default: the tunnel network).
    pub pool: IpNet,
    /// Default validity of a token.
    pub token_ttl: std::time::Duration,
    /// The name annexes give this hub (`[[hub]] name`).
    pub hub_name: Name,
    /// Keepalive an enrolled annex uses toward the hub.
    pub keepalive: u16,
    /// The end-to-end checks every enrolled annex gets (`[[check]]` of
    /// the config `join` writes): the records server, typically.
    pub checks: Vec<EnrollmentCheck>,
}

/// A check handed to enrolled annexes: `[NAME=]ADDRESS:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EnrollmentCheck {
    pub name: Name,
    pub tcp: SocketAddr,
}

impl EnrollmentCheck {
    /// `records=10.50.0.10:443`, or `10.50.0.10:443` (named `records`, or
    /// `records-N` for the N-th entry of a list).
    pub fn parse(text: &str, index: usize) -> Result<Self, String> {
        let (name, target) = match text.split_once('=') {
            Some((n, t)) => (
                Name::new(n).map_err(|e| format!("check name {n:?} {e}"))?,
                t,
            ),
            None if index == 0 => (Name::new("records").expect("valid name"), text),
            None => (
                Name::new(&format!("records-{}", index + 1)).expect("valid name"),
                text,
            ),
        };
        let tcp = target.parse::<SocketAddr>().map_err(|_| {
            format!("{target:?} is not an address:port (write [NAME=]ADDRESS:PORT, e.g. \"10.50.0.10:443\")")
        })?;
        Ok(EnrollmentCheck { name, tcp })
    }
}

impl EnrollmentConfig {
    pub const DEFAULT_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
    pub const MAX_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);
}

#[derive(Debug, Clone)]
pub struct AnnexConfig {
    pub name: Name,
    pub lan: Vec<IpNet>,
    /// The hubs in file order (the index defines the hub's device mark and
    /// table); the preferred one has the lowest `priority`. Only one is
    /// accepted by the check until the daemon runs one device per hub.
    pub hubs: Vec<HubPeer>,
    /// Uplinks in file order; the index defines the uplink's table and mark.
    pub uplinks: Vec<Uplink>,
    pub failover: Policy,
}

impl AnnexConfig {
    /// The uplink preferred when all are healthy: lowest priority value,
    /// then first in the file.
    pub fn preferred_uplink(&self) -> (usize, &Uplink) {
        self.uplinks
            .iter()
            .enumerate()
            .min_by_key(|(i, u)| (u.priority, *i))
            .expect("validation guarantees at least one uplink")
    }

    /// The hub preferred when all are reachable: lowest priority value,
    /// then first in the file.
    pub fn preferred_hub(&self) -> (usize, &HubPeer) {
        self.hubs
            .iter()
            .enumerate()
            .min_by_key(|(i, h)| (h.priority, *i))
            .expect("validation guarantees at least one hub")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubPeer {
    pub name: Name,
    pub public_key: PublicKey,
    pub endpoint: Endpoint,
    /// The hub's address inside the tunnel network.
    pub address: IpAddr,
    /// Prefixes reached through this hub (records server, other annexes).
    pub routes: Vec<IpNet>,
    pub keepalive: u16,
    /// UDP port of the hub's probe responder (same host as `endpoint`).
    pub probe_port: u16,
    /// The hub's probe certificate, pinned.
    pub fingerprint: Fingerprint,
    /// Lower is preferred (default: the position in the file).
    pub priority: u32,
    /// The tunnel device towards this hub (the first hub's is
    /// `tunnel.interface`).
    pub interface: InterfaceName,
}

impl HubPeer {
    /// What the annex accepts from, and routes to, this hub.
    pub fn allowed_ips(&self) -> Vec<IpNet> {
        let mut ips = vec![IpNet::from(self.address)];
        ips.extend(self.routes.iter().copied());
        ips
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    pub name: Name,
    pub interface: InterfaceName,
    /// Next hop; `None` means learned from the kernel, or none at all on a
    /// point-to-point link (route scope link).
    pub gateway: Option<IpAddr>,
    pub priority: u32,
    /// Billed by volume (4G): probed at `probe.metered_interval` on standby.
    pub metered: bool,
    /// Most probe bytes (both directions, IP headers included) per 30 days;
    /// `None`: no limit. Default [`DEFAULT_PROBE_BUDGET`] on a metered uplink.
    pub probe_budget: Option<u64>,
}

/// Default probe budget of a metered uplink, bytes per 30 days.
pub const DEFAULT_PROBE_BUDGET: u64 = 30_000_000;
/// Smallest probe budget: a few connection attempts and standby probes a day.
pub const MIN_PROBE_BUDGET: u64 = 100_000;

/// A Linux interface name (at most 15 bytes, no '/', no white space).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct InterfaceName(String);

impl InterfaceName {
    pub fn new(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > 15 {
            return Err("must be 1 to 15 characters long".into());
        }
        if text == "."
            || text == ".."
            || text
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace())
        {
            return Err("may not contain '/', ':' or white space".into());
        }
        Ok(InterfaceName(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// `host:port` of a hub; the host may be a name, resolved at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Endpoint {
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| "expected host:port, e.g. hub.example.net:51820".to_string())?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("port {port:?} is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err("port 0 is not a valid endpoint port".into());
        }
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !valid_host {
            return Err(format!(
                "{host:?} is neither an IP address nor a host name (IPv6: [addr]:port)"
            ));
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }

    /// Resolves to the first address (IPv4 preferred).
    pub async fn resolve(&self) -> std::io::Result<SocketAddr> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path, e.g. `uplink[1].gateway`; empty for the whole file.
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)?;
        } else {
            write!(f, "{}: {}", self.path, self.message)?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n    hint: {hint}")?;
        }
        Ok(())
    }
}

/// A config that could not be used: the file and every problem in it.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{} found",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// Reads and validates a config file. Relative paths inside the file
/// (`private_key_file`) are taken relative to the file's directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let fail = |problems| ConfigError {
        file: path.to_path_buf(),
        problems,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(vec![Problem {
            path: String::new(),
            message: format!("cannot read the file: {e}"),
            hint: Some(
                "give the path of an existing file with -c (default /etc/townlink/townlink.toml)"
                    .into(),
            ),
        }])
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base).map_err(fail)
}

/// Parses and validates config text; `base` resolves relative file paths.
/// The control socket named by the config file at `path`, for the CLI's
/// client commands: only `control.socket` is read, so that a config the
/// daemon would refuse, or one the user cannot fully read (keys), still
/// tells where the daemon listens. Falls back to the default path.
pub fn control_socket(path: &Path) -> PathBuf {
    #[derive(serde::Deserialize)]
    struct Only {
        control: Option<raw::RawControl>,
    }
    let base = path.parent().unwrap_or(Path::new("."));
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| toml::from_str::<Only>(&t).ok())
        .and_then(|o| o.control?.socket)
        .filter(|s| !s.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET), |s| base.join(s))
}

pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<Problem>> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| vec![toml_problem(text, &e)])?;
    // A value of the wrong type stops serde at once: note it with its key
    // path, take the key out and go on, so that every such value, and
    // every other problem of the file, is listed in one run. Each round
    // removes one key, so this ends.
    let mut problems = Vec::new();
    let (raw, unknown) = loop {
        let mut unknown = Vec::new();
        let mut note = |p: serde_ignored::Path<'_>| unknown.push(key_path(&p));
        let value = toml::Value::Table(table.clone());
        let result: Result<raw::RawConfig, _> =
            serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut note));
        match result {
            Ok(raw) => break (raw, unknown),
            Err(e) => match wrong_type(&mut table, &e) {
                Some(problem) => problems.push(problem),
                None => {
                    problems.push(Problem {
                        path: path_text(e.path()),
                        message: e.inner().message().to_string(),
                        hint: None,
                    });
                    return Err(problems);
                }
            },
        }
    };
    let typed: Vec<String> = problems.iter().map(|p| p.path.clone()).collect();
    problems.extend(unknown.into_iter().map(|path| Problem {
        path,
        message: "unknown key".into(),
        hint: Some(format!("check the spelling against {CONFIGURATION_DOC}")),
    }));
    check::validate_with(raw, base, problems, typed)
}

/// `site[1].lan`: the key path of serde_path_to_error's path.
fn path_text(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { variant } => out.push_str(&format!("({variant})")),
            Segment::Unknown => out.push_str(".?"),
        }
    }
    out
}

/// A value whose type is not the key's: removes it from `table` (an
/// element of a list takes its whole list) and says what was wrong.
/// `None` when the error is not at a key of the file.
fn wrong_type(
    table: &mut toml::Table,
    e: &serde_path_to_error::Error<toml::de::Error>,
) -> Option<Problem> {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = e.path().iter().collect();
    // The last key (a name in a table) on the way to the value.
    let last_key = segments
        .iter()
        .rposition(|s| matches!(s, Segment::Map { .. }))?;
    // Walk to the table holding that key: through tables, and through
    // lists of tables (`site[1]`).
    let mut parent = &mut *table;
    let mut i = 0;
    while i < last_key {
        let Segment::Map { key } = segments[i] else {
            return None;
        };
        let mut value = parent.get_mut(key.as_str())?;
        while let Some(Segment::Seq { index }) = segments.get(i + 1).filter(|_| i + 1 < last_key) {
            value = value.as_array_mut()?.get_mut(*index)?;
            i += 1;
        }
        parent = value.as_table_mut()?;
        i += 1;
    }
    let Segment::Map { key } = segments[last_key] else {
        return None;
    };
    let removed = parent.remove(key.as_str())?;
    // The offending value itself: the key's, or an element of its list.
    let found = match segments.get(last_key + 1) {
        Some(Segment::Seq { index }) => match &removed {
            toml::Value::Array(a) => a.get(*index).unwrap_or(&removed),
            _ => &removed,
        },
        _ => &removed,
    };
    let message = e.inner().message();
    let expected = message
        .split_once("expected ")
        .map_or("another type", |(_, x)| x);
    Some(Problem {
        path: path_text(e.path()),
        message: format!("is {}, expected {}", kind(found), expected_kind(expected)),
        hint: Some(format!(
            "strings are quoted (\"10.99.0.1\"), numbers and true/false are not, lists are \
             in brackets ([\"a\", \"b\"]); see {CONFIGURATION_DOC}"
        )),
    })
}

fn kind(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a decimal number",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "a list",
        toml::Value::Table(_) => "a table",
    }
}

/// serde's name of the expected type, in the words of the docs.
fn expected_kind(serde: &str) -> String {
    match serde {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" => {
            "an integer".into()
        }
        "f32" | "f64" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "a list".into(),
        s if s.starts_with("struct ") || s == "a map" => "a table".into(),
        s => s.to_string(),
    }
}
fn toml_problem(text: &str, e: &toml::de::Error) -> Problem {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    Problem {
        path: String::new(),
        message: match line {
            Some(l) => format!("line {l}: {}", e.message()),
            None => e.message().to_string(),
        },
        hint: Some(
            "fix the TOML syntax or the value's type first; the other checks run after".into(),
        ),
    }
}

fn key_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => {
            let parent = key_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

#[cfg(test)]
pub(crate) mod tests;

/// The id of the group `name` (`/etc/group`, NSS); `None` if there is no
/// such group. The one group lookup of townlink: the config check and the
/// control socket's `chown` both use it.
pub fn group_id(name: &str) -> std::io::Result<Option<libc::gid_t>> {
    use nix::errno::Errno;
    match nix::unistd::Group::from_name(name) {
        Ok(group) => Ok(group.map(|g| g.gid.as_raw())),
        // "Not found" as some NSS modules say it.
        Err(Errno::ENOENT | Errno::ESRCH | Errno::EBADF | Errno::EPERM) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

//! Validation of a raw config: collects every problem, with its key path and
//! a hint, and builds the typed [`Config`] only when there is none.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ipnet::IpNet;

use std::time::Duration;

use super::raw::{
    RawCheck, RawConfig, RawControl, RawEnrollment, RawFailover, RawHub, RawMetrics, RawProbe,
    RawRouting, RawSite, RawTunnel, RawUplink,
};
use super::*;
use crate::decision::{Damping, Policy, Sla};
use crate::sites::{lan_problem, overlaps, Reserved, Site};

struct Checker {
    problems: Vec<Problem>,
    /// Keys whose value had the wrong type: already reported, and taken
    /// out, so "missing" and the like are not said of them again.
    typed: Vec<String>,
}

impl Checker {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>, hint: Option<&str>) {
        let path = path.into();
        let reported = self.typed.iter().any(|t| {
            path.strip_prefix(t.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        });
        if reported {
            return;
        }
        self.problems.push(Problem {
            path,
            message: message.into(),
            hint: hint.map(str::to_string),
        });
    }

    fn required<T>(&mut self, path: &str, value: Option<T>, hint: &str) -> Option<T> {
        if value.is_none() {
            self.push(path, "missing", Some(hint));
        }
        value
    }

    fn name(&mut self, path: &str, value: Option<&String>) -> Option<Name> {
        let value = self.required(path, value, "add a short name, e.g. name = \"annex-1\"")?;
        Name::new(value)
            .map_err(|e| self.push(path, format!("{value:?} {e}"), None))
            .ok()
    }

    fn interface(&mut self, path: &str, value: Option<&String>) -> Option<InterfaceName> {
        let value = self.required(path, value, "the Linux interface name, e.g. \"eth1\"")?;
        InterfaceName::new(value)
            .map_err(|e| self.push(path, format!("{value:?} {e}"), None))
            .ok()
    }

    fn ip(&mut self, path: &str, value: &str) -> Option<IpAddr> {
        value
            .parse::<IpAddr>()
            .map_err(|_| {
                self.push(
                    path,
                    format!("{value:?} is not an IP address"),
                    Some("write a plain address such as 10.99.0.1, without prefix length"),
                )
            })
            .ok()
    }

    /// A prefix such as `192.168.1.0/24`, with no host bits set.
    fn prefix(&mut self, path: &str, value: &str) -> Option<IpNet> {
        let net = match value.parse::<IpNet>() {
            Ok(n) => n,
            Err(_) => {
                self.push(
                    path,
                    format!("{value:?} is not a CIDR prefix"),
                    Some("write address/length, e.g. 192.168.1.0/24"),
                );
                return None;
            }
        };
        if net.trunc() != net {
            self.push(
                path,
                format!("{value} has host bits set"),
                Some(&format!("did you mean {}?", net.trunc())),
            );
            return None;
        }
        Some(net)
    }

    /// A list of prefixes, none overlapping another nor the tunnel network.
    fn prefixes(
        &mut self,
        path: &str,
        values: Option<&Vec<String>>,
        tunnel: Option<IpNet>,
    ) -> Vec<IpNet> {
        let tunnel = tunnel.map(|t| t.trunc());
        let refuse = |n: &IpNet| {
            tunnel
                .filter(|t| overlaps(n, t))
                .map(|t| (format!("{n} overlaps the tunnel network {t}"), None))
        };
        self.checked_prefixes(path, values, refuse)
            .into_iter()
            .map(|(_, n)| n)
            .collect()
    }

    /// A list of prefixes, each valid one with its index in the list: a
    /// prefix `refuse` says something about (problem, hint) is reported and
    /// left out; the others may not overlap one another.
    fn checked_prefixes(
        &mut self,
        path: &str,
        values: Option<&Vec<String>>,
        refuse: impl Fn(&IpNet) -> Option<(String, Option<&'static str>)>,
    ) -> Vec<(usize, IpNet)> {
        let mut nets: Vec<(usize, IpNet)> = Vec::new();
        for (i, v) in values.into_iter().flatten().enumerate() {
            let Some(n) = self.prefix(&format!("{path}[{i}]"), v) else {
                continue;
            };
            match refuse(&n) {
                Some((problem, hint)) => self.push(format!("{path}[{i}]"), problem, hint),
                None => nets.push((i, n)),
            }
        }
        for (a, (i, x)) in nets.iter().enumerate() {
            for (j, y) in nets.iter().skip(a + 1) {
                if overlaps(x, y) {
                    self.push(
                        format!("{path}[{j}]"),
                        format!("{y} overlaps {x} ({path}[{i}])"),
                        Some("list each prefix once, without overlaps"),
                    );
                }
            }
        }
        nets
    }

    fn int<T: TryFrom<i64>>(&mut self, path: &str, value: i64, min: i64, max: i64) -> Option<T> {
        if value < min || value > max {
            self.push(path, format!("{value} is out of range {min}..={max}"), None);
            return None;
        }
        T::try_from(value).ok()
    }

    fn public_key(&mut self, path: &str, value: Option<&String>) -> Option<PublicKey> {
        let value = self.required(
            path,
            value,
            "the peer's public key, as printed by `townlink pubkey` or `wg pubkey`",
        )?;
        value
            .parse::<PublicKey>()
            .map_err(|e| {
                self.push(
                    path,
                    format!("key {e}"),
                    Some("copy the 44-character key again, with its trailing '='"),
                )
            })
            .ok()
    }

    /// A file holding a secret: it must exist and be readable by its owner only.
    fn secret_file(&mut self, path: &str, file: &Path) -> bool {
        let shown = file.display();
        let meta = match std::fs::metadata(file) {
            Ok(m) => m,
            Err(e) => {
                self.push(
                    path,
                    format!("cannot read {shown}: {e}"),
                    Some("create it (see docs/configuration.md)"),
                );
                return false;
            }
        };
        if meta.permissions().mode() & 0o077 != 0 {
            self.push(
                path,
                format!(
                    "{shown} is readable by others (mode {:04o})",
                    meta.permissions().mode() & 0o7777
                ),
                Some(&format!("chmod 600 {shown}")),
            );
            return false;
        }
        true
    }

    fn private_key(
        &mut self,
        path: &str,
        value: Option<&String>,
        base: &Path,
    ) -> Option<PrivateKey> {
        let value = self.required(
            path,
            value,
            "point to a file made by `townlink genkey > FILE` (mode 0600)",
        )?;
        let file = base.join(value);
        if !self.secret_file(path, &file) {
            return None;
        }
        let shown = file.display();
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                self.push(path, format!("cannot read {shown}: {e}"), None);
                return None;
            }
        };
        match text.parse::<PrivateKey>() {
            Ok(k) => Some(k),
            Err(e) => {
                // Never echo the file's content: it is meant to be a secret.
                self.push(
                    path,
                    format!("{shown} does not hold a WireGuard private key: the content {e}"),
                    Some("generate one with: umask 077; townlink genkey > FILE"),
                );
                None
            }
        }
    }

    /// A duration such as "100ms", "20s", "5m", within bounds.
    fn duration(
        &mut self,
        path: &str,
        value: Option<&String>,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let Some(text) = value else {
            return Some(default);
        };
        let d = match humantime::parse_duration(text) {
            Ok(d) => d,
            Err(_) => {
                self.push(
                    path,
                    format!("{text:?} is not a duration"),
                    Some("write a number with a unit, e.g. \"300ms\", \"20s\", \"5m\""),
                );
                return None;
            }
        };
        if d < min || d > max {
            self.push(
                path,
                format!(
                    "{text} is out of range {}..={}",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
                None,
            );
            return None;
        }
        Some(d)
    }

    fn fingerprint(&mut self, path: &str, value: &str) -> Option<Fingerprint> {
        value
            .parse::<Fingerprint>()
            .map_err(|e| self.push(path, e, None))
            .ok()
    }
}

/// Validates a raw config; `problems` holds what parsing already found
/// (unknown keys). Returns the typed config only if no problem is found.
pub fn validate(
    raw: RawConfig,
    base: &Path,
    problems: Vec<Problem>,
) -> Result<Config, Vec<Problem>> {
    validate_with(raw, base, problems, Vec::new())
}

/// [`validate`], where the keys in `typed` had a value of the wrong type
/// (reported in `problems` and left out of `raw`).
pub(super) fn validate_with(
    raw: RawConfig,
    base: &Path,
    problems: Vec<Problem>,
    typed: Vec<String>,
) -> Result<Config, Vec<Problem>> {
    let mut c = Checker { problems, typed };
    let role = c.required(
        "role",
        raw.role.as_deref(),
        "role = \"hub\" or role = \"annex\"",
    );
    let is_hub = match role {
        Some("hub") => Some(true),
        Some("annex") => Some(false),
        Some(other) => {
            c.push(
                "role",
                format!("{other:?} is not a role"),
                Some("role = \"hub\" or role = \"annex\""),
            );
            None
        }
        None => None,
    };

    let (facts, tunnel) = match &raw.tunnel {
        Some(t) => tunnel(&mut c, t, base, is_hub),
        None => {
            c.push(
                "tunnel",
                "missing section",
                Some("add a [tunnel] section: interface, private_key_file, address"),
            );
            (TunnelFacts::default(), None)
        }
    };
    let routing = routing(
        &mut c,
        raw.routing.as_ref().unwrap_or(&RawRouting::default()),
    );
    let probe = match &raw.probe {
        Some(p) => probe(&mut c, p, base, is_hub),
        None => {
            c.push(
                "probe",
                "missing section",
                Some("add [probe] with certificate_file and key_file (made by `townlink gencert`)"),
            );
            None
        }
    };

    let control = control(&mut c, raw.control.as_ref(), base);
    let state_directory = match raw.state_directory.as_deref() {
        Some("") => {
            c.push(
                "state_directory",
                "is empty",
                Some("give a directory, e.g. /var/lib/townlink"),
            );
            PathBuf::new()
        }
        Some(p) => base.join(p),
        None => PathBuf::from(DEFAULT_STATE_DIRECTORY),
    };
    let metrics = metrics(&mut c, raw.metrics.as_ref());
    let checks = checks(&mut c, raw.check.as_deref().unwrap_or_default());

    let role = match is_hub {
        Some(true) => {
            for (key, present) in [
                ("name", raw.name.is_some()),
                ("lan", raw.lan.is_some()),
                ("hub", raw.hub.is_some()),
                ("uplink", raw.uplink.is_some()),
                ("failover", raw.failover.is_some()),
            ] {
                if present {
                    c.push(
                        key,
                        "is an annex setting, not valid with role = \"hub\"",
                        Some("remove it, or set role = \"annex\""),
                    );
                }
            }
            hub(&mut c, &raw, &facts, base).map(Role::Hub)
        }
        Some(false) => {
            for (key, present) in [
                ("site", raw.site.is_some()),
                ("enrollment", raw.enrollment.is_some()),
            ] {
                if !present {
                    continue;
                }
                c.push(
                    key,
                    "is a hub setting, not valid with role = \"annex\"",
                    Some("remove it, or set role = \"hub\""),
                );
            }
            annex(&mut c, &raw, &facts, &routing).map(Role::Annex)
        }
        None => None,
    };

    match (tunnel, probe, role) {
        (Some(tunnel), Some(probe), Some(role)) if c.problems.is_empty() => Ok(Config {
            tunnel,
            routing,
            probe,
            control,
            metrics,
            checks,
            state_directory,
            role,
        }),
        _ => {
            debug_assert!(!c.problems.is_empty());
            Err(c.problems)
        }
    }
}

fn control(c: &mut Checker, raw: Option<&RawControl>, base: &Path) -> ControlConfig {
    let raw = raw.map_or((None, None), |r| (r.socket.as_ref(), r.group.as_ref()));
    let socket = match raw.0 {
        Some(p) if p.is_empty() => {
            c.push(
                "control.socket",
                "is empty",
                Some("give a path, e.g. /run/townlink/townlink.sock"),
            );
            PathBuf::new()
        }
        Some(p) => base.join(p),
        None => PathBuf::from(DEFAULT_CONTROL_SOCKET),
    };
    let group = raw.1.cloned();
    match group.as_deref() {
        Some("") => c.push(
            "control.group",
            "is empty",
            Some("name a group, or remove the key (mode 0600, root only)"),
        ),
        Some(name) => match group_id(name) {
            Ok(Some(_)) => {}
            Ok(None) => c.push(
                "control.group",
                format!("group {name:?} does not exist on this machine"),
                Some("create it (groupadd), or remove the key (mode 0600, root only)"),
            ),
            Err(e) => c.push(
                "control.group",
                format!("cannot look up group {name:?}: {e}"),
                None,
            ),
        },
        None => {}
    }
    ControlConfig { socket, group }
}

fn metrics(c: &mut Checker, raw: Option<&RawMetrics>) -> MetricsConfig {
    let enabled = raw.and_then(|r| r.enabled).unwrap_or(true);
    let text = raw
        .and_then(|r| r.listen.as_deref())
        .unwrap_or(DEFAULT_METRICS_LISTEN);
    let listen = match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            c.push(
                "metrics.listen",
                format!("{text:?} is not an address:port"),
                Some("e.g. \"127.0.0.1:9475\", or the management address of the router"),
            );
            None
        }
    };
    MetricsConfig {
        listen: listen.filter(|_| enabled),
    }
}

fn checks(c: &mut Checker, raw: &[RawCheck]) -> Vec<CheckConfig> {
    let mut checks: Vec<CheckConfig> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let path = format!("check[{i}]");
        let name = c.name(&format!("{path}.name"), r.name.as_ref());
        if let Some(n) = &name {
            if checks.iter().any(|k| &k.name == n) {
                c.push(
                    format!("{path}.name"),
                    format!("{n} is used by another check"),
                    Some("give each check its own name"),
                );
            }
        }
        let tcp = c
            .required(
                &format!("{path}.tcp"),
                r.tcp.as_ref(),
                "the address:port to connect to, e.g. \"10.50.0.10:443\"",
            )
            .and_then(|t| {
                t.parse::<SocketAddr>()
                    .map_err(|_| {
                        c.push(
                            format!("{path}.tcp"),
                            format!("{t:?} is not an address:port"),
                            Some("write an IP address and a port, e.g. \"10.50.0.10:443\""),
                        )
                    })
                    .ok()
            });
        let interval = c.duration(
            &format!("{path}.interval"),
            r.interval.as_ref(),
            CheckConfig::DEFAULT_INTERVAL,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        );
        // Without a timeout of its own, a check waits at most until its next run.
        let default_timeout = interval.map_or(CheckConfig::DEFAULT_TIMEOUT, |i| {
            i.min(CheckConfig::DEFAULT_TIMEOUT)
        });
        let timeout = c.duration(
            &format!("{path}.timeout"),
            r.timeout.as_ref(),
            default_timeout,
            Duration::from_millis(100),
            Duration::from_secs(60),
        );
        if let (Some(i), Some(t)) = (interval, timeout) {
            if t > i {
                c.push(
                    format!("{path}.timeout"),
                    "is longer than the check's interval",
                    Some("make the timeout shorter than the interval"),
                );
            }
        }
        if let (Some(name), Some(tcp), Some(interval), Some(timeout)) =
            (name, tcp, interval, timeout)
        {
            checks.push(CheckConfig {
                name,
                tcp,
                interval,
                timeout,
            });
        }
    }
    checks
}

/// What the other sections need to know of the tunnel, each fact present
/// when its own key is valid (so that one bad key hides no other problem).
#[derive(Default)]
struct TunnelFacts {
    interface: Option<InterfaceName>,
    address: Option<IpNet>,
    public_key: Option<PublicKey>,
}

fn tunnel(
    c: &mut Checker,
    t: &RawTunnel,
    base: &Path,
    is_hub: Option<bool>,
) -> (TunnelFacts, Option<TunnelConfig>) {
    let interface = c.interface("tunnel.interface", t.interface.as_ref());
    let private_key = c.private_key("tunnel.private_key_file", t.private_key_file.as_ref(), base);
    let address = c
        .required(
            "tunnel.address",
            t.address.as_ref(),
            "this router's tunnel address with the tunnel network's length, e.g. \"10.99.0.1/24\"",
        )
        .and_then(|a| match a.parse::<IpNet>() {
            Ok(n) if n.addr() == n.network() && n.prefix_len() < n.max_prefix_len() => {
                c.push(
                    "tunnel.address",
                    format!("{a} is the network address, not a host address"),
                    Some("e.g. 10.99.0.1/24"),
                );
                None
            }
            Ok(n) => Some(n),
            Err(_) => {
                c.push(
                    "tunnel.address",
                    format!("{a:?} is not address/length"),
                    Some("e.g. 10.99.0.1/24"),
                );
                None
            }
        });
    let listen_port = match (t.listen_port, is_hub) {
        (None, Some(true)) => {
            c.push(
                "tunnel.listen_port",
                "missing: a hub must listen on a fixed UDP port",
                Some("listen_port = 51820"),
            );
            None
        }
        (None, _) => None,
        (Some(p), _) => c.int::<u16>("tunnel.listen_port", p, 1, 65535),
    };
    let mtu = t
        .mtu
        .map_or(Some(DEFAULT_MTU), |m| c.int("tunnel.mtu", m, 1280, 1500));
    let threads = t
        .threads
        .map_or(Some(DEFAULT_THREADS), |n| c.int("tunnel.threads", n, 1, 16));
    let facts = TunnelFacts {
        interface: interface.clone(),
        address,
        public_key: private_key.as_ref().map(PrivateKey::public_key),
    };
    let config = (|| {
        Some(TunnelConfig {
            interface: interface?,
            private_key: private_key?,
            address: address?,
            listen_port: if is_hub == Some(true) {
                Some(listen_port?)
            } else {
                listen_port
            },
            mtu: mtu?,
            threads: threads?,
        })
    })();
    (facts, config)
}

fn routing(c: &mut Checker, r: &RawRouting) -> RoutingConfig {
    let d = RoutingConfig::default();
    let table = r
        .table
        .and_then(|t| c.int("routing.table", t, 1, 0x7fff_0000))
        .unwrap_or(d.table);
    if (253..=255).contains(&table) {
        c.push(
            "routing.table",
            format!("{table} is a kernel table (default/main/local)"),
            Some("pick an unused number such as 7400"),
        );
    }
    RoutingConfig {
        table,
        fwmark: r
            .fwmark
            .and_then(|m| c.int("routing.fwmark", m, 1, 0x7fff_0000))
            .unwrap_or(d.fwmark),
        rule_priority: r
            .rule_priority
            .and_then(|p| c.int("routing.rule_priority", p, 1, 32000))
            .unwrap_or(d.rule_priority),
        forwarding: r.forwarding.unwrap_or(d.forwarding),
    }
}

fn hub(c: &mut Checker, raw: &RawConfig, tunnel: &TunnelFacts, base: &Path) -> Option<HubConfig> {
    let mut seen: Vec<SiteSeen> = Vec::new();
    let mut complete = true;
    let before = c.problems.len();
    let reserved = reserved(tunnel, raw.enrollment.as_ref());
    for (i, s) in raw.site.iter().flatten().enumerate() {
        let (facts, site) = site(c, i, s, tunnel, &seen, &reserved);
        complete &= site.is_some();
        seen.push(facts);
    }
    let enrollment = enrollment(
        c,
        raw.enrollment.as_ref().unwrap_or(&RawEnrollment::default()),
        tunnel,
        base,
    );
    let mut sites = SiteSet::new();
    // Conflicts between sites were reported field by field above.
    if complete && c.problems.len() == before {
        for (i, site) in seen.into_iter().filter_map(|f| f.site).enumerate() {
            if let Err(e) = sites.insert(site) {
                c.push(format!("site[{i}]"), e.to_string(), None);
            }
        }
    }
    match (complete, enrollment) {
        (true, Some(enrollment)) => Some(HubConfig { sites, enrollment }),
        _ => None,
    }
}

fn enrollment(
    c: &mut Checker,
    e: &RawEnrollment,
    tunnel: &TunnelFacts,
    base: &Path,
) -> Option<EnrollmentConfig> {
    let mut ok = true;
    let registry = match e.registry.as_deref() {
        Some("") => {
            c.push(
                "enrollment.registry",
                "is empty",
                Some("give a file path, e.g. /var/lib/townlink/sites.json"),
            );
            ok = false;
            PathBuf::new()
        }
        Some(p) => base.join(p),
        None => PathBuf::from(DEFAULT_REGISTRY),
    };
    let mut endpoints = Vec::new();
    for (i, text) in e.endpoints.iter().flatten().enumerate() {
        match Endpoint::parse(text) {
            Ok(ep) => endpoints.push(ep),
            Err(m) => {
                c.push(format!("enrollment.endpoints[{i}]"), m, None);
                ok = false;
            }
        }
    }
    let before = c.problems.len();
    let routes = c.prefixes("enrollment.routes", e.routes.as_ref(), None);
    ok &= c.problems.len() == before;
    let network = tunnel.address.map(|a| a.trunc());
    let pool = match (&e.pool, network) {
        (Some(text), _) => match c.prefix("enrollment.pool", text) {
            Some(p) => {
                if let Some(t) = network {
                    if !t.contains(&p) {
                        c.push(
                            "enrollment.pool",
                            format!("{p} is not inside the tunnel network {t}"),
                            Some("enrolled sites get tunnel addresses: take them from the tunnel network"),
                        );
                        ok = false;
                    }
                }
                Some(p)
            }
            None => {
                ok = false;
                None
            }
        },
        (None, t) => t,
    };
    let token_ttl = c.duration(
        "enrollment.token_ttl",
        e.token_ttl.as_ref(),
        EnrollmentConfig::DEFAULT_TOKEN_TTL,
        Duration::from_secs(60),
        EnrollmentConfig::MAX_TOKEN_TTL,
    );
    let hub_name = match &e.hub_name {
        Some(n) => c.name("enrollment.hub_name", Some(n)),
        None => Name::new("main").ok(),
    };
    let keepalive = e.keepalive.map_or(Some(DEFAULT_KEEPALIVE), |k| {
        c.int("enrollment.keepalive", k, 0, 3600)
    });
    match (ok, pool, token_ttl, hub_name, keepalive) {
        (true, Some(pool), Some(token_ttl), Some(hub_name), Some(keepalive)) => {
            Some(EnrollmentConfig {
                registry,
                endpoints,
                routes,
                pool,
                token_ttl,
                hub_name,
                keepalive,
            })
        }
        _ => None,
    }
}

/// What a `[[site]]` table says, each field present when it is valid, so
/// that the next tables are compared with every valid field of this one.
struct SiteSeen {
    name: Option<Name>,
    public_key: Option<PublicKey>,
    address: Option<IpAddr>,
    lan: Vec<(usize, IpNet)>,
    certificate: Option<Fingerprint>,
    site: Option<Site>,
}

impl SiteSeen {
    /// `site[0] (annex-1)`, or `site[0]` without a valid name.
    fn label(&self, j: usize) -> String {
        match &self.name {
            Some(n) => format!("site[{j}] ({n})"),
            None => format!("site[{j}]"),
        }
    }
}

/// What no site's LAN may take, as far as the file tells: the tunnel
/// network and `enrollment.routes` (the valid ones; the others are
/// reported by the enrollment check). The hub's addresses and routes are
/// checked when it runs (`daemon::sites`).
fn reserved(tunnel: &TunnelFacts, enrollment: Option<&RawEnrollment>) -> Vec<Reserved> {
    let mut reserved: Vec<Reserved> = tunnel
        .address
        .map(|t| Reserved {
            prefix: t.trunc(),
            what: format!("the tunnel network {}", t.trunc()),
            inside_ok: false,
        })
        .into_iter()
        .collect();
    let routes = enrollment.and_then(|e| e.routes.as_ref());
    for (i, text) in routes.into_iter().flatten().enumerate() {
        if let Ok(net) = text.parse::<IpNet>() {
            reserved.push(Reserved {
                prefix: net.trunc(),
                what: format!("enrollment.routes[{i}] {}", net.trunc()),
                inside_ok: true,
            });
        }
    }
    reserved
}

fn site(
    c: &mut Checker,
    i: usize,
    s: &RawSite,
    tunnel: &TunnelFacts,
    earlier: &[SiteSeen],
    reserved: &[Reserved],
) -> (SiteSeen, Option<Site>) {
    let p = |k: &str| format!("site[{i}].{k}");
    let name = c.name(&p("name"), s.name.as_ref());
    if let Some(n) = &name {
        if let Some(j) = earlier.iter().position(|e| e.name.as_ref() == Some(n)) {
            c.push(
                p("name"),
                format!("{n} is already the name of site[{j}]"),
                Some("each site needs its own name"),
            );
        }
    }
    let public_key = c.public_key(&p("public_key"), s.public_key.as_ref());
    if let (Some(k), Some(own)) = (&public_key, &tunnel.public_key) {
        if k == own {
            c.push(
                p("public_key"),
                "is the hub's own public key",
                Some("use the annex's key (`townlink pubkey` on the annex)"),
            );
        }
    }
    if let Some(k) = &public_key {
        if let Some((j, e)) = earlier
            .iter()
            .enumerate()
            .find(|(_, e)| e.public_key.as_ref() == Some(k))
        {
            c.push(
                p("public_key"),
                format!("is already the public key of {}", e.label(j)),
                Some("each annex has its own key pair (`townlink genkey` on the annex)"),
            );
        }
    }
    let address = c
        .required(
            &p("address"),
            s.address.as_ref(),
            "the site's tunnel address, e.g. \"10.99.0.2\"",
        )
        .and_then(|a| c.ip(&p("address"), a));
    if let (Some(a), Some(t)) = (address, tunnel.address) {
        in_tunnel_network(c, &p("address"), a, t);
    }
    if let Some(a) = address {
        if let Some((j, e)) = earlier
            .iter()
            .enumerate()
            .find(|(_, e)| e.address == Some(a))
        {
            c.push(
                p("address"),
                format!("{a} is already the address of {}", e.label(j)),
                Some("each site needs its own tunnel address"),
            );
        }
    }
    // Each prefix: its shape and the hub's networks, then the earlier sites.
    let lan = c.checked_prefixes(&p("lan"), s.lan.as_ref(), |n| {
        if let Some(problem) = lan_problem(n, reserved) {
            return Some((
                problem,
                Some(
                    "a site's LAN is the network behind that annex; the tunnel, the records \
                     server and the Internet stay the hub's",
                ),
            ));
        }
        earlier.iter().enumerate().find_map(|(j, e)| {
            let (_, q) = e.lan.iter().find(|(_, q)| overlaps(n, q))?;
            Some((
                format!("{n} overlaps {q} of {}", e.label(j)),
                Some("each site needs its own LAN prefixes"),
            ))
        })
    });
    let certificate = match &s.certificate {
        None => Some(None),
        Some(f) => c.fingerprint(&p("certificate"), f).map(Some),
    };
    if let Some(Some(f)) = &certificate {
        if let Some((j, e)) = earlier
            .iter()
            .enumerate()
            .find(|(_, e)| e.certificate.as_ref() == Some(f))
        {
            c.push(
                p("certificate"),
                format!("is already the certificate of {}", e.label(j)),
                Some("each annex makes its own (`townlink gencert` on the annex)"),
            );
        }
    }
    let site = (|| {
        Some(Site {
            name: name.clone()?,
            public_key: public_key?,
            address: address?,
            lan: lan.iter().map(|(_, n)| *n).collect(),
            certificate: certificate?,
        })
    })();
    let facts = SiteSeen {
        name,
        public_key,
        address,
        lan,
        certificate: certificate.flatten(),
        site: site.clone(),
    };
    (facts, site)
}

fn in_tunnel_network(c: &mut Checker, path: &str, a: IpAddr, t: IpNet) {
    if !t.contains(&a) {
        c.push(
            path,
            format!("{a} is outside the tunnel network {}", t.trunc()),
            Some("pick an address of tunnel.address's network"),
        );
    } else if a == t.addr() {
        c.push(
            path,
            format!("{a} is this router's own tunnel address"),
            None,
        );
    }
}

fn annex(
    c: &mut Checker,
    raw: &RawConfig,
    tunnel: &TunnelFacts,
    routing: &RoutingConfig,
) -> Option<AnnexConfig> {
    let name = c.name("name", raw.name.as_ref());
    let lan = c.prefixes("lan", raw.lan.as_ref(), tunnel.address);

    let raw_hubs = raw.hub.as_deref().unwrap_or_default();
    if raw_hubs.is_empty() {
        c.push(
            "hub",
            "missing: an annex needs one [[hub]]",
            Some("add [[hub]] with name, public_key, endpoint, address, routes"),
        );
    } else if raw_hubs.len() > 1 {
        c.push(
            "hub",
            format!(
                "{} hubs configured; this version supports one",
                raw_hubs.len()
            ),
            Some("keep only the main hub for now"),
        );
    }
    let hubs: Vec<Option<HubPeer>> = raw_hubs
        .iter()
        .enumerate()
        .map(|(i, h)| hub_peer(c, i, h, tunnel, &lan))
        .collect();

    let raw_uplinks = raw.uplink.as_deref().unwrap_or_default();
    if raw_uplinks.is_empty() {
        c.push(
            "uplink",
            "missing: an annex needs at least one [[uplink]]",
            Some("add [[uplink]] with name and interface for the fiber and the 4G link"),
        );
    }
    let uplinks: Vec<Option<Uplink>> = raw_uplinks
        .iter()
        .enumerate()
        .map(|(i, u)| uplink(c, i, u))
        .collect();
    // Duplicates are checked on the values as written, so that a mistake in
    // another field of the same uplink does not hide them.
    for (i, a) in raw_uplinks.iter().enumerate() {
        for (j, b) in raw_uplinks.iter().enumerate().skip(i + 1) {
            if let (Some(x), Some(y)) = (&a.name, &b.name) {
                if x == y {
                    c.push(
                        format!("uplink[{j}].name"),
                        format!("{y} is already the name of uplink[{i}]"),
                        None,
                    );
                }
            }
            if let (Some(x), Some(y)) = (&a.interface, &b.interface) {
                if x == y {
                    c.push(
                        format!("uplink[{j}].interface"),
                        format!("{y} is already the interface of uplink[{i}]"),
                        None,
                    );
                }
            }
        }
        if let (Some(x), Some(t)) = (&a.interface, &tunnel.interface) {
            if x == t.as_str() {
                c.push(
                    format!("uplink[{i}].interface"),
                    "is the tunnel interface",
                    Some("an uplink is the physical interface toward the ISP"),
                );
            }
        }
    }
    let n = raw_uplinks.len() as u32;
    if routing.table < 256 && routing.table + n >= 253 {
        c.push(
            "routing.table",
            format!(
                "tables {}..={} would include the kernel's tables 253-255",
                routing.table,
                routing.table + n
            ),
            None,
        );
    }

    let failover = failover(c, raw.failover.as_ref().unwrap_or(&RawFailover::default()));

    let hubs: Option<Vec<HubPeer>> = hubs.into_iter().collect();
    let uplinks: Option<Vec<Uplink>> = uplinks.into_iter().collect();
    Some(AnnexConfig {
        name: name?,
        lan,
        hubs: hubs.filter(|h| !h.is_empty())?,
        uplinks: uplinks.filter(|u| !u.is_empty())?,
        failover: failover?,
    })
}

fn probe(c: &mut Checker, p: &RawProbe, base: &Path, is_hub: Option<bool>) -> Option<ProbeConfig> {
    let cert = c.required(
        "probe.certificate_file",
        p.certificate_file.as_ref(),
        "the certificate made by `townlink gencert` (PEM)",
    );
    let key = c.required(
        "probe.key_file",
        p.key_file.as_ref(),
        "the certificate's key made by `townlink gencert` (PEM, mode 0600)",
    );
    // Read and parsed where they are used (`daemon::load`): here, only
    // whether they can be read, and the key's mode.
    let certificate_file = cert.map(|f| base.join(f)).filter(|file| {
        std::fs::File::open(file)
            .map_err(|e| {
                c.push(
                    "probe.certificate_file",
                    format!("cannot read {}: {e}", file.display()),
                    Some("make a new pair with `townlink gencert`"),
                )
            })
            .is_ok()
    });
    let key_file = key
        .map(|f| base.join(f))
        .filter(|file| c.secret_file("probe.key_file", file));
    let listen_port = match (p.listen_port, is_hub) {
        (Some(_), Some(false)) => {
            c.push(
                "probe.listen_port",
                "is a hub setting",
                Some("an annex sets hub[0].probe_port"),
            );
            None
        }
        (Some(port), _) => c.int::<u16>("probe.listen_port", port, 1, 65535),
        (None, _) => Some(DEFAULT_PROBE_PORT),
    };
    let ms = Duration::from_millis;
    let s = Duration::from_secs;
    let interval = c.duration(
        "probe.interval",
        p.interval.as_ref(),
        ProbeConfig::DEFAULT_INTERVAL,
        ms(20),
        s(10),
    );
    let standby_interval = c.duration(
        "probe.standby_interval",
        p.standby_interval.as_ref(),
        ProbeConfig::DEFAULT_STANDBY_INTERVAL,
        ms(20),
        s(60),
    );
    let metered_interval = c.duration(
        "probe.metered_interval",
        p.metered_interval.as_ref(),
        ProbeConfig::DEFAULT_METERED_INTERVAL,
        ms(20),
        s(60),
    );
    let timeout = c.duration(
        "probe.timeout",
        p.timeout.as_ref(),
        ProbeConfig::DEFAULT_TIMEOUT,
        ms(20),
        s(10),
    );
    Some(ProbeConfig {
        certificate_file: certificate_file?,
        key_file: key_file?,
        listen_port: listen_port?,
        interval: interval?,
        standby_interval: standby_interval?,
        metered_interval: metered_interval?,
        timeout: timeout?,
    })
}

fn failover(c: &mut Checker, f: &RawFailover) -> Option<Policy> {
    let d = Policy::default();
    let ms = Duration::from_millis;
    let s = Duration::from_secs;
    let down_after_lost = f.down_after_lost.map_or(Some(d.down_after_lost), |n| {
        c.int("failover.down_after_lost", n, 1, 100)
    });
    let holddown = c.duration(
        "failover.holddown",
        f.holddown.as_ref(),
        d.holddown,
        s(0),
        s(3600),
    );
    let window = c.duration(
        "failover.sla_window",
        f.sla_window.as_ref(),
        d.sla.window,
        ms(500),
        s(600),
    );
    let min_samples = f.sla_min_samples.map_or(Some(d.sla.min_samples), |n| {
        c.int("failover.sla_min_samples", n, 1, 10_000)
    });
    let max_loss = match f.max_loss {
        None => Some(d.sla.max_loss),
        Some(l) if (0.0..=1.0).contains(&l) => Some(l),
        Some(l) => {
            c.push(
                "failover.max_loss",
                format!("{l} is not a ratio from 0 to 1"),
                Some("e.g. max_loss = 0.10 for 10 %"),
            );
            None
        }
    };
    let max_rtt = c.duration(
        "failover.max_rtt",
        f.max_rtt.as_ref(),
        d.sla.max_rtt,
        ms(1),
        s(60),
    );
    let max_jitter = c.duration(
        "failover.max_jitter",
        f.max_jitter.as_ref(),
        d.sla.max_jitter,
        ms(1),
        s(60),
    );
    let sustain = c.duration(
        "failover.sla_sustain",
        f.sla_sustain.as_ref(),
        d.sla.sustain,
        s(0),
        s(600),
    );
    let max_holddown = c.duration(
        "failover.max_holddown",
        f.max_holddown.as_ref(),
        d.damping.max_holddown,
        s(0),
        s(86_400),
    );
    if let (Some(max), Some(base)) = (max_holddown, holddown) {
        if max < base {
            c.push(
                "failover.max_holddown",
                format!(
                    "{} is shorter than failover.holddown ({})",
                    humantime::format_duration(max),
                    humantime::format_duration(base)
                ),
                Some("the hold-down grows from holddown up to max_holddown; make max_holddown at least holddown"),
            );
        }
    }
    let half_life = c.duration(
        "failover.damping_half_life",
        f.damping_half_life.as_ref(),
        d.damping.half_life,
        s(1),
        s(86_400),
    );
    let probation = c.duration(
        "failover.probation",
        f.probation.as_ref(),
        d.damping.probation,
        s(0),
        s(3600),
    );
    Some(Policy {
        down_after_lost: down_after_lost?,
        sla: Sla {
            window: window?,
            min_samples: min_samples?,
            max_loss: max_loss?,
            max_rtt: max_rtt?,
            max_jitter: max_jitter?,
            sustain: sustain?,
        },
        holddown: holddown?,
        damping: Damping {
            half_life: half_life?,
            max_holddown: max_holddown?,
            probation: probation?,
        },
    })
}

fn hub_peer(
    c: &mut Checker,
    i: usize,
    h: &RawHub,
    tunnel: &TunnelFacts,
    lan: &[IpNet],
) -> Option<HubPeer> {
    let p = |k: &str| format!("hub[{i}].{k}");
    let name = c.name(&p("name"), h.name.as_ref());
    let public_key = c.public_key(&p("public_key"), h.public_key.as_ref());
    let endpoint = c
        .required(
            &p("endpoint"),
            h.endpoint.as_ref(),
            "the hub's public address and port, e.g. \"hub.example.net:51820\"",
        )
        .and_then(|e| {
            Endpoint::parse(e)
                .map_err(|m| c.push(p("endpoint"), m, None))
                .ok()
        });
    let address = c
        .required(
            &p("address"),
            h.address.as_ref(),
            "the hub's tunnel address, e.g. \"10.99.0.1\"",
        )
        .and_then(|a| c.ip(&p("address"), a));
    if let (Some(a), Some(t)) = (address, tunnel.address) {
        in_tunnel_network(c, &p("address"), a, t);
    }
    let probe_port = h.probe_port.map_or(Some(DEFAULT_PROBE_PORT), |v| {
        c.int(&p("probe_port"), v, 1, 65535)
    });
    let fingerprint = c
        .required(
            &p("fingerprint"),
            h.fingerprint.as_ref(),
            "the hub's probe certificate fingerprint, printed by `townlink gencert` on the hub",
        )
        .and_then(|f| c.fingerprint(&p("fingerprint"), f));
    let routes = c.prefixes(&p("routes"), h.routes.as_ref(), None);
    for (j, r) in routes.iter().enumerate() {
        if let Some(l) = lan.iter().find(|l| l.contains(r)) {
            c.push(
                format!("{}[{j}]", p("routes")),
                format!("{r} lies inside this annex's own LAN {l}"),
                Some("routes are what the hub serves: records server, other sites; not the local LAN"),
            );
        }
    }
    let keepalive = h.keepalive.map_or(Some(DEFAULT_KEEPALIVE), |k| {
        c.int(&p("keepalive"), k, 0, 3600)
    });
    Some(HubPeer {
        name: name?,
        public_key: public_key?,
        endpoint: endpoint?,
        address: address?,
        routes,
        keepalive: keepalive?,
        probe_port: probe_port?,
        fingerprint: fingerprint?,
    })
}

fn uplink(c: &mut Checker, i: usize, u: &RawUplink) -> Option<Uplink> {
    let p = |k: &str| format!("uplink[{i}].{k}");
    let name = c.name(&p("name"), u.name.as_ref());
    let interface = c.interface(&p("interface"), u.interface.as_ref());
    let gateway = match &u.gateway {
        None => Some(None),
        Some(g) => c.ip(&p("gateway"), g).map(Some),
    };
    let priority = u
        .priority
        .map_or(Some(i as u32), |v| c.int(&p("priority"), v, 0, 1000));
    let metered = u.metered.unwrap_or(false);
    let probe_budget = match &u.probe_budget {
        None => Some(metered.then_some(DEFAULT_PROBE_BUDGET)),
        Some(text) => match crate::size::parse(text) {
            Some(b) if b >= MIN_PROBE_BUDGET => Some(Some(b)),
            Some(_) => {
                c.push(
                    p("probe_budget"),
                    format!("{text:?} is below the smallest budget, 100 kB"),
                    Some("a standby 4G probed every 30 s needs about 20 MB per 30 days"),
                );
                None
            }
            None => {
                c.push(
                    p("probe_budget"),
                    format!("{text:?} is not a size"),
                    Some("write a number and a unit (B, kB, MB, GB), e.g. \"30 MB\" (per 30 days)"),
                );
                None
            }
        },
    };
    Some(Uplink {
        name: name?,
        interface: interface?,
        gateway: gateway?,
        priority: priority?,
        metered,
        probe_budget: probe_budget?,
    })
}
